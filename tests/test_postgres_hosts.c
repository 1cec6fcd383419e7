/* test_postgres_hosts.c - two peerstored (two hosts' services) on one
 * PostgreSQL database, through the library, against a real server the
 * test starts: what one host stores the other iterates and watches;
 * concurrent writers through both make one gapless sequence; connections
 * killed (pg_terminate_backend) or the database restarted under a storm
 * lose nothing acknowledged, and watchers catch up. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <libpq-fe.h>

#include "harness.h"
#include "peerstore.h"

#define TIMEOUT 60000
#define MAXN 4000

static harness_pg server;
static int db_seq;
static char conninfo[600];

typedef struct host {
  harness_svc svc;
  uv_loop_t *loop;
  peerstore_client *c;
} host;

/* What a watcher was told: STORE events in order. */
typedef struct watcher {
  peerstore_watch_op *op;
  int stores;
  int out_of_order;
  int ended;
  uint64_t last;
  uint64_t revs[MAXN];
  char seen[MAXN]; /* by key number */
} watcher;

typedef struct storm {
  int acked, failed, done;
  int ok[MAXN];
  int status[MAXN];
} storm;

/* Two services on a fresh database, with extra arguments (may be NULL). */
static void hosts_start_with(uv_loop_t *loop, host *a, host *b,
                             const char *const *extra) {
  char name[32];
  peerstore_connect_opts o;

  snprintf(name, sizeof(name), "h%d", ++db_seq);
  assert_int_equal(harness_pg_ctl(&server, "createdb", name), 0);
  harness_pg_conninfo(&server, name, conninfo, sizeof(conninfo));
  assert_int_equal(harness_start_postgres(&a->svc, conninfo, extra), 0);
  assert_int_equal(harness_start_postgres(&b->svc, conninfo, extra), 0);
  peerstore_connect_opts_init(&o);
  o.timeout_ms = 0;
  a->loop = b->loop = loop;
  a->c = peerstore_connect_ex(loop, a->svc.socket_path, &o);
  b->c = peerstore_connect_ex(loop, b->svc.socket_path, &o);
  assert_non_null(a->c);
  assert_non_null(b->c);
}

static void hosts_start(uv_loop_t *loop, host *a, host *b) {
  hosts_start_with(loop, a, b, NULL);
}

static void hosts_stop(host *a, host *b) {
  peerstore_disconnect(a->c, 0);
  peerstore_disconnect(b->c, 0);
  assert_int_equal(harness_drain(a->loop, TIMEOUT), 0);
  assert_int_equal(harness_stop(&a->svc), 0);
  assert_int_equal(harness_stop(&b->svc), 0);
}

static int key_no(const char *key) { return atoi(key + 1); }

static void watch_cb(void *arg, const peerstore_event *ev, int status) {
  watcher *w = arg;

  (void)status;
  if (ev == NULL) {
    w->ended = 1;
    return;
  }
  if (ev->kind != PEERSTORE_EVENT_STORE)
    return;
  if (ev->revision <= w->last)
    w->out_of_order++;
  w->last = ev->revision;
  if (w->stores < MAXN)
    w->revs[w->stores] = ev->revision;
  w->stores++;
  if (key_no(ev->rec->key) < MAXN)
    w->seen[key_no(ev->rec->key)] = 1;
}

static void watch_start(host *h, watcher *w) {
  peerstore_watch_opts o;

  memset(w, 0, sizeof(*w));
  memset(&o, 0, sizeof(o));
  w->op = peerstore_watch_ex(h->c, "ss", NULL, NULL, &o, watch_cb, w);
  assert_non_null(w->op);
}

typedef struct store_arg {
  storm *s;
  int i;
} store_arg;

static store_arg args[2][MAXN];

static void storm_cb(void *arg, int status) {
  store_arg *a = arg;

  a->s->status[a->i] = status;
  a->s->ok[a->i] = status == 0;
  if (status == 0)
    a->s->acked++;
  else
    a->s->failed++;
  a->s->done++;
}

/* Sends n stores of keys "<prefix><from + i>" through h, pipelined. */
static void storm_send(host *h, storm *s, int which, const char *prefix,
                       int from, int n) {
  peerstore_peer_id peer;
  char key[16];
  int i;

  memset(&peer, 0, sizeof(peer));
  for (i = 0; i < n; i++) {
    store_arg *a = &args[which][from + i];
    a->s = s;
    a->i = from + i;
    snprintf(key, sizeof(key), "%s%d", prefix, from + i);
    assert_non_null(peerstore_store(h->c, "ss", &peer, key, "v", 1,
                                    PEERSTORE_EXPIRY_NEVER,
                                    PEERSTORE_MULTIPLE, storm_cb, a));
  }
}

