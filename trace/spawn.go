package trace

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// ErrCommandNotFound means the command is not an executable file on PATH.
// The run exits 127, like a shell.
var ErrCommandNotFound = errors.New("command not found")

// ErrCommandNotExecutable means the command exists but cannot be executed.
// The run exits 126, like a shell.
var ErrCommandNotExecutable = errors.New("command not executable")

// lookCommand resolves argv[0] as exec does, with the shell's error classes.
func lookCommand(name string) (string, error) {
	p, err := exec.LookPath(name)
	if err == nil {
		return p, nil
	}
	if errors.Is(err, os.ErrPermission) {
		return "", fmt.Errorf("%w: %s", ErrCommandNotExecutable, name)
	}

	return "", fmt.Errorf("%w: %s", ErrCommandNotFound, name)
}

// sudoCredential returns the invoking user's credential when childflow runs
// as root under sudo, so that the command does not run as root.
func sudoCredential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	su, sg := os.Getenv("SUDO_UID"), os.Getenv("SUDO_GID")
	if su == "" || sg == "" {
		return nil, nil
	}
	uid, err := strconv.ParseUint(su, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("parse SUDO_UID %q: %w", su, err)
	}
	gid, err := strconv.ParseUint(sg, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("parse SUDO_GID %q: %w", sg, err)
	}
	if uid == 0 {
		return nil, nil
	}

	cred := &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	if u, err := user.LookupId(su); err == nil {
		if ids, err := u.GroupIds(); err == nil {
			for _, g := range ids {
				if n, err := strconv.ParseUint(g, 10, 32); err == nil {
					cred.Groups = append(cred.Groups, uint32(n))
				}
			}
		}
	}

	return cred, nil
}

// exitCode turns a wait result into the shell's exit code: the command's own
// code, or 128+N when it died of signal N.
func exitCode(state *os.ProcessState) (int, string) {
	if state == nil {
		return 1, ""
	}
	ws, ok := state.Sys().(syscall.WaitStatus)
	if ok && ws.Signaled() {
		return 128 + int(ws.Signal()), unix.SignalName(ws.Signal())
	}

	return state.ExitCode(), ""
}
