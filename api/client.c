/* client.c - libpeerstore's connection: connect, the request table, reading
 * and dispatching replies, batching writes, failure and disconnect.
 *
 * Requests are encoded straight into c->out as they are made, HELLO first,
 * so calls made before the connection is up are simply sent in order once
 * it is; the service reads HELLO before anything else.  An idle handle,
 * active only while there is work, writes c->out once per loop turn and
 * runs deferred final callbacks, so no callback ever runs inside the call
 * that caused it.
 *
 * Operations live in a hash table by request id.  A reply for an id that
 * is not there belongs to an operation that was cancelled; it is dropped.
 * Cancelled and finished operations are freed from the idle callback, never
 * while a callback that might still hold them is on the stack.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

#include "client_int.h"


static void on_idle(uv_idle_t *h);
static void client_fail(peerstore_client *c, int status);
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
  uint64_t h = req_hash(request);
  peerstore__hnode *e = peerstore__hmap_bucket(&c->ops, h);

  for (; e != NULL; e = e->next)
    if (e->hash == h && ((ps_op *)e)->request == request)
      return (ps_op *)e;
  return NULL;
}

static void op_untable(peerstore_client *c, ps_op *op) {
  if (!op->in_table)
    return;
  peerstore__hmap_remove(&c->ops, &op->h);
  op->in_table = 0;
}

static void op_garbage(peerstore_client *c, ps_op *op) {
  op->next_done = c->garbage;
  c->garbage = op;
  kick(c);
}

ps_op *peerstore__op_new(peerstore_client *c, enum ps_op_kind kind,
                         size_t size, void *arg) {
  ps_op *op;

  if (c->closing)
    return NULL;
  if ((op = calloc(1, size)) == NULL)
    return NULL;
  op->c = c;
  op->kind = (uint8_t)kind;
  op->arg = arg;
  /* Request 0 is reserved for connection-level frames. */
  if (++c->next_request == 0)
    ++c->next_request;
  op->request = c->next_request;
  return op;
}