typedef struct listing {
  int n, done, status;
  char seen[MAXN];
} listing;

static void list_cb(void *arg, const peerstore_record *rec, int status) {
  listing *l = arg;

  if (rec == NULL) {
    l->status = status;
    l->done = 1;
    return;
  }
  l->n++;
  if (key_no(rec->key) < MAXN)
    l->seen[key_no(rec->key)] = 1;
}

static void list_all(host *h, listing *l) {
  memset(l, 0, sizeof(*l));
  assert_non_null(peerstore_iterate(h->c, "ss", NULL, NULL, list_cb, l));
  assert_int_equal(harness_run_until(h->loop, &l->done, TIMEOUT), 0);
  assert_int_equal(l->status, 0);
}

/* Kills every session on the database but the caller's: both services'
 * connections, as an administrator or a failover would. */
static void terminate_backends(void) {
  PGconn *c = PQconnectdb(conninfo);
  PGresult *r;

  assert_int_equal(PQstatus(c), CONNECTION_OK);
  r = PQexec(c, "SELECT count(pg_terminate_backend(pid)) FROM "
                "pg_stat_activity WHERE datname = current_database() AND "
                "pid <> pg_backend_pid()");
  assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
  assert_true(atoi(PQgetvalue(r, 0, 0)) >= 2);
  PQclear(r);
  PQfinish(c);
}

static int64_t stat_of(host *h, const char *name) {
  return harness_stat(h->loop, h->c, name, TIMEOUT);
}

/* ------------------------------------------------------------------ */
/* Tests                                                               */

static void test_a_store_through_one_host_is_iterated_and_watched_on_the_other(
    void **state) {
  static host a, b;
  static watcher w;
  static storm s;
  static listing l;
  uv_loop_t loop;

  (void)state;
  uv_loop_init(&loop);
  hosts_start(&loop, &a, &b);
  watch_start(&b, &w);
  memset(&s, 0, sizeof(s));
  storm_send(&a, &s, 0, "k", 0, 3);
  assert_int_equal(harness_run_until_ge(&loop, &s.done, 3, TIMEOUT), 0);
  assert_int_equal(s.acked, 3);
  assert_int_equal(harness_run_until_ge(&loop, &w.stores, 3, TIMEOUT), 0);
  assert_int_equal(w.out_of_order, 0);
  list_all(&b, &l);
  assert_int_equal(l.n, 3);
  peerstore_watch_cancel(w.op);
  hosts_stop(&a, &b);
  assert_int_equal(uv_loop_close(&loop), 0);
}

/* Writers on both hosts at once: every store has its own revision in one
 * sequence with no gap, and both hosts' watchers see the same sequence. */
static void test_concurrent_writers_on_two_hosts_make_one_gapless_sequence(
    void **state) {
  static host a, b;
  static watcher wa, wb;
  static storm s;
  uv_loop_t loop;
  int i;

  (void)state;
  uv_loop_init(&loop);
  hosts_start(&loop, &a, &b);
  watch_start(&a, &wa);
  watch_start(&b, &wb);
  memset(&s, 0, sizeof(s));
  storm_send(&a, &s, 0, "k", 0, 500);
  storm_send(&b, &s, 1, "k", 500, 500);
  assert_int_equal(harness_run_until_ge(&loop, &s.done, 1000, TIMEOUT), 0);
  assert_int_equal(s.acked, 1000);
  assert_int_equal(harness_run_until_ge(&loop, &wa.stores, 1000, TIMEOUT), 0);
  assert_int_equal(harness_run_until_ge(&loop, &wb.stores, 1000, TIMEOUT), 0);
  assert_int_equal(wa.out_of_order + wb.out_of_order, 0);
  for (i = 1; i < 1000; i++) {
    assert_int_equal(wa.revs[i], wa.revs[i - 1] + 1);
    assert_int_equal(wb.revs[i], wa.revs[i]);
  }
  for (i = 0; i < 1000; i++)
    assert_true(wa.seen[i] && wb.seen[i]);
  peerstore_watch_cancel(wa.op);
  peerstore_watch_cancel(wb.op);
  hosts_stop(&a, &b);
  assert_int_equal(uv_loop_close(&loop), 0);
}

