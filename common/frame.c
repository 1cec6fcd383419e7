/* frame.c - see frame.h. */
#include "frame.h"

#include <string.h>

#define READ_CHUNK 65536

void peerstore__reader_space(peerstore__reader *r, size_t body_max,
                             uv_buf_t *out) {
  peerstore__buf *in = &r->in;
  size_t want = READ_CHUNK;
  peerstore__header h;

  /* While skipping there is no header to size by. */
  if (r->skip == 0 && peerstore__buf_pending(in) >= PEERSTORE_HEADER_SIZE) {
    peerstore__wire_header(in->data + in->off, &h);
    if (h.body_len <= body_max &&
        PEERSTORE_HEADER_SIZE + (size_t)h.body_len > want)
      want = PEERSTORE_HEADER_SIZE + h.body_len;
  }
  if (peerstore__buf_reserve(in, want) != 0) {
    *out = uv_buf_init(NULL, 0);
    return;
  }
  *out = uv_buf_init((char *)in->data + in->len,
                     (unsigned)(in->cap - in->len));
}

int peerstore__reader_next(peerstore__reader *r, size_t body_max,
                           peerstore__header *h, const uint8_t **body) {
  peerstore__buf *in = &r->in;
  size_t avail = peerstore__buf_pending(in);

  if (r->skip > 0) {
    size_t n = avail < r->skip ? avail : (size_t)r->skip;

    in->off += n;
    r->skip -= n;
    if (r->skip > 0)
      return PEERSTORE__FRAME_MORE;
    *h = r->skipped;
    return PEERSTORE__FRAME_SKIPPED;
  }
  if (avail < PEERSTORE_HEADER_SIZE)
    return PEERSTORE__FRAME_MORE;
  peerstore__wire_header(in->data + in->off, h);
  if (h->body_len > PEERSTORE_MSG_MAX || h->flags != 0)
    return PEERSTORE_EPROTO;
  if (h->body_len > body_max)
    return PEERSTORE_ETOOBIG;
  if (avail < PEERSTORE_HEADER_SIZE + (size_t)h->body_len)
    return PEERSTORE__FRAME_MORE;
  in->off += PEERSTORE_HEADER_SIZE + h->body_len;
  *body = in->data + in->off - h->body_len;
  return PEERSTORE__FRAME_READY;
}

int peerstore__reader_peek(const peerstore__reader *r, peerstore__header *h) {
  if (r->skip > 0 || peerstore__buf_pending(&r->in) < PEERSTORE_HEADER_SIZE)
    return 0;
  peerstore__wire_header(r->in.data + r->in.off, h);
  return 1;
}

uint16_t peerstore__reader_peek_type(const peerstore__reader *r) {
  peerstore__header h;

  return peerstore__reader_peek(r, &h) ? h.type : 0;
}

void peerstore__reader_skip(peerstore__reader *r) {
  peerstore__buf *in = &r->in;

  peerstore__wire_header(in->data + in->off, &r->skipped);
  in->off += PEERSTORE_HEADER_SIZE;
  r->skip = r->skipped.body_len;
}

/* What a connection keeps for reading between messages.  A large
 * message's buffer is given back once it has been handled, whatever
 * follows it, so that a connection holds no more than this while idle. */
#define READ_KEEP (2 * READ_CHUNK)

void peerstore__reader_trim(peerstore__reader *r) {
  peerstore__header h;

  peerstore__buf_compact(&r->in);
  if (r->in.cap <= READ_KEEP)
    return;
  /* Not while a frame is arriving into the room made for it. */
  if (peerstore__reader_peek(r, &h) &&
      peerstore__buf_pending(&r->in) < PEERSTORE_HEADER_SIZE + (size_t)h.body_len)
    return;
  peerstore__buf_shrink(&r->in, r->in.len == 0 ? 0 : READ_KEEP);
}

void peerstore__reader_reset(peerstore__reader *r) {
  r->in.len = r->in.off = 0;
  r->skip = 0;
}

void peerstore__reader_free(peerstore__reader *r) {
  peerstore__buf_free(&r->in);
  memset(r, 0, sizeof(*r));
}
