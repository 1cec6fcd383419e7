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
#include <fcntl.h>
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

typedef char sun_path_t[sizeof(((struct sockaddr_un *)0)->sun_path)];

/* The socket's directory, created if it is missing (one level, 0755). */
static void parent_dir(const char *path, sun_path_t dir) {
  char *slash;

  snprintf(dir, sizeof(sun_path_t), "%s", path);
  slash = strrchr(dir, '/');
  if (slash == NULL) {
    snprintf(dir, sizeof(sun_path_t), ".");
    return;
  }
  *(slash == dir ? slash + 1 : slash) = '\0';
  if (mkdir(dir, 0755) != 0 && errno != EEXIST)
    LOG_WARN("cannot create directory %s: %s", dir, strerror(errno));
}

/* Nobody else may be able to replace or redirect the socket: its directory
 * belongs to us or to root, and is writable by no one else unless it is
 * sticky (as /tmp is: there only an entry's owner may rename or remove
 * it). */
static int check_dir(const char *dir) {
  struct stat st;

  if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
    LOG_ERROR("cannot use directory %s for the socket: %s", dir,
              errno ? strerror(errno) : "not a directory");
    return -1;
  }
  if (st.st_uid != geteuid() && st.st_uid != 0) {
    LOG_ERROR("directory %s belongs to uid %u, who could replace the "
              "socket; choose another --socket", dir, (unsigned)st.st_uid);
    return -1;
  }
  if ((st.st_mode & (S_IWGRP | S_IWOTH)) && !(st.st_mode & S_ISVTX)) {
    LOG_ERROR("directory %s is writable by others and not sticky: anyone "
              "could replace the socket; choose another --socket", dir);
    return -1;
  }
  return 0;
}

static int sun_addr(struct sockaddr_un *sa, const char *path) {
  memset(sa, 0, sizeof(*sa));
  sa->sun_family = AF_UNIX;
  if (strlen(path) >= sizeof(sa->sun_path))
    return -1;
  memcpy(sa->sun_path, path, strlen(path));
  return 0;
}

/* Binds a listening socket at the configured path without a moment in
 * which someone else could interfere: it is bound in a private directory
 * of ours (0700), given its mode and group there - never through a
 * symlink - and then hard-linked into place, which fails rather than
 * replace anything that appeared at the path meanwhile.  Records the
 * socket's inode, so that shutdown removes only its own socket.  Returns
 * the descriptor, or -1 after logging why. */
static int bind_socket(server *s) {
  const char *path = s->cfg->socket_path;
  sun_path_t dir, priv, tmp;
  struct sockaddr_un sa;
  struct stat st;
  const char *step = "bind";
  mode_t old;
  int fd = -1, made = 0, bound = 0, r = -1;

  parent_dir(path, dir);
  if (check_dir(dir) != 0 || clear_stale_socket(path) != 0)
    return -1;
  if (strlen(dir) + sizeof("/.peerstore-XXXXXX/s") > sizeof(tmp)) {
    LOG_ERROR("socket path too long to bind safely: %s", path);
    return -1;
  }
  snprintf(priv, sizeof(priv), "%s/.peerstore-XXXXXX", dir);
  if (mkdtemp(priv) == NULL) {
    step = "create a private directory";
    goto out;
  }
  made = 1;
  memcpy(tmp, priv, strlen(priv));
  memcpy(tmp + strlen(priv), "/s", 3);
  sun_addr(&sa, tmp);
  if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0)
    goto out;
  /* Owner-only from the moment it exists. */
  old = umask(0177);
  r = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
  umask(old);
  if (r != 0)
    goto out;
  bound = 1;
  r = -1;
  step = "set the socket's mode";
  if (fchmodat(AT_FDCWD, tmp, s->cfg->socket_mode, AT_SYMLINK_NOFOLLOW) !=
      0)
    goto out;
  step = "set the socket's group";
  if (s->cfg->socket_gid >= 0 &&
      fchownat(AT_FDCWD, tmp, (uid_t)-1, (gid_t)s->cfg->socket_gid,
               AT_SYMLINK_NOFOLLOW) != 0)
    goto out;
  step = "check the socket";
  if (lstat(tmp, &st) != 0 || !S_ISSOCK(st.st_mode)) {
    errno = errno ? errno : EEXIST;
    goto out;
  }
  s->sock_dev = st.st_dev;
  s->sock_ino = st.st_ino;
  step = "link the socket into place";
  if (link(tmp, path) != 0)
    goto out;
  step = "listen";
  if (listen(fd, 511) != 0) {
    remove_own_socket(s);
    goto out;
  }
  r = 0;
