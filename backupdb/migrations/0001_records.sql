-- The permanent public record table (docs/design.md sections 7 and 9, invariant 5).
-- One row per device; a chip ID and an IMEI each appear at most once, which is what makes
-- "first writer wins" hold under concurrent publishers (INSERT ... ON CONFLICT DO NOTHING).
CREATE TABLE records (
  seq          bigserial PRIMARY KEY,
  chip_id      text NOT NULL UNIQUE CHECK (chip_id ~ '^[0-9A-F]{20}$'),
  imei         text NOT NULL UNIQUE CHECK (imei ~ '^[0-9]{15}$'),
  record_hash  text NOT NULL CHECK (record_hash ~ '^[0-9A-F]{64}$'),
  backup       bytea NOT NULL,
  identity_der bytea NOT NULL,
  body_json    text NOT NULL,
  published_at timestamptz NOT NULL
);

-- Permanence is enforced by the database itself, for every role (the table owner included):
-- no row is ever changed or removed. A superuser could still disable the trigger; that is an
-- operator act outside the service, recorded in the server log.
CREATE FUNCTION records_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'public backup records are permanent: % refused', TG_OP
    USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER records_no_update_delete BEFORE UPDATE OR DELETE ON records
  FOR EACH ROW EXECUTE FUNCTION records_refuse_change();
CREATE TRIGGER records_no_truncate BEFORE TRUNCATE ON records
  FOR EACH STATEMENT EXECUTE FUNCTION records_refuse_change();
