/* peerstore.h - client library for the peerstore service.
 *
 * A program links libpeerstore, connects to the local peerstored over its
 * Unix socket and stores, iterates, watches and removes per-peer records.
 * Every call is asynchronous and runs on the caller's libuv loop; results
 * arrive through callbacks from that loop.  One client belongs to one loop
 * and is not thread-safe, like libuv itself.
 *
 * Common rules:
 *  - A status is 0 or a negative PEERSTORE_E* code (negated errno values
 *    where one fits, so libuv statuses pass through unchanged).
 *  - A call that returns NULL failed at once (invalid argument, out of
 *    memory, client closing); its callback never runs.  A call that returns
 *    an operation handle will run its callback later, never from inside
 *    the call itself.
 *  - After *_cancel(op) or peerstore_disconnect() returns, no callback of
 *    the cancelled operations runs.
 *  - An operation handle is valid until its final callback returns (a
 *    store's or remove's one call, an iteration's or watch's call with
 *    rec == NULL, stats' one call), until its *_cancel returns, or until
 *    peerstore_disconnect returns, whichever is first; then it is freed.
 *    Cancelling from inside the operation's own callbacks is allowed (from
 *    the final one it does nothing); cancelling afterwards is a use after
 *    free, as with any freed libuv request.
 *  - Strings, peer ids and values are copied at call time.  Records handed
 *    to a callback are borrowed: valid only during that call.
 *  - SIGPIPE: a write to a service that has just died raises SIGPIPE,
 *    whose default action kills the process.  Connecting sets it to
 *    ignored when it still has its default action (the write then fails
 *    with EPIPE, which the library handles); a handler or disposition the
 *    program chose is left alone.
 */
#ifndef PEERSTORE_H
#define PEERSTORE_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(BUILDING_PEERSTORE) && defined(__GNUC__)
#define PEERSTORE_EXTERN __attribute__((visibility("default")))
#else
#define PEERSTORE_EXTERN
#endif

/* ------------------------------------------------------------------ */
/* Records                                                             */

#define PEERSTORE_SUBSYSTEM_MAX 255  /* bytes, not counting the NUL */
#define PEERSTORE_KEY_MAX 1024       /* bytes, not counting the NUL */
#define PEERSTORE_PEER_ID_SIZE 32
/* The service's default value limit; a service may be configured with
 * another.  A value over the service's limit fails with PEERSTORE_ETOOBIG. */
#define PEERSTORE_VALUE_MAX_DEFAULT (1024 * 1024)
/* The largest value the protocol can carry at all; larger values make
 * peerstore_store() return NULL. */
#define PEERSTORE_VALUE_MAX_HARD (64 * 1024 * 1024)
#define PEERSTORE_EXPIRY_NEVER UINT64_MAX
/* The writer of a record stored before writers were recorded. */
#define PEERSTORE_WRITER_UNKNOWN UINT32_MAX

typedef struct peerstore_peer_id {
  uint8_t bytes[PEERSTORE_PEER_ID_SIZE];
} peerstore_peer_id;

typedef struct peerstore_record {
  const char *subsystem;
  peerstore_peer_id peer;
  const char *key;
  const void *value;
  size_t value_size;
  uint64_t expiry;   /* microseconds since the epoch, or EXPIRY_NEVER */
  uint64_t revision; /* set by the service; ignored on store */
} peerstore_record;

enum peerstore_store_option {
  PEERSTORE_MULTIPLE = 0, /* add beside other values; identical refreshes */
  PEERSTORE_REPLACE = 1   /* replace every value under the triple */
};

/* ------------------------------------------------------------------ */
/* Errors                                                              */

