package policy

import "net/netip"

// privatePrefixes are the ranges that --block-private denies: RFC 1918,
// shared address space (RFC 6598), loopback, link-local, "this host", and
// their IPv6 counterparts (loopback, unspecified, unique local, link-local).
var privatePrefixes = []netip.Prefix{
	netip.MustParsePrefix("10.0.0.0/8"),
	netip.MustParsePrefix("172.16.0.0/12"),
	netip.MustParsePrefix("192.168.0.0/16"),
	netip.MustParsePrefix("100.64.0.0/10"),
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("169.254.0.0/16"),
	netip.MustParsePrefix("0.0.0.0/32"),
	netip.MustParsePrefix("::1/128"),
	netip.MustParsePrefix("::/128"),
	netip.MustParsePrefix("fc00::/7"),
	netip.MustParsePrefix("fe80::/10"),
}

// metadataAddrs are the cloud instance metadata endpoints that
// --block-metadata denies (the IPv6 one is AWS's).
var metadataAddrs = []netip.Addr{
	netip.MustParseAddr("169.254.169.254"),
	netip.MustParseAddr("fd00:ec2::254"),
}

// PrivatePrefixes returns the ranges --block-private denies. The slice is a
// copy the caller may keep.
func PrivatePrefixes() []netip.Prefix {
	return append([]netip.Prefix(nil), privatePrefixes...)
}

// MetadataAddrs returns the addresses --block-metadata denies. The slice is a
// copy the caller may keep.
func MetadataAddrs() []netip.Addr {
	return append([]netip.Addr(nil), metadataAddrs...)
}

func privatePrefixOf(a netip.Addr) (netip.Prefix, bool) {
	for _, p := range privatePrefixes {
		if p.Contains(a) {
			return p, true
		}
	}

	return netip.Prefix{}, false
}

func isMetadata(a netip.Addr) bool {
	for _, m := range metadataAddrs {
		if m == a {
			return true
		}
	}

	return false
}

// longestMatch returns the most specific rule containing a.
func longestMatch(rules []Rule, a netip.Addr) (Rule, bool) {
	best, found := Rule{}, false
	for _, r := range rules {
		if r.Prefix.Contains(a) && (!found || r.Prefix.Bits() > best.Prefix.Bits()) {
			best, found = r, true
		}
	}

	return best, found
}
