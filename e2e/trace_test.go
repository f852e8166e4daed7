package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"

	"github.com/childflow/childflow/cgroupnet"
	"github.com/childflow/childflow/internal/testenv"
)

// expectation is what a shared scenario may observe differently on each
// backend. It is the one place where the backends' legitimate differences
// are written down; every other assertion is the same for all backends.
type expectation struct {
	// hostArgs let the command reach servers on the host's loopback. The
	// eBPF backend leaves the command in the host's network namespace; the
	// rootless one needs --host-loopback.
	hostArgs []string
	// host4 and host6 are the addresses by which the command reaches the
	// host's 127.0.0.1 and ::1: themselves, or the rootless gateway. The
	// flow log names the host's side either way.
	host4, host6 netip.Addr
	// linkType of the capture: IP packets from the cgroup hooks, or the
	// Ethernet frames at the rootless tap.
	linkType layers.LinkType
	// packetComments: every captured packet carries "pid=N comm=C". The
	// eBPF programs know the process of each packet; the tap does not.
	packetComments bool
	// deniedConnect is the errno of a denied TCP connect: EPERM from the
	// cgroup hook, or ECONNREFUSED from the netstack's reset.
	deniedConnect syscall.Errno
	// datagramsRefused: a denied UDP datagram or echo request fails its
	// send with EPERM (eBPF; IPv6 ping sockets excepted, see checkDenied).
	// The rootless netstack drops it, so the send succeeds.
	datagramsRefused bool
	// rawRefused: under --offline and --default-policy deny, raw sockets
	// are refused when created (eBPF). Rootless cannot see socket(): it
	// checks the echo requests such sockets send like any other.
	rawRefused bool
	// exactPid: every violation carries the pid and comm of its process,
	// as the command sees it. Rootless finds them best effort (the socket
	// must still exist when the first packet arrives): always for TCP,
	// mostly for UDP, never for ICMP; and its pids are the host's, while the
	// command sees those of its PID namespace. Violations are then matched
	// by destination.
	exactPid bool
	// perDatagram: an audited attempt counts one violation per datagram
	// (eBPF); rootless checks a UDP association once.
	perDatagram bool
	// compactsRepeats: repeated identical denials are summed into a few
	// records (eBPF, in the kernel).
	compactsRepeats bool
	// ownNamespaces: the command runs in user, network, mount and PID
	// namespaces of its own, so its 0.0.0.0 and 127.0.0.1 are not the
	// host's (rootless). The eBPF backend confines only a root command
	// under a policy.
	ownNamespaces bool
	// captureSync: packets are captured on the packet path and cannot be
	// lost (rootless); eBPF captures through a ring buffer that can
	// overflow. lossTransfer is a transfer that overfills a 1 MiB ring.
	captureSync  bool
	lossTransfer int
	// sweptByNextRun: what a killed (SIGKILL) childflow leaves in its run
	// cgroup is killed by the next run (eBPF). Rootless processes die with
	// their PID namespace at once.
	sweptByNextRun bool
	// rawIPForwarded: raw IP packets of protocols other than TCP, UDP and
	// ICMP reach their destination (eBPF, which polices sockets). The
	// rootless netstack cannot send them from the host: it drops them and
	// counts them in a loss event of source "unsupported".
	rawIPForwarded bool
}

var (
	ebpfExpect = expectation{
		host4: netip.MustParseAddr("127.0.0.1"), host6: netip.IPv6Loopback(),
		linkType: layers.LinkTypeRaw, packetComments: true, deniedConnect: syscall.EPERM,
		datagramsRefused: true, rawRefused: true, exactPid: true, perDatagram: true,
		compactsRepeats: true, lossTransfer: 300 << 20, sweptByNextRun: true,
		rawIPForwarded: true,
	}
	rootlessExpect = expectation{
		hostArgs: []string{"--host-loopback"},
		host4:    netip.MustParseAddr("10.0.2.2"), host6: netip.MustParseAddr("fd00:cf::2"),
		linkType: layers.LinkTypeEthernet, deniedConnect: syscall.ECONNREFUSED,
		ownNamespaces: true, captureSync: true, lossTransfer: 20 << 20,
	}
)

