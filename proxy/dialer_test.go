package proxy_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/childflow/childflow/proxy"
	"github.com/childflow/childflow/proxy/proxytest"
)

var testNames = map[string]netip.Addr{
	"origin4.test": netip.MustParseAddr("127.0.0.1"),
	"origin6.test": netip.MustParseAddr("::1"),
}

// testProxy is a started test proxy and the dialer that uses it.
type testProxy struct {
	srv    *proxytest.Server
	dialer *proxy.Dialer
}

func parseURL(t testing.TB, raw string) *proxy.URL {
	t.Helper()

	u, err := proxy.ParseURL(raw)
	if err != nil {
		t.Fatal(err)
	}

	return u
}

// startProxy starts a test proxy of kind (http, https, socks5, socks5h,
// http6) and a dialer for it with the given credentials.
func startProxy(t testing.TB, kind string, opts proxytest.Options, user, pass string) testProxy {
	t.Helper()

	opts.Resolve = testNames
	var srv *proxytest.Server
	var dopts proxy.Options
	switch kind {
	case "http":
		srv = proxytest.StartHTTP(t, opts)
	case "http6":
		opts.Listen = "[::1]:0"
		srv = proxytest.StartHTTP(t, opts)
	case "https":
		s := proxytest.StartHTTPS(t, opts)
		srv, dopts.RootCAs = s.Server, s.CertPool()
	case "socks5", "socks5h":
		srv = proxytest.StartSOCKS5(t, opts)
	default:
		t.Fatalf("unknown proxy kind %q", kind)
	}

	raw := srv.URL()
	if kind == "socks5h" {
		raw = strings.Replace(raw, "socks5://", "socks5h://", 1)
	}

	u, err := parseURL(t, raw).WithCredentials(user, pass)
	if err != nil {
		t.Fatal(err)
	}
	dopts.Timeout = 10 * time.Second

	return testProxy{srv: srv, dialer: proxy.NewDialer(u, dopts)}
}

// echo checks a tunnel to a proxytest.Origin: the origin must see one of the
// proxy's outbound addresses, not the client, and echo a message.
func echo(t testing.TB, c net.Conn, srv *proxytest.Server, msg string) {
	t.Helper()

	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	br := bufio.NewReader(c)
	peer, err := proxytest.ReadPeer(br)
	if err != nil {
		t.Fatal(err)
	}

	if !slices.Contains(srv.Outbound(), peer) {
		t.Errorf("origin saw peer %s, want one of the proxy's addresses %v", peer, srv.Outbound())
	}
	if local := c.LocalAddr().(*net.TCPAddr).AddrPort(); peer == local {
		t.Errorf("origin saw the client's own address %s", local)
	}

	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatal(err)
	}
	closeWrite(t, c)

	got, err := io.ReadAll(br)
	if err != nil {
		t.Fatalf("read echo: %v", err)
	}
	if string(got) != msg {
		t.Errorf("echo: got %q, want %q", got, msg)
	}
}

func closeWrite(t testing.TB, c net.Conn) {
	t.Helper()

	cw, ok := c.(interface{ CloseWrite() error })
	if !ok {
		t.Fatalf("connection %T cannot half-close", c)
	}
	if err := cw.CloseWrite(); err != nil {
		t.Fatalf("half-close: %v", err)
	}
}

func TestDialThroughProxies(t *testing.T) {
	origins := map[string]*proxytest.Origin{
		"ipv4": proxytest.StartOrigin(t, "127.0.0.1:0"),
		"ipv6": proxytest.StartOrigin(t, "[::1]:0"),
	}
	names := map[string]string{"ipv4": "origin4.test", "ipv6": "origin6.test"}

	for _, kind := range []string{"http", "http6", "https", "socks5", "socks5h"} {
		p := startProxy(t, kind, proxytest.Options{}, "", "")
		for _, family := range []string{"ipv4", "ipv6"} {
			for _, byName := range []bool{false, true} {
				name := kind + "/" + family + "/ip"
				target := proxy.Target{Addr: origins[family].Addr()}
				want := target.Addr.String()
				if byName {
					name = kind + "/" + family + "/name"
					target.Name = names[family]
					if kind != "socks5" { // socks5:// always sends the address
						want = target.Name + ":" + strconv.Itoa(int(target.Addr.Port()))
					}
				}

				t.Run(name, func(t *testing.T) {
					dialAndCheck(t, p, target, want)
				})
			}
		}
	}
}

