//! Placement through the real binary, on a server told it has 4 GPUs of kind A100 and 2 of
//! kind L4 (`--gpus`): a GPU function's bursts run on at most as many local workers as it has
//! GPUs of a kind it accepts, each worker with its own `CUDA_VISIBLE_DEVICES` (recorded by the
//! function itself); a kind the server lacks waits with the reason shown (API, `hopper apps`,
//! `/metrics`) and runs as soon as a worker that has it registers; a remote worker without
//! GPUs or without a required label is handed none of those inputs; memory requests bound how
//! many workers start. Bad requests are refused at deploy naming the field. A process that
//! never gets ready is killed at the function's timeout and says so; a local worker killed
//! mid-input hands its lease back at once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// Records where it ran: the GPUs it was shown, its worker, and when it started and ended.
const RECORD_PY: &str = r#"
import json, os, sys, time
start = time.time()
time.sleep(float(os.environ.get("SLEEP", "0.6")))
print(json.dumps({
    "gpu": os.environ.get("CUDA_VISIBLE_DEVICES"),
    "nvidia": os.environ.get("NVIDIA_VISIBLE_DEVICES"),
    "worker": os.environ.get("HOPPER_WORKER_ID"),
    "start": start,
    "end": time.time(),
}))
"#;

const PLACED: &str = r#"
app = "g"
[functions.a100]
command = ["python3", "record.py"]
scaledown_window = "1s"
gpu = "A100"
max_workers = 8
[functions.any]
command = ["python3", "record.py"]
scaledown_window = "1s"
gpu = 1
max_workers = 8
[functions.l4]
command = ["python3", "record.py"]
scaledown_window = "1s"
gpu = "l4"
max_workers = 8
[functions.h100]
command = ["python3", "record.py"]
gpu = ["H100", "H200"]
[functions.eu]
command = ["python3", "record.py"]
labels = { zone = "eu" }
[functions.big]
command = ["python3", "record.py"]
memory = "1536MiB"
max_workers = 8
"#;

/// Spawns `n` calls of `function` and returns their outputs once all succeeded.
async fn burst(client: &hopper_sdk::Client, function: &str, n: usize) -> Vec<Value> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(client.spawn(function, json!(i), None).await.unwrap().id);
    }
    let mut outputs = Vec::new();
    for id in ids {
        let call = wait_done(client, &id, Duration::from_secs(120)).await;
        assert_eq!(
            call.state,
            hopper_core::CallState::Succeeded,
            "{function}: {call:?}"
        );
        outputs.push(call.output.unwrap());
    }
    outputs
}

/// The most distinct workers running at once among `outputs`.
fn most_workers_at_once(outputs: &[Value]) -> usize {
    let mut edges: Vec<(f64, i32)> = outputs
        .iter()
        .flat_map(|o| {
            [
                (o["start"].as_f64().unwrap(), 1),
                (o["end"].as_f64().unwrap(), -1),
            ]
        })
        .collect();
    edges.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let (mut now, mut most) = (0, 0);
    for (_, step) in edges {
        now += step;
        most = most.max(now);
    }
    most as usize
}

/// Each worker's GPUs, checking that a worker always saw the same ones.
fn gpus_by_worker(outputs: &[Value]) -> BTreeMap<String, String> {
    let mut by_worker = BTreeMap::new();
    for o in outputs {
        let worker = o["worker"].as_str().unwrap().to_string();
        let gpu = o["gpu"].as_str().unwrap_or("").to_string();
        assert_eq!(
            o["nvidia"], o["gpu"],
            "NVIDIA_VISIBLE_DEVICES as CUDA's: {o}"
        );
        let seen = by_worker.entry(worker).or_insert_with(|| gpu.clone());
        assert_eq!(*seen, gpu, "one worker, one set of GPUs: {outputs:?}");
    }
    by_worker
}

fn remote_worker(url: &str, args: &[&str]) -> Worker {
    Worker(
        std::process::Command::new(env!("CARGO_BIN_EXE_hopper"))
            .arg("worker")
            .args(["--server", url])
            .args(args)
            .env("RUST_LOG", "warn")
            .env_remove("HOPPER_TOKEN")
            .spawn()
            .unwrap(),
    )
}

