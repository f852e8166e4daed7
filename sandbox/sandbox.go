// Package sandbox prepares the traced command's surroundings on the eBPF
// backend. Command returns an exec.Cmd that re-executes childflow (through
// /proc/self/exe) as a small init in a new mount namespace, and, when
// confining, new cgroup and PID namespaces too. The init sets the namespaces
// up and then starts the command, so that no Go code runs between fork and
// exec in the parent. Programs that use Command must call MaybeInit first
// thing in main (tests: in TestMain).
//
// The init does, in order:
//
//  1. with Config.Listener: install the seccomp connect filter and send its
//     listener to childflow (this needs CAP_SYS_ADMIN, so it comes before
//     any capability is dropped; the filter stays through the credential
//     switch and exec);
//  2. make every mount private, so nothing it mounts reaches the host;
//  3. bind-mount Config.HostsFile read-only over /etc/hosts;
//  4. when confining: mount a fresh /proc for the new PID namespace, mount a
//     read-only cgroup2 over every cgroup2 mount point (inside the cgroup
//     namespace it shows the run cgroup as its root), and drop the
//     capabilities listed below from the bounding, effective, permitted,
//     inheritable and ambient sets;
//  5. switch to Config.Cred (groups, gid, uid) and restore the parent-death
//     signal, which the kernel clears when credentials change;
//  6. without confinement, execve the command in place (no extra process);
//     with it, start the command as a child, forward SIGINT, SIGTERM, SIGHUP,
//     SIGQUIT, SIGUSR1 and SIGUSR2 to it, reap every process re-parented to it
//     and exit with the command's status. When PID 1 exits the kernel kills
//     the rest of the PID namespace: daemons die with the run.
//
// A command killed by signal N makes the confining init exit with 128+N (the
// code childflow reports anyway): an init of a PID namespace cannot die of a
// signal it sends itself. Failures of the init are one line on stderr,
// "childflow: sandbox: ...", and exit code 127 when the command does not exist
// or 126 otherwise, as a shell would.
//
// The dropped capabilities, and why: CAP_SYS_ADMIN (mount, setns and many
// other ways around the rest), CAP_BPF and CAP_PERFMON (load or inspect BPF
// programs, read kernel memory), CAP_NET_ADMIN (detach cgroup BPF programs,
// change the host's routes, firewall and links), CAP_NET_RAW (packet and raw
// sockets), CAP_SYS_MODULE (kernel code), CAP_SYS_PTRACE (inspect processes
// of other users), CAP_SYS_RAWIO (I/O ports, /dev/mem), CAP_SYS_BOOT
// (reboot, kexec a new kernel) and CAP_DAC_READ_SEARCH (open_by_handle_at,
// which opens any cgroup directory by its id, outside the mounted subtree;
// CAP_DAC_OVERRIDE still lets root read every file). Everything else a build
// may need as root (chown, mknod, setuid, binding low ports, kill in its own
// tree) stays.
//
// What confinement guarantees, for a command that runs as root:
//   - it cannot leave the run cgroup: the cgroup file system it sees is
//     read-only and shows the run cgroup as its root, and it can neither
//     mount another view nor open a cgroup above by file handle. (The kernel
//     refuses moves out of a cgroup namespace only when the host mounted
//     cgroup2 with nsdelegate; without it, a descriptor of a cgroup directory
//     above the run cgroup would be enough, so none may be passed in.)
//   - it cannot see or signal childflow or any process outside its own tree
//     (PID namespace, fresh /proc);
//   - it cannot load, list or detach BPF programs (no CAP_BPF, CAP_SYS_ADMIN,
//     CAP_NET_ADMIN), nor change routes, firewall or links of the host;
//   - it cannot open packet or raw sockets (no CAP_NET_RAW), which would send
//     frames below the cgroup hooks;
//   - it cannot undo the mounts (no CAP_SYS_ADMIN), load kernel modules, use
//     raw I/O ports or /dev/mem, ptrace outside its credentials, or reboot or
//     kexec the machine.
//
// What it does not guarantee:
//   - a root command can still kill, trace and alter every process it can
//     see, which is its own tree;
//   - it keeps root's file access: it can read and write any file of the host,
//     including block devices under /dev (CAP_MKNOD is kept, since builds
//     create device nodes in images and root can open the existing nodes
//     anyway);
//   - it can still write the sysctls under /proc/sys that check nothing but
//     file permissions;
//   - cgroup v1 hierarchies stay as they are (they hold no BPF programs);
//   - it can still create user namespaces where it holds every capability;
//     mounts it inherits there are locked, /proc and cgroup2 cannot be mounted
//     for namespaces it does not own, and a new network namespace has no way
//     out;
//   - PR_SET_NO_NEW_PRIVS is not set, because builds call sudo and other
//     set-user-ID programs; the bounding set still limits what they regain;
//   - without confinement none of this applies: only the hosts file and the
//     credentials change.
package sandbox

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"syscall"
)

