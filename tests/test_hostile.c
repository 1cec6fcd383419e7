/* test_hostile.c - raw connections send random and hostile bytes to a
 * real peerstored.  Afterwards the service must be alive, a client that
 * was connected all along must be unaffected (its watch still fires), and
 * new clients must work. */
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"
#include "peerstore.h"
#include "wire.h"

#define TIMEOUT 10000

typedef struct fx {
  harness_svc svc;
  uv_loop_t loop;
  peerstore_client *bystander;
  int notified;
  int watch_ended;
} fx;

static void watch_cb(void *arg, const peerstore_record *rec, int status) {
  fx *f = arg;
  (void)status;
  if (rec == NULL)
    f->watch_ended++;
  else
    f->notified++;
}

static void store_cb(void *arg, int status) {
  int *st = arg;
  *st = status == 0 ? 1 : -1;
}

static void count_fail_cb(void *arg, int status) {
  if (status != 0)
    ++*(int *)arg;
}

static void iter_cb(void *arg, const peerstore_record *rec, int status) {
  int *st = arg;
  if (rec == NULL)
    *st = status == 0 ? 1 : -1;
}

/* A client connected through everything, watching "ss". */
static void bystander_connect(fx *f) {
  f->bystander = peerstore_connect(&f->loop, f->svc.socket_path);
  assert_non_null(f->bystander);
  assert_non_null(peerstore_watch(f->bystander, "ss", NULL, NULL, watch_cb,
                                  f));
  /* Answered after the watch on the same connection: it is registered. */
  assert_int_equal(harness_stat(&f->loop, f->bystander, "watches", TIMEOUT),
                   1);
}

static int setup(void **state) {
  fx *f = calloc(1, sizeof(*f));

  assert_non_null(f);
  assert_int_equal(harness_start(&f->svc, NULL), 0);
  assert_int_equal(uv_loop_init(&f->loop), 0);
  bystander_connect(f);
  *state = f;
  return 0;
}

/* A fresh client stores; the bystander's watch must see it. */
static void check_service_ok(fx *f) {
  peerstore_client *c;
  peerstore_peer_id p;
  int stored = 0, iterated = 0, before = f->notified;

  assert_true(harness_alive(&f->svc));
  memset(&p, 7, sizeof(p));
  c = peerstore_connect(&f->loop, f->svc.socket_path);
  assert_non_null(c);
  assert_non_null(peerstore_store(c, "ss", &p, "k", "v", 1,
                                  PEERSTORE_EXPIRY_NEVER, PEERSTORE_REPLACE,
                                  store_cb, &stored));
  assert_non_null(peerstore_iterate(c, "ss", NULL, NULL, iter_cb, &iterated));
  assert_int_equal(harness_run_until(&f->loop, &iterated, TIMEOUT), 0);
  assert_int_equal(stored, 1);
  assert_int_equal(iterated, 1);
  assert_int_equal(harness_run_until_ge(&f->loop, &f->notified, before + 1,
                                        TIMEOUT),
                   0);
  assert_int_equal(f->watch_ended, 0);
  peerstore_disconnect(c, 0);
}

static int teardown(void **state) {
  fx *f = *state;

  check_service_ok(f);
  peerstore_disconnect(f->bystander, 0);
  assert_int_equal(harness_drain(&f->loop, TIMEOUT), 0);
  assert_int_equal(uv_loop_close(&f->loop), 0);
  assert_int_equal(harness_stop(&f->svc), 0);
  free(f);
  return 0;
}

static void send_all(int fd, const void *p, size_t n) {
  /* The service may close on us half-way: that is expected. */
  (void)send(fd, p, n, MSG_NOSIGNAL);
}

/* A header announcing anything at all, through the codec. */
static void header(uint8_t *h, uint32_t len, uint16_t type, uint32_t req) {
  peerstore__header hd;

  hd.body_len = len;
  hd.type = type;
  hd.flags = 0;
  hd.request = req;
  peerstore__wire_put_header(h, &hd);
}