func dialAndCheck(t *testing.T, p testProxy, target proxy.Target, want string) {
	c, err := p.dialer.DialContext(context.Background(), target)
	if err != nil {
		t.Fatalf("dial %v through %s: %v", target, p.dialer.Redacted(), err)
	}
	defer c.Close()

	echo(t, c, p.srv, "hello "+want)

	reqs := p.srv.Requests()
	if len(reqs) == 0 || reqs[len(reqs)-1] != want {
		t.Errorf("proxy was asked for %v, want last %q", reqs, want)
	}
}

func TestDialAuth(t *testing.T) {
	origin := proxytest.StartOrigin(t, "127.0.0.1:0")
	const user, pass = "alice", "correct-horse-42"
	tests := []struct {
		kind, user, pass string
		stage            proxy.Stage
		status           int
		want             string
	}{
		{"http", user, pass, "", 0, ""},
		{"http", user, "wrong-pass-77", proxy.StageAuth, 407,
			"proxy refused CONNECT to " + origin.Addr().String() +
				": 407 Proxy Authentication Required"},
		{"http", "", "", proxy.StageAuth, 407, "407 Proxy Authentication Required"},
		{"https", user, pass, "", 0, ""},
		{"https", user, "wrong-pass-77", proxy.StageAuth, 407, "407 Proxy Authentication Required"},
		{"socks5", user, pass, "", 0, ""},
		{"socks5", user, "wrong-pass-77", proxy.StageAuth, 0,
			`rejected the credentials of user "alice": authentication failed (status 1)`},
		{"socks5", "", "", proxy.StageAuth, 0, "requires authentication (set --proxy-user"},
	}

	for _, tt := range tests {
		p := startProxy(t, tt.kind, proxytest.Options{User: user, Password: pass}, tt.user, tt.pass)
		c, err := p.dialer.DialContext(context.Background(), proxy.Target{Addr: origin.Addr()})
		if tt.want == "" {
			if err != nil {
				t.Errorf("%s with good credentials: %v", tt.kind, err)
				continue
			}
			echo(t, c, p.srv, "authenticated")
			c.Close()
			continue
		}

		checkError(t, tt.kind+" as "+tt.user, err, tt.stage, tt.want)
		var pe *proxy.Error
		if errors.As(err, &pe) && pe.Status != tt.status {
			t.Errorf("%s: got status %d, want %d", tt.kind, pe.Status, tt.status)
		}
		if err != nil && (strings.Contains(err.Error(), pass) ||
			strings.Contains(err.Error(), "wrong-pass")) {
			t.Errorf("%s: error %q contains a password", tt.kind, err)
		}
	}
}

// checkError checks that err is a *proxy.Error of stage whose message
// contains want.
func checkError(t testing.TB, name string, err error, stage proxy.Stage, want string) {
	t.Helper()

	var pe *proxy.Error
	switch {
	case err == nil:
		t.Errorf("%s: dial succeeded, want an error containing %q", name, want)
	case !errors.As(err, &pe):
		t.Errorf("%s: error %T %q, want a *proxy.Error", name, err, err)
	case pe.Stage != stage:
		t.Errorf("%s: error %q has stage %q, want %q", name, err, pe.Stage, stage)
	case !strings.Contains(err.Error(), want):
		t.Errorf("%s: got error %q, want it to contain %q", name, err, want)
	}
}

