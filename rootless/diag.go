package rootless

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"
)

// sock_diag (linux/inet_diag.h): an exact lookup of one socket by its
// 4-tuple, answered from the kernel's hash tables. The socket is created by
// the init, so it queries the command's network namespace.
const (
	sockDiagByFamily = 20
	inetDiagReqLen   = 56
	inetDiagMsgLen   = 72
	inetDiagInodeOff = 68
)

// socketInodeOf returns the inode of the command's socket with local address
// local connected (or sending) to remote, or 0 when there is none.
func socketInodeOf(fd int, proto int, local, remote netip.AddrPort) (uint32, error) {
	// The kernel's UDP lookup takes the 4-tuple as a received packet
	// carries it: the source is the remote end.
	if proto == unix.IPPROTO_UDP {
		local, remote = remote, local
	}

	req := diagRequest(proto, local, remote)
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return 0, fmt.Errorf("send sock_diag request: %w", err)
	}

	buf := make([]byte, 4096)
	n, _, err := unix.Recvfrom(fd, buf, 0)
	if err != nil {
		return 0, fmt.Errorf("receive sock_diag answer: %w", err)
	}

	return parseDiagAnswer(buf[:n]), nil
}

// diagRequest builds the netlink message of an exact sock_diag lookup.
func diagRequest(proto int, local, remote netip.AddrPort) []byte {
	fam := byte(unix.AF_INET)
	if local.Addr().Is6() {
		fam = unix.AF_INET6
	}

	msg := make([]byte, unix.NLMSG_HDRLEN+inetDiagReqLen)
	binary.NativeEndian.PutUint32(msg[0:], uint32(len(msg)))
	binary.NativeEndian.PutUint16(msg[4:], sockDiagByFamily)
	binary.NativeEndian.PutUint16(msg[6:], unix.NLM_F_REQUEST)

	r := msg[unix.NLMSG_HDRLEN:]
	r[0], r[1] = fam, byte(proto)
	binary.NativeEndian.PutUint32(r[4:], 0xffffffff)
	binary.BigEndian.PutUint16(r[8:], local.Port())
	binary.BigEndian.PutUint16(r[10:], remote.Port())
	copy(r[12:28], local.Addr().AsSlice())
	copy(r[28:44], remote.Addr().AsSlice())
	binary.NativeEndian.PutUint32(r[48:], 0xffffffff)
	binary.NativeEndian.PutUint32(r[52:], 0xffffffff)

	return msg
}

// parseDiagAnswer returns the inode of the first inet_diag_msg in b, or 0
// for an error answer or anything malformed.
func parseDiagAnswer(b []byte) uint32 {
	if len(b) < unix.NLMSG_HDRLEN {
		return 0
	}

	l := int(binary.NativeEndian.Uint32(b[0:]))
	typ := binary.NativeEndian.Uint16(b[4:])
	if typ != sockDiagByFamily || l > len(b) || l < unix.NLMSG_HDRLEN+inetDiagMsgLen {
		return 0
	}

	return binary.NativeEndian.Uint32(b[unix.NLMSG_HDRLEN+inetDiagInodeOff:])
}
