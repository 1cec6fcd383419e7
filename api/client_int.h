/* client_int.h - libpeerstore internals shared by client.c and ops.c. */
#ifndef PEERSTORE_CLIENT_INT_H
#define PEERSTORE_CLIENT_INT_H

#include "conn.h"
#include "frame.h"
#include "heap.h"
#include "hmap.h"
#include "peerstore.h"
#include "wire.h"

/* Records the service may send an iteration before hearing more credit,
 * and how many consumed records trigger a new grant. */
#define PEERSTORE_CREDIT_WINDOW 1024
#define PEERSTORE_CREDIT_REGRANT 512

enum ps_op_kind {
  OP_STORE,
  OP_ITERATE,
  OP_WATCH,
  OP_REMOVE,
  OP_STATS,
  OP_BATCH,
  OP_BACKUP
};

/* Pieces of a backup the service may send before hearing more credit,
 * and how many consumed trigger a new grant. */
#define PEERSTORE_BACKUP_WINDOW 16
#define PEERSTORE_BACKUP_REGRANT 8

/* Stores and batches: disconnect(c, 1) waits for them. */
#define OP_IS_WRITE(op) ((op)->kind == OP_STORE || (op)->kind == OP_BATCH)

enum ps_state {
  ST_CONNECTING, /* a connect is in progress */
  ST_CONNECTED,  /* the socket is up; requests are written as made */
  ST_WAITING,    /* down; a reconnect is scheduled */
  ST_FAILED      /* down for good (reconnect off, or a fatal error) */
};

/* Every operation, whatever its public type.  Public handles are this
 * struct behind a distinct opaque name, so the compiler keeps them apart
 * in user code.  The encoded request follows the struct, so it can be
 * sent again after a reconnect. */
typedef struct ps_op {
  peerstore__hnode h; /* in the client's table, by request id */
  peerstore_client *c;
  struct ps_op *prev; /* the client's tabled ops, in the order made */
  struct ps_op *next;
  struct ps_op *next_done; /* deferred completion or garbage list */
  /* The encoded request, in memory allocated with the op: encoders write
   * into it without growing it (its cap is the exact frame length). */
  peerstore__buf frame;
  uint64_t start;    /* loop time (ms) the op was made or last progressed */
  uint64_t timeout;  /* ms; 0: none */
  uint64_t deadline; /* start + timeout: the deadline heap's key */
  uint32_t heap_pos; /* in the deadline heap, or PEERSTORE__HEAP_NONE */
  uint32_t request;
  uint32_t consumed; /* iterate: records since the last credit grant */
  /* watch: the last revision delivered (peerstore_watch_revision), and
   * the one to resume after on the next connection (0: from now, or a
   * new snapshot) */
  uint64_t revision;
  uint64_t resume;
  uint64_t resume_id; /* the history resume is in (0: the caller's own) */
  int status;        /* deferred completion status */
  uint8_t kind;
  unsigned in_table : 1;
  unsigned finished : 1; /* final callback ran or was cancelled */
  unsigned on_done : 1;  /* queued for a deferred final callback */
  unsigned sent : 1;     /* its request went out on this connection */
  unsigned ex : 1;       /* watch: made by peerstore_watch_ex */
  unsigned snapshot : 1; /* watch: with PEERSTORE_WATCH_SNAPSHOT */
  unsigned synced : 1;   /* watch: its snapshot's SYNC has come */
  unsigned partial : 1;  /* watch: a snapshot was cut short after some of
                            it was delivered: RESET comes first */
  union {
    peerstore_store_cb store;
    peerstore_record_cb record;
    peerstore_event_cb event;
    peerstore_remove_cb remove;
    peerstore_stats_cb stats;
    peerstore_batch_cb batch;
    peerstore_backup_done_cb backup;
  } cb;
  void *arg;
} ps_op;

struct peerstore_client {
  uv_loop_t *loop;
  uv_pipe_t pipe;
  uv_connect_t creq;
  uv_idle_t idle;
  uv_timer_t retry;    /* reconnect backoff */
  uv_timer_t deadline; /* the earliest operation deadline */
  char *path;
  peerstore_connect_opts opts;
  peerstore__reader rd;
  peerstore__out out;
  peerstore__hmap ops; /* tabled ops by request id */
  /* The op the last reply was for: an iteration's or a watch's frames
   * come in runs, and finding them by hash was a tenth of iterating. */
  ps_op *found;
  ps_op *first;        /* ... and in the order they were made */
  ps_op *last;
  peerstore__heap deadlines; /* ops with a timeout, earliest first */
  ps_op *done_head; /* deferred final callbacks, in order */
  ps_op *done_tail;
  ps_op *garbage;   /* finished ops to free outside callbacks */
  uint32_t next_request;
  uint32_t max_value;
  uint64_t history_id; /* the service's, from the last WELCOME */
  uint32_t attempts; /* failed connection attempts in a row */
  uint64_t pending_stores; /* stores whose callback is still owed */
  uint64_t rng;
  /* Batch ids: random per client, then a count, so that the service can
   * tell a batch sent again from a new one (see service/batch.c). */
  uint8_t batch_nonce[8];
  uint64_t batch_seq;
  struct peerstore_batch *builders; /* not yet committed or discarded */
  int fail_status;
  int gone_status; /* the failed write's error, while peer_gone */
  int lost_status; /* the connection is to be dropped from the idle turn */
  int handles_open;
  int reported; /* what the state callback last said: -1 nothing, 0, 1 */
  enum ps_state state;
  unsigned welcomed : 1;     /* this connection got its WELCOME */
  unsigned ids_wrapped : 1;  /* request ids have wrapped around once */
  unsigned peer_gone : 2;    /* a write found the service gone: idle turns
                                since (see write_failed) */
  unsigned closing : 1;      /* peerstore_disconnect was called */
  unsigned sync_first : 1;   /* ... and waits for the pending stores */
  unsigned pipe_open : 1;    /* pipe initialised and not yet closed */
  unsigned pipe_closing : 1; /* uv_close in progress */
  unsigned handles_closing : 1;
};

/* A backup: its data callback beside the op. */
typedef struct ps_backup_op {
  ps_op op;
  peerstore_backup_data_cb data;
  uint64_t received; /* bytes given to data */
} ps_backup_op;

/* Iterations and backups: streams paced by credit, their timeouts
 * counting from the last progress, cancelled on the wire. */
#define OP_IS_STREAM(op) ((op)->kind == OP_ITERATE || (op)->kind == OP_BACKUP)

/* client.c */
/* Makes an op of kind (a struct of size bytes) with a new request id and
 * room for a request frame of frame_len bytes in op->frame, where the
 * caller then encodes it; NULL when out of memory or the client is
 * closing. */
ps_op *peerstore__op_new(peerstore_client *c, enum ps_op_kind kind,
                         size_t size, size_t frame_len, void *arg);
/* Registers the op and sends its request (now, or once connected).  On a
 * failed client the op ends soon with the failure status instead. */
void peerstore__op_start(peerstore_client *c, ps_op *op);
/* Cancels: no callback will run; tells the service for iterate/watch. */
void peerstore__op_cancel(ps_op *op);
void peerstore__op_set_timeout(ps_op *op, uint64_t ms);
/* Returns 1 if the client takes no new operations. */
int peerstore__client_closed(const peerstore_client *c);

/* ops.c */
/* The client is being freed: its batch builders, which belong to the
 * caller, forget it (a commit then fails; a discard still frees). */
void peerstore__batches_orphan(peerstore_client *c);

#endif /* PEERSTORE_CLIENT_INT_H */
