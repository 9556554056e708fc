//! Leasing under a function's limits and keys (`hopper_core::limits`), inside the lease's
//! transaction so that they hold across every worker and server:
//!
//! - `max_running` and `max_running_per_key` count the function's running inputs
//!   (`inputs_running_by_key`);
//! - a rate counts the starts of its window, kept in the function's `limiters` row (and one
//!   row per key for `rate_per_key`) as slots of a hundredth of the period: a slot that
//!   overlaps the window counts whole, so no window of the period ever holds more starts than
//!   the rate allows, and a lease is allowed what is left, at most two slots' shares in a
//!   slot and the one before it;
//! - keys take turns: a lease walks the keys after the one served last (`limiters.last_key`),
//!   one index search per key in `inputs_pending_ranked`, and gives each a share;
//! - within a key, higher priority first, then first in first out.
//!
//! On PostgreSQL a limited function's lease locks its `limiters` row first, so leases of that
//! function on every server take turns; leases of other functions do not wait.

use std::collections::HashMap;

use crate::db::{QueryBuilder, Row};
use hopper_core::limits::{Limits, Rate};
use hopper_core::UnixMillis;
use hopper_store::{FunctionKey, Hold, InputLease, LimitKind, LimitsRead, LimitsState, StoreError};

use crate::dialect::{Conn, Db, DbPool, DbRow, LOCK_ROWS, SKIP_LOCKED};
use crate::inputs::{push_claim, CLAIMED, RANKED};
use crate::map::db_err;

/// Keys one lease looks at, at most.
const MAX_KEYS: i64 = 1_000;
/// Groups one claiming statement walks, at most (SQLite takes 500 terms of a `UNION ALL`).
const MAX_WALKS: usize = 100;
/// Claiming statements one lease of a function runs, at most.
const MAX_ROUNDS: usize = 4;

/// What [`claim`] leased, and whether due inputs were left waiting on a limit: `Some(at)`
/// with the time a rate allows the next start, `Some(None)` when only an input's end frees
/// a place.
pub struct Claimed {
    pub rows: Vec<DbRow>,
    pub limited: Option<Option<UnixMillis>>,
    /// The limits that held due inputs back.
    pub held: Vec<LimitKind>,
}

/// Adds a limit that must free too (the function's own, all of which hold at once): an end
/// of an input (`None`) outweighs any time.
fn wait_also(limited: &mut Option<Option<UnixMillis>>, until: Option<UnixMillis>) {
    *limited = Some(match (*limited, until) {
        (Some(Some(a)), Some(b)) => Some(a.min(b)),
        (Some(None), _) | (_, None) => None,
        (None, b) => b,
    });
}

/// Adds a limit of which any one freeing lets a lease start something (another key's, another
/// function's): the earliest known time wins over an end of an input (`None`).
pub fn sooner(limited: &mut Option<Option<UnixMillis>>, until: Option<UnixMillis>) {
    *limited = Some(match (*limited, until) {
        (Some(Some(a)), Some(b)) => Some(a.min(b)),
        (Some(Some(a)), None) | (Some(None) | None, Some(a)) => Some(a),
        (Some(None) | None, None) => None,
    });
}