// deniedOutcome is how a denied attempt of kind (policyKinds4, to an IPv6
// destination when v6) ends: the errno and the step that fails, or errno 0
// and "done" when the send succeeds and the packet is dropped.
func (e expectation) deniedOutcome(kind string, v6 bool) (syscall.Errno, string) {
	switch {
	case protoOfKind(kind) == "tcp":
		return e.deniedConnect, deniedStage(kind)
	case !e.datagramsRefused:
		return 0, "done"
	case kind == "ping" && v6:
		// The kernel drops the echo request but does not tell the sender:
		// ping_v6_sendmsg ignores what icmpv6_push_pending_frames returns.
		return 0, "done"
	}

	return syscall.EPERM, deniedStage(kind)
}

// expect returns the expectation of backend case b.
func expect(b backendCase) expectation {
	if b.backend == "ebpf" {
		return ebpfExpect
	}

	return rootlessExpect
}

// hostAddr is the address by which the command reaches a on the host
// (loopback addresses through the rootless gateway).
func (e expectation) hostAddr(a netip.Addr) netip.Addr {
	switch a.Unmap() {
	case netip.MustParseAddr("127.0.0.1"):
		return e.host4
	case netip.IPv6Loopback():
		return e.host6
	}

	return a
}

// url is the URL by which the command reaches srv.
func (e expectation) url(srv *httpServer) string {
	host := e.host4
	if strings.Contains(srv.url, "[::1]") {
		host = e.host6
	}

	return "http://" + netip.AddrPortFrom(host, uint16(srv.port)).String()
}

// singleConn returns the only connection the server saw.
func singleConn(t *testing.T, s *httpServer) (read, written int64) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.conns) != 1 {
		t.Fatalf("server saw %d connections, want 1", len(s.conns))
	}
	for _, c := range s.conns {
		return c.read.Load(), c.written.Load()
	}

	return 0, 0
}

// TestHTTPClients traces curl and python3 fetching from a local server: the
// flow log names the process and counts exactly the bytes the server saw;
// tshark finds the request and response in the capture (annotated with the
// process where the backend knows it).
func TestHTTPClients(t *testing.T) {
	clients := []struct {
		comm string
		cmd  func(url string) []string
	}{
		{"curl", func(url string) []string { return []string{"curl", "-sS", "-o", "/dev/null", url} }},
		{"python3", func(url string) []string {
			return []string{"python3", "-c", "import urllib.request,sys; urllib.request.urlopen(sys.argv[1]).read()", url}
		}},
	}
	forBackends(t, func(t *testing.T, b backendCase) {
		e := expect(b)
		for _, network := range []string{"tcp4", "tcp6"} {
			for _, c := range clients {
				t.Run(network+"/"+c.comm, func(t *testing.T) {
					testenv.RequireTool(t, c.comm)
					srv := startHTTP(t, network)
					res := run{args: e.hostArgs, command: c.cmd(e.url(srv) + "/bytes/100000"),
						flowLog: true, capture: true}.with(b).do(t)
					if res.code != 0 {
						t.Fatalf("exit %d, stderr:\n%s", res.code, res.stderr)
					}
					checkHTTPFlow(t, res, srv, c.comm, e)
				})
			}
		}
	})
}

