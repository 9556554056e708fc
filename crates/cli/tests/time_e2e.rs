//! Faults of time, through the real binary: a server paused (`SIGSTOP`, as a frozen VM or a
//! debugger does) charges nothing to the workers that kept heartbeating into it, and a step of
//! the server's wall clock (Debian's `faketime` reading its offset from a file, the monotonic
//! clock left alone, as an NTP step does) neither fails running inputs nor silences schedules.
//! The clock tests need `faketime` (they skip without it unless `HOPPER_TEST_FAKETIME=1`, which
//! `.ci/run` sets). Servers deploy with `--dev`: the commands write marker files beside their
//! manifest, where the tests read them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use hopper_core::api::CallView;
use hopper_core::{CallId, InputState};
use hopper_sdk::client::CallFilter;
use hopper_sdk::Client;
use serde_json::json;

fn signal(pid: u32, signal: libc::c_int) {
    #[allow(unsafe_code)]
    // SAFETY: kill takes plain integers.
    unsafe {
        libc::kill(pid as libc::pid_t, signal);
    }
}

/// Lines in a marker file the commands append to (0 when it does not exist yet).
fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

async fn spawn_four(client: &Client, function: &str) -> Vec<CallId> {
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(client.spawn(function, json!(i), None).await.unwrap().id);
    }
    ids
}

/// Every call succeeded on its first attempt, with no lost or timed-out attempt before it.
async fn each_ran_once(client: &Client, ids: &[CallId]) -> Vec<CallView> {
    let mut calls = Vec::new();
    for id in ids {
        let call = wait_done(client, id, Duration::from_secs(90)).await;
        let attempts = client.attempts(id).await.unwrap();
        assert_eq!(call.state, InputState::Succeeded, "{call:?} {attempts:?}");
        assert_eq!(
            attempts
                .iter()
                .map(|a| a.outcome.as_str())
                .collect::<Vec<_>>(),
            ["succeeded"],
            "one attempt, succeeded: {attempts:?}"
        );
        calls.push(call);
    }
    calls
}

async fn metric(server: &Server, name: &str) -> f64 {
    let text = server.metrics().await;
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_server_charges_its_pause_to_no_worker() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(
        dir.path(),
        r#"
app = "p"
[functions.slow]
command = ["sh", "-c", "echo run >> runs.txt; sleep 5; echo '{\"ok\":1}'"]
concurrency = 4
max_workers = 1
"#,
    );
    let mut server = Server::start(
        &dir.path().join("data"),
        &["--dev", "--lease", "2s", "--deploy", m.to_str().unwrap()],
    );
    let client = server.client();
    let ids = spawn_four(&client, "p.slow").await;
    let runs = dir.path().join("runs.txt");
    eventually("four inputs running", Duration::from_secs(30), || async {
        (lines(&runs) == 4).then_some(())
    })
    .await;
    // Paused for four lease periods while the commands run: the workers heartbeat into a
    // server that does not answer.
    signal(server.pid(), libc::SIGSTOP);
    tokio::time::sleep(Duration::from_secs(8)).await;
    signal(server.pid(), libc::SIGCONT);
    each_ran_once(&client, &ids).await;
    assert_eq!(lines(&runs), 4, "no input ran twice");
    assert!(metric(&server, "hopper_server_pauses_total").await >= 1.0);
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn results_that_finished_while_the_server_was_paused_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    // The pause outlasts timeout + kill grace + lease: without the timekeeper every attempt
    // is past its deadline when the server wakes.
    let m = manifest(
        dir.path(),
        r#"
app = "p"
[functions.quick]
command = ["sh", "-c", "echo run >> runs.txt; sleep 2; echo '{\"ok\":2}'"]
timeout = "4s"
concurrency = 4
max_workers = 1
"#,
    );
    let mut server = Server::start(
        &dir.path().join("data"),
        &[
            "--dev",
            "--lease",
            "1s",
            "--kill-grace",
            "1s",
            "--deploy",
            m.to_str().unwrap(),
        ],
    );
    let client = server.client();
    let ids = spawn_four(&client, "p.quick").await;
    let runs = dir.path().join("runs.txt");
    eventually("four inputs running", Duration::from_secs(30), || async {
        (lines(&runs) == 4).then_some(())
    })
    .await;
    signal(server.pid(), libc::SIGSTOP);
    tokio::time::sleep(Duration::from_secs(10)).await;
    signal(server.pid(), libc::SIGCONT);
    for call in each_ran_once(&client, &ids).await {
        assert_eq!(call.output, Some(json!({"ok": 2})), "{call:?}");
    }
    assert_eq!(lines(&runs), 4, "no input ran twice");
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_charges_its_downtime_to_no_worker() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(
        dir.path(),
        r#"
app = "r"
[functions.slow]
command = ["sh", "-c", "echo run >> runs.txt; sleep 8; echo '{\"ok\":4}'"]
concurrency = 2
"#,
    );
    let mut server = Server::start(
        &dir.path().join("data"),
        &[
            "--dev",
            "--no-workers",
            "--lease",
            "3s",
            "--deploy",
            m.to_str().unwrap(),
        ],
    );
    let w = worker(&server.url, "r.slow");
    let client = server.client();
    let ids = vec![
        client.spawn("r.slow", json!(1), None).await.unwrap().id,
        client.spawn("r.slow", json!(2), None).await.unwrap().id,
    ];
    let runs = dir.path().join("runs.txt");
    eventually("two inputs running", Duration::from_secs(30), || async {
        (lines(&runs) == 2).then_some(())
    })
    .await;
    // Down for longer than a lease while the worker keeps running its inputs.
    server.kill9();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut server = Server::start_again(&server, &["--dev", "--no-workers", "--lease", "3s"]);
    let client = server.client();
    each_ran_once(&client, &ids).await;
    assert_eq!(lines(&runs), 2, "no input ran twice");
    drop(w);
    server.stop();
}

