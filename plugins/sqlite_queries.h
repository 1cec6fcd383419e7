/* sqlite_queries.h - the SQLite plugin's queries by filter, shared with
 * the test that checks (EXPLAIN QUERY PLAN) that the schema's indexes
 * serve them without scanning unrelated rows or sorting. */
#ifndef PEERSTORE_SQLITE_QUERIES_H
#define PEERSTORE_SQLITE_QUERIES_H

/* The four filters, in this order everywhere. */
enum { F_SS, F_PEER, F_KEY, F_TRIPLE, F_COUNT };

static const char *const sqlite_filter_where[F_COUNT] = {
    "subsystem = ?", "subsystem = ? AND peer = ?", "subsystem = ? AND key = ?",
    "subsystem = ? AND peer = ? AND key = ?"};

/* printf format: the WHERE clause above.  Binds the filter, then the
 * revision to continue after, the snapshot's last revision, now, and a
 * row limit. */
#define SQLITE_ITERATE_SQL                                                     \
  "SELECT revision, subsystem, peer, key, value, expiry, writer "           \
  "FROM records "                                                             \
  "WHERE %s AND revision > ? AND revision <= ? AND expiry > ? "               \
  "ORDER BY revision LIMIT ?"

/* The second expiry term repeats the partial index's condition, which is
 * what lets SQLite use that index. */
#define SQLITE_PURGE_SQL                                                       \
  "DELETE FROM records WHERE revision IN (SELECT revision FROM records "      \
  "WHERE expiry <= ?1 AND expiry < 9223372036854775807 "                      \
  "ORDER BY expiry LIMIT ?2)"

#endif
