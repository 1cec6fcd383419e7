/* wire.c - encoding and decoding of peerstore frames; see wire.h.
 *
 * Byte order lives here and nowhere else (frame.c and conn.c move whole
 * frames without looking inside).  Decoding goes through a bounded
 * reader whose error flag is sticky, so a message decoder reads every field
 * and checks the flag once at the end.
 */
#include "wire.h"

#include <stdlib.h>
#include <string.h>

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

static uint16_t be16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }

static uint32_t be32(const uint8_t *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 |
         p[3];
}

static uint64_t be64(const uint8_t *p) {
  return (uint64_t)be32(p) << 32 | be32(p + 4);
}

static uint8_t rd_u8(rd *r) {
  const uint8_t *p = rd_take(r, 1);
  return p ? p[0] : 0;
}

static uint16_t rd_u16(rd *r) {
  const uint8_t *p = rd_take(r, 2);
  return p ? be16(p) : 0;
}

static uint32_t rd_u32(rd *r) {
  const uint8_t *p = rd_take(r, 4);
  return p ? be32(p) : 0;
}

static uint64_t rd_u64(rd *r) {
  const uint8_t *p = rd_take(r, 8);
  return p ? be64(p) : 0;
}

/* A string's rules: not empty, at most max bytes, no NUL; copied out with
 * a terminating NUL into out (max + 1 bytes).  n was read and bounded
 * against what is left. */
static int take_str(const uint8_t *p, uint16_t n, size_t max, char *out) {
  if (n == 0 || n > max || memchr(p, 0, n) != NULL)
    return -1;
  memcpy(out, p, n);
  out[n] = '\0';
  return 0;
}

