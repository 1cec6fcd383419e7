/* client.c - one connection to peerstored: its buffers, limits and close.
 *
 * Input: bytes land in c->rd (the frame reader); whole frames are
 * dispatched, at most FRAMES_PER_WAKEUP per read, the rest on the next
 * loop turn, so one busy client cannot starve the others.
 *
 * Output: replies are appended to c->out and written by the server's idle
 * callback once per loop turn, so a burst of requests costs one write.
 * While one write is in flight, new output collects in c->out.
 *
 * Limits: client_output_ok is the one judge of queued output, with one
 * limit per use of it (the table below), as Redis's
 * checkClientOutputBufferLimits is.  When a client's output passes the
 * read limit, or it has max_inflight requests (or max_inflight_bytes of
 * them: a plugin that queues copies them) waiting for the plugin, its
 * requests are no longer read (backpressure) until both are below half;
 * an iteration asks the plugin for more only within the iterate limit; a
 * watch that would pass the watch limit ends; a client whose output does
 * not move for write_timeout is disconnected (client_check_stalled).
 */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "service.h"

#define FRAMES_PER_WAKEUP 4096
/* Frames larger than this share input_buffer_limit (Large frames). */
#define BIG_FRAME 65536

static void set_paused(client *c, int on);
static void waiter_remove(client *c);
static void big_release(client *c);

/* ------------------------------------------------------------------ */
/* Limits                                                              */

/* Per use of the output: the config field holding its limit in bytes, and
 * a shift.  Resuming waits for half the read limit, so that a client at
 * the edge is not paused and resumed per request.  (Asked once per record
 * an iteration yields: kept to a load, a shift and a compare.) */
static const struct {
  size_t field;
  unsigned shift;
} output_limits[] = {
    [OUT_READ] = {offsetof(config, output_soft_limit), 0},
    [OUT_RESUME] = {offsetof(config, output_soft_limit), 1},
    [OUT_ITERATE] = {offsetof(config, output_soft_limit), 0},
    [OUT_WATCH] = {offsetof(config, watch_output_limit), 0},
};

int client_output_ok(const client *c, enum output_use use, size_t adding) {
  const config *cfg = c->srv->cfg;
  size_t limit;

  memcpy(&limit, (const char *)cfg + output_limits[use].field, sizeof(limit));
  return peerstore__out_queued(&c->out) + adding <=
         limit >> output_limits[use].shift;
}

/* 1 while the client may not send more requests: too much queued output
 * or too many requests in flight. */
static int client_busy(const client *c) {
  return !client_output_ok(c, OUT_READ, 0) ||
         c->inflight >= c->srv->cfg->max_inflight ||
         c->inflight_bytes >= c->srv->cfg->max_inflight_bytes;
}

/* Room to take requests again: below half of both limits. */
static int client_has_room(const client *c) {
  return client_output_ok(c, OUT_RESUME, 0) &&
         c->inflight <= c->srv->cfg->max_inflight / 2 &&
         c->inflight_bytes <= c->srv->cfg->max_inflight_bytes / 2;
}

int client_quiet(const client *c) {
  return peerstore__out_queued(&c->out) == 0;
}

void client_ref(client *c) { c->refs++; }

void client_set_backlog(client *c, int on) {
  if (c->in_backlog == (unsigned)(on != 0))
    return;
  c->in_backlog = on != 0;
  if (on) {
    c->srv->n_backlog++;
    server_kick(c->srv);
  } else {
    c->srv->n_backlog--;
  }
}

void client_unref(client *c) {
  if (--c->refs > 0)
    return;
  peerstore__reader_free(&c->rd);
  peerstore__out_free(&c->out);
  free(c);
}

static void on_close(uv_handle_t *h) { client_unref(h->data); }

