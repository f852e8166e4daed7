package loader

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"

	"github.com/childflow/childflow/gen"
)

// Tunnel describes a connect that childflow makes to the proxy on one of the
// program's sockets: whose it is and where the program wanted to go.
type Tunnel struct {
	Cookie uint64 // the socket's cookie (SO_COOKIE)
	Tgid   uint32
	Pid    uint32 // the thread that called connect
	Comm   string
	Dst    netip.AddrPort
}

// BeginTunnel registers tn before childflow connects the socket to the
// proxy. The connect hook then polices and reports tn.Dst as the program's
// destination, with the program's identity, and leaves the proxy's address
// alone; until EndTunnel, what the socket sends is childflow's handshake:
// it is neither sniffed nor captured beyond its headers. At most 4096
// tunnels are open at once.
func (t *Tracer) BeginTunnel(tn Tunnel) error {
	v := gen.ChildflowCfTunnel{
		Daddr: key16(tn.Dst.Addr()),
		Tgid:  tn.Tgid,
		Pid:   tn.Pid,
		Dport: tn.Dst.Port(),
	}
	v.Family = 6
	if tn.Dst.Addr().Unmap().Is4() {
		v.Family = 4
	}
	for i := 0; i < len(v.Comm)-1 && i < len(tn.Comm); i++ {
		v.Comm[i] = int8(tn.Comm[i])
	}

	if err := t.objs.CfTunnels.Update(&tn.Cookie, &v, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("register tunnel of socket %d: %w", tn.Cookie, err)
	}

	return nil
}

// EndTunnel removes the entry of BeginTunnel once the handshake is over.
// Removing an entry that is not there is not an error.
func (t *Tracer) EndTunnel(cookie uint64) error {
	err := t.objs.CfTunnels.Delete(&cookie)
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("remove tunnel of socket %d: %w", cookie, err)
	}

	return nil
}

// TunnelOpen reports whether the entry of BeginTunnel is still there. The
// connect hook removes it when the policy denies the destination, so a
// connect that failed with EPERM and left no entry was denied by the policy
// (and the violation reported).
func (t *Tracer) TunnelOpen(cookie uint64) bool {
	var v gen.ChildflowCfTunnel

	return t.objs.CfTunnels.Lookup(&cookie, &v) == nil
}

// Tracked reports whether the programs keep a flow entry for the socket:
// true for a socket created in the run cgroup (while the flow table had
// room), false for one passed in from outside, which no hook of the run
// sees.
func (t *Tracer) Tracked(cookie uint64) bool {
	var f gen.ChildflowCfFlow

	return t.objs.CfFlows.Lookup(&cookie, &f) == nil
}