/* Negated errno values where one fits, then peerstore's own, far away. */
#define PEERSTORE_ERRNO_MAP(XX)                                            \
  XX(EINVAL, -EINVAL, "invalid argument")                                  \
  XX(ENOMEM, -ENOMEM, "out of memory")                                     \
  XX(ECANCELED, -ECANCELED, "operation canceled")                          \
  XX(ECONNREFUSED, -ECONNREFUSED, "connection refused")                    \
  XX(ECONNRESET, -ECONNRESET, "connection reset by peer")                  \
  XX(ENOENT, -ENOENT, "no such file or directory")                         \
  XX(EPIPE, -EPIPE, "broken pipe")                                         \
  XX(ENOTCONN, -ENOTCONN, "not connected")                                 \
  XX(ETIMEDOUT, -ETIMEDOUT, "operation timed out")                         \
  XX(EACCES, -EACCES, "permission denied")                                 \
  XX(EPROTO, -EPROTO, "protocol error")                                    \
  XX(EIO, -EIO, "i/o error")                                               \
  XX(ENOSPC, -ENOSPC, "no space left on device")                           \
  XX(EROFS, -EROFS, "store is read-only")                                  \
  XX(ETOOBIG, -EMSGSIZE, "value larger than the service allows")           \
  XX(ESHUTDOWN, -ESHUTDOWN, "service is shutting down")                    \
  XX(EOVERFLOW, -30001, "watcher fell behind; its watch was ended")        \
  XX(EVERSION, -30002, "protocol version not supported by the peer")       \
  XX(ELIMIT, -30003, "service limit reached")                              \
  XX(EPLUGIN, -30004, "storage plugin failed")                             \
  XX(EINTERRUPTED, -30005, "connection lost; the operation was cut short") \
  XX(ECOMPACTED, -30006, "the history no longer reaches back that far")   \
  XX(ECONFLICT, -30007, "a condition of the batch does not hold")          \
  XX(EQUOTA, -30008, "the subsystem's quota would be passed")

typedef enum {
#define PEERSTORE_ERR_DEF(name, val, msg) PEERSTORE_##name = (val),
  PEERSTORE_ERRNO_MAP(PEERSTORE_ERR_DEF)
#undef PEERSTORE_ERR_DEF
  PEERSTORE_ERRNO_END_ = -30999
} peerstore_errno_t;

/* A human-readable text for a status; never NULL.  Unknown codes give
 * "unknown error"; libuv codes that are not in the list above are named by
 * libuv. */
PEERSTORE_EXTERN const char *peerstore_strerror(int status);
/* The symbolic name of a status ("PEERSTORE_EINVAL"); never NULL. */
PEERSTORE_EXTERN const char *peerstore_err_name(int status);

/* ------------------------------------------------------------------ */
/* Callbacks and handles                                               */

/* Runs once per store: 0 once the service has applied it through its
 * plugin (for SQLite, after the commit), else the error that prevented it. */
typedef void (*peerstore_store_cb)(void *arg, int status);
/* Iterate: once per matching record, then once with rec == NULL and the
 * final status (0: complete).  Watch: once per matching store; rec == NULL
 * means the watch has ended with that (non-zero) status. */
typedef void (*peerstore_record_cb)(void *arg, const peerstore_record *rec,
                                    int status);
/* Runs once per remove with its status and how many records it removed. */
typedef void (*peerstore_remove_cb)(void *arg, int status, uint64_t removed);

typedef struct peerstore_client peerstore_client;
typedef struct peerstore_store_op peerstore_store_op;
typedef struct peerstore_iterate_op peerstore_iterate_op;
typedef struct peerstore_watch_op peerstore_watch_op;
typedef struct peerstore_remove_op peerstore_remove_op;

/* The uid of the client whose store wrote rec (the service reads it from
 * the socket), or PEERSTORE_WRITER_UNKNOWN for records kept from before
 * writers were recorded.  Only for records handed to an iterate or watch
 * callback, during that callback. */
PEERSTORE_EXTERN uint32_t peerstore_record_writer(const peerstore_record *rec);

/* ------------------------------------------------------------------ */
/* Connection                                                          */

/* Starts connecting to the service at socket_path, or, when it is NULL, at
 * $PEERSTORE_SOCKET, else $XDG_RUNTIME_DIR/peerstore.sock, else
 * /run/peerstore/peerstore.sock.  Never blocks: calls made before the
 * connection is up are queued and sent in order once it is.  If the
 * connection cannot be made or is lost, every pending operation ends with
 * the error (stores and removes through their callback, iterations and
 * watches with rec == NULL) and later calls fail the same way.
 * While it is connected, the client's socket keeps uv_run() running;
 * peerstore_disconnect() lets it return.
 * Returns NULL only when out of memory or the path is empty or too long
 * for a Unix socket address. */
PEERSTORE_EXTERN peerstore_client *peerstore_connect(uv_loop_t *loop,
                                                     const char *socket_path);

