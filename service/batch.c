/* batch.c - BATCH: several stores, removes and conditions applied all or
 * nothing through the plugin's batch call (DESIGN.md section 8).
 *
 * A batch sent again after a reconnect.  The library resends whatever
 * was not answered, and a batch whose first attempt was applied - the
 * connection broke before its answer arrived - must not be applied
 * twice: a compare-and-set would then report a conflict with itself, and
 * an unconditional batch would overwrite what others stored in between.
 * So a batch that carries an id is made conditional on a marker record
 * of the service's own, which the batch itself stores:
 *
 *   REQUIRE  (peerstore.batch, writer's uid, id) has no record
 *   STORE    (peerstore.batch, writer's uid, id) = "b"
 *   ... the client's operations ...
 *   STORE    (peerstore.batch, writer's uid, id) = "e"   (no store above)
 *
 * The marker is written in the same plugin transaction as the batch, so
 * it exists exactly when the batch was applied, survives what the batch
 * survives (a restart of a persistent store), and expires after
 * batch_retry_window.  A batch that fails on a condition and has an id
 * is looked up: if its marker is there, the batch was applied before and
 * its answer is given again - status 0 and the revision its changes
 * began at, one past the "b" marker's.  The "e" marker closes the range
 * of a batch with no store, whose removes may have changed nothing.
 */
#include <stdlib.h>
#include <string.h>

#include "service.h"
#include "text.h"

typedef struct breq {
  client *c;
  uint32_t request;
  uint32_t bytes; /* of its message, counted against max_inflight_bytes */
  unsigned has_id : 1;
  unsigned has_store : 1;
  /* The marker, looked up when a batch with an id meets a conflict. */
  peerstore_peer_id mpeer;
  char mkey[2 * PEERSTORE_BATCH_ID_SIZE + 1];
  peerstore_plugin_cursor *cursor;
  uint64_t begin;
  uint64_t end;
} breq;

static const peerstore_plugin_ops *ops(const server *s) {
  return s->plugin.desc->ops;
}

static void reply(breq *b, int status, uint64_t first) {
  dispatch_reply(b->c, PEERSTORE_MSG_BATCH_RESULT, b->request, status,
                 &first);
  dispatch_request_end(b->c, b->bytes);
  free(b);
}

/* The revision the client's changes began at, given the "b" and "e"
 * markers' (end 0: no "e" marker, the batch had a store). */
static uint64_t client_first(const breq *b, uint64_t begin, uint64_t end) {
  if (b->has_store || end > begin + 1)
    return begin + 1;
  return 0;
}

static int marker_rec(void *arg, const peerstore_record *rec,
                      uint32_t writer) {
  breq *b = arg;

  (void)writer;
  if (rec->value_size == 1 && *(const char *)rec->value == 'b')
    b->begin = rec->revision;
  else if (rec->value_size == 1 && *(const char *)rec->value == 'e')
    b->end = rec->revision;
  return 0;
}

static void marker_done(void *arg, int status, int more) {
  breq *b = arg;
  server *s = b->c->srv;

  (void)more;
  ops(s)->iterate_close(b->cursor);
  if (status != 0) {
    /* Whether the batch was applied before is not known. */
    LOG_WARN("client %llu: cannot look up batch %s: %s",
             (unsigned long long)b->c->id, b->mkey,
             peerstore_strerror(status));
    reply(b, status, 0);
    return;
  }
  if (b->begin != 0) {
    s->stats.batches_repeated++;
    LOG_DEBUG("client %llu: batch %s was applied before; answering again",
              (unsigned long long)b->c->id, b->mkey);
    reply(b, 0, client_first(b, b->begin, b->end));
    return;
  }
  s->stats.batch_conflicts++;
  reply(b, PEERSTORE_ECONFLICT, 0);
}

/* A condition failed: this batch's own marker, or the client's. */
static void look_for_marker(breq *b) {
  server *s = b->c->srv;
  peerstore_plugin_filter f = {PEERSTORE_BATCH_SUBSYSTEM, &b->mpeer, b->mkey};
  int r;

  r = ops(s)->iterate_open(s->plugin.instance, &f, peerstore__now_us(),
                           &b->cursor);
  if (r == 0) {
    r = ops(s)->iterate_next(b->cursor, 4, marker_rec, marker_done, b);
    if (r == 0)
      return;
    ops(s)->iterate_close(b->cursor);
  }
  LOG_WARN("client %llu: cannot look up batch %s: %s",
           (unsigned long long)b->c->id, b->mkey, peerstore_strerror(r));
  reply(b, r, 0);
}

