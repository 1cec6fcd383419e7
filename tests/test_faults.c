/* test_faults.c - faults from outside: the service killed under a storm of
 * stores, clients killed mid-request, a thousand clients at once, SIGTERM
 * under load, and clients that consume slowly or not at all, with the
 * service's memory checked against its stated bounds. */
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"
#include "peerstore.h"
#include "frame.h"
#include "wire.h"

#define TIMEOUT 60000

typedef struct fx {
  harness_svc svc;
  uv_loop_t loop;
  char db[400];
  const char *args[8];
} fx;

static int setup_with(void **state, int sqlite) {
  fx *f = calloc(1, sizeof(*f));

  assert_non_null(f);
  assert_int_equal(uv_loop_init(&f->loop), 0);
  if (sqlite) {
    /* The database lives in the service's own directory, so it survives
     * a restart on the same socket and is removed with it. */
    f->args[0] = "--plugin";
    f->args[1] = "sqlite";
    f->args[2] = "--database";
    f->args[3] = f->db;
    f->args[4] = NULL;
    assert_int_equal(harness_start(&f->svc, NULL), 0);
    snprintf(f->db, sizeof(f->db), "%s/data.db", f->svc.dir);
    harness_kill(&f->svc, SIGTERM);
    assert_int_equal(harness_restart(&f->svc, f->args), 0);
  } else {
    assert_int_equal(harness_start(&f->svc, NULL), 0);
  }
  /* The loop's clock stood still while the service started (seconds
   * under valgrind): requests made now would have their timeouts counted
   * from before that. */
  uv_update_time(&f->loop);
  *state = f;
  return 0;
}

static int setup_memory(void **state) { return setup_with(state, 0); }
static int setup_sqlite(void **state) { return setup_with(state, 1); }

/* A history long enough for test_catching_up_watches_... */
static int setup_long_history(void **state, int sqlite) {
  fx *f;
  int n = sqlite ? 4 : 0;

  setup_with(state, sqlite);
  f = *state;
  f->args[n++] = "-o";
  f->args[n++] = "history_events=1000000";
  f->args[n] = NULL;
  harness_kill(&f->svc, SIGTERM);
  if (harness_restart(&f->svc, f->args) != 0)
    return -1;
  uv_update_time(&f->loop);
  return 0;
}
static int setup_memory_long_history(void **state) {
  return setup_long_history(state, 0);
}
static int setup_sqlite_long_history(void **state) {
  return setup_long_history(state, 1);
}

static int teardown(void **state) {
  fx *f = *state;

  assert_int_equal(harness_drain(&f->loop, TIMEOUT), 0);
  assert_int_equal(uv_loop_close(&f->loop), 0);
  assert_int_equal(harness_stop(&f->svc), 0);
  free(f);
  return 0;
}

static peerstore_peer_id peer_n(uint32_t n) {
  peerstore_peer_id p;
  memset(&p, 0, sizeof(p));
  memcpy(p.bytes, &n, sizeof(n));
  return p;
}


/* ------------------------------------------------------------------ */
/* Counting helpers                                                    */

typedef struct tally {
  int acks;
  int ok;
  int failed;
} tally;

static void ack_cb(void *arg, int status) {
  tally *t = arg;

  t->acks++;
  if (status == 0)
    t->ok++;
  else
    t->failed++;
}

typedef struct counted {
  int ended;
  int status;
  int records;
} counted;

static void count_cb(void *arg, const peerstore_record *rec, int status) {
  counted *k = arg;

  if (rec != NULL) {
    k->records++;
    return;
  }
  k->ended = 1;
  k->status = status;
}

static int count_records(fx *f, const char *ss) {
  peerstore_client *c = peerstore_connect(&f->loop, f->svc.socket_path);
  counted k = {0};

  assert_non_null(peerstore_iterate(c, ss, NULL, NULL, count_cb, &k));
  assert_int_equal(harness_run_until(&f->loop, &k.ended, TIMEOUT), 0);
  assert_int_equal(k.status, 0);
  peerstore_disconnect(c, 0);
  return k.records;
}

static int64_t stat_value(fx *f, peerstore_client *c, const char *name) {
  return harness_stat(&f->loop, c, name, TIMEOUT);
}

