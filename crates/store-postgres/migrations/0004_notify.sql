-- 0004_notify: each app's notification rules, and small durable settings (the notifier's
-- cursor over ended calls).

ALTER TABLE apps ADD COLUMN notify TEXT NOT NULL DEFAULT '[]';

CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
