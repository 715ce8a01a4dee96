-- Witness cosignatures of the log's checkpoints (docs/transparency.md, "Witness"): serve --witness
-- pushes each new checkpoint to its witnesses and keeps the signature lines they return. A line is
-- one C2SP signed-note signature line with its newline; /v1/log/checkpoint serves the log's note
-- with every stored line of its tree size appended. Append-only like the checkpoints (0003): a
-- cosignature is added, never changed or removed.
CREATE TABLE log_cosignatures (
  tree_size bigint NOT NULL REFERENCES log_checkpoints (tree_size),
  line      text NOT NULL CHECK (line LIKE '— %' AND length(line) <= 1024 AND position(E'\n' IN line) = length(line)),
  added_at  timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tree_size, line)
);

CREATE TRIGGER log_cosignatures_no_update_delete BEFORE UPDATE OR DELETE ON log_cosignatures
  FOR EACH ROW EXECUTE FUNCTION log_refuse_change();
CREATE TRIGGER log_cosignatures_no_truncate BEFORE TRUNCATE ON log_cosignatures
  FOR EACH STATEMENT EXECUTE FUNCTION log_refuse_change();

GRANT SELECT, INSERT ON log_cosignatures TO keyline_backupdb;
