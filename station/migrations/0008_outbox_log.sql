-- The transparency log's side of a published record (issue #18, docs/transparency.md "Clients"):
-- leaf_index is what the public DB answered to the publish (201, or the idempotent repeat), or what
-- `keyline-station outbox check-log` read back; log_tree_size and log_proof are the inclusion proof
-- (the public DB's /v1/records/{chip}/proof answer, checked against a checkpoint signed by the
-- pinned log key) once the record is in a checkpoint; log_checked_at is when that check passed.
-- A published row without log_proof is "published, not yet in a checkpoint" (`keyline-station status`).
ALTER TABLE journal.outbox
  ADD COLUMN leaf_index bigint CHECK (leaf_index >= 0),
  ADD COLUMN log_tree_size bigint CHECK (log_tree_size > leaf_index),
  ADD COLUMN log_proof text,
  ADD COLUMN log_checked_at timestamptz;
CREATE INDEX outbox_not_logged_idx ON journal.outbox (published_at) WHERE published_at IS NOT NULL AND log_proof IS NULL;
