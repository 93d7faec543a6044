// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * tcptracer: every TCP connect, accept and close, attributed to a process and a
 * network namespace.
 *
 * The backbone is sock:inet_sock_set_state, attached as a raw tracepoint: it
 * needs no tracefs and passes the socket pointer without copying arguments.
 * Accepts are attributed by one of three optional hooks (accept_mode): the
 * return of inet_csk_accept() (fexit, or a kretprobe where fentry is missing),
 * the accept()/accept4() syscall exits, or else the listening socket's owner.
 * The addon loads only the programs of the chosen mode.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "tcptracer.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* vmlinux.h carries no #defines: these are the kernel's uapi values. */
#define AF_INET	     2
#define AF_INET6     10
#define IPPROTO_TCP  6
#define ENETUNREACH  101
#define ETIMEDOUT    110
#define ECONNREFUSED 111
#define EHOSTUNREACH 113
#define EEXIST	     17
/* include/linux/sched.h: the task is an io_uring worker thread */
#define PF_IO_WORKER 0x00000010

/* Load-time settings, written by the addon before load. 0 disables a filter. */
const volatile __u32 filter_pid = 0;
const volatile __u32 filter_netns = 0;
const volatile __u8 filter_ip = 0; /* 4 or 6 */
const volatile __u8 accept_mode = ACCEPT_MODE_LISTENER;
/* Exporter mode: aggregate into `aggs`. The lifetime histogram's upper bounds, ns. */
const volatile __u8 aggregate = 0;
const volatile __u32 nbuckets = 0;
const volatile __u64 bucket_bounds_ns[MAX_BUCKETS] = {};

/*
 * Which loaded copy of these programs counts. The exporter pins its maps and
 * links under bpffs, so a restart or an upgrade keeps the programs running and
 * the state intact. The next daemon loads its own copy with a new generation and
 * attaches it while it is inactive, then takes over with one write of its
 * generation to "control"; the old copy goes quiet at that instant and its links
 * are removed. An event in flight at that instant can run through both copies (old
 * first): every handler is idempotent for a repeated event, as the socket's entry
 * in "conns" says whether it was counted. Unpinned (trace mode) both are 0.
 */
const volatile __u64 generation = 0;

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} control SEC(".maps");

static __always_inline bool is_active(void)
{
	__u32 zero = 0;
	__u64 *gen = bpf_map_lookup_elem(&control, &zero);

	return gen && *gen == generation;
}

/*
 * Set by the addon while a consumer drains "events". While it is 0 no record is
 * reserved, so the ring buffer costs nothing when only aggregates are read.
 */
volatile __u32 events_enabled = 0;

/*
 * Settings the daemon may change while running (config reload), all in .bss:
 * which optional labels go into the aggregation key, and whether the netns and
 * port filter maps apply. seeded_any says `seeded` may hold entries.
 */
volatile __u32 label_mask = 0;
volatile __u32 netns_filter_on = 0;
volatile __u32 port_filter_on = 0;
volatile __u32 seeded_any = 0;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1024 * 1024); /* resized by the addon before load */
} events SEC(".maps");

/* Counters of what the program had to give up on; see enum stat_index. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

/*
 * Listening sockets and the process that called listen() on each. The state
 * transitions of an accepted socket run in softirq context, where `current` is
 * whoever happened to be running, so in ACCEPT_MODE_LISTENER the accept is
 * charged to the listener's owner. Filled at CLOSE -> LISTEN, seeded from /proc
 * by the daemon for listeners that predate it, removed at LISTEN -> CLOSE.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct listener_key);
	__type(value, struct listener_value);
} listeners SEC(".maps");

/*
 * Per-socket state, keyed by the socket pointer, from connect() (or the
 * handshake's completion for inbound) until the socket reaches CLOSE. Only
 * CLOSE -> SYN_SENT runs in the connecting process, and the source port may
 * still be 0 there, so the pointer is the only stable key.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536); /* resized by the addon before load */
	__type(key, __u64);
	__type(value, struct conn);
} conns SEC(".maps");

/*
 * The exporter's aggregates, one entry per label set (struct agg_key). Values
 * change only by atomic adds, so concurrent updates from all CPUs are exact.
 * The daemon creates the AGG_OVERFLOW entries (one per direction) at startup;
 * when the map is full, new label sets are counted there instead of being lost.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536); /* resized by the addon before load */
	__type(key, struct agg_key);
	__type(value, struct agg_value);
} aggs SEC(".maps");

/* A zeroed value to insert new entries from: struct agg_value is too big for the stack. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct agg_value);
} agg_zero SEC(".maps");

/* Network namespaces and service ports to count, when their *_filter_on is set. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, __u8);
} netns_filter SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u16);
	__type(value, __u8);
} port_filter SEC(".maps");

/*
 * Connections that were open before the daemon started, by 4-tuple (their
 * socket pointers cannot be learnt from /proc). Consumed at their CLOSE, so
 * the active-connections gauge returns to its baseline.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536); /* resized by the addon before load */
	__type(key, struct tuple_key);
	__type(value, struct seed_value);
} seeded SEC(".maps");

