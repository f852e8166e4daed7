package dns

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/childflow/childflow/flows"
	"github.com/childflow/childflow/internal/testenv"
)

func TestRelayed(t *testing.T) {
	up := upstream(t, testenv.DNSServerOptions{})
	events := &eventLog{}
	f := startForwarder(t, Config{Upstreams: []netip.AddrPort{up.Addr}, Sink: events})
	addr := f.Addrs()[0]

	tests := []struct {
		name, qname string
		qtype       uint16
		rcode       string
		ips         []string
		cnames      []string
		records     []string
		ttl         uint32
	}{
		{"A", "a.test", mdns.TypeA, "NOERROR", []string{"192.0.2.1"}, nil, nil, 300},
		{"AAAA", "A.Test.", mdns.TypeAAAA, "NOERROR", []string{"2001:db8::1"}, nil, nil, 300},
		{"min TTL", "multi.test", mdns.TypeA, "NOERROR", []string{"192.0.2.10", "192.0.2.11"}, nil, nil, 30},
		{"CNAME chain", "www.chain.test", mdns.TypeA, "NOERROR", []string{"192.0.2.20"},
			[]string{"mid.chain.test", "end.chain.test"}, nil, 100},
		{"CNAME chain AAAA", "www.chain.test", mdns.TypeAAAA, "NOERROR", []string{"2001:db8::20"},
			[]string{"mid.chain.test", "end.chain.test"}, nil, 100},
		{"HTTPS", "svc.test", mdns.TypeHTTPS, "NOERROR", []string{}, nil, []string{`HTTPS 1 . alpn="h2"`}, 300},
		{"MX", "svc.test", mdns.TypeMX, "NOERROR", []string{}, nil, []string{"MX 10 mail.svc.test."}, 300},
		{"NXDOMAIN", "nope.test", mdns.TypeA, "NXDOMAIN", []string{}, nil, nil, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := mustAsk(t, addr, "udp", tt.qname, tt.qtype, 0)
			if got := mdns.RcodeToString[resp.Rcode]; got != tt.rcode {
				t.Errorf("got rcode %s, want %s", got, tt.rcode)
			}
			if got := answerIPs(resp); !slices.Equal(got, tt.ips) && len(got)+len(tt.ips) > 0 {
				t.Errorf("got answer IPs %v, want %v", got, tt.ips)
			}

			ev := events.answerFor(t, normalizeName(tt.qname), mdns.TypeToString[tt.qtype])
			if ev.Mode != flows.ModeRelayed {
				t.Errorf("got mode %q, want relayed", ev.Mode)
			}
			if !slices.Equal(ev.AnswerIPs, tt.ips) {
				t.Errorf("got event answer_ips %v, want %v", ev.AnswerIPs, tt.ips)
			}
			if !slices.Equal(ev.CNAMEs, tt.cnames) {
				t.Errorf("got cnames %v, want %v", ev.CNAMEs, tt.cnames)
			}
			if !slices.Equal(ev.Records, tt.records) {
				t.Errorf("got records %v, want %v", ev.Records, tt.records)
			}
			if ev.RCode != tt.rcode || ev.TTL != tt.ttl {
				t.Errorf("got rcode %s ttl %d, want %s %d", ev.RCode, ev.TTL, tt.rcode, tt.ttl)
			}
			if ev.Upstream != up.Addr.String() {
				t.Errorf("got upstream %q, want %q", ev.Upstream, up.Addr)
			}
		})
	}
}

