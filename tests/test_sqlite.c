/* test_sqlite.c - the SQLite plugin: the shared conformance suite, then
 * what only a persistent plugin has to get right (reopening, migration,
 * refusing files, read-only mode, write failures, index use).  The plugin
 * is the built .so, loaded as the service loads it. */
#include <dlfcn.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <sqlite3.h>

#include "conformance.h"
#include "harness.h"
#include "sqlite_queries.h"

#define TIMEOUT 30000

static const peerstore_plugin_desc *desc;
static char dir[256];
static char db_path[512];
static char fixture[512];

/* ------------------------------------------------------------------ */
/* Plumbing                                                            */

typedef struct opts {
  const char *read_only;
  const char *max_page_count;
  const char *synchronous;
  const char *batch_max_changes;
  const char *checkpoint_pages;
  const char *loop_commit_us;
} opts;

static const char *get_option(void *ctx, const char *name) {
  const opts *o = ctx;

  if (o == NULL)
    return NULL;
  if (strcmp(name, "read_only") == 0)
    return o->read_only;
  if (strcmp(name, "max_page_count") == 0)
    return o->max_page_count;
  if (strcmp(name, "synchronous") == 0)
    return o->synchronous;
  if (strcmp(name, "batch_max_changes") == 0)
    return o->batch_max_changes;
  if (strcmp(name, "checkpoint_pages") == 0)
    return o->checkpoint_pages;
  if (strcmp(name, "loop_commit_us") == 0)
    return o->loop_commit_us;
  return NULL; /* check_on_open and the rest: defaults */
}

/* The last INFO lines about checkpoints and about commits on the loop
 * thread, for the tests that read them. */
static char ckpt_line[512];
static char loop_line[512];

static void ckpt_log(void *ctx, enum peerstore_log_level level,
                     const char *fmt, ...) {
  char line[512];
  va_list ap;

  (void)ctx;
  va_start(ap, fmt);
  vsnprintf(line, sizeof(line), fmt, ap);
  va_end(ap);
  if (level == PEERSTORE_LOG_INFO && strstr(line, "checkpoints") != NULL)
    snprintf(ckpt_line, sizeof(ckpt_line), "%s", line);
  if (level == PEERSTORE_LOG_INFO && strstr(line, "loop thread") != NULL)
    snprintf(loop_line, sizeof(loop_line), "%s", line);
}


static void remove_db(void) {
  char p[600];

  unlink(db_path);
  snprintf(p, sizeof(p), "%s-wal", db_path);
  unlink(p);
  snprintf(p, sizeof(p), "%s-shm", db_path);
  unlink(p);
}

static int conf_prepare(void *ctx, peerstore_plugin_env *env) {
  (void)ctx;
  remove_db();
  env->database = db_path;
  return 0;
}

static void conf_cleanup(void *ctx) {
  (void)ctx;
  remove_db();
}

/* Syncs made on the test's own thread - the loop's - while counting:
 * fdatasync and fsync are interposed here, in front of the C library's,
 * for SQLite's calls to land in. */
static int counting_syncs;
static pthread_t loop_thread;
static unsigned loop_syncs;

static int sync_through(const char *name, int fd) {
  int (*real)(int);

  if (counting_syncs && pthread_equal(pthread_self(), loop_thread))
    loop_syncs++;
  *(void **)&real = dlsym(RTLD_NEXT, name);
  return real(fd);
}

int fdatasync(int fd);
int fdatasync(int fd) { return sync_through("fdatasync", fd); }
int fsync(int fd);
int fsync(int fd) { return sync_through("fsync", fd); }

/* Whether inst_open keeps a history (the tests run without one unless
 * they say; setup clears it). */
static int open_with_history;

typedef struct inst {
  uv_loop_t loop;
  void *p;
  opts o;
  uint64_t changes; /* reported through the change hook */
} inst;

static void count_change(void *ctx, const peerstore_plugin_change *ch) {
  (void)ch;
  ++*(uint64_t *)ctx;
}

/* Opens the plugin on db_path; returns its status. */
static int inst_open(inst *in, const opts *o) {
  peerstore_plugin_env env;
  int r;

  memset(in, 0, sizeof(*in));
  if (o != NULL)
    in->o = *o;
  assert_int_equal(uv_loop_init(&in->loop), 0);
  memset(&env, 0, sizeof(env));
  env.loop = &in->loop;
  env.database = db_path;
  env.option = get_option;
  env.option_ctx = &in->o;
  env.log = ckpt_log;
  env.strerror = peerstore_strerror;
  env.changed = count_change;
  env.changed_ctx = &in->changes;
  if (open_with_history) {
    env.history_events = 1000000;
    env.history_bytes = 1u << 30;
  }
  r = desc->ops->open(&env, &in->p);
  if (r != 0) {
    /* A refused open leaves nothing behind on the loop. */
    assert_int_equal(harness_drain(&in->loop, TIMEOUT), 0);
    assert_int_equal(uv_loop_close(&in->loop), 0);
  }
  return r;
}

static void inst_close(inst *in) {
  desc->ops->close(in->p);
  assert_int_equal(harness_drain(&in->loop, TIMEOUT), 0);
  assert_int_equal(uv_loop_close(&in->loop), 0);
}

/* How many checkpoints the thread made, from the line of the last close. */
static unsigned long long thread_checkpoints(void) {
  unsigned long long copied = 0, waited = 0;

  assert_int_equal(sscanf(ckpt_line, "%*s %*s %llu checkpoints on their own "
                                     "thread, %llu",
                          &copied, &waited),
                   2);
  return copied;
}

/* Closes in, and returns how many stores it committed on the loop thread
 * (and in *slow how many of those took longer than loop_commit_us). */
static unsigned long long close_counting_loop_commits(inst *in,
                                                      unsigned long long *slow) {
  unsigned long long n = 0, s = 0;

  loop_line[0] = '\0';
  inst_close(in);
  assert_int_equal(sscanf(loop_line, "%*s %*s %llu stores committed on the "
                                     "loop thread, %llu",
                          &n, &s),
                   2);
  if (slow != NULL)
    *slow = s;
  return n;
}

typedef struct res {
  int done;
  int status;
  uint64_t revision;
  int n;
  char values[16][32];
  uint64_t revisions[16];
  uint32_t writers[16];
} res;

