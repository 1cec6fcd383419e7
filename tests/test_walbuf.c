/* test_walbuf.c - the sqlite plugin's log-writing VFS (sqlite_walbuf.c),
 * driven through SQLite itself: what a commit leaves in the files the
 * moment it returns is what a crash leaves (a copy of the database and
 * its log, recovered by a fresh connection), and what another connection
 * reads.  Each case is one SQLite reaches only with large transactions:
 * frames spilled and rolled back, checksums rewritten at commit. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <sqlite3.h>

#include "sqlite_walbuf.h"

static char dir[256], path[512];

static sqlite3 *open_db(const char *p, const char *vfs) {
  sqlite3 *db;

  assert_int_equal(sqlite3_open_v2(p, &db,
                                   SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE,
                                   vfs),
                   SQLITE_OK);
  sqlite3_busy_timeout(db, 10000);
  return db;
}

static void run(sqlite3 *db, const char *sql) {
  char *err = NULL;
  int rc = sqlite3_exec(db, sql, NULL, NULL, &err);

  if (rc != SQLITE_OK)
    fail_msg("%s: %s", sql, err ? err : sqlite3_errstr(rc));
}

static int64_t one(sqlite3 *db, const char *sql) {
  sqlite3_stmt *st;
  int64_t v;

  assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
  assert_int_equal(sqlite3_step(st), SQLITE_ROW);
  v = sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  return v;
}

static void copy_file(const char *from, const char *to) {
  char buf[65536];
  FILE *in = fopen(from, "rb"), *out = fopen(to, "wb");
  size_t n;

  assert_non_null(in);
  assert_non_null(out);
  while ((n = fread(buf, 1, sizeof(buf), in)) > 0)
    assert_int_equal(fwrite(buf, 1, n, out), n);
  fclose(in);
  assert_int_equal(fclose(out), 0);
}

/* What a crash right now would leave: the database and its log as the
 * files hold them, opened afresh (SQLite recovers the log).  Returns
 * count(*) of t after checking the copy's integrity. */
static int64_t crash_copy_rows(void) {
  char db[600], wal[600], from[600];
  sqlite3 *c;
  int64_t n;

  snprintf(db, sizeof(db), "%s/copy.db", dir);
  snprintf(wal, sizeof(wal), "%s/copy.db-wal", dir);
  snprintf(from, sizeof(from), "%s-wal", path);
  unlink(wal);
  copy_file(path, db);
  copy_file(from, wal);
  c = open_db(db, NULL);
  n = one(c, "SELECT count(*) FROM t");
  assert_int_equal(one(c, "SELECT integrity_check = 'ok' FROM "
                          "pragma_integrity_check"),
                   1);
  sqlite3_close(c);
  unlink(db);
  unlink(wal);
  return n;
}

static int setup(void **state) {
  (void)state;
  snprintf(dir, sizeof(dir), "/tmp/test_walbuf-XXXXXX");
  assert_non_null(mkdtemp(dir));
  snprintf(path, sizeof(path), "%s/w.db", dir);
  assert_non_null(ps_walbuf_vfs());
  return 0;
}

static int teardown(void **state) {
  char p[600];

  (void)state;
  unlink(path);
  snprintf(p, sizeof(p), "%s-wal", path);
  unlink(p);
  snprintf(p, sizeof(p), "%s-shm", path);
  unlink(p);
  rmdir(dir);
  return 0;
}

/* A connection through the VFS, in WAL mode, never checkpointing by
 * itself (so the log holds everything), with a page cache of pages
 * pages (small: transactions spill frames to the log before they
 * commit). */
static sqlite3 *writer(int pages) {
  sqlite3 *db = open_db(path, ps_walbuf_vfs());
  char sql[128];

  run(db, "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; "
          "PRAGMA wal_autocheckpoint = 0");
  snprintf(sql, sizeof(sql), "PRAGMA cache_size = %d", pages);
  run(db, sql);
  run(db, "CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY, v BLOB)");
  return db;
}

static void insert(sqlite3 *db, int from, int n) {
  char sql[160];

  snprintf(sql, sizeof(sql),
           "WITH RECURSIVE s(i) AS (SELECT %d UNION ALL SELECT i + 1 FROM s "
           "WHERE i < %d) INSERT INTO t SELECT i, randomblob(300) FROM s",
           from, from + n - 1);
  run(db, sql);
}

/* Each commit is whole in the files when it returns: another connection
 * reads it, and a crash keeps it. */
static void test_a_commit_is_in_the_files_when_it_returns(void **state) {
  sqlite3 *w = writer(2000), *r;
  int i;

  (void)state;
  r = open_db(path, NULL);
  for (i = 0; i < 20; i++) {
    insert(w, i * 10, 10);
    assert_int_equal(one(r, "SELECT count(*) FROM t"), (i + 1) * 10);
  }
  assert_int_equal(crash_copy_rows(), 200);
  sqlite3_close(r);
  sqlite3_close(w);
}

/* A transaction that spilled frames to the log and rolled back: those
 * frames are written while it still holds the write lock, never later
 * over what another writer committed in their place. */
static void test_rolled_back_frames_do_not_overwrite_another_writer(
    void **state) {
  sqlite3 *w = writer(10), *other;

  (void)state;
  insert(w, 0, 10);
  /* An empty log: the rollback reloads its pages from the database file
   * and reads nothing of the log (a read would write the frames). */
  run(w, "PRAGMA wal_checkpoint(TRUNCATE)");
  run(w, "BEGIN");
  insert(w, 1000, 2000); /* spills: the cache holds 10 pages */
  run(w, "ROLLBACK");
  /* More than the rolled-back frames took, so its frames lie where any
   * of theirs still held in memory would land. */
  other = open_db(path, NULL);
  insert(other, 10000, 3000);
  sqlite3_close(other);
  insert(w, 5000, 10);
  assert_int_equal(one(w, "SELECT count(*) FROM t"), 3020);
  assert_int_equal(crash_copy_rows(), 3020);
  sqlite3_close(w);
}

/* A page written twice in a transaction that spilled is written again in
 * place, and SQLite rewrites the checksums of the frames after it once
 * the commit frame is out; a crash must keep that commit. */
static void test_checksums_rewritten_at_commit_reach_the_file(void **state) {
  sqlite3 *w = writer(10);

  (void)state;
  insert(w, 0, 10);
  run(w, "BEGIN");
  insert(w, 100, 2000);
  run(w, "UPDATE t SET v = randomblob(300) WHERE k < 10");
  insert(w, 3000, 50);
  run(w, "COMMIT");
  assert_int_equal(crash_copy_rows(), 2060);
  insert(w, 9000, 1);
  assert_int_equal(crash_copy_rows(), 2061);
  sqlite3_close(w);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(
          test_a_commit_is_in_the_files_when_it_returns, setup, teardown),
      cmocka_unit_test_setup_teardown(
          test_rolled_back_frames_do_not_overwrite_another_writer, setup,
          teardown),
      cmocka_unit_test_setup_teardown(
          test_checksums_rewritten_at_commit_reach_the_file, setup,
          teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
