/* dispatch.c - the service's message table and request handlers.
 *
 * Every frame from a client goes through dispatch_frame(): one row per
 * message type with its size bounds and handler.  A handler returns 0, or a
 * status that makes the caller log the client out through one exit
 * (client_fail).  Requests that reach the plugin hold a reference on their
 * client, so a client that disconnects mid-request is freed only after the
 * plugin has answered; the answer is then dropped.
 */
#include <stdlib.h>
#include <string.h>

#include "service.h"

/* Records asked of the plugin at once; bounded so one iteration yields the
 * loop to other clients regularly. */
#define ITER_BATCH 256
#define CREDIT_MAX (1u << 20)

/* A request waiting for the plugin.  Recycled through the server's free
 * list, so the store path does not allocate. */
struct sreq {
  client *c;
  sreq *next_free;
  uint32_t request;
};

#define SREQ_FREE_MAX 4096

static sreq *sreq_new(client *c, uint32_t request) {
  server *s = c->srv;
  sreq *r = s->free_reqs;

  if (r != NULL) {
    s->free_reqs = r->next_free;
    s->n_free_reqs--;
  } else if ((r = malloc(sizeof(*r))) == NULL) {
    return NULL;
  }
  r->c = c;
  r->request = request;
  client_ref(c);
  c->inflight++;
  c->srv->inflight++;
  return r;
}

static void sreq_done(sreq *r) {
  server *s = r->c->srv;

  s->inflight--;
  if (--r->c->inflight <= s->cfg->max_inflight / 2)
    client_resume(r->c);
  client_unref(r->c);
  if (s->n_free_reqs < SREQ_FREE_MAX && !s->done) {
    r->next_free = s->free_reqs;
    s->free_reqs = r;
    s->n_free_reqs++;
  } else {
    free(r);
  }
  if (s->stopping)
    server_kick(s);
}

static void reply_status(client *c, uint16_t type, uint32_t request,
                         int status, const uint64_t *extra) {
  if (c->closing)
    return;
  if (peerstore__put_status(&c->out, type, request, status, extra) != 0) {
    client_fail(c, PEERSTORE_ENOMEM, "out of memory queueing a reply");
    return;
  }
  client_output_ready(c);
}

/* Store and remove in a subsystem with a [write] rule are for the users
 * and groups it lists. */
static int may_write(client *c, const char *subsystem) {
  const write_rule *r = config_write_rule(c->srv->cfg, subsystem);

  if (r == NULL || config_id_match(&r->uids, &r->gids, (uint32_t)c->uid,
                                   (uint32_t)c->gid))
    return 1;
  c->srv->stats.refused++;
  LOG_WARN("client %llu: uid %u gid %u may not write subsystem '%s'",
           (unsigned long long)c->id, (unsigned)c->uid, (unsigned)c->gid,
           subsystem);
  return 0;
}

static void filter_to_plugin(const peerstore__filter *f,
                             peerstore_plugin_filter *pf) {
  pf->subsystem = f->subsystem;
  pf->peer = f->has_peer ? &f->peer : NULL;
  pf->key = f->has_key ? f->key : NULL;
}

/* ------------------------------------------------------------------ */
/* HELLO                                                               */

static int on_hello(client *c, const peerstore__header *h, const uint8_t *b) {
  uint32_t magic;
  uint16_t version;

  if (c->hello ||
      peerstore__wire_hello(b, h->body_len, &magic, &version) != 0 ||
      magic != PEERSTORE_PROTOCOL_MAGIC)
    return PEERSTORE_EPROTO;
  if (version != PEERSTORE_PROTOCOL_VERSION)
    return PEERSTORE_EVERSION;
  c->hello = 1;
  if (peerstore__put_welcome(&c->out, c->srv->cfg->max_value_size) != 0)
    return PEERSTORE_ENOMEM;
  client_output_ready(c);
  return 0;
}

/* ------------------------------------------------------------------ */
/* STORE                                                               */

