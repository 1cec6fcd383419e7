/* workloads.c - the fixed workloads, through a real peerstored, each
 * printed beside the limit it is compared with (see bench/README.md). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bench.h"

/* ------------------------------------------------------------------ */
/* Plumbing                                                            */

typedef struct ctx {
  uv_loop_t loop;
  peerstore_client *c;
  int acks;
  int failed;
  int done;
  int count;
  int limit;
  double deadline;
} ctx;

static void ctx_open(ctx *x, harness_svc *svc) {
  memset(x, 0, sizeof(*x));
  uv_loop_init(&x->loop);
  x->c = peerstore_connect(&x->loop, svc->socket_path);
  if (x->c == NULL)
    bench_die("connect");
}

static void ctx_close(ctx *x) {
  peerstore_disconnect(x->c, 0);
  uv_run(&x->loop, UV_RUN_DEFAULT);
  uv_loop_close(&x->loop);
}

static void ack_cb(void *arg, int status) {
  ctx *x = arg;

  x->acks++;
  if (status != 0)
    x->failed++;
}

static void store_one(ctx *x, int i, const void *value, size_t size,
                      peerstore_store_cb cb) {
  peerstore_peer_id p;
  char key[32];

  bench_record(i, &p, key, sizeof(key));
  if (peerstore_store(x->c, "bench", &p, key, value, size,
                      PEERSTORE_EXPIRY_NEVER, PEERSTORE_REPLACE, cb,
                      x) == NULL)
    bench_die("store refused");
}

static void wait_for(ctx *x, int *counter, int target) {
  if (harness_run_until_ge(&x->loop, counter, target, 600000) != 0)
    bench_die("timed out");
}

double pipelined(harness_svc *svc, int n) {
  static uint8_t value[VALUE_SIZE];
  ctx x;
  double t0;
  int i;

  ctx_open(&x, svc);
  t0 = bench_now();
  for (i = 0; i < n; i++) {
    value[0] = (uint8_t)i;
    store_one(&x, i, value, sizeof(value), ack_cb);
  }
  wait_for(&x, &x.acks, n);
  if (x.failed)
    bench_die("pipelined stores failed");
  bench_mark("pipelined", t0);
  t0 = n / (bench_now() - t0);
  ctx_close(&x);
  return t0;
}

static void seq_cb(void *arg, int status) {
  static uint8_t value[VALUE_SIZE];
  ctx *x = arg;

  if (status != 0)
    bench_die("sequential store failed");
  x->acks++;
  if (x->acks < x->limit && bench_now() < x->deadline)
    store_one(x, x->acks, value, sizeof(value), seq_cb);
  else
    x->done = 1;
}

double sequential(harness_svc *svc, int n) {
  static uint8_t value[VALUE_SIZE];
  ctx x;
  double t0, r;

  ctx_open(&x, svc);
  x.limit = n;
  t0 = bench_now();
  x.deadline = t0 + bench.seconds;
  store_one(&x, 0, value, sizeof(value), seq_cb);
  wait_for(&x, &x.done, 1);
  bench_mark("sequential", t0);
  r = x.acks / (bench_now() - t0);
  ctx_close(&x);
  return r;
}

static void batch_cb(void *arg, int status, uint64_t first) {
  ctx *x = arg;

  (void)first;
  x->acks++;
  if (status != 0)
    x->failed++;
}

/* 1,000 stores, rounds times over: as one batch each round, and as 1,000
 * pipelined stores each round (every round awaited before the next).
 * Stores per second of each; a batch should cost about one commit. */
