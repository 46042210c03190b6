/* File opens at a controlled rate: open(PATH) + close in a loop, for the
 * `open` events of agentsight's process collector. Commands on stdin, one
 * JSON line each on stdout:
 *   rate R SECONDS   R opens/s for SECONDS    -> {"calls":..., "seconds":...}
 *   count N          N opens as fast as it can -> {"calls": N, "seconds":...}
 * A PATH that does not exist makes each event one syscall (the open fails),
 * as when an interpreter searches its import path.
 * Built by bench/capacity.py with: gcc -O2 open_flood.c */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: open_flood PATH\n");
		return 2;
	}
	const char *path = argv[1];
	printf("{\"pid\": %d}\n", getpid());
	fflush(stdout);
	char line[256];
	while (fgets(line, sizeof(line), stdin)) {
		double rate, secs;
		long n;
		if (sscanf(line, "count %ld", &n) == 1) {
			double t0 = now();
			for (long i = 0; i < n; i++) {
				int fd = open(path, O_RDONLY);
				if (fd >= 0)
					close(fd);
			}
			printf("{\"calls\": %ld, \"seconds\": %.6f}\n", n, now() - t0);
		} else if (sscanf(line, "rate %lf %lf", &rate, &secs) == 2) {
			double t0 = now(), el;
			long calls = 0;
			while ((el = now() - t0) < secs) {
				long due = (long)(rate * el) + 1;
				if (calls >= due) {
					usleep(50);
					continue;
				}
				for (int k = 0; k < 64 && calls < due; k++, calls++) {
					int fd = open(path, O_RDONLY);
					if (fd >= 0)
						close(fd);
				}
			}
			printf("{\"calls\": %ld, \"seconds\": %.6f}\n", calls, now() - t0);
		} else if (!strncmp(line, "quit", 4)) {
			break;
		}
		fflush(stdout);
	}
	return 0;
}