func TestQueryAndAnswerEvents(t *testing.T) {
	up := upstream(t, testenv.DNSServerOptions{})
	events := &eventLog{}
	orig := netip.MustParseAddrPort("[2001:db8::53]:53")
	var gotSrc netip.AddrPort
	var mu sync.Mutex
	client := func(src netip.AddrPort, proto string) (ClientInfo, bool) {
		mu.Lock()
		gotSrc = src
		mu.Unlock()
		return ClientInfo{Server: orig, Pid: 4242, Comm: "curl"}, proto == "udp"
	}
	f := startForwarder(t, Config{Upstreams: []netip.AddrPort{up.Addr}, Sink: events, Client: client})

	resp := mustAsk(t, f.Addrs()[0], "udp", "a.test", mdns.TypeA, 1232)
	ans := events.answerFor(t, "a.test", "A")

	var q *flows.DNSQuery
	for _, ev := range events.all() {
		if ev, ok := ev.(*flows.DNSQuery); ok {
			q = ev
		}
	}
	if q == nil {
		t.Fatal("no dns_query event")
	}
	for _, got := range []flows.DNSQuery{*q, ans.DNSQuery} {
		want := flows.DNSQuery{
			Header:   got.Header,
			Proc:     flows.Proc{Pid: 4242, Comm: "curl"},
			Protocol: "udp", Server: "[2001:db8::53]:53", ServerIP: "2001:db8::53", ServerPort: 53,
			QName: got.QName, QType: "A", ID: resp.Id, Upstream: up.Addr.String(),
		}
		if got != want || got.QName == nil || *got.QName != "a.test" {
			t.Errorf("got event %+v, want %+v", got, want)
		}
	}
	if q.Event != flows.EventDNSQuery || ans.Event != flows.EventDNSAnswer {
		t.Errorf("got events %q, %q", q.Event, ans.Event)
	}
	if ans.Bytes < 40 || ans.LatencyUs <= 0 || ans.Error != "" {
		t.Errorf("got bytes %d latency %dus error %q, want a sized answer", ans.Bytes, ans.LatencyUs, ans.Error)
	}

	mu.Lock()
	defer mu.Unlock()
	if !gotSrc.Addr().IsLoopback() || gotSrc.Port() == 0 {
		t.Errorf("got client source %s, want the loopback socket of the query", gotSrc)
	}
}

func TestServerDefaultsToForwarder(t *testing.T) {
	up := upstream(t, testenv.DNSServerOptions{})
	events := &eventLog{}
	unknown := func(netip.AddrPort, string) (ClientInfo, bool) {
		return ClientInfo{Server: netip.MustParseAddrPort("192.0.2.1:53"), Pid: 1}, false
	}
	f := startForwarder(t, Config{Upstreams: []netip.AddrPort{up.Addr}, Sink: events, Client: unknown})
	addr := f.Addrs()[0]

	mustAsk(t, addr, "tcp", "a.test", mdns.TypeA, 0)
	ans := events.answerFor(t, "a.test", "A")

	if ans.Server != addr.String() || ans.ServerPort != int(addr.Port()) || ans.Protocol != "tcp" {
		t.Errorf("got server %s port %d protocol %s, want %s tcp", ans.Server, ans.ServerPort, ans.Protocol, addr)
	}
	if ans.Pid != 0 {
		t.Errorf("got pid %d from a client lookup that failed, want 0", ans.Pid)
	}
}

