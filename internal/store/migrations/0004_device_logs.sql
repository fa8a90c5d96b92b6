-- Devices' container logs, shipped by their agents: per device only the
-- newest lines are kept (trimmed on insert), oldest first by id.
CREATE TABLE device_logs (
	id        {{autoid}},
	device_id TEXT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
	app       TEXT NOT NULL,
	service   TEXT NOT NULL,
	container TEXT NOT NULL,
	logged    BIGINT NOT NULL,
	stream    TEXT NOT NULL,
	text      TEXT NOT NULL
);
CREATE INDEX device_logs_device ON device_logs (device_id, id);
