package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/childflow/childflow/flows"
)

// DefaultMaxConns is the RelayConfig.MaxConns used when it is 0.
const DefaultMaxConns = 4096

// ContextDialer opens a connection to a Target; *Dialer is one.
type ContextDialer interface {
	DialContext(ctx context.Context, t Target) (net.Conn, error)
}

// Origin is what the relay knows about a redirected connection: where the
// program wanted to go, and who it was.
type Origin struct {
	Target Target
	Proc   flows.Proc
	FlowID uint64
}

// RelayConfig configures a Relay. Dialer and Lookup are required.
type RelayConfig struct {
	// Dialer reaches targets through the proxy.
	Dialer ContextDialer
	// Lookup returns the origin of an accepted connection from its client's
	// address (the source address and port the program's socket used). It
	// must be safe for concurrent use. A connection it does not know is
	// reset: only redirected connections are relayed, so other local
	// processes cannot use the proxy's credentials through the relay.
	Lookup func(client netip.AddrPort) (Origin, bool)
	// Sink receives a flows.ConnectResult per known connection; nil drops
	// them.
	Sink flows.Sink
	// Logger receives accept errors and per-connection debug messages; nil
	// discards them.
	Logger *slog.Logger
	// Listen lists the addresses to listen on; port 0 picks a free port.
	// The default is 127.0.0.1:0 and [::1]:0, where [::1] is skipped (with a
	// warning) when the host has no IPv6 loopback.
	Listen []netip.AddrPort
	// MaxConns bounds the connections relayed at once (0: DefaultMaxConns).
	// Connections past it are reset and counted in Stats.Rejected.
	MaxConns int
	// Proxy is the proxy as events show it, without a password. The default
	// is the Dialer's Redacted method, when it has one (as *Dialer has).
	Proxy string
}

// Stats are the relay's counters since it started.
type Stats struct {
	Accepted uint64 // connections accepted
	OK       uint64 // relayed: the proxy accepted the CONNECT
	Failed   uint64 // the dial through the proxy failed; the client was reset
	Unknown  uint64 // Lookup did not know the client; it was reset
	Rejected uint64 // over MaxConns; the client was reset
	BytesOut uint64 // bytes from clients to the proxy, of finished directions
	BytesIn  uint64 // bytes from the proxy to clients, of finished directions
	Active   int64  // connections open now
}

// Relay accepts redirected connections on loopback and relays each through
// the proxy to its original destination. Create it with NewRelay and stop it
// with Close. Its methods are safe for concurrent use.
type Relay struct {
	cfg    RelayConfig
	log    *slog.Logger
	lns    []*net.TCPListener
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex
	conns  map[*relayConn]struct{}
	closed bool

	accepted, ok, failed, unknown, rejected atomic.Uint64
	bytesOut, bytesIn                       atomic.Uint64
}

// relayConn is one relayed connection.
type relayConn struct {
	client *net.TCPConn
	up     net.Conn // nil until the dial succeeds; guarded by Relay.mu
}

// NewRelay listens on the configured addresses and starts serving. The
// caller must call Close.
func NewRelay(cfg RelayConfig) (*Relay, error) {
	if cfg.Dialer == nil || cfg.Lookup == nil {
		return nil, errors.New("start proxy relay: a dialer and a lookup function are required")
	}

	r := &Relay{cfg: cfg, log: cfg.Logger, conns: make(map[*relayConn]struct{})}
	r.setDefaults()

	if err := r.listen(); err != nil {
		return nil, err
	}

	r.ctx, r.cancel = context.WithCancel(context.Background())
	for _, ln := range r.lns {
		r.wg.Add(1)
		go r.serve(ln)
	}

	return r, nil
}

func (r *Relay) setDefaults() {
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}

	if r.cfg.MaxConns <= 0 {
		r.cfg.MaxConns = DefaultMaxConns
	}

	if u, ok := r.cfg.Dialer.(interface{ Redacted() string }); ok && r.cfg.Proxy == "" {
		r.cfg.Proxy = u.Redacted()
	}
}