static __always_inline void stat_inc(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &idx);

	if (v)
		*v += 1; /* per-CPU slot: no atomic needed */
}

static __always_inline void current_owner(struct owner *o)
{
	o->pid = bpf_get_current_pid_tgid() >> 32;
	o->cgroup_id = bpf_get_current_cgroup_id();
	bpf_get_current_comm(o->comm, sizeof(o->comm));
}

/*
 * An io_uring worker ("iou-wrk-PID") is a thread of the process that submitted the
 * request: name the process, not the worker. Only the accept hooks can run there.
 */
static __always_inline void current_owner_of_request(struct owner *o)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();

	current_owner(o);
	if (BPF_CORE_READ(task, flags) & PF_IO_WORKER)
		BPF_CORE_READ_STR_INTO(&o->comm, task, group_leader, comm);
}

static __always_inline bool is_v4_mapped(const __u32 *a)
{
	return a[0] == 0 && a[1] == 0 && a[2] == bpf_htonl(0x0000ffff);
}

/* The local port: inet_sport survives the unhashing that zeroes skc_num on the way to CLOSE. */
static __always_inline __u16 local_port(struct sock *sk)
{
	return bpf_ntohs(BPF_CORE_READ((struct inet_sock *)sk, inet_sport));
}

/* Copy addresses and ports from the socket; returns the IP version reported. */
static __always_inline __u8 read_addrs(struct sock *sk, __u16 family, struct event *e)
{
	e->sport = local_port(sk);
	e->dport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (family == AF_INET) {
		__u32 *s = (__u32 *)&e->saddr, *d = (__u32 *)&e->daddr;

		*s = BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr);
		*d = BPF_CORE_READ(sk, __sk_common.skc_daddr);
		return 4;
	}
	BPF_CORE_READ_INTO(&e->saddr, sk, __sk_common.skc_v6_rcv_saddr.in6_u.u6_addr32);
	BPF_CORE_READ_INTO(&e->daddr, sk, __sk_common.skc_v6_daddr.in6_u.u6_addr32);
	if (is_v4_mapped((__u32 *)&e->daddr)) {
		/* ::ffff:a.b.c.d is an IPv4 peer on a dual-stack socket */
		__u32 s4 = ((__u32 *)&e->saddr)[3], d4 = ((__u32 *)&e->daddr)[3];

		e->saddr = 0;
		e->daddr = 0;
		*(__u32 *)&e->saddr = s4;
		*(__u32 *)&e->daddr = d4;
		return 4;
	}
	return 6;
}

static __always_inline __u8 fail_reason(struct sock *sk)
{
	switch (BPF_CORE_READ(sk, sk_err)) {
	case ECONNREFUSED:
		return FAIL_REASON_REFUSED;
	case ETIMEDOUT:
		return FAIL_REASON_TIMEOUT;
	case EHOSTUNREACH:
	case ENETUNREACH:
		return FAIL_REASON_UNREACHABLE;
	default:
		return FAIL_REASON_OTHER;
	}
}

/* What one event carries besides its owner: computed once, used by both paths. */
struct facts {
	__u64 now;
	__u64 duration_ns;
	__u64 sent;
	__u64 rcvd;
	__u16 port; /* service port */
	__u8 ip;
};

static __always_inline __u8 ip_version(struct sock *sk, __u16 family)
{
	__u32 d[4];

	if (family == AF_INET)
		return 4;
	BPF_CORE_READ_INTO(&d, sk, __sk_common.skc_v6_daddr.in6_u.u6_addr32);
	return is_v4_mapped(d) ? 4 : 6;
}

/* Find or create the entry for a label set; the overflow entry when the map is full. */
static __always_inline struct agg_value *agg_entry(struct agg_key *k)
{
	struct agg_value *v = bpf_map_lookup_elem(&aggs, k);
	struct agg_key overflow = {.flags = AGG_OVERFLOW, .direction = k->direction};
	__u32 zero = 0;
	void *z;
	long err;

	if (v)
		return v;
	z = bpf_map_lookup_elem(&agg_zero, &zero);
	if (!z)
		return NULL;
	err = bpf_map_update_elem(&aggs, k, z, BPF_NOEXIST);
	if (err && err != -EEXIST) {
		stat_inc(STAT_AGG_FULL);
		return bpf_map_lookup_elem(&aggs, &overflow);
	}
	return bpf_map_lookup_elem(&aggs, k);
}

static __always_inline __u32 bucket_of(__u64 d)
{
	__u32 i;

	for (i = 0; i < MAX_BUCKETS; i++) {
		if (i >= nbuckets || d <= bucket_bounds_ns[i])
			break;
	}
	return i < nbuckets ? i : MAX_BUCKETS; /* past the last bound: +Inf */
}

