package rootless

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/childflow/childflow/flows"
)

// Bounds of the best-effort process lookup, so that a large tree costs at
// most this much per new flow.
const (
	maxProcs = 256
	maxFDs   = 4096
)

// procFor finds the process of the command tree that owns the socket bound
// to localPort, through the namespace's /proc/<init>/net tables and the
// tree's /proc/<pid>/fd links. It returns a zero Proc when the socket or its
// owner cannot be found (the socket already closed, or the tree is larger
// than the bounds). The pids are those of the host's PID namespace.
func (ns *netStack) procFor(proto string, v6 bool, localPort uint16) flows.Proc {
	if ns.procRoot == 0 {
		return flows.Proc{}
	}

	tables := []string{proto, proto + "6"}
	if v6 {
		tables = []string{proto + "6", proto}
	}

	for _, t := range tables {
		path := fmt.Sprintf("/proc/%d/net/%s", ns.procRoot, t)
		if inode := socketInode(path, localPort); inode != "" {
			return ownerOf(ns.procRoot, "socket:["+inode+"]")
		}
	}

	return flows.Proc{}
}

// socketInode returns the inode of the socket whose local port is port in a
// /proc/net/{tcp,udp}[6] table, or "".
func socketInode(path string, port uint16) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}

	want := fmt.Sprintf(":%04X", port)
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Scan()
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 10 || !strings.HasSuffix(f[1], want) || f[9] == "0" {
			continue
		}

		return f[9]
	}

	return ""
}

// ownerOf walks the tree under root and returns the first process holding
// a descriptor that links to target.
func ownerOf(root int, target string) flows.Proc {
	queue := []int{root}
	for seen := 0; len(queue) > 0 && seen < maxProcs; seen++ {
		pid := queue[0]
		queue = append(queue[1:], children(pid)...)

		if holds(pid, target) {
			comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
			return flows.Proc{Pid: uint32(pid), Comm: strings.TrimSpace(string(comm))}
		}
	}

	return flows.Proc{}
}

func children(pid int) []int {
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))

	var out []int
	for _, t := range tasks {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", pid, t.Name()))
		for _, f := range strings.Fields(string(b)) {
			if c, err := strconv.Atoi(f); err == nil {
				out = append(out, c)
			}
		}
	}

	return out
}

func holds(pid int, target string) bool {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	fds, err := os.ReadDir(dir)
	if err != nil {
		return false
	}

	for i, fd := range fds {
		if i >= maxFDs {
			return false
		}

		if l, err := os.Readlink(dir + "/" + fd.Name()); err == nil && l == target {
			return true
		}
	}

	return false
}
