/* test_postgres.c - the PostgreSQL plugin against a real server that the
 * test starts (tests/pg_cluster.sh): the shared conformance suite, each
 * test on a fresh database, then what only a shared database has to get
 * right at the plugin level (the indexes serve the queries in revision
 * order, two instances on one database see one sequence, one history).
 * The services-level tests are in test_postgres_hosts.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>
#include <libpq-fe.h>

#include "conformance.h"
#include "harness.h"
#include "postgres_queries.h"

#define TIMEOUT 30000

/* The plugin's SQL (plugins/postgres_schema.c, linked in). */
extern const char peerstore_postgres_migrate_1_2[];
extern const char peerstore_postgres_functions[];

static const peerstore_plugin_desc *desc;
static harness_pg server;
static char conninfo[600];
static int db_seq;

static const char *get_option(void *ctx, const char *name) {
  (void)ctx;
  if (strcmp(name, "conninfo") == 0)
    return conninfo;
  if (strcmp(name, "poll_interval_ms") == 0)
    return "100";
  return NULL;
}

/* A fresh database for every instance the suite opens. */
static int conf_prepare(void *ctx, peerstore_plugin_env *env) {
  char name[32];

  (void)ctx;
  snprintf(name, sizeof(name), "conf%d", ++db_seq);
  if (harness_pg_ctl(&server, "createdb", name) != 0)
    return -1;
  harness_pg_conninfo(&server, name, conninfo, sizeof(conninfo));
  env->option = get_option;
  return 0;
}

/* ------------------------------------------------------------------ */
/* Plumbing for the tests below                                        */

static void quiet_log(void *ctx, enum peerstore_log_level level,
                      const char *fmt, ...) {
  (void)ctx;
  (void)level;
  (void)fmt;
}

typedef struct inst {
  uv_loop_t loop;
  void *p;
  uint64_t last; /* the last revision reported through the hook */
  int changes;
  int out_of_order;
  int kinds[8]; /* changes by kind */
} inst;

static void on_change(void *ctx, const peerstore_plugin_change *ch) {
  inst *in = ctx;

  if (ch->revision <= in->last)
    in->out_of_order++;
  in->last = ch->revision;
  in->changes++;
  if (ch->kind < 8)
    in->kinds[ch->kind]++;
}

static void inst_open_with(inst *in, uint64_t history_bytes) {
  peerstore_plugin_env env;

  memset(in, 0, sizeof(*in));
  assert_int_equal(uv_loop_init(&in->loop), 0);
  memset(&env, 0, sizeof(env));
  env.loop = &in->loop;
  env.option = get_option;
  env.log = quiet_log;
  env.strerror = peerstore_strerror;
  env.changed = on_change;
  env.changed_ctx = in;
  env.history_events = 100000;
  env.history_bytes = history_bytes;
  assert_int_equal(desc->ops->open(&env, &in->p), 0);
}

static void inst_open(inst *in) { inst_open_with(in, 64u << 20); }

static void inst_close(inst *in) {
  desc->ops->close(in->p);
  assert_int_equal(harness_drain(&in->loop, TIMEOUT), 0);
  assert_int_equal(uv_loop_close(&in->loop), 0);
}

typedef struct res {
  int done;
  int status;
  uint64_t revision;
} res;

static void store_cb(void *arg, int status, const peerstore_record *rec) {
  res *r = arg;
  r->done = 1;
  r->status = status;
  r->revision = rec != NULL ? rec->revision : 0;
}

static void put(inst *in, const char *key, const char *value,
                uint64_t expiry, enum peerstore_store_option option,
                res *r) {
  peerstore_record rec;

  memset(&rec, 0, sizeof(rec));
  memset(r, 0, sizeof(*r));
  rec.subsystem = "ss";
  rec.peer.bytes[0] = 1;
  rec.key = key;
  rec.value = value;
  rec.value_size = strlen(value);
  rec.expiry = expiry;
  assert_int_equal(desc->ops->store(in->p, &rec, 0, option, store_cb, r), 0);
}

static void store_async(inst *in, const char *key, const char *value,
                        res *r) {
  put(in, key, value, PEERSTORE_EXPIRY_NEVER, PEERSTORE_MULTIPLE, r);
}

static uint64_t wall_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

static PGconn *db_connect(void) {
  PGconn *c = PQconnectdb(conninfo);
  assert_int_equal(PQstatus(c), CONNECTION_OK);
  return c;
}

