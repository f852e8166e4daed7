package dns

import (
	"bufio"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
)

// ErrNoNameserver is returned by ResolvConf when the file names no usable
// nameserver.
var ErrNoNameserver = errors.New("no usable nameserver")

// ResolvConf returns the nameservers of a resolv.conf(5) file at path, in
// order, each on port 53. IPv6 addresses may carry a zone ("fe80::1%eth0").
// Entries that are not IP addresses are skipped as the C library does; a file
// without any usable entry yields an error wrapping ErrNoNameserver.
func ResolvConf(path string) ([]netip.AddrPort, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open resolver config: %w", err)
	}
	defer f.Close()

	var servers []netip.AddrPort
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if ap, ok := parseNameserver(sc.Text()); ok {
			servers = append(servers, ap)
		}
	}

	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read resolver config %s: %w", path, err)
	}
	if len(servers) == 0 {
		return nil, fmt.Errorf("read resolver config %s: %w", path, ErrNoNameserver)
	}

	return servers, nil
}

func parseNameserver(line string) (netip.AddrPort, bool) {
	if i := strings.IndexAny(line, "#;"); i >= 0 {
		line = line[:i]
	}

	fields := strings.Fields(line)
	if len(fields) < 2 || fields[0] != "nameserver" {
		return netip.AddrPort{}, false
	}

	addr, err := netip.ParseAddr(fields[1])
	if err != nil {
		return netip.AddrPort{}, false
	}

	return netip.AddrPortFrom(addr, 53), true
}
