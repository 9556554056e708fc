//! Failed inputs found across calls and run again: `GET /v1/inputs` and `hopper inputs` list
//! them (a map's among its successes), `POST /v1/calls/{id}/rerun` runs one again as a call
//! that names it, idempotently, and `hopper rerun --failed` runs a selection again so that the
//! same re-run twice makes no second call.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use std::time::Duration;

use common::*;
use hopper_core::InputState;
use serde_json::{json, Value};

/// `f.picky` fails on 3 and 7 until the file `fixed` exists (beside the manifest).
fn app(dir: &std::path::Path) -> String {
    let fixed = dir.join("fixed");
    format!(
        r#"
app = "f"
[functions.picky]
command = ["sh", "-c", "read x; if [ ! -e {fixed} ]; then case $x in 3|7) echo no $x >&2; exit 4;; esac; fi; echo $x"]
concurrency = 4
"#,
        fixed = fixed.display()
    )
}

async fn send(method: reqwest::Method, url: String, body: Option<Value>) -> (u16, Value) {
    let mut req = reqwest::Client::new().request(method, url);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let response = req.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_inputs_are_found_across_calls_and_run_again_once() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(dir.path(), &app(dir.path()));
    let server = Server::start(&dir.path().join("data"), &["--deploy", m.to_str().unwrap()]);
    let (client, url) = (server.client(), server.url.clone());
    let map = client
        .map_start(
            "f.picky",
            &hopper_core::api::MapRequest {
                inputs: (0..10).map(|i| json!(i)).collect(),
                done: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    wait_done(&client, &map.id, Duration::from_secs(30)).await;
    let single = client.spawn("f.picky", json!(7), None).await.unwrap();
    wait_done(&client, &single.id, Duration::from_secs(30)).await;

    // Listed across calls, newest failure first, with their errors: 3 of them.
    let (status, page) = send(
        reqwest::Method::GET,
        format!("{url}/v1/inputs?state=failed&since=1h&function=f.picky"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{page}");
    let found: Vec<(String, i64)> = page["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["call_id"].as_str().unwrap().to_string(),
                i["index"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(found.len(), 3, "{page}");
    assert_eq!(
        found[0],
        (single.id.to_string(), 0),
        "the newest first: {page}"
    );
    for index in [3, 7] {
        assert!(found.contains(&(map.id.to_string(), index)), "{page}");
    }
    assert_eq!(page["inputs"][0]["error"]["code"], "exit_code", "{page}");
    assert_eq!(page["inputs"][0]["function"], "f.picky", "{page}");
    // A page at a time, each input once.
    let mut paged = Vec::new();
    let mut cursor = String::new();
    loop {
        let (_, page) = send(
            reqwest::Method::GET,
            format!("{url}/v1/inputs?limit=1{cursor}"),
            None,
        )
        .await;
        let inputs = page["inputs"].as_array().unwrap();
        assert!(inputs.len() <= 1, "{page}");
        paged.extend(inputs.iter().map(|i| {
            (
                i["call_id"].as_str().unwrap().to_string(),
                i["index"].as_i64().unwrap(),
            )
        }));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => break,
        }
    }
    assert_eq!(paged, found);
    // The CLI's table.
    let out = cli(&url, &["inputs", "--since", "1h", "--function", "f.picky"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let table = stdout(&out);
    assert!(
        table.contains(map.id.as_str()) && table.contains("exit_code"),
        "{table}"
    );
    // Bad selections are refused, naming what is wrong.
    for (query, says) in [
        ("state=succeeded", "failed inputs only"),
        ("since=yesterday", "since must be"),
        ("limit=0", "limit must be"),
        ("cursor=zzz", "cursor"),
    ] {
        let (status, body) = send(
            reqwest::Method::GET,
            format!("{url}/v1/inputs?{query}"),
            None,
        )
        .await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(
            body["error"]["message"].as_str().unwrap().contains(says),
            "{query}: {body}"
        );
    }

    // One input of the map again (the cause fixed): a call that names it, and that it names.
    std::fs::write(dir.path().join("fixed"), "").unwrap();
    let rerun_url = format!("{url}/v1/calls/{}/rerun", map.id);
    let (status, rerun) = send(
        reqwest::Method::POST,
        rerun_url.clone(),
        Some(json!({"index": 3})),
    )
    .await;
    assert_eq!(status, 201, "{rerun}");
    assert_eq!(rerun["origin"], "rerun");
    assert_eq!(
        rerun["rerun_of"],
        json!({"call_id": map.id.as_str(), "index": 3})
    );
    let rerun_id: hopper_core::CallId = rerun["id"].as_str().unwrap().parse().unwrap();
    let done = wait_done(&client, &rerun_id, Duration::from_secs(30)).await;
    assert_eq!(
        (done.state, done.output),
        (InputState::Succeeded, Some(json!(3)))
    );
    let original = client.get(&map.id, Duration::ZERO).await.unwrap();
    assert_eq!(original.reruns.len(), 1, "{original:?}");
    assert_eq!(
        (original.reruns[0].index, &original.reruns[0].call_id),
        (3, &rerun_id)
    );
    assert_eq!(client.input(&map.id, 3).await.unwrap().reruns.len(), 1);
    // Again: refused, naming the re-run that did not fail; with force, a new call.
    let (status, body) = send(
        reqwest::Method::POST,
        rerun_url.clone(),
        Some(json!({"index": 3})),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "already_rerun");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains(rerun_id.as_str()),
        "{body}"
    );
    let (status, forced) = send(
        reqwest::Method::POST,
        rerun_url.clone(),
        Some(json!({"index": 3, "force": true})),
    )
    .await;
    assert_eq!(status, 201, "{forced}");
    assert_ne!(forced["id"], rerun["id"]);
    // An idempotency key names a re-run: the same request twice makes one call.
    let keyed = || {
        reqwest::Client::new()
            .post(rerun_url.clone())
            .header("Idempotency-Key", "retry-input-7")
            .json(&json!({"index": 7}))
            .send()
    };
    let first = keyed().await.unwrap();
    assert_eq!(first.status().as_u16(), 201);
    let first: Value = first.json().await.unwrap();
    let second = keyed().await.unwrap();
    assert_eq!(second.status().as_u16(), 200);
    let second: Value = second.json().await.unwrap();
    assert_eq!(first["id"], second["id"]);
    // Bad requests change nothing.
    for (body, status, code) in [
        (json!({"index": 99}), 404, "unknown_input"),
        (json!({"indx": 1}), 400, "invalid_json"),
    ] {
        let (got, answer) =
            send(reqwest::Method::POST, rerun_url.clone(), Some(body.clone())).await;
        assert_eq!(
            (got, answer["error"]["code"].as_str()),
            (status, Some(code)),
            "{body}: {answer}"
        );
    }

    // Every failed input of the last hour again: only the one not re-run yet (the spawn's).
    let rerun_failed = || {
        cli(
            &url,
            &[
                "rerun",
                "--failed",
                "--since",
                "1h",
                "--function",
                "f.picky",
            ],
        )
    };
    let out = rerun_failed();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let made: Vec<String> = stdout(&out).lines().map(str::to_string).collect();
    assert_eq!(made.len(), 1, "{}", stdout(&out));
    assert!(made[0].ends_with(&format!(" {} 0", single.id)), "{made:?}");
    assert!(
        stderr(&out).contains("re-ran 1 failed input; 2 inputs re-run before left out"),
        "{}",
        stderr(&out)
    );
    // The same re-run twice makes no second call (resque #548, Hangfire #4).
    let calls_before = client.calls(&Default::default()).await.unwrap().calls.len();
    let out = rerun_failed();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "", "nothing re-run the second time");
    assert!(
        stderr(&out).contains("re-ran 0 failed inputs; 3 inputs re-run before left out"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        client.calls(&Default::default()).await.unwrap().calls.len(),
        calls_before
    );
    // And one input from the CLI, by index; a selection is needed for --failed.
    let out = cli(&url, &["rerun", map.id.as_str(), "--index", "7", "--force"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = cli(&url, &["rerun", "--failed"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--since"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bulk_rerun_runs_an_input_once_and_its_keys_cannot_be_taken() {
    let dir = tempfile::tempdir().unwrap();
    let app = "app = \"g\"\n[functions.bad]\ncommand = [\"sh\", \"-c\", \"exit 4\"]\n[functions.gone]\ncommand = [\"sh\", \"-c\", \"exit 4\"]\n";
    let m = manifest(dir.path(), app);
    let server = Server::start(&dir.path().join("data"), &["--deploy", m.to_str().unwrap()]);
    let (client, url) = (server.client(), server.url.clone());
    let first = client.spawn("g.bad", json!(1), None).await.unwrap();
    wait_done(&client, &first.id, Duration::from_secs(30)).await;
    let doomed = client.spawn("g.gone", json!(2), None).await.unwrap();
    wait_done(&client, &doomed.id, Duration::from_secs(30)).await;
    // Re-run by hand twice; both fail again.
    let rerun_url = format!("{url}/v1/calls/{}/rerun", first.id);
    let mut made = Vec::new();
    for _ in 0..2 {
        let (status, again) = send(
            reqwest::Method::POST,
            rerun_url.clone(),
            Some(json!({"force": true})),
        )
        .await;
        assert_eq!(status, 201, "{again}");
        let id: hopper_core::CallId = again["id"].as_str().unwrap().parse().unwrap();
        wait_done(&client, &id, Duration::from_secs(30)).await;
        made.push(id);
    }
    // The function `gone` is removed: its input is refused, the others are re-run all the same.
    std::fs::write(
        &m,
        "app = \"g\"\n[functions.bad]\ncommand = [\"sh\", \"-c\", \"exit 4\"]\n",
    )
    .unwrap();
    let out = cli(&url, &["deploy", m.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // The original, and the first re-run, stand for one input: only its latest re-run is run.
    let (status, answer) = send(
        reqwest::Method::POST,
        format!("{url}/v1/inputs/rerun"),
        Some(json!({"app": "g", "since": "1h"})),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let rerun: Vec<&str> = answer["rerun"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["call_id"].as_str().unwrap())
        .collect();
    assert_eq!(rerun, [made[1].as_str()], "{answer}");
    assert_eq!(answer["skipped"].as_array().unwrap().len(), 2, "{answer}");
    assert_eq!(
        answer["refused"][0]["call_id"],
        doomed.id.as_str(),
        "{answer}"
    );
    assert!(
        answer["refused"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("g.gone is no longer deployed"),
        "{answer}"
    );
    // A selection is needed; Hopper's own keys cannot be taken; a key naming another call is
    // refused, not answered with that call.
    let (status, answer) = send(
        reqwest::Method::POST,
        format!("{url}/v1/inputs/rerun"),
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    let squat = reqwest::Client::new()
        .post(format!("{url}/v1/functions/g.bad/calls"))
        .header("Idempotency-Key", format!("hopper:rerun:{}:0:9", first.id))
        .json(&json!({"input": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(squat.status().as_u16(), 400);
    let other = client
        .spawn("g.bad", json!(1), Some("mine-1".into()))
        .await
        .unwrap();
    let named = reqwest::Client::new()
        .post(rerun_url.clone())
        .header("Idempotency-Key", "mine-1")
        .json(&json!({"force": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(named.status().as_u16(), 409);
    let body: Value = named.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains(other.id.as_str()),
        "{body}"
    );
    // A map's input must be named; HEAD refuses a misspelt parameter as GET does.
    let map = client
        .map_start(
            "g.bad",
            &hopper_core::api::MapRequest {
                inputs: vec![json!(1), json!(2)],
                done: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    wait_done(&client, &map.id, Duration::from_secs(30)).await;
    let (status, answer) = send(
        reqwest::Method::POST,
        format!("{url}/v1/calls/{}/rerun", map.id),
        None,
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("say which to re-run"),
        "{answer}"
    );
    let head = reqwest::Client::new()
        .head(format!("{url}/v1/calls?stat=failed"))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status().as_u16(), 400);
}
