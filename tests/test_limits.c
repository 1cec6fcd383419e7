/* test_limits.c - one local client must not be able to exhaust the
 * service: hostile clients driven past each limit, with the bound asserted
 * as a number (queued bytes, iterations held, resident memory).
 *
 * The queued-output and iteration counts come from the service's own
 * counters, so they are asserted under valgrind and the sanitizers too;
 * resident memory only where it is the service's own (not the
 * instrumentation's). */
#include <setjmp.h>
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

#define TIMEOUT 120000
#define MIB (1u << 20)

/* Failures of the test's own client are counted, not asserted inside
 * callbacks: an assertion would jump out of uv_run with the loop's state
 * on the stack.  teardown checks failed == 0. */
static int failed;

typedef struct fx {
  harness_svc svc;
  uv_loop_t loop;
  peerstore_client *c; /* a well-behaved client */
} fx;


static int start_with(void **state, int sqlite, const char *const *extra) {
  fx *f = calloc(1, sizeof(*f));

  assert_non_null(f);
  failed = 0;
  assert_int_equal(uv_loop_init(&f->loop), 0);
  if (sqlite)
    assert_int_equal(harness_start_sqlite(&f->svc, extra), 0);
  else
    assert_int_equal(harness_start(&f->svc, extra), 0);
  /* No per-request timeout: under valgrind on a busy machine 64 MiB of
   * stores take longer than the default 10 s; TIMEOUT bounds each wait. */
  {
    peerstore_connect_opts o;

    peerstore_connect_opts_init(&o);
    o.timeout_ms = 0;
    f->c = peerstore_connect_ex(&f->loop, f->svc.socket_path, &o);
  }
  assert_non_null(f->c);
  *state = f;
  return 0;
}

/* Hostile clients here stall on purpose: the time limits that would end
 * them are not what these tests measure, and a slow machine (valgrind)
 * must not reach them first. */
static const char *const patient[] = {"-o", "iteration_timeout=3600", "-o",
                                      "write_timeout=3600", NULL};

static int setup_memory(void **state) {
  return start_with(state, 0, patient);
}

/* As setup_memory, with a history of 1,000 events: what the history
 * keeps is bounded by its own limits (test_watch), and would hide here
 * what a cursor keeps. */
static int setup_memory_short_history(void **state) {
  static const char *const args[] = {"-o", "iteration_timeout=3600", "-o",
                                     "write_timeout=3600", "-o",
                                     "history_events=1000", NULL};
  return start_with(state, 0, args);
}
static int setup_sqlite(void **state) {
  return start_with(state, 1, patient);
}

static int setup_iteration_limits(void **state) {
  static const char *const args[] = {"-o", "max_iterations=8", "-o",
                                     "iteration_timeout=1", NULL};
  return start_with(state, 0, args);
}

static int teardown(void **state) {
  fx *f = *state;

  peerstore_disconnect(f->c, 0);
  assert_int_equal(harness_drain(&f->loop, TIMEOUT), 0);
  assert_int_equal(uv_loop_close(&f->loop), 0);
  assert_int_equal(harness_stop(&f->svc), 0);
  free(f);
  /* Every store and remove of the test's own client succeeded. */
  assert_int_equal(failed, 0);
  return 0;
}

static peerstore_peer_id peer_n(uint32_t n) {
  peerstore_peer_id p;

  memset(&p, 0, sizeof(p));
  memcpy(p.bytes, &n, sizeof(n));
  return p;
}

static void ack_cb(void *arg, int status) {
  if (status != 0)
    failed++;
  ++*(int *)arg;
}

static void removed_cb(void *arg, int status, uint64_t n) {
  (void)n;
  if (status != 0)
    failed++;
  ++*(int *)arg;
}

static int64_t stat_of(fx *f, const char *name) {
  return harness_stat(&f->loop, f->c, name, TIMEOUT);
}

/* A raw client: HELLO, then what the test sends; it reads only when the
 * test says so. */
