-- The records hash-partitioned by chip ID (issue #20; docs/decisions.md, "Records partitioned by chip
-- ID, the IMEI unique in record_imei"). Sixteen partitions: each one's indexes and vacuum stay a
-- sixteenth of the table, and a lookup by chip ID touches one partition.
--
-- A unique index of a partitioned table must contain the partition key (PostgreSQL 15 manual
-- 5.11.2.3), so records keeps chip_id unique (its primary key) but cannot keep imei unique itself.
-- record_imei (imei PRIMARY KEY), an ordinary table, does: a trigger inserts a record's IMEI there in
-- the same statement as the record, so a second record with a taken IMEI fails as a whole (23505),
-- the record row and its log index with it, and the first writer wins as before. A concurrent
-- inserter of the same IMEI waits for the first one's commit (unique index insertion), as for chip_id.
--
-- The existing rows are copied over in batches of 100,000 by seq, inside this migration's one
-- transaction (the table is locked for it; docs/api.md, "Database and permanence", gives the time
-- measured for a million records). seq and the values are copied unchanged, so log_entries.record_seq
-- (0003) still names each record's log entry.

ALTER TABLE records RENAME TO records_unpartitioned;
ALTER TABLE records_unpartitioned RENAME CONSTRAINT records_pkey TO records_unpartitioned_pkey;
ALTER TABLE records_unpartitioned RENAME CONSTRAINT records_chip_id_key TO records_unpartitioned_chip_id_key;
ALTER TABLE records_unpartitioned RENAME CONSTRAINT records_imei_key TO records_unpartitioned_imei_key;
-- The sequence outlives the old table (DROP TABLE would take an owned sequence with it).
ALTER SEQUENCE records_seq_seq OWNED BY NONE;

CREATE TABLE records (
  seq          bigint NOT NULL DEFAULT nextval('records_seq_seq'),
  chip_id      text NOT NULL CHECK (chip_id ~ '^[0-9A-F]{20}$'),
  imei         text NOT NULL CHECK (imei ~ '^[0-9]{15}$'),
  record_hash  text NOT NULL CHECK (record_hash ~ '^[0-9A-F]{64}$'),
  backup       bytea NOT NULL,
  identity_der bytea NOT NULL,
  body_json    text NOT NULL,
  published_at timestamptz NOT NULL,
  PRIMARY KEY (chip_id)
) PARTITION BY HASH (chip_id);

-- Not unique: seq orders the preload and joins log_entries, imei serves lookups and the conflict
-- query; their uniqueness is the sequence's and record_imei's.
CREATE INDEX records_seq_idx ON records (seq);
CREATE INDEX records_imei_idx ON records (imei);

CREATE TABLE record_imei (
  imei    text PRIMARY KEY,
  chip_id text NOT NULL
);

-- SECURITY DEFINER: the server role inserts records, never IMEI claims of its own (least privilege:
-- it could otherwise block an IMEI without publishing anything); search_path pinned for a definer.
CREATE FUNCTION records_claim_imei() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = public, pg_temp AS $$
BEGIN
  INSERT INTO record_imei (imei, chip_id) VALUES (NEW.imei, NEW.chip_id);
  RETURN NULL;
END
$$;

-- Permanence as 0001: row triggers on the partitioned table apply to every partition; TRUNCATE of
-- one partition does not fire its parent's statement trigger, so each partition has its own.
CREATE TRIGGER records_imei_unique AFTER INSERT ON records
  FOR EACH ROW EXECUTE FUNCTION records_claim_imei();
CREATE TRIGGER records_no_update_delete BEFORE UPDATE OR DELETE ON records
  FOR EACH ROW EXECUTE FUNCTION records_refuse_change();
CREATE TRIGGER records_no_truncate BEFORE TRUNCATE ON records
  FOR EACH STATEMENT EXECUTE FUNCTION records_refuse_change();
CREATE TRIGGER record_imei_no_update_delete BEFORE UPDATE OR DELETE ON record_imei
  FOR EACH ROW EXECUTE FUNCTION records_refuse_change();
CREATE TRIGGER record_imei_no_truncate BEFORE TRUNCATE ON record_imei
  FOR EACH STATEMENT EXECUTE FUNCTION records_refuse_change();

DO $$
DECLARE
  part text;
BEGIN
  FOR i IN 0..15 LOOP
    part := format('records_p%s', lpad(i::text, 2, '0'));
    EXECUTE format('CREATE TABLE %I PARTITION OF records FOR VALUES WITH (MODULUS 16, REMAINDER %s)', part, i);
    EXECUTE format('CREATE TRIGGER %I BEFORE TRUNCATE ON %I FOR EACH STATEMENT EXECUTE FUNCTION records_refuse_change()',
                   part || '_no_truncate', part);
  END LOOP;
END
$$;

DO $$
DECLARE
  last_seq bigint := 0;
  top bigint;
BEGIN
  SELECT coalesce(max(seq), 0) INTO top FROM records_unpartitioned;
  WHILE last_seq < top LOOP
    INSERT INTO records (seq, chip_id, imei, record_hash, backup, identity_der, body_json, published_at)
      SELECT seq, chip_id, imei, record_hash, backup, identity_der, body_json, published_at
      FROM records_unpartitioned WHERE seq > last_seq AND seq <= last_seq + 100000 ORDER BY seq;
    last_seq := last_seq + 100000;
  END LOOP;
END
$$;

DROP TABLE records_unpartitioned;
ALTER SEQUENCE records_seq_seq OWNED BY records.seq;

GRANT SELECT, INSERT ON records TO keyline_backupdb;
GRANT SELECT ON record_imei TO keyline_backupdb;
