//! The cron component driven by a manual clock: firing instants across daylight-saving
//! changes, exactly-once firing across restarts and servers, missed due times, overlap.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::path::Path;
use std::sync::Arc;

use hopper_core::clock::ManualClock;
use hopper_server::cron::Cron;
use hopper_server::{deploy, AppState, ServerConfig};
use hopper_store::{CallList, FireOutcome};
use hopper_store_sqlite::SqliteStore;
use tokio_util::sync::CancellationToken;

fn at(text: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(text)
        .unwrap()
        .timestamp_millis()
}

fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

async fn state(dir: &Path, clock: &ManualClock) -> AppState {
    let store = SqliteStore::open(&dir.join("hopper.db")).await.unwrap();
    AppState::new(
        ServerConfig::default(),
        Arc::new(store),
        Arc::new(clock.clone()),
        CancellationToken::new(),
    )
}

async fn deploy_text(state: &AppState, text: &str) {
    deploy::manifest_text(state, "hopper.toml", text, Path::new("/"), None)
        .await
        .unwrap();
}

const NIGHTLY: &str = "app = \"r\"\n[functions.report]\ncommand = [\"true\"]\n[schedules.nightly]\nfunction = \"report\"\ncron = \"30 2 * * *\"\ntimezone = \"Europe/Berlin\"\ninput = { day = \"yesterday\" }\n";

/// Steps the clock from `from` to `to` in `step_min` minutes, firing at each step; returns
/// the due times fired.
async fn run_between(
    state: &AppState,
    clock: &ManualClock,
    from: &str,
    to: &str,
    step_min: i64,
) -> Vec<String> {
    let cron = Cron::new(state.clone());
    let mut fired = Vec::new();
    let mut now = at(from);
    while now <= at(to) {
        clock.set(now);
        for (_, outcome) in cron.run_once().await.unwrap() {
            if let FireOutcome::Fired(call) = outcome {
                fired.push(iso(call.schedule.unwrap().1));
            }
        }
        now += step_min * 60_000;
    }
    fired
}

