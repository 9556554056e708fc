//! Code snapshots through the real binary: a deploy ships its folder, a version runs the code
//! it was deployed with (not what the folder holds now), a worker needs no copy of the app,
//! the machine's cache unpacks a snapshot once and fetches a damaged one again, and a folder
//! over the limit is refused naming its biggest files.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use hopper_core::CallState;
use serde_json::{json, Value};

/// A `hopper worker` for `function`, started in `cwd` (a folder without the app), killed with
/// its process group when dropped. Its log goes to `log`.
struct Worker(Child);

impl Worker {
    fn start(url: &str, function: &str, cwd: &Path, cache: &Path, log: &Path) -> Worker {
        Self::start_with(url, function, cwd, cache, log, &[])
    }

    fn start_with(
        url: &str,
        function: &str,
        cwd: &Path,
        cache: &Path,
        log: &Path,
        extra: &[&str],
    ) -> Worker {
        let log = std::fs::File::create(log).unwrap();
        let child = Command::new(BIN)
            .args(["worker", "--server", url, "--function", function])
            .args(extra)
            .arg("--cache-dir")
            .arg(cache)
            .current_dir(cwd)
            .env("RUST_LOG", "info")
            .env_remove("HOPPER_TOKEN")
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Worker(child)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        #[allow(unsafe_code)]
        // SAFETY: killpg takes plain integers.
        unsafe {
            libc::killpg(self.0.id() as libc::pid_t, libc::SIGKILL);
        }
        let _ = self.0.wait();
    }
}

/// An app folder: a manifest and `greet.sh`, which answers `"v1"`-style text.
fn app(dir: &Path, says: &str) -> PathBuf {
    let folder = dir.join("app");
    std::fs::create_dir_all(folder.join("lib")).unwrap();
    std::fs::write(
        folder.join("hopper.toml"),
        "app = \"code\"\n[functions.greet]\ncommand = [\"sh\", \"lib/greet.sh\"]\n",
    )
    .unwrap();
    say(&folder, says);
    folder
}

fn say(folder: &Path, says: &str) {
    std::fs::write(
        folder.join("lib/greet.sh"),
        format!("printf '\"%s\"' '{says}'\n"),
    )
    .unwrap();
}

fn deploy(url: &str, folder: &Path, extra: &[&str]) -> std::process::Output {
    let manifest = folder.join("hopper.toml");
    let mut args = vec!["deploy", manifest.to_str().unwrap()];
    args.extend(extra);
    cli(url, &args)
}

async fn output_of(client: &hopper_sdk::Client, id: &hopper_core::CallId) -> Value {
    let call = wait_done(client, id, Duration::from_secs(60)).await;
    assert_eq!(call.state, CallState::Succeeded, "{call:?}");
    call.output.unwrap()
}

