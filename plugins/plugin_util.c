/* plugin_util.c - see plugin_util.h. */
#include <stdlib.h>
#include <string.h>

#include "plugin_util.h"

int ps_filt_copy(ps_filt *d, const peerstore_plugin_filter *f) {
  memset(d, 0, sizeof(*d));
  d->subsystem = strdup(f->subsystem);
  if (f->key != NULL)
    d->key = strdup(f->key);
  if (f->peer != NULL) {
    d->peer = *f->peer;
    d->has_peer = 1;
  }
  return (d->subsystem == NULL || (f->key != NULL && d->key == NULL))
             ? PEERSTORE_ENOMEM
             : 0;
}

void ps_filt_free(ps_filt *f) {
  free(f->subsystem);
  free(f->key);
}

int ps_filt_kind(const ps_filt *f) {
  return f->has_peer ? (f->key ? F_TRIPLE : F_PEER) : (f->key ? F_KEY : F_SS);
}

/* Appends n bytes (and a NUL if nul) to the byte area; *off is where. */
static int rbuf_put(ps_rbuf *b, const void *p, size_t n, int nul,
                    size_t *off) {
  size_t need = b->bytes_len + n + (size_t)nul;

  if (need > b->bytes_cap) {
    size_t cap = b->bytes_cap ? b->bytes_cap : 4096;
    uint8_t *nb;
    while (cap < need)
      cap *= 2;
    if ((nb = realloc(b->bytes, cap)) == NULL)
      return PEERSTORE_ENOMEM;
    b->bytes = nb;
    b->bytes_cap = cap;
  }
  *off = b->bytes_len;
  if (n > 0)
    memcpy(b->bytes + b->bytes_len, p, n);
  if (nul)
    b->bytes[b->bytes_len + n] = 0;
  b->bytes_len = need;
  return 0;
}

static int rbuf_grow(ps_rbuf *b) {
  size_t cap = b->cap ? b->cap * 2 : 16;
  peerstore_record *recs;
  uint32_t *writers;
  uint64_t *revs;
  uint8_t *kinds;

  if ((recs = realloc(b->recs, cap * sizeof(*recs))) == NULL)
    return PEERSTORE_ENOMEM;
  b->recs = recs;
  if ((writers = realloc(b->writers, cap * sizeof(*writers))) == NULL)
    return PEERSTORE_ENOMEM;
  b->writers = writers;
  if ((revs = realloc(b->revs, cap * sizeof(*revs))) == NULL)
    return PEERSTORE_ENOMEM;
  b->revs = revs;
  if ((kinds = realloc(b->kinds, cap * sizeof(*kinds))) == NULL)
    return PEERSTORE_ENOMEM;
  b->kinds = kinds;
  b->cap = cap;
  return 0;
}

int ps_rbuf_add(ps_rbuf *b, uint64_t rev, int kind, uint64_t stored,
                const void *ss, size_t ss_n, const uint8_t *peer,
                const void *key, size_t key_n, const void *value,
                size_t value_n, uint64_t expiry, uint32_t writer) {
  peerstore_record *r;
  size_t o_ss, o_key, o_val;

  if ((b->n == b->cap && rbuf_grow(b) != 0) ||
      rbuf_put(b, ss, ss_n, 1, &o_ss) || rbuf_put(b, key, key_n, 1, &o_key) ||
      rbuf_put(b, value, value_n, 0, &o_val))
    return PEERSTORE_ENOMEM;
  r = &b->recs[b->n];
  r->revision = stored;
  memcpy(r->peer.bytes, peer, PEERSTORE_PEER_ID_SIZE);
  r->subsystem = (const char *)(uintptr_t)o_ss;
  r->key = (const char *)(uintptr_t)o_key;
  r->value = (const void *)(uintptr_t)o_val;
  r->value_size = value_n;
  r->expiry = expiry;
  b->writers[b->n] = writer;
  b->revs[b->n] = rev;
  b->kinds[b->n] = (uint8_t)kind;
  b->n++;
  return 0;
}

