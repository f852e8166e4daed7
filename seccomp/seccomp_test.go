package seccomp_test

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/childflow/childflow/internal/testenv"
	"github.com/childflow/childflow/seccomp"
)

// The helper process installs the filter (with no_new_privs, so no
// privilege is needed), sends the listener over descriptor 3 and makes
// three connects with raw blocking sockets: to $OK_ADDR (the test lets it
// go on), to $REFUSE_ADDR (the test answers EHOSTUNREACH itself, which a
// loopback connect never returns) and to a Unix socket path that does not
// exist (let go on: ENOENT). It prints one line per connect: "NAME
// ERRNO-NAME" ("ok" for success).
const helperEnv = "SECCOMP_TEST_HELPER"

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "1" {
		os.Exit(helper())
	}
	os.Exit(m.Run())
}

func helper() int {
	runtime.LockOSThread()
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		fmt.Println("prctl", err)
		return 1
	}
	fd, installErr := seccomp.InstallConnectFilter()
	if err := seccomp.SendListener(3, fd, installErr); err != nil {
		fmt.Println("send", err)
		return 1
	}
	if installErr != nil {
		return 0
	}
	_ = unix.Close(fd)

	tcp := func(name, env string) {
		ap := netip.MustParseAddrPort(os.Getenv(env))
		s, _ := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
		err := unix.Connect(s, &unix.SockaddrInet4{Addr: ap.Addr().As4(), Port: int(ap.Port())})
		report(name, err)
		_ = unix.Close(s)
	}
	tcp("ok", "OK_ADDR")
	tcp("refuse", "REFUSE_ADDR")

	s, _ := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	report("unix", unix.Connect(s, &unix.SockaddrUnix{Name: "/nonexistent/seccomp-test"}))

	return 0
}

func report(name string, err error) {
	if err == nil {
		fmt.Println(name, "ok")
		return
	}
	fmt.Println(name, unix.ErrnoName(err.(unix.Errno)))
}

// seen is what the supervisor learned of one intercepted connect.
type seen struct {
	args   seccomp.ConnectArgs
	thread seccomp.Thread
	domain int
	valid  bool
	err    error
}

func TestInterceptConnect(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	okAddr := ln.Addr().(*net.TCPAddr).AddrPort()
	refuseAddr := netip.MustParseAddrPort("127.0.0.1:9") // answered by the test

	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	parent, child := os.NewFile(uintptr(fds[0]), "parent"), os.NewFile(uintptr(fds[1]), "child")
	defer parent.Close()

	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=1", "OK_ADDR="+okAddr.String(),
		"REFUSE_ADDR="+refuseAddr.String())
	cmd.ExtraFiles = []*os.File{child}
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	child.Close()

	// Probe must agree with the helper's install.
	probeErr := seccomp.Probe()
	fd, err := seccomp.ReceiveListener(int(parent.Fd()), 10*time.Second)
	if errors.Is(err, seccomp.ErrNoListener) {
		_ = cmd.Wait()
		if probeErr == nil {
			t.Fatalf("Probe found connect interception supported, the install failed: %v", err)
		}
		testenv.Skip(t, err.Error())
	}
	if err != nil {
		_ = cmd.Process.Kill()
		t.Fatalf("receive listener: %v", err)
	}
	if probeErr != nil {
		t.Errorf("the install worked, Probe says: %v", probeErr)
	}

	got := serve(t, fd, func(n seccomp.Notif, s *seen) (unix.Errno, bool) {
		if s.args.Addr == refuseAddr {
			return unix.EHOSTUNREACH, true
		}
		return 0, false
	}, cmd)

	want := "ok ok\nrefuse EHOSTUNREACH\nunix ENOENT\n"
	if out.String() != want {
		t.Errorf("helper printed %q, want %q", out.String(), want)
	}
	checkSeen(t, got, cmd.Process.Pid, okAddr, refuseAddr)
}

// serve answers the helper's connects until it exits: decide returns the
// errno to answer with and true, or false to let the call go on.
func serve(t *testing.T, fd int, decide func(seccomp.Notif, *seen) (unix.Errno, bool),
	cmd *exec.Cmd) []seen {
	t.Helper()
	l, err := seccomp.NewListener(fd)
	if err != nil {
		t.Fatal(err)
	}

	var mu sync.Mutex
	var got []seen
	done := make(chan error, 1)
	go func() {
		done <- l.Serve(func(n seccomp.Notif) {
			s := inspect(l, n)
			mu.Lock()
			got = append(got, s)
			mu.Unlock()
			if errno, ok := decide(n, &s); ok {
				_ = l.Respond(n.ID, errno)
				return
			}
			_ = l.Continue(n.ID)
		})
	}()

	if err := cmd.Wait(); err != nil {
		t.Errorf("helper: %v", err)
	}
	if err := l.Close(); err != nil {
		t.Errorf("close listener: %v", err)
	}
	if err := <-done; err != nil {
		t.Errorf("serve: %v", err)
	}

	mu.Lock()
	defer mu.Unlock()

	return got
}

func inspect(l *seccomp.Listener, n seccomp.Notif) seen {
	var s seen
	if s.args, s.err = seccomp.ReadConnectArgs(n); s.err != nil {
		return s
	}
	s.valid = l.Valid(n.ID)
	if s.thread, s.err = seccomp.ReadThread(n.Pid); s.err != nil {
		return s
	}

	dup, err := seccomp.DupFD(n.Pid, s.args.FD)
	if err != nil {
		s.err = err
		return s
	}
	defer unix.Close(dup)
	s.domain, s.err = unix.GetsockoptInt(dup, unix.SOL_SOCKET, unix.SO_DOMAIN)

	return s
}

func checkSeen(t *testing.T, got []seen, pid int, okAddr, refuseAddr netip.AddrPort) {
	t.Helper()
	if len(got) != 3 {
		t.Fatalf("intercepted %d connects, want 3: %+v", len(got), got)
	}
	wantAddr := []netip.AddrPort{okAddr, refuseAddr, {}}
	wantFamily := []int{unix.AF_INET, unix.AF_INET, unix.AF_UNIX}
	for i, s := range got {
		switch {
		case s.err != nil:
			t.Errorf("connect %d: %v", i, s.err)
		case s.args.Addr != wantAddr[i] || int(s.args.Family) != wantFamily[i]:
			t.Errorf("connect %d: address %v family %d, want %v family %d", i, s.args.Addr,
				s.args.Family, wantAddr[i], wantFamily[i])
		case s.domain != wantFamily[i]:
			t.Errorf("connect %d: the duplicated socket's domain is %d, want %d", i,
				s.domain, wantFamily[i])
		case !s.valid || s.thread.Tgid != uint32(pid) || s.thread.Comm == "":
			t.Errorf("connect %d: valid %v, thread %+v, want valid and process %d", i,
				s.valid, s.thread, pid)
		}
	}
}
