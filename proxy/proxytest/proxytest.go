// Package proxytest runs real HTTP, HTTPS and SOCKS5 proxies and an origin
// server on loopback for tests.
//
// The proxies follow the network rule of childflow's tests: they connect only
// to loopback addresses and to the prefixes a test lists in Options.Targets
// (addresses inside network namespaces the test created), refuse any other
// target, and never use real DNS (a name is resolved through Options.Resolve
// or refused). Every server is closed by the test's cleanup, together with
// the connections it still holds.
//
// A server can live in a test network namespace: pass a listener opened
// there as Options.Listener and a dial function that dials there as
// Options.Dial.
package proxytest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// handshakeTimeout bounds how long a proxy waits for a client's request.
const handshakeTimeout = 10 * time.Second

// dialTimeout bounds how long a proxy tries to reach a target.
const dialTimeout = 5 * time.Second

// Options configure a test proxy. The zero value is an open proxy on
// 127.0.0.1 that knows no names.
type Options struct {
	// User and Password, when User is set, are the only accepted
	// credentials (HTTP Basic, SOCKS5 username/password).
	User, Password string
	// Resolve maps the host names the proxy can reach to addresses it may
	// reach (loopback or Targets). Other names are refused.
	Resolve map[string]netip.Addr
	// Targets are the prefixes besides loopback that the proxy may
	// connect to. Tests list only addresses inside network namespaces they
	// created.
	Targets []netip.Prefix
	// Listen is the address to listen on; the default is "127.0.0.1:0".
	Listen string
	// Listener, when set, is served instead of listening on Listen (for
	// example a listener opened in a test network namespace). The server
	// closes it.
	Listener net.Listener
	// Dial, when set, connects the proxy to its targets (for example from
	// inside a test network namespace); the default is a net.Dialer.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Delay, when set, says how long to hold back the answer to a request
	// for a target ("host:port" as the client asked); the server's Close
	// ends the wait.
	Delay func(target string) time.Duration
	// SendAfterConnect is written right after a successful CONNECT answer
	// (HTTP or SOCKS5), in the same write, as if the target had spoken
	// first.
	SendAfterConnect []byte
}

// Server is a running test proxy. Its methods are safe for concurrent use.
type Server struct {
	scheme string
	opts   Options
	ln     net.Listener
	serve  func(net.Conn)
	wg     sync.WaitGroup

	done     chan struct{} // closed by Close
	mu       sync.Mutex
	requests []string
	clients  []netip.AddrPort
	outbound []netip.AddrPort
	conns    map[net.Conn]struct{}
	closed   bool
}

// start starts a server whose connections are handled by serve; wrap, when
// not nil, wraps its listener.
func start(t testing.TB, scheme string, opts Options, wrap func(net.Listener) net.Listener,
	serve func(*Server, net.Conn)) *Server {
	t.Helper()

	if opts.Listen == "" {
		opts.Listen = "127.0.0.1:0"
	}

	ln := opts.Listener
	if ln == nil {
		var err error
		if ln, err = net.Listen("tcp", opts.Listen); err != nil {
			t.Fatalf("start %s test proxy: %v", scheme, err)
		}
	}

	if wrap != nil {
		ln = wrap(ln)
	}

	s := &Server{scheme: scheme, opts: opts, ln: ln, conns: map[net.Conn]struct{}{},
		done: make(chan struct{})}
	s.serve = func(c net.Conn) { serve(s, c) }
	t.Cleanup(s.Close)
	s.wg.Add(1)
	go s.accept()

	return s
}

func (s *Server) accept() {
	defer s.wg.Done()

	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}

		if !s.track(c) {
			_ = c.Close()
			return
		}

		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer s.untrack(c)
			s.serve(c)
		}()
	}
}

func (s *Server) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()

	if !s.closed {
		s.conns[c] = struct{}{}
		if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
			ap := a.AddrPort()
			s.clients = append(s.clients, netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()))
		}
	}

	return !s.closed
}

