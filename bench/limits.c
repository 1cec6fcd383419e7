/* limits.c - the raw limits the workloads are compared with, measured on
 * the same machine in the same run: what the kernel's Unix sockets, libuv,
 * SQLite and an in-process hash table can do with no peerstore in between.
 */
#include <fcntl.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"
#include "hmap.h"

extern const char peerstore_sqlite_schema[];

#define MSG 100

static int read_full(int fd, char *b, size_t n) {
  size_t got = 0;
  ssize_t r;

  while (got < n) {
    if ((r = read(fd, b + got, n - got)) <= 0)
      return -1;
    got += (size_t)r;
  }
  return 0;
}

/* ------------------------------------------------------------------ */
/* Ping-pong, blocking                                                 */

double limit_pingpong_blocking(void) {
  int sv[2], n = 0;
  char buf[MSG];
  double t0, t;
  pid_t pid;

  if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0)
    bench_die("socketpair");
  memset(buf, 1, sizeof(buf));
  if ((pid = fork()) == 0) {
    close(sv[0]);
    while (read_full(sv[1], buf, MSG) == 0)
      if (write(sv[1], buf, MSG) != MSG)
        break;
    _exit(0);
  }
  close(sv[1]);
  t0 = bench_now();
  do {
    if (write(sv[0], buf, MSG) != MSG || read_full(sv[0], buf, MSG) != 0)
      bench_die("ping-pong");
    n++;
  } while ((n & 255) || bench_now() - t0 < bench.seconds / 2);
  t = bench_now() - t0;
  close(sv[0]);
  waitpid(pid, NULL, 0);
  return n / t;
}

/* ------------------------------------------------------------------ */
/* Ping-pong, libuv on both sides                                      */

typedef struct pp {
  uv_loop_t loop;
  uv_pipe_t pipe;
  uv_write_t w;
  char buf[MSG];
  char rbuf[4096];
  size_t have;
  int count;
  int server;
  double deadline;
} pp;

static void pp_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b) {
  pp *p = h->data;
  (void)hint;
  *b = uv_buf_init(p->rbuf + p->have, (unsigned)(sizeof(p->rbuf) - p->have));
}

static void pp_send(pp *p) {
  uv_buf_t b = uv_buf_init(p->buf, MSG);
  uv_write(&p->w, (uv_stream_t *)&p->pipe, &b, 1, NULL);
}

static void pp_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  pp *p = s->data;

  (void)b;
  if (n < 0) {
    uv_close((uv_handle_t *)&p->pipe, NULL);
    return;
  }
  p->have += (size_t)n;
  while (p->have >= MSG) {
    p->have -= MSG;
    memmove(p->rbuf, p->rbuf + MSG, p->have);
    p->count++;
    if (!p->server && (p->count & 255) == 0 && bench_now() > p->deadline) {
      uv_close((uv_handle_t *)&p->pipe, NULL);
      return;
    }
    pp_send(p);
  }
}

static void pp_run(pp *p, int fd) {
  uv_loop_init(&p->loop);
  uv_pipe_init(&p->loop, &p->pipe, 0);
  uv_pipe_open(&p->pipe, fd);
  p->pipe.data = p;
  memset(p->buf, 2, sizeof(p->buf));
  uv_read_start((uv_stream_t *)&p->pipe, pp_alloc, pp_read);
  if (!p->server)
    pp_send(p);
  uv_run(&p->loop, UV_RUN_DEFAULT);
  uv_loop_close(&p->loop);
}

double limit_pingpong_libuv(void) {
  static pp p;
  int sv[2];
  double t0;
  pid_t pid;

  if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0)
    bench_die("socketpair");
  memset(&p, 0, sizeof(p));
  if ((pid = fork()) == 0) {
    close(sv[0]);
    p.server = 1;
    pp_run(&p, sv[1]);
    _exit(0);
  }
  close(sv[1]);
  t0 = bench_now();
  p.deadline = t0 + bench.seconds / 2;
  pp_run(&p, sv[0]);
  waitpid(pid, NULL, 0);
  return p.count / (bench_now() - t0);
}

/* ------------------------------------------------------------------ */
/* Streaming, one write per message                                    */

