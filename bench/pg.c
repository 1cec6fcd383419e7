/* pg.c - the postgres plugin's workloads, on a PostgreSQL server the
 * benchmark starts (tests/pg_cluster.sh, with fsync on: what a deployment
 * runs), beside what libpq alone does against the same server in the
 * same run:
 *
 *  - raw inserts: prepared INSERTs into the plugin's own records table
 *    (its five indexes), 1,000 rows a transaction and one row a
 *    transaction, each statement a round trip, as pgbench sends them;
 *    and 1,000 rows a transaction sent in pipelines, as the plugin does;
 *  - the plugin's own transaction for one store, in one round trip: the
 *    server's floor under an awaited store;
 *  - raw doorbell: one session commits a NOTIFY, another LISTENing
 *    receives it - the floor under a change crossing hosts.
 *
 * Then through peerstored: W2 and sequential stores on one service, W4
 * on one service, and two services on one database - W2 through both at
 * once, and W4 with the writer on one host and the 50 watchers on the
 * other (the cross-host notification latency).
 */
#include <libpq-fe.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

extern const char peerstore_postgres_schema[];
extern const char peerstore_postgres_functions[];

static harness_pg server;
static int db_seq;

/* A fresh database; its conninfo in out. */
static void new_db(char *out, size_t size) {
  char name[32];

  snprintf(name, sizeof(name), "b%d", ++db_seq);
  if (harness_pg_ctl(&server, "createdb", name) != 0)
    bench_die("createdb");
  harness_pg_conninfo(&server, name, out, size);
}

static PGconn *pg_connect(const char *conninfo) {
  PGconn *c = PQconnectdb(conninfo);

  if (PQstatus(c) != CONNECTION_OK)
    bench_die(PQerrorMessage(c));
  return c;
}

static void pg_ok(PGconn *c, PGresult *r) {
  ExecStatusType st = PQresultStatus(r);

  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
    bench_die(PQerrorMessage(c));
  PQclear(r);
}

/* ------------------------------------------------------------------ */
/* Limits                                                              */

/* Reads the results of a pipeline up to its sync. */
static void pipe_results(PGconn *c) {
  PGresult *r;

  for (;;) {
    if ((r = PQgetResult(c)) == NULL) {
      if (PQstatus(c) != CONNECTION_OK || PQpipelineStatus(c) == PQ_PIPELINE_OFF)
        bench_die("pipeline: no sync");
      continue; /* the end of one statement's results */
    }
    if (PQresultStatus(r) == PGRES_PIPELINE_SYNC) {
      PQclear(r);
      return;
    }
    pg_ok(c, r);
  }
}

/* Rows per second into the plugin's records table, rows_per_tx rows a
 * transaction, for bench.seconds (at most n rows); each statement a round
 * trip, or (piped) the rows of a transaction sent in pipelines of 100. */
