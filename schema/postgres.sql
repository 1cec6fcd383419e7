-- postgres.sql - the PostgreSQL plugin's schema, version 1.
-- Compiled into the plugin at build time and run once, in one
-- transaction, on a database without it (under an advisory lock, so that
-- services starting together create it once).  Every name starts with
-- peerstore_, so the tables can share a database (or, through search_path
-- in the conninfo, live in a schema of their own).

-- The last revision given out (one sequence for every service on the
-- database), the history's start, this database's line of revisions, the
-- schema version, and how many records the table holds (kept by the
-- writers, as counting a large table is slow).  The revision row is also
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
  ('schema_version', 1),
  ('revision', (extract(epoch FROM now()) * 1000000)::bigint),
  ('history_first', (extract(epoch FROM now()) * 1000000)::bigint),
  ('records', 0),
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

-- Takes the writers' lock; returns the revision, history start and
-- record count as they are once it is held, and leaves the revision in a
-- setting local to the transaction, where the functions below count on
-- from it.
CREATE FUNCTION peerstore_lock(OUT revision bigint, OUT history_first bigint,
                               OUT records bigint)
LANGUAGE plpgsql AS $$
BEGIN
  SELECT m.value INTO revision FROM peerstore_meta m
    WHERE m.name = 'revision' FOR UPDATE;
  SELECT m.value INTO history_first FROM peerstore_meta m
    WHERE m.name = 'history_first';
  SELECT m.value INTO records FROM peerstore_meta m
    WHERE m.name = 'records';
  PERFORM set_config('peerstore.revision', revision::text, true);
END $$;

-- Writes the revision counted on back, and adds delta to the records
-- held; the last statement of a write transaction.  Rings the doorbell of
-- the services listening on channel peerstore (a hint only: they read
-- what changed from the tables).  Returns the revision.
CREATE FUNCTION peerstore_unlock(delta bigint) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
  r bigint := current_setting('peerstore.revision')::bigint;
BEGIN
  UPDATE peerstore_meta SET value = r WHERE name = 'revision';
  IF delta <> 0 THEN
    UPDATE peerstore_meta SET value = value + delta WHERE name = 'records';
  END IF;
  PERFORM pg_notify('peerstore', r::text);
  RETURN r;
END $$;

-- The rows the functions below return: changes, in revision order.
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

-- Takes record o out of the table as a change of kind k with the next
-- revision, keeping it in the history when keep is set.
CREATE FUNCTION peerstore_retire(o peerstore_records, k smallint,
                                 keep boolean)
RETURNS peerstore_change
LANGUAGE plpgsql AS $$
DECLARE
  r bigint := current_setting('peerstore.revision')::bigint + 1;
BEGIN
  PERFORM set_config('peerstore.revision', r::text, true);
  IF keep THEN
    INSERT INTO peerstore_history VALUES
      (r, k, o.revision, o.subsystem, o.peer, o.key, o.value, o.expiry,
       o.writer);
  END IF;
  DELETE FROM peerstore_records WHERE revision = o.revision;
  RETURN (r, k, o.revision, o.subsystem, o.peer, o.key, o.value, o.expiry,
          o.writer)::peerstore_change;
END $$;

