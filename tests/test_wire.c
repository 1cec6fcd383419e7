/* test_wire.c - common/: the frame codec (round trips, and every way a
 * body can be short, long or wrong), the frame reader, connection output
 * and the heap.  Also the peer id text forms. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "conn.h"
#include "frame.h"
#include "heap.h"
#include "wire.h"

static peerstore_peer_id peer_seq(void) {
  peerstore_peer_id p;
  int i;
  for (i = 0; i < 32; i++)
    p.bytes[i] = (uint8_t)(i * 9 + 1);
  return p;
}

/* Returns the body of the single frame in b, checking its header. */
static const uint8_t *body_of(const peerstore__buf *b, uint16_t type,
                              uint32_t req, size_t *n) {
  peerstore__header h;

  assert_true(b->len >= PEERSTORE_HEADER_SIZE);
  peerstore__wire_header(b->data, &h);
  assert_int_equal(h.type, type);
  assert_int_equal(h.request, req);
  assert_int_equal(h.flags, 0);
  assert_int_equal(h.body_len + PEERSTORE_HEADER_SIZE, b->len);
  *n = h.body_len;
  return b->data + PEERSTORE_HEADER_SIZE;
}

static void test_header_big_endian(void **state) {
  const uint8_t raw[12] = {0, 0, 1, 2, 0, 3, 0, 0, 0xde, 0xad, 0xbe, 0xef};
  peerstore__header h;

  (void)state;
  peerstore__wire_header(raw, &h);
  assert_int_equal(h.body_len, 258);
  assert_int_equal(h.type, 3);
  assert_int_equal(h.request, 0xdeadbeefu);
}

static void test_store_roundtrip(void **state) {
  peerstore__buf b = {0};
  peerstore_peer_id p = peer_seq();
  peerstore__wrec w;
  const uint8_t *body;
  size_t n, cut;
  uint8_t val[3] = {0, 255, 7};

  (void)state;
  assert_int_equal(peerstore__put_store(&b, 42, "sub", &p, "k/ *y", val, 3,
                                        123456789ull, PEERSTORE_REPLACE),
                   0);
  body = body_of(&b, PEERSTORE_MSG_STORE, 42, &n);
  assert_int_equal(peerstore__wire_store(body, n, &w), 0);
  assert_string_equal(w.rec.subsystem, "sub");
  assert_string_equal(w.rec.key, "k/ *y");
  assert_memory_equal(w.rec.peer.bytes, p.bytes, 32);
  assert_int_equal(w.rec.value_size, 3);
  assert_memory_equal(w.rec.value, val, 3);
  assert_int_equal(w.rec.expiry, 123456789ull);
  assert_int_equal(w.option, PEERSTORE_REPLACE);
  /* Every truncation fails, and so does one trailing byte. */
  for (cut = 0; cut < n; cut++)
    assert_int_equal(peerstore__wire_store(body, cut, &w), PEERSTORE_EPROTO);
  assert_int_equal(peerstore__buf_reserve(&b, 1), 0);
  b.data[b.len] = 0;
  body = b.data + PEERSTORE_HEADER_SIZE;
  assert_int_equal(peerstore__wire_store(body, n + 1, &w), PEERSTORE_EPROTO);
  peerstore__buf_free(&b);
}

static void test_store_empty_value(void **state) {
  peerstore__buf b = {0};
  peerstore_peer_id p = peer_seq();
  peerstore__wrec w;
  const uint8_t *body;
  size_t n;

  (void)state;
  assert_int_equal(peerstore__put_store(&b, 1, "s", &p, "k", NULL, 0,
                                        PEERSTORE_EXPIRY_NEVER,
                                        PEERSTORE_MULTIPLE),
                   0);
  body = body_of(&b, PEERSTORE_MSG_STORE, 1, &n);
  assert_int_equal(peerstore__wire_store(body, n, &w), 0);
  assert_int_equal(w.rec.value_size, 0);
  assert_non_null(w.rec.value);
  assert_true(w.rec.expiry == PEERSTORE_EXPIRY_NEVER);
  peerstore__buf_free(&b);
}

/* Builds a STORE body by hand so that fields can be made wrong. */
static size_t raw_store(uint8_t *o, uint16_t sslen, const char *ss,
                        uint16_t klen, const char *key, uint8_t option,
                        uint32_t vlen) {
  size_t n = 0;

  o[n++] = (uint8_t)(sslen >> 8);
  o[n++] = (uint8_t)sslen;
  memcpy(o + n, ss, strlen(ss));
  n += strlen(ss);
  memset(o + n, 1, 32);
  n += 32;
  o[n++] = (uint8_t)(klen >> 8);
  o[n++] = (uint8_t)klen;
  memcpy(o + n, key, strlen(key));
  n += strlen(key);
  memset(o + n, 0, 8);
  n += 8;
  o[n++] = option;
  o[n++] = (uint8_t)(vlen >> 24);
  o[n++] = (uint8_t)(vlen >> 16);
  o[n++] = (uint8_t)(vlen >> 8);
  o[n++] = (uint8_t)vlen;
  return n;
}

