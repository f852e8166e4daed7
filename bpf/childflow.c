//go:build ignore
// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * childflow's cgroup programs. Attached to one run cgroup, they see every
 * socket of the traced command tree and nothing else:
 *
 *   sock_create/sock_release  own a per-socket flow entry; report flow ends
 *   connect4/6, sendmsg4/6    police destinations, redirect DNS to the
 *                             forwarder and TCP to the proxy relay, report
 *                             connects and first datagrams; police and
 *                             report the proxy connects childflow makes
 *                             for the program (cf_tunnels)
 *   recvmsg4/6                give redirected DNS answers their original source
 *   sockops                   TCP handshake results and TCP flow ends
 *   cgroup_skb egress/ingress count packets and bytes per flow, police what
 *                             bypassed the socket hooks (ICMP, raw), sniff the
 *                             first payload bytes, and copy packets for capture
 *
 * Configuration is in const volatile globals that the loader sets before
 * loading; policy rules are in LPM tries and the learned-address table.
 */
#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "childflow.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define AF_INET 2
#define AF_INET6 10
#define SOCK_STREAM 1
#define SOCK_DGRAM 2
#define SOCK_RAW 3
#define TCP_FLAG_RST 0x04
#define CF_VIOL_INTERVAL_NS 1000000000ULL

/* Configuration, set by the loader before load. */
const volatile __u32 cf_cfg_policy = 0;
const volatile __u32 cf_cfg_capture = 0;
const volatile __u32 cf_cfg_snaplen = 65535;
const volatile __u32 cf_cfg_dns = 0;	  /* redirect port 53 to the forwarder */
const volatile __u16 cf_cfg_dns_port4 = 0; /* forwarder on 127.0.0.1 */
const volatile __u16 cf_cfg_dns_port6 = 0; /* forwarder on ::1 */
const volatile __u32 cf_cfg_proxy = 0;	  /* redirect TCP to the relay */
const volatile __u16 cf_cfg_proxy_port4 = 0;
const volatile __u16 cf_cfg_proxy_port6 = 0;
const volatile __u32 cf_cfg_sniff = 1;
const volatile __u64 cf_cfg_wakeup_bytes = 1 << 20;
const volatile __u64 cf_cfg_event_wakeup = 0; /* 0: wake the reader on every event */

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	/* 2 MiB: about 15000 events; user space maps it twice, so it costs
	 * 4 MiB of resident memory. */
	__uint(max_entries, 2 << 20);
} cf_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20); /* resized by the loader */
} cf_packets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CF_LOSS_MAX);
	__type(key, __u32);
	__type(value, __u64);
} cf_loss SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct cf_flow);
	__uint(map_flags, BPF_F_NO_PREALLOC); /* preallocation costs ~5 ms at load */
} cf_flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, struct cf_client_key);
	__type(value, struct cf_client);
} cf_clients SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 4096);
	__type(key, struct cf_lpm4);
	__type(value, __u32);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} cf_deny4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 4096);
	__type(key, struct cf_lpm4);
	__type(value, __u32);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} cf_allow4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 4096);
	__type(key, struct cf_lpm6);
	__type(value, __u32);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} cf_deny6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 4096);
	__type(key, struct cf_lpm6);
	__type(value, __u32);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} cf_allow6 SEC(".maps");

/* Addresses that DNS answers taught, keyed by the 16-byte address (IPv4 in
 * the first 4 bytes, the rest zero). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u8[16]);
	__type(value, struct cf_learned);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} cf_ips SEC(".maps");

/* The forwarder's upstream servers: a program that asks one of them directly
 * (dig @127.0.0.1 -p 5353 when --dns names that) is redirected to the
 * forwarder as if it asked port 53. Filled by the loader, read-only here. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16);
	__type(key, struct cf_dns_key);
	__type(value, __u8);
} cf_dns_srv SEC(".maps");

/* Sockets in a proxy handshake that childflow performs for the program
 * (struct cf_tunnel). Written and deleted by user space. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct cf_tunnel);
} cf_tunnels SEC(".maps");

/* Violations already reported, to sum up retry loops. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct cf_viol_key);
	__type(value, struct cf_viol);
} cf_viols SEC(".maps");

/* Make the shared types visible to bpf2go. */
const struct cf_event *unused_event __attribute__((unused));
const struct cf_pkt *unused_pkt __attribute__((unused));

static __always_inline void cf_lost(__u32 idx)
{
	__u64 *n = bpf_map_lookup_elem(&cf_loss, &idx);

	if (n)
		*n += 1;
}

/* The destination of a sock_addr call. IPv4-mapped IPv6 becomes IPv4. */
struct cf_dst {
	__u8 addr[16] __attribute__((aligned(4)));
	__u16 port;
	__u8 family;
	__u8 mapped;
};

static __always_inline void cf_dst_of(struct bpf_sock_addr *ctx, struct cf_dst *d, const int v6)
{
	__builtin_memset(d, 0, sizeof(*d));
	d->port = bpf_ntohs(ctx->user_port);
	if (!v6) {
		__u32 a = ctx->user_ip4;

		__builtin_memcpy(d->addr, &a, 4);
		d->family = 4;
		return;
	}

	__u32 w0 = ctx->user_ip6[0], w1 = ctx->user_ip6[1];
	__u32 w2 = ctx->user_ip6[2], w3 = ctx->user_ip6[3];

	if (w0 == 0 && w1 == 0 && w2 == bpf_htonl(0xffff)) {
		__builtin_memcpy(d->addr, &w3, 4);
		d->family = 4;
		d->mapped = 1;
		return;
	}
	__builtin_memcpy(d->addr, &w0, 4);
	__builtin_memcpy(d->addr + 4, &w1, 4);
	__builtin_memcpy(d->addr + 8, &w2, 4);
	__builtin_memcpy(d->addr + 12, &w3, 4);
	d->family = 6;
}

