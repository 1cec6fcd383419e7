/* bench.c - peerstore's benchmarks, each printed beside the raw limit it
 * is compared with, measured in the same run on the same machine (these
 * machines are shared and noisy, so only ratios travel between runs).
 *
 *   sqlite: pipelined stores   100,000 stores (1,000 peers x 100 keys,
 *                              64-byte values, REPLACE) from one client,
 *                              all issued at once, until every ack is in;
 *                              vs SQLite's own inserts, same schema and
 *                              synchronous setting, 1,000 rows a transaction
 *   sqlite: sequential stores  each store awaited before the next;
 *                              vs SQLite's own one-row transactions
 *
 * Usage: bench [--sync NORMAL|FULL] [--records N] [--seconds S]
 * The service binary and plugin are found as `make bench` sets them up
 * (PEERSTORED, PEERSTORE_PLUGIN_PATH).
 */
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"
#include "peerstore.h"

extern const char peerstore_sqlite_schema[];

#define PEERS 1000
#define KEYS 100
#define VALUE_SIZE 64

static const char *sync_mode = "NORMAL";
static int n_records = PEERS * KEYS;
static double seconds = 2.0;
static char dir[256];

static double now_s(void) { return (double)uv_hrtime() / 1e9; }

static void die(const char *what) {
  fprintf(stderr, "bench: %s\n", what);
  exit(1);
}

static void record_of(int i, peerstore_peer_id *p, char *key, size_t keylen) {
  int peer = i / KEYS;

  memset(p, 0, sizeof(*p));
  memcpy(p->bytes, &peer, sizeof(peer));
  snprintf(key, keylen, "key-%d", i % KEYS);
}

/* ------------------------------------------------------------------ */
/* Raw SQLite, in process                                              */

static sqlite3 *raw_open(const char *path) {
  sqlite3 *db;
  char sql[128];

  unlink(path);
  if (sqlite3_open(path, &db) != SQLITE_OK)
    die("cannot open raw database");
  snprintf(sql, sizeof(sql),
           "PRAGMA journal_mode = WAL; PRAGMA synchronous = %s;", sync_mode);
  if (sqlite3_exec(db, sql, NULL, NULL, NULL) != SQLITE_OK ||
      sqlite3_exec(db, peerstore_sqlite_schema, NULL, NULL, NULL) != SQLITE_OK)
    die("cannot create raw schema");
  return db;
}

/* Inserts rows with rows_per_tx rows a transaction, for at most n rows or
 * the time budget; returns rows per second. */
static double raw_inserts(int n, int rows_per_tx) {
  char path[300], key[32];
  uint8_t value[VALUE_SIZE];
  peerstore_peer_id p;
  sqlite3 *db;
  sqlite3_stmt *st;
  double t0, t;
  int i;

  snprintf(path, sizeof(path), "%s/raw.db", dir);
  db = raw_open(path);
  memset(value, 0x5a, sizeof(value));
  if (sqlite3_prepare_v2(db,
                         "INSERT INTO records (revision, subsystem, peer, "
                         "key, value, expiry) VALUES (?, ?, ?, ?, ?, ?)",
                         -1, &st, NULL) != SQLITE_OK)
    die("cannot prepare raw insert");
  t0 = now_s();
  for (i = 0; i < n; i++) {
    if (i % rows_per_tx == 0) {
      if (i > 0 && now_s() - t0 > seconds)
        break;
      sqlite3_exec(db, "BEGIN", NULL, NULL, NULL);
    }
    record_of(i, &p, key, sizeof(key));
    sqlite3_bind_int64(st, 1, i + 1);
    sqlite3_bind_blob(st, 2, "bench", 5, SQLITE_STATIC);
    sqlite3_bind_blob(st, 3, p.bytes, 32, SQLITE_STATIC);
    sqlite3_bind_blob(st, 4, key, (int)strlen(key), SQLITE_STATIC);
    sqlite3_bind_blob(st, 5, value, sizeof(value), SQLITE_STATIC);
    sqlite3_bind_int64(st, 6, INT64_MAX);
    if (sqlite3_step(st) != SQLITE_DONE)
      die("raw insert failed");
    sqlite3_reset(st);
    if ((i + 1) % rows_per_tx == 0 || i + 1 == n)
      sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
  }
  if (sqlite3_get_autocommit(db) == 0)
    sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
  t = now_s() - t0;
  sqlite3_finalize(st);
  sqlite3_close(db);
  unlink(path);
  return i / t;
}

/* ------------------------------------------------------------------ */
/* Through the service                                                 */

typedef struct ctx {
  uv_loop_t loop;
  peerstore_client *c;
  int acks;
  int failed;
  int next;
  int limit;
  double deadline;
} ctx;

static void ack_cb(void *arg, int status) {
  ctx *x = arg;

  x->acks++;
  if (status != 0)
    x->failed++;
}