/// Claims up to `want` due inputs of `function` for `p.worker_id` within `limits`.
pub async fn claim(
    conn: &mut Conn,
    p: &InputLease,
    function: &FunctionKey,
    limits: Limits,
    want: i64,
) -> Result<Claimed, StoreError> {
    let enforced = limits.max_running.is_some()
        || limits.max_running_per_key.is_some()
        || limits.rate.is_some()
        || limits.rate_per_key.is_some();
    crate::db::query(
        "INSERT INTO limiters (app, function, key) VALUES ($1, $2, '') ON CONFLICT DO NOTHING",
    )
    .bind(&function.app)
    .bind(&function.function)
    .execute(&mut *conn)
    .await
    .map_err(db_err)?;
    let lock = if enforced { LOCK_ROWS } else { "" };
    let row = crate::db::query(&format!(
        "SELECT last_key, starts, limits, changed_at FROM limiters
         WHERE app = $1 AND function = $2 AND key = ''{lock}"
    ))
    .bind(&function.app)
    .bind(&function.function)
    .fetch_one(&mut *conn)
    .await
    .map_err(db_err)?;
    let last_key: String = row.try_get("last_key").map_err(db_err)?;
    if enforced {
        let seen: String = row.try_get("limits").map_err(db_err)?;
        let changed_at: i64 = row.try_get("changed_at").map_err(db_err)?;
        mark_running(conn, function, &limits, &seen, changed_at, p.now).await?;
    }
    let mut window = Window::parse(&row.try_get::<String, _>("starts").map_err(db_err)?);

    let mut limited = None;
    let mut held = Vec::new();
    let mut allowance = want;
    let running = if limits.max_running.is_some() || limits.max_running_per_key.is_some() {
        running_per_key(conn, function).await?
    } else {
        HashMap::new()
    };
    if let Some(max) = limits.max_running {
        let free = i64::from(max) - running.values().sum::<i64>();
        if free < allowance {
            allowance = free.max(0);
            wait_also(&mut limited, None);
            held.push(LimitKind::MaxRunning);
        }
    }
    if let Some(rate) = limits.rate {
        let free = window.free(rate, p.now);
        if free < allowance {
            allowance = free.max(0);
            wait_also(&mut limited, Some(window.next_free(rate, p.now)));
            held.push(LimitKind::Rate);
        }
    }
    if allowance == 0 {
        return Ok(Claimed {
            rows: Vec::new(),
            limited,
            held,
        });
    }

    // The groups in turn: the keys after the one served last, then the inputs without a key,
    // then the keys from the first on, until enough of them are under their own limits to
    // fill the allowance (keys at their limits are passed over, however many there are, up
    // to MAX_KEYS a lease; the next lease goes on from the last one looked at).
    let mut caps: Vec<(String, i64)> = Vec::new();
    let mut key_windows: HashMap<String, Window> = HashMap::new();
    let mut cursor = last_key.clone();
    let mut wrapped = false;
    let mut looked = 0;
    let mut looked_last: Option<String> = None;
    while (caps.len() as i64) < allowance && looked < MAX_KEYS {
        let page = (allowance - caps.len() as i64 + 16).min(MAX_KEYS - looked);
        let found = keys_after(conn, function, &cursor, page).await?;
        let ended = (found.len() as i64) < page;
        // Past the one served last: the circle is closed.
        let past = wrapped && found.last().is_some_and(|k| *k > last_key);
        let keys: Vec<String> = if wrapped {
            found.into_iter().filter(|k| *k <= last_key).collect()
        } else {
            found
        };
        if limits.rate_per_key.is_some() {
            key_windows.extend(key_windows_of(conn, function, &keys, lock).await?);
        }
        looked += keys.len() as i64;
        if let Some(k) = keys.last() {
            cursor = k.clone();
            looked_last = Some(k.clone());
        }
        for key in keys {
            if let Some(cap) = key_cap(
                &limits,
                &running,
                &mut key_windows,
                &key,
                allowance,
                p.now,
                &mut limited,
                &mut held,
            ) {
                caps.push((key, cap));
            }
        }
        if ended || past || (wrapped && cursor >= last_key) {
            // The inputs without a key come after the last key, before the first.
            if !wrapped && unkeyed_due(conn, function, p.now).await? {
                caps.push((String::new(), allowance));
            }
            if wrapped || last_key.is_empty() {
                break;
            }
            wrapped = true;
            cursor = String::new();
        }
    }
    // Rounds: the next groups in turn (at most MAX_WALKS, one statement) each get their share
    // of what is left; a group that had fewer due inputs than its share drops out, one that
    // filled it goes to the back of the line.
    let mut caps: std::collections::VecDeque<(usize, String, i64)> = caps
        .into_iter()
        .enumerate()
        .map(|(place, (key, cap))| (place, key, cap))
        .collect();
    let mut rows: Vec<DbRow> = Vec::new();
    let mut furthest: Option<(usize, String)> = None;
    for _ in 0..MAX_ROUNDS {
        let left = allowance - rows.len() as i64;
        if left <= 0 || caps.is_empty() {
            break;
        }
        let turn: Vec<(usize, String, i64)> = caps.drain(..caps.len().min(MAX_WALKS)).collect();
        let share = (left + turn.len() as i64 - 1) / turn.len() as i64;
        let mut quotas: Vec<(usize, String, i64)> = Vec::new();
        let mut given = 0;
        for (place, key, cap) in &turn {
            let quota = share.min(*cap).min(left - given);
            if quota <= 0 {
                break;
            }
            given += quota;
            quotas.push((*place, key.clone(), quota));
        }
        // Groups of this turn left without a quota keep their place at the front.
        for waiting in turn.iter().skip(quotas.len()).rev() {
            caps.push_front(waiting.clone());
        }
        if quotas.is_empty() {
            break;
        }
        if let Some((place, key, _)) = quotas.iter().max_by_key(|(place, _, _)| *place) {
            if furthest.as_ref().is_none_or(|(p, _)| place > p) {
                furthest = Some((*place, key.clone()));
            }
        }
        let mut q: QueryBuilder<Db> = QueryBuilder::new("");
        push_claim(&mut q, p, enforced);
        q.push("(SELECT id FROM (");
        for (i, (_, key, quota)) in quotas.iter().enumerate() {
            if i > 0 {
                q.push(" UNION ALL ");
            }
            push_key_walk(&mut q, function, key, *quota, p.now, i);
        }
        q.push(") AS picked)");
        q.push(CLAIMED);
        let claimed = q.build().fetch_all(&mut *conn).await.map_err(db_err)?;
        let mut taken: HashMap<String, i64> = HashMap::new();
        for row in &claimed {
            let key: String = row.try_get("key").map_err(db_err)?;
            *taken.entry(key).or_default() += 1;
        }
        for (place, key, quota) in quotas {
            let got = taken.get(&key).copied().unwrap_or(0);
            let cap = turn
                .iter()
                .find(|(p, _, _)| *p == place)
                .map_or(0, |(_, _, cap)| *cap);
            if got == quota && cap > got {
                caps.push_back((place, key, cap - got));
            }
        }
        rows.extend(claimed);
    }
    // Served last: the furthest group served, or else the furthest key looked at, so that
    // the next lease goes on past keys held at their limits.
    let served_last = furthest.map(|(_, key)| key).or(looked_last);
    let Some(served_last) = served_last else {
        return Ok(Claimed {
            rows: Vec::new(),
            limited,
            held,
        });
    };

    let mut per_key: HashMap<String, i64> = HashMap::new();
    for row in &rows {
        let key: String = row.try_get("key").map_err(db_err)?;
        *per_key.entry(key).or_default() += 1;
    }
    if let Some(rate) = limits.rate {
        window.add(rate, p.now, rows.len() as i64);
    }
    crate::db::query(
        "UPDATE limiters SET last_key = $3, starts = $4 WHERE app = $1 AND function = $2 AND key = ''",
    )
    .bind(&function.app)
    .bind(&function.function)
    .bind(&served_last)
    .bind(window.text())
    .execute(&mut *conn)
    .await
    .map_err(db_err)?;
    if let Some(rate) = limits.rate_per_key {
        for (key, n) in per_key.iter().filter(|(k, _)| !k.is_empty()) {
            let w = key_windows.entry(key.clone()).or_default();
            w.add(rate, p.now, *n);
            crate::db::query(
                "INSERT INTO limiters (app, function, key, starts, changed_at)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (app, function, key) DO UPDATE
                 SET starts = excluded.starts, changed_at = excluded.changed_at",
            )
            .bind(&function.app)
            .bind(&function.function)
            .bind(key)
            .bind(w.text())
            .bind(p.now)
            .execute(&mut *conn)
            .await
            .map_err(db_err)?;
        }
    }
    Ok(Claimed {
        rows,
        limited,
        held,
    })
}

