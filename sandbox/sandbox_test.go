package sandbox

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/childflow/childflow/cgroupnet"
	"github.com/childflow/childflow/internal/testenv"
)

// launchEnv makes the test binary a launcher for TestDeathSignal: it starts a
// sandboxed command in the cgroup the variable names and waits.
const launchEnv = "SANDBOX_TEST_LAUNCH_CGROUP"

func TestMain(m *testing.M) {
	MaybeInit()
	if cg := os.Getenv(launchEnv); cg != "" {
		os.Exit(launch(cg))
	}

	os.Exit(m.Run())
}

// testHostsName is only ever looked up with getent -s files, so no lookup of
// it can leave the machine.
const testHostsName = "childflow-sandbox-test.invalid"

// outcome is what a sandboxed run gave.
type outcome struct {
	code     int  // as a shell reports it: 128+N for signal N
	signaled bool // the outer process itself died of a signal
	stdout   string
	stderr   string
}

// newCgroup makes a run cgroup that the test removes at the end.
func newCgroup(t *testing.T) *cgroupnet.Cgroup {
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

	return cg
}

// sandboxCmd prepares cmd the way trace does: into the run cgroup, killed
// with its parent.
func sandboxCmd(t *testing.T, cg *cgroupnet.Cgroup, cfg Config, path string,
	argv ...string) *exec.Cmd {
	t.Helper()
	cmd, err := Command(cfg, path, argv)
	if err != nil {
		t.Fatalf("Command: %v", err)
	}

	cmd.Env = slices.Concat(os.Environ(), cmd.Env)
	cmd.SysProcAttr.UseCgroupFD = true
	cmd.SysProcAttr.CgroupFD = cg.FD()
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL

	return cmd
}

// run starts cmd and waits for it, killing it after 20 s.
func run(t *testing.T, cmd *exec.Cmd) outcome {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start sandbox: %v", err)
	}
	timer := time.AfterFunc(20*time.Second, func() { _ = cmd.Process.Kill() })
	defer timer.Stop()

	err := cmd.Wait()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("wait for sandbox: %v", err)
	}

	code, signaled := shellCode(cmd.ProcessState)

	return outcome{code: code, signaled: signaled, stdout: stdout.String(), stderr: stderr.String()}
}

func shellCode(ps *os.ProcessState) (int, bool) {
	ws := ps.Sys().(syscall.WaitStatus)
	if ws.Signaled() {
		return 128 + int(ws.Signal()), true
	}

	return ws.ExitStatus(), false
}

func runScript(t *testing.T, cfg Config, script string) outcome {
	t.Helper()

	return run(t, sandboxCmd(t, newCgroup(t), cfg, "/bin/sh", "sh", "-c", script))
}

// keyValues collects the key=value lines of out.
func keyValues(out string) map[string]string {
	m := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			m[k] = v
		}
	}

	return m
}

func writeHosts(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "hosts")
	content := "127.0.0.1 localhost\n192.0.2.77 " + testHostsName + "\n"
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}

	return p
}

func TestNeeded(t *testing.T) {
	tests := []struct {
		cfg  Config
		want bool
	}{
		{Config{}, false},
		{Config{Cred: &syscall.Credential{Uid: 1}}, false},
		{Config{KeepCaps: true}, false},
		{Config{HostsFile: "/tmp/h"}, true},
		{Config{Confine: true}, true},
	}
	for _, tt := range tests {
		if got := Needed(tt.cfg); got != tt.want {
			t.Errorf("Needed(%+v): got %v, want %v", tt.cfg, got, tt.want)
		}
	}
}

func TestCommandRejectsEmpty(t *testing.T) {
	if _, err := Command(Config{}, "", []string{"x"}); err == nil {
		t.Error("Command with empty path: got nil error")
	}
	if _, err := Command(Config{}, "/bin/true", nil); err == nil {
		t.Error("Command with empty argv: got nil error")
	}
}

