//! The dashboard in a real browser: Debian's `chromium`, driven by `playwright-core` from
//! `tests/browser/dashboard.mjs`, against the real `hopper serve`.
//!
//! Needs `node`, `/usr/bin/chromium` and `npm ci --prefix crates/cli/tests/browser` (the
//! README's set-up; `.ci/run` does both). Without them the test says it skipped, unless
//! `HOPPER_TEST_BROWSER=1` (set by `.ci/run`) makes their absence a failure.
//! Screenshots of every page land in `target/test-output/dashboard/`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::json;

const APP: &str = r#"
app = "d"
[functions.fail]
command = ["sh", "-c", "echo 'starting the import'; echo 'the database said no' >&2; exit 3"]
[functions.slow]
command = ["sh", "-c", "i=0; while true; do i=$((i+1)); echo \"tick $i\"; sleep 0.4; done"]
timeout = "5m"
[functions.slow.limits]
max_running = 1
[functions.ok]
command = ["sh", "-c", "cat"]
[[notify]]
on = ["failed"]
functions = ["fail"]
webhook = "http://127.0.0.1:9/hopper-hook"
[schedules.hourly]
function = "ok"
every = "1h"
input = { from = "schedule" }
"#;

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// Whether the browser and its driver are installed; without them the test skips, unless CI
/// asked for it.
fn browser_ready() -> bool {
    let missing: Vec<&str> = [
        (Path::new("/usr/bin/chromium").exists(), "/usr/bin/chromium"),
        (
            browser_dir().join("node_modules/playwright-core").exists(),
            "crates/cli/tests/browser/node_modules (npm ci --prefix crates/cli/tests/browser)",
        ),
        (
            std::process::Command::new("node")
                .arg("--version")
                .output()
                .is_ok(),
            "node",
        ),
    ]
    .into_iter()
    .filter(|(ok, _)| !ok)
    .map(|(_, what)| what)
    .collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var("HOPPER_TEST_BROWSER").is_err(),
        "HOPPER_TEST_BROWSER is set but these are missing: {missing:?}"
    );
    println!("SKIP dashboard browser test: missing {missing:?}");
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_finds_follows_and_cancels_calls_in_a_browser() {
    if !browser_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(dir.path(), APP);
    let server = Server::start(
        &dir.path().join("open"),
        &["--deploy", m.to_str().unwrap(), "--notify-gather", "200ms"],
    );
    let client = server.client();
    // Some history for the charts, a failed call to find, and a running call to watch.
    for i in 0..5 {
        let ok = client.spawn("d.ok", json!({ "n": i }), None).await.unwrap();
        wait_done(&client, &ok.id, Duration::from_secs(30)).await;
    }
    let failed = client
        .spawn("d.fail", json!({ "table": "orders" }), None)
        .await
        .unwrap();
    let failed = wait_done(&client, &failed.id, Duration::from_secs(30)).await;
    let error = failed.error.clone().expect("the failed call has an error");
    // A second version of d.fail, for its versions table.
    client
        .deploy(&hopper_core::api::DeployRequest {
            manifest: APP.replace("[functions.fail]", "[functions.fail]\ntimeout = \"45s\""),
            file: m.display().to_string(),
            base_dir: dir.path().display().to_string(),
            snapshot: None,
            snapshot_root: None,
        })
        .await
        .unwrap();
    let map = client
        .map_start(
            "d.ok",
            &hopper_core::api::MapRequest {
                inputs: (0..5).map(|i| json!({ "item": i })).collect(),
                done: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    wait_done(&client, &map.id, Duration::from_secs(30)).await;
    // A map of more attempts than a page shows (50): its attempts come a page at a time.
    let big = client
        .map_start(
            "d.ok",
            &hopper_core::api::MapRequest {
                inputs: (0..120).map(|i| json!({ "item": i })).collect(),
                done: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    wait_done(&client, &big.id, Duration::from_secs(60)).await;
    // A map whose inputs fail: listed on the failed inputs page.
    let failed_map = client
        .map_start(
            "d.fail",
            &hopper_core::api::MapRequest {
                inputs: vec![json!({ "table": "a" }), json!({ "table": "b" })],
                done: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    wait_done(&client, &failed_map.id, Duration::from_secs(60)).await;
    let slow = client.spawn("d.slow", json!(null), None).await.unwrap();
    eventually(
        "the slow call to start",
        Duration::from_secs(30),
        || async {
            let c = client.get(&slow.id, Duration::ZERO).await.unwrap();
            (c.state == hopper_core::InputState::Running).then_some(())
        },
    )
    .await;
    // A second slow call waits on max_running.
    let held = client
        .spawn_request(
            "d.slow",
            &hopper_core::api::SpawnRequest {
                input: json!(2),
                key: Some("acme".into()),
                priority: Some(7),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    eventually(
        "the held call to say why",
        Duration::from_secs(30),
        || async {
            let c = client.get(&held.id, Duration::ZERO).await.unwrap();
            c.waiting.is_some().then_some(())
        },
    )
    .await;

    // A call whose input is bytes stored as a blob: shown as its size and a download link
    // (delayed, so that it stays out of the other checks' counts).
    let reference = client.blob_put(vec![7u8; 2_100_000]).await.unwrap();
    let blob_call = client
        .spawn_request(
            "d.ok",
            &hopper_core::api::SpawnRequest {
                input: reference,
                delay: Some("1h".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();

    let token = "dashboard-secret-7";
    let locked = Server::start(&dir.path().join("locked"), &["--token", token]);

    let out_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-output/dashboard");
    std::fs::create_dir_all(&out_dir).unwrap();
    let run = tokio::process::Command::new("node")
        .arg("dashboard.mjs")
        .current_dir(browser_dir())
        .env("HOPPER_URL", &server.url)
        .env("HOPPER_LOCKED_URL", &locked.url)
        .env("HOPPER_TOKEN", token)
        .env("FAILED_ID", failed.id.as_str())
        .env("FAILED_CODE", &error.code)
        .env("SLOW_ID", slow.id.as_str())
        .env("MAP_ID", map.id.as_str())
        .env("BIG_MAP_ID", big.id.as_str())
        .env("FAILED_MAP_ID", failed_map.id.as_str())
        .env("HELD_ID", held.id.as_str())
        .env("BLOB_ID", blob_call.id.as_str())
        .env("OUT_DIR", &out_dir)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .expect("the browser script finished within 3 minutes")
        .unwrap();
    let said = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{said}");
    assert!(out.status.success(), "the browser checks failed:\n{said}");

    // What the browser did, checked from the API side too.
    let slow = client.get(&slow.id, Duration::ZERO).await.unwrap();
    assert_eq!(slow.state, hopper_core::InputState::Cancelled);
    let reruns = client
        .calls(&hopper_sdk::CallFilter {
            function: Some("d.fail".into()),
            origin: Some("rerun".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        reruns.calls.len(),
        2,
        "the call page's re-run and the failed page's each made one d.fail call"
    );
    let map_reruns = client
        .get(&failed_map.id, Duration::ZERO)
        .await
        .unwrap()
        .reruns;
    assert_eq!(map_reruns.len(), 1, "{map_reruns:?}");
    assert_eq!(map_reruns[0].index, 1);
    for page in [
        "overview",
        "overview-dark",
        "overview-notifications",
        "functions",
        "function",
        "calls",
        "call-failed",
        "call-map",
        "failed-inputs",
        "call-running",
        "call-cancelled",
        "workers",
        "schedules",
        "signin",
    ] {
        assert!(
            out_dir.join(format!("{page}.png")).exists(),
            "no screenshot of {page}"
        );
    }
}
