/* test_watch.c - the change stream (DESIGN.md section 7) through a real
 * peerstored: snapshots under churn, resume from a revision, removals,
 * compaction, a service restart, a watcher that stops reading, and a
 * version 2 client.  Each test runs on the memory plugin and on sqlite;
 * with PEERSTORE_TEST_WATCH_PLUGIN=postgres, on postgres instead, each on
 * a fresh database of a server the test starts.
 *
 * A watcher's events are applied to a local view - the records it holds
 * - the way a cache would; the rule checked is that the view equals a
 * fresh iteration once the watcher has caught up. */
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
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"
#include "peerstore.h"
#include "wire.h"

#define TIMEOUT 60000
#define MAXVIEW 4096
#define MAXLOG 32768

enum { MEMORY, SQLITE, POSTGRES };
static int backend;
/* The history outlives the service: a restart resumes exactly. */
#define persistent (backend != MEMORY)
static harness_pg server;
static int db_seq;

typedef struct fx {
  harness_svc svc;
  uv_loop_t loop;
  peerstore_client *c;
} fx;

static int start_with(void **state, const char *const *args) {
  fx *f = calloc(1, sizeof(*f));
  peerstore_connect_opts o;

  assert_non_null(f);
  assert_int_equal(uv_loop_init(&f->loop), 0);
  if (backend == SQLITE) {
    assert_int_equal(harness_start_sqlite(&f->svc, args), 0);
  } else if (backend == POSTGRES) {
    char name[32], conninfo[600];

    snprintf(name, sizeof(name), "w%d", ++db_seq);
    assert_int_equal(harness_pg_ctl(&server, "createdb", name), 0);
    harness_pg_conninfo(&server, name, conninfo, sizeof(conninfo));
    assert_int_equal(harness_start_postgres(&f->svc, conninfo, args), 0);
  } else {
    assert_int_equal(harness_start(&f->svc, args), 0);
  }
  peerstore_connect_opts_init(&o);
  o.timeout_ms = 0; /* valgrind on a loaded machine is slow */
  f->c = peerstore_connect_ex(&f->loop, f->svc.socket_path, &o);
  assert_non_null(f->c);
  *state = f;
  return 0;
}

static int setup(void **state) { return start_with(state, NULL); }

static int teardown(void **state) {
  fx *f = *state;

  peerstore_disconnect(f->c, 0);
  assert_int_equal(harness_drain(&f->loop, TIMEOUT), 0);
  assert_int_equal(uv_loop_close(&f->loop), 0);
  assert_int_equal(harness_stop(&f->svc), 0);
  free(f);
  return 0;
}

static peerstore_peer_id peer_n(uint8_t n) {
  peerstore_peer_id p;
  memset(p.bytes, n, sizeof(p.bytes));
  return p;
}

/* ------------------------------------------------------------------ */
/* A watcher's view                                                    */

typedef struct entry {
  uint8_t peer;
  char key[32];
  char value[32];
  uint64_t revision; /* of the store it holds */
} entry;

typedef struct logged {
  int kind;
  uint64_t revision;
  char key[32];
  char value[32];
} logged;

typedef struct view {
  peerstore_watch_op *op;
  int n;
  entry e[MAXVIEW];
  int nlog;
  logged log[MAXLOG];
  int counts[6]; /* by event kind */
  uint64_t last;
  int bad_order;
  int ended;
  int status;
  int seen_key; /* a STORE of want_key has come */
  const char *want_key;
} view;

static int view_find(const view *v, const peerstore_record *r) {
  int i;

  for (i = 0; i < v->n; i++)
    if (v->e[i].peer == r->peer.bytes[0] && strcmp(v->e[i].key, r->key) == 0 &&
        strlen(v->e[i].value) == r->value_size &&
        memcmp(v->e[i].value, r->value, r->value_size) == 0)
      return i;
  return -1;
}

/* Applied in order, as a cache would: a STORE adds the value (to an
 * identical one it is a refresh: the entry takes its revision), a REMOVE
 * or EXPIRE takes away the entry holding the store it names (a REPLACE
 * with the same value stores it anew, then removes the old store), RESET
 * forgets everything. */