double limit_stream_per_message(void) {
  int sv[2], n = 200000, i;
  char msg[MSG], buf[65536];
  size_t total = (size_t)n * MSG, got = 0;
  double t0, t;
  ssize_t r;
  pid_t pid;

  if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0)
    bench_die("socketpair");
  memset(msg, 3, sizeof(msg));
  t0 = bench_now();
  if ((pid = fork()) == 0) {
    close(sv[0]);
    for (i = 0; i < n; i++)
      if (write(sv[1], msg, MSG) != MSG)
        _exit(1);
    _exit(0);
  }
  close(sv[1]);
  while (got < total && (r = read(sv[0], buf, sizeof(buf))) > 0)
    got += (size_t)r;
  t = bench_now() - t0;
  close(sv[0]);
  waitpid(pid, NULL, 0);
  return n / t;
}

/* ------------------------------------------------------------------ */
/* Fan-out through a relay                                             */

/* W4's path with nothing but the kernel: this process sends a timestamped
 * message to a relay process, the relay writes it to FANOUT sockets with
 * one write each, and this process collects all FANOUT copies through
 * epoll before it sends the next.  The latency of each copy: what a
 * service that relays notifications cannot beat. */
static void fanout_relay(int in, int fan[][2]) {
  char buf[MSG];
  int i;

  while (read_full(in, buf, MSG) == 0)
    for (i = 0; i < FANOUT; i++)
      if (write(fan[i][1], buf, MSG) != MSG)
        _exit(1);
  _exit(0);
}

void limit_fanout(int n, double *p50, double *p99) {
  int up[2], fan[FANOUT][2], ep = -1, i, k;
  double *lat = calloc((size_t)n * FANOUT, sizeof(*lat)), sent;
  struct epoll_event ev, evs[FANOUT];
  size_t nlat = 0;
  char buf[MSG];
  pid_t pid;

  if (lat == NULL || (ep = epoll_create1(0)) < 0 ||
      socketpair(AF_UNIX, SOCK_STREAM, 0, up) != 0)
    bench_die("fan-out set-up");
  for (i = 0; i < FANOUT; i++) {
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, fan[i]) != 0)
      bench_die("socketpair");
    ev.events = EPOLLIN;
    ev.data.fd = fan[i][0];
    epoll_ctl(ep, EPOLL_CTL_ADD, fan[i][0], &ev);
  }
  if ((pid = fork()) == 0) {
    /* The relay blocks on its writes: the sockets never fill here. */
    close(up[0]);
    for (i = 0; i < FANOUT; i++) {
      close(fan[i][0]);
      fcntl(fan[i][1], F_SETFL, 0);
    }
    fanout_relay(up[1], fan);
  }
  close(up[1]);
  for (i = 0; i < FANOUT; i++)
    close(fan[i][1]);
  memset(buf, 4, sizeof(buf));
  for (k = 0; k < n; k++) {
    int heard = 0;

    sent = bench_now();
    memcpy(buf, &sent, sizeof(sent));
    if (write(up[0], buf, MSG) != MSG)
      bench_die("fan-out write");
    while (heard < FANOUT) {
      int ready = epoll_wait(ep, evs, FANOUT, 10000);

      if (ready <= 0)
        bench_die("fan-out relay stalled");
      for (i = 0; i < ready; i++) {
        if (read_full(evs[i].data.fd, buf, MSG) != 0)
          bench_die("fan-out read");
        memcpy(&sent, buf, sizeof(sent));
        lat[nlat++] = bench_now() - sent;
        heard++;
      }
    }
  }
  close(up[0]);
  for (i = 0; i < FANOUT; i++)
    close(fan[i][0]);
  close(ep);
  waitpid(pid, NULL, 0);
  bench_percentiles(lat, nlat, p50, p99);
  free(lat);
}

/* ------------------------------------------------------------------ */
/* SQLite, in process                                                  */

/* A new database at path in the service's schema, with extra pragmas. */
static sqlite3 *schema_db(const char *path, const char *pragmas) {
  sqlite3 *db;

  unlink(path);
  if (sqlite3_open(path, &db) != SQLITE_OK ||
      sqlite3_exec(db, pragmas, NULL, NULL, NULL) != SQLITE_OK ||
      sqlite3_exec(db, peerstore_sqlite_schema, NULL, NULL, NULL) != SQLITE_OK)
    bench_die("cannot create a database");
  return db;
}

/* Inserts W2's records 1..n, rows_per_tx a transaction, as the plugin
 * stores them; stops early once budget seconds have passed (0: never).
 * Returns how many it inserted. */
