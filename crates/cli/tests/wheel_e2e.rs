//! `pip install` brings the server: the wheel `.ci/run` builds from `python/` (named by
//! `HOPPER_TEST_WHEEL`) goes into a fresh virtualenv, on a `PATH` with no Rust toolchain, and
//! the README's quickstarts run with nothing but what it installed: the `hopper` binary, and
//! the SDK that finds it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use common::*;

/// A `PATH` of the virtualenv and the system's folders: no `~/.cargo/bin`.
fn bare_path(venv: &Path) -> String {
    format!(
        "{}:/usr/local/bin:/usr/bin:/bin",
        venv.join("bin").display()
    )
}

/// Runs a program of the virtualenv with the bare `PATH`, in `dir`.
fn run(venv: &Path, dir: &Path, program: &str, args: &[&str]) -> Output {
    Command::new(venv.join("bin").join(program))
        .args(args)
        .current_dir(dir)
        .env("PATH", bare_path(venv))
        .env_remove("HOPPER_BIN")
        .env_remove("HOPPER_SERVER")
        .env_remove("HOPPER_TOKEN")
        .env_remove("VIRTUAL_ENV")
        .output()
        .unwrap()
}

/// The server the wheel installed, stopped (its group killed) when dropped.
struct Served {
    child: Child,
    url: String,
}

impl Served {
    fn start(venv: &Path, data: &Path) -> Served {
        use std::os::unix::process::CommandExt;
        let mut child = Command::new(venv.join("bin/hopper"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .current_dir(data.parent().unwrap())
            .env("PATH", bare_path(venv))
            .env("RUST_LOG", "warn")
            .env_remove("HOPPER_TOKEN")
            .process_group(0)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        let url = first
            .trim()
            .strip_prefix("hopper listening on ")
            .unwrap_or_else(|| panic!("unexpected first line from serve: {first:?}"))
            .to_string();
        Served { child, url }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        signal_group(self.child.id(), libc::SIGKILL);
        let _ = self.child.wait();
    }
}

#[test]
fn the_wheel_brings_the_server_and_the_quickstarts_run_with_it() {
    let Ok(wheel) = std::env::var("HOPPER_TEST_WHEEL") else {
        println!("SKIP: HOPPER_TEST_WHEEL names no wheel (.ci/run builds one from python/)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let venv: PathBuf = dir.path().join("venv");
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .unwrap();
    assert!(made.success());
    // Nothing of Rust's on this PATH.
    let cargo = Command::new("sh")
        .args(["-c", "command -v cargo rustc"])
        .env("PATH", bare_path(&venv))
        .output()
        .unwrap();
    assert!(!cargo.status.success(), "{}", stdout(&cargo));
    let out = run(
        &venv,
        dir.path(),
        "python",
        &[
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            &wheel,
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(&venv, dir.path(), "hopper", &["--version"]);
    assert!(
        out.status.success() && stdout(&out).starts_with("hopper "),
        "{}",
        stderr(&out)
    );

    // The command quickstart: `hopper run` starts a temporary server of its own.
    let quickstart = repo_root().join("examples/quickstart/hopper.toml");
    let out = run(
        &venv,
        dir.path(),
        "hopper",
        &[
            "run",
            quickstart.to_str().unwrap(),
            "sum",
            "--input",
            "[1, 2, 3]",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let sum: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(sum, serde_json::json!({"count": 3, "sum": 6}));

    // The Python quickstart: `hopper serve`, `python -m hopper deploy`, a call from a script.
    let server = Served::start(&venv, &dir.path().join("data"));
    let shop = repo_root().join("examples/python/shop.py");
    let out = run(
        &venv,
        dir.path(),
        "python",
        &[
            "-m",
            "hopper",
            "deploy",
            shop.to_str().unwrap(),
            "--server",
            &server.url,
        ],
    );
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let script = format!(
        "import hopper\n\
         resize = hopper.Function.from_name('shop.resize', client=hopper.Client(server={:?}))\n\
         print(resize.remote('a.png'))\n",
        server.url
    );
    let out = run(&venv, dir.path(), "python", &["-c", &script]);
    assert_eq!(
        stdout(&out).trim(),
        "{'url': 'a.png', 'ok': True}",
        "{}",
        stderr(&out)
    );
    // `python -m hopper` hands the binary's commands to the binary that came with it.
    let out = run(
        &venv,
        dir.path(),
        "python",
        &["-m", "hopper", "calls", "--server", &server.url, "--json"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let calls: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(calls["calls"].as_array().map(Vec::len), Some(1), "{calls}");
    // It finds that binary with the virtualenv's folder off PATH too (pip's scripts folder is
    // often not on it), and before any other `hopper` there.
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::write(
        elsewhere.join("hopper"),
        "#!/bin/sh\necho wrong binary\nexit 9\n",
    )
    .unwrap();
    std::fs::set_permissions(
        elsewhere.join("hopper"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let out = Command::new(venv.join("bin/python"))
        .args(["-m", "hopper", "serve", "--help"])
        .env("PATH", format!("{}:/usr/bin:/bin", elsewhere.display()))
        .env_remove("HOPPER_BIN")
        .output()
        .unwrap();
    assert!(
        out.status.success() && stdout(&out).contains("--listen"),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
}
