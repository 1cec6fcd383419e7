/* memory.c - the in-memory storage plugin, compiled into peerstored.
 *
 * Every record sits on four intrusive doubly-linked lists at once: its
 * subsystem's, its (subsystem, peer)'s, its (subsystem, key)'s and its
 * triple's.  Each list is kept in ascending revision simply by appending,
 * because revisions only grow; a MULTIPLE refresh takes a new revision, so
 * it moves to the tails.  Any of the four filters is then one hash lookup
 * and a walk over exactly the records it returns.
 *
 * Iteration is resumable: a cursor rests on the next record it will yield.
 * Cursors are kept in a hash table by the record they rest on, and a
 * record counts the cursors on it, so when a record leaves its place (it
 * is removed, or refreshed to the tails) the cursors on it step to its
 * successor in their list, at a cost only to records that have cursors on
 * them.  A cursor therefore holds nothing but its own place: under any
 * churn, a stalled iteration costs the same few bytes.
 *
 * Expiring records are also kept in a min-heap on expiry, so a purge costs
 * time in the number of expired records, not the size of the store.
 *
 * Every change is reported through the service's hook with a revision of
 * its own (PEERSTORE_PLUGIN_REPORTS_REMOVALS): a store, each record a
 * REPLACE drops, each record a remove deletes, each record the purge
 * expires.
 *
 * The history is a ring of eight-byte events, each a pointer to the
 * record it concerns plus its kind.  Records never change once made (a
 * refresh makes a new one), so a store's event needs nothing but its
 * record; a record that leaves the store while the ring still holds one
 * of its events stays allocated, dead, until the ring drops its last
 * event, and pins the groups its strings live in.  The ring drops its
 * oldest events as it takes new ones past history_events or
 * history_bytes: a fixed cost per change.
 *
 * Memory matters here (a store can hold millions of records): a triple
 * keeps only the head of its list, since it rarely holds more than a few
 * values and appending may walk them, and record fields are no wider than
 * their limits need.
 */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "heap.h"
#include "hmap.h"
#include "memory.h"
#include "peerstore_plugin.h"

enum { L_SS, L_PEER, L_KEY, L_TRIPLE, L_COUNT };

struct mrec;
struct quota;

struct mlist {
  struct mrec *first;
  struct mrec *last;
};

/* A group's pins: the dead records that still point at it.  Kept in the
 * group but for triples, which are many and would grow by a malloc
 * bucket: theirs are in mem.pins. */
struct ss_node {
  peerstore__hnode h;
  struct mlist l;
  uint32_t pins;
  struct quota *q; /* the subsystem's quota, or NULL */
  char name[];
};

struct peer_node {
  peerstore__hnode h;
  struct mlist l;
  struct ss_node *ss;
  uint32_t pins;
  peerstore_peer_id peer;
};

struct key_node {
  peerstore__hnode h;
  struct mlist l;
  struct ss_node *ss;
  uint32_t pins;
  char key[];
};

struct triple {
  peerstore__hnode h;
  struct mrec *first; /* its values, oldest first; no tail pointer */
  struct peer_node *pn;
  struct key_node *kn;
};

struct mrec {
  union {
    struct { /* in the store */
      struct mrec *next[L_COUNT];
      struct mrec *prev[L_COUNT];
    };
    /* Out of it but kept for the history (dead): the revision of its
     * REMOVE or EXPIRE event, 0 if it left silently (a refresh). */
    uint64_t died;
  };
  struct triple *t;
  uint64_t revision;
  uint64_t expiry;   /* the expiry heap's key */
  uint32_t heap_pos; /* PEERSTORE__HEAP_NONE for records that never expire */
  uint32_t value_size : 30; /* at most PEERSTORE_VALUE_MAX_HARD */
  uint32_t dead : 1;
  uint32_t gone : 1; /* a batch's quota check counts it removed */
  uint32_t writer;
  uint32_t cursors; /* resting here (see mem.cursors) */
  uint8_t value[];
};

/* One event of the history: a record, and in the two low bits the kind.
 * A record never changes once made (a refresh makes a new one), so a
 * STORE event's revision is its record's, and a dead record keeps the
 * revision of its removal: eight bytes hold an event. */
typedef uintptr_t hev;

/* A triple that dead records still point at. */
struct pin {
  peerstore__hnode h;
  const void *group;
  uint32_t n;
};

typedef struct mem {
  peerstore__hmap ss;
  peerstore__hmap peers;
  peerstore__hmap keys;
  peerstore__hmap triples;
  peerstore__heap expiry; /* records that expire, soonest first */
  peerstore__hmap cursors; /* open cursors, by the record they rest on */
  peerstore_plugin_env env;
  uint64_t revision;
  uint64_t records;
  /* The history: a ring of events, oldest at head. */
  hev *ring;
  size_t ring_cap;
  size_t ring_head;
  size_t ring_n;
  uint64_t hist_first; /* every event after this revision is held */
  uint64_t hist_bytes; /* the ring's events and the dead records */
  uint64_t hist_id;
  peerstore__hmap pins; /* triples dead records point at, by address */
  struct quota *quotas; /* env->quotas, with what each counts */
  size_t n_quotas;
} mem;

struct peerstore_plugin_cursor {
  peerstore__hnode h; /* in mem.cursors, under at */
  mem *m;
  struct mrec *at; /* the next record to yield; NULL at the end */
  struct peerstore_plugin_cursor *moving; /* cursors_step_off's list */
  int list;
  uint64_t max_revision;
  uint64_t now;
};

/* ------------------------------------------------------------------ */
/* Groups: the four list heads                                         */

/* ------------------------------------------------------------------ */
/* Quotas: what each counts, kept as records come and go               */

/* One writer's part of a per-writer quota. */
struct wusage {
  peerstore__hnode h;
  uint32_t writer;
  uint64_t records;
  uint64_t bytes;
};

struct quota {
  char *subsystem;
  uint64_t max_records; /* 0: none */
  uint64_t max_bytes;
  int per_writer;
  uint64_t records; /* over all writers */
  uint64_t bytes;
  peerstore__hmap writers; /* struct wusage, per_writer only */
};

static struct quota *quota_of(mem *m, const char *subsystem) {
  size_t i;

  for (i = 0; i < m->n_quotas; i++)
    if (strcmp(m->quotas[i].subsystem, subsystem) == 0)
      return &m->quotas[i];
  return NULL;
}

static uint64_t hash_writer(uint32_t writer) {
  return peerstore__hash(&writer, sizeof(writer), 7);
}

static struct wusage *wusage_find(struct quota *q, uint32_t writer,
                                  int create) {
  uint64_t h = hash_writer(writer);
  peerstore__hnode *e;
  struct wusage *w;

  for (e = peerstore__hmap_bucket(&q->writers, h); e != NULL; e = e->next)
    if (e->hash == h && ((struct wusage *)e)->writer == writer)
      return (struct wusage *)e;
  if (!create || (w = calloc(1, sizeof(*w))) == NULL)
    return NULL;
  w->writer = writer;
  peerstore__hmap_insert(&q->writers, &w->h, h);
  return w;
}

