-- migrate-3-4.sql - from schema version 3 to 4, run in one transaction.
--
-- Version 4 keeps a history of changes for watchers to resume from (see
-- peerstore.sql).  It begins empty, at the current revision: a resume
-- from before the migration is told the history does not reach back.

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

INSERT INTO meta (name, value)
  SELECT 'history_first', value FROM meta WHERE name = 'revision';
INSERT INTO meta (name, value) VALUES ('history_id', abs(random()));