static void on_event(void *arg, const peerstore_event *ev, int status) {
  view *v = arg;
  int i;

  if (ev == NULL) {
    v->ended = 1;
    v->status = status;
    return;
  }
  v->counts[ev->kind]++;
  if (v->nlog < MAXLOG) {
    logged *l = &v->log[v->nlog++];
    l->kind = (int)ev->kind;
    l->revision = ev->revision;
    l->key[0] = l->value[0] = '\0';
    if (ev->rec != NULL) {
      snprintf(l->key, sizeof(l->key), "%s", ev->rec->key);
      snprintf(l->value, sizeof(l->value), "%.*s", (int)ev->rec->value_size,
               (const char *)ev->rec->value);
    }
  }
  if (ev->kind == PEERSTORE_EVENT_RESET) {
    v->n = 0;
    v->last = 0;
    return;
  }
  /* Strictly increasing; SYNC may repeat the newest record of its
   * snapshot. */
  if (ev->revision < v->last ||
      (ev->revision == v->last && ev->kind != PEERSTORE_EVENT_SYNC))
    v->bad_order++;
  v->last = ev->revision;
  if (ev->rec == NULL)
    return;
  i = view_find(v, ev->rec);
  if (ev->kind == PEERSTORE_EVENT_STORE) {
    if (v->want_key != NULL && strcmp(ev->rec->key, v->want_key) == 0)
      v->seen_key = 1;
    if (i >= 0) {
      v->e[i].revision = ev->rec->revision;
    } else if (v->n < MAXVIEW) {
      entry *e = &v->e[v->n++];
      e->revision = ev->rec->revision;
      e->peer = ev->rec->peer.bytes[0];
      snprintf(e->key, sizeof(e->key), "%s", ev->rec->key);
      snprintf(e->value, sizeof(e->value), "%.*s", (int)ev->rec->value_size,
               (const char *)ev->rec->value);
    }
  } else if (i >= 0 && v->e[i].revision == ev->rec->revision) {
    v->e[i] = v->e[--v->n];
  }
}

static peerstore_watch_op *watch(fx *f, const char *ss, unsigned flags,
                                 uint64_t from, view *v) {
  peerstore_watch_opts o;

  memset(&o, 0, sizeof(o));
  o.flags = flags;
  o.from_revision = from;
  v->op = peerstore_watch_ex(f->c, ss, NULL, NULL, &o, on_event, v);
  assert_non_null(v->op);
  return v->op;
}

/* What an iteration of ss returns, as a view. */
typedef struct listing {
  view v;
  int done;
  int status;
  uint64_t revisions[MAXVIEW];
} listing;

static void on_list(void *arg, const peerstore_record *rec, int status) {
  listing *l = arg;

  if (rec == NULL) {
    l->done = 1;
    l->status = status;
    return;
  }
  if (l->v.n < MAXVIEW) {
    entry *e = &l->v.e[l->v.n];
    l->revisions[l->v.n] = rec->revision;
    e->peer = rec->peer.bytes[0];
    snprintf(e->key, sizeof(e->key), "%s", rec->key);
    snprintf(e->value, sizeof(e->value), "%.*s", (int)rec->value_size,
             (const char *)rec->value);
    l->v.n++;
  }
}

static void list(fx *f, const char *ss, listing *l) {
  memset(l, 0, sizeof(*l));
  assert_non_null(peerstore_iterate(f->c, ss, NULL, NULL, on_list, l));
  assert_int_equal(harness_run_until(&f->loop, &l->done, TIMEOUT), 0);
  assert_int_equal(l->status, 0);
}

static int entry_cmp(const void *a, const void *b) {
  const entry *x = a, *y = b;
  int r = x->peer - y->peer;

  if (r == 0)
    r = strcmp(x->key, y->key);
  return r != 0 ? r : strcmp(x->value, y->value);
}

/* The watcher's view holds exactly what the store holds. */
static void assert_view_is(view *v, listing *l) {
  int i;

  assert_int_equal(v->bad_order, 0);
  qsort(v->e, (size_t)v->n, sizeof(entry), entry_cmp);
  qsort(l->v.e, (size_t)l->v.n, sizeof(entry), entry_cmp);
  for (i = 0; i < v->n || i < l->v.n; i++)
    if (i >= v->n || i >= l->v.n || entry_cmp(&v->e[i], &l->v.e[i]) != 0) {
      print_message("views differ at %d of %d/%d: %s=%s vs %s=%s\n", i,
                    v->n, l->v.n, i < v->n ? v->e[i].key : "-",
                    i < v->n ? v->e[i].value : "-",
                    i < l->v.n ? l->v.e[i].key : "-",
                    i < l->v.n ? l->v.e[i].value : "-");
      break;
    }
  assert_int_equal(v->n, l->v.n);
  for (i = 0; i < v->n; i++)
    assert_int_equal(entry_cmp(&v->e[i], &l->v.e[i]), 0);
}

typedef struct acks {
  int n;
  int failed;
} acks;

static void on_ack(void *arg, int status) {
  acks *a = arg;

  a->n++;
  if (status != 0)
    a->failed++;
}

static void put(fx *f, peerstore_client *c, const char *ss, uint8_t peer,
                const char *key, const char *value, uint64_t expiry,
                enum peerstore_store_option opt, acks *a) {
  peerstore_peer_id p = peer_n(peer);

  assert_non_null(peerstore_store(c != NULL ? c : f->c, ss, &p, key, value,
                                  strlen(value), expiry, opt, on_ack, a));
}

/* Stores prefix0 .. prefix(n-1) under ss, peer 1, each its own key as its
 * value, and waits until all are acknowledged. */
