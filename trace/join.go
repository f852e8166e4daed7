package trace

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/childflow/childflow/flows"
	"github.com/childflow/childflow/loader"
	"github.com/childflow/childflow/proxy"
	"github.com/childflow/childflow/seccomp"
)

// maxJoins bounds the proxy handshakes the joiner runs at once; connects
// past it go through the relay.
const maxJoins = 1024

// joiner makes the tree's proxied TCP connects itself, on the program's own
// socket, while the program's connect waits (seccomp user notification): it
// connects the socket to the proxy, speaks the proxy's handshake on it and
// then lets the connect return. The program's socket is then the tunnel, and
// no relay copies its bytes. The cgroup programs still see the socket, so
// its packets, counters and flow end are the program's as before; the
// tunnel entry (loader.BeginTunnel) makes the hook judge and report the
// program's destination, and keeps the handshake, which carries the proxy's
// credentials, out of the capture.
//
// Everything else the joiner lets run as the program made it, through the
// cgroup programs: connects of other families and types, destinations that
// are not proxied, DNS, sockets it does not take (bound to a port already,
// or passed in from outside the run cgroup), and connects past maxJoins;
// the cgroup programs send the proxied ones among them to the relay.
type joiner struct {
	l      *seccomp.Listener
	svc    *services
	tracer *loader.Tracer
	tr     *translator
	log    *slog.Logger
	proxy  string // the proxy as events show it

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	slots  chan struct{}

	netns netnsID // childflow's: a socket elsewhere is not joined

	joined, failed, passed atomic.Uint64
}

func newJoiner(fd int, svc *services, t *loader.Tracer, tr *translator,
	log *slog.Logger) (*joiner, error) {
	own, err := ownNetns()
	if err != nil {
		_ = unix.Close(fd)
		return nil, err
	}
	l, err := seccomp.NewListener(fd)
	if err != nil {
		return nil, err
	}

	j := &joiner{l: l, svc: svc, tracer: t, tr: tr, log: log, proxy: svc.dialer.Redacted(),
		slots: make(chan struct{}, maxJoins), netns: own}
	j.ctx, j.cancel = context.WithCancel(context.Background())
	go func() {
		if err := l.Serve(j.dispatch); err != nil {
			// Unanswered connects would hang the tree: with the listener
			// closed they fail (ENOSYS) instead.
			log.Error("connect interception stopped; the command's connects fail", "err", err)
			_ = l.Close()
		}
	}()

	return j, nil
}

// close ends the handshakes in flight and the listener. Call it once the
// tree is gone: connects still waiting then fail with ENOSYS.
func (j *joiner) close() {
	j.cancel()
	_ = j.l.Close()
	j.wg.Wait()
	j.log.Debug("connect interception ended", "joined", j.joined.Load(),
		"failed", j.failed.Load(), "passed", j.passed.Load())
}

// dispatch decides at once, on the listener's goroutine, about the connects
// the joiner does not make (most of them: Unix sockets, loopback, DNS), and
// hands the others to a goroutine each.
func (j *joiner) dispatch(n seccomp.Notif) {
	args, err := seccomp.ReadConnectArgs(n)
	if err != nil || !args.Addr.IsValid() {
		j.pass(n)
		return
	}
	dst := netip.AddrPortFrom(args.Addr.Addr().Unmap(), args.Addr.Port())
	if !j.wanted(dst) {
		j.pass(n)
		return
	}

	select {
	case j.slots <- struct{}{}:
	default:
		j.pass(n)
		return
	}

	j.wg.Add(1)
	go func() {
		defer func() {
			<-j.slots
			j.wg.Done()
		}()
		j.handle(n, args, dst)
	}()
}

// pass lets the connect run as the program made it.
func (j *joiner) pass(n seccomp.Notif) {
	j.passed.Add(1)
	if err := j.l.Continue(n.ID); err != nil && !errors.Is(err, seccomp.ErrGone) {
		j.log.Debug("let a connect go on", "pid", n.Pid, "err", err)
	}
}

func (j *joiner) handle(n seccomp.Notif, args seccomp.ConnectArgs, dst netip.AddrPort) {
	s, ok := j.take(n, args, dst)
	if !ok {
		j.pass(n)
		return
	}
	defer unix.Close(s.fd)

	errno := j.join(s)
	if err := j.l.Respond(n.ID, errno); err != nil && !errors.Is(err, seccomp.ErrGone) {
		j.log.Debug("answer a connect", "pid", n.Pid, "err", err)
	}
}

// joinSock is a program's socket the joiner connects.
type joinSock struct {
	fd     int // childflow's duplicate
	family int
	tid    uint32
	thread seccomp.Thread
	dst    netip.AddrPort // where the program wanted to go (IPv4 unmapped)
	proxy  netip.AddrPort // the proxy, in the socket's family
	cookie uint64
}

