/* test_api.c - the client API against a real peerstored, one test per rule
 * of DESIGN.md section 2.  Every test starts its own service on a fresh
 * socket and ends by checking that the loop drains and closes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"
#include "frame.h"
#include "peerstore.h"
#include "wire.h"

#define TIMEOUT 10000

typedef struct fx {
  harness_svc svc;
  uv_loop_t loop;
} fx;

/* What callbacks saw. */
typedef struct got {
  int calls;      /* any callback */
  int records;    /* rec != NULL */
  int ended;      /* final callback ran */
  int status;     /* its status */
  uint64_t removed;
  char values[64][64];
  uint64_t revisions[64];
  int order[64];  /* sequence number across several ops (see seq) */
  int *seq;
  int cancel_after; /* cancel the op after this many records (0: never) */
  peerstore_iterate_op *iop;
  peerstore_watch_op *wop;
} got;

static peerstore_peer_id peer_n(uint8_t n) {
  peerstore_peer_id p;
  memset(p.bytes, n, sizeof(p.bytes));
  return p;
}

static int setup(void **state) {
  fx *f = calloc(1, sizeof(*f));

  assert_non_null(f);
  assert_int_equal(harness_start(&f->svc, NULL), 0);
  assert_int_equal(uv_loop_init(&f->loop), 0);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fx *f = *state;

  /* Whatever a test did, once its clients are gone the loop must close. */
  assert_int_equal(harness_drain(&f->loop, TIMEOUT), 0);
  assert_int_equal(uv_loop_close(&f->loop), 0);
  assert_int_equal(harness_stop(&f->svc), 0);
  free(f);
  return 0;
}

/* A client without an operation timeout: under valgrind on a busy
 * machine the default 10 s can pass, and the tests that are about
 * timeouts set their own. */
static peerstore_client *conn(fx *f) {
  peerstore_connect_opts o;
  peerstore_client *c;

  peerstore_connect_opts_init(&o);
  o.timeout_ms = 0;
  c = peerstore_connect_ex(&f->loop, f->svc.socket_path, &o);
  assert_non_null(c);
  return c;
}

/* ------------------------------------------------------------------ */
/* Callbacks                                                           */

static void store_cb(void *arg, int status) {
  got *g = arg;
  g->calls++;
  g->ended++;
  g->status = status;
  if (g->seq != NULL)
    g->order[0] = ++*g->seq;
}

static void record_cb(void *arg, const peerstore_record *rec, int status) {
  got *g = arg;

  g->calls++;
  if (rec == NULL) {
    g->ended++;
    g->status = status;
    return;
  }
  if (g->records < 64) {
    size_t n = rec->value_size < 63 ? rec->value_size : 63;
    memcpy(g->values[g->records], rec->value, n);
    g->values[g->records][n] = '\0';
    g->revisions[g->records] = rec->revision;
    if (g->seq != NULL)
      g->order[g->records] = ++*g->seq;
  }
  g->records++;
  if (g->cancel_after > 0 && g->records == g->cancel_after) {
    if (g->iop != NULL)
      peerstore_iterate_cancel(g->iop);
    if (g->wop != NULL)
      peerstore_watch_cancel(g->wop);
  }
}

static void remove_cb(void *arg, int status, uint64_t removed) {
  got *g = arg;
  g->calls++;
  g->ended++;
  g->status = status;
  g->removed = removed;
}

/* Stores and waits for the acknowledgement; returns its status. */
static int store_wait(fx *f, peerstore_client *c, const char *ss,
                      uint8_t peer, const char *key, const char *value,
                      enum peerstore_store_option opt) {
  got g = {0};
  peerstore_peer_id p = peer_n(peer);

  assert_non_null(peerstore_store(c, ss, &p, key, value, strlen(value),
                                  PEERSTORE_EXPIRY_NEVER, opt, store_cb, &g));
  assert_int_equal(harness_run_until(&f->loop, &g.ended, TIMEOUT), 0);
  return g.status;
}

static void iterate_wait(fx *f, peerstore_client *c, const char *ss,
                         const peerstore_peer_id *peer, const char *key,
                         got *g) {
  memset(g, 0, sizeof(*g));
  assert_non_null(peerstore_iterate(c, ss, peer, key, record_cb, g));
  assert_int_equal(harness_run_until(&f->loop, &g->ended, TIMEOUT), 0);
  assert_int_equal(g->status, 0);
  assert_int_equal(g->ended, 1);
}

/* ------------------------------------------------------------------ */
/* Store options                                                       */

static void test_store_replace_multiple(void **state) {
  fx *f = *state;
  peerstore_client *c = conn(f);
  peerstore_peer_id p = peer_n(1);
  got g;

  assert_int_equal(store_wait(f, c, "ss", 1, "k", "a", PEERSTORE_REPLACE), 0);
  assert_int_equal(store_wait(f, c, "ss", 1, "k", "b", PEERSTORE_MULTIPLE), 0);
  assert_int_equal(store_wait(f, c, "ss", 1, "k", "c", PEERSTORE_MULTIPLE), 0);
  iterate_wait(f, c, "ss", &p, "k", &g);
  assert_int_equal(g.records, 3);
  assert_string_equal(g.values[0], "a");
  assert_string_equal(g.values[1], "b");
  assert_string_equal(g.values[2], "c");
  assert_true(g.revisions[0] < g.revisions[1]);
  assert_true(g.revisions[1] < g.revisions[2]);

  /* An identical MULTIPLE refreshes: no copy, a new revision, last now. */
  assert_int_equal(store_wait(f, c, "ss", 1, "k", "a", PEERSTORE_MULTIPLE), 0);
  iterate_wait(f, c, "ss", &p, "k", &g);
  assert_int_equal(g.records, 3);
  assert_string_equal(g.values[0], "b");
  assert_string_equal(g.values[2], "a");

  /* REPLACE again leaves one. */
  assert_int_equal(store_wait(f, c, "ss", 1, "k", "d", PEERSTORE_REPLACE), 0);
  iterate_wait(f, c, "ss", &p, "k", &g);
  assert_int_equal(g.records, 1);
  assert_string_equal(g.values[0], "d");
  peerstore_disconnect(c, 0);
}

/* ------------------------------------------------------------------ */
/* Iterate filters and order                                           */

