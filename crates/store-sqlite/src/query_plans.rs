//! The dashboard's reads stay fast with a million calls: with 1,000,000 calls (and their
//! inputs, attempts and log lines) in the store, every query the calls list, a call page and
//! the overview run is planned as an index search, never a table scan or a sort of the rows.
//!
//! The check is on the plans, not the clock; the times are printed as figures (and
//! `hopper bench --scenario dashboard` measures the same pages over HTTP).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::time::Instant;

use hopper_core::api::Origin;
use hopper_core::stats::SLOT_MS;
use hopper_core::{CallId, InputState};
use hopper_store::{CallList, StatsList};
use sqlx::{QueryBuilder, Row};

use crate::dialect::Db;
use crate::{calls, inputs, stats, workers, SqliteStore};

const CALLS: i64 = 1_000_000;
const T0: i64 = 1_700_000_000_000;

/// The id of the `i`th fixture call: 26 digits, valid Crockford base32, ordered like `i`.
fn id(i: i64) -> String {
    format!("hc-{i:026}")
}

/// Fills the store: calls of 4 functions in 2 apps, mostly ended (90% succeeded, 5% failed,
/// 3% cancelled), 5% maps and 2% from schedules, each with its input, an attempt and a log
/// line, and 24 hours of statistics slots.
async fn fill(store: &SqliteStore) {
    let pool = &store.writer_pool;
    let statements = [
        format!(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {last})
             INSERT INTO calls (id, app, function, version, origin, state, n_total, n_pending, n_running,
                                n_succeeded, n_failed, n_cancelled, created_at, finished_at)
             SELECT printf('hc-%026d', i), 'app' || (i % 2), 'f' || (i % 4), 1,
                    CASE WHEN i % 20 = 0 THEN 'map' WHEN i % 50 = 1 THEN 'schedule' ELSE 'spawn' END,
                    s, 1, s = 'pending', s = 'running', s = 'succeeded', s = 'failed', s = 'cancelled',
                    {T0} + i * 10, CASE WHEN s IN ('pending', 'running') THEN NULL ELSE {T0} + i * 10 + 5 END
             FROM (SELECT i, CASE WHEN i % 100 < 90 THEN 'succeeded' WHEN i % 100 < 95 THEN 'failed'
                                  WHEN i % 100 < 98 THEN 'cancelled' WHEN i % 100 < 99 THEN 'running'
                                  ELSE 'pending' END AS s FROM n)",
            last = CALLS - 1
        ),
        "INSERT INTO inputs (call_id, idx, app, function, version, state, input, output, not_before,
                             started_at, finished_at, attempt)
         SELECT id, 0, app, function, 1, state, '{\"n\": 1}', CASE WHEN state = 'succeeded' THEN '2' END,
                created_at, created_at, finished_at, 1 FROM calls"
            .to_string(),
        "INSERT INTO attempts (input_id, attempt, call_id, idx, worker_id, outcome, started_at, finished_at)
         SELECT id, 1, call_id, 0, 'hw-00000000000000000000000001', state, started_at, finished_at
         FROM inputs WHERE finished_at IS NOT NULL"
            .to_string(),
        "INSERT INTO logs (call_id, idx, attempt, stream, ts, line)
         SELECT call_id, 0, 1, 'stdout', started_at, 'working on it' FROM inputs"
            .to_string(),
        format!(
            "WITH RECURSIVE s(slot) AS (SELECT {first} UNION ALL SELECT slot + {SLOT_MS} FROM s WHERE slot < {last})
             INSERT INTO function_stats (app, function, slot, succeeded, failed, h05)
             SELECT 'app' || (f % 2), 'f' || f, slot, 90, 5, 95 FROM s, (SELECT 0 AS f UNION ALL SELECT 1
                    UNION ALL SELECT 2 UNION ALL SELECT 3)",
            first = T0 - 86_400_000,
            last = T0
        ),
    ];
    for sql in statements {
        sqlx::query(&sql).execute(pool).await.unwrap();
    }
}

/// Plans `q` (a query with its arguments bound) and returns the plan's lines.
async fn plan(store: &SqliteStore, mut q: QueryBuilder<'_, Db>) -> Vec<String> {
    q.build()
        .fetch_all(&store.reader)
        .await
        .unwrap()
        .iter()
        .map(|row| row.get::<String, _>("detail"))
        .collect()
}

/// A plan reads index ranges: no scan of a table or a whole index, no sort of the rows.
/// `scannable` tables may be scanned: small ones, or one walked in order and stopped by
/// `LIMIT`.
fn assert_indexed(what: &str, plan: &[String], small: &[&str]) {
    assert_indexed_sorting(what, plan, small, false)
}

/// The same, but a sort is fine: the rows sorted are few and found by index (one call's
/// attempts; the open calls, grouped by function).
fn assert_indexed_sorting(what: &str, plan: &[String], small: &[&str], sorts_few: bool) {
    for line in plan {
        // `SCAN t [USING INDEX i]` reads all of a table or index; `SEARCH` reads a range.
        let scans_table = line.starts_with("SCAN ")
            && !small
                .iter()
                .any(|t| line.starts_with(&format!("SCAN {t} ")) || line == &format!("SCAN {t}"));
        assert!(
            !scans_table && (sorts_few || !line.contains("TEMP B-TREE")),
            "{what}: `{line}` in the plan {plan:#?}"
        );
    }
}

