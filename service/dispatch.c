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

/* A request waiting for the plugin.  Recycled through the server's free
 * list, so the store path does not allocate. */
struct sreq {
  client *c;
  sreq *next_free;
  uint32_t request;
  uint32_t bytes; /* of its message, counted against max_inflight_bytes */
};

#define SREQ_FREE_MAX 4096

static sreq *sreq_new(client *c, uint32_t request, uint32_t bytes) {
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
  r->bytes = bytes;
  dispatch_request_begin(c, bytes);
  return r;
}

void dispatch_request_begin(client *c, size_t bytes) {
  client_ref(c);
  c->inflight++;
  c->inflight_bytes += bytes;
  c->srv->inflight++;
}

void dispatch_request_end(client *c, size_t bytes) {
  server *s = c->srv;

  s->inflight--;
  client_request_done(c, bytes);
  client_unref(c);
  if (s->stopping)
    server_kick(s);
}

static void sreq_done(sreq *r) {
  server *s = r->c->srv;

  dispatch_request_end(r->c, r->bytes);
  if (s->n_free_reqs < SREQ_FREE_MAX && !s->done) {
    r->next_free = s->free_reqs;
    s->free_reqs = r;
    s->n_free_reqs++;
  } else {
    free(r);
  }
}

void dispatch_reply(client *c, uint16_t type, uint32_t request, int status,
                    const uint64_t *extra) {
  if (c->closing)
    return;
  if (peerstore__put_status(&c->out.buf, type, request, status, extra) !=
      0) {
    client_fail(c, PEERSTORE_ENOMEM, "out of memory queueing a reply");
    return;
  }
  client_output_ready(c);
}

/* Store and remove in a subsystem with a [write] rule are for the users
 * and groups it lists; the service's own subsystem is for nobody. */
int dispatch_may_write(client *c, const char *subsystem) {
  const write_rule *r = config_write_rule(c->srv->cfg, subsystem);

  if (strcmp(subsystem, PEERSTORE_BATCH_SUBSYSTEM) != 0 &&
      (r == NULL || config_id_match(&r->uids, &r->gids, (uint32_t)c->uid,
                                    (uint32_t)c->gid)))
    return 1;
  c->srv->stats.refused++;
  LOG_WARN("client %llu: uid %u gid %u may not write subsystem '%s'",
           (unsigned long long)c->id, (unsigned)c->uid, (unsigned)c->gid,
           subsystem);
  return 0;
}

/* ------------------------------------------------------------------ */
/* HELLO                                                               */

/* The line of revisions resume points belong to (0: no history). */
static uint64_t history_id(const server *s) {
  peerstore_plugin_history_info info;
  const peerstore_plugin_ops *o = s->plugin.desc->ops;

  if (o->history_info == NULL)
    return 0;
  o->history_info(s->plugin.instance, &info);
  return info.id;
}

static int on_hello(client *c, const peerstore__header *h, const uint8_t *b) {
  uint32_t magic;
  uint16_t version;

  if (c->hello ||
      peerstore__wire_hello(b, h->body_len, &magic, &version) != 0 ||
      magic != PEERSTORE_PROTOCOL_MAGIC)
    return PEERSTORE_EPROTO;
  if (version < PEERSTORE_PROTOCOL_MIN || version > PEERSTORE_PROTOCOL_VERSION)
    return PEERSTORE_EVERSION;
  c->hello = 1;
  c->version = version;
  if (peerstore__put_welcome(&c->out.buf, version, c->srv->cfg->max_value_size,
                             history_id(c->srv)) != 0)
    return PEERSTORE_ENOMEM;
  client_output_ready(c);
  return 0;
}

/* ------------------------------------------------------------------ */
/* STORE                                                               */

/* Watchers have heard of the store already: the plugin reports a change
 * (watch_changed) before it completes the request that made it. */
static void store_done(void *arg, int status, const peerstore_record *rec) {
  sreq *r = arg;
  client *c = r->c;
  uint64_t revision = 0;

  if (status == 0) {
    c->srv->stats.stores++;
    revision = rec->revision;
  }
  dispatch_reply(c, PEERSTORE_MSG_STORE_RESULT, r->request, status, &revision);
  sreq_done(r);
}

