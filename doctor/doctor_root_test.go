package doctor

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/childflow/childflow/cgroupnet"
	"github.com/childflow/childflow/internal/testenv"
)

// openFDs counts this process's open file descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}

	return len(ents)
}

func TestRunOnThisHost(t *testing.T) {
	testenv.RequireRoot(t)
	mount, err := cgroupnet.Mount()
	if err != nil {
		testenv.Skip(t, "no cgroup2 mount: "+err.Error())
	}
	fds := openFDs(t)

	start := time.Now()
	r := Run(Options{})
	t.Logf("doctor took %v", time.Since(start))

	e := r.Backend(EBPF)
	if e == nil {
		t.Fatal("no ebpf result")
	}
	for _, p := range e.Preflight {
		if p.Status == Fatal {
			t.Errorf("ebpf preflight %s: fatal (%s)", p.Key, p.Hint)
		}
	}
	for _, c := range e.Capabilities {
		if c.Status != Available && c.Key != "btf" {
			t.Errorf("ebpf capability %s: got %s (%s), want available", c.Key, c.Status, c.Detail)
		}
	}
	if r.Auto != EBPF || e.Verdict == Blocked {
		t.Errorf("got auto %s, ebpf %q, want ebpf not blocked", r.Auto, e.Verdict)
	}
	probe := filepath.Join(mount, cgroupnet.Slice, fmt.Sprintf("run-%d-doctor", os.Getpid()))
	if _, err := os.Stat(probe); !os.IsNotExist(err) {
		t.Errorf("probe cgroup %s: got %v, want removed", probe, err)
	}
	if got := openFDs(t); got > fds {
		t.Errorf("open fds: got %d after Run, want at most %d", got, fds)
	}

	var a, b bytes.Buffer
	if err := r.Write(&a, JSON); err != nil {
		t.Fatal(err)
	}
	if err := Run(Options{}).Write(&b, JSON); err != nil {
		t.Fatal(err)
	}
	if a.String() != b.String() {
		t.Errorf("JSON differs between runs:\n%s\n---\n%s", &a, &b)
	}
}

// TestCleanKillsStaleRunCgroup leaves a real run cgroup with a process in it,
// owned by a dead pid, and checks that cleaning kills the process and removes
// the cgroup. It works under a private cgroup standing in for the mount, so
// that runs and sweeps of other tests neither see nor touch it.
func TestCleanKillsStaleRunCgroup(t *testing.T) {
	testenv.RequireRoot(t)
	mount, err := cgroupnet.Mount()
	if err != nil {
		testenv.Skip(t, "no cgroup2 mount: "+err.Error())
	}
	root := filepath.Join(mount, fmt.Sprintf("childflow-doctor-test-%d", os.Getpid()))
	path := filepath.Join(root, cgroupnet.Slice, fmt.Sprintf("run-%d-doctortest", deadPid(t)))
	if err := os.MkdirAll(path, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeCgroup(root, true) })

	cg, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer cg.Close()
	sleeper := exec.Command("sleep", "30")
	sleeper.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd())}
	if err := sleeper.Start(); err != nil {
		t.Fatalf("start sleep in %s: %v", path, err)
	}
	waited := make(chan error, 1)
	go func() { waited <- sleeper.Wait() }()

	if got := findStale(root, false); len(got) != 1 || got[0].Processes != 1 || got[0].Removed {
		t.Fatalf("got %+v, want %s with 1 process, left in place", got, path)
	}
	got := findStale(root, true)
	if len(got) != 1 || got[0].Path != path || !got[0].Removed {
		t.Fatalf("got %+v, want %s removed", got, path)
	}
	select {
	case <-waited:
	case <-time.After(5 * time.Second):
		sleeper.Process.Kill()
		t.Fatal("the process in the stale cgroup is still running")
	}
}
