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
#include "sqlite_queries.h" /* SQLITE_SCHEMA_VERSION */
#include "buf.h"
#include "hmap.h"
#include "wire.h"
#include "memory.h"
#include "text.h"

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
/* W3's bytes through a socket                                         */

static uint32_t get_be(const uint8_t *p, int n) {
  uint32_t v = 0;

  while (n-- > 0)
    v = v << 8 | *p++;
  return v;
}

/* Hands each RECORD frame of buf[0..n) to bench_consume, with the least
 * decoding a reader can do (its key copied out with a NUL, as it must be
 * for a C string); returns the bytes of the whole frames. */
static size_t consume_frames(const uint8_t *b, size_t n, long *records) {
  size_t off = 0;

  while (n - off >= PEERSTORE_HEADER_SIZE) {
    size_t len = get_be(b + off, 4), ssn, kn;
    const uint8_t *p = b + off + PEERSTORE_HEADER_SIZE;
    peerstore_record rec;
    char key[PEERSTORE_KEY_MAX + 1];

    if (n - off - PEERSTORE_HEADER_SIZE < len)
      break;
    ssn = get_be(p, 2);
    p += 2 + ssn + PEERSTORE_PEER_ID_SIZE;
    kn = get_be(p, 2);
    memcpy(key, p + 2, kn);
    key[kn] = '\0';
    p += 2 + kn + 8 + 8 + 4;
    rec.key = key;
    rec.value_size = get_be(p, 4);
    rec.value = p + 4;
    bench_consume(records, &rec);
    off += PEERSTORE_HEADER_SIZE + len;
  }
  return off;
}

/* W3's records as the service sends them (RECORD frames, encoded
 * beforehand) written by another process in 64 KiB writes and read here
 * in 64 KiB reads, each record handed to what W3 does with it: what an
 * iteration through a Unix socket cannot beat on this machine.  The
 * writer sends from one buffer of the first STREAM_RECORDS records' frames
 * over and over, hot in its cache as a service's output buffer is (the
 * cost of reading the records where they are kept is the in-process
 * walk's).  Records per second, the median of rounds. */
#define STREAM_RECORDS 4096
double limit_record_stream(int n, int rounds) {
  double *rate = calloc((size_t)rounds, sizeof(*rate)), p50, p99;
  uint8_t value[VALUE_SIZE], *in = malloc(1 << 17);
  peerstore__buf enc = {0};
  size_t tail = 0; /* the bytes of the first n % STREAM_RECORDS frames */
  int i, k;

  if (rate == NULL || in == NULL)
    bench_die("out of memory");
  memset(value, 0x5a, sizeof(value));
  for (i = 0; i < STREAM_RECORDS; i++) {
    peerstore_record r;
    char key[32];

    if (i == n % STREAM_RECORDS)
      tail = enc.len;
    bench_full_record(i, &r, key, sizeof(key), value);
    if (peerstore__put_record(&enc, 1, &r, 0) != 0)
      bench_die("out of memory");
  }
  for (k = 0; k < rounds; k++) {
    size_t have = 0, used;
    long records = 0;
    int sv[2];
    double t0;
    ssize_t got;
    pid_t pid;
    char go = 1;

    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0)
      bench_die("socketpair");
    if ((pid = fork()) == 0) {
      size_t copies = (size_t)n / STREAM_RECORDS, c, off, w;

      close(sv[0]);
      if (read(sv[1], &go, 1) != 1)
        _exit(1);
      for (c = 0; c <= copies; c++) {
        size_t len = c < copies ? enc.len : tail;
        for (off = 0; off < len; off += w) {
          w = len - off < 65536 ? len - off : 65536;
          if (write(sv[1], enc.data + off, w) != (ssize_t)w)
            _exit(1);
        }
      }
      _exit(0);
    }
    close(sv[1]);
    t0 = bench_now();
    if (write(sv[0], &go, 1) != 1)
      bench_die("write");
    while ((got = read(sv[0], in + have, 65536)) > 0) {
      have += (size_t)got;
      used = consume_frames(in, have, &records);
      memmove(in, in + used, have - used);
      have -= used;
    }
    rate[k] = records / (bench_now() - t0);
    close(sv[0]);
    waitpid(pid, NULL, 0);
    if (records != n)
      bench_die("the record stream lost records");
  }
  peerstore__buf_free(&enc);
  free(in);
  bench_percentiles(rate, (size_t)rounds, &p50, &p99);
  free(rate);
  return p50;
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

/* The least a table of records can be and still find a record to
 * replace: the rows, in revision order, and one index on what identifies
 * them.  The limit the sqlite plugin's stores are held to. */