static void test_iterate_filters(void **state) {
  fx *f = *state;
  peerstore_client *c = conn(f);
  peerstore_peer_id p1 = peer_n(1), p2 = peer_n(2);
  got g;

  /* Interleaved so that each filter's stored order is distinct. */
  assert_int_equal(store_wait(f, c, "ss", 1, "k1", "1", PEERSTORE_REPLACE), 0);
  assert_int_equal(store_wait(f, c, "ss", 2, "k1", "2", PEERSTORE_REPLACE), 0);
  assert_int_equal(store_wait(f, c, "other", 1, "k1", "x", PEERSTORE_REPLACE),
                   0);
  assert_int_equal(store_wait(f, c, "ss", 1, "k2", "3", PEERSTORE_REPLACE), 0);
  assert_int_equal(store_wait(f, c, "ss", 2, "k2", "4", PEERSTORE_REPLACE), 0);
  assert_int_equal(store_wait(f, c, "ss", 1, "k1", "5", PEERSTORE_MULTIPLE), 0);

  iterate_wait(f, c, "ss", NULL, NULL, &g);
  assert_int_equal(g.records, 5);
  assert_string_equal(g.values[0], "1");
  assert_string_equal(g.values[1], "2");
  assert_string_equal(g.values[2], "3");
  assert_string_equal(g.values[3], "4");
  assert_string_equal(g.values[4], "5");

  iterate_wait(f, c, "ss", &p1, NULL, &g);
  assert_int_equal(g.records, 3);
  assert_string_equal(g.values[0], "1");
  assert_string_equal(g.values[1], "3");
  assert_string_equal(g.values[2], "5");

  iterate_wait(f, c, "ss", NULL, "k2", &g);
  assert_int_equal(g.records, 2);
  assert_string_equal(g.values[0], "3");
  assert_string_equal(g.values[1], "4");

  iterate_wait(f, c, "ss", &p2, "k1", &g);
  assert_int_equal(g.records, 1);
  assert_string_equal(g.values[0], "2");

  iterate_wait(f, c, "nothing-here", NULL, NULL, &g);
  assert_int_equal(g.records, 0);
  peerstore_disconnect(c, 0);
}

/* An iteration longer than the credit window returns every record, in
 * stored order: the library grants more credit as it consumes. */
static void test_iteration_returns_every_record_past_the_credit_window(
    void **state) {
  fx *f = *state;
  peerstore_client *c = conn(f);
  got acks = {0}, g;
  char key[32];
  peerstore_peer_id p = peer_n(3);
  int i, n = 5000;
  uint64_t last = 0;

  for (i = 0; i < n; i++) {
    snprintf(key, sizeof(key), "key-%d", i);
    assert_non_null(peerstore_store(c, "big", &p, key, key, strlen(key),
                                    PEERSTORE_EXPIRY_NEVER, PEERSTORE_REPLACE,
                                    store_cb, &acks));
  }
  assert_int_equal(harness_run_until_ge(&f->loop, &acks.ended, n, TIMEOUT),
                   0);
  assert_int_equal(acks.status, 0);
  iterate_wait(f, c, "big", NULL, NULL, &g);
  assert_int_equal(g.records, n);
  for (i = 1; i < 64; i++) {
    assert_true(g.revisions[i] > last);
    last = g.revisions[i];
  }
  assert_string_equal(g.values[0], "key-0");
  peerstore_disconnect(c, 0);
}

/* ------------------------------------------------------------------ */
/* Watch                                                               */

static void test_watch_filters_other_client(void **state) {
  fx *f = *state;
  peerstore_client *w = conn(f), *s = conn(f);
  peerstore_peer_id p1 = peer_n(1);
  got exact = {0}, any = {0}, bypeer = {0}, bykey = {0}, other = {0};

  assert_non_null(peerstore_watch(w, "ss", &p1, "k", record_cb, &exact));
  assert_non_null(peerstore_watch(w, "ss", NULL, NULL, record_cb, &any));
  assert_non_null(peerstore_watch(w, "ss", &p1, NULL, record_cb, &bypeer));
  assert_non_null(peerstore_watch(w, "ss", NULL, "k", record_cb, &bykey));
  assert_non_null(peerstore_watch(w, "zz", NULL, NULL, record_cb, &other));
  /* A stats round trip guarantees the watches are registered. */
  assert_int_equal(store_wait(f, w, "sync", 1, "k", "x", PEERSTORE_REPLACE),
                   0);

  assert_int_equal(store_wait(f, s, "ss", 1, "k", "m1", PEERSTORE_REPLACE), 0);
  assert_int_equal(store_wait(f, s, "ss", 1, "j", "m2", PEERSTORE_REPLACE), 0);
  assert_int_equal(store_wait(f, s, "ss", 2, "k", "m3", PEERSTORE_REPLACE), 0);
  assert_int_equal(store_wait(f, s, "ss", 2, "j", "m4", PEERSTORE_REPLACE), 0);
  /* An identical MULTIPLE counts as a store. */
  assert_int_equal(store_wait(f, s, "ss", 1, "k", "m1", PEERSTORE_MULTIPLE),
                   0);
  /* Every watcher heard of each store before its writer's ack arrived. */

  assert_int_equal(exact.records, 2);
  assert_string_equal(exact.values[0], "m1");
  assert_string_equal(exact.values[1], "m1");
  assert_true(exact.revisions[0] < exact.revisions[1]);
  assert_int_equal(any.records, 5);
  assert_string_equal(any.values[0], "m1");
  assert_string_equal(any.values[1], "m2");
  assert_string_equal(any.values[2], "m3");
  assert_string_equal(any.values[3], "m4");
  assert_int_equal(bypeer.records, 3);
  assert_int_equal(bykey.records, 3);
  assert_int_equal(other.records, 0);
  assert_int_equal(exact.ended + any.ended + other.ended, 0);
  peerstore_disconnect(w, 0);
  peerstore_disconnect(s, 0);
  /* Disconnect cancels the watches: their callbacks never run again. */
  assert_int_equal(harness_drain(&f->loop, TIMEOUT), 0);
  assert_int_equal(exact.ended + any.ended + other.ended, 0);
}

/* A store's notifications are written before its acknowledgement, also
 * across connections: once the writer holds its ack, every watcher's
 * notification is already in that watcher's socket, so anyone the writer
 * tells can find it there.  (Which of two readable sockets one loop reads
 * first is up to epoll, so the check reads the watchers' sockets directly,
 * as soon as each ack arrives.)  One store at a time, so the watchers'
 * sockets always have room: the writer is never held back for a watcher
 * that is behind. */
enum { ORDER_WATCHERS = 20, ORDER_STORES = 200 };

typedef struct order_check {
  peerstore_client *writer;
  peerstore__reader rd[ORDER_WATCHERS];
  int fd[ORDER_WATCHERS];
  int heard[ORDER_WATCHERS];
  int acked;
  int early; /* watchers not yet told when an ack came */
  int failed;
} order_check;

static void ordered_ack_cb(void *arg, int status);

static void ordered_store(order_check *o) {
  peerstore_peer_id p = peer_n(4);

  if (peerstore_store(o->writer, "order", &p, "k", &o->acked,
                      sizeof(o->acked), PEERSTORE_EXPIRY_NEVER,
                      PEERSTORE_REPLACE, ordered_ack_cb, o) == NULL)
    o->failed++;
}

