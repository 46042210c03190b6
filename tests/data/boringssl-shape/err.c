/* The error reporter, in a file of its own as in BoringSSL (crypto/err), and
 * a caller from another library of it, so neither the library code nor the
 * file name it is passed is the same constant everywhere. */
volatile unsigned g_last_error;
const char *volatile g_last_file;
static unsigned g_queue[16];
static unsigned g_queued;

/* Kept out of line, as the real one, large, always is. */
__attribute__((noinline)) void ERR_put_error(int lib, int unused, int reason, const char *file, unsigned line) {
  (void)unused;
  unsigned packed = (unsigned)lib << 24 | (unsigned)reason << 12 | line;
  g_queue[g_queued++ % 16] = packed;
  g_last_error = packed;
  g_last_file = file;
}

void CRYPTO_report_malloc_failure(void) { ERR_put_error(14, 0, 65, __FILE__, __LINE__); }