func TestHostsFile(t *testing.T) {
	hosts := writeHosts(t)
	before, err := os.ReadFile("/etc/hosts")
	if err != nil {
		t.Fatal(err)
	}
	script := `getent -s files hosts ` + testHostsName + ` | tr -s ' ' | sed 's/^/hosts=/'
if (: >> /etc/hosts) 2>/dev/null; then echo write=ok; else echo write=denied; fi
echo "var=${CHILDFLOW_SANDBOX-unset}"
echo "pid=$$"`

	for _, confine := range []bool{false, true} {
		t.Run(fmt.Sprintf("confine=%v", confine), func(t *testing.T) {
			cmd := sandboxCmd(t, newCgroup(t), Config{HostsFile: hosts, Confine: confine},
				"/bin/sh", "sh", "-c", script)
			res := run(t, cmd)
			if res.code != 0 {
				t.Fatalf("got exit code %d, want 0; stderr: %s", res.code, res.stderr)
			}

			kv := keyValues(res.stdout)
			want := map[string]string{"hosts": "192.0.2.77 " + testHostsName, "write": "denied",
				"var": "unset"}
			for k, v := range want {
				if kv[k] != v {
					t.Errorf("%s: got %q, want %q", k, kv[k], v)
				}
			}

			// Without confinement the init becomes the command.
			if !confine && kv["pid"] != strconv.Itoa(cmd.Process.Pid) {
				t.Errorf("pid: got %s, want the started process %d", kv["pid"], cmd.Process.Pid)
			}

			after, err := os.ReadFile("/etc/hosts")
			if err != nil {
				t.Fatal(err)
			}
			if string(after) != string(before) {
				t.Errorf("the host's /etc/hosts changed:\n%s\nwas:\n%s", after, before)
			}
		})
	}
}

// confineScript probes what a root command can do; the key=value lines it
// prints are checked by TestConfine. PARENT is the host's path of the parent
// cgroup and HANDLE its file handle. umount comes last: it may succeed.
const confineScript = `ps -e -o pid=,comm= > "$OUT/ps"
echo "cgroup=$(grep '^0::' /proc/self/cgroup)"
grep -E '^Cap(Bnd|Eff)' /proc/self/status | tr -d '\t' | sed 's/:/=/'
CG=$MOUNT$(sed -n 's/^0:://p' /proc/self/cgroup)
mkdir "$CG/sub" 2>/dev/null; echo "mkdir=$?"; rmdir "$CG/sub" 2>/dev/null
echo 0 2>/dev/null > "$CG/cgroup.procs"; echo "move-self=$?"
"$PY" -c 'import socket; socket.socket(socket.AF_PACKET, socket.SOCK_RAW)' 2>/dev/null
echo "packet=$?"
bpftool prog show >/dev/null 2>&1; echo "bpf=$?"
echo 0 2>/dev/null > "$PARENT/cgroup.procs"; echo "move-parent=$?"
"$PY" -c "$OPEN_BY_HANDLE"
umount /proc 2>/dev/null; echo "umount=$?"`

// openByHandle tries to open the parent cgroup by its file handle, the way
// around a mount that does not show it; it prints handle=opened or the errno.
const openByHandle = `import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
mfd = os.open(os.environ["MOUNT"], os.O_RDONLY | os.O_DIRECTORY)
fh = ctypes.create_string_buffer(bytes.fromhex(os.environ["HANDLE"]))
fd = libc.open_by_handle_at(mfd, fh, os.O_RDONLY | os.O_DIRECTORY)
print("handle=opened" if fd >= 0 else "handle=errno%d" % ctypes.get_errno())`

func TestConfine(t *testing.T) {
	py := testenv.RequireTool(t, "python3")
	testenv.RequireTool(t, "bpftool")
	testenv.RequireTool(t, "ps")
	full := capBits(t, "CapBnd")
	var dropped uint64
	for _, c := range droppedCaps {
		dropped |= 1 << c
	}

	// "!0" means any failure.
	tests := []struct {
		name    string
		cfg     Config
		want    map[string]string
		wantBnd uint64
		procs   int // processes the tree sees (0: more than 3)
	}{
		{"confine", Config{Confine: true}, map[string]string{"cgroup": "0::/", "mkdir": "!0",
			"move-self": "!0", "packet": "!0", "bpf": "!0", "move-parent": "!0",
			"handle": "errno1", "umount": "!0"},
			full &^ dropped, 3},
		{"keep caps", Config{Confine: true, KeepCaps: true}, map[string]string{"cgroup": "0::/",
			"mkdir": "!0", "move-self": "!0", "packet": "0", "bpf": "0", "move-parent": "!0",
			"handle": "opened", "umount": "0"}, full, 3},
		{"no confine", Config{HostsFile: writeHosts(t)}, map[string]string{"mkdir": "0",
			"move-self": "0", "packet": "0", "bpf": "0", "handle": "opened"}, full, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			kv, procs := probeConfine(t, tt.cfg, py)
			for k, v := range tt.want {
				got := kv[k]
				if v == "!0" && (got == "0" || got == "") || v != "!0" && got != v {
					t.Errorf("%s: got %q, want %s", k, got, v)
				}
			}
			if !tt.cfg.Confine && strings.HasSuffix(kv["cgroup"], "::/") {
				t.Errorf("cgroup: got %q, want the host's path of the run cgroup", kv["cgroup"])
			}

			if bnd := parseHex(t, kv["CapBnd"]); bnd != tt.wantBnd {
				t.Errorf("CapBnd: got %#x, want %#x", bnd, tt.wantBnd)
			}
			if eff := parseHex(t, kv["CapEff"]); eff != tt.wantBnd {
				t.Errorf("CapEff: got %#x, want %#x", eff, tt.wantBnd)
			}

			if tt.procs != 0 && len(procs) != tt.procs || tt.procs == 0 && len(procs) <= 3 {
				t.Errorf("ps inside: got %d processes %q, want %d", len(procs), procs, tt.procs)
			}
			if tt.procs != 0 && !strings.HasPrefix(procs[0], "1 ") {
				t.Errorf("ps inside: got first process %q, want pid 1 (the init)", procs[0])
			}
		})
	}
}