static void store_done(void *arg, int status, const peerstore_record *rec) {
  sreq *r = arg;
  client *c = r->c;
  uint64_t revision = 0;

  if (status == 0) {
    c->srv->stats.stores++;
    revision = rec->revision;
    /* Watchers hear of a store before its writer does. */
    watch_notify(c->srv, rec, (uint32_t)c->uid);
  }
  reply_status(c, PEERSTORE_MSG_STORE_RESULT, r->request, status, &revision);
  sreq_done(r);
}

void dispatch_free_reqs(server *s) {
  sreq *r;

  while ((r = s->free_reqs) != NULL) {
    s->free_reqs = r->next_free;
    free(r);
  }
  s->n_free_reqs = 0;
}

void dispatch_store_too_big(client *c, uint32_t request) {
  uint64_t zero = 0;

  LOG_INFO("client %llu: store refused: value over %u bytes",
           (unsigned long long)c->id, (unsigned)c->srv->cfg->max_value_size);
  reply_status(c, PEERSTORE_MSG_STORE_RESULT, request, PEERSTORE_ETOOBIG,
               &zero);
}

static int on_store(client *c, const peerstore__header *h, const uint8_t *b) {
  server *s = c->srv;
  peerstore__wrec w;
  sreq *r;
  int st;

  if (peerstore__wire_store(b, h->body_len, &w) != 0)
    return PEERSTORE_EPROTO;
  if (w.rec.value_size > s->cfg->max_value_size) {
    dispatch_store_too_big(c, h->request);
    return 0;
  }
  if (!may_write(c, w.rec.subsystem)) {
    uint64_t zero = 0;
    reply_status(c, PEERSTORE_MSG_STORE_RESULT, h->request, PEERSTORE_EACCES,
                 &zero);
    return 0;
  }
  if (s->stopping) {
    uint64_t zero = 0;
    reply_status(c, PEERSTORE_MSG_STORE_RESULT, h->request,
                 PEERSTORE_ESHUTDOWN, &zero);
    return 0;
  }
  if ((r = sreq_new(c, h->request)) == NULL)
    return PEERSTORE_ENOMEM;
  st = s->plugin.desc->ops->store(s->plugin.instance, &w.rec,
                                  (uint32_t)c->uid,
                                  (enum peerstore_store_option)w.option,
                                  store_done, r);
  if (st != 0)
    store_done(r, st, NULL);
  return 0;
}

/* ------------------------------------------------------------------ */
/* ITERATE, CREDIT, CANCEL                                             */

static void iter_free(siter *it) {
  client *c = it->c;
  siter **pp;

  for (pp = &c->iters; *pp != NULL; pp = &(*pp)->next) {
    if (*pp == it) {
      *pp = it->next;
      break;
    }
  }
  if (it->cursor != NULL)
    c->srv->plugin.desc->ops->iterate_close(it->cursor);
  c->srv->n_iters--;
  free(it);
}

/* Ends the iteration; status is sent unless the client asked for the end
 * (cancel) or is gone (pass 1 in silent). */
static void iter_end(siter *it, int status, int silent) {
  if (it->ended)
    return;
  it->ended = 1;
  if (!silent)
    reply_status(it->c, PEERSTORE_MSG_ITERATE_END, it->request, status, NULL);
  if (!it->busy && !it->pumping)
    iter_free(it);
}

void iter_end_all(client *c, int status) {
  siter *it, *next;

  for (it = c->iters; it != NULL; it = next) {
    next = it->next;
    iter_end(it, status, status == 0);
  }
}

static void iter_rec(void *arg, const peerstore_record *rec,
                     uint32_t writer) {
  siter *it = arg;
  client *c = it->c;

  /* Expired records never reach a client, whatever the plugin does. */
  if (it->ended || c->closing || rec->expiry <= it->now)
    return;
  if (peerstore__put_record(&c->out, it->request, rec, writer) != 0) {
    iter_end(it, PEERSTORE_ENOMEM, 0);
    return;
  }
  if (it->credit > 0)
    it->credit--;
}

