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
 * watch notifications follow from the order of calls.
 *
 * Threading: every call is made on the service's loop thread, and every
 * callback must run on that thread too.  A plugin may do its work elsewhere
 * (uv_queue_work, its own thread + uv_async) and call back later, or do it
 * at once and call back before the call returns; the service handles both.
 *
 * Revisions: the plugin numbers every change it applies (each store and
 * each remove that removed something) with a strictly increasing 64-bit
 * revision, and a persistent plugin never reuses one across restarts.
 * Records report revisions; "stored order" means ascending revision.
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

/* 2: records carry the uid of their writer. */
#define PEERSTORE_PLUGIN_ABI 2


enum peerstore_log_level {
  PEERSTORE_LOG_ERROR = 0,
  PEERSTORE_LOG_WARN = 1,
  PEERSTORE_LOG_INFO = 2,
  PEERSTORE_LOG_DEBUG = 3
};

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
/* Yields one record and the uid that wrote it; borrowed for the call. */
typedef void (*peerstore_plugin_record_cb)(void *arg,
                                           const peerstore_record *rec,
                                           uint32_t writer);
/* Ends one iterate_next: status 0 and more == 0 means the iteration is
 * complete. */
typedef void (*peerstore_plugin_next_cb)(void *arg, int status, int more);
typedef void (*peerstore_plugin_count_cb)(void *arg, int status,
                                          uint64_t count);

typedef struct peerstore_plugin_cursor peerstore_plugin_cursor;

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
   * cb runs exactly once. */
  int (*store)(void *instance, const peerstore_record *rec, uint32_t writer,
               enum peerstore_store_option option,
               peerstore_plugin_store_cb cb, void *arg);

  /* Begins an iteration over the records matching filter, in stored
   * order, covering the records stored before this call.  The filter is
   * copied. */
  int (*iterate_open)(void *instance, const peerstore_plugin_filter *filter,
                      uint64_t now, peerstore_plugin_cursor **cursor);
  /* Yields up to max records through rec_cb, then calls done_cb once.
   * Only one iterate_next per cursor may be outstanding. */
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
   * last revision given out. */
  void (*counts)(void *instance, uint64_t *records, uint64_t *revision);
} peerstore_plugin_ops;

typedef struct peerstore_plugin_desc {
  uint32_t abi; /* PEERSTORE_PLUGIN_ABI */
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
