-- The master version a claim's communication key was derived with (docs/custody.md "Roll"), written
-- when the package is issued: a claim resumed after a `keys roll master` derives its check value with
-- the version its device holds, not the newest. Rows issued before this migration used version 1.
ALTER TABLE journal.device ADD COLUMN master_version integer CHECK (master_version >= 1);