static int raw_client(fx *f) {
  peerstore__buf b = {0};
  int fd = harness_raw_connect(f->svc.socket_path);

  assert_true(fd >= 0);
  assert_int_equal(peerstore__put_hello(&b), 0);
  assert_int_equal(send(fd, b.data, b.len, MSG_NOSIGNAL), (ssize_t)b.len);
  peerstore__buf_free(&b);
  return fd;
}

static void raw_iterate(int fd, uint32_t request, const char *ss,
                        const char *key, uint32_t credit) {
  peerstore__buf b = {0};

  assert_int_equal(peerstore__put_filter(&b, PEERSTORE_MSG_ITERATE, request,
                                         ss, NULL, key, credit),
                   0);
  assert_int_equal(send(fd, b.data, b.len, MSG_NOSIGNAL), (ssize_t)b.len);
  peerstore__buf_free(&b);
}

static void read_all(int fd, void *p, size_t n) {
  size_t got = 0;

  while (got < n) {
    ssize_t r = recv(fd, (char *)p + got, n - got, 0);
    assert_true(r > 0);
    got += (size_t)r;
  }
}

/* Reads frames until an ITERATE_END; returns its status (skipping the
 * WELCOME and any RECORD). */
static int32_t read_iterate_end(int fd, uint32_t *request) {
  uint8_t hb[PEERSTORE_HEADER_SIZE], body[256];
  peerstore__header h;
  int32_t status;

  for (;;) {
    read_all(fd, hb, sizeof(hb));
    peerstore__wire_header(hb, &h);
    assert_true(h.body_len <= sizeof(body));
    read_all(fd, body, h.body_len);
    if (h.type != PEERSTORE_MSG_ITERATE_END)
      continue;
    assert_int_equal(peerstore__wire_status(body, h.body_len, &status, NULL),
                     0);
    *request = h.request;
    return status;
  }
}

/* ------------------------------------------------------------------ */
/* 1. Output bounded in bytes, not records                             */

/* Iterations of 1 MiB values by clients that never read: each client's
 * queued output stops at the output limit plus one record, whatever the
 * batch size in records (before: a batch of 256 records, 256 MiB). */
static void iteration_output_bounded_in_bytes(fx *f) {
  enum { RECORDS = 64, CLIENTS = 4 };
  const int64_t limit = 4 * MIB; /* output_limit's default */
  int64_t queued;
  uint8_t *value = malloc(MIB);
  long before, after;
  int acks = 0, i, fd[CLIENTS];

  assert_non_null(value);
  memset(value, 0x5a, MIB);
  for (i = 0; i < RECORDS; i++) {
    peerstore_peer_id p = peer_n((uint32_t)i);
    assert_non_null(peerstore_store(f->c, "big", &p, "v", value, MIB,
                                    PEERSTORE_EXPIRY_NEVER,
                                    PEERSTORE_REPLACE, ack_cb, &acks));
  }
  assert_int_equal(harness_run_until_ge(&f->loop, &acks, RECORDS, TIMEOUT),
                   0);
  free(value);
  before = harness_rss_kb(&f->svc);
  for (i = 0; i < CLIENTS; i++) {
    fd[i] = raw_client(f);
    raw_iterate(fd[i], 1, "big", NULL, 1024);
  }
  /* Every client is at its limit once this much is queued in all; from
   * then on nothing more is produced for them until they read. */
  assert_int_equal(harness_wait_stat(&f->loop, f->c, "output_bytes",
                                     CLIENTS * (limit - 256 * 1024),
                                     TIMEOUT),
                   0);
  queued = stat_of(f, "output_bytes");
  after = harness_rss_kb(&f->svc);
  print_message("queued for %d stalled iterations: %lld KiB (bound %lld "
                "KiB); service RSS %ld -> %ld KiB\n",
                CLIENTS, (long long)queued / 1024,
                (long long)CLIENTS * (limit + MIB + 64 * 1024) / 1024, before,
                after);
  assert_true(queued <= CLIENTS * (limit + MIB + 64 * 1024));
  if (harness_memory_measurable())
    assert_true(after - before < CLIENTS * 8 * 1024);
  for (i = 0; i < CLIENTS; i++)
    close(fd[i]);
  /* Closed clients give their output back. */
  assert_int_equal(harness_wait_stat(&f->loop, f->c, "clients", 1, TIMEOUT),
                   0);
}