void peerstore__op_abort(peerstore_client *c, ps_op *op) {
  (void)c;
  free(op);
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

void peerstore__op_start(peerstore_client *c, ps_op *op) {
  peerstore__hmap_insert(&c->ops, &op->h, req_hash(op->request));
  op->in_table = 1;
  if (op->kind == OP_STORE)
    c->pending_stores++;
  if (c->state == ST_FAILED) {
    /* Nothing will be sent: the op ends soon with the failure. */
    c->out.len = c->out.off = 0;
    op_untable(c, op);
    done_push(c, op, c->fail_status);
    return;
  }
  if (c->state == ST_CONNECTED)
    kick(c);
}

void peerstore__op_cancel(ps_op *op) {
  peerstore_client *c = op->c;
  int was_tabled = op->in_table;

  if (op->finished)
    return;
  op->finished = 1;
  op_untable(c, op);
  if (op->kind == OP_STORE)
    c->pending_stores--;
  if (was_tabled && (op->kind == OP_ITERATE || op->kind == OP_WATCH) &&
      c->state != ST_FAILED &&
      peerstore__put_empty(&c->out, PEERSTORE_MSG_CANCEL, op->request) == 0)
    kick(c);
  /* An op on the done list is freed when the list reaches it. */
  if (!op->on_done)
    op_garbage(c, op);
  if (c->closing && c->pending_stores == 0)
    close_handles(c);
}

/* Runs op's final callback with status and retires it. */
static void op_finish(peerstore_client *c, ps_op *op, int status,
                      uint64_t extra) {
  op_untable(c, op);
  op->finished = 1;
  /* Counted down before the callback, which may disconnect and wait for
   * the stores still pending. */
  if (op->kind == OP_STORE)
    c->pending_stores--;
  switch (op->kind) {
  case OP_STORE:
    if (op->cb.store != NULL)
      op->cb.store(op->arg, status);
    break;
  case OP_ITERATE:
  case OP_WATCH:
    op->cb.record(op->arg, NULL, status);
    break;
  case OP_REMOVE:
    if (op->cb.remove != NULL)
      op->cb.remove(op->arg, status, extra);
    break;
  case OP_STATS:
    op->cb.stats(op->arg, status, NULL, 0);
    break;
  }
  op_garbage(c, op);
}

/* ------------------------------------------------------------------ */
/* Writing                                                             */

static void on_write(uv_write_t *req, int status) {
  peerstore_client *c = req->data;

  c->writing = 0;
  peerstore__buf_end_write(&c->wbuf);
  if (status != 0) {
    if (status != UV_ECANCELED)
      client_fail(c, status);
    return;
  }
  if (c->out.len > c->out.off)
    kick(c);
}

static void flush(peerstore_client *c) {
  uv_buf_t b;
  int r;

  if (c->state != ST_CONNECTED || c->writing || c->out.len == c->out.off)
    return;
  b = peerstore__buf_begin_write(&c->out, &c->wbuf);
  c->writing = 1;
  r = uv_write(&c->wreq, (uv_stream_t *)&c->pipe, &b, 1, on_write);
  if (r != 0) {
    c->writing = 0;
    client_fail(c, r);
  }
}

/* ------------------------------------------------------------------ */
/* Idle work                                                           */

static void on_idle(uv_idle_t *h) {
  peerstore_client *c = h->data;
  ps_op *op;

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
  if (c->garbage == NULL && c->done_head == NULL)
    uv_idle_stop(h);
}

/* ------------------------------------------------------------------ */
/* Reading and dispatch                                                */

/* The iteration consumed a record: grant more once half the window is
 * used, so the service never waits for credit while the client keeps up. */
static void credit_consumed(peerstore_client *c, ps_op *op) {
  if (++op->consumed < PEERSTORE_CREDIT_REGRANT)
    return;
  if (peerstore__put_u32(&c->out, PEERSTORE_MSG_CREDIT, op->request,
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
  op->cb.record(op->arg, &w.rec, 0);
  if (op->kind == OP_ITERATE && !op->finished && !c->closing)
    credit_consumed(c, op);
  return 0;
}

static int on_stats(peerstore_client *c, ps_op *op, const uint8_t *b,
                    size_t n) {
  peerstore_stat st[64];
  char names[64][64];
  size_t count;

  if (op->kind != OP_STATS ||
      peerstore__wire_stats(b, n, st, names, 64, &count) != 0)
    return PEERSTORE_EPROTO;
  op_untable(c, op);
  op->finished = 1;
  op->cb.stats(op->arg, 0, st, count);
  op_garbage(c, op);
  return 0;
}

static int handle_frame(peerstore_client *c, const peerstore__header *h,
                        const uint8_t *b) {
  int32_t status;
  uint64_t extra;
  uint16_t version;
  uint32_t max_value;
  char reason[256];
  ps_op *op;

  if (h->request == 0) {
    switch (h->type) {
    case PEERSTORE_MSG_WELCOME:
      if (peerstore__wire_welcome(b, h->body_len, &version, &max_value) != 0)
        return PEERSTORE_EPROTO;
      if (version != PEERSTORE_PROTOCOL_VERSION)
        return PEERSTORE_EVERSION;
      c->max_value = max_value;
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
    return 0; /* cancelled: its late replies are dropped */
  switch (h->type) {
  case PEERSTORE_MSG_RECORD:
    return on_record(c, op, b, h->body_len);
  case PEERSTORE_MSG_STORE_RESULT:
  case PEERSTORE_MSG_REMOVE_RESULT:
    if (op->kind != (h->type == PEERSTORE_MSG_STORE_RESULT ? OP_STORE
                                                           : OP_REMOVE) ||
        peerstore__wire_status(b, h->body_len, &status, &extra) != 0)
      return PEERSTORE_EPROTO;
    op_finish(c, op, status, extra);
    return 0;
  case PEERSTORE_MSG_ITERATE_END:
  case PEERSTORE_MSG_WATCH_END:
    if (op->kind != (h->type == PEERSTORE_MSG_ITERATE_END ? OP_ITERATE
                                                          : OP_WATCH) ||
        peerstore__wire_status(b, h->body_len, &status, NULL) != 0)
      return PEERSTORE_EPROTO;
    op_finish(c, op, status, 0);
    return 0;
  case PEERSTORE_MSG_STATS_RESULT:
    return on_stats(c, op, b, h->body_len);
  default:
    return PEERSTORE_EPROTO;
  }
}

static void on_alloc(uv_handle_t *hd, size_t hint, uv_buf_t *buf) {
  peerstore_client *c = hd->data;

  (void)hint;
  peerstore__buf_read_space(&c->in, PEERSTORE_MSG_MAX, buf);
}

static void on_read(uv_stream_t *st, ssize_t n, const uv_buf_t *buf) {
  peerstore_client *c = st->data;
  peerstore__header h;
  size_t avail;
  int r;

  (void)buf;
  if (n < 0) {
    client_fail(c, n == UV_EOF ? PEERSTORE_ECONNRESET : (int)n);
    return;
  }
  c->in.len += (size_t)n;
  for (;;) {
    avail = c->in.len - c->in.off;
    if (avail < PEERSTORE_HEADER_SIZE)
      break;
    peerstore__wire_header(c->in.data + c->in.off, &h);
    if (h.body_len > PEERSTORE_MSG_MAX || h.flags != 0) {
      client_fail(c, PEERSTORE_EPROTO);
      return;
    }
    if (avail < PEERSTORE_HEADER_SIZE + (size_t)h.body_len)
      break;
    c->in.off += PEERSTORE_HEADER_SIZE + h.body_len;
    r = handle_frame(c, &h, c->in.data + c->in.off - h.body_len);
    if (r != 0) {
      client_fail(c, r);
      return;
    }
    /* A callback may have disconnected or failed the client. */
    if (c->handles_closing || c->state == ST_FAILED)
      return;
  }
  peerstore__buf_trim_input(&c->in);
}

/* ------------------------------------------------------------------ */
/* Connect, fail, disconnect                                           */

static void on_handle_close(uv_handle_t *h) {
  peerstore_client *c = h->data;
  ps_op *op;
  size_t i;

  if (--c->handles_open > 0)
    return;
  while ((op = c->garbage) != NULL) {
    c->garbage = op->next_done;
    free(op);
  }
  while ((op = c->done_head) != NULL) {
    c->done_head = op->next_done;
    free(op);
  }
  for (i = 0; i <= c->ops.mask; i++) {
    peerstore__hnode *e = c->ops.buckets[i], *next;
    for (; e != NULL; e = next) {
      next = e->next;
      free(e);
    }
  }
  peerstore__hmap_free(&c->ops);
  peerstore__buf_free(&c->in);
  peerstore__buf_free(&c->out);
  peerstore__buf_free(&c->wbuf);
  free(c->path);
  free(c);
}

static void close_pipe(peerstore_client *c) {
  if (c->pipe_closed)
    return;
  c->pipe_closed = 1;
  uv_close((uv_handle_t *)&c->pipe, on_handle_close);
}

static void close_handles(peerstore_client *c) {
  if (c->handles_closing)
    return;
  c->handles_closing = 1;
  close_pipe(c);
  uv_close((uv_handle_t *)&c->idle, on_handle_close);
}

static int op_cmp(const void *a, const void *b) {
  const ps_op *x = *(ps_op *const *)a, *y = *(ps_op *const *)b;
  /* Request ids are handed out in call order (wrapping is ignored: four
   * billion requests in flight at once cannot happen). */
  return x->request < y->request ? -1 : x->request > y->request;
}

/* The connection is gone: every pending operation ends with status, in
 * the order it was made, from the idle callback. */
static void client_fail(peerstore_client *c, int status) {
  ps_op **all;
  size_t i, n = 0;

  if (c->state == ST_FAILED)
    return;
  c->state = ST_FAILED;
  c->fail_status = status;
  c->out.len = c->out.off = 0;
  close_pipe(c);
  all = malloc((c->ops.count + 1) * sizeof(*all));
  for (i = 0; i <= c->ops.mask; i++) {
    peerstore__hnode *e = c->ops.buckets[i];
    for (; e != NULL; e = e->next)
      if (all != NULL)
        all[n++] = (ps_op *)e;
  }
  if (all == NULL) {
    /* Out of memory now: end them unordered rather than not at all. */
    while (c->ops.count > 0) {
      for (i = 0; i <= c->ops.mask; i++) {
        ps_op *op = (ps_op *)c->ops.buckets[i];
        if (op != NULL) {
          op_untable(c, op);
          done_push(c, op, status);
        }
      }
    }
    return;
  }
  qsort(all, n, sizeof(*all), op_cmp);
  for (i = 0; i < n; i++) {
    op_untable(c, all[i]);
    done_push(c, all[i], status);
  }
  free(all);
}

static void on_connect(uv_connect_t *req, int status) {
  peerstore_client *c = req->data;

  if (status != 0) {
    if (status != UV_ECANCELED)
      client_fail(c, status);
    return;
  }
  if (c->state == ST_FAILED)
    return;
  c->state = ST_CONNECTED;
  uv_read_start((uv_stream_t *)&c->pipe, on_alloc, on_read);
  kick(c);
}

peerstore_client *peerstore_connect(uv_loop_t *loop,
                                    const char *socket_path) {
  char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
  peerstore_client *c;

  if (loop == NULL)
    return NULL;
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
      peerstore__hmap_init(&c->ops) != 0 || peerstore__put_hello(&c->out)) {
    peerstore__hmap_free(&c->ops);
    peerstore__buf_free(&c->out);
    free(c->path);
    free(c);
    return NULL;
  }
  c->loop = loop;
  c->state = ST_CONNECTING;
  uv_pipe_init(loop, &c->pipe, 0);
  uv_idle_init(loop, &c->idle);
  c->pipe.data = c;
  c->idle.data = c;
  c->creq.data = c;
  c->wreq.data = c;
  c->handles_open = 2;
  uv_pipe_connect(&c->creq, &c->pipe, c->path, on_connect);
  return c;
}

const char *peerstore_client_socket_path(const peerstore_client *c) {
  return c->path;
}

void peerstore_disconnect(peerstore_client *c, int sync_first) {
  size_t i;
  ps_op *op;

  if (c == NULL || c->closing)
    return;
  c->closing = 1;
  c->sync_first = sync_first != 0;
  /* Cancel everything that is not a store we are asked to wait for. */
  for (i = 0; i <= c->ops.mask; i++) {
    peerstore__hnode *e = c->ops.buckets[i], *next;
    for (; e != NULL; e = next) {
      next = e->next;
      op = (ps_op *)e;
      if (!sync_first || op->kind != OP_STORE)
        peerstore__op_cancel(op);
    }
  }
  for (op = c->done_head; op != NULL; op = op->next_done)
    if (!sync_first || op->kind != OP_STORE)
      peerstore__op_cancel(op);
  if (c->pending_stores == 0)
    close_handles(c);
  else
    kick(c);
}
