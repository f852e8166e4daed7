package trace

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/childflow/childflow/cgroupnet"
	"github.com/childflow/childflow/flows"
	"github.com/childflow/childflow/loader"
	"github.com/childflow/childflow/policy"
	"github.com/childflow/childflow/sandbox"
	"github.com/childflow/childflow/seccomp"
)

// chooseBackend resolves "auto" and the older tool's backend names. This is
// the one place where the eBPF → rootless fallback is decided: auto means
// eBPF when childflow runs as root (the programs then load on every kernel
// childflow supports; doctor says why when not), rootless otherwise.
func chooseBackend(name string) (string, error) {
	switch name {
	case "", BackendAuto:
		if os.Geteuid() == 0 {
			return BackendEBPF, nil
		}
		return BackendRootless, nil
	case BackendEBPF, "rootful":
		return BackendEBPF, nil
	case BackendRootless, "rootless-internal":
		return BackendRootless, nil
	}

	return "", &UsageError{Msg: fmt.Sprintf("unknown --backend %q (use auto, ebpf or rootless)", name)}
}

// ebpfRun is the state of one run on the eBPF backend.
type ebpfRun struct {
	o      *Options
	out    *outputs
	cg     *cgroupnet.Cgroup
	tracer atomic.Pointer[loader.Tracer]
	tr     *translator
	viol   violations
	svc    *services
	start  time.Time
	hosts  string // merged hosts file for the sandbox, removed at the end

	// With a proxy the joiner can use: the sandbox init's end of the socket
	// pair it sends the connect listener over, childflow's end, and the
	// joiner serving the listener.
	handoff [2]*os.File
	joiner  *joiner
}

func runEBPF(ctx context.Context, o *Options) (*Result, error) {
	path, err := lookCommand(o.Command[0])
	if err != nil {
		return nil, err
	}
	cred, err := credential(o)
	if err != nil {
		return nil, &UsageError{Msg: err.Error()}
	}

	out, err := openOutputs(o, rawIface())
	if err != nil {
		return nil, err
	}
	r := &ebpfRun{o: o, out: out, start: time.Now()}
	res, err := r.run(ctx, path, cred)

	return complete(out, res, err)
}

func credential(o *Options) (*syscall.Credential, error) {
	if o.KeepRoot {
		return nil, nil
	}

	return sudoCredential()
}

func (r *ebpfRun) run(ctx context.Context, path string, cred *syscall.Credential) (*Result, error) {
	mount, err := cgroupnet.Mount()
	if err != nil {
		return nil, &Failure{Phase: flows.PhasePreflight, Reason: "no_cgroup2", Err: err,
			Hint: "mount cgroup2, e.g. mount -t cgroup2 none /sys/fs/cgroup, or use --backend rootless"}
	}

	svc, err := startServices(ctx, r.o, r.out.sink, &r.tracer, r.viol.add)
	if err != nil {
		return nil, err
	}
	r.svc = svc
	defer svc.close()

	t, err := loader.Load(r.loaderConfig(svc))
	if err != nil {
		return nil, loadFailure(err)
	}
	r.tracer.Store(t)
	defer t.Close()

	if r.o.HostsFile != "" {
		if r.hosts, err = mergeHosts(r.o.HostsFile); err != nil {
			return nil, &UsageError{Msg: err.Error()}
		}
		defer os.Remove(r.hosts)
	}

	cg, err := cgroupnet.Create(mount)
	if err != nil {
		return nil, &Failure{Phase: flows.PhasePreflight, Reason: "cgroup_create", Err: err,
			Hint: "run as root (sudo), or use --backend rootless"}
	}
	r.cg = cg
	defer cg.Close()

	if err := t.Attach(cg.Path); err != nil {
		return nil, &Failure{Phase: flows.PhasePreflight, Reason: "bpf_attach", Err: err,
			Hint: "childflow doctor tells which hook is missing"}
	}

	r.emitStart()
	r.tr = newTranslator(r.out.sink, r.o.Policy, svc.namesOf, &r.viol)

	return r.trace(ctx, t, path, cred)
}

func (r *ebpfRun) loaderConfig(svc *services) loader.Config {
	cfg := loader.Config{
		Capture:    r.out.capture != nil,
		SnapLen:    r.o.SnapLen,
		PacketRing: r.o.PacketRing,
		EventBatch: 64 << 10,
	}
	cfg.DNSPort4, cfg.DNSPort6 = svc.dnsPorts()
	cfg.DNSServers = svc.dnsServers()
	cfg.ProxyPort4, cfg.ProxyPort6 = svc.relayPorts()
	if p := r.o.Policy; p != nil {
		cfg.Policy = policyFlags(p.Config(), r.o.ProxyLoopback)
		for _, rule := range p.DenyPrefixes() {
			cfg.Deny = append(cfg.Deny, loader.Rule{Prefix: rule.Prefix, Index: rule.Index})
		}
		for _, rule := range p.AllowPrefixes() {
			cfg.Allow = append(cfg.Allow, loader.Rule{Prefix: rule.Prefix, Index: rule.Index})
		}
	} else if r.o.ProxyLoopback {
		cfg.Policy = loader.PolicyProxyLoopback
	}

	return cfg
}

