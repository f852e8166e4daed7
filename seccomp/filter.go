// Package seccomp intercepts the connect(2) calls of a process tree with a
// seccomp filter that hands each call to a supervisor (seccomp user
// notification, Linux 5.0; the killable wait this package insists on, 5.19).
//
// The traced command's init installs the filter with InstallConnectFilter
// right before it starts the command and passes the listener to childflow
// with SendListener; childflow takes it with ReceiveListener and serves it
// (Listener.Serve). While a notification is pending, the calling thread
// waits; the supervisor either lets the call run as the program made it
// (Continue) or answers it itself (Respond).
//
// Watch out for:
//
//   - Every connect of the tree stops in the supervisor, also those of Unix
//     sockets: a handler must answer quickly, and every notification must be
//     answered. When the listener is closed, the tree's pending and later
//     connects fail with ENOSYS; close it only when the tree is gone.
//   - Continue is not a security boundary: the program may change the
//     arguments between the supervisor's check and the call. Policy stays
//     in the cgroup programs, which see the call as it is made.
//   - Only the native system call convention is intercepted (x86-64, arm64);
//     32-bit and x32 calls and socketcall(2) run unobserved by the
//     supervisor.
//   - A process can have one listener in its filter chain; a command that
//     installs its own (a container runtime, a nested childflow) gets EBUSY.
package seccomp

import (
	"errors"
	"fmt"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ErrUnsupported means the kernel or the architecture cannot intercept
// connect calls as this package needs.
var ErrUnsupported = errors.New("connect interception not supported")

// errNoKillable is the EINVAL of a kernel that does not know
// SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV.
var errNoKillable = fmt.Errorf("%w: the kernel has no killable user notification (5.19)",
	ErrUnsupported)

func errNoArch() error { return fmt.Errorf("%w on %s", ErrUnsupported, runtime.GOARCH) }

// auditArch is the AUDIT_ARCH_* of the native system call convention.
func auditArch() (uint32, bool) {
	switch runtime.GOARCH {
	case "amd64":
		return unix.AUDIT_ARCH_X86_64, true
	case "arm64":
		return unix.AUDIT_ARCH_AARCH64, true
	}

	return 0, false
}

// Offsets in struct seccomp_data.
const (
	offNr   = 0
	offArch = 4
)

// connectFilter returns the classic BPF program: connect(2) of the native
// convention goes to the listener, everything else is allowed.
func connectFilter(arch uint32) []unix.SockFilter {
	stmt := func(code uint16, k uint32) unix.SockFilter { return unix.SockFilter{Code: code, K: k} }
	jeq := func(k uint32, jt, jf uint8) unix.SockFilter {
		return unix.SockFilter{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, K: k, Jt: jt, Jf: jf}
	}

	return []unix.SockFilter{
		stmt(unix.BPF_LD|unix.BPF_W|unix.BPF_ABS, offArch),
		jeq(arch, 0, 3),
		stmt(unix.BPF_LD|unix.BPF_W|unix.BPF_ABS, offNr),
		jeq(uint32(unix.SYS_CONNECT), 0, 1),
		stmt(unix.BPF_RET|unix.BPF_K, unix.SECCOMP_RET_USER_NOTIF),
		stmt(unix.BPF_RET|unix.BPF_K, unix.SECCOMP_RET_ALLOW),
	}
}

// InstallConnectFilter installs the filter on the calling thread and returns
// the listener's descriptor (close-on-exec), which the caller owns. Threads
// and processes the thread creates afterwards inherit the filter; other
// threads of the process do not get it, so the caller locks its goroutine to
// the thread that then forks or executes the command. It needs
// CAP_SYS_ADMIN or no_new_privs. Waits are killable only
// (SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV): once the supervisor received a
// call, a signal other than SIGKILL does not interrupt it, so that a call is
// never answered twice.
func InstallConnectFilter() (int, error) {
	arch, ok := auditArch()
	if !ok {
		return -1, errNoArch()
	}

	prog := connectFilter(arch)
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	flags := uintptr(unix.SECCOMP_FILTER_FLAG_NEW_LISTENER |
		unix.SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV)
	fd, _, errno := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, flags,
		uintptr(unsafe.Pointer(&fprog)))
	runtime.KeepAlive(prog)

	switch errno {
	case 0:
		return int(fd), nil
	case unix.EINVAL:
		return -1, errNoKillable
	case unix.EBUSY:
		return -1, fmt.Errorf("%w: the process already has a seccomp listener", ErrUnsupported)
	}

	return -1, fmt.Errorf("install connect filter: %w", errno)
}

// Probe tells whether InstallConnectFilter can work here, without
// installing anything: it passes the filter flags with no program, which the
// kernel checks before it reads the program (EINVAL for an unknown flag,
// EFAULT for the missing program).
func Probe() error {
	if _, ok := auditArch(); !ok {
		return errNoArch()
	}

	flags := uintptr(unix.SECCOMP_FILTER_FLAG_NEW_LISTENER |
		unix.SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV)
	_, _, errno := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, flags, 0)
	switch errno {
	case unix.EFAULT:
		return nil
	case unix.EINVAL:
		return errNoKillable
	}

	return fmt.Errorf("probe seccomp user notification: %w", errno)
}
