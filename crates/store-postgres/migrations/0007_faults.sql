-- The longest attempt of each statistics slot: percentiles never exceed it.
ALTER TABLE function_stats ADD COLUMN max_ms BIGINT NOT NULL DEFAULT 0;
-- How many inputs the attempt ran with in one batch (1 when not batched; NULL before 0007).
ALTER TABLE attempts ADD COLUMN batch_size BIGINT;
-- A hash of the secret the worker got at registration: only it may act as the worker.
ALTER TABLE workers ADD COLUMN secret TEXT;