func policyFlags(c policy.Config, proxyLoopback bool) uint32 {
	f := loader.PolicyActive
	set := func(on bool, bit uint32) {
		if on {
			f |= bit
		}
	}
	set(c.Offline, loader.PolicyOffline)
	set(c.BlockPrivate, loader.PolicyBlockPrivate)
	set(c.BlockMetadata, loader.PolicyBlockMetadata)
	set(c.DefaultDeny, loader.PolicyDefaultDeny)
	set(c.ProxyOnly, loader.PolicyProxyOnly)
	set(c.Audit, loader.PolicyAudit)
	set(proxyLoopback, loader.PolicyProxyLoopback)

	return f
}

func (r *ebpfRun) emitStart() {
	ev := &flows.RunStart{Backend: BackendEBPF, Command: r.o.Command, Version: Version}
	if r.o.Policy != nil {
		ev.Controls = r.o.Policy.Controls()
	}
	r.out.sink.Emit(ev)
}

// trace starts the readers and the command, waits for the tree, and
// finishes the outputs.
func (r *ebpfRun) trace(ctx context.Context, t *loader.Tracer, path string,
	cred *syscall.Credential) (*Result, error) {
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var readErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		readErr = t.ReadEvents(stop, r.tr.handle)
	}()
	if r.out.capture != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = t.ReadPackets(stop, r.writePacket)
		}()
	}

	res := &Result{Backend: BackendEBPF}
	cmd, err := r.command(path, cred)
	if err == nil {
		err = cmd.Start()
	}
	if err == nil {
		err = r.startJoiner(t, cmd, res)
	}
	r.closeHandoff()
	if err != nil {
		close(stop)
		wg.Wait()
		return nil, &Failure{Phase: flows.PhaseChildBootstrap, Reason: "spawn", Err: fmt.Errorf("start %s: %w", path, err)}
	}

	state := r.wait(ctx, cmd)
	res.ExitCode, res.Signal = exitCode(state)
	res.Duration = time.Since(r.start)

	// What the command left behind (daemons) dies with the cgroup.
	if err := r.cg.Kill(5 * time.Second); err != nil {
		res.Warnings = append(res.Warnings, err.Error())
	}
	if r.joiner != nil {
		r.joiner.close()
	}
	r.settle(t)
	close(stop)
	wg.Wait()
	if readErr != nil {
		res.Warnings = append(res.Warnings, readErr.Error())
	}

	r.finish(t, res)

	return res, nil
}

// command builds the command's process: directly inside the run cgroup, or
// through the sandbox init when a hosts file or confinement is wanted.
func (r *ebpfRun) command(path string, cred *syscall.Credential) (*exec.Cmd, error) {
	sc := sandbox.Config{HostsFile: r.hosts, Cred: cred, Confine: r.confine(cred)}
	if r.joins() {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("create socket pair for the connect listener: %w", err)
		}
		r.handoff = [2]*os.File{os.NewFile(uintptr(fds[0]), "listener handoff (init)"),
			os.NewFile(uintptr(fds[1]), "listener handoff")}
		sc.Listener = r.handoff[0]
	}
	cmd := &exec.Cmd{Path: path, Args: r.o.Command,
		SysProcAttr: &syscall.SysProcAttr{Credential: cred}}
	if sandbox.Needed(sc) {
		var err error
		if cmd, err = sandbox.Command(sc, path, r.o.Command); err != nil {
			return nil, err
		}
	}
	env := r.o.Env
	if env == nil {
		env = os.Environ()
	}
	cmd.Env = slices.Concat(env, cmd.Env) // the sandbox's variable stays last
	cmd.Dir, cmd.Stdin, cmd.Stdout, cmd.Stderr = r.o.Dir, r.o.Stdin, r.o.Stdout, r.o.Stderr
	cmd.SysProcAttr.UseCgroupFD = true
	cmd.SysProcAttr.CgroupFD = r.cg.FD()
	// If childflow dies, the command must not outlive it untraced; the
	// next run sweeps the cgroup.
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL

	return cmd, nil
}

// joins tells whether the joiner makes the tree's proxied connects: with a
// proxy that can hand its tunnel over (not https), unless the relay is
// asked for.
func (r *ebpfRun) joins() bool {
	return r.svc.dialer != nil && r.svc.dialer.Joinable() && !r.o.ProxyRelay
}

