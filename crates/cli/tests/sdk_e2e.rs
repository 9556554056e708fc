//! The Rust SDK's client and in-process worker against a real server.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use hopper_core::InputState;
use hopper_sdk::{FunctionOptions, MapOptions, Worker};
use serde_json::json;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_sdk_worker_serves_typed_handlers_and_the_client_maps_over_them() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let client = server.client();
    let batch_sizes = Arc::new(Mutex::new(Vec::new()));
    let sizes = batch_sizes.clone();
    let worker = Worker::new(client.clone(), "sdk")
        .function("double", |n: i64| async move { Ok::<_, String>(n * 2) })
        .function(
            "add",
            |(a, b): (i64, i64)| async move { Ok::<_, String>(a + b) },
        )
        .function_with(
            "picky",
            FunctionOptions {
                max_retries: 1,
                ..FunctionOptions::default()
            },
            |s: String| async move {
                if s == "bad" {
                    Err(format!("cannot take {s:?}"))
                } else {
                    Ok(s.len())
                }
            },
        )
        .function("explode", |_: i64| async move {
            if true {
                panic!("kaboom");
            }
            Ok::<i64, String>(0)
        })
        .batched(
            "lengths",
            16,
            Duration::from_millis(100),
            move |texts: Vec<String>| {
                sizes.lock().unwrap().push(texts.len());
                async move {
                    texts
                        .into_iter()
                        .map(|t| Ok::<_, String>(t.len()))
                        .collect::<Vec<_>>()
                }
            },
        );
    let app = worker.deploy().await.unwrap();
    assert_eq!(app.functions.len(), 5);
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.run(stop.clone()));

    // spawn and get, typed through serde.
    let call = client.spawn("sdk.double", json!(21), None).await.unwrap();
    let done = client
        .wait(&call.id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(done.output, Some(json!(42)));
    // remote: spawn and wait in one request.
    let done = client
        .remote("sdk.double", json!(5), Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        (done.state, done.output),
        (InputState::Succeeded, Some(json!(10)))
    );

    // map as an ordered stream.
    let mut run = client
        .map::<i64, i64, _>(
            "sdk.double",
            futures_util::stream::iter(0..100),
            MapOptions::default(),
        )
        .await
        .unwrap();
    let mut got = Vec::new();
    while let Some(item) = run.next().await {
        let item = item.unwrap();
        got.push((item.index, item.result.unwrap()));
    }
    assert_eq!(got, (0..100).map(|i| (i, i * 2)).collect::<Vec<_>>());

    // starmap: each input a list of arguments.
    let options = MapOptions {
        starmap: true,
        ..MapOptions::default()
    };
    let sums: Vec<i64> = client
        .map::<(i64, i64), i64, _>(
            "sdk.add",
            futures_util::stream::iter(vec![(1, 2), (3, 4)]),
            options,
        )
        .await
        .unwrap()
        .map(|r| r.unwrap().result.unwrap())
        .collect()
        .await;
    assert_eq!(sums, [3, 7]);

    // return_exceptions: the error in place; unordered results carry their index.
    let options = MapOptions {
        return_exceptions: true,
        ordered: false,
        ..MapOptions::default()
    };
    let mut results: Vec<_> = client
        .map::<&str, usize, _>(
            "sdk.picky",
            futures_util::stream::iter(vec!["a", "bad", "ccc"]),
            options,
        )
        .await
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
        .await;
    results.sort_by_key(|r| r.index);
    assert_eq!(results[0].result, Ok(1));
    let err = results[1].result.clone().unwrap_err();
    assert!(err.message.contains("cannot take \"bad\""), "{err:?}");
    assert_eq!(results[2].result, Ok(3));
    let page = client
        .calls(&hopper_sdk::CallFilter {
            function: Some("sdk.picky".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let attempts = client.attempts(&page.calls[0].id).await.unwrap();
    assert_eq!(
        attempts.iter().filter(|a| a.index == 1).count(),
        2,
        "the failing input was retried once"
    );

    // A panicking handler is a failed attempt with the panic's message.
    let call = client.spawn("sdk.explode", json!(1), None).await.unwrap();
    let done = client
        .wait(&call.id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(done.state, InputState::Failed);
    let error = done.error.unwrap();
    assert_eq!(error.code, "panic");
    assert!(error.message.contains("kaboom"), "{error:?}");

    // Batched handler: a map of 64 inputs arrives in batches of at most 16.
    let texts: Vec<String> = (0..64).map(|i| "x".repeat(i)).collect();
    let lengths: Vec<usize> = client
        .map::<String, usize, _>(
            "sdk.lengths",
            futures_util::stream::iter(texts),
            MapOptions::default(),
        )
        .await
        .unwrap()
        .map(|r| r.unwrap().result.unwrap())
        .collect()
        .await;
    assert_eq!(lengths, (0..64).collect::<Vec<_>>());
    let sizes = batch_sizes.lock().unwrap().clone();
    assert_eq!(sizes.iter().sum::<usize>(), 64);
    assert!(sizes.iter().all(|s| *s <= 16), "{sizes:?}");
    assert!(sizes.contains(&16), "batches fill under load: {sizes:?}");

    stop.cancel();
    running.await.unwrap().unwrap();
    let workers = client.workers().await.unwrap();
    assert!(
        workers.iter().all(|w| w.state == "stopped"),
        "the worker deregistered: {workers:?}"
    );
}
