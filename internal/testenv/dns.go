package testenv

import (
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
)

// DNSServerOptions change how a test DNS server misbehaves. The zero value
// answers every query at once from its records.
type DNSServerOptions struct {
	// Delay holds back the answers for a name (lowercase, no trailing
	// dot); the key "*" delays every name. A delayed answer is abandoned
	// when the test ends.
	Delay map[string]time.Duration
	// Drop names are never answered.
	Drop map[string]bool
	// TruncateUDP answers every UDP query with an empty answer with TC set;
	// TCP answers stay complete.
	TruncateUDP bool
	// Malformed answers every query with bytes that do not parse.
	Malformed bool
	// NoTCP serves UDP only.
	NoTCP bool
}

// DNSLogEntry is one query that reached a test DNS server.
type DNSLogEntry struct {
	Proto   string // "udp" or "tcp"
	Name    string // lowercase, no trailing dot
	Type    uint16
	ID      uint16
	EDNS0   bool
	UDPSize uint16 // the advertised EDNS0 size, 0 without EDNS0
}

// DNSServer is an authoritative DNS server on 127.0.0.1 serving UDP and TCP
// on the same port, for tests. It is stopped by the test's cleanup.
type DNSServer struct {
	Addr netip.AddrPort

	records []mdns.RR
	opts    DNSServerOptions
	done    chan struct{}

	mu  sync.Mutex
	log []DNSLogEntry
}

// StartDNSServer starts a server answering from records in zone-file form
// ("www.example.test. 300 IN CNAME example.test."). It follows CNAME chains
// within its records, answers NXDOMAIN for names it has no record of, and cuts
// UDP answers to the client's advertised size (512 without EDNS0) with TC set.
func StartDNSServer(t testing.TB, records []string, opts DNSServerOptions) *DNSServer {
	t.Helper()

	return StartDNSServerAt(t, nil, netip.AddrPort{}, records, opts)
}

// StartDNSServerAt is StartDNSServer serving addr (UDP and TCP) inside ns
// (nil: the host). An invalid addr picks a free port on 127.0.0.1. Binding a
// port below 1024 needs root.
func StartDNSServerAt(t testing.TB, ns *Netns, addr netip.AddrPort, records []string,
	opts DNSServerOptions) *DNSServer {
	t.Helper()

	s := &DNSServer{opts: opts, done: make(chan struct{})}
	for _, r := range records {
		rr, err := mdns.NewRR(r)
		if err != nil {
			t.Fatalf("parse test record %q: %v", r, err)
		}
		s.records = append(s.records, rr)
	}

	var pc *net.UDPConn
	var ln net.Listener
	var err error
	switch {
	case !addr.IsValid() && ns == nil:
		pc, ln = listenDNSPair(t)
	case !addr.IsValid():
		addr = netip.MustParseAddrPort("127.0.0.1:0")
		fallthrough
	default:
		err = ns.Do(func() error {
			var err error
			if pc, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(addr)); err != nil {
				return err
			}
			ln, err = net.Listen("tcp", pc.LocalAddr().String())
			return err
		})
	}
	if err != nil {
		t.Fatalf("listen on %s in netns %s: %v", addr, ns, err)
	}
	ap := pc.LocalAddr().(*net.UDPAddr).AddrPort()
	s.Addr = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	servers := []*mdns.Server{{PacketConn: pc, Handler: mdns.HandlerFunc(s.serve)}}
	if !opts.NoTCP {
		servers = append(servers, &mdns.Server{Listener: ln, Handler: mdns.HandlerFunc(s.serve)})
	} else {
		ln.Close()
	}

	for _, srv := range servers {
		startDNS(t, srv)
	}
	t.Cleanup(func() {
		close(s.done)
		for _, srv := range servers {
			srv.Shutdown()
		}
	})

	return s
}

// listenDNSPair binds UDP and TCP on one free loopback port.
func listenDNSPair(t testing.TB) (*net.UDPConn, net.Listener) {
	t.Helper()

	for range 32 {
		pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatalf("listen udp: %v", err)
		}

		ln, err := net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			return pc, ln
		}
		pc.Close()
	}
	t.Fatal("find a loopback port free for both udp and tcp: none in 32 tries")

	return nil, nil
}

