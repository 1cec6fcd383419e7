/* fuzz_wire.c - libFuzzer target for the frame codec.
 *
 * The input is read as a stream of frames, the way both sides read the
 * socket: every header is parsed, its length checked against the limit,
 * and the body handed to every decoder (not only the one its type names),
 * so each decoder sees every shape of body the fuzzer finds. */
#include <stdint.h>
#include <string.h>

#include "wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Walks a BATCH body op by op, as the service does; what is accepted must
 * lie inside the body. */
static void batch(const uint8_t *body, size_t n) {
  static peerstore__wop op;
  uint8_t id[PEERSTORE_BATCH_ID_SIZE];
  peerstore__batch_rd br;
  uint32_t count, i;

  if (peerstore__wire_batch(body, n, id, &count, &br) != 0)
    return;
  for (i = 0; i < count; i++) {
    if (peerstore__wire_batch_op(&br, &op) != 0)
      return;
    if (br.left > n ||
        (op.kind == PEERSTORE__BOP_STORE &&
         ((const uint8_t *)op.w.rec.value + op.w.rec.value_size >
              body + n ||
          strlen(op.w.subsystem) == 0 || strlen(op.w.key) == 0)) ||
        (op.kind == PEERSTORE__BOP_REMOVE && strlen(op.f.subsystem) == 0))
      __builtin_trap();
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  peerstore__header h;
  peerstore__wrec w;
  peerstore__filter f;
  peerstore_stat st[8];
  char names[8][64], reason[128];
  uint32_t u32, magic, credit;
  uint16_t version;
  int32_t status;
  uint64_t extra, from;
  uint8_t kind;
  size_t count, off = 0;

  while (size - off >= PEERSTORE_HEADER_SIZE) {
    const uint8_t *body;
    size_t n;

    peerstore__wire_header(data + off, &h);
    off += PEERSTORE_HEADER_SIZE;
    if (h.body_len > PEERSTORE_MSG_MAX)
      break;
    n = h.body_len < size - off ? h.body_len : size - off;
    body = data + off;
    (void)peerstore__wire_hello(body, n, &magic, &version);
    (void)peerstore__wire_welcome(body, n, &version, &u32, &extra);
    (void)peerstore__wire_watch_ex(body, n, &f, &u32, &extra, &from);
    if (peerstore__wire_event(body, n, &kind, &extra, &w) == 0 &&
        kind <= PEERSTORE_EVENT_EXPIRE &&
        (const uint8_t *)w.rec.value + w.rec.value_size > body + n)
      __builtin_trap();
    if (peerstore__wire_store(body, n, &w) == 0) {
      /* What a decoder accepts must be sane: NUL-terminated strings of
       * legal length, a value inside the body. */
      if (strlen(w.rec.subsystem) == 0 || strlen(w.rec.key) == 0 ||
          (const uint8_t *)w.rec.value + w.rec.value_size > body + n)
        __builtin_trap();
    }
    (void)peerstore__wire_record(body, n, &w);
    (void)peerstore__wire_filter(body, n, &f, &credit);
    (void)peerstore__wire_filter(body, n, &f, NULL);
    (void)peerstore__wire_u32(body, n, &u32);
    (void)peerstore__wire_status(body, n, &status, &extra);
    (void)peerstore__wire_status(body, n, &status, NULL);
    (void)peerstore__wire_error(body, n, &status, reason, sizeof(reason));
    (void)peerstore__wire_stats(body, n, st, names, 8, &count);
    batch(body, n);
    off += n;
  }
  return 0;
}
