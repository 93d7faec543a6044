// SPDX-License-Identifier: Apache-2.0
/*
 * tcpload: a small TCP load generator for the tcptracer-exporter tests and benchmarks.
 *
 *   tcpload server [options]   accept connections, read each one to EOF, close it
 *   tcpload client [options]   open connections, send some bytes, close them
 *   tcpload pair [options]     both of the above in one process, over loopback
 *
 * Every event goes to stdout as one JSON object per line, written with a single write(2) so
 * lines never interleave and are never buffered. Errors go to stderr; usage errors exit with
 * status 2 and runtime errors with status 1.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define PROG	       "tcpload"
#define COMM_MAX       15 /* TASK_COMM_LEN - 1 */
#define COMM_HEX_MAX   64 /* bytes given to --comm-hex; the kernel keeps the first COMM_MAX */
#define LISTEN_BACKLOG 4096
#define IO_BUF_SIZE    (64 * 1024)

#define COUNT_MIN   1
#define COUNT_MAX   10000000ULL
#define THREADS_MAX 1024ULL
#define HOLD_MS_MAX 86400000ULL	 /* one day */
#define SEND_MAX    (1ULL << 40) /* 1 TiB */

static const char usage_text[] =
    "Usage:\n"
    "  " PROG " server [--comm NAME | --comm-hex HEX] [--bind ADDR] [--port P]\n"
    "                 [--count N | --forever]\n"
    "                 [--hold-ms MS] [--threads T] [--quiet]\n"
    "  " PROG " client [--comm NAME | --comm-hex HEX] --addr ADDR --port P [--count N]\n"
    "                 [--send BYTES]\n"
    "                 [--hold-ms MS] [--hold-stdin] [--threads T] [--quiet]\n"
    "  " PROG " pair   [--comm NAME] [--comm-server NAME] [--comm-client NAME] [--bind ADDR]\n"
    "                 --count N [--threads T] [--send BYTES]\n"
    "  " PROG " --help\n"
    "\n"
    "Options take their value as the next argument or after '=' (--port=80).\n"
    "\n"
    "Common:\n"
    "  --comm NAME      set the process name (prctl PR_SET_NAME, at most 15 characters)\n"
    "                   before doing anything else\n"
    "  --comm-hex HEX   the same, from the name's bytes in hex (any byte but 00, up to 64\n"
    "                   bytes): quotes, newlines, invalid UTF-8. The kernel keeps the first\n"
    "                   15 bytes, which may cut a UTF-8 sequence in half; comm_hex in the\n"
    "                   listening (server) and done (client) lines is what it kept\n"
    "\n"
    "server: listen on ADDR:P, accept exactly N connections, read each to EOF, then close it.\n"
    "  --bind ADDR      IPv4 or IPv6 literal to listen on (default 127.0.0.1); '::' is\n"
    "                   dual-stack (IPV6_V6ONLY=0)\n"
    "  --port P         0..65535 (default 0: an ephemeral port)\n"
    "  --count N        connections to accept, 1..10000000 (default 1)\n"
    "  --forever        accept until SIGTERM or SIGINT instead of --count\n"
    "  --hold-ms MS     sleep MS milliseconds after EOF before close, 0..86400000 (default 0)\n"
    "  --threads T      accepting threads, 1..1024 (default 1); T > 1 implies --quiet\n"
    "  --quiet          no per-connection lines\n"
    "\n"
    "client: open N connections to ADDR:P, one after another in each thread.\n"
    "  --addr ADDR      IPv4 or IPv6 literal to connect to (required)\n"
    "  --port P         1..65535 (required)\n"
    "  --count N        connections to make, 1..10000000 (default 1)\n"
    "  --send BYTES     bytes to send on each connection, 0..2^40 (default 0)\n"
    "  --hold-ms MS     sleep MS milliseconds after sending (and printing the connected\n"
    "                   line), before close (default 0)\n"
    "  --hold-stdin     then hold every connection open until standard input reaches EOF,\n"
    "                   so the caller decides when it closes\n"
    "  --threads T      connecting threads, 1..1024 (default 1); T > 1 implies --quiet\n"
    "  --quiet          no per-connection lines\n"
    "\n"
    "pair: a server and a client in one process over loopback, for benchmarks. Prints only\n"
    "  the listening and done lines.\n"
    "  --comm-server NAME, --comm-client NAME  thread names of the server and client threads\n"
    "  --bind ADDR      address to listen on and connect to (default 127.0.0.1); for '::'\n"
    "                   or '0.0.0.0' the clients connect to '::1' or '127.0.0.1'\n"
    "  --count N        connections, 1..10000000 (required)\n"
    "  --threads T      server threads and, as many again, client threads (default 1)\n"
    "  --send BYTES     bytes to send on each connection (default 0)\n"
    "\n"
    "Output (stdout, one JSON object per line):\n"
    "  {\"event\":\"listening\",\"pid\":P,\"port\":PORT,\"comm_hex\":\"HEX\"}\n"
    "  {\"event\":\"accepted\",\"pid\":P,\"local_port\":LP,\"peer_addr\":\"A\","
    "\"peer_port\":RP,\"bytes_received\":B}\n"
    "  {\"event\":\"done\",\"pid\":P,\"accepted\":N,\"bytes_received\":TOTAL}\n"
    "  {\"event\":\"connected\",\"pid\":P,\"local_addr\":\"A\",\"local_port\":LP,"
    "\"bytes_sent\":B}\n"
    "  {\"event\":\"failed\",\"pid\":P,\"errno\":E,\"error\":\"TEXT\"}\n"
    "  {\"event\":\"done\",\"pid\":P,\"connected\":C,\"failed\":F,\"cpu_user_us\":U,"
    "\"cpu_sys_us\":S,\"wall_us\":W,\"comm_hex\":\"HEX\"}\n"
    "  pair: {\"event\":\"done\",\"pid\":P,\"accepted\":A,\"connected\":C,\"failed\":F,\n"
    "         \"bytes_received\":R,\"bytes_sent\":B,\"cpu_user_us\":U,\"cpu_sys_us\":S,"
    "\"wall_us\":W}\n"
    "\n"
    "Exit status: 0 on success (also when some connects failed), 1 on a runtime error,\n"
    "2 on a usage error.\n";

