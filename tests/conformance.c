/* conformance.c - the plugin conformance suite; see conformance.h.
 *
 * Plugins may call back at once or later from the loop, so every helper
 * issues its call and then runs the loop until the callback has run. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "conformance.h"
#include "harness.h"

#define TIMEOUT 30000
#define MAXREC 256

static const conformance_target *target;

#define MAXEVENTS 32

typedef struct fx {
  uv_loop_t loop;
  void *inst;
  const peerstore_plugin_ops *ops;
  uint64_t history_events; /* for env; 0: the default */
  uint64_t history_bytes;
  /* What the change hook heard. */
  uint64_t stores_reported;
  uint64_t last_reported;
  uint64_t last_store; /* revision of the last STORE reported */
  int n_events;
  struct {
    int kind;
    uint64_t revision;     /* the change's */
    uint64_t rec_revision; /* the record's */
    char value[16];
  } events[MAXEVENTS];
} fx;

typedef struct result {
  const fx *f;
  uint64_t reported_at_cb; /* stores reported when the callback ran */
  int done;
  int status;
  uint64_t revision;
  uint64_t count;
  int more;
  int n;
  char values[MAXREC][32];
  char keys[MAXREC][32];
  uint64_t revisions[MAXREC];
  uint64_t expiries[MAXREC];
  uint32_t writers[MAXREC];
} result;

static void env_log(void *ctx, enum peerstore_log_level level,
                    const char *fmt, ...) {
  va_list ap;

  (void)ctx;
  if (level > PEERSTORE_LOG_WARN)
    return;
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
}

static const char *no_option(void *ctx, const char *name) {
  (void)ctx;
  (void)name;
  return NULL;
}

/* A plugin reports its changes in revision order; STORE is the kind every
 * plugin reports (peerstore_plugin.h). */
static void changed(void *ctx, const peerstore_plugin_change *ch) {
  fx *f = ctx;

  assert_non_null(ch->rec);
  assert_true(ch->revision > f->last_reported);
  f->last_reported = ch->revision;
  if (f->n_events < MAXEVENTS) {
    f->events[f->n_events].kind = (int)ch->kind;
    f->events[f->n_events].revision = ch->revision;
    f->events[f->n_events].rec_revision = ch->rec->revision;
    snprintf(f->events[f->n_events].value,
             sizeof(f->events[f->n_events].value), "%.*s",
             (int)ch->rec->value_size, (const char *)ch->rec->value);
  }
  f->n_events++;
  if (ch->kind == PEERSTORE_CHANGE_STORE) {
    assert_int_equal(ch->revision, ch->rec->revision);
    f->stores_reported++;
    f->last_store = ch->revision;
  } else {
    assert_true(target->desc->flags & PEERSTORE_PLUGIN_REPORTS_REMOVALS);
  }
}

#define NO_HISTORY UINT64_MAX

/* The quotas setup_quotas opens the plugin with: "q" 3 records and 100
 * value bytes in all, "w" 2 records for each writer. */
static const peerstore_plugin_quota test_quotas[] = {
    {"q", 3, 100, 0},
    {"w", 2, 0, PEERSTORE_PLUGIN_QUOTA_PER_WRITER},
};
static int with_quotas;

static int setup_with(void **state, uint64_t history_events,
                      uint64_t history_bytes) {
  fx *f = calloc(1, sizeof(*f));
  peerstore_plugin_env env;

  assert_non_null(f);
  f->history_events = history_events;
  f->history_bytes = history_bytes;
  assert_int_equal(uv_loop_init(&f->loop), 0);
  memset(&env, 0, sizeof(env));
  env.loop = &f->loop;
  env.option = no_option;
  env.log = env_log;
  env.strerror = peerstore_strerror;
  env.changed = changed;
  env.changed_ctx = f;
  env.history_events = f->history_events == NO_HISTORY ? 0
                       : f->history_events ? f->history_events
                                           : 100000;
  env.history_bytes = f->history_bytes ? f->history_bytes : 64u << 20;
  if (with_quotas) {
    env.quotas = test_quotas;
    env.n_quotas = 2;
    with_quotas = 0;
  }
  if (target->prepare != NULL)
    assert_int_equal(target->prepare(target->ctx, &env), 0);
  f->ops = target->desc->ops;
  assert_int_equal(target->desc->abi, PEERSTORE_PLUGIN_ABI);
  assert_int_equal(f->ops->open(&env, &f->inst), 0);
  *state = f;
  return 0;
}

static int setup(void **state) { return setup_with(state, 0, 0); }

static int setup_quotas(void **state) {
  with_quotas = 1;
  return setup_with(state, 0, 0);
}

/* No history: nothing keeps a removed record's groups. */
static int setup_no_history(void **state) {
  return setup_with(state, NO_HISTORY, 0);
}

/* A history of 8 events, to see it trimmed. */
static int setup_small_history(void **state) {
  return setup_with(state, 8, 0);
}

/* A history of 2 KiB, to see it trimmed by size. */
#define SMALL_HISTORY_BYTES 2048
static int setup_small_history_bytes(void **state) {
  return setup_with(state, 0, SMALL_HISTORY_BYTES);
}

static int teardown(void **state) {
  fx *f = *state;

  f->ops->close(f->inst);
  assert_int_equal(harness_drain(&f->loop, TIMEOUT), 0);
  assert_int_equal(uv_loop_close(&f->loop), 0);
  if (target->cleanup != NULL)
    target->cleanup(target->ctx);
  free(f);
  return 0;
}

static peerstore_peer_id peer_n(uint8_t n) {
  peerstore_peer_id p;
  memset(p.bytes, n, sizeof(p.bytes));
  return p;
}

/* ------------------------------------------------------------------ */
/* Helpers                                                             */

static void store_cb(void *arg, int status, const peerstore_record *rec) {
  result *r = arg;

  r->done = 1;
  r->status = status;
  r->reported_at_cb = r->f->stores_reported;
  if (status == 0) {
    assert_non_null(rec);
    r->revision = rec->revision;
  }
}

/* The writer every helper store claims. */
#define WRITER 4242

static uint64_t put_as(fx *f, const char *ss, uint8_t peer, const char *key,
                       const char *value, uint64_t expiry,
                       enum peerstore_store_option opt, uint32_t writer) {
  result r = {0};
  peerstore_record rec = {0};
  uint64_t reported = f->stores_reported;

  r.f = f;
  rec.subsystem = ss;
  rec.peer = peer_n(peer);
  rec.key = key;
  rec.value = value;
  rec.value_size = strlen(value);
  rec.expiry = expiry;
  assert_int_equal(f->ops->store(f->inst, &rec, writer, opt, store_cb, &r),
                   0);
  assert_int_equal(harness_run_until(&f->loop, &r.done, TIMEOUT), 0);
  assert_int_equal(r.status, 0);
  /* Every store is reported, once, before its callback runs (watchers hear
   * of a store before its writer does). */
  assert_int_equal(f->stores_reported, reported + 1);
  assert_int_equal(r.reported_at_cb, reported + 1);
  assert_int_equal(f->last_store, r.revision);
  return r.revision;
}

static uint64_t put(fx *f, const char *ss, uint8_t peer, const char *key,
                    const char *value, uint64_t expiry,
                    enum peerstore_store_option opt) {
  return put_as(f, ss, peer, key, value, expiry, opt, WRITER);
}

static uint64_t put_never(fx *f, const char *ss, uint8_t peer,
                          const char *key, const char *value,
                          enum peerstore_store_option opt) {
  return put(f, ss, peer, key, value, PEERSTORE_EXPIRY_NEVER, opt);
}

static int rec_cb(void *arg, const peerstore_record *rec, uint32_t writer) {
  result *r = arg;

  if (r->n < MAXREC) {
    snprintf(r->values[r->n], sizeof(r->values[0]), "%.*s",
             (int)rec->value_size, (const char *)rec->value);
    snprintf(r->keys[r->n], sizeof(r->keys[0]), "%s", rec->key);
    r->revisions[r->n] = rec->revision;
    r->expiries[r->n] = rec->expiry;
    r->writers[r->n] = writer;
  }
  r->n++;
  return 0;
}

static void next_cb(void *arg, int status, int more) {
  result *r = arg;

  r->done = 1;
  r->status = status;
  r->more = more;
}