/* A record of a subsystem with a quota enters (sign 1) or leaves (-1)
 * the store.  A writer's entry exists by then: the check before a store
 * made it. */
static void quota_count(struct quota *q, uint32_t writer, size_t size,
                        int sign) {
  struct wusage *w;

  q->records += (uint64_t)(int64_t)sign;
  q->bytes += (uint64_t)((int64_t)sign * (int64_t)size);
  if (q->per_writer && (w = wusage_find(q, writer, 0)) != NULL) {
    w->records += (uint64_t)(int64_t)sign;
    w->bytes += (uint64_t)((int64_t)sign * (int64_t)size);
  }
}

/* What a store or batch would change, per quota: all writers' records
 * and bytes, then the writing uid's. */
typedef struct qdelta {
  int64_t records, bytes, w_records, w_bytes;
} qdelta;

static void delta_add(const mem *m, qdelta *d, struct quota *q,
                      uint32_t rec_writer, uint32_t writer, size_t size,
                      int sign) {
  qdelta *x = &d[q - m->quotas];

  x->records += sign;
  x->bytes += sign * (int64_t)size;
  if (q->per_writer && rec_writer == writer) {
    x->w_records += sign;
    x->w_bytes += sign * (int64_t)size;
  }
}

/* 1 if usage u grown by delta passes max (0: no limit).  Only growth is
 * refused: a change that lowers usage or keeps it goes through, even past
 * a limit lowered since. */
static int passes(uint64_t u, int64_t delta, uint64_t max) {
  return max != 0 && delta > 0 && u + (uint64_t)delta > max;
}

/* 0, or PEERSTORE_EQUOTA after logging which quota d would pass.  Makes
 * the writer's entry of each per-writer quota d touches (ENOMEM). */
static int quota_check(mem *m, const qdelta *d, uint32_t writer) {
  size_t i;

  for (i = 0; i < m->n_quotas; i++) {
    struct quota *q = &m->quotas[i];
    struct wusage *w = NULL;
    const char *what = NULL;

    if (d[i].records == 0 && d[i].bytes == 0 && d[i].w_records == 0)
      continue;
    if (q->per_writer && (w = wusage_find(q, writer, 1)) == NULL)
      return PEERSTORE_ENOMEM;
    if (!q->per_writer && (passes(q->records, d[i].records, q->max_records) ||
                           passes(q->bytes, d[i].bytes, q->max_bytes)))
      what = "";
    if (w != NULL && (passes(w->records, d[i].w_records, q->max_records) ||
                      passes(w->bytes, d[i].w_bytes, q->max_bytes)))
      what = " per uid";
    if (what != NULL) {
      m->env.log(m->env.log_ctx, PEERSTORE_LOG_WARN,
                 "quota of subsystem '%s'%s (%llu records, %llu bytes) "
                 "refuses a write by uid %u",
                 q->subsystem, what, (unsigned long long)q->max_records,
                 (unsigned long long)q->max_bytes, (unsigned)writer);
      return PEERSTORE_EQUOTA;
    }
  }
  return 0;
}

static int quotas_init(mem *m, const peerstore_plugin_env *env) {
  size_t i;

  if (env->n_quotas == 0)
    return 0;
  if ((m->quotas = calloc(env->n_quotas, sizeof(*m->quotas))) == NULL)
    return PEERSTORE_ENOMEM;
  m->n_quotas = env->n_quotas;
  for (i = 0; i < env->n_quotas; i++) {
    struct quota *q = &m->quotas[i];
    q->max_records = env->quotas[i].max_records;
    q->max_bytes = env->quotas[i].max_bytes;
    q->per_writer =
        (env->quotas[i].flags & PEERSTORE_PLUGIN_QUOTA_PER_WRITER) != 0;
    if ((q->subsystem = strdup(env->quotas[i].subsystem)) == NULL ||
        peerstore__hmap_init(&q->writers) != 0)
      return PEERSTORE_ENOMEM;
  }
  return 0;
}

static void quotas_free(mem *m) {
  size_t i, b;

  for (i = 0; i < m->n_quotas; i++) {
    peerstore__hmap *h = &m->quotas[i].writers;
    for (b = 0; h->buckets != NULL && b <= h->mask; b++) {
      peerstore__hnode *e = h->buckets[b], *next;
      for (; e != NULL; e = next) {
        next = e->next;
        free(e);
      }
    }
    peerstore__hmap_free(h);
    free(m->quotas[i].subsystem);
  }
  free(m->quotas);
}

static uint64_t hash_ptr2(const void *a, const void *b, uint64_t salt) {
  uintptr_t v[2] = {(uintptr_t)a, (uintptr_t)b};
  return peerstore__hash(v, sizeof(v), salt);
}

static struct ss_node *ss_find(mem *m, const char *name, int create) {
  size_t n = strlen(name);
  uint64_t h = peerstore__hash(name, n, 1);
  peerstore__hnode *e;
  struct ss_node *s;

  for (e = peerstore__hmap_bucket(&m->ss, h); e != NULL; e = e->next) {
    s = (struct ss_node *)e;
    if (e->hash == h && strcmp(s->name, name) == 0)
      return s;
  }
  if (!create || (s = calloc(1, sizeof(*s) + n + 1)) == NULL)
    return NULL;
  memcpy(s->name, name, n + 1);
  s->q = quota_of(m, name);
  peerstore__hmap_insert(&m->ss, &s->h, h);
  return s;
}

static struct peer_node *peer_find(mem *m, struct ss_node *ss,
                                   const peerstore_peer_id *peer,
                                   int create) {
  uint64_t h = peerstore__hash(peer->bytes, sizeof(peer->bytes),
                               (uint64_t)(uintptr_t)ss);
  peerstore__hnode *e;
  struct peer_node *p;

  for (e = peerstore__hmap_bucket(&m->peers, h); e != NULL; e = e->next) {
    p = (struct peer_node *)e;
    if (e->hash == h && p->ss == ss &&
        memcmp(&p->peer, peer, sizeof(*peer)) == 0)
      return p;
  }
  if (!create || (p = calloc(1, sizeof(*p))) == NULL)
    return NULL;
  p->ss = ss;
  p->peer = *peer;
  peerstore__hmap_insert(&m->peers, &p->h, h);
  return p;
}

static struct key_node *key_find(mem *m, struct ss_node *ss, const char *key,
                                 int create) {
  size_t n = strlen(key);
  uint64_t h = peerstore__hash(key, n, (uint64_t)(uintptr_t)ss);
  peerstore__hnode *e;
  struct key_node *k;

  for (e = peerstore__hmap_bucket(&m->keys, h); e != NULL; e = e->next) {
    k = (struct key_node *)e;
    if (e->hash == h && k->ss == ss && strcmp(k->key, key) == 0)
      return k;
  }
  if (!create || (k = calloc(1, sizeof(*k) + n + 1)) == NULL)
    return NULL;
  k->ss = ss;
  memcpy(k->key, key, n + 1);
  peerstore__hmap_insert(&m->keys, &k->h, h);
  return k;
}

