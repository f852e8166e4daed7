package rootless

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// MaybeInit runs the namespace init and never returns when this process was
// started as one by Start (the CHILDFLOW_ROOTLESS_INIT variable is set);
// otherwise it returns at once. Programs that use Start must call it first
// thing in main (tests: in TestMain), before flags are parsed or goroutines
// that matter start, because Start re-executes /proc/self/exe.
func MaybeInit() {
	if os.Getenv(initEnv) != "1" {
		return
	}

	os.Exit(runInit())
}

// runInit is the init: PID 1 of the new PID namespace, root of the new user
// namespace. It configures the network and mounts, hands the tap to the
// parent, starts the command when told to, reaps every process of the
// namespace and reports the command's exit status. Its return value is its
// exit code; when it exits, the kernel kills whatever is left in the PID
// namespace.
func runInit() int {
	unix.CloseOnExec(ctlFD)
	unix.CloseOnExec(configFD)

	cfg, err := readInitConfig()
	if err != nil {
		return initFail(err)
	}

	warnings, err := setupNamespace(cfg)
	if err != nil {
		return initFail(err)
	}

	if err := handOverTap(cfg, warnings); err != nil {
		return initFail(err)
	}

	return superviseCommand(cfg)
}

func initFail(err error) int {
	if sendMsg(ctlFD, ctlMsg{Kind: msgFailed, Text: err.Error()}) != nil {
		fmt.Fprintf(os.Stderr, "childflow: rootless init: %v\n", err)
	}

	return 125
}

func readInitConfig() (*initConfig, error) {
	f := os.NewFile(configFD, "init-config")
	defer f.Close()

	b, err := io.ReadAll(f)
	if err != nil {
		return nil, fmt.Errorf("read init configuration: %w", err)
	}

	var cfg initConfig
	if err := json.Unmarshal(b, &cfg); err != nil {
		return nil, fmt.Errorf("decode init configuration: %w", err)
	}

	return &cfg, nil
}

// setupNamespace makes mounts private, bind-mounts the resolver and hosts
// files, mounts a /proc for the new PID namespace and configures lo. Failures
// that leave the command usable are returned as warnings.
func setupNamespace(cfg *initConfig) ([]string, error) {
	var warnings []string

	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return nil, fmt.Errorf("make mounts private: %w", err)
	}

	binds := [][2]string{{cfg.ResolvConf, "/etc/resolv.conf"}, {cfg.Hosts, "/etc/hosts"}}
	for _, b := range binds {
		if b[0] == "" {
			continue
		}

		if err := unix.Mount(b[0], b[1], "", unix.MS_BIND, ""); err != nil {
			return nil, fmt.Errorf("bind-mount %s over %s: %w", b[0], b[1], err)
		}
	}

	flags := uintptr(unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC)
	if err := unix.Mount("proc", "/proc", "proc", flags, ""); err != nil {
		warnings = append(warnings, fmt.Sprintf("mount /proc for the PID namespace: %v", err))
	}

	// Unprivileged ICMP sockets inside, so that ping works without
	// capabilities; the sysctl is per network namespace. Its range must
	// map into this user namespace: all ids when root mapped them all, else
	// the one group the caller's gid became.
	const ping = "/proc/sys/net/ipv4/ping_group_range"
	if err := os.WriteFile(ping, []byte("0 2147483647"), 0); err != nil {
		if err := os.WriteFile(ping, []byte("0 0"), 0); err != nil {
			warnings = append(warnings, fmt.Sprintf("allow ping sockets: %v", err))
		}
	}

	return warnings, nil
}

// handOverTap creates and configures the tap, sends it and a sock_diag
// socket of the namespace (for finding the process behind a flow) to the
// parent and waits for the parent's go.
func handOverTap(cfg *initConfig, warnings []string) error {
	tap, err := createTap(cfg.Tap)
	if err != nil {
		return err
	}

	more, err := configureLinks(cfg)
	if err != nil {
		unix.Close(tap)
		return err
	}

	warnings = append(warnings, more...)
	pass := []int{tap}
	diag, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		warnings = append(warnings, fmt.Sprintf("open sock_diag socket: %v", err))
	} else {
		pass = append(pass, diag)
	}

	err = sendMsg(ctlFD, ctlMsg{Kind: msgReady, Warnings: warnings}, pass...)
	closeFDs(pass)
	if err != nil {
		return err
	}

	m, _, err := recvMsg(ctlFD)
	if err != nil {
		return err
	}
	if m.Kind != msgGo {
		return fmt.Errorf("unexpected control message %q, want %q", m.Kind, msgGo)
	}

	return nil
}

