package rootless

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/childflow/childflow/flows"
)

// Backend is the value of ConnectAttempt.Backend for this backend.
const Backend = "rootless"

// The addresses of the namespace: the command's side of the tap and the
// gateway that the netstack answers for.
var (
	ChildAddr4 = netip.MustParsePrefix("10.0.2.100/24")
	Gateway4   = netip.MustParseAddr("10.0.2.2")
	ChildAddr6 = netip.MustParsePrefix("fd00:cf::100/64")
	Gateway6   = netip.MustParseAddr("fd00:cf::2")
)

// TapName is the name of the tap inside the namespace.
const TapName = "cf0"

// DefaultMTU is the tap's MTU when Config.MTU is zero: large frames make the
// per-packet cost of the tap and the netstack small.
const DefaultMTU = 65520

// Config describes one command to run in the rootless namespace. Command is
// required; every callback is optional unless said otherwise. Callbacks are
// called from many goroutines at once and must be safe for concurrent use.
type Config struct {
	// Command is the program and its arguments; the program is looked up in
	// the PATH of Env.
	Command []string
	// Env is the command's environment; nil means os.Environ().
	Env []string
	// Dir is the command's working directory; empty means the current one.
	Dir string
	// Stdin, Stdout and Stderr are the command's standard files (nil: the
	// null device). Errors of the init itself are written to Stderr too.
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	// HostsFile, when set, is bind-mounted over /etc/hosts inside.
	HostsFile string
	// MTU of the tap; 0 means DefaultMTU.
	MTU int
	// Check decides whether a new flow to dst may proceed (proto "tcp",
	// "udp", "icmpv4" or "icmpv6"). proc returns the process behind it when
	// the lookup found it (always empty for ICMP); it may wait for the
	// lookup, so call it only when needed (for a violation). False denies
	// the flow: TCP gets a reset, datagrams are dropped and counted in
	// Stats.DeniedPackets. The callback emits the policy_violation itself.
	// Nil allows everything.
	Check func(proto string, dst netip.AddrPort, proc func() flows.Proc) bool
	// DialTCP opens the host side of an allowed TCP flow (directly or via a
	// proxy). Nil means a net.Dialer.
	DialTCP func(ctx context.Context, dst netip.AddrPort) (net.Conn, error)
	// DNS answers the command's DNS queries (proto "udp" or "tcp"; server
	// is the address the command asked; proc is the process of the query's
	// socket when the lookup found it, else empty; query and answer are DNS
	// messages without the TCP length prefix). When set, every flow to port
	// 53 goes here instead of being checked and dialled, and resolv.conf
	// names the gateway. When nil, port 53 is an ordinary destination and
	// the host's resolv.conf is left in place.
	DNS func(ctx context.Context, proto string, server netip.AddrPort, proc flows.Proc,
		query []byte) ([]byte, error)
	// Sink receives connect_attempt, connect_result and flow_end events.
	Sink flows.Sink
	// Capture receives every Ethernet frame at the tap, both directions.
	// It is called synchronously on the packet path and must not keep
	// frame after it returns.
	Capture func(ts time.Time, frame []byte)
	// Names returns the DNS names known for an address, for events.
	Names func(netip.Addr) []string
	// HostLoopback makes the gateway addresses reach the host's 127.0.0.1
	// and ::1 (same port); otherwise connections to the gateway are refused
	// and the host's loopback is unreachable.
	HostLoopback bool
	// Logger receives debug messages of the netstack; nil discards them.
	Logger *slog.Logger
}

// Result is the outcome of a run.
type Result struct {
	// ExitCode is the command's exit code, or 128+Signal when a signal
	// killed it, as a shell reports it.
	ExitCode int
	// Signal is the signal that killed the command, or 0.
	Signal syscall.Signal
	// Stats are the counters of the netstack side.
	Stats Stats
}