fn explain<'a>(sql: &str) -> QueryBuilder<'a, Db> {
    QueryBuilder::new(format!("EXPLAIN QUERY PLAN {sql}"))
}

/// Runs a query and returns how long it took, in milliseconds.
async fn time<F, Fut, T>(f: F) -> f64
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let started = Instant::now();
    f().await;
    started.elapsed().as_secs_f64() * 1000.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_queries_use_indexes_with_a_million_calls() {
    use hopper_store::Store;
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("hopper.db"))
        .await
        .unwrap();
    let started = Instant::now();
    fill(&store).await;
    println!(
        "filled {CALLS} calls in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // The calls list, with every filter the dashboard and the CLI send, alone and together.
    let middle = CallId::first_at(T0);
    let cursor: CallId = id(CALLS / 2).parse().unwrap();
    let mut lists: Vec<(String, CallList)> = Vec::new();
    let apps = [None, Some("app1")];
    let functions = [None, Some("f3")];
    let states = [None, Some(InputState::Failed)];
    let origins = [None, Some(Origin::Schedule)];
    for app in apps {
        for function in functions {
            for state in states {
                for origin in origins {
                    for (before, after) in [
                        (None, None),
                        (Some(cursor.clone()), None),
                        (None, Some(middle.clone())),
                    ] {
                        let p = CallList {
                            app: app.map(str::to_string).or(function.map(|_| "app1".into())),
                            function: function.map(str::to_string),
                            state,
                            origin,
                            before,
                            after,
                            limit: 51,
                        };
                        lists.push((format!("{p:?}"), p));
                    }
                }
            }
        }
    }
    for (what, p) in &lists {
        let mut q = explain("");
        calls::push_list_query(&mut q, p);
        // Unfiltered, the newest calls are a walk of the id index, stopped after a page.
        let unfiltered = p.app.is_none()
            && p.state.is_none()
            && p.origin.is_none()
            && p.before.is_none()
            && p.after.is_none();
        let scannable: &[&str] = if unfiltered { &["calls"] } else { &[] };
        assert_indexed(what, &plan(&store, q).await, scannable);
    }
    let rare = CallList {
        origin: Some(Origin::Schedule),
        state: Some(InputState::Failed),
        limit: 51,
        ..Default::default()
    };
    let ms = time(|| store.call_list(rare.clone())).await;
    println!("calls list, schedule origin and failed, first page: {ms:.2} ms");
    let ms = time(|| {
        store.call_list(CallList {
            app: Some("app1".into()),
            function: Some("f3".into()),
            state: Some(InputState::Failed),
            before: Some(cursor.clone()),
            limit: 51,
            ..Default::default()
        })
    })
    .await;
    println!("calls list, one function and failed, a page in the middle: {ms:.2} ms");

    // A call page: the call, its input, attempts and log lines.
    let call: CallId = id(CALLS - 7).parse().unwrap();
    for (what, sql, sorts_few) in [
        ("call", calls::get_sql(), false),
        ("input", inputs::GET_SQL.to_string(), false),
        ("attempts", inputs::ATTEMPT_LIST_SQL.to_string(), true),
        ("logs", workers::LOG_LIST_SQL.to_string(), false),
    ] {
        // Unbound arguments plan as NULL; the plan does not depend on the values.
        let lines = plan(&store, explain(&sql)).await;
        assert_indexed_sorting(what, &lines, &[], sorts_few);
    }
    let ms = time(|| async {
        store.call_get(&call).await.unwrap().unwrap();
        store.input_get(&call, 0).await.unwrap().unwrap();
        store.attempt_list(&call).await.unwrap();
        store
            .log_list(hopper_store::LogList {
                call_id: call.clone(),
                index: None,
                after_seq: 0,
                limit: 1000,
            })
            .await
            .unwrap();
    })
    .await;
    println!("call page (call, input, attempts, logs): {ms:.2} ms");

    // The overview: statistics slots of the window, the open calls' backlog, the workers.
    for (what, p) in [
        (
            "stats, all functions",
            StatsList {
                since: T0 - 900_000,
                ..Default::default()
            },
        ),
        (
            "stats, one function",
            StatsList {
                since: T0 - 86_400_000,
                app: Some("app1".into()),
                function: Some("f3".into()),
            },
        ),
    ] {
        let mut q = explain("");
        stats::push_list_query(&mut q, &p);
        assert_indexed(what, &plan(&store, q).await, &[]);
    }
    let backlog = calls::backlog_sql();
    // The backlog reads open calls only (found by state), and groups them by function.
    let lines = plan(&store, explain(&backlog)).await;
    assert_indexed_sorting("backlog", &lines, &[], true);
    // Workers are few (stopped ones are pruned): a scan of them is fine; their running
    // inputs are counted through the index of running inputs by worker.
    let workers_plan = plan(&store, explain(workers::LIST_SQL)).await;
    assert_indexed_sorting("workers", &workers_plan, &["w"], true);
    let ms = time(|| async {
        store
            .function_stats(StatsList {
                since: T0 - 900_000,
                ..Default::default()
            })
            .await
            .unwrap();
        store.function_backlog().await.unwrap();
        store.worker_list(T0).await.unwrap();
    })
    .await;
    println!("overview (15 min of stats, backlog, workers): {ms:.2} ms");
    store.close().await;
}