static void put_keys(fx *f, const char *prefix, int n) {
  acks a = {0};
  char key[16];
  int i;

  for (i = 0; i < n; i++) {
    snprintf(key, sizeof(key), "%s%d", prefix, i);
    put(f, NULL, "ss", 1, key, key, PEERSTORE_EXPIRY_NEVER,
        PEERSTORE_MULTIPLE, &a);
  }
  assert_int_equal(harness_run_until_ge(&f->loop, &a.n, n, TIMEOUT), 0);
  assert_int_equal(a.failed, 0);
}

/* Stores a sentinel and waits until the watchers (v2 may be NULL) have
 * seen it: they have caught up with everything stored before. */
static void sync_with(fx *f, view *v, view *v2, const char *ss) {
  acks a = {0};

  v->want_key = "sentinel";
  v->seen_key = 0;
  if (v2 != NULL) {
    v2->want_key = "sentinel";
    v2->seen_key = 0;
  }
  put(f, NULL, ss, 200, "sentinel", "s", PEERSTORE_EXPIRY_NEVER,
      PEERSTORE_REPLACE, &a);
  assert_int_equal(harness_run_until(&f->loop, &v->seen_key, TIMEOUT), 0);
  if (v2 != NULL)
    assert_int_equal(harness_run_until(&f->loop, &v2->seen_key, TIMEOUT), 0);
  assert_int_equal(harness_run_until_ge(&f->loop, &a.n, 1, TIMEOUT), 0);
  assert_int_equal(a.failed, 0);
}

/* ------------------------------------------------------------------ */
/* Tests                                                               */

/* A SNAPSHOT | REMOVALS watch begun while another client churns the same
 * records: the snapshot, SYNC and the events after it, applied in order,
 * give exactly what a fresh iteration returns - no gap, no duplicate. */
static void test_snapshot_under_churn_equals_a_fresh_iterate(void **state) {
  fx *f = *state;
  peerstore_client *churner;
  static view v;
  static listing l; /* megabytes: not for the stack */
  acks a = {0};
  char key[16], value[16];
  int i;

  memset(&v, 0, sizeof(v));
  churner = peerstore_connect(&f->loop, f->svc.socket_path);
  for (i = 0; i < 1500; i++) {
    snprintf(key, sizeof(key), "k%d", i % 300);
    snprintf(value, sizeof(value), "v%d", i);
    put(f, churner, "ss", (uint8_t)(i % 5), key, value,
        PEERSTORE_EXPIRY_NEVER, PEERSTORE_MULTIPLE, &a);
  }
  assert_int_equal(harness_run_until_ge(&f->loop, &a.n, 1500, TIMEOUT), 0);
  /* The churn is queued, then the watch: the service interleaves them. */
  for (i = 0; i < 3000; i++) {
    snprintf(key, sizeof(key), "k%d", i % 300);
    snprintf(value, sizeof(value), "w%d", i % 7);
    if (i % 13 == 0) {
      peerstore_peer_id p = peer_n((uint8_t)(i % 5));
      assert_non_null(
          peerstore_remove(churner, "ss", &p, key, NULL, NULL));
    }
    put(f, churner, "ss", (uint8_t)(i % 5), key, value,
        PEERSTORE_EXPIRY_NEVER,
        i % 3 == 0 ? PEERSTORE_REPLACE : PEERSTORE_MULTIPLE, &a);
    if (i == 100)
      watch(f, "ss", PEERSTORE_WATCH_SNAPSHOT | PEERSTORE_WATCH_REMOVALS, 0,
            &v);
  }
  assert_int_equal(harness_run_until_ge(&f->loop, &a.n, 4500, TIMEOUT), 0);
  assert_int_equal(a.failed, 0);
  sync_with(f, &v, NULL, "ss");
  assert_int_equal(v.ended, 0);
  assert_int_equal(v.counts[PEERSTORE_EVENT_SYNC], 1);
  assert_true(v.counts[PEERSTORE_EVENT_REMOVE] > 0);
  list(f, "ss", &l);
  print_message("snapshot view %d records, %d events (%d stores, %d "
                "removes)\n", v.n, v.nlog, v.counts[1], v.counts[2]);
  assert_view_is(&v, &l);
  assert_true(peerstore_watch_revision(v.op) >= v.log[v.nlog - 1].revision);
  peerstore_disconnect(churner, 0);
}

/* from_revision R: exactly the events after R, in order, then live. */
static void test_resume_gets_exactly_the_events_after_a_revision(
    void **state) {
  fx *f = *state;
  static view v;
  static listing l;
  int i;

  memset(&v, 0, sizeof(v));
  put_keys(f, "k", 10);
  list(f, "ss", &l);
  assert_int_equal(l.v.n, 10);
  watch(f, "ss", 0, l.revisions[4], &v);
  sync_with(f, &v, NULL, "ss");
  assert_int_equal(v.nlog, 6);
  for (i = 0; i < 5; i++) {
    assert_int_equal(v.log[i].kind, PEERSTORE_EVENT_STORE);
    assert_int_equal(v.log[i].revision, l.revisions[5 + i]);
    assert_string_equal(v.log[i].key, l.v.e[5 + i].key);
  }
  assert_string_equal(v.log[5].key, "sentinel");
  assert_int_equal(v.bad_order, 0);
  assert_int_equal(peerstore_watch_revision(v.op), v.log[5].revision);
}

