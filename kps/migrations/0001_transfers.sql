-- keyline-kps: asynchronous device-to-device key transfers (docs/kps.md).
-- The server stores only public material (the target's transport certificate chain) and the HPKE
-- ciphertext, which only the target's transport private key opens; the ciphertext is deleted when the
-- target acknowledges.
CREATE TABLE transfers (
  id               uuid PRIMARY KEY,
  source_chip      text NOT NULL CHECK (source_chip ~ '^[0-9A-F]{20}$'),
  target_chip      text NOT NULL CHECK (target_chip ~ '^[0-9A-F]{20}$'),
  label            text NOT NULL CHECK (label ~ '^[A-Za-z0-9._-]{1,64}$'),
  state            text NOT NULL CHECK (state IN ('requested', 'delivered', 'acknowledged')),
  transport_chain  text NOT NULL,   -- PEM: target transport certificate, then its issuers
  ciphertext       bytea,           -- HPKE enc || ct; NULL before delivery and after acknowledgement
  requested_at     timestamptz NOT NULL DEFAULT now(),
  delivered_at     timestamptz,
  acknowledged_at  timestamptz,
  CHECK ((state = 'delivered') = (ciphertext IS NOT NULL))
);
CREATE INDEX transfers_source ON transfers (source_chip);
CREATE INDEX transfers_target ON transfers (target_chip);

CREATE TABLE notifications (
  id          bigserial PRIMARY KEY,
  chip        text NOT NULL CHECK (chip ~ '^[0-9A-F]{20}$'),
  reason      text NOT NULL,
  uri         text NOT NULL,
  transfer_id uuid REFERENCES transfers (id),
  created_at  timestamptz NOT NULL DEFAULT now(),
  read_at     timestamptz
);
CREATE INDEX notifications_unread ON notifications (chip) WHERE read_at IS NULL;
