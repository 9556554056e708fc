//! Loose ends through the real binary: a worker for a function that is not deployed is
//! refused naming the closest one; a line of input refused while `hopper map` streams stdin
//! cancels the map it leaves behind; `hopper get --timeout` rides through a restart of its
//! server; a snapshot that leaves out a file a command names is refused, and one that leaves
//! out everything is warned about; a byte-order mark at the start of an input is named; a
//! secret's key or an `env` name a shell cannot export is refused, naming it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use hopper_core::InputState;
use serde_json::json;

const APP: &str = "app = \"le\"\n[functions.echo]\ncommand = [\"cat\"]\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_for_a_function_not_deployed_is_refused_naming_the_closest() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(dir.path(), APP);
    let server = Server::start(
        &dir.path().join("data"),
        &["--no-workers", "--deploy", m.to_str().unwrap()],
    );
    for (function, says) in [
        (
            "le.ecoh",
            "--function le.ecoh: no such function is deployed; did you mean le.echo?",
        ),
        (
            "le.transcribe",
            "--function le.transcribe: app le has no such function (it has le.echo)",
        ),
        (
            "le",
            "--function le: le is an app; name one of its functions (le.echo)",
        ),
    ] {
        // Bounded: a worker that is not refused registers and idles.
        let out = std::process::Command::new("timeout")
            .args(["20", BIN, "worker", "--server", &server.url])
            .args(["--function", function])
            .env_remove("HOPPER_TOKEN")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{function}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{}", stderr(&out));
    }
    assert!(
        server.client().workers().await.unwrap().is_empty(),
        "nothing registered"
    );
    let out = std::process::Command::new("timeout")
        .args([
            "20",
            BIN,
            "worker",
            "--server",
            "http://127.0.0.1:9",
            "--function",
            "echo",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out)
            .contains("--function echo: name it as app.function (the server could not be asked"),
        "{}",
        stderr(&out)
    );
    // A bare name deployed in one app is that app's function.
    let _bare = worker(&server.url, "echo");
    let call = server
        .client()
        .spawn("le.echo", json!("bare"), None)
        .await
        .unwrap();
    let done = wait_done(&server.client(), &call.id, Duration::from_secs(30)).await;
    assert_eq!(done.output, Some(json!("bare")));
    // An app not deployed yet (workers started before the deploy) is waited for.
    let mut waiting = std::process::Command::new(BIN)
        .args(["worker", "--server", &server.url, "--function", "later.f"])
        .env("RUST_LOG", "warn")
        .env_remove("HOPPER_TOKEN")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(waiting.try_wait().unwrap().is_none(), "the worker waits");
    waiting.kill().unwrap();
    let out = waiting.wait_with_output().unwrap();
    assert!(
        stderr(&out).contains("app later is not deployed (yet): this worker waits for it"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_line_of_streamed_input_cancels_the_map() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(dir.path(), APP);
    let server = Server::start(&dir.path().join("data"), &["--deploy", m.to_str().unwrap()]);
    let mut map = std::process::Command::new(BIN)
        .args(["map", "le.echo", "-"])
        .env("HOPPER_SERVER", &server.url)
        .env_remove("HOPPER_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = map.stdin.take().unwrap();
    stdin.write_all(b"1\n2\n").unwrap();
    stdin.flush().unwrap();
    // The good lines are sent, and run, before the bad one comes.
    let client = server.client();
    eventually(
        "the map's first inputs",
        Duration::from_secs(20),
        || async {
            let maps = client.calls(&Default::default()).await.unwrap();
            maps.calls
                .first()
                .filter(|c| c.inputs.succeeded == 2)
                .map(|c| c.id.clone())
        },
    )
    .await;
    stdin.write_all(b"{\"not\": json}\n3\n").unwrap();
    drop(stdin);
    let out = map.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("stdin:3: not valid JSON"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("a line of input was refused: cancelled the remaining inputs of map"),
        "{}",
        stderr(&out)
    );
    let call = &client.calls(&Default::default()).await.unwrap().calls[0];
    assert_eq!(
        (call.state, call.accepting_inputs, call.inputs.total),
        (InputState::Cancelled, false, 2),
        "{call:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hopper_get_gives_up_on_a_server_that_never_answers() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(dir.path(), APP);
    let server = Server::start(
        &dir.path().join("data"),
        &["--no-workers", "--deploy", m.to_str().unwrap()],
    );
    let call = server
        .client()
        .spawn("le.echo", json!(1), None)
        .await
        .unwrap();
    // Stopped: it takes connections and answers nothing.
    signal_group(server.pid(), libc::SIGSTOP);
    let out = std::process::Command::new("timeout")
        .args(["60", BIN, "get", call.id.as_str(), "--timeout", "1s"])
        .env("HOPPER_SERVER", &server.url)
        .env_remove("HOPPER_TOKEN")
        .output()
        .unwrap();
    signal_group(server.pid(), libc::SIGCONT);
    assert_eq!(out.status.code(), Some(4), "not a hang: {}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hopper_get_rides_through_a_restart_of_its_server() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(dir.path(), APP);
    let mut server = Server::start(
        &dir.path().join("data"),
        &["--no-workers", "--deploy", m.to_str().unwrap()],
    );
    let call = server
        .client()
        .spawn("le.echo", json!("after the restart"), None)
        .await
        .unwrap();
    let url = server.url.clone();
    let id = call.id.to_string();
    let waiting = std::thread::spawn(move || cli(&url, &["get", &id, "--timeout", "60s"]));
    tokio::time::sleep(Duration::from_millis(700)).await;
    // The long-poll is cut short by the stop (503), then the server is away for a while.
    server.stop();
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let _again = Server::start_again(&server, &["--deploy", m.to_str().unwrap()]);
    let out = waiting.join().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "\"after the restart\"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_that_leaves_out_what_a_command_runs_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let code = dir.path().join("code");
    std::fs::create_dir_all(&code).unwrap();
    std::fs::write(code.join("run.sh"), "cat\n").unwrap();
    let m = manifest(
        &code,
        "app = \"ig\"\n[functions.job]\ncommand = [\"sh\", \"run.sh\"]\n",
    );
    std::fs::write(code.join(".hopperignore"), "*.sh\n").unwrap();
    let out = cli(&server.url, &["deploy", m.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("functions.job.command: run.sh is left out of the code snapshot of"),
        "{}",
        stderr(&out)
    );
    assert!(server.client().apps().await.unwrap().is_empty());
    // Everything left out, and nothing a command needs: deployed, with a warning.
    std::fs::write(&m, "app = \"ig\"\n[functions.job]\ncommand = [\"cat\"]\n").unwrap();
    std::fs::write(code.join(".hopperignore"), "*\n").unwrap();
    let out = cli(&server.url, &["deploy", m.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("holds no files: .gitignore or .hopperignore leave out everything"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_byte_order_mark_and_names_a_shell_cannot_export_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(dir.path(), APP);
    let server = Server::start(&dir.path().join("data"), &["--deploy", m.to_str().unwrap()]);
    let url = &server.url;
    let file = dir.path().join("input.json");
    std::fs::write(&file, "\u{feff}{\"a\": 1}\n").unwrap();
    let path = file.to_str().unwrap();
    for args in [
        vec!["spawn", "le.echo", "--input-file", path],
        vec!["map", "le.echo", path],
    ] {
        let out = cli(url, &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("starts with a byte-order mark (U+FEFF)"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    assert!(server
        .client()
        .calls(&Default::default())
        .await
        .unwrap()
        .calls
        .is_empty());

    for key in ["lower-key", "1ABC", "A B"] {
        let out = cli(url, &["secrets", "set", "api", &format!("{key}=v")]);
        assert_ne!(out.status.code(), Some(0), "{key}");
        assert!(
            stderr(&out).contains(&format!(
                "{key:?} is not an environment variable name a shell can export"
            )),
            "{key}: {}",
            stderr(&out)
        );
    }
    assert!(server.client().secrets().await.unwrap().is_empty());
    let bad = manifest(
        dir.path(),
        "app = \"le\"\n[functions.echo]\ncommand = [\"cat\"]\nenv = { \"1ABC\" = \"x\" }\n",
    );
    let out = cli(url, &["deploy", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out)
            .contains("functions.echo.env.1ABC: \"1ABC\" is not an environment variable name"),
        "{}",
        stderr(&out)
    );
    assert_eq!(server.client().apps().await.unwrap()[0].version, 1);
}

/// The worker processes `hopper serve` started (its children running `hopper worker`).
fn local_workers(server_pid: u32) -> Vec<i32> {
    let mut found = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{server_pid}/task"))
        .unwrap()
        .flatten()
    {
        let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for pid in children
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if cmdline.split(|b| *b == 0).any(|arg| arg == b"worker") {
                found.push(pid);
            }
        }
    }
    found
}

/// A folder whose function `orph.f` starts a grandchild that ignores SIGTERM, keeps a file
/// open and writes its pid to `grandchild.pid` in `dir`; the manifest's path.
fn orphan_maker(dir: &std::path::Path) -> std::path::PathBuf {
    let code = dir.join("code");
    std::fs::create_dir_all(&code).unwrap();
    std::fs::write(
        code.join("run.sh"),
        "sh -c 'trap \"\" TERM; exec 3>\"$HELD\"; echo $$ > \"$PIDFILE\"; exec sleep 300' &\n\
         setsid sh -c 'echo $$ > \"$PIDFILE.setsid\"; exec sleep 300' &\nsleep 300\n",
    )
    .unwrap();
    manifest(
        &code,
        &format!(
            "app = \"orph\"\n[functions.f]\ncommand = [\"sh\", \"run.sh\"]\n\
             env = {{ HELD = \"{}\", PIDFILE = \"{}\" }}\n",
            dir.join("held.txt").display(),
            dir.join("grandchild.pid").display()
        ),
    )
}

/// Spawns `orph.f` and waits for its grandchildren's pids: one in the command's group, one in
/// a session of its own.
async fn grandchild_of_a_call(client: &hopper_sdk::Client, dir: &std::path::Path) -> [i32; 2] {
    client.spawn("orph.f", json!(1), None).await.unwrap();
    let mut pids = [0; 2];
    for (i, file) in ["grandchild.pid", "grandchild.pid.setsid"]
        .iter()
        .enumerate()
    {
        let pidfile = dir.join(file);
        pids[i] = eventually(
            "the grandchildren start",
            Duration::from_secs(30),
            || async { read_pid(&pidfile) },
        )
        .await;
        assert!(alive(pids[i]));
    }
    pids
}

async fn gone(pids: [i32; 2]) {
    // A failed run must not leave them behind either.
    let _guards = pids.map(KillOnDrop);
    eventually(
        "the grandchildren are killed",
        Duration::from_secs(15),
        || async { pids.iter().all(|p| !alive(*p)).then_some(()) },
    )
    .await;
}

struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        signal_group(self.0 as u32, libc::SIGKILL);
        let _ = std::process::Command::new("kill")
            .args(["-9", &self.0.to_string()])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_command_left_running_dies_when_its_worker_is_killed() {
    // A local worker of `hopper serve`.
    let dir = tempfile::tempdir().unwrap();
    let m = orphan_maker(dir.path());
    let server = Server::start(&dir.path().join("data"), &["--deploy", m.to_str().unwrap()]);
    let grandchild = grandchild_of_a_call(&server.client(), dir.path()).await;
    let workers = local_workers(server.pid());
    assert_eq!(workers.len(), 1, "{workers:?}");
    signal_group(workers[0] as u32, libc::SIGKILL);
    gone(grandchild).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_command_left_running_dies_with_a_remote_worker_or_the_server() {
    // A worker of its own, on another machine as far as it knows.
    let dir = tempfile::tempdir().unwrap();
    let m = orphan_maker(dir.path());
    let server = Server::start(
        &dir.path().join("data"),
        &["--no-workers", "--deploy", m.to_str().unwrap()],
    );
    let mut remote = worker(&server.url, "orph.f");
    let grandchild = grandchild_of_a_call(&server.client(), dir.path()).await;
    remote.0.kill().unwrap();
    gone(grandchild).await;
    drop(server);

    // A server killed with its local workers.
    let dir = tempfile::tempdir().unwrap();
    let m = orphan_maker(dir.path());
    let mut server = Server::start(&dir.path().join("data"), &["--deploy", m.to_str().unwrap()]);
    let grandchild = grandchild_of_a_call(&server.client(), dir.path()).await;
    server.kill9();
    gone(grandchild).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_folder_is_not_packed_again_and_a_changed_file_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let code = dir.path().join("code");
    std::fs::create_dir_all(&code).unwrap();
    std::fs::write(code.join("data.txt"), "\"one\"").unwrap();
    let m = manifest(
        &code,
        "app = \"dc\"\n[functions.cat]\ncommand = [\"cat\", \"data.txt\"]\n",
    );
    let a = Server::start(&dir.path().join("a"), &[]);
    let b = Server::start(&dir.path().join("b"), &[]);
    let deploy = |url: &str| {
        let out = std::process::Command::new(BIN)
            .args(["deploy", m.to_str().unwrap()])
            .env("HOPPER_SERVER", url)
            .env("XDG_CACHE_HOME", &cache)
            .env_remove("HOPPER_TOKEN")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        stdout(&out)
    };
    let first = deploy(&a.url);
    assert!(!first.contains("unchanged"), "{first}");
    let again = deploy(&a.url);
    assert!(again.contains("unchanged since packed"), "{again}");
    // Another server lacks the snapshot: it is packed for it, with the same hash.
    let other = deploy(&b.url);
    assert!(other.contains("unchanged since packed"), "{other}");
    let hash = |text: &str| text.split("code ").nth(1).unwrap()[..12].to_string();
    assert_eq!(hash(&other), hash(&first));
    let client = b.client();
    let call = client.spawn("dc.cat", json!(null), None).await.unwrap();
    let done = wait_done(&client, &call.id, Duration::from_secs(30)).await;
    assert_eq!(done.output, Some(json!("one")), "{done:?}");
    // The same size, another content: packed again.
    std::fs::write(code.join("data.txt"), "\"two\"").unwrap();
    let changed = deploy(&a.url);
    assert!(!changed.contains("unchanged"), "{changed}");
    assert_ne!(hash(&changed), hash(&first));
}

/// Whether this machine lets a process create memory cgroups (v1's hierarchy or v2's with
/// the memory controller); where it does not, Hopper runs without memory limits.
fn memory_cgroups() -> bool {
    let probe = |dir: &str| {
        let path = std::path::Path::new(dir).join(format!("hopper-probe-{}", std::process::id()));
        std::fs::create_dir(&path).is_ok() && std::fs::remove_dir(&path).is_ok()
    };
    let v2 = std::fs::read_to_string("/sys/fs/cgroup/cgroup.subtree_control")
        .is_ok_and(|t| t.split_whitespace().any(|c| c == "memory"));
    (v2 && probe("/sys/fs/cgroup")) || probe("/sys/fs/cgroup/memory")
}

/// A serve process that holds `input` MiB while it answers.
const HOG_PY: &str = r#"
import json, sys
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    req = json.loads(line)
    if "id" not in req:
        continue
    held = b"x" * (req["input"] << 20)
    print(json.dumps({"id": req["id"], "output": len(held) >> 20}), flush=True)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_input_killed_for_going_over_its_memory_fails_as_out_of_memory() {
    if !memory_cgroups() {
        eprintln!("skipped: this machine gives no memory cgroups");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hog.py"), HOG_PY).unwrap();
    let m = manifest(
        dir.path(),
        r#"
app = "oom"
[functions.command]
command = ["python3", "-c", "import sys; held = b'x' * (int(sys.stdin.read()) << 20); print(len(held) >> 20)"]
memory = "96MiB"
retries = { max_retries = 1, initial_delay = "1s" }
[functions.serve]
serve = ["python3", "hog.py"]
memory = "96MiB"
retries = { max_retries = 1, initial_delay = "1s" }
"#,
    );
    let server = Server::start(&dir.path().join("data"), &["--deploy", m.to_str().unwrap()]);
    let client = server.client();
    for function in ["oom.command", "oom.serve"] {
        // Within the limit: runs.
        let small = client.spawn(function, json!(16), None).await.unwrap();
        let call = wait_done(&client, &small.id, Duration::from_secs(60)).await;
        assert_eq!(call.output, Some(json!(16)), "{function}: {call:?}");
        // Over it: killed by the OOM killer, said so, and retried once as the policy says
        // (not handed back to the queue to kill the next process, ten times).
        let big = client.spawn(function, json!(400), None).await.unwrap();
        let call = wait_done(&client, &big.id, Duration::from_secs(120)).await;
        assert_eq!(
            call.state,
            hopper_core::CallState::Failed,
            "{function}: {call:?}"
        );
        let error = call.error.unwrap();
        assert_eq!(error.code, "out_of_memory", "{function}: {error:?}");
        assert!(
            error.message.contains("memory limit of 96MiB") && error.message.contains("OOM killer"),
            "{function}: {error:?}"
        );
        assert_eq!(call.attempts, 2, "{function}: one try and one retry");
        // The worker goes on: the next small input runs.
        let after = client.spawn(function, json!(8), None).await.unwrap();
        let call = wait_done(&client, &after.id, Duration::from_secs(60)).await;
        assert_eq!(call.output, Some(json!(8)), "{function}: {call:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_keep_their_text_from_spawn_to_the_command_and_back() {
    let dir = tempfile::tempdir().unwrap();
    // The command records what it read, and echoes it.
    let seen = dir.path().join("seen.json");
    let m = manifest(
        dir.path(),
        &format!(
            "app = \"le\"\n[functions.echo]\ncommand = [\"sh\", \"-c\", \"tee {}\"]\n",
            seen.display()
        ),
    );
    let server = Server::start(&dir.path().join("data"), &["--deploy", m.to_str().unwrap()]);
    // Digits as given; an exponent is written as `e+3` (its value and digits kept).
    let text = "[-0, 0.1e-400, 1.50, 1E3, 12345678901234567890.5, -0.0]";
    let kept = "[-0,0.1e-400,1.50,1e+3,12345678901234567890.5,-0.0]";
    let out = cli(&server.url, &["spawn", "le.echo", "--input", text]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = stdout(&out).trim().to_string();
    let got = cli(&server.url, &["get", &id, "--timeout", "30s"]);
    assert_eq!(got.status.code(), Some(0), "{}", stderr(&got));
    assert_eq!(
        std::fs::read_to_string(&seen).unwrap(),
        kept,
        "the command reads the numbers as given"
    );
    assert_eq!(stdout(&got).trim(), kept, "and the output keeps them");
    // Over HTTP too: the stored input, as the API shows it.
    let body = reqwest::get(format!("{}/v1/calls/{id}/inputs/0", server.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.contains(&format!("\"input\":{kept}")), "{body}");
}