/* One iterate_next of up to max records; returns whether there are more. */
static int next(fx *f, peerstore_plugin_cursor *c, uint32_t max, result *r) {
  r->done = 0;
  assert_int_equal(f->ops->iterate_next(c, max, rec_cb, next_cb, r), 0);
  assert_int_equal(harness_run_until(&f->loop, &r->done, TIMEOUT), 0);
  assert_int_equal(r->status, 0);
  return r->more;
}

static peerstore_plugin_cursor *open_it(fx *f, const char *ss,
                                        const peerstore_peer_id *peer,
                                        const char *key, uint64_t now) {
  peerstore_plugin_filter flt = {ss, peer, key};
  peerstore_plugin_cursor *c = NULL;

  assert_int_equal(f->ops->iterate_open(f->inst, &flt, now, &c), 0);
  assert_non_null(c);
  return c;
}

/* A whole iteration, in batches of batch records. */
static void all(fx *f, const char *ss, const peerstore_peer_id *peer,
                const char *key, uint64_t now, uint32_t batch, result *r) {
  peerstore_plugin_cursor *c = open_it(f, ss, peer, key, now);
  int i;

  memset(r, 0, sizeof(*r));
  while (next(f, c, batch, r))
    ;
  f->ops->iterate_close(c);
  for (i = 1; i < r->n && i < MAXREC; i++)
    assert_true(r->revisions[i - 1] < r->revisions[i]);
}

static void count_cb(void *arg, int status, uint64_t n) {
  result *r = arg;

  r->done = 1;
  r->status = status;
  r->count = n;
}

static uint64_t del(fx *f, const char *ss, const peerstore_peer_id *peer,
                    const char *key) {
  peerstore_plugin_filter flt = {ss, peer, key};
  result r = {0};

  assert_int_equal(f->ops->remove(f->inst, &flt, count_cb, &r), 0);
  assert_int_equal(harness_run_until(&f->loop, &r.done, TIMEOUT), 0);
  assert_int_equal(r.status, 0);
  return r.count;
}

static uint64_t purge(fx *f, uint64_t now, uint32_t max) {
  result r = {0};

  assert_int_equal(f->ops->purge(f->inst, now, max, count_cb, &r), 0);
  assert_int_equal(harness_run_until(&f->loop, &r.done, TIMEOUT), 0);
  assert_int_equal(r.status, 0);
  return r.count;
}

static uint64_t records(fx *f) {
  uint64_t n, rev;
  f->ops->counts(f->inst, &n, &rev);
  return n;
}

/* ------------------------------------------------------------------ */
/* Tests                                                               */

static void test_filters_and_order(void **state) {
  fx *f = *state;
  peerstore_peer_id p1 = peer_n(1), p2 = peer_n(2);
  result r;

  put_never(f, "ss", 1, "k1", "1", PEERSTORE_REPLACE);
  put_never(f, "ss", 2, "k1", "2", PEERSTORE_REPLACE);
  put_never(f, "other", 1, "k1", "x", PEERSTORE_REPLACE);
  put_never(f, "ss", 1, "k2", "3", PEERSTORE_REPLACE);
  put_never(f, "ss", 2, "k2", "4", PEERSTORE_REPLACE);
  put_never(f, "ss", 1, "k1", "5", PEERSTORE_MULTIPLE);

  all(f, "ss", NULL, NULL, 0, 100, &r);
  assert_int_equal(r.n, 5);
  assert_string_equal(r.values[0], "1");
  assert_string_equal(r.values[4], "5");
  all(f, "ss", &p1, NULL, 0, 100, &r);
  assert_int_equal(r.n, 3);
  assert_string_equal(r.values[0], "1");
  assert_string_equal(r.values[1], "3");
  assert_string_equal(r.values[2], "5");
  all(f, "ss", NULL, "k1", 0, 100, &r);
  assert_int_equal(r.n, 3);
  assert_string_equal(r.values[0], "1");
  assert_string_equal(r.values[1], "2");
  assert_string_equal(r.values[2], "5");
  all(f, "ss", &p2, "k2", 0, 100, &r);
  assert_int_equal(r.n, 1);
  assert_string_equal(r.values[0], "4");
  all(f, "ss", &p2, "nokey", 0, 100, &r);
  assert_int_equal(r.n, 0);
  all(f, "none", NULL, NULL, 0, 100, &r);
  assert_int_equal(r.n, 0);
  /* Batches of one give the same answer. */
  all(f, "ss", NULL, NULL, 0, 1, &r);
  assert_int_equal(r.n, 5);
  assert_int_equal(records(f), 6);
}

static void test_replace_multiple(void **state) {
  fx *f = *state;
  peerstore_peer_id p = peer_n(1);
  uint64_t r1, r2, r3;
  result r;

  r1 = put_never(f, "ss", 1, "k", "a", PEERSTORE_MULTIPLE);
  r2 = put_never(f, "ss", 1, "k", "b", PEERSTORE_MULTIPLE);
  assert_true(r1 < r2);
  /* Identical value: refreshed (new revision, new expiry), not copied. */
  r3 = put(f, "ss", 1, "k", "a", 5000, PEERSTORE_MULTIPLE);
  assert_true(r2 < r3);
  all(f, "ss", &p, "k", 0, 100, &r);
  assert_int_equal(r.n, 2);
  assert_string_equal(r.values[0], "b");
  assert_string_equal(r.values[1], "a");
  assert_int_equal(r.revisions[1], r3);
  assert_int_equal(r.expiries[1], 5000);
  assert_int_equal(r.writers[0], WRITER);
  /* A refresh by someone else makes them the record's writer. */
  put_as(f, "ss", 1, "k", "a", 5000, PEERSTORE_MULTIPLE, 7);
  all(f, "ss", &p, "k", 0, 100, &r);
  assert_int_equal(r.n, 2);
  assert_string_equal(r.values[1], "a");
  assert_int_equal(r.writers[1], 7);
  assert_int_equal(r.writers[0], WRITER);
  /* An empty value is a value like any other. */
  put_never(f, "ss", 1, "k", "", PEERSTORE_MULTIPLE);
  put_never(f, "ss", 1, "k", "", PEERSTORE_MULTIPLE);
  all(f, "ss", &p, "k", 0, 100, &r);
  assert_int_equal(r.n, 3);
  put_never(f, "ss", 1, "k", "c", PEERSTORE_REPLACE);
  all(f, "ss", &p, "k", 0, 100, &r);
  assert_int_equal(r.n, 1);
  assert_string_equal(r.values[0], "c");
  assert_int_equal(records(f), 1);
  /* REPLACE touches only its own triple. */
  put_never(f, "ss", 2, "k", "other", PEERSTORE_MULTIPLE);
  put_never(f, "ss", 1, "k", "d", PEERSTORE_REPLACE);
  all(f, "ss", NULL, NULL, 0, 100, &r);
  assert_int_equal(r.n, 2);
  assert_string_equal(r.values[0], "other");
  assert_string_equal(r.values[1], "d");
}

static void test_revisions(void **state) {
  fx *f = *state;
  uint64_t a, b, n, rev, rev2;

  a = put_never(f, "ss", 1, "k", "a", PEERSTORE_MULTIPLE);
  b = put_never(f, "ss", 1, "k", "b", PEERSTORE_MULTIPLE);
  assert_true(a < b);
  f->ops->counts(f->inst, &n, &rev);
  assert_int_equal(rev, b);
  /* A removal is a change and takes a revision too. */
  assert_int_equal(del(f, "ss", NULL, "k"), 2);
  f->ops->counts(f->inst, &n, &rev2);
  assert_true(rev2 > rev);
  assert_int_equal(n, 0);
  assert_true(put_never(f, "ss", 1, "k", "c", PEERSTORE_MULTIPLE) > rev2);
}

