/* bench.h - shared pieces of the benchmark program. */
#ifndef PEERSTORE_BENCH_H
#define PEERSTORE_BENCH_H

#include <stdint.h>
#include <uv.h>

#include "harness.h"
#include "peerstore.h"

#define PEERS 1000
#define KEYS 100
#define VALUE_SIZE 64
#define FANOUT 50 /* W4's watchers */

typedef struct bench_opts {
  const char *sync_mode; /* NORMAL or FULL, for the sqlite figures */
  int records;           /* W2's record count (default 100,000) */
  double seconds;        /* time budget of open-ended loops */
  int big;               /* also run W3 at 1,000,000 records */
  char dir[256];         /* scratch directory */
} bench_opts;

extern bench_opts bench;

double bench_now(void);
void bench_die(const char *what);
/* With BENCH_MARKS set, prints phase's span from t0 to now on stderr in
 * the form `perf report --time` takes (see bench/README.md, profiles). */
void bench_mark(const char *phase, double t0);
/* Record i of the W2 set: peer i / KEYS, key "key-(i % KEYS)". */
void bench_record(int i, peerstore_peer_id *p, char *key, size_t keylen);
/* The whole record i as W2 stores it (subsystem "bench", value of
 * VALUE_SIZE bytes, never expiring), with revision i + 1. */
void bench_full_record(int i, peerstore_record *r, char *key, size_t keylen,
                       const uint8_t *value);
/* Prints one row: figure, value and unit, the limit it is compared with,
 * and the ratio (higher is better unless lower_better). */
void bench_row(const char *figure, double value, const char *unit,
               const char *limit_name, double limit, int lower_better);
/* Sorts v and picks its median and 99th percentile. */
void bench_percentiles(double *v, size_t n, double *p50, double *p99);
/* A row without a limit to compare with. */
void bench_fact(const char *figure, double value, const char *unit);

/* Records the service asks of a plugin at once (service/iter.c). */
#define BENCH_ITER_BATCH 256

/* What W3 does with each record it is handed, through the service or in
 * process: counts it and reads its key and value (a sum of their bytes),
 * as a consumer of the records would. */
void bench_consume(long *count, const peerstore_record *rec);

/* limits.c: the machine's raw limits, measured in this run. */
double limit_pingpong_blocking(void);   /* round trips/s */
double limit_pingpong_libuv(void);      /* round trips/s */
double limit_stream_per_message(void);  /* messages/s */
/* The tables limit_sqlite_inserts fills: the plugin's own schema; one
 * index on (subsystem, peer, key); the indexes without which some filter
 * could not be read in revision order from an index (bench/README.md). */
enum bench_schema { SCHEMA_OWN, SCHEMA_ONE_INDEX, SCHEMA_FILTERS };
/* W2's rows into schema, rows_per_tx a transaction, at the run's
 * synchronous (SCHEMA_FILTERS: OFF, as a floor); rows/s.  With
 * replace, into a table holding them already, each row replacing the one
 * with its subsystem, peer and key (an insert and a delete), as the
 * sequential stores do. */
double limit_sqlite_inserts(int n, int rows_per_tx, enum bench_schema schema,
                            int replace);
double limit_hash_inserts(int n);       /* inserts/s */
/* n messages relayed to FANOUT sockets; latency of each copy, seconds. */
void limit_fanout(int n, double *p50, double *p99);
/* W2's n records in the memory plugin in this process, walked as W3
 * walks them through the service: records/s, median of rounds. */
double limit_memory_walk(int n, int rounds);
/* W3's n RECORD frames written by another process into a Unix socket,
 * read and handed to bench_consume here: records/s, median of rounds. */
double limit_record_stream(int n, int rounds);
void bench_make_db(const char *path, int n);

/* workloads.c: through a real peerstored. */
/* W2: n stores issued at once; stores per second. */
double pipelined(harness_svc *svc, int n);
/* Each store awaited before the next (at most n, bench.seconds);
 * stores per second. */
double sequential(harness_svc *svc, int n);
/* W4: FANOUT watchers on svc, a writer on writer (the same service or
 * another on one database).  Paced: each store once the previous one
 * reached every watcher, for the latency of each copy (seconds); not
 * paced: all n at once, for notifications per second. */
void w4_fanout(harness_svc *writer, harness_svc *svc, int n, int paced,
               double *rate, double *p50, double *p99);
void workloads_memory(void);
void workloads_fanout(void); /* W4 alone */
void workloads_iterate(void); /* W3 (ss) alone, many rounds, to profile */
void workloads_sqlite(void);
/* pg.c: on a PostgreSQL server of its own (built with the plugin). */
void workloads_postgres(void);

#endif