/* Reads what watcher k's socket holds now and counts its notifications. */
static void drain_watcher(order_check *o, int k) {
  peerstore__header h;
  const uint8_t *body;
  uv_buf_t space;
  ssize_t n;
  int r;

  for (;;) {
    peerstore__reader_space(&o->rd[k], PEERSTORE_MSG_MAX, &space);
    n = recv(o->fd[k], space.base, space.len, MSG_DONTWAIT);
    if (n <= 0)
      break;
    peerstore__reader_filled(&o->rd[k], (size_t)n);
  }
  while ((r = peerstore__reader_next(&o->rd[k], PEERSTORE_MSG_MAX, &h,
                                     &body)) == PEERSTORE__FRAME_READY)
    if (h.type == PEERSTORE_MSG_RECORD)
      o->heard[k]++;
  if (r < 0)
    o->failed++;
}

static void ordered_ack_cb(void *arg, int status) {
  order_check *o = arg;
  int k;

  if (status != 0)
    o->failed++;
  ++o->acked;
  for (k = 0; k < ORDER_WATCHERS; k++) {
    drain_watcher(o, k);
    if (o->heard[k] < o->acked)
      o->early++;
  }
  if (o->acked < ORDER_STORES)
    ordered_store(o);
}

static void test_watchers_hear_a_store_before_its_writer_across_clients(
    void **state) {
  fx *f = *state;
  order_check *o = calloc(1, sizeof(*o));
  peerstore__buf b = {0};
  int k;

  assert_non_null(o);
  o->writer = conn(f);
  assert_int_equal(peerstore__put_hello(&b), 0);
  assert_int_equal(peerstore__put_filter(&b, PEERSTORE_MSG_WATCH, 1, "order",
                                         NULL, NULL, 0),
                   0);
  for (k = 0; k < ORDER_WATCHERS; k++) {
    o->fd[k] = harness_raw_connect(f->svc.socket_path);
    assert_true(o->fd[k] >= 0);
    assert_int_equal(send(o->fd[k], b.data, b.len, MSG_NOSIGNAL),
                     (ssize_t)b.len);
  }
  peerstore__buf_free(&b);
  assert_int_equal(harness_wait_stat(&f->loop, o->writer, "watches",
                                     ORDER_WATCHERS, TIMEOUT),
                   0);
  ordered_store(o);
  if (harness_run_until_ge(&f->loop, &o->acked, ORDER_STORES, TIMEOUT) != 0)
    fail_msg("%d acks in %d ms", o->acked, TIMEOUT);
  assert_int_equal(o->failed, 0);
  assert_int_equal(o->early, 0);
  for (k = 0; k < ORDER_WATCHERS; k++) {
    assert_int_equal(o->heard[k], ORDER_STORES);
    close(o->fd[k]);
    peerstore__reader_free(&o->rd[k]);
  }
  peerstore_disconnect(o->writer, 0);
  free(o);
}

/* The writer's own watch hears of its store before the store's ack. */
static void test_watch_before_ack(void **state) {
  fx *f = *state;
  peerstore_client *c = conn(f);
  peerstore_peer_id p = peer_n(9);
  int seq = 0;
  got wg = {0}, sg = {0};

  wg.seq = &seq;
  sg.seq = &seq;
  assert_non_null(peerstore_watch(c, "ss", &p, "k", record_cb, &wg));
  assert_non_null(peerstore_store(c, "ss", &p, "k", "v", 1,
                                  PEERSTORE_EXPIRY_NEVER, PEERSTORE_REPLACE,
                                  store_cb, &sg));
  assert_int_equal(harness_run_until(&f->loop, &sg.ended, TIMEOUT), 0);
  assert_int_equal(wg.records, 1);
  assert_int_equal(wg.order[0], 1);
  assert_int_equal(sg.order[0], 2);
  peerstore_disconnect(c, 0);
}

/* ------------------------------------------------------------------ */
/* Disconnect, cancel                                                  */

static void test_disconnect_sync_first(void **state) {
  fx *f = *state;
  peerstore_client *c = conn(f);
  peerstore_peer_id p = peer_n(4);
  got s1 = {0}, s2 = {0}, it = {0}, g;

  /* Made before the connection is even up, then disconnected at once. */
  assert_non_null(peerstore_store(c, "ss", &p, "k", "v1", 2,
                                  PEERSTORE_EXPIRY_NEVER, PEERSTORE_MULTIPLE,
                                  store_cb, &s1));
  assert_non_null(peerstore_store(c, "ss", &p, "k", "v2", 2,
                                  PEERSTORE_EXPIRY_NEVER, PEERSTORE_MULTIPLE,
                                  store_cb, &s2));
  assert_non_null(peerstore_iterate(c, "ss", NULL, NULL, record_cb, &it));
  peerstore_disconnect(c, 1);
  assert_int_equal(harness_drain(&f->loop, TIMEOUT), 0);
  assert_int_equal(s1.ended, 1);
  assert_int_equal(s1.status, 0);
  assert_int_equal(s2.ended, 1);
  assert_int_equal(s2.status, 0);
  assert_int_equal(it.calls, 0); /* cancelled by the disconnect */

  c = conn(f);
  iterate_wait(f, c, "ss", &p, "k", &g);
  assert_int_equal(g.records, 2);
  assert_string_equal(g.values[0], "v1");
  assert_string_equal(g.values[1], "v2");
  peerstore_disconnect(c, 0);
}

static void test_no_callback_after_disconnect(void **state) {
  fx *f = *state;
  peerstore_client *c = conn(f), *c2;
  peerstore_peer_id p = peer_n(5);
  got s = {0}, it = {0}, w = {0}, r = {0}, s2 = {0};

  assert_non_null(peerstore_store(c, "ss", &p, "k", "v", 1,
                                  PEERSTORE_EXPIRY_NEVER, PEERSTORE_REPLACE,
                                  store_cb, &s));
  assert_non_null(peerstore_iterate(c, "ss", NULL, NULL, record_cb, &it));
  assert_non_null(peerstore_watch(c, "ss", NULL, NULL, record_cb, &w));
  assert_non_null(peerstore_remove(c, "nothing", NULL, NULL, remove_cb, &r));
  peerstore_disconnect(c, 0);
  /* Also once connected and mid-flight. */
  c2 = conn(f);
  assert_int_equal(store_wait(f, c2, "ss", 1, "k", "x", PEERSTORE_REPLACE), 0);
  assert_non_null(peerstore_store(c2, "ss", &p, "k", "v", 1,
                                  PEERSTORE_EXPIRY_NEVER, PEERSTORE_REPLACE,
                                  store_cb, &s2));
  peerstore_disconnect(c2, 0);
  assert_int_equal(harness_drain(&f->loop, TIMEOUT), 0);
  assert_int_equal(s.calls + it.calls + w.calls + r.calls + s2.calls, 0);
}