/// The due inputs of one key (`""`: those without a key), up to `quota`, highest priority
/// first, then oldest first: a walk of `inputs_pending_ranked` for a key; for no key, that
/// index's walk of the prioritized ones and `inputs_pending`'s of the rest.
fn push_key_walk(
    q: &mut QueryBuilder<'_, Db>,
    function: &FunctionKey,
    key: &str,
    quota: i64,
    now: UnixMillis,
    i: usize,
) {
    if key.is_empty() {
        q.push(format!(
            "SELECT id FROM (SELECT id FROM (SELECT id, priority, not_before FROM (SELECT id, \
             priority, not_before FROM inputs WHERE state = 'pending' AND {RANKED} AND key = '' \
             AND app = "
        ))
        .push_bind(function.app.clone())
        .push(" AND function = ")
        .push_bind(function.function.clone())
        .push(" AND not_before <= ")
        .push_bind(now)
        .push(" ORDER BY priority DESC, not_before, id LIMIT ")
        .push_bind(quota)
        .push(format!(
            "{SKIP_LOCKED}) AS ranked{i} UNION ALL SELECT id, priority, not_before FROM (\
             SELECT id, priority, not_before FROM inputs WHERE state = 'pending' AND app = "
        ))
        .push_bind(function.app.clone())
        .push(" AND function = ")
        .push_bind(function.function.clone())
        .push(" AND not_before <= ")
        .push_bind(now)
        .push(" AND priority = 0 AND key = '' ORDER BY not_before, id LIMIT ")
        .push_bind(quota)
        .push(format!(
            "{SKIP_LOCKED}) AS plain{i}) AS unkeyed{i} ORDER BY priority DESC, not_before, id LIMIT "
        ))
        .push_bind(quota)
        .push(format!(") AS group{i}"));
    } else {
        q.push(format!(
            "SELECT id FROM (SELECT id FROM inputs WHERE state = 'pending' AND {RANKED} AND app = "
        ))
        .push_bind(function.app.clone())
        .push(" AND function = ")
        .push_bind(function.function.clone())
        .push(" AND key = ")
        .push_bind(key.to_string())
        .push(" AND not_before <= ")
        .push_bind(now)
        .push(" ORDER BY priority DESC, not_before, id LIMIT ")
        .push_bind(quota)
        .push(format!("{SKIP_LOCKED}) AS key{i}"));
    }
}

