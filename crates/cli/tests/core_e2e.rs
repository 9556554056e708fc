//! End-to-end tests of the core queue: the real binary, real commands, real processes.
//! Servers deploy with `--dev`: the commands here write marker files beside their manifest,
//! where the tests read them (a code snapshot would run them in a copy).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use std::time::Duration;

use common::*;
use hopper_core::InputState;
use serde_json::json;

const SECS: fn(u64) -> Duration = Duration::from_secs;

#[tokio::test]
async fn spawn_then_get_returns_the_commands_output() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(
        dir.path(),
        r#"
app = "demo"
[functions.echo]
command = ["sh", "-c", "echo \"got $(cat) with $GREETING\" >&2; printf '{\"greeting\": \"%s\"}' \"$GREETING\""]
env = { GREETING = "hi" }
"#,
    );
    let server = Server::start(
        &dir.path().join("data"),
        &["--dev", "--deploy", m.to_str().unwrap()],
    );
    let out = cli(
        &server.url,
        &["spawn", "demo.echo", "--input", r#"{"name": "world"}"#],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let id = stdout(&out).trim().to_string();
    assert!(id.starts_with("hc-"), "{id}");
    let got = cli(&server.url, &["get", &id, "--timeout", "30s"]);
    assert_eq!(got.status.code(), Some(0), "{}", stderr(&got));
    let output: serde_json::Value = serde_json::from_str(&stdout(&got)).unwrap();
    assert_eq!(output, json!({"greeting": "hi"}));
    // Both streams are kept as the attempt's logs.
    let logs = cli(&server.url, &["logs", &id]);
    let text = stdout(&logs);
    assert!(
        text.contains("stderr] got {\"name\":\"world\"} with hi"),
        "{text}"
    );
    assert!(text.contains("stdout] {\"greeting\": \"hi\"}"), "{text}");
    // A bare name works where it is unique; --json gives the whole call.
    let out = cli(&server.url, &["spawn", "echo", "--input", "1", "--json"]);
    let call: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(call["function"], "demo.echo");
}

#[tokio::test]
async fn output_file_wins_over_stdout_and_bad_output_fails() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(
        dir.path(),
        r#"
app = "demo"
[functions.file]
command = ["sh", "-c", "echo 'not json'; echo '[1, 2]' > \"$HOPPER_OUTPUT\""]
[functions.garbage]
command = ["sh", "-c", "echo 'not json'"]
"#,
    );
    let server = Server::start(
        &dir.path().join("data"),
        &["--dev", "--deploy", m.to_str().unwrap()],
    );
    let client = server.client();
    let a = client.spawn("file", json!(null), None).await.unwrap();
    let b = client.spawn("garbage", json!(null), None).await.unwrap();
    let a = wait_done(&client, &a.id, SECS(30)).await;
    assert_eq!(a.output, Some(json!([1, 2])));
    let b = wait_done(&client, &b.id, SECS(30)).await;
    assert_eq!(b.state, InputState::Failed);
    let err = b.error.unwrap();
    assert_eq!(err.code, "bad_output");
    assert!(err.message.contains("not JSON"), "{}", err.message);
}

