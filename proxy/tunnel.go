package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Joinable reports whether the proxy's tunnel can be handed to the program
// as a plain TCP socket: true for http, socks5 and socks5h proxies. An https
// proxy's tunnel runs inside TLS, which only childflow can speak.
func (d *Dialer) Joinable() bool {
	return d.tls == nil
}

// ProxyAddr returns an address of the proxy that a socket of the given
// family can connect to: IPv4 for AF_INET; IPv6, or IPv4-mapped unless
// v6only, for AF_INET6. A proxy given by name is resolved on each call.
// ok is false when the proxy has no such address.
func (d *Dialer) ProxyAddr(ctx context.Context, family int, v6only bool) (netip.AddrPort,
	bool, error) {
	ips, err := d.proxyIPs(ctx)
	if err != nil {
		return netip.AddrPort{}, false, d.ConnectError(ctx, err)
	}

	port := uint16(d.url.Port)
	for _, ip := range ips {
		if ip.Is4() == (family == unix.AF_INET) {
			return netip.AddrPortFrom(ip, port), true, nil
		}
	}
	if family == unix.AF_INET6 && !v6only {
		for _, ip := range ips {
			if ip.Is4() {
				return netip.AddrPortFrom(netip.AddrFrom16(ip.As16()), port), true, nil
			}
		}
	}

	return netip.AddrPort{}, false, nil
}

func (d *Dialer) proxyIPs(ctx context.Context) ([]netip.Addr, error) {
	if ip, err := netip.ParseAddr(d.url.Host); err == nil {
		return []netip.Addr{ip.Unmap()}, nil
	}

	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", d.url.Host)
	for i := range ips {
		ips[i] = ips[i].Unmap()
	}

	return ips, err
}

// ConnectError returns the *Error of a failed TCP connect to the proxy,
// worded as DialContext words it.
func (d *Dialer) ConnectError(ctx context.Context, err error) *Error {
	e := &Error{Stage: StageDial, Proxy: d.url.Addr(), Err: err}
	e.Msg = fmt.Sprintf("proxy %s unreachable: %s", e.Proxy, reason(ctx, err))

	return e
}

// Exchanged counts the bytes of a handshake that Tunnel sent and received.
type Exchanged struct {
	Out, In uint64
}

// Conn is a connection to the proxy that Tunnel can speak over: an
// *os.File of a non-blocking socket (which, unlike net.FileConn, leaves the
// socket's options alone) or a *net.TCPConn.
type Conn interface {
	io.ReadWriter
	SetDeadline(t time.Time) error
	SyscallConn() (syscall.RawConn, error)
}

// Tunnel asks the proxy, over c (an established TCP connection to it, not
// over TLS), for a tunnel to t. Unlike DialContext it consumes exactly the
// proxy's answer: whatever the target sends first stays unread in c, so that
// another reader of the same socket gets it. Errors are *Error. ctx bounds
// the handshake (with the Dialer's timeout) and c's deadline is cleared
// afterwards.
func (d *Dialer) Tunnel(ctx context.Context, c Conn, t Target) (Exchanged, error) {
	if !d.Joinable() {
		return Exchanged{}, errors.New("tunnel: an https proxy cannot hand over its tunnel")
	}
	ctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()

	cc := &countingConn{c: c}
	w := watch(ctx, c)
	err := d.tunnel(cc, t)
	w.stop()
	_ = c.SetDeadline(time.Time{})
	if err != nil {
		return cc.n, d.withReason(ctx, err)
	}

	return cc.n, nil
}

func (d *Dialer) tunnel(cc *countingConn, t Target) error {
	if d.url.Scheme == SchemeSOCKS5 || d.url.Scheme == SchemeSOCKS5H {
		return d.connectSOCKS5(cc, t)
	}

	if err := d.sendConnect(cc, t); err != nil {
		return err
	}
	rc, err := cc.c.SyscallConn()
	if err != nil {
		return d.fail(StageProtocol, t, "read CONNECT answer from proxy %s: %s", err)
	}

	hr := &headerReader{rc: rc, n: &cc.n.In}
	br := bufio.NewReader(io.LimitReader(hr, maxResponseHeader))

	return d.readConnect(br, t)
}

// countingConn counts what passes through Read and Write.
type countingConn struct {
	c Conn
	n Exchanged
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.c.Read(p)
	c.n.In += uint64(n)

	return n, err
}

func (c *countingConn) Write(p []byte) (int, error) {
	n, err := c.c.Write(p)
	c.n.Out += uint64(n)

	return n, err
}

// headerReader reads an HTTP header block from a socket and nothing after
// it: it peeks at what arrived and takes only the bytes up to the blank line
// that ends the header, then reports EOF.
type headerReader struct {
	rc   syscall.RawConn
	n    *uint64 // bytes taken
	tail []byte  // the last bytes taken, up to 3, to find an end split across reads
	done bool
}

func (h *headerReader) Read(p []byte) (int, error) {
	if h.done {
		return 0, io.EOF
	}
	if len(p) == 0 {
		return 0, nil
	}

	var n int
	var rerr error
	err := h.rc.Read(func(fd uintptr) bool {
		n, _, rerr = unix.Recvfrom(int(fd), p, unix.MSG_PEEK)
		if rerr == unix.EAGAIN {
			return false
		}
		if rerr != nil || n == 0 {
			return true
		}

		n = h.take(p[:n])
		n, rerr = unix.Read(int(fd), p[:n])
		return rerr != unix.EAGAIN
	})
	if err == nil {
		err = rerr
	}
	if err != nil {
		return 0, err
	}
	if n == 0 {
		return 0, io.ErrUnexpectedEOF
	}

	*h.n += uint64(n)
	h.tail = append(h.tail, p[:n]...)
	h.tail = h.tail[max(0, len(h.tail)-3):]

	return n, nil
}

// take returns how many bytes of peeked belong to the header, and notes
// when they complete it.
func (h *headerReader) take(peeked []byte) int {
	const end = "\r\n\r\n"
	joined := append(append([]byte{}, h.tail...), peeked...)
	i := bytes.Index(joined, []byte(end))
	if i < 0 {
		return len(peeked)
	}

	h.done = true

	return i + len(end) - len(h.tail)
}