func checkHTTPFlow(t *testing.T, res *result, srv *httpServer, comm string, e expectation) {
	t.Helper()
	port := float64(srv.port)
	toSrv := func(m map[string]any) bool { return m["remote_port"] == port }

	attempts := res.events("connect_attempt", toSrv)
	if len(attempts) != 1 {
		t.Fatalf("got %d connect_attempt to the server, want 1; log: %v", len(attempts), res.log)
	}
	pid := num(attempts[0], "pid")
	if str(attempts[0], "comm") != comm || pid == 0 {
		t.Errorf("connect_attempt comm %q pid %d, want %q and a pid", str(attempts[0], "comm"), pid, comm)
	}
	if r := res.events("connect_result", toSrv); len(r) != 1 || r[0]["status"] != "ok" {
		t.Errorf("connect_result = %v, want one with status ok", r)
	}

	ends := res.events("flow_end", toSrv)
	if len(ends) != 1 {
		t.Fatalf("got %d flow_end to the server, want 1", len(ends))
	}
	read, written := singleConn(t, srv)
	if out, in := num(ends[0], "bytes_out"), num(ends[0], "bytes_in"); out != read || in != written {
		t.Errorf("flow_end bytes out/in = %d/%d, server read/wrote %d/%d", out, in, read, written)
	}

	if lt := captureLinkType(t, res.capturePath()); lt != e.linkType {
		t.Errorf("capture link type %v, want %v", lt, e.linkType)
	}
	// tshark decodes the HTTP exchange from the capture.
	fields := tshark(t, res.capturePath(), "-Y", "http", "-d", fmt.Sprintf("tcp.port==%d,http", srv.port),
		"-T", "fields", "-e", "http.request.uri", "-e", "http.response.code", "-e", "frame.comment")
	if !strings.Contains(fields, "/bytes/100000") || !strings.Contains(fields, "200") {
		t.Errorf("tshark did not find the request and the response:\n%s", fields)
	}
	want := fmt.Sprintf("pid=%d comm=%s", pid, comm)
	if e.packetComments && !strings.Contains(fields, want) {
		t.Errorf("tshark output lacks the comment %q:\n%s", want, fields)
	}
}

// captureLinkType reads the link type of a pcapng's first interface.
func captureLinkType(t *testing.T, path string) layers.LinkType {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("open capture: %v", err)
	}
	defer f.Close()

	r, err := pcapgo.NewNgReader(f, pcapgo.DefaultNgReaderOptions)
	if err != nil {
		t.Fatalf("read capture %s: %v", path, err)
	}

	return r.LinkType()
}

// marker returns a sleep duration in seconds unique to this test process
// and call: a "sleep <marker>" process can be found by its command line.
func marker() string {
	return fmt.Sprintf("600.%d%d", os.Getpid(), tokenCounter.Add(1))
}

// findSleep returns the pids of running (not zombie) "sleep <m>" processes.
func findSleep(m string) []int {
	want := []byte("sleep\x00" + m + "\x00")
	dirs, _ := filepath.Glob("/proc/[0-9]*/cmdline")

	var pids []int
	for _, d := range dirs {
		b, err := os.ReadFile(d)
		if err != nil || !bytes.HasSuffix(b, want) {
			continue
		}
		var pid int
		fmt.Sscanf(d, "/proc/%d/cmdline", &pid)
		if alive(pid) {
			pids = append(pids, pid)
		}
	}

	return pids
}

// TestTreeAndDaemon checks that every process of the tree is traced and
// attributed, including a daemon that double-forks and calls setsid, and
// that the daemon is killed when the run ends.
func TestTreeAndDaemon(t *testing.T) {
	testenv.RequireTool(t, "curl")
	forBackends(t, func(t *testing.T, b backendCase) {
		e := expect(b)
		srv := startHTTP(t, "tcp4")
		url := e.url(srv)
		ready := filepath.Join(run{}.with(b).tempDir(t), "daemon.ready")
		m := marker()
		script := fmt.Sprintf(`curl -sS -o /dev/null %[1]s/from-curl &
python3 -c 'import urllib.request; urllib.request.urlopen("%[1]s/from-python").read()'
wait
( setsid sh -c 'touch %[2]s; curl -sS -o /dev/null %[1]s/from-daemon; exec sleep %[3]s' & )
for i in $(seq 100); do [ -e %[2]s ] && break; sleep 0.05; done
sleep 0.5`, url, ready, m)

		res := run{args: e.hostArgs, command: []string{"sh", "-c", script}, flowLog: true}.with(b).do(t)
		if res.code != 0 {
			t.Fatalf("exit %d, stderr:\n%s", res.code, res.stderr)
		}
		byComm := map[string]int{}
		for _, a := range res.events("connect_attempt", nil) {
			if num(a, "remote_port") == int64(srv.port) {
				byComm[str(a, "comm")]++
			}
		}
		if byComm["curl"] != 2 || byComm["python3"] != 1 {
			t.Errorf("connects by process = %v, want curl 2 (one from the daemon), python3 1", byComm)
		}
		for _, p := range []string{"/from-curl", "/from-python", "/from-daemon"} {
			if !srv.sawPath(p) {
				t.Errorf("server did not see %s", p)
			}
		}

		if _, err := os.Stat(ready); err != nil {
			t.Fatalf("daemon did not start: %v", err)
		}
		if pids := findSleep(m); len(pids) != 0 {
			t.Errorf("daemon %v still runs after childflow exited", pids)
		}
	})
}

