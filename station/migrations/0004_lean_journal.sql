-- The journal row no longer keeps a copy of the backup package: the outbox row's record (and, once
-- published, the public DB) holds it, and nothing reads the journal's copy. Every byte in a journal
-- row is written again by each state change, so the copy cost WAL on the line's critical path.
ALTER TABLE journal.device DROP COLUMN backup;