/*
 * Exporter mode with filters.netns set: only the listed namespaces get per-connection state. So
 * connections elsewhere cannot fill `conns` and crowd out those that are counted, and they cost
 * no map update. Sockets that already have state keep it until CLOSE (the filter may change on
 * reload), and listeners are recorded everywhere (a namespace may be added later).
 */
static __always_inline bool watched(__u32 netns)
{
	return !aggregate || !netns_filter_on || bpf_map_lookup_elem(&netns_filter, &netns);
}

/* Whether the exporter's netns and port filters (config) let a label set be counted. */
static __always_inline bool filters_pass(__u32 netns, __u16 port)
{
	if (netns_filter_on && !bpf_map_lookup_elem(&netns_filter, &netns))
		return false;
	return !port_filter_on || bpf_map_lookup_elem(&port_filter, &port);
}

/* Count one event against its owner's label set. */
static __always_inline void aggregate_event(__u32 netns, __u8 type, const struct owner *o,
					    __u8 direction, __u8 reason, const struct facts *f)
{
	struct agg_key k = {.netns = netns, .ip = f->ip, .direction = direction};
	struct agg_value *v;
	__u32 mask = label_mask, b;

	if (!filters_pass(netns, f->port))
		return;
	if (o->pid == 0) {
		k.flags = AGG_UNATTRIBUTED;
	} else {
		__builtin_memcpy(k.comm, o->comm, sizeof(k.comm));
		if (mask & LABEL_PID)
			k.pid = o->pid;
		if (mask & LABEL_CGROUP)
			k.cgroup_id = o->cgroup_id;
	}
	if (mask & LABEL_PORT)
		k.port = f->port;
	v = agg_entry(&k);
	if (!v)
		return;
	switch (type) {
	case TCP_EVENT_TYPE_CONNECT:
	case TCP_EVENT_TYPE_ACCEPT:
		__sync_fetch_and_add(&v->opened, 1);
		break;
	case TCP_EVENT_TYPE_CONNECT_FAILED:
		if (reason >= FAIL_REASON_REFUSED && reason <= FAIL_REASON_OTHER)
			__sync_fetch_and_add(&v->failed[reason - 1], 1);
		break;
	case TCP_EVENT_TYPE_CLOSE:
		b = bucket_of(f->duration_ns);
		if (b > MAX_BUCKETS)
			b = MAX_BUCKETS;
		__sync_fetch_and_add(&v->closed, 1);
		__sync_fetch_and_add(&v->sent_bytes, f->sent);
		__sync_fetch_and_add(&v->received_bytes, f->rcvd);
		__sync_fetch_and_add(&v->duration_sum_ns, f->duration_ns);
		__sync_fetch_and_add(&v->buckets[b], 1);
		break;
	case TCP_EVENT_TYPE_SEEDED_CLOSE:
		__sync_fetch_and_add(&v->seeded_closed, 1);
		break;
	case TCP_EVENT_TYPE_CLOSE_UNSEEN:
		__sync_fetch_and_add(&v->closed, 1);
		break;
	}
	v->last_ns = f->now;
}

/* Reserve, fill and submit one record for a socket whose owner is known. */
static __always_inline void emit(struct sock *sk, __u16 family, __u32 netns, __u8 type,
				 const struct conn *c, __u8 reason, const struct facts *f)
{
	struct event *e;

	if (!events_enabled)
		return;
	if (filter_ip && f->ip != filter_ip)
		return;
	/* reserve */
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		stat_inc(STAT_EVENTS_LOST);
		return;
	}
	/* fill */
	read_addrs(sk, family, e);
	if (c->sport)
		e->sport = c->sport;
	e->ts_ns = f->now;
	e->duration_ns = f->duration_ns;
	e->bytes_sent = f->sent;
	e->bytes_received = f->rcvd;
	e->cgroup_id = c->owner.cgroup_id;
	e->pid = c->owner.pid;
	e->netns = netns;
	e->type = type;
	e->ip = f->ip;
	e->reason = reason;
	e->direction = c->direction;
	__builtin_memcpy(e->comm, c->owner.comm, sizeof(e->comm));
	/* submit */
	bpf_ringbuf_submit(e, 0);
}

/*
 * An event for a socket whose owner is known: count it, and emit it if someone reads events. `now`
 * is the event's one clock read; the label set's IP version and service port are the ones the
 * connection was established with (identify), so nothing is read twice.
 */