/*
 * Address predicates. a is a 16-byte address (IPv4 in the first 4 bytes),
 * 4-byte aligned: it is read as words, which keeps the verifier's work small
 * (byte loops over IPv6 addresses made connect6 and sendmsg6 the slowest
 * programs to load).
 */

/* cf_is_loopback is true for 127/8, ::1 and the unspecified addresses, which
 * a connect sends to the local host too. */
static __always_inline int cf_is_loopback(const __u8 *a, __u8 family)
{
	const __u32 *w = (const void *)a;

	if (family == 4)
		return a[0] == 127 || w[0] == 0;
	return !(w[0] | w[1] | w[2]) && (w[3] == 0 || w[3] == bpf_htonl(1));
}

/* cf_addr_eq compares two 16-byte, 4-byte aligned addresses. */
static __always_inline int cf_addr_eq(const __u8 *a, const __u8 *b)
{
	const __u32 *x = (const void *)a, *y = (const void *)b;

	return !((x[0] ^ y[0]) | (x[1] ^ y[1]) | (x[2] ^ y[2]) | (x[3] ^ y[3]));
}

static __always_inline int cf_is_metadata(const __u8 *a, __u8 family)
{
	const __u32 *w = (const void *)a;

	if (family == 4)
		return w[0] == bpf_htonl(0xa9fea9fe); /* 169.254.169.254 */
	/* fd00:ec2::254 */
	return w[0] == bpf_htonl(0xfd000ec2) && !(w[1] | w[2]) && w[3] == bpf_htonl(0x254);
}

static __always_inline int cf_is_private(const __u8 *a, __u8 family)
{
	const __u32 *w = (const void *)a;

	if (family == 4) {
		if (a[0] == 10 || a[0] == 127)
			return 1;
		if (a[0] == 172 && (a[1] & 0xf0) == 16)
			return 1;
		if (a[0] == 192 && a[1] == 168)
			return 1;
		if (a[0] == 100 && (a[1] & 0xc0) == 64)
			return 1;
		if (a[0] == 169 && a[1] == 254)
			return 1;
		return w[0] == 0;
	}
	if ((a[0] & 0xfe) == 0xfc) /* fc00::/7 */
		return 1;
	if (a[0] == 0xfe && (a[1] & 0xc0) == 0x80) /* fe80::/10 */
		return 1;
	return cf_is_loopback(a, family); /* ::1 and :: */
}

static __always_inline __u32 *cf_lpm(const __u8 *a, __u8 family, int deny)
{
	if (family == 4) {
		struct cf_lpm4 k = {.prefixlen = 32};

		__builtin_memcpy(k.addr, a, 4);
		return bpf_map_lookup_elem(deny ? (void *)&cf_deny4 : (void *)&cf_allow4, &k);
	}

	struct cf_lpm6 k = {.prefixlen = 128};

	__builtin_memcpy(k.addr, a, 16);
	return bpf_map_lookup_elem(deny ? (void *)&cf_deny6 : (void *)&cf_allow6, &k);
}

/*
 * cf_evaluate judges a destination in the documented order: offline,
 * metadata, private, deny-cidr, deny-domain(-exact), allow-cidr,
 * allow-domain, default deny, proxy-only. It returns a cf_reason, and the
 * matched rule index + 1 in *rule.
 */
static __always_inline __u8 cf_evaluate(const __u8 *a, __u8 family, int proxyable, __u32 *rule)
{
	__u32 cfg = cf_cfg_policy;

	*rule = 0;
	if (!(cfg & CF_P_ACTIVE))
		return CF_R_NONE;
	if ((cfg & CF_P_OFFLINE) && !cf_is_loopback(a, family))
		return CF_R_OFFLINE;
	if ((cfg & CF_P_BLOCK_METADATA) && cf_is_metadata(a, family))
		return CF_R_METADATA;
	if ((cfg & CF_P_BLOCK_PRIVATE) && cf_is_private(a, family))
		return CF_R_PRIVATE;

	__u32 *idx = cf_lpm(a, family, 1);
	if (idx) {
		*rule = *idx;
		return CF_R_DENY_CIDR;
	}

	struct cf_learned *l = bpf_map_lookup_elem(&cf_ips, a);
	if (l && !l->allowed) {
		*rule = l->rule;
		return l->reason;
	}
	/* First match wins: an allow rule also spares proxy-only. */
	if (cf_lpm(a, family, 0) || (l && l->allowed))
		return CF_R_NONE;
	if (cfg & CF_P_DEFAULT_DENY)
		return CF_R_DEFAULT_DENY;
	if (!proxyable && (cfg & CF_P_PROXY_ONLY))
		return CF_R_PROXY_ONLY;
	return CF_R_NONE;
}

static __always_inline void cf_fill_task(struct cf_event *e)
{
	__u64 id = bpf_get_current_pid_tgid();

	e->tgid = id >> 32;
	e->pid = (__u32)id;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
}

/* Most events carry no payload bytes: they reserve the record without its
 * data[] tail, which keeps the ring buffer four times denser. */
#define CF_EVENT_HEAD (sizeof(struct cf_event) - CF_SNIFF_LEN)

