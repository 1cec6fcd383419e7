/* client.c - libpeerstore's connection: the request table, reading and
 * dispatching replies, batching writes, timeouts, reconnecting, and
 * disconnect.
 *
 * Every operation keeps its encoded request.  While connected, a new
 * request is also appended to c->out at once; c->out is written by an
 * idle handle, active only while there is work, once per loop turn.  When
 * a connection comes up, c->out is rebuilt as HELLO followed by the
 * request of every operation still waiting, in the order they were made:
 * so calls made before the first connection, and stores, removes and
 * watches left unanswered by a lost one, are (re)sent in order.  The
 * service reads HELLO before anything else, so nothing waits for WELCOME.
 *
 * Operations live in a hash table by request id, and on a list in the
 * order they were made, which is the order they are sent again in.  A
 * reply for an id that is not in the table belongs to an operation that
 * was cancelled or timed out; it is dropped.  Final callbacks that do
 * not come from a reply run from the idle handle, never inside the call
 * that caused them, and finished operations are freed there too, never
 * while a callback that might still hold them is on the stack.
 */
#include <signal.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <unistd.h>

#include "client_int.h"

static void on_idle(uv_idle_t *h);
static void connection_lost(peerstore_client *c, int status);
static void close_handles(peerstore_client *c);

int peerstore__client_closed(const peerstore_client *c) { return c->closing; }

static void kick(peerstore_client *c) {
  if (c->handles_closing)
    return;
  if (!uv_is_active((uv_handle_t *)&c->idle))
    uv_idle_start(&c->idle, on_idle);
}

/* ------------------------------------------------------------------ */
/* Operations table                                                    */

static uint64_t req_hash(uint32_t request) {
  return peerstore__hash(&request, sizeof(request), 0x7265711u);
}

static ps_op *op_find(peerstore_client *c, uint32_t request) {
  uint64_t h;
  peerstore__hnode *e;

  if (c->found != NULL && c->found->request == request)
    return c->found;
  h = req_hash(request);
  for (e = peerstore__hmap_bucket(&c->ops, h); e != NULL; e = e->next)
    if (e->hash == h && ((ps_op *)e)->request == request)
      return c->found = (ps_op *)e;
  return NULL;
}

static void op_untable(peerstore_client *c, ps_op *op) {
  peerstore__heap_remove(&c->deadlines, op);
  if (!op->in_table)
    return;
  if (c->found == op)
    c->found = NULL;
  peerstore__hmap_remove(&c->ops, &op->h);
  if (op->prev != NULL)
    op->prev->next = op->next;
  else
    c->first = op->next;
  if (op->next != NULL)
    op->next->prev = op->prev;
  else
    c->last = op->prev;
  op->prev = op->next = NULL;
  op->in_table = 0;
}

static void op_table(peerstore_client *c, ps_op *op) {
  peerstore__hmap_insert(&c->ops, &op->h, req_hash(op->request));
  op->prev = c->last;
  op->next = NULL;
  if (c->last != NULL)
    c->last->next = op;
  else
    c->first = op;
  c->last = op;
  op->in_table = 1;
}

static void op_garbage(peerstore_client *c, ps_op *op) {
  op->next_done = c->garbage;
  c->garbage = op;
  kick(c);
}

/* Ids are 32 bits and wrap around after four billion requests; one still
 * in use (a watch lives as long as the program) is skipped, so replies
 * always reach the operation they answer.  Order never depends on ids:
 * resends follow the list in call order. */
static uint32_t next_request(peerstore_client *c) {
  do {
    /* Request 0 is reserved for connection-level frames. */
    if (++c->next_request == 0) {
      ++c->next_request;
      c->ids_wrapped = 1;
    }
    /* Until the first wrap every id is new: no lookup on the store path. */
  } while (c->ids_wrapped && op_find(c, c->next_request) != NULL);
  return c->next_request;
}

ps_op *peerstore__op_new(peerstore_client *c, enum ps_op_kind kind,
                         size_t size, size_t frame_len, void *arg) {
  ps_op *op;

  if (c->closing || (op = calloc(1, size + frame_len)) == NULL)
    return NULL;
  op->c = c;
  op->kind = (uint8_t)kind;
  op->arg = arg;
  op->request = next_request(c);
  op->heap_pos = PEERSTORE__HEAP_NONE;
  op->frame.data = (uint8_t *)op + size;
  op->frame.cap = frame_len;
  return op;
}

