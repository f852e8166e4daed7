package proxy

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
)

// SOCKS5 protocol values (RFC 1928, RFC 1929).
const (
	socksVersion     = 5
	socksAuthVersion = 1
	socksNoAuth      = 0
	socksUserPass    = 2
	socksNoMethod    = 0xff
	socksConnect     = 1
	socksIPv4        = 1
	socksDomain      = 3
	socksIPv6        = 4
)

// connectSOCKS5 negotiates authentication and a CONNECT to t over c. It reads
// exactly the proxy's answers, so no tunnel byte is consumed.
func (d *Dialer) connectSOCKS5(c io.ReadWriter, t Target) error {
	if err := d.socksAuth(c, t); err != nil {
		return err
	}

	req, target := d.socksRequest(t)
	if _, err := c.Write(req); err != nil {
		return d.fail(StageProtocol, t, "send socks5 CONNECT to proxy %s: %s", err)
	}

	reply, err := readSOCKSReply(c)
	if err != nil {
		return d.fail(StageProtocol, t, "read socks5 CONNECT answer from proxy %s: %s", err)
	}

	if reply != 0 {
		return &Error{
			Stage: StageConnect, Proxy: d.url.Addr(), Target: target, Reply: reply,
			Msg: fmt.Sprintf("socks5 connect to %s: %s (reply %d)", target,
				socksReplyText(reply), reply),
		}
	}

	return nil
}

// socksAuth offers the methods the Dialer can do and runs the chosen one.
func (d *Dialer) socksAuth(c io.ReadWriter, t Target) error {
	methods := []byte{socksNoAuth}
	if d.url.User != "" {
		methods = []byte{socksUserPass, socksNoAuth}
	}

	greeting := append([]byte{socksVersion, byte(len(methods))}, methods...)
	if _, err := c.Write(greeting); err != nil {
		return d.fail(StageProtocol, t, "send socks5 greeting to proxy %s: %s", err)
	}

	var choice [2]byte
	if _, err := io.ReadFull(c, choice[:]); err != nil {
		return d.fail(StageProtocol, t, "read socks5 method choice from proxy %s: %s", err)
	}

	return d.socksMethod(c, t, choice)
}

func (d *Dialer) socksMethod(c io.ReadWriter, t Target, choice [2]byte) error {
	switch {
	case choice[0] != socksVersion:
		return d.authError(t, fmt.Sprintf("proxy %s is not a SOCKS5 proxy (answered "+
			"version byte %#02x)", d.url.Addr(), choice[0]), StageProtocol)
	case choice[1] == socksNoAuth:
		return nil
	case choice[1] == socksUserPass && d.url.User != "":
		return d.socksUserPass(c, t)
	case d.url.User == "":
		return d.authError(t, fmt.Sprintf("socks5 proxy %s requires authentication (set "+
			"--proxy-user and --proxy-password)", d.url.Addr()), StageAuth)
	}

	return d.authError(t, fmt.Sprintf("socks5 proxy %s accepts none of the offered "+
		"authentication methods (username/password, none)", d.url.Addr()), StageAuth)
}

func (d *Dialer) authError(t Target, msg string, stage Stage) *Error {
	return &Error{Stage: stage, Proxy: d.url.Addr(), Target: t.String(), Msg: msg}
}

// socksUserPass runs the RFC 1929 username/password exchange.
func (d *Dialer) socksUserPass(c io.ReadWriter, t Target) error {
	user, pass := d.url.User, d.url.Password
	if len(user) > 255 || len(pass) > 255 {
		return d.authError(t, "socks5 user name and password must be at most 255 bytes "+
			"each", StageAuth)
	}

	msg := []byte{socksAuthVersion, byte(len(user))}
	msg = append(msg, user...)
	msg = append(msg, byte(len(pass)))
	msg = append(msg, pass...)
	if _, err := c.Write(msg); err != nil {
		return d.fail(StageProtocol, t, "send socks5 credentials to proxy %s: %s", err)
	}

	var status [2]byte
	if _, err := io.ReadFull(c, status[:]); err != nil {
		return d.fail(StageProtocol, t, "read socks5 authentication answer from proxy %s: %s",
			err)
	}

	if status[1] != 0 {
		return d.authError(t, fmt.Sprintf("socks5 proxy %s rejected the credentials of user "+
			"%q: authentication failed (status %d)", d.url.Addr(), printable(user), status[1]),
			StageAuth)
	}

	return nil
}