func TestHostsFileAnsweredLocally(t *testing.T) {
	up := upstream(t, testenv.DNSServerOptions{})
	events := &eventLog{}
	var learned atomic.Int32
	hosts := map[string][]netip.Addr{
		"Pinned.Test.": {netip.MustParseAddr("192.0.2.99"), netip.MustParseAddr("2001:db8::99")},
	}
	learn := func(netip.Addr, []string, time.Duration) error { learned.Add(1); return nil }
	f := startForwarder(t, Config{Upstreams: []netip.AddrPort{up.Addr}, Sink: events, Hosts: hosts, Learn: learn})
	addr := f.Addrs()[0]

	tests := []struct {
		qname string
		qtype uint16
		want  []string
		ptr   string
	}{
		{"pinned.test", mdns.TypeA, []string{"192.0.2.99"}, ""},
		{"PINNED.test", mdns.TypeAAAA, []string{"2001:db8::99"}, ""},
		{"pinned.test", mdns.TypeMX, nil, ""},
		{"99.2.0.192.in-addr.arpa", mdns.TypePTR, nil, "pinned.test."},
	}
	for _, tt := range tests {
		resp := mustAsk(t, addr, "udp", tt.qname, tt.qtype, 0)
		if got := answerIPs(resp); !slices.Equal(got, tt.want) || resp.Rcode != mdns.RcodeSuccess {
			t.Errorf("%s %d: got %v rcode %d, want %v NOERROR", tt.qname, tt.qtype, got, resp.Rcode, tt.want)
		}
		if tt.ptr != "" && (len(resp.Answer) != 1 || resp.Answer[0].(*mdns.PTR).Ptr != tt.ptr) {
			t.Errorf("got PTR answer %v, want %s", resp.Answer, tt.ptr)
		}
		ev := events.answerFor(t, normalizeName(tt.qname), mdns.TypeToString[tt.qtype])
		if ev.Mode != flows.ModeHostsFile || ev.Upstream != "" {
			t.Errorf("%s: got mode %q upstream %q, want hosts_file and none", tt.qname, ev.Mode, ev.Upstream)
		}
	}

	if q := up.Queries(); len(q) != 0 {
		t.Errorf("got %d upstream queries, want none: %v", len(q), q)
	}
	if got := learned.Load(); got != 2 {
		t.Errorf("got %d learned addresses, want 2", got)
	}
	if got := f.Names().Lookup(netip.MustParseAddr("192.0.2.99")); !slices.Equal(got, []string{"pinned.test"}) {
		t.Errorf("got names %v, want [pinned.test]", got)
	}
}

func TestOffline(t *testing.T) {
	up := upstream(t, testenv.DNSServerOptions{})
	events := &eventLog{}
	f := startForwarder(t, Config{Upstreams: []netip.AddrPort{up.Addr}, Offline: true, Sink: events})

	for _, proto := range []string{"udp", "tcp"} {
		resp := mustAsk(t, f.Addrs()[0], proto, "a.test", mdns.TypeA, 0)
		if resp.Rcode != mdns.RcodeSuccess || len(resp.Answer) != 0 {
			t.Errorf("%s: got rcode %d answers %v, want empty NOERROR", proto, resp.Rcode, resp.Answer)
		}
	}

	ev := events.answerFor(t, "a.test", "A")
	if ev.Mode != flows.ModeSyntheticEmpty || len(ev.AnswerIPs) != 0 || ev.AnswerIPs == nil {
		t.Errorf("got mode %q answer_ips %#v, want synthetic_empty and []", ev.Mode, ev.AnswerIPs)
	}
	if q := up.Queries(); len(q) != 0 {
		t.Errorf("got %d upstream queries, want none", len(q))
	}
}

// denyPolicy denies one name.
type denyPolicy struct{ name string }

func (p denyPolicy) CheckName(name string) (bool, *flows.PolicyViolation) {
	if name != p.name {
		return false, nil
	}
	matched := p.name

	return true, &flows.PolicyViolation{
		ReasonCode: "deny_domain", Control: "--deny-domain", MatchedDomain: &matched,
	}
}

