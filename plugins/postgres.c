/* postgres.c - the PostgreSQL plugin: one database shared by the services
 * of many hosts (DESIGN.md section 9).
 *
 * All database work runs on one worker thread with one connection, so
 * the service's loop never waits for the network.  As in the SQLite
 * plugin, the loop queues jobs and the worker takes every job queued so
 * far and applies them in ONE transaction (group commit), then hands them
 * back through a uv_async_t.  A job's callback runs only after its
 * transaction committed: an acknowledged change is in the database.
 *
 * One revision sequence for every service: the counter row in
 * peerstore_meta is the writers' lock.  A write transaction takes it FOR
 * UPDATE in its first statement (peerstore_lock) and writes the counter
 * back in its last (peerstore_unlock), so writers commit one at a time
 * and in revision order, and a rollback leaves no gap.  Under READ
 * COMMITTED every later statement of the transaction sees every change
 * committed before the lock was granted.
 *
 * Changes made through other services: the worker reports every change
 * in revision order through the hook, its own and others' alike.  It
 * keeps fed, the revision up to which every change has been handed to
 * the loop.  A write transaction first reads the changes between fed and
 * the counter it locked (others', committed before it) and reports them
 * before its own; between writes, a LISTEN doorbell (rung by
 * peerstore_unlock) or a slow poll makes the worker read what others
 * committed.  The doorbell only hurries the reading: every change is
 * read from the tables by revision, so a lost notification, a reconnect
 * or a failover costs latency, not changes.  Should the history have been
 * trimmed past fed while this service was away, it reports
 * PEERSTORE_CHANGE_LOST and its watchers start again or end: never a
 * silent gap.
 *
 * A lost connection fails the jobs of the group in flight - with
 * PEERSTORE_ENOTCONN if the commit was not sent (nothing applied), with
 * PEERSTORE_EINTERRUPTED if it was and no answer came (the outcome is not
 * known; the changes, if they were applied, are reported like anyone
 * else's once the worker reads them back) - and the worker reconnects
 * with a growing backoff.  Jobs that arrive meanwhile wait up to
 * unavailable_timeout, then fail with PEERSTORE_ENOTCONN.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <fcntl.h>

#include "peerstore_plugin.h"
#include "plugin_util.h"
#include "postgres_queries.h"

#define SCHEMA_VERSION 1
#define EXPIRY_NEVER_SQL INT64_MAX
#define RECORD_BATCH_BYTES (1u << 20)
/* Records one step of a remove (or a purge) takes out: a larger remove
 * commits a step at a time, so that neither the service's memory nor
 * the writers' lock is held in proportion to what it matches. */
#define REMOVE_STEP 4096
/* What a batch may change; past it, PEERSTORE_ELIMIT (as in sqlite). */
#define BATCH_CHANGES_MAX 262144
#define BATCH_CHANGES_BYTES (64u << 20)
/* Revisions one history read (or one read of others' changes) looks
 * through at most. */
#define HISTORY_WINDOW 16384
#define HIST_PER_GROUP 2
/* A pipeline's most statements, and its most bytes of parameters (below
 * any socket buffer: see pipe_run). */
#define PIPE_MAX 256
#define PIPE_BYTES 32768
/* Key of the advisory locks: creating the schema, purging. */
#define LOCK_SCHEMA "7073747231" /* in SQL text */
#define LOCK_PURGE 0x7073747232LL  /* "pstr2" */

extern const char peerstore_postgres_schema[];


typedef struct pg pg;
typedef struct pstmt pstmt;

/* What `stats` shows as postgres.<name>, in this order: the worker's,
 * copied out by publish().  Counters but for connected. */
#define PG_COUNTERS(X)                                                         \
  X(connected)        /* 1 while the worker holds a working session */       \
  X(connects)         /* sessions opened, the first included */              \
  X(connections_lost) /* sessions found dead */                              \
  X(transactions)     /* write transactions committed */                     \
  X(retried)          /* groups or reads run again on a new session */       \
  X(interrupted)      /* groups whose COMMIT got no answer */                \
  X(unavailable)      /* requests failed: no session in time */              \
  X(doorbells)        /* notifications received */                           \
  X(feeds)            /* reads of other services' changes between writes */  \
  X(changes_of_others) /* changes other services made, reported here */      \
  X(history_lost)     /* the history trimmed past what this service read */

typedef struct pg_counters {
#define PG_FIELD(name) uint64_t name;
  PG_COUNTERS(PG_FIELD)
#undef PG_FIELD
} pg_counters;


struct pg {
  uv_loop_t *loop;
  char *conninfo;
  void (*log)(void *ctx, enum peerstore_log_level level, const char *fmt,
              ...);
  void *log_ctx;
  void (*changed)(void *ctx, const peerstore_plugin_change *change);
  void *changed_ctx;
  uv_thread_t worker;
  int worker_started;
  uv_mutex_t lock;
  uv_async_t async;
  int wake[2]; /* loop -> worker: a byte when todo was empty */
  jobq todo, hist_todo, done;
  int stopping;
  uint64_t hist_max_events, hist_max_bytes;
  uint64_t hist_id;
  int poll_ms;         /* safety net: read others' changes this often */
  int unavailable_ms;  /* jobs wait this long for a connection */
  size_t batch_max_changes;
  /* The worker's. */
  PGconn *conn;
  uint64_t fed;        /* every change up to it is on its way to the hook */
  uint64_t hist_first;
  uint64_t records;
  uint64_t rung;       /* the newest revision a doorbell told of */
  int64_t delta;       /* records added by the transaction in progress */
  int in_commit;       /* COMMIT sent, no answer yet */
  int err_lost;        /* the last error was a lost connection */
  int conn_dead;       /* the server said it ends the session */
  uint64_t down_since; /* ms; 0 while connected */
  unsigned backoff_ms;
  /* Published after each group, under lock. */
  uint64_t pub_revision, pub_records, pub_hist_first, pub_hist_rows,
      pub_hist_bytes;
  uint64_t hist_rows, hist_bytes; /* the worker's, from the last purge */
  pg_counters cnt, pub_cnt;        /* the worker's; published */
  pstmt *pipe;                     /* PIPE_MAX statements, the worker's */
};

/* ------------------------------------------------------------------ */
/* Helpers                                                             */

static uint64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static uint64_t wall_clock_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

static int64_t expiry_to_sql(uint64_t e) {
  return e >= (uint64_t)EXPIRY_NEVER_SQL ? EXPIRY_NEVER_SQL : (int64_t)e;
}

static uint64_t expiry_from_sql(int64_t e) {
  return e == EXPIRY_NEVER_SQL ? PEERSTORE_EXPIRY_NEVER : (uint64_t)e;
}

static int64_t writer_to_sql(uint32_t w) {
  return w == PEERSTORE_WRITER_UNKNOWN ? -1 : (int64_t)w;
}

static uint32_t writer_from_sql(int64_t w) {
  return w < 0 || w > (int64_t)UINT32_MAX ? PEERSTORE_WRITER_UNKNOWN
                                          : (uint32_t)w;
}

/* Parameters of one statement, all sent in binary. */
typedef struct params {
  int n;
  const char *v[10];
  int len[10];
  int fmt[10];
  uint64_t ints[10]; /* int8 and int4 values, in network order */
} params;

static void p_bytes(params *p, const void *v, size_t n) {
  p->v[p->n] = v != NULL ? (n > 0 ? v : "") : NULL;
  p->len[p->n] = (int)n;
  p->fmt[p->n] = 1;
  p->n++;
}

static void p_str(params *p, const char *s) {
  p_bytes(p, s, s != NULL ? strlen(s) : 0);
}

static void p_int8(params *p, int64_t x) {
  uint64_t u = (uint64_t)x;
  uint32_t hi = htonl((uint32_t)(u >> 32)), lo = htonl((uint32_t)u);

  memcpy((char *)&p->ints[p->n], &hi, 4);
  memcpy((char *)&p->ints[p->n] + 4, &lo, 4);
  p_bytes(p, &p->ints[p->n], 8);
}

static void p_int4(params *p, int32_t x) {
  uint32_t u = htonl((uint32_t)x);

  memcpy(&p->ints[p->n], &u, 4);
  p_bytes(p, &p->ints[p->n], 4);
}

static void p_bool(params *p, int b) {
  p->ints[p->n] = b ? 1 : 0;
  p_bytes(p, &p->ints[p->n], 1);
}

static int64_t get_int8(const PGresult *r, int row, int col) {
  const unsigned char *b = (const unsigned char *)PQgetvalue(r, row, col);
  uint64_t u = 0;
  int i, n = PQgetlength(r, row, col);

  if (PQgetisnull(r, row, col))
    return 0;
  for (i = 0; i < n; i++) /* int2 or int8, big-endian, sign-extended */
    u = (u << 8) | b[i];
  if (n == 2)
    return (int16_t)u;
  if (n == 4)
    return (int32_t)u;
  return (int64_t)u;
}

static int conn_ok(const pg *s) {
  return s->conn != NULL && !s->conn_dead &&
         PQstatus(s->conn) == CONNECTION_OK;
}

