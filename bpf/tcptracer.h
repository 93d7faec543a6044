/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Shared between the BPF program (bpf/tcptracer.bpf.c) and the addon (addon/).
 * Plain C types only: no kernel-internal types, so the addon can include it too.
 */
#ifndef TCPTRACER_H
#define TCPTRACER_H

#define TASK_COMM_LEN 16

/*
 * The version of the kernel state the exporter pins under bpffs (the maps below
 * and struct conn): a daemon adopts pinned state only when it has the same
 * version. Bump it whenever a pinned map's layout or the meaning of its contents
 * changes; a changed size is also caught by libbpf's check when it reuses a map.
 */
#define STATE_VERSION 2

enum event_type {
	TCP_EVENT_TYPE_CONNECT = 1,
	TCP_EVENT_TYPE_ACCEPT = 2,
	TCP_EVENT_TYPE_CLOSE = 3,
	TCP_EVENT_TYPE_CONNECT_FAILED = 4,
	TCP_EVENT_TYPE_SEEDED_CLOSE = 5, /* aggregation only: never emitted */
	TCP_EVENT_TYPE_CLOSE_UNSEEN = 6, /* aggregation only: a close found late, no lifetime */
};

enum connect_fail_reason {
	FAIL_REASON_NONE = 0,
	FAIL_REASON_REFUSED = 1,     /* ECONNREFUSED: RST in answer to SYN */
	FAIL_REASON_TIMEOUT = 2,     /* ETIMEDOUT: SYN retries exhausted */
	FAIL_REASON_UNREACHABLE = 3, /* EHOSTUNREACH / ENETUNREACH: ICMP error */
	FAIL_REASON_OTHER = 4,	     /* anything else, including close() during SYN_SENT */
};

enum direction {
	DIRECTION_OUTBOUND = 1, /* we called connect() */
	DIRECTION_INBOUND = 2,	/* we accepted */
};

/* How accepts are attributed to a process (load-time setting). */
enum accept_mode {
	ACCEPT_MODE_LISTENER = 0, /* owner of the listening socket, captured at listen() */
	ACCEPT_MODE_SYSCALL =
	    1, /* caller of accept()/accept4(), from the syscall exit tracepoints */
	ACCEPT_MODE_KERNEL = 2, /* caller of inet_csk_accept(), from fexit or a kretprobe */
};

/* Indexes into the per-CPU "stats" array. */
enum stat_index {
	STAT_EVENTS_LOST = 0,	    /* ring buffer reservation failed */
	STAT_MAP_UPDATE_FAILED = 1, /* a state map was full or refused an update */
	/*
	 * listener mode: an accept whose listener's owner was unknown (reported with pid 0);
	 * syscall mode: an inbound connection closed without accept()/accept4() returning it
	 * (io_uring accepts, or closed while still in the accept queue);
	 * kernel mode: closed without inet_csk_accept() returning it (still in the accept queue)
	 */
	STAT_ACCEPT_UNATTRIBUTED = 2,
	STAT_CONNECT_UNATTRIBUTED = 3, /* established outbound socket with no connect() seen */
	STAT_AGG_FULL = 4,	       /* aggregation map full: counted in the overflow entry */
	/* a counted connection's CLOSE was never seen: found when its socket was reused */
	STAT_CLOSE_UNSEEN = 5,
	/* an outbound connection's ESTABLISHED was never seen: found at its CLOSE */
	STAT_CONNECT_UNSEEN = 6,
	STAT_MAX = 7,
};

/*
 * One ring buffer record. Widest fields first; the addon exports offsetof() of
 * every field so the TypeScript decoder never hard-codes this layout.
 */
struct event {
	/* local and remote address, network byte order; IPv4 uses the first 4 bytes */
	unsigned __int128 saddr;
	unsigned __int128 daddr;
	__u64 ts_ns;	      /* bpf_ktime_get_ns() at the event (CLOCK_MONOTONIC) */
	__u64 duration_ns;    /* close: established -> closed; 0 otherwise */
	__u64 bytes_sent;     /* close: payload sent, retransmissions counted once */
	__u64 bytes_received; /* close: payload received (the peer's FIN not counted) */
	__u64 cgroup_id;      /* cgroup v2 id of the owner */
	__u32 pid;	      /* owner's tgid: connect()/accept() caller */
	__u32 netns;	      /* network namespace inode, read from the socket */
	__u16 sport;	      /* local port, host byte order */
	__u16 dport;	      /* remote port, host byte order */
	__u8 type;	      /* enum event_type */
	__u8 ip;	      /* 4 or 6; IPv4-mapped IPv6 is reported as 4 */
	__u8 reason;	      /* enum connect_fail_reason, for CONNECT_FAILED */
	__u8 direction;	      /* enum direction */
	char comm[TASK_COMM_LEN];
	__u8 __pad[8];
};

