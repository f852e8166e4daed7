package policy

import (
	"encoding/json"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/childflow/childflow/flows"
)

func mustNew(t *testing.T, cfg Config) *Policy {
	t.Helper()
	p, err := New(cfg)
	if err != nil {
		t.Fatalf("New(%+v): %v", cfg, err)
	}

	return p
}

func prefixes(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParsePrefix(s)
	}

	return out
}

func TestReasonNumbersAndNames(t *testing.T) {
	tests := []struct {
		r             Reason
		num           uint8
		code, control string
	}{
		{ReasonNone, 0, "", ""},
		{ReasonOffline, 1, "offline", "--offline"},
		{ReasonMetadata, 2, "metadata", "--block-metadata"},
		{ReasonPrivate, 3, "private", "--block-private"},
		{ReasonDenyCIDR, 4, "deny_cidr", "--deny-cidr"},
		{ReasonDenyDomainExact, 5, "deny_domain_exact", "--deny-domain-exact"},
		{ReasonDenyDomain, 6, "deny_domain", "--deny-domain"},
		{ReasonDefaultDeny, 7, "default_deny", "--default-policy"},
		{ReasonProxyOnly, 8, "proxy_only", "--proxy-only"},
		{Reason(9), 9, "unknown", ""},
	}
	for _, tt := range tests {
		if uint8(tt.r) != tt.num || tt.r.Code() != tt.code || tt.r.Control() != tt.control {
			t.Errorf("reason %d: got %d %q %q, want %d %q %q", tt.r, uint8(tt.r),
				tt.r.Code(), tt.r.Control(), tt.num, tt.code, tt.control)
		}
	}
}