static void done_push(peerstore_client *c, ps_op *op, int status) {
  op->status = status;
  op->on_done = 1;
  op->next_done = NULL;
  if (c->done_tail != NULL)
    c->done_tail->next_done = op;
  else
    c->done_head = op;
  c->done_tail = op;
  kick(c);
}

static void send_frame(peerstore_client *c, ps_op *op) {
  peerstore__buf *out = &c->out.buf;

  if (c->lost_status != 0)
    return; /* the connection is going: everything is sent again */
  /* A watch resumes after the last event it had, in the history it came
   * from (the WELCOME of the connection it came on). */
  if (op->kind == OP_WATCH)
    peerstore__wire_set_watch_from(op->frame.data, op->resume,
                                   op->resume_id);
  if (peerstore__buf_reserve(out, op->frame.len) != 0) {
    /* Out of memory for the request: the connection is dropped and
     * everything sent again on the next one.  Not here, though: this
     * runs inside the caller's call, and losing the connection runs the
     * state callback.  The idle handle does it, before any flush. */
    c->lost_status = PEERSTORE_ENOMEM;
    kick(c);
    return;
  }
  memcpy(out->data + out->len, op->frame.data, op->frame.len);
  out->len += op->frame.len;
  op->sent = 1;
  kick(c);
}

/* Runs op's final callback with status and retires it. */
static void op_finish(peerstore_client *c, ps_op *op, int status,
                      uint64_t extra) {
  op_untable(c, op);
  op->finished = 1;
  /* Counted down before the callback, which may disconnect and wait for
   * the stores still pending. */
  if (OP_IS_WRITE(op))
    c->pending_stores--;
  switch (op->kind) {
  case OP_STORE:
    if (op->cb.store != NULL)
      op->cb.store(op->arg, status);
    break;
  case OP_ITERATE:
    op->cb.record(op->arg, NULL, status);
    break;
  case OP_WATCH:
    if (op->ex)
      op->cb.event(op->arg, NULL, status);
    else
      op->cb.record(op->arg, NULL, status);
    break;
  case OP_REMOVE:
    if (op->cb.remove != NULL)
      op->cb.remove(op->arg, status, extra);
    break;
  case OP_STATS:
    op->cb.stats(op->arg, status, NULL, 0);
    break;
  case OP_BATCH:
    if (op->cb.batch != NULL)
      op->cb.batch(op->arg, status, extra);
    break;
  case OP_BACKUP: {
    peerstore_backup_result res = {0, 0, NULL};
    op->cb.backup(op->arg, status, &res);
    break;
  }
  }
  op_garbage(c, op);
}

/* ------------------------------------------------------------------ */
/* Deadlines                                                           */

static void on_deadline(uv_timer_t *t);

/* Deadlines are on the monotonic clock, not the loop's cached time: an
 * operation made after the program spent a while outside the loop would
 * otherwise have its timeout counted from before that.  The timer may
 * then fire early by the loop's lag; on_deadline checks and re-arms. */
static uint64_t now_ms(void) { return uv_hrtime() / 1000000; }

static void arm_deadline(peerstore_client *c) {
  uint64_t now = now_ms();
  ps_op *first = peerstore__heap_top(&c->deadlines);

  if (c->handles_closing)
    return;
  if (first == NULL) {
    uv_timer_stop(&c->deadline);
    return;
  }
  uv_timer_start(&c->deadline, on_deadline,
                 first->deadline > now ? first->deadline - now : 0, 0);
}

/* (Re)places op in the heap by its timeout, counted from op->start. */
static void heap_place(peerstore_client *c, ps_op *op) {
  peerstore__heap_remove(&c->deadlines, op);
  if (op->timeout == 0 || !op->in_table)
    return;
  if (peerstore__heap_reserve(&c->deadlines) != 0)
    return; /* no deadline rather than no operation */
  op->deadline = op->start + op->timeout;
  peerstore__heap_push(&c->deadlines, op);
  if (peerstore__heap_top(&c->deadlines) == op)
    arm_deadline(c);
}

void peerstore__op_set_timeout(ps_op *op, uint64_t ms) {
  if (op->finished)
    return;
  op->timeout = ms;
  heap_place(op->c, op);
  if (peerstore__heap_top(&op->c->deadlines) == NULL)
    arm_deadline(op->c);
}

