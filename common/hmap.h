/* hmap.h - an intrusive chained hash table, shared by the service, the
 * memory plugin and the library.
 *
 * Nodes embed a peerstore__hnode and carry their own 64-bit hash; the table
 * never compares keys itself: callers walk one bucket and compare.  Growing
 * is best effort, so inserting never fails: when memory is short the chains
 * just get longer.
 */
#ifndef PEERSTORE_HMAP_H
#define PEERSTORE_HMAP_H

#include <stddef.h>
#include <stdint.h>

typedef struct peerstore__hnode {
  struct peerstore__hnode *next;
  uint64_t hash;
} peerstore__hnode;

typedef struct peerstore__hmap {
  peerstore__hnode **buckets;
  size_t mask; /* bucket count - 1; the count is a power of two */
  size_t count;
} peerstore__hmap;

/* Returns 0 or PEERSTORE_ENOMEM. */
int peerstore__hmap_init(peerstore__hmap *m);
/* Frees the bucket array; the nodes belong to the caller. */
void peerstore__hmap_free(peerstore__hmap *m);
/* The first node of hash's bucket; follow ->next and compare ->hash. */
static inline peerstore__hnode *peerstore__hmap_bucket(
    const peerstore__hmap *m, uint64_t hash) {
  return m->buckets[hash & m->mask];
}
void peerstore__hmap_insert(peerstore__hmap *m, peerstore__hnode *n,
                            uint64_t hash);
void peerstore__hmap_remove(peerstore__hmap *m, peerstore__hnode *n);

/* A fast 64-bit hash of n bytes, chained through seed. */
uint64_t peerstore__hash(const void *p, size_t n, uint64_t seed);

#endif /* PEERSTORE_HMAP_H */
