package trace

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/childflow/childflow/dns"
	"github.com/childflow/childflow/flows"
	"github.com/childflow/childflow/loader"
	"github.com/childflow/childflow/policy"
	"github.com/childflow/childflow/proxy"
)

// services are the user-space parts of a run: the DNS forwarder and the
// proxy relay. The eBPF programs send the tree's DNS and (with --proxy) TCP to
// them; they find the original destination through the tracer's client table.
type services struct {
	o      *Options
	fwd    *dns.Forwarder
	relay  *proxy.Relay
	dialer *proxy.Dialer
	names  *dns.Names
	learnr *learner
	tracer *atomic.Pointer[loader.Tracer]
	// hostNames maps the addresses of --hosts-file to a name, for the
	// proxy (with --proxy only).
	hostNames map[netip.Addr]string

	warnings []string

	// rootlessClients maps the local port of a query the rootless backend
	// relays to the forwarder to what the program asked (clientKey →
	// dns.ClientInfo).
	rootlessClients sync.Map
}

func startServices(ctx context.Context, o *Options, sink flows.Sink,
	tracer *atomic.Pointer[loader.Tracer], onViolation func(*flows.PolicyViolation)) (*services, error) {
	s := &services{o: o, tracer: tracer, names: dns.NewNames(learnConfig{}.namesConfig())}
	counted := flows.SinkFunc(func(ev flows.Event) {
		if v, ok := ev.(*flows.PolicyViolation); ok {
			onViolation(v)
		}
		sink.Emit(ev)
	})

	if !o.NoDNS {
		if err := s.startDNS(ctx, counted); err != nil {
			s.close()
			return nil, err
		}
	}
	if o.Proxy != nil {
		if err := s.startRelay(counted); err != nil {
			s.close()
			return nil, err
		}
	}

	return s, nil
}

func (s *services) startDNS(ctx context.Context, sink flows.Sink) error {
	s.learnr = newLearner(s.names, s.o.Policy, s.tracer, s.o.Logger, learnConfig{})
	cfg := dns.Config{
		Upstreams: s.o.DNSUpstreams,
		Sink:      sink,
		Logger:    s.o.Logger,
		Names:     s.names,
		Client:    s.dnsClient,
		Learn:     s.learn,
	}
	if p := s.o.Policy; p != nil {
		cfg.Offline = p.Config().Offline
		cfg.Policy = namePolicy{p}
	}
	if s.o.HostsFile != "" {
		hosts, err := dns.ReadHostsFile(s.o.HostsFile)
		if err != nil {
			return &UsageError{Msg: fmt.Sprintf("cannot read --hosts-file %s: %v", s.o.HostsFile, err)}
		}
		cfg.Hosts = hosts
	}

	fwd, err := dns.Start(ctx, cfg)
	if errors.Is(err, dns.ErrNoNameserver) {
		s.warnings = append(s.warnings, "no nameserver in /etc/resolv.conf and no --dns: "+
			"DNS of the tree is not redirected or logged")
		return nil
	}
	if err != nil {
		return &Failure{Phase: flows.PhasePreflight, Reason: "dns_forwarder", Err: err}
	}
	s.fwd = fwd
	s.learnr.start(ctx)

	return nil
}

func (s *services) startRelay(sink flows.Sink) error {
	s.dialer = proxy.NewDialer(s.o.Proxy, proxy.Options{
		Timeout: s.o.ProxyTimeout,
		RootCAs: s.o.ProxyRootCAs,
	})

	if s.o.HostsFile != "" {
		hosts, err := dns.ReadHostsFile(s.o.HostsFile)
		if err != nil {
			return &UsageError{Msg: fmt.Sprintf("cannot read --hosts-file %s: %v", s.o.HostsFile, err)}
		}
		s.hostNames = hostNames(hosts)
	}

	relay, err := proxy.NewRelay(proxy.RelayConfig{
		Dialer: s.dialer,
		Lookup: s.relayLookup,
		Sink:   sink,
		Logger: s.o.Logger,
	})
	if err != nil {
		return &Failure{Phase: flows.PhasePreflight, Reason: "proxy_relay", Err: err}
	}
	s.relay = relay

	return nil
}

// hostNames maps each address of a hosts file to its first name in sorted
// order, so that the choice does not depend on map iteration.
func hostNames(hosts map[string][]netip.Addr) map[netip.Addr]string {
	out := make(map[netip.Addr]string)
	for name, addrs := range hosts {
		for _, a := range addrs {
			a = a.Unmap()
			if cur, ok := out[a]; !ok || name < cur {
				out[a] = name
			}
		}
	}

	return out
}

// dnsPorts returns the forwarder's ports on 127.0.0.1 and ::1 (0 when off).
func (s *services) dnsPorts() (uint16, uint16) {
	if s.fwd == nil {
		return 0, 0
	}

	return loopbackPorts(s.fwd.Addrs())
}

// dnsServers returns the forwarder's upstreams, which the eBPF programs
// redirect to the forwarder like port 53.
func (s *services) dnsServers() []netip.AddrPort {
	if s.fwd == nil {
		return nil
	}

	return s.fwd.Upstreams()
}

// relayPorts returns the relay's ports on 127.0.0.1 and ::1 (0 when off).
func (s *services) relayPorts() (uint16, uint16) {
	if s.relay == nil {
		return 0, 0
	}

	return loopbackPorts(s.relay.Addrs())
}