static void on_deadline(uv_timer_t *t) {
  peerstore_client *c = t->data;
  uint64_t now = now_ms();
  ps_op *op;

  while ((op = peerstore__heap_top(&c->deadlines)) != NULL &&
         op->deadline <= now && !c->handles_closing) {
    peerstore__heap_remove(&c->deadlines, op);
    if (OP_IS_STREAM(op) && op->start + op->timeout > now) {
      heap_place(c, op); /* it made progress since it was placed */
      continue;
    }
    /* The service may still answer: it is told to stop iterating, and a
     * late reply to anything else finds no op and is dropped. */
    if ((OP_IS_STREAM(op) || op->kind == OP_WATCH) &&
        c->state == ST_CONNECTED &&
        peerstore__put_empty(&c->out.buf, PEERSTORE_MSG_CANCEL,
                             op->request) == 0)
      kick(c);
    op_finish(c, op, PEERSTORE_ETIMEDOUT, 0);
  }
  arm_deadline(c);
}

/* ------------------------------------------------------------------ */
/* Starting and cancelling                                             */

void peerstore__op_start(peerstore_client *c, ps_op *op) {
  op_table(c, op);
  if (OP_IS_WRITE(op))
    c->pending_stores++;
  if (c->state == ST_FAILED) {
    op_untable(c, op);
    done_push(c, op, c->fail_status);
    return;
  }
  op->start = now_ms();
  /* Not a backup's either: nothing arrives while the service makes the
   * copy, however long the store takes (peerstore_backup_set_timeout). */
  if (op->kind != OP_WATCH && op->kind != OP_BACKUP &&
      c->opts.timeout_ms > 0) {
    op->timeout = c->opts.timeout_ms;
    heap_place(c, op);
  }
  if (c->state == ST_CONNECTED)
    send_frame(c, op);
}

void peerstore__op_cancel(ps_op *op) {
  peerstore_client *c = op->c;
  int was_tabled = op->in_table;

  if (op->finished)
    return;
  op->finished = 1;
  op_untable(c, op);
  if (OP_IS_WRITE(op))
    c->pending_stores--;
  if (was_tabled && (OP_IS_STREAM(op) || op->kind == OP_WATCH) &&
      c->state == ST_CONNECTED &&
      peerstore__put_empty(&c->out.buf, PEERSTORE_MSG_CANCEL, op->request) ==
          0)
    kick(c);
  /* An op on the done list is freed when the list reaches it. */
  if (!op->on_done)
    op_garbage(c, op);
  if (c->closing && c->pending_stores == 0)
    close_handles(c);
}

/* ------------------------------------------------------------------ */
/* Writing                                                             */

/* A write failed.  When the service closed the connection, it may have
 * said why first (an ERROR frame: access refused, say), and that is
 * already in the socket, to be read: the read side then reports the loss,
 * with the reason.  Output is dropped until then.  Should the read side
 * say nothing (a peer that shut down only its reading half), the idle
 * handle ends the connection once a poll has passed (see on_idle). */
static void write_failed(peerstore_client *c, int status) {
  if (status == UV_EPIPE || status == UV_ECONNRESET) {
    c->peer_gone = 1;
    c->gone_status = status;
    peerstore__out_discard(&c->out);
    kick(c);
    return;
  }
  connection_lost(c, status);
}

static void on_written(void *data, int status) {
  peerstore_client *c = data;

  if (status != 0) {
    if (status != UV_ECANCELED)
      write_failed(c, status);
    return;
  }
  if (peerstore__out_pending(&c->out))
    kick(c);
}

static void flush(peerstore_client *c) {
  int r;

  if (c->state != ST_CONNECTED || c->peer_gone)
    return;
  r = peerstore__out_flush(&c->out);
  if (r < 0)
    write_failed(c, r);
}

/* ------------------------------------------------------------------ */
/* Idle work                                                           */

static void on_idle(uv_idle_t *h) {
  peerstore_client *c = h->data;
  ps_op *op;

  /* Idle handles run before the poll in each loop turn: on the third turn
   * since a write failed, at least one poll has had the chance to read
   * what the service said before it left. */
  if (c->peer_gone && c->state == ST_CONNECTED && ++c->peer_gone == 3)
    connection_lost(c, c->gone_status);
  if (c->lost_status != 0 && c->state == ST_CONNECTED)
    connection_lost(c, c->lost_status);
  while ((op = c->garbage) != NULL) {
    c->garbage = op->next_done;
    free(op);
  }
  /* Deferred final callbacks, oldest first.  A callback may add more; they
   * run in this same pass. */
  while ((op = c->done_head) != NULL) {
    c->done_head = op->next_done;
    if (c->done_head == NULL)
      c->done_tail = NULL;
    op->on_done = 0;
    if (op->finished) {
      free(op);
      continue;
    }
    op_finish(c, op, op->status, 0);
    if (c->handles_closing)
      return;
  }
  flush(c);
  if (c->closing && c->pending_stores == 0) {
    close_handles(c);
    return;
  }
  if (c->garbage == NULL && c->done_head == NULL && !c->peer_gone)
    uv_idle_stop(h);
}

