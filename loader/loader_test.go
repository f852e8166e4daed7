package loader

import (
	"net"
	"net/netip"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/childflow/childflow/cgroupnet"
	"github.com/childflow/childflow/internal/testenv"
)

// attached loads the programs with cfg and attaches them to a fresh run
// cgroup; both are released by the test's cleanup.
func attached(t *testing.T, cfg Config) (*Tracer, *cgroupnet.Cgroup) {
	t.Helper()
	testenv.RequireRoot(t)

	mount, err := cgroupnet.Mount()
	if err != nil {
		testenv.Skip(t, "no cgroup2 mount: "+err.Error())
	}
	cg, err := cgroupnet.Create(mount)
	if err != nil {
		t.Fatalf("create cgroup: %v", err)
	}
	t.Cleanup(func() { _ = cg.Close() })

	tr, err := Load(cfg)
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	t.Cleanup(func() { _ = tr.Close() })
	if err := tr.Attach(cg.Path); err != nil {
		t.Fatalf("attach: %v", err)
	}

	return tr, cg
}

func runIn(t *testing.T, cg *cgroupnet.Cgroup, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: cg.FD()}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
}

// TestConnectAndFlowEnd checks that a TCP connect of a command in the cgroup
// is reported with its process, its result and its byte counts.
func TestConnectAndFlowEnd(t *testing.T) {
	tr, cg := attached(t, Config{Capture: true})

	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		buf := make([]byte, 5)
		_, _ = c.Read(buf)
		_, _ = c.Write([]byte("world!"))
		c.Close()
	}()

	stop := make(chan struct{})
	var mu sync.Mutex
	var events []Event
	var packets int
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		_ = tr.ReadEvents(stop, func(e *Event) { mu.Lock(); events = append(events, *e); mu.Unlock() })
	}()
	go func() {
		defer wg.Done()
		_ = tr.ReadPackets(stop, func(p *Packet) { mu.Lock(); packets++; mu.Unlock() })
	}()

	port := ln.Addr().(*net.TCPAddr).Port
	script := "import socket\ns=socket.create_connection(('127.0.0.1', " + itoa(port) + "))\ns.sendall(b'hello')\nprint(s.recv(10))\ns.close()"
	runIn(t, cg, "python3", "-c", script)
	time.Sleep(100 * time.Millisecond)
	close(stop)
	wg.Wait()

	want := netip.MustParseAddrPort("127.0.0.1:" + itoa(port))
	var sawConnect, sawResult, sawEnd bool
	for _, e := range events {
		if e.Dst != want {
			continue
		}
		switch e.Kind {
		case KindConnect:
			sawConnect = e.Comm == "python3" && e.Tgid != 0
		case KindConnectResult:
			sawResult = e.Err == 0
		case KindFlowEnd:
			sawEnd = true
			if e.BytesOut != 5 || e.BytesIn != 6 {
				t.Errorf("flow end bytes out/in = %d/%d, want 5/6", e.BytesOut, e.BytesIn)
			}
		}
	}
	if !sawConnect || !sawResult || !sawEnd {
		t.Errorf("connect %v, result %v, end %v; events: %+v", sawConnect, sawResult, sawEnd, events)
	}
	if packets < 6 {
		t.Errorf("captured %d packets, want at least 6", packets)
	}
}

func itoa(i int) string { return strconv.Itoa(i) }
