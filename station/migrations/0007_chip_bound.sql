-- Chip-bound personalization (issue #15, docs/station.md "The channel" and "Key sources").
--
-- The journal says for every device which channel it was personalized over (scp11a, or plain for a
-- device without a vendor identity) and where its keys came from (generate, pool, device). Rows
-- journaled before this migration have neither (NULL).
ALTER TABLE journal.device
  ADD COLUMN channel text CHECK (channel IN ('scp11a', 'plain')),
  ADD COLUMN key_source text CHECK (key_source IN ('generate', 'pool', 'device')),
  -- --key-source device: SHA-256 (hex) of the attestation statement of each key, as signed by the chip.
  ADD COLUMN identity_statement_sha256 text CHECK (identity_statement_sha256 ~ '^[0-9A-F]{64}$'),
  ADD COLUMN transport_statement_sha256 text CHECK (transport_statement_sha256 ~ '^[0-9A-F]{64}$');

-- The secret DB keeps the key source and the statements' hashes with the device: an issuer can tell
-- later that a device's keys were made in its chip, and by which statements.
ALTER TABLE secret.device
  ADD COLUMN key_source text CHECK (key_source IN ('generate', 'pool', 'device')),
  ADD COLUMN identity_statement_sha256 text CHECK (identity_statement_sha256 ~ '^[0-9A-F]{64}$'),
  ADD COLUMN transport_statement_sha256 text CHECK (transport_statement_sha256 ~ '^[0-9A-F]{64}$');

-- The highest attestation counter seen for each chip: the chip's counter grows with every statement
-- and never resets, so a statement at or below this one is a replay (core::chip::verify_statement).
-- Kept apart from journal.device: a voided row's statements still count.
CREATE TABLE journal.chip_attestation (
  chip_id      text PRIMARY KEY CHECK (chip_id ~ '^[0-9A-F]{20}$'),
  last_counter bigint NOT NULL CHECK (last_counter >= 0 AND last_counter <= 4294967295),
  updated_at   timestamptz NOT NULL DEFAULT now()
);