/* ------------------------------------------------------------------ */
/* Reading and dispatch                                                */

static int reconnecting(const peerstore_client *c) {
  return c->opts.reconnect != 0;
}

/* Tells the application of a change: up, or down (also when the very first
 * attempt fails), once per change. */
static void report(peerstore_client *c, int up, int status) {
  if (c->reported == up || c->closing)
    return;
  c->reported = up;
  if (c->opts.state_cb != NULL)
    c->opts.state_cb(c->opts.state_arg, up, status);
}

/* An iteration consumed a record, or a backup a piece: grant more once
 * half the window is used, so the service never waits for credit while
 * the client keeps up. */
static void credit_consumed(peerstore_client *c, ps_op *op) {
  if (++op->consumed < (op->kind == OP_BACKUP ? PEERSTORE_BACKUP_REGRANT
                                              : PEERSTORE_CREDIT_REGRANT))
    return;
  if (peerstore__put_u32(&c->out.buf, PEERSTORE_MSG_CREDIT, op->request,
                         op->consumed) == 0) {
    op->consumed = 0;
    kick(c);
  }
}

static int on_record(peerstore_client *c, ps_op *op, const uint8_t *b,
                     size_t n) {
  peerstore__wrec w;

  if (op->kind != OP_ITERATE && op->kind != OP_WATCH)
    return PEERSTORE_EPROTO;
  if (peerstore__wire_record(b, n, &w) != 0)
    return PEERSTORE_EPROTO;
  if (op->kind == OP_ITERATE && op->timeout > 0) {
    /* Progress: the timeout counts from the last record.  The heap is
     * fixed lazily (heap_place would sift on every record).  Inside a
     * read callback the loop's time is current, and cheaper to read; it
     * is the same monotonic clock. */
    op->start = uv_now(c->loop);
  }
  op->cb.record(op->arg, &w.rec, 0);
  if (op->kind == OP_ITERATE && !op->finished && !c->closing)
    credit_consumed(c, op);
  return 0;
}

/* Delivers one event to a watch.  A watch made with peerstore_watch
 * hears of stores only; SYNC is for snapshot watches, and otherwise only
 * marks where to resume from. */
static void deliver_event(ps_op *op, enum peerstore_event_kind kind,
                          uint64_t revision, const peerstore_record *rec) {
  peerstore_event ev;

  if (!op->ex) {
    if (kind == PEERSTORE_EVENT_STORE) {
      op->revision = revision;
      op->cb.record(op->arg, rec, 0);
    }
    return;
  }
  if (kind == PEERSTORE_EVENT_SYNC && !op->snapshot)
    return;
  if (kind != PEERSTORE_EVENT_RESET)
    op->revision = revision;
  ev.kind = kind;
  ev.revision = revision;
  ev.rec = rec;
  op->cb.event(op->arg, &ev, 0);
}

static int on_event(peerstore_client *c, ps_op *op, const uint8_t *b,
                    size_t n) {
  peerstore__wrec w;
  uint64_t revision;
  uint8_t kind;

  if (op->kind != OP_WATCH ||
      peerstore__wire_event(b, n, &kind, &revision, &w) != 0)
    return PEERSTORE_EPROTO;
  if (kind == PEERSTORE__EVENT_PROGRESS) {
    /* Only where the resume point is an event revision: not inside a
     * snapshot, whose resume point is its SYNC. */
    if (!op->partial && (!op->snapshot || op->synced)) {
      op->resume = revision;
      op->resume_id = c->history_id;
    }
    return 0;
  }
  if (op->partial) {
    /* The snapshot begins again: what the last one gave is forgotten
     * first (the service sends RESET itself only after a compaction). */
    op->partial = 0;
    if (kind != PEERSTORE_EVENT_RESET) {
      deliver_event(op, PEERSTORE_EVENT_RESET, 0, NULL);
      if (op->finished || c->closing)
        return 0;
    }
  }
  switch (kind) {
  case PEERSTORE_EVENT_SYNC:
    op->synced = 1;
    op->resume = revision;
    op->resume_id = c->history_id;
    break;
  case PEERSTORE_EVENT_RESET:
    op->synced = 0;
    op->resume = 0;
    break;
  default:
    /* Inside a snapshot, revisions are the records' own: the resume
     * point is its SYNC. */
    if (!op->snapshot || op->synced) {
      op->resume = revision;
      op->resume_id = c->history_id;
    }
    break;
  }
  deliver_event(op, (enum peerstore_event_kind)kind, revision,
                kind <= PEERSTORE_EVENT_EXPIRE ? &w.rec : NULL);
  return 0;
}

