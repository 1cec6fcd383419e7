-- migrate-1-2.sql - from schema version 1 to 2, run in one transaction.
--
-- Version 1 kept GNUnet PEERSTORE's table layout (peerstoredata) and had
-- no revisions.  Records get revisions in their rowid order, which was
-- their insertion order; a NULL value becomes an empty one.

CREATE TABLE meta (
  name TEXT PRIMARY KEY,
  value INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE records (
  revision INTEGER PRIMARY KEY,
  subsystem BLOB NOT NULL,
  peer BLOB NOT NULL,
  key BLOB NOT NULL,
  value BLOB NOT NULL,
  expiry INTEGER NOT NULL
);

INSERT INTO records (revision, subsystem, peer, key, value, expiry)
  SELECT rowid, CAST(sub_system AS BLOB), peer_id, CAST(key AS BLOB),
         COALESCE(value, X''), expiry
  FROM peerstoredata
  ORDER BY rowid;

INSERT INTO meta (name, value)
  SELECT 'revision', COALESCE(MAX(revision), 0) FROM records;

DROP TABLE peerstoredata;

CREATE INDEX records_by_subsystem ON records (subsystem);
CREATE INDEX records_by_peer ON records (subsystem, peer);
CREATE INDEX records_by_key ON records (subsystem, key);
CREATE INDEX records_by_triple ON records (subsystem, peer, key);
CREATE INDEX records_by_expiry ON records (expiry)
  WHERE expiry < 9223372036854775807;
