//! What the dashboard reads and does, over HTTP: statistics, time-bounded call lists, re-run,
//! one input, the change stream, the pages themselves, and signing in with a cookie.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const APP: &str = r#"
app = "s"
[functions.ok]
command = ["sh", "-c", "sleep 0.05; cat"]
[functions.bad]
command = ["sh", "-c", "exit 4"]
"#;

async fn get_json(url: &str) -> (u16, Value) {
    let response = reqwest::get(url).await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn stats_count_what_ended_per_function_with_durations() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(dir.path(), APP);
    let server = Server::start(&dir.path().join("data"), &["--deploy", m.to_str().unwrap()]);
    let client = server.client();
    for i in 0..6 {
        let call = client.spawn("s.ok", json!(i), None).await.unwrap();
        wait_done(&client, &call.id, Duration::from_secs(30)).await;
    }
    let bad = client.spawn("s.bad", json!(null), None).await.unwrap();
    wait_done(&client, &bad.id, Duration::from_secs(30)).await;

    let stats = client.stats("15m", None).await.unwrap();
    assert_eq!(stats.step_ms, 10_000);
    assert_eq!(stats.timeline.len(), 90, "15 minutes of 10-second steps");
    let total: i64 = stats.timeline.iter().map(|p| p.succeeded).sum();
    assert_eq!(total, 6);
    assert_eq!(stats.timeline.iter().map(|p| p.failed).sum::<i64>(), 1);
    let ok = stats
        .functions
        .iter()
        .find(|f| f.function == "s.ok")
        .unwrap();
    assert_eq!((ok.succeeded, ok.failed, ok.pending), (6, 0, 0));
    assert_eq!(ok.success_rate, Some(1.0));
    let p50 = ok.p50_ms.unwrap();
    assert!(
        (25.0..2_500.0).contains(&p50),
        "sleep 0.05 runs 50 ms or more: {p50}"
    );
    let bad_stats = stats
        .functions
        .iter()
        .find(|f| f.function == "s.bad")
        .unwrap();
    assert_eq!(bad_stats.success_rate, Some(0.0));
    assert!(stats.workers >= 1, "local workers count: {stats:?}");

    let one = client.stats("24h", Some("s.bad")).await.unwrap();
    assert_eq!(one.functions.len(), 1);
    assert_eq!(one.step_ms, 480_000, "24 hours in at most 180 steps");
    let (status, body) = get_json(&format!("{}/v1/stats?window=2s", server.url)).await;
    assert_eq!(status, 400);
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("window"));
}