static void batch_done(void *arg, int status, uint64_t first, uint64_t last) {
  breq *b = arg;
  server *s = b->c->srv;

  if (status == 0) {
    s->stats.batches++;
    if (!b->has_id)
      reply(b, 0, first);
    else
      reply(b, 0, client_first(b, first, b->has_store ? 0 : last));
  } else if (status == PEERSTORE_ECONFLICT && b->has_id && s->stopping) {
    /* No lookup while the plugin is closing: the library sends the
     * batch again to the next service, which tells. */
    reply(b, PEERSTORE_ESHUTDOWN, 0);
  } else if (status == PEERSTORE_ECONFLICT && b->has_id) {
    look_for_marker(b);
  } else {
    if (status == PEERSTORE_ECONFLICT)
      s->stats.batch_conflicts++;
    reply(b, status, 0);
  }
}

/* ------------------------------------------------------------------ */
/* Decoding                                                            */

/* Copies s (NUL-terminated) into the arena. */
static const char *keep(char **arena, const char *s) {
  size_t n = strlen(s) + 1;
  char *p = *arena;

  memcpy(p, s, n);
  *arena += n;
  return p;
}

/* Decodes the client's operations into ops[], checking each against the
 * value limit and the write rules.  Returns 0, a status to answer the
 * batch with, or PEERSTORE_EPROTO (the client is failed). */
static int decode(client *c, peerstore__batch_rd *br, uint32_t count,
                  peerstore_plugin_batch_op *out, char *arena,
                  breq *b) {
  static peerstore__wop w; /* large; the loop is single-threaded */
  const config *cfg = c->srv->cfg;
  int refuse = 0;
  uint32_t i;

  for (i = 0; i < count; i++) {
    peerstore_plugin_batch_op *o = &out[i];
    const char *ss;

    if (peerstore__wire_batch_op(br, &w) != 0)
      return PEERSTORE_EPROTO;
    memset(o, 0, sizeof(*o));
    if (refuse != 0)
      continue; /* only checking that the rest is well-formed */
    switch (w.kind) {
    case PEERSTORE__BOP_STORE:
      o->kind = PEERSTORE_PLUGIN_BATCH_STORE;
      o->option = (enum peerstore_store_option)w.w.option;
      o->rec = w.w.rec;
      o->rec.subsystem = keep(&arena, w.w.subsystem);
      o->rec.key = keep(&arena, w.w.key);
      ss = o->rec.subsystem;
      b->has_store = 1;
      if (o->rec.value_size > cfg->max_value_size) {
        refuse = PEERSTORE_ETOOBIG;
        continue;
      }
      break;
    case PEERSTORE__BOP_REMOVE:
      o->kind = PEERSTORE_PLUGIN_BATCH_REMOVE;
      filter_to_plugin(&w.f, &o->filter);
      o->filter.subsystem = keep(&arena, w.f.subsystem);
      if (w.f.has_key)
        o->filter.key = keep(&arena, w.f.key);
      if (w.f.has_peer) {
        /* The peer lives in the op itself (rec is unused by a remove). */
        o->rec.peer = w.f.peer;
        o->filter.peer = &o->rec.peer;
      }
      ss = o->filter.subsystem;
      break;
    default: /* REQUIRE: a read, which needs no right */
      o->kind = PEERSTORE_PLUGIN_BATCH_REQUIRE;
      o->rec.peer = w.w.rec.peer;
      o->filter.subsystem = keep(&arena, w.w.subsystem);
      o->filter.key = keep(&arena, w.w.key);
      o->filter.peer = &o->rec.peer;
      o->revision = w.w.rec.revision;
      continue;
    }
    if (!dispatch_may_write(c, ss))
      refuse = PEERSTORE_EACCES;
  }
  return refuse;
}

/* The marker operations (see the top of this file). */
static void marker_op(peerstore_plugin_batch_op *o,
                      enum peerstore_plugin_batch_kind kind, breq *b,
                      const char *value, uint64_t expiry) {
  memset(o, 0, sizeof(*o));
  o->kind = kind;
  if (kind == PEERSTORE_PLUGIN_BATCH_REQUIRE) {
    o->filter.subsystem = PEERSTORE_BATCH_SUBSYSTEM;
    o->filter.peer = &b->mpeer;
    o->filter.key = b->mkey;
    return;
  }
  o->option = PEERSTORE_MULTIPLE;
  o->rec.subsystem = PEERSTORE_BATCH_SUBSYSTEM;
  o->rec.peer = b->mpeer;
  o->rec.key = b->mkey;
  o->rec.value = value;
  o->rec.value_size = 1;
  o->rec.expiry = expiry;
}