#[tokio::test]
async fn each_version_runs_the_code_it_was_deployed_with_on_a_worker_without_the_app() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--no-workers"]);
    let client = server.client();
    let folder = app(dir.path(), "v1");
    let out = deploy(&server.url, &folder, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("code "), "{}", stdout(&out));

    // Queued before anything changes, then the file is edited without a deploy: both calls
    // are version 1's and run version 1's code.
    let before = client.spawn("code.greet", json!(null), None).await.unwrap();
    say(&folder, "edited, not deployed");
    let edited = client.spawn("code.greet", json!(null), None).await.unwrap();
    say(&folder, "v2");
    let out = deploy(&server.url, &folder, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let after = client.spawn("code.greet", json!(null), None).await.unwrap();
    // Deploying unchanged code again makes a version with the same snapshot.
    let out = deploy(&server.url, &folder, &[]);
    assert!(out.status.success(), "{}", stderr(&out));

    // The app's folder is gone; the worker starts in an empty folder of its own.
    std::fs::remove_dir_all(&folder).unwrap();
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let cache = dir.path().join("cache");
    let _worker = Worker::start(
        &server.url,
        "code.greet",
        &elsewhere,
        &cache,
        &dir.path().join("worker.log"),
    );
    assert_eq!(output_of(&client, &before.id).await, json!("v1"));
    assert_eq!(output_of(&client, &edited.id).await, json!("v1"));
    assert_eq!(output_of(&client, &after.id).await, json!("v2"));

    let out = cli(&server.url, &["apps", "--versions", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let versions: Vec<Value> = serde_json::from_str(&stdout(&out)).unwrap();
    let hash_of = |v: i64| -> String {
        let found = versions.iter().find(|x| x["version"] == v).unwrap();
        assert_eq!(found["snapshot"]["files"], 2, "{found}");
        found["snapshot"]["hash"].as_str().unwrap().to_string()
    };
    assert_ne!(hash_of(1), hash_of(2));
    assert_eq!(hash_of(2), hash_of(3), "unchanged code, the same snapshot");
    let table = stdout(&cli(&server.url, &["apps"]));
    assert!(table.contains("snapshot "), "{table}");
}

#[tokio::test]
async fn two_workers_unpack_a_snapshot_once_and_a_damaged_copy_is_fetched_again() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--no-workers"]);
    let client = server.client();
    let folder = app(dir.path(), "whole");
    let out = deploy(&server.url, &folder, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let cache = dir.path().join("cache");
    let logs = [dir.path().join("w1.log"), dir.path().join("w2.log")];
    // Inputs wait for both workers, which start together and race for the snapshot.
    let calls: Vec<_> = futures_util::future::join_all(
        (0..8).map(|_| client.spawn("code.greet", json!(null), None)),
    )
    .await
    .into_iter()
    .map(|c| c.unwrap())
    .collect();
    let workers: Vec<Worker> = logs
        .iter()
        .map(|log| Worker::start(&server.url, "code.greet", dir.path(), &cache, log))
        .collect();
    for call in &calls {
        assert_eq!(output_of(&client, &call.id).await, json!("whole"));
    }
    let unpacked: usize = logs
        .iter()
        .map(|l| {
            std::fs::read_to_string(l)
                .unwrap()
                .matches("unpacked code snapshot")
                .count()
        })
        .sum();
    assert_eq!(unpacked, 1, "one machine, one unpack");
    drop(workers);

    // Damage the cached copy: the next worker notices and fetches it again.
    let unpacked_dir = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir() && !p.file_name().unwrap().to_string_lossy().starts_with("tmp-"))
        .unwrap();
    std::fs::write(unpacked_dir.join("lib/greet.sh"), "printf '\"tampered\"'\n").unwrap();
    let log = dir.path().join("w3.log");
    let _worker = Worker::start(&server.url, "code.greet", dir.path(), &cache, &log);
    let call = client.spawn("code.greet", json!(null), None).await.unwrap();
    assert_eq!(output_of(&client, &call.id).await, json!("whole"));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("is damaged (lib/greet.sh has changed)"),
        "{text}"
    );
}