#[tokio::test]
async fn calls_are_listed_by_time_rerun_and_read_by_input() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(dir.path(), APP);
    let server = Server::start(&dir.path().join("data"), &["--deploy", m.to_str().unwrap()]);
    let client = server.client();
    let first = client.spawn("s.ok", json!({"n": 1}), None).await.unwrap();
    wait_done(&client, &first.id, Duration::from_secs(30)).await;

    let list = |q: &str| format!("{}/v1/calls?{q}", server.url);
    let (_, recent) = get_json(&list("since=1h")).await;
    assert_eq!(recent["calls"].as_array().unwrap().len(), 1);
    let (_, old) = get_json(&list("until=1h")).await;
    assert!(old["calls"].as_array().unwrap().is_empty(), "{old}");
    let (_, future) = get_json(&list("since=2999-01-01T00:00:00Z")).await;
    assert!(future["calls"].as_array().unwrap().is_empty());
    let (status, body) = get_json(&list("since=yesterday")).await;
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"].as_str().unwrap().contains("since"),
        "{body}"
    );
    let cli_list = cli(&server.url, &["calls", "--since", "1h", "--json"]);
    assert!(stdout(&cli_list).contains(first.id.as_str()));

    // Re-run: a new call, same function and input.
    let again = client.rerun(&first.id).await.unwrap();
    assert_ne!(again.id, first.id);
    let again = wait_done(&client, &again.id, Duration::from_secs(30)).await;
    assert_eq!(again.output, Some(json!({"n": 1})));
    let input = client.input(&again.id, 0).await.unwrap();
    assert_eq!(input.input, json!({"n": 1}));
    assert_eq!(input.output, Some(json!({"n": 1})));

    // An input past a map's end is unknown (re-runs of maps' inputs: failed_inputs_e2e).
    let map = client
        .map_start(
            "s.ok",
            &hopper_core::api::MapRequest {
                inputs: vec![json!(1), json!(2)],
                done: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let (status, _) = get_json(&format!("{}/v1/calls/{}/inputs/7", server.url, map.id)).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn the_pages_are_served_and_changes_are_announced() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(dir.path(), APP);
    let server = Server::start(&dir.path().join("data"), &["--deploy", m.to_str().unwrap()]);
    for path in [
        "/",
        "/calls",
        "/calls/hc-anything",
        "/functions/s.ok",
        "/workers",
        "/schedules",
    ] {
        let response = reqwest::get(format!("{}{path}", server.url)).await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert!(response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html"));
        let body = response.text().await.unwrap();
        assert!(body.contains("/assets/app.js"), "{path}: {body}");
    }
    let script = reqwest::get(format!("{}/assets/app.js", server.url))
        .await
        .unwrap();
    assert!(script.headers()["content-type"]
        .to_str()
        .unwrap()
        .contains("javascript"));
    let missing = reqwest::get(format!("{}/assets/nope.js", server.url))
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    // The change stream says so soon after a call is spawned: within the half-second gap
    // between events, well before the 3-second tick would send one anyway.
    let mut events = reqwest::get(format!("{}/v1/events", server.url))
        .await
        .unwrap();
    assert!(events.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let first = tokio::time::timeout(Duration::from_secs(5), events.chunk())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&first).contains("event: change"));
    server.client().spawn("s.ok", json!(1), None).await.unwrap();
    let next = tokio::time::timeout(Duration::from_millis(2_000), events.chunk())
        .await
        .expect("a change event soon after the spawn, not at the tick")
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&next).contains("event: change"));
}

#[tokio::test]
async fn a_cookie_signs_in_and_changes_need_the_dashboard_header() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(dir.path(), APP);
    let server = Server::start(
        &dir.path().join("data"),
        &[
            "--deploy",
            m.to_str().unwrap(),
            "--token",
            "admin-secret",
            "--scoped-token",
            "read=reader-secret",
        ],
    );
    let http = reqwest::Client::new();
    let session = |token: &str| {
        http.post(format!("{}/v1/session", server.url))
            .json(&json!({ "token": token }))
            .send()
    };
    assert_eq!(session("wrong").await.unwrap().status(), 401);
    let signed = session("admin-secret").await.unwrap();
    assert_eq!(signed.status(), 204);
    let cookie = signed.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap().to_string();
    // Other apps on localhost see the cookie: it must not be the token, in any spelling.
    let hex: String = "admin-secret".bytes().map(|b| format!("{b:02x}")).collect();
    assert!(
        !pair.contains("admin-secret") && !pair.contains(&hex),
        "the cookie gives the token away: {pair}"
    );

    let call = server
        .client_with_token("admin-secret")
        .spawn("s.ok", json!(1), None)
        .await
        .unwrap();
    let with_cookie = |method: reqwest::Method, path: &str| {
        http.request(method, format!("{}{path}", server.url))
            .header("cookie", pair.clone())
    };
    assert_eq!(
        with_cookie(reqwest::Method::GET, "/v1/calls")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        http.get(format!("{}/v1/calls", server.url))
            .send()
            .await
            .unwrap()
            .status(),
        401,
        "nothing without the token"
    );
    let cancel = format!("/v1/calls/{}/cancel", call.id);
    let forged = with_cookie(reqwest::Method::POST, &cancel)
        .send()
        .await
        .unwrap();
    assert_eq!(
        forged.status(),
        403,
        "a cookie alone cannot change anything"
    );
    let from_dashboard = with_cookie(reqwest::Method::POST, &cancel)
        .header("x-hopper-dashboard", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(from_dashboard.status(), 200);

    // A read token signs in but cannot cancel.
    let reader = session("reader-secret").await.unwrap();
    let pair = reader.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let denied = http
        .post(format!("{}{cancel}", server.url))
        .header("cookie", pair)
        .header("x-hopper-dashboard", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 403);
    let out = http
        .delete(format!("{}/v1/session", server.url))
        .send()
        .await
        .unwrap();
    assert!(out.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
}