static void test_store_malformed(void **state) {
  uint8_t o[4096];
  peerstore__wrec w;
  size_t n;

  (void)state;
  n = raw_store(o, 2, "ss", 1, "k", 0, 0);
  assert_int_equal(peerstore__wire_store(o, n, &w), 0);
  /* Empty subsystem, empty key. */
  n = raw_store(o, 0, "", 1, "k", 0, 0);
  assert_int_equal(peerstore__wire_store(o, n, &w), PEERSTORE_EPROTO);
  n = raw_store(o, 2, "ss", 0, "", 0, 0);
  assert_int_equal(peerstore__wire_store(o, n, &w), PEERSTORE_EPROTO);
  /* A NUL inside a string. */
  n = raw_store(o, 2, "sx", 1, "k", 0, 0);
  o[3] = 0;
  assert_int_equal(peerstore__wire_store(o, n, &w), PEERSTORE_EPROTO);
  /* Lengths larger than the body or the limits. */
  n = raw_store(o, 0xffff, "ss", 1, "k", 0, 0);
  assert_int_equal(peerstore__wire_store(o, n, &w), PEERSTORE_EPROTO);
  n = raw_store(o, 2, "ss", 1, "k", 0, 0xffffffffu);
  assert_int_equal(peerstore__wire_store(o, n, &w), PEERSTORE_EPROTO);
  n = raw_store(o, 2, "ss", 1025, "k", 0, 0);
  assert_int_equal(peerstore__wire_store(o, n, &w), PEERSTORE_EPROTO);
  /* An option that does not exist. */
  n = raw_store(o, 2, "ss", 1, "k", 2, 0);
  assert_int_equal(peerstore__wire_store(o, n, &w), PEERSTORE_EPROTO);
  /* Nothing at all. */
  assert_int_equal(peerstore__wire_store(o, 0, &w), PEERSTORE_EPROTO);
}

static void test_filter_roundtrip(void **state) {
  peerstore__buf b = {0};
  peerstore_peer_id p = peer_seq();
  peerstore__filter f;
  const uint8_t *body;
  uint32_t credit;
  size_t n, cut;

  (void)state;
  assert_int_equal(peerstore__put_filter(&b, PEERSTORE_MSG_ITERATE, 7, "ss",
                                         &p, "key", 99),
                   0);
  body = body_of(&b, PEERSTORE_MSG_ITERATE, 7, &n);
  assert_int_equal(peerstore__wire_filter(body, n, &f, &credit), 0);
  assert_true(f.has_peer && f.has_key);
  assert_string_equal(f.subsystem, "ss");
  assert_string_equal(f.key, "key");
  assert_int_equal(credit, 99);
  for (cut = 0; cut < n; cut++)
    assert_int_equal(peerstore__wire_filter(body, cut, &f, &credit),
                     PEERSTORE_EPROTO);
  /* Without the credit field the same body is too long. */
  assert_int_equal(peerstore__wire_filter(body, n, &f, NULL),
                   PEERSTORE_EPROTO);
  peerstore__buf_free(&b);

  b = (peerstore__buf){0};
  assert_int_equal(peerstore__put_filter(&b, PEERSTORE_MSG_WATCH, 8, "ss",
                                         NULL, NULL, 0),
                   0);
  body = body_of(&b, PEERSTORE_MSG_WATCH, 8, &n);
  assert_int_equal(peerstore__wire_filter(body, n, &f, NULL), 0);
  assert_false(f.has_peer || f.has_key);
  /* Unknown filter bits. */
  b.data[PEERSTORE_HEADER_SIZE] = 4;
  assert_int_equal(peerstore__wire_filter(body, n, &f, NULL),
                   PEERSTORE_EPROTO);
  peerstore__buf_free(&b);
}