// closedPort returns a loopback address that refuses connections: a socket
// is bound there but does not listen, which also keeps the port from being
// given to a listener of this test.
func closedPort(t testing.TB, addr string) netip.AddrPort {
	t.Helper()

	a := netip.MustParseAddrPort(addr)
	family, sa := syscall.AF_INET6, syscall.Sockaddr(&syscall.SockaddrInet6{Addr: a.Addr().As16()})
	if a.Addr().Is4() {
		family, sa = syscall.AF_INET, &syscall.SockaddrInet4{Addr: a.Addr().As4()}
	}

	fd, err := syscall.Socket(family, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })

	if err := syscall.Bind(fd, sa); err != nil {
		t.Fatal(err)
	}
	bound, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}

	switch b := bound.(type) {
	case *syscall.SockaddrInet4:
		return netip.AddrPortFrom(a.Addr(), uint16(b.Port))
	case *syscall.SockaddrInet6:
		return netip.AddrPortFrom(a.Addr(), uint16(b.Port))
	}
	t.Fatalf("bound to %T", bound)

	return netip.AddrPort{}
}

func TestDialErrors(t *testing.T) {
	closed4 := closedPort(t, "127.0.0.1:0")
	closed6 := closedPort(t, "[::1]:0")
	outside := netip.MustParseAddrPort("192.0.2.1:80") // never dialed: the proxy refuses it

	tests := []struct {
		name, kind string
		target     proxy.Target
		stage      proxy.Stage
		want       string
	}{
		{"http refused", "http", proxy.Target{Addr: closed4}, proxy.StageConnect,
			"proxy refused CONNECT to " + closed4.String() + ": 502 Bad Gateway"},
		{"http off loopback", "http", proxy.Target{Addr: outside}, proxy.StageConnect,
			"proxy refused CONNECT to 192.0.2.1:80: 403 Forbidden"},
		{"socks5 refused v4", "socks5", proxy.Target{Addr: closed4}, proxy.StageConnect,
			"socks5 connect to " + closed4.String() + ": connection refused by proxy (reply 5)"},
		{"socks5 refused v6", "socks5", proxy.Target{Addr: closed6}, proxy.StageConnect,
			"socks5 connect to " + closed6.String() + ": connection refused by proxy (reply 5)"},
		{"socks5 off loopback", "socks5", proxy.Target{Addr: outside}, proxy.StageConnect,
			"socks5 connect to 192.0.2.1:80: not allowed by the proxy's rules (reply 2)"},
		{"socks5h unknown name", "socks5h", proxy.Target{Addr: closed4, Name: "Nowhere.Test."},
			proxy.StageConnect, "socks5 connect to nowhere.test:" +
				strconv.Itoa(int(closed4.Port())) + ": host unreachable from the proxy (reply 4)"},
	}

	for _, tt := range tests {
		p := startProxy(t, tt.kind, proxytest.Options{}, "", "")
		_, err := p.dialer.DialContext(context.Background(), tt.target)
		checkError(t, tt.name, err, tt.stage, tt.want)
	}
}

func TestDialProxyDown(t *testing.T) {
	for _, addr := range []string{"127.0.0.1:0", "[::1]:0"} {
		down := closedPort(t, addr)
		d := proxy.NewDialer(parseURL(t, "http://u:pw-down-1@"+down.String()), proxy.Options{})
		_, err := d.DialContext(context.Background(), proxy.Target{Addr: down})
		want := "proxy " + down.String() + " unreachable: connection refused"
		checkError(t, "proxy down "+addr, err, proxy.StageDial, want)
		if err != nil && err.Error() != want {
			t.Errorf("got error %q, want exactly %q", err, want)
		}
	}
}

