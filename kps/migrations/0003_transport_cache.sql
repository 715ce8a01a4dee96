-- keyline-kps: the transport certificates read from the public DB (docs/kps.md "Transfers"). Records
-- are never changed or removed there, so a checked chain is kept here for good: later transfers to
-- the same target need no round trip, and the public DB being down does not stop them.
CREATE TABLE transport_certs (
  chip       text PRIMARY KEY CHECK (chip ~ '^[0-9A-F]{20}$'),
  chain_pem  text NOT NULL,   -- transport certificate, then the Device CA (public)
  fetched_at timestamptz NOT NULL DEFAULT now()
);