static void test_iteration_output_is_bounded_in_bytes(void **state) {
  iteration_output_bounded_in_bytes(*state);
}

/* The SQLite plugin copies records out of the database in batches: bounded
 * in bytes too, and cut short when the service has enough. */
static void test_iteration_output_is_bounded_in_bytes_sqlite(void **state) {
  iteration_output_bounded_in_bytes(*state);
}

/* ------------------------------------------------------------------ */
/* 2. Iterations per client                                            */

/* One connection opening iterations that never take credit gets at most
 * max_iterations of them; the rest are refused with ELIMIT, and those it
 * holds end with ETIMEDOUT once they have not moved for
 * iteration_timeout, freeing everything they held. */
static void test_iterations_per_client_are_limited_and_idle_ones_end(
    void **state) {
  fx *f = *state;
  enum { OPENED = 100, LIMIT = 8 };
  int fd, i, limited = 0, timed_out = 0, acks = 0;
  peerstore_peer_id p = peer_n(1);
  uint32_t request;
  int32_t status;

  assert_non_null(peerstore_store(f->c, "ss", &p, "k", "v", 1,
                                  PEERSTORE_EXPIRY_NEVER, PEERSTORE_REPLACE,
                                  ack_cb, &acks));
  assert_int_equal(harness_run_until(&f->loop, &acks, TIMEOUT), 0);
  fd = raw_client(f);
  for (i = 1; i <= OPENED; i++)
    raw_iterate(fd, (uint32_t)i, "ss", NULL, 0);
  /* A well-behaved client is served meanwhile. */
  assert_non_null(peerstore_store(f->c, "ss", &p, "k2", "v", 1,
                                  PEERSTORE_EXPIRY_NEVER, PEERSTORE_REPLACE,
                                  ack_cb, &acks));
  assert_int_equal(harness_run_until_ge(&f->loop, &acks, 2, TIMEOUT), 0);
  /* Every iteration ends: past the limit at once with ELIMIT, the held
   * ones - they never move - by themselves with ETIMEDOUT.  (On a slow
   * machine the two kinds of end may interleave.) */
  for (i = 0; i < OPENED; i++) {
    status = read_iterate_end(fd, &request);
    if (request <= LIMIT) {
      assert_int_equal(status, PEERSTORE_ETIMEDOUT);
      timed_out++;
    } else {
      assert_int_equal(status, PEERSTORE_ELIMIT);
      limited++;
    }
  }
  assert_int_equal(limited, OPENED - LIMIT);
  assert_int_equal(timed_out, LIMIT);
  assert_int_equal(stat_of(f, "iterations_active"), 0);
  assert_int_equal(stat_of(f, "limited"), OPENED - LIMIT);
  assert_int_equal(stat_of(f, "iterations_timed_out"), LIMIT);
  print_message("%d refused with ELIMIT, %d ended idle\n", limited,
                timed_out);
  close(fd);
}

/* ------------------------------------------------------------------ */
/* 3. A stalled cursor under churn (memory plugin)                     */

/* A cursor that never moves while its records are stored and removed
 * again and again holds nothing but its place: the service's memory stays
 * flat (before: every record removed after it stayed, 112 MB for 100,000
 * cycles), and once it moves it returns exactly what its snapshot
 * allows. */
