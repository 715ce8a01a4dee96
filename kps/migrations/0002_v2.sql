-- keyline-kps v2 (docs/kps.md, issue #17): states refused/expired/purged, expiry, group transfers,
-- owner accounts, notices acknowledged one by one, webhooks, nonces and Request-Ids in the database
-- (so replay and idempotency hold across restarts and across KPS processes), and the audit table.
-- None of these tables holds a key, an envelope or a token: accounts keep the token's SHA-256.
ALTER TABLE transfers DROP CONSTRAINT transfers_state_check;
ALTER TABLE transfers ADD CONSTRAINT transfers_state_check
  CHECK (state IN ('requested', 'delivered', 'acknowledged', 'refused', 'expired', 'purged'));
ALTER TABLE transfers
  ADD COLUMN expires_at timestamptz,
  ADD COLUMN group_id uuid,
  ADD COLUMN owner_account bigint,
  ADD COLUMN transport_served_at timestamptz,  -- AC2 held when the source was shown the certificate
  ADD COLUMN closed_at timestamptz;            -- refused, expired or purged
UPDATE transfers SET expires_at = requested_at + interval '7 days';
ALTER TABLE transfers ALTER COLUMN expires_at SET NOT NULL;
CREATE INDEX transfers_open_expiry ON transfers (expires_at) WHERE state IN ('requested', 'delivered');
CREATE INDEX transfers_group ON transfers (group_id) WHERE group_id IS NOT NULL;

ALTER TABLE notifications RENAME COLUMN read_at TO acked_at;

CREATE TABLE nonces (
  chip       text NOT NULL,
  nonce      text NOT NULL,
  expires_at timestamptz NOT NULL,
  PRIMARY KEY (chip, nonce)
);
CREATE INDEX nonces_expiry ON nonces (expires_at);

-- A retried POST /v1/transfers with the same Request-Id by the same caller gets the stored answer.
CREATE TABLE request_ids (
  caller      text NOT NULL,   -- chip ID, or "account:<id>"
  request_id  uuid NOT NULL,
  body_sha256 text NOT NULL,
  status      integer NOT NULL,
  answer      text NOT NULL,   -- the transfer JSON (public facts: ids, chips, label, times)
  created_at  timestamptz NOT NULL,
  PRIMARY KEY (caller, request_id)
);
CREATE INDEX request_ids_age ON request_ids (created_at);

CREATE TABLE accounts (
  id           bigserial PRIMARY KEY,
  name         text NOT NULL UNIQUE,
  token_sha256 text NOT NULL UNIQUE CHECK (token_sha256 ~ '^[0-9a-f]{64}$'),
  created_at   timestamptz NOT NULL DEFAULT now(),
  revoked_at   timestamptz
);
CREATE TABLE account_devices (
  account_id bigint NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
  chip       text NOT NULL CHECK (chip ~ '^[0-9A-F]{20}$'),
  PRIMARY KEY (account_id, chip)
);

CREATE TABLE webhooks (
  chip       text PRIMARY KEY CHECK (chip ~ '^[0-9A-F]{20}$'),
  uri        text NOT NULL CHECK (uri ~ '^https://'),
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE webhook_deliveries (
  id              bigserial PRIMARY KEY,
  notification_id bigint NOT NULL,
  chip            text NOT NULL,
  uri             text NOT NULL,
  attempts        integer NOT NULL DEFAULT 0,
  next_at         timestamptz NOT NULL,
  state           text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'done', 'dead')),
  last_status     integer
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_at) WHERE state = 'pending';

CREATE TABLE audit (
  id          bigserial PRIMARY KEY,
  at          timestamptz NOT NULL,
  transfer_id uuid,
  step        text NOT NULL CHECK (step IN ('requested', 'ac1', 'ac2-early', 'delivered', 'ac2', 'acknowledged',
                                            'refused', 'expired', 'purged', 'webhook-dead')),
  actor       text NOT NULL,
  detail      text NOT NULL DEFAULT ''
);
CREATE INDEX audit_transfer ON audit (transfer_id);