static double limit_pg_inserts(int n, int rows_per_tx, int piped) {
  static const char value[VALUE_SIZE];
  char conninfo[600], key[32], rev[24];
  const char *v[7];
  int len[7], fmt[7] = {0, 1, 1, 1, 1, 0, 0};
  peerstore_peer_id peer;
  double t0, t;
  PGconn *c;
  int i;

  new_db(conninfo, sizeof(conninfo));
  c = pg_connect(conninfo);
  pg_ok(c, PQexec(c, peerstore_postgres_schema));
  pg_ok(c, PQprepare(c, "ins",
                     "INSERT INTO peerstore_records VALUES ($1, $2, $3, $4, "
                     "$5, $6, $7)",
                     7, NULL));
  v[1] = "bench";
  len[1] = 5;
  v[4] = value;
  len[4] = VALUE_SIZE;
  v[5] = "9223372036854775807";
  v[6] = "0";
  len[0] = len[5] = len[6] = 0;
  t0 = bench_now();
  for (i = 0; i < n; i++) {
    if (i % rows_per_tx == 0) {
      if (i > 0 && rows_per_tx > 1)
        pg_ok(c, PQexec(c, "COMMIT"));
      if (bench_now() - t0 > bench.seconds)
        break;
      if (rows_per_tx > 1)
        pg_ok(c, PQexec(c, "BEGIN"));
    }
    if (piped && i % 100 == 0)
      PQenterPipelineMode(c);
    bench_record(i, &peer, key, sizeof(key));
    snprintf(rev, sizeof(rev), "%d", i + 1);
    v[0] = rev;
    v[2] = (const char *)peer.bytes;
    len[2] = PEERSTORE_PEER_ID_SIZE;
    v[3] = key;
    len[3] = (int)strlen(key);
    if (piped) {
      if (PQsendQueryPrepared(c, "ins", 7, v, len, fmt, 0) != 1)
        bench_die(PQerrorMessage(c));
      if ((i + 1) % 100 == 0 || (i + 1) % rows_per_tx == 0) {
        PQpipelineSync(c);
        pipe_results(c);
        PQexitPipelineMode(c);
      }
    } else {
      pg_ok(c, PQexecPrepared(c, "ins", 7, v, len, fmt, 0));
    }
  }
  if (rows_per_tx > 1 && i % rows_per_tx != 0)
    pg_ok(c, PQexec(c, "COMMIT"));
  t = bench_now() - t0;
  PQfinish(c);
  return i / t;
}

/* The plugin's own transaction for one REPLACE store - begin, the
 * writers' lock, peerstore_store(), the counter written back (with its
 * NOTIFY), commit - sent in one pipeline, one after another: what one
 * awaited store costs the server, with one round trip.  Per second. */
static double limit_pg_own_tx(void) {
  static const char value[VALUE_SIZE];
  char conninfo[600], key[32];
  const char *v[9];
  int len[9], fmt[9] = {1, 1, 1, 1, 0, 0, 0, 0, 0};
  peerstore_peer_id peer;
  double t0;
  PGconn *c;
  int i = 0;

  new_db(conninfo, sizeof(conninfo));
  c = pg_connect(conninfo);
  pg_ok(c, PQexec(c, peerstore_postgres_schema));
  pg_ok(c, PQexec(c, peerstore_postgres_functions));
  pg_ok(c, PQprepare(c, "store",
                     "SELECT * FROM peerstore_store($1, $2, $3, $4, $5, $6, "
                     "$7, $8, $9)",
                     9, NULL));
  v[0] = "bench";
  len[0] = 5;
  v[3] = value;
  len[3] = VALUE_SIZE;
  v[4] = "9223372036854775807";
  v[5] = "0";
  v[6] = "true";
  v[7] = "true";
  v[8] = "0";
  t0 = bench_now();
  do {
    bench_record(i, &peer, key, sizeof(key));
    v[1] = (const char *)peer.bytes;
    len[1] = PEERSTORE_PEER_ID_SIZE;
    v[2] = key;
    len[2] = (int)strlen(key);
    PQenterPipelineMode(c);
    if (PQsendQueryParams(c, "BEGIN", 0, NULL, NULL, NULL, NULL, 0) != 1 ||
        PQsendQueryParams(c, "SELECT * FROM peerstore_lock()", 0, NULL, NULL,
                          NULL, NULL, 0) != 1 ||
        PQsendQueryPrepared(c, "store", 9, v, len, fmt, 0) != 1 ||
        PQsendQueryParams(c, "SELECT peerstore_unlock(1)", 0, NULL, NULL,
                          NULL, NULL, 0) != 1 ||
        PQsendQueryParams(c, "COMMIT", 0, NULL, NULL, NULL, NULL, 0) != 1 ||
        PQpipelineSync(c) != 1)
      bench_die(PQerrorMessage(c));
    pipe_results(c);
    PQexitPipelineMode(c);
    i++;
  } while ((i & 15) || bench_now() - t0 < bench.seconds);
  t0 = i / (bench_now() - t0);
  PQfinish(c);
  return t0;
}

