/* client_int.h - libpeerstore internals shared by client.c and ops.c. */
#ifndef PEERSTORE_CLIENT_INT_H
#define PEERSTORE_CLIENT_INT_H

#include "hmap.h"
#include "peerstore.h"
#include "wire.h"

/* Records the service may send an iteration before hearing more credit,
 * and how many consumed records trigger a new grant. */
#define PEERSTORE_CREDIT_WINDOW 1024
#define PEERSTORE_CREDIT_REGRANT 512

enum ps_op_kind { OP_STORE, OP_ITERATE, OP_WATCH, OP_REMOVE, OP_STATS };

enum ps_state { ST_CONNECTING, ST_CONNECTED, ST_FAILED };

/* Every operation, whatever its public type.  Public handles are this
 * struct behind a distinct opaque name, so the compiler keeps them apart
 * in user code. */
typedef struct ps_op {
  peerstore__hnode h; /* in the client's table, by request id */
  peerstore_client *c;
  struct ps_op *next_done; /* deferred completion or garbage list */
  uint32_t request;
  uint32_t consumed; /* iterate: records since the last credit grant */
  int status;        /* deferred completion status */
  uint8_t kind;
  unsigned in_table : 1;
  unsigned finished : 1; /* final callback ran or was cancelled */
  unsigned on_done : 1;  /* queued for a deferred final callback */
  union {
    peerstore_store_cb store;
    peerstore_record_cb record;
    peerstore_remove_cb remove;
    peerstore_stats_cb stats;
  } cb;
  void *arg;
} ps_op;

struct peerstore_client {
  uv_loop_t *loop;
  uv_pipe_t pipe;
  uv_connect_t creq;
  uv_write_t wreq;
  uv_idle_t idle;
  char *path;
  peerstore__buf in;
  peerstore__buf out;  /* being filled */
  peerstore__buf wbuf; /* being written */
  peerstore__hmap ops;
  ps_op *done_head; /* deferred final callbacks, in order */
  ps_op *done_tail;
  ps_op *garbage;   /* finished ops to free outside callbacks */
  uint32_t next_request;
  uint32_t max_value;
  uint64_t pending_stores; /* stores whose callback is still owed */
  int fail_status;
  int handles_open;
  enum ps_state state;
  unsigned writing : 1;
  unsigned closing : 1;       /* peerstore_disconnect was called */
  unsigned sync_first : 1;    /* ... and waits for the pending stores */
  unsigned pipe_closed : 1;
  unsigned handles_closing : 1;
};

/* client.c */
ps_op *peerstore__op_new(peerstore_client *c, enum ps_op_kind kind,
                         size_t size, void *arg);
/* Makes the operation known and its request (already encoded into c->out
 * by the caller) due to be sent.  On a failed connection the operation
 * ends soon with the failure status instead. */
void peerstore__op_start(peerstore_client *c, ps_op *op);
/* Drops the half-made op after its request could not be encoded. */
void peerstore__op_abort(peerstore_client *c, ps_op *op);
/* Cancels: no callback will run; tells the service for iterate/watch. */
void peerstore__op_cancel(ps_op *op);
/* Returns 1 if the client takes no new operations. */
int peerstore__client_closed(const peerstore_client *c);

#endif /* PEERSTORE_CLIENT_INT_H */
