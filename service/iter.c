/* iter.c - iterations: a plugin cursor per ITERATE, paced by the client's
 * credit and by its output.
 *
 * An iteration asks the plugin for a batch of records only while the
 * client grants credit (records it is ready for) and its queued output is
 * within the iterate limit (client_output_ok); the plugin stops a batch
 * as soon as a record takes the output past that limit.  So what one
 * client's iterations hold in the service is bounded in bytes - the limit
 * plus one record - whatever the size of their results or values.
 * Whenever credit arrives or output drains, the client pumps its
 * iterations again.
 *
 * Limits per client: at most max_iterations open at once (more are
 * refused with PEERSTORE_ELIMIT), and an iteration whose cursor has not
 * moved for iteration_timeout (its client grants no credit, or does not
 * read) ends with PEERSTORE_ETIMEDOUT, releasing what the cursor holds.
 * Iterations are found by (client, request) in one hash table.
 *
 * An iteration owns its cursor.  A batch in flight holds a reference on
 * the client, and an iteration that ends while a batch is in flight is
 * freed when the batch completes.
 */
#include <stdlib.h>

#include "service.h"
#include "text.h"

/* Records asked of the plugin at once; bounded so one iteration yields the
 * loop to other clients regularly. */
#define ITER_BATCH 256
#define CREDIT_MAX (1u << 20)

struct siter {
  peerstore__hnode h; /* in the server's iters, by (client id, request) */
  siter *next;        /* the client's iterations */
  siter *prev;
  client *c;
  uint32_t request;
  uint32_t credit;
  uint64_t now;      /* when it began: records expiring by then are skipped */
  uint64_t moved_ms; /* loop time it began or last yielded a record */
  peerstore_plugin_cursor *cursor;
  unsigned busy : 1;    /* an iterate_next is outstanding */
  unsigned pumping : 1; /* inside iter_pump, so completions do not recurse */
  unsigned ended : 1;   /* cancelled or finished; free when not busy */
  unsigned moved : 1;   /* yielded a record in the batch under way */
};

static void iter_pump(siter *it);

static uint64_t iter_hash(const client *c, uint32_t request) {
  uint64_t key[2] = {c->id, request};
  return peerstore__hash(key, sizeof(key), 0x69746572u);
}

int iter_init(server *s) { return peerstore__hmap_init(&s->iters); }

void iter_fini(server *s) { peerstore__hmap_free(&s->iters); }

static void iter_free(siter *it) {
  client *c = it->c;
  server *s = c->srv;

  if (it->prev != NULL)
    it->prev->next = it->next;
  else
    c->iters = it->next;
  if (it->next != NULL)
    it->next->prev = it->prev;
  peerstore__hmap_remove(&s->iters, &it->h);
  if (it->cursor != NULL)
    s->plugin.desc->ops->iterate_close(it->cursor);
  c->n_iters--;
  s->n_iters--;
  free(it);
}

/* Ends the iteration; status is sent unless the client asked for the end
 * (cancel) or is gone (pass 1 in silent). */
static void iter_end(siter *it, int status, int silent) {
  if (it->ended)
    return;
  it->ended = 1;
  if (!silent)
    dispatch_reply(it->c, PEERSTORE_MSG_ITERATE_END, it->request, status,
                   NULL);
  if (!it->busy && !it->pumping)
    iter_free(it);
}

void iter_end_all(client *c, int status) {
  siter *it, *next;

  for (it = c->iters; it != NULL; it = next) {
    next = it->next;
    iter_end(it, status, status == 0);
  }
}

static int iter_rec(void *arg, const peerstore_record *rec,
                    uint32_t writer) {
  siter *it = arg;
  client *c = it->c;

  /* Expired records never reach a client, whatever the plugin does. */
  if (it->ended || c->closing)
    return 1;
  if (rec->expiry <= it->now)
    return 0;
  if (peerstore__put_record(&c->out.buf, it->request, rec, writer) != 0) {
    iter_end(it, PEERSTORE_ENOMEM, 0);
    return 1;
  }
  it->moved = 1;
  if (it->credit > 0)
    it->credit--;
  /* Bounded in bytes: this record may take the output past the limit,
   * the next one may not. */
  return !client_output_ok(c, OUT_ITERATE, 0);
}

static void iter_done(void *arg, int status, int more) {
  siter *it = arg;
  client *c = it->c;

  if (it->moved) {
    it->moved = 0;
    it->moved_ms = uv_now(c->srv->loop);
  }
  /* Still busy while ending, so iter_end does not free it under us. */
  if (!it->ended && (status != 0 || !more))
    iter_end(it, status, 0);
  it->busy = 0;
  client_output_ready(c);
  if (!it->pumping) {
    if (it->ended)
      iter_free(it);
    else
      iter_pump(it);
  }
  client_unref(c); /* taken when the batch was asked for */
}