void client_close(client *c) {
  server *s = c->srv;

  if (c->closing)
    return;
  c->closing = 1;
  if (c->prev != NULL)
    c->prev->next = c->next;
  else
    s->clients = c->next;
  if (c->next != NULL)
    c->next->prev = c->prev;
  s->n_clients--;
  set_paused(c, 0);
  client_set_backlog(c, 0);
  waiter_remove(c);
  big_release(c);
  watch_end_all(c, 0);
  iter_end_all(c, 0);
  backup_end_client(c, 0);
  LOG_DEBUG("client %llu closed", (unsigned long long)c->id);
  uv_close((uv_handle_t *)&c->pipe, on_close);
  server_kick(s); /* shutdown may be waiting for this client */
}

void client_fail(client *c, int status, const char *why) {
  if (c->closing)
    return;
  c->srv->stats.protocol_errors++;
  LOG_WARN("client %llu (uid %u pid %d): %s; disconnecting",
           (unsigned long long)c->id, (unsigned)c->uid, (int)c->pid, why);
  /* Best effort: tell the client why before closing.  Output still queued
   * behind an in-flight write is dropped with the connection; so is what
   * the kernel does not take at once. */
  if (!c->out.writing) {
    peerstore__out_discard(&c->out);
    if (peerstore__put_error(&c->out.buf, 0, status, why) == 0)
      (void)peerstore__out_flush(&c->out);
  }
  client_close(c);
}

/* ------------------------------------------------------------------ */
/* Output                                                              */

static void start_reading(client *c);

/* What was queued reached the kernel: whatever waited for room goes on. */
static void output_drained(client *c) {
  c->stall_since = 0;
  client_resume(c);
  if (c->srv->stopping)
    server_kick(c->srv);
}

void client_output_ready(client *c) {
  if (c->in_flush || c->closing)
    return;
  c->in_flush = 1;
  client_ref(c);
  c->next_flush = NULL;
  if (c->srv->flush_tail != NULL)
    c->srv->flush_tail->next_flush = c;
  else
    c->srv->flush_head = c;
  c->srv->flush_tail = c;
  server_kick(c->srv);
}

void client_flush(client *c) {
  int r;

  if (c->closing || c->out.writing || !peerstore__out_pending(&c->out)) {
    client_unref(c); /* the flush list's reference */
    return;
  }
  r = peerstore__out_flush(&c->out);
  if (r == 1) {
    /* in flight: on_written goes on */
  } else if (r < 0) {
    LOG_DEBUG("client %llu: write failed: %s", (unsigned long long)c->id,
              uv_strerror(r));
    client_close(c);
  } else {
    output_drained(c);
  }
  client_unref(c);
}

void client_resume(client *c) {
  server *s = c->srv;

  if (c->closing)
    return;
  if (!c->reading && !s->stopping && !c->input_waiting &&
      client_has_room(c)) {
    set_paused(c, 0);
    start_reading(c);
    /* Frames read before the pause are still waiting in the buffer. */
    client_set_backlog(c, 1);
  }
  iter_pump_all(c);
  backup_pump_client(c);
  watch_pump_all(c);
}

void client_request_done(client *c, size_t bytes) {
  c->inflight--;
  c->inflight_bytes -= bytes;
  if (c->inflight <= c->srv->cfg->max_inflight / 2 &&
      c->inflight_bytes <= c->srv->cfg->max_inflight_bytes / 2)
    client_resume(c);
}

static void stop_reading(client *c) {
  if (c->reading) {
    uv_read_stop((uv_stream_t *)&c->pipe);
    c->reading = 0;
  }
}

/* Counted for stats (clients_paused): an operator sees backpressure. */
static void set_paused(client *c, int on) {
  if (c->paused == (unsigned)(on != 0))
    return;
  c->paused = on != 0;
  if (on)
    c->srv->n_paused++;
  else
    c->srv->n_paused--;
}

void client_shutdown(client *c) {
  stop_reading(c);
  watch_end_all(c, PEERSTORE_ESHUTDOWN);
  iter_end_all(c, PEERSTORE_ESHUTDOWN);
  backup_end_client(c, PEERSTORE_ESHUTDOWN);
}