static void test_stalled_cursor_holds_nothing_under_churn(void **state) {
  fx *f = *state;
  int cycles = harness_memory_measurable() ? 100000 : 10000;
  int acks = 0, removed = 0, fd, i;
  uint8_t value[64];
  peerstore_peer_id p;
  long before, after;
  uint32_t request;

  memset(value, 1, sizeof(value));
  for (i = 0; i < 100; i++) {
    p = peer_n((uint32_t)i);
    assert_non_null(peerstore_store(f->c, "churn", &p, "live", value,
                                    sizeof(value), PEERSTORE_EXPIRY_NEVER,
                                    PEERSTORE_REPLACE, ack_cb, &acks));
  }
  p = peer_n(2000);
  assert_non_null(peerstore_store(f->c, "churn", &p, "c", value,
                                  sizeof(value), PEERSTORE_EXPIRY_NEVER,
                                  PEERSTORE_REPLACE, ack_cb, &acks));
  assert_int_equal(harness_run_until_ge(&f->loop, &acks, 101, TIMEOUT), 0);
  /* A cursor on key "c", resting on its one record, never given credit. */
  fd = raw_client(f);
  raw_iterate(fd, 1, "churn", "c", 0);
  assert_int_equal(
      harness_wait_stat(&f->loop, f->c, "iterations_active", 1, TIMEOUT), 0);
  before = harness_rss_kb(&f->svc);
  /* Each cycle stores the next "c" record and removes the one before it:
   * first the one the cursor rests on, then, each time, a record that had
   * a successor when it went. */
  for (i = 0; i < cycles; i++) {
    p = peer_n(2001u + (uint32_t)i);
    memcpy(value, &i, sizeof(i));
    assert_non_null(peerstore_store(f->c, "churn", &p, "c", value,
                                    sizeof(value), PEERSTORE_EXPIRY_NEVER,
                                    PEERSTORE_MULTIPLE, NULL, NULL));
    p = peer_n(2000u + (uint32_t)i);
    assert_non_null(peerstore_remove(f->c, "churn", &p, "c", removed_cb,
                                     &removed));
  }
  assert_int_equal(harness_run_until_ge(&f->loop, &removed, cycles, TIMEOUT),
                   0);
  after = harness_rss_kb(&f->svc);
  print_message("service RSS %ld KiB before, %ld KiB after %d store+remove "
                "cycles under a stalled cursor; %lld records\n",
                before, after, cycles, (long long)stat_of(f, "records"));
  assert_int_equal(stat_of(f, "records"), 101);
  if (harness_memory_measurable())
    assert_true(after - before < 8 * 1024);
  /* Its record was removed, and everything since is newer than its
   * snapshot: given credit, it ends with nothing. */
  {
    peerstore__buf b = {0};
    assert_int_equal(peerstore__put_u32(&b, PEERSTORE_MSG_CREDIT, 1, 100), 0);
    assert_int_equal(send(fd, b.data, b.len, MSG_NOSIGNAL), (ssize_t)b.len);
    peerstore__buf_free(&b);
  }
  assert_int_equal(read_iterate_end(fd, &request), 0);
  assert_int_equal(request, 1);
  close(fd);
}

/* ------------------------------------------------------------------ */
/* 4. Large frames being read, over all clients                        */

/* Twelve connections each send all but the last byte of a 4 MiB store
 * and stop.  Large frames being read share input_buffer_limit (9 MiB
 * here): two are admitted, the other ten wait unread, so the service
 * holds about 8 MiB, not 48.  A small store from another client goes
 * through meanwhile; an admitted frame that stops arriving ends its
 * connection after read_timeout; once the hostile clients are gone a
 * 4 MiB store goes through. */
static int setup_input_budget(void **state) {
  static const char *const args[] = {
      "-o", "input_buffer_limit=9M", "-o", "read_timeout=2",
      "--max-value-size", "4M", "-o", "write_timeout=3600", NULL};
  return start_with(state, 0, args);
}