static void store_cb(void *arg, int status, const peerstore_record *rec) {
  res *r = arg;
  r->done = 1;
  r->status = status;
  if (rec != NULL)
    r->revision = rec->revision;
}

/* Starts a store; its result comes to r (unless it is refused at once:
 * the status returned). */
static int start_store(inst *in, const char *ss, const char *key,
                       const char *value, enum peerstore_store_option opt,
                       res *r) {
  peerstore_record rec = {0};

  rec.subsystem = ss;
  memset(rec.peer.bytes, 1, sizeof(rec.peer.bytes));
  rec.key = key;
  rec.value = value;
  rec.value_size = strlen(value);
  rec.expiry = PEERSTORE_EXPIRY_NEVER;
  return desc->ops->store(in->p, &rec, 1000, opt, store_cb, r);
}

static int put(inst *in, const char *key, const char *value,
               enum peerstore_store_option opt, uint64_t *revision) {
  res r = {0};

  r.status = start_store(in, "ss", key, value, opt, &r);
  if (r.status != 0)
    return r.status; /* refused at once: no callback comes */
  assert_int_equal(harness_run_until(&in->loop, &r.done, TIMEOUT), 0);
  if (revision != NULL)
    *revision = r.revision;
  return r.status;
}

/* Stores value under keys k0 .. k(n-1) of "ss", one at a time, each
 * awaited. */
static void put_keys(inst *in, int n, const char *value) {
  char key[32];
  int i;

  for (i = 0; i < n; i++) {
    snprintf(key, sizeof(key), "k%d", i);
    assert_int_equal(put(in, key, value, PEERSTORE_REPLACE, NULL), 0);
  }
}

static int rec_cb(void *arg, const peerstore_record *rec, uint32_t writer) {
  res *r = arg;

  if (r->n < 16) {
    snprintf(r->values[r->n], sizeof(r->values[0]), "%.*s",
             (int)rec->value_size, (const char *)rec->value);
    r->revisions[r->n] = rec->revision;
    r->writers[r->n] = writer;
  }
  r->n++;
  return 0;
}

static void next_cb(void *arg, int status, int more) {
  res *r = arg;
  r->done = 1;
  r->status = status;
  (void)more;
}

/* Iterates a whole subsystem in one batch; returns the status. */
static int list(inst *in, const char *ss, res *r) {
  peerstore_plugin_filter f = {ss, NULL, NULL};
  peerstore_plugin_cursor *c;

  memset(r, 0, sizeof(*r));
  assert_int_equal(desc->ops->iterate_open(in->p, &f, 0, &c), 0);
  assert_int_equal(desc->ops->iterate_next(c, 1000, rec_cb, next_cb, r), 0);
  assert_int_equal(harness_run_until(&in->loop, &r->done, TIMEOUT), 0);
  desc->ops->iterate_close(c);
  return r->status;
}

/* Runs SQL on db_path with a connection of our own. */
static void sql(const char *text) {
  sqlite3 *db;
  char *err = NULL;

  assert_int_equal(sqlite3_open(db_path, &db), SQLITE_OK);
  if (sqlite3_exec(db, text, NULL, NULL, &err) != SQLITE_OK)
    fail_msg("sql failed: %s", err);
  sqlite3_close(db);
}

static int64_t sql_int(const char *text) {
  sqlite3 *db;
  sqlite3_stmt *st;
  int64_t v = -1;

  assert_int_equal(sqlite3_open(db_path, &db), SQLITE_OK);
  assert_int_equal(sqlite3_prepare_v2(db, text, -1, &st, NULL), SQLITE_OK);
  if (sqlite3_step(st) == SQLITE_ROW)
    v = sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  sqlite3_close(db);
  return v;
}

static char *slurp(const char *path, size_t *n) {
  FILE *f = fopen(path, "rb");
  char *b;
  long len;

  assert_non_null(f);
  fseek(f, 0, SEEK_END);
  len = ftell(f);
  fseek(f, 0, SEEK_SET);
  b = malloc((size_t)len + 1);
  assert_non_null(b);
  assert_int_equal(fread(b, 1, (size_t)len, f), (size_t)len);
  fclose(f);
  b[len] = '\0'; /* callers may treat it as text */
  *n = (size_t)len;
  return b;
}

static int setup(void **state) {
  (void)state;
  open_with_history = 0;
  remove_db();
  return 0;
}

static int teardown(void **state) {
  (void)state;
  remove_db();
  return 0;
}

/* ------------------------------------------------------------------ */
/* Tests                                                               */

static void test_reopen_keeps_records_and_revisions(void **state) {
  inst in;
  uint64_t r1, r2, r3;
  res r;

  (void)state;
  assert_int_equal(inst_open(&in, NULL), 0);
  assert_int_equal(put(&in, "k", "a", PEERSTORE_MULTIPLE, &r1), 0);
  assert_int_equal(put(&in, "k", "b", PEERSTORE_MULTIPLE, &r2), 0);
  inst_close(&in);
  assert_int_equal(sql_int("PRAGMA user_version"), 5);
  assert_int_equal(sql_int("PRAGMA application_id"), 0x50535452);
  assert_int_equal(
      sql_int("SELECT journal_mode = 'wal' FROM pragma_journal_mode"), 1);

  assert_int_equal(inst_open(&in, NULL), 0);
  assert_int_equal(list(&in, "ss", &r), 0);
  assert_int_equal(r.n, 2);
  assert_string_equal(r.values[0], "a");
  assert_int_equal(r.writers[0], 1000);
  assert_int_equal(r.revisions[1], r2);
  /* Revisions go on from where they were, never reused. */
  assert_int_equal(put(&in, "k", "c", PEERSTORE_REPLACE, &r3), 0);
  assert_true(r3 > r2 && r2 > r1);
  inst_close(&in);
}

static void count_cb(void *arg, int status, uint64_t n) {
  res *r = arg;
  r->done = 1;
  r->status = status;
  r->n = (int)n;
}