static void on_written(void *data, int status) {
  client *c = data;

  if (status != 0) {
    if (status != UV_ECANCELED) {
      LOG_DEBUG("client %llu: write: %s", (unsigned long long)c->id,
                uv_strerror(status));
      client_close(c);
    }
    return;
  }
  if (peerstore__out_pending(&c->out))
    client_output_ready(c);
  output_drained(c);
}

void client_check_stalled(server *s) {
  uint64_t now = uv_now(s->loop);
  client *c, *next;
  size_t q;

  for (c = s->clients; c != NULL; c = next) {
    next = c->next;
    if (c->big_reserved > 0) {
      size_t have = peerstore__buf_pending(&c->rd.in);
      /* Progress is a chunk, so a frame cannot be kept alive a byte at a
       * time; a client the service is not reading, for its own reasons
       * (requests in flight), is not blamed - one that does not read its
       * replies is. */
      if (have >= c->big_seen + BIG_FRAME ||
          (!c->reading && client_output_ok(c, OUT_RESUME, 0))) {
        c->big_seen = have;
        c->big_since = now;
      } else if (now - c->big_since >= s->cfg->read_timeout_ms) {
        s->stats.input_timed_out++;
        LOG_WARN("client %llu (uid %u pid %d) sent %zu of a %zu-byte "
                 "message and nothing for %llu s; disconnecting",
                 (unsigned long long)c->id, (unsigned)c->uid, (int)c->pid,
                 have, c->big_reserved,
                 (unsigned long long)((now - c->big_since) / 1000));
        client_close(c);
        continue;
      }
    }
    if (!c->out.writing) {
      c->stall_since = 0;
      continue;
    }
    q = uv_stream_get_write_queue_size((uv_stream_t *)&c->pipe);
    if (c->stall_since == 0 || q != c->stall_queue) {
      c->stall_since = now;
      c->stall_queue = q;
      continue;
    }
    if (now - c->stall_since >= s->cfg->write_timeout_ms) {
      s->stats.stalled++;
      LOG_WARN("client %llu (uid %u pid %d) has not read for %llu s "
               "(%zu bytes queued); disconnecting",
               (unsigned long long)c->id, (unsigned)c->uid, (int)c->pid,
               (unsigned long long)((now - c->stall_since) / 1000),
               peerstore__out_queued(&c->out));
      client_close(c);
    }
  }
}

/* ------------------------------------------------------------------ */
/* Input                                                               */

/* The largest body of the next frame this service reads into memory; a
 * batch has a limit of its own. */
static size_t frame_max(const client *c) {
  if (c->hello && c->version >= 3 &&
      peerstore__reader_peek_type(&c->rd) == PEERSTORE_MSG_BATCH)
    return c->srv->cfg->batch_max_bytes;
  return c->srv->cfg->max_value_size + PEERSTORE_MSG_OVERHEAD;
}

/* ------------------------------------------------------------------ */
/* Large frames                                                        */

/* A frame is buffered whole before it is handled.  The bytes of frames
 * over BIG_FRAME being read share input_buffer_limit over all clients, so
 * that many connections each sending most of a large message cannot make
 * the service hold them all.  The first is always admitted (one frame
 * over the limit still goes through); the others wait their turn, FIFO,
 * unread; one that stops arriving for read_timeout ends its connection
 * (client_check_stalled). */

/* The body length of the large frame at the head of c's buffer that is
 * to be buffered whole and is not yet, else 0. */
static size_t big_pending(const client *c) {
  peerstore__header h;

  if (!peerstore__reader_peek(&c->rd, &h) || h.body_len <= BIG_FRAME ||
      h.body_len > frame_max(c) ||
      peerstore__buf_pending(&c->rd.in) >=
          PEERSTORE_HEADER_SIZE + (size_t)h.body_len)
    return 0;
  return h.body_len;
}

