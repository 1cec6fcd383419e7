/* watch.c - watches: the change stream (DESIGN.md section 7).
 *
 * Changes come from the plugin's change hook (watch_changed), which a
 * plugin calls for every change it applies - or learns of from another
 * writer of a shared database - before it completes the request that made
 * it: so live watchers hear of a change before its writer does.
 *
 * Every watch is hashed by its filter: the subsystem, then the peer and/or
 * key it names, each kind of filter under a different seed.  A change of
 * (ss, peer, key) can match exactly four filters, (ss), (ss, peer),
 * (ss, key) and (ss, peer, key), so it does four hash lookups and visits
 * only the watches in those buckets: the cost of a change does not grow
 * with the number of watches that cannot match it.  A notification is
 * encoded once per protocol and copied to each watcher with its own
 * request id set in.
 *
 * A watch of protocol version 3 is in one of three states:
 *  - LIVE: fed from the hook.  pos is the revision of the last change it
 *    was given (or skipped, for kinds it did not ask for).
 *  - SNAPSHOT: yielding the current records through a plugin cursor; the
 *    hook passes it by.  The snapshot's SYNC revision is the later of the
 *    last revision reported when it began and the newest record it
 *    yielded: every change up to it is in what the snapshot showed, and
 *    none after it (the cursor's own snapshot lies between the two, and a
 *    record it yields was stored at or before it).
 *  - CATCHUP: reading the plugin's history from pos, as fast as its
 *    client reads; the hook passes it by.  A read that reaches the end
 *    makes it LIVE with no gap and no overlap (peerstore_plugin.h,
 *    history_read).  A resume starts here, and so does a live watcher
 *    whose output would pass the watch limit: it stops costing memory and
 *    catches up once it reads again (etcd's unsynced watchers).
 * A history that no longer reaches back to pos ends the watch (ECOMPACTED
 * for a resume, EOVERFLOW for a watcher that fell behind), or, with
 * SNAPSHOT, sends RESET and starts the snapshot again.
 *
 * A version 2 watch (WATCH) has the old semantics: RECORD frames of
 * stores only, and EOVERFLOW when its output would pass the watch limit.
 *
 * A watch with a plugin call outstanding holds a reference on its client
 * and is freed when the call completes, like an iteration.
 */
#include <stdlib.h>
#include <string.h>

#include "service.h"
#include "text.h"

/* Records or events asked of the plugin at once. */
#define WATCH_BATCH 256

/* Snapshot batches and history reads asked of the plugin per turn of the
 * loop, over all watches.  A read may scan many events to find few (a
 * narrow filter over a long history): watches catching up take their
 * turns between other clients' requests, not before them. */
#define PUMP_BUDGET 16

enum wstate { W_LIVE, W_SNAPSHOT, W_CATCHUP };

