//! The conformance suite: one set of behaviours every [`Store`] backend must show, written once
//! and expanded per backend by [`conformance_suite!`](crate::conformance_suite).
//!
//! This is test code shipped as a library (behind the `conformance` feature) so that each
//! backend's tests run exactly the same checks; that is why it may panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::sync::Arc;

use hopper_core::api::{InputError, Lease, LogStream, Origin, Outcome};
use hopper_core::retry::RetryPolicy;
use hopper_core::{CallId, CallState, FunctionSpec, InputState, WorkerId};
use serde_json::json;

use crate::*;

/// Expands the whole suite into `#[tokio::test]`s. `$setup` is an async expression giving
/// `Option<(store, guard)>`; `None` means the backend is not available here (the setup prints
/// why), and the tests return after saying they skipped.
#[macro_export]
macro_rules! conformance_suite {
    ($setup:expr) => {
        $crate::conformance_suite!(@each $setup;
            deploy_makes_a_new_version_each_time,
            functions_are_found_by_bare_or_qualified_name,
            a_call_starts_with_all_inputs_pending,
            an_idempotency_key_returns_the_same_call,
            an_idempotency_key_of_another_function_conflicts,
            concurrent_spawns_with_one_idempotency_key_make_one_call,
            a_bulk_spawn_answers_taken_keys_with_their_calls_and_creates_the_rest,
            a_bulk_spawn_with_a_conflicting_key_creates_nothing,
            concurrent_spawns_each_make_their_own_call,
            leasing_takes_due_inputs_oldest_first_up_to_max,
            leasing_skips_inputs_not_yet_due_and_other_functions,
            a_success_is_recorded_once_and_ends_the_call,
            a_failure_with_retries_left_waits_for_its_backoff,
            a_failure_without_retries_left_fails_the_call,
            an_expired_lease_goes_back_to_pending,
            a_lost_input_goes_back_to_its_place_in_the_queue,
            a_lease_past_its_deadline_times_out,
            a_late_result_is_kept_as_an_attempt_not_a_result,
            heartbeats_extend_leases_and_report_lost_ones,
            cancel_ends_pending_and_running_inputs,
            cancel_of_an_ended_call_changes_nothing,
            calls_are_listed_newest_first_with_filters_and_cursor,
            pruning_removes_only_old_ended_calls,
            logs_are_kept_per_attempt_in_order,
            a_stopped_worker_hands_its_leases_back,
            a_worker_s_machine_is_kept_as_it_registered_it,
            a_lease_lost_too_often_fails_the_input,
            concurrent_leasing_never_hands_an_input_out_twice,
            many_workers_leasing_and_reporting_at_once_are_each_answered_alone,
            a_spawn_the_database_refuses_fails_alone_among_concurrent_spawns,
            a_streaming_map_takes_chunks_and_ends_only_when_closed,
            a_retried_chunk_is_taken_once_and_a_gap_is_refused,
            results_stream_by_index_and_by_completion,
            for_each_keeps_no_outputs,
            a_returned_input_runs_again_without_using_a_retry,
            backlog_counts_unfinished_inputs_per_function,
            an_empty_closed_map_has_ended,
            a_deploy_replaces_and_removes_schedules,
            a_due_time_fires_once,
            missed_due_times_are_recorded_not_fired,
            an_overlapping_firing_is_skipped_when_the_schedule_says_so,
            a_paused_schedule_is_not_due_and_resumes_from_now,
            ended_calls_are_listed_in_the_order_they_ended,
            an_attempts_log_is_capped_with_a_marker,
            the_lead_once_taken_is_kept,
            settings_are_kept,
            ended_attempts_are_counted_per_function_and_slot,
            calls_are_listed_from_a_lower_bound,
            attempts_are_listed_by_input_up_to_a_limit,
            one_batch_ends_many_calls_each_once,
            first_inputs_are_read_for_many_calls_at_once,
            failed_inputs_are_found_across_calls_and_reruns_name_what_they_rerun,
            a_delayed_call_is_not_leased_before_it_starts_nor_its_later_chunks,
            every_way_an_input_ends_appears_once_in_completion_order,
            only_the_lease_holder_can_complete_or_log,
            a_recorded_attempt_is_never_rewritten,
            an_attempt_keeps_the_size_of_its_batch,
            a_failure_that_cannot_get_better_skips_its_retries,
            a_nul_character_in_a_log_line_loses_no_line,
            cancels_completions_rescues_and_heartbeats_of_the_same_calls_never_deadlock,
            higher_priorities_lease_first_and_each_priority_in_order,
            max_running_holds_and_a_place_frees_when_an_input_ends_or_is_cancelled,
            keys_take_turns_so_a_late_small_key_is_not_stuck_behind_a_big_one,
            max_running_per_key_holds_per_key_and_never_blocks_other_keys,
            the_limits_state_names_what_holds_inputs_back,
            a_key_whose_every_input_is_cancelled_frees_its_place,
            a_lease_names_the_limits_that_held_inputs_back,
            a_rate_allows_its_count_per_window_and_says_when_the_next_start_is,
            a_rate_per_key_holds_per_key,
            keys_at_their_limits_never_hold_back_other_keys,
            limits_changed_by_a_redeploy_apply_to_inputs_already_waiting,
            concurrent_leases_never_exceed_max_running,
            inputs_running_before_limits_count_for_them,
            secrets_are_stored_replaced_listed_and_deleted,
            snapshots_are_kept_while_a_version_needs_them,
            blobs_are_read_in_chunks_and_kept_while_a_call_refers_to_them,
            a_pause_moves_running_leases_and_deadlines_on,
            a_clock_step_moves_leases_deadlines_and_backoffs,
            a_result_after_a_timeout_is_kept_as_a_late_attempt,
            a_schedule_is_rescheduled_only_from_the_due_time_expected,
            the_schema_is_the_one_this_build_knows,
            concurrent_deploys_of_one_app_each_get_a_version,
        );
    };
    (@each $setup:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let Some((store, _guard)) = $setup.await else {
                    println!("SKIP {}: backend not available", stringify!($name));
                    return;
                };
                $crate::conformance::$name(std::sync::Arc::new(store)).await;
            }
        )*
    };
}

const T0: i64 = 1_700_000_000_000;
const LEASE_MS: i64 = 10_000;
const SLACK_MS: i64 = 5_000;

fn spec(app: &str, name: &str, max_retries: u32, timeout_ms: u64) -> FunctionSpec {
    FunctionSpec {
        app: app.into(),
        name: name.into(),
        command: vec!["true".into()],
        serve: Vec::new(),
        batch: None,
        scaling: Default::default(),
        workdir: "/".into(),
        env: Default::default(),
        timeout_ms,
        retries: RetryPolicy {
            max_retries,
            backoff_coefficient: 2.0,
            initial_delay_ms: 1_000,
            max_delay_ms: 60_000,
        },
        concurrency: 1,
        ..Default::default()
    }
}

/// Deploys app `a` with `ok` (no retries), `retry` (2 retries) and `slow` (1 s timeout).
async fn deploy(store: &dyn Store) {
    store
        .app_deploy(AppDeploy {
            app: "a".into(),
            manifest: "app = \"a\"".into(),
            functions: vec![
                spec("a", "ok", 0, 60_000),
                spec("a", "retry", 2, 60_000),
                spec("a", "slow", 0, 1_000),
            ],
            schedules: Vec::new(),
            notify: Vec::new(),
            snapshot: None,
            now: T0,
        })
        .await
        .unwrap();
}

fn key(function: &str) -> FunctionKey {
    FunctionKey {
        app: "a".into(),
        function: function.into(),
    }
}

/// Deploys app `a` again with `lim` (no retries) limited by `limits`.
async fn deploy_limited(store: &dyn Store, limits: hopper_core::limits::Limits, now: i64) {
    let mut limited = spec("a", "lim", 0, 60_000);
    limited.limits = limits;
    store
        .app_deploy(AppDeploy {
            app: "a".into(),
            manifest: "app = \"a\"".into(),
            functions: vec![spec("a", "ok", 0, 60_000), limited],
            schedules: Vec::new(),
            notify: Vec::new(),
            snapshot: None,
            now,
        })
        .await
        .unwrap();
}

/// Spawns one call of `function` per entry of `calls`: `(key, priority, input)`.
async fn spawn_keyed(
    store: &dyn Store,
    function: &str,
    calls: &[(Option<&str>, i32, i64)],
    now: i64,
) -> Vec<CallId> {
    let version = store
        .function_find(FunctionFind {
            app: Some("a".into()),
            function: function.into(),
        })
        .await
        .unwrap()[0]
        .version;
    let mut ids = Vec::new();
    for (key, priority, input) in calls {
        let id = CallId::generate();
        store
            .call_insert(CallInsert {
                id: id.clone(),
                app: "a".into(),
                function: function.into(),
                version,
                origin: Origin::Spawn,
                idempotency_key: None,
                inputs: vec![json!(input).to_string()],
                accepting_inputs: false,
                discard_results: false,
                schedule: None,
                rerun_of: None,
                starts_at: None,
                priority: *priority,
                key: key.map(str::to_string),
                input_keys: Vec::new(),
                now,
            })
            .await
            .unwrap();
        ids.push(id);
    }
    ids
}

/// The inputs (JSON numbers) of leased rows, sorted.
fn inputs_of(rows: &[LeasedRow]) -> Vec<i64> {
    let mut got: Vec<i64> = rows.iter().map(|r| r.input.parse().unwrap()).collect();
    got.sort();
    got
}

async fn lease_batch(
    store: &dyn Store,
    worker: &WorkerId,
    function: &str,
    max: u32,
    now: i64,
) -> LeaseBatch {
    store
        .input_lease_available(InputLease {
            worker_id: worker.clone(),
            functions: vec![key(function)],
            max,
            now,
            lease_ms: LEASE_MS,
            deadline_slack_ms: SLACK_MS,
        })
        .await
        .unwrap()
}

/// Limits as a manifest's `limits` table writes them, one `name = value` a line.
fn limits(text: &str) -> hopper_core::limits::Limits {
    let mut l = hopper_core::limits::Limits::default();
    for line in text.lines() {
        let (name, value) = line.split_once('=').unwrap();
        let value = value.trim().trim_matches('"');
        let count = || Some(value.parse::<u32>().unwrap());
        let rate = || Some(hopper_core::limits::Rate::parse(value).unwrap());
        match name.trim() {
            "key" => l.key = Some(value.into()),
            "max_running" => l.max_running = count(),
            "max_running_per_key" => l.max_running_per_key = count(),
            "rate" => l.rate = rate(),
            "rate_per_key" => l.rate_per_key = rate(),
            other => panic!("no limit {other}"),
        }
    }
    l
}

pub async fn higher_priorities_lease_first_and_each_priority_in_order(store: Arc<dyn Store>) {
    deploy(&*store).await;
    let w = worker(&*store).await;
    spawn_keyed(
        &*store,
        "ok",
        &[
            (None, 0, 1),
            (None, 5, 2),
            (None, -3, 3),
            (None, 5, 4),
            (None, 0, 5),
            (None, 9, 6),
        ],
        T0,
    )
    .await;
    let mut order = Vec::new();
    loop {
        let got = lease(&*store, &w, "ok", 1, T0 + 1).await;
        if got.is_empty() {
            break;
        }
        order.extend(inputs_of(&got));
    }
    assert_eq!(order, [6, 2, 4, 1, 5, 3]);
    // A batch takes the highest first too.
    spawn_keyed(
        &*store,
        "ok",
        &[(None, 0, 7), (None, 1, 8), (None, 2, 9)],
        T0 + 2,
    )
    .await;
    let got = lease(&*store, &w, "ok", 2, T0 + 3).await;
    assert_eq!(inputs_of(&got), [8, 9]);
}

pub async fn max_running_holds_and_a_place_frees_when_an_input_ends_or_is_cancelled(
    store: Arc<dyn Store>,
) {
    deploy_limited(&*store, limits("max_running = 2"), T0).await;
    let w = worker(&*store).await;
    let ids = spawn_keyed(
        &*store,
        "lim",
        &[(None, 0, 1), (None, 0, 2), (None, 0, 3), (None, 0, 4)],
        T0,
    )
    .await;
    let first = lease_batch(&*store, &w, "lim", 10, T0 + 1).await;
    assert_eq!(inputs_of(&first.rows), [1, 2]);
    let held = lease_batch(&*store, &w, "lim", 10, T0 + 2).await;
    assert!(held.rows.is_empty());
    assert_eq!(held.limited, Some(None), "only an end frees a place");
    complete(
        &*store,
        &w,
        first.rows[0].lease,
        Outcome::Succeeded { output: json!(1) },
        T0 + 3,
    )
    .await;
    let next = lease(&*store, &w, "lim", 10, T0 + 4).await;
    assert_eq!(inputs_of(&next), [3]);
    // A cancelled running input frees its place at once.
    let running = first.rows[1].call_id.clone();
    assert!(ids.contains(&running));
    store
        .call_cancel(CallCancel {
            id: running,
            now: T0 + 5,
        })
        .await
        .unwrap();
    let last = lease(&*store, &w, "lim", 10, T0 + 6).await;
    assert_eq!(inputs_of(&last), [4]);
    // Other functions are not held back.
    spawn_keyed(
        &*store,
        "ok",
        &[(None, 0, 5), (None, 0, 6), (None, 0, 7)],
        T0 + 7,
    )
    .await;
    assert_eq!(lease(&*store, &w, "ok", 10, T0 + 8).await.len(), 3);
}

pub async fn keys_take_turns_so_a_late_small_key_is_not_stuck_behind_a_big_one(
    store: Arc<dyn Store>,
) {
    deploy_limited(&*store, limits("key = \"/tenant\""), T0).await;
    let w = worker(&*store).await;
    let big: Vec<(Option<&str>, i32, i64)> = (0..50).map(|i| (Some("big"), 0, i)).collect();
    spawn_keyed(&*store, "lim", &big, T0).await;
    spawn_keyed(
        &*store,
        "lim",
        &[(Some("small"), 0, 100), (Some("small"), 0, 101)],
        T0 + 10,
    )
    .await;
    spawn_keyed(&*store, "lim", &[(None, 0, 200)], T0 + 20).await;
    // Three groups (two keys and the inputs without one) share each lease.
    let got = lease(&*store, &w, "lim", 6, T0 + 30).await;
    let got = inputs_of(&got);
    assert!(
        got.contains(&100) && got.contains(&101) && got.contains(&200),
        "{got:?}"
    );
    assert_eq!(got.len(), 6, "{got:?}");
    // Within a key, oldest first; one input at a time, the keys in turn.
    let mut order = Vec::new();
    for i in 0..4 {
        order.extend(inputs_of(&lease(&*store, &w, "lim", 1, T0 + 40 + i).await));
    }
    assert_eq!(order, [3, 4, 5, 6], "only the big key is left");
    // The input's key comes from the spawn; keyless spawns of a keyed function run too.
    let rest = lease(&*store, &w, "lim", 100, T0 + 50).await;
    assert_eq!(rest.len(), 50 - 7);
}

pub async fn max_running_per_key_holds_per_key_and_never_blocks_other_keys(store: Arc<dyn Store>) {
    deploy_limited(&*store, limits("max_running_per_key = 1"), T0).await;
    let w = worker(&*store).await;
    let a: Vec<(Option<&str>, i32, i64)> = (0..10).map(|i| (Some("acme"), 0, i)).collect();
    spawn_keyed(&*store, "lim", &a, T0).await;
    spawn_keyed(
        &*store,
        "lim",
        &[(Some("beta"), 0, 20), (Some("beta"), 0, 21)],
        T0 + 1,
    )
    .await;
    let first = lease_batch(&*store, &w, "lim", 10, T0 + 2).await;
    assert_eq!(inputs_of(&first.rows), [0, 20]);
    let held = lease_batch(&*store, &w, "lim", 10, T0 + 3).await;
    assert!(held.rows.is_empty());
    assert_eq!(held.limited, Some(None));
    // beta's end lets beta's next run; acme still waits.
    let beta = first.rows.iter().find(|r| r.input == "20").unwrap().lease;
    complete(
        &*store,
        &w,
        beta,
        Outcome::Succeeded { output: json!(1) },
        T0 + 4,
    )
    .await;
    assert_eq!(
        inputs_of(&lease(&*store, &w, "lim", 10, T0 + 5).await),
        [21]
    );
    // An expired lease frees its key's place once it is rescued.
    store
        .lease_rescue_expired(LeaseRescue {
            now: T0 + 2 + LEASE_MS + 1,
            limit: 100,
        })
        .await
        .unwrap();
    let again = lease(&*store, &w, "lim", 10, T0 + 2 + LEASE_MS + 2).await;
    assert_eq!(
        again.len(),
        1,
        "acme's one place is free again, and only one"
    );
}

/// What a function's limits hold back, read as the API, the dashboard and `/metrics` show it.
pub async fn the_limits_state_names_what_holds_inputs_back(store: Arc<dyn Store>) {
    let rules = limits("max_running = 3\nmax_running_per_key = 1\nrate_per_key = \"1/h\"");
    deploy_limited(&*store, rules.clone(), T0).await;
    let w = worker(&*store).await;
    let ids = spawn_keyed(
        &*store,
        "lim",
        &[
            (Some("acme"), 0, 1),
            (Some("acme"), 0, 2),
            (Some("acme"), 0, 3),
            (Some("beta"), 0, 4),
            (Some("gamma"), 0, 5),
            (Some("gamma"), 0, 6),
            (None, 0, 7),
        ],
        T0,
    )
    .await;
    assert_eq!(
        inputs_of(&lease(&*store, &w, "lim", 10, T0 + 1).await),
        [1, 4, 5]
    );
    let read = |call: Option<CallId>, count: bool, now: i64| LimitsRead {
        function: key("lim"),
        limits: rules.clone(),
        call,
        count,
        now,
    };
    let state = store.limits_state(read(None, true, T0 + 2)).await.unwrap();
    assert_eq!(state.running, 3);
    assert_eq!(
        state.busiest,
        [("acme".into(), 1), ("beta".into(), 1), ("gamma".into(), 1)]
    );
    let holds: Vec<(LimitKind, Option<&str>, i64, i64)> = state
        .holds
        .iter()
        .map(|h| (h.limit, h.key.as_deref(), h.running, h.waiting))
        .collect();
    // max_running holds all four due inputs; each key with inputs due behind it is held by
    // both its limits (beta has none left, so it holds nothing back).
    assert_eq!(
        holds,
        [
            (LimitKind::MaxRunning, None, 3, 4),
            (LimitKind::MaxRunningPerKey, Some("acme"), 1, 2),
            (LimitKind::RatePerKey, Some("acme"), 1, 2),
            (LimitKind::MaxRunningPerKey, Some("gamma"), 1, 1),
            (LimitKind::RatePerKey, Some("gamma"), 1, 1),
        ]
    );
    let rate = &state.holds[2];
    assert!(rate.next_at.is_some_and(|at| at > T0 + 2));
    // A call's view: the keys of its pending inputs, holds not counted.
    let state = store
        .limits_state(read(Some(ids[1].clone()), false, T0 + 2))
        .await
        .unwrap();
    assert_eq!(state.call_keys, ["acme"]);
    assert!(state.holds.iter().all(|h| h.waiting == 0));
    assert_eq!(state.holds.len(), 7, "beta's limits are at their bound too");
    let state = store
        .limits_state(read(Some(ids[6].clone()), false, T0 + 2))
        .await
        .unwrap();
    assert_eq!(state.call_keys, [""]);
}