/* Closes the client and frees it once libuv has released its handles.
 * With sync_first == 0, every pending operation is cancelled: no callback
 * runs after this returns.  With sync_first != 0, iterations, watches and
 * removes are cancelled, but the pending stores are first sent and
 * acknowledged (their callbacks run, with 0 or an error) before the
 * connection closes.  The handle must not be used after this call. */
PEERSTORE_EXTERN void peerstore_disconnect(peerstore_client *c,
                                           int sync_first);

/* Called when the connection comes up (up = 1, status = 0) and when it
 * goes down (up = 0, status = why).  While it is down the client keeps
 * trying to reconnect; once it is up again, every watch resumes where it
 * had got (nothing is lost while the service's history
 * covers the gap; when it does not, the watch says so: RESET for a
 * SNAPSHOT watch, else PEERSTORE_ECOMPACTED), and every store, remove and
 * stats request not yet answered is sent again (stores are idempotent,
 * DESIGN.md section 1; a remove is not: resent after its first attempt
 * was applied, it applies again to what its filter matches then, records
 * other clients stored meanwhile included - remove by the exact triple
 * when that matters).  Stores made while it was down reach watchers only
 * after it is up. */
typedef void (*peerstore_state_cb)(void *arg, int up, int status);

typedef struct peerstore_connect_opts {
  /* Default timeout of store, iterate and remove, in milliseconds; 0: no
   * timeout.  A store or remove times out when its answer has not come
   * within it; an iteration when no record has come for that long. */
  uint64_t timeout_ms;
  /* 1: reconnect after losing the service.  0: a lost connection ends
   * every pending operation with the error and later calls fail too. */
  int reconnect;
  /* Delay before reconnecting: starts at the minimum, doubles with each
   * failed attempt up to the maximum, with random jitter (ms). */
  uint64_t backoff_min_ms;
  uint64_t backoff_max_ms;
  peerstore_state_cb state_cb; /* may be NULL */
  void *state_arg;
  void *reserved[8]; /* zero; room to grow without breaking the ABI */
} peerstore_connect_opts;

/* Fills opts with the defaults: timeout 10 s, reconnect on, backoff from
 * 5 ms to 5 s, no state callback. */
PEERSTORE_EXTERN void peerstore_connect_opts_init(peerstore_connect_opts *o);

/* peerstore_connect with options (NULL: the defaults, which are also what
 * peerstore_connect uses). */
PEERSTORE_EXTERN peerstore_client *peerstore_connect_ex(
    uv_loop_t *loop, const char *socket_path,
    const peerstore_connect_opts *opts);

/* The path this client connects to (after the default rule). */
PEERSTORE_EXTERN const char *peerstore_client_socket_path(
    const peerstore_client *c);

/* Fills buf with the default socket path (the rule above).  Returns 0, or
 * PEERSTORE_ETOOBIG if it does not fit in size bytes. */
PEERSTORE_EXTERN int peerstore_default_socket_path(char *buf, size_t size);

/* ------------------------------------------------------------------ */
/* Operations                                                          */

/* Stores value (size bytes, may be 0) under (subsystem, peer, key) with an
 * absolute expiry in microseconds since the epoch (EXPIRY_NEVER: never).
 * REPLACE drops every other value under the triple; MULTIPLE adds it beside
 * them, or, if a byte-identical value is already there, only refreshes its
 * expiry, so resending a store is safe.  cb (may be NULL) runs once, after
 * the service applied the store, or with the error that prevented it
 * (PEERSTORE_EQUOTA: the subsystem's quota in the service's [quota]
 * would be passed; nothing changed).  Returns NULL on invalid arguments (NULL
 * or empty subsystem or key, a string over its limit or containing no
 * terminating NUL within it, value NULL with size > 0, size over
 * PEERSTORE_VALUE_MAX_HARD, option out of range). */
PEERSTORE_EXTERN peerstore_store_op *peerstore_store(
    peerstore_client *c, const char *subsystem, const peerstore_peer_id *peer,
    const char *key, const void *value, size_t size, uint64_t expiry,
    enum peerstore_store_option option, peerstore_store_cb cb, void *arg);

/* Its callback will not run.  The store itself may still be applied. */
PEERSTORE_EXTERN void peerstore_store_cancel(peerstore_store_op *op);

