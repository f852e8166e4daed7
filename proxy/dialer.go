package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// DefaultTimeout bounds a dial through the proxy when Options.Timeout is 0.
const DefaultTimeout = 30 * time.Second

// Target is a destination to reach through the proxy. Addr is the address
// the program connected to. Name, when set, is the DNS name the program
// resolved to Addr (or the TLS server name it sent); the proxy is then asked
// for "name:port" instead of the IP literal (socks5:// excepted, see the
// package doc). A Name that is not a valid host name is ignored.
type Target struct {
	Addr netip.AddrPort
	Name string
}

// ipString returns Addr as "ip:port" (IPv6 bracketed, IPv4-mapped IPv6
// unmapped, zone dropped).
func (t Target) ipString() string {
	a := t.Addr.Addr().Unmap().WithZone("")

	return netip.AddrPortFrom(a, t.Addr.Port()).String()
}

// name returns Name lowercased without a trailing dot, or "" when it is not
// a valid host name.
func (t Target) name() string {
	n := strings.ToLower(strings.TrimSuffix(t.Name, "."))
	if !validHostname(n) {
		return ""
	}
	if _, err := netip.ParseAddr(n); err == nil {
		return ""
	}

	return n
}

// String returns what an HTTP proxy is asked for: "name:port" when the
// Target has a valid Name, else "ip:port" with IPv6 in brackets.
func (t Target) String() string {
	if n := t.name(); n != "" {
		return net.JoinHostPort(n, strconv.Itoa(int(t.Addr.Port())))
	}

	return t.ipString()
}

// Options tune a Dialer. The zero value is ready to use.
type Options struct {
	// Timeout bounds one whole dial: the TCP connection to the proxy, the
	// TLS handshake and the proxy's answer. Zero means DefaultTimeout.
	Timeout time.Duration
	// RootCAs, when set, replaces the system roots for checking an https
	// proxy's certificate (tests use it for a self-signed proxy).
	RootCAs *x509.CertPool
}

// LoadCertPool reads PEM certificates from path into a new pool, for
// Options.RootCAs (--proxy-ca: trusting a proxy with a private or self-signed
// certificate). It fails when the file holds no certificate.
func LoadCertPool(path string) (*x509.CertPool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read proxy CA file: %w", err)
	}

	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("read proxy CA file %s: no PEM certificate in it", path)
	}

	return pool, nil
}

// Dialer opens connections through one proxy. It is safe for concurrent use
// and holds no resources of its own; each connection it returns belongs to
// the caller, who must close it.
//
// For an https proxy the certificate chain is checked against the system
// roots (or Options.RootCAs) and must name URL.Host. With URL.Insecure, both
// the chain and the host name check are skipped and nothing else is checked
// in their place: the connection is still encrypted, but nothing about the
// proxy's identity is verified.
type Dialer struct {
	url     URL
	timeout time.Duration
	tls     *tls.Config
	auth    string // Proxy-Authorization value, "" without a user
	net     net.Dialer
}

// NewDialer returns a Dialer for u. It copies u; later changes to u have no
// effect.
func NewDialer(u *URL, opts Options) *Dialer {
	d := &Dialer{url: *u, timeout: opts.Timeout}
	if d.timeout <= 0 {
		d.timeout = DefaultTimeout
	}

	if u.User != "" {
		d.auth = "Basic " + base64.StdEncoding.EncodeToString([]byte(u.User+":"+u.Password))
	}

	if u.Scheme == SchemeHTTPS {
		d.tls = &tls.Config{
			ServerName:         u.Host,
			RootCAs:            opts.RootCAs,
			InsecureSkipVerify: u.Insecure,
			MinVersion:         tls.VersionTLS12,
		}
	}

	return d
}

// Timeout returns how long a dial through the proxy may take.
func (d *Dialer) Timeout() time.Duration { return d.timeout }

// Redacted returns the proxy's URL without the password, as events and logs
// show it.
func (d *Dialer) Redacted() string { return d.url.String() }

// DialContext connects to t through the proxy and returns the tunnel, ready
// for the target's bytes. Any bytes the proxy sent after its answer are kept
// and returned by the first reads. Errors are *Error. ctx cancels the dial
// but not the returned connection.
func (d *Dialer) DialContext(ctx context.Context, t Target) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()

	c, err := d.dialProxy(ctx)
	if err != nil {
		return nil, err
	}

	w := watch(ctx, c)
	conn, err := d.handshake(c, t)
	w.stop()
	if err != nil {
		_ = c.Close()
		return nil, d.withReason(ctx, err)
	}

	return conn, nil
}

// watchdog interrupts a handshake blocked on a silent proxy when its context
// ends, by moving the connection's deadline into the past.
type watchdog struct {
	c     deadliner
	mu    sync.Mutex
	done  bool
	fired bool
	quit  func() bool
}

// deadliner is the part of a connection that a watchdog uses.
type deadliner interface{ SetDeadline(time.Time) error }

func watch(ctx context.Context, c deadliner) *watchdog {
	w := &watchdog{c: c}
	w.quit = context.AfterFunc(ctx, func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		if !w.done {
			w.fired = true
			_ = c.SetDeadline(time.Unix(1, 0))
		}
	})

	return w
}