static int big_fits(const server *s, size_t need) {
  return s->input_big == 0 ||
         s->input_big + need <= s->cfg->input_buffer_limit;
}

static void big_reserve(client *c, size_t need) {
  c->srv->input_big += need;
  c->big_reserved = need;
  c->big_seen = peerstore__buf_pending(&c->rd.in);
  c->big_since = uv_now(c->srv->loop);
}

/* 1 if c may go on reading the frame at the head of its buffer; else it
 * waits on the server's list. */
static int big_admit(client *c) {
  server *s = c->srv;
  size_t need;

  if (c->big_reserved > 0 || (need = big_pending(c)) == 0)
    return 1;
  /* First come, first served: a newcomer queues behind waiters, so that
   * a frame larger than what is left is not passed over for ever. */
  if (!c->input_waiting && s->input_waiters_head == NULL &&
      big_fits(s, need)) {
    big_reserve(c, need);
    return 1;
  }
  if (!c->input_waiting) {
    c->input_waiting = 1;
    c->next_input_waiter = NULL;
    if (s->input_waiters_tail != NULL)
      s->input_waiters_tail->next_input_waiter = c;
    else
      s->input_waiters_head = c;
    s->input_waiters_tail = c;
    s->n_input_waiters++;
  }
  return 0;
}

static void waiter_remove(client *c) {
  server *s = c->srv;
  client **p = &s->input_waiters_head, *prev = NULL;

  if (!c->input_waiting)
    return;
  while (*p != c) {
    prev = *p;
    p = &(*p)->next_input_waiter;
  }
  *p = c->next_input_waiter;
  if (s->input_waiters_tail == c)
    s->input_waiters_tail = prev;
  c->input_waiting = 0;
  s->n_input_waiters--;
}

/* c's large frame is in, or c is gone: the waiters that now fit, in
 * turn, read on. */
static void big_release(client *c) {
  server *s = c->srv;
  client *w;
  size_t need;

  if (c->big_reserved == 0)
    return;
  s->input_big -= c->big_reserved;
  c->big_reserved = 0;
  while ((w = s->input_waiters_head) != NULL &&
         big_fits(s, need = big_pending(w))) {
    waiter_remove(w);
    if (need > 0)
      big_reserve(w, need);
    client_resume(w);
  }
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  client *c = h->data;

  (void)hint;
  /* A large frame not admitted yet is read no further than a chunk. */
  peerstore__reader_space(
      &c->rd, c->big_reserved == 0 && big_pending(c) > 0 ? 0 : frame_max(c),
      buf);
}

static void on_read(uv_stream_t *st, ssize_t n, const uv_buf_t *buf) {
  client *c = st->data;

  (void)buf;
  if (n < 0) {
    if (n != UV_EOF)
      LOG_DEBUG("client %llu: read: %s", (unsigned long long)c->id,
                uv_strerror((int)n));
    client_close(c);
    return;
  }
  if (n == 0)
    return;
  peerstore__reader_filled(&c->rd, (size_t)n);
  client_process_input(c);
}

static void start_reading(client *c) {
  c->reading = 1;
  uv_read_start((uv_stream_t *)&c->pipe, on_alloc, on_read);
}

