-- Key custody (docs/custody.md): the master's versions, what went to or came from another token, and
-- each device's master version. No key material: check values, serials and manifest ids only.

-- Every master version this station's token holds. Version 1 is the token's own "keyline-master"
-- (never extractable, so never mirrored); later versions come from `keys roll master` here, or from
-- another station through `keys mirror receive` / `keys import`.
CREATE TABLE secret.master_key (
  version      integer PRIMARY KEY CHECK (version >= 1),
  label        text NOT NULL UNIQUE,
  check_value  text NOT NULL,          -- HMAC-SHA-256(master, "keyline/master-check/v1"), first 8 bytes, hex
  origin       text NOT NULL,          -- local, rolled, received
  peer_serial  text,                   -- the sending token's serial for a received version
  created_at   timestamptz NOT NULL DEFAULT now()
);

-- A wrapped master sent or received. A manifest id is received once: a second import of the same file
-- (a replay) meets the primary key and is refused.
CREATE TABLE secret.key_transfer (
  manifest_id  text NOT NULL,
  direction    text NOT NULL CHECK (direction IN ('sent', 'received')),
  op           text NOT NULL CHECK (op IN ('mirror', 'export')),
  key_label    text NOT NULL,
  version      integer NOT NULL,
  from_serial  text NOT NULL,
  to_serial    text NOT NULL,
  from_station text NOT NULL,
  to_station   text NOT NULL,
  at           timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (manifest_id, direction)
);

-- The master version each device's communication key was derived with (docs/design.md section 10,
-- "Key versions"). Devices personalized before this migration used version 1.
ALTER TABLE secret.device ADD COLUMN master_version integer NOT NULL DEFAULT 1;