static __always_inline void *cf_reserve_size(__u64 size)
{
	struct cf_event *e = bpf_ringbuf_reserve(&cf_events, size, 0);

	if (!e) {
		cf_lost(CF_LOSS_EVENTS);
		return 0;
	}
	__builtin_memset(e, 0, CF_EVENT_HEAD);
	e->ts_ns = bpf_ktime_get_ns();
	return e;
}

static __always_inline struct cf_event *cf_reserve(void)
{
	return cf_reserve_size(CF_EVENT_HEAD);
}

/* cf_submit wakes the reader only when enough has piled up; the reader also
 * polls, so a quiet ring is drained within its poll interval. */
static __always_inline void cf_submit(void *e)
{
	__u64 flags = bpf_ringbuf_query(&cf_events, BPF_RB_AVAIL_DATA) >= cf_cfg_event_wakeup
			      ? BPF_RB_FORCE_WAKEUP
			      : BPF_RB_NO_WAKEUP;

	bpf_ringbuf_submit(e, flags);
}

/*
 * cf_violation reports a denied attempt, at most once a second for the same
 * process, destination and reason; the attempts in between are counted and
 * reported with the next one, or read from the table at the end of the run.
 */
static __always_inline void cf_violation(const __u8 *a, __u8 family, __u16 port, __u8 proto,
					 __u8 reason, __u32 rule, __u32 tgid, int from_task,
					 const struct cf_flow *f)
{
	struct cf_viol_key k = {};
	__u64 now = bpf_ktime_get_ns();
	__u32 count = 1;

	__builtin_memcpy(k.daddr, a, 16);
	k.tgid = tgid;
	k.dport = port;
	k.proto = proto;
	k.reason = reason;

	struct cf_viol *v = bpf_map_lookup_elem(&cf_viols, &k);
	if (v) {
		if (now - v->last_ns < CF_VIOL_INTERVAL_NS) {
			__sync_fetch_and_add(&v->pending, 1);
			return;
		}
		count += v->pending;
		v->pending = 0;
		v->last_ns = now;
	} else {
		struct cf_viol nv = {.last_ns = now, .family = family};

		bpf_map_update_elem(&cf_viols, &k, &nv, BPF_ANY);
	}

	struct cf_event *e = cf_reserve();
	if (!e)
		return;
	e->kind = CF_EV_VIOLATION;
	e->family = family;
	e->proto = proto;
	e->reason = reason;
	e->rule = rule;
	e->count = count;
	e->dport = port;
	__builtin_memcpy(e->daddr, a, 16);
	if (cf_cfg_policy & CF_P_AUDIT)
		e->flags = CF_F_AUDIT;
	if (from_task) {
		cf_fill_task(e);
	} else if (f) {
		e->tgid = f->tgid;
		e->pid = f->pid;
		__builtin_memcpy(e->comm, f->comm, sizeof(e->comm));
	}
	cf_submit(e);
}

static __always_inline struct cf_flow *cf_flow_of(__u64 cookie)
{
	return bpf_map_lookup_elem(&cf_flows, &cookie);
}

/* cf_flow_new creates the entry of a socket first seen outside
 * sock_create (accepted sockets). */
static __always_inline struct cf_flow *cf_flow_new(__u64 cookie, __u8 family, __u8 proto,
						   int from_task)
{
	struct cf_flow f = {};

	f.start_ns = bpf_ktime_get_ns();
	f.family = family;
	f.proto = proto;
	if (from_task) {
		__u64 id = bpf_get_current_pid_tgid();

		f.tgid = id >> 32;
		f.pid = (__u32)id;
		bpf_get_current_comm(f.comm, sizeof(f.comm));
	}
	if (bpf_map_update_elem(&cf_flows, &cookie, &f, BPF_NOEXIST) &&
	    !bpf_map_lookup_elem(&cf_flows, &cookie)) {
		cf_lost(CF_LOSS_FLOWS);
		return 0;
	}
	return bpf_map_lookup_elem(&cf_flows, &cookie);
}

static __always_inline void cf_fill_flow(struct cf_event *e, __u64 cookie, const struct cf_flow *f)
{
	e->cookie = cookie;
	e->tgid = f->tgid;
	e->pid = f->pid;
	__builtin_memcpy(e->comm, f->comm, sizeof(e->comm));
	__builtin_memcpy(e->daddr, f->daddr, 16);
	e->dport = f->dport;
	e->family = f->family;
	e->proto = f->proto;
	e->flags = f->flags;
	e->start_ns = f->start_ns;
	e->bytes_out = f->bytes_out;
	e->bytes_in = f->bytes_in;
	e->pkts_out = f->pkts_out;
	e->pkts_in = f->pkts_in;
}

static __always_inline void cf_flow_end(__u64 cookie, struct cf_flow *f)
{
	if (f->flags & CF_F_ENDED)
		return;
	f->flags |= CF_F_ENDED;

	struct cf_event *e = cf_reserve();
	if (e) {
		e->kind = CF_EV_FLOW_END;
		cf_fill_flow(e, cookie, f);
		cf_submit(e);
	}
	bpf_map_delete_elem(&cf_flows, &cookie);
}

