//! The files in deploy/ are checked as far as this machine can (it has no container runtime):
//! the Kubernetes manifests parse (Python's YAML parser), the commands they run are ones
//! `hopper` accepts, every folder a container writes is a volume under its read-only root, the
//! probes and the metrics the autoscaler queries are served, every Deployment has a
//! PodDisruptionBudget; and the image's user, home and command are run the way the image would
//! run them: as its uid, with a home that user cannot write, and the image's environment.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::time::Duration;

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
    for d in docs.iter().filter(|d| d["kind"] == "Deployment") {
        let name = d["metadata"]["name"].as_str().unwrap();
        let pod = &d["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}");
        let container = &pod["containers"][0];
        assert_eq!(
            container["securityContext"]["readOnlyRootFilesystem"], true,
            "{name}"
        );
        // What it writes is on volumes: the cache, the home, the data folder, /tmp.
        let mounts: Vec<&str> = container["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["mountPath"].as_str().unwrap())
            .collect();
        let mut written = vec!["/tmp".to_string()];
        for e in container["env"].as_array().unwrap() {
            if ["HOPPER_CACHE_DIR", "HOPPER_DATA", "HOME"].contains(&e["name"].as_str().unwrap()) {
                written.push(e["value"].as_str().unwrap().to_string());
            }
        }
        for path in &written {
            assert!(
                mounts.iter().any(|m| path.starts_with(m)),
                "{name} writes {path}, which is on no volume of {mounts:?}"
            );
        }
        let labels = &d["spec"]["template"]["metadata"]["labels"];
        let budget = docs.iter().find(|b| {
            b["kind"] == "PodDisruptionBudget"
                && b["spec"]["selector"]["matchLabels"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .all(|(k, v)| labels[k] == *v)
        });
        assert!(budget.is_some(), "no PodDisruptionBudget for {name}");
    }
    // A GPU worker asks Kubernetes for its GPU, runs on nodes of the labels it registers,
    // and scales on the queue of the function it serves.
    let gpu = docs
        .iter()
        .find(|d| {
            d["metadata"]["name"] == "hopper-worker-vision-embed" && d["kind"] == "Deployment"
        })
        .expect("a GPU function's worker Deployment");
    let pod = &gpu["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(container["resources"]["limits"]["nvidia.com/gpu"], 1);
    for arg in container["args"].as_array().unwrap() {
        if let Some((key, value)) = arg
            .as_str()
            .unwrap()
            .strip_prefix("--label=")
            .and_then(|l| l.split_once('='))
        {
            assert_eq!(
                pod["nodeSelector"][key], value,
                "the pods run where the label says"
            );
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let quickstart =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/quickstart/hopper.toml");
    let vision = manifest(
        dir.path(),
        "app = \"vision\"\n[functions.embed]\ncommand = [\"true\"]\ngpu = \"L4\"\nlabels = { pool = \"gpu-l4\" }\n",
    );
    let server = Server::start(
        &dir.path().join("data"),
        &[
            "--deploy",
            quickstart.to_str().unwrap(),
            "--deploy",
            vision.to_str().unwrap(),
            "--no-workers",
        ],
    );
    // The probes of the server's Deployment answer.
    let servers = docs
        .iter()
        .find(|d| d["metadata"]["name"] == "hopper-server")
        .unwrap();
    let container = &servers["spec"]["template"]["spec"]["containers"][0];
    for probe in ["readinessProbe", "livenessProbe"] {
        let path = container[probe]["httpGet"]["path"].as_str().unwrap();
        let answer = reqwest::get(format!("{}{path}", server.url)).await.unwrap();
        assert_eq!(answer.status(), 200, "{probe} {path}");
    }
    // Each autoscaler counts queued and running inputs of the function its workers serve,
    // from zero, in series /metrics has.
    let text = server.metrics().await;
    for scaled in docs.iter().filter(|d| d["kind"] == "ScaledObject") {
        assert_eq!(scaled["spec"]["minReplicaCount"], 0);
        let query = scaled["spec"]["triggers"][0]["metadata"]["query"]
            .as_str()
            .unwrap();
        let function = query
            .split("function=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        let target = docs
            .iter()
            .find(|d| {
                d["kind"] == "Deployment"
                    && d["metadata"]["name"] == scaled["spec"]["scaleTargetRef"]["name"]
            })
            .expect("the ScaledObject's target");
        let args = target["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
        assert!(args.contains(&format!("--function={function}")), "{args}");
        let metrics: Vec<&str> = query
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("hopper_"))
            .collect();
        assert!(
            metrics.contains(&"hopper_queue_pending") && metrics.contains(&"hopper_queue_running"),
            "a scale-down must count running inputs: {query}"
        );
        for metric in metrics {
            let series = format!("{metric}{{function=\"{function}\"}}");
            assert!(
                text.contains(&series),
                "{series} is not in /metrics:\n{text}"
            );
        }
    }
}

/// The `KEY=value` pairs of the Dockerfile's `ENV`, its `USER` and its `CMD`.
fn image() -> (Vec<(String, String)>, String, Vec<String>) {
    let text = std::fs::read_to_string(deploy_dir().join("Dockerfile")).unwrap();
    let joined = text.replace("\\\n", " ");
    let mut env = Vec::new();
    let (mut user, mut cmd) = (String::new(), Vec::new());
    for line in joined.lines() {
        if let Some(rest) = line.strip_prefix("ENV ") {
            for pair in rest.split_whitespace() {
                let (k, v) = pair.split_once('=').unwrap();
                env.push((k.to_string(), v.to_string()));
            }
        } else if let Some(rest) = line.strip_prefix("USER ") {
            user = rest.trim().to_string();
        } else if let Some(rest) = line.strip_prefix("CMD ") {
            cmd = serde_json::from_str(rest).unwrap();
        }
    }
    assert!(text.contains("ENTRYPOINT [\"hopper\"]"));
    (env, user, cmd)
}

#[tokio::test]
async fn the_image_s_server_and_worker_start_as_its_user_with_its_environment() {
    let (env, user, cmd) = image();
    let uid: u32 = user
        .parse()
        .expect("USER is a numeric uid (runAsNonRoot can check it)");
    assert_ne!(uid, 0);
    let is_root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !is_root {
        println!("SKIP: not root, so the image's uid cannot be taken");
        return;
    }
    // Folders as the image makes them: the data and cache folders the user's own, its home
    // unwritable (a pod's read-only root file system).
    let root = tempfile::tempdir().unwrap();
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let place = |path: &str| root.path().join(path.trim_start_matches('/'));
    let home = place("home/hopper");
    std::fs::create_dir_all(&home).unwrap();
    for (k, v) in &env {
        if k == "HOPPER_DATA" || k == "HOPPER_CACHE_DIR" {
            std::fs::create_dir_all(place(v)).unwrap();
            std::os::unix::fs::chown(place(v), Some(uid), Some(uid)).unwrap();
        }
    }
    let as_image = |args: &[&str]| {
        let mut c = std::process::Command::new(BIN);
        c.args(args).uid(uid).gid(uid).env_clear();
        c.env("HOME", &home)
            .env("PATH", "/usr/bin:/bin")
            .env("HOPPER_TOKEN", "t0ken");
        for (k, v) in &env {
            match k.as_str() {
                "HOPPER_DATA" | "HOPPER_CACHE_DIR" => c.env(k, place(v)),
                // Tests listen on loopback.
                "HOPPER_LISTEN" => c.env(k, "127.0.0.1:0"),
                _ => c.env(k, v),
            };
        }
        c
    };
    // The image's command serves.
    let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let mut serve = Worker(
        as_image(&args)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(serve.0.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let url = line
        .trim()
        .strip_prefix("hopper listening on ")
        .unwrap_or_else(|| panic!("the image's command did not serve: {line:?}"))
        .to_string();
    // A worker as the worker Deployment runs it registers.
    let _worker = Worker(
        as_image(&["worker", "--server", &url, "--function", "quickstart.greet"])
            .spawn()
            .unwrap(),
    );
    let client = hopper_sdk::Client::new(&url, Some("t0ken".into())).unwrap();
    eventually("the worker registers", Duration::from_secs(20), || async {
        let workers = client.workers().await.ok()?;
        (workers.iter().any(|w| w.state == "active")).then_some(())
    })
    .await;
}

#[test]
fn with_log_format_json_every_log_line_is_a_json_object() {
    let dir = tempfile::tempdir().unwrap();
    let mut serve = Worker(
        std::process::Command::new(BIN)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--log-format",
                "json",
                "--data",
            ])
            .arg(dir.path().join("data"))
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let logs = std::io::BufReader::new(serve.0.stderr.take().unwrap());
    let mut seen = Vec::new();
    for line in std::io::BufRead::lines(logs) {
        let line = line.unwrap();
        let object: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(
            object["level"].is_string() && object["timestamp"].is_string(),
            "{line}"
        );
        seen.push(object["message"].as_str().unwrap_or_default().to_string());
        if seen.iter().any(|m| m == "hopper is serving") {
            break;
        }
    }
    let out = std::process::Command::new(BIN)
        .args(["calls", "--log-format", "xml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--log-format"), "{}", stderr(&out));
}
