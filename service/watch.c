/* watch.c - the watch index and store notifications.
 *
 * Every watch is hashed by its filter: the subsystem, then the peer and/or
 * key it names, each kind of filter under a different seed.  A store of
 * (ss, peer, key) can match exactly four filters, (ss), (ss, peer),
 * (ss, key) and (ss, peer, key), so it does four hash lookups and visits
 * only the watches in those buckets: the cost of a store does not grow
 * with the number of watches that cannot match it.
 *
 * A notification is encoded once and copied to each watcher with its own
 * request id patched in.  A watcher whose queued output would pass
 * watch_output_limit has its watch ended with PEERSTORE_EOVERFLOW instead:
 * the store path never waits for a slow reader, and the reader is told.
 */
#include <stdlib.h>
#include <string.h>

#include "service.h"

#define SEED_SS 0x5eed0001u
#define SEED_PEER 0x5eed0002u
#define SEED_KEY 0x5eed0003u

static uint64_t h_ss(const char *ss) {
  return peerstore__hash(ss, strlen(ss), SEED_SS);
}

static uint64_t h_peer(uint64_t base, const peerstore_peer_id *p) {
  return peerstore__hash(p->bytes, sizeof(p->bytes), base ^ SEED_PEER);
}

static uint64_t h_key(uint64_t base, const char *key) {
  return peerstore__hash(key, strlen(key), base ^ SEED_KEY);
}

static uint64_t filter_hash(const peerstore__filter *f) {
  uint64_t h = h_ss(f->subsystem);

  if (f->has_peer)
    h = h_peer(h, &f->peer);
  if (f->has_key)
    h = h_key(h, f->key);
  return h;
}

int watch_add(server *s, client *c, uint32_t request,
              const peerstore__filter *f) {
  watch *w;

  if (c->n_watches >= s->cfg->max_watches) {
    LOG_WARN("client %llu (uid %u): watch limit (%u) reached",
             (unsigned long long)c->id, (unsigned)c->uid,
             (unsigned)s->cfg->max_watches);
    return PEERSTORE_ELIMIT;
  }
  if ((w = calloc(1, sizeof(*w))) == NULL)
    return PEERSTORE_ENOMEM;
  w->c = c;
  w->request = request;
  w->f = *f;
  w->next_of_client = c->watches;
  c->watches = w;
  c->n_watches++;
  s->n_watches++;
  peerstore__hmap_insert(&s->watch_index, &w->h, filter_hash(f));
  return 0;
}

/* Unlinks w from the index and its client and frees it; status != 0 is
 * sent to the client first. */
static void watch_end(watch *w, int status) {
  client *c = w->c;
  server *s = c->srv;
  watch **pp;

  if (status != 0 && !c->closing &&
      peerstore__put_status(&c->out, PEERSTORE_MSG_WATCH_END, w->request,
                            status, NULL) == 0)
    client_output_ready(c);
  peerstore__hmap_remove(&s->watch_index, &w->h);
  for (pp = &c->watches; *pp != NULL; pp = &(*pp)->next_of_client) {
    if (*pp == w) {
      *pp = w->next_of_client;
      break;
    }
  }
  c->n_watches--;
  s->n_watches--;
  free(w);
}

int watch_cancel(client *c, uint32_t request) {
  watch *w;

  for (w = c->watches; w != NULL; w = w->next_of_client) {
    if (w->request == request) {
      watch_end(w, 0);
      return 0;
    }
  }
  return PEERSTORE_ENOENT;
}

void watch_end_all(client *c, int status) {
  while (c->watches != NULL)
    watch_end(c->watches, status);
}

/* ------------------------------------------------------------------ */
/* Notification                                                        */

static int filter_matches(const peerstore__filter *f, int want_peer,
                          int want_key, const peerstore_record *rec) {
  return f->has_peer == want_peer && f->has_key == want_key &&
         strcmp(f->subsystem, rec->subsystem) == 0 &&
         (!want_peer || memcmp(&f->peer, &rec->peer, sizeof(f->peer)) == 0) &&
         (!want_key || strcmp(f->key, rec->key) == 0);
}

/* The encoded RECORD frame (s->note), made on first use and shared by
 * every watcher of one store. */
typedef struct note {
  peerstore__buf *frame;
  int ready;
} note;

static void deliver(server *s, watch *w, note *n, const peerstore_record *r,
                    uint32_t writer) {
  client *c = w->c;
  uint8_t *p;

  if (c->closing)
    return;
  if (!n->ready) {
    n->frame->len = n->frame->off = 0;
    if (peerstore__put_record(n->frame, 0, r, writer) != 0) {
      watch_end(w, PEERSTORE_ENOMEM);
      return;
    }
    n->ready = 1;
  }
  if (client_queued(c) + n->frame->len > s->cfg->watch_output_limit) {
    s->stats.overflows++;
    LOG_WARN("client %llu (uid %u): watch %u fell behind (%zu bytes "
             "queued); ending it with overflow",
             (unsigned long long)c->id, (unsigned)c->uid,
             (unsigned)w->request, client_queued(c));
    watch_end(w, PEERSTORE_EOVERFLOW);
    return;
  }
  if (peerstore__buf_reserve(&c->out, n->frame->len) != 0) {
    watch_end(w, PEERSTORE_ENOMEM);
    return;
  }
  p = c->out.data + c->out.len;
  memcpy(p, n->frame->data, n->frame->len);
  /* The request id sits at bytes 8..11 of the header. */
  p[8] = (uint8_t)(w->request >> 24);
  p[9] = (uint8_t)(w->request >> 16);
  p[10] = (uint8_t)(w->request >> 8);
  p[11] = (uint8_t)w->request;
  c->out.len += n->frame->len;
  s->stats.notifications++;
  client_output_ready(c);
}

static void notify_bucket(server *s, uint64_t h, int want_peer, int want_key,
                          note *n, const peerstore_record *rec,
                          uint32_t writer) {
  peerstore__hnode *e = peerstore__hmap_bucket(&s->watch_index, h), *next;

  for (; e != NULL; e = next) {
    watch *w = (watch *)e;
    next = e->next; /* deliver may end w */
    if (e->hash == h && filter_matches(&w->f, want_peer, want_key, rec))
      deliver(s, w, n, rec, writer);
  }
}

void watch_notify(server *s, const peerstore_record *rec, uint32_t writer) {
  note n;
  uint64_t hs, hp;

  if (s->n_watches == 0)
    return;
  n.frame = &s->note;
  n.ready = 0;
  hs = h_ss(rec->subsystem);
  hp = h_peer(hs, &rec->peer);
  notify_bucket(s, hs, 0, 0, &n, rec, writer);
  notify_bucket(s, hp, 1, 0, &n, rec, writer);
  notify_bucket(s, h_key(hs, rec->key), 0, 1, &n, rec, writer);
  notify_bucket(s, h_key(hp, rec->key), 1, 1, &n, rec, writer);
  if (s->note.cap > (1u << 20))
    peerstore__buf_free(&s->note);
}
