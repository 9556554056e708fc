-- Failed inputs found without reading the others: a call's first failed input (a map's error
-- names it), and the failures of a time range across calls (the failed-inputs list). A call
-- made by a re-run names the call and input it re-runs, and a re-run input finds its re-runs.
CREATE INDEX inputs_failed ON inputs (call_id, idx) WHERE state = 'failed';
CREATE INDEX inputs_failed_by_time ON inputs (finished_at, id) WHERE state = 'failed';
CREATE INDEX inputs_failed_of_call_by_time ON inputs (call_id, finished_at, id) WHERE state = 'failed';
ALTER TABLE calls ADD COLUMN rerun_of_call TEXT;
ALTER TABLE calls ADD COLUMN rerun_of_index BIGINT;
CREATE INDEX calls_reruns ON calls (rerun_of_call, rerun_of_index) WHERE rerun_of_call IS NOT NULL;
-- A delayed call's inputs are due at this time, later ones of a map too (NULL: at once).
ALTER TABLE calls ADD COLUMN starts_at BIGINT;