static void batch_vs_pipelined(harness_svc *svc, int rounds, double *batched,
                               double *piped) {
  static uint8_t value[VALUE_SIZE];
  peerstore_peer_id p;
  char key[32];
  double t0;
  ctx x;
  int r, i;

  ctx_open(&x, svc);
  t0 = bench_now();
  for (r = 0; r < rounds; r++) {
    peerstore_batch *b = peerstore_batch_new(x.c);

    for (i = 0; i < 1000; i++) {
      value[0] = (uint8_t)r;
      bench_record(i, &p, key, sizeof(key));
      if (peerstore_batch_store(b, "batch", &p, key, value, sizeof(value),
                                PEERSTORE_EXPIRY_NEVER,
                                PEERSTORE_REPLACE) != 0)
        bench_die("batch store refused");
    }
    if (peerstore_batch_commit(b, batch_cb, &x) == NULL)
      bench_die("batch refused");
    wait_for(&x, &x.acks, r + 1);
  }
  *batched = rounds * 1000.0 / (bench_now() - t0);
  if (x.failed)
    bench_die("batches failed");
  x.acks = 0;
  t0 = bench_now();
  for (r = 0; r < rounds; r++) {
    for (i = 0; i < 1000; i++) {
      value[0] = (uint8_t)r;
      store_one(&x, i, value, sizeof(value), ack_cb);
    }
    wait_for(&x, &x.acks, (r + 1) * 1000);
  }
  bench_mark("rounds", t0);
  *piped = rounds * 1000.0 / (bench_now() - t0);
  if (x.failed)
    bench_die("pipelined stores failed");
  ctx_close(&x);
}

static void batch_rows(harness_svc *svc, const char *figure, int rounds) {
  double batched, piped;

  batch_vs_pipelined(svc, rounds, &batched, &piped);
  bench_row(figure, batched, "/s", "1,000 pipelined stores", piped, 0);
}

/* Resets the process's peak RSS (VmHWM) to its current RSS. */
static void reset_peak(const harness_svc *s) {
  char path[64];
  FILE *f;

  snprintf(path, sizeof(path), "/proc/%d/clear_refs", (int)s->pid);
  if ((f = fopen(path, "w")) != NULL) {
    fputs("5", f);
    fclose(f);
  }
}

/* ------------------------------------------------------------------ */
/* W1: store-watch chain                                               */

typedef struct chain {
  ctx x;
  peerstore_peer_id p;
  int n;
  int target;
} chain;

static void chain_store(chain *ch) {
  uint32_t v = (uint32_t)ch->n;

  if (peerstore_store(ch->x.c, "chain", &ch->p, "k", &v, sizeof(v),
                      PEERSTORE_EXPIRY_NEVER, PEERSTORE_REPLACE, NULL,
                      NULL) == NULL)
    bench_die("store refused");
}

static void chain_cb(void *arg, const peerstore_record *rec, int status) {
  chain *ch = arg;

  if (rec == NULL)
    bench_die(peerstore_strerror(status));
  if (++ch->n < ch->target)
    chain_store(ch);
  else
    ch->x.done = 1;
}

static double w1_chain(harness_svc *svc, int n) {
  chain ch;
  double t0, r;

  memset(&ch, 0, sizeof(ch));
  ctx_open(&ch.x, svc);
  ch.target = n;
  if (peerstore_watch(ch.x.c, "chain", &ch.p, "k", chain_cb, &ch) == NULL)
    bench_die("watch");
  t0 = bench_now();
  chain_store(&ch);
  wait_for(&ch.x, &ch.x.done, 1);
  r = n / (bench_now() - t0);
  ctx_close(&ch.x);
  return r;
}

/* ------------------------------------------------------------------ */
/* W3: iterations                                                      */

typedef struct iter {
  ctx *x;
  long records;
  int ended;
} iter;

static void iter_cb(void *arg, const peerstore_record *rec, int status) {
  iter *it = arg;

  if (rec != NULL) {
    bench_consume(&it->records, rec);
    return;
  }
  if (status != 0)
    bench_die(peerstore_strerror(status));
  it->x->done++;
}

/* n iterations at once, filtered by peer (by_peer) or key; returns
 * iterations per second and the records they returned. */
static double iterate_many(harness_svc *svc, int n, int by_peer,
                           long *records) {
  iter *its = calloc((size_t)n, sizeof(*its));
  ctx x;
  double t0, r;
  int i;

  ctx_open(&x, svc);
  t0 = bench_now();
  for (i = 0; i < n; i++) {
    peerstore_peer_id p;
    char key[32];
    bench_record(by_peer ? i * KEYS : i, &p, key, sizeof(key));
    its[i].x = &x;
    if (peerstore_iterate(x.c, "bench", by_peer ? &p : NULL,
                          by_peer ? NULL : key, iter_cb, &its[i]) == NULL)
      bench_die("iterate refused");
  }
  wait_for(&x, &x.done, n);
  r = n / (bench_now() - t0);
  for (i = 0, *records = 0; i < n; i++)
    *records += its[i].records;
  ctx_close(&x);
  free(its);
  return r;
}

