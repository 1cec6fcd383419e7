-- postgres-functions.sql - the PostgreSQL plugin's functions, for schema
-- version 2.  Run after postgres.sql on a new database, and after the
-- migrations on an older one: CREATE OR REPLACE, so running it again
-- changes nothing.  A store, remove or purge is one call each, so one
-- round trip; the writers' lock and the counters are taken and written
-- back by peerstore_lock() and peerstore_unlock().

-- Takes the writers' lock; returns the revision, history start and
-- record count as they are once it is held, and leaves the revision in a
-- setting local to the transaction, where the functions below count on
-- from it (and the history's rows and bytes added, from 0).  Settings
-- local to the transaction go back with a rolled-back savepoint, as the
-- rows do.
CREATE OR REPLACE FUNCTION peerstore_lock(OUT revision bigint,
                                          OUT history_first bigint,
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
  PERFORM set_config('peerstore.history_rows', '0', true);
  PERFORM set_config('peerstore.history_bytes', '0', true);
END $$;

-- A counter of this transaction: 0 when it has none yet, as in a
-- transaction that a service of schema version 1 began with its
-- peerstore_lock() before a migration replaced the functions.
CREATE OR REPLACE FUNCTION peerstore_pending(name text) RETURNS bigint
LANGUAGE sql STABLE AS $$
  SELECT coalesce(nullif(current_setting(name, true), ''), '0')::bigint
$$;

-- Counts rows history rows of bytes bytes into (or, negative, out of) the
-- history, for peerstore_unlock() to write back.  A row counts as its
-- strings, value and 72 bytes, as in the SQLite plugin.
CREATE OR REPLACE FUNCTION peerstore_kept(rows bigint, bytes bigint)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM set_config('peerstore.history_rows',
    (peerstore_pending('peerstore.history_rows') + rows)::text, true);
  PERFORM set_config('peerstore.history_bytes',
    (peerstore_pending('peerstore.history_bytes') + bytes)::text, true);
END $$;

-- Writes the revision counted on back, and adds delta to the records
-- held; the last statement of a write transaction.  Rings the doorbell of
-- the services listening on channel peerstore (a hint only: they read
-- what changed from the tables).  Returns the revision.
CREATE OR REPLACE FUNCTION peerstore_unlock(delta bigint) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
  r bigint := current_setting('peerstore.revision')::bigint;
  hr bigint := peerstore_pending('peerstore.history_rows');
  hb bigint := peerstore_pending('peerstore.history_bytes');
BEGIN
  UPDATE peerstore_meta SET value = r WHERE name = 'revision';
  IF delta <> 0 THEN
    UPDATE peerstore_meta SET value = value + delta WHERE name = 'records';
  END IF;
  IF hr <> 0 OR hb <> 0 THEN
    UPDATE peerstore_meta SET value = value + CASE name
      WHEN 'history_rows' THEN hr ELSE hb END
      WHERE name IN ('history_rows', 'history_bytes');
  END IF;
  PERFORM pg_notify('peerstore', r::text);
  RETURN r;
END $$;

-- Takes record o out of the table as a change of kind k with the next
-- revision, keeping it in the history when keep is set.
CREATE OR REPLACE FUNCTION peerstore_retire(o peerstore_records, k smallint,
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
    PERFORM peerstore_kept(1, length(o.subsystem) + length(o.key)
                              + length(o.value) + 72);
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
CREATE OR REPLACE FUNCTION peerstore_store(ss bytea, p bytea, k bytea, v bytea,
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
        PERFORM peerstore_kept(1, length(ss) + length(k) + length(v) + 72);
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
CREATE OR REPLACE FUNCTION peerstore_remove(ss bytea, p bytea, k bytea, upto bigint,
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
CREATE OR REPLACE FUNCTION peerstore_expire(now bigint, lim integer, keep boolean)
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
-- to max_bytes; returns the new history_first.  The bytes come from the
-- counters, so only the oldest rows, those it removes, are read.
CREATE OR REPLACE FUNCTION peerstore_trim(max_events bigint, max_bytes bigint)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
  last bigint := current_setting('peerstore.revision')::bigint;
  cut bigint;
  total bigint;
  by_bytes bigint;
  n bigint;
  b bigint;
BEGIN
  SELECT value INTO cut FROM peerstore_meta WHERE name = 'history_first';
  IF last - max_events > cut THEN
    cut := last - max_events;
  END IF;
  WITH d AS (DELETE FROM peerstore_history WHERE revision <= cut
             RETURNING length(subsystem) + length(key) + length(value) + 72
               AS size)
  SELECT count(*), coalesce(sum(size), 0) INTO n, b FROM d;
  PERFORM peerstore_kept(-n, -b);
  SELECT value + peerstore_pending('peerstore.history_bytes')
    INTO total FROM peerstore_meta WHERE name = 'history_bytes';
  IF total > max_bytes THEN
    -- The oldest rows until what is left fits: a running sum in
    -- revision order, which stops at the first row that gets there.
    SELECT t.revision INTO by_bytes FROM (
      SELECT h.revision, sum(length(h.subsystem) + length(h.key)
                             + length(h.value) + 72)
               OVER (ORDER BY h.revision) AS running
      FROM peerstore_history h WHERE h.revision > cut) t
    WHERE t.running >= total - max_bytes ORDER BY t.revision LIMIT 1;
    IF by_bytes IS NOT NULL THEN
      cut := by_bytes;
      WITH d AS (DELETE FROM peerstore_history WHERE revision <= cut
                 RETURNING length(subsystem) + length(key) + length(value)
                   + 72 AS size)
      SELECT count(*), coalesce(sum(size), 0) INTO n, b FROM d;
      PERFORM peerstore_kept(-n, -b);
    END IF;
  END IF;
  UPDATE peerstore_meta SET value = cut WHERE name = 'history_first';
  RETURN cut;
END $$;
