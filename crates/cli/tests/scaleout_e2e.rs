//! Two servers over one PostgreSQL database, with local workers on each: a map spawned through
//! one completes with every result exactly once while the other is killed and restarted.
//! Needs `HOPPER_TEST_POSTGRES`; without it the test says it skipped.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use hopper_core::InputState;
use hopper_sdk::MapOptions;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_map_completes_exactly_once_while_a_second_server_is_killed_and_restarted() {
    let Ok(url) = std::env::var("HOPPER_TEST_POSTGRES") else {
        println!("SKIP: HOPPER_TEST_POSTGRES is not set");
        return;
    };
    let schema = format!("hopper_test_{}", hopper_core::ids::random_hex());
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(
        dir.path(),
        "app = \"s\"\n[functions.double]\ncommand = [\"cat\"]\nconcurrency = 8\n",
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
    hopper_store_postgres::PgStore::drop_schema(&url, &schema)
        .await
        .unwrap();
}