func (r *Relay) listen() error {
	addrs, defaults := r.cfg.Listen, false
	if len(addrs) == 0 {
		addrs, defaults = []netip.AddrPort{
			netip.MustParseAddrPort("127.0.0.1:0"),
			netip.MustParseAddrPort("[::1]:0"),
		}, true
	}

	for i, a := range addrs {
		ln, err := listenTCP(a)
		if err != nil && defaults && i > 0 {
			r.log.Warn("proxy relay: no IPv6 loopback, relaying IPv4 only", "err", err)
			continue
		}
		if err != nil {
			r.closeListeners()
			return err
		}
		r.lns = append(r.lns, ln)
	}

	return nil
}

func listenTCP(a netip.AddrPort) (*net.TCPListener, error) {
	network := "tcp6"
	if a.Addr().Is4() {
		network = "tcp4"
	}

	ln, err := net.ListenTCP(network, net.TCPAddrFromAddrPort(a))
	if err != nil {
		return nil, fmt.Errorf("listen for proxy relay on %s: %w", a, err)
	}

	return ln, nil
}

func (r *Relay) closeListeners() {
	for _, ln := range r.lns {
		_ = ln.Close()
	}
}

// Addrs returns the addresses the relay listens on, with their ports.
func (r *Relay) Addrs() []netip.AddrPort {
	out := make([]netip.AddrPort, 0, len(r.lns))
	for _, ln := range r.lns {
		out = append(out, ln.Addr().(*net.TCPAddr).AddrPort())
	}

	return out
}

// Close stops listening, aborts dials in progress, closes every relayed
// connection and waits for the relay's goroutines to end. It returns nil;
// later calls do nothing.
func (r *Relay) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	conns := make([]*relayConn, 0, len(r.conns))
	for rc := range r.conns {
		conns = append(conns, rc)
	}
	r.mu.Unlock()

	r.cancel()
	r.closeListeners()
	for _, rc := range conns {
		rc.close()
	}

	r.wg.Wait()

	return nil
}

// Stats returns a snapshot of the counters.
func (r *Relay) Stats() Stats {
	r.mu.Lock()
	active := int64(len(r.conns))
	r.mu.Unlock()

	return Stats{
		Accepted: r.accepted.Load(), OK: r.ok.Load(), Failed: r.failed.Load(),
		Unknown: r.unknown.Load(), Rejected: r.rejected.Load(),
		BytesOut: r.bytesOut.Load(), BytesIn: r.bytesIn.Load(), Active: active,
	}
}

// serve accepts connections until the listener is closed. Accept errors
// (such as running out of file descriptors) are logged and retried with a
// growing pause, so the loop neither spins nor gives up.
func (r *Relay) serve(ln *net.TCPListener) {
	defer r.wg.Done()

	var pause time.Duration
	for {
		c, err := ln.AcceptTCP()
		if err != nil {
			if r.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			pause = min(max(2*pause, 5*time.Millisecond), time.Second)
			r.log.Warn("proxy relay: accept failed", "addr", ln.Addr(), "err", err,
				"retry_in", pause)
			r.sleep(pause)
			continue
		}

		pause = 0
		r.accepted.Add(1)
		r.start(c)
	}
}

func (r *Relay) sleep(d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()

	select {
	case <-t.C:
	case <-r.ctx.Done():
	}
}

// start hands c to its own goroutine, or rejects it when the relay is full
// or closed.
func (r *Relay) start(c *net.TCPConn) {
	rc := &relayConn{client: c}

	r.mu.Lock()
	full := len(r.conns) >= r.cfg.MaxConns
	if !r.closed && !full {
		r.conns[rc] = struct{}{}
		r.wg.Add(1)
	}
	closed := r.closed
	r.mu.Unlock()

	switch {
	case closed:
		_ = c.Close()
	case full:
		r.reject(c)
	default:
		go r.handle(rc)
	}
}

// reject resets a connection over MaxConns and reports it.
func (r *Relay) reject(c *net.TCPConn) {
	r.rejected.Add(1)
	if o, ok := r.cfg.Lookup(clientAddr(c)); ok {
		err := fmt.Errorf("proxy relay full: %d connections open (the limit)", r.cfg.MaxConns)
		r.emit(o, err)
	}

	reset(c)
}