// take takes the program's socket for the joiner. When it does, the
// socket is registered as a tunnel and its descriptor is the caller's to
// close.
func (j *joiner) take(n seccomp.Notif, args seccomp.ConnectArgs,
	dst netip.AddrPort) (*joinSock, bool) {
	if !j.l.Valid(n.ID) {
		return nil, false
	}

	fd, err := seccomp.DupFD(n.Pid, args.FD)
	if err != nil {
		j.log.Debug("take a program's socket", "pid", n.Pid, "err", err)
		return nil, false
	}
	s := &joinSock{fd: fd, family: int(args.Family), tid: n.Pid, dst: dst}
	if !j.fill(s) {
		_ = unix.Close(fd)
		return nil, false
	}

	return s, true
}

// wanted tells whether a TCP connect to dst goes through the proxy, as the
// cgroup programs decide it; DNS goes to the forwarder instead.
func (j *joiner) wanted(dst netip.AddrPort) bool {
	if dst.Addr().IsUnspecified() || !j.svc.proxied(dst.Addr()) {
		return false
	}
	if j.svc.fwd == nil {
		return true
	}

	if dst.Port() == 53 {
		return false
	}
	for _, srv := range j.svc.dnsServers() {
		if srv.Addr().Unmap() == dst.Addr() && srv.Port() == dst.Port() {
			return false
		}
	}

	return true
}

// fill checks the socket (a TCP socket of the connect's family, never
// connected nor bound, routed as childflow's own), finds the proxy's address
// for it and registers the tunnel.
func (j *joiner) fill(s *joinSock) bool {
	family := s.family
	if !joinable(s.fd, family) || !routedAsOwn(s.fd, family, j.netns) {
		return false
	}

	v6only := false
	if family == unix.AF_INET6 {
		v, err := unix.GetsockoptInt(s.fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY)
		if err != nil {
			return false
		}
		v6only = v != 0
	}
	addr, ok, err := j.svc.dialer.ProxyAddr(j.ctx, family, v6only)
	if err != nil || !ok {
		return false // the relay reaches the proxy, or says why not
	}
	s.proxy = addr

	// A socket the hooks do not see (passed in from outside the run cgroup)
	// would reach the proxy unpoliced: it goes on as the program made it.
	cookie, err := unix.GetsockoptUint64(s.fd, unix.SOL_SOCKET, unix.SO_COOKIE)
	if err != nil || !j.tracer.Tracked(cookie) {
		return false
	}
	s.cookie = cookie
	if s.thread, err = seccomp.ReadThread(s.tid); err != nil {
		return false
	}

	err = j.tracer.BeginTunnel(loader.Tunnel{Cookie: cookie, Tgid: s.thread.Tgid, Pid: s.tid,
		Comm: s.thread.Comm, Dst: s.dst})
	if err != nil {
		j.log.Debug("register a tunnel", "err", err)
		return false
	}

	return true
}

// joinable tells whether fd is a TCP socket of family in its first state,
// not bound: one the joiner can connect as the program would have. A socket
// bound to an address or port, or connecting already, is left alone.
func joinable(fd, family int) bool {
	domain, err1 := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	typ, err2 := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	proto, err3 := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PROTOCOL)
	if err1 != nil || err2 != nil || err3 != nil || domain != family ||
		typ != unix.SOCK_STREAM || proto != unix.IPPROTO_TCP {
		return false
	}

	info, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
	if err != nil || info.State != tcpClose {
		return false
	}
	sa, err := unix.Getsockname(fd)

	return err == nil && unbound(sa)
}

const tcpClose = 7 // TCP_CLOSE: a socket never connected

func unbound(sa unix.Sockaddr) bool {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return a.Port == 0 && a.Addr == [4]byte{}
	case *unix.SockaddrInet6:
		return a.Port == 0 && a.Addr == [16]byte{}
	}

	return false
}

// join connects the socket through the proxy and returns the errno for the
// program's connect.
func (j *joiner) join(s *joinSock) unix.Errno {
	origin := proxy.Origin{
		Target: j.svc.proxyTarget(s.dst),
		Proc:   flows.Proc{Pid: s.thread.Tgid, Comm: s.thread.Comm},
		FlowID: s.cookie,
	}

	shake, err := j.open(s, origin.Target)
	denied := errors.Is(err, unix.EPERM) && !j.tracer.TunnelOpen(s.cookie)
	if err := j.tracer.EndTunnel(s.cookie); err != nil {
		j.log.Debug("remove a tunnel", "err", err)
	}
	if denied {
		return unix.EPERM // the policy said no, and the hook reported it
	}

	j.tr.joined(s.cookie, proxy.NewConnectResult(origin, j.proxy, err), shake)
	if err != nil {
		j.failed.Add(1)
		disconnect(s.fd)
		return connectErrno(err)
	}
	j.joined.Add(1)

	return 0
}

