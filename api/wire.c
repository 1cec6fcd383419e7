/* wire.c - encoding and decoding of peerstore frames; see wire.h.
 *
 * Byte order lives here and nowhere else.  Decoding goes through a bounded
 * reader whose error flag is sticky, so a message decoder reads every field
 * and checks the flag once at the end.
 */
#include "wire.h"

#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ */
/* Buffers                                                             */

void peerstore__buf_free(peerstore__buf *b) {
  free(b->data);
  memset(b, 0, sizeof(*b));
}

int peerstore__buf_reserve(peerstore__buf *b, size_t n) {
  size_t need, cap;
  uint8_t *p;

  if (b->cap - b->len >= n)
    return 0;
  peerstore__buf_compact(b);
  if (b->cap - b->len >= n)
    return 0;
  need = b->len + n;
  if (need < b->len)
    return PEERSTORE_ENOMEM;
  cap = b->cap ? b->cap : 4096;
  while (cap < need)
    cap *= 2;
  p = realloc(b->data, cap);
  if (p == NULL)
    return PEERSTORE_ENOMEM;
  b->data = p;
  b->cap = cap;
  return 0;
}

void peerstore__buf_compact(peerstore__buf *b) {
  if (b->off == 0)
    return;
  if (b->off == b->len) {
    b->off = b->len = 0;
    return;
  }
  /* Only worth a memmove once the dead prefix outweighs the live part. */
  if (b->off < b->len - b->off && b->off < b->cap / 2)
    return;
  memmove(b->data, b->data + b->off, b->len - b->off);
  b->len -= b->off;
  b->off = 0;
}

#define READ_CHUNK 65536
/* Buffers larger than this are released when they empty. */
#define BUF_KEEP (1u << 20)

void peerstore__buf_trim_input(peerstore__buf *in) {
  peerstore__buf_compact(in);
  if (in->len == 0 && in->cap > BUF_KEEP)
    peerstore__buf_free(in);
}

