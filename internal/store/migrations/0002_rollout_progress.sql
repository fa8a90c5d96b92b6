-- Rollouts' progress, which the server keeps as it goes: the stage under
-- way, and its own state (JSON, like params: why it paused, how many
-- failures a resume acknowledged). Per device, its state version when the
-- rollout moved it, so that only reports made after the move count.
ALTER TABLE rollouts ADD COLUMN stage INTEGER NOT NULL DEFAULT 0;
ALTER TABLE rollouts ADD COLUMN state TEXT NOT NULL DEFAULT '{}';
ALTER TABLE rollout_devices ADD COLUMN state_version BIGINT NOT NULL DEFAULT 0;
-- The rollout engine looks at the active ones every second.
CREATE INDEX rollouts_status ON rollouts (status);
