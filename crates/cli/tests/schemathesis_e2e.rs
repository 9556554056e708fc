//! The OpenAPI document is the contract: schemathesis (pinned in the README's set-up) tests a
//! real server against the document it serves, with every check, negative data and the
//! stateful phase, once without a token and once with one. A failure prints schemathesis's
//! report, with a `curl` line for each fault.
//!
//! Needs `schemathesis` on PATH (`python3 -m pip install 'schemathesis==4.32.5'`); without it
//! the test says it skipped, unless `HOPPER_TEST_SCHEMATHESIS=1` (set by `.ci/run`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use std::process::Command;

use common::*;

const APP: &str = r#"
app = "demo"
[functions.echo]
command = ["cat"]
[schedules.tick]
function = "echo"
every = "1h"
"#;

/// What the document cannot say: a manifest is checked by parsing it, so a schema-valid but
/// meaningless one is refused with 400 by design.
const CONFIG: &str = r#"
[[operations]]
include-name = "POST /v1/apps"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400"]
"#;

fn schemathesis_ready() -> bool {
    if Command::new("schemathesis")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return true;
    }
    assert!(
        std::env::var("HOPPER_TEST_SCHEMATHESIS").ok().as_deref() != Some("1"),
        "HOPPER_TEST_SCHEMATHESIS=1 but schemathesis is not on PATH (python3 -m pip install 'schemathesis==4.32.5')"
    );
    println!("SKIP: schemathesis is not installed (python3 -m pip install 'schemathesis==4.32.5')");
    false
}

fn run(server: &Server, dir: &std::path::Path, token: Option<&str>) {
    let config = dir.join("schemathesis.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let mut cmd = Command::new("schemathesis");
    cmd.arg("--config-file")
        .arg(&config)
        .arg("run")
        .arg(format!("{}/v1/openapi.json", server.url))
        // One worker: hypothesis describes strategies racily across threads.
        .args(["--checks", "all", "--workers", "1"])
        .args(["--max-examples", "25"])
        .args(["--request-timeout", "20"])
        .args([
            "--seed",
            &std::env::var("HOPPER_SCHEMATHESIS_SEED").unwrap_or_else(|_| "1".into()),
        ])
        .current_dir(dir)
        .env("NO_COLOR", "1");
    if let Some(token) = token {
        cmd.args(["--header", &format!("Authorization: Bearer {token}")]);
    }
    let out = cmd.output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    println!("{report}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "schemathesis found faults ({} token); its report is above",
        if token.is_some() {
            "with a"
        } else {
            "without a"
        }
    );
}

#[test]
fn the_server_keeps_to_its_openapi_document_without_a_token() {
    if !schemathesis_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(dir.path(), APP);
    // Long-polls are capped short, so generated waits do not make the run long.
    let server = Server::start(
        &dir.path().join("data"),
        &["--deploy", m.to_str().unwrap(), "--max-wait", "2s"],
    );
    run(&server, dir.path(), None);
}

#[test]
fn the_server_keeps_to_its_openapi_document_with_a_token() {
    if !schemathesis_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(dir.path(), APP);
    let server = Server::start(
        &dir.path().join("data"),
        &[
            "--deploy",
            m.to_str().unwrap(),
            "--max-wait",
            "2s",
            "--token",
            "schemathesis-t",
        ],
    );
    run(&server, dir.path(), Some("schemathesis-t"));
}