/* Maps a failed result (or connection) to a status, logging it. */
static int fail(pg *s, const PGresult *r, const char *what) {
  const char *state = r != NULL ? PQresultErrorField(r, PG_DIAG_SQLSTATE)
                                : NULL;
  const char *msg = r != NULL ? PQresultErrorMessage(r) : NULL;

  if (msg == NULL || *msg == '\0')
    msg = PQerrorMessage(s->conn);
  /* The server ending the session (shutdown, pg_terminate_backend:
   * 57P01-57P03) or a connection exception (08) says the session is
   * going before libpq has seen the socket close. */
  if (state != NULL &&
      (strncmp(state, "57P", 3) == 0 || strncmp(state, "08", 2) == 0))
    s->conn_dead = 1;
  s->err_lost = !conn_ok(s);
  s->log(s->log_ctx, s->err_lost ? PEERSTORE_LOG_WARN : PEERSTORE_LOG_ERROR,
         "postgres: %s: %s%s%s", what, state ? state : "",
         state ? " " : "", msg);
  if (s->err_lost)
    return s->in_commit ? PEERSTORE_EINTERRUPTED : PEERSTORE_ENOTCONN;
  if (state != NULL) {
    if (strncmp(state, "53", 2) == 0)
      return strcmp(state, "53100") == 0 ? PEERSTORE_ENOSPC
                                         : PEERSTORE_ENOMEM;
    if (strcmp(state, "25006") == 0)
      return PEERSTORE_EROFS;
    if (strncmp(state, "08", 2) == 0)
      return PEERSTORE_ENOTCONN;
    if (strncmp(state, "58", 2) == 0 || strncmp(state, "XX", 2) == 0)
      return PEERSTORE_EIO;
  }
  return PEERSTORE_EPLUGIN;
}

/* Runs a prepared statement; *res is its result (rows or none) or NULL
 * with a status returned. */
static int run(pg *s, const char *name, const params *p, PGresult **res) {
  PGresult *r = PQexecPrepared(s->conn, name, p ? p->n : 0, p ? p->v : NULL,
                               p ? p->len : NULL, p ? p->fmt : NULL, 1);
  ExecStatusType st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
  int rc;

  if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK) {
    *res = r;
    return 0;
  }
  rc = fail(s, r, name);
  PQclear(r);
  *res = NULL;
  return rc;
}

static int exec(pg *s, const char *sql) {
  PGresult *r = PQexec(s->conn, sql);
  int rc = 0;

  if (r == NULL || (PQresultStatus(r) != PGRES_COMMAND_OK &&
                    PQresultStatus(r) != PGRES_TUPLES_OK))
    rc = fail(s, r, sql);
  PQclear(r);
  return rc;
}

/* ------------------------------------------------------------------ */
/* Worker: statements in a pipeline                                    */

/* One statement of a pipeline: prepared (name) or SQL text (sql). */
struct pstmt {
  const char *name, *sql;
  params p;
  PGresult *res; /* its rows, once run (NULL if it failed) */
};

static void pipe_clear(pstmt *st, int n) {
  int i;

  for (i = 0; i < n; i++) {
    PQclear(st[i].res);
    st[i].res = NULL;
  }
}

#ifdef LIBPQ_HAS_PIPELINING
/* Sends the n statements at once and reads their results: one round trip
 * (libpq 14's pipeline mode).  The caller keeps what it sends under
 * PIPE_BYTES, so that writing it (the socket is blocking) cannot wait on
 * a server that waits for us to read its results.  0, or the first
 * failure's status; the statements after a failed one were not run. */
static int pipe_run(pg *s, pstmt *st, int n) {
  PGresult *r;
  int i, rc = 0, synced = 0;

  if (PQenterPipelineMode(s->conn) != 1)
    return fail(s, NULL, "entering pipeline mode");
  for (i = 0; i < n; i++) {
    const params *p = &st[i].p;
    int ok = st[i].name != NULL
                 ? PQsendQueryPrepared(s->conn, st[i].name, p->n, p->v,
                                       p->len, p->fmt, 1)
                 : PQsendQueryParams(s->conn, st[i].sql, 0, NULL, NULL, NULL,
                                     NULL, 1);
    if (!ok) {
      rc = fail(s, NULL, "sending");
      break;
    }
  }
  /* A sync even after a failed send: what was sent is answered up to it. */
  if (PQpipelineSync(s->conn) != 1 && rc == 0)
    rc = fail(s, NULL, "sending");
  /* The results, in order: each statement's, then NULL; after a failure,
   * PIPELINE_ABORTED for the rest; then the sync. */
  for (i = 0; rc == 0 && i < n; i++) {
    ExecStatusType t;
    if ((r = PQgetResult(s->conn)) == NULL) {
      rc = fail(s, NULL, st[i].name ? st[i].name : st[i].sql);
      break;
    }
    t = PQresultStatus(r);
    if (t == PGRES_TUPLES_OK || t == PGRES_COMMAND_OK) {
      st[i].res = r;
    } else {
      rc = fail(s, r, st[i].name ? st[i].name : st[i].sql);
      PQclear(r);
    }
    while ((r = PQgetResult(s->conn)) != NULL) {
      if (PQresultStatus(r) == PGRES_PIPELINE_SYNC)
        synced = 1;
      PQclear(r);
    }
  }
  /* Up to the sync: after a failure, each statement left is one
   * PIPELINE_ABORTED and a NULL.  A connection gone has nothing more. */
  for (i = 0; !synced && i < 2 * n + 2; i++) {
    if ((r = PQgetResult(s->conn)) == NULL) {
      if (PQstatus(s->conn) != CONNECTION_OK)
        break;
      continue;
    }
    synced = PQresultStatus(r) == PGRES_PIPELINE_SYNC;
    PQclear(r);
  }
  if (PQexitPipelineMode(s->conn) != 1) {
    /* Results left over: this session cannot be trusted to run a plain
     * statement again - a new one. */
    if (rc == 0)
      rc = fail(s, NULL, "leaving pipeline mode");
    s->conn_dead = 1;
    s->err_lost = 1;
  }
  if (rc != 0)
    pipe_clear(st, n);
  return rc;
}
#else
/* Without pipeline mode (libpq before 14): one statement at a time. */
static int pipe_run(pg *s, pstmt *st, int n) {
  int i, rc = 0;

  for (i = 0; i < n && rc == 0; i++) {
    if (st[i].name != NULL) {
      rc = run(s, st[i].name, &st[i].p, &st[i].res);
    } else {
      PGresult *r = PQexecParams(s->conn, st[i].sql, 0, NULL, NULL, NULL,
                                 NULL, 1);
      if (r != NULL && PQresultStatus(r) == PGRES_COMMAND_OK) {
        st[i].res = r;
      } else {
        rc = fail(s, r, st[i].sql);
        PQclear(r);
      }
    }
  }
  if (rc != 0)
    pipe_clear(st, n);
  return rc;
}
#endif

/* Appends row i of r - revision, kind, stored, subsystem, peer, key,
 * value, expiry, writer, from column o on - to b. */
static int add_row_at(ps_rbuf *b, const PGresult *r, int i, int o) {
  if (PQgetlength(r, i, o + 4) != PEERSTORE_PEER_ID_SIZE)
    return PEERSTORE_EPLUGIN;
  return ps_rbuf_add(
      b, (uint64_t)get_int8(r, i, o), (int)get_int8(r, i, o + 1),
      (uint64_t)get_int8(r, i, o + 2), PQgetvalue(r, i, o + 3),
      (size_t)PQgetlength(r, i, o + 3),
      (const uint8_t *)PQgetvalue(r, i, o + 4), PQgetvalue(r, i, o + 5),
      (size_t)PQgetlength(r, i, o + 5), PQgetvalue(r, i, o + 6),
      (size_t)PQgetlength(r, i, o + 6), expiry_from_sql(get_int8(r, i, o + 7)),
      writer_from_sql(get_int8(r, i, o + 8)));
}

static int add_row(ps_rbuf *b, const PGresult *r, int i) {
  return add_row_at(b, r, i, 0);
}

static void p_filter(params *p, const ps_filt *f) {
  p_str(p, f->subsystem);
  if (f->has_peer)
    p_bytes(p, f->peer.bytes, PEERSTORE_PEER_ID_SIZE);
  else
    p_bytes(p, NULL, 0);
  p_str(p, f->key);
}

static int history_on(const pg *s) {
  return s->hist_max_events > 0 && s->hist_max_bytes > 0;
}

/* ------------------------------------------------------------------ */
/* Worker: others' changes                                             */

/* The history was trimmed past what this service had read: say so, go on
 * from the history's start. */
static void history_lost(pg *s, uint64_t hist_first, uint64_t *lost) {
  s->log(s->log_ctx, PEERSTORE_LOG_WARN,
         "postgres: the history was trimmed past revision %" PRIu64
         " (to %" PRIu64 ") before this service read it; its watchers "
         "start again",
         s->fed, hist_first);
  *lost = hist_first;
  s->fed = hist_first;
  s->cnt.history_lost++;
}