#[tokio::test]
async fn a_failing_command_is_retried_exactly_max_retries_times_with_backoff() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(
        dir.path(),
        r#"
app = "demo"
[functions.flaky]
command = ["sh", "-c", "echo \"boom on attempt $HOPPER_ATTEMPT\" >&2; exit 3"]
retries = { max_retries = 2, backoff_coefficient = 2.0, initial_delay = "300ms", max_delay = "10s" }
"#,
    );
    let server = Server::start(
        &dir.path().join("data"),
        &["--dev", "--deploy", m.to_str().unwrap()],
    );
    let client = server.client();
    let call = client.spawn("demo.flaky", json!(1), None).await.unwrap();
    let got = cli(&server.url, &["get", call.id.as_str(), "--timeout", "30s"]);
    assert_eq!(got.status.code(), Some(1), "a failed call exits 1");
    let message = stderr(&got);
    assert!(message.contains("failed after 3 attempts"), "{message}");
    assert!(
        message.contains("exited with status 3: boom on attempt 3"),
        "{message}"
    );
    assert!(
        message.contains(&format!("see {}/calls/{}", server.url, call.id)),
        "the failure names the call's dashboard page: {message}"
    );
    let attempts = client.attempts(&call.id).await.unwrap();
    assert_eq!(attempts.len(), 3, "1 attempt + max_retries 2: {attempts:?}");
    assert!(attempts.iter().all(|a| a.outcome == "failed"));
    // Attempt n+1 starts no earlier than initial_delay * coefficient^(n-1) after attempt n ends.
    let at = |s: &str| {
        chrono::DateTime::parse_from_rfc3339(s)
            .unwrap()
            .timestamp_millis()
    };
    let gap1 = at(&attempts[1].started_at) - at(attempts[0].finished_at.as_ref().unwrap());
    let gap2 = at(&attempts[2].started_at) - at(attempts[1].finished_at.as_ref().unwrap());
    assert!(gap1 >= 300, "first retry after {gap1} ms");
    assert!(gap2 >= 600, "second retry after {gap2} ms");
}

#[tokio::test]
async fn a_command_over_its_timeout_is_killed_with_its_whole_group() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(
        dir.path(),
        r#"
app = "demo"
[functions.slow]
command = ["sh", "-c", "sleep 300 & echo $! > child.pid; echo $$ > parent.pid; wait"]
timeout = "1s"
"#,
    );
    let server = Server::start(
        &dir.path().join("data"),
        &[
            "--dev",
            "--deploy",
            m.to_str().unwrap(),
            "--kill-grace",
            "1s",
        ],
    );
    let client = server.client();
    let call = client.spawn("slow", json!(null), None).await.unwrap();
    let call = wait_done(&client, &call.id, SECS(30)).await;
    assert_eq!(call.state, InputState::Failed);
    let err = call.error.unwrap();
    assert_eq!(err.code, "timeout");
    assert!(
        err.message.contains("timed out after 1s"),
        "{}",
        err.message
    );
    let parent = read_pid(&dir.path().join("parent.pid")).expect("the command ran");
    let child = read_pid(&dir.path().join("child.pid")).expect("the command started a child");
    eventually("the command and its child are gone", SECS(5), || async {
        (!alive(parent) && !alive(child)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn cancel_of_a_pending_call_means_it_never_runs() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(
        dir.path(),
        "app = \"demo\"\n[functions.touch]\ncommand = [\"touch\", \"ran\"]\n",
    );
    // No local workers: the call stays pending until cancelled.
    let server = Server::start(
        &dir.path().join("data"),
        &["--dev", "--deploy", m.to_str().unwrap(), "--no-workers"],
    );
    let client = server.client();
    let call = client.spawn("touch", json!(null), None).await.unwrap();
    assert_eq!(call.state, InputState::Pending);
    let out = cli(&server.url, &["cancel", call.id.as_str()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), format!("{} cancelled", call.id));
    let got = cli(&server.url, &["get", call.id.as_str()]);
    assert_eq!(got.status.code(), Some(1));
    assert!(stderr(&got).contains("cancelled"), "{}", stderr(&got));
    // A worker that starts now finds nothing to run.
    let mut worker = std::process::Command::new(BIN)
        .args([
            "worker",
            "--server",
            &server.url,
            "--function",
            "demo.touch",
        ])
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    worker.kill().unwrap();
    worker.wait().unwrap();
    assert!(
        !dir.path().join("ran").exists(),
        "a cancelled input must not run"
    );
}

#[tokio::test]
async fn cancel_of_a_running_call_kills_its_process() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(
        dir.path(),
        r#"
app = "demo"
[functions.long]
command = ["sh", "-c", "echo $$ > running.pid; sleep 300"]
"#,
    );
    let server = Server::start(
        &dir.path().join("data"),
        &["--dev", "--deploy", m.to_str().unwrap(), "--lease", "1s"],
    );
    let client = server.client();
    let call = client.spawn("long", json!(null), None).await.unwrap();
    let pid_file = dir.path().join("running.pid");
    let pid = eventually("the command starts", SECS(20), || async {
        read_pid(&pid_file)
    })
    .await;
    let cancelled = client.cancel(&call.id).await.unwrap();
    assert_eq!(cancelled.state, InputState::Cancelled);
    eventually("the cancelled command is killed", SECS(10), || async {
        (!alive(pid)).then_some(())
    })
    .await;
    let attempts = client.attempts(&call.id).await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].outcome, "cancelled");
}

