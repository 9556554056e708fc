//! Workers on separate network hosts: the server in one network namespace, workers in two
//! others, joined by veth pairs. One worker host is cut off mid-run (link down): its leases
//! expire and its inputs finish on the other host. Needs root and iproute2; skips otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

const TOKEN: &str = "netns-test-token";

/// Namespaces and the processes in them, removed when the test ends.
struct Hosts {
    names: Vec<String>,
    children: Vec<Child>,
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for name in &self.names {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn in_ns(ns: &str, args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(BIN)
        .args(args)
        .env("HOPPER_TOKEN", TOKEN)
        .env("HOPPER_SERVER", "http://127.0.0.1:7433")
        .output()
        .unwrap()
}

fn spawn_in_ns(ns: &str, args: &[&str]) -> Child {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(BIN)
        .args(args)
        .env("HOPPER_TOKEN", TOKEN)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

/// A server namespace and two worker namespaces, joined by veth pairs: the server is
/// `10.231.1.1` from the first and `10.231.2.1` from the second. `None` (after saying SKIP)
/// where namespaces cannot be made.
fn hosts(tag: &str) -> Option<(Hosts, String, String, String)> {
    let (server_ns, w1, w2) = (format!("hs{tag}"), format!("ha{tag}"), format!("hb{tag}"));
    if !ip(&["netns", "add", &server_ns]) {
        println!("SKIP: cannot create network namespaces here (needs root and iproute2)");
        return None;
    }
    let mut hosts = Hosts {
        names: vec![server_ns.clone()],
        children: Vec::new(),
    };
    for ns in [&w1, &w2] {
        assert!(ip(&["netns", "add", ns]));
        hosts.names.push(ns.clone());
    }
    // server ⟷ w1 on 10.231.1.0/24, server ⟷ w2 on 10.231.2.0/24.
    for (i, ns) in [(1, &w1), (2, &w2)] {
        let (a, b) = (format!("s{i}{tag}"), format!("w{i}{tag}"));
        assert!(ip(&["link", "add", &a, "type", "veth", "peer", "name", &b]));
        assert!(ip(&["link", "set", &a, "netns", &server_ns]));
        assert!(ip(&["link", "set", &b, "netns", ns]));
        assert!(ip(&[
            "netns",
            "exec",
            &server_ns,
            "ip",
            "addr",
            "add",
            &format!("10.231.{i}.1/24"),
            "dev",
            &a
        ]));
        assert!(ip(&[
            "netns",
            "exec",
            ns,
            "ip",
            "addr",
            "add",
            &format!("10.231.{i}.2/24"),
            "dev",
            &b
        ]));
        assert!(ip(&[
            "netns", "exec", &server_ns, "ip", "link", "set", &a, "up"
        ]));
        assert!(ip(&["netns", "exec", ns, "ip", "link", "set", &b, "up"]));
    }
    for ns in [&server_ns, &w1, &w2] {
        assert!(ip(&["netns", "exec", ns, "ip", "link", "set", "lo", "up"]));
    }

    Some((hosts, server_ns, w1, w2))
}

#[test]
fn a_worker_host_cut_off_mid_run_loses_its_leases_and_its_inputs_finish_elsewhere() {
    let tag = format!("{:04}", std::process::id() % 10_000);
    let Some((mut hosts, server_ns, w1, w2)) = hosts(&tag) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(
        dir.path(),
        "app = \"n\"\n[functions.slow]\ncommand = [\"sh\", \"-c\", \"read n; sleep 2; echo $((n * 2))\"]\nconcurrency = 4\n",
    );
    let data = dir.path().join("data");
    let mut server = spawn_in_ns(
        &server_ns,
        &[
            "serve",
            "--listen",
            "0.0.0.0:7433",
            "--no-workers",
            "--lease",
            "2s",
            "--data",
            data.to_str().unwrap(),
            "--deploy",
            m.to_str().unwrap(),
        ],
    );
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("listening"), "{line}");
    hosts.children.push(server);
    for (i, ns) in [(1, &w1), (2, &w2)] {
        let url = format!("http://10.231.{i}.1:7433");
        hosts.children.push(spawn_in_ns(
            ns,
            &[
                "worker",
                "--server",
                &url,
                "--function",
                "n.slow",
                "--concurrency",
                "4",
            ],
        ));
    }
    let workers_running = |min_each: i64| {
        let out = in_ns(&server_ns, &["workers", "--json"]);
        let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        list.len() == 2
            && list
                .iter()
                .all(|w| w["running"].as_i64().unwrap_or(0) >= min_each)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !workers_running(0) {
        assert!(
            Instant::now() < deadline,
            "both workers register across the links"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let ids: Vec<String> = (0..8)
        .map(|i| {
            let out = in_ns(&server_ns, &["spawn", "n.slow", "--input", &i.to_string()]);
            assert!(out.status.success(), "{}", stderr(&out));
            stdout(&out).trim().to_string()
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !workers_running(1) {
        assert!(Instant::now() < deadline, "both hosts run inputs");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Cut host 1 off.
    assert!(ip(&[
        "netns",
        "exec",
        &w1,
        "ip",
        "link",
        "set",
        &format!("w1{tag}"),
        "down"
    ]));
    for (i, id) in ids.iter().enumerate() {
        let out = in_ns(&server_ns, &["get", id, "--timeout", "60s"]);
        assert_eq!(out.status.code(), Some(0), "call {i}: {}", stderr(&out));
        assert_eq!(stdout(&out).trim(), (i * 2).to_string());
    }
    // The inputs that were on the cut-off host show a lost attempt, then a success elsewhere.
    let script = format!(
        "import json, sys, urllib.request\nlost = 0\nfor id in sys.argv[1:]:\n    r = urllib.request.Request('http://127.0.0.1:7433/v1/calls/' + id + '/attempts', headers={{'Authorization': 'Bearer {TOKEN}'}})\n    lost += sum(1 for a in json.load(urllib.request.urlopen(r)) if a['outcome'] == 'lost')\nprint(lost)"
    );
    let out = Command::new("ip")
        .args(["netns", "exec", &server_ns, "python3", "-c", &script])
        .args(&ids)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lost_attempts: usize = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(
        lost_attempts >= 1,
        "the cut-off host's inputs ran again elsewhere"
    );
    let out = in_ns(&server_ns, &["workers", "--json"]);
    let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let lost = list.iter().filter(|w| w["state"] == "lost").count();
    assert_eq!(
        lost, 1,
        "the cut-off host's worker is reported lost: {list:?}"
    );
}

#[test]
fn a_worker_on_another_host_runs_each_versions_code_without_a_copy_of_the_app() {
    let tag = format!("{:04}", (std::process::id() + 5_000) % 10_000);
    let Some((mut hosts, server_ns, w1, _w2)) = hosts(&tag) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("app");
    std::fs::create_dir(&app).unwrap();
    std::fs::write(
        app.join("hopper.toml"),
        "app = \"code\"\n[functions.greet]\ncommand = [\"sh\", \"greet.sh\"]\n",
    )
    .unwrap();
    let say = |text: &str| {
        std::fs::write(app.join("greet.sh"), format!("printf '\"%s\"' '{text}'\n")).unwrap()
    };
    let data = dir.path().join("data");
    let mut server = spawn_in_ns(
        &server_ns,
        &[
            "serve",
            "--listen",
            "0.0.0.0:7433",
            "--no-workers",
            "--data",
            data.to_str().unwrap(),
        ],
    );
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("listening"), "{line}");
    hosts.children.push(server);
    let manifest = app.join("hopper.toml");
    let mut calls = Vec::new();
    for version in ["v1", "v2"] {
        say(version);
        let out = in_ns(&server_ns, &["deploy", manifest.to_str().unwrap()]);
        assert!(out.status.success(), "{}", stderr(&out));
        let out = in_ns(&server_ns, &["spawn", "code.greet", "--input", "null"]);
        assert!(out.status.success(), "{}", stderr(&out));
        calls.push((version, stdout(&out).trim().to_string()));
    }
    // The worker's host has no copy of the app: it runs in an empty folder of its own.
    std::fs::remove_dir_all(&app).unwrap();
    let empty = dir.path().join("worker-host");
    std::fs::create_dir(&empty).unwrap();
    let worker = Command::new("ip")
        .args(["netns", "exec", &w1])
        .arg(BIN)
        .args([
            "worker",
            "--server",
            "http://10.231.1.1:7433",
            "--function",
            "code.greet",
            "--cache-dir",
        ])
        .arg(empty.join("cache"))
        .current_dir(&empty)
        .env("HOPPER_TOKEN", TOKEN)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    hosts.children.push(worker);
    for (version, id) in calls {
        let out = in_ns(&server_ns, &["get", &id, "--timeout", "60s"]);
        assert_eq!(out.status.code(), Some(0), "{version}: {}", stderr(&out));
        assert_eq!(stdout(&out).trim(), format!("\"{version}\""));
    }
}
