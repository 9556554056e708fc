//! Test harness: the real `hopper` binary on a temporary data dir and a free loopback port.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use hopper_core::api::CallView;
use hopper_core::CallId;
use hopper_sdk::Client;

pub const BIN: &str = env!("CARGO_BIN_EXE_hopper");

/// A running `hopper serve`, stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Server {
    child: Option<Child>,
    pub url: String,
    pub data: PathBuf,
    pub args: Vec<String>,
}

impl Server {
    /// Starts `hopper serve` on `data` with extra flags, and waits until it listens.
    pub fn start(data: &Path, args: &[&str]) -> Server {
        Self::start_under(&[], data, args)
    }

    /// [`Server::start`] under a wrapper command, e.g. `["faketime", "-f", "+25s"]`.
    pub fn start_under(wrapper: &[&str], data: &Path, args: &[&str]) -> Server {
        Self::launch(wrapper, &[], data, args)
    }

    /// [`Server::start`] with extra environment variables.
    pub fn start_with_env(env: &[(&str, &str)], data: &Path, args: &[&str]) -> Server {
        Self::launch(&[], env, data, args)
    }

    /// [`Server::start`] on the address a server that was stopped listened on (its workers
    /// find it there again).
    pub fn start_again(stopped: &Server, args: &[&str]) -> Server {
        let address = stopped.url.trim_start_matches("http://").to_string();
        Self::launch_on(&[], &[], &stopped.data, &address, args)
    }

    fn launch(wrapper: &[&str], env: &[(&str, &str)], data: &Path, args: &[&str]) -> Server {
        Self::launch_on(wrapper, env, data, "127.0.0.1:0", args)
    }

    fn launch_on(
        wrapper: &[&str],
        env: &[(&str, &str)],
        data: &Path,
        listen: &str,
        args: &[&str],
    ) -> Server {
        let mut all: Vec<String> = vec![
            "serve".into(),
            "--data".into(),
            data.display().to_string(),
            "--listen".into(),
            listen.into(),
        ];
        all.extend(args.iter().map(|a| a.to_string()));
        let (program, before) = match wrapper.split_first() {
            Some((program, rest)) => (program.to_string(), [rest, &[BIN]].concat()),
            None => (BIN.to_string(), Vec::new()),
        };
        // A group of its own, so a wrapper and the server are signalled together.
        let mut child = Command::new(program)
            .process_group(0)
            .args(&before)
            .args(&all)
            .env("RUST_LOG", "warn")
            .env_remove("HOPPER_TOKEN")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start hopper serve");
        let stdout = child.stdout.take().unwrap();
        let mut first = String::new();
        BufReader::new(stdout)
            .read_line(&mut first)
            .expect("read the listening line");
        let url = first
            .trim()
            .strip_prefix("hopper listening on ")
            .unwrap_or_else(|| panic!("unexpected first line from serve: {first:?}"))
            .to_string();
        Server {
            child: Some(child),
            url,
            data: data.to_path_buf(),
            args: all,
        }
    }

    pub fn client(&self) -> Client {
        Client::new(&self.url, None).unwrap()
    }

    pub fn client_with_token(&self, token: &str) -> Client {
        Client::new(&self.url, Some(token.into())).unwrap()
    }

    /// SIGKILL: nothing gets a chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal_group(child.id(), libc::SIGKILL);
            child.wait().unwrap();
        }
    }

    /// SIGTERM, then waits (up to 60 s) for the server to exit.
    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            assert!(
                terminate(child, Duration::from_secs(60)),
                "the server did not stop within 60 s of SIGTERM"
            );
        }
    }

    /// The server's `/metrics` text.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            terminate(child, Duration::from_secs(15));
        }
    }
}

