/* ops.c - the public operations: store, iterate, watch, remove, stats,
 * batches, backup.
 *
 * Each call checks its arguments, makes an operation with room for its
 * request, encodes the request there and starts it; client.c sends it
 * (again after a reconnect) and routes the replies.
 */
#include <stdlib.h>
#include <string.h>

#include "client_int.h"

struct peerstore_store_op {
  ps_op op;
};
struct peerstore_iterate_op {
  ps_op op;
};
struct peerstore_watch_op {
  ps_op op;
};
struct peerstore_remove_op {
  ps_op op;
};
struct peerstore_stats_op {
  ps_op op;
};

uint32_t peerstore_record_writer(const peerstore_record *rec) {
  /* Records reach callbacks only from inside a decoded RECORD frame. */
  const peerstore__wrec *w =
      (const peerstore__wrec *)(const void *)((const char *)rec -
                                              offsetof(peerstore__wrec, rec));
  return w->writer;
}

/* 1 if s is a string of 1..max bytes (reading at most max + 1). */
static int str_ok(const char *s, size_t max) {
  size_t n;

  if (s == NULL)
    return 0;
  n = strnlen(s, max + 1);
  return n >= 1 && n <= max;
}

static int filter_ok(peerstore_client *c, const char *subsystem,
                     const char *key) {
  return c != NULL && !peerstore__client_closed(c) &&
         str_ok(subsystem, PEERSTORE_SUBSYSTEM_MAX) &&
         (key == NULL || str_ok(key, PEERSTORE_KEY_MAX));
}

/* A new op of kind with its filter request encoded; NULL on failure. */
static ps_op *filter_op(peerstore_client *c, enum ps_op_kind kind,
                        size_t size, uint16_t type, const char *subsystem,
                        const peerstore_peer_id *peer, const char *key,
                        void *arg) {
  ps_op *op;

  if (!filter_ok(c, subsystem, key))
    return NULL;
  op = peerstore__op_new(c, kind, size,
                         peerstore__len_filter(type, subsystem, peer, key),
                         arg);
  /* The frame has exactly the room it needs: encoding cannot fail. */
  if (op != NULL)
    peerstore__put_filter(&op->frame, type, op->request, subsystem, peer,
                          key, PEERSTORE_CREDIT_WINDOW);
  return op;
}

peerstore_store_op *peerstore_store(peerstore_client *c, const char *subsystem,
                                    const peerstore_peer_id *peer,
                                    const char *key, const void *value,
                                    size_t size, uint64_t expiry,
                                    enum peerstore_store_option option,
                                    peerstore_store_cb cb, void *arg) {
  ps_op *op;

  if (!filter_ok(c, subsystem, key) || key == NULL || peer == NULL ||
      (value == NULL && size > 0) || size > PEERSTORE_VALUE_MAX_HARD ||
      (option != PEERSTORE_MULTIPLE && option != PEERSTORE_REPLACE))
    return NULL;
  op = peerstore__op_new(c, OP_STORE, sizeof(peerstore_store_op),
                         peerstore__len_store(subsystem, key, size), arg);
  if (op == NULL)
    return NULL;
  peerstore__put_store(&op->frame, op->request, subsystem, peer, key, value,
                       size, expiry, (uint8_t)option);
  op->cb.store = cb;
  peerstore__op_start(c, op);
  return (peerstore_store_op *)op;
}

void peerstore_store_cancel(peerstore_store_op *op) {
  if (op != NULL)
    peerstore__op_cancel(&op->op);
}

void peerstore_store_set_timeout(peerstore_store_op *op, uint64_t ms) {
  if (op != NULL)
    peerstore__op_set_timeout(&op->op, ms);
}