SEC("cgroup/sock_create")
int cf_sock_create(struct bpf_sock *sk)
{
	__u8 family = sk->family == AF_INET6 ? 6 : 4;
	__u8 proto = sk->protocol;
	__u64 cookie = bpf_get_socket_cookie(sk);

	if (sk->family != AF_INET && sk->family != AF_INET6)
		return 1;

	/* Raw sockets can forge anything; under offline or default deny they
	 * are refused outright. Egress packets of raw sockets allowed here are
	 * still judged by the egress program. */
	if (sk->type == SOCK_RAW && (cf_cfg_policy & CF_P_ACTIVE) &&
	    (cf_cfg_policy & (CF_P_OFFLINE | CF_P_DEFAULT_DENY | CF_P_PROXY_ONLY)) &&
	    !(cf_cfg_policy & CF_P_AUDIT)) {
		__u8 zero[16] = {};
		__u8 reason = (cf_cfg_policy & CF_P_OFFLINE) ? CF_R_OFFLINE
			      : (cf_cfg_policy & CF_P_DEFAULT_DENY) ? CF_R_DEFAULT_DENY
							      : CF_R_PROXY_ONLY;

		cf_violation(zero, family, 0, proto ? proto : IPPROTO_RAW, reason, 0,
			     bpf_get_current_pid_tgid() >> 32, 1, 0);
		return 0;
	}

	struct cf_flow *f = cf_flow_new(cookie, family, proto, 1);
	if (f)
		f->start_ns = bpf_ktime_get_ns();
	return 1;
}

SEC("cgroup/sock_release")
int cf_sock_release(struct bpf_sock *sk)
{
	__u64 cookie = bpf_get_socket_cookie(sk);
	struct cf_flow *f = cf_flow_of(cookie);

	if (!f)
		return 1;
	/* sockops reports a tracked TCP flow when it reaches CLOSE, after the
	 * data still queued at close() has been sent. */
	if ((f->flags & CF_F_TCP_TRACKED) && sk->state != BPF_TCP_CLOSE)
		return 1;
	cf_flow_end(cookie, f);
	return 1;
}

/* cf_redirect points a call at the forwarder or the relay on loopback, in
 * the family the program used (IPv4-mapped for mapped destinations). */
static __always_inline void cf_redirect(struct bpf_sock_addr *ctx, const struct cf_dst *d,
					__u16 port4, __u16 port6, const int v6)
{
	if (!v6) {
		ctx->user_ip4 = bpf_htonl(0x7f000001);
		ctx->user_port = bpf_htons(port4);
		return;
	}
	if (d->mapped) {
		ctx->user_ip6[0] = 0;
		ctx->user_ip6[1] = 0;
		ctx->user_ip6[2] = bpf_htonl(0xffff);
		ctx->user_ip6[3] = bpf_htonl(0x7f000001);
		ctx->user_port = bpf_htons(port4);
		return;
	}
	ctx->user_ip6[0] = 0;
	ctx->user_ip6[1] = 0;
	ctx->user_ip6[2] = 0;
	ctx->user_ip6[3] = bpf_htonl(1);
	ctx->user_port = bpf_htons(port6);
}

static __always_inline void cf_note_dst(struct cf_flow *f, const struct cf_dst *d, __u16 flags)
{
	__u64 id = bpf_get_current_pid_tgid();

	__builtin_memcpy(f->daddr, d->addr, 16);
	f->dport = d->port;
	f->family = d->family;
	f->tgid = id >> 32;
	f->pid = (__u32)id;
	bpf_get_current_comm(f->comm, sizeof(f->comm));
	f->flags = (f->flags & ~(CF_F_DNS_REDIRECT | CF_F_VIA_PROXY)) | flags;
}

static __always_inline void cf_report_dst(__u8 kind, __u64 cookie, const struct cf_dst *d,
					  __u8 proto, __u16 flags)
{
	struct cf_event *e = cf_reserve();

	if (!e)
		return;
	e->kind = kind;
	e->cookie = cookie;
	e->family = d->family;
	e->proto = proto;
	e->dport = d->port;
	e->flags = flags;
	__builtin_memcpy(e->daddr, d->addr, 16);
	cf_fill_task(e);
	cf_submit(e);
}

/* cf_same_or_redirect tells whether d is the flow's destination or the
 * loopback address it was redirected to. */
static __always_inline int cf_same_or_redirect(const struct cf_flow *f, const struct cf_dst *d)
{
	if (d->port == f->dport && cf_addr_eq(d->addr, f->daddr))
		return 1;
	if (!cf_is_loopback(d->addr, d->family))
		return 0;
	if (f->flags & CF_F_DNS_REDIRECT)
		return d->port == cf_cfg_dns_port4 || d->port == cf_cfg_dns_port6;
	if (f->flags & CF_F_VIA_PROXY)
		return d->port == cf_cfg_proxy_port4 || d->port == cf_cfg_proxy_port6;
	return 0;
}

/* cf_is_dns_server tells whether d is one of the forwarder's upstreams. */
static __always_inline int cf_is_dns_server(const struct cf_dst *d)
{
	struct cf_dns_key k = {.port = d->port};

	__builtin_memcpy(k.addr, d->addr, 16);
	return bpf_map_lookup_elem(&cf_dns_srv, &k) != 0;
}

/*
 * cf_tunnel_connect polices and reports the connect that childflow makes to
 * the proxy on a program's socket while the program's own connect() waits.
 * The destination judged and reported is the program's (from the tunnel
 * entry), and so is the identity; the address, the proxy's, stays. It
 * returns 1 to let the connect go on, and 0 to fail it with EPERM, after it
 * removed the tunnel entry.
 */