static void test_cancel_inside_callback(void **state) {
  fx *f = *state;
  peerstore_client *c = conn(f);
  peerstore_peer_id p = peer_n(6);
  got g = {0}, wg = {0}, after;
  char v[8];
  int i;

  for (i = 0; i < 10; i++) {
    snprintf(v, sizeof(v), "v%d", i);
    assert_int_equal(store_wait(f, c, "ss", 6, "k", v, PEERSTORE_MULTIPLE), 0);
  }
  g.cancel_after = 3;
  g.iop = peerstore_iterate(c, "ss", &p, "k", record_cb, &g);
  assert_non_null(g.iop);
  wg.cancel_after = 1;
  wg.wop = peerstore_watch(c, "ss", NULL, NULL, record_cb, &wg);
  assert_non_null(wg.wop);
  /* The iterate reply and a later iteration prove the cancels took. */
  iterate_wait(f, c, "ss", &p, "k", &after);
  assert_int_equal(after.records, 10);
  assert_int_equal(g.records, 3);
  assert_int_equal(g.ended, 0);
  assert_int_equal(store_wait(f, c, "ss", 6, "k", "w1", PEERSTORE_MULTIPLE),
                   0);
  assert_int_equal(store_wait(f, c, "ss", 6, "k", "w2", PEERSTORE_MULTIPLE),
                   0);
  assert_int_equal(wg.records, 1);
  assert_int_equal(wg.ended, 0);
  assert_int_equal(g.records, 3);
  peerstore_disconnect(c, 0);
}

/* Disconnecting from inside a callback stops everything at once. */
static void disconnect_in_cb(void *arg, const peerstore_record *rec,
                             int status) {
  got *g = arg;
  (void)rec;
  (void)status;
  g->calls++;
  peerstore_disconnect((peerstore_client *)g->iop, 0);
}

static void test_disconnect_inside_callback(void **state) {
  fx *f = *state;
  peerstore_client *c = conn(f);
  got g = {0};
  int i;

  for (i = 0; i < 5; i++)
    assert_int_equal(store_wait(f, c, "ss", (uint8_t)i, "k", "v",
                                PEERSTORE_REPLACE), 0);
  g.iop = (peerstore_iterate_op *)c; /* smuggles the client to the cb */
  assert_non_null(peerstore_iterate(c, "ss", NULL, NULL, disconnect_in_cb,
                                    &g));
  assert_int_equal(harness_drain(&f->loop, TIMEOUT), 0);
  assert_int_equal(g.calls, 1);
}

/* ------------------------------------------------------------------ */
/* Values                                                              */

static void value_cb(void *arg, const peerstore_record *rec, int status) {
  got *g = arg;
  const uint8_t *expect = (const uint8_t *)g->iop;

  if (rec == NULL) {
    g->ended++;
    g->status = status;
    return;
  }
  g->records++;
  g->removed = rec->value_size;
  if (expect != NULL && memcmp(rec->value, expect, rec->value_size) == 0)
    g->calls++;
}

/* Values come back byte for byte (every byte value, empty, exactly the
 * limit); one byte over the limit is refused with ETOOBIG, stores
 * nothing, and leaves the connection usable. */
static void test_values_verbatim_up_to_the_limit_and_refused_past_it(
    void **state) {
  fx *f = *state;
  peerstore_client *c = conn(f);
  peerstore_peer_id p = peer_n(7);
  uint8_t all[256];
  uint8_t *big = malloc(PEERSTORE_VALUE_MAX_DEFAULT + 1);
  got s = {0}, g = {0};
  int i;

  assert_non_null(big);
  for (i = 0; i < 256; i++)
    all[i] = (uint8_t)i;
  for (i = 0; i < PEERSTORE_VALUE_MAX_DEFAULT + 1; i++)
    big[i] = (uint8_t)(i * 7);

  /* Every byte value. */
  assert_non_null(peerstore_store(c, "v", &p, "all", all, sizeof(all),
                                  PEERSTORE_EXPIRY_NEVER, PEERSTORE_REPLACE,
                                  store_cb, &s));
  /* Empty. */
  assert_non_null(peerstore_store(c, "v", &p, "empty", NULL, 0,
                                  PEERSTORE_EXPIRY_NEVER, PEERSTORE_REPLACE,
                                  store_cb, &s));
  /* At the limit. */
  assert_non_null(peerstore_store(c, "v", &p, "big", big,
                                  PEERSTORE_VALUE_MAX_DEFAULT,
                                  PEERSTORE_EXPIRY_NEVER, PEERSTORE_REPLACE,
                                  store_cb, &s));
  assert_int_equal(harness_run_until_ge(&f->loop, &s.ended, 3, TIMEOUT), 0);
  assert_int_equal(s.status, 0);

  g.iop = (peerstore_iterate_op *)all;
  assert_non_null(peerstore_iterate(c, "v", &p, "all", value_cb, &g));
  assert_int_equal(harness_run_until(&f->loop, &g.ended, TIMEOUT), 0);
  assert_int_equal(g.records, 1);
  assert_int_equal(g.removed, 256);
  assert_int_equal(g.calls, 1);

  memset(&g, 0, sizeof(g));
  assert_non_null(peerstore_iterate(c, "v", &p, "empty", value_cb, &g));
  assert_int_equal(harness_run_until(&f->loop, &g.ended, TIMEOUT), 0);
  assert_int_equal(g.records, 1);
  assert_int_equal(g.removed, 0);

  memset(&g, 0, sizeof(g));
  g.iop = (peerstore_iterate_op *)big;
  assert_non_null(peerstore_iterate(c, "v", &p, "big", value_cb, &g));
  assert_int_equal(harness_run_until(&f->loop, &g.ended, TIMEOUT), 0);
  assert_int_equal(g.records, 1);
  assert_int_equal(g.removed, PEERSTORE_VALUE_MAX_DEFAULT);
  assert_int_equal(g.calls, 1);

  /* One byte over: a clear error, and the connection still works. */
  memset(&s, 0, sizeof(s));
  assert_non_null(peerstore_store(c, "v", &p, "over", big,
                                  PEERSTORE_VALUE_MAX_DEFAULT + 1,
                                  PEERSTORE_EXPIRY_NEVER, PEERSTORE_REPLACE,
                                  store_cb, &s));
  assert_int_equal(harness_run_until(&f->loop, &s.ended, TIMEOUT), 0);
  assert_int_equal(s.status, PEERSTORE_ETOOBIG);
  assert_int_equal(store_wait(f, c, "v", 7, "after", "ok", PEERSTORE_REPLACE),
                   0);
  memset(&g, 0, sizeof(g));
  assert_non_null(peerstore_iterate(c, "v", &p, "over", value_cb, &g));
  assert_int_equal(harness_run_until(&f->loop, &g.ended, TIMEOUT), 0);
  assert_int_equal(g.records, 0);
  free(big);
  peerstore_disconnect(c, 0);
}

