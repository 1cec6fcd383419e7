/* peerstore_plugin.h - the storage plugin interface of peerstored.
 *
 * A plugin is a shared object named peerstore_plugin_<name>.so exporting one
 * symbol, peerstore_plugin_entry(), which returns a constant descriptor.
 * The service refuses a descriptor whose abi differs from the
 * PEERSTORE_PLUGIN_ABI it was built with.  Plugins keep no global state:
 * open() returns an instance and every other call takes it.
 *
 * Arguments (records, filters, their strings and values) are valid only
 * during the call: a plugin that completes later copies what it needs.
 * Records a plugin passes to a callback are borrowed for that callback.
 *
 * Order: a plugin applies calls in the order it receives them and runs
 * their callbacks in that order, so per-client order and the order of
 * watch notifications follow from the order of calls.  History reads
 * are the exception: a plugin may run one later than calls made after
 * it (the sqlite plugin runs them after the writes queued with them),
 * as long as the hand-over rule of history_read holds.
 *
 * Completion (libuv's rule for requests): an operation that takes a
 * callback either refuses at once - a non-zero return, and its callback
 * never runs - or returns 0 and completes only through its callback,
 * exactly once, with 0 or an error status.  Never both, never neither.
 *
 * Threading: every call is made on the service's loop thread, and every
 * callback must run on that thread too.  A plugin may do its work elsewhere
 * (uv_queue_work, its own thread + uv_async) and call back later, or do it
 * at once and call back before the call returns; the service handles both.
 *
 * Changes: a plugin reports the changes it applies through the
 * environment's changed() hook - every STORE, and with
 * PEERSTORE_PLUGIN_REPORTS_REMOVALS every REMOVE and EXPIRE too - and,
 * when its database is shared with other services (a server-backed
 * plugin), the same changes that another one made as it learns of them;
 * on the loop thread, in revision order, and before the callback of the
 * operation that made the change.  The service feeds its
 * watchers from this hook alone, so a change made elsewhere reaches them
 * exactly as a local one does.
 *
 * Revisions: the plugin numbers every change it applies with a strictly
 * increasing 64-bit revision, and a persistent plugin never reuses one
 * across restarts.  With PEERSTORE_PLUGIN_REPORTS_REMOVALS every change
 * has its own: each store, each record a REPLACE drops, each record a
 * remove deletes, each record the purge expires (DESIGN.md section 7);
 * without it, a remove takes one revision whatever it removed.
 * Records report revisions; "stored order" means ascending revision.
 * A plugin that keeps nothing across restarts still never hands out a
 * revision an earlier instance may have used (the memory plugin starts at
 * the wall clock's microseconds).
 *
 * History: a plugin with history_read keeps the changes it reported, so
 * that a watcher that was away (or behind) can be given exactly what it
 * missed.  Its history covers every change with a revision above
 * history_info's first, up to its last; a read from further back fails
 * with PEERSTORE_ECOMPACTED.  A REMOVE or EXPIRE read back carries the
 * record as it was, as the hook reported it.
 *
 * Expiry: iterate never yields a record whose expiry is <= now (the now
 * passed to the call); purge deletes them.
 */
#ifndef PEERSTORE_PLUGIN_H
#define PEERSTORE_PLUGIN_H

#include <stdint.h>
#include <uv.h>

#include <peerstore.h>

