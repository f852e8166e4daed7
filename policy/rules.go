package policy

import (
	"net/netip"
	"slices"
)

// DenyPrefixes returns the --deny-cidr rules in the order given, for the BPF
// compiler. The slice is a copy.
func (p *Policy) DenyPrefixes() []Rule { return slices.Clone(p.deny) }

// AllowPrefixes returns the --allow-cidr rules in the order given, for the
// BPF compiler. The slice is a copy.
func (p *Policy) AllowPrefixes() []Rule { return slices.Clone(p.allow) }

// RuleByIndex returns the deny or allow rule with index i, as a BPF program
// reports it.
func (p *Policy) RuleByIndex(i uint32) (Rule, bool) {
	n := uint32(len(p.deny))
	switch {
	case i >= 1 && i <= n:
		return p.deny[i-1], true
	case i > n && i <= n+uint32(len(p.allow)):
		return p.allow[i-n-1], true
	}

	return Rule{}, false
}

// Controls lists the active controls as command-line flags, in evaluation
// order, for run_start and the summary: "--offline", "--deny-cidr
// 10.0.0.0/8", "--default-policy deny", "--audit" and so on.
func (p *Policy) Controls() []string {
	c := p.cfg
	var out []string
	flag := func(on bool, s string) {
		if on {
			out = append(out, s)
		}
	}
	values := func(name string, vs []string) {
		for _, v := range vs {
			out = append(out, name+" "+v)
		}
	}

	flag(c.Offline, "--offline")
	flag(c.BlockMetadata, "--block-metadata")
	flag(c.BlockPrivate, "--block-private")
	values("--deny-cidr", prefixStrings(c.DenyCIDRs))
	values("--deny-domain-exact", c.DenyDomainsExact)
	values("--deny-domain", c.DenyDomains)
	values("--allow-cidr", prefixStrings(c.AllowCIDRs))
	values("--allow-domain-exact", c.AllowDomainsExact)
	values("--allow-domain", c.AllowDomains)
	flag(c.DefaultDeny, "--default-policy deny")
	flag(c.ProxyOnly, "--proxy-only")
	flag(c.Audit, "--audit")

	return out
}

func prefixStrings(ps []netip.Prefix) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.String()
	}

	return out
}

// Warnings lists rules that cannot have the effect the user probably meant,
// such as an allow rule without --default-policy deny, or an allow range that
// a deny rule shadows. They are advice for stderr, not errors.
func (p *Policy) Warnings() []string {
	c := p.cfg
	var out []string

	hasAllow := len(c.AllowCIDRs)+len(c.AllowDomains)+len(c.AllowDomainsExact) > 0
	if hasAllow && !c.DefaultDeny && !c.ProxyOnly {
		for _, f := range p.allowFlags() {
			out = append(out, f+" has no effect without --default-policy deny")
		}
	}

	if c.Offline && len(p.Controls()) > 1+boolInt(c.Audit) {
		out = append(out, "--offline denies all but loopback; the other rules have no effect")
	}

	return append(out, p.shadowedAllows()...)
}

func (p *Policy) allowFlags() []string {
	var out []string
	if len(p.cfg.AllowCIDRs) > 0 {
		out = append(out, "--allow-cidr")
	}

	if len(p.cfg.AllowDomainsExact) > 0 {
		out = append(out, "--allow-domain-exact")
	}

	if len(p.cfg.AllowDomains) > 0 {
		out = append(out, "--allow-domain")
	}

	return out
}

// shadowedAllows finds allow ranges wholly inside a range denied earlier.
func (p *Policy) shadowedAllows() []string {
	var out []string
	for _, a := range p.allow {
		if by := p.shadowOf(a.Prefix); by != "" {
			out = append(out, "--allow-cidr "+a.Prefix.String()+" has no effect: "+by+
				" is checked first and denies all of it")
		}
	}

	return out
}

func (p *Policy) shadowOf(a netip.Prefix) string {
	if p.cfg.BlockPrivate {
		for _, pp := range privatePrefixes {
			if covers(pp, a) {
				return "--block-private (" + pp.String() + ")"
			}
		}
	}

	for _, d := range p.deny {
		if covers(d.Prefix, a) {
			return "--deny-cidr " + d.Prefix.String()
		}
	}

	return ""
}

// covers reports whether outer contains every address of inner.
func covers(outer, inner netip.Prefix) bool {
	return outer.Bits() <= inner.Bits() && outer.Contains(inner.Addr())
}

func boolInt(b bool) int {
	if b {
		return 1
	}

	return 0
}