/* Removes key k of "ss"; returns how many records went. */
static int remove_key(inst *in, const char *k) {
  peerstore_plugin_filter f = {"ss", NULL, k};
  peerstore_peer_id peer;
  res r = {0};

  memset(peer.bytes, 1, sizeof(peer.bytes));
  f.peer = &peer;
  assert_int_equal(desc->ops->remove(in->p, &f, count_cb, &r), 0);
  assert_int_equal(harness_run_until(&in->loop, &r.done, TIMEOUT), 0);
  assert_int_equal(r.status, 0);
  return r.n;
}

/* Schema version 5: a commit writes the revision counter only when no
 * row it wrote carries its last revision, and at open the last revision
 * is the largest of the counter's and the rows'.  Whatever the last
 * change was - a store, a REPLACE's drop or a remove kept in the
 * history, or a remove with no history to keep it - a reopened database
 * goes on after it and never gives a revision out twice. */
static void test_the_last_revision_survives_reopen_whatever_carries_it(
    void **state) {
  inst in;
  uint64_t r1, r2, records = 0, revision = 0, next;
  int history;

  (void)state;
  for (history = 1; history >= 0; history--) {
    remove_db();
    open_with_history = history;
    assert_int_equal(inst_open(&in, NULL), 0);
    assert_int_equal(put(&in, "k", "a", PEERSTORE_REPLACE, &r1), 0);
    /* The REPLACE drops "a" at r2 + 1: a history row, or nothing. */
    assert_int_equal(put(&in, "k", "b", PEERSTORE_REPLACE, &r2), 0);
    assert_int_equal(in.changes, 3);
    inst_close(&in);
    assert_int_equal(inst_open(&in, NULL), 0);
    desc->ops->counts(in.p, &records, &revision);
    assert_int_equal(revision, r2 + 1);
    if (history)
      /* The counter lags: the rows said it. */
      assert_true(sql_int("SELECT value FROM meta WHERE name = "
                          "'revision'") < (int64_t)revision);
    /* A remove: its revision is r2 + 2. */
    assert_int_equal(remove_key(&in, "k"), 1);
    inst_close(&in);
    assert_int_equal(inst_open(&in, NULL), 0);
    desc->ops->counts(in.p, &records, &revision);
    assert_int_equal(records, 0);
    assert_int_equal(revision, r2 + 2);
    assert_int_equal(put(&in, "k", "c", PEERSTORE_REPLACE, &next), 0);
    assert_int_equal(next, r2 + 3);
    inst_close(&in);
  }
}

/* A version 4 file reads the same under version 5, so read_only opens
 * it without the migration it cannot write; a writer then migrates it. */
static void test_read_only_opens_a_version_4_file_as_it_is(void **state) {
  inst in;
  opts ro = {0};
  uint64_t rev, records = 0, revision = 0;
  res r;

  (void)state;
  ro.read_only = "yes";
  assert_int_equal(inst_open(&in, NULL), 0);
  assert_int_equal(put(&in, "k", "a", PEERSTORE_REPLACE, &rev), 0);
  inst_close(&in);
  sql("PRAGMA user_version = 4");
  assert_int_equal(inst_open(&in, &ro), 0);
  desc->ops->counts(in.p, &records, &revision);
  assert_int_equal(records, 1);
  assert_int_equal(revision, rev);
  assert_int_equal(list(&in, "ss", &r), 0);
  assert_int_equal(r.n, 1);
  inst_close(&in);
  assert_int_equal(sql_int("PRAGMA user_version"), 4);
  assert_int_equal(inst_open(&in, NULL), 0);
  inst_close(&in);
  assert_int_equal(sql_int("PRAGMA user_version"), 5);
}

static void test_migrate_v1(void **state) {
  inst in;
  size_t n;
  char *script = slurp(fixture, &n);
  res r;
  uint64_t rev;

  (void)state;
  sql(script);
  free(script);
  assert_int_equal(inst_open(&in, NULL), 0);
  assert_int_equal(list(&in, "transport", &r), 0);
  assert_int_equal(r.n, 3);
  assert_string_equal(r.values[0], "tcp:1");
  assert_string_equal(r.values[1], "udp:2");
  assert_string_equal(r.values[2], "tcp:3");
  /* Who wrote them was not recorded in version 1. */
  assert_int_equal(r.writers[0], PEERSTORE_WRITER_UNKNOWN);
  assert_true(r.revisions[0] < r.revisions[1]);
  assert_true(r.revisions[1] < r.revisions[2]);
  assert_int_equal(list(&in, "dht", &r), 0);
  assert_int_equal(r.n, 1);
  assert_string_equal(r.values[0], ""); /* NULL became empty */
  /* New revisions follow the migrated ones. */
  assert_int_equal(put(&in, "k", "new", PEERSTORE_REPLACE, &rev), 0);
  assert_int_equal(rev, 5);
  inst_close(&in);
  assert_int_equal(sql_int("PRAGMA user_version"), 5);
  assert_int_equal(
      sql_int("SELECT count(*) FROM sqlite_master WHERE name = 'peerstoredata'"),
      0);
}

/* A file the plugin must not use is refused and left byte-for-byte. */
static size_t file_size(void) {
  size_t n;
  free(slurp(db_path, &n));
  return n;
}

/* Overwrites len bytes of the database file at off (from its end when
 * negative) with 0xee. */
static void damage(long off, size_t len) {
  size_t n;
  char *b = slurp(db_path, &n);
  FILE *f;

  assert_true((off < 0 ? (size_t)-off : (size_t)off + len) <= n);
  memset(b + (off < 0 ? (long)n + off : off), 0xee, len);
  f = fopen(db_path, "wb");
  assert_non_null(f);
  assert_int_equal(fwrite(b, 1, n, f), n);
  fclose(f);
  free(b);
}

static void refused_untouched(void) {
  size_t n1, n2;
  char *before = slurp(db_path, &n1), *after;
  inst in;

  assert_int_not_equal(inst_open(&in, NULL), 0);
  after = slurp(db_path, &n2);
  assert_int_equal(n1, n2);
  assert_memory_equal(before, after, n1);
  free(before);
  free(after);
}

static void test_refuse_newer_version(void **state) {
  (void)state;
  sql("PRAGMA application_id = 1347638354; PRAGMA user_version = 99;"
      "CREATE TABLE future (x);");
  refused_untouched();
}

static void test_refuse_foreign_database(void **state) {
  (void)state;
  sql("CREATE TABLE something_else (x); INSERT INTO something_else VALUES (1);");
  refused_untouched();
}