func TestDeniedName(t *testing.T) {
	up := upstream(t, testenv.DNSServerOptions{})
	events := &eventLog{}
	client := func(netip.AddrPort, string) (ClientInfo, bool) { return ClientInfo{Pid: 7, Comm: "wget"}, true }
	f := startForwarder(t, Config{
		Upstreams: []netip.AddrPort{up.Addr}, Sink: events, Policy: denyPolicy{"blocked.test"}, Client: client,
	})

	resp := mustAsk(t, f.Addrs()[0], "udp", "Blocked.Test", mdns.TypeA, 0)
	if resp.Rcode != mdns.RcodeSuccess || len(resp.Answer) != 0 {
		t.Errorf("got rcode %d answers %v, want empty NOERROR", resp.Rcode, resp.Answer)
	}
	mustAsk(t, f.Addrs()[0], "udp", "a.test", mdns.TypeA, 0)

	ev := events.answerFor(t, "blocked.test", "A")
	if ev.Mode != flows.ModeSyntheticEmpty || ev.Upstream != "" {
		t.Errorf("got mode %q upstream %q, want synthetic_empty and none", ev.Mode, ev.Upstream)
	}
	if n := namesFor(up.Queries(), "blocked.test"); n != 0 {
		t.Errorf("got %d upstream queries for the denied name, want 0", n)
	}
	if n := namesFor(up.Queries(), "a.test"); n != 1 {
		t.Errorf("got %d upstream queries for an allowed name, want 1", n)
	}

	var v *flows.PolicyViolation
	for _, e := range events.all() {
		if e, ok := e.(*flows.PolicyViolation); ok {
			v = e
		}
	}
	if v == nil {
		t.Fatal("no policy_violation event")
	}
	if v.Protocol != "dns" || v.Action != flows.ActionDeny || v.RemoteStr != "blocked.test" ||
		v.Pid != 7 || v.Comm != "wget" || v.ReasonCode != "deny_domain" || *v.MatchedDomain != "blocked.test" {
		t.Errorf("got violation %+v, want a dns deny of blocked.test by pid 7", v)
	}
	if got := f.Stats().Denied; got != 1 {
		t.Errorf("got %d denied, want 1", got)
	}
}