/* Checks a storm's outcome: every acknowledged store is in the database
 * (iterated through the other host) and reached the other host's
 * watcher, in order; every failure is one that says so. */
static void check_storm(host *b, storm *s, watcher *w, int n) {
  static listing l;
  int i;

  list_all(b, &l);
  for (i = 0; i < n; i++) {
    if (s->ok[i]) {
      assert_true(l.seen[i]);
    } else if (s->status[i] != PEERSTORE_ENOTCONN &&
               s->status[i] != PEERSTORE_EINTERRUPTED) {
      fail_msg("store %d: %s", i, peerstore_err_name(s->status[i]));
    }
  }
  /* The watcher catches up with everything stored, acknowledged or
   * not (a store whose commit answer was lost may be there). */
  assert_int_equal(harness_run_until_ge(b->loop, &w->stores, l.n, TIMEOUT),
                   0);
  for (i = 0; i < n; i++)
    if (l.seen[i])
      assert_true(w->seen[i]);
  assert_int_equal(w->out_of_order, 0);
  assert_int_equal(w->ended, 0);
  print_message("%d acknowledged, %d failed, %d in the database, %d seen "
                "by the other host's watcher\n",
                s->acked, s->failed, l.n, w->stores);
}

static void test_killed_database_connections_mid_storm_lose_nothing_acked(
    void **state) {
  static host a, b;
  static watcher w;
  static storm s;
  uv_loop_t loop;

  (void)state;
  uv_loop_init(&loop);
  hosts_start(&loop, &a, &b);
  watch_start(&b, &w);
  memset(&s, 0, sizeof(s));
  storm_send(&a, &s, 0, "k", 0, 3000);
  assert_int_equal(harness_run_until_ge(&loop, &s.done, 300, TIMEOUT), 0);
  terminate_backends();
  assert_int_equal(harness_run_until_ge(&loop, &s.done, 3000, TIMEOUT), 0);
  assert_true(s.acked >= 300);
  check_storm(&b, &s, &w, 3000);
  /* The service saw its session die (when it next used it, or at once
   * while idle) and opened another. */
  assert_int_equal(harness_wait_stat(&loop, a.c, "postgres.connects", 2,
                                     TIMEOUT),
                   0);
  assert_int_equal(stat_of(&a, "postgres.connections_lost"), 1);
  assert_int_equal(stat_of(&a, "postgres.connected"), 1);
  /* Both services are still there and write again. */
  memset(&s, 0, sizeof(s));
  storm_send(&a, &s, 0, "k", 0, 10);
  assert_int_equal(harness_run_until_ge(&loop, &s.done, 10, TIMEOUT), 0);
  assert_int_equal(s.acked, 10);
  peerstore_watch_cancel(w.op);
  hosts_stop(&a, &b);
  assert_int_equal(uv_loop_close(&loop), 0);
}

static void test_the_database_restarted_under_load_loses_nothing_acked(
    void **state) {
  static host a, b;
  static watcher w;
  static storm s;
  uv_loop_t loop;

  (void)state;
  uv_loop_init(&loop);
  hosts_start(&loop, &a, &b);
  watch_start(&b, &w);
  memset(&s, 0, sizeof(s));
  storm_send(&a, &s, 0, "k", 0, 3000);
  assert_int_equal(harness_run_until_ge(&loop, &s.done, 300, TIMEOUT), 0);
  assert_int_equal(harness_pg_ctl(&server, "stop", NULL), 0);
  assert_int_equal(harness_pg_ctl(&server, "restart", NULL), 0);
  assert_int_equal(harness_run_until_ge(&loop, &s.done, 3000, TIMEOUT), 0);
  check_storm(&b, &s, &w, 3000);
  peerstore_watch_cancel(w.op);
  hosts_stop(&a, &b);
  assert_int_equal(uv_loop_close(&loop), 0);
}


/* The database stopped: a service keeps answering its clients, says in
 * stats that it has no session, and fails a store with ENOTCONN once
 * unavailable_timeout_ms has passed - nothing half-applied.  Started
 * again: it reconnects by itself, stores go through, and a watcher on the
 * other host that waited across the outage gets them. */
