/* harness.c - see harness.h. */
#include "harness.h"
#include "peerstore.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#define READY_TIMEOUT_MS 120000

static const char *service_binary(void) {
  const char *p = getenv("PEERSTORED");
  return p != NULL ? p : "../service/peerstored";
}

int harness_service_argv(const char **argv) {
  int n = 0;

  /* PEERSTORE_TEST_VALGRIND=1 runs the service under valgrind too; any
   * error or leak then shows as a non-zero exit in harness_stop(). */
  if (getenv("PEERSTORE_TEST_VALGRIND") != NULL &&
      strcmp(getenv("PEERSTORE_TEST_VALGRIND"), "1") == 0) {
    argv[n++] = "/usr/bin/valgrind";
    argv[n++] = "-q";
    argv[n++] = "--leak-check=full";
    argv[n++] = "--errors-for-leak-kinds=definite,indirect,possible";
    argv[n++] = "--error-exitcode=99";
  }
  argv[n++] = service_binary();
  return n;
}

static int start(harness_svc *s, const char *const *extra) {
  const char *argv[64];
  char fdarg[16], buf[16], db[320];
  int fds[2], n = 0, i;
  struct pollfd pfd;
  ssize_t got = 0, r;
  uint64_t deadline, now;

  if (pipe(fds) != 0)
    return -1;
  snprintf(fdarg, sizeof(fdarg), "%d", fds[1]);
  n = harness_service_argv(argv);
  argv[n++] = "--socket";
  argv[n++] = s->socket_path;
  argv[n++] = "--ready-fd";
  argv[n++] = fdarg;
  /* PEERSTORE_TEST_PLUGIN=sqlite runs the same tests on a database. */
  if (getenv("PEERSTORE_TEST_PLUGIN") != NULL &&
      strcmp(getenv("PEERSTORE_TEST_PLUGIN"), "sqlite") == 0) {
    snprintf(db, sizeof(db), "%s/peerstore.db", s->dir);
    argv[n++] = "--plugin";
    argv[n++] = "sqlite";
    argv[n++] = "--database";
    argv[n++] = db;
  }
  if (getenv("PEERSTORE_TEST_LOG") == NULL) {
    argv[n++] = "--log-level";
    argv[n++] = "error";
  }
  for (i = 0; extra != NULL && extra[i] != NULL && n < 62; i++)
    argv[n++] = extra[i];
  argv[n] = NULL;
  s->pid = fork();
  if (s->pid < 0)
    return -1;
  if (s->pid == 0) {
    /* A test that crashes must not leave services behind, holding its
     * output pipe open. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    int null = open("/dev/null", O_WRONLY);
    if (null >= 0) {
      dup2(null, STDOUT_FILENO);
      close(null);
    }
    close(fds[0]);
    execv(argv[0], (char *const *)argv);
    fprintf(stderr, "cannot run %s: %s\n", argv[0], strerror(errno));
    _exit(127);
  }
  close(fds[1]);
  pfd.fd = fds[0];
  pfd.events = POLLIN;
  /* The service writes READY once it listens; EOF first means it died.
   * The limit is only for a service that hangs: under valgrind on a busy
   * machine a start can take many times its usual second or two. */
  deadline = uv_hrtime() / 1000000 + READY_TIMEOUT_MS;
  while (got < 6) {
    now = uv_hrtime() / 1000000;
    if (now >= deadline) {
      fprintf(stderr, "harness: no READY from service %d within %d s\n",
              (int)s->pid, READY_TIMEOUT_MS / 1000);
      break;
    }
    r = poll(&pfd, 1, (int)(deadline - now));
    if (r < 0 && errno != EINTR)
      break;
    if (r <= 0)
      continue; /* interrupted, or the deadline: checked above */
    r = read(fds[0], buf + got, sizeof(buf) - (size_t)got);
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0) {
      fprintf(stderr, "harness: service %d exited before READY\n",
              (int)s->pid);
      break;
    }
    got += r;
  }
  close(fds[0]);
  if (got < 6 || memcmp(buf, "READY\n", 6) != 0) {
    harness_kill(s, SIGKILL);
    return -1;
  }
  return 0;
}

/* A fresh temporary directory with the socket's path in it. */
static int make_dir(harness_svc *s) {
  const char *tmp = getenv("TMPDIR");

  memset(s, 0, sizeof(*s));
  snprintf(s->dir, sizeof(s->dir), "%s/peerstore-test-XXXXXX",
           tmp ? tmp : "/tmp");
  if (mkdtemp(s->dir) == NULL)
    return -1;
  snprintf(s->socket_path, sizeof(s->socket_path), "%s/sock", s->dir);
  return 0;
}

int harness_start(harness_svc *s, const char *const *extra) {
  return make_dir(s) == 0 ? start(s, extra) : -1;
}

