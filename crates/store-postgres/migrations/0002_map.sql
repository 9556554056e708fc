-- 0002_map: streaming maps (calls that take inputs in chunks), for_each, and result streams
-- in completion order.

ALTER TABLE calls ADD COLUMN accepting_inputs BIGINT NOT NULL DEFAULT 0;
ALTER TABLE calls ADD COLUMN discard_results BIGINT NOT NULL DEFAULT 0;
ALTER TABLE inputs ADD COLUMN done_seq BIGINT;
CREATE INDEX inputs_by_done_seq ON inputs (call_id, done_seq) WHERE done_seq IS NOT NULL;
CREATE INDEX calls_open ON calls (app, function) WHERE state IN ('pending', 'running');
