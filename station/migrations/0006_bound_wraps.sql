-- Wrapped device keys are bound to their row (docs/decisions.md, "Wrapped keys are bound to their
-- row"): the AES-GCM associated data of a blob names the pool row (pool.device_key.id) or the chip
-- (journal.device.chip_id) and the public half, after the domain separator "keyline wrap v1". Blobs
-- wrapped before this migration carry the separator alone and no longer open.
--
-- A pool key set whose blob does not unwrap for its row, or whose private keys do not give its
-- public halves, leaves the pool for this table instead of being certified (the station's claim
-- moves it here, error 4013), so it can neither block the line nor be handed to a device.
CREATE TABLE pool.device_key_quarantine (
  id                 bigint PRIMARY KEY,   -- the pool.device_key id it had
  identity_wrapped   bytea NOT NULL,
  identity_public    bytea NOT NULL,
  transport_wrapped  bytea NOT NULL,
  transport_public   bytea NOT NULL,
  wrap_key_label     text NOT NULL,
  added_at           timestamptz NOT NULL,
  quarantined_at     timestamptz NOT NULL DEFAULT now(),
  reason             text NOT NULL
);

-- Old pool key sets were never given to a device: they go to the quarantine, and `pool generate
-- --keys N` makes new ones.
INSERT INTO pool.device_key_quarantine (id, identity_wrapped, identity_public, transport_wrapped,
  transport_public, wrap_key_label, added_at, reason)
  SELECT id, identity_wrapped, identity_public, transport_wrapped, transport_public, wrap_key_label, added_at,
         'wrapped before migration 0006 (unbound blob)'
  FROM pool.device_key;
DELETE FROM pool.device_key;

-- Live journal rows lose their old blobs. A personalized device of such a row needs no key any more
-- (it goes on to the backup check); a blank one has its row voided by the station, which then claims
-- a new IMEI for it (the old IMEI stays with the void row, as every voided IMEI does).
UPDATE journal.device SET identity_wrapped = NULL, transport_wrapped = NULL, updated_at = now()
  WHERE state IN ('claimed', 'issued', 'stored') AND (identity_wrapped IS NOT NULL OR transport_wrapped IS NOT NULL);
