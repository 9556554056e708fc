-- 0005_log_caps: lines kept per attempt, so each attempt's log is bounded.

CREATE TABLE log_counts (
    input_id BIGINT NOT NULL,
    attempt  BIGINT NOT NULL,
    lines    BIGINT NOT NULL,
    dropped  BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (input_id, attempt)
);
