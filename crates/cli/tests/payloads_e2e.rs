//! Payloads beyond inline JSON, through the real binary: bytes spawned from a file with
//! `hopper spawn --input-bytes` reach a command as a file it reads, the output file the
//! command names comes back through `hopper get --output`, on SQLite and PostgreSQL; a
//! reference to a blob that is not stored, or with the wrong size, is refused naming it; a blob
//! damaged or gone before a worker fetches it fails the input at once, without retries; a blob
//! over `--max-blob` is refused naming the setting and nothing is kept; a page of large results
//! ends at its byte bound and the rest come from its cursor.
//!
//! With blobs in an S3-compatible bucket (`serve --blobs s3://bucket/prefix`, against moto's S3
//! server, where `HOPPER_EXAMPLES_PYTHON` names a Python with `moto[server]`; `.ci/run` sets
//! it): bytes go through the bucket, in parts, with nothing of them in the database; a second
//! server on the same PostgreSQL database and bucket reads what the first stored; an object
//! deleted from the bucket by hand fails its input once, saying so; a `kill -9` during an upload
//! keeps what was acknowledged; the pruner deletes the objects no blob names and leaves other
//! names alone; a bucket that is not there stops the server at start.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use std::process::{Child, Command, Stdio};
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
[functions.late]
command = ["python3", "late.py"]
[functions.loud]
command = ["sh", "-c", "for i in 1 2 3 4 5; do head -c 15000 /dev/zero | tr '\\0' x >&2; echo >&2; done; exit 3"]
retries = 1
[functions.fifo]
command = ["sh", "-c", "mkfifo $HOPPER_BLOB_DIR/ff && echo '{\"$blob\": null, \"path\": \"'$HOPPER_BLOB_DIR/ff'\"}'"]
[functions.stubborn]
command = ["sh", "-c", "for i in 1 2 3 4 5; do head -c 15000 /dev/zero | tr '\\0' x >&2; echo >&2; done; exit 3"]
retries = { max_retries = 299, initial_delay = "0s" }
"#;

/// Writes its input's text to a file in `HOPPER_BLOB_DIR`, waits its input's seconds, and names
/// the file as its output.
const LATE_PY: &str = r#"
import json, os, sys, time
n = json.load(sys.stdin)
out = os.path.join(os.environ["HOPPER_BLOB_DIR"], "late")
open(out, "w").write("waited %d s" % n)
time.sleep(n)
print(json.dumps({"$blob": None, "path": out}))
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

