-- The station's journal: one row per device being personalized, a state machine that survives
-- crashes (docs/design.md section 9, invariant 4), plus the signing audit log and the publication outbox.
CREATE SCHEMA IF NOT EXISTS journal;

CREATE TABLE journal.device (
  id                bigserial PRIMARY KEY,
  chip_id           text NOT NULL CHECK (chip_id ~ '^[0-9A-F]{20}$'),
  imei              text NOT NULL UNIQUE,   -- an IMEI belongs to one row forever, void rows included
  station_id        text NOT NULL,
  state             text NOT NULL CHECK (state IN ('claimed','issued','stored','backed_up','published','void')),
  -- Secret material in transit, wrapped by the token; wiped (NULL) as soon as the backup is received.
  identity_wrapped  bytea,
  transport_wrapped bytea,
  identity_public   bytea NOT NULL,
  transport_public  bytea NOT NULL,
  identity_cert     bytea,
  transport_cert    bytea,
  package_digest    bytea,
  backup            bytea,
  void_reason       text,
  claimed_at        timestamptz NOT NULL DEFAULT now(),
  updated_at        timestamptz NOT NULL DEFAULT now()
);
-- A chip has at most one live (non-void) personalization; a voided attempt keeps its IMEI forever.
CREATE UNIQUE INDEX device_live_chip ON journal.device (chip_id) WHERE state <> 'void';
CREATE INDEX ON journal.device (state) WHERE state NOT IN ('published', 'void');

-- Boulder-style audit: a row before and after every signature with the manufacturer's keys.
CREATE TABLE journal.audit (
  id           bigserial PRIMARY KEY,
  at           timestamptz NOT NULL DEFAULT now(),
  station_id   text NOT NULL,
  event        text NOT NULL,        -- sign.begin, sign.done, sign.failed
  chip_id      text,
  imei         text,
  cert_kind    text,                 -- identity, transport, ca, tls
  detail       text NOT NULL         -- TBS digest before, certificate SHA-256 after: never key material
);

-- Store and forward toward the public DB: a device is done only when its row is published.
CREATE TABLE journal.outbox (
  chip_id         text PRIMARY KEY,
  device_id       bigint NOT NULL REFERENCES journal.device (id),
  record_json     text NOT NULL,
  record_hash     text NOT NULL,
  attempts        integer NOT NULL DEFAULT 0,
  next_attempt_at timestamptz NOT NULL DEFAULT now(),
  last_error      text,
  published_at    timestamptz
);
CREATE INDEX ON journal.outbox (next_attempt_at) WHERE published_at IS NULL;