static int insert_records(sqlite3 *db, int n, int rows_per_tx,
                          double budget) {
  uint8_t value[VALUE_SIZE];
  peerstore_peer_id p;
  sqlite3_stmt *st;
  char key[32];
  double t0 = bench_now();
  int i;

  memset(value, 0x5a, sizeof(value));
  if (sqlite3_prepare_v2(db,
                         "INSERT INTO records (revision, subsystem, peer, "
                         "key, value, expiry, writer) "
                         "VALUES (?, CAST('bench' AS BLOB), ?, ?, ?, ?, 0)",
                         -1, &st, NULL) != SQLITE_OK)
    bench_die("cannot prepare an insert");
  for (i = 0; i < n; i++) {
    if (i % rows_per_tx == 0) {
      if (i > 0 && budget > 0 && bench_now() - t0 > budget)
        break;
      sqlite3_exec(db, "BEGIN", NULL, NULL, NULL);
    }
    bench_record(i, &p, key, sizeof(key));
    sqlite3_bind_int64(st, 1, i + 1);
    sqlite3_bind_blob(st, 2, p.bytes, 32, SQLITE_STATIC);
    sqlite3_bind_blob(st, 3, key, (int)strlen(key), SQLITE_STATIC);
    sqlite3_bind_blob(st, 4, value, sizeof(value), SQLITE_STATIC);
    sqlite3_bind_int64(st, 5, INT64_MAX);
    if (sqlite3_step(st) != SQLITE_DONE)
      bench_die("insert failed");
    sqlite3_reset(st);
    if ((i + 1) % rows_per_tx == 0 || i + 1 == n)
      sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
  }
  if (sqlite3_get_autocommit(db) == 0)
    sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
  sqlite3_finalize(st);
  return i;
}

/* Fills path with n records, as a database the sqlite plugin opens as its
 * own (for the start-up figure). */
void bench_make_db(const char *path, int n) {
  char sql[160];
  sqlite3 *db;

  snprintf(sql, sizeof(sql),
           "PRAGMA journal_mode = WAL; PRAGMA application_id = %d; "
           "PRAGMA user_version = 3;",
           0x50535452);
  db = schema_db(path, sql);
  insert_records(db, n, 10000, 0);
  snprintf(sql, sizeof(sql), "UPDATE meta SET value = %d", n);
  sqlite3_exec(db, sql, NULL, NULL, NULL);
  sqlite3_close(db);
}

double limit_sqlite_inserts(int n, int rows_per_tx) {
  char path[300], sql[128];
  sqlite3 *db;
  double t0, t;
  int done;

  snprintf(path, sizeof(path), "%s/raw.db", bench.dir);
  snprintf(sql, sizeof(sql),
           "PRAGMA journal_mode = WAL; PRAGMA synchronous = %s;",
           bench.sync_mode);
  db = schema_db(path, sql);
  t0 = bench_now();
  done = insert_records(db, n, rows_per_tx, bench.seconds);
  t = bench_now() - t0;
  sqlite3_close(db);
  unlink(path);
  return done / t;
}

/* ------------------------------------------------------------------ */
/* An in-process hash table                                            */

typedef struct hent {
  peerstore__hnode h;
  peerstore_peer_id peer;
  char key[16];
  uint8_t value[VALUE_SIZE];
} hent;

/* The same records into a chained hash table, one allocation each: what
 * keeping them costs with no protocol, no process boundary, no order. */
double limit_hash_inserts(int n) {
  peerstore__hmap m;
  hent *e;
  double t0, t;
  size_t i;
  int k;

  peerstore__hmap_init(&m);
  t0 = bench_now();
  for (k = 0; k < n; k++) {
    if ((e = malloc(sizeof(*e))) == NULL)
      bench_die("out of memory");
    bench_record(k, &e->peer, e->key, sizeof(e->key));
    memset(e->value, 1, sizeof(e->value));
    peerstore__hmap_insert(
        &m, &e->h,
        peerstore__hash(e->key, strlen(e->key),
                        peerstore__hash(e->peer.bytes, 32, 0)));
  }
  t = bench_now() - t0;
  for (i = 0; i <= m.mask; i++) {
    peerstore__hnode *x = m.buckets[i], *next;
    for (; x != NULL; x = next) {
      next = x->next;
      free(x);
    }
  }
  peerstore__hmap_free(&m);
  return n / t;
}
