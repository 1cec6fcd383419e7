/* heap.h - a binary min-heap of elements ordered by a uint64_t key, used
 * for the library's operation deadlines and the memory plugin's expiry.
 *
 * The heap holds pointers to the caller's elements and finds the key and
 * the element's position inside each element at fixed offsets given at
 * init (offsetof), so an element needs no more than the key it has anyway
 * and a 32-bit position: the memory plugin keeps millions of them.
 * An element not in the heap has position PEERSTORE__HEAP_NONE.
 */
#ifndef PEERSTORE_HEAP_H
#define PEERSTORE_HEAP_H

#include <stddef.h>
#include <stdint.h>

#define PEERSTORE__HEAP_NONE UINT32_MAX

typedef struct peerstore__heap {
  void **v;
  uint32_t len;
  uint32_t cap;
  size_t key_off; /* offset of the element's uint64_t key */
  size_t pos_off; /* offset of the element's uint32_t position */
} peerstore__heap;

void peerstore__heap_init(peerstore__heap *h, size_t key_off,
                          size_t pos_off);
void peerstore__heap_free(peerstore__heap *h);
/* Makes room for one more element, so that the next push cannot fail;
 * returns 0 or PEERSTORE_ENOMEM. */
int peerstore__heap_reserve(peerstore__heap *h);
/* The same for n more elements. */
int peerstore__heap_reserve_n(peerstore__heap *h, size_t n);
/* Adds e (not in the heap) after a successful reserve. */
void peerstore__heap_push(peerstore__heap *h, void *e);
/* Takes e out; does nothing if it is not in the heap. */
void peerstore__heap_remove(peerstore__heap *h, void *e);
/* The element with the smallest key, or NULL. */
static inline void *peerstore__heap_top(const peerstore__heap *h) {
  return h->len > 0 ? h->v[0] : NULL;
}

#endif /* PEERSTORE_HEAP_H */