static __always_inline int cf_tunnel_connect(__u64 cookie, struct cf_flow *f,
					     const struct cf_tunnel *tn)
{
	struct cf_flow who = {.tgid = tn->tgid, .pid = tn->pid};
	__u32 rule;

	__builtin_memcpy(who.comm, tn->comm, sizeof(who.comm));
	__builtin_memcpy(who.daddr, tn->daddr, 16);
	who.dport = tn->dport;
	who.family = tn->family;

	__u8 reason = cf_evaluate(who.daddr, who.family, 1, &rule);
	if (reason != CF_R_NONE) {
		cf_violation(who.daddr, who.family, who.dport, IPPROTO_TCP, reason, rule, who.tgid,
			     0, &who);
		if (!(cf_cfg_policy & CF_P_AUDIT)) {
			/* Tells childflow that its EPERM is the policy's. */
			bpf_map_delete_elem(&cf_tunnels, &cookie);
			return 0;
		}
	}
	if (!f)
		return 1;

	__builtin_memcpy(f->daddr, who.daddr, 16);
	__builtin_memcpy(f->comm, who.comm, sizeof(f->comm));
	f->dport = who.dport;
	f->family = who.family;
	f->tgid = who.tgid;
	f->pid = who.pid;
	f->flags = (f->flags & ~CF_F_DNS_REDIRECT) | CF_F_VIA_PROXY | CF_F_TUNNEL |
		   CF_F_HANDSHAKE | CF_F_CONNECTED | CF_F_POLICED;

	struct cf_event *e = cf_reserve();
	if (!e)
		return 1;
	e->kind = CF_EV_CONNECT;
	cf_fill_flow(e, cookie, f);
	e->flags = CF_F_VIA_PROXY | CF_F_TUNNEL;
	cf_submit(e);
	return 1;
}

/*
 * cf_sock_addr is the body of connect4/6 and sendmsg4/6. It returns 1 to let
 * the call go on (possibly redirected) and 0 to fail it with EPERM.
 */
static __always_inline int cf_sock_addr(struct bpf_sock_addr *ctx, const int connect,
					const int v6)
{
	struct cf_dst d;
	__u8 proto = IPPROTO_UDP;
	__u64 cookie = bpf_get_socket_cookie(ctx);
	__u16 flags = 0;
	__u32 rule;

	if (ctx->type != SOCK_STREAM && ctx->type != SOCK_DGRAM)
		return 1;
	if (ctx->type == SOCK_STREAM)
		proto = IPPROTO_TCP;
	else if (ctx->protocol == IPPROTO_ICMP || ctx->protocol == IPPROTO_ICMPV6)
		proto = ctx->protocol; /* a ping socket */
	cf_dst_of(ctx, &d, v6);

	struct cf_flow *f = cf_flow_of(cookie);
	if (!f)
		f = cf_flow_new(cookie, d.family, proto, 1);

	if (connect && proto == IPPROTO_TCP) {
		struct cf_tunnel *tn = bpf_map_lookup_elem(&cf_tunnels, &cookie);

		if (tn)
			return cf_tunnel_connect(cookie, f, tn);
	}

	/* IPv4-mapped sends of a connected IPv6 UDP socket pass through
	 * sendmsg4 with the connected (possibly redirected) address: the
	 * connect already judged it. */
	if (!connect && f && (f->flags & CF_F_CONNECTED) && cf_same_or_redirect(f, &d))
		return 1;

	int dns = cf_cfg_dns && proto != IPPROTO_ICMP && proto != IPPROTO_ICMPV6 &&
		  (d.port == 53 || cf_is_dns_server(&d));
	if (dns) {
		/* Names are policed by the forwarder. */
		flags = CF_F_DNS_REDIRECT;
	} else {
		/* Loopback never leaves the host, so proxy-only spares it. */
		int loop = cf_is_loopback(d.addr, d.family);
		int proxied = proto == IPPROTO_TCP && cf_cfg_proxy &&
			      (!loop || (cf_cfg_policy & CF_P_PROXY_LOOPBACK));
		__u8 reason = cf_evaluate(d.addr, d.family, proxied || loop, &rule);

		if (reason != CF_R_NONE) {
			cf_violation(d.addr, d.family, d.port, proto, reason, rule,
				     bpf_get_current_pid_tgid() >> 32, 1, 0);
			if (!(cf_cfg_policy & CF_P_AUDIT))
				return 0;
		}
		if (proxied)
			flags = CF_F_VIA_PROXY;
	}

	if (f) {
		int changed = !(f->flags & CF_F_CONNECTED) &&
			      (f->dport != d.port || !cf_addr_eq(f->daddr, d.addr));
		if (connect || changed || f->dport == 0) {
			cf_note_dst(f, &d, flags);
			if (connect)
				f->flags |= CF_F_CONNECTED | CF_F_POLICED;
			cf_report_dst(connect ? CF_EV_CONNECT : CF_EV_DATAGRAM, cookie, &d, proto,
				      flags);
		}
	}

	if (flags & CF_F_DNS_REDIRECT)
		cf_redirect(ctx, &d, cf_cfg_dns_port4, cf_cfg_dns_port6, v6);
	else if (flags & CF_F_VIA_PROXY)
		cf_redirect(ctx, &d, cf_cfg_proxy_port4, cf_cfg_proxy_port6, v6);
	return 1;
}

SEC("cgroup/connect4")
int cf_connect4(struct bpf_sock_addr *ctx) { return cf_sock_addr(ctx, 1, 0); }

SEC("cgroup/connect6")
int cf_connect6(struct bpf_sock_addr *ctx) { return cf_sock_addr(ctx, 1, 1); }

SEC("cgroup/sendmsg4")
int cf_sendmsg4(struct bpf_sock_addr *ctx) { return cf_sock_addr(ctx, 0, 0); }

SEC("cgroup/sendmsg6")
int cf_sendmsg6(struct bpf_sock_addr *ctx) { return cf_sock_addr(ctx, 0, 1); }