/* Reads the changes after s->fed up to upto (others': committed, not yet
 * reported) into b, a window at a time.  With the writers' lock held,
 * nothing can change under it; without it, upto comes from the same
 * snapshot (read_head). */
static int read_others(pg *s, uint64_t upto, uint64_t hist_first,
                       ps_rbuf *b, uint64_t *lost) {
  PGresult *r;
  params p;
  int i, rc;

  if (upto <= s->fed)
    return 0;
  if (hist_first > s->fed)
    history_lost(s, hist_first, lost);
  while (s->fed < upto) {
    uint64_t to = upto - s->fed > HISTORY_WINDOW ? s->fed + HISTORY_WINDOW
                                                 : upto;
    memset(&p, 0, sizeof(p));
    p_int8(&p, (int64_t)s->fed);
    p_int8(&p, (int64_t)to);
    if ((rc = run(s, "feed", &p, &r)) != 0)
      return rc;
    for (i = 0; i < PQntuples(r); i++) {
      if ((rc = add_row(b, r, i)) != 0) {
        PQclear(r);
        return rc;
      }
    }
    s->cnt.changes_of_others += (uint64_t)PQntuples(r);
    PQclear(r);
    s->fed = to;
  }
  return 0;
}

/* The revision, history start and record count as committed now. */
static int read_head(pg *s, uint64_t *rev, uint64_t *first,
                     uint64_t *records) {
  PGresult *r;
  int rc;

  if ((rc = run(s, "head", NULL, &r)) != 0)
    return rc;
  *rev = (uint64_t)get_int8(r, 0, 0);
  *first = (uint64_t)get_int8(r, 0, 1);
  *records = (uint64_t)get_int8(r, 0, 2);
  PQclear(r);
  return 0;
}

/* A J_FEED job (and a cursor opened without writes): what others
 * committed since fed, a window at a time, each window one statement
 * with the head it reads up to. */
static int do_feed(pg *s, job *j) {
  uint64_t rev, first, fed0 = s->fed;
  PGresult *r;
  params p;
  int i, rc;

  s->cnt.feeds++;
  do {
    uint64_t to = s->fed + HISTORY_WINDOW;
    memset(&p, 0, sizeof(p));
    p_int8(&p, (int64_t)s->fed);
    p_int8(&p, (int64_t)to);
    if ((rc = run(s, "feed_head", &p, &r)) != 0) {
      s->fed = fed0;
      return rc;
    }
    rev = (uint64_t)get_int8(r, 0, 0);
    first = (uint64_t)get_int8(r, 0, 1);
    s->records = (uint64_t)get_int8(r, 0, 2);
    s->hist_first = first;
    if (first > s->fed && rev > s->fed) {
      /* What it read from fed on has a hole: from the start again. */
      PQclear(r);
      history_lost(s, first, &j->lost);
      j->changes.n = j->changes.bytes_len = 0;
      continue;
    }
    for (i = 0; i < PQntuples(r) && !PQgetisnull(r, i, 3); i++) {
      if ((rc = add_row_at(&j->changes, r, i, 3)) != 0) {
        PQclear(r);
        s->fed = fed0;
        return rc;
      }
    }
    s->cnt.changes_of_others += (uint64_t)i;
    PQclear(r);
    if (rev > s->fed)
      s->fed = rev < to ? rev : to;
  } while (rev > s->fed);
  return 0;
}

/* ------------------------------------------------------------------ */
/* Worker: writes                                                      */

/* Copies the change rows of r into b, adding up the records they take
 * out; row 0 of a store is the store itself and is skipped. */
static int take_changes(pg *s, PGresult *r, int from, ps_rbuf *b) {
  int i, rc;

  for (i = from; i < PQntuples(r); i++) {
    if ((rc = add_row(b, r, i)) != 0)
      return rc;
    s->delta--;
  }
  return 0;
}

static void store_params(pg *s, params *p, const peerstore_record *rec,
                         uint32_t writer, uint8_t option) {
  memset(p, 0, sizeof(*p));
  p_str(p, rec->subsystem);
  p_bytes(p, rec->peer.bytes, PEERSTORE_PEER_ID_SIZE);
  p_str(p, rec->key);
  p_bytes(p, rec->value, rec->value_size);
  p_int8(p, expiry_to_sql(rec->expiry));
  p_int8(p, writer_to_sql(writer));
  p_bool(p, option == PEERSTORE_REPLACE);
  p_bool(p, history_on(s));
  p_int8(p, (int64_t)s->hist_first);
}

/* A store's rows (peerstore_store()): its revision, and what it dropped
 * into gone.  Takes r. */
static int store_result(pg *s, PGresult *r, peerstore_record *rec,
                        ps_rbuf *gone, int *refresh) {
  int rc;

  if (PQntuples(r) < 1) {
    PQclear(r);
    return PEERSTORE_EPLUGIN;
  }
  rec->revision = (uint64_t)get_int8(r, 0, 0);
  *refresh = (uint64_t)get_int8(r, 0, 2) != rec->revision;
  if (!*refresh)
    s->delta++;
  rc = take_changes(s, r, 1, gone);
  PQclear(r);
  return rc;
}

static int store_one(pg *s, peerstore_record *rec, uint32_t writer,
                     uint8_t option, ps_rbuf *gone, int *refresh) {
  PGresult *r;
  params p;
  int rc;

  store_params(s, &p, rec, writer, option);
  if ((rc = run(s, "store", &p, &r)) != 0)
    return rc;
  return store_result(s, r, rec, gone, refresh);
}

/* The stores from j on (up to the first job that is not one), sent in
 * pipelines of at most PIPE_BYTES; returns the job after them. */
static job *do_stores(pg *s, job *j, int *rc) {
  while (j != NULL && j->kind == J_STORE && *rc == 0) {
    job *from = j;
    size_t bytes = 0;
    int n = 0, i;

    for (; j != NULL && j->kind == J_STORE && n < PIPE_MAX &&
           (n == 0 || bytes + j->u.store.rec.value_size < PIPE_BYTES);
         j = j->next) {
      pstmt *st = &s->pipe[n++];
      st->name = "store";
      st->sql = NULL;
      store_params(s, &st->p, &j->u.store.rec, j->u.store.writer,
                   j->u.store.option);
      bytes += 160 + j->u.store.rec.value_size +
               strlen(j->u.store.rec.subsystem) + strlen(j->u.store.rec.key);
    }
    if ((*rc = pipe_run(s, s->pipe, n)) != 0)
      break;
    for (i = 0; i < n; i++, from = from->next) {
      PGresult *r = s->pipe[i].res;
      s->pipe[i].res = NULL;
      if (*rc == 0)
        *rc = store_result(s, r, &from->u.store.rec, &from->u.store.gone,
                           &from->u.store.refresh);
      else
        PQclear(r);
    }
  }
  return j;
}

/* One step of a remove: up to REMOVE_STEP records of those stored when
 * it began.  Returns 1 in *more when it took a full step. */
static int remove_step(pg *s, const ps_filt *f, uint64_t upto, int lim,
                       ps_rbuf *gone, int *more) {
  PGresult *r;
  params p;
  int rc, n;

  memset(&p, 0, sizeof(p));
  p_filter(&p, f);
  p_int8(&p, (int64_t)upto);
  p_int4(&p, lim);
  p_bool(&p, history_on(s));
  if ((rc = run(s, "remove", &p, &r)) != 0)
    return rc;
  n = PQntuples(r);
  rc = take_changes(s, r, 0, gone);
  PQclear(r);
  *more = n >= lim;
  return rc;
}

static int do_purge(pg *s, job *j, int *more) {
  PGresult *r;
  params p;
  int rc;

  *more = 0;
  memset(&p, 0, sizeof(p));
  p_int8(&p, expiry_to_sql(j->u.count.now));
  p_int4(&p, (int32_t)(j->u.count.max ? j->u.count.max : 1));
  p_bool(&p, history_on(s));
  if ((rc = run(s, "expire", &p, &r)) != 0)
    return rc;
  j->u.count.count += (uint64_t)PQntuples(r);
  rc = take_changes(s, r, 0, &j->u.count.gone);
  PQclear(r);
  if (rc != 0)
    return rc;
  if (history_on(s)) {
    memset(&p, 0, sizeof(p));
    p_int8(&p, (int64_t)s->hist_max_events);
    p_int8(&p, (int64_t)s->hist_max_bytes);
    if ((rc = run(s, "trim", &p, &r)) != 0)
      return rc;
    s->hist_first = (uint64_t)get_int8(r, 0, 0);
    PQclear(r);
    if ((rc = run(s, "hist_size", NULL, &r)) != 0)
      return rc;
    s->hist_rows = (uint64_t)get_int8(r, 0, 0);
    s->hist_bytes = (uint64_t)get_int8(r, 0, 1);
    PQclear(r);
  }
  return 0;
}