static pid_t self_pid;
static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;

/* ---- errors and output ---------------------------------------------------------------- */

static void __attribute__((noreturn, format(printf, 1, 2))) usage_error(const char *fmt, ...)
{
	va_list ap;

	fputs(PROG ": ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputs("\nTry '" PROG " --help' for more information.\n", stderr);
	exit(2);
}

/* A runtime error: print "tcpload: <message>: <strerror(err)>" and exit 1. */
static void __attribute__((noreturn, format(printf, 2, 3))) die(int err, const char *fmt, ...)
{
	va_list ap;

	fputs(PROG ": ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	if (err)
		fprintf(stderr, ": %s", strerror(err));
	fputc('\n', stderr);
	exit(1);
}

static void __attribute__((format(printf, 2, 3))) warn(int err, const char *fmt, ...)
{
	va_list ap;

	fputs(PROG ": warning: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	if (err)
		fprintf(stderr, ": %s", strerror(err));
	fputc('\n', stderr);
}

/* Print one JSON line to stdout with a single write, so it is flushed and never interleaved. */
static void __attribute__((format(printf, 1, 2))) emit(const char *fmt, ...)
{
	char line[1024];
	va_list ap;
	size_t len, off = 0;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(line, sizeof(line) - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		die(0, "cannot format output");
	len = (size_t)n < sizeof(line) - 1 ? (size_t)n : sizeof(line) - 2;
	line[len++] = '\n';

	pthread_mutex_lock(&out_lock);
	while (off < len) {
		ssize_t w = write(STDOUT_FILENO, line + off, len - off);

		if (w < 0) {
			if (errno == EINTR)
				continue;
			die(errno, "write to stdout");
		}
		off += (size_t)w;
	}
	pthread_mutex_unlock(&out_lock);
}

/* Copy src into dst as the inside of a JSON string (quotes, backslashes, controls escaped). */
static void json_escape(char *dst, size_t size, const char *src)
{
	size_t o = 0;

	for (; *src && o + 7 < size; src++) {
		unsigned char c = (unsigned char)*src;

		if (c == '"' || c == '\\') {
			dst[o++] = '\\';
			dst[o++] = (char)c;
		} else if (c < 0x20) {
			o += (size_t)snprintf(dst + o, size - o, "\\u%04x", c);
		} else {
			dst[o++] = (char)c;
		}
	}
	dst[o] = '\0';
}

/* ---- option parsing ------------------------------------------------------------------- */

enum opt_kind { OPT_FLAG, OPT_STR, OPT_U64, OPT_COMM, OPT_ADDR };

struct opt {
	const char *name;
	enum opt_kind kind;
	uint64_t min, max; /* OPT_U64 only */
	void *target;	   /* bool *, const char **, uint64_t * */
	bool *seen;	   /* optional: set when the option is given */
};

static uint64_t parse_u64(const char *name, const char *s, uint64_t min, uint64_t max)
{
	unsigned long long v;
	char *end;

	if (*s < '0' || *s > '9')
		usage_error("option --%s: '%s' is not a non-negative integer", name, s);
	errno = 0;
	v = strtoull(s, &end, 10);
	if (*end != '\0')
		usage_error("option --%s: '%s' is not a non-negative integer", name, s);
	if (errno == ERANGE || v < min || v > max)
		usage_error("option --%s: %s is out of range %" PRIu64 "..%" PRIu64, name, s, min,
			    max);
	return v;
}

struct addr {
	struct sockaddr_storage ss;
	socklen_t len;
	const char *text;
};

/*
 * Parse an IPv4 or IPv6 literal (IPv6 may carry a %scope, an interface name or index) with
 * port 0. Returns false when it is not a literal.
 */
static bool parse_addr(const char *text, struct addr *a)
{
	struct sockaddr_in *sin = (struct sockaddr_in *)&a->ss;
	struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&a->ss;
	char buf[INET6_ADDRSTRLEN + IF_NAMESIZE + 2];
	char *scope;

	memset(a, 0, sizeof(*a));
	a->text = text;
	if (inet_pton(AF_INET, text, &sin->sin_addr) == 1) {
		sin->sin_family = AF_INET;
		a->len = sizeof(*sin);
		return true;
	}
	if (strlen(text) >= sizeof(buf))
		return false;
	strcpy(buf, text);
	scope = strchr(buf, '%');
	if (scope)
		*scope++ = '\0';
	if (inet_pton(AF_INET6, buf, &sin6->sin6_addr) != 1)
		return false;
	if (scope) {
		char *end;
		unsigned long idx;

		if (*scope == '\0')
			return false;
		idx = if_nametoindex(scope);
		if (idx == 0) {
			errno = 0;
			idx = strtoul(scope, &end, 10);
			if (*end != '\0' || errno || idx == 0 || idx > UINT32_MAX)
				return false;
		}
		sin6->sin6_scope_id = (uint32_t)idx;
	}
	sin6->sin6_family = AF_INET6;
	a->len = sizeof(*sin6);
	return true;
}

static void set_port(struct addr *a, uint16_t port)
{
	if (a->ss.ss_family == AF_INET)
		((struct sockaddr_in *)&a->ss)->sin_port = htons(port);
	else
		((struct sockaddr_in6 *)&a->ss)->sin6_port = htons(port);
}

static void parse_opts(int argc, char **argv, const struct opt *opts)
{
	for (int i = 0; i < argc; i++) {
		const char *arg = argv[i], *val = NULL, *eq;
		const struct opt *o;
		size_t nlen;

		if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
			fputs(usage_text, stdout);
			exit(0);
		}
		if (strncmp(arg, "--", 2) != 0 || arg[2] == '\0')
			usage_error("unexpected argument '%s'", arg);
		arg += 2;
		eq = strchr(arg, '=');
		nlen = eq ? (size_t)(eq - arg) : strlen(arg);
		for (o = opts; o->name; o++)
			if (strlen(o->name) == nlen && strncmp(o->name, arg, nlen) == 0)
				break;
		if (!o->name)
			usage_error("unknown option '--%.*s'", (int)nlen, arg);

		if (o->kind == OPT_FLAG) {
			if (eq)
				usage_error("option --%s takes no value", o->name);
			*(bool *)o->target = true;
		} else {
			if (eq)
				val = eq + 1;
			else if (i + 1 < argc)
				val = argv[++i];
			else
				usage_error("option --%s needs a value", o->name);

			switch (o->kind) {
			case OPT_U64:
				*(uint64_t *)o->target = parse_u64(o->name, val, o->min, o->max);
				break;
			case OPT_COMM:
				if (val[0] == '\0')
					usage_error("option --%s: the name is empty", o->name);
				if (strlen(val) > COMM_MAX)
					usage_error("option --%s: '%s' is longer than %d chars",
						    o->name, val, COMM_MAX);
				*(const char **)o->target = val;
				break;
			case OPT_ADDR: {
				struct addr tmp;

				if (!parse_addr(val, &tmp))
					usage_error("option --%s: '%s' is not an IP address",
						    o->name, val);
				*(const char **)o->target = val;
				break;
			}
			default:
				*(const char **)o->target = val;
				break;
			}
		}
		if (o->seen)
			*o->seen = true;
	}
}

/* ---- small helpers -------------------------------------------------------------------- */

static void set_comm(const char *name)
{
	if (name && prctl(PR_SET_NAME, (unsigned long)name, 0, 0, 0) != 0)
		die(errno, "prctl(PR_SET_NAME, \"%s\")", name);
}

static int hex_digit(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/*
 * --comm NAME or --comm-hex HEX (whose bytes argv could not carry through every caller, such as
 * 0xff): set the process name. PR_SET_NAME keeps the first COMM_MAX bytes.
 */
static void set_comm_opts(const char *name, const char *hex)
{
	char buf[COMM_HEX_MAX + 1];
	size_t len = hex ? strlen(hex) : 0;

	if (name && hex)
		usage_error("--comm and --comm-hex exclude each other");
	if (!hex) {
		set_comm(name);
		return;
	}
	if (len == 0 || len % 2 != 0 || len / 2 > COMM_HEX_MAX)
		usage_error("option --comm-hex: '%s' is not 1 to %d bytes in hex", hex,
			    COMM_HEX_MAX);
	for (size_t i = 0; i < len / 2; i++) {
		int hi = hex_digit(hex[2 * i]), lo = hex_digit(hex[2 * i + 1]);

		if (hi < 0 || lo < 0)
			usage_error("option --comm-hex: '%s' is not hex", hex);
		buf[i] = (char)(hi << 4 | lo);
		if (buf[i] == '\0')
			usage_error("option --comm-hex: a process name cannot contain a 00 byte");
	}
	buf[len / 2] = '\0';
	set_comm(buf);
}

/* The calling thread's name as the kernel has it, in hex, for the output lines. */
static void comm_hex(char *out, size_t size)
{
	char name[COMM_MAX + 1] = "";
	size_t o = 0;

	if (prctl(PR_GET_NAME, (unsigned long)name, 0, 0, 0) != 0)
		die(errno, "prctl(PR_GET_NAME)");
	for (const char *p = name; *p && o + 3 <= size; p++)
		o += (size_t)snprintf(out + o, size - o, "%02x", (unsigned char)*p);
	out[o < size ? o : size - 1] = '\0';
}

static void sleep_ms(uint64_t ms)
{
	struct timespec ts = {
	    .tv_sec = (time_t)(ms / 1000),
	    .tv_nsec = (long)(ms % 1000) * 1000000L,
	};

	if (ms == 0)
		return;
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

static uint64_t now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000ULL + (uint64_t)ts.tv_nsec / 1000;
}

static uint64_t tv_us(const struct timeval *tv)
{
	return (uint64_t)tv->tv_sec * 1000000ULL + (uint64_t)tv->tv_usec;
}

/* Format an address for output; an IPv4-mapped IPv6 address is printed as plain IPv4. */
static void format_addr(const struct sockaddr_storage *ss, char *buf, size_t size, uint16_t *port)
{
	const void *src;
	int family = ss->ss_family;

	if (family == AF_INET) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;

		src = &sin->sin_addr;
		*port = ntohs(sin->sin_port);
	} else {
		const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;

		src = &sin6->sin6_addr;
		*port = ntohs(sin6->sin6_port);
		if (IN6_IS_ADDR_V4MAPPED(&sin6->sin6_addr)) {
			family = AF_INET;
			src = &sin6->sin6_addr.s6_addr[12];
		}
	}
	if (!inet_ntop(family, src, buf, (socklen_t)size))
		snprintf(buf, size, "?");
}

static pthread_t *start_threads(unsigned int n, void *(*fn)(void *), void *arg)
{
	pthread_t *tids = calloc(n ? n : 1, sizeof(*tids));
	int err;

	if (!tids)
		die(ENOMEM, "calloc");
	for (unsigned int i = 0; i < n; i++) {
		err = pthread_create(&tids[i], NULL, fn, arg);
		if (err)
			die(err, "pthread_create");
	}
	return tids;
}

static void join_threads(pthread_t *tids, unsigned int n)
{
	for (unsigned int i = 0; i < n; i++)
		pthread_join(tids[i], NULL);
	free(tids);
}

/* ---- server --------------------------------------------------------------------------- */

struct server {
	int fd;
	uint16_t port;
	uint64_t count; /* connections to accept; ignored when forever */
	bool forever;
	bool quiet;
	uint64_t hold_ms;
	const char *thread_comm; /* pair mode: name for each server thread */
	int stop_fd; /* forever mode: read end of a pipe that becomes readable on stop */
	atomic_bool stop;
	atomic_uint_fast64_t claimed;
	atomic_uint_fast64_t accepted;
	atomic_uint_fast64_t bytes;
};

static int listen_on(const struct addr *bind_addr, uint16_t port, uint16_t *actual_port)
{
	struct addr a = *bind_addr;
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	int one = 1, zero = 0, fd;
	char addr_text[INET6_ADDRSTRLEN];

	set_port(&a, port);
	fd = socket(a.ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		die(errno, "socket");
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0)
		die(errno, "setsockopt(SO_REUSEADDR)");
	if (a.ss.ss_family == AF_INET6 &&
	    IN6_IS_ADDR_UNSPECIFIED(&((struct sockaddr_in6 *)&a.ss)->sin6_addr) &&
	    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero)) != 0)
		die(errno, "setsockopt(IPV6_V6ONLY, 0)");
	if (bind(fd, (struct sockaddr *)&a.ss, a.len) != 0) {
		format_addr(&a.ss, addr_text, sizeof(addr_text), &port);
		die(errno, "bind to %s port %u", addr_text, port);
	}
	if (listen(fd, LISTEN_BACKLOG) != 0)
		die(errno, "listen");
	if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0)
		die(errno, "getsockname");
	format_addr(&ss, addr_text, sizeof(addr_text), actual_port);
	return fd;
}