static void test_refuse_garbage_file(void **state) {
  FILE *f = fopen(db_path, "wb");
  int i;

  (void)state;
  assert_non_null(f);
  for (i = 0; i < 4096; i++)
    fputc((i * 37) & 0xff, f);
  fclose(f);
  refused_untouched();
}

/* A sound header over damaged pages: refused at open, not later. */
static void test_refuse_damaged_pages(void **state) {
  inst in;
  char big[2000];

  (void)state;
  memset(big, 'y', sizeof(big) - 1);
  big[sizeof(big) - 1] = '\0';
  assert_int_equal(inst_open(&in, NULL), 0);
  put_keys(&in, 100, big);
  inst_close(&in);
  /* Overwrite a few pages in the middle of the file. */
  assert_true(file_size() > 64 * 1024);
  damage((long)(file_size() / 2), 3 * 4096);
  refused_untouched();
}

/* An old version with a damaged page in a table of its own: refused
 * before anything is migrated, so the file is exactly as it was. */
static void test_refuse_damaged_old_version_without_migrating(void **state) {
  size_t n;
  char *script = slurp(fixture, &n);

  (void)state;
  sql(script);
  free(script);
  sql("CREATE TABLE unrelated (x);"
      "WITH RECURSIVE i(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM i "
      "WHERE n < 200) INSERT INTO unrelated SELECT randomblob(2000) FROM i;");
  assert_true(file_size() > 256 * 1024);
  /* Pages of the unrelated table, at the end of the file. */
  damage(-100 * 1024, 3 * 4096);
  refused_untouched();
}

static void test_read_only(void **state) {
  inst in;
  opts ro = {"yes", NULL, NULL, NULL, NULL, NULL};
  res r;

  (void)state;
  assert_int_equal(inst_open(&in, NULL), 0);
  assert_int_equal(put(&in, "k", "kept", PEERSTORE_REPLACE, NULL), 0);
  inst_close(&in);
  assert_int_equal(inst_open(&in, &ro), 0);
  assert_int_equal(list(&in, "ss", &r), 0);
  assert_int_equal(r.n, 1);
  assert_int_equal(put(&in, "k", "nope", PEERSTORE_REPLACE, NULL),
                   PEERSTORE_EROFS);
  assert_int_equal(list(&in, "ss", &r), 0);
  assert_string_equal(r.values[0], "kept");
  inst_close(&in);
  /* Read-only never creates a database. */
  remove_db();
  assert_int_not_equal(inst_open(&in, &ro), 0);
  assert_int_not_equal(access(db_path, F_OK), 0);
}

/* A write that fails (here: the database hits its size limit, as a full
 * disk would) fails that store clearly; reads and earlier data stay. */
/* Stores values of big (a string) under new keys of "ss" until the
 * database (opened with a small max_page_count) is full; returns how
 * many went in. */
static int fill_until_full(inst *in, const char *big) {
  char key[16];
  int i, st = 0, ok = 0;

  for (i = 0; i < 200 && st == 0; i++) {
    snprintf(key, sizeof(key), "k%d", i);
    st = put(in, key, big, PEERSTORE_REPLACE, NULL);
    ok += st == 0;
  }
  assert_int_equal(st, PEERSTORE_ENOSPC);
  return ok;
}

static void test_write_failure(void **state) {
  inst in;
  opts small = {NULL, "40", NULL, NULL, NULL, NULL};
  char big[3000];
  int ok;
  res r;

  (void)state;
  memset(big, 'x', sizeof(big) - 1);
  big[sizeof(big) - 1] = '\0';
  assert_int_equal(inst_open(&in, &small), 0);
  ok = fill_until_full(&in, big);
  assert_true(ok > 0);
  assert_int_equal(list(&in, "ss", &r), 0);
  assert_int_equal(r.n, ok);
  /* Smaller writes that fit still work after the failure. */
  assert_int_equal(put(&in, "k0", "small", PEERSTORE_REPLACE, NULL), 0);
  inst_close(&in);
  assert_int_equal(sql_int("SELECT count(*) FROM records"), ok);
}

static int rec_has(const res *r, const char *value) {
  int i;

  for (i = 0; i < r->n && i < 16; i++)
    if (strcmp(r->values[i], value) == 0)
      return 1;
  return 0;
}

static void submit_store(inst *in, const char *key, const char *value,
                         res *r) {
  assert_int_equal(start_store(in, "t", key, value, PEERSTORE_REPLACE, r), 0);
}

/* A write that fails rolls back its whole group.  Reads queued in that
 * group see exactly what stayed: an iteration read in it does not fail
 * with the writer's error nor show a store rolled back with it, and an
 * iteration opened in it and read later does not show a store made after
 * it, which is given a revision the rolled-back stores had held. */
static void test_iterations_in_a_failed_group_see_what_stayed(void **state) {
  inst in;
  opts small = {NULL, "40", NULL, NULL, NULL, NULL};
  peerstore_plugin_filter f = {"t", NULL, NULL}; /* what submit_store writes */
  peerstore_plugin_cursor *c1, *c2;
  static char big[3000];
  char key[16];
  res filler[64], a, fail, after, r1, r2;
  int i, rounds, grouped = 0;

  (void)state;
  memset(big, 'x', sizeof(big) - 1);
  assert_int_equal(inst_open(&in, &small), 0);
  fill_until_full(&in, big);
  for (rounds = 0; rounds < 20 && !grouped; rounds++) {
    memset(filler, 0, sizeof(filler));
    memset(&a, 0, sizeof(a));
    memset(&fail, 0, sizeof(fail));
    memset(&after, 0, sizeof(after));
    memset(&r1, 0, sizeof(r1));
    memset(&r2, 0, sizeof(r2));
    /* Stores the worker is busy with, so that what follows is queued
     * together and runs as one group. */
    for (i = 0; i < 64; i++)
      submit_store(&in, "filler", i % 2 ? "f1" : "f2", &filler[i]);
    submit_store(&in, "a", "a", &a);
    assert_int_equal(desc->ops->iterate_open(in.p, &f, 0, &c1), 0);
    assert_int_equal(desc->ops->iterate_open(in.p, &f, 0, &c2), 0);
    submit_store(&in, "big", big, &fail);
    assert_int_equal(desc->ops->iterate_next(c1, 1000, rec_cb, next_cb, &r1),
                     0);
    assert_int_equal(harness_run_until(&in.loop, &r1.done, TIMEOUT), 0);
    assert_int_equal(fail.status, PEERSTORE_ENOSPC);
    grouped = a.status != 0;
    assert_int_equal(r1.status, 0);
    assert_int_equal(rec_has(&r1, "a"), a.status == 0);
    /* A later group: the revisions the failed one used come again. */
    snprintf(key, sizeof(key), "after%d", rounds);
    submit_store(&in, key, key, &after);
    assert_int_equal(harness_run_until(&in.loop, &after.done, TIMEOUT), 0);
    assert_int_equal(after.status, 0);
    assert_int_equal(desc->ops->iterate_next(c2, 1000, rec_cb, next_cb, &r2),
                     0);
    assert_int_equal(harness_run_until(&in.loop, &r2.done, TIMEOUT), 0);
    desc->ops->iterate_close(c1);
    desc->ops->iterate_close(c2);
    assert_int_equal(r2.status, 0);
    assert_int_equal(rec_has(&r2, "a"), a.status == 0);
    assert_false(rec_has(&r2, key));
  }
  print_message("the failed group held the iterations after %d rounds\n",
                rounds);
  assert_true(grouped);
  inst_close(&in);
}

