package rootless

import (
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/childflow/childflow/flows"
)

// Bounds of the best-effort process lookup, so that a large tree costs at
// most this much per new flow.
const (
	maxProcs = 256
	maxFDs   = 4096
)

// setDiag gives ns the namespace's sock_diag socket (or -1 without one).
func (ns *netStack) setDiag(fd int) {
	ns.diag = fd
	if fd >= 0 {
		tv := unix.NsecToTimeval(int64(time.Second))
		unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	}
}

// procFor finds the process of the command tree that owns the socket of a
// new flow from local (the command's address) to remote (the address it
// asked for): sock_diag in the namespace gives the socket's inode, the
// tree's /proc/<pid>/fd links its owner. It returns a zero Proc when the
// socket or its owner cannot be found (no sock_diag, the socket already
// closed, or the tree beyond the bounds). The pid is the host's.
func (ns *netStack) procFor(proto int, local, remote netip.AddrPort) flows.Proc {
	if ns.procRoot == 0 || ns.diag < 0 {
		return flows.Proc{}
	}

	ns.diagMu.Lock()
	inode, err := socketInodeOf(ns.diag, proto, local, remote)
	ns.diagMu.Unlock()
	if err != nil || inode == 0 {
		return flows.Proc{}
	}

	target := fmt.Sprintf("socket:[%d]", inode)
	// A program that opens many connections is usually the last owner
	// found: checking it first spares the walk of the tree. Socket inodes
	// are unique, so a hit is never wrong.
	if last := int(ns.lastOwner.Load()); last > 0 && holds(last, target) {
		return procOf(last)
	}

	p := ownerOf(ns.procRoot, target)
	if p.Pid != 0 {
		ns.lastOwner.Store(int64(p.Pid))
	}

	return p
}

// noProc is the process of flows that are not looked up.
func noProc() flows.Proc { return flows.Proc{} }

func procOf(pid int) flows.Proc {
	comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return flows.Proc{Pid: uint32(pid), Comm: strings.TrimSpace(string(comm))}
}

// ownerOf walks the tree under root and returns the first process holding
// a descriptor that links to target.
func ownerOf(root int, target string) flows.Proc {
	queue := []int{root}
	for seen := 0; len(queue) > 0 && seen < maxProcs; seen++ {
		pid := queue[0]
		queue = append(queue[1:], children(pid)...)

		if holds(pid, target) {
			return procOf(pid)
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

// holds reports whether one of the first maxFDs descriptors of pid links to
// target. The names are read unsorted: this runs for every new flow.
func holds(pid int, target string) bool {
	dir := "/proc/" + strconv.Itoa(pid) + "/fd"
	d, err := os.Open(dir)
	if err != nil {
		return false
	}
	fds, _ := d.Readdirnames(maxFDs)
	d.Close()

	for _, fd := range fds {
		if l, err := os.Readlink(dir + "/" + fd); err == nil && l == target {
			return true
		}
	}

	return false
}