/*
 * Read a connection to EOF and return the byte count. In forever mode also stop waiting when
 * the server is told to stop. A reset or other read error ends the connection early.
 */
static uint64_t drain(struct server *srv, int fd)
{
	char buf[IO_BUF_SIZE];
	uint64_t total = 0;

	for (;;) {
		ssize_t n;

		if (srv->stop_fd >= 0) {
			struct pollfd pfd[2] = {
			    {.fd = fd, .events = POLLIN},
			    {.fd = srv->stop_fd, .events = POLLIN},
			};

			if (poll(pfd, 2, -1) < 0) {
				if (errno == EINTR)
					continue;
				die(errno, "poll");
			}
			if (pfd[1].revents && !pfd[0].revents)
				return total;
		}
		n = recv(fd, buf, sizeof(buf), 0);
		if (n > 0) {
			total += (uint64_t)n;
			continue;
		}
		if (n == 0)
			return total;
		if (errno == EINTR)
			continue;
		if (errno != ECONNRESET)
			warn(errno, "recv");
		return total;
	}
}

static bool accept_error_is_transient(int err)
{
	/* accept(2): pending network errors are passed on by accept; treat them like EAGAIN. */
	switch (err) {
	case EINTR:
	case EAGAIN:
	case ECONNABORTED:
	case EPROTO:
	case ENETDOWN:
	case ENOPROTOOPT:
	case EHOSTDOWN:
	case ENONET:
	case EHOSTUNREACH:
	case EOPNOTSUPP:
	case ENETUNREACH:
	case EPERM: /* firewall rules */
		return true;
	default:
		return false;
	}
}