/* Sets this operation's timeout in ms from when it was made (0: none),
 * instead of the client's default.  A timed-out operation ends with
 * PEERSTORE_ETIMEDOUT and nothing runs for it afterwards; a timed-out
 * store may still have been applied. */
PEERSTORE_EXTERN void peerstore_store_set_timeout(peerstore_store_op *op,
                                                  uint64_t ms);

/* Reports every unexpired record of subsystem that matches peer and key
 * (NULL: any), oldest store first, then ends with rec == NULL.  These are
 * the records that existed when the iteration began, as each still is
 * when the iteration reaches it: one removed, replaced or refreshed (a
 * MULTIPLE of the same value, which gives it a new revision) after the
 * iteration began is not reported, nor is anything stored later.  A store
 * made earlier on the same client is included.  The service sends
 * records only as fast as the callbacks consume them; an iteration whose
 * callbacks stop consuming for the service's iteration_timeout (default
 * 60 s) ends with PEERSTORE_ETIMEDOUT, and one over the service's
 * max_iterations per client (default 64) with PEERSTORE_ELIMIT.  cb is
 * required: NULL makes the call return NULL. */
PEERSTORE_EXTERN peerstore_iterate_op *peerstore_iterate(
    peerstore_client *c, const char *subsystem, const peerstore_peer_id *peer,
    const char *key, peerstore_record_cb cb, void *arg);

/* No further callback runs for op, not even the final one. */
PEERSTORE_EXTERN void peerstore_iterate_cancel(peerstore_iterate_op *op);

/* As peerstore_store_set_timeout; for an iteration the time counts from
 * the last record received. */
PEERSTORE_EXTERN void peerstore_iterate_set_timeout(peerstore_iterate_op *op,
                                                    uint64_t ms);

/* Reports every store (by any client) that matches the filter, in the order
 * the service applied them, from the moment the service received the watch
 * on; the same as peerstore_watch_ex with no options, with the events other
 * than stores left out.  A MULTIPLE that refreshed an identical value
 * counts.  The service writes a store's notifications before its writer's
 * acknowledgement: once a store's callback has run, the notification is
 * in every watcher's socket (a watcher that is behind gets it as it
 * catches up; the writer is not held back for it).  After a reconnect
 * the watch resumes by itself from where it had got: nothing is lost
 * while the service's history covers the gap.  The watch never ends
 * by itself with 0; rec == NULL means it ended with an error, e.g.
 * PEERSTORE_ECOMPACTED when the history no longer reached back to where it
 * had to resume (re-read what you watch, then watch again).  cb is
 * required: NULL makes the call return NULL. */
PEERSTORE_EXTERN peerstore_watch_op *peerstore_watch(
    peerstore_client *c, const char *subsystem, const peerstore_peer_id *peer,
    const char *key, peerstore_record_cb cb, void *arg);

/* Ends the watch: no further callback runs for op. */
PEERSTORE_EXTERN void peerstore_watch_cancel(peerstore_watch_op *op);

/* ------------------------------------------------------------------ */
/* The change stream (DESIGN.md section 7)                             */

/* Every change the service applies is an event with a revision of its
 * own, strictly increasing and never reused. */
enum peerstore_event_kind {
  PEERSTORE_EVENT_STORE = 1,  /* rec was stored or refreshed */
  PEERSTORE_EVENT_REMOVE = 2, /* rec was removed, or dropped by a REPLACE */
  PEERSTORE_EVENT_EXPIRE = 3, /* rec expired and was purged */
  PEERSTORE_EVENT_SYNC = 4,   /* the snapshot is complete (see below) */
  PEERSTORE_EVENT_RESET = 5   /* forget what you hold: a new snapshot
                                 follows */
};

typedef struct peerstore_event {
  enum peerstore_event_kind kind;
  uint64_t revision;           /* this event's revision; SYNC: the
                                  snapshot's */
  const peerstore_record *rec; /* STORE/REMOVE/EXPIRE: the record, value
                                  included, as it was (its revision is the
                                  store that wrote it); SYNC/RESET: NULL */
} peerstore_event;

/* ev == NULL: the watch has ended with status (never 0).  The event and
 * its record are borrowed for the call. */
