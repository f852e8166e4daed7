// Package policy parses, normalises and evaluates childflow's egress rules.
//
// Both backends decide with this package so that the same attempt gives the
// same policy_violation: the rootless backend and the DNS forwarder call
// Evaluate and CheckName directly, and the eBPF backend compiles the rules
// into BPF maps with DenyPrefixes, AllowPrefixes, PrivatePrefixes and
// MetadataAddrs. The BPF programs report a denial by the numbers of Reason
// and the Index of a Rule, which map back to the same text.
//
// Evaluation order (first match wins): offline, metadata, private,
// deny-cidr, deny-domain-exact, deny-domain, allow-cidr,
// allow-domain-exact and allow-domain, default-policy deny, proxy-only,
// allow. Two consequences to keep in mind: an allow rule also exempts a
// destination from --proxy-only, and nothing can allow back what a deny rule,
// --block-private or --block-metadata denies. --offline leaves loopback
// reachable (as an empty network namespace does); --block-private does not.
package policy

import (
	"fmt"
	"net/netip"
	"strings"
)

// Config is the set of rules of one run as the command line or a profile
// gives them. New validates and normalises it.
type Config struct {
	Offline       bool // deny everything but loopback
	BlockPrivate  bool // deny PrivatePrefixes
	BlockMetadata bool // deny MetadataAddrs
	DefaultDeny   bool // --default-policy deny: deny what no allow rule allows
	ProxyOnly     bool // deny what cannot go through the proxy
	Audit         bool // log violations but allow them

	AllowCIDRs []netip.Prefix
	DenyCIDRs  []netip.Prefix

	AllowDomains      []string // suffix rules: the name and every name below it
	AllowDomainsExact []string // exactly this name
	DenyDomains       []string
	DenyDomainsExact  []string
}

// Policy is a validated, normalised rule set. It is immutable and safe for
// concurrent use.
type Policy struct {
	cfg   Config
	deny  []Rule
	allow []Rule

	denyExact, denySuffix, allowExact, allowSuffix map[string]struct{}
}

// Rule is one --deny-cidr or --allow-cidr range. Index is stable for the
// life of a Policy and unique across both lists; it starts at 1 so that 0 can
// mean "no rule" in a BPF map.
type Rule struct {
	Prefix netip.Prefix
	Index  uint32
	Allow  bool
}

// New validates cfg and returns its policy. CIDRs are masked, IPv4-mapped
// ranges become IPv4 and duplicates are dropped; domains are normalised with
// NormalizeDomain. An invalid domain is an *InputError naming its flag.
func New(cfg Config) (*Policy, error) {
	p := &Policy{}

	var err error
	lists := []struct {
		flag string
		src  []string
		dst  *[]string
		set  *map[string]struct{}
	}{
		{"--deny-domain-exact", cfg.DenyDomainsExact, &cfg.DenyDomainsExact, &p.denyExact},
		{"--deny-domain", cfg.DenyDomains, &cfg.DenyDomains, &p.denySuffix},
		{"--allow-domain-exact", cfg.AllowDomainsExact, &cfg.AllowDomainsExact, &p.allowExact},
		{"--allow-domain", cfg.AllowDomains, &cfg.AllowDomains, &p.allowSuffix},
	}
	for _, l := range lists {
		*l.dst, *l.set, err = domainSet(l.flag, l.src)
		if err != nil {
			return nil, err
		}
	}

	cfg.DenyCIDRs, p.deny = ruleList(cfg.DenyCIDRs, 1, false)
	cfg.AllowCIDRs, p.allow = ruleList(cfg.AllowCIDRs, uint32(len(p.deny))+1, true)
	p.cfg = cfg

	return p, nil
}

func domainSet(flag string, names []string) ([]string, map[string]struct{}, error) {
	set := make(map[string]struct{}, len(names))
	out := make([]string, 0, len(names))
	for _, n := range names {
		norm, err := normalizeFlagDomain(flag, n)
		if err != nil {
			return nil, nil, err
		}

		if _, dup := set[norm]; !dup {
			set[norm] = struct{}{}
			out = append(out, norm)
		}
	}

	return out, set, nil
}

func ruleList(prefixes []netip.Prefix, first uint32, allow bool) ([]netip.Prefix, []Rule) {
	seen := make(map[netip.Prefix]bool, len(prefixes))
	var out []netip.Prefix
	var rules []Rule
	for _, pfx := range prefixes {
		pfx = canonicalPrefix(pfx)
		if !pfx.IsValid() || seen[pfx] {
			continue
		}

		seen[pfx] = true
		out = append(out, pfx)
		rules = append(rules, Rule{Prefix: pfx, Index: first + uint32(len(rules)), Allow: allow})
	}

	return out, rules
}

// Config returns the normalised configuration.
func (p *Policy) Config() Config { return p.cfg }

// Proxyable reports whether an attempt of protocol can go through the proxy
// relay: TCP can, and so can DNS, which the forwarder answers locally;
// UDP, ICMP and raw sockets cannot.
func Proxyable(protocol string) bool { return protocol == "tcp" || protocol == "dns" }

// Evaluate judges an attempt of protocol ("tcp", "udp", "dns", "icmpv4",
// "icmpv6", ...) to dst, which names resolved to, in the package's order.
// Whether it can go through the proxy is inferred with Proxyable; a caller
// that knows better uses EvaluateNonProxyable. An IPv4-mapped IPv6 address
// is judged as IPv4.
func (p *Policy) Evaluate(dst netip.Addr, names []string, protocol string) Verdict {
	return p.evaluate(dst, names, protocol, Proxyable(protocol))
}

