/* heap.c - see heap.h. */
#include "heap.h"

#include <stdlib.h>
#include <string.h>

#include "peerstore.h"

static uint64_t key(const peerstore__heap *h, const void *e) {
  uint64_t k;

  memcpy(&k, (const char *)e + h->key_off, sizeof(k));
  return k;
}

static uint32_t *pos(const peerstore__heap *h, void *e) {
  return (uint32_t *)(void *)((char *)e + h->pos_off);
}

static void set(peerstore__heap *h, uint32_t i, void *e) {
  h->v[i] = e;
  *pos(h, e) = i;
}

static void up(peerstore__heap *h, uint32_t i) {
  void *e = h->v[i];
  uint64_t k = key(h, e);

  while (i > 0 && k < key(h, h->v[(i - 1) / 2])) {
    set(h, i, h->v[(i - 1) / 2]);
    i = (i - 1) / 2;
  }
  set(h, i, e);
}

static void down(peerstore__heap *h, uint32_t i) {
  void *e = h->v[i];
  uint64_t k = key(h, e);

  for (;;) {
    uint32_t c = 2 * i + 1;
    if (c >= h->len)
      break;
    if (c + 1 < h->len && key(h, h->v[c + 1]) < key(h, h->v[c]))
      c++;
    if (key(h, h->v[c]) >= k)
      break;
    set(h, i, h->v[c]);
    i = c;
  }
  set(h, i, e);
}

void peerstore__heap_init(peerstore__heap *h, size_t key_off,
                          size_t pos_off) {
  memset(h, 0, sizeof(*h));
  h->key_off = key_off;
  h->pos_off = pos_off;
}

void peerstore__heap_free(peerstore__heap *h) {
  free(h->v);
  h->v = NULL;
  h->len = h->cap = 0;
}

int peerstore__heap_reserve_n(peerstore__heap *h, size_t n) {
  size_t cap = h->cap;
  void **v;

  if (n <= (size_t)(h->cap - h->len))
    return 0;
  /* The last position is PEERSTORE__HEAP_NONE. */
  if (n >= PEERSTORE__HEAP_NONE / 2 - h->len)
    return PEERSTORE_ENOMEM;
  if (cap == 0)
    cap = 64;
  while (cap - h->len < n)
    cap *= 2;
  if (cap >= PEERSTORE__HEAP_NONE / 2 ||
      (v = realloc(h->v, cap * sizeof(*v))) == NULL)
    return PEERSTORE_ENOMEM;
  h->v = v;
  h->cap = (uint32_t)cap;
  return 0;
}

int peerstore__heap_reserve(peerstore__heap *h) {
  return peerstore__heap_reserve_n(h, 1);
}

void peerstore__heap_push(peerstore__heap *h, void *e) {
  set(h, h->len++, e);
  up(h, h->len - 1);
}

void peerstore__heap_remove(peerstore__heap *h, void *e) {
  uint32_t i = *pos(h, e);
  void *last;

  if (i == PEERSTORE__HEAP_NONE)
    return;
  *pos(h, e) = PEERSTORE__HEAP_NONE;
  last = h->v[--h->len];
  if (last == e)
    return;
  set(h, i, last);
  up(h, i);
  down(h, *pos(h, last));
}
