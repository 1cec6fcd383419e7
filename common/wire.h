/* wire.h - the peerstore protocol codec, shared by libpeerstore and
 * peerstored.
 *
 * This is the only place that knows the byte layout of a message; both
 * sides encode and decode through the functions below, which check every
 * length against the bytes actually present.  The codec does no I/O:
 * frame.h cuts a byte stream into frames, conn.h writes them out.
 * docs/protocol.md describes the same protocol for people.
 *
 * A connection is a byte stream of frames.  Every frame starts with a fixed
 * 12-byte header, all integers big-endian:
 *
 *   u32 body_len   bytes after the header (not counting the header)
 *   u16 type       one of enum peerstore__msg_type
 *   u16 flags      0; reserved
 *   u32 request    the client's request id; replies carry the id of the
 *                  request they answer; 0 for connection-level frames
 *
 * Strings are u16 length + bytes, no NUL on the wire and none allowed
 * inside.  A filter is: u8 which (bit 0: peer follows, bit 1: key follows),
 * string subsystem, [32-byte peer], [string key].  A record is: string
 * subsystem, 32-byte peer, string key, u64 expiry, u64 revision, u32
 * writer (uid of the client that stored it), u32 value_len, value bytes.
 */
#ifndef PEERSTORE_WIRE_H
#define PEERSTORE_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "peerstore.h"

/* The version this code speaks, and the oldest one the service still
 * serves (version 2 clients get its semantics: RECORD notifications of
 * stores only, no history; version 3 is version 4 without BACKUP). */
#define PEERSTORE_PROTOCOL_VERSION 4
#define PEERSTORE_PROTOCOL_MIN 2
#define PEERSTORE_PROTOCOL_MAGIC 0x50535452u /* "PSTR" */
#define PEERSTORE_HEADER_SIZE 12
/* Everything of a STORE or RECORD but the value, rounded up. */
#define PEERSTORE_MSG_OVERHEAD 2048
/* No frame is ever larger; a header announcing more is a protocol error. */
#define PEERSTORE_MSG_MAX (PEERSTORE_VALUE_MAX_HARD + PEERSTORE_MSG_OVERHEAD)

enum peerstore__msg_type {
  /* client -> service */
  PEERSTORE_MSG_HELLO = 1,   /* u32 magic, u16 version */
  PEERSTORE_MSG_STORE = 2,   /* string ss, peer, string key, u64 expiry,
                                u8 option, u32 value_len, value */
  PEERSTORE_MSG_ITERATE = 3, /* filter, u32 credit (records it may send) */
  PEERSTORE_MSG_CREDIT = 4,  /* u32 more records for iteration `request` */
  PEERSTORE_MSG_CANCEL = 5,  /* (empty) ends iteration or watch `request` */
  PEERSTORE_MSG_WATCH = 6,   /* filter */
  PEERSTORE_MSG_REMOVE = 7,  /* filter */
  PEERSTORE_MSG_STATS = 8,   /* (empty) */
  PEERSTORE_MSG_WATCH_EX = 9, /* v3: u32 flags, u64 from_revision, u64
                                 history id (0: any), filter */
  PEERSTORE_MSG_BATCH = 10,   /* v3: 16-byte batch id (zeros: none), u32
                                 count, count x batch operation */
  PEERSTORE_MSG_BACKUP = 11,  /* v4: u32 credit (pieces it may send) */

