//! Every bad input gets a clear error naming what is wrong and where, and changes nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use common::*;
use serde_json::json;

async fn raw(method: reqwest::Method, url: String, body: Option<&str>) -> (u16, serde_json::Value) {
    let mut req = reqwest::Client::new().request(method, url);
    if let Some(body) = body {
        req = req
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(serde_json::Value::Null))
}

#[tokio::test]
async fn bad_requests_get_an_error_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(
        dir.path(),
        "app = \"demo\"\n[functions.echo]\ncommand = [\"cat\"]\n",
    );
    let server = Server::start(
        &dir.path().join("data"),
        &[
            "--deploy",
            m.to_str().unwrap(),
            "--max-payload",
            "1KiB",
            "--no-workers",
        ],
    );
    let url = &server.url;
    let post = reqwest::Method::POST;

    let (status, body) = raw(
        post.clone(),
        format!("{url}/v1/functions/demo.echo/calls"),
        Some("{\"input\": "),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "invalid_json");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("line 1 column"),
        "{body}"
    );

    let (status, body) = raw(
        post.clone(),
        format!("{url}/v1/functions/demo.nope/calls"),
        Some("{\"input\": 1}"),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "unknown_function");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("demo.nope"),
        "{body}"
    );

    let big = json!({ "input": "x".repeat(2_000) }).to_string();
    let (status, body) = raw(
        post.clone(),
        format!("{url}/v1/functions/demo.echo/calls"),
        Some(&big),
    )
    .await;
    assert_eq!(status, 413);
    assert_eq!(body["error"]["code"], "payload_too_large");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("1024 bytes"),
        "{body}"
    );

    let huge = json!({ "input": "x".repeat(200_000) }).to_string();
    let (status, body) = raw(
        post.clone(),
        format!("{url}/v1/functions/demo.echo/calls"),
        Some(&huge),
    )
    .await;
    assert_eq!(status, 413, "{body}");

    let (status, body) = raw(reqwest::Method::GET, format!("{url}/v1/calls/hc-123"), None).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "invalid_call_id");

    let (status, body) = raw(
        reqwest::Method::GET,
        format!("{url}/v1/calls?state=done"),
        None,
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"].as_str().unwrap().contains("done"),
        "{body}"
    );

    let (status, _) = raw(reqwest::Method::GET, format!("{url}/v1/nowhere"), None).await;
    assert_eq!(status, 404);

    // A misspelt query parameter is refused, never ignored (a filter left out would widen a
    // listing, and a re-run script's selection, to everything), with the closest one.
    for (query, misspelt, meant) in [
        ("stat=failed", "stat", "state"),
        ("functon=demo.echo", "functon", "function"),
        ("state=failed&sinse=1h", "sinse", "since"),
    ] {
        let (status, body) = raw(
            reqwest::Method::GET,
            format!("{url}/v1/calls?{query}"),
            None,
        )
        .await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"]["code"], "invalid_query", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("GET /v1/calls does not take the query parameter \"{misspelt}\"; did you mean {meant}?")),
            "{message}"
        );
    }
    // A known parameter with a bad value, or given twice, is named with what it must be.
    for (path, says) in [
        (
            "calls?limit=-1",
            "limit must be a whole number (0 or more), not \"-1\"",
        ),
        (
            "inputs?limit=ten",
            "limit must be a whole number (0 or more), not \"ten\"",
        ),
        (
            "calls?limit=1&limit=2",
            "the query parameter limit is given more than once; give it once",
        ),
    ] {
        let (status, body) = raw(reqwest::Method::GET, format!("{url}/v1/{path}"), None).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["error"]["message"], says, "{path}");
    }
    let (status, body) = raw(
        post.clone(),
        format!("{url}/v1/functions/demo.echo/calls?wiat=5"),
        Some("{\"input\": 1}"),
    )
    .await;
    assert_eq!(status, 400, "the spawn is refused, not made: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("did you mean wait?"),
        "{body}"
    );
    let (status, body) = raw(
        reqwest::Method::GET,
        format!("{url}/healthz?verbose=1"),
        None,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("it takes none"),
        "{body}"
    );
    // Parameters a route takes still work, and the dashboard's pages take their own.
    let (status, body) = raw(
        reqwest::Method::GET,
        format!("{url}/v1/calls?state=failed&since=1h&limit=5"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let page = reqwest::get(format!("{url}/calls?state=failed"))
        .await
        .unwrap();
    assert_eq!(page.status().as_u16(), 200);

    // From the CLI: exit 2 and the reason.
    let out = cli(url, &["spawn", "demo.echo", "--input", "{oops"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("not valid JSON"), "{}", stderr(&out));
    let out = cli(
        url,
        &[
            "spawn",
            "demo.echo",
            "--input",
            &format!("\"{}\"", "y".repeat(2_000)),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("over the inline limit"),
        "{}",
        stderr(&out)
    );
    let out = cli(url, &["get", "hc-01M8H78GE1ESZ9NVHW73Q628G4"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("no call hc-01M8H78GE1ESZ9NVHW73Q628G4"),
        "{}",
        stderr(&out)
    );

    let page = server.client().calls(&Default::default()).await.unwrap();
    assert!(
        page.calls.is_empty(),
        "no bad request created a call: {:?}",
        page.calls
    );
}

#[tokio::test]
async fn a_broken_manifest_is_refused_with_file_line_and_key_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let good = manifest(
        dir.path(),
        "app = \"demo\"\n[functions.echo]\ncommand = [\"cat\"]\n",
    );
    let server = Server::start(
        &dir.path().join("data"),
        &["--deploy", good.to_str().unwrap(), "--no-workers"],
    );
    let bad = dir.path().join("broken.toml");
    std::fs::write(&bad, "app = \"demo\"\n[functions.echo]\ncommand = [\"cat\"]\ntimeout = \"ten seconds\"\nconcurrency = 0\n").unwrap();
    let out = cli(&server.url, &["deploy", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("broken.toml:4:11: functions.echo.timeout: invalid duration"),
        "{err}"
    );
    assert!(
        err.contains("broken.toml:5:15: functions.echo.concurrency: must be between 1 and"),
        "{err}"
    );
    // The manifest is checked before any server is asked: with none there, the fault still
    // comes first.
    let out = cli("http://127.0.0.1:9", &["deploy", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("broken.toml:4:11: functions.echo.timeout: invalid duration")
            && !stderr(&out).contains("cannot reach"),
        "{}",
        stderr(&out)
    );
    // `--check` only checks: every fault, or that there are none, and nothing is sent.
    let out = cli(
        "http://127.0.0.1:9",
        &["deploy", "--check", bad.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("broken.toml:5:15: functions.echo.concurrency"),
        "{}",
        stderr(&out)
    );
    let out = cli(
        "http://127.0.0.1:9",
        &["deploy", "--check", good.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(": no faults found"),
        "{}",
        stdout(&out)
    );
    let retries = dir.path().join("retries.toml");
    std::fs::write(
        &retries,
        "app = \"demo\"\n[functions.echo]\ncommand = [\"cat\"]\nretries = \"many\"\n",
    )
    .unwrap();
    let out = cli(&server.url, &["deploy", retries.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out)
            .contains("retries.toml:4:11: functions.echo.retries: expected a number of retries"),
        "{}",
        stderr(&out)
    );
    let syntax = dir.path().join("syntax.toml");
    std::fs::write(&syntax, "app = \"demo\"\n[functions.echo\n").unwrap();
    let out = cli(&server.url, &["deploy", syntax.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("syntax.toml:2:"), "{}", stderr(&out));
    let apps = server.client().apps().await.unwrap();
    assert_eq!(apps.len(), 1);
    assert_eq!(apps[0].version, 1, "the refused deploys made no version");
    assert_eq!(apps[0].functions[0].spec.timeout_ms, 300_000);

    // A second deploy makes a new version; a call spawned before keeps its version.
    let before = server.client().spawn("echo", json!(1), None).await.unwrap();
    std::fs::write(
        &good,
        "app = \"demo\"\n[functions.echo]\ncommand = [\"cat\"]\ntimeout = \"5s\"\n",
    )
    .unwrap();
    let out = cli(&server.url, &["deploy", good.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("deployed demo version 2"),
        "{}",
        stdout(&out)
    );
    let after = server.client().spawn("echo", json!(1), None).await.unwrap();
    assert_eq!((before.version, after.version), (1, 2));
}

#[tokio::test]
async fn serve_refuses_a_broken_manifest_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let bad = manifest(
        dir.path(),
        "app = \"demo\"\n[functions.echo]\ncomand = [\"cat\"]\n",
    );
    let out = std::process::Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path().join("data"))
        .arg("--deploy")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("hopper.toml:3:1"), "{}", stderr(&out));
}

#[tokio::test]
async fn a_non_loopback_bind_without_a_token_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(BIN)
        .args(["serve", "--listen", "0.0.0.0:0", "--data"])
        .arg(dir.path())
        .env_remove("HOPPER_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("without a token"), "{}", stderr(&out));
    assert!(
        !dir.path().join("hopper.db").exists(),
        "nothing was created"
    );
}

#[tokio::test]
async fn with_a_token_every_request_needs_it() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(
        dir.path(),
        "app = \"demo\"\n[functions.echo]\ncommand = [\"cat\"]\n",
    );
    let server = Server::start(
        &dir.path().join("data"),
        &["--deploy", m.to_str().unwrap(), "--token", "s3cret"],
    );
    let (status, body) = raw(
        reqwest::Method::GET,
        format!("{}/v1/calls", server.url),
        None,
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "unauthorized");
    let wrong = server
        .client_with_token("guess")
        .calls(&Default::default())
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Some("unauthorized"));
    // The right token works, and the local workers got it too.
    let client = server.client_with_token("s3cret");
    let call = client.spawn("echo", json!("hi"), None).await.unwrap();
    let call = wait_done(&client, &call.id, std::time::Duration::from_secs(30)).await;
    assert_eq!(call.output, Some(json!("hi")));
    let out = std::process::Command::new(BIN)
        .args(["get", call.id.as_str()])
        .env("HOPPER_SERVER", &server.url)
        .env("HOPPER_TOKEN", "s3cret")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[tokio::test]
async fn scoped_tokens_allow_only_their_scopes() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(
        dir.path(),
        "app = \"demo\"\n[functions.echo]\ncommand = [\"cat\"]\n",
    );
    let server = Server::start(
        &dir.path().join("data"),
        &[
            "--deploy",
            m.to_str().unwrap(),
            "--scoped-token",
            "read=r34d",
            "--scoped-token",
            "read,submit=subm1t",
        ],
    );
    let reader = server.client_with_token("r34d");
    let submitter = server.client_with_token("subm1t");
    // Reading works with a read token; spawning does not.
    assert!(reader.calls(&Default::default()).await.is_ok());
    let denied = reader.spawn("demo.echo", json!(1), None).await.unwrap_err();
    assert_eq!(denied.code(), Some("forbidden"));
    assert!(denied.to_string().contains("needs submit"), "{denied}");
    // A submit token spawns; local workers (with their own work token) run the call.
    let call = submitter
        .spawn("demo.echo", json!("scoped"), None)
        .await
        .unwrap();
    let done = wait_done(&submitter, &call.id, std::time::Duration::from_secs(30)).await;
    assert_eq!(done.output, Some(json!("scoped")));
    // Deploying needs admin; the worker protocol needs work.
    let deploy = submitter
        .deploy(&hopper_core::api::DeployRequest {
            manifest: std::fs::read_to_string(&m).unwrap(),
            file: "hopper.toml".into(),
            base_dir: dir.path().display().to_string(),
            snapshot: None,
            snapshot_root: None,
        })
        .await
        .unwrap_err();
    assert_eq!(deploy.code(), Some("forbidden"));
    let register = submitter
        .worker_register(&hopper_core::api::WorkerRegister {
            functions: vec!["demo.echo".into()],
            host: "x".into(),
            pid: 1,
            concurrency: 1,
            machine: None,
        })
        .await
        .unwrap_err();
    assert_eq!(register.code(), Some("forbidden"));
    let (status, _) = raw(
        reqwest::Method::GET,
        format!("{}/metrics", server.url),
        None,
    )
    .await;
    assert_eq!(status, 401, "metrics need a token too");
    // A bad scope is refused at start.
    let out = std::process::Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--scoped-token",
            "root=x",
            "--data",
        ])
        .arg(dir.path().join("other"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("unknown scope"), "{}", stderr(&out));
}

#[test]
fn server_urls_and_schema_names_are_checked_before_anything_is_sent() {
    for bad in ["garbage url", "http://127.0.0.1:99999", ",,", "ftp://x"] {
        let out = std::process::Command::new(BIN)
            .args(["calls", "--server", bad])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("--server") || stderr(&out).contains("empty"),
            "{bad}: {}",
            stderr(&out)
        );
    }
    for bad in ["", "a; drop", "x -c statement_timeout=1", "Upper"] {
        let out = std::process::Command::new(BIN)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--data",
                "/nonexistent/never",
            ])
            .args(["--database", "postgres://nobody@127.0.0.1:1/none"])
            .args(["--database-schema", bad])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("--database-schema"),
            "{bad:?}: {}",
            stderr(&out)
        );
    }
}
