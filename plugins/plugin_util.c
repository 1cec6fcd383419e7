/* plugin_util.c - see plugin_util.h. */
#include <stdlib.h>
#include <string.h>

#include "plugin_util.h"

int ps_filt_copy(ps_filt *d, const peerstore_plugin_filter *f) {
  memset(d, 0, sizeof(*d));
  d->subsystem = strdup(f->subsystem);
  if (f->key != NULL)
    d->key = strdup(f->key);
  if (f->peer != NULL) {
    d->peer = *f->peer;
    d->has_peer = 1;
  }
  return (d->subsystem == NULL || (f->key != NULL && d->key == NULL))
             ? PEERSTORE_ENOMEM
             : 0;
}

void ps_filt_free(ps_filt *f) {
  free(f->subsystem);
  free(f->key);
}

int ps_filt_kind(const ps_filt *f) {
  return f->has_peer ? (f->key ? F_TRIPLE : F_PEER) : (f->key ? F_KEY : F_SS);
}

/* Appends n bytes (and a NUL if nul) to the byte area; *off is where. */
static int rbuf_put(ps_rbuf *b, const void *p, size_t n, int nul,
                    size_t *off) {
  size_t need = b->bytes_len + n + (size_t)nul;

  if (need > b->bytes_cap) {
    size_t cap = b->bytes_cap ? b->bytes_cap : 4096;
    uint8_t *nb;
    while (cap < need)
      cap *= 2;
    if ((nb = realloc(b->bytes, cap)) == NULL)
      return PEERSTORE_ENOMEM;
    b->bytes = nb;
    b->bytes_cap = cap;
  }
  *off = b->bytes_len;
  if (n > 0)
    memcpy(b->bytes + b->bytes_len, p, n);
  if (nul)
    b->bytes[b->bytes_len + n] = 0;
  b->bytes_len = need;
  return 0;
}

static int rbuf_grow(ps_rbuf *b) {
  size_t cap = b->cap ? b->cap * 2 : 16;
  peerstore_record *recs;
  uint32_t *writers;
  uint64_t *revs;
  uint8_t *kinds;

  if ((recs = realloc(b->recs, cap * sizeof(*recs))) == NULL)
    return PEERSTORE_ENOMEM;
  b->recs = recs;
  if ((writers = realloc(b->writers, cap * sizeof(*writers))) == NULL)
    return PEERSTORE_ENOMEM;
  b->writers = writers;
  if ((revs = realloc(b->revs, cap * sizeof(*revs))) == NULL)
    return PEERSTORE_ENOMEM;
  b->revs = revs;
  if ((kinds = realloc(b->kinds, cap * sizeof(*kinds))) == NULL)
    return PEERSTORE_ENOMEM;
  b->kinds = kinds;
  b->cap = cap;
  return 0;
}

int ps_rbuf_add(ps_rbuf *b, uint64_t rev, int kind, uint64_t stored,
                const void *ss, size_t ss_n, const uint8_t *peer,
                const void *key, size_t key_n, const void *value,
                size_t value_n, uint64_t expiry, uint32_t writer) {
  peerstore_record *r;
  size_t o_ss, o_key, o_val;

  if ((b->n == b->cap && rbuf_grow(b) != 0) ||
      rbuf_put(b, ss, ss_n, 1, &o_ss) || rbuf_put(b, key, key_n, 1, &o_key) ||
      rbuf_put(b, value, value_n, 0, &o_val))
    return PEERSTORE_ENOMEM;
  r = &b->recs[b->n];
  r->revision = stored;
  memcpy(r->peer.bytes, peer, PEERSTORE_PEER_ID_SIZE);
  r->subsystem = (const char *)(uintptr_t)o_ss;
  r->key = (const char *)(uintptr_t)o_key;
  r->value = (const void *)(uintptr_t)o_val;
  r->value_size = value_n;
  r->expiry = expiry;
  b->writers[b->n] = writer;
  b->revs[b->n] = rev;
  b->kinds[b->n] = (uint8_t)kind;
  b->n++;
  return 0;
}

int ps_rbuf_rec(ps_rbuf *b, const peerstore_record *rec, uint32_t writer) {
  return ps_rbuf_add(b, 0, PEERSTORE_CHANGE_STORE, rec->revision,
                     rec->subsystem, strlen(rec->subsystem), rec->peer.bytes,
                     rec->key, strlen(rec->key), rec->value, rec->value_size,
                     rec->expiry, writer);
}

void ps_rbuf_fixup(ps_rbuf *b) {
  size_t i;

  for (i = 0; i < b->n; i++) {
    peerstore_record *r = &b->recs[i];
    r->subsystem = (const char *)b->bytes + (uintptr_t)r->subsystem;
    r->key = (const char *)b->bytes + (uintptr_t)r->key;
    r->value = b->bytes + (uintptr_t)r->value;
  }
}