/// `size` bytes spawned from a file through `pay.reverse`, and its output read back into a file.
async fn round_trip(server: &Server, dir: &std::path::Path, size: usize) {
    let input = dir.join("in.bin");
    let data = noise(size);
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
    let data = dir.path().join("data");
    let server = Server::start(&data, &["--deploy", m.to_str().unwrap()]);
    round_trip(&server, dir.path(), 5 * 1024 * 1024 + 17).await;
    // With SQLite, blobs are files of the data folder by default: the input and the output.
    assert_eq!(left(&data, "files"), (2, 0));
    assert_eq!(left(&data, "database"), (0, 0));
    // A file cut short behind the server's back: the blob is damaged, and said to be.
    let (_, reference) = upload(&server.url, noise(300_001)).await;
    let file = std::fs::read_dir(data.join("blobs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| std::fs::metadata(p).unwrap().len() == 300_001)
        .unwrap();
    std::fs::write(&file, b"short").unwrap();
    let response = reqwest::get(format!(
        "{}/v1/blobs/{}",
        server.url,
        reference["$blob"].as_str().unwrap()
    ))
    .await
    .unwrap();
    assert_eq!(response.status().as_u16(), 500);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "blob_corrupt", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("holds 5 bytes, not 300001"),
        "{body}"
    );
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
        round_trip(&server, dir.path(), 5 * 1024 * 1024 + 17).await;
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
            "--blobs",
            "database",
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
    let out = Command::new("python3")
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
    let call = map_to_its_end(&client, "pay.big", inputs).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_of_failed_inputs_and_of_attempts_end_at_their_byte_bound() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(dir.path(), APP);
    let server = Server::start(&dir.path().join("data"), &["--deploy", m.to_str().unwrap()]);
    let client = server.client();
    // 400 inputs, each failing twice with 64 KiB of stderr in its error: 800 attempts of 50 MiB
    // of errors in all, 400 failed inputs of 25 MiB.
    let inputs: Vec<Value> = (0..400).map(|i| json!(i)).collect();
    let call = map_to_its_end(&client, "pay.loud", inputs).await;
    assert_eq!(call.inputs.failed, 400, "{call:?}");
    let get = |path: String| {
        let url = format!("{}{path}", server.url);
        async move { reqwest::get(url).await.unwrap() }
    };

    // Failed inputs, 1,000 a page at most: cut by bytes, each page with a cursor on.
    let mut cursor = String::new();
    let mut pages = Vec::new();
    loop {
        let page: Value = get(format!("/v1/inputs?call={}&limit=1000{cursor}", call.id))
            .await
            .json()
            .await
            .unwrap();
        pages.push(page["inputs"].as_array().unwrap().len());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => break,
        }
        assert!(pages.len() < 20, "{pages:?}");
    }
    assert_eq!(pages.iter().sum::<usize>(), 400, "{pages:?}");
    assert!(pages.len() >= 2 && pages[0] < 400, "{pages:?}");

    // Attempts, 10,000 a page at most: cut at a whole input, the next page linked.
    let mut path = format!("/v1/calls/{}/attempts?limit=10000", call.id);
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let response = get(path.clone()).await;
        let link = response
            .headers()
            .get("link")
            .map(|v| v.to_str().unwrap().to_string());
        let page: Vec<Value> = response.json().await.unwrap();
        seen.extend(
            page.iter()
                .map(|a| (a["index"].as_i64().unwrap(), a["attempt"].as_i64().unwrap())),
        );
        pages += 1;
        let Some(link) = link else { break };
        path = link
            .strip_prefix('<')
            .and_then(|l| l.split_once(">; rel=\"next\""))
            .unwrap()
            .0
            .to_string();
        assert!(pages < 20, "{link}");
    }
    let expected: Vec<(i64, i64)> = (0..400).flat_map(|i| [(i, 1), (i, 2)]).collect();
    assert_eq!(
        seen, expected,
        "every attempt once, in order, over {pages} pages"
    );
    assert!(pages >= 2, "{pages} page(s)");
    assert!(pages <= 4, "pages end at 16 MiB, not before: {pages}");

    // One input's 300 attempts, over the bound on their own: one page holds them all.
    let call = map_to_its_end(&client, "pay.stubborn", vec![json!(0)]).await;
    assert_eq!(call.inputs.failed, 1, "{call:?}");
    for query in ["limit=10000", "index=0"] {
        let page: Vec<Value> = get(format!("/v1/calls/{}/attempts?{query}", call.id))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(page.len(), 300, "{query}");
    }
}