typedef struct batch_res {
  int done;
  int status;
  uint64_t first;
} batch_res;

static void batch_cb(void *arg, int status, uint64_t first, uint64_t last) {
  batch_res *b = arg;

  (void)last;
  b->done = 1;
  b->status = status;
  b->first = first;
}

/* A batch that fails half-way - the database is full when its second
 * store comes - leaves nothing of itself and reports no change. */
static void test_a_batch_failing_half_way_leaves_nothing(void **state) {
  inst in;
  opts small = {NULL, "40", NULL, NULL, NULL, NULL};
  peerstore_plugin_batch_op ops[2];
  static char big[3000];
  batch_res b = {0};
  res after = {0}, r;
  uint64_t changes;
  int i;

  (void)state;
  memset(big, 'x', sizeof(big) - 1);
  assert_int_equal(inst_open(&in, &small), 0);
  fill_until_full(&in, big);
  memset(ops, 0, sizeof(ops));
  for (i = 0; i < 2; i++) {
    ops[i].kind = PEERSTORE_PLUGIN_BATCH_STORE;
    ops[i].option = PEERSTORE_REPLACE;
    ops[i].rec.subsystem = "t";
    memset(ops[i].rec.peer.bytes, 1, sizeof(ops[i].rec.peer.bytes));
    ops[i].rec.expiry = PEERSTORE_EXPIRY_NEVER;
  }
  ops[0].rec.key = "a";
  ops[0].rec.value = "small";
  ops[0].rec.value_size = 5;
  ops[1].rec.key = "big";
  ops[1].rec.value = big;
  ops[1].rec.value_size = sizeof(big);
  changes = in.changes;
  assert_int_equal(desc->ops->batch(in.p, ops, 2, 1000, batch_cb, &b), 0);
  assert_int_equal(start_store(&in, "t", "after", "fits", PEERSTORE_REPLACE,
                               &after),
                   0);
  assert_int_equal(harness_run_until(&in.loop, &b.done, TIMEOUT), 0);
  assert_int_equal(harness_run_until(&in.loop, &after.done, TIMEOUT), 0);
  assert_int_equal(b.status, PEERSTORE_ENOSPC);
  /* The store after it shares its group or not; on SQLITE_FULL, SQLite
   * may have rolled the whole transaction back, group and all.  Either
   * way what it says is what happened. */
  assert_true(after.status == 0 || after.status == PEERSTORE_ENOSPC);
  assert_int_equal(in.changes, changes + (after.status == 0));
  assert_int_equal(list(&in, "t", &r), 0);
  assert_int_equal(r.n, after.status == 0);
  if (after.status == 0)
    assert_string_equal(r.values[0], "fits");
  inst_close(&in);
  /* And the database says the same after a reopen. */
  assert_int_equal(sql_int("SELECT count(*) FROM records WHERE "
                           "subsystem = CAST('t' AS BLOB)"),
                   after.status == 0);
}

/* What a batch changes is held for the hook until it commits, so a batch
 * that would change more than batch_max_changes records (a remove that
 * matches too much) fails with ELIMIT and changes nothing, while a store
 * beside it in the same group goes through. */
static void test_a_batch_changing_too_much_is_refused(void **state) {
  inst in;
  opts few = {NULL, NULL, NULL, "100", NULL, NULL};
  peerstore_plugin_batch_op op;
  batch_res b = {0};
  res after = {0}, r;
  uint64_t changes;

  (void)state;
  assert_int_equal(inst_open(&in, &few), 0);
  put_keys(&in, 150, "v");
  memset(&op, 0, sizeof(op));
  op.kind = PEERSTORE_PLUGIN_BATCH_REMOVE;
  op.filter.subsystem = "ss";
  changes = in.changes;
  assert_int_equal(desc->ops->batch(in.p, &op, 1, 1000, batch_cb, &b), 0);
  assert_int_equal(start_store(&in, "t", "beside", "v", PEERSTORE_REPLACE,
                               &after),
                   0);
  assert_int_equal(harness_run_until(&in.loop, &b.done, TIMEOUT), 0);
  assert_int_equal(harness_run_until(&in.loop, &after.done, TIMEOUT), 0);
  assert_int_equal(b.status, PEERSTORE_ELIMIT);
  assert_int_equal(after.status, 0);
  assert_int_equal(in.changes, changes + 1);
  assert_int_equal(list(&in, "ss", &r), 0);
  assert_int_equal(r.n, 150);
  /* A remove of 100 is within it. */
  op.filter.key = "k1";
  memset(&b, 0, sizeof(b));
  assert_int_equal(desc->ops->batch(in.p, &op, 1, 1000, batch_cb, &b), 0);
  assert_int_equal(harness_run_until(&in.loop, &b.done, TIMEOUT), 0);
  assert_int_equal(b.status, 0);
  inst_close(&in);
}