#[tokio::test]
async fn an_idempotency_key_returns_the_same_call() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(
        dir.path(),
        "app = \"demo\"\n[functions.echo]\ncommand = [\"cat\"]\n",
    );
    let server = Server::start(
        &dir.path().join("data"),
        &["--dev", "--deploy", m.to_str().unwrap()],
    );
    let a = cli(
        &server.url,
        &[
            "spawn",
            "demo.echo",
            "--input",
            "1",
            "--idempotency-key",
            "order-7",
        ],
    );
    let b = cli(
        &server.url,
        &[
            "spawn",
            "demo.echo",
            "--input",
            "1",
            "--idempotency-key",
            "order-7",
        ],
    );
    assert_eq!(stdout(&a), stdout(&b));
    // The header works the same way.
    let http = reqwest::Client::new();
    let via_header: serde_json::Value = http
        .post(format!("{}/v1/functions/demo.echo/calls", server.url))
        .header("Idempotency-Key", "order-7")
        .json(&json!({"input": 1}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(via_header["id"].as_str().unwrap(), stdout(&a).trim());
    // A misspelt key field is refused, not ignored (a retry would spawn again), in a spawn and
    // in a bulk spawn's entries.
    for (path, body) in [
        ("calls", json!({"input": 1, "idempotency-key": "order-7"})),
        (
            "calls/batch",
            json!({"calls": [{"input": 1, "idempotency-key": "order-7"}]}),
        ),
    ] {
        let refused = http
            .post(format!("{}/v1/functions/demo.echo/{path}", server.url))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 400, "{path}");
        let text = refused.text().await.unwrap();
        assert!(
            text.contains("unknown field `idempotency-key`"),
            "{path}: {text}"
        );
    }
    let page = server.client().calls(&Default::default()).await.unwrap();
    assert_eq!(page.calls.len(), 1);
}