/// Cancelling every input of a key, the running one too, frees the key's place at once:
/// nothing waits for an input that will never end.
pub async fn a_key_whose_every_input_is_cancelled_frees_its_place(store: Arc<dyn Store>) {
    deploy_limited(
        &*store,
        limits("max_running = 1\nmax_running_per_key = 1"),
        T0,
    )
    .await;
    let w = worker(&*store).await;
    let acme = spawn_keyed(
        &*store,
        "lim",
        &[(Some("acme"), 0, 1), (Some("acme"), 0, 2)],
        T0,
    )
    .await;
    spawn_keyed(&*store, "lim", &[(Some("beta"), 0, 3)], T0 + 1).await;
    assert_eq!(inputs_of(&lease(&*store, &w, "lim", 10, T0 + 2).await), [1]);
    assert!(lease(&*store, &w, "lim", 10, T0 + 3).await.is_empty());
    for id in &acme {
        store
            .call_cancel(CallCancel {
                id: id.clone(),
                now: T0 + 4,
            })
            .await
            .unwrap()
            .unwrap();
    }
    let state = store
        .limits_state(LimitsRead {
            function: key("lim"),
            limits: limits("max_running = 1\nmax_running_per_key = 1"),
            call: None,
            count: true,
            now: T0 + 5,
        })
        .await
        .unwrap();
    assert_eq!((state.running, state.holds.len()), (0, 0), "{state:?}");
    assert_eq!(inputs_of(&lease(&*store, &w, "lim", 10, T0 + 5).await), [3]);
    spawn_keyed(&*store, "lim", &[(Some("acme"), 0, 4)], T0 + 6).await;
    let w2 = worker(&*store).await;
    assert!(
        lease(&*store, &w2, "lim", 10, T0 + 7).await.is_empty(),
        "max_running"
    );
}

/// A lease says which limits held due inputs back, per function, even when it claimed others.
pub async fn a_lease_names_the_limits_that_held_inputs_back(store: Arc<dyn Store>) {
    deploy_limited(&*store, limits("max_running_per_key = 1"), T0).await;
    let w = worker(&*store).await;
    spawn_keyed(
        &*store,
        "lim",
        &[
            (Some("acme"), 0, 1),
            (Some("acme"), 0, 2),
            (Some("beta"), 0, 3),
        ],
        T0,
    )
    .await;
    let first = lease_batch(&*store, &w, "lim", 10, T0 + 1).await;
    assert_eq!(inputs_of(&first.rows), [1, 3]);
    assert!(first.held.is_empty(), "{:?}", first.held);
    spawn_keyed(&*store, "lim", &[(Some("gamma"), 0, 4)], T0 + 2).await;
    let next = lease_batch(&*store, &w, "lim", 10, T0 + 3).await;
    assert_eq!(inputs_of(&next.rows), [4]);
    assert_eq!(next.held, [(key("lim"), vec![LimitKind::MaxRunningPerKey])]);
    let spent = lease_batch(&*store, &w, "lim", 10, T0 + 4).await;
    assert!(spent.rows.is_empty());
    assert_eq!(
        spent.held,
        [(key("lim"), vec![LimitKind::MaxRunningPerKey])]
    );
    spawn_keyed(&*store, "ok", &[(None, 0, 5)], T0 + 5).await;
    let plain = store
        .input_lease_available(InputLease {
            worker_id: w.clone(),
            functions: vec![key("lim"), key("ok")],
            max: 10,
            now: T0 + 6,
            lease_ms: LEASE_MS,
            deadline_slack_ms: SLACK_MS,
        })
        .await
        .unwrap();
    assert_eq!(inputs_of(&plain.rows), [5]);
    assert_eq!(
        plain.held,
        [(key("lim"), vec![LimitKind::MaxRunningPerKey])]
    );
}

pub async fn a_rate_allows_its_count_per_window_and_says_when_the_next_start_is(
    store: Arc<dyn Store>,
) {
    deploy_limited(&*store, limits("rate = \"3/s\""), T0).await;
    let w = worker(&*store).await;
    let calls: Vec<(Option<&str>, i32, i64)> = (0..10).map(|i| (None, 0, i)).collect();
    spawn_keyed(&*store, "lim", &calls, T0).await;
    // Spread through the period: a slot (10 ms) and the one before it hold two shares at
    // most (one each at 3/s), three per second.
    assert_eq!(
        lease_batch(&*store, &w, "lim", 10, T0 + 5).await.rows.len(),
        2
    );
    let held = lease_batch(&*store, &w, "lim", 10, T0 + 6).await;
    assert!(held.rows.is_empty());
    assert_eq!(
        held.limited,
        Some(Some(T0 + 20)),
        "the slot after next: this one took two shares"
    );
    assert!(lease(&*store, &w, "lim", 10, T0 + 15).await.is_empty());
    assert_eq!(lease(&*store, &w, "lim", 10, T0 + 25).await.len(), 1);
    let held = lease_batch(&*store, &w, "lim", 10, T0 + 500).await;
    assert!(held.rows.is_empty());
    let at = held.limited.flatten().expect("a rate says when");
    assert_eq!(
        at,
        T0 + 1010,
        "when the first starts' slot leaves the window"
    );
    assert!(lease(&*store, &w, "lim", 10, at - 1).await.is_empty());
    assert_eq!(lease(&*store, &w, "lim", 10, at).await.len(), 2);
    // Over any window of a second, three at most; over ten seconds, the rate is met.
    let mut started = vec![T0 + 5, T0 + 5, T0 + 25, at, at];
    let mut now = at;
    while now < T0 + 4_000 {
        now += 7;
        for _ in lease(&*store, &w, "lim", 10, now).await {
            started.push(now);
        }
    }
    for (i, t) in started.iter().enumerate() {
        let within = started[i..].iter().take_while(|s| **s < t + 1000).count();
        assert!(
            within <= 3,
            "{within} starts in the second from {t}: {started:?}"
        );
    }
    assert_eq!(started.len(), 10, "all ten ran within 4 s: {started:?}");
}

pub async fn a_rate_per_key_holds_per_key(store: Arc<dyn Store>) {
    deploy_limited(&*store, limits("rate_per_key = \"2/m\""), T0).await;
    let w = worker(&*store).await;
    let mut calls: Vec<(Option<&str>, i32, i64)> = (0..5).map(|i| (Some("a"), 0, i)).collect();
    calls.extend((10..15).map(|i| (Some("b"), 0, i)));
    spawn_keyed(&*store, "lim", &calls, T0).await;
    // Two per key per minute, in slots of 600 ms: a key's two starts may come at once.
    assert_eq!(
        inputs_of(&lease(&*store, &w, "lim", 10, T0 + 1).await),
        [0, 1, 10, 11]
    );
    assert!(lease(&*store, &w, "lim", 10, T0 + 2).await.is_empty());
    assert!(lease(&*store, &w, "lim", 10, T0 + 700).await.is_empty());
    let held = lease_batch(&*store, &w, "lim", 10, T0 + 30_000).await;
    assert!(held.rows.is_empty());
    assert!(held.limited.flatten().is_some());
    assert_eq!(
        inputs_of(&lease(&*store, &w, "lim", 10, T0 + 61_000).await),
        [2, 3, 12, 13]
    );
}

/// Keys held back by their own limits, however many, never hold back other keys nor the
/// inputs without a key.
pub async fn keys_at_their_limits_never_hold_back_other_keys(store: Arc<dyn Store>) {
    deploy_limited(&*store, limits("key = \"/t\"\nrate_per_key = \"1/h\""), T0).await;
    let w = worker(&*store).await;
    let busy: Vec<(Option<&str>, i32, i64)> = (0..30)
        .map(|i| {
            (
                Some(["k0", "k1", "k2", "k3", "k4", "k5"][i % 6]),
                0,
                i as i64,
            )
        })
        .collect();
    spawn_keyed(&*store, "lim", &busy, T0).await;
    // Each of the six keys starts one, and then waits an hour.
    assert_eq!(lease(&*store, &w, "lim", 10, T0 + 1).await.len(), 6);
    for i in 0..3 {
        assert!(lease(&*store, &w, "lim", 1, T0 + 2 + i).await.is_empty());
    }
    spawn_keyed(
        &*store,
        "lim",
        &[(Some("zz"), 0, 100), (None, 0, 101), (Some("aa"), 0, 102)],
        T0 + 10,
    )
    .await;
    let mut got = Vec::new();
    for i in 0..6 {
        got.extend(inputs_of(&lease(&*store, &w, "lim", 1, T0 + 11 + i).await));
    }
    got.sort();
    assert_eq!(got, [100, 101, 102]);
}

pub async fn limits_changed_by_a_redeploy_apply_to_inputs_already_waiting(store: Arc<dyn Store>) {
    deploy_limited(&*store, limits("max_running = 1"), T0).await;
    let w = worker(&*store).await;
    let calls: Vec<(Option<&str>, i32, i64)> = (0..6).map(|i| (None, 0, i)).collect();
    spawn_keyed(&*store, "lim", &calls, T0).await;
    assert_eq!(lease(&*store, &w, "lim", 10, T0 + 1).await.len(), 1);
    assert!(lease(&*store, &w, "lim", 10, T0 + 2).await.is_empty());
    // Raised: two more run (3 at once).
    deploy_limited(&*store, limits("max_running = 3"), T0 + 3).await;
    assert_eq!(lease(&*store, &w, "lim", 10, T0 + 4).await.len(), 2);
    // Lowered below what runs: nothing more starts.
    deploy_limited(&*store, limits("max_running = 2"), T0 + 5).await;
    assert!(lease(&*store, &w, "lim", 10, T0 + 6).await.is_empty());
    // Removed: the rest run.
    deploy_limited(&*store, hopper_core::limits::Limits::default(), T0 + 7).await;
    assert_eq!(lease(&*store, &w, "lim", 10, T0 + 8).await.len(), 3);
}

/// Inputs that were running when a deploy first gave their function limits count for them.
pub async fn inputs_running_before_limits_count_for_them(store: Arc<dyn Store>) {
    deploy_limited(&*store, hopper_core::limits::Limits::default(), T0).await;
    let w = worker(&*store).await;
    let calls: Vec<(Option<&str>, i32, i64)> = (0..6).map(|i| (None, 0, i)).collect();
    spawn_keyed(&*store, "lim", &calls, T0).await;
    let running = lease(&*store, &w, "lim", 3, T0 + 1).await;
    assert_eq!(running.len(), 3);
    deploy_limited(&*store, limits("max_running = 4"), T0 + 2).await;
    assert_eq!(
        lease(&*store, &w, "lim", 10, T0 + 3).await.len(),
        1,
        "3 run already"
    );
    complete(
        &*store,
        &w,
        running[0].lease,
        Outcome::Succeeded { output: json!(1) },
        T0 + 4,
    )
    .await;
    assert_eq!(lease(&*store, &w, "lim", 10, T0 + 5).await.len(), 1);
    assert!(lease(&*store, &w, "lim", 10, T0 + 6).await.is_empty());
}

pub async fn concurrent_leases_never_exceed_max_running(store: Arc<dyn Store>) {
    deploy_limited(
        &*store,
        limits("max_running = 5\nmax_running_per_key = 2"),
        T0,
    )
    .await;
    let mut calls: Vec<(Option<&str>, i32, i64)> = Vec::new();
    for i in 0..60 {
        calls.push((Some(["k1", "k2", "k3", "k4"][i % 4]), 0, i as i64));
    }
    spawn_keyed(&*store, "lim", &calls, T0).await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let w = worker(&*store).await;
            let mut got = Vec::new();
            for i in 0..5 {
                got.extend(lease(&*store, &w, "lim", 3, T0 + 1 + i).await);
            }
            got
        }));
    }
    let mut leased = Vec::new();
    for t in tasks {
        leased.extend(t.await.unwrap());
    }
    assert_eq!(leased.len(), 5, "max_running across concurrent leases");
    let mut per_key = std::collections::HashMap::new();
    for row in &leased {
        let n: i64 = row.input.parse().unwrap();
        *per_key.entry(n % 4).or_insert(0) += 1;
    }
    assert!(per_key.values().all(|&n| n <= 2), "{per_key:?}");
}

async fn spawn_n(store: &dyn Store, function: &str, inputs: usize, now: i64) -> CallRow {
    let inserted = store
        .call_insert(CallInsert {
            id: CallId::generate(),
            app: "a".into(),
            function: function.into(),
            version: 1,
            origin: if inputs == 1 {
                Origin::Spawn
            } else {
                Origin::Map
            },
            idempotency_key: None,
            inputs: (0..inputs).map(|i| json!({ "i": i }).to_string()).collect(),
            accepting_inputs: false,
            discard_results: false,
            schedule: None,
            rerun_of: None,
            starts_at: None,
            priority: 0,
            key: None,
            input_keys: Vec::new(),
            now,
        })
        .await
        .unwrap();
    match inserted {
        CallInserted::Created(call) => call,
        CallInserted::Existing(_) => panic!("no key was given"),
    }
}

async fn lease(
    store: &dyn Store,
    worker: &WorkerId,
    function: &str,
    max: u32,
    now: i64,
) -> Vec<LeasedRow> {
    store
        .input_lease_available(InputLease {
            worker_id: worker.clone(),
            functions: vec![key(function)],
            max,
            now,
            lease_ms: LEASE_MS,
            deadline_slack_ms: SLACK_MS,
        })
        .await
        .unwrap()
        .rows
}

async fn complete(
    store: &dyn Store,
    worker: &WorkerId,
    lease: Lease,
    outcome: Outcome,
    now: i64,
) -> CompletionRow {
    store
        .input_complete_many(InputCompleteMany {
            worker_id: worker.clone(),
            batch_sizes: Vec::new(),
            results: vec![(lease, outcome)],
            now,
        })
        .await
        .unwrap()
        .remove(0)
}

async fn worker(store: &dyn Store) -> WorkerId {
    let id = WorkerId::generate();
    store
        .worker_register(WorkerRegisterParams {
            secret_hash: String::new(),
            id: id.clone(),
            host: "test".into(),
            pid: 1,
            functions: vec!["a.ok".into()],
            concurrency: 4,
            now: T0,
            machine: None,
        })
        .await
        .unwrap();
    id
}

fn failed(code: &str) -> Outcome {
    Outcome::Failed {
        retry: true,
        error: InputError::new(code, format!("{code} happened")),
    }
}

fn all_attempts(call: &CallId) -> AttemptList {
    AttemptList {
        call_id: call.clone(),
        index: None,
        after_index: None,
        limit: 1_000,
        max_bytes: None,
    }
}

async fn state_of(store: &dyn Store, call: &CallId) -> CallState {
    store.call_get(call).await.unwrap().unwrap().state
}

pub async fn deploy_makes_a_new_version_each_time(store: Arc<dyn Store>) {
    deploy(&*store).await;
    let second = store
        .app_deploy(AppDeploy {
            app: "a".into(),
            manifest: String::new(),
            functions: vec![spec("a", "ok", 5, 1_000)],
            schedules: Vec::new(),
            notify: Vec::new(),
            snapshot: None,
            now: T0 + 1,
        })
        .await
        .unwrap();
    assert_eq!(second.version, 2);
    let apps = store.app_list().await.unwrap();
    assert_eq!(apps.len(), 1);
    assert_eq!(apps[0].version, 2);
    assert_eq!(
        apps[0].functions.len(),
        1,
        "only the current version's functions are listed"
    );
    assert_eq!(apps[0].functions[0].spec.retries.max_retries, 5);
    let versions = store.function_versions(&key("ok"), 10).await.unwrap();
    assert_eq!(
        versions
            .iter()
            .map(|v| (
                v.function.version,
                v.deployed_at,
                v.function.spec.retries.max_retries
            ))
            .collect::<Vec<_>>(),
        [(2, T0 + 1, 5), (1, T0, 0)],
        "every version of the function, newest first"
    );
    assert_eq!(
        store.function_versions(&key("ok"), 1).await.unwrap().len(),
        1
    );
    assert!(
        store
            .function_versions(&key("retry"), 10)
            .await
            .unwrap()
            .len()
            == 1,
        "a function dropped in version 2 keeps its version 1"
    );
}

pub async fn functions_are_found_by_bare_or_qualified_name(store: Arc<dyn Store>) {
    deploy(&*store).await;
    store
        .app_deploy(AppDeploy {
            app: "b".into(),
            manifest: String::new(),
            functions: vec![spec("b", "ok", 0, 1_000)],
            schedules: Vec::new(),
            notify: Vec::new(),
            snapshot: None,
            now: T0,
        })
        .await
        .unwrap();
    let bare = store
        .function_find(FunctionFind {
            app: None,
            function: "ok".into(),
        })
        .await
        .unwrap();
    assert_eq!(bare.len(), 2, "a bare name shared by two apps is ambiguous");
    let qualified = store
        .function_find(FunctionFind {
            app: Some("b".into()),
            function: "ok".into(),
        })
        .await
        .unwrap();
    assert_eq!(qualified.len(), 1);
    assert_eq!(qualified[0].spec.app, "b");
    let missing = store
        .function_find(FunctionFind {
            app: None,
            function: "nope".into(),
        })
        .await
        .unwrap();
    assert!(missing.is_empty());
}

