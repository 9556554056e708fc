//! Delayed calls: stored at once, pending until their start and never leased before it
//! (through a `kill -9` of the server too), cancellable meanwhile, shown with their start,
//! and bad delays refused with the field named and nothing stored.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use std::time::Duration;

use common::*;
use hopper_core::api::SpawnRequest;
use hopper_core::InputState;
use serde_json::{json, Value};

const APP: &str = "app = \"w\"\n[functions.echo]\ncommand = [\"cat\"]\n";

fn millis(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .unwrap()
        .timestamp_millis()
}

/// Every attempt of `call` started at or after its start.
async fn started_after_its_start(client: &hopper_sdk::Client, call: &hopper_core::api::CallView) {
    let starts = millis(
        call.starts_at
            .as_deref()
            .expect("a delayed call says when it starts"),
    );
    let attempts = client.attempts(&call.id).await.unwrap();
    assert!(!attempts.is_empty(), "{call:?}");
    for a in attempts {
        assert!(
            millis(&a.started_at) >= starts,
            "{a:?} started before {starts}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_call_waits_for_its_start_through_a_kill_and_can_be_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(dir.path(), APP);
    let mut server = Server::start(&dir.path().join("data"), &["--deploy", m.to_str().unwrap()]);
    let client = server.client();
    let delayed = |input: Value, delay: &str| SpawnRequest {
        input,
        idempotency_key: None,
        delay: Some(delay.into()),
        start_at: None,
        key: None,
        priority: None,
    };
    let call = client
        .spawn_request("w.echo", &delayed(json!("later"), "3s"))
        .await
        .unwrap();
    assert_eq!(call.state, InputState::Pending);
    let starts = millis(call.starts_at.as_deref().unwrap());
    let created = millis(&call.created_at);
    assert!((2_900..=3_100).contains(&(starts - created)), "{call:?}");
    // One to cancel before it starts, and one that outlives a kill -9 of the server.
    let cancelled = client
        .spawn_request("w.echo", &delayed(json!("never"), "1h"))
        .await
        .unwrap();
    let survivor = client
        .spawn_request("w.echo", &delayed(json!("after"), "4s"))
        .await
        .unwrap();
    let now = client.cancel(&cancelled.id).await.unwrap();
    assert_eq!(now.state, InputState::Cancelled);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let waiting = client.get(&call.id, Duration::ZERO).await.unwrap();
    assert_eq!(
        (waiting.state, waiting.attempts),
        (InputState::Pending, 0),
        "{waiting:?}"
    );
    server.kill9();
    server = Server::start_again(&server, &["--deploy", m.to_str().unwrap()]);
    let client = server.client();
    for (call, output) in [(&call, "later"), (&survivor, "after")] {
        let done = wait_done(&client, &call.id, Duration::from_secs(30)).await;
        assert_eq!(
            (done.state, done.output.clone()),
            (InputState::Succeeded, Some(json!(output)))
        );
        started_after_its_start(&client, &done).await;
    }
    let cancelled = client.get(&cancelled.id, Duration::ZERO).await.unwrap();
    assert_eq!(
        (cancelled.state, cancelled.attempts),
        (InputState::Cancelled, 0)
    );
    // From the CLI: when it starts, and the calls list says it waits.
    let out = cli(
        &server.url,
        &["spawn", "w.echo", "--input", "1", "--delay", "1h"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("starts at "), "{}", stderr(&out));
    let out = cli(&server.url, &["calls"]);
    assert!(stdout(&out).contains("pending until "), "{}", stdout(&out));
    // A delayed map: every input, later chunks' too, after its start.
    let inputs = dir.path().join("inputs.jsonl");
    std::fs::write(&inputs, "1\n2\n3\n4\n5\n").unwrap();
    let out = cli(
        &server.url,
        &[
            "map",
            "w.echo",
            inputs.to_str().unwrap(),
            "--delay",
            "2s",
            "--chunk-size",
            "2",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out).lines().count(), 5, "{}", stdout(&out));
    let maps = client
        .calls(&hopper_sdk::CallFilter {
            origin: Some("map".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let map = &maps.calls[0];
    assert_eq!(map.inputs.succeeded, 5, "{map:?}");
    started_after_its_start(&client, map).await;
    // A map at a time.
    let at = (chrono::Utc::now() + chrono::Duration::seconds(2))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let out = cli(
        &server.url,
        &["map", "w.echo", inputs.to_str().unwrap(), "--start-at", &at],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let maps = client
        .calls(&hopper_sdk::CallFilter {
            origin: Some("map".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let map = &maps.calls[0];
    assert_eq!(map.starts_at.as_deref(), Some(at.as_str()), "{map:?}");
    assert_eq!(map.inputs.succeeded, 5, "{map:?}");
    started_after_its_start(&client, map).await;
    let out = cli(
        &server.url,
        &[
            "map",
            "w.echo",
            inputs.to_str().unwrap(),
            "--start-at",
            "soon",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("start_at: \"soon\" is not an RFC 3339 time"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_delays_are_refused_naming_the_field_and_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(dir.path(), APP);
    let server = Server::start(&dir.path().join("data"), &["--deploy", m.to_str().unwrap()]);
    let url = &server.url;
    let http = reqwest::Client::new();
    let post = |path: String, body: Value| {
        let http = http.clone();
        async move {
            let r = http.post(path).json(&body).send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let spawn = format!("{url}/v1/functions/w.echo/calls");
    for (body, says) in [
        (
            json!({"input": 1, "delay": "1m", "start_at": "2030-01-01T00:00:00Z"}),
            "delay and start_at: give one of them",
        ),
        (
            json!({"input": 1, "start_at": "2001-01-01T00:00:00Z"}),
            "start_at: 2001-01-01T00:00:00Z is in the past",
        ),
        (
            json!({"input": 1, "start_at": "2126-01-01T00:00:00Z"}),
            "more than a year ahead",
        ),
        (
            json!({"input": 1, "start_at": "tomorrow"}),
            "start_at: \"tomorrow\" is not an RFC 3339 time",
        ),
        (json!({"input": 1, "delay": "5 fortnights"}), "delay: "),
        (json!({"input": 1, "delay": "400d"}), "longer than a year"),
    ] {
        let (status, answer) = post(spawn.clone(), body.clone()).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["error"]["code"], "invalid_delay", "{body}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{body}: {message}");
    }
    // A bulk spawn names the entry, and makes none of its calls.
    let (status, answer) = post(
        format!("{spawn}/batch"),
        json!({"calls": [{"input": 1, "delay": "1m"}, {"input": 2, "delay": "soon"}]}),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("calls[1].delay: "),
        "{answer}"
    );
    let (status, answer) = post(
        format!("{url}/v1/functions/w.echo/map"),
        json!({"inputs": [1], "done": true, "start_at": "yesterday"}),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    let page = server.client().calls(&Default::default()).await.unwrap();
    assert!(page.calls.is_empty(), "nothing stored: {:?}", page.calls);
    // The CLI refuses both at once before sending anything.
    let out = cli(
        url,
        &[
            "spawn",
            "w.echo",
            "--input",
            "1",
            "--delay",
            "1m",
            "--start-at",
            "2030-01-01T00:00:00Z",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}