static int check_required(pg *s, job *j) {
  size_t i;
  int rc;

  for (i = 0; i < j->u.batch.n; i++) {
    const peerstore_plugin_batch_op *o = &j->u.batch.ops[i];
    PGresult *r;
    params p;
    uint64_t newest;
    if (o->kind != PEERSTORE_PLUGIN_BATCH_REQUIRE)
      continue;
    memset(&p, 0, sizeof(p));
    p_str(&p, o->filter.subsystem);
    p_bytes(&p, o->filter.peer->bytes, PEERSTORE_PEER_ID_SIZE);
    p_str(&p, o->filter.key);
    p_int8(&p, expiry_to_sql(wall_clock_us()));
    if ((rc = run(s, "newest", &p, &r)) != 0)
      return rc;
    newest = (uint64_t)get_int8(r, 0, 0);
    PQclear(r);
    if (newest != o->revision)
      return PEERSTORE_ECONFLICT;
  }
  return 0;
}

static int batch_ops(pg *s, job *j) {
  ps_rbuf *ch = &j->u.batch.changes;
  size_t i, at;
  int rc, refresh;

  for (i = 0; i < j->u.batch.n; i++) {
    peerstore_plugin_batch_op *o = &j->u.batch.ops[i];
    int more = 0;
    if (o->kind == PEERSTORE_PLUGIN_BATCH_STORE) {
      at = ch->n;
      if (ps_rbuf_rec(ch, &o->rec, j->u.batch.writer) != 0)
        return PEERSTORE_ENOMEM;
      if ((rc = store_one(s, &o->rec, j->u.batch.writer, (uint8_t)o->option,
                          ch, &refresh)) != 0)
        return rc;
      ch->recs[at].revision = ch->revs[at] = o->rec.revision;
    } else if (o->kind == PEERSTORE_PLUGIN_BATCH_REMOVE) {
      ps_filt f;
      size_t left = s->batch_max_changes + 1 - ch->n;
      memset(&f, 0, sizeof(f));
      f.subsystem = (char *)o->filter.subsystem;
      f.key = (char *)o->filter.key;
      f.has_peer = o->filter.peer != NULL;
      if (f.has_peer)
        f.peer = *o->filter.peer;
      if ((rc = remove_step(s, &f, INT64_MAX,
                            left > INT32_MAX ? INT32_MAX : (int)left, ch,
                            &more)) != 0)
        return rc;
    }
    if (ch->n > s->batch_max_changes || ch->bytes_len > BATCH_CHANGES_BYTES) {
      s->log(s->log_ctx, PEERSTORE_LOG_WARN,
             "postgres: a batch would change more than %zu records or "
             "%u MiB; refused",
             s->batch_max_changes, (unsigned)(BATCH_CHANGES_BYTES >> 20));
      return PEERSTORE_ELIMIT;
    }
  }
  return 0;
}

/* The last revision this transaction has given out (the writers' lock
 * is held). */
static int current_revision(pg *s, uint64_t *rev) {
  PGresult *r;
  int rc;

  if ((rc = run(s, "current", NULL, &r)) != 0)
    return rc;
  *rev = (uint64_t)get_int8(r, 0, 0);
  PQclear(r);
  return 0;
}

/* A batch, in a savepoint of its own: a failed condition or limit undoes
 * it alone. */
static int do_batch(pg *s, job *j) {
  uint64_t rev0 = 0;
  int64_t delta0 = s->delta;
  int rc;

  if ((rc = check_required(s, j)) != 0)
    return rc;
  if ((rc = exec(s, "SAVEPOINT batch")) != 0)
    return rc;
  if ((rc = current_revision(s, &rev0)) != 0)
    return rc;
  if ((rc = batch_ops(s, j)) == 0 &&
      (rc = exec(s, "RELEASE batch")) == 0) {
    ps_rbuf *ch = &j->u.batch.changes;
    j->u.batch.first = ch->n > 0 ? rev0 + 1 : 0;
    j->u.batch.last = ch->n > 0 ? ch->revs[ch->n - 1] : 0;
    return 0;
  }
  if (!s->err_lost && exec(s, "ROLLBACK TO SAVEPOINT batch") != 0)
    return PEERSTORE_ENOTCONN;
  s->delta = delta0;
  j->u.batch.changes.n = 0;
  j->u.batch.changes.bytes_len = 0;
  return rc;
}

/* ------------------------------------------------------------------ */
/* Worker: reads                                                       */

static int do_next(pg *s, job *j) {
  static const char *const names[F_COUNT] = {"iter0", "iter1", "iter2",
                                             "iter3"};
  peerstore_plugin_cursor *c = j->u.next.cursor;
  ps_rbuf *b = &j->u.next.out;
  uint32_t max = j->u.next.max;
  PGresult *r;
  params p;
  int i, n, rc;

  memset(&p, 0, sizeof(p));
  p_filter(&p, &c->f);
  p_int8(&p, (int64_t)c->after);
  p_int8(&p, (int64_t)c->max_revision);
  p_int8(&p, expiry_to_sql(c->now));
  p_int8(&p, (int64_t)max + 1);
  if ((rc = run(s, names[ps_filt_kind(&c->f)], &p, &r)) != 0)
    return rc;
  n = PQntuples(r);
  for (i = 0; i < n && rc == 0; i++) {
    if ((uint32_t)i == max || b->bytes_len >= RECORD_BATCH_BYTES) {
      j->u.next.more = 1;
      break;
    }
    rc = add_row(b, r, i);
  }
  PQclear(r);
  if (b->n > 0)
    c->after = b->recs[b->n - 1].revision;
  return rc;
}

static int hist_read(pg *s, job *j) {
  static const char *const names[F_COUNT] = {"hist0", "hist1", "hist2",
                                             "hist3"};
  ps_rbuf *b = &j->u.hist.out;
  uint32_t max = j->u.hist.max ? j->u.hist.max : 1;
  uint64_t after = j->u.hist.after, upto = s->fed;
  PGresult *r;
  params p;
  int i, n, rc = 0;

  if (after < s->hist_first || after > s->fed)
    return PEERSTORE_ECOMPACTED;
  if (upto - after > HISTORY_WINDOW)
    upto = after + HISTORY_WINDOW;
  memset(&p, 0, sizeof(p));
  p_filter(&p, &j->u.hist.f);
  p_int8(&p, (int64_t)after);
  p_int8(&p, (int64_t)max + 1);
  p_int8(&p, (int64_t)upto);
  if ((rc = run(s, names[ps_filt_kind(&j->u.hist.f)], &p, &r)) != 0)
    return rc;
  n = PQntuples(r);
  for (i = 0; i < n && rc == 0; i++) {
    if ((uint32_t)i == max || b->bytes_len >= RECORD_BATCH_BYTES) {
      j->u.hist.more = 1;
      break;
    }
    rc = add_row(b, r, i);
  }
  PQclear(r);
  if (rc != 0)
    return rc;
  j->u.hist.reached = j->u.hist.more ? b->revs[b->n - 1] : upto;
  j->u.hist.more |= upto < s->fed;
  return 0;
}

/* A history read, in one snapshot with the history's start: another
 * service's purge may have trimmed past what this one last saw, and a
 * read from before the start must fail as compacted, not come back with
 * a gap. */
