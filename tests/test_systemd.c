/* test_systemd.c - peerstored under systemd's protocols, without systemd:
 * the test plays its part.  Socket activation (a listening socket passed
 * as fd 3 with LISTEN_FDS/LISTEN_PID), readiness and stopping
 * (NOTIFY_SOCKET datagrams, Type=notify) and the watchdog
 * (WATCHDOG_USEC), through a real peerstored.  Built when configure found
 * libsystemd. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"
#include "peerstore.h"

#define TIMEOUT 60000

typedef struct fx {
  char dir[256];
  char sock[300];
  char notify_path[300];
  char err[300];
  int notify; /* our end of NOTIFY_SOCKET */
  pid_t pid;
} fx;

static int unix_socket(int type, const char *path, int listening) {
  struct sockaddr_un sa;
  int fd = socket(AF_UNIX, type, 0);

  memset(&sa, 0, sizeof(sa));
  sa.sun_family = AF_UNIX;
  snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
  if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 ||
      (listening && listen(fd, 16) != 0))
    return -1;
  return fd;
}

static int setup(void **state) {
  static fx f;
  const char *tmp = getenv("TMPDIR");

  memset(&f, 0, sizeof(f));
  snprintf(f.dir, sizeof(f.dir), "%s/peerstore-sd-XXXXXX",
           tmp ? tmp : "/tmp");
  assert_non_null(mkdtemp(f.dir));
  snprintf(f.sock, sizeof(f.sock), "%s/sock", f.dir);
  snprintf(f.notify_path, sizeof(f.notify_path), "%s/notify", f.dir);
  snprintf(f.err, sizeof(f.err), "%s/stderr", f.dir);
  f.notify = unix_socket(SOCK_DGRAM, f.notify_path, 0);
  assert_true(f.notify >= 0);
  *state = &f;
  return 0;
}

static int teardown(void **state) {
  fx *f = *state;
  char cmd[400];

  if (f->pid > 0) {
    kill(f->pid, SIGKILL);
    waitpid(f->pid, NULL, 0);
  }
  close(f->notify);
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
  assert_int_equal(system(cmd), 0);
  return 0;
}

/* Starts the service with fds passed as systemd would (passed[0..n-1]
 * become 3, 4, ...; n may be 0), NOTIFY_SOCKET set, and watchdog_usec
 * (0: none). */
