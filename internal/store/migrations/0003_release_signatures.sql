-- Signed releases: a release keeps the ed25519 signature it was created
-- with and the ID of the key that made it ('' for unsigned). A fleet's
-- public keys: a fleet with at least one refuses releases not signed by
-- one of them.
ALTER TABLE releases ADD COLUMN signature TEXT NOT NULL DEFAULT '';
ALTER TABLE releases ADD COLUMN key_id TEXT NOT NULL DEFAULT '';
CREATE TABLE fleet_keys (
	fleet_id   TEXT NOT NULL REFERENCES fleets (id) ON DELETE CASCADE,
	key_id     TEXT NOT NULL,
	public_key TEXT NOT NULL,
	created    BIGINT NOT NULL,
	created_by TEXT NOT NULL,
	PRIMARY KEY (fleet_id, key_id)
);
