-- The longest attempt of each statistics slot: percentiles never exceed it.
ALTER TABLE function_stats ADD COLUMN max_ms BIGINT NOT NULL DEFAULT 0;
-- How many inputs the attempt ran with in one batch (1 when not batched; NULL before 0007).
ALTER TABLE attempts ADD COLUMN batch_size INTEGER;
