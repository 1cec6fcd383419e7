/* test_lib_edges.c - the library at edges a test cannot reach through
 * the API alone: memory running out, request ids wrapping around.  A test
 * build of libpeerstore's sources whose large reallocations can be made
 * to fail (-Wl,--wrap=realloc) and whose internals it can set, against a
 * real service. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "client_int.h"
#include "harness.h"
#include "peerstore.h"

#define TIMEOUT 30000

void *__real_realloc(void *p, size_t n);
void *__wrap_realloc(void *p, size_t n);

static int fail_large; /* reallocations of 32 KiB or more fail */

void *__wrap_realloc(void *p, size_t n) {
  if (fail_large && n >= 32 * 1024)
    return NULL;
  return __real_realloc(p, n);
}

typedef struct seen {
  int in_call; /* inside a library call made by the test */
  int state_inside;
  int downs;
  int ups;
  int acks;
  int status;
} seen;

static void state_cb(void *arg, int up, int status) {
  seen *s = arg;

  (void)status;
  if (s->in_call)
    s->state_inside++;
  if (up)
    s->ups++;
  else
    s->downs++;
}

static void ack_cb(void *arg, int status) {
  seen *s = arg;

  s->acks++;
  s->status = status;
}

/* A store whose request cannot be queued for want of memory ends the
 * connection, but the state callback runs from the loop, never inside
 * peerstore_store (the caller may hold locks or be mid-update); once
 * memory is back, the store is sent again and applied. */
static void test_out_of_memory_is_reported_from_the_loop(void **state) {
  harness_svc svc;
  uv_loop_t loop;
  peerstore_connect_opts o;
  peerstore_client *c;
  peerstore_peer_id p;
  static uint8_t big[64 * 1024];
  seen s;

  (void)state;
  memset(&s, 0, sizeof(s));
  memset(&p, 1, sizeof(p));
  assert_int_equal(harness_start(&svc, NULL), 0);
  assert_int_equal(uv_loop_init(&loop), 0);
  peerstore_connect_opts_init(&o);
  o.state_cb = state_cb;
  o.state_arg = &s;
  o.timeout_ms = 0;
  c = peerstore_connect_ex(&loop, svc.socket_path, &o);
  assert_non_null(c);
  assert_non_null(peerstore_store(c, "ss", &p, "small", "v", 1,
                                  PEERSTORE_EXPIRY_NEVER, PEERSTORE_REPLACE,
                                  ack_cb, &s));
  assert_int_equal(harness_run_until(&loop, &s.acks, TIMEOUT), 0);
  assert_int_equal(s.ups, 1);
  fail_large = 1;
  s.in_call = 1;
  assert_non_null(peerstore_store(c, "ss", &p, "big", big, sizeof(big),
                                  PEERSTORE_EXPIRY_NEVER, PEERSTORE_REPLACE,
                                  ack_cb, &s));
  s.in_call = 0;
  assert_int_equal(s.state_inside, 0);
  assert_int_equal(harness_run_until(&loop, &s.downs, TIMEOUT), 0);
  fail_large = 0;
  assert_int_equal(harness_run_until_ge(&loop, &s.acks, 2, TIMEOUT), 0);
  assert_int_equal(s.status, 0);
  assert_int_equal(s.ups, 2);
  peerstore_disconnect(c, 0);
  assert_int_equal(harness_drain(&loop, TIMEOUT), 0);
  assert_int_equal(uv_loop_close(&loop), 0);
  assert_int_equal(harness_stop(&svc), 0);
}

static void count_cb(void *arg, int status) {
  assert_int_equal(status, 0);
  ++*(int *)arg;
}

static void watch_cb(void *arg, const peerstore_record *rec, int status) {
  (void)status;
  if (rec != NULL)
    ++*(int *)arg;
}

/* Request ids are 32 bits and wrap around; an id still in use - here a
 * watch made first, which lives on - is skipped, so replies are never
 * routed to the wrong operation. */
static void test_request_ids_skip_those_in_use_when_they_wrap(void **state) {
  harness_svc svc;
  uv_loop_t loop;
  peerstore_client *c, *other;
  peerstore_watch_op *w;
  peerstore_peer_id p;
  int acks = 0, heard = 0, i;

  (void)state;
  memset(&p, 2, sizeof(p));
  assert_int_equal(harness_start(&svc, NULL), 0);
  assert_int_equal(uv_loop_init(&loop), 0);
  c = peerstore_connect(&loop, svc.socket_path);
  other = peerstore_connect(&loop, svc.socket_path);
  w = peerstore_watch(c, "ids", NULL, NULL, watch_cb, &heard);
  assert_non_null(w);
  assert_int_equal(((ps_op *)(void *)w)->request, 1);
  /* Four billion requests later: */
  c->next_request = UINT32_MAX - 2;
  for (i = 0; i < 6; i++)
    assert_non_null(peerstore_store(c, "ids", &p, "k", &i, sizeof(i),
                                    PEERSTORE_EXPIRY_NEVER,
                                    PEERSTORE_MULTIPLE, count_cb, &acks));
  assert_int_equal(harness_run_until_ge(&loop, &acks, 6, TIMEOUT), 0);
  assert_int_equal(harness_run_until_ge(&loop, &heard, 6, TIMEOUT), 0);
  /* The watch still works for others' stores. */
  assert_non_null(peerstore_store(other, "ids", &p, "k", "x", 1,
                                  PEERSTORE_EXPIRY_NEVER, PEERSTORE_MULTIPLE,
                                  count_cb, &acks));
  assert_int_equal(harness_run_until_ge(&loop, &heard, 7, TIMEOUT), 0);
  /* (The ack is written after the notification: wait for it too.) */
  assert_int_equal(harness_run_until_ge(&loop, &acks, 7, TIMEOUT), 0);
  peerstore_disconnect(c, 0);
  peerstore_disconnect(other, 0);
  assert_int_equal(harness_drain(&loop, TIMEOUT), 0);
  assert_int_equal(uv_loop_close(&loop), 0);
  assert_int_equal(harness_stop(&svc), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_out_of_memory_is_reported_from_the_loop),
      cmocka_unit_test(test_request_ids_skip_those_in_use_when_they_wrap),
  };

  return cmocka_run_group_tests_name("lib_edges", tests, NULL, NULL);
}