void peerstore__buf_read_space(peerstore__buf *in, size_t body_max,
                               uv_buf_t *out) {
  size_t want = READ_CHUNK;
  peerstore__header h;

  if (in->len - in->off >= PEERSTORE_HEADER_SIZE) {
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

/* A uv_buf_t's length is an unsigned int: more than this is passed in
 * several pieces. */
#define WRITE_PIECE ((size_t)1 << 30)

static int write_pieces(uv_stream_t *s, peerstore__buf *wbuf,
                        uv_write_t *req, uv_write_cb cb) {
  size_t left = wbuf->len - wbuf->off, k;
  size_t n = (left + WRITE_PIECE - 1) / WRITE_PIECE;
  uv_buf_t one, *bufs = &one;
  int r;

  if (n > 1 && (bufs = malloc(n * sizeof(*bufs))) == NULL)
    return UV_ENOMEM;
  for (k = 0; k < n; k++) {
    size_t at = k * WRITE_PIECE;
    size_t len = left - at < WRITE_PIECE ? left - at : WRITE_PIECE;

    bufs[k] = uv_buf_init((char *)wbuf->data + wbuf->off + at,
                          (unsigned)len);
  }
  r = uv_write(req, s, bufs, (unsigned)n, cb); /* copies bufs */
  if (bufs != &one)
    free(bufs);
  return r == 0 ? 1 : r;
}

int peerstore__buf_flush(uv_stream_t *s, peerstore__buf *out,
                         peerstore__buf *wbuf, uv_write_t *req,
                         uv_write_cb cb) {
  size_t pending = out->len - out->off;
  peerstore__buf tmp;
  uv_buf_t b;
  int n;

  b = uv_buf_init((char *)out->data + out->off,
                  (unsigned)(pending < WRITE_PIECE ? pending : WRITE_PIECE));
  n = uv_try_write(s, &b, 1);
  if (n >= 0 && (size_t)n == pending) {
    out->len = out->off = 0;
    if (out->cap > BUF_KEEP)
      peerstore__buf_free(out);
    return 0;
  }
  if (n < 0 && n != UV_EAGAIN)
    return n;
  if (n > 0)
    out->off += (size_t)n;
  tmp = *wbuf;
  *wbuf = *out;
  *out = tmp;
  out->len = out->off = 0;
  return write_pieces(s, wbuf, req, cb);
}

void peerstore__buf_end_write(peerstore__buf *wbuf) {
  wbuf->len = wbuf->off = 0;
  if (wbuf->cap > BUF_KEEP)
    peerstore__buf_free(wbuf);
}

/* ------------------------------------------------------------------ */
/* Bounded reader                                                      */

typedef struct rd {
  const uint8_t *p;
  size_t left;
  int bad;
} rd;

static const uint8_t *rd_take(rd *r, size_t n) {
  const uint8_t *p;

  if (r->bad || r->left < n) {
    r->bad = 1;
    return NULL;
  }
  p = r->p;
  r->p += n;
  r->left -= n;
  return p;
}

static uint8_t rd_u8(rd *r) {
  const uint8_t *p = rd_take(r, 1);
  return p ? p[0] : 0;
}

static uint16_t rd_u16(rd *r) {
  const uint8_t *p = rd_take(r, 2);
  return p ? (uint16_t)((p[0] << 8) | p[1]) : 0;
}

static uint32_t rd_u32(rd *r) {
  const uint8_t *p = rd_take(r, 4);
  return p ? ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) |
                 ((uint32_t)p[2] << 8) | p[3]
           : 0;
}

static uint64_t rd_u64(rd *r) {
  uint64_t hi = rd_u32(r);
  return (hi << 32) | rd_u32(r);
}

/* A non-empty string of at most max bytes without NUL, copied out with a
 * terminating NUL into out (max + 1 bytes). */
static void rd_str(rd *r, size_t max, char *out) {
  uint16_t n = rd_u16(r);
  const uint8_t *p;

  out[0] = '\0';
  if (n == 0 || n > max) {
    r->bad = 1;
    return;
  }
  p = rd_take(r, n);
  if (p == NULL)
    return;
  if (memchr(p, 0, n) != NULL) {
    r->bad = 1;
    return;
  }
  memcpy(out, p, n);
  out[n] = '\0';
}

static void rd_peer(rd *r, peerstore_peer_id *peer) {
  const uint8_t *p = rd_take(r, PEERSTORE_PEER_ID_SIZE);
  if (p != NULL)
    memcpy(peer->bytes, p, PEERSTORE_PEER_ID_SIZE);
}

/* The whole body must have been consumed: trailing bytes are an error,
 * so that two implementations cannot disagree about what a frame means. */
static int rd_end(const rd *r) {
  return (r->bad || r->left != 0) ? PEERSTORE_EPROTO : 0;
}

/* ------------------------------------------------------------------ */
/* Decoders                                                            */

void peerstore__wire_header(const uint8_t *p, peerstore__header *h) {
  rd r = {p, PEERSTORE_HEADER_SIZE, 0};

  h->body_len = rd_u32(&r);
  h->type = rd_u16(&r);
  h->flags = rd_u16(&r);
  h->request = rd_u32(&r);
}

int peerstore__wire_hello(const uint8_t *p, size_t n, uint32_t *magic,
                          uint16_t *version) {
  rd r = {p, n, 0};

  *magic = rd_u32(&r);
  *version = rd_u16(&r);
  return rd_end(&r);
}

int peerstore__wire_welcome(const uint8_t *p, size_t n, uint16_t *version,
                            uint32_t *max_value) {
  rd r = {p, n, 0};

  *version = rd_u16(&r);
  *max_value = rd_u32(&r);
  return rd_end(&r);
}

static void rd_value(rd *r, peerstore_record *rec) {
  uint32_t n = rd_u32(r);

  rec->value_size = n;
  rec->value = rd_take(r, n);
  if (n == 0 && !r->bad)
    rec->value = "";
}

/* What STORE and RECORD begin with: subsystem, peer, key, expiry. */
static void rd_triple(rd *r, peerstore__wrec *out) {
  memset(&out->rec, 0, sizeof(out->rec));
  out->option = 0;
  rd_str(r, PEERSTORE_SUBSYSTEM_MAX, out->subsystem);
  rd_peer(r, &out->rec.peer);
  rd_str(r, PEERSTORE_KEY_MAX, out->key);
  out->rec.expiry = rd_u64(r);
  out->rec.subsystem = out->subsystem;
  out->rec.key = out->key;
}

int peerstore__wire_store(const uint8_t *p, size_t n, peerstore__wrec *out) {
  rd r = {p, n, 0};

  rd_triple(&r, out);
  out->option = rd_u8(&r);
  rd_value(&r, &out->rec);
  if (out->option > PEERSTORE_REPLACE)
    r.bad = 1;
  return rd_end(&r);
}

int peerstore__wire_filter(const uint8_t *p, size_t n, peerstore__filter *f,
                           uint32_t *credit) {
  rd r = {p, n, 0};
  uint8_t which = rd_u8(&r);

  if (which & ~(PEERSTORE_FILTER_PEER | PEERSTORE_FILTER_KEY))
    r.bad = 1;
  f->has_peer = (which & PEERSTORE_FILTER_PEER) != 0;
  f->has_key = (which & PEERSTORE_FILTER_KEY) != 0;
  rd_str(&r, PEERSTORE_SUBSYSTEM_MAX, f->subsystem);
  if (f->has_peer)
    rd_peer(&r, &f->peer);
  else
    memset(&f->peer, 0, sizeof(f->peer));
  f->key[0] = '\0';
  if (f->has_key)
    rd_str(&r, PEERSTORE_KEY_MAX, f->key);
  if (credit != NULL)
    *credit = rd_u32(&r);
  return rd_end(&r);
}

int peerstore__wire_record(const uint8_t *p, size_t n, peerstore__wrec *out) {
  rd r = {p, n, 0};

  rd_triple(&r, out);
  out->rec.revision = rd_u64(&r);
  out->writer = rd_u32(&r);
  rd_value(&r, &out->rec);
  return rd_end(&r);
}

int peerstore__wire_u32(const uint8_t *p, size_t n, uint32_t *v) {
  rd r = {p, n, 0};

  *v = rd_u32(&r);
  return rd_end(&r);
}

int peerstore__wire_status(const uint8_t *p, size_t n, int32_t *status,
                           uint64_t *extra) {
  rd r = {p, n, 0};

  *status = (int32_t)rd_u32(&r);
  if (extra != NULL)
    *extra = rd_u64(&r);
  /* A status is 0 or negative; anything else is not ours. */
  if (*status > 0)
    r.bad = 1;
  return rd_end(&r);
}

int peerstore__wire_error(const uint8_t *p, size_t n, int32_t *status,
                          char *reason, size_t reason_size) {
  rd r = {p, n, 0};
  uint16_t len;
  const uint8_t *s;

  *status = (int32_t)rd_u32(&r);
  len = rd_u16(&r);
  s = rd_take(&r, len);
  if (s != NULL && reason_size > 0) {
    if (len >= reason_size)
      len = (uint16_t)(reason_size - 1);
    memcpy(reason, s, len);
    reason[len] = '\0';
  }
  return rd_end(&r);
}

int peerstore__wire_stats(const uint8_t *p, size_t n, peerstore_stat *out,
                          char names[][64], size_t max, size_t *count) {
  rd r = {p, n, 0};
  uint16_t i, total = rd_u16(&r);

  *count = 0;
  for (i = 0; i < total && !r.bad; i++) {
    uint8_t len = rd_u8(&r);
    const uint8_t *s = rd_take(&r, len);
    uint64_t v = rd_u64(&r);

    if (r.bad || len == 0 || len > 63 || memchr(s, 0, len) != NULL) {
      r.bad = 1;
      break;
    }
    if (*count < max) {
      memcpy(names[*count], s, len);
      names[*count][len] = '\0';
      out[*count].name = names[*count];
      out[*count].value = v;
      (*count)++;
    }
  }
  return rd_end(&r);
}

/* ------------------------------------------------------------------ */
/* Encoders                                                            */

/* Callers reserve the whole frame first, so the writes cannot fail. */
static uint8_t *wr_u8(uint8_t *p, uint8_t v) {
  *p = v;
  return p + 1;
}

static uint8_t *wr_u16(uint8_t *p, uint16_t v) {
  p[0] = (uint8_t)(v >> 8);
  p[1] = (uint8_t)v;
  return p + 2;
}

static uint8_t *wr_u32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)(v >> 24);
  p[1] = (uint8_t)(v >> 16);
  p[2] = (uint8_t)(v >> 8);
  p[3] = (uint8_t)v;
  return p + 4;
}