static void iter_pump(siter *it) {
  client *c = it->c;
  server *s = c->srv;
  int r;

  if (it->pumping)
    return;
  it->pumping = 1;
  while (!it->ended && !it->busy && it->credit > 0 && !c->closing &&
         client_output_ok(c, OUT_ITERATE, 0)) {
    it->busy = 1;
    client_ref(c);
    r = s->plugin.desc->ops->iterate_next(
        it->cursor, it->credit < ITER_BATCH ? it->credit : ITER_BATCH,
        iter_rec, iter_done, it);
    if (r != 0) {
      /* Not started: no callback will come. */
      it->busy = 0;
      client_unref(c);
      iter_end(it, r, 0);
    }
  }
  it->pumping = 0;
  if (it->ended && !it->busy)
    iter_free(it);
}

void iter_pump_all(client *c) {
  siter *it, *next;

  for (it = c->iters; it != NULL; it = next) {
    next = it->next;
    iter_pump(it);
  }
}

static siter *iter_find(client *c, uint32_t request) {
  uint64_t h = iter_hash(c, request);
  peerstore__hnode *e;

  for (e = peerstore__hmap_bucket(&c->srv->iters, h); e != NULL;
       e = e->next) {
    siter *it = (siter *)e;
    if (e->hash == h && it->c == c && it->request == request && !it->ended)
      return it;
  }
  return NULL;
}

int iter_start(client *c, uint32_t request, const peerstore__filter *f,
               uint32_t credit) {
  server *s = c->srv;
  peerstore_plugin_filter pf;
  siter *it;
  int r;

  if (iter_find(c, request) != NULL)
    return PEERSTORE_EPROTO;
  if (c->n_iters >= s->cfg->max_iterations) {
    s->stats.limited++;
    LOG_WARN("client %llu (uid %u): iteration limit (%u) reached",
             (unsigned long long)c->id, (unsigned)c->uid,
             (unsigned)s->cfg->max_iterations);
    dispatch_reply(c, PEERSTORE_MSG_ITERATE_END, request, PEERSTORE_ELIMIT,
                   NULL);
    return 0;
  }
  if ((it = calloc(1, sizeof(*it))) == NULL)
    return PEERSTORE_ENOMEM;
  it->c = c;
  it->request = request;
  it->credit = credit < CREDIT_MAX ? credit : CREDIT_MAX;
  it->moved_ms = uv_now(s->loop);
  it->next = c->iters;
  if (c->iters != NULL)
    c->iters->prev = it;
  c->iters = it;
  peerstore__hmap_insert(&s->iters, &it->h, iter_hash(c, request));
  c->n_iters++;
  s->n_iters++;
  s->stats.iterations++;
  filter_to_plugin(f, &pf);
  it->now = peerstore__now_us();
  r = s->plugin.desc->ops->iterate_open(s->plugin.instance, &pf, it->now,
                                        &it->cursor);
  if (r != 0) {
    it->cursor = NULL;
    iter_end(it, r, 0);
    return 0;
  }
  iter_pump(it);
  return 0;
}

void iter_credit(client *c, uint32_t request, uint32_t more) {
  siter *it = iter_find(c, request);

  /* The iteration may have ended while the credit was on its way. */
  if (it == NULL)
    return;
  it->credit = (CREDIT_MAX - it->credit < more) ? CREDIT_MAX
                                                : it->credit + more;
  iter_pump(it);
}

int iter_cancel(client *c, uint32_t request) {
  siter *it = iter_find(c, request);

  if (it == NULL)
    return PEERSTORE_ENOENT;
  iter_end(it, 0, 1);
  return 0;
}

void iter_check_idle(server *s) {
  uint64_t now = uv_now(s->loop);
  client *c;
  siter *it, *next;

  for (c = s->clients; c != NULL; c = c->next) {
    for (it = c->iters; it != NULL; it = next) {
      next = it->next;
      /* A batch at the plugin is the plugin's time, not the client's. */
      if (it->ended || it->busy ||
          now - it->moved_ms < s->cfg->iteration_timeout_ms)
        continue;
      s->stats.iterations_timed_out++;
      LOG_WARN("client %llu (uid %u): iteration %u has not moved for %llu "
               "s (%s); ending it",
               (unsigned long long)c->id, (unsigned)c->uid,
               (unsigned)it->request,
               (unsigned long long)((now - it->moved_ms) / 1000),
               it->credit == 0 ? "no credit" : "output not read");
      iter_end(it, PEERSTORE_ETIMEDOUT, 0);
    }
  }
}
