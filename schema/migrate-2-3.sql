-- migrate-2-3.sql - from schema version 2 to 3, run in one transaction.
--
-- Version 3 records the uid of each record's writer.  Records stored
-- before are marked as written by an unknown uid (-1).

ALTER TABLE records ADD COLUMN writer INTEGER NOT NULL DEFAULT -1;
