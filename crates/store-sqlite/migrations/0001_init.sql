-- 0001_init: apps, functions, calls, inputs, attempts, logs, workers.
-- Times are milliseconds since the Unix epoch. JSON values are stored as text.

CREATE TABLE apps (
    name        TEXT PRIMARY KEY,
    version     INTEGER NOT NULL,
    deployed_at INTEGER NOT NULL
);

CREATE TABLE app_versions (
    app         TEXT NOT NULL,
    version     INTEGER NOT NULL,
    manifest    TEXT NOT NULL,
    deployed_at INTEGER NOT NULL,
    PRIMARY KEY (app, version)
);

CREATE TABLE functions (
    app     TEXT NOT NULL,
    name    TEXT NOT NULL,
    version INTEGER NOT NULL,
    spec    TEXT NOT NULL,
    PRIMARY KEY (app, name, version)
);

CREATE TABLE calls (
    id              TEXT PRIMARY KEY,
    app             TEXT NOT NULL,
    function        TEXT NOT NULL,
    version         INTEGER NOT NULL,
    origin          TEXT NOT NULL,
    state           TEXT NOT NULL,
    idempotency_key TEXT UNIQUE,
    n_total         INTEGER NOT NULL,
    n_pending       INTEGER NOT NULL,
    n_running       INTEGER NOT NULL DEFAULT 0,
    n_succeeded     INTEGER NOT NULL DEFAULT 0,
    n_failed        INTEGER NOT NULL DEFAULT 0,
    n_cancelled     INTEGER NOT NULL DEFAULT 0,
    created_at      INTEGER NOT NULL,
    finished_at     INTEGER
);
CREATE INDEX calls_by_function ON calls (app, function, id);
CREATE INDEX calls_by_state ON calls (state, id);
CREATE INDEX calls_by_finished ON calls (finished_at) WHERE finished_at IS NOT NULL;

CREATE TABLE inputs (
    id               INTEGER PRIMARY KEY,
    call_id          TEXT NOT NULL,
    idx              INTEGER NOT NULL,
    app              TEXT NOT NULL,
    function         TEXT NOT NULL,
    version          INTEGER NOT NULL,
    state            TEXT NOT NULL,
    input            TEXT NOT NULL,
    output           TEXT,
    error            TEXT,
    attempt          INTEGER NOT NULL DEFAULT 0,
    failures         INTEGER NOT NULL DEFAULT 0,
    lost             INTEGER NOT NULL DEFAULT 0,
    not_before       INTEGER NOT NULL,
    worker_id        TEXT,
    started_at       INTEGER,
    lease_expires_at INTEGER,
    deadline_at      INTEGER,
    finished_at      INTEGER,
    UNIQUE (call_id, idx)
);
CREATE INDEX inputs_pending ON inputs (app, function, not_before, id) WHERE state = 'pending';
CREATE INDEX inputs_running ON inputs (lease_expires_at) WHERE state = 'running';
CREATE INDEX inputs_by_worker ON inputs (worker_id) WHERE state = 'running';

CREATE TABLE attempts (
    input_id    INTEGER NOT NULL,
    attempt     INTEGER NOT NULL,
    call_id     TEXT NOT NULL,
    idx         INTEGER NOT NULL,
    worker_id   TEXT,
    outcome     TEXT NOT NULL,
    started_at  INTEGER NOT NULL,
    finished_at INTEGER,
    error       TEXT,
    late        INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (input_id, attempt)
);
CREATE INDEX attempts_by_call ON attempts (call_id);

CREATE TABLE logs (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    call_id TEXT NOT NULL,
    idx     INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    stream  TEXT NOT NULL,
    ts      INTEGER NOT NULL,
    line    TEXT NOT NULL
);
CREATE INDEX logs_by_call ON logs (call_id, seq);

CREATE TABLE workers (
    id            TEXT PRIMARY KEY,
    host          TEXT NOT NULL,
    pid           INTEGER NOT NULL,
    functions     TEXT NOT NULL,
    concurrency   INTEGER NOT NULL,
    registered_at INTEGER NOT NULL,
    last_seen_at  INTEGER NOT NULL,
    stopped_at    INTEGER
);