/* Iterates (ss) over everything, rounds times: records per second, the
 * median of the rounds (one round is tens of milliseconds, shorter than
 * the noise of a shared machine). */
static double iterate_all(harness_svc *svc, long *records, int rounds) {
  double *rate = calloc((size_t)rounds, sizeof(*rate)), t0, p50, p99;
  ctx x;
  int i;

  if (rate == NULL)
    bench_die("out of memory");
  ctx_open(&x, svc);
  for (i = 0; i < rounds; i++) {
    iter it = {0};

    it.x = &x;
    x.done = 0;
    t0 = bench_now();
    if (peerstore_iterate(x.c, "bench", NULL, NULL, iter_cb, &it) == NULL)
      bench_die("iterate refused");
    wait_for(&x, &x.done, 1);
    bench_mark("iterate", t0);
    rate[i] = it.records / (bench_now() - t0);
    *records = it.records;
  }
  ctx_close(&x);
  bench_percentiles(rate, (size_t)rounds, &p50, &p99);
  free(rate);
  return p50;
}

/* ------------------------------------------------------------------ */
/* W6: catching up from the history                                    */

typedef struct catchup {
  ctx *x;
  long events;
  long want;
} catchup;

static void catchup_cb(void *arg, const peerstore_event *ev, int status) {
  catchup *k = arg;

  if (ev == NULL)
    bench_die(peerstore_strerror(status));
  if (ev->rec != NULL && ++k->events == k->want)
    k->x->done = 1;
}

static int64_t stat_of(ctx *x, const char *name) {
  int64_t v = harness_stat(&x->loop, x->c, name, 600000);

  if (v < 0)
    bench_die(name);
  return v;
}

/* A watcher (with REMOVALS) resuming from revision `from`, after which
 * the history holds `events` changes of subsystem "bench": events per
 * second it receives. */
static double catch_up(harness_svc *svc, uint64_t from, long events) {
  peerstore_watch_opts o;
  catchup k = {0};
  ctx x;
  double t0, r;

  ctx_open(&x, svc);
  memset(&o, 0, sizeof(o));
  o.flags = PEERSTORE_WATCH_REMOVALS;
  o.from_revision = from;
  if (from < (uint64_t)stat_of(&x, "history_first"))
    bench_die("the history does not reach back to the catch-up point");
  k.x = &x;
  k.want = events;
  t0 = bench_now();
  if (peerstore_watch_ex(x.c, "bench", NULL, NULL, &o, catchup_cb, &k) ==
      NULL)
    bench_die("watch refused");
  wait_for(&x, &x.done, 1);
  r = k.events / (bench_now() - t0);
  ctx_close(&x);
  return r;
}

/* The service's revision now. */
static uint64_t revision_of(harness_svc *svc) {
  ctx x;
  uint64_t r;

  ctx_open(&x, svc);
  r = (uint64_t)stat_of(&x, "revision");
  ctx_close(&x);
  return r;
}

/* What the history holds per event after n REPLACE stores over 1,000
 * records (each drops the value before it: two events, and a record the
 * history keeps), from the service's counters: bytes / events held (for
 * sqlite, per row of its history table). */
static double history_bytes_per_event(harness_svc *svc, int n) {
  static uint8_t value[VALUE_SIZE];
  double per;
  int64_t events;
  ctx x;
  int i;

  ctx_open(&x, svc);
  for (i = 0; i < n; i++) {
    value[0] = (uint8_t)i;
    value[1] = (uint8_t)(i >> 8);
    store_one(&x, i % 1000, value, sizeof(value), ack_cb);
  }
  wait_for(&x, &x.acks, n);
  events = stat_of(&x, "history_events");
  per = events > 0 ? (double)stat_of(&x, "history_bytes") / (double)events
                   : 0;
  ctx_close(&x);
  return per;
}

/* ------------------------------------------------------------------ */
/* W4: fan-out                                                         */