static __always_inline void record(struct sock *sk, __u16 family, __u32 netns, __u8 type,
				   const struct conn *c, __u8 reason, __u64 now)
{
	struct facts f = {.now = now, .ip = c->ip, .port = c->port};

	if (filter_pid && c->owner.pid != filter_pid)
		return;
	if (type == TCP_EVENT_TYPE_CLOSE) {
		struct tcp_sock *tp = (struct tcp_sock *)sk;

		if (c->established_ns)
			f.duration_ns = f.now - c->established_ns;
		/* payload only: bytes_sent counts retransmissions again */
		__u64 retrans = BPF_CORE_READ(tp, bytes_retrans);

		f.sent = BPF_CORE_READ(tp, bytes_sent);
		f.sent = f.sent > retrans ? f.sent - retrans : 0;
		/* bytes_received counts the peer's FIN as a byte; SOCK_DONE says it came */
		f.rcvd = BPF_CORE_READ(tp, bytes_received);
		if (f.rcvd && (BPF_CORE_READ(sk, __sk_common.skc_flags) & (1UL << SOCK_DONE)))
			f.rcvd--;
	}
	if (aggregate)
		aggregate_event(netns, type, &c->owner, c->direction, reason, &f);
	emit(sk, family, netns, type, c, reason, &f);
}

/* Remember the label set of a connection being established (see struct conn). */
static __always_inline void identify(struct conn *c, struct sock *sk, __u16 family, __u32 netns)
{
	c->netns = netns;
	c->ip = ip_version(sk, family);
	c->port = c->direction == DIRECTION_INBOUND
		      ? c->sport
		      : bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
}

/*
 * A counted connection whose CLOSE neither program saw: a new socket took over its
 * memory, so its entry is still there. Count the close now, in the label set it was
 * established in; its lifetime and bytes are gone with the socket. This happens when
 * the kernel does not run the programs for an event at all (docs/tracer.md, Known
 * limits).
 */
static __always_inline void on_unseen_close(const struct conn *c)
{
	struct facts f = {.now = bpf_ktime_get_ns(), .ip = c->ip, .port = c->port};

	if (!c->reported)
		return; /* neither its connect nor its accept was counted */
	if (!aggregate) {
		stat_inc(STAT_CLOSE_UNSEEN);
		return;
	}
	/* the exporter tracks every namespace; count what its filters count */
	if (!filters_pass(c->netns, c->port))
		return;
	stat_inc(STAT_CLOSE_UNSEEN);
	aggregate_event(c->netns, TCP_EVENT_TYPE_CLOSE_UNSEEN, &c->owner, c->direction, 0, &f);
}

/*
 * Drop what a freed socket at this address left behind, and count its close; see
 * on_unseen_close. Whoever deletes an entry counts it: the CLOSE handler, this, or
 * sweep_conns, which can race with either.
 */
static __always_inline bool forget_stale(__u64 key)
{
	struct conn *c = bpf_map_lookup_elem(&conns, &key), gone;

	if (!c)
		return false;
	gone = *c;
	if (bpf_map_delete_elem(&conns, &key))
		return false;
	on_unseen_close(&gone);
	return true;
}

/* A connection open before the daemon started reached CLOSE: count it if it was seeded. */
static __always_inline void on_seeded_close(struct sock *sk, __u16 family, __u32 netns)
{
	struct tuple_key t = {.netns = netns, .family = family};
	struct seed_value *sv;
	struct facts f = {.now = bpf_ktime_get_ns()};

	t.sport = local_port(sk);
	t.dport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (family == AF_INET) {
		BPF_CORE_READ_INTO((__u32 *)t.saddr, sk, __sk_common.skc_rcv_saddr);
		BPF_CORE_READ_INTO((__u32 *)t.daddr, sk, __sk_common.skc_daddr);
	} else {
		BPF_CORE_READ_INTO(&t.saddr, sk, __sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8);
		BPF_CORE_READ_INTO(&t.daddr, sk, __sk_common.skc_v6_daddr.in6_u.u6_addr8);
	}
	sv = bpf_map_lookup_elem(&seeded, &t);
	if (!sv)
		return;
	f.ip = ip_version(sk, family);
	f.port = sv->port;
	aggregate_event(netns, TCP_EVENT_TYPE_SEEDED_CLOSE, &sv->owner, sv->direction, 0, &f);
	bpf_map_delete_elem(&seeded, &t);
}

static __always_inline void on_connect_start(struct sock *sk, __u16 family, __u32 netns)
{
	__u64 key = (__u64)sk;
	struct conn c = {.direction = DIRECTION_OUTBOUND};
	long err;

	current_owner(&c.owner);
	if (!watched(netns) || (filter_pid && c.owner.pid != filter_pid)) {
		forget_stale(key);
		return;
	}
	/* the start of its lifetime should its establishment go unseen (on_unseen_connect) */
	c.established_ns = bpf_ktime_get_ns();
	identify(&c, sk, family, netns);
	/*
	 * An entry already here belongs to a freed socket whose CLOSE we never saw (or to
	 * this event, seen by both copies of the programs during a takeover: not reported).
	 */
	err = bpf_map_update_elem(&conns, &key, &c, BPF_NOEXIST);
	if (err == -EEXIST) {
		forget_stale(key);
		err = bpf_map_update_elem(&conns, &key, &c, BPF_ANY);
	}
	if (err)
		stat_inc(STAT_MAP_UPDATE_FAILED);
}

