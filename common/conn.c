/* conn.c - see conn.h. */
#include "conn.h"

#include <stdlib.h>
#include <string.h>

/* A uv_buf_t's length is an unsigned int: more than this is passed in
 * several pieces. */
#define WRITE_PIECE ((size_t)1 << 30)

void peerstore__out_init(peerstore__out *o, uv_stream_t *stream,
                         peerstore__written_cb written, void *data) {
  memset(o, 0, sizeof(*o));
  o->stream = stream;
  o->written = written;
  o->data = data;
  o->req.data = o;
}

static void on_write(uv_write_t *req, int status) {
  peerstore__out *o = req->data;

  o->writing = 0;
  peerstore__buf_reset(&o->wbuf);
  o->written(o->data, status);
}

static int write_pieces(peerstore__out *o) {
  size_t left = peerstore__buf_pending(&o->wbuf), k;
  size_t n = (left + WRITE_PIECE - 1) / WRITE_PIECE;
  uv_buf_t one, *bufs = &one;
  int r;

  if (n > 1 && (bufs = malloc(n * sizeof(*bufs))) == NULL)
    return UV_ENOMEM;
  for (k = 0; k < n; k++) {
    size_t at = k * WRITE_PIECE;
    size_t len = left - at < WRITE_PIECE ? left - at : WRITE_PIECE;

    bufs[k] = uv_buf_init((char *)o->wbuf.data + o->wbuf.off + at,
                          (unsigned)len);
  }
  r = uv_write(&o->req, o->stream, bufs, (unsigned)n, on_write); /* copies
                                                                    bufs */
  if (bufs != &one)
    free(bufs);
  if (r != 0)
    return r;
  o->writing = 1;
  return 1;
}

int peerstore__out_flush(peerstore__out *o) {
  size_t pending = peerstore__buf_pending(&o->buf);
  peerstore__buf tmp;
  uv_buf_t b;
  int n;

  if (o->writing)
    return 1;
  if (pending == 0)
    return 0;
  b = uv_buf_init((char *)o->buf.data + o->buf.off,
                  (unsigned)(pending < WRITE_PIECE ? pending : WRITE_PIECE));
  n = uv_try_write(o->stream, &b, 1);
  if (n >= 0 && (size_t)n == pending) {
    peerstore__buf_reset(&o->buf);
    return 0;
  }
  if (n < 0 && n != UV_EAGAIN)
    return n;
  if (n > 0)
    o->buf.off += (size_t)n;
  tmp = o->wbuf;
  o->wbuf = o->buf;
  o->buf = tmp;
  o->buf.len = o->buf.off = 0;
  return write_pieces(o);
}

void peerstore__out_discard(peerstore__out *o) {
  o->buf.len = o->buf.off = 0;
}

void peerstore__out_free(peerstore__out *o) {
  peerstore__buf_free(&o->buf);
  peerstore__buf_free(&o->wbuf);
}