// envVar carries the init's configuration from Command to MaybeInit. The init
// removes it before it starts the command.
const envVar = "CHILDFLOW_SANDBOX"

// initArg0 is the init's argv[0]; MaybeInit uses it to notice a caller that
// lost the configuration variable by replacing cmd.Env.
const initArg0 = "childflow-sandbox"

// Config says how to prepare the command's surroundings.
type Config struct {
	// HostsFile is a hosts(5) file bind-mounted read-only over /etc/hosts
	// for the tree alone; "" leaves /etc/hosts alone.
	HostsFile string
	// Confine adds new cgroup and PID namespaces, a fresh /proc, a read-only
	// cgroup2 and drops capabilities (see the package documentation).
	Confine bool
	// KeepCaps keeps every capability when confining.
	KeepCaps bool
	// Cred is the identity the command runs as; nil keeps root. The init
	// switches to it after the mounts, right before the command starts.
	Cred *syscall.Credential
	// Listener, when set, is one end of a Unix socket pair: the init
	// installs a seccomp filter that hands the tree's connect calls to a
	// supervisor (package seccomp), first thing, and sends the listener (or
	// why there is none) over it with seccomp.SendListener. The caller keeps
	// the other end, receives with seccomp.ReceiveListener right after the
	// start, and closes Listener then. The command does not inherit it.
	Listener *os.File `json:"-"`
}

// initConfig is what the init receives, JSON-encoded in envVar.
type initConfig struct {
	Config
	Path string   `json:"path"`
	Argv []string `json:"argv"`
	// ListenerFD is the init's descriptor of Config.Listener (0: none).
	ListenerFD int `json:"listener_fd,omitempty"`
}

// Needed reports whether cfg asks for anything that needs the init. When it
// does not, start the command directly (with SysProcAttr.Credential).
func Needed(cfg Config) bool {
	return cfg.HostsFile != "" || cfg.Confine || cfg.Listener != nil
}

// Command returns a command that runs the init, which prepares the
// surroundings cfg asks for and then runs path with argv (path is used as is,
// not looked up). The caller sets Stdin, Stdout, Stderr and Dir, adds the
// command's environment and starts it, typically into the run cgroup:
//
//	cmd.Env = slices.Concat(env, cmd.Env) // keep the init's variable last
//	cmd.SysProcAttr.UseCgroupFD = true
//	cmd.SysProcAttr.CgroupFD = cg.FD()
//	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
//
// cmd.Env holds exactly one entry, the init's configuration, which the init
// removes again; replacing cmd.Env instead of adding to it makes the init fail
// with exit code 126. Credential must stay unset: the init switches identity
// itself, after mounting, and then sets the parent-death signal to SIGKILL
// again (the kernel clears it on a credential change). With cfg.Confine,
// signals sent to cmd.Process are forwarded to the command. Descriptors the
// caller adds to ExtraFiles reach the command (after cfg.Listener, which the
// init closes); never pass one of a cgroup directory.
func Command(cfg Config, path string, argv []string) (*exec.Cmd, error) {
	if path == "" || len(argv) == 0 {
		return nil, errors.New("create sandbox command: empty command")
	}

	ic := initConfig{Config: cfg, Path: path, Argv: argv}
	var extra []*os.File
	if cfg.Listener != nil {
		extra = append(extra, cfg.Listener)
		ic.ListenerFD = 3 // the first of ExtraFiles
	}

	b, err := json.Marshal(ic)
	if err != nil {
		return nil, fmt.Errorf("encode sandbox configuration for %s: %w", path, err)
	}

	flags := uintptr(syscall.CLONE_NEWNS)
	if cfg.Confine {
		flags |= syscall.CLONE_NEWCGROUP | syscall.CLONE_NEWPID
	}

	cmd := &exec.Cmd{
		Path:        "/proc/self/exe",
		Args:        []string{initArg0},
		Env:         []string{envVar + "=" + string(b)},
		SysProcAttr: &syscall.SysProcAttr{Cloneflags: flags},
		ExtraFiles:  extra,
	}

	return cmd, nil
}

// fail prints err as the init's one line and returns code.
func fail(code int, err error) int {
	fmt.Fprintf(os.Stderr, "childflow: sandbox: %v\n", err)

	return code
}