static void *server_worker(void *arg)
{
	struct server *srv = arg;

	if (srv->thread_comm)
		set_comm(srv->thread_comm);

	for (;;) {
		struct sockaddr_storage peer;
		socklen_t plen = sizeof(peer);
		char peer_text[INET6_ADDRSTRLEN];
		uint16_t peer_port;
		uint64_t bytes;
		int fd;

		if (atomic_load(&srv->stop))
			break;
		if (!srv->forever && atomic_fetch_add(&srv->claimed, 1) >= srv->count)
			break;

		for (;;) {
			fd = accept4(srv->fd, (struct sockaddr *)&peer, &plen, SOCK_CLOEXEC);
			if (fd >= 0)
				break;
			if (atomic_load(&srv->stop))
				return NULL;
			if (!accept_error_is_transient(errno))
				die(errno, "accept4");
			plen = sizeof(peer);
		}

		bytes = drain(srv, fd);
		sleep_ms(srv->hold_ms);
		close(fd);
		atomic_fetch_add(&srv->accepted, 1);
		atomic_fetch_add(&srv->bytes, bytes);

		if (!srv->quiet) {
			format_addr(&peer, peer_text, sizeof(peer_text), &peer_port);
			emit("{\"event\":\"accepted\",\"pid\":%d,\"local_port\":%u,"
			     "\"peer_addr\":\"%s\",\"peer_port\":%u,"
			     "\"bytes_received\":%" PRIu64 "}",
			     (int)self_pid, srv->port, peer_text, peer_port, bytes);
		}
	}
	return NULL;
}