/// A map of `inputs` through `function`, once it has ended.
async fn map_to_its_end(
    client: &hopper_sdk::Client,
    function: &str,
    inputs: Vec<Value>,
) -> hopper_core::api::CallView {
    let call = client
        .map_start(
            function,
            &hopper_core::api::MapRequest {
                inputs,
                done: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    wait_done(client, &call.id, Duration::from_secs(300)).await
}

/// Rows of a table of the SQLite database at `db`.
fn rows(db: &std::path::Path, table: &str) -> u64 {
    let out = Command::new("python3")
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

/// What an upload left in the data folder: chunk rows (`--blobs database`), or files of
/// `DATA/blobs`, whole and partial (a cut multipart upload's, `<upload>#<part>`).
fn left(data: &std::path::Path, blobs: &str) -> (u64, u64) {
    if blobs == "database" {
        return (rows(&data.join("hopper.db"), "blob_chunks"), 0);
    }
    let names: Vec<String> = std::fs::read_dir(data.join("blobs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let partial = names.iter().filter(|n| n.contains('#')).count() as u64;
    (names.len() as u64 - partial, partial)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_during_an_upload_keeps_what_it_acknowledged_and_prunes_the_rest() {
    killed_during_an_upload("database").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_during_an_upload_to_files_keeps_what_it_acknowledged_and_prunes_the_rest()
{
    killed_during_an_upload("files").await;
}

async fn killed_during_an_upload(blobs: &str) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("reverse.py"), REVERSE_PY).unwrap();
    let m = manifest(dir.path(), APP);
    let data = dir.path().join("data");
    let args = [
        "--no-workers",
        "--blobs",
        blobs,
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
    // Acknowledged: 4 chunks, or 1 file.
    let whole = if blobs == "database" { 4 } else { 1 };
    // An upload of 64 MiB that stops coming after 24: its chunks are in the database (or its
    // parts in a partial file) when the server is killed.
    let (tx, sending) = upload_of_64mib_cut_after(&server.url, 24).await;
    eventually(
        "the upload's chunks to be written",
        Duration::from_secs(30),
        || async {
            let (done, partial) = left(&data, blobs);
            (done >= whole + 6 || partial > 0).then_some(())
        },
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
        || async { (left(&data, blobs) == (whole, 0)).then_some(()) },
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

/// An upload announced as 64 MiB of which `mib` MiB are sent: the sender that would send the
/// rest (drop it to end the body short), and the request.
async fn upload_of_64mib_cut_after(
    url: &str,
    mib: u8,
) -> (
    tokio::sync::mpsc::Sender<Result<Vec<u8>, std::io::Error>>,
    tokio::task::JoinHandle<reqwest::Result<reqwest::Response>>,
) {
    let url = url.to_string();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(2);
    let sending = tokio::spawn(async move {
        reqwest::Client::new()
            .post(format!("{url}/v1/blobs"))
            .header("content-type", "application/octet-stream")
            .header("content-length", (64u64 << 20).to_string())
            .body(reqwest::Body::wrap_stream(tokio_stream_of(rx)))
            .send()
            .await
    });
    for i in 0..mib {
        tx.send(Ok(noise(1 << 20).into_iter().map(|b| b ^ i).collect()))
            .await
            .unwrap();
    }
    (tx, sending)
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
    let (status, call) = spawn_raw(&url, "pay.make", json!(64)).await;
    assert_eq!(status, 201, "{call}");
    // The worker is storing the output (its parts are arriving): the server dies.
    eventually(
        "the output's upload to start",
        Duration::from_secs(60),
        || async { (left(&data, "files").1 > 0).then_some(()) },
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
async fn workers_of_two_servers_on_one_machine_keep_their_attempts_files_apart() {
    // Input 1's attempt 1 on each server: the same name. The first still runs when the second
    // ends, and the second's end must not remove the first's output file.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("late.py"), LATE_PY).unwrap();
    let m = manifest(dir.path(), APP);
    let args = ["--no-workers", "--deploy", m.to_str().unwrap()];
    let first = Server::start(&dir.path().join("data1"), &args);
    let second = Server::start(&dir.path().join("data2"), &args);
    let _workers = [
        worker(&first.url, "pay.late"),
        worker(&second.url, "pay.late"),
    ];
    let (_, slow) = spawn_raw(&first.url, "pay.late", json!(4)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, fast) = spawn_raw(&second.url, "pay.late", json!(0)).await;
    for (server, call, text) in [
        (&second, &fast, "waited 0 s"),
        (&first, &slow, "waited 4 s"),
    ] {
        let id = call["id"].as_str().unwrap().parse().unwrap();
        let done = wait_done(&server.client(), &id, Duration::from_secs(60)).await;
        assert_eq!(done.state, CallState::Succeeded, "{done:?}");
        let output = done.output.unwrap();
        let (status, bytes) = download(&server.url, &output).await;
        assert_eq!(
            (status, String::from_utf8(bytes).unwrap()),
            (200, text.to_string())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_stay_readable_under_database_blobs_and_an_output_must_be_a_regular_file() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(dir.path(), APP);
    let data = dir.path().join("data");
    let mut server = Server::start(&data, &["--deploy", m.to_str().unwrap()]);
    // An output naming a pipe fails at once (reading it would wait for a writer forever).
    let (_, call) = spawn_raw(&server.url, "pay.fifo", json!(null)).await;
    let id = call["id"].as_str().unwrap().parse().unwrap();
    let done = wait_done(&server.client(), &id, Duration::from_secs(60)).await;
    let error = done.error.unwrap();
    assert_eq!(error.code, "bad_output", "{error:?}");
    assert!(error.message.contains("not a regular file"), "{error:?}");
    // A file of /proc says it is empty and is not: its bytes are sent all the same.
    let out = cli(
        &server.url,
        &["spawn", "pay.reverse", "--input-bytes", "/proc/self/status"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let input: Value = reqwest::get(format!(
        "{}/v1/calls/{}/inputs/0",
        server.url,
        stdout(&out).trim()
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let size = input["input"]["size"].as_u64().unwrap();
    assert!(size > 100, "{size} bytes of /proc/self/status");
    // A blob stored as a file, read by the same data folder's server under --blobs database.
    let bytes = noise(300_003);
    let (_, reference) = upload(&server.url, bytes.clone()).await;
    server.stop();
    let server = Server::start(&data, &["--blobs", "database"]);
    let (status, read) = download(&server.url, &reference).await;
    assert!(status == 200 && read == bytes, "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_from_a_pipe_go_in_and_an_output_comes_out_on_stdout() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("reverse.py"), REVERSE_PY).unwrap();
    let m = manifest(dir.path(), APP);
    let server = Server::start(&dir.path().join("data"), &["--deploy", m.to_str().unwrap()]);
    let data = noise(700_000);
    for source in ["-", "/dev/stdin"] {
        let mut child = Command::new(BIN)
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

// Blobs kept in an S3-compatible bucket (`serve --blobs s3://…`), against moto's S3 server.

const BUCKET: &str = "hopper-blobs";
const PREFIX: &str = "cluster-a/blobs";

/// moto's S3 server on a free loopback port, stopped when dropped.
struct Moto {
    child: Child,
    endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    async fn start(python: &str) -> Moto {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(python)
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let moto = Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let url = moto.endpoint.clone();
        eventually("moto to listen", Duration::from_secs(60), || {
            let url = url.clone();
            async move { reqwest::get(&url).await.ok().map(|_| ()) }
        })
        .await;
        let made = reqwest::Client::new()
            .put(format!("{}/{BUCKET}", moto.endpoint))
            .send()
            .await
            .unwrap();
        assert!(made.status().is_success(), "{:?}", made.text().await);
        moto
    }

    /// What `hopper serve` needs to reach the bucket.
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }

    /// The keys in the bucket under `prefix`, with their sizes.
    async fn objects(&self, prefix: &str) -> Vec<(String, u64)> {
        let xml = reqwest::get(format!(
            "{}/{BUCKET}?list-type=2&prefix={prefix}",
            self.endpoint
        ))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
        xml.split("<Contents>")
            .skip(1)
            .map(|item| {
                let field = |name: &str| {
                    item.split(&format!("<{name}>"))
                        .nth(1)
                        .and_then(|rest| rest.split(&format!("</{name}>")).next())
                        .unwrap()
                        .to_string()
                };
                (field("Key"), field("Size").parse().unwrap())
            })
            .collect()
    }

    async fn put(&self, key: &str, body: &'static [u8]) {
        let put = reqwest::Client::new()
            .put(format!("{}/{BUCKET}/{key}", self.endpoint))
            .body(body)
            .send()
            .await
            .unwrap();
        assert!(put.status().is_success());
    }

    async fn delete(&self, key: &str) {
        let deleted = reqwest::Client::new()
            .delete(format!("{}/{BUCKET}/{key}", self.endpoint))
            // moto checks no signature, but refuses a deletion that names no credential.
            .header(
                "authorization",
                "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0",
            )
            .send()
            .await
            .unwrap();
        assert!(deleted.status().is_success(), "{:?}", deleted.text().await);
    }
}

fn start(moto: &Moto, data: &std::path::Path, args: &[&str]) -> Server {
    let env = moto.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let blobs = format!("s3://{BUCKET}/{PREFIX}/");
    let mut all = vec!["--blobs", blobs.as_str()];
    all.extend_from_slice(args);
    Server::start_with_env(&env, data, &all)
}

async fn download(url: &str, reference: &Value) -> (u16, Vec<u8>) {
    let response = reqwest::get(format!(
        "{url}/v1/blobs/{}",
        reference["$blob"].as_str().unwrap()
    ))
    .await
    .unwrap();
    let status = response.status().as_u16();
    (status, response.bytes().await.unwrap().to_vec())
}

fn moto_python() -> Option<String> {
    let python = std::env::var("HOPPER_EXAMPLES_PYTHON").ok();
    if python.is_none() {
        // CI must not skip it.
        assert!(
            std::env::var_os("HOPPER_TEST_EXAMPLES").is_none(),
            "HOPPER_TEST_EXAMPLES is set but HOPPER_EXAMPLES_PYTHON is not"
        );
        eprintln!("HOPPER_EXAMPLES_PYTHON is not set (a Python with moto[server]): skipped");
    }
    python
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_travel_through_the_bucket_and_the_pruner_keeps_it_to_what_blobs_name() {
    let Some(python) = moto_python() else {
        return;
    };
    let moto = Moto::start(&python).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("reverse.py"), REVERSE_PY).unwrap();
    let m = manifest(dir.path(), APP);
    let data = dir.path().join("data");
    let server = start(
        &moto,
        &data,
        &["--retention", "8s", "--deploy", m.to_str().unwrap()],
    );

    // 20 MiB in (three parts of a multipart upload), reversed by a command, 20 MiB out.
    let size = 20 * 1024 * 1024 + 3;
    round_trip(&server, dir.path(), size).await;
    // Both live in the bucket under the prefix, and none of them in the database.
    let objects = moto.objects(PREFIX).await;
    assert_eq!(objects.len(), 2, "{objects:?}");
    assert!(
        objects
            .iter()
            .all(|(key, n)| key.starts_with(&format!("{PREFIX}/")) && *n == size as u64),
        "{objects:?}"
    );
    assert_eq!(rows(&data.join("hopper.db"), "blob_chunks"), 0);

    // An object deleted from the bucket by hand: its input fails once, saying so.
    let before: Vec<String> = objects.iter().map(|(k, _)| k.clone()).collect();
    let lost_bytes = noise(400_001);
    let (_, lost) = upload(&server.url, lost_bytes.clone()).await;
    let lost_key = moto
        .objects(PREFIX)
        .await
        .into_iter()
        .find(|(key, size)| *size == 400_001 && !before.contains(key))
        .unwrap()
        .0;
    moto.delete(&lost_key).await;
    let out = cli(
        &server.url,
        &["spawn", "pay.reverse", "--input", &lost.to_string()],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let lost_call = stdout(&out).trim().parse().unwrap();
    let done = wait_done(&server.client(), &lost_call, Duration::from_secs(60)).await;
    assert_eq!(done.state, CallState::Failed, "{done:?}");
    let error = done.error.unwrap();
    assert_eq!(error.code, "blob_corrupt", "{error:?}");
    assert!(error.message.contains("gone from the bucket"), "{error:?}");
    assert_eq!(done.attempts, 1, "no retry: it would find the same");
    // The same bytes uploaded again repair it: the new copy takes the lost one's place.
    let (status, again) = upload(&server.url, lost_bytes.clone()).await;
    assert_eq!((status, &again), (200, &lost));
    let (status, read) = download(&server.url, &lost).await;
    assert!(status == 200 && read == lost_bytes, "{status}");

    // Objects this server did not write are never touched, even with an upload's name
    // (another installation sharing the prefix); its own go once no blob needs them (the
    // calls' past the 8 s retention, the unclaimed ones past their grace).
    let theirs = format!("{PREFIX}/0123456789abcdef0123456789abcdef");
    moto.put(&theirs, b"another installation's").await;
    let other = format!("{PREFIX}/README.txt");
    moto.put(&other, b"not hopper's").await;
    eventually(
        "the pruner to delete the objects no blob needs",
        Duration::from_secs(60),
        || async {
            let keys: Vec<String> = moto
                .objects(PREFIX)
                .await
                .into_iter()
                .map(|(k, _)| k)
                .collect();
            (keys == vec![theirs.clone(), other.clone()]).then_some(())
        },
    )
    .await;
    let (status, _) = download(&server.url, &lost).await;
    assert_eq!(status, 404, "the unclaimed blob is pruned with its object");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_upload_keeps_what_it_acknowledged_and_servers_share_the_bucket() {
    let Some(python) = moto_python() else {
        return;
    };
    let moto = Moto::start(&python).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("reverse.py"), REVERSE_PY).unwrap();
    let m = manifest(dir.path(), APP);
    let pg = test_database();
    let mut args: Vec<String> = vec![
        "--no-workers".into(),
        "--deploy".into(),
        m.to_str().unwrap().into(),
    ];
    if let Some((url, schema)) = &pg {
        args.extend([
            "--database".into(),
            url.clone(),
            "--database-schema".into(),
            schema.clone(),
        ]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let data = dir.path().join("data");
    let mut server = start(&moto, &data, &args);
    let kept = noise(9 * 1024 * 1024);
    let (status, reference) = upload(&server.url, kept.clone()).await;
    assert_eq!(status, 201, "{reference}");
    let spawned = reqwest::Client::new()
        .post(format!("{}/v1/functions/pay.reverse/calls", server.url))
        .json(&json!({ "input": reference }))
        .send()
        .await
        .unwrap();
    assert_eq!(spawned.status().as_u16(), 201);
    let call: Value = spawned.json().await.unwrap();

    // 24 MiB of a 64 MiB upload sent (parts on their way to the bucket), then kill -9.
    let (tx, sending) = upload_of_64mib_cut_after(&server.url, 24).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.kill9();
    drop(tx);
    let _ = sending.await;
    assert_eq!(
        moto.objects(PREFIX).await.len(),
        1,
        "only the acknowledged blob's object"
    );

    // Back up (and, on PostgreSQL, a second server beside it): the acknowledged blob is whole
    // from either, and its call runs.
    let server = start(&moto, &data, &args);
    let second = pg
        .as_ref()
        .map(|_| start(&moto, &dir.path().join("data2"), &args));
    for s in std::iter::once(&server).chain(second.as_ref()) {
        let (status, read) = download(&s.url, &reference).await;
        assert!(status == 200 && read == kept, "{status} from {}", s.url);
    }
    let _worker = worker(&server.url, "pay.reverse");
    let id = call["id"].as_str().unwrap().parse().unwrap();
    let done = wait_done(&server.client(), &id, Duration::from_secs(60)).await;
    assert_eq!(done.state, CallState::Succeeded, "{done:?}");
    drop(second);
    drop(server);
    if let Some((url, schema)) = pg {
        drop_test_schema(&url, &schema).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_that_is_not_there_stops_the_server_at_start() {
    let Some(python) = moto_python() else {
        return;
    };
    let moto = Moto::start(&python).await;
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hopper"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path().join("data"))
        .args(["--blobs", "s3://no-such-bucket/x"])
        .envs(moto.env())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--blobs s3://no-such-bucket/x: cannot list"),
        "{}",
        stderr(&out)
    );
    let out = Command::new(env!("CARGO_BIN_EXE_hopper"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path().join("data"))
        .args(["--blobs", "s3:/bucket"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("expected files, database or s3://bucket/prefix"),
        "{}",
        stderr(&out)
    );
}
