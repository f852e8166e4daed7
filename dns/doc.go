// Package dns is childflow's DNS forwarder. The eBPF backend redirects every
// DNS query of the traced command tree to it on loopback, and the rootless
// backend hands it the queries sent to its gateway. For each query it emits a
// dns_query and a dns_answer event, applies domain policy, answers hosts-file
// overrides and offline runs locally, and otherwise relays to the upstream
// resolver (by default the host's, from /etc/resolv.conf).
//
// Domain policy is race-free: every A/AAAA address of an answer, with the
// query name and every name of its CNAME chain, is passed to Config.Learn and
// stored in the Names table before the answer is written to the program. If
// learning fails the program gets SERVFAIL, never an answer the policy does
// not know about.
//
// The package is imported as github.com/childflow/childflow/dns and wraps
// github.com/miekg/dns; callers that need both alias one of them.
//
// Things to watch out for:
//   - Each UDP query is served in its own goroutine, up to
//     Config.MaxInFlight at once; the excess is answered SERVFAIL and counted
//     in Stats.Dropped. Queries pipelined on one TCP connection are served
//     one after the other, as miekg/dns serves them.
//   - A query for a denied name is answered NOERROR without records and is
//     never sent upstream. A name reached only through a CNAME chain can
//     only be judged once the upstream answered: when one is denied, the
//     program gets the same empty answer and a violation naming it (with
//     the chain in names), and the chain's addresses are still passed to
//     Learn, so that a connect to them is denied too.
//   - Names only lives for the TTL of an answer (at least
//     NamesConfig.MinTTL) plus NamesConfig.Grace; Names.Expiry tells a
//     backend when to look again, so that what it learned from Learn can
//     expire with the names.
//   - The forwarder sees only what reaches it: DNS over TLS (port 853) and
//     DNS over HTTPS are ordinary TCP connections that never do, so the
//     names they resolve are unknown here (see the README's limitations).
//   - Upstream queries use a fresh socket and a random ID per attempt, so an
//     answer can only come from the upstream asked and must match the ID and
//     the question.
package dns
