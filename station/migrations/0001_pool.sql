-- Temporary secure database (seed 002, database 140): IMEIs from the line's TAC ranges and
-- pre-generated device keys. Rows are deleted when claimed, in the same transaction that records
-- the claim in the journal, so nothing is ever issued twice (docs/design.md section 9, invariant 3).
CREATE SCHEMA IF NOT EXISTS pool;

CREATE TABLE pool.imei (
  imei        text PRIMARY KEY CHECK (imei ~ '^[0-9]{15}$'),
  tac         text NOT NULL CHECK (tac ~ '^[0-9]{8}$'),
  source      text NOT NULL,              -- 'generate' or 'import:<file>'
  added_at    timestamptz NOT NULL DEFAULT now()
) WITH (autovacuum_vacuum_scale_factor = 0.0, autovacuum_vacuum_threshold = 1000,
        autovacuum_vacuum_cost_delay = 0);
-- Claimed rows are deleted at line speed: aggressive autovacuum keeps SKIP LOCKED scans short.

-- Every IMEI this database ever handed out or voided, so a re-import of the same CSV cannot bring
-- an issued IMEI back into the pool.
CREATE TABLE pool.imei_spent (
  imei        text PRIMARY KEY,
  spent_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE pool.device_key (
  id                    bigserial PRIMARY KEY,
  identity_wrapped      bytea NOT NULL,   -- PKCS#8 P-256, encrypted by the token's wrapping key
  identity_public       bytea NOT NULL,   -- SubjectPublicKeyInfo DER
  transport_wrapped     bytea NOT NULL,   -- X25519 scalar, encrypted by the token's wrapping key
  transport_public      bytea NOT NULL,   -- 32 bytes
  wrap_key_label        text NOT NULL,
  added_at              timestamptz NOT NULL DEFAULT now()
) WITH (autovacuum_vacuum_scale_factor = 0.0, autovacuum_vacuum_threshold = 1000,
        autovacuum_vacuum_cost_delay = 0);