peerstore_iterate_op *peerstore_iterate(peerstore_client *c,
                                        const char *subsystem,
                                        const peerstore_peer_id *peer,
                                        const char *key,
                                        peerstore_record_cb cb, void *arg) {
  ps_op *op;

  if (cb == NULL)
    return NULL;
  op = filter_op(c, OP_ITERATE, sizeof(peerstore_iterate_op),
                 PEERSTORE_MSG_ITERATE, subsystem, peer, key, arg);
  if (op == NULL)
    return NULL;
  op->cb.record = cb;
  peerstore__op_start(c, op);
  return (peerstore_iterate_op *)op;
}

void peerstore_iterate_cancel(peerstore_iterate_op *op) {
  if (op != NULL)
    peerstore__op_cancel(&op->op);
}

void peerstore_iterate_set_timeout(peerstore_iterate_op *op, uint64_t ms) {
  if (op != NULL)
    peerstore__op_set_timeout(&op->op, ms);
}

/* Both kinds of watch: a WATCH_EX request, whose resume point the client
 * sets again before each resend. */
static ps_op *watch_op(peerstore_client *c, const char *subsystem,
                       const peerstore_peer_id *peer, const char *key,
                       unsigned flags, uint64_t from, void *arg) {
  ps_op *op;

  if (!filter_ok(c, subsystem, key))
    return NULL;
  op = peerstore__op_new(c, OP_WATCH, sizeof(peerstore_watch_op),
                         peerstore__len_watch_ex(subsystem, peer, key), arg);
  if (op == NULL)
    return NULL;
  peerstore__put_watch_ex(&op->frame, op->request, subsystem, peer, key,
                          flags, from, 0);
  op->resume = from;
  op->snapshot = (flags & PEERSTORE_WATCH_SNAPSHOT) != 0;
  /* A resume begins past its snapshot: the caller holds the state at
   * `from`.  Only a RESET from the service starts a snapshot again. */
  op->synced = from > 0;
  return op;
}

peerstore_watch_op *peerstore_watch(peerstore_client *c, const char *subsystem,
                                    const peerstore_peer_id *peer,
                                    const char *key, peerstore_record_cb cb,
                                    void *arg) {
  ps_op *op;

  if (cb == NULL)
    return NULL;
  op = watch_op(c, subsystem, peer, key, 0, 0, arg);
  if (op == NULL)
    return NULL;
  op->cb.record = cb;
  peerstore__op_start(c, op);
  return (peerstore_watch_op *)op;
}

peerstore_watch_op *peerstore_watch_ex(peerstore_client *c,
                                       const char *subsystem,
                                       const peerstore_peer_id *peer,
                                       const char *key,
                                       const peerstore_watch_opts *opts,
                                       peerstore_event_cb cb, void *arg) {
  static const peerstore_watch_opts none;
  ps_op *op;
  size_t i;

  if (opts == NULL)
    opts = &none;
  if (cb == NULL ||
      (opts->flags & ~(unsigned)(PEERSTORE_WATCH_SNAPSHOT |
                                 PEERSTORE_WATCH_REMOVALS)) != 0)
    return NULL;
  for (i = 0; i < sizeof(opts->reserved) / sizeof(opts->reserved[0]); i++)
    if (opts->reserved[i] != NULL)
      return NULL;
  op = watch_op(c, subsystem, peer, key, opts->flags, opts->from_revision,
                arg);
  if (op == NULL)
    return NULL;
  op->ex = 1;
  op->cb.event = cb;
  peerstore__op_start(c, op);
  return (peerstore_watch_op *)op;
}

uint64_t peerstore_watch_revision(const peerstore_watch_op *op) {
  return op != NULL ? op->op.revision : 0;
}

void peerstore_watch_cancel(peerstore_watch_op *op) {
  if (op != NULL)
    peerstore__op_cancel(&op->op);
}

peerstore_remove_op *peerstore_remove(peerstore_client *c,
                                      const char *subsystem,
                                      const peerstore_peer_id *peer,
                                      const char *key, peerstore_remove_cb cb,
                                      void *arg) {
  ps_op *op = filter_op(c, OP_REMOVE, sizeof(peerstore_remove_op),
                        PEERSTORE_MSG_REMOVE, subsystem, peer, key, arg);

  if (op == NULL)
    return NULL;
  op->cb.remove = cb;
  peerstore__op_start(c, op);
  return (peerstore_remove_op *)op;
}