static int setup(void **state) {
  char name[32];

  (void)state;
  snprintf(name, sizeof(name), "t%d", ++db_seq);
  assert_int_equal(harness_pg_ctl(&server, "createdb", name), 0);
  harness_pg_conninfo(&server, name, conninfo, sizeof(conninfo));
  return 0;
}

/* ------------------------------------------------------------------ */
/* Tests                                                               */

/* Two instances on one database (two hosts' services): one revision
 * sequence, strictly increasing, and each instance reports every change
 * - its own and the other's - in revision order, with no gap. */
static void test_two_instances_share_one_sequence_and_see_each_other(
    void **state) {
  static inst a, b;
  static res ra[50], rb[50];
  uint64_t first;
  char key[16];
  int i, done;

  (void)state;
  inst_open(&a);
  inst_open(&b);
  for (i = 0; i < 50; i++) {
    snprintf(key, sizeof(key), "a%d", i);
    store_async(&a, key, "x", &ra[i]);
    snprintf(key, sizeof(key), "b%d", i);
    store_async(&b, key, "y", &rb[i]);
  }
  do {
    uv_run(&a.loop, UV_RUN_NOWAIT);
    uv_run(&b.loop, UV_RUN_NOWAIT);
    for (done = 0, i = 0; i < 50; i++)
      done += ra[i].done + rb[i].done;
  } while (done < 100);
  for (i = 0; i < 50; i++) {
    assert_int_equal(ra[i].status, 0);
    assert_int_equal(rb[i].status, 0);
    if (i > 0) {
      assert_true(ra[i].revision > ra[i - 1].revision);
      assert_true(rb[i].revision > rb[i - 1].revision);
    }
  }
  /* Each learns of all 100 (the other's by the doorbell or the poll). */
  while (a.changes < 100 || b.changes < 100) {
    uv_run(&a.loop, UV_RUN_NOWAIT);
    uv_run(&b.loop, UV_RUN_NOWAIT);
    usleep(1000);
  }
  assert_int_equal(a.changes, 100);
  assert_int_equal(b.changes, 100);
  assert_int_equal(a.out_of_order, 0);
  assert_int_equal(b.out_of_order, 0);
  /* One sequence: 100 changes, 100 consecutive revisions. */
  first = ra[0].revision < rb[0].revision ? ra[0].revision : rb[0].revision;
  assert_int_equal(a.last, first + 99);
  assert_int_equal(b.last, first + 99);
  inst_close(&a);
  inst_close(&b);
}

static void count_cb(void *arg, int status, uint64_t n) {
  res *r = arg;
  r->done = 1;
  r->status = status;
  r->revision = n;
}

/* Runs both instances' loops until *a_flag and *b_flag are set. */
static void run_both(inst *a, inst *b, const int *a_flag, const int *b_flag) {
  uint64_t deadline = uv_hrtime() + (uint64_t)TIMEOUT * 1000000;

  while (!*a_flag || !*b_flag) {
    uv_run(&a->loop, UV_RUN_NOWAIT);
    uv_run(&b->loop, UV_RUN_NOWAIT);
    if (uv_hrtime() > deadline)
      fail_msg("timed out");
    if (!*a_flag || !*b_flag)
      uv_sleep(1);
  }
}


typedef struct listing {
  int n, done, status;
  char values[8][16];
} listing;

static int list_rec(void *arg, const peerstore_record *rec, uint32_t writer) {
  listing *l = arg;

  (void)writer;
  if (l->n < 8)
    snprintf(l->values[l->n], sizeof(l->values[0]), "%.*s",
             (int)rec->value_size, (const char *)rec->value);
  l->n++;
  return 0;
}

static void list_done(void *arg, int status, int more) {
  listing *l = arg;

  l->status = status;
  l->done = !more;
}

/* Every record of subsystem ss through in, as a service iterates. */
static void list_all(inst *in, listing *l) {
  peerstore_plugin_filter f = {"ss", NULL, NULL};
  peerstore_plugin_cursor *c;

  memset(l, 0, sizeof(*l));
  assert_int_equal(desc->ops->iterate_open(in->p, &f, 0, &c), 0);
  while (!l->done) {
    int before = l->n;
    l->status = -1;
    assert_int_equal(
        desc->ops->iterate_next(c, 100, list_rec, list_done, l), 0);
    while (l->status == -1)
      assert_int_equal(uv_run(&in->loop, UV_RUN_ONCE) >= 0, 1);
    assert_int_equal(l->status, 0);
    if (!l->done && l->n == before)
      fail_msg("no progress");
  }
  desc->ops->iterate_close(c);
}