/* REPLACE drops, removes and expiry are events for a watch with REMOVALS,
 * carrying the record as it was, and only for it. */
static void test_removals_are_events_only_with_the_flag(void **state) {
  fx *f = *state;
  static view all, stores;
  acks a = {0};
  uint64_t now_us = (uint64_t)time(NULL) * 1000000u;

  memset(&all, 0, sizeof(all));
  memset(&stores, 0, sizeof(stores));
  watch(f, "ss", PEERSTORE_WATCH_REMOVALS, 0, &all);
  watch(f, "ss", 0, 0, &stores);
  put(f, NULL, "ss", 1, "k", "a", PEERSTORE_EXPIRY_NEVER, PEERSTORE_MULTIPLE,
      &a);
  put(f, NULL, "ss", 1, "k", "b", PEERSTORE_EXPIRY_NEVER, PEERSTORE_MULTIPLE,
      &a);
  put(f, NULL, "ss", 1, "j", "c", PEERSTORE_EXPIRY_NEVER, PEERSTORE_MULTIPLE,
      &a);
  /* A new store of "a", then the old a and b dropped. */
  put(f, NULL, "ss", 1, "k", "a", PEERSTORE_EXPIRY_NEVER, PEERSTORE_REPLACE,
      &a);
  /* The new a and c. */
  assert_non_null(peerstore_remove(f->c, "ss", NULL, NULL, NULL, NULL));
  /* Expired at once; the purge (once a second here) takes it. */
  put(f, NULL, "ss", 1, "e", "e", now_us + 1000, PEERSTORE_MULTIPLE, &a);
  assert_int_equal(harness_run_until_ge(&f->loop, &a.n, 5, TIMEOUT), 0);
  assert_int_equal(harness_wait_stat(&f->loop, f->c, "purged", 1, TIMEOUT),
                   0);
  sync_with(f, &all, &stores, "ss");
  assert_int_equal(all.counts[PEERSTORE_EVENT_STORE], 6);
  assert_int_equal(all.counts[PEERSTORE_EVENT_REMOVE], 4);
  assert_int_equal(all.counts[PEERSTORE_EVENT_EXPIRE], 1);
  assert_int_equal(all.bad_order, 0);
  assert_string_equal(all.log[4].value, "a"); /* the old a, as it was */
  assert_true(all.log[4].revision > all.log[3].revision);
  assert_int_equal(all.log[6].kind, PEERSTORE_EVENT_REMOVE);
  assert_int_equal(all.log[9].kind, PEERSTORE_EVENT_EXPIRE);
  assert_string_equal(all.log[9].value, "e");
  assert_int_equal(all.n, 1); /* the sentinel */
  /* Without the flag: the same stores and nothing else. */
  assert_int_equal(stores.counts[PEERSTORE_EVENT_STORE], 6);
  assert_int_equal(stores.counts[PEERSTORE_EVENT_REMOVE] +
                       stores.counts[PEERSTORE_EVENT_EXPIRE] +
                       stores.counts[PEERSTORE_EVENT_SYNC],
                   0);
}

static int setup_fast_purge(void **state) {
  static const char *const args[] = {"-o", "purge_interval=1", NULL};
  return start_with(state, args);
}

static int setup_short_history(void **state) {
  static const char *const args[] = {"-o", "history_events=10", "-o",
                                     "purge_interval=1", NULL};
  return start_with(state, args);
}

/* A resume point older than the history: ECOMPACTED; with SNAPSHOT,
 * RESET, the snapshot and SYNC instead.  Never a silent gap. */
