// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * tcptracer: every TCP connect, accept and close, attributed to a process and a
 * network namespace, using tracepoints only (no kprobes, no fentry).
 *
 * The backbone is sock:inet_sock_set_state, attached as a raw tracepoint: it
 * needs no tracefs and passes the socket pointer without copying arguments.
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

/* Load-time settings, written by the addon before load. 0 disables a filter. */
const volatile __u32 filter_pid = 0;
const volatile __u32 filter_netns = 0;
const volatile __u8 filter_ip = 0; /* 4 or 6 */
const volatile __u8 accept_mode = ACCEPT_MODE_LISTENER;

/*
 * Set by the addon while a consumer drains "events". While it is 0 no record is
 * reserved, so the ring buffer costs nothing when only aggregates are read.
 */
volatile __u32 events_enabled = 0;

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
	__type(value, struct owner);
} listeners SEC(".maps");

/*
 * Per-socket state, keyed by the socket pointer, from connect() (or the
 * handshake's completion for inbound) until the socket reaches CLOSE. Only
 * CLOSE -> SYN_SENT runs in the connecting process, and the source port may
 * still be 0 there, so the pointer is the only stable key.
 */
struct conn {
	struct owner owner;
	__u64 established_ns; /* 0 while SYN_SENT */
	__u16 sport;	      /* local port at establishment: unhashing at CLOSE zeroes it */
	__u8 direction;	      /* enum direction */
	__u8 reported;	      /* the connect/accept event was emitted */
	__u8 __pad[4];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536); /* resized by the addon before load */
	__type(key, __u64);
	__type(value, struct conn);
} conns SEC(".maps");

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

static __always_inline bool is_v4_mapped(const __u32 *a)
{
	return a[0] == 0 && a[1] == 0 && a[2] == bpf_htonl(0x0000ffff);
}

/* Copy addresses and ports from the socket; returns the IP version reported. */
static __always_inline __u8 read_addrs(struct sock *sk, __u16 family, struct event *e)
{
	e->sport = BPF_CORE_READ(sk, __sk_common.skc_num);
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

/* Reserve, fill and submit one record for a socket whose owner is known. */
static __always_inline void emit(struct sock *sk, __u16 family, __u32 netns, __u8 type,
				 const struct conn *c, __u8 reason)
{
	struct event *e;
	__u8 ip;

	if (!events_enabled)
		return;
	if (filter_pid && c->owner.pid != filter_pid)
		return;
	/* reserve */
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		stat_inc(STAT_EVENTS_LOST);
		return;
	}
	/* fill */
	ip = read_addrs(sk, family, e);
	if (c->sport)
		e->sport = c->sport;
	if (filter_ip && ip != filter_ip) {
		bpf_ringbuf_discard(e, 0);
		return;
	}
	e->ts_ns = bpf_ktime_get_ns();
	e->duration_ns = 0;
	e->bytes_sent = 0;
	e->bytes_received = 0;
	if (type == TCP_EVENT_TYPE_CLOSE) {
		struct tcp_sock *tp = (struct tcp_sock *)sk;

		if (c->established_ns)
			e->duration_ns = e->ts_ns - c->established_ns;
		__u64 rcvd = BPF_CORE_READ(tp, bytes_received);

		/* payload only: bytes_sent counts retransmissions again */
		e->bytes_sent = BPF_CORE_READ(tp, bytes_sent) - BPF_CORE_READ(tp, bytes_retrans);
		/* bytes_received counts the peer's FIN as a byte; SOCK_DONE says it came */
		if (rcvd && (BPF_CORE_READ(sk, __sk_common.skc_flags) & (1UL << SOCK_DONE)))
			rcvd--;
		e->bytes_received = rcvd;
	}
	e->cgroup_id = c->owner.cgroup_id;
	e->pid = c->owner.pid;
	e->netns = netns;
	e->type = type;
	e->ip = ip;
	e->reason = reason;
	e->direction = c->direction;
	__builtin_memcpy(e->comm, c->owner.comm, sizeof(e->comm));
	/* submit */
	bpf_ringbuf_submit(e, 0);
}