static void test_record_roundtrip(void **state) {
  peerstore__buf b = {0};
  peerstore_record r = {0};
  peerstore__wrec w;
  const uint8_t *body;
  size_t n, cut;

  (void)state;
  r.subsystem = "s";
  r.peer = peer_seq();
  r.key = "k";
  r.value = "value";
  r.value_size = 5;
  r.expiry = 5;
  r.revision = 0x0102030405060708ull;
  assert_int_equal(peerstore__put_record(&b, 3, &r, 1000), 0);
  body = body_of(&b, PEERSTORE_MSG_RECORD, 3, &n);
  assert_int_equal(peerstore__wire_record(body, n, &w), 0);
  assert_int_equal(w.rec.revision, r.revision);
  assert_int_equal(w.writer, 1000);
  assert_int_equal(w.rec.expiry, 5);
  assert_memory_equal(w.rec.value, "value", 5);
  assert_string_equal(w.rec.subsystem, "s");
  assert_string_equal(w.rec.key, "k");
  assert_memory_equal(w.rec.peer.bytes, r.peer.bytes, PEERSTORE_PEER_ID_SIZE);
  for (cut = 0; cut < n; cut++)
    assert_int_equal(peerstore__wire_record(body, cut, &w), PEERSTORE_EPROTO);
  {
    /* Each string keeps the rules of a store's: no NUL, not empty; and
     * a body says all of itself, no byte more. */
    uint8_t copy[128];
    const size_t key_at = 2 + 1 + PEERSTORE_PEER_ID_SIZE + 2;

    assert_true(n + 1 <= sizeof(copy));
    memcpy(copy, body, n);
    copy[n] = 0;
    assert_int_equal(peerstore__wire_record(copy, n + 1, &w),
                     PEERSTORE_EPROTO);
    copy[key_at] = '\0';
    assert_int_equal(peerstore__wire_record(copy, n, &w), PEERSTORE_EPROTO);
    memcpy(copy, body, n);
    copy[2] = '\0';
    assert_int_equal(peerstore__wire_record(copy, n, &w), PEERSTORE_EPROTO);
    memcpy(copy, body, n);
    copy[1] = 0; /* an empty subsystem */
    assert_int_equal(peerstore__wire_record(copy, n, &w), PEERSTORE_EPROTO);
  }
  r.value_size = 0;
  peerstore__buf_reset(&b);
  assert_int_equal(peerstore__put_record(&b, 3, &r, 1000), 0);
  body = body_of(&b, PEERSTORE_MSG_RECORD, 3, &n);
  assert_int_equal(peerstore__wire_record(body, n, &w), 0);
  assert_int_equal(w.rec.value_size, 0);
  assert_non_null(w.rec.value);
  peerstore__buf_free(&b);
}

static void test_small_messages(void **state) {
  peerstore__buf b = {0};
  const uint8_t *body;
  size_t n;
  uint32_t magic, maxv, v32;
  uint16_t version;
  int32_t status;
  uint64_t extra = 77;
  char reason[16];
  peerstore_stat st[2] = {{"records", 5}, {"clients", 6}}, out[4];
  char names[4][64];
  size_t count;
  uint64_t id;

  (void)state;
  assert_int_equal(peerstore__put_hello(&b), 0);
  body = body_of(&b, PEERSTORE_MSG_HELLO, 0, &n);
  assert_int_equal(peerstore__wire_hello(body, n, &magic, &version), 0);
  assert_int_equal(magic, PEERSTORE_PROTOCOL_MAGIC);
  assert_int_equal(version, PEERSTORE_PROTOCOL_VERSION);
  assert_int_equal(peerstore__wire_hello(body, n - 1, &magic, &version),
                   PEERSTORE_EPROTO);
  b.len = 0;
  assert_int_equal(peerstore__put_welcome(&b, 3, 1000, 0x1122334455667788ull),
                   0);
  body = body_of(&b, PEERSTORE_MSG_WELCOME, 0, &n);
  assert_int_equal(n, 14);
  assert_int_equal(peerstore__wire_welcome(body, n, &version, &maxv, &id), 0);
  assert_int_equal(maxv, 1000);
  assert_int_equal(version, 3);
  assert_int_equal(id, 0x1122334455667788ull);
  /* Version 2's WELCOME has no history id. */
  b.len = 0;
  assert_int_equal(peerstore__put_welcome(&b, 2, 1000, 99), 0);
  body = body_of(&b, PEERSTORE_MSG_WELCOME, 0, &n);
  assert_int_equal(n, 6);
  assert_int_equal(peerstore__wire_welcome(body, n, &version, &maxv, &id), 0);
  assert_int_equal(version, 2);
  assert_int_equal(id, 0);
  b.len = 0;
  assert_int_equal(peerstore__put_status(&b, PEERSTORE_MSG_STORE_RESULT, 9,
                                         PEERSTORE_ETOOBIG, &extra),
                   0);
  body = body_of(&b, PEERSTORE_MSG_STORE_RESULT, 9, &n);
  extra = 0;
  assert_int_equal(peerstore__wire_status(body, n, &status, &extra), 0);
  assert_int_equal(status, PEERSTORE_ETOOBIG);
  assert_int_equal(extra, 77);
  assert_int_equal(peerstore__wire_status(body, n, &status, NULL),
                   PEERSTORE_EPROTO);
  b.len = 0;
  /* A positive status is not a status. */
  assert_int_equal(peerstore__put_status(&b, PEERSTORE_MSG_ITERATE_END, 9, 5,
                                         NULL),
                   0);
  body = body_of(&b, PEERSTORE_MSG_ITERATE_END, 9, &n);
  assert_int_equal(peerstore__wire_status(body, n, &status, NULL),
                   PEERSTORE_EPROTO);
  b.len = 0;
  assert_int_equal(peerstore__put_u32(&b, PEERSTORE_MSG_CREDIT, 4, 512), 0);
  body = body_of(&b, PEERSTORE_MSG_CREDIT, 4, &n);
  assert_int_equal(peerstore__wire_u32(body, n, &v32), 0);
  assert_int_equal(v32, 512);
  b.len = 0;
  assert_int_equal(peerstore__put_error(&b, 0, PEERSTORE_EPROTO,
                                        "a long reason that gets cut"),
                   0);
  body = body_of(&b, PEERSTORE_MSG_ERROR, 0, &n);
  assert_int_equal(peerstore__wire_error(body, n, &status, reason,
                                         sizeof(reason)),
                   0);
  assert_int_equal(status, PEERSTORE_EPROTO);
  assert_string_equal(reason, "a long reason t");
  b.len = 0;
  assert_int_equal(peerstore__put_stats(&b, 1, st, 2), 0);
  body = body_of(&b, PEERSTORE_MSG_STATS_RESULT, 1, &n);
  assert_int_equal(peerstore__wire_stats(body, n, out, names, 4, &count), 0);
  assert_int_equal(count, 2);
  assert_string_equal(out[1].name, "clients");
  assert_int_equal(out[1].value, 6);
  assert_int_equal(peerstore__wire_stats(body, n - 1, out, names, 4, &count),
                   PEERSTORE_EPROTO);
  peerstore__buf_free(&b);
}

