// SPDX-License-Identifier: Apache-2.0
/*
 * sysloop: measure the cost of a trivial system call.
 *
 *   sysloop N
 *
 * Calls syscall(SYS_getppid) N times and prints one JSON line to stdout:
 *   {"calls":N,"cpu_user_us":U,"cpu_sys_us":S,"wall_ns":W}
 * U and S are this process's getrusage(RUSAGE_SELF) times for the whole run, W the
 * CLOCK_MONOTONIC time of the loop alone. The raw syscall() bypasses any libc caching,
 * so every iteration enters the kernel; attaching any syscalls:* tracepoint makes
 * every one of them take the slow path, which is what this measures.
 *
 * Exit status: 0 on success, 1 on a runtime error, 2 on a usage error.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define PROG	  "sysloop"
#define CALLS_MAX 10000000000ULL

static void usage(void)
{
	fprintf(stderr,
		"Usage: " PROG " N\n"
		"  call getppid(2) N times (1..%llu) and print CPU and wall time as JSON\n",
		CALLS_MAX);
	exit(2);
}

static uint64_t tv_us(const struct timeval *tv)
{
	return (uint64_t)tv->tv_sec * 1000000 + (uint64_t)tv->tv_usec;
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000 + (uint64_t)ts.tv_nsec;
}

int main(int argc, char **argv)
{
	unsigned long long n;
	struct rusage ru;
	uint64_t start, wall, i;
	char *end;

	if (argc != 2 || argv[1][0] < '0' || argv[1][0] > '9')
		usage();
	errno = 0;
	n = strtoull(argv[1], &end, 10);
	if (errno || *end || n < 1 || n > CALLS_MAX)
		usage();

	start = now_ns();
	for (i = 0; i < n; i++)
		syscall(SYS_getppid);
	wall = now_ns() - start;

	if (getrusage(RUSAGE_SELF, &ru) != 0) {
		fprintf(stderr, PROG ": getrusage: %s\n", strerror(errno));
		return 1;
	}
	printf("{\"calls\":%llu,\"cpu_user_us\":%" PRIu64 ",\"cpu_sys_us\":%" PRIu64
	       ",\"wall_ns\":%" PRIu64 "}\n",
	       n, tv_us(&ru.ru_utime), tv_us(&ru.ru_stime), wall);
	return fflush(stdout) == 0 ? 0 : 1;
}