static void test_expiry(void **state) {
  fx *f = *state;
  result r;
  char key[16];
  int i;

  put(f, "ss", 1, "a", "100", 100, PEERSTORE_REPLACE);
  put(f, "ss", 1, "b", "200", 200, PEERSTORE_REPLACE);
  put_never(f, "ss", 1, "c", "never", PEERSTORE_REPLACE);
  all(f, "ss", NULL, NULL, 150, 100, &r);
  assert_int_equal(r.n, 2);
  assert_string_equal(r.values[0], "200");
  /* expiry <= now is expired. */
  all(f, "ss", NULL, NULL, 200, 100, &r);
  assert_int_equal(r.n, 1);
  assert_int_equal(purge(f, 150, 100), 1);
  assert_int_equal(records(f), 2);
  /* Purge is bounded by max. */
  for (i = 0; i < 10; i++) {
    snprintf(key, sizeof(key), "x%d", i);
    put(f, "ss", 2, key, "v", 300 + (uint64_t)i, PEERSTORE_REPLACE);
  }
  assert_int_equal(purge(f, 1000, 3), 3);
  assert_int_equal(purge(f, 1000, 100), 8); /* b and x0, x1 went first */
  assert_int_equal(purge(f, 1000, 100), 0);
  all(f, "ss", NULL, NULL, 1000, 100, &r);
  assert_int_equal(r.n, 1);
  assert_string_equal(r.values[0], "never");
  /* A refresh can make an expired-looking record live again. */
  put(f, "ss", 3, "k", "v", 10, PEERSTORE_MULTIPLE);
  put(f, "ss", 3, "k", "v", 5000, PEERSTORE_MULTIPLE);
  assert_int_equal(purge(f, 1000, 100), 0);
  all(f, "ss", NULL, "k", 1000, 100, &r);
  assert_int_equal(r.n, 1);
}

static void test_remove_filters(void **state) {
  fx *f = *state;
  peerstore_peer_id p1 = peer_n(1), p2 = peer_n(2);
  result r;

  put_never(f, "ss", 1, "k1", "a", PEERSTORE_MULTIPLE);
  put_never(f, "ss", 1, "k1", "b", PEERSTORE_MULTIPLE);
  put_never(f, "ss", 1, "k2", "c", PEERSTORE_MULTIPLE);
  put_never(f, "ss", 2, "k1", "d", PEERSTORE_MULTIPLE);
  put_never(f, "ss", 2, "k2", "e", PEERSTORE_MULTIPLE);
  put_never(f, "zz", 1, "k1", "f", PEERSTORE_MULTIPLE);
  assert_int_equal(del(f, "ss", &p1, "k1"), 2);
  assert_int_equal(del(f, "ss", &p1, "k1"), 0);
  assert_int_equal(del(f, "ss", NULL, "k2"), 2);
  assert_int_equal(del(f, "ss", &p2, NULL), 1);
  all(f, "ss", NULL, NULL, 0, 100, &r);
  assert_int_equal(r.n, 0);
  assert_int_equal(del(f, "nothing", NULL, NULL), 0);
  assert_int_equal(del(f, "zz", NULL, NULL), 1);
  assert_int_equal(records(f), 0);
  /* Everything can be stored again after. */
  put_never(f, "ss", 1, "k1", "again", PEERSTORE_MULTIPLE);
  all(f, "ss", &p1, NULL, 0, 100, &r);
  assert_int_equal(r.n, 1);
}

/* A cursor keeps its place while the records around it change. */
static void test_cursor_resume(void **state) {
  fx *f = *state;
  peerstore_peer_id p = peer_n(1);
  peerstore_plugin_cursor *c;
  char k[8];
  result r;
  int i;

  for (i = 0; i < 10; i++) {
    snprintf(k, sizeof(k), "k%d", i);
    put_never(f, "ss", 1, k, k, PEERSTORE_REPLACE);
  }
  c = open_it(f, "ss", &p, NULL, 0);
  memset(&r, 0, sizeof(r));
  assert_true(next(f, c, 3, &r));
  assert_int_equal(r.n, 3);
  /* Remove where the cursor stands and just after it. */
  assert_int_equal(del(f, "ss", &p, "k3"), 1);
  assert_int_equal(del(f, "ss", &p, "k4"), 1);
  /* A refresh moves k5 past the iteration's end: not seen twice. */
  put_never(f, "ss", 1, "k5", "k5", PEERSTORE_MULTIPLE);
  /* Stored after the iteration began: not seen. */
  put_never(f, "ss", 1, "k10", "k10", PEERSTORE_MULTIPLE);
  while (next(f, c, 2, &r))
    ;
  f->ops->iterate_close(c);
  assert_int_equal(r.n, 7);
  assert_string_equal(r.values[3], "k6");
  assert_string_equal(r.values[6], "k9");

  /* Closing a cursor that rests on removed records frees them. */
  c = open_it(f, "ss", NULL, NULL, 0);
  memset(&r, 0, sizeof(r));
  assert_true(next(f, c, 1, &r));
  assert_int_equal(del(f, "ss", NULL, NULL), 9);
  assert_false(next(f, c, 5, &r));
  assert_int_equal(r.n, 1);
  f->ops->iterate_close(c);
  c = open_it(f, "ss", NULL, NULL, 0);
  assert_int_equal(del(f, "ss", NULL, NULL), 0);
  f->ops->iterate_close(c);
  assert_int_equal(records(f), 0);
}

/* Among 5,000 records under 100 peers and 50 keys, each filter returns
 * exactly its own records, in stored order. */
static void test_filters_return_exactly_theirs_among_many(void **state) {
  fx *f = *state;
  peerstore_peer_id p = peer_n(37);
  char k[16];
  result r;
  int i, j;

  for (i = 0; i < 100; i++) {
    for (j = 0; j < 50; j++) {
      snprintf(k, sizeof(k), "key%d", j);
      put_never(f, "many", (uint8_t)i, k, k, PEERSTORE_REPLACE);
    }
  }
  assert_int_equal(records(f), 5000);
  all(f, "many", &p, NULL, 0, 64, &r);
  assert_int_equal(r.n, 50);
  assert_string_equal(r.keys[0], "key0");
  assert_string_equal(r.keys[49], "key49");
  all(f, "many", NULL, "key7", 0, 64, &r);
  assert_int_equal(r.n, 100);
  all(f, "many", NULL, NULL, 0, 1000, &r);
  assert_int_equal(r.n, 5000);
}

/* With PEERSTORE_PLUGIN_REPORTS_REMOVALS, every change is reported with a
 * revision of its own, in order (without it, stores only): a store; each record a REPLACE drops,
 * after the store that dropped it; each record a remove deletes; each
 * record the purge expires.  Removals carry the record as it was, value
 * and store revision included. */
static void test_every_change_is_reported_with_its_own_revision(
    void **state) {
  fx *f = *state;
  uint64_t a, b, c;
  int k = 0;

  if (!(target->desc->flags & PEERSTORE_PLUGIN_REPORTS_REMOVALS)) {
    /* Without the flag: stores only, one each, whatever else happens. */
    put_never(f, "ss", 1, "k", "a", PEERSTORE_MULTIPLE);
    put_never(f, "ss", 1, "k", "c", PEERSTORE_REPLACE);
    assert_int_equal(del(f, "ss", NULL, "k"), 1);
    put(f, "ss", 1, "e", "e", 100, PEERSTORE_MULTIPLE);
    assert_int_equal(purge(f, 1000, 10), 1);
    assert_int_equal(f->n_events, 3);
    for (k = 0; k < 3; k++)
      assert_int_equal(f->events[k].kind, PEERSTORE_CHANGE_STORE);
    return;
  }
  a = put_never(f, "ss", 1, "k", "a", PEERSTORE_MULTIPLE);
  b = put_never(f, "ss", 1, "k", "b", PEERSTORE_MULTIPLE);
  c = put_never(f, "ss", 1, "k", "c", PEERSTORE_REPLACE);
  assert_int_equal(del(f, "ss", NULL, "k"), 1);
  put(f, "ss", 1, "e", "e", 100, PEERSTORE_MULTIPLE);
  assert_int_equal(purge(f, 1000, 10), 1);
  assert_int_equal(f->n_events, 8);
#define EVENT(kind_, value_, rec_rev_)                                         \
  do {                                                                         \
    assert_int_equal(f->events[k].kind, kind_);                               \
    assert_string_equal(f->events[k].value, value_);                          \
    if (rec_rev_ != 0)                                                         \
      assert_int_equal(f->events[k].rec_revision, rec_rev_);                  \
    if (k > 0)                                                                 \
      assert_int_equal(f->events[k].revision, f->events[k - 1].revision + 1); \
    k++;                                                                       \
  } while (0)
  EVENT(PEERSTORE_CHANGE_STORE, "a", a);
  EVENT(PEERSTORE_CHANGE_STORE, "b", b);
  EVENT(PEERSTORE_CHANGE_STORE, "c", c);
  EVENT(PEERSTORE_CHANGE_REMOVE, "a", a);
  EVENT(PEERSTORE_CHANGE_REMOVE, "b", b);
  EVENT(PEERSTORE_CHANGE_REMOVE, "c", c);
  EVENT(PEERSTORE_CHANGE_STORE, "e", 0);
  EVENT(PEERSTORE_CHANGE_EXPIRE, "e", f->events[6].rec_revision);
#undef EVENT
  /* Nothing was numbered but the changes reported. */
  {
    uint64_t n, rev;
    f->ops->counts(f->inst, &n, &rev);
    assert_int_equal(rev, f->last_reported);
  }
}