static void test_synchronous_option(void **state) {
  inst in;
  opts full = {NULL, NULL, "FULL", NULL, NULL, NULL};
  opts bad = {NULL, NULL, "SOMETIMES", NULL, NULL, NULL};

  (void)state;
  assert_int_equal(inst_open(&in, &full), 0);
  assert_int_equal(put(&in, "k", "v", PEERSTORE_REPLACE, NULL), 0);
  inst_close(&in);
  assert_int_not_equal(inst_open(&in, &bad), 0);
}

/* Commits only ask for checkpoints; a thread of their own copies the log
 * back while the worker commits on, and the worker copies what was
 * committed meanwhile.  The log must still be reused from its start
 * under steady writes - a checkpoint beside a writer that never pauses
 * never reaches the log's end by itself - and the copying must be the
 * thread's. */
static void test_the_log_stays_bounded_under_steady_writes(void **state) {
  inst in;
  opts o = {NULL, NULL, NULL, NULL, "20", NULL};
  char wal[600], key[32], value[200];
  struct stat st;
  off_t most = 0;
  int wave, i;

  (void)state;
  snprintf(wal, sizeof(wal), "%s-wal", db_path);
  memset(value, 'v', sizeof(value) - 1);
  value[sizeof(value) - 1] = '\0';
  assert_int_equal(inst_open(&in, &o), 0);
  for (wave = 0; wave < 100; wave++) {
    res r[100];

    memset(r, 0, sizeof(r));
    for (i = 0; i < 100; i++) {
      snprintf(key, sizeof(key), "k%d", (wave * 100 + i) % 3000);
      assert_int_equal(
          start_store(&in, "ss", key, value, PEERSTORE_REPLACE, &r[i]), 0);
    }
    for (i = 0; i < 100; i++) {
      assert_int_equal(harness_run_until(&in.loop, &r[i].done, TIMEOUT), 0);
      assert_int_equal(r[i].status, 0);
    }
    assert_int_equal(stat(wal, &st), 0);
    if (st.st_size > most)
      most = st.st_size;
  }
  ckpt_line[0] = '\0';
  inst_close(&in);
  /* Without checkpoints the log takes every frame of 10,000 stores (over
   * 12 MiB here); with them, four times 20 pages and what one wave adds
   * (a wave is a group or a few, about 100 pages). */
  assert_true(most < 600 * 4120);
  assert_true(thread_checkpoints() > 0);
}

/* A store awaited alone is committed by the loop thread itself, with no
 * hand-off to the worker and back, and is kept exactly as one the worker
 * commits: each acknowledged with the next revision, reported through
 * the hook, and all of them there after a reopen.  The first commit after
 * open is the worker's: it writes a new log's header, which SQLite
 * syncs. */
static void test_a_store_awaited_alone_is_committed_on_the_loop(void **state) {
  inst in;
  opts o = {0};
  uint64_t rev, last = 0, records = 0, revision = 0;
  char key[32];
  int i;

  (void)state;
  o.loop_commit_us = "1000000"; /* no commit here is that slow */
  /* Nor is a checkpoint asked for: once the thread's is done, the next
   * store goes to the worker, to copy the rest (on its own time). */
  o.checkpoint_pages = "1000000";
  assert_int_equal(inst_open(&in, &o), 0);
  for (i = 0; i < 200; i++) {
    snprintf(key, sizeof(key), "k%d", i);
    assert_int_equal(put(&in, key, "v", PEERSTORE_REPLACE, &rev), 0);
    assert_true(rev > last);
    last = rev;
  }
  assert_int_equal(in.changes, 200);
  /* All but the first: it creates the log, and syncs its header. */
  assert_int_equal(close_counting_loop_commits(&in, NULL), 199);
  assert_int_equal(inst_open(&in, NULL), 0);
  desc->ops->counts(in.p, &records, &revision);
  assert_int_equal(records, 200);
  assert_int_equal(revision, last);
  inst_close(&in);
}

/* Stores that come in the same turn of the loop go to the worker, so a
 * burst keeps its group commit; and what follows a store in that turn
 * sees it, as the order of calls says. */
static void test_stores_that_come_together_go_to_the_worker(void **state) {
  inst in;
  opts o = {0};
  res r[100], all;
  peerstore_plugin_filter f = {"ss", NULL, NULL};
  peerstore_plugin_cursor *c;
  char key[32];
  int i;

  (void)state;
  o.loop_commit_us = "1000000";
  o.checkpoint_pages = "1000000"; /* as above */
  assert_int_equal(inst_open(&in, &o), 0);
  memset(r, 0, sizeof(r));
  memset(&all, 0, sizeof(all));
  for (i = 0; i < 100; i++) {
    snprintf(key, sizeof(key), "k%d", i);
    assert_int_equal(start_store(&in, "ss", key, "v", PEERSTORE_REPLACE,
                                 &r[i]), 0);
  }
  assert_int_equal(desc->ops->iterate_open(in.p, &f, 0, &c), 0);
  assert_int_equal(desc->ops->iterate_next(c, 1000, rec_cb, next_cb, &all),
                   0);
  assert_int_equal(harness_run_until(&in.loop, &all.done, TIMEOUT), 0);
  desc->ops->iterate_close(c);
  assert_int_equal(all.status, 0);
  assert_int_equal(all.n, 100);
  for (i = 0; i < 100; i++) {
    assert_int_equal(r[i].done, 1); /* before the iteration that follows */
    assert_int_equal(r[i].status, 0);
    if (i > 0)
      assert_true(r[i].revision > r[i - 1].revision);
  }
  /* One store alone, then: the loop's. */
  assert_int_equal(put(&in, "alone", "v", PEERSTORE_REPLACE, NULL), 0);
  assert_int_equal(close_counting_loop_commits(&in, NULL), 1);
}

/* At synchronous = FULL every commit syncs the log: none may run on the
 * loop thread. */
static void test_full_sync_never_commits_on_the_loop(void **state) {
  inst in;
  opts o = {0};

  (void)state;
  o.synchronous = "FULL";
  o.loop_commit_us = "1000000";
  assert_int_equal(inst_open(&in, &o), 0);
  put_keys(&in, 20, "v");
  assert_int_equal(close_counting_loop_commits(&in, NULL), 0);
}