typedef struct fan {
  ctx writer;
  uv_loop_t *loop;
  peerstore_client *watchers[FANOUT];
  peerstore_peer_id p;
  double *lat;
  int nlat;
  int stores;
  int target;
  int paced; /* 1: the next store waits until all 50 heard this one */
} fan;

static void fan_store(fan *f) {
  double now = bench_now();

  if (peerstore_store(f->writer.c, "fan", &f->p, "k", &now, sizeof(now),
                      PEERSTORE_EXPIRY_NEVER, PEERSTORE_REPLACE, NULL,
                      NULL) == NULL)
    bench_die("store refused");
}

static void fan_cb(void *arg, const peerstore_record *rec, int status) {
  fan *f = arg;
  double sent;

  if (rec == NULL)
    bench_die(peerstore_strerror(status));
  memcpy(&sent, rec->value, sizeof(sent));
  f->lat[f->nlat++] = bench_now() - sent;
  if (!f->paced) {
    if (f->nlat == f->target * FANOUT)
      f->writer.done = 1;
    return;
  }
  /* The next store once every watcher has this one. */
  if (f->nlat % FANOUT == 0) {
    if (++f->stores < f->target)
      fan_store(f);
    else
      f->writer.done = 1;
  }
}

void w4_fanout(harness_svc *writer, harness_svc *svc, int n, int paced,
               double *rate, double *p50, double *p99) {
  fan f;
  double t0;
  int i;

  memset(&f, 0, sizeof(f));
  ctx_open(&f.writer, writer);
  f.target = n;
  f.paced = paced;
  f.lat = calloc((size_t)n * FANOUT, sizeof(*f.lat));
  for (i = 0; i < FANOUT; i++) {
    f.watchers[i] = peerstore_connect(&f.writer.loop, svc->socket_path);
    if (peerstore_watch(f.watchers[i], "fan", &f.p, "k", fan_cb, &f) == NULL)
      bench_die("watch");
  }
  /* A round trip on every watcher: their watches are registered. */
  for (i = 0; i < FANOUT; i++)
    peerstore_remove(f.watchers[i], "none", NULL, NULL, NULL, NULL);
  {
    int never = 0;
    (void)harness_run_until(&f.writer.loop, &never, 200);
  }
  t0 = bench_now();
  if (paced) {
    fan_store(&f);
  } else {
    for (i = 0; i < n; i++)
      fan_store(&f);
  }
  wait_for(&f.writer, &f.writer.done, 1);
  *rate = f.nlat / (bench_now() - t0);
  bench_percentiles(f.lat, (size_t)f.nlat, p50, p99);
  for (i = 0; i < FANOUT; i++)
    peerstore_disconnect(f.watchers[i], 0);
  free(f.lat);
  ctx_close(&f.writer);
}

static void fanout_rows(harness_svc *svc) {
  double rate, p50, p99, raw50, raw99;

  w4_fanout(svc, svc, 1000, 0, &rate, &p50, &p99);
  bench_fact("W4 fan-out 50 watchers", rate, "notif/s");
  limit_fanout(1000, &raw50, &raw99);
  w4_fanout(svc, svc, 1000, 1, &rate, &p50, &p99);
  bench_fact("W4 one store at a time", rate, "notif/s");
  bench_row("W4 latency median (paced)", p50 * 1e6, "us", "relay to 50 sockets",
            raw50 * 1e6, 1);
  bench_row("W4 latency p99 (paced)", p99 * 1e6, "us", "relay to 50 sockets",
            raw99 * 1e6, 1);
}

/* W6 on a service of its own (W2's stores are the whole history, within
 * the default 100,000 events), and the history's size per event. */
static void history_rows(double w3) {
  int n = bench.records < 100000 ? bench.records : 100000;
  harness_svc svc;
  uint64_t from;
  ctx x;
  double per;

  if (harness_start(&svc, NULL) != 0)
    bench_die("cannot start peerstored");
  from = revision_of(&svc);
  (void)pipelined(&svc, n);
  bench_row("W6 catch-up from the history", catch_up(&svc, from, n), "ev/s",
            "W3 iterate", w3, 0);
  ctx_open(&x, &svc);
  per = (double)stat_of(&x, "history_bytes") /
        (double)stat_of(&x, "history_events");
  ctx_close(&x);
  bench_fact("W6 history bytes per event (stores)", per, "B");
  bench_fact("W6 history bytes per event (REPLACE churn)",
             history_bytes_per_event(&svc, n), "B");
  harness_stop(&svc);
}