/// What a key may start now within its own limits (at most `allowance`), or None when a limit
/// holds it back (noted in `limited`, where the soonest of the keys' frees a lease, and in
/// `held`). The inputs without a key (`""`) have no key's limits.
#[allow(clippy::too_many_arguments)]
fn key_cap(
    limits: &Limits,
    running: &HashMap<String, i64>,
    windows: &mut HashMap<String, Window>,
    key: &str,
    allowance: i64,
    now: UnixMillis,
    limited: &mut Option<Option<UnixMillis>>,
    held: &mut Vec<LimitKind>,
) -> Option<i64> {
    let mut cap = allowance;
    if key.is_empty() {
        return Some(cap);
    }
    if let Some(max) = limits.max_running_per_key {
        let free = i64::from(max) - running.get(key).copied().unwrap_or(0);
        if free <= 0 {
            sooner(limited, None);
            held.push(LimitKind::MaxRunningPerKey);
            return None;
        }
        cap = cap.min(free);
    }
    if let Some(rate) = limits.rate_per_key {
        let w = windows.entry(key.to_string()).or_default();
        let free = w.free(rate, now);
        if free <= 0 {
            sooner(limited, Some(w.next_free(rate, now)));
            held.push(LimitKind::RatePerKey);
            return None;
        }
        cap = cap.min(free);
    }
    Some(cap)
}

/// How long after a function's limits change its leases mark the inputs running without
/// them: those leased by another server before it saw the change (it keeps a function's
/// spec a second at most).
const REMARK_MS: i64 = 5_000;

