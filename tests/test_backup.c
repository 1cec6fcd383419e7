/* test_backup.c - BACKUP against a real peerstored on the sqlite plugin:
 * the copy is one revision of the store while writers go on, it opens as
 * the plugin's database, and the service's limits hold against clients
 * that start backups and do not read them. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <sqlite3.h>

#include "harness.h"
#include "peerstore.h"
#include "sqlite_queries.h"
#include "wire.h"

#define TIMEOUT 60000

typedef struct fx {
  harness_svc svc;
  uv_loop_t loop;
  peerstore_client *c;
} fx;

static void start(fx *f, const char *const *extra) {
  assert_int_equal(harness_start_sqlite(&f->svc, extra), 0);
  assert_int_equal(uv_loop_init(&f->loop), 0);
  f->c = peerstore_connect(&f->loop, f->svc.socket_path);
  assert_non_null(f->c);
}

static void stop(fx *f) {
  peerstore_disconnect(f->c, 0);
  assert_int_equal(harness_drain(&f->loop, TIMEOUT), 0);
  assert_int_equal(uv_loop_close(&f->loop), 0);
  assert_int_equal(harness_stop(&f->svc), 0);
}

/* ------------------------------------------------------------------ */
/* Filling the store                                                   */

typedef struct filler {
  peerstore_client *c;
  int acked;
  int failed;
} filler;

static void fill_cb(void *arg, int status) {
  filler *w = arg;

  if (status != 0)
    w->failed++;
  w->acked++;
}

static void peer_of(int i, peerstore_peer_id *p) {
  memset(p, 0, sizeof(*p));
  memcpy(p->bytes, &i, sizeof(i));
}

/* n records of size-byte values, binary, all stores in flight at once. */
static void fill(fx *f, int n, size_t size) {
  filler w = {f->c, 0, 0};
  uint8_t *v = malloc(size);
  peerstore_peer_id p;
  char key[32];
  int i;

  assert_non_null(v);
  for (i = 0; i < n; i++) {
    size_t j;
    for (j = 0; j < size; j++)
      v[j] = (uint8_t)(i * 31 + j);
    peer_of(i, &p);
    snprintf(key, sizeof(key), "k%d", i % 7);
    assert_non_null(peerstore_store(f->c, "fill", &p, key, v, size,
                                    PEERSTORE_EXPIRY_NEVER,
                                    PEERSTORE_MULTIPLE, fill_cb, &w));
  }
  assert_int_equal(harness_run_until_ge(&f->loop, &w.acked, n, TIMEOUT), 0);
  assert_int_equal(w.failed, 0);
  free(v);
}

/* ------------------------------------------------------------------ */
/* A backup through the library, into a file                          */

typedef struct bk {
  int fd;
  int done;
  int status;
  uint64_t got;
  uint64_t revision;
  uint64_t size;
  char reason[256];
  int pieces;
  void (*on_piece)(struct bk *b); /* may be NULL */
  void *ctx;
} bk;

static void bk_data(void *arg, const void *data, size_t len) {
  bk *b = arg;

  if (b->fd >= 0 && write(b->fd, data, len) != (ssize_t)len)
    b->status = -1;
  b->got += len;
  b->pieces++;
  if (b->on_piece != NULL)
    b->on_piece(b);
}

static void bk_done(void *arg, int status,
                    const peerstore_backup_result *res) {
  bk *b = arg;

  b->done = 1;
  if (b->status == 0)
    b->status = status;
  b->revision = res->revision;
  b->size = res->size;
  snprintf(b->reason, sizeof(b->reason), "%s",
           res->reason != NULL ? res->reason : "");
}

static void backup_to(fx *f, bk *b, const char *path) {
  b->fd = path != NULL ? open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600) : -1;
  if (path != NULL)
    assert_true(b->fd >= 0);
  assert_non_null(peerstore_backup(f->c, bk_data, bk_done, b));
  assert_int_equal(harness_run_until(&f->loop, &b->done, TIMEOUT), 0);
  if (b->fd >= 0)
    close(b->fd);
}

static int64_t sql_int(sqlite3 *db, const char *sql) {
  sqlite3_stmt *st;
  int64_t v = -1;

  assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
  if (sqlite3_step(st) == SQLITE_ROW)
    v = sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  return v;
}

