// SPDX-License-Identifier: Apache-2.0
/*
 * commstorm: a process that keeps renaming itself, for the cardinality tests of tcptracer-exporter.
 *
 *   commstorm --port P --count N [--addr A] [--addrs K] [--prefix S] [--first I] [--threads T]
 *
 * For every i from I to I + N - 1 a thread renames itself to S followed by i in decimal
 * (prctl PR_SET_NAME) and makes one TCP connection under that name: connect, then close. So
 * the tracer sees N distinct process names, one connection each. The connections go to A, A+1,
 * ... A+K-1 (IPv4, consecutive addresses) port P in turn, so that TIME_WAIT sockets of one
 * destination do not use up the ephemeral ports. A server must accept them (tcpload server).
 *
 * Prints one JSON line at the end:
 *   {"event":"done","pid":P,"connected":C,"failed":F,"first_errno":E,"first":"NAME",
 *    "last":"NAME","cpu_user_us":U,"cpu_sys_us":S,"wall_us":W}
 * Exit status: 0 (also when some connects failed), 1 on a runtime error, 2 on a usage error.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <pthread.h>
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
#include <time.h>
#include <unistd.h>

#define PROG	    "commstorm"
#define COMM_MAX    15 /* TASK_COMM_LEN - 1 */
#define COUNT_MAX   100000000ULL
#define THREADS_MAX 256ULL
#define ADDRS_MAX   65536ULL

static const char usage_text[] =
    "Usage: " PROG " --port P --count N [--addr A] [--addrs K] [--prefix S] [--first I]\n"
    "                 [--threads T]\n"
    "\n"
    "Rename a thread to S<i> for each i in I..I+N-1 and make one TCP connection under each\n"
    "name (connect, then close), to A..A+K-1 port P in turn.\n"
    "\n"
    "  --port P      1..65535 (required)\n"
    "  --count N     names, and connections, 1..100000000 (required)\n"
    "  --addr A      first IPv4 address to connect to (default 127.0.0.1)\n"
    "  --addrs K     consecutive addresses to use from A, 1..65536 (default 1)\n"
    "  --prefix S    name prefix (default cs); S plus the largest index must fit in 15 bytes\n"
    "  --first I     first index (default 0)\n"
    "  --threads T   threads, 1..256 (default 1); each takes the next index\n";

struct storm {
	struct in_addr base;
	uint32_t addrs;
	uint16_t port;
	const char *prefix;
	uint64_t first, count;
	atomic_uint_fast64_t next;
	atomic_uint_fast64_t connected;
	atomic_uint_fast64_t failed;
	atomic_int first_errno;
};

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

static void __attribute__((noreturn)) die(int err, const char *what)
{
	fprintf(stderr, PROG ": %s: %s\n", what, strerror(err));
	exit(1);
}

static uint64_t parse_u64(const char *name, const char *s, uint64_t min, uint64_t max)
{
	unsigned long long v;
	char *end;

	if (*s < '0' || *s > '9')
		usage_error("option --%s: '%s' is not a non-negative integer", name, s);
	errno = 0;
	v = strtoull(s, &end, 10);
	if (*end != '\0' || errno == ERANGE || v < min || v > max)
		usage_error("option --%s: '%s' is not an integer in %" PRIu64 "..%" PRIu64, name, s,
			    min, max);
	return v;
}

static uint64_t now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000ULL + (uint64_t)ts.tv_nsec / 1000;
}

static void name_of(const struct storm *st, uint64_t i, char *buf, size_t size)
{
	snprintf(buf, size, "%s%" PRIu64, st->prefix, i);
}

