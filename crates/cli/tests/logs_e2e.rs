//! Logs: both streams, the cap per attempt and its marker, following a running call to its
//! end from the CLI and as server-sent events.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

const APP: &str = r#"
app = "l"
[functions.chatty]
command = ["sh", "-c", "for i in $(seq 1 20); do echo \"out $i\"; echo \"err $i\" >&2; done"]
[functions.slow]
command = ["sh", "-c", "for i in 1 2 3 4 5; do echo \"tick $i\" >&2; sleep 0.3; done"]
"#;

#[tokio::test]
async fn an_attempts_log_is_capped_with_a_marker() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(dir.path(), APP);
    let server = Server::start(
        &dir.path().join("data"),
        &["--deploy", m.to_str().unwrap(), "--max-log-lines", "10"],
    );
    let client = server.client();
    let call = client.spawn("l.chatty", json!(null), None).await.unwrap();
    wait_done(&client, &call.id, Duration::from_secs(30)).await;
    let out = cli(&server.url, &["logs", call.id.as_str(), "--json"]);
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 11, "10 lines, then the marker: {lines:?}");
    assert_eq!(lines[10]["stream"], "system");
    assert!(lines[10]["line"]
        .as_str()
        .unwrap()
        .contains("cap of 10 lines"));
}

#[tokio::test]
async fn following_a_running_call_prints_lines_as_they_come_and_ends_with_the_call() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(dir.path(), APP);
    let server = Server::start(&dir.path().join("data"), &["--deploy", m.to_str().unwrap()]);
    let client = server.client();
    let call = client.spawn("l.slow", json!(null), None).await.unwrap();
    // The CLI follows until the call ends, then exits 0 with every line.
    let follow = tokio::process::Command::new(BIN)
        .args(["logs", call.id.as_str(), "-f"])
        .env("HOPPER_SERVER", &server.url)
        .output();
    // Server-sent events: the stream ends by itself after the `end` event.
    let sse = async {
        let response = reqwest::get(format!("{}/v1/calls/{}/logs/stream", server.url, call.id))
            .await
            .unwrap();
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        response.text().await.unwrap()
    };
    let (out, events) =
        tokio::time::timeout(Duration::from_secs(30), async { tokio::join!(follow, sse) })
            .await
            .unwrap();
    let out = out.unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    for i in 1..=5 {
        assert!(text.contains(&format!("tick {i}")), "{text}");
    }
    assert_eq!(events.matches("event: line").count(), 5, "{events}");
    assert!(events.contains("event: end"), "{events}");
    assert!(events.contains("\"state\":\"succeeded\""), "{events}");
}

/// The most memory a process has held, in KiB (`VmHWM`).
fn peak_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_function_that_prints_without_end_keeps_its_worker_small() {
    let dir = tempfile::tempdir().unwrap();
    // Eight inputs of 200,000 lines each (21 MB apiece), four at a time, on one worker.
    let m = manifest(
        dir.path(),
        r#"
app = "flood"
[functions.chatty]
command = ["python3", "-c", "import sys\nfor i in range(200000): print('x' * 100, i, file=sys.stderr)\nprint(1)"]
concurrency = 4
"#,
    );
    let server = Server::start(
        &dir.path().join("data"),
        &["--no-workers", "--deploy", m.to_str().unwrap()],
    );
    let worker = worker(&server.url, "flood.chatty");
    let client = server.client();
    let mut ids = Vec::new();
    for i in 0..8 {
        ids.push(
            client
                .spawn("flood.chatty", json!(i), None)
                .await
                .unwrap()
                .id,
        );
    }
    for id in &ids {
        let call = wait_done(&client, id, Duration::from_secs(120)).await;
        assert_eq!(call.state, hopper_core::InputState::Succeeded, "{call:?}");
    }
    let peak_mib = peak_kib(worker.0.id()) / 1024;
    drop(worker);
    // Unbounded, the worker held every line it had read and not yet sent: hundreds of MiB.
    assert!(peak_mib < 128, "the worker peaked at {peak_mib} MiB");
    // The server keeps 10,000 lines of each attempt; the worker said how many it dropped.
    let out = cli(&server.url, &["logs", ids[0].as_str(), "--json"]);
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let system: Vec<&str> = lines
        .iter()
        .filter(|l| l["stream"] == "system")
        .map(|l| l["line"].as_str().unwrap())
        .collect();
    assert_eq!(lines.len(), 10_001, "10,000 lines and one note: {system:?}");
    assert_eq!(
        system,
        ["[hopper] this attempt's log reached its cap of 10000 lines; 190001 later lines were dropped"]
    );
    assert_eq!(lines[10_000]["stream"], "system", "the note comes last");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn output_without_newlines_keeps_its_worker_small() {
    let dir = tempfile::tempdir().unwrap();
    // 100 MB on stderr without one newline, twice at once, then the output.
    let m = manifest(
        dir.path(),
        r#"
app = "nl"
[functions.blob]
command = ["python3", "-c", "import sys\nfor i in range(100): sys.stderr.write('z' * 1000000); sys.stderr.flush()\nprint(5)"]
concurrency = 2
"#,
    );
    let server = Server::start(
        &dir.path().join("data"),
        &["--no-workers", "--deploy", m.to_str().unwrap()],
    );
    let worker = worker(&server.url, "nl.blob");
    let client = server.client();
    let mut ids = Vec::new();
    for i in 0..2 {
        ids.push(client.spawn("nl.blob", json!(i), None).await.unwrap().id);
    }
    for id in &ids {
        let call = wait_done(&client, id, Duration::from_secs(120)).await;
        assert_eq!(call.output, Some(json!(5)), "{call:?}");
    }
    let peak_mib = peak_kib(worker.0.id()) / 1024;
    drop(worker);
    // Read whole, each line held all 100 MB, and more while it was copied.
    assert!(peak_mib < 96, "the worker peaked at {peak_mib} MiB");
    let out = cli(&server.url, &["logs", ids[0].as_str(), "--json"]);
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let stderr: Vec<&str> = lines
        .iter()
        .filter(|l| l["stream"] == "stderr")
        .map(|l| l["line"].as_str().unwrap())
        .collect();
    assert_eq!(stderr.len(), 1, "one line, cut");
    assert!(stderr[0].ends_with("…[line cut]"));
}