/* REPLACE and MULTIPLE across instances: values stored through one are
 * all replaced by a REPLACE through the other, which reports them
 * dropped; the first then iterates only the new value and hears of the
 * drops (REMOVE) through its hook. */
static void test_a_replace_through_one_host_drops_the_values_of_the_other(
    void **state) {
  static inst a, b;
  static listing l;
  res r[3];

  (void)state;
  inst_open(&a);
  inst_open(&b);
  put(&a, "k", "x", PEERSTORE_EXPIRY_NEVER, PEERSTORE_MULTIPLE, &r[0]);
  put(&a, "k", "y", PEERSTORE_EXPIRY_NEVER, PEERSTORE_MULTIPLE, &r[1]);
  assert_int_equal(harness_run_until(&a.loop, &r[1].done, TIMEOUT), 0);
  put(&b, "k", "z", PEERSTORE_EXPIRY_NEVER, PEERSTORE_REPLACE, &r[2]);
  assert_int_equal(harness_run_until(&b.loop, &r[2].done, TIMEOUT), 0);
  assert_int_equal(r[0].status + r[1].status + r[2].status, 0);
  /* b: its store, then x and y dropped. */
  assert_int_equal(b.kinds[PEERSTORE_CHANGE_STORE], 3);
  assert_int_equal(b.kinds[PEERSTORE_CHANGE_REMOVE], 2);
  list_all(&a, &l);
  assert_int_equal(l.n, 1);
  assert_string_equal(l.values[0], "z");
  /* a heard all of it, in order, by the time its cursor opened. */
  assert_int_equal(a.kinds[PEERSTORE_CHANGE_STORE], 3);
  assert_int_equal(a.kinds[PEERSTORE_CHANGE_REMOVE], 2);
  assert_int_equal(a.out_of_order + b.out_of_order, 0);
  inst_close(&a);
  inst_close(&b);
}

/* Both instances purge at once: one takes the purge lock and expires
 * every record, the other finds it taken and goes on (count 0, no
 * waiting); each record expires once, and both hear of every expiry. */
static void test_two_hosts_purging_at_once_expire_each_record_once(
    void **state) {
  enum { N = 200 };
  static inst a, b;
  static res r[N];
  res pa, pb;
  char key[16];
  int i;

  (void)state;
  inst_open(&a);
  inst_open(&b);
  for (i = 0; i < N; i++) {
    snprintf(key, sizeof(key), "e%d", i);
    put(&a, key, "v", 1000, PEERSTORE_MULTIPLE, &r[i]); /* long expired */
  }
  assert_int_equal(harness_run_until(&a.loop, &r[N - 1].done, TIMEOUT), 0);
  memset(&pa, 0, sizeof(pa));
  memset(&pb, 0, sizeof(pb));
  assert_int_equal(desc->ops->purge(a.p, wall_us(), 10 * N, count_cb, &pa),
                   0);
  assert_int_equal(desc->ops->purge(b.p, wall_us(), 10 * N, count_cb, &pb),
                   0);
  run_both(&a, &b, &pa.done, &pb.done);
  assert_int_equal(pa.status + pb.status, 0);
  /* count_cb keeps the count in .revision */
  assert_int_equal(pa.revision + pb.revision, N);
  assert_true(pa.revision == 0 || pb.revision == 0);
  /* Each hears every store and every expiry, once, in order. */
  while (a.changes < 2 * N || b.changes < 2 * N) {
    uv_run(&a.loop, UV_RUN_NOWAIT);
    uv_run(&b.loop, UV_RUN_NOWAIT);
    uv_sleep(1);
  }
  assert_int_equal(a.kinds[PEERSTORE_CHANGE_EXPIRE], N);
  assert_int_equal(b.kinds[PEERSTORE_CHANGE_EXPIRE], N);
  assert_int_equal(a.changes + b.changes, 4 * N);
  assert_int_equal(a.out_of_order + b.out_of_order, 0);
  inst_close(&a);
  inst_close(&b);
}

/* The history's rows and bytes as the writers counted them, and as a
 * scan of the table finds them: equal. */