/* Random bodies never crash a decoder or read past the end (run this
 * under valgrind or ASan to make that last part bite). */
static void test_random_bodies(void **state) {
  uint8_t *buf;
  uint32_t seed = 12345, i, n, j;
  peerstore__wrec w;
  peerstore__filter f;
  uint32_t credit, magic, v32;
  uint16_t version;
  int32_t status;
  uint64_t extra;
  char reason[64], names[8][64];
  peerstore_stat st[8];
  size_t count;

  (void)state;
  for (i = 0; i < 20000; i++) {
    seed = seed * 1103515245u + 12345u;
    n = (seed >> 8) % 96;
    buf = malloc(n ? n : 1);
    for (j = 0; j < n; j++) {
      seed = seed * 1103515245u + 12345u;
      /* Mostly small bytes, so lengths often look plausible. */
      buf[j] = (uint8_t)((seed >> 16) % ((seed & 1) ? 4 : 256));
    }
    (void)peerstore__wire_store(buf, n, &w);
    (void)peerstore__wire_record(buf, n, &w);
    (void)peerstore__wire_filter(buf, n, &f, &credit);
    (void)peerstore__wire_filter(buf, n, &f, NULL);
    (void)peerstore__wire_hello(buf, n, &magic, &version);
    (void)peerstore__wire_u32(buf, n, &v32);
    (void)peerstore__wire_status(buf, n, &status, &extra);
    (void)peerstore__wire_error(buf, n, &status, reason, sizeof(reason));
    (void)peerstore__wire_stats(buf, n, st, names, 8, &count);
    free(buf);
  }
}