static const char one_index_schema[] =
    "CREATE TABLE records (revision INTEGER PRIMARY KEY, subsystem BLOB NOT "
    "NULL, peer BLOB NOT NULL, key BLOB NOT NULL, value BLOB NOT NULL, "
    "expiry INTEGER NOT NULL, writer INTEGER NOT NULL DEFAULT -1);"
    "CREATE INDEX records_by_triple ON records (subsystem, peer, key);";

/* The one-index table and the two indexes without which a filter on
 * (subsystem, peer) or (subsystem, key) would sort its matches or scan the
 * table: SQLite appends the rowid to each index entry, so each yields its
 * filter's records in revision order.  (subsystem) alone is served by the
 * table itself when there is one subsystem, as here.  The plugin's schema
 * adds an index on (subsystem), for many subsystems, and one on expiry for
 * the purge (it leaves out the records that never expire, as W2's). */
static const char filters_schema[] =
    "CREATE TABLE records (revision INTEGER PRIMARY KEY, subsystem BLOB NOT "
    "NULL, peer BLOB NOT NULL, key BLOB NOT NULL, value BLOB NOT NULL, "
    "expiry INTEGER NOT NULL, writer INTEGER NOT NULL DEFAULT -1);"
    "CREATE INDEX records_by_triple ON records (subsystem, peer, key);"
    "CREATE INDEX records_by_peer ON records (subsystem, peer);"
    "CREATE INDEX records_by_key ON records (subsystem, key);";

/* A new database at path in the given schema, with extra pragmas. */
static sqlite3 *schema_db(const char *path, const char *pragmas,
                          const char *schema) {
  sqlite3 *db;

  unlink(path);
  if (sqlite3_open(path, &db) != SQLITE_OK ||
      sqlite3_exec(db, pragmas, NULL, NULL, NULL) != SQLITE_OK ||
      sqlite3_exec(db, schema, NULL, NULL, NULL) != SQLITE_OK)
    bench_die("cannot create a database");
  return db;
}

/* Inserts W2's records 1..n, rows_per_tx a transaction, as the plugin
 * stores them; stops early once budget seconds have passed (0: never).
 * Returns how many it inserted. */
static int insert_records(sqlite3 *db, int n, int rows_per_tx,
                          double budget, int replace) {
  uint8_t value[VALUE_SIZE];
  peerstore_peer_id p;
  sqlite3_stmt *st, *del = NULL;
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
  if (replace &&
      sqlite3_prepare_v2(db,
                         "DELETE FROM records WHERE subsystem = "
                         "CAST('bench' AS BLOB) AND peer = ? AND key = ? "
                         "AND revision < ?",
                         -1, &del, NULL) != SQLITE_OK)
    bench_die("cannot prepare a delete");
  for (i = 0; i < n; i++) {
    if (i % rows_per_tx == 0) {
      if (i > 0 && budget > 0 && bench_now() - t0 > budget)
        break;
      sqlite3_exec(db, "BEGIN", NULL, NULL, NULL);
    }
    bench_record(i, &p, key, sizeof(key));
    sqlite3_bind_int64(st, 1, (replace ? n : 0) + i + 1);
    sqlite3_bind_blob(st, 2, p.bytes, 32, SQLITE_STATIC);
    sqlite3_bind_blob(st, 3, key, (int)strlen(key), SQLITE_STATIC);
    sqlite3_bind_blob(st, 4, value, sizeof(value), SQLITE_STATIC);
    sqlite3_bind_int64(st, 5, INT64_MAX);
    if (sqlite3_step(st) != SQLITE_DONE)
      bench_die("insert failed");
    sqlite3_reset(st);
    if (del != NULL) {
      sqlite3_bind_blob(del, 1, p.bytes, 32, SQLITE_STATIC);
      sqlite3_bind_blob(del, 2, key, (int)strlen(key), SQLITE_STATIC);
      sqlite3_bind_int64(del, 3, n + i + 1);
      if (sqlite3_step(del) != SQLITE_DONE || sqlite3_changes(db) != 1)
        bench_die("replace failed");
      sqlite3_reset(del);
    }
    if ((i + 1) % rows_per_tx == 0 || i + 1 == n)
      sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
  }
  if (sqlite3_get_autocommit(db) == 0)
    sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
  sqlite3_finalize(st);
  sqlite3_finalize(del);
  return i;
}

/* Fills path with n records, as a database the sqlite plugin opens as its
 * own (for the start-up figure). */
void bench_make_db(const char *path, int n) {
  char sql[160];
  sqlite3 *db;

  snprintf(sql, sizeof(sql),
           "PRAGMA journal_mode = WAL; PRAGMA application_id = %d; "
           "PRAGMA user_version = %d;",
           0x50535452, SQLITE_SCHEMA_VERSION);
  db = schema_db(path, sql, peerstore_sqlite_schema);
  insert_records(db, n, 10000, 0, 0);
  snprintf(sql, sizeof(sql), "UPDATE meta SET value = %d", n);
  sqlite3_exec(db, sql, NULL, NULL, NULL);
  sqlite3_close(db);
}

