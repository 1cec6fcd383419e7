/* log.c - leveled logging to stderr.  Never given value bytes. */
#include <stdarg.h>
#include <stdio.h>
#include <sys/time.h>
#include <time.h>

#include "service.h"

static int log_level = PEERSTORE_LOG_INFO;

void log_set_level(int level) { log_level = level; }

static void log_v(int level, const char *fmt, va_list ap) {
  static const char *names[] = {"error", "warn", "info", "debug"};
  struct timeval tv;
  struct tm tm;
  char ts[32];

  if (level > log_level)
    return;
  gettimeofday(&tv, NULL);
  gmtime_r(&tv.tv_sec, &tm);
  strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
  fprintf(stderr, "%s.%03dZ peerstored %s: ", ts, (int)(tv.tv_usec / 1000),
          names[level]);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
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
