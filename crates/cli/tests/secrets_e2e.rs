//! Named secrets through the real binary: `hopper secrets set/list/delete`, a function that
//! reads them gets their values in its environment, and the values appear nowhere else — not
//! in the API, the logs, a failure's message, the dashboard or the database file.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use hopper_core::CallState;
use serde_json::{json, Value};

const API_KEY: &str = "sk_live_5f8a2c91d0e7";
const AWS_ID: &str = "AKIAEXAMPLE4417";
const SERVER_KEY: &str = "5e1d0a3c9b8f7e6d5c4b3a29180f7e6d5c4b3a29180f7e6d5c4b3a29180f7e6d";

const MANIFEST: &str = r#"
app = "shop"

[functions.show]
# Proves the values arrived without returning them: their lengths and a digest.
command = ["sh", "-c", "echo \"key is $API_KEY\" >&2; d=$(printf %s \"$API_KEY|$REGION|$AWS\" | sha256sum | cut -c1-16); printf '{\"digest\":\"%s\",\"plain\":\"%s\",\"server_key\":\"%s\"}' \"$d\" \"$PLAIN\" \"${HOPPER_SECRET_KEY:-unset}\""]
secrets = ["stripe"]
env = { AWS = { secret = "aws", key = "ID" }, PLAIN = "visible" }

[functions.leak]
command = ["sh", "-c", "echo \"failed with $API_KEY\" >&2; exit 3"]
secrets = ["stripe"]

[functions.pyleak]
# A Python exception quoting the value: its message and its traceback are both masked.
serve = ["python3", "-m", "hopper._runner", "pyleak.py", "pyleak"]
secrets = ["stripe"]
"#;

const PYLEAK: &str = "import os\nimport hopper\n\napp = hopper.App('shop')\n\n\n@app.function\ndef pyleak():\n    raise RuntimeError('boom key=' + os.environ['API_KEY'])\n";