/* The most counters a reply is decoded into (a service with many quotas
 * has four each). */
#define STATS_MAX 1024

static int on_stats(peerstore_client *c, ps_op *op, const uint8_t *b,
                    size_t n) {
  peerstore_stat *st;
  char (*names)[64];
  size_t count;
  int r = 0;

  if (op->kind != OP_STATS)
    return PEERSTORE_EPROTO;
  st = malloc(STATS_MAX * sizeof(*st));
  names = malloc(STATS_MAX * sizeof(*names));
  if (st == NULL || names == NULL) {
    r = PEERSTORE_ENOMEM;
  } else if (peerstore__wire_stats(b, n, st, names, STATS_MAX, &count) !=
             0) {
    r = PEERSTORE_EPROTO;
  } else {
    op_untable(c, op);
    op->finished = 1;
    op->cb.stats(op->arg, 0, st, count);
    op_garbage(c, op);
  }
  free(st);
  free(names);
  return r;
}

static int on_backup_data(peerstore_client *c, ps_op *op, const uint8_t *b,
                          size_t n) {
  ps_backup_op *bk = (ps_backup_op *)op;

  if (op->kind != OP_BACKUP || n == 0 || n > PEERSTORE_BACKUP_PIECE)
    return PEERSTORE_EPROTO;
  if (op->timeout > 0)
    op->start = uv_now(c->loop); /* progress, as on_record */
  bk->received += n;
  bk->data(op->arg, b, n);
  if (!op->finished && !c->closing)
    credit_consumed(c, op);
  return 0;
}

static int on_backup_end(peerstore_client *c, ps_op *op, const uint8_t *b,
                         size_t n) {
  ps_backup_op *bk = (ps_backup_op *)op;
  peerstore_backup_result res;
  char reason[1025];
  int32_t status;

  if (op->kind != OP_BACKUP ||
      peerstore__wire_backup_end(b, n, &status, &res.revision, &res.size,
                                 reason, sizeof(reason)) != 0)
    return PEERSTORE_EPROTO;
  /* A copy is whole only if every byte of it came. */
  if (status == 0 && bk->received != res.size)
    return PEERSTORE_EPROTO;
  res.reason = reason[0] != '\0' ? reason : NULL;
  op_untable(c, op);
  op->finished = 1;
  op->cb.backup(op->arg, status, &res);
  op_garbage(c, op);
  return 0;
}

/* A reply ending op with status.  A service that is shutting down refuses
 * with ESHUTDOWN what a reconnecting client will simply send again. */
static void on_end(peerstore_client *c, ps_op *op, int status,
                   uint64_t extra) {
  if (status == PEERSTORE_ESHUTDOWN && reconnecting(c) &&
      !OP_IS_STREAM(op))
    return;
  op_finish(c, op, status, extra);
}