func (s *Server) untrack(c net.Conn) {
	_ = c.Close()

	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

// Close stops the server, closes its connections and waits for its
// goroutines. The test's cleanup calls it; calling it again does nothing.
func (s *Server) Close() {
	s.mu.Lock()
	if !s.closed {
		close(s.done)
	}
	s.closed = true
	for c := range s.conns {
		_ = c.Close()
	}
	s.mu.Unlock()

	_ = s.ln.Close()
	s.wg.Wait()
}

// Addr returns the address the server listens on.
func (s *Server) Addr() netip.AddrPort {
	return s.ln.Addr().(*net.TCPAddr).AddrPort()
}

// URL returns the proxy URL without credentials, such as
// "socks5://127.0.0.1:40000".
func (s *Server) URL() string { return s.scheme + "://" + s.Addr().String() }

// Requests returns the targets clients asked for, in order, as they asked:
// "example.org:443", "127.0.0.1:80" or "[::1]:8080". Refused requests are
// included.
func (s *Server) Requests() []string {
	s.mu.Lock()
	defer s.mu.Unlock()

	return append([]string(nil), s.requests...)
}

// Clients returns the addresses the proxy's clients connected from, in
// order (IPv4-mapped addresses unmapped).
func (s *Server) Clients() []netip.AddrPort {
	s.mu.Lock()
	defer s.mu.Unlock()

	return append([]netip.AddrPort(nil), s.clients...)
}

// Outbound returns the local addresses of the proxy's connections to
// targets, which is what a target sees as its peer.
func (s *Server) Outbound() []netip.AddrPort {
	s.mu.Lock()
	defer s.mu.Unlock()

	return append([]netip.AddrPort(nil), s.outbound...)
}

// record notes a request for target, then holds it back for the delay the
// options ask. It returns false when the server closed meanwhile.
func (s *Server) record(target string) bool {
	s.mu.Lock()
	s.requests = append(s.requests, target)
	s.mu.Unlock()

	if s.opts.Delay == nil {
		return true
	}

	timer := time.NewTimer(s.opts.Delay(target))
	defer timer.Stop()

	select {
	case <-timer.C:
		return true
	case <-s.done:
		return false
	}
}

// Reasons a target is refused.
var (
	errUnknownName = errors.New("unknown host name")
	errNotLoopback = errors.New("target is neither on loopback nor in Options.Targets")
)

// resolve turns a requested "host:port" into an address the proxy may reach.
func (s *Server) resolve(hostport string) (netip.AddrPort, error) {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return netip.AddrPort{}, err
	}

	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return netip.AddrPort{}, err
	}

	a, err := netip.ParseAddr(host)
	if err != nil {
		var ok bool
		if a, ok = s.opts.Resolve[strings.ToLower(host)]; !ok {
			return netip.AddrPort{}, errUnknownName
		}
	}

	a = a.Unmap()
	if !s.allowed(a) {
		return netip.AddrPort{}, errNotLoopback
	}

	return netip.AddrPortFrom(a, uint16(p)), nil
}

// allowed reports whether the proxy may connect to a.
func (s *Server) allowed(a netip.Addr) bool {
	if a.IsLoopback() {
		return true
	}

	for _, p := range s.opts.Targets {
		if p.Contains(a) {
			return true
		}
	}

	return false
}

// dial connects to a resolved target and records the local address used.
func (s *Server) dial(a netip.AddrPort) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), dialTimeout)
	defer cancel()

	dial := s.opts.Dial
	if dial == nil {
		var d net.Dialer
		dial = d.DialContext
	}

	c, err := dial(ctx, "tcp", a.String())
	if err != nil {
		return nil, err
	}

	if !s.track(c) {
		_ = c.Close()
		return nil, net.ErrClosed
	}

	s.mu.Lock()
	s.outbound = append(s.outbound, c.LocalAddr().(*net.TCPAddr).AddrPort())
	s.mu.Unlock()

	return c, nil
}

// pipe copies both ways between a client and a target until both
// directions end, passing on half-closes, then closes both.
func (s *Server) pipe(client net.Conn, br *bufio.Reader, up net.Conn) {
	defer s.untrack(up)

	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = io.Copy(client, up)
		closeWrite(client)
	}()

	_, err := io.Copy(up, br)
	closeWrite(up)
	if err != nil {
		_ = client.Close()
		_ = up.Close()
	}
	<-done
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok && cw.CloseWrite() == nil {
		return
	}

	_ = c.Close()
}

// Origin is a test server that tells each client the peer address it saw,
// as "peer ADDR\n", then echoes what it receives until the client
// half-closes.
type Origin struct {
	srv   *Server
	mu    sync.Mutex
	peers []netip.AddrPort
}

// StartOrigin starts an Origin listening on addr ("127.0.0.1:0" or
// "[::1]:0"). The test's cleanup stops it.
func StartOrigin(t testing.TB, addr string) *Origin {
	t.Helper()

	return StartOriginOn(t, nil, addr)
}

// StartOriginOn starts an Origin serving ln, or listening on addr when ln is
// nil. The test's cleanup stops it and closes ln.
func StartOriginOn(t testing.TB, ln net.Listener, addr string) *Origin {
	t.Helper()

	o := &Origin{}
	o.srv = start(t, "tcp", Options{Listen: addr, Listener: ln}, nil,
		func(_ *Server, c net.Conn) { o.serve(c) })

	return o
}

func (o *Origin) serve(c net.Conn) {
	peer := c.RemoteAddr().(*net.TCPAddr).AddrPort()

	o.mu.Lock()
	o.peers = append(o.peers, peer)
	o.mu.Unlock()

	if _, err := fmt.Fprintf(c, "peer %s\n", peer); err != nil {
		return
	}

	_, _ = io.Copy(c, c)
	closeWrite(c)
	_, _ = io.Copy(io.Discard, c)
}

// Addr returns the address the origin listens on.
func (o *Origin) Addr() netip.AddrPort { return o.srv.Addr() }

// Peers returns the peer addresses of the connections the origin accepted.
func (o *Origin) Peers() []netip.AddrPort {
	o.mu.Lock()
	defer o.mu.Unlock()

	return append([]netip.AddrPort(nil), o.peers...)
}

// ReadPeer reads the origin's first line from r and returns the peer
// address it names.
func ReadPeer(r *bufio.Reader) (netip.AddrPort, error) {
	line, err := r.ReadString('\n')
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("read origin greeting: %w", err)
	}

	a, ok := strings.CutPrefix(strings.TrimSuffix(line, "\n"), "peer ")
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("read origin greeting: unexpected %q", line)
	}

	return netip.ParseAddrPort(a)
}
