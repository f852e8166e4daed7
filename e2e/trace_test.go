package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/childflow/childflow/cgroupnet"
	"github.com/childflow/childflow/internal/testenv"
)

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
// tshark finds the request and response annotated with the process.
func TestHTTPClients(t *testing.T) {
	requireEBPF(t)
	clients := []struct {
		comm string
		cmd  func(url string) []string
	}{
		{"curl", func(url string) []string { return []string{"curl", "-sS", "-o", "/dev/null", url} }},
		{"python3", func(url string) []string {
			return []string{"python3", "-c", "import urllib.request,sys; urllib.request.urlopen(sys.argv[1]).read()", url}
		}},
	}
	for _, network := range []string{"tcp4", "tcp6"} {
		for _, c := range clients {
			t.Run(network+"/"+c.comm, func(t *testing.T) {
				testenv.RequireTool(t, c.comm)
				srv := startHTTP(t, network)
				res := run{command: c.cmd(srv.url + "/bytes/100000"), flowLog: true, capture: true}.do(t)
				if res.code != 0 {
					t.Fatalf("exit %d, stderr:\n%s", res.code, res.stderr)
				}
				checkHTTPFlow(t, res, srv, c.comm)
			})
		}
	}
}

func checkHTTPFlow(t *testing.T, res *result, srv *httpServer, comm string) {
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

	// tshark decodes the HTTP exchange from the capture, with the process
	// behind each packet in the packet comment.
	fields := tshark(t, res.capturePath(), "-Y", "http", "-d", fmt.Sprintf("tcp.port==%d,http", srv.port),
		"-T", "fields", "-e", "http.request.uri", "-e", "http.response.code", "-e", "frame.comment")
	want := fmt.Sprintf("pid=%d comm=%s", pid, comm)
	if !strings.Contains(fields, "/bytes/100000") || !strings.Contains(fields, "200") {
		t.Errorf("tshark did not find the request and the response:\n%s", fields)
	}
	if !strings.Contains(fields, want) {
		t.Errorf("tshark output lacks the comment %q:\n%s", want, fields)
	}
}

// TestTreeAndDaemon checks that every process of the tree is traced and
// attributed, including a daemon that double-forks and calls setsid, and
// that the daemon is killed when the run ends.
func TestTreeAndDaemon(t *testing.T) {
	requireEBPF(t)
	testenv.RequireTool(t, "curl")
	srv := startHTTP(t, "tcp4")
	pidFile := filepath.Join(t.TempDir(), "daemon.pid")
	script := fmt.Sprintf(`curl -sS -o /dev/null %[1]s/from-curl &
python3 -c 'import urllib.request; urllib.request.urlopen("%[1]s/from-python").read()'
wait
( setsid sh -c 'echo $$ > %[2]s; curl -sS -o /dev/null %[1]s/from-daemon; exec sleep 60' & )
for i in $(seq 100); do [ -s %[2]s ] && break; sleep 0.05; done
sleep 0.5`, srv.url, pidFile)

	res := run{command: []string{"sh", "-c", script}, flowLog: true}.do(t)
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

	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatalf("daemon did not start: %v", err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	if pid <= 0 {
		t.Fatalf("bad daemon pid %q", b)
	}
	if alive(pid) {
		t.Errorf("daemon %d still runs after childflow exited", pid)
	}
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
	requireEBPF(t)
	testenv.RequireTool(t, "curl")
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
	script := fmt.Sprintf("for i in 1 2 3 4 5; do curl -sS -o /dev/null %s/inside; sleep 0.1; done", traced.url)
	res := run{command: []string{"sh", "-c", script}, flowLog: true, capture: true}.do(t)
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
}

// TestExitCodes checks that childflow exits like the command.
func TestExitCodes(t *testing.T) {
	requireEBPF(t)
	for _, tc := range []struct {
		name    string
		command []string
		want    int
	}{
		{"ok", []string{"true"}, 0},
		{"three", []string{"sh", "-c", "exit 3"}, 3},
		{"not found", []string{"childflow-no-such-command"}, 127},
		{"sigint", []string{"sh", "-c", "kill -INT $$"}, 130},
		{"sigterm", []string{"sh", "-c", "kill -TERM $$"}, 143},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := run{command: tc.command}.do(t)
			if res.code != tc.want {
				t.Errorf("exit code %d, want %d; stderr:\n%s", res.code, tc.want, res.stderr)
			}
		})
	}
}