void peerstore_remove_set_timeout(peerstore_remove_op *op, uint64_t ms) {
  if (op != NULL)
    peerstore__op_set_timeout(&op->op, ms);
}

peerstore_stats_op *peerstore_stats(peerstore_client *c, peerstore_stats_cb cb,
                                    void *arg) {
  ps_op *op;

  if (c == NULL || cb == NULL || peerstore__client_closed(c))
    return NULL;
  op = peerstore__op_new(c, OP_STATS, sizeof(peerstore_stats_op),
                         PEERSTORE_HEADER_SIZE, arg);
  if (op == NULL)
    return NULL;
  peerstore__put_empty(&op->frame, PEERSTORE_MSG_STATS, op->request);
  op->cb.stats = cb;
  peerstore__op_start(c, op);
  return (peerstore_stats_op *)op;
}

/* ------------------------------------------------------------------ */
/* Backup                                                              */

struct peerstore_backup_op {
  ps_backup_op b;
};

peerstore_backup_op *peerstore_backup(peerstore_client *c,
                                      peerstore_backup_data_cb data_cb,
                                      peerstore_backup_done_cb done_cb,
                                      void *arg) {
  ps_op *op;

  if (c == NULL || data_cb == NULL || done_cb == NULL ||
      peerstore__client_closed(c))
    return NULL;
  op = peerstore__op_new(c, OP_BACKUP, sizeof(peerstore_backup_op),
                         PEERSTORE_HEADER_SIZE + 4, arg);
  if (op == NULL)
    return NULL;
  peerstore__put_u32(&op->frame, PEERSTORE_MSG_BACKUP, op->request,
                     PEERSTORE_BACKUP_WINDOW);
  op->cb.backup = done_cb;
  ((ps_backup_op *)op)->data = data_cb;
  peerstore__op_start(c, op);
  return (peerstore_backup_op *)op;
}

void peerstore_backup_cancel(peerstore_backup_op *op) {
  if (op != NULL)
    peerstore__op_cancel(&op->b.op);
}

void peerstore_backup_set_timeout(peerstore_backup_op *op, uint64_t ms) {
  if (op != NULL)
    peerstore__op_set_timeout(&op->b.op, ms);
}

/* ------------------------------------------------------------------ */
/* Batches                                                             */

struct peerstore_batch {
  peerstore_client *c; /* NULL once the client is freed */
  struct peerstore_batch *prev, *next; /* the client's builders */
  peerstore__buf ops; /* the operations, encoded as they are added */
  uint32_t count;
};

struct peerstore_batch_op {
  ps_op op;
};

peerstore_batch *peerstore_batch_new(peerstore_client *c) {
  peerstore_batch *b;

  if (c == NULL || peerstore__client_closed(c) ||
      (b = calloc(1, sizeof(*b))) == NULL)
    return NULL;
  b->c = c;
  b->next = c->builders;
  if (c->builders != NULL)
    c->builders->prev = b;
  c->builders = b;
  return b;
}

void peerstore__batches_orphan(peerstore_client *c) {
  peerstore_batch *b;

  while ((b = c->builders) != NULL) {
    c->builders = b->next;
    b->c = NULL;
    b->prev = b->next = NULL;
  }
}

/* 0 if `adding` more bytes of operations still make a message the
 * protocol carries. */
static int batch_room(const peerstore_batch *b, size_t adding) {
  if (b->count == UINT32_MAX ||
      peerstore__len_batch(b->ops.len + adding) - PEERSTORE_HEADER_SIZE >
          PEERSTORE_MSG_MAX)
    return PEERSTORE_ELIMIT;
  return 0;
}

/* Counts an operation that was appended (r == 0). */
static int batch_added(peerstore_batch *b, int r) {
  if (r == 0)
    b->count++;
  return r;
}

