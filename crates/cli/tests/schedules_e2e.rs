//! Schedules through the real binary: firing, run now, pause and resume, bad expressions.
//! Servers deploy with `--dev`: the commands here write marker files beside their manifest,
//! where the tests read them (a code snapshot would run them in a copy).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use std::time::Duration;

use common::*;
use hopper_core::InputState;
use serde_json::Value;

const APP: &str = r#"
app = "cronapp"
[functions.tick]
command = ["sh", "-c", "cat >> ticks.log; echo >> ticks.log; echo '\"ok\"'"]
[schedules.often]
function = "tick"
every = "1s"
input = { source = "schedule" }
[schedules.nightly]
function = "tick"
cron = "0 3 * * *"
timezone = "Europe/Berlin"
"#;

#[tokio::test]
async fn schedules_fire_and_can_be_listed_triggered_paused_and_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(dir.path(), APP);
    let server = Server::start(
        &dir.path().join("data"),
        &["--dev", "--deploy", m.to_str().unwrap()],
    );
    let client = server.client();
    eventually(
        "the every-1s schedule fires twice",
        Duration::from_secs(20),
        || async { (schedule_calls(&client).await.len() >= 2).then_some(()) },
    )
    .await;
    let calls = schedule_calls(&client).await;
    assert_eq!(calls[0].schedule.as_deref(), Some("cronapp.often"));
    let done = wait_done(&client, &calls[0].id, Duration::from_secs(20)).await;
    assert_eq!(done.state, InputState::Succeeded);
    assert!(std::fs::read_to_string(dir.path().join("ticks.log"))
        .unwrap()
        .contains("{\"source\":\"schedule\"}"));

    let out = cli(&server.url, &["schedules", "--json"]);
    let list: Vec<Value> = serde_json::from_str(&stdout(&out)).unwrap();
    let nightly = list
        .iter()
        .find(|s| s["name"] == "cronapp.nightly")
        .unwrap();
    let local = nightly["next_due_local"].as_str().unwrap();
    assert!(local.contains("T03:00:00"), "next due in its zone: {local}");
    assert!(
        local.ends_with("+01:00") || local.ends_with("+02:00"),
        "{local}"
    );
    let table = stdout(&cli(&server.url, &["schedules"]));
    assert!(
        table.contains("cronapp.often") && table.contains("every 1s"),
        "{table}"
    );

    let out = cli(&server.url, &["schedules", "pause", "often"]);
    assert!(out.status.success(), "{}", stderr(&out));
    tokio::time::sleep(Duration::from_millis(700)).await;
    let paused_count = schedule_calls(&client).await.len();
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(
        schedule_calls(&client).await.len(),
        paused_count,
        "a paused schedule does not fire"
    );

    let out = cli(&server.url, &["schedules", "trigger", "cronapp.nightly"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id: hopper_core::CallId = stdout(&out).trim().parse().unwrap();
    assert_eq!(
        wait_done(&client, &id, Duration::from_secs(20)).await.state,
        InputState::Succeeded
    );
    let shown: Value = serde_json::from_str(&stdout(&cli(
        &server.url,
        &["schedules", "show", "nightly", "--json"],
    )))
    .unwrap();
    assert_eq!(shown["firings"][0]["outcome"], "triggered");
    // In words: each firing with how its call went; a paused schedule has no next firing.
    let text = stdout(&cli(&server.url, &["schedules", "show", "nightly"]));
    let line = text
        .lines()
        .find(|l| l.contains("triggered"))
        .unwrap_or_default();
    assert!(
        line.contains("succeeded") && line.contains(&id.to_string()),
        "{text}"
    );
    let text = stdout(&cli(&server.url, &["schedules", "show", "often"]));
    assert!(
        text.contains("next: none, paused (hopper schedules resume cronapp.often)"),
        "{text}"
    );

    let out = cli(&server.url, &["schedules", "resume", "often"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let resumed_from = schedule_calls(&client).await.len();
    eventually(
        "the resumed schedule fires again",
        Duration::from_secs(20),
        || async { (schedule_calls(&client).await.len() > resumed_from).then_some(()) },
    )
    .await;
    let out = cli(&server.url, &["schedules", "pause", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("no schedule named nope"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn an_invalid_cron_or_zone_is_refused_at_deploy_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--no-workers"]);
    let bad = manifest(dir.path(), "app = \"x\"\n[functions.f]\ncommand = [\"true\"]\n[schedules.s]\nfunction = \"f\"\ncron = \"0 3 * 13 *\"\ntimezone = \"Europe/Nowhere\"\n");
    let out = cli(&server.url, &["deploy", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains(
            "hopper.toml:6:15: schedules.s.cron: invalid cron expression: field 4 (month) \"13\""
        ),
        "{err}"
    );
    assert!(
        err.contains(
            "hopper.toml:7:12: schedules.s.timezone: unknown time zone \"Europe/Nowhere\""
        ),
        "{err}"
    );
    assert!(server.client().schedules().await.unwrap().is_empty());
}