static uint8_t *wr_u64(uint8_t *p, uint64_t v) {
  p = wr_u32(p, (uint32_t)(v >> 32));
  return wr_u32(p, (uint32_t)v);
}

static uint8_t *wr_bytes(uint8_t *p, const void *s, size_t n) {
  if (n > 0)
    memcpy(p, s, n);
  return p + n;
}

/* Callers have checked string lengths, so they fit a u16. */
static uint8_t *wr_str(uint8_t *p, const char *s, size_t n) {
  return wr_bytes(wr_u16(p, (uint16_t)n), s, n);
}

/* Reserves a frame of body_len bytes and writes its header; returns where
 * the body goes, or NULL when out of memory. */
static uint8_t *frame_begin(peerstore__buf *b, uint16_t type, uint32_t req,
                            size_t body_len) {
  uint8_t *p;

  if (body_len > PEERSTORE_MSG_MAX ||
      peerstore__buf_reserve(b, PEERSTORE_HEADER_SIZE + body_len) != 0)
    return NULL;
  p = b->data + b->len;
  p = wr_u32(p, (uint32_t)body_len);
  p = wr_u16(p, type);
  p = wr_u16(p, 0);
  return wr_u32(p, req);
}

static int frame_end(peerstore__buf *b, const uint8_t *end) {
  b->len = (size_t)(end - b->data);
  return 0;
}