func TestLearnBeforeAnswer(t *testing.T) {
	up := upstream(t, testenv.DNSServerOptions{})
	type call struct {
		ip    netip.Addr
		names []string
		ttl   time.Duration
	}
	calls := make(chan call, 4)
	release := make(chan struct{})
	learn := func(ip netip.Addr, names []string, ttl time.Duration) error {
		calls <- call{ip, slices.Clone(names), ttl}
		<-release
		return nil
	}
	f := startForwarder(t, Config{Upstreams: []netip.AddrPort{up.Addr}, Learn: learn})

	answered := make(chan *mdns.Msg, 1)
	go func() {
		resp, _ := ask(f.Addrs()[0], "udp", "www.chain.test", mdns.TypeA, 0)
		answered <- resp
	}()

	var c call
	select {
	case c = <-calls:
	case <-time.After(5 * time.Second):
		t.Fatal("Learn not called within 5s")
	}
	select {
	case <-answered:
		t.Fatal("the client got its answer before Learn returned")
	case <-time.After(100 * time.Millisecond):
	}
	close(release)

	chain := []string{"www.chain.test", "mid.chain.test", "end.chain.test"}
	want := call{netip.MustParseAddr("192.0.2.20"), chain, 100 * time.Second}
	if c.ip != want.ip || !slices.Equal(c.names, want.names) || c.ttl != want.ttl {
		t.Errorf("got Learn(%s, %v, %s), want Learn(%s, %v, %s)", c.ip, c.names, c.ttl, want.ip, want.names, want.ttl)
	}
	select {
	case resp := <-answered:
		if resp == nil || !slices.Equal(answerIPs(resp), []string{"192.0.2.20"}) {
			t.Errorf("got answer %v, want 192.0.2.20", resp)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no answer within 5s after Learn returned")
	}
	if got := f.Names().Lookup(want.ip); !slices.Equal(got, want.names) {
		t.Errorf("got names %v, want %v", got, want.names)
	}
}

func TestLearnFailure(t *testing.T) {
	up := upstream(t, testenv.DNSServerOptions{})
	events := &eventLog{}
	learn := func(netip.Addr, []string, time.Duration) error { return errors.New("map full") }
	f := startForwarder(t, Config{Upstreams: []netip.AddrPort{up.Addr}, Learn: learn, Sink: events})

	resp := mustAsk(t, f.Addrs()[0], "udp", "a.test", mdns.TypeA, 0)
	if resp.Rcode != mdns.RcodeServerFailure || len(resp.Answer) != 0 {
		t.Errorf("got rcode %d answers %v, want SERVFAIL without records", resp.Rcode, resp.Answer)
	}

	ev := events.answerFor(t, "a.test", "A")
	if ev.Mode != flows.ModeFailed || ev.Error == "" || len(ev.AnswerIPs) != 0 {
		t.Errorf("got mode %q error %q ips %v, want failed with an error", ev.Mode, ev.Error, ev.AnswerIPs)
	}
	if s := f.Stats(); s.LearnErrors != 1 || s.Failures != 1 {
		t.Errorf("got learn errors %d failures %d, want 1 and 1", s.LearnErrors, s.Failures)
	}
	if got := f.Names().Lookup(netip.MustParseAddr("192.0.2.1")); got != nil {
		t.Errorf("got names %v for an address not learned, want none", got)
	}
}

func TestUpstreamFailures(t *testing.T) {
	const timeout, attempts = 200 * time.Millisecond, 2
	slowName := map[string]time.Duration{"slow.test": time.Minute}
	budget := timeout*attempts + 500*time.Millisecond

	tests := []struct {
		name  string
		qname string
		opts  testenv.DNSServerOptions
		down  bool
	}{
		{"refused", "a.test", testenv.DNSServerOptions{}, true},
		{"timeout", "drop.test", testenv.DNSServerOptions{Drop: map[string]bool{"drop.test": true}}, false},
		{"slow", "slow.test", testenv.DNSServerOptions{Delay: slowName}, false},
		{"malformed", "a.test", testenv.DNSServerOptions{Malformed: true}, false},
		{"truncated without tcp", "a.test", testenv.DNSServerOptions{TruncateUDP: true, NoTCP: true}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bad := testenv.ClosedLoopbackPort(t)
			if !tt.down {
				bad = upstream(t, tt.opts).Addr
			}
			events := &eventLog{}
			f := startForwarder(t, Config{
				Upstreams: []netip.AddrPort{bad}, Timeout: timeout, Attempts: attempts, Sink: events,
			})

			start := time.Now()
			resp := mustAsk(t, f.Addrs()[0], "udp", tt.qname, mdns.TypeA, 0)
			took := time.Since(start)

			if resp.Rcode != mdns.RcodeServerFailure {
				t.Errorf("got rcode %s, want SERVFAIL", mdns.RcodeToString[resp.Rcode])
			}
			if took > budget {
				t.Errorf("got SERVFAIL after %s, want within %s", took, budget)
			}
			ev := events.answerFor(t, tt.qname, "A")
			if ev.Mode != flows.ModeFailed || ev.Error == "" || ev.RCode != "SERVFAIL" {
				t.Errorf("got mode %q rcode %q error %q, want failed SERVFAIL with an error", ev.Mode, ev.RCode, ev.Error)
			}
			if s := f.Stats(); s.UpstreamErrors == 0 || s.Failures != 1 {
				t.Errorf("got upstream errors %d failures %d, want >0 and 1", s.UpstreamErrors, s.Failures)
			}
		})
	}
}

func TestSlowQueriesDoNotStallOthers(t *testing.T) {
	up := upstream(t, testenv.DNSServerOptions{Delay: map[string]time.Duration{"slow.test": time.Minute}})
	f := startForwarder(t, Config{
		Upstreams: []netip.AddrPort{up.Addr}, Timeout: 500 * time.Millisecond, Attempts: 2,
	})
	addr := f.Addrs()[0]

	var wg sync.WaitGroup
	slowRcodes := make(chan int, 10)
	for range 10 {
		wg.Go(func() {
			resp, err := ask(addr, "udp", "slow.test", mdns.TypeA, 0)
			if err == nil {
				slowRcodes <- resp.Rcode
			}
		})
	}

	time.Sleep(50 * time.Millisecond)
	var slowest time.Duration
	for i := range 50 {
		start := time.Now()
		proto := []string{"udp", "tcp"}[i%2]
		resp := mustAsk(t, addr, proto, "a.test", mdns.TypeA, 0)
		if resp.Rcode != mdns.RcodeSuccess {
			t.Fatalf("fast query %d: got rcode %d, want NOERROR", i, resp.Rcode)
		}
		slowest = max(slowest, time.Since(start))
	}
	// A fast query stalled behind a slow one would wait for its 500ms
	// attempt to time out.
	if slowest > 400*time.Millisecond {
		t.Errorf("slowest fast query took %s while slow ones were pending, want under 400ms", slowest)
	}

	wg.Wait()
	close(slowRcodes)
	n := 0
	for rc := range slowRcodes {
		n++
		if rc != mdns.RcodeServerFailure {
			t.Errorf("slow query: got rcode %d, want SERVFAIL", rc)
		}
	}
	if n != 10 {
		t.Errorf("got %d answers to slow queries, want 10", n)
	}
}