#[tokio::test]
async fn a_folder_over_the_limit_is_refused_naming_its_biggest_files() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--no-workers"]);
    let folder = app(dir.path(), "v1");
    std::fs::create_dir(folder.join("data")).unwrap();
    std::fs::write(folder.join("data/huge.bin"), vec![7u8; 3 << 20]).unwrap();
    std::fs::write(folder.join("data/big.bin"), vec![7u8; 1 << 20]).unwrap();
    let out = deploy(&server.url, &folder, &["--max-bundle", "2MiB"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("data/huge.bin (3.0 MiB), data/big.bin (1.0 MiB)")
            && err.contains(".hopperignore"),
        "{err}"
    );
    assert!(
        client_apps(&server).await.is_empty(),
        "nothing was deployed"
    );
    // A link out of the folder would dangle elsewhere: refused, naming it.
    std::os::unix::fs::symlink("/etc/hostname", folder.join("host")).unwrap();
    let out = deploy(&server.url, &folder, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("host is a link to /etc/hostname, outside"),
        "{}",
        stderr(&out)
    );
    std::fs::remove_file(folder.join("host")).unwrap();
    // A server's data folder in the app's folder never travels: its database, its key.
    let data = folder.join("state");
    std::fs::create_dir(&data).unwrap();
    for name in ["hopper.lock", "hopper.db", "secret.key"] {
        std::fs::write(data.join(name), "x").unwrap();
    }
    // Left out by .hopperignore (or .gitignore), the folder fits.
    std::fs::write(folder.join(".hopperignore"), "*.bin\n").unwrap();
    std::fs::write(folder.join(".gitignore"), "secret.env\n").unwrap();
    std::fs::write(folder.join("secret.env"), "X=1\n").unwrap();
    let out = deploy(&server.url, &folder, &["--max-bundle", "2MiB"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let versions: Vec<Value> = serde_json::from_str(&stdout(&cli(
        &server.url,
        &["apps", "--versions", "--json"],
    )))
    .unwrap();
    // hopper.toml, lib/greet.sh, .hopperignore, .gitignore: not the .bin files nor secret.env.
    assert_eq!(versions[0]["snapshot"]["files"], 4, "{}", versions[0]);
}

async fn client_apps(server: &Server) -> Vec<hopper_core::api::AppView> {
    server.client().apps().await.unwrap()
}

#[tokio::test]
async fn serve_dev_runs_the_live_folder_and_plain_serve_deploy_ships_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let folder = app(dir.path(), "v1");
    let manifest = folder.join("hopper.toml");
    let manifest = manifest.to_str().unwrap();

    let dev = Server::start(&dir.path().join("dev"), &["--dev", "--deploy", manifest]);
    let client = dev.client();
    let call = spawn_once_deployed(&client).await;
    assert_eq!(output_of(&client, &call.id).await, json!("v1"));
    say(&folder, "edited");
    let call = client.spawn("code.greet", json!(null), None).await.unwrap();
    assert_eq!(output_of(&client, &call.id).await, json!("edited"));
    let table = stdout(&cli(&dev.url, &["apps"]));
    assert!(table.contains("live folder"), "{table}");
    drop(dev);

    // Its data folder inside the app's folder: not part of the app's code.
    let data = folder.join("state");
    let shipped = Server::start(&data, &["--deploy", manifest]);
    let client = shipped.client();
    let call = spawn_once_deployed(&client).await;
    assert_eq!(output_of(&client, &call.id).await, json!("edited"));
    say(&folder, "after the deploy");
    let call = client.spawn("code.greet", json!(null), None).await.unwrap();
    assert_eq!(output_of(&client, &call.id).await, json!("edited"));
    // Its local workers keep their snapshots under the data folder, which the snapshot
    // leaves out: it holds hopper.toml and lib/greet.sh.
    assert!(data.join("snapshots").is_dir());
    let versions: Vec<Value> = serde_json::from_str(&stdout(&cli(
        &shipped.url,
        &["apps", "--versions", "--json"],
    )))
    .unwrap();
    assert_eq!(versions[0]["snapshot"]["files"], 2, "{}", versions[0]);
}

/// A call of `code.greet` as soon as `serve --deploy` has deployed it (a server listens
/// before its start-up deploys are done).
async fn spawn_once_deployed(client: &hopper_sdk::Client) -> hopper_core::api::CallView {
    eventually("code.greet deployed", Duration::from_secs(30), || async {
        client.spawn("code.greet", json!(null), None).await.ok()
    })
    .await
}

#[tokio::test]
async fn a_function_runs_in_an_environment_built_once_from_its_requirements() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--no-workers"]);
    let client = server.client();
    let folder = dir.path().join("env-app");
    std::fs::create_dir(&folder).unwrap();
    // A small real package from the Python registry, and a name that does not exist there.
    std::fs::write(folder.join("requirements.txt"), "six==1.16.0\n").unwrap();
    std::fs::write(
        folder.join("hopper.toml"),
        r#"app = "envs"
[functions.which]
command = ["python3", "-c", "import json, six, sys; print(json.dumps([six.__version__, six.__file__, sys.prefix]))"]
python = { requirements = "requirements.txt" }
[functions.broken]
command = ["python3", "-c", "print(1)"]
python = { requirements = ["hopper-no-such-package-7f3a==9.9.9"] }
"#,
    )
    .unwrap();
    let out = deploy(&server.url, &folder, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let cache = dir.path().join("cache");
    let log = dir.path().join("worker.log");
    let worker = Command::new(BIN)
        .args(["worker", "--server", &server.url])
        .args(["--function", "envs.which", "--function", "envs.broken"])
        .arg("--cache-dir")
        .arg(&cache)
        .current_dir(dir.path())
        .env("RUST_LOG", "info")
        .env_remove("HOPPER_TOKEN")
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let _worker = Worker(worker);

    let call = client.spawn("envs.which", json!(null), None).await.unwrap();
    let call = wait_done(&client, &call.id, Duration::from_secs(180)).await;
    assert_eq!(call.state, CallState::Succeeded, "{call:?}");
    let output = call.output.unwrap();
    assert_eq!(output[0], "1.16.0");
    let envs = cache.join("envs");
    let envs = envs.to_str().unwrap();
    assert!(output[1].as_str().unwrap().starts_with(envs), "{output}");
    assert!(output[2].as_str().unwrap().starts_with(envs), "{output}");

    // Requirements pip cannot install fail the inputs at once, with pip's words, and the
    // environment is tried once, not once per input.
    for _ in 0..2 {
        let call = client
            .spawn("envs.broken", json!(null), None)
            .await
            .unwrap();
        let call = wait_done(&client, &call.id, Duration::from_secs(180)).await;
        assert_eq!(call.state, CallState::Failed, "{call:?}");
        let error = call.error.unwrap();
        assert_eq!(error.code, "environment_failed", "{error:?}");
        assert!(
            error.message.contains("hopper-no-such-package-7f3a"),
            "{}",
            error.message
        );
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        text.matches("building a Python environment").count(),
        2,
        "one build for each set of requirements: {text}"
    );
}

#[tokio::test]
async fn a_missing_requirements_file_and_an_unwritable_cache_are_refused_up_front() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--no-workers"]);
    let folder = app(dir.path(), "v1");
    let manifest = folder.join("hopper.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(
        &manifest,
        format!("{text}python = {{ requirements = \"requirements.txt\" }}\n"),
    )
    .unwrap();
    let out = deploy(&server.url, &folder, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(
            "functions.greet.python.requirements: requirements.txt is not in the code snapshot"
        ),
        "{}",
        stderr(&out)
    );
    let out = Command::new(BIN)
        .args([
            "worker",
            "--server",
            &server.url,
            "--function",
            "code.greet",
        ])
        .args(["--cache-dir", "/proc/no-such-cache"])
        .env_remove("HOPPER_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--cache-dir /proc/no-such-cache: the worker cannot write there"),
        "{}",
        stderr(&out)
    );
}