static void test_peer_text(void **state) {
  peerstore_peer_id p = peer_seq(), q, zero;
  char s[PEERSTORE_PEER_B32_LEN + 1], hex[65];
  int i;

  (void)state;
  peerstore_peer_to_string(&p, s);
  assert_int_equal(strlen(s), PEERSTORE_PEER_B32_LEN);
  assert_int_equal(peerstore_peer_from_string(s, &q), 0);
  assert_memory_equal(p.bytes, q.bytes, 32);
  for (i = 0; i < 32; i++)
    snprintf(hex + 2 * i, 3, "%02X", p.bytes[i]);
  assert_int_equal(peerstore_peer_from_string(hex, &q), 0);
  assert_memory_equal(p.bytes, q.bytes, 32);
  /* Lower case and the Crockford look-alikes read the same. */
  memset(&zero, 0, sizeof(zero));
  peerstore_peer_to_string(&zero, s);
  assert_string_equal(s, "0000000000000000000000000000000000000000000000000000");
  memset(s, 'o', PEERSTORE_PEER_B32_LEN);
  assert_int_equal(peerstore_peer_from_string(s, &q), 0);
  assert_memory_equal(q.bytes, zero.bytes, 32);
  /* One bit set in the first byte: the top of the first character. */
  zero.bytes[0] = 0x80;
  peerstore_peer_to_string(&zero, s);
  assert_int_equal(s[0], 'G');
  /* Wrong length, bad characters, non-zero padding bits. */
  assert_int_equal(peerstore_peer_from_string("abc", &q), PEERSTORE_EINVAL);
  memset(s, 'U', PEERSTORE_PEER_B32_LEN);
  assert_int_equal(peerstore_peer_from_string(s, &q), PEERSTORE_EINVAL);
  memset(s, '0', PEERSTORE_PEER_B32_LEN);
  s[PEERSTORE_PEER_B32_LEN - 1] = '1';
  assert_int_equal(peerstore_peer_from_string(s, &q), PEERSTORE_EINVAL);
  hex[5] = 'g';
  assert_int_equal(peerstore_peer_from_string(hex, &q), PEERSTORE_EINVAL);
}

/* peerstore__out_flush: what the kernel takes goes out at once, the rest
 * through a queued write; the reader sees every byte once, in order,
 * across that boundary. */
static int written;

static void on_written(void *data, int status) {
  (void)data;
  assert_int_equal(status, 0);
  written++;
}

static void queue_bytes(peerstore__buf *b, size_t n, unsigned *next) {
  size_t i;

  assert_int_equal(peerstore__buf_reserve(b, n), 0);
  for (i = 0; i < n; i++)
    b->data[b->len++] = (uint8_t)((*next)++ * 7u);
}

/* Reads n bytes (n == 0: whatever is there now) and checks each is the
 * next of the pattern. */
static void drain_and_check(int fd, size_t n, unsigned *seen) {
  uint8_t buf[65536];
  size_t got = 0, i;
  ssize_t r;

  do {
    size_t want = n == 0 || n - got > sizeof(buf) ? sizeof(buf) : n - got;

    r = recv(fd, buf, want, n == 0 ? MSG_DONTWAIT : 0);
    if (n == 0 && r < 0)
      return;
    assert_true(r > 0);
    for (i = 0; i < (size_t)r; i++)
      assert_int_equal(buf[i], (uint8_t)((*seen)++ * 7u));
    got += (size_t)r;
  } while (got < n || (n == 0 && r == (ssize_t)sizeof(buf)));
}

static void test_output_keeps_byte_order_across_queued_writes(void **state) {
  unsigned next = 0, seen = 0;
  uv_loop_t loop;
  uv_pipe_t pipe;
  peerstore__out o;
  int sv[2];
  size_t big = 8u << 20;

  (void)state;
  signal(SIGPIPE, SIG_IGN); /* as the library and the service do */
  written = 0;
  assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  assert_int_equal(uv_loop_init(&loop), 0);
  assert_int_equal(uv_pipe_init(&loop, &pipe, 0), 0);
  assert_int_equal(uv_pipe_open(&pipe, sv[0]), 0);
  peerstore__out_init(&o, (uv_stream_t *)&pipe, on_written, NULL);

  /* Small: the kernel takes it all, nothing is queued. */
  queue_bytes(&o.buf, 100, &next);
  assert_int_equal(peerstore__out_flush(&o), 0);
  assert_int_equal(peerstore__out_queued(&o), 0);
  drain_and_check(sv[1], 100, &seen);

  /* Larger than any socket buffer: the rest is queued, and buf is free
   * for new output meanwhile. */
  queue_bytes(&o.buf, big, &next);
  assert_int_equal(peerstore__out_flush(&o), 1);
  assert_false(peerstore__out_pending(&o));
  assert_true(peerstore__out_queued(&o) > 0);
  queue_bytes(&o.buf, 1000, &next);
  /* While a write is in flight, a flush only says so. */
  assert_int_equal(peerstore__out_flush(&o), 1);
  while (written == 0) {
    drain_and_check(sv[1], 0, &seen);
    uv_run(&loop, UV_RUN_NOWAIT);
  }
  /* What was queued while the write was in flight follows it. */
  assert_int_equal(peerstore__out_flush(&o), 0);
  drain_and_check(sv[1], 100 + big + 1000 - seen, &seen);
  assert_int_equal(seen, next);

  /* A peer that is gone: an error, not a crash. */
  close(sv[1]);
  queue_bytes(&o.buf, 10, &next);
  assert_true(peerstore__out_flush(&o) < 0);
  uv_close((uv_handle_t *)&pipe, NULL);
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&loop), 0);
  peerstore__out_free(&o);
}

