/* client.c - one connection to peerstored: its buffers, limits and close.
 *
 * Input: bytes land in c->in; whole frames are dispatched, at most
 * FRAMES_PER_WAKEUP per read, the rest on the next loop turn, so one busy
 * client cannot starve the others.
 *
 * Output: replies are appended to c->out and written by the server's idle
 * callback once per loop turn, so a burst of requests costs one write.
 * While one write is in flight, new output collects in c->out.  When a
 * client's queued output passes the soft limit, or it has max_inflight
 * requests waiting for the plugin, its requests are no longer read
 * (backpressure) until both are below half; watches are bounded
 * separately in watch.c, and a client whose output does not move for
 * write_timeout is disconnected (client_check_stalled).
 */
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "service.h"

#define FRAMES_PER_WAKEUP 4096

size_t client_queued(const client *c) {
  return (c->out.len - c->out.off) + c->wbuf.len;
}

int client_busy(const client *c) {
  return client_queued(c) > c->srv->cfg->output_soft_limit ||
         c->inflight >= c->srv->cfg->max_inflight;
}

/* Below half of both limits: room to take requests again, with hysteresis
 * so that a client at the edge is not paused and resumed per request. */
static int client_has_room(const client *c) {
  return client_queued(c) <= c->srv->cfg->output_soft_limit / 2 &&
         c->inflight <= c->srv->cfg->max_inflight / 2;
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
  peerstore__buf_free(&c->in);
  peerstore__buf_free(&c->out);
  peerstore__buf_free(&c->wbuf);
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
  client_set_backlog(c, 0);
  watch_end_all(c, 0);
  iter_end_all(c, 0);
  LOG_DEBUG("client %llu closed", (unsigned long long)c->id);
  uv_close((uv_handle_t *)&c->pipe, on_close);
  server_kick(s); /* shutdown may be waiting for this client */
}

void client_fail(client *c, int status, const char *why) {
  uv_buf_t b;

  if (c->closing)
    return;
  c->srv->stats.protocol_errors++;
  LOG_WARN("client %llu (uid %u pid %d): %s; disconnecting",
           (unsigned long long)c->id, (unsigned)c->uid, (int)c->pid, why);
  /* Best effort: tell the client why before closing.  Output still queued
   * behind an in-flight write is dropped with the connection. */
  if (!c->writing) {
    c->out.off = c->out.len = 0;
    if (peerstore__put_error(&c->out, 0, status, why) == 0) {
      b = uv_buf_init((char *)c->out.data, (unsigned)c->out.len);
      (void)uv_try_write((uv_stream_t *)&c->pipe, &b, 1);
    }
  }
  client_close(c);
}

/* ------------------------------------------------------------------ */
/* Output                                                              */

static void on_write(uv_write_t *req, int status);
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
  c->next_flush = c->srv->flush_list;
  c->srv->flush_list = c;
  server_kick(c->srv);
}

void client_flush(client *c) {
  int r;

  if (c->closing || c->writing || c->out.len == c->out.off) {
    client_unref(c); /* the flush list's reference */
    return;
  }
  r = peerstore__buf_flush((uv_stream_t *)&c->pipe, &c->out, &c->wbuf,
                           &c->wreq, on_write);
  if (r == 1) {
    c->writing = 1;
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
  siter *it, *next;

  if (c->closing)
    return;
  if (!c->reading && !s->stopping && client_has_room(c)) {
    start_reading(c);
    /* Frames read before the pause are still waiting in the buffer. */
    client_set_backlog(c, 1);
  }
  for (it = c->iters; it != NULL; it = next) {
    next = it->next;
    iter_pump(it);
  }
}

static void on_write(uv_write_t *req, int status) {
  client *c = req->data;

  c->writing = 0;
  peerstore__buf_end_write(&c->wbuf);
  if (status != 0) {
    if (status != UV_ECANCELED) {
      LOG_DEBUG("client %llu: write: %s", (unsigned long long)c->id,
                uv_strerror(status));
      client_close(c);
    }
    return;
  }
  if (c->out.len > c->out.off)
    client_output_ready(c);
  output_drained(c);
}

void client_check_stalled(server *s) {
  uint64_t now = uv_now(s->loop);
  client *c, *next;
  size_t q;

  for (c = s->clients; c != NULL; c = next) {
    next = c->next;
    if (!c->writing) {
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
               client_queued(c));
      client_close(c);
    }
  }
}

