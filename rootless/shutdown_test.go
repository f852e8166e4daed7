package rootless_test

import (
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/childflow/childflow/flows"
	"github.com/childflow/childflow/rootless"
)

// floodServer accepts connections on the host's loopback and writes to each
// as fast as it can until the test ends, so that the tap is busy in the
// direction of the command when it exits.
func floodServer(t *testing.T) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })

	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				go io.Copy(io.Discard, c)
				buf := make([]byte, 64<<10)
				for {
					if _, err := c.Write(buf); err != nil {
						return
					}
				}
			}()
		}
	}()

	return netip.MustParseAddrPort(ln.Addr().String())
}

// helperBlast streams to and from a TCP server and floods UDP datagrams at
// the same port from a forked daemon and from itself, then exits after the
// given milliseconds without closing anything.
func helperBlast(args []string) int {
	c, err := net.Dial("tcp", args[0])
	if err != nil {
		return 1
	}
	go io.Copy(io.Discard, c)
	go func() {
		buf := make([]byte, 64<<10)
		for {
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	}()

	u, err := net.Dial("udp", args[0])
	if err != nil {
		return 1
	}
	go func() {
		buf := make([]byte, 1400)
		for {
			u.Write(buf)
		}
	}()

	ms, _ := time.ParseDuration(args[1] + "ms")
	time.Sleep(ms)
	os.Stdout.WriteString("blasted\n")

	return 0
}

// TestWaitReturnsUnderLoad ends the command while both directions of a TCP
// stream and a UDP flood are busy on the tap. Wait must return promptly
// every time: the tap's read loop has to end when the netstack shuts down
// (an earlier build blocked there for good).
func TestWaitReturnsUnderLoad(t *testing.T) {
	requireRootless(t)
	srv := floodServer(t)
	dst := netip.AddrPortFrom(rootless.Gateway4, srv.Port()).String()

	for i := range 8 {
		start := time.Now()
		done := make(chan string, 1)
		go func() {
			res, out := run(t, rootless.Config{HostLoopback: true}, "blast", dst, "150")
			if res.ExitCode != 0 {
				out += " (exit code not 0)"
			}
			done <- out
		}()

		select {
		case out := <-done:
			if !strings.Contains(out, "blasted") {
				t.Fatalf("run %d: got output %q, want %q", i, out, "blasted")
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("run %d: Wait returned %v after the start, want under 5s", i, d)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("run %d: Wait did not return within 20s of the start", i)
		}
	}
}

// helperRawProto sends one IPv4 and one IPv6 packet of protocol 253 (for
// experiments) to the addresses given, through IPPROTO_RAW sockets.
func helperRawProto(args []string) int {
	for _, a := range args {
		dst := netip.MustParseAddr(a)
		var fam int
		var sa unix.Sockaddr
		if dst.Is4() {
			fam, sa = unix.AF_INET, &unix.SockaddrInet4{Addr: dst.As4()}
		} else {
			fam, sa = unix.AF_INET6, &unix.SockaddrInet6{Addr: dst.As16()}
		}
		fd, err := unix.Socket(fam, unix.SOCK_RAW, unix.IPPROTO_RAW)
		if err != nil {
			os.Stdout.WriteString("error: " + err.Error() + "\n")
			return 1
		}

		pkt := rawPacket(dst)
		if err := unix.Sendto(fd, pkt, 0, sa); err != nil {
			os.Stdout.WriteString("error: " + err.Error() + "\n")
			return 1
		}
		unix.Close(fd)
	}

	return 0
}

// rawPacket is an IP packet of protocol 253 from the namespace to dst.
func rawPacket(dst netip.Addr) []byte {
	payload := []byte("cf-raw")
	if dst.Is4() {
		src := rootless.ChildAddr4.Addr().As4()
		d := dst.As4()
		ip := []byte{0x45, 0, 0, byte(20 + len(payload)), 0, 0, 0, 0, 64, 253, 0, 0}
		ip = append(append(append(ip, src[:]...), d[:]...), payload...)
		return ip
	}

	src := rootless.ChildAddr6.Addr().As16()
	d := dst.As16()
	ip := []byte{0x60, 0, 0, 0, 0, byte(len(payload)), 253, 64}
	ip = append(append(append(ip, src[:]...), d[:]...), payload...)

	return ip
}

// TestUnsupportedProtocolCounted sends raw IP packets of a protocol the
// backend does not forward: both are dropped at the tap and counted, and
// nothing is checked or dialled for them.
func TestUnsupportedProtocolCounted(t *testing.T) {
	requireRootless(t)
	var checks atomic.Int64
	cfg := rootless.Config{HostLoopback: true,
		Check: func(string, netip.AddrPort, func() flows.Proc) bool { checks.Add(1); return true }}

	// The gateway addresses are the namespace's own: nothing can leave.
	res, out := run(t, cfg, "rawproto", rootless.Gateway4.String(), rootless.Gateway6.String())
	if res.ExitCode != 0 {
		t.Fatalf("got exit %d output %q, want 0", res.ExitCode, out)
	}
	if res.Stats.Unsupported != 2 || checks.Load() != 0 {
		t.Errorf("got %d unsupported packets and %d checks, want 2 and 0", res.Stats.Unsupported,
			checks.Load())
	}
}