// open connects the socket to the proxy and asks for the tunnel. The
// socket's file status flags (O_NONBLOCK) are the program's, and are
// restored.
func (j *joiner) open(s *joinSock, t proxy.Target) (proxy.Exchanged, error) {
	flags, err := unix.FcntlInt(uintptr(s.fd), unix.F_GETFL, 0)
	if err != nil {
		return proxy.Exchanged{}, err
	}
	if _, err := unix.FcntlInt(uintptr(s.fd), unix.F_SETFL, flags|unix.O_NONBLOCK); err != nil {
		return proxy.Exchanged{}, err
	}
	defer unix.FcntlInt(uintptr(s.fd), unix.F_SETFL, flags)

	// An *os.File of a non-blocking descriptor waits in the runtime's
	// poller; net.FileConn would also set TCP_NODELAY and keep-alive on the
	// program's socket.
	dup, err := unix.Dup(s.fd)
	if err != nil {
		return proxy.Exchanged{}, err
	}
	f := os.NewFile(uintptr(dup), "program socket")
	defer f.Close()

	ictx, interrupt := context.WithCancelCause(j.ctx)
	defer interrupt(nil)
	go watchSignals(ictx, interrupt, s.tid)

	ctx, cancel := context.WithTimeout(ictx, j.svc.dialer.Timeout())
	defer cancel()
	err = connectFile(ctx, f, s.proxy)
	if err != nil {
		err = j.svc.dialer.ConnectError(ctx, err)
	} else if !routingUnchanged(s.fd, s.family) {
		err = errRerouted
	}
	var shake proxy.Exchanged
	if err == nil {
		shake, err = j.svc.dialer.Tunnel(ictx, f, t)
	}
	if err != nil && errors.Is(context.Cause(ictx), errInterrupted) {
		err = errInterrupted
	}

	return shake, err
}

// errInterrupted ends a proxy handshake whose program thread got a signal
// it handles: a connect it waits in would return EINTR.
var errInterrupted = errors.New("interrupted by a signal before the proxy answered")

// signalPoll is how often a handshake that takes long looks for signals.
const signalPoll = 50 * time.Millisecond

// watchSignals interrupts a handshake when thread tid has a signal pending
// that would interrupt its connect, until ctx ends. The thread waits in the
// connect killably only, so without this a slow proxy would delay its
// signal handlers (Ctrl-C) by up to the proxy timeout.
func watchSignals(ctx context.Context, interrupt context.CancelCauseFunc, tid uint32) {
	tick := time.NewTicker(signalPoll)
	defer tick.Stop()

	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}

		pending, err := seccomp.SignalPending(tid)
		if err != nil {
			return // the thread is gone
		}
		if pending {
			interrupt(errInterrupted)
			return
		}
	}
}

// connectFile connects the non-blocking socket f to addr, waiting in the
// poller until the handshake ends or ctx does.
func connectFile(ctx context.Context, f *os.File, addr netip.AddrPort) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}

	var cerr error
	if err := rc.Control(func(fd uintptr) { cerr = unix.Connect(int(fd), sockaddr(addr)) }); err != nil {
		return err
	}
	if cerr != unix.EINPROGRESS {
		return cerr
	}

	stop := context.AfterFunc(ctx, func() { _ = f.SetWriteDeadline(time.Unix(1, 0)) })
	defer stop()
	err = rc.Write(func(fd uintptr) bool {
		v, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR)
		switch {
		case err != nil:
			cerr = err
		case v != 0:
			cerr = unix.Errno(v)
		default:
			info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
			if err == nil && info.State == tcpSynSent {
				return false
			}
			cerr = err
		}
		return true
	})
	if err != nil {
		return err
	}

	return cerr
}

const tcpSynSent = 2 // TCP_SYN_SENT

func sockaddr(a netip.AddrPort) unix.Sockaddr {
	if a.Addr().Is4() {
		return &unix.SockaddrInet4{Addr: a.Addr().As4(), Port: int(a.Port())}
	}

	return &unix.SockaddrInet6{Addr: a.Addr().As16(), Port: int(a.Port())}
}

// disconnect returns a socket whose tunnel failed to its first state
// (connect with AF_UNSPEC), resetting the proxy's side, so that the program
// holds what a failed connect leaves: an unconnected socket.
func disconnect(fd int) {
	var sa [16]byte // sa_family AF_UNSPEC
	_, _, _ = unix.Syscall(unix.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(&sa[0])),
		uintptr(len(sa)))
}

// connectErrno is what the program's connect returns when the tunnel
// failed: EINTR when a signal interrupted it, the error of the connect to
// the proxy, ETIMEDOUT when the proxy did not answer in time, and
// ECONNREFUSED when it refused.
func connectErrno(err error) unix.Errno {
	if errors.Is(err, errInterrupted) {
		return unix.EINTR
	}

	var pe *proxy.Error
	if errors.As(err, &pe) && pe.Timeout() {
		return unix.ETIMEDOUT
	}

	var errno syscall.Errno
	if errors.As(err, &errno) && pe != nil && pe.Stage == proxy.StageDial {
		return errno
	}

	return unix.ECONNREFUSED
}
