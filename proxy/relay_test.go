package proxy_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/childflow/childflow/flows"
	"github.com/childflow/childflow/proxy"
	"github.com/childflow/childflow/proxy/proxytest"
)

// origins plays the BPF map that records each redirected connection's
// original destination, keyed by the client's source address. The kernel
// fills that map before the connection reaches the relay; here the client
// learns its port only when its connect returns, so lookup waits up to wait
// for the entry.
type origins struct {
	wait    time.Duration
	mu      sync.Mutex
	m       map[netip.AddrPort]proxy.Origin
	waiters map[netip.AddrPort]chan struct{}
}

func newOrigins(wait time.Duration) *origins {
	return &origins{
		wait: wait, m: map[netip.AddrPort]proxy.Origin{},
		waiters: map[netip.AddrPort]chan struct{}{},
	}
}

func (o *origins) lookup(client netip.AddrPort) (proxy.Origin, bool) {
	o.mu.Lock()
	og, ok := o.m[client]
	ch := o.waiters[client]
	if !ok && ch == nil {
		ch = make(chan struct{})
		o.waiters[client] = ch
	}
	o.mu.Unlock()

	if ok || o.wait == 0 {
		return og, ok
	}

	select {
	case <-ch:
	case <-time.After(o.wait):
	}

	o.mu.Lock()
	defer o.mu.Unlock()
	og, ok = o.m[client]

	return og, ok
}

// dial connects to the relay at relay like a redirected program and records
// the connection's origin.
func (o *origins) dial(relay netip.AddrPort, origin proxy.Origin) (*net.TCPConn, error) {
	c, err := net.DialTimeout("tcp", relay.String(), 10*time.Second)
	if err != nil {
		return nil, err
	}

	local := c.LocalAddr().(*net.TCPAddr).AddrPort()
	o.mu.Lock()
	o.m[local] = origin
	if ch := o.waiters[local]; ch != nil {
		close(ch)
		delete(o.waiters, local)
	}
	o.mu.Unlock()

	return c.(*net.TCPConn), nil
}

// events collects a relay's events as flow-log JSON lines.
type events struct {
	mu  sync.Mutex
	buf bytes.Buffer
	w   *flows.Writer
}

func newEvents() *events {
	e := &events{}
	e.w = flows.NewWriter(lockedWriter{e})

	return e
}

type lockedWriter struct{ e *events }

func (l lockedWriter) Write(p []byte) (int, error) {
	l.e.mu.Lock()
	defer l.e.mu.Unlock()

	return l.e.buf.Write(p)
}

func (e *events) Emit(ev flows.Event) { e.w.Emit(ev) }

// lines returns the raw log and its lines decoded.
func (e *events) lines(t testing.TB) (string, []map[string]any) {
	t.Helper()

	if err := e.w.Flush(); err != nil {
		t.Fatalf("flush events: %v", err)
	}
	e.mu.Lock()
	raw := e.buf.String()
	e.mu.Unlock()

	var out []map[string]any
	for _, line := range bytes.Split([]byte(raw), []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal(line, &m); err != nil {
			t.Fatalf("decode event %q: %v", line, err)
		}
		out = append(out, m)
	}

	return raw, out
}

func startRelay(t testing.TB, d proxy.ContextDialer, sink flows.Sink, maxConns int) (
	*proxy.Relay, *origins) {
	t.Helper()

	return startRelayWait(t, d, sink, maxConns, 10*time.Second)
}

// startRelayWait starts a relay whose lookup waits up to wait for a client.
func startRelayWait(t testing.TB, d proxy.ContextDialer, sink flows.Sink, maxConns int,
	wait time.Duration) (*proxy.Relay, *origins) {
	t.Helper()

	o := newOrigins(wait)
	r, err := proxy.NewRelay(proxy.RelayConfig{
		Dialer: d, Lookup: o.lookup, Sink: sink, MaxConns: maxConns,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })

	return r, o
}