pub async fn a_call_starts_with_all_inputs_pending(store: Arc<dyn Store>) {
    deploy(&*store).await;
    let call = spawn_n(&*store, "ok", 3, T0).await;
    assert_eq!(call.state, InputState::Pending);
    assert_eq!(call.counts.total, 3);
    assert_eq!(call.counts.pending, 3);
    let input = store.input_get(&call.id, 2).await.unwrap().unwrap();
    assert_eq!(input.state, InputState::Pending);
    assert_eq!(input.input, json!({"i": 2}).to_string());
    assert!(store.input_get(&call.id, 3).await.unwrap().is_none());
}

pub async fn an_idempotency_key_returns_the_same_call(store: Arc<dyn Store>) {
    deploy(&*store).await;
    let insert = |id: CallId| CallInsert {
        id,
        app: "a".into(),
        function: "ok".into(),
        version: 1,
        origin: Origin::Spawn,
        idempotency_key: Some("order-42".into()),
        inputs: vec!["1".into()],
        accepting_inputs: false,
        discard_results: false,
        schedule: None,
        rerun_of: None,
        starts_at: None,
        priority: 0,
        key: None,
        input_keys: Vec::new(),
        now: T0,
    };
    let first = match store.call_insert(insert(CallId::generate())).await.unwrap() {
        CallInserted::Created(c) => c,
        other => panic!("expected a new call, got {other:?}"),
    };
    match store.call_insert(insert(CallId::generate())).await.unwrap() {
        CallInserted::Existing(c) => assert_eq!(c.id, first.id),
        other => panic!("expected the existing call, got {other:?}"),
    }
    let all = store
        .call_list(CallList {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 1, "the second spawn created nothing");
}

pub async fn an_idempotency_key_of_another_function_conflicts(store: Arc<dyn Store>) {
    deploy(&*store).await;
    let insert = |function: &str| CallInsert {
        id: CallId::generate(),
        app: "a".into(),
        function: function.into(),
        version: 1,
        origin: Origin::Spawn,
        idempotency_key: Some("k".into()),
        inputs: vec!["1".into()],
        accepting_inputs: false,
        discard_results: false,
        schedule: None,
        rerun_of: None,
        starts_at: None,
        priority: 0,
        key: None,
        input_keys: Vec::new(),
        now: T0,
    };
    store.call_insert(insert("ok")).await.unwrap();
    let err = store.call_insert(insert("retry")).await.unwrap_err();
    assert!(
        matches!(err, StoreError::IdempotencyConflict { .. }),
        "{err}"
    );
    // The same key with another input is another request, not a retry of the first.
    let mut other_input = insert("ok");
    other_input.inputs = vec!["2".into()];
    let err = store.call_insert(other_input).await.unwrap_err();
    assert!(
        matches!(err, StoreError::IdempotencyConflict { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("different input"), "{err}");
    assert!(matches!(
        store.call_insert(insert("ok")).await.unwrap(),
        CallInserted::Existing(_)
    ));
}

/// A spawn of one input of `ok`, with an optional idempotency key.
fn one(input: i64, key: Option<&str>) -> CallInsert {
    CallInsert {
        id: CallId::generate(),
        app: "a".into(),
        function: "ok".into(),
        version: 1,
        origin: Origin::Spawn,
        idempotency_key: key.map(str::to_string),
        inputs: vec![json!({ "i": input }).to_string()],
        accepting_inputs: false,
        discard_results: false,
        schedule: None,
        rerun_of: None,
        starts_at: None,
        priority: 0,
        key: None,
        input_keys: Vec::new(),
        now: T0,
    }
}

pub async fn a_bulk_spawn_answers_taken_keys_with_their_calls_and_creates_the_rest(
    store: Arc<dyn Store>,
) {
    deploy(&*store).await;
    let before = match store.call_insert(one(7, Some("order-7"))).await.unwrap() {
        CallInserted::Created(c) => c,
        other => panic!("expected a new call, got {other:?}"),
    };
    // 1,000 calls: index 7 reuses a key taken before, 500 and 900 share a key of their own.
    let batch: Vec<CallInsert> = (0..1_000)
        .map(|i| match i {
            7 => one(7, Some("order-7")),
            500 | 900 => one(500, Some("order-500")),
            _ => one(i, None),
        })
        .collect();
    let ids: Vec<CallId> = batch.iter().map(|c| c.id.clone()).collect();
    let answered = store.call_insert_many(batch).await.unwrap();
    assert_eq!(answered.len(), 1_000);
    let mut created = 0;
    for (i, outcome) in answered.iter().enumerate() {
        match (i, outcome) {
            (7, CallInserted::Existing(c)) => assert_eq!(c.id, before.id),
            (900, CallInserted::Existing(c)) => assert_eq!(c.id, ids[500]),
            (_, CallInserted::Created(c)) => {
                assert_eq!(c.id, ids[i], "answers come in order");
                assert_eq!(
                    (c.state, c.counts.total, c.counts.pending),
                    (InputState::Pending, 1, 1)
                );
                created += 1;
            }
            (i, other) => panic!("call {i}: unexpected {other:?}"),
        }
    }
    assert_eq!(created, 998);
    // Every created call is stored with its own input, and leasable.
    let input = store.input_get(&ids[123], 0).await.unwrap().unwrap();
    assert_eq!(input.input, json!({"i": 123}).to_string());
    let all = store
        .call_list(CallList {
            limit: 2_000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 999, "the call made before and 998 new ones");
    let worker = worker(&*store).await;
    let leased = lease(&*store, &worker, "ok", 2_000, T0).await;
    assert_eq!(leased.len(), 999);
}

pub async fn a_bulk_spawn_with_a_conflicting_key_creates_nothing(store: Arc<dyn Store>) {
    deploy(&*store).await;
    store.call_insert(one(1, Some("taken"))).await.unwrap();
    // The same key with another input is another request: the whole batch is refused.
    let batch = vec![
        one(10, None),
        one(11, Some("fresh")),
        one(2, Some("taken")),
        one(12, None),
    ];
    let err = store.call_insert_many(batch).await.unwrap_err();
    assert!(
        matches!(err, StoreError::IdempotencyConflict { .. }),
        "{err}"
    );
    let all = store
        .call_list(CallList {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 1, "nothing of the batch was kept: {all:?}");
}

/// Spawns sent at once (which a backend may write together) each make their own call with
/// their own input, answered to their own caller.
pub async fn concurrent_spawns_each_make_their_own_call(store: Arc<dyn Store>) {
    deploy(&*store).await;
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let call = one(i, None);
                let id = call.id.clone();
                match store.call_insert(call).await.unwrap() {
                    CallInserted::Created(c) => {
                        assert_eq!(c.id, id, "each caller hears of its own call");
                        assert_eq!((c.state, c.counts.total), (InputState::Pending, 1));
                        (i, id)
                    }
                    other => panic!("expected a new call, got {other:?}"),
                }
            })
        })
        .collect();
    for task in tasks {
        let (i, id) = task.await.unwrap();
        let input = store.input_get(&id, 0).await.unwrap().unwrap();
        assert_eq!(input.input, json!({ "i": i }).to_string());
    }
    let worker = worker(&*store).await;
    assert_eq!(lease(&*store, &worker, "ok", 1_000, T0).await.len(), 200);
}

pub async fn concurrent_spawns_with_one_idempotency_key_make_one_call(store: Arc<dyn Store>) {
    deploy(&*store).await;
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .call_insert(CallInsert {
                    id: CallId::generate(),
                    app: "a".into(),
                    function: "ok".into(),
                    version: 1,
                    origin: Origin::Spawn,
                    idempotency_key: Some("same".into()),
                    inputs: vec!["1".into()],
                    accepting_inputs: false,
                    discard_results: false,
                    schedule: None,
                    rerun_of: None,
                    starts_at: None,
                    priority: 0,
                    key: None,
                    input_keys: Vec::new(),
                    now: T0,
                })
                .await
        }));
    }
    let mut ids = HashSet::new();
    for task in tasks {
        match task.await.unwrap() {
            Ok(CallInserted::Created(call)) | Ok(CallInserted::Existing(call)) => {
                ids.insert(call.id)
            }
            Err(e) => panic!("a concurrent spawn with the same key failed: {e}"),
        };
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
}

pub async fn leasing_takes_due_inputs_oldest_first_up_to_max(store: Arc<dyn Store>) {
    deploy(&*store).await;
    let w = worker(&*store).await;
    let first = spawn_n(&*store, "ok", 1, T0).await;
    let second = spawn_n(&*store, "ok", 1, T0 + 1).await;
    let third = spawn_n(&*store, "ok", 1, T0 + 2).await;
    let leased = lease(&*store, &w, "ok", 2, T0 + 10).await;
    let ids: Vec<_> = leased.iter().map(|l| l.call_id.clone()).collect();
    assert_eq!(ids, [first.id.clone(), second.id.clone()]);
    assert_eq!(leased[0].lease.attempt, 1);
    assert_eq!(leased[0].spec.name, "ok");
    assert_eq!(state_of(&*store, &first.id).await, InputState::Running);
    assert_eq!(state_of(&*store, &third.id).await, InputState::Pending);
    let rest = lease(&*store, &w, "ok", 10, T0 + 10).await;
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].call_id, third.id);
    assert!(lease(&*store, &w, "ok", 10, T0 + 10).await.is_empty());
}

pub async fn leasing_skips_inputs_not_yet_due_and_other_functions(store: Arc<dyn Store>) {
    deploy(&*store).await;
    let w = worker(&*store).await;
    spawn_n(&*store, "retry", 1, T0).await;
    assert!(
        lease(&*store, &w, "ok", 10, T0).await.is_empty(),
        "inputs of other functions are not leased"
    );
    let l = lease(&*store, &w, "retry", 1, T0).await.remove(0);
    complete(&*store, &w, l.lease, failed("boom"), T0 + 100).await;
    assert!(
        lease(&*store, &w, "retry", 1, T0 + 500).await.is_empty(),
        "not before its backoff"
    );
    assert_eq!(
        store.input_next_due(&[key("retry")]).await.unwrap(),
        Some(T0 + 1_100)
    );
    assert_eq!(lease(&*store, &w, "retry", 1, T0 + 1_100).await.len(), 1);
}

pub async fn a_success_is_recorded_once_and_ends_the_call(store: Arc<dyn Store>) {
    deploy(&*store).await;
    let w = worker(&*store).await;
    let call = spawn_n(&*store, "ok", 1, T0).await;
    let l = lease(&*store, &w, "ok", 1, T0).await.remove(0);
    let done = complete(
        &*store,
        &w,
        l.lease,
        Outcome::Succeeded {
            output: json!({"hello": "world"}),
        },
        T0 + 5,
    )
    .await;
    assert!(done.recorded);
    assert_eq!(
        done.call_finished,
        Some((call.id.clone(), InputState::Succeeded))
    );
    let again = complete(
        &*store,
        &w,
        l.lease,
        Outcome::Succeeded {
            output: json!("second"),
        },
        T0 + 6,
    )
    .await;
    assert!(
        !again.recorded,
        "a second result for the same lease is not recorded"
    );
    let input = store.input_get(&call.id, 0).await.unwrap().unwrap();
    assert_eq!(input.state, InputState::Succeeded);
    assert_eq!(
        input.output.as_deref(),
        Some(json!({"hello": "world"}).to_string().as_str())
    );
    let row = store.call_get(&call.id).await.unwrap().unwrap();
    assert_eq!(row.finished_at, Some(T0 + 5));
    assert_eq!(row.counts.succeeded, 1);
}

pub async fn a_failure_with_retries_left_waits_for_its_backoff(store: Arc<dyn Store>) {
    deploy(&*store).await;
    let w = worker(&*store).await;
    let call = spawn_n(&*store, "retry", 1, T0).await;
    let mut now = T0;
    let mut delays = Vec::new();
    for _ in 0..2 {
        let l = lease(&*store, &w, "retry", 1, now).await.remove(0);
        let done = complete(&*store, &w, l.lease, failed("boom"), now).await;
        assert!(done.recorded && done.call_finished.is_none());
        let input = store.input_get(&call.id, 0).await.unwrap().unwrap();
        assert_eq!(input.state, InputState::Pending);
        delays.push(input.not_before - now);
        now = input.not_before;
    }
    assert_eq!(
        delays,
        [1_000, 2_000],
        "initial delay, then times the coefficient"
    );
    let l = lease(&*store, &w, "retry", 1, now).await.remove(0);
    assert_eq!(l.lease.attempt, 3);
    let done = complete(&*store, &w, l.lease, failed("boom"), now).await;
    assert_eq!(
        done.call_finished,
        Some((call.id.clone(), InputState::Failed))
    );
    let input = store.input_get(&call.id, 0).await.unwrap().unwrap();
    assert_eq!(
        (input.attempts, input.failures),
        (3, 3),
        "1 attempt + max_retries 2"
    );
    assert_eq!(input.error.unwrap().code, "boom");
    assert_eq!(
        store
            .attempt_list(all_attempts(&call.id))
            .await
            .unwrap()
            .len(),
        3
    );
}

pub async fn a_failure_without_retries_left_fails_the_call(store: Arc<dyn Store>) {
    deploy(&*store).await;
    let w = worker(&*store).await;
    let call = spawn_n(&*store, "ok", 1, T0).await;
    let l = lease(&*store, &w, "ok", 1, T0).await.remove(0);
    let done = complete(&*store, &w, l.lease, failed("exit_code"), T0).await;
    assert_eq!(
        done.call_finished,
        Some((call.id.clone(), InputState::Failed))
    );
    let attempts = store.attempt_list(all_attempts(&call.id)).await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].outcome, "failed");
    assert_eq!(attempts[0].worker_id.as_ref(), Some(&w));
}

pub async fn an_expired_lease_goes_back_to_pending(store: Arc<dyn Store>) {
    deploy(&*store).await;
    let w = worker(&*store).await;
    let call = spawn_n(&*store, "ok", 1, T0).await;
    lease(&*store, &w, "ok", 1, T0).await;
    let early = store
        .lease_rescue_expired(LeaseRescue {
            now: T0 + LEASE_MS - 1,
            limit: 100,
        })
        .await
        .unwrap();
    assert_eq!(early.requeued, 0, "the lease has not run out yet");
    let report = store
        .lease_rescue_expired(LeaseRescue {
            now: T0 + LEASE_MS,
            limit: 100,
        })
        .await
        .unwrap();
    assert_eq!(report.requeued, 1);
    let input = store.input_get(&call.id, 0).await.unwrap().unwrap();
    assert_eq!(input.state, InputState::Pending);
    assert_eq!(input.failures, 0, "a lost worker does not use up a retry");
    let again = lease(&*store, &w, "ok", 1, T0 + LEASE_MS).await;
    assert_eq!(again[0].lease.attempt, 2);
    let attempts = store.attempt_list(all_attempts(&call.id)).await.unwrap();
    assert_eq!(
        attempts
            .iter()
            .map(|a| a.outcome.as_str())
            .collect::<Vec<_>>(),
        ["lost", "running"]
    );
}

/// An input whose lease was lost runs before the inputs that came after it, keyed or not.
pub async fn a_lost_input_goes_back_to_its_place_in_the_queue(store: Arc<dyn Store>) {
    deploy_limited(&*store, limits("max_running_per_key = 5"), T0).await;
    let w = worker(&*store).await;
    for (function, key) in [("ok", None), ("lim", Some("acme"))] {
        spawn_keyed(&*store, function, &[(key, 0, 1)], T0).await;
        assert_eq!(inputs_of(&lease(&*store, &w, function, 1, T0).await), [1]);
        spawn_keyed(&*store, function, &[(key, 0, 2), (key, 0, 3)], T0 + 1).await;
    }
    let report = store
        .lease_rescue_expired(LeaseRescue {
            now: T0 + LEASE_MS,
            limit: 100,
        })
        .await
        .unwrap();
    assert_eq!(report.requeued, 2);
    for function in ["ok", "lim"] {
        assert_eq!(
            inputs_of(&lease(&*store, &w, function, 1, T0 + LEASE_MS + 1).await),
            [1],
            "{function}: the oldest first"
        );
    }
}

pub async fn a_lease_past_its_deadline_times_out(store: Arc<dyn Store>) {
    deploy(&*store).await;
    let w = worker(&*store).await;
    let call = spawn_n(&*store, "slow", 1, T0).await;
    let l = lease(&*store, &w, "slow", 1, T0).await.remove(0);
    // A hung worker keeps heartbeating, but a lease cannot outlive the attempt's deadline.
    let deadline = T0 + 1_000 + SLACK_MS;
    let lost = store
        .lease_heartbeat(LeaseHeartbeat {
            worker_id: w.clone(),
            leases: vec![l.lease],
            now: deadline - 1,
            lease_ms: LEASE_MS,
        })
        .await
        .unwrap();
    assert!(lost.is_empty());
    let report = store
        .lease_rescue_expired(LeaseRescue {
            now: deadline,
            limit: 100,
        })
        .await
        .unwrap();
    assert_eq!(report.timed_out, 1);
    assert_eq!(
        report.finished_calls,
        [(call.id.clone(), InputState::Failed)]
    );
    assert_eq!(
        store
            .input_get(&call.id, 0)
            .await
            .unwrap()
            .unwrap()
            .error
            .unwrap()
            .code,
        "timeout"
    );
}

