//! A PostgreSQL outage: while the database is down requests fail with a clear error; when it is
//! back the servers recover by themselves, nothing acknowledged is lost, and each role a
//! cluster shares (the notifier, the timekeeper) is held again by one server. Stops and
//! restarts the machine's PostgreSQL cluster (the tests of this file take turns, and no other
//! test binary runs meanwhile); skips without `HOPPER_TEST_POSTGRES` or `pg_ctlcluster`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use hopper_core::InputState;
use serde_json::json;

/// Starts the cluster again whatever happens in the test.
struct Cluster {
    version: String,
}

impl Cluster {
    /// `pg_ctlcluster` `action`; whether the cluster is then stopped, or up (takes
    /// connections within 30 s) after a start or restart. Its own check after a start can fail
    /// while the server runs (Debian's postgresql-common 248+deb12u2 does), so a start is
    /// judged by the port (the local cluster's, 5432).
    fn ctl(&self, action: &str) -> bool {
        let ran = Command::new("pg_ctlcluster")
            .args(["--skip-systemctl-redirect", &self.version, "main", action])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if action == "stop" {
            return ran;
        }
        let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::time::Instant::now() < until {
            if std::net::TcpStream::connect(("127.0.0.1", 5432)).is_ok() {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        false
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.ctl("start");
    }
}

/// A server without local workers on the test's schema, deploying `app` (a manifest's text).
fn one_server(
    dir: &std::path::Path,
    (url, schema): (&str, &str),
    app: &str,
    extra: &[&str],
) -> Server {
    let m = manifest(dir, app);
    let args = [
        "--database",
        url,
        "--database-schema",
        schema,
        "--deploy",
        m.to_str().unwrap(),
        "--no-workers",
    ];
    Server::start(&dir.join("data"), &[&args[..], extra].concat())
}

/// A health endpoint's status and JSON answer.
async fn health(server: &Server, path: &str) -> (u16, serde_json::Value) {
    let answer = reqwest::get(format!("{}{path}", server.url)).await.unwrap();
    (answer.status().as_u16(), answer.json().await.unwrap())
}

/// One test at a time stops or restarts the cluster.
static CLUSTER_TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The database the tests use, a schema of the test's own, and the local cluster; `None`
/// (saying why) where either is missing.
fn local_cluster() -> Option<(String, String, Cluster)> {
    let (url, schema) = test_database()?;
    let Some(version) = std::fs::read_dir("/etc/postgresql")
        .ok()
        .and_then(|mut d| d.next())
        .and_then(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
    else {
        println!("SKIP: no local PostgreSQL cluster to stop and start");
        return None;
    };
    Some((url, schema, Cluster { version }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_fail_clearly_during_a_database_outage_and_the_server_recovers_by_itself() {
    let _turn = CLUSTER_TURN.lock().await;
    let Some((url, schema, cluster)) = local_cluster() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let app = "app = \"o\"\n[functions.echo]\ncommand = [\"cat\"]\n";
    let server = one_server(dir.path(), (&url, &schema), app, &[]);
    let client = server.client();
    // Acknowledged before the outage, run after it.
    let before = client.spawn("o.echo", json!("before"), None).await.unwrap();

    assert_eq!(
        health(&server, "/readyz").await,
        (200, json!({ "ok": true }))
    );

    assert!(cluster.ctl("stop"), "stop the cluster");
    // Out of the load balancer's rotation, not restarted by the orchestrator.
    let (status, body) = health(&server, "/readyz").await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (503, &json!("store_unavailable"))
    );
    assert_eq!(health(&server, "/healthz").await.0, 503);
    assert_eq!(health(&server, "/livez").await.0, 200);
    let out = cli(&server.url, &["spawn", "o.echo", "--input", "1"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("the database is unavailable"),
        "{}",
        stderr(&out)
    );
    assert!(cluster.ctl("start"), "start the cluster");

    let after = eventually(
        "the server serves again",
        Duration::from_secs(30),
        || async { client.spawn("o.echo", json!("after"), None).await.ok() },
    )
    .await;
    assert_eq!(health(&server, "/readyz").await.0, 200);
    let mut worker = std::process::Command::new(BIN)
        .args(["worker", "--server", &server.url, "--function", "o.echo"])
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    for (call, expected) in [(&before, "before"), (&after, "after")] {
        let done = wait_done(&client, &call.id, Duration::from_secs(30)).await;
        assert_eq!(done.state, InputState::Succeeded);
        assert_eq!(done.output, Some(json!(expected)));
    }
    worker.kill().unwrap();
    worker.wait().unwrap();
    drop(server);
    drop_test_schema(&url, &schema).await;
}

/// Which of `servers` report holding `role` in `/metrics` (`hopper_leader{role} 1`).
async fn leaders(servers: &[&Server], role: &str) -> Vec<usize> {
    let series = format!("hopper_leader{{role=\"{role}\"}} 1");
    let mut held = Vec::new();
    for (i, server) in servers.iter().enumerate() {
        let text = server.metrics().await;
        if text.lines().any(|l| l == series) {
            held.push(i);
        }
    }
    held
}

/// Waits for the webhook to carry a failure of `function`.
async fn failure_notified(bodies: &Shared<Vec<serde_json::Value>>, function: &str) {
    eventually(
        &format!("a webhook for the failure of {function}"),
        Duration::from_secs(30),
        || async {
            bodies
                .lock()
                .unwrap()
                .iter()
                .any(|b| b["hopper"]["function"] == function)
                .then_some(())
        },
    )
    .await;
}

/// How many calls the schedule has started.
async fn firings(client: &hopper_sdk::Client) -> usize {
    schedule_calls(client).await.len()
}

/// Waits for the schedule to fire twice more than `before`.
async fn schedule_fires(client: &hopper_sdk::Client, before: usize) {
    eventually(
        "the every-1s schedule fires again",
        Duration::from_secs(30),
        || async { (firings(client).await >= before + 2).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_servers_ride_through_a_database_restart_and_the_loss_of_the_leader() {
    let _turn = CLUSTER_TURN.lock().await;
    let Some((url, schema, cluster)) = local_cluster() else {
        return;
    };
    let (hook, bodies, _) = webhook_receiver(vec![200]).await;
    let dir = tempfile::tempdir().unwrap();
    let fail = r#"command = ["sh", "-c", "echo broken >&2; exit 3"]"#;
    let m = manifest(
        dir.path(),
        &format!(
            r#"app = "r"
[functions.echo]
command = ["cat"]
[functions.fail1]
{fail}
[functions.fail2]
{fail}
[functions.fail3]
{fail}
[schedules.often]
function = "echo"
every = "1s"
input = "tick"
[[notify]]
on = ["failed"]
webhook = "{hook}"
"#
        ),
    );
    let common = [
        "--database",
        &url,
        "--database-schema",
        &schema,
        "--no-workers",
        "--notify-gather",
        "200ms",
    ];
    let a = Server::start(
        &dir.path().join("a"),
        &[&common[..], &["--deploy", m.to_str().unwrap()]].concat(),
    );
    let b = Server::start(&dir.path().join("b"), &common);
    let (ca, cb) = (a.client(), b.client());
    // Inputs spawned on one server run on a worker of the other.
    let _echo = worker(&b.url, "r.echo");
    let _fails = Worker(
        std::process::Command::new(BIN)
            .args(["worker", "--server", &a.url])
            .args(["--function", "r.fail1", "--function", "r.fail2"])
            .args(["--function", "r.fail3"])
            .env("RUST_LOG", "warn")
            .env_remove("HOPPER_TOKEN")
            .spawn()
            .unwrap(),
    );
    let before = ca.spawn("r.echo", json!("before"), None).await.unwrap();
    let done = wait_done(&ca, &before.id, Duration::from_secs(30)).await;
    assert_eq!(done.output, Some(json!("before")));
    cb.spawn("r.fail1", json!(null), None).await.unwrap();
    failure_notified(&bodies, "r.fail1").await;

    assert!(cluster.ctl("restart"), "restart the cluster");

    // Both servers serve again, dispatch across them, fire the schedule and notify.
    for client in [&ca, &cb] {
        eventually(
            "the server serves again",
            Duration::from_secs(30),
            || async { client.spawn("r.echo", json!("ping"), None).await.ok() },
        )
        .await;
    }
    let after = ca.spawn("r.echo", json!("after"), None).await.unwrap();
    let done = wait_done(&ca, &after.id, Duration::from_secs(30)).await;
    assert_eq!(done.output, Some(json!("after")));
    schedule_fires(&ca, firings(&ca).await).await;
    cb.spawn("r.fail2", json!(null), None).await.unwrap();
    failure_notified(&bodies, "r.fail2").await;
    let led = eventually(
        "one server leads the notifier",
        Duration::from_secs(10),
        || async {
            let led = leaders(&[&a, &b], "notifier").await;
            (led.len() == 1).then_some(led[0])
        },
    )
    .await;

    // The leader stops for good: the other takes its roles over.
    let mut servers = [a, b];
    servers[led].kill9();
    let survivor = &servers[1 - led];
    let client = survivor.client();
    let _fails_here = worker(&survivor.url, "r.fail3");
    eventually(
        "the other server leads the notifier",
        Duration::from_secs(15),
        || async { (leaders(&[survivor], "notifier").await == [0]).then_some(()) },
    )
    .await;
    client.spawn("r.fail3", json!(null), None).await.unwrap();
    failure_notified(&bodies, "r.fail3").await;
    schedule_fires(&client, firings(&client).await).await;

    drop(servers);
    drop(cluster);
    drop_test_schema(&url, &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_input_running_through_a_database_outage_longer_than_a_lease_is_not_run_again() {
    let _turn = CLUSTER_TURN.lock().await;
    let Some((url, schema, cluster)) = local_cluster() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let app = "app = \"l\"\n[functions.slow]\ncommand = [\"sh\", \"-c\", \"sleep 14; cat\"]\n";
    // A lease long enough that, on a busy machine, the worker still renews it in time once it
    // may again.
    let server = one_server(dir.path(), (&url, &schema), app, &["--lease", "6s"]);
    let client = server.client();
    let worker = worker(&server.url, "l.slow");
    let signal = |which: &str| {
        assert!(std::process::Command::new("kill")
            .args([which, &worker.0.id().to_string()])
            .status()
            .unwrap()
            .success())
    };
    let call = client.spawn("l.slow", json!("once"), None).await.unwrap();
    eventually("the input runs", Duration::from_secs(20), || async {
        let c = client.get(&call.id, Duration::ZERO).await.ok()?;
        (c.inputs.running == 1).then_some(())
    })
    .await;
    // Down for longer than a lease: no heartbeat can renew it meanwhile. The worker (not
    // its command) is held until the server has seen the database back, so the server looks
    // at the leases before the worker's next heartbeat does, whichever would come first.
    signal("-STOP");
    assert!(cluster.ctl("stop"), "stop the cluster");
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(cluster.ctl("start"), "start the cluster");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    signal("-CONT");
    let done = eventually("the call ends", Duration::from_secs(60), || async {
        let c = client.get(&call.id, Duration::from_secs(5)).await.ok()?;
        c.state.is_terminal().then_some(c)
    })
    .await;
    assert_eq!(done.state, InputState::Succeeded, "{done:?}");
    assert_eq!(done.output, Some(json!("once")));
    let attempts = client.attempts(&call.id).await.unwrap();
    assert_eq!(attempts.len(), 1, "it ran once: {attempts:?}");
    drop(server);
    drop_test_schema(&url, &schema).await;
}