static void assert_history_counted(PGconn *c) {
  PGresult *r = PQexec(
      c, "SELECT (SELECT value FROM peerstore_meta WHERE name = "
         "'history_rows'), (SELECT value FROM peerstore_meta WHERE name = "
         "'history_bytes'), count(*), coalesce(sum(length(subsystem) + "
         "length(key) + length(value) + 72), 0) FROM peerstore_history");

  assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
  assert_string_equal(PQgetvalue(r, 0, 0), PQgetvalue(r, 0, 2));
  assert_string_equal(PQgetvalue(r, 0, 1), PQgetvalue(r, 0, 3));
  PQclear(r);
}

static void exec_ok(PGconn *c, const char *sql) {
  PGresult *r = PQexec(c, sql);

  if (PQresultStatus(r) != PGRES_COMMAND_OK &&
      PQresultStatus(r) != PGRES_TUPLES_OK)
    fail_msg("%s: %s", sql, PQerrorMessage(c));
  PQclear(r);
}

/* A database made by the plugin's schema version 1 (the fixture), with
 * records and a history written by version 1's functions, is brought
 * forward when a version 2 plugin opens it: the counters it adds agree
 * with the history, its records are all there, and the writes after keep
 * the counters right - a REPLACE, a remove, the purge's trim. */
/* The schema as version 1 of the plugin made it (the fixture). */
static void make_version_1(PGconn *c) {
  char path[600], *sql;
  const char *src = getenv("srcdir");
  FILE *f;
  long n;

  snprintf(path, sizeof(path), "%s/tests/fixtures/postgres-v1.sql",
           src != NULL ? src : ".");
  assert_non_null(f = fopen(path, "rb"));
  fseek(f, 0, SEEK_END);
  n = ftell(f);
  rewind(f);
  assert_non_null(sql = calloc(1, (size_t)n + 1));
  assert_int_equal(fread(sql, 1, (size_t)n, f), (size_t)n);
  fclose(f);
  exec_ok(c, sql);
  free(sql);
}

static void test_a_version_1_database_is_migrated_forward(void **state) {
  static inst a;
  peerstore_plugin_filter all = {"ss", NULL, NULL};
  res r[4];
  PGresult *pr;
  PGconn *c;
  int i;

  (void)state;
  c = db_connect();
  make_version_1(c);
  /* Version 1 at work: three stores of one key, the last a REPLACE. */
  exec_ok(c, "BEGIN");
  exec_ok(c, "SELECT * FROM peerstore_lock()");
  for (i = 0; i < 3; i++) {
    char q[400];
    snprintf(q, sizeof(q),
             "SELECT * FROM peerstore_store('ss', '\\x%064d', 'k', "
             "'v%d', 9223372036854775807, 0, %s, true, 0)",
             1, i, i == 2 ? "true" : "false");
    exec_ok(c, q);
  }
  exec_ok(c, "SELECT peerstore_unlock(1)");
  exec_ok(c, "COMMIT");
  pr = PQexec(c, "SELECT count(*) FROM peerstore_history");
  assert_string_equal(PQgetvalue(pr, 0, 0), "2"); /* v0, v1 dropped */
  PQclear(pr);

  inst_open(&a);
  pr = PQexec(c, "SELECT value FROM peerstore_meta "
                 "WHERE name = 'schema_version'");
  assert_string_equal(PQgetvalue(pr, 0, 0), "2");
  PQclear(pr);
  assert_history_counted(c);
  /* Writes through version 2 keep the counters. */
  store_async(&a, "k", "v3", &r[0]);
  store_async(&a, "k", "v3", &r[1]); /* a refresh: the old store kept */
  store_async(&a, "j", "x", &r[2]);
  assert_int_equal(harness_run_until(&a.loop, &r[2].done, TIMEOUT), 0);
  assert_int_equal(r[0].status + r[1].status + r[2].status, 0);
  assert_history_counted(c);
  memset(&r[3], 0, sizeof(r[3]));
  assert_int_equal(desc->ops->remove(a.p, &all, count_cb, &r[3]), 0);
  assert_int_equal(harness_run_until(&a.loop, &r[3].done, TIMEOUT), 0);
  assert_int_equal(r[3].status, 0);
  assert_int_equal(r[3].revision, 3); /* v2, v3 and x */
  assert_history_counted(c);
  inst_close(&a);
  PQfinish(c);
}