static void send_hello(int fd, uint16_t version) {
  peerstore__buf b = {0};

  assert_int_equal(peerstore__put_hello_version(&b, version), 0);
  send_all(fd, b.data, b.len);
  peerstore__buf_free(&b);
}

/* Reads until EOF (or timeout); returns the status of the ERROR frame the
 * service sent, 1 if none came, or -1 if the connection stayed open. */
static int read_error(int fd) {
  uint8_t buf[65536];
  size_t len = 0, off = 0;
  struct pollfd pfd = {fd, POLLIN, 0};
  peerstore__header h;
  int status = 1;
  ssize_t r;

  for (;;) {
    if (poll(&pfd, 1, TIMEOUT) <= 0)
      return -1;
    r = recv(fd, buf + len, sizeof(buf) - len, 0);
    if (r <= 0)
      break;
    len += (size_t)r;
    if (len == sizeof(buf))
      len = off = 0; /* not interested in bulk replies */
  }
  while (len - off >= PEERSTORE_HEADER_SIZE) {
    peerstore__wire_header(buf + off, &h);
    if (len - off < PEERSTORE_HEADER_SIZE + h.body_len)
      break;
    if (h.type == PEERSTORE_MSG_ERROR) {
      int32_t st;
      char reason[128];
      assert_int_equal(peerstore__wire_error(buf + off + 12, h.body_len, &st,
                                             reason, sizeof(reason)),
                       0);
      status = st;
    }
    off += PEERSTORE_HEADER_SIZE + h.body_len;
  }
  return status;
}

/* ------------------------------------------------------------------ */

static void test_random_bytes(void **state) {
  fx *f = *state;
  uint32_t seed = 777;
  uint8_t buf[4096];
  int i, fd;
  size_t j, n;

  for (i = 0; i < 40; i++) {
    fd = harness_raw_connect(f->svc.socket_path);
    assert_true(fd >= 0);
    /* Half the connections start with a valid HELLO. */
    if (i % 2)
      send_hello(fd, PEERSTORE_PROTOCOL_VERSION);
    seed = seed * 1103515245u + 12345u;
    n = 1 + (seed >> 8) % sizeof(buf);
    for (j = 0; j < n; j++) {
      seed = seed * 1103515245u + 12345u;
      buf[j] = (uint8_t)(seed >> 16);
    }
    send_all(fd, buf, n);
    shutdown(fd, SHUT_WR);
    /* The service either rejects us or waits for the rest; EOF from our
     * side ends it either way. */
    (void)read_error(fd);
    close(fd);
  }
}

/* Well-formed headers around random bodies, every message type. */
static void test_random_frames(void **state) {
  fx *f = *state;
  uint32_t seed = 4242;
  uint8_t buf[512];
  int type, k, fd;
  size_t j, n;

  for (type = 0; type < 80; type++) {
    for (k = 0; k < 4; k++) {
      fd = harness_raw_connect(f->svc.socket_path);
      assert_true(fd >= 0);
      send_hello(fd, PEERSTORE_PROTOCOL_VERSION);
      seed = seed * 1103515245u + 12345u;
      n = (seed >> 8) % (sizeof(buf) - 12);
      header(buf, (uint32_t)n, (uint16_t)type, seed);
      for (j = 0; j < n; j++) {
        seed = seed * 1103515245u + 12345u;
        buf[12 + j] = (uint8_t)((seed >> 16) % (k ? 256 : 3));
      }
      send_all(fd, buf, 12 + n);
      shutdown(fd, SHUT_WR);
      (void)read_error(fd);
      close(fd);
    }
  }
}

