//! The files in deploy/ are checked as far as this machine can: the Kubernetes manifests parse
//! (Python's YAML parser), the commands they run are ones `hopper` accepts, and the metric the
//! autoscaler queries exists in `/metrics`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use std::path::PathBuf;

use common::*;
use serde_json::Value;

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

/// Every YAML document in deploy/kubernetes, as JSON.
fn manifests() -> Vec<Value> {
    let script = "import json, sys, yaml, glob\nprint(json.dumps([d for f in sorted(glob.glob(sys.argv[1] + '/*.yaml')) for d in yaml.safe_load_all(open(f)) if d]))";
    let out = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(deploy_dir().join("kubernetes"))
        .output()
        .expect("python3 runs (PyYAML: pip install pyyaml)");
    assert!(
        out.status.success(),
        "the manifests do not parse: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn the_kubernetes_manifests_parse_and_name_a_metric_the_server_serves() {
    let docs = manifests();
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    for kind in ["Secret", "Deployment", "Service", "ScaledObject"] {
        assert!(kinds.contains(&kind), "no {kind} in {kinds:?}");
    }
    // The containers' arguments are ones hopper accepts (checked with --help after them).
    for d in docs.iter().filter(|d| d["kind"] == "Deployment") {
        let container = &d["spec"]["template"]["spec"]["containers"][0];
        let mut args: Vec<String> = container["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect();
        let subcommand = args.remove(0);
        let flags: Vec<String> = args
            .iter()
            .map(|a| a.split('=').next().unwrap().to_string())
            .collect();
        let help = std::process::Command::new(BIN)
            .args([&subcommand, "--help"])
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&help.stdout).to_string();
        for flag in flags {
            assert!(help.contains(&flag), "hopper {subcommand} has no {flag}");
        }
    }
    // The autoscaler's query names a metric and label that /metrics has.
    let scaled = docs.iter().find(|d| d["kind"] == "ScaledObject").unwrap();
    let query = scaled["spec"]["triggers"][0]["metadata"]["query"]
        .as_str()
        .unwrap();
    let metric = query.split(['(', '{']).nth(1).unwrap();
    let function = query
        .split("function=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let quickstart =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/quickstart/hopper.toml");
    let server = Server::start(
        &dir.path().join("data"),
        &["--deploy", quickstart.to_str().unwrap(), "--no-workers"],
    );
    let text = reqwest::get(format!("{}/metrics", server.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series = format!("{metric}{{function=\"{function}\"}}");
    assert!(
        text.contains(&series),
        "{series} is not in /metrics:\n{text}"
    );
    let dockerfile = std::fs::read_to_string(deploy_dir().join("Dockerfile")).unwrap();
    assert!(dockerfile.contains("ENTRYPOINT [\"hopper\"]"));
}