/* ------------------------------------------------------------------ */
/* Tests                                                               */

/* Several clients store; the sqlite-backed service is killed with
 * SIGKILL in the middle and restarted.  The clients reconnect by
 * themselves and finish: every store is acknowledged, every acknowledged
 * store is there, and none is there twice.
 *
 * Each client keeps at most WINDOW stores outstanding, so when the kill
 * comes the old service cannot have seen more than target + CLIENTS *
 * WINDOW of them: the rest must reach the new one, whatever the relative
 * speeds of service and test.  (With everything queued at once, the
 * service could finish the storm before the test had read a third of
 * the acks, and the "kill" hit an idle service.)  No per-request timeout:
 * a restart under valgrind on a busy machine may take longer than the
 * default 10 s; the test's own TIMEOUT bounds the wait. */
enum { STORM_CLIENTS = 4, STORM_EACH = 3000, STORM_WINDOW = 100 };

typedef struct storm storm;
typedef struct storm_client {
  storm *s;
  peerstore_client *c;
  int i, next;
} storm_client;
struct storm {
  tally t;
  int target; /* kill the service when acks reach this */
  int killed;
  int not_sent; /* peerstore_store refused to start one */
  fx *f;
  storm_client sc[STORM_CLIENTS];
};

static void storm_ack_cb(void *arg, int status);

static void storm_send(storm_client *sc) {
  peerstore_peer_id p = peer_n((uint32_t)sc->i);
  char key[32], value[32];

  snprintf(key, sizeof(key), "key-%d", sc->next);
  snprintf(value, sizeof(value), "%d/%d", sc->i, sc->next);
  sc->next++;
  /* No assertion here: this runs in callbacks, and a failed assertion
   * would jump out of uv_run with the loop's state on the stack. */
  if (peerstore_store(sc->c, "storm", &p, key, value, strlen(value),
                      PEERSTORE_EXPIRY_NEVER, PEERSTORE_MULTIPLE,
                      storm_ack_cb, sc) == NULL)
    sc->s->not_sent++;
}

static void storm_ack_cb(void *arg, int status) {
  storm_client *sc = arg;
  storm *s = sc->s;

  ack_cb(&s->t, status);
  if (s->t.acks == s->target) {
    /* Mid-storm: kill it here; the test restarts it once this loop turn
     * is over, outside any callback.  The clients are left to notice and
     * reconnect by themselves. */
    harness_kill(&s->f->svc, SIGKILL);
    s->killed = 1;
  }
  if (sc->next < STORM_EACH)
    storm_send(sc);
}

static void test_kill9_during_storm(void **state) {
  fx *f = *state;
  storm *s = calloc(1, sizeof(*s));
  peerstore_connect_opts o;
  int i, j;
  int64_t resent;

  assert_non_null(s);
  s->target = STORM_CLIENTS * STORM_EACH / 3;
  s->f = f;
  peerstore_connect_opts_init(&o);
  o.timeout_ms = 0;
  for (i = 0; i < STORM_CLIENTS; i++) {
    s->sc[i].s = s;
    s->sc[i].i = i;
    s->sc[i].c = peerstore_connect_ex(&f->loop, f->svc.socket_path, &o);
    assert_non_null(s->sc[i].c);
  }
  for (j = 0; j < STORM_WINDOW; j++)
    for (i = 0; i < STORM_CLIENTS; i++)
      storm_send(&s->sc[i]);
  assert_int_equal(s->not_sent, 0);
  assert_int_equal(harness_run_until(&f->loop, &s->killed, TIMEOUT), 0);
  assert_int_equal(harness_restart(&f->svc, f->args), 0);
  assert_int_equal(harness_run_until_ge(&f->loop, &s->t.acks,
                                        STORM_CLIENTS * STORM_EACH, TIMEOUT),
                   0);
  assert_int_equal(s->not_sent, 0);
  assert_int_equal(s->t.failed, 0);
  assert_int_equal(s->t.ok, STORM_CLIENTS * STORM_EACH);
  /* The new service really took over part of the storm. */
  resent = stat_value(f, s->sc[0].c, "stores");
  print_message("killed at %d acks; the new service applied %lld stores\n",
                s->target, (long long)resent);
  assert_true(resent >= STORM_CLIENTS * STORM_EACH - s->target -
                            STORM_CLIENTS * STORM_WINDOW);
  for (i = 0; i < STORM_CLIENTS; i++)
    peerstore_disconnect(s->sc[i].c, 0);
  /* One record per (client, key): nothing lost, nothing doubled. */
  assert_int_equal(count_records(f, "storm"), STORM_CLIENTS * STORM_EACH);
  free(s);
}

