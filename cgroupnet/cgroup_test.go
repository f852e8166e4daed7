package cgroupnet

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/childflow/childflow/internal/testenv"
)

func TestFindCgroup2(t *testing.T) {
	for _, tc := range []struct {
		name, info, want string
		err              error
	}{
		{"hybrid", "31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n" +
			"40 31 0:37 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd\n" +
			"41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n",
			"/sys/fs/cgroup/unified", nil},
		{"unified with optional fields", "29 23 0:26 / /sys/fs/cgroup rw shared:4 - cgroup2 cgroup2 rw,nsdelegate\n",
			"/sys/fs/cgroup", nil},
		{"escaped path", "41 31 0:38 / /mnt/my\\040cgroups rw - cgroup2 none rw\n", "/mnt/my cgroups", nil},
		{"none", "31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n", "", ErrNoCgroup2},
		{"garbage", "not a mountinfo line\n- cgroup2\n", "", ErrNoCgroup2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := findCgroup2(strings.NewReader(tc.info))
			if got != tc.want || !errors.Is(err, tc.err) {
				t.Errorf("got %q, %v; want %q, %v", got, err, tc.want, tc.err)
			}
		})
	}
}

func TestOwnerPid(t *testing.T) {
	for _, tc := range []struct {
		name string
		pid  int
		ok   bool
	}{
		{"run-123-abcd", 123, true},
		{"run-0-abcd", 0, false},
		{"run-x-abcd", 0, false},
		{"run-123", 0, false},
		{"other-123-abcd", 0, false},
	} {
		pid, ok := ownerPid(tc.name)
		if pid != tc.pid || ok != tc.ok {
			t.Errorf("ownerPid(%q) = %d, %v; want %d, %v", tc.name, pid, ok, tc.pid, tc.ok)
		}
	}
}

// TestCreateKillRemove runs a process tree in a run cgroup and checks that
// Close kills it and removes the cgroup.
func TestCreateKillRemove(t *testing.T) {
	testenv.RequireRoot(t)
	mount, err := Mount()
	if err != nil {
		testenv.Skip(t, "no cgroup2 mount: "+err.Error())
	}
	cg, err := Create(mount)
	if err != nil {
		t.Fatal(err)
	}
	defer cg.Close()

	cmd := exec.Command("sh", "-c", "sleep 60 & sleep 60")
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: cg.FD()}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go cmd.Wait()
	var pids []int
	for i := 0; i < 100 && len(pids) < 3; i++ {
		pids, _ = cg.Procs()
		time.Sleep(10 * time.Millisecond)
	}
	if len(pids) != 3 {
		t.Fatalf("cgroup holds %v, want 3 processes", pids)
	}
	if pop, err := cg.Populated(); !pop || err != nil {
		t.Fatalf("Populated = %v, %v; want true", pop, err)
	}

	if err := cg.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if _, err := os.Stat(cg.Path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("cgroup %s still exists: %v", cg.Path, err)
	}
}

// TestSweepRemovesStale makes a run cgroup named after a dead pid, with a
// process in it, and checks that Sweep kills the process and removes it.
func TestSweepRemovesStale(t *testing.T) {
	testenv.RequireRoot(t)
	mount, err := Mount()
	if err != nil {
		testenv.Skip(t, "no cgroup2 mount: "+err.Error())
	}
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(mount, Slice, "run-"+strconv.Itoa(dead.Process.Pid)+"-test")
	if err := os.MkdirAll(path, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.Remove(path) })
	fd, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer fd.Close()
	cmd := exec.Command("sleep", "60")
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(fd.Fd())}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()

	removed, err := Sweep(mount)
	if err != nil {
		t.Fatalf("sweep: %v", err)
	}
	found := false
	for _, r := range removed {
		found = found || r == path
	}
	if !found {
		t.Errorf("sweep removed %v, want %s among them", removed, path)
	}
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		t.Errorf("process %d in the stale cgroup survived the sweep", cmd.Process.Pid)
	}
}