// alive reports whether pid runs (a zombie waiting for its reaper does not).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))

	return len(f) > 0 && f[0] != "Z" && f[0] != "X"
}

// TestOtherProcessesInvisible runs a curl loop outside childflow during a
// traced run: neither output may show it.
func TestOtherProcessesInvisible(t *testing.T) {
	testenv.RequireTool(t, "curl")
	forBackends(t, func(t *testing.T, b backendCase) {
		e := expect(b)
		traced := startHTTP(t, "tcp4")
		other := startHTTP(t, "tcp4")

		stop := make(chan struct{})
		done := make(chan int)
		go func() {
			n := 0
			for i := 0; i < 200; i++ {
				select {
				case <-stop:
					done <- n
					return
				default:
				}
				if exec.Command("curl", "-sS", "-o", "/dev/null", other.url+"/outside").Run() == nil {
					n++
				}
			}
			done <- n
		}()
		script := fmt.Sprintf("for i in 1 2 3 4 5; do curl -sS -o /dev/null %s/inside; sleep 0.1; done",
			e.url(traced))
		res := run{args: e.hostArgs, command: []string{"sh", "-c", script}, flowLog: true,
			capture: true}.with(b).do(t)
		close(stop)
		outside := <-done
		if res.code != 0 {
			t.Fatalf("exit %d: %s", res.code, res.stderr)
		}
		if outside == 0 {
			t.Fatal("the outside curl loop made no request during the run")
		}

		for _, m := range res.log {
			if num(m, "remote_port") == int64(other.port) {
				t.Errorf("flow log shows outside traffic: %v", m)
			}
		}
		n := tshark(t, res.capturePath(), "-Y", fmt.Sprintf("tcp.port==%d", other.port), "-T", "fields", "-e", "frame.number")
		if n != "" {
			t.Errorf("capture holds %d packets of outside traffic", len(strings.Split(n, "\n")))
		}
		inside := tshark(t, res.capturePath(), "-Y", fmt.Sprintf("tcp.port==%d", traced.port), "-T", "fields", "-e", "frame.number")
		if inside == "" {
			t.Error("capture holds no packet of the traced command")
		}
	})
}

// exitCases are commands and the exit code childflow must end with.
var exitCases = []struct {
	name    string
	command []string
	want    int
}{
	{"ok", []string{"true"}, 0},
	{"three", []string{"sh", "-c", "exit 3"}, 3},
	{"not found", []string{"childflow-no-such-command"}, 127},
	{"sigint", []string{"sh", "-c", "kill -INT $$"}, 130},
	{"sigterm", []string{"sh", "-c", "kill -TERM $$"}, 143},
}

// checkExitCodes runs every exit case as r and checks childflow's code.
func checkExitCodes(t *testing.T, r run) {
	t.Helper()
	for _, tc := range exitCases {
		t.Run(tc.name, func(t *testing.T) {
			r.command = tc.command
			res := r.do(t)
			if res.code != tc.want {
				t.Errorf("exit code %d, want %d; stderr:\n%s", res.code, tc.want, res.stderr)
			}
		})
	}
}

// TestExitCodes checks that childflow exits like the command.
func TestExitCodes(t *testing.T) {
	forBackends(t, func(t *testing.T, b backendCase) {
		checkExitCodes(t, run{}.with(b))
	})
}

// started is a childflow run in the background. Its stderr goes to a file:
// a pipe would keep Wait waiting for daemons that inherited it.
type started struct {
	cmd  *exec.Cmd
	dir  string
	done chan struct{}
	err  error
}

