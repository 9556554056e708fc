-- Queue controls. A call's priority and key, and each input's (a key comes with the spawn or
-- from the input by the function's limits.key; '' is no key). inputs_pending keeps the
-- inputs without a key (walked by due time; plain inputs are in it alone), and
-- inputs_pending_ranked those with a key or a priority (walked key by key, by priority); a
-- keyed input's due time is also in inputs_pending_keyed, for when the next one is due.
ALTER TABLE calls ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
ALTER TABLE calls ADD COLUMN key TEXT;
ALTER TABLE inputs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
ALTER TABLE inputs ADD COLUMN key TEXT NOT NULL DEFAULT '';
DROP INDEX inputs_pending;
CREATE INDEX inputs_pending ON inputs (app, function, not_before, id)
    WHERE state = 'pending' AND key = '';
CREATE INDEX inputs_pending_keyed ON inputs (app, function, not_before)
    WHERE state = 'pending' AND key <> '';
CREATE INDEX inputs_pending_ranked ON inputs (app, function, key, priority DESC, not_before, id)
    WHERE state = 'pending' AND (priority <> 0 OR key <> '');
-- Inputs leased under limits (or running when a function's limits changed) are marked, and
-- counted per function and key for max_running; plain leases pay nothing for it.
ALTER TABLE inputs ADD COLUMN limited INTEGER NOT NULL DEFAULT 0;
CREATE INDEX inputs_running_limited ON inputs (app, function, key)
    WHERE state = 'running' AND limited = 1;
-- A limited function's lease state: the key served last (keys take turns after it), and the
-- starts of the rate's window as "SLOT:COUNT" pairs (SLOT in ms since 1970), for the function
-- (key '') and for each key with a rate_per_key.
CREATE TABLE limiters (
    app       TEXT NOT NULL,
    function  TEXT NOT NULL,
    key       TEXT NOT NULL,
    last_key  TEXT NOT NULL DEFAULT '',
    starts    TEXT NOT NULL DEFAULT '',
    -- The function's limits (JSON) as its last lease saw them, and when they last changed.
    limits     TEXT NOT NULL DEFAULT '',
    changed_at BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (app, function, key)
);