/// Processes whose command line contains every one of `parts`.
fn processes_with(parts: &[&str]) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let line = String::from_utf8_lossy(&raw).replace('\0', " ");
        if parts.iter().all(|p| line.contains(p)) && alive(pid as i32) {
            found.push(pid);
        }
    }
    found
}

#[tokio::test]
async fn a_worker_killed_while_it_builds_an_environment_leaves_no_pip_behind() {
    // A package index that takes connections and never answers: pip waits on it.
    let index = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = index.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--no-workers"]);
    let client = server.client();
    let folder = dir.path().join("slow-env");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(
        folder.join("requirements.txt"),
        format!("--index-url http://127.0.0.1:{port}/simple\nsix==1.16.0\n"),
    )
    .unwrap();
    std::fs::write(
        folder.join("hopper.toml"),
        "app = \"slow\"\n[functions.f]\ncommand = [\"python3\", \"-c\", \"print(1)\"]\npython = { requirements = \"requirements.txt\" }\n",
    )
    .unwrap();
    let out = deploy(&server.url, &folder, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let cache = dir.path().join("cache");
    let cache_text = cache.to_string_lossy().into_owned();
    let worker = Worker::start(
        &server.url,
        "slow.f",
        dir.path(),
        &cache,
        &dir.path().join("worker.log"),
    );
    client.spawn("slow.f", json!(null), None).await.unwrap();
    let pip = [cache_text.as_str(), "-m pip install"];
    eventually("pip is installing", Duration::from_secs(90), || async {
        (!processes_with(&pip).is_empty()).then_some(())
    })
    .await;
    // SIGKILL of the worker alone: nothing gets a chance to clean up.
    #[allow(unsafe_code)]
    // SAFETY: kill takes plain integers.
    unsafe {
        libc::kill(worker.0.id() as libc::pid_t, libc::SIGKILL);
    }
    eventually(
        "pip is gone with its worker",
        Duration::from_secs(10),
        || async { processes_with(&pip).is_empty().then_some(()) },
    )
    .await;
    drop(worker);
    drop(index);
}

#[tokio::test]
async fn the_cache_drops_the_least_recently_used_snapshot_no_worker_runs() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--no-workers"]);
    let client = server.client();
    let folder = app(dir.path(), "v1");
    let cache = dir.path().join("cache");
    let unpacked = || -> Vec<String> {
        std::fs::read_dir(&cache)
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with("tmp-") && n != "envs" && n != "blobs")
            .collect()
    };
    // A cache of one byte keeps only the snapshot a worker runs.
    for (version, says) in [(1, "v1"), (2, "v2")] {
        say(&folder, says);
        let out = deploy(&server.url, &folder, &[]);
        assert!(out.status.success(), "{}", stderr(&out));
        let call = client.spawn("code.greet", json!(null), None).await.unwrap();
        let log = dir.path().join(format!("w{version}.log"));
        let worker = Worker::start_with(
            &server.url,
            "code.greet",
            dir.path(),
            &cache,
            &log,
            &["--cache-max", "1"],
        );
        assert_eq!(output_of(&client, &call.id).await, json!(says));
        assert_eq!(unpacked().len(), 1, "version {version}: {:?}", unpacked());
        drop(worker);
    }
    let versions: Vec<Value> = serde_json::from_str(&stdout(&cli(
        &server.url,
        &["apps", "--versions", "--json"],
    )))
    .unwrap();
    let newest = versions.iter().find(|v| v["version"] == 2).unwrap();
    let hash = newest["snapshot"]["hash"].as_str().unwrap();
    assert_eq!(
        unpacked(),
        vec![hash.trim_start_matches("sha256:").to_string()]
    );
}