void client_process_input(client *c) {
  unsigned frames = 0;
  peerstore__header h;
  const uint8_t *body;
  int r;

  while (!c->closing) {
    if (frames == FRAMES_PER_WAKEUP) {
      client_set_backlog(c, 1); /* the rest on the next loop turn */
      break;
    }
    if (client_busy(c)) {
      /* Until the client's output drains and its requests complete
       * (client_resume). */
      stop_reading(c);
      set_paused(c, 1);
      break;
    }
    if (!big_admit(c)) {
      /* Until a large frame ahead of it is in (big_release). */
      stop_reading(c);
      break;
    }
    r = peerstore__reader_next(&c->rd, frame_max(c), &h, &body);
    if (r == PEERSTORE__FRAME_MORE)
      break;
    if (r == PEERSTORE__FRAME_READY)
      big_release(c);
    if (r == PEERSTORE__FRAME_SKIPPED) {
      if (h.type == PEERSTORE_MSG_BATCH)
        dispatch_batch_too_big(c, h.request);
      else
        dispatch_store_too_big(c, h.request);
      continue;
    }
    if (r == PEERSTORE_ETOOBIG && c->hello &&
        (h.type == PEERSTORE_MSG_STORE ||
         (h.type == PEERSTORE_MSG_BATCH && c->version >= 3))) {
      /* An oversized STORE or BATCH is answered without buffering it,
       * and the connection stays usable; anything else this large is
       * nonsense. */
      peerstore__reader_skip(&c->rd);
      continue;
    }
    if (r < 0) {
      client_fail(c, PEERSTORE_EPROTO,
                  r == PEERSTORE_ETOOBIG ? "frame length over the limit"
                                         : "malformed frame header");
      return;
    }
    frames++;
    r = dispatch_frame(c, &h, body);
    if (r != 0) {
      client_fail(c, r, r == PEERSTORE_EVERSION
                            ? "protocol version not supported"
                            : "malformed or unexpected message");
      return;
    }
  }
  if (!c->closing)
    peerstore__reader_trim(&c->rd);
}

/* ------------------------------------------------------------------ */
/* Accept                                                              */

void client_accept(server *s) {
  client *c = calloc(1, sizeof(*c));
  struct ucred cred;
  socklen_t len = sizeof(cred);
  uv_os_fd_t fd;
  int known = 0;

  if (c == NULL) {
    LOG_ERROR("out of memory accepting a client");
    return;
  }
  c->srv = s;
  c->refs = 1;
  c->id = ++s->next_client_id;
  uv_pipe_init(s->loop, &c->pipe, 0);
  c->pipe.data = c;
  peerstore__out_init(&c->out, (uv_stream_t *)&c->pipe, on_written, c);
  if (uv_accept((uv_stream_t *)&s->listener, (uv_stream_t *)&c->pipe) != 0) {
    uv_close((uv_handle_t *)&c->pipe, on_close);
    return;
  }
  if (uv_fileno((uv_handle_t *)&c->pipe, &fd) == 0 &&
      getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0) {
    c->uid = cred.uid;
    c->gid = cred.gid;
    c->pid = cred.pid;
    known = 1;
  }
  c->next = s->clients;
  if (s->clients != NULL)
    s->clients->prev = c;
  s->clients = c;
  s->n_clients++;
  s->stats.clients_total++;
  /* Access rules and the writer of every record rest on who the client
   * is: one whose credentials cannot be read is nobody we can admit. */
  if (!known) {
    LOG_WARN("refusing client %llu: cannot read its credentials",
             (unsigned long long)c->id);
    s->stats.refused++;
    client_fail(c, PEERSTORE_EACCES, "cannot read the client's credentials");
    return;
  }
  if ((s->cfg->allow_uids.n > 0 || s->cfg->allow_gids.n > 0) &&
      !config_id_match(&s->cfg->allow_uids, &s->cfg->allow_gids, c->uid,
                       c->gid)) {
    LOG_WARN("refusing uid %u gid %u pid %d: not in allow_uids/allow_gids",
             (unsigned)c->uid, (unsigned)c->gid, (int)c->pid);
    s->stats.refused++;
    client_fail(c, PEERSTORE_EACCES, "not allowed to use this service");
    return;
  }
  if (s->n_clients > s->cfg->max_clients) {
    LOG_WARN("client limit (%u) reached; refusing uid %u pid %d",
             (unsigned)s->cfg->max_clients, (unsigned)c->uid, (int)c->pid);
    client_fail(c, PEERSTORE_ELIMIT, "too many clients");
    return;
  }
  LOG_DEBUG("client %llu connected (uid %u pid %d)",
            (unsigned long long)c->id, (unsigned)c->uid, (int)c->pid);
  start_reading(c);
}