/* Feeds bytes to a reader n at a time, as reads of any size would. */
static void feed(peerstore__reader *r, const uint8_t *p, size_t n) {
  if (n == 0)
    return; /* memcpy may not be given a NULL buffer, even for nothing */
  assert_int_equal(peerstore__buf_reserve(&r->in, n), 0);
  memcpy(r->in.data + r->in.len, p, n);
  peerstore__reader_filled(r, n);
}

/* The frame reader hands out exactly the frames that were sent, whatever
 * the read boundaries: here every split of a two-frame stream. */
/* Takes every whole frame the reader has; checks each is the next of the
 * stream test_reader_yields_whole_frames_at_any_split sends. */
static void take_frames(peerstore__reader *r, int *frames) {
  peerstore__header h;
  const uint8_t *body;
  peerstore__wrec w;
  int res;

  while ((res = peerstore__reader_next(r, 1024, &h, &body)) ==
         PEERSTORE__FRAME_READY) {
    if ((*frames)++ == 0) {
      assert_int_equal(h.type, PEERSTORE_MSG_STORE);
      assert_int_equal(h.request, 7);
      assert_int_equal(peerstore__wire_store(body, h.body_len, &w), 0);
      assert_memory_equal(w.rec.value, "vv", 2);
    } else {
      assert_int_equal(h.type, PEERSTORE_MSG_STATS);
      assert_int_equal(h.request, 8);
    }
  }
  assert_int_equal(res, PEERSTORE__FRAME_MORE);
}

static void test_reader_yields_whole_frames_at_any_split(void **state) {
  peerstore__buf b = {0};
  peerstore_peer_id p;
  size_t split;

  (void)state;
  memset(&p, 3, sizeof(p));
  assert_int_equal(peerstore__put_store(&b, 7, "ss", &p, "k", "vv", 2, 9, 1),
                   0);
  assert_int_equal(peerstore__put_empty(&b, PEERSTORE_MSG_STATS, 8), 0);
  for (split = 0; split <= b.len; split++) {
    peerstore__reader r = {0};
    int frames = 0;

    feed(&r, b.data, split);
    take_frames(&r, &frames);
    feed(&r, b.data + split, b.len - split);
    take_frames(&r, &frames);
    assert_int_equal(frames, 2);
    peerstore__reader_free(&r);
  }
  peerstore__buf_free(&b);
}

/* A frame over the caller's limit is reported before its body is held;
 * skipped, it is dropped as it arrives and reported once it has passed,
 * and the frames after it are read as usual. */
static void test_reader_skips_oversized_frames_without_holding_them(
    void **state) {
  peerstore__reader r = {0};
  peerstore__buf b = {0};
  peerstore__header h;
  const uint8_t *body;
  static uint8_t value[100000];
  peerstore_peer_id p;
  size_t at, chunk = 4096;

  (void)state;
  memset(&p, 1, sizeof(p));
  assert_int_equal(peerstore__put_store(&b, 5, "ss", &p, "k", value,
                                        sizeof(value), 9, 0),
                   0);
  assert_int_equal(peerstore__put_empty(&b, PEERSTORE_MSG_STATS, 6), 0);
  feed(&r, b.data, chunk);
  assert_int_equal(peerstore__reader_next(&r, 1000, &h, &body),
                   PEERSTORE_ETOOBIG);
  assert_int_equal(h.request, 5);
  peerstore__reader_skip(&r);
  for (at = chunk; at < b.len - PEERSTORE_HEADER_SIZE; at += chunk) {
    size_t n = b.len - PEERSTORE_HEADER_SIZE - at < chunk
                   ? b.len - PEERSTORE_HEADER_SIZE - at
                   : chunk;
    assert_int_equal(peerstore__reader_next(&r, 1000, &h, &body),
                     PEERSTORE__FRAME_MORE);
    peerstore__reader_trim(&r);
    /* Never more than a chunk is held. */
    assert_true(r.in.len - r.in.off <= chunk);
    feed(&r, b.data + at, n);
  }
  assert_int_equal(peerstore__reader_next(&r, 1000, &h, &body),
                   PEERSTORE__FRAME_SKIPPED);
  assert_int_equal(h.request, 5);
  feed(&r, b.data + b.len - PEERSTORE_HEADER_SIZE, PEERSTORE_HEADER_SIZE);
  assert_int_equal(peerstore__reader_next(&r, 1000, &h, &body),
                   PEERSTORE__FRAME_READY);
  assert_int_equal(h.request, 6);
  peerstore__reader_free(&r);
  peerstore__buf_free(&b);
}

