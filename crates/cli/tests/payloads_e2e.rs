//! Payloads beyond inline JSON, through the real binary: bytes spawned from a file with
//! `hopper spawn --input-bytes` reach a command as a file it reads, the output file the
//! command names comes back through `hopper get --output`, on SQLite and PostgreSQL; a
//! reference to a blob that is not stored, or with the wrong size, is refused naming it; a blob
//! damaged or gone before a worker fetches it fails the input at once, without retries; a blob
//! over `--max-blob` is refused naming the setting and nothing is kept; a page of large results
//! ends at its byte bound and the rest come from its cursor.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use std::time::Duration;

use common::*;
use hopper_core::CallState;
use serde_json::{json, Value};

/// Reads its input's file (the blob's `path`), and writes the bytes reversed to a file in
/// `HOPPER_BLOB_DIR` that its output names.
const REVERSE_PY: &str = r#"
import json, os, sys
ref = json.load(sys.stdin)
data = open(ref["path"], "rb").read()
assert len(data) == ref["size"], (len(data), ref)
out = os.path.join(os.environ["HOPPER_BLOB_DIR"], "reversed-%d" % os.getpid())
open(out, "wb").write(data[::-1])
print(json.dumps({"$blob": None, "path": out}))
"#;

const APP: &str = r#"
app = "pay"
[functions.reverse]
command = ["python3", "reverse.py"]
retries = 2
[functions.big]
command = ["python3", "-c", "import sys; n = int(sys.stdin.read()); print('\"' + 'x' * n + '\"')"]
[functions.make]
command = ["python3", "make.py"]
"#;

/// Writes `input` MiB to a file in `HOPPER_BLOB_DIR` and names it as its output.
const MAKE_PY: &str = r#"
import json, os, sys
n = json.load(sys.stdin)
out = os.path.join(os.environ["HOPPER_BLOB_DIR"], "made-%d" % os.getpid())
block = bytes(range(256)) * 4096
with open(out, "wb") as f:
    for _ in range(n):
        f.write(block)
print(json.dumps({"$blob": None, "path": out}))
"#;

/// Bytes that are not text, `n` of them.
fn noise(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7919 % 251) as u8).collect()
}

