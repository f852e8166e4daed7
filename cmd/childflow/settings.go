package main

import (
	"github.com/urfave/cli/v2"

	"github.com/childflow/childflow/policy"
)

// loadSettings reads the flags (over the profile, when one is given).
func loadSettings(c *cli.Context) (*settings, error) {
	s := &settings{}
	if err := applyProfile(c, s); err != nil {
		return nil, err
	}
	if err := applyFlags(c, s); err != nil {
		return nil, err
	}

	return s, nil
}

// applyFlags sets every flag the user gave over what the profile set; a
// flag left at its default keeps the profile's value.
func applyFlags(c *cli.Context, s *settings) error {
	if c.NArg() > 0 {
		s.command = c.Args().Slice()
	}
	str := func(name string, dst *string) {
		if c.IsSet(name) || *dst == "" {
			*dst = c.String(name)
		}
	}
	flag := func(name string, dst *bool) {
		if c.IsSet(name) {
			*dst = c.Bool(name)
		}
	}
	num := func(name string, dst *uint) {
		if c.IsSet(name) || *dst == 0 {
			*dst = c.Uint(name)
		}
	}

	str("capture", &s.capture)
	str("capture-point", &s.capturePoint)
	num("snaplen", &s.snaplen)
	num("capture-buffer", &s.captureBuffer)
	str("flow-log", &s.flowLog)
	flag("summary", &s.summary)
	str("summary-format", &s.summaryFormat)
	str("summary-file", &s.summaryFile)
	flag("quiet", &s.quiet)
	str("dns", &s.dns)
	str("hosts-file", &s.hostsFile)
	str("proxy", &s.proxyURL)
	str("proxy-user", &s.proxyUser)
	str("proxy-password", &s.proxyPassword)
	str("proxy-password-file", &s.proxyPasswordFile)
	str("proxy-ca", &s.proxyCA)
	flag("proxy-insecure", &s.proxyInsecure)
	flag("proxy-loopback", &s.proxyLoopback)
	flag("proxy-relay", &s.proxyRelay)
	str("backend", &s.backend)
	flag("keep-root", &s.keepRoot)
	flag("host-loopback", &s.hostLoopback)
	flag("keep-caps", &s.keepCaps)
	flag("fail-on-leak", &s.failOnLeak)
	flag("dump-profile", &s.dumpProfile)
	if c.Bool("root") {
		if c.IsSet("backend") && c.String("backend") != "ebpf" && c.String("backend") != "rootful" {
			return usagef("--root conflicts with --backend %s", c.String("backend"))
		}
		s.backend = "ebpf"
	}
	if c.IsSet("iface") {
		s.notices = append(s.notices, "--iface is not needed: the eBPF backend attaches to the "+
			"command's cgroup, not to an interface; ignoring it")
	}

	return applyPolicyFlags(c, s)
}

func applyPolicyFlags(c *cli.Context, s *settings) error {
	p := &s.policy
	flag := func(name string, dst *bool) {
		if c.IsSet(name) {
			*dst = c.Bool(name)
		}
	}
	flag("offline", &p.Offline)
	flag("block-private", &p.BlockPrivate)
	flag("block-metadata", &p.BlockMetadata)
	flag("proxy-only", &p.ProxyOnly)
	flag("audit", &p.Audit)
	if c.IsSet("default-policy") {
		deny, err := policy.ParseDefaultPolicy(c.String("default-policy"))
		if err != nil {
			return usagef("%v", err)
		}
		p.DefaultDeny = deny
	}

	for _, l := range []struct {
		flag string
		dst  *[]string
	}{
		{"allow-domain", &p.AllowDomains},
		{"allow-domain-exact", &p.AllowDomainsExact},
		{"deny-domain", &p.DenyDomains},
		{"deny-domain-exact", &p.DenyDomainsExact},
	} {
		if c.IsSet(l.flag) {
			*l.dst = c.StringSlice(l.flag)
		}
	}
	for _, l := range []struct {
		flag string
		dst  *[]string
	}{{"allow-cidr", &s.allowCIDRs}, {"deny-cidr", &s.denyCIDRs}} {
		if c.IsSet(l.flag) {
			*l.dst = c.StringSlice(l.flag)
		}
	}

	return s.compileCIDRs()
}

// compileCIDRs parses the CIDR lists into the policy config.
func (s *settings) compileCIDRs() error {
	s.policy.AllowCIDRs, s.policy.DenyCIDRs = nil, nil
	for _, v := range s.allowCIDRs {
		p, err := policy.ParseFlagCIDR("--allow-cidr", v)
		if err != nil {
			return usagef("%v", err)
		}
		s.policy.AllowCIDRs = append(s.policy.AllowCIDRs, p)
	}
	for _, v := range s.denyCIDRs {
		p, err := policy.ParseFlagCIDR("--deny-cidr", v)
		if err != nil {
			return usagef("%v", err)
		}
		s.policy.DenyCIDRs = append(s.policy.DenyCIDRs, p)
	}
	s.policySet = policyActive(s.policy)

	return nil
}

func policyActive(p policy.Config) bool {
	return p.Offline || p.BlockPrivate || p.BlockMetadata || p.DefaultDeny || p.ProxyOnly ||
		p.Audit || len(p.AllowCIDRs)+len(p.DenyCIDRs)+len(p.AllowDomains)+
		len(p.AllowDomainsExact)+len(p.DenyDomains)+len(p.DenyDomainsExact) > 0
}
