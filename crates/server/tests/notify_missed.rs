//! A schedule that missed due times while the server was down is told to its `[[notify]]`
//! webhook, driven by a manual clock.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hopper_core::clock::ManualClock;
use hopper_server::cron::Cron;
use hopper_server::notifier::Notifier;
use hopper_server::{deploy, AppState, ServerConfig};
use hopper_store_sqlite::SqliteStore;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio_util::sync::CancellationToken;

/// Accepts webhook POSTs, answers 200, keeps the bodies.
async fn receiver() -> (String, Arc<Mutex<Vec<serde_json::Value>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let kept = bodies.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let mut reader = BufReader::new(socket);
            let mut length = 0;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).await.unwrap();
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap();
                }
                if line == "\r\n" || line.is_empty() {
                    break;
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).await.unwrap();
            kept.lock()
                .unwrap()
                .push(serde_json::from_slice(&body).unwrap());
            let _ = reader
                .get_mut()
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await;
        }
    });
    (url, bodies)
}

#[tokio::test]
async fn missed_due_times_are_notified() {
    let (hook, bodies) = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let start = chrono::DateTime::parse_from_rfc3339("2026-05-01T00:00:00Z")
        .unwrap()
        .timestamp_millis();
    let clock = ManualClock::new(start);
    let store = SqliteStore::open(&dir.path().join("hopper.db"))
        .await
        .unwrap();
    let state = AppState::new(
        ServerConfig::default(),
        Arc::new(store),
        Arc::new(clock.clone()),
        CancellationToken::new(),
    );
    let manifest = format!(
        "app = \"r\"\n[functions.f]\ncommand = [\"true\"]\n[schedules.daily]\nfunction = \"f\"\ncron = \"0 3 * * *\"\n[[notify]]\non = [\"schedule_missed\"]\nwebhook = \"{hook}\"\n"
    );
    deploy::manifest_text(&state, "hopper.toml", &manifest, Path::new("/"), None)
        .await
        .unwrap();
    let mut notifier = Notifier::new(state.clone()).unwrap();
    notifier.run_once().await.unwrap();
    // Down over four due times: the most recent fires, the three before are missed.
    clock.set(start + 3 * 86_400_000 + 3_600_000 * 5);
    Cron::new(state.clone()).run_once().await.unwrap();
    notifier.run_once().await.unwrap();
    clock.advance(3_000); // past the gathering moment
    notifier.run_once().await.unwrap();
    for _ in 0..100 {
        if !bodies.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let body = bodies.lock().unwrap().first().cloned().expect("a message");
    assert_eq!(body["hopper"]["event"], "schedule_missed");
    let text = body["text"].as_str().unwrap();
    assert!(text.contains("r.daily missed 3 due times"), "{text}");
}
