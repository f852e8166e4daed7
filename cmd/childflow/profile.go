package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/childflow/childflow/profile"
)

// applyProfile loads --profile into s; flags applied afterwards override it.
func applyProfile(c *cli.Context, s *settings) error {
	path := c.String("profile")
	if path == "" {
		return nil
	}
	p, err := profile.Load(path)
	if err != nil {
		return usagef("%v", err)
	}
	s.profilePath = path

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
		if v != "" {
			set(k, v)
		}
	}
	bools := map[string]bool{
		"summary": s.summary, "quiet": s.quiet, "proxy_insecure": s.proxyInsecure,
		"proxy_loopback": s.proxyLoopback, "keep_root": s.keepRoot, "fail_on_leak": s.failOnLeak,
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
