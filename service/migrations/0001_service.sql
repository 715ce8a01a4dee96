-- keyline-service: the device service server's own database (docs/service.md "Database").
-- It holds no key: a device's static keys derive on the token from the master and the chip ID.

-- Devices the service has seen: the public DB's record verified to the root, cached, and the
-- derivation version (KVN) the device answered (a later session may not go below it).
CREATE TABLE device (
  chip_id        text PRIMARY KEY CHECK (chip_id ~ '^[0-9A-F]{20}$'),
  imei           text NOT NULL UNIQUE CHECK (imei ~ '^[0-9]{15}$'),
  record_hash    text NOT NULL,
  key_version    int CHECK (key_version IN (1, 2)),
  first_seen     timestamptz NOT NULL DEFAULT now(),
  last_session   timestamptz
);

-- A campaign pushes one item or one module to a list of IMEIs; rerunning the same campaign resumes it.
CREATE TABLE campaign (
  name           text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9._-]{1,64}$'),
  kind           text NOT NULL CHECK (kind IN ('item', 'module')),
  payload_sha256 text NOT NULL,
  created_at     timestamptz NOT NULL DEFAULT now()
);

-- One job per (campaign, IMEI): pending until a session applies it or the device refuses it.
CREATE TABLE job (
  id             bigserial PRIMARY KEY,
  campaign       text NOT NULL REFERENCES campaign (name),
  imei           text NOT NULL CHECK (imei ~ '^[0-9]{15}$'),
  kind           text NOT NULL CHECK (kind IN ('item', 'module')),
  dgi            int,
  payload        bytea NOT NULL,
  module_name    text,
  module_version bigint,
  state          text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'applied', 'failed')),
  detail         text,
  updated_at     timestamptz NOT NULL DEFAULT now(),
  UNIQUE (campaign, imei)
);
CREATE INDEX job_pending ON job (imei) WHERE state = 'pending';

-- Every session's end, per device.
CREATE TABLE session_log (
  id             bigserial PRIMARY KEY,
  chip_id        text NOT NULL,
  started_at     timestamptz NOT NULL,
  finished_at    timestamptz NOT NULL DEFAULT now(),
  ok             boolean NOT NULL,
  kvn            int,
  result         jsonb NOT NULL
);
CREATE INDEX session_log_chip ON session_log (chip_id);
