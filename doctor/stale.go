package doctor

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/childflow/childflow/cgroupnet"
)

// killTimeout bounds how long Clean waits for a killed cgroup to empty.
const killTimeout = 2 * time.Second

// findStale lists <mount>/childflow.slice/run-<pid>-* folders whose owner pid
// no longer exists, and removes them when clean is set.
func findStale(mount string, clean bool) []StaleCgroup {
	slice := filepath.Join(mount, cgroupnet.Slice)
	entries, err := os.ReadDir(slice)
	if err != nil {
		return nil
	}

	var out []StaleCgroup
	for _, e := range entries {
		pid, ok := runOwner(e.Name())
		if !e.IsDir() || !ok || alive(pid) {
			continue
		}
		s := StaleCgroup{Path: filepath.Join(slice, e.Name()), Pid: pid}
		s.Processes = countProcs(s.Path)
		if clean {
			if err := removeCgroup(s.Path, s.Processes > 0); err != nil {
				s.Error = err.Error()
			} else {
				s.Removed = true
			}
		}
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })

	return out
}

// runOwner returns the owner pid of a run cgroup name, run-<pid>-<suffix>.
func runOwner(name string) (int, bool) {
	rest, ok := strings.CutPrefix(name, "run-")
	if !ok {
		return 0, false
	}
	p, suffix, ok := strings.Cut(rest, "-")
	if !ok || suffix == "" {
		return 0, false
	}
	pid, err := strconv.Atoi(p)

	return pid, err == nil && pid > 0
}

// alive reports whether a process with this pid exists. A pid we may not
// signal exists.
func alive(pid int) bool {
	return !errors.Is(unix.Kill(pid, 0), unix.ESRCH)
}

// countProcs counts the processes in a cgroup and its descendants; a folder
// without cgroup.procs (not a cgroup) has none.
func countProcs(path string) int {
	n := 0
	filepath.WalkDir(path, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		data, err := os.ReadFile(filepath.Join(p, "cgroup.procs"))
		if err == nil {
			n += len(strings.Fields(string(data)))
		}
		return nil
	})

	return n
}

// removeCgroup kills what is left in a cgroup when populated, waits for it
// to empty, then removes it and its descendants, deepest first.
func removeCgroup(path string, populated bool) error {
	if populated {
		if err := os.WriteFile(filepath.Join(path, "cgroup.kill"), []byte("1"), 0); err != nil {
			return fmt.Errorf("kill cgroup %s: %w", path, err)
		}
		deadline := time.Now().Add(killTimeout)
		for countProcs(path) > 0 && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
	}

	var dirs []string
	filepath.WalkDir(path, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := os.Remove(dirs[i]); err != nil {
			return fmt.Errorf("remove cgroup %s: %w", dirs[i], err)
		}
	}

	return nil
}

// stalePreflight warns about stale run cgroups that were not removed.
func stalePreflight(stale []StaleCgroup) Preflight {
	left := 0
	for _, s := range stale {
		if !s.Removed {
			left++
		}
	}
	if left == 0 {
		return Preflight{Key: "stale_cgroups", Status: OK}
	}

	return Preflight{Key: "stale_cgroups", Status: Warning, Hint: fmt.Sprintf(
		"%d run cgroups of dead childflow processes remain; remove them with childflow doctor --clean",
		left)}
}
