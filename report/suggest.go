package report

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// SuggestPolicy returns a TOML profile (the keys of childflow's --profile)
// that allows what rep shows the command reaching and denies the rest:
// default_policy = "deny", allow_domains with every name that resolved to a
// destination, and allow_cidrs with a host prefix for every destination no
// name led to. Destinations that policy denied in the recorded run are
// included too (the command tried them); DNS queries alone are not, since
// the forwarder answers them whatever the policy. Lists are sorted.
func SuggestPolicy(rep *Report) string {
	domains, cidrs := set{}, set{}
	denied, skipped := set{}, 0
	for _, t := range rep.Targets {
		ip, err := netip.ParseAddr(t.IP)
		if err != nil {
			continue
		}
		var entries []string
		for _, n := range t.Names {
			if d, ok := domainRule(n); ok {
				entries = append(entries, d)
				domains.add(d)
			} else {
				skipped++
			}
		}
		if len(entries) == 0 {
			entries = []string{netip.PrefixFrom(ip.Unmap(), ip.Unmap().BitLen()).String()}
			cidrs.add(entries[0])
		}
		if t.Violations > 0 {
			for _, e := range entries {
				denied.add(e)
			}
		}
	}

	var b strings.Builder
	fmt.Fprintf(&b, "# Suggested by childflow from a flow log: allows the %d destinations\n",
		len(rep.Targets))
	fmt.Fprintf(&b, "# it shows and denies everything else.\n")
	if len(denied) > 0 {
		fmt.Fprintf(&b, "# Denied in the recorded run: %s\n", strings.Join(denied.sorted(), ", "))
	}
	if skipped > 0 {
		fmt.Fprintf(&b, "# Left out: %d names that are not valid domain rules.\n", skipped)
	}
	fmt.Fprintf(&b, "default_policy = \"deny\"\n")
	fmt.Fprintf(&b, "allow_domains = %s\n", tomlList(domains.sorted()))
	fmt.Fprintf(&b, "allow_cidrs = %s\n", tomlList(cidrs.sorted()))

	return b.String()
}

// tomlList formats strings as a TOML array, one per line when there are
// several.
func tomlList(ss []string) string {
	switch len(ss) {
	case 0:
		return "[]"
	case 1:
		return "[" + strconv.Quote(ss[0]) + "]"
	}

	var b strings.Builder
	b.WriteString("[\n")
	for _, s := range ss {
		fmt.Fprintf(&b, "  %s,\n", strconv.Quote(s))
	}
	b.WriteString("]")

	return b.String()
}

// domainRule returns name as a domain rule (lowercase, no trailing dot) and
// whether it is a valid one: labels of a-z, 0-9 and inner hyphens, 1-63
// characters each, 253 in all.
func domainRule(name string) (string, bool) {
	d := strings.TrimSuffix(strings.ToLower(name), ".")
	if d == "" || len(d) > 253 {
		return "", false
	}
	for _, label := range strings.Split(d, ".") {
		if len(label) == 0 || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return "", false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' {
				return "", false
			}
		}
	}

	return d, true
}
