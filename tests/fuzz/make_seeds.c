/* make_seeds.c - writes the seed corpus of the fuzz targets: well-formed
 * client streams built with the real encoders (`make fuzz-seeds`). */
#include <stdio.h>
#include <string.h>

#include "wire.h"

static void save(const char *dir, const char *name, const peerstore__buf *b) {
  char path[512];
  FILE *f;

  snprintf(path, sizeof(path), "%s/%s", dir, name);
  if ((f = fopen(path, "wb")) == NULL ||
      fwrite(b->data, 1, b->len, f) != b->len) {
    perror(path);
    return;
  }
  fclose(f);
}

int main(int argc, char **argv) {
  const char *dir = argc > 1 ? argv[1] : ".";
  peerstore__buf b = {0};
  peerstore_peer_id p;
  peerstore_record r;
  uint64_t rev = 7;

  memset(&p, 0x11, sizeof(p));
  memset(&r, 0, sizeof(r));
  r.subsystem = "ss";
  r.peer = p;
  r.key = "key";
  r.value = "value";
  r.value_size = 5;
  r.expiry = PEERSTORE_EXPIRY_NEVER;
  r.revision = 1;

  peerstore__put_hello(&b);
  save(dir, "hello", &b);
  peerstore__put_store(&b, 1, "ss", &p, "key", "value", 5,
                       PEERSTORE_EXPIRY_NEVER, PEERSTORE_MULTIPLE);
  peerstore__put_store(&b, 2, "ss", &p, "key", "other", 5, 1000,
                       PEERSTORE_REPLACE);
  save(dir, "hello-store", &b);
  peerstore__put_filter(&b, PEERSTORE_MSG_WATCH, 3, "ss", &p, NULL, 0);
  peerstore__put_filter(&b, PEERSTORE_MSG_ITERATE, 4, "ss", NULL, "key", 2);
  peerstore__put_u32(&b, PEERSTORE_MSG_CREDIT, 4, 10);
  peerstore__put_empty(&b, PEERSTORE_MSG_CANCEL, 3);
  peerstore__put_filter(&b, PEERSTORE_MSG_REMOVE, 5, "ss", &p, "key", 0);
  peerstore__put_empty(&b, PEERSTORE_MSG_STATS, 6);
  save(dir, "session", &b);
  b.len = 0;
  peerstore__put_record(&b, 1, &r, 1000);
  peerstore__put_status(&b, PEERSTORE_MSG_STORE_RESULT, 1, 0, &rev);
  peerstore__put_status(&b, PEERSTORE_MSG_ITERATE_END, 4, 0, NULL);
  peerstore__put_error(&b, 0, PEERSTORE_EPROTO, "bad");
  peerstore__put_welcome(&b, PEERSTORE_PROTOCOL_VERSION, 1024, 99);
  peerstore__put_event(&b, 3, PEERSTORE_EVENT_STORE, 1, &r, 1000);
  peerstore__put_event(&b, 3, PEERSTORE_EVENT_REMOVE, 2, &r, 1000);
  peerstore__put_event(&b, 3, PEERSTORE_EVENT_SYNC, 2, NULL, 0);
  peerstore__put_event(&b, 3, PEERSTORE_EVENT_RESET, 0, NULL, 0);
  save(dir, "replies", &b);
  /* The change stream: a snapshot with removals over churn, a resume
   * from a revision, one from the future, cancelled. */
  b.len = 0;
  peerstore__put_hello(&b);
  peerstore__put_store(&b, 1, "ss", &p, "key", "value", 5,
                       PEERSTORE_EXPIRY_NEVER, PEERSTORE_MULTIPLE);
  peerstore__put_watch_ex(&b, 2, "ss", NULL, NULL,
                          PEERSTORE_WATCH_SNAPSHOT | PEERSTORE_WATCH_REMOVALS,
                          0, 0);
  peerstore__put_store(&b, 3, "ss", &p, "key", "other", 5,
                       PEERSTORE_EXPIRY_NEVER, PEERSTORE_REPLACE);
  peerstore__put_watch_ex(&b, 4, "ss", &p, "key", PEERSTORE_WATCH_REMOVALS, 1,
                          0);
  peerstore__put_watch_ex(&b, 5, "ss", NULL, "key", PEERSTORE_WATCH_SNAPSHOT,
                          UINT64_MAX, 12345);
  peerstore__put_filter(&b, PEERSTORE_MSG_REMOVE, 6, "ss", NULL, NULL, 0);
  peerstore__put_empty(&b, PEERSTORE_MSG_CANCEL, 2);
  peerstore__put_empty(&b, PEERSTORE_MSG_STATS, 7);
  save(dir, "change-stream", &b);
  /* Batches: with an id (the service's markers), without, a conflict, a
   * remove-only one, an empty one, and the answers. */
  {
    static const uint8_t id[PEERSTORE_BATCH_ID_SIZE] = {1, 2, 3};
    static const uint8_t none[PEERSTORE_BATCH_ID_SIZE];
    peerstore__buf ops = {0};

    b.len = 0;
    peerstore__put_hello(&b);
    peerstore__put_bop_require(&ops, "ss", &p, "key", 0);
    peerstore__put_bop_store(&ops, "ss", &p, "key", "value", 5,
                             PEERSTORE_EXPIRY_NEVER, PEERSTORE_REPLACE);
    peerstore__put_bop_remove(&ops, "ss", NULL, "other");
    peerstore__put_bop_store(&ops, "ss", &p, "k2", "", 0, 1000,
                             PEERSTORE_MULTIPLE);
    peerstore__put_batch(&b, 1, id, 4, ops.data, ops.len);
    peerstore__put_batch(&b, 2, id, 4, ops.data, ops.len);
    peerstore__put_batch(&b, 3, none, 4, ops.data, ops.len);
    ops.len = 0;
    peerstore__put_bop_remove(&ops, "ss", &p, NULL);
    peerstore__put_batch(&b, 4, id, 1, ops.data, ops.len);
    peerstore__put_batch(&b, 5, none, 0, NULL, 0);
    peerstore__put_status(&b, PEERSTORE_MSG_BATCH_RESULT, 1, 0, &rev);
    save(dir, "batch", &b);
    peerstore__buf_free(&ops);
  }
  peerstore__buf_free(&b);
  return 0;
}