static int handle_frame(peerstore_client *c, const peerstore__header *h,
                        const uint8_t *b) {
  int32_t status;
  uint64_t extra;
  uint16_t version;
  uint32_t max_value;
  uint64_t history_id;
  char reason[256];
  ps_op *op;

  if (h->request == 0) {
    switch (h->type) {
    case PEERSTORE_MSG_WELCOME:
      if (peerstore__wire_welcome(b, h->body_len, &version, &max_value,
                                  &history_id) != 0)
        return version != PEERSTORE_PROTOCOL_VERSION ? PEERSTORE_EVERSION
                                                     : PEERSTORE_EPROTO;
      if (version != PEERSTORE_PROTOCOL_VERSION)
        return PEERSTORE_EVERSION;
      c->max_value = max_value;
      c->history_id = history_id;
      c->welcomed = 1;
      report(c, 1, 0);
      return 0;
    case PEERSTORE_MSG_ERROR:
      if (peerstore__wire_error(b, h->body_len, &status, reason,
                                sizeof(reason)) != 0 ||
          status >= 0)
        return PEERSTORE_EPROTO;
      return status;
    default:
      return PEERSTORE_EPROTO;
    }
  }
  op = op_find(c, h->request);
  if (op == NULL)
    return 0; /* cancelled or timed out: its late replies are dropped */
  switch (h->type) {
  case PEERSTORE_MSG_RECORD:
    return on_record(c, op, b, h->body_len);
  case PEERSTORE_MSG_EVENT:
    return on_event(c, op, b, h->body_len);
  case PEERSTORE_MSG_STORE_RESULT:
  case PEERSTORE_MSG_REMOVE_RESULT:
  case PEERSTORE_MSG_BATCH_RESULT:
    if (op->kind != (h->type == PEERSTORE_MSG_STORE_RESULT    ? OP_STORE
                     : h->type == PEERSTORE_MSG_REMOVE_RESULT ? OP_REMOVE
                                                              : OP_BATCH) ||
        peerstore__wire_status(b, h->body_len, &status, &extra) != 0)
      return PEERSTORE_EPROTO;
    on_end(c, op, status, extra);
    return 0;
  case PEERSTORE_MSG_ITERATE_END:
  case PEERSTORE_MSG_WATCH_END:
    if (op->kind != (h->type == PEERSTORE_MSG_ITERATE_END ? OP_ITERATE
                                                          : OP_WATCH) ||
        peerstore__wire_status(b, h->body_len, &status, NULL) != 0)
      return PEERSTORE_EPROTO;
    on_end(c, op, status, 0);
    return 0;
  case PEERSTORE_MSG_STATS_RESULT:
    return on_stats(c, op, b, h->body_len);
  case PEERSTORE_MSG_BACKUP_DATA:
    return on_backup_data(c, op, b, h->body_len);
  case PEERSTORE_MSG_BACKUP_END:
    return on_backup_end(c, op, b, h->body_len);
  default:
    return PEERSTORE_EPROTO;
  }
}

static void on_alloc(uv_handle_t *hd, size_t hint, uv_buf_t *buf) {
  peerstore_client *c = hd->data;

  (void)hint;
  peerstore__reader_space(&c->rd, PEERSTORE_MSG_MAX, buf);
}

static void on_read(uv_stream_t *st, ssize_t n, const uv_buf_t *buf) {
  peerstore_client *c = st->data;
  peerstore__header h;
  const uint8_t *body;
  int r;

  (void)buf;
  if (n < 0) {
    connection_lost(c, n == UV_EOF ? PEERSTORE_ECONNRESET : (int)n);
    return;
  }
  peerstore__reader_filled(&c->rd, (size_t)n);
  while ((r = peerstore__reader_next(&c->rd, PEERSTORE_MSG_MAX, &h, &body)) ==
         PEERSTORE__FRAME_READY) {
    r = handle_frame(c, &h, body);
    if (r != 0)
      break;
    /* A callback may have disconnected the client, or the connection
     * may have been lost under it. */
    if (c->handles_closing || c->state != ST_CONNECTED)
      return;
  }
  if (r != 0) {
    /* A bad header, or a frame that makes no sense (skipping is for the
     * service, never needed here: nothing is over PEERSTORE_MSG_MAX). */
    connection_lost(c, r == PEERSTORE_ETOOBIG ? PEERSTORE_EPROTO : r);
    return;
  }
  peerstore__reader_trim(&c->rd);
}

/* ------------------------------------------------------------------ */
/* Connecting and losing the connection                                */

static void maybe_free(peerstore_client *c) {
  ps_op *op;

  if (c->handles_open > 0 || c->pipe_open || c->pipe_closing)
    return;
  while ((op = c->garbage) != NULL) {
    c->garbage = op->next_done;
    free(op);
  }
  while ((op = c->done_head) != NULL) {
    c->done_head = op->next_done;
    free(op);
  }
  while ((op = c->first) != NULL) {
    c->first = op->next;
    free(op);
  }
  peerstore__hmap_free(&c->ops);
  peerstore__reader_free(&c->rd);
  peerstore__out_free(&c->out);
  peerstore__heap_free(&c->deadlines);
  peerstore__batches_orphan(c);
  free(c->path);
  free(c);
}

static void on_handle_close(uv_handle_t *h) {
  peerstore_client *c = h->data;

  c->handles_open--;
  maybe_free(c);
}

static void on_pipe_close(uv_handle_t *h) {
  peerstore_client *c = h->data;

  c->pipe_closing = 0;
  maybe_free(c);
}

static void close_pipe(peerstore_client *c) {
  if (!c->pipe_open)
    return;
  c->pipe_open = 0;
  c->pipe_closing = 1;
  uv_close((uv_handle_t *)&c->pipe, on_pipe_close);
}

static void close_handles(peerstore_client *c) {
  if (c->handles_closing)
    return;
  c->handles_closing = 1;
  close_pipe(c);
  uv_close((uv_handle_t *)&c->idle, on_handle_close);
  uv_close((uv_handle_t *)&c->retry, on_handle_close);
  uv_close((uv_handle_t *)&c->deadline, on_handle_close);
}

