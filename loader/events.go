package loader

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"

	"github.com/childflow/childflow/gen"
)

// Kind is the kind of a control event (enum cf_event_kind).
type Kind uint8

// Control event kinds.
const (
	KindConnect       Kind = 1
	KindDatagram      Kind = 2
	KindConnectResult Kind = 3
	KindFlowEnd       Kind = 4
	KindViolation     Kind = 5
	KindSniff         Kind = 6
)

// Flags of events and flows (enum cf_flag).
const (
	FlagDNSRedirect uint16 = 1 << 0
	FlagViaProxy    uint16 = 1 << 1
	FlagAudit       uint16 = 1 << 2
	FlagInbound     uint16 = 1 << 6
)

// Event is a decoded control event.
type Event struct {
	Kind     Kind
	Time     time.Time
	Start    time.Time
	Cookie   uint64
	Tgid     uint32
	Comm     string
	Proto    uint8
	Dst      netip.AddrPort
	Flags    uint16
	Err      uint32
	Reason   uint8
	Rule     uint32 // matched rule index + 1; 0 for none
	Count    uint32
	BytesOut uint64
	BytesIn  uint64
	PktsOut  uint64
	PktsIn   uint64
	Data     []byte // first payload bytes (KindSniff); valid until the next read
}

var (
	eventSize     = int(unsafe.Sizeof(gen.ChildflowCfEvent{}))
	eventHeadSize = eventSize - len(gen.ChildflowCfEvent{}.Data)
)

// ReadEvents reads control events until stop is closed (then drains what
// is left) or the Tracer is closed, calling fn for each.
func (t *Tracer) ReadEvents(stop <-chan struct{}, fn func(*Event)) error {
	rd, err := ringbuf.NewReader(t.objs.CfEvents)
	if err != nil {
		return fmt.Errorf("open event ring buffer: %w", err)
	}
	t.events = rd

	var (
		raw gen.ChildflowCfEvent
		ev  Event
		buf = make([]byte, eventSize)
	)

	return drain(rd, stop, t.eventPoll, func(sample []byte) {
		// Events without payload bytes are shorter than the struct.
		if len(sample) < eventHeadSize {
			return
		}
		n := copy(buf, sample)
		clear(buf[n:])
		if _, err := binary.Decode(buf, binary.NativeEndian, &raw); err != nil {
			return
		}
		t.decode(&raw, &ev)
		fn(&ev)
	})
}

// drain reads rd until stop is closed and nothing is left. poll, when not
// zero, bounds how long records submitted without a wakeup wait.
func drain(rd *ringbuf.Reader, stop <-chan struct{}, poll time.Duration, fn func([]byte)) error {
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-stop:
			_ = rd.Flush()
		case <-done:
		}
	}()

	var rec ringbuf.Record
	stopping := false
	for {
		if poll > 0 {
			rd.SetDeadline(time.Now().Add(poll))
		}
		err := rd.ReadInto(&rec)
		switch {
		case err == nil:
			fn(rec.RawSample)
			continue
		case errors.Is(err, ringbuf.ErrFlushed):
			stopping = true
		case errors.Is(err, os.ErrDeadlineExceeded):
		case errors.Is(err, ringbuf.ErrClosed):
			return nil
		default:
			return fmt.Errorf("read ring buffer: %w", err)
		}
		if stopping && rd.AvailableBytes() == 0 {
			return nil
		}
		if stopping {
			// Records submitted after the flush: read them without
			// waiting for a wakeup.
			rd.SetDeadline(time.Now())
		}
	}
}

func (t *Tracer) decode(raw *gen.ChildflowCfEvent, ev *Event) {
	*ev = Event{
		Kind:     Kind(raw.Kind),
		Time:     t.clock.time(raw.TsNs),
		Cookie:   raw.Cookie,
		Tgid:     raw.Tgid,
		Comm:     comm(raw.Comm),
		Proto:    raw.Proto,
		Dst:      netip.AddrPortFrom(addr(raw.Family, raw.Daddr), raw.Dport),
		Flags:    raw.Flags,
		Err:      raw.Err,
		Reason:   raw.Reason,
		Rule:     raw.Rule,
		Count:    raw.Count,
		BytesOut: raw.BytesOut,
		BytesIn:  raw.BytesIn,
		PktsOut:  raw.PktsOut,
		PktsIn:   raw.PktsIn,
	}
	if raw.StartNs != 0 {
		ev.Start = t.clock.time(raw.StartNs)
	}
	if ev.Kind == KindSniff {
		n := min(int(raw.Len), len(raw.Data))
		ev.Data = raw.Data[:n]
	}
}