func TestDialHTTPSCertificates(t *testing.T) {
	origin := proxytest.StartOrigin(t, "127.0.0.1:0")
	srv := proxytest.StartHTTPS(t, proxytest.Options{})
	target := proxy.Target{Addr: origin.Addr()}

	strict := proxy.NewDialer(parseURL(t, srv.URL()), proxy.Options{Timeout: 5 * time.Second})
	_, err := strict.DialContext(context.Background(), target)
	checkError(t, "untrusted certificate", err, proxy.StageTLS, "tls handshake with proxy "+
		srv.Addr().String()+": tls: failed to verify certificate")

	u := parseURL(t, srv.URL())
	u.Insecure = true
	c, err := proxy.NewDialer(u, proxy.Options{}).DialContext(context.Background(), target)
	if err != nil {
		t.Fatalf("insecure dial: %v", err)
	}
	defer c.Close()

	echo(t, c, srv.Server, "insecure but encrypted")
}

// startSilent starts a listener that accepts connections and never answers.
func startSilent(t testing.TB) netip.AddrPort {
	t.Helper()

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })

	go func() {
		var held []net.Conn
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()

	return ln.Addr().(*net.TCPAddr).AddrPort()
}

func TestDialTimeoutAndCancel(t *testing.T) {
	silent := startSilent(t)
	target := proxy.Target{Addr: netip.MustParseAddrPort("127.0.0.1:9")}

	for _, scheme := range []string{"http", "socks5", "https"} {
		d := proxy.NewDialer(parseURL(t, scheme+"://"+silent.String()),
			proxy.Options{Timeout: 200 * time.Millisecond})
		start := time.Now()
		_, err := d.DialContext(context.Background(), target)
		if took := time.Since(start); took > 5*time.Second {
			t.Errorf("%s: dial took %v, want about 200ms", scheme, took)
		}

		var pe *proxy.Error
		if !errors.As(err, &pe) || !pe.Timeout() || !strings.Contains(err.Error(), "timed out") {
			t.Errorf("%s: got error %v, want a timeout", scheme, err)
		}
	}

	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	d := proxy.NewDialer(parseURL(t, "http://"+silent.String()), proxy.Options{})
	_, err := d.DialContext(ctx, target)
	if err == nil || !strings.Contains(err.Error(), "canceled") {
		t.Errorf("canceled dial: got error %v, want one saying canceled", err)
	}
}

func TestDialKeepsBytesAfterConnect(t *testing.T) {
	origin := proxytest.StartOrigin(t, "127.0.0.1:0")
	early := "early bytes from the tunnel\n"

	for _, kind := range []string{"http", "https"} {
		p := startProxy(t, kind, proxytest.Options{SendAfterConnect: []byte(early)}, "", "")
		c, err := p.dialer.DialContext(context.Background(), proxy.Target{Addr: origin.Addr()})
		if err != nil {
			t.Fatalf("%s: %v", kind, err)
		}

		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		got := make([]byte, len(early))
		if _, err := io.ReadFull(c, got); err != nil || string(got) != early {
			t.Errorf("%s: first bytes %q (%v), want %q", kind, got, err, early)
		}
		echo(t, c, p.srv, "after the early bytes")
		c.Close()
	}
}

func TestTargetString(t *testing.T) {
	tests := []struct {
		addr, name, want string
	}{
		{"192.0.2.7:443", "", "192.0.2.7:443"},
		{"[2001:db8::1]:80", "", "[2001:db8::1]:80"},
		{"[::ffff:192.0.2.7]:80", "", "192.0.2.7:80"},
		{"192.0.2.7:443", "Example.ORG.", "example.org:443"},
		{"[2001:db8::1]:443", "example.org", "example.org:443"},
		{"192.0.2.7:443", "bad name\r\nX-Injected: 1", "192.0.2.7:443"},
		{"192.0.2.7:443", "10.0.0.1", "192.0.2.7:443"},
	}

	for _, tt := range tests {
		target := proxy.Target{Addr: netip.MustParseAddrPort(tt.addr), Name: tt.name}
		if got := target.String(); got != tt.want {
			t.Errorf("Target{%s, %q}.String() = %q, want %q", tt.addr, tt.name, got, tt.want)
		}
	}
}