static int do_hist(pg *s, job *j) {
  uint64_t rev, first, records;
  int rc;

  if ((rc = exec(s, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")) != 0)
    return rc;
  if ((rc = read_head(s, &rev, &first, &records)) == 0) {
    if (first > s->hist_first)
      s->hist_first = first;
    rc = hist_read(s, j);
  }
  if (exec(s, rc == 0 ? "COMMIT" : "ROLLBACK") != 0 && rc == 0)
    rc = PEERSTORE_ENOTCONN;
  return rc;
}

/* ------------------------------------------------------------------ */
/* Worker: groups                                                      */

static int is_write(const job *j) {
  return j->kind == J_STORE || j->kind == J_REMOVE || j->kind == J_PURGE ||
         j->kind == J_BATCH;
}

static void publish(pg *s) {
  s->cnt.connected = conn_ok(s);
  uv_mutex_lock(&s->lock);
  s->pub_cnt = s->cnt;
  s->pub_revision = s->fed;
  s->pub_records = s->records;
  s->pub_hist_first = s->hist_first;
  s->pub_hist_rows = s->hist_rows;
  s->pub_hist_bytes = s->hist_bytes;
  uv_mutex_unlock(&s->lock);
}

static void push_done(pg *s, job *head, job *tail) {
  if (head == NULL)
    return;
  uv_mutex_lock(&s->lock);
  if (s->done.tail != NULL)
    s->done.tail->next = head;
  else
    s->done.head = head;
  s->done.tail = tail;
  uv_mutex_unlock(&s->lock);
  uv_async_send(&s->async);
}

/* Whether a purge has anything to do: no other service purging right
 * now (an advisory lock, held to the end of the transaction), and
 * records expired or a history over its limits.  Saves taking the
 * writers' lock on every service at every purge interval. */
static int purge_needed(pg *s, const job *j, int *needed) {
  PGresult *r;
  params p;
  int rc;

  memset(&p, 0, sizeof(p));
  p_int8(&p, LOCK_PURGE);
  p_int8(&p, expiry_to_sql(j->u.count.now));
  if ((rc = run(s, "purge_check", &p, &r)) != 0)
    return rc;
  *needed = PQgetvalue(r, 0, 0)[0] != 0 &&
            (PQgetvalue(r, 0, 1)[0] != 0 ||
             (history_on(s) &&
              ((uint64_t)get_int8(r, 0, 4) > s->hist_max_events ||
               (uint64_t)get_int8(r, 0, 3) > s->hist_max_bytes)));
  s->hist_rows = (uint64_t)get_int8(r, 0, 2);
  s->hist_bytes = (uint64_t)get_int8(r, 0, 3);
  PQclear(r);
  return 0;
}

/* Begins a write transaction, takes the writers' lock and reads others'
 * changes since fed into list's changes, in one round trip: the feed is
 * bounded in SQL by the revision the lock read.  When the window is too
 * small or the history was trimmed past fed, the rows are dropped and
 * read_others does it properly, the lock still held. */
static int begin_locked(pg *s, job *list, uint64_t *locked, uint64_t *first,
                        uint64_t *records) {
  pstmt *st = s->pipe;
  PGresult *r;
  int i, rc;

  memset(st, 0, 3 * sizeof(*st));
  st[0].sql = "BEGIN";
  st[1].name = "lock";
  st[2].name = "feed_locked";
  p_int8(&st[2].p, (int64_t)s->fed);
  p_int8(&st[2].p, (int64_t)(s->fed + HISTORY_WINDOW));
  if ((rc = pipe_run(s, st, 3)) != 0) {
    if (!s->err_lost)
      exec(s, "ROLLBACK");
    return rc;
  }
  r = st[1].res;
  *locked = (uint64_t)get_int8(r, 0, 0);
  *first = (uint64_t)get_int8(r, 0, 1);
  *records = (uint64_t)get_int8(r, 0, 2);
  r = st[2].res;
  if (*locked > s->fed &&
      (*first > s->fed || *locked - s->fed > HISTORY_WINDOW)) {
    pipe_clear(st, 3);
    rc = read_others(s, *locked, *first, &list->changes, &list->lost);
  } else {
    for (i = 0; i < PQntuples(r) && rc == 0; i++)
      rc = add_row(&list->changes, r, i);
    s->cnt.changes_of_others += (uint64_t)PQntuples(r);
    if (rc == 0 && *locked > s->fed)
      s->fed = *locked;
    pipe_clear(st, 3);
  }
  if (rc != 0 && !s->err_lost)
    exec(s, "ROLLBACK");
  return rc;
}

/* Runs the jobs of list (writes and cursor opens, NULL-terminated) in one
 * transaction.  A remove with more to do ends it early: *stop is that
 * job (its step done), to go on in the next one; NULL when all ran. */
static int write_group(pg *s, job *list, job **stop) {
  uint64_t fed0 = s->fed, locked, first, records;
  PGresult *r;
  job *j;
  int rc, more, needed = 1;

  *stop = NULL;
  s->delta = 0;
  s->in_commit = 0;
  if (list->kind == J_PURGE && list->next == NULL) {
    if ((rc = exec(s, "BEGIN")) != 0)
      return rc;
    if ((rc = purge_needed(s, list, &needed)) != 0 || !needed)
      goto rollback; /* rc 0: nothing to do, nothing written */
    if ((rc = run(s, "lock", NULL, &r)) != 0)
      goto rollback;
    locked = (uint64_t)get_int8(r, 0, 0);
    first = (uint64_t)get_int8(r, 0, 1);
    records = (uint64_t)get_int8(r, 0, 2);
    PQclear(r);
    rc = read_others(s, locked, first, &list->changes, &list->lost);
  } else {
    /* One round trip: begin, lock, and others' changes (before ours). */
    if ((rc = begin_locked(s, list, &locked, &first, &records)) != 0)
      return rc;
  }
  if (rc != 0)
    goto rollback;
  s->hist_first = first;
  j = list;
  while (j != NULL && rc == 0 && *stop == NULL) {
    if (j->kind == J_STORE) {
      j = do_stores(s, j, &rc);
      continue;
    }
    switch (j->kind) {
    case J_REMOVE:
      /* Its first step fixes what it removes: what was stored before it
       * in the order - in this group too, so not `locked` - and not what
       * the jobs after it store while later steps run. */
      if (j->u.count.upto == 0 &&
          (rc = current_revision(s, &j->u.count.upto)) != 0)
        break;
      rc = remove_step(s, &j->u.count.f, j->u.count.upto, REMOVE_STEP,
                       &j->u.count.gone, &more);
      if (rc == 0 && more)
        *stop = j;
      break;
    case J_PURGE:
      rc = do_purge(s, j, &more);
      break;
    case J_BATCH:
      j->status = do_batch(s, j);
      rc = j->status == PEERSTORE_ECONFLICT || j->status == PEERSTORE_ELIMIT
               ? 0
               : j->status;
      break;
    default:
      break;
    }
    j = j->next;
  }
  if (rc != 0)
    goto rollback;
  /* One round trip: the counter written back, and the commit. */
  memset(s->pipe, 0, 2 * sizeof(*s->pipe));
  s->pipe[0].name = "unlock";
  p_int8(&s->pipe[0].p, s->delta);
  s->pipe[1].sql = "COMMIT";
  s->in_commit = 1;
  rc = pipe_run(s, s->pipe, 2);
  s->in_commit = 0;
  if (rc != 0) {
    s->cnt.interrupted += rc == PEERSTORE_EINTERRUPTED;
    if (!s->err_lost) /* the unlock failed: the COMMIT did not run */
      exec(s, "ROLLBACK");
    s->fed = fed0;
    return rc;
  }
  s->fed = (uint64_t)get_int8(s->pipe[0].res, 0, 0);
  pipe_clear(s->pipe, 2);
  s->cnt.transactions++;
  s->records = (uint64_t)((int64_t)records + s->delta);
  for (j = list; j != NULL; j = j->next) {
    if (j->kind == J_REMOVE)
      j->u.count.count += j->u.count.gone.n;
    if (j == *stop)
      break;
  }
  return 0;

rollback:
  if (!s->err_lost)
    exec(s, "ROLLBACK");
  s->fed = fed0;
  return rc;
}

/* Snapshots of the cursors opened in a committed group: the revision of
 * the last change before each one's place in the order. */
static void set_snapshots(job *list, uint64_t at, int ok) {
  job *j;

  for (j = list; j != NULL; j = j->next) {
    if (ok && j->changes.n > 0)
      at = j->changes.revs[j->changes.n - 1];
    if (ok && j->kind == J_STORE && j->status == 0)
      at = j->u.store.gone.n > 0
               ? j->u.store.gone.revs[j->u.store.gone.n - 1]
               : j->u.store.rec.revision;
    if (ok && (j->kind == J_REMOVE || j->kind == J_PURGE) &&
        j->u.count.gone.n > 0)
      at = j->u.count.gone.revs[j->u.count.gone.n - 1];
    if (ok && j->kind == J_BATCH && j->status == 0 && j->u.batch.last > 0)
      at = j->u.batch.last;
    if (j->kind == J_OPEN)
      j->u.next.cursor->max_revision = at;
  }
}

/* Drops what a failed transaction's jobs collected for the hook, and
 * sets their status (0: to run them again). */
static void fail_list(pg *s, job *list, int status) {
  job *j;

  for (j = list; j != NULL; j = j->next) {
    s->cnt.unavailable += status == PEERSTORE_ENOTCONN;
    j->changes.n = j->changes.bytes_len = 0;
    j->lost = 0;
    if (j->kind == J_STORE)
      j->u.store.gone.n = j->u.store.gone.bytes_len = 0;
    if (j->kind == J_REMOVE || j->kind == J_PURGE)
      j->u.count.gone.n = j->u.count.gone.bytes_len = 0;
    if (j->kind == J_PURGE)
      j->u.count.count = 0;
    if (j->kind == J_BATCH)
      j->u.batch.changes.n = j->u.batch.changes.bytes_len = 0;
    if (j->kind != J_OPEN)
      j->status = status;
  }
}

static job *list_tail(job *j) {
  while (j != NULL && j->next != NULL)
    j = j->next;
  return j;
}

/* A remove cut into steps: what this step took goes to the loop in a
 * job of its own (reported, no callback). */
static job *split_step(job *j) {
  job *k = calloc(1, sizeof(*k));

  if (k == NULL)
    return NULL;
  k->kind = j->kind;
  k->u.count.partial = 1;
  k->changes = j->changes;
  k->lost = j->lost;
  k->u.count.gone = j->u.count.gone;
  memset(&j->changes, 0, sizeof(j->changes));
  j->lost = 0;
  memset(&j->u.count.gone, 0, sizeof(j->u.count.gone));
  return k;
}

static int wait_connected(pg *s);

/* Runs the writes (and cursor opens) of list, all in order, and hands
 * them to the loop. */
static void run_writes(pg *s, job *list) {
  while (list != NULL) {
    uint64_t fed0 = s->fed;
    job *stop = NULL, *j, *k;
    int rc = 0, writes = 0;

    for (j = list; j != NULL; j = j->next)
      writes |= is_write(j);
    /* Cursors opened without writes first read what others committed:
     * an iteration begun on any host holds every change acknowledged on
     * any host before it began. */
    if ((rc = wait_connected(s)) == 0)
      rc = writes ? write_group(s, list, &stop) : do_feed(s, list);
    /* A connection found dead before the commit was sent (killed while
     * idle, the server restarted): nothing was applied, so the group
     * runs again, once, on a new one. */
    if (rc == PEERSTORE_ENOTCONN && s->err_lost) {
      s->cnt.retried++;
      fail_list(s, list, 0);
      stop = NULL;
      if ((rc = wait_connected(s)) == 0)
        rc = writes ? write_group(s, list, &stop) : do_feed(s, list);
    }
    if (rc != 0) {
      fail_list(s, list, rc);
      stop = NULL;
    }
    set_snapshots(list, fed0, rc == 0);
    publish(s);
    if (stop == NULL) {
      push_done(s, list, list_tail(list));
      return;
    }
    /* Up to stop's step committed; stop goes on in the next one. */
    if ((k = split_step(stop)) == NULL) {
      stop->status = PEERSTORE_ENOMEM;
      push_done(s, list, list_tail(list));
      return;
    }
    if (stop == list) {
      push_done(s, k, k);
    } else {
      for (j = list; j->next != stop; j = j->next)
        ;
      j->next = k;
      push_done(s, list, k);
    }
    list = stop;
  }
}

/* Runs the jobs of head (NULL-terminated): each run of writes in a
 * transaction, each read after it, in the order they came. */
static void run_group(pg *s, job *head) {
  while (head != NULL) {
    job *j = head, *prev = NULL;
    int rc = 0, attempt;

    if (is_write(head) || head->kind == J_OPEN) {
      /* A purge goes alone: it may find nothing to do. */
      while (j != NULL && (is_write(j) || j->kind == J_OPEN) &&
             (j == head || (j->kind != J_PURGE && head->kind != J_PURGE))) {
        prev = j;
        j = j->next;
      }
      prev->next = NULL;
      run_writes(s, head);
      head = j;
      continue;
    }
    head = j->next;
    j->next = NULL;
    for (attempt = 0; attempt < 2; attempt++) {
      /* A read found the connection dead: read again on a new one. */
      if ((rc = wait_connected(s)) != 0)
        break;
      switch (j->kind) {
      case J_NEXT:
        rc = do_next(s, j);
        break;
      case J_HIST:
        rc = do_hist(s, j);
        break;
      case J_FEED:
        rc = do_feed(s, j);
        break;
      default:
        break;
      }
      if (!(rc == PEERSTORE_ENOTCONN && s->err_lost))
        break;
      s->cnt.retried += attempt == 0;
      j->changes.n = j->changes.bytes_len = 0;
      j->lost = 0;
      if (j->kind == J_NEXT) {
        j->u.next.out.n = j->u.next.out.bytes_len = 0;
        j->u.next.more = 0;
      }
      if (j->kind == J_HIST) {
        j->u.hist.out.n = j->u.hist.out.bytes_len = 0;
        j->u.hist.more = 0;
      }
    }
    if (rc != 0) {
      s->cnt.unavailable += rc == PEERSTORE_ENOTCONN && j->kind != J_FEED;
      j->status = rc;
      j->changes.n = j->changes.bytes_len = 0;
      j->lost = 0;
    }
    publish(s);
    push_done(s, j, j);
  }
}

/* ------------------------------------------------------------------ */
/* Worker: the connection                                              */

/* Parameter types of the filter statements: three bytea, then int8s
 * (declared, since a filter leaves some unused). */
static const Oid filter_types[7] = {17, 17, 17, 20, 20, 20, 20};

static int prepare_typed(pg *s, const char *name, const char *sql, int n,
                         const Oid *types) {
  PGresult *r = PQprepare(s->conn, name, sql, n, types);
  int rc = 0;

  if (r == NULL || PQresultStatus(r) != PGRES_COMMAND_OK)
    rc = fail(s, r, name);
  PQclear(r);
  return rc;
}

static int prepare(pg *s, const char *name, const char *sql) {
  return prepare_typed(s, name, sql, 0, NULL);
}

static int prepare_all(pg *s) {
  char sql[2048];
  int i, rc = 0;

  rc |= prepare(s, "head", PG_HEAD_SQL);
  rc |= prepare(s, "feed", PG_FEED_SQL);
  rc |= prepare(s, "feed_head", PG_FEED_HEAD_SQL);
  rc |= prepare(s, "feed_locked", PG_FEED_LOCKED_SQL);
  rc |= prepare(s, "lock",
                "SELECT revision, history_first, records "
                "FROM peerstore_lock()");
  rc |= prepare(s, "unlock", "SELECT peerstore_unlock($1)");
  rc |= prepare(s, "current",
                "SELECT current_setting('peerstore.revision')::bigint");
  rc |= prepare(s, "store",
                "SELECT * FROM peerstore_store($1, $2, $3, $4, $5, $6, $7, "
                "$8, $9)");
  rc |= prepare(s, "remove",
                "SELECT * FROM peerstore_remove($1, $2, $3, $4, $5, $6)");
  rc |= prepare(s, "expire", "SELECT * FROM peerstore_expire($1, $2, $3)");
  rc |= prepare(s, "trim", "SELECT peerstore_trim($1, $2)");
  rc |= prepare(s, "purge_check", PG_PURGE_CHECK_SQL);
  rc |= prepare(s, "hist_size", PG_HIST_SIZE_SQL);
  rc |= prepare(s, "newest", PG_NEWEST_SQL);
  for (i = 0; i < F_COUNT; i++) {
    char name[16];
    snprintf(name, sizeof(name), "iter%d", i);
    snprintf(sql, sizeof(sql), PG_ITERATE_SQL, pg_filter_where[i]);
    rc |= prepare_typed(s, name, sql, 7, filter_types);
    snprintf(name, sizeof(name), "hist%d", i);
    snprintf(sql, sizeof(sql), PG_HISTORY_SQL, pg_filter_where[i],
             pg_filter_where[i], pg_filter_where[i]);
    rc |= prepare_typed(s, name, sql, 6, filter_types);
  }
  return rc ? PEERSTORE_EPLUGIN : 0;
}

/* Creates the schema on a database without it, checks its version
 * otherwise; under an advisory lock, so that services starting together
 * create it once. */
static int check_schema(pg *s) {
  PGresult *r;
  int64_t version = -1;
  int rc;

  if ((rc = exec(s, "BEGIN")) != 0)
    return rc;
  if ((rc = exec(s, "SELECT pg_advisory_xact_lock(" LOCK_SCHEMA ")")) != 0)
    goto out;
  r = PQexec(s->conn, "SELECT value FROM peerstore_meta "
                      "WHERE name = 'schema_version'");
  if (r != NULL && PQresultStatus(r) == PGRES_TUPLES_OK) {
    version = PQntuples(r) == 1 ? strtoll(PQgetvalue(r, 0, 0), NULL, 10) : 0;
    PQclear(r);
  } else {
    const char *state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    int missing = state != NULL && strcmp(state, "42P01") == 0;
    if (!missing)
      rc = fail(s, r, "reading the schema version");
    PQclear(r);
    if (!missing)
      goto out;
    /* The failed statement ended the transaction's usefulness. */
    if ((rc = exec(s, "ROLLBACK")) != 0 || (rc = exec(s, "BEGIN")) != 0 ||
        (rc = exec(s, "SELECT pg_advisory_xact_lock(" LOCK_SCHEMA ")")) != 0)
      goto out;
    r = PQexec(s->conn, "SELECT to_regclass('peerstore_meta') IS NULL");
    if (r == NULL || PQresultStatus(r) != PGRES_TUPLES_OK) {
      rc = fail(s, r, "looking for the schema");
      PQclear(r);
      goto out;
    }
    if (PQgetvalue(r, 0, 0)[0] == 't') {
      PQclear(r);
      if ((rc = exec(s, peerstore_postgres_schema)) != 0)
        goto out;
      s->log(s->log_ctx, PEERSTORE_LOG_INFO,
             "postgres: created the schema (version %d)", SCHEMA_VERSION);
      version = SCHEMA_VERSION;
    } else {
      PQclear(r);
      version = 0; /* created meanwhile by another: read it again */
      rc = exec(s, "COMMIT");
      return rc != 0 ? rc : check_schema(s);
    }
  }
  if (version != SCHEMA_VERSION) {
    s->log(s->log_ctx, PEERSTORE_LOG_ERROR,
           "postgres: the database has schema version %" PRId64
           "; this plugin knows %d (a newer peerstore made it?)",
           version, SCHEMA_VERSION);
    rc = PEERSTORE_EPLUGIN;
  }
out:
  if (rc == 0)
    rc = exec(s, "COMMIT");
  else if (conn_ok(s))
    exec(s, "ROLLBACK");
  return rc;
}

/* Waits for fd to be ready for events, or the wake pipe, or ms. */
static int wait_fd(pg *s, int fd, short events, int ms) {
  struct pollfd p[2];

  p[0].fd = fd;
  p[0].events = events;
  p[1].fd = s->wake[0];
  p[1].events = POLLIN;
  return poll(p, 2, ms);
}

static int stopping(pg *s) {
  int st;

  uv_mutex_lock(&s->lock);
  st = s->stopping;
  uv_mutex_unlock(&s->lock);
  return st;
}

/* The server's notices go to the log, not to stderr. */
static void on_notice(void *arg, const char *msg) {
  pg *s = arg;
  size_t n = strlen(msg);

  if (n > 0 && msg[n - 1] == '\n')
    n--;
  s->log(s->log_ctx, PEERSTORE_LOG_INFO, "postgres: %.*s", (int)n, msg);
}

/* Connects without blocking past the stop: PQconnectStart and
 * PQconnectPoll, waiting on the socket and the wake pipe.  Then the
 * session: schema, statements, LISTEN. */
static int connect_db(pg *s, int timeout_ms) {
  uint64_t deadline = mono_ms() + (uint64_t)timeout_ms;
  PostgresPollingStatusType ps = PGRES_POLLING_WRITING;
  int rc;

  if (s->conn != NULL)
    PQfinish(s->conn);
  s->conn_dead = 0;
  s->conn = PQconnectStart(s->conninfo);
  if (s->conn == NULL)
    return PEERSTORE_ENOMEM;
  if (PQstatus(s->conn) == CONNECTION_BAD)
    goto bad;
  while (ps != PGRES_POLLING_OK) {
    int left = (int)(deadline - mono_ms());
    if (ps == PGRES_POLLING_FAILED)
      goto bad;
    if (left <= 0 || (s->worker_started && stopping(s))) {
      s->log(s->log_ctx, PEERSTORE_LOG_WARN,
             "postgres: connecting: %s",
             left <= 0 ? "timed out" : "stopped");
      PQfinish(s->conn);
      s->conn = NULL;
      return PEERSTORE_ENOTCONN;
    }
    wait_fd(s, PQsocket(s->conn),
            ps == PGRES_POLLING_READING ? POLLIN : POLLOUT,
            left < 200 ? left : 200);
    ps = PQconnectPoll(s->conn);
  }
  PQsetNoticeProcessor(s->conn, on_notice, s);
  if ((rc = exec(s, "SET SESSION CHARACTERISTICS AS TRANSACTION "
                    "ISOLATION LEVEL READ COMMITTED")) != 0 ||
      (rc = exec(s, "SET client_min_messages = warning")) != 0 ||
      (rc = check_schema(s)) != 0 || (rc = prepare_all(s)) != 0 ||
      (rc = exec(s, "LISTEN peerstore")) != 0) {
    PQfinish(s->conn);
    s->conn = NULL;
    return rc;
  }
  s->cnt.connects++;
  return 0;

bad:
  s->log(s->log_ctx, PEERSTORE_LOG_WARN, "postgres: connecting: %s",
         PQerrorMessage(s->conn));
  PQfinish(s->conn);
  s->conn = NULL;
  return PEERSTORE_ENOTCONN;
}

/* Before a job: a connection, reconnecting with backoff for up to
 * unavailable_ms since it was lost.  Then 0, else PEERSTORE_ENOTCONN. */
static int wait_connected(pg *s) {
  uint64_t now;

  if (conn_ok(s))
    return 0;
  now = mono_ms();
  if (s->down_since == 0) {
    s->down_since = now;
    s->backoff_ms = 0;
    s->cnt.connections_lost++;
    publish(s);
    s->log(s->log_ctx, PEERSTORE_LOG_WARN,
           "postgres: lost the database connection; reconnecting");
  }
  for (;;) {
    if (stopping(s))
      return PEERSTORE_ENOTCONN;
    if (connect_db(s, 5000) == 0) {
      s->log(s->log_ctx, PEERSTORE_LOG_INFO,
             "postgres: reconnected after %" PRIu64 " ms",
             mono_ms() - s->down_since);
      s->down_since = 0;
      s->backoff_ms = 0;
      publish(s);
      return 0;
    }
    now = mono_ms();
    if (now - s->down_since >= (uint64_t)s->unavailable_ms)
      return PEERSTORE_ENOTCONN;
    s->backoff_ms = s->backoff_ms ? s->backoff_ms * 2 : 50;
    if (s->backoff_ms > 2000)
      s->backoff_ms = 2000;
    wait_fd(s, -1, 0, (int)s->backoff_ms);
  }
}

/* Reads what came on the connection between jobs: notifications. */
static void read_notifications(pg *s) {
  PGnotify *n;

  if (s->conn == NULL || PQconsumeInput(s->conn) == 0)
    return;
  while ((n = PQnotifies(s->conn)) != NULL) {
    uint64_t rev = strtoull(n->extra, NULL, 10);
    s->cnt.doorbells++;
    if (rev > s->rung)
      s->rung = rev;
    PQfreemem(n);
  }
}

static job *take_all(pg *s, int *stop) {
  job *head, *h, *tail;
  int i;

  uv_mutex_lock(&s->lock);
  head = s->todo.head;
  s->todo.head = s->todo.tail = NULL;
  /* A few history reads per group, after its writes. */
  for (i = 0; i < HIST_PER_GROUP && (h = s->hist_todo.head) != NULL; i++) {
    s->hist_todo.head = h->next;
    if (s->hist_todo.head == NULL)
      s->hist_todo.tail = NULL;
    h->next = NULL;
    for (tail = head; tail != NULL && tail->next != NULL; tail = tail->next)
      ;
    if (tail != NULL)
      tail->next = h;
    else
      head = h;
  }
  *stop = s->stopping;
  uv_mutex_unlock(&s->lock);
  return head;
}

static void worker_main(void *arg) {
  pg *s = arg;
  uint64_t last_feed = mono_ms();

  for (;;) {
    char buf[64];
    int stop, idle_ms;
    job *head = take_all(s, &stop);

    if (head == NULL && stop)
      break;
    if (head == NULL) {
      /* Between jobs: wait for one, for the doorbell, or for the poll. */
      uint64_t now = mono_ms();
      int fd = conn_ok(s)
                   ? PQsocket(s->conn)
                   : -1;
      idle_ms = now - last_feed >= (uint64_t)s->poll_ms
                    ? 0
                    : (int)((uint64_t)s->poll_ms - (now - last_feed));
      if (s->rung <= s->fed && idle_ms > 0 &&
          wait_fd(s, fd, POLLIN, idle_ms) > 0) {
        while (read(s->wake[0], buf, sizeof(buf)) > 0)
          ;
        read_notifications(s);
      }
      if (s->conn != NULL && !conn_ok(s))
        wait_connected(s);
      head = take_all(s, &stop);
      if (head == NULL && (s->rung > s->fed ||
                           mono_ms() - last_feed >= (uint64_t)s->poll_ms)) {
        head = calloc(1, sizeof(*head));
        if (head != NULL)
          head->kind = J_FEED;
      }
      if (head == NULL)
        continue;
    }
    if (head->kind == J_FEED || is_write(head))
      last_feed = mono_ms();
    run_group(s, head);
    read_notifications(s);
  }
}

/* ------------------------------------------------------------------ */
/* Loop side                                                           */

static void drain_done(pg *s) {
  job *j;

  uv_mutex_lock(&s->lock);
  j = s->done.head;
  s->done.head = s->done.tail = NULL;
  uv_mutex_unlock(&s->lock);
  ps_jobs_complete(j, s->changed, s->changed_ctx);
}

static void on_async(uv_async_t *a) { drain_done(a->data); }

static void submit(pg *s, job *j) {
  int was_empty;

  uv_mutex_lock(&s->lock);
  was_empty = s->todo.head == NULL && s->hist_todo.head == NULL;
  ps_jobq_push(j->kind == J_HIST ? &s->hist_todo : &s->todo, j);
  uv_mutex_unlock(&s->lock);
  if (was_empty) {
    ssize_t w;
    do
      w = write(s->wake[1], "", 1);
    while (w < 0 && errno == EINTR);
  }
}

/* ------------------------------------------------------------------ */
/* Plugin operations                                                   */

/* Hands j to the worker; PEERSTORE_ENOMEM when there is no j. */
static int submit_new(pg *s, job *j) {
  if (j == NULL)
    return PEERSTORE_ENOMEM;
  submit(s, j);
  return 0;
}

static int pg_store(void *instance, const peerstore_record *rec,
                    uint32_t writer, enum peerstore_store_option option,
                    peerstore_plugin_store_cb cb, void *arg) {
  return submit_new(instance, ps_job_store(rec, writer, option, cb, arg));
}

static int pg_iterate_open(void *instance, const peerstore_plugin_filter *f,
                           uint64_t now, peerstore_plugin_cursor **out) {
  job *j;
  int rc;

  if ((rc = ps_cursor_open(instance, f, now, out, &j)) == 0)
    submit(instance, j);
  return rc;
}

static int pg_iterate_next(peerstore_plugin_cursor *c, uint32_t max,
                           peerstore_plugin_record_cb rec_cb,
                           peerstore_plugin_next_cb done_cb, void *arg) {
  job *j;
  int rc;

  if ((rc = ps_job_next(c, max, rec_cb, done_cb, arg, &j)) == 0 && j != NULL)
    submit(c->s, j);
  return rc;
}

static int pg_remove(void *instance, const peerstore_plugin_filter *f,
                     peerstore_plugin_count_cb cb, void *arg) {
  return submit_new(instance, ps_job_count(J_REMOVE, f, 0, 0, cb, arg));
}

static int pg_purge(void *instance, uint64_t now, uint32_t max,
                    peerstore_plugin_count_cb cb, void *arg) {
  return submit_new(instance, ps_job_count(J_PURGE, NULL, now, max, cb, arg));
}

static int pg_history_read(void *instance, const peerstore_plugin_filter *f,
                           uint64_t after, uint32_t max,
                           peerstore_plugin_change_cb ev_cb,
                           peerstore_plugin_history_cb done_cb, void *arg) {
  return submit_new(instance,
                    ps_job_hist(f, after, max, ev_cb, done_cb, arg));
}

static int pg_batch(void *instance, const peerstore_plugin_batch_op *ops,
                    size_t n, uint32_t writer, peerstore_plugin_batch_cb cb,
                    void *arg) {
  if (ps_batch_check(ops, n) != 0)
    return PEERSTORE_EINVAL;
  return submit_new(instance, ps_job_batch(ops, n, writer, cb, arg));
}

static void pg_history_info(void *instance,
                            peerstore_plugin_history_info *info) {
  pg *s = instance;

  memset(info, 0, sizeof(*info));
  uv_mutex_lock(&s->lock);
  info->first = s->pub_hist_first;
  info->last = s->pub_revision;
  info->events = s->pub_hist_rows;
  info->bytes = s->pub_hist_bytes;
  uv_mutex_unlock(&s->lock);
  info->id = s->hist_id;
}

static void pg_stats(void *instance,
                     void (*cb)(void *arg, const char *name, uint64_t value),
                     void *arg) {
  pg *s = instance;
  pg_counters c;

  uv_mutex_lock(&s->lock);
  c = s->pub_cnt;
  uv_mutex_unlock(&s->lock);
#define PG_SHOW(name) cb(arg, #name, c.name);
  PG_COUNTERS(PG_SHOW)
#undef PG_SHOW
}

static void pg_counts(void *instance, uint64_t *records, uint64_t *revision) {
  pg *s = instance;

  uv_mutex_lock(&s->lock);
  *records = s->pub_records;
  *revision = s->pub_revision;
  uv_mutex_unlock(&s->lock);
}

/* ------------------------------------------------------------------ */
/* Open and close                                                      */

static void pg_free(pg *s) {
  if (s->conn != NULL)
    PQfinish(s->conn);
  if (s->wake[0] >= 0)
    close(s->wake[0]);
  if (s->wake[1] >= 0)
    close(s->wake[1]);
  uv_mutex_destroy(&s->lock);
  free(s->conninfo);
  free(s->pipe);
  free(s);
}

static int int_option(const peerstore_plugin_env *env, const char *name,
                      long lo, long hi, long def, long *out) {
  const char *v = env->option(env->option_ctx, name);
  char *end;
  long x;

  *out = def;
  if (v == NULL)
    return 0;
  x = strtol(v, &end, 10);
  if (*v == '\0' || *end != '\0' || x < lo || x > hi) {
    env->log(env->log_ctx, PEERSTORE_LOG_ERROR,
             "postgres: %s must be a number from %ld to %ld, not '%s'", name,
             lo, hi, v);
    return PEERSTORE_EINVAL;
  }
  *out = x;
  return 0;
}

static void on_async_closed(uv_handle_t *h);

static int pg_open(const peerstore_plugin_env *env, void **instance) {
  const char *ci = env->option(env->option_ctx, "conninfo");
  uint64_t rev, first, records;
  PGresult *r;
  pg *s;
  long poll_ms, unavail_ms, connect_ms, bmc;
  int rc, fl;

  if (int_option(env, "poll_interval_ms", 10, 3600000, 2000, &poll_ms) ||
      int_option(env, "unavailable_timeout_ms", 0, 3600000, 10000,
                 &unavail_ms) ||
      int_option(env, "connect_timeout_ms", 100, 3600000, 10000,
                 &connect_ms) ||
      int_option(env, "batch_max_changes", 1, BATCH_CHANGES_MAX,
                 BATCH_CHANGES_MAX, &bmc))
    return PEERSTORE_EINVAL;
  if ((s = calloc(1, sizeof(*s))) == NULL)
    return PEERSTORE_ENOMEM;
  s->wake[0] = s->wake[1] = -1;
  uv_mutex_init(&s->lock);
  s->loop = env->loop;
  s->log = env->log;
  s->log_ctx = env->log_ctx;
  s->changed = env->changed;
  s->changed_ctx = env->changed_ctx;
  s->hist_max_events = env->history_events;
  s->hist_max_bytes = env->history_bytes;
  s->poll_ms = (int)poll_ms;
  s->unavailable_ms = (int)unavail_ms;
  s->batch_max_changes = (size_t)bmc;
  /* An empty conninfo means libpq's defaults (PGHOST, PGDATABASE...). */
  if ((s->conninfo = strdup(ci != NULL ? ci : "")) == NULL ||
      (s->pipe = calloc(PIPE_MAX, sizeof(*s->pipe))) == NULL ||
      pipe(s->wake) != 0) {
    pg_free(s);
    return PEERSTORE_ENOMEM;
  }
  for (fl = 0; fl < 2; fl++) {
    fcntl(s->wake[fl], F_SETFL, fcntl(s->wake[fl], F_GETFL) | O_NONBLOCK);
    fcntl(s->wake[fl], F_SETFD, FD_CLOEXEC);
  }
  /* The service does not start without its database. */
  if ((rc = connect_db(s, (int)connect_ms)) != 0) {
    s->log(s->log_ctx, PEERSTORE_LOG_ERROR,
           "postgres: cannot use the database (conninfo '%s')",
           s->conninfo);
    pg_free(s);
    return rc == PEERSTORE_ENOTCONN ? PEERSTORE_EIO : rc;
  }
  if ((rc = read_head(s, &rev, &first, &records)) != 0 ||
      (rc = run(s, "hist_size", NULL, &r)) != 0) {
    pg_free(s);
    return rc;
  }
  s->hist_rows = (uint64_t)get_int8(r, 0, 0);
  s->hist_bytes = (uint64_t)get_int8(r, 0, 1);
  PQclear(r);
  r = PQexec(s->conn, "SELECT value FROM peerstore_meta "
                      "WHERE name = 'history_id'");
  if (r == NULL || PQresultStatus(r) != PGRES_TUPLES_OK ||
      PQntuples(r) != 1) {
    rc = fail(s, r, "reading history_id");
    PQclear(r);
    pg_free(s);
    return rc;
  }
  s->hist_id = strtoull(PQgetvalue(r, 0, 0), NULL, 10);
  PQclear(r);
  /* Everything up to here counts as reported. */
  s->fed = s->rung = rev;
  s->hist_first = first;
  s->records = records;
  publish(s);
  if (uv_async_init(env->loop, &s->async, on_async) != 0) {
    pg_free(s);
    return PEERSTORE_EPLUGIN;
  }
  s->async.data = s;
  s->worker_started = 1;
  if (uv_thread_create(&s->worker, worker_main, s) != 0) {
    /* s goes when the handle has closed, on a later turn. */
    uv_close((uv_handle_t *)&s->async, on_async_closed);
    return PEERSTORE_EPLUGIN;
  }
  s->log(s->log_ctx, PEERSTORE_LOG_INFO,
         "postgres: connected; revision %" PRIu64 ", %" PRIu64 " records",
         rev, records);
  *instance = s;
  return 0;
}

static void on_async_closed(uv_handle_t *h) { pg_free(h->data); }

static void pg_close(void *instance) {
  pg *s = instance;
  ssize_t w;

  uv_mutex_lock(&s->lock);
  s->stopping = 1;
  uv_mutex_unlock(&s->lock);
  do
    w = write(s->wake[1], "", 1);
  while (w < 0 && errno == EINTR);
  uv_thread_join(&s->worker);
  /* The worker ran every job before it stopped: complete them now. */
  drain_done(s);
  uv_close((uv_handle_t *)&s->async, on_async_closed);
}

static const peerstore_plugin_ops pg_ops = {
    .open = pg_open,
    .close = pg_close,
    .store = pg_store,
    .iterate_open = pg_iterate_open,
    .iterate_next = pg_iterate_next,
    .iterate_close = ps_cursor_close,
    .remove = pg_remove,
    .purge = pg_purge,
    .counts = pg_counts,
    .history_read = pg_history_read,
    .history_info = pg_history_info,
    .batch = pg_batch,
    .stats = pg_stats,
};

static const peerstore_plugin_desc pg_desc = {
    .abi = PEERSTORE_PLUGIN_ABI,
    .flags = PEERSTORE_PLUGIN_REPORTS_REMOVALS,
    .name = "postgres",
    .ops = &pg_ops,
};

const peerstore_plugin_desc *peerstore_plugin_entry(void);
const peerstore_plugin_desc *peerstore_plugin_entry(void) { return &pg_desc; }