int peerstore__put_hello(peerstore__buf *b) {
  uint8_t *p = frame_begin(b, PEERSTORE_MSG_HELLO, 0, 6);

  if (p == NULL)
    return PEERSTORE_ENOMEM;
  p = wr_u32(p, PEERSTORE_PROTOCOL_MAGIC);
  return frame_end(b, wr_u16(p, PEERSTORE_PROTOCOL_VERSION));
}

int peerstore__put_welcome(peerstore__buf *b, uint32_t max_value) {
  uint8_t *p = frame_begin(b, PEERSTORE_MSG_WELCOME, 0, 6);

  if (p == NULL)
    return PEERSTORE_ENOMEM;
  p = wr_u16(p, PEERSTORE_PROTOCOL_VERSION);
  return frame_end(b, wr_u32(p, max_value));
}

int peerstore__put_store(peerstore__buf *b, uint32_t req, const char *ss,
                         const peerstore_peer_id *peer, const char *key,
                         const void *value, size_t size, uint64_t expiry,
                         uint8_t option) {
  size_t ssn = strlen(ss), kn = strlen(key);
  uint8_t *p = frame_begin(b, PEERSTORE_MSG_STORE, req,
                           2 + ssn + 32 + 2 + kn + 8 + 1 + 4 + size);

  if (p == NULL)
    return PEERSTORE_ENOMEM;
  p = wr_str(p, ss, ssn);
  p = wr_bytes(p, peer->bytes, PEERSTORE_PEER_ID_SIZE);
  p = wr_str(p, key, kn);
  p = wr_u64(p, expiry);
  p = wr_u8(p, option);
  p = wr_u32(p, (uint32_t)size);
  return frame_end(b, wr_bytes(p, value, size));
}