/* W2 (into an empty store), the same stores again over the records W2
 * left (REPLACE drops each: the history keeps what it drops) and W4, on
 * a fresh service keeping the default history and on one keeping none,
 * three rounds alternating between the two (these figures are short and
 * the machine noisy): the best of each. */
static void history_off_rows(void) {
  static const char *const off[] = {"-o", "history_events=0", NULL};
  double w2[2] = {0, 0}, again[2] = {0, 0}, w4[2] = {0, 0}, r, p50, p99;
  harness_svc svc;
  int round, k;

  for (round = 0; round < 3; round++) {
    for (k = 0; k < 2; k++) {
      if (harness_start(&svc, k == 0 ? NULL : off) != 0)
        bench_die("cannot start peerstored");
      if ((r = pipelined(&svc, bench.records)) > w2[k])
        w2[k] = r;
      if ((r = pipelined(&svc, bench.records)) > again[k])
        again[k] = r;
      w4_fanout(&svc, &svc, 1000, 0, &r, &p50, &p99);
      if (r > w4[k])
        w4[k] = r;
      harness_stop(&svc);
    }
  }
  bench_row("W2 with the history (best of 3)", w2[0], "/s",
            "W2, history off", w2[1], 0);
  bench_row("W2 again, REPLACE over it, history", again[0], "/s",
            "the same, history off", again[1], 0);
  bench_row("W4 fan-out with the history (best of 3)", w4[0], "notif/s",
            "W4, history off", w4[1], 0);
}

/* W4 alone, on a service of its own (--only fanout). */
void workloads_iterate(void) {
  harness_svc svc;
  long n;

  if (harness_start(&svc, NULL) != 0)
    bench_die("cannot start peerstored");
  (void)pipelined(&svc, bench.records);
  {
    double w3 = iterate_all(&svc, &n, 51);
    bench_row("W3 iterate (ss), records", w3, "rec/s", "in-process walk",
              limit_memory_walk(bench.records, 51), 0);
    bench_row("W3 iterate (ss), records", w3, "rec/s", "its bytes, socket only",
              limit_record_stream(bench.records, 51), 0);
  }
  harness_stop(&svc);
}

void workloads_fanout(void) {
  harness_svc svc;

  if (harness_start(&svc, NULL) != 0)
    bench_die("cannot start peerstored");
  fanout_rows(&svc);
  harness_stop(&svc);
}

/* ------------------------------------------------------------------ */
/* The memory plugin                                                   */

void workloads_memory(void) {
  double pingpong = limit_pingpong_libuv(), stream = limit_stream_per_message();
  double hash = limit_hash_inserts(bench.records);
  double walk = limit_memory_walk(bench.records, 5);
  double w1, w2, w3, per_peer, per_key;
  long before, after, peak, n, recs;
  harness_svc svc;

  bench_row("limit: ping-pong, blocking", limit_pingpong_blocking(),
            "rt/s", "-", 0, 0);
  if (harness_start(&svc, NULL) != 0)
    bench_die("cannot start peerstored");
  w1 = w1_chain(&svc, 10000);
  bench_row("W1 store-watch chain", w1, "rt/s", "libuv ping-pong", pingpong,
            0);
  before = harness_status_kb(&svc, "VmRSS");
  w2 = pipelined(&svc, bench.records);
  bench_row("W2 pipelined stores", w2, "/s", "stream, 1 write/msg", stream,
            0);
  bench_row("W2 pipelined stores", w2, "/s", "hash table inserts", hash, 0);
  after = harness_status_kb(&svc, "VmRSS");
  bench_fact("W5 service memory per record", (after - before) * 1024.0 /
                                                 bench.records,
             "B");
  reset_peak(&svc);
  before = harness_status_kb(&svc, "VmRSS");
  w3 = iterate_all(&svc, &n, 5);
  peak = harness_status_kb(&svc, "VmHWM");
  bench_row("W3 iterate (ss), records", w3, "rec/s", "in-process walk", walk,
            0);
  bench_fact("W5 peak over W3 (service)", (double)(peak - before), "KiB");
  per_peer = iterate_many(&svc, PEERS, 1, &recs);
  bench_fact("W3 iterate (ss, peer) x 1,000", per_peer, "it/s");
  per_key = iterate_many(&svc, KEYS, 0, &recs);
  bench_fact("W3 iterate (ss, key) x 100", per_key, "it/s");
  fanout_rows(&svc);
  batch_rows(&svc, "batch of 1,000 stores", 100);
  harness_stop(&svc);
  history_rows(w3);
  history_off_rows();

  if (bench.big) {
    /* The same filters over ten times the records: the cost per returned
     * record must not grow with the store. */
    double r100k_peer = per_peer * KEYS, r100k_key = per_key * PEERS;
    int saved = bench.records;

    if (harness_start(&svc, NULL) != 0)
      bench_die("cannot start peerstored");
    bench.records = 1000000;
    (void)pipelined(&svc, bench.records);
    bench.records = saved;
    w3 = iterate_all(&svc, &n, 5);
    bench_fact("W3 iterate (ss) at 1M, records", w3, "rec/s");
    per_peer = iterate_many(&svc, PEERS, 1, &recs) * (recs / PEERS);
    bench_row("W3 (ss, peer) records/s at 1M", per_peer, "rec/s",
              "same at 100k", r100k_peer, 0);
    per_key = iterate_many(&svc, KEYS, 0, &recs) * (recs / (double)KEYS);
    bench_row("W3 (ss, key) records/s at 1M", per_key, "rec/s",
              "same at 100k", r100k_key, 0);
    harness_stop(&svc);
  }
}