static void iter_done(void *arg, int status, int more) {
  siter *it = arg;
  client *c = it->c;

  /* Still busy while ending, so iter_end does not free it under us. */
  if (!it->ended && (status != 0 || !more))
    iter_end(it, status, 0);
  it->busy = 0;
  client_output_ready(c);
  if (!it->pumping) {
    if (it->ended)
      iter_free(it);
    else
      iter_pump(it);
  }
  client_unref(c); /* taken when the batch was asked for */
}

void iter_pump(siter *it) {
  client *c = it->c;
  server *s = c->srv;
  int r;

  if (it->pumping)
    return;
  it->pumping = 1;
  /* Ask for more only while the client is granting credit and reading
   * what it gets: the output queue bounds what one iteration holds. */
  while (!it->ended && !it->busy && it->credit > 0 && !c->closing &&
         client_queued(c) <= s->cfg->output_soft_limit) {
    it->busy = 1;
    client_ref(c);
    r = s->plugin.desc->ops->iterate_next(
        it->cursor, it->credit < ITER_BATCH ? it->credit : ITER_BATCH,
        iter_rec, iter_done, it);
    if (r != 0) {
      it->busy = 0;
      client_unref(c);
      iter_end(it, r, 0);
    }
  }
  it->pumping = 0;
  if (it->ended && !it->busy)
    iter_free(it);
}

static siter *iter_find(client *c, uint32_t request) {
  siter *it;

  for (it = c->iters; it != NULL; it = it->next)
    if (it->request == request && !it->ended)
      return it;
  return NULL;
}

static int on_iterate(client *c, const peerstore__header *h,
                      const uint8_t *b) {
  server *s = c->srv;
  peerstore__filter f;
  peerstore_plugin_filter pf;
  uint32_t credit;
  siter *it;
  int r;

  if (peerstore__wire_filter(b, h->body_len, &f, &credit) != 0)
    return PEERSTORE_EPROTO;
  if (iter_find(c, h->request) != NULL)
    return PEERSTORE_EPROTO;
  if ((it = calloc(1, sizeof(*it))) == NULL)
    return PEERSTORE_ENOMEM;
  it->c = c;
  it->request = h->request;
  it->credit = credit < CREDIT_MAX ? credit : CREDIT_MAX;
  it->next = c->iters;
  c->iters = it;
  s->n_iters++;
  s->stats.iterations++;
  filter_to_plugin(&f, &pf);
  it->now = server_now_us();
  r = s->plugin.desc->ops->iterate_open(s->plugin.instance, &pf, it->now,
                                        &it->cursor);
  if (r != 0) {
    it->cursor = NULL;
    iter_end(it, r, 0);
    return 0;
  }
  iter_pump(it);
  return 0;
}

static int on_credit(client *c, const peerstore__header *h,
                     const uint8_t *b) {
  uint32_t more;
  siter *it;

  if (peerstore__wire_u32(b, h->body_len, &more) != 0)
    return PEERSTORE_EPROTO;
  /* The iteration may have ended while the credit was on its way. */
  if ((it = iter_find(c, h->request)) == NULL)
    return 0;
  it->credit = (CREDIT_MAX - it->credit < more) ? CREDIT_MAX
                                                : it->credit + more;
  iter_pump(it);
  return 0;
}

static int on_cancel(client *c, const peerstore__header *h,
                     const uint8_t *b) {
  siter *it = iter_find(c, h->request);

  (void)b;
  if (it != NULL)
    iter_end(it, 0, 1);
  else
    watch_cancel(c, h->request);
  return 0;
}

/* ------------------------------------------------------------------ */
/* WATCH, REMOVE, STATS                                                */

static int on_watch(client *c, const peerstore__header *h, const uint8_t *b) {
  peerstore__filter f;
  int r;

  if (peerstore__wire_filter(b, h->body_len, &f, NULL) != 0)
    return PEERSTORE_EPROTO;
  r = watch_add(c->srv, c, h->request, &f);
  if (r != 0)
    reply_status(c, PEERSTORE_MSG_WATCH_END, h->request, r, NULL);
  return 0;
}

static void remove_done(void *arg, int status, uint64_t n) {
  sreq *r = arg;

  r->c->srv->stats.removes++;
  reply_status(r->c, PEERSTORE_MSG_REMOVE_RESULT, r->request, status, &n);
  sreq_done(r);
}