/* A child tells its parent, through this pipe, that the service has begun
 * answering it: the parent then kills it mid-request. */
static int child_began_fd = -1;

static void child_began(void) {
  if (child_began_fd >= 0) {
    (void)write(child_began_fd, "x", 1);
    close(child_began_fd);
    child_began_fd = -1;
  }
}

static void child_record_cb(void *arg, const peerstore_record *rec,
                            int status) {
  (void)arg;
  (void)rec;
  (void)status;
  child_began();
}

static void child_ack_cb(void *arg, int status) {
  (void)arg;
  (void)status;
  child_began();
}

/* A child process that is killed while it stores and while it iterates
 * leaves the service serving everyone else, with its data whole. */
static void test_client_killed_mid_request(void **state) {
  fx *f = *state;
  peerstore_client *c = peerstore_connect(&f->loop, f->svc.socket_path);
  tally t = {0};
  char key[32];
  pid_t pid;
  int i, st, round;

  for (i = 0; i < 20000; i++) {
    peerstore_peer_id p = peer_n((uint32_t)(i % 100));
    snprintf(key, sizeof(key), "key-%d", i / 100);
    assert_non_null(peerstore_store(c, "base", &p, key, "v", 1,
                                    PEERSTORE_EXPIRY_NEVER,
                                    PEERSTORE_REPLACE, ack_cb, &t));
  }
  assert_int_equal(harness_run_until_ge(&f->loop, &t.acks, 20000, TIMEOUT),
                   0);
  for (round = 0; round < 2; round++) {
    int began[2];
    char x;

    assert_int_equal(pipe(began), 0);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
      /* The child: a fresh loop, a big iteration (round 0) or a big burst
       * of stores (round 1), killed by the parent while it runs. */
      uv_loop_t loop;
      peerstore_client *cc;
      close(began[0]);
      child_began_fd = began[1];
      uv_loop_init(&loop);
      cc = peerstore_connect(&loop, f->svc.socket_path);
      if (round == 0) {
        peerstore_iterate(cc, "base", NULL, NULL, child_record_cb, NULL);
      } else {
        for (i = 0; i < 50000; i++) {
          peerstore_peer_id p = peer_n((uint32_t)i);
          peerstore_store(cc, "child", &p, "k", "v", 1,
                          PEERSTORE_EXPIRY_NEVER, PEERSTORE_REPLACE,
                          child_ack_cb, NULL);
        }
      }
      uv_run(&loop, UV_RUN_DEFAULT);
      _exit(0);
    }
    /* Killed once the service has begun answering it: its first record,
     * or its first acknowledgement, of 20,000 or 50,000. */
    close(began[1]);
    assert_int_equal(read(began[0], &x, 1), 1);
    close(began[0]);
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
  }
  assert_true(harness_alive(&f->svc));
  assert_int_equal(count_records(f, "base"), 20000);
  peerstore_disconnect(c, 0);
}

static void watch_count_cb(void *arg, const peerstore_record *rec,
                           int status) {
  int *n = arg;
  (void)status;
  if (rec != NULL)
    ++*n;
}

/* A thousand clients connected at once, each watching its own peer and
 * storing under it: every one hears exactly its own store. */