static void test_a_database_outage_shows_in_stats_and_fails_requests_clearly(
    void **state) {
  static const char *const args[] = {
      "-o", "postgres.unavailable_timeout_ms=500", NULL};
  static host a, b;
  static watcher w;
  static storm s;
  static listing l;
  uv_loop_t loop;

  (void)state;
  uv_loop_init(&loop);
  hosts_start_with(&loop, &a, &b, args);
  watch_start(&b, &w);
  memset(&s, 0, sizeof(s));
  storm_send(&a, &s, 0, "k", 0, 1);
  assert_int_equal(harness_run_until_ge(&loop, &s.done, 1, TIMEOUT), 0);
  assert_int_equal(s.acked, 1);
  assert_int_equal(stat_of(&a, "postgres.connected"), 1);
  assert_int_equal(stat_of(&a, "postgres.connects"), 1);
  assert_int_equal(stat_of(&a, "postgres.connections_lost"), 0);
  assert_int_equal(stat_of(&a, "postgres.transactions"), 1);
  assert_int_equal(harness_pg_ctl(&server, "stop", NULL), 0);
  storm_send(&a, &s, 0, "k", 1, 1);
  assert_int_equal(harness_run_until_ge(&loop, &s.done, 2, TIMEOUT), 0);
  assert_int_equal(s.status[1], PEERSTORE_ENOTCONN);
  assert_int_equal(stat_of(&a, "postgres.connected"), 0);
  assert_int_equal(stat_of(&a, "postgres.connections_lost"), 1);
  assert_true(stat_of(&a, "postgres.unavailable") >= 1);
  assert_int_equal(harness_pg_ctl(&server, "restart", NULL), 0);
  storm_send(&a, &s, 0, "k", 2, 1);
  assert_int_equal(harness_run_until_ge(&loop, &s.done, 3, TIMEOUT), 0);
  assert_int_equal(s.status[2], 0);
  assert_int_equal(stat_of(&a, "postgres.connected"), 1);
  assert_int_equal(stat_of(&a, "postgres.connects"), 2);
  assert_int_equal(harness_run_until_ge(&loop, &w.stores, 2, TIMEOUT), 0);
  assert_true(w.seen[0] && !w.seen[1] && w.seen[2]);
  assert_int_equal(w.out_of_order + w.ended, 0);
  assert_true(stat_of(&b, "postgres.changes_of_others") >= 2);
  list_all(&b, &l);
  assert_int_equal(l.n, 2);
  assert_true(l.seen[0] && !l.seen[1] && l.seen[2]);
  peerstore_watch_cancel(w.op);
  hosts_stop(&a, &b);
  assert_int_equal(uv_loop_close(&loop), 0);
}

/* A watch that tells what happened around a RESET. */
typedef struct resetting {
  peerstore_watch_op *op;
  int resets, syncs, ended, status;
  int stores, stores_after_reset;
  char value[16]; /* of the last STORE */
} resetting;

static void resetting_cb(void *arg, const peerstore_event *ev, int status) {
  resetting *w = arg;

  if (ev == NULL) {
    w->ended = 1;
    w->status = status;
    return;
  }
  if (ev->kind == PEERSTORE_EVENT_RESET)
    w->resets++;
  if (ev->kind == PEERSTORE_EVENT_SYNC)
    w->syncs++;
  if (ev->kind == PEERSTORE_EVENT_STORE) {
    w->stores++;
    w->stores_after_reset += w->resets > 0;
    snprintf(w->value, sizeof(w->value), "%.*s", (int)ev->rec->value_size,
             (const char *)ev->rec->value);
  }
}

static void resetting_start(host *h, resetting *w, unsigned flags) {
  peerstore_watch_opts o;

  memset(w, 0, sizeof(*w));
  memset(&o, 0, sizeof(o));
  o.flags = flags;
  w->op = peerstore_watch_ex(h->c, "ss", NULL, NULL, &o, resetting_cb, w);
  assert_non_null(w->op);
}

static void put_value(host *h, storm *s, const char *value) {
  peerstore_peer_id peer;

  memset(&peer, 0, sizeof(peer));
  assert_non_null(peerstore_store(h->c, "ss", &peer, "k", value,
                                  strlen(value), PEERSTORE_EXPIRY_NEVER,
                                  PEERSTORE_REPLACE, storm_cb,
                                  &args[0][s->done % MAXN]));
}