static void rd_str(rd *r, size_t max, char *out) {
  uint16_t n = rd_u16(r);
  const uint8_t *p;

  out[0] = '\0';
  if (n == 0 || n > max) {
    r->bad = 1;
    return;
  }
  if ((p = rd_take(r, n)) != NULL && take_str(p, n, max, out) != 0)
    r->bad = 1;
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

size_t peerstore__wire_min_body(uint16_t type) {
  switch (type) {
  case PEERSTORE_MSG_HELLO:
    return 4 + 2;
  case PEERSTORE_MSG_STORE: /* one-byte strings, empty value */
    return 2 + 1 + PEERSTORE_PEER_ID_SIZE + 2 + 1 + 8 + 1 + 4;
  case PEERSTORE_MSG_ITERATE:
    return 1 + 2 + 1 + 4;
  case PEERSTORE_MSG_CREDIT:
  case PEERSTORE_MSG_BACKUP:
    return 4;
  case PEERSTORE_MSG_WATCH:
  case PEERSTORE_MSG_REMOVE:
    return 1 + 2 + 1;
  case PEERSTORE_MSG_WATCH_EX:
    return 4 + 8 + 8 + 1 + 2 + 1;
  case PEERSTORE_MSG_BATCH:
    return PEERSTORE_BATCH_ID_SIZE + 4;
  case PEERSTORE_MSG_CANCEL:
  case PEERSTORE_MSG_STATS:
    return 0;
  default:
    return SIZE_MAX;
  }
}

int peerstore__wire_hello(const uint8_t *p, size_t n, uint32_t *magic,
                          uint16_t *version) {
  rd r = {p, n, 0};

  *magic = rd_u32(&r);
  *version = rd_u16(&r);
  return rd_end(&r);
}

int peerstore__wire_welcome(const uint8_t *p, size_t n, uint16_t *version,
                            uint32_t *max_value, uint64_t *history_id) {
  rd r = {p, n, 0};

  *version = rd_u16(&r);
  *max_value = rd_u32(&r);
  *history_id = *version >= 3 ? rd_u64(&r) : 0;
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

static void rd_filter(rd *r, peerstore__filter *f) {
  uint8_t which = rd_u8(r);

  if (which & ~(PEERSTORE_FILTER_PEER | PEERSTORE_FILTER_KEY))
    r->bad = 1;
  f->has_peer = (which & PEERSTORE_FILTER_PEER) != 0;
  f->has_key = (which & PEERSTORE_FILTER_KEY) != 0;
  rd_str(r, PEERSTORE_SUBSYSTEM_MAX, f->subsystem);
  if (f->has_peer)
    rd_peer(r, &f->peer);
  else
    memset(&f->peer, 0, sizeof(f->peer));
  f->key[0] = '\0';
  if (f->has_key)
    rd_str(r, PEERSTORE_KEY_MAX, f->key);
}

int peerstore__wire_filter(const uint8_t *p, size_t n, peerstore__filter *f,
                           uint32_t *credit) {
  rd r = {p, n, 0};

  rd_filter(&r, f);
  if (credit != NULL)
    *credit = rd_u32(&r);
  return rd_end(&r);
}

int peerstore__wire_watch_ex(const uint8_t *p, size_t n, peerstore__filter *f,
                             uint32_t *flags, uint64_t *from,
                             uint64_t *history_id) {
  rd r = {p, n, 0};

  *flags = rd_u32(&r);
  *from = rd_u64(&r);
  *history_id = rd_u64(&r);
  rd_filter(&r, f);
  if (*flags & ~PEERSTORE__WATCH_FLAGS)
    r.bad = 1;
  return rd_end(&r);
}

/* RECORD's body, and EVENT's after its kind and revision: what every
 * record an iteration or a watch delivers goes through, so its bounds
 * are checked a few at a time rather than field by field.  The same
 * rules as rd_triple, rd_u64, rd_u32 and rd_value in turn. */
static void rd_record(rd *r, peerstore__wrec *out) {
  const size_t tail = 8 + 8 + 4 + 4; /* expiry, revision, writer, size */
  const uint8_t *p = r->p;
  size_t left = r->left, n;
  uint32_t size;

  out->option = 0;
  if (r->bad || left < 2)
    goto bad;
  n = be16(p);
  if (left - 2 < n + PEERSTORE_PEER_ID_SIZE + 2 ||
      take_str(p + 2, (uint16_t)n, PEERSTORE_SUBSYSTEM_MAX, out->subsystem))
    goto bad;
  p += 2 + n;
  left -= 2 + n;
  memcpy(out->rec.peer.bytes, p, PEERSTORE_PEER_ID_SIZE);
  p += PEERSTORE_PEER_ID_SIZE;
  left -= PEERSTORE_PEER_ID_SIZE;
  n = be16(p);
  if (left - 2 < n + tail ||
      take_str(p + 2, (uint16_t)n, PEERSTORE_KEY_MAX, out->key) != 0)
    goto bad;
  p += 2 + n;
  left -= 2 + n + tail;
  out->rec.subsystem = out->subsystem;
  out->rec.key = out->key;
  out->rec.expiry = be64(p);
  out->rec.revision = be64(p + 8);
  out->writer = be32(p + 16);
  size = be32(p + 20);
  p += tail;
  if (left < size)
    goto bad;
  out->rec.value_size = size;
  out->rec.value = size > 0 ? (const void *)p : "";
  r->p = p + size;
  r->left = left - size;
  return;
bad:
  memset(&out->rec, 0, sizeof(out->rec));
  out->subsystem[0] = out->key[0] = '\0';
  r->bad = 1;
}

int peerstore__wire_record(const uint8_t *p, size_t n, peerstore__wrec *out) {
  rd r = {p, n, 0};

  rd_record(&r, out);
  return rd_end(&r);
}

int peerstore__wire_batch(const uint8_t *p, size_t n,
                          uint8_t id[PEERSTORE_BATCH_ID_SIZE],
                          uint32_t *count, peerstore__batch_rd *br) {
  rd r = {p, n, 0};
  const uint8_t *q = rd_take(&r, PEERSTORE_BATCH_ID_SIZE);

  *count = rd_u32(&r);
  if (r.bad)
    return PEERSTORE_EPROTO;
  memcpy(id, q, PEERSTORE_BATCH_ID_SIZE);
  br->p = r.p;
  br->left = r.left;
  br->ops_left = *count;
  return *count == 0 ? rd_end(&r) : 0;
}

int peerstore__wire_batch_op(peerstore__batch_rd *br, peerstore__wop *op) {
  rd r = {br->p, br->left, br->ops_left == 0};

  op->kind = rd_u8(&r);
  switch (op->kind) {
  case PEERSTORE__BOP_STORE:
    rd_triple(&r, &op->w);
    op->w.option = rd_u8(&r);
    rd_value(&r, &op->w.rec);
    if (op->w.option > PEERSTORE_REPLACE)
      r.bad = 1;
    break;
  case PEERSTORE__BOP_REMOVE:
    rd_filter(&r, &op->f);
    break;
  case PEERSTORE__BOP_REQUIRE:
    /* The layout of a triple, with the revision where expiry goes. */
    rd_triple(&r, &op->w);
    op->w.rec.revision = op->w.rec.expiry;
    op->w.rec.expiry = 0;
    break;
  default:
    r.bad = 1;
  }
  if (r.bad)
    return PEERSTORE_EPROTO;
  br->p = r.p;
  br->left = r.left;
  return --br->ops_left == 0 ? rd_end(&r) : 0;
}

int peerstore__wire_event(const uint8_t *p, size_t n, uint8_t *kind,
                          uint64_t *revision, peerstore__wrec *out) {
  rd r = {p, n, 0};

  *kind = rd_u8(&r);
  *revision = rd_u64(&r);
  if (*kind >= PEERSTORE_EVENT_STORE && *kind <= PEERSTORE_EVENT_EXPIRE)
    rd_record(&r, out);
  else if (*kind != PEERSTORE_EVENT_SYNC && *kind != PEERSTORE_EVENT_RESET &&
           *kind != PEERSTORE__EVENT_PROGRESS)
    r.bad = 1;
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

static void rd_reason(rd *r, char *reason, size_t reason_size) {
  uint16_t len = rd_u16(r);
  const uint8_t *s = rd_take(r, len);

  if (reason_size == 0)
    return;
  reason[0] = '\0';
  if (s != NULL) {
    if (len >= reason_size)
      len = (uint16_t)(reason_size - 1);
    memcpy(reason, s, len);
    reason[len] = '\0';
  }
}

int peerstore__wire_backup_end(const uint8_t *p, size_t n, int32_t *status,
                               uint64_t *revision, uint64_t *size,
                               char *reason, size_t reason_size) {
  rd r = {p, n, 0};

  *status = (int32_t)rd_u32(&r);
  *revision = rd_u64(&r);
  *size = rd_u64(&r);
  rd_reason(&r, reason, reason_size);
  if (*status > 0)
    r.bad = 1;
  return rd_end(&r);
}

int peerstore__wire_error(const uint8_t *p, size_t n, int32_t *status,
                          char *reason, size_t reason_size) {
  rd r = {p, n, 0};

  *status = (int32_t)rd_u32(&r);
  rd_reason(&r, reason, reason_size);
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

void peerstore__wire_put_header(uint8_t *p, const peerstore__header *h) {
  p = wr_u32(p, h->body_len);
  p = wr_u16(p, h->type);
  p = wr_u16(p, h->flags);
  wr_u32(p, h->request);
}

void peerstore__wire_set_request(uint8_t *frame, uint32_t request) {
  wr_u32(frame + 8, request);
}

/* Reserves a frame of body_len bytes and writes its header; returns where
 * the body goes, or NULL when out of memory. */
static uint8_t *frame_begin(peerstore__buf *b, uint16_t type, uint32_t req,
                            size_t body_len) {
  peerstore__header h;

  if (body_len > PEERSTORE_MSG_MAX ||
      peerstore__buf_reserve(b, PEERSTORE_HEADER_SIZE + body_len) != 0)
    return NULL;
  h.body_len = (uint32_t)body_len;
  h.type = type;
  h.flags = 0;
  h.request = req;
  peerstore__wire_put_header(b->data + b->len, &h);
  return b->data + b->len + PEERSTORE_HEADER_SIZE;
}

static size_t store_body(size_t ssn, size_t kn, size_t size) {
  return 2 + ssn + PEERSTORE_PEER_ID_SIZE + 2 + kn + 8 + 1 + 4 + size;
}

size_t peerstore__len_store(const char *ss, const char *key, size_t size) {
  return PEERSTORE_HEADER_SIZE + store_body(strlen(ss), strlen(key), size);
}

static size_t filter_body(uint16_t type, size_t ssn, int peer, size_t kn,
                          int key) {
  return 1 + 2 + ssn + (peer ? PEERSTORE_PEER_ID_SIZE : 0) +
         (key ? 2 + kn : 0) + (type == PEERSTORE_MSG_ITERATE ? 4 : 0);
}

size_t peerstore__len_filter(uint16_t type, const char *ss,
                             const peerstore_peer_id *peer, const char *key) {
  return PEERSTORE_HEADER_SIZE + filter_body(type, strlen(ss), peer != NULL,
                                             key ? strlen(key) : 0,
                                             key != NULL);
}

static int frame_end(peerstore__buf *b, const uint8_t *end) {
  b->len = (size_t)(end - b->data);
  return 0;
}

int peerstore__put_hello_version(peerstore__buf *b, uint16_t version) {
  uint8_t *p = frame_begin(b, PEERSTORE_MSG_HELLO, 0, 6);

  if (p == NULL)
    return PEERSTORE_ENOMEM;
  p = wr_u32(p, PEERSTORE_PROTOCOL_MAGIC);
  return frame_end(b, wr_u16(p, version));
}

int peerstore__put_hello(peerstore__buf *b) {
  return peerstore__put_hello_version(b, PEERSTORE_PROTOCOL_VERSION);
}

int peerstore__put_welcome(peerstore__buf *b, uint16_t version,
                           uint32_t max_value, uint64_t history_id) {
  uint8_t *p = frame_begin(b, PEERSTORE_MSG_WELCOME, 0, version >= 3 ? 14 : 6);

  if (p == NULL)
    return PEERSTORE_ENOMEM;
  p = wr_u16(p, version);
  p = wr_u32(p, max_value);
  if (version >= 3)
    p = wr_u64(p, history_id);
  return frame_end(b, p);
}

/* A STORE's body, also a batch's store operation after its kind. */
static uint8_t *wr_store(uint8_t *p, const char *ss, size_t ssn,
                         const peerstore_peer_id *peer, const char *key,
                         size_t kn, const void *value, size_t size,
                         uint64_t expiry, uint8_t option) {
  p = wr_str(p, ss, ssn);
  p = wr_bytes(p, peer->bytes, PEERSTORE_PEER_ID_SIZE);
  p = wr_str(p, key, kn);
  p = wr_u64(p, expiry);
  p = wr_u8(p, option);
  p = wr_u32(p, (uint32_t)size);
  return wr_bytes(p, value, size);
}

int peerstore__put_store(peerstore__buf *b, uint32_t req, const char *ss,
                         const peerstore_peer_id *peer, const char *key,
                         const void *value, size_t size, uint64_t expiry,
                         uint8_t option) {
  size_t ssn = strlen(ss), kn = strlen(key);
  uint8_t *p =
      frame_begin(b, PEERSTORE_MSG_STORE, req, store_body(ssn, kn, size));

  if (p == NULL)
    return PEERSTORE_ENOMEM;
  return frame_end(b, wr_store(p, ss, ssn, peer, key, kn, value, size,
                               expiry, option));
}

static uint8_t *wr_filter(uint8_t *p, const char *ss,
                          const peerstore_peer_id *peer, const char *key) {
  uint8_t which = (uint8_t)((peer ? PEERSTORE_FILTER_PEER : 0) |
                            (key ? PEERSTORE_FILTER_KEY : 0));

  p = wr_u8(p, which);
  p = wr_str(p, ss, strlen(ss));
  if (peer != NULL)
    p = wr_bytes(p, peer->bytes, PEERSTORE_PEER_ID_SIZE);
  if (key != NULL)
    p = wr_str(p, key, strlen(key));
  return p;
}

int peerstore__put_filter(peerstore__buf *b, uint16_t type, uint32_t req,
                          const char *ss, const peerstore_peer_id *peer,
                          const char *key, uint32_t credit) {
  size_t body = filter_body(type, strlen(ss), peer != NULL,
                            key ? strlen(key) : 0, key != NULL);
  uint8_t *p = frame_begin(b, type, req, body);

  if (p == NULL)
    return PEERSTORE_ENOMEM;
  p = wr_filter(p, ss, peer, key);
  if (type == PEERSTORE_MSG_ITERATE)
    p = wr_u32(p, credit);
  return frame_end(b, p);
}

size_t peerstore__len_watch_ex(const char *ss, const peerstore_peer_id *peer,
                               const char *key) {
  return 4 + 8 + 8 + peerstore__len_filter(PEERSTORE_MSG_WATCH, ss, peer, key);
}

int peerstore__put_watch_ex(peerstore__buf *b, uint32_t req, const char *ss,
                            const peerstore_peer_id *peer, const char *key,
                            uint32_t flags, uint64_t from,
                            uint64_t history_id) {
  uint8_t *p = frame_begin(
      b, PEERSTORE_MSG_WATCH_EX, req,
      peerstore__len_watch_ex(ss, peer, key) - PEERSTORE_HEADER_SIZE);

  if (p == NULL)
    return PEERSTORE_ENOMEM;
  p = wr_u32(p, flags);
  p = wr_u64(p, from);
  p = wr_u64(p, history_id);
  return frame_end(b, wr_filter(p, ss, peer, key));
}

size_t peerstore__len_bop_store(const char *ss, const char *key,
                                size_t size) {
  return 1 + store_body(strlen(ss), strlen(key), size);
}

size_t peerstore__len_bop_filter(const char *ss,
                                 const peerstore_peer_id *peer,
                                 const char *key) {
  return 1 + filter_body(PEERSTORE_MSG_REMOVE, strlen(ss), peer != NULL,
                         key ? strlen(key) : 0, key != NULL);
}

size_t peerstore__len_bop_require(const char *ss, const char *key) {
  return 1 + 2 + strlen(ss) + PEERSTORE_PEER_ID_SIZE + 2 + strlen(key) + 8;
}

int peerstore__put_bop_store(peerstore__buf *b, const char *ss,
                             const peerstore_peer_id *peer, const char *key,
                             const void *value, size_t size, uint64_t expiry,
                             uint8_t option) {
  size_t ssn = strlen(ss), kn = strlen(key);
  uint8_t *p;

  if (peerstore__buf_reserve(b, 1 + store_body(ssn, kn, size)) != 0)
    return PEERSTORE_ENOMEM;
  p = wr_u8(b->data + b->len, PEERSTORE__BOP_STORE);
  return frame_end(b, wr_store(p, ss, ssn, peer, key, kn, value, size,
                               expiry, option));
}

int peerstore__put_bop_remove(peerstore__buf *b, const char *ss,
                              const peerstore_peer_id *peer,
                              const char *key) {
  uint8_t *p;

  if (peerstore__buf_reserve(b, peerstore__len_bop_filter(ss, peer, key)) !=
      0)
    return PEERSTORE_ENOMEM;
  p = wr_u8(b->data + b->len, PEERSTORE__BOP_REMOVE);
  return frame_end(b, wr_filter(p, ss, peer, key));
}

int peerstore__put_bop_require(peerstore__buf *b, const char *ss,
                               const peerstore_peer_id *peer,
                               const char *key, uint64_t revision) {
  uint8_t *p;

  if (peerstore__buf_reserve(b, peerstore__len_bop_require(ss, key)) != 0)
    return PEERSTORE_ENOMEM;
  p = wr_u8(b->data + b->len, PEERSTORE__BOP_REQUIRE);
  p = wr_str(p, ss, strlen(ss));
  p = wr_bytes(p, peer->bytes, PEERSTORE_PEER_ID_SIZE);
  p = wr_str(p, key, strlen(key));
  return frame_end(b, wr_u64(p, revision));
}

size_t peerstore__len_batch(size_t ops_len) {
  return PEERSTORE_HEADER_SIZE + PEERSTORE_BATCH_ID_SIZE + 4 + ops_len;
}

int peerstore__put_batch(peerstore__buf *b, uint32_t req,
                         const uint8_t id[PEERSTORE_BATCH_ID_SIZE],
                         uint32_t count, const void *ops, size_t ops_len) {
  uint8_t *p = frame_begin(b, PEERSTORE_MSG_BATCH, req,
                           PEERSTORE_BATCH_ID_SIZE + 4 + ops_len);

  if (p == NULL)
    return PEERSTORE_ENOMEM;
  p = wr_bytes(p, id, PEERSTORE_BATCH_ID_SIZE);
  p = wr_u32(p, count);
  return frame_end(b, wr_bytes(p, ops, ops_len));
}

void peerstore__wire_set_watch_from(uint8_t *frame, uint64_t from,
                                    uint64_t history_id) {
  wr_u64(frame + PEERSTORE__WATCH_FROM_AT, from);
  wr_u64(frame + PEERSTORE__WATCH_ID_AT, history_id);
}

/* A record's string lengths, measured once per frame: an iteration
 * encodes nothing else, so they are read twice otherwise. */
typedef struct rec_len {
  size_t ss, key;
} rec_len;

static size_t record_body(const peerstore_record *rec, rec_len *l) {
  l->ss = strlen(rec->subsystem);
  l->key = strlen(rec->key);
  return 2 + l->ss + 32 + 2 + l->key + 8 + 8 + 4 + 4 + rec->value_size;
}

static uint8_t *wr_record(uint8_t *p, const peerstore_record *rec,
                          const rec_len *l, uint32_t writer) {
  p = wr_str(p, rec->subsystem, l->ss);
  p = wr_bytes(p, rec->peer.bytes, PEERSTORE_PEER_ID_SIZE);
  p = wr_str(p, rec->key, l->key);
  p = wr_u64(p, rec->expiry);
  p = wr_u64(p, rec->revision);
  p = wr_u32(p, writer);
  p = wr_u32(p, (uint32_t)rec->value_size);
  return wr_bytes(p, rec->value, rec->value_size);
}

int peerstore__put_record(peerstore__buf *b, uint32_t req,
                          const peerstore_record *rec, uint32_t writer) {
  rec_len l;
  uint8_t *p = frame_begin(b, PEERSTORE_MSG_RECORD, req, record_body(rec, &l));

  return p == NULL ? PEERSTORE_ENOMEM
                   : frame_end(b, wr_record(p, rec, &l, writer));
}

int peerstore__put_event(peerstore__buf *b, uint32_t req, uint8_t kind,
                         uint64_t revision, const peerstore_record *rec,
                         uint32_t writer) {
  rec_len l;
  uint8_t *p = frame_begin(b, PEERSTORE_MSG_EVENT, req,
                           1 + 8 + (rec != NULL ? record_body(rec, &l) : 0));

  if (p == NULL)
    return PEERSTORE_ENOMEM;
  p = wr_u8(p, kind);
  p = wr_u64(p, revision);
  if (rec != NULL)
    p = wr_record(p, rec, &l, writer);
  return frame_end(b, p);
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

int peerstore__put_backup_data(peerstore__buf *b, uint32_t req,
                               const void *data, size_t n) {
  uint8_t *p = frame_begin(b, PEERSTORE_MSG_BACKUP_DATA, req, n);

  return p == NULL ? PEERSTORE_ENOMEM : frame_end(b, wr_bytes(p, data, n));
}

int peerstore__put_backup_end(peerstore__buf *b, uint32_t req, int32_t status,
                              uint64_t revision, uint64_t size,
                              const char *reason) {
  size_t n = reason != NULL ? strlen(reason) : 0;
  uint8_t *p;

  if (n > 1024)
    n = 1024;
  p = frame_begin(b, PEERSTORE_MSG_BACKUP_END, req, 4 + 8 + 8 + 2 + n);
  if (p == NULL)
    return PEERSTORE_ENOMEM;
  p = wr_u32(p, (uint32_t)status);
  p = wr_u64(p, revision);
  p = wr_u64(p, size);
  p = wr_u16(p, (uint16_t)n);
  return frame_end(b, wr_bytes(p, reason, n));
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