// Stats counts what the netstack forwarded. Nothing is dropped without being
// counted here.
type Stats struct {
	// Flows is the number of TCP and UDP flows allowed and dialled.
	Flows uint64
	// Denied is the number of flows that Check denied.
	Denied uint64
	// Failed is the number of host dials that failed.
	Failed uint64
	// BytesOut and BytesIn are payload bytes from and to the command.
	BytesOut, BytesIn uint64
	// DeniedPackets counts the datagrams and echo requests that Check
	// denied: not delivered, and reported as violations.
	DeniedPackets uint64
	// Dropped counts packets not delivered for other reasons: full queues,
	// datagrams to the unreachable gateway, unanswered echo requests, and
	// the netstack's own drops.
	Dropped uint64
	// Unsupported counts IP packets of protocols that the backend does not
	// forward (anything but TCP, UDP and ICMP), dropped at the tap.
	Unsupported uint64
}

// Session is a running command. Its methods are safe for concurrent use.
type Session struct {
	cfg    Config
	cmd    *exec.Cmd
	ctl    *os.File // guarded by mu once Start returned
	ctlFD  int
	tmpDir string
	log    *slog.Logger

	net *netStack

	started time.Time
	done    chan struct{}
	exitMsg chan ctlMsg
	ctlDone chan struct{}

	mu     sync.Mutex
	result *Result
	err    error
}

// Run starts cfg's command and waits for it; see Start and Session.Wait.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	s, err := Start(ctx, cfg)
	if err != nil {
		return nil, err
	}

	return s.Wait()
}

// Start runs cfg's command in new user, network, mount and PID namespaces
// behind a netstack-served tap. It returns once the command has started (or
// failed to: a command that cannot be found still returns a Session whose
// Wait reports exit code 127). Cancelling ctx kills the whole command tree.
// The caller must call Wait.
func Start(ctx context.Context, cfg Config) (*Session, error) {
	if len(cfg.Command) == 0 {
		return nil, errors.New("start rootless command: empty command")
	}

	s := &Session{cfg: cfg, log: cfg.Logger, done: make(chan struct{}),
		exitMsg: make(chan ctlMsg, 1), ctlDone: make(chan struct{})}
	s.applyDefaults()

	if err := s.spawn(); err != nil {
		s.cleanup()
		return nil, err
	}

	if err := s.handshake(); err != nil {
		s.kill()
		s.cmd.Wait()
		if s.net != nil {
			s.net.shutdown()
		}
		s.cleanup()
		return nil, err
	}

	go s.watch(ctx)

	return s, nil
}

func (s *Session) applyDefaults() {
	if s.cfg.MTU == 0 {
		s.cfg.MTU = DefaultMTU
	}
	if s.cfg.Env == nil {
		s.cfg.Env = os.Environ()
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
}

// spawn writes the files to bind-mount, then re-executes this binary as the
// init in its new namespaces.
func (s *Session) spawn() error {
	icfg, err := s.initConfig()
	if err != nil {
		return err
	}

	parent, child, err := socketPair()
	if err != nil {
		return err
	}
	defer child.Close()
	s.ctl = parent
	s.ctlFD = int(parent.Fd())

	cfgR, cfgW, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("create configuration pipe: %w", err)
	}
	defer cfgR.Close()

	s.cmd = s.initCommand(child, cfgR)
	if err := s.cmd.Start(); err != nil {
		cfgW.Close()
		return fmt.Errorf("start rootless init: %w (user namespaces may be disabled)", err)
	}
	s.started = time.Now()

	go func() {
		json.NewEncoder(cfgW).Encode(icfg)
		cfgW.Close()
	}()

	return nil
}

func (s *Session) initCommand(ctl, config *os.File) *exec.Cmd {
	cmd := exec.Command("/proc/self/exe")
	cmd.Args = []string{"childflow-init"}
	cmd.Env = []string{initEnv + "=1"}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = s.cfg.Stdin, s.cfg.Stdout, s.cfg.Stderr
	cmd.ExtraFiles = []*os.File{ctl, config}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: unix.CLONE_NEWUSER | unix.CLONE_NEWNET | unix.CLONE_NEWNS | unix.CLONE_NEWPID,
		Pdeathsig:  syscall.SIGKILL,
	}
	idMaps(cmd.SysProcAttr)

	return cmd
}

