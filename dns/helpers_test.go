package dns

import (
	"context"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/childflow/childflow/flows"
	"github.com/childflow/childflow/internal/testenv"
)

// zone is the upstream test zone shared by the tests.
var zone = []string{
	"a.test. 300 IN A 192.0.2.1",
	"a.test. 300 IN AAAA 2001:db8::1",
	"multi.test. 120 IN A 192.0.2.10",
	"multi.test. 30 IN A 192.0.2.11",
	"www.chain.test. 300 IN CNAME mid.chain.test.",
	"mid.chain.test. 200 IN CNAME end.chain.test.",
	"end.chain.test. 100 IN A 192.0.2.20",
	"end.chain.test. 100 IN AAAA 2001:db8::20",
	`svc.test. 300 IN HTTPS 1 . alpn="h2"`,
	"svc.test. 300 IN MX 10 mail.svc.test.",
	"slow.test. 300 IN A 192.0.2.30",
	"drop.test. 300 IN A 192.0.2.31",
	"blocked.test. 300 IN A 192.0.2.66",
}

// bigZone returns 60 A records for big.test, about 1 KB on the wire.
func bigZone() []string {
	var rrs []string
	for i := range 60 {
		rrs = append(rrs, "big.test. 300 IN A 198.51.100."+strconv.Itoa(i+1))
	}

	return rrs
}

// eventLog collects the events a forwarder emits.
type eventLog struct {
	mu     sync.Mutex
	events []flows.Event
}

func (l *eventLog) Emit(ev flows.Event) {
	flows.Prepare(ev)
	l.mu.Lock()
	l.events = append(l.events, ev)
	l.mu.Unlock()
}

func (l *eventLog) all() []flows.Event {
	l.mu.Lock()
	defer l.mu.Unlock()

	return slices.Clone(l.events)
}

// answerFor waits up to 2s for the dns_answer of name and type t.
func (l *eventLog) answerFor(t *testing.T, name, qtype string) *flows.DNSAnswer {
	t.Helper()

	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		for _, ev := range l.all() {
			a, ok := ev.(*flows.DNSAnswer)
			if ok && a.QName != nil && *a.QName == name && a.QType == qtype {
				return a
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("no dns_answer event for %s %s; events: %d", name, qtype, len(l.all()))

	return nil
}

func (l *eventLog) count(name string) int {
	n := 0
	for _, ev := range l.all() {
		if ev.Name() == name {
			n++
		}
	}

	return n
}

// startForwarder starts a forwarder on 127.0.0.1 with cfg, closed at cleanup.
func startForwarder(t *testing.T, cfg Config) *Forwarder {
	t.Helper()

	if cfg.Listen == nil {
		cfg.Listen = []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")}
	}
	f, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatalf("start forwarder: %v", err)
	}
	t.Cleanup(func() { f.Close() })

	return f
}

// upstream starts the test zone's server with opts.
func upstream(t *testing.T, opts testenv.DNSServerOptions) *testenv.DNSServer {
	t.Helper()

	return testenv.StartDNSServer(t, append(slices.Clone(zone), bigZone()...), opts)
}

// ask sends one query for name and type t over proto to addr. ednsSize 0
// sends no EDNS0.
func ask(addr netip.AddrPort, proto, name string, qtype uint16, ednsSize uint16) (*mdns.Msg, error) {
	m := new(mdns.Msg)
	m.SetQuestion(mdns.Fqdn(name), qtype)
	if ednsSize > 0 {
		m.SetEdns0(ednsSize, false)
	}

	c := &mdns.Client{Net: proto, Timeout: 10 * time.Second, UDPSize: 65535}
	resp, _, err := c.Exchange(m, addr.String())

	return resp, err
}

func mustAsk(t *testing.T, addr netip.AddrPort, proto, name string, qtype uint16, ednsSize uint16) *mdns.Msg {
	t.Helper()

	resp, err := ask(addr, proto, name, qtype, ednsSize)
	if err != nil {
		t.Fatalf("ask %s %s over %s: %v", name, mdns.TypeToString[qtype], proto, err)
	}

	return resp
}

func answerIPs(m *mdns.Msg) []string {
	var ips []string
	for _, rr := range m.Answer {
		switch rr := rr.(type) {
		case *mdns.A:
			ips = append(ips, rr.A.String())
		case *mdns.AAAA:
			ips = append(ips, rr.AAAA.String())
		}
	}

	return ips
}

func namesFor(q []testenv.DNSLogEntry, name string) int {
	n := 0
	for _, e := range q {
		if e.Name == name {
			n++
		}
	}

	return n
}