static void spawn(fx *f, const int *passed, int n, unsigned watchdog_usec) {
  const char *argv[16];
  int a = harness_service_argv(argv), i;

  argv[a++] = "--socket";
  argv[a++] = f->sock;
  argv[a++] = "--log-level";
  argv[a++] = "info";
  argv[a] = NULL;
  f->pid = fork();
  assert_true(f->pid >= 0);
  if (f->pid == 0) {
    char num[32];
    int err = open(f->err, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    /* Out of the way of 3, 4, ... first, then into place. */
    int moved[4];
    for (i = 0; i < n; i++)
      moved[i] = fcntl(passed[i], F_DUPFD_CLOEXEC, 10);
    for (i = 0; i < n; i++)
      dup2(moved[i], 3 + i);
    if (err >= 0)
      dup2(err, STDERR_FILENO);
    if (n > 0) {
      snprintf(num, sizeof(num), "%d", n);
      setenv("LISTEN_FDS", num, 1);
      snprintf(num, sizeof(num), "%d", (int)getpid());
      setenv("LISTEN_PID", num, 1);
    }
    setenv("NOTIFY_SOCKET", f->notify_path, 1);
    if (watchdog_usec > 0) {
      snprintf(num, sizeof(num), "%u", watchdog_usec);
      setenv("WATCHDOG_USEC", num, 1);
      snprintf(num, sizeof(num), "%d", (int)getpid());
      setenv("WATCHDOG_PID", num, 1);
    }
    execv(argv[0], (char *const *)argv);
    _exit(127);
  }
}

/* Reads notifications until one holds want; 0, or -1 after timeout_ms
 * without one. */
static int await_state(fx *f, const char *want, unsigned timeout_ms) {
  char buf[512];
  uint64_t deadline = uv_hrtime() / 1000000 + timeout_ms;

  for (;;) {
    struct pollfd p = {f->notify, POLLIN, 0};
    int64_t left = (int64_t)(deadline - uv_hrtime() / 1000000);
    ssize_t n;
    if (left <= 0 || poll(&p, 1, (int)left) <= 0)
      return -1;
    if ((n = recv(f->notify, buf, sizeof(buf) - 1, 0)) <= 0)
      continue;
    buf[n] = '\0';
    if (strstr(buf, want) != NULL)
      return 0;
  }
}

static int wait_exit(fx *f) {
  int st = 0;

  while (waitpid(f->pid, &st, 0) < 0 && errno == EINTR)
    ;
  f->pid = 0;
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Clients through the service's socket: what stats says of "clients". */
static int64_t clients_seen(fx *f) {
  uv_loop_t loop;
  peerstore_connect_opts o;
  peerstore_client *c;
  int64_t n;

  uv_loop_init(&loop);
  peerstore_connect_opts_init(&o);
  o.timeout_ms = 0;
  c = peerstore_connect_ex(&loop, f->sock, &o);
  assert_non_null(c);
  n = harness_stat(&loop, c, "clients_total", TIMEOUT);
  peerstore_disconnect(c, 0);
  assert_int_equal(harness_drain(&loop, TIMEOUT), 0);
  assert_int_equal(uv_loop_close(&loop), 0);
  return n;
}

static int file_has(const char *path, const char *what) {
  char buf[8192];
  FILE *fp = fopen(path, "r");
  size_t n;

  if (fp == NULL)
    return 0;
  n = fread(buf, 1, sizeof(buf) - 1, fp);
  fclose(fp);
  buf[n] = '\0';
  return strstr(buf, what) != NULL;
}

/* ------------------------------------------------------------------ */
/* Tests                                                               */

/* Socket activation: the service serves on the socket it was given,
 * binds nothing, says READY=1 once it does, STOPPING=1 when told to
 * stop, and leaves the socket - the socket unit's - in place. */
static void test_a_passed_socket_is_served_and_left_to_its_unit(
    void **state) {
  fx *f = *state;
  struct stat st;
  int lfd = unix_socket(SOCK_STREAM, f->sock, 1);

  assert_true(lfd >= 0);
  spawn(f, &lfd, 1, 0);
  close(lfd);
  assert_int_equal(await_state(f, "READY=1", TIMEOUT), 0);
  assert_true(clients_seen(f) >= 1);
  assert_true(file_has(f->err, "listening on the socket systemd passed"));
  kill(f->pid, SIGTERM);
  assert_int_equal(await_state(f, "STOPPING=1", TIMEOUT), 0);
  assert_int_equal(wait_exit(f), 0);
  assert_int_equal(stat(f->sock, &st), 0);
  assert_true(S_ISSOCK(st.st_mode));
}

/* Without a passed socket (Type=notify alone) it binds its own, says
 * READY=1 only once clients can connect, and removes its socket when it
 * stops. */
static void test_ready_is_said_once_its_own_socket_accepts(void **state) {
  fx *f = *state;
  struct stat st;

  spawn(f, NULL, 0, 0);
  assert_int_equal(await_state(f, "READY=1", TIMEOUT), 0);
  assert_true(clients_seen(f) >= 1); /* no retry: it accepts already */
  kill(f->pid, SIGTERM);
  assert_int_equal(await_state(f, "STOPPING=1", TIMEOUT), 0);
  assert_int_equal(wait_exit(f), 0);
  assert_int_equal(stat(f->sock, &st), -1);
}

/* WatchdogSec=: WATCHDOG=1 comes from the loop, twice an interval. */
static void test_the_watchdog_is_fed_while_the_loop_runs(void **state) {
  fx *f = *state;
  int i;

  spawn(f, NULL, 0, 200000);
  assert_int_equal(await_state(f, "READY=1", TIMEOUT), 0);
  for (i = 0; i < 3; i++)
    assert_int_equal(await_state(f, "WATCHDOG=1", TIMEOUT), 0);
  kill(f->pid, SIGTERM);
  assert_int_equal(wait_exit(f), 0);
}

/* A passed socket it cannot serve on - not listening, or more than one -
 * stops the start with a message naming the unit's setting, rather than
 * binding the path behind the socket unit's back. */
static void test_a_socket_it_cannot_serve_stops_the_start(void **state) {
  fx *f = *state;
  char path[320];
  int fds[2];

  snprintf(path, sizeof(path), "%s/dgram", f->dir);
  fds[0] = unix_socket(SOCK_DGRAM, path, 0);
  assert_true(fds[0] >= 0);
  spawn(f, fds, 1, 0);
  assert_int_equal(wait_exit(f), 1);
  assert_true(file_has(f->err, "not a listening Unix stream socket"));
  close(fds[0]);

  fds[0] = unix_socket(SOCK_STREAM, f->sock, 1);
  snprintf(path, sizeof(path), "%s/second", f->dir);
  fds[1] = unix_socket(SOCK_STREAM, path, 1);
  assert_true(fds[0] >= 0 && fds[1] >= 0);
  spawn(f, fds, 2, 0);
  assert_int_equal(wait_exit(f), 1);
  assert_true(file_has(f->err, "2 sockets passed"));
  close(fds[0]);
  close(fds[1]);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(
          test_a_passed_socket_is_served_and_left_to_its_unit, setup,
          teardown),
      cmocka_unit_test_setup_teardown(
          test_ready_is_said_once_its_own_socket_accepts, setup, teardown),
      cmocka_unit_test_setup_teardown(
          test_the_watchdog_is_fed_while_the_loop_runs, setup, teardown),
      cmocka_unit_test_setup_teardown(
          test_a_socket_it_cannot_serve_stops_the_start, setup, teardown),
  };

  signal(SIGPIPE, SIG_IGN);
  return cmocka_run_group_tests_name("systemd", tests, NULL, NULL) != 0;
}
