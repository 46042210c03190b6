/* Syscalls in a tight loop, for what a tracer adds to the syscalls of every
 * process. Commands on stdin, one JSON line each on stdout:
 *     open N   N times open(2) of /etc/hostname and close(2) -> {"ns": ..., "calls": N}
 *     read N   N times a one-byte write(2) and read(2) over a socket pair
 *
 *     bench/workers/syscall_loop
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1000000000LL + t.tv_nsec;
}

int main(void)
{
	int sv[2];
	char line[64], buf[64];

	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv)) {
		perror("socketpair");
		return 1;
	}
	printf("{\"pid\": %d}\n", getpid());
	fflush(stdout);
	while (fgets(line, sizeof(line), stdin)) {
		char what[16];
		long n;

		if (sscanf(line, "%15s %ld", what, &n) != 2 || n <= 0) {
			printf("{\"error\": \"bad command\"}\n");
			fflush(stdout);
			continue;
		}
		long long t0 = now_ns();

		for (long i = 0; i < n; i++) {
			if (!strcmp(what, "open")) {
				int fd = open("/etc/hostname", O_RDONLY);

				if (fd >= 0)
					close(fd);
			} else if (write(sv[0], "x", 1) != 1 || read(sv[1], buf, sizeof(buf)) != 1) {
				perror("socket pair");
				return 1;
			}
		}
		printf("{\"ns\": %lld, \"calls\": %ld}\n", now_ns() - t0, n);
		fflush(stdout);
	}
	return 0;
}
