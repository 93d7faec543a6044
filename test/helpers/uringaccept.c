// SPDX-License-Identifier: Apache-2.0
/*
 * uringaccept: a TCP server that accepts through io_uring, never through accept(2), for the
 * tcptracer-exporter tests of accept attribution.
 *
 *   uringaccept [--comm NAME] [--bind ADDR] [--port P] --count N [--async]
 *
 * Listens on ADDR:P (default 127.0.0.1, port 0: any), then accepts exactly N connections with
 * IORING_OP_ACCEPT, reads each to EOF and closes it. --async sets IOSQE_ASYNC, so the kernel
 * runs each accept in an io-wq worker thread ("iou-wrk-PID") instead of the submitting task.
 *
 * Prints one JSON object per line on stdout: {"event":"listening","pid":..,"port":..} once,
 * then {"event":"accepted","fd":..} per connection. Usage errors exit 2, runtime errors 1.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <liburing.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

#define PROG "uringaccept"

static void __attribute__((noreturn)) die(int err, const char *what)
{
	fprintf(stderr, PROG ": %s: %s\n", what, strerror(err));
	exit(1);
}

static void __attribute__((noreturn)) usage(const char *msg)
{
	fprintf(stderr,
		PROG ": %s\nUsage: " PROG
		     " [--comm NAME] [--bind ADDR] [--port P] --count N [--async]\n",
		msg);
	exit(2);
}

static unsigned long parse_num(const char *s, unsigned long max, const char *name)
{
	char *end;
	unsigned long v;

	errno = 0;
	v = strtoul(s, &end, 10);
	if (errno || end == s || *end || v > max) {
		fprintf(stderr, PROG ": %s must be an integer from 0 to %lu, got \"%s\"\n", name,
			max, s);
		exit(2);
	}
	return v;
}

/* A listening socket on addr:port, IPv4 or IPv6 by the address's form. */
static int listen_on(const char *addr, unsigned short port, unsigned short *bound)
{
	struct sockaddr_storage ss = {0};
	socklen_t len;
	int fd, one = 1;

	if (strchr(addr, ':')) {
		struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;

		a->sin6_family = AF_INET6;
		a->sin6_port = htons(port);
		if (inet_pton(AF_INET6, addr, &a->sin6_addr) != 1)
			usage("--bind: not an IPv6 address");
		len = sizeof(*a);
	} else {
		struct sockaddr_in *a = (struct sockaddr_in *)&ss;

		a->sin_family = AF_INET;
		a->sin_port = htons(port);
		if (inet_pton(AF_INET, addr, &a->sin_addr) != 1)
			usage("--bind: not an IPv4 address");
		len = sizeof(*a);
	}
	fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		die(errno, "socket");
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)))
		die(errno, "setsockopt");
	if (bind(fd, (struct sockaddr *)&ss, len))
		die(errno, "bind");
	if (listen(fd, 1024))
		die(errno, "listen");
	len = sizeof(ss);
	if (getsockname(fd, (struct sockaddr *)&ss, &len))
		die(errno, "getsockname");
	*bound = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
						: ((struct sockaddr_in *)&ss)->sin_port);
	return fd;
}

/* Read to EOF (or an error such as a reset), then close. */
static void drain_and_close(int fd)
{
	char buf[16384];

	while (read(fd, buf, sizeof(buf)) > 0)
		;
	close(fd);
}

int main(int argc, char **argv)
{
	const char *comm = NULL, *addr = "127.0.0.1";
	unsigned long port = 0, count = 0;
	bool async = false, have_count = false;
	struct io_uring ring;
	unsigned short bound;
	int lfd, err;

	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;

		if (!strcmp(a, "--async")) {
			async = true;
			continue;
		}
		if (!v)
			usage("an option is missing its value");
		if (!strcmp(a, "--comm"))
			comm = v;
		else if (!strcmp(a, "--bind"))
			addr = v;
		else if (!strcmp(a, "--port"))
			port = parse_num(v, 65535, "--port");
		else if (!strcmp(a, "--count")) {
			count = parse_num(v, 10000000, "--count");
			have_count = true;
		} else
			usage("unknown option");
		i++;
	}
	if (!have_count || count == 0)
		usage("--count N (at least 1) is required");
	if (comm && prctl(PR_SET_NAME, comm, 0, 0, 0))
		die(errno, "prctl(PR_SET_NAME)");

	lfd = listen_on(addr, (unsigned short)port, &bound);
	err = io_uring_queue_init(8, &ring, 0);
	if (err)
		die(-err, "io_uring_queue_init");
	printf("{\"event\":\"listening\",\"pid\":%d,\"port\":%u,\"async\":%s}\n", getpid(), bound,
	       async ? "true" : "false");
	fflush(stdout);

	for (unsigned long i = 0; i < count; i++) {
		struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
		struct io_uring_cqe *cqe;
		int fd;

		io_uring_prep_accept(sqe, lfd, NULL, NULL, SOCK_CLOEXEC);
		if (async)
			io_uring_sqe_set_flags(sqe, IOSQE_ASYNC);
		err = io_uring_submit(&ring);
		if (err != 1)
			die(err < 0 ? -err : EIO, "io_uring_submit");
		do
			err = io_uring_wait_cqe(&ring, &cqe);
		while (err == -EINTR);
		if (err)
			die(-err, "io_uring_wait_cqe");
		fd = cqe->res;
		io_uring_cqe_seen(&ring, cqe);
		if (fd < 0)
			die(-fd, "IORING_OP_ACCEPT");
		printf("{\"event\":\"accepted\",\"fd\":%d}\n", fd);
		fflush(stdout);
		drain_and_close(fd);
	}
	io_uring_queue_exit(&ring);
	close(lfd);
	return 0;
}
