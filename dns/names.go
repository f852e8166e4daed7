package dns

import (
	"container/list"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults of a Names table.
const (
	DefaultNamesCap      = 65536
	DefaultNamesGrace    = 5 * time.Minute
	DefaultNamesMinTTL   = 60 * time.Second
	DefaultNamesPerIPCap = 32
)

// NamesConfig sizes a Names table. Zero fields take the defaults above.
type NamesConfig struct {
	// Cap is the number of addresses kept; the least recently used address
	// is evicted (and counted) when a new one would exceed it.
	Cap int
	// Grace is added to every TTL: a program may connect well after the
	// answer expired, and the name must still be known then.
	Grace time.Duration
	// MinTTL is the floor applied to short TTLs (a TTL of 0 or 1 second
	// must not lose the name before the connect that follows the lookup).
	MinTTL time.Duration
	// PerIP is the number of names kept for one address; the one expiring
	// first is evicted (and counted) beyond it.
	PerIP int
}

// Names maps addresses to the DNS names that resolved to them in this run,
// each name until its TTL (at least MinTTL) plus Grace has passed. It is safe
// for concurrent use; its size is bounded and evictions are counted.
type Names struct {
	cfg NamesConfig
	now func() time.Time

	mu      sync.Mutex
	entries map[netip.Addr]*list.Element // of *namesEntry
	lru     list.List                    // front: most recently used

	evicted atomic.Uint64
}

type namesEntry struct {
	ip    netip.Addr
	names []nameExpiry
}

type nameExpiry struct {
	name    string
	expires time.Time
}

// NewNames returns an empty table sized by cfg.
func NewNames(cfg NamesConfig) *Names {
	if cfg.Cap <= 0 {
		cfg.Cap = DefaultNamesCap
	}
	if cfg.Grace <= 0 {
		cfg.Grace = DefaultNamesGrace
	}
	if cfg.MinTTL <= 0 {
		cfg.MinTTL = DefaultNamesMinTTL
	}
	if cfg.PerIP <= 0 {
		cfg.PerIP = DefaultNamesPerIPCap
	}

	return &Names{cfg: cfg, now: time.Now, entries: make(map[netip.Addr]*list.Element)}
}

// Add records that names resolved to ip with the given TTL. An IPv4-mapped
// IPv6 address is stored as IPv4. Names already known for ip get the later of
// their old and new expiry.
func (n *Names) Add(ip netip.Addr, names []string, ttl time.Duration) {
	ip = ip.Unmap()
	expires := n.now().Add(max(ttl, n.cfg.MinTTL) + n.cfg.Grace)

	n.mu.Lock()
	defer n.mu.Unlock()

	e := n.entry(ip)
	for _, name := range names {
		e.add(name, expires, n.cfg.PerIP, &n.evicted)
	}
}

// entry returns the entry of ip, creating it (and evicting the least recently
// used entry when full) if needed. n.mu must be held.
func (n *Names) entry(ip netip.Addr) *namesEntry {
	if el, ok := n.entries[ip]; ok {
		n.lru.MoveToFront(el)
		return el.Value.(*namesEntry)
	}

	if n.lru.Len() >= n.cfg.Cap {
		n.evictOldest()
	}

	e := &namesEntry{ip: ip}
	n.entries[ip] = n.lru.PushFront(e)

	return e
}

// evictOldest removes the least recently used entry, counting it unless all
// its names had expired anyway. n.mu must be held.
func (n *Names) evictOldest() {
	el := n.lru.Back()
	e := el.Value.(*namesEntry)
	n.lru.Remove(el)
	delete(n.entries, e.ip)

	now := n.now()
	if slices.ContainsFunc(e.names, func(ne nameExpiry) bool { return ne.expires.After(now) }) {
		n.evicted.Add(1)
	}
}

func (e *namesEntry) add(name string, expires time.Time, limit int, evicted *atomic.Uint64) {
	for i := range e.names {
		if e.names[i].name == name {
			if expires.After(e.names[i].expires) {
				e.names[i].expires = expires
			}
			return
		}
	}

	if len(e.names) >= limit {
		first := 0
		for i := range e.names {
			if e.names[i].expires.Before(e.names[first].expires) {
				first = i
			}
		}
		e.names = slices.Delete(e.names, first, first+1)
		evicted.Add(1)
	}

	e.names = append(e.names, nameExpiry{name: name, expires: expires})
}

// Lookup returns the unexpired names of ip (IPv4-mapped addresses are looked
// up as IPv4), in the order they were first learned, or nil. The caller owns
// the returned slice.
func (n *Names) Lookup(ip netip.Addr) []string {
	ip = ip.Unmap()
	now := n.now()

	n.mu.Lock()
	defer n.mu.Unlock()

	el, ok := n.entries[ip]
	if !ok {
		return nil
	}

	e := el.Value.(*namesEntry)
	e.names = slices.DeleteFunc(e.names, func(ne nameExpiry) bool { return !ne.expires.After(now) })
	if len(e.names) == 0 {
		n.lru.Remove(el)
		delete(n.entries, ip)
		return nil
	}
	n.lru.MoveToFront(el)

	out := make([]string, len(e.names))
	for i, ne := range e.names {
		out[i] = ne.name
	}

	return out
}

// Expiry returns the unexpired names of ip, like Lookup, and when the first
// of them expires (the zero time when none is left). It does not count as a
// use for the LRU order, so that a sweep does not keep entries alive.
func (n *Names) Expiry(ip netip.Addr) ([]string, time.Time) {
	ip = ip.Unmap()
	now := n.now()

	n.mu.Lock()
	defer n.mu.Unlock()

	el, ok := n.entries[ip]
	if !ok {
		return nil, time.Time{}
	}

	e := el.Value.(*namesEntry)
	e.names = slices.DeleteFunc(e.names, func(ne nameExpiry) bool { return !ne.expires.After(now) })
	if len(e.names) == 0 {
		n.lru.Remove(el)
		delete(n.entries, ip)
		return nil, time.Time{}
	}

	out := make([]string, len(e.names))
	first := e.names[0].expires
	for i, ne := range e.names {
		out[i] = ne.name
		if ne.expires.Before(first) {
			first = ne.expires
		}
	}

	return out, first
}

// Len returns the number of addresses held, expired ones included until they
// are looked up or evicted.
func (n *Names) Len() int {
	n.mu.Lock()
	defer n.mu.Unlock()

	return n.lru.Len()
}

// Evicted returns how many unexpired address entries or names were dropped
// because the table or an address's name list was full.
func (n *Names) Evicted() uint64 { return n.evicted.Load() }
