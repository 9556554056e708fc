-- When an open map's client was last heard from (a chunk of inputs, or a read of the call or
-- its results); NULL: not since the map was made. An open map whose client is silent for
-- longer than the server's --map-idle-timeout is cancelled.
ALTER TABLE calls ADD COLUMN client_seen_at BIGINT;
CREATE INDEX calls_open_maps ON calls (created_at) WHERE accepting_inputs = 1;