/* Down for good: every pending operation ends with status, in the order
 * it was made, from the idle callback; later ones fail the same way. */
static void fail_all(peerstore_client *c, int status) {
  ps_op *op;

  c->state = ST_FAILED;
  c->fail_status = status;
  while ((op = c->first) != NULL) {
    op_untable(c, op);
    done_push(c, op, status);
  }
}

static void connect_now(peerstore_client *c);

static void on_retry(uv_timer_t *t) {
  peerstore_client *c = t->data;

  /* The old pipe's close completes within a loop turn. */
  if (c->pipe_closing) {
    uv_timer_start(&c->retry, on_retry, 1, 0);
    return;
  }
  connect_now(c);
}

static void schedule_retry(peerstore_client *c) {
  uint64_t d = c->opts.backoff_min_ms, jitter;
  uint32_t i;

  for (i = 0; i < c->attempts && d < c->opts.backoff_max_ms; i++)
    d *= 2;
  if (d > c->opts.backoff_max_ms)
    d = c->opts.backoff_max_ms;
  if (c->attempts < 64)
    c->attempts++;
  /* Jitter: wait between half and all of d, so that many clients losing
   * the same service do not come back in lockstep. */
  c->rng ^= c->rng << 13;
  c->rng ^= c->rng >> 7;
  c->rng ^= c->rng << 17;
  jitter = d > 1 ? c->rng % (d / 2 + 1) : 0;
  c->state = ST_WAITING;
  /* From now, not from the start of this turn of the loop: the wait is
   * at least what it says, however long the turn has run. */
  uv_update_time(c->loop);
  uv_timer_start(&c->retry, on_retry, d - jitter, 0);
}

/* The connection is gone (or could not be made).  Iterations in flight
 * end; everything else waits for the next connection, or, without
 * reconnecting, ends now. */
static void connection_lost(peerstore_client *c, int status) {
  ps_op *op, *next;

  if (c->state == ST_FAILED || c->state == ST_WAITING)
    return;
  /* A connection that was welcomed and then lost for a reason of its own
   * (the service restarted, say) is retried at once; one that broke the
   * protocol was no healthy connection, so the backoff goes on growing
   * instead of resending everything every few milliseconds. */
  if (c->welcomed && status != PEERSTORE_EPROTO)
    c->attempts = 0;
  c->welcomed = 0;
  c->lost_status = 0;
  close_pipe(c);
  c->peer_gone = 0;
  peerstore__reader_reset(&c->rd);
  peerstore__out_discard(&c->out);
  report(c, 0, status);
  /* Retrying cannot help a client the service does not speak to or does
   * not admit. */
  if (!reconnecting(c) || status == PEERSTORE_EVERSION ||
      status == PEERSTORE_EACCES || c->handles_closing) {
    fail_all(c, status);
    return;
  }
  /* An iteration or backup the service had begun cannot be resumed: it
   * ends.  One that never went out is sent on the next connection, like
   * the rest. */
  for (op = c->first; op != NULL; op = next) {
    next = op->next;
    if (OP_IS_STREAM(op) && op->sent) {
      op_untable(c, op);
      done_push(c, op, PEERSTORE_EINTERRUPTED);
    }
    /* A snapshot cut short is taken again from the start; what the
     * watcher was given of it is to be forgotten first (RESET). */
    if (op->kind == OP_WATCH && op->snapshot && !op->synced &&
        op->revision != 0)
      op->partial = 1;
    op->sent = 0;
  }
  schedule_retry(c);
}

static void on_connect(uv_connect_t *req, int status) {
  peerstore_client *c = req->data;
  ps_op *op;

  if (status == UV_ECANCELED || c->handles_closing)
    return;
  if (status != 0) {
    c->state = ST_CONNECTING; /* so that connection_lost acts */
    connection_lost(c, status);
    return;
  }
  c->state = ST_CONNECTED;
  c->peer_gone = 0;
  peerstore__out_discard(&c->out);
  if (peerstore__put_hello(&c->out.buf) != 0) {
    connection_lost(c, PEERSTORE_ENOMEM);
    return;
  }
  /* Everything still waiting, in the order it was made. */
  for (op = c->first; op != NULL && c->state == ST_CONNECTED; op = op->next)
    send_frame(c, op);
  if (c->state != ST_CONNECTED)
    return;
  uv_read_start((uv_stream_t *)&c->pipe, on_alloc, on_read);
  kick(c);
}