// TestEvaluateOrder checks each step of the documented order, and that each
// step wins over the ones after it.
func TestEvaluateOrder(t *testing.T) {
	all := Config{
		BlockPrivate:      true,
		BlockMetadata:     true,
		DefaultDeny:       true,
		DenyCIDRs:         prefixes("203.0.113.0/24", "198.51.100.0/24", "198.51.100.128/25"),
		AllowCIDRs:        prefixes("203.0.113.7/32", "192.0.2.0/24", "10.1.0.0/16"),
		DenyDomains:       []string{"bad.example"},
		DenyDomainsExact:  []string{"exact.good.example"},
		AllowDomains:      []string{"good.example"},
		AllowDomainsExact: []string{"one.example"},
	}
	offline := all
	offline.Offline = true
	proxyOnly := Config{ProxyOnly: true, AllowCIDRs: prefixes("192.0.2.0/24")}

	tests := []struct {
		name    string
		cfg     Config
		dst     string
		names   []string
		proto   string
		want    Reason
		matched string // MatchedCIDR or MatchedDomain
	}{
		{"offline beats everything", offline, "192.0.2.1", nil, "tcp", ReasonOffline, ""},
		{"offline keeps loopback", Config{Offline: true}, "127.0.0.1", nil, "tcp", ReasonNone, ""},
		{"offline keeps ::1", Config{Offline: true}, "::1", nil, "udp", ReasonNone, ""},
		{"metadata before private", all, "169.254.169.254", nil, "tcp", ReasonMetadata,
			"169.254.169.254/32"},
		{"metadata v6", all, "fd00:ec2::254", nil, "tcp", ReasonMetadata, "fd00:ec2::254/128"},
		{"metadata as private when only private", Config{BlockPrivate: true},
			"169.254.169.254", nil, "tcp", ReasonPrivate, "169.254.0.0/16"},
		{"private before allow-cidr", all, "10.1.2.3", nil, "tcp", ReasonPrivate, "10.0.0.0/8"},
		{"private v4-mapped", all, "::ffff:192.168.1.1", nil, "tcp", ReasonPrivate,
			"192.168.0.0/16"},
		{"private fc00::/7", all, "fd12::1", nil, "udp", ReasonPrivate, "fc00::/7"},
		{"private link-local v6", all, "fe80::1", nil, "udp", ReasonPrivate, "fe80::/10"},
		{"private unspecified", all, "0.0.0.0", nil, "tcp", ReasonPrivate, "0.0.0.0/32"},
		{"private cgnat", all, "100.64.0.1", nil, "tcp", ReasonPrivate, "100.64.0.0/10"},
		{"deny-cidr before allow-cidr", all, "203.0.113.7", nil, "tcp", ReasonDenyCIDR,
			"203.0.113.0/24"},
		{"deny-cidr longest match", all, "198.51.100.200", nil, "tcp", ReasonDenyCIDR,
			"198.51.100.128/25"},
		{"deny-domain-exact before allow-domain", all, "192.0.2.9",
			[]string{"exact.good.example"}, "tcp", ReasonDenyDomainExact, "exact.good.example"},
		{"deny-domain-exact before deny-domain", Config{
			DenyDomains: []string{"example"}, DenyDomainsExact: []string{"a.example"},
		}, "192.0.2.9", []string{"b.example", "a.example"}, "tcp", ReasonDenyDomainExact,
			"a.example"},
		{"deny-domain suffix", all, "192.0.2.9", []string{"x.y.bad.example"}, "tcp",
			ReasonDenyDomain, "bad.example"},
		{"deny on any name wins over allow-cidr", all, "192.0.2.9",
			[]string{"ok.good.example", "BAD.example."}, "tcp", ReasonDenyDomain, "bad.example"},
		{"deny-domain not at label boundary", Config{DenyDomains: []string{"example.com"}},
			"192.0.2.9", []string{"badexample.com"}, "tcp", ReasonNone, ""},
		{"allow-cidr under default deny", all, "192.0.2.10", nil, "udp", ReasonNone, ""},
		{"allow-domain suffix", all, "198.18.0.1", []string{"api.good.example"}, "tcp",
			ReasonNone, ""},
		{"allow-domain itself", all, "198.18.0.1", []string{"good.example"}, "tcp",
			ReasonNone, ""},
		{"allow-domain-exact", all, "198.18.0.1", []string{"one.example"}, "tcp",
			ReasonNone, ""},
		{"allow-domain-exact is exact", all, "198.18.0.1", []string{"sub.one.example"}, "tcp",
			ReasonDefaultDeny, ""},
		{"default deny", all, "198.18.0.1", nil, "tcp", ReasonDefaultDeny, ""},
		{"default deny badgood", all, "198.18.0.1", []string{"badgood.example"}, "tcp",
			ReasonDefaultDeny, ""},
		{"proxy-only udp", proxyOnly, "198.18.0.1", nil, "udp", ReasonProxyOnly, ""},
		{"proxy-only icmp", proxyOnly, "198.18.0.1", nil, "icmpv4", ReasonProxyOnly, ""},
		{"proxy-only tcp goes through proxy", proxyOnly, "198.18.0.1", nil, "tcp",
			ReasonNone, ""},
		{"proxy-only dns is local", proxyOnly, "198.18.0.1", nil, "dns", ReasonNone, ""},
		{"allow-cidr exempts from proxy-only", proxyOnly, "192.0.2.1", nil, "udp",
			ReasonNone, ""},
		{"no rules", Config{}, "10.0.0.1", []string{"x"}, "udp", ReasonNone, ""},
	}
	for _, tt := range tests {
		p := mustNew(t, tt.cfg)
		v := p.Evaluate(netip.MustParseAddr(tt.dst), tt.names, tt.proto)

		matched := v.MatchedDomain
		if v.MatchedCIDR.IsValid() {
			matched = v.MatchedCIDR.String()
		}

		if v.Reason != tt.want || matched != tt.matched || v.Allowed != (tt.want == ReasonNone) {
			t.Errorf("%s: got %v allowed=%v matched %q (%s), want %v matched %q",
				tt.name, v.Reason, v.Allowed, matched, v.Text, tt.want, tt.matched)
		}

		if v.Violates() && (v.Action != flows.ActionDeny || v.Text == "") {
			t.Errorf("%s: got action %q text %q, want deny with a text", tt.name, v.Action, v.Text)
		}
	}
}

func TestEvaluateNonProxyable(t *testing.T) {
	p := mustNew(t, Config{ProxyOnly: true})
	dst := netip.MustParseAddr("198.18.0.1")

	if v := p.EvaluateNonProxyable(dst, nil, "tcp"); v.Reason != ReasonProxyOnly || v.Allowed {
		t.Errorf("non-proxyable tcp: got %+v, want a proxy_only denial", v)
	}

	open := mustNew(t, Config{})
	if v := open.EvaluateNonProxyable(dst, nil, "udp"); !v.Allowed || v.Violates() {
		t.Errorf("without --proxy-only: got %+v, want allowed", v)
	}
}

func TestAudit(t *testing.T) {
	p := mustNew(t, Config{Audit: true, DenyCIDRs: prefixes("192.0.2.0/24")})
	v := p.Evaluate(netip.MustParseAddr("192.0.2.1"), nil, "tcp")

	if !v.Allowed || v.Action != flows.ActionAudit || v.Reason != ReasonDenyCIDR ||
		!strings.Contains(v.Text, "--deny-cidr 192.0.2.0/24") {
		t.Errorf("got %+v, want an allowed audit verdict for deny_cidr", v)
	}
}

