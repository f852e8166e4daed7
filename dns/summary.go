package dns

import (
	"net/netip"
	"slices"
	"strings"

	mdns "github.com/miekg/dns"
)

// summary describes the answer section of a message for events and learning.
type summary struct {
	chain   []string // the query name, then each CNAME target followed from it
	addrs   []answerAddr
	cnames  []string
	records []string // other records as "TYPE rdata"
	ttl     uint32   // the smallest TTL of the answer section
}

type answerAddr struct {
	ip    netip.Addr
	owner string
	ttl   uint32
}

// summarize reads the answer section of m, a response to a query for qname.
func summarize(qname string, m *mdns.Msg) *summary {
	s := &summary{chain: followChain(qname, m.Answer)}

	for i, rr := range m.Answer {
		h := rr.Header()
		if i == 0 || h.Ttl < s.ttl {
			s.ttl = h.Ttl
		}

		switch rr := rr.(type) {
		case *mdns.A:
			s.addAddr(rr.A, h)
		case *mdns.AAAA:
			s.addAddr(rr.AAAA, h)
		case *mdns.CNAME:
			s.cnames = append(s.cnames, normalizeName(rr.Target))
		default:
			s.records = append(s.records, recordString(rr))
		}
	}

	return s
}

func (s *summary) addAddr(ip []byte, h *mdns.RR_Header) {
	a, ok := netip.AddrFromSlice(ip)
	if !ok {
		return
	}

	s.addrs = append(s.addrs, answerAddr{ip: a, owner: normalizeName(h.Name), ttl: h.Ttl})
}

// followChain returns qname followed by the target of each CNAME reached
// from it, stopping at a loop.
func followChain(qname string, answer []mdns.RR) []string {
	chain := []string{qname}

	for cur := qname; len(chain) <= len(answer); {
		next := ""
		for _, rr := range answer {
			if c, ok := rr.(*mdns.CNAME); ok && normalizeName(c.Hdr.Name) == cur {
				next = normalizeName(c.Target)
				break
			}
		}
		if next == "" || slices.Contains(chain, next) {
			break
		}

		chain = append(chain, next)
		cur = next
	}

	return chain
}

// namesOf returns the names an address answers for: the whole chain when its
// owner is on it, else its owner alone.
func (s *summary) namesOf(a answerAddr) []string {
	if slices.Contains(s.chain, a.owner) {
		return s.chain
	}

	return []string{a.owner}
}

// ipStrings returns the answer addresses as strings, never nil.
func (s *summary) ipStrings() []string {
	out := make([]string, len(s.addrs))
	for i, a := range s.addrs {
		out[i] = a.ip.String()
	}

	return out
}

// recordString renders rr without its owner, TTL and class: "MX 10 mx.".
func recordString(rr mdns.RR) string {
	rdata := strings.TrimPrefix(rr.String(), rr.Header().String())

	return typeName(rr.Header().Rrtype) + " " + rdata
}