static __always_inline void on_connect_start(struct sock *sk)
{
	__u64 key = (__u64)sk;
	struct conn c = {.direction = DIRECTION_OUTBOUND};

	current_owner(&c.owner);
	if (filter_pid && c.owner.pid != filter_pid)
		return;
	if (bpf_map_update_elem(&conns, &key, &c, BPF_ANY))
		stat_inc(STAT_MAP_UPDATE_FAILED);
}

static __always_inline void on_connected(struct sock *sk, __u16 family, __u32 netns)
{
	__u64 key = (__u64)sk;
	struct conn *c = bpf_map_lookup_elem(&conns, &key);

	if (!c) {
		/* connect() began before we attached, or was filtered out */
		if (!filter_pid)
			stat_inc(STAT_CONNECT_UNATTRIBUTED);
		return;
	}
	c->established_ns = bpf_ktime_get_ns();
	c->sport = BPF_CORE_READ(sk, __sk_common.skc_num);
	c->reported = 1;
	emit(sk, family, netns, TCP_EVENT_TYPE_CONNECT, c, 0);
}

static __always_inline void on_listen(struct sock *sk, __u16 family, __u32 netns)
{
	struct listener_key k = {
	    .netns = netns,
	    .port = BPF_CORE_READ(sk, __sk_common.skc_num),
	    .family = family,
	};
	struct owner o = {};

	current_owner(&o);
	if (bpf_map_update_elem(&listeners, &k, &o, BPF_ANY))
		stat_inc(STAT_MAP_UPDATE_FAILED);
}

static __always_inline void on_unlisten(struct sock *sk, __u16 family, __u32 netns)
{
	struct listener_key k = {
	    .netns = netns,
	    .port = BPF_CORE_READ(sk, __sk_common.skc_num),
	    .family = family,
	};

	bpf_map_delete_elem(&listeners, &k);
}

static __always_inline void on_accepted(struct sock *sk, __u16 family, __u32 netns)
{
	__u64 key = (__u64)sk;
	struct conn c = {.direction = DIRECTION_INBOUND};
	long err;

	c.established_ns = bpf_ktime_get_ns();
	c.sport = BPF_CORE_READ(sk, __sk_common.skc_num);
	if (accept_mode == ACCEPT_MODE_LISTENER) {
		struct listener_key k = {
		    .netns = netns,
		    .port = BPF_CORE_READ(sk, __sk_common.skc_num),
		    .family = family,
		};
		struct owner *o = bpf_map_lookup_elem(&listeners, &k);

		if (o)
			c.owner = *o;
		else
			stat_inc(STAT_ACCEPT_UNATTRIBUTED); /* reported with pid 0 */
		if (filter_pid && c.owner.pid != filter_pid)
			return;
		c.reported = 1;
	}
	/*
	 * ACCEPT_MODE_SYSCALL: the accept() exit handler fills the owner and reports.
	 * It may have run already: the child joins the accept queue just before this
	 * transition, so accept() on another CPU can return first. Then it owns the entry.
	 */
	err = bpf_map_update_elem(&conns, &key, &c,
				  accept_mode == ACCEPT_MODE_SYSCALL ? BPF_NOEXIST : BPF_ANY);
	if (err == -EEXIST)
		return;
	if (err) {
		stat_inc(STAT_MAP_UPDATE_FAILED);
		return;
	}
	if (c.reported)
		emit(sk, family, netns, TCP_EVENT_TYPE_ACCEPT, &c, 0);
}