static void test_huge_and_zero_lengths(void **state) {
  fx *f = *state;
  uint8_t h[12];
  int fd, type;

  /* A header claiming 4 GiB: refused at once, nothing buffered. */
  fd = harness_raw_connect(f->svc.socket_path);
  send_hello(fd, PEERSTORE_PROTOCOL_VERSION);
  header(h, 0xffffffffu, PEERSTORE_MSG_ITERATE, 1);
  send_all(fd, h, sizeof(h));
  assert_int_equal(read_error(fd), PEERSTORE_EPROTO);
  close(fd);

  /* The same as a STORE before HELLO. */
  fd = harness_raw_connect(f->svc.socket_path);
  header(h, 0xffffffffu, PEERSTORE_MSG_STORE, 1);
  send_all(fd, h, sizeof(h));
  assert_int_equal(read_error(fd), PEERSTORE_EPROTO);
  close(fd);

  /* Zero-length bodies of every type. */
  for (type = 0; type < 80; type++) {
    fd = harness_raw_connect(f->svc.socket_path);
    send_hello(fd, PEERSTORE_PROTOCOL_VERSION);
    header(h, 0, (uint16_t)type, 9);
    send_all(fd, h, sizeof(h));
    shutdown(fd, SHUT_WR);
    (void)read_error(fd);
    close(fd);
  }
}

static void test_protocol_errors_are_reported(void **state) {
  fx *f = *state;
  uint8_t h[12];
  int fd;

  /* Anything before HELLO. */
  fd = harness_raw_connect(f->svc.socket_path);
  header(h, 0, PEERSTORE_MSG_STATS, 1);
  send_all(fd, h, sizeof(h));
  assert_int_equal(read_error(fd), PEERSTORE_EPROTO);
  close(fd);
  /* A version we do not speak. */
  fd = harness_raw_connect(f->svc.socket_path);
  send_hello(fd, 999);
  assert_int_equal(read_error(fd), PEERSTORE_EVERSION);
  close(fd);
  /* HELLO twice. */
  fd = harness_raw_connect(f->svc.socket_path);
  send_hello(fd, PEERSTORE_PROTOCOL_VERSION);
  send_hello(fd, PEERSTORE_PROTOCOL_VERSION);
  assert_int_equal(read_error(fd), PEERSTORE_EPROTO);
  close(fd);
  /* Reserved flags set. */
  fd = harness_raw_connect(f->svc.socket_path);
  send_hello(fd, PEERSTORE_PROTOCOL_VERSION);
  {
    peerstore__header hd = {0, PEERSTORE_MSG_STATS, 1, 1};
    peerstore__wire_put_header(h, &hd);
  }
  send_all(fd, h, sizeof(h));
  assert_int_equal(read_error(fd), PEERSTORE_EPROTO);
  close(fd);
}

/* Clients that die mid-request: half a frame, half an oversized value. */
static void test_dies_mid_request(void **state) {
  fx *f = *state;
  peerstore__buf b = {0};
  peerstore_peer_id p;
  uint8_t h[12], junk[1000];
  int fd, i;

  memset(&p, 1, sizeof(p));
  memset(junk, 0xab, sizeof(junk));
  for (i = 0; i < 10; i++) {
    b.len = 0;
    assert_int_equal(peerstore__put_store(&b, 1, "ss", &p, "k", junk,
                                          sizeof(junk), PEERSTORE_EXPIRY_NEVER,
                                          PEERSTORE_REPLACE),
                     0);
    fd = harness_raw_connect(f->svc.socket_path);
    send_hello(fd, PEERSTORE_PROTOCOL_VERSION);
    send_all(fd, b.data, b.len / (size_t)(i + 2));
    close(fd);
  }
  /* An oversized STORE that never finishes arriving. */
  fd = harness_raw_connect(f->svc.socket_path);
  send_hello(fd, PEERSTORE_PROTOCOL_VERSION);
  header(h, 8u << 20, PEERSTORE_MSG_STORE, 5);
  send_all(fd, h, sizeof(h));
  for (i = 0; i < 100; i++)
    send_all(fd, junk, sizeof(junk));
  close(fd);
  /* Connect and vanish. */
  for (i = 0; i < 20; i++)
    close(harness_raw_connect(f->svc.socket_path));
  peerstore__buf_free(&b);
}

/* Floods requests without reading replies until the service stops
 * reading them (its output for us is over its limit: it counts us in
 * clients_paused) or 100,000 were sent; returns the socket. */