static __always_inline void on_connected(struct sock *sk, __u16 family, __u32 netns)
{
	__u64 key = (__u64)sk;
	struct conn *c = bpf_map_lookup_elem(&conns, &key);

	if (!c) {
		/*
		 * connect() began before we attached, or its state could not be stored (the map
		 * was full: counted in STAT_MAP_UPDATE_FAILED too), or it was filtered out
		 */
		if (!filter_pid && watched(netns))
			stat_inc(STAT_CONNECT_UNATTRIBUTED);
		return;
	}
	/* the same event seen twice: by both copies of the programs during a takeover */
	if (c->reported)
		return;
	c->established_ns = bpf_ktime_get_ns();
	c->sport = BPF_CORE_READ(sk, __sk_common.skc_num);
	c->reported = 1;
	record(sk, family, netns, TCP_EVENT_TYPE_CONNECT, c, 0, c->established_ns);
}

static __always_inline void on_listen(struct sock *sk, __u16 family, __u32 netns)
{
	struct listener_key k = {
	    .netns = netns,
	    .port = BPF_CORE_READ(sk, __sk_common.skc_num),
	    .family = family,
	};
	struct listener_value v = {.sk = (__u64)sk}, *old;

	/*
	 * Another socket still listening on the same key (an SO_REUSEPORT group, or a
	 * listen() about to fail with EADDRINUSE) keeps its owner.
	 */
	old = bpf_map_lookup_elem(&listeners, &k);
	if (old && old->sk && old->sk != (__u64)sk) {
		struct sock *other = (struct sock *)old->sk;

		if (BPF_CORE_READ(other, __sk_common.skc_state) == TCP_LISTEN)
			return;
	}
	current_owner(&v.owner);
	if (bpf_map_update_elem(&listeners, &k, &v, BPF_ANY))
		stat_inc(STAT_MAP_UPDATE_FAILED);
}

static __always_inline void on_unlisten(struct sock *sk, __u16 family, __u32 netns)
{
	struct listener_key k = {.netns = netns, .port = local_port(sk), .family = family};
	struct listener_value *v = bpf_map_lookup_elem(&listeners, &k);

	/* only the recorded socket (or a seeded entry, socket unknown) removes the owner */
	if (v && (v->sk == (__u64)sk || v->sk == 0))
		bpf_map_delete_elem(&listeners, &k);
}

static __always_inline void on_accepted(struct sock *sk, __u16 family, __u32 netns)
{
	__u64 key = (__u64)sk;
	struct conn c = {.direction = DIRECTION_INBOUND}, *out;
	long err;

	/* simultaneous open (SYN_SENT -> SYN_RECV -> ESTABLISHED) is an outbound connection */
	out = bpf_map_lookup_elem(&conns, &key);
	if (out && out->direction == DIRECTION_OUTBOUND) {
		on_connected(sk, family, netns);
		return;
	}
	/* already counted: the same event seen twice (the nested program, or a takeover) */
	if (out && out->reported)
		return;
	if (!watched(netns))
		return;
	c.established_ns = bpf_ktime_get_ns();
	c.sport = BPF_CORE_READ(sk, __sk_common.skc_num);
	identify(&c, sk, family, netns);
	if (accept_mode == ACCEPT_MODE_LISTENER) {
		struct listener_key k = {
		    .netns = netns,
		    .port = BPF_CORE_READ(sk, __sk_common.skc_num),
		    .family = family,
		};
		struct listener_value *o = bpf_map_lookup_elem(&listeners, &k);

		if (o)
			c.owner = o->owner;
		else
			stat_inc(STAT_ACCEPT_UNATTRIBUTED); /* reported with pid 0 */
		if (filter_pid && c.owner.pid != filter_pid)
			return;
		c.reported = 1;
	}
	/*
	 * ACCEPT_MODE_SYSCALL and _KERNEL: the accept hook fills the owner and reports.
	 * It may have run already: the child joins the accept queue just before this
	 * transition, so accept() on another CPU can return first. Then it owns the entry.
	 */
	err = bpf_map_update_elem(&conns, &key, &c,
				  accept_mode == ACCEPT_MODE_LISTENER ? BPF_ANY : BPF_NOEXIST);
	if (err == -EEXIST)
		return;
	if (err) {
		stat_inc(STAT_MAP_UPDATE_FAILED);
		return;
	}
	if (c.reported)
		record(sk, family, netns, TCP_EVENT_TYPE_ACCEPT, &c, 0, c.established_ns);
}

