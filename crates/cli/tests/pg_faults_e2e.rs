//! Scale-out faults on PostgreSQL, through real servers: a server whose clock runs ahead
//! cannot take leases from running work, and a map with hundreds of inputs in flight cancels
//! at once. Needs `HOPPER_TEST_POSTGRES` (skips without it), and Debian's `faketime` for the
//! clock test (skips without it unless `HOPPER_TEST_FAKETIME=1`, which `.ci/run` sets).
//! Servers deploy with `--dev`: the commands here write marker files beside their manifest,
//! where the tests read them (a code snapshot would run them in a copy).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use std::os::unix::process::CommandExt;
use std::time::Duration;

use common::*;
use hopper_core::InputState;
use serde_json::json;

fn has_faketime() -> bool {
    let ok = std::process::Command::new("faketime")
        .args(["-f", "+1s", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var("HOPPER_TEST_FAKETIME").ok().as_deref() != Some("1"),
            "HOPPER_TEST_FAKETIME=1 but faketime does not run (apt-get install faketime)"
        );
        println!("SKIP: faketime is not installed (apt-get install faketime)");
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_whose_clock_runs_ahead_does_not_take_leases_from_running_work() {
    let Some((url, schema)) = test_database() else {
        return;
    };
    if !has_faketime() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(
        dir.path(),
        r#"
app = "k"
[functions.slow]
command = ["sh", "-c", "echo $HOPPER_ATTEMPT >> attempts.log; sleep 8; echo '\"done\"'"]
"#,
    );
    let db = [
        "--database",
        url.as_str(),
        "--database-schema",
        schema.as_str(),
        "--lease",
        "3s",
    ];
    let a = Server::start(
        &dir.path().join("a"),
        &[&db[..], &["--dev", "--deploy", m.to_str().unwrap()]].concat(),
    );
    // B runs 25 s ahead, far more than a lease: its reaper would take every lease back.
    let b = Server::start_under(
        &["faketime", "-f", "+25s"],
        &dir.path().join("b"),
        &[&db[..], &["--no-workers"]].concat(),
    );
    let client = a.client();
    let call = client.spawn("k.slow", json!(null), None).await.unwrap();
    let call = wait_done(&client, &call.id, Duration::from_secs(60)).await;
    assert_eq!(call.state, InputState::Succeeded, "{call:?}");
    assert_eq!(call.attempts, 1, "no lease was taken back: {call:?}");
    let runs = std::fs::read_to_string(dir.path().join("attempts.log")).unwrap();
    assert_eq!(runs.lines().count(), 1, "the command ran once: {runs}");
    let metrics = reqwest::get(format!("{}/metrics", b.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let offset: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("hopper_clock_offset_seconds "))
        .expect("B reports its offset from the database")
        .parse()
        .unwrap();
    assert!((-26.0..-24.0).contains(&offset), "offset {offset}");
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelling_a_busy_map_answers_at_once_and_stops_its_inputs() {
    let Some((url, schema)) = test_database() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("embed.py"),
        r#"import json, sys, time
for line in sys.stdin:
    req = json.loads(line)
    if "cancel" in req:
        continue
    time.sleep(0.05)
    for item in req["batch"]:
        sys.stdout.write(json.dumps({"id": item["id"], "output": item["input"]}) + "\n")
    sys.stdout.flush()
"#,
    )
    .unwrap();
    let m = manifest(
        dir.path(),
        r#"
app = "c"
[functions.embed]
serve = ["python3", "embed.py"]
batch = { max_size = 32, wait = "20ms" }
concurrency = 8
min_workers = 2
max_workers = 2
"#,
    );
    let server = Server::start(
        &dir.path().join("data"),
        &[
            "--database",
            url.as_str(),
            "--database-schema",
            schema.as_str(),
            "--deploy",
            m.to_str().unwrap(),
        ],
    );
    let client = server.client();
    let data = dir.path().join("inputs.jsonl");
    std::fs::write(
        &data,
        (0..10_000).map(|i| format!("{i}\n")).collect::<String>(),
    )
    .unwrap();
    for round in 0..3 {
        // Odd rounds send a file (all inputs at once); even ones a stream that is still
        // arriving when the cancel comes, so chunks race the cancel.
        let source = if round % 2 == 1 {
            format!("cat {}", data.display())
        } else {
            "python3 -c 'import sys, time\nfor i in range(100000):\n    print(i)\n    if i % 1000 == 0: sys.stdout.flush(); time.sleep(0.02)'".to_string()
        };
        let map = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!("{source} | {BIN} map c.embed - --json"))
            .env("HOPPER_SERVER", &server.url)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        // Until hundreds of inputs are in flight.
        let id = eventually("inputs in flight", Duration::from_secs(60), || async {
            let page = client
                .calls(&hopper_sdk::CallFilter::default())
                .await
                .ok()?;
            let call = page.calls.into_iter().find(|c| !c.state.is_terminal())?;
            (call.inputs.running >= 100).then_some(call.id)
        })
        .await;
        let out = cli(&server.url, &["cancel", id.as_str()]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "round {round}: {}",
            stderr(&out)
        );
        let call = client.get(&id, Duration::ZERO).await.unwrap();
        assert_eq!(call.state, InputState::Cancelled, "round {round}: {call:?}");
        assert_eq!(call.inputs.running, 0);
        assert!(call.inputs.cancelled > 0);
        assert!(!call.accepting_inputs);
        let mut map = map;
        let _ = std::process::Command::new("kill")
            .args(["--", &format!("-{}", map.id())])
            .status();
        let _ = map.wait();
    }
}
