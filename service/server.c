/* server.c - the listening socket, signals, background purge and the
 * orderly shutdown of peerstored.
 *
 * Shutdown order (SIGINT/SIGTERM): stop accepting and remove the socket
 * file; stop reading from clients but finish the requests already read;
 * once every plugin request has completed and all output is flushed (or
 * after a grace period), close the clients, then the plugin, then the
 * remaining handles, so uv_run returns and uv_loop_close succeeds.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "service.h"
#include "text.h"

#define PURGE_BATCH 10000
#define STOP_GRACE_MS 5000

/* ------------------------------------------------------------------ */
/* The socket file                                                     */

/* A socket file left by a dead service is replaced; one with a live
 * service behind it is not; anything that is not a socket is never
 * touched.  Returns 0 when the path is free to bind. */
static int clear_stale_socket(const char *path) {
  struct sockaddr_un sa;
  struct stat st;
  int fd, r;

  if (lstat(path, &st) != 0)
    return errno == ENOENT ? 0 : -1;
  if (!S_ISSOCK(st.st_mode)) {
    LOG_ERROR("%s exists and is not a socket; not replacing it", path);
    return -1;
  }
  fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return -1;
  memset(&sa, 0, sizeof(sa));
  sa.sun_family = AF_UNIX;
  snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
  r = connect(fd, (struct sockaddr *)&sa, sizeof(sa));
  close(fd);
  if (r == 0) {
    LOG_ERROR("another service is listening on %s; not taking it over",
              path);
    return -1;
  }
  if (errno != ECONNREFUSED) {
    LOG_ERROR("cannot check socket %s: %s", path, strerror(errno));
    return -1;
  }
  LOG_INFO("removing stale socket %s", path);
  if (unlink(path) != 0 && errno != ENOENT) {
    LOG_ERROR("cannot remove stale socket %s: %s", path, strerror(errno));
    return -1;
  }
  return 0;
}

/* Creates the socket's directory if it is missing (one level, 0755). */
static void make_parent_dir(const char *path) {
  char dir[sizeof(((struct sockaddr_un *)0)->sun_path)];
  char *slash;

  snprintf(dir, sizeof(dir), "%s", path);
  slash = strrchr(dir, '/');
  if (slash == NULL || slash == dir)
    return;
  *slash = '\0';
  if (mkdir(dir, 0755) != 0 && errno != EEXIST)
    LOG_WARN("cannot create directory %s: %s", dir, strerror(errno));
}

static void on_connection(uv_stream_t *listener, int status) {
  server *s = listener->data;

  if (status != 0) {
    LOG_WARN("accept failed: %s", uv_strerror(status));
    return;
  }
  client_accept(s);
}

static int listen_socket(server *s) {
  const char *path = s->cfg->socket_path;
  mode_t old;
  int r;

  if (strlen(path) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
    LOG_ERROR("socket path too long: %s", path);
    return -1;
  }
  make_parent_dir(path);
  if (clear_stale_socket(path) != 0)
    return -1;
  if ((r = uv_pipe_init(s->loop, &s->listener, 0)) != 0)
    return -1;
  s->listener.data = s;
  /* Owner-only from the moment it exists; widened to the configured mode
   * afterwards, so there is no window where it is more open. */
  old = umask(0177);
  r = uv_pipe_bind(&s->listener, path);
  umask(old);
  if (r == 0 && chmod(path, s->cfg->socket_mode) != 0)
    r = uv_translate_sys_error(errno);
  if (r == 0 && s->cfg->socket_gid >= 0 &&
      chown(path, (uid_t)-1, (gid_t)s->cfg->socket_gid) != 0)
    r = uv_translate_sys_error(errno);
  if (r == 0)
    r = uv_listen((uv_stream_t *)&s->listener, 511, on_connection);
  if (r != 0) {
    LOG_ERROR("cannot listen on %s: %s", path, uv_strerror(r));
    uv_close((uv_handle_t *)&s->listener, NULL);
    return -1;
  }
  s->listening = 1;
  LOG_INFO("listening on %s (mode %04o)", path, s->cfg->socket_mode);
  return 0;
}

