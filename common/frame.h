/* frame.h - cuts a connection's byte stream into frames; the one frame
 * reader both the library and the service use.
 *
 * Bytes are read by libuv straight into the reader's buffer
 * (peerstore__reader_space from the alloc callback, then
 * peerstore__reader_filled); peerstore__reader_next then hands out whole
 * frames.  A frame's body points into the buffer and is valid until the
 * next call that reads or trims.
 *
 * A header is checked before its body is buffered: a length over
 * PEERSTORE_MSG_MAX or a reserved flag set is a protocol error; a length
 * over the caller's own limit is reported so that the caller can either
 * give up or skip the frame as it arrives, without ever holding it.
 */
#ifndef PEERSTORE_FRAME_H
#define PEERSTORE_FRAME_H

#include <uv.h>

#include "buf.h"
#include "wire.h"

typedef struct peerstore__reader {
  peerstore__buf in;
  uint64_t skip;             /* body bytes of a skipped frame still due */
  peerstore__header skipped; /* that frame's header */
} peerstore__reader;

/* What peerstore__reader_next found (errors are negative statuses). */
enum {
  PEERSTORE__FRAME_MORE = 0,   /* no whole frame yet: read more */
  PEERSTORE__FRAME_READY = 1,  /* *h and *body hold a frame */
  PEERSTORE__FRAME_SKIPPED = 2 /* a skipped frame has passed; *h is its
                                  header */
};

/* For a libuv alloc callback: room in the buffer for the rest of the
 * frame whose header is in, when its body is at most body_max (so a large
 * value arrives in few reads), else for a 64 KiB chunk.  Sets out->len to
 * 0 when out of memory, which libuv reports as UV_ENOBUFS. */
void peerstore__reader_space(peerstore__reader *r, size_t body_max,
                             uv_buf_t *out);
/* n bytes were read into the space handed out last. */
static inline void peerstore__reader_filled(peerstore__reader *r, size_t n) {
  r->in.len += n;
}
/* The next frame.  Returns a PEERSTORE__FRAME_* value, PEERSTORE_EPROTO
 * for a header no peer may send, or PEERSTORE_ETOOBIG (with *h set and
 * nothing consumed) for a body over body_max: the caller then fails the
 * connection or calls peerstore__reader_skip. */
int peerstore__reader_next(peerstore__reader *r, size_t body_max,
                           peerstore__header *h, const uint8_t **body);
/* The type of the frame whose header is next in the buffer, or 0 when
 * no whole header is there (or a skipped frame is still passing), so that
 * a caller can choose the body limit by the kind of message. */
uint16_t peerstore__reader_peek_type(const peerstore__reader *r);
/* The header of the next frame into *h, and 1; or 0 as peek_type. */
int peerstore__reader_peek(const peerstore__reader *r, peerstore__header *h);
/* Drops the frame just reported as ETOOBIG as its bytes arrive; next()
 * reports PEERSTORE__FRAME_SKIPPED once it has passed. */
void peerstore__reader_skip(peerstore__reader *r);
/* After a read's frames were handled: compacts the buffer and releases
 * it if it grew large and is now empty. */
void peerstore__reader_trim(peerstore__reader *r);
/* Forgets everything buffered (a connection ended). */
void peerstore__reader_reset(peerstore__reader *r);
void peerstore__reader_free(peerstore__reader *r);

#endif /* PEERSTORE_FRAME_H */
