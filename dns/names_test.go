package dns

import (
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"
)

// fakeClock is a settable time source for Names.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()

	return c.t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newTestNames(cfg NamesConfig) (*Names, *fakeClock) {
	clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	n := NewNames(cfg)
	n.now = clock.now

	return n, clock
}

func TestNamesExpiry(t *testing.T) {
	ip := netip.MustParseAddr("192.0.2.1")
	tests := []struct {
		name  string
		ttl   time.Duration
		after time.Duration
		want  []string
	}{
		{"fresh", 300 * time.Second, 0, []string{"a.test"}},
		{"within grace", 300 * time.Second, 300*time.Second + 4*time.Minute, []string{"a.test"}},
		{"past grace", 300 * time.Second, 300*time.Second + 5*time.Minute, nil},
		{"zero TTL floored", 0, 59 * time.Second, []string{"a.test"}},
		{"zero TTL floored then grace", 0, 60*time.Second + 5*time.Minute, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n, clock := newTestNames(NamesConfig{})
			n.Add(ip, []string{"a.test"}, tt.ttl)
			clock.advance(tt.after)

			if got := n.Lookup(ip); !slices.Equal(got, tt.want) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestNamesMerge(t *testing.T) {
	n, clock := newTestNames(NamesConfig{Grace: time.Second, MinTTL: time.Second})
	ip := netip.MustParseAddr("192.0.2.1")

	n.Add(ip, []string{"a.test", "b.test"}, 10*time.Second)
	n.Add(netip.MustParseAddr("::ffff:192.0.2.1"), []string{"c.test", "a.test"}, 100*time.Second)
	if got, want := n.Lookup(ip), []string{"a.test", "b.test", "c.test"}; !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}

	clock.advance(20 * time.Second)
	mapped := netip.MustParseAddr("::ffff:192.0.2.1")
	if got, want := n.Lookup(mapped), []string{"a.test", "c.test"}; !slices.Equal(got, want) {
		t.Errorf("after b.test expired: got %v, want %v", got, want)
	}
}

func TestNamesBounded(t *testing.T) {
	n, _ := newTestNames(NamesConfig{Cap: 3, PerIP: 2})

	for i := range 5 {
		n.Add(netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}), []string{"h" + strconv.Itoa(i)}, time.Hour)
	}
	if n.Len() != 3 || n.Evicted() != 2 {
		t.Errorf("got len %d evicted %d, want 3 and 2", n.Len(), n.Evicted())
	}
	if got := n.Lookup(netip.AddrFrom4([4]byte{192, 0, 2, 0})); got != nil {
		t.Errorf("got %v for the least recently used address, want evicted", got)
	}

	ip := netip.MustParseAddr("192.0.2.4")
	n.Add(ip, []string{"x", "y"}, 2*time.Hour)
	if got, want := n.Lookup(ip), []string{"x", "y"}; !slices.Equal(got, want) {
		t.Errorf("got %v, want %v (h4 expires first and is dropped)", got, want)
	}
	if n.Evicted() != 3 {
		t.Errorf("got evicted %d, want 3", n.Evicted())
	}
}

func TestNamesConcurrent(t *testing.T) {
	n := NewNames(NamesConfig{Cap: 100})
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 500 {
				ip := netip.AddrFrom4([4]byte{10, byte(g), byte(i >> 8), byte(i)})
				n.Add(ip, []string{"n.test"}, time.Minute)
				n.Lookup(ip)
			}
		})
	}
	wg.Wait()

	if n.Len() != 100 || n.Evicted() != 1900 {
		t.Errorf("got len %d evicted %d, want 100 and 1900", n.Len(), n.Evicted())
	}
}