/* cf_recvmsg makes an answer from the forwarder look as if it came from the
 * server the program asked. */
static __always_inline int cf_recvmsg(struct bpf_sock_addr *ctx, const int v6)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct cf_flow *f = cf_flow_of(cookie);

	if (!f || !(f->flags & CF_F_DNS_REDIRECT))
		return 1;
	__u16 port = bpf_ntohs(ctx->user_port);
	if (port != cf_cfg_dns_port4 && port != cf_cfg_dns_port6)
		return 1;

	ctx->user_port = bpf_htons(f->dport);
	if (!v6) {
		__u32 a;

		__builtin_memcpy(&a, f->daddr, 4);
		ctx->user_ip4 = a;
		return 1;
	}
	if (f->family == 4) {
		__u32 a;

		__builtin_memcpy(&a, f->daddr, 4);
		ctx->user_ip6[0] = 0;
		ctx->user_ip6[1] = 0;
		ctx->user_ip6[2] = bpf_htonl(0xffff);
		ctx->user_ip6[3] = a;
		return 1;
	}

	__u32 w[4];
	__builtin_memcpy(w, f->daddr, 16);
	ctx->user_ip6[0] = w[0];
	ctx->user_ip6[1] = w[1];
	ctx->user_ip6[2] = w[2];
	ctx->user_ip6[3] = w[3];
	return 1;
}

SEC("cgroup/recvmsg4")
int cf_recvmsg4(struct bpf_sock_addr *ctx) { return cf_recvmsg(ctx, 0); }

SEC("cgroup/recvmsg6")
int cf_recvmsg6(struct bpf_sock_addr *ctx) { return cf_recvmsg(ctx, 1); }

static __always_inline void cf_connect_result(__u64 cookie, struct cf_flow *f, __u32 err)
{
	struct cf_event *e = cf_reserve();

	if (!e)
		return;
	e->kind = CF_EV_CONNECT_RESULT;
	cf_fill_flow(e, cookie, f);
	e->err = err;
	cf_submit(e);
}

SEC("sockops")
int cf_sockops(struct bpf_sock_ops *skops)
{
	__u64 cookie = bpf_get_socket_cookie(skops);
	struct cf_flow *f;
	__u32 op = skops->op;

	switch (op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
		bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags |
							 BPF_SOCK_OPS_STATE_CB_FLAG |
							 BPF_SOCK_OPS_RTO_CB_FLAG);
		f = cf_flow_of(cookie);
		if (f)
			f->flags |= CF_F_TCP_TRACKED;
		break;
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		bpf_sock_ops_cb_flags_set(skops, BPF_SOCK_OPS_STATE_CB_FLAG);
		f = cf_flow_of(cookie);
		if (f) {
			f->flags |= CF_F_ESTABLISHED;
			cf_connect_result(cookie, f, 0);
		}
		break;
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		bpf_sock_ops_cb_flags_set(skops, BPF_SOCK_OPS_STATE_CB_FLAG);
		f = cf_flow_new(cookie, skops->family == AF_INET6 ? 6 : 4, IPPROTO_TCP, 0);
		if (f) {
			f->flags |= CF_F_TCP_TRACKED | CF_F_INBOUND | CF_F_ESTABLISHED;
			f->dport = bpf_ntohl(skops->remote_port) & 0xffff;
			if (skops->family == AF_INET) {
				__u32 a = skops->remote_ip4;

				__builtin_memcpy(f->daddr, &a, 4);
			} else {
				/* Separate 4-byte loads: the verifier refuses
				 * the 8-byte load clang would merge them into. */
				volatile __u32 *r = skops->remote_ip6;
				__u32 w[4] = {r[0], r[1], r[2], r[3]};

				__builtin_memcpy(f->daddr, w, 16);
			}
		}
		break;
	case BPF_SOCK_OPS_RTO_CB:
		f = cf_flow_of(cookie);
		if (f && !(f->flags & CF_F_ESTABLISHED))
			f->flags |= CF_F_RTO_SEEN;
		break;
	case BPF_SOCK_OPS_STATE_CB:
		if (skops->args[1] != BPF_TCP_CLOSE)
			break;
		f = cf_flow_of(cookie);
		if (!f)
			break;
		if (skops->args[0] == BPF_TCP_SYN_SENT) {
			/* The errno is not readable here without BTF; what the
			 * wire showed tells refused from timed out. */
			__u32 err = (f->flags & CF_F_RST_SEEN)   ? 111 /* ECONNREFUSED */
				    : (f->flags & CF_F_RTO_SEEN) ? 110 /* ETIMEDOUT */
								 : 113; /* EHOSTUNREACH */
			cf_connect_result(cookie, f, err);
		}
		cf_flow_end(cookie, f);
		break;
	}
	return 1;
}

/* Packet capture. A ring buffer reservation needs a constant size, so the
 * copy goes into the smallest of a few power-of-two size classes that holds
 * it; the mask tells the verifier the length is in [1, SIZE]. */
#define CF_CAPTURE_CLASS(SIZE)                                                                  \
	if (cap <= SIZE) {                                                                      \
		struct cf_pkt *p = bpf_ringbuf_reserve(&cf_packets, sizeof(*p) + SIZE, 0);      \
		if (!p) {                                                                       \
			cf_lost(CF_LOSS_PACKETS);                                               \
			return;                                                                 \
		}                                                                               \
		cf_pkt_header(p, skb, f, dir, cap);                                             \
		if (bpf_skb_load_bytes(skb, 0, (void *)(p + 1), ((cap - 1) & (SIZE - 1)) + 1) < 0) { \
			bpf_ringbuf_discard(p, BPF_RB_NO_WAKEUP);                               \
			cf_lost(CF_LOSS_PACKETS);                                               \
			return;                                                                 \
		}                                                                               \
		bpf_ringbuf_submit(p, cf_wakeup());                                             \
		return;                                                                         \
	}

