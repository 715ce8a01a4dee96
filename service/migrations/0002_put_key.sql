-- A third kind of job: PUT KEY, the device's communication key rotated to another derivation version
-- (docs/service.md "Key rotation"); the payload is the new version (one byte).
ALTER TABLE campaign DROP CONSTRAINT campaign_kind_check;
ALTER TABLE campaign ADD CONSTRAINT campaign_kind_check CHECK (kind IN ('item', 'module', 'put_key'));
ALTER TABLE job DROP CONSTRAINT job_kind_check;
ALTER TABLE job ADD CONSTRAINT job_kind_check CHECK (kind IN ('item', 'module', 'put_key'));
