package seccomp

import (
	"errors"
	"fmt"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Notif is one intercepted connect call, as struct seccomp_notif gives it.
type Notif struct {
	ID   uint64
	Pid  uint32 // the calling thread, in the supervisor's PID namespace
	Nr   int32
	Arch uint32
	Args [6]uint64 // fd, sockaddr pointer and length for connect
}

// notifRaw is struct seccomp_notif.
type notifRaw struct {
	id    uint64
	pid   uint32
	flags uint32
	nr    int32
	arch  uint32
	ip    uint64
	args  [6]uint64
}

// respRaw is struct seccomp_notif_resp.
type respRaw struct {
	id    uint64
	val   int64
	errno int32
	flags uint32
}

// ErrGone means the call is no longer waiting: the thread was killed, or the
// notification was answered already.
var ErrGone = errors.New("intercepted call no longer waiting")

// Listener serves the notifications of a connect filter. Create it with
// NewListener; Serve and Close may be called from different goroutines,
// and Respond, Continue and Valid from any goroutine.
type Listener struct {
	fd   int
	wake int // eventfd that ends Serve

	mu      sync.RWMutex // held for reading around every use of fd
	serving bool
	closing bool
	closed  bool
	done    chan struct{}
}

// NewListener takes ownership of fd, a listener from InstallConnectFilter.
func NewListener(fd int) (*Listener, error) {
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		_ = unix.Close(fd)
		return nil, fmt.Errorf("create eventfd for seccomp listener: %w", err)
	}

	// Linux 6.6: the woken thread runs on the waker's CPU, which saves a
	// wake-up on another CPU in each direction. Older kernels refuse the
	// flag; the listener works without it.
	_, _, _ = unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SECCOMP_IOCTL_NOTIF_SET_FLAGS,
		unix.SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP)

	return &Listener{fd: fd, wake: wake, done: make(chan struct{})}, nil
}

// Serve receives notifications and calls handle for each, on Serve's
// goroutine, until Close. handle must not block: it answers at once or hands
// the notification to another goroutine, which must answer it.
func (l *Listener) Serve(handle func(Notif)) error {
	l.mu.Lock()
	if l.closing || l.serving {
		l.mu.Unlock()
		return errors.New("serve seccomp listener: closed or already served")
	}
	l.serving = true
	l.mu.Unlock()
	defer close(l.done)

	fds := []unix.PollFd{{Fd: int32(l.fd), Events: unix.POLLIN}, {Fd: int32(l.wake), Events: unix.POLLIN}}
	for {
		fds[0].Revents, fds[1].Revents = 0, 0
		if _, err := unix.Poll(fds, -1); err != nil {
			if err == unix.EINTR {
				continue
			}
			return fmt.Errorf("poll seccomp listener: %w", err)
		}
		if fds[1].Revents != 0 {
			return nil
		}
		if fds[0].Revents&(unix.POLLHUP|unix.POLLERR) != 0 && fds[0].Revents&unix.POLLIN == 0 {
			return nil // the filter has no task left
		}

		n, err := l.recv()
		if errors.Is(err, ErrGone) || err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		handle(n)
	}
}

func (l *Listener) recv() (Notif, error) {
	var raw notifRaw
	if err := ioctl(l.fd, unix.SECCOMP_IOCTL_NOTIF_RECV, unsafe.Pointer(&raw)); err != nil {
		if err == unix.ENOENT {
			return Notif{}, ErrGone // the caller died between poll and receive
		}
		return Notif{}, fmt.Errorf("receive seccomp notification: %w", err)
	}

	return Notif{ID: raw.id, Pid: raw.pid, Nr: raw.nr, Arch: raw.arch, Args: raw.args}, nil
}

// Continue lets the call run as the program made it.
func (l *Listener) Continue(id uint64) error {
	return l.send(respRaw{id: id, flags: unix.SECCOMP_USER_NOTIF_FLAG_CONTINUE})
}

// Respond answers the call: it returns 0 when errno is 0, else -1 with
// errno.
func (l *Listener) Respond(id uint64, errno unix.Errno) error {
	return l.send(respRaw{id: id, errno: -int32(errno)})
}

func (l *Listener) send(r respRaw) error {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed {
		return ErrGone
	}

	err := ioctl(l.fd, unix.SECCOMP_IOCTL_NOTIF_SEND, unsafe.Pointer(&r))
	if err == unix.ENOENT {
		return ErrGone
	}
	if err != nil {
		return fmt.Errorf("answer seccomp notification: %w", err)
	}

	return nil
}

// Valid reports whether the call is still waiting. Check it after reading
// the caller's memory: a pid can be reused once the caller is gone.
func (l *Listener) Valid(id uint64) bool {
	l.mu.RLock()
	defer l.mu.RUnlock()

	return !l.closed && ioctl(l.fd, unix.SECCOMP_IOCTL_NOTIF_ID_VALID, unsafe.Pointer(&id)) == nil
}

// Close ends Serve, waits for it when it runs, and closes the listener.
// Calls still waiting, and later ones, fail with ENOSYS.
func (l *Listener) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closing = true
	serving := l.serving
	l.mu.Unlock()

	one := uint64(1)
	_, _ = unix.Write(l.wake, (*[8]byte)(unsafe.Pointer(&one))[:])
	if serving {
		<-l.done
	}

	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	l.closed = true
	_ = unix.Close(l.wake)

	return unix.Close(l.fd)
}

func ioctl(fd int, req uint, arg unsafe.Pointer) error {
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(req), uintptr(arg))
	if errno != 0 {
		return errno
	}

	return nil
}
