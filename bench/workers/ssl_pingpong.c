/* TLS calls through the system libssl, in one process: a client and a server
 * SSL joined by a memory BIO pair, so no syscall is in the loop. Each round
 * is one SSL_write (client) and one SSL_read (server) of SIZE bytes: two
 * probed calls. Commands on stdin, one JSON line each on stdout:
 *   calls N SIZE          N rounds as fast as possible -> {"ns":..., "calls":2N}
 *   rate R SECONDS SIZE   R calls/s for SECONDS        -> {"calls":..., "seconds":...}
 * Built by bench/percall.py with: gcc -O2 ssl_pingpong.c -lssl -lcrypto */
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static SSL *cli, *srv;
static unsigned char wbuf[16384], rbuf[16384];

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
	fprintf(stderr, "ssl_pingpong: %s\n", what);
	ERR_print_errors_fp(stderr);
	exit(1);
}

static void round_trip(int size)
{
	if (SSL_write(cli, wbuf, size) != size)
		die("SSL_write");
	int got = 0;
	while (got < size) {
		int n = SSL_read(srv, rbuf, size - got);
		if (n <= 0)
			die("SSL_read");
		got += n;
	}
}

int main(int argc, char **argv)
{
	if (argc != 3)
		die("usage: ssl_pingpong CERT KEY");
	SSL_CTX *sctx = SSL_CTX_new(TLS_server_method());
	SSL_CTX *cctx = SSL_CTX_new(TLS_client_method());
	if (!sctx || !cctx || SSL_CTX_use_certificate_chain_file(sctx, argv[1]) != 1 ||
	    SSL_CTX_use_PrivateKey_file(sctx, argv[2], SSL_FILETYPE_PEM) != 1)
		die("context");
	SSL_CTX_set_num_tickets(sctx, 0); /* nothing left unread towards the client */
	SSL_CTX_set_verify(cctx, SSL_VERIFY_NONE, NULL);
	cli = SSL_new(cctx);
	srv = SSL_new(sctx);
	BIO *a, *b;
	if (!BIO_new_bio_pair(&a, 1 << 17, &b, 1 << 17))
		die("BIO pair");
	SSL_set_bio(cli, a, a);
	SSL_set_bio(srv, b, b);
	SSL_set_connect_state(cli);
	SSL_set_accept_state(srv);
	int done_c = 0, done_s = 0;
	for (int i = 0; i < 100 && !(done_c && done_s); i++) {
		if (!done_c)
			done_c = SSL_do_handshake(cli) == 1;
		if (!done_s)
			done_s = SSL_do_handshake(srv) == 1;
	}
	if (!done_c || !done_s)
		die("handshake");
	/* LLM-like text (SSE frames of JSON): what the consumer escapes and encodes. */
	const char *frame = "data: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"hello\"}}\n\n";
	for (size_t i = 0, k = strlen(frame); i < sizeof(wbuf); i++)
		wbuf[i] = frame[i % k];
	printf("{\"pid\": %d}\n", getpid());
	fflush(stdout);

	char line[256];
	while (fgets(line, sizeof(line), stdin)) {
		long n;
		double rate, secs;
		int size;
		if (sscanf(line, "calls %ld %d", &n, &size) == 2) {
			if (size < 1 || size > 16384)
				die("size");
			double t = now();
			for (long i = 0; i < n; i++)
				round_trip(size);
			printf("{\"ns\": %.0f, \"calls\": %ld}\n", (now() - t) * 1e9, 2 * n);
		} else if (sscanf(line, "rate %lf %lf %d", &rate, &secs, &size) == 3) {
			if (size < 1 || size > 16384)
				die("size");
			/* Catch up in bursts of at most 64 rounds; sleep when ahead. */
			double t0 = now(), el;
			long calls = 0;
			while ((el = now() - t0) < secs) {
				long due = (long)(rate * el) + 2;
				if (calls >= due) {
					usleep(50);
					continue;
				}
				for (int k = 0; k < 64 && calls < due; k++, calls += 2)
					round_trip(size);
			}
			printf("{\"calls\": %ld, \"seconds\": %.6f}\n", calls, now() - t0);
		} else if (!strncmp(line, "quit", 4)) {
			break;
		}
		fflush(stdout);
	}
	return 0;
}