/* Wake every server thread: accept() on a shut-down listening socket fails with EINVAL. */
static void server_stop(struct server *srv, int stop_wfd)
{
	atomic_store(&srv->stop, true);
	if (stop_wfd >= 0 && write(stop_wfd, "x", 1) < 0)
		warn(errno, "write to stop pipe");
	if (shutdown(srv->fd, SHUT_RDWR) != 0)
		warn(errno, "shutdown of the listening socket");
}

struct signal_waiter {
	struct server *srv;
	sigset_t set;
	int stop_wfd;
};

static void *signal_thread(void *arg)
{
	struct signal_waiter *sw = arg;
	int sig;

	while (sigwait(&sw->set, &sig) != 0)
		;
	server_stop(sw->srv, sw->stop_wfd);
	return NULL;
}

static int cmd_server(int argc, char **argv)
{
	const char *comm = NULL, *comm_hex_arg = NULL, *bind_text = "127.0.0.1";
	uint64_t port = 0, count = 1, hold_ms = 0, threads = 1;
	bool forever = false, quiet = false, count_seen = false;
	char name_hex[2 * COMM_MAX + 1];
	const struct opt opts[] = {
	    {"comm", OPT_COMM, 0, 0, &comm, NULL},
	    {"comm-hex", OPT_STR, 0, 0, &comm_hex_arg, NULL},
	    {"bind", OPT_ADDR, 0, 0, &bind_text, NULL},
	    {"port", OPT_U64, 0, 65535, &port, NULL},
	    {"count", OPT_U64, COUNT_MIN, COUNT_MAX, &count, &count_seen},
	    {"forever", OPT_FLAG, 0, 0, &forever, NULL},
	    {"hold-ms", OPT_U64, 0, HOLD_MS_MAX, &hold_ms, NULL},
	    {"threads", OPT_U64, 1, THREADS_MAX, &threads, NULL},
	    {"quiet", OPT_FLAG, 0, 0, &quiet, NULL},
	    {NULL, 0, 0, 0, NULL, NULL},
	};
	static struct server srv;
	static struct signal_waiter sw;
	struct addr bind_addr;
	pthread_t *tids = NULL;
	pthread_t sig_tid;
	int err;

	parse_opts(argc, argv, opts);
	if (forever && count_seen)
		usage_error("--count and --forever cannot be used together");
	set_comm_opts(comm, comm_hex_arg);
	comm_hex(name_hex, sizeof(name_hex));
	parse_addr(bind_text, &bind_addr);

	srv.count = count;
	srv.forever = forever;
	srv.quiet = quiet || threads > 1;
	srv.hold_ms = hold_ms;
	srv.stop_fd = -1;
	sw.stop_wfd = -1;

	if (forever) {
		int p[2];

		/*
		 * Block SIGINT and SIGTERM in every thread; one thread waits for them and then
		 * wakes the others through the listening socket and the stop pipe.
		 */
		sigemptyset(&sw.set);
		sigaddset(&sw.set, SIGINT);
		sigaddset(&sw.set, SIGTERM);
		err = pthread_sigmask(SIG_BLOCK, &sw.set, NULL);
		if (err)
			die(err, "pthread_sigmask");
		if (pipe2(p, O_CLOEXEC) != 0)
			die(errno, "pipe2");
		srv.stop_fd = p[0];
		sw.stop_wfd = p[1];
	}

	srv.fd = listen_on(&bind_addr, (uint16_t)port, &srv.port);
	emit("{\"event\":\"listening\",\"pid\":%d,\"port\":%u,\"comm_hex\":\"%s\"}", (int)self_pid,
	     srv.port, name_hex);

	if (forever) {
		sw.srv = &srv;
		err = pthread_create(&sig_tid, NULL, signal_thread, &sw);
		if (err)
			die(err, "pthread_create");
	}

	/* The main thread is worker 0, so with one thread pid == tid for every socket call. */
	if (threads > 1)
		tids = start_threads((unsigned int)threads - 1, server_worker, &srv);
	server_worker(&srv);
	if (tids)
		join_threads(tids, (unsigned int)threads - 1);
	/* In forever mode the workers only return once the signal thread has stopped them. */
	if (forever)
		pthread_join(sig_tid, NULL);

	emit("{\"event\":\"done\",\"pid\":%d,\"accepted\":%" PRIu64 ",\"bytes_received\":%" PRIu64
	     "}",
	     (int)self_pid, (uint64_t)atomic_load(&srv.accepted),
	     (uint64_t)atomic_load(&srv.bytes));
	return 0;
}

