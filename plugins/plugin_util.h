/* plugin_util.h - what the plugins that work on a thread of their own
 * share: copied filters, the record buffers a worker fills for the loop,
 * and copies of batches.  Compiled into each plugin (not installed). */
#ifndef PEERSTORE_PLUGIN_UTIL_H
#define PEERSTORE_PLUGIN_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include "peerstore_plugin.h"

/* The four filters, in this order everywhere. */
enum { F_SS, F_PEER, F_KEY, F_TRIPLE, F_COUNT };

/* A filter, copied. */
typedef struct ps_filt {
  char *subsystem;
  char *key; /* NULL: any */
  peerstore_peer_id peer;
  int has_peer;
} ps_filt;

int ps_filt_copy(ps_filt *d, const peerstore_plugin_filter *f);
void ps_filt_free(ps_filt *f);
int ps_filt_kind(const ps_filt *f);

/* Records copied out by a worker for the loop: a batch of an iteration
 * or a history read, or the changes a write made.  kinds and revs are the
 * changes' (recs[i].revision is the revision of the store that wrote the
 * record).  While the worker fills it, strings and values are offsets
 * into bytes, which may still move; ps_rbuf_fixup makes them pointers. */
typedef struct ps_rbuf {
  peerstore_record *recs;
  uint32_t *writers;
  uint64_t *revs;
  uint8_t *kinds;
  uint8_t *bytes; /* strings and values of recs, back to back */
  size_t n;
  size_t cap;
  size_t bytes_len;
  size_t bytes_cap;
} ps_rbuf;

/* Appends a change of kind at revision rev to b: the record stored at
 * stored, with its strings (not NUL-terminated, ss_n and key_n bytes),
 * peer, value, expiry and writer.  0 or PEERSTORE_ENOMEM. */
int ps_rbuf_add(ps_rbuf *b, uint64_t rev, int kind, uint64_t stored,
                const void *ss, size_t ss_n, const uint8_t *peer,
                const void *key, size_t key_n, const void *value,
                size_t value_n, uint64_t expiry, uint32_t writer);
/* Appends rec as a STORE change (its revision is set later, in revs and
 * recs alike). */
int ps_rbuf_rec(ps_rbuf *b, const peerstore_record *rec, uint32_t writer);
void ps_rbuf_fixup(ps_rbuf *b);
void ps_rbuf_free(ps_rbuf *b);
/* The i-th change of b, once b is fixed up. */
void ps_rbuf_change(const ps_rbuf *b, size_t i, peerstore_plugin_change *ch);

/* Copies n batch operations, their strings and values into *ops_out and
 * one allocation *data_out, for a worker.  An empty value points at ""
 * (never NULL).  0 or PEERSTORE_ENOMEM (nothing left allocated). */
int ps_batch_copy(const peerstore_plugin_batch_op *ops, size_t n,
                  peerstore_plugin_batch_op **ops_out, char **data_out);
/* PEERSTORE_EINVAL if an operation's kind is unknown or a REQUIRE does
 * not name a whole triple. */
int ps_batch_check(const peerstore_plugin_batch_op *ops, size_t n);

/* ------------------------------------------------------------------ */
/* Jobs: one request record for each operation.  The loop makes a job and
 * hands it to the plugin's worker thread, which runs it and hands it
 * back; the loop then completes it: its changes through the hook, then
 * its callback. */

/* Records (or changes) one job carries back at the most. */
#define RECORD_BATCH_MAX 4096

enum job_kind {
  J_STORE, J_OPEN, J_NEXT, J_REMOVE, J_PURGE, J_HIST, J_BATCH,
  J_FEED /* postgres: others' changes, nothing asked for */
};

struct peerstore_plugin_cursor {
  void *s; /* the plugin's instance */
  ps_filt f;
  uint64_t after;        /* last revision yielded */
  uint64_t max_revision; /* the snapshot, fixed by its J_OPEN job */
  uint64_t now;
  int done;
  int open_pending; /* its J_OPEN job has not come back yet */
  int closed;       /* iterate_close came first: J_OPEN's return frees it */
};