/// The most common project layout: a `.venv` beside the code (its `bin/python3` a link out of
/// the folder), with no `.gitignore`. What never belongs in code is left out, a negation in the
/// folder's `.hopperignore` ships it anyway, and a link out of the folder says how to leave it
/// out first.
#[tokio::test]
async fn virtual_environments_and_tool_folders_are_left_out_unless_negated() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--no-workers"]);
    let folder = app(dir.path(), "v1");
    let files = || -> Value {
        let versions: Vec<Value> = serde_json::from_str(&stdout(&cli(
            &server.url,
            &["apps", "--versions", "--json"],
        )))
        .unwrap();
        versions[0]["snapshot"]["files"].clone()
    };
    for venv in [".venv", "env-any-name"] {
        std::fs::create_dir_all(folder.join(venv).join("bin")).unwrap();
        std::fs::write(folder.join(venv).join("pyvenv.cfg"), "home = /usr/bin\n").unwrap();
        std::os::unix::fs::symlink("/usr/bin/python3", folder.join(venv).join("bin/python3"))
            .unwrap();
    }
    for tool in [
        "node_modules/left-pad",
        "__pycache__",
        "lib/__pycache__",
        ".git",
        ".mypy_cache",
        ".pytest_cache",
        ".ruff_cache",
        ".tox",
    ] {
        std::fs::create_dir_all(folder.join(tool)).unwrap();
        std::fs::write(folder.join(tool).join("file"), "x").unwrap();
    }
    let out = deploy(&server.url, &folder, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    // hopper.toml and lib/greet.sh only.
    assert_eq!(files(), 2);

    // Negated in the folder's .hopperignore: node_modules and one environment travel.
    std::fs::write(
        folder.join(".hopperignore"),
        "!node_modules/\n!env-any-name/\n",
    )
    .unwrap();
    let out = deploy(&server.url, &folder, &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    // The environment's link to the machine's python now ships, and is refused: the advice
    // to leave it out comes first, with the line to write.
    let advice = err.find("Leave it out with a line '/env-any-name/bin/python3'");
    let copy = err.find("copy what it points to");
    assert!(
        err.contains("env-any-name/bin/python3 is a link to /usr/bin/python3, outside")
            && advice.is_some()
            && advice < copy
            && err.contains(".hopperignore"),
        "{err}"
    );
    std::fs::write(folder.join(".hopperignore"), "!node_modules/\n").unwrap();
    let out = deploy(&server.url, &folder, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    // hopper.toml, lib/greet.sh, .hopperignore and node_modules/left-pad/file.
    assert_eq!(files(), 4);
}