func TestCheckName(t *testing.T) {
	cfg := Config{
		DefaultDeny:      true,
		DenyDomains:      []string{"*.tracker.example"},
		DenyDomainsExact: []string{"exact.example"},
		DenyCIDRs:        prefixes("0.0.0.0/0"),
	}
	tests := []struct {
		cfg     Config
		name    string
		want    Reason
		matched string
	}{
		{cfg, "tracker.example", ReasonDenyDomain, "tracker.example"},
		{cfg, "Ads.Tracker.Example.", ReasonDenyDomain, "tracker.example"},
		{cfg, "nottracker.example", ReasonNone, ""},
		{cfg, "exact.example", ReasonDenyDomainExact, "exact.example"},
		{cfg, "sub.exact.example", ReasonNone, ""},
		{cfg, "anything.example", ReasonNone, ""},
		{Config{Offline: true}, "example.com", ReasonOffline, ""},
	}
	for _, tt := range tests {
		v := mustNew(t, tt.cfg).CheckName(tt.name)
		if v.Reason != tt.want || v.MatchedDomain != tt.matched || v.Allowed != (tt.want == 0) {
			t.Errorf("CheckName(%q): got %v %q allowed=%v, want %v %q",
				tt.name, v.Reason, v.MatchedDomain, v.Allowed, tt.want, tt.matched)
		}
	}
}

func TestNewRejectsBadDomain(t *testing.T) {
	_, err := New(Config{AllowDomains: []string{"ok.example", "bad_name.example"}})

	want := `invalid --allow-domain "bad_name.example"`
	if err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Fatalf("got %v, want an error starting with %s", err, want)
	}
}

func TestViolationEvent(t *testing.T) {
	p := mustNew(t, Config{
		DenyCIDRs:   prefixes("2001:db8::/32"),
		DenyDomains: []string{"bad.example"},
		Offline:     false, BlockPrivate: true,
	})

	tests := []struct {
		name  string
		v     Verdict
		proto string
		dst   netip.AddrPort
		names []string
		want  string
	}{
		{"v6 tcp with port", p.Evaluate(netip.MustParseAddr("2001:db8::5"), nil, "tcp"), "tcp",
			netip.MustParseAddrPort("[2001:db8::5]:443"), nil,
			`{"schema_version":0,"ts_ms":0,"event":"","protocol":"tcp",` +
				`"remote":"[2001:db8::5]:443","remote_ip":"2001:db8::5","remote_port":443,` +
				`"action":"deny","reason_code":"deny_cidr","control":"--deny-cidr",` +
				`"matched_cidr":"2001:db8::/32","matched_domain":null,` +
				`"reason":"2001:db8::5 matches --deny-cidr 2001:db8::/32","count":1}`},
		{"icmp has no port", p.Evaluate(netip.MustParseAddr("10.0.0.1"), nil, "icmpv4"),
			"icmpv4", netip.AddrPortFrom(netip.MustParseAddr("10.0.0.1"), 0), nil,
			`{"schema_version":0,"ts_ms":0,"event":"","protocol":"icmpv4","remote":"10.0.0.1",` +
				`"remote_ip":"10.0.0.1","remote_port":null,"action":"deny","reason_code":"private",` +
				`"control":"--block-private","matched_cidr":"10.0.0.0/8","matched_domain":null,` +
				`"reason":"10.0.0.1 is in the private range 10.0.0.0/8, blocked by --block-private",` +
				`"count":1}`},
		{"dns name without address", p.CheckName("x.bad.example"), "dns", netip.AddrPort{},
			[]string{"x.bad.example"},
			`{"schema_version":0,"ts_ms":0,"event":"","protocol":"dns","remote":"",` +
				`"remote_ip":null,"remote_port":null,"action":"deny","reason_code":"deny_domain",` +
				`"control":"--deny-domain","matched_cidr":null,"matched_domain":"bad.example",` +
				`"reason":"x.bad.example matches --deny-domain bad.example",` +
				`"names":["x.bad.example"],"count":1}`},
	}
	for _, tt := range tests {
		ev := tt.v.Violation(tt.proto, tt.dst, tt.names)
		b, err := json.Marshal(ev)
		if err != nil {
			t.Fatalf("%s: marshal: %v", tt.name, err)
		}

		if string(b) != tt.want {
			t.Errorf("%s:\ngot  %s\nwant %s", tt.name, b, tt.want)
		}
	}

	if ev := allowed.Violation("tcp", netip.MustParseAddrPort("192.0.2.1:80"), nil); ev != nil {
		t.Errorf("allowed verdict: got %+v, want nil", ev)
	}
}

