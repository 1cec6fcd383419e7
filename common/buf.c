/* buf.c - see buf.h. */
#include "buf.h"

#include <stdlib.h>
#include <string.h>

#include "peerstore.h"

void peerstore__buf_free(peerstore__buf *b) {
  free(b->data);
  memset(b, 0, sizeof(*b));
}

int peerstore__buf_reserve(peerstore__buf *b, size_t n) {
  size_t need, cap;
  uint8_t *p;

  if (b->cap - b->len >= n)
    return 0;
  peerstore__buf_compact(b);
  if (b->cap - b->len >= n)
    return 0;
  need = b->len + n;
  if (need < b->len)
    return PEERSTORE_ENOMEM;
  cap = b->cap ? b->cap : 4096;
  while (cap < need)
    cap *= 2;
  p = realloc(b->data, cap);
  if (p == NULL)
    return PEERSTORE_ENOMEM;
  b->data = p;
  b->cap = cap;
  return 0;
}

void peerstore__buf_compact(peerstore__buf *b) {
  if (b->off == 0)
    return;
  if (b->off == b->len) {
    b->off = b->len = 0;
    return;
  }
  /* Only worth a memmove once the dead prefix outweighs the live part. */
  if (b->off < b->len - b->off && b->off < b->cap / 2)
    return;
  memmove(b->data, b->data + b->off, b->len - b->off);
  b->len -= b->off;
  b->off = 0;
}

void peerstore__buf_shrink(peerstore__buf *b, size_t keep) {
  size_t n = b->len - b->off, cap = n > keep ? n : keep;
  uint8_t *p;

  if (b->cap <= cap)
    return;
  if (b->off > 0)
    memmove(b->data, b->data + b->off, n);
  b->len = n;
  b->off = 0;
  if (cap == 0) {
    free(b->data);
    b->data = NULL;
  } else if ((p = realloc(b->data, cap)) != NULL) {
    b->data = p;
  } else {
    return; /* keeps the larger block, still valid */
  }
  b->cap = cap;
}

void peerstore__buf_reset(peerstore__buf *b) {
  b->len = b->off = 0;
  if (b->cap > PEERSTORE__BUF_KEEP)
    peerstore__buf_free(b);
}