/* Headers no peer may send are errors before any body is read. */
static void test_reader_refuses_impossible_headers(void **state) {
  peerstore__reader r = {0};
  peerstore__header h = {0}, got;
  const uint8_t *body;
  uint8_t raw[PEERSTORE_HEADER_SIZE];

  (void)state;
  h.type = PEERSTORE_MSG_STATS;
  h.body_len = PEERSTORE_MSG_MAX + 1;
  peerstore__wire_put_header(raw, &h);
  feed(&r, raw, sizeof(raw));
  assert_int_equal(peerstore__reader_next(&r, SIZE_MAX, &got, &body),
                   PEERSTORE_EPROTO);
  peerstore__reader_reset(&r);
  h.body_len = 0;
  h.flags = 1;
  peerstore__wire_put_header(raw, &h);
  feed(&r, raw, sizeof(raw));
  assert_int_equal(peerstore__reader_next(&r, SIZE_MAX, &got, &body),
                   PEERSTORE_EPROTO);
  peerstore__reader_free(&r);
}

/* The heap gives elements back in key order, also after removals from
 * the middle, and knows which elements it holds. */
typedef struct helem {
  uint64_t key;
  uint32_t pos;
} helem;

static void test_heap_returns_smallest_key_first(void **state) {
  enum { N = 1000 };
  static helem e[N];
  peerstore__heap h;
  uint64_t last = 0;
  unsigned i, seed = 12345, left = 0;
  helem *top;

  (void)state;
  peerstore__heap_init(&h, offsetof(helem, key), offsetof(helem, pos));
  for (i = 0; i < N; i++) {
    seed = seed * 1103515245u + 12345u;
    e[i].key = seed % 500; /* duplicates too */
    e[i].pos = PEERSTORE__HEAP_NONE;
    assert_int_equal(peerstore__heap_reserve(&h), 0);
    peerstore__heap_push(&h, &e[i]);
  }
  /* Every third element leaves from wherever it is; twice is harmless. */
  for (i = 0; i < N; i += 3) {
    peerstore__heap_remove(&h, &e[i]);
    peerstore__heap_remove(&h, &e[i]);
    assert_int_equal(e[i].pos, PEERSTORE__HEAP_NONE);
  }
  while ((top = peerstore__heap_top(&h)) != NULL) {
    assert_true(top->key >= last);
    last = top->key;
    peerstore__heap_remove(&h, top);
    left++;
  }
  assert_int_equal(left, N - (N + 2) / 3);
  peerstore__heap_free(&h);
}

/* WATCH_EX carries its flags, resume point and history id, which the
 * library can set again in place; unknown flag bits are refused. */
static void test_watch_ex_round_trip_and_resume_point_in_place(
    void **state) {
  peerstore__buf b = {0};
  peerstore__filter f;
  peerstore_peer_id p;
  const uint8_t *body;
  uint32_t flags;
  uint64_t from, id;
  size_t n;

  (void)state;
  memset(&p, 7, sizeof(p));
  assert_int_equal(peerstore__put_watch_ex(&b, 5, "ss", &p, "key",
                                           PEERSTORE_WATCH_SNAPSHOT, 41, 42),
                   0);
  assert_int_equal(b.len, peerstore__len_watch_ex("ss", &p, "key"));
  body = body_of(&b, PEERSTORE_MSG_WATCH_EX, 5, &n);
  assert_int_equal(
      peerstore__wire_watch_ex(body, n, &f, &flags, &from, &id), 0);
  assert_int_equal(flags, PEERSTORE_WATCH_SNAPSHOT);
  assert_int_equal(from, 41);
  assert_int_equal(id, 42);
  assert_string_equal(f.subsystem, "ss");
  assert_string_equal(f.key, "key");
  assert_true(f.has_peer && f.has_key);
  peerstore__wire_set_watch_from(b.data, 0x0102030405060708ull, 9);
  assert_int_equal(
      peerstore__wire_watch_ex(body, n, &f, &flags, &from, &id), 0);
  assert_int_equal(from, 0x0102030405060708ull);
  assert_int_equal(id, 9);
  assert_true(n >= peerstore__wire_min_body(PEERSTORE_MSG_WATCH_EX));
  b.data[PEERSTORE_HEADER_SIZE + 3] = 0x4; /* an unknown flag */
  assert_int_equal(
      peerstore__wire_watch_ex(body, n, &f, &flags, &from, &id),
      PEERSTORE_EPROTO);
  assert_int_equal(
      peerstore__wire_watch_ex(body, n - 1, &f, &flags, &from, &id),
      PEERSTORE_EPROTO);
  peerstore__buf_free(&b);
}

