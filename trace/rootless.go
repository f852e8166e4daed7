package trace

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/childflow/childflow/capture"
	"github.com/childflow/childflow/dns"
	"github.com/childflow/childflow/flows"
	"github.com/childflow/childflow/loader"
	"github.com/childflow/childflow/policy"
	"github.com/childflow/childflow/rootless"
)

// rootlessRun is the state of one run on the rootless backend: the command
// in user, network and mount namespaces behind a tap served by gVisor's
// netstack, with the same services, policy and outputs as the eBPF backend.
type rootlessRun struct {
	o     *Options
	out   *outputs
	svc   *services
	viol  violations
	start time.Time
	// capMu serialises the capture: the netstack delivers frames from
	// many goroutines, and a capture.Writer takes one at a time.
	capMu sync.Mutex
}

func etherIface() capture.Interface {
	return capture.Interface{
		Name:        "cf0",
		Description: "Ethernet frames at the tap of the traced command tree (rootless)",
		LinkType:    capture.LinkTypeEthernet,
	}
}

func runRootless(ctx context.Context, o *Options) (*Result, error) {
	if _, err := lookCommand(o.Command[0]); err != nil {
		return nil, err
	}
	out, err := openOutputs(o, etherIface())
	if err != nil {
		return nil, err
	}
	r := &rootlessRun{o: o, out: out, start: time.Now()}
	res, err := r.run(ctx)

	return complete(out, res, err)
}

func (r *rootlessRun) run(ctx context.Context) (*Result, error) {
	var none atomic.Pointer[loader.Tracer]
	svc, err := startServices(ctx, r.o, r.out.sink, &none, r.viol.add)
	if err != nil {
		return nil, err
	}
	r.svc = svc
	defer svc.close()

	ev := &flows.RunStart{Backend: BackendRootless, Command: r.o.Command, Version: Version}
	if r.o.Policy != nil {
		ev.Controls = r.o.Policy.Controls()
	}
	r.out.sink.Emit(ev)

	sess, err := rootless.Start(ctx, r.config())
	if err != nil {
		return nil, &Failure{Phase: flows.PhaseChildBootstrap, Reason: "rootless_start", Err: err,
			Hint: "childflow doctor checks user namespaces and /dev/net/tun"}
	}

	res := &Result{Backend: BackendRootless}
	rr := r.wait(ctx, sess)
	if rr != nil {
		res.ExitCode = rr.ExitCode
		if rr.Signal != 0 {
			res.Signal = unix.SignalName(rr.Signal)
		}
		r.emitLoss(rr.Stats)
	}
	res.Duration = time.Since(r.start)
	r.finish(res)

	return res, nil
}

// emitLoss reports what the netstack did not deliver. Denied datagrams are
// not loss: they are reported as violations.
func (r *rootlessRun) emitLoss(st rootless.Stats) {
	if st.Dropped > 0 {
		r.out.sink.Emit(&flows.Loss{Source: "netstack", Count: st.Dropped,
			Detail: "packets the rootless netstack did not deliver (full queues, unanswered echo requests)"})
	}
	if st.Unsupported > 0 {
		r.out.sink.Emit(&flows.Loss{Source: "unsupported", Count: st.Unsupported,
			Detail: "IP packets of protocols the rootless backend does not forward (only TCP, UDP and ICMP)"})
	}
}

func (r *rootlessRun) config() rootless.Config {
	cfg := rootless.Config{
		Command:      r.o.Command,
		Env:          r.o.Env,
		Dir:          r.o.Dir,
		Stdin:        r.o.Stdin,
		Stdout:       r.o.Stdout,
		Stderr:       r.o.Stderr,
		HostsFile:    r.o.HostsFile,
		Check:        r.check,
		DialTCP:      r.dial,
		Sink:         r.svc.markProxied(r.out.sink),
		Names:        r.svc.namesOf,
		HostLoopback: r.o.HostLoopback,
		Logger:       r.o.Logger,
	}
	if r.svc.fwd != nil {
		cfg.DNS = r.svc.exchange
	}
	if r.out.capture != nil {
		cfg.Capture = func(ts time.Time, frame []byte) {
			r.capMu.Lock()
			_ = r.out.capture.WritePacket(0, ts, frame, len(frame), 0, "")
			r.capMu.Unlock()
		}
	}

	return cfg
}

