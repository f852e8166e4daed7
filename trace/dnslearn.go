package trace

import (
	"context"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/childflow/childflow/dns"
	"github.com/childflow/childflow/loader"
	"github.com/childflow/childflow/policy"
)

// How long learned names last and how often the learned-address table is
// swept. A name lasts its answer's TTL (at least learnMinTTL) plus
// learnGrace, as in the Names table, which is sized with the same values.
// Tests shorten them through learnConfig.
const (
	learnGrace  = dns.DefaultNamesGrace
	learnMinTTL = dns.DefaultNamesMinTTL
	learnSweep  = 10 * time.Second
)

// learnConfig times a learner. Zero fields take the defaults above.
type learnConfig struct {
	Grace  time.Duration
	MinTTL time.Duration
	Sweep  time.Duration
}

func (c learnConfig) withDefaults() learnConfig {
	if c.Grace <= 0 {
		c.Grace = learnGrace
	}
	if c.MinTTL <= 0 {
		c.MinTTL = learnMinTTL
	}
	if c.Sweep <= 0 {
		c.Sweep = learnSweep
	}

	return c
}

// namesConfig sizes the run's Names table to expire names as the learner
// does.
func (c learnConfig) namesConfig() dns.NamesConfig {
	c = c.withDefaults()

	return dns.NamesConfig{Grace: c.Grace, MinTTL: c.MinTTL}
}

// learner keeps the eBPF backend's learned-address table (cf_ips) in step
// with the names DNS taught this run, so that domain policy holds for the
// connect that follows an answer:
//
//   - learn runs before the forwarder writes an answer: it adds the names to
//     the Names table and writes the address's verdict, judged with every
//     unexpired name of the address (a deny on any of them wins), into the
//     table. Calls are serialised, so two answers sharing an address cannot
//     overwrite each other's verdict with a partial view.
//   - Only what the BPF programs need is stored: a domain deny, or, under
//     --default-policy deny, the allowance an allowed name gives.
//   - A sweep every Sweep re-judges every stored address with its names
//     still alive (TTL, at least MinTTL, plus Grace) and removes those left
//     without any, so long runs stay bounded. The table is consulted only
//     when a socket connects or sends an unconnected datagram: removing an
//     entry never breaks a connection already made.
//
// On the rootless backend (no tracer) learn only fills the Names table, which
// the netstack consults for every new flow.
type learner struct {
	names  *dns.Names
	policy *policy.Policy
	tracer *atomic.Pointer[loader.Tracer]
	log    *slog.Logger
	cfg    learnConfig

	mu     sync.Mutex
	stored map[netip.Addr]struct{} // addresses with an entry in cf_ips
	errs   atomic.Uint64           // sweep updates that failed
	warned atomic.Bool

	stop context.CancelFunc
	done chan struct{}
}

func newLearner(names *dns.Names, p *policy.Policy, tracer *atomic.Pointer[loader.Tracer],
	log *slog.Logger, cfg learnConfig) *learner {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}

	return &learner{names: names, policy: p, tracer: tracer, log: log, cfg: cfg.withDefaults(),
		stored: make(map[netip.Addr]struct{})}
}

// learn records that names resolved to ip with ttl and stores the address's
// verdict for the BPF programs. An error makes the forwarder answer SERVFAIL.
func (l *learner) learn(ip netip.Addr, names []string, ttl time.Duration) error {
	ip = ip.Unmap()

	l.mu.Lock()
	defer l.mu.Unlock()

	l.names.Add(ip, names, ttl)

	return l.apply(ip)
}

// apply judges ip with its unexpired names and updates cf_ips. l.mu is held.
func (l *learner) apply(ip netip.Addr) error {
	t := l.tracer.Load()
	if t == nil || l.policy == nil {
		return nil
	}

	names, _ := l.names.Expiry(ip)
	allowed, reason, store := l.verdict(ip, names)
	_, had := l.stored[ip]
	if !store {
		if !had {
			return nil
		}
		if err := t.Forget(ip); err != nil {
			return err
		}
		delete(l.stored, ip)
		return nil
	}

	if err := t.Learn(ip, allowed, reason, 0); err != nil {
		return err
	}
	l.stored[ip] = struct{}{}

	return nil
}

// verdict tells what cf_ips must hold for ip: a domain deny with its reason,
// an allowance under default deny, or nothing (store false).
func (l *learner) verdict(ip netip.Addr, names []string) (allowed bool, reason uint8, store bool) {
	if len(names) == 0 {
		return false, 0, false
	}

	v := l.policy.Evaluate(ip, names, "tcp")
	switch {
	case v.Reason == policy.ReasonDenyDomain || v.Reason == policy.ReasonDenyDomainExact:
		return false, uint8(v.Reason), true
	case v.Reason == policy.ReasonNone && l.policy.Config().DefaultDeny:
		return true, 0, true
	}

	return false, 0, false
}

// start sweeps the table every cfg.Sweep until close.
func (l *learner) start(ctx context.Context) {
	ctx, l.stop = context.WithCancel(ctx)
	l.done = make(chan struct{})

	go func() {
		defer close(l.done)
		tick := time.NewTicker(l.cfg.Sweep)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				l.sweep()
			}
		}
	}()
}

// sweep re-judges every stored address: those whose names all expired (or
// were evicted from the Names table) are removed, the others keep the
// verdict of the names still alive.
func (l *learner) sweep() {
	l.mu.Lock()
	defer l.mu.Unlock()

	for ip := range l.stored {
		if err := l.apply(ip); err != nil {
			l.errs.Add(1)
			if l.warned.CompareAndSwap(false, true) {
				l.log.Warn("dns learner cannot update a learned address", "ip", ip, "err", err)
			}
		}
	}
}

// storedLen returns the number of addresses with an entry in cf_ips.
func (l *learner) storedLen() int {
	l.mu.Lock()
	defer l.mu.Unlock()

	return len(l.stored)
}

// close stops the sweep and waits for it.
func (l *learner) close() {
	if l.stop == nil {
		return
	}
	l.stop()
	<-l.done
}