static void test_thousand_clients(void **state) {
  fx *f = *state;
  enum { N = 1000 };
  peerstore_client **c = calloc(N, sizeof(*c));
  int *heard = calloc(N, sizeof(*heard));
  int everything = 0, i, total;
  tally t = {0};
  peerstore_client *all;

  assert_non_null(c);
  assert_non_null(heard);
  all = peerstore_connect(&f->loop, f->svc.socket_path);
  assert_non_null(peerstore_watch(all, "many", NULL, NULL, watch_count_cb,
                                  &everything));
  for (i = 0; i < N; i++) {
    peerstore_peer_id p = peer_n((uint32_t)i);
    c[i] = peerstore_connect(&f->loop, f->svc.socket_path);
    assert_non_null(c[i]);
    assert_non_null(peerstore_watch(c[i], "many", &p, NULL, watch_count_cb,
                                    &heard[i]));
  }
  /* A round trip on each proves its watch is registered. */
  for (i = 0; i < N; i++)
    assert_non_null(peerstore_remove(c[i], "nothing", NULL, NULL, NULL, NULL));
  {
    tally sync = {0};
    for (i = 0; i < N; i++)
      assert_non_null(peerstore_store(c[i], "sync", &(peerstore_peer_id){0},
                                      "k", "v", 1, PEERSTORE_EXPIRY_NEVER,
                                      PEERSTORE_REPLACE, ack_cb, &sync));
    assert_int_equal(harness_run_until_ge(&f->loop, &sync.acks, N, TIMEOUT),
                     0);
  }
  for (i = 0; i < N; i++) {
    peerstore_peer_id p = peer_n((uint32_t)i);
    assert_non_null(peerstore_store(c[i], "many", &p, "k", "v", 1,
                                    PEERSTORE_EXPIRY_NEVER, PEERSTORE_REPLACE,
                                    ack_cb, &t));
  }
  assert_int_equal(harness_run_until_ge(&f->loop, &t.acks, N, TIMEOUT), 0);
  assert_int_equal(t.failed, 0);
  assert_int_equal(harness_run_until_ge(&f->loop, &everything, N, TIMEOUT),
                   0);
  for (i = 0, total = 0; i < N; i++) {
    assert_int_equal(heard[i], 1);
    total += heard[i];
  }
  assert_int_equal(total, N);
  for (i = 0; i < N; i++)
    peerstore_disconnect(c[i], 0);
  peerstore_disconnect(all, 0);
  free(c);
  free(heard);
}

/* SIGTERM while stores are in flight: each gets an answer (applied, or
 * refused because the service is stopping), the service exits 0, and
 * every acknowledged store is in the database afterwards. */
static void test_sigterm_under_load(void **state) {
  fx *f = *state;
  enum { N = 20000 };
  peerstore_connect_opts o;
  peerstore_client *c;
  tally t = {0};
  char key[32];
  int i, st;

  peerstore_connect_opts_init(&o);
  o.reconnect = 0; /* see the answers of this service, not a next one */
  c = peerstore_connect_ex(&f->loop, f->svc.socket_path, &o);
  for (i = 0; i < N; i++) {
    peerstore_peer_id p = peer_n((uint32_t)i);
    snprintf(key, sizeof(key), "k%d", i);
    assert_non_null(peerstore_store(c, "term", &p, key, "v", 1,
                                    PEERSTORE_EXPIRY_NEVER,
                                    PEERSTORE_REPLACE, ack_cb, &t));
  }
  assert_int_equal(harness_run_until_ge(&f->loop, &t.acks, N / 10, TIMEOUT),
                   0);
  kill(f->svc.pid, SIGTERM);
  assert_int_equal(harness_run_until_ge(&f->loop, &t.acks, N, TIMEOUT), 0);
  assert_true(t.ok >= N / 10);
  assert_int_equal(waitpid(f->svc.pid, &st, 0), f->svc.pid);
  f->svc.pid = 0;
  assert_true(WIFEXITED(st));
  assert_int_equal(WEXITSTATUS(st), 0);
  peerstore_disconnect(c, 0);
  assert_int_equal(harness_restart(&f->svc, f->args), 0);
  assert_int_equal(count_records(f, "term"), t.ok);
}

/* A client that asks for a huge iteration and reads nothing: the service
 * produces only up to its output limit (4 MiB), not the result set. */
