//! A database a newer Hopper migrated, through the real binary: a server refuses to start on
//! it, naming both versions, and a running server whose database another server upgrades
//! stops taking work and reports itself unhealthy. SQLite, and PostgreSQL with
//! `HOPPER_TEST_POSTGRES` (which skips without it).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::json;

/// What this build knows: the newest migration as `NNNN_name`.
const KNOWN: &str = "0014_blobs";

/// Records migration 999 as applied, as a newer build would.
fn migrate_past(sqlite: Option<&Path>, postgres: Option<(&str, &str)>) {
    let insert = "INSERT INTO hopper_migrations (version, name, applied_at) VALUES (999, 'from_the_future', 0)";
    let out = match (sqlite, postgres) {
        (Some(db), _) => Command::new("python3")
            .args(["-c", "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute(sys.argv[2]); c.commit()"])
            .arg(db)
            .arg(insert)
            .output(),
        (None, Some((url, schema))) => Command::new("psql")
            .args([url, "-v", "ON_ERROR_STOP=1", "-c"])
            .arg(format!("SET search_path TO \"{schema}\"; {insert}"))
            .output(),
        (None, None) => unreachable!(),
    }
    .expect("run python3 or psql");
    assert!(out.status.success(), "{}", stderr(&out));
}

/// A server of this build started on the database: refused, with both versions named.
fn refused(data: &Path, db_args: &[&str]) {
    let out = Command::new(BIN)
        .args(["serve", "--data", &data.display().to_string()])
        .args(["--listen", "127.0.0.1:0"])
        .args(db_args)
        .env_remove("HOPPER_TOKEN")
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(!out.status.success(), "started on a newer schema: {err}");
    assert!(
        err.contains("0999_from_the_future") && err.contains(KNOWN) && err.contains("newer"),
        "{err}"
    );
}

/// Runs the whole story against one database: serve, upgrade underneath, refuse.
async fn story(data: &Path, db_args: &[&str], sqlite: Option<&Path>, pg: Option<(&str, &str)>) {
    let mut server = Server::start(data, db_args);
    let client = server.client();
    let m = manifest(
        data.parent().unwrap(),
        "app = \"v\"\n[functions.echo]\ncommand = [\"cat\"]\n",
    );
    let out = cli(&server.url, &["deploy", m.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    client.spawn("v.echo", json!(1), None).await.unwrap();
    let health = format!("{}/healthz", server.url);
    assert_eq!(reqwest::get(&health).await.unwrap().status(), 200);
    migrate_past(sqlite, pg);
    let body = eventually(
        "/healthz says unhealthy",
        Duration::from_secs(20),
        || async {
            let r = reqwest::get(&health).await.ok()?;
            (r.status() == 503).then_some(())?;
            r.json::<serde_json::Value>().await.ok()
        },
    )
    .await;
    assert_eq!(body["error"]["code"], "schema_too_new", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("0999_from_the_future"),
        "{body}"
    );
    let e = client.spawn("v.echo", json!(2), None).await.unwrap_err();
    assert_eq!(e.code(), Some("schema_too_new"), "{e}");
    server.stop();
    refused(data, db_args);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_a_server_stops_on_a_schema_a_newer_hopper_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let db = data.join("hopper.db");
    story(&data, &["--no-workers"], Some(&db), None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_a_server_stops_on_a_schema_a_newer_hopper_migrated() {
    let Some((url, schema)) = test_database() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--no-workers",
        "--database",
        &url,
        "--database-schema",
        &schema,
    ];
    story(&dir.path().join("data"), &args, None, Some((&url, &schema))).await;
    let _ = Command::new("psql")
        .args([url.as_str(), "-c"])
        .arg(format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .output();
}
