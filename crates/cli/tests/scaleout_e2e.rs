//! Two servers over one PostgreSQL database: a map spawned through one completes with every
//! result exactly once while the other is killed and restarted; spawns a server acknowledged
//! just before it was killed are dispatched by the other, whether or not its coalesced wake-ups
//! left it; a worker given both servers keeps its running inputs through the other when one is
//! killed; ten concurrent deploys of one app through two servers each get a version. Needs `HOPPER_TEST_POSTGRES`; without it the tests say they skipped.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use hopper_core::InputState;
use hopper_sdk::MapOptions;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_map_completes_exactly_once_while_a_second_server_is_killed_and_restarted() {
    let Some((url, schema)) = test_database() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(
        dir.path(),
        "app = \"s\"\n[functions.double]\ncommand = [\"cat\"]\nconcurrency = 8\nmin_workers = 1\n",
    );
    let db = [
        "--database",
        url.as_str(),
        "--database-schema",
        schema.as_str(),
        "--lease",
        "1s",
    ];
    let a = Server::start(
        &dir.path().join("a"),
        &[&db[..], &["--deploy", m.to_str().unwrap()]].concat(),
    );
    let mut b = Server::start(&dir.path().join("b"), &db);
    let client = a.client();
    // Both servers run a worker for the function (B learns of the app from the database).
    eventually(
        "a worker on each server",
        Duration::from_secs(20),
        || async {
            let active = client
                .workers()
                .await
                .unwrap()
                .iter()
                .filter(|w| w.state == "active")
                .count();
            (active >= 2).then_some(())
        },
    )
    .await;

    let n = 20_000i64;
    let options = MapOptions {
        chunk_size: 500,
        ..MapOptions::default()
    };
    let mut run = client
        .map::<i64, i64, _>("s.double", futures_util::stream::iter(0..n), options)
        .await
        .unwrap();
    let mut next = 0;
    let mut restarted = false;
    while let Some(item) = run.next().await {
        let item = item.unwrap();
        assert_eq!(item.index, next, "results in order, each once");
        assert_eq!(item.result, Ok(item.index));
        next += 1;
        if next == 3_000 && !restarted {
            b.kill9();
            b = Server::start(&dir.path().join("b"), &db);
            restarted = true;
        }
    }
    assert_eq!(next, n);
    let call = client.get(&run.call_id, Duration::ZERO).await.unwrap();
    assert_eq!(call.state, InputState::Succeeded);
    assert_eq!(call.inputs.succeeded, n);
    // A result completed through either server is seen through the other.
    let through_b = b
        .client()
        .get(&run.call_id, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(through_b.inputs.succeeded, n);
    drop(b);
    drop(a);
    drop_test_schema(&url, &schema).await;
}

/// Two servers without local workers over the test's schema, the first deploying `app` (a
/// manifest's text) at start.
fn two_servers(dir: &std::path::Path, (url, schema): (&str, &str), app: &str) -> (Server, Server) {
    let m = manifest(dir, app);
    let db = [
        "--database",
        url,
        "--database-schema",
        schema,
        "--no-workers",
    ];
    let a = Server::start(
        &dir.join("a"),
        &[&db[..], &["--deploy", m.to_str().unwrap()]].concat(),
    );
    // A server listens before its `--deploy` is written and answers once it is: the second
    // server, which reads the app from the database, must not be asked before then.
    let out = cli(&a.url, &["apps"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    (a, Server::start(&dir.join("b"), &db))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spawns_acknowledged_just_before_their_server_is_killed_run_through_the_other() {
    let Some((url, schema)) = test_database() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (mut a, b) = two_servers(
        dir.path(),
        (&url, &schema),
        "app = \"k\"\n[functions.echo]\ncommand = [\"cat\"]\nconcurrency = 8\n",
    );
    let _worker = worker(&b.url, "k.echo");
    // Single spawns 64 at a time, so that they are written and announced in groups; the
    // server is killed the moment the last is acknowledged.
    let client = a.client();
    let ids: Vec<_> = futures_util::stream::iter(0..1_000)
        .map(|n| {
            let client = client.clone();
            async move { client.spawn("k.echo", json!(n), None).await.unwrap().id }
        })
        .buffered(64)
        .collect()
        .await;
    a.kill9();
    let through_b = b.client();
    for (n, id) in ids.iter().enumerate() {
        let call = wait_done(&through_b, id, Duration::from_secs(60)).await;
        assert_eq!(call.state, InputState::Succeeded, "call {n}: {call:?}");
        assert_eq!(call.output, Some(json!(n)), "call {n}");
    }
    drop(b);
    drop(a);
    drop_test_schema(&url, &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_concurrent_deploys_of_one_app_through_two_servers_each_get_a_version() {
    let Some((url, schema)) = test_database() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let app = "app = \"d\"\n[functions.echo]\ncommand = [\"cat\"]\n";
    let servers = two_servers(dir.path(), (&url, &schema), app);
    let m = manifest(dir.path(), app);
    // Two CI pipelines deploying at once, five deploys each, through either server.
    let deploys: Vec<_> = (0..10)
        .map(|i| {
            let server = if i % 2 == 0 { &servers.0 } else { &servers.1 };
            let (url, m) = (server.url.clone(), m.clone());
            std::thread::spawn(move || cli(&url, &["deploy", "--json", m.to_str().unwrap()]))
        })
        .collect();
    let mut versions = Vec::new();
    for deploy in deploys {
        let out = deploy.join().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let answer: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
        versions.push(answer["version"].as_i64().unwrap());
    }
    versions.sort();
    versions.dedup();
    // Each its own version; the first server's deploy at start took one of the eleven.
    assert_eq!(versions.len(), 10, "{versions:?}");
    assert!(
        versions.iter().all(|v| (1..=11).contains(v)),
        "{versions:?}"
    );
    drop(servers);
    drop_test_schema(&url, &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_given_two_servers_finishes_its_inputs_through_the_other_when_one_is_killed() {
    let Some((url, schema)) = test_database() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (mut a, b) = two_servers(
        dir.path(),
        (&url, &schema),
        "app = \"f\"\n[functions.slow]\ncommand = [\"sh\", \"-c\", \"sleep 2; cat\"]\nconcurrency = 4\n",
    );
    let both = format!("{},{}", a.url, b.url);
    let _worker = Worker(
        std::process::Command::new(BIN)
            .args(["worker", "--server", &both, "--function", "f.slow"])
            .args(["--concurrency", "4"])
            .env("RUST_LOG", "warn")
            .env_remove("HOPPER_TOKEN")
            .spawn()
            .unwrap(),
    );
    let client = b.client();
    let mut ids = Vec::new();
    for n in 0..8 {
        ids.push(client.spawn("f.slow", json!(n), None).await.unwrap().id);
    }
    eventually("four inputs running", Duration::from_secs(20), || async {
        let running =
            futures_util::future::join_all(ids.iter().map(|id| client.get(id, Duration::ZERO)))
                .await
                .into_iter()
                .filter(|c| c.as_ref().is_ok_and(|c| c.inputs.running > 0))
                .count();
        (running == 4).then_some(())
    })
    .await;
    // The worker registered, leases and heartbeats through the first server until it dies.
    a.kill9();
    for (n, id) in ids.iter().enumerate() {
        let call = wait_done(&client, id, Duration::from_secs(30)).await;
        assert_eq!(call.state, InputState::Succeeded, "call {n}: {call:?}");
        assert_eq!(call.output, Some(json!(n)), "call {n}");
        let attempts = client.attempts(id).await.unwrap();
        assert_eq!(attempts.len(), 1, "call {n} ran once: {attempts:?}");
    }
    // Any client moves past a server it cannot reach.
    let out = cli(&both, &["calls", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    drop(b);
    drop(a);
    drop_test_schema(&url, &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_waiting_on_a_server_that_stops_moves_to_the_next() {
    let Some((url, schema)) = test_database() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (mut a, b) = two_servers(
        dir.path(),
        (&url, &schema),
        "app = \"g\"\n[functions.echo]\ncommand = [\"cat\"]\n",
    );
    let call = b
        .client()
        .spawn("g.echo", json!("waited"), None)
        .await
        .unwrap();
    // `hopper get` waits on the first server, which is stopped (SIGTERM, a rolling restart)
    // before the call has run: its long-poll is cut short, and the client asks the next.
    let both = format!("{},{}", a.url, b.url);
    let id = call.id.to_string();
    let waiting = std::thread::spawn(move || cli(&both, &["get", &id, "--timeout", "60s"]));
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.stop();
    let _worker = worker(&b.url, "g.echo");
    let out = waiting.join().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "\"waited\"");
    drop(b);
    drop(a);
    drop_test_schema(&url, &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_reaches_postgresql_over_tls_when_the_url_asks_for_it() {
    let Some((url, schema)) = test_database() else {
        return;
    };
    let separator = if url.contains('?') { '&' } else { '?' };
    let tls = format!("{url}{separator}sslmode=require");
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(
        dir.path(),
        "app = \"t\"\n[functions.echo]\ncommand = [\"cat\"]\n",
    );
    let server = Server::start(
        &dir.path().join("data"),
        &[
            "--database",
            &tls,
            "--database-schema",
            &schema,
            "--deploy",
            m.to_str().unwrap(),
        ],
    );
    let client = server.client();
    let call = client
        .spawn("t.echo", json!("over tls"), None)
        .await
        .unwrap();
    let done = wait_done(&client, &call.id, Duration::from_secs(30)).await;
    assert_eq!(done.output, Some(json!("over tls")));
    // The pool's connections are in /metrics.
    let text = server.metrics().await;
    for state in ["idle", "in_use"] {
        assert!(
            text.contains(&format!("hopper_database_connections{{state=\"{state}\"}}")),
            "{text}"
        );
    }
    drop(server);
    drop_test_schema(&url, &schema).await;
}
