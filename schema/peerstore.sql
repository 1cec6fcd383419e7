-- peerstore.sql - the SQLite plugin's schema, version 5 (the current one).
-- Compiled into the plugin at build time; run once on an empty database.
-- The plugin sets PRAGMA user_version and application_id itself.

-- The last revision given out is the largest of 'revision' here and the
-- revisions the records and history rows carry.  Revisions are never
-- reused, even after the rows that carried them are gone, so a commit
-- whose last revision no row it wrote carries (a remove without a
-- history, a trim of the history) writes it here.
CREATE TABLE meta (
  name TEXT PRIMARY KEY,
  value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO meta (name, value) VALUES ('revision', 0);
-- The history holds every change after history_first; history_id names
-- this database's line of revisions, so that a resume point from another
-- database (or one recreated under the same name) is never taken for one
-- of its own.
INSERT INTO meta (name, value) VALUES ('history_first', 0);
INSERT INTO meta (name, value) VALUES ('history_id', abs(random()));

-- One row per record.  The revision is the rowid: the table itself is in
-- stored order.  Subsystem and key are BLOBs so that any byte but NUL
-- round-trips exactly; expiry is microseconds since the epoch, with
-- 9223372036854775807 meaning never; writer is the uid of the client that
-- stored the record (-1: not known, for records from before version 3).
CREATE TABLE records (
  revision INTEGER PRIMARY KEY,
  subsystem BLOB NOT NULL,
  peer BLOB NOT NULL,
  key BLOB NOT NULL,
  value BLOB NOT NULL,
  expiry INTEGER NOT NULL,
  writer INTEGER NOT NULL DEFAULT -1
);

-- One index per filter.  SQLite appends the rowid to every index entry,
-- so each one yields its filter's records already in revision order.
CREATE INDEX records_by_subsystem ON records (subsystem);
CREATE INDEX records_by_peer ON records (subsystem, peer);
CREATE INDEX records_by_key ON records (subsystem, key);
CREATE INDEX records_by_triple ON records (subsystem, peer, key);
-- For purging; records that never expire are left out of it.
CREATE INDEX records_by_expiry ON records (expiry)
  WHERE expiry < 9223372036854775807;

-- The history of changes the records table no longer shows, for watchers
-- that resume (DESIGN.md section 7).  A live record is its own STORE
-- event, so a store costs nothing here; a row is written only when a
-- record leaves the table - removed, dropped by a REPLACE (kind 2) or
-- expired (kind 3), with the record as it was and the revision of the
-- store that wrote it (stored) - or when a refresh moves a record to a
-- new revision, keeping its earlier store (kind 1, stored = revision).
-- The purge trims it to the last history_events revisions and
-- history_bytes.  history_by_stored serves the STORE events of removed
-- records in revision order.
CREATE TABLE history (
  revision INTEGER PRIMARY KEY,
  kind INTEGER NOT NULL,
  stored INTEGER NOT NULL,
  subsystem BLOB NOT NULL,
  peer BLOB NOT NULL,
  key BLOB NOT NULL,
  value BLOB NOT NULL,
  expiry INTEGER NOT NULL,
  writer INTEGER NOT NULL
);
CREATE INDEX history_by_stored ON history (stored) WHERE kind <> 1;