func (r *Relay) untrack(rc *relayConn) {
	r.mu.Lock()
	delete(r.conns, rc)
	r.mu.Unlock()
}

// handle relays one accepted connection to its end.
func (r *Relay) handle(rc *relayConn) {
	defer r.wg.Done()
	defer r.untrack(rc)

	client := clientAddr(rc.client)
	o, ok := r.cfg.Lookup(client)
	if !ok {
		r.unknown.Add(1)
		r.log.Debug("proxy relay: unknown client, reset", "client", client)
		reset(rc.client)
		return
	}

	up, err := r.cfg.Dialer.DialContext(r.ctx, o.Target)
	if err != nil {
		r.failed.Add(1)
		r.emit(o, err)
		reset(rc.client)
		return
	}

	r.ok.Add(1)
	r.emit(o, nil)
	if r.setUpstream(rc, up) {
		r.splice(rc.client, up)
	}
}

// setUpstream records up so that Close can close it; it closes both sides
// and returns false when the relay closed during the dial.
func (r *Relay) setUpstream(rc *relayConn, up net.Conn) bool {
	r.mu.Lock()
	defer r.mu.Unlock()

	if r.closed {
		_ = up.Close()
		_ = rc.client.Close()
		return false
	}

	rc.up = up

	return true
}

// close closes both sides of rc; Relay.mu must not be held.
func (rc *relayConn) close() {
	_ = rc.client.Close()
	if rc.up != nil {
		_ = rc.up.Close()
	}
}

// splice copies both ways until both directions end. An end of stream is
// passed on as a half-close; an error in either direction aborts both.
func (r *Relay) splice(client *net.TCPConn, up net.Conn) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		n, err := io.Copy(client, up)
		r.bytesIn.Add(uint64(n))
		finish(client, up, err)
	}()

	n, err := io.Copy(up, client)
	r.bytesOut.Add(uint64(n))
	finish(up, client, err)
	<-done

	_ = client.Close()
	_ = up.Close()
}

// finish ends one direction: on a clean end of stream it half-closes dst,
// on an error it aborts the connection (resetting the client side).
func finish(dst, src net.Conn, err error) {
	if err == nil {
		if cw, ok := dst.(interface{ CloseWrite() error }); ok && cw.CloseWrite() == nil {
			return
		}
	}

	for _, c := range []net.Conn{dst, src} {
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetLinger(0)
		}
		_ = c.Close()
	}
}

// reset closes c with a TCP reset, so the program sees its connection fail
// at once rather than end cleanly.
func reset(c *net.TCPConn) {
	_ = c.SetLinger(0)
	_ = c.Close()
}

func clientAddr(c *net.TCPConn) netip.AddrPort {
	ap := c.RemoteAddr().(*net.TCPAddr).AddrPort()

	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

func (r *Relay) emit(o Origin, err error) {
	if r.cfg.Sink != nil {
		r.cfg.Sink.Emit(NewConnectResult(o, r.cfg.Proxy, err))
	}
}

// NewConnectResult returns the connect_result event of a connection to
// o.Target through proxy (shown as given: pass URL.String, never a URL with
// its password): status ok when err is nil, else error with err's text.
func NewConnectResult(o Origin, proxy string, err error) *flows.ConnectResult {
	a := o.Target.Addr.Addr().Unmap().WithZone("")
	ev := &flows.ConnectResult{
		Remote: flows.Remote{
			Protocol: "tcp", RemoteAddr: o.Target.ipString(), RemoteIP: a.String(),
			RemotePort: int(o.Target.Addr.Port()),
		},
		Proc: o.Proc, ViaProxy: true, Status: flows.StatusOK, FlowID: o.FlowID, Proxy: proxy,
	}

	if n := o.Target.name(); n != "" {
		ev.Names.Names = []string{n}
	}

	if err != nil {
		msg := err.Error()
		ev.Status, ev.Error = flows.StatusError, &msg
	}

	return ev
}