typedef void (*peerstore_event_cb)(void *arg, const peerstore_event *ev,
                                   int status);

#define PEERSTORE_WATCH_SNAPSHOT 0x1 /* start with the current state */
#define PEERSTORE_WATCH_REMOVALS 0x2 /* also REMOVE and EXPIRE events */

typedef struct peerstore_watch_opts {
  unsigned flags;
  uint64_t from_revision; /* > 0: resume after this revision */
  void *reserved[4];      /* zero */
} peerstore_watch_opts;

/* Watches the changes of subsystem that match peer and key (NULL: any),
 * as events in revision order (opts NULL: no flags, from now on):
 *  - SNAPSHOT: first every matching record as a STORE event, in revision
 *    order, then one SYNC event at revision S, then every matching event
 *    after S as it happens.  Applying them in order gives exactly the
 *    store's matching records, whatever other clients change meanwhile:
 *    a record changed after S before the snapshot reached it is left out
 *    of the snapshot and comes as its event after S instead.
 *  - REMOVALS: REMOVE and EXPIRE events too, each carrying the record as
 *    it was (so one of several MULTIPLE values can be told apart).
 *    Without it only STORE events (and SYNC/RESET) are delivered.
 *  - from_revision R: every matching event after R the service's history
 *    still holds, then live ones.  If the history no longer reaches back
 *    to R + 1 - or R is from another incarnation of a service whose
 *    plugin keeps nothing, such as memory - then with SNAPSHOT a RESET
 *    event and a new snapshot and SYNC follow; without it the watch ends
 *    with PEERSTORE_ECOMPACTED.  Never a silent gap.
 * After a reconnect the watch resumes by itself from where it had got -
 * its last event, or later where the service has told the library that
 * nothing it watches changed since (a quiet watch's resume point moves
 * with the history too) - with the rules of from_revision: nothing is
 * lost while the history covers the gap (history_events and history_bytes, see
 * peerstored(8)), and a watch that cannot be resumed says so.  A watcher
 * that falls behind is fed from the history as it catches up; the watch
 * ends with PEERSTORE_EOVERFLOW only when the history no longer covers
 * what it missed (with SNAPSHOT: RESET and a new snapshot instead).
 * cb is required: NULL makes the call return NULL, as do unknown flags
 * or non-zero reserved fields. */
PEERSTORE_EXTERN peerstore_watch_op *peerstore_watch_ex(
    peerstore_client *c, const char *subsystem, const peerstore_peer_id *peer,
    const char *key, const peerstore_watch_opts *opts, peerstore_event_cb cb,
    void *arg);

/* The revision of the last event delivered to op's callback (0: none);
 * SYNC counts.  A program that keeps what it watched can resume after a
 * restart of its own with from_revision set to this. */
PEERSTORE_EXTERN uint64_t peerstore_watch_revision(
    const peerstore_watch_op *op);

/* Removes every record of subsystem matching peer and key (NULL: any).
 * cb (may be NULL) runs once with the status and the number removed.  A
 * remove resent after a reconnect applies to what matches then (see
 * peerstore_state_cb).  A plugin may apply a large remove in steps (the
 * sqlite plugin: 4,096 records or 1 MiB at a time), so that readers
 * meanwhile may see part of it done; nothing stored after it began is
 * removed.  One that fails part-way (the disk full) ends with the error
 * and a count of 0, though the steps before the failure stay done. */
PEERSTORE_EXTERN peerstore_remove_op *peerstore_remove(
    peerstore_client *c, const char *subsystem, const peerstore_peer_id *peer,
    const char *key, peerstore_remove_cb cb, void *arg);

/* As peerstore_store_set_timeout. */
PEERSTORE_EXTERN void peerstore_remove_set_timeout(peerstore_remove_op *op,
                                                   uint64_t ms);

/* ------------------------------------------------------------------ */
/* Batches: several changes, all or nothing (DESIGN.md section 8)      */

typedef struct peerstore_batch peerstore_batch;       /* a builder */
/* Where the service keeps which batches it applied (records that expire
 * after its batch_retry_window): clients may read it, not write it. */