static sqlite3 *open_ro(const char *path) {
  sqlite3 *db;

  assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL),
                   SQLITE_OK);
  sqlite3_busy_timeout(db, 5000);
  return db;
}

/* ------------------------------------------------------------------ */
/* The copy is one revision while writers go on                        */

typedef struct writer {
  peerstore_client *c;
  int next;
  int acked;
  int failed;
  int stopping;
  int stopped;
} writer;

static void write_next(writer *w);

static void writer_cb(void *arg, int status) {
  writer *w = arg;

  if (status != 0)
    w->failed++;
  w->acked++;
  if (w->stopping) {
    w->stopped = 1;
    return;
  }
  write_next(w);
}

/* One store at a time, each a new record, until told to stop. */
static void write_next(writer *w) {
  peerstore_peer_id p;
  char v[64];

  peer_of(1000000 + w->next, &p);
  snprintf(v, sizeof(v), "written during the backup %d", w->next++);
  assert_non_null(peerstore_store(w->c, "live", &p, "k", v, strlen(v),
                                  PEERSTORE_EXPIRY_NEVER, PEERSTORE_MULTIPLE,
                                  writer_cb, w));
}

typedef struct counter {
  uint64_t upto;
  int at_most, after, done;
} counter;

static void count_cb(void *arg, const peerstore_record *rec, int status) {
  counter *n = arg;

  if (rec == NULL) {
    n->done = status == 0 ? 1 : -1;
    return;
  }
  if (rec->revision <= n->upto)
    n->at_most++;
  else
    n->after++;
}

static void count_upto(uv_loop_t *loop, peerstore_client *c, const char *ss,
                       uint64_t upto, counter *n) {
  memset(n, 0, sizeof(*n));
  n->upto = upto;
  assert_non_null(peerstore_iterate(c, ss, NULL, NULL, count_cb, n));
  assert_int_equal(harness_run_until(loop, &n->done, TIMEOUT), 0);
  assert_int_equal(n->done, 1);
}

static void test_a_backup_is_one_revision_while_writers_go_on(void **state) {
  fx f;
  writer w;
  bk b;
  counter fill_n, live_n;
  char copy[400];
  sqlite3 *db;
  int64_t original_id;
  const char *args[] = {"--plugin", "sqlite", "--database", copy, NULL};
  harness_svc second;
  uv_loop_t loop2;
  peerstore_client *c2;
  counter copy_fill, copy_live;

  (void)state;
  start(&f, NULL);
  fill(&f, 20000, 300); /* about 8 MiB with the indexes */
  memset(&w, 0, sizeof(w));
  w.c = peerstore_connect(&f.loop, f.svc.socket_path);
  assert_non_null(w.c);
  write_next(&w);
  assert_int_equal(harness_run_until_ge(&f.loop, &w.acked, 10, TIMEOUT), 0);
  memset(&b, 0, sizeof(b));
  snprintf(copy, sizeof(copy), "%s/copy.db", f.svc.dir);
  {
    int before = w.acked;
    backup_to(&f, &b, copy);
    /* The service served the writer all along. */
    assert_true(w.acked - before >= 1);
  }
  assert_int_equal(b.status, 0);
  assert_true(b.revision > 0);
  assert_int_equal(b.got, b.size);
  assert_true(b.pieces > 1); /* several pieces: credit went round */
  w.stopping = 1;
  assert_int_equal(harness_run_until(&f.loop, &w.stopped, TIMEOUT), 0);
  assert_int_equal(w.failed, 0);

  /* The copy: a sound database, at the revision reported, holding
   * exactly the records up to it. */
  db = open_ro(copy);
  assert_int_equal(sql_int(db, SQLITE_REVISION_SQL), (int64_t)b.revision);
  assert_true(sql_int(db, "SELECT max(revision) FROM records") <=
              (int64_t)b.revision);
  {
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1,
                                        &st, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(st, 0), "ok");
    sqlite3_finalize(st);
  }
  count_upto(&f.loop, f.c, "fill", b.revision, &fill_n);
  count_upto(&f.loop, f.c, "live", b.revision, &live_n);
  assert_int_equal(fill_n.at_most, 20000);
  assert_int_equal(sql_int(db, "SELECT count(*) FROM records WHERE "
                               "subsystem = CAST('live' AS BLOB)"),
                   live_n.at_most);
  assert_int_equal(sql_int(db, "SELECT count(*) FROM records"),
                   fill_n.at_most + live_n.at_most);
  /* Its own line of revisions: a resume point from the original is not
   * one of its own. */
  {
    sqlite3 *orig = open_ro(f.svc.db);
    original_id = sql_int(orig, "SELECT value FROM meta WHERE name = "
                                "'history_id'");
    sqlite3_close(orig);
  }
  assert_true(sql_int(db, "SELECT value FROM meta WHERE name = "
                          "'history_id'") != original_id);
  sqlite3_close(db);

  /* The plugin opens it as its database, records and revisions intact. */
  assert_int_equal(harness_start(&second, args), 0);
  assert_int_equal(uv_loop_init(&loop2), 0);
  c2 = peerstore_connect(&loop2, second.socket_path);
  assert_non_null(c2);
  assert_int_equal(harness_stat(&loop2, c2, "revision", TIMEOUT),
                   (int64_t)b.revision);
  count_upto(&loop2, c2, "fill", b.revision, &copy_fill);
  count_upto(&loop2, c2, "live", b.revision, &copy_live);
  assert_int_equal(copy_fill.at_most, 20000);
  assert_int_equal(copy_live.at_most, live_n.at_most);
  assert_int_equal(copy_fill.after + copy_live.after, 0);
  peerstore_disconnect(c2, 0);
  assert_int_equal(harness_drain(&loop2, TIMEOUT), 0);
  assert_int_equal(uv_loop_close(&loop2), 0);
  assert_int_equal(harness_stop(&second), 0);

  peerstore_disconnect(w.c, 0);
  stop(&f);
}