static struct triple *triple_find(mem *m, struct peer_node *pn,
                                  struct key_node *kn, int create) {
  uint64_t h = hash_ptr2(pn, kn, 3);
  peerstore__hnode *e;
  struct triple *t;

  for (e = peerstore__hmap_bucket(&m->triples, h); e != NULL; e = e->next) {
    t = (struct triple *)e;
    if (e->hash == h && t->pn == pn && t->kn == kn)
      return t;
  }
  if (!create || (t = calloc(1, sizeof(*t))) == NULL)
    return NULL;
  t->pn = pn;
  t->kn = kn;
  peerstore__hmap_insert(&m->triples, &t->h, h);
  return t;
}

/* ------------------------------------------------------------------ */
/* Pins: groups that dead records still point at                       */

static uint64_t hash_group(const void *g) {
  return peerstore__hash(&g, sizeof(g), 0x70696eu);
}

static struct pin *pin_find(mem *m, const void *g) {
  uint64_t h = hash_group(g);
  peerstore__hnode *e;

  if (m->pins.count == 0)
    return NULL;
  for (e = peerstore__hmap_bucket(&m->pins, h); e != NULL; e = e->next)
    if (e->hash == h && ((struct pin *)e)->group == g)
      return (struct pin *)e;
  return NULL;
}

static int pin_triple(mem *m, const void *g) {
  struct pin *p = pin_find(m, g);

  if (p == NULL) {
    if ((p = calloc(1, sizeof(*p))) == NULL)
      return PEERSTORE_ENOMEM;
    p->group = g;
    peerstore__hmap_insert(&m->pins, &p->h, hash_group(g));
  }
  p->n++;
  return 0;
}

static void unpin_triple(mem *m, const void *g) {
  struct pin *p = pin_find(m, g);

  if (p != NULL && --p->n == 0) {
    peerstore__hmap_remove(&m->pins, &p->h);
    free(p);
  }
}

/* Frees whichever of the groups have no records left, innermost first,
 * unless a dead record still points at them.  Any argument may be NULL. */
static void groups_gc(mem *m, struct ss_node *ss, struct peer_node *pn,
                      struct key_node *kn, struct triple *t) {
  if (t != NULL && t->first == NULL && !pin_find(m, t)) {
    peerstore__hmap_remove(&m->triples, &t->h);
    free(t);
  }
  if (pn != NULL && pn->l.first == NULL && pn->pins == 0) {
    peerstore__hmap_remove(&m->peers, &pn->h);
    free(pn);
  }
  if (kn != NULL && kn->l.first == NULL && kn->pins == 0) {
    peerstore__hmap_remove(&m->keys, &kn->h);
    free(kn);
  }
  if (ss != NULL && ss->l.first == NULL && ss->pins == 0) {
    peerstore__hmap_remove(&m->ss, &ss->h);
    free(ss);
  }
}

/* The list head of one of the three groups with a tail (not L_TRIPLE). */
static struct mlist *rec_list(struct triple *t, int l) {
  switch (l) {
  case L_SS:
    return &t->pn->ss->l;
  case L_PEER:
    return &t->pn->l;
  default:
    return &t->kn->l;
  }
}

/* ------------------------------------------------------------------ */
/* Records                                                             */

static void rec_append(struct mrec *r) {
  struct mrec **pp = &r->t->first, *prev = NULL;
  int l;

  /* The triple's list: walk its few values to the end. */
  while (*pp != NULL) {
    prev = *pp;
    pp = &prev->next[L_TRIPLE];
  }
  *pp = r;
  r->prev[L_TRIPLE] = prev;
  r->next[L_TRIPLE] = NULL;
  for (l = 0; l < L_TRIPLE; l++) {
    struct mlist *ls = rec_list(r->t, l);
    r->next[l] = NULL;
    r->prev[l] = ls->last;
    if (ls->last != NULL)
      ls->last->next[l] = r;
    else
      ls->first = r;
    ls->last = r;
  }
}

static void rec_detach(struct mrec *r) {
  int l;

  if (r->prev[L_TRIPLE] != NULL)
    r->prev[L_TRIPLE]->next[L_TRIPLE] = r->next[L_TRIPLE];
  else
    r->t->first = r->next[L_TRIPLE];
  if (r->next[L_TRIPLE] != NULL)
    r->next[L_TRIPLE]->prev[L_TRIPLE] = r->prev[L_TRIPLE];
  for (l = 0; l < L_TRIPLE; l++) {
    struct mlist *ls = rec_list(r->t, l);
    if (r->prev[l] != NULL)
      r->prev[l]->next[l] = r->next[l];
    else
      ls->first = r->next[l];
    if (r->next[l] != NULL)
      r->next[l]->prev[l] = r->prev[l];
    else
      ls->last = r->prev[l];
  }
}

/* ------------------------------------------------------------------ */
/* Cursors' places                                                     */

static uint64_t hash_rec(const struct mrec *r) {
  return peerstore__hash(&r, sizeof(r), 0x637572u);
}

static void cursor_rest(mem *m, peerstore_plugin_cursor *c,
                        struct mrec *r) {
  c->at = r;
  if (r == NULL)
    return;
  r->cursors++;
  peerstore__hmap_insert(&m->cursors, &c->h, hash_rec(r));
}

static void cursor_leave(mem *m, peerstore_plugin_cursor *c) {
  if (c->at == NULL)
    return;
  c->at->cursors--;
  peerstore__hmap_remove(&m->cursors, &c->h);
  c->at = NULL;
}

/* r is about to leave its place in the lists: every cursor resting on it
 * steps to r's successor in the cursor's own list.  One pass over r's
 * bucket gathers them, then they move: the cost is the number of cursors
 * on r, which the service bounds (max_iterations per client). */
static void cursors_step_off(mem *m, struct mrec *r) {
  peerstore_plugin_cursor *moving = NULL, *c;
  peerstore__hnode *e, *next;
  uint64_t h;

  if (r->cursors == 0)
    return;
  h = hash_rec(r);
  for (e = peerstore__hmap_bucket(&m->cursors, h); e != NULL; e = next) {
    next = e->next;
    c = (peerstore_plugin_cursor *)e;
    if (e->hash == h && c->at == r) {
      cursor_leave(m, c);
      c->moving = moving;
      moving = c;
    }
  }
  while ((c = moving) != NULL) {
    moving = c->moving;
    cursor_rest(m, c, r->next[c->list]);
  }
}

static void rec_view(const struct mrec *r, peerstore_record *out) {
  out->subsystem = r->t->pn->ss->name;
  out->peer = r->t->pn->peer;
  out->key = r->t->kn->key;
  out->value = r->value;
  out->value_size = r->value_size;
  out->expiry = r->expiry;
  out->revision = r->revision;
}

