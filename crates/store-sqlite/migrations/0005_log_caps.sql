-- 0005_log_caps: lines kept per attempt, so each attempt's log is bounded.

CREATE TABLE log_counts (
    input_id INTEGER NOT NULL,
    attempt  INTEGER NOT NULL,
    lines    INTEGER NOT NULL,
    dropped  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (input_id, attempt)
);