typedef struct job {
  struct job *next;
  enum job_kind kind;
  int status;
  int contained; /* sqlite: ran in a savepoint of its own */
  void *arg;
  ps_rbuf changes; /* others' changes, reported before this job's */
  uint64_t lost;   /* > 0: PEERSTORE_CHANGE_LOST up to it, first */
  union {
    struct {
      peerstore_record rec; /* strings and value point into data */
      uint32_t writer;
      uint8_t option;
      char *data;
      int refresh;
      ps_rbuf gone; /* what a REPLACE dropped */
      peerstore_plugin_store_cb cb;
    } store;
    struct {
      peerstore_plugin_cursor *cursor;
      uint64_t from; /* cursor->after when it was made */
      uint32_t max;
      int more;
      ps_rbuf out;
      peerstore_plugin_record_cb rec_cb;
      peerstore_plugin_next_cb done_cb;
    } next; /* and J_OPEN's cursor */
    struct {
      ps_filt f;
      uint64_t now;
      uint32_t max;
      uint64_t count;
      ps_rbuf gone;  /* what it removed or expired */
      peerstore_plugin_count_cb cb;
      uint64_t upto; /* remove: the revision when it began */
      int more;      /* remove: a step left records to do */
      int partial;   /* remove: a step's report; the callback comes later */
    } count; /* remove and purge */
    struct {
      ps_filt f;
      uint64_t after;
      uint32_t max;
      int more;
      uint64_t reached;
      ps_rbuf out;
      peerstore_plugin_change_cb ev_cb;
      peerstore_plugin_history_cb done_cb;
    } hist;
    struct {
      peerstore_plugin_batch_op *ops; /* strings and values in data */
      size_t n;
      uint32_t writer;
      char *data;
      uint64_t first, last;
      ps_rbuf changes; /* every change it made, in order, for the hook */
      peerstore_plugin_batch_cb cb;
    } batch;
  } u;
} job;

typedef struct jobq {
  job *head;
  job *tail;
} jobq;

/* The jobs of the operations, copying what they are given; NULL when out
 * of memory. */
job *ps_job_store(const peerstore_record *rec, uint32_t writer,
                  enum peerstore_store_option option,
                  peerstore_plugin_store_cb cb, void *arg);
/* J_REMOVE (f) or J_PURGE (f NULL; now, max). */
job *ps_job_count(enum job_kind kind, const peerstore_plugin_filter *f,
                  uint64_t now, uint32_t max, peerstore_plugin_count_cb cb,
                  void *arg);
job *ps_job_hist(const peerstore_plugin_filter *f, uint64_t after,
                 uint32_t max, peerstore_plugin_change_cb ev_cb,
                 peerstore_plugin_history_cb done_cb, void *arg);
job *ps_job_batch(const peerstore_plugin_batch_op *ops, size_t n,
                  uint32_t writer, peerstore_plugin_batch_cb cb, void *arg);
/* A cursor on instance s and the J_OPEN job that fixes its snapshot.
 * 0 or PEERSTORE_ENOMEM (nothing made). */
int ps_cursor_open(void *s, const peerstore_plugin_filter *f, uint64_t now,
                   peerstore_plugin_cursor **cursor, job **open);
/* The J_NEXT job of iterate_next: 0 and *out; or 0 and *out NULL when
 * the cursor is done (done_cb has run); or PEERSTORE_ENOMEM. */
int ps_job_next(peerstore_plugin_cursor *c, uint32_t max,
                peerstore_plugin_record_cb rec_cb,
                peerstore_plugin_next_cb done_cb, void *arg, job **out);
/* iterate_close: frees c now, or when its J_OPEN job comes back. */
void ps_cursor_close(peerstore_plugin_cursor *c);
void ps_job_free(job *j);
/* Completes the jobs of list in order, on the loop: each one's changes
 * through changed(ctx, ...), then its callback; frees them. */
void ps_jobs_complete(job *list,
                      void (*changed)(void *ctx,
                                      const peerstore_plugin_change *ch),
                      void *ctx);
/* Takes every job off done (under lock) and completes them, as
 * ps_jobs_complete: the loop side of a worker's hand-back. */
void ps_jobs_drain(uv_mutex_t *lock, jobq *done,
                   void (*changed)(void *ctx,
                                   const peerstore_plugin_change *ch),
                   void *ctx);
/* Appends j to q. */
void ps_jobq_push(jobq *q, job *j);

#endif