async fn function_view(client: &hopper_sdk::Client, name: &str) -> hopper_core::api::FunctionView {
    client
        .functions()
        .await
        .unwrap()
        .into_iter()
        .find(|f| f.name == name)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn gpu_functions_run_on_their_own_gpus_and_wait_for_kinds_nobody_has() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("record.py"), RECORD_PY).unwrap();
    let m = manifest(dir.path(), PLACED);
    let server = Server::start(
        &dir.path().join("data"),
        &[
            "--gpus",
            "0=A100,1=A100,2=A100,3=A100,4=L4,5=L4",
            "--memory",
            "4GiB",
            "--deploy",
            m.to_str().unwrap(),
        ],
    );
    let client = server.client();
    // Workers elsewhere: one without GPUs for the A100 function, one in the wrong zone.
    let server_url = server.url.clone();
    let _no_gpu = remote_worker(&server_url, &["--function", "g.a100", "--gpus", "none"]);
    let _wrong_zone = remote_worker(
        &server_url,
        &["--function", "g.eu", "--gpus", "none", "--label", "zone=us"],
    );

    // 16 inputs of 0.6 s want 8 workers; 4 A100s allow 4, each on its own GPU.
    let outputs = burst(&client, "g.a100", 16).await;
    let by_worker = gpus_by_worker(&outputs);
    let gpus: BTreeSet<&String> = by_worker.values().collect();
    assert!(
        by_worker.len() <= 4 && most_workers_at_once(&outputs) <= 4,
        "at most one worker per A100: {outputs:?}"
    );
    assert_eq!(
        gpus.len(),
        by_worker.len(),
        "no two workers share a GPU: {by_worker:?}"
    );
    assert!(
        gpus.iter()
            .all(|g| ["0", "1", "2", "3"].contains(&g.as_str())),
        "only the A100s (0-3): {by_worker:?}"
    );
    assert!(by_worker.len() >= 2, "the burst fanned out: {by_worker:?}");

    // Any kind: all six GPUs, still one worker each.
    let outputs = burst(&client, "g.any", 24).await;
    let by_worker = gpus_by_worker(&outputs);
    let gpus: BTreeSet<&String> = by_worker.values().collect();
    assert_eq!(
        gpus.len(),
        by_worker.len(),
        "no two workers share a GPU: {by_worker:?}"
    );
    assert!(most_workers_at_once(&outputs) <= 6, "{outputs:?}");

    let outputs = burst(&client, "g.l4", 6).await;
    let by_worker = gpus_by_worker(&outputs);
    assert!(
        by_worker.values().all(|g| g == "4" || g == "5"),
        "only the L4s (4, 5): {by_worker:?}"
    );
    assert!(most_workers_at_once(&outputs) <= 2, "{outputs:?}");

    // No machine has an H100 or H200: the call waits, and says why.
    let h100 = client.spawn("g.h100", json!(1), None).await.unwrap().id;
    let why = eventually(
        "g.h100 says what it waits for",
        Duration::from_secs(15),
        || async { function_view(&client, "g.h100").await.waiting_for },
    )
    .await;
    assert!(
        why.starts_with("waiting for a GPU of kind H100 or H200: this server has 4 × A100, 2 × L4"),
        "{why}"
    );
    let apps = cli(&server.url, &["apps"]);
    assert!(
        stderr(&apps).contains("g.h100: waiting for a GPU of kind H100 or H200"),
        "{}",
        stderr(&apps)
    );
    assert!(stdout(&apps).contains("gpu H100|H200"), "{}", stdout(&apps));
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("hopper_function_waiting_for_resources{function=\"g.h100\"} 1"),
        "{metrics}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        client.get(&h100, Duration::ZERO).await.unwrap().state,
        hopper_core::CallState::Pending
    );
    // A worker that has one registers: the call runs there, on its GPU.
    let _h100_worker = remote_worker(
        &server_url,
        &["--function", "g.h100", "--gpus", "3", "--gpu-kind", "H200"],
    );
    let call = wait_done(&client, &h100, Duration::from_secs(30)).await;
    assert_eq!(call.output.as_ref().unwrap()["gpu"], "3", "{call:?}");
    eventually(
        "g.h100 no longer waits",
        Duration::from_secs(15),
        || async {
            function_view(&client, "g.h100")
                .await
                .waiting_for
                .is_none()
                .then_some(())
        },
    )
    .await;

    // Labels: the server has none and the worker in zone=us does not fit; one in zone=eu does.
    let eu = client.spawn("g.eu", json!(1), None).await.unwrap().id;
    let why = eventually(
        "g.eu says what it waits for",
        Duration::from_secs(15),
        || async { function_view(&client, "g.eu").await.waiting_for },
    )
    .await;
    assert!(
        why.starts_with("waiting for label zone=eu: this server has no zone label"),
        "{why}"
    );
    let _eu_worker = remote_worker(
        &server_url,
        &["--function", "g.eu", "--gpus", "none", "--label", "zone=eu"],
    );
    let call = wait_done(&client, &eu, Duration::from_secs(30)).await;
    let ran_on = call.output.as_ref().unwrap()["worker"]
        .as_str()
        .unwrap()
        .to_string();
    let workers = client.workers().await.unwrap();
    let eu_worker = workers.iter().find(|w| w.id.to_string() == ran_on).unwrap();
    assert_eq!(
        eu_worker
            .machine
            .as_ref()
            .unwrap()
            .labels
            .get("zone")
            .map(String::as_str),
        Some("eu")
    );

    // 1.5 GiB each in 4 GiB: two workers at once at most.
    let outputs = burst(&client, "g.big", 8).await;
    assert!(most_workers_at_once(&outputs) <= 2, "{outputs:?}");

    // The worker without GPUs and the one in the wrong zone were handed nothing.
    for w in client.workers().await.unwrap() {
        let machine = w.machine.clone().unwrap_or_default();
        let misfit = (w.functions == ["g.a100"] && machine.gpus.is_empty())
            || machine.labels.get("zone").map(String::as_str) == Some("us");
        if misfit {
            let page = client
                .calls(&hopper_sdk::CallFilter {
                    limit: Some(100),
                    ..Default::default()
                })
                .await
                .unwrap();
            for c in page.calls {
                if let Some(out) = &c.output {
                    assert_ne!(out["worker"], w.id.to_string(), "{w:?} ran {c:?}");
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_resource_requests_are_refused_at_deploy_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    for (body, field, says) in [
        ("gpu = 0", "functions.f.gpu", "between 1 and 64"),
        ("gpu = \"A100:0\"", "functions.f.gpu", "count after `:`"),
        (
            "gpu = [\"H100:2\", \"A100\"]",
            "functions.f.gpu",
            "same number",
        ),
        ("gpu = true", "functions.f.gpu", "expected a count"),
        ("cpu = 0", "functions.f.cpu", "more than 0"),
        ("memory = \"4 gigs\"", "functions.f.memory", "not a size"),
        ("memory = 0", "functions.f.memory", "at least 1"),
        ("memory = \"1048576\"", "functions.f.memory", "has no unit"),
        (
            "memory = \"2000TiB\"",
            "functions.f.memory",
            "more than any machine",
        ),
        (
            "labels = { zone = \"eu,us\" }",
            "functions.f.labels",
            "its value",
        ),
        (
            "labels = { \"a b\" = \"x\" }",
            "functions.f.labels",
            "label name",
        ),
    ] {
        let m = manifest(
            dir.path(),
            &format!("app = \"bad\"\n[functions.f]\ncommand = [\"true\"]\n{body}\n"),
        );
        let out = cli(&server.url, &["deploy", m.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{body}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains(field) && err.contains(says), "{body}: {err}");
    }
    assert!(
        server.client().apps().await.unwrap().is_empty(),
        "nothing deployed"
    );
    // The flags that describe a machine are checked too.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hopper"))
        .args(["worker", "--server", &server.url, "--function", "a.f"])
        .args(["--gpus", "0,x", "--memory", "lots", "--label", "zone"])
        .env_remove("HOPPER_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    for flag in [
        "--gpus (HOPPER_GPUS) 0,x",
        "--memory (HOPPER_MEMORY) lots",
        "--label (HOPPER_LABELS) \"zone\"",
    ] {
        assert!(err.contains(flag), "{flag}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_process_that_never_gets_ready_fails_its_start_and_its_calls_end() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("stuck.py"),
        "import json, sys, time\nprint(json.dumps({'ready': False}), flush=True)\nprint('loading forever', file=sys.stderr, flush=True)\ntime.sleep(600)\n",
    )
    .unwrap();
    let m = manifest(
        dir.path(),
        "app = \"s\"\n[functions.stuck]\nserve = [\"python3\", \"stuck.py\"]\ntimeout = \"2s\"\n",
    );
    let server = Server::start(&dir.path().join("data"), &["--deploy", m.to_str().unwrap()]);
    let client = server.client();
    let id = client.spawn("s.stuck", json!(1), None).await.unwrap().id;
    let why = eventually(
        "s.stuck says its start failed",
        Duration::from_secs(30),
        || async {
            function_view(&client, "s.stuck")
                .await
                .startup
                .and_then(|s| s.failed)
        },
    )
    .await;
    assert!(
        why.starts_with("not ready after 2s (the function's timeout): the process was killed"),
        "{why}"
    );
    // The call does not wait forever on a process that never loads: it fails to start.
    let call = wait_done(&client, &id, Duration::from_secs(60)).await;
    assert_eq!(call.state, hopper_core::CallState::Failed, "{call:?}");
    assert_eq!(
        call.error.as_ref().unwrap().code,
        "startup_failed",
        "{call:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_local_worker_killed_mid_input_hands_its_lease_back_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(
        dir.path(),
        "app = \"k\"\n[functions.slow]\ncommand = [\"sh\", \"-c\", \"sleep 2; echo 7\"]\n",
    );
    // A lease far longer than the test waits: only the hand-back can bring the input back.
    let server = Server::start(
        &dir.path().join("data"),
        &["--deploy", m.to_str().unwrap(), "--lease", "120s"],
    );
    let client = server.client();
    let id = client.spawn("k.slow", json!(1), None).await.unwrap().id;
    let worker = eventually(
        "a worker holds the input",
        Duration::from_secs(20),
        || async {
            client
                .workers()
                .await
                .unwrap()
                .into_iter()
                .find(|w| w.state == "active" && w.running == 1)
        },
    )
    .await;
    let killed = std::process::Command::new("kill")
        .args(["-9", &worker.pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let call = wait_done(&client, &id, Duration::from_secs(60)).await;
    assert_eq!(call.state, hopper_core::CallState::Succeeded, "{call:?}");
    let attempts = client.attempts(&id).await.unwrap();
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!(attempts[0].outcome, "lost", "{attempts:?}");
    assert_eq!(
        attempts[0].error.as_ref().unwrap().code,
        "worker_lost",
        "{attempts:?}"
    );
}