out:
  if (r != 0)
    LOG_ERROR("cannot %s for %s: %s", step, path, strerror(errno));
  if (bound)
    unlink(tmp);
  if (made)
    rmdir(priv);
  if (r != 0 && fd >= 0) {
    close(fd);
    fd = -1;
  }
  return fd;
}

void remove_own_socket(server *s) {
  const char *path = s->cfg->socket_path;
  struct stat st;

  if (s->sock_ino == 0)
    return;
  if (lstat(path, &st) == 0 && st.st_dev == s->sock_dev &&
      st.st_ino == s->sock_ino)
    unlink(path);
  else
    LOG_WARN("%s is no longer this service's socket; leaving it", path);
  s->sock_ino = 0;
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
  struct sockaddr_un sa;
  int fd, r, passed;

  /* Passed by systemd: its socket unit owns the path (and its mode), so
   * nothing is bound here and nothing is unlinked at the end. */
  if ((passed = sd_listener(&fd)) < 0)
    return -1;
  if (!passed && sun_addr(&sa, path) != 0) {
    LOG_ERROR("socket path too long: %s", path);
    return -1;
  }
  if (!passed && (fd = bind_socket(s)) < 0)
    return -1;
  /* libuv gets the descriptor, not the path: it would unlink the path
   * when the handle closes, whatever is there by then. */
  uv_pipe_init(s->loop, &s->listener, 0);
  s->listener.data = s;
  if ((r = uv_pipe_open(&s->listener, fd)) != 0)
    close(fd);
  else
    r = uv_listen((uv_stream_t *)&s->listener, 511, on_connection);
  if (r != 0) {
    LOG_ERROR("cannot listen on %s: %s", path, uv_strerror(r));
    remove_own_socket(s);
    uv_close((uv_handle_t *)&s->listener, NULL);
    return -1;
  }
  s->listening = 1;
  if (passed)
    LOG_INFO("listening on the socket systemd passed");
  else
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

  watch_run_deferred(s);
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
  if (s->n_backlog > 0 || s->watches.defer_head != NULL)
    return; /* stay active: more input or watch reads next turn */
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
  if (cfg->read_timeout_ms < d)
    d = cfg->read_timeout_ms;
  return d < 4000 ? (d / 4 > 0 ? d / 4 : 1) : 1000;
}

static void on_housekeeping(uv_timer_t *t) {
  client_check_stalled(t->data);
  iter_check_idle(t->data);
  backup_check_idle(t->data);
  watch_tell_progress(t->data);
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
  uv_close((uv_handle_t *)&s->watchdog, NULL);
  uv_close((uv_handle_t *)&s->sigint, NULL);
  uv_close((uv_handle_t *)&s->sigterm, NULL);
  plugin_unload(&s->plugin);
  dispatch_fini(s);
  watch_fini(s);
  iter_fini(s);
}

static void on_watchdog(uv_timer_t *t) {
  (void)t;
  sd_say("WATCHDOG=1");
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
  {
    /* Everything the plugin holds counts as reported. */
    uint64_t records;
    s->plugin.desc->ops->counts(s->plugin.instance, &records, &s->reported);
  }
  uv_idle_init(loop, &s->idle);
  s->idle.data = s;
  uv_timer_init(loop, &s->purge_timer);
  s->purge_timer.data = s;
  uv_timer_init(loop, &s->stop_timer);
  s->stop_timer.data = s;
  uv_timer_init(loop, &s->housekeeping);
  s->housekeeping.data = s;
  uv_timer_init(loop, &s->watchdog);
  s->watchdog.data = s;
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
  /* Listening and the plugin open: clients may come. */
  sd_say("READY=1");
  {
    /* From the loop, so that a loop that stops turning stops saying it
     * is alive, and systemd restarts the service. */
    uint64_t ms = sd_watchdog_ms();
    if (ms > 0)
      uv_timer_start(&s->watchdog, on_watchdog, ms, ms);
  }
  return 0;
}

void server_stop(server *s) {
  client *c;

  if (s->stopping)
    return;
  s->stopping = 1;
  sd_say("STOPPING=1");
  if (s->listening) {
    s->listening = 0;
    uv_close((uv_handle_t *)&s->listener, NULL);
    remove_own_socket(s);
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