func TestRelayEndToEnd(t *testing.T) {
	const user, pass = "relay-user", "relay-pass-5150"
	p := startProxy(t, "http", proxytest.Options{User: user, Password: pass}, user, pass)
	ev := newEvents()
	relay, o := startRelay(t, p.dialer, ev, 0)

	if got := len(relay.Addrs()); got != 2 {
		t.Fatalf("relay listens on %v, want 127.0.0.1 and ::1", relay.Addrs())
	}

	targets := map[string]*proxytest.Origin{
		"origin4.test": proxytest.StartOrigin(t, "127.0.0.1:0"),
		"origin6.test": proxytest.StartOrigin(t, "[::1]:0"),
	}
	want := map[uint64]proxy.Origin{}
	var flowID uint64
	for _, ra := range relay.Addrs() {
		for name, origin := range targets {
			flowID++
			og := proxy.Origin{
				Target: proxy.Target{Addr: origin.Addr(), Name: name},
				Proc:   flows.Proc{Pid: 4000 + uint32(flowID), Comm: "curl"}, FlowID: flowID,
			}
			want[flowID] = og
			c, err := o.dial(ra, og)
			if err != nil {
				t.Fatal(err)
			}
			echo(t, c, p.srv, fmt.Sprintf("flow %d via %s", flowID, ra))
			c.Close()
		}
	}

	relay.Close()
	checkRelayEvents(t, ev, want, p.dialer.Redacted(), pass)

	st := relay.Stats()
	if st.Accepted != 4 || st.OK != 4 || st.Failed != 0 || st.Unknown != 0 || st.Active != 0 {
		t.Errorf("stats %+v, want 4 accepted and ok, none failed, unknown or active", st)
	}
}

func checkRelayEvents(t *testing.T, ev *events, want map[uint64]proxy.Origin, proxyURL,
	pass string) {
	t.Helper()

	raw, lines := ev.lines(t)
	if bytes.Contains([]byte(raw), []byte(pass)) {
		t.Errorf("events contain the proxy password: %s", raw)
	}
	if len(lines) != len(want) {
		t.Fatalf("got %d events, want %d:\n%s", len(lines), len(want), raw)
	}

	for _, m := range lines {
		og := want[uint64(m["flow_id"].(float64))]
		exp := map[string]any{
			"schema_version": 1.0, "event": "connect_result", "protocol": "tcp",
			"remote_addr": og.Target.Addr.String(), "remote_ip": og.Target.Addr.Addr().String(),
			"remote_port": float64(og.Target.Addr.Port()), "via_proxy": true, "status": "ok",
			"error": nil, "proxy": proxyURL, "pid": float64(og.Proc.Pid), "comm": "curl",
		}
		for k, v := range exp {
			if m[k] != v {
				t.Errorf("event %v: %s = %v, want %v", m["flow_id"], k, m[k], v)
			}
		}
		if names := fmt.Sprint(m["names"]); names != "["+og.Target.Name+"]" {
			t.Errorf("event %v: names = %s, want [%s]", m["flow_id"], names, og.Target.Name)
		}
	}
}

// expectReset checks that the relay resets c promptly.
func expectReset(t testing.TB, c net.Conn, dialErr error) {
	t.Helper()

	if errors.Is(dialErr, syscall.ECONNRESET) {
		return // reset before the connect returned
	}
	if dialErr != nil {
		t.Fatal(dialErr)
	}

	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := c.Read(make([]byte, 1))
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("read after relay failure: %d bytes, error %v, want connection reset", n, err)
	}
}

func TestRelayDialFailure(t *testing.T) {
	const pass = "real-pass-8086"
	p := startProxy(t, "http", proxytest.Options{User: "u", Password: pass}, "u", "wrong-pass-6502")
	ev := newEvents()
	relay, o := startRelay(t, p.dialer, ev, 0)
	origin := proxytest.StartOrigin(t, "127.0.0.1:0")

	og := proxy.Origin{Target: proxy.Target{Addr: origin.Addr()}, FlowID: 7}
	c, err := o.dial(relay.Addrs()[0], og)
	expectReset(t, c, err)
	relay.Close()

	raw, lines := ev.lines(t)
	wantErr := "proxy refused CONNECT to " + origin.Addr().String() +
		": 407 Proxy Authentication Required"
	if len(lines) != 1 || lines[0]["status"] != "error" || lines[0]["error"] != wantErr {
		t.Errorf("events:\n%s\nwant one connect_result with error %q", raw, wantErr)
	}
	if bytes.Contains([]byte(raw), []byte("pass-")) {
		t.Errorf("events contain a password: %s", raw)
	}
	if st := relay.Stats(); st.Failed != 1 || st.OK != 0 {
		t.Errorf("stats %+v, want 1 failed, 0 ok", st)
	}
}