/* One session commits a NOTIFY, another waiting in LISTEN receives it;
 * n times, one at a time.  Latency of each, seconds. */
static void limit_pg_doorbell(int n, double *p50, double *p99) {
  char conninfo[600];
  double *lat = calloc((size_t)n, sizeof(*lat));
  PGconn *tx, *rx;
  int i;

  if (lat == NULL)
    bench_die("out of memory");
  new_db(conninfo, sizeof(conninfo));
  tx = pg_connect(conninfo);
  rx = pg_connect(conninfo);
  pg_ok(rx, PQexec(rx, "LISTEN bench"));
  for (i = 0; i < n; i++) {
    double t0 = bench_now();
    PGnotify *note = NULL;

    pg_ok(tx, PQexec(tx, "NOTIFY bench, '1'"));
    while (note == NULL) {
      struct pollfd p = {PQsocket(rx), POLLIN, 0};
      if (PQconsumeInput(rx) == 0)
        bench_die(PQerrorMessage(rx));
      if ((note = PQnotifies(rx)) != NULL)
        break;
      if (poll(&p, 1, 10000) <= 0)
        bench_die("no notification");
    }
    lat[i] = bench_now() - t0;
    PQfreemem(note);
  }
  bench_percentiles(lat, (size_t)n, p50, p99);
  free(lat);
  PQfinish(tx);
  PQfinish(rx);
}

/* ------------------------------------------------------------------ */
/* Through peerstored                                                  */

static void start_on(harness_svc *svc, const char *conninfo) {
  if (harness_start_postgres(svc, conninfo, NULL) != 0)
    bench_die("cannot start peerstored with the postgres plugin");
}

typedef struct two {
  uv_loop_t loop;
  int acks, failed;
  int first_error; /* the first failure's status, for the message */
} two;

static void two_cb(void *arg, int status) {
  two *t = arg;

  t->acks++;
  if (status != 0 && t->failed++ == 0)
    t->first_error = status;
}

/* W2 through two services at once, half the stores each (records of
 * their own); stores per second over both. */
static double pipelined_two(harness_svc *a, harness_svc *b, int n) {
  static uint8_t value[VALUE_SIZE];
  peerstore_client *c[2];
  peerstore_peer_id p;
  char key[32];
  double t0;
  two t;
  int i;

  memset(&t, 0, sizeof(t));
  uv_loop_init(&t.loop);
  c[0] = peerstore_connect(&t.loop, a->socket_path);
  c[1] = peerstore_connect(&t.loop, b->socket_path);
  if (c[0] == NULL || c[1] == NULL)
    bench_die("connect");
  t0 = bench_now();
  for (i = 0; i < n; i++) {
    bench_record(i, &p, key, sizeof(key));
    if (peerstore_store(c[i & 1], "bench", &p, key, value, sizeof(value),
                        PEERSTORE_EXPIRY_NEVER, PEERSTORE_REPLACE, two_cb,
                        &t) == NULL)
      bench_die("store refused");
  }
  if (harness_run_until_ge(&t.loop, &t.acks, n, 600000) != 0 || t.failed) {
    fprintf(stderr, "bench: %d of %d stores through two services failed, "
                    "the first with %s\n",
            t.failed, n, peerstore_strerror(t.first_error));
    bench_die("stores through two services failed");
  }
  t0 = n / (bench_now() - t0);
  peerstore_disconnect(c[0], 0);
  peerstore_disconnect(c[1], 0);
  uv_run(&t.loop, UV_RUN_DEFAULT);
  uv_loop_close(&t.loop);
  return t0;
}

static void pg_cleanup(void) { harness_pg_ctl(&server, "destroy", NULL); }

