/* conn.h - a connection's output, the same on both sides.
 *
 * Frames are appended to `buf`.  peerstore__out_flush writes them:
 * first straight to the socket with uv_try_write, and when the kernel
 * takes it all no request is queued, so libuv makes neither a completion
 * callback nor the epoll_ctl it does after every finished uv_write (one
 * syscall in two on a notification's path).  What the kernel does not
 * take moves to `wbuf` (output is double-buffered: `buf` is then empty,
 * for new output) and is written by a uv_write; `written` runs when that
 * write completes, after which the owner flushes again if there is more.
 */
#ifndef PEERSTORE_CONN_H
#define PEERSTORE_CONN_H

#include <uv.h>

#include "buf.h"

/* status is 0 or the libuv error of the queued write (UV_ECANCELED when
 * its stream was closed). */
typedef void (*peerstore__written_cb)(void *data, int status);

typedef struct peerstore__out {
  peerstore__buf buf;  /* being filled */
  peerstore__buf wbuf; /* being written by req */
  uv_write_t req;
  uv_stream_t *stream;
  peerstore__written_cb written;
  void *data;
  unsigned writing : 1; /* req is in flight */
} peerstore__out;

void peerstore__out_init(peerstore__out *o, uv_stream_t *stream,
                         peerstore__written_cb written, void *data);
/* Writes what buf holds.  Returns 0 when all of it reached the kernel (or
 * there was nothing), 1 when a write is in flight (`written` will run),
 * or a libuv error.  Does nothing but return 1 while a write is in
 * flight. */
int peerstore__out_flush(peerstore__out *o);
/* Bytes queued: not yet written, and in flight. */
static inline size_t peerstore__out_queued(const peerstore__out *o) {
  return peerstore__buf_pending(&o->buf) + peerstore__buf_pending(&o->wbuf);
}
/* 1 when buf holds output not yet handed to the kernel or a write. */
static inline int peerstore__out_pending(const peerstore__out *o) {
  return o->buf.len > o->buf.off;
}
/* Drops output not yet handed on (the write in flight, if any, goes on). */
void peerstore__out_discard(peerstore__out *o);
/* Frees both buffers; no write may be in flight. */
void peerstore__out_free(peerstore__out *o);

#endif /* PEERSTORE_CONN_H */
