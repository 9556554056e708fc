//! The dashboard's reads stay fast with a million calls: with 1,000,000 calls (and their
//! inputs, attempts and log lines) in the store, every query the calls list, a call page and
//! the overview run is planned on indexes: never a scan of a whole table, nor a sort of
//! more than a few rows.
//!
//! Written once for both backends; each backend's `dialect::plans` fills the tables in its
//! SQL and reads its planner's output. The check is on the plans, not the clock; the times
//! are printed as figures (`hopper bench --scenario dashboard` measures the pages over HTTP).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::time::Instant;

use crate::db::QueryBuilder;
use hopper_core::api::Origin;
use hopper_core::{CallId, InputState};
use hopper_store::{
    AttemptList, CallList, FailedInputList, FunctionKey, InputLease, LogList, StatsList, Store,
};

use crate::dialect::plans;
use crate::dialect::{Db, DbPool};
use crate::{calls, inputs, stats, workers};

/// What a plan may do beyond searching indexes.
pub enum Allow {
    Nothing,
    /// Walk an index in order (stopped by `LIMIT`).
    WalkInOrder,
    /// Sort rows found by index: few by construction.
    SortFew,
    /// Scan (and sort) this small table, named in the query by `alias`.
    SmallTable {
        table: &'static str,
        alias: &'static str,
    },
}

const CALLS: i64 = 1_000_000;
/// The most inputs a worker leases at once in the plans checked (a batch's size).
const LEASE_MAX: u32 = 32;
/// The fixture's first call was made at `T0`, the next 10 ms later, and so on.
pub const T0: i64 = 1_700_000_000_000;

