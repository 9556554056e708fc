//! Failure notifications to a webhook receiver and an SMTP receiver that the test runs on
//! loopback.
//! Servers deploy with `--dev`: a function here reads a file the test writes beside its
//! manifest (a code snapshot would run it in a copy).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use hopper_core::InputState;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// A minimal SMTP receiver that keeps each message's data.
async fn smtp_receiver() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "smtp://alice:pa%24%24word@{}",
        listener.local_addr().unwrap()
    );
    let messages = Arc::new(Mutex::new(Vec::new()));
    let m = messages.clone();
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            let m = m.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(socket);
                reader
                    .get_mut()
                    .write_all(b"220 test ESMTP\r\n")
                    .await
                    .unwrap();
                let mut data: Option<String> = None;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    if let Some(d) = data.as_mut() {
                        if line == ".\r\n" {
                            m.lock().unwrap().push(std::mem::take(d));
                            data = None;
                            reader.get_mut().write_all(b"250 queued\r\n").await.unwrap();
                        } else {
                            d.push_str(&line);
                        }
                        continue;
                    }
                    let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
                    let reply: &[u8] = match verb.as_str() {
                        "EHLO" => b"250-test\r\n250 AUTH PLAIN LOGIN\r\n",
                        "HELO" => b"250 test\r\n",
                        "AUTH" => b"235 ok\r\n",
                        "DATA" => {
                            data = Some(String::new());
                            b"354 go on\r\n"
                        }
                        "QUIT" => {
                            let _ = reader.get_mut().write_all(b"221 bye\r\n").await;
                            return;
                        }
                        _ => b"250 ok\r\n",
                    };
                    reader.get_mut().write_all(reply).await.unwrap();
                }
            });
        }
    });
    (url, messages)
}

