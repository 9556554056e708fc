//! Durability: SIGKILL of the server or of a worker loses nothing that was acknowledged, and
//! every input ends with exactly one result.
//! Servers deploy with `--dev`: the commands here write marker files beside their manifest,
//! where the tests read them (a code snapshot would run them in a copy).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use hopper_core::api::SpawnRequest;
use hopper_core::InputState;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_server_mid_run_loses_no_call_and_records_each_result_once() {
    let dir = tempfile::tempdir().unwrap();
    // Each run appends a line to runs.log, so we can count executions (at-least-once) while
    // checking that each call has exactly one recorded result.
    let m = manifest(
        dir.path(),
        r#"
app = "demo"
[functions.double]
command = ["sh", "-c", "read n; echo \"$n\" >> runs.log; sleep 0.05; echo $((n * 2))"]
concurrency = 4
"#,
    );
    let data = dir.path().join("data");
    let mut server = Server::start(
        &data,
        &["--dev", "--deploy", m.to_str().unwrap(), "--lease", "1s"],
    );
    let client = server.client();
    let mut ids = Vec::new();
    for n in 0..200 {
        ids.push(
            client
                .spawn("demo.double", json!(n), None)
                .await
                .unwrap()
                .id,
        );
    }
    // Let some finish and some be running, then pull the plug.
    let runs = dir.path().join("runs.log");
    eventually("some inputs have run", Duration::from_secs(30), || async {
        let n = std::fs::read_to_string(&runs)
            .map(|t| t.lines().count())
            .unwrap_or(0);
        (n >= 20).then_some(())
    })
    .await;
    server.kill9();
    let before_restart = client.get(&ids[0], Duration::ZERO).await;
    assert!(before_restart.is_err(), "the server is down");

    let server = Server::start(&data, &["--lease", "1s"]);
    let client = server.client();
    for (n, id) in ids.iter().enumerate() {
        let call = wait_done(&client, id, Duration::from_secs(120)).await;
        assert_eq!(call.state, InputState::Succeeded, "call {n}: {call:?}");
        assert_eq!(call.output, Some(json!(n * 2)), "call {n}");
        let attempts = client.attempts(id).await.unwrap();
        let recorded: Vec<_> = attempts
            .iter()
            .filter(|a| a.outcome == "succeeded" && !a.late)
            .collect();
        assert_eq!(
            recorded.len(),
            1,
            "call {n} has exactly one recorded result: {attempts:?}"
        );
    }
    // A command whose worker died with the server may have run with no input; only the
    // inputs' own lines count.
    let ran: HashSet<u32> = std::fs::read_to_string(&runs)
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    assert_eq!(
        ran,
        (0..200).collect::<HashSet<u32>>(),
        "every input ran at least once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_a_worker_mid_input_runs_the_input_again_after_the_lease_period() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(
        dir.path(),
        r#"
app = "demo"
[functions.slow]
command = ["sh", "-c", "echo $HOPPER_ATTEMPT >> attempts.log; sleep 2; echo '\"done\"'"]
"#,
    );
    let server = Server::start(
        &dir.path().join("data"),
        &["--dev", "--deploy", m.to_str().unwrap(), "--lease", "1s"],
    );
    let client = server.client();
    let call = client.spawn("slow", json!(null), None).await.unwrap();
    let log = dir.path().join("attempts.log");
    eventually(
        "the first attempt starts",
        Duration::from_secs(20),
        || async { log.exists().then_some(()) },
    )
    .await;
    let worker = client
        .workers()
        .await
        .unwrap()
        .into_iter()
        .find(|w| w.running == 1)
        .expect("a worker holds the input");
    let killed_at = std::time::Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-KILL", &worker.pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let call = wait_done(&client, &call.id, Duration::from_secs(60)).await;
    assert_eq!(call.state, InputState::Succeeded, "{call:?}");
    assert_eq!(call.output, Some(json!("done")));
    assert!(
        killed_at.elapsed() >= Duration::from_secs(2),
        "the second attempt ran in full"
    );
    let attempts = client.attempts(&call.id).await.unwrap();
    assert_eq!(
        attempts
            .iter()
            .map(|a| a.outcome.as_str())
            .collect::<Vec<_>>(),
        ["lost", "succeeded"],
        "{attempts:?}"
    );
    assert_eq!(
        std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .collect::<Vec<_>>(),
        ["1", "2"]
    );
    let workers = client.workers().await.unwrap();
    let dead = workers.iter().find(|w| w.id == worker.id).unwrap();
    assert_ne!(
        dead.state, "active",
        "the killed worker is no longer active: {dead:?}"
    );
    assert!(
        workers
            .iter()
            .any(|w| w.state == "active" && w.functions == ["demo.slow"]),
        "the provisioner started a new worker"
    );
}