func TestRelayUnknownClient(t *testing.T) {
	p := startProxy(t, "http", proxytest.Options{}, "", "")
	ev := newEvents()
	relay, _ := startRelayWait(t, p.dialer, ev, 0, 0)

	for _, ra := range relay.Addrs() {
		c, err := net.Dial("tcp", ra.String())
		expectReset(t, c, err)
	}

	relay.Close()
	if st := relay.Stats(); st.Unknown != 2 || st.Accepted != 2 {
		t.Errorf("stats %+v, want 2 accepted, 2 unknown", st)
	}
	if raw, _ := ev.lines(t); raw != "" {
		t.Errorf("unknown clients produced events: %s", raw)
	}
	if n := len(p.srv.Requests()); n != 0 {
		t.Errorf("unknown clients reached the proxy %d times", n)
	}
}

func TestRelayMaxConns(t *testing.T) {
	p := startProxy(t, "http", proxytest.Options{}, "", "")
	ev := newEvents()
	relay, o := startRelay(t, p.dialer, ev, 1)
	origin := proxytest.StartOrigin(t, "127.0.0.1:0")
	og := proxy.Origin{Target: proxy.Target{Addr: origin.Addr()}, FlowID: 1}

	first, err := o.dial(relay.Addrs()[0], og)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	if _, err := proxytest.ReadPeer(bufio.NewReader(first)); err != nil {
		t.Fatal(err)
	}

	og.FlowID = 2
	second, err := o.dial(relay.Addrs()[0], og)
	expectReset(t, second, err)

	relay.Close()
	if st := relay.Stats(); st.Rejected != 1 || st.OK != 1 {
		t.Errorf("stats %+v, want 1 ok, 1 rejected", st)
	}
	raw, _ := ev.lines(t)
	if !bytes.Contains([]byte(raw), []byte(`"error":"proxy relay full: 1 connections open`)) {
		t.Errorf("events:\n%s\nwant an error event for the rejected connection", raw)
	}
}

func TestRelayCloseEndsConnections(t *testing.T) {
	p := startProxy(t, "socks5", proxytest.Options{}, "", "")
	relay, o := startRelay(t, p.dialer, nil, 0)
	origin := proxytest.StartOrigin(t, "[::1]:0")

	c, err := o.dial(relay.Addrs()[1], proxy.Origin{Target: proxy.Target{Addr: origin.Addr()}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	if _, err := proxytest.ReadPeer(br); err != nil {
		t.Fatal(err)
	}

	done := make(chan struct{})
	go func() { relay.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return within 10s")
	}

	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := br.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("read after Close: %d bytes, error %v, want the connection ended", n, err)
	}
	if st := relay.Stats(); st.Active != 0 {
		t.Errorf("after Close: %d active connections, want 0", st.Active)
	}
}

func TestRelayConcurrent(t *testing.T) {
	const n = 1000
	p := startProxy(t, "http", proxytest.Options{}, "", "")
	origin := proxytest.StartOrigin(t, "127.0.0.1:0")
	before := runtime.NumGoroutine()
	ev := newEvents()
	relay, o := startRelay(t, p.dialer, ev, 0)

	start := time.Now()
	errs := make(chan error, n)
	var wg sync.WaitGroup
	b := &barrier{relay: relay}
	b.ready.Add(n)
	for i := range n {
		wg.Go(func() {
			errs <- relayOnce(o, relay.Addrs()[i%2], origin.Addr(), uint64(i+1), b)
		})
	}
	wg.Wait()
	close(errs)
	took := time.Since(start)

	for err := range errs {
		if err != nil {
			_, lines := ev.lines(t)
			for _, l := range lines {
				if l["status"] != "ok" {
					t.Log(l["error"])
				}
			}
			t.Fatalf("%v (relay stats %+v)", err, relay.Stats())
		}
	}
	t.Logf("%d concurrent relayed connections in %v", n, took)
	if took > 60*time.Second {
		t.Errorf("%d connections took %v, want under 60s", n, took)
	}

	if peak := b.peak.Load(); peak != int64(n) {
		t.Errorf("at most %d connections were relayed at once, want %d", peak, n)
	}
	checkConcurrentStats(t, relay, n, &b.greeted)
	relay.Close()
	waitGoroutines(t, before)
}

// barrier holds every client of TestRelayConcurrent until all have their
// greeting, so that all connections are open at once.
type barrier struct {
	relay   *proxy.Relay
	ready   sync.WaitGroup
	greeted sync.Map // flow id → length of the origin's greeting
	peak    atomic.Int64
}

func (b *barrier) wait(id uint64, greeting int) {
	b.greeted.Store(id, greeting)
	b.ready.Done()
	b.ready.Wait()

	active := b.relay.Stats().Active
	for {
		old := b.peak.Load()
		if active <= old || b.peak.CompareAndSwap(old, active) {
			return
		}
	}
}

// relayOnce opens one connection through the relay, waits at the barrier
// and checks the echo.
func relayOnce(o *origins, relay, origin netip.AddrPort, id uint64, b *barrier) error {
	arrived := false
	defer func() {
		if !arrived {
			b.ready.Done()
		}
	}()

	c, err := o.dial(relay, proxy.Origin{Target: proxy.Target{Addr: origin}, FlowID: id})
	if err != nil {
		return err
	}
	defer c.Close()

	_ = c.SetDeadline(time.Now().Add(50 * time.Second))
	br := bufio.NewReader(c)
	line, err := br.ReadString('\n')
	if err != nil {
		return fmt.Errorf("flow %d: read greeting: %w", id, err)
	}
	arrived = true
	b.wait(id, len(line))

	msg := bytes.Repeat([]byte{byte(id)}, 1024)
	if _, err := c.Write(msg); err != nil {
		return fmt.Errorf("flow %d: write: %w", id, err)
	}
	if err := c.CloseWrite(); err != nil {
		return err
	}

	got, err := io.ReadAll(br)
	if err != nil || !bytes.Equal(got, msg) {
		return fmt.Errorf("flow %d: echo of %d bytes came back as %d bytes (%v)", id, len(msg),
			len(got), err)
	}

	return nil
}

func checkConcurrentStats(t *testing.T, relay *proxy.Relay, n int, greeted *sync.Map) {
	t.Helper()

	var in uint64
	greeted.Range(func(_, v any) bool { in += uint64(v.(int)) + 1024; return true })

	deadline := time.Now().Add(10 * time.Second)
	for relay.Stats().Active != 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}

	st := relay.Stats()
	if st.OK != uint64(n) || st.Failed != 0 || st.Active != 0 {
		t.Errorf("stats %+v, want %d ok, 0 failed, 0 active", st, n)
	}
	if st.BytesOut != uint64(n)*1024 || st.BytesIn != in {
		t.Errorf("bytes out/in %d/%d, want %d/%d", st.BytesOut, st.BytesIn, n*1024, in)
	}
}

