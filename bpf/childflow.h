/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Structures shared by the eBPF programs and the Go loader. Every field has a
 * fixed width and padding is explicit, so that bpf2go generates matching Go
 * types; records are zeroed before they are filled.
 */
#ifndef CHILDFLOW_H
#define CHILDFLOW_H

#define CF_COMM_LEN 16
#define CF_SNIFF_LEN 256

/* Kinds of control events (struct cf_event.kind). */
enum cf_event_kind {
	CF_EV_CONNECT = 1,	  /* connect4/6: TCP or connected UDP */
	CF_EV_DATAGRAM = 2,	  /* sendmsg4/6: first datagram to a destination */
	CF_EV_CONNECT_RESULT = 3, /* sockops: TCP connect established or failed */
	CF_EV_FLOW_END = 4,	  /* a socket closed, with its counters */
	CF_EV_VIOLATION = 5,	  /* an attempt was denied (or audited) */
	CF_EV_SNIFF = 6,	  /* first payload bytes of a TCP flow */
};

/* Flags of struct cf_event.flags and struct cf_flow.flags. */
enum cf_flag {
	CF_F_DNS_REDIRECT = 1 << 0, /* sent to the DNS forwarder */
	CF_F_VIA_PROXY = 1 << 1,    /* sent to the proxy relay */
	CF_F_AUDIT = 1 << 2,	    /* a violation that was let through */
	CF_F_TCP_TRACKED = 1 << 3,  /* sockops reports the end of this flow */
	CF_F_SNIFFED = 1 << 4,	    /* first payload already reported */
	CF_F_CONNECTED = 1 << 5,    /* connect() was called */
	CF_F_INBOUND = 1 << 6,	    /* accepted connection */
	CF_F_ENDED = 1 << 7,	    /* flow end already reported */
	CF_F_ESTABLISHED = 1 << 8,  /* TCP handshake completed */
	CF_F_RST_SEEN = 1 << 9,	    /* a reset arrived while connecting */
	CF_F_RTO_SEEN = 1 << 10,    /* a SYN was retransmitted */
	CF_F_POLICED = 1 << 11,	    /* destination already judged */
	CF_F_TUNNEL = 1 << 12,	    /* connected to the proxy itself (cf_tunnels) */
	CF_F_HANDSHAKE = 1 << 13,   /* its cf_tunnels entry may still be there */
};

/* Policy reasons: the same numbers as policy.Reason in Go. */
enum cf_reason {
	CF_R_NONE = 0,
	CF_R_OFFLINE = 1,
	CF_R_METADATA = 2,
	CF_R_PRIVATE = 3,
	CF_R_DENY_CIDR = 4,
	CF_R_DENY_DOMAIN_EXACT = 5,
	CF_R_DENY_DOMAIN = 6,
	CF_R_DEFAULT_DENY = 7,
	CF_R_PROXY_ONLY = 8,
};

/* Policy switches (cf_cfg_policy). */
enum cf_policy_flag {
	CF_P_ACTIVE = 1 << 0,
	CF_P_OFFLINE = 1 << 1,
	CF_P_BLOCK_PRIVATE = 1 << 2,
	CF_P_BLOCK_METADATA = 1 << 3,
	CF_P_DEFAULT_DENY = 1 << 4,
	CF_P_PROXY_ONLY = 1 << 5,
	CF_P_AUDIT = 1 << 6,
	CF_P_PROXY_LOOPBACK = 1 << 7,
};

/* Indexes of the per-CPU loss counters (cf_loss). */
enum cf_loss_index {
	CF_LOSS_EVENTS = 0,
	CF_LOSS_PACKETS = 1,
	CF_LOSS_FLOWS = 2,     /* flow table full: bytes not counted */
	CF_LOSS_CLIENTS = 3,   /* redirect client table full */
	CF_LOSS_MAX = 4,
};

/* A control event. Addresses are 16 bytes; IPv4 uses the first 4. */
struct cf_event {
	__u64 ts_ns; /* bpf_ktime_get_ns */
	__u64 cookie;
	__u64 bytes_out;
	__u64 bytes_in;
	__u64 pkts_out;
	__u64 pkts_in;
	__u64 start_ns;
	__u32 tgid;
	__u32 pid;
	__u32 err;   /* errno of a failed connect */
	__u32 rule;  /* matched rule index (from 1), 0 for none */
	__u32 count; /* violations summed into this one */
	__u16 dport;
	__u16 sport;
	__u8 kind;
	__u8 family; /* 4 or 6 */
	__u8 proto;  /* IPPROTO_* */
	__u8 reason;
	__u16 flags;
	__u16 len; /* bytes used in data (CF_EV_SNIFF) */
	__u8 daddr[16];
	__u8 saddr[16];
	char comm[CF_COMM_LEN];
	__u8 data[CF_SNIFF_LEN];
};

/* The header of a packet record; the packet follows, from the IP header. */
struct cf_pkt {
	__u64 ts_ns;
	__u64 cookie;
	__u32 tgid;
	__u32 len;     /* length of the packet */
	__u32 cap_len; /* bytes that follow */
	__u8 dir;      /* 0 egress, 1 ingress */
	__u8 family;
	__u8 pad[2];
	char comm[CF_COMM_LEN];
};

/* Per-socket state, keyed by socket cookie. */
struct cf_flow {
	__u64 start_ns;
	__u64 bytes_out;
	__u64 bytes_in;
	__u64 pkts_out;
	__u64 pkts_in;
	__u32 tgid;
	__u32 pid;
	char comm[CF_COMM_LEN];
	__u8 daddr[16];
	__u16 dport;
	__u8 family;
	__u8 proto;
	__u16 flags;
	__u8 pad[2];
};

/* The original destination of a redirected socket, keyed by its local
 * port and protocol, for the DNS forwarder and the proxy relay. */
struct cf_client_key {
	__u16 port;
	__u8 proto;
	__u8 pad;
};

struct cf_client {
	__u64 cookie;
	__u32 tgid;
	__u16 dport;
	__u8 family;
	__u8 pad;
	__u8 daddr[16];
	char comm[CF_COMM_LEN];
};

/* A socket that childflow connects to the proxy on the program's behalf
 * while the program's connect() waits (seccomp user notification), keyed by
 * socket cookie. The entry lives while childflow speaks the proxy's
 * handshake on the socket: it says whom the connect is for and where the
 * program wanted to go. */
struct cf_tunnel {
	__u8 daddr[16];
	__u32 tgid;
	__u32 pid;
	char comm[CF_COMM_LEN];
	__u16 dport;
	__u8 family;
	__u8 pad;
};

/* A DNS server the forwarder relays to (--dns), redirected to the forwarder
 * whatever its port, like port 53. */
struct cf_dns_key {
	__u8 addr[16];
	__u16 port;
	__u8 pad[2];
};

/* Policy trie keys. */
struct cf_lpm4 {
	__u32 prefixlen;
	__u8 addr[4];
};

struct cf_lpm6 {
	__u32 prefixlen;
	__u8 addr[16];
};

/* What DNS taught about an address: the reason of a domain deny, or
 * CF_R_NONE when an allowed name resolved to it. */
struct cf_learned {
	__u32 rule;
	__u8 reason;
	__u8 allowed;
	__u8 pad[2];
};

/* Key of the violation de-duplication table. */
struct cf_viol_key {
	__u8 daddr[16];
	__u32 tgid;
	__u16 dport;
	__u8 proto;
	__u8 reason;
};

struct cf_viol {
	__u64 last_ns;
	__u32 pending; /* not yet reported */
	__u8 family;
	__u8 pad[3];
};

#endif
