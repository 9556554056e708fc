//! Security and protocol hardening through the real server: no web page can drive a local
//! server, every route keeps to its scope (HEAD included), answers carry only what a token
//! may read, one value cannot crash or wedge anything, slow clients are cut off, every
//! error has the API's JSON shape, and tokens from a file come and go without a restart.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const APP: &str = r#"
app = "s"
[functions.echo]
command = ["cat"]
[functions.deep]
command = ["python3", "-c", "print('[' * 100 + ']' * 100)"]
[functions.huge_int]
command = ["sh", "-c", "echo 123456789012345678901234567890123456789"]
[functions.slow]
command = ["sh", "-c", "sleep 30"]
"#;

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

async fn error_code(response: reqwest::Response) -> (StatusCode, String) {
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body: Value = response
        .json()
        .await
        .unwrap_or_else(|e| panic!("the {status} answer is not JSON ({content_type}): {e}"));
    let code = body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code in {body}"))
        .to_string();
    assert!(body["error"]["message"].is_string(), "{body}");
    (status, code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_web_page_cannot_deploy_or_spawn_on_a_server_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(dir.path(), APP);
    let server = Server::start(
        &dir.path().join("data"),
        &[
            "--deploy",
            m.to_str().unwrap(),
            "--allow-origin",
            "http://app.example:3000",
            "--allow-host",
            "hopper.internal",
        ],
    );
    let proof = dir.path().join("proof");
    let evil_manifest = format!(
        "app = \"x\"\n[functions.f]\ncommand = [\"sh\", \"-c\", \"id > {}\"]\n",
        proof.display()
    );
    let body = json!({"manifest": evil_manifest, "file": "x.toml", "base_dir": "/tmp"}).to_string();
    let client = http();
    // A page's simple request: text/plain, cross-site.
    let simple = client
        .post(format!("{}/v1/apps", server.url))
        .header("origin", "https://evil.example")
        .header("content-type", "text/plain")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(simple).await,
        (StatusCode::FORBIDDEN, "forbidden_origin".into())
    );
    // The same with a JSON type, and a text/plain body from no page at all.
    let json_cross = client
        .post(format!("{}/v1/apps", server.url))
        .header("origin", "https://evil.example")
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(json_cross.status(), StatusCode::FORBIDDEN);
    let plain = client
        .post(format!("{}/v1/functions/s.echo/calls", server.url))
        .header("content-type", "text/plain")
        .body(r#"{"input": 1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(plain).await,
        (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type".into()
        )
    );
    let no_type = client
        .post(format!("{}/v1/functions/s.echo/calls", server.url))
        .body(r#"{"input": 1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(no_type.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // DNS rebinding: the page's host name resolves to 127.0.0.1.
    for path in ["/v1/apps", "/", "/metrics"] {
        let rebound = client
            .get(format!("{}{path}", server.url))
            .header("host", "evil.example:7433")
            .send()
            .await
            .unwrap();
        assert_eq!(
            error_code(rebound).await,
            (StatusCode::FORBIDDEN, "forbidden_host".into()),
            "{path}"
        );
    }
    let apps: Value = client
        .get(format!("{}/v1/apps", server.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        apps.as_array().unwrap().len(),
        1,
        "nothing was deployed: {apps}"
    );
    assert!(!proof.exists(), "no command ran");
    // What stays allowed: the server's own pages, listed origins and hosts, loopback names.
    let port = server.url.rsplit(':').next().unwrap();
    let own = client
        .post(format!("{}/v1/functions/s.echo/calls", server.url))
        .header("origin", server.url.clone())
        .json(&json!({"input": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(own.status(), StatusCode::CREATED);
    let listed = client
        .post(format!("{}/v1/functions/s.echo/calls", server.url))
        .header("origin", "http://app.example:3000")
        .json(&json!({"input": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), StatusCode::CREATED);
    for host in [
        format!("localhost:{port}"),
        format!("hopper.internal:{port}"),
    ] {
        let ok = client
            .get(format!("{}/v1/apps", server.url))
            .header("host", host.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), StatusCode::OK, "{host}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_route_keeps_to_its_scope_head_included() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(dir.path(), APP);
    let server = Server::start(
        &dir.path().join("data"),
        &[
            "--deploy",
            m.to_str().unwrap(),
            "--no-workers",
            "--token",
            "admin-t",
            "--scoped-token",
            "read=read-t",
            "--scoped-token",
            "submit=submit-t",
            "--scoped-token",
            "work=work-t",
        ],
    );
    let call = server
        .client_with_token("admin-t")
        .spawn("s.echo", json!(1), None)
        .await
        .unwrap();
    let id = call.id.to_string();
    let worker = "hw-01M8PERSKJEZZTZMQFWHBBZRXN";
    // (method, path, the scope it needs)
    let routes: Vec<(Method, String, &str)> = vec![
        (Method::GET, "/v1/apps".into(), "read"),
        (Method::POST, "/v1/apps".into(), "admin"),
        (Method::GET, "/v1/functions".into(), "read"),
        (Method::GET, "/v1/functions/s.echo".into(), "read"),
        (Method::GET, "/v1/functions/s.echo/versions".into(), "read"),
        (Method::POST, "/v1/functions/s.echo/calls".into(), "submit"),
        (Method::POST, "/v1/functions/s.echo/map".into(), "submit"),
        (Method::POST, format!("/v1/calls/{id}/inputs"), "submit"),
        (Method::GET, format!("/v1/calls/{id}/results"), "read"),
        (Method::GET, "/v1/calls".into(), "read"),
        (Method::GET, format!("/v1/calls/{id}"), "read"),
        (Method::POST, format!("/v1/calls/{id}/cancel"), "submit"),
        (Method::POST, format!("/v1/calls/{id}/rerun"), "submit"),
        (Method::GET, format!("/v1/calls/{id}/inputs/0"), "read"),
        (Method::GET, format!("/v1/calls/{id}/attempts"), "read"),
        (Method::GET, format!("/v1/calls/{id}/logs"), "read"),
        (Method::GET, "/v1/schedules".into(), "read"),
        (Method::GET, "/v1/schedules/nope".into(), "read"),
        (Method::POST, "/v1/schedules/nope/trigger".into(), "submit"),
        (Method::POST, "/v1/schedules/nope/pause".into(), "admin"),
        (Method::POST, "/v1/schedules/nope/resume".into(), "admin"),
        (Method::GET, "/v1/secrets".into(), "read"),
        (Method::GET, "/v1/secrets/nope".into(), "read"),
        (Method::PUT, "/v1/secrets/nope".into(), "admin"),
        (Method::DELETE, "/v1/secrets/nope".into(), "admin"),
        (
            Method::GET,
            format!("/v1/snapshots/sha256:{}", "0".repeat(64)),
            "read",
        ),
        (
            Method::PUT,
            format!("/v1/snapshots/sha256:{}", "0".repeat(64)),
            "admin",
        ),
        (
            Method::GET,
            format!("/v1/workers/{worker}/snapshots/sha256:{}", "0".repeat(64)),
            "work",
        ),
        (Method::GET, "/v1/notifications".into(), "read"),
        (Method::GET, "/v1/stats".into(), "read"),
        (Method::GET, "/v1/openapi.json".into(), "read"),
        (Method::POST, "/v1/workers".into(), "work"),
        (Method::GET, "/v1/workers".into(), "read"),
        (Method::DELETE, format!("/v1/workers/{worker}"), "work"),
        (Method::POST, format!("/v1/workers/{worker}/lease"), "work"),
        (
            Method::POST,
            format!("/v1/workers/{worker}/heartbeat"),
            "work",
        ),
        (
            Method::POST,
            format!("/v1/workers/{worker}/complete"),
            "work",
        ),
        (Method::POST, format!("/v1/workers/{worker}/logs"), "work"),
        (Method::GET, "/metrics".into(), "read"),
    ];
    let tokens = [
        (None, ""),
        (Some("wrong"), ""),
        (Some("read-t"), "read"),
        (Some("submit-t"), "submit"),
        (Some("work-t"), "work"),
        (Some("admin-t"), "admin"),
    ];
    let client = http();
    let mut faults = Vec::new();
    for (method, path, needs) in &routes {
        let methods = if *method == Method::GET {
            vec![Method::GET, Method::HEAD]
        } else {
            vec![method.clone()]
        };
        for method in methods {
            for (token, scope) in &tokens {
                let mut req = client
                    .request(method.clone(), format!("{}{path}", server.url))
                    .header("content-type", "application/json")
                    .body("{}");
                if let Some(t) = token {
                    req = req.bearer_auth(t);
                }
                let status = req.send().await.unwrap().status();
                let expected = match (token, *scope) {
                    (None, _) | (_, "") => Some(StatusCode::UNAUTHORIZED),
                    (_, "admin") => None,
                    (_, s) if s == *needs => None,
                    _ => Some(StatusCode::FORBIDDEN),
                };
                let ok = match expected {
                    Some(e) => status == e,
                    None => status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
                };
                if !ok {
                    faults.push(format!(
                        "{method} {path} with {:?}: {status}, expected {}",
                        token.unwrap_or("no token"),
                        expected.map_or("allowed".to_string(), |e| e.to_string())
                    ));
                }
            }
        }
    }
    assert!(faults.is_empty(), "{}", faults.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_that_cannot_read_gets_no_output_from_the_routes_it_may_use() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(dir.path(), APP);
    let server = Server::start(
        &dir.path().join("data"),
        &[
            "--deploy",
            m.to_str().unwrap(),
            "--token",
            "admin-t",
            "--scoped-token",
            "submit=submit-t",
        ],
    );
    let admin = server.client_with_token("admin-t");
    let call = admin
        .spawn("s.echo", json!({"secret": 42}), Some("k1".into()))
        .await
        .unwrap();
    let done = wait_done(&admin, &call.id, Duration::from_secs(30)).await;
    assert_eq!(done.output, Some(json!({"secret": 42})));
    let submit = server.client_with_token("submit-t");
    let cancelled = submit.cancel(&call.id).await.unwrap();
    assert_eq!(cancelled.output, None, "{cancelled:?}");
    let again = submit
        .spawn("s.echo", json!({"secret": 42}), Some("k1".into()))
        .await
        .unwrap();
    assert_eq!(again.id, call.id);
    assert_eq!(again.output, None, "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_value_cannot_crash_or_wedge_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(dir.path(), APP);
    let server = Server::start(&dir.path().join("data"), &["--deploy", m.to_str().unwrap()]);
    let client = server.client();
    let http = http();
    let call = client.spawn("s.echo", json!(7), None).await.unwrap();
    wait_done(&client, &call.id, Duration::from_secs(30)).await;
    for path in [
        format!("/v1/calls/{}?wait=1e20", call.id),
        format!("/v1/calls/{}/results?wait=1e20", call.id),
    ] {
        let r = http
            .get(format!("{}{path}", server.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
    }
    // Nesting: refused where it enters, with the limit.
    let deep = "[".repeat(126) + &"]".repeat(126);
    let r = http
        .post(format!("{}/v1/functions/s.echo/calls", server.url))
        .header("content-type", "application/json")
        .body(format!(r#"{{"input": {deep}}}"#))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("64 levels"),
        "{body}"
    );
    // Integers beyond 64 bits: refused, never rounded.
    let r = http
        .post(format!("{}/v1/functions/s.echo/calls", server.url))
        .header("content-type", "application/json")
        .body(r#"{"input": 123456789012345678901234567890123456789}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("64 bits"),
        "{body}"
    );
    let exact = client.spawn("s.echo", json!(u64::MAX), None).await.unwrap();
    let exact = wait_done(&client, &exact.id, Duration::from_secs(30)).await;
    assert_eq!(exact.output, Some(json!(u64::MAX)));
    // The same from a command's output: the attempt fails at once, it does not loop.
    for f in ["s.deep", "s.huge_int"] {
        let call = client.spawn(f, json!(null), None).await.unwrap();
        let call = wait_done(&client, &call.id, Duration::from_secs(30)).await;
        assert_eq!(
            call.error.clone().unwrap().code,
            "bad_output",
            "{f}: {call:?}"
        );
        assert_eq!(call.attempts, 1, "{f}");
    }
    // Durations past the maximum are refused at deploy, with the field.
    for (text, field) in [
        ("app = \"p\"\n[functions.f]\ncommand = [\"true\"]\n[schedules.s]\nfunction = \"f\"\nevery = \"213503982334d\"\n", "schedules.s.every"),
        ("app = \"p\"\n[functions.f]\ncommand = [\"true\"]\ntimeout = \"30d\"\n", "functions.f.timeout"),
    ] {
        let path = dir.path().join("p.toml");
        std::fs::write(&path, text).unwrap();
        let out = cli(&server.url, &["deploy", path.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(stderr(&out).contains(field), "{}", stderr(&out));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_clients_are_cut_off_and_connections_are_bounded_but_long_polls_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(dir.path(), APP);
    let server = Server::start(
        &dir.path().join("data"),
        &[
            "--deploy",
            m.to_str().unwrap(),
            "--request-timeout",
            "1s",
            "--max-connections",
            "4",
            "--no-workers",
        ],
    );
    let addr = server.url.trim_start_matches("http://").to_string();
    // Half a header: closed after the request timeout.
    let mut half = TcpStream::connect(&addr).unwrap();
    half.write_all(b"GET /v1/apps HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .unwrap();
    half.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let _ = half.read_to_end(&mut buf);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // Half a body: 408 after the request timeout.
    let mut stalled = TcpStream::connect(&addr).unwrap();
    stalled
        .write_all(b"POST /v1/functions/s.echo/calls HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"input\"")
        .unwrap();
    stalled
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answer = [0u8; 1024];
    let n = stalled.read(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    // A long-poll outlives the request timeout.
    let client = server.client();
    let slow = client.spawn("s.slow", json!(null), None).await.unwrap();
    let started = Instant::now();
    let polled = client.get(&slow.id, Duration::from_secs(3)).await.unwrap();
    assert!(!polled.state.is_terminal());
    assert!(started.elapsed() >= Duration::from_secs(3));
    // Four connections held open leave none for a fifth, until they go.
    let held: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(&addr).unwrap()).collect();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    assert!(http
        .get(format!("{}/healthz", server.url))
        .send()
        .await
        .is_err());
    drop(held);
    let ok = eventually(
        "a connection is free again",
        Duration::from_secs(5),
        || async {
            http.get(format!("{}/healthz", server.url))
                .send()
                .await
                .ok()
        },
    )
    .await;
    assert_eq!(ok.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_rejection_has_the_json_error_shape() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(dir.path(), APP);
    let server = Server::start(&dir.path().join("data"), &["--deploy", m.to_str().unwrap()]);
    let http = http();
    let call = server
        .client()
        .spawn("s.echo", json!(1), None)
        .await
        .unwrap();
    let cases = [
        (
            Method::GET,
            format!("/v1/calls/{}/inputs/abc", call.id),
            StatusCode::BAD_REQUEST,
            "invalid_path",
        ),
        (
            Method::GET,
            "/v1/calls/%FF".to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_path",
        ),
        (
            Method::GET,
            "/v1/nope".to_string(),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Method::PUT,
            "/v1/apps".to_string(),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            Method::GET,
            "/v1/calls?limit=abc".to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
    ];
    for (method, path, status, code) in cases {
        let r = http
            .request(method.clone(), format!("{}{path}", server.url))
            .send()
            .await
            .unwrap();
        assert_eq!(
            error_code(r).await,
            (status, code.to_string()),
            "{method} {path}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_token_cannot_act_as_another_worker() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(
        dir.path(),
        "app = \"w\"\n[functions.ext]\nexternal = true\n",
    );
    let server = Server::start(
        &dir.path().join("data"),
        &[
            "--deploy",
            m.to_str().unwrap(),
            "--token",
            "admin-t",
            "--scoped-token",
            "work=w1",
            "--scoped-token",
            "work=w2",
        ],
    );
    let http = http();
    let register = |token: &'static str| {
        let http = http.clone();
        let url = server.url.clone();
        async move {
            let r: Value = http
                .post(format!("{url}/v1/workers"))
                .bearer_auth(token)
                .json(&json!({"functions": ["w.ext"], "host": "h", "pid": 1, "concurrency": 1}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            (
                r["worker_id"].as_str().unwrap().to_string(),
                r["worker_secret"].as_str().unwrap().to_string(),
            )
        }
    };
    let (a, a_secret) = register("w1").await;
    let (_b, b_secret) = register("w2").await;
    let call = server
        .client_with_token("admin-t")
        .spawn("w.ext", json!(1), None)
        .await
        .unwrap();
    let leased: Value = http
        .post(format!("{}/v1/workers/{a}/lease", server.url))
        .bearer_auth("w1")
        .header("x-hopper-worker-secret", &a_secret)
        .json(&json!({"max": 1, "wait_ms": 5000}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let lease = leased["inputs"][0]["lease"].clone();
    let complete = |token: &'static str, secret: Option<String>, output: &'static str| {
        let mut req = http
            .post(format!("{}/v1/workers/{a}/complete", server.url))
            .bearer_auth(token)
            .json(&json!({"results": [{"lease": lease, "status": "succeeded", "output": output}]}));
        if let Some(secret) = secret {
            req = req.header("x-hopper-worker-secret", secret);
        }
        req.send()
    };
    // Another worker's token, with its own secret or none: refused, nothing changed.
    for secret in [Some(b_secret.clone()), None] {
        let forged = complete("w2", secret, "forged").await.unwrap();
        assert_eq!(
            error_code(forged).await,
            (StatusCode::FORBIDDEN, "forbidden".into())
        );
    }
    for path in ["logs", "heartbeat"] {
        let r = http
            .post(format!("{}/v1/workers/{a}/{path}", server.url))
            .bearer_auth("w2")
            .json(&json!({"leases": [lease], "lines": []}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{path}");
    }
    let gone = http
        .delete(format!("{}/v1/workers/{a}", server.url))
        .bearer_auth("w2")
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), StatusCode::FORBIDDEN);
    let admin = server.client_with_token("admin-t");
    let now = admin.get(&call.id, Duration::ZERO).await.unwrap();
    assert_eq!(now.state, hopper_core::InputState::Running, "{now:?}");
    // The worker itself, with its secret, records its result.
    let real = complete("w1", Some(a_secret), "real").await.unwrap();
    assert_eq!(real.status(), StatusCode::OK);
    let done = wait_done(&admin, &call.id, Duration::from_secs(10)).await;
    assert_eq!(done.output, Some(json!("real")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_from_a_file_are_added_and_removed_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    let write = |text: &str| {
        std::fs::write(&file, text).unwrap();
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
    };
    write("# who:scopes:token\nci:submit,read:ci-token-0001\nops:admin:ops-token-0001\n");
    let m = manifest(dir.path(), APP);
    let server = Server::start(
        &dir.path().join("data"),
        &[
            "--token-file",
            file.to_str().unwrap(),
            "--deploy",
            m.to_str().unwrap(),
        ],
    );
    let calls = format!("{}/v1/calls", server.url);
    let status = |token: &'static str| {
        let calls = calls.clone();
        async move {
            http()
                .get(&calls)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(status("ci-token-0001").await, StatusCode::OK);
    assert_eq!(status("no-such-token").await, StatusCode::UNAUTHORIZED);
    // A token's scopes hold, and the refusal names the scope it lacks.
    let deploy = http()
        .post(format!("{}/v1/apps", server.url))
        .bearer_auth("ci-token-0001")
        .json(&json!({"manifest": APP, "file": "hopper.toml", "base_dir": "/"}))
        .send()
        .await
        .unwrap();
    assert_eq!(deploy.status(), StatusCode::FORBIDDEN);
    let body: Value = deploy.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("needs admin"), "{body}");

    // On SIGHUP: a token added works, a token removed does not.
    write("ops:admin:ops-token-0001\nnew:read:new-token-0002\n");
    let hup = || {
        assert!(std::process::Command::new("kill")
            .args(["-HUP", &server.pid().to_string()])
            .status()
            .unwrap()
            .success())
    };
    hup();
    eventually("the new token works", Duration::from_secs(10), || async {
        (status("new-token-0002").await == StatusCode::OK).then_some(())
    })
    .await;
    assert_eq!(status("ci-token-0001").await, StatusCode::UNAUTHORIZED);
    // A file that does not parse keeps the tokens read before.
    write("new:reed:new-token-0002\n");
    hup();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(status("new-token-0002").await, StatusCode::OK);
    // A change is noticed without a signal too.
    write("later:read:later-token-0003\n");
    eventually(
        "the changed file is read",
        Duration::from_secs(30),
        || async { (status("later-token-0003").await == StatusCode::OK).then_some(()) },
    )
    .await;
    assert_eq!(status("new-token-0002").await, StatusCode::UNAUTHORIZED);

    // A file that does not parse is refused at start, naming the line.
    write("ok:read:fine-token-0004\nbroken line\n");
    let out = std::process::Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--token-file"])
        .arg(&file)
        .arg("--data")
        .arg(dir.path().join("other"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("line 2"), "{}", stderr(&out));
}