/* ------------------------------------------------------------------ */
/* Leaving the store, and the history                                  */

static int hist_on(const mem *m) {
  return m->env.history_events > 0 && m->env.history_bytes > 0;
}

static size_t rec_bytes(const struct mrec *r) {
  return sizeof(*r) + r->value_size;
}

static struct mrec *hev_rec(hev e) { return (struct mrec *)(e & ~(hev)3); }

static int hev_kind(hev e) { return (int)(e & 3); }

static uint64_t hev_revision(hev e) {
  const struct mrec *r = hev_rec(e);

  return hev_kind(e) == PEERSTORE_CHANGE_STORE ? r->revision : r->died;
}

static hev *hist_at(mem *m, size_t i) {
  size_t k = m->ring_head + i;

  return &m->ring[k >= m->ring_cap ? k - m->ring_cap : k];
}

/* Takes r out of the lists, the expiry heap and the count. */
static void rec_unlink(mem *m, struct mrec *r) {
  cursors_step_off(m, r);
  rec_detach(r);
  peerstore__heap_remove(&m->expiry, r);
  m->records--;
}

/* Keeps r's groups while it is dead; 0, or ENOMEM with nothing pinned. */
static int pin_groups(mem *m, const struct mrec *r) {
  struct triple *t = r->t;

  if (pin_triple(m, t) != 0)
    return PEERSTORE_ENOMEM;
  t->pn->pins++;
  t->kn->pins++;
  t->pn->ss->pins++;
  return 0;
}

static void unpin_groups(mem *m, struct triple *t) {
  unpin_triple(m, t);
  t->pn->pins--;
  t->kn->pins--;
  t->pn->ss->pins--;
}

/* Frees a record that has left the store, and the groups it leaves
 * empty. */
static void rec_free(mem *m, struct mrec *r) {
  struct triple *t = r->t;

  if (r->dead) {
    unpin_groups(m, t);
    m->hist_bytes -= rec_bytes(r);
  }
  free(r);
  groups_gc(m, t->pn->ss, t->pn, t->kn, t);
}

/* Drops the oldest event.  A dead record goes with its last event: its
 * removal, or, for one a refresh replaced, its store. */
static void hist_drop(mem *m) {
  hev e = *hist_at(m, 0);
  struct mrec *r = hev_rec(e);

  m->hist_first = hev_revision(e);
  m->ring_head = m->ring_head + 1 == m->ring_cap ? 0 : m->ring_head + 1;
  m->ring_n--;
  m->hist_bytes -= sizeof(hev);
  if (r->dead && (hev_kind(e) != PEERSTORE_CHANGE_STORE || r->died == 0))
    rec_free(m, r);
}

/* Out of memory for the history: it is forgotten rather than left with a
 * gap, so a resume from before now is told it was compacted. */
static void hist_clear(mem *m) {
  while (m->ring_n > 0)
    hist_drop(m);
  m->hist_first = m->revision;
}

static int hist_grow(mem *m) {
  size_t cap = m->ring_cap ? m->ring_cap * 2 : 1024, i;
  hev *ring;

  if (cap > m->env.history_events)
    cap = (size_t)m->env.history_events;
  if (cap <= m->ring_cap || (ring = malloc(cap * sizeof(*ring))) == NULL)
    return PEERSTORE_ENOMEM;
  for (i = 0; i < m->ring_n; i++)
    ring[i] = *hist_at(m, i);
  free(m->ring);
  m->ring = ring;
  m->ring_cap = cap;
  m->ring_head = 0;
  return 0;
}

/* Appends r's event of kind, first dropping the oldest ones past the
 * limits: a fixed cost per change, never a scan. */
static void hist_push(mem *m, struct mrec *r, int kind) {
  while (m->ring_n > 0 && (m->ring_n >= m->env.history_events ||
                           m->hist_bytes + sizeof(hev) >
                               m->env.history_bytes))
    hist_drop(m);
  if (m->ring_n == m->ring_cap && hist_grow(m) != 0) {
    hist_clear(m);
    if (r->dead)
      rec_free(m, r);
    return;
  }
  *hist_at(m, m->ring_n) = (hev)r | (hev)kind;
  m->ring_n++;
  m->hist_bytes += sizeof(hev);
}

/* Reports a change through the service's hook (peerstore_plugin.h),
 * while r is still in the store. */
static void report(mem *m, enum peerstore_plugin_change_kind kind,
                   uint64_t revision, const struct mrec *r) {
  peerstore_record view;
  peerstore_plugin_change ch;

  rec_view(r, &view);
  ch.kind = kind;
  ch.revision = revision;
  ch.rec = &view;
  ch.writer = r->writer;
  ch.flags = 0;
  m->env.changed(m->env.changed_ctx, &ch);
}

/* Whether r, about to leave the store, must stay for the history: it has
 * an event there still, or is about to (died != 0).  If so its groups are
 * pinned now, while r still holds them. */
static int rec_keep(mem *m, const struct mrec *r, uint64_t died) {
  if (!hist_on(m) || (died == 0 && r->revision <= m->hist_first))
    return 0;
  if (pin_groups(m, r) == 0)
    return 1;
  /* r is still in the store: clearing cannot free its groups. */
  hist_clear(m);
  return 0;
}

/* r leaves the store: with an event of kind (REMOVE or EXPIRE), or
 * silently when a refresh has replaced it (kind 0). */
static void rec_retire(mem *m, struct mrec *r, int kind) {
  uint64_t died = 0;
  int keep;

  if (kind != 0) {
    died = ++m->revision;
    report(m, (enum peerstore_plugin_change_kind)kind, died, r);
  }
  if (r->t->pn->ss->q != NULL)
    quota_count(r->t->pn->ss->q, r->writer, r->value_size, -1);
  keep = rec_keep(m, r, died);
  rec_unlink(m, r);
  if (!keep) {
    rec_free(m, r);
    return;
  }
  r->dead = 1;
  r->died = died; /* over the list links, unused from now on */
  m->hist_bytes += rec_bytes(r);
  if (kind != 0)
    hist_push(m, r, kind);
}

/* ------------------------------------------------------------------ */
/* Plugin operations                                                   */

/* The wall clock in microseconds.  It is also the first revision of an
 * instance: revisions then go up by one per change, so an instance never
 * hands out a revision an earlier one used unless that one made more than
 * a change per microsecond on average, or the clock was set back; the
 * history's id tells the library's own resumes apart even then. */