/// Marks the function's running inputs as limited when its limits changed (from `seen`, as
/// the last lease saw them) and for [`REMARK_MS`] after, so that inputs leased before the
/// limits applied count for `max_running` too; records the change.
async fn mark_running(
    conn: &mut Conn,
    function: &FunctionKey,
    limits: &Limits,
    seen: &str,
    changed_at: i64,
    now: UnixMillis,
) -> Result<(), StoreError> {
    let current = serde_json::to_string(limits).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let changed = current != seen;
    if !changed && now - changed_at >= REMARK_MS {
        return Ok(());
    }
    crate::db::query(
        "UPDATE inputs SET limited = 1 WHERE state = 'running' AND limited = 0 AND app = $1
         AND function = $2",
    )
    .bind(&function.app)
    .bind(&function.function)
    .execute(&mut *conn)
    .await
    .map_err(db_err)?;
    if changed {
        crate::db::query(
            "UPDATE limiters SET limits = $3, changed_at = $4 WHERE app = $1 AND function = $2
             AND key = ''",
        )
        .bind(&function.app)
        .bind(&function.function)
        .bind(current)
        .bind(now)
        .execute(&mut *conn)
        .await
        .map_err(db_err)?;
    }
    Ok(())
}

/// Whether the function has a due input without a key (the head of `inputs_pending`).
async fn unkeyed_due(
    conn: &mut Conn,
    function: &FunctionKey,
    now: UnixMillis,
) -> Result<bool, StoreError> {
    let found: Option<i64> = crate::db::query_scalar(
        "SELECT id FROM inputs WHERE state = 'pending' AND key = '' AND app = $1 AND function = $2
         AND not_before <= $3 LIMIT 1",
    )
    .bind(&function.app)
    .bind(&function.function)
    .bind(now)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db_err)?;
    Ok(found.is_some())
}

/// The function's running inputs that count for its limits, per key (`""`: without one).
const RUNNING_PER_KEY: &str = "SELECT key, COUNT(*) AS n FROM inputs WHERE state = 'running' \
     AND limited = 1 AND app = $1 AND function = $2 GROUP BY key";

/// `(key, n)` rows as a map.
fn key_counts(rows: &[DbRow]) -> Result<HashMap<String, i64>, StoreError> {
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get("key").map_err(db_err)?,
                r.try_get("n").map_err(db_err)?,
            ))
        })
        .collect()
}

async fn running_per_key(
    conn: &mut Conn,
    function: &FunctionKey,
) -> Result<HashMap<String, i64>, StoreError> {
    let rows = crate::db::query(RUNNING_PER_KEY)
        .bind(&function.app)
        .bind(&function.function)
        .fetch_all(&mut *conn)
        .await
        .map_err(db_err)?;
    key_counts(&rows)
}

/// Up to `n` keys after `after` with pending inputs, in order: one index search per key
/// (a loose walk of `inputs_pending_ranked`), however many inputs each key has.
async fn keys_after(
    conn: &mut Conn,
    function: &FunctionKey,
    after: &str,
    n: i64,
) -> Result<Vec<String>, StoreError> {
    if n <= 0 {
        return Ok(Vec::new());
    }
    let next = format!(
        "SELECT MIN(key) FROM inputs WHERE state = 'pending' AND {RANKED} AND app = $1 AND function = $2"
    );
    let rows = crate::db::query(&format!(
        "WITH RECURSIVE k(key, n) AS (
             SELECT ({next} AND key > $3), 1
             UNION ALL
             SELECT ({next} AND key > k.key), k.n + 1 FROM k WHERE k.key IS NOT NULL AND k.n < $4
         )
         SELECT key FROM k WHERE key IS NOT NULL"
    ))
    .bind(&function.app)
    .bind(&function.function)
    .bind(after)
    .bind(n)
    .fetch_all(&mut *conn)
    .await
    .map_err(db_err)?;
    rows.iter()
        .map(|r| r.try_get::<String, _>("key").map_err(db_err))
        .collect()
}

