package trace

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// The joiner writes the proxy's credentials on the program's socket, so it
// must reach the proxy that childflow would reach itself. A program could
// steer its socket elsewhere: create it in a network namespace of its own,
// where its own listener poses as the proxy, or bind it to a device, set
// IPv4 source routing or an IPv6 routing header, a mark, or SO_DONTROUTE.
// The joiner leaves such sockets to the relay, whose credentials never touch
// the program's socket. It checks the routing options again after the TCP
// connect, right before it writes the handshake.

// errRerouted ends a tunnel whose socket's routing changed while the joiner
// connected it.
var errRerouted = errors.New("the program changed its socket's routing options during the connect")

// netnsID identifies a network namespace by its nsfs inode.
type netnsID struct{ dev, ino uint64 }

// ownNetns returns childflow's network namespace.
func ownNetns() (netnsID, error) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/ns/net", &st); err != nil {
		return netnsID{}, fmt.Errorf("stat own network namespace: %w", err)
	}

	return netnsID{st.Dev, st.Ino}, nil
}

// socketNetns returns the network namespace the socket fd lives in
// (SIOCGSKNS, Linux 4.9).
func socketNetns(fd int) (netnsID, error) {
	ns, err := unix.IoctlRetInt(fd, unix.SIOCGSKNS)
	if err != nil {
		return netnsID{}, fmt.Errorf("get the socket's network namespace: %w", err)
	}
	f := os.NewFile(uintptr(ns), "netns")
	defer f.Close()

	var st unix.Stat_t
	if err := unix.Fstat(ns, &st); err != nil {
		return netnsID{}, fmt.Errorf("stat the socket's network namespace: %w", err)
	}

	return netnsID{st.Dev, st.Ino}, nil
}

// routedAsOwn tells whether a connect on fd to the proxy takes the route a
// socket of childflow's would: same network namespace, no device binding,
// no source routing, mark or SO_DONTROUTE.
func routedAsOwn(fd, family int, own netnsID) bool {
	ns, err := socketNetns(fd)
	if err != nil || ns != own {
		return false
	}

	return routingUnchanged(fd, family)
}

// routingUnchanged tells whether fd carries none of the options that pick a
// route other than the namespace's own.
func routingUnchanged(fd, family int) bool {
	dev, err := unix.GetsockoptString(fd, unix.SOL_SOCKET, unix.SO_BINDTODEVICE)
	if err != nil || dev != "" {
		return false
	}
	for _, opt := range []int{unix.SO_DONTROUTE, unix.SO_MARK} {
		if v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, opt); err != nil || v != 0 {
			return false
		}
	}

	if o, err := unix.GetsockoptString(fd, unix.IPPROTO_IP, unix.IP_OPTIONS); err != nil || o != "" {
		return false
	}
	if family == unix.AF_INET6 {
		h, err := unix.GetsockoptString(fd, unix.IPPROTO_IPV6, unix.IPV6_RTHDR)
		if err != nil || h != "" {
			return false
		}
	}

	return true
}
