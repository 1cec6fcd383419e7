/* watch.c - the watch index and store notifications.
 *
 * Notifications come from the plugin's change hook (watch_changed), which
 * a plugin calls for every change it applies - or learns of from another
 * writer of a shared database - before it completes the request that made
 * it: so watchers hear of a store before its writer does.
 *
 * Every watch is hashed by its filter: the subsystem, then the peer and/or
 * key it names, each kind of filter under a different seed.  A store of
 * (ss, peer, key) can match exactly four filters, (ss), (ss, peer),
 * (ss, key) and (ss, peer, key), so it does four hash lookups and visits
 * only the watches in those buckets: the cost of a store does not grow
 * with the number of watches that cannot match it.
 *
 * A notification is encoded once and copied to each watcher with its own
 * request id set in.  A watcher whose queued output would pass the watch
 * limit (client_output_ok) has its watch ended with PEERSTORE_EOVERFLOW
 * instead: the store path never waits for a slow reader, and the reader
 * is told.
 */
#include <stdlib.h>
#include <string.h>

#include "service.h"

struct watch {
  peerstore__hnode h; /* in the server's watch index, under its filter */
  watch *next_of_client;
  client *c;
  uint32_t request;
  peerstore__filter f;
};

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

int watch_init(server *s) {
  memset(&s->watches, 0, sizeof(s->watches));
  return peerstore__hmap_init(&s->watches.map);
}

void watch_fini(server *s) {
  peerstore__hmap_free(&s->watches.map);
  peerstore__buf_free(&s->watches.note);
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
  s->watches.count++;
  peerstore__hmap_insert(&s->watches.map, &w->h, filter_hash(f));
  return 0;
}

/* Unlinks w from the index and its client and frees it; status != 0 is
 * sent to the client first. */
static void watch_end(watch *w, int status) {
  client *c = w->c;
  server *s = c->srv;
  watch **pp;

  if (status != 0)
    dispatch_reply(c, PEERSTORE_MSG_WATCH_END, w->request, status, NULL);
  peerstore__hmap_remove(&s->watches.map, &w->h);
  for (pp = &c->watches; *pp != NULL; pp = &(*pp)->next_of_client) {
    if (*pp == w) {
      *pp = w->next_of_client;
      break;
    }
  }
  c->n_watches--;
  s->watches.count--;
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

/* The encoded RECORD frame (s->watches.note), made on first use and
 * shared by every watcher of one store. */
typedef struct note {
  peerstore__buf *frame;
  int ready;
} note;

static void deliver(server *s, watch *w, note *n, const peerstore_record *r,
                    uint32_t writer) {
  client *c = w->c;
  peerstore__buf *out = &c->out.buf;

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
  if (!client_output_ok(c, OUT_WATCH, n->frame->len)) {
    s->stats.overflows++;
    LOG_WARN("client %llu (uid %u): watch %u fell behind (%zu bytes "
             "queued); ending it with overflow",
             (unsigned long long)c->id, (unsigned)c->uid,
             (unsigned)w->request, peerstore__out_queued(&c->out));
    watch_end(w, PEERSTORE_EOVERFLOW);
    return;
  }
  if (peerstore__buf_reserve(out, n->frame->len) != 0) {
    watch_end(w, PEERSTORE_ENOMEM);
    return;
  }
  memcpy(out->data + out->len, n->frame->data, n->frame->len);
  peerstore__wire_set_request(out->data + out->len, w->request);
  out->len += n->frame->len;
  s->stats.notifications++;
  client_output_ready(c);
}

static void notify_bucket(server *s, uint64_t h, int want_peer, int want_key,
                          note *n, const peerstore_record *rec,
                          uint32_t writer) {
  peerstore__hnode *e = peerstore__hmap_bucket(&s->watches.map, h), *next;

  for (; e != NULL; e = next) {
    watch *w = (watch *)e;
    next = e->next; /* deliver may end w */
    if (e->hash == h && filter_matches(&w->f, want_peer, want_key, rec))
      deliver(s, w, n, rec, writer);
  }
}

static void notify(server *s, const peerstore_record *rec, uint32_t writer) {
  note n;
  uint64_t hs, hp;

  if (s->watches.count == 0)
    return;
  n.frame = &s->watches.note;
  n.ready = 0;
  hs = h_ss(rec->subsystem);
  hp = h_peer(hs, &rec->peer);
  notify_bucket(s, hs, 0, 0, &n, rec, writer);
  notify_bucket(s, hp, 1, 0, &n, rec, writer);
  notify_bucket(s, h_key(hs, rec->key), 0, 1, &n, rec, writer);
  notify_bucket(s, h_key(hp, rec->key), 1, 1, &n, rec, writer);
  if (s->watches.note.cap > PEERSTORE__BUF_KEEP)
    peerstore__buf_free(&s->watches.note);
}

void watch_changed(void *server_, const peerstore_plugin_change *ch) {
  /* Protocol version 2 has notifications of stores only; removals and
   * expiry reach watchers with the change stream. */
  if (ch->kind == PEERSTORE_CHANGE_STORE)
    notify(server_, ch->rec, ch->writer);
}
