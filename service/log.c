/* log.c - leveled logging to stderr.  Never given value bytes. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/time.h>
#include <time.h>

#include "service.h"

static int log_level = PEERSTORE_LOG_INFO;

void log_set_level(int level) { log_level = level; }

/* A whole line is formatted first and written with one write(2): the
 * SQLite worker thread logs too, and lines from two threads must not
 * interleave (a pipe takes up to PIPE_BUF bytes at once; a file's offset
 * is shared and moved per write). */
static void log_v(int level, const char *fmt, va_list ap) {
  static const char *names[] = {"error", "warn", "info", "debug"};
  char line[2048];
  struct timeval tv;
  struct tm tm;
  size_t n;
  int k;

  if (level > log_level || level < 0)
    return;
  gettimeofday(&tv, NULL);
  gmtime_r(&tv.tv_sec, &tm);
  n = strftime(line, sizeof(line), "%Y-%m-%dT%H:%M:%S", &tm);
  k = snprintf(line + n, sizeof(line) - n, ".%03dZ peerstored %s: ",
               (int)(tv.tv_usec / 1000), names[level]);
  n += k > 0 ? (size_t)k : 0;
  k = vsnprintf(line + n, sizeof(line) - n, fmt, ap);
  if (k < 0)
    k = 0;
  if ((size_t)k >= sizeof(line) - n - 1) {
    n = sizeof(line) - 5;
    memcpy(line + n, "...", 3); /* cut, and said so */
    n += 3;
  } else {
    n += (size_t)k;
  }
  line[n++] = '\n';
  while (write(STDERR_FILENO, line, n) < 0 && errno == EINTR)
    ;
}

void log_msg(int level, const char *fmt, ...) {
  va_list ap;

  va_start(ap, fmt);
  log_v(level, fmt, ap);
  va_end(ap);
}

void log_plugin(void *ctx, enum peerstore_log_level level, const char *fmt,
                ...) {
  va_list ap;

  (void)ctx;
  va_start(ap, fmt);
  log_v((int)level, fmt, ap);
  va_end(ap);
}