/*
 * In-kernel aggregation (the exporter's metrics path): one entry per label set,
 * updated with atomic adds, read by the daemon at scrape time.
 */
#define MAX_BUCKETS  32 /* histogram bounds; buckets[] has one more slot for +Inf */
#define FAIL_REASONS 4	/* enum connect_fail_reason without NONE */

/* Which optional labels go into the kernel's aggregation key (label_mask). */
enum label_bits {
	LABEL_PID = 1,
	LABEL_CGROUP = 2,
	LABEL_PORT = 4,
};

enum agg_flags {
	AGG_OVERFLOW = 1,     /* the catch-all entry used when the map is full */
	AGG_UNATTRIBUTED = 2, /* owner unknown (accept on a listener we never saw) */
};

struct agg_key {
	__u64 cgroup_id; /* 0 unless LABEL_CGROUP */
	__u32 netns;
	__u32 pid;  /* 0 unless LABEL_PID */
	__u16 port; /* service port (remote for outbound, local for inbound); 0 unless LABEL_PORT */
	__u8 ip;    /* 4 or 6 */
	__u8 direction; /* enum direction */
	__u8 flags;	/* enum agg_flags */
	__u8 __pad[3];
	char comm[TASK_COMM_LEN];
};

struct agg_value {
	__u64 opened;		    /* connects (outbound) or accepts (inbound) */
	__u64 closed;		    /* closes of connections opened while we watched */
	__u64 failed[FAIL_REASONS]; /* outbound only, by enum connect_fail_reason - 1 */
	__u64 sent_bytes;
	__u64 received_bytes;
	__u64 duration_sum_ns;
	__u64 seeded_closed;		/* closes of connections open before the daemon started */
	__u64 last_ns;			/* bpf_ktime_get_ns() of the last update, for idle expiry */
	__u64 buckets[MAX_BUCKETS + 1]; /* lifetime histogram, not cumulative; last is +Inf */
};

/* A connection that was open before the daemon started, found in /proc. */
struct tuple_key {
	__u8 saddr[16]; /* network byte order; IPv4 in the first 4 bytes */
	__u8 daddr[16];
	__u32 netns;
	__u16 sport; /* host byte order */
	__u16 dport;
	__u16 family; /* AF_INET or AF_INET6, as the socket has it */
	__u16 __pad;
};

/* Listener owners, keyed by what an accepted child socket can see of its listener. */
struct listener_key {
	__u32 netns;
	__u16 port;   /* host byte order */
	__u16 family; /* AF_INET or AF_INET6 */
};

/* The process a socket belongs to. */
struct owner {
	__u64 cgroup_id;
	__u32 pid;
	__u32 __pad;
	char comm[TASK_COMM_LEN];
};

/* A listener's owner, and which socket it was recorded for (0 when seeded from /proc). */
struct listener_value {
	struct owner owner;
	__u64 sk;
};

/* What the daemon seeds for a connection open before it started. */
struct seed_value {
	struct owner owner;
	__u16 port;	/* service port */
	__u8 direction; /* enum direction */
	__u8 __pad[5];
};

/*
 * The `conns` map's value: a socket's owner and what its close needs, from connect() (or the
 * handshake's completion for inbound) until CLOSE.
 */
struct conn {
	struct owner owner;
	__u64 established_ns; /* at ESTABLISHED; before it, outbound: at connect() */
	__u16 sport;	      /* local port at establishment: unhashing at CLOSE zeroes it */
	__u8 direction;	      /* enum direction */
	__u8 reported;	      /* the connect/accept event was emitted */
	/*
	 * The label set the connection is counted in (set at connect(), or for inbound at
	 * establishment): what counts its close should its CLOSE go unseen (on_unseen_close).
	 */
	__u32 netns;
	__u16 port; /* service port */
	__u8 ip;
	__u8 __pad[5];
};

/* The per-CPU `set_state_seen` value: the state change the backbone program last started. */
struct seen {
	__u64 sk;
	__s32 oldstate;
	__s32 newstate;
};

#endif /* TCPTRACER_H */