double limit_sqlite_inserts(int n, int rows_per_tx,
                            enum bench_schema schema, int replace) {
  char path[300], sql[128];
  sqlite3 *db;
  double t0, t;
  int done;

  snprintf(path, sizeof(path), "%s/raw.db", bench.dir);
  /* The filters' indexes are a floor: what their pages cost with no wait
   * for the disk at all (no syncs, so checkpoints are copies). */
  snprintf(sql, sizeof(sql),
           "PRAGMA journal_mode = WAL; PRAGMA synchronous = %s;",
           schema == SCHEMA_FILTERS ? "OFF" : bench.sync_mode);
  db = schema_db(path, sql,
                 schema == SCHEMA_ONE_INDEX ? one_index_schema
                 : schema == SCHEMA_FILTERS ? filters_schema
                                            : peerstore_sqlite_schema);
  if (replace)
    insert_records(db, n, 1000, 0, 0);
  t0 = bench_now();
  done = insert_records(db, n, rows_per_tx, bench.seconds, replace);
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

/* ------------------------------------------------------------------ */
/* The memory plugin, in process                                       */

static void walk_log(void *ctx, enum peerstore_log_level level,
                     const char *fmt, ...) {
  (void)ctx, (void)level, (void)fmt;
}

static void walk_changed(void *ctx, const peerstore_plugin_change *ch) {
  (void)ctx, (void)ch;
}

static void walk_stored(void *arg, int status, const peerstore_record *rec) {
  (void)rec;
  if (status != 0)
    bench_die("in-process store failed");
  ++*(int *)arg;
}

typedef struct walk {
  long records;
  int more;
  int done;
} walk;

static int walk_rec(void *arg, const peerstore_record *rec, uint32_t writer) {
  walk *w = arg;

  (void)writer;
  bench_consume(&w->records, rec);
  return 0;
}

static void walk_done(void *arg, int status, int more) {
  walk *w = arg;

  if (status != 0)
    bench_die("in-process iteration failed");
  w->more = more;
  w->done = 1;
}

/* W2's records in the memory plugin, linked into this process, walked
 * through its iterate op in the service's batches, each record handed
 * to what W3's callback does with it: an iteration with no service, no
 * socket and no library.  Records per second, the median of rounds. */
double limit_memory_walk(int n, int rounds) {
  const peerstore_plugin_desc *desc = peerstore_plugin_memory();
  peerstore_plugin_env env = {0};
  peerstore_plugin_filter f = {"bench", NULL, NULL};
  uint8_t value[VALUE_SIZE];
  double *rate = calloc((size_t)rounds, sizeof(*rate)), p50, p99;
  void *inst;
  uv_loop_t loop;
  int i, stored = 0;

  uv_loop_init(&loop);
  env.loop = &loop;
  env.log = walk_log;
  env.changed = walk_changed;
  env.strerror = peerstore_strerror;
  if (rate == NULL || desc->ops->open(&env, &inst) != 0)
    bench_die("cannot open the memory plugin in process");
  memset(value, 0x5a, sizeof(value));
  for (i = 0; i < n; i++) {
    peerstore_record r;
    char key[32];

    bench_full_record(i, &r, key, sizeof(key), value);
    if (desc->ops->store(inst, &r, 0, PEERSTORE_REPLACE, walk_stored,
                         &stored) != 0)
      bench_die("in-process store refused");
  }
  uv_run(&loop, UV_RUN_DEFAULT);
  if (stored != n)
    bench_die("in-process stores incomplete");
  for (i = 0; i < rounds; i++) {
    peerstore_plugin_cursor *cur;
    walk w = {0, 1, 0};
    double t0 = bench_now();

    if (desc->ops->iterate_open(inst, &f, peerstore__now_us(), &cur) != 0)
      bench_die("in-process iterate refused");
    while (w.more) {
      w.done = 0;
      if (desc->ops->iterate_next(cur, BENCH_ITER_BATCH, walk_rec, walk_done,
                                  &w) != 0)
        bench_die("in-process iterate_next refused");
      while (!w.done)
        uv_run(&loop, UV_RUN_ONCE);
    }
    desc->ops->iterate_close(cur);
    if (w.records != n)
      bench_die("in-process walk missed records");
    rate[i] = w.records / (bench_now() - t0);
  }
  desc->ops->close(inst);
  uv_run(&loop, UV_RUN_DEFAULT);
  uv_loop_close(&loop);
  bench_percentiles(rate, (size_t)rounds, &p50, &p99);
  free(rate);
  return p50;
}
