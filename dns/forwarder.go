package dns

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/childflow/childflow/flows"
)

// Defaults of a Config.
const (
	DefaultTimeout     = 2 * time.Second
	DefaultAttempts    = 2
	DefaultMaxInFlight = 1024
	DefaultResolvConf  = "/etc/resolv.conf"
)

// NamePolicy decides whether a query name may be resolved. CheckName gets the
// name lowercased without the trailing dot. When it denies, v (if not nil) is
// emitted after the forwarder fills Protocol ("dns"), the process and, when
// empty, Action and RemoteStr; v is also emitted when not denying (audit).
// Each call must return a new v. It must be safe for concurrent use.
type NamePolicy interface {
	CheckName(name string) (deny bool, v *flows.PolicyViolation)
}

// ClientInfo is what the backend knows about the socket a query came from:
// the server the program addressed before redirection, and its process.
type ClientInfo struct {
	Server netip.AddrPort
	Pid    uint32
	Comm   string
}

// Config configures a Forwarder. Zero fields take the defaults documented on
// each field.
type Config struct {
	// Upstreams are tried in turn, starting with the one that answered
	// last and moving on after a failure. Empty means the nameservers of
	// ResolvConf (not read when Offline).
	Upstreams []netip.AddrPort
	// ResolvConf is the resolver configuration read when Upstreams is
	// empty (DefaultResolvConf).
	ResolvConf string
	// Listen are the loopback addresses served over both UDP and TCP on the
	// same port; port 0 picks one. Empty means 127.0.0.1:0 and [::1]:0 (the
	// latter skipped when IPv6 is unavailable).
	Listen []netip.AddrPort
	// Hosts are answered locally (mode hosts_file): A and AAAA from the
	// listed addresses, PTR for them, any other type empty.
	Hosts map[string][]netip.Addr
	// Offline answers every query not in Hosts NOERROR without records.
	Offline bool
	// Policy is asked about every query name; nil allows all.
	Policy NamePolicy
	// Learn, if set, is called for every A/AAAA address of an answer
	// before the answer is written; an error turns the answer into
	// SERVFAIL. It must be safe for concurrent use.
	Learn func(ip netip.Addr, names []string, ttl time.Duration) error
	// Client, if set, tells the original server and process of a query
	// from its source address and protocol ("udp" or "tcp").
	Client func(src netip.AddrPort, proto string) (ClientInfo, bool)
	// Sink receives the dns_query, dns_answer and policy_violation events.
	Sink flows.Sink
	// Logger receives debug lines per query and warnings; nil discards.
	Logger *slog.Logger
	// Timeout bounds one upstream attempt (DefaultTimeout).
	Timeout time.Duration
	// Attempts is the number of upstream attempts per query
	// (DefaultAttempts); a query fails within Timeout*Attempts.
	Attempts int
	// MaxInFlight bounds the queries served at once (DefaultMaxInFlight).
	MaxInFlight int
	// Names is the table filled with learned names; nil creates one with
	// the default size.
	Names *Names
}

// Stats are the forwarder's counters since Start.
type Stats struct {
	Queries        uint64 // queries received and parsed
	Answers        uint64 // answers written to programs
	Relayed        uint64 // answers from an upstream
	Local          uint64 // answers from hosts, offline or policy
	Failures       uint64 // SERVFAIL, FORMERR or NOTIMP answers of ours
	Denied         uint64 // queries for names the policy denied
	UpstreamErrors uint64 // failed upstream attempts
	Dropped        uint64 // queries refused because MaxInFlight were served
	Truncated      uint64 // UDP answers cut to the program's size, TC set
	LearnErrors    uint64 // answers failed because Learn failed
	WriteErrors    uint64 // answers that could not be written
	Malformed      uint64 // datagrams or TCP messages that did not parse
}

type counters struct {
	queries, answers, relayed, local, failures, denied     atomic.Uint64
	upstreamErrs, dropped, truncated, learnErrs, writeErrs atomic.Uint64
	malformed                                              atomic.Uint64
}

