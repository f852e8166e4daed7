package dns

import (
	"net"
	"net/netip"
	"slices"
	"sort"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/childflow/childflow/internal/testenv"
)

// benchQueries asks addr for a.test over one UDP socket b.N times and reports
// the median and 99th percentile latency.
func benchQueries(b *testing.B, addr netip.AddrPort) {
	conn, err := net.Dial("udp", addr.String())
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	co := &mdns.Conn{Conn: conn}

	m := new(mdns.Msg)
	m.SetQuestion("a.test.", mdns.TypeA)
	lat := make([]time.Duration, 0, b.N)

	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		m.Id = uint16(i)
		conn.SetDeadline(start.Add(5 * time.Second))
		if err := co.WriteMsg(m); err != nil {
			b.Fatal(err)
		}
		resp, err := co.ReadMsg()
		if err != nil || resp.Id != m.Id || len(resp.Answer) != 1 {
			b.Fatalf("query %d: got %v, %v", i, resp, err)
		}
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()

	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}

func BenchmarkDirect(b *testing.B) {
	up := testenv.StartDNSServer(b, zone, testenv.DNSServerOptions{})
	benchQueries(b, up.Addr)
}

func BenchmarkForwarder(b *testing.B) {
	up := testenv.StartDNSServer(b, zone, testenv.DNSServerOptions{})
	f, err := Start(b.Context(), Config{
		Upstreams: []netip.AddrPort{up.Addr}, Listen: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")},
		Sink: &eventLog{}, Learn: func(netip.Addr, []string, time.Duration) error { return nil },
	})
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()

	benchQueries(b, f.Addrs()[0])
}

// BenchmarkForwarderRate sends 5000 queries in one second from 8 sockets
// and reports how many were answered.
func BenchmarkForwarderRate(b *testing.B) {
	up := testenv.StartDNSServer(b, zone, testenv.DNSServerOptions{})
	f, err := Start(b.Context(), Config{
		Upstreams: []netip.AddrPort{up.Addr}, Listen: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")},
	})
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()

	for range b.N {
		answered := rateRun(b, f.Addrs()[0], 5000, time.Second)
		b.ReportMetric(float64(answered), "answered/5000")
	}
	s := f.Stats()
	b.ReportMetric(float64(s.Dropped+s.Failures), "failed")
}

// rateRun paces total queries over d from 8 sockets and counts answers.
func rateRun(b *testing.B, addr netip.AddrPort, total int, d time.Duration) int {
	const senders = 8
	results := make(chan int, senders)
	for s := range senders {
		go func() {
			results <- paceSender(b, addr, total/senders, d, uint16(s))
		}()
	}

	var got []int
	for range senders {
		got = append(got, <-results)
	}
	sort.Ints(got)
	sum := 0
	for _, n := range got {
		sum += n
	}

	return sum
}

func paceSender(b *testing.B, addr netip.AddrPort, n int, d time.Duration, seed uint16) int {
	conn, err := net.Dial("udp", addr.String())
	if err != nil {
		b.Error(err)
		return 0
	}
	defer conn.Close()
	co := &mdns.Conn{Conn: conn}

	done := make(chan int)
	go func() {
		answered := 0
		conn.SetReadDeadline(time.Now().Add(d + 3*time.Second))
		for answered < n {
			if _, err := co.ReadMsg(); err != nil {
				break
			}
			answered++
		}
		done <- answered
	}()

	m := new(mdns.Msg)
	m.SetQuestion("a.test.", mdns.TypeA)
	gap := d / time.Duration(n)
	start := time.Now()
	for i := range n {
		time.Sleep(time.Until(start.Add(time.Duration(i) * gap)))
		m.Id = seed<<12 | uint16(i)
		co.WriteMsg(m)
	}

	return <-done
}