#[tokio::test]
async fn a_cron_schedule_fires_at_wall_clock_times_across_daylight_saving_changes() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(at("2026-03-26T12:00:00Z"));
    let state = state(dir.path(), &clock).await;
    deploy_text(&state, NIGHTLY).await;
    // Spring forward (2026-03-29): there is no 02:30 that night, and none is invented.
    let spring = run_between(
        &state,
        &clock,
        "2026-03-26T12:00:00Z",
        "2026-03-31T00:00:00Z",
        10,
    )
    .await;
    assert_eq!(
        spring,
        [
            "2026-03-27T01:30:00Z",
            "2026-03-28T01:30:00Z",
            "2026-03-30T00:30:00Z"
        ]
    );
    // Fall back (2026-10-25): 02:30 happens twice and fires once.
    let dir2 = tempfile::tempdir().unwrap();
    let clock2 = ManualClock::new(at("2026-10-23T12:00:00Z"));
    let state2 = self::state(dir2.path(), &clock2).await;
    deploy_text(&state2, NIGHTLY).await;
    let fall = run_between(
        &state2,
        &clock2,
        "2026-10-23T12:00:00Z",
        "2026-10-27T00:00:00Z",
        10,
    )
    .await;
    assert_eq!(
        fall,
        [
            "2026-10-24T00:30:00Z",
            "2026-10-25T00:30:00Z",
            "2026-10-26T01:30:00Z"
        ]
    );
    // Each firing is a call like any other, tagged with its schedule and due time.
    let calls = state2
        .store
        .call_list(CallList {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(calls.len(), 3);
    assert_eq!(calls[0].schedule.as_ref().unwrap().0, "r.nightly");
    let input = state2
        .store
        .input_get(&calls[0].id, 0)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(input.input, "{\"day\":\"yesterday\"}");
}

#[tokio::test]
async fn a_due_time_fires_once_across_a_restart_and_two_servers() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(at("2026-05-01T00:59:00Z"));
    let first = state(dir.path(), &clock).await;
    deploy_text(&first, "app = \"r\"\n[functions.f]\ncommand = [\"true\"]\n[schedules.hourly]\nfunction = \"f\"\ncron = \"@hourly\"\n").await;
    clock.set(at("2026-05-01T01:00:00Z"));
    // Two servers over one database, both at the due time.
    let second = state(dir.path(), &clock).await;
    let (cron_a, cron_b) = (Cron::new(first.clone()), Cron::new(second.clone()));
    let (a, b) = tokio::join!(cron_a.run_once(), cron_b.run_once());
    let fired = a
        .unwrap()
        .into_iter()
        .chain(b.unwrap())
        .filter(|(_, o)| matches!(o, FireOutcome::Fired(_)))
        .count();
    assert_eq!(fired, 1);
    // A restart at the same instant: a new store on the same file fires nothing again.
    let restarted = state(dir.path(), &clock).await;
    assert!(Cron::new(restarted.clone())
        .run_once()
        .await
        .unwrap()
        .is_empty());
    let calls = restarted
        .store
        .call_list(CallList {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(calls.len(), 1);
}

#[tokio::test]
async fn after_downtime_only_the_most_recent_due_time_fires_and_the_rest_are_missed() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(at("2026-05-01T00:00:00Z"));
    let state = state(dir.path(), &clock).await;
    deploy_text(&state, "app = \"r\"\n[functions.f]\ncommand = [\"true\"]\n[schedules.daily]\nfunction = \"f\"\ncron = \"0 3 * * *\"\n").await;
    // Down from before 05-01 03:00 until 05-04 10:00.
    clock.set(at("2026-05-04T10:00:00Z"));
    let fired = Cron::new(state.clone()).run_once().await.unwrap();
    assert_eq!(fired.len(), 1);
    let FireOutcome::Fired(call) = &fired[0].1 else {
        panic!("{fired:?}")
    };
    assert_eq!(
        iso(call.schedule.as_ref().unwrap().1),
        "2026-05-04T03:00:00Z"
    );
    let firings = state
        .store
        .schedule_firings("r", "daily", 10)
        .await
        .unwrap();
    let missed: Vec<String> = firings
        .iter()
        .filter(|f| f.outcome == "missed")
        .map(|f| iso(f.due_at))
        .collect();
    assert_eq!(missed.len(), 3, "{missed:?}");
    let schedules = state.store.schedule_list().await.unwrap();
    assert_eq!(
        iso(schedules[0].next_due_at.unwrap()),
        "2026-05-05T03:00:00Z"
    );
    assert!(
        Cron::new(state.clone())
            .run_once()
            .await
            .unwrap()
            .is_empty(),
        "nothing is back-filled"
    );
}

#[tokio::test]
async fn every_with_overlap_skip_skips_while_the_last_call_runs_and_a_deploy_takes_effect_at_once()
{
    let dir = tempfile::tempdir().unwrap();
    let start = at("2026-05-01T00:00:00Z");
    let clock = ManualClock::new(start);
    let state = state(dir.path(), &clock).await;
    let manifest = "app = \"r\"\n[functions.f]\ncommand = [\"true\"]\n[schedules.refresh]\nfunction = \"f\"\nevery = \"15m\"\noverlap = \"skip\"\n";
    deploy_text(&state, manifest).await;
    let cron = Cron::new(state.clone());
    clock.set(start + 15 * 60_000);
    assert!(matches!(
        cron.run_once().await.unwrap()[0].1,
        FireOutcome::Fired(_)
    ));
    clock.set(start + 30 * 60_000);
    assert_eq!(
        cron.run_once().await.unwrap()[0].1,
        FireOutcome::Skipped,
        "no worker ran the first call"
    );
    let calls = state
        .store
        .call_list(CallList {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(calls.len(), 1);
    // Redeploying a new period: the next due time follows the new definition at once.
    deploy_text(
        &state,
        &manifest
            .replace("15m", "1h")
            .replace("\"skip\"", "\"allow\""),
    )
    .await;
    let row = &state.store.schedule_list().await.unwrap()[0];
    assert_eq!(row.next_due_at, Some(start + 30 * 60_000 + 3_600_000));
    // Removing the schedule takes effect at once too.
    deploy_text(&state, "app = \"r\"\n[functions.f]\ncommand = [\"true\"]\n").await;
    assert!(state.store.schedule_list().await.unwrap().is_empty());
}