// Forwarder is a running DNS forwarder. Its methods are safe for concurrent
// use; the caller must call Close.
type Forwarder struct {
	cfg       Config
	log       *slog.Logger
	names     *Names
	reverse   map[string]string // PTR name of a hosts address → host name
	sem       chan struct{}
	ctx       context.Context
	cancel    context.CancelFunc
	servers   []*mdns.Server
	addrs     []netip.AddrPort
	serving   sync.WaitGroup
	closed    sync.Once
	preferred atomic.Uint32 // index of the upstream that last answered
	warnedUp  atomic.Bool   // an upstream failure was logged as a warning
	warnedLrn atomic.Bool   // a Learn failure was logged as a warning
	stats     counters
}

// Start listens on cfg.Listen and serves until ctx is cancelled or Close is
// called. It fails if an address cannot be bound or, without upstreams and
// not offline, cfg.ResolvConf names no nameserver.
func Start(ctx context.Context, cfg Config) (*Forwarder, error) {
	cfg, err := withDefaults(cfg)
	if err != nil {
		return nil, err
	}

	f := &Forwarder{
		cfg:     cfg,
		log:     cfg.Logger,
		names:   cfg.Names,
		reverse: reverseHosts(cfg.Hosts),
		sem:     make(chan struct{}, cfg.MaxInFlight),
	}
	f.ctx, f.cancel = context.WithCancel(ctx)

	if err := f.listen(); err != nil {
		f.Close()
		return nil, err
	}

	context.AfterFunc(f.ctx, func() { f.shutdown() })

	return f, nil
}

func withDefaults(cfg Config) (Config, error) {
	if cfg.ResolvConf == "" {
		cfg.ResolvConf = DefaultResolvConf
	}
	if len(cfg.Upstreams) == 0 && !cfg.Offline {
		ups, err := ResolvConf(cfg.ResolvConf)
		if err != nil {
			return cfg, fmt.Errorf("find upstream resolver: %w", err)
		}
		cfg.Upstreams = ups
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Attempts <= 0 {
		cfg.Attempts = DefaultAttempts
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = DefaultMaxInFlight
	}
	cfg.Hosts = normalizeHosts(cfg.Hosts)
	if cfg.Names == nil {
		cfg.Names = NewNames(NamesConfig{})
	}

	return cfg, nil
}

// listen binds every listen address and starts serving it.
func (f *Forwarder) listen() error {
	listen, optional := f.cfg.Listen, false
	if len(listen) == 0 {
		listen = []netip.AddrPort{
			netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), 0),
			netip.AddrPortFrom(netip.IPv6Loopback(), 0),
		}
		optional = true
	}

	var port uint16
	for i, ap := range listen {
		pc, ln, err := listenPair(ap, port)
		if err != nil && optional && i > 0 {
			f.log.Info("dns forwarder skips a listen address", "addr", ap, "err", err)
			continue
		}
		if err != nil {
			return err
		}

		port = uint16(pc.LocalAddr().(*net.UDPAddr).Port)
		f.addrs = append(f.addrs, netip.AddrPortFrom(ap.Addr(), port))
		f.serve(pc, ln)
	}

	return nil
}

// listenPair binds UDP and TCP on the same port of ap. With port 0 it first
// tries the port hint (to share one port across addresses), then random ones.
func listenPair(ap netip.AddrPort, hint uint16) (*net.UDPConn, *net.TCPListener, error) {
	const tries = 16

	for i := range tries {
		want := ap
		if ap.Port() == 0 && i == 0 && hint != 0 {
			want = netip.AddrPortFrom(ap.Addr(), hint)
		}

		pc, ln, err := tryListenPair(want)
		if err == nil {
			return pc, ln, nil
		}
		if ap.Port() != 0 || (!errors.Is(err, syscall.EADDRINUSE) && want == ap) {
			return nil, nil, err
		}
	}

	return nil, nil, fmt.Errorf("listen on %s: no port free for both udp and tcp", ap)
}

func tryListenPair(ap netip.AddrPort) (*net.UDPConn, *net.TCPListener, error) {
	// TCP first: a random port free for TCP listening is the scarce one on
	// a host with many connections in TIME_WAIT (their ports cannot be
	// bound), while UDP ports are rarely taken.
	ln, err := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(ap))
	if err != nil {
		return nil, nil, fmt.Errorf("listen on tcp %s: %w", ap, err)
	}

	port := uint16(ln.Addr().(*net.TCPAddr).Port)
	udp := netip.AddrPortFrom(ap.Addr(), port)
	pc, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(udp))
	if err != nil {
		ln.Close()
		return nil, nil, fmt.Errorf("listen on udp %s: %w", udp, err)
	}

	return pc, ln, nil
}