void ps_rbuf_free(ps_rbuf *b) {
  free(b->recs);
  free(b->writers);
  free(b->revs);
  free(b->kinds);
  free(b->bytes);
}

void ps_rbuf_change(const ps_rbuf *b, size_t i, peerstore_plugin_change *ch) {
  ch->kind = (enum peerstore_plugin_change_kind)b->kinds[i];
  ch->revision = b->revs[i];
  ch->rec = &b->recs[i];
  ch->writer = b->writers[i];
  ch->flags = 0;
}

int ps_batch_check(const peerstore_plugin_batch_op *ops, size_t n) {
  size_t i;

  for (i = 0; i < n; i++) {
    if (ops[i].kind == PEERSTORE_PLUGIN_BATCH_REQUIRE
            ? ops[i].filter.peer == NULL || ops[i].filter.key == NULL
            : ops[i].kind != PEERSTORE_PLUGIN_BATCH_STORE &&
                  ops[i].kind != PEERSTORE_PLUGIN_BATCH_REMOVE)
      return PEERSTORE_EINVAL;
  }
  return 0;
}

static size_t str_bytes(const char *p) {
  return p != NULL ? strlen(p) + 1 : 0;
}

/* Copies the string *field to d, points *field at the copy; returns the
 * end of the copy. */
static char *copy_str(const char **field, char *d) {
  size_t n;

  if (*field == NULL)
    return d;
  n = strlen(*field) + 1;
  memcpy(d, *field, n);
  *field = d;
  return d + n;
}

int ps_batch_copy(const peerstore_plugin_batch_op *ops, size_t n,
                  peerstore_plugin_batch_op **ops_out, char **data_out) {
  peerstore_plugin_batch_op *o;
  size_t i, bytes = 0;
  char *data, *d;

  for (i = 0; i < n; i++)
    bytes += str_bytes(ops[i].rec.subsystem) + str_bytes(ops[i].rec.key) +
             ops[i].rec.value_size + str_bytes(ops[i].filter.subsystem) +
             str_bytes(ops[i].filter.key) + sizeof(peerstore_peer_id);
  o = calloc(n ? n : 1, sizeof(*o));
  data = d = malloc(bytes ? bytes : 1);
  if (o == NULL || data == NULL) {
    free(o);
    free(data);
    return PEERSTORE_ENOMEM;
  }
  for (i = 0; i < n; i++) {
    o[i] = ops[i];
    d = copy_str(&o[i].rec.subsystem, d);
    d = copy_str(&o[i].rec.key, d);
    d = copy_str(&o[i].filter.subsystem, d);
    d = copy_str(&o[i].filter.key, d);
    if (o[i].rec.value_size > 0) {
      memcpy(d, o[i].rec.value, o[i].rec.value_size);
      o[i].rec.value = d;
      d += o[i].rec.value_size;
    } else {
      o[i].rec.value = ""; /* an empty blob, never SQL NULL */
    }
    if (o[i].filter.peer != NULL) {
      memcpy(d, o[i].filter.peer, sizeof(peerstore_peer_id));
      o[i].filter.peer = (const peerstore_peer_id *)(void *)d;
      d += sizeof(peerstore_peer_id);
    }
  }
  *ops_out = o;
  *data_out = data;
  return 0;
}

/* ------------------------------------------------------------------ */
/* Jobs                                                                */

job *ps_job_store(const peerstore_record *rec, uint32_t writer,
                  enum peerstore_store_option option,
                  peerstore_plugin_store_cb cb, void *arg) {
  size_t ssn = strlen(rec->subsystem) + 1, kn = strlen(rec->key) + 1;
  job *j;

  if ((j = calloc(1, sizeof(*j))) == NULL)
    return NULL;
  /* One allocation holds the strings and the value. */
  if ((j->u.store.data = malloc(ssn + kn + rec->value_size + 1)) == NULL) {
    free(j);
    return NULL;
  }
  j->kind = J_STORE;
  j->arg = arg;
  j->u.store.cb = cb;
  j->u.store.option = (uint8_t)option;
  j->u.store.writer = writer;
  j->u.store.rec = *rec;
  memcpy(j->u.store.data, rec->subsystem, ssn);
  memcpy(j->u.store.data + ssn, rec->key, kn);
  if (rec->value_size > 0)
    memcpy(j->u.store.data + ssn + kn, rec->value, rec->value_size);
  j->u.store.rec.subsystem = j->u.store.data;
  j->u.store.rec.key = j->u.store.data + ssn;
  j->u.store.rec.value = j->u.store.data + ssn + kn;
  return j;
}

