package trace

import (
	"net/netip"
	"sync"
	"syscall"

	"github.com/childflow/childflow/flows"
	"github.com/childflow/childflow/loader"
	"github.com/childflow/childflow/policy"
	"github.com/childflow/childflow/proxy"
	"github.com/childflow/childflow/sniff"
)

// flowState is what the translator remembers of one socket.
type flowState struct {
	attempted bool // guarded by translator.mu
	result    bool
	names     []string
	server    string

	// Of a socket the joiner connected to the proxy (guarded by
	// translator.mu): its connect_result while the connect_attempt has not
	// come yet, and the bytes of the proxy handshake.
	pending *flows.ConnectResult
	shake   proxy.Exchanged
}

// translator turns the kernel's control events into flow-log events. It is
// used by the event reader goroutine alone, except for names, which the
// relay reads.
type translator struct {
	sink   flows.Sink
	policy *policy.Policy
	names  func(netip.Addr) []string
	viol   *violations

	mu    sync.Mutex
	flows map[uint64]*flowState
	comms map[uint32]string // process names seen, by pid
}

func newTranslator(sink flows.Sink, p *policy.Policy, names func(netip.Addr) []string, v *violations) *translator {
	if names == nil {
		names = func(netip.Addr) []string { return nil }
	}

	return &translator{sink: sink, policy: p, names: names, viol: v,
		flows: make(map[uint64]*flowState), comms: make(map[uint32]string)}
}

// protoName names a transport protocol as the flow log does; raw IP
// sockets and anything else are "raw".
func protoName(p uint8) string {
	switch p {
	case syscall.IPPROTO_TCP:
		return "tcp"
	case syscall.IPPROTO_UDP:
		return "udp"
	case syscall.IPPROTO_ICMP:
		return "icmpv4"
	case syscall.IPPROTO_ICMPV6:
		return "icmpv6"
	}
	return "raw"
}

func remoteOf(proto string, dst netip.AddrPort) flows.Remote {
	return flows.Remote{
		Protocol:   proto,
		RemoteAddr: dst.String(),
		RemoteIP:   dst.Addr().String(),
		RemotePort: int(dst.Port()),
	}
}

func (t *translator) state(cookie uint64) *flowState {
	t.mu.Lock()
	defer t.mu.Unlock()

	s := t.flows[cookie]
	if s == nil {
		s = &flowState{}
		t.flows[cookie] = s
	}

	return s
}

func (t *translator) forget(cookie uint64) {
	t.mu.Lock()
	delete(t.flows, cookie)
	t.mu.Unlock()
}

// handle translates one kernel event.
func (t *translator) handle(e *loader.Event) {
	if e.Tgid != 0 && e.Comm != "" {
		t.mu.Lock()
		t.comms[e.Tgid] = e.Comm
		t.mu.Unlock()
	}
	switch e.Kind {
	case loader.KindConnect, loader.KindDatagram:
		t.attempt(e)
	case loader.KindConnectResult:
		t.result(e)
	case loader.KindFlowEnd:
		t.end(e)
	case loader.KindViolation:
		t.violation(e)
	case loader.KindSniff:
		if name, _ := sniff.ServerName(e.Data); name != "" {
			t.state(e.Cookie).server = name
		}
	}
}

func (t *translator) attempt(e *loader.Event) {
	s := t.state(e.Cookie)
	s.names = t.names(e.Dst.Addr())
	defer t.attempted(s)

	proto := protoName(e.Proto)
	ev := &flows.ConnectAttempt{
		Remote:   remoteOf(proto, e.Dst),
		Proc:     flows.Proc{Pid: e.Tgid, Comm: e.Comm},
		Names:    flows.Names{Names: s.names},
		ViaProxy: e.Flags&loader.FlagViaProxy != 0,
		FlowID:   e.Cookie,
		Backend:  BackendEBPF,
	}
	flows.Stamp(ev, e.Time)
	t.sink.Emit(ev)

	// A connected UDP socket has no handshake: its connect succeeded.
	if e.Kind == loader.KindConnect && e.Proto == syscall.IPPROTO_UDP {
		s.result = true
		t.emitResult(e, s, "")
	}
}

