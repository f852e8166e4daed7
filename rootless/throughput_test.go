package rootless_test

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/childflow/childflow/internal/testenv"
	"github.com/childflow/childflow/rootless"
)

// benchEnv enables TestThroughput, which moves benchBytes twice and takes
// the machine's CPUs for a while.
const benchEnv = "CF_RL_BENCH"

// streamServer sends size bytes to every client of a host loopback port.
func streamServer(t *testing.T, size int64) uint16 {
	t.Helper()

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })

	buf := make([]byte, 256<<10)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			for sent := int64(0); sent < size; sent += int64(len(buf)) {
				if _, err := c.Write(buf[:min(int64(len(buf)), size-sent)]); err != nil {
					break
				}
			}
			c.Close()
		}
	}()

	return uint16(ln.Addr().(*net.TCPAddr).Port)
}

// parseSink reads the sink helper's "bytes MB/s" line.
func parseSink(t *testing.T, out string, size int64) float64 {
	t.Helper()

	var n int64
	var rate float64
	if _, err := fmt.Sscanf(out, "%d %f", &n, &rate); err != nil || n != size {
		t.Fatalf("got sink output %q, want %d bytes", out, size)
	}

	return rate
}

// TestThroughput compares one TCP stream from the host's loopback into the
// namespace through the netstack with the same through slirp4netns.
func TestThroughput(t *testing.T) {
	if os.Getenv(benchEnv) == "" {
		t.Skip("set " + benchEnv + "=1 to measure throughput")
	}
	requireRootless(t)
	slirp := testenv.RequireTool(t, "slirp4netns")
	unshare := testenv.RequireTool(t, "unshare")

	size := int64(1 << 30)
	if v, err := strconv.ParseInt(os.Getenv(benchEnv), 10, 64); err == nil && v > 1 {
		size = v << 20
	}
	port := streamServer(t, size)
	dst := netip.AddrPortFrom(rootless.Gateway4, port).String()

	res, out := run(t, rootless.Config{HostLoopback: true}, "sink", dst)
	if res.ExitCode != 0 {
		t.Fatalf("got exit %d output %q", res.ExitCode, out)
	}
	ours := parseSink(t, out, size)

	theirs := slirpSink(t, unshare, slirp, dst, size)
	t.Logf("one TCP stream, %d MiB: rootless %.0f MB/s, slirp4netns %.0f MB/s", size>>20, ours, theirs)
	if ours < theirs*0.9 {
		t.Errorf("got %.0f MB/s, want at least slirp4netns' %.0f MB/s", ours, theirs)
	}
}

func slirpSink(t *testing.T, unshare, slirp, dst string, size int64) float64 {
	t.Helper()

	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}

	cmd := exec.Command(unshare, "--user", "--map-root-user", "--net", "--", self, "sink", dst)
	cmd.Env = append(os.Environ(), "CF_RL_HELPER=1")
	outR, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}

	waitNewNetns(t, cmd.Process.Pid)
	sl := exec.Command(slirp, "--configure", "--mtu=65520", strconv.Itoa(cmd.Process.Pid), "tap0")
	if err := sl.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sl.Process.Kill(); sl.Wait() })

	buf := make([]byte, 256)
	n, _ := outR.Read(buf)
	cmd.Wait()

	return parseSink(t, string(buf[:n]), size)
}

// waitNewNetns waits until pid has left this network namespace, so that
// slirp4netns configures the new one and never the host's.
func waitNewNetns(t *testing.T, pid int) {
	t.Helper()

	self, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}

	for range 200 {
		if ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid)); err == nil && ns != self {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}

	t.Fatalf("process %d did not enter a new network namespace", pid)
}