func TestBusyAnswersServfail(t *testing.T) {
	up := upstream(t, testenv.DNSServerOptions{Delay: map[string]time.Duration{"slow.test": time.Minute}})
	events := &eventLog{}
	f := startForwarder(t, Config{
		Upstreams: []netip.AddrPort{up.Addr}, Timeout: 300 * time.Millisecond, Attempts: 1,
		MaxInFlight: 2, Sink: events,
	})

	var wg sync.WaitGroup
	var servfails atomic.Int32
	for range 6 {
		wg.Go(func() {
			resp, err := ask(f.Addrs()[0], "udp", "slow.test", mdns.TypeA, 0)
			if err == nil && resp.Rcode == mdns.RcodeServerFailure {
				servfails.Add(1)
			}
		})
	}
	wg.Wait()

	s := f.Stats()
	if servfails.Load() != 6 || s.Dropped < 1 || s.Dropped > 4 || s.Queries != 6 {
		t.Errorf("got %d SERVFAIL, stats %+v; want 6 SERVFAIL, 1 to 4 dropped of 6", servfails.Load(), s)
	}
	busy := 0
	for _, ev := range events.all() {
		if a, ok := ev.(*flows.DNSAnswer); ok && a.Error == errBusy.Error() {
			busy++
		}
	}
	if uint64(busy) != s.Dropped {
		t.Errorf("got %d busy answer events, want %d (one per dropped query)", busy, s.Dropped)
	}
}

func TestTruncatedRetriesOverTCP(t *testing.T) {
	up := upstream(t, testenv.DNSServerOptions{TruncateUDP: true})
	f := startForwarder(t, Config{Upstreams: []netip.AddrPort{up.Addr}})

	resp := mustAsk(t, f.Addrs()[0], "udp", "www.chain.test", mdns.TypeA, 0)
	if got := answerIPs(resp); !slices.Equal(got, []string{"192.0.2.20"}) || resp.Truncated {
		t.Errorf("got %v truncated %v, want [192.0.2.20] complete", got, resp.Truncated)
	}

	var protos []string
	for _, q := range up.Queries() {
		protos = append(protos, q.Proto)
	}
	if !slices.Equal(protos, []string{"udp", "tcp"}) {
		t.Errorf("got upstream queries over %v, want [udp tcp]", protos)
	}
}

func TestEDNS0SizeAndTruncation(t *testing.T) {
	up := upstream(t, testenv.DNSServerOptions{})
	events := &eventLog{}
	f := startForwarder(t, Config{Upstreams: []netip.AddrPort{up.Addr}, Sink: events})
	addr := f.Addrs()[0]

	tests := []struct {
		name      string
		proto     string
		edns      uint16
		truncated bool
		maxBytes  int
	}{
		{"udp without EDNS0", "udp", 0, true, 512},
		{"udp with small EDNS0", "udp", 600, true, 600},
		{"udp with EDNS0 4096", "udp", 4096, false, 4096},
		{"tcp", "tcp", 0, false, 65535},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := mustAsk(t, addr, tt.proto, "big.test", mdns.TypeA, tt.edns)
			resp.Compress = true
			wire, err := resp.Pack()
			if err != nil {
				t.Fatalf("pack answer: %v", err)
			}

			if resp.Truncated != tt.truncated {
				t.Errorf("got TC %v, want %v", resp.Truncated, tt.truncated)
			}
			if len(wire) > tt.maxBytes {
				t.Errorf("got %d bytes, want at most %d", len(wire), tt.maxBytes)
			}
			if n := len(answerIPs(resp)); !tt.truncated && n != 60 {
				t.Errorf("got %d addresses, want 60", n)
			}
			if got := resp.IsEdns0() != nil; got != (tt.edns > 0) {
				t.Errorf("got EDNS0 in answer %v, want %v", got, tt.edns > 0)
			}
		})
	}

	for _, q := range up.Queries() {
		if q.Proto == "udp" && q.EDNS0 && q.UDPSize != 600 && q.UDPSize != 4096 {
			t.Errorf("got upstream EDNS0 size %d, want the client's 600 or 4096", q.UDPSize)
		}
	}
	if f.Stats().Truncated < 2 {
		t.Errorf("got %d truncated answers, want at least 2", f.Stats().Truncated)
	}
}