/* ------------------------------------------------------------------ */
/* Input                                                               */

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  client *c = h->data;

  (void)hint;
  /* While skipping an oversized body there is no header to size by. */
  peerstore__buf_read_space(
      &c->in,
      c->discard ? 0 : c->srv->cfg->max_value_size + PEERSTORE_MSG_OVERHEAD,
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
  c->in.len += (size_t)n;
  client_process_input(c);
}

static void start_reading(client *c) {
  c->reading = 1;
  uv_read_start((uv_stream_t *)&c->pipe, on_alloc, on_read);
}

void client_process_input(client *c) {
  server *s = c->srv;
  size_t frame_max = s->cfg->max_value_size + PEERSTORE_MSG_OVERHEAD;
  unsigned frames = 0;
  peerstore__header h;
  size_t avail;
  int r;

  while (!c->closing) {
    avail = c->in.len - c->in.off;
    if (c->discard > 0) {
      size_t n = avail < c->discard ? avail : (size_t)c->discard;
      c->in.off += n;
      c->discard -= n;
      if (c->discard > 0)
        break;
      dispatch_store_too_big(c, c->discard_request);
      continue;
    }
    if (avail < PEERSTORE_HEADER_SIZE)
      break;
    if (frames == FRAMES_PER_WAKEUP || client_busy(c)) {
      /* Leave the rest for later: another turn, or until the client's
       * output drains and its requests complete (client_resume). */
      if (client_busy(c)) {
        if (c->reading) {
          uv_read_stop((uv_stream_t *)&c->pipe);
          c->reading = 0;
        }
      } else {
        client_set_backlog(c, 1);
      }
      break;
    }
    peerstore__wire_header(c->in.data + c->in.off, &h);
    if (h.body_len > frame_max) {
      /* An oversized STORE is answered without buffering it, and the
       * connection stays usable; anything else this large is nonsense. */
      if (h.type == PEERSTORE_MSG_STORE && c->hello &&
          h.body_len <= PEERSTORE_MSG_MAX) {
        c->in.off += PEERSTORE_HEADER_SIZE;
        c->discard = h.body_len;
        c->discard_request = h.request;
        continue;
      }
      client_fail(c, PEERSTORE_EPROTO, "frame length over the limit");
      return;
    }
    if (avail < PEERSTORE_HEADER_SIZE + (size_t)h.body_len)
      break;
    c->in.off += PEERSTORE_HEADER_SIZE + h.body_len;
    frames++;
    r = dispatch_frame(c, &h, c->in.data + c->in.off - h.body_len);
    if (r != 0) {
      client_fail(c, r, r == PEERSTORE_EVERSION
                            ? "protocol version not supported"
                            : "malformed or unexpected message");
      return;
    }
  }
  if (!c->closing)
    peerstore__buf_trim_input(&c->in);
}

/* ------------------------------------------------------------------ */
/* Accept                                                              */

void client_accept(server *s) {
  client *c = calloc(1, sizeof(*c));
  struct ucred cred;
  socklen_t len = sizeof(cred);
  uv_os_fd_t fd;

  if (c == NULL) {
    LOG_ERROR("out of memory accepting a client");
    return;
  }
  c->srv = s;
  c->refs = 1;
  c->id = ++s->next_client_id;
  uv_pipe_init(s->loop, &c->pipe, 0);
  c->pipe.data = c;
  c->wreq.data = c;
  if (uv_accept((uv_stream_t *)&s->listener, (uv_stream_t *)&c->pipe) != 0) {
    uv_close((uv_handle_t *)&c->pipe, on_close);
    return;
  }
  if (uv_fileno((uv_handle_t *)&c->pipe, &fd) == 0 &&
      getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0) {
    c->uid = cred.uid;
    c->gid = cred.gid;
    c->pid = cred.pid;
  }
  c->next = s->clients;
  if (s->clients != NULL)
    s->clients->prev = c;
  s->clients = c;
  s->n_clients++;
  s->stats.clients_total++;
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