// createTap opens /dev/net/tun and attaches a tap named name whose frames
// carry a virtio-net header instead of packet information.
func createTap(name string) (int, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open /dev/net/tun: %w", err)
	}

	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("create tap %s: %w", name, err)
	}

	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("create tap %s: %w", name, err)
	}

	// Frames to the parent may carry partial checksums (see tap.go).
	if err := unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, unix.TUN_F_CSUM); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("set offloads of tap %s: %w", name, err)
	}

	return fd, nil
}

// configureLinks brings lo and the tap up and gives the tap its addresses
// and default routes. IPv6 failures (IPv6 disabled on the host) are warnings.
func configureLinks(cfg *initConfig) ([]string, error) {
	nl, err := dialNetlink()
	if err != nil {
		return nil, err
	}
	defer nl.Close()

	if err := nl.linkUp(1, 0); err != nil {
		return nil, err
	}

	ifc, err := net.InterfaceByName(cfg.Tap)
	if err != nil {
		return nil, fmt.Errorf("find link %s: %w", cfg.Tap, err)
	}

	if err := nl.linkUp(ifc.Index, cfg.MTU); err != nil {
		return nil, err
	}

	if err := nl.addAddr(ifc.Index, cfg.Addr4); err != nil {
		return nil, err
	}

	if err := nl.addDefaultRoute(ifc.Index, cfg.Gateway4); err != nil {
		return nil, err
	}

	var warnings []string
	if err := nl.addAddr(ifc.Index, cfg.Addr6); err != nil {
		return append(warnings, err.Error()), nil
	}

	if err := nl.addDefaultRoute(ifc.Index, cfg.Gateway6); err != nil {
		warnings = append(warnings, err.Error())
	}

	return warnings, nil
}

// superviseCommand starts the command, relays the parent's signals to it,
// reaps every child (orphans are re-parented to this init) and reports the
// command's status once it exits.
func superviseCommand(cfg *initConfig) int {
	// Signals from the terminal reach the command directly; the init only
	// needs to survive them (with a handler installed, the command still
	// starts with default dispositions).
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, unix.SIGINT, unix.SIGTERM, unix.SIGHUP, unix.SIGQUIT, unix.SIGUSR1,
		unix.SIGUSR2, unix.SIGPIPE)
	go func() {
		for range sigs {
		}
	}()

	pid, code, err := startCommand(cfg)
	if err != nil {
		fmt.Fprintf(os.Stderr, "childflow: %v\n", err)
		sendMsg(ctlFD, ctlMsg{Kind: msgExit, Code: code, Text: err.Error()})
		return code
	}

	if err := sendMsg(ctlFD, ctlMsg{Kind: msgStarted, Pid: pid}); err != nil {
		return 125
	}

	go relaySignals(pid)

	return reapUntil(pid)
}

// startCommand resolves the command with the command's own PATH and starts
// it. A command that cannot be found yields code 127, one that cannot be
// executed 126, as shells do.
func startCommand(cfg *initConfig) (int, int, error) {
	path, err := lookPath(cfg.Command[0], cfg.Env)
	if err != nil {
		return 0, 127, err
	}

	attr := &os.ProcAttr{Dir: cfg.Dir, Env: cfg.Env, Files: []*os.File{os.Stdin, os.Stdout, os.Stderr}}
	p, err := os.StartProcess(path, cfg.Command, attr)
	if err != nil {
		code := 126
		if errors.Is(err, os.ErrNotExist) {
			code = 127
		}

		return 0, code, fmt.Errorf("start %s: %w", cfg.Command[0], err)
	}

	return p.Pid, 0, nil
}

// lookPath finds name the way a shell would, with the PATH of env.
func lookPath(name string, env []string) (string, error) {
	if strings.Contains(name, "/") {
		return name, nil
	}

	path := "/usr/local/bin:/usr/bin:/bin"
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			path = v
		}
	}

	for _, dir := range filepath.SplitList(path) {
		if dir == "" {
			dir = "."
		}

		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}

	return "", fmt.Errorf("%s: command not found", name)
}

// relaySignals delivers the signals the parent asks for to the command.
func relaySignals(pid int) {
	for {
		m, _, err := recvMsg(ctlFD)
		if err != nil {
			return
		}

		if m.Kind == msgSignal {
			unix.Kill(pid, unix.Signal(m.Signal))
		}
	}
}

// reapUntil reaps children until pid exits, reports its status and returns
// the init's exit code.
func reapUntil(pid int) int {
	for {
		var ws unix.WaitStatus
		got, err := unix.Wait4(-1, &ws, 0, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return 125
		}
		if got != pid || !(ws.Exited() || ws.Signaled()) {
			continue
		}

		m := ctlMsg{Kind: msgExit, Code: ws.ExitStatus()}
		if ws.Signaled() {
			m.Signal = int(ws.Signal())
			m.Code = 128 + m.Signal
		}
		sendMsg(ctlFD, m)

		return m.Code & 0xff
	}
}
