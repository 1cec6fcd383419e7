/* buf.h - a growable byte buffer, the unit of I/O on both sides.
 *
 * Input buffers consume from `off`: the unread bytes are data[off .. len).
 * Output buffers are appended to at `len` and drained from `off`.
 */
#ifndef PEERSTORE_BUF_H
#define PEERSTORE_BUF_H

#include <stddef.h>
#include <stdint.h>

typedef struct peerstore__buf {
  uint8_t *data;
  size_t len;
  size_t cap;
  size_t off;
} peerstore__buf;

/* Buffers that grew larger than this are released once they empty, so
 * one large message does not pin its memory for the connection's life. */
#define PEERSTORE__BUF_KEEP ((size_t)1 << 20)

void peerstore__buf_free(peerstore__buf *b);
/* Makes room for n more bytes after len; returns 0 or PEERSTORE_ENOMEM. */
int peerstore__buf_reserve(peerstore__buf *b, size_t n);
/* Moves the unread bytes to the front once the consumed prefix is large. */
void peerstore__buf_compact(peerstore__buf *b);
/* Moves the unread bytes to the front and gives back the memory past
 * max(them, keep). */
void peerstore__buf_shrink(peerstore__buf *b, size_t keep);
/* Forgets the contents; releases the memory if it grew past BUF_KEEP. */
void peerstore__buf_reset(peerstore__buf *b);
/* Bytes not yet consumed. */
static inline size_t peerstore__buf_pending(const peerstore__buf *b) {
  return b->len - b->off;
}

#endif /* PEERSTORE_BUF_H */
