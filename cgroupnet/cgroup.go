package cgroupnet

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Slice is the directory under the cgroup2 mount that holds run cgroups.
const Slice = "childflow.slice"

// Cgroup is the run cgroup of one traced command. The caller owns it and must
// call Close, which kills what is left in it and removes it.
type Cgroup struct {
	Path string
	dir  *os.File
}

// Create makes a new run cgroup under <mount>/childflow.slice, named after
// this process so that a later run can tell whether its owner is gone. Stale
// run cgroups of dead owners are swept first.
func Create(mount string) (*Cgroup, error) {
	slice := filepath.Join(mount, Slice)
	if err := os.Mkdir(slice, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, fmt.Errorf("create cgroup %s: %w", slice, err)
	}
	_, _ = Sweep(mount)

	var rnd [4]byte
	_, _ = rand.Read(rnd[:])
	path := filepath.Join(slice, fmt.Sprintf("run-%d-%s", os.Getpid(), hex.EncodeToString(rnd[:])))
	if err := os.Mkdir(path, 0o755); err != nil {
		return nil, fmt.Errorf("create cgroup %s: %w", path, err)
	}

	dir, err := os.Open(path)
	if err != nil {
		_ = os.Remove(path)
		return nil, fmt.Errorf("open cgroup %s: %w", path, err)
	}

	return &Cgroup{Path: path, dir: dir}, nil
}

// FD returns a descriptor of the cgroup directory for
// syscall.SysProcAttr.CgroupFD. It stays valid until Close.
func (c *Cgroup) FD() int { return int(c.dir.Fd()) }

// Populated reports whether any process is left in the cgroup.
func (c *Cgroup) Populated() (bool, error) {
	b, err := os.ReadFile(filepath.Join(c.Path, "cgroup.events"))
	if err != nil {
		return false, fmt.Errorf("read cgroup %s events: %w", c.Path, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "populated "); ok {
			return v == "1", nil
		}
	}

	return false, fmt.Errorf("read cgroup %s events: no populated key", c.Path)
}

// Procs returns the pids in the cgroup.
func (c *Cgroup) Procs() ([]int, error) {
	b, err := os.ReadFile(filepath.Join(c.Path, "cgroup.procs"))
	if err != nil {
		return nil, fmt.Errorf("read cgroup %s procs: %w", c.Path, err)
	}
	var pids []int
	for _, f := range bytes.Fields(b) {
		if pid, err := strconv.Atoi(string(f)); err == nil {
			pids = append(pids, pid)
		}
	}

	return pids, nil
}

// Kill kills every process in the cgroup and waits up to timeout for it to
// be empty. It uses cgroup.kill (Linux 5.14) and falls back to SIGKILL for
// each pid on older kernels.
func (c *Cgroup) Kill(timeout time.Duration) error {
	err := os.WriteFile(filepath.Join(c.Path, "cgroup.kill"), []byte("1"), 0)
	if err != nil {
		pids, _ := c.Procs()
		for _, pid := range pids {
			_ = unix.Kill(pid, unix.SIGKILL)
		}
	}

	deadline := time.Now().Add(timeout)
	for {
		pop, err := c.Populated()
		if err != nil {
			return err
		}
		if !pop {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("kill cgroup %s: still populated after %s", c.Path, timeout)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// Close kills what is left, then removes the cgroup. It is safe to call more
// than once.
func (c *Cgroup) Close() error {
	if c.dir == nil {
		return nil
	}
	kerr := c.Kill(5 * time.Second)
	_ = c.dir.Close()
	c.dir = nil

	if err := removeWithRetry(c.Path); err != nil {
		return errors.Join(kerr, err)
	}

	return kerr
}

// removeWithRetry removes a cgroup directory. Right after the last process
// exits the kernel may still report it busy for a moment.
func removeWithRetry(path string) error {
	var err error
	for range 200 {
		err = unix.Rmdir(path)
		if err == nil || errors.Is(err, unix.ENOENT) {
			return nil
		}
		if !errors.Is(err, unix.EBUSY) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}

	return fmt.Errorf("remove cgroup %s: %w", path, err)
}

// Stale is a run cgroup left by a childflow process that no longer exists.
type Stale struct {
	Path string
	Pid  int
}

// FindStale lists the run cgroups under mount whose owner process is gone.
func FindStale(mount string) ([]Stale, error) {
	slice := filepath.Join(mount, Slice)
	entries, err := os.ReadDir(slice)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", slice, err)
	}

	var out []Stale
	for _, e := range entries {
		pid, ok := ownerPid(e.Name())
		if !e.IsDir() || !ok {
			continue
		}
		if err := unix.Kill(pid, 0); !errors.Is(err, unix.ESRCH) {
			continue // the owner is alive (or not ours to judge)
		}
		out = append(out, Stale{Path: filepath.Join(slice, e.Name()), Pid: pid})
	}

	return out, nil
}

// ownerPid parses the pid out of a run cgroup name, run-<pid>-<random>.
func ownerPid(name string) (int, bool) {
	rest, ok := strings.CutPrefix(name, "run-")
	if !ok {
		return 0, false
	}
	p, _, ok := strings.Cut(rest, "-")
	if !ok {
		return 0, false
	}
	pid, err := strconv.Atoi(p)

	return pid, err == nil && pid > 0
}

// Sweep kills and removes the stale run cgroups under mount, returning the
// paths it removed.
func Sweep(mount string) ([]string, error) {
	stale, err := FindStale(mount)
	if err != nil {
		return nil, err
	}

	var removed []string
	var errs []error
	for _, s := range stale {
		c := &Cgroup{Path: s.Path, dir: nil}
		kerr := c.Kill(2 * time.Second)
		if err := removeWithRetry(s.Path); err != nil {
			errs = append(errs, errors.Join(kerr, err))
			continue
		}
		removed = append(removed, s.Path)
	}

	return removed, errors.Join(errs...)
}