func TestKeepsClientID(t *testing.T) {
	up := upstream(t, testenv.DNSServerOptions{})
	f := startForwarder(t, Config{Upstreams: []netip.AddrPort{up.Addr}})

	for _, proto := range []string{"udp", "tcp"} {
		m := new(mdns.Msg)
		m.SetQuestion("a.test.", mdns.TypeA)
		m.Id = 0xBEEF
		c := &mdns.Client{Net: proto, Timeout: 5 * time.Second}
		resp, _, err := c.Exchange(m, f.Addrs()[0].String())
		if err != nil {
			t.Fatalf("%s: exchange: %v", proto, err)
		}
		if resp.Id != 0xBEEF {
			t.Errorf("%s: got ID %#x, want 0xbeef", proto, resp.Id)
		}
	}

	for _, q := range up.Queries() {
		if q.ID == 0xBEEF {
			t.Errorf("got upstream ID %#x equal to the client's, want a fresh random ID", q.ID)
		}
	}
}

func TestFailover(t *testing.T) {
	up := upstream(t, testenv.DNSServerOptions{})
	down := testenv.ClosedLoopbackPort(t)
	events := &eventLog{}
	f := startForwarder(t, Config{Upstreams: []netip.AddrPort{down, up.Addr}, Timeout: time.Second, Sink: events})

	for range 3 {
		resp := mustAsk(t, f.Addrs()[0], "udp", "a.test", mdns.TypeA, 0)
		if resp.Rcode != mdns.RcodeSuccess {
			t.Fatalf("got rcode %d, want NOERROR from the second upstream", resp.Rcode)
		}
	}

	if ev := events.answerFor(t, "a.test", "A"); ev.Upstream != up.Addr.String() {
		t.Errorf("got upstream %q, want %q", ev.Upstream, up.Addr)
	}
	if got := f.Stats().UpstreamErrors; got != 1 {
		t.Errorf("got %d upstream errors, want 1 (later queries go to the working upstream first)", got)
	}
}

func TestNoQuestion(t *testing.T) {
	up := upstream(t, testenv.DNSServerOptions{})
	events := &eventLog{}
	f := startForwarder(t, Config{Upstreams: []netip.AddrPort{up.Addr}, Sink: events})

	m := &mdns.Msg{MsgHdr: mdns.MsgHdr{Id: 99, RecursionDesired: true}}
	c := &mdns.Client{Net: "udp", Timeout: 5 * time.Second}
	resp, _, err := c.Exchange(m, f.Addrs()[0].String())
	if err != nil {
		t.Fatalf("exchange: %v", err)
	}
	if resp.Rcode != mdns.RcodeFormatError {
		t.Errorf("got rcode %d, want FORMERR", resp.Rcode)
	}

	deadline := time.Now().Add(2 * time.Second)
	for events.count(flows.EventDNSAnswer) == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	for _, ev := range events.all() {
		a, ok := ev.(*flows.DNSAnswer)
		if ok && (a.QName != nil || a.QType != "unknown" || a.Mode != flows.ModeFailed) {
			t.Errorf("got qname %v qtype %q mode %q, want null, unknown, failed", a.QName, a.QType, a.Mode)
		}
	}
	if len(up.Queries()) != 0 {
		t.Errorf("got %d upstream queries, want 0", len(up.Queries()))
	}
}