static void store_one(ctx *x, int i, peerstore_store_cb cb) {
  static uint8_t value[VALUE_SIZE];
  peerstore_peer_id p;
  char key[32];

  record_of(i, &p, key, sizeof(key));
  value[0] = (uint8_t)i;
  if (peerstore_store(x->c, "bench", &p, key, value, sizeof(value),
                      PEERSTORE_EXPIRY_NEVER, PEERSTORE_REPLACE, cb,
                      x) == NULL)
    die("store refused");
}

static double service_pipelined(harness_svc *svc, int n) {
  ctx x = {0};
  double t0, t;
  int i;

  uv_loop_init(&x.loop);
  x.c = peerstore_connect(&x.loop, svc->socket_path);
  t0 = now_s();
  for (i = 0; i < n; i++)
    store_one(&x, i, ack_cb);
  if (harness_run_until_ge(&x.loop, &x.acks, n, 600000) != 0 || x.failed)
    die("pipelined stores failed");
  t = now_s() - t0;
  peerstore_disconnect(x.c, 0);
  uv_run(&x.loop, UV_RUN_DEFAULT);
  uv_loop_close(&x.loop);
  return n / t;
}

static void seq_cb(void *arg, int status) {
  ctx *x = arg;

  if (status != 0)
    die("sequential store failed");
  x->acks++;
  if (x->acks < x->limit && now_s() < x->deadline)
    store_one(x, x->acks, seq_cb);
  else
    x->next = 1;
}

static double service_sequential(harness_svc *svc, int n) {
  ctx x = {0};
  double t0, t;

  uv_loop_init(&x.loop);
  x.c = peerstore_connect(&x.loop, svc->socket_path);
  x.limit = n;
  t0 = now_s();
  x.deadline = t0 + seconds;
  store_one(&x, 0, seq_cb);
  if (harness_run_until(&x.loop, &x.next, 600000) != 0)
    die("sequential stores timed out");
  t = now_s() - t0;
  peerstore_disconnect(x.c, 0);
  uv_run(&x.loop, UV_RUN_DEFAULT);
  uv_loop_close(&x.loop);
  return x.acks / t;
}

static void row(const char *figure, double value, const char *limit_name,
                double limit) {
  printf("| %-34s | %10.0f/s | %-30s | %10.0f/s | %5.2f |\n", figure, value,
         limit_name, limit, value / limit);
}

int main(int argc, char **argv) {
  harness_svc svc;
  char db[300], sync_opt[64], conf[300];
  const char *args[10];
  double raw_batch, raw_row, pipe_rate, seq_rate;
  FILE *f;
  int i;

  for (i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--sync") == 0 && i + 1 < argc)
      sync_mode = argv[++i];
    else if (strcmp(argv[i], "--records") == 0 && i + 1 < argc)
      n_records = atoi(argv[++i]);
    else if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc)
      seconds = atof(argv[++i]);
    else {
      fprintf(stderr, "usage: bench [--sync NORMAL|FULL] [--records N] "
                      "[--seconds S]\n");
      return 2;
    }
  }
  snprintf(dir, sizeof(dir), "%s/peerstore-bench-XXXXXX",
           getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
  if (mkdtemp(dir) == NULL)
    die("cannot make a temporary directory");

  /* The limits first, then the service, on the same disk. */
  raw_batch = raw_inserts(n_records, 1000);
  raw_row = raw_inserts(n_records, 1);

  snprintf(db, sizeof(db), "%s/service.db", dir);
  snprintf(conf, sizeof(conf), "%s/bench.ini", dir);
  snprintf(sync_opt, sizeof(sync_opt), "synchronous = %s\n", sync_mode);
  if ((f = fopen(conf, "w")) == NULL)
    die("cannot write config");
  fprintf(f, "[plugin]\n%s", sync_opt);
  fclose(f);
  args[0] = "--plugin";
  args[1] = "sqlite";
  args[2] = "--database";
  args[3] = db;
  args[4] = "-c";
  args[5] = conf;
  args[6] = NULL;
  if (harness_start(&svc, args) != 0)
    die("cannot start peerstored with the sqlite plugin");
  pipe_rate = service_pipelined(&svc, n_records);
  seq_rate = service_sequential(&svc, n_records);
  harness_stop(&svc);

  printf("\nsqlite plugin, synchronous=%s, %d records of %d bytes "
         "(%d peers x %d keys)\n\n",
         sync_mode, n_records, VALUE_SIZE, PEERS, KEYS);
  printf("| %-34s | %12s | %-30s | %12s | %5s |\n", "figure", "value",
         "limit (same run)", "limit", "ratio");
  printf("|%s|%s|%s|%s|%s|\n", "------------------------------------",
         "--------------", "--------------------------------",
         "--------------", "-------");
  row("sqlite: pipelined stores", pipe_rate, "raw inserts, 1000 rows/tx",
      raw_batch);
  row("sqlite: sequential stores", seq_rate, "raw inserts, 1 row/tx",
      raw_row);
  printf("\n");

  snprintf(conf, sizeof(conf), "rm -rf '%s'", dir);
  if (system(conf) != 0)
    fprintf(stderr, "bench: cannot remove %s\n", dir);
  return 0;
}