void dispatch_fini(server *s) {
  sreq *r;

  while ((r = s->free_reqs) != NULL) {
    s->free_reqs = r->next_free;
    free(r);
  }
  s->n_free_reqs = 0;
}

void dispatch_batch_too_big(client *c, uint32_t request) {
  uint64_t zero = 0;

  c->srv->stats.limited++;
  LOG_INFO("client %llu: batch refused: over batch_max_bytes (%zu)",
           (unsigned long long)c->id, c->srv->cfg->batch_max_bytes);
  dispatch_reply(c, PEERSTORE_MSG_BATCH_RESULT, request, PEERSTORE_ELIMIT,
                 &zero);
}

void dispatch_store_too_big(client *c, uint32_t request) {
  uint64_t zero = 0;

  LOG_INFO("client %llu: store refused: value over %u bytes",
           (unsigned long long)c->id, (unsigned)c->srv->cfg->max_value_size);
  dispatch_reply(c, PEERSTORE_MSG_STORE_RESULT, request, PEERSTORE_ETOOBIG,
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
  if (!dispatch_may_write(c, w.rec.subsystem)) {
    uint64_t zero = 0;
    dispatch_reply(c, PEERSTORE_MSG_STORE_RESULT, h->request, PEERSTORE_EACCES,
                 &zero);
    return 0;
  }
  if (s->stopping) {
    uint64_t zero = 0;
    dispatch_reply(c, PEERSTORE_MSG_STORE_RESULT, h->request,
                 PEERSTORE_ESHUTDOWN, &zero);
    return 0;
  }
  if ((r = sreq_new(c, h->request, h->body_len)) == NULL)
    return PEERSTORE_ENOMEM;
  st = s->plugin.desc->ops->store(s->plugin.instance, &w.rec,
                                  (uint32_t)c->uid,
                                  (enum peerstore_store_option)w.option,
                                  store_done, r);
  if (st != 0) /* not started: no callback will come */
    store_done(r, st, NULL);
  return 0;
}

/* ------------------------------------------------------------------ */
/* ITERATE, CREDIT, CANCEL                                             */

static int on_iterate(client *c, const peerstore__header *h,
                      const uint8_t *b) {
  peerstore__filter f;
  uint32_t credit;

  if (peerstore__wire_filter(b, h->body_len, &f, &credit) != 0)
    return PEERSTORE_EPROTO;
  return iter_start(c, h->request, &f, credit);
}

static int on_credit(client *c, const peerstore__header *h,
                     const uint8_t *b) {
  uint32_t more;

  if (peerstore__wire_u32(b, h->body_len, &more) != 0)
    return PEERSTORE_EPROTO;
  if (!backup_credit(c, h->request, more))
    iter_credit(c, h->request, more);
  return 0;
}

/* Ends an iteration, a watch or a backup; one that has ended already is
 * no error, since its end and the cancel may cross. */
static int on_cancel(client *c, const peerstore__header *h,
                     const uint8_t *b) {
  (void)b;
  if (!backup_cancel(c, h->request) && iter_cancel(c, h->request) != 0)
    watch_cancel(c, h->request);
  return 0;
}

/* ------------------------------------------------------------------ */
/* WATCH, REMOVE, STATS                                                */

static int on_watch(client *c, const peerstore__header *h, const uint8_t *b) {
  peerstore__filter f;
  watch_opts o;
  int r;

  memset(&o, 0, sizeof(o));
  if (h->type == PEERSTORE_MSG_WATCH) {
    o.v2 = 1;
    r = peerstore__wire_filter(b, h->body_len, &f, NULL);
  } else {
    r = c->version < 3 ? PEERSTORE_EPROTO
                       : peerstore__wire_watch_ex(b, h->body_len, &f,
                                                  &o.flags, &o.from,
                                                  &o.history_id);
  }
  if (r != 0)
    return PEERSTORE_EPROTO;
  r = watch_add(c, h->request, &f, &o);
  if (r != 0)
    dispatch_reply(c, PEERSTORE_MSG_WATCH_END, h->request, r, NULL);
  return 0;
}

static void remove_done(void *arg, int status, uint64_t n) {
  sreq *r = arg;

  r->c->srv->stats.removes++;
  dispatch_reply(r->c, PEERSTORE_MSG_REMOVE_RESULT, r->request, status, &n);
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
  if (!dispatch_may_write(c, f.subsystem)) {
    uint64_t zero = 0;
    dispatch_reply(c, PEERSTORE_MSG_REMOVE_RESULT, h->request,
                 PEERSTORE_EACCES, &zero);
    return 0;
  }
  if ((r = sreq_new(c, h->request, h->body_len)) == NULL)
    return PEERSTORE_ENOMEM;
  filter_to_plugin(&f, &pf);
  st = s->plugin.desc->ops->remove(s->plugin.instance, &pf, remove_done, r);
  if (st != 0) /* not started: no callback will come */
    remove_done(r, st, 0);
  return 0;
}

/* Each quota's usage: quota.SUBSYSTEM.records and .bytes, and for a
 * per-uid quota the largest uid's part (.uid_records, .uid_bytes); names
 * are cut to the protocol's 63 bytes. */
static size_t quota_stats(server *s, peerstore_stat *st, char (*names)[64]) {
  const peerstore_plugin_ops *o = s->plugin.desc->ops;
  static const char *const what[] = {"records", "bytes", "uid_records",
                                     "uid_bytes"};
  uint64_t v[4];
  size_t i, k, n = 0;

  for (i = 0; i < s->cfg->n_quotas; i++) {
    const peerstore_plugin_quota *q = &s->cfg->quotas[i];
    o->quota_usage(s->plugin.instance, i, &v[0], &v[1], &v[2], &v[3]);
    for (k = 0; k < 4; k++) {
      int room = 63 - 7 - (int)strlen(what[k]);
      if (k >= 2 && !(q->flags & PEERSTORE_PLUGIN_QUOTA_PER_WRITER))
        break;
      snprintf(names[n], 64, "quota.%.*s.%s", room, q->subsystem, what[k]);
      st[n].name = names[n];
      st[n].value = v[k];
      n++;
    }
  }
  return n;
}

/* The plugin's own counters, as "<plugin name>.<counter>". */
#define PLUGIN_STATS_MAX 32

typedef struct plugin_stats {
  const char *plugin;
  peerstore_stat *st;
  char (*names)[64];
  size_t n;
} plugin_stats;

static void add_plugin_stat(void *arg, const char *name, uint64_t value) {
  plugin_stats *p = arg;

  if (p->n >= PLUGIN_STATS_MAX)
    return;
  snprintf(p->names[p->n], 64, "%.20s.%.40s", p->plugin, name);
  p->st[p->n].name = p->names[p->n];
  p->st[p->n].value = value;
  p->n++;
}

static int on_stats(client *c, const peerstore__header *h, const uint8_t *b) {
  server *s = c->srv;
  uint64_t records = 0, revision = 0, output = 0;
  size_t cap = 64 + PLUGIN_STATS_MAX + 4 * s->cfg->n_quotas;
  peerstore_stat *st = malloc(cap * sizeof(*st));
  char (*names)[64] =
      malloc((PLUGIN_STATS_MAX + 4 * s->cfg->n_quotas) * 64);
  const client *o;
  size_t n = 0;
  int r = 0;

  (void)b;
  if (st == NULL || names == NULL) {
    free(st);
    free(names);
    return PEERSTORE_ENOMEM;
  }
  for (o = s->clients; o != NULL; o = o->next)
    output += peerstore__out_queued(&o->out);
  s->plugin.desc->ops->counts(s->plugin.instance, &records, &revision);
#define STAT(nm, v) (st[n].name = (nm), st[n].value = (uint64_t)(v), n++)
  STAT("records", records);
  STAT("revision", revision);
  STAT("clients", s->n_clients);
  STAT("clients_paused", s->n_paused);
  STAT("output_bytes", output);
  STAT("watches", s->watches.count);
  STAT("iterations_active", s->n_iters);
  STAT("stores", s->stats.stores);
  STAT("iterations", s->stats.iterations);
  STAT("removes", s->stats.removes);
  STAT("notifications", s->stats.notifications);
  STAT("watch_overflows", s->stats.overflows);
  STAT("protocol_errors", s->stats.protocol_errors);
  STAT("clients_stalled", s->stats.stalled);
  STAT("refused", s->stats.refused);
  STAT("limited", s->stats.limited);
  STAT("iterations_timed_out", s->stats.iterations_timed_out);
  STAT("clients_total", s->stats.clients_total);
  STAT("purged", s->stats.purged);
  STAT("watches_syncing", s->watches.syncing);
  STAT("watch_resets", s->stats.watch_resets);
  STAT("watch_progress", s->stats.watch_progress);
  STAT("input_buffered", s->input_big);
  STAT("clients_waiting_input", s->n_input_waiters);
  STAT("input_timed_out", s->stats.input_timed_out);
  STAT("batches", s->stats.batches);
  STAT("batch_conflicts", s->stats.batch_conflicts);
  STAT("batches_repeated", s->stats.batches_repeated);
  STAT("backups", s->stats.backups);
  STAT("backup_bytes", s->stats.backup_bytes);
  STAT("backup_running", backup_running(s));
  if (s->plugin.desc->ops->history_info != NULL) {
    peerstore_plugin_history_info hi;
    s->plugin.desc->ops->history_info(s->plugin.instance, &hi);
    STAT("history_first", hi.first);
    STAT("history_last", hi.last);
    STAT("history_events", hi.events);
    STAT("history_bytes", hi.bytes);
  }
  STAT("max_value_size", s->cfg->max_value_size);
  STAT("uptime_s", (uv_now(s->loop) - s->started_ms) / 1000);
#undef STAT
  if (s->plugin.desc->ops->stats != NULL) {
    plugin_stats p = {s->plugin.desc->name, st + n, names, 0};
    s->plugin.desc->ops->stats(s->plugin.instance, add_plugin_stat, &p);
    n += p.n;
  }
  n += quota_stats(s, st + n, names + PLUGIN_STATS_MAX);
  if (peerstore__put_stats(&c->out.buf, h->request, st, n) != 0)
    r = PEERSTORE_ENOMEM;
  else
    client_output_ready(c);
  free(st);
  free(names);
  return r;
}

/* ------------------------------------------------------------------ */
/* The table                                                           */

typedef int (*handler_fn)(client *c, const peerstore__header *h,
                          const uint8_t *body);

static const struct {
  uint16_t type;
  handler_fn handle;
} table[] = {
    {PEERSTORE_MSG_HELLO, on_hello},     {PEERSTORE_MSG_STORE, on_store},
    {PEERSTORE_MSG_ITERATE, on_iterate}, {PEERSTORE_MSG_CREDIT, on_credit},
    {PEERSTORE_MSG_CANCEL, on_cancel},   {PEERSTORE_MSG_WATCH, on_watch},
    {PEERSTORE_MSG_REMOVE, on_remove},   {PEERSTORE_MSG_STATS, on_stats},
    {PEERSTORE_MSG_WATCH_EX, on_watch},  {PEERSTORE_MSG_BATCH, batch_start},
    {PEERSTORE_MSG_BACKUP, backup_start},
};

int dispatch_frame(client *c, const peerstore__header *h,
                   const uint8_t *body) {
  size_t i;

  /* Nothing but HELLO is understood before HELLO. */
  if (!c->hello && h->type != PEERSTORE_MSG_HELLO)
    return PEERSTORE_EPROTO;
  /* The decoders check every length; this rejects a short frame early. */
  if (h->body_len < peerstore__wire_min_body(h->type))
    return PEERSTORE_EPROTO;
  for (i = 0; i < sizeof(table) / sizeof(table[0]); i++)
    if (table[i].type == h->type)
      return table[i].handle(c, h, body);
  return PEERSTORE_EPROTO;
}
