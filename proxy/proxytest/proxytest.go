// Package proxytest runs real HTTP, HTTPS and SOCKS5 proxies and an origin
// server on loopback for tests.
//
// The proxies follow the network rule of childflow's tests: they connect only
// to loopback addresses, refuse any other target, and never use real DNS (a
// name is resolved through Options.Resolve or refused). Every server is
// closed by the test's cleanup, together with the connections it still holds.
package proxytest

import (
	"bufio"
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

// Options configure a test proxy. The zero value is an open proxy on
// 127.0.0.1 that knows no names.
type Options struct {
	// User and Password, when User is set, are the only accepted
	// credentials (HTTP Basic, SOCKS5 username/password).
	User, Password string
	// Resolve maps the host names the proxy can reach to loopback
	// addresses. Other names are refused.
	Resolve map[string]netip.Addr
	// Listen is the address to listen on; the default is "127.0.0.1:0".
	Listen string
	// SendAfterConnect is written right after a successful CONNECT answer,
	// in the same write, as if the target had spoken first.
	SendAfterConnect []byte
}

// Server is a running test proxy. Its methods are safe for concurrent use.
type Server struct {
	scheme string
	opts   Options
	ln     net.Listener
	serve  func(net.Conn)
	wg     sync.WaitGroup

	mu       sync.Mutex
	requests []string
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

	ln, err := net.Listen("tcp", opts.Listen)
	if err != nil {
		t.Fatalf("start %s test proxy: %v", scheme, err)
	}

	if wrap != nil {
		ln = wrap(ln)
	}

	s := &Server{scheme: scheme, opts: opts, ln: ln, conns: map[net.Conn]struct{}{}}
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

// Outbound returns the local addresses of the proxy's connections to
// targets, which is what a target sees as its peer.
func (s *Server) Outbound() []netip.AddrPort {
	s.mu.Lock()
	defer s.mu.Unlock()

	return append([]netip.AddrPort(nil), s.outbound...)
}

func (s *Server) record(target string) {
	s.mu.Lock()
	s.requests = append(s.requests, target)
	s.mu.Unlock()
}

// Reasons a target is refused.
var (
	errUnknownName = errors.New("unknown host name")
	errNotLoopback = errors.New("target is not on loopback")
)

// resolve turns a requested "host:port" into a loopback address.
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

	if !a.Unmap().IsLoopback() {
		return netip.AddrPort{}, errNotLoopback
	}

	return netip.AddrPortFrom(a.Unmap(), uint16(p)), nil
}

// dial connects to a resolved target and records the local address used.
func (s *Server) dial(a netip.AddrPort) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", a.String(), 5*time.Second)
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

	o := &Origin{}
	o.srv = start(t, "tcp", Options{Listen: addr}, nil,
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
