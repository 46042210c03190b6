// A program shaped like BoringSSL's ssl/ssl_lib.cc, for testing the locator
// against a ground truth: the same error calls with the same reason codes
// and the same relations between SSL_write, SSL_read, SSL_peek, the internal
// read routine and SSL_do_handshake, built with whatever compiler and flags a
// test chooses, with symbols kept in one copy and stripped from another.
//
// -DSCRAMBLE=N builds variants that look like it but must be refused:
//   1 two functions fit SSL_write
//   2 the writers and readers do not call SSL_do_handshake
//   3 SSL_read does not consume what it read, so it cannot be told from SSL_peek
//   4 SSL_write takes its buffer and length from elsewhere than its arguments
//   5 the reason codes are moved between the functions
#include <stddef.h>
#include <string.h>

#ifndef SCRAMBLE
#define SCRAMBLE 0
#endif

#define ERR_LIB_SSL 16
#define ERR_R_SHOULD_NOT_HAVE_BEEN_CALLED 66
#define SSL_R_BAD_LENGTH 111
#define SSL_R_CONNECTION_TYPE_NOT_SET 134
#define SSL_R_SSL_HANDSHAKE_FAILURE 215
#define SSL_R_UNINITIALIZED 226
#define SSL_R_PROTOCOL_IS_SHUTDOWN 207

#if SCRAMBLE == 5
#define R_WRITE_1 SSL_R_CONNECTION_TYPE_NOT_SET
#define R_HANDSHAKE SSL_R_BAD_LENGTH
#else
#define R_WRITE_1 SSL_R_BAD_LENGTH
#define R_HANDSHAKE SSL_R_CONNECTION_TYPE_NOT_SET
#endif

#define OPENSSL_PUT_ERROR(reason) ERR_put_error(ERR_LIB_SSL, 0, reason, __FILE__, __LINE__)

extern "C" {

struct ssl_st;

struct method_st {
  int is_dtls;
  int (*ssl_new)(ssl_st *);
  void (*ssl_free)(ssl_st *);
  int (*read_app_data)(ssl_st *, const unsigned char **, size_t *);
  int (*write_app_data)(ssl_st *, bool *, size_t *, const unsigned char *, size_t);
};

struct s3_st {
  const unsigned char *pending;
  size_t pending_len;
  int handshake_done;
  int write_shutdown;
};

struct ssl_st {
  const method_st *method;
  void *quic_method;
  int (*do_handshake)(ssl_st *);
  s3_st *s3;
};

// In err.c, as in BoringSSL's crypto/err; link-time optimisation may drop its unused argument.
void ERR_put_error(int lib, int unused, int reason, const char *file, unsigned line);

const void *volatile g_side_buffer;
volatile int g_side_length;

static int handshake_step(ssl_st *ssl) {
#if SCRAMBLE == 2
  if (ssl->do_handshake == NULL) {
    OPENSSL_PUT_ERROR(R_HANDSHAKE);
    return -1;
  }
  return ssl->do_handshake(ssl);
#else
  extern int SSL_do_handshake(ssl_st *);
  return SSL_do_handshake(ssl);
#endif
}

int SSL_do_handshake(ssl_st *ssl) {
  if (ssl->do_handshake == NULL) {
    OPENSSL_PUT_ERROR(R_HANDSHAKE);
    return -1;
  }
  if (ssl->s3->handshake_done) {
    return 1;
  }
  int ret = ssl->do_handshake(ssl);
  if (ret <= 0) {
    return ret;
  }
  ssl->s3->handshake_done = 1;
  return 1;
}

static int ssl_read_impl(ssl_st *ssl) {
  if (ssl->do_handshake == NULL) {
    OPENSSL_PUT_ERROR(SSL_R_UNINITIALIZED);
    return -1;
  }
  while (ssl->s3->pending_len == 0) {
    while (!ssl->s3->handshake_done) {
      int ret = handshake_step(ssl);
      if (ret < 0) {
        return ret;
      }
      if (ret == 0) {
        OPENSSL_PUT_ERROR(SSL_R_SSL_HANDSHAKE_FAILURE);
        return -1;
      }
    }
    int ret = ssl->method->read_app_data(ssl, &ssl->s3->pending, &ssl->s3->pending_len);
    if (ret <= 0) {
      return ret;
    }
  }
  return 1;
}

int SSL_peek(ssl_st *ssl, void *buf, int num) {
  if (ssl->quic_method != NULL) {
    OPENSSL_PUT_ERROR(ERR_R_SHOULD_NOT_HAVE_BEEN_CALLED);
    return -1;
  }
  int ret = ssl_read_impl(ssl);
  if (ret <= 0) {
    return ret;
  }
  if (num <= 0) {
    return num;
  }
  size_t todo = ssl->s3->pending_len < (size_t)num ? ssl->s3->pending_len : (size_t)num;
  memcpy(buf, ssl->s3->pending, todo);
  return (int)todo;
}

int SSL_read(ssl_st *ssl, void *buf, int num) {
  int ret = SSL_peek(ssl, buf, num);
  if (ret <= 0) {
    return ret;
  }
#if SCRAMBLE != 3
  ssl->s3->pending += ret;
  ssl->s3->pending_len -= (size_t)ret;
#endif
  return ret;
}

#if SCRAMBLE == 1
static inline __attribute__((always_inline))
#else
static
#endif
int write_impl(ssl_st *ssl, const void *buf, int num) {
  if (ssl->quic_method != NULL) {
    OPENSSL_PUT_ERROR(ERR_R_SHOULD_NOT_HAVE_BEEN_CALLED);
    return -1;
  }
  if (ssl->do_handshake == NULL) {
    OPENSSL_PUT_ERROR(SSL_R_UNINITIALIZED);
    return -1;
  }
#if SCRAMBLE == 4
  buf = g_side_buffer;
  num = g_side_length;
#endif
  int ret = 0;
  size_t written = 0;
  bool needs_handshake = false;
  do {
    if (!ssl->s3->handshake_done) {
      ret = handshake_step(ssl);
      if (ret < 0) {
        return ret;
      }
      if (ret == 0) {
        OPENSSL_PUT_ERROR(SSL_R_SSL_HANDSHAKE_FAILURE);
        return -1;
      }
    }
    if (num < 0) {
      OPENSSL_PUT_ERROR(R_WRITE_1);
      return -1;
    }
    ret = ssl->method->write_app_data(ssl, &needs_handshake, &written, (const unsigned char *)buf, (size_t)num);
  } while (needs_handshake);
  return ret <= 0 ? ret : (int)written;
}

int SSL_write(ssl_st *ssl, const void *buf, int num) { return write_impl(ssl, buf, num); }

#if SCRAMBLE == 1
int SSL_write_again(ssl_st *ssl, const void *buf, int num) {
  if (ssl->s3->write_shutdown) {
    return -1;
  }
  return write_impl(ssl, buf, num);
}
#endif

int SSL_shutdown(ssl_st *ssl) {
  if (ssl->do_handshake == NULL) {
    OPENSSL_PUT_ERROR(SSL_R_UNINITIALIZED);
    return -1;
  }
  if (ssl->s3->write_shutdown) {
    OPENSSL_PUT_ERROR(SSL_R_PROTOCOL_IS_SHUTDOWN);
    return -1;
  }
  ssl->s3->write_shutdown = 1;
  return ssl_read_impl(ssl) > 0 ? 1 : 0;
}

}  // extern "C"