static void test_iteration_memory_bounded(void **state) {
  fx *f = *state;
  enum { N = 1000000 };
  peerstore_client *c = peerstore_connect(&f->loop, f->svc.socket_path);
  peerstore__buf b = {0};
  uint8_t value[64];
  tally t = {0};
  char key[16];
  long before, after;
  int i, fd;

  memset(value, 7, sizeof(value));
  for (i = 0; i < N; i++) {
    peerstore_peer_id p = peer_n((uint32_t)(i / 100));
    snprintf(key, sizeof(key), "k%d", i % 100);
    assert_non_null(peerstore_store(c, "million", &p, key, value,
                                    sizeof(value), PEERSTORE_EXPIRY_NEVER,
                                    PEERSTORE_REPLACE, ack_cb, &t));
    if (i % 100000 == 99999)
      assert_int_equal(
          harness_run_until_ge(&f->loop, &t.acks, i + 1, TIMEOUT), 0);
  }
  assert_int_equal(t.failed, 0);
  before = harness_rss_kb(&f->svc);

  fd = harness_raw_connect(f->svc.socket_path);
  assert_int_equal(peerstore__put_hello(&b), 0);
  /* Credit for every record: only the output limit holds it back. */
  assert_int_equal(peerstore__put_filter(&b, PEERSTORE_MSG_ITERATE, 1,
                                         "million", NULL, NULL, N),
                   0);
  assert_int_equal(send(fd, b.data, b.len, MSG_NOSIGNAL), (ssize_t)b.len);
  peerstore__buf_free(&b);
  /* The memory plugin yields synchronously, so once the service counts
   * the iteration it has produced all it will until the client reads. */
  assert_int_equal(
      harness_wait_stat(&f->loop, c, "iterations_active", 1, TIMEOUT), 0);
  after = harness_rss_kb(&f->svc);
  /* Stated bound: the 4 MiB output limit, plus one batch of records and
   * allocator slack; a buffered result set would be ~100 MiB. */
  print_message("service RSS %ld KiB before, %ld KiB with the iteration "
                "stalled\n", before, after);
  if (harness_memory_measurable())
    assert_true(after - before < 16 * 1024);
  close(fd);
  peerstore_disconnect(c, 0);
}

/* Reads EVENT frames of watch 1 from fd: first SYNC, then n STOREs whose
 * revisions follow it one by one and whose keys are k0..k99 in turn.
 * Returns how many arrived in order. */
static int read_events_in_order(int fd, int n) {
  peerstore__reader rd;
  peerstore__header h;
  peerstore__wrec w;
  const uint8_t *body;
  struct pollfd pfd = {fd, POLLIN, 0};
  uint64_t expect = 0, rev;
  uint8_t kind;
  char key[16];
  int good = 0, synced = 0, r;
  ssize_t got;
  uv_buf_t space;

  memset(&rd, 0, sizeof(rd));
  while (good < n) {
    while ((r = peerstore__reader_next(&rd, PEERSTORE_MSG_MAX, &h, &body)) ==
           PEERSTORE__FRAME_READY) {
      if (h.type == PEERSTORE_MSG_WELCOME)
        continue;
      if (h.type != PEERSTORE_MSG_EVENT || h.request != 1 ||
          peerstore__wire_event(body, h.body_len, &kind, &rev, &w) != 0)
        goto out;
      if (!synced) {
        if (kind != PEERSTORE_EVENT_SYNC)
          goto out;
        synced = 1;
        expect = rev + 1;
        continue;
      }
      snprintf(key, sizeof(key), "k%d", good % 100);
      if (kind != PEERSTORE_EVENT_STORE || rev != expect ||
          strcmp(w.key, key) != 0)
        goto out;
      expect++;
      good++;
    }
    if (good == n || r != PEERSTORE__FRAME_MORE ||
        poll(&pfd, 1, TIMEOUT) != 1)
      break;
    peerstore__reader_space(&rd, PEERSTORE_MSG_MAX, &space);
    got = recv(fd, space.base, space.len, 0);
    if (got <= 0)
      break;
    peerstore__reader_filled(&rd, (size_t)got);
  }
out:
  peerstore__reader_free(&rd);
  return good;
}

/* One client watches everything and never reads; another stores 100,000
 * records.  The stores all succeed (the writer never waits for the
 * watcher), the service stops queueing for the watcher instead of
 * queueing without bound - its memory grows by the records and the
 * history, not by the notifications nobody reads - and once the watcher
 * reads again it gets every event, in order, from the history. */