/* EVENT: a record for STORE, REMOVE and EXPIRE, nothing for SYNC and
 * RESET; other kinds and trailing bytes are refused. */
static void test_event_round_trip_by_kind(void **state) {
  peerstore__buf b = {0};
  peerstore_record r;
  peerstore__wrec w;
  const uint8_t *body;
  uint64_t rev;
  uint8_t kind;
  size_t n;

  (void)state;
  memset(&r, 0, sizeof(r));
  r.subsystem = "ss";
  r.key = "k";
  r.value = "v";
  r.value_size = 1;
  r.revision = 3;
  r.expiry = 4;
  assert_int_equal(peerstore__put_event(&b, 8, PEERSTORE_EVENT_REMOVE, 10,
                                        &r, 1000),
                   0);
  body = body_of(&b, PEERSTORE_MSG_EVENT, 8, &n);
  assert_int_equal(peerstore__wire_event(body, n, &kind, &rev, &w), 0);
  assert_int_equal(kind, PEERSTORE_EVENT_REMOVE);
  assert_int_equal(rev, 10);
  assert_int_equal(w.rec.revision, 3);
  assert_int_equal(w.writer, 1000);
  assert_memory_equal(w.rec.value, "v", 1);
  b.len = 0;
  assert_int_equal(
      peerstore__put_event(&b, 8, PEERSTORE_EVENT_SYNC, 77, NULL, 0), 0);
  body = body_of(&b, PEERSTORE_MSG_EVENT, 8, &n);
  assert_int_equal(n, 9);
  assert_int_equal(peerstore__wire_event(body, n, &kind, &rev, &w), 0);
  assert_int_equal(kind, PEERSTORE_EVENT_SYNC);
  assert_int_equal(rev, 77);
  b.len = 0;
  assert_int_equal(
      peerstore__put_event(&b, 8, PEERSTORE__EVENT_PROGRESS, 78, NULL, 0), 0);
  body = body_of(&b, PEERSTORE_MSG_EVENT, 8, &n);
  assert_int_equal(peerstore__wire_event(body, n, &kind, &rev, &w), 0);
  assert_int_equal(kind, PEERSTORE__EVENT_PROGRESS);
  assert_int_equal(rev, 78);
  /* A marker with a record after it, or an unknown kind. */
  b.len = 0;
  assert_int_equal(
      peerstore__put_event(&b, 8, PEERSTORE_EVENT_STORE, 1, &r, 0), 0);
  body = body_of(&b, PEERSTORE_MSG_EVENT, 8, &n);
  b.data[PEERSTORE_HEADER_SIZE] = PEERSTORE_EVENT_SYNC;
  assert_int_equal(peerstore__wire_event(body, n, &kind, &rev, &w),
                   PEERSTORE_EPROTO);
  b.data[PEERSTORE_HEADER_SIZE] = PEERSTORE__EVENT_PROGRESS;
  assert_int_equal(peerstore__wire_event(body, n, &kind, &rev, &w),
                   PEERSTORE_EPROTO);
  b.data[PEERSTORE_HEADER_SIZE] = 7;
  assert_int_equal(peerstore__wire_event(body, n, &kind, &rev, &w),
                   PEERSTORE_EPROTO);
  b.data[PEERSTORE_HEADER_SIZE] = 0;
  assert_int_equal(peerstore__wire_event(body, n, &kind, &rev, &w),
                   PEERSTORE_EPROTO);
  peerstore__buf_free(&b);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_header_big_endian),
      cmocka_unit_test(test_store_roundtrip),
      cmocka_unit_test(test_store_empty_value),
      cmocka_unit_test(test_store_malformed),
      cmocka_unit_test(test_filter_roundtrip),
      cmocka_unit_test(test_record_roundtrip),
      cmocka_unit_test(test_small_messages),
      cmocka_unit_test(test_random_bodies),
      cmocka_unit_test(test_peer_text),
      cmocka_unit_test(test_output_keeps_byte_order_across_queued_writes),
      cmocka_unit_test(test_reader_yields_whole_frames_at_any_split),
      cmocka_unit_test(test_reader_skips_oversized_frames_without_holding_them),
      cmocka_unit_test(test_reader_refuses_impossible_headers),
      cmocka_unit_test(test_heap_returns_smallest_key_first),
      cmocka_unit_test(test_watch_ex_round_trip_and_resume_point_in_place),
      cmocka_unit_test(test_event_round_trip_by_kind),
  };
  return cmocka_run_group_tests_name("wire", tests, NULL, NULL);
}