/*
 * Listener mode, at CLOSE of an inbound connection nobody reported: a copy of the
 * programs in syscall or kernel mode established it, waiting for an accept hook,
 * and handed over to us (a restart with another accept mode) before the accept.
 * Charge it to the listener's owner now: its accept, then its close.
 */
static __always_inline void on_orphan_closed(struct sock *sk, __u16 family, __u32 netns,
					     struct conn *c, __u64 now)
{
	struct listener_key k = {.netns = netns, .port = c->sport, .family = family};
	struct listener_value *o = bpf_map_lookup_elem(&listeners, &k);

	if (o)
		c->owner = o->owner;
	else
		stat_inc(STAT_ACCEPT_UNATTRIBUTED); /* reported with pid 0 */
	if (filter_pid && c->owner.pid != filter_pid)
		return;
	c->reported = 1;
	record(sk, family, netns, TCP_EVENT_TYPE_ACCEPT, c, 0, now);
	record(sk, family, netns, TCP_EVENT_TYPE_CLOSE, c, 0, now);
}

/*
 * An outbound connection closed whose establishment neither program saw (the kernel
 * did not run them for it; see on_unseen_close): count its connect now, then its
 * close, with its lifetime measured from connect().
 */
static __always_inline void on_unseen_connect(struct sock *sk, __u16 family, __u32 netns,
					      struct conn *c, __u64 now)
{
	if (!aggregate || filters_pass(c->netns, c->port))
		stat_inc(STAT_CONNECT_UNSEEN);
	c->reported = 1;
	record(sk, family, netns, TCP_EVENT_TYPE_CONNECT, c, 0, now);
	record(sk, family, netns, TCP_EVENT_TYPE_CLOSE, c, 0, now);
}

static __always_inline void on_closed(struct sock *sk, __u16 family, __u32 netns, int oldstate)
{
	__u64 key = (__u64)sk, now;
	struct conn *v = bpf_map_lookup_elem(&conns, &key), c;

	if (!v) {
		if (aggregate && seeded_any)
			on_seeded_close(sk, family, netns);
		return;
	}
	/* terminal state: drop the socket's entry; whoever deletes it counts it (forget_stale) */
	c = *v;
	if (bpf_map_delete_elem(&conns, &key))
		return;
	now = bpf_ktime_get_ns();
	if (oldstate == TCP_SYN_SENT)
		record(sk, family, netns, TCP_EVENT_TYPE_CONNECT_FAILED, &c, fail_reason(sk), now);
	else if (c.reported)
		record(sk, family, netns, TCP_EVENT_TYPE_CLOSE, &c, 0, now);
	else if (c.direction == DIRECTION_INBOUND && accept_mode == ACCEPT_MODE_LISTENER)
		/* left waiting for an accept hook by a copy in another mode that handed over to us
		 */
		on_orphan_closed(sk, family, netns, &c, now);
	else if (c.direction == DIRECTION_INBOUND)
		/* syscall or kernel mode: established, never returned by an accept */
		stat_inc(STAT_ACCEPT_UNATTRIBUTED);
	else if (oldstate != TCP_SYN_RECV) /* not a simultaneous open that failed */
		on_unseen_connect(sk, family, netns, &c, now);
}

/*
 * A listener's new child socket: any entry under its address belongs to a freed
 * socket whose CLOSE we never saw (on_unseen_close). Without this, a stale outbound
 * entry would make the accept look like a simultaneous open.
 */
static __always_inline void on_child_created(struct sock *sk)
{
	forget_stale((__u64)sk);
}

/*
 * The kernel runs a tracing program at most once at a time per CPU: when a softirq
 * interrupts handle_set_state (anywhere from its entry to its exit: in connect() or
 * close(), say) and changes another socket's state, that nested run is skipped and
 * counted in the program's recursion_misses. A second program on the same
 * tracepoint, with a guard of its own, runs right after the first for every event.
 * The first writes each event's identity here before anything else, so the second
 * acts exactly on the events the first never started. A softirq between the two
 * runs can make the second act on an event the first handled: every handler is
 * idempotent (the socket's entry in "conns" says what was counted).
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct seen);
} set_state_seen SEC(".maps");

/*
 * The new states set_state acts on. The others (FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT, LAST_ACK,
 * CLOSING: four of the ten state changes of a connection's two ends) return before anything
 * else is read: both programs check this first, so neither acts on them nor touches "seen".
 */
#define ACTED_ON_STATES                                                                            \
	((1U << TCP_ESTABLISHED) | (1U << TCP_SYN_SENT) | (1U << TCP_SYN_RECV) |                   \
	 (1U << TCP_CLOSE) | (1U << TCP_LISTEN))

static __always_inline bool acted_on(int newstate)
{
	return newstate >= 0 && newstate < 32 && ((1U << newstate) & ACTED_ON_STATES);
}