static __always_inline __u64 cf_wakeup(void)
{
	return bpf_ringbuf_query(&cf_packets, BPF_RB_AVAIL_DATA) >= cf_cfg_wakeup_bytes
		       ? BPF_RB_FORCE_WAKEUP
		       : BPF_RB_NO_WAKEUP;
}

static __always_inline void cf_pkt_header(struct cf_pkt *p, struct __sk_buff *skb,
					  const struct cf_flow *f, __u8 dir, __u32 cap)
{
	p->ts_ns = bpf_ktime_get_ns();
	p->cookie = bpf_get_socket_cookie(skb);
	p->len = skb->len;
	p->cap_len = cap;
	p->dir = dir;
	p->family = skb->protocol == bpf_htons(ETH_P_IPV6) ? 6 : 4;
	p->pad[0] = 0;
	p->pad[1] = 0;
	if (f) {
		p->tgid = f->tgid;
		__builtin_memcpy(p->comm, f->comm, sizeof(p->comm));
	} else {
		p->tgid = 0;
		__builtin_memset(p->comm, 0, sizeof(p->comm));
	}
}

/* cf_headers_len returns the length of the IP and TCP or UDP headers of a
 * packet (skb->len when they cannot be read). */
static __always_inline __u32 cf_headers_len(struct __sk_buff *skb, __u8 proto)
{
	__u32 hdr = 40;

	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		__u8 vihl;

		if (bpf_skb_load_bytes(skb, 0, &vihl, 1) < 0)
			return skb->len;
		hdr = (vihl & 0x0f) * 4;
	}
	if (proto == IPPROTO_UDP) {
		hdr += 8;
	} else {
		__u8 doff;

		if (bpf_skb_load_bytes(skb, hdr + 12, &doff, 1) < 0)
			return skb->len;
		hdr += (doff >> 4) * 4;
	}
	return hdr < skb->len ? hdr : skb->len;
}

/* cf_capture copies a packet for the capture; with headers_only, only its IP
 * and transport headers (the payload is childflow's own proxy handshake,
 * which carries the proxy's credentials). */
static __always_inline void cf_capture(struct __sk_buff *skb, const struct cf_flow *f, __u8 dir,
				       int headers_only)
{
	__u32 cap = skb->len;

	if (headers_only)
		cap = cf_headers_len(skb, IPPROTO_TCP);
	if (cap > cf_cfg_snaplen)
		cap = cf_cfg_snaplen;
	if (cap > 65536)
		cap = 65536;
	if (cap == 0)
		return;

	CF_CAPTURE_CLASS(128)
	CF_CAPTURE_CLASS(512)
	CF_CAPTURE_CLASS(2048)
	CF_CAPTURE_CLASS(4096)
	CF_CAPTURE_CLASS(16384)
	CF_CAPTURE_CLASS(65536)
}

/* The L3 view of a packet: its protocol, destination (source on ingress)
 * and the offset of its transport header. */
struct cf_l3 {
	__u8 addr[16] __attribute__((aligned(4)));
	__u32 l4off;
	__u8 proto;
	__u8 family;
};

static __always_inline int cf_parse_l3(struct __sk_buff *skb, int egress, struct cf_l3 *l)
{
	__builtin_memset(l, 0, sizeof(*l));
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		__u8 vihl;

		if (bpf_skb_load_bytes(skb, 0, &vihl, 1) < 0 ||
		    bpf_skb_load_bytes(skb, 9, &l->proto, 1) < 0 ||
		    bpf_skb_load_bytes(skb, egress ? 16 : 12, l->addr, 4) < 0)
			return -1;
		l->l4off = (vihl & 0x0f) * 4;
		l->family = 4;
		return 0;
	}
	if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		if (bpf_skb_load_bytes(skb, 6, &l->proto, 1) < 0 ||
		    bpf_skb_load_bytes(skb, egress ? 24 : 8, l->addr, 16) < 0)
			return -1;
		l->l4off = 40;
		l->family = 6;
		return 0;
	}
	return -1;
}

/* cf_sniff reports the first bytes of the first payload a TCP client sends,
 * for the TLS server name or HTTP host. */
static __always_inline void cf_sniff(struct __sk_buff *skb, __u64 cookie, struct cf_flow *f)
{
	struct cf_l3 l;
	__u8 doff;

	/* A tunnel's proxy handshake adds up to eight packets before the
	 * program's first. */
	__u64 limit = (f->flags & CF_F_TUNNEL) ? 16 : 8;

	if (f->pkts_out > limit || cf_parse_l3(skb, 1, &l) || l.proto != IPPROTO_TCP) {
		f->flags |= CF_F_SNIFFED;
		return;
	}
	if (bpf_skb_load_bytes(skb, l.l4off + 12, &doff, 1) < 0)
		return;

	__u32 off = l.l4off + (doff >> 4) * 4;
	if (off >= skb->len)
		return;
	f->flags |= CF_F_SNIFFED;
	if (off > 200)
		return;

	__u32 n = skb->len - off;
	if (n > CF_SNIFF_LEN)
		n = CF_SNIFF_LEN;

	struct cf_event *e = cf_reserve_size(sizeof(struct cf_event));
	if (!e)
		return;
	e->kind = CF_EV_SNIFF;
	cf_fill_flow(e, cookie, f);
	n = ((n - 1) & (CF_SNIFF_LEN - 1)) + 1; /* n >= 1 here; tells the verifier */
	if (bpf_skb_load_bytes(skb, off, e->data, n) < 0)
		n = 0;
	e->len = n;
	cf_submit(e);
}