func TestRules(t *testing.T) {
	p := mustNew(t, Config{
		DenyCIDRs:  prefixes("10.1.2.3/8", "10.0.0.0/8", "::ffff:192.0.2.0/120"),
		AllowCIDRs: prefixes("198.51.100.0/24"),
	})

	want := []Rule{
		{Prefix: netip.MustParsePrefix("10.0.0.0/8"), Index: 1},
		{Prefix: netip.MustParsePrefix("192.0.2.0/24"), Index: 2},
		{Prefix: netip.MustParsePrefix("198.51.100.0/24"), Index: 3, Allow: true},
	}
	got := append(p.DenyPrefixes(), p.AllowPrefixes()...)
	if !slices.Equal(got, want) {
		t.Fatalf("got rules %v, want %v", got, want)
	}

	for _, r := range want {
		if back, ok := p.RuleByIndex(r.Index); !ok || back != r {
			t.Errorf("RuleByIndex(%d): got %v %v, want %v", r.Index, back, ok, r)
		}
	}

	for _, i := range []uint32{0, 4, 1 << 31} {
		if r, ok := p.RuleByIndex(i); ok {
			t.Errorf("RuleByIndex(%d): got %v, want none", i, r)
		}
	}

	v := p.Evaluate(netip.MustParseAddr("192.0.2.1"), nil, "udp")
	if v.RuleIndex != 2 {
		t.Errorf("verdict rule index: got %d, want 2", v.RuleIndex)
	}
}

func TestControls(t *testing.T) {
	p := mustNew(t, Config{
		Offline: true, BlockPrivate: true, BlockMetadata: true, DefaultDeny: true,
		ProxyOnly: true, Audit: true,
		DenyCIDRs: prefixes("10.0.0.0/8"), AllowCIDRs: prefixes("192.0.2.1/32"),
		DenyDomains: []string{"A.example."}, DenyDomainsExact: []string{"b.example"},
		AllowDomains: []string{"*.c.example", "c.example"}, AllowDomainsExact: []string{"d.example"},
	})

	want := []string{
		"--offline", "--block-metadata", "--block-private", "--deny-cidr 10.0.0.0/8",
		"--deny-domain-exact b.example", "--deny-domain a.example", "--allow-cidr 192.0.2.1/32",
		"--allow-domain-exact d.example", "--allow-domain c.example", "--default-policy deny",
		"--proxy-only", "--audit",
	}
	if got := p.Controls(); !slices.Equal(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}

	if got := mustNew(t, Config{}).Controls(); len(got) != 0 {
		t.Errorf("no rules: got %q, want none", got)
	}
}

func TestWarnings(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want []string
	}{
		{"none", Config{DefaultDeny: true, AllowCIDRs: prefixes("192.0.2.0/24")}, nil},
		{"allow without default deny", Config{
			AllowCIDRs: prefixes("192.0.2.0/24"), AllowDomains: []string{"x.example"},
		}, []string{
			"--allow-cidr has no effect without --default-policy deny",
			"--allow-domain has no effect without --default-policy deny",
		}},
		{"shadowed allow", Config{
			DefaultDeny: true, BlockPrivate: true, DenyCIDRs: prefixes("198.51.0.0/16"),
			AllowCIDRs: prefixes("10.1.0.0/16", "198.51.100.0/24", "0.0.0.0/0"),
		}, []string{
			"--allow-cidr 10.1.0.0/16 has no effect: --block-private (10.0.0.0/8) is checked " +
				"first and denies all of it",
			"--allow-cidr 198.51.100.0/24 has no effect: --deny-cidr 198.51.0.0/16 is checked " +
				"first and denies all of it",
		}},
		{"offline with rules", Config{Offline: true, BlockPrivate: true}, []string{
			"--offline denies all but loopback; the other rules have no effect",
		}},
		{"offline audit alone", Config{Offline: true, Audit: true}, nil},
	}
	for _, tt := range tests {
		if got := mustNew(t, tt.cfg).Warnings(); !slices.Equal(got, tt.want) {
			t.Errorf("%s: got %q, want %q", tt.name, got, tt.want)
		}
	}
}

func TestPrefixListsAreCopies(t *testing.T) {
	PrivatePrefixes()[0] = netip.Prefix{}
	MetadataAddrs()[0] = netip.Addr{}

	if PrivatePrefixes()[0].String() != "10.0.0.0/8" || MetadataAddrs()[0].String() !=
		"169.254.169.254" {
		t.Errorf("got %v %v, want the lists unchanged", PrivatePrefixes()[0], MetadataAddrs()[0])
	}
}

func BenchmarkEvaluate(b *testing.B) {
	p, err := New(Config{
		BlockPrivate: true, BlockMetadata: true, DefaultDeny: true,
		DenyCIDRs: prefixes("203.0.113.0/24"), AllowDomains: []string{"good.example"},
	})
	if err != nil {
		b.Fatal(err)
	}

	dst := netip.MustParseAddr("198.18.0.1")
	names := []string{"api.good.example"}
	for b.Loop() {
		if v := p.Evaluate(dst, names, "tcp"); !v.Allowed {
			b.Fatal(v.Text)
		}
	}
}