void workloads_postgres(void) {
  double raw_batch, raw_piped, raw_row, own_tx, bell50, bell99, w2, rate,
      p50, p99;
  char conninfo[600];
  harness_svc a, b;
  int r;

  /* A deployment's durability: every commit flushed. */
  setenv("PG_FSYNC", "on", 1);
  if ((r = harness_pg_start(&server)) != 0) {
    printf("| postgres: not run (%s) |\n",
           r == 77 ? "PostgreSQL is not installed" : "cannot start it");
    return;
  }
  atexit(pg_cleanup); /* bench_die exits: no server left behind */
  raw_batch = limit_pg_inserts(bench.records, 1000, 0);
  raw_piped = limit_pg_inserts(bench.records, 1000, 1);
  raw_row = limit_pg_inserts(bench.records, 1, 0);
  own_tx = limit_pg_own_tx();
  limit_pg_doorbell(1000, &bell50, &bell99);
  bench_fact("postgres limit: raw inserts, 1000/tx", raw_batch, "rows/s");
  bench_fact("postgres limit: same, pipelined", raw_piped, "rows/s");
  bench_fact("postgres limit: raw inserts, 1/tx", raw_row, "rows/s");
  bench_fact("postgres limit: plugin's tx, 1 RT", own_tx, "tx/s");
  bench_fact("postgres limit: NOTIFY -> LISTEN p50", bell50 * 1e6, "us");
  bench_fact("postgres limit: NOTIFY -> LISTEN p99", bell99 * 1e6, "us");

  /* One service. */
  new_db(conninfo, sizeof(conninfo));
  start_on(&a, conninfo);
  w2 = pipelined(&a, bench.records);
  bench_row("postgres: W2 pipelined stores", w2, "/s",
            "raw inserts, 1000 rows/tx", raw_batch, 0);
  bench_row("postgres: W2 pipelined stores", w2, "/s",
            "same, pipelined", raw_piped, 0);
  {
    double seq = sequential(&a, bench.records);
    bench_row("postgres: sequential stores", seq, "/s",
              "raw inserts, 1 row/tx", raw_row, 0);
    bench_row("postgres: sequential stores", seq, "/s",
              "plugin's tx, 1 RT", own_tx, 0);
  }
  w4_fanout(&a, &a, 1000, 0, &rate, &p50, &p99);
  bench_fact("postgres: W4 fan-out 50 watchers", rate, "notif/s");
  w4_fanout(&a, &a, 1000, 1, &rate, &p50, &p99);
  bench_row("postgres: W4 latency median (paced)", p50 * 1e6, "us",
            "plugin's tx, 1 RT", 1e6 / own_tx, 1);
  bench_row("postgres: W4 latency p99 (paced)", p99 * 1e6, "us",
            "plugin's tx, 1 RT", 1e6 / own_tx, 1);
  harness_stop(&a);

  /* Two services (two hosts) on one database. */
  new_db(conninfo, sizeof(conninfo));
  start_on(&a, conninfo);
  start_on(&b, conninfo);
  bench_row("postgres, 2 hosts: W2 through both", pipelined_two(&a, &b,
                                                             bench.records),
            "/s", "one service's W2", w2, 0);
  w4_fanout(&a, &b, 1000, 0, &rate, &p50, &p99);
  bench_fact("postgres, 2 hosts: W4 fan-out A->B", rate, "notif/s");
  w4_fanout(&a, &b, 1000, 1, &rate, &p50, &p99);
  /* The floor: the writer's transaction, then the doorbell. */
  bench_row("postgres, 2 hosts: W4 cross-host p50", p50 * 1e6, "us",
            "plugin's tx + NOTIFY p50", (1 / own_tx + bell50) * 1e6, 1);
  bench_row("postgres, 2 hosts: W4 cross-host p99", p99 * 1e6, "us",
            "plugin's tx + NOTIFY p99", (1 / own_tx + bell99) * 1e6, 1);
  harness_stop(&a);
  harness_stop(&b);
}
