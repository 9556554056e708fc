//! The first hour, through the real binary: `hopper map` streams, stops cleanly and explains
//! itself; output commands end quietly when their reader goes away; defaults wait and fan out;
//! mistakes get an answer that says what to do.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use hopper_core::InputState;
use serde_json::json;

const APP: &str = r#"
app = "q"
[functions.slow]
command = ["sh", "-c", "sleep 0.2; cat"]
concurrency = 4
max_workers = 1
[functions.greet]
command = ["sh", "-c", "read x; echo \"\\\"hello, $x\\\"\" | tr -d '\"' | sed 's/.*/\"&\"/'"]
[functions.sleepy]
command = ["sh", "-c", "sleep 30"]
"#;

fn inputs(dir: &std::path::Path, n: usize) -> std::path::PathBuf {
    let path = dir.join(format!("inputs-{n}.jsonl"));
    std::fs::write(&path, (0..n).map(|i| format!("{i}\n")).collect::<String>()).unwrap();
    path
}

fn map_command(server: &Server, file: &std::path::Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["map", "q.slow", file.to_str().unwrap()])
        .env("HOPPER_SERVER", &server.url)
        .env_remove("HOPPER_TOKEN");
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_map_streams_its_results_to_a_pipe_and_ends_with_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(dir.path(), APP);
    let server = Server::start(&dir.path().join("data"), &["--deploy", m.to_str().unwrap()]);
    let file = inputs(dir.path(), 40);
    let mut child = map_command(&server, &file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let started = Instant::now();
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    let first_at = started.elapsed();
    let value: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!(value, json!({"index": 0, "output": 0}));
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    let all_at = started.elapsed();
    assert_eq!(rest.lines().count(), 39);
    // 40 inputs, 4 at a time, 0.2 s each: the first line came long before the last.
    assert!(
        first_at + Duration::from_millis(800) < all_at,
        "first result after {first_at:?}, all after {all_at:?}: not streamed"
    );
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(err.contains("40 inputs: 40 succeeded in "), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ctrl_c_or_a_closed_stdout_cancels_the_rest_of_the_map() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(dir.path(), APP);
    let server = Server::start(&dir.path().join("data"), &["--deploy", m.to_str().unwrap()]);
    let client = server.client();
    let file = inputs(dir.path(), 400);
    // Ctrl-C: exit 130, the map cancelled on the server, and a line that says so.
    let mut child = map_command(&server, &file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(130), "{err}");
    let id = err
        .split_whitespace()
        .find(|w| w.starts_with("hc-"))
        .unwrap_or_else(|| panic!("no call id in {err:?}"))
        .to_string();
    assert!(
        err.contains("interrupted: cancelled the remaining inputs of map"),
        "{err}"
    );
    let call = client
        .get(&id.parse().unwrap(), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(call.state, InputState::Cancelled, "{call:?}");
    // Results that ended but were not written yet are not lost: the line says where they are.
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    let written = 1 + rest.lines().count() as i64;
    let ended = call.inputs.succeeded + call.inputs.failed;
    if ended > written {
        assert!(
            err.contains(&format!(
                "; {written} written here, hopper results {id} --return-exceptions reads them all)"
            )),
            "{ended} ended: {err}"
        );
    } else {
        assert!(!err.contains("written here"), "{err}");
    }
    assert!(!call.accepting_inputs);
    // Its reader goes away (`| head -2`): the map is cancelled, and the command ends quietly.
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "{BIN} map q.slow {} | head -2; echo \"exit ${{PIPESTATUS[0]}}\" >&2",
            file.display()
        ))
        .env("HOPPER_SERVER", &server.url)
        .output()
        .unwrap();
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 2, "{text}");
    let err = stderr(&out);
    assert!(
        err.contains("stdout was closed: cancelled the remaining inputs"),
        "{err}"
    );
    assert!(
        !err.contains("panicked") && !err.contains("Broken pipe"),
        "{err}"
    );
    let calls = client
        .calls(&hopper_sdk::CallFilter::default())
        .await
        .unwrap();
    assert_eq!(calls.calls[0].state, InputState::Cancelled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn output_commands_end_quietly_when_their_reader_goes_away() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(dir.path(), APP);
    let server = Server::start(&dir.path().join("data"), &["--deploy", m.to_str().unwrap()]);
    let client = server.client();
    for i in 0..60 {
        client.spawn("q.slow", json!(i), None).await.unwrap();
    }
    for args in [
        "apps --json",
        "calls --limit 200",
        "calls --limit 200 --json",
        "workers",
    ] {
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "{BIN} {args} | true; echo \"exit ${{PIPESTATUS[0]}}\" >&2"
            ))
            .env("HOPPER_SERVER", &server.url)
            .output()
            .unwrap();
        let err = stderr(&out);
        assert!(err.contains("exit 0"), "{args}: {err}");
        assert!(!err.contains("panicked"), "{args}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn defaults_wait_and_mistakes_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(dir.path(), APP);
    let data = dir.path().join("data");
    let server = Server::start(&data, &["--deploy", m.to_str().unwrap()]);
    // A bare host:port is a server URL.
    let bare = server.url.trim_start_matches("http://").to_string();
    let spawned = Command::new(BIN)
        .args(["spawn", "q.slow", "--input", "7"])
        .env("HOPPER_SERVER", &bare)
        .output()
        .unwrap();
    assert_eq!(spawned.status.code(), Some(0), "{}", stderr(&spawned));
    let id = stdout(&spawned).trim().to_string();
    // `get` waits for the call to end by default.
    let got = cli(&server.url, &["get", &id]);
    assert_eq!(got.status.code(), Some(0), "{}", stderr(&got));
    assert_eq!(stdout(&got).trim(), "7");
    // No input: refused, saying how to send null.
    let no_input = cli(&server.url, &["spawn", "q.slow"]);
    assert_eq!(no_input.status.code(), Some(2));
    assert!(
        stderr(&no_input).contains("--input null"),
        "{}",
        stderr(&no_input)
    );
    // A typo: the name meant.
    let typo = cli(&server.url, &["spawn", "q.slwo", "--input", "1"]);
    assert_eq!(typo.status.code(), Some(2));
    assert!(
        stderr(&typo).contains("did you mean q.slow?"),
        "{}",
        stderr(&typo)
    );
    // A second server on the same data folder is refused.
    let second = Command::new(BIN)
        .args([
            "serve",
            "--data",
            data.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(2));
    assert!(
        stderr(&second).contains("another hopper serve"),
        "{}",
        stderr(&second)
    );
    // Following a cancelled call's logs says how it ended.
    let client = server.client();
    let call = client.spawn("q.sleepy", json!(null), None).await.unwrap();
    let follow = tokio::process::Command::new(BIN)
        .args(["logs", call.id.as_str(), "-f"])
        .env("HOPPER_SERVER", &server.url)
        .output();
    tokio::time::sleep(Duration::from_millis(500)).await;
    client.cancel(&call.id).await.unwrap();
    let followed = tokio::time::timeout(Duration::from_secs(10), follow)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(followed.status.code(), Some(1));
    assert!(
        stderr(&followed).contains("cancelled"),
        "{}",
        stderr(&followed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn run_with_a_timeout_says_the_call_went_with_the_temporary_server() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(dir.path(), APP);
    let started = Instant::now();
    let out = Command::new(BIN)
        .args([
            "run",
            m.to_str().unwrap(),
            "sleepy",
            "--input",
            "null",
            "--timeout",
            "1s",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("it was stopped with the temporary server"),
        "{}",
        stderr(&out)
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "exited after {:?}",
        started.elapsed()
    );
}