/* Several cursors resting on the same record - on the same list and on
 * others - each go on from its successor in their own list when it is
 * removed. */
static void test_cursors_on_a_removed_record_go_on_from_its_successor(
    void **state) {
  fx *f = *state;
  peerstore_peer_id p1 = peer_n(1);
  peerstore_plugin_cursor *c[4];
  result r[4];
  int i;

  put_never(f, "ss", 1, "a", "a", PEERSTORE_MULTIPLE);
  put_never(f, "ss", 2, "x", "x", PEERSTORE_MULTIPLE);
  put_never(f, "ss", 1, "b", "b", PEERSTORE_MULTIPLE);
  put_never(f, "ss", 1, "a", "a2", PEERSTORE_MULTIPLE);
  c[0] = open_it(f, "ss", NULL, NULL, 0);
  c[1] = open_it(f, "ss", NULL, NULL, 0);
  c[2] = open_it(f, "ss", &p1, NULL, 0);
  c[3] = open_it(f, "ss", NULL, "a", 0);
  /* All four rest on the first record, (1, a, "a"). */
  assert_int_equal(del(f, "ss", &p1, "a"), 2);
  for (i = 0; i < 4; i++) {
    memset(&r[i], 0, sizeof(r[i]));
    while (next(f, c[i], 1, &r[i]))
      ;
    f->ops->iterate_close(c[i]);
  }
  assert_int_equal(r[0].n, 2);
  assert_string_equal(r[0].values[0], "x");
  assert_string_equal(r[0].values[1], "b");
  assert_int_equal(r[1].n, 2);
  assert_int_equal(r[2].n, 1);
  assert_string_equal(r[2].values[0], "b");
  assert_int_equal(r[3].n, 0);
}

/* What an iteration returns (peerstore_plugin.h, iterate_open): the
 * records that existed when it began, as each still is when the cursor
 * reaches it.  One removed, replaced or refreshed after it began is not
 * returned, nor is one stored later; a store made before iterate_open -
 * even one not yet complete - is in it. */
static void test_iteration_returns_its_snapshot_as_it_still_is(
    void **state) {
  fx *f = *state;
  peerstore_plugin_cursor *c;
  peerstore_record rec = {0};
  result early = {0}, r;

  put_never(f, "ss", 1, "a", "a", PEERSTORE_MULTIPLE);
  put_never(f, "ss", 1, "b", "b", PEERSTORE_MULTIPLE);
  put_never(f, "ss", 1, "c", "c", PEERSTORE_MULTIPLE);
  put_never(f, "ss", 1, "d", "d", PEERSTORE_MULTIPLE);
  /* Issued, not yet complete, when the iteration begins. */
  early.f = f;
  rec.subsystem = "ss";
  rec.peer = peer_n(1);
  rec.key = "x";
  rec.value = "x";
  rec.value_size = 1;
  rec.expiry = PEERSTORE_EXPIRY_NEVER;
  assert_int_equal(f->ops->store(f->inst, &rec, WRITER, PEERSTORE_MULTIPLE,
                                 store_cb, &early),
                   0);
  c = open_it(f, "ss", NULL, NULL, 0);
  assert_int_equal(harness_run_until(&f->loop, &early.done, TIMEOUT), 0);
  put_never(f, "ss", 1, "a", "a", PEERSTORE_MULTIPLE); /* refreshed */
  put_never(f, "ss", 1, "b", "b2", PEERSTORE_REPLACE); /* replaced */
  assert_int_equal(del(f, "ss", NULL, "c"), 1);        /* removed */
  put_never(f, "ss", 1, "e", "e", PEERSTORE_MULTIPLE); /* stored later */
  memset(&r, 0, sizeof(r));
  while (next(f, c, 1, &r))
    ;
  f->ops->iterate_close(c);
  assert_int_equal(r.n, 2);
  assert_string_equal(r.values[0], "d");
  assert_string_equal(r.values[1], "x");
}

/* ------------------------------------------------------------------ */
/* History                                                             */

typedef struct hist {
  int done;
  int status;
  int more;
  uint64_t reached;
  int n;
  int stop_after; /* ask to stop after this many (0: never) */
  struct {
    int kind;
    uint64_t revision;
    uint64_t rec_revision;
    char value[16];
    char key[16];
  } ev[MAXEVENTS];
} hist;

typedef struct bulk {
  fx *f;
  int acks;
  int failed;
  int remove_done;
  int remove_status;
  uint64_t removed;
  int events_at_remove_cb;
} bulk;

static void bulk_store_cb(void *arg, int status, const peerstore_record *rec) {
  bulk *b = arg;

  (void)rec;
  b->acks++;
  b->failed += status != 0;
}

static void bulk_remove_cb(void *arg, int status, uint64_t n) {
  bulk *b = arg;

  b->remove_done = 1;
  b->remove_status = status;
  b->removed = n;
  b->events_at_remove_cb = b->f->n_events;
}

static void bulk_put(fx *f, bulk *b, const char *key, const char *value) {
  peerstore_record rec = {0};

  rec.subsystem = "bulk";
  rec.peer = peer_n(1);
  rec.key = key;
  rec.value = value;
  rec.value_size = strlen(value);
  rec.expiry = PEERSTORE_EXPIRY_NEVER;
  assert_int_equal(f->ops->store(f->inst, &rec, WRITER, PEERSTORE_MULTIPLE,
                                 bulk_store_cb, b),
                   0);
}

/* A remove of many records (more than a plugin may take in one step)
 * takes exactly what was there when it began: a store queued right after
 * it stays, an iteration opened after both shows only that store, every
 * removal is reported before the remove's callback, and the count is all
 * of them. */
static void test_a_large_remove_takes_what_was_there_and_keeps_order(
    void **state) {
  fx *f = *state;
  enum { N = 10000 };
  peerstore_plugin_filter flt = {"bulk", NULL, NULL};
  static bulk b;
  result r;
  char key[16];
  int i, events;

  memset(&b, 0, sizeof(b));
  b.f = f;
  /* A key each: values of one triple are few in practice, and the
   * plugins may walk them on a store. */
  for (i = 0; i < N; i++) {
    snprintf(key, sizeof(key), "k%d", i);
    bulk_put(f, &b, key, key);
  }
  assert_int_equal(harness_run_until_ge(&f->loop, &b.acks, N, TIMEOUT), 0);
  assert_int_equal(b.failed, 0);
  events = f->n_events;
  assert_int_equal(f->ops->remove(f->inst, &flt, bulk_remove_cb, &b), 0);
  bulk_put(f, &b, "k0", "late");
  assert_int_equal(harness_run_until(&f->loop, &b.remove_done, TIMEOUT), 0);
  assert_int_equal(harness_run_until_ge(&f->loop, &b.acks, N + 1, TIMEOUT),
                   0);
  assert_int_equal(b.remove_status, 0);
  assert_int_equal(b.removed, N);
  assert_int_equal(b.failed, 0);
  all(f, "bulk", NULL, NULL, 0, 100, &r);
  assert_int_equal(r.n, 1);
  assert_string_equal(r.values[0], "late");
  if (target->desc->flags & PEERSTORE_PLUGIN_REPORTS_REMOVALS)
    assert_true(b.events_at_remove_cb >= events + N);
  assert_int_equal(records(f), 1);
}

/* A remove takes the stores queued before it, acknowledged or not (the
 * plugin may run them in the same transaction), and none queued after
 * it. */
