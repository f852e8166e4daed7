package sandbox

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/childflow/childflow/internal/testenv"
	"github.com/childflow/childflow/seccomp"
)

// listenerProbe lists what the command's descriptors are and connects to the port in
// argv[1] twice (the second connect is answered by the test with EHOSTUNREACH).
const listenerProbe = `
import os, socket, sys
fds = []
for f in os.listdir("/proc/self/fd"):
    try:
        fds.append(os.readlink("/proc/self/fd/" + f))
    except OSError:
        pass  # listdir's own descriptor, closed by now
print("fds=" + ",".join(fds))
for name in ("first", "second"):
    s = socket.socket()
    try:
        s.connect(("127.0.0.1", int(sys.argv[1])))
        print(name + "=ok")
    except OSError as e:
        print("%s=%d" % (name, e.errno))
`

// TestListenerHandoff runs commands with Config.Listener, confined and not,
// as root and as another user: the init sends the listener, the command's
// connects stop in it, and the command does not hold the socket pair.
func TestListenerHandoff(t *testing.T) {
	// The system's python3, which every user may run (a python3 found first
	// on PATH may live in root's home).
	py := "/usr/bin/python3"
	if _, err := os.Stat(py); err != nil {
		testenv.Skip(t, "no /usr/bin/python3")
	}
	if err := seccomp.Probe(); err != nil {
		testenv.Skip(t, err.Error())
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port

	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"plain", Config{}},
		{"confine", Config{Confine: true}},
		{"credential", Config{Cred: &syscall.Credential{Uid: uint32(testenv.Nobody),
			Gid: uint32(testenv.Nobody)}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, seen := runWithListener(t, tc.cfg, py, port)
			kv := keyValues(out)
			if fds := kv["fds"]; fds == "" || strings.Contains(fds, "socket:") ||
				strings.Contains(fds, "seccomp") {
				t.Errorf("the command holds %q, want neither the socket pair nor the listener", fds)
			}
			if kv["first"] != "ok" || kv["second"] != strconv.Itoa(int(unix.EHOSTUNREACH)) {
				t.Errorf("connects: first %q second %q, want ok and EHOSTUNREACH", kv["first"],
					kv["second"])
			}
			want := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port))
			if len(seen) != 2 || seen[0] != want || seen[1] != want {
				t.Errorf("intercepted %v, want two connects to %s", seen, want)
			}
		})
	}
}

// runWithListener runs the probe with cfg and a listener that lets the
// first connect go on and answers the second; it returns the command's
// output and the addresses it intercepted.
func runWithListener(t *testing.T, cfg Config, py string, port int) (string, []netip.AddrPort) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	mine := os.NewFile(uintptr(fds[0]), "parent")
	defer mine.Close()
	cfg.Listener = os.NewFile(uintptr(fds[1]), "init")

	cmd := sandboxCmd(t, newCgroup(t), cfg, py, "python3", "-c", listenerProbe,
		strconv.Itoa(port))
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	cfg.Listener.Close()
	timer := time.AfterFunc(20*time.Second, func() { _ = cmd.Process.Kill() })
	defer timer.Stop()

	lfd, err := seccomp.ReceiveListener(int(mine.Fd()), 10*time.Second)
	if err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatalf("receive listener: %v; output:\n%s", err, out.String())
	}
	l, err := seccomp.NewListener(lfd)
	if err != nil {
		t.Fatal(err)
	}

	var mu sync.Mutex
	var seen []netip.AddrPort
	done := make(chan error, 1)
	go func() {
		done <- l.Serve(func(n seccomp.Notif) {
			args, _ := seccomp.ReadConnectArgs(n)
			mu.Lock()
			seen = append(seen, args.Addr)
			first := len(seen) == 1
			mu.Unlock()
			if first {
				_ = l.Continue(n.ID)
				return
			}
			_ = l.Respond(n.ID, unix.EHOSTUNREACH)
		})
	}()

	var ee *os.SyscallError
	if err := cmd.Wait(); err != nil && !errors.As(err, &ee) {
		t.Errorf("command: %v; output:\n%s", err, out.String())
	}
	_ = l.Close()
	if err := <-done; err != nil {
		t.Errorf("serve: %v", err)
	}

	mu.Lock()
	defer mu.Unlock()

	return out.String(), seen
}