// stop ends the watch. A handshake that completed although the deadline was
// moved gets its deadline cleared: the tunnel is good.
func (w *watchdog) stop() {
	w.quit()

	w.mu.Lock()
	defer w.mu.Unlock()
	w.done = true
	if w.fired {
		_ = w.c.SetDeadline(time.Time{})
	}
}

// dialProxy connects to the proxy, and for https completes the TLS
// handshake.
func (d *Dialer) dialProxy(ctx context.Context) (net.Conn, error) {
	c, err := d.net.DialContext(ctx, "tcp", d.url.Addr())
	if err != nil {
		return nil, d.ConnectError(ctx, err)
	}

	if d.tls == nil {
		return c, nil
	}

	tc := tls.Client(c, d.tls)
	if err := tc.HandshakeContext(ctx); err != nil {
		_ = c.Close()
		e := &Error{Stage: StageTLS, Proxy: d.url.Addr(), Err: err}
		e.Msg = fmt.Sprintf("tls handshake with proxy %s: %s", e.Proxy, reason(ctx, err))
		return nil, e
	}

	return tc, nil
}

func (d *Dialer) handshake(c net.Conn, t Target) (net.Conn, error) {
	if d.url.Scheme == SchemeSOCKS5 || d.url.Scheme == SchemeSOCKS5H {
		if err := d.connectSOCKS5(c, t); err != nil {
			return nil, err
		}
		return c, nil
	}

	return d.connectHTTP(c, t)
}

// fail returns a *Error whose message is format applied to the proxy address
// and the text of err. The text is filled in by withReason, once the context
// can tell a timeout from other failures.
func (d *Dialer) fail(stage Stage, t Target, format string, err error) *Error {
	return &Error{Stage: stage, Proxy: d.url.Addr(), Target: t.String(), Err: err, format: format}
}

func (d *Dialer) withReason(ctx context.Context, err error) error {
	e, ok := err.(*Error)
	if !ok || e.format == "" {
		return err
	}

	e.Msg = fmt.Sprintf(e.format, e.Proxy, reason(ctx, e.Err))
	e.format = ""

	return e
}

// maxResponseHeader bounds the CONNECT answer a proxy may send.
const maxResponseHeader = 64 << 10

// connectHTTP sends CONNECT over c and reads the answer.
func (d *Dialer) connectHTTP(c net.Conn, t Target) (net.Conn, error) {
	if err := d.sendConnect(c, t); err != nil {
		return nil, err
	}

	br := bufio.NewReader(io.LimitReader(c, maxResponseHeader))
	if err := d.readConnect(br, t); err != nil {
		return nil, err
	}

	if br.Buffered() == 0 {
		return c, nil
	}

	return &bufferedConn{Conn: c, r: br}, nil
}

func (d *Dialer) sendConnect(w io.Writer, t Target) error {
	target := t.String()
	var req strings.Builder
	req.WriteString("CONNECT " + target + " HTTP/1.1\r\nHost: " + target + "\r\n")
	if d.auth != "" {
		req.WriteString("Proxy-Authorization: " + d.auth + "\r\n")
	}
	req.WriteString("\r\n")

	if _, err := io.WriteString(w, req.String()); err != nil {
		return d.fail(StageProtocol, t, "send CONNECT to proxy %s: %s", err)
	}

	return nil
}

// readConnect reads the proxy's answer to CONNECT and fails unless it is 2xx.
func (d *Dialer) readConnect(br *bufio.Reader, t Target) error {
	status, text, err := readConnectResponse(br)
	if err != nil {
		return d.fail(StageProtocol, t, "read CONNECT answer from proxy %s: %s", err)
	}

	if status/100 != 2 {
		return d.refusedHTTP(t, status, text)
	}

	return nil
}

func (d *Dialer) refusedHTTP(t Target, status int, text string) *Error {
	stage := StageConnect
	if status == 407 {
		stage = StageAuth
	}

	return &Error{
		Stage: stage, Proxy: d.url.Addr(), Target: t.String(), Status: status,
		Msg: fmt.Sprintf("proxy refused CONNECT to %s: %s", t.String(), text),
	}
}

// bufferedConn is a tunnel whose first bytes were read ahead together with
// the proxy's answer. It returns them before reading from Conn again.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

// Read returns read-ahead bytes first, then reads from the connection.
func (c *bufferedConn) Read(p []byte) (int, error) {
	if c.r.Buffered() > 0 {
		return c.r.Read(p)
	}

	return c.Conn.Read(p)
}

// WriteTo writes the read-ahead bytes, then copies the connection, so that
// io.Copy between TCP connections can still use splice.
func (c *bufferedConn) WriteTo(w io.Writer) (int64, error) {
	var n int64
	if k := c.r.Buffered(); k > 0 {
		b, _ := c.r.Peek(k)
		m, err := w.Write(b)
		n += int64(m)
		_, _ = c.r.Discard(m)
		if err != nil {
			return n, err
		}
	}

	m, err := io.Copy(w, c.Conn)

	return n + m, err
}

// ReadFrom lets io.Copy into the tunnel use the connection's own ReadFrom.
func (c *bufferedConn) ReadFrom(r io.Reader) (int64, error) { return io.Copy(c.Conn, r) }

// CloseWrite half-closes the connection when it supports that.
func (c *bufferedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}

	return nil
}