static void set_marker(breq *b, const uint8_t *id, uint32_t uid) {
  static const char hex[] = "0123456789abcdef";
  size_t i;

  memset(&b->mpeer, 0, sizeof(b->mpeer));
  b->mpeer.bytes[0] = (uint8_t)(uid >> 24);
  b->mpeer.bytes[1] = (uint8_t)(uid >> 16);
  b->mpeer.bytes[2] = (uint8_t)(uid >> 8);
  b->mpeer.bytes[3] = (uint8_t)uid;
  for (i = 0; i < PEERSTORE_BATCH_ID_SIZE; i++) {
    b->mkey[2 * i] = hex[id[i] >> 4];
    b->mkey[2 * i + 1] = hex[id[i] & 15];
  }
  b->mkey[2 * PEERSTORE_BATCH_ID_SIZE] = '\0';
}

static int answer_now(client *c, uint32_t request, int status) {
  uint64_t zero = 0;

  if (status == PEERSTORE_ELIMIT)
    c->srv->stats.limited++;
  dispatch_reply(c, PEERSTORE_MSG_BATCH_RESULT, request, status, &zero);
  return 0;
}

int batch_start(client *c, const peerstore__header *h, const uint8_t *body) {
  static const uint8_t no_id[PEERSTORE_BATCH_ID_SIZE];
  server *s = c->srv;
  uint8_t id[PEERSTORE_BATCH_ID_SIZE];
  peerstore__batch_rd br;
  peerstore_plugin_batch_op *o;
  uint32_t count;
  size_t n = 0, at;
  breq *b;
  int r;

  if (c->version < 3 ||
      peerstore__wire_batch(body, h->body_len, id, &count, &br) != 0)
    return PEERSTORE_EPROTO;
  /* Every operation takes at least 5 bytes (a remove of a one-byte
   * subsystem): a count beyond that is a lie, refused before it sizes
   * anything. */
  if (count > br.left / 5)
    return PEERSTORE_EPROTO;
  if (count > s->cfg->batch_max_ops) {
    LOG_INFO("client %llu: batch refused: %u operations, over "
             "batch_max_ops (%u)",
             (unsigned long long)c->id, (unsigned)count,
             (unsigned)s->cfg->batch_max_ops);
    return answer_now(c, h->request, PEERSTORE_ELIMIT);
  }
  if (s->stopping)
    return answer_now(c, h->request, PEERSTORE_ESHUTDOWN);
  if (ops(s)->batch == NULL)
    return answer_now(c, h->request, PEERSTORE_EPLUGIN);
  /* Room for the client's operations and three of the service's, and for
   * every string of the body with its NUL. */
  at = (count + 3) * sizeof(*o);
  if ((b = calloc(1, sizeof(*b))) == NULL ||
      (o = malloc(at + br.left + 2 * (size_t)count + 1)) == NULL) {
    free(b);
    return PEERSTORE_ENOMEM;
  }
  b->c = c;
  b->request = h->request;
  b->has_id = memcmp(id, no_id, sizeof(id)) != 0;
  if (b->has_id) {
    uint64_t expiry = peerstore__now_us() + s->cfg->batch_retry_window_ms * 1000;

    set_marker(b, id, (uint32_t)c->uid);
    marker_op(&o[n++], PEERSTORE_PLUGIN_BATCH_REQUIRE, b, NULL, 0);
    marker_op(&o[n++], PEERSTORE_PLUGIN_BATCH_STORE, b, "b", expiry);
  }
  r = decode(c, &br, count, o + n, (char *)o + at, b);
  if (r == PEERSTORE_EPROTO) {
    free(o);
    free(b);
    return r;
  }
  if (r != 0) {
    free(o);
    free(b);
    return answer_now(c, h->request, r);
  }
  n += count;
  if (b->has_id && !b->has_store)
    marker_op(&o[n++], PEERSTORE_PLUGIN_BATCH_STORE, b, "e",
              o[1].rec.expiry);
  b->bytes = h->body_len;
  dispatch_request_begin(c, b->bytes);
  r = ops(s)->batch(s->plugin.instance, o, n, (uint32_t)c->uid, batch_done,
                    b);
  free(o); /* the plugin has copied what it keeps */
  if (r != 0) /* not started: no callback will come */
    batch_done(b, r, 0, 0);
  return 0;
}
