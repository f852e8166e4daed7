// Package loader loads childflow's eBPF programs, fills their maps, attaches
// them to a run cgroup with BPF links, and reads their ring buffers into Go
// values. It is the only user of package gen.
//
// Every program is attached with a BPF link, so closing the Tracer (or the
// process dying) detaches everything: nothing survives a run. The control
// event ring buffer is sized so that it should never overflow; the packet ring
// buffer may, under load. Every record the kernel could not reserve is counted
// in a per-CPU table that Loss reads.
package loader

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"

	"github.com/childflow/childflow/gen"
)

// Policy switches, the same bits as enum cf_policy_flag in bpf/childflow.h.
const (
	PolicyActive        uint32 = 1 << 0
	PolicyOffline       uint32 = 1 << 1
	PolicyBlockPrivate  uint32 = 1 << 2
	PolicyBlockMetadata uint32 = 1 << 3
	PolicyDefaultDeny   uint32 = 1 << 4
	PolicyProxyOnly     uint32 = 1 << 5
	PolicyAudit         uint32 = 1 << 6
	PolicyProxyLoopback uint32 = 1 << 7
)

// Rule is one CIDR rule of the policy with its stable index, which comes back
// in violations as Event.Rule.
type Rule struct {
	Prefix netip.Prefix
	Index  uint32
}

// Config sets what the programs do. Ports are those of the DNS forwarder and
// the proxy relay on 127.0.0.1 and ::1; zero disables the redirect.
type Config struct {
	Policy      uint32
	Deny, Allow []Rule

	Capture bool
	SnapLen uint32
	// PacketRing is the size in bytes of the packet ring buffer, a power of
	// two multiple of the page size. Zero means 8 MiB. User space maps the
	// ring twice, so it costs twice its size in resident memory.
	PacketRing uint32

	DNSPort4, DNSPort6     uint16
	ProxyPort4, ProxyPort6 uint16
	// DNSServers are the forwarder's upstreams: what the tree sends to
	// them is redirected to the forwarder like port 53 (at most 16).
	DNSServers []netip.AddrPort

	// EventBatch, when not zero, lets control events pile up to this many
	// bytes before the reader is woken; the reader then also polls every
	// EventPoll (default 20 ms). Zero wakes the reader on every event.
	EventBatch uint64
	EventPoll  time.Duration
}

// Tracer owns the loaded programs and maps and the links that attach them.
// Close releases everything; it is safe to call more than once.
type Tracer struct {
	objs    gen.ChildflowObjects
	links   []link.Link
	clock   clockOffset
	events  *ringbuf.Reader
	packets *ringbuf.Reader

	eventPoll time.Duration
}

// ErrPermission means the programs could not be loaded for lack of
// privileges (CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON).
var ErrPermission = errors.New("not permitted to load BPF programs")

// Load loads the programs with cfg and fills the policy maps. The Tracer is
// not attached yet.
func Load(cfg Config) (*Tracer, error) {
	// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK.
	_ = rlimit.RemoveMemlock()

	spec, err := gen.LoadChildflow()
	if err != nil {
		return nil, fmt.Errorf("read embedded BPF objects: %w", err)
	}
	if err := configure(spec, cfg); err != nil {
		return nil, err
	}

	t := &Tracer{clock: newClockOffset(), eventPoll: cfg.EventPoll}
	if cfg.EventBatch != 0 && t.eventPoll == 0 {
		t.eventPoll = 20 * time.Millisecond
	}
	coll, err := loadParallel(spec)
	if err == nil {
		err = coll.Assign(&t.objs)
		coll.Close() // what Assign did not take
	}
	if err != nil {
		if errors.Is(err, unix.EPERM) {
			return nil, fmt.Errorf("load BPF programs: %w: %w", ErrPermission, err)
		}
		return nil, fmt.Errorf("load BPF programs: %w", err)
	}
	if err := t.fillPolicy(cfg); err != nil {
		t.Close()
		return nil, err
	}
	if err := t.fillDNSServers(cfg.DNSServers); err != nil {
		t.Close()
		return nil, err
	}

	return t, nil
}

func configure(spec *ebpf.CollectionSpec, cfg Config) error {
	snap := cfg.SnapLen
	if snap == 0 || snap > 65536 {
		snap = 65536
	}
	vars := map[string]any{
		gen.ChildflowVarCfCfgPolicy:      cfg.Policy,
		gen.ChildflowVarCfCfgCapture:     boolU32(cfg.Capture),
		gen.ChildflowVarCfCfgSnaplen:     snap,
		gen.ChildflowVarCfCfgDns:         boolU32(cfg.DNSPort4 != 0 || cfg.DNSPort6 != 0),
		gen.ChildflowVarCfCfgDnsPort4:    cfg.DNSPort4,
		gen.ChildflowVarCfCfgDnsPort6:    cfg.DNSPort6,
		gen.ChildflowVarCfCfgProxy:       boolU32(cfg.ProxyPort4 != 0 || cfg.ProxyPort6 != 0),
		gen.ChildflowVarCfCfgProxyPort4:  cfg.ProxyPort4,
		gen.ChildflowVarCfCfgProxyPort6:  cfg.ProxyPort6,
		gen.ChildflowVarCfCfgEventWakeup: cfg.EventBatch,
	}
	for name, v := range vars {
		if err := spec.Variables[name].Set(v); err != nil {
			return fmt.Errorf("set BPF variable %s: %w", name, err)
		}
	}

	ring := cfg.PacketRing
	if ring == 0 {
		ring = 8 << 20
	}
	if !cfg.Capture {
		// The map must exist; keep it at its smallest.
		ring = uint32(os.Getpagesize())
	}
	spec.Maps[gen.ChildflowMapCfPackets].MaxEntries = ring

	return nil
}

