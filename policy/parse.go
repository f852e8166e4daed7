package policy

import (
	"fmt"
	"net/netip"
	"strings"
)

// InputError is a rule the user wrote that cannot be used. Its message names
// the flag (or the kind of value when the flag is unknown), the value, what is
// wrong and what would be accepted, so that the command line can print it as
// a usage error without more context.
type InputError struct {
	Flag   string // "--deny-cidr", or a kind such as "CIDR" when unknown
	Value  string
	Detail string
	Want   string
}

// Error returns "invalid FLAG "VALUE": DETAIL (want WANT)".
func (e *InputError) Error() string {
	return fmt.Sprintf("invalid %s %q: %s (want %s)", e.Flag, e.Value, e.Detail, e.Want)
}

const (
	wantCIDR   = "a CIDR such as 10.0.0.0/8 or an address"
	wantDomain = "a name such as example.com or *.example.com"
	wantPolicy = "allow or deny"
)

// ParseCIDR parses an IPv4 or IPv6 CIDR, or a bare address which stands for
// a /32 or /128. The result is masked to its canonical form (10.1.2.3/8
// becomes 10.0.0.0/8) and an IPv4-mapped IPv6 prefix becomes the IPv4 one.
// Errors are *InputError values.
func ParseCIDR(s string) (netip.Prefix, error) {
	return ParseFlagCIDR("CIDR", s)
}

// ParseFlagCIDR is ParseCIDR with an error message that names flag.
func ParseFlagCIDR(flag, s string) (netip.Prefix, error) {
	bad := func(detail string) (netip.Prefix, error) {
		return netip.Prefix{}, &InputError{Flag: flag, Value: s, Detail: detail, Want: wantCIDR}
	}

	addrPart, bitsPart, hasBits := strings.Cut(s, "/")
	if strings.Contains(addrPart, "%") {
		return bad("zoned addresses are not supported")
	}

	addr, err := netip.ParseAddr(addrPart)
	if err != nil {
		return bad("bad address: " + addrErrorDetail(err))
	}

	if !hasBits {
		return canonicalPrefix(netip.PrefixFrom(addr, addr.BitLen())), nil
	}

	p, err := netip.ParsePrefix(addrPart + "/" + bitsPart)
	if err != nil {
		return bad(fmt.Sprintf("prefix length must be a number from 0 to %d", addr.BitLen()))
	}

	return canonicalPrefix(p), nil
}

// addrErrorDetail drops the part of a netip error that repeats the input.
func addrErrorDetail(err error) string {
	msg := err.Error()
	if i := strings.LastIndex(msg, "): "); i >= 0 {
		msg = msg[i+3:]
	}

	return msg
}

// canonicalPrefix masks p and turns an IPv4-mapped IPv6 prefix into IPv4.
func canonicalPrefix(p netip.Prefix) netip.Prefix {
	addr := p.Addr()
	if addr.Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(addr.Unmap(), p.Bits()-96)
	}

	return p.Masked()
}

// ParseDefaultPolicy parses the value of --default-policy: "allow" or "deny",
// in any case. deny is true for "deny".
func ParseDefaultPolicy(s string) (deny bool, err error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "allow":
		return false, nil
	case "deny":
		return true, nil
	}

	return false, &InputError{
		Flag: "--default-policy", Value: s, Detail: "unknown policy", Want: wantPolicy,
	}
}

// NormalizeDomain returns the canonical form of a domain rule: lowercase,
// without one trailing dot and without a leading "*." (a domain rule already
// matches every name below it). Labels are 1 to 63 characters of a-z, 0-9 and
// "-", not starting or ending with "-"; the name is at most 253 characters.
// Internationalised names must be given in their ASCII (xn--) form. Errors are
// *InputError values.
func NormalizeDomain(s string) (string, error) {
	return normalizeFlagDomain("domain", s)
}

func normalizeFlagDomain(flag, s string) (string, error) {
	name := strings.ToLower(s)
	name = strings.TrimSuffix(name, ".")
	name = strings.TrimPrefix(name, "*.")

	if detail := domainProblem(name); detail != "" {
		return "", &InputError{Flag: flag, Value: s, Detail: detail, Want: wantDomain}
	}

	return name, nil
}

// domainProblem says what is wrong with a lowercased name, or "" when nothing.
func domainProblem(name string) string {
	switch {
	case name == "":
		return "empty name"
	case len(name) > 253:
		return fmt.Sprintf("name is %d characters long, the limit is 253", len(name))
	}

	for label := range strings.SplitSeq(name, ".") {
		if detail := labelProblem(label); detail != "" {
			return detail
		}
	}

	return ""
}

func labelProblem(label string) string {
	switch {
	case label == "":
		return "empty label"
	case len(label) > 63:
		return fmt.Sprintf("label %q is longer than 63 characters", label)
	case label[0] == '-' || label[len(label)-1] == '-':
		return fmt.Sprintf("label %q starts or ends with \"-\"", label)
	}

	for i := 0; i < len(label); i++ {
		c := label[i]
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' {
			return fmt.Sprintf("label %q has a character other than a-z, 0-9 and \"-\"", label)
		}
	}

	return ""
}

// canonicalName lowercases a DNS name seen on the wire and drops its trailing
// dot, without validating it: names that resolved are matched as they are.
func canonicalName(name string) string {
	return strings.TrimSuffix(strings.ToLower(name), ".")
}
