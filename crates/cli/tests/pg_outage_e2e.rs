//! A PostgreSQL outage: while the database is down requests fail with a clear error; when it is
//! back the server recovers by itself and nothing acknowledged is lost. Stops and starts the
//! machine's PostgreSQL cluster (this file holds one test, so no other test of this binary runs
//! meanwhile); skips without `HOPPER_TEST_POSTGRES` or `pg_ctlcluster`.
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
    fn ctl(&self, action: &str) -> bool {
        Command::new("pg_ctlcluster")
            .args(["--skip-systemctl-redirect", &self.version, "main", action])
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.ctl("start");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_fail_clearly_during_a_database_outage_and_the_server_recovers_by_itself() {
    let Ok(url) = std::env::var("HOPPER_TEST_POSTGRES") else {
        println!("SKIP: HOPPER_TEST_POSTGRES is not set");
        return;
    };
    let Some(version) = std::fs::read_dir("/etc/postgresql")
        .ok()
        .and_then(|mut d| d.next())
        .and_then(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
    else {
        println!("SKIP: no local PostgreSQL cluster to stop and start");
        return;
    };
    let cluster = Cluster { version };
    let schema = format!("hopper_test_{}", hopper_core::ids::random_hex());
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(
        dir.path(),
        "app = \"o\"\n[functions.echo]\ncommand = [\"cat\"]\n",
    );
    let server = Server::start(
        &dir.path().join("data"),
        &[
            "--database",
            &url,
            "--database-schema",
            &schema,
            "--deploy",
            m.to_str().unwrap(),
            "--no-workers",
        ],
    );
    let client = server.client();
    // Acknowledged before the outage, run after it.
    let before = client.spawn("o.echo", json!("before"), None).await.unwrap();

    assert!(cluster.ctl("stop"), "stop the cluster");
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
    hopper_store_postgres::PgStore::drop_schema(&url, &schema)
        .await
        .unwrap();
}
