package main

import (
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"

	"github.com/urfave/cli/v2"

	"github.com/childflow/childflow/profile"
	"github.com/childflow/childflow/proxy"
)

// applyProfile loads --profile into s; flags applied afterwards override it.
func applyProfile(c *cli.Context, s *settings) error {
	path := c.String("profile")
	if path == "" {
		return nil
	}
	p, err := profile.Load(path)
	if err != nil {
		return profileError(path, err)
	}
	s.profilePath = path
	if err := dropOverriddenPassword(c, p, path); err != nil {
		return err
	}

	str := func(v *string, dst *string) {
		if v != nil {
			*dst = *v
		}
	}
	flag := func(v *bool, dst *bool) {
		if v != nil {
			*dst = *v
		}
	}
	str(p.Capture, &s.capture)
	str(p.CapturePoint, &s.capturePoint)
	if p.Snaplen != nil {
		if *p.Snaplen < 0 {
			return usagef("profile %s: snaplen %d is negative", path, *p.Snaplen)
		}
		s.snaplen = uint(*p.Snaplen)
	}
	str(p.Backend, &s.backend)
	str(p.FlowLog, &s.flowLog)
	str(p.DNS, &s.dns)
	str(p.HostsFile, &s.hostsFile)
	str(p.Proxy, &s.proxyURL)
	str(p.ProxyUser, &s.proxyUser)
	str(p.ProxyPassword, &s.proxyPassword)
	str(p.ProxyPasswordFile, &s.proxyPasswordFile)
	flag(p.ProxyInsecure, &s.proxyInsecure)
	flag(p.ProxyLoopback, &s.proxyLoopback)
	flag(p.ProxyRelay, &s.proxyRelay)
	flag(p.Summary, &s.summary)
	str(p.SummaryFormat, &s.summaryFormat)
	str(p.SummaryFile, &s.summaryFile)
	flag(p.FailOnLeak, &s.failOnLeak)
	flag(p.KeepRoot, &s.keepRoot)
	flag(p.Quiet, &s.quiet)
	s.command = p.Command

	pc := &s.policy
	flag(p.Offline, &pc.Offline)
	flag(p.BlockPrivate, &pc.BlockPrivate)
	flag(p.BlockMetadata, &pc.BlockMetadata)
	flag(p.ProxyOnly, &pc.ProxyOnly)
	flag(p.Audit, &pc.Audit)
	if p.DefaultPolicy != nil {
		pc.DefaultDeny = *p.DefaultPolicy == "deny"
	}
	pc.AllowDomains, pc.AllowDomainsExact = p.AllowDomains, p.AllowDomainsExact
	pc.DenyDomains, pc.DenyDomainsExact = p.DenyDomains, p.DenyDomainsExact
	s.allowCIDRs, s.denyCIDRs = p.AllowCIDRs, p.DenyCIDRs

	return nil
}

// profileError turns a load error into a usage error. A --profile that
// cannot be read is named as the flag; errors inside a profile keep the
// file and line the profile package gives.
func profileError(path string, err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) && sameFile(pe.Path, path) {
		return usagef("cannot read --profile %s: %v (give the path of a TOML profile)", path, pe.Err)
	}

	return usagef("%v", err)
}

func sameFile(a, b string) bool {
	a, errA := filepath.Abs(a)
	b, errB := filepath.Abs(b)

	return errA == nil && errB == nil && a == b
}

// dropOverriddenPassword applies the flags' precedence to the password's
// two sources: a password flag on the command line replaces both profile
// keys. It also refuses the placeholder that --dump-profile writes, which
// would otherwise be sent to the proxy as the password, unless the
// password comes from the command line, a password file or the environment.
func dropOverriddenPassword(c *cli.Context, p *profile.Profile, path string) error {
	if c.IsSet("proxy-password") || c.IsSet("proxy-password-file") {
		p.ProxyPassword, p.ProxyPasswordFile = nil, nil
	}
	if p.Proxy != nil && urlPassword(*p.Proxy) == profile.Redacted {
		return usagef("profile %s: the password in proxy is %s, the placeholder of --dump-profile "+
			"(put the real password in $%s or proxy_password_file)", path, profile.Redacted, proxy.PasswordEnv)
	}
	if p.ProxyPassword == nil || *p.ProxyPassword != profile.Redacted {
		return nil
	}
	if p.ProxyPasswordFile == nil && os.Getenv(proxy.PasswordEnv) == "" {
		return usagef("profile %s: proxy_password is %s, the placeholder of --dump-profile "+
			"(remove it and give the password with $%s, proxy_password_file or -P)",
			path, profile.Redacted, proxy.PasswordEnv)
	}
	p.ProxyPassword = nil

	return nil
}

func urlPassword(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.User == nil {
		return ""
	}
	pw, _ := u.User.Password()

	return pw
}

// dumpProfile prints the merged settings as a profile, password redacted.
func dumpProfile(c *cli.Context, s *settings) error {
	p := &profile.Profile{}
	set := func(key string, v any) {
		_ = p.Set(key, v)
	}
	strs := map[string]string{
		"capture": s.capture, "capture_point": s.capturePoint, "flow_log": s.flowLog,
		"summary_format": s.summaryFormat, "summary_file": s.summaryFile, "dns": s.dns,
		"hosts_file": s.hostsFile, "proxy": s.proxyURL, "proxy_user": s.proxyUser,
		"proxy_password": s.proxyPassword, "proxy_password_file": s.proxyPasswordFile,
		"backend": s.backend,
	}
	for k, v := range strs {
		if v == "" {
			continue
		}
		if pathKeys[k] {
			v = absPath(v)
		}
		set(k, v)
	}
	bools := map[string]bool{
		"summary": s.summary, "quiet": s.quiet, "proxy_insecure": s.proxyInsecure,
		"proxy_loopback": s.proxyLoopback, "proxy_relay": s.proxyRelay, "keep_root": s.keepRoot, "fail_on_leak": s.failOnLeak,
		"offline": s.policy.Offline, "block_private": s.policy.BlockPrivate,
		"block_metadata": s.policy.BlockMetadata, "proxy_only": s.policy.ProxyOnly,
		"audit": s.policy.Audit,
	}
	for k, v := range bools {
		if v {
			set(k, v)
		}
	}
	if s.snaplen != 0 {
		set("snaplen", int(s.snaplen))
	}
	if s.policy.DefaultDeny {
		set("default_policy", "deny")
	}
	lists := map[string][]string{
		"allow_cidrs": s.allowCIDRs, "deny_cidrs": s.denyCIDRs,
		"allow_domains": s.policy.AllowDomains, "allow_domains_exact": s.policy.AllowDomainsExact,
		"deny_domains": s.policy.DenyDomains, "deny_domains_exact": s.policy.DenyDomainsExact,
		"command": s.command,
	}
	for k, v := range lists {
		if len(v) > 0 {
			set(k, v)
		}
	}
	_, err := fmt.Fprint(c.App.Writer, profile.Dump(p))

	return err
}

// pathKeys are the profile keys that hold file paths. A profile resolves
// relative paths against its own folder, so the dump writes them absolute:
// saved anywhere, it names the same files.
var pathKeys = map[string]bool{
	"capture": true, "flow_log": true, "hosts_file": true, "proxy_password_file": true,
	"summary_file": true,
}

// absPath makes a path absolute; "-" (standard output) stays as it is.
func absPath(p string) string {
	if p == "-" || filepath.IsAbs(p) {
		return p
	}
	abs, err := filepath.Abs(p)
	if err != nil {
		return p
	}

	return abs
}