// start starts childflow in the background with a flow log, as do would
// run it; the test's cleanup kills it if it still runs.
func (r run) start(t *testing.T) *started {
	t.Helper()
	s := &started{dir: r.tempDir(t), done: make(chan struct{})}
	args := []string{"trace"}
	if r.backend != "" {
		args = append(args, "--backend", r.backend)
	}
	args = append(args, r.args...)
	args = append(args, "--flow-log", filepath.Join(s.dir, "flows.jsonl"), "--")
	args = append(args, r.command...)

	stderr, err := os.Create(filepath.Join(s.dir, "stderr"))
	if err != nil {
		t.Fatal(err)
	}
	defer stderr.Close()

	s.cmd = r.cmd(context.Background(), t, args)
	s.cmd.Dir, s.cmd.Stderr = s.dir, stderr
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("start childflow: %v", err)
	}
	go func() { s.err = s.cmd.Wait(); close(s.done) }()
	t.Cleanup(func() { _ = s.cmd.Process.Kill(); <-s.done })

	return s
}

// wait waits up to 10 s for childflow to exit and returns its exit code.
func (s *started) wait(t *testing.T) int {
	t.Helper()
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		t.Fatalf("childflow did not exit within 10s; stderr:\n%s", s.stderr())
	}
	if s.cmd.ProcessState == nil {
		t.Fatalf("childflow: %v", s.err)
	}

	return s.cmd.ProcessState.ExitCode()
}

// stderr returns what childflow wrote to stderr so far.
func (s *started) stderr() string {
	b, _ := os.ReadFile(filepath.Join(s.dir, "stderr"))
	return string(b)
}

// log reads the flow log of the run.
func (s *started) log(t *testing.T) *result {
	t.Helper()
	return &result{log: readLog(t, filepath.Join(s.dir, "flows.jsonl")), dir: s.dir}
}

// waitFor polls cond every 20 ms for up to 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for i := 0; i < 500; i++ {
		if cond() {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}

// TestSIGINT sends SIGINT to childflow while the command runs: the command
// ends with it and the flow log is complete.
func TestSIGINT(t *testing.T) {
	testenv.RequireTool(t, "curl")
	forBackends(t, func(t *testing.T, b backendCase) {
		e := expect(b)
		srv := startHTTP(t, "tcp4")
		s := run{args: e.hostArgs, command: []string{"sh", "-c",
			fmt.Sprintf("curl -sS -o /dev/null %s/before; exec sleep 60", e.url(srv))}}.with(b).start(t)
		waitFor(t, "the command's request", func() bool { return srv.sawPath("/before") })
		time.Sleep(100 * time.Millisecond)

		begin := time.Now()
		_ = s.cmd.Process.Signal(syscall.SIGINT)
		if code := s.wait(t); code != 130 {
			t.Errorf("childflow exit code %d, want 130; stderr:\n%s", code, s.stderr())
		}
		if d := time.Since(begin); d > 5*time.Second {
			t.Errorf("childflow took %s to stop after SIGINT", d)
		}
		res := s.log(t)
		if len(res.events("run_end", nil)) != 1 || len(res.events("flow_end", nil)) == 0 {
			t.Errorf("flow log incomplete after SIGINT: %v", res.log)
		}
	})
}

// leftovers lists run cgroups and BPF programs that belong to pid.
func leftovers(t *testing.T, pid int) []string {
	t.Helper()
	var out []string
	mount, err := cgroupnet.Mount()
	if err != nil {
		t.Fatal(err)
	}
	dirs, _ := filepath.Glob(filepath.Join(mount, cgroupnet.Slice, fmt.Sprintf("run-%d-*", pid)))
	out = append(out, dirs...)

	bpftool := testenv.RequireTool(t, "bpftool")
	b, err := exec.Command(bpftool, "-j", "prog", "show").Output()
	if err != nil {
		t.Fatalf("bpftool prog show: %v", err)
	}
	var progs []struct {
		Name string `json:"name"`
		Pids []struct {
			Pid int `json:"pid"`
		} `json:"pids"`
	}
	if err := json.Unmarshal(b, &progs); err != nil {
		t.Fatalf("parse bpftool output: %v", err)
	}
	for _, p := range progs {
		for _, holder := range p.Pids {
			if holder.Pid == pid {
				out = append(out, "BPF program "+p.Name)
			}
		}
	}

	return out
}