/* ------------------------------------------------------------------ */
/* Hostile clients                                                     */

/* A raw connection that asks for a backup with credit pieces of credit
 * and then reads nothing. */
static int raw_backup(const char *path, uint32_t credit) {
  peerstore__buf b = {0};
  int fd = harness_raw_connect(path);

  assert_true(fd >= 0);
  assert_int_equal(peerstore__put_hello(&b), 0);
  assert_int_equal(
      peerstore__put_u32(&b, PEERSTORE_MSG_BACKUP, 1, credit), 0);
  assert_int_equal(send(fd, b.data, b.len, MSG_NOSIGNAL), (ssize_t)b.len);
  peerstore__buf_free(&b);
  return fd;
}

/* Polls a counter until it is at most want (harness_wait_stat waits for
 * at least). */
static void wait_stat_le(fx *f, const char *name, int64_t want) {
  uint64_t end = uv_now(&f->loop) + TIMEOUT;
  int64_t v;

  while ((v = harness_stat(&f->loop, f->c, name, TIMEOUT)) > want &&
         uv_now(&f->loop) < end)
    ;
  assert_true(v >= 0 && v <= want);
}

/* SQLite keeps a closed connection's descriptor for reuse while others
 * in the process hold locks on the file: counts are taken after one
 * whole backup, so that only what a backup holds differs. */
static int open_fds(const harness_svc *s) {
  char path[64];
  struct dirent *e;
  DIR *d;
  int n = 0;

  snprintf(path, sizeof(path), "/proc/%d/fd", (int)s->pid);
  d = opendir(path);
  assert_non_null(d);
  while ((e = readdir(d)) != NULL)
    n += e->d_name[0] != '.';
  closedir(d);
  return n;
}

/* A service with a few records, and a raw client holding a backup it
 * gives no credit: the copy is made, and waits. */
static int held_backup(fx *f, const char *const *extra) {
  int raw;

  start(f, extra);
  fill(f, 100, 100);
  raw = raw_backup(f->svc.socket_path, 0);
  assert_int_equal(harness_wait_stat(&f->loop, f->c, "backup_running", 1,
                                     TIMEOUT),
                   0);
  return raw;
}

/* The status (and reason) of the BACKUP_END the raw client reads. */
static int32_t read_end(int raw, char *reason, size_t size) {
  uint8_t body[1100];
  uint32_t request;
  uint64_t rev, bytes;
  int32_t status;
  long n = harness_read_frame(raw, PEERSTORE_MSG_BACKUP_END, &request, body,
                              sizeof(body), TIMEOUT);

  assert_true(n > 0);
  assert_int_equal(request, 1);
  assert_int_equal(peerstore__wire_backup_end(body, (size_t)n, &status, &rev,
                                              &bytes, reason, size),
                   0);
  /* A revision and a size only come with a copy sent whole. */
  if (status != 0) {
    assert_int_equal(rev, 0);
    assert_int_equal(bytes, 0);
  }
  return status;
}