int ps_rbuf_rec(ps_rbuf *b, const peerstore_record *rec, uint32_t writer) {
  return ps_rbuf_add(b, 0, PEERSTORE_CHANGE_STORE, rec->revision,
                     rec->subsystem, strlen(rec->subsystem), rec->peer.bytes,
                     rec->key, strlen(rec->key), rec->value, rec->value_size,
                     rec->expiry, writer);
}

void ps_rbuf_fixup(ps_rbuf *b) {
  size_t i;

  for (i = 0; i < b->n; i++) {
    peerstore_record *r = &b->recs[i];
    r->subsystem = (const char *)b->bytes + (uintptr_t)r->subsystem;
    r->key = (const char *)b->bytes + (uintptr_t)r->key;
    r->value = b->bytes + (uintptr_t)r->value;
  }
}

void ps_rbuf_free(ps_rbuf *b) {
  free(b->recs);
  free(b->writers);
  free(b->revs);
  free(b->kinds);
  free(b->bytes);
}

void ps_rbuf_change(const ps_rbuf *b, size_t i, peerstore_plugin_change *ch) {
  ch->kind = (enum peerstore_plugin_change_kind)b->kinds[i];
  ch->revision = b->revs[i];
  ch->rec = &b->recs[i];
  ch->writer = b->writers[i];
  ch->flags = 0;
}

int ps_batch_check(const peerstore_plugin_batch_op *ops, size_t n) {
  size_t i;

  for (i = 0; i < n; i++) {
    if (ops[i].kind == PEERSTORE_PLUGIN_BATCH_REQUIRE
            ? ops[i].filter.peer == NULL || ops[i].filter.key == NULL
            : ops[i].kind != PEERSTORE_PLUGIN_BATCH_STORE &&
                  ops[i].kind != PEERSTORE_PLUGIN_BATCH_REMOVE)
      return PEERSTORE_EINVAL;
  }
  return 0;
}

static size_t str_bytes(const char *p) {
  return p != NULL ? strlen(p) + 1 : 0;
}

/* Copies the string *field to d, points *field at the copy; returns the
 * end of the copy. */
static char *copy_str(const char **field, char *d) {
  size_t n;

  if (*field == NULL)
    return d;
  n = strlen(*field) + 1;
  memcpy(d, *field, n);
  *field = d;
  return d + n;
}

int ps_batch_copy(const peerstore_plugin_batch_op *ops, size_t n,
                  peerstore_plugin_batch_op **ops_out, char **data_out) {
  peerstore_plugin_batch_op *o;
  size_t i, bytes = 0;
  char *data, *d;

  for (i = 0; i < n; i++)
    bytes += str_bytes(ops[i].rec.subsystem) + str_bytes(ops[i].rec.key) +
             ops[i].rec.value_size + str_bytes(ops[i].filter.subsystem) +
             str_bytes(ops[i].filter.key) + sizeof(peerstore_peer_id);
  o = calloc(n ? n : 1, sizeof(*o));
  data = d = malloc(bytes ? bytes : 1);
  if (o == NULL || data == NULL) {
    free(o);
    free(data);
    return PEERSTORE_ENOMEM;
  }
  for (i = 0; i < n; i++) {
    o[i] = ops[i];
    d = copy_str(&o[i].rec.subsystem, d);
    d = copy_str(&o[i].rec.key, d);
    d = copy_str(&o[i].filter.subsystem, d);
    d = copy_str(&o[i].filter.key, d);
    if (o[i].rec.value_size > 0) {
      memcpy(d, o[i].rec.value, o[i].rec.value_size);
      o[i].rec.value = d;
      d += o[i].rec.value_size;
    } else {
      o[i].rec.value = ""; /* an empty blob, never SQL NULL */
    }
    if (o[i].filter.peer != NULL) {
      memcpy(d, o[i].filter.peer, sizeof(peerstore_peer_id));
      o[i].filter.peer = (const peerstore_peer_id *)(void *)d;
      d += sizeof(peerstore_peer_id);
    }
  }
  *ops_out = o;
  *data_out = data;
  return 0;
}