// socksRequest builds the CONNECT request for t and returns it with the
// target as it is shown in errors.
func (d *Dialer) socksRequest(t Target) ([]byte, string) {
	req := []byte{socksVersion, socksConnect, 0}
	port := t.Addr.Port()

	name := ""
	if d.url.Scheme == SchemeSOCKS5H {
		name = t.name()
	}

	var shown string
	switch a := t.Addr.Addr().Unmap(); {
	case name != "":
		req = append(req, socksDomain, byte(len(name)))
		req = append(req, name...)
		shown = net.JoinHostPort(name, strconv.Itoa(int(port)))
	case a.Is4():
		b := a.As4()
		req = append(append(req, socksIPv4), b[:]...)
		shown = t.ipString()
	default:
		b := a.As16()
		req = append(append(req, socksIPv6), b[:]...)
		shown = t.ipString()
	}

	return append(req, byte(port>>8), byte(port)), shown
}

// readSOCKSReply reads a CONNECT reply, including the bound address of a
// success, and returns its reply code.
func readSOCKSReply(r io.Reader) (byte, error) {
	var head [4]byte
	if _, err := io.ReadFull(r, head[:]); err != nil {
		return 0, err
	}

	if head[0] != socksVersion {
		return 0, fmt.Errorf("unexpected version byte %#02x in the reply", head[0])
	}

	if head[1] != 0 {
		return head[1], nil // the proxy may close without a bound address
	}

	n, err := socksAddrLen(r, head[3])
	if err != nil {
		return 0, err
	}

	if _, err := io.CopyN(io.Discard, r, int64(n)+2); err != nil {
		return 0, err
	}

	return 0, nil
}

// socksAddrLen returns the length of an address of type atyp that follows in
// r, reading the length byte of a domain name.
func socksAddrLen(r io.Reader, atyp byte) (int, error) {
	switch atyp {
	case socksIPv4:
		return 4, nil
	case socksIPv6:
		return 16, nil
	case socksDomain:
		var l [1]byte
		_, err := io.ReadFull(r, l[:])
		return int(l[0]), err
	}

	return 0, fmt.Errorf("unknown address type %d in the reply", atyp)
}

var socksReplies = [...]string{
	1: "general failure of the proxy",
	2: "not allowed by the proxy's rules",
	3: "network unreachable from the proxy",
	4: "host unreachable from the proxy",
	5: "connection refused by proxy",
	6: "timed out at the proxy (TTL expired)",
	7: "command not supported by the proxy",
	8: "address type not supported by the proxy",
}

func socksReplyText(reply byte) string {
	if int(reply) < len(socksReplies) && socksReplies[reply] != "" {
		return socksReplies[reply]
	}

	return "unknown failure"
}

// readConnectResponse reads the header of an HTTP proxy's answer to CONNECT
// and returns its status code and its status line without the protocol
// version, made safe to print.
func readConnectResponse(br *bufio.Reader) (int, string, error) {
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		return 0, "", err
	}

	code := resp.StatusCode
	if code < 100 || code > 999 {
		return 0, "", errors.New("status code out of range")
	}

	text := strings.TrimSpace(strings.TrimPrefix(resp.Status, strconv.Itoa(code)))
	if text == "" {
		text = http.StatusText(code)
	}

	return code, strconv.Itoa(code) + " " + cleanText(text), nil
}

// cleanText limits untrusted text to one short printable line.
func cleanText(s string) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return -1
		}
		return r
	}, strings.ToValidUTF8(s, "?"))

	if len(s) > 120 {
		s = strings.ToValidUTF8(s[:120], "") + "..."
	}

	return s
}