// idMaps maps the caller to root inside. Root maps every id to itself, so
// that files keep their owners; anyone else maps only their own uid and gid.
func idMaps(attr *syscall.SysProcAttr) {
	if os.Geteuid() == 0 {
		attr.UidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: 0, Size: 1<<32 - 1}}
		attr.GidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: 0, Size: 1<<32 - 1}}
		attr.GidMappingsEnableSetgroups = true
		return
	}

	attr.UidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Geteuid(), Size: 1}}
	attr.GidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getegid(), Size: 1}}
}

// initConfig prepares the init's configuration and the files it
// bind-mounts, in a temporary directory removed once the init has mounted
// them.
func (s *Session) initConfig() (*initConfig, error) {
	icfg := &initConfig{
		Command: s.cfg.Command, Env: s.cfg.Env, Dir: s.cfg.Dir, Tap: TapName, MTU: s.cfg.MTU,
		Addr4: ChildAddr4, Addr6: ChildAddr6, Gateway4: Gateway4, Gateway6: Gateway6,
	}

	if s.cfg.DNS == nil && s.cfg.HostsFile == "" {
		return icfg, nil
	}

	dir, err := os.MkdirTemp("", "childflow-rootless-")
	if err != nil {
		return nil, fmt.Errorf("create rootless temporary directory: %w", err)
	}
	s.tmpDir = dir

	if s.cfg.DNS != nil {
		icfg.ResolvConf = filepath.Join(dir, "resolv.conf")
		conf := fmt.Sprintf("# written by childflow\nnameserver %s\n", Gateway4)
		if err := os.WriteFile(icfg.ResolvConf, []byte(conf), 0o644); err != nil {
			return nil, fmt.Errorf("write %s: %w", icfg.ResolvConf, err)
		}
	}

	if s.cfg.HostsFile != "" {
		abs, err := filepath.Abs(s.cfg.HostsFile)
		if err != nil {
			return nil, fmt.Errorf("resolve hosts file %s: %w", s.cfg.HostsFile, err)
		}
		if _, err := os.Stat(abs); err != nil {
			return nil, fmt.Errorf("read hosts file: %w", err)
		}
		icfg.Hosts = abs
	}

	return icfg, nil
}

// handshake receives the tap, starts the netstack on it and lets the init
// start the command.
func (s *Session) handshake() error {
	fd := s.ctlFD
	stopTimer := s.deadline(10 * time.Second)
	defer stopTimer()

	m, fds, err := recvMsg(fd)
	if err != nil {
		return fmt.Errorf("set up rootless namespace: %w", err)
	}
	if m.Kind != msgReady || len(fds) == 0 {
		closeFDs(fds)
		if m.Kind == msgFailed {
			return fmt.Errorf("set up rootless namespace: %s", m.Text)
		}
		return fmt.Errorf("set up rootless namespace: unexpected message %q", m.Kind)
	}

	s.removeTmp()
	for _, w := range m.Warnings {
		s.log.Warn("rootless namespace setup", "warning", w)
	}

	diag := -1
	if len(fds) > 1 {
		diag = fds[1]
	}
	if err := s.startNetstack(fds[0], diag); err != nil {
		return err
	}

	return s.letGo(fd)
}

// deadline shuts the control socket down if the init does not answer in d,
// which unblocks a pending receive.
func (s *Session) deadline(d time.Duration) func() {
	t := time.AfterFunc(d, func() { unix.Shutdown(s.ctlFD, unix.SHUT_RD) })
	return func() { t.Stop() }
}

func (s *Session) startNetstack(tap, diag int) error {
	ns, err := newNetStack(tap, diag, s.cmd.Process.Pid, &s.cfg, s.log)
	if err != nil {
		return err
	}
	s.net = ns

	return nil
}

