//! `/metrics`, read by a Prometheus text-format parser.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use serde_json::json;

/// One sample: name, labels, value.
type Sample = (String, HashMap<String, String>, f64);

/// Parses the Prometheus text format (0.0.4), failing on any malformed line.
fn parse(text: &str) -> (Vec<Sample>, HashMap<String, String>) {
    let mut samples = Vec::new();
    let mut types = HashMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            types.insert(name.to_string(), kind.to_string());
            continue;
        }
        if line.starts_with('#') {
            assert!(line.starts_with("# HELP "), "unknown comment: {line}");
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("unclosed labels: {line}"));
                let mut labels = HashMap::new();
                for pair in body.split("\",").filter(|p| !p.is_empty()) {
                    let (k, v) = pair
                        .split_once("=\"")
                        .unwrap_or_else(|| panic!("bad label in {line}"));
                    labels.insert(k.to_string(), v.trim_end_matches('"').to_string());
                }
                (name.to_string(), labels)
            }
            None => (series.to_string(), HashMap::new()),
        };
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad name: {name}"
        );
        samples.push((name, labels, value));
    }
    (samples, types)
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| *v)
}

#[tokio::test]
async fn metrics_count_inputs_retries_durations_queue_depth_and_workers() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(
        dir.path(),
        r#"
app = "m"
[functions.ok]
command = ["cat"]
[functions.bad]
command = ["false"]
retries = { max_retries = 1, initial_delay = "10ms" }
[functions.idle]
external = true
"#,
    );
    let server = Server::start(&dir.path().join("data"), &["--deploy", m.to_str().unwrap()]);
    let client = server.client();
    for i in 0..3 {
        let call = client.spawn("m.ok", json!(i), None).await.unwrap();
        wait_done(&client, &call.id, Duration::from_secs(30)).await;
    }
    let bad = client.spawn("m.bad", json!(0), None).await.unwrap();
    wait_done(&client, &bad.id, Duration::from_secs(30)).await;
    for _ in 0..2 {
        client.spawn("m.idle", json!(0), None).await.unwrap();
    }
    let response = reqwest::get(format!("{}/metrics", server.url))
        .await
        .unwrap();
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = response.text().await.unwrap();
    let (samples, types) = parse(&text);
    assert_eq!(
        value(
            &samples,
            "hopper_inputs_total",
            &[("function", "m.ok"), ("state", "succeeded")]
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        value(
            &samples,
            "hopper_inputs_total",
            &[("function", "m.bad"), ("state", "failed")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&samples, "hopper_retries_total", &[("function", "m.bad")]),
        Some(1.0)
    );
    assert_eq!(
        value(
            &samples,
            "hopper_attempts_total",
            &[("function", "m.bad"), ("effect", "failed")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&samples, "hopper_queue_pending", &[("function", "m.idle")]),
        Some(2.0),
        "queue depth for autoscalers"
    );
    assert_eq!(
        value(&samples, "hopper_queue_pending", &[("function", "m.ok")]),
        Some(0.0)
    );
    assert_eq!(
        value(
            &samples,
            "hopper_calls_total",
            &[("function", "m.ok"), ("origin", "spawn")]
        ),
        Some(3.0)
    );
    assert!(value(&samples, "hopper_workers", &[("state", "active")]).unwrap() >= 2.0);
    assert_eq!(
        types
            .get("hopper_attempt_duration_seconds")
            .map(String::as_str),
        Some("histogram")
    );
    assert_eq!(
        value(
            &samples,
            "hopper_attempt_duration_seconds_count",
            &[("function", "m.ok")]
        ),
        Some(3.0)
    );
    assert!(samples
        .iter()
        .any(|(n, l, _)| n == "hopper_attempt_duration_seconds_bucket"
            && l.get("le").map(String::as_str) == Some("+Inf")));
    assert_eq!(
        types.get("hopper_inputs_total").map(String::as_str),
        Some("counter")
    );
    assert_eq!(
        types.get("hopper_queue_pending").map(String::as_str),
        Some("gauge")
    );
}

#[tokio::test]
async fn every_series_an_operator_alerts_on_is_there_before_its_first_event() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(
        dir.path(),
        "app = \"fresh\"\n[functions.idle]\ncommand = [\"cat\"]\n",
    );
    let server = Server::start(
        &dir.path().join("data"),
        &["--deploy", m.to_str().unwrap(), "--no-workers"],
    );
    // One request the router knows, one it does not.
    let calls = reqwest::get(format!("{}/v1/calls", server.url))
        .await
        .unwrap();
    assert_eq!(calls.status(), 200);
    let missing = reqwest::get(format!("{}/v1/nothing-here", server.url))
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let (samples, types) = parse(&server.metrics().await);
    let f = ("function", "fresh.idle");
    for (name, labels) in [
        ("hopper_inputs_total", vec![f, ("state", "failed")]),
        ("hopper_inputs_total", vec![f, ("state", "succeeded")]),
        ("hopper_calls_total", vec![f, ("origin", "spawn")]),
        ("hopper_retries_total", vec![f]),
        ("hopper_queue_pending", vec![f]),
        ("hopper_server_pauses_total", vec![]),
        ("hopper_clock_steps_total", vec![("direction", "backward")]),
        ("hopper_workers_waiting", vec![]),
    ] {
        assert_eq!(
            value(&samples, name, &labels),
            Some(0.0),
            "{name}{labels:?} at 0 before anything happened"
        );
    }
    for name in [
        "hopper_process_cpu_seconds",
        "hopper_process_resident_memory_bytes",
        "hopper_process_open_fds",
    ] {
        assert!(
            value(&samples, name, &[]).is_some_and(|v| v > 0.0),
            "{name} in {samples:?}"
        );
    }
    let requests = |route: &str, status: &str| {
        value(
            &samples,
            "hopper_http_requests_total",
            &[("route", route), ("method", "GET"), ("status", status)],
        )
    };
    assert_eq!(requests("/v1/calls", "2xx"), Some(1.0));
    assert_eq!(requests("unmatched", "4xx"), Some(1.0));
    assert_eq!(
        types
            .get("hopper_http_request_duration_seconds")
            .map(String::as_str),
        Some("histogram")
    );
}