int peerstore_batch_store(peerstore_batch *b, const char *subsystem,
                          const peerstore_peer_id *peer, const char *key,
                          const void *value, size_t size, uint64_t expiry,
                          enum peerstore_store_option option) {
  int r;

  if (b == NULL || !str_ok(subsystem, PEERSTORE_SUBSYSTEM_MAX) ||
      !str_ok(key, PEERSTORE_KEY_MAX) || peer == NULL ||
      (value == NULL && size > 0) || size > PEERSTORE_VALUE_MAX_HARD ||
      (option != PEERSTORE_MULTIPLE && option != PEERSTORE_REPLACE))
    return PEERSTORE_EINVAL;
  if ((r = batch_room(b, peerstore__len_bop_store(subsystem, key, size))))
    return r;
  return batch_added(b, peerstore__put_bop_store(&b->ops, subsystem, peer,
                                                 key, value, size, expiry,
                                                 (uint8_t)option));
}

int peerstore_batch_remove(peerstore_batch *b, const char *subsystem,
                           const peerstore_peer_id *peer, const char *key) {
  int r;

  if (b == NULL || !str_ok(subsystem, PEERSTORE_SUBSYSTEM_MAX) ||
      (key != NULL && !str_ok(key, PEERSTORE_KEY_MAX)))
    return PEERSTORE_EINVAL;
  if ((r = batch_room(b, peerstore__len_bop_filter(subsystem, peer, key))))
    return r;
  return batch_added(b,
                     peerstore__put_bop_remove(&b->ops, subsystem, peer, key));
}

int peerstore_batch_require(peerstore_batch *b, const char *subsystem,
                            const peerstore_peer_id *peer, const char *key,
                            uint64_t revision) {
  int r;

  if (b == NULL || !str_ok(subsystem, PEERSTORE_SUBSYSTEM_MAX) ||
      !str_ok(key, PEERSTORE_KEY_MAX) || peer == NULL)
    return PEERSTORE_EINVAL;
  if ((r = batch_room(b, peerstore__len_bop_require(subsystem, key))))
    return r;
  return batch_added(b, peerstore__put_bop_require(&b->ops, subsystem, peer,
                                                   key, revision));
}

void peerstore_batch_discard(peerstore_batch *b) {
  if (b == NULL)
    return;
  if (b->c != NULL) {
    if (b->prev != NULL)
      b->prev->next = b->next;
    else
      b->c->builders = b->next;
    if (b->next != NULL)
      b->next->prev = b->prev;
  }
  peerstore__buf_free(&b->ops);
  free(b);
}

peerstore_batch_op *peerstore_batch_commit(peerstore_batch *b,
                                           peerstore_batch_cb cb, void *arg) {
  peerstore_client *c;
  uint8_t id[PEERSTORE_BATCH_ID_SIZE];
  uint64_t seq;
  ps_op *op;
  int i;

  if (b == NULL)
    return NULL;
  c = b->c;
  op = c == NULL || peerstore__client_closed(c)
           ? NULL
           : peerstore__op_new(c, OP_BATCH, sizeof(peerstore_batch_op),
                               peerstore__len_batch(b->ops.len), arg);
  if (op == NULL) {
    peerstore_batch_discard(b);
    return NULL;
  }
  seq = ++c->batch_seq;
  memcpy(id, c->batch_nonce, sizeof(c->batch_nonce));
  for (i = 0; i < 8; i++)
    id[8 + i] = (uint8_t)(seq >> (56 - 8 * i));
  peerstore__put_batch(&op->frame, op->request, id, b->count, b->ops.data,
                       b->ops.len);
  peerstore_batch_discard(b);
  op->cb.batch = cb;
  peerstore__op_start(c, op);
  return (peerstore_batch_op *)op;
}

void peerstore_batch_cancel(peerstore_batch_op *op) {
  if (op != NULL)
    peerstore__op_cancel(&op->op);
}

void peerstore_batch_set_timeout(peerstore_batch_op *op, uint64_t ms) {
  if (op != NULL)
    peerstore__op_set_timeout(&op->op, ms);
}