  /* service -> client */
  PEERSTORE_MSG_WELCOME = 64,      /* u16 version, u32 max value size;
                                      v3: u64 history id */
  PEERSTORE_MSG_STORE_RESULT = 65, /* i32 status, u64 revision */
  PEERSTORE_MSG_RECORD = 66,       /* record; for an iteration or watch */
  PEERSTORE_MSG_ITERATE_END = 67,  /* i32 status */
  PEERSTORE_MSG_WATCH_END = 68,    /* i32 status (never 0) */
  PEERSTORE_MSG_REMOVE_RESULT = 69, /* i32 status, u64 removed */
  PEERSTORE_MSG_STATS_RESULT = 70, /* u16 n, n x (u8 len, name, u64) */
  PEERSTORE_MSG_ERROR = 71,        /* i32 status, string reason; the
                                      service closes the connection next */
  PEERSTORE_MSG_EVENT = 72,        /* v3: u8 kind, u64 revision, and for
                                      STORE/REMOVE/EXPIRE the record */
  PEERSTORE_MSG_BATCH_RESULT = 73, /* v3: i32 status, u64 first revision */
  PEERSTORE_MSG_BACKUP_DATA = 74,  /* v4: the next bytes of the copy */
  PEERSTORE_MSG_BACKUP_END = 75    /* v4: i32 status, u64 revision, u64
                                      size, u16 n, n bytes of reason */
};

/* The most bytes one BACKUP_DATA carries. */
#define PEERSTORE_BACKUP_PIECE (64u * 1024)

/* A batch operation on the wire: u8 kind, then
 *   STORE:   the body of a STORE message
 *   REMOVE:  filter
 *   REQUIRE: string ss, peer, string key, u64 revision */
enum peerstore__bop_kind {
  PEERSTORE__BOP_STORE = 1,
  PEERSTORE__BOP_REMOVE = 2,
  PEERSTORE__BOP_REQUIRE = 3
};
/* A batch's id: the client's, so that the service can tell a batch sent
 * again after a reconnect from a new one (all zeros: no id). */
#define PEERSTORE_BATCH_ID_SIZE 16

#define PEERSTORE_FILTER_PEER 1u
#define PEERSTORE_FILTER_KEY 2u

/* WATCH_EX flags (the same bits as peerstore_watch_opts.flags). */
#define PEERSTORE__WATCH_FLAGS 3u
/* Where WATCH_EX keeps from_revision and the history id, so that the
 * library can set them in its stored request before sending it again. */
#define PEERSTORE__WATCH_FROM_AT (PEERSTORE_HEADER_SIZE + 4)
#define PEERSTORE__WATCH_ID_AT (PEERSTORE_HEADER_SIZE + 12)
/* An EVENT kind the library keeps to itself: every matching event up to
 * its revision has been sent.  It moves a quiet watch's resume point,
 * which otherwise moves only with the events it matches, and is never
 * delivered to a callback. */
#define PEERSTORE__EVENT_PROGRESS 6

/* ------------------------------------------------------------------ */
/* Decoded messages                                                    */

typedef struct peerstore__header {
  uint32_t body_len;
  uint16_t type;
  uint16_t flags;
  uint32_t request;
} peerstore__header;

/* Strings are copied out NUL-terminated, so records can point at them. */
typedef struct peerstore__filter {
  char subsystem[PEERSTORE_SUBSYSTEM_MAX + 1];
  char key[PEERSTORE_KEY_MAX + 1];
  peerstore_peer_id peer;
  unsigned has_peer : 1;
  unsigned has_key : 1;
} peerstore__filter;

/* A STORE or RECORD: value points into the frame being decoded. */
typedef struct peerstore__wrec {
  char subsystem[PEERSTORE_SUBSYSTEM_MAX + 1];
  char key[PEERSTORE_KEY_MAX + 1];
  peerstore_record rec; /* its strings point at the arrays above */
  uint32_t writer;      /* RECORD only */
  uint8_t option;       /* STORE only */
} peerstore__wrec;

/* One decoded batch operation. */
typedef struct peerstore__wop {
  uint8_t kind;        /* peerstore__bop_kind */
  peerstore__wrec w;   /* STORE; REQUIRE (the triple, w.rec.revision) */
  peerstore__filter f; /* REMOVE */
} peerstore__wop;

/* Walks a BATCH body one operation at a time, so that the strings of
 * thousands of operations need not be decoded into memory at once. */
