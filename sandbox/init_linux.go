package sandbox

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/childflow/childflow/seccomp"
)

// forwarded are the signals the confining init relays to the command.
var forwarded = []os.Signal{unix.SIGINT, unix.SIGTERM, unix.SIGHUP, unix.SIGQUIT, unix.SIGUSR1,
	unix.SIGUSR2}

// parentPid is the init's parent when it started (0 for the init of a PID
// namespace, whose parent is outside it).
var parentPid int

func init() {
	if _, ok := os.LookupEnv(envVar); !ok {
		return
	}

	// Locking the thread in an init function keeps main on the main thread
	// for good. Capabilities are per thread: the init drops them on this one
	// and forks or execs the command from it.
	runtime.LockOSThread()
	parentPid = os.Getppid()
}

// MaybeInit runs the init and never returns when this process was started by
// Command; otherwise it returns at once. Call it first thing in main, before
// flags are parsed or goroutines start.
func MaybeInit() {
	raw, ok := os.LookupEnv(envVar)
	if !ok {
		if len(os.Args) == 1 && os.Args[0] == initArg0 {
			os.Exit(fail(126, errors.New("configuration missing (cmd.Env was replaced)")))
		}

		return
	}

	os.Exit(runInit(raw))
}

// runInit prepares the namespaces, switches identity and runs the command.
// Its return value is the init's exit code.
func runInit(raw string) int {
	if err := os.Unsetenv(envVar); err != nil {
		return fail(126, fmt.Errorf("remove %s from the environment: %w", envVar, err))
	}

	var cfg initConfig
	if err := json.Unmarshal([]byte(raw), &cfg); err != nil {
		return fail(126, fmt.Errorf("decode configuration: %w", err))
	}

	if cfg.ListenerFD > 0 {
		if err := handOffListener(cfg.ListenerFD); err != nil {
			return fail(126, err)
		}
	}

	if err := setup(&cfg); err != nil {
		return fail(126, err)
	}

	if err := switchCred(cfg.Cred); err != nil {
		return fail(126, err)
	}

	if !cfg.Confine {
		err := syscall.Exec(cfg.Path, cfg.Argv, os.Environ())
		return fail(startCode(err), fmt.Errorf("run %s: %w", cfg.Path, err))
	}

	return supervise(&cfg)
}

// handOffListener installs the connect filter on this (locked) thread, which
// later forks or executes the command, and sends the listener, or why there
// is none, over sock. A listener that was installed but not sent would fail
// every connect of the tree, so that is an error; no filter is not.
func handOffListener(sock int) error {
	defer unix.Close(sock)

	fd, installErr := seccomp.InstallConnectFilter()
	if err := seccomp.SendListener(sock, fd, installErr); err != nil {
		return err
	}
	if installErr == nil {
		_ = unix.Close(fd)
	}

	return nil
}

// setup makes the mounts private, binds the hosts file and, when confining,
// mounts /proc and cgroup2 and drops capabilities.
func setup(cfg *initConfig) error {
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make mounts private: %w", err)
	}

	if cfg.HostsFile != "" {
		if err := bindReadOnly(cfg.HostsFile, "/etc/hosts"); err != nil {
			return err
		}
	}

	if !cfg.Confine {
		return nil
	}

	if err := mountProc(); err != nil {
		return err
	}

	if err := remountCgroup2(); err != nil {
		return err
	}

	if cfg.KeepCaps {
		return nil
	}

	return dropCaps()
}

// bindReadOnly bind-mounts src over dst and makes the bind read-only (a bind
// mount ignores MS_RDONLY until it is remounted).
func bindReadOnly(src, dst string) error {
	if err := unix.Mount(src, dst, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind-mount %s over %s: %w", src, dst, err)
	}

	flags := uintptr(unix.MS_BIND | unix.MS_REMOUNT | unix.MS_RDONLY)
	if err := unix.Mount("", dst, "", flags, ""); err != nil {
		return fmt.Errorf("make %s read-only: %w", dst, err)
	}

	return nil
}

// mountProc mounts a /proc that shows the new PID namespace alone.
func mountProc() error {
	flags := uintptr(unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC)
	if err := unix.Mount("proc", "/proc", "proc", flags, ""); err != nil {
		return fmt.Errorf("mount /proc: %w", err)
	}

	return nil
}