static __always_inline void on_closed(struct sock *sk, __u16 family, __u32 netns, int oldstate)
{
	__u64 key = (__u64)sk;
	struct conn *c = bpf_map_lookup_elem(&conns, &key);

	if (!c)
		return;
	if (oldstate == TCP_SYN_SENT)
		emit(sk, family, netns, TCP_EVENT_TYPE_CONNECT_FAILED, c, fail_reason(sk));
	else if (c->reported)
		emit(sk, family, netns, TCP_EVENT_TYPE_CLOSE, c, 0);
	else if (c->direction == DIRECTION_INBOUND)
		/* syscall mode: established, never returned by accept()/accept4() */
		stat_inc(STAT_ACCEPT_UNATTRIBUTED);
	/* terminal state: drop the socket's entry */
	bpf_map_delete_elem(&conns, &key);
}

SEC("raw_tp/inet_sock_set_state")
int BPF_PROG(handle_set_state, struct sock *sk, int oldstate, int newstate)
{
	__u16 family;
	__u32 netns;

	if (BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (family != AF_INET && family != AF_INET6)
		return 0;
	netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	if (filter_netns && netns != filter_netns)
		return 0;

	if (newstate == TCP_SYN_SENT && oldstate == TCP_CLOSE)
		on_connect_start(sk);
	else if (newstate == TCP_ESTABLISHED && oldstate == TCP_SYN_SENT)
		on_connected(sk, family, netns);
	else if (newstate == TCP_ESTABLISHED && oldstate == TCP_SYN_RECV)
		on_accepted(sk, family, netns);
	else if (newstate == TCP_LISTEN)
		on_listen(sk, family, netns);
	else if (newstate == TCP_CLOSE && oldstate == TCP_LISTEN)
		on_unlisten(sk, family, netns);
	else if (newstate == TCP_CLOSE)
		on_closed(sk, family, netns, oldstate);
	return 0;
}

/*
 * ACCEPT_MODE_SYSCALL: charge the accept to the process that accept()ed it.
 * fd -> task->files->fdt->fd[fd] -> file->private_data (struct socket) -> sk is
 * the same pointer inet_sock_set_state saw. Enabling any syscalls:* tracepoint
 * puts every syscall of every process on the slow path, so these two programs
 * are loaded only in this mode. io_uring accepts bypass them.
 */
static __always_inline int on_accept_exit(long ret)
{
	struct task_struct *task;
	struct fdtable *fdt;
	struct file **fds, *file;
	struct socket *sock;
	struct sock *sk;
	struct conn *c, n = {.direction = DIRECTION_INBOUND, .reported = 1};
	__u64 key;
	__u16 family;
	__u32 netns;
	long err;

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
	sk = BPF_CORE_READ(sock, sk);
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
		if (c->reported || c->direction != DIRECTION_INBOUND)
			return 0;
		current_owner(&c->owner);
		if (filter_pid && c->owner.pid != filter_pid) {
			bpf_map_delete_elem(&conns, &key);
			return 0;
		}
		c->reported = 1;
		emit(sk, family, netns, TCP_EVENT_TYPE_ACCEPT, c, 0);
		return 0;
	}
	/* accept() won the race with SYN_RECV -> ESTABLISHED: claim the entry first */
	current_owner(&n.owner);
	if (filter_pid && n.owner.pid != filter_pid)
		return 0;
	n.established_ns = bpf_ktime_get_ns();
	n.sport = BPF_CORE_READ(sk, __sk_common.skc_num);
	err = bpf_map_update_elem(&conns, &key, &n, BPF_NOEXIST);
	if (err == -EEXIST) {
		/* the handshake's last step got in between lookup and update after all */
		c = bpf_map_lookup_elem(&conns, &key);
		if (!c || c->reported)
			return 0;
		c->owner = n.owner;
		c->reported = 1;
		emit(sk, family, netns, TCP_EVENT_TYPE_ACCEPT, c, 0);
		return 0;
	}
	if (err) {
		stat_inc(STAT_MAP_UPDATE_FAILED);
		return 0;
	}
	emit(sk, family, netns, TCP_EVENT_TYPE_ACCEPT, &n, 0);
	return 0;
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