static void test_resume_older_than_the_history_is_compacted(void **state) {
  fx *f = *state;
  static view plain, snap;
  acks a = {0};
  int64_t before = harness_stat(&f->loop, f->c, "revision", TIMEOUT);
  char value[16];
  int i;

  memset(&plain, 0, sizeof(plain));
  memset(&snap, 0, sizeof(snap));
  for (i = 0; i < 30; i++) {
    snprintf(value, sizeof(value), "v%d", i);
    put(f, NULL, "ss", 1, "k", value, PEERSTORE_EXPIRY_NEVER,
        PEERSTORE_REPLACE, &a);
  }
  assert_int_equal(harness_run_until_ge(&f->loop, &a.n, 30, TIMEOUT), 0);
  /* sqlite and postgres trim by the purge: once a second here. */
  if (persistent)
    assert_int_equal(
        harness_wait_stat(&f->loop, f->c, "history_first",
                          harness_stat(&f->loop, f->c, "revision", TIMEOUT) -
                              10,
                          TIMEOUT),
        0);
  watch(f, "ss", 0, (uint64_t)before, &plain);
  watch(f, "ss", PEERSTORE_WATCH_SNAPSHOT, (uint64_t)before, &snap);
  assert_int_equal(harness_run_until(&f->loop, &plain.ended, TIMEOUT), 0);
  assert_int_equal(plain.status, PEERSTORE_ECOMPACTED);
  assert_int_equal(plain.nlog, 0);
  sync_with(f, &snap, NULL, "ss");
  assert_int_equal(snap.ended, 0);
  assert_int_equal(snap.log[0].kind, PEERSTORE_EVENT_RESET);
  assert_int_equal(snap.log[1].kind, PEERSTORE_EVENT_STORE);
  assert_string_equal(snap.log[1].value, "v29");
  /* The snapshot is taken once the service has found the history too
   * short, which may come after the sentinel's store (postgres reads the
   * history on its worker): then the sentinel is in it. */
  if (snap.log[2].kind == PEERSTORE_EVENT_STORE) {
    assert_string_equal(snap.log[2].key, "sentinel");
    assert_int_equal(snap.log[3].kind, PEERSTORE_EVENT_SYNC);
  } else {
    assert_int_equal(snap.log[2].kind, PEERSTORE_EVENT_SYNC);
  }
  assert_int_equal(snap.counts[PEERSTORE_EVENT_SYNC], 1);
  assert_int_equal(snap.n, 2);
}

/* The service is killed and restarted while a client's watches wait to
 * resume, and another client stores meanwhile.  sqlite keeps its history:
 * exactly the missed events, no duplicate.  memory keeps nothing: RESET
 * and a new snapshot, and a plain watch ends with ECOMPACTED - never a
 * silent gap. */
static void test_restart_resumes_exactly_or_says_so(void **state) {
  fx *f = *state;
  static view snap, plain;
  static listing l;
  peerstore_client *writer;
  acks a = {0};
  char key[16];
  int i;

  memset(&snap, 0, sizeof(snap));
  memset(&plain, 0, sizeof(plain));
  for (i = 0; i < 5; i++) {
    snprintf(key, sizeof(key), "old%d", i);
    put(f, NULL, "ss", 1, key, key, PEERSTORE_EXPIRY_NEVER,
        PEERSTORE_MULTIPLE, &a);
  }
  assert_int_equal(harness_run_until_ge(&f->loop, &a.n, 5, TIMEOUT), 0);
  watch(f, "ss", PEERSTORE_WATCH_SNAPSHOT | PEERSTORE_WATCH_REMOVALS, 0,
        &snap);
  watch(f, "ss", PEERSTORE_WATCH_REMOVALS, 0, &plain);
  sync_with(f, &snap, &plain, "ss");
  harness_kill(&f->svc, SIGKILL);
  assert_int_equal(harness_restart(&f->svc, f->svc.args), 0);
  writer = peerstore_connect(&f->loop, f->svc.socket_path);
  for (i = 0; i < 5; i++) {
    snprintf(key, sizeof(key), "new%d", i);
    put(f, writer, "ss", 2, key, key, PEERSTORE_EXPIRY_NEVER,
        PEERSTORE_MULTIPLE, &a);
  }
  assert_non_null(peerstore_remove(writer, "ss", NULL, "old0", NULL, NULL));
  assert_int_equal(harness_run_until_ge(&f->loop, &a.n, 10, TIMEOUT), 0);
  if (persistent) {
    /* Resumed: the events since, and nothing else. */
    sync_with(f, &snap, &plain, "ss");
    assert_int_equal(snap.counts[PEERSTORE_EVENT_RESET], 0);
    assert_int_equal(plain.ended, 0);
    /* sentinel; new0..4, sentinel again; old0 and the first sentinel */
    assert_int_equal(plain.counts[PEERSTORE_EVENT_STORE], 1 + 5 + 1);
    assert_int_equal(plain.counts[PEERSTORE_EVENT_REMOVE], 2);
    assert_int_equal(plain.bad_order, 0);
  } else {
    sync_with(f, &snap, NULL, "ss");
    assert_int_equal(snap.counts[PEERSTORE_EVENT_RESET], 1);
    assert_int_equal(harness_run_until(&f->loop, &plain.ended, TIMEOUT), 0);
    assert_int_equal(plain.status, PEERSTORE_ECOMPACTED);
  }
  list(f, "ss", &l);
  assert_view_is(&snap, &l);
  peerstore_disconnect(writer, 0);
}

/* A SNAPSHOT watch made to resume from a revision the history covers
 * (the cache of docs/api.md, started again) gets no snapshot - it holds
 * the state already - and keeps that state across a later reconnect:
 * the library must not take it for a snapshot cut short.  (memory: the
 * restart is a new incarnation, so RESET and a snapshot, which gives the
 * same view.) */