/* cf_rst_check notes a reset that answers a connect in progress. */
static __always_inline void cf_rst_check(struct __sk_buff *skb, struct cf_flow *f)
{
	struct cf_l3 l;
	__u8 flags;

	if (cf_parse_l3(skb, 0, &l) || l.proto != IPPROTO_TCP)
		return;
	if (bpf_skb_load_bytes(skb, l.l4off + 13, &flags, 1) < 0)
		return;
	if (flags & TCP_FLAG_RST)
		f->flags |= CF_F_RST_SEEN;
}

/* cf_payload returns the transport payload length of a TCP or UDP packet
 * (of all its segments, for an offloaded one), or its IP length for other
 * protocols. Retransmitted TCP data counts again: the counters say what
 * crossed the socket's boundary. */
static __always_inline __u32 cf_payload(struct __sk_buff *skb, __u8 proto)
{
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return skb->len;

	__u32 hdr = cf_headers_len(skb, proto);
	return skb->len > hdr ? skb->len - hdr : 0;
}

/* cf_index_client lets the forwarder and the relay find the original
 * destination of a redirected socket by its local port. */
static __always_inline void cf_index_client(struct __sk_buff *skb, __u64 cookie,
					    const struct cf_flow *f)
{
	struct cf_client_key k = {.port = skb->local_port, .proto = f->proto};
	struct cf_client *old = bpf_map_lookup_elem(&cf_clients, &k);

	if (old && old->cookie == cookie && old->dport == f->dport &&
	    cf_addr_eq(old->daddr, f->daddr))
		return;

	struct cf_client c = {};
	c.cookie = cookie;
	c.tgid = f->tgid;
	c.dport = f->dport;
	c.family = f->family;
	__builtin_memcpy(c.daddr, f->daddr, 16);
	__builtin_memcpy(c.comm, f->comm, sizeof(c.comm));
	if (bpf_map_update_elem(&cf_clients, &k, &c, BPF_ANY))
		cf_lost(CF_LOSS_CLIENTS);
}

static __always_inline int cf_skb(struct __sk_buff *skb, int egress)
{
	__u64 cookie = bpf_get_socket_cookie(skb);
	struct cf_flow *f = cf_flow_of(cookie);
	__u32 segs = skb->gso_segs ? skb->gso_segs : 1;

	if (!f) {
		struct cf_l3 l;

		if (!cf_parse_l3(skb, egress, &l))
			f = cf_flow_new(cookie, l.family, l.proto, 0);
	}

	/* While childflow speaks the proxy's handshake on a tunnel socket,
	 * every byte it sends is childflow's, not the program's. The proxy
	 * acknowledges the whole request before it answers, so no handshake
	 * byte is sent again once the entry is gone, and an entry never comes
	 * back: the first packet that misses it ends the lookups. */
	int handshake = 0;

	if (f) {
		if (egress && (f->flags & CF_F_HANDSHAKE)) {
			handshake = bpf_map_lookup_elem(&cf_tunnels, &cookie) != 0;
			if (!handshake)
				f->flags &= ~CF_F_HANDSHAKE;
		}
		if (egress && !(f->flags & CF_F_TUNNEL) &&
		    (f->flags & (CF_F_DNS_REDIRECT | CF_F_VIA_PROXY)))
			cf_index_client(skb, cookie, f);

		/* What the socket hooks did not judge: ICMP, raw IP. */
		if (egress && f->proto != IPPROTO_TCP && f->proto != IPPROTO_UDP &&
		    (cf_cfg_policy & CF_P_ACTIVE)) {
			struct cf_l3 l;
			__u32 rule;

			/* A connected ping socket was judged at connect. */
			if (!cf_parse_l3(skb, 1, &l) &&
			    !((f->flags & CF_F_POLICED) && cf_addr_eq(l.addr, f->daddr))) {
				__u8 reason = cf_evaluate(l.addr, l.family, 0, &rule);

				if (reason != CF_R_NONE) {
					cf_violation(l.addr, l.family, 0, l.proto, reason, rule,
						     f->tgid, 0, f);
					if (!(cf_cfg_policy & CF_P_AUDIT))
						return 0;
				}
			}
		}

		__u32 bytes = cf_payload(skb, f->proto);
		if (egress) {
			__sync_fetch_and_add(&f->pkts_out, segs);
			__sync_fetch_and_add(&f->bytes_out, bytes);
			if (cf_cfg_sniff && f->proto == IPPROTO_TCP && !(f->flags & CF_F_SNIFFED) &&
			    !(f->flags & CF_F_INBOUND) && !handshake)
				cf_sniff(skb, cookie, f);
		} else {
			__sync_fetch_and_add(&f->pkts_in, segs);
			__sync_fetch_and_add(&f->bytes_in, bytes);
			if (f->proto == IPPROTO_TCP && !(f->flags & CF_F_ESTABLISHED))
				cf_rst_check(skb, f);
		}
	}

	if (cf_cfg_capture)
		cf_capture(skb, f, egress ? 0 : 1, handshake);
	return 1;
}

SEC("cgroup_skb/egress")
int cf_egress(struct __sk_buff *skb) { return cf_skb(skb, 1); }

SEC("cgroup_skb/ingress")
int cf_ingress(struct __sk_buff *skb) { return cf_skb(skb, 0); }