/* Keeps the plugin's arguments and extra in s->args, for a restart. */
static int start_plugin(harness_svc *s, const char *const *plugin,
                        const char *const *extra) {
  int n = 0, i;

  for (i = 0; plugin[i] != NULL; i++)
    s->args[n++] = plugin[i];
  for (i = 0; extra != NULL && extra[i] != NULL && n < 31; i++)
    s->args[n++] = extra[i];
  s->args[n] = NULL;
  return start(s, s->args);
}

int harness_start_sqlite(harness_svc *s, const char *const *extra) {
  const char *plugin[] = {"--plugin", "sqlite", "--database", NULL, NULL};

  if (make_dir(s) != 0)
    return -1;
  snprintf(s->db, sizeof(s->db), "%s/data.db", s->dir);
  plugin[3] = s->db;
  return start_plugin(s, plugin, extra);
}

int harness_start_postgres(harness_svc *s, const char *conninfo,
                           const char *const *extra) {
  /* The doorbell's safety-net poll, short: a test must not wait 2 s on
   * a notification the server dropped. */
  const char *plugin[] = {"--plugin", "postgres", "-o", NULL, "-o",
                          "postgres.poll_interval_ms=200", NULL};

  if (make_dir(s) != 0)
    return -1;
  snprintf(s->conninfo, sizeof(s->conninfo), "postgres.conninfo=%s",
           conninfo);
  plugin[3] = s->conninfo;
  return start_plugin(s, plugin, extra);
}

int harness_restart(harness_svc *s, const char *const *extra) {
  if (s->pid > 0)
    return -1;
  return start(s, extra);
}

void harness_kill(harness_svc *s, int sig) {
  if (s->pid <= 0)
    return;
  kill(s->pid, sig);
  while (waitpid(s->pid, NULL, 0) < 0 && errno == EINTR)
    ;
  s->pid = 0;
}

int harness_alive(harness_svc *s) {
  return s->pid > 0 && waitpid(s->pid, NULL, WNOHANG) == 0;
}

int harness_stop(harness_svc *s) {
  int st = 0, r = 0;
  pid_t w;
  char cmd[400];

  if (s->pid > 0) {
    kill(s->pid, SIGTERM);
    r = -1;
    while ((w = waitpid(s->pid, &st, 0)) < 0 && errno == EINTR)
      ;
    if (w == s->pid && WIFEXITED(st))
      r = WEXITSTATUS(st);
    s->pid = 0;
  }
  if (s->dir[0] != '\0') {
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", s->dir);
    if (system(cmd) != 0)
      fprintf(stderr, "cannot remove %s\n", s->dir);
    s->dir[0] = '\0';
  }
  return r;
}

typedef struct until {
  int timed_out;
} until;

static void on_timeout(uv_timer_t *t) {
  until *u = t->data;
  u->timed_out = 1;
  uv_stop(t->loop);
}

int harness_run_until_ge(uv_loop_t *loop, const int *counter, int target,
                         unsigned timeout_ms) {
  uv_timer_t t;
  until u = {0};

  uv_update_time(loop);
  uv_timer_init(loop, &t);
  t.data = &u;
  uv_timer_start(&t, on_timeout, timeout_ms, 0);
  while (*counter < target && !u.timed_out)
    uv_run(loop, UV_RUN_ONCE);
  uv_close((uv_handle_t *)&t, NULL);
  uv_run(loop, UV_RUN_NOWAIT);
  return *counter >= target ? 0 : -1;
}

int harness_run_until(uv_loop_t *loop, const int *flag, unsigned timeout_ms) {
  return harness_run_until_ge(loop, flag, 1, timeout_ms);
}

int harness_drain(uv_loop_t *loop, unsigned timeout_ms) {
  uv_timer_t t;
  until u = {0};

  /* The caller may have spent long outside the loop: count from now. */
  uv_update_time(loop);
  uv_timer_init(loop, &t);
  t.data = &u;
  uv_timer_start(&t, on_timeout, timeout_ms, 0);
  uv_unref((uv_handle_t *)&t);
  uv_run(loop, UV_RUN_DEFAULT);
  uv_close((uv_handle_t *)&t, NULL);
  /* Only the timer's close is left to run, unless something else still
   * holds the loop (a failed test): do not wait for that. */
  uv_run(loop, UV_RUN_NOWAIT);
  return u.timed_out ? -1 : 0;
}

typedef struct stat_query {
  const char *name;
  int64_t value;
  int done;
} stat_query;

static void on_stats(void *arg, int status, const peerstore_stat *st,
                     size_t n) {
  stat_query *q = arg;
  size_t i;

  for (i = 0; status == 0 && i < n; i++)
    if (strcmp(st[i].name, q->name) == 0)
      q->value = (int64_t)st[i].value;
  q->done = 1;
}

int64_t harness_stat(uv_loop_t *loop, peerstore_client *c, const char *name,
                     unsigned timeout_ms) {
  stat_query q = {name, -1, 0};
  peerstore_stats_op *op = peerstore_stats(c, on_stats, &q);

  if (op == NULL)
    return -1;
  if (harness_run_until(loop, &q.done, timeout_ms) != 0)
    return -1; /* the op is left to the client's own timeout */
  return q.value;
}