static void test_a_remove_takes_the_stores_queued_before_it(void **state) {
  fx *f = *state;
  peerstore_plugin_filter flt = {"bulk", NULL, NULL};
  static bulk b;
  result r;
  char key[16];
  int i;

  memset(&b, 0, sizeof(b));
  b.f = f;
  for (i = 0; i < 10; i++) {
    snprintf(key, sizeof(key), "k%d", i);
    bulk_put(f, &b, key, key);
  }
  assert_int_equal(f->ops->remove(f->inst, &flt, bulk_remove_cb, &b), 0);
  bulk_put(f, &b, "after", "after");
  assert_int_equal(harness_run_until(&f->loop, &b.remove_done, TIMEOUT), 0);
  assert_int_equal(harness_run_until_ge(&f->loop, &b.acks, 11, TIMEOUT), 0);
  assert_int_equal(b.failed, 0);
  assert_int_equal(b.remove_status, 0);
  assert_int_equal(b.removed, 10);
  all(f, "bulk", NULL, NULL, 0, 100, &r);
  assert_int_equal(r.n, 1);
  assert_string_equal(r.values[0], "after");
  assert_int_equal(records(f), 1);
}

/* ------------------------------------------------------------------ */
/* Batches (DESIGN.md section 8)                                       */

typedef struct batched {
  const fx *f;
  int done;
  int status;
  uint64_t first;
  uint64_t last;
  int events_at_cb;
} batched;

static void batch_cb(void *arg, int status, uint64_t first, uint64_t last) {
  batched *b = arg;

  b->done++;
  b->status = status;
  b->first = first;
  b->last = last;
  b->events_at_cb = b->f->n_events;
}

/* An iteration of ss gives exactly these values, in this order. */
static void expect_values(fx *f, const char *ss, int n,
                          const char *const want[]) {
  result r;
  int i;

  all(f, ss, NULL, NULL, 0, 100, &r);
  assert_int_equal(r.n, n);
  for (i = 0; i < n; i++)
    assert_string_equal(r.values[i], want[i]);
}

static int need_batches(const fx *f) {
  if (f->ops->batch != NULL)
    return 1;
  print_message("skipped: the %s plugin has no batch call yet\n",
                target->desc->name);
  return 0;
}

static peerstore_plugin_batch_op op_store(const char *ss, const peerstore_peer_id *p,
                                          const char *key, const char *value,
                                          enum peerstore_store_option opt) {
  peerstore_plugin_batch_op o;

  memset(&o, 0, sizeof(o));
  o.kind = PEERSTORE_PLUGIN_BATCH_STORE;
  o.option = opt;
  o.rec.subsystem = ss;
  o.rec.peer = *p;
  o.rec.key = key;
  o.rec.value = value;
  o.rec.value_size = strlen(value);
  o.rec.expiry = PEERSTORE_EXPIRY_NEVER;
  return o;
}

static peerstore_plugin_batch_op op_filter(enum peerstore_plugin_batch_kind k,
                                           const char *ss,
                                           const peerstore_peer_id *p,
                                           const char *key, uint64_t rev) {
  peerstore_plugin_batch_op o;

  memset(&o, 0, sizeof(o));
  o.kind = k;
  o.filter.subsystem = ss;
  o.filter.peer = p;
  o.filter.key = key;
  o.revision = rev;
  return o;
}

/* Runs a batch to its callback. */
static void run_batch(fx *f, const peerstore_plugin_batch_op *ops, size_t n,
                      batched *b) {
  memset(b, 0, sizeof(*b));
  b->f = f;
  assert_int_equal(f->ops->batch(f->inst, ops, n, WRITER, batch_cb, b), 0);
  assert_int_equal(harness_run_until(&f->loop, &b->done, TIMEOUT), 0);
}

/* A batch's changes take consecutive revisions in the order its
 * operations were added - a REPLACE's drop right after its store - and
 * all go through the hook before its callback. */
static void test_a_batch_applies_in_order_with_consecutive_revisions(
    void **state) {
  fx *f = *state;
  peerstore_peer_id p1 = peer_n(1);
  peerstore_plugin_batch_op ops[3];
  batched b;
  int events;

  if (!need_batches(f))
    return;
  put_never(f, "ss", 1, "a", "old", PEERSTORE_REPLACE);
  put_never(f, "ss", 1, "c", "gone", PEERSTORE_REPLACE);
  events = f->n_events;
  ops[0] = op_store("ss", &p1, "a", "new", PEERSTORE_REPLACE);
  ops[1] = op_store("ss", &p1, "b", "b", PEERSTORE_MULTIPLE);
  ops[2] = op_filter(PEERSTORE_PLUGIN_BATCH_REMOVE, "ss", &p1, "c", 0);
  run_batch(f, ops, 3, &b);
  assert_int_equal(b.status, 0);
  assert_int_equal(b.events_at_cb, events + 4);
  assert_int_equal(f->events[events].kind, PEERSTORE_CHANGE_STORE);
  assert_string_equal(f->events[events].value, "new");
  assert_int_equal(f->events[events].revision, b.first);
  assert_int_equal(f->events[events + 1].kind, PEERSTORE_CHANGE_REMOVE);
  assert_string_equal(f->events[events + 1].value, "old");
  assert_int_equal(f->events[events + 1].revision, b.first + 1);
  assert_int_equal(f->events[events + 2].kind, PEERSTORE_CHANGE_STORE);
  assert_string_equal(f->events[events + 2].value, "b");
  assert_int_equal(f->events[events + 2].revision, b.first + 2);
  assert_int_equal(f->events[events + 3].kind, PEERSTORE_CHANGE_REMOVE);
  assert_string_equal(f->events[events + 3].value, "gone");
  assert_int_equal(f->events[events + 3].revision, b.first + 3);
  assert_int_equal(b.last, b.first + 3);
  expect_values(f, "ss", 2, (const char *const[]){"new", "b"});
}

/* Conditions are checked against the store as it was before the batch;
 * one that does not hold fails it with ECONFLICT and nothing changes. */
static void test_a_batch_whose_condition_fails_changes_nothing(
    void **state) {
  fx *f = *state;
  peerstore_peer_id p1 = peer_n(1);
  peerstore_plugin_batch_op ops[4];
  uint64_t rev;
  batched b;
  int events;

  if (!need_batches(f))
    return;
  rev = put_never(f, "ss", 1, "a", "v1", PEERSTORE_REPLACE);
  events = f->n_events;
  ops[0] = op_store("ss", &p1, "a", "v2", PEERSTORE_REPLACE);
  ops[1] = op_store("ss", &p1, "x", "x", PEERSTORE_REPLACE);
  ops[2] = op_filter(PEERSTORE_PLUGIN_BATCH_REQUIRE, "ss", &p1, "a", rev + 1);
  run_batch(f, ops, 3, &b);
  assert_int_equal(b.status, PEERSTORE_ECONFLICT);
  assert_int_equal(f->n_events, events);
  expect_values(f, "ss", 1, (const char *const[]){"v1"});
  /* 0: the triple must be empty; "x" is, "a" is not. */
  ops[2] = op_filter(PEERSTORE_PLUGIN_BATCH_REQUIRE, "ss", &p1, "a", 0);
  run_batch(f, ops, 3, &b);
  assert_int_equal(b.status, PEERSTORE_ECONFLICT);
  ops[2] = op_filter(PEERSTORE_PLUGIN_BATCH_REQUIRE, "ss", &p1, "a", rev);
  ops[3] = op_filter(PEERSTORE_PLUGIN_BATCH_REQUIRE, "ss", &p1, "x", 0);
  run_batch(f, ops, 4, &b);
  assert_int_equal(b.status, 0);
  expect_values(f, "ss", 2, (const char *const[]){"v2", "x"});
}

/* A condition sees what a reader sees: a record that has expired but is
 * not purged yet is not there, and the newest unexpired one counts. */
static void test_a_condition_does_not_see_expired_records(void **state) {
  fx *f = *state;
  peerstore_peer_id p1 = peer_n(1);
  peerstore_plugin_batch_op ops[2];
  uint64_t live;
  batched b;

  if (!need_batches(f))
    return;
  put(f, "ss", 1, "gone", "old", 1, PEERSTORE_REPLACE); /* long expired */
  ops[0] = op_filter(PEERSTORE_PLUGIN_BATCH_REQUIRE, "ss", &p1, "gone", 0);
  run_batch(f, ops, 1, &b);
  assert_int_equal(b.status, 0);
  live = put_never(f, "ss", 1, "mixed", "live", PEERSTORE_MULTIPLE);
  put(f, "ss", 1, "mixed", "expired", 1, PEERSTORE_MULTIPLE); /* newer */
  ops[0] = op_filter(PEERSTORE_PLUGIN_BATCH_REQUIRE, "ss", &p1, "mixed",
                     live);
  ops[1] = op_store("ss", &p1, "mixed", "next", PEERSTORE_REPLACE);
  run_batch(f, ops, 2, &b);
  assert_int_equal(b.status, 0);
  {
    result r;
    all(f, "ss", NULL, "mixed", 0, 100, &r);
    assert_int_equal(r.n, 1); /* REPLACE dropped both */
    assert_string_equal(r.values[0], "next");
  }
}

