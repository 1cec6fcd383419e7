-- postgres-migrate-1-2.sql - schema version 1 to 2.  The writers count
-- the history's rows and bytes in peerstore_meta, so that no service's
-- purge scans the history to learn them; counted once here.  Run under
-- the schema's advisory lock and the writers' lock (services of version
-- 1 still running wait, then go on with the new functions), followed by
-- postgres-functions.sql.
SELECT value FROM peerstore_meta WHERE name = 'revision' FOR UPDATE;
INSERT INTO peerstore_meta (name, value)
  SELECT 'history_rows', count(*) FROM peerstore_history;
INSERT INTO peerstore_meta (name, value)
  SELECT 'history_bytes',
         coalesce(sum(length(subsystem) + length(key) + length(value) + 72),
                  0)
  FROM peerstore_history;
UPDATE peerstore_meta SET value = 2 WHERE name = 'schema_version';