#define PEERSTORE_BATCH_SUBSYSTEM "peerstore.batch"
typedef struct peerstore_batch_op peerstore_batch_op; /* a sent batch */
/* status 0: every operation applied, its changes with the consecutive
 * revisions from first_revision on (0: it changed nothing - only
 * conditions, and removes that matched nothing).  PEERSTORE_ECONFLICT,
 * _ELIMIT, _ETOOBIG, _EACCES, _EQUOTA and _EINVAL: nothing was applied.
 * Any other error (a timeout, the connection lost without reconnecting,
 * the plugin failing) may leave it unknown whether the batch was applied:
 * read before trying again. */
typedef void (*peerstore_batch_cb)(void *arg, int status,
                                   uint64_t first_revision);

/* A new, empty batch for c; NULL when c is NULL, disconnecting or out of
 * memory.  The builder belongs to the caller until it is committed or
 * discarded, even if c is disconnected meanwhile; it holds copies of
 * everything added. */
PEERSTORE_EXTERN peerstore_batch *peerstore_batch_new(peerstore_client *c);

/* Adds a store, with peerstore_store's arguments and meaning.  Returns 0,
 * or PEERSTORE_EINVAL for what would make peerstore_store return NULL,
 * PEERSTORE_ELIMIT when the batch would pass 64 MiB (the protocol's
 * largest message), PEERSTORE_ENOMEM; on error nothing is added. */
PEERSTORE_EXTERN int peerstore_batch_store(
    peerstore_batch *b, const char *subsystem, const peerstore_peer_id *peer,
    const char *key, const void *value, size_t size, uint64_t expiry,
    enum peerstore_store_option option);

/* Adds a remove of every record of subsystem matching peer and key (NULL:
 * any); inside a batch it is applied in one piece, however much it
 * matches.  Returns as peerstore_batch_store. */
PEERSTORE_EXTERN int peerstore_batch_remove(peerstore_batch *b,
                                            const char *subsystem,
                                            const peerstore_peer_id *peer,
                                            const char *key);

/* Adds a condition: the newest unexpired record under (subsystem, peer,
 * key) has this revision (0: there is none).  Every condition is checked
 * against
 * the store as it is before the batch, before anything is applied; one
 * that does not hold fails the batch with PEERSTORE_ECONFLICT.  A
 * record's revision comes with it (peerstore_record.revision, `peerstore
 * get --json`).  Returns as peerstore_batch_store (peer and key are
 * required). */
PEERSTORE_EXTERN int peerstore_batch_require(peerstore_batch *b,
                                             const char *subsystem,
                                             const peerstore_peer_id *peer,
                                             const char *key,
                                             uint64_t revision);

/* Sends the batch; b is consumed (freed) whatever the outcome and may not
 * be used again.  The service applies it all or nothing in one plugin
 * transaction (one commit for SQLite, whatever its size): its changes get
 * consecutive revisions in the order they were added, watchers see its
 * events together with nothing between them, and cb (may be NULL) runs
 * once with the outcome: 0, PEERSTORE_ECONFLICT (a condition failed),
 * PEERSTORE_ELIMIT (over the service's batch_max_ops or batch_max_bytes),
 * PEERSTORE_ETOOBIG (a value over its value limit), PEERSTORE_EACCES (a
 * store or remove in a subsystem the client may not write),
 * PEERSTORE_EQUOTA, or the plugin's error.  Like a store, a batch is
 * sent again after a reconnect; it carries an id, and the service
 * remembers for batch_retry_window (default 10 min) which ids it applied,
 * with the data itself, so a batch whose first attempt was applied is
 * answered again, not applied twice - also across a restart of a
 * persistent service.  (A batch still unanswered after that window, with
 * the service away all the time, may be applied twice: set a timeout
 * below it, peerstore_batch_set_timeout, where that matters.)  Returns
 * NULL (b still consumed) when the client is disconnecting, was freed,
 * or is out of memory; cb then never runs. */
PEERSTORE_EXTERN peerstore_batch_op *peerstore_batch_commit(
    peerstore_batch *b, peerstore_batch_cb cb, void *arg);

/* Frees an uncommitted batch; nothing is sent. */
PEERSTORE_EXTERN void peerstore_batch_discard(peerstore_batch *b);

/* Its callback will not run.  The batch may still be applied (whole). */
PEERSTORE_EXTERN void peerstore_batch_cancel(peerstore_batch_op *op);