static void *worker(void *arg)
{
	struct storm *st = arg;
	char name[COMM_MAX + 1];

	for (;;) {
		uint64_t n = atomic_fetch_add(&st->next, 1);
		struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(st->port)};
		int fd, rc;

		if (n >= st->count)
			break;
		/* rename, then connect: the tracer captures the name at connect() */
		name_of(st, st->first + n, name, sizeof(name));
		if (prctl(PR_SET_NAME, (unsigned long)name, 0, 0, 0) != 0)
			die(errno, "prctl(PR_SET_NAME)");
		sin.sin_addr.s_addr = htonl(ntohl(st->base.s_addr) + (uint32_t)(n % st->addrs));
		fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd < 0)
			die(errno, "socket");
		do
			rc = connect(fd, (struct sockaddr *)&sin, sizeof(sin));
		while (rc != 0 && errno == EINTR);
		if (rc == 0) {
			atomic_fetch_add(&st->connected, 1);
		} else {
			int expected = 0;

			atomic_fetch_add(&st->failed, 1);
			atomic_compare_exchange_strong(&st->first_errno, &expected, errno);
		}
		close(fd);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	static struct storm st = {.addrs = 1, .prefix = "cs"};
	const char *addr = "127.0.0.1";
	uint64_t threads = 1, port = 0, count = 0, addrs = 1;
	char first[COMM_MAX + 1], last[COMM_MAX + 1];
	uint64_t start, wall, user_us, sys_us;
	struct rusage ru;
	pthread_t *tids;

	for (int i = 1; i < argc; i++) {
		const char *opt = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;

		if (strcmp(opt, "--help") == 0 || strcmp(opt, "-h") == 0) {
			fputs(usage_text, stdout);
			return 0;
		}
		if (!val)
			usage_error("option %s needs a value (or is unknown)", opt);
		i++;
		if (strcmp(opt, "--port") == 0)
			port = parse_u64("port", val, 1, 65535);
		else if (strcmp(opt, "--count") == 0)
			count = parse_u64("count", val, 1, COUNT_MAX);
		else if (strcmp(opt, "--addr") == 0)
			addr = val;
		else if (strcmp(opt, "--addrs") == 0)
			addrs = parse_u64("addrs", val, 1, ADDRS_MAX);
		else if (strcmp(opt, "--prefix") == 0)
			st.prefix = val;
		else if (strcmp(opt, "--first") == 0)
			st.first = parse_u64("first", val, 0, COUNT_MAX);
		else if (strcmp(opt, "--threads") == 0)
			threads = parse_u64("threads", val, 1, THREADS_MAX);
		else
			usage_error("unknown option '%s'", opt);
	}
	if (!port || !count)
		usage_error("--port and --count are required");
	for (const char *c = st.prefix; *c; c++)
		if (*c <= ' ' || *c > '~' || *c == '"' || *c == '\\')
			usage_error("--prefix '%s': printable ASCII without quotes or backslashes",
				    st.prefix);
	if (inet_pton(AF_INET, addr, &st.base) != 1)
		usage_error("option --addr: '%s' is not an IPv4 address", addr);
	st.port = (uint16_t)port;
	st.count = count;
	st.addrs = (uint32_t)addrs;
	name_of(&st, st.first, first, sizeof(first));
	if (snprintf(last, sizeof(last), "%s%" PRIu64, st.prefix, st.first + count - 1) > COMM_MAX)
		usage_error("--prefix '%s' with index %" PRIu64 " is longer than %d bytes",
			    st.prefix, st.first + count - 1, COMM_MAX);

	start = now_us();
	tids = calloc(threads, sizeof(*tids));
	if (!tids)
		die(ENOMEM, "calloc");
	for (uint64_t t = 0; t < threads; t++) {
		int err = pthread_create(&tids[t], NULL, worker, &st);

		if (err)
			die(err, "pthread_create");
	}
	for (uint64_t t = 0; t < threads; t++)
		pthread_join(tids[t], NULL);
	free(tids);
	wall = now_us() - start;
	if (getrusage(RUSAGE_SELF, &ru) != 0)
		die(errno, "getrusage");
	user_us = (uint64_t)ru.ru_utime.tv_sec * 1000000 + (uint64_t)ru.ru_utime.tv_usec;
	sys_us = (uint64_t)ru.ru_stime.tv_sec * 1000000 + (uint64_t)ru.ru_stime.tv_usec;

	printf("{\"event\":\"done\",\"pid\":%d,\"connected\":%" PRIu64 ",\"failed\":%" PRIu64
	       ",\"first_errno\":%d,\"first\":\"%s\",\"last\":\"%s\",\"cpu_user_us\":%" PRIu64
	       ",\"cpu_sys_us\":%" PRIu64 ",\"wall_us\":%" PRIu64 "}\n",
	       (int)getpid(), (uint64_t)atomic_load(&st.connected),
	       (uint64_t)atomic_load(&st.failed), atomic_load(&st.first_errno), first, last,
	       user_us, sys_us, wall);
	return 0;
}