func startDNS(t testing.TB, srv *mdns.Server) {
	t.Helper()

	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go srv.ActivateAndServe()

	select {
	case <-started:
	case <-time.After(5 * time.Second):
		t.Fatal("start test dns server: not started within 5s")
	}
}

// Queries returns the queries received so far, in order.
func (s *DNSServer) Queries() []DNSLogEntry {
	s.mu.Lock()
	defer s.mu.Unlock()

	return append([]DNSLogEntry(nil), s.log...)
}

func (s *DNSServer) serve(w mdns.ResponseWriter, req *mdns.Msg) {
	entry := s.record(w, req)

	if s.opts.Drop[entry.Name] {
		return
	}
	if !s.wait(entry.Name) {
		return
	}
	if s.opts.Malformed {
		w.Write([]byte{byte(req.Id >> 8), byte(req.Id), 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0, 3, 'b', 'a'})
		return
	}

	resp := s.answer(req)
	if entry.Proto == "udp" {
		if s.opts.TruncateUDP {
			resp.Answer, resp.Ns = nil, nil
			resp.Truncated = true
		}
		resp.Truncate(max(int(entry.UDPSize), mdns.MinMsgSize))
	}
	w.WriteMsg(resp)
}

func (s *DNSServer) record(w mdns.ResponseWriter, req *mdns.Msg) DNSLogEntry {
	e := DNSLogEntry{Proto: "udp", ID: req.Id}
	if _, ok := w.RemoteAddr().(*net.TCPAddr); ok {
		e.Proto = "tcp"
	}
	if len(req.Question) > 0 {
		e.Name = strings.ToLower(strings.TrimSuffix(req.Question[0].Name, "."))
		e.Type = req.Question[0].Qtype
	}
	if opt := req.IsEdns0(); opt != nil {
		e.EDNS0, e.UDPSize = true, opt.UDPSize()
	}

	s.mu.Lock()
	s.log = append(s.log, e)
	s.mu.Unlock()

	return e
}

// wait sleeps for the delay of name and reports false if the test ended.
func (s *DNSServer) wait(name string) bool {
	d, ok := s.opts.Delay[name]
	if !ok {
		d = s.opts.Delay["*"]
	}
	if d == 0 {
		return true
	}

	select {
	case <-time.After(d):
		return true
	case <-s.done:
		return false
	}
}

// answer builds the reply to req from the records, following CNAMEs.
func (s *DNSServer) answer(req *mdns.Msg) *mdns.Msg {
	resp := new(mdns.Msg)
	resp.SetReply(req)
	resp.Authoritative = true
	if opt := req.IsEdns0(); opt != nil {
		resp.SetEdns0(opt.UDPSize(), opt.Do())
	}
	if len(req.Question) != 1 {
		resp.Rcode = mdns.RcodeFormatError
		return resp
	}

	q := req.Question[0]
	if !s.known(q.Name) {
		resp.Rcode = mdns.RcodeNameError
		return resp
	}

	name := q.Name
	for range 8 {
		found, cname := s.lookup(name, q.Qtype)
		resp.Answer = append(resp.Answer, found...)
		if cname == nil || len(found) > 0 {
			break
		}
		resp.Answer = append(resp.Answer, cname)
		name = cname.Target
	}

	return resp
}

func (s *DNSServer) known(name string) bool {
	for _, rr := range s.records {
		if strings.EqualFold(rr.Header().Name, name) {
			return true
		}
	}

	return false
}

// lookup returns the records of name and type t (any type for ANY), or the
// CNAME of name.
func (s *DNSServer) lookup(name string, t uint16) ([]mdns.RR, *mdns.CNAME) {
	var found []mdns.RR
	var cname *mdns.CNAME
	for _, rr := range s.records {
		h := rr.Header()
		if !strings.EqualFold(h.Name, name) {
			continue
		}
		if h.Rrtype == t || t == mdns.TypeANY {
			found = append(found, rr)
		} else if c, ok := rr.(*mdns.CNAME); ok {
			cname = c
		}
	}

	return found, cname
}

// ClosedLoopbackPort returns a loopback UDP and TCP address with nothing
// listening: queries to it are refused at once.
func ClosedLoopbackPort(t testing.TB) netip.AddrPort {
	t.Helper()

	pc, ln := listenDNSPair(t)
	ap := pc.LocalAddr().(*net.UDPAddr).AddrPort()
	pc.Close()
	ln.Close()

	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