// waitGoroutines fails t unless the goroutine count returns to about before
// within a few seconds.
func waitGoroutines(t *testing.T, before int) {
	t.Helper()

	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before+5 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if now := runtime.NumGoroutine(); now > before+5 {
		t.Errorf("%d goroutines after the relay closed, want about %d", now, before)
	}
}

// dialDirect returns a tunnel through the dialer, for the benchmark's
// baseline.
func dialDirect(d *proxy.Dialer, origin netip.AddrPort) (net.Conn, error) {
	return d.DialContext(context.Background(), proxy.Target{Addr: origin})
}

func TestRelayProxyKinds(t *testing.T) {
	origin := proxytest.StartOrigin(t, "[::1]:0")
	target := proxy.Target{Addr: origin.Addr(), Name: "origin6.test"}
	wantAsked := map[string]string{
		"https":   "origin6.test:" + strconv.Itoa(int(origin.Addr().Port())),
		"socks5":  origin.Addr().String(),
		"socks5h": "origin6.test:" + strconv.Itoa(int(origin.Addr().Port())),
	}

	for kind, want := range wantAsked {
		p := startProxy(t, kind, proxytest.Options{User: "k", Password: "kind-pass-1"}, "k",
			"kind-pass-1")
		ev := newEvents()
		relay, o := startRelay(t, p.dialer, ev, 0)

		c, err := o.dial(relay.Addrs()[1], proxy.Origin{Target: target, FlowID: 1})
		if err != nil {
			t.Fatal(err)
		}
		echo(t, c, p.srv, "through the relay and "+kind)
		c.Close()
		relay.Close()

		if got := p.srv.Requests(); len(got) != 1 || got[0] != want {
			t.Errorf("%s: proxy was asked for %v, want [%s]", kind, got, want)
		}
		raw, lines := ev.lines(t)
		shown := p.dialer.Redacted()
		if len(lines) != 1 || lines[0]["status"] != "ok" || lines[0]["proxy"] != shown {
			t.Errorf("%s: events %s, want one ok connect_result through %s", kind, raw, shown)
		}
	}
}