job *ps_job_count(enum job_kind kind, const peerstore_plugin_filter *f,
                  uint64_t now, uint32_t max, peerstore_plugin_count_cb cb,
                  void *arg) {
  job *j;

  if ((j = calloc(1, sizeof(*j))) == NULL)
    return NULL;
  j->kind = kind;
  j->arg = arg;
  j->u.count.cb = cb;
  j->u.count.now = now;
  j->u.count.max = max;
  if (f != NULL && ps_filt_copy(&j->u.count.f, f) != 0) {
    ps_job_free(j);
    return NULL;
  }
  return j;
}

job *ps_job_hist(const peerstore_plugin_filter *f, uint64_t after,
                 uint32_t max, peerstore_plugin_change_cb ev_cb,
                 peerstore_plugin_history_cb done_cb, void *arg) {
  job *j;

  if ((j = calloc(1, sizeof(*j))) == NULL)
    return NULL;
  j->kind = J_HIST;
  if (ps_filt_copy(&j->u.hist.f, f) != 0) {
    ps_job_free(j);
    return NULL;
  }
  j->arg = arg;
  j->u.hist.after = after;
  j->u.hist.max = max < RECORD_BATCH_MAX ? max : RECORD_BATCH_MAX;
  j->u.hist.ev_cb = ev_cb;
  j->u.hist.done_cb = done_cb;
  return j;
}

job *ps_job_batch(const peerstore_plugin_batch_op *ops, size_t n,
                  uint32_t writer, peerstore_plugin_batch_cb cb, void *arg) {
  job *j;

  if ((j = calloc(1, sizeof(*j))) == NULL)
    return NULL;
  j->kind = J_BATCH;
  if (ps_batch_copy(ops, n, &j->u.batch.ops, &j->u.batch.data) != 0) {
    free(j);
    return NULL;
  }
  j->u.batch.n = n;
  j->arg = arg;
  j->u.batch.writer = writer;
  j->u.batch.cb = cb;
  return j;
}

static void cursor_free(peerstore_plugin_cursor *c) {
  ps_filt_free(&c->f);
  free(c);
}

int ps_cursor_open(void *s, const peerstore_plugin_filter *f, uint64_t now,
                   peerstore_plugin_cursor **cursor, job **open) {
  peerstore_plugin_cursor *c = calloc(1, sizeof(*c));
  job *j = calloc(1, sizeof(*j));

  if (c == NULL || j == NULL || ps_filt_copy(&c->f, f) != 0) {
    free(j);
    if (c != NULL)
      cursor_free(c);
    return PEERSTORE_ENOMEM;
  }
  c->s = s;
  c->now = now;
  c->open_pending = 1;
  j->kind = J_OPEN;
  j->u.next.cursor = c;
  *cursor = c;
  *open = j;
  return 0;
}

int ps_job_next(peerstore_plugin_cursor *c, uint32_t max,
                peerstore_plugin_record_cb rec_cb,
                peerstore_plugin_next_cb done_cb, void *arg, job **out) {
  job *j;

  *out = NULL;
  if (c->done) {
    done_cb(arg, 0, 0);
    return 0;
  }
  if ((j = calloc(1, sizeof(*j))) == NULL)
    return PEERSTORE_ENOMEM;
  j->kind = J_NEXT;
  j->arg = arg;
  j->u.next.cursor = c;
  j->u.next.from = c->after; /* only this job moves it, on the worker */
  j->u.next.max = max < RECORD_BATCH_MAX ? max : RECORD_BATCH_MAX;
  j->u.next.rec_cb = rec_cb;
  j->u.next.done_cb = done_cb;
  *out = j;
  return 0;
}

void ps_cursor_close(peerstore_plugin_cursor *c) {
  if (c->open_pending)
    c->closed = 1; /* the worker still refers to it */
  else
    cursor_free(c);
}

void ps_job_free(job *j) {
  ps_rbuf_free(&j->changes);
  switch (j->kind) {
  case J_STORE:
    free(j->u.store.data);
    ps_rbuf_free(&j->u.store.gone);
    break;
  case J_NEXT:
    ps_rbuf_free(&j->u.next.out);
    break;
  case J_REMOVE:
  case J_PURGE:
    ps_filt_free(&j->u.count.f);
    ps_rbuf_free(&j->u.count.gone);
    break;
  case J_HIST:
    ps_filt_free(&j->u.hist.f);
    ps_rbuf_free(&j->u.hist.out);
    break;
  case J_BATCH:
    free(j->u.batch.ops);
    free(j->u.batch.data);
    ps_rbuf_free(&j->u.batch.changes);
    break;
  case J_OPEN:
  case J_FEED:
    break;
  }
  free(j);
}