// attempted notes that the connect_attempt of s is out, and emits the
// joiner's connect_result that waited for it.
func (t *translator) attempted(s *flowState) {
	t.mu.Lock()
	s.attempted = true
	ev := s.pending
	s.pending = nil
	t.mu.Unlock()

	if ev != nil {
		t.sink.Emit(ev)
	}
}

// joined records the outcome of a connect that the joiner made on the
// program's socket: its connect_result, which follows the connect_attempt
// (the kernel reports that one through the ring buffer, maybe later), and
// the bytes of the proxy handshake, which the flow end leaves out. Safe for
// concurrent use.
func (t *translator) joined(cookie uint64, ev *flows.ConnectResult, shake proxy.Exchanged) {
	s := t.state(cookie)

	t.mu.Lock()
	s.shake = shake
	if !s.attempted {
		s.pending = ev
		ev = nil
	}
	t.mu.Unlock()

	if ev != nil {
		t.sink.Emit(ev)
	}
}

func (t *translator) result(e *loader.Event) {
	s := t.state(e.Cookie)
	if s.result || e.Flags&loader.FlagViaProxy != 0 {
		// The relay reports proxied connections with the proxy's answer.
		return
	}
	s.result = true
	msg := ""
	if e.Err != 0 {
		msg = connectError(e.Err)
	}
	t.emitResult(e, s, msg)
}

func connectError(errno uint32) string {
	switch syscall.Errno(errno) {
	case syscall.ECONNREFUSED:
		return "connection refused"
	case syscall.ETIMEDOUT:
		return "timed out"
	case syscall.EHOSTUNREACH:
		return "host unreachable"
	}

	return syscall.Errno(errno).Error()
}

func (t *translator) emitResult(e *loader.Event, s *flowState, msg string) {
	ev := &flows.ConnectResult{
		Remote:   remoteOf(protoName(e.Proto), e.Dst),
		Proc:     flows.Proc{Pid: e.Tgid, Comm: e.Comm},
		Names:    flows.Names{Names: s.names, ServerName: s.server},
		ViaProxy: e.Flags&loader.FlagViaProxy != 0,
		Status:   flows.StatusOK,
		FlowID:   e.Cookie,
	}
	if msg != "" {
		ev.Status = flows.StatusError
		ev.Error = &msg
	}
	flows.Stamp(ev, e.Time)
	t.sink.Emit(ev)
}

func (t *translator) end(e *loader.Event) {
	defer t.forget(e.Cookie)

	s := t.state(e.Cookie)
	inbound := e.Flags&loader.FlagInbound != 0
	if !s.attempted && !inbound && e.BytesOut == 0 && e.BytesIn == 0 {
		return // a socket that never talked: not a flow
	}
	if e.Dst.Port() == 0 && !e.Dst.Addr().IsValid() {
		return
	}
	if s.attempted && !s.result && e.Proto == syscall.IPPROTO_TCP &&
		e.Flags&loader.FlagViaProxy == 0 {
		// The connect failed before the handshake started (no route).
		s.result = true
		t.emitResult(e, s, "connect failed before the handshake")
	}
	if s.names == nil {
		s.names = t.names(e.Dst.Addr())
	}
	shake := t.takeJoined(s)

	ev := &flows.FlowEnd{
		Remote:     remoteOf(protoName(e.Proto), e.Dst),
		Proc:       flows.Proc{Pid: e.Tgid, Comm: e.Comm},
		Names:      flows.Names{Names: s.names, ServerName: s.server},
		FlowID:     e.Cookie,
		ViaProxy:   e.Flags&loader.FlagViaProxy != 0,
		BytesOut:   e.BytesOut - min(e.BytesOut, shake.Out),
		BytesIn:    e.BytesIn - min(e.BytesIn, shake.In),
		PacketsOut: e.PktsOut,
		PacketsIn:  e.PktsIn,
	}
	if inbound {
		ev.Direction = "in"
	}
	if !e.Start.IsZero() {
		ev.DurationMs = e.Time.Sub(e.Start).Milliseconds()
	}
	flows.Stamp(ev, e.Time)
	t.sink.Emit(ev)
}