func TestDefaultListenSharesPort(t *testing.T) {
	up := upstream(t, testenv.DNSServerOptions{})
	f := startForwarder(t, Config{Upstreams: []netip.AddrPort{up.Addr}, Listen: []netip.AddrPort{}})

	addrs := f.Addrs()
	if len(addrs) == 0 || addrs[0].Addr() != netip.MustParseAddr("127.0.0.1") {
		t.Fatalf("got listen addresses %v, want 127.0.0.1 first", addrs)
	}
	if ln, err := net.Listen("tcp", "[::1]:0"); err == nil {
		ln.Close()
		if len(addrs) != 2 || addrs[1].Addr() != netip.IPv6Loopback() {
			t.Errorf("got listen addresses %v, want 127.0.0.1 and ::1", addrs)
		}
	}
	for _, a := range addrs {
		if a.Port() != addrs[0].Port() {
			t.Errorf("got port %d on %s, want the shared port %d", a.Port(), a, addrs[0].Port())
		}
		for _, proto := range []string{"udp", "tcp"} {
			resp := mustAsk(t, a, proto, "a.test", mdns.TypeA, 0)
			if resp.Rcode != mdns.RcodeSuccess {
				t.Errorf("%s %s: got rcode %d, want NOERROR", a, proto, resp.Rcode)
			}
		}
	}
}

func TestCloseAbortsPendingQueries(t *testing.T) {
	up := upstream(t, testenv.DNSServerOptions{Delay: map[string]time.Duration{"slow.test": time.Minute}})
	f, err := Start(t.Context(), Config{
		Upstreams: []netip.AddrPort{up.Addr}, Listen: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")},
		Timeout: 10 * time.Second,
	})
	if err != nil {
		t.Fatalf("start forwarder: %v", err)
	}

	go ask(f.Addrs()[0], "udp", "slow.test", mdns.TypeA, 0)
	deadline := time.Now().Add(2 * time.Second)
	for len(up.Queries()) == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}

	start := time.Now()
	f.Close()
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("Close took %s with a query pending, want under 2s", took)
	}
	if s := f.Stats(); s.Queries != 1 || s.Failures != 1 {
		t.Errorf("got stats %+v, want the pending query failed", s)
	}
}

func TestStartReadsResolvConf(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	stub := filepath.Join(dir, "stub")
	for path, text := range map[string]string{empty: "search test\n", stub: "nameserver 127.0.0.53\n"} {
		if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	listen := []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")}

	if _, err := Start(t.Context(), Config{ResolvConf: empty, Listen: listen}); !errors.Is(err, ErrNoNameserver) {
		t.Errorf("got error %v, want ErrNoNameserver", err)
	}
	if f, err := Start(t.Context(), Config{ResolvConf: empty, Listen: listen, Offline: true}); err != nil {
		t.Errorf("offline: got error %v, want none (no upstream needed)", err)
	} else {
		f.Close()
	}

	f, err := Start(t.Context(), Config{ResolvConf: stub, Listen: listen})
	if err != nil {
		t.Fatalf("got error %v, want none", err)
	}
	defer f.Close()
	if got := f.cfg.Upstreams; !slices.Equal(got, []netip.AddrPort{netip.MustParseAddrPort("127.0.0.53:53")}) {
		t.Errorf("got upstreams %v, want [127.0.0.53:53]", got)
	}
}

func TestStartFailsOnBusyPort(t *testing.T) {
	f := startForwarder(t, Config{Offline: true})

	_, err := Start(t.Context(), Config{Offline: true, Listen: f.Addrs()})
	if err == nil || !strings.Contains(err.Error(), f.Addrs()[0].String()) {
		t.Errorf("got error %v, want one naming %s", err, f.Addrs()[0])
	}
}
