-- 0006_dashboard: what the dashboard reads fast with millions of calls in the store.
-- function_stats: attempts ended per function per 10-second slot, with a histogram of their
-- durations, written with each batch of completions (one row per function and slot), so the
-- overview's rates and percentiles read a few hundred rows instead of the inputs.
-- The indexes serve the calls list's filters, newest first.

CREATE TABLE function_stats (
    app       TEXT NOT NULL,
    function  TEXT NOT NULL,
    slot      BIGINT NOT NULL,
    succeeded BIGINT NOT NULL DEFAULT 0,
    failed    BIGINT NOT NULL DEFAULT 0,
    retried   BIGINT NOT NULL DEFAULT 0,
    h00 BIGINT NOT NULL DEFAULT 0,
    h01 BIGINT NOT NULL DEFAULT 0,
    h02 BIGINT NOT NULL DEFAULT 0,
    h03 BIGINT NOT NULL DEFAULT 0,
    h04 BIGINT NOT NULL DEFAULT 0,
    h05 BIGINT NOT NULL DEFAULT 0,
    h06 BIGINT NOT NULL DEFAULT 0,
    h07 BIGINT NOT NULL DEFAULT 0,
    h08 BIGINT NOT NULL DEFAULT 0,
    h09 BIGINT NOT NULL DEFAULT 0,
    h10 BIGINT NOT NULL DEFAULT 0,
    h11 BIGINT NOT NULL DEFAULT 0,
    h12 BIGINT NOT NULL DEFAULT 0,
    h13 BIGINT NOT NULL DEFAULT 0,
    h14 BIGINT NOT NULL DEFAULT 0,
    h15 BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (app, function, slot)
);
CREATE INDEX function_stats_by_slot ON function_stats (slot);

CREATE INDEX calls_by_app ON calls (app, id);
CREATE INDEX calls_by_origin ON calls (origin, id);
CREATE INDEX calls_by_function_state ON calls (app, function, state, id);

-- A call's attempts in input order, so a page of a large map's attempts is an index range.
DROP INDEX attempts_by_call;
CREATE INDEX attempts_by_call ON attempts (call_id, idx, attempt);