static __always_inline void set_state(struct sock *sk, int oldstate, int newstate)
{
	__u16 family;
	__u32 netns;

	if (BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return;
	family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (family != AF_INET && family != AF_INET6)
		return;
	netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	if (filter_netns && netns != filter_netns)
		return;

	if (newstate == TCP_SYN_SENT && oldstate == TCP_CLOSE)
		on_connect_start(sk, family, netns);
	else if (newstate == TCP_ESTABLISHED && oldstate == TCP_SYN_SENT)
		on_connected(sk, family, netns);
	else if (newstate == TCP_ESTABLISHED && oldstate == TCP_SYN_RECV)
		on_accepted(sk, family, netns);
	else if (newstate == TCP_SYN_RECV && oldstate == TCP_LISTEN)
		on_child_created(sk);
	else if (newstate == TCP_LISTEN)
		on_listen(sk, family, netns);
	else if (newstate == TCP_CLOSE && oldstate == TCP_LISTEN)
		on_unlisten(sk, family, netns);
	else if (newstate == TCP_CLOSE)
		on_closed(sk, family, netns, oldstate);
}

SEC("raw_tp/inet_sock_set_state")
int BPF_PROG(handle_set_state, struct sock *sk, int oldstate, int newstate)
{
	__u32 zero = 0;
	struct seen *seen;

	if (!acted_on(newstate))
		return 0;
	seen = bpf_map_lookup_elem(&set_state_seen, &zero);
	if (!seen)
		return 0;
	/* first: the second program must know this event was started */
	seen->sk = (__u64)sk;
	seen->oldstate = oldstate;
	seen->newstate = newstate;
	if (is_active())
		set_state(sk, oldstate, newstate);
	return 0;
}

SEC("raw_tp/inet_sock_set_state")
int BPF_PROG(handle_set_state_nested, struct sock *sk, int oldstate, int newstate)
{
	__u32 zero = 0;
	struct seen *seen;

	if (!acted_on(newstate))
		return 0;
	seen = bpf_map_lookup_elem(&set_state_seen, &zero);
	if (!seen)
		return 0;
	if (seen->sk == (__u64)sk && seen->oldstate == oldstate && seen->newstate == newstate) {
		/*
		 * The first program started this event. Forget it: a later event of a socket
		 * at the same address with the same transition, skipped by the first program
		 * (a softirq in its entry), must not be taken for this one.
		 */
		seen->sk = 0;
		return 0;
	}
	if (is_active())
		set_state(sk, oldstate, newstate);
	return 0;
}

/*
 * Never attached: the daemon runs it (BPF_PROG_TEST_RUN) before it reads the counters.
 * It counts the closes that neither the CLOSE handler nor a new socket taking over
 * the memory (forget_stale) has: entries of counted connections whose socket's memory
 * no longer holds them. The socket's state is stored after the tracepoint, so a socket
 * reads CLOSE only once its CLOSE handler has run; then the entry is gone, or was
 * never deleted because the handler never ran.
 */
static __always_inline bool still_open(struct sock *sk, const struct conn *c)
{
	switch (BPF_CORE_READ(sk, __sk_common.skc_state)) {
	case TCP_CLOSE:
	case TCP_LISTEN:
	case TCP_TIME_WAIT:
	case TCP_NEW_SYN_RECV:
		return false;
	}
	return local_port(sk) == c->sport &&
	       BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum) == c->netns;
}

static long sweep_one(struct bpf_map *map, __u64 *key, struct conn *c, __u32 *forgotten)
{
	/* unreported: still connecting (its socket reads CLOSE until SYN_SENT is stored) */
	if (c->reported && !still_open((struct sock *)*key, c) && forget_stale(*key))
		(*forgotten)++;
	return 0;
}

/*
 * Returns how many entries it removed. A walk that removed some may have missed others: a
 * deleted entry of a preallocated hash map can be taken at once by an insert on another CPU,
 * and the walk, following that entry's link, then leaves its bucket early. The caller walks
 * again until a walk removes nothing.
 */
SEC("raw_tp")
int sweep_conns(void *ctx)
{
	__u32 forgotten = 0;

	if (is_active())
		bpf_for_each_map_elem(&conns, sweep_one, &forgotten, 0);
	return forgotten;
}

/*
 * ACCEPT_MODE_SYSCALL and ACCEPT_MODE_KERNEL: charge the accept to the process
 * that accept()ed it. `sk` is the new connection's socket, the same pointer
 * inet_sock_set_state saw.
 */
/* An inbound entry still waiting for its accept: charge it to the current task, report it. */
static __always_inline void report_accept(struct sock *sk, __u16 family, __u32 netns, __u64 key,
					  struct conn *c)
{
	if (c->reported || c->direction != DIRECTION_INBOUND)
		return;
	current_owner_of_request(&c->owner);
	if (filter_pid && c->owner.pid != filter_pid) {
		bpf_map_delete_elem(&conns, &key);
		return;
	}
	c->reported = 1;
	record(sk, family, netns, TCP_EVENT_TYPE_ACCEPT, c, 0, bpf_ktime_get_ns());
}

