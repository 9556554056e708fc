//! Faults found under fire, each through the real binary: processes that outlive their attempt,
//! `serve` processes that write bad bytes, crash at start or answer with something that is
//! not JSON, and results and log lines over the server's limits.
//! Servers deploy with `--dev`: the commands here write marker files beside their manifest,
//! where the tests read them (a code snapshot would run them in a copy).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use hopper_core::InputState;
use serde_json::json;

/// A `serve` process in Python: answers each request with what `answer(input)` returns, after
/// running `before` once at start.
fn serve_script(dir: &Path, name: &str, before: &str, answer: &str) {
    let text = format!(
        r#"import json, sys
{before}
for line in sys.stdin:
    req = json.loads(line)
    if "cancel" in req:
        continue
    for item in req.get("batch", [req]):
        x = item["input"]
{answer}
    sys.stdout.flush()
"#
    );
    std::fs::write(dir.join(name), text).unwrap();
}

async fn logs_of(server: &Server, id: &hopper_core::CallId) -> Vec<String> {
    let out = cli(&server.url, &["logs", id.as_str(), "--json"]);
    stdout(&out)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["line"].as_str().unwrap_or_default().to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_child_that_keeps_stdout_open_does_not_turn_a_result_into_null() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(
        dir.path(),
        r#"
app = "f"
[functions.leaky]
command = ["sh", "-c", "setsid sh -c 'echo $$ > child.pid; exec sleep 30' & sleep 0.3; echo '{\"ok\":1}'"]
"#,
    );
    let server = Server::start(
        &dir.path().join("data"),
        &["--dev", "--deploy", m.to_str().unwrap()],
    );
    let client = server.client();
    let call = client.spawn("f.leaky", json!(null), None).await.unwrap();
    let call = wait_done(&client, &call.id, Duration::from_secs(30)).await;
    if let Some(pid) = read_pid(&dir.path().join("child.pid")) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
    assert_eq!(call.state, InputState::Succeeded, "{call:?}");
    assert_eq!(call.output, Some(json!({"ok": 1})), "{call:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stopping_the_server_ends_running_commands_and_everything_they_started() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(
        dir.path(),
        r#"
app = "f"
[functions.long]
command = ["sh", "-c", "echo $$ > cmd.pid; sleep 45 & echo $! > child.pid; wait"]
"#,
    );
    let mut server = Server::start(
        &dir.path().join("data"),
        &["--dev", "--deploy", m.to_str().unwrap(), "--lease", "5s"],
    );
    let client = server.client();
    client.spawn("f.long", json!(null), None).await.unwrap();
    let (cmd, child) = eventually("the command started", Duration::from_secs(20), || async {
        Some((
            read_pid(&dir.path().join("cmd.pid"))?,
            read_pid(&dir.path().join("child.pid"))?,
        ))
    })
    .await;
    assert!(alive(cmd) && alive(child));
    server.stop();
    eventually(
        "the command and its child are gone once the server stopped",
        Duration::from_secs(3),
        || async { (!alive(cmd) && !alive(child)).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancelled_call_stops_its_process_at_once_not_at_the_next_heartbeat() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(
        dir.path(),
        r#"
app = "f"
[functions.long]
command = ["sh", "-c", "echo $$ > cmd.pid; exec sleep 60"]
"#,
    );
    // A 30 s lease: heartbeats every 10 s, so a stop within 3 s cannot come from a heartbeat.
    let server = Server::start(
        &dir.path().join("data"),
        &["--dev", "--deploy", m.to_str().unwrap()],
    );
    let client = server.client();
    let call = client.spawn("f.long", json!(null), None).await.unwrap();
    let pid = eventually("the command started", Duration::from_secs(20), || async {
        read_pid(&dir.path().join("cmd.pid"))
    })
    .await;
    // Let the worker's heartbeat settle into its wait, then cancel.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let cancelled = client.cancel(&call.id).await.unwrap();
    assert_eq!(cancelled.state, InputState::Cancelled);
    let at = Instant::now();
    eventually("the process is stopped", Duration::from_secs(3), || async {
        (!alive(pid)).then_some(())
    })
    .await;
    println!("stopped {:?} after the cancel", at.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_serve_process_that_writes_bad_bytes_goes_on_answering() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bytes.py"),
        r#"import json, sys
out = sys.stdout.buffer
for line in sys.stdin:
    req = json.loads(line)
    if "cancel" in req:
        continue
    out.write(b"\xff\xfe not utf-8\n")
    sys.stderr.buffer.write(b"\xff err\n")
    sys.stderr.flush()
    out.write((json.dumps({"id": req["id"], "output": req["input"] * 2}) + "\n").encode())
    out.flush()
"#,
    )
    .unwrap();
    let m = manifest(
        dir.path(),
        r#"
app = "f"
[functions.bytes]
serve = ["python3", "bytes.py"]
"#,
    );
    let server = Server::start(
        &dir.path().join("data"),
        &["--dev", "--deploy", m.to_str().unwrap(), "--lease", "2s"],
    );
    let client = server.client();
    for n in 1..=3 {
        let call = client.spawn("f.bytes", json!(n), None).await.unwrap();
        let call = wait_done(&client, &call.id, Duration::from_secs(30)).await;
        assert_eq!(call.output, Some(json!(n * 2)), "{call:?}");
        assert_eq!(call.attempts, 1, "{call:?}");
        if n > 1 {
            let logs = logs_of(&server, &call.id).await;
            assert!(
                logs.iter().any(|l| l.contains("\u{FFFD} not utf-8")),
                "bad bytes are logged as U+FFFD: {logs:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_serve_process_that_crashes_at_start_fails_with_its_error_and_backs_off() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("broken.py"),
        "import time\nwith open('starts.log', 'a') as f: f.write(f'{time.time()}\\n')\nimport not_a_module_anywhere\n",
    )
    .unwrap();
    let m = manifest(
        dir.path(),
        r#"
app = "f"
[functions.broken]
serve = ["python3", "broken.py"]
retries = { max_retries = 2, initial_delay = "100ms" }
"#,
    );
    let server = Server::start(
        &dir.path().join("data"),
        &["--dev", "--deploy", m.to_str().unwrap(), "--lease", "2s"],
    );
    let client = server.client();
    let call = client.spawn("f.broken", json!(1), None).await.unwrap();
    let call = wait_done(&client, &call.id, Duration::from_secs(60)).await;
    assert_eq!(call.state, InputState::Failed, "{call:?}");
    let error = call.error.clone().unwrap();
    assert_eq!(error.code, "startup_failed", "{error:?}");
    assert!(
        error.message.contains("ModuleNotFoundError"),
        "the error carries the process's last stderr lines: {error:?}"
    );
    assert_eq!(
        call.attempts, 3,
        "the function's retries, no more: {call:?}"
    );
    // Restarts back off: a handful of starts, not dozens, over the run.
    let starts: Vec<f64> = std::fs::read_to_string(dir.path().join("starts.log"))
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert!(starts.len() <= 6, "{} starts", starts.len());
    let gaps: Vec<f64> = starts.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.last().is_some_and(|g| *g >= 0.9),
        "later restarts wait longer: {gaps:?}"
    );
    let stats = client.stats("15m", Some("f.broken")).await.unwrap();
    let f = &stats.functions[0];
    assert_eq!(f.failed, 1, "a start-up failure counts as failed: {f:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_answer_that_is_not_json_fails_its_input_alone_and_start_up_output_stays_out_of_inputs()
{
    let dir = tempfile::tempdir().unwrap();
    serve_script(
        dir.path(),
        "nan.py",
        "print('loading the model once', flush=True)\nprint('warming up', file=sys.stderr, flush=True)\nsys.stdout.write(json.dumps({'ready': True}) + '\\n'); sys.stdout.flush()",
        "        if x == 3:\n            sys.stdout.write(json.dumps({'id': item['id'], 'output': {'mean': float('nan')}}) + '\\n')\n        else:\n            sys.stdout.write(json.dumps({'id': item['id'], 'output': x}) + '\\n')",
    );
    let m = manifest(
        dir.path(),
        r#"
app = "f"
[functions.nan]
serve = ["python3", "nan.py"]
batch = { max_size = 4, wait = "200ms" }
"#,
    );
    let server = Server::start(
        &dir.path().join("data"),
        &["--dev", "--deploy", m.to_str().unwrap(), "--lease", "2s"],
    );
    let data = dir.path().join("inputs.jsonl");
    std::fs::write(&data, "1\n2\n3\n4\n5\n6\n7\n8\n").unwrap();
    let started = Instant::now();
    let out = cli(
        &server.url,
        &[
            "map",
            "f.nan",
            data.to_str().unwrap(),
            "--return-exceptions",
            "--json",
        ],
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the bad answer did not wait for the timeout"
    );
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 8, "{}", stderr(&out));
    let bad: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l.to_string().contains("bad_output"))
        .collect();
    assert_eq!(bad.len(), 1, "only input 3 fails: {lines:?}");
    let client = server.client();
    let calls = client
        .calls(&hopper_sdk::CallFilter::default())
        .await
        .unwrap();
    let logs = logs_of(&server, &calls.calls[0].id).await;
    assert!(
        !logs
            .iter()
            .any(|l| l.contains("loading the model once") || l.contains("warming up")),
        "start-up output is not in inputs' logs: {logs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn results_and_log_lines_over_the_limits_fail_or_are_cut_never_lost() {
    let dir = tempfile::tempdir().unwrap();
    serve_script(
        dir.path(),
        "big.py",
        "",
        "        sys.stdout.write(json.dumps({'id': item['id'], 'output': 'x' * (1536 * 1024)}) + '\\n')",
    );
    let m = manifest(
        dir.path(),
        r#"
app = "f"
[functions.huge]
command = ["python3", "-c", "print('\"' + 'x' * (5 * 1024 * 1024) + '\"')"]
[functions.big]
serve = ["python3", "big.py"]
batch = { max_size = 4, wait = "500ms" }
[functions.noisy]
command = ["python3", "-c", "print('first'); [print('y' * 102400) for _ in range(60)]; print('last')"]
"#,
    );
    let server = Server::start(
        &dir.path().join("data"),
        &["--dev", "--deploy", m.to_str().unwrap(), "--lease", "2s"],
    );
    let client = server.client();
    // Over the 4 MiB limit: fails on its first attempt, not by lost leases.
    let huge = client.spawn("f.huge", json!(null), None).await.unwrap();
    let huge = wait_done(&client, &huge.id, Duration::from_secs(60)).await;
    assert_eq!(huge.state, InputState::Failed);
    assert_eq!(huge.error.unwrap().code, "output_too_large");
    assert_eq!(huge.attempts, 1);
    // Four results of 1.5 MiB in one batch: each one recorded.
    let data = dir.path().join("four.jsonl");
    std::fs::write(&data, "1\n2\n3\n4\n").unwrap();
    let out = cli(
        &server.url,
        &["map", "f.big", data.to_str().unwrap(), "--json"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out).lines().count(), 4);
    // Sixty 100 KiB lines between two short ones: all there, the long ones cut.
    let noisy = client.spawn("f.noisy", json!(null), None).await.unwrap();
    wait_done(&client, &noisy.id, Duration::from_secs(30)).await;
    let logs = logs_of(&server, &noisy.id).await;
    assert_eq!(
        logs.first().map(String::as_str),
        Some("first"),
        "{}",
        logs.len()
    );
    assert_eq!(logs.last().map(String::as_str), Some("last"));
    let cut: Vec<&String> = logs.iter().filter(|l| l.ends_with("[line cut]")).collect();
    assert_eq!(cut.len(), 60);
    assert!(cut.iter().all(|l| l.len() < 20 * 1024));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deploy_that_removes_a_function_lets_its_queued_calls_finish_on_their_version() {
    let dir = tempfile::tempdir().unwrap();
    let v1 = r#"
app = "r"
[functions.keep]
command = ["sh", "-c", "echo 1"]
[functions.resize]
command = ["sh", "-c", "sleep 1; echo '\"resized\"'"]
"#;
    let m = manifest(dir.path(), v1);
    let server = Server::start(
        &dir.path().join("data"),
        &["--dev", "--deploy", m.to_str().unwrap()],
    );
    let client = server.client();
    let mut ids = Vec::new();
    for n in 0..4 {
        ids.push(client.spawn("r.resize", json!(n), None).await.unwrap().id);
    }
    let v2 = r#"
app = "r"
[functions.keep]
command = ["sh", "-c", "echo 2"]
"#;
    let m2 = dir.path().join("v2.toml");
    std::fs::write(&m2, v2).unwrap();
    let out = cli(&server.url, &["deploy", m2.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("of r.resize (removed in version 2) will finish on the version"),
        "{}",
        stdout(&out)
    );
    let metrics = reqwest::get(format!("{}/metrics", server.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.lines().any(
            |l| l.starts_with("hopper_queue_pending{function=\"r.resize\"}") && !l.ends_with(" 0")
        ),
        "the removed function's queue is still measured"
    );
    for id in &ids {
        let call = wait_done(&client, id, Duration::from_secs(40)).await;
        assert_eq!(call.state, InputState::Succeeded, "{call:?}");
        assert_eq!(call.output, Some(json!("resized")));
        assert_eq!(call.version, 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_stops_promptly_while_clients_long_poll_a_running_map() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(
        dir.path(),
        r#"
app = "f"
[functions.slow]
command = ["sh", "-c", "sleep 1; echo 1"]
concurrency = 2
"#,
    );
    let mut server = Server::start(
        &dir.path().join("data"),
        &["--dev", "--deploy", m.to_str().unwrap()],
    );
    let client = server.client();
    let map = client
        .map_start(
            "f.slow",
            &hopper_core::api::MapRequest {
                inputs: vec![json!(null); 40],
                done: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    // Clients long-polling the map: its results (30 s) and its end (55 s).
    let results = format!(
        "{}/v1/calls/{}/results?wait=30&limit=1000",
        server.url, map.id
    );
    let poll_results = tokio::spawn(async move {
        let http = reqwest::Client::new();
        let mut after = -1;
        loop {
            let page = http.get(format!("{results}&after={after}")).send().await?;
            if page.status() != 200 {
                return Ok::<_, reqwest::Error>(page.status().as_u16());
            }
            let page: serde_json::Value = page.json().await?;
            after = page["next"].as_i64().unwrap_or(after);
        }
    });
    let waiting = {
        let client = client.clone();
        let id = map.id.clone();
        tokio::spawn(async move { client.get(&id, Duration::from_secs(55)).await })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let at = Instant::now();
    tokio::task::block_in_place(|| server.stop());
    let took = at.elapsed();
    // Before, a long-poll kept a stopping server for as long as it waited (up to 55 s).
    assert!(
        took < Duration::from_secs(15),
        "the server took {took:?} to stop"
    );
    // Each long-poll ended: told the server is stopping (503), or with the connection closed.
    let status = tokio::time::timeout(Duration::from_secs(5), poll_results)
        .await
        .expect("the results long-poll ended")
        .unwrap();
    assert!(matches!(status, Ok(503) | Err(_)), "{status:?}");
    let waited = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the call long-poll ended")
        .unwrap();
    assert!(
        waited.as_ref().map_or(true, |c| !c.state.is_terminal()),
        "{waited:?}"
    );
}
