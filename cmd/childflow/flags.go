package main

import "github.com/urfave/cli/v2"

// Flag categories, as --help groups them.
const (
	catOutput  = "Output"
	catPolicy  = "Policy"
	catDNS     = "DNS"
	catProxy   = "Proxy"
	catBackend = "Backend"
	catProfile = "Profile"
)

// traceFlags are the flags of `childflow trace`, also accepted at the root.
// Their names and meanings are those of childflow 0.8.
func traceFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "capture", Aliases: []string{"c", "w"}, Category: catOutput,
			Usage: "write the tree's packets to `FILE` (pcapng, with the process of each packet)"},
		&cli.StringFlag{Name: "capture-point", Aliases: []string{"C"}, Category: catOutput, Value: "child",
			Usage: "child (the tree's own packets); egress, wire-egress and both (childflow 0.8's host views) write the child view"},
		&cli.UintFlag{Name: "snaplen", Category: catOutput, DefaultText: "whole packets",
			Usage: "keep at most `N` bytes of each packet"},
		&cli.UintFlag{Name: "capture-buffer", Category: catOutput, Value: 8,
			Usage: "packet ring buffer size in `MiB` (a power of two); larger loses fewer packets under load"},
		&cli.StringFlag{Name: "flow-log", Category: catOutput,
			Usage: "write the JSON Lines flow log to `FILE`"},
		&cli.BoolFlag{Name: "summary", Category: catOutput,
			Usage: "print a summary of the run to stderr"},
		&cli.StringFlag{Name: "summary-format", Category: catOutput, Value: "text",
			Usage: "summary format: text, json or markdown"},
		&cli.StringFlag{Name: "summary-file", Category: catOutput,
			Usage: "also write the summary to `FILE` ($GITHUB_STEP_SUMMARY is used when set, in markdown)"},
		&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Category: catOutput,
			Usage: "no live view and no notices on stderr"},

		&cli.BoolFlag{Name: "offline", Category: catPolicy,
			Usage: "deny all network traffic but loopback; DNS is answered empty"},
		&cli.BoolFlag{Name: "block-private", Category: catPolicy,
			Usage: "deny private, loopback and link-local destinations"},
		&cli.BoolFlag{Name: "block-metadata", Category: catPolicy,
			Usage: "deny cloud instance metadata endpoints (169.254.169.254, fd00:ec2::254)"},
		&cli.StringFlag{Name: "default-policy", Category: catPolicy, Value: "allow",
			Usage: "what no rule matches: allow or deny"},
		&cli.StringSliceFlag{Name: "allow-cidr", Category: catPolicy,
			Usage: "allow a `CIDR` (or address) under --default-policy deny; repeatable"},
		&cli.StringSliceFlag{Name: "deny-cidr", Category: catPolicy,
			Usage: "deny a `CIDR` (or address); repeatable"},
		&cli.StringSliceFlag{Name: "allow-domain", Category: catPolicy,
			Usage: "allow `DOMAIN` and its subdomains; repeatable"},
		&cli.StringSliceFlag{Name: "allow-domain-exact", Category: catPolicy,
			Usage: "allow exactly `NAME`; repeatable"},
		&cli.StringSliceFlag{Name: "deny-domain", Category: catPolicy,
			Usage: "deny `DOMAIN` and its subdomains; repeatable"},
		&cli.StringSliceFlag{Name: "deny-domain-exact", Category: catPolicy,
			Usage: "deny exactly `NAME`; repeatable"},
		&cli.BoolFlag{Name: "proxy-only", Category: catPolicy,
			Usage: "deny what cannot go through --proxy (UDP but DNS, ICMP, raw)"},
		&cli.BoolFlag{Name: "audit", Category: catPolicy,
			Usage: "log what the policy would deny, deny nothing"},
		&cli.BoolFlag{Name: "fail-on-leak", Category: catPolicy,
			Usage: "exit 1 when the command exited 0 but an attempt was denied"},

		&cli.StringFlag{Name: "dns", Aliases: []string{"d"}, Category: catDNS,
			Usage: "upstream DNS server `ADDR` (IPv4 or IPv6, optional port) for the tree"},
		&cli.StringFlag{Name: "hosts-file", Category: catDNS,
			Usage: "`FILE` in hosts(5) format whose entries override /etc/hosts for the tree"},

		&cli.StringFlag{Name: "proxy", Aliases: []string{"p"}, Category: catProxy,
			Usage: "send every TCP connection through `URL` (http://, https://, socks5://, socks5h://)"},
		&cli.StringFlag{Name: "proxy-user", Aliases: []string{"U"}, Category: catProxy,
			Usage: "proxy user name"},
		&cli.StringFlag{Name: "proxy-password", Aliases: []string{"P"}, Category: catProxy,
			Usage: "proxy password (visible in ps: prefer $CHILDFLOW_PROXY_PASSWORD or --proxy-password-file)"},
		&cli.StringFlag{Name: "proxy-password-file", Category: catProxy,
			Usage: "read the proxy password from `FILE`"},
		&cli.StringFlag{Name: "proxy-ca", Category: catProxy,
			Usage: "https proxy: trust the CA certificates in `FILE` (PEM) instead of the system roots"},
		&cli.BoolFlag{Name: "proxy-insecure", Category: catProxy,
			Usage: "https proxy: do not verify its certificate (the link stays encrypted)"},
		&cli.BoolFlag{Name: "proxy-loopback", Category: catProxy,
			Usage: "also send connections to loopback through the proxy"},
		&cli.BoolFlag{Name: "proxy-relay", Category: catProxy,
			Usage: "relay every proxied connection in childflow instead of handing the program's socket the tunnel"},

		&cli.StringFlag{Name: "backend", Category: catBackend, Value: "auto",
			Usage: "auto, ebpf (root) or rootless (no root)"},
		&cli.BoolFlag{Name: "root", Category: catBackend,
			Usage: "use the eBPF backend (same as --backend ebpf)"},
		&cli.BoolFlag{Name: "keep-root", Category: catBackend,
			Usage: "under sudo, run the command as root instead of the invoking user"},
		&cli.BoolFlag{Name: "keep-caps", Category: catBackend,
			Usage: "under a policy, let a root command keep the capabilities and namespaces that could lift it"},
		&cli.BoolFlag{Name: "host-loopback", Category: catBackend,
			Usage: "rootless: let the command reach the host's 127.0.0.1 and ::1 through its gateway address"},
		&cli.StringFlag{Name: "iface", Aliases: []string{"i"}, Category: catBackend,
			Usage: "accepted for childflow 0.8 scripts; the eBPF backend needs no interface"},

		&cli.StringFlag{Name: "profile", Category: catProfile,
			Usage: "read settings from a TOML `FILE`; flags override it"},
		&cli.BoolFlag{Name: "dump-profile", Category: catProfile,
			Usage: "print the merged settings as a profile (password redacted) and exit"},
	}
}

// legacyFlags are childflow 0.8's root-only flags.
func legacyFlags() []cli.Flag {
	return []cli.Flag{
		&cli.BoolFlag{Name: "doctor", Usage: "same as childflow doctor"},
		&cli.StringFlag{Name: "doctor-format", Value: "text", Usage: "doctor output: text or json"},
		&cli.StringFlag{Name: "report", Usage: "summarise the flow log `FILE` (same as childflow report FILE)"},
		&cli.StringFlag{Name: "report-format", Value: "text", Usage: "report output: text, markdown or json"},
	}
}