// serve starts miekg/dns servers on pc and ln.
func (f *Forwarder) serve(pc *net.UDPConn, ln *net.TCPListener) {
	udp := &mdns.Server{PacketConn: pc, UDPSize: mdns.MaxMsgSize}
	tcp := &mdns.Server{Listener: ln}

	for _, srv := range []*mdns.Server{udp, tcp} {
		srv.Handler = mdns.HandlerFunc(f.serveDNS)
		srv.MsgAcceptFunc = acceptQuery
		srv.MsgInvalidFunc = func([]byte, error) { f.stats.malformed.Add(1) }
		f.servers = append(f.servers, srv)

		started, exited := make(chan struct{}), make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		f.serving.Go(func() {
			defer close(exited)
			if err := srv.ActivateAndServe(); err != nil {
				f.log.Warn("dns forwarder stopped serving", "err", err)
			}
		})

		select {
		case <-started:
		case <-exited:
		}
	}
}

// acceptQuery lets every request through to ServeDNS, which answers the
// ones it cannot serve itself so that they are logged; responses are
// ignored.
func acceptQuery(dh mdns.Header) mdns.MsgAcceptAction {
	const qr = 1 << 15
	if dh.Bits&qr != 0 {
		return mdns.MsgIgnore
	}

	return mdns.MsgAccept
}

// normalizeHosts returns hosts with lowercase names without trailing dots.
func normalizeHosts(hosts map[string][]netip.Addr) map[string][]netip.Addr {
	out := make(map[string][]netip.Addr, len(hosts))
	for name, addrs := range hosts {
		n := normalizeName(name)
		out[n] = append(out[n], addrs...)
	}

	return out
}

// reverseHosts maps the PTR name of every hosts address to its first name.
func reverseHosts(hosts map[string][]netip.Addr) map[string]string {
	rev := make(map[string]string)
	for name, addrs := range hosts {
		for _, a := range addrs {
			arpa, err := mdns.ReverseAddr(a.WithZone("").String())
			if err != nil {
				continue
			}
			arpa = normalizeName(arpa)
			if old, ok := rev[arpa]; !ok || name < old {
				rev[arpa] = name
			}
		}
	}

	return rev
}

// Addrs returns the addresses served over both UDP and TCP.
func (f *Forwarder) Addrs() []netip.AddrPort { return append([]netip.AddrPort(nil), f.addrs...) }

// Upstreams returns the servers the forwarder relays to, so that a backend
// can send a program that asks one of them directly to the forwarder instead.
func (f *Forwarder) Upstreams() []netip.AddrPort {
	return append([]netip.AddrPort(nil), f.cfg.Upstreams...)
}

// Names returns the table of names learned from answers.
func (f *Forwarder) Names() *Names { return f.names }

// Close stops serving, aborts upstream exchanges in progress and waits until
// every query goroutine has returned. It is safe to call more than once.
func (f *Forwarder) Close() error {
	f.cancel()
	f.shutdown()

	return nil
}

func (f *Forwarder) shutdown() {
	f.closed.Do(func() {
		for _, srv := range f.servers {
			srv.Shutdown()
		}
		f.serving.Wait()
	})
}

// Stats returns a snapshot of the counters.
func (f *Forwarder) Stats() Stats {
	c := &f.stats

	return Stats{
		Queries:        c.queries.Load(),
		Answers:        c.answers.Load(),
		Relayed:        c.relayed.Load(),
		Local:          c.local.Load(),
		Failures:       c.failures.Load(),
		Denied:         c.denied.Load(),
		UpstreamErrors: c.upstreamErrs.Load(),
		Dropped:        c.dropped.Load(),
		Truncated:      c.truncated.Load(),
		LearnErrors:    c.learnErrs.Load(),
		WriteErrors:    c.writeErrs.Load(),
		Malformed:      c.malformed.Load(),
	}
}