fn expected_digest() -> String {
    let out = Command::new("sh")
        .args([
            "-c",
            &format!("printf %s '{API_KEY}|eu-west-1|{AWS_ID}' | sha256sum | cut -c1-16"),
        ])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// `hopper secrets set NAME --from-dotenv -` with `text` on stdin.
fn set_from_stdin(url: &str, name: &str, text: &str) -> std::process::Output {
    let mut child = Command::new(BIN)
        .args(["secrets", "set", name, "--from-dotenv", "-"])
        .env("HOPPER_SERVER", url)
        .env_remove("HOPPER_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// `hopper secrets set` of the two secrets `MANIFEST`'s functions read.
fn set_both(url: &str) {
    for (name, values) in [
        (
            "stripe",
            vec![format!("API_KEY={API_KEY}"), "REGION=eu-west-1".into()],
        ),
        ("aws", vec![format!("ID={AWS_ID}")]),
    ] {
        let mut args = vec!["secrets", "set", name];
        args.extend(values.iter().map(String::as_str));
        let out = cli(url, &args);
        assert!(out.status.success(), "{}", stderr(&out));
    }
}

async fn body(url: &str) -> String {
    reqwest::get(url).await.unwrap().text().await.unwrap()
}

/// Every place a value could surface through the server, as text.
async fn everything_shown(server: &Server, call_ids: &[String]) -> String {
    let mut all = String::new();
    for path in [
        "/v1/apps",
        "/v1/functions",
        "/v1/functions/shop.show",
        "/v1/functions/shop.show/versions",
        "/v1/secrets",
        "/v1/secrets/stripe",
        "/v1/calls",
        "/v1/workers",
        "/metrics",
        "/",
    ] {
        all.push_str(&body(&format!("{}{path}", server.url)).await);
    }
    for id in call_ids {
        for path in ["", "/logs", "/attempts", "/inputs/0"] {
            all.push_str(&body(&format!("{}/v1/calls/{id}{path}", server.url)).await);
        }
    }
    all
}

#[tokio::test]
async fn a_secret_reaches_its_functions_environment_and_nowhere_else() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start(&data, &[]);
    std::fs::write(dir.path().join("pyleak.py"), PYLEAK).unwrap();
    let manifest = manifest(dir.path(), MANIFEST);
    let manifest = manifest.to_str().unwrap();

    // A deploy naming secrets that do not exist is refused, and says what exists.
    let out = cli(&server.url, &["deploy", manifest]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("\"stripe\"") && err.contains("no secrets yet"),
        "{err}"
    );

    let out = cli(
        &server.url,
        &[
            "secrets",
            "set",
            "stripe",
            &format!("API_KEY={API_KEY}"),
            "REGION=eu-west-1",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("API_KEY, REGION"), "{}", stdout(&out));
    assert!(!stdout(&out).contains(API_KEY));
    // A secret without the key the manifest reads: refused, naming the keys it has.
    let out = set_from_stdin(&server.url, "aws", "# from a .env file\nSECRET=x\n");
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cli(&server.url, &["deploy", manifest]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("key \"ID\" of secret \"aws\", which has only SECRET"),
        "{}",
        stderr(&out)
    );
    let out = set_from_stdin(&server.url, "aws", &format!("export ID=\"{AWS_ID}\"\n"));
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cli(&server.url, &["deploy", manifest]);
    assert!(out.status.success(), "{}", stderr(&out));

    let client = server.client();
    let call = client.spawn("shop.show", json!(null), None).await.unwrap();
    let done = wait_done(&client, &call.id, Duration::from_secs(60)).await;
    assert_eq!(done.state, CallState::Succeeded, "{done:?}");
    let output = done.output.clone().unwrap();
    assert_eq!(output["digest"], expected_digest(), "{output}");
    assert_eq!(output["plain"], "visible");
    let leak = client.spawn("shop.leak", json!(null), None).await.unwrap();
    let failed = wait_done(&client, &leak.id, Duration::from_secs(60)).await;
    assert_eq!(failed.state, CallState::Failed, "{failed:?}");
    let pyleak = client
        .spawn("shop.pyleak", json!(null), None)
        .await
        .unwrap();
    let pyfailed = wait_done(&client, &pyleak.id, Duration::from_secs(60)).await;
    let error = pyfailed.error.clone().unwrap();
    assert_eq!(error.code, "RuntimeError", "{pyfailed:?}");
    assert!(error.message.contains("boom key=***"), "{error:?}");
    let traceback = error.traceback.clone().unwrap_or_default();
    assert!(
        traceback.contains("boom key=***"),
        "the traceback is masked too: {traceback}"
    );

    // The log line that printed the key shows stars; so does the failure's message.
    let logs = client.logs(&call.id, 0, None).await.unwrap();
    let lines: Vec<&str> = logs.lines.iter().map(|l| l.line.as_str()).collect();
    assert!(lines.contains(&"key is ***"), "{lines:?}");
    let shown = everything_shown(
        &server,
        &[
            call.id.to_string(),
            leak.id.to_string(),
            pyleak.id.to_string(),
        ],
    )
    .await;
    for value in [API_KEY, AWS_ID] {
        assert!(!shown.contains(value), "{value} is shown by the server");
    }
    assert!(shown.contains("failed with ***"), "the leak's error or log");
    // Nor is it in the database's files: the store holds it sealed.
    for entry in std::fs::read_dir(&data).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            continue;
        }
        let bytes = std::fs::read(path).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains(API_KEY) && !text.contains(AWS_ID));
    }
    let key_file = std::fs::metadata(data.join("secret.key")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(key_file.permissions().mode() & 0o777, 0o600);

    // Listing shows names, keys and users; deleting a secret in use is refused.
    let list: Value =
        serde_json::from_str(&stdout(&cli(&server.url, &["secrets", "list", "--json"]))).unwrap();
    assert_eq!(list[1]["name"], "stripe");
    assert_eq!(list[1]["keys"], json!(["API_KEY", "REGION"]));
    assert_eq!(
        list[1]["used_by"],
        json!(["shop.leak", "shop.pyleak", "shop.show"])
    );
    // Setting a secret without a key a deployed function reads is refused too.
    let out = cli(&server.url, &["secrets", "set", "aws", "SECRET=x"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("shop.show reads key \"ID\" (as AWS)"),
        "{}",
        stderr(&out)
    );
    let out = cli(&server.url, &["secrets", "delete", "stripe"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("read by shop.leak, shop.pyleak, shop.show"),
        "{}",
        stderr(&out)
    );

    // After a restart the key file opens what was sealed before.
    server.stop();
    let server = Server::start(&data, &[]);
    let client = server.client();
    let call = client.spawn("shop.show", json!(null), None).await.unwrap();
    let done = wait_done(&client, &call.id, Duration::from_secs(60)).await;
    assert_eq!(
        done.output.unwrap()["digest"],
        expected_digest(),
        "after a restart"
    );
}

#[tokio::test]
async fn the_servers_key_never_reaches_a_function_and_a_wrong_key_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start_with_env(&[("HOPPER_SECRET_KEY", SERVER_KEY)], &data, &[]);
    let manifest = manifest(dir.path(), MANIFEST);
    set_both(&server.url);
    let out = cli(&server.url, &["deploy", manifest.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let client = server.client();
    let call = client.spawn("shop.show", json!(null), None).await.unwrap();
    let done = wait_done(&client, &call.id, Duration::from_secs(60)).await;
    let output = done.output.unwrap();
    assert_eq!(output["digest"], expected_digest());
    assert_eq!(
        output["server_key"], "unset",
        "the key leaked to a function"
    );
    // With HOPPER_SECRET_KEY there is no key file.
    assert!(!data.join("secret.key").exists());
    drop(server);

    // The same data under another key: the secret cannot be opened, and the call says why
    // (it waits for a retry, so it is cancelled here once the message is seen).
    let other = "00".repeat(32);
    let server = Server::start_with_env(&[("HOPPER_SECRET_KEY", &other)], &data, &[]);
    let client = server.client();
    let call = client.spawn("shop.show", json!(null), None).await.unwrap();
    let message = eventually(
        "the attempt that names the key",
        Duration::from_secs(30),
        || {
            let client = client.clone();
            let id = call.id.clone();
            async move {
                let attempts = client.attempts(&id).await.ok()?;
                attempts.iter().find_map(|a| a.error.clone())
            }
        },
    )
    .await;
    assert_eq!(message.code, "secret_unavailable", "{message:?}");
    assert!(message.message.contains("another key"), "{message:?}");
    client.cancel(&call.id).await.unwrap();

    // A malformed key stops the server at start, naming the variable.
    let out = Command::new(BIN)
        .args(["serve", "--data"])
        .arg(&data)
        .args(["--listen", "127.0.0.1:0"])
        .env("HOPPER_SECRET_KEY", "not-hex")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("HOPPER_SECRET_KEY"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn postgres_needs_a_key_to_store_secrets() {
    let Ok(url) = std::env::var("HOPPER_TEST_POSTGRES") else {
        println!("SKIP postgres_needs_a_key_to_store_secrets: HOPPER_TEST_POSTGRES is not set");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let schema = format!("hopper_test_{}", hopper_core::ids::random_hex());
    let args = [
        "--database",
        &url,
        "--database-schema",
        &schema,
        "--no-workers",
    ];
    let server = Server::start(&dir.path().join("data"), &args);
    let out = cli(&server.url, &["secrets", "set", "stripe", "API_KEY=x"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("HOPPER_SECRET_KEY"),
        "{}",
        stderr(&out)
    );
    drop(server);
    let server = Server::start_with_env(
        &[("HOPPER_SECRET_KEY", SERVER_KEY)],
        &dir.path().join("data"),
        &args,
    );
    let out = cli(&server.url, &["secrets", "set", "stripe", "API_KEY=x"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[tokio::test]
async fn a_key_is_replaced_without_a_moment_when_secrets_cannot_be_read() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (old, new) = (SERVER_KEY.to_string(), "ab".repeat(32));
    let set_and_deploy = |url: &str| {
        set_both(url);
        let m = manifest(dir.path(), MANIFEST);
        let out = cli(url, &["deploy", m.to_str().unwrap()]);
        assert!(out.status.success(), "{}", stderr(&out));
    };
    let reads = |server: &Server| {
        let client = server.client();
        async move {
            let call = client.spawn("shop.show", json!(null), None).await.unwrap();
            let done = wait_done(&client, &call.id, Duration::from_secs(60)).await;
            assert_eq!(
                done.output.as_ref().map(|o| o["digest"].clone()),
                Some(json!(expected_digest())),
                "{done:?}"
            );
        }
    };
    let mut server = Server::start_with_env(&[("HOPPER_SECRET_KEY", &old)], &data, &[]);
    set_and_deploy(&server.url);
    reads(&server).await;
    server.stop();

    // The new key first, the old one after it: what the old one sealed still opens.
    let both = format!("{new},{old}");
    let mut server = Server::start_with_env(&[("HOPPER_SECRET_KEY", &both)], &data, &[]);
    reads(&server).await;
    let out = cli(&server.url, &["secrets", "reseal"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("2 secrets sealed again"),
        "{}",
        stdout(&out)
    );
    server.stop();

    // Resealed: the new key alone opens everything.
    let mut server = Server::start_with_env(&[("HOPPER_SECRET_KEY", &new)], &data, &[]);
    reads(&server).await;
    server.stop();

    // A key that opens nothing: reseal names what it cannot open, and changes nothing.
    let server = Server::start_with_env(&[("HOPPER_SECRET_KEY", &"cd".repeat(32))], &data, &[]);
    let out = cli(&server.url, &["secrets", "reseal"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("aws, stripe"), "{}", stderr(&out));
    drop(server);
    let server = Server::start_with_env(&[("HOPPER_SECRET_KEY", &new)], &data, &[]);
    reads(&server).await;

    // A malformed second key is named by its place.
    let out = Command::new(BIN)
        .args(["serve", "--data"])
        .arg(&data)
        .args(["--listen", "127.0.0.1:0"])
        .env("HOPPER_SECRET_KEY", format!("{new},nothex"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("key 2 of 2"), "{}", stderr(&out));
}

#[tokio::test]
async fn a_key_file_rotates_its_keys_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let (old, new) = (SERVER_KEY.to_string(), "ef".repeat(32));
    std::fs::write(&keys, format!("{old}\n")).unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &["--secret-key-file", keys.to_str().unwrap()],
    );
    set_both(&server.url);
    let m = manifest(dir.path(), MANIFEST);
    let out = cli(&server.url, &["deploy", m.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let client = server.client();
    let reads = || async {
        let call = client.spawn("shop.show", json!(null), None).await.unwrap();
        let done = wait_done(&client, &call.id, Duration::from_secs(60)).await;
        assert_eq!(
            done.output.as_ref().map(|o| o["digest"].clone()),
            Some(json!(expected_digest())),
            "{done:?}"
        );
    };
    reads().await;
    let hup = || {
        assert!(Command::new("kill")
            .args(["-HUP", &server.pid().to_string()])
            .status()
            .unwrap()
            .success())
    };
    // The new key first: after a SIGHUP it seals, the old one still opens.
    std::fs::write(&keys, format!("# newest first\n{new}\n{old}\n")).unwrap();
    hup();
    eventually(
        "the reseal uses the new key",
        Duration::from_secs(10),
        || async {
            let out = cli(&server.url, &["secrets", "reseal"]);
            (out.status.success() && stdout(&out).contains("2 secrets sealed again")).then_some(())
        },
    )
    .await;
    reads().await;
    // The old key dropped, and a broken file after it: the secrets still open.
    std::fs::write(&keys, format!("{new}\n")).unwrap();
    hup();
    tokio::time::sleep(Duration::from_millis(300)).await;
    reads().await;
    std::fs::write(&keys, "not a key\n").unwrap();
    hup();
    tokio::time::sleep(Duration::from_millis(300)).await;
    reads().await;
    // The resealed secrets open with the new key alone, as a fresh server proves.
    drop(server);
    std::fs::write(&keys, format!("{new}\n")).unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &["--secret-key-file", keys.to_str().unwrap()],
    );
    let client = server.client();
    let call = client.spawn("shop.show", json!(null), None).await.unwrap();
    let done = wait_done(&client, &call.id, Duration::from_secs(60)).await;
    assert_eq!(done.state, hopper_core::InputState::Succeeded, "{done:?}");
}