static void test_watcher_never_reads_100k(void **state) {
  fx *f = *state;
  enum { N = 100000 };
  peerstore_client *c = peerstore_connect(&f->loop, f->svc.socket_path);
  peerstore__buf b = {0};
  tally t = {0};
  char key[16];
  uint8_t value[64];
  long before, after;
  int i, fd;

  memset(value, 9, sizeof(value));
  fd = harness_raw_connect(f->svc.socket_path);
  assert_int_equal(peerstore__put_hello(&b), 0);
  assert_int_equal(
      peerstore__put_watch_ex(&b, 1, "flood", NULL, NULL, 0, 0, 0), 0);
  assert_int_equal(send(fd, b.data, b.len, MSG_NOSIGNAL), (ssize_t)b.len);
  peerstore__buf_free(&b);
  assert_int_equal(harness_wait_stat(&f->loop, c, "watches", 1, TIMEOUT), 0);
  before = harness_rss_kb(&f->svc);
  for (i = 0; i < N; i++) {
    peerstore_peer_id p = peer_n((uint32_t)(i / 100));
    snprintf(key, sizeof(key), "k%d", i % 100);
    assert_non_null(peerstore_store(c, "flood", &p, key, value, sizeof(value),
                                    PEERSTORE_EXPIRY_NEVER, PEERSTORE_REPLACE,
                                    ack_cb, &t));
  }
  assert_int_equal(harness_run_until_ge(&f->loop, &t.acks, N, TIMEOUT), 0);
  assert_int_equal(t.failed, 0);
  assert_int_equal(stat_value(f, c, "watch_overflows"), 1);
  assert_int_equal(stat_value(f, c, "watches"), 1);
  after = harness_rss_kb(&f->svc);
  print_message("service RSS %ld KiB before, %ld KiB after 100,000 stores "
                "with a stuck watcher (watch limit 1 MiB)\n", before, after);
  /* The records themselves (~260 bytes each here), the history (8 bytes
   * an event) and the 1 MiB watch limit, plus allocator slack; the
   * unread notifications alone would add 14 MiB more if they were kept. */
  if (harness_memory_measurable())
    assert_true(after - before < (N * 310 + 6 * 1024 * 1024) / 1024);
  {
    uint64_t t0 = uv_hrtime();
    assert_int_equal(read_events_in_order(fd, N), N);
    print_message("the watcher read all %d events, in order, in %.1f s\n",
                  N, (double)(uv_hrtime() - t0) / 1e9);
  }
  close(fd);
  peerstore_disconnect(c, 0);
}

/* One client opens as many watches as it may (memory: 1,024; sqlite,
 * where each read is slower: 64), each on a key stored once at the start
 * of a long history (then 200,000 REPLACEs of another key of the same
 * subsystem), each resuming from the start: every watch has all of the
 * history to read and one event to show for it.  While
 * the service works through them, another client's stores, one at a
 * time, are answered within a bound: the reads take turns with other
 * clients' requests (watch.c's budget, sqlite's reads after each group's
 * commit, both plugins' bounded scans) instead of going before them.
 * Before those, a store here waited for seconds. */
typedef struct victim {
  peerstore_client *c;
  int done;
  int failed;
  int target;
  uint64_t sent_at;
  uint64_t worst_ns;
} victim;

static void victim_send(victim *v);

static void victim_ack(void *arg, int status) {
  victim *v = arg;
  uint64_t ns = uv_hrtime() - v->sent_at;

  if (ns > v->worst_ns)
    v->worst_ns = ns;
  if (status != 0)
    v->failed++;
  if (++v->done < v->target)
    victim_send(v);
}

static void victim_send(victim *v) {
  peerstore_peer_id p = peer_n(7);

  v->sent_at = uv_hrtime();
  if (peerstore_store(v->c, "victim", &p, "k", "v", 1, PEERSTORE_EXPIRY_NEVER,
                      PEERSTORE_REPLACE, victim_ack, v) == NULL)
    v->failed++;
}

typedef struct catchup {
  int ended;
  int stores; /* of the key each watches */
} catchup;

static void catchup_cb(void *arg, const peerstore_event *ev, int status) {
  catchup *k = arg;

  (void)status;
  if (ev == NULL)
    k->ended++;
  else if (ev->kind == PEERSTORE_EVENT_STORE)
    k->stores++;
}