static __always_inline int on_accept_return(struct sock *sk)
{
	struct conn *c, n = {.direction = DIRECTION_INBOUND, .reported = 1};
	__u64 key;
	__u16 family;
	__u32 netns;
	long err;

	/*
	 * No is_active() here: during a takeover the accept hooks of both copies act,
	 * since an accept() may return just before the switch to a copy whose state
	 * program creates the entry just after it. The entry's reported flag makes the
	 * second report a no-op.
	 */
	if (!sk || BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (family != AF_INET && family != AF_INET6)
		return 0;
	netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	if (filter_netns && netns != filter_netns)
		return 0;

	key = (__u64)sk;
	c = bpf_map_lookup_elem(&conns, &key);
	if (c) {
		/* the usual order: the handshake completed, then accept() returned */
		report_accept(sk, family, netns, key, c);
		return 0;
	}
	/*
	 * accept() won the race with SYN_RECV -> ESTABLISHED: claim the entry first. Any
	 * other state without an entry is a socket we must not track: already CLOSE (reset
	 * in the accept queue: no CLOSE transition will follow) or open before we attached.
	 * Unless that transition ran on another CPU between our lookup and this read (the
	 * kernel stores the new state after the tracepoint): then its entry is there now.
	 */
	if (BPF_CORE_READ(sk, __sk_common.skc_state) != TCP_SYN_RECV) {
		c = bpf_map_lookup_elem(&conns, &key);
		if (c)
			report_accept(sk, family, netns, key, c);
		return 0;
	}
	if (!watched(netns))
		return 0;
	current_owner_of_request(&n.owner);
	if (filter_pid && n.owner.pid != filter_pid)
		return 0;
	n.established_ns = bpf_ktime_get_ns();
	n.sport = BPF_CORE_READ(sk, __sk_common.skc_num);
	identify(&n, sk, family, netns);
	err = bpf_map_update_elem(&conns, &key, &n, BPF_NOEXIST);
	if (err == -EEXIST) {
		/* the handshake's last step got in between lookup and update after all */
		c = bpf_map_lookup_elem(&conns, &key);
		if (c)
			report_accept(sk, family, netns, key, c);
		return 0;
	}
	if (err) {
		stat_inc(STAT_MAP_UPDATE_FAILED);
		return 0;
	}
	record(sk, family, netns, TCP_EVENT_TYPE_ACCEPT, &n, 0, n.established_ns);
	return 0;
}

/*
 * ACCEPT_MODE_KERNEL: inet_csk_accept() returns the new socket in the accepting
 * task, whatever the path: accept(), accept4(), io_uring (inline, task work or an
 * io-wq worker), or an accept() that began before we attached.
 * Its arguments changed in 6.10; the return value is read without naming them.
 */
SEC("fexit/inet_csk_accept")
int handle_accept_fexit(__u64 *ctx)
{
	__u64 ret = 0;

	if (bpf_get_func_ret(ctx, &ret))
		return 0;
	return on_accept_return((struct sock *)ret);
}

/* The same where fentry is missing but kprobes work. */
SEC("kretprobe/inet_csk_accept")
int BPF_KRETPROBE(handle_accept_kretprobe, struct sock *sk)
{
	return on_accept_return(sk);
}

/*
 * ACCEPT_MODE_SYSCALL, for kernels without kprobes and fentry: the syscall exits.
 * fd -> task->files->fdt->fd[fd] -> file->private_data (struct socket) -> sk.
 * Enabling any syscalls:* tracepoint puts every syscall of every process on the
 * slow path, so these two programs are loaded only in this mode. io_uring accepts
 * bypass them.
 */
static __always_inline int on_accept_exit(long ret)
{
	struct task_struct *task;
	struct fdtable *fdt;
	struct file **fds, *file;
	struct socket *sock;

	if (ret < 0)
		return 0;
	/* the new fd's socket */
	task = (struct task_struct *)bpf_get_current_task();
	fdt = BPF_CORE_READ(task, files, fdt);
	if (ret >= BPF_CORE_READ(fdt, max_fds))
		return 0;
	fds = BPF_CORE_READ(fdt, fd);
	if (bpf_probe_read_kernel(&file, sizeof(file), &fds[ret]) || !file)
		return 0;
	sock = BPF_CORE_READ(file, private_data);
	return on_accept_return(BPF_CORE_READ(sock, sk));
}

SEC("tracepoint/syscalls/sys_exit_accept4")
int handle_accept4_exit(struct trace_event_raw_sys_exit *ctx)
{
	return on_accept_exit(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_accept")
int handle_accept_exit(struct trace_event_raw_sys_exit *ctx)
{
	return on_accept_exit(ctx->ret);
}
