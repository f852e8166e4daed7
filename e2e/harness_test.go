// Package e2e runs the childflow binary end to end: real BPF programs, real
// commands, real servers on loopback or in test network namespaces. The
// scenarios take the backend as a parameter so that the eBPF and rootless
// backends are held to the same outputs.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/childflow/childflow/internal/testenv"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// binary builds childflow once per test process and returns its path.
func binary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "childflow-e2e-")
		if err != nil {
			buildErr = err
			return
		}
		// Readable by the unprivileged user of rootless tests too.
		if err := os.Chmod(dir, 0o755); err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "childflow")
		out, err := exec.Command("go", "build", "-o", binPath, "../cmd/childflow").CombinedOutput()
		if err != nil {
			buildErr = errors.New(string(out))
		}
	})
	if buildErr != nil {
		t.Fatalf("build childflow: %v", buildErr)
	}

	return binPath
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binPath != "" {
		_ = os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
}

// result is what one childflow run gave.
type result struct {
	code   int
	stdout string
	stderr string
	log    []map[string]any // the flow log, when one was asked for
	dir    string           // the run's temporary directory
}

// run is one childflow invocation.
type run struct {
	args    []string // childflow's arguments before "--"
	command []string
	env     []string
	timeout time.Duration
	flowLog bool
	capture bool
	ns      string // run inside this network namespace (nsenter)
	// backend is passed as --backend when set.
	backend string
	// unprivileged runs childflow as testenv.Nobody (rootless tests).
	unprivileged bool
}

// do runs childflow and waits for it (bounded by r.timeout, default 60 s).
func (r run) do(t testing.TB) *result {
	t.Helper()
	dir := r.tempDir(t)
	args := []string{"trace"}
	if r.backend != "" {
		args = append(args, "--backend", r.backend)
	}
	args = append(args, r.args...)
	if r.flowLog {
		args = append(args, "--flow-log", filepath.Join(dir, "flows.jsonl"))
	}
	if r.capture {
		args = append(args, "--capture", filepath.Join(dir, "capture.pcapng"))
	}
	args = append(args, "--")
	args = append(args, r.command...)

	timeout := r.timeout
	if timeout == 0 {
		timeout = 60 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()

	cmd := r.cmd(ctx, t, args)
	cmd.Dir = dir
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	res := &result{stdout: stdout.String(), stderr: stderr.String(), dir: dir}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		res.code = ee.ExitCode()
	case err != nil:
		t.Fatalf("run childflow %v: %v", args, err)
	}
	if ctx.Err() != nil {
		t.Fatalf("childflow %v did not finish within %s; stderr:\n%s", args, timeout, res.stderr)
	}
	if r.flowLog {
		res.log = readLog(t, filepath.Join(dir, "flows.jsonl"))
	}

	return res
}

func (r run) cmd(ctx context.Context, t testing.TB, args []string) *exec.Cmd {
	bin := binary(t)
	if r.unprivileged {
		testenv.RequireUnprivilegedUserNS(t)
		testenv.OpenTunForAll(t)
	}
	var cmd *exec.Cmd
	switch {
	case r.ns != "" && r.unprivileged:
		// nsenter enters the namespace as root, then drops to nobody.
		id := strconv.Itoa(testenv.Nobody)
		full := append([]string{"--net=/run/netns/" + r.ns, "--setuid", id, "--setgid", id, bin}, args...)
		cmd = exec.CommandContext(ctx, "nsenter", full...)
	case r.ns != "":
		full := append([]string{"--net=/run/netns/" + r.ns, bin}, args...)
		cmd = exec.CommandContext(ctx, "nsenter", full...)
	default:
		cmd = exec.CommandContext(ctx, bin, args...)
		if r.unprivileged {
			cmd.SysProcAttr = &syscall.SysProcAttr{
				Credential: &syscall.Credential{Uid: testenv.Nobody, Gid: testenv.Nobody}}
		}
	}
	cmd.Env = append(os.Environ(), r.env...)

	return cmd
}

// tempDir is the run's working directory: writable by the user that runs
// childflow.
func (r run) tempDir(t testing.TB) string {
	t.Helper()
	if !r.unprivileged {
		return t.TempDir()
	}
	dir, err := os.MkdirTemp("", "childflow-e2e-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}

	return dir
}

// backendCase is one way of running childflow that a shared scenario must
// hold for.
type backendCase struct {
	name         string
	backend      string
	unprivileged bool
}

// backendCases are the eBPF backend (root), the rootless backend as root,
// and the rootless backend as an unprivileged user.
var backendCases = []backendCase{
	{name: "ebpf", backend: "ebpf"},
	{name: "rootless", backend: "rootless"},
	{name: "rootless-unprivileged", backend: "rootless", unprivileged: true},
}

// forBackends runs fn as a subtest for every backend case.
func forBackends(t *testing.T, fn func(t *testing.T, b backendCase)) {
	t.Helper()
	for _, b := range backendCases {
		t.Run(b.name, func(t *testing.T) {
			if b.backend == "ebpf" {
				requireEBPF(t)
			}
			fn(t, b)
		})
	}
}

// with returns r set up for backend case b.
func (r run) with(b backendCase) run {
	r.backend = b.backend
	r.unprivileged = b.unprivileged

	return r
}

// capturePath is where a run with capture wrote its pcapng.
func (res *result) capturePath() string { return filepath.Join(res.dir, "capture.pcapng") }

func readLog(t testing.TB, path string) []map[string]any {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read flow log: %v", err)
	}
	var out []map[string]any
	for i, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("flow log line %d is not JSON: %v: %s", i+1, err, line)
		}
		out = append(out, m)
	}

	return out
}

// events returns the flow-log records of one event type for which match
// (when not nil) holds.
func (res *result) events(name string, match func(map[string]any) bool) []map[string]any {
	var out []map[string]any
	for _, m := range res.log {
		if m["event"] == name && (match == nil || match(m)) {
			out = append(out, m)
		}
	}

	return out
}

// num reads a JSON number field as an int64 (0 when absent).
func num(m map[string]any, key string) int64 {
	f, _ := m[key].(float64)
	return int64(f)
}

// str reads a JSON string field ("" when absent).
func str(m map[string]any, key string) string {
	s, _ := m[key].(string)
	return s
}

// requireEBPF skips (or fails in CI) unless the eBPF backend can run.
func requireEBPF(t testing.TB) {
	t.Helper()
	testenv.RequireRoot(t)
}

// tshark reads a capture with tshark and returns its field output.
func tshark(t testing.TB, path string, args ...string) string {
	t.Helper()
	bin := testenv.RequireTool(t, "tshark")
	full := append([]string{"-r", path}, args...)
	out, err := exec.Command(bin, full...).CombinedOutput()
	if err != nil {
		t.Fatalf("tshark %v: %v\n%s", full, err, out)
	}
	// tshark warns about running as root on stderr; keep stdout lines only.
	var lines []string
	for _, l := range strings.Split(string(out), "\n") {
		if !strings.HasPrefix(l, "Running as user") && l != "" {
			lines = append(lines, l)
		}
	}

	return strings.Join(lines, "\n")
}