// namespacesOf returns the namespaces of pid that are not the test's own,
// as their /proc links ("net:[4026532...]").
func namespacesOf(pid int) []string {
	var out []string
	for _, n := range []string{"user", "net", "mnt", "pid"} {
		own, _ := os.Readlink("/proc/self/ns/" + n)
		l, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", pid, n))
		if err == nil && l != own {
			out = append(out, l)
		}
	}

	return out
}

// nsHolders lists the live processes that started by ticks (clock ticks
// since boot) and are in one of the namespaces or hold a descriptor of one:
// while there are none, the namespaces are gone. Zombies are left out (their
// reaper may be slow: a killed childflow's init is reparented), and so are
// processes started later, which may have a namespace that reuses a freed
// one's number.
func nsHolders(namespaces []string, ticks int64) []string {
	if len(namespaces) == 0 {
		return nil
	}
	want := map[string]bool{}
	for _, n := range namespaces {
		want[n] = true
	}

	var out []string
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range procs {
		var pid int
		fmt.Sscanf(p, "/proc/%d", &pid)
		if !alive(pid) || startTicks(pid) > ticks {
			continue
		}
		ns, _ := filepath.Glob(p + "/ns/*")
		fds, _ := filepath.Glob(p + "/fd/*")
		for _, l := range append(ns, fds...) {
			if target, err := os.Readlink(l); err == nil && want[target] {
				out = append(out, l+" -> "+target)
			}
		}
	}

	return out
}

// startTicks is the start time of pid in clock ticks since boot (field 22
// of /proc/<pid>/stat), or 0 when it cannot be read.
func startTicks(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	if len(f) < 20 {
		return 0
	}
	n, _ := strconv.ParseInt(f[19], 10, 64)

	return n
}

// nowTicks is the time since boot in clock ticks (USER_HZ, 100 on Linux).
func nowTicks(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/uptime")
	if err != nil {
		t.Fatal(err)
	}
	var secs float64
	fmt.Sscanf(string(b), "%f", &secs)

	return int64(secs*100) + 1
}

// TestNothingLeftBehind checks that no run cgroup, BPF program, process,
// namespace or temporary file outlives a run: after a normal run, a failing
// run, SIGINT, and SIGKILL of childflow (followed by another run on the
// backends whose next run sweeps up). The command starts a daemon
// (setsid) in every case.
func TestNothingLeftBehind(t *testing.T) {
	for _, tc := range []struct {
		name string
		sig  syscall.Signal
		exit int
	}{
		{"normal", 0, 0},
		{"failing", 0, 7},
		{"sigint", syscall.SIGINT, 130},
		{"sigkill", syscall.SIGKILL, -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			forBackends(t, func(t *testing.T, b backendCase) {
				checkNothingLeft(t, b, tc.sig, tc.exit)
			})
		})
	}
}

// checkNothingLeft runs one case of TestNothingLeftBehind: it ends the run
// with sig (or lets the command exit with exit when sig is 0).
func checkNothingLeft(t *testing.T, b backendCase, sig syscall.Signal, exit int) {
	tmp := run{}.with(b).tempDir(t)
	gate := filepath.Join(tmp, "gate")
	m := marker()
	tail := "exec sleep 60"
	if sig == 0 {
		tail = fmt.Sprintf("for i in $(seq 200); do [ -e %s ] && exit %d; sleep 0.05; done; exit 99",
			gate, exit)
	}
	s := run{command: []string{"sh", "-c", fmt.Sprintf("(setsid sleep %s &); %s", m, tail)},
		env: []string{"TMPDIR=" + tmp}}.with(b).start(t)

	var daemon []int
	waitFor(t, "the daemon", func() bool { daemon = findSleep(m); return len(daemon) == 1 })
	namespaces := namespacesOf(daemon[0])
	if want := map[bool]int{true: 4}[expect(b).ownNamespaces]; len(namespaces) != want {
		t.Fatalf("the command runs in namespaces %v, want %d of its own", namespaces, want)
	}
	if sig == 0 {
		if err := os.WriteFile(gate, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	} else {
		_ = s.cmd.Process.Signal(sig)
	}
	if code := s.wait(t); code != exit {
		t.Errorf("childflow exit code %d, want %d; stderr:\n%s", code, exit, s.stderr())
	}
	exited := nowTicks(t)

	if sig == syscall.SIGKILL && expect(b).sweptByNextRun {
		if r := (run{command: []string{"true"}}).with(b).do(t); r.code != 0 {
			t.Fatalf("next run failed: %s", r.stderr)
		}
	}
	// The kernel takes a moment to tear a PID namespace down.
	for i := 0; i < 100 && len(findSleep(m))+len(nsHolders(namespaces, exited)) > 0; i++ {
		time.Sleep(20 * time.Millisecond)
	}
	if p := findSleep(m); len(p) > 0 {
		t.Errorf("the daemon still runs: %v", p)
	}
	if h := nsHolders(namespaces, exited); len(h) > 0 {
		t.Errorf("the run's namespaces %v are still held: %v", namespaces, h)
	}
	if l := leftovers(t, s.cmd.Process.Pid); len(l) > 0 {
		t.Errorf("left behind: %v", l)
	}
	checkEmptyDir(t, tmp, gate)
}

// checkEmptyDir fails t when dir holds anything but except.
func checkEmptyDir(t *testing.T, dir, except string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if p := filepath.Join(dir, e.Name()); p != except {
			t.Errorf("temporary file left behind: %s", p)
		}
	}
}