// takeJoined emits a joiner's connect_result still waiting for its attempt
// (lost, or not reported) and returns the handshake's bytes.
func (t *translator) takeJoined(s *flowState) proxy.Exchanged {
	t.mu.Lock()
	ev, shake := s.pending, s.shake
	s.pending = nil
	t.mu.Unlock()

	if ev != nil {
		t.sink.Emit(ev)
	}

	return shake
}

func (t *translator) violation(e *loader.Event) {
	proto := protoName(e.Proto)
	names := t.names(e.Dst.Addr())
	ev := t.violationEvent(proto, e.Dst, names, policy.Reason(e.Reason), e.Rule,
		e.Flags&loader.FlagAudit != 0)
	ev.Proc = flows.Proc{Pid: e.Tgid, Comm: e.Comm}
	ev.Count = uint64(max(e.Count, 1))
	if e.Count > 1 {
		ev.Repeated = true
	}
	flows.Stamp(ev, e.Time)
	t.viol.add(ev)
	t.sink.Emit(ev)
}

// violationEvent builds the event of a violation the kernel reported with a
// reason, using the policy's own verdict for the matched rule and text when
// it agrees.
func (t *translator) violationEvent(proto string, dst netip.AddrPort, names []string,
	reason policy.Reason, rule uint32, audit bool) *flows.PolicyViolation {
	if dst.Port() == 0 && dst.Addr().IsUnspecified() {
		// A socket refused at creation (raw IP): no destination yet.
		dst = netip.AddrPort{}
	}
	if t.policy != nil {
		var v policy.Verdict
		if proto == "tcp" {
			v = t.policy.Evaluate(dst.Addr(), names, proto)
		} else {
			v = t.policy.EvaluateNonProxyable(dst.Addr(), names, proto)
		}
		if v.Reason == reason {
			if ev := v.Violation(proto, dst, names); ev != nil {
				return ev
			}
		}
	}

	action := flows.ActionDeny
	if audit {
		action = flows.ActionAudit
	}
	ev := &flows.PolicyViolation{
		Protocol:   proto,
		RemoteStr:  dst.Addr().String(),
		Action:     action,
		ReasonCode: reason.Code(),
		Control:    reason.Control(),
		Reason:     reason.String(),
		Names:      names,
	}
	if !dst.Addr().IsValid() {
		ev.RemoteStr = ""
	} else {
		ip := dst.Addr().String()
		ev.RemoteIP = &ip
	}
	if dst.Port() != 0 {
		port := int(dst.Port())
		ev.RemotePort = &port
		ev.RemoteStr = dst.String()
	}
	if t.policy != nil && rule != 0 {
		if r, ok := t.policy.RuleByIndex(rule); ok {
			c := r.Prefix.String()
			ev.MatchedCIDR = &c
		}
	}

	return ev
}

// comm returns the last process name seen for pid.
func (t *translator) comm(pid uint32) string {
	t.mu.Lock()
	defer t.mu.Unlock()

	return t.comms[pid]
}

// violations counts violations for --fail-on-leak and the summary.
type violations struct {
	mu    sync.Mutex
	count uint64
	first string
}

func (v *violations) add(ev *flows.PolicyViolation) {
	v.mu.Lock()
	defer v.mu.Unlock()

	v.count += max(ev.Count, 1)
	if v.first == "" {
		v.first = ev.RemoteStr + " (" + ev.ReasonCode + ")"
	}
}
