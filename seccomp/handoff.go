package seccomp

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// The init tells childflow over a Unix socket whether it installed the
// filter: "ok" with the listener attached (SCM_RIGHTS), or "error: " and why
// not.
const (
	handoffOK    = "ok"
	handoffError = "error: "
)

// SendListener sends the listener fd over the Unix socket sock, or, when
// installErr is set, the reason there is none. It does not close fd.
func SendListener(sock, fd int, installErr error) error {
	if installErr != nil {
		msg := handoffError + installErr.Error()
		return sendmsg(sock, []byte(msg), nil)
	}

	return sendmsg(sock, []byte(handoffOK), unix.UnixRights(fd))
}

func sendmsg(sock int, p, oob []byte) error {
	if err := unix.Sendmsg(sock, p, oob, nil, 0); err != nil {
		return fmt.Errorf("send seccomp listener: %w", err)
	}

	return nil
}

// ErrNoListener wraps the reason the init gave for not installing the
// filter; the command runs without it.
var ErrNoListener = errors.New("no connect interception")

// ReceiveListener waits up to timeout for the message of SendListener on
// sock and returns the listener fd (close-on-exec), or an error wrapping
// ErrNoListener with the init's reason. Any other error means the filter
// may be installed without a listener: the command's connects then fail.
func ReceiveListener(sock int, timeout time.Duration) (int, error) {
	tv := unix.NsecToTimeval(timeout.Nanoseconds())
	if err := unix.SetsockoptTimeval(sock, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return -1, fmt.Errorf("receive seccomp listener: %w", err)
	}

	buf := make([]byte, 512)
	oob := make([]byte, unix.CmsgSpace(4))
	n, oobn, _, _, err := unix.Recvmsg(sock, buf, oob, unix.MSG_CMSG_CLOEXEC)
	if err != nil {
		return -1, fmt.Errorf("receive seccomp listener: %w", err)
	}
	msg := string(buf[:n])
	if reason, ok := strings.CutPrefix(msg, handoffError); ok {
		return -1, fmt.Errorf("%w: %s", ErrNoListener, reason)
	}

	fds, err := rights(oob[:oobn])
	if err != nil || msg != handoffOK || len(fds) != 1 {
		for _, fd := range fds {
			_ = unix.Close(fd)
		}
		return -1, fmt.Errorf("receive seccomp listener: unexpected message %q (%d descriptors)",
			msg, len(fds))
	}

	return fds[0], nil
}

func rights(oob []byte) ([]int, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, err
	}

	var fds []int
	for _, m := range msgs {
		got, err := unix.ParseUnixRights(&m)
		if err != nil {
			return fds, err
		}
		fds = append(fds, got...)
	}

	return fds, nil
}
