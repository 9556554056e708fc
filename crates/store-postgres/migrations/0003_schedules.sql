-- 0003_schedules: schedules, their firings (one row per due time: fired once, however many
-- servers or restarts), and calls tagged with the schedule and due time that started them.

CREATE TABLE schedules (
    app          TEXT NOT NULL,
    name         TEXT NOT NULL,
    spec         TEXT NOT NULL,
    paused       BIGINT NOT NULL DEFAULT 0,
    anchor_at    BIGINT NOT NULL,
    next_due_at  BIGINT,
    last_due_at  BIGINT,
    last_call_id TEXT,
    updated_at   BIGINT NOT NULL,
    PRIMARY KEY (app, name)
);
CREATE INDEX schedules_due ON schedules (next_due_at) WHERE paused = 0;

CREATE TABLE schedule_firings (
    app         TEXT NOT NULL,
    schedule    TEXT NOT NULL,
    due_at      BIGINT NOT NULL,
    outcome     TEXT NOT NULL,
    call_id     TEXT,
    recorded_at BIGINT NOT NULL,
    PRIMARY KEY (app, schedule, due_at)
);

ALTER TABLE calls ADD COLUMN schedule TEXT;
ALTER TABLE calls ADD COLUMN due_at BIGINT;