static void test_catching_up_watches_do_not_stall_other_clients(
    void **state) {
  fx *f = *state;
  int timed = harness_memory_measurable(); /* not valgrind, not ASan */
  int sqlite = f->args[0] != NULL && strcmp(f->args[1], "sqlite") == 0;
  int n_events = timed ? 200000 : 5000;
  int n_watches = sqlite ? 64 : 1024;
  peerstore_client *w = peerstore_connect(&f->loop, f->svc.socket_path);
  peerstore_client *hostile = peerstore_connect(&f->loop, f->svc.socket_path);
  static victim v;
  peerstore_watch_opts o;
  tally t = {0};
  int64_t first;
  char ss[32];
  catchup k = {0, 0};
  uint64_t t0;
  int i;

  for (i = 0; i < n_watches; i++) {
    peerstore_peer_id p = peer_n(2);
    snprintf(ss, sizeof(ss), "rare-%d", i);
    assert_non_null(peerstore_store(w, "busy", &p, ss, "r", 1,
                                    PEERSTORE_EXPIRY_NEVER, PEERSTORE_REPLACE,
                                    ack_cb, &t));
  }
  for (i = 0; i < n_events; i++) {
    peerstore_peer_id p = peer_n(1);
    assert_non_null(peerstore_store(w, "busy", &p, "k", &i, sizeof(i),
                                    PEERSTORE_EXPIRY_NEVER, PEERSTORE_REPLACE,
                                    ack_cb, &t));
  }
  assert_int_equal(
      harness_run_until_ge(&f->loop, &t.acks, n_watches + n_events, TIMEOUT),
      0);
  assert_int_equal(t.failed, 0);
  first = stat_value(f, w, "history_first");
  assert_true(stat_value(f, w, "history_events") >= n_events - 1);
  memset(&o, 0, sizeof(o));
  o.from_revision = (uint64_t)first;
  t0 = uv_hrtime();
  for (i = 0; i < n_watches; i++) {
    snprintf(ss, sizeof(ss), "rare-%d", i);
    assert_non_null(peerstore_watch_ex(hostile, "busy", NULL, ss, &o,
                                       catchup_cb, &k));
  }
  memset(&v, 0, sizeof(v));
  v.c = w;
  v.target = 200;
  victim_send(&v);
  assert_int_equal(harness_run_until_ge(&f->loop, &v.done, v.target, TIMEOUT),
                   0);
  assert_int_equal(v.failed, 0);
  print_message("%d watches catching up over %d events: worst store round "
                "trip %.1f ms while they read, %lld still reading after "
                "%d round trips\n",
                n_watches, n_events, (double)v.worst_ns / 1e6,
                (long long)stat_value(f, w, "watches_syncing"), v.target);
  if (timed)
    assert_true(v.worst_ns < 500 * 1000000ull);
  /* And they do all catch up, none ended. */
  assert_int_equal(harness_wait_stat(&f->loop, w, "watches", n_watches,
                                     TIMEOUT),
                   0);
  assert_int_equal(harness_wait_stat(&f->loop, w, "watch_progress",
                                     n_watches, TIMEOUT),
                   0);
  assert_int_equal(stat_value(f, w, "watches_syncing"), 0);
  assert_int_equal(harness_run_until_ge(&f->loop, &k.stores, n_watches,
                                        TIMEOUT),
                   0);
  assert_int_equal(k.stores, n_watches);
  assert_int_equal(k.ended, 0);
  print_message("all caught up in %.2f s\n", (double)(uv_hrtime() - t0) / 1e9);
  peerstore_disconnect(hostile, 0);
  peerstore_disconnect(w, 0);
}

/* A remove that matches 50,000 records of 2 KiB (100 MiB of values) on
 * sqlite: the service hands the removed records to its watchers a step
 * at a time, so its memory does not grow with what the remove matched;
 * a REMOVALS watcher gets every REMOVE, in order, and the remove's
 * count is all of them. */
typedef struct removal_watch {
  int removes;
  int bad;
  uint64_t last;
} removal_watch;

static void removal_cb(void *arg, const peerstore_event *ev, int status) {
  removal_watch *r = arg;

  (void)status;
  if (ev == NULL) {
    r->bad++;
    return;
  }
  if (ev->kind != PEERSTORE_EVENT_REMOVE)
    return;
  if (ev->revision <= r->last || ev->rec->value_size != 2048)
    r->bad++;
  r->last = ev->revision;
  r->removes++;
}