/// The rate windows of `keys`, locked with the function's row on PostgreSQL.
async fn key_windows_of(
    conn: &mut Conn,
    function: &FunctionKey,
    keys: &[String],
    lock: &str,
) -> Result<HashMap<String, Window>, StoreError> {
    let keys: Vec<&String> = keys.iter().filter(|k| !k.is_empty()).collect();
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let mut q: QueryBuilder<Db> =
        QueryBuilder::new("SELECT key, starts FROM limiters WHERE app = ");
    q.push_bind(function.app.clone())
        .push(" AND function = ")
        .push_bind(function.function.clone())
        .push(" AND key IN (");
    let mut list = q.separated(", ");
    for key in keys {
        list.push_bind(key.clone());
    }
    q.push(format!("){lock}"));
    let rows = q.build().fetch_all(&mut *conn).await.map_err(db_err)?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get("key").map_err(db_err)?,
                Window::parse(&r.try_get::<String, _>("starts").map_err(db_err)?),
            ))
        })
        .collect()
}

/// Keys a [`state`] lists held back by their own limits, at most.
const MAX_HELD_KEYS: usize = 1_000;

/// What holds the due inputs of `p.function` back now (see [`LimitsState`]): read without
/// locks, so it is what a lease would have found a moment ago.
pub async fn state(pool: &DbPool, p: LimitsRead) -> Result<LimitsState, StoreError> {
    let (f, limits, now) = (&p.function, &p.limits, p.now);
    let rows = crate::db::query(RUNNING_PER_KEY)
        .bind(&f.app)
        .bind(&f.function)
        .fetch_all(pool)
        .await
        .map_err(db_err)?;
    let running = key_counts(&rows)?;
    let total: i64 = running.values().sum();
    let mut busiest: Vec<(String, i64)> = running
        .iter()
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, n)| (k.clone(), *n))
        .collect();
    busiest.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    busiest.truncate(10);
    let hold = |limit, key: Option<&str>, running, next_at| Hold {
        limit,
        key: key.map(str::to_string),
        running,
        next_at,
        waiting: 0,
    };

    let mut holds = Vec::new();
    if limits
        .max_running
        .is_some_and(|max| total >= i64::from(max))
    {
        holds.push(hold(LimitKind::MaxRunning, None, total, None));
    }
    if let Some(rate) = limits.rate {
        let starts: Option<String> = crate::db::query_scalar(
            "SELECT starts FROM limiters WHERE app = $1 AND function = $2 AND key = ''",
        )
        .bind(&f.app)
        .bind(&f.function)
        .fetch_optional(pool)
        .await
        .map_err(db_err)?;
        let mut window = Window::parse(starts.as_deref().unwrap_or_default());
        if window.free(rate, now) == 0 {
            let next = window.next_free(rate, now);
            holds.push(hold(LimitKind::Rate, None, total, Some(next)));
        }
    }
    let mut held: Vec<Hold> = Vec::new();
    if let Some(max) = limits.max_running_per_key {
        for (key, n) in running.iter().filter(|(k, _)| !k.is_empty()) {
            if *n >= i64::from(max) {
                held.push(hold(LimitKind::MaxRunningPerKey, Some(key), *n, None));
            }
        }
    }
    if let Some(rate) = limits.rate_per_key {
        let rows = crate::db::query(
            "SELECT key, starts FROM limiters WHERE app = $1 AND function = $2 AND key <> ''
             ORDER BY key LIMIT 10000",
        )
        .bind(&f.app)
        .bind(&f.function)
        .fetch_all(pool)
        .await
        .map_err(db_err)?;
        for row in &rows {
            let key: String = row.try_get("key").map_err(db_err)?;
            let mut window = Window::parse(&row.try_get::<String, _>("starts").map_err(db_err)?);
            if window.free(rate, now) == 0 {
                let n = running.get(&key).copied().unwrap_or(0);
                let next = window.next_free(rate, now);
                held.push(hold(LimitKind::RatePerKey, Some(&key), n, Some(next)));
            }
        }
    }
    held.sort_by(|a, b| (&a.key, a.limit).cmp(&(&b.key, b.limit)));
    held.truncate(MAX_HELD_KEYS);

    if p.count {
        if !holds.is_empty() {
            let due: i64 = crate::db::query_scalar(
                "SELECT (SELECT COUNT(*) FROM inputs WHERE state = 'pending' AND key = ''
                         AND app = $1 AND function = $2 AND not_before <= $3)
                      + (SELECT COUNT(*) FROM inputs WHERE state = 'pending' AND key <> ''
                         AND app = $1 AND function = $2 AND not_before <= $3)",
            )
            .bind(&f.app)
            .bind(&f.function)
            .bind(now)
            .fetch_one(pool)
            .await
            .map_err(db_err)?;
            for h in &mut holds {
                h.waiting = due;
            }
        }
        if !held.is_empty() {
            let mut q: QueryBuilder<Db> = QueryBuilder::new(format!(
                "SELECT key, COUNT(*) AS n FROM inputs WHERE state = 'pending' AND {RANKED} AND app = "
            ));
            q.push_bind(f.app.clone())
                .push(" AND function = ")
                .push_bind(f.function.clone())
                .push(" AND not_before <= ")
                .push_bind(now)
                .push(" AND key IN (");
            let mut list = q.separated(", ");
            for key in held.iter().filter_map(|h| h.key.clone()) {
                list.push_bind(key);
            }
            q.push(") GROUP BY key");
            let due = key_counts(&q.build().fetch_all(pool).await.map_err(db_err)?)?;
            for h in &mut held {
                h.waiting = h
                    .key
                    .as_ref()
                    .and_then(|k| due.get(k))
                    .copied()
                    .unwrap_or(0);
            }
        }
    }
    holds.extend(held);
    if p.count {
        // A limit at its bound with nothing due behind it holds nothing back.
        holds.retain(|h| h.waiting > 0);
    }

    let mut call_keys = Vec::new();
    if let Some(call) = &p.call {
        let rows = crate::db::query(
            "SELECT DISTINCT key FROM (SELECT key FROM inputs WHERE call_id = $1
             AND state = 'pending' AND not_before <= $2 LIMIT 1000) AS pending ORDER BY key",
        )
        .bind(call.as_str())
        .bind(now)
        .fetch_all(pool)
        .await
        .map_err(db_err)?;
        for row in &rows {
            call_keys.push(row.try_get::<String, _>("key").map_err(db_err)?);
        }
    }
    Ok(LimitsState {
        running: total,
        busiest,
        holds,
        call_keys,
    })
}

