package dns

import (
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/childflow/childflow/flows"
	"github.com/childflow/childflow/internal/testenv"
)

// TestDeniedCNAMETarget asks for a name whose CNAME chain leads to a denied
// name: the program gets an empty answer, a violation names the denied name
// with the chain, and the chain's addresses are still learned.
func TestDeniedCNAMETarget(t *testing.T) {
	up := upstream(t, testenv.DNSServerOptions{})
	events := &eventLog{}
	var mu sync.Mutex
	var learned []netip.Addr
	learn := func(ip netip.Addr, names []string, _ time.Duration) error {
		mu.Lock()
		defer mu.Unlock()
		if !slices.Contains(names, "mid.chain.test") {
			t.Errorf("learned %s for %v, want the chain's names", ip, names)
		}
		learned = append(learned, ip)
		return nil
	}
	f := startForwarder(t, Config{Upstreams: []netip.AddrPort{up.Addr}, Sink: events,
		Policy: denyPolicy{"mid.chain.test"}, Learn: learn})

	resp := mustAsk(t, f.Addrs()[0], "udp", "www.chain.test", mdns.TypeA, 0)
	if resp.Rcode != mdns.RcodeSuccess || len(resp.Answer) != 0 {
		t.Errorf("got rcode %d answers %v, want empty NOERROR", resp.Rcode, resp.Answer)
	}
	if ev := events.answerFor(t, "www.chain.test", "A"); ev.Mode != flows.ModeSyntheticEmpty {
		t.Errorf("got mode %q, want synthetic_empty", ev.Mode)
	}
	mu.Lock()
	if !slices.Equal(learned, []netip.Addr{netip.MustParseAddr("192.0.2.20")}) {
		t.Errorf("learned %v, want [192.0.2.20]", learned)
	}
	mu.Unlock()

	var v *flows.PolicyViolation
	for _, e := range events.all() {
		if e, ok := e.(*flows.PolicyViolation); ok {
			v = e
		}
	}
	wantNames := []string{"www.chain.test", "mid.chain.test", "end.chain.test"}
	if v == nil || v.Protocol != "dns" || v.RemoteStr != "mid.chain.test" || !slices.Equal(v.Names, wantNames) {
		t.Errorf("got violation %+v, want a dns deny of mid.chain.test with names %v", v, wantNames)
	}
}

func TestNamesExpiryTime(t *testing.T) {
	ip := netip.MustParseAddr("192.0.2.1")
	n, clock := newTestNames(NamesConfig{Grace: time.Minute, MinTTL: time.Second})
	start := clock.now()
	n.Add(ip, []string{"long.test"}, time.Hour)
	n.Add(ip, []string{"short.test"}, 10*time.Second)

	tests := []struct {
		after     time.Duration
		wantNames []string
		wantFirst time.Duration // from start; 0 for none
	}{
		{0, []string{"long.test", "short.test"}, 70 * time.Second},
		{70 * time.Second, []string{"long.test"}, time.Hour + time.Minute},
		{time.Hour + time.Minute, nil, 0},
	}
	for _, tt := range tests {
		clock.advance(tt.after - clock.now().Sub(start))
		names, first := n.Expiry(ip)
		want := time.Time{}
		if tt.wantFirst != 0 {
			want = start.Add(tt.wantFirst)
		}
		if !slices.Equal(names, tt.wantNames) || !first.Equal(want) {
			t.Errorf("after %s: got %v %v, want %v %v", tt.after, names, first, tt.wantNames, want)
		}
	}
	if n.Len() != 0 {
		t.Errorf("got %d entries after every name expired, want 0", n.Len())
	}
}
