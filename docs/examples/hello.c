/* hello.c - a complete libpeerstore program.
 *
 * Build:  cc hello.c $(pkg-config --cflags --libs peerstore) -o hello
 * Run:    ./hello [SOCKET]      (default: the usual socket path rule)
 *
 * It watches one peer's "address" key, stores two addresses for that peer
 * (the watch sees both), lists them back, removes them and disconnects.
 * Everything happens on one libuv loop, driven by callbacks; uv_run
 * returns once the client is disconnected.  Exit status 0 on success.
 */
#include <peerstore.h>
#include <stdio.h>
#include <string.h>

typedef struct app {
  peerstore_client *client;
  peerstore_watch_op *watch;
  peerstore_peer_id peer;
  int seen;
  int failed;
} app;

static void finish(app *a, int failed) {
  a->failed |= failed;
  if (a->watch != NULL)
    peerstore_watch_cancel(a->watch);
  a->watch = NULL;
  peerstore_disconnect(a->client, 0);
}

static void on_removed(void *arg, int status, uint64_t removed) {
  app *a = arg;

  printf("removed %llu records: %s\n", (unsigned long long)removed,
         peerstore_strerror(status));
  finish(a, status != 0 || removed != 2);
}

static void on_listed(void *arg, const peerstore_record *rec, int status) {
  app *a = arg;

  if (rec != NULL) {
    printf("stored: %s = %.*s (revision %llu)\n", rec->key,
           (int)rec->value_size, (const char *)rec->value,
           (unsigned long long)rec->revision);
    return;
  }
  if (status != 0) {
    fprintf(stderr, "iterate failed: %s\n", peerstore_strerror(status));
    finish(a, 1);
    return;
  }
  if (peerstore_remove(a->client, "example", &a->peer, NULL, on_removed,
                       a) == NULL)
    finish(a, 1);
}

static void on_stored(void *arg, int status) {
  app *a = arg;

  if (status != 0) {
    fprintf(stderr, "store failed: %s\n", peerstore_strerror(status));
    finish(a, 1);
  }
}

static void on_watch(void *arg, const peerstore_record *rec, int status) {
  app *a = arg;

  if (rec == NULL) {
    fprintf(stderr, "watch ended: %s\n", peerstore_strerror(status));
    a->watch = NULL;
    finish(a, 1);
    return;
  }
  printf("watch: %.*s\n", (int)rec->value_size, (const char *)rec->value);
  /* Watchers hear of a store before its writer is told it succeeded, and
   * a later iterate on the same client sees every earlier store. */
  if (++a->seen == 2 &&
      peerstore_iterate(a->client, "example", &a->peer, "address", on_listed,
                        a) == NULL)
    finish(a, 1);
}

int main(int argc, char **argv) {
  uv_loop_t loop;
  app a;
  const char *addrs[] = {"tcp:192.0.2.1:2086", "udp:192.0.2.1:2086"};
  int i;

  memset(&a, 0, sizeof(a));
  memset(a.peer.bytes, 0x42, sizeof(a.peer.bytes));
  uv_loop_init(&loop);
  /* Never blocks: the calls below are queued until the connection is up. */
  a.client = peerstore_connect(&loop, argc > 1 ? argv[1] : NULL);
  if (a.client == NULL)
    return 1;
  a.watch = peerstore_watch(a.client, "example", &a.peer, "address",
                            on_watch, &a);
  for (i = 0; i < 2; i++)
    peerstore_store(a.client, "example", &a.peer, "address", addrs[i],
                    strlen(addrs[i]), PEERSTORE_EXPIRY_NEVER,
                    PEERSTORE_MULTIPLE, on_stored, &a);
  uv_run(&loop, UV_RUN_DEFAULT);
  /* The library holds no handle once disconnected. */
  if (uv_loop_close(&loop) != 0)
    return 1;
  return a.failed ? 1 : 0;
}