static void test_invalid_arguments(void **state) {
  fx *f = *state;
  peerstore_client *c = conn(f);
  peerstore_peer_id p = peer_n(1);
  char longkey[PEERSTORE_KEY_MAX + 2], longss[PEERSTORE_SUBSYSTEM_MAX + 2];
  got g = {0};

  memset(longkey, 'k', sizeof(longkey) - 1);
  longkey[sizeof(longkey) - 1] = '\0';
  memset(longss, 's', sizeof(longss) - 1);
  longss[sizeof(longss) - 1] = '\0';
  assert_null(peerstore_store(c, NULL, &p, "k", "v", 1, 0,
                              PEERSTORE_REPLACE, store_cb, &g));
  assert_null(peerstore_store(c, "", &p, "k", "v", 1, 0, PEERSTORE_REPLACE,
                              store_cb, &g));
  assert_null(peerstore_store(c, "ss", &p, "", "v", 1, 0, PEERSTORE_REPLACE,
                              store_cb, &g));
  assert_null(peerstore_store(c, "ss", &p, NULL, "v", 1, 0,
                              PEERSTORE_REPLACE, store_cb, &g));
  assert_null(peerstore_store(c, "ss", NULL, "k", "v", 1, 0,
                              PEERSTORE_REPLACE, store_cb, &g));
  assert_null(peerstore_store(c, "ss", &p, longkey, "v", 1, 0,
                              PEERSTORE_REPLACE, store_cb, &g));
  assert_null(peerstore_store(c, longss, &p, "k", "v", 1, 0,
                              PEERSTORE_REPLACE, store_cb, &g));
  assert_null(peerstore_store(c, "ss", &p, "k", NULL, 5, 0,
                              PEERSTORE_REPLACE, store_cb, &g));
  assert_null(peerstore_store(c, "ss", &p, "k", "v", 1, 0,
                              (enum peerstore_store_option)7, store_cb, &g));
  assert_null(peerstore_iterate(c, NULL, NULL, NULL, record_cb, &g));
  assert_null(peerstore_iterate(c, "ss", NULL, "", record_cb, &g));
  assert_null(peerstore_watch(c, longss, NULL, NULL, record_cb, &g));
  assert_null(peerstore_remove(c, NULL, NULL, NULL, remove_cb, &g));
  /* At the limits exactly is fine. */
  longkey[PEERSTORE_KEY_MAX] = '\0';
  longss[PEERSTORE_SUBSYSTEM_MAX] = '\0';
  assert_non_null(peerstore_store(c, longss, &p, longkey, "v", 1,
                                  PEERSTORE_EXPIRY_NEVER, PEERSTORE_REPLACE,
                                  store_cb, &g));
  /* Keys may hold any byte but NUL. */
  assert_non_null(peerstore_store(c, longss, &p, "a/b* c\xff", "v", 1,
                                  PEERSTORE_EXPIRY_NEVER, PEERSTORE_REPLACE,
                                  store_cb, &g));
  assert_int_equal(harness_run_until_ge(&f->loop, &g.ended, 2, TIMEOUT), 0);
  assert_int_equal(g.status, 0);
  assert_int_equal(g.calls, 2);
  peerstore_disconnect(c, 0);
}

/* ------------------------------------------------------------------ */
/* Expiry, remove, errors                                              */

static void test_expiry_and_remove(void **state) {
  fx *f = *state;
  peerstore_client *c = conn(f);
  peerstore_peer_id p = peer_n(8);
  got s = {0}, g, r = {0};

  /* Already expired: accepted, never returned. */
  assert_non_null(peerstore_store(c, "e", &p, "old", "x", 1, 1,
                                  PEERSTORE_REPLACE, store_cb, &s));
  assert_non_null(peerstore_store(c, "e", &p, "new", "y", 1,
                                  PEERSTORE_EXPIRY_NEVER, PEERSTORE_REPLACE,
                                  store_cb, &s));
  assert_non_null(peerstore_store(c, "e", &p, "new2", "z", 1,
                                  PEERSTORE_EXPIRY_NEVER, PEERSTORE_REPLACE,
                                  store_cb, &s));
  iterate_wait(f, c, "e", NULL, NULL, &g);
  assert_int_equal(s.ended, 3);
  assert_int_equal(g.records, 2);
  assert_string_equal(g.values[0], "y");

  assert_non_null(peerstore_remove(c, "e", &p, "new", remove_cb, &r));
  assert_int_equal(harness_run_until(&f->loop, &r.ended, TIMEOUT), 0);
  assert_int_equal(r.status, 0);
  assert_int_equal(r.removed, 1);
  memset(&r, 0, sizeof(r));
  assert_non_null(peerstore_remove(c, "e", NULL, NULL, remove_cb, &r));
  assert_int_equal(harness_run_until(&f->loop, &r.ended, TIMEOUT), 0);
  assert_true(r.removed >= 1);
  iterate_wait(f, c, "e", NULL, NULL, &g);
  assert_int_equal(g.records, 0);
  peerstore_disconnect(c, 0);
}

static peerstore_client *conn_no_reconnect(fx *f, const char *path) {
  peerstore_connect_opts o;
  peerstore_client *c;

  peerstore_connect_opts_init(&o);
  o.reconnect = 0;
  c = peerstore_connect_ex(&f->loop, path, &o);
  assert_non_null(c);
  return c;
}

/* Without reconnecting, an absent service fails everything at once. */
static void test_no_service(void **state) {
  fx *f = *state;
  char path[400];
  peerstore_client *c;
  peerstore_peer_id p = peer_n(1);
  got s = {0}, w = {0};

  snprintf(path, sizeof(path), "%s/absent", f->svc.dir);
  c = conn_no_reconnect(f, path);
  assert_non_null(peerstore_store(c, "ss", &p, "k", "v", 1,
                                  PEERSTORE_EXPIRY_NEVER, PEERSTORE_REPLACE,
                                  store_cb, &s));
  assert_non_null(peerstore_watch(c, "ss", NULL, NULL, record_cb, &w));
  assert_int_equal(harness_run_until(&f->loop, &w.ended, TIMEOUT), 0);
  assert_int_equal(s.ended, 1);
  assert_int_equal(s.status, PEERSTORE_ENOENT);
  assert_int_equal(w.status, PEERSTORE_ENOENT);
  /* Later calls fail the same way, through their callbacks. */
  memset(&s, 0, sizeof(s));
  assert_non_null(peerstore_store(c, "ss", &p, "k", "v", 1,
                                  PEERSTORE_EXPIRY_NEVER, PEERSTORE_REPLACE,
                                  store_cb, &s));
  assert_int_equal(s.calls, 0); /* never from inside the call */
  assert_int_equal(harness_run_until(&f->loop, &s.ended, TIMEOUT), 0);
  assert_int_equal(s.status, PEERSTORE_ENOENT);
  peerstore_disconnect(c, 0);
}