/* A service of version 1 whose write waited for the writers' lock behind
 * the migration began with version 1's peerstore_lock() and goes on with
 * version 2's functions: it commits, and the counters stay right. */
static void test_a_version_1_writer_caught_by_the_migration_goes_on(
    void **state) {
  static inst a;
  PGconn *old, *c;
  PGresult *r;

  (void)state;
  c = db_connect();
  old = db_connect();
  make_version_1(c);
  /* The migration, as the plugin runs it, holding the writers' lock ... */
  exec_ok(c, "BEGIN");
  exec_ok(c, peerstore_postgres_migrate_1_2);
  exec_ok(c, peerstore_postgres_functions);
  /* ... while a version 1 writer queues for it. */
  assert_int_equal(PQsendQuery(old, "BEGIN; SELECT * FROM peerstore_lock()"),
                   1);
  exec_ok(c, "COMMIT");
  while ((r = PQgetResult(old)) != NULL) {
    assert_true(PQresultStatus(r) == PGRES_COMMAND_OK ||
                PQresultStatus(r) == PGRES_TUPLES_OK);
    PQclear(r);
  }
  /* A store that keeps nothing in the history: the counters it never
   * started are read as 0 by version 2's peerstore_unlock(). */
  exec_ok(old, "SELECT * FROM peerstore_store('ss', '\\x01', 'k', 'a', "
               "9223372036854775807, 0, false, true, 0)");
  exec_ok(old, "SELECT peerstore_unlock(1)");
  exec_ok(old, "COMMIT");
  assert_history_counted(c);
  /* And one that does, in the next transaction of the same session. */
  exec_ok(old, "BEGIN");
  exec_ok(old, "SELECT * FROM peerstore_lock()");
  exec_ok(old, "SELECT * FROM peerstore_store('ss', '\\x01', 'k', 'b', "
               "9223372036854775807, 0, true, true, 0)");
  exec_ok(old, "SELECT peerstore_unlock(0)");
  exec_ok(old, "COMMIT");
  assert_history_counted(c);
  inst_open(&a); /* version 2 already: nothing to do */
  inst_close(&a);
  assert_history_counted(c);
  PQfinish(old);
  PQfinish(c);
}

/* The purge trims by revisions and by bytes from the writers' counters,
 * reading only the rows it removes; afterwards the counters still agree
 * with the table. */
static void test_the_trim_keeps_the_history_counters_right(void **state) {
  const uint64_t max_bytes = 20 * (2 + 1 + 20 + 72); /* 20 rows */
  static inst a;
  static res r[200];
  res p;
  char value[32];
  PGresult *pr;
  PGconn *c;
  int i;

  (void)state;
  inst_open_with(&a, max_bytes);
  for (i = 0; i < 200; i++) {
    peerstore_record rec;
    memset(&rec, 0, sizeof(rec));
    snprintf(value, sizeof(value), "%020d", i);
    rec.subsystem = "ss";
    rec.key = "k";
    rec.value = value;
    rec.value_size = 20;
    rec.expiry = PEERSTORE_EXPIRY_NEVER;
    assert_int_equal(desc->ops->store(a.p, &rec, 0, PEERSTORE_REPLACE,
                                      store_cb, &r[i]),
                     0);
  }
  assert_int_equal(harness_run_until(&a.loop, &r[199].done, TIMEOUT), 0);
  c = db_connect();
  assert_history_counted(c);
  memset(&p, 0, sizeof(p));
  assert_int_equal(desc->ops->purge(a.p, wall_us(), 1000, count_cb, &p), 0);
  assert_int_equal(harness_run_until(&a.loop, &p.done, TIMEOUT), 0);
  assert_int_equal(p.status, 0);
  assert_history_counted(c);
  pr = PQexec(c, "SELECT count(*), (SELECT value FROM peerstore_meta WHERE "
                 "name = 'history_bytes') FROM peerstore_history");
  /* 199 dropped records, trimmed to what fits in the bytes. */
  assert_true(atoi(PQgetvalue(pr, 0, 0)) >= 19 &&
              atoi(PQgetvalue(pr, 0, 0)) <= 20);
  assert_true(atol(PQgetvalue(pr, 0, 1)) <= (long)max_bytes);
  PQclear(pr);
  PQfinish(c);
  inst_close(&a);
}

/* EXPLAIN: every filter's iteration and history read is served by an
 * index in revision order - no sort - even with sorting priced out. */
