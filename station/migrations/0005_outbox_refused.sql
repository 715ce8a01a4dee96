-- A record the public DB refuses for good (409: another record holds the chip ID or the IMEI; 422:
-- the record does not validate there; 400, 413, 415) would be refused again on every retry. It is
-- parked instead: refused_at set, left out of every sweep and drain, counted by `status` and the
-- run's summary until an operator has fixed the cause and runs `keyline-station publish
-- --retry-refused`. The row, its record and the journal state stay as they are (nothing is lost).
ALTER TABLE journal.outbox ADD COLUMN refused_at timestamptz;
DROP INDEX journal.outbox_next_attempt_at_idx;
CREATE INDEX outbox_due_idx ON journal.outbox (next_attempt_at) WHERE published_at IS NULL AND refused_at IS NULL;