pub async fn a_late_result_is_kept_as_an_attempt_not_a_result(store: Arc<dyn Store>) {
    deploy(&*store).await;
    let w1 = worker(&*store).await;
    let w2 = worker(&*store).await;
    let call = spawn_n(&*store, "ok", 1, T0).await;
    let first = lease(&*store, &w1, "ok", 1, T0).await.remove(0);
    store
        .lease_rescue_expired(LeaseRescue {
            now: T0 + LEASE_MS,
            limit: 10,
        })
        .await
        .unwrap();
    let second = lease(&*store, &w2, "ok", 1, T0 + LEASE_MS).await.remove(0);
    let done = complete(
        &*store,
        &w2,
        second.lease,
        Outcome::Succeeded {
            output: json!("from w2"),
        },
        T0 + LEASE_MS + 1,
    )
    .await;
    assert!(done.recorded);
    let late = complete(
        &*store,
        &w1,
        first.lease,
        Outcome::Succeeded {
            output: json!("from w1"),
        },
        T0 + LEASE_MS + 2,
    )
    .await;
    assert!(!late.recorded);
    let input = store.input_get(&call.id, 0).await.unwrap().unwrap();
    assert_eq!(input.output.as_deref(), Some("\"from w2\""));
    let attempts = store.attempt_list(all_attempts(&call.id)).await.unwrap();
    assert_eq!(attempts.len(), 2);
    assert!(attempts[0].late, "the first attempt's result came late");
    assert!(!attempts[1].late);
    assert_eq!(
        store
            .call_get(&call.id)
            .await
            .unwrap()
            .unwrap()
            .counts
            .succeeded,
        1
    );
}