/// The id of the `i`th fixture call: 26 digits, valid Crockford base32, ordered like `i`.
fn id(i: i64) -> CallId {
    format!("hc-{i:026}").parse().unwrap()
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

/// Every calls list the dashboard and the CLI can ask for: each filter alone and together,
/// first pages and pages further back.
fn call_lists() -> Vec<CallList> {
    let cursor = id(CALLS / 2);
    let since = CallId::first_at(T0 + CALLS * 10 - 3_600_000);
    let mut lists = Vec::new();
    for app in [None, Some("app1")] {
        for function in [None, Some("f3")] {
            for state in [None, Some(InputState::Failed)] {
                for origin in [None, Some(Origin::Schedule)] {
                    for (before, after) in [
                        (None, None),
                        (Some(cursor.clone()), None),
                        (None, Some(since.clone())),
                    ] {
                        lists.push(CallList {
                            app: app.map(str::to_string).or(function.map(|_| "app1".into())),
                            function: function.map(str::to_string),
                            state,
                            origin,
                            before,
                            after,
                            limit: 51,
                        });
                    }
                }
            }
        }
    }
    lists
}

/// Checks the plans of every dashboard query; `write` fills, `read` plans.
pub async fn check(store: &dyn Store, write: &DbPool, read: &DbPool) {
    let started = Instant::now();
    for sql in plans::fill(CALLS, T0) {
        crate::db::query(&sql).execute(write).await.unwrap();
    }
    println!(
        "filled {CALLS} calls in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    for p in call_lists() {
        let mut q: QueryBuilder<Db> = QueryBuilder::new(plans::EXPLAIN);
        calls::push_list_query(&mut q, &p);
        let unfiltered = p.app.is_none()
            && p.state.is_none()
            && p.origin.is_none()
            && p.before.is_none()
            && p.after.is_none();
        // Unfiltered, the newest calls are a walk of the id index, stopped after a page.
        let allow = if unfiltered {
            Allow::WalkInOrder
        } else {
            Allow::Nothing
        };
        let plan = plans::lines(q.build().fetch_all(read).await.unwrap());
        plans::assert_indexed(&format!("{p:?}"), &plan, allow);
    }
    let cursor = id(CALLS / 2);
    let figures = [
        (
            "calls list, newest 50",
            CallList {
                limit: 51,
                ..Default::default()
            },
        ),
        (
            "calls list, schedule origin and failed (none match)",
            CallList {
                origin: Some(Origin::Schedule),
                state: Some(InputState::Failed),
                limit: 51,
                ..Default::default()
            },
        ),
        (
            "calls list, one function and failed, mid-history",
            CallList {
                app: Some("app1".into()),
                function: Some("f3".into()),
                state: Some(InputState::Failed),
                before: Some(cursor.clone()),
                limit: 51,
                ..Default::default()
            },
        ),
    ];
    for (what, p) in figures {
        let ms = time(|| store.call_list(p)).await;
        println!("{what}: {ms:.2} ms");
    }

    // A call page: the call, its input, attempts and log lines.
    let call = id(CALLS - 7);
    let call_sql = format!("{}{}", plans::EXPLAIN, calls::get_sql());
    let input_sql = format!("{}{}", plans::EXPLAIN, inputs::GET_SQL);
    let first_failed_sql = format!("{}{}", plans::EXPLAIN, inputs::FIRST_FAILED_SQL);
    let attempts_sql = format!(
        "{}{}",
        plans::EXPLAIN,
        inputs::attempt_list_sql(false, false)
    );
    let input_attempts_sql = format!(
        "{}{}",
        plans::EXPLAIN,
        inputs::attempt_list_sql(true, false)
    );
    let logs_sql = format!("{}{}", plans::EXPLAIN, workers::LOG_LIST_SQL);
    let backlog_sql = format!("{}{}", plans::EXPLAIN, calls::backlog_sql());
    let workers_sql = format!("{}{}", plans::EXPLAIN, workers::LIST_SQL);
    let page = [
        (
            "call",
            crate::db::query(&call_sql).bind(call.to_string()),
            Allow::Nothing,
        ),
        (
            "input",
            crate::db::query(&input_sql)
                .bind(call.to_string())
                .bind(0i64),
            Allow::Nothing,
        ),
        (
            // A map's error names its first failed input: found in the index of failed ones.
            "first failed input",
            crate::db::query(&first_failed_sql).bind(call.to_string()),
            Allow::Nothing,
        ),
        (
            "attempts",
            crate::db::query(&attempts_sql)
                .bind(call.to_string())
                .bind(200i64),
            Allow::Nothing,
        ),
        (
            "one input's attempts",
            crate::db::query(&input_attempts_sql)
                .bind(call.to_string())
                .bind(200i64)
                .bind(0i64),
            Allow::Nothing,
        ),
        (
            "logs",
            crate::db::query(&logs_sql)
                .bind(call.to_string())
                .bind(0i64)
                .bind(None::<i64>)
                .bind(1000i64),
            Allow::Nothing,
        ),
        (
            // Open calls only (found by state), grouped by function.
            "backlog",
            crate::db::query(&backlog_sql).bind(T0),
            Allow::SortFew,
        ),
        (
            // Workers are few (stopped ones are pruned); their running inputs are counted
            // through the index of running inputs by worker.
            "workers",
            crate::db::query(&workers_sql).bind(T0),
            Allow::SmallTable {
                table: "workers",
                alias: "w",
            },
        ),
    ];
    // A worker's lease, for workers serving one, two and ten functions (10,000 inputs
    // pending, 2,500 of each fixture function): a walk of the pending index per function,
    // stopped by the batch's size, never a sort of every pending input of them.
    for n in [1, 2, 10] {
        let lease = InputLease {
            worker_id: "hw-00000000000000000000000001".parse().unwrap(),
            functions: (0..n)
                .map(|i| FunctionKey {
                    app: format!("app{}", i % 2),
                    function: format!("f{i}"),
                })
                .collect(),
            max: LEASE_MAX,
            now: T0 + CALLS * 10,
            lease_ms: 30_000,
            deadline_slack_ms: 60_000,
        };
        let mut q: QueryBuilder<Db> = QueryBuilder::new(plans::EXPLAIN);
        inputs::push_lease_query(&mut q, &lease, &lease.functions, i64::from(LEASE_MAX));
        let plan = plans::lines(q.build().fetch_all(write).await.unwrap());
        plans::assert_walks_per_function(
            &format!("a lease for a worker of {n} functions"),
            &plan,
            n,
            LEASE_MAX,
        );
        let mut q: QueryBuilder<Db> = QueryBuilder::new(plans::EXPLAIN);
        inputs::push_next_due_query(&mut q, &lease.functions);
        let plan = plans::lines(q.build().fetch_all(read).await.unwrap());
        plans::assert_walks_per_function(
            &format!("the next due time for a worker of {n} functions"),
            &plan,
            n,
            1,
        );
    }

    let listed: Vec<CallId> = (0..50).map(|i| id(CALLS - 1 - i)).collect();
    let mut q: QueryBuilder<Db> = QueryBuilder::new(plans::EXPLAIN);
    inputs::push_first_many_query(&mut q, &listed);
    let plan = plans::lines(q.build().fetch_all(read).await.unwrap());
    plans::assert_indexed("a page's first inputs", &plan, Allow::Nothing);
    // Failed inputs across calls: a walk of the failed ones by time, whatever the filter; a
    // call's: the failed ones of that call.
    let failed_lists = [
        FailedInputList {
            limit: 101,
            ..Default::default()
        },
        FailedInputList {
            app: Some("app1".into()),
            function: Some("f3".into()),
            since: Some(T0),
            before: Some((T0 + CALLS * 10, 7)),
            limit: 101,
            ..Default::default()
        },
        FailedInputList {
            call: Some(call.clone()),
            limit: 101,
            ..Default::default()
        },
    ];
    for p in &failed_lists {
        let mut q: QueryBuilder<Db> = QueryBuilder::new(plans::EXPLAIN);
        inputs::push_failed_list_query(&mut q, p);
        let plan = plans::lines(q.build().fetch_all(read).await.unwrap());
        plans::assert_indexed(&format!("{p:?}"), &plan, Allow::WalkInOrder);
    }
    for (what, q, allow) in page {
        let plan = plans::lines(q.fetch_all(read).await.unwrap());
        plans::assert_indexed(what, &plan, allow);
    }
    let ms = time(|| async {
        store.call_get(&call).await.unwrap().unwrap();
        store.input_get(&call, 0).await.unwrap().unwrap();
        store
            .attempt_list(AttemptList {
                call_id: call.clone(),
                index: None,
                after_index: None,
                limit: 200,
                max_bytes: None,
            })
            .await
            .unwrap();
        store
            .log_list(LogList {
                call_id: call.clone(),
                index: None,
                after_seq: 0,
                limit: 1000,
                max_bytes: None,
            })
            .await
            .unwrap();
    })
    .await;
    println!("call page (call, input, attempts, logs): {ms:.2} ms");

    // The overview and a function page: statistics slots of the window.
    let now = T0 + CALLS * 10;
    for (what, p) in [
        (
            "stats, all functions, 15 min",
            StatsList {
                since: now - 900_000,
                ..Default::default()
            },
        ),
        (
            "stats, one function, 24 h",
            StatsList {
                since: now - 86_400_000,
                app: Some("app1".into()),
                function: Some("f3".into()),
            },
        ),
    ] {
        let mut q: QueryBuilder<Db> = QueryBuilder::new(plans::EXPLAIN);
        stats::push_list_query(&mut q, &p);
        let plan = plans::lines(q.build().fetch_all(read).await.unwrap());
        plans::assert_indexed(what, &plan, Allow::Nothing);
    }
    let ms = time(|| async {
        store
            .function_stats(StatsList {
                since: now - 900_000,
                ..Default::default()
            })
            .await
            .unwrap();
        store.function_backlog(T0).await.unwrap();
        store.worker_list(now).await.unwrap();
    })
    .await;
    println!("overview (15 min of stats, backlog, workers): {ms:.2} ms");
}