// check applies the policy to a new flow of the namespace and reports a
// violation, exactly as the eBPF programs do.
func (r *rootlessRun) check(proto string, dst netip.AddrPort, proc func() flows.Proc) bool {
	p := r.o.Policy
	if p == nil {
		return true
	}
	names := r.svc.namesOf(dst.Addr())
	var v policy.Verdict
	if proto == "tcp" && r.o.Proxy != nil {
		v = p.Evaluate(dst.Addr(), names, proto)
	} else {
		v = p.EvaluateNonProxyable(dst.Addr(), names, proto)
	}
	if !v.Violates() {
		return true
	}
	if ev := v.Violation(proto, dst, names); ev != nil {
		ev.Proc = proc()
		ev.Count = 1
		r.viol.add(ev)
		r.out.sink.Emit(ev)
	}

	return v.Allowed
}

// dial opens the host side of a TCP flow, through the proxy when one is set
// (loopback destinations only with --proxy-loopback).
func (r *rootlessRun) dial(ctx context.Context, dst netip.AddrPort) (net.Conn, error) {
	if r.svc.proxied(dst.Addr()) {
		return r.svc.dialer.DialContext(ctx, r.svc.proxyTarget(dst))
	}
	var d net.Dialer

	return d.DialContext(ctx, "tcp", dst.String())
}

func (r *rootlessRun) wait(ctx context.Context, sess *rootless.Session) *rootless.Result {
	done := make(chan struct{})
	var res *rootless.Result
	go func() {
		res, _ = sess.Wait()
		close(done)
	}()
	for {
		select {
		case <-done:
			return res
		case sig := <-r.o.Signals:
			_ = sess.Signal(sig)
		case <-ctx.Done():
			_ = sess.Signal(syscall.SIGTERM)
			<-done
			return res
		}
	}
}

func (r *rootlessRun) finish(res *Result) {
	endRun(r.out, r.svc, &r.viol, res)
}

// exchange sends one DNS message of the namespace to the forwarder over
// loopback, after telling the forwarder which server the program asked and
// which process asked it.
func (s *services) exchange(ctx context.Context, proto string, server netip.AddrPort, proc flows.Proc,
	query []byte) ([]byte, error) {
	addrs := s.fwd.Addrs()
	if len(addrs) == 0 {
		return nil, errors.New("dns forwarder has no address")
	}
	network := "udp"
	if proto == "tcp" {
		network = "tcp"
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, network, addrs[0].String())
	if err != nil {
		return nil, fmt.Errorf("dial dns forwarder: %w", err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	} else {
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	}

	local := netip.MustParseAddrPort(c.LocalAddr().String())
	s.rootlessClients.Store(clientKey{local.Port(), network}, dns.ClientInfo{Server: server,
		Pid: proc.Pid, Comm: proc.Comm})
	defer s.rootlessClients.Delete(clientKey{local.Port(), network})

	if network == "udp" {
		if _, err := c.Write(query); err != nil {
			return nil, err
		}
		buf := make([]byte, 65535)
		n, err := c.Read(buf)
		if err != nil {
			return nil, err
		}
		return buf[:n], nil
	}

	msg := make([]byte, 2+len(query))
	binary.BigEndian.PutUint16(msg, uint16(len(query)))
	copy(msg[2:], query)
	if _, err := c.Write(msg); err != nil {
		return nil, err
	}
	var l [2]byte
	if _, err := io.ReadFull(c, l[:]); err != nil {
		return nil, err
	}
	ans := make([]byte, binary.BigEndian.Uint16(l[:]))
	_, err = io.ReadFull(c, ans)

	return ans, err
}

type clientKey struct {
	port    uint16
	network string
}
