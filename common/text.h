/* text.h - small helpers the library, the CLI and the service share.
 *
 * Header-only on purpose: the CLI links libpeerstore and nothing else,
 * and libpeerstore exports only the public API.
 */
#ifndef PEERSTORE_TEXT_H
#define PEERSTORE_TEXT_H

#include <stdint.h>
#include <time.h>

/* The value of a hex digit, or -1. */
static inline int peerstore__hex_value(int ch) {
  if (ch >= '0' && ch <= '9')
    return ch - '0';
  if (ch >= 'a' && ch <= 'f')
    return ch - 'a' + 10;
  if (ch >= 'A' && ch <= 'F')
    return ch - 'A' + 10;
  return -1;
}

/* Decodes 2 * n hex digits from s into out[0..n); returns 0, or -1 at a
 * character that is not a hex digit. */
static inline int peerstore__hex_decode(const char *s, uint8_t *out,
                                        size_t n) {
  size_t i;

  for (i = 0; i < n; i++) {
    int hi = peerstore__hex_value((unsigned char)s[2 * i]);
    int lo = hi < 0 ? -1 : peerstore__hex_value((unsigned char)s[2 * i + 1]);

    if (lo < 0)
      return -1;
    out[i] = (uint8_t)(hi << 4 | lo);
  }
  return 0;
}

/* Wall-clock time in microseconds since the Unix epoch: the unit of a
 * record's expiry. */
static inline uint64_t peerstore__now_us(void) {
  struct timespec ts;

  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

#endif /* PEERSTORE_TEXT_H */
