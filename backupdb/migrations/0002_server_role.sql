-- The server's role may only read and add records (least privilege): SELECT and INSERT on records,
-- USAGE on its sequence, nothing else. The role is cluster-wide, so it is created only when absent
-- (without a password; `keyline-backupdb migrate --role-password` sets one and enables LOGIN).
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'keyline_backupdb') THEN
    BEGIN
      CREATE ROLE keyline_backupdb NOLOGIN;
    EXCEPTION WHEN duplicate_object OR unique_violation THEN
      NULL;  -- another database's migration created it at the same moment
    END;
  END IF;
  EXECUTE format('GRANT CONNECT ON DATABASE %I TO keyline_backupdb', current_database());
END
$$;

GRANT USAGE ON SCHEMA public TO keyline_backupdb;
GRANT SELECT, INSERT ON records TO keyline_backupdb;
GRANT USAGE ON SEQUENCE records_seq_seq TO keyline_backupdb;

-- Sets the role's password from a statement parameter (CREATE/ALTER ROLE take no $n parameters,
-- so the literal is quoted by format('%L') inside the server, never spliced by the client).
CREATE FUNCTION keyline_backupdb_set_password(pw text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  EXECUTE format('ALTER ROLE keyline_backupdb LOGIN PASSWORD %L', pw);
END
$$;
REVOKE ALL ON FUNCTION keyline_backupdb_set_password(text) FROM PUBLIC;
