/* sqlite_queries.h - the SQLite plugin's queries by filter, shared with
 * the test that checks (EXPLAIN QUERY PLAN) that the schema's indexes
 * serve them without scanning unrelated rows or sorting. */
#ifndef PEERSTORE_SQLITE_QUERIES_H
#define PEERSTORE_SQLITE_QUERIES_H

#include "plugin_util.h" /* F_SS .. F_COUNT */

/* The schema these queries are written for (schema/peerstore.sql), kept
 * in PRAGMA user_version. */
#define SQLITE_SCHEMA_VERSION 5

static const char *const sqlite_filter_where[F_COUNT] = {
    "subsystem = ?", "subsystem = ? AND peer = ?", "subsystem = ? AND key = ?",
    "subsystem = ? AND peer = ? AND key = ?"};

/* Where each filter's records come from: its own index, named.  Each
 * index ends in the rowid, which is the revision, so it yields the
 * filter's records in stored order and a page of a long iteration seeks
 * to where the last one stopped.  Left to itself, SQLite picks by
 * statistics, once there are any (an administrator's ANALYZE, say), and
 * may then answer a (subsystem, peer, key) filter from the key index,
 * reading that key's record of every peer to find one peer's. */
static const char *const sqlite_filter_from[F_COUNT] = {
    "records INDEXED BY records_by_subsystem",
    "records INDEXED BY records_by_peer", "records INDEXED BY records_by_key",
    "records INDEXED BY records_by_triple"};

/* printf format: the FROM and WHERE clauses above.  Binds the filter,
 * then the revision to continue after, the snapshot's last revision,
 * now, and a row limit. */
#define SQLITE_ITERATE_SQL                                                     \
  "SELECT revision, subsystem, peer, key, value, expiry, writer "           \
  "FROM %s "                                                                  \
  "WHERE %s AND revision > ? AND revision <= ? AND expiry > ? "               \
  "ORDER BY revision LIMIT ?"

/* printf format: the FROM and WHERE clauses above.  The records a
 * remove takes, oldest first: binds the filter, the last revision it
 * removes (its snapshot), and a row limit. */
#define SQLITE_REMOVE_SQL                                                      \
  "SELECT revision, subsystem, peer, key, value, expiry, writer "           \
  "FROM %s WHERE %s AND revision <= ? ORDER BY revision LIMIT ?"

/* A MULTIPLE store's twin: a record of the triple ?1-?3 holding value ?4
 * already (its revision and writer). */
#define SQLITE_FIND_SQL                                                        \
  "SELECT revision, writer FROM records INDEXED BY records_by_triple "      \
  "WHERE subsystem = ?1 AND peer = ?2 AND key = ?3 AND value = ?4 LIMIT 1"

/* What a REPLACE at revision ?4 drops: the triple's earlier records,
 * oldest first. */
#define SQLITE_REPLACED_SQL                                                    \
  "SELECT revision, subsystem, peer, key, value, expiry, writer "           \
  "FROM records INDEXED BY records_by_triple WHERE subsystem = ?1 AND "     \
  "peer = ?2 AND key = ?3 AND revision < ?4 ORDER BY revision"

/* The revision of the triple's newest record unexpired at ?4 (NULL:
 * none), for a batch's condition. */
#define SQLITE_NEWEST_SQL                                                      \
  "SELECT max(revision) FROM records INDEXED BY records_by_triple "         \
  "WHERE subsystem = ?1 AND peer = ?2 AND key = ?3 AND expiry > ?4"

/* The records the purge expires, soonest first.  The second expiry term
 * repeats the partial index's condition, which is what lets SQLite use
 * that index. */
#define SQLITE_PURGE_SQL                                                       \
  "SELECT revision, subsystem, peer, key, value, expiry, writer "           \
  "FROM records WHERE expiry <= ?1 AND expiry < 9223372036854775807 "         \
  "ORDER BY expiry LIMIT ?2"

/* The last revision given out (schema version 5): the largest of the
 * ones rows carry and meta's, which a commit writes only when no row it
 * wrote carries its last revision (see run_group). */
#define SQLITE_REVISION_SQL                                                    \
  "SELECT max((SELECT value FROM meta WHERE name = 'revision'), "             \
  "(SELECT ifnull(max(revision), 0) FROM records), "                          \
  "(SELECT ifnull(max(revision), 0) FROM history))"

/* A history read's filter, with numbered parameters: ?1 subsystem, ?2
 * peer, ?3 key (each arm of the query below repeats it). */
static const char *const sqlite_history_where[F_COUNT] = {
    "subsystem = ?1", "subsystem = ?1 AND peer = ?2",
    "subsystem = ?1 AND key = ?3", "subsystem = ?1 AND peer = ?2 AND key = ?3"};

/* printf format: a FROM clause from sqlite_filter_from, then the
 * history's where clause above, three times.  The changes after
 * revision ?4 up to ?6, at most ?5 of them, in revision order: change
 * revision, kind, then the record (its store's revision first).
 * A live record is its own STORE; the history table holds removals and
 * the stores that refreshes moved on; a removed record's STORE is read
 * from its removal row.  Each arm comes in revision order from the table
 * or an index, so SQLite merges them and stops at the limit; the upper
 * bound caps what a narrow filter scans to find nothing. */
#define SQLITE_HISTORY_SQL                                                     \
  "SELECT revision, 1, revision, subsystem, peer, key, value, expiry, "       \
  "writer FROM %s WHERE %s AND revision > ?4 AND revision <= ?6 "            \
  "UNION ALL "                                                                \
  "SELECT revision, kind, stored, subsystem, peer, key, value, expiry, "      \
  "writer FROM history WHERE %s AND revision > ?4 AND revision <= ?6 "        \
  "UNION ALL "                                                                \
  "SELECT stored, 1, stored, subsystem, peer, key, value, expiry, writer "    \
  "FROM history WHERE %s AND kind <> 1 AND stored > ?4 AND stored <= ?6 "     \
  "ORDER BY 1 LIMIT ?5"

#endif