/// SIGTERM, then SIGKILL if the process has not exited within `grace`. Whether it exited.
fn terminate(mut child: Child, grace: Duration) -> bool {
    signal_group(child.id(), libc::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    signal_group(child.id(), libc::SIGKILL);
    let _ = child.wait();
    false
}

/// Signals the process group a test started (the server, and a wrapper it runs under).
pub fn signal_group(pid: u32, signal: libc::c_int) {
    #[allow(unsafe_code)]
    // SAFETY: killpg takes plain integers.
    unsafe {
        libc::killpg(pid as libc::pid_t, signal);
    }
}

/// Writes a manifest into `dir` and returns its path.
pub fn manifest(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("hopper.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs the CLI against a server and returns its output.
pub fn cli(server_url: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("HOPPER_SERVER", server_url)
        .env("RUST_LOG", "warn")
        .env_remove("HOPPER_TOKEN")
        .output()
        .unwrap()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Waits for a call to end, failing the test after `timeout`.
pub async fn wait_done(client: &Client, id: &CallId, timeout: Duration) -> CallView {
    let call = client.wait(id, timeout).await.unwrap();
    assert!(
        call.state.is_terminal(),
        "call {id} did not end within {timeout:?}: {call:?}"
    );
    call
}

/// Polls `check` every 50 ms until it returns Some, failing after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether a process is alive (a zombie, dead but not yet reaped, counts as gone).
pub fn alive(pid: i32) -> bool {
    // /proc/PID exists for live processes and zombies; a zombie has state Z.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .split(") ")
            .nth(1)
            .is_some_and(|rest| rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// Reads a pid written by a test command.
pub fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The repository's root (the Python SDK, its tests and the examples live there).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs `python -m pytest -q TARGET` from the repository's root against this build's binary
/// (`HOPPER_BIN`), with no server or token inherited, printing pytest's output; fails the test
/// when pytest fails.
pub fn pytest(python: &str, target: &str) {
    let out = Command::new(python)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", target])
        .current_dir(repo_root())
        .env("HOPPER_BIN", BIN)
        .env_remove("HOPPER_SERVER")
        .env_remove("HOPPER_TOKEN")
        .output()
        .expect("run pytest");
    println!("{}", String::from_utf8_lossy(&out.stdout));
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "{target}: tests failed ({}); pytest's output is above",
        out.status
    );
}

pub const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

pub fn has_faketime() -> bool {
    let ok = Path::new(LIBFAKETIME).exists();
    if !ok {
        assert!(
            std::env::var("HOPPER_TEST_FAKETIME").ok().as_deref() != Some("1"),
            "HOPPER_TEST_FAKETIME=1 but {LIBFAKETIME} is missing (apt-get install faketime)"
        );
        println!("SKIP: faketime is not installed (apt-get install faketime)");
    }
    ok
}

/// A server whose wall clock is the real one plus the offset written in `offset_file` (e.g.
/// `+600`), read again at every look; its monotonic clock is the real one.
pub fn start_with_stepping_clock(offset_file: &Path, data: &Path, args: &[&str]) -> Server {
    std::fs::write(offset_file, "+0\n").unwrap();
    let file = offset_file.display().to_string();
    Server::start_with_env(
        &[
            ("LD_PRELOAD", LIBFAKETIME),
            ("FAKETIME_TIMESTAMP_FILE", &file),
            ("FAKETIME_NO_CACHE", "1"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
        data,
        args,
    )
}

/// The calls schedules started, newest first (up to 1,000).
pub async fn schedule_calls(client: &hopper_sdk::Client) -> Vec<hopper_core::api::CallView> {
    client
        .calls(&hopper_sdk::CallFilter {
            origin: Some("schedule".into()),
            limit: Some(1000),
            ..Default::default()
        })
        .await
        .unwrap()
        .calls
}

/// The PostgreSQL database the tests use (`HOPPER_TEST_POSTGRES`) and a schema of the test's
/// own in it; `None`, saying the test skipped, when none is set.
pub fn test_database() -> Option<(String, String)> {
    let Ok(url) = std::env::var("HOPPER_TEST_POSTGRES") else {
        println!("SKIP: HOPPER_TEST_POSTGRES is not set");
        return None;
    };
    Some((
        url,
        format!("hopper_test_{}", hopper_core::ids::random_hex()),
    ))
}

/// Drops the schema `test_database` gave a test.
pub async fn drop_test_schema(url: &str, schema: &str) {
    hopper_store_postgres::PgStore::drop_schema(url, schema)
        .await
        .unwrap();
}

/// A `hopper worker` process, killed when dropped (also when a test fails).
pub struct Worker(pub std::process::Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `hopper worker` on the real clock, serving `function` of the server at `url`.
pub fn worker(url: &str, function: &str) -> Worker {
    Worker(
        std::process::Command::new(BIN)
            .args(["worker", "--server", url, "--function", function])
            .env("RUST_LOG", "warn")
            .env_remove("HOPPER_TOKEN")
            .spawn()
            .unwrap(),
    )
}

/// What a test's receiver and the test both hold.
pub type Shared<T> = std::sync::Arc<std::sync::Mutex<T>>;

/// A webhook receiver: answers each POST with the next status of `statuses` (the last one
/// repeats) and keeps the bodies.
pub async fn webhook_receiver(
    statuses: Vec<u16>,
) -> (String, Shared<Vec<serde_json::Value>>, Shared<usize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/hooks/T000/B000/s3cretpath",
        listener.local_addr().unwrap()
    );
    let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let hits = std::sync::Arc::new(std::sync::Mutex::new(0usize));
    let (b, h) = (bodies.clone(), hits.clone());
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            let (b, h, statuses) = (b.clone(), h.clone(), statuses.clone());
            tokio::spawn(async move {
                use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
                let mut reader = tokio::io::BufReader::new(socket);
                let mut length = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let lower = line.to_ascii_lowercase();
                    if let Some(v) = lower.strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap();
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0u8; length];
                reader.read_exact(&mut body).await.unwrap();
                let n = {
                    let mut hits = h.lock().unwrap();
                    *hits += 1;
                    *hits
                };
                let status = statuses[(n - 1).min(statuses.len() - 1)];
                if status == 200 {
                    b.lock()
                        .unwrap()
                        .push(serde_json::from_slice(&body).unwrap());
                }
                let response = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
                let _ = reader.get_mut().write_all(response.as_bytes()).await;
            });
        }
    });
    (url, bodies, hits)
}