/* ------------------------------------------------------------------ */
/* Idle work: output flushes, input backlogs, shutdown progress         */

static int all_quiet(server *s) {
  client *c;

  if (s->inflight > 0 || s->n_backlog > 0)
    return 0;
  for (c = s->clients; c != NULL; c = c->next)
    if (!client_quiet(c))
      return 0;
  return 1;
}

static void finish_stop(server *s);

static void on_idle(uv_idle_t *h) {
  server *s = h->data;
  client *c, *next;

  /* Leftover input first: it may queue output to flush below.  Only
   * scanned when some client has any, so a busy turn stays O(output). */
  for (c = s->n_backlog > 0 ? s->clients : NULL; c != NULL; c = next) {
    next = c->next;
    if (c->in_backlog) {
      client_set_backlog(c, 0);
      client_process_input(c);
    }
  }
  while ((c = s->flush_head) != NULL) {
    if ((s->flush_head = c->next_flush) == NULL)
      s->flush_tail = NULL;
    c->in_flush = 0;
    client_flush(c);
  }
  if (s->n_backlog > 0)
    return; /* stay active: more input next turn */
  uv_idle_stop(h);
  if (s->stopping && !s->done && all_quiet(s))
    finish_stop(s);
}

void server_kick(server *s) {
  if (!uv_is_active((uv_handle_t *)&s->idle) &&
      !uv_is_closing((uv_handle_t *)&s->idle))
    uv_idle_start(&s->idle, on_idle);
}

/* ------------------------------------------------------------------ */
/* Background purge                                                    */

static void on_purge_timer(uv_timer_t *t);

static void purge_done(void *arg, int status, uint64_t n) {
  server *s = arg;

  s->purging = 0;
  s->inflight--;
  if (status != 0)
    LOG_WARN("purge failed: %s", peerstore_strerror(status));
  else if (n > 0)
    LOG_DEBUG("purged %llu expired records", (unsigned long long)n);
  s->stats.purged += n;
  /* A full batch means there may be more: come back soon, not after a
   * whole interval, but let clients in between. */
  if (status == 0 && n == PURGE_BATCH && !s->stopping)
    uv_timer_start(&s->purge_timer, on_purge_timer, 0,
                   s->cfg->purge_interval_ms);
  server_kick(s);
}

static void on_purge_timer(uv_timer_t *t) {
  server *s = t->data;
  int r;

  if (s->purging || s->stopping)
    return;
  s->purging = 1;
  s->inflight++;
  r = s->plugin.desc->ops->purge(s->plugin.instance, peerstore__now_us(),
                                 PURGE_BATCH, purge_done, s);
  if (r != 0) {
    s->purging = 0;
    s->inflight--;
    LOG_WARN("purge could not start: %s", peerstore_strerror(r));
  }
}

/* ------------------------------------------------------------------ */
/* Start and stop                                                      */

static void on_signal(uv_signal_t *h, int signum) {
  server *s = h->data;

  LOG_INFO("signal %d: shutting down", signum);
  server_stop(s);
}

/* Stall and idle checks need a resolution of a fraction of the shorter
 * deadline. */
static uint64_t housekeeping_ms(const config *cfg) {
  uint64_t d = cfg->write_timeout_ms < cfg->iteration_timeout_ms
                   ? cfg->write_timeout_ms
                   : cfg->iteration_timeout_ms;
  return d < 4000 ? (d / 4 > 0 ? d / 4 : 1) : 1000;
}

static void on_housekeeping(uv_timer_t *t) {
  client_check_stalled(t->data);
  iter_check_idle(t->data);
}

static void on_stop_timer(uv_timer_t *t) {
  server *s = t->data;

  LOG_WARN("shutdown grace period over; closing remaining clients");
  finish_stop(s);
}