typedef struct states {
  int downs;
  int ups;
  int last_status;
} states;

static void state_cb(void *arg, int up, int status) {
  states *st = arg;

  if (up)
    st->ups++;
  else
    st->downs++;
  st->last_status = status;
}

/* With reconnecting (the default), an absent service is reported down
 * and requests time out; watches wait. */
static void test_timeouts_without_service(void **state) {
  fx *f = *state;
  char path[400];
  peerstore_connect_opts o;
  peerstore_client *c;
  peerstore_peer_id p = peer_n(1);
  peerstore_store_op *sop;
  got s1 = {0}, s2 = {0}, it = {0}, w = {0}, r = {0};
  states st = {0};
  uint64_t t0;

  snprintf(path, sizeof(path), "%s/absent", f->svc.dir);
  peerstore_connect_opts_init(&o);
  o.timeout_ms = 200;
  o.state_cb = state_cb;
  o.state_arg = &st;
  c = peerstore_connect_ex(&f->loop, path, &o);
  assert_non_null(c);
  t0 = uv_now(&f->loop);
  assert_non_null(peerstore_store(c, "ss", &p, "k", "v", 1,
                                  PEERSTORE_EXPIRY_NEVER, PEERSTORE_REPLACE,
                                  store_cb, &s1));
  /* Per call: a longer timeout, and none at all. */
  sop = peerstore_store(c, "ss", &p, "k", "v", 1, PEERSTORE_EXPIRY_NEVER,
                        PEERSTORE_REPLACE, store_cb, &s2);
  assert_non_null(sop);
  peerstore_store_set_timeout(sop, 600);
  assert_non_null(peerstore_iterate(c, "ss", NULL, NULL, record_cb, &it));
  assert_non_null(peerstore_remove(c, "ss", NULL, NULL, remove_cb, &r));
  assert_non_null(peerstore_watch(c, "ss", NULL, NULL, record_cb, &w));
  assert_int_equal(harness_run_until(&f->loop, &s1.ended, TIMEOUT), 0);
  assert_int_equal(s1.status, PEERSTORE_ETIMEDOUT);
  assert_true(uv_now(&f->loop) - t0 >= 200);
  assert_int_equal(harness_run_until(&f->loop, &it.ended, TIMEOUT), 0);
  assert_int_equal(it.status, PEERSTORE_ETIMEDOUT);
  assert_int_equal(harness_run_until(&f->loop, &r.ended, TIMEOUT), 0);
  assert_int_equal(r.status, PEERSTORE_ETIMEDOUT);
  assert_int_equal(s2.ended, 0);
  assert_int_equal(harness_run_until(&f->loop, &s2.ended, TIMEOUT), 0);
  assert_int_equal(s2.status, PEERSTORE_ETIMEDOUT);
  assert_true(uv_now(&f->loop) - t0 >= 600);
  assert_int_equal(w.calls, 0); /* watches have no timeout */
  assert_int_equal(st.downs, 1);
  assert_int_equal(st.ups, 0);
  assert_int_equal(st.last_status, PEERSTORE_ENOENT);
  peerstore_disconnect(c, 0);
}

/* Without reconnecting, the service going away ends the pending work. */
static void test_service_dies(void **state) {
  fx *f = *state;
  peerstore_client *c = conn_no_reconnect(f, f->svc.socket_path);
  got w = {0};

  assert_non_null(peerstore_watch(c, "ss", NULL, NULL, record_cb, &w));
  assert_int_equal(store_wait(f, c, "ss", 1, "k", "v", PEERSTORE_REPLACE), 0);
  assert_int_equal(w.records, 1);
  harness_kill(&f->svc, SIGKILL);
  assert_int_equal(harness_run_until(&f->loop, &w.ended, TIMEOUT), 0);
  assert_int_equal(w.status, PEERSTORE_ECONNRESET);
  peerstore_disconnect(c, 0);
}

/* A listening Unix socket of the test's own, named name in the service's
 * directory (its path in path), standing in for a service. */
static int listen_in(fx *f, const char *name, char *path, size_t size) {
  struct sockaddr_un sa;
  int l;

  snprintf(path, size, "%s/%s", f->svc.dir, name);
  memset(&sa, 0, sizeof(sa));
  sa.sun_family = AF_UNIX;
  assert_true(strlen(path) < sizeof(sa.sun_path));
  strcpy(sa.sun_path, path);
  l = socket(AF_UNIX, SOCK_STREAM, 0);
  assert_true(l >= 0);
  assert_int_equal(bind(l, (struct sockaddr *)&sa, sizeof(sa)), 0);
  assert_int_equal(listen(l, 4), 0);
  return l;
}

/* A peer that shuts down only its reading half: writes fail, and the read
 * side never reports an end.  The client must still end the connection
 * at once, not leave requests to their timeouts. */
static void test_a_peer_that_stops_reading_ends_the_connection(
    void **state) {
  fx *f = *state;
  char path[400];
  peerstore_client *c;
  peerstore_peer_id p = peer_n(1);
  got s = {0};
  peerstore_store_op *op;
  int l, a;

  l = listen_in(f, "half", path, sizeof(path));
  c = conn_no_reconnect(f, path); /* connect(2) is made in the call */
  a = accept(l, NULL, NULL);
  assert_true(a >= 0);
  assert_int_equal(shutdown(a, SHUT_RD), 0);
  op = peerstore_store(c, "ss", &p, "k", "v", 1, PEERSTORE_EXPIRY_NEVER,
                       PEERSTORE_REPLACE, store_cb, &s);
  assert_non_null(op);
  /* No timeout: only noticing the dead peer can end it in time. */
  peerstore_store_set_timeout(op, 0);
  assert_int_equal(harness_run_until(&f->loop, &s.ended, TIMEOUT), 0);
  assert_int_equal(s.status, PEERSTORE_EPIPE);
  peerstore_disconnect(c, 0);
  close(a);
  close(l);
}

/* A service that speaks an older protocol refuses the HELLO with
 * EVERSION: a reconnecting client does not retry - nothing would change
 * - and every operation ends with that status. */
