//! Maps, `serve` workers, batching and autoscaling, through the real binary.
//! Servers deploy with `--dev`: the commands here write marker files beside their manifest,
//! where the tests read them (a code snapshot would run them in a copy).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use hopper_core::InputState;
use serde_json::{json, Value};

const DOUBLE: &str = r#"
app = "m"
[functions.double]
command = ["sh", "-c", "read n; if [ \"$n\" = 7 ]; then echo seven >&2; exit 2; fi; echo $((n * 2))"]
concurrency = 8
"#;

fn inputs(dir: &std::path::Path, n: usize) -> std::path::PathBuf {
    let path = dir.join("inputs.jsonl");
    let text: String = (0..n).map(|i| format!("{i}\n")).collect();
    std::fs::write(&path, text).unwrap();
    path
}

fn lines(out: &std::process::Output) -> Vec<Value> {
    stdout(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn ordered_and_unordered_maps_return_every_result() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(dir.path(), "app = \"m\"\n[functions.double]\ncommand = [\"sh\", \"-c\", \"read n; echo $((n * 2))\"]\nconcurrency = 8\n");
    let server = Server::start(
        &dir.path().join("data"),
        &["--dev", "--deploy", m.to_str().unwrap()],
    );
    let file = inputs(dir.path(), 60);
    let out = cli(&server.url, &["map", "m.double", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let ordered = lines(&out);
    let expected: Vec<Value> = (0..60)
        .map(|i| json!({"index": i, "output": i * 2}))
        .collect();
    assert_eq!(ordered, expected, "results in input order");
    let out = cli(
        &server.url,
        &["map", "double", file.to_str().unwrap(), "--unordered"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let mut unordered = lines(&out);
    unordered.sort_by_key(|v| v["index"].as_i64().unwrap());
    assert_eq!(
        unordered, expected,
        "every result once, each tagged with its index"
    );
    // stdin works too; the map is one call whose progress `get` shows.
    let mut child = Command::new(BIN)
        .args(["map", "m.double", "-", "--json"])
        .env("HOPPER_SERVER", &server.url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"1\n\n2\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        lines(&out),
        [
            json!({"index": 0, "output": 2}),
            json!({"index": 1, "output": 4})
        ]
    );
    let page = server
        .client()
        .calls(&hopper_sdk::CallFilter {
            origin: Some("map".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.calls.len(), 3);
    let got = cli(&server.url, &["get", page.calls[2].id.as_str(), "--json"]);
    let call: Value = serde_json::from_str(&stdout(&got)).unwrap();
    assert_eq!(call["inputs"]["succeeded"], 60);
    assert_eq!(call["state"], "succeeded");
}

#[tokio::test]
async fn return_exceptions_puts_the_error_in_place_and_otherwise_a_failure_stops_the_map() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(dir.path(), DOUBLE);
    let server = Server::start(
        &dir.path().join("data"),
        &["--dev", "--deploy", m.to_str().unwrap()],
    );
    let file = inputs(dir.path(), 12);
    let out = cli(
        &server.url,
        &[
            "map",
            "m.double",
            file.to_str().unwrap(),
            "--return-exceptions",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let results = lines(&out);
    assert_eq!(results.len(), 12);
    assert_eq!(results[6], json!({"index": 6, "output": 12}));
    assert_eq!(results[7]["index"], 7);
    assert_eq!(results[7]["error"]["code"], "exit_code");
    assert!(results[7]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("seven"));

    let big = inputs(dir.path(), 400);
    let out = cli(&server.url, &["map", "m.double", big.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("input 7 failed: exit_code"), "{err}");
    let printed = lines(&out);
    assert_eq!(
        printed.len(),
        7,
        "the results before the failure are printed, in order"
    );
    let page = server
        .client()
        .calls(&hopper_sdk::CallFilter {
            limit: Some(1),
            ..Default::default()
        })
        .await
        .unwrap();
    let call = &page.calls[0];
    assert_eq!(call.state, InputState::Failed);
    assert!(
        call.inputs.cancelled > 0,
        "the map's remaining inputs were cancelled: {:?}",
        call.inputs
    );
}

#[tokio::test]
async fn a_bad_input_line_is_refused_before_anything_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(dir.path(), DOUBLE);
    let server = Server::start(
        &dir.path().join("data"),
        &["--dev", "--deploy", m.to_str().unwrap()],
    );
    let file = dir.path().join("bad.jsonl");
    std::fs::write(&file, "1\n2\n{oops\n").unwrap();
    let out = cli(&server.url, &["map", "m.double", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("bad.jsonl:3: not valid JSON"),
        "{}",
        stderr(&out)
    );
    let page = server.client().calls(&Default::default()).await.unwrap();
    assert!(page.calls.is_empty());
}

#[tokio::test]
async fn a_client_that_disconnects_resumes_the_results_from_its_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(dir.path(), "app = \"m\"\n[functions.slow]\ncommand = [\"sh\", \"-c\", \"read n; sleep 0.05; echo $n\"]\nconcurrency = 4\n");
    let server = Server::start(
        &dir.path().join("data"),
        &["--dev", "--deploy", m.to_str().unwrap()],
    );
    let file = inputs(dir.path(), 40);
    let mut child = Command::new(BIN)
        .args(["map", "m.slow", file.to_str().unwrap()])
        .env("HOPPER_SERVER", &server.url)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut seen = Vec::new();
    for _ in 0..5 {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        seen.push(serde_json::from_str::<Value>(&line).unwrap());
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let last = seen.last().unwrap()["index"].as_i64().unwrap();
    assert_eq!(last, 4);
    let page = server.client().calls(&Default::default()).await.unwrap();
    let id = page.calls[0].id.clone();
    let out = cli(
        &server.url,
        &["results", id.as_str(), "--after", &last.to_string()],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let rest = lines(&out);
    let expected: Vec<Value> = (5..40).map(|i| json!({"index": i, "output": i})).collect();
    assert_eq!(rest, expected, "the rest, from the cursor on");
}

const SERVE: &str = r#"
app = "s"
[functions.embed]
serve = ["python3", "server.py"]
concurrency = 2
batch = { max_size = 8, wait = "300ms" }
min_workers = 1
max_workers = 1
"#;

const SERVER_PY: &str = r#"
import json, os, sys, time
sys.path.insert(0, os.environ["HELPER_DIR"])
from hopper_serve import serve
with open("serve.pids", "a") as f:
    f.write(f"{os.getpid()}\n")
def embed(items):
    with open("batches.log", "a") as f:
        f.write(f"{len(items)}\n")
    time.sleep(float(os.environ.get("SLEEP", "0")))
    return [ValueError("odd one out") if x == "bad" else x * 10 for x in items]
serve(embed, batched=True)
"#;

fn examples_dir() -> String {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .canonicalize()
        .unwrap()
        .display()
        .to_string()
}

#[tokio::test]
async fn batches_fill_under_load_and_a_lone_input_waits_no_longer_than_wait() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(
        dir.path(),
        &SERVE.replace(
            "concurrency = 2",
            &format!(
                "concurrency = 2\nenv = {{ HELPER_DIR = {:?} }}",
                examples_dir()
            ),
        ),
    );
    std::fs::write(dir.path().join("server.py"), SERVER_PY).unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &["--dev", "--deploy", m.to_str().unwrap()],
    );
    let client = server.client();
    // A lone input: a batch of one, sent once `wait` has passed.
    let started = Instant::now();
    let call = client.spawn("s.embed", json!(1), None).await.unwrap();
    let call = wait_done(&client, &call.id, Duration::from_secs(30)).await;
    assert_eq!(call.output, Some(json!(10)));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a lone input is not held for a full batch"
    );
    let log = dir.path().join("batches.log");
    assert_eq!(std::fs::read_to_string(&log).unwrap().trim(), "1");
    std::fs::remove_file(&log).unwrap();
    // Under load: full batches of 8; each input keeps its own result and error.
    let file = dir.path().join("in.jsonl");
    let mut text: String = (0..63).map(|i| format!("{i}\n")).collect();
    text.push_str("\"bad\"\n");
    std::fs::write(&file, text).unwrap();
    let out = cli(
        &server.url,
        &[
            "map",
            "s.embed",
            file.to_str().unwrap(),
            "--return-exceptions",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let results = lines(&out);
    assert_eq!(results.len(), 64);
    assert_eq!(results[5], json!({"index": 5, "output": 50}));
    assert_eq!(results[63]["error"]["code"], "ValueError");
    let sizes: Vec<usize> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(sizes.iter().sum::<usize>(), 64);
    assert!(sizes.iter().all(|s| *s <= 8), "{sizes:?}");
    assert!(
        sizes.iter().filter(|s| **s == 8).count() >= 6,
        "batches fill up under load: {sizes:?}"
    );
    // The process was started once for all of it.
    assert_eq!(
        std::fs::read_to_string(dir.path().join("serve.pids"))
            .unwrap()
            .lines()
            .count(),
        1
    );
}

#[tokio::test]
async fn a_serve_process_killed_mid_batch_has_its_inputs_retried_in_a_new_process() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(
        dir.path(),
        &SERVE.replace(
            "concurrency = 2",
            &format!(
                "concurrency = 2\nenv = {{ HELPER_DIR = {:?}, SLEEP = \"1\" }}",
                examples_dir()
            ),
        ),
    );
    std::fs::write(dir.path().join("server.py"), SERVER_PY).unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &["--dev", "--deploy", m.to_str().unwrap()],
    );
    let client = server.client();
    let mut ids = Vec::new();
    for i in 0..8 {
        ids.push(client.spawn("s.embed", json!(i), None).await.unwrap().id);
    }
    let log = dir.path().join("batches.log");
    eventually("a batch is in flight", Duration::from_secs(20), || async {
        log.exists().then_some(())
    })
    .await;
    let pids = std::fs::read_to_string(dir.path().join("serve.pids")).unwrap();
    let first: i32 = pids.lines().next().unwrap().parse().unwrap();
    assert!(Command::new("kill")
        .args(["-KILL", &first.to_string()])
        .status()
        .unwrap()
        .success());
    for (i, id) in ids.iter().enumerate() {
        let call = wait_done(&client, id, Duration::from_secs(30)).await;
        assert_eq!(call.state, InputState::Succeeded, "{call:?}");
        assert_eq!(call.output, Some(json!(i * 10)));
    }
    let pids = std::fs::read_to_string(dir.path().join("serve.pids")).unwrap();
    assert_eq!(pids.lines().count(), 2, "a new process was started");
    let mut lost = 0;
    for id in &ids {
        lost += client
            .attempts(id)
            .await
            .unwrap()
            .iter()
            .filter(|a| a.outcome == "lost")
            .count();
    }
    assert!(lost >= 1, "the inputs in flight went back to the queue");
}

#[tokio::test]
async fn workers_scale_up_under_a_backlog_and_down_after_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(
        dir.path(),
        r#"
app = "a"
[functions.slow]
command = ["sh", "-c", "sleep 1; echo 1"]
min_workers = 0
max_workers = 3
scaledown_window = "1s"
"#,
    );
    let server = Server::start(
        &dir.path().join("data"),
        &["--dev", "--deploy", m.to_str().unwrap()],
    );
    let client = server.client();
    let active = |ws: &[hopper_core::api::WorkerView]| {
        ws.iter()
            .filter(|w| w.state == "active" && w.functions == ["a.slow"])
            .count()
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        active(&client.workers().await.unwrap()),
        0,
        "min_workers = 0: no worker while idle"
    );
    let mut ids = Vec::new();
    for _ in 0..9 {
        ids.push(client.spawn("a.slow", json!(null), None).await.unwrap().id);
    }
    eventually(
        "three workers for the backlog",
        Duration::from_secs(20),
        || async { (active(&client.workers().await.unwrap()) == 3).then_some(()) },
    )
    .await;
    for id in &ids {
        wait_done(&client, id, Duration::from_secs(60)).await;
    }
    eventually(
        "idle workers stop after the window",
        Duration::from_secs(20),
        || async { (active(&client.workers().await.unwrap()) == 0).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_map_whose_client_went_away_is_cancelled_and_one_still_read_stays_open() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(dir.path(), DOUBLE);
    let server = Server::start(
        &dir.path().join("data"),
        &[
            "--dev",
            "--deploy",
            m.to_str().unwrap(),
            "--no-workers",
            "--map-idle-timeout",
            "2s",
        ],
    );
    let client = server.client();
    let open = |n: i64| hopper_core::api::MapRequest {
        inputs: vec![json!(n)],
        ..Default::default()
    };
    // Two clients open a map each; one goes away, the other keeps reading its results.
    let gone = client.map_start("m.double", &open(1)).await.unwrap();
    let kept = client.map_start("m.double", &open(2)).await.unwrap();
    let reading = {
        let (client, id) = (client.clone(), kept.id.clone());
        tokio::spawn(async move {
            loop {
                let _ = client
                    .results(&id, true, -1, Duration::from_millis(500))
                    .await;
            }
        })
    };
    // Read through the list of calls: reading a map itself is its client being there.
    let listed = |id: hopper_core::CallId| {
        let client = client.clone();
        async move {
            let page = client
                .calls(&hopper_sdk::CallFilter {
                    origin: Some("map".into()),
                    ..Default::default()
                })
                .await
                .unwrap();
            page.calls.into_iter().find(|c| c.id == id).unwrap()
        }
    };
    let cancelled = eventually(
        "the abandoned map is cancelled",
        Duration::from_secs(20),
        || async {
            let call = listed(gone.id.clone()).await;
            (call.state == hopper_core::CallState::Cancelled).then_some(call)
        },
    )
    .await;
    assert!(!cancelled.accepting_inputs);
    assert_eq!(cancelled.inputs.cancelled, 1);
    let still = listed(kept.id.clone()).await;
    assert!(
        still.accepting_inputs,
        "a map whose client reads is kept open: {still:?}"
    );
    reading.abort();
}

#[tokio::test]
async fn the_cli_cancels_its_map_when_it_stops_on_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(dir.path(), DOUBLE);
    // A token that may spawn and map but not read results: the CLI's map stops at its first
    // read, and must not leave its inputs running for nobody.
    let server = Server::start(
        &dir.path().join("data"),
        &[
            "--dev",
            "--deploy",
            m.to_str().unwrap(),
            "--no-workers",
            "--token",
            "admin-token-1",
            "--scoped-token",
            "submit=submit-token-1",
        ],
    );
    let file = inputs(dir.path(), 50);
    let out = Command::new(BIN)
        .args(["map", "m.double", file.to_str().unwrap()])
        .env("HOPPER_SERVER", &server.url)
        .env("HOPPER_TOKEN", "submit-token-1")
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains("cancelled the remaining inputs of map"),
        "{}",
        stderr(&out)
    );
    let admin = server.client_with_token("admin-token-1");
    let maps = admin
        .calls(&hopper_sdk::CallFilter {
            origin: Some("map".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .calls;
    assert_eq!(maps.len(), 1);
    assert_eq!(
        maps[0].state,
        hopper_core::CallState::Cancelled,
        "{:?}",
        maps[0]
    );
}