/* ------------------------------------------------------------------ */
/* The sqlite plugin                                                   */

/* option: one more "-o NAME=VALUE" for the service, or NULL. */
static int start_sqlite(harness_svc *svc, const char *db, const char *conf,
                        const char *option) {
  const char *args[9] = {"--plugin", "sqlite", "--database", db, "-c", conf,
                         option != NULL ? "-o" : NULL, option, NULL};
  return harness_start(svc, args);
}

/* The most stores a second the service could acknowledge, pinned, if its
 * plugin cost what inserting into a table costs in process (insert_rate)
 * and the rest what W2 costs with the memory plugin: the two one after
 * the other on the same CPU. */
static double w2_floor(double insert_rate) {
  harness_svc svc;
  double mem;

  if (harness_start(&svc, NULL) != 0)
    bench_die("cannot start peerstored");
  mem = pipelined(&svc, bench.records);
  harness_stop(&svc);
  return 1 / (1 / mem + 1 / insert_rate);
}

/* Sequential stores, REPLACEs over W2's records as in the figure beside
 * it, on a database of their own with no history: what keeping the
 * history costs the durable path. */
static double sequential_history_off(void) {
  char db[300], conf[300];
  harness_svc svc;
  double r;

  snprintf(db, sizeof(db), "%s/nohistory.db", bench.dir);
  snprintf(conf, sizeof(conf), "%s/bench.ini", bench.dir);
  if (start_sqlite(&svc, db, conf, "history_events=0") != 0)
    bench_die("cannot start peerstored with the sqlite plugin");
  pipelined(&svc, bench.records);
  r = sequential(&svc, bench.records);
  harness_stop(&svc);
  return r;
}