/* ---- client --------------------------------------------------------------------------- */

struct client {
	struct addr addr;
	uint64_t count;
	uint64_t send;
	uint64_t hold_ms;
	bool hold_stdin;
	bool quiet;
	const char *thread_comm; /* pair mode: name for each client thread */
	atomic_uint_fast64_t claimed;
	atomic_uint_fast64_t connected;
	atomic_uint_fast64_t failed;
	atomic_uint_fast64_t bytes_sent;
};

static char send_buf[IO_BUF_SIZE];

/* Send up to len bytes, handling partial writes; returns the bytes actually sent. */
static uint64_t send_all(int fd, uint64_t len)
{
	uint64_t sent = 0;

	while (sent < len) {
		uint64_t left = len - sent;
		size_t chunk = left < sizeof(send_buf) ? (size_t)left : sizeof(send_buf);
		ssize_t n = send(fd, send_buf, chunk, MSG_NOSIGNAL);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			warn(errno, "send (%" PRIu64 " of %" PRIu64 " bytes sent)", sent, len);
			break;
		}
		sent += (uint64_t)n;
	}
	return sent;
}

static pthread_once_t stdin_eof_once = PTHREAD_ONCE_INIT;

/* Read standard input until EOF (or an error); the first caller reads, the others wait for it. */
static void read_stdin_to_eof(void)
{
	char buf[256];
	ssize_t n;

	do
		n = read(STDIN_FILENO, buf, sizeof(buf));
	while (n > 0 || (n < 0 && errno == EINTR));
}

