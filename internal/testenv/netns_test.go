package testenv

import (
	"bufio"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"
)

// echoOnce accepts one connection on ln and echoes one line.
func echoOnce(ln net.Listener) {
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()

		c.SetDeadline(time.Now().Add(5 * time.Second))
		line, _ := bufio.NewReader(c).ReadString('\n')
		io.WriteString(c, line)
	}()
}

// dialEcho dials addr from inside ns and checks the echo.
func dialEcho(t *testing.T, ns *Netns, addr string) {
	t.Helper()
	err := ns.Do(func() error {
		c, err := net.DialTimeout("tcp", addr, 3*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()

		c.SetDeadline(time.Now().Add(3 * time.Second))
		if _, err := io.WriteString(c, "ping\n"); err != nil {
			return err
		}

		got, err := bufio.NewReader(c).ReadString('\n')
		if err == nil && got != "ping\n" {
			t.Errorf("echo from %s: got %q, want %q", addr, got, "ping\n")
		}

		return err
	})
	if err != nil {
		t.Errorf("talk to %s from netns %s: %v", addr, ns, err)
	}
}

func TestNetnsRunAndCleanup(t *testing.T) {
	var path string
	t.Run("inner", func(t *testing.T) {
		ns := NewNetns(t, "run")
		path = ns.Path()

		if _, err := os.Stat(path); err != nil {
			t.Fatalf("netns file: %v", err)
		}

		out := ns.Run(t, "ip", "-o", "link", "show")
		if lines := strings.Count(strings.TrimSpace(out), "\n") + 1; lines != 1 ||
			!strings.Contains(out, "lo:") || !strings.Contains(out, "UP") {
			t.Errorf("links in a new netns: got %q, want lo alone, up", out)
		}

		// nsenter --net keeps the host's mounts, the cgroup2 one included
		// (ip netns exec would remount /sys and hide it).
		for _, f := range []string{
			"/sys/fs/cgroup/unified/cgroup.controllers", "/sys/fs/cgroup/cgroup.controllers",
		} {
			if _, err := os.Stat(f); err == nil {
				ns.Run(t, "test", "-e", f)
			}
		}
	})

	if path == "" {
		return // skipped
	}

	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("netns %s after cleanup: got %v, want it gone", path, err)
	}
}

func TestVethBetweenNamespaces(t *testing.T) {
	a, b := NewNetns(t, "a"), NewNetns(t, "b")
	v := Veth(t, a, b, netip.MustParsePrefix("198.18.7.1/24"),
		netip.MustParsePrefix("198.18.7.2/24"))
	v.AddAddrs(t, netip.MustParsePrefix("2001:db8:7::1/64"),
		netip.MustParsePrefix("2001:db8:7::2/64"))

	ln4 := ListenIn(t, b, "tcp4", "198.18.7.2:0")
	ln6 := ListenIn(t, b, "tcp6", "[2001:db8:7::2]:0")
	echoOnce(ln4)
	echoOnce(ln6)

	start := time.Now()
	dialEcho(t, a, ln4.Addr().String())
	dialEcho(t, a, ln6.Addr().String())

	if d := time.Since(start); d > time.Second {
		t.Errorf("first v4 and v6 exchanges took %v, want under a second (DAD off)", d)
	}

	// The listener lives in b only: the host has no such address.
	if _, err := net.DialTimeout("tcp", ln4.Addr().String(), 100*time.Millisecond); err == nil {
		t.Errorf("dial %s from the host: got a connection, want none", ln4.Addr())
	}
}

func TestListenPacketIn(t *testing.T) {
	ns := NewNetns(t, "udp")
	pc := ListenPacketIn(t, ns, "udp", "127.0.0.1:0")
	addr := pc.LocalAddr().String()

	go func() {
		buf := make([]byte, 64)
		pc.SetDeadline(time.Now().Add(5 * time.Second))
		n, from, err := pc.ReadFrom(buf)
		if err == nil {
			pc.WriteTo(buf[:n], from)
		}
	}()

	out := ns.Run(t, "bash", "-c", "exec 3<>/dev/udp/"+strings.Replace(addr, ":", "/", 1)+
		"; printf hi >&3; timeout 3 head -c 2 <&3")
	if out != "hi" {
		t.Errorf("udp echo inside the netns: got %q, want %q", out, "hi")
	}
}

func TestVethWithHost(t *testing.T) {
	ns := NewNetns(t, "hostlink")
	// A /30 of the benchmarking range unique to this process.
	pid := os.Getpid()
	base := netip.AddrFrom4([4]byte{198, 19, byte(pid >> 8), byte(pid) &^ 3})
	hostAddr, nsAddr := base.Next(), base.Next().Next()

	v := Veth(t, nil, ns, netip.PrefixFrom(hostAddr, 30), netip.PrefixFrom(nsAddr, 30))

	ln := ListenIn(t, ns, "tcp4", netip.AddrPortFrom(nsAddr, 0).String())
	echoOnce(ln)
	dialEcho(t, nil, ln.Addr().String())

	if out := (*Netns)(nil).Run(t, "ip", "-o", "addr", "show", "dev", v.Name1); !strings.Contains(
		out, hostAddr.String()) {
		t.Errorf("host end %s: got %q, want address %s", v.Name1, out, hostAddr)
	}
}

func TestTopologyForPolicyTests(t *testing.T) {
	top := TopologyForPolicyTests(t)

	for _, a := range top.ServerAddrs() {
		ln := ListenIn(t, top.Server, "tcp", netip.AddrPortFrom(a, 0).String())
		echoOnce(ln)
		dialEcho(t, top.Client, ln.Addr().String())
	}

	// Route lookups only: no packet is sent.
	for _, dst := range []string{"192.0.2.99", "2001:db8:ffff::1"} {
		out := top.Client.Run(t, "ip", "route", "get", dst)
		if !strings.Contains(out, "via "+top.Gateway4.String()) &&
			!strings.Contains(out, "via "+top.Gateway6.String()) {
			t.Errorf("route to %s in the client: got %q, want via the server", dst, out)
		}
	}

	links := top.Client.Run(t, "ip", "-o", "link", "show")
	if n := strings.Count(strings.TrimSpace(links), "\n") + 1; n != 2 {
		t.Errorf("client links: got %d (%q), want lo and the veth", n, links)
	}
}