/* Closes the service's own handles and the plugin: the last step of a
 * shutdown, or of a start that failed. */
static void release(server *s) {
  client *c;

  /* The idle callback will not run again to flush these; each holds a
   * reference on its client. */
  while ((c = s->flush_head) != NULL) {
    if ((s->flush_head = c->next_flush) == NULL)
      s->flush_tail = NULL;
    c->in_flush = 0;
    client_unref(c);
  }
  uv_close((uv_handle_t *)&s->idle, NULL);
  uv_close((uv_handle_t *)&s->purge_timer, NULL);
  uv_close((uv_handle_t *)&s->stop_timer, NULL);
  uv_close((uv_handle_t *)&s->housekeeping, NULL);
  uv_close((uv_handle_t *)&s->sigint, NULL);
  uv_close((uv_handle_t *)&s->sigterm, NULL);
  plugin_unload(&s->plugin);
  dispatch_fini(s);
  watch_fini(s);
  iter_fini(s);
}

int server_start(server *s, uv_loop_t *loop, config *cfg) {
  memset(s, 0, sizeof(*s));
  s->loop = loop;
  s->cfg = cfg;
  s->started_ms = uv_now(loop);
  if (watch_init(s) != 0)
    return -1;
  if (iter_init(s) != 0) {
    watch_fini(s);
    return -1;
  }
  if (plugin_load(&s->plugin, cfg, loop, watch_changed, s) != 0) {
    watch_fini(s);
    iter_fini(s);
    s->done = 1;
    return -1;
  }
  uv_idle_init(loop, &s->idle);
  s->idle.data = s;
  uv_timer_init(loop, &s->purge_timer);
  s->purge_timer.data = s;
  uv_timer_init(loop, &s->stop_timer);
  s->stop_timer.data = s;
  uv_timer_init(loop, &s->housekeeping);
  s->housekeeping.data = s;
  uv_signal_init(loop, &s->sigint);
  s->sigint.data = s;
  uv_signal_init(loop, &s->sigterm);
  s->sigterm.data = s;
  if (listen_socket(s) != 0) {
    s->done = 1;
    release(s);
    return -1;
  }
  uv_signal_start(&s->sigint, on_signal, SIGINT);
  uv_signal_start(&s->sigterm, on_signal, SIGTERM);
  uv_timer_start(&s->purge_timer, on_purge_timer, cfg->purge_interval_ms,
                 cfg->purge_interval_ms);
  uv_timer_start(&s->housekeeping, on_housekeeping, housekeeping_ms(cfg),
                 housekeeping_ms(cfg));
  if (cfg->ready_fd >= 0) {
    if (write(cfg->ready_fd, "READY\n", 6) != 6)
      LOG_WARN("cannot write to ready fd %d", cfg->ready_fd);
    close(cfg->ready_fd);
    cfg->ready_fd = -1;
  }
  return 0;
}

void server_stop(server *s) {
  client *c;

  if (s->stopping)
    return;
  s->stopping = 1;
  if (s->listening) {
    s->listening = 0;
    uv_close((uv_handle_t *)&s->listener, NULL);
    unlink(s->cfg->socket_path);
  }
  uv_timer_stop(&s->purge_timer);
  uv_timer_stop(&s->housekeeping);
  uv_signal_stop(&s->sigint);
  uv_signal_stop(&s->sigterm);
  /* Watches and iterations would never finish by themselves: end them
   * with an explicit status that is flushed before the clients close. */
  for (c = s->clients; c != NULL; c = c->next)
    client_shutdown(c);
  uv_timer_start(&s->stop_timer, on_stop_timer, STOP_GRACE_MS, 0);
  server_kick(s);
}

static void finish_stop(server *s) {
  if (s->done)
    return;
  s->done = 1;
  while (s->clients != NULL) {
    client_close(s->clients);
  }
  /* Clients still referenced by plugin requests are freed as those
   * complete; the plugin's close() completes or abandons them. */
  release(s);
  LOG_INFO("stopped");
}
