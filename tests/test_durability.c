/* test_durability.c - peerstored with the sqlite plugin keeps what it
 * acknowledged: across a clean restart, and across kill -9 right after the
 * acknowledgements arrived.  The database must then pass integrity_check. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <sqlite3.h>

#include "harness.h"
#include "peerstore.h"

#define TIMEOUT 60000

typedef struct fx {
  harness_svc svc;
  uv_loop_t loop;
  char dir[256];
  char db[300];
  const char *args[8];
} fx;

typedef struct run {
  int acks;
  int failed;
  int target;
  fx *f;
  int records;
  int ended;
  int status;
  uint64_t max_revision;
} run;

static int setup(void **state) {
  fx *f = calloc(1, sizeof(*f));

  assert_non_null(f);
  snprintf(f->dir, sizeof(f->dir), "%s/peerstore-dur-XXXXXX",
           getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
  assert_non_null(mkdtemp(f->dir));
  snprintf(f->db, sizeof(f->db), "%s/data.db", f->dir);
  f->args[0] = "--plugin";
  f->args[1] = "sqlite";
  f->args[2] = "--database";
  f->args[3] = f->db;
  f->args[4] = NULL;
  assert_int_equal(uv_loop_init(&f->loop), 0);
  assert_int_equal(harness_start(&f->svc, f->args), 0);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fx *f = *state;
  char cmd[300];

  assert_int_equal(harness_drain(&f->loop, TIMEOUT), 0);
  assert_int_equal(uv_loop_close(&f->loop), 0);
  assert_int_equal(harness_stop(&f->svc), 0);
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
  assert_int_equal(system(cmd), 0);
  free(f);
  return 0;
}

/* A client without an operation timeout: 20,000 stores under valgrind on
 * a busy machine may take longer than the default 10 s, and what is
 * tested is what was acknowledged, not how fast. */
static peerstore_client *connect_patient(fx *f) {
  peerstore_connect_opts o;

  peerstore_connect_opts_init(&o);
  o.timeout_ms = 0;
  return peerstore_connect_ex(&f->loop, f->svc.socket_path, &o);
}

static void ack_cb(void *arg, int status) {
  run *r = arg;

  if (status != 0)
    r->failed++;
  /* The moment the last acknowledgement is in, the service dies. */
  if (++r->acks == r->target && r->f != NULL)
    harness_kill(&r->f->svc, SIGKILL);
}

static void count_cb(void *arg, const peerstore_record *rec, int status) {
  run *r = arg;

  if (rec == NULL) {
    r->ended = 1;
    r->status = status;
    return;
  }
  r->records++;
  if (rec->revision > r->max_revision)
    r->max_revision = rec->revision;
}

static void store_many(fx *f, peerstore_client *c, int n, run *r) {
  peerstore_peer_id p;
  char key[32], value[64];
  int i;

  for (i = 0; i < n; i++) {
    memset(&p, 0, sizeof(p));
    memcpy(p.bytes, &i, sizeof(i));
    snprintf(key, sizeof(key), "key-%d", i % 100);
    snprintf(value, sizeof(value), "value %d", i);
    assert_non_null(peerstore_store(c, "dur", &p, key, value, strlen(value),
                                    PEERSTORE_EXPIRY_NEVER, PEERSTORE_MULTIPLE,
                                    ack_cb, r));
  }
  assert_int_equal(harness_run_until_ge(&f->loop, &r->acks, n, TIMEOUT), 0);
  assert_int_equal(r->failed, 0);
}

static void count_all(fx *f, run *r) {
  peerstore_client *c = connect_patient(f);

  memset(r, 0, sizeof(*r));
  assert_non_null(peerstore_iterate(c, "dur", NULL, NULL, count_cb, r));
  assert_int_equal(harness_run_until(&f->loop, &r->ended, TIMEOUT), 0);
  assert_int_equal(r->status, 0);
  peerstore_disconnect(c, 0);
}

static void integrity_ok(const char *path) {
  sqlite3 *db;
  sqlite3_stmt *st;

  assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
  assert_int_equal(
      sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &st, NULL),
      SQLITE_OK);
  assert_int_equal(sqlite3_step(st), SQLITE_ROW);
  assert_string_equal((const char *)sqlite3_column_text(st, 0), "ok");
  sqlite3_finalize(st);
  sqlite3_close(db);
}

static void test_clean_restart(void **state) {
  fx *f = *state;
  peerstore_client *c = connect_patient(f);
  run r = {0}, after;
  uint64_t before_rev;

  store_many(f, c, 500, &r);
  peerstore_disconnect(c, 0);
  count_all(f, &after);
  assert_int_equal(after.records, 500);
  before_rev = after.max_revision;
  assert_int_equal(harness_stop(&f->svc), 0);
  integrity_ok(f->db);

  assert_int_equal(harness_start(&f->svc, f->args), 0);
  count_all(f, &after);
  assert_int_equal(after.records, 500);
  /* Storing continues the revisions; nothing is reused. */
  c = connect_patient(f);
  memset(&r, 0, sizeof(r));
  store_many(f, c, 1, &r);
  peerstore_disconnect(c, 0);
  count_all(f, &after);
  assert_int_equal(after.records, 500); /* an identical MULTIPLE refreshed */
  assert_true(after.max_revision > before_rev);
}

static void test_kill9_after_acks(void **state) {
  fx *f = *state;
  peerstore_client *c = connect_patient(f);
  run r = {0}, after;
  int n = 20000;

  r.target = n;
  r.f = f;
  store_many(f, c, n, &r);
  assert_false(harness_alive(&f->svc));
  peerstore_disconnect(c, 0);
  assert_int_equal(harness_drain(&f->loop, TIMEOUT), 0);

  /* Everything acknowledged is there, once, and the file is sound. */
  integrity_ok(f->db);
  assert_int_equal(harness_start(&f->svc, f->args), 0);
  count_all(f, &after);
  assert_int_equal(after.records, n);
}

/* A client far ahead of the database is paced (its requests are read
 * only as others complete), not failed. */
static void test_inflight_limit_paces(void **state) {
  fx *f = *state;
  peerstore_client *c;
  run r = {0}, after;

  assert_int_equal(harness_stop(&f->svc), 0);
  f->args[4] = "-o";
  f->args[5] = "max_inflight=16";
  f->args[6] = NULL;
  assert_int_equal(harness_start(&f->svc, f->args), 0);
  c = connect_patient(f);
  store_many(f, c, 5000, &r);
  assert_int_equal(r.failed, 0);
  peerstore_disconnect(c, 0);
  count_all(f, &after);
  assert_int_equal(after.records, 5000);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_clean_restart, setup, teardown),
      cmocka_unit_test_setup_teardown(test_kill9_after_acks, setup, teardown),
      cmocka_unit_test_setup_teardown(test_inflight_limit_paces, setup,
                                      teardown),
  };
  return cmocka_run_group_tests_name("durability", tests, NULL, NULL);
}