-- One store (DESIGN.md section 1).  Returns the store (value left out:
-- the caller has it; stored is the refreshed record's earlier revision
-- for a refresh, else the store's own), then each record a REPLACE
-- dropped.  A MULTIPLE
-- store of a byte-identical value refreshes that record: it moves to the
-- new revision, its earlier store kept in the history when keep is set
-- and it is newer than history_first (hfirst).
CREATE FUNCTION peerstore_store(ss bytea, p bytea, k bytea, v bytea,
                                e bigint, w bigint, replace boolean,
                                keep boolean, hfirst bigint)
RETURNS SETOF peerstore_change
LANGUAGE plpgsql AS $$
DECLARE
  r bigint := current_setting('peerstore.revision')::bigint + 1;
  found bigint;
  o peerstore_records;
BEGIN
  PERFORM set_config('peerstore.revision', r::text, true);
  IF NOT replace THEN
    SELECT x.revision INTO found FROM peerstore_records x
      WHERE x.subsystem = ss AND x.peer = p AND x.key = k AND x.value = v
      LIMIT 1;
    IF found IS NOT NULL THEN
      IF keep AND found > hfirst THEN
        INSERT INTO peerstore_history
          SELECT x.revision, 1, x.revision, x.subsystem, x.peer, x.key,
                 x.value, x.expiry, x.writer
          FROM peerstore_records x WHERE x.revision = found;
      END IF;
      UPDATE peerstore_records SET revision = r, expiry = e, writer = w
        WHERE revision = found;
      RETURN NEXT (r, 1, found, ss, p, k, NULL, e, w)::peerstore_change;
      RETURN;
    END IF;
  END IF;
  INSERT INTO peerstore_records VALUES (r, ss, p, k, v, e, w);
  RETURN NEXT (r, 1, r, ss, p, k, NULL, e, w)::peerstore_change;
  IF replace THEN
    FOR o IN SELECT * FROM peerstore_records x
        WHERE x.subsystem = ss AND x.peer = p AND x.key = k
          AND x.revision < r ORDER BY x.revision LOOP
      RETURN NEXT peerstore_retire(o, 2::smallint, keep);
    END LOOP;
  END IF;
END $$;

-- Removes up to lim records matching the filter (peer, key NULL: any)
-- stored up to revision upto, oldest first.  Each branch is a query of its
-- own, so each is planned on its own index.
CREATE FUNCTION peerstore_remove(ss bytea, p bytea, k bytea, upto bigint,
                                 lim integer, keep boolean)
RETURNS SETOF peerstore_change
LANGUAGE plpgsql AS $$
DECLARE
  o peerstore_records;
BEGIN
  IF p IS NULL AND k IS NULL THEN
    FOR o IN SELECT * FROM peerstore_records x WHERE x.subsystem = ss
        AND x.revision <= upto ORDER BY x.revision LIMIT lim LOOP
      RETURN NEXT peerstore_retire(o, 2::smallint, keep);
    END LOOP;
  ELSIF k IS NULL THEN
    FOR o IN SELECT * FROM peerstore_records x WHERE x.subsystem = ss
        AND x.peer = p AND x.revision <= upto ORDER BY x.revision
        LIMIT lim LOOP
      RETURN NEXT peerstore_retire(o, 2::smallint, keep);
    END LOOP;
  ELSIF p IS NULL THEN
    FOR o IN SELECT * FROM peerstore_records x WHERE x.subsystem = ss
        AND x.key = k AND x.revision <= upto ORDER BY x.revision
        LIMIT lim LOOP
      RETURN NEXT peerstore_retire(o, 2::smallint, keep);
    END LOOP;
  ELSE
    FOR o IN SELECT * FROM peerstore_records x WHERE x.subsystem = ss
        AND x.peer = p AND x.key = k AND x.revision <= upto
        ORDER BY x.revision LIMIT lim LOOP
      RETURN NEXT peerstore_retire(o, 2::smallint, keep);
    END LOOP;
  END IF;
END $$;

-- Expires up to lim records whose expiry is <= now, soonest first.
CREATE FUNCTION peerstore_expire(now bigint, lim integer, keep boolean)
RETURNS SETOF peerstore_change
LANGUAGE plpgsql AS $$
DECLARE
  o peerstore_records;
BEGIN
  FOR o IN SELECT * FROM peerstore_records x WHERE x.expiry <= now
      AND x.expiry < 9223372036854775807 ORDER BY x.expiry, x.revision
      LIMIT lim LOOP
    RETURN NEXT peerstore_retire(o, 3::smallint, keep);
  END LOOP;
END $$;

-- Trims the history to the changes of the last max_events revisions and
-- to max_bytes (each row counted as its strings, value and 72 bytes);
-- returns the new history_first.
CREATE FUNCTION peerstore_trim(max_events bigint, max_bytes bigint)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
  last bigint;
  cut bigint;
  by_bytes bigint;
BEGIN
  SELECT value INTO last FROM peerstore_meta WHERE name = 'revision';
  SELECT value INTO cut FROM peerstore_meta WHERE name = 'history_first';
  IF last - max_events > cut THEN
    cut := last - max_events;
  END IF;
  SELECT max(t.revision) INTO by_bytes FROM (
    SELECT h.revision, sum(length(h.subsystem) + length(h.key)
                           + length(h.value) + 72)
             OVER (ORDER BY h.revision DESC) AS total
    FROM peerstore_history h WHERE h.revision > cut) t
  WHERE t.total > max_bytes;
  IF by_bytes IS NOT NULL AND by_bytes > cut THEN
    cut := by_bytes;
  END IF;
  DELETE FROM peerstore_history WHERE revision <= cut;
  UPDATE peerstore_meta SET value = cut WHERE name = 'history_first';
  RETURN cut;
END $$;