/// A server with a stepping clock (and `extra` flags), a worker on the real clock, and four
/// six-second inputs running when the clock steps forward ten minutes, then back: every input
/// succeeds on its first attempt. Returns `hopper_clock_steps_total` after both.
async fn four_inputs_ride_through_two_steps(extra: &[&str]) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(
        dir.path(),
        r#"
app = "c"
[functions.slow]
command = ["sh", "-c", "echo run >> runs.txt; sleep 6; echo '{\"ok\":3}'"]
timeout = "60s"
concurrency = 4
"#,
    );
    let offset = dir.path().join("offset");
    let args = [
        &["--dev", "--no-workers", "--lease", "5s"],
        extra,
        &["--deploy", m.to_str().unwrap()],
    ]
    .concat();
    let mut server = start_with_stepping_clock(&offset, &dir.path().join("data"), &args);
    let w = worker(&server.url, "c.slow");
    let client = server.client();
    let runs = dir.path().join("runs.txt");
    for step in ["+600", "+0"] {
        let _ = std::fs::remove_file(&runs);
        let ids = spawn_four(&client, "c.slow").await;
        eventually("four inputs running", Duration::from_secs(30), || async {
            (lines(&runs) == 4).then_some(())
        })
        .await;
        std::fs::write(&offset, format!("{step}\n")).unwrap();
        each_ran_once(&client, &ids).await;
        assert_eq!(
            lines(&runs),
            4,
            "no input ran twice after the step to {step}"
        );
    }
    let steps = metric(&server, "hopper_clock_steps_total").await;
    drop(w);
    server.stop();
    steps
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_step_of_the_servers_clock_fails_no_running_input() {
    if !has_faketime() {
        return;
    }
    assert_eq!(four_inputs_ride_through_two_steps(&[]).await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_a_step_of_a_servers_own_clock_changes_nothing() {
    let Ok(url) = std::env::var("HOPPER_TEST_POSTGRES") else {
        println!("SKIP: HOPPER_TEST_POSTGRES is not set");
        return;
    };
    if !has_faketime() {
        return;
    }
    // The server keeps the database's time: a step of its machine's clock is taken back at
    // once (before, for up to 30 s, until its next clock sync), and is no step of the clock
    // it keeps.
    let schema = format!("hopper_test_{}", hopper_core::ids::random_hex());
    let steps =
        four_inputs_ride_through_two_steps(&["--database", &url, "--database-schema", &schema])
            .await;
    let _ = std::process::Command::new("psql")
        .args([url.as_str(), "-c"])
        .arg(format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .output();
    assert_eq!(steps, 0.0, "the database's clock did not step");
}

/// Scheduled calls of `function` made so far.
async fn firings(client: &Client, function: &str) -> usize {
    let page = client
        .calls(&CallFilter {
            function: Some(function.into()),
            origin: Some("schedule".into()),
            limit: Some(1_000),
            ..CallFilter::default()
        })
        .await
        .unwrap();
    page.calls.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn schedules_go_on_after_the_clock_steps_back_or_forward() {
    if !has_faketime() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(
        dir.path(),
        r#"
app = "s"
[functions.period]
command = ["true"]
[functions.cron]
command = ["true"]
[functions.daily]
command = ["true"]
[schedules.every_second]
function = "period"
every = "1s"
[schedules.each_second]
function = "cron"
cron = "* * * * * *"
[schedules.once_a_day]
function = "daily"
cron = "0 0 * * *"
"#,
    );
    let offset = dir.path().join("offset");
    let mut server = start_with_stepping_clock(
        &offset,
        &dir.path().join("data"),
        &["--dev", "--no-workers", "--deploy", m.to_str().unwrap()],
    );
    let client = server.client();
    let daily_next = client.schedule("s.once_a_day").await.unwrap().next_due_at;
    tokio::time::sleep(Duration::from_secs(6)).await;
    // Back 4 s over due times fired already (they come again by the clock), back ten
    // minutes more, then forward to the real time.
    for step in ["-4", "-604", "+0"] {
        std::fs::write(&offset, format!("{step}\n")).unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = (
            firings(&client, "s.period").await,
            firings(&client, "s.cron").await,
        );
        tokio::time::sleep(Duration::from_secs(4)).await;
        let after = (
            firings(&client, "s.period").await,
            firings(&client, "s.cron").await,
        );
        // Four seconds after the step each schedule fired about four times: not silent for
        // the ten minutes the clock went back, not a burst of the ten minutes it went on.
        for (name, b, a) in [("every", before.0, after.0), ("cron", before.1, after.1)] {
            assert!(
                (2..=6).contains(&(a - b)),
                "{name}: {} firings in the 4 s after the step to {step}",
                a - b
            );
        }
    }
    // A daily schedule is not moved by a step shorter than a day: it does not run twice for
    // one day.
    assert_eq!(
        client.schedule("s.once_a_day").await.unwrap().next_due_at,
        daily_next
    );
    assert_eq!(firings(&client, "s.daily").await, 0);
    server.stop();
}