/* ------------------------------------------------------------------ */
/* Quotas                                                              */

static int need_quotas(const fx *f) {
  if (target->desc->flags & PEERSTORE_PLUGIN_QUOTAS)
    return 1;
  (void)f;
  print_message("skipped: the %s plugin enforces no quotas\n",
                target->desc->name);
  return 0;
}

/* A store's status, whether the plugin refuses it at once or through its
 * callback. */
static int try_put(fx *f, const char *ss, uint8_t peer, const char *key,
                   const char *value, enum peerstore_store_option opt,
                   uint32_t writer) {
  result r = {0};
  peerstore_record rec = {0};
  int st;

  r.f = f;
  rec.subsystem = ss;
  rec.peer = peer_n(peer);
  rec.key = key;
  rec.value = value;
  rec.value_size = strlen(value);
  rec.expiry = PEERSTORE_EXPIRY_NEVER;
  st = f->ops->store(f->inst, &rec, writer, opt, store_cb, &r);
  if (st != 0)
    return st;
  assert_int_equal(harness_run_until(&f->loop, &r.done, TIMEOUT), 0);
  return r.status;
}

static int try_batch(fx *f, const peerstore_plugin_batch_op *ops, size_t n,
                     uint32_t writer) {
  batched b;
  int st;

  memset(&b, 0, sizeof(b));
  b.f = f;
  st = f->ops->batch(f->inst, ops, n, writer, batch_cb, &b);
  if (st != 0)
    return st;
  assert_int_equal(harness_run_until(&f->loop, &b.done, TIMEOUT), 0);
  return b.status;
}

static void usage_is(fx *f, size_t i, uint64_t records, uint64_t bytes,
                     uint64_t wrecords) {
  uint64_t r, b, wr, wb;

  f->ops->quota_usage(f->inst, i, &r, &b, &wr, &wb);
  assert_int_equal(r, records);
  assert_int_equal(b, bytes);
  assert_int_equal(wr, wrecords);
}

/* A store that would raise a usage past its quota fails with EQUOTA and
 * changes nothing; one that does not raise it (a REPLACE, a refresh) and
 * removes always go through. */
static void test_a_store_past_a_quota_fails_and_changes_nothing(
    void **state) {
  fx *f = *state;
  static char big[128];
  int events;

  if (!need_quotas(f))
    return;
  put_never(f, "q", 1, "a", "aaaa", PEERSTORE_MULTIPLE);
  put_never(f, "q", 1, "b", "bbbb", PEERSTORE_MULTIPLE);
  put_never(f, "q", 2, "a", "cccc", PEERSTORE_MULTIPLE);
  usage_is(f, 0, 3, 12, 0);
  events = f->n_events;
  assert_int_equal(try_put(f, "q", 2, "b", "dddd", PEERSTORE_MULTIPLE, 1),
                   PEERSTORE_EQUOTA);
  assert_int_equal(try_put(f, "q", 1, "a", "new", PEERSTORE_MULTIPLE, 1),
                   PEERSTORE_EQUOTA); /* beside "aaaa": one more */
  assert_int_equal(f->n_events, events);
  expect_values(f, "q", 3, (const char *const[]){"aaaa", "bbbb", "cccc"});
  /* Replacing, refreshing: no more records. */
  assert_int_equal(try_put(f, "q", 1, "a", "AAAA", PEERSTORE_REPLACE, 1), 0);
  assert_int_equal(try_put(f, "q", 1, "b", "bbbb", PEERSTORE_MULTIPLE, 1), 0);
  usage_is(f, 0, 3, 12, 0);
  /* Bytes: 100 in all. */
  memset(big, 'x', 95);
  big[95] = '\0';
  assert_int_equal(try_put(f, "q", 1, "a", big, PEERSTORE_REPLACE, 1),
                   PEERSTORE_EQUOTA);
  big[92] = '\0';
  assert_int_equal(try_put(f, "q", 1, "a", big, PEERSTORE_REPLACE, 1), 0);
  usage_is(f, 0, 3, 100, 0);
  /* A subsystem without a quota is not held back. */
  assert_int_equal(try_put(f, "free", 1, "a", big, PEERSTORE_MULTIPLE, 1), 0);
  /* Removes always work, and make room. */
  assert_int_equal(del(f, "q", NULL, "b"), 1);
  usage_is(f, 0, 2, 96, 0);
  assert_int_equal(try_put(f, "q", 2, "b", "dddd", PEERSTORE_MULTIPLE, 1), 0);
}

/* A batch is judged as a whole, on what it leaves: one that removes and
 * stores as much fits a full quota; one that passes it changes nothing.
 * A per-writer quota counts each writer apart. */
static void test_a_batch_past_a_quota_fails_whole(void **state) {
  fx *f = *state;
  peerstore_peer_id p1 = peer_n(1);
  peerstore_plugin_batch_op ops[4];
  int events;

  if (!need_quotas(f))
    return;
  put_never(f, "q", 1, "a", "a", PEERSTORE_MULTIPLE);
  put_never(f, "q", 1, "b", "b", PEERSTORE_MULTIPLE);
  put_never(f, "q", 1, "c", "c", PEERSTORE_MULTIPLE);
  events = f->n_events;
  ops[0] = op_store("q", &p1, "x", "x", PEERSTORE_MULTIPLE);
  ops[1] = op_store("other", &p1, "x", "x", PEERSTORE_MULTIPLE);
  assert_int_equal(try_batch(f, ops, 2, 1), PEERSTORE_EQUOTA);
  assert_int_equal(f->n_events, events);
  /* Stored then removed within the batch: it leaves no more. */
  ops[0] = op_store("q", &p1, "x", "x", PEERSTORE_MULTIPLE);
  ops[1] = op_filter(PEERSTORE_PLUGIN_BATCH_REMOVE, "q", NULL, "x", 0);
  assert_int_equal(try_batch(f, ops, 2, 1), 0);
  /* A swap: remove one, store another. */
  ops[0] = op_filter(PEERSTORE_PLUGIN_BATCH_REMOVE, "q", &p1, "a", 0);
  ops[1] = op_store("q", &p1, "d", "d", PEERSTORE_MULTIPLE);
  assert_int_equal(try_batch(f, ops, 2, 1), 0);
  /* Two REPLACEs of one triple leave one record. */
  ops[0] = op_store("q", &p1, "b", "b1", PEERSTORE_REPLACE);
  ops[1] = op_store("q", &p1, "b", "b2", PEERSTORE_REPLACE);
  assert_int_equal(try_batch(f, ops, 2, 1), 0);
  /* ... two MULTIPLEs of one new value leave one more: too many. */
  ops[0] = op_store("q", &p1, "e", "e", PEERSTORE_MULTIPLE);
  ops[1] = op_store("q", &p1, "e", "e", PEERSTORE_MULTIPLE);
  assert_int_equal(try_batch(f, ops, 2, 1), PEERSTORE_EQUOTA);
  usage_is(f, 0, 3, 4, 0);
  expect_values(f, "q", 3, (const char *const[]){"c", "d", "b2"});
  /* Per writer: 2 records each. */
  ops[0] = op_store("w", &p1, "a", "1", PEERSTORE_MULTIPLE);
  ops[1] = op_store("w", &p1, "b", "1", PEERSTORE_MULTIPLE);
  assert_int_equal(try_batch(f, ops, 2, 100), 0);
  assert_int_equal(try_batch(f, ops, 2, 200), 0); /* refreshes: its own */
  usage_is(f, 1, 2, 2, 2);
  ops[0] = op_store("w", &p1, "c", "1", PEERSTORE_MULTIPLE);
  assert_int_equal(try_batch(f, ops, 1, 200), PEERSTORE_EQUOTA);
  assert_int_equal(try_put(f, "w", 2, "c", "2", PEERSTORE_MULTIPLE, 100), 0);
  assert_int_equal(try_put(f, "w", 3, "c", "3", PEERSTORE_MULTIPLE, 300), 0);
  assert_int_equal(try_put(f, "w", 4, "c", "4", PEERSTORE_MULTIPLE, 300), 0);
  assert_int_equal(try_put(f, "w", 5, "c", "5", PEERSTORE_MULTIPLE, 300),
                   PEERSTORE_EQUOTA);
  usage_is(f, 1, 5, 5, 2);
}