static void test_an_older_service_fails_everything_with_eversion(
    void **state) {
  fx *f = *state;
  peerstore__buf b = {0};
  peerstore_connect_opts o;
  char path[400];
  peerstore_client *c;
  peerstore_peer_id p = peer_n(1);
  got s = {0};
  int l, a;

  l = listen_in(f, "old", path, sizeof(path));
  peerstore_connect_opts_init(&o);
  o.timeout_ms = 0;
  c = peerstore_connect_ex(&f->loop, path, &o); /* reconnecting */
  assert_non_null(c);
  assert_non_null(peerstore_store(c, "ss", &p, "k", "v", 1,
                                  PEERSTORE_EXPIRY_NEVER, PEERSTORE_REPLACE,
                                  store_cb, &s));
  a = accept(l, NULL, NULL);
  assert_true(a >= 0);
  assert_int_equal(peerstore__put_error(&b, 0, PEERSTORE_EVERSION,
                                        "version 2 only"),
                   0);
  assert_int_equal(send(a, b.data, b.len, MSG_NOSIGNAL), (ssize_t)b.len);
  close(a);
  assert_int_equal(harness_run_until(&f->loop, &s.ended, TIMEOUT), 0);
  assert_int_equal(s.status, PEERSTORE_EVERSION);
  peerstore_disconnect(c, 0);
  assert_int_equal(harness_drain(&f->loop, TIMEOUT), 0);
  peerstore__buf_free(&b);
  close(l);
}

typedef struct killer {
  fx *f;
  int records;
  int ended;
  int status;
} killer;

/* Kills the service in the middle of an iteration. */
static void kill_in_iteration(void *arg, const peerstore_record *rec,
                              int status) {
  killer *k = arg;

  if (rec == NULL) {
    k->ended++;
    k->status = status;
    return;
  }
  if (++k->records == 1)
    harness_kill(&k->f->svc, SIGKILL);
}

/* The service dies and comes back: the client reconnects by itself,
 * reports down and up, ends the iteration in flight with EINTERRUPTED,
 * sends the store made while down, and its watch resumes - or, from a
 * memory service that kept nothing, says it cannot (ECOMPACTED), never
 * going on silently past the stores it missed. */
static int plugin_is_sqlite(void) {
  const char *p = getenv("PEERSTORE_TEST_PLUGIN");
  return p != NULL && strcmp(p, "sqlite") == 0;
}

static void test_reconnect(void **state) {
  fx *f = *state;
  peerstore_connect_opts o;
  peerstore_client *c, *other;
  peerstore_peer_id p = peer_n(2);
  got w = {0}, s = {0}, g;
  states st = {0};
  killer k = {f, 0, 0, 0};
  int i;

  peerstore_connect_opts_init(&o);
  o.state_cb = state_cb;
  o.state_arg = &st;
  c = peerstore_connect_ex(&f->loop, f->svc.socket_path, &o);
  assert_non_null(c);
  assert_non_null(peerstore_watch(c, "ss", &p, "k", record_cb, &w));
  /* Enough records that the iteration is still going when it is cut. */
  for (i = 0; i < 3000; i++) {
    char key[16];
    snprintf(key, sizeof(key), "k%d", i);
    assert_non_null(peerstore_store(c, "big", &p, key, "v", 1,
                                    PEERSTORE_EXPIRY_NEVER, PEERSTORE_REPLACE,
                                    NULL, NULL));
  }
  assert_int_equal(store_wait(f, c, "ss", 2, "k", "before", PEERSTORE_REPLACE),
                   0);
  assert_int_equal(st.ups, 1);
  assert_int_equal(w.records, 1);

  assert_non_null(peerstore_iterate(c, "big", NULL, NULL, kill_in_iteration,
                                    &k));
  assert_int_equal(harness_run_until(&f->loop, &k.ended, TIMEOUT), 0);
  assert_int_equal(k.status, PEERSTORE_EINTERRUPTED);
  assert_true(k.records < 3000);
  assert_int_equal(st.downs, 1);

  /* Made while the service is down: sent once it is back. */
  assert_non_null(peerstore_store(c, "ss", &p, "k", "while-down", 10,
                                  PEERSTORE_EXPIRY_NEVER, PEERSTORE_MULTIPLE,
                                  store_cb, &s));
  assert_int_equal(harness_restart(&f->svc, NULL), 0);
  assert_int_equal(harness_run_until(&f->loop, &s.ended, TIMEOUT), 0);
  assert_int_equal(s.status, 0);
  assert_int_equal(st.ups, 2);

  if (!plugin_is_sqlite()) {
    assert_int_equal(harness_run_until(&f->loop, &w.ended, TIMEOUT), 0);
    assert_int_equal(w.status, PEERSTORE_ECOMPACTED);
    assert_non_null(peerstore_watch(c, "ss", &p, "k", record_cb, &w));
    w.ended = 0;
    w.status = 0;
    assert_int_equal(harness_wait_stat(&f->loop, c, "watches", 1, TIMEOUT),
                     0);
  }
  /* The watch is there again: another client's store reaches it. */
  other = conn(f);
  assert_int_equal(store_wait(f, other, "ss", 2, "k", "after",
                              PEERSTORE_MULTIPLE),
                   0);
  /* Resumed, it had the store made while it was down, too. */
  assert_int_equal(harness_run_until_ge(&f->loop, &w.records,
                                        plugin_is_sqlite() ? 3 : 2, TIMEOUT),
                   0);
  if (plugin_is_sqlite())
    assert_string_equal(w.values[1], "while-down");
  assert_string_equal(w.values[w.records - 1], "after");
  assert_int_equal(w.ended, 0);
  /* The store made while down is there, before the later one (a memory
   * service lost "before"; a database kept it). */
  iterate_wait(f, other, "ss", &p, "k", &g);
  assert_true(g.records >= 2);
  assert_string_equal(g.values[g.records - 2], "while-down");
  assert_string_equal(g.values[g.records - 1], "after");
  peerstore_disconnect(other, 0);
  peerstore_disconnect(c, 0);
}

/* Every status of the list has its own name and message; libuv's own
 * are named by libuv; anything else is "unknown", never NULL. */
