-- The manufacturer's secret database (seed 002, database 160): per-device facts for the
-- manufacturer's own services. It holds no private key: fingerprints and key check values only.
CREATE SCHEMA IF NOT EXISTS secret;

CREATE TABLE secret.device (
  chip_id                  text PRIMARY KEY,
  imei                     text NOT NULL UNIQUE,
  identity_cert_sha256     text NOT NULL,
  transport_cert_sha256    text NOT NULL,
  comm_key_kcv             text NOT NULL,
  station_id               text NOT NULL,
  personalized_at          timestamptz NOT NULL DEFAULT now()
);
