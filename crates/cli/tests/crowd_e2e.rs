//! More workers than a server has connections for, through the real binary: workers'
//! long-polls are bounded apart (`--max-waiting`), so spawns and `/healthz` still get in, the
//! workers past the bound are told to retry (503 `too_many_waiting`), and every input is
//! dispatched.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use hopper_core::api::{InputResult, Outcome, WorkerRegister};
use hopper_core::InputState;
use hopper_sdk::Client;
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// A worker speaking the protocol by hand, each with connections of its own: long-polls for
/// one input at a time and answers it with its input, until `stop`.
async fn simulated_worker(
    url: String,
    refused: Arc<AtomicUsize>,
    served: Arc<AtomicUsize>,
    stop: CancellationToken,
) {
    let client = Client::new(&url, None).unwrap();
    let registered = client
        .worker_register(&WorkerRegister {
            functions: vec!["crowd.echo".into()],
            host: "sim".into(),
            pid: 1,
            concurrency: 1,
            machine: None,
        })
        .await
        .unwrap();
    let client = client.with_worker_secret(registered.worker_secret.clone());
    let id = registered.worker_id;
    while !stop.is_cancelled() {
        match client.worker_lease(&id, 1, Duration::from_secs(5)).await {
            Ok(leased) => {
                for input in leased.inputs {
                    client
                        .worker_complete(
                            &id,
                            vec![InputResult {
                                lease: input.lease,
                                outcome: Outcome::Succeeded {
                                    output: input.input,
                                },
                                batch_size: None,
                            }],
                        )
                        .await
                        .unwrap();
                    served.fetch_add(1, Ordering::SeqCst);
                }
            }
            Err(e) if e.code() == Some("too_many_waiting") => {
                refused.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(e) => panic!("lease failed: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn more_workers_than_connections_leave_room_for_everything_else() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(
        dir.path(),
        "app = \"crowd\"\n[functions.echo]\ncommand = [\"cat\"]\n",
    );
    // 120 workers against 80 connections: unbounded, their long-polls would hold every one.
    let mut server = Server::start(
        &dir.path().join("data"),
        &[
            "--no-workers",
            "--max-connections",
            "80",
            "--max-waiting",
            "32",
            "--deploy",
            m.to_str().unwrap(),
        ],
    );
    let refused = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(AtomicUsize::new(0));
    let stop = CancellationToken::new();
    let workers: Vec<_> = (0..120)
        .map(|_| {
            tokio::spawn(simulated_worker(
                server.url.clone(),
                refused.clone(),
                served.clone(),
                stop.clone(),
            ))
        })
        .collect();
    eventually("workers told to retry", Duration::from_secs(30), || async {
        (refused.load(Ordering::SeqCst) > 0).then_some(())
    })
    .await;
    // Everything else still gets in, at once.
    let quick = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let health = quick
        .get(format!("{}/healthz", server.url))
        .send()
        .await
        .expect("/healthz answered while workers crowd the server");
    assert_eq!(health.status(), 200);
    let client = server.client();
    let mut ids = Vec::new();
    for i in 0..60 {
        let spawn = tokio::time::timeout(
            Duration::from_secs(5),
            client.spawn("crowd.echo", json!(i), None),
        );
        ids.push(spawn.await.expect("spawn answered").unwrap().id);
    }
    for (i, id) in ids.iter().enumerate() {
        let call = wait_done(&client, id, Duration::from_secs(60)).await;
        assert_eq!(call.state, InputState::Succeeded, "{call:?}");
        assert_eq!(call.output, Some(json!(i)));
    }
    assert_eq!(served.load(Ordering::SeqCst), 60, "each input once");
    stop.cancel();
    for w in workers {
        w.await.unwrap();
    }
    server.stop();
}
