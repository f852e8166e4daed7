package dns

import (
	"bufio"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"

	mdns "github.com/miekg/dns"
)

// ParseHosts reads a hosts(5) file: an address followed by one or more names
// per line, "#" starting a comment. Names are lowercased without a trailing
// dot; an address listed twice for a name is kept once, in file order. A line
// with an unparsable address, a missing name or an invalid name is an error
// naming the line, since a silently ignored override would resolve upstream.
func ParseHosts(r io.Reader) (map[string][]netip.Addr, error) {
	hosts := make(map[string][]netip.Addr)
	sc := bufio.NewScanner(r)

	for line := 1; sc.Scan(); line++ {
		if err := parseHostsLine(hosts, sc.Text()); err != nil {
			return nil, fmt.Errorf("parse hosts line %d: %w", line, err)
		}
	}

	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read hosts: %w", err)
	}

	return hosts, nil
}

func parseHostsLine(hosts map[string][]netip.Addr, text string) error {
	if i := strings.IndexByte(text, '#'); i >= 0 {
		text = text[:i]
	}

	fields := strings.Fields(text)
	if len(fields) == 0 {
		return nil
	}

	addr, err := netip.ParseAddr(fields[0])
	if err != nil {
		return err
	}
	if len(fields) == 1 {
		return fmt.Errorf("address %s has no name", addr)
	}

	for _, f := range fields[1:] {
		name := normalizeName(f)
		if !validHostName(f) {
			return fmt.Errorf("invalid name %q", f)
		}
		if !containsAddr(hosts[name], addr) {
			hosts[name] = append(hosts[name], addr)
		}
	}

	return nil
}

// validHostName accepts a DNS name other than the root made of printable
// ASCII, without the backslash escapes of the zone-file format.
func validHostName(name string) bool {
	for i := range len(name) {
		if name[i] <= ' ' || name[i] > '~' || name[i] == '\\' {
			return false
		}
	}
	_, ok := mdns.IsDomainName(name)

	return ok && name != "."
}

func containsAddr(addrs []netip.Addr, a netip.Addr) bool {
	for _, b := range addrs {
		if a == b {
			return true
		}
	}

	return false
}

// ReadHostsFile parses the hosts file at path with ParseHosts.
func ReadHostsFile(path string) (map[string][]netip.Addr, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open hosts file: %w", err)
	}
	defer f.Close()

	hosts, err := ParseHosts(f)
	if err != nil {
		return nil, fmt.Errorf("read hosts file %s: %w", path, err)
	}

	return hosts, nil
}

// normalizeName lowercases a DNS name and strips its trailing dot; the root
// stays ".".
func normalizeName(name string) string {
	if name == "." || name == "" {
		return name
	}

	return strings.ToLower(strings.TrimSuffix(name, "."))
}