typedef struct peerstore__batch_rd {
  const uint8_t *p;
  size_t left;
  uint32_t ops_left;
} peerstore__batch_rd;

/* Parses a header from 12 bytes. */
void peerstore__wire_header(const uint8_t *p, peerstore__header *h);
/* Writes a header into 12 bytes (tests use it to forge hostile frames). */
void peerstore__wire_put_header(uint8_t *p, const peerstore__header *h);
/* Sets the request id of an encoded frame, so that one encoding of a
 * notification serves every watcher. */
void peerstore__wire_set_request(uint8_t *frame, uint32_t request);
/* The smallest body a well-formed message of a client's type can have, or
 * SIZE_MAX for a type the service does not accept; lets the service
 * reject a short frame before decoding it. */
size_t peerstore__wire_min_body(uint16_t type);

/* Body decoders: each takes the body (after the header) and returns 0, or
 * PEERSTORE_EPROTO if the body is short, long, or breaks a rule (a string
 * empty, too long or holding a NUL; an unknown option or filter bit). */
int peerstore__wire_hello(const uint8_t *p, size_t n, uint32_t *magic,
                          uint16_t *version);
/* history_id is 0 for a version 2 WELCOME. */
int peerstore__wire_welcome(const uint8_t *p, size_t n, uint16_t *version,
                            uint32_t *max_value, uint64_t *history_id);
int peerstore__wire_store(const uint8_t *p, size_t n, peerstore__wrec *out);
int peerstore__wire_filter(const uint8_t *p, size_t n, peerstore__filter *f,
                           uint32_t *credit /* ITERATE only, else NULL */);
int peerstore__wire_record(const uint8_t *p, size_t n, peerstore__wrec *out);
int peerstore__wire_watch_ex(const uint8_t *p, size_t n, peerstore__filter *f,
                             uint32_t *flags, uint64_t *from,
                             uint64_t *history_id);
/* A BATCH's id and count; then peerstore__wire_batch_op count times. */
int peerstore__wire_batch(const uint8_t *p, size_t n,
                          uint8_t id[PEERSTORE_BATCH_ID_SIZE],
                          uint32_t *count, peerstore__batch_rd *br);
/* The next operation; the last one also checks that nothing follows. */
int peerstore__wire_batch_op(peerstore__batch_rd *br, peerstore__wop *op);
/* kind is a peerstore_event_kind; out is filled for STORE, REMOVE and
 * EXPIRE only. */
int peerstore__wire_event(const uint8_t *p, size_t n, uint8_t *kind,
                          uint64_t *revision, peerstore__wrec *out);
int peerstore__wire_u32(const uint8_t *p, size_t n, uint32_t *v);
int peerstore__wire_status(const uint8_t *p, size_t n, int32_t *status,
                           uint64_t *extra /* NULL if none follows */);
/* BACKUP_END: the reason is copied NUL-terminated, cut to fit. */
int peerstore__wire_backup_end(const uint8_t *p, size_t n, int32_t *status,
                               uint64_t *revision, uint64_t *size,
                               char *reason, size_t reason_size);
int peerstore__wire_error(const uint8_t *p, size_t n, int32_t *status,
                          char *reason, size_t reason_size);
/* Fills out[0..*count) (at most max); names are copied into names[]. */
int peerstore__wire_stats(const uint8_t *p, size_t n,
                          peerstore_stat *out, char names[][64],
                          size_t max, size_t *count);

/* ------------------------------------------------------------------ */
/* Encoders: each appends one whole frame to b, returns 0 or ENOMEM.    */

/* The length of a whole frame (header included) of a request, so that a
 * request can be encoded straight into memory sized for it. */
size_t peerstore__len_store(const char *ss, const char *key, size_t size);
size_t peerstore__len_filter(uint16_t type, const char *ss,
                             const peerstore_peer_id *peer, const char *key);

int peerstore__put_hello(peerstore__buf *b);
/* HELLO for another protocol version (tests of old and future peers). */
int peerstore__put_hello_version(peerstore__buf *b, uint16_t version);
int peerstore__put_welcome(peerstore__buf *b, uint16_t version,
                           uint32_t max_value, uint64_t history_id);