fn failing_app(webhook: &str, extra: &str) -> String {
    format!(
        r#"
app = "ops"
[functions.report]
command = ["sh", "-c", "echo 'crunching numbers'; echo 'disk full' >&2; exit 3"]
[functions.flaky]
command = ["sh", "-c", "if [ -e ok ]; then echo 1; else exit 1; fi"]
[[notify]]
on = ["failed", "timed_out", "recovered"]
webhook = "{webhook}"
quiet = "1h"
{extra}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_is_delivered_to_the_webhook_and_by_email_with_what_failed() {
    let (hook, bodies, _) = webhook_receiver(vec![200]).await;
    let (smtp, mails) = smtp_receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(
        dir.path(),
        &failing_app(&hook, "email = [\"ops@example.com\"]"),
    );
    let server = Server::start(
        &dir.path().join("data"),
        &[
            "--dev",
            "--deploy",
            m.to_str().unwrap(),
            "--smtp",
            &smtp,
            "--public-url",
            "https://hopper.example.com",
            "--notify-gather",
            "200ms",
        ],
    );
    let client = server.client();
    let call = client.spawn("ops.report", json!(null), None).await.unwrap();
    wait_done(&client, &call.id, Duration::from_secs(30)).await;
    let body = eventually(
        "the webhook got the message",
        Duration::from_secs(20),
        || async { bodies.lock().unwrap().first().cloned() },
    )
    .await;
    let text = body["text"].as_str().unwrap();
    assert!(text.contains("[hopper] ops.report failed"), "{text}");
    assert!(text.contains(call.id.as_str()), "{text}");
    assert!(
        text.contains(", 1 attempt)") || text.contains(" attempts)"),
        "{text}"
    );
    assert!(text.contains("disk full"), "the last log lines: {text}");
    // The log lines in a code block (Slack and Markdown keep their spacing).
    assert!(text.contains("Last log lines:\n```\n"), "{text}");
    assert!(
        text.contains(&format!("https://hopper.example.com/calls/{}", call.id)),
        "{text}"
    );
    assert_eq!(body["hopper"]["event"], "failed");
    assert_eq!(body["hopper"]["function"], "ops.report");
    assert_eq!(body["hopper"]["error"]["code"], "exit_code");
    let mail = eventually("the e-mail arrived", Duration::from_secs(20), || async {
        mails.lock().unwrap().first().cloned()
    })
    .await;
    assert!(
        mail.contains("Subject: [hopper] ops.report failed"),
        "{mail}"
    );
    assert!(mail.contains("To: ops@example.com"), "{mail}");
    assert!(mail.contains(call.id.as_str()), "{mail}");

    // Recovery: the first success after failures.
    let flaky = client.spawn("ops.flaky", json!(null), None).await.unwrap();
    wait_done(&client, &flaky.id, Duration::from_secs(30)).await;
    std::fs::write(dir.path().join("ok"), "").unwrap();
    let fixed = client.spawn("ops.flaky", json!(null), None).await.unwrap();
    wait_done(&client, &fixed.id, Duration::from_secs(30)).await;
    eventually("a recovered message", Duration::from_secs(20), || async {
        bodies
            .lock()
            .unwrap()
            .iter()
            .any(|b| b["hopper"]["event"] == "recovered")
            .then_some(())
    })
    .await;

    // The webhook URL is a secret: the API shows only its host.
    let channels: Value = reqwest::get(format!("{}/v1/notifications", server.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let text = channels.to_string();
    assert!(!text.contains("s3cretpath"), "{text}");
    assert!(text.contains("\"kind\":\"webhook\""), "{text}");
    let apps = reqwest::get(format!("{}/v1/apps", server.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!apps.contains("s3cretpath"), "{apps}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_maps_failure_names_its_first_failed_input_everywhere() {
    let (hook, bodies, _) = webhook_receiver(vec![200]).await;
    let dir = tempfile::tempdir().unwrap();
    // Inputs 40 and 45 of 50 fail (with three attempts each); the others succeed.
    let app = failing_app(&hook, "").replace(
        "[[notify]]",
        "[functions.picky]\ncommand = [\"sh\", \"-c\", \"read x; case $x in 40|45) echo no $x >&2; exit 4;; esac; echo $x\"]\nretries = { max_retries = 2, initial_delay = \"10ms\" }\nconcurrency = 8\n[[notify]]",
    );
    let m = manifest(dir.path(), &app);
    let server = Server::start(
        &dir.path().join("data"),
        &["--deploy", m.to_str().unwrap(), "--notify-gather", "200ms"],
    );
    let client = server.client();
    let map = client
        .map_start(
            "ops.picky",
            &hopper_core::api::MapRequest {
                inputs: (0..50).map(|i| json!(i)).collect(),
                done: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let call = wait_done(&client, &map.id, Duration::from_secs(60)).await;
    assert_eq!(call.state, InputState::Failed, "{call:?}");
    assert_eq!((call.inputs.failed, call.inputs.succeeded), (2, 48));
    // The call names its first failed input, with that input's error and attempts.
    assert_eq!(call.failed_index, Some(40), "{call:?}");
    assert_eq!(call.attempts, 3, "{call:?}");
    let error = call.error.clone().expect("the map's error");
    assert_eq!(error.code, "exit_code", "{error:?}");
    // So does the calls list, and `hopper get`.
    let listed = client.calls(&Default::default()).await.unwrap();
    let row = listed.calls.iter().find(|c| c.id == map.id).unwrap();
    assert_eq!(row.failed_index, Some(40), "{row:?}");
    let out = cli(&server.url, &["get", map.id.as_str()]);
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "call {} failed after 3 attempts: input 40 of 50 (the first of 2 that failed): exit_code",
            map.id
        )),
        "{err}"
    );
    // And the failure's notification: its error and the input's index.
    let body = eventually(
        "the webhook got the message",
        Duration::from_secs(20),
        || async { bodies.lock().unwrap().first().cloned() },
    )
    .await;
    assert_eq!(body["hopper"]["index"], 40, "{body}");
    assert_eq!(body["hopper"]["error"]["code"], "exit_code", "{body}");
    assert_eq!(body["hopper"]["attempts"], 3, "{body}");
    let text = body["text"].as_str().unwrap();
    assert!(
        text.contains(&format!("(call {}, input 40 of 50, 3 attempts)", map.id)),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_100_failures_is_one_message_that_counts_them() {
    let (hook, bodies, _) = webhook_receiver(vec![200]).await;
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(dir.path(), &failing_app(&hook, ""));
    let server = Server::start(
        &dir.path().join("data"),
        &[
            "--dev",
            "--deploy",
            m.to_str().unwrap(),
            "--notify-gather",
            "4s",
            "--no-workers",
        ],
    );
    let client = server.client();
    let mut ids = Vec::new();
    for _ in 0..100 {
        ids.push(
            client
                .spawn("ops.report", json!(null), None)
                .await
                .unwrap()
                .id,
        );
    }
    // One worker fails them all in a burst.
    let mut worker = std::process::Command::new(BIN)
        .args([
            "worker",
            "--server",
            &server.url,
            "--function",
            "ops.report",
            "--concurrency",
            "16",
        ])
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    for id in &ids {
        wait_done(&client, id, Duration::from_secs(60)).await;
    }
    let body = eventually("the message", Duration::from_secs(20), || async {
        bodies.lock().unwrap().first().cloned()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    worker.kill().unwrap();
    worker.wait().unwrap();
    assert_eq!(bodies.lock().unwrap().len(), 1, "one message for the storm");
    assert_eq!(body["hopper"]["count"], 100);
    assert!(
        body["text"]
            .as_str()
            .unwrap()
            .contains("100 events together (100 failures); the last is above."),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_answers_500_is_retried_and_a_dead_one_is_reported() {
    let (hook, bodies, hits) = webhook_receiver(vec![500, 500, 200]).await;
    let dir = tempfile::tempdir().unwrap();
    let dead = "http://127.0.0.1:9/never";
    let m = manifest(
        dir.path(),
        &format!(
            "{}\n[[notify]]\non = [\"failed\"]\nwebhook = \"{dead}\"\n",
            failing_app(&hook, "")
        ),
    );
    let server = Server::start(
        &dir.path().join("data"),
        &[
            "--dev",
            "--deploy",
            m.to_str().unwrap(),
            "--notify-gather",
            "100ms",
        ],
    );
    let client = server.client();
    let call = client.spawn("ops.report", json!(null), None).await.unwrap();
    wait_done(&client, &call.id, Duration::from_secs(30)).await;
    eventually(
        "delivered after two 500s",
        Duration::from_secs(30),
        || async { (!bodies.lock().unwrap().is_empty()).then_some(()) },
    )
    .await;
    assert_eq!(*hits.lock().unwrap(), 3);
    // The dead channel is reported, and the queue goes on meanwhile.
    let ok = client.spawn("ops.flaky", json!(null), None).await.unwrap();
    wait_done(&client, &ok.id, Duration::from_secs(30)).await;
    let channels: Vec<Value> = eventually(
        "the dead channel is reported",
        Duration::from_secs(30),
        || async {
            let channels: Vec<Value> = reqwest::get(format!("{}/v1/notifications", server.url))
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            channels
                .iter()
                .any(|c| {
                    c["failed_attempts"].as_u64().unwrap_or(0) >= 2
                        && c["target"] == "http://127.0.0.1:9/…"
                })
                .then_some(channels)
        },
    )
    .await;
    let dead_channel = channels
        .iter()
        .find(|c| c["target"] == "http://127.0.0.1:9/…")
        .unwrap();
    assert!(
        dead_channel["last_error"]
            .as_str()
            .unwrap()
            .contains("cannot reach"),
        "{dead_channel}"
    );
    assert!(
        !channels.iter().any(|c| c.to_string().contains("never")),
        "the path is never shown"
    );
    let delivered = channels.iter().find(|c| c["delivered"] == 1).unwrap();
    assert_eq!(delivered["failed_attempts"], 2);
}