static int flood_without_reading(fx *f) {
  peerstore__buf b = {0};
  struct pollfd pfd;
  uint64_t bytes = 0;
  size_t off = 0;
  int fd, i, sent;
  ssize_t r;

  fd = harness_raw_connect(f->svc.socket_path);
  send_hello(fd, PEERSTORE_PROTOCOL_VERSION);
  /* Batches of 4,096 requests (12 bytes each, ~250 bytes each reply),
   * sent as one stream: a batch cut by a full socket goes on from where
   * it was cut. */
  for (i = 0; i < 4096; i++)
    assert_int_equal(peerstore__put_empty(&b, PEERSTORE_MSG_STATS,
                                          (uint32_t)i + 1),
                     0);
  pfd.fd = fd;
  pfd.events = POLLOUT;
  while (bytes / 12 < 100000) {
    r = send(fd, b.data + off, b.len - off, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (r > 0) {
      bytes += (uint64_t)r;
      off = (off + (size_t)r) % b.len;
      continue;
    }
    /* The socket is full.  Either the service is still reading and will
     * make room, or it has paused us: its counter tells which. */
    if (harness_stat(&f->loop, f->bystander, "clients_paused", TIMEOUT) >= 1)
      break;
    (void)poll(&pfd, 1, 10); /* room again, or time to ask again */
  }
  sent = (int)(bytes / 12);
  /* 4 MiB of output at ~250 bytes a reply is some 17,000 requests. */
  assert_true(sent > 17000);
  assert_true(sent < 100000);
  peerstore__buf_free(&b);
  return fd;
}

/* A client that requests without ever reading is throttled, not fed
 * without bound, and others carry on. */
static void test_client_never_reads(void **state) {
  fx *f = *state;
  int fd = flood_without_reading(f);

  check_service_ok(f);
  close(fd);
}

/* SIGTERM while a client will not read: the service gives up on it after
 * its grace period and still exits cleanly. */
static void test_stop_with_stuck_client(void **state) {
  fx *f = *state;
  int fd = flood_without_reading(f);

  peerstore_disconnect(f->bystander, 0);
  assert_int_equal(harness_stop(&f->svc), 0);
  close(fd);
  assert_int_equal(harness_start(&f->svc, NULL), 0);
  bystander_connect(f);
}

/* Scans the raw stream for a frame of type for request; returns the
 * status it carries (WATCH_END) or 0, or 1 if none came. */
static int find_frame(int fd, uint16_t type, uint32_t request) {
  peerstore__buf in = {0};
  struct pollfd pfd = {fd, POLLIN, 0};
  peerstore__header h;
  int32_t status;
  ssize_t r;

  for (;;) {
    while (in.len - in.off >= PEERSTORE_HEADER_SIZE) {
      peerstore__wire_header(in.data + in.off, &h);
      if (in.len - in.off < PEERSTORE_HEADER_SIZE + (size_t)h.body_len)
        break;
      if (h.type == type && h.request == request) {
        status = 0;
        if (type == PEERSTORE_MSG_WATCH_END)
          assert_int_equal(peerstore__wire_status(in.data + in.off + 12,
                                                  h.body_len, &status, NULL),
                           0);
        peerstore__buf_free(&in);
        return status;
      }
      in.off += PEERSTORE_HEADER_SIZE + h.body_len;
    }
    peerstore__buf_compact(&in);
    if (poll(&pfd, 1, TIMEOUT) <= 0 || peerstore__buf_reserve(&in, 65536))
      break;
    r = recv(fd, in.data + in.len, in.cap - in.len, 0);
    if (r <= 0)
      break;
    in.len += (size_t)r;
  }
  peerstore__buf_free(&in);
  return 1;
}

/* A watcher that never reads loses its watch with an explicit overflow;
 * the writer is not slowed down or failed. */
static void test_watcher_never_reads(void **state) {
  fx *f = *state;
  peerstore__buf b = {0};
  peerstore_client *w;
  peerstore_peer_id p;
  static uint8_t value[65536];
  int fd, i, failed = 0;

  fd = harness_raw_connect(f->svc.socket_path);
  send_hello(fd, PEERSTORE_PROTOCOL_VERSION);
  assert_int_equal(peerstore__put_filter(&b, PEERSTORE_MSG_WATCH, 77, "flood",
                                         NULL, NULL, 0),
                   0);
  /* The answer to a STATS sent after the WATCH proves it registered. */
  assert_int_equal(peerstore__put_empty(&b, PEERSTORE_MSG_STATS, 78), 0);
  send_all(fd, b.data, b.len);
  peerstore__buf_free(&b);
  assert_int_equal(find_frame(fd, PEERSTORE_MSG_STATS_RESULT, 78), 0);

  w = peerstore_connect(&f->loop, f->svc.socket_path);
  memset(&p, 3, sizeof(p));
  for (i = 0; i < 400; i++) {
    char key[16];
    snprintf(key, sizeof(key), "k%d", i);
    assert_non_null(peerstore_store(w, "flood", &p, key, value,
                                    sizeof(value), PEERSTORE_EXPIRY_NEVER,
                                    PEERSTORE_REPLACE, count_fail_cb,
                                    &failed));
  }
  /* Stats come after every store's answer on the same connection. */
  assert_int_equal(harness_stat(&f->loop, w, "watch_overflows", 30000), 1);
  assert_int_equal(failed, 0);
  assert_int_equal(find_frame(fd, PEERSTORE_MSG_WATCH_END, 77),
                   PEERSTORE_EOVERFLOW);
  close(fd);
  peerstore_disconnect(w, 0);
}

typedef struct poller {
  fx *f;
  peerstore_client *c;
  uv_timer_t t;
  int64_t stalled;
  int done;
  int asking;
  int closed;
} poller;

static void stalled_cb(void *arg, int status, const peerstore_stat *st,
                       size_t n) {
  poller *p = arg;
  size_t i;

  p->asking = 0;
  assert_int_equal(status, 0);
  for (i = 0; i < n; i++)
    if (strcmp(st[i].name, "clients_stalled") == 0)
      p->stalled = (int64_t)st[i].value;
  p->done = p->stalled > 0;
}

static void poll_stats(uv_timer_t *t) {
  poller *p = t->data;

  if (!p->asking && !p->done) {
    p->asking = 1;
    assert_non_null(peerstore_stats(p->c, stalled_cb, p));
  }
}

static void timer_closed(uv_handle_t *h) { ((poller *)h->data)->closed = 1; }

/* A client that stops reading altogether is disconnected after the
 * configured deadline, and the service says so in its counters. */
static void test_stalled_client_disconnected(void **state) {
  fx *f = *state;
  const char *args[] = {"-o", "write_timeout=1", NULL};
  poller p;
  int fd;

  peerstore_disconnect(f->bystander, 0);
  assert_int_equal(harness_stop(&f->svc), 0);
  assert_int_equal(harness_start(&f->svc, args), 0);
  bystander_connect(f);
  fd = flood_without_reading(f);
  memset(&p, 0, sizeof(p));
  p.f = f;
  p.c = peerstore_connect(&f->loop, f->svc.socket_path);
  uv_timer_init(&f->loop, &p.t);
  p.t.data = &p;
  uv_timer_start(&p.t, poll_stats, 100, 100);
  (void)harness_run_until(&f->loop, &p.done, 10000);
  /* The timer lives on this stack frame: see its close through. */
  uv_close((uv_handle_t *)&p.t, timer_closed);
  assert_int_equal(harness_run_until(&f->loop, &p.closed, 10000), 0);
  assert_int_equal(p.stalled, 1);
  peerstore_disconnect(p.c, 0);
  close(fd);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_random_bytes, setup, teardown),
      cmocka_unit_test_setup_teardown(test_random_frames, setup, teardown),
      cmocka_unit_test_setup_teardown(test_huge_and_zero_lengths, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_protocol_errors_are_reported,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(test_dies_mid_request, setup, teardown),
      cmocka_unit_test_setup_teardown(test_client_never_reads, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_watcher_never_reads, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_stop_with_stuck_client, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_stalled_client_disconnected, setup,
                                      teardown),
  };

  signal(SIGPIPE, SIG_IGN);
  return cmocka_run_group_tests_name("hostile", tests, NULL, NULL);
}
