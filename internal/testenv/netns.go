package testenv

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Network namespace helpers. They need root and iproute2; every namespace and
// link they create is removed in t.Cleanup. Commands run inside a namespace
// through nsenter --net, which changes only the network namespace: ip netns
// exec would also remount /sys and hide the cgroup2 mount that childflow
// needs.

// netnsCounter makes names unique within the process; the pid makes them
// unique across concurrently running test binaries.
var netnsCounter atomic.Uint32

// Netns is a named network namespace (/run/netns/NAME). A nil *Netns stands
// for the host's namespace in every helper that takes one.
type Netns struct {
	Name string
}

// Path returns the namespace's file under /run/netns, or "" for the host.
func (ns *Netns) Path() string {
	if ns == nil {
		return ""
	}

	return filepath.Join("/run/netns", ns.Name)
}

func (ns *Netns) String() string {
	if ns == nil {
		return "host"
	}

	return ns.Name
}

// NewNetns creates a network namespace named after name, the pid and a
// counter, brings its loopback up, and deletes it (with its links) in
// t.Cleanup. It skips (or fails in CI) without root or iproute2.
func NewNetns(t testing.TB, name string) *Netns {
	t.Helper()
	RequireRoot(t)
	RequireTool(t, "ip")
	RequireTool(t, "nsenter")

	ns := &Netns{Name: fmt.Sprintf("cf-%s-%d-%d", name, os.Getpid(), netnsCounter.Add(1))}
	runIP(t, nil, "netns", "add", ns.Name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", ns.Name).CombinedOutput(); err != nil {
			t.Errorf("delete netns %s: %v: %s", ns.Name, err, out)
		}
	})
	runIP(t, ns, "link", "set", "lo", "up")

	if err := ns.Do(tuneNetns); err != nil {
		t.Fatalf("configure netns %s: %v", ns, err)
	}

	return ns
}

// tuneNetns turns IPv6 duplicate address detection off for the links of the
// current namespace, link-local addresses included, and retries neighbour
// solicitations (ARP and NDP) after 100 ms instead of a second: without
// this, the first exchange on a fresh link sometimes stalls for a second.
func tuneNetns() error {
	settings := []struct{ key, value string }{
		{"ipv4/neigh/default/retrans_time_ms", "100"},
		{"ipv6/conf/all/accept_dad", "0"},
		{"ipv6/conf/default/accept_dad", "0"},
		{"ipv6/neigh/default/retrans_time_ms", "100"},
	}
	for _, s := range settings {
		err := os.WriteFile("/proc/sys/net/"+s.key, []byte(s.value), 0o644)
		if errors.Is(err, fs.ErrNotExist) {
			continue // no IPv6 in this kernel
		}

		if err != nil {
			return fmt.Errorf("set net.%s: %w", strings.ReplaceAll(s.key, "/", "."), err)
		}
	}

	return nil
}

// Exec returns an unstarted command that runs args inside ns (directly for the
// host). The command is bound to ctx like exec.CommandContext.
func (ns *Netns) Exec(ctx context.Context, args ...string) *exec.Cmd {
	if ns == nil {
		return exec.CommandContext(ctx, args[0], args[1:]...)
	}

	full := append([]string{"--net=" + ns.Path(), "--"}, args...)

	return exec.CommandContext(ctx, "nsenter", full...)
}

// Run runs args inside ns and returns its combined output, failing t when
// the command fails.
func (ns *Netns) Run(t testing.TB, args ...string) string {
	t.Helper()
	out, err := ns.Exec(t.Context(), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("run %q in netns %s: %v: %s", args, ns, err, out)
	}

	return string(out)
}

func runIP(t testing.TB, ns *Netns, args ...string) string {
	t.Helper()

	return ns.Run(t, append([]string{"ip"}, args...)...)
}

// Do runs fn on an OS thread that is inside ns, then moves the thread back.
// Sockets fn opens stay in ns, so a test can serve or dial inside a
// namespace without a subprocess. fn must not start goroutines that expect
// to be in ns. For a nil ns fn runs in the host namespace.
func (ns *Netns) Do(fn func() error) error {
	if ns == nil {
		return fn()
	}

	errc := make(chan error, 1)
	go func() { errc <- ns.doLocked(fn) }()

	return <-errc
}

// doLocked runs on its own goroutine. When the thread cannot return to its
// namespace it stays locked, and the runtime discards it when the goroutine
// ends.
func (ns *Netns) doLocked(fn func() error) error {
	runtime.LockOSThread()

	home, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		return fmt.Errorf("open own netns: %w", err)
	}
	defer home.Close()

	target, err := os.Open(ns.Path())
	if err != nil {
		return fmt.Errorf("open netns %s: %w", ns, err)
	}
	defer target.Close()

	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("enter netns %s: %w", ns, err)
	}

	fnErr := fn()
	if err := unix.Setns(int(home.Fd()), unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("leave netns %s: %w", ns, err)
	}
	runtime.UnlockOSThread()

	return fnErr
}