func (s *Session) letGo(fd int) error {
	if err := sendMsg(fd, ctlMsg{Kind: msgGo}); err != nil {
		return err
	}

	m, _, err := recvMsg(fd)
	if err != nil {
		return fmt.Errorf("start command: %w", err)
	}

	switch m.Kind {
	case msgStarted:
		return nil
	case msgExit:
		s.exitMsg <- m
		return nil
	case msgFailed:
		return fmt.Errorf("start command: %s", m.Text)
	}

	return fmt.Errorf("start command: unexpected message %q", m.Kind)
}

// watch waits for the init's exit report and the init itself, and kills the
// tree when ctx is cancelled first.
func (s *Session) watch(ctx context.Context) {
	go s.readExit()

	waited := make(chan error, 1)
	go func() { waited <- s.cmd.Wait() }()

	var werr error
	select {
	case werr = <-waited:
	case <-ctx.Done():
		s.kill()
		werr = <-waited
	}

	s.finish(werr)
}

func (s *Session) readExit() {
	defer close(s.ctlDone)

	for {
		m, _, err := recvMsg(s.ctlFD)
		if err != nil {
			return
		}

		if m.Kind == msgExit {
			select {
			case s.exitMsg <- m:
			default:
			}
			return
		}
	}
}

// finish computes the result, closes every flow and stops the netstack.
func (s *Session) finish(werr error) {
	res := &Result{}

	// The init reports before it exits; its end closing ends readExit.
	select {
	case <-s.ctlDone:
	case <-time.After(time.Second):
	}

	select {
	case m := <-s.exitMsg:
		res.ExitCode = m.Code
		res.Signal = syscall.Signal(m.Signal)
	default:
		res.ExitCode, res.Signal = statusOf(s.cmd.ProcessState)
	}

	if s.net != nil {
		s.net.shutdown()
		res.Stats = s.net.stats()
	}
	s.cleanup()

	s.mu.Lock()
	s.result = res
	if werr != nil && s.cmd.ProcessState == nil {
		s.err = fmt.Errorf("wait for rootless init: %w", werr)
	}
	s.mu.Unlock()
	close(s.done)
}

// statusOf is the status of the init itself, used when it died without
// reporting the command's (it was killed).
func statusOf(ps *os.ProcessState) (int, syscall.Signal) {
	if ps == nil {
		return 125, 0
	}

	ws, ok := ps.Sys().(syscall.WaitStatus)
	if ok && ws.Signaled() {
		return 128 + int(ws.Signal()), ws.Signal()
	}

	return ps.ExitCode(), 0
}

// Wait waits for the command to exit, then ends its namespace (everything
// left in it is killed), closes the open flows (their flow_end events carry
// open_at_exit) and returns the result. It may be called more than once.
func (s *Session) Wait() (*Result, error) {
	<-s.done

	s.mu.Lock()
	defer s.mu.Unlock()

	return s.result, s.err
}

// Signal delivers sig to the command (not to the init). SIGKILL kills the
// whole tree at once.
func (s *Session) Signal(sig os.Signal) error {
	ss, ok := sig.(syscall.Signal)
	if !ok {
		return fmt.Errorf("signal command: unsupported signal %v", sig)
	}

	select {
	case <-s.done:
		return os.ErrProcessDone
	default:
	}

	if ss == syscall.SIGKILL {
		s.kill()
		return nil
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ctl == nil {
		return os.ErrProcessDone
	}

	return sendMsg(s.ctlFD, ctlMsg{Kind: msgSignal, Signal: int(ss)})
}

// Stats returns the netstack counters so far.
func (s *Session) Stats() Stats {
	if s.net == nil {
		return Stats{}
	}

	return s.net.stats()
}

// kill ends the init, and with it the PID namespace and everything in it.
func (s *Session) kill() {
	if s.cmd != nil && s.cmd.Process != nil {
		s.cmd.Process.Kill()
	}
}

func (s *Session) removeTmp() {
	if s.tmpDir != "" {
		os.RemoveAll(s.tmpDir)
		s.tmpDir = ""
	}
}

func (s *Session) cleanup() {
	s.removeTmp()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ctl != nil {
		s.ctl.Close()
		s.ctl = nil
	}
}
