-- berth server schema, version 1. Runs on SQLite and PostgreSQL alike:
-- times are BIGINT microseconds since the Unix epoch (UTC), JSON is TEXT,
-- IDs are random TEXT, secrets are stored as hex SHA-256 only.

-- One row per counter. 'target' hands out device target versions.
CREATE TABLE counters (
	name  TEXT PRIMARY KEY,
	value BIGINT NOT NULL
);
INSERT INTO counters (name, value) VALUES ('target', 0);

CREATE TABLE users (
	id      TEXT PRIMARY KEY,
	name    TEXT NOT NULL UNIQUE,
	role    TEXT NOT NULL CHECK (role IN ('admin', 'deployer', 'viewer')),
	created BIGINT NOT NULL
);

CREATE TABLE tokens (
	id        TEXT PRIMARY KEY,
	user_id   TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
	name      TEXT NOT NULL,
	prefix    TEXT NOT NULL,
	hash      TEXT NOT NULL UNIQUE,
	created   BIGINT NOT NULL,
	expires   BIGINT,
	last_used BIGINT
);
CREATE INDEX tokens_user ON tokens (user_id, created);

CREATE TABLE fleets (
	id         TEXT PRIMARY KEY,
	name       TEXT NOT NULL UNIQUE,
	key_prefix TEXT NOT NULL,
	key_hash   TEXT UNIQUE, -- NULL: revoked
	created    BIGINT NOT NULL
);

-- Immutable: rows are inserted, never updated. The ID is the digest of the
-- release's content, so the same release may exist in several fleets.
CREATE TABLE releases (
	fleet_id   TEXT NOT NULL REFERENCES fleets (id) ON DELETE CASCADE,
	id         TEXT NOT NULL,
	app        TEXT NOT NULL,
	version    TEXT NOT NULL,
	spec       TEXT NOT NULL,
	created    BIGINT NOT NULL,
	created_by TEXT NOT NULL,
	PRIMARY KEY (fleet_id, id)
);
CREATE INDEX releases_app ON releases (fleet_id, app, created);
CREATE INDEX releases_created ON releases (fleet_id, created);

-- The release per app that a fleet's new devices start with.
CREATE TABLE fleet_apps (
	fleet_id   TEXT NOT NULL REFERENCES fleets (id) ON DELETE CASCADE,
	app        TEXT NOT NULL,
	release_id TEXT NOT NULL,
	updated    BIGINT NOT NULL,
	PRIMARY KEY (fleet_id, app),
	FOREIGN KEY (fleet_id, release_id) REFERENCES releases (fleet_id, id)
);

CREATE TABLE devices (
	id             TEXT PRIMARY KEY,
	fleet_id       TEXT NOT NULL REFERENCES fleets (id) ON DELETE CASCADE,
	name           TEXT NOT NULL,
	token_hash     TEXT NOT NULL UNIQUE,
	notes          TEXT NOT NULL DEFAULT '',
	created        BIGINT NOT NULL,
	last_seen      BIGINT,
	state          TEXT, -- the last reported state, JSON
	state_version  BIGINT NOT NULL DEFAULT 0,
	target_version BIGINT NOT NULL,
	UNIQUE (fleet_id, name)
);
CREATE INDEX devices_target_version ON devices (target_version);

CREATE TABLE device_tags (
	device_id TEXT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
	tag       TEXT NOT NULL,
	PRIMARY KEY (device_id, tag)
);
CREATE INDEX device_tags_tag ON device_tags (tag, device_id);

-- A device's target: the release per app. fleet_id repeats the device's so
-- that the foreign key holds the release to the device's fleet.
CREATE TABLE device_apps (
	device_id  TEXT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
	app        TEXT NOT NULL,
	fleet_id   TEXT NOT NULL,
	release_id TEXT NOT NULL,
	pinned     BOOLEAN NOT NULL DEFAULT FALSE,
	updated    BIGINT NOT NULL,
	PRIMARY KEY (device_id, app),
	FOREIGN KEY (fleet_id, release_id) REFERENCES releases (fleet_id, id)
);
CREATE INDEX device_apps_release ON device_apps (fleet_id, release_id);

-- Environment layers: device_id '' is every device of the fleet, service ''
-- every service. No foreign key on device_id (it may be ''): DeleteDevice
-- removes a device's layers itself.
CREATE TABLE env_layers (
	fleet_id  TEXT NOT NULL REFERENCES fleets (id) ON DELETE CASCADE,
	device_id TEXT NOT NULL,
	service   TEXT NOT NULL,
	vars      TEXT NOT NULL, -- JSON object of strings
	updated   BIGINT NOT NULL,
	PRIMARY KEY (fleet_id, device_id, service)
);

CREATE TABLE rollouts (
	id         TEXT PRIMARY KEY,
	fleet_id   TEXT NOT NULL REFERENCES fleets (id) ON DELETE CASCADE,
	release_id TEXT NOT NULL,
	app        TEXT NOT NULL,
	params     TEXT NOT NULL, -- JSON, the server's
	status     TEXT NOT NULL CHECK (status IN ('running', 'paused', 'completed', 'aborted')),
	created_by TEXT NOT NULL,
	created    BIGINT NOT NULL,
	updated    BIGINT NOT NULL,
	FOREIGN KEY (fleet_id, release_id) REFERENCES releases (fleet_id, id)
);
-- One active rollout per fleet and app.
CREATE UNIQUE INDEX rollouts_active ON rollouts (fleet_id, app) WHERE status IN ('running', 'paused');
CREATE INDEX rollouts_fleet ON rollouts (fleet_id, created);

CREATE TABLE rollout_devices (
	rollout_id       TEXT NOT NULL REFERENCES rollouts (id) ON DELETE CASCADE,
	device_id        TEXT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
	stage            INTEGER NOT NULL,
	previous_release TEXT NOT NULL,
	status           TEXT NOT NULL,
	detail           TEXT NOT NULL,
	updated          BIGINT NOT NULL,
	PRIMARY KEY (rollout_id, device_id)
);
CREATE INDEX rollout_devices_device ON rollout_devices (device_id);

-- Append-only. actor and object are names, not foreign keys: the record
-- outlives what it names.
CREATE TABLE audit (
	id      {{autoid}},
	created BIGINT NOT NULL,
	actor   TEXT NOT NULL,
	action  TEXT NOT NULL,
	object  TEXT NOT NULL,
	details TEXT -- JSON
);
CREATE INDEX audit_actor ON audit (actor, id);
CREATE INDEX audit_action ON audit (action, id);
CREATE INDEX audit_object ON audit (object, id);
CREATE INDEX audit_created ON audit (created);
