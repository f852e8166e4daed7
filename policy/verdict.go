package policy

import (
	"net/netip"
	"strings"

	"github.com/childflow/childflow/flows"
)

// Reason is why a destination was denied. The numbers are shared with the BPF
// programs (bpf/), which report a violation by this number: keep them in sync
// and never renumber.
type Reason uint8

// Reasons, in the order of evaluation.
const (
	ReasonNone            Reason = 0
	ReasonOffline         Reason = 1
	ReasonMetadata        Reason = 2
	ReasonPrivate         Reason = 3
	ReasonDenyCIDR        Reason = 4
	ReasonDenyDomainExact Reason = 5
	ReasonDenyDomain      Reason = 6
	ReasonDefaultDeny     Reason = 7
	ReasonProxyOnly       Reason = 8
)

var reasonNames = [...]struct{ code, control string }{
	ReasonNone:            {"", ""},
	ReasonOffline:         {"offline", "--offline"},
	ReasonMetadata:        {"metadata", "--block-metadata"},
	ReasonPrivate:         {"private", "--block-private"},
	ReasonDenyCIDR:        {"deny_cidr", "--deny-cidr"},
	ReasonDenyDomainExact: {"deny_domain_exact", "--deny-domain-exact"},
	ReasonDenyDomain:      {"deny_domain", "--deny-domain"},
	ReasonDefaultDeny:     {"default_deny", "--default-policy"},
	ReasonProxyOnly:       {"proxy_only", "--proxy-only"},
}

// Code returns the flow log's reason_code ("offline", "deny_cidr", ...), ""
// for ReasonNone and "unknown" for a number this version does not know.
func (r Reason) Code() string {
	if int(r) >= len(reasonNames) {
		return "unknown"
	}

	return reasonNames[r].code
}

// Control returns the flag that caused the reason ("--offline", ...), "" for
// ReasonNone and for an unknown number.
func (r Reason) Control() string {
	if int(r) >= len(reasonNames) {
		return ""
	}

	return reasonNames[r].control
}

// String returns Code.
func (r Reason) String() string { return r.Code() }

// Verdict is the outcome of evaluating one attempt. A denied attempt has
// Allowed false and Action "deny"; in audit mode it has Allowed true, Action
// "audit" and the same Reason and Text. An attempt that no rule denies has
// Allowed true, Action "" and ReasonNone.
type Verdict struct {
	Allowed bool
	Action  string // flows.ActionDeny, flows.ActionAudit or ""
	Reason  Reason
	// MatchedCIDR is the range that matched (a deny rule, a private range,
	// or the metadata address as a single-address prefix); zero otherwise.
	MatchedCIDR netip.Prefix
	// RuleIndex is the index of the --deny-cidr rule that matched (see
	// Rule), 0 when the reason is not deny_cidr.
	RuleIndex uint32
	// MatchedDomain is the domain rule that matched, "" otherwise.
	MatchedDomain string
	// Text explains the verdict to a person.
	Text string
}

// Violates reports whether the verdict must be logged as a policy_violation:
// a denial or, in audit mode, a would-be denial.
func (v Verdict) Violates() bool { return v.Reason != ReasonNone }

// Violation fills a policy_violation event for an attempt of protocol ("tcp",
// "udp", "dns", "icmpv4", "icmpv6") to dst with the names that resolved to
// it. The port is left out (JSON null, remote "ip" alone) for ICMP and when
// it is 0; remote_ip is null when dst has no valid address (a denied DNS
// name). Violation returns nil when the verdict is not a violation. The caller
// sets Proc and the time.
func (v Verdict) Violation(
	protocol string, dst netip.AddrPort, names []string,
) *flows.PolicyViolation {
	if !v.Violates() {
		return nil
	}

	ev := &flows.PolicyViolation{
		Protocol:   protocol,
		Action:     v.Action,
		ReasonCode: v.Reason.Code(),
		Control:    v.Reason.Control(),
		Reason:     v.Text,
		Names:      names,
		Count:      1,
	}
	ev.RemoteStr, ev.RemoteIP, ev.RemotePort = remoteFields(protocol, dst)

	if v.MatchedCIDR.IsValid() {
		s := v.MatchedCIDR.String()
		ev.MatchedCIDR = &s
	}

	if v.MatchedDomain != "" {
		d := v.MatchedDomain
		ev.MatchedDomain = &d
	}

	return ev
}

func remoteFields(protocol string, dst netip.AddrPort) (remote string, ip *string, port *int) {
	addr := dst.Addr().Unmap()
	if !addr.IsValid() {
		return "", nil, nil
	}

	ipStr := addr.String()
	if strings.HasPrefix(protocol, "icmp") || dst.Port() == 0 {
		return ipStr, &ipStr, nil
	}

	p := int(dst.Port())

	return netip.AddrPortFrom(addr, dst.Port()).String(), &ipStr, &p
}

// verdict builds a denial (or audit) verdict.
func (p *Policy) verdict(r Reason, text string) Verdict {
	v := Verdict{Action: flows.ActionDeny, Reason: r, Text: text}
	if p.cfg.Audit {
		v.Allowed = true
		v.Action = flows.ActionAudit
		v.Text = text + " (audit only, allowed)"
	}

	return v
}

var allowed = Verdict{Allowed: true}