// remountCgroup2 replaces every cgroup2 mount with a read-only one. Mounted
// inside the cgroup namespace, it shows the namespace's root, the run cgroup,
// as its root.
func remountCgroup2() error {
	points, err := mountPoints("/proc/self/mountinfo", "cgroup2")
	if err != nil {
		return err
	}

	flags := uintptr(unix.MS_RDONLY | unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC)
	for _, p := range points {
		if err := unmountCgroup2(p); err != nil {
			return err
		}

		if err := unix.Mount("cgroup2", p, "cgroup2", flags, ""); err != nil {
			return fmt.Errorf("mount cgroup2 on %s: %w", p, err)
		}
	}

	return nil
}

// unmountCgroup2 detaches the cgroup2 mounts stacked on p. The kernel refuses
// to mount a file system on the root of a mount of the same super block
// (EBUSY), and cgroup2 has a single super block, so mounting over is no
// option.
func unmountCgroup2(p string) error {
	for range 8 {
		var st unix.Statfs_t
		if err := unix.Statfs(p, &st); err != nil {
			return fmt.Errorf("stat %s: %w", p, err)
		}
		if st.Type != unix.CGROUP2_SUPER_MAGIC {
			return nil
		}

		if err := unix.Unmount(p, unix.MNT_DETACH); err != nil {
			return fmt.Errorf("unmount cgroup2 on %s: %w", p, err)
		}
	}

	return fmt.Errorf("unmount cgroup2 on %s: too many stacked mounts", p)
}

// switchCred takes on c (supplementary groups, gid, uid) for every thread.
// A credential change clears the parent-death signal, so it is set again.
func switchCred(c *syscall.Credential) error {
	if c == nil {
		return nil
	}

	if !c.NoSetGroups {
		groups := make([]int, len(c.Groups))
		for i, g := range c.Groups {
			groups[i] = int(g)
		}
		if err := syscall.Setgroups(groups); err != nil {
			return fmt.Errorf("set groups %v: %w", c.Groups, err)
		}
	}

	if err := syscall.Setgid(int(c.Gid)); err != nil {
		return fmt.Errorf("set gid %d: %w", c.Gid, err)
	}

	if err := syscall.Setuid(int(c.Uid)); err != nil {
		return fmt.Errorf("set uid %d: %w", c.Uid, err)
	}

	return restoreDeathSignal()
}

// restoreDeathSignal asks for SIGKILL when childflow dies, as the caller did
// before the credential change cleared it. Outside a PID namespace it also
// catches a parent that died before: the init was then re-parented.
func restoreDeathSignal() error {
	if err := unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(unix.SIGKILL), 0, 0, 0); err != nil {
		return fmt.Errorf("set parent-death signal: %w", err)
	}

	if parentPid != 0 && os.Getppid() != parentPid {
		return fmt.Errorf("parent %d exited", parentPid)
	}

	return nil
}

// supervise runs the command as a child of this PID 1, forwards signals to
// it, reaps every process re-parented here and returns the command's status
// as a shell reports it.
func supervise(cfg *initConfig) int {
	// Before the start, so that a signal that arrives meanwhile is queued
	// and forwarded rather than lost.
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, forwarded...)

	attr := &os.ProcAttr{Env: os.Environ(), Files: []*os.File{os.Stdin, os.Stdout, os.Stderr}}
	p, err := os.StartProcess(cfg.Path, cfg.Argv, attr)
	if err != nil {
		return fail(startCode(err), fmt.Errorf("run %s: %w", cfg.Path, err))
	}

	go func() {
		for sig := range sigs {
			_ = p.Signal(sig)
		}
	}()

	return reap(p.Pid)
}

// reap waits for every child until pid ends and returns pid's status: its
// exit code, or 128+N when signal N killed it.
func reap(pid int) int {
	for {
		var ws unix.WaitStatus
		got, err := unix.Wait4(-1, &ws, 0, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fail(126, fmt.Errorf("wait for pid %d: %w", pid, err))
		}

		switch {
		case got != pid:
		case ws.Signaled():
			return 128 + int(ws.Signal())
		case ws.Exited():
			return ws.ExitStatus()
		}
	}
}

// startCode is the shell's exit code for a command that could not start.
func startCode(err error) int {
	if errors.Is(err, os.ErrNotExist) {
		return 127
	}

	return 126
}
