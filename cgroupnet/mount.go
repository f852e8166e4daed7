// Package cgroupnet owns the run cgroup: it finds the cgroup2 mount, creates
// a cgroup for one run, starts the command directly inside it (clone3 with
// CLONE_INTO_CGROUP, so no packet of the command is sent from outside), and at
// the end kills what is left, waits for the cgroup to empty and removes it.
//
// Run cgroups live in <mount>/childflow.slice/<run-id>. A run killed with
// SIGKILL leaves its directory behind; Sweep removes the ones whose owner
// process is gone.
package cgroupnet

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// ErrNoCgroup2 means no cgroup2 file system is mounted in this mount namespace.
var ErrNoCgroup2 = errors.New("no cgroup2 mount found")

// Mount returns the mount point of the cgroup v2 file system, read from
// /proc/self/mountinfo. On a hybrid host it is often /sys/fs/cgroup/unified.
func Mount() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("read mountinfo: %w", err)
	}
	defer f.Close()

	return findCgroup2(f)
}

// findCgroup2 returns the first cgroup2 mount point in a mountinfo stream.
// A mountinfo line is: id parent major:minor root mountpoint options
// [optional fields...] - fstype source superoptions.
func findCgroup2(r io.Reader) (string, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		sep := -1
		for i, f := range fields {
			if f == "-" {
				sep = i
				break
			}
		}
		if sep < 5 || sep+1 >= len(fields) || fields[sep+1] != "cgroup2" {
			continue
		}

		return unescapeMount(fields[4]), nil
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("read mountinfo: %w", err)
	}

	return "", ErrNoCgroup2
}

// unescapeMount undoes the octal escapes (\040 for a space) of mountinfo.
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v int
			if _, err := fmt.Sscanf(s[i+1:i+4], "%3o", &v); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}

	return b.String()
}