static void test_resumed_snapshot_watch_keeps_its_view_across_a_reconnect(
    void **state) {
  fx *f = *state;
  static view first, again;
  static listing l;
  acks a = {0};
  uint64_t saved;

  memset(&first, 0, sizeof(first));
  put_keys(f, "old", 5);
  watch(f, "ss", PEERSTORE_WATCH_SNAPSHOT | PEERSTORE_WATCH_REMOVALS, 0,
        &first);
  sync_with(f, &first, NULL, "ss");
  saved = peerstore_watch_revision(first.op);
  peerstore_watch_cancel(first.op);
  /* The program keeps its view and revision, and comes back later. */
  again = first;
  again.op = NULL;
  again.nlog = 0;
  memset(again.counts, 0, sizeof(again.counts));
  put(f, NULL, "ss", 1, "mid", "mid", PEERSTORE_EXPIRY_NEVER,
      PEERSTORE_MULTIPLE, &a);
  watch(f, "ss", PEERSTORE_WATCH_SNAPSHOT | PEERSTORE_WATCH_REMOVALS, saved,
        &again);
  sync_with(f, &again, NULL, "ss");
  assert_int_equal(again.counts[PEERSTORE_EVENT_RESET], 0);
  assert_int_equal(again.counts[PEERSTORE_EVENT_SYNC], 0);
  harness_kill(&f->svc, SIGKILL);
  assert_int_equal(harness_restart(&f->svc, f->svc.args), 0);
  put(f, NULL, "ss", 3, "after", "after", PEERSTORE_EXPIRY_NEVER,
      PEERSTORE_MULTIPLE, &a);
  sync_with(f, &again, NULL, "ss");
  list(f, "ss", &l);
  assert_view_is(&again, &l);
  assert_int_equal(again.counts[PEERSTORE_EVENT_RESET], persistent ? 0 : 1);
}

static size_t read_frame(int fd, uint16_t type, uint8_t *body, size_t size);

/* A watch that matches nothing for a while still resumes after a
 * restart: the service tells it how far it has got (PROGRESS, which the
 * library keeps to itself) before the history moves past its last event.
 * A raw connection watching the same subsystem from the same point shows
 * when that has happened. */
static void test_a_quiet_watch_resumes_after_the_history_moved_on(
    void **state) {
  fx *f = *state;
  static view q;
  peerstore__buf b = {0};
  peerstore__wrec w;
  uint8_t body[4096], kind;
  uint64_t revision = 0;
  int64_t first;
  acks a = {0};
  char value[16];
  size_t n;
  int fd, i;

  memset(&q, 0, sizeof(q));
  watch(f, "quiet", 0, 0, &q);
  sync_with(f, &q, NULL, "quiet");
  fd = harness_raw_connect(f->svc.socket_path);
  assert_int_equal(peerstore__put_hello_version(&b, 3), 0);
  assert_int_equal(
      peerstore__put_watch_ex(&b, 5, "quiet", NULL, NULL, 0, 0, 0), 0);
  assert_int_equal(send(fd, b.data, b.len, MSG_NOSIGNAL), (ssize_t)b.len);
  n = read_frame(fd, PEERSTORE_MSG_EVENT, body, sizeof(body));
  assert_int_equal(peerstore__wire_event(body, n, &kind, &revision, &w), 0);
  assert_int_equal(kind, PEERSTORE_EVENT_SYNC);
  for (i = 0; i < 40; i++) {
    snprintf(value, sizeof(value), "v%d", i);
    put(f, NULL, "busy", 1, "k", value, PEERSTORE_EXPIRY_NEVER,
        PEERSTORE_REPLACE, &a);
  }
  assert_int_equal(harness_run_until_ge(&f->loop, &a.n, 40, TIMEOUT), 0);
  /* The history has moved past the quiet watch's last event ... */
  assert_int_equal(
      harness_wait_stat(&f->loop, f->c, "history_first",
                        (int64_t)q.last + 1, TIMEOUT),
      0);
  first = harness_stat(&f->loop, f->c, "history_first", TIMEOUT);
  /* ... and the service has said how far the watch has got. */
  do {
    n = read_frame(fd, PEERSTORE_MSG_EVENT, body, sizeof(body));
    assert_int_equal(peerstore__wire_event(body, n, &kind, &revision, &w),
                     0);
    assert_int_equal(kind, PEERSTORE__EVENT_PROGRESS);
  } while (revision < (uint64_t)first);
  assert_true(harness_stat(&f->loop, f->c, "watch_progress", TIMEOUT) >= 2);
  assert_int_equal(q.nlog, 1); /* the sentinel; PROGRESS is not delivered */
  close(fd);
  peerstore__buf_free(&b);
  if (!persistent)
    return; /* a restart is a new incarnation: compacted, tested above */
  /* The stats reply came after the PROGRESS on the same connection. */
  harness_kill(&f->svc, SIGKILL);
  assert_int_equal(harness_restart(&f->svc, f->svc.args), 0);
  put(f, NULL, "quiet", 1, "after", "a", PEERSTORE_EXPIRY_NEVER,
      PEERSTORE_REPLACE, &a);
  q.want_key = "after";
  q.seen_key = 0;
  assert_int_equal(harness_run_until(&f->loop, &q.seen_key, TIMEOUT), 0);
  assert_int_equal(q.ended, 0);
  assert_int_equal(q.bad_order, 0);
}