typedef void (*changed_fn)(void *ctx, const peerstore_plugin_change *ch);

/* Reports the changes in b through the hook. */
static void report(ps_rbuf *b, changed_fn changed, void *ctx) {
  peerstore_plugin_change ch;
  size_t i;

  ps_rbuf_fixup(b);
  for (i = 0; i < b->n; i++) {
    ps_rbuf_change(b, i, &ch);
    changed(ctx, &ch);
  }
}

/* A batch of records for the service, until it says it holds enough:
 * the rest is read again by the next iterate_next. */
static void complete_next(job *j) {
  ps_rbuf *b = &j->u.next.out;
  peerstore_plugin_cursor *c = j->u.next.cursor;
  size_t i;

  if (j->status == 0) {
    ps_rbuf_fixup(b);
    for (i = 0; i < b->n; i++) {
      if (j->u.next.rec_cb(j->arg, &b->recs[i], b->writers[i]) &&
          i + 1 < b->n) {
        c->after = b->recs[i].revision;
        j->u.next.more = 1;
        break;
      }
    }
    c->done = !j->u.next.more;
  }
  j->u.next.done_cb(j->arg, j->status, j->status == 0 && j->u.next.more);
}

static void complete_hist(job *j) {
  ps_rbuf *b = &j->u.hist.out;
  peerstore_plugin_change ch;
  uint64_t reached = j->u.hist.reached;
  int more = j->u.hist.more;
  size_t i;

  if (j->status == 0) {
    ps_rbuf_fixup(b);
    for (i = 0; i < b->n; i++) {
      ps_rbuf_change(b, i, &ch);
      if (j->u.hist.ev_cb(j->arg, &ch) && i + 1 < b->n) {
        reached = b->revs[i];
        more = 1;
        break;
      }
    }
  }
  j->u.hist.done_cb(j->arg, j->status, j->status ? 0 : reached,
                    j->status == 0 && more);
}

static void complete(job *j, changed_fn changed, void *ctx) {
  peerstore_plugin_change ch;

  if (j->lost > 0) {
    memset(&ch, 0, sizeof(ch));
    ch.kind = PEERSTORE_CHANGE_LOST;
    ch.revision = j->lost;
    changed(ctx, &ch);
  }
  report(&j->changes, changed, ctx);
  switch (j->kind) {
  case J_STORE:
    if (j->status == 0) {
      memset(&ch, 0, sizeof(ch));
      ch.kind = PEERSTORE_CHANGE_STORE;
      ch.revision = j->u.store.rec.revision;
      ch.rec = &j->u.store.rec;
      ch.writer = j->u.store.writer;
      changed(ctx, &ch);
      report(&j->u.store.gone, changed, ctx);
    }
    j->u.store.cb(j->arg, j->status, j->status ? NULL : &j->u.store.rec);
    break;
  case J_OPEN: {
    peerstore_plugin_cursor *c = j->u.next.cursor;
    c->open_pending = 0;
    if (c->closed)
      cursor_free(c);
    break;
  }
  case J_NEXT:
    complete_next(j);
    break;
  case J_REMOVE:
  case J_PURGE:
    if (j->status == 0)
      report(&j->u.count.gone, changed, ctx);
    if (!j->u.count.partial)
      j->u.count.cb(j->arg, j->status, j->status ? 0 : j->u.count.count);
    break;
  case J_BATCH:
    if (j->status == 0)
      report(&j->u.batch.changes, changed, ctx);
    j->u.batch.cb(j->arg, j->status, j->status ? 0 : j->u.batch.first,
                  j->status ? 0 : j->u.batch.last);
    break;
  case J_HIST:
    complete_hist(j);
    break;
  case J_FEED:
    break;
  }
  ps_job_free(j);
}

void ps_jobs_complete(job *list, changed_fn changed, void *ctx) {
  job *next;

  for (; list != NULL; list = next) {
    next = list->next;
    complete(list, changed, ctx);
  }
}

void ps_jobs_drain(uv_mutex_t *lock, jobq *done,
                   void (*changed)(void *ctx,
                                   const peerstore_plugin_change *ch),
                   void *ctx) {
  job *j;

  uv_mutex_lock(lock);
  j = done->head;
  done->head = done->tail = NULL;
  uv_mutex_unlock(lock);
  ps_jobs_complete(j, changed, ctx);
}

void ps_jobq_push(jobq *q, job *j) {
  j->next = NULL;
  if (q->tail != NULL)
    q->tail->next = j;
  else
    q->head = j;
  q->tail = j;
}