int peerstore__put_filter(peerstore__buf *b, uint16_t type, uint32_t req,
                          const char *ss, const peerstore_peer_id *peer,
                          const char *key, uint32_t credit) {
  size_t ssn = strlen(ss), kn = key ? strlen(key) : 0;
  size_t body = 1 + 2 + ssn + (peer ? 32 : 0) + (key ? 2 + kn : 0) +
                (type == PEERSTORE_MSG_ITERATE ? 4 : 0);
  uint8_t which = (uint8_t)((peer ? PEERSTORE_FILTER_PEER : 0) |
                            (key ? PEERSTORE_FILTER_KEY : 0));
  uint8_t *p = frame_begin(b, type, req, body);

  if (p == NULL)
    return PEERSTORE_ENOMEM;
  p = wr_u8(p, which);
  p = wr_str(p, ss, ssn);
  if (peer != NULL)
    p = wr_bytes(p, peer->bytes, PEERSTORE_PEER_ID_SIZE);
  if (key != NULL)
    p = wr_str(p, key, kn);
  if (type == PEERSTORE_MSG_ITERATE)
    p = wr_u32(p, credit);
  return frame_end(b, p);
}

int peerstore__put_record(peerstore__buf *b, uint32_t req,
                          const peerstore_record *rec, uint32_t writer) {
  size_t ssn = strlen(rec->subsystem), kn = strlen(rec->key);
  uint8_t *p =
      frame_begin(b, PEERSTORE_MSG_RECORD, req,
                  2 + ssn + 32 + 2 + kn + 8 + 8 + 4 + 4 + rec->value_size);

  if (p == NULL)
    return PEERSTORE_ENOMEM;
  p = wr_str(p, rec->subsystem, ssn);
  p = wr_bytes(p, rec->peer.bytes, PEERSTORE_PEER_ID_SIZE);
  p = wr_str(p, rec->key, kn);
  p = wr_u64(p, rec->expiry);
  p = wr_u64(p, rec->revision);
  p = wr_u32(p, writer);
  p = wr_u32(p, (uint32_t)rec->value_size);
  return frame_end(b, wr_bytes(p, rec->value, rec->value_size));
}

int peerstore__put_empty(peerstore__buf *b, uint16_t type, uint32_t req) {
  uint8_t *p = frame_begin(b, type, req, 0);

  return p == NULL ? PEERSTORE_ENOMEM : frame_end(b, p);
}

int peerstore__put_u32(peerstore__buf *b, uint16_t type, uint32_t req,
                       uint32_t v) {
  uint8_t *p = frame_begin(b, type, req, 4);

  return p == NULL ? PEERSTORE_ENOMEM : frame_end(b, wr_u32(p, v));
}

int peerstore__put_status(peerstore__buf *b, uint16_t type, uint32_t req,
                          int32_t status, const uint64_t *extra) {
  uint8_t *p = frame_begin(b, type, req, extra ? 12 : 4);

  if (p == NULL)
    return PEERSTORE_ENOMEM;
  p = wr_u32(p, (uint32_t)status);
  if (extra != NULL)
    p = wr_u64(p, *extra);
  return frame_end(b, p);
}

int peerstore__put_error(peerstore__buf *b, uint32_t req, int32_t status,
                         const char *reason) {
  size_t n = strlen(reason);
  uint8_t *p;

  if (n > 1024)
    n = 1024;
  p = frame_begin(b, PEERSTORE_MSG_ERROR, req, 4 + 2 + n);
  if (p == NULL)
    return PEERSTORE_ENOMEM;
  p = wr_u32(p, (uint32_t)status);
  return frame_end(b, wr_str(p, reason, n));
}

int peerstore__put_stats(peerstore__buf *b, uint32_t req,
                         const peerstore_stat *stats, size_t n) {
  size_t i, body = 2;
  uint8_t *p;

  for (i = 0; i < n; i++)
    body += 1 + strlen(stats[i].name) + 8;
  p = frame_begin(b, PEERSTORE_MSG_STATS_RESULT, req, body);
  if (p == NULL)
    return PEERSTORE_ENOMEM;
  p = wr_u16(p, (uint16_t)n);
  for (i = 0; i < n; i++) {
    size_t len = strlen(stats[i].name);
    p = wr_u8(p, (uint8_t)len);
    p = wr_bytes(p, stats[i].name, len);
    p = wr_u64(p, stats[i].value);
  }
  return frame_end(b, p);
}
