package rootless

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"

	"golang.org/x/sys/unix"
)

// initEnv marks a re-executed childflow as the namespace init.
const initEnv = "CHILDFLOW_ROOTLESS_INIT"

// File descriptors the parent passes to the init (os/exec ExtraFiles start at
// 3): the control socket and the read end of the configuration pipe.
const (
	ctlFD    = 3
	configFD = 4
)

// initConfig is what the parent tells the init, as JSON on the configuration
// pipe (a pipe rather than the environment, so a large environment fits).
type initConfig struct {
	Command    []string     `json:"command"`
	Env        []string     `json:"env"`
	Dir        string       `json:"dir,omitempty"`
	ResolvConf string       `json:"resolv_conf,omitempty"`
	Hosts      string       `json:"hosts,omitempty"`
	Tap        string       `json:"tap"`
	MTU        int          `json:"mtu"`
	Addr4      netip.Prefix `json:"addr4"`
	Addr6      netip.Prefix `json:"addr6"`
	Gateway4   netip.Addr   `json:"gateway4"`
	Gateway6   netip.Addr   `json:"gateway6"`
}

// Control message kinds. The init sends ready (with the tap fd), then started
// or failed, then exit; the parent sends go and signal.
const (
	msgReady   = "ready"
	msgGo      = "go"
	msgStarted = "started"
	msgFailed  = "failed"
	msgSignal  = "signal"
	msgExit    = "exit"
)

// ctlMsg is one control message: one datagram of the SOCK_SEQPACKET pair.
type ctlMsg struct {
	Kind     string   `json:"kind"`
	Text     string   `json:"text,omitempty"`
	Code     int      `json:"code,omitempty"`
	Signal   int      `json:"signal,omitempty"`
	Pid      int      `json:"pid,omitempty"`
	Warnings []string `json:"warnings,omitempty"`
}

// sendMsg writes m to the socket fd, with the file descriptors pass
// attached.
func sendMsg(fd int, m ctlMsg, pass ...int) error {
	b, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("encode %s message: %w", m.Kind, err)
	}

	var oob []byte
	if len(pass) > 0 {
		oob = unix.UnixRights(pass...)
	}

	if err := unix.Sendmsg(fd, b, oob, nil, 0); err != nil {
		return fmt.Errorf("send %s message: %w", m.Kind, err)
	}

	return nil
}

// errClosed reports that the peer closed the control socket.
var errClosed = errors.New("control socket closed")

// maxPassed is the number of file descriptors a message may carry.
const maxPassed = 2

// recvMsg reads one message from fd and the file descriptors attached to it;
// the caller owns them.
func recvMsg(fd int) (ctlMsg, []int, error) {
	buf := make([]byte, 64<<10)
	oob := make([]byte, unix.CmsgSpace(4*maxPassed))

	n, oobn, _, _, err := unix.Recvmsg(fd, buf, oob, unix.MSG_CMSG_CLOEXEC)
	for err == unix.EINTR {
		n, oobn, _, _, err = unix.Recvmsg(fd, buf, oob, unix.MSG_CMSG_CLOEXEC)
	}
	if err != nil {
		return ctlMsg{}, nil, fmt.Errorf("receive control message: %w", err)
	}
	if n == 0 {
		return ctlMsg{}, nil, errClosed
	}

	passed := parseRights(oob[:oobn])

	var m ctlMsg
	if err := json.Unmarshal(buf[:n], &m); err != nil {
		closeFDs(passed)
		return ctlMsg{}, nil, fmt.Errorf("decode control message: %w", err)
	}

	return m, passed, nil
}

func parseRights(oob []byte) []int {
	cmsgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil
	}

	var all []int
	for _, c := range cmsgs {
		fds, err := unix.ParseUnixRights(&c)
		if err == nil {
			all = append(all, fds...)
		}
	}

	return all
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// socketPair returns a connected SOCK_SEQPACKET pair as files.
func socketPair() (*os.File, *os.File, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("create control socket pair: %w", err)
	}

	return os.NewFile(uintptr(fds[0]), "childflow-ctl"), os.NewFile(uintptr(fds[1]), "init-ctl"), nil
}