/// Whether this test process runs as root (needed to mount a small filesystem).
fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A tmpfs of `size` mounted at `dir`, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(dir.to_path_buf()))
    }

    fn resize(&self, size: &str) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(status.success(), "remount {size}");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_acknowledges_nothing_it_did_not_write_and_recovers_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    if !is_root() {
        println!("SKIP a_full_disk…: mounting a small tmpfs needs root");
        return;
    }
    let Some(disk) = Tmpfs::mount(&data, "3m") else {
        panic!("running as root, but `mount -t tmpfs` failed: this test must run in CI");
    };
    let m = manifest(
        dir.path(),
        r#"
app = "disk"
[functions.hold]
external = true
[functions.slow]
command = ["sh", "-c", "sleep 3; echo '\"returned\"'"]
"#,
    );
    let server = Server::start(&data, &["--dev", "--deploy", m.to_str().unwrap()]);
    let client = server.client();
    // Two calls run while the disk fills; their results must be kept, not turned into timeouts.
    let slow: Vec<_> = futures_util::future::join_all(
        (0..2).map(|_| client.spawn("disk.slow", json!(null), None)),
    )
    .await
    .into_iter()
    .map(|r| r.unwrap().id)
    .collect();
    let filler = "x".repeat(16 * 1024);
    let mut acknowledged = Vec::new();
    let mut refused = 0;
    // 1,500 spawns of 16 KiB are eight times what the disk holds.
    for n in 0..1_500 {
        match client
            .spawn("disk.hold", json!({ "n": n, "pad": filler }), None)
            .await
        {
            Ok(call) => acknowledged.push(call.id),
            Err(hopper_sdk::Error::Api {
                status,
                code,
                message,
            }) => {
                assert!(
                    status == 507 && code == "storage_full" && message.contains("disk is full"),
                    "a full disk answers 507 storage_full, not {status} {code}: {message}"
                );
                refused += 1;
            }
            Err(e) => panic!("spawn {n}: {e}"),
        }
    }
    for id in &acknowledged {
        let call = client.get(id, Duration::ZERO).await;
        assert!(
            call.is_ok(),
            "acknowledged call {id} does not exist ({} acknowledged, {refused} refused): {call:?}",
            acknowledged.len()
        );
    }
    assert!(refused > 0, "the disk never filled");
    assert!(
        acknowledged.len() > 20,
        "only {} spawns fit",
        acknowledged.len()
    );
    // Space comes back: spawns work again without a restart.
    disk.resize("64m");
    let again = eventually(
        "a spawn succeeds after space is freed",
        Duration::from_secs(10),
        || async { client.spawn("disk.hold", json!("after"), None).await.ok() },
    )
    .await;
    acknowledged.push(again.id.clone());
    assert_eq!(
        client.get(&again.id, Duration::ZERO).await.unwrap().id,
        again.id
    );
    for id in &slow {
        let call = wait_done(&client, id, Duration::from_secs(60)).await;
        assert_eq!(call.state, InputState::Succeeded, "{call:?}");
        assert_eq!(call.output, Some(json!("returned")), "{call:?}");
    }
    // Everything acknowledged survives a SIGKILL and a restart.
    let mut server = server;
    server.kill9();
    let mut server = Server::start(&data, &["--no-workers"]);
    let client = server.client();
    for id in &acknowledged {
        let call = client.get(id, Duration::ZERO).await;
        assert!(
            call.is_ok(),
            "acknowledged call {id} is gone after a restart: {call:?}"
        );
    }
    server.kill9();
    let check = std::process::Command::new("python3")
        .arg("-c")
        .arg("import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute('PRAGMA integrity_check').fetchone()[0])")
        .arg(data.join("hopper.db"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&check.stdout).trim(),
        "ok",
        "{check:?}"
    );
    drop(disk);
}

/// A bulk spawn is one transaction: with batches of 1,000 in flight when the server is
/// SIGKILLed, each batch is afterwards either all there or not there at all, and every batch
/// that was answered is all there. Each call has an idempotency key naming its batch and
/// place, so spawning a batch again after the restart tells which of its calls exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bulk_spawn_interrupted_by_kill_9_is_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(
        dir.path(),
        r#"
app = "demo"
[functions.f]
command = ["cat"]
"#,
    );
    let data = dir.path().join("data");
    let mut server = Server::start(&data, &["--no-workers", "--deploy", m.to_str().unwrap()]);
    let batch = |b: usize| -> Vec<SpawnRequest> {
        (0..1_000)
            .map(|i| SpawnRequest {
                input: json!({"batch": b, "i": i}),
                idempotency_key: Some(format!("b{b}-{i}")),
                ..Default::default()
            })
            .collect()
    };
    // Four senders, each spawning batches one after another until the server dies.
    let answered = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut senders = Vec::new();
    for s in 0..4 {
        let client = server.client();
        let answered = answered.clone();
        senders.push(tokio::spawn(async move {
            for round in 0.. {
                let b = round * 4 + s;
                match client.spawn_many("demo.f", batch(b)).await {
                    Ok(calls) => {
                        assert_eq!(calls.len(), 1_000);
                        assert!(calls.iter().all(|c| c.created), "batch {b} is new");
                        answered.lock().unwrap().push(b);
                    }
                    Err(_) => return b,
                }
            }
            unreachable!()
        }));
    }
    eventually(
        "a few batches are answered",
        Duration::from_secs(60),
        || async { (answered.lock().unwrap().len() >= 6).then_some(()) },
    )
    .await;
    server.kill9();
    let mut in_flight = Vec::new();
    for sender in senders {
        in_flight.push(sender.await.unwrap());
    }
    let answered = answered.lock().unwrap().clone();

    let server = Server::start(&data, &["--no-workers"]);
    let client = server.client();
    for b in answered.iter().chain(&in_flight) {
        let again = client.spawn_many("demo.f", batch(*b)).await.unwrap();
        let existed = again.iter().filter(|c| !c.created).count();
        if answered.contains(b) {
            assert_eq!(existed, 1_000, "answered batch {b} is all there");
        } else {
            assert!(
                existed == 0 || existed == 1_000,
                "batch {b}, in flight at the kill, is all there or not at all: {existed} of 1,000 calls existed"
            );
        }
    }
    // The calls of an answered batch hold their own inputs.
    let first = client
        .spawn_many("demo.f", batch(answered[0]))
        .await
        .unwrap();
    let input = client.input(&first[999].id, 0).await.unwrap();
    assert_eq!(input.input, json!({"batch": answered[0], "i": 999}));
}
