/* Calls the functions of the BoringSSL-shaped ssl_lib.cc from another
 * translation unit, as a TLS client would: they keep direct callers. Built
 * without link-time optimisation, like code in another language, so they
 * stay functions of their own whatever the rest is built with. */
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct ssl_st;
struct method_st {
  int is_dtls;
  int (*ssl_new)(struct ssl_st *);
  void (*ssl_free)(struct ssl_st *);
  int (*read_app_data)(struct ssl_st *, const unsigned char **, size_t *);
  int (*write_app_data)(struct ssl_st *, bool *, size_t *, const unsigned char *, size_t);
};
struct s3_st {
  const unsigned char *pending;
  size_t pending_len;
  int handshake_done;
  int write_shutdown;
};
struct ssl_st {
  const struct method_st *method;
  void *quic_method;
  int (*do_handshake)(struct ssl_st *);
  struct s3_st *s3;
};

int SSL_do_handshake(struct ssl_st *ssl);
int SSL_read(struct ssl_st *ssl, void *buf, int num);
int SSL_peek(struct ssl_st *ssl, void *buf, int num);
int SSL_write(struct ssl_st *ssl, const void *buf, int num);
int SSL_shutdown(struct ssl_st *ssl);
#if SCRAMBLE == 1
int SSL_write_again(struct ssl_st *ssl, const void *buf, int num);
#endif
void CRYPTO_report_malloc_failure(void);

static const unsigned char kReply[] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

static int handshake(struct ssl_st *ssl) { (void)ssl; return 1; }

static int read_app_data(struct ssl_st *ssl, const unsigned char **data, size_t *len) {
  (void)ssl;
  *data = kReply;
  *len = sizeof(kReply) - 1;
  return 1;
}

static int write_app_data(struct ssl_st *ssl, bool *needs_handshake, size_t *written, const unsigned char *buf,
                          size_t len) {
  (void)ssl;
  (void)buf;
  *needs_handshake = false;
  *written = len;
  return 1;
}

int main(int argc, char **argv) {
  static const struct method_st method = {0, NULL, NULL, read_app_data, write_app_data};
  struct s3_st s3 = {NULL, 0, 0, 0};
  struct ssl_st ssl = {&method, NULL, handshake, &s3};
  const char *request = argc > 1 ? argv[1] : "GET / HTTP/1.1\r\n\r\n";
  char buf[256];
  if (SSL_do_handshake(&ssl) != 1 || SSL_write(&ssl, request, (int)strlen(request)) <= 0) {
    CRYPTO_report_malloc_failure();
    return 1;
  }
#if SCRAMBLE == 1
  SSL_write_again(&ssl, request, (int)strlen(request));
#endif
  int peeked = SSL_peek(&ssl, buf, sizeof(buf));
  int n = SSL_read(&ssl, buf, sizeof(buf));
  printf("%d %d %.*s\n", peeked, n, n > 0 ? n : 0, buf);
  fflush(stdout);
  if (argc > 2) {
    sleep((unsigned)atoi(argv[2]));  /* stay running, to be found among processes */
  }
  return SSL_shutdown(&ssl) >= 0 ? 0 : 1;
}