func boolU32(b bool) uint32 {
	if b {
		return 1
	}

	return 0
}

// AttachTypes lists the hooks in attach order: the observers first, the
// packet programs last.
var attachOrder = []struct {
	typ  ebpf.AttachType
	prog func(*gen.ChildflowPrograms) *ebpf.Program
}{
	{ebpf.AttachCGroupInetSockCreate, func(p *gen.ChildflowPrograms) *ebpf.Program { return p.CfSockCreate }},
	{ebpf.AttachCgroupInetSockRelease, func(p *gen.ChildflowPrograms) *ebpf.Program { return p.CfSockRelease }},
	{ebpf.AttachCGroupSockOps, func(p *gen.ChildflowPrograms) *ebpf.Program { return p.CfSockops }},
	{ebpf.AttachCGroupInet4Connect, func(p *gen.ChildflowPrograms) *ebpf.Program { return p.CfConnect4 }},
	{ebpf.AttachCGroupInet6Connect, func(p *gen.ChildflowPrograms) *ebpf.Program { return p.CfConnect6 }},
	{ebpf.AttachCGroupUDP4Sendmsg, func(p *gen.ChildflowPrograms) *ebpf.Program { return p.CfSendmsg4 }},
	{ebpf.AttachCGroupUDP6Sendmsg, func(p *gen.ChildflowPrograms) *ebpf.Program { return p.CfSendmsg6 }},
	{ebpf.AttachCGroupUDP4Recvmsg, func(p *gen.ChildflowPrograms) *ebpf.Program { return p.CfRecvmsg4 }},
	{ebpf.AttachCGroupUDP6Recvmsg, func(p *gen.ChildflowPrograms) *ebpf.Program { return p.CfRecvmsg6 }},
	{ebpf.AttachCGroupInetEgress, func(p *gen.ChildflowPrograms) *ebpf.Program { return p.CfEgress }},
	{ebpf.AttachCGroupInetIngress, func(p *gen.ChildflowPrograms) *ebpf.Program { return p.CfIngress }},
}

// Attach attaches every program to the cgroup at path with BPF links.
func (t *Tracer) Attach(cgroupPath string) error {
	for _, a := range attachOrder {
		prog := a.prog(&t.objs.ChildflowPrograms)
		l, err := link.AttachCgroup(link.CgroupOptions{Path: cgroupPath, Attach: a.typ, Program: prog})
		if err != nil {
			return fmt.Errorf("attach %s to cgroup %s: %w", a.typ, cgroupPath, err)
		}
		t.links = append(t.links, l)
	}

	return nil
}

// Close detaches and releases everything the Tracer holds.
func (t *Tracer) Close() error {
	var errs []error
	for _, l := range t.links {
		errs = append(errs, l.Close())
	}
	t.links = nil
	if t.events != nil {
		errs = append(errs, t.events.Close())
		t.events = nil
	}
	if t.packets != nil {
		errs = append(errs, t.packets.Close())
		t.packets = nil
	}
	errs = append(errs, t.objs.Close())

	return errors.Join(errs...)
}

// clockOffset converts bpf_ktime_get_ns (CLOCK_MONOTONIC) to wall time.
type clockOffset struct {
	wall time.Time
	mono int64
}

func newClockOffset() clockOffset {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)

	return clockOffset{wall: time.Now(), mono: ts.Nano()}
}

func (c clockOffset) time(ns uint64) time.Time {
	return c.wall.Add(time.Duration(int64(ns) - c.mono))
}

// loadParallel creates the maps, then loads every program at once, each in
// its own goroutine: the kernel verifies and compiles programs in the
// calling thread, so this uses every core for what is most of childflow's
// start-up (about 13 ms sequentially for the eleven programs here).
func loadParallel(spec *ebpf.CollectionSpec) (*ebpf.Collection, error) {
	mapsOnly := &ebpf.CollectionSpec{Maps: spec.Maps, Variables: spec.Variables,
		Types: spec.Types, ByteOrder: spec.ByteOrder}
	maps, err := ebpf.NewCollection(mapsOnly)
	if err != nil {
		return nil, err
	}

	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		progs = make(map[string]*ebpf.Program, len(spec.Programs))
		errs  []error
	)
	for name, ps := range spec.Programs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			one := &ebpf.CollectionSpec{Maps: spec.Maps, Variables: spec.Variables,
				Programs: map[string]*ebpf.ProgramSpec{name: ps}, Types: spec.Types,
				ByteOrder: spec.ByteOrder}
			c, err := ebpf.NewCollectionWithOptions(one,
				ebpf.CollectionOptions{MapReplacements: maps.Maps})
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			progs[name] = c.DetachProgram(name)
			c.Close() // the maps' duplicates
		}()
	}
	wg.Wait()

	coll := &ebpf.Collection{Programs: progs, Maps: maps.Maps, Variables: maps.Variables}
	if err := errors.Join(errs...); err != nil {
		coll.Close()
		return nil, err
	}

	return coll, nil
}
