/* plugin_util.h - what the plugins that work on a thread of their own
 * share: copied filters, the record buffers a worker fills for the loop,
 * and copies of batches.  Compiled into each plugin (not installed). */
#ifndef PEERSTORE_PLUGIN_UTIL_H
#define PEERSTORE_PLUGIN_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include "peerstore_plugin.h"

/* The four filters, in this order everywhere. */
enum { F_SS, F_PEER, F_KEY, F_TRIPLE, F_COUNT };

/* A filter, copied. */
typedef struct ps_filt {
  char *subsystem;
  char *key; /* NULL: any */
  peerstore_peer_id peer;
  int has_peer;
} ps_filt;

int ps_filt_copy(ps_filt *d, const peerstore_plugin_filter *f);
void ps_filt_free(ps_filt *f);
int ps_filt_kind(const ps_filt *f);

/* Records copied out by a worker for the loop: a batch of an iteration
 * or a history read, or the changes a write made.  kinds and revs are the
 * changes' (recs[i].revision is the revision of the store that wrote the
 * record).  While the worker fills it, strings and values are offsets
 * into bytes, which may still move; ps_rbuf_fixup makes them pointers. */
typedef struct ps_rbuf {
  peerstore_record *recs;
  uint32_t *writers;
  uint64_t *revs;
  uint8_t *kinds;
  uint8_t *bytes; /* strings and values of recs, back to back */
  size_t n;
  size_t cap;
  size_t bytes_len;
  size_t bytes_cap;
} ps_rbuf;

/* Appends a change of kind at revision rev to b: the record stored at
 * stored, with its strings (not NUL-terminated, ss_n and key_n bytes),
 * peer, value, expiry and writer.  0 or PEERSTORE_ENOMEM. */
int ps_rbuf_add(ps_rbuf *b, uint64_t rev, int kind, uint64_t stored,
                const void *ss, size_t ss_n, const uint8_t *peer,
                const void *key, size_t key_n, const void *value,
                size_t value_n, uint64_t expiry, uint32_t writer);
/* Appends rec as a STORE change (its revision is set later, in revs and
 * recs alike). */
int ps_rbuf_rec(ps_rbuf *b, const peerstore_record *rec, uint32_t writer);
void ps_rbuf_fixup(ps_rbuf *b);
void ps_rbuf_free(ps_rbuf *b);
/* The i-th change of b, once b is fixed up. */
void ps_rbuf_change(const ps_rbuf *b, size_t i, peerstore_plugin_change *ch);

/* Copies n batch operations, their strings and values into *ops_out and
 * one allocation *data_out, for a worker.  An empty value points at ""
 * (never NULL).  0 or PEERSTORE_ENOMEM (nothing left allocated). */
int ps_batch_copy(const peerstore_plugin_batch_op *ops, size_t n,
                  peerstore_plugin_batch_op **ops_out, char **data_out);
/* PEERSTORE_EINVAL if an operation's kind is unknown or a REQUIRE does
 * not name a whole triple. */
int ps_batch_check(const peerstore_plugin_batch_op *ops, size_t n);

#endif