static uint64_t wall_clock_us(void) {
  struct timespec ts;

  if (clock_gettime(CLOCK_REALTIME, &ts) != 0)
    return 0;
  return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static int mem_open(const peerstore_plugin_env *env, void **instance) {
  mem *m = calloc(1, sizeof(*m));

  if (m == NULL)
    return PEERSTORE_ENOMEM;
  if (peerstore__hmap_init(&m->ss) || peerstore__hmap_init(&m->peers) ||
      peerstore__hmap_init(&m->keys) || peerstore__hmap_init(&m->triples) ||
      peerstore__hmap_init(&m->cursors) || peerstore__hmap_init(&m->pins) ||
      quotas_init(m, env) != 0) {
    quotas_free(m);
    peerstore__hmap_free(&m->ss);
    peerstore__hmap_free(&m->peers);
    peerstore__hmap_free(&m->keys);
    peerstore__hmap_free(&m->triples);
    peerstore__hmap_free(&m->cursors);
    peerstore__hmap_free(&m->pins);
    free(m);
    return PEERSTORE_ENOMEM;
  }
  peerstore__heap_init(&m->expiry, offsetof(struct mrec, expiry),
                       offsetof(struct mrec, heap_pos));
  m->env = *env;
  m->env.quotas = NULL; /* copied */
  m->env.n_quotas = 0;
  m->revision = m->hist_first = wall_clock_us();
  if (uv_random(NULL, NULL, &m->hist_id, sizeof(m->hist_id), 0, NULL) != 0)
    m->hist_id = m->revision ^ (uint64_t)(uintptr_t)m;
  *instance = m;
  return 0;
}

static void free_all(peerstore__hmap *h) {
  size_t i;

  for (i = 0; i <= h->mask; i++) {
    peerstore__hnode *e = h->buckets[i], *next;
    for (; e != NULL; e = next) {
      next = e->next;
      free(e);
    }
  }
  peerstore__hmap_free(h);
}

static void mem_close(void *instance) {
  mem *m = instance;
  size_t i;

  /* Every live record is on exactly one triple's list; every dead one
   * has its last event in the history. */
  for (i = 0; i < m->ring_n; i++) {
    hev e = *hist_at(m, i);
    struct mrec *r = hev_rec(e);
    if (r->dead && (hev_kind(e) != PEERSTORE_CHANGE_STORE || r->died == 0))
      free(r);
  }
  free(m->ring);
  for (i = 0; i <= m->triples.mask; i++) {
    peerstore__hnode *e = m->triples.buckets[i];
    for (; e != NULL; e = e->next) {
      struct mrec *r = ((struct triple *)e)->first, *next;
      for (; r != NULL; r = next) {
        next = r->next[L_TRIPLE];
        free(r);
      }
    }
  }
  free_all(&m->triples);
  free_all(&m->peers);
  free_all(&m->keys);
  free_all(&m->ss);
  free_all(&m->pins);
  quotas_free(m);
  peerstore__heap_free(&m->expiry);
  /* The service closes its cursors before the plugin. */
  peerstore__hmap_free(&m->cursors);
  free(m);
}

/* A record not yet in the store (rec_link puts it there). */
static struct mrec *rec_alloc(struct triple *t, const void *value,
                              size_t size, uint64_t expiry,
                              uint32_t writer) {
  struct mrec *r = malloc(sizeof(*r) + size);

  if (r == NULL)
    return NULL;
  r->t = t;
  r->expiry = expiry;
  r->heap_pos = PEERSTORE__HEAP_NONE;
  r->value_size = (uint32_t)size & 0x3fffffffu;
  r->dead = 0;
  r->gone = 0;
  r->cursors = 0;
  r->writer = writer;
  if (size > 0)
    memcpy(r->value, value, size);
  return r;
}

/* Stores r, with the next revision; its heap slot is reserved.  Cannot
 * fail. */
static void rec_link(mem *m, struct mrec *r) {
  if (r->t->pn->ss->q != NULL)
    quota_count(r->t->pn->ss->q, r->writer, r->value_size, 1);
  if (r->expiry != PEERSTORE_EXPIRY_NEVER)
    peerstore__heap_push(&m->expiry, r);
  r->revision = ++m->revision;
  rec_append(r);
  m->records++;
  report(m, PEERSTORE_CHANGE_STORE, r->revision, r);
  if (hist_on(m))
    hist_push(m, r, PEERSTORE_CHANGE_STORE);
}

/* A store made ready: its groups found or made, its record allocated,
 * its heap slot reserved; store_apply cannot fail. */
typedef struct prepared {
  struct ss_node *ss;
  struct peer_node *pn;
  struct key_node *kn;
  struct triple *t;
  struct mrec *r;
  int pinned; /* a batch's: its groups outlive the removes before it */
} prepared;

static int store_prepare(mem *m, const peerstore_record *rec,
                         uint32_t writer, prepared *p) {
  memset(p, 0, sizeof(*p));
  p->ss = ss_find(m, rec->subsystem, 1);
  if (p->ss != NULL)
    p->pn = peer_find(m, p->ss, &rec->peer, 1);
  if (p->pn != NULL)
    p->kn = key_find(m, p->ss, rec->key, 1);
  if (p->kn != NULL)
    p->t = triple_find(m, p->pn, p->kn, 1);
  if (p->t != NULL)
    p->r = rec_alloc(p->t, rec->value, rec->value_size, rec->expiry, writer);
  return p->r != NULL ? 0 : PEERSTORE_ENOMEM;
}

/* Undoes a store_prepare that is not to be applied. */
static void store_unprepare(mem *m, prepared *p) {
  free(p->r);
  groups_gc(m, p->ss, p->pn, p->kn, p->t);
}

static void store_apply(mem *m, const prepared *p,
                        enum peerstore_store_option option) {
  struct triple *t = p->t;
  struct mrec *r = p->r, *old = NULL, *next;

  if (option == PEERSTORE_MULTIPLE) {
    for (old = t->first; old != NULL; old = old->next[L_TRIPLE])
      if (old->value_size == r->value_size &&
          memcmp(old->value, r->value, r->value_size) == 0)
        break;
  }
  /* Create first, then drop what it replaces.  A refresh is a new record
   * too: records never change once made, which is what lets the history
   * hold one of their stores in eight bytes.  Cursors resting on the old
   * one go on from its place; the new one is past their snapshot. */
  rec_link(m, r);
  if (option == PEERSTORE_MULTIPLE && old != NULL)
    rec_retire(m, old, 0);
  if (option == PEERSTORE_REPLACE) {
    /* Each value the new one replaces is a change of its own, after it. */
    for (old = t->first; old != r; old = next) {
      next = old->next[L_TRIPLE];
      rec_retire(m, old, PEERSTORE_CHANGE_REMOVE);
    }
  }
}

static int same_value(const struct mrec *a, const void *v, size_t n) {
  return a->value_size == n && (n == 0 || memcmp(a->value, v, n) == 0);
}

/* Whether one store lets its subsystem's quota be: what it adds, less
 * what it drops (a REPLACE everything under the triple, a MULTIPLE the
 * identical value it refreshes). */
static int store_quota(mem *m, const prepared *p,
                       enum peerstore_store_option option, uint32_t writer) {
  struct quota *q = p->ss->q;
  qdelta *d = calloc(m->n_quotas, sizeof(*d));
  struct mrec *r;
  int st;

  if (d == NULL)
    return PEERSTORE_ENOMEM;
  delta_add(m, d, q, writer, writer, p->r->value_size, 1);
  for (r = p->t->first; r != NULL; r = r->next[L_TRIPLE]) {
    if (option == PEERSTORE_MULTIPLE &&
        !same_value(r, p->r->value, p->r->value_size))
      continue;
    delta_add(m, d, q, r->writer, writer, r->value_size, -1);
    if (option == PEERSTORE_MULTIPLE)
      break;
  }
  st = quota_check(m, d, writer);
  free(d);
  return st;
}

static int mem_store(void *instance, const peerstore_record *rec,
                     uint32_t writer, enum peerstore_store_option option,
                     peerstore_plugin_store_cb cb, void *arg) {
  mem *m = instance;
  peerstore_record view;
  prepared p;
  int st;

  /* Everything that can fail comes first: past it, nothing can fail
   * half-way through changing the lists. */
  if (rec->expiry != PEERSTORE_EXPIRY_NEVER &&
      peerstore__heap_reserve(&m->expiry) != 0)
    return PEERSTORE_ENOMEM;
  if (store_prepare(m, rec, writer, &p) != 0) {
    store_unprepare(m, &p);
    return PEERSTORE_ENOMEM; /* nothing was changed; no callback */
  }
  if (p.ss->q != NULL && (st = store_quota(m, &p, option, writer)) != 0) {
    store_unprepare(m, &p);
    return st;
  }
  store_apply(m, &p, option);
  rec_view(p.r, &view);
  cb(arg, 0, &view);
  return 0;
}

/* The head of the list a filter selects (its first-record pointer), or
 * NULL if nothing can match. */
static struct mrec **filter_list(mem *m, const peerstore_plugin_filter *f,
                                 int *which) {
  struct ss_node *ss = ss_find(m, f->subsystem, 0);
  struct peer_node *pn = NULL;
  struct key_node *kn = NULL;
  struct triple *t;

  if (ss == NULL)
    return NULL;
  if (f->peer != NULL && (pn = peer_find(m, ss, f->peer, 0)) == NULL)
    return NULL;
  if (f->key != NULL && (kn = key_find(m, ss, f->key, 0)) == NULL)
    return NULL;
  if (pn != NULL && kn != NULL) {
    t = triple_find(m, pn, kn, 0);
    *which = L_TRIPLE;
    return t ? &t->first : NULL;
  }
  if (pn != NULL) {
    *which = L_PEER;
    return &pn->l.first;
  }
  if (kn != NULL) {
    *which = L_KEY;
    return &kn->l.first;
  }
  *which = L_SS;
  return &ss->l.first;
}

static int mem_iterate_open(void *instance, const peerstore_plugin_filter *f,
                            uint64_t now, peerstore_plugin_cursor **out) {
  mem *m = instance;
  peerstore_plugin_cursor *c = calloc(1, sizeof(*c));
  struct mrec **head;

  if (c == NULL)
    return PEERSTORE_ENOMEM;
  c->m = m;
  c->now = now;
  c->max_revision = m->revision;
  head = filter_list(m, f, &c->list);
  cursor_rest(m, c, head != NULL ? *head : NULL);
  *out = c;
  return 0;
}

static int mem_iterate_next(peerstore_plugin_cursor *c, uint32_t max,
                            peerstore_plugin_record_cb rec_cb,
                            peerstore_plugin_next_cb done_cb, void *arg) {
  mem *m = c->m;
  struct mrec *r = c->at;
  peerstore_record view;
  uint32_t sent = 0;
  int stop = 0;

  /* rec_cb only reads, so the list cannot change under this walk. */
  while (r != NULL && sent < max && !stop) {
    if (r->revision > c->max_revision) {
      r = NULL; /* stored after the iteration began, as is all after it */
      break;
    }
    if (r->expiry > c->now) {
      rec_view(r, &view);
      stop = rec_cb(arg, &view, r->writer);
      sent++;
    }
    r = r->next[c->list];
  }
  if (r != NULL && r->revision > c->max_revision)
    r = NULL;
  cursor_leave(m, c);
  cursor_rest(m, c, r);
  done_cb(arg, 0, r != NULL);
  return 0;
}

static void mem_iterate_close(peerstore_plugin_cursor *c) {
  cursor_leave(c->m, c);
  free(c);
}

static uint64_t remove_apply(mem *m, const peerstore_plugin_filter *f) {
  int which;
  struct mrec **head = filter_list(m, f, &which);
  uint64_t n = 0;

  while (head != NULL && *head != NULL) {
    /* The list's node is freed with its last record. */
    int last = (*head)->next[which] == NULL;
    rec_retire(m, *head, PEERSTORE_CHANGE_REMOVE);
    n++;
    if (last)
      break;
  }
  return n;
}

static int mem_remove(void *instance, const peerstore_plugin_filter *f,
                      peerstore_plugin_count_cb cb, void *arg) {
  uint64_t n = remove_apply(instance, f);

  cb(arg, 0, n);
  return 0;
}

/* The revision of the newest unexpired record of the triple f names (0:
 * none): what a reader at now sees, expired records not yet purged
 * left out. */
static uint64_t triple_newest(mem *m, const peerstore_plugin_filter *f,
                              uint64_t now) {
  struct ss_node *ss = ss_find(m, f->subsystem, 0);
  struct peer_node *pn = ss ? peer_find(m, ss, f->peer, 0) : NULL;
  struct key_node *kn = ss ? key_find(m, ss, f->key, 0) : NULL;
  struct triple *t = pn && kn ? triple_find(m, pn, kn, 0) : NULL;
  struct mrec *r;
  uint64_t newest = 0;

  if (t == NULL)
    return 0;
  /* Stored order: the last unexpired one is the newest. */
  for (r = t->first; r != NULL; r = r->next[L_TRIPLE])
    if (r->expiry > now)
      newest = r->revision;
  return newest;
}

/* Undoes the first n of a batch's prepared stores.  Groups may be shared
 * between them: each is left to the first store that has it, so that
 * none is freed twice. */
static void batch_unprepare(mem *m, prepared *p, size_t n) {
  size_t l;

  while (n-- > 0) {
    prepared *q = &p[n];
    if (q->pinned)
      unpin_groups(m, q->t);
    for (l = 0; l < n; l++) {
      if (p[l].ss == q->ss)
        q->ss = NULL;
      if (p[l].pn == q->pn)
        q->pn = NULL;
      if (p[l].kn == q->kn)
        q->kn = NULL;
      if (p[l].t == q->t)
        q->t = NULL;
    }
    store_unprepare(m, q);
  }
}

/* A batch's quota check works on the store as the batch would leave it,
 * without changing it: records it would drop are marked gone (and
 * unmarked after), the stores it adds are kept aside. */
typedef struct vadd {
  struct triple *t;
  const struct mrec *r; /* its prepared record: value and size */
  int gone;
} vadd;

typedef struct vstate {
  mem *m;
  qdelta *d;
  uint32_t writer;
  vadd *added;
  size_t n_added;
  struct mrec **marked;
  size_t n_marked;
  size_t cap_marked;
  /* The triples stores were added to, as an open-addressing set: most
   * stores go to a triple no earlier one did, and need not look through
   * the others. */
  struct triple **tset;
  size_t tmask;
  int failed;
} vstate;

static size_t tset_slot(const vstate *v, const struct triple *t) {
  size_t i = (size_t)(((uintptr_t)t >> 4) * 0x9E3779B97F4A7C15ull) & v->tmask;

  while (v->tset[i] != NULL && v->tset[i] != t)
    i = (i + 1) & v->tmask;
  return i;
}

static void v_drop_live(vstate *v, struct quota *q, struct mrec *r) {
  if (r->gone)
    return;
  if (v->n_marked == v->cap_marked) {
    size_t cap = v->cap_marked ? 2 * v->cap_marked : 64;
    struct mrec **nm = realloc(v->marked, cap * sizeof(*nm));
    if (nm == NULL) {
      v->failed = 1;
      return;
    }
    v->marked = nm;
    v->cap_marked = cap;
  }
  r->gone = 1;
  v->marked[v->n_marked++] = r;
  delta_add(v->m, v->d, q, r->writer, v->writer, r->value_size, -1);
}

static void v_drop_added(vstate *v, struct quota *q, vadd *a) {
  a->gone = 1;
  delta_add(v->m, v->d, q, v->writer, v->writer, a->r->value_size, -1);
}

static int v_matches(const vadd *a, const struct ss_node *ss,
                     const peerstore_plugin_filter *f) {
  return a->t->pn->ss == ss &&
         (f->peer == NULL ||
          memcmp(&a->t->pn->peer, f->peer, sizeof(*f->peer)) == 0) &&
         (f->key == NULL || strcmp(a->t->kn->key, f->key) == 0);
}

static void v_store(vstate *v, const prepared *p,
                    enum peerstore_store_option option) {
  struct quota *q = p->ss->q;
  struct mrec *r;
  size_t k;
  int found = 0;

  for (r = p->t->first; r != NULL && !found; r = r->next[L_TRIPLE]) {
    if (r->gone || (option == PEERSTORE_MULTIPLE &&
                    !same_value(r, p->r->value, p->r->value_size)))
      continue;
    v_drop_live(v, q, r);
    found = option == PEERSTORE_MULTIPLE;
  }
  if (v->tset[tset_slot(v, p->t)] == NULL)
    found = 1; /* nothing added to this triple yet */
  for (k = 0; k < v->n_added && !found; k++) {
    vadd *a = &v->added[k];
    if (a->gone || a->t != p->t ||
        (option == PEERSTORE_MULTIPLE &&
         !same_value(a->r, p->r->value, p->r->value_size)))
      continue;
    v_drop_added(v, q, a);
    found = option == PEERSTORE_MULTIPLE;
  }
  delta_add(v->m, v->d, q, v->writer, v->writer, p->r->value_size, 1);
}

static void v_remove(vstate *v, const peerstore_plugin_filter *f) {
  struct ss_node *ss = ss_find(v->m, f->subsystem, 0);
  struct mrec **head, *r;
  size_t k;
  int which;

  if (ss == NULL || ss->q == NULL)
    return;
  if ((head = filter_list(v->m, f, &which)) != NULL)
    for (r = *head; r != NULL; r = r->next[which])
      v_drop_live(v, ss->q, r);
  for (k = 0; k < v->n_added; k++)
    if (!v->added[k].gone && v_matches(&v->added[k], ss, f))
      v_drop_added(v, ss->q, &v->added[k]);
}

/* Whether the batch, applied, lets every quota be (0, EQUOTA, ENOMEM).
 * p holds its prepared stores.  Stores and removes in subsystems without
 * a quota cannot change one, and are passed over. */
static int batch_quota(mem *m, const peerstore_plugin_batch_op *ops,
                       size_t n, const prepared *p, size_t stores,
                       uint32_t writer) {
  vstate v;
  size_t i, j = 0;
  int st;

  memset(&v, 0, sizeof(v));
  v.m = m;
  v.writer = writer;
  for (v.tmask = 15; v.tmask < 2 * stores; v.tmask = 2 * v.tmask + 1)
    ;
  if ((v.d = calloc(m->n_quotas, sizeof(*v.d))) == NULL ||
      (v.added = calloc(stores ? stores : 1, sizeof(*v.added))) == NULL ||
      (v.tset = calloc(v.tmask + 1, sizeof(*v.tset))) == NULL) {
    free(v.d);
    free(v.added);
    return PEERSTORE_ENOMEM;
  }
  for (i = 0; i < n && !v.failed; i++) {
    if (ops[i].kind == PEERSTORE_PLUGIN_BATCH_STORE) {
      if (p[j].ss->q != NULL) {
        v_store(&v, &p[j], ops[i].option);
        v.added[v.n_added].t = p[j].t;
        v.added[v.n_added++].r = p[j].r;
        v.tset[tset_slot(&v, p[j].t)] = p[j].t;
      }
      j++;
    } else if (ops[i].kind == PEERSTORE_PLUGIN_BATCH_REMOVE) {
      v_remove(&v, &ops[i].filter);
    }
  }
  for (i = 0; i < v.n_marked; i++)
    v.marked[i]->gone = 0;
  st = v.failed ? PEERSTORE_ENOMEM : quota_check(m, v.d, writer);
  free(v.marked);
  free(v.added);
  free(v.tset);
  free(v.d);
  return st;
}

static int mem_batch(void *instance, const peerstore_plugin_batch_op *ops,
                     size_t n, uint32_t writer, peerstore_plugin_batch_cb cb,
                     void *arg) {
  mem *m = instance;
  uint64_t first = m->revision + 1, now = wall_clock_us();
  size_t i, j = 0, stores = 0, expiring = 0;
  prepared *p = NULL;
  int st;

  for (i = 0; i < n; i++) {
    const peerstore_plugin_batch_op *o = &ops[i];
    if (o->kind == PEERSTORE_PLUGIN_BATCH_STORE) {
      stores++;
      expiring += o->rec.expiry != PEERSTORE_EXPIRY_NEVER;
    } else if (o->kind == PEERSTORE_PLUGIN_BATCH_REQUIRE) {
      if (o->filter.peer == NULL || o->filter.key == NULL)
        return PEERSTORE_EINVAL;
    } else if (o->kind != PEERSTORE_PLUGIN_BATCH_REMOVE) {
      return PEERSTORE_EINVAL;
    }
  }
  for (i = 0; i < n; i++) {
    if (ops[i].kind == PEERSTORE_PLUGIN_BATCH_REQUIRE &&
        triple_newest(m, &ops[i].filter, now) != ops[i].revision) {
      cb(arg, PEERSTORE_ECONFLICT, 0, 0);
      return 0;
    }
  }
  /* Everything that can fail, for every store, before anything is
   * applied: then nothing can fail half-way through the batch. */
  if ((expiring > 0 && peerstore__heap_reserve_n(&m->expiry, expiring)) ||
      (stores > 0 && (p = calloc(stores, sizeof(*p))) == NULL))
    return PEERSTORE_ENOMEM;
  for (i = 0; i < n; i++) {
    if (ops[i].kind != PEERSTORE_PLUGIN_BATCH_STORE)
      continue;
    if (store_prepare(m, &ops[i].rec, writer, &p[j]) != 0 ||
        pin_groups(m, p[j].r) != 0) {
      batch_unprepare(m, p, j + 1);
      free(p);
      return PEERSTORE_ENOMEM;
    }
    p[j++].pinned = 1;
  }
  if (m->n_quotas > 0 && (st = batch_quota(m, ops, n, p, stores, writer))) {
    batch_unprepare(m, p, j);
    free(p);
    return st;
  }
  for (i = j = 0; i < n; i++) {
    if (ops[i].kind == PEERSTORE_PLUGIN_BATCH_STORE) {
      store_apply(m, &p[j], ops[i].option);
      unpin_groups(m, p[j++].t); /* it has a record there now */
    } else if (ops[i].kind == PEERSTORE_PLUGIN_BATCH_REMOVE)
      remove_apply(m, &ops[i].filter);
  }
  free(p);
  if (m->revision >= first)
    cb(arg, 0, first, m->revision);
  else
    cb(arg, 0, 0, 0);
  return 0;
}

static int mem_purge(void *instance, uint64_t now, uint32_t max,
                     peerstore_plugin_count_cb cb, void *arg) {
  mem *m = instance;
  uint64_t n = 0;

  struct mrec *r;

  while ((r = peerstore__heap_top(&m->expiry)) != NULL && r->expiry <= now &&
         n < max) {
    rec_retire(m, r, PEERSTORE_CHANGE_EXPIRE);
    n++;
  }
  cb(arg, 0, n);
  return 0;
}

/* Events looked at by one history_read before it returns with how far
 * it got, so a narrow filter over a long history does not hold the loop. */
#define HISTORY_SCAN_MAX 16384

static int mem_history_read(void *instance,
                            const peerstore_plugin_filter *f, uint64_t after,
                            uint32_t max, peerstore_plugin_change_cb ev_cb,
                            peerstore_plugin_history_cb done_cb, void *arg) {
  mem *m = instance;
  uint64_t first = hist_on(m) ? m->hist_first : m->revision;
  struct ss_node *ss;
  struct peer_node *pn = NULL;
  struct key_node *kn = NULL;
  size_t lo = 0, hi = m->ring_n, i, scanned = 0;
  uint32_t sent = 0;

  /* From before the history, or from beyond this instance's revisions:
   * nothing this instance can vouch for. */
  if (after < first || after > m->revision) {
    done_cb(arg, PEERSTORE_ECOMPACTED, 0, 0);
    return 0;
  }
  /* Dead records' groups are pinned, so they are found too. */
  ss = ss_find(m, f->subsystem, 0);
  if (ss != NULL && f->peer != NULL)
    pn = peer_find(m, ss, f->peer, 0);
  if (ss != NULL && f->key != NULL)
    kn = key_find(m, ss, f->key, 0);
  if (ss == NULL || (f->peer != NULL && pn == NULL) ||
      (f->key != NULL && kn == NULL)) {
    done_cb(arg, 0, m->revision, 0);
    return 0;
  }
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (hev_revision(*hist_at(m, mid)) <= after)
      lo = mid + 1;
    else
      hi = mid;
  }
  if (max == 0)
    max = 1;
  for (i = lo; i < m->ring_n; i++) {
    hev e = *hist_at(m, i);
    struct mrec *r = hev_rec(e);
    int stop = 0;

    if (r->t->pn->ss == ss && (pn == NULL || r->t->pn == pn) &&
        (kn == NULL || r->t->kn == kn)) {
      peerstore_record view;
      peerstore_plugin_change ch;
      rec_view(r, &view);
      ch.kind = (enum peerstore_plugin_change_kind)hev_kind(e);
      ch.revision = hev_revision(e);
      ch.rec = &view;
      ch.writer = r->writer;
      ch.flags = 0;
      stop = ev_cb(arg, &ch) != 0 || ++sent == max;
    }
    if ((stop || ++scanned == HISTORY_SCAN_MAX) && i + 1 < m->ring_n) {
      done_cb(arg, 0, hev_revision(e), 1);
      return 0;
    }
  }
  done_cb(arg, 0, m->revision, 0);
  return 0;
}