// probeConfine runs confineScript and returns its key=value lines and the
// processes its ps saw.
func probeConfine(t *testing.T, cfg Config, py string) (map[string]string, []string) {
	t.Helper()
	cg := newCgroup(t)
	parent := filepath.Dir(cg.Path)
	fh, _, err := unix.NameToHandleAt(unix.AT_FDCWD, parent, 0)
	if err != nil {
		t.Fatalf("get file handle of %s: %v", parent, err)
	}
	handle := binary.LittleEndian.AppendUint32(nil, uint32(fh.Size()))
	handle = binary.LittleEndian.AppendUint32(handle, uint32(fh.Type()))
	handle = append(handle, fh.Bytes()...)

	mount, _ := cgroupnet.Mount()
	out := t.TempDir()
	cmd := sandboxCmd(t, cg, cfg, "/bin/sh", "sh", "-c", confineScript)
	cmd.Env = append(cmd.Env, "OUT="+out, "MOUNT="+mount, "PY="+py, "PARENT="+parent,
		"HANDLE="+hex.EncodeToString(handle), "OPEN_BY_HANDLE="+openByHandle)
	res := run(t, cmd)
	if res.code != 0 {
		t.Fatalf("got exit code %d, want 0; stderr: %s", res.code, res.stderr)
	}

	ps, err := os.ReadFile(filepath.Join(out, "ps"))
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, l := range strings.Split(strings.TrimSpace(string(ps)), "\n") {
		lines = append(lines, strings.TrimSpace(l))
	}

	return keyValues(res.stdout), lines
}

// capBits returns a capability set of this process from /proc/self/status.
func capBits(t *testing.T, name string) uint64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, name+":"); ok {
			return parseHex(t, strings.TrimSpace(v))
		}
	}
	t.Fatalf("no %s in /proc/self/status", name)

	return 0
}

func parseHex(t *testing.T, s string) uint64 {
	t.Helper()
	v, err := strconv.ParseUint(s, 16, 64)
	if err != nil {
		t.Fatalf("parse capability set %q: %v", s, err)
	}

	return v
}

func TestExitCodes(t *testing.T) {
	noexec := filepath.Join(t.TempDir(), "noexec")
	if err := os.WriteFile(noexec, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name string
		path string
		argv []string
		want int
	}{
		{"zero", "/bin/sh", []string{"sh", "-c", "exit 0"}, 0},
		{"three", "/bin/sh", []string{"sh", "-c", "exit 3"}, 3},
		{"not found", "/nonexistent/cmd", []string{"cmd"}, 127},
		{"not executable", noexec, []string{"noexec"}, 126},
		{"SIGINT", "/bin/sh", []string{"sh", "-c", "kill -INT $$"}, 130},
		{"SIGTERM", "/bin/sh", []string{"sh", "-c", "kill -TERM $$"}, 143},
	}
	for _, confine := range []bool{false, true} {
		for _, tt := range tests {
			t.Run(fmt.Sprintf("%s/confine=%v", tt.name, confine), func(t *testing.T) {
				cmd := sandboxCmd(t, newCgroup(t), Config{Confine: confine}, tt.path, tt.argv...)
				res := run(t, cmd)
				if res.code != tt.want {
					t.Errorf("got exit code %d, want %d; stderr: %s", res.code, tt.want, res.stderr)
				}

				// Without a PID namespace the outer process is the
				// command and dies of the signal itself.
				if wantSig := !confine && tt.want > 128; res.signaled != wantSig {
					t.Errorf("signaled: got %v, want %v", res.signaled, wantSig)
				}

				if tt.want >= 126 && tt.want <= 127 &&
					!strings.HasPrefix(res.stderr, "childflow: sandbox: run "+tt.path) {
					t.Errorf("stderr: got %q, want a childflow: sandbox: line", res.stderr)
				}
			})
		}
	}
}