static void test_large_frames_in_progress_share_a_budget(void **state) {
  fx *f = *state;
  enum { HOSTILE = 12 };
  static uint8_t value[4 * MIB];
  peerstore__buf frame = {0};
  peerstore_peer_id p = peer_n(1);
  size_t sent[HOSTILE], total = 0, last = (size_t)-1;
  int fd[HOSTILE], i, still = 0;
  long before, after;
  int acks = 0;

  assert_int_equal(peerstore__put_store(&frame, 9, "big", &p, "k", value,
                                        sizeof(value), PEERSTORE_EXPIRY_NEVER,
                                        PEERSTORE_REPLACE),
                   0);
  before = harness_rss_kb(&f->svc);
  for (i = 0; i < HOSTILE; i++) {
    fd[i] = raw_client(f);
    sent[i] = 0;
  }
  /* Push until nothing more goes in: the waiting connections' sockets
   * are full, the admitted ones have sent all but the last byte. */
  while (still < 3) {
    for (i = 0; i < HOSTILE; i++) {
      ssize_t w;
      while (sent[i] < frame.len - 1 &&
             (w = send(fd[i], frame.data + sent[i], frame.len - 1 - sent[i],
                       MSG_NOSIGNAL | MSG_DONTWAIT)) > 0) {
        sent[i] += (size_t)w;
        total += (size_t)w;
      }
    }
    /* A round trip to the service lets it read what it will. */
    assert_true(stat_of(f, "clients") >= HOSTILE);
    still = total == last ? still + 1 : 0;
    last = total;
  }
  after = harness_rss_kb(&f->svc);
  print_message("%zu KiB sent by %d clients; %lld waiting; %lld KiB "
                "buffered; service RSS %ld -> %ld KiB\n",
                total / 1024, HOSTILE,
                (long long)stat_of(f, "clients_waiting_input"),
                (long long)stat_of(f, "input_buffered") / 1024, before,
                after);
  assert_int_equal(stat_of(f, "clients_waiting_input"), HOSTILE - 2);
  assert_true(stat_of(f, "input_buffered") <= 9 * (int64_t)MIB);
  if (harness_memory_measurable())
    assert_true(after - before < 24 * 1024);
  /* Small requests are not held back. */
  assert_non_null(peerstore_store(f->c, "small", &p, "k", "v", 1,
                                  PEERSTORE_EXPIRY_NEVER, PEERSTORE_REPLACE,
                                  ack_cb, &acks));
  assert_int_equal(harness_run_until_ge(&f->loop, &acks, 1, TIMEOUT), 0);
  /* The admitted frames do not move: their connections end. */
  assert_int_equal(
      harness_wait_stat(&f->loop, f->c, "input_timed_out", 2, TIMEOUT), 0);
  for (i = 0; i < HOSTILE; i++)
    close(fd[i]);
  /* Each query is a round trip: the service has read the closes. */
  for (i = 0; i < 1000 && stat_of(f, "clients") > 1; i++)
    ;
  assert_int_equal(stat_of(f, "clients"), 1);
  assert_int_equal(stat_of(f, "input_buffered"), 0);
  assert_int_equal(stat_of(f, "clients_waiting_input"), 0);
  /* And a large store goes through (teardown checks it succeeded). */
  assert_non_null(peerstore_store(f->c, "big", &p, "k", value, sizeof(value),
                                  PEERSTORE_EXPIRY_NEVER, PEERSTORE_REPLACE,
                                  ack_cb, &acks));
  assert_int_equal(harness_run_until_ge(&f->loop, &acks, 2, TIMEOUT), 0);
  peerstore__buf_free(&frame);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(
          test_iteration_output_is_bounded_in_bytes, setup_memory, teardown),
      cmocka_unit_test_setup_teardown(
          test_iteration_output_is_bounded_in_bytes_sqlite, setup_sqlite,
          teardown),
      cmocka_unit_test_setup_teardown(
          test_iterations_per_client_are_limited_and_idle_ones_end,
          setup_iteration_limits, teardown),
      cmocka_unit_test_setup_teardown(
          test_stalled_cursor_holds_nothing_under_churn,
          setup_memory_short_history, teardown),
      cmocka_unit_test_setup_teardown(
          test_large_frames_in_progress_share_a_budget, setup_input_budget,
          teardown),
  };

  return cmocka_run_group_tests_name("limits", tests, NULL, NULL);
}
