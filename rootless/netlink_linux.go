package rootless

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"
)

// netlinkConn is a route netlink socket used by the init to configure links,
// addresses and routes without the ip command. Requests are sent one at a time
// and each waits for its acknowledgement.
type netlinkConn struct {
	fd  int
	seq uint32
}

func dialNetlink() (*netlinkConn, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("open netlink socket: %w", err)
	}

	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("bind netlink socket: %w", err)
	}

	return &netlinkConn{fd: fd}, nil
}

func (c *netlinkConn) Close() error { return unix.Close(c.fd) }

// nlAttr appends one route attribute (type, value, padding) to b.
func nlAttr(b []byte, typ uint16, val []byte) []byte {
	l := unix.SizeofRtAttr + len(val)
	b = binary.NativeEndian.AppendUint16(b, uint16(l))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = append(b, val...)

	for len(b)%unix.NLMSG_ALIGNTO != 0 {
		b = append(b, 0)
	}

	return b
}

func u32(v uint32) []byte { return binary.NativeEndian.AppendUint32(nil, v) }

// do sends one request with body (the fixed header and attributes that follow
// the netlink header) and returns the kernel's verdict.
func (c *netlinkConn) do(typ uint16, flags uint16, body []byte) error {
	c.seq++
	msg := make([]byte, 0, unix.NLMSG_HDRLEN+len(body))
	msg = binary.NativeEndian.AppendUint32(msg, uint32(unix.NLMSG_HDRLEN+len(body)))
	msg = binary.NativeEndian.AppendUint16(msg, typ)
	msg = binary.NativeEndian.AppendUint16(msg, flags|unix.NLM_F_REQUEST|unix.NLM_F_ACK)
	msg = binary.NativeEndian.AppendUint32(msg, c.seq)
	msg = binary.NativeEndian.AppendUint32(msg, 0)
	msg = append(msg, body...)

	if err := unix.Sendto(c.fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}

	return c.readAck()
}

func (c *netlinkConn) readAck() error {
	buf := make([]byte, 8192)
	for range 16 {
		n, _, err := unix.Recvfrom(c.fd, buf, 0)
		if err != nil {
			return err
		}

		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return err
		}

		for _, m := range msgs {
			if m.Header.Seq != c.seq || m.Header.Type != unix.NLMSG_ERROR || len(m.Data) < 4 {
				continue
			}

			if errno := int32(binary.NativeEndian.Uint32(m.Data)); errno != 0 {
				return unix.Errno(-errno)
			}

			return nil
		}
	}

	return fmt.Errorf("no netlink acknowledgement for request %d", c.seq)
}

// linkUp sets the link with index idx up and, when mtu > 0, its MTU.
func (c *netlinkConn) linkUp(idx int, mtu int) error {
	body := make([]byte, unix.SizeofIfInfomsg)
	binary.NativeEndian.PutUint32(body[4:], uint32(idx))
	binary.NativeEndian.PutUint32(body[8:], unix.IFF_UP)
	binary.NativeEndian.PutUint32(body[12:], unix.IFF_UP)
	if mtu > 0 {
		body = nlAttr(body, unix.IFLA_MTU, u32(uint32(mtu)))
	}

	if err := c.do(unix.RTM_NEWLINK, 0, body); err != nil {
		return fmt.Errorf("set link %d up: %w", idx, err)
	}

	return nil
}

// addAddr assigns p to the link idx. IPv6 addresses skip duplicate address
// detection so that they are usable at once.
func (c *netlinkConn) addAddr(idx int, p netip.Prefix) error {
	fam := byte(unix.AF_INET)
	if p.Addr().Is6() {
		fam = unix.AF_INET6
	}

	body := make([]byte, unix.SizeofIfAddrmsg)
	body[0] = fam
	body[1] = byte(p.Bits())
	binary.NativeEndian.PutUint32(body[4:], uint32(idx))
	body = nlAttr(body, unix.IFA_LOCAL, p.Addr().AsSlice())
	body = nlAttr(body, unix.IFA_ADDRESS, p.Addr().AsSlice())
	if p.Addr().Is6() {
		body = nlAttr(body, unix.IFA_FLAGS, u32(unix.IFA_F_NODAD))
	}

	if err := c.do(unix.RTM_NEWADDR, unix.NLM_F_CREATE|unix.NLM_F_EXCL, body); err != nil {
		return fmt.Errorf("add address %s to link %d: %w", p, idx, err)
	}

	return nil
}

// addDefaultRoute adds a default route through gw on link idx.
func (c *netlinkConn) addDefaultRoute(idx int, gw netip.Addr) error {
	body := make([]byte, unix.SizeofRtMsg)
	body[0] = unix.AF_INET
	if gw.Is6() {
		body[0] = unix.AF_INET6
	}
	body[4] = unix.RT_TABLE_MAIN
	body[5] = unix.RTPROT_BOOT
	body[6] = unix.RT_SCOPE_UNIVERSE
	body[7] = unix.RTN_UNICAST
	body = nlAttr(body, unix.RTA_GATEWAY, gw.AsSlice())
	body = nlAttr(body, unix.RTA_OIF, u32(uint32(idx)))

	if err := c.do(unix.RTM_NEWROUTE, unix.NLM_F_CREATE|unix.NLM_F_EXCL, body); err != nil {
		return fmt.Errorf("add default route via %s: %w", gw, err)
	}

	return nil
}
