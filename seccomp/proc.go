package seccomp

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ConnectArgs are the arguments of an intercepted connect call.
type ConnectArgs struct {
	FD     int
	Family uint16         // sa_family; AF_UNSPEC when the address is too short
	Addr   netip.AddrPort // for AF_INET and AF_INET6; IPv4-mapped stays mapped
}

// ReadConnectArgs reads the socket address that the calling thread passed
// to connect. Check Listener.Valid afterwards: until then the thread may have
// died and its pid been reused.
func ReadConnectArgs(n Notif) (ConnectArgs, error) {
	a := ConnectArgs{FD: int(int32(n.Args[0]))}
	size := n.Args[2]
	if size < 2 {
		return a, nil
	}
	size = min(size, unix.SizeofSockaddrInet6)

	buf := make([]byte, size)
	local := []unix.Iovec{{Base: &buf[0], Len: size}}
	remote := []unix.RemoteIovec{{Base: uintptr(n.Args[1]), Len: int(size)}}
	got, err := unix.ProcessVMReadv(int(n.Pid), local, remote, 0)
	if err != nil {
		return a, fmt.Errorf("read connect address of thread %d: %w", n.Pid, err)
	}
	buf = buf[:got]
	if len(buf) < 2 {
		return a, nil
	}

	a.Family = *(*uint16)(unsafe.Pointer(&buf[0])) // host order, like the kernel's
	port := binary.BigEndian.Uint16(buf[2:min(4, len(buf))])
	switch {
	case a.Family == unix.AF_INET && len(buf) >= unix.SizeofSockaddrInet4:
		a.Addr = netip.AddrPortFrom(netip.AddrFrom4([4]byte(buf[4:8])), port)
	case a.Family == unix.AF_INET6 && len(buf) >= unix.SizeofSockaddrInet6:
		a.Addr = netip.AddrPortFrom(netip.AddrFrom16([16]byte(buf[8:24])), port)
	}

	return a, nil
}

// pidfdThread is PIDFD_THREAD (Linux 6.9): a pidfd of a thread, not only of
// a process.
const pidfdThread = unix.O_EXCL

// DupFD returns a duplicate of the descriptor fd of thread tid (which shares
// the socket's open file description: flags set on one show on the other).
// It needs ptrace access to the thread (root has it unless Yama forbids all
// attaching). The caller closes the duplicate.
func DupFD(tid uint32, fd int) (int, error) {
	pidfd, err := unix.PidfdOpen(int(tid), pidfdThread)
	if err == unix.EINVAL {
		// Before 6.9 only a thread group leader has a pidfd; threads share
		// the leader's descriptor table unless made with clone(2) without
		// CLONE_FILES, which this does not follow.
		var th Thread
		if th, err = ReadThread(tid); err == nil {
			pidfd, err = unix.PidfdOpen(int(th.Tgid), 0)
		}
	}
	if err != nil {
		return -1, fmt.Errorf("open pidfd of thread %d: %w", tid, err)
	}
	defer unix.Close(pidfd)

	dup, err := unix.PidfdGetfd(pidfd, fd, 0)
	if err != nil {
		return -1, fmt.Errorf("get descriptor %d of thread %d: %w", fd, tid, err)
	}

	return dup, nil
}

// Thread is what /proc tells of a thread.
type Thread struct {
	Tgid uint32 // its process
	Comm string // its name (the kernel keeps 15 bytes)
}

// ReadThread reads /proc/TID/status.
func ReadThread(tid uint32) (Thread, error) {
	st, err := readStatus(tid)
	if err != nil {
		return Thread{}, err
	}

	tgid, err := st.number("Tgid", 10)
	if err != nil {
		return Thread{}, err
	}

	return Thread{Tgid: uint32(tgid), Comm: st.fields["Name"]}, nil
}

// SignalPending reports whether thread tid has a signal pending that it
// neither blocks nor ignores, and that it catches: one that would interrupt
// a system call the thread waits in. While the supervisor holds a call, such
// a signal waits (the wait is killable only); the supervisor can answer
// EINTR to let the thread run its handler.
func SignalPending(tid uint32) (bool, error) {
	st, err := readStatus(tid)
	if err != nil {
		return false, err
	}

	var m [4]uint64
	for i, k := range []string{"SigPnd", "ShdPnd", "SigBlk", "SigCgt"} {
		if m[i], err = st.number(k, 16); err != nil {
			return false, err
		}
	}
	pending := (m[0] | m[1]) &^ m[2]

	return pending&m[3] != 0, nil
}

// status is the "Key:\tvalue" lines of /proc/TID/status.
type status struct {
	tid    uint32
	fields map[string]string
}

func readStatus(tid uint32) (status, error) {
	b, err := os.ReadFile("/proc/" + strconv.FormatUint(uint64(tid), 10) + "/status")
	if err != nil {
		return status{}, fmt.Errorf("read status of thread %d: %w", tid, err)
	}

	st := status{tid: tid, fields: map[string]string{}}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			st.fields[k] = strings.TrimSpace(v)
		}
	}

	return st, nil
}

// number parses the field key in base.
func (st status) number(key string, base int) (uint64, error) {
	v, ok := st.fields[key]
	if !ok {
		return 0, fmt.Errorf("read status of thread %d: no %s line", st.tid, key)
	}

	n, err := strconv.ParseUint(v, base, 64)
	if err != nil {
		return 0, fmt.Errorf("read status of thread %d: %s %q: %w", st.tid, key, v, err)
	}

	return n, nil
}