static void *client_worker(void *arg)
{
	struct client *cl = arg;

	if (cl->thread_comm)
		set_comm(cl->thread_comm);

	while (atomic_fetch_add(&cl->claimed, 1) < cl->count) {
		struct sockaddr_storage local;
		socklen_t llen = sizeof(local);
		char local_text[INET6_ADDRSTRLEN];
		uint16_t local_port;
		uint64_t sent;
		int fd, rc, err;

		fd = socket(cl->addr.ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd < 0)
			die(errno, "socket");
		do
			rc = connect(fd, (struct sockaddr *)&cl->addr.ss, cl->addr.len);
		while (rc != 0 && errno == EINTR);

		if (rc != 0) {
			err = errno;
			close(fd);
			atomic_fetch_add(&cl->failed, 1);
			if (!cl->quiet) {
				char text[256];

				json_escape(text, sizeof(text), strerror(err));
				emit("{\"event\":\"failed\",\"pid\":%d,\"errno\":%d,"
				     "\"error\":\"%s\"}",
				     (int)self_pid, err, text);
			}
			continue;
		}

		if (getsockname(fd, (struct sockaddr *)&local, &llen) != 0)
			die(errno, "getsockname");
		sent = send_all(fd, cl->send);
		atomic_fetch_add(&cl->connected, 1);
		atomic_fetch_add(&cl->bytes_sent, sent);

		/* printed before the hold, so a caller can act while the connection is open */
		if (!cl->quiet) {
			format_addr(&local, local_text, sizeof(local_text), &local_port);
			emit("{\"event\":\"connected\",\"pid\":%d,\"local_addr\":\"%s\","
			     "\"local_port\":%u,\"bytes_sent\":%" PRIu64 "}",
			     (int)self_pid, local_text, local_port, sent);
		}
		sleep_ms(cl->hold_ms);
		if (cl->hold_stdin)
			pthread_once(&stdin_eof_once, read_stdin_to_eof);
		close(fd);
	}
	return NULL;
}

static void usage_times(uint64_t *user_us, uint64_t *sys_us)
{
	struct rusage ru;

	if (getrusage(RUSAGE_SELF, &ru) != 0)
		die(errno, "getrusage");
	*user_us = tv_us(&ru.ru_utime);
	*sys_us = tv_us(&ru.ru_stime);
}

static int cmd_client(int argc, char **argv)
{
	const char *comm = NULL, *comm_hex_arg = NULL, *addr_text = NULL;
	uint64_t port = 0, count = 1, send = 0, hold_ms = 0, threads = 1;
	bool quiet = false, port_seen = false, hold_stdin = false;
	char name_hex[2 * COMM_MAX + 1];
	const struct opt opts[] = {
	    {"comm", OPT_COMM, 0, 0, &comm, NULL},
	    {"comm-hex", OPT_STR, 0, 0, &comm_hex_arg, NULL},
	    {"hold-stdin", OPT_FLAG, 0, 0, &hold_stdin, NULL},
	    {"addr", OPT_ADDR, 0, 0, &addr_text, NULL},
	    {"port", OPT_U64, 1, 65535, &port, &port_seen},
	    {"count", OPT_U64, COUNT_MIN, COUNT_MAX, &count, NULL},
	    {"send", OPT_U64, 0, SEND_MAX, &send, NULL},
	    {"hold-ms", OPT_U64, 0, HOLD_MS_MAX, &hold_ms, NULL},
	    {"threads", OPT_U64, 1, THREADS_MAX, &threads, NULL},
	    {"quiet", OPT_FLAG, 0, 0, &quiet, NULL},
	    {NULL, 0, 0, 0, NULL, NULL},
	};
	static struct client cl;
	pthread_t *tids = NULL;
	uint64_t start, wall, user_us, sys_us;

	parse_opts(argc, argv, opts);
	if (!addr_text)
		usage_error("client: --addr is required");
	if (!port_seen)
		usage_error("client: --port is required");
	set_comm_opts(comm, comm_hex_arg);
	comm_hex(name_hex, sizeof(name_hex));

	start = now_us();
	parse_addr(addr_text, &cl.addr);
	set_port(&cl.addr, (uint16_t)port);
	cl.count = count;
	cl.send = send;
	cl.hold_ms = hold_ms;
	cl.hold_stdin = hold_stdin;
	cl.quiet = quiet || threads > 1;
	memset(send_buf, 'x', sizeof(send_buf));

	/* The main thread is worker 0, so with one thread pid == tid for every socket call. */
	if (threads > 1)
		tids = start_threads((unsigned int)threads - 1, client_worker, &cl);
	client_worker(&cl);
	if (tids)
		join_threads(tids, (unsigned int)threads - 1);

	wall = now_us() - start;
	usage_times(&user_us, &sys_us);
	emit("{\"event\":\"done\",\"pid\":%d,\"connected\":%" PRIu64 ",\"failed\":%" PRIu64
	     ",\"cpu_user_us\":%" PRIu64 ",\"cpu_sys_us\":%" PRIu64 ",\"wall_us\":%" PRIu64
	     ",\"comm_hex\":\"%s\"}",
	     (int)self_pid, (uint64_t)atomic_load(&cl.connected), (uint64_t)atomic_load(&cl.failed),
	     user_us, sys_us, wall, name_hex);
	return 0;
}