#ifdef __cplusplus
extern "C" {
#endif

/* 2: records carry the uid of their writer.
 * 3: operations complete only through their callback or refuse; changes
 *    are reported through env->changed. */
#define PEERSTORE_PLUGIN_ABI 3


enum peerstore_log_level {
  PEERSTORE_LOG_ERROR = 0,
  PEERSTORE_LOG_WARN = 1,
  PEERSTORE_LOG_INFO = 2,
  PEERSTORE_LOG_DEBUG = 3
};

/* A change to the store (see "Changes" above). */
enum peerstore_plugin_change_kind {
  PEERSTORE_CHANGE_STORE = 1,  /* rec was stored, or refreshed by MULTIPLE */
  PEERSTORE_CHANGE_REMOVE = 2, /* rec was removed, or dropped by a REPLACE */
  PEERSTORE_CHANGE_EXPIRE = 3, /* rec expired and was purged */
  /* A plugin that learns of other services' changes (a shared database)
   * could not learn of every change up to revision (its history was
   * trimmed past them while it was away): rec is NULL.  The service
   * treats every watch as if the history no longer reached back to where
   * it stands (RESET or PEERSTORE_ECOMPACTED), never as if nothing had
   * been missed. */
  PEERSTORE_CHANGE_LOST = 4
};

typedef struct peerstore_plugin_change {
  enum peerstore_plugin_change_kind kind;
  /* The change's own revision.  For STORE it is rec->revision; REMOVE and
   * EXPIRE carry the record as it was, with the revision of the store
   * that wrote it in rec->revision. */
  uint64_t revision;
  const peerstore_record *rec; /* value included; borrowed for the call */
  uint32_t writer;             /* uid that wrote rec */
  uint32_t flags;              /* 0; reserved */
} peerstore_plugin_change;

/* Set in peerstore_plugin_desc.flags by a plugin that reports REMOVE and
 * EXPIRE changes (the change stream, DESIGN.md section 7, needs them).  A
 * plugin without it reports STORE changes only, and numbers a remove
 * with one revision whatever it removed. */
#define PEERSTORE_PLUGIN_REPORTS_REMOVALS 0x1u
/* Set by a plugin that enforces env->quotas (and has quota_usage).  The
 * service refuses to start with quotas configured and a plugin without
 * it. */
#define PEERSTORE_PLUGIN_QUOTAS 0x2u

/* A quota (DESIGN.md section 8): the records of subsystem, and their
 * value bytes, may not pass these limits (0: no limit) - for every writer
 * uid separately with PEERSTORE_PLUGIN_QUOTA_PER_WRITER, else together.
 * A store or batch that would raise a usage past its limit fails with
 * PEERSTORE_EQUOTA and changes nothing; one that does not raise it (a
 * REPLACE of a value by one as large, a remove) always goes through, even
 * when the usage is already over a lowered limit.  Records count until
 * they are removed or purged. */
#define PEERSTORE_PLUGIN_QUOTA_PER_WRITER 0x1u
typedef struct peerstore_plugin_quota {
  const char *subsystem;
  uint64_t max_records;
  uint64_t max_bytes;
  uint32_t flags;
} peerstore_plugin_quota;

/* What the service hands a plugin at open. */
typedef struct peerstore_plugin_env {
  uv_loop_t *loop;
  /* The database path (--database or "database" in the config), or NULL. */
  const char *database;
  /* Looks up a plugin option from the config file's [plugin] section
   * (e.g. "synchronous"); NULL if unset. */
  const char *(*option)(void *ctx, const char *name);
  void *option_ctx;
  /* Logs a line at a level; never pass record values. */
  void (*log)(void *ctx, enum peerstore_log_level level, const char *fmt,
              ...) __attribute__((format(printf, 3, 4)));
  void *log_ctx;
  /* Names a status (peerstore_strerror), for log lines. */
  const char *(*strerror)(int status);
  /* The change hook; see "Changes" above. */
  void (*changed)(void *ctx, const peerstore_plugin_change *change);
  void *changed_ctx;
  /* How much history a plugin with history_read keeps (see "History"
   * below): the changes of at most the last history_events revisions, in
   * at most history_bytes bytes.  0 means none. */
  uint64_t history_events;
  uint64_t history_bytes;
  /* The quotas to enforce (a plugin with PEERSTORE_PLUGIN_QUOTAS copies
   * what it keeps); n_quotas 0: none. */
  const peerstore_plugin_quota *quotas;
  size_t n_quotas;
  void *reserved[4]; /* NULL; room for later calls */
} peerstore_plugin_env;

/* subsystem is required; peer and key NULL mean any. */
typedef struct peerstore_plugin_filter {
  const char *subsystem;
  const peerstore_peer_id *peer;
  const char *key;
} peerstore_plugin_filter;

/* rec is the record as stored, with its revision; NULL when status != 0. */
typedef void (*peerstore_plugin_store_cb)(void *arg, int status,
                                          const peerstore_record *rec);
/* Yields one record and the uid that wrote it; borrowed for the call.
 * Returns 0 for more, or non-zero to end the batch after this record (the
 * service has as much as it may hold for its client): the plugin then
 * calls done_cb, and the cursor resumes after this record. */
typedef int (*peerstore_plugin_record_cb)(void *arg,
                                          const peerstore_record *rec,
                                          uint32_t writer);
/* Ends one iterate_next: status 0 and more == 0 means the iteration is
 * complete. */
typedef void (*peerstore_plugin_next_cb)(void *arg, int status, int more);
typedef void (*peerstore_plugin_count_cb)(void *arg, int status,
                                          uint64_t count);

typedef struct peerstore_plugin_cursor peerstore_plugin_cursor;

/* Yields one change read back from the history, exactly as the hook
 * reported it; borrowed for the call.  Returns 0 for more, or non-zero to
 * end the read after this change. */
typedef int (*peerstore_plugin_change_cb)(void *arg,
                                          const peerstore_plugin_change *ch);
/* Ends one history_read.  Every matching change with a revision up to
 * reached has been yielded.  more == 0: reached is the latest revision
 * the plugin has given out, every change up to it has already gone
 * through the hook and every later one will, after this callback - so a
 * reader goes over from the history to the hook with no gap and no
 * change twice.  Status PEERSTORE_ECOMPACTED: the history no longer holds
 * every change after the revision asked for. */
typedef void (*peerstore_plugin_history_cb)(void *arg, int status,
                                            uint64_t reached, int more);

/* One operation of a batch (DESIGN.md section 8). */
enum peerstore_plugin_batch_kind {
  PEERSTORE_PLUGIN_BATCH_STORE = 1,  /* rec, with option */
  PEERSTORE_PLUGIN_BATCH_REMOVE = 2, /* what filter matches */
  PEERSTORE_PLUGIN_BATCH_REQUIRE = 3 /* filter names a triple: its newest
                                        record has revision (0: none) */
};

typedef struct peerstore_plugin_batch_op {
  enum peerstore_plugin_batch_kind kind;
  enum peerstore_store_option option; /* STORE */
  peerstore_record rec;               /* STORE; its revision is unused */
  peerstore_plugin_filter filter;     /* REMOVE, REQUIRE */
  uint64_t revision;                  /* REQUIRE */
} peerstore_plugin_batch_op;

/* status 0: every operation applied; the batch's changes have the
 * consecutive revisions first_revision..last_revision (both 0: it changed
 * nothing).  Otherwise nothing was applied (both 0). */
typedef void (*peerstore_plugin_batch_cb)(void *arg, int status,
                                          uint64_t first_revision,
                                          uint64_t last_revision);

/* Ends one backup: status 0 and the revision of the last change the copy
 * holds, or an error and 0. */
typedef void (*peerstore_plugin_backup_cb)(void *arg, int status,
                                           uint64_t revision);

/* What a plugin's history holds (history_info). */
typedef struct peerstore_plugin_history_info {
  uint64_t first;  /* every change with a revision above this is held */
  uint64_t last;   /* the latest revision given out */
  uint64_t events; /* changes held beyond the live records' own */
  uint64_t bytes;  /* and the bytes they take */
  /* This line of revisions: the same id and revision always mean the
   * same change.  A persistent plugin keeps it with its data; one that
   * keeps nothing draws a new one each time it opens. */
  uint64_t id;
  uint64_t reserved[3];
} peerstore_plugin_history_info;

typedef struct peerstore_plugin_ops {
  /* Opens an instance; returns 0 or a negative status, with a reason
   * already logged through env->log. */
  int (*open)(const peerstore_plugin_env *env, void **instance);
  /* Finishes or abandons in-flight work (calling its callbacks with an
   * error if it abandons it), releases everything, returns at once after
   * which no callback runs.  The service calls it only once its own
   * requests have completed. */
  void (*close)(void *instance);

  /* Applies one store (DESIGN.md section 1): REPLACE drops the other values
   * under the triple; MULTIPLE with a byte-identical value refreshes that
   * record's expiry and gives it a new revision.  writer is the uid of the
   * client that stored it, kept with the record (a refresh updates it).
   * The STORE change is reported before cb runs. */
  int (*store)(void *instance, const peerstore_record *rec, uint32_t writer,
               enum peerstore_store_option option,
               peerstore_plugin_store_cb cb, void *arg);

  /* Begins an iteration over the records matching filter, in stored
   * order.  It yields the records that existed when it began, as each
   * still is when the cursor reaches it: one removed, replaced or
   * refreshed (a new revision) after the iteration began is not yielded,
   * nor is anything stored later.  The snapshot revision is fixed in the
   * order of calls: a store made before this call is in it.  The filter
   * is copied.  Synchronous: returns 0 with *cursor set, or an error.
   * What a cursor holds is bounded, however the store changes under it. */
  int (*iterate_open)(void *instance, const peerstore_plugin_filter *filter,
                      uint64_t now, peerstore_plugin_cursor **cursor);
  /* Yields up to max records through rec_cb (fewer if rec_cb asks to
   * stop), then calls done_cb once (the completion).  A plugin that copies
   * records out for the loop bounds the bytes of one batch too.  Only one
   * iterate_next per cursor may be outstanding. */
  int (*iterate_next)(peerstore_plugin_cursor *cursor, uint32_t max,
                      peerstore_plugin_record_cb rec_cb,
                      peerstore_plugin_next_cb done_cb, void *arg);
  /* Releases the cursor; no outstanding iterate_next may be pending. */
  void (*iterate_close)(peerstore_plugin_cursor *cursor);

  /* Removes every record matching filter; cb runs once with the count. */
  int (*remove)(void *instance, const peerstore_plugin_filter *filter,
                peerstore_plugin_count_cb cb, void *arg);
  /* Deletes up to max records whose expiry is <= now. */
  int (*purge)(void *instance, uint64_t now, uint32_t max,
               peerstore_plugin_count_cb cb, void *arg);
  /* Number of records held (expired ones not yet purged included) and the
   * last revision given out.  Synchronous. */
  void (*counts)(void *instance, uint64_t *records, uint64_t *revision);

  /* History (optional: NULL in a plugin that keeps none, whose watchers
   * then cannot resume).  A plugin with it also sets
   * PEERSTORE_PLUGIN_REPORTS_REMOVALS and keeps every change of the last
   * env->history_events revisions within env->history_bytes, trimming
   * older ones no later than its next purge.
   *
   * Reads the changes matching filter with a revision above after, in
   * revision order: up to max of them through ev_cb (fewer if it asks to
   * stop), then done_cb once.  A plugin may also end a read early after
   * looking at many changes that did not match; reached says how far it
   * got. */
  int (*history_read)(void *instance, const peerstore_plugin_filter *filter,
                      uint64_t after, uint32_t max,
                      peerstore_plugin_change_cb ev_cb,
                      peerstore_plugin_history_cb done_cb, void *arg);
  /* Synchronous. */
  void (*history_info)(void *instance, peerstore_plugin_history_info *info);

  /* Batches (optional: NULL in a plugin without them, whose clients are
   * then refused batches with PEERSTORE_EPLUGIN).  Applies ops all or
   * nothing, in order: first every REQUIRE is checked against the store
   * as it is before the batch (one that does not hold: status
   * PEERSTORE_ECONFLICT, nothing applied), then each STORE and REMOVE is
   * applied as the single calls would (a REMOVE in one piece, whatever
   * it matches), with writer as the writer of every store.  Its changes
   * take consecutive revisions and go through the hook together, nothing
   * else between them, before cb.  ops and what they point to are
   * borrowed for the call: a plugin that completes later copies them. */
  int (*batch)(void *instance, const peerstore_plugin_batch_op *ops,
               size_t n, uint32_t writer, peerstore_plugin_batch_cb cb,
               void *arg);
  /* Quotas (with PEERSTORE_PLUGIN_QUOTAS): what env->quotas[i] counts
   * now, over all writers, and for the writer that holds most of it.
   * Synchronous; may lag the latest changes by a group of writes. */
  void (*quota_usage)(void *instance, size_t i, uint64_t *records,
                      uint64_t *bytes, uint64_t *max_writer_records,
                      uint64_t *max_writer_bytes);
  /* The plugin's own counters (optional: NULL when it has none): cb once
   * for each, in a fixed order, with a name of [a-z0-9_] (at most 40
   * bytes) that the service shows as "<plugin name>.<name>" in its
   * stats.  Synchronous, on the loop; values may lag by a group of
   * writes.  (It takes what was the first reserved slot: a plugin built
   * before it has NULL there.) */
  void (*stats)(void *instance,
                void (*cb)(void *arg, const char *name, uint64_t value),
                void *arg);
  /* A consistent copy of the store (optional: NULL in a plugin that
   * keeps nothing on disk, or whose database has tools of its own): the
   * store as it was at one revision, written into fd - an empty regular
   * file open for reading and writing, the caller's, open until cb - as
   * a file the same plugin opens as its database, records, revisions and
   * history intact.  Off the loop, without holding up other requests;
   * cb on the loop.  The plugin reads *stop (atomically) between pieces
   * of work and, once it is non-zero, ends with PEERSTORE_ECANCELED; it
   * stays valid until cb.  (The second reserved slot.) */
  int (*backup)(void *instance, int fd, const int *stop,
                peerstore_plugin_backup_cb cb, void *arg);
  void (*reserved[2])(void); /* NULL; room for later operations */
} peerstore_plugin_ops;

typedef struct peerstore_plugin_desc {
  uint32_t abi; /* PEERSTORE_PLUGIN_ABI */
  uint32_t flags; /* PEERSTORE_PLUGIN_REPORTS_REMOVALS, ... */
  const char *name;
  const peerstore_plugin_ops *ops;
} peerstore_plugin_desc;

/* The one symbol a plugin .so exports. */
typedef const peerstore_plugin_desc *(*peerstore_plugin_entry_fn)(void);
#define PEERSTORE_PLUGIN_ENTRY "peerstore_plugin_entry"

#ifdef __cplusplus
}
#endif
#endif /* PEERSTORE_PLUGIN_H */