// ListenIn opens a stream listener (network "tcp", "tcp4", "tcp6") on addr
// inside ns and closes it in t.Cleanup.
func ListenIn(t testing.TB, ns *Netns, network, addr string) net.Listener {
	t.Helper()
	var ln net.Listener
	err := ns.Do(func() (err error) {
		ln, err = net.Listen(network, addr)
		return err
	})
	if err != nil {
		t.Fatalf("listen on %s %s in netns %s: %v", network, addr, ns, err)
	}
	t.Cleanup(func() { ln.Close() })

	return ln
}

// ListenPacketIn opens a datagram socket (network "udp", "udp4", "udp6") on
// addr inside ns and closes it in t.Cleanup.
func ListenPacketIn(t testing.TB, ns *Netns, network, addr string) net.PacketConn {
	t.Helper()
	var pc net.PacketConn
	err := ns.Do(func() (err error) {
		pc, err = net.ListenPacket(network, addr)
		return err
	})
	if err != nil {
		t.Fatalf("listen on %s %s in netns %s: %v", network, addr, ns, err)
	}
	t.Cleanup(func() { pc.Close() })

	return pc
}

// VethPair is a veth link between two namespaces.
type VethPair struct {
	NS1, NS2     *Netns
	Name1, Name2 string // link names in NS1 and NS2
}

// Veth links ns1 and ns2 (nil is the host) with a veth pair, gives each end
// its address (an invalid prefix gives none) and brings both up. It returns
// once both ends pass traffic: links up with their queueing discipline, IPv6
// addresses (added without duplicate address detection) no longer tentative.
// The pair is deleted in t.Cleanup (deleting either end removes both).
func Veth(t testing.TB, ns1, ns2 *Netns, addr1, addr2 netip.Prefix) *VethPair {
	t.Helper()
	RequireRoot(t)
	RequireTool(t, "ip")

	n := netnsCounter.Add(1)
	v := &VethPair{
		NS1: ns1, NS2: ns2,
		Name1: fmt.Sprintf("cf%x.%xa", os.Getpid(), n),
		Name2: fmt.Sprintf("cf%x.%xb", os.Getpid(), n),
	}
	v.create(t)

	runIP(t, ns1, "link", "set", v.Name1, "up")
	runIP(t, ns2, "link", "set", v.Name2, "up")
	waitLinkReady(t, ns1, v.Name1)
	waitLinkReady(t, ns2, v.Name2)
	v.AddAddrs(t, addr1, addr2)

	return v
}

// create makes the pair with each end directly in its namespace, so that
// the ends take their settings from it (tuneNetns). The host end's neighbour
// retry times are set on the link alone; the host's defaults stay untouched.
func (v *VethPair) create(t testing.TB) {
	t.Helper()
	args := append([]string{"link", "add", v.Name1}, netnsArgs(v.NS1)...)
	args = append(append(args, "type", "veth", "peer", "name", v.Name2), netnsArgs(v.NS2)...)
	runIP(t, nil, args...)
	t.Cleanup(func() { v.delete(t) })

	for _, end := range []struct {
		ns  *Netns
		dev string
	}{{v.NS1, v.Name1}, {v.NS2, v.Name2}} {
		if end.ns == nil {
			setSysctl(t, "net/ipv4/neigh/"+end.dev+"/retrans_time_ms", "100")
			setSysctl(t, "net/ipv6/neigh/"+end.dev+"/retrans_time_ms", "100")
		}
	}
}

// netnsArgs places a link in ns; nothing is needed for the host.
func netnsArgs(ns *Netns) []string {
	if ns == nil {
		return nil
	}

	return []string{"netns", ns.Name}
}

func setSysctl(t testing.TB, key, value string) {
	t.Helper()
	err := os.WriteFile("/proc/sys/"+key, []byte(value), 0o644)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("set %s: %v", strings.ReplaceAll(key, "/", "."), err)
	}
}

// delete removes the pair unless a namespace deletion already did.
func (v *VethPair) delete(t testing.TB) {
	cmd := v.NS1.Exec(context.Background(), "ip", "link", "del", v.Name1)
	if out, err := cmd.CombinedOutput(); err != nil &&
		!strings.Contains(string(out), "Cannot find device") &&
		!strings.Contains(string(out), "No such file") {
		t.Errorf("delete veth %s: %v: %s", v.Name1, err, out)
	}
}

// AddAddrs adds addr1 to the first end and addr2 to the second; an invalid
// prefix adds nothing. Use it to make a pair dual-stack.
func (v *VethPair) AddAddrs(t testing.TB, addr1, addr2 netip.Prefix) {
	t.Helper()
	AddAddr(t, v.NS1, v.Name1, addr1)
	AddAddr(t, v.NS2, v.Name2, addr2)
	waitNotTentative(t, v.NS1, v.Name1)
	waitNotTentative(t, v.NS2, v.Name2)
}