/* As peerstore_store_set_timeout. */
PEERSTORE_EXTERN void peerstore_batch_set_timeout(peerstore_batch_op *op,
                                                  uint64_t ms);

/* Service counters, for monitoring and the CLI's "stats". */
typedef struct peerstore_stat {
  const char *name;
  uint64_t value;
} peerstore_stat;
typedef void (*peerstore_stats_cb)(void *arg, int status,
                                   const peerstore_stat *stats, size_t n);
typedef struct peerstore_stats_op peerstore_stats_op;

/* Asks the service for its counters (records, clients, watches, revision,
 * ...).  cb (required: NULL makes the call return NULL) runs once; the
 * array is borrowed for the call. */
PEERSTORE_EXTERN peerstore_stats_op *peerstore_stats(peerstore_client *c,
                                                     peerstore_stats_cb cb,
                                                     void *arg);

/* ------------------------------------------------------------------ */
/* Backup                                                              */

typedef struct peerstore_backup_op peerstore_backup_op;
typedef struct peerstore_backup_result {
  uint64_t revision;  /* the last change the copy holds */
  uint64_t size;      /* bytes of the copy (all given to data_cb) */
  const char *reason; /* on failure, the service's explanation, or NULL */
} peerstore_backup_result;
/* The next len bytes of the copy, in order from its first; borrowed for
 * the call. */
typedef void (*peerstore_backup_data_cb)(void *arg, const void *data,
                                         size_t len);
/* Ends the backup; res is borrowed for the call. */
typedef void (*peerstore_backup_done_cb)(void *arg, int status,
                                         const peerstore_backup_result *res);

/* Asks the service for a consistent copy of its store as one revision
 * left it - with the SQLite plugin, a database file that plugin opens
 * (peerstore backup FILE) - while it goes on serving.  The bytes come
 * through data_cb, as fast as it consumes them, then done_cb runs once;
 * what data_cb was given is a whole copy only if status is 0.  Fails with
 * PEERSTORE_EPLUGIN where the plugin makes no copies (memory), with
 * PEERSTORE_ELIMIT while another backup is under way, PEERSTORE_ENOSPC
 * when the service has no room to make it, PEERSTORE_EVERSION from a
 * service older than this library, and PEERSTORE_EINTERRUPTED when the
 * connection is lost part way; a refusal's res->reason says more.  A backup
 * whose callbacks stop consuming for the service's iteration_timeout ends
 * with PEERSTORE_ETIMEDOUT.  The connection's timeout_ms does not apply
 * (nothing arrives while the copy is made, however long that takes);
 * peerstore_backup_set_timeout sets one.  Only root, the service's user
 * and whom its backup_allow names may ask (else PEERSTORE_EACCES).  Both
 * callbacks are required: NULL makes the call return NULL.  op is valid
 * until done_cb returns or it is cancelled. */
PEERSTORE_EXTERN peerstore_backup_op *peerstore_backup(
    peerstore_client *c, peerstore_backup_data_cb data_cb,
    peerstore_backup_done_cb done_cb, void *arg);
/* No further callback runs for op; the service stops making the copy. */
PEERSTORE_EXTERN void peerstore_backup_cancel(peerstore_backup_op *op);
/* As peerstore_iterate_set_timeout: the time counts from the last piece
 * received (the service's making the copy counts too). */
PEERSTORE_EXTERN void peerstore_backup_set_timeout(peerstore_backup_op *op,
                                                   uint64_t ms);

/* ------------------------------------------------------------------ */
/* Peer ids in text                                                    */

#define PEERSTORE_PEER_B32_LEN 52 /* Crockford base32, as GNUnet prints */
#define PEERSTORE_PEER_HEX_LEN 64

/* Writes the 52-character base32 form and a NUL into out (53 bytes). */
PEERSTORE_EXTERN void peerstore_peer_to_string(const peerstore_peer_id *peer,
                                               char *out);
/* Parses either the 52-character base32 form (case-insensitive; O and I/L
 * read as 0 and 1) or 64 hex digits.  Returns 0 or PEERSTORE_EINVAL. */
PEERSTORE_EXTERN int peerstore_peer_from_string(const char *s,
                                                peerstore_peer_id *peer);

#ifdef __cplusplus
}
#endif
#endif /* PEERSTORE_H */