static void test_query_plans(void **state) {
  static inst a;
  char sql[2048], q[2300];
  PGconn *c;
  PGresult *r;
  int i, j;

  (void)state;
  inst_open(&a); /* creates the schema */
  inst_close(&a);
  c = db_connect();
  PQclear(PQexec(c, "SET enable_sort = off"));
  PQclear(PQexec(c, "SET enable_seqscan = off"));
  for (i = 0; i < F_COUNT * 2; i++) {
    if (i < F_COUNT)
      snprintf(sql, sizeof(sql), PG_ITERATE_SQL, pg_filter_where[i]);
    else
      snprintf(sql, sizeof(sql), PG_HISTORY_SQL,
               pg_filter_where[i - F_COUNT], pg_filter_where[i - F_COUNT],
               pg_filter_where[i - F_COUNT]);
    /* Literal parameters, as a custom plan sees them. */
    snprintf(q, sizeof(q), "EXPLAIN %s", sql);
    for (j = 7; j >= 1; j--) {
      char ph[4], *at;
      snprintf(ph, sizeof(ph), "$%d", j);
      while ((at = strstr(q, ph)) != NULL) {
        const char *lit = j <= 3 ? "'\\x01'::bytea" : "5";
        memmove(at + strlen(lit), at + 2, strlen(at + 2) + 1);
        memcpy(at, lit, strlen(lit));
      }
    }
    r = PQexec(c, q);
    assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    {
      char plan[16384] = "";
      int k;
      for (k = 0; k < PQntuples(r); k++) {
        strncat(plan, PQgetvalue(r, k, 0), sizeof(plan) - strlen(plan) - 2);
        strcat(plan, "\n");
      }
      /* An iteration: one index scan, no sort.  A history read: each
       * of its three arms an index scan in order, merged (Merge
       * Append), no sort. */
      const char *at = plan;
      int sorts = 0, indexes = 0;
      while ((at = strstr(at, "Sort")) != NULL) {
        if (strncmp(at, "Sort Key", 8) != 0)
          sorts++;
        at += 4;
      }
      for (at = plan; (at = strstr(at, "Index")) != NULL; at += 5)
        if (strncmp(at, "Index Cond", 10) != 0)
          indexes++;
      if (sorts != 0 || indexes != (i < F_COUNT ? 1 : 3))
        fail_msg("query %d:\n%s\n%s", i, q, plan);
    }
    PQclear(r);
  }
  PQfinish(c);
}

int main(void) {
  const char *so = getenv("PEERSTORE_POSTGRES_PLUGIN");
  peerstore_plugin_entry_fn entry;
  conformance_target t = {NULL, conf_prepare, NULL, NULL};
  uv_lib_t lib;
  int failed, r;
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup(
          test_two_instances_share_one_sequence_and_see_each_other, setup),
      cmocka_unit_test_setup(test_query_plans, setup),
      cmocka_unit_test_setup(test_a_version_1_database_is_migrated_forward,
                             setup),
      cmocka_unit_test_setup(test_the_trim_keeps_the_history_counters_right,
                             setup),
      cmocka_unit_test_setup(
          test_a_version_1_writer_caught_by_the_migration_goes_on, setup),
      cmocka_unit_test_setup(
          test_a_replace_through_one_host_drops_the_values_of_the_other,
          setup),
      cmocka_unit_test_setup(
          test_two_hosts_purging_at_once_expire_each_record_once, setup),
  };

  if (so == NULL)
    so = "plugins/.libs/peerstore_plugin_postgres.so";
  if (uv_dlopen(so, &lib) != 0 ||
      uv_dlsym(&lib, PEERSTORE_PLUGIN_ENTRY, (void **)&entry) != 0) {
    fprintf(stderr, "cannot load %s: %s\n", so, uv_dlerror(&lib));
    return 1;
  }
  desc = entry();
  if ((r = harness_pg_start(&server)) != 0) {
    fprintf(stderr, "test_postgres: %s\n",
            r == 77 ? "skipped: no PostgreSQL server to start (above)"
                    : "cannot start a PostgreSQL server");
    return r == 77 ? 77 : 1;
  }
  t.desc = desc;
  failed = conformance_run("postgres plugin: conformance", &t);
  failed += cmocka_run_group_tests_name("postgres plugin", tests, NULL, NULL);
  harness_pg_ctl(&server, "destroy", NULL);
  uv_dlclose(&lib);
  return failed ? 1 : 0;
}