/* A service that was away (stopped) while the others' history was
 * trimmed past what it had read cannot replay what it missed: its
 * watchers are told, never left with a silent gap.  A SNAPSHOT watch
 * gets RESET and a new snapshot of the current state; a plain one ends
 * with ECOMPACTED; stats count it. */
static void test_a_service_away_past_the_history_resets_its_watchers(
    void **state) {
  static const char *const args_short[] = {
      "-o", "history_events=10", "-o", "purge_interval=1", NULL};
  static host a, b;
  static resetting snap, plain;
  static storm s;
  char value[16];
  int64_t paused_at;
  int i;

  (void)state;
  uv_loop_t loop;
  uv_loop_init(&loop);
  hosts_start_with(&loop, &a, &b, args_short);
  memset(&s, 0, sizeof(s));
  for (i = 0; i < MAXN; i++)
    args[0][i].s = &s, args[0][i].i = i;
  resetting_start(&b, &snap, PEERSTORE_WATCH_SNAPSHOT);
  resetting_start(&b, &plain, 0);
  put_value(&a, &s, "v0");
  assert_int_equal(harness_run_until_ge(&loop, &s.done, 1, TIMEOUT), 0);
  assert_int_equal(s.acked, 1);
  assert_int_equal(harness_run_until_ge(&loop, &snap.stores, 1, TIMEOUT), 0);
  assert_int_equal(harness_run_until_ge(&loop, &plain.stores, 1, TIMEOUT), 0);
  paused_at = stat_of(&b, "revision");
  assert_string_equal(snap.value, "v0");
  assert_string_equal(plain.value, "v0");
  /* B is away; A goes on, and its purge trims the history past B. */
  kill(b.svc.pid, SIGSTOP);
  for (i = 1; i <= 30; i++) {
    snprintf(value, sizeof(value), "v%d", i);
    put_value(&a, &s, value);
  }
  assert_int_equal(harness_run_until_ge(&loop, &s.done, 31, TIMEOUT), 0);
  assert_int_equal(s.acked, 31);
  assert_int_equal(harness_wait_stat(&loop, a.c, "history_first",
                                     paused_at + 1, TIMEOUT),
                   0);
  kill(b.svc.pid, SIGCONT);
  assert_int_equal(harness_run_until(&loop, &plain.ended, TIMEOUT), 0);
  assert_int_equal(plain.status, PEERSTORE_ECOMPACTED);
  assert_int_equal(harness_run_until_ge(&loop, &snap.syncs, 2, TIMEOUT), 0);
  assert_int_equal(snap.resets, 1);
  assert_int_equal(snap.ended, 0);
  assert_int_equal(snap.stores_after_reset, 1);
  assert_string_equal(snap.value, "v30");
  assert_int_equal(stat_of(&b, "postgres.history_lost"), 1);
  assert_true(stat_of(&b, "watch_resets") >= 1);
  /* And it goes on: the next change reaches the restarted watch. */
  put_value(&a, &s, "v31");
  assert_int_equal(harness_run_until_ge(&loop, &snap.stores_after_reset, 2,
                                        TIMEOUT),
                   0);
  assert_string_equal(snap.value, "v31");
  peerstore_watch_cancel(snap.op);
  hosts_stop(&a, &b);
  assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void) {
  int failed, r;
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(
          test_a_store_through_one_host_is_iterated_and_watched_on_the_other),
      cmocka_unit_test(
          test_concurrent_writers_on_two_hosts_make_one_gapless_sequence),
      cmocka_unit_test(
          test_killed_database_connections_mid_storm_lose_nothing_acked),
      cmocka_unit_test(
          test_the_database_restarted_under_load_loses_nothing_acked),
      cmocka_unit_test(
          test_a_database_outage_shows_in_stats_and_fails_requests_clearly),
      cmocka_unit_test(
          test_a_service_away_past_the_history_resets_its_watchers),
  };

  if ((r = harness_pg_start(&server)) != 0) {
    fprintf(stderr, "test_postgres_hosts: %s\n",
            r == 77 ? "skipped: no PostgreSQL server to start (above)"
                    : "cannot start a PostgreSQL server");
    return r == 77 ? 77 : 1;
  }
  failed = cmocka_run_group_tests_name("postgres: two hosts", tests, NULL,
                                       NULL);
  harness_pg_ctl(&server, "destroy", NULL);
  return failed ? 1 : 0;
}