// TestCaptureLossCounted overfills a small packet ring buffer: the summary
// and the flow log report the same, exact loss, and the capture holds the
// rest. A backend that captures on the packet path must lose nothing.
func TestCaptureLossCounted(t *testing.T) {
	testenv.RequireTool(t, "curl")
	forBackends(t, func(t *testing.T, b backendCase) {
		e := expect(b)
		srv := startHTTP(t, "tcp4")
		args := append([]string{"--capture-buffer", "1", "--summary", "--summary-format", "json",
			"--quiet"}, e.hostArgs...)
		res := run{
			args:    args,
			command: []string{"curl", "-sS", "-o", "/dev/null", fmt.Sprintf("%s/bytes/%d", e.url(srv), e.lossTransfer)},
			flowLog: true, capture: true,
		}.with(b).do(t)
		if res.code != 0 {
			t.Fatalf("exit %d: %s", res.code, res.stderr)
		}

		var sum struct {
			Capture struct {
				Packets uint64 `json:"packets"`
				Lost    uint64 `json:"lost"`
			} `json:"capture"`
		}
		if err := json.Unmarshal([]byte(res.stderr[strings.Index(res.stderr, "{"):]), &sum); err != nil {
			t.Fatalf("parse summary: %v\n%s", err, res.stderr)
		}
		var logged int64
		for _, l := range res.events("loss", func(m map[string]any) bool { return m["source"] == "packets" }) {
			logged += num(l, "count")
		}
		if uint64(logged) != sum.Capture.Lost || (sum.Capture.Lost == 0) != e.captureSync {
			t.Errorf("summary lost %d, flow log lost %d: want equal and zero only when the capture is synchronous (%v)",
				sum.Capture.Lost, logged, e.captureSync)
		}
		frames := tshark(t, res.capturePath(), "-T", "fields", "-e", "frame.number")
		if got := uint64(len(strings.Split(frames, "\n"))); got != sum.Capture.Packets {
			t.Errorf("capture holds %d packets, summary says %d", got, sum.Capture.Packets)
		}
	})
}

// TestSudoUser checks that under sudo the command runs as the invoking user,
// and as root with --keep-root. Only the eBPF backend runs commands as
// another user; the rootless one maps its caller to root.
func TestSudoUser(t *testing.T) {
	requireEBPF(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "65534:65534"},
		{[]string{"--keep-root"}, "0:0"},
	} {
		res := run{args: tc.args, env: []string{"SUDO_UID=65534", "SUDO_GID=65534"},
			command: []string{"sh", "-c", "echo $(id -u):$(id -g)"}}.do(t)
		if got := strings.TrimSpace(res.stdout); res.code != 0 || got != tc.want {
			t.Errorf("%v: command ran as %q (exit %d), want %s; stderr:\n%s", tc.args, got, res.code, tc.want, res.stderr)
		}
	}
}