/// The starts of a rate's window: `(slot start, starts in it)`, oldest first, as
/// `"SLOT:COUNT,…"` text in `limiters.starts`.
#[derive(Debug, Default, Clone, PartialEq)]
struct Window(Vec<(i64, i64)>);

impl Window {
    /// Unreadable text counts as no starts: the rate then allows a full period's at once.
    fn parse(text: &str) -> Window {
        Window(
            text.split(',')
                .filter_map(|pair| {
                    let (slot, n) = pair.split_once(':')?;
                    Some((slot.parse().ok()?, n.parse().ok()?))
                })
                .collect(),
        )
    }

    fn text(&self) -> String {
        self.0
            .iter()
            .map(|(slot, n)| format!("{slot}:{n}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn slot_ms(rate: Rate) -> i64 {
        (rate.period_ms as i64 / 100).max(10)
    }

    /// Drops the slots wholly before the window `(now - period, now]`.
    fn trim(&mut self, rate: Rate, now: UnixMillis) {
        let len = Self::slot_ms(rate);
        let from = now - rate.period_ms as i64;
        self.0.retain(|(slot, _)| slot + len > from);
    }

    /// Starts counted in the window that ends now.
    fn used(&mut self, rate: Rate, now: UnixMillis) -> i64 {
        self.trim(rate, now);
        self.0.iter().map(|(_, n)| n).sum()
    }

    /// A slot's share: the rate's count spread over its slots, so that starts come evenly
    /// through the period rather than a period's worth at once. A slot and the one before it
    /// hold two shares at most, so a slot no lease came in (a lease that took longer than a
    /// slot) is made up in the next, and no more.
    fn slot_cap(rate: Rate) -> i64 {
        let slots = (rate.period_ms as i64 / Self::slot_ms(rate)).max(1);
        (i64::from(rate.count) + slots - 1) / slots
    }

    fn slot_of(rate: Rate, now: UnixMillis) -> i64 {
        now - now.rem_euclid(Self::slot_ms(rate))
    }

    /// Starts in the slot that begins at `slot`.
    fn in_slot(&self, slot: i64) -> i64 {
        self.0
            .iter()
            .rev()
            .find(|(s, _)| *s == slot)
            .map_or(0, |(_, n)| *n)
    }

    /// Starts the rate allows now: what the window has left, at most what the current slot
    /// and the one before it have left of two shares.
    fn free(&mut self, rate: Rate, now: UnixMillis) -> i64 {
        let in_window = i64::from(rate.count) - self.used(rate, now);
        let slot = Self::slot_of(rate, now);
        let recent = self.in_slot(slot) + self.in_slot(slot - Self::slot_ms(rate));
        in_window.min(2 * Self::slot_cap(rate) - recent).max(0)
    }

    /// When the rate next allows a start, with the window not full: the next slot, or the
    /// one after it when this one took two shares; with the window full, when the oldest
    /// counted slot leaves it.
    fn next_free(&self, rate: Rate, now: UnixMillis) -> UnixMillis {
        let len = Self::slot_ms(rate);
        let slot = Self::slot_of(rate, now);
        let used: i64 = self.0.iter().map(|(_, n)| n).sum();
        if used < i64::from(rate.count) {
            return if self.in_slot(slot) >= 2 * Self::slot_cap(rate) {
                slot + 2 * len
            } else {
                slot + len
            };
        }
        self.0.first().map_or(now + 1, |(slot, _)| {
            (slot + len + rate.period_ms as i64).max(now + 1)
        })
    }

    fn add(&mut self, rate: Rate, now: UnixMillis, n: i64) {
        if n == 0 {
            return;
        }
        self.trim(rate, now);
        let slot = Self::slot_of(rate, now);
        match self.0.last_mut() {
            Some((last, count)) if *last == slot => *count += n,
            _ => self.0.push((slot, n)),
        }
    }
}

#[cfg(test)]
mod window_tests {
    use super::*;

    #[test]
    fn no_window_of_the_period_holds_more_starts_than_the_rate() {
        let rate = Rate::parse("100/s").unwrap();
        let mut w = Window::default();
        let mut starts = Vec::new();
        // Ask for 7 starts every 3 ms for 5 s; take what the window allows.
        let mut now = 1_000_000;
        while now < 1_005_000 {
            let free = w.free(rate, now).min(7);
            w.add(rate, now, free);
            starts.extend(std::iter::repeat_n(now, free as usize));
            now += 3;
        }
        for (i, &t) in starts.iter().enumerate() {
            let in_window = starts[i..].iter().take_while(|&&s| s < t + 1000).count();
            assert!(
                in_window <= 100,
                "{in_window} starts in the second from {t}"
            );
        }
        // And the rate is used: at least 97% of it, and evenly: never more than two starts in
        // two neighbouring slots of 10 ms.
        assert!(starts.len() >= 485, "{} starts in 5 s", starts.len());
        for three in starts.windows(3) {
            assert!(
                three[2] / 10 - three[0] / 10 >= 2,
                "three starts in two slots: {three:?}"
            );
        }
        assert_eq!(Window::parse(&w.text()), w);
    }

    #[test]
    fn a_slot_no_lease_came_in_is_made_up_in_the_next_and_no_more() {
        let rate = Rate::parse("2000/s").unwrap();
        let mut w = Window::default();
        // Slots of 10 ms, 20 starts each; a lease comes every 10 ms but one slot is missed.
        let mut starts = 0;
        for slot in (0..100).filter(|s| *s != 40) {
            let now = 1_000_000 + slot * 10 + 3;
            let free = w.free(rate, now);
            assert!(free <= 40, "slot {slot}: {free}");
            w.add(rate, now, free);
            starts += free;
        }
        assert_eq!(starts, 2_000, "the missed slot's share was made up");
        let mut w = Window::default();
        w.add(rate, 1_000_003, 40);
        assert_eq!(w.free(rate, 1_000_004), 0);
        assert_eq!(
            w.next_free(rate, 1_000_004),
            1_000_020,
            "the slot after next"
        );
    }
}