static int setup_small_watch_limit(void **state) {
  static const char *const args[] = {"-o", "watch_output_limit=256k", "-o",
                                     "write_timeout=3600", NULL};
  return start_with(state, args);
}

typedef struct stalled {
  int stores;
  int ended;
  int bad;
  uint64_t last;
} stalled;

static void on_stalled_event(void *arg, const peerstore_event *ev,
                             int status) {
  stalled *s = arg;
  char key[16];

  (void)status;
  if (ev == NULL) {
    s->ended = 1;
    return;
  }
  if (ev->kind != PEERSTORE_EVENT_STORE)
    return;
  snprintf(key, sizeof(key), "k%d", s->stores);
  if (ev->revision <= s->last || strcmp(ev->rec->key, key) != 0 ||
      ev->rec->value_size != 512)
    s->bad++;
  s->last = ev->revision;
  s->stores++;
}

/* A watcher whose loop does not run while 20,000 x 512-byte values are
 * stored gets all 20,000, in order, once it runs again: the service
 * stopped queueing for it (its watch limit is 256 KiB here) and fed it
 * from the history as it read. */
static void test_stalled_watcher_gets_every_event_in_order(void **state) {
  fx *f = *state;
  enum { N = 20000 };
  uv_loop_t wloop;
  peerstore_client *w;
  peerstore_connect_opts o;
  stalled s = {0};
  acks a = {0};
  static char value[512];
  char key[16];
  int i;

  assert_int_equal(uv_loop_init(&wloop), 0);
  peerstore_connect_opts_init(&o);
  o.timeout_ms = 0;
  w = peerstore_connect_ex(&wloop, f->svc.socket_path, &o);
  assert_non_null(peerstore_watch_ex(w, "flood", NULL, NULL, NULL,
                                     on_stalled_event, &s));
  assert_int_equal(harness_wait_stat(&wloop, w, "watches", 1, TIMEOUT), 0);
  memset(value, 'x', sizeof(value));
  for (i = 0; i < N; i++) {
    peerstore_peer_id p = peer_n((uint8_t)(i % 7));
    snprintf(key, sizeof(key), "k%d", i);
    assert_non_null(peerstore_store(f->c, "flood", &p, key, value,
                                    sizeof(value), PEERSTORE_EXPIRY_NEVER,
                                    PEERSTORE_MULTIPLE, on_ack, &a));
  }
  assert_int_equal(harness_run_until_ge(&f->loop, &a.n, N, TIMEOUT), 0);
  assert_int_equal(a.failed, 0);
  /* It fell behind, and its watch lives on. */
  assert_true(harness_stat(&f->loop, f->c, "watch_overflows", TIMEOUT) >= 1);
  assert_int_equal(harness_stat(&f->loop, f->c, "watches", TIMEOUT), 1);
  assert_int_equal(harness_run_until_ge(&wloop, &s.stores, N, TIMEOUT), 0);
  assert_int_equal(s.bad, 0);
  assert_int_equal(s.ended, 0);
  peerstore_disconnect(w, 0);
  assert_int_equal(harness_drain(&wloop, TIMEOUT), 0);
  assert_int_equal(uv_loop_close(&wloop), 0);
}

/* Reads frames from fd until one of type comes; returns its body length
 * and copies the body into body (at most size bytes). */
static size_t read_frame(int fd, uint16_t type, uint8_t *body, size_t size) {
  peerstore__header h;
  uint8_t hdr[PEERSTORE_HEADER_SIZE];
  static uint8_t skip[1 << 16];
  struct pollfd pfd = {fd, POLLIN, 0};
  size_t got;
  ssize_t r;

  for (;;) {
    for (got = 0; got < sizeof(hdr); got += (size_t)r) {
      assert_true(poll(&pfd, 1, TIMEOUT) == 1);
      r = recv(fd, hdr + got, sizeof(hdr) - got, 0);
      assert_true(r > 0);
    }
    peerstore__wire_header(hdr, &h);
    assert_true(h.body_len <= sizeof(skip));
    for (got = 0; got < h.body_len; got += (size_t)r) {
      assert_true(poll(&pfd, 1, TIMEOUT) == 1);
      r = recv(fd, skip + got, h.body_len - got, 0);
      assert_true(r > 0);
    }
    if (h.type == type) {
      memcpy(body, skip, h.body_len < size ? h.body_len : size);
      return h.body_len;
    }
  }
}