typedef struct removed {
  int done;
  int status;
  uint64_t count;
} removed;

static void removed_cb(void *arg, int status, uint64_t count) {
  removed *r = arg;

  r->done = 1;
  r->status = status;
  r->count = count;
}

static void test_a_huge_remove_keeps_memory_bounded(void **state) {
  fx *f = *state;
  int measurable = harness_memory_measurable();
  int n = measurable ? 50000 : 2000;
  peerstore_client *c = peerstore_connect(&f->loop, f->svc.socket_path);
  static uint8_t value[2048];
  static removal_watch rw;
  peerstore_watch_opts o;
  removed r = {0};
  tally t = {0};
  long before, after;
  char key[16];
  int i;

  memset(&rw, 0, sizeof(rw));
  memset(&o, 0, sizeof(o));
  o.flags = PEERSTORE_WATCH_REMOVALS;
  assert_non_null(peerstore_watch_ex(c, "bulk", NULL, NULL, &o, removal_cb,
                                     &rw));
  for (i = 0; i < n; i++) {
    peerstore_peer_id p = peer_n((uint32_t)(i / 100));
    memcpy(value, &i, sizeof(i));
    snprintf(key, sizeof(key), "k%d", i % 100);
    assert_non_null(peerstore_store(c, "bulk", &p, key, value, sizeof(value),
                                    PEERSTORE_EXPIRY_NEVER,
                                    PEERSTORE_MULTIPLE, ack_cb, &t));
  }
  assert_int_equal(harness_run_until_ge(&f->loop, &t.acks, n, TIMEOUT), 0);
  assert_int_equal(t.failed, 0);
  /* The peak: what a remove buffers is freed once it is reported. */
  before = harness_status_kb(&f->svc, "VmHWM");
  assert_non_null(peerstore_remove(c, "bulk", NULL, NULL, removed_cb, &r));
  assert_int_equal(harness_run_until(&f->loop, &r.done, TIMEOUT), 0);
  after = harness_status_kb(&f->svc, "VmHWM");
  assert_int_equal(r.status, 0);
  assert_int_equal(r.count, (uint64_t)n);
  assert_int_equal(harness_run_until_ge(&f->loop, &rw.removes, n, TIMEOUT),
                   0);
  assert_int_equal(rw.bad, 0);
  assert_int_equal(count_records(f, "bulk"), 0);
  print_message("service peak RSS %ld KiB before, %ld KiB after removing "
                "%d records of 2 KiB\n", before, after, n);
  if (measurable)
    assert_true(after - before < 24 * 1024);
  peerstore_disconnect(c, 0);
}

static int setup_small_watch_limit(void **state) {
  fx *f;

  setup_with(state, 0);
  f = *state;
  f->args[0] = "-o";
  f->args[1] = "watch_output_limit=1M";
  f->args[2] = NULL;
  harness_kill(&f->svc, SIGTERM);
  if (harness_restart(&f->svc, f->args) != 0)
    return -1;
  uv_update_time(&f->loop);
  return 0;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_kill9_during_storm, setup_sqlite,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_client_killed_mid_request,
                                      setup_memory, teardown),
      cmocka_unit_test_setup_teardown(test_thousand_clients, setup_memory,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_sigterm_under_load, setup_sqlite,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_iteration_memory_bounded,
                                      setup_memory, teardown),
      cmocka_unit_test_setup_teardown(test_watcher_never_reads_100k,
                                      setup_small_watch_limit, teardown),
      cmocka_unit_test_setup_teardown(
          test_catching_up_watches_do_not_stall_other_clients,
          setup_memory_long_history, teardown),
      cmocka_unit_test_setup_teardown(test_a_huge_remove_keeps_memory_bounded,
                                      setup_sqlite, teardown),
      cmocka_unit_test_setup_teardown(
          test_catching_up_watches_do_not_stall_other_clients,
          setup_sqlite_long_history, teardown),
  };
  struct rlimit rl;

  /* A thousand clients need more descriptors than the usual soft limit. */
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  signal(SIGPIPE, SIG_IGN);
  return cmocka_run_group_tests_name("faults", tests, NULL, NULL);
}