pub async fn heartbeats_extend_leases_and_report_lost_ones(store: Arc<dyn Store>) {
    deploy(&*store).await;
    let w = worker(&*store).await;
    spawn_n(&*store, "ok", 2, T0).await;
    let leased = lease(&*store, &w, "ok", 2, T0).await;
    let (a, b) = (leased[0].lease, leased[1].lease);
    let bogus = Lease {
        input_id: a.input_id,
        attempt: 99,
    };
    let lost = store
        .lease_heartbeat(LeaseHeartbeat {
            worker_id: w.clone(),
            leases: vec![a, bogus],
            now: T0 + LEASE_MS - 1,
            lease_ms: LEASE_MS,
        })
        .await
        .unwrap();
    assert_eq!(lost, [bogus]);
    let report = store
        .lease_rescue_expired(LeaseRescue {
            now: T0 + LEASE_MS,
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(
        report.requeued, 1,
        "only the lease that was not renewed ran out"
    );
    let lost = store
        .lease_heartbeat(LeaseHeartbeat {
            worker_id: w.clone(),
            leases: vec![a, b],
            now: T0 + LEASE_MS + 1,
            lease_ms: LEASE_MS,
        })
        .await
        .unwrap();
    assert_eq!(lost, [b]);
}

pub async fn cancel_ends_pending_and_running_inputs(store: Arc<dyn Store>) {
    deploy(&*store).await;
    let w = worker(&*store).await;
    let call = spawn_n(&*store, "ok", 3, T0).await;
    let l = lease(&*store, &w, "ok", 1, T0).await.remove(0);
    let after = store
        .call_cancel(CallCancel {
            id: call.id.clone(),
            now: T0 + 1,
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after.state, InputState::Cancelled);
    assert_eq!(after.counts.cancelled, 3);
    assert_eq!(after.finished_at, Some(T0 + 1));
    let lost = store
        .lease_heartbeat(LeaseHeartbeat {
            worker_id: w.clone(),
            leases: vec![l.lease],
            now: T0 + 2,
            lease_ms: LEASE_MS,
        })
        .await
        .unwrap();
    assert_eq!(lost, [l.lease], "the worker learns its input was cancelled");
    let late = complete(
        &*store,
        &w,
        l.lease,
        Outcome::Succeeded { output: json!(1) },
        T0 + 3,
    )
    .await;
    assert!(!late.recorded);
    assert_eq!(state_of(&*store, &call.id).await, InputState::Cancelled);
    assert!(lease(&*store, &w, "ok", 10, T0 + 4).await.is_empty());
    let missing = store
        .call_cancel(CallCancel {
            id: CallId::generate(),
            now: T0,
        })
        .await
        .unwrap();
    assert!(missing.is_none());
}

pub async fn cancel_of_an_ended_call_changes_nothing(store: Arc<dyn Store>) {
    deploy(&*store).await;
    let w = worker(&*store).await;
    let call = spawn_n(&*store, "ok", 1, T0).await;
    let l = lease(&*store, &w, "ok", 1, T0).await.remove(0);
    complete(
        &*store,
        &w,
        l.lease,
        Outcome::Succeeded { output: json!(1) },
        T0,
    )
    .await;
    let after = store
        .call_cancel(CallCancel {
            id: call.id.clone(),
            now: T0 + 1,
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after.state, InputState::Succeeded);
    assert_eq!(after.finished_at, Some(T0));
}

pub async fn calls_are_listed_newest_first_with_filters_and_cursor(store: Arc<dyn Store>) {
    deploy(&*store).await;
    let w = worker(&*store).await;
    let mut ok_ids = Vec::new();
    for i in 0..5 {
        ok_ids.push(spawn_n(&*store, "ok", 1, T0 + i).await.id);
    }
    let retry = spawn_n(&*store, "retry", 1, T0 + 10).await;
    let page1 = store
        .call_list(CallList {
            limit: 2,
            function: Some("ok".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        page1.iter().map(|c| c.id.clone()).collect::<Vec<_>>(),
        [ok_ids[4].clone(), ok_ids[3].clone()]
    );
    let page2 = store
        .call_list(CallList {
            limit: 10,
            function: Some("ok".into()),
            before: Some(page1[1].id.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page2.len(), 3);
    assert_eq!(page2[0].id, ok_ids[2]);
    let l = lease(&*store, &w, "retry", 1, T0 + 20).await.remove(0);
    assert_eq!(l.call_id, retry.id);
    let running = store
        .call_list(CallList {
            limit: 10,
            state: Some(InputState::Running),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(running.len(), 1);
    assert_eq!(running[0].id, retry.id);
    let by_origin = store
        .call_list(CallList {
            limit: 10,
            origin: Some(Origin::Map),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(by_origin.is_empty());
}

pub async fn pruning_removes_only_old_ended_calls(store: Arc<dyn Store>) {
    deploy(&*store).await;
    let w = worker(&*store).await;
    let old = spawn_n(&*store, "ok", 1, T0).await;
    let l = lease(&*store, &w, "ok", 1, T0).await.remove(0);
    store
        .log_append_many(LogAppend {
            worker_id: w.clone(),
            lines: vec![LogInsert {
                lease: l.lease,
                stream: LogStream::Stdout,
                ts: T0,
                line: "hi".into(),
            }],
            max_lines_per_attempt: 100,
        })
        .await
        .unwrap();
    complete(
        &*store,
        &w,
        l.lease,
        Outcome::Succeeded { output: json!(1) },
        T0 + 1,
    )
    .await;
    let unfinished = spawn_n(&*store, "ok", 1, T0).await;
    let pruned = store
        .call_prune_finished(CallPrune {
            finished_before: T0 + 2,
            limit: 100,
        })
        .await
        .unwrap();
    assert_eq!(pruned, 1);
    assert!(store.call_get(&old.id).await.unwrap().is_none());
    assert!(store.input_get(&old.id, 0).await.unwrap().is_none());
    assert!(store
        .attempt_list(all_attempts(&old.id))
        .await
        .unwrap()
        .is_empty());
    let logs = store
        .log_list(LogList {
            call_id: old.id.clone(),
            index: None,
            after_seq: 0,
            limit: 10,
            max_bytes: None,
        })
        .await
        .unwrap();
    assert!(logs.is_empty());
    assert!(
        store.call_get(&unfinished.id).await.unwrap().is_some(),
        "a call that has not ended is kept"
    );
}

pub async fn logs_are_kept_per_attempt_in_order(store: Arc<dyn Store>) {
    deploy(&*store).await;
    let w = worker(&*store).await;
    let call = spawn_n(&*store, "ok", 2, T0).await;
    let leased = lease(&*store, &w, "ok", 2, T0).await;
    let lines = (0..5)
        .map(|i| LogInsert {
            lease: leased[i % 2].lease,
            stream: if i % 2 == 0 {
                LogStream::Stdout
            } else {
                LogStream::Stderr
            },
            ts: T0 + i as i64,
            line: format!("line {i}"),
        })
        .collect();
    store
        .log_append_many(LogAppend {
            worker_id: w.clone(),
            lines,
            max_lines_per_attempt: 100,
        })
        .await
        .unwrap();
    let all = store
        .log_list(LogList {
            call_id: call.id.clone(),
            index: None,
            after_seq: 0,
            limit: 100,
            max_bytes: None,
        })
        .await
        .unwrap();
    assert_eq!(
        all.iter().map(|l| l.line.as_str()).collect::<Vec<_>>(),
        ["line 0", "line 1", "line 2", "line 3", "line 4"]
    );
    assert_eq!(all[1].stream, LogStream::Stderr);
    let second_input = store
        .log_list(LogList {
            call_id: call.id.clone(),
            index: Some(leased[1].index),
            after_seq: 0,
            limit: 100,
            max_bytes: None,
        })
        .await
        .unwrap();
    assert_eq!(second_input.len(), 2);
    let after = store
        .log_list(LogList {
            call_id: call.id.clone(),
            index: None,
            after_seq: all[2].seq,
            limit: 100,
            max_bytes: None,
        })
        .await
        .unwrap();
    assert_eq!(after.len(), 2);
    // A page bounded by bytes ends at the line that reaches the bound, and goes on after it.
    let mut seen = Vec::new();
    let mut after_seq = 0;
    loop {
        let page = store
            .log_list(LogList {
                call_id: call.id.clone(),
                index: None,
                after_seq,
                limit: 100,
                max_bytes: Some(1),
            })
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        assert_eq!(page.len(), 1, "one line per page of one byte");
        after_seq = last.seq;
        seen.push(last.seq);
    }
    assert_eq!(seen, all.iter().map(|l| l.seq).collect::<Vec<_>>());
}

pub async fn a_stopped_worker_hands_its_leases_back(store: Arc<dyn Store>) {
    deploy(&*store).await;
    let w = worker(&*store).await;
    let call = spawn_n(&*store, "ok", 2, T0).await;
    lease(&*store, &w, "ok", 2, T0).await;
    assert_eq!(store.worker_list(0).await.unwrap()[0].running, 2);
    let handed_back = store
        .worker_deregister(WorkerDeregister {
            id: w.clone(),
            now: T0 + 1,
            died: false,
        })
        .await
        .unwrap();
    assert_eq!(handed_back, 2);
    assert_eq!(
        store
            .call_get(&call.id)
            .await
            .unwrap()
            .unwrap()
            .counts
            .pending,
        2
    );
    assert!(
        !store.worker_touch(&w, T0 + 2).await.unwrap(),
        "a stopped worker must register again"
    );
    let workers = store.worker_list(0).await.unwrap();
    assert_eq!(workers[0].stopped_at, Some(T0 + 1));
    let attempts = store.attempt_list(all_attempts(&call.id)).await.unwrap();
    assert_eq!(attempts[0].error.as_ref().unwrap().code, "worker_stopped");
    // A worker that died (the server noticed) is said to be lost, not to have handed back.
    let dead = worker(&*store).await;
    let call = spawn_n(&*store, "ok", 1, T0).await;
    // The first call's two inputs, back in the queue, and this one.
    assert_eq!(lease(&*store, &dead, "ok", 3, T0 + 3).await.len(), 3);
    store
        .worker_deregister(WorkerDeregister {
            id: dead,
            now: T0 + 4,
            died: true,
        })
        .await
        .unwrap();
    let attempts = store.attempt_list(all_attempts(&call.id)).await.unwrap();
    assert_eq!(attempts[0].error.as_ref().unwrap().code, "worker_lost");
}

pub async fn a_worker_s_machine_is_kept_as_it_registered_it(store: Arc<dyn Store>) {
    use hopper_core::resources::{Gpu, Machine};
    let machine = Machine {
        gpus: vec![Gpu {
            index: 3,
            kind: "NVIDIA A100-SXM4-80GB".into(),
            memory_mib: Some(81_920),
        }],
        cpus: Some(3.5),
        memory_bytes: Some(8 << 30),
        labels: [("zone".to_string(), "eu".to_string())].into(),
    };
    for (id, machine) in [
        (WorkerId::generate(), Some(machine)),
        (WorkerId::generate(), None),
    ] {
        store
            .worker_register(WorkerRegisterParams {
                secret_hash: String::new(),
                id: id.clone(),
                host: "test".into(),
                pid: 1,
                functions: vec!["a.ok".into()],
                concurrency: 1,
                now: T0,
                machine: machine.clone(),
            })
            .await
            .unwrap();
        let listed = store.worker_list(0).await.unwrap();
        let row = listed.iter().find(|w| w.id == id).unwrap();
        assert_eq!(row.machine, machine);
    }
}

pub async fn a_lease_lost_too_often_fails_the_input(store: Arc<dyn Store>) {
    deploy(&*store).await;
    let w = worker(&*store).await;
    let call = spawn_n(&*store, "ok", 1, T0).await;
    let mut now = T0;
    for _ in 0..MAX_LOST_LEASES {
        assert_eq!(lease(&*store, &w, "ok", 1, now).await.len(), 1);
        now += LEASE_MS;
        store
            .lease_rescue_expired(LeaseRescue { now, limit: 10 })
            .await
            .unwrap();
    }
    let input = store.input_get(&call.id, 0).await.unwrap().unwrap();
    assert_eq!(input.state, InputState::Failed);
    assert_eq!(input.error.unwrap().code, "lease_lost");
}

pub async fn concurrent_leasing_never_hands_an_input_out_twice(store: Arc<dyn Store>) {
    deploy(&*store).await;
    spawn_n(&*store, "ok", 500, T0).await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let w = worker(&*store).await;
            let mut got = Vec::new();
            loop {
                let batch = lease(&*store, &w, "ok", 7, T0).await;
                if batch.is_empty() {
                    return got;
                }
                got.extend(batch.into_iter().map(|l| l.lease.input_id));
            }
        }));
    }
    let mut seen = HashSet::new();
    for task in tasks {
        for id in task.await.unwrap() {
            assert!(seen.insert(id), "input {id} was leased twice");
        }
    }
    assert_eq!(seen.len(), 500);
}

/// Many workers lease and report at once, as a backend that writes concurrent leases and
/// results together in one transaction sees them: each gets its own inputs and its own
/// answers, a worker reporting for a lease it does not hold is refused alone (the others'
/// results in the same moment are recorded), and the calls' counters add up.
pub async fn many_workers_leasing_and_reporting_at_once_are_each_answered_alone(
    store: Arc<dyn Store>,
) {
    deploy(&*store).await;
    // A map of 60 inputs and 20 spawns: leases of several calls at once.
    let map = spawn_n(&*store, "ok", 60, T0).await;
    let mut spawns = Vec::new();
    for _ in 0..20 {
        spawns.push(spawn_n(&*store, "ok", 1, T0).await.id);
    }
    let mut workers = Vec::new();
    for _ in 0..20 {
        workers.push(worker(&*store).await);
    }
    let leasing: Vec<_> = workers
        .iter()
        .map(|w| {
            let (store, w) = (store.clone(), w.clone());
            tokio::spawn(async move { lease(&*store, &w, "ok", 4, T0 + 1).await })
        })
        .collect();
    let mut leased = Vec::new();
    for task in leasing {
        leased.push(task.await.unwrap());
    }
    let mut seen = HashSet::new();
    for rows in &leased {
        assert_eq!(rows.len(), 4, "each worker gets the 4 it asked for");
        for row in rows {
            assert!(seen.insert(row.lease), "{:?} was leased twice", row.lease);
        }
    }
    let running: i64 = store
        .call_list(CallList {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .iter()
        .map(|c| c.counts.running)
        .sum();
    assert_eq!(running, 80, "every lease is counted on its call");
    // Worker 0 reports worker 1's first lease as well as its own: refused whole, alone.
    let impostor = InputCompleteMany {
        worker_id: workers[0].clone(),
        results: std::iter::once(leased[1][0].lease)
            .chain(leased[0].iter().map(|r| r.lease))
            .map(|l| {
                (
                    l,
                    Outcome::Succeeded {
                        output: json!("stolen"),
                    },
                )
            })
            .collect(),
        batch_sizes: Vec::new(),
        now: T0 + 2,
    };
    let honest: Vec<InputCompleteMany> = (1..20)
        .map(|n| InputCompleteMany {
            worker_id: workers[n].clone(),
            results: leased[n]
                .iter()
                .map(|r| (r.lease, Outcome::Succeeded { output: json!(n) }))
                .collect(),
            batch_sizes: Vec::new(),
            now: T0 + 2,
        })
        .collect();
    let reporting: Vec<_> = std::iter::once(impostor)
        .chain(honest)
        .map(|p| {
            let store = store.clone();
            tokio::spawn(async move { store.input_complete_many(p).await })
        })
        .collect();
    let mut answers = Vec::new();
    for task in reporting {
        answers.push(task.await.unwrap());
    }
    let mut answers = answers.into_iter();
    match answers.next() {
        Some(Err(StoreError::Conflict(_))) => {}
        other => panic!("the impostor's batch: {other:?}"),
    }
    for (n, answer) in answers.enumerate() {
        let rows = answer.unwrap_or_else(|e| panic!("worker {}'s batch: {e}", n + 1));
        assert_eq!(rows.len(), 4);
        assert!(
            rows.iter().all(|r| r.recorded && r.effect == "succeeded"),
            "{rows:?}"
        );
    }
    for row in leased[1..].iter().flatten() {
        let input = store
            .input_get(&row.call_id, row.index)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(input.state, InputState::Succeeded);
        assert_ne!(input.output.as_deref(), Some("\"stolen\""));
    }
    for row in &leased[0] {
        let input = store
            .input_get(&row.call_id, row.index)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            input.state,
            InputState::Running,
            "the refused batch wrote nothing"
        );
    }
    // Each spawn whose one input ended was reported ended once, with its result.
    let counts = store.call_get(&map.id).await.unwrap().unwrap().counts;
    assert_eq!(counts.succeeded + counts.running + counts.pending, 60);
    let ended = store
        .call_list(CallList {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    let succeeded: i64 = ended.iter().map(|c| c.counts.succeeded).sum();
    assert_eq!(succeeded, 76, "19 workers' 4 results");
    let running: i64 = ended.iter().map(|c| c.counts.running).sum();
    assert_eq!(running, 4, "the refused worker's 4 still run");
}

/// A spawn whose data the database refuses (PostgreSQL takes no NUL in text) fails alone:
/// the spawns arriving with it, which a backend may write in the same transaction, are made.
pub async fn a_spawn_the_database_refuses_fails_alone_among_concurrent_spawns(
    store: Arc<dyn Store>,
) {
    deploy(&*store).await;
    for round in 0..3 {
        let spawning: Vec<_> = (0..30)
            .map(|n| {
                let store = store.clone();
                tokio::spawn(async move {
                    let key = (n == 15).then(|| "bad\0key".to_string());
                    let made = store
                        .call_insert(CallInsert {
                            id: CallId::generate(),
                            app: "a".into(),
                            function: "ok".into(),
                            version: 1,
                            origin: Origin::Spawn,
                            idempotency_key: None,
                            inputs: vec![json!(n).to_string()],
                            accepting_inputs: false,
                            discard_results: false,
                            schedule: None,
                            rerun_of: None,
                            starts_at: None,
                            priority: 0,
                            key,
                            input_keys: Vec::new(),
                            now: T0,
                        })
                        .await;
                    (n, made)
                })
            })
            .collect();
        for task in spawning {
            let (n, made) = task.await.unwrap();
            if n != 15 {
                assert!(made.is_ok(), "round {round}: spawn {n}: {made:?}");
            }
        }
    }
}

async fn open_map(store: &dyn Store, first: usize, discard_results: bool) -> CallRow {
    match store
        .call_insert(CallInsert {
            id: CallId::generate(),
            app: "a".into(),
            function: "ok".into(),
            version: 1,
            origin: Origin::Map,
            idempotency_key: None,
            inputs: (0..first).map(|i| json!(i).to_string()).collect(),
            accepting_inputs: true,
            discard_results,
            schedule: None,
            rerun_of: None,
            starts_at: None,
            priority: 0,
            key: None,
            input_keys: Vec::new(),
            now: T0,
        })
        .await
        .unwrap()
    {
        CallInserted::Created(c) => c,
        other => panic!("{other:?}"),
    }
}

async fn append(
    store: &dyn Store,
    call: &CallId,
    start: i64,
    n: i64,
    done: bool,
) -> Result<CallRow, StoreError> {
    store
        .input_append(InputAppend {
            call_id: call.clone(),
            start,
            inputs: (start..start + n).map(|i| json!(i).to_string()).collect(),
            input_keys: Vec::new(),
            done,
            now: T0,
        })
        .await
}

async fn run_all(store: &dyn Store, w: &WorkerId, output: impl Fn(&str) -> Outcome) {
    loop {
        let batch = lease(store, w, "ok", 100, T0).await;
        if batch.is_empty() {
            return;
        }
        for l in batch {
            complete(store, w, l.lease, output(&l.input), T0).await;
        }
    }
}

pub async fn a_streaming_map_takes_chunks_and_ends_only_when_closed(store: Arc<dyn Store>) {
    deploy(&*store).await;
    let w = worker(&*store).await;
    let call = open_map(&*store, 2, false).await;
    assert!(call.accepting_inputs);
    run_all(&*store, &w, |i| Outcome::Succeeded {
        output: serde_json::from_str(i).unwrap(),
    })
    .await;
    let after_first = store.call_get(&call.id).await.unwrap().unwrap();
    assert_eq!(after_first.counts.succeeded, 2);
    assert_eq!(
        after_first.state,
        InputState::Running,
        "a map taking inputs has not ended"
    );
    let more = append(&*store, &call.id, 2, 3, true).await.unwrap();
    assert_eq!(more.counts.total, 5);
    assert!(!more.accepting_inputs);
    run_all(&*store, &w, |i| Outcome::Succeeded {
        output: serde_json::from_str(i).unwrap(),
    })
    .await;
    let done = store.call_get(&call.id).await.unwrap().unwrap();
    assert_eq!(done.state, InputState::Succeeded);
    let err = append(&*store, &call.id, 5, 1, false).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
}

pub async fn a_retried_chunk_is_taken_once_and_a_gap_is_refused(store: Arc<dyn Store>) {
    deploy(&*store).await;
    let call = open_map(&*store, 0, false).await;
    assert_eq!(call.state, InputState::Pending);
    append(&*store, &call.id, 0, 10, false).await.unwrap();
    let again = append(&*store, &call.id, 0, 10, false).await.unwrap();
    assert_eq!(again.counts.total, 10, "the same chunk twice is taken once");
    let gap = append(&*store, &call.id, 12, 1, false).await.unwrap_err();
    assert!(gap.to_string().contains("send start = 10"), "{gap}");
    let overlap = append(&*store, &call.id, 5, 10, false).await.unwrap_err();
    assert!(matches!(overlap, StoreError::Conflict(_)), "{overlap}");
    let missing = append(&*store, &CallId::generate(), 0, 1, false)
        .await
        .unwrap_err();
    assert!(
        matches!(
            missing,
            StoreError::NotFound {
                what: Missing::Call,
                ..
            }
        ),
        "{missing}"
    );
}

pub async fn results_stream_by_index_and_by_completion(store: Arc<dyn Store>) {
    deploy(&*store).await;
    let w = worker(&*store).await;
    let call = open_map(&*store, 3, false).await;
    append(&*store, &call.id, 3, 0, true).await.unwrap();
    let leased = lease(&*store, &w, "ok", 3, T0).await;
    // Finish in the order 2, 0; input 1 is still running.
    complete(
        &*store,
        &w,
        leased[2].lease,
        Outcome::Succeeded {
            output: json!("two"),
        },
        T0,
    )
    .await;
    complete(&*store, &w, leased[0].lease, failed("bad"), T0).await;
    let by_index = store
        .input_results(InputResults {
            call_id: call.id.clone(),
            order: ResultOrder::Index,
            after: -1,
            limit: 10,
            max_bytes: usize::MAX,
        })
        .await
        .unwrap();
    assert_eq!(
        by_index.iter().map(|r| r.state).collect::<Vec<_>>(),
        [
            InputState::Failed,
            InputState::Running,
            InputState::Succeeded
        ]
    );
    assert_eq!(by_index[0].error.as_ref().unwrap().code, "bad");
    let by_completion = store
        .input_results(InputResults {
            call_id: call.id.clone(),
            order: ResultOrder::Completion,
            after: 0,
            limit: 10,
            max_bytes: usize::MAX,
        })
        .await
        .unwrap();
    assert_eq!(
        by_completion.iter().map(|r| r.index).collect::<Vec<_>>(),
        [2, 0]
    );
    assert_eq!(by_completion[0].output.as_deref(), Some("\"two\""));
    let rest = store
        .input_results(InputResults {
            call_id: call.id.clone(),
            order: ResultOrder::Completion,
            after: by_completion[1].done_seq.unwrap(),
            limit: 10,
            max_bytes: usize::MAX,
        })
        .await
        .unwrap();
    assert!(rest.is_empty());
    // A page ends at the row that brings its outputs and errors to `max_bytes`: the rest
    // come on the next page, from its cursor.
    let first = store
        .input_results(InputResults {
            call_id: call.id.clone(),
            order: ResultOrder::Completion,
            after: 0,
            limit: 10,
            max_bytes: 3,
        })
        .await
        .unwrap();
    assert_eq!(first.iter().map(|r| r.index).collect::<Vec<_>>(), [2]);
    let next = store
        .input_results(InputResults {
            call_id: call.id.clone(),
            order: ResultOrder::Completion,
            after: first[0].done_seq.unwrap(),
            limit: 10,
            max_bytes: 3,
        })
        .await
        .unwrap();
    assert_eq!(next.iter().map(|r| r.index).collect::<Vec<_>>(), [0]);
    let one = store
        .input_results(InputResults {
            call_id: call.id.clone(),
            order: ResultOrder::Index,
            after: -1,
            limit: 10,
            max_bytes: 1,
        })
        .await
        .unwrap();
    assert_eq!(
        one.len(),
        1,
        "a page has at least one row, whatever its size"
    );
}

pub async fn for_each_keeps_no_outputs(store: Arc<dyn Store>) {
    deploy(&*store).await;
    let w = worker(&*store).await;
    let call = open_map(&*store, 2, true).await;
    append(&*store, &call.id, 2, 0, true).await.unwrap();
    run_all(&*store, &w, |_| Outcome::Succeeded {
        output: json!("big"),
    })
    .await;
    let input = store.input_get(&call.id, 0).await.unwrap().unwrap();
    assert_eq!(input.state, InputState::Succeeded);
    assert_eq!(input.output, None);
    assert_eq!(
        store.call_get(&call.id).await.unwrap().unwrap().state,
        InputState::Succeeded
    );
}

pub async fn a_returned_input_runs_again_without_using_a_retry(store: Arc<dyn Store>) {
    deploy(&*store).await;
    let w = worker(&*store).await;
    let call = spawn_n(&*store, "ok", 1, T0).await;
    let l = lease(&*store, &w, "ok", 1, T0).await.remove(0);
    let done = complete(
        &*store,
        &w,
        l.lease,
        Outcome::Returned {
            error: InputError::new("serve_crashed", "the process died"),
        },
        T0,
    )
    .await;
    assert!(done.recorded);
    let input = store.input_get(&call.id, 0).await.unwrap().unwrap();
    assert_eq!((input.state, input.failures), (InputState::Pending, 0));
    assert_eq!(
        lease(&*store, &w, "ok", 1, T0).await.len(),
        1,
        "it runs again at once"
    );
}

pub async fn backlog_counts_unfinished_inputs_per_function(store: Arc<dyn Store>) {
    deploy(&*store).await;
    let w = worker(&*store).await;
    spawn_n(&*store, "ok", 5, T0).await;
    spawn_n(&*store, "retry", 2, T0).await;
    lease(&*store, &w, "ok", 2, T0).await;
    let mut backlog = store.function_backlog(T0).await.unwrap();
    backlog.sort_by(|a, b| a.function.cmp(&b.function));
    assert_eq!(backlog.len(), 2);
    assert_eq!(
        (
            backlog[0].function.as_str(),
            backlog[0].pending,
            backlog[0].running
        ),
        ("ok", 3, 2)
    );
    assert_eq!(
        (
            backlog[1].function.as_str(),
            backlog[1].pending,
            backlog[1].running
        ),
        ("retry", 2, 0)
    );
}

pub async fn an_empty_closed_map_has_ended(store: Arc<dyn Store>) {
    deploy(&*store).await;
    let call = match store
        .call_insert(CallInsert {
            id: CallId::generate(),
            app: "a".into(),
            function: "ok".into(),
            version: 1,
            origin: Origin::Map,
            idempotency_key: None,
            inputs: Vec::new(),
            accepting_inputs: false,
            discard_results: false,
            schedule: None,
            rerun_of: None,
            starts_at: None,
            priority: 0,
            key: None,
            input_keys: Vec::new(),
            now: T0,
        })
        .await
        .unwrap()
    {
        CallInserted::Created(c) => c,
        other => panic!("{other:?}"),
    };
    assert_eq!(call.state, InputState::Succeeded);
    assert_eq!(call.finished_at, Some(T0));
}

fn schedule_spec(
    name: &str,
    overlap: hopper_core::schedule::Overlap,
) -> hopper_core::schedule::ScheduleSpec {
    hopper_core::schedule::ScheduleSpec {
        app: "a".into(),
        name: name.into(),
        function: "ok".into(),
        when: hopper_core::schedule::When::EveryMs(60_000),
        timezone: "UTC".into(),
        input: json!({"from": name}),
        overlap,
    }
}

async fn deploy_schedules(
    store: &dyn Store,
    schedules: Vec<hopper_core::schedule::ScheduleSpec>,
    now: i64,
) {
    store
        .app_deploy(AppDeploy {
            app: "a".into(),
            manifest: String::new(),
            functions: vec![spec("a", "ok", 0, 60_000)],
            schedules: schedules
                .into_iter()
                .map(|spec| ScheduleDeploy {
                    next_due_at: spec.next_after(now, now),
                    spec,
                })
                .collect(),
            notify: Vec::new(),
            snapshot: None,
            now,
        })
        .await
        .unwrap();
}

fn fire_params(name: &str, due_at: i64, missed: Vec<i64>, manual: bool) -> ScheduleFire {
    ScheduleFire {
        app: "a".into(),
        name: name.into(),
        expected_due_at: due_at,
        due_at,
        missed,
        next_due_at: Some(due_at + 60_000),
        call: CallInsert {
            id: CallId::generate(),
            app: "a".into(),
            function: "ok".into(),
            version: 1,
            origin: Origin::Schedule,
            idempotency_key: None,
            inputs: vec!["null".into()],
            accepting_inputs: false,
            discard_results: false,
            schedule: Some((format!("a.{name}"), due_at)),
            rerun_of: None,
            starts_at: None,
            priority: 0,
            key: None,
            input_keys: Vec::new(),
            now: due_at,
        },
        manual,
        now: due_at,
    }
}

pub async fn a_deploy_replaces_and_removes_schedules(store: Arc<dyn Store>) {
    use hopper_core::schedule::Overlap;
    deploy_schedules(
        &*store,
        vec![
            schedule_spec("one", Overlap::Allow),
            schedule_spec("two", Overlap::Allow),
        ],
        T0,
    )
    .await;
    let listed = store.schedule_list().await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].next_due_at, Some(T0 + 60_000));
    // Unchanged: keeps its due time. Changed: due from the new definition. Removed: gone.
    let mut changed = schedule_spec("one", Overlap::Skip);
    changed.when = hopper_core::schedule::When::EveryMs(10_000);
    deploy_schedules(&*store, vec![changed], T0 + 5_000).await;
    let listed = store.schedule_list().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].spec.name, "one");
    assert_eq!(listed[0].next_due_at, Some(T0 + 15_000));
    deploy_schedules(&*store, vec![listed[0].spec.clone()], T0 + 9_000).await;
    assert_eq!(
        store.schedule_list().await.unwrap()[0].next_due_at,
        Some(T0 + 15_000),
        "an unchanged schedule keeps its due time"
    );
}

pub async fn a_due_time_fires_once(store: Arc<dyn Store>) {
    use hopper_core::schedule::Overlap;
    deploy_schedules(&*store, vec![schedule_spec("s", Overlap::Allow)], T0).await;
    let due = T0 + 60_000;
    assert!(store.schedule_due(due - 1).await.unwrap().is_empty());
    assert_eq!(store.schedule_due(due).await.unwrap().len(), 1);
    let first = store
        .schedule_fire(fire_params("s", due, vec![], false))
        .await
        .unwrap();
    let FireOutcome::Fired(call) = first else {
        panic!("{first:?}")
    };
    assert_eq!(call.origin, Origin::Schedule);
    assert_eq!(call.schedule, Some(("a.s".to_string(), due)));
    // A second server (or the same one after a restart) firing the same due time: nothing.
    let again = store
        .schedule_fire(fire_params("s", due, vec![], false))
        .await
        .unwrap();
    assert_eq!(again, FireOutcome::AlreadyFired);
    let calls = store
        .call_list(CallList {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(calls.len(), 1);
    let row = &store.schedule_list().await.unwrap()[0];
    assert_eq!(
        (row.next_due_at, row.last_due_at),
        (Some(due + 60_000), Some(due))
    );
    assert_eq!(row.last_call_id.as_ref(), Some(&call.id));
    assert_eq!(row.last_call_state, Some(InputState::Pending));
}

pub async fn missed_due_times_are_recorded_not_fired(store: Arc<dyn Store>) {
    use hopper_core::schedule::Overlap;
    deploy_schedules(&*store, vec![schedule_spec("s", Overlap::Allow)], T0).await;
    let (d1, d2, d3) = (T0 + 60_000, T0 + 120_000, T0 + 180_000);
    // The server was down over d1, d2 and d3: the scheduler fires the schedule's recorded due
    // time as the most recent one, d3, and records d1 and d2 as missed.
    let fire = ScheduleFire {
        expected_due_at: d1,
        missed: vec![d1, d2],
        ..fire_params("s", d3, vec![], false)
    };
    let outcome = store.schedule_fire(fire).await.unwrap();
    assert!(matches!(outcome, FireOutcome::Fired(_)));
    let firings = store.schedule_firings("a", "s", 10).await.unwrap();
    assert_eq!(firings.iter().filter(|f| f.outcome == "fired").count(), 1);
    assert_eq!(firings[0].due_at, d3);
    let mut missed: Vec<i64> = firings
        .iter()
        .filter(|f| f.outcome == "missed")
        .map(|f| f.due_at)
        .collect();
    missed.sort();
    assert_eq!(missed, [d1, d2]);
    let again = store
        .schedule_fire(ScheduleFire {
            expected_due_at: d1,
            ..fire_params("s", d3, vec![], false)
        })
        .await
        .unwrap();
    assert_eq!(
        again,
        FireOutcome::AlreadyFired,
        "the schedule moved past d1"
    );
    let calls = store
        .call_list(CallList {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(calls.len(), 1, "nothing is back-filled");
}

pub async fn an_overlapping_firing_is_skipped_when_the_schedule_says_so(store: Arc<dyn Store>) {
    use hopper_core::schedule::Overlap;
    deploy_schedules(&*store, vec![schedule_spec("s", Overlap::Skip)], T0).await;
    let due = T0 + 60_000;
    assert!(matches!(
        store
            .schedule_fire(fire_params("s", due, vec![], false))
            .await
            .unwrap(),
        FireOutcome::Fired(_)
    ));
    let next = store
        .schedule_fire(fire_params("s", due + 60_000, vec![], false))
        .await
        .unwrap();
    assert_eq!(next, FireOutcome::Skipped, "the first call has not ended");
    let firings = store.schedule_firings("a", "s", 10).await.unwrap();
    assert_eq!(firings[0].outcome, "skipped");
    // Once the last call ended, the next firing runs.
    let w = worker(&*store).await;
    let l = lease(&*store, &w, "ok", 1, due).await.remove(0);
    complete(
        &*store,
        &w,
        l.lease,
        Outcome::Succeeded { output: json!(1) },
        due,
    )
    .await;
    let third = store
        .schedule_fire(fire_params("s", due + 120_000, vec![], false))
        .await
        .unwrap();
    assert!(matches!(third, FireOutcome::Fired(_)), "{third:?}");
    // Run now fires whatever the due time, without moving the schedule.
    let before = store.schedule_list().await.unwrap()[0].next_due_at;
    let w2 = worker(&*store).await;
    let l = lease(&*store, &w2, "ok", 1, due + 200_000).await.remove(0);
    complete(
        &*store,
        &w2,
        l.lease,
        Outcome::Succeeded { output: json!(1) },
        due,
    )
    .await;
    let now = store
        .schedule_fire(fire_params("s", due + 130_000, vec![], true))
        .await
        .unwrap();
    assert!(matches!(now, FireOutcome::Fired(_)), "{now:?}");
    assert_eq!(store.schedule_list().await.unwrap()[0].next_due_at, before);
}

pub async fn a_paused_schedule_is_not_due_and_resumes_from_now(store: Arc<dyn Store>) {
    use hopper_core::schedule::Overlap;
    deploy_schedules(&*store, vec![schedule_spec("s", Overlap::Allow)], T0).await;
    let paused = store
        .schedule_pause(SchedulePause {
            app: "a".into(),
            name: "s".into(),
            paused: true,
            next_due_at: None,
            now: T0,
        })
        .await
        .unwrap()
        .unwrap();
    assert!(paused.paused);
    assert!(store.schedule_due(T0 + 600_000).await.unwrap().is_empty());
    let resumed = store
        .schedule_pause(SchedulePause {
            app: "a".into(),
            name: "s".into(),
            paused: false,
            next_due_at: Some(T0 + 660_000),
            now: T0 + 600_000,
        })
        .await
        .unwrap()
        .unwrap();
    assert!(!resumed.paused);
    assert_eq!(
        resumed.next_due_at,
        Some(T0 + 660_000),
        "the due times missed while paused are not fired"
    );
    let missing = store
        .schedule_pause(SchedulePause {
            app: "a".into(),
            name: "nope".into(),
            paused: true,
            next_due_at: None,
            now: T0,
        })
        .await
        .unwrap();
    assert!(missing.is_none());
}

pub async fn ended_calls_are_listed_in_the_order_they_ended(store: Arc<dyn Store>) {
    deploy(&*store).await;
    let w = worker(&*store).await;
    let a = spawn_n(&*store, "ok", 1, T0).await;
    let b = spawn_n(&*store, "ok", 1, T0).await;
    let leased = lease(&*store, &w, "ok", 2, T0).await;
    complete(&*store, &w, leased[1].lease, failed("x"), T0 + 5).await;
    complete(
        &*store,
        &w,
        leased[0].lease,
        Outcome::Succeeded { output: json!(1) },
        T0 + 9,
    )
    .await;
    let all = store
        .call_list_finished(CallsFinished {
            after_at: 0,
            after_id: None,
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(
        all.iter().map(|c| c.id.clone()).collect::<Vec<_>>(),
        [b.id.clone(), a.id.clone()]
    );
    let after = store
        .call_list_finished(CallsFinished {
            after_at: T0 + 5,
            after_id: Some(b.id.clone()),
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].id, a.id);
}

pub async fn settings_are_kept(store: Arc<dyn Store>) {
    assert_eq!(store.setting_get("k").await.unwrap(), None);
    store.setting_put("k", "1").await.unwrap();
    store.setting_put("k", "2").await.unwrap();
    assert_eq!(store.setting_get("k").await.unwrap().as_deref(), Some("2"));
}

pub async fn an_attempts_log_is_capped_with_a_marker(store: Arc<dyn Store>) {
    deploy(&*store).await;
    let w = worker(&*store).await;
    let call = spawn_n(&*store, "ok", 1, T0).await;
    let l = lease(&*store, &w, "ok", 1, T0).await.remove(0);
    let batch = |from: usize, n: usize| LogAppend {
        worker_id: w.clone(),
        lines: (from..from + n)
            .map(|i| LogInsert {
                lease: l.lease,
                stream: LogStream::Stdout,
                ts: T0,
                line: format!("line {i}"),
            })
            .collect(),
        max_lines_per_attempt: 5,
    };
    store.log_append_many(batch(0, 3)).await.unwrap();
    store.log_append_many(batch(3, 4)).await.unwrap();
    store.log_append_many(batch(7, 4)).await.unwrap();
    let lines = store
        .log_list(LogList {
            call_id: call.id.clone(),
            index: None,
            after_seq: 0,
            limit: 100,
            max_bytes: None,
        })
        .await
        .unwrap();
    let texts: Vec<&str> = lines.iter().map(|l| l.line.as_str()).collect();
    assert_eq!(
        &texts[..5],
        ["line 0", "line 1", "line 2", "line 3", "line 4"]
    );
    assert_eq!(texts.len(), 6, "the cap, then one marker: {texts:?}");
    assert_eq!(lines[5].stream, LogStream::System);
    assert!(texts[5].contains("cap of 5 lines"), "{texts:?}");
}

pub async fn the_lead_once_taken_is_kept(store: Arc<dyn Store>) {
    assert!(store.leader_try("notifier").await.unwrap());
    assert!(
        store.leader_try("notifier").await.unwrap(),
        "the lead is kept"
    );
}

pub async fn ended_attempts_are_counted_per_function_and_slot(store: Arc<dyn Store>) {
    deploy(&*store).await;
    let w = worker(&*store).await;
    spawn_n(&*store, "ok", 1, T0).await;
    spawn_n(&*store, "ok", 1, T0).await;
    spawn_n(&*store, "retry", 1, T0).await;
    spawn_n(&*store, "slow", 1, T0).await;
    let oks = lease(&*store, &w, "ok", 2, T0).await;
    let results = store
        .input_complete_many(InputCompleteMany {
            worker_id: w.clone(),
            batch_sizes: Vec::new(),
            results: vec![
                (oks[0].lease, Outcome::Succeeded { output: json!(1) }),
                (oks[1].lease, failed("boom")),
            ],
            now: T0 + 30,
        })
        .await
        .unwrap();
    assert_eq!(results[0].effect, "succeeded");
    let r = lease(&*store, &w, "retry", 1, T0).await.remove(0);
    assert_eq!(
        complete(&*store, &w, r.lease, failed("flaky"), T0 + 700)
            .await
            .effect,
        "retried"
    );
    let slow = lease(&*store, &w, "slow", 1, T0).await;
    assert_eq!(slow.len(), 1, "{slow:?}");
    // Rescued once its lease has expired, past its deadline: a timeout.
    let report = store
        .lease_rescue_expired(LeaseRescue {
            now: T0 + LEASE_MS,
            limit: 100,
        })
        .await
        .unwrap();
    assert_eq!(report.timed_out, 1, "{report:?}");

    let rows = store
        .function_stats(StatsList {
            since: T0 - 60_000,
            ..Default::default()
        })
        .await
        .unwrap();
    let by_function: std::collections::BTreeMap<_, _> = rows
        .iter()
        .map(|r| (r.function.as_str(), (r.slot, r.tally)))
        .collect();
    assert_eq!(rows.len(), 3, "{rows:?}");
    let (slot, ok) = by_function["ok"];
    assert_eq!(slot, T0, "T0 starts a slot");
    assert_eq!((ok.succeeded, ok.failed, ok.retried), (1, 1, 0));
    assert_eq!(
        ok.durations[hopper_core::stats::bucket_of(30)],
        2,
        "both ran 30 ms"
    );
    let (_, retried) = by_function["retry"];
    assert_eq!(
        (retried.succeeded, retried.failed, retried.retried),
        (0, 0, 1)
    );
    let (slot, slow) = by_function["slow"];
    assert_eq!(slot, T0 + hopper_core::stats::SLOT_MS);
    assert_eq!(slow.failed, 1, "a timeout is a failure");
    assert_eq!(slow.durations[hopper_core::stats::bucket_of(LEASE_MS)], 1);

    let one = store
        .function_stats(StatsList {
            since: T0,
            app: Some("a".into()),
            function: Some("ok".into()),
        })
        .await
        .unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].tally, ok);
    let later = store
        .function_stats(StatsList {
            since: T0 + 2 * hopper_core::stats::SLOT_MS,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(later.is_empty());

    // More results in the same slot add up.
    spawn_n(&*store, "ok", 1, T0).await;
    let l = lease(&*store, &w, "ok", 1, T0 + 100).await.remove(0);
    complete(
        &*store,
        &w,
        l.lease,
        Outcome::Succeeded { output: json!(2) },
        T0 + 9_999,
    )
    .await;
    let one = store
        .function_stats(StatsList {
            since: T0,
            app: Some("a".into()),
            function: Some("ok".into()),
        })
        .await
        .unwrap();
    assert_eq!(one[0].tally.succeeded, 2);

    store
        .call_prune_finished(CallPrune {
            finished_before: T0 + 2 * hopper_core::stats::SLOT_MS,
            limit: 100,
        })
        .await
        .unwrap();
    let rows = store
        .function_stats(StatsList {
            since: 0,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(rows.is_empty(), "slots older than the retention are pruned");
}

pub async fn calls_are_listed_from_a_lower_bound(store: Arc<dyn Store>) {
    deploy(&*store).await;
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(spawn_n(&*store, "ok", 1, T0 + i).await.id);
    }
    let from = store
        .call_list(CallList {
            after: Some(ids[2].clone()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        from.iter().map(|c| c.id.clone()).collect::<Vec<_>>(),
        [ids[3].clone(), ids[2].clone()]
    );
    let between = store
        .call_list(CallList {
            after: Some(ids[1].clone()),
            before: Some(ids[3].clone()),
            app: Some("a".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(between.len(), 2);
    let none_yet = store
        .call_list(CallList {
            after: Some(CallId::first_at(1 << 47)),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(none_yet.is_empty(), "no call was made in the far future");
}

pub async fn attempts_are_listed_by_input_up_to_a_limit(store: Arc<dyn Store>) {
    deploy(&*store).await;
    let w = worker(&*store).await;
    let call = spawn_n(&*store, "retry", 4, T0).await;
    // Inputs 0 and 1 fail once (then wait for their retry); 2 and 3 stay running.
    let leased = lease(&*store, &w, "retry", 4, T0).await;
    for l in &leased[..2] {
        complete(&*store, &w, l.lease, failed("once"), T0 + 1).await;
    }
    let list = |index: Option<i64>, limit: u32| AttemptList {
        call_id: call.id.clone(),
        index,
        after_index: None,
        limit,
        max_bytes: None,
    };
    let all = store.attempt_list(list(None, 100)).await.unwrap();
    assert_eq!(
        all.iter()
            .map(|a| (a.index, a.outcome.as_str()))
            .collect::<Vec<_>>(),
        [(0, "failed"), (1, "failed"), (2, "running"), (3, "running")],
        "ended and running attempts, in input order"
    );
    let page = store.attempt_list(list(None, 3)).await.unwrap();
    assert_eq!(page.len(), 3);
    assert_eq!(page[2].index, 2);
    // The next page starts after the last input of this one.
    let next = store
        .attempt_list(AttemptList {
            after_index: Some(1),
            ..list(None, 100)
        })
        .await
        .unwrap();
    assert_eq!(
        next.iter().map(|a| a.index).collect::<Vec<_>>(),
        [2, 3],
        "the attempts of the inputs after 1"
    );
    let one = store.attempt_list(list(Some(1), 100)).await.unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].index, 1);
    assert_eq!(one[0].error.as_ref().unwrap().code, "once");
    let running = store.attempt_list(list(Some(3), 100)).await.unwrap();
    assert_eq!(running[0].outcome, "running");
    assert!(store
        .attempt_list(list(Some(9), 100))
        .await
        .unwrap()
        .is_empty());
}

pub async fn one_batch_ends_many_calls_each_once(store: Arc<dyn Store>) {
    deploy(&*store).await;
    let w = worker(&*store).await;
    let mut singles = Vec::new();
    for _ in 0..5 {
        singles.push(spawn_n(&*store, "ok", 1, T0).await.id);
    }
    let map = spawn_n(&*store, "ok", 3, T0).await.id;
    let leased = lease(&*store, &w, "ok", 100, T0).await;
    assert_eq!(leased.len(), 8);
    let results = leased
        .iter()
        .map(|l| {
            (
                l.lease,
                Outcome::Succeeded {
                    output: json!({ "call": l.call_id.to_string(), "i": l.index }),
                },
            )
        })
        .collect();
    let out = store
        .input_complete_many(InputCompleteMany {
            worker_id: w.clone(),
            batch_sizes: Vec::new(),
            results,
            now: T0 + 5,
        })
        .await
        .unwrap();
    assert!(out.iter().all(|r| r.recorded && r.effect == "succeeded"));
    let mut ended: Vec<CallId> = out
        .iter()
        .filter_map(|r| r.call_finished.clone())
        .map(|(id, state)| {
            assert_eq!(state, InputState::Succeeded);
            id
        })
        .collect();
    ended.sort();
    let mut all = singles.clone();
    all.push(map.clone());
    all.sort();
    assert_eq!(ended, all, "each call is reported ended exactly once");
    for id in &all {
        let call = store.call_get(id).await.unwrap().unwrap();
        assert_eq!(call.state, InputState::Succeeded);
        assert_eq!(call.finished_at, Some(T0 + 5));
        assert_eq!(call.counts.running, 0);
    }
    let first = store.input_get(&singles[0], 0).await.unwrap().unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(first.output.as_deref().unwrap()).unwrap()
            ["call"],
        json!(singles[0].to_string())
    );
    let by_completion = store
        .input_results(InputResults {
            call_id: map.clone(),
            order: ResultOrder::Completion,
            after: 0,
            limit: 10,
            max_bytes: usize::MAX,
        })
        .await
        .unwrap();
    assert_eq!(
        by_completion.iter().map(|r| r.done_seq).collect::<Vec<_>>(),
        [Some(1), Some(2), Some(3)],
        "the map's inputs are numbered in the order they ended"
    );
}

pub async fn first_inputs_are_read_for_many_calls_at_once(store: Arc<dyn Store>) {
    deploy(&*store).await;
    let a = spawn_n(&*store, "ok", 1, T0).await.id;
    let b = spawn_n(&*store, "ok", 3, T0).await.id;
    let gone = CallId::generate();
    let mut got = store
        .input_first_many(&[a.clone(), b.clone(), gone])
        .await
        .unwrap();
    got.sort_by(|x, y| x.call_id.cmp(&y.call_id));
    assert_eq!(
        got.iter()
            .map(|i| (i.call_id.clone(), i.index, i.input.as_str()))
            .collect::<Vec<_>>(),
        [(a, 0, r#"{"i":0}"#), (b, 0, r#"{"i":0}"#)],
        "input 0 of each call that exists"
    );
}

pub async fn failed_inputs_are_found_across_calls_and_reruns_name_what_they_rerun(
    store: Arc<dyn Store>,
) {
    deploy(&*store).await;
    let w = worker(&*store).await;
    let map = spawn_n(&*store, "ok", 3, T0).await;
    // Input 2 fails first, then input 0; input 1 succeeds.
    for l in lease(&*store, &w, "ok", 3, T0).await {
        let (outcome, at) = match l.index {
            0 => (failed("exit_code"), T0 + 20),
            1 => (Outcome::Succeeded { output: json!(1) }, T0 + 15),
            _ => (failed("timeout"), T0 + 10),
        };
        complete(&*store, &w, l.lease, outcome, at).await;
    }
    let single = spawn_n(&*store, "ok", 1, T0 + 30).await;
    let l = lease(&*store, &w, "ok", 1, T0 + 30).await.remove(0);
    complete(&*store, &w, l.lease, failed("exit_code"), T0 + 40).await;
    let list = |params: FailedInputList| {
        let store = store.clone();
        async move {
            store
                .input_failed_list(params)
                .await
                .unwrap()
                .into_iter()
                .map(|r| (r.call_id, r.index))
                .collect::<Vec<_>>()
        }
    };
    let all = FailedInputList {
        limit: 10,
        ..Default::default()
    };
    // Newest failure first, across calls.
    let newest_first = vec![
        (single.id.clone(), 0),
        (map.id.clone(), 0),
        (map.id.clone(), 2),
    ];
    assert_eq!(list(all.clone()).await, newest_first);
    let rows = store.input_failed_list(all.clone()).await.unwrap();
    assert_eq!(
        rows[1].error.as_ref().map(|e| e.code.as_str()),
        Some("exit_code")
    );
    assert_eq!((rows[1].attempts, rows[1].finished_at), (1, T0 + 20));
    // By call, by function, by time, and a page after a cursor.
    let of_map = FailedInputList {
        call: Some(map.id.clone()),
        ..all.clone()
    };
    assert_eq!(list(of_map).await, newest_first[1..]);
    let other_function = FailedInputList {
        app: Some("a".into()),
        function: Some("nope".into()),
        ..all.clone()
    };
    assert_eq!(list(other_function).await, []);
    let window = FailedInputList {
        since: Some(T0 + 15),
        until: Some(T0 + 40),
        ..all.clone()
    };
    assert_eq!(list(window).await, newest_first[1..2]);
    let after_first = FailedInputList {
        before: Some((rows[0].finished_at, rows[0].id)),
        ..all.clone()
    };
    assert_eq!(list(after_first).await, newest_first[1..]);
    // A page bounded by bytes ends after the row that fills it.
    let small = FailedInputList {
        max_bytes: Some(1),
        ..all.clone()
    };
    assert_eq!(list(small).await, newest_first[..1]);
    // A map's first failed input is its lowest failed index, whenever it failed.
    let first = store.input_first_failed(&map.id).await.unwrap().unwrap();
    assert_eq!(first.index, 0);
    assert_eq!(
        store.input_first_failed(&CallId::generate()).await.unwrap(),
        None
    );
    // A re-run names the input it runs again; the input finds its re-runs.
    let mut insert = one(7, Some("rerun-of-2"));
    insert.origin = Origin::Rerun;
    insert.rerun_of = Some((map.id.clone(), 2));
    let CallInserted::Created(rerun) = store.call_insert(insert).await.unwrap() else {
        panic!("a new call");
    };
    assert_eq!(rerun.origin, Origin::Rerun);
    assert_eq!(rerun.rerun_of, Some((map.id.clone(), 2)));
    let again = store.call_get(&rerun.id).await.unwrap().unwrap();
    assert_eq!(again.rerun_of, Some((map.id.clone(), 2)));
    let reruns = store
        .rerun_list(&[map.id.clone(), single.id.clone()])
        .await
        .unwrap();
    assert_eq!(reruns.len(), 1);
    assert_eq!(
        (&reruns[0].of_call, reruns[0].of_index, &reruns[0].call_id),
        (&map.id, 2, &rerun.id)
    );
    assert_eq!(reruns[0].idempotency_key.as_deref(), Some("rerun-of-2"));
    assert_eq!(reruns[0].state, InputState::Pending);
}

pub async fn a_delayed_call_is_not_leased_before_it_starts_nor_its_later_chunks(
    store: Arc<dyn Store>,
) {
    deploy(&*store).await;
    let w = worker(&*store).await;
    let starts = T0 + 60_000;
    let mut delayed = one(1, None);
    delayed.starts_at = Some(starts);
    let CallInserted::Created(call) = store.call_insert(delayed).await.unwrap() else {
        panic!("a new call");
    };
    assert_eq!(call.starts_at, Some(starts));
    assert_eq!(
        store.call_get(&call.id).await.unwrap().unwrap().starts_at,
        Some(starts)
    );
    // A delayed map: its first inputs and a chunk appended later wait for its start too.
    let mut map = one(2, None);
    map.origin = Origin::Map;
    map.accepting_inputs = true;
    map.starts_at = Some(starts);
    let CallInserted::Created(map) = store.call_insert(map).await.unwrap() else {
        panic!("a new map");
    };
    store
        .input_append(InputAppend {
            call_id: map.id.clone(),
            start: 1,
            inputs: vec![json!({ "i": 3 }).to_string()],
            input_keys: Vec::new(),
            done: true,
            now: T0 + 10,
        })
        .await
        .unwrap();
    assert!(lease(&*store, &w, "ok", 10, starts - 1).await.is_empty());
    // Not work yet: no worker is started for it before its time.
    let backlog = store.function_backlog(starts - 1).await.unwrap();
    let ok = backlog.iter().find(|b| b.function == "ok").unwrap();
    assert_eq!((ok.pending, ok.delayed), (0, 3), "{backlog:?}");
    let backlog = store.function_backlog(starts).await.unwrap();
    let ok = backlog.iter().find(|b| b.function == "ok").unwrap();
    assert_eq!((ok.pending, ok.delayed), (3, 0), "{backlog:?}");
    assert_eq!(
        store.input_next_due(&[key("ok")]).await.unwrap(),
        Some(starts),
        "the dispatcher sleeps until the start"
    );
    let leased = lease(&*store, &w, "ok", 10, starts).await;
    let mut got: Vec<(CallId, i64)> = leased
        .iter()
        .map(|l| (l.call_id.clone(), l.index))
        .collect();
    got.sort();
    let mut want = vec![
        (call.id.clone(), 0),
        (map.id.clone(), 0),
        (map.id.clone(), 1),
    ];
    want.sort();
    assert_eq!(got, want);
}

/// The call's completion order: `(index, done_seq)` of every ended input.
async fn completion_order(store: &dyn Store, call: &CallId) -> Vec<(i64, i64)> {
    store
        .input_results(InputResults {
            call_id: call.clone(),
            order: ResultOrder::Completion,
            after: 0,
            limit: 1_000,
            max_bytes: usize::MAX,
        })
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.index, r.done_seq.unwrap()))
        .collect()
}

/// Asserts that each of the call's `n` inputs ended and appears once in completion order, at
/// positions 1..=n.
async fn assert_complete_order(store: &dyn Store, call: &CallId, n: i64) {
    let order = completion_order(store, call).await;
    let seqs: Vec<i64> = order.iter().map(|(_, s)| *s).collect();
    assert_eq!(
        seqs,
        (1..=n).collect::<Vec<_>>(),
        "positions of {call}: {order:?}"
    );
    let mut indexes: Vec<i64> = order.iter().map(|(i, _)| *i).collect();
    indexes.sort_unstable();
    assert_eq!(
        indexes,
        (0..n).collect::<Vec<_>>(),
        "inputs of {call}: {order:?}"
    );
    let row = store.call_get(call).await.unwrap().unwrap();
    assert!(row.state.is_terminal(), "{row:?}");
    assert_eq!(row.counts.ended(), n);
}

pub async fn every_way_an_input_ends_appears_once_in_completion_order(store: Arc<dyn Store>) {
    deploy(&*store).await;
    let w = worker(&*store).await;
    // Success, failure, and a cancel of one running and one pending input.
    let mixed = spawn_n(&*store, "ok", 4, T0).await;
    let leased = lease(&*store, &w, "ok", 3, T0).await;
    complete(
        &*store,
        &w,
        leased[0].lease,
        Outcome::Succeeded { output: json!(0) },
        T0 + 1,
    )
    .await;
    complete(&*store, &w, leased[1].lease, failed("boom"), T0 + 2).await;
    store
        .call_cancel(CallCancel {
            id: mixed.id.clone(),
            now: T0 + 3,
        })
        .await
        .unwrap();
    // A late result of the cancelled attempt changes nothing in the order.
    complete(
        &*store,
        &w,
        leased[2].lease,
        Outcome::Succeeded { output: json!(2) },
        T0 + 4,
    )
    .await;
    assert_complete_order(&*store, &mixed.id, 4).await;
    assert_eq!(
        completion_order(&*store, &mixed.id).await[..2],
        [(0, 1), (1, 2)],
        "inputs appear in the order they ended"
    );

    // Leases lost too often.
    let lost = spawn_n(&*store, "ok", 3, T0).await;
    let mut now = T0;
    for _ in 0..MAX_LOST_LEASES {
        assert_eq!(lease(&*store, &w, "ok", 3, now).await.len(), 3);
        now += LEASE_MS;
        store
            .lease_rescue_expired(LeaseRescue { now, limit: 10 })
            .await
            .unwrap();
    }
    assert_complete_order(&*store, &lost.id, 3).await;

    // Timeouts.
    let slow = spawn_n(&*store, "slow", 2, T0).await;
    let w2 = WorkerId::generate();
    assert_eq!(lease(&*store, &w2, "slow", 2, T0).await.len(), 2);
    let report = store
        .lease_rescue_expired(LeaseRescue {
            now: T0 + LEASE_MS,
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(report.timed_out, 2);
    assert_complete_order(&*store, &slow.id, 2).await;
    let row = store.input_get(&slow.id, 1).await.unwrap().unwrap();
    assert_eq!(row.error.unwrap().code, "timeout");
}

pub async fn only_the_lease_holder_can_complete_or_log(store: Arc<dyn Store>) {
    deploy(&*store).await;
    let holder = worker(&*store).await;
    let other = worker(&*store).await;
    let call = spawn_n(&*store, "ok", 1, T0).await;
    let l = lease(&*store, &holder, "ok", 1, T0).await.remove(0);
    let forged = store
        .input_complete_many(InputCompleteMany {
            worker_id: other.clone(),
            batch_sizes: Vec::new(),
            results: vec![(
                l.lease,
                Outcome::Succeeded {
                    output: json!("forged"),
                },
            )],
            now: T0 + 1,
        })
        .await
        .unwrap_err();
    assert!(matches!(forged, StoreError::Conflict(_)), "{forged}");
    let line = |worker: &WorkerId, lease: Lease, text: &str| LogAppend {
        worker_id: worker.clone(),
        lines: vec![LogInsert {
            lease,
            stream: LogStream::Stdout,
            ts: T0,
            line: text.into(),
        }],
        max_lines_per_attempt: 100,
    };
    let refused = store
        .log_append_many(line(&other, l.lease, "forged"))
        .await
        .unwrap_err();
    assert!(matches!(refused, StoreError::Conflict(_)), "{refused}");
    let input = store.input_get(&call.id, 0).await.unwrap().unwrap();
    assert_eq!(
        input.state,
        InputState::Running,
        "the forgery changed nothing"
    );
    assert!(
        store.attempt_list(all_attempts(&call.id)).await.unwrap()[0]
            .finished_at
            .is_none(),
        "no attempt was recorded"
    );
    store
        .log_append_many(line(&holder, l.lease, "mine"))
        .await
        .unwrap();
    let done = complete(
        &*store,
        &holder,
        l.lease,
        Outcome::Succeeded { output: json!(1) },
        T0 + 2,
    )
    .await;
    assert!(done.recorded);
    // After the input ended, the holder may still log to its attempt; nobody else may, and
    // nobody may name an attempt that never ran.
    store
        .log_append_many(line(&holder, l.lease, "after"))
        .await
        .unwrap();
    assert!(store
        .log_append_many(line(&other, l.lease, "x"))
        .await
        .is_err());
    let future = Lease {
        input_id: l.lease.input_id,
        attempt: 7,
    };
    assert!(store
        .log_append_many(line(&holder, future, "x"))
        .await
        .is_err());
    let logs = store
        .log_list(LogList {
            call_id: call.id.clone(),
            index: None,
            after_seq: 0,
            limit: 10,
            max_bytes: None,
        })
        .await
        .unwrap();
    assert_eq!(
        logs.iter().map(|l| l.line.as_str()).collect::<Vec<_>>(),
        ["mine", "after"]
    );
    let output = store.input_get(&call.id, 0).await.unwrap().unwrap().output;
    assert_eq!(output.as_deref(), Some("1"));
}

pub async fn an_attempt_keeps_the_size_of_its_batch(store: Arc<dyn Store>) {
    deploy(&*store).await;
    let w = worker(&*store).await;
    let call = spawn_n(&*store, "ok", 2, T0).await;
    let leased = lease(&*store, &w, "ok", 2, T0).await;
    store
        .input_complete_many(InputCompleteMany {
            worker_id: w.clone(),
            results: leased
                .iter()
                .map(|l| (l.lease, Outcome::Succeeded { output: json!(1) }))
                .collect(),
            batch_sizes: vec![2, 2],
            now: T0 + 1,
        })
        .await
        .unwrap();
    let attempts = store.attempt_list(all_attempts(&call.id)).await.unwrap();
    assert_eq!(
        attempts.iter().map(|a| a.batch_size).collect::<Vec<_>>(),
        [Some(2), Some(2)]
    );
}

pub async fn a_recorded_attempt_is_never_rewritten(store: Arc<dyn Store>) {
    deploy(&*store).await;
    let w = worker(&*store).await;
    let call = spawn_n(&*store, "ok", 1, T0).await;
    let l = lease(&*store, &w, "ok", 1, T0).await.remove(0);
    complete(
        &*store,
        &w,
        l.lease,
        Outcome::Succeeded { output: json!(1) },
        T0 + 1,
    )
    .await;
    let again = complete(&*store, &w, l.lease, failed("second"), T0 + 2).await;
    assert!(!again.recorded);
    let attempts = store.attempt_list(all_attempts(&call.id)).await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].outcome, "succeeded");
    assert!(!attempts[0].late);
    assert!(attempts[0].error.is_none());
    assert_eq!(attempts[0].finished_at, Some(T0 + 1));
}

pub async fn a_failure_that_cannot_get_better_skips_its_retries(store: Arc<dyn Store>) {
    deploy(&*store).await;
    let w = worker(&*store).await;
    let call = spawn_n(&*store, "retry", 1, T0).await;
    let l = lease(&*store, &w, "retry", 1, T0).await.remove(0);
    let row = complete(
        &*store,
        &w,
        l.lease,
        Outcome::Failed {
            error: InputError::new("CorruptUpload", "not a PDF"),
            retry: false,
        },
        T0 + 1,
    )
    .await;
    assert_eq!(row.effect, "failed");
    assert_eq!(state_of(&*store, &call.id).await, InputState::Failed);
    let input = store.input_get(&call.id, 0).await.unwrap().unwrap();
    assert_eq!(input.error.unwrap().code, "CorruptUpload");
}

pub async fn a_nul_character_in_a_log_line_loses_no_line(store: Arc<dyn Store>) {
    deploy(&*store).await;
    let w = worker(&*store).await;
    let call = spawn_n(&*store, "ok", 1, T0).await;
    let l = lease(&*store, &w, "ok", 1, T0).await.remove(0);
    let mut lines: Vec<String> = (0..10).map(|i| format!("clean {i}")).collect();
    lines.push("before\0after".into());
    store
        .log_append_many(LogAppend {
            worker_id: w.clone(),
            lines: lines
                .iter()
                .map(|text| LogInsert {
                    lease: l.lease,
                    stream: LogStream::Stdout,
                    ts: T0,
                    line: text.clone(),
                })
                .collect(),
            max_lines_per_attempt: 100,
        })
        .await
        .unwrap();
    let kept = store
        .log_list(LogList {
            call_id: call.id.clone(),
            index: None,
            after_seq: 0,
            limit: 100,
            max_bytes: None,
        })
        .await
        .unwrap();
    assert_eq!(kept.len(), 11);
    assert_eq!(kept[10].line, "before\u{FFFD}after");
}

pub async fn cancels_completions_rescues_and_heartbeats_of_the_same_calls_never_deadlock(
    store: Arc<dyn Store>,
) {
    deploy(&*store).await;
    for round in 0..5 {
        let now = T0 + round * 100_000;
        let mut calls = Vec::new();
        let mut workers = Vec::new();
        for _ in 0..4 {
            calls.push(spawn_n(&*store, "ok", 60, now).await);
            workers.push(worker(&*store).await);
        }
        let mut leased = Vec::new();
        for w in &workers {
            leased.push(lease(&*store, w, "ok", 50, now).await);
        }
        let mut tasks = Vec::new();
        for (w, batch) in workers.iter().zip(&leased) {
            // Completions in reverse, heartbeats forwards: each worker's batch spans calls.
            let (store, w, batch) = (store.clone(), w.clone(), batch.clone());
            tasks.push(tokio::spawn(async move {
                let mut results: Vec<(Lease, Outcome)> = batch
                    .iter()
                    .map(|l| {
                        (
                            l.lease,
                            Outcome::Succeeded {
                                output: json!(l.index),
                            },
                        )
                    })
                    .collect();
                results.reverse();
                store
                    .lease_heartbeat(LeaseHeartbeat {
                        worker_id: w.clone(),
                        leases: batch.iter().map(|l| l.lease).collect(),
                        now: now + 1,
                        lease_ms: LEASE_MS,
                    })
                    .await
                    .map(|_| ())?;
                store
                    .input_complete_many(InputCompleteMany {
                        worker_id: w,
                        batch_sizes: Vec::new(),
                        results,
                        now: now + 2,
                    })
                    .await
                    .map(|_| ())
            }));
        }
        for call in calls.iter().rev() {
            let (store, id) = (store.clone(), call.id.clone());
            tasks.push(tokio::spawn(async move {
                store
                    .call_cancel(CallCancel { id, now: now + 2 })
                    .await
                    .map(|_| ())
            }));
        }
        let rescuer = store.clone();
        tasks.push(tokio::spawn(async move {
            rescuer
                .lease_rescue_expired(LeaseRescue {
                    now: now + LEASE_MS + 1,
                    limit: 1_000,
                })
                .await
                .map(|_| ())
        }));
        for task in tasks {
            let done = task.await.unwrap();
            assert!(done.is_ok(), "round {round}: {done:?}");
        }
        for call in &calls {
            let row = store.call_get(&call.id).await.unwrap().unwrap();
            assert!(row.state.is_terminal(), "{row:?}");
            assert_complete_order(&*store, &call.id, 60).await;
        }
    }
}

pub async fn secrets_are_stored_replaced_listed_and_deleted(store: Arc<dyn Store>) {
    let put = |name: &str, keys: &[&str], sealed: &str, now: i64| SecretPutParams {
        name: name.into(),
        keys: keys.iter().map(|k| k.to_string()).collect(),
        sealed: sealed.into(),
        now,
    };
    assert!(store.secret_list().await.unwrap().is_empty());
    let first = store
        .secret_put(put("stripe", &["API_KEY"], "v1:aaa", T0))
        .await
        .unwrap();
    assert_eq!((first.created_at, first.updated_at), (T0, T0));
    store
        .secret_put(put("aws", &["ID", "KEY"], "v1:bbb", T0 + 1))
        .await
        .unwrap();
    // Setting again replaces keys and values and keeps the creation time.
    let replaced = store
        .secret_put(put("stripe", &["API_KEY", "WEBHOOK"], "v1:ccc", T0 + 2))
        .await
        .unwrap();
    assert_eq!(replaced.keys, vec!["API_KEY", "WEBHOOK"]);
    assert_eq!(replaced.sealed, "v1:ccc");
    assert_eq!((replaced.created_at, replaced.updated_at), (T0, T0 + 2));
    let names: Vec<String> = store
        .secret_list()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, vec!["aws", "stripe"]);
    let some = store
        .secret_get_many(&["stripe".into(), "missing".into()])
        .await
        .unwrap();
    assert_eq!(some, vec![replaced]);
    assert!(store.secret_get_many(&[]).await.unwrap().is_empty());
    assert!(store.secret_delete("aws").await.unwrap());
    assert!(!store.secret_delete("aws").await.unwrap());
    assert_eq!(store.secret_list().await.unwrap().len(), 1);
}

pub async fn snapshots_are_kept_while_a_version_needs_them(store: Arc<dyn Store>) {
    let put = |hash: &str, now: i64| SnapshotPut {
        hash: hash.into(),
        bytes: hash.as_bytes().to_vec(),
        files: 2,
        unpacked_bytes: 10,
        now,
    };
    assert!(store.snapshot_put(put("sha256:v1", T0)).await.unwrap());
    // The same hash again stores nothing new.
    assert!(!store.snapshot_put(put("sha256:v1", T0 + 5)).await.unwrap());
    let info = store.snapshot_info("sha256:v1").await.unwrap().unwrap();
    assert_eq!(
        (info.size, info.files, info.unpacked_bytes, info.created_at),
        (9, 2, 10, T0)
    );
    assert_eq!(
        store.snapshot_get("sha256:v1").await.unwrap().unwrap(),
        b"sha256:v1".to_vec()
    );
    assert!(store.snapshot_info("sha256:none").await.unwrap().is_none());
    assert!(store.snapshot_get("sha256:none").await.unwrap().is_none());
    for (version, hash) in [(1, "sha256:v1"), (2, "sha256:v2"), (3, "sha256:v3")] {
        store.snapshot_put(put(hash, T0)).await.unwrap();
        store
            .app_deploy(AppDeploy {
                app: "a".into(),
                manifest: String::new(),
                functions: vec![spec("a", "ok", 0, 60_000)],
                schedules: Vec::new(),
                notify: Vec::new(),
                snapshot: Some(hash.into()),
                now: T0 + version,
            })
            .await
            .unwrap();
    }
    store.snapshot_put(put("sha256:orphan", T0)).await.unwrap();
    store
        .snapshot_put(put("sha256:fresh", T0 + 100))
        .await
        .unwrap();
    // A call of version 1 still runs, so version 1's snapshot stays with the newest one.
    spawn_n(&*store, "ok", 1, T0).await;
    let pruned = store
        .snapshot_prune(SnapshotPrune {
            keep_versions: 1,
            created_before: T0 + 50,
        })
        .await
        .unwrap();
    assert_eq!(pruned, 2, "v2 and the orphan go");
    for (hash, kept) in [
        ("sha256:v1", true),
        ("sha256:v2", false),
        ("sha256:v3", true),
        ("sha256:orphan", false),
        ("sha256:fresh", true),
    ] {
        assert_eq!(
            store.snapshot_info(hash).await.unwrap().is_some(),
            kept,
            "{hash}"
        );
    }
}

pub async fn a_pause_moves_running_leases_and_deadlines_on(store: Arc<dyn Store>) {
    deploy(&*store).await;
    let w = worker(&*store).await;
    let ok = spawn_n(&*store, "ok", 1, T0).await;
    let slow = spawn_n(&*store, "slow", 1, T0).await;
    let a = lease(&*store, &w, "ok", 1, T0).await.remove(0);
    let b = lease(&*store, &w, "slow", 1, T0).await.remove(0);
    // The server did not run for 30 s from T0 + 1 s: the worker heartbeat into it meanwhile.
    let woke = T0 + 31_000;
    let moved = store
        .lease_extend_all(LeaseExtend {
            gap_ms: 30_000,
            until_at_least: woke + LEASE_MS,
        })
        .await
        .unwrap();
    assert_eq!(moved, 2);
    // Unmoved, the lease of `ok` ran out at T0 + 10 s and `slow` was past its deadline
    // (T0 + 6 s); moved, neither is rescued before a lease period after the server woke.
    let report = store
        .lease_rescue_expired(LeaseRescue {
            now: woke + LEASE_MS - 1,
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!((report.requeued, report.timed_out), (0, 0), "{report:?}");
    for (l, call) in [(a, &ok), (b, &slow)] {
        let done = complete(
            &*store,
            &w,
            l.lease,
            Outcome::Succeeded { output: json!(1) },
            woke + 1,
        )
        .await;
        assert!(done.recorded, "{call:?}");
    }
}

pub async fn a_clock_step_moves_leases_deadlines_and_backoffs(store: Arc<dyn Store>) {
    deploy(&*store).await;
    let w = worker(&*store).await;
    // Forward: a lease taken before a step of ten minutes is not expired by it.
    spawn_n(&*store, "slow", 1, T0).await;
    let running = lease(&*store, &w, "slow", 1, T0).await.remove(0);
    let step = 600_000;
    let now = T0 + 1_000 + step;
    store
        .time_shift(TimeShift {
            step_ms: step,
            now,
            lease_ms: LEASE_MS,
        })
        .await
        .unwrap();
    let report = store
        .lease_rescue_expired(LeaseRescue { now, limit: 10 })
        .await
        .unwrap();
    assert_eq!((report.requeued, report.timed_out), (0, 0), "{report:?}");
    let done = complete(
        &*store,
        &w,
        running.lease,
        Outcome::Succeeded { output: json!(1) },
        now + 1,
    )
    .await;
    assert!(done.recorded);
    // Backward: a retry's backoff of 1 s is still 1 s on the new clock, not ten minutes more.
    let t = now + 10;
    spawn_n(&*store, "retry", 1, t).await;
    let first = lease(&*store, &w, "retry", 1, t).await.remove(0);
    complete(
        &*store,
        &w,
        first.lease,
        Outcome::Failed {
            error: InputError::new("e", "m"),
            retry: true,
        },
        t,
    )
    .await;
    let back = t + 10 - step;
    // A lease renewed on the new clock before the server noticed the step is not moved back
    // again.
    spawn_n(&*store, "ok", 1, t).await;
    let held = lease(&*store, &w, "ok", 1, t).await.remove(0);
    store
        .lease_heartbeat(LeaseHeartbeat {
            worker_id: w.clone(),
            leases: vec![held.lease],
            now: back,
            lease_ms: LEASE_MS,
        })
        .await
        .unwrap();
    store
        .time_shift(TimeShift {
            step_ms: -step,
            now: back,
            lease_ms: LEASE_MS,
        })
        .await
        .unwrap();
    assert!(lease(&*store, &w, "retry", 1, back).await.is_empty());
    let again = lease(&*store, &w, "retry", 1, back + 1_000).await;
    assert_eq!(again.len(), 1, "the backoff ends 1 s after the failure");
    // A lease running through a backward step keeps a whole lease period on the new clock.
    let report = store
        .lease_rescue_expired(LeaseRescue {
            now: back + LEASE_MS - 1,
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!((report.requeued, report.timed_out), (0, 0), "{report:?}");
    let done = complete(
        &*store,
        &w,
        held.lease,
        Outcome::Succeeded { output: json!(2) },
        back + LEASE_MS - 1,
    )
    .await;
    assert!(done.recorded);
}

pub async fn a_result_after_a_timeout_is_kept_as_a_late_attempt(store: Arc<dyn Store>) {
    deploy(&*store).await;
    let w = worker(&*store).await;
    let call = spawn_n(&*store, "slow", 1, T0).await;
    let l = lease(&*store, &w, "slow", 1, T0).await.remove(0);
    let deadline = T0 + 1_000 + SLACK_MS;
    store
        .lease_heartbeat(LeaseHeartbeat {
            worker_id: w.clone(),
            leases: vec![l.lease],
            now: deadline - 1,
            lease_ms: LEASE_MS,
        })
        .await
        .unwrap();
    let report = store
        .lease_rescue_expired(LeaseRescue {
            now: deadline,
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(report.timed_out, 1);
    let late = complete(
        &*store,
        &w,
        l.lease,
        Outcome::Succeeded {
            output: json!("late"),
        },
        deadline + 1,
    )
    .await;
    assert!(!late.recorded);
    let attempts = store.attempt_list(all_attempts(&call.id)).await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert!(attempts[0].late, "{attempts:?}");
    assert_eq!(attempts[0].outcome, "succeeded");
    // A second report of the same attempt changes nothing more.
    complete(
        &*store,
        &w,
        l.lease,
        Outcome::Failed {
            error: InputError::new("e", "again"),
            retry: false,
        },
        deadline + 2,
    )
    .await;
    let again = store.attempt_list(all_attempts(&call.id)).await.unwrap();
    assert_eq!(again, attempts);
    let input = store.input_get(&call.id, 0).await.unwrap().unwrap();
    assert_eq!(
        input.state,
        InputState::Failed,
        "the timeout stays the result"
    );
}

pub async fn a_schedule_is_rescheduled_only_from_the_due_time_expected(store: Arc<dyn Store>) {
    use hopper_core::schedule::Overlap;
    deploy_schedules(&*store, vec![schedule_spec("s", Overlap::Allow)], T0).await;
    let row = store
        .schedule_list()
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.spec.name == "s")
        .unwrap();
    let next = row.next_due_at.unwrap();
    let moved = |expected: i64| ScheduleReschedule {
        app: "a".into(),
        name: "s".into(),
        expected_due_at: Some(expected),
        next_due_at: Some(next - 600_000),
        anchor_at: Some(row.anchor_at - 600_000),
        forget_firings_after: Some(T0),
        now: T0,
    };
    assert!(!store.schedule_reschedule(moved(next + 1)).await.unwrap());
    assert!(store.schedule_reschedule(moved(next)).await.unwrap());
    let after = store
        .schedule_list()
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.spec.name == "s")
        .unwrap();
    assert_eq!(after.next_due_at, Some(next - 600_000));
    assert_eq!(after.anchor_at, row.anchor_at - 600_000);
}

pub async fn the_schema_is_the_one_this_build_knows(store: Arc<dyn Store>) {
    let schema = store.schema_version().await.unwrap();
    assert!(schema.known > 0);
    assert_eq!(schema.applied, schema.known, "{schema:?}");
    assert_eq!(schema.applied_name, schema.known_name);
    schema.check().unwrap();
    let newer = SchemaVersion {
        applied: schema.known + 1,
        applied_name: "future".into(),
        ..schema.clone()
    };
    let e = newer.check().unwrap_err().to_string();
    assert!(
        e.contains("_future") && e.contains(&schema.known_name),
        "{e}"
    );
}

pub async fn concurrent_deploys_of_one_app_each_get_a_version(store: Arc<dyn Store>) {
    let deploys = (0..10).map(|_| {
        let store = store.clone();
        tokio::spawn(async move { deploy(&*store).await })
    });
    for d in deploys.collect::<Vec<_>>() {
        d.await.unwrap();
    }
    let versions = store
        .function_versions(&key("ok"), 100)
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.function.version)
        .collect::<HashSet<_>>();
    assert_eq!(versions, (1..=10).collect::<HashSet<_>>());
    let apps = store.app_list().await.unwrap();
    assert_eq!(apps[0].version, 10);
}

/// Runs the one queued input of `call` (a call of `a.ok`, written by an earlier schema's
/// build) to success through this build's store, as an upgrade test's last step.
pub async fn a_queued_call_runs_to_its_end(store: &dyn Store, call: &CallId) {
    let w = worker(store).await;
    let leased = lease(store, &w, "ok", 10, T0 + 1).await;
    assert_eq!(leased.len(), 1, "the queued input is leased");
    let done = complete(
        store,
        &w,
        leased[0].lease,
        Outcome::Succeeded {
            output: json!("done"),
        },
        T0 + 2,
    )
    .await;
    assert!(done.recorded);
    let ended = store.call_get(call).await.unwrap().unwrap();
    assert_eq!(ended.state, InputState::Succeeded);
}

pub async fn blobs_are_read_in_chunks_and_kept_while_a_call_refers_to_them(store: Arc<dyn Store>) {
    deploy(&*store).await;
    let chunk = |upload: &str, seq: i64, data: &[u8], now: i64| BlobChunk {
        upload: upload.into(),
        seq,
        data: Arc::new(data.to_vec()),
        now,
    };
    let finish =
        |upload: &str, digest: &str, size: u64, call: Option<CallId>, now: i64| BlobFinish {
            upload: upload.into(),
            digest: digest.into(),
            size,
            location: None,
            call,
            now,
        };
    // Chunks written, one twice (a retried write keeps the first): no blob until finished.
    store
        .blob_chunk_put(chunk("u1", 0, b"hello ", T0))
        .await
        .unwrap();
    store
        .blob_chunk_put(chunk("u1", 1, b"world", T0))
        .await
        .unwrap();
    store
        .blob_chunk_put(chunk("u1", 1, b"WORLD", T0))
        .await
        .unwrap();
    assert!(store.blob_info("sha256:a").await.unwrap().is_none());
    assert!(store.blob_chunk("sha256:a", 0).await.unwrap().is_none());
    assert!(store
        .blob_finish(finish("u1", "sha256:a", 11, None, T0))
        .await
        .unwrap());
    let info = store.blob_info("sha256:a").await.unwrap().unwrap();
    assert_eq!((info.size, info.chunks, info.created_at), (11, 2, T0));
    assert_eq!(
        store.blob_chunk("sha256:a", 0).await.unwrap().unwrap(),
        b"hello ".to_vec()
    );
    assert_eq!(
        store.blob_chunk("sha256:a", 1).await.unwrap().unwrap(),
        b"world".to_vec()
    );
    assert!(store.blob_chunk("sha256:a", 2).await.unwrap().is_none());
    // The same bytes uploaded again: one blob, the second upload's copy in the first's place
    // (so an upload repairs a copy damaged since), the first's chunks dropped.
    store
        .blob_chunk_put(chunk("u2", 0, b"hello world", T0))
        .await
        .unwrap();
    assert!(!store
        .blob_finish(finish("u2", "sha256:a", 11, None, T0))
        .await
        .unwrap());
    assert_eq!(
        store.blob_info("sha256:a").await.unwrap().unwrap().chunks,
        1
    );
    assert_eq!(
        store.blob_chunk("sha256:a", 0).await.unwrap().unwrap(),
        b"hello world"
    );

    // An upload refused half-way is dropped at once.
    store
        .blob_chunk_put(chunk("u9", 0, b"never", T0))
        .await
        .unwrap();
    store.blob_discard("u9").await.unwrap();
    store
        .blob_chunk_put(chunk("u9b", 0, b"again", T0))
        .await
        .unwrap();
    assert!(store
        .blob_finish(finish("u9b", "sha256:again", 5, None, T0))
        .await
        .unwrap());
    // Uploaded again later, a stored blob's grace starts again.
    store
        .blob_chunk_put(chunk("u10", 0, b"again", T0 + 60))
        .await
        .unwrap();
    store
        .blob_finish(finish("u10", "sha256:again", 5, None, T0 + 60))
        .await
        .unwrap();
    assert_eq!(
        store
            .blob_info("sha256:again")
            .await
            .unwrap()
            .unwrap()
            .created_at,
        T0 + 60
    );

    // A blob a call refers to is kept while the call is; one nobody refers to goes after the
    // grace; an upload never finished goes too.
    let call = spawn_n(&*store, "ok", 1, T0).await;
    store
        .blob_chunk_put(chunk("u3", 0, b"kept", T0))
        .await
        .unwrap();
    store
        .blob_finish(finish("u3", "sha256:kept", 4, Some(call.id.clone()), T0))
        .await
        .unwrap();
    store
        .blob_chunk_put(chunk("u4", 0, b"claimed", T0))
        .await
        .unwrap();
    store
        .blob_finish(finish("u4", "sha256:claimed", 7, None, T0))
        .await
        .unwrap();
    store
        .blob_claim(&call.id, vec!["sha256:claimed".into()], T0)
        .await
        .unwrap();
    store
        .blob_chunk_put(chunk("u5", 0, b"half", T0))
        .await
        .unwrap();
    store
        .blob_chunk_put(chunk("u6", 0, b"young", T0 + 100))
        .await
        .unwrap();
    store
        .blob_finish(finish("u6", "sha256:young", 5, None, T0 + 100))
        .await
        .unwrap();
    let pruned = store
        .blob_prune(BlobPrune {
            created_before: T0 + 50,
        })
        .await
        .unwrap();
    assert_eq!(pruned, 1, "only sha256:a: unreferenced and past the grace");
    assert!(store.blob_info("sha256:a").await.unwrap().is_none());
    assert!(store.blob_chunk("sha256:a", 0).await.unwrap().is_none());
    for kept in [
        "sha256:kept",
        "sha256:claimed",
        "sha256:young",
        "sha256:again",
    ] {
        assert!(store.blob_info(kept).await.unwrap().is_some(), "{kept}");
    }
    // Once the call is pruned, its blobs go too.
    let w = worker(&*store).await;
    let l = lease(&*store, &w, "ok", 1, T0).await.remove(0);
    complete(
        &*store,
        &w,
        l.lease,
        Outcome::Succeeded { output: json!(1) },
        T0 + 1,
    )
    .await;
    store
        .call_prune_finished(CallPrune {
            finished_before: T0 + 2,
            limit: 100,
        })
        .await
        .unwrap();
    let pruned = store
        .blob_prune(BlobPrune {
            created_before: T0 + 50,
        })
        .await
        .unwrap();
    assert_eq!(pruned, 2);
    assert!(store.blob_info("sha256:kept").await.unwrap().is_none());
    assert!(store.blob_info("sha256:claimed").await.unwrap().is_none());
    assert!(store.blob_chunk("sha256:kept", 0).await.unwrap().is_none());

    // A blob kept in an object store: no chunks, its object's URL. An upload's object is
    // nobody's from its start until its blob is written; a cut one stays so.
    let object = "s3://bucket/pre/u7".to_string();
    let cut = "s3://bucket/pre/u8".to_string();
    for location in [&object, &cut] {
        store.blob_object_begin(location, T0).await.unwrap();
    }
    let due = |before: i64| {
        let store = store.clone();
        async move {
            let mut due = store.blob_objects_due(before, 10).await.unwrap();
            due.sort();
            due
        }
    };
    assert_eq!(
        due(T0).await,
        Vec::<String>::new(),
        "not yet past the grace"
    );
    assert_eq!(due(T0 + 1).await, [object.clone(), cut.clone()]);
    let new = store
        .blob_finish(BlobFinish {
            location: Some(object.clone()),
            ..finish("u7", "sha256:object", 3, None, T0)
        })
        .await
        .unwrap();
    assert!(new);
    let info = store.blob_info("sha256:object").await.unwrap().unwrap();
    assert_eq!((info.size, info.chunks), (3, 0));
    assert_eq!(info.location.as_deref(), Some(object.as_str()));
    assert_eq!(
        due(T0 + 1).await,
        std::slice::from_ref(&cut),
        "a blob's object is nobody's no more"
    );
    store.blob_object_gone(&cut).await.unwrap();
    assert!(due(i64::MAX).await.is_empty());
    // Uploaded again, the new copy takes the blob over and the old object is nobody's.
    let again = "s3://bucket/pre/u9".to_string();
    store.blob_object_begin(&again, T0 + 5).await.unwrap();
    store
        .blob_finish(BlobFinish {
            location: Some(again.clone()),
            ..finish("u9", "sha256:object", 3, None, T0 + 5)
        })
        .await
        .unwrap();
    let info = store.blob_info("sha256:object").await.unwrap().unwrap();
    assert_eq!(info.location.as_deref(), Some(again.as_str()));
    assert_eq!(due(i64::MAX).await, std::slice::from_ref(&object));
    store.blob_object_gone(&object).await.unwrap();
    // Pruned, its object is nobody's at once.
    store
        .blob_prune(BlobPrune {
            created_before: T0 + 50,
        })
        .await
        .unwrap();
    assert!(store.blob_info("sha256:object").await.unwrap().is_none());
    assert_eq!(due(1).await, [again]);
}