// startChildflow starts childflow in the background and returns it with
// the path of its flow log.
func startChildflow(t *testing.T, command ...string) (*exec.Cmd, string) {
	t.Helper()
	log := filepath.Join(t.TempDir(), "flows.jsonl")
	args := append([]string{"trace", "--flow-log", log, "--"}, command...)
	cmd := exec.Command(binary(t), args...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _, _ = cmd.Process.Wait() })

	return cmd, log
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
	requireEBPF(t)
	srv := startHTTP(t, "tcp4")
	cmd, log := startChildflow(t, "sh", "-c",
		fmt.Sprintf("curl -sS -o /dev/null %s/before; exec sleep 60", srv.url))
	waitFor(t, "the command's request", func() bool { return srv.sawPath("/before") })
	time.Sleep(100 * time.Millisecond)

	start := time.Now()
	_ = cmd.Process.Signal(syscall.SIGINT)
	err := cmd.Wait()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 130 {
		t.Errorf("childflow ended with %v, want exit code 130", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("childflow took %s to stop after SIGINT", d)
	}
	res := &result{log: readLog(t, log)}
	if len(res.events("run_end", nil)) != 1 || len(res.events("flow_end", nil)) == 0 {
		t.Errorf("flow log incomplete after SIGINT: %v", res.log)
	}
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

// TestNothingLeftBehind checks for run cgroups, BPF programs and processes
// after a normal run, a failing run, SIGINT, and SIGKILL of childflow
// followed by another run.
func TestNothingLeftBehind(t *testing.T) {
	requireEBPF(t)
	mount, _ := cgroupnet.Mount()
	for _, tc := range []struct {
		name string
		sig  syscall.Signal
		cmd  []string
	}{
		{"normal", 0, []string{"true"}},
		{"failing", 0, []string{"sh", "-c", "exit 7"}},
		{"sigint", syscall.SIGINT, []string{"sleep", "60"}},
		{"sigkill", syscall.SIGKILL, []string{"sh", "-c", "(setsid sleep 60 &); exec sleep 60"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd, _ := startChildflow(t, tc.cmd...)
			pid := cmd.Process.Pid
			if tc.sig != 0 {
				waitFor(t, "the run cgroup", func() bool {
					m, _ := filepath.Glob(filepath.Join(mount, cgroupnet.Slice, fmt.Sprintf("run-%d-*", pid)))
					return len(m) == 1
				})
				time.Sleep(100 * time.Millisecond)
				_ = cmd.Process.Signal(tc.sig)
			}
			_ = cmd.Wait()

			if tc.sig == syscall.SIGKILL {
				// The killed run's cgroup (with its daemon) is swept by
				// the next run.
				if r := (run{command: []string{"true"}}).do(t); r.code != 0 {
					t.Fatalf("next run failed: %s", r.stderr)
				}
			}
			if l := leftovers(t, pid); len(l) > 0 {
				t.Errorf("left behind: %v", l)
			}
		})
	}
}

// TestCaptureLossCounted overfills a small packet ring buffer: the summary
// and the flow log report the same, exact loss, and the capture holds the
// rest.
func TestCaptureLossCounted(t *testing.T) {
	requireEBPF(t)
	testenv.RequireTool(t, "curl")
	srv := startHTTP(t, "tcp4")
	res := run{
		args:    []string{"--capture-buffer", "1", "--summary", "--summary-format", "json", "--quiet"},
		command: []string{"curl", "-sS", "-o", "/dev/null", srv.url + "/bytes/300000000"},
		flowLog: true, capture: true,
	}.do(t)
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
	if sum.Capture.Lost == 0 || uint64(logged) != sum.Capture.Lost {
		t.Errorf("summary lost %d, flow log lost %d: want equal and not zero", sum.Capture.Lost, logged)
	}
	frames := tshark(t, res.capturePath(), "-T", "fields", "-e", "frame.number")
	if got := uint64(len(strings.Split(frames, "\n"))); got != sum.Capture.Packets {
		t.Errorf("capture holds %d packets, summary says %d", got, sum.Capture.Packets)
	}
}

// TestSudoUser checks that under sudo the command runs as the invoking user,
// and as root with --keep-root.
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