static int on_remove(client *c, const peerstore__header *h,
                     const uint8_t *b) {
  server *s = c->srv;
  peerstore__filter f;
  peerstore_plugin_filter pf;
  sreq *r;
  int st;

  if (peerstore__wire_filter(b, h->body_len, &f, NULL) != 0)
    return PEERSTORE_EPROTO;
  if (!may_write(c, f.subsystem)) {
    uint64_t zero = 0;
    reply_status(c, PEERSTORE_MSG_REMOVE_RESULT, h->request,
                 PEERSTORE_EACCES, &zero);
    return 0;
  }
  if ((r = sreq_new(c, h->request)) == NULL)
    return PEERSTORE_ENOMEM;
  filter_to_plugin(&f, &pf);
  st = s->plugin.desc->ops->remove(s->plugin.instance, &pf, remove_done, r);
  if (st != 0)
    remove_done(r, st, 0);
  return 0;
}

static int on_stats(client *c, const peerstore__header *h, const uint8_t *b) {
  server *s = c->srv;
  uint64_t records = 0, revision = 0;
  peerstore_stat st[32];
  size_t n = 0;

  (void)b;
  s->plugin.desc->ops->counts(s->plugin.instance, &records, &revision);
#define STAT(nm, v) (st[n].name = (nm), st[n].value = (uint64_t)(v), n++)
  STAT("records", records);
  STAT("revision", revision);
  STAT("clients", s->n_clients);
  STAT("watches", s->n_watches);
  STAT("iterations_active", s->n_iters);
  STAT("stores", s->stats.stores);
  STAT("iterations", s->stats.iterations);
  STAT("removes", s->stats.removes);
  STAT("notifications", s->stats.notifications);
  STAT("watch_overflows", s->stats.overflows);
  STAT("protocol_errors", s->stats.protocol_errors);
  STAT("clients_stalled", s->stats.stalled);
  STAT("refused", s->stats.refused);
  STAT("clients_total", s->stats.clients_total);
  STAT("purged", s->stats.purged);
  STAT("max_value_size", s->cfg->max_value_size);
  STAT("uptime_s", (uv_now(s->loop) - s->started_ms) / 1000);
#undef STAT
  if (peerstore__put_stats(&c->out, h->request, st, n) != 0)
    return PEERSTORE_ENOMEM;
  client_output_ready(c);
  return 0;
}

/* ------------------------------------------------------------------ */
/* The table                                                           */

typedef int (*handler_fn)(client *c, const peerstore__header *h,
                          const uint8_t *body);

static const struct {
  uint16_t type;
  uint32_t min_body; /* the decoders check exactly; this rejects early */
  handler_fn handle;
} table[] = {
    {PEERSTORE_MSG_HELLO, 6, on_hello},
    {PEERSTORE_MSG_STORE, 2 + 1 + 32 + 2 + 1 + 8 + 1 + 4, on_store},
    {PEERSTORE_MSG_ITERATE, 1 + 3 + 4, on_iterate},
    {PEERSTORE_MSG_CREDIT, 4, on_credit},
    {PEERSTORE_MSG_CANCEL, 0, on_cancel},
    {PEERSTORE_MSG_WATCH, 1 + 3, on_watch},
    {PEERSTORE_MSG_REMOVE, 1 + 3, on_remove},
    {PEERSTORE_MSG_STATS, 0, on_stats},
};

int dispatch_frame(client *c, const peerstore__header *h,
                   const uint8_t *body) {
  size_t i;

  if (h->flags != 0)
    return PEERSTORE_EPROTO;
  /* Nothing but HELLO is understood before HELLO. */
  if (!c->hello && h->type != PEERSTORE_MSG_HELLO)
    return PEERSTORE_EPROTO;
  for (i = 0; i < sizeof(table) / sizeof(table[0]); i++) {
    if (table[i].type != h->type)
      continue;
    if (h->body_len < table[i].min_body)
      return PEERSTORE_EPROTO;
    return table[i].handle(c, h, body);
  }
  return PEERSTORE_EPROTO;
}