int harness_memory_measurable(void) {
#if defined(__SANITIZE_ADDRESS__)
  return 0;
#else
  const char *v = getenv("PEERSTORE_TEST_VALGRIND");
  return v == NULL || strcmp(v, "1") != 0;
#endif
}

int harness_wait_stat(uv_loop_t *loop, peerstore_client *c, const char *name,
                      int64_t want, unsigned timeout_ms) {
  uint64_t end = uv_now(loop) + timeout_ms;

  for (;;) {
    if (harness_stat(loop, c, name, timeout_ms) >= want)
      return 0;
    uv_update_time(loop);
    if (uv_now(loop) >= end)
      return -1;
  }
}

long harness_status_kb(const harness_svc *s, const char *field) {
  char path[64], line[256], fmt[64];
  long kb = -1;
  FILE *f;

  snprintf(path, sizeof(path), "/proc/%d/status", (int)s->pid);
  snprintf(fmt, sizeof(fmt), "%s: %%ld kB", field);
  if ((f = fopen(path, "r")) == NULL)
    return -1;
  while (fgets(line, sizeof(line), f) != NULL)
    if (sscanf(line, fmt, &kb) == 1)
      break;
  fclose(f);
  return kb;
}

long harness_rss_kb(const harness_svc *s) {
  return harness_status_kb(s, "VmRSS");
}

int harness_raw_connect(const char *path) {
  struct sockaddr_un sa;
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

  if (fd < 0)
    return -1;
  memset(&sa, 0, sizeof(sa));
  sa.sun_family = AF_UNIX;
  snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
  if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

/* Reads exactly n bytes, waiting at most timeout_ms for each piece. */
static int read_full(int fd, uint8_t *p, size_t n, unsigned timeout_ms) {
  struct pollfd pfd = {fd, POLLIN, 0};
  size_t got;
  ssize_t r;

  for (got = 0; got < n; got += (size_t)r) {
    if (poll(&pfd, 1, (int)timeout_ms) != 1)
      return -1;
    r = recv(fd, p + got, n - got, 0);
    if (r <= 0)
      return -1;
  }
  return 0;
}

long harness_read_frame(int fd, uint16_t type, uint32_t *request,
                        uint8_t *body, size_t size, unsigned timeout_ms) {
  static uint8_t frame[1 << 16];
  uint8_t hdr[12];
  uint32_t len;

  for (;;) {
    if (read_full(fd, hdr, sizeof(hdr), timeout_ms) != 0)
      return -1;
    len = (uint32_t)hdr[0] << 24 | (uint32_t)hdr[1] << 16 |
          (uint32_t)hdr[2] << 8 | hdr[3];
    if (len > sizeof(frame) ||
        read_full(fd, frame, len, timeout_ms) != 0)
      return -1;
    if ((uint16_t)(hdr[4] << 8 | hdr[5]) != type)
      continue;
    if (request != NULL)
      *request = (uint32_t)hdr[8] << 24 | (uint32_t)hdr[9] << 16 |
                 (uint32_t)hdr[10] << 8 | hdr[11];
    memcpy(body, frame, len < size ? len : size);
    return (long)len;
  }
}

/* ------------------------------------------------------------------ */
/* A PostgreSQL server                                                 */

static int pg_script(const char *action, const char *dir, const char *arg) {
  const char *script = getenv("PEERSTORE_PG_CLUSTER");
  char cmd[1024];
  int st;

  if (script == NULL)
    script = "./tests/pg_cluster.sh";
  snprintf(cmd, sizeof(cmd), "sh '%s' %s '%s' %s%s%s", script, action, dir,
           arg ? "'" : "", arg ? arg : "", arg ? "'" : "");
  st = system(cmd);
  if (st == -1 || !WIFEXITED(st))
    return -1;
  return WEXITSTATUS(st) == 0 ? 0 : WEXITSTATUS(st) == 77 ? 77 : -1;
}

int harness_pg_start(harness_pg *pg) {
  int r;

  /* Directly under /tmp: the server's user must reach it. */
  snprintf(pg->dir, sizeof(pg->dir), "/tmp/pstest-pg.XXXXXX");
  if (mkdtemp(pg->dir) == NULL)
    return -1;
  if ((r = pg_script("start", pg->dir, NULL)) != 0) {
    pg_script("destroy", pg->dir, NULL);
    pg->dir[0] = '\0';
  }
  return r;
}

int harness_pg_ctl(harness_pg *pg, const char *action, const char *arg) {
  int r;

  if (pg->dir[0] == '\0')
    return -1;
  r = pg_script(action, pg->dir, arg);
  if (strcmp(action, "destroy") == 0)
    pg->dir[0] = '\0';
  return r == 0 ? 0 : -1;
}

void harness_pg_conninfo(const harness_pg *pg, const char *name, char *out,
                         size_t size) {
  snprintf(out, size, "host=%s user=postgres dbname=%s", pg->dir, name);
}