/* A commit on the loop that takes longer than loop_commit_us sends the
 * next 100 stores to the worker.  At 1 us every commit is too slow, so
 * of 150 awaited stores exactly the 2nd and the 103rd are the loop's
 * (the 1st is the worker's, as above). */
static void test_a_slow_loop_commit_sends_the_next_stores_to_the_worker(
    void **state) {
  inst in;
  opts o = {0};
  unsigned long long slow = 0;

  (void)state;
  o.loop_commit_us = "1";
  o.checkpoint_pages = "1000000"; /* as above */
  assert_int_equal(inst_open(&in, &o), 0);
  put_keys(&in, 150, "v");
  assert_int_equal(close_counting_loop_commits(&in, &slow), 2);
  assert_int_equal(slow, 2);
  /* 0 turns them off. */
  o.loop_commit_us = "0";
  assert_int_equal(inst_open(&in, &o), 0);
  assert_int_equal(put(&in, "k", "v", PEERSTORE_REPLACE, NULL), 0);
  assert_int_equal(close_counting_loop_commits(&in, NULL), 0);
}

/* A store held for the loop's idle phase is not lost when the plugin is
 * closed before that phase comes: close completes it. */
static void test_a_held_store_completes_at_close(void **state) {
  inst in;
  res r = {0};

  (void)state;
  assert_int_equal(inst_open(&in, NULL), 0);
  assert_int_equal(start_store(&in, "ss", "k", "v", PEERSTORE_REPLACE, &r),
                   0);
  inst_close(&in);
  assert_int_equal(r.done, 1);
  assert_int_equal(r.status, 0);
  assert_int_equal(inst_open(&in, NULL), 0);
  assert_int_equal(list(&in, "ss", &r), 0);
  assert_int_equal(r.n, 1);
  inst_close(&in);
}

/* Commits on the loop never wait for a checkpoint nor copy the log
 * themselves: they leave both to the worker's next commit.  Awaited one
 * at a time, where nearly every store is the loop's, the log must still
 * be reused from its start and stay bounded. */
static void test_the_log_stays_bounded_under_awaited_stores(void **state) {
  inst in;
  opts o = {0};
  char wal[600], key[32], value[200];
  unsigned long long on_loop;
  struct stat st;
  off_t most = 0;
  int i;

  (void)state;
  o.checkpoint_pages = "20";
  o.loop_commit_us = "1000000";
  snprintf(wal, sizeof(wal), "%s-wal", db_path);
  memset(value, 'v', sizeof(value) - 1);
  value[sizeof(value) - 1] = '\0';
  assert_int_equal(inst_open(&in, &o), 0);
  for (i = 0; i < 3000; i++) {
    snprintf(key, sizeof(key), "k%d", i % 300);
    assert_int_equal(put(&in, key, value, PEERSTORE_REPLACE, NULL), 0);
    if (i % 10 == 0) {
      assert_int_equal(stat(wal, &st), 0);
      if (st.st_size > most)
        most = st.st_size;
    }
  }
  ckpt_line[0] = '\0';
  on_loop = close_counting_loop_commits(&in, NULL);
  /* Most stores were the loop's; the rest went to the worker because a
   * catch-up was owed. */
  assert_true(on_loop > 1500);
  /* 3,000 stores of about ten pages each would take over 100 MiB. */
  assert_true(most < 600 * 4120);
  assert_true(thread_checkpoints() > 0);
}

/* The loop thread never waits for the disk on its own: between open and
 * close it makes no sync, however many checkpoints run beside it - not
 * the catch-up, not the wait past the hard limit, and not the sync of a
 * new log's header that the commit after a checkpoint caught up makes. */
static void test_commits_on_the_loop_never_sync(void **state) {
  inst in;
  opts o = {0};
  char key[32], value[200];
  unsigned long long on_loop;
  int i;

  (void)state;
  o.checkpoint_pages = "20";
  o.loop_commit_us = "1000000";
  open_with_history = 1;
  memset(value, 'v', sizeof(value) - 1);
  value[sizeof(value) - 1] = '\0';
  assert_int_equal(inst_open(&in, &o), 0);
  loop_thread = pthread_self();
  loop_syncs = 0;
  counting_syncs = 1;
  for (i = 0; i < 3000; i++) {
    snprintf(key, sizeof(key), "k%d", i % 300);
    assert_int_equal(put(&in, key, value, PEERSTORE_REPLACE, NULL), 0);
  }
  counting_syncs = 0;
  ckpt_line[0] = '\0';
  on_loop = close_counting_loop_commits(&in, NULL);
  assert_true(on_loop > 1500);
  assert_true(thread_checkpoints() > 10);
  assert_int_equal(loop_syncs, 0);
}

/* The plan SQLite gives sql, one line per step, "; " between. */
static void query_plan(sqlite3 *db, const char *sql, char *plan,
                       size_t size) {
  char q[2048];
  sqlite3_stmt *st;
  size_t len = 0;

  snprintf(q, sizeof(q), "EXPLAIN QUERY PLAN %s", sql);
  assert_int_equal(sqlite3_prepare_v2(db, q, -1, &st, NULL), SQLITE_OK);
  plan[0] = '\0';
  while (sqlite3_step(st) == SQLITE_ROW && len < size - 200)
    len += (size_t)snprintf(plan + len, size - len, "%s; ",
                            (const char *)sqlite3_column_text(st, 3));
  sqlite3_finalize(st);
}

/* Fails unless SQLite's plan for sql uses want, with no scan of a
 * table or index and no sort. */
static void expect_plan(sqlite3 *db, const char *sql, const char *want,
                        const char *what, int i) {
  char plan[2048];

  query_plan(db, sql, plan, sizeof(plan));
  if (strstr(plan, want) == NULL || strstr(plan, "TEMP B-TREE") ||
      strstr(plan, "SCAN"))
    fail_msg("%s %d: wanted %s, got %s", what, i, want, plan);
}

/* Every query on the records seeks its first record in its filter's own
 * index and reads on in revision order: no scan, no sort, and a page of
 * a long iteration starts where the last one stopped. */
