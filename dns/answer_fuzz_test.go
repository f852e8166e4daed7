package dns

import (
	"encoding/binary"
	"testing"

	mdns "github.com/miekg/dns"
)

// FuzzUpstreamAnswer feeds arbitrary upstream answers through what the
// forwarder does with them: parse and check, summarise for learning and
// events, cut to a UDP size and pack.
func FuzzUpstreamAnswer(f *testing.F) {
	for _, rrs := range [][]string{
		{"www.chain.test. 60 IN CNAME end.chain.test.", "end.chain.test. 60 IN A 192.0.2.1"},
		{"a.test. 60 IN CNAME a.test.", "a.test. 60 IN AAAA 2001:db8::1"},
		{`a.test. 60 IN HTTPS 1 . alpn="h2" ipv4hint=192.0.2.1`},
	} {
		m := new(mdns.Msg)
		m.SetQuestion("www.chain.test.", mdns.TypeA)
		m.Response = true
		for _, s := range rrs {
			rr, err := mdns.NewRR(s)
			if err != nil {
				f.Fatal(err)
			}
			m.Answer = append(m.Answer, rr)
		}
		wire, err := m.Pack()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(wire)
	}

	question := []mdns.Question{{Name: "www.chain.test.", Qtype: mdns.TypeA, Qclass: mdns.ClassINET}}
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) < 2 {
			return
		}
		resp, err := parseAnswer(b, binary.BigEndian.Uint16(b), question)
		if err != nil {
			return
		}

		sum := summarize("www.chain.test", resp)
		if len(sum.chain) == 0 || sum.chain[0] != "www.chain.test" || len(sum.chain) > len(resp.Answer)+1 {
			t.Fatalf("got chain %v for %d answers", sum.chain, len(resp.Answer))
		}
		for _, a := range sum.addrs {
			if len(sum.namesOf(a)) == 0 {
				t.Fatalf("got no names for %s", a.ip)
			}
		}

		resp.Compress = true
		resp.Truncate(mdns.MinMsgSize)
		if wire, err := resp.Pack(); err == nil && len(wire) > mdns.MinMsgSize && !resp.Truncated {
			t.Fatalf("got %d bytes without TC after truncating to 512", len(wire))
		}
	})
}