void workloads_sqlite(void) {
  double raw_batch = limit_sqlite_inserts(bench.records, 1000, SCHEMA_OWN, 0);
  double raw_row = limit_sqlite_inserts(bench.records, 1, SCHEMA_OWN, 0);
  double one_batch =
      limit_sqlite_inserts(bench.records, 1000, SCHEMA_ONE_INDEX, 0);
  double one_row =
      limit_sqlite_inserts(bench.records, 1, SCHEMA_ONE_INDEX, 0);
  double filt_batch =
      limit_sqlite_inserts(bench.records, 1000, SCHEMA_FILTERS, 0);
  double filt_replace =
      limit_sqlite_inserts(bench.records, 1, SCHEMA_FILTERS, 1);
  /* An awaited store cannot beat a libuv round trip plus a one-row
   * transaction, one after the other. */
  double rt = limit_pingpong_libuv();
  double composite = 1 / (1 / rt + 1 / one_row);
  double seq;
  char db[300], conf[300];
  harness_svc svc;
  struct stat st;
  uint64_t from;
  const char *extra;
  double w2;
  FILE *f;

  snprintf(db, sizeof(db), "%s/service.db", bench.dir);
  snprintf(conf, sizeof(conf), "%s/bench.ini", bench.dir);
  if ((f = fopen(conf, "w")) == NULL)
    bench_die("cannot write config");
  /* BENCH_SQLITE_OPTIONS: more lines for the section, to measure an
   * option (bench/README.md). */
  extra = getenv("BENCH_SQLITE_OPTIONS");
  fprintf(f, "[plugin]\nsynchronous = %s\n%s\n", bench.sync_mode,
          extra != NULL ? extra : "");
  fclose(f);
  if (start_sqlite(&svc, db, conf, NULL) != 0)
    bench_die("cannot start peerstored with the sqlite plugin");
  from = revision_of(&svc);
  w2 = pipelined(&svc, bench.records);
  bench_row("sqlite: W2 pipelined stores", w2, "/s",
            "raw inserts, 1000 rows/tx", raw_batch, 0);
  bench_row("sqlite: W2 pipelined stores", w2, "/s",
            "one-index table, 1000/tx", one_batch, 0);
  /* What stops the line above short of 0.5: no plugin that reads every
   * filter in revision order from an index can insert faster than the
   * first, even with no wait for the disk, and none serves stores faster
   * than the second (bench/README.md). */
  bench_row("limit: filters' indexes, no sync", filt_batch, "/s",
            "one-index table, 1000/tx", one_batch, 0);
  bench_row("sqlite: W2 pipelined stores", w2, "/s",
            "memory W2 + filters', no sync", w2_floor(filt_batch), 0);
  {
    long n;
    double w3 = iterate_all(&svc, &n, 5);
    bench_fact("sqlite: W3 iterate (ss), records", w3, "rec/s");
    bench_row("sqlite: W6 catch-up from the history",
              catch_up(&svc, from, bench.records), "ev/s",
              "sqlite W3 iterate", w3, 0);
  }
  seq = sequential(&svc, bench.records);
  bench_row("sqlite: sequential stores", seq, "/s", "raw inserts, 1 row/tx",
            raw_row, 0);
  bench_fact("limit: libuv ping-pong", rt, "rt/s");
  bench_fact("limit: one-index table, 1 row/tx", one_row, "/s");
  bench_row("sqlite: sequential stores", seq, "/s",
            "libuv rt + one-index 1/tx", composite, 0);
  /* What stops the line above short of 0.6: each of these stores
   * replaces a record, in a table with the filters' indexes; the floor
   * below does that with no wait for the disk. */
  bench_fact("limit: filters', REPLACE 1/tx, no sync", filt_replace, "/s");
  bench_row("sqlite: sequential stores", seq, "/s",
            "rt + filters' REPLACE, no sync", 1 / (1 / rt + 1 / filt_replace),
            0);
  bench_fact("sqlite: history bytes per event (REPLACE churn, counted)",
             history_bytes_per_event(&svc, bench.records), "B");
  bench_row("sqlite: sequential stores", seq, "/s",
            "the same, history off", sequential_history_off(), 0);
  batch_rows(&svc, "sqlite: batch of 1,000 stores", 50);
  harness_stop(&svc); /* checkpoints: the file holds everything */
  if (stat(db, &st) == 0)
    bench_fact("W5 database bytes per record",
               (double)st.st_size / bench.records, "B");
  if (bench.big) {
    /* Start-up: from exec to listening, with a million records that the
     * plugin must not load (default page check on, then off). */
    double t0;
    int check;

    bench_make_db(db, 1000000);
    for (check = 1; check >= 0; check--) {
      fprintf((f = fopen(conf, "w")), "[plugin]\ncheck_on_open = %s\n",
              check ? "yes" : "no");
      fclose(f);
      t0 = bench_now();
      if (start_sqlite(&svc, db, conf, NULL) != 0)
        bench_die("cannot start peerstored on the big database");
      bench_fact(check ? "sqlite start-up, 1M records"
                       : "sqlite start-up, 1M, no check",
                 (bench_now() - t0) * 1000, "ms");
      harness_stop(&svc);
    }
  }
}
