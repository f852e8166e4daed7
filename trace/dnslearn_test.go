package trace

import (
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/childflow/childflow/dns"
	"github.com/childflow/childflow/internal/testenv"
	"github.com/childflow/childflow/loader"
	"github.com/childflow/childflow/policy"
)

// testLearner loads the BPF programs (not attached) and returns a learner on
// their learned-address table with short lifetimes: a name lasts 100 ms
// (the TTL floor) plus 300 ms of grace, and the table is swept every 50 ms.
func testLearner(t *testing.T, p *policy.Policy) (*learner, *loader.Tracer) {
	t.Helper()
	testenv.RequireRoot(t)

	tr, err := loader.Load(loader.Config{Policy: loader.PolicyActive | loader.PolicyDefaultDeny})
	if err != nil {
		t.Fatalf("load BPF programs: %v", err)
	}
	t.Cleanup(func() { tr.Close() })

	cfg := learnConfig{Grace: 300 * time.Millisecond, MinTTL: 100 * time.Millisecond,
		Sweep: 50 * time.Millisecond}
	var ptr atomic.Pointer[loader.Tracer]
	ptr.Store(tr)
	l := newLearner(dns.NewNames(cfg.namesConfig()), p, &ptr, nil, cfg)
	l.start(t.Context())
	t.Cleanup(l.close)

	return l, tr
}

// learned describes the table's entry for ip: "allowed", "denied:N" (the
// reason number) or "none".
func learned(tr *loader.Tracer, ip netip.Addr) string {
	allowed, reason, ok := tr.Learned(ip)
	switch {
	case !ok:
		return "none"
	case allowed:
		return "allowed"
	}

	return "denied:" + policy.Reason(reason).Code()
}

func TestLearnerVerdicts(t *testing.T) {
	p, err := policy.New(policy.Config{DefaultDeny: true, AllowDomains: []string{"ok.test"},
		DenyDomains: []string{"bad.test"}, DenyDomainsExact: []string{"exact.ok.test"}})
	if err != nil {
		t.Fatal(err)
	}
	l, tr := testLearner(t, p)

	steps := []struct {
		ip    string
		names []string
		want  string
	}{
		{"192.0.2.1", []string{"www.ok.test"}, "allowed"},
		{"192.0.2.2", []string{"other.test"}, "none"},
		{"192.0.2.3", []string{"www.ok.test"}, "allowed"},
		// A second name on the same address: the deny wins.
		{"192.0.2.3", []string{"x.bad.test"}, "denied:deny_domain"},
		// A CNAME chain through an exactly denied name.
		{"2001:db8::4", []string{"a.ok.test", "exact.ok.test"}, "denied:deny_domain_exact"},
		// An allowed name does not lift the deny of a live name.
		{"192.0.2.3", []string{"www.ok.test"}, "denied:deny_domain"},
	}
	for _, s := range steps {
		ip := netip.MustParseAddr(s.ip)
		if err := l.learn(ip, s.names, 0); err != nil {
			t.Fatalf("learn %s %v: %v", s.ip, s.names, err)
		}
		if got := learned(tr, ip); got != s.want {
			t.Errorf("after learning %s for %v: got %s, want %s", s.ip, s.names, got, s.want)
		}
	}
}

// TestLearnerExpiry checks that learned entries outlive their TTL by the
// grace period, then disappear, and that an address keeps the verdict of
// the names still alive.
func TestLearnerExpiry(t *testing.T) {
	p, err := policy.New(policy.Config{DefaultDeny: true, AllowDomains: []string{"ok.test"},
		DenyDomains: []string{"bad.test"}})
	if err != nil {
		t.Fatal(err)
	}
	l, tr := testLearner(t, p)

	short, mixed := netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("192.0.2.11")
	start := time.Now()
	for _, err := range []error{
		l.learn(short, []string{"www.ok.test"}, 0),
		l.learn(mixed, []string{"www.ok.test"}, 0),
		l.learn(mixed, []string{"x.bad.test"}, 0),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}

	// Within TTL floor plus grace (400 ms) both are still there.
	time.Sleep(200 * time.Millisecond)
	if got := learned(tr, short); got != "allowed" && time.Since(start) < 350*time.Millisecond {
		t.Errorf("after 200ms: got %s, want allowed", got)
	}

	// Keep the allowed name of mixed alive; its denied name expires.
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		if err := l.learn(mixed, []string{"www.ok.test"}, 0); err != nil {
			t.Fatal(err)
		}
		if learned(tr, short) == "none" && learned(tr, mixed) == "allowed" {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if age := time.Since(start); age < 400*time.Millisecond {
		t.Errorf("entries changed after %s, before TTL floor plus grace (400ms)", age)
	}
	if got := learned(tr, short); got != "none" {
		t.Errorf("expired address: got %s, want none", got)
	}
	if got := learned(tr, mixed); got != "allowed" {
		t.Errorf("address whose denied name expired: got %s, want allowed", got)
	}
	if n := l.storedLen(); n != 1 {
		t.Errorf("stored addresses: got %d, want 1", n)
	}
}
