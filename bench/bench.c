/* bench.c - peerstore's benchmarks: every figure printed beside the raw
 * limit it is compared with, measured in the same run on the same machine
 * (these machines are shared and noisy: only ratios travel between runs).
 * The workloads and limits are listed in bench/README.md; `make bench`
 * runs this program pinned to one CPU and unpinned.
 *
 * Usage: bench [--sync NORMAL|FULL] [--records N] [--seconds S] [--big]
 *              [--only memory|sqlite|fanout|iterate|postgres]
 */
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench.h"

bench_opts bench = {"NORMAL", PEERS * KEYS, 2.0, 0, ""};

double bench_now(void) { return (double)uv_hrtime() / 1e9; }

void bench_mark(const char *phase, double t0) {
  /* CLOCK_MONOTONIC seconds, as `perf record -k CLOCK_MONOTONIC` stamps
   * its samples: `perf report --time t0,t1` is then this phase alone. */
  if (getenv("BENCH_MARKS") != NULL)
    fprintf(stderr, "bench: %s --time %.6f,%.6f\n", phase, t0, bench_now());
}

static volatile unsigned consumed_sum; /* so reading is not optimised out */

void bench_consume(long *count, const peerstore_record *rec) {
  const uint8_t *v = rec->value;
  const char *k = rec->key;
  unsigned sum = 0;
  size_t i;

  for (i = 0; i < rec->value_size; i++)
    sum += v[i];
  for (; *k != '\0'; k++)
    sum += (unsigned char)*k;
  consumed_sum += sum;
  ++*count;
}

void bench_die(const char *what) {
  fprintf(stderr, "bench: %s\n", what);
  exit(1);
}

void bench_record(int i, peerstore_peer_id *p, char *key, size_t keylen) {
  int peer = i / KEYS;

  memset(p, 0, sizeof(*p));
  memcpy(p->bytes, &peer, sizeof(peer));
  snprintf(key, keylen, "key-%d", i % KEYS);
}

void bench_full_record(int i, peerstore_record *r, char *key, size_t keylen,
                       const uint8_t *value) {
  memset(r, 0, sizeof(*r));
  bench_record(i, &r->peer, key, keylen);
  r->subsystem = "bench";
  r->key = key;
  r->value = value;
  r->value_size = VALUE_SIZE;
  r->expiry = PEERSTORE_EXPIRY_NEVER;
  r->revision = (uint64_t)i + 1;
}

void bench_row(const char *figure, double value, const char *unit,
               const char *limit_name, double limit, int lower_better) {
  char v[32], l[32], r[16];

  snprintf(v, sizeof(v), "%.0f %s", value, unit);
  if (limit > 0) {
    snprintf(l, sizeof(l), "%.0f %s", limit, unit);
    snprintf(r, sizeof(r), "%.2f", lower_better ? limit / value
                                                : value / limit);
  } else {
    snprintf(l, sizeof(l), "-");
    snprintf(r, sizeof(r), "-");
  }
  printf("| %-34s | %16s | %-26s | %16s | %5s |\n", figure, v, limit_name, l,
         r);
  fflush(stdout);
}

void bench_fact(const char *figure, double value, const char *unit) {
  bench_row(figure, value, unit, "-", 0, 0);
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

void bench_percentiles(double *v, size_t n, double *p50, double *p99) {
  qsort(v, n, sizeof(*v), cmp_double);
  *p50 = v[n / 2];
  *p99 = v[n * 99 / 100];
}

int main(int argc, char **argv) {
  const char *only = NULL;
  cpu_set_t cpus;
  char cmd[300];
  int i;

  for (i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--sync") == 0 && i + 1 < argc)
      bench.sync_mode = argv[++i];
    else if (strcmp(argv[i], "--records") == 0 && i + 1 < argc)
      bench.records = atoi(argv[++i]);
    else if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc)
      bench.seconds = atof(argv[++i]);
    else if (strcmp(argv[i], "--only") == 0 && i + 1 < argc)
      only = argv[++i];
    else if (strcmp(argv[i], "--big") == 0)
      bench.big = 1;
    else {
      fprintf(stderr, "usage: bench [--sync NORMAL|FULL] [--records N] "
                      "[--seconds S] [--big] "
                      "[--only memory|sqlite|fanout|iterate|postgres]\n");
      return 2;
    }
  }
  if (bench.records < KEYS)
    bench_die("--records must be at least 100");
  snprintf(bench.dir, sizeof(bench.dir), "%s/peerstore-bench-XXXXXX",
           getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
  if (mkdtemp(bench.dir) == NULL)
    bench_die("cannot make a temporary directory");

  CPU_ZERO(&cpus);
  sched_getaffinity(0, sizeof(cpus), &cpus);
  printf("\n%s; %d records of %d bytes (%d peers x %d keys); "
         "sqlite synchronous=%s\n\n",
         CPU_COUNT(&cpus) == 1 ? "pinned to one CPU (client and service)"
                               : "unpinned",
         bench.records, VALUE_SIZE, bench.records / KEYS, KEYS,
         bench.sync_mode);
  printf("| %-34s | %16s | %-26s | %16s | %5s |\n", "figure", "value",
         "limit (same run)", "limit", "ratio");
  printf("|------------------------------------|------------------|"
         "----------------------------|------------------|-------|\n");
  if (only == NULL || strcmp(only, "memory") == 0)
    workloads_memory();
  if (only == NULL || strcmp(only, "sqlite") == 0)
    workloads_sqlite();
  if (only != NULL && strcmp(only, "fanout") == 0)
    workloads_fanout();
  if (only != NULL && strcmp(only, "iterate") == 0)
    workloads_iterate();
  /* Only when asked: its server is not pinned with the rest. */
  if (only != NULL && strcmp(only, "postgres") == 0) {
#ifdef HAVE_POSTGRES
    workloads_postgres();
#else
    bench_die("built without the postgres plugin");
#endif
  }

  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", bench.dir);
  if (system(cmd) != 0)
    fprintf(stderr, "bench: cannot remove %s\n", bench.dir);
  return 0;
}