static void test_one_backup_at_a_time(void **state) {
  fx f;
  bk b;
  int raw;

  (void)state;
  raw = held_backup(&f, NULL);
  memset(&b, 0, sizeof(b));
  backup_to(&f, &b, NULL);
  assert_int_equal(b.status, PEERSTORE_ELIMIT);
  assert_non_null(strstr(b.reason, "another backup is under way"));
  assert_int_equal(harness_stat(&f.loop, f.c, "limited", TIMEOUT), 1);
  /* Its client gone, the first one ends, and the next may begin. */
  close(raw);
  wait_stat_le(&f, "backup_running", 0);
  memset(&b, 0, sizeof(b));
  backup_to(&f, &b, NULL);
  assert_int_equal(b.status, 0);
  assert_int_equal(harness_stat(&f.loop, f.c, "backups", TIMEOUT), 1);
  stop(&f);
}

/* A client that asks and never reads: after iteration_timeout it is
 * ended, and the copy's file is gone with it. */
static void test_a_backup_nobody_reads_ends_after_iteration_timeout(
    void **state) {
  const char *args[] = {"-o", "iteration_timeout=1", NULL};
  char reason[1025];
  int raw, fds;
  fx f;
  bk b;

  (void)state;
  start(&f, args);
  fill(&f, 100, 100);
  memset(&b, 0, sizeof(b));
  backup_to(&f, &b, NULL);
  assert_int_equal(b.status, 0);
  fds = open_fds(&f.svc);
  raw = raw_backup(f.svc.socket_path, 0);
  assert_int_equal(read_end(raw, reason, sizeof(reason)),
                   PEERSTORE_ETIMEDOUT);
  assert_non_null(strstr(reason, "no credit"));
  assert_int_equal(harness_stat(&f.loop, f.c, "backup_running", TIMEOUT), 0);
  /* The raw client is still connected: one descriptor more than before,
   * and none for the copy. */
  assert_int_equal(open_fds(&f.svc), fds + 1);
  close(raw);
  stop(&f);
}

/* A client that dies after the first piece: the backup ends and every
 * descriptor it took is closed. */
static void test_a_client_gone_mid_backup_leaves_nothing_open(void **state) {
  uint8_t body[PEERSTORE_BACKUP_PIECE];
  long n;
  int raw, fds;
  fx f;
  bk b;

  (void)state;
  start(&f, NULL);
  fill(&f, 2000, 1000); /* several pieces */
  memset(&b, 0, sizeof(b));
  backup_to(&f, &b, NULL);
  assert_int_equal(b.status, 0);
  fds = open_fds(&f.svc);
  raw = raw_backup(f.svc.socket_path, 1);
  n = harness_read_frame(raw, PEERSTORE_MSG_BACKUP_DATA, NULL, body,
                         sizeof(body), TIMEOUT);
  assert_int_equal(n, PEERSTORE_BACKUP_PIECE);
  assert_int_equal(harness_stat(&f.loop, f.c, "backup_running", TIMEOUT), 1);
  assert_int_equal(open_fds(&f.svc), fds + 2); /* the client, the copy */
  close(raw);
  wait_stat_le(&f, "backup_running", 0);
  /* The service sees the close before the stat: the descriptors go at
   * once, nothing in flight (the piece was read). */
  assert_int_equal(open_fds(&f.svc), fds);
  stop(&f);
}

/* Shutdown does not wait for a backup: it is ended with ESHUTDOWN and
 * the service exits cleanly. */
static void test_shutdown_ends_a_backup(void **state) {
  char reason[64];
  int raw, st;
  fx f;

  (void)state;
  raw = held_backup(&f, NULL);
  peerstore_disconnect(f.c, 0);
  assert_int_equal(harness_drain(&f.loop, TIMEOUT), 0);
  assert_int_equal(uv_loop_close(&f.loop), 0);
  kill(f.svc.pid, SIGTERM);
  assert_int_equal(read_end(raw, reason, sizeof(reason)),
                   PEERSTORE_ESHUTDOWN);
  close(raw);
  /* It exits by itself (harness_stop's SIGTERM could land after the
   * handler is gone). */
  while (waitpid(f.svc.pid, &st, 0) < 0 && errno == EINTR)
    ;
  assert_true(WIFEXITED(st));
  assert_int_equal(WEXITSTATUS(st), 0);
  f.svc.pid = 0;
  assert_int_equal(harness_stop(&f.svc), 0);
}