static void test_every_filter_seeks_its_records_in_revision_order(
    void **state) {
  /* Each filter's index and the columns it seeks on. */
  static const char *const index[F_COUNT] = {
      "INDEX records_by_subsystem (subsystem=?",
      "INDEX records_by_peer (subsystem=? AND peer=?",
      "INDEX records_by_key (subsystem=? AND key=?",
      "INDEX records_by_triple (subsystem=? AND peer=? AND key=?"};
  const char *triple = index[F_COUNT - 1];
  inst in;
  sqlite3 *db;
  char q[2048], want[256];
  int i;

  (void)state;
  assert_int_equal(inst_open(&in, NULL), 0);
  put_keys(&in, 50, "v");
  inst_close(&in);
  assert_int_equal(sqlite3_open(db_path, &db), SQLITE_OK);
  /* Real statistics, of records under one peer with a key each: from
   * them SQLite would answer a (subsystem, peer, key) filter from the key
   * index and read every peer's record under that key.  The named
   * indexes must be used all the same. */
  sql("INSERT INTO records (revision, subsystem, peer, key, value, expiry) "
      "SELECT revision + 1000000, CAST('other' || revision AS BLOB), peer, "
      "key, value, expiry FROM records LIMIT 3; ANALYZE");
  for (i = 0; i < F_COUNT; i++) {
    snprintf(want, sizeof(want), "%s AND rowid>? AND rowid<?)", index[i]);
    snprintf(q, sizeof(q), SQLITE_ITERATE_SQL, sqlite_filter_from[i],
             sqlite_filter_where[i]);
    expect_plan(db, q, want, "iterate, filter", i);
    /* A history read merges its three arms, each in revision order from
     * the table or an index: no sort, however long the history. */
    snprintf(q, sizeof(q), SQLITE_HISTORY_SQL, sqlite_filter_from[i],
             sqlite_history_where[i], sqlite_history_where[i],
             sqlite_history_where[i]);
    expect_plan(db, q, want, "history, filter", i);
    expect_plan(db, q, "MERGE", "history, filter", i);
    snprintf(want, sizeof(want), "%s AND rowid<?)", index[i]);
    snprintf(q, sizeof(q), SQLITE_REMOVE_SQL, sqlite_filter_from[i],
             sqlite_filter_where[i]);
    expect_plan(db, q, want, "remove, filter", i);
  }
  snprintf(want, sizeof(want), "%s)", triple);
  expect_plan(db, SQLITE_FIND_SQL, want, "find", 0);
  expect_plan(db, SQLITE_NEWEST_SQL, want, "newest", 0);
  snprintf(want, sizeof(want), "%s AND rowid<?)", triple);
  expect_plan(db, SQLITE_REPLACED_SQL, want, "replaced", 0);
  expect_plan(db, SQLITE_PURGE_SQL, "INDEX records_by_expiry (expiry<?)",
              "purge", 0);
  sqlite3_close(db);
}

int main(void) {
  const char *so = getenv("PEERSTORE_SQLITE_PLUGIN");
  const char *src = getenv("srcdir");
  peerstore_plugin_entry_fn entry;
  conformance_target t = {NULL, conf_prepare, conf_cleanup, NULL};
  uv_lib_t lib;
  int failed;
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_reopen_keeps_records_and_revisions,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(
          test_the_last_revision_survives_reopen_whatever_carries_it, setup,
          teardown),
      cmocka_unit_test_setup_teardown(
          test_read_only_opens_a_version_4_file_as_it_is, setup, teardown),
      cmocka_unit_test_setup_teardown(test_migrate_v1, setup, teardown),
      cmocka_unit_test_setup_teardown(test_refuse_newer_version, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_refuse_foreign_database, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_refuse_garbage_file, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(
          test_refuse_damaged_old_version_without_migrating, setup, teardown),
      cmocka_unit_test_setup_teardown(test_refuse_damaged_pages, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_read_only, setup, teardown),
      cmocka_unit_test_setup_teardown(test_write_failure, setup, teardown),
      cmocka_unit_test_setup_teardown(
          test_iterations_in_a_failed_group_see_what_stayed, setup,
          teardown),
      cmocka_unit_test_setup_teardown(
          test_a_batch_failing_half_way_leaves_nothing, setup, teardown),
      cmocka_unit_test_setup_teardown(
          test_a_batch_changing_too_much_is_refused, setup, teardown),
      cmocka_unit_test_setup_teardown(test_synchronous_option, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(
          test_every_filter_seeks_its_records_in_revision_order, setup,
          teardown),
      cmocka_unit_test_setup_teardown(
          test_the_log_stays_bounded_under_steady_writes, setup, teardown),
      cmocka_unit_test_setup_teardown(
          test_a_store_awaited_alone_is_committed_on_the_loop, setup,
          teardown),
      cmocka_unit_test_setup_teardown(
          test_stores_that_come_together_go_to_the_worker, setup, teardown),
      cmocka_unit_test_setup_teardown(test_full_sync_never_commits_on_the_loop,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(
          test_a_slow_loop_commit_sends_the_next_stores_to_the_worker, setup,
          teardown),
      cmocka_unit_test_setup_teardown(test_a_held_store_completes_at_close,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(
          test_the_log_stays_bounded_under_awaited_stores, setup, teardown),
      cmocka_unit_test_setup_teardown(test_commits_on_the_loop_never_sync,
                                      setup, teardown),
  };

  if (so == NULL)
    so = "../plugins/.libs/peerstore_plugin_sqlite.so";
  if (uv_dlopen(so, &lib) != 0 ||
      uv_dlsym(&lib, PEERSTORE_PLUGIN_ENTRY, (void **)&entry) != 0) {
    fprintf(stderr, "cannot load %s: %s\n", so, uv_dlerror(&lib));
    return 1;
  }
  desc = entry();
  snprintf(fixture, sizeof(fixture), "%s/tests/fixtures/v1.sql",
           src ? src : "..");
  snprintf(dir, sizeof(dir), "%s/peerstore-sqlite-XXXXXX",
           getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
  if (mkdtemp(dir) == NULL)
    return 1;
  snprintf(db_path, sizeof(db_path), "%s/test.db", dir);

  t.desc = desc;
  failed = conformance_run("sqlite plugin: conformance", &t);
  failed += cmocka_run_group_tests_name("sqlite plugin", tests, NULL, NULL);
  remove_db();
  rmdir(dir);
  uv_dlclose(&lib);
  return failed;
}
