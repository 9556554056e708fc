//! Queue controls through the real binary: a function's `limits` (max_running,
//! max_running_per_key, keys taken from the input) hold for a map run by several workers,
//! counted from the attempts' start and end times, on SQLite and on two servers over
//! PostgreSQL; a rate and max_running hold, and delayed calls wait, through a `kill -9` of the
//! server with nothing lost; priorities and keys given with a spawn from the CLI and HTTP are
//! shown on the call; bad values are refused naming the field, nothing stored.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use hopper_core::InputState;
use hopper_sdk::MapOptions;
use serde_json::{json, Value};

const LIMITED: &str = "app = \"q\"\n\
[functions.fetch]\n\
command = [\"sh\", \"-c\", \"sleep 0.3; cat\"]\n\
concurrency = 4\n\
min_workers = 2\n\
max_workers = 2\n\
[functions.fetch.limits]\n\
key = \"/tenant\"\n\
max_running = 3\n\
max_running_per_key = 1\n";

fn millis(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .unwrap()
        .timestamp_millis()
}

/// The most attempts running at once among `spans` (start, end).
fn most_at_once(spans: &[(i64, i64)]) -> usize {
    let mut edges: Vec<(i64, i32)> = spans.iter().flat_map(|&(s, e)| [(s, 1), (e, -1)]).collect();
    // An end at the same instant as a start frees its place first.
    edges.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, step) in edges {
        now += step;
        most = most.max(now);
    }
    most as usize
}