func addr(family uint8, b [16]uint8) netip.Addr {
	if family == 4 {
		return netip.AddrFrom4([4]byte(b[:4]))
	}

	return netip.AddrFrom16(b)
}

func comm(c [16]int8) string {
	b := unsafe.Slice((*byte)(unsafe.Pointer(&c[0])), len(c))
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}

	return string(b)
}

// Packet is one captured packet, from the IP header.
type Packet struct {
	Time    time.Time
	Cookie  uint64
	Tgid    uint32
	Comm    string
	Len     int // length on the wire (of the whole, possibly offloaded, packet)
	Ingress bool
	Family  uint8
	Data    []byte // valid until fn returns
}

var pktHeaderSize = int(unsafe.Sizeof(gen.ChildflowCfPkt{}))

// ReadPackets reads the packet ring buffer until stop is closed (then drains
// it) or the Tracer is closed, calling fn for each packet.
func (t *Tracer) ReadPackets(stop <-chan struct{}, fn func(*Packet)) error {
	rd, err := ringbuf.NewReader(t.objs.CfPackets)
	if err != nil {
		return fmt.Errorf("open packet ring buffer: %w", err)
	}
	t.packets = rd

	var (
		hdr  gen.ChildflowCfPkt
		pkt  Packet
		prev [16]int8
		name string
	)

	return drain(rd, stop, 200*time.Millisecond, func(sample []byte) {
		if len(sample) < pktHeaderSize {
			return
		}
		if _, err := binary.Decode(sample[:pktHeaderSize], binary.NativeEndian, &hdr); err != nil {
			return
		}
		if hdr.Comm != prev {
			prev, name = hdr.Comm, comm(hdr.Comm)
		}
		n := min(int(hdr.CapLen), len(sample)-pktHeaderSize)
		pkt = Packet{
			Time:    t.clock.time(hdr.TsNs),
			Cookie:  hdr.Cookie,
			Tgid:    hdr.Tgid,
			Comm:    name,
			Len:     int(hdr.Len),
			Ingress: hdr.Dir == 1,
			Family:  hdr.Family,
			Data:    sample[pktHeaderSize : pktHeaderSize+n],
		}
		fn(&pkt)
	})
}

// Loss counts what the programs could not deliver or record.
type Loss struct {
	Events  uint64 // control events not reserved in the ring buffer
	Packets uint64 // packets not captured
	Flows   uint64 // sockets not tracked: the flow table was full
	Clients uint64 // redirected sockets not indexed: the client table was full
}

// Loss sums the per-CPU loss counters.
func (t *Tracer) Loss() (Loss, error) {
	var l Loss
	for i, dst := range []*uint64{&l.Events, &l.Packets, &l.Flows, &l.Clients} {
		var per []uint64
		if err := t.objs.CfLoss.Lookup(uint32(i), &per); err != nil {
			return l, fmt.Errorf("read loss counter %d: %w", i, err)
		}
		for _, v := range per {
			*dst += v
		}
	}

	return l, nil
}

// Client is the original destination of a socket redirected to the DNS
// forwarder or the proxy relay, found by the socket's local port.
type Client struct {
	Cookie uint64
	Tgid   uint32
	Comm   string
	Dst    netip.AddrPort
}

// Client looks up the redirected socket of the tree whose local port is port.
// proto is 6 for TCP, 17 for UDP.
func (t *Tracer) Client(port uint16, proto uint8) (Client, bool) {
	k := gen.ChildflowCfClientKey{Port: port, Proto: proto}
	var c gen.ChildflowCfClient
	if err := t.objs.CfClients.Lookup(&k, &c); err != nil {
		return Client{}, false
	}

	return Client{
		Cookie: c.Cookie,
		Tgid:   c.Tgid,
		Comm:   comm(c.Comm),
		Dst:    netip.AddrPortFrom(addr(c.Family, c.Daddr), c.Dport),
	}, true
}

// Learn records what DNS taught about ip: allowed (an allowed name resolved
// to it) or denied with reason and rule index.
func (t *Tracer) Learn(ip netip.Addr, allowed bool, reason uint8, rule uint32) error {
	k := key16(ip)
	v := gen.ChildflowCfLearned{Rule: rule, Reason: reason, Allowed: uint8(boolU32(allowed))}
	if err := t.objs.CfIps.Update(&k, &v, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("learn address %s: %w", ip, err)
	}

	return nil
}

// Forget removes what DNS taught about ip.
func (t *Tracer) Forget(ip netip.Addr) error {
	k := key16(ip)
	if err := t.objs.CfIps.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("forget address %s: %w", ip, err)
	}

	return nil
}