static void mem_history_info(void *instance,
                             peerstore_plugin_history_info *info) {
  mem *m = instance;

  memset(info, 0, sizeof(*info));
  info->first = hist_on(m) ? m->hist_first : m->revision;
  info->last = m->revision;
  info->events = m->ring_n;
  info->bytes = m->hist_bytes;
  info->id = m->hist_id;
}

static void mem_counts(void *instance, uint64_t *records,
                       uint64_t *revision) {
  mem *m = instance;

  *records = m->records;
  *revision = m->revision;
}

static void mem_quota_usage(void *instance, size_t i, uint64_t *records,
                            uint64_t *bytes, uint64_t *max_writer_records,
                            uint64_t *max_writer_bytes) {
  mem *m = instance;
  const struct quota *q = &m->quotas[i];
  size_t b;

  *records = q->records;
  *bytes = q->bytes;
  *max_writer_records = *max_writer_bytes = 0;
  for (b = 0; q->per_writer && b <= q->writers.mask; b++) {
    const peerstore__hnode *e = q->writers.buckets[b];
    for (; e != NULL; e = e->next) {
      const struct wusage *w = (const struct wusage *)e;
      if (w->records > *max_writer_records)
        *max_writer_records = w->records;
      if (w->bytes > *max_writer_bytes)
        *max_writer_bytes = w->bytes;
    }
  }
}

static const peerstore_plugin_ops mem_ops = {
    .open = mem_open,
    .close = mem_close,
    .store = mem_store,
    .iterate_open = mem_iterate_open,
    .iterate_next = mem_iterate_next,
    .iterate_close = mem_iterate_close,
    .remove = mem_remove,
    .purge = mem_purge,
    .counts = mem_counts,
    .history_read = mem_history_read,
    .history_info = mem_history_info,
    .batch = mem_batch,
    .quota_usage = mem_quota_usage,
};

static const peerstore_plugin_desc mem_desc = {
    .abi = PEERSTORE_PLUGIN_ABI,
    .flags = PEERSTORE_PLUGIN_REPORTS_REMOVALS | PEERSTORE_PLUGIN_QUOTAS,
    .name = "memory",
    .ops = &mem_ops};

const peerstore_plugin_desc *peerstore_plugin_memory(void) {
  return &mem_desc;
}

#ifdef PEERSTORE_MEMORY_MODULE
/* Built as a loadable module too (tests/), to exercise the loader with a
 * plugin that really works. */
const peerstore_plugin_desc *peerstore_plugin_entry(void);
const peerstore_plugin_desc *peerstore_plugin_entry(void) { return &mem_desc; }
#endif