/* The copy is made a piece at a time: the service does not hold the
 * database, nor the copy, in memory. */
static void test_a_backup_does_not_grow_the_service_by_the_store(
    void **state) {
  char copy[400];
  long before, after;
  bk b;
  fx f;

  (void)state;
  if (!harness_memory_measurable())
    skip();
  start(&f, NULL);
  fill(&f, 8000, 4000); /* about 32 MiB */
  before = harness_status_kb(&f.svc, "VmHWM");
  memset(&b, 0, sizeof(b));
  snprintf(copy, sizeof(copy), "%s/copy.db", f.svc.dir);
  backup_to(&f, &b, copy);
  assert_int_equal(b.status, 0);
  assert_true(b.size > 32u << 20);
  after = harness_status_kb(&f.svc, "VmHWM");
  print_message("# service high-water mark %ld kB before, %ld kB after a "
                "backup of %llu kB\n",
                before, after, (unsigned long long)(b.size >> 10));
  assert_true(after - before < 16 * 1024);
  stop(&f);
}

static void test_the_memory_plugin_refuses_a_backup_saying_why(
    void **state) {
  harness_svc svc;
  uv_loop_t loop;
  peerstore_client *c;
  bk b;

  (void)state;
  assert_int_equal(harness_start(&svc, NULL), 0);
  assert_int_equal(uv_loop_init(&loop), 0);
  c = peerstore_connect(&loop, svc.socket_path);
  memset(&b, 0, sizeof(b));
  assert_non_null(peerstore_backup(c, bk_data, bk_done, &b));
  assert_int_equal(harness_run_until(&loop, &b.done, TIMEOUT), 0);
  assert_int_equal(b.status, PEERSTORE_EPLUGIN);
  assert_non_null(strstr(b.reason, "peerstore export"));
  assert_int_equal(b.got, 0);
  peerstore_disconnect(c, 0);
  assert_int_equal(harness_drain(&loop, TIMEOUT), 0);
  assert_int_equal(uv_loop_close(&loop), 0);
  assert_int_equal(harness_stop(&svc), 0);
}

/* Cancelled part way: no callback after, and the service ends it. */
static void cancel_on_first(bk *b) {
  if (b->pieces == 1) {
    peerstore_backup_cancel(b->ctx);
    b->done = 1;
  }
}

static void test_a_cancelled_backup_ends_in_the_service(void **state) {
  fx f;
  bk b;

  (void)state;
  start(&f, NULL);
  fill(&f, 2000, 1000);
  memset(&b, 0, sizeof(b));
  b.fd = -1;
  b.on_piece = cancel_on_first;
  b.ctx = peerstore_backup(f.c, bk_data, bk_done, &b);
  assert_non_null(b.ctx);
  assert_int_equal(harness_run_until(&f.loop, &b.done, TIMEOUT), 0);
  wait_stat_le(&f, "backup_running", 0);
  assert_int_equal(b.pieces, 1);
  assert_int_equal(harness_stat(&f.loop, f.c, "backups", TIMEOUT), 0);
  stop(&f);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_a_backup_is_one_revision_while_writers_go_on),
      cmocka_unit_test(test_one_backup_at_a_time),
      cmocka_unit_test(
          test_a_backup_nobody_reads_ends_after_iteration_timeout),
      cmocka_unit_test(test_a_client_gone_mid_backup_leaves_nothing_open),
      cmocka_unit_test(test_shutdown_ends_a_backup),
      cmocka_unit_test(test_a_backup_does_not_grow_the_service_by_the_store),
      cmocka_unit_test(test_the_memory_plugin_refuses_a_backup_saying_why),
      cmocka_unit_test(test_a_cancelled_backup_ends_in_the_service),
  };

  signal(SIGPIPE, SIG_IGN);
  return cmocka_run_group_tests(tests, NULL, NULL);
}