func TestReplacedEnvFails(t *testing.T) {
	cmd := sandboxCmd(t, newCgroup(t), Config{Confine: true}, "/bin/true", "true")
	cmd.Env = os.Environ()
	res := run(t, cmd)
	if res.code != 126 || !strings.Contains(res.stderr, "configuration missing") {
		t.Errorf("got exit code %d, stderr %q; want 126 and configuration missing",
			res.code, res.stderr)
	}
}

func TestDaemonDiesWithRun(t *testing.T) {
	// The daemon is re-parented to the init; the orphaned true must be
	// reaped by it, leaving no zombie.
	script := `setsid sh -c 'sleep 300 &' </dev/null >/dev/null 2>&1
sh -c 'true &'
sleep 0.3
echo "zombies=$(ps -e -o stat= | grep -c Z)"`

	for _, confine := range []bool{false, true} {
		t.Run(fmt.Sprintf("confine=%v", confine), func(t *testing.T) {
			cg := newCgroup(t)
			res := run(t, sandboxCmd(t, cg, Config{Confine: confine}, "/bin/sh", "sh", "-c", script))
			if res.code != 0 {
				t.Fatalf("got exit code %d, want 0; stderr: %s", res.code, res.stderr)
			}

			if z := keyValues(res.stdout)["zombies"]; confine && z != "0" {
				t.Errorf("zombies in the namespace: got %s, want 0", z)
			}

			// With a PID namespace the run's end kills the daemon; without
			// one it lives until the cgroup is killed.
			pop, err := cg.Populated()
			if err != nil {
				t.Fatal(err)
			}
			if pop == confine {
				procs, _ := cg.Procs()
				t.Errorf("cgroup populated after the command: got %v (%v), want %v",
					pop, procs, !confine)
			}
		})
	}
}

func TestSignalForwarded(t *testing.T) {
	tests := []struct {
		name   string
		sig    syscall.Signal
		script string
		want   int
	}{
		{"TERM trapped", syscall.SIGTERM, `trap 'echo got; exit 7' TERM`, 7},
		{"INT trapped", syscall.SIGINT, `trap 'echo got; exit 9' INT`, 9},
		{"USR1 trapped", syscall.SIGUSR1, `trap 'echo got; exit 11' USR1`, 11},
		{"TERM default", syscall.SIGTERM, `:`, 143},
		{"HUP default", syscall.SIGHUP, `:`, 129},
	}
	for _, confine := range []bool{false, true} {
		for _, tt := range tests {
			t.Run(fmt.Sprintf("%s/confine=%v", tt.name, confine), func(t *testing.T) {
				script := tt.script + "\necho ready\nwhile :; do sleep 0.05; done"
				cmd := sandboxCmd(t, newCgroup(t), Config{Confine: confine}, "/bin/sh", "sh", "-c",
					script)
				code, out := signalAfterReady(t, cmd, tt.sig)
				if code != tt.want {
					t.Errorf("got exit code %d, want %d (output %q)", code, tt.want, out)
				}
			})
		}
	}
}

// signalAfterReady starts cmd, sends sig once it printed "ready", and returns
// its shell exit code and the rest of its output.
func signalAfterReady(t *testing.T, cmd *exec.Cmd, sig syscall.Signal) (int, string) {
	t.Helper()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start sandbox: %v", err)
	}
	timer := time.AfterFunc(20*time.Second, func() { _ = cmd.Process.Kill() })
	defer timer.Stop()

	r := bufio.NewReader(stdout)
	if line, err := r.ReadString('\n'); line != "ready\n" {
		t.Fatalf("read ready: got %q, %v", line, err)
	}
	if err := cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}

	rest, _ := r.ReadString(0)
	_ = cmd.Wait()
	code, _ := shellCode(cmd.ProcessState)

	return code, rest
}