// Learned returns what DNS taught about ip, and false when nothing is known.
func (t *Tracer) Learned(ip netip.Addr) (allowed bool, reason uint8, ok bool) {
	k := key16(ip)
	var v gen.ChildflowCfLearned
	if err := t.objs.CfIps.Lookup(&k, &v); err != nil {
		return false, 0, false
	}

	return v.Allowed != 0, v.Reason, true
}

// fillDNSServers lists the forwarder's upstreams for the redirect.
func (t *Tracer) fillDNSServers(servers []netip.AddrPort) error {
	one := uint8(1)
	for _, s := range servers {
		k := gen.ChildflowCfDnsKey{Addr: key16(s.Addr()), Port: s.Port()}
		if err := t.objs.CfDnsSrv.Update(&k, &one, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("add dns server %s: %w", s, err)
		}
	}

	return nil
}

func key16(ip netip.Addr) [16]byte {
	ip = ip.Unmap()
	var k [16]byte
	if ip.Is4() {
		a := ip.As4()
		copy(k[:], a[:])
		return k
	}

	return ip.As16()
}

func (t *Tracer) fillPolicy(cfg Config) error {
	for _, r := range cfg.Deny {
		if err := t.putRule(r, t.objs.CfDeny4, t.objs.CfDeny6); err != nil {
			return err
		}
	}
	for _, r := range cfg.Allow {
		if err := t.putRule(r, t.objs.CfAllow4, t.objs.CfAllow6); err != nil {
			return err
		}
	}

	return nil
}

func (t *Tracer) putRule(r Rule, m4, m6 *ebpf.Map) error {
	p := r.Prefix.Masked()
	a := p.Addr().Unmap()
	var err error
	if a.Is4() {
		bits := p.Bits()
		if p.Addr().Is4In6() {
			bits -= 96
		}
		k := gen.ChildflowCfLpm4{Prefixlen: uint32(max(bits, 0)), Addr: a.As4()}
		err = m4.Update(&k, &r.Index, ebpf.UpdateAny)
	} else {
		k := gen.ChildflowCfLpm6{Prefixlen: uint32(p.Bits()), Addr: a.As16()}
		err = m6.Update(&k, &r.Index, ebpf.UpdateAny)
	}
	if err != nil {
		return fmt.Errorf("add policy rule %s: %w", p, err)
	}

	return nil
}

// PendingViolation is a sum of denied attempts that were not reported yet
// because an identical one was reported less than a second before.
type PendingViolation struct {
	Dst    netip.AddrPort
	Tgid   uint32
	Proto  uint8
	Reason uint8
	Count  uint32
}

// PendingViolations returns the de-duplicated attempts still to report.
func (t *Tracer) PendingViolations() ([]PendingViolation, error) {
	var (
		k   gen.ChildflowCfViolKey
		v   gen.ChildflowCfViol
		out []PendingViolation
	)
	it := t.objs.CfViols.Iterate()
	for it.Next(&k, &v) {
		if v.Pending == 0 {
			continue
		}
		out = append(out, PendingViolation{
			Dst:    netip.AddrPortFrom(addr(v.Family, k.Daddr), k.Dport),
			Tgid:   k.Tgid,
			Proto:  k.Proto,
			Reason: k.Reason,
			Count:  v.Pending,
		})
	}
	if err := it.Err(); err != nil {
		return out, fmt.Errorf("read violation table: %w", err)
	}

	return out, nil
}

// OpenFlows returns the flows still in the flow table, as flow-end events.
func (t *Tracer) OpenFlows() ([]Event, error) {
	var (
		k   uint64
		v   gen.ChildflowCfFlow
		out []Event
	)
	it := t.objs.CfFlows.Iterate()
	for it.Next(&k, &v) {
		raw := gen.ChildflowCfEvent{
			Kind: uint8(KindFlowEnd), Cookie: k, Tgid: v.Tgid, Comm: v.Comm,
			Daddr: v.Daddr, Dport: v.Dport, Family: v.Family, Proto: v.Proto,
			Flags: v.Flags, StartNs: v.StartNs, BytesOut: v.BytesOut, BytesIn: v.BytesIn,
			PktsOut: v.PktsOut, PktsIn: v.PktsIn,
		}
		var ev Event
		t.decode(&raw, &ev)
		ev.Time = time.Now()
		out = append(out, ev)
	}
	if err := it.Err(); err != nil {
		return out, fmt.Errorf("read flow table: %w", err)
	}

	return out, nil
}