/* A version 2 client against this service: the old WELCOME, RECORD
 * notifications of stores only; the version 3 messages are not for it. */
static void test_version_2_client_keeps_the_old_protocol(void **state) {
  fx *f = *state;
  peerstore__buf b = {0};
  peerstore__wrec w;
  uint8_t body[4096];
  uint16_t version;
  uint32_t max_value;
  uint64_t id;
  acks a = {0};
  size_t n;
  int fd = harness_raw_connect(f->svc.socket_path);

  assert_int_equal(peerstore__put_hello_version(&b, 2), 0);
  assert_int_equal(peerstore__put_filter(&b, PEERSTORE_MSG_WATCH, 5, "old",
                                         NULL, NULL, 0),
                   0);
  assert_int_equal(peerstore__put_empty(&b, PEERSTORE_MSG_STATS, 6), 0);
  assert_int_equal(send(fd, b.data, b.len, MSG_NOSIGNAL), (ssize_t)b.len);
  n = read_frame(fd, PEERSTORE_MSG_WELCOME, body, sizeof(body));
  assert_int_equal(n, 6);
  assert_int_equal(peerstore__wire_welcome(body, n, &version, &max_value, &id),
                   0);
  assert_int_equal(version, 2);
  read_frame(fd, PEERSTORE_MSG_STATS_RESULT, body, sizeof(body));
  put(f, NULL, "old", 1, "k", "a", PEERSTORE_EXPIRY_NEVER, PEERSTORE_MULTIPLE,
      &a);
  put(f, NULL, "old", 1, "k", "b", PEERSTORE_EXPIRY_NEVER, PEERSTORE_REPLACE,
      &a);
  assert_int_equal(harness_run_until_ge(&f->loop, &a.n, 2, TIMEOUT), 0);
  n = read_frame(fd, PEERSTORE_MSG_RECORD, body, sizeof(body));
  assert_int_equal(peerstore__wire_record(body, n, &w), 0);
  assert_string_equal(w.key, "k");
  n = read_frame(fd, PEERSTORE_MSG_RECORD, body, sizeof(body));
  assert_int_equal(peerstore__wire_record(body, n, &w), 0);
  assert_int_equal(w.rec.value_size, 1);
  assert_memory_equal(w.rec.value, "b", 1);
  /* WATCH_EX is version 3: a protocol error on this connection. */
  b.len = b.off = 0;
  assert_int_equal(peerstore__put_watch_ex(&b, 7, "old", NULL, NULL, 0, 0, 0),
                   0);
  assert_int_equal(send(fd, b.data, b.len, MSG_NOSIGNAL), (ssize_t)b.len);
  n = read_frame(fd, PEERSTORE_MSG_ERROR, body, sizeof(body));
  assert_true(n > 4);
  peerstore__buf_free(&b);
  close(fd);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(
          test_snapshot_under_churn_equals_a_fresh_iterate, setup, teardown),
      cmocka_unit_test_setup_teardown(
          test_resume_gets_exactly_the_events_after_a_revision, setup,
          teardown),
      cmocka_unit_test_setup_teardown(
          test_removals_are_events_only_with_the_flag, setup_fast_purge,
          teardown),
      cmocka_unit_test_setup_teardown(
          test_resume_older_than_the_history_is_compacted,
          setup_short_history, teardown),
      cmocka_unit_test_setup_teardown(
          test_restart_resumes_exactly_or_says_so, setup, teardown),
      cmocka_unit_test_setup_teardown(
          test_a_quiet_watch_resumes_after_the_history_moved_on,
          setup_short_history, teardown),
      cmocka_unit_test_setup_teardown(
          test_resumed_snapshot_watch_keeps_its_view_across_a_reconnect,
          setup, teardown),
      cmocka_unit_test_setup_teardown(
          test_stalled_watcher_gets_every_event_in_order,
          setup_small_watch_limit, teardown),
      cmocka_unit_test_setup_teardown(
          test_version_2_client_keeps_the_old_protocol, setup, teardown),
  };
  const char *plugin = getenv("PEERSTORE_TEST_WATCH_PLUGIN");
  int failed, r;

  if (plugin != NULL && strcmp(plugin, "postgres") == 0) {
    if ((r = harness_pg_start(&server)) != 0) {
      fprintf(stderr, "test_watch: %s\n",
              r == 77 ? "skipped: no PostgreSQL server to start (above)"
                      : "cannot start a PostgreSQL server");
      return r == 77 ? 77 : 1;
    }
    backend = POSTGRES;
    failed = cmocka_run_group_tests_name("watch (postgres)", tests, NULL,
                                         NULL);
    harness_pg_ctl(&server, "destroy", NULL);
    return failed != 0;
  }
  failed = cmocka_run_group_tests_name("watch (memory)", tests, NULL, NULL);
  backend = SQLITE;
  failed += cmocka_run_group_tests_name("watch (sqlite)", tests, NULL, NULL);
  return failed != 0;
}
