/* service.h - peerstored's internal types, shared by its modules.
 *
 * Ownership: the server owns the client list; a client owns its buffers,
 * its watches and its iterations.  A client is freed only when its handle
 * has closed and no plugin callback still refers to it (refs == 0), so a
 * plugin may complete a request after the client went away.
 */
#ifndef PEERSTORED_SERVICE_H
#define PEERSTORED_SERVICE_H

#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

#include "conn.h"
#include "frame.h"
#include "hmap.h"
#include "memory.h"
#include "peerstore_plugin.h"
#include "wire.h"

/* ------------------------------------------------------------------ */
/* Configuration (config.c)                                            */

typedef struct config_entry {
  char *section;
  char *name;
  char *value;
} config_entry;

/* uids or gids, from a list like "alice, 1001, self". */
typedef struct idlist {
  uint32_t *ids;
  size_t n;
} idlist;

/* [write] SUBSYSTEM = users and @groups that may store and remove in it. */
typedef struct write_rule {
  char *subsystem;
  idlist uids;
  idlist gids;
} write_rule;

typedef struct config {
  char *socket_path;
  char *plugin;
  char *plugin_dir;
  char *database;
  char *backup_dir; /* where backups are made; NULL: the database's */
  unsigned socket_mode;
  uint32_t max_value_size;
  uint64_t purge_interval_ms;
  size_t output_soft_limit;  /* stop reading a client's requests above */
  size_t watch_output_limit; /* end a watch that would queue beyond */
  uint32_t max_clients;
  uint32_t max_watches;      /* per client */
  uint32_t max_iterations;   /* per client, open at once */
  uint64_t iteration_timeout_ms; /* an iteration that has not moved ends */
  uint32_t max_inflight;     /* plugin requests per client before pausing */
  size_t max_inflight_bytes; /* ... and bytes of them */
  uint64_t write_timeout_ms; /* a client not reading for this long goes */
  size_t input_buffer_limit; /* large frames being read, all clients */
  uint64_t read_timeout_ms;  /* a large frame that does not move goes */
  uint64_t history_events;   /* the change history's bounds (0: none) */
  uint64_t history_bytes;
  uint32_t batch_max_ops;   /* operations in one batch */
  size_t batch_max_bytes;   /* bytes of one BATCH message's body */
  uint64_t batch_retry_window_ms; /* how long a batch id is remembered */
  int log_level;
  int ready_fd;              /* -1 or a descriptor to write "READY\n" to */
  int socket_gid;            /* -1: leave the socket's group alone */
  idlist allow_uids;         /* both empty: admit whoever can connect */
  idlist backup_uids;        /* may ask for backups (with root and self) */
  idlist backup_gids;
  idlist allow_gids;
  write_rule *write_rules;
  size_t n_write_rules;
  peerstore_plugin_quota *quotas; /* [quota]; subsystems in entries */
  size_t n_quotas;
  /* Every key of the config file, for plugin options. */
  config_entry *entries;
  size_t n_entries;
} config;

void config_defaults(config *cfg);
/* Parses an INI file into cfg; returns 0 or -1 after printing the reason. */
int config_load(config *cfg, const char *path);
/* Applies one [peerstored] setting (also used for command-line flags);
 * returns 0, or -1 for an unknown name or a bad value. */
int config_set(config *cfg, const char *name, const char *value);
/* Adds "name = value" to section, as a line of the file would; 0 or -1
 * (out of memory). */
int config_add(config *cfg, const char *section, const char *name,
               const char *value);
/* Parses a size with an optional k/M/G suffix; returns 0 or -1. */
int config_parse_size(const char *s, uint64_t *out);
/* A value from the file's [section]; NULL if absent. */
const char *config_get(const config *cfg, const char *section,
                       const char *name);
void config_free(config *cfg);
/* Builds the [write] rules from the file's entries; 0, or -1 after
 * printing which entry is wrong. */
int config_finish(config *cfg);
/* 1 if uid or gid is in the lists (uid in uids, gid in gids). */
int config_id_match(const idlist *uids, const idlist *gids, uint32_t uid,
                    uint32_t gid);
/* The rule for subsystem, or NULL when anyone admitted may write it. */
const write_rule *config_write_rule(const config *cfg, const char *ss);
/* The subsystem's [quota], or NULL. */
const peerstore_plugin_quota *config_quota(const config *cfg,
                                           const char *ss);

/* ------------------------------------------------------------------ */
/* Logging (log.c)                                                     */

