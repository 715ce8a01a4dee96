-- The transparency log of the public DB (docs/transparency.md, "The public DB's log"; issue #18).
--
-- Leaf indexes are dense and gap-free, in commit order. A plain sequence is neither: nextval() is
-- never rolled back (a failed or refused publish leaves a hole) and two transactions can commit in
-- the other order than they drew their numbers, so an integrator reading "everything after n" could
-- pass over a number that commits later. Instead the publish statement increments the one row of
-- log_sequence in the same transaction as the record insert: the row lock is held to the commit, so
-- the next publisher reads the incremented value only after this transaction committed (or reads the
-- old value again after a rollback). Index k+1 therefore always commits after index k, and a reader
-- that sees k+1 sees k. The cost is that the publish transactions of concurrent batches serialize on
-- that row (scripts/bench.sh, part "tlog", measures it).
CREATE TABLE log_sequence (
  singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
  next_index bigint NOT NULL CHECK (next_index >= 0)
);

-- One row per logged record: its index and its 62-byte entry (core/record_leaf.h). record_seq is
-- records.seq; no foreign key, so that TRUNCATE records still meets the permanence trigger (0001)
-- rather than a foreign key error, and rows are only ever inserted by the publish statement.
CREATE TABLE log_entries (
  leaf_index bigint PRIMARY KEY CHECK (leaf_index >= 0),
  record_seq bigint NOT NULL UNIQUE,
  entry      bytea NOT NULL CHECK (length(entry) = 62)
);

-- Records published before this migration are logged in the order they were published.
INSERT INTO log_entries (leaf_index, record_seq, entry)
  SELECT row_number() OVER (ORDER BY seq) - 1, seq,
         '\x4b4c4c4501'::bytea || decode(chip_id, 'hex') || convert_to(imei, 'UTF8') || decode(record_hash, 'hex')
  FROM records;
INSERT INTO log_sequence (next_index) SELECT count(*) FROM records;

-- C2SP tlog-tiles: hash tiles and entry bundles by their path ("tile/0/x001/234", "tile/entries/5.p/7").
-- A partial tile's path names its width, so a path always names the same bytes: rows never change.
CREATE TABLE log_tiles (
  path text PRIMARY KEY CHECK (path ~ '^tile/(entries|[0-9]{1,2})/[x0-9/]+(\.p/[0-9]{1,3})?$'),
  data bytea NOT NULL
);

-- Every checkpoint the integrator signed (C2SP tlog-checkpoint in a signed note), one per tree size.
CREATE TABLE log_checkpoints (
  tree_size bigint PRIMARY KEY CHECK (tree_size >= 0),
  root      bytea NOT NULL CHECK (length(root) = 32),
  note      text NOT NULL,
  signed_at timestamptz NOT NULL DEFAULT now()
);

-- Permanent like the records (0001): entries, tiles and checkpoints are never changed or removed,
-- and the counter only counts up by one.
CREATE FUNCTION log_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'the transparency log is append-only: % on % refused', TG_OP, TG_TABLE_NAME
    USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE FUNCTION log_sequence_step() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.next_index <> OLD.next_index + 1 OR NEW.singleton <> OLD.singleton THEN
    RAISE EXCEPTION 'the log sequence only counts up by one' USING ERRCODE = 'insufficient_privilege';
  END IF;
  RETURN NEW;
END
$$;

CREATE TRIGGER log_entries_no_update_delete BEFORE UPDATE OR DELETE ON log_entries
  FOR EACH ROW EXECUTE FUNCTION log_refuse_change();
CREATE TRIGGER log_entries_no_truncate BEFORE TRUNCATE ON log_entries
  FOR EACH STATEMENT EXECUTE FUNCTION log_refuse_change();
CREATE TRIGGER log_tiles_no_update_delete BEFORE UPDATE OR DELETE ON log_tiles
  FOR EACH ROW EXECUTE FUNCTION log_refuse_change();
CREATE TRIGGER log_tiles_no_truncate BEFORE TRUNCATE ON log_tiles
  FOR EACH STATEMENT EXECUTE FUNCTION log_refuse_change();
CREATE TRIGGER log_checkpoints_no_update_delete BEFORE UPDATE OR DELETE ON log_checkpoints
  FOR EACH ROW EXECUTE FUNCTION log_refuse_change();
CREATE TRIGGER log_checkpoints_no_truncate BEFORE TRUNCATE ON log_checkpoints
  FOR EACH STATEMENT EXECUTE FUNCTION log_refuse_change();
CREATE TRIGGER log_sequence_counts_up BEFORE UPDATE ON log_sequence
  FOR EACH ROW EXECUTE FUNCTION log_sequence_step();
CREATE TRIGGER log_sequence_no_delete BEFORE DELETE ON log_sequence
  FOR EACH ROW EXECUTE FUNCTION log_refuse_change();
CREATE TRIGGER log_sequence_no_truncate BEFORE TRUNCATE ON log_sequence
  FOR EACH STATEMENT EXECUTE FUNCTION log_refuse_change();

GRANT SELECT, UPDATE ON log_sequence TO keyline_backupdb;
GRANT SELECT, INSERT ON log_entries, log_tiles, log_checkpoints TO keyline_backupdb;
