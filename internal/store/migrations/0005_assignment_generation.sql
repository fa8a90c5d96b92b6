-- An app's assignment generation on a device: the target version at which
-- the app was last assigned to it (an assignment, even of the release it
-- has, a rollout's move, a pin, a retry). Devices end a LAN override and
-- try a failed or refused release again only under a newer generation, so
-- changes of environment or signatures retry nothing. Per rollout device,
-- the generation its move gave it: the device's reports about that
-- generation or a later one are about the move.
ALTER TABLE device_apps ADD COLUMN generation BIGINT NOT NULL DEFAULT 0;
ALTER TABLE rollout_devices ADD COLUMN generation BIGINT NOT NULL DEFAULT 0;