void log_set_level(int level);
void log_msg(int level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
#define LOG_ERROR(...) log_msg(PEERSTORE_LOG_ERROR, __VA_ARGS__)
#define LOG_WARN(...) log_msg(PEERSTORE_LOG_WARN, __VA_ARGS__)
#define LOG_INFO(...) log_msg(PEERSTORE_LOG_INFO, __VA_ARGS__)
#define LOG_DEBUG(...) log_msg(PEERSTORE_LOG_DEBUG, __VA_ARGS__)
/* The adapter handed to plugins through peerstore_plugin_env. */
void log_plugin(void *ctx, enum peerstore_log_level level, const char *fmt,
                ...) __attribute__((format(printf, 3, 4)));

/* ------------------------------------------------------------------ */
/* Plugins (plugin.c)                                                  */

typedef struct plugin {
  const peerstore_plugin_desc *desc;
  void *instance;
  uv_lib_t lib;
  int lib_open;
  const config *cfg; /* for the plugin's options */
} plugin;

/* Finds, loads, checks and opens the configured plugin, whose changes are
 * reported to changed(ctx, ...); returns 0, or -1 after logging what it
 * looked for and where. */
int plugin_load(plugin *p, const config *cfg, uv_loop_t *loop,
                void (*changed)(void *ctx, const peerstore_plugin_change *),
                void *ctx);
/* Closes the instance.  The plugin's handles may still be closing, so its
 * code stays loaded until plugin_release, after the loop has run empty. */
void plugin_unload(plugin *p);
void plugin_release(plugin *p);


/* ------------------------------------------------------------------ */
/* Server and clients                                                  */

typedef struct server server;
typedef struct client client;
typedef struct watch watch;
typedef struct siter siter;
typedef struct sreq sreq;
typedef struct sbackup sbackup;

/* The watches of all clients, hashed by filter (watch.c). */
typedef struct watch_index {
  peerstore__hmap map;
  peerstore__buf note;    /* the change being fanned out, as EVENT */
  peerstore__buf note_v2; /* ... and as RECORD, for version 2 watches */
  uint32_t count;
  uint32_t syncing; /* watches taking a snapshot or catching up */
  uint32_t budget;  /* plugin reads left for this turn of the loop */
  watch *defer_head; /* watches waiting for the next turn's budget */
  watch *defer_tail;
  uint64_t tick_reported; /* what watch_tell_progress last looked at */
  uint64_t tick_first;
} watch_index;

/* What a WATCH or WATCH_EX asked for. */
typedef struct watch_opts {
  uint32_t flags;      /* PEERSTORE_WATCH_SNAPSHOT | _REMOVALS */
  uint64_t from;       /* resume after this revision; 0: from now */
  uint64_t history_id; /* the history `from` belongs to; 0: unchecked */
  int v2;              /* a version 2 WATCH */
} watch_opts;

/* What a client's queued output is judged for; each use has its limit in
 * one table (client.c, client_output_ok). */
enum output_use {
  OUT_READ,    /* read more of its requests */
  OUT_RESUME,  /* read again after a pause: lower, for hysteresis */
  OUT_ITERATE, /* ask the plugin for more records of an iteration */
  OUT_WATCH    /* take one more notification */
};

struct client {
  server *srv;
  uv_pipe_t pipe;
  client *next; /* server's list */
  client *prev;
  client *next_flush; /* server's list of clients with output to flush */
  uint64_t id;
  uid_t uid;
  gid_t gid;
  pid_t pid;
  peerstore__reader rd;
  peerstore__out out;
  uint32_t refs;        /* the handle + plugin requests in flight */
  uint32_t inflight;    /* plugin requests outstanding */
  size_t inflight_bytes; /* ... and the bytes of their messages */
  size_t stall_queue;   /* write queue size when last seen unchanged */
  uint64_t stall_since; /* loop ms since it has not moved; 0: moving */
  uint32_t n_watches;
  watch *watches;
  uint32_t n_iters;
  siter *iters;
  uint16_t version; /* of the protocol, from HELLO */
  unsigned hello : 1;
  unsigned reading : 1;
  unsigned paused : 1; /* not read: its output or requests are at a limit */
  unsigned closing : 1;
  unsigned in_flush : 1;
  unsigned in_backlog : 1; /* has whole frames left over from a wake-up */
  unsigned input_waiting : 1; /* on the server's input_waiters list */
  /* A large frame being read: the bytes it holds of the server's
   * input_buffer_limit, and when it last grew (see client.c, Input). */
  size_t big_reserved;
  size_t big_seen;
  uint64_t big_since;
  client *next_input_waiter;
};

typedef struct server_stats {
  uint64_t stores;
  uint64_t iterations;
  uint64_t removes;
  uint64_t notifications;
  uint64_t overflows;
  uint64_t protocol_errors;
  uint64_t stalled;
  uint64_t refused; /* clients and writes refused by access rules */
  uint64_t limited; /* requests refused by a per-client limit */
  uint64_t iterations_timed_out;
  uint64_t clients_total;
  uint64_t purged;
  uint64_t watch_resets; /* snapshots begun again after a compaction */
  uint64_t watch_progress; /* PROGRESS markers sent to quiet watches */
  uint64_t input_timed_out; /* clients closed for a large frame that
                               stopped arriving */
  uint64_t batches;          /* batches applied */
  uint64_t batch_conflicts;  /* batches failed on a condition */
  uint64_t batches_repeated; /* batches sent again, found applied */
  uint64_t backups;          /* copies sent whole */
  uint64_t backup_bytes;     /* bytes of copies sent */
} server_stats;

struct server {
  uv_loop_t *loop;
  config *cfg;
  plugin plugin;
  uv_pipe_t listener;
  uv_signal_t sigint;
  uv_signal_t sigterm;
  uv_timer_t purge_timer;
  uv_timer_t stop_timer;
  uv_timer_t watchdog;     /* WATCHDOG=1, when systemd asks for it */
  uv_timer_t housekeeping; /* once a second: clients that stopped reading */
  uv_idle_t idle;
  client *clients;
  /* Clients with output to flush, in the order their output became
   * ready: a store's notifications are queued before its acknowledgement,
   * so watchers' sockets are written before the writer's. */
  client *flush_head;
  client *flush_tail;
  uint32_t n_clients;
  uint32_t n_paused; /* clients not read because of backpressure */
  uint32_t n_iters;
  uint32_t n_backlog; /* clients with whole frames left for the idle turn */
  uint64_t next_client_id;
  uint64_t inflight; /* plugin requests outstanding */
  uint64_t started_ms;
  size_t input_big; /* bytes reserved by large frames being read */
  client *input_waiters_head; /* waiting for input_buffer_limit, FIFO */
  client *input_waiters_tail;
  uint32_t n_input_waiters;
  sreq *free_reqs; /* dispatch.c's recycled requests */
  uint32_t n_free_reqs;
  dev_t sock_dev; /* the socket file this service made (remove_own_socket) */
  ino_t sock_ino; /* 0: none */
  watch_index watches;
  /* The revision of the last change the plugin reported: a watch that
   * starts now is live from here. */
  uint64_t reported;
  peerstore__hmap iters; /* every open iteration, by client and request */
  sbackup *backup;       /* the backup under way, or NULL */
  server_stats stats;
  unsigned listening : 1;
  unsigned stopping : 1;
  unsigned purging : 1;
  unsigned done : 1;
};

/* A decoded filter as the plugin interface takes it. */
static inline void filter_to_plugin(const peerstore__filter *f,
                                    peerstore_plugin_filter *pf) {
  pf->subsystem = f->subsystem;
  pf->peer = f->has_peer ? &f->peer : NULL;
  pf->key = f->has_key ? f->key : NULL;
}

/* server.c */
int server_start(server *s, uv_loop_t *loop, config *cfg);
/* sd.c, systemd.  1 and *fd: the listening socket systemd passed (socket
 * activation); 0: none, bind one; -1: one that cannot be used (logged). */
int sd_listener(int *fd);
/* Tells systemd "READY=1", "STOPPING=1", "WATCHDOG=1" (Type=notify);
 * nothing when it is not listening or the build has no libsystemd. */
void sd_say(const char *state);
/* How often to say WATCHDOG=1, in ms (half of WatchdogSec=); 0: never. */
uint64_t sd_watchdog_ms(void);
/* Removes the socket file if it is still the one this service made. */
void remove_own_socket(server *s);
void server_stop(server *s);
/* Runs the idle work soon (flushes, backlogs, shutdown progress). */
void server_kick(server *s);

/* client.c */
void client_accept(server *s);
/* Queues the client's output to be flushed on this loop turn. */
void client_output_ready(client *c);
/* 1 when c's queued output, plus `adding` bytes, is within the limit of
 * use: the one place that judges output against limits. */
int client_output_ok(const client *c, enum output_use use, size_t adding);
/* Sends an ERROR frame, logs why and closes the client. */
void client_fail(client *c, int status, const char *why);
void client_close(client *c);
void client_ref(client *c);
void client_unref(client *c);
/* Writes what the client has queued (from the server's idle turn). */
void client_flush(client *c);
/* Reads and dispatches again once the client is below its limits, and
 * lets its iterations go on. */
void client_resume(client *c);
/* A request of c's that reached the plugin (a message of bytes) has
 * completed. */
void client_request_done(client *c, size_t bytes);
/* Shutdown: stops reading and ends c's watches and iterations. */
void client_shutdown(client *c);
/* 1 when c has no output queued or being written. */
int client_quiet(const client *c);
/* Closes clients whose output has not moved for write_timeout_ms, and
 * those whose large frame has not grown for read_timeout_ms. */
void client_check_stalled(server *s);
/* Marks (on) or clears the client as having frames left to dispatch on
 * the next idle turn. */
void client_set_backlog(client *c, int on);
/* Dispatches whole frames from the input buffer, at most a batch. */
void client_process_input(client *c);

/* dispatch.c */
/* Handles one whole frame; returns 0, or a status after which the client
 * is failed. */
int dispatch_frame(client *c, const peerstore__header *h,
                   const uint8_t *body);
/* A STORE whose body is too large: answer without having read it. */
void dispatch_store_too_big(client *c, uint32_t request);
/* The same for a BATCH over batch_max_bytes. */
void dispatch_batch_too_big(client *c, uint32_t request);
/* Queues a status reply (STORE_RESULT, ..._END); extra as in wire.h. */
void dispatch_reply(client *c, uint16_t type, uint32_t request, int status,
                    const uint64_t *extra);
/* Frees the recycled request structures (at shutdown). */
void dispatch_fini(server *s);
/* A request of c's goes to the plugin / has come back: c stays allocated
 * and counts it against max_inflight meanwhile. */
void dispatch_request_begin(client *c, size_t bytes);
void dispatch_request_end(client *c, size_t bytes);
/* 1 if c may store and remove in subsystem; else counts and logs the
 * refusal. */
int dispatch_may_write(client *c, const char *subsystem);

/* batch.c */
/* Handles a BATCH message (the dispatch table's handler). */
int batch_start(client *c, const peerstore__header *h, const uint8_t *body);

/* backup.c */
/* Handles a BACKUP message (the dispatch table's handler). */
int backup_start(client *c, const peerstore__header *h, const uint8_t *body);
/* CREDIT and CANCEL for c's backup `request`: 1 if it was one. */
int backup_credit(client *c, uint32_t request, uint32_t more);
int backup_cancel(client *c, uint32_t request);
/* c's backup may go on (its output drained). */
void backup_pump_client(client *c);
/* Ends c's backup with status (0: silently, for a closing client). */
void backup_end_client(client *c, int status);
/* 1 while a backup holds its file (stats). */
int backup_running(const server *s);
/* Ends a backup whose client has not taken a piece for
 * iteration_timeout. */
void backup_check_idle(server *s);

/* iter.c */
int iter_init(server *s);
void iter_fini(server *s);
/* Ends iterations that have not moved for iteration_timeout. */
void iter_check_idle(server *s);
/* Begins iteration `request` of c over f with credit records. */
int iter_start(client *c, uint32_t request, const peerstore__filter *f,
               uint32_t credit);
/* More credit for iteration `request`; ignored if it has ended. */
void iter_credit(client *c, uint32_t request, uint32_t more);
/* Ends iteration `request` without a reply; returns 0, or
 * PEERSTORE_ENOENT if c has no such iteration. */
int iter_cancel(client *c, uint32_t request);
/* Asks the plugin for more of each of c's iterations that may go on. */
void iter_pump_all(client *c);
/* Ends all of c's iterations with status (0: silently, for a closing
 * client). */
void iter_end_all(client *c, int status);

/* watch.c */
int watch_init(server *s);
void watch_fini(server *s);
/* Adds watch `request` of c; returns 0 (the watch may have ended at
 * once, with its WATCH_END queued) or a status to refuse it with. */
int watch_add(client *c, uint32_t request, const peerstore__filter *f,
              const watch_opts *o);
/* Reads the snapshot or history of each of c's syncing watches, as far as
 * its output allows. */
void watch_pump_all(client *c);
/* The idle turn: a new budget of plugin reads for the watches that ran
 * out of the last one (s->watches.defer_head: those still waiting). */
void watch_run_deferred(server *s);
/* Housekeeping: tells each live watch that has matched nothing for a
 * while how far it has got (a PROGRESS event), before the history moves
 * past its last event and its library could no longer resume it. */
void watch_tell_progress(server *s);
int watch_cancel(client *c, uint32_t request);
/* Ends all of c's watches with status (0: silently, for a closing client). */
void watch_end_all(client *c, int status);
/* The plugin's change hook (peerstore_plugin_env.changed): notifies the
 * watchers a change concerns. */
void watch_changed(void *server, const peerstore_plugin_change *ch);

#endif /* PEERSTORED_SERVICE_H */