func TestCredential(t *testing.T) {
	hosts := writeHosts(t)
	cred := &syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{65534, 100}}
	script := `echo "uid=$(id -u)"; echo "gid=$(id -g)"; echo "groups=$(id -G)"
grep -E '^Cap(Bnd|Eff)' /proc/self/status | tr -d '\t' | sed 's/:/=/'
getent -s files hosts ` + testHostsName + ` | tr -s ' ' | sed 's/^/hosts=/'`
	full := capBits(t, "CapBnd")
	var dropped uint64
	for _, c := range droppedCaps {
		dropped |= 1 << c
	}

	for _, confine := range []bool{false, true} {
		t.Run(fmt.Sprintf("confine=%v", confine), func(t *testing.T) {
			res := runScript(t, Config{HostsFile: hosts, Confine: confine, Cred: cred}, script)
			if res.code != 0 {
				t.Fatalf("got exit code %d, want 0; stderr: %s", res.code, res.stderr)
			}

			bnd := full
			if confine {
				bnd = full &^ dropped
			}
			want := map[string]string{"uid": "65534", "gid": "65534", "groups": "65534 100",
				"CapEff": "0000000000000000", "CapBnd": fmt.Sprintf("%016x", bnd),
				"hosts": "192.0.2.77 " + testHostsName}
			kv := keyValues(res.stdout)
			for k, v := range want {
				if kv[k] != v {
					t.Errorf("%s: got %q, want %q", k, kv[k], v)
				}
			}
		})
	}
}

func TestDeathSignal(t *testing.T) {
	// The credential change clears the parent-death signal; the init must
	// set it again, or the command outlives a killed childflow.
	for _, confine := range []bool{false, true} {
		t.Run(fmt.Sprintf("confine=%v", confine), func(t *testing.T) {
			cg := newCgroup(t)
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), launchEnv+"="+cg.Path,
				"SANDBOX_TEST_CONFINE="+strconv.FormatBool(confine))
			stdout, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })

			line, err := bufio.NewReader(stdout).ReadString('\n')
			if line != "ready\n" {
				t.Fatalf("read ready: got %q, %v", line, err)
			}
			if err := cmd.Process.Kill(); err != nil {
				t.Fatal(err)
			}
			_ = cmd.Wait()

			if err := waitEmpty(cg, 3*time.Second); err != nil {
				t.Error(err)
			}
		})
	}
}

// waitEmpty polls until cg has no process, up to timeout.
func waitEmpty(cg *cgroupnet.Cgroup, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		pop, err := cg.Populated()
		if err != nil || !pop {
			return err
		}
		if time.Now().After(deadline) {
			procs, _ := cg.Procs()
			return fmt.Errorf("cgroup still populated %s after its parent died: %v", timeout, procs)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// launch is the launcher of TestDeathSignal: it starts a sandboxed command
// as nobody in the cgroup at path, and waits for it.
func launch(path string) int {
	dir, err := os.Open(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}

	cfg := Config{Confine: os.Getenv("SANDBOX_TEST_CONFINE") == "true",
		Cred: &syscall.Credential{Uid: 65534, Gid: 65534}}
	cmd, err := Command(cfg, "/bin/sh", []string{"sh", "-c", "echo ready; exec sleep 300"})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	cmd.Env = slices.Concat(os.Environ(), cmd.Env)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.SysProcAttr.UseCgroupFD = true
	cmd.SysProcAttr.CgroupFD = int(dir.Fd())
	cmd.SysProcAttr.Pdeathsig = unix.SIGKILL
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}

	return 0
}

func TestParseMountPoints(t *testing.T) {
	info := `22 27 0:20 / /sys rw,nosuid shared:7 - sysfs sysfs rw
30 22 0:26 / /sys/fs/cgroup/unified rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate
31 22 0:27 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
40 22 0:26 / /mnt/with\040space rw - cgroup2 none rw
41 22 0:26 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
bad line - cgroup2
`
	tests := []struct {
		fstype string
		want   []string
	}{
		{"cgroup2", []string{"/sys/fs/cgroup/unified", "/mnt/with space"}},
		{"sysfs", []string{"/sys"}},
		{"tmpfs", nil},
	}
	for _, tt := range tests {
		got, err := parseMountPoints(strings.NewReader(info), tt.fstype)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, tt.want) {
			t.Errorf("%s: got %q, want %q", tt.fstype, got, tt.want)
		}
	}
}