// EvaluateNonProxyable is Evaluate for an attempt that cannot go through the
// proxy whatever its protocol: under --proxy-only it is denied as proxy_only
// unless an earlier rule decides first.
func (p *Policy) EvaluateNonProxyable(dst netip.Addr, names []string, protocol string) Verdict {
	return p.evaluate(dst, names, protocol, false)
}

func (p *Policy) evaluate(dst netip.Addr, names []string, protocol string, proxyable bool) Verdict {
	dst = dst.Unmap()
	if v, ok := p.denyByAddr(dst, protocol); ok {
		return v
	}

	if v, ok := p.denyByName(names, dst); ok {
		return v
	}

	if p.allowedByRule(dst, names) {
		return allowed
	}

	return p.denyByDefault(dst, protocol, proxyable)
}

// denyByAddr applies offline, metadata, private and deny-cidr.
func (p *Policy) denyByAddr(dst netip.Addr, protocol string) (Verdict, bool) {
	if p.cfg.Offline && !isLoopback(dst) {
		return p.verdict(ReasonOffline, fmt.Sprintf(
			"%s to %s: all network access is disabled by --offline", protocol, dst)), true
	}

	if p.cfg.BlockMetadata && isMetadata(dst) {
		v := p.verdict(ReasonMetadata, fmt.Sprintf(
			"%s is a cloud instance metadata endpoint, blocked by --block-metadata", dst))
		v.MatchedCIDR = netip.PrefixFrom(dst, dst.BitLen())

		return v, true
	}

	if pfx, ok := p.privatePrefixOf(dst); ok {
		v := p.verdict(ReasonPrivate, fmt.Sprintf(
			"%s is in the private range %s, blocked by --block-private", dst, pfx))
		v.MatchedCIDR = pfx

		return v, true
	}

	if r, ok := longestMatch(p.deny, dst); ok {
		v := p.verdict(ReasonDenyCIDR, fmt.Sprintf("%s matches --deny-cidr %s", dst, r.Prefix))
		v.MatchedCIDR, v.RuleIndex = r.Prefix, r.Index

		return v, true
	}

	return Verdict{}, false
}

func (p *Policy) privatePrefixOf(dst netip.Addr) (netip.Prefix, bool) {
	if !p.cfg.BlockPrivate {
		return netip.Prefix{}, false
	}

	return privatePrefixOf(dst)
}

// isLoopback covers the unspecified address too: connecting to it reaches
// the local host on Linux.
func isLoopback(a netip.Addr) bool { return a.IsLoopback() || a.IsUnspecified() }

// denyByName applies deny-domain-exact, then deny-domain, to every name.
func (p *Policy) denyByName(names []string, dst netip.Addr) (Verdict, bool) {
	for _, n := range names {
		n = canonicalName(n)
		if _, ok := p.denyExact[n]; ok {
			return p.domainVerdict(ReasonDenyDomainExact, n, n, dst), true
		}
	}

	for _, n := range names {
		n = canonicalName(n)
		if rule, ok := matchSuffix(p.denySuffix, n); ok {
			return p.domainVerdict(ReasonDenyDomain, n, rule, dst), true
		}
	}

	return Verdict{}, false
}

func (p *Policy) domainVerdict(r Reason, name, rule string, dst netip.Addr) Verdict {
	text := fmt.Sprintf("%s matches %s %s", name, r.Control(), rule)
	if dst.IsValid() {
		text = fmt.Sprintf("%s (%s) matches %s %s", dst, name, r.Control(), rule)
	}

	v := p.verdict(r, text)
	v.MatchedDomain = rule

	return v
}

// matchSuffix finds the most specific suffix rule that name is or is below,
// cutting name only at label boundaries.
func matchSuffix(rules map[string]struct{}, name string) (string, bool) {
	if len(rules) == 0 {
		return "", false
	}

	for s := name; s != ""; {
		if _, ok := rules[s]; ok {
			return s, true
		}

		_, rest, found := strings.Cut(s, ".")
		if !found {
			break
		}
		s = rest
	}

	return "", false
}

// allowedByRule applies allow-cidr, allow-domain-exact and allow-domain.
func (p *Policy) allowedByRule(dst netip.Addr, names []string) bool {
	if _, ok := longestMatch(p.allow, dst); ok {
		return true
	}

	for _, n := range names {
		n = canonicalName(n)
		if _, ok := p.allowExact[n]; ok {
			return true
		}

		if _, ok := matchSuffix(p.allowSuffix, n); ok {
			return true
		}
	}

	return false
}

// denyByDefault applies default-policy deny and proxy-only.
func (p *Policy) denyByDefault(dst netip.Addr, protocol string, proxyable bool) Verdict {
	if p.cfg.DefaultDeny {
		return p.verdict(ReasonDefaultDeny, fmt.Sprintf(
			"%s to %s matches no allow rule under --default-policy deny", protocol, dst))
	}

	if p.cfg.ProxyOnly && !proxyable {
		return p.verdict(ReasonProxyOnly, fmt.Sprintf(
			"%s to %s cannot go through the proxy, denied by --proxy-only", protocol, dst))
	}

	return allowed
}

// CheckName judges a DNS query for name, for the forwarder: --offline,
// --deny-domain-exact and --deny-domain deny it (the forwarder answers it
// locally). Every other name is allowed, even under --default-policy deny:
// the connect to the answer's addresses is then judged by Evaluate with the
// name.
func (p *Policy) CheckName(name string) Verdict {
	name = canonicalName(name)
	if p.cfg.Offline {
		return p.verdict(ReasonOffline, fmt.Sprintf(
			"query for %s: all network access is disabled by --offline", name))
	}

	if v, ok := p.denyByName([]string{name}, netip.Addr{}); ok {
		return v
	}

	return allowed
}
