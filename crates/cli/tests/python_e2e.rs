//! The Python SDK's test suite (`python/tests`, pytest) against this build's `hopper` binary.
//!
//! Needs `python3` with the SDK and its test tools installed (`pip install -e './python[dev]'`,
//! the README's set-up). Without them the test says it skipped, unless `HOPPER_TEST_PYTHON=1`
//! makes their absence a failure (as the browser test does with `HOPPER_TEST_BROWSER`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use std::path::Path;
use std::process::Command;

use common::{pytest, repo_root};

/// Whether `import hopper, pytest` works; without it the test skips, unless CI asked for it.
fn python_ready(root: &Path) -> bool {
    let probe = Command::new("python3")
        .args(["-c", "import hopper, pytest"])
        .current_dir(root)
        .output();
    let why = match probe {
        Ok(out) if out.status.success() => return true,
        Ok(out) => String::from_utf8_lossy(&out.stderr)
            .lines()
            .last()
            .unwrap_or("import hopper, pytest failed")
            .to_string(),
        Err(e) => format!("cannot run python3: {e}"),
    };
    let required = std::env::var("HOPPER_TEST_PYTHON").ok().as_deref() == Some("1");
    assert!(
        !required,
        "HOPPER_TEST_PYTHON=1 but `import hopper, pytest` fails: {why} \
         (pip install -e './python[dev]')"
    );
    println!("SKIP python SDK tests: {why} (pip install -e './python[dev]')");
    false
}

#[test]
fn the_python_sdk_test_suite_passes_against_this_binary() {
    let root = repo_root();
    if !python_ready(&root) {
        return;
    }
    pytest("python3", "python/tests");
}
