//! Python environments: a virtual environment per set of requirements, built once per machine
//! with the machine's `python3` and pip, shared by its workers like code snapshots are.
//!
//! Layout, under the snapshot cache's `envs/` folder:
//! - `HASH/`: a virtual environment, whole once `HASH/.complete` exists (written last, so a
//!   crash half-way leaves one the next builder removes and builds again);
//! - `HASH.lock`: held while a worker checks or builds it;
//! - `HASH.use.lock`: held shared by every worker running in it, so it is not removed;
//! - `HASH.failed`: pip's last lines when the requirements could not be installed; inputs fail
//!   with them at once (for ten minutes, then the build is tried again).
//!
//! The environment is made with `--system-site-packages`: it sees the machine's packages (the
//! Hopper SDK among them), and what its requirements install comes first.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sha2::{Digest, Sha256};

/// A failed build is not tried again on this machine for this long.
const FAILURE_KEPT: Duration = Duration::from_secs(600);
/// Most environments kept; the least recently used go first.
const MAX_ENVS: usize = 16;

/// Why an environment is not ready.
#[derive(Debug, Clone)]
pub struct EnvError {
    pub message: String,
    /// Whether trying again may help (pip could not install the requirements: no).
    pub retry: bool,
}

/// The machine's Python environments, and those this process has ready.
pub struct PythonEnvs {
    dir: PathBuf,
    ready: tokio::sync::Mutex<HashMap<String, Result<PathBuf, EnvError>>>,
    /// The use locks of the environments this process runs in, held until it exits.
    in_use: std::sync::Mutex<Vec<std::fs::File>>,
}

impl PythonEnvs {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            ready: tokio::sync::Mutex::new(HashMap::new()),
            in_use: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// The interpreter environments are made with: `HOPPER_PYTHON`, else `python3`.
    fn python() -> String {
        std::env::var("HOPPER_PYTHON")
            .ok()
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "python3".into())
    }

    /// The folder of the environment for `requirements` (pip's format), built if need be.
    pub async fn ensure(&self, requirements: &str) -> Result<PathBuf, EnvError> {
        let python = Self::python();
        let hash = hex::encode(Sha256::digest(format!("{python}\n{requirements}")));
        let mut ready = self.ready.lock().await;
        if let Some(known) = ready.get(&hash) {
            return known.clone();
        }
        let (dir, text) = (self.dir.clone(), requirements.to_string());
        let key = hash.clone();
        let built = tokio::task::spawn_blocking(move || build(&dir, &key, &python, &text))
            .await
            .unwrap_or_else(|e| {
                Err(EnvError {
                    message: format!("internal error: {e}"),
                    retry: true,
                })
            });
        let built = built.map(|(env, used)| {
            self.in_use
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(used);
            env
        });
        // A failure pip reported is kept (inputs fail at once); one of the machine's is not.
        if built.is_ok() || built.as_ref().is_err_and(|e| !e.retry) {
            ready.insert(hash, built.clone());
        }
        built
    }
}

/// The environment for `requirements` and its use lock, held shared.
fn build(
    dir: &Path,
    hash: &str,
    python: &str,
    requirements: &str,
) -> Result<(PathBuf, std::fs::File), EnvError> {
    let machine = |message: String| EnvError {
        message,
        retry: true,
    };
    std::fs::create_dir_all(dir)
        .map_err(|e| machine(format!("cannot create {}: {e}", dir.display())))?;
    let lock = crate::cache::lock_file(&dir.join(format!("{hash}.lock")), libc::LOCK_EX)
        .map_err(machine)?;
    let env = dir.join(hash);
    let failed = dir.join(format!("{hash}.failed"));
    let use_lock = || {
        crate::cache::lock_file(&dir.join(format!("{hash}.use.lock")), libc::LOCK_SH)
            .map_err(machine)
    };
    if env.join(".complete").exists() {
        crate::cache::touch(&env.join(".complete"));
        let used = use_lock()?;
        drop(lock);
        return Ok((env, used));
    }
    let recent_failure = std::fs::metadata(&failed)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age < FAILURE_KEPT);
    if recent_failure {
        let message = std::fs::read_to_string(&failed).unwrap_or_default();
        return Err(EnvError {
            message,
            retry: false,
        });
    }
    let _ = std::fs::remove_dir_all(&env);
    tracing::info!(environment = %env.display(), "building a Python environment");
    let run = |cmd: &mut Command, what: &str| -> Result<(), EnvError> {
        // A worker that dies mid-build takes venv and pip with it (they run in this thread).
        crate::process::isolate_std(cmd, crate::process::SIGKILL);
        let out = cmd
            .output()
            .map_err(|e| machine(format!("cannot run {what}: {e}")))?;
        if out.status.success() {
            return Ok(());
        }
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let tail: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = tail[tail.len().saturating_sub(12)..].join("\n");
        Err(EnvError {
            message: format!("{what} failed ({}):\n{tail}", out.status),
            retry: false,
        })
    };
    let result = (|| {
        run(
            Command::new(python)
                .args(["-m", "venv", "--system-site-packages"])
                .arg(&env),
            &format!("{python} -m venv"),
        )?;
        let file = env.join("hopper-requirements.txt");
        std::fs::write(&file, requirements)
            .map_err(|e| machine(format!("cannot write {}: {e}", file.display())))?;
        run(
            Command::new(env.join("bin").join("python"))
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--disable-pip-version-check",
                    "--no-input",
                    "--quiet",
                    "-r",
                ])
                .arg(&file),
            "pip install",
        )?;
        std::fs::write(env.join(".complete"), "")
            .map_err(|e| machine(format!("cannot finish {}: {e}", env.display())))
    })();
    match result {
        Ok(()) => {
            let _ = std::fs::remove_file(&failed);
            let used = use_lock()?;
            drop(lock);
            evict(dir);
            Ok((env, used))
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&env);
            if !e.retry {
                let _ = std::fs::write(&failed, &e.message);
            }
            Err(e)
        }
    }
}

/// Keeps the [`MAX_ENVS`] most recently used environments; one a worker is checking or
/// building is left alone.
fn evict(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut envs: Vec<(std::time::SystemTime, String)> = entries
        .flatten()
        .filter_map(|e| {
            let used = std::fs::metadata(e.path().join(".complete"))
                .and_then(|m| m.modified())
                .ok()?;
            Some((used, e.file_name().to_string_lossy().into_owned()))
        })
        .collect();
    if envs.len() <= MAX_ENVS {
        return;
    }
    envs.sort();
    let extra = envs.len() - MAX_ENVS;
    for (_, name) in envs.into_iter().take(extra) {
        let Ok(lock) = crate::cache::lock_file(
            &dir.join(format!("{name}.lock")),
            libc::LOCK_EX | libc::LOCK_NB,
        ) else {
            continue;
        };
        let Ok(used) = crate::cache::lock_file(
            &dir.join(format!("{name}.use.lock")),
            libc::LOCK_EX | libc::LOCK_NB,
        ) else {
            continue;
        };
        let _ = std::fs::remove_dir_all(dir.join(&name));
        drop((used, lock));
    }
}