/* Two writers read the same revision and race to replace the record on
 * condition that it is still the one they read: exactly one wins. */
static void test_two_batches_racing_on_one_revision_one_wins(void **state) {
  fx *f = *state;
  peerstore_peer_id p1 = peer_n(1);
  peerstore_plugin_batch_op a[2], c[2];
  static batched ba, bc;
  uint64_t rev;

  if (!need_batches(f))
    return;
  rev = put_never(f, "ss", 1, "k", "v0", PEERSTORE_REPLACE);
  a[0] = op_filter(PEERSTORE_PLUGIN_BATCH_REQUIRE, "ss", &p1, "k", rev);
  a[1] = op_store("ss", &p1, "k", "from a", PEERSTORE_REPLACE);
  c[0] = op_filter(PEERSTORE_PLUGIN_BATCH_REQUIRE, "ss", &p1, "k", rev);
  c[1] = op_store("ss", &p1, "k", "from c", PEERSTORE_REPLACE);
  memset(&ba, 0, sizeof(ba));
  memset(&bc, 0, sizeof(bc));
  ba.f = bc.f = f;
  assert_int_equal(f->ops->batch(f->inst, a, 2, WRITER, batch_cb, &ba), 0);
  assert_int_equal(f->ops->batch(f->inst, c, 2, WRITER, batch_cb, &bc), 0);
  assert_int_equal(harness_run_until(&f->loop, &ba.done, TIMEOUT), 0);
  assert_int_equal(harness_run_until(&f->loop, &bc.done, TIMEOUT), 0);
  assert_int_equal(ba.status, 0);
  assert_int_equal(bc.status, PEERSTORE_ECONFLICT);
  expect_values(f, "ss", 1, (const char *const[]){"from a"});
}

/* A remove, then a store into the groups it empties, in one batch (with
 * no history, which would otherwise keep them). */
static void test_a_batch_stores_where_it_just_removed(void **state) {
  fx *f = *state;
  peerstore_peer_id p1 = peer_n(1);
  peerstore_plugin_batch_op ops[2];
  batched b;

  if (!need_batches(f))
    return;
  put_never(f, "only", 1, "k", "v", PEERSTORE_REPLACE);
  ops[0] = op_filter(PEERSTORE_PLUGIN_BATCH_REMOVE, "only", NULL, NULL, 0);
  ops[1] = op_store("only", &p1, "k", "again", PEERSTORE_MULTIPLE);
  run_batch(f, ops, 2, &b);
  assert_int_equal(b.status, 0);
  expect_values(f, "only", 1, (const char *const[]){"again"});
}

/* An empty value in a batch, given as NULL with size 0, is stored as the
 * single call stores it. */
static void test_a_batch_stores_an_empty_value(void **state) {
  fx *f = *state;
  peerstore_peer_id p1 = peer_n(1);
  peerstore_plugin_batch_op op;
  batched b;

  if (!need_batches(f))
    return;
  op = op_store("ss", &p1, "k", "", PEERSTORE_MULTIPLE);
  op.rec.value = NULL;
  run_batch(f, &op, 1, &b);
  assert_int_equal(b.status, 0);
  expect_values(f, "ss", 1, (const char *const[]){""});
}

static int hist_ev(void *arg, const peerstore_plugin_change *ch) {
  hist *h = arg;

  assert_non_null(ch->rec);
  if (h->n > 0 && h->n <= MAXEVENTS)
    assert_true(ch->revision > h->ev[h->n - 1].revision);
  if (h->n < MAXEVENTS) {
    h->ev[h->n].kind = (int)ch->kind;
    h->ev[h->n].revision = ch->revision;
    h->ev[h->n].rec_revision = ch->rec->revision;
    snprintf(h->ev[h->n].value, sizeof(h->ev[0].value), "%.*s",
             (int)ch->rec->value_size, (const char *)ch->rec->value);
    snprintf(h->ev[h->n].key, sizeof(h->ev[0].key), "%s", ch->rec->key);
  }
  h->n++;
  return h->stop_after != 0 && h->n % h->stop_after == 0;
}

static void hist_done(void *arg, int status, uint64_t reached, int more) {
  hist *h = arg;

  h->done = 1;
  h->status = status;
  h->reached = reached;
  h->more = more;
}

/* Reads the history after `after` to its end, max events per read; the
 * events accumulate in h.  Returns the status of the last read. */
static int hist_read(fx *f, const char *ss, const peerstore_peer_id *peer,
                     const char *key, uint64_t after, uint32_t max,
                     hist *h) {
  peerstore_plugin_filter flt = {ss, peer, key};

  do {
    h->done = 0;
    assert_int_equal(f->ops->history_read(f->inst, &flt, after, max, hist_ev,
                                          hist_done, h),
                     0);
    assert_int_equal(harness_run_until(&f->loop, &h->done, TIMEOUT), 0);
    if (h->status != 0)
      return h->status;
    assert_true(h->reached >= after);
    after = h->reached;
  } while (h->more);
  return 0;
}

static void need_history(void) {
  if (target->desc->ops->history_read == NULL) {
    fprintf(stderr, "[  SKIP    ] %s keeps no history (history_read is "
                    "NULL)\n", target->desc->name);
    skip();
  }
  assert_non_null(target->desc->ops->history_info);
  assert_true(target->desc->flags & PEERSTORE_PLUGIN_REPORTS_REMOVALS);
}

/* Read back from any revision on, the history is exactly what the hook
 * reported after it - kinds, revisions, records as they were - whether
 * read in one go or one event at a time; and a read that reaches the end
 * says so with the plugin's latest revision (the hand-over to the hook). */
static void test_history_gives_back_every_change_after_a_revision(
    void **state) {
  fx *f = *state;
  uint64_t n, last;
  int from, i;

  need_history();
  put_never(f, "ss", 1, "k", "a", PEERSTORE_MULTIPLE);
  put_never(f, "ss", 1, "k", "b", PEERSTORE_MULTIPLE);
  put_never(f, "ss", 1, "k", "a", PEERSTORE_MULTIPLE); /* refresh */
  put_never(f, "ss", 1, "k", "c", PEERSTORE_REPLACE);   /* drops a, b */
  put_never(f, "ss", 2, "j", "d", PEERSTORE_MULTIPLE);
  assert_int_equal(del(f, "ss", NULL, "j"), 1);
  put(f, "ss", 1, "e", "e", 100, PEERSTORE_MULTIPLE);
  assert_int_equal(purge(f, 1000, 10), 1);
  assert_int_equal(f->n_events, 10);
  f->ops->counts(f->inst, &n, &last);
  for (from = -1; from < f->n_events; from++) {
    uint32_t max;
    for (max = 1; max <= 64; max *= 64) {
      hist h;
      uint64_t after = from < 0 ? f->events[0].revision - 1
                                : f->events[from].revision;
      memset(&h, 0, sizeof(h));
      assert_int_equal(hist_read(f, "ss", NULL, NULL, after, max, &h), 0);
      assert_int_equal(h.reached, last);
      assert_int_equal(h.n, f->n_events - from - 1);
      for (i = 0; i < h.n; i++) {
        assert_int_equal(h.ev[i].kind, f->events[from + 1 + i].kind);
        assert_int_equal(h.ev[i].revision, f->events[from + 1 + i].revision);
        assert_int_equal(h.ev[i].rec_revision,
                         f->events[from + 1 + i].rec_revision);
        assert_string_equal(h.ev[i].value, f->events[from + 1 + i].value);
      }
    }
  }
}

/* A read yields only its filter's changes - also those of records whose
 * every group has gone since - and stops where the callback asks. */