/// Runs a 12-input map over three tenants and checks the limits from its attempts. Each
/// attempt's end counts `slack_ms` early: two servers' clocks (each kept to the database's)
/// may differ by a few milliseconds, and the attempts last 300 ms or more.
async fn limits_hold(client: &hopper_sdk::Client, slack_ms: i64) {
    let tenants = [
        "acme", "acme", "acme", "acme", "acme", "acme", "beta", "beta", "beta", "beta", "gamma",
        "gamma",
    ];
    let inputs: Vec<Value> = tenants
        .iter()
        .enumerate()
        .map(|(i, t)| json!({"tenant": t, "n": i}))
        .collect();
    let mut run = client
        .map::<Value, Value, _>(
            "q.fetch",
            futures_util::stream::iter(inputs.clone()),
            MapOptions::default(),
        )
        .await
        .unwrap();
    let mut n = 0;
    while let Some(item) = run.next().await {
        assert_eq!(item.unwrap().result.unwrap(), inputs[n]);
        n += 1;
    }
    assert_eq!(n, 12);
    let maps = client
        .calls(&hopper_sdk::CallFilter {
            origin: Some("map".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let attempts = client.attempts(&maps.calls[0].id).await.unwrap();
    let mut all = Vec::new();
    let mut per_key: HashMap<&str, Vec<(i64, i64)>> = HashMap::new();
    for a in &attempts {
        let span = (
            millis(&a.started_at),
            millis(a.finished_at.as_deref().unwrap()) - slack_ms,
        );
        all.push(span);
        per_key
            .entry(tenants[a.index as usize])
            .or_default()
            .push(span);
    }
    assert!(most_at_once(&all) <= 3, "max_running = 3: {attempts:#?}");
    for (key, spans) in &per_key {
        assert_eq!(most_at_once(spans), 1, "{key} ran more than one at once");
    }
    // The limits did not run everything one at a time: keys ran side by side.
    assert!(most_at_once(&all) >= 2, "{attempts:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_hold_across_workers_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(dir.path(), LIMITED);
    let server = Server::start(&dir.path().join("data"), &["--deploy", m.to_str().unwrap()]);
    limits_hold(&server.client(), 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn limits_hold_across_two_servers_on_postgres() {
    let Some((url, schema)) = test_database() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(dir.path(), LIMITED);
    let db = [
        "--database",
        url.as_str(),
        "--database-schema",
        schema.as_str(),
    ];
    let a = Server::start(
        &dir.path().join("a"),
        &[&db[..], &["--deploy", m.to_str().unwrap()]].concat(),
    );
    let client = a.client();
    // The app is written before the second server reads it.
    client.functions().await.unwrap();
    let b = Server::start(&dir.path().join("b"), &db);
    eventually(
        "workers on both servers",
        Duration::from_secs(30),
        || async {
            let active = client
                .workers()
                .await
                .unwrap()
                .iter()
                .filter(|w| w.state == "active")
                .count();
            (active >= 4).then_some(())
        },
    )
    .await;
    limits_hold(&client, 50).await;
    // A key with control characters (NUL, which PostgreSQL's text cannot hold) is its JSON
    // text.
    let call = client
        .spawn("q.fetch", json!({"tenant": "a\u{0}b", "n": 99}), None)
        .await
        .unwrap();
    assert_eq!(call.key.as_deref(), Some("\"a\\u0000b\""));
    let done = wait_done(&client, &call.id, Duration::from_secs(30)).await;
    assert_eq!(done.state, InputState::Succeeded, "{done:?}");
    drop((a, b));
    drop_test_schema(&url, &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_input_waiting_out_a_retry_is_not_said_to_wait_on_a_limit() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(
        dir.path(),
        "app = \"bk\"\n[functions.job]\n\
         command = [\"sh\", \"-c\", \"read x; case $x in *fail*) exit 1;; esac; sleep 30; echo $x\"]\n\
         retries = { max_retries = 2, initial_delay = \"1h\", max_delay = \"1h\" }\n\
         [functions.job.limits]\nmax_running = 1\n",
    );
    let server = Server::start(&dir.path().join("data"), &["--deploy", m.to_str().unwrap()]);
    let client = server.client();
    let failing = client.spawn("bk.job", json!("fail"), None).await.unwrap();
    eventually(
        "the first attempt fails",
        Duration::from_secs(20),
        || async {
            let c = client.get(&failing.id, Duration::ZERO).await.unwrap();
            (c.attempts == 1 && c.state == InputState::Pending).then_some(())
        },
    )
    .await;
    let long = client.spawn("bk.job", json!("long"), None).await.unwrap();
    eventually("the long call runs", Duration::from_secs(20), || async {
        let c = client.get(&long.id, Duration::ZERO).await.unwrap();
        (c.state == InputState::Running).then_some(())
    })
    .await;
    let waiting = client.get(&failing.id, Duration::ZERO).await.unwrap();
    assert_eq!(waiting.state, InputState::Pending);
    assert_eq!(
        waiting.waiting, None,
        "it waits for its retry, not for max_running"
    );
    // One that is due says so.
    let due = client.spawn("bk.job", json!("next"), None).await.unwrap();
    let held = client.get(&due.id, Duration::ZERO).await.unwrap();
    assert_eq!(held.waiting.as_deref(), Some("max_running: 1 of 1 running"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_max_running_and_delayed_calls_hold_through_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(
        dir.path(),
        "app = \"r\"\n[functions.call_api]\ncommand = [\"sh\", \"-c\", \"sleep 0.2; cat\"]\n\
         concurrency = 4\nmax_workers = 2\n\
         [functions.call_api.limits]\nmax_running = 1\nrate = \"2/s\"\n",
    );
    let args = ["--deploy", m.to_str().unwrap(), "--lease", "2s"];
    let mut server = Server::start(&dir.path().join("data"), &args);
    let client = server.client();
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(client.spawn("r.call_api", json!(i), None).await.unwrap().id);
    }
    let mut delayed = Vec::new();
    for i in 0..2 {
        let request = hopper_core::api::SpawnRequest {
            input: json!(100 + i),
            idempotency_key: None,
            delay: Some("4s".into()),
            start_at: None,
            key: Some(format!("late-{i}")),
            priority: Some(5),
        };
        delayed.push(client.spawn_request("r.call_api", &request).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    server.kill9();
    let server = Server::start_again(&server, &args);
    let client = server.client();
    let mut spans = Vec::new();
    for (n, id) in ids.iter().chain(delayed.iter().map(|c| &c.id)).enumerate() {
        let done = wait_done(&client, id, Duration::from_secs(60)).await;
        assert_eq!(done.state, InputState::Succeeded, "{done:?}");
        let expected = if n < 6 { n as i64 } else { 100 + n as i64 - 6 };
        assert_eq!(done.output, Some(json!(expected)));
        for a in client.attempts(id).await.unwrap() {
            let end = a.finished_at.as_deref().map_or(i64::MAX, millis);
            spans.push((millis(&a.started_at), end));
        }
    }
    for call in &delayed {
        let starts = millis(call.starts_at.as_deref().unwrap());
        for a in client.attempts(&call.id).await.unwrap() {
            assert!(millis(&a.started_at) >= starts, "{a:?} before {starts}");
        }
    }
    // max_running = 1: no two attempts at once, the one cut by the kill included (its lease
    // held its place until it was rescued).
    assert_eq!(most_at_once(&spans), 1, "{spans:?}");
    // rate = 2/s: no window of a second holds more than two starts.
    let mut starts: Vec<i64> = spans.iter().map(|(s, _)| *s).collect();
    starts.sort();
    for (i, t) in starts.iter().enumerate() {
        let within = starts[i..].iter().take_while(|s| **s < t + 1000).count();
        assert!(
            within <= 2,
            "{within} starts in the second from {t}: {starts:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_priorities_are_given_and_shown_and_bad_ones_refused() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(
        dir.path(),
        "app = \"p\"\n[functions.echo]\ncommand = [\"cat\"]\npriority = 3\n",
    );
    let server = Server::start(&dir.path().join("data"), &["--deploy", m.to_str().unwrap()]);
    let url = &server.url;
    let client = server.client();
    // The function's priority, unless the spawn gives one.
    let out = cli(
        url,
        &[
            "spawn",
            "p.echo",
            "--input",
            "1",
            "--key",
            "acme",
            "--priority",
            "-7",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let id = stdout(&out).trim().parse().unwrap();
    let call = wait_done(&client, &id, Duration::from_secs(30)).await;
    assert_eq!((call.priority, call.key.as_deref()), (-7, Some("acme")));
    assert_eq!(call.state, InputState::Succeeded);
    let plain = client.spawn("p.echo", json!(2), None).await.unwrap();
    assert_eq!((plain.priority, plain.key), (3, None));
    let out = cli(url, &["get", id.to_string().as_str()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = cli(url, &["calls"]);
    assert!(
        stdout(&out).contains("p.echo (key acme, priority -7)"),
        "{}",
        stdout(&out)
    );

    // Bad values: 400 naming the field, nothing stored.
    let http = reqwest::Client::new();
    let before = client.calls(&Default::default()).await.unwrap().calls.len();
    let long = "k".repeat(201);
    for (path, body, code, says) in [
        (
            "calls",
            json!({"input": 1, "priority": 1001}),
            "invalid_priority",
            "priority: a priority is between -1000 and 1000, not 1001",
        ),
        (
            "calls",
            json!({"input": 1, "priority": -5000}),
            "invalid_priority",
            "not -5000",
        ),
        (
            "calls",
            json!({"input": 1, "key": long}),
            "invalid_key",
            "key: a key is at most 200 bytes, not 201",
        ),
        (
            "calls",
            json!({"input": 1, "key": ""}),
            "invalid_key",
            "key: a key is not empty",
        ),
        (
            "calls/batch",
            json!({"calls": [{"input": 1}, {"input": 2, "priority": 2000}]}),
            "invalid_priority",
            "calls[1].priority: ",
        ),
        (
            "calls",
            json!({"input": 1, "priority": "high"}),
            "invalid_priority",
            "priority: expected an integer from -1000 to 1000, not \"high\"",
        ),
        (
            "calls",
            json!({"input": 1, "priority": 1.5}),
            "invalid_priority",
            "not 1.5",
        ),
        (
            "calls",
            json!({"input": 1, "key": 5}),
            "invalid_key",
            "key: expected a string, not 5",
        ),
        (
            "map",
            json!({"inputs": [1], "done": true, "key": "a\u{7}b"}),
            "invalid_key",
            "key: a key has no control characters",
        ),
    ] {
        let r = http
            .post(format!("{url}/v1/functions/p.echo/{path}"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400, "{body}");
        let answer: Value = r.json().await.unwrap();
        assert_eq!(answer["error"]["code"], code, "{body}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{body}: {message}");
    }
    assert_eq!(
        client.calls(&Default::default()).await.unwrap().calls.len(),
        before
    );
    // The CLI checks before it sends.
    let out = cli(
        url,
        &["spawn", "p.echo", "--input", "1", "--priority", "1001"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--priority: a priority is between -1000 and 1000"),
        "{}",
        stderr(&out)
    );
    let out = cli(url, &["spawn", "p.echo", "--input", "1", "--key", &long]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--key: a key is at most 200 bytes"),
        "{}",
        stderr(&out)
    );

    // A manifest's bad limits are refused at deploy, each naming its key.
    let bad = manifest(
        dir.path(),
        "app = \"p\"\n[functions.echo]\ncommand = [\"cat\"]\npriority = 5000\n\
         [functions.echo.limits]\nmax_running = 0\nmax_running_per_key = -1\nrate = \"5/fortnight\"\n",
    );
    let out = cli(url, &["deploy", bad.to_str().unwrap()]);
    assert_ne!(out.status.code(), Some(0));
    for says in [
        "functions.echo.priority",
        "functions.echo.limits.max_running: must be between 1 and 1000000, not 0",
        "functions.echo.limits.max_running_per_key",
        "functions.echo.limits.rate: rate \"5/fortnight\"",
    ] {
        assert!(stderr(&out).contains(says), "{says}: {}", stderr(&out));
    }
    assert_eq!(
        client.apps().await.unwrap()[0].version,
        1,
        "nothing deployed"
    );
}

/// The value of the `/metrics` series `name{labels}`, if it is there.
fn series(metrics: &str, name_and_labels: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn why_inputs_wait_is_shown_and_a_limit_does_not_hold_up_another_function_of_a_worker() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(
        dir.path(),
        "app = \"w\"\n\
         [functions.slow]\ncommand = [\"sh\", \"-c\", \"sleep 4; cat\"]\nconcurrency = 4\n\
         [functions.slow.limits]\nkey = \"/tenant\"\nmax_running_per_key = 1\n\
         [functions.once]\ncommand = [\"cat\"]\nconcurrency = 4\n\
         [functions.once.limits]\nrate = \"1/h\"\n\
         [functions.quick]\ncommand = [\"cat\"]\nconcurrency = 4\n",
    );
    let server = Server::start(
        &dir.path().join("data"),
        &["--no-workers", "--deploy", m.to_str().unwrap()],
    );
    let url = &server.url;
    let client = server.client();
    let worker = |functions: &[&str]| {
        let mut command = std::process::Command::new(BIN);
        command.args(["worker", "--server", url, "--concurrency", "4"]);
        for f in functions {
            command.args(["--function", f]);
        }
        Worker(
            command
                .env("RUST_LOG", "warn")
                .env_remove("HOPPER_TOKEN")
                .spawn()
                .unwrap(),
        )
    };
    let _slow = worker(&["w.slow"]);
    // One worker serves a rate-limited function and another.
    let _both = worker(&["w.once", "w.quick"]);

    // A key at its max_running_per_key: its next call says why it waits; another key's runs.
    let first = client
        .spawn("w.slow", json!({"tenant": "acme", "n": 1}), None)
        .await
        .unwrap();
    eventually(
        "acme's first call runs",
        Duration::from_secs(20),
        || async {
            (client.get(&first.id, Duration::ZERO).await.unwrap().state == InputState::Running)
                .then_some(())
        },
    )
    .await;
    let second = client
        .spawn("w.slow", json!({"tenant": "acme", "n": 2}), None)
        .await
        .unwrap();
    let other = client
        .spawn("w.slow", json!({"tenant": "beta"}), None)
        .await
        .unwrap();
    eventually("beta's call runs", Duration::from_secs(20), || async {
        (client.get(&other.id, Duration::ZERO).await.unwrap().state == InputState::Running)
            .then_some(())
    })
    .await;
    let why = "key acme at 1 running (max_running_per_key 1)";
    let call = client.get(&second.id, Duration::ZERO).await.unwrap();
    assert_eq!(call.state, InputState::Pending);
    assert_eq!(call.waiting.as_deref(), Some(why), "{call:?}");
    assert_eq!(
        call.key.as_deref(),
        Some("acme"),
        "the key taken from the input"
    );
    assert_eq!(
        client.get(&other.id, Duration::ZERO).await.unwrap().waiting,
        None
    );
    let f: Value = reqwest::get(format!("{url}/v1/functions/w.slow"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let state = &f["limits_state"];
    assert_eq!(state["running"], 2, "{f}");
    assert_eq!(
        state["busiest_keys"],
        json!([{"key": "acme", "running": 1}, {"key": "beta", "running": 1}])
    );
    assert_eq!(
        state["holds"],
        json!([{"limit": "max_running_per_key", "key": "acme", "waiting": 1, "reason": why}])
    );
    let metrics = server.metrics().await;
    assert_eq!(
        series(
            &metrics,
            "hopper_queue_limited{function=\"w.slow\",limit=\"max_running_per_key\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    let out = cli(url, &["get", &second.id.to_string(), "--timeout", "200ms"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("is still pending; waiting: {why}")),
        "{}",
        stderr(&out)
    );

    // A rate of 1/h: the second call waits on it, and says so.
    let ran = client.spawn("w.once", json!(1), None).await.unwrap();
    assert_eq!(
        wait_done(&client, &ran.id, Duration::from_secs(20))
            .await
            .state,
        InputState::Succeeded
    );
    let held = client.spawn("w.once", json!(2), None).await.unwrap();
    eventually("the rate holds w.once", Duration::from_secs(10), || async {
        let m = server.metrics().await;
        series(
            &m,
            "hopper_limit_holds_total{function=\"w.once\",limit=\"rate\"}",
        )
        .filter(|n| *n >= 1.0)
    })
    .await;
    let call = client.get(&held.id, Duration::ZERO).await.unwrap();
    assert_eq!(call.waiting.as_deref(), Some("rate limit 1/h"));
    let f: Value = reqwest::get(format!("{url}/v1/functions/w.once"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let hold = &f["limits_state"]["holds"][0];
    assert_eq!(
        (&hold["limit"], &hold["waiting"]),
        (&json!("rate"), &json!(1))
    );
    let next = millis(hold["next_start_at"].as_str().unwrap());
    assert!(
        next > chrono::Utc::now().timestamp_millis() + 1_800_000,
        "{f}"
    );

    // The worker that waits on w.once's rate still starts w.quick's delayed call on time,
    // not when its long-poll ends.
    let quick = client
        .spawn_request(
            "w.quick",
            &hopper_core::api::SpawnRequest {
                input: json!("q"),
                delay: Some("1s".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let done = wait_done(&client, &quick.id, Duration::from_secs(30)).await;
    assert_eq!(done.state, InputState::Succeeded);
    let attempts = client.attempts(&quick.id).await.unwrap();
    let late = millis(&attempts[0].started_at) - millis(quick.starts_at.as_deref().unwrap());
    assert!(
        (0..1_500).contains(&late),
        "started {late} ms after its time"
    );
}