#[tokio::test]
async fn calls_are_listed_with_filters_and_a_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(
        dir.path(),
        "app = \"demo\"\n[functions.ok]\ncommand = [\"cat\"]\n[functions.bad]\ncommand = [\"false\"]\n",
    );
    let server = Server::start(
        &dir.path().join("data"),
        &["--dev", "--deploy", m.to_str().unwrap()],
    );
    let client = server.client();
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(client.spawn("ok", json!(i), None).await.unwrap().id);
    }
    let bad = client.spawn("bad", json!(0), None).await.unwrap();
    wait_done(&client, &bad.id, SECS(30)).await;
    for id in &ids {
        wait_done(&client, id, SECS(30)).await;
    }
    let out = cli(
        &server.url,
        &[
            "calls",
            "--function",
            "demo.bad",
            "--state",
            "failed",
            "--json",
        ],
    );
    let page: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let listed: Vec<&str> = page["calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [bad.id.as_str()]);
    let first = client
        .calls(&hopper_sdk::CallFilter {
            function: Some("ok".into()),
            limit: Some(3),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(first.calls.len(), 3);
    assert_eq!(first.calls[0].id, ids[4], "newest first");
    let second = client
        .calls(&hopper_sdk::CallFilter {
            function: Some("ok".into()),
            limit: Some(3),
            cursor: first.next_cursor.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        second
            .calls
            .iter()
            .map(|c| c.id.clone())
            .collect::<Vec<_>>(),
        [ids[1].clone(), ids[0].clone()]
    );
    assert!(second.next_cursor.is_none());
    let bad_state = cli(&server.url, &["calls", "--state", "done"]);
    assert_eq!(bad_state.status.code(), Some(2));
    assert!(
        stderr(&bad_state).contains("unknown state \"done\""),
        "{}",
        stderr(&bad_state)
    );
}

#[tokio::test]
async fn run_is_ephemeral_and_prints_the_output() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(
        dir.path(),
        "app = \"demo\"\n[functions.double]\ncommand = [\"sh\", \"-c\", \"read n; echo $((n * 2))\"]\n[functions.bad]\ncommand = [\"sh\", \"-c\", \"echo nope >&2; exit 4\"]\n",
    );
    let out = std::process::Command::new(BIN)
        .args(["run", m.to_str().unwrap(), "double", "--input", "21"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "42");
    let out = std::process::Command::new(BIN)
        .args(["run", m.to_str().unwrap(), "bad", "--input", "null"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("exited with status 4: nope"),
        "{}",
        stderr(&out)
    );
    let out = std::process::Command::new(BIN)
        .args(["run", m.to_str().unwrap(), "missing"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("has no function \"missing\""),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn ended_calls_are_pruned_after_the_retention_period() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(
        dir.path(),
        "app = \"demo\"\n[functions.echo]\ncommand = [\"cat\"]\n",
    );
    let server = Server::start(
        &dir.path().join("data"),
        &[
            "--dev",
            "--deploy",
            m.to_str().unwrap(),
            "--retention",
            "1s",
        ],
    );
    let client = server.client();
    let call = client.spawn("echo", json!("x"), None).await.unwrap();
    wait_done(&client, &call.id, SECS(30)).await;
    eventually("the call is pruned", SECS(10), || async {
        match client.get(&call.id, Duration::ZERO).await {
            Err(e) if e.code() == Some("unknown_call") => Some(()),
            _ => None,
        }
    })
    .await;
}

/// `hopper spawn --input-file F --each-line` spawns one call per line through bulk spawns
/// (2,500 lines: three requests), printing the ids in the file's order; with
/// `--idempotency-key` running it again spawns nothing new; a bad line spawns nothing at all.
#[tokio::test]
async fn spawn_each_line_makes_one_call_per_line_once() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(
        dir.path(),
        r#"
app = "demo"
[functions.double]
command = ["sh", "-c", "echo $(( $(cat) * 2 ))"]
"#,
    );
    let server = Server::start(
        &dir.path().join("data"),
        &["--no-workers", "--deploy", m.to_str().unwrap()],
    );
    let lines = dir.path().join("numbers.jsonl");
    let mut text: String = (0..2_500).map(|n| format!("{n}\n")).collect();
    text.insert(0, '\n'); // blank lines are skipped, line numbers still count them
    std::fs::write(&lines, &text).unwrap();
    let args = [
        "spawn",
        "demo.double",
        "--input-file",
        lines.to_str().unwrap(),
        "--each-line",
        "--idempotency-key",
        "nightly-1",
    ];
    let out = cli(&server.url, &args);
    assert!(out.status.success(), "{}", stderr(&out));
    let ids: Vec<String> = stdout(&out).lines().map(str::to_string).collect();
    assert_eq!(ids.len(), 2_500);
    let client = server.client();
    for n in [0usize, 999, 1_000, 2_499] {
        let input = client.input(&ids[n].parse().unwrap(), 0).await.unwrap();
        assert_eq!(input.input, json!(n), "line {} holds {n}", n + 2);
    }
    let again = cli(&server.url, &args);
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(
        stdout(&again).lines().collect::<Vec<_>>(),
        ids,
        "the same keys answer the same calls"
    );
    std::fs::write(&lines, "1\n2\n{not json\n4\n").unwrap();
    let each = |key: &str| {
        cli(
            &server.url,
            &[
                "spawn",
                "demo.double",
                "--input-file",
                lines.to_str().unwrap(),
                "--each-line",
                "--idempotency-key",
                key,
                "--json",
            ],
        )
    };
    let bad = each("fixed-later");
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
    assert!(
        stderr(&bad).contains("numbers.jsonl:3: not valid JSON"),
        "{}",
        stderr(&bad)
    );
    // Nothing of the bad file was spawned: with it fixed, the same keys make new calls.
    std::fs::write(&lines, "1\n2\n3\n4\n").unwrap();
    let fixed = each("fixed-later");
    assert!(fixed.status.success(), "{}", stderr(&fixed));
    let answers: Vec<serde_json::Value> = stdout(&fixed)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(answers.len(), 4);
    assert!(
        answers.iter().all(|a| a["created"] == json!(true)),
        "{answers:?}"
    );
    // One key given twice in a batch with different inputs: nothing is spawned, and the error
    // names the entry, not a call that was undone with the batch.
    let twice = |input: i64| hopper_core::api::SpawnRequest {
        input: json!(input),
        idempotency_key: Some("twice".into()),
        ..Default::default()
    };
    let err = client
        .spawn_many("demo.double", vec![twice(3), twice(4)])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, hopper_sdk::Error::Api { status: 409, message, .. }
            if message.contains("calls[0] and a later entry")),
        "{err}"
    );
    let again = client
        .spawn_many("demo.double", vec![twice(4)])
        .await
        .unwrap();
    assert!(again[0].created, "the conflicting batch made nothing");
}

/// What the server would refuse is refused before anything is sent, never rounded: an integer
/// beyond 64 bits (which JSON parsing would make a float) or a value nested too deep, in
/// `--input`, in `--each-line` files and in `map` files; and bulk spawns fit a server's lower
/// `--max-payload` by sending smaller requests.
#[tokio::test]
async fn the_cli_refuses_what_it_would_change_and_fits_bulk_spawns_to_the_payload_limit() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(
        dir.path(),
        r#"
app = "demo"
[functions.echo]
command = ["cat"]
"#,
    );
    let server = Server::start(
        &dir.path().join("data"),
        &[
            "--no-workers",
            "--max-payload",
            "1KiB",
            "--deploy",
            m.to_str().unwrap(),
        ],
    );
    let big = "18446744073709551616";
    let out = cli(&server.url, &["spawn", "demo.echo", "--input", big]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("does not fit in 64 bits"),
        "{}",
        stderr(&out)
    );
    let file = dir.path().join("lines.jsonl");
    let deep = format!("{}1{}", "[".repeat(70), "]".repeat(70));
    for (text, why) in [
        (
            format!("1\n{big}\n"),
            "lines.jsonl:2: the input is refused: the integer",
        ),
        (
            format!("1\n2\n{deep}\n"),
            "lines.jsonl:3: the input is refused: it nests deeper",
        ),
    ] {
        std::fs::write(&file, text).unwrap();
        for args in [
            vec![
                "spawn",
                "demo.echo",
                "--input-file",
                file.to_str().unwrap(),
                "--each-line",
            ],
            vec!["map", "demo.echo", file.to_str().unwrap()],
        ] {
            let out = cli(&server.url, &args);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
            assert!(stderr(&out).contains(why), "{args:?}: {}", stderr(&out));
        }
    }
    let listed = server
        .client()
        .calls(&hopper_sdk::CallFilter::default())
        .await
        .unwrap();
    assert!(listed.calls.is_empty(), "nothing was spawned: {listed:?}");
    // 30 inputs of 100 bytes: more than one request may carry under a 1 KiB limit.
    let line = format!("\"{}\"", "x".repeat(98));
    std::fs::write(&file, format!("{line}\n").repeat(30)).unwrap();
    let out = cli(
        &server.url,
        &[
            "spawn",
            "demo.echo",
            "--input-file",
            file.to_str().unwrap(),
            "--each-line",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).lines().count(), 30);
}
