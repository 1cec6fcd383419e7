/* postgres_queries.h - the PostgreSQL plugin's queries by filter, shared
 * with the test that checks (EXPLAIN) that the schema's indexes serve
 * them in revision order, without a sort. */
#ifndef PEERSTORE_POSTGRES_QUERIES_H
#define PEERSTORE_POSTGRES_QUERIES_H

#include "plugin_util.h" /* F_SS .. F_COUNT */

/* Every filter statement takes $1 subsystem, $2 peer, $3 key (bytea, NULL
 * when the filter leaves it out); each filter has a statement of its
 * own, so that each is planned on its own index. */
static const char *const pg_filter_where[F_COUNT] = {
    "subsystem = $1", "subsystem = $1 AND peer = $2",
    "subsystem = $1 AND key = $3", "subsystem = $1 AND peer = $2 AND key = $3"};

/* printf format: the WHERE clause above.  $4 the revision to continue
 * after, $5 the snapshot's last revision, $6 now, $7 a row limit.  The
 * same columns as a change (revision, kind, stored, ...), kind 1. */
#define PG_ITERATE_SQL                                                         \
  "SELECT revision, 1::smallint, revision, subsystem, peer, key, value, "     \
  "expiry, writer FROM peerstore_records "                                    \
  "WHERE %s AND revision > $4 AND revision <= $5 AND expiry > $6 "            \
  "ORDER BY revision LIMIT $7"

/* printf format: the WHERE clause above, three times.  The changes after
 * revision $4 up to $6, at most $5 of them, in revision order (the same
 * three arms as the SQLite plugin's, docs/sqlite.md): a live record is
 * its own STORE, the history holds removals and refreshed stores, a
 * removed record's STORE is read from its removal row.  Each arm takes
 * its first $5 rows from its index, in order, and PostgreSQL merges them
 * (Merge Append); without the arms' own ORDER BY and LIMIT it would not,
 * and would sort every row of the window instead. */
#define PG_HISTORY_SQL                                                         \
  "(SELECT revision, 1::smallint AS kind, revision AS stored, subsystem, "    \
  "peer, key, value, expiry, writer FROM peerstore_records "                  \
  "WHERE %s AND revision > $4 AND revision <= $6 ORDER BY revision "          \
  "LIMIT $5) "                                                                \
  "UNION ALL "                                                                \
  "(SELECT revision, kind, stored, subsystem, peer, key, value, expiry, "     \
  "writer FROM peerstore_history WHERE %s AND revision > $4 "                 \
  "AND revision <= $6 ORDER BY revision LIMIT $5) "                           \
  "UNION ALL "                                                                \
  "(SELECT stored, 1::smallint, stored, subsystem, peer, key, value, "        \
  "expiry, writer FROM peerstore_history WHERE %s AND kind <> 1 "             \
  "AND stored > $4 AND stored <= $6 ORDER BY stored LIMIT $5) "               \
  "ORDER BY 1 LIMIT $5"

/* Every change after $1 up to UP (an SQL expression), whatever its
 * subsystem, unordered: what other services committed, for the hook. */
#define PG_FEED_ARMS(UP)                                                       \
  "SELECT revision, 1::smallint AS kind, revision AS stored, subsystem, "     \
  "peer, key, value, expiry, writer FROM peerstore_records "                  \
  "WHERE revision > $1 AND revision <= " UP " "                               \
  "UNION ALL "                                                                \
  "SELECT revision, kind, stored, subsystem, peer, key, value, expiry, "      \
  "writer FROM peerstore_history WHERE revision > $1 AND revision <= " UP     \
  " UNION ALL "                                                               \
  "SELECT stored, 1::smallint, stored, subsystem, peer, key, value, expiry, " \
  "writer FROM peerstore_history WHERE kind <> 1 AND stored > $1 "            \
  "AND stored <= " UP

/* The changes after $1 up to $2, in order (the writers' lock held). */
#define PG_FEED_SQL "SELECT * FROM (" PG_FEED_ARMS("$2") ") c ORDER BY 1"

/* Right after the lock, in its transaction: the changes after $1 up to
 * the revision it read or $2, whichever is less, in order. */
#define PG_FEED_LOCKED_SQL                                                     \
  "SELECT * FROM (" PG_FEED_ARMS(                                             \
      "least(current_setting('peerstore.revision')::bigint, $2)")            \
  ") c ORDER BY 1"

/* Without the lock: the committed revision, the history's start and the
 * record count (columns 0-2), and the changes after $1 up to that
 * revision or $2, whichever is less (columns 3-11, NULL when there are
 * none) - one statement, so one snapshot: one round trip where a
 * transaction would take four. */
#define PG_FEED_HEAD_SQL                                                       \
  "SELECT h.rev, h.first, h.records, c.* FROM (SELECT "                       \
  "(SELECT value FROM peerstore_meta WHERE name = 'revision') AS rev, "       \
  "(SELECT value FROM peerstore_meta WHERE name = 'history_first') AS first, " \
  "(SELECT value FROM peerstore_meta WHERE name = 'records') AS records) h "  \
  "LEFT JOIN LATERAL (" PG_FEED_ARMS("least(h.rev, $2)") ") c ON true "       \
  "ORDER BY c.revision"

#define PG_HEAD_SQL                                                            \
  "SELECT (SELECT value FROM peerstore_meta WHERE name = 'revision'), "       \
  "(SELECT value FROM peerstore_meta WHERE name = 'history_first'), "         \
  "(SELECT value FROM peerstore_meta WHERE name = 'records')"

/* Rows and bytes of the history (each row counted as in the SQLite
 * plugin: its strings, value and 72 bytes), as the writers count them:
 * in peerstore_meta, and what the transaction in progress added. */
#define PG_HIST_SIZE_SQL                                                       \
  "SELECT (SELECT value FROM peerstore_meta WHERE name = 'history_rows') + " \
  "peerstore_pending('peerstore.history_rows'), "                            \
  "(SELECT value FROM peerstore_meta WHERE name = 'history_bytes') + "       \
  "peerstore_pending('peerstore.history_bytes')"

/* $1 the purge lock's key, $2 now: whether this service may purge (no
 * other is), whether anything has expired, the history's rows and bytes
 * (counted by the writers: no scan), and the revisions it spans (what
 * history_events limits). */
#define PG_PURGE_CHECK_SQL                                                     \
  "SELECT pg_try_advisory_xact_lock($1), "                                    \
  "EXISTS (SELECT 1 FROM peerstore_records WHERE expiry <= $2 "               \
  "AND expiry < 9223372036854775807), "                                       \
  "(SELECT value FROM peerstore_meta WHERE name = 'history_rows'), "          \
  "(SELECT value FROM peerstore_meta WHERE name = 'history_bytes'), "         \
  "(SELECT value FROM peerstore_meta WHERE name = 'revision') - "             \
  "(SELECT value FROM peerstore_meta WHERE name = 'history_first')"

/* The newest live record of a triple: $1-$3, $4 now. */
#define PG_NEWEST_SQL                                                          \
  "SELECT coalesce(max(revision), 0) FROM peerstore_records "                 \
  "WHERE subsystem = $1 AND peer = $2 AND key = $3 AND expiry > $4"

#endif