static void test_every_status_has_a_name_and_a_message(void **state) {
  static const int codes[] = {
#define CODE(name, val, msg) val,
      PEERSTORE_ERRNO_MAP(CODE)
#undef CODE
  };
  size_t i, j, n = sizeof(codes) / sizeof(codes[0]);

  (void)state;
  for (i = 0; i < n; i++) {
    assert_true(codes[i] < 0);
    assert_string_not_equal(peerstore_strerror(codes[i]), "unknown error");
    assert_memory_equal(peerstore_err_name(codes[i]), "PEERSTORE_E", 11);
    for (j = 0; j < i; j++)
      assert_string_not_equal(peerstore_err_name(codes[i]),
                              peerstore_err_name(codes[j]));
  }
  assert_string_equal(peerstore_err_name(PEERSTORE_ETOOBIG),
                      "PEERSTORE_ETOOBIG");
  assert_string_equal(peerstore_strerror(0), "success");
  assert_string_equal(peerstore_strerror(PEERSTORE_EINVAL),
                      "invalid argument");
  assert_string_equal(peerstore_strerror(UV_EAI_AGAIN),
                      uv_strerror(UV_EAI_AGAIN));
  assert_string_equal(peerstore_err_name(UV_EAI_AGAIN), "EAI_AGAIN");
  assert_string_equal(peerstore_strerror(-29999), "unknown error");
  assert_string_equal(peerstore_strerror(12345), "unknown error");
  assert_string_equal(peerstore_err_name(12345), "PEERSTORE_EUNKNOWN");
}

/* A service that welcomes, then answers with a malformed frame: the
 * client reconnects, but backs off more each time - a protocol error is
 * not a healthy connection, so the WELCOME before it resets nothing
 * (before: a reconnect every 5 ms, resending everything, forever). */
typedef struct bad_service {
  uv_pipe_t listener;
  uint64_t at[8]; /* when each connection came, ns */
  int accepts;
} bad_service;

static void bad_conn_closed(uv_handle_t *h) { free(h); }

static void bad_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  static char sink[4096];
  (void)h;
  (void)hint;
  *buf = uv_buf_init(sink, sizeof(sink));
}

static void bad_read(uv_stream_t *st, ssize_t n, const uv_buf_t *buf) {
  (void)buf;
  if (n < 0)
    uv_close((uv_handle_t *)st, bad_conn_closed);
}

static void bad_connection(uv_stream_t *l, int status) {
  bad_service *b = l->data;
  uv_pipe_t *p = malloc(sizeof(*p));
  peerstore__buf out = {0};
  peerstore__header h = {0, PEERSTORE_MSG_STATS_RESULT, 1, 7};
  uv_buf_t ub;

  assert_int_equal(status, 0);
  assert_non_null(p);
  uv_pipe_init(l->loop, p, 0);
  assert_int_equal(uv_accept(l, (uv_stream_t *)p), 0);
  if (b->accepts < 8)
    b->at[b->accepts] = uv_hrtime();
  b->accepts++;
  assert_int_equal(peerstore__put_welcome(&out, PEERSTORE_PROTOCOL_VERSION, 1024, 0), 0);
  /* A header with a reserved flag set: no client may accept it. */
  assert_int_equal(peerstore__buf_reserve(&out, PEERSTORE_HEADER_SIZE), 0);
  peerstore__wire_put_header(out.data + out.len, &h);
  out.len += PEERSTORE_HEADER_SIZE;
  ub = uv_buf_init((char *)out.data, (unsigned)out.len);
  assert_int_equal(uv_try_write((uv_stream_t *)p, &ub, 1), (int)out.len);
  peerstore__buf_free(&out);
  uv_read_start((uv_stream_t *)p, bad_alloc, bad_read);
}

static void stats_ignore_cb(void *arg, int status, const peerstore_stat *st,
                            size_t n) {
  (void)arg;
  (void)status;
  (void)st;
  (void)n;
}

static void test_malformed_replies_make_the_client_back_off(void **state) {
  fx *f = *state;
  bad_service b;
  char path[400];
  peerstore_connect_opts o;
  peerstore_client *c;
  states st = {0};
  int k;

  memset(&b, 0, sizeof(b));
  snprintf(path, sizeof(path), "%s/bad", f->svc.dir);
  uv_pipe_init(&f->loop, &b.listener, 0);
  b.listener.data = &b;
  assert_int_equal(uv_pipe_bind(&b.listener, path), 0);
  assert_int_equal(uv_listen((uv_stream_t *)&b.listener, 8, bad_connection),
                   0);
  peerstore_connect_opts_init(&o);
  o.backoff_min_ms = 50;
  o.backoff_max_ms = 5000;
  o.timeout_ms = 0;
  o.state_cb = state_cb;
  o.state_arg = &st;
  c = peerstore_connect_ex(&f->loop, path, &o);
  assert_non_null(c);
  assert_non_null(peerstore_stats(c, stats_ignore_cb, NULL));
  assert_int_equal(harness_run_until_ge(&f->loop, &b.accepts, 5, TIMEOUT),
                   0);
  /* The k-th retry waits at least half of 50 ms * 2^(k-1) (jitter takes
   * up to half): lower bounds, which a busy machine only exceeds - less
   * libuv's timer granularity, a millisecond (CI saw 24.x ms for 25). */
  for (k = 1; k < 5; k++) {
    uint64_t gap_us = (b.at[k] - b.at[k - 1]) / 1000;
    print_message("retry %d after %llu us\n", k, (unsigned long long)gap_us);
    assert_true(gap_us + 1000 >= (50u << (k - 1)) / 2 * 1000);
  }
  assert_int_equal(st.last_status, PEERSTORE_EPROTO);
  assert_true(st.downs >= 1);
  peerstore_disconnect(c, 0);
  uv_close((uv_handle_t *)&b.listener, NULL);
  assert_int_equal(harness_drain(&f->loop, TIMEOUT), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_store_replace_multiple, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_iterate_filters, setup, teardown),
      cmocka_unit_test_setup_teardown(
          test_iteration_returns_every_record_past_the_credit_window, setup,
          teardown),
      cmocka_unit_test_setup_teardown(test_watch_filters_other_client, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_watch_before_ack, setup, teardown),
      cmocka_unit_test_setup_teardown(
          test_watchers_hear_a_store_before_its_writer_across_clients, setup,
          teardown),
      cmocka_unit_test_setup_teardown(test_disconnect_sync_first, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_no_callback_after_disconnect,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(test_cancel_inside_callback, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_disconnect_inside_callback, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(
          test_values_verbatim_up_to_the_limit_and_refused_past_it, setup,
          teardown),
      cmocka_unit_test_setup_teardown(test_invalid_arguments, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_expiry_and_remove, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_no_service, setup, teardown),
      cmocka_unit_test_setup_teardown(test_timeouts_without_service, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_service_dies, setup, teardown),
      cmocka_unit_test_setup_teardown(
          test_a_peer_that_stops_reading_ends_the_connection, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(
          test_an_older_service_fails_everything_with_eversion, setup,
          teardown),
      cmocka_unit_test_setup_teardown(test_reconnect, setup, teardown),
      cmocka_unit_test_setup_teardown(
          test_malformed_replies_make_the_client_back_off, setup, teardown),
      cmocka_unit_test(test_every_status_has_a_name_and_a_message),
  };
  return cmocka_run_group_tests_name("api", tests, NULL, NULL);
}