// startJoiner takes the connect listener from the sandbox init and serves
// it. When the init could not install the filter, the relay serves every
// proxied connect, and a warning says why.
func (r *ebpfRun) startJoiner(t *loader.Tracer, cmd *exec.Cmd, res *Result) error {
	if r.handoff[1] == nil {
		return nil
	}
	_ = r.handoff[0].Close()
	r.handoff[0] = nil

	fd, err := seccomp.ReceiveListener(int(r.handoff[1].Fd()), 10*time.Second)
	if errors.Is(err, seccomp.ErrNoListener) {
		res.Warnings = append(res.Warnings, fmt.Sprintf("%v: proxied connections go "+
			"through the relay (one more hop)", err))
		return nil
	}
	if err == nil {
		r.joiner, err = newJoiner(fd, r.svc, t, r.tr, r.o.Logger)
	}
	if err != nil {
		_ = cmd.Process.Kill()
		_, _ = cmd.Process.Wait()
		return err
	}

	return nil
}

func (r *ebpfRun) closeHandoff() {
	for i, f := range r.handoff {
		if f != nil {
			_ = f.Close()
			r.handoff[i] = nil
		}
	}
}

// confine tells whether the command gets its own cgroup, PID and mount
// namespaces and loses the capabilities that could lift the policy: when a
// policy is active and the command runs as root, unless --keep-caps.
func (r *ebpfRun) confine(cred *syscall.Credential) bool {
	return r.o.Policy != nil && !r.o.KeepCaps && cred == nil && os.Geteuid() == 0
}

// wait waits for the command, forwarding signals to it.
func (r *ebpfRun) wait(ctx context.Context, cmd *exec.Cmd) *os.ProcessState {
	done := make(chan struct{})
	var state *os.ProcessState
	go func() {
		state, _ = cmd.Process.Wait()
		close(done)
	}()

	for {
		select {
		case <-done:
			return state
		case sig := <-r.o.Signals:
			_ = cmd.Process.Signal(sig)
		case <-ctx.Done():
			_ = cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-done:
				return state
			case <-time.After(2 * time.Second):
				_ = cmd.Process.Kill()
			}
		}
	}
}

// settle gives sockets that the dead tree left closing (FIN sent, waiting
// for the last ACK) a moment to end, so their flow_end carries final counts.
func (r *ebpfRun) settle(t *loader.Tracer) {
	deadline := time.Now().Add(300 * time.Millisecond)
	for time.Now().Before(deadline) {
		open, err := t.OpenFlows()
		if err != nil || !anyTalked(open) {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func anyTalked(evs []loader.Event) bool {
	for _, e := range evs {
		if e.Dst.Port() != 0 || e.BytesOut != 0 || e.BytesIn != 0 {
			return true
		}
	}

	return false
}

func (r *ebpfRun) writePacket(p *loader.Packet) {
	_ = r.out.capture.WritePacket(0, p.Time, p.Data, p.Len, p.Tgid, p.Comm)
}

// finish reports what the kernel still holds: flows still open, repeated
// violations not yet reported, and losses.
func (r *ebpfRun) finish(t *loader.Tracer, res *Result) {
	open, _ := t.OpenFlows()
	for i := range open {
		e := &open[i]
		if e.Dst.Port() == 0 && e.BytesOut == 0 && e.BytesIn == 0 {
			continue
		}
		r.tr.end(e)
	}

	pending, _ := t.PendingViolations()
	for _, p := range pending {
		proto := protoName(p.Proto)
		ev := r.tr.violationEvent(proto, p.Dst, r.svc.namesOf(p.Dst.Addr()),
			policy.Reason(p.Reason), 0, r.o.Policy != nil && r.o.Policy.Config().Audit)
		ev.Proc = flows.Proc{Pid: p.Tgid, Comm: r.tr.comm(p.Tgid)}
		ev.Count = uint64(p.Count)
		ev.Repeated = true
		r.viol.add(ev)
		r.out.sink.Emit(ev)
	}

	loss, err := t.Loss()
	if err != nil {
		res.Warnings = append(res.Warnings, err.Error())
	}
	res.Loss = loss
	r.emitLoss("events", loss.Events, "control events the ring buffer could not take")
	r.emitLoss("packets", loss.Packets, "packets the capture ring buffer could not take")
	r.emitLoss("flows", loss.Flows, "sockets not tracked: the flow table was full")
	r.emitLoss("clients", loss.Clients, "redirected sockets not indexed: the client table was full")
	if r.out.capture != nil {
		r.out.capture.AddDropped(0, loss.Packets)
	}
	endRun(r.out, r.svc, &r.viol, res)
}

func (r *ebpfRun) emitLoss(source string, n uint64, detail string) {
	if n == 0 {
		return
	}
	r.out.sink.Emit(&flows.Loss{Source: source, Count: n, Detail: detail})
}

// loadFailure explains why the programs did not load. Lack of privileges is
// the common case and gets the same words as doctor's privilege check.
func loadFailure(err error) error {
	hint := "run as root (sudo), or use --backend rootless"
	if errors.Is(err, loader.ErrPermission) || errors.Is(err, os.ErrPermission) {
		return &Failure{Phase: flows.PhasePreflight, Reason: "privileges", Hint: hint,
			Err: errors.New("the eBPF backend lacks privileges: CAP_BPF or CAP_NET_ADMIN is not effective")}
	}

	return &Failure{Phase: flows.PhasePreflight, Reason: "bpf_load", Err: err, Hint: hint}
}
