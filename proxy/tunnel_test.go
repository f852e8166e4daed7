package proxy_test

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/childflow/childflow/proxy"
	"github.com/childflow/childflow/proxy/proxytest"
)

func dialTCP(t *testing.T, srv *proxytest.Server) *net.TCPConn {
	t.Helper()
	c, err := net.DialTCP("tcp", nil, net.TCPAddrFromAddrPort(srv.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })

	return c
}

// TestTunnelLeavesTargetBytes asks for a tunnel over a connection the test
// made: the bytes the proxy sends after its answer, and the origin's own
// first line, stay in the connection, and the counts are the handshake's.
func TestTunnelLeavesTargetBytes(t *testing.T) {
	origin := proxytest.StartOrigin(t, "127.0.0.1:0")
	early := "early bytes from the tunnel\n"
	for _, tc := range []struct {
		kind    string
		answers uint64 // bytes of the proxy's answers
	}{
		{"http", uint64(len("HTTP/1.1 200 Connection established\r\n\r\n"))},
		{"socks5", 2 + 2 + 10}, // method choice, auth status, IPv4 reply
	} {
		t.Run(tc.kind, func(t *testing.T) {
			opts := proxytest.Options{SendAfterConnect: []byte(early), User: "u", Password: "pw"}
			p := startProxy(t, tc.kind, opts, "u", "pw")
			c := dialTCP(t, p.srv)

			ex, err := p.dialer.Tunnel(context.Background(), c, proxy.Target{Addr: origin.Addr()})
			if err != nil {
				t.Fatal(err)
			}
			if ex.In != tc.answers || ex.Out == 0 {
				t.Errorf("exchanged %+v, want %d bytes in and some out", ex, tc.answers)
			}

			got := make([]byte, len(early))
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.ReadFull(c, got); err != nil || string(got) != early {
				t.Errorf("first bytes %q (%v), want %q", got, err, early)
			}
			echo(t, c, p.srv, "after the early bytes")
		})
	}
}

// TestTunnelOverFile speaks the handshake over an *os.File of a non-blocking
// socket, the way childflow uses a program's socket.
func TestTunnelOverFile(t *testing.T) {
	origin := proxytest.StartOrigin(t, "127.0.0.1:0")
	p := startProxy(t, "http", proxytest.Options{}, "", "")
	c := dialTCP(t, p.srv)
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	dup := -1
	if err := rc.Control(func(fd uintptr) { dup, err = unix.Dup(int(fd)) }); err != nil || dup < 0 {
		t.Fatalf("duplicate the socket: %v", err)
	}
	if err := unix.SetNonblock(dup, true); err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(dup), "socket") // pollable: the descriptor is non-blocking
	defer f.Close()

	if _, err := p.dialer.Tunnel(context.Background(), f, proxy.Target{Addr: origin.Addr()}); err != nil {
		t.Fatal(err)
	}
	echo(t, c, p.srv, "over a file")
}

// TestTunnelAnswerInPieces has a proxy send its answer in pieces that split
// the blank line, with tunnel bytes in the last piece: they stay unread.
func TestTunnelAnswerInPieces(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	pieces := []string{"HTTP/1.1 200 OK\r\n", "X-A: b\r\n\r", "\nTUNNEL"}
	go func() {
		s, err := ln.Accept()
		if err != nil {
			return
		}
		defer s.Close()
		buf := make([]byte, 4096)
		_, _ = s.Read(buf) // the CONNECT request
		for _, piece := range pieces {
			_, _ = io.WriteString(s, piece)
			time.Sleep(20 * time.Millisecond)
		}
		_, _ = s.Read(buf) // until the client closes
	}()

	u, err := proxy.ParseURL("http://" + ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	d := proxy.NewDialer(u, proxy.Options{Timeout: 10 * time.Second})
	c, err := net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	ex, err := d.Tunnel(context.Background(), c, proxy.Target{Name: "example.test"})
	if err != nil {
		t.Fatal(err)
	}
	if want := uint64(len(pieces[0]) + len(pieces[1]) + 1); ex.In != want {
		t.Errorf("took %d bytes of the answer, want %d", ex.In, want)
	}
	got := make([]byte, len("TUNNEL"))
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "TUNNEL" {
		t.Errorf("tunnel bytes %q (%v), want TUNNEL", got, err)
	}
}

// TestTunnelRefusals checks the errors of a refused tunnel, and that an
// https proxy's tunnel cannot be handed over.
func TestTunnelRefusals(t *testing.T) {
	origin := proxytest.StartOrigin(t, "127.0.0.1:0")
	p := startProxy(t, "http", proxytest.Options{User: "u", Password: "pw"}, "u", "wrong")
	_, err := p.dialer.Tunnel(context.Background(), dialTCP(t, p.srv), proxy.Target{Addr: origin.Addr()})
	var pe *proxy.Error
	if !errors.As(err, &pe) || pe.Status != 407 || pe.Stage != proxy.StageAuth {
		t.Errorf("wrong password: %v, want a 407 auth error", err)
	}

	hp := startProxy(t, "https", proxytest.Options{}, "", "")
	if hp.dialer.Joinable() {
		t.Error("an https proxy is joinable, want not")
	}
	if _, err := hp.dialer.Tunnel(context.Background(), dialTCP(t, hp.srv),
		proxy.Target{Addr: origin.Addr()}); err == nil {
		t.Error("Tunnel over an https proxy succeeded, want an error")
	}
}

// TestProxyAddr picks the proxy's address for a socket of each family.
func TestProxyAddr(t *testing.T) {
	tests := []struct {
		url    string
		family int
		v6only bool
		want   string // "" when no address fits
	}{
		{"http://127.0.0.1:3128", unix.AF_INET, false, "127.0.0.1:3128"},
		{"http://127.0.0.1:3128", unix.AF_INET6, false, "[::ffff:127.0.0.1]:3128"},
		{"http://127.0.0.1:3128", unix.AF_INET6, true, ""},
		{"socks5://[::1]:1080", unix.AF_INET6, true, "[::1]:1080"},
		{"socks5://[::1]:1080", unix.AF_INET, false, ""},
	}
	for _, tt := range tests {
		u, err := proxy.ParseURL(tt.url)
		if err != nil {
			t.Fatal(err)
		}
		got, ok, err := proxy.NewDialer(u, proxy.Options{}).ProxyAddr(context.Background(),
			tt.family, tt.v6only)
		if err != nil || ok != (tt.want != "") || ok && got.String() != tt.want {
			t.Errorf("%s family %d v6only %v: got %v %v (%v), want %q", tt.url, tt.family,
				tt.v6only, got, ok, err, tt.want)
		}
	}
}