async fn round_trip(server: &Server, dir: &std::path::Path) {
    let input = dir.join("in.bin");
    let data = noise(5 * 1024 * 1024 + 17);
    std::fs::write(&input, &data).unwrap();
    let out = cli(
        &server.url,
        &[
            "spawn",
            "pay.reverse",
            "--input-bytes",
            input.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let id = stdout(&out).trim().to_string();
    let got = dir.join("out.bin");
    let out = cli(
        &server.url,
        &[
            "get",
            &id,
            "--timeout",
            "60s",
            "--output",
            got.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("wrote {} bytes", data.len())),
        "{}",
        stderr(&out)
    );
    let mut reversed = data.clone();
    reversed.reverse();
    assert!(
        std::fs::read(&got).unwrap() == reversed,
        "the output's bytes"
    );
    // The call shows references, not the bytes.
    let call = server
        .client()
        .get(&id.parse().unwrap(), Duration::ZERO)
        .await
        .unwrap();
    let output = call.output.unwrap();
    assert_eq!(output["size"], json!(data.len()), "{output}");
    assert!(
        output.get("path").is_none(),
        "no worker path leaks: {output}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_from_a_file_reach_a_command_and_come_back_as_a_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("reverse.py"), REVERSE_PY).unwrap();
    let m = manifest(dir.path(), APP);
    let server = Server::start(&dir.path().join("data"), &["--deploy", m.to_str().unwrap()]);
    round_trip(&server, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_round_trip_on_postgresql_with_blobs_in_the_database() {
    let Some((url, schema)) = test_database() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("reverse.py"), REVERSE_PY).unwrap();
    let m = manifest(dir.path(), APP);
    {
        let server = Server::start(
            &dir.path().join("data"),
            &[
                "--database",
                &url,
                "--database-schema",
                &schema,
                "--deploy",
                m.to_str().unwrap(),
            ],
        );
        round_trip(&server, dir.path()).await;
    }
    drop_test_schema(&url, &schema).await;
}

async fn upload(url: &str, bytes: Vec<u8>) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{url}/v1/blobs"))
        .header("content-type", "application/octet-stream")
        .body(bytes)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn spawn_raw(url: &str, function: &str, input: Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{url}/v1/functions/{function}/calls"))
        .json(&json!({ "input": input }))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn references_are_checked_and_a_blob_lost_before_its_worker_fails_the_input_once() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("reverse.py"), REVERSE_PY).unwrap();
    let m = manifest(dir.path(), APP);
    let data_dir = dir.path().join("data");
    let server = Server::start(
        &data_dir,
        &[
            "--no-workers",
            "--max-blob",
            "3MiB",
            "--deploy",
            m.to_str().unwrap(),
        ],
    );
    let url = server.url.clone();

    // Over --max-blob: refused naming it, and nothing is kept (nor spawned).
    let big = noise(4 * 1024 * 1024);
    let digest = hopper_core::blob::digest(&big);
    let file = dir.path().join("big.bin");
    std::fs::write(&file, &big).unwrap();
    let out = cli(
        &url,
        &[
            "spawn",
            "pay.reverse",
            "--input-bytes",
            file.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--max-blob"), "{}", stderr(&out));
    let gone = reqwest::get(format!("{url}/v1/blobs/{digest}"))
        .await
        .unwrap();
    assert_eq!(gone.status().as_u16(), 404);
    assert!(server
        .client()
        .calls(&Default::default())
        .await
        .unwrap()
        .calls
        .is_empty());

    // The same bytes twice: one blob, 201 then 200.
    let small = noise(2 * 1024 * 1024 + 5);
    let (status, reference) = upload(&url, small.clone()).await;
    assert_eq!(status, 201, "{reference}");
    assert_eq!(upload(&url, small.clone()).await.0, 200);
    assert_eq!(reference["$blob"], json!(hopper_core::blob::digest(&small)));
    let fetched = reqwest::get(format!(
        "{url}/v1/blobs/{}",
        reference["$blob"].as_str().unwrap()
    ))
    .await
    .unwrap()
    .bytes()
    .await
    .unwrap();
    assert!(fetched.to_vec() == small);

    // References the server cannot honour are refused by name.
    let unknown = format!("sha256:{}", "0".repeat(64));
    let (status, body) = spawn_raw(&url, "pay.reverse", json!({"$blob": unknown, "size": 3})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("unknown_blob")),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&unknown),
        "{body}"
    );
    let mut wrong = reference.clone();
    wrong["size"] = json!(7);
    let (status, body) = spawn_raw(&url, "pay.reverse", json!([wrong])).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_blob")),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("the input[0]"),
        "{body}"
    );

    // Two calls refer to stored blobs; one blob then loses a chunk, the other its row, before
    // any worker runs: each input fails at once, with no retry.
    let other = noise(1024 * 1024 + 3);
    let (_, other_ref) = upload(&url, other).await;
    let (status, damaged) = spawn_raw(&url, "pay.reverse", reference.clone()).await;
    assert_eq!(status, 201, "{damaged}");
    let (_, missing) = spawn_raw(&url, "pay.reverse", other_ref.clone()).await;
    let db = data_dir.join("hopper.db");
    let sql = format!(
        "DELETE FROM blob_chunks WHERE seq = 1 AND upload = (SELECT upload FROM blobs WHERE digest = '{}'); DELETE FROM blobs WHERE digest = '{}';",
        reference["$blob"].as_str().unwrap(),
        other_ref["$blob"].as_str().unwrap()
    );
    let out = std::process::Command::new("python3")
        .args(["-c", "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.executescript(sys.argv[2]); c.commit()"])
        .arg(&db)
        .arg(&sql)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let _worker = worker(&url, "pay.reverse");
    let client = server.client();
    for (call, code) in [(&damaged, "blob_corrupt"), (&missing, "blob_missing")] {
        let id = call["id"].as_str().unwrap().parse().unwrap();
        let call = wait_done(&client, &id, Duration::from_secs(60)).await;
        assert_eq!(call.state, CallState::Failed, "{call:?}");
        let error = call.error.unwrap();
        assert_eq!(error.code, code, "{error:?}");
        assert_eq!(call.attempts, 1, "not retried: {error:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_of_large_results_ends_at_its_byte_bound() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(dir.path(), APP);
    let server = Server::start(&dir.path().join("data"), &["--deploy", m.to_str().unwrap()]);
    let client = server.client();
    // 24 outputs of 3 MiB: 72 MiB of results, at most 16 MiB (plus one) in a page.
    let inputs: Vec<Value> = (0..24).map(|_| json!(3 * 1024 * 1024)).collect();
    let call = client
        .map_start(
            "pay.big",
            &hopper_core::api::MapRequest {
                inputs,
                done: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let call = wait_done(&client, &call.id, Duration::from_secs(120)).await;
    assert_eq!(call.state, CallState::Succeeded, "{call:?}");
    let mut after = -1;
    let mut pages = Vec::new();
    loop {
        let page: Value = reqwest::get(format!(
            "{}/v1/calls/{}/results?after={after}&limit=10000",
            server.url, call.id
        ))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
        let n = page["results"].as_array().unwrap().len();
        pages.push(n);
        after = page["next"].as_i64().unwrap();
        if page["done"].as_bool().unwrap() {
            break;
        }
        assert!(n > 0 && pages.len() < 30, "{pages:?}");
    }
    assert_eq!(pages.iter().sum::<usize>(), 24, "{pages:?}");
    assert!(
        pages.iter().all(|n| *n <= 6),
        "no page holds much more than 16 MiB: {pages:?}"
    );
}

/// Rows of a table of the SQLite database at `db`.
fn rows(db: &std::path::Path, table: &str) -> u64 {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute('SELECT COUNT(*) FROM ' + sys.argv[2]).fetchone()[0])",
        ])
        .arg(db)
        .arg(table)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out).trim().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_during_an_upload_keeps_what_it_acknowledged_and_prunes_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("reverse.py"), REVERSE_PY).unwrap();
    let m = manifest(dir.path(), APP);
    let data = dir.path().join("data");
    let args = [
        "--no-workers",
        "--retention",
        "2s",
        "--deploy",
        m.to_str().unwrap(),
    ];
    let mut server = Server::start(&data, &args);
    // An acknowledged blob and the call that refers to it.
    let kept = noise(3 * 1024 * 1024 + 1);
    let (_, reference) = upload(&server.url, kept.clone()).await;
    let (status, call) = spawn_raw(&server.url, "pay.reverse", reference.clone()).await;
    assert_eq!(status, 201, "{call}");
    // An upload of 64 MiB that stops coming after 8: its chunks are in the database when the
    // server is killed.
    let url = server.url.clone();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    let sending = tokio::spawn(async move {
        reqwest::Client::new()
            .post(format!("{url}/v1/blobs"))
            .header("content-type", "application/octet-stream")
            .header("content-length", (64u64 << 20).to_string())
            .body(reqwest::Body::wrap_stream(tokio_stream_of(rx)))
            .send()
            .await
    });
    for i in 0..8 {
        tx.send(Ok(noise(1 << 20).into_iter().map(|b| b ^ i).collect()))
            .await
            .unwrap();
    }
    let db = data.join("hopper.db");
    eventually(
        "the upload's chunks to be written",
        Duration::from_secs(30),
        || async { (rows(&db, "blob_chunks") >= 4 + 6).then_some(()) },
    )
    .await;
    server.kill9();
    drop(tx);
    let _ = sending.await;

    // Back up: the acknowledged blob and call are there, and the half upload is pruned (its
    // grace is the 2 s retention here); the acknowledged blob stays, its call running.
    let server = Server::start(&data, &args);
    eventually(
        "the half upload to be pruned",
        Duration::from_secs(30),
        || async { (rows(&db, "blob_chunks") == 4).then_some(()) },
    )
    .await;
    let fetched = reqwest::get(format!(
        "{}/v1/blobs/{}",
        server.url,
        reference["$blob"].as_str().unwrap()
    ))
    .await
    .unwrap()
    .bytes()
    .await
    .unwrap();
    assert!(fetched.to_vec() == kept, "the acknowledged blob is whole");
    let _worker = worker(&server.url, "pay.reverse");
    let id = call["id"].as_str().unwrap().parse().unwrap();
    let done = wait_done(&server.client(), &id, Duration::from_secs(60)).await;
    assert_eq!(done.state, CallState::Succeeded, "{done:?}");
}

/// A stream of the chunks `rx` receives.
fn tokio_stream_of(
    rx: tokio::sync::mpsc::Receiver<Result<Vec<u8>, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_while_a_worker_stores_an_output_loses_and_fails_nothing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("make.py"), MAKE_PY).unwrap();
    let m = manifest(dir.path(), APP);
    let data = dir.path().join("data");
    let mut server = Server::start(&data, &["--no-workers", "--deploy", m.to_str().unwrap()]);
    let url = server.url.clone();
    let _worker = worker(&url, "pay.make");
    let db = data.join("hopper.db");
    let (status, call) = spawn_raw(&url, "pay.make", json!(64)).await;
    assert_eq!(status, 201, "{call}");
    // The worker is storing the output (its chunks are arriving): the server dies.
    eventually(
        "the output's upload to start",
        Duration::from_secs(60),
        || async { (rows(&db, "blob_chunks") >= 2).then_some(()) },
    )
    .await;
    server.kill9();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let server = Server::start_again(&server, &["--no-workers"]);
    let id = call["id"].as_str().unwrap().parse().unwrap();
    let done = wait_done(&server.client(), &id, Duration::from_secs(120)).await;
    assert_eq!(done.state, CallState::Succeeded, "{done:?}");
    assert_eq!(
        done.attempts, 1,
        "no attempt failed for the restart: {done:?}"
    );
    let output = done.output.unwrap();
    assert_eq!(output["size"], json!(64u64 << 20), "{output}");
    let block: Vec<u8> = (0..=255u8).collect::<Vec<u8>>().repeat(4096);
    let expected = hopper_core::blob::digest(&block.repeat(64));
    assert_eq!(
        output["$blob"],
        json!(expected),
        "the bytes the function wrote"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_from_a_pipe_go_in_and_an_output_comes_out_on_stdout() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("reverse.py"), REVERSE_PY).unwrap();
    let m = manifest(dir.path(), APP);
    let server = Server::start(&dir.path().join("data"), &["--deploy", m.to_str().unwrap()]);
    let data = noise(700_000);
    for source in ["-", "/dev/stdin"] {
        let mut child = std::process::Command::new(BIN)
            .args(["spawn", "pay.reverse", "--input-bytes", source])
            .env("HOPPER_SERVER", &server.url)
            .env_remove("HOPPER_TOKEN")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(&data).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{source}: {}", stderr(&out));
        let id = stdout(&out).trim().to_string();
        let got = cli(
            &server.url,
            &["get", &id, "--timeout", "60s", "--output", "-"],
        );
        assert_eq!(got.status.code(), Some(0), "{source}: {}", stderr(&got));
        let mut reversed = data.clone();
        reversed.reverse();
        assert!(got.stdout == reversed, "{source}: the bytes on stdout");
    }
    // A folder is refused as such, before anything is sent.
    let out = cli(
        &server.url,
        &[
            "spawn",
            "pay.reverse",
            "--input-bytes",
            dir.path().to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("is a folder"), "{}", stderr(&out));
}