/* ---- pair ----------------------------------------------------------------------------- */

static int cmd_pair(int argc, char **argv)
{
	const char *comm = NULL, *comm_server = NULL, *comm_client = NULL, *bind_text = "127.0.0.1";
	uint64_t count = 0, send = 0, threads = 1;
	bool count_seen = false;
	const struct opt opts[] = {
	    {"comm", OPT_COMM, 0, 0, &comm, NULL},
	    {"comm-server", OPT_COMM, 0, 0, &comm_server, NULL},
	    {"comm-client", OPT_COMM, 0, 0, &comm_client, NULL},
	    {"bind", OPT_ADDR, 0, 0, &bind_text, NULL},
	    {"count", OPT_U64, COUNT_MIN, COUNT_MAX, &count, &count_seen},
	    {"threads", OPT_U64, 1, THREADS_MAX, &threads, NULL},
	    {"send", OPT_U64, 0, SEND_MAX, &send, NULL},
	    {NULL, 0, 0, 0, NULL, NULL},
	};
	static struct server srv;
	static struct client cl;
	struct addr bind_addr;
	pthread_t *server_tids, *client_tids;
	uint64_t start, wall, user_us, sys_us, connected;

	parse_opts(argc, argv, opts);
	if (!count_seen)
		usage_error("pair: --count is required");
	set_comm(comm);

	start = now_us();
	parse_addr(bind_text, &bind_addr);
	srv.count = count;
	srv.quiet = true;
	srv.stop_fd = -1;
	srv.thread_comm = comm_server;
	srv.fd = listen_on(&bind_addr, 0, &srv.port);
	emit("{\"event\":\"listening\",\"pid\":%d,\"port\":%u}", (int)self_pid, srv.port);

	/* Connect to the bound address, or to loopback when bound to the unspecified address. */
	cl.addr = bind_addr;
	if (cl.addr.ss.ss_family == AF_INET) {
		struct sockaddr_in *sin = (struct sockaddr_in *)&cl.addr.ss;

		if (sin->sin_addr.s_addr == htonl(INADDR_ANY))
			sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	} else {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&cl.addr.ss;

		if (IN6_IS_ADDR_UNSPECIFIED(&sin6->sin6_addr))
			sin6->sin6_addr = in6addr_loopback;
	}
	set_port(&cl.addr, srv.port);
	cl.count = count;
	cl.send = send;
	cl.quiet = true;
	cl.thread_comm = comm_client;
	memset(send_buf, 'x', sizeof(send_buf));

	server_tids = start_threads((unsigned int)threads, server_worker, &srv);
	client_tids = start_threads((unsigned int)threads, client_worker, &cl);
	join_threads(client_tids, (unsigned int)threads);

	/*
	 * If some connects failed the server will never see count connections: wait until it
	 * has accepted every connection that was made, then stop it.
	 */
	connected = atomic_load(&cl.connected);
	if (connected < count) {
		while (atomic_load(&srv.accepted) < connected)
			sleep_ms(1);
		server_stop(&srv, -1);
	}
	join_threads(server_tids, (unsigned int)threads);

	wall = now_us() - start;
	usage_times(&user_us, &sys_us);
	emit("{\"event\":\"done\",\"pid\":%d,\"accepted\":%" PRIu64 ",\"connected\":%" PRIu64
	     ",\"failed\":%" PRIu64 ",\"bytes_received\":%" PRIu64 ",\"bytes_sent\":%" PRIu64
	     ",\"cpu_user_us\":%" PRIu64 ",\"cpu_sys_us\":%" PRIu64 ",\"wall_us\":%" PRIu64 "}",
	     (int)self_pid, (uint64_t)atomic_load(&srv.accepted), connected,
	     (uint64_t)atomic_load(&cl.failed), (uint64_t)atomic_load(&srv.bytes),
	     (uint64_t)atomic_load(&cl.bytes_sent), user_us, sys_us, wall);
	return 0;
}

int main(int argc, char **argv)
{
	const char *cmd;

	self_pid = getpid();
	if (argc < 2)
		usage_error("missing command (server, client or pair)");
	cmd = argv[1];
	if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
		fputs(usage_text, stdout);
		return 0;
	}
	if (strcmp(cmd, "server") == 0)
		return cmd_server(argc - 2, argv + 2);
	if (strcmp(cmd, "client") == 0)
		return cmd_client(argc - 2, argv + 2);
	if (strcmp(cmd, "pair") == 0)
		return cmd_pair(argc - 2, argv + 2);
	usage_error("unknown command '%s'", cmd);
}
