/* hmap.c - see hmap.h. */
#include "hmap.h"

#include <stdlib.h>
#include <string.h>

#include "peerstore.h"

#define HMAP_INITIAL 64

int peerstore__hmap_init(peerstore__hmap *m) {
  m->buckets = calloc(HMAP_INITIAL, sizeof(*m->buckets));
  if (m->buckets == NULL)
    return PEERSTORE_ENOMEM;
  m->mask = HMAP_INITIAL - 1;
  m->count = 0;
  return 0;
}

void peerstore__hmap_free(peerstore__hmap *m) {
  free(m->buckets);
  m->buckets = NULL;
  m->mask = 0;
  m->count = 0;
}

static void hmap_grow(peerstore__hmap *m) {
  size_t i, n = (m->mask + 1) * 2;
  peerstore__hnode **nb = calloc(n, sizeof(*nb));

  if (nb == NULL)
    return;
  for (i = 0; i <= m->mask; i++) {
    peerstore__hnode *e = m->buckets[i], *next;
    for (; e != NULL; e = next) {
      next = e->next;
      e->next = nb[e->hash & (n - 1)];
      nb[e->hash & (n - 1)] = e;
    }
  }
  free(m->buckets);
  m->buckets = nb;
  m->mask = n - 1;
}

void peerstore__hmap_insert(peerstore__hmap *m, peerstore__hnode *n,
                            uint64_t hash) {
  peerstore__hnode **b;

  if (m->count >= m->mask + 1)
    hmap_grow(m);
  b = &m->buckets[hash & m->mask];
  n->hash = hash;
  n->next = *b;
  *b = n;
  m->count++;
}

void peerstore__hmap_remove(peerstore__hmap *m, peerstore__hnode *n) {
  peerstore__hnode **pp = &m->buckets[n->hash & m->mask];

  for (; *pp != NULL; pp = &(*pp)->next) {
    if (*pp == n) {
      *pp = n->next;
      m->count--;
      return;
    }
  }
}

/* Multiply-fold over 8-byte words: fast on the short keys we hash (peer ids,
 * keys, subsystem names) and good enough for in-process tables.  Clients
 * are local and the tables chain, so flooding costs time, not correctness. */
static uint64_t mix(uint64_t a, uint64_t b) {
  __uint128_t r = (__uint128_t)a * b;
  return (uint64_t)r ^ (uint64_t)(r >> 64);
}

uint64_t peerstore__hash(const void *p, size_t n, uint64_t seed) {
  const uint8_t *s = p;
  uint64_t h = seed ^ 0x9e3779b97f4a7c15ull ^ (n * 0xa0761d6478bd642full);
  uint64_t w;

  while (n >= 8) {
    memcpy(&w, s, 8);
    h = mix(h ^ w, 0xe7037ed1a0b428dbull);
    s += 8;
    n -= 8;
  }
  w = 0;
  memcpy(&w, s, n);
  h = mix(h ^ w, 0x8ebc6af09c88c6e3ull);
  return mix(h, 0x589965cc75374cc3ull);
}