func loopbackPorts(addrs []netip.AddrPort) (p4, p6 uint16) {
	for _, a := range addrs {
		if a.Addr().Is4() {
			p4 = a.Port()
		} else {
			p6 = a.Port()
		}
	}
	if p6 == 0 {
		p6 = p4 // no IPv6 loopback: IPv6 sockets reach it IPv4-mapped
	}

	return p4, p6
}

func (s *services) namesOf(ip netip.Addr) []string {
	return s.names.Lookup(ip.Unmap())
}

func (s *services) dnsClient(src netip.AddrPort, proto string) (dns.ClientInfo, bool) {
	if v, ok := s.rootlessClients.Load(clientKey{src.Port(), proto}); ok {
		return v.(dns.ClientInfo), true
	}
	t := s.tracer.Load()
	if t == nil {
		return dns.ClientInfo{}, false
	}
	p := uint8(syscall.IPPROTO_UDP)
	if proto == "tcp" {
		p = syscall.IPPROTO_TCP
	}
	c, ok := t.Client(src.Port(), p)
	if !ok {
		return dns.ClientInfo{}, false
	}

	return dns.ClientInfo{Server: c.Dst, Pid: c.Tgid, Comm: c.Comm}, true
}

// learn teaches the programs what the policy says of an address that DNS
// just resolved, before the answer reaches the program (see learner).
func (s *services) learn(ip netip.Addr, names []string, ttl time.Duration) error {
	return s.learnr.learn(ip, names, ttl)
}

// relayLookup finds the origin of a connection the programs redirected to
// the relay, by the local port of the program's socket.
func (s *services) relayLookup(client netip.AddrPort) (proxy.Origin, bool) {
	t := s.tracer.Load()
	if t == nil {
		return proxy.Origin{}, false
	}

	c, ok := t.Client(client.Port(), syscall.IPPROTO_TCP)
	if !ok {
		return proxy.Origin{}, false
	}

	return proxy.Origin{
		Target: s.proxyTarget(c.Dst),
		Proc:   flows.Proc{Pid: c.Tgid, Comm: c.Comm},
		FlowID: c.Cookie,
	}, true
}

// proxyTarget is what the proxy is asked for a connection to dst: the name
// the program resolved to dst, through the forwarder or from --hosts-file
// (whose names never reach the forwarder: the tree reads them from its
// /etc/hosts), else the address alone. Both backends ask the same.
func (s *services) proxyTarget(dst netip.AddrPort) proxy.Target {
	t := proxy.Target{Addr: dst}
	if names := s.namesOf(dst.Addr()); len(names) > 0 {
		t.Name = names[0]
	} else if name, ok := s.hostNames[dst.Addr().Unmap()]; ok {
		t.Name = name
	}

	return t
}

// proxied reports whether a TCP connection to dst goes through the proxy:
// with --proxy, every destination but loopback (and loopback too with
// --proxy-loopback), as the eBPF programs decide.
func (s *services) proxied(dst netip.Addr) bool {
	return s.dialer != nil && (!dst.Unmap().IsLoopback() || s.o.ProxyLoopback)
}

// markProxied returns a sink that marks the TCP events of proxied
// destinations with via_proxy (and the proxy, without its password), for
// the rootless backend whose netstack does not know about the proxy.
func (s *services) markProxied(sink flows.Sink) flows.Sink {
	if s.dialer == nil {
		return sink
	}

	return flows.SinkFunc(func(ev flows.Event) {
		switch e := ev.(type) {
		case *flows.ConnectAttempt:
			e.ViaProxy = s.proxiedRemote(e.Remote)
		case *flows.ConnectResult:
			if e.ViaProxy = s.proxiedRemote(e.Remote); e.ViaProxy {
				e.Proxy = s.dialer.Redacted()
			}
		case *flows.FlowEnd:
			e.ViaProxy = s.proxiedRemote(e.Remote)
		}
		sink.Emit(ev)
	})
}

func (s *services) proxiedRemote(r flows.Remote) bool {
	ip, err := netip.ParseAddr(r.RemoteIP)

	return r.Protocol == "tcp" && err == nil && s.proxied(ip)
}

// report adds the services' own losses to the run's outputs.
func (s *services) report(sink flows.Sink, res *Result) {
	res.Warnings = append(res.Warnings, s.warnings...)
	if s.fwd != nil {
		st := s.fwd.Stats()
		if st.Dropped > 0 {
			sink.Emit(&flows.Loss{Source: "dns", Count: st.Dropped,
				Detail: "queries answered SERVFAIL because too many were in flight"})
		}
	}
	if s.relay != nil {
		st := s.relay.Stats()
		if st.Unknown+st.Rejected > 0 {
			sink.Emit(&flows.Loss{Source: "proxy", Count: st.Unknown + st.Rejected,
				Detail: "connections the relay reset: unknown origin or too many at once"})
		}
	}
}

func (s *services) close() {
	if s.relay != nil {
		_ = s.relay.Close()
	}
	if s.fwd != nil {
		_ = s.fwd.Close()
	}
	if s.learnr != nil {
		s.learnr.close()
	}
}

// namePolicy adapts a policy to the forwarder's NamePolicy.
type namePolicy struct{ p *policy.Policy }

func (n namePolicy) CheckName(name string) (bool, *flows.PolicyViolation) {
	v := n.p.CheckName(name)
	if !v.Violates() {
		return false, nil
	}
	ev := v.Violation("dns", netip.AddrPort{}, []string{name})

	return !v.Allowed, ev
}