static void test_history_reads_by_filter_and_stops_when_asked(
    void **state) {
  fx *f = *state;
  peerstore_peer_id p1 = peer_n(1), p2 = peer_n(2);
  uint64_t base = put_never(f, "zz", 9, "z", "z", PEERSTORE_MULTIPLE);
  hist h;

  need_history();
  put_never(f, "ss", 1, "k", "1k", PEERSTORE_MULTIPLE);
  put_never(f, "ss", 2, "k", "2k", PEERSTORE_MULTIPLE);
  put_never(f, "ss", 1, "j", "1j", PEERSTORE_MULTIPLE);
  put_never(f, "other", 1, "k", "o", PEERSTORE_MULTIPLE);
  /* Every record of "ss" goes: its groups are gone from the store. */
  assert_int_equal(del(f, "ss", NULL, NULL), 3);
  assert_int_equal(records(f), 2);

  memset(&h, 0, sizeof(h));
  assert_int_equal(hist_read(f, "ss", &p1, NULL, base, 100, &h), 0);
  assert_int_equal(h.n, 4);
  assert_string_equal(h.ev[0].value, "1k");
  assert_string_equal(h.ev[1].value, "1j");
  assert_int_equal(h.ev[2].kind, PEERSTORE_CHANGE_REMOVE);
  assert_string_equal(h.ev[2].value, "1k");
  assert_string_equal(h.ev[3].value, "1j");

  memset(&h, 0, sizeof(h));
  assert_int_equal(hist_read(f, "ss", NULL, "k", base, 100, &h), 0);
  assert_int_equal(h.n, 4);
  memset(&h, 0, sizeof(h));
  assert_int_equal(hist_read(f, "ss", &p2, "k", base, 100, &h), 0);
  assert_int_equal(h.n, 2);
  assert_string_equal(h.ev[1].key, "k");
  memset(&h, 0, sizeof(h));
  assert_int_equal(hist_read(f, "nothing", NULL, NULL, base, 100, &h), 0);
  assert_int_equal(h.n, 0);

  /* Stopping after each event: reached is that event, and more is set. */
  memset(&h, 0, sizeof(h));
  h.stop_after = 1;
  {
    peerstore_plugin_filter flt = {"ss", NULL, NULL};
    assert_int_equal(f->ops->history_read(f->inst, &flt, base, 100, hist_ev,
                                          hist_done, &h),
                     0);
    assert_int_equal(harness_run_until(&f->loop, &h.done, TIMEOUT), 0);
  }
  assert_int_equal(h.status, 0);
  assert_int_equal(h.n, 1);
  assert_int_equal(h.more, 1);
  assert_int_equal(h.reached, h.ev[0].revision);
}

/* The history keeps the last history_events revisions (trimmed by the
 * purge at the latest); a read from further back, or from beyond the
 * latest revision, is refused as compacted - never a silent gap. */
static void test_history_is_trimmed_and_older_reads_are_compacted(
    void **state) {
  fx *f = *state;
  peerstore_plugin_history_info info, again;
  char v[8];
  hist h;
  int i;

  need_history();
  for (i = 0; i < 30; i++) {
    snprintf(v, sizeof(v), "%d", i);
    put_never(f, "ss", 1, "k", v, PEERSTORE_REPLACE);
  }
  purge(f, 0, 10);
  f->ops->history_info(f->inst, &info);
  assert_int_equal(info.last, f->last_reported);
  assert_true(info.first >= info.last - 8);
  assert_true(info.first < info.last);
  assert_true(info.events <= 8);
  memset(&h, 0, sizeof(h));
  assert_int_equal(hist_read(f, "ss", NULL, NULL, info.first - 1, 100, &h),
                   PEERSTORE_ECOMPACTED);
  memset(&h, 0, sizeof(h));
  assert_int_equal(hist_read(f, "ss", NULL, NULL, info.last + 1, 100, &h),
                   PEERSTORE_ECOMPACTED);
  memset(&h, 0, sizeof(h));
  assert_int_equal(hist_read(f, "ss", NULL, NULL, info.first, 100, &h), 0);
  assert_int_equal(h.n, (int)(info.last - info.first));
  assert_int_equal(h.ev[h.n - 1].revision, info.last);
  /* The last store is live: its record is read back as it is. */
  assert_string_equal(h.ev[h.n - 2].value, "29");
  f->ops->history_info(f->inst, &again);
  assert_true(again.id == info.id && again.id != 0);
}

/* history_bytes bounds what the history holds, however many events the
 * count would allow: driven far past it by REPLACE stores (each keeps the
 * value it drops), the history holds no more than the limit plus one
 * event's worth after the purge, and reads from before it are refused. */
static void test_history_is_trimmed_to_its_bytes(void **state) {
  fx *f = *state;
  peerstore_plugin_history_info info;
  char v[48];
  hist h;
  int i;

  need_history();
  for (i = 0; i < 200; i++) {
    snprintf(v, sizeof(v), "%040d", i);
    put_never(f, "ss", 1, "k", v, PEERSTORE_REPLACE);
  }
  purge(f, 0, 10);
  f->ops->history_info(f->inst, &info);
  print_message("history after 400 events: %llu held, %llu bytes (limit "
                "%d)\n", (unsigned long long)info.events,
                (unsigned long long)info.bytes, SMALL_HISTORY_BYTES);
  assert_true(info.bytes <= SMALL_HISTORY_BYTES + 512);
  assert_true(info.first + 400 > info.last);
  memset(&h, 0, sizeof(h));
  assert_int_equal(hist_read(f, "ss", NULL, NULL, info.first - 1, 100, &h),
                   PEERSTORE_ECOMPACTED);
  memset(&h, 0, sizeof(h));
  assert_int_equal(hist_read(f, "ss", NULL, NULL, info.first, 500, &h), 0);
  assert_int_equal(h.n, (int)(info.last - info.first));
}

int conformance_run(const char *group, const conformance_target *t) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_filters_and_order, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_replace_multiple, setup, teardown),
      cmocka_unit_test_setup_teardown(test_revisions, setup, teardown),
      cmocka_unit_test_setup_teardown(
          test_every_change_is_reported_with_its_own_revision, setup,
          teardown),
      cmocka_unit_test_setup_teardown(test_expiry, setup, teardown),
      cmocka_unit_test_setup_teardown(test_remove_filters, setup, teardown),
      cmocka_unit_test_setup_teardown(
          test_a_large_remove_takes_what_was_there_and_keeps_order, setup,
          teardown),
      cmocka_unit_test_setup_teardown(
          test_a_remove_takes_the_stores_queued_before_it, setup, teardown),
      cmocka_unit_test_setup_teardown(
          test_a_batch_applies_in_order_with_consecutive_revisions, setup,
          teardown),
      cmocka_unit_test_setup_teardown(
          test_a_batch_whose_condition_fails_changes_nothing, setup,
          teardown),
      cmocka_unit_test_setup_teardown(
          test_two_batches_racing_on_one_revision_one_wins, setup, teardown),
      cmocka_unit_test_setup_teardown(
          test_a_condition_does_not_see_expired_records, setup, teardown),
      cmocka_unit_test_setup_teardown(
          test_a_store_past_a_quota_fails_and_changes_nothing, setup_quotas,
          teardown),
      cmocka_unit_test_setup_teardown(test_a_batch_past_a_quota_fails_whole,
                                      setup_quotas, teardown),
      cmocka_unit_test_setup_teardown(test_a_batch_stores_where_it_just_removed,
                                      setup_no_history, teardown),
      cmocka_unit_test_setup_teardown(test_a_batch_stores_an_empty_value,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(test_cursor_resume, setup, teardown),
      cmocka_unit_test_setup_teardown(
          test_cursors_on_a_removed_record_go_on_from_its_successor, setup,
          teardown),
      cmocka_unit_test_setup_teardown(
          test_iteration_returns_its_snapshot_as_it_still_is, setup,
          teardown),
      cmocka_unit_test_setup_teardown(
          test_filters_return_exactly_theirs_among_many, setup, teardown),
      cmocka_unit_test_setup_teardown(
          test_history_gives_back_every_change_after_a_revision, setup,
          teardown),
      cmocka_unit_test_setup_teardown(
          test_history_reads_by_filter_and_stops_when_asked, setup,
          teardown),
      cmocka_unit_test_setup_teardown(
          test_history_is_trimmed_and_older_reads_are_compacted,
          setup_small_history, teardown),
      cmocka_unit_test_setup_teardown(test_history_is_trimmed_to_its_bytes,
                                      setup_small_history_bytes, teardown),
  };

  target = t;
  return _cmocka_run_group_tests(group, tests, sizeof(tests) / sizeof(*tests),
                                 NULL, NULL);
}
