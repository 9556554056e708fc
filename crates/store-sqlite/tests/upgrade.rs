//! Upgrades: a database left at any earlier schema, with calls queued, opens with this build
//! (which applies the migrations it lacks) and finishes those calls; a database a newer build
//! migrated is refused, naming both versions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::path::Path;

use hopper_core::{CallId, FunctionSpec};
use hopper_store::*;
use hopper_store_sqlite::migrate::MIGRATIONS;
use hopper_store_sqlite::SqliteStore;

const T0: i64 = 1_700_000_000_000;

/// A database file with migrations `1..=last` applied, as the build that had only those left
/// it, holding one queued call of `a.ok` (columns of the first schema, which later migrations
/// keep).
fn database_at(path: &Path, last: i64, call: &CallId) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(
        "CREATE TABLE hopper_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)",
    )
    .unwrap();
    for (version, name, sql) in MIGRATIONS.iter().filter(|(v, _, _)| *v <= last) {
        conn.execute_batch(sql).unwrap();
        conn.execute(
            "INSERT INTO hopper_migrations VALUES (?1, ?2, 0)",
            rusqlite::params![version, name],
        )
        .unwrap();
    }
    let spec = FunctionSpec {
        app: "a".into(),
        name: "ok".into(),
        command: vec!["true".into()],
        workdir: "/".into(),
        timeout_ms: 60_000,
        concurrency: 1,
        ..Default::default()
    };
    conn.execute_batch(&format!(
        "INSERT INTO apps (name, version, deployed_at) VALUES ('a', 1, {T0});
         INSERT INTO app_versions (app, version, manifest, deployed_at) VALUES ('a', 1, 'app = \"a\"', {T0});
         INSERT INTO functions (app, name, version, spec) VALUES ('a', 'ok', 1, '{spec}');
         INSERT INTO calls (id, app, function, version, origin, state, n_total, n_pending, created_at)
           VALUES ('{call}', 'a', 'ok', 1, 'spawn', 'pending', 1, 1, {T0});
         INSERT INTO inputs (call_id, idx, app, function, version, state, input, not_before)
           VALUES ('{call}', 0, 'a', 'ok', 1, 'pending', '\"hello\"', {T0});",
        spec = serde_json::to_string(&spec).unwrap().replace('\'', "''"),
    ))
    .unwrap();
}

#[tokio::test]
async fn a_database_at_any_earlier_schema_opens_and_finishes_its_queued_calls() {
    let newest = MIGRATIONS.last().unwrap().0;
    for last in 1..newest {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hopper.db");
        let call = CallId::generate();
        database_at(&path, last, &call);
        let store = SqliteStore::open(&path).await.unwrap();
        let schema = store.schema_version().await.unwrap();
        assert_eq!(schema.applied, newest, "from schema {last}");
        hopper_store::conformance::a_queued_call_runs_to_its_end(&store, &call).await;
        store.close().await;
    }
}

#[tokio::test]
async fn a_database_a_newer_build_migrated_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hopper.db");
    SqliteStore::open(&path).await.unwrap().close().await;
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "INSERT INTO hopper_migrations VALUES (999, 'from_the_future', 0)",
        [],
    )
    .unwrap();
    drop(conn);
    let Err(e) = SqliteStore::open(&path).await else {
        panic!("a newer schema was opened");
    };
    let (known, name, _) = MIGRATIONS.last().unwrap();
    let message = e.to_string();
    assert!(
        message.contains("0999_from_the_future") && message.contains(&format!("{known:04}_{name}")),
        "{message}"
    );
}
