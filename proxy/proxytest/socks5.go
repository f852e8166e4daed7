package proxytest

import (
	"bufio"
	"bytes"
	"crypto/subtle"
	"errors"
	"io"
	"net"
	"net/netip"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// SOCKS5 reply codes the test proxy sends.
const (
	replyOK          = 0
	replyFailure     = 1
	replyNotAllowed  = 2
	replyHostUnreach = 4
	replyRefused     = 5
	replyBadCommand  = 7
	replyBadAddrType = 8
)

// StartSOCKS5 starts a SOCKS5 proxy (RFC 1928) that serves CONNECT with
// IPv4, IPv6 and domain-name addresses, and requires username/password
// authentication (RFC 1929) when Options.User is set. It replies 2 (not
// allowed) for a target neither on loopback nor in Options.Targets, 4 (host unreachable) for a name it
// cannot resolve and 5 (refused) when the target refuses.
func StartSOCKS5(t testing.TB, opts Options) *Server {
	t.Helper()

	return start(t, "socks5", opts, nil, (*Server).serveSOCKS5)
}

func (s *Server) serveSOCKS5(c net.Conn) {
	_ = c.SetReadDeadline(time.Now().Add(handshakeTimeout))
	br := bufio.NewReader(c)
	if !s.socksAuth(c, br) {
		return
	}

	target, ok := readSOCKSRequest(c, br)
	if !ok {
		return
	}

	if !s.record(target) {
		return
	}

	up, reply := s.socksConnect(target)
	if up == nil {
		_, _ = c.Write([]byte{5, reply, 0, 1, 0, 0, 0, 0, 0, 0})
		return
	}

	_ = c.SetReadDeadline(time.Time{})
	answer := append(socksSuccess(up.LocalAddr().(*net.TCPAddr).AddrPort()), s.opts.SendAfterConnect...)
	if _, err := c.Write(answer); err != nil {
		_ = up.Close()
		return
	}

	s.pipe(c, br, up)
}

// socksAuth reads the greeting, picks a method and runs it.
func (s *Server) socksAuth(c net.Conn, br *bufio.Reader) bool {
	head := make([]byte, 2)
	if _, err := io.ReadFull(br, head); err != nil || head[0] != 5 {
		return false
	}

	methods := make([]byte, head[1])
	if _, err := io.ReadFull(br, methods); err != nil {
		return false
	}

	want := byte(0)
	if s.opts.User != "" {
		want = 2
	}

	if !bytes.Contains(methods, []byte{want}) {
		_, _ = c.Write([]byte{5, 0xff})
		return false
	}

	if _, err := c.Write([]byte{5, want}); err != nil {
		return false
	}

	return want == 0 || s.socksUserPass(c, br)
}

func (s *Server) socksUserPass(c net.Conn, br *bufio.Reader) bool {
	ver, err := br.ReadByte()
	if err != nil || ver != 1 {
		return false
	}

	user, err1 := readShortString(br)
	pass, err2 := readShortString(br)
	if err1 != nil || err2 != nil {
		return false
	}

	good := subtle.ConstantTimeCompare([]byte(user), []byte(s.opts.User)) &
		subtle.ConstantTimeCompare([]byte(pass), []byte(s.opts.Password))
	status := byte(1)
	if good == 1 {
		status = 0
	}

	_, err = c.Write([]byte{1, status})

	return err == nil && status == 0
}

func readShortString(br *bufio.Reader) (string, error) {
	n, err := br.ReadByte()
	if err != nil {
		return "", err
	}

	b := make([]byte, n)
	_, err = io.ReadFull(br, b)

	return string(b), err
}

// readSOCKSRequest reads a CONNECT request and returns its target as
// "host:port", answering unsupported requests itself.
func readSOCKSRequest(c net.Conn, br *bufio.Reader) (string, bool) {
	head := make([]byte, 4)
	if _, err := io.ReadFull(br, head); err != nil || head[0] != 5 {
		return "", false
	}

	if head[1] != 1 {
		_, _ = c.Write([]byte{5, replyBadCommand, 0, 1, 0, 0, 0, 0, 0, 0})
		return "", false
	}

	host, ok := readSOCKSHost(br, head[3])
	if !ok {
		_, _ = c.Write([]byte{5, replyBadAddrType, 0, 1, 0, 0, 0, 0, 0, 0})
		return "", false
	}

	port := make([]byte, 2)
	if _, err := io.ReadFull(br, port); err != nil {
		return "", false
	}

	p := int(port[0])<<8 | int(port[1])

	return net.JoinHostPort(host, strconv.Itoa(p)), true
}

func readSOCKSHost(br *bufio.Reader, atyp byte) (string, bool) {
	switch atyp {
	case 1, 4:
		b := make([]byte, 4)
		if atyp == 4 {
			b = make([]byte, 16)
		}
		if _, err := io.ReadFull(br, b); err != nil {
			return "", false
		}
		a, _ := netip.AddrFromSlice(b)
		return a.String(), true
	case 3:
		name, err := readShortString(br)
		return name, err == nil && name != ""
	}

	return "", false
}

// socksConnect resolves and dials a target, or returns the reply code that
// refuses it.
func (s *Server) socksConnect(target string) (net.Conn, byte) {
	a, err := s.resolve(target)
	switch {
	case errors.Is(err, errNotLoopback):
		return nil, replyNotAllowed
	case err != nil:
		return nil, replyHostUnreach
	}

	up, err := s.dial(a)
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return nil, replyRefused
	case err != nil:
		return nil, replyFailure
	}

	return up, replyOK
}

func socksSuccess(bound netip.AddrPort) []byte {
	a := bound.Addr().Unmap()
	msg := []byte{5, replyOK, 0, 1}
	if a.Is6() {
		msg[3] = 4
	}

	msg = append(msg, a.AsSlice()...)

	return append(msg, byte(bound.Port()>>8), byte(bound.Port()))
}