int peerstore__put_store(peerstore__buf *b, uint32_t req, const char *ss,
                         const peerstore_peer_id *peer, const char *key,
                         const void *value, size_t size, uint64_t expiry,
                         uint8_t option);
/* type is ITERATE (credit is sent), WATCH or REMOVE. */
int peerstore__put_filter(peerstore__buf *b, uint16_t type, uint32_t req,
                          const char *ss, const peerstore_peer_id *peer,
                          const char *key, uint32_t credit);
int peerstore__put_record(peerstore__buf *b, uint32_t req,
                          const peerstore_record *rec, uint32_t writer);
size_t peerstore__len_watch_ex(const char *ss, const peerstore_peer_id *peer,
                               const char *key);
int peerstore__put_watch_ex(peerstore__buf *b, uint32_t req, const char *ss,
                            const peerstore_peer_id *peer, const char *key,
                            uint32_t flags, uint64_t from,
                            uint64_t history_id);
/* Batch operations are encoded, without a frame, into a builder's
 * buffer (len_bop_* say how many bytes each takes); put_batch then makes
 * the frame around them. */
size_t peerstore__len_bop_store(const char *ss, const char *key,
                                size_t size);
size_t peerstore__len_bop_filter(const char *ss,
                                 const peerstore_peer_id *peer,
                                 const char *key);
size_t peerstore__len_bop_require(const char *ss, const char *key);
int peerstore__put_bop_store(peerstore__buf *b, const char *ss,
                             const peerstore_peer_id *peer, const char *key,
                             const void *value, size_t size, uint64_t expiry,
                             uint8_t option);
int peerstore__put_bop_remove(peerstore__buf *b, const char *ss,
                              const peerstore_peer_id *peer,
                              const char *key);
int peerstore__put_bop_require(peerstore__buf *b, const char *ss,
                               const peerstore_peer_id *peer,
                               const char *key, uint64_t revision);
/* The whole BATCH frame's length for ops_len bytes of operations. */
size_t peerstore__len_batch(size_t ops_len);
int peerstore__put_batch(peerstore__buf *b, uint32_t req,
                         const uint8_t id[PEERSTORE_BATCH_ID_SIZE],
                         uint32_t count, const void *ops, size_t ops_len);
/* Sets from_revision and the history id of an encoded WATCH_EX. */
void peerstore__wire_set_watch_from(uint8_t *frame, uint64_t from,
                                    uint64_t history_id);
/* rec is NULL for SYNC and RESET. */
int peerstore__put_event(peerstore__buf *b, uint32_t req, uint8_t kind,
                         uint64_t revision, const peerstore_record *rec,
                         uint32_t writer);
/* An empty frame (CANCEL, STATS). */
int peerstore__put_empty(peerstore__buf *b, uint16_t type, uint32_t req);
int peerstore__put_u32(peerstore__buf *b, uint16_t type, uint32_t req,
                       uint32_t v);
/* STORE_RESULT and REMOVE_RESULT carry extra; the *_END frames do not. */
int peerstore__put_status(peerstore__buf *b, uint16_t type, uint32_t req,
                          int32_t status, const uint64_t *extra);
int peerstore__put_backup_data(peerstore__buf *b, uint32_t req,
                               const void *data, size_t n);
/* BACKUP_END; reason NULL or "" for none (cut at 1024 bytes). */
int peerstore__put_backup_end(peerstore__buf *b, uint32_t req, int32_t status,
                              uint64_t revision, uint64_t size,
                              const char *reason);
int peerstore__put_error(peerstore__buf *b, uint32_t req, int32_t status,
                         const char *reason);
int peerstore__put_stats(peerstore__buf *b, uint32_t req,
                         const peerstore_stat *stats, size_t n);

#endif /* PEERSTORE_WIRE_H */