// waitLinkReady waits (at most two seconds) until dev is operationally up
// with its queueing discipline attached. The kernel's link watcher does both
// up to a second after "ip link set up" returns; until then the device drops
// what is sent (qdisc noop), and a test's first packet is lost.
func waitLinkReady(t testing.TB, ns *Netns, dev string) {
	t.Helper()
	poll(t, func() (bool, string) {
		out := runIP(t, ns, "-o", "link", "show", "dev", dev)
		return strings.Contains(out, "state UP") && !strings.Contains(out, "qdisc noop"), out
	}, "link "+dev+" in netns "+ns.String()+" not ready")
}

// poll calls ready every 10 ms until it returns true, failing t after two
// seconds with what and the last output.
func poll(t testing.TB, ready func() (bool, string), what string) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for {
		ok, out := ready()
		if ok {
			return
		}

		if time.Now().After(deadline) {
			t.Fatalf("%s after 2s: %s", what, out)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitNotTentative waits (at most two seconds) until no IPv6 address of dev
// is tentative. Even without DAD the kernel completes an address on a
// workqueue after the link comes up, and a tentative address does not answer
// neighbour solicitations: a packet sent in that window stalls for a second.
func waitNotTentative(t testing.TB, ns *Netns, dev string) {
	t.Helper()
	poll(t, func() (bool, string) {
		out := runIP(t, ns, "-6", "-o", "addr", "show", "dev", dev, "tentative")
		return strings.TrimSpace(out) == "", out
	}, "IPv6 addresses of "+dev+" in netns "+ns.String()+" still tentative")
}

// AddAddr adds addr to link dev in ns; IPv6 addresses skip duplicate address
// detection. An invalid prefix adds nothing.
func AddAddr(t testing.TB, ns *Netns, dev string, addr netip.Prefix) {
	t.Helper()
	if !addr.IsValid() {
		return
	}

	args := []string{"addr", "add", addr.String(), "dev", dev}
	if addr.Addr().Is6() {
		args = append(args, "nodad")
	}
	runIP(t, ns, args...)
}

// PolicyTopology is a client namespace whose only routes lead to a server
// namespace holding addresses that stand for the kinds of destination policy
// rules tell apart. Nothing sent from the client can leave the machine.
type PolicyTopology struct {
	Client, Server *Netns

	// The veth between them: the client's own addresses and the server
	// side's, which are the client's default gateways.
	Client4, Client6   netip.Addr
	Gateway4, Gateway6 netip.Addr

	// Addresses on the server's loopback. Public ones are documentation
	// ranges standing for Internet hosts.
	Public4, Public6     netip.Addr
	Private4, Private6   netip.Addr
	Metadata4, Metadata6 netip.Addr
}

// TopologyForPolicyTests builds a PolicyTopology, removed in t.Cleanup. A
// test serves on the server's addresses with ListenIn(t, top.Server, ...)
// and runs the command under test in top.Client.
func TopologyForPolicyTests(t testing.TB) *PolicyTopology {
	t.Helper()
	top := &PolicyTopology{
		Client:    NewNetns(t, "client"),
		Server:    NewNetns(t, "server"),
		Client4:   netip.MustParseAddr("198.18.0.2"),
		Client6:   netip.MustParseAddr("2001:db8:cf::2"),
		Gateway4:  netip.MustParseAddr("198.18.0.1"),
		Gateway6:  netip.MustParseAddr("2001:db8:cf::1"),
		Public4:   netip.MustParseAddr("203.0.113.10"),
		Public6:   netip.MustParseAddr("2001:db8:1::10"),
		Private4:  netip.MustParseAddr("10.20.30.40"),
		Private6:  netip.MustParseAddr("fd12:3456::10"),
		Metadata4: netip.MustParseAddr("169.254.169.254"),
		Metadata6: netip.MustParseAddr("fd00:ec2::254"),
	}

	v := Veth(t, top.Client, top.Server,
		netip.PrefixFrom(top.Client4, 24), netip.PrefixFrom(top.Gateway4, 24))
	v.AddAddrs(t, netip.PrefixFrom(top.Client6, 64), netip.PrefixFrom(top.Gateway6, 64))

	runIP(t, top.Client, "-4", "route", "add", "default", "via", top.Gateway4.String())
	runIP(t, top.Client, "-6", "route", "add", "default", "via", top.Gateway6.String())

	for _, a := range top.ServerAddrs() {
		AddAddr(t, top.Server, "lo", netip.PrefixFrom(a, a.BitLen()))
	}

	return top
}

// ServerAddrs returns the public, private and metadata addresses served by
// the server namespace.
func (top *PolicyTopology) ServerAddrs() []netip.Addr {
	return []netip.Addr{
		top.Public4, top.Public6, top.Private4, top.Private6, top.Metadata4, top.Metadata6,
	}
}