struct watch {
  peerstore__hnode h; /* in the server's watch index, under its filter */
  watch *next_of_client;
  client *c;
  uint32_t request;
  peerstore__filter f;
  uint64_t pos;       /* see above */
  uint64_t told;      /* the client has every matching event up to it */
  watch *defer_next;  /* waiting for the next turn's budget */
  watch *defer_prev;
  uint64_t sync_at;   /* SNAPSHOT: the SYNC revision so far */
  uint64_t snap_now;  /* SNAPSHOT: records expiring by then are left out */
  peerstore_plugin_cursor *cursor;
  uint8_t state;
  unsigned v2 : 1;       /* protocol version 2 semantics */
  unsigned snapshot : 1; /* PEERSTORE_WATCH_SNAPSHOT */
  unsigned removals : 1; /* PEERSTORE_WATCH_REMOVALS */
  unsigned behind : 1;   /* fell behind while live */
  unsigned busy : 1;     /* a plugin call is outstanding */
  unsigned pumping : 1;  /* inside watch_pump */
  unsigned ended : 1;    /* out of the index; freed when not busy */
  unsigned deferred : 1; /* in the server's deferred list */
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

static const peerstore_plugin_ops *ops(const server *s) {
  return s->plugin.desc->ops;
}

static int has_history(const server *s) {
  return ops(s)->history_read != NULL && ops(s)->history_info != NULL;
}

int watch_init(server *s) {
  memset(&s->watches, 0, sizeof(s->watches));
  s->watches.budget = PUMP_BUDGET;
  return peerstore__hmap_init(&s->watches.map);
}

void watch_fini(server *s) {
  peerstore__hmap_free(&s->watches.map);
  peerstore__buf_free(&s->watches.note);
  peerstore__buf_free(&s->watches.note_v2);
}

static void undefer(watch *w) {
  watch_index *x = &w->c->srv->watches;

  if (!w->deferred)
    return;
  w->deferred = 0;
  *(w->defer_prev != NULL ? &w->defer_prev->defer_next : &x->defer_head) =
      w->defer_next;
  *(w->defer_next != NULL ? &w->defer_next->defer_prev : &x->defer_tail) =
      w->defer_prev;
  w->defer_next = w->defer_prev = NULL;
}

/* w goes on pumping in a later turn of the loop (watch_run_deferred). */
static void defer(watch *w) {
  server *s = w->c->srv;
  watch_index *x = &s->watches;

  if (w->deferred)
    return;
  w->deferred = 1;
  w->defer_next = NULL;
  w->defer_prev = x->defer_tail;
  *(x->defer_tail != NULL ? &x->defer_tail->defer_next : &x->defer_head) = w;
  x->defer_tail = w;
  server_kick(s);
}

static void watch_free(watch *w) {
  if (w->cursor != NULL)
    ops(w->c->srv)->iterate_close(w->cursor);
  free(w);
}

/* Takes w out of the index and its client, sending status != 0 first;
 * frees it unless a plugin call still refers to it. */
static void watch_end(watch *w, int status) {
  client *c = w->c;
  server *s = c->srv;
  watch **pp;

  if (w->ended)
    return;
  w->ended = 1;
  undefer(w);
  peerstore__hmap_remove(&s->watches.map, &w->h);
  for (pp = &c->watches; *pp != NULL; pp = &(*pp)->next_of_client) {
    if (*pp == w) {
      *pp = w->next_of_client;
      break;
    }
  }
  c->n_watches--;
  s->watches.count--;
  if (w->state != W_LIVE)
    s->watches.syncing--;
  /* Unlinked first: a reply that fails closes the client, which ends
   * its other watches. */
  if (status != 0)
    dispatch_reply(c, PEERSTORE_MSG_WATCH_END, w->request, status, NULL);
  if (!w->busy && !w->pumping)
    watch_free(w);
}

static void set_state(watch *w, enum wstate st) {
  server *s = w->c->srv;

  if ((w->state == W_LIVE) != (st == W_LIVE))
    s->watches.syncing += st == W_LIVE ? -1 : 1;
  w->state = (uint8_t)st;
}

/* Queues a SYNC, RESET or PROGRESS event. */
static int put_marker(watch *w, uint8_t kind, uint64_t revision) {
  client *c = w->c;

  if (peerstore__put_event(&c->out.buf, w->request, kind, revision, NULL,
                           0) != 0)
    return PEERSTORE_ENOMEM;
  if (kind != PEERSTORE_EVENT_RESET)
    w->told = revision;
  if (kind == PEERSTORE__EVENT_PROGRESS)
    c->srv->stats.watch_progress++;
  client_output_ready(c);
  return 0;
}

static int wants(const watch *w, int kind) {
  return kind == PEERSTORE_CHANGE_STORE || w->removals;
}

/* ------------------------------------------------------------------ */
/* Snapshot and catch-up: pumped from the plugin as the client reads   */

static void watch_pump(watch *w);

static int start_snapshot(watch *w) {
  server *s = w->c->srv;
  peerstore_plugin_filter pf;
  int r;

  filter_to_plugin(&w->f, &pf);
  w->sync_at = s->reported;
  w->snap_now = peerstore__now_us();
  r = ops(s)->iterate_open(s->plugin.instance, &pf, w->snap_now, &w->cursor);
  if (r != 0) {
    w->cursor = NULL;
    return r;
  }
  set_state(w, W_SNAPSHOT);
  return 0;
}

/* The history does not reach back to pos. */
static void compacted(watch *w) {
  server *s = w->c->srv;
  int r;

  if (!w->snapshot) {
    LOG_INFO("client %llu: watch %u: history compacted past revision %llu; "
             "ending it", (unsigned long long)w->c->id, (unsigned)w->request,
             (unsigned long long)w->pos);
    watch_end(w, w->behind ? PEERSTORE_EOVERFLOW : PEERSTORE_ECOMPACTED);
    return;
  }
  s->stats.watch_resets++;
  LOG_INFO("client %llu: watch %u: history compacted past revision %llu; "
           "sending a new snapshot", (unsigned long long)w->c->id,
           (unsigned)w->request, (unsigned long long)w->pos);
  if ((r = put_marker(w, PEERSTORE_EVENT_RESET, 0)) != 0 ||
      (r = start_snapshot(w)) != 0)
    watch_end(w, r);
}

/* The common tail of a plugin call's completion. */
static void call_done(watch *w) {
  client *c = w->c;

  w->busy = 0;
  client_output_ready(c);
  if (!w->pumping) {
    if (w->ended)
      watch_free(w);
    else
      watch_pump(w);
  }
  client_unref(c); /* taken when the call was made */
}

static int snap_rec(void *arg, const peerstore_record *rec, uint32_t writer) {
  watch *w = arg;
  client *c = w->c;

  if (w->ended || c->closing)
    return 1;
  if (rec->expiry <= w->snap_now)
    return 0;
  if (peerstore__put_event(&c->out.buf, w->request, PEERSTORE_EVENT_STORE,
                           rec->revision, rec, writer) != 0) {
    watch_end(w, PEERSTORE_ENOMEM);
    return 1;
  }
  if (rec->revision > w->sync_at)
    w->sync_at = rec->revision;
  c->srv->stats.notifications++;
  return !client_output_ok(c, OUT_ITERATE, 0);
}

static void snap_done(void *arg, int status, int more) {
  watch *w = arg;

  if (!w->ended && status != 0) {
    watch_end(w, status);
  } else if (!w->ended && !more) {
    ops(w->c->srv)->iterate_close(w->cursor);
    w->cursor = NULL;
    w->pos = w->sync_at;
    set_state(w, W_CATCHUP);
    if ((status = put_marker(w, PEERSTORE_EVENT_SYNC, w->pos)) != 0)
      watch_end(w, status);
  }
  call_done(w);
}

static int hist_ev(void *arg, const peerstore_plugin_change *ch) {
  watch *w = arg;
  client *c = w->c;

  if (w->ended || c->closing)
    return 1;
  w->pos = ch->revision;
  if (!wants(w, (int)ch->kind))
    return 0;
  if (peerstore__put_event(&c->out.buf, w->request, (uint8_t)ch->kind,
                           ch->revision, ch->rec, ch->writer) != 0) {
    watch_end(w, PEERSTORE_ENOMEM);
    return 1;
  }
  w->told = ch->revision;
  c->srv->stats.notifications++;
  return !client_output_ok(c, OUT_ITERATE, 0);
}

static void hist_done(void *arg, int status, uint64_t reached, int more) {
  watch *w = arg;

  if (!w->ended) {
    if (status == PEERSTORE_ECOMPACTED) {
      compacted(w);
    } else if (status != 0) {
      watch_end(w, status);
    } else {
      if (reached > w->pos)
        w->pos = reached;
      if (!more) {
        w->behind = 0;
        set_state(w, W_LIVE);
        /* Caught up: whatever it matched, its client may resume from
         * here. */
        if (w->pos > w->told &&
            (status = put_marker(w, PEERSTORE__EVENT_PROGRESS, w->pos)) != 0)
          watch_end(w, status);
      }
    }
  }
  call_done(w);
}

static void watch_pump(watch *w) {
  client *c = w->c;
  server *s = c->srv;
  peerstore_plugin_filter pf;
  int r;

  if (w->pumping)
    return;
  w->pumping = 1;
  while (!w->ended && !w->busy && w->state != W_LIVE && !c->closing &&
         client_output_ok(c, OUT_ITERATE, 0)) {
    if (s->watches.budget == 0) {
      defer(w);
      break;
    }
    s->watches.budget--;
    w->busy = 1;
    client_ref(c);
    if (w->state == W_SNAPSHOT) {
      r = ops(s)->iterate_next(w->cursor, WATCH_BATCH, snap_rec, snap_done,
                               w);
    } else {
      filter_to_plugin(&w->f, &pf);
      r = ops(s)->history_read(s->plugin.instance, &pf, w->pos, WATCH_BATCH,
                               hist_ev, hist_done, w);
    }
    if (r != 0) {
      /* Not started: no callback will come. */
      w->busy = 0;
      client_unref(c);
      watch_end(w, r);
    }
  }
  w->pumping = 0;
  if (w->ended && !w->busy)
    watch_free(w);
}

void watch_run_deferred(server *s) {
  watch *w;

  s->watches.budget = PUMP_BUDGET;
  while (s->watches.budget > 0 && (w = s->watches.defer_head) != NULL) {
    undefer(w);
    watch_pump(w);
  }
}

void watch_tell_progress(server *s) {
  peerstore_plugin_history_info info;
  uint64_t half;
  client *c;
  watch *w, *next;
  int r;

  if (!has_history(s) || s->watches.count == 0)
    return;
  ops(s)->history_info(s->plugin.instance, &info);
  /* Nothing has changed since the last look: no watch has aged. */
  if (s->reported == s->watches.tick_reported &&
      info.first == s->watches.tick_first)
    return;
  s->watches.tick_reported = s->reported;
  s->watches.tick_first = info.first;
  half = info.first + (info.last - info.first) / 2;
  for (c = s->clients; c != NULL; c = c->next) {
    for (w = c->watches; w != NULL && !c->closing; w = next) {
      next = w->next_of_client;
      /* A live watch has every change up to the last one reported. */
      if (w->v2 || w->state != W_LIVE || w->told >= s->reported ||
          w->told >= half || !client_output_ok(c, OUT_WATCH, 32))
        continue;
      if ((r = put_marker(w, PEERSTORE__EVENT_PROGRESS, s->reported)) != 0)
        watch_end(w, r);
    }
  }
}

void watch_pump_all(client *c) {
  watch *w, *next;

  if (c->srv->watches.syncing == 0)
    return;
  for (w = c->watches; w != NULL; w = next) {
    next = w->next_of_client;
    if (w->state != W_LIVE)
      watch_pump(w);
  }
}

/* ------------------------------------------------------------------ */
/* Adding and cancelling                                               */

int watch_add(client *c, uint32_t request, const peerstore__filter *f,
              const watch_opts *o) {
  server *s = c->srv;
  peerstore_plugin_history_info info;
  watch *w;
  int r = 0;

  if (c->n_watches >= s->cfg->max_watches) {
    s->stats.limited++;
    LOG_WARN("client %llu (uid %u): watch limit (%u) reached",
             (unsigned long long)c->id, (unsigned)c->uid,
             (unsigned)s->cfg->max_watches);
    return PEERSTORE_ELIMIT;
  }
  /* Without a history nothing can be caught up: a snapshot could not go
   * over to live changes without a gap. */
  if (!o->v2 && (o->flags & PEERSTORE_WATCH_SNAPSHOT) && !has_history(s))
    return PEERSTORE_EPLUGIN;
  if ((w = calloc(1, sizeof(*w))) == NULL)
    return PEERSTORE_ENOMEM;
  w->c = c;
  w->request = request;
  w->f = *f;
  w->v2 = o->v2;
  w->snapshot = (o->flags & PEERSTORE_WATCH_SNAPSHOT) != 0;
  w->removals = (o->flags & PEERSTORE_WATCH_REMOVALS) != 0;
  w->pos = s->reported;
  w->state = W_LIVE;
  w->pumping = 1; /* nothing below frees it */
  w->next_of_client = c->watches;
  c->watches = w;
  c->n_watches++;
  s->watches.count++;
  peerstore__hmap_insert(&s->watches.map, &w->h, filter_hash(f));
  if (w->v2) {
    w->pumping = 0;
    return 0;
  }
  if (o->from > 0) {
    /* A resume: from the history, if it is this store's line of
     * revisions (the library says which it saw). */
    memset(&info, 0, sizeof(info));
    if (has_history(s))
      ops(s)->history_info(s->plugin.instance, &info);
    w->pos = o->from;
    if (has_history(s) && (o->history_id == 0 || o->history_id == info.id))
      set_state(w, W_CATCHUP);
    else
      compacted(w);
  } else if (w->snapshot) {
    r = start_snapshot(w);
  } else {
    /* Live from here: SYNC tells the library where to resume from. */
    r = put_marker(w, PEERSTORE_EVENT_SYNC, w->pos);
  }
  if (r != 0)
    watch_end(w, r);
  w->pumping = 0;
  if (!w->ended)
    watch_pump(w);
  else if (!w->busy)
    watch_free(w);
  return 0;
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
/* Live notification                                                   */

static int filter_matches(const peerstore__filter *f, int want_peer,
                          int want_key, const peerstore_record *r) {
  return f->has_peer == want_peer && f->has_key == want_key &&
         strcmp(f->subsystem, r->subsystem) == 0 &&
         (!want_peer || memcmp(&f->peer, &r->peer, sizeof(f->peer)) == 0) &&
         (!want_key || strcmp(f->key, r->key) == 0);
}

/* The change being fanned out and its two encodings, each made on first
 * use and shared by every watcher of its protocol. */
typedef struct note {
  const peerstore_plugin_change *ch;
  peerstore__buf *frame[2]; /* [0] EVENT, [1] RECORD (version 2) */
  int ready[2];
} note;

static void fell_behind(server *s, watch *w, uint64_t revision) {
  client *c = w->c;

  s->stats.overflows++;
  if (w->v2 || !has_history(s)) {
    LOG_WARN("client %llu (uid %u): watch %u fell behind (%zu bytes "
             "queued); ending it with overflow",
             (unsigned long long)c->id, (unsigned)c->uid,
             (unsigned)w->request, peerstore__out_queued(&c->out));
    watch_end(w, PEERSTORE_EOVERFLOW);
    return;
  }
  /* It costs nothing more from here: it reads the history once its
   * client reads again (client_resume pumps it). */
  LOG_INFO("client %llu (uid %u): watch %u fell behind (%zu bytes "
           "queued); it will catch up from the history",
           (unsigned long long)c->id, (unsigned)c->uid,
           (unsigned)w->request, peerstore__out_queued(&c->out));
  /* Live until now, it has every change before this one. */
  w->behind = 1;
  w->pos = revision - 1;
  set_state(w, W_CATCHUP);
}

static void deliver(server *s, watch *w, note *n) {
  const peerstore_plugin_change *ch = n->ch;
  client *c = w->c;
  peerstore__buf *out = &c->out.buf, *frame;
  int v = w->v2;

  if (c->closing || w->state != W_LIVE)
    return; /* a syncing watch reads this change from the history */
  if (!wants(w, (int)ch->kind)) { /* version 2: stores only */
    w->pos = ch->revision;
    return;
  }
  frame = n->frame[v];
  if (!n->ready[v]) {
    frame->len = frame->off = 0;
    if ((v ? peerstore__put_record(frame, 0, ch->rec, ch->writer)
           : peerstore__put_event(frame, 0, (uint8_t)ch->kind, ch->revision,
                                  ch->rec, ch->writer)) != 0) {
      watch_end(w, PEERSTORE_ENOMEM);
      return;
    }
    n->ready[v] = 1;
  }
  if (!client_output_ok(c, OUT_WATCH, frame->len)) {
    fell_behind(s, w, ch->revision);
    return;
  }
  if (peerstore__buf_reserve(out, frame->len) != 0) {
    watch_end(w, PEERSTORE_ENOMEM);
    return;
  }
  memcpy(out->data + out->len, frame->data, frame->len);
  peerstore__wire_set_request(out->data + out->len, w->request);
  out->len += frame->len;
  w->pos = ch->revision;
  w->told = ch->revision;
  s->stats.notifications++;
  client_output_ready(c);
}

static void notify_bucket(server *s, uint64_t h, int want_peer, int want_key,
                          note *n) {
  peerstore__hnode *e = peerstore__hmap_bucket(&s->watches.map, h), *next;

  for (; e != NULL; e = next) {
    watch *w = (watch *)e;
    next = e->next; /* deliver may end w */
    if (e->hash == h && filter_matches(&w->f, want_peer, want_key, n->ch->rec))
      deliver(s, w, n);
  }
}

/* The plugin could not learn of every change up to rev: a live watch
 * may have missed some, so it is treated as one whose history was
 * compacted.  The others find out themselves: their history reads fail
 * with ECOMPACTED. */
static void lost(server *s, uint64_t rev) {
  client *c;
  watch *w, *next;

  LOG_WARN("the plugin missed changes up to revision %llu; live watches "
           "start again or end", (unsigned long long)rev);
  for (c = s->clients; c != NULL; c = c->next) {
    for (w = c->watches; w != NULL; w = next) {
      next = w->next_of_client;
      if (!w->ended && w->state == W_LIVE && w->pos < rev)
        compacted(w);
    }
  }
}

void watch_changed(void *server_, const peerstore_plugin_change *ch) {
  server *s = server_;
  const peerstore_record *rec = ch->rec;
  note n;
  uint64_t hs, hp;

  s->reported = ch->revision;
  if (s->watches.count == 0)
    return;
  if (ch->kind == PEERSTORE_CHANGE_LOST) {
    lost(s, ch->revision);
    return;
  }
  n.ch = ch;
  n.frame[0] = &s->watches.note;
  n.frame[1] = &s->watches.note_v2;
  n.ready[0] = n.ready[1] = 0;
  hs = h_ss(rec->subsystem);
  hp = h_peer(hs, &rec->peer);
  notify_bucket(s, hs, 0, 0, &n);
  notify_bucket(s, hp, 1, 0, &n);
  notify_bucket(s, h_key(hs, rec->key), 0, 1, &n);
  notify_bucket(s, h_key(hp, rec->key), 1, 1, &n);
  if (s->watches.note.cap > PEERSTORE__BUF_KEEP)
    peerstore__buf_free(&s->watches.note);
  if (s->watches.note_v2.cap > PEERSTORE__BUF_KEEP)
    peerstore__buf_free(&s->watches.note_v2);
}