static void connect_now(peerstore_client *c) {
  uv_pipe_init(c->loop, &c->pipe, 0);
  c->pipe.data = c;
  c->out.stream = (uv_stream_t *)&c->pipe;
  c->pipe_open = 1;
  c->state = ST_CONNECTING;
  uv_pipe_connect(&c->creq, &c->pipe, c->path, on_connect);
}

void peerstore_connect_opts_init(peerstore_connect_opts *o) {
  memset(o, 0, sizeof(*o));
  o->timeout_ms = 10000;
  o->reconnect = 1;
  o->backoff_min_ms = 5;
  o->backoff_max_ms = 5000;
}

/* A write to a service that has just died raises SIGPIPE, whose default
 * action would kill the application; libuv leaves that to its users.  A
 * program that kept the default gets it ignored (the write then fails with
 * EPIPE, which ends the connection cleanly); one that chose a handler or
 * ignores it already is left alone. */
static void ignore_default_sigpipe(void) {
  struct sigaction sa;

  if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL &&
      !(sa.sa_flags & SA_SIGINFO)) {
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, NULL);
  }
}

peerstore_client *peerstore_connect_ex(uv_loop_t *loop,
                                       const char *socket_path,
                                       const peerstore_connect_opts *opts) {
  char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
  peerstore_client *c;

  if (loop == NULL)
    return NULL;
  ignore_default_sigpipe();
  if (socket_path == NULL) {
    if (peerstore_default_socket_path(path, sizeof(path)) != 0)
      return NULL;
    socket_path = path;
  }
  /* libuv would silently truncate a long path. */
  if (strlen(socket_path) >= sizeof(path) || *socket_path == '\0')
    return NULL;
  if ((c = calloc(1, sizeof(*c))) == NULL)
    return NULL;
  if ((c->path = strdup(socket_path)) == NULL ||
      peerstore__hmap_init(&c->ops) != 0) {
    free(c->path);
    free(c);
    return NULL;
  }
  if (opts != NULL)
    c->opts = *opts;
  else
    peerstore_connect_opts_init(&c->opts);
  if (c->opts.backoff_min_ms == 0)
    c->opts.backoff_min_ms = 1;
  if (c->opts.backoff_max_ms < c->opts.backoff_min_ms)
    c->opts.backoff_max_ms = c->opts.backoff_min_ms;
  c->loop = loop;
  c->reported = -1;
  c->rng = uv_hrtime() ^ (uint64_t)(uintptr_t)c;
  if (c->rng == 0)
    c->rng = 1;
  /* Batch ids must not repeat across the clients of one uid for the
   * service's retry window: the kernel's randomness, or failing that the
   * clock and the address mixed. */
  if (uv_random(NULL, NULL, c->batch_nonce, sizeof(c->batch_nonce), 0,
                NULL) != 0) {
    uint64_t x = c->rng ^ ((uint64_t)getpid() << 32);
    memcpy(c->batch_nonce, &x, sizeof(x));
  }
  uv_idle_init(loop, &c->idle);
  uv_timer_init(loop, &c->retry);
  uv_timer_init(loop, &c->deadline);
  c->idle.data = c;
  c->retry.data = c;
  c->deadline.data = c;
  c->creq.data = c;
  peerstore__out_init(&c->out, (uv_stream_t *)&c->pipe, on_written, c);
  peerstore__heap_init(&c->deadlines, offsetof(ps_op, deadline),
                       offsetof(ps_op, heap_pos));
  c->handles_open = 3;
  connect_now(c);
  return c;
}

peerstore_client *peerstore_connect(uv_loop_t *loop,
                                    const char *socket_path) {
  return peerstore_connect_ex(loop, socket_path, NULL);
}

const char *peerstore_client_socket_path(const peerstore_client *c) {
  return c->path;
}

void peerstore_disconnect(peerstore_client *c, int sync_first) {
  ps_op *op, *next;

  if (c == NULL || c->closing)
    return;
  c->closing = 1;
  c->sync_first = sync_first != 0;
  /* Cancel everything that is not a store we are asked to wait for. */
  for (op = c->first; op != NULL; op = next) {
    next = op->next;
    if (!sync_first || !OP_IS_WRITE(op))
      peerstore__op_cancel(op);
  }
  for (op = c->done_head; op != NULL; op = op->next_done)
    if (!sync_first || !OP_IS_WRITE(op))
      peerstore__op_cancel(op);
  if (c->pending_stores == 0)
    close_handles(c);
  else
    kick(c);
}
