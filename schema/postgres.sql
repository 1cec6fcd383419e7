-- postgres.sql - the PostgreSQL plugin's tables, schema version 2.
-- Compiled into the plugin at build time and run once, in one
-- transaction, on a database without them (under an advisory lock, so
-- that services starting together create them once), followed by
-- postgres-functions.sql.  A database of an older version is brought
-- forward by postgres-migrate-N-M.sql, then the functions are made again.
-- Every name starts with peerstore_, so the tables can share a database
-- (or, through search_path in the conninfo, live in a schema of their
-- own).

-- The last revision given out (one sequence for every service on the
-- database), the history's start, this database's line of revisions, the
-- schema version, and how many records the table holds and the rows and
-- bytes of the history (kept by the writers, as counting a large table is
-- slow, and every service's purge asks).  The revision row is also
-- the writers' lock: every write transaction takes it FOR UPDATE in its
-- first statement and writes the new value back before it commits, so
-- writers commit one at a time, in revision order, and a rollback gives
-- its revisions back (no gap).  Revisions begin at the server's clock in
-- microseconds, as the other plugins' do: a resume point from a database
-- dropped and made again under this name lies before this one's history.
CREATE TABLE peerstore_meta (
  name text PRIMARY KEY,
  value bigint NOT NULL
);
INSERT INTO peerstore_meta (name, value) VALUES
  ('schema_version', 2),
  ('revision', (extract(epoch FROM now()) * 1000000)::bigint),
  ('history_first', (extract(epoch FROM now()) * 1000000)::bigint),
  ('records', 0),
  ('history_rows', 0),
  ('history_bytes', 0),
  ('history_id', (random() * 9007199254740991)::bigint + 1);

-- One row per record, keyed by its revision.  Subsystem and key are bytea
-- so that any byte but NUL round-trips exactly; expiry is microseconds
-- since the epoch, 9223372036854775807 meaning never; writer is the uid of
-- the client that stored it.
CREATE TABLE peerstore_records (
  revision bigint PRIMARY KEY,
  subsystem bytea NOT NULL,
  peer bytea NOT NULL,
  key bytea NOT NULL,
  value bytea NOT NULL,
  expiry bigint NOT NULL,
  writer bigint NOT NULL
);
-- One index per filter, each ending in the revision, so that a filter's
-- records come out of its index in stored order (no sort, and a LIMIT
-- stops the scan).
CREATE INDEX peerstore_records_by_subsystem
  ON peerstore_records (subsystem, revision);
CREATE INDEX peerstore_records_by_peer
  ON peerstore_records (subsystem, peer, revision);
CREATE INDEX peerstore_records_by_key
  ON peerstore_records (subsystem, key, revision);
CREATE INDEX peerstore_records_by_triple
  ON peerstore_records (subsystem, peer, key, revision);
CREATE INDEX peerstore_records_by_expiry ON peerstore_records (expiry)
  WHERE expiry < 9223372036854775807;

-- The changes the records table no longer shows (as in the SQLite plugin,
-- docs/sqlite.md): a live record is its own STORE event; a row here is
-- written when a record leaves the table - removed or dropped by a
-- REPLACE (kind 2), expired (kind 3) - with the record as it was and the
-- revision of the store that wrote it (stored), or when a refresh moves a
-- record to a new revision (kind 1, stored = revision).
CREATE TABLE peerstore_history (
  revision bigint PRIMARY KEY,
  kind smallint NOT NULL,
  stored bigint NOT NULL,
  subsystem bytea NOT NULL,
  peer bytea NOT NULL,
  key bytea NOT NULL,
  value bytea NOT NULL,
  expiry bigint NOT NULL,
  writer bigint NOT NULL
);
CREATE INDEX peerstore_history_by_stored ON peerstore_history (stored)
  WHERE kind <> 1;

-- The rows the functions (postgres-functions.sql) return: changes, in
-- revision order.
CREATE TYPE peerstore_change AS (
  revision bigint,
  kind smallint,
  stored bigint,
  subsystem bytea,
  peer bytea,
  key bytea,
  value bytea,
  expiry bigint,
  writer bigint
);
