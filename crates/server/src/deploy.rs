//! Deploying a manifest: parse and validate it, then store it as the app's next version.

use std::path::{Path, PathBuf};

use hopper_core::manifest;
use hopper_store::{AppDeploy, AppRow, ScheduleDeploy};

use crate::api::error::ApiError;
use crate::state::AppState;
use crate::ServerError;

/// The code a version runs in: a stored snapshot, made of the folder `root` on the deploying
/// machine.
#[derive(Debug, Clone)]
pub struct Shipped {
    pub hash: String,
    pub root: PathBuf,
}

/// Validates the manifest text and stores it as a new version of its app, running in the
/// code snapshot `shipped` (stored already) if given, else from `base_dir` on the workers'
/// machines.
pub async fn manifest_text(
    state: &AppState,
    file: &str,
    text: &str,
    base_dir: &Path,
    shipped: Option<Shipped>,
) -> Result<AppRow, ApiError> {
    let mut parsed = manifest::parse(file, text, base_dir)
        .map_err(|e| ApiError::bad_request("invalid_manifest", e.to_string()))?;
    let snapshot = shipped.as_ref().map(|s| s.hash.clone());
    if let Some(shipped) = &shipped {
        if state.store.snapshot_info(&shipped.hash).await?.is_none() {
            return Err(crate::api::snapshots::unknown(&shipped.hash));
        }
        for f in &mut parsed.functions {
            // The same place, inside the snapshot (whose root is `/`).
            let inside = Path::new(&f.workdir)
                .strip_prefix(&shipped.root)
                .map_err(|_| {
                    ApiError::bad_request(
                        "invalid_manifest",
                        format!(
                            "{file}: functions.{}.workdir {} is outside {}, the folder shipped as the version's code: set `root` in the manifest to a folder above both, or deploy without a snapshot",
                            f.name,
                            f.workdir,
                            shipped.root.display()
                        ),
                    )
                })?;
            f.workdir = Path::new("/").join(inside).to_string_lossy().into_owned();
            f.snapshot = Some(shipped.hash.clone());
            let name = f.name.clone();
            if let Some(requirements) = f.python.as_mut().and_then(|p| p.requirements_file.as_mut())
            {
                let inside = Path::new(requirements.as_str())
                    .strip_prefix(&shipped.root)
                    .map_err(|_| {
                        ApiError::bad_request(
                            "invalid_manifest",
                            format!(
                                "{file}: functions.{name}.python.requirements {requirements} is outside {}, the folder shipped as the version's code",
                                shipped.root.display()
                            ),
                        )
                    })?;
                *requirements = Path::new("/").join(inside).to_string_lossy().into_owned();
            }
        }
    }
    secrets_exist(state, file, &parsed.functions).await?;
    let row = state
        .store
        .app_deploy(AppDeploy {
            app: parsed.app,
            manifest: text.to_string(),
            functions: parsed.functions,
            schedules: parsed
                .schedules
                .into_iter()
                .map(|spec| {
                    let now = state.now();
                    ScheduleDeploy {
                        next_due_at: spec.next_after(now, now),
                        spec,
                    }
                })
                .collect(),
            notify: parsed.notify,
            snapshot: snapshot.clone(),
            now: state.now(),
        })
        .await?;
    match &snapshot {
        Some(hash) => {
            tracing::info!(app = %row.name, version = row.version, snapshot = %hash, "deployed")
        }
        None => tracing::info!(
            app = %row.name,
            version = row.version,
            folder = %base_dir.display(),
            "deployed to run from the live folder (no snapshot): edits take effect without a deploy"
        ),
    }
    state.events.deployed();
    Ok(row)
}

/// Refuses a manifest that names a secret (or a key of one) that does not exist, naming those
/// that do.
async fn secrets_exist(
    state: &AppState,
    file: &str,
    functions: &[hopper_core::FunctionSpec],
) -> Result<(), ApiError> {
    if functions.iter().all(|f| f.secret_names().is_empty()) {
        return Ok(());
    }
    let stored = state.store.secret_list().await?;
    let known = |name: &str| stored.iter().find(|s| s.name == name);
    let mut faults = Vec::new();
    for f in functions {
        for name in f.secret_names() {
            if known(name).is_none() {
                faults.push(format!(
                    "functions.{} reads secret {name:?}, which does not exist",
                    f.name
                ));
            }
        }
        for (var, at) in &f.secret_env {
            if let Some(secret) = known(&at.secret) {
                if !secret.keys.contains(&at.key) {
                    faults.push(format!(
                        "functions.{}.env.{var} reads key {:?} of secret {:?}, which has only {}",
                        f.name,
                        at.key,
                        at.secret,
                        secret.keys.join(", ")
                    ));
                }
            }
        }
    }
    if faults.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = stored.iter().map(|s| s.name.as_str()).collect();
    let have = if names.is_empty() {
        "there are no secrets yet".to_string()
    } else {
        format!("the secrets are: {}", names.join(", "))
    };
    Err(ApiError::bad_request(
        "unknown_secret",
        format!(
            "{file}: {} ({have}; create one with `hopper secrets set NAME KEY=VALUE…`)",
            faults.join("; ")
        ),
    ))
}

/// What to tell the deployer about functions of the app that this version no longer has but
/// that still have queued or running inputs: they finish on the version they were spawned on.
pub async fn stranded_notes(state: &AppState, row: &AppRow) -> Result<Vec<String>, ApiError> {
    let mut notes = Vec::new();
    for b in state.store.function_backlog(state.now()).await? {
        let removed = b.app == row.name && !row.functions.iter().any(|f| f.spec.name == b.function);
        let open = b.pending + b.delayed + b.running;
        if removed && open > 0 {
            notes.push(format!(
                "{open} queued or running inputs of {}.{} (removed in version {}) will finish on the version they were spawned on",
                b.app, b.function, row.version
            ));
        }
    }
    Ok(notes)
}

/// Deploys a manifest file given on the command line (`serve --deploy FILE`).
pub async fn from_file(state: &AppState, path: &Path) -> Result<AppRow, ServerError> {
    let fail = |message: String| ServerError::Deploy {
        file: path.display().to_string(),
        message,
    };
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| fail(e.to_string()))?;
    if state.config.dev {
        let absolute = std::path::absolute(path).map_err(|e| fail(e.to_string()))?;
        let base_dir = absolute.parent().unwrap_or(Path::new("/"));
        return manifest_text(state, &path.display().to_string(), &text, base_dir, None)
            .await
            .map_err(|e| fail(e.message));
    }
    let bundle = {
        let (path, text) = (path.to_path_buf(), text.clone());
        let max = state.config.max_bundle_bytes;
        // The server's own data may sit in the app's folder: it is not the app's code.
        let leave_out: Vec<PathBuf> = state.config.data_dir.iter().cloned().collect();
        tokio::task::spawn_blocking(move || {
            hopper_worker::snapshot::for_manifest(&path, &text, max, &leave_out)
        })
        .await
        .map_err(|e| fail(e.to_string()))?
        .map_err(fail)?
    };
    if state
        .store
        .snapshot_info(&bundle.hash)
        .await
        .map_err(|e| fail(e.to_string()))?
        .is_none()
    {
        let bytes = bundle.bytes().map_err(fail)?;
        crate::api::snapshots::store(state, &bundle.hash, bytes)
            .await
            .map_err(|e| fail(e.message))?;
    }
    manifest_text(
        state,
        &path.display().to_string(),
        &text,
        &bundle.folder,
        Some(Shipped {
            hash: bundle.hash.clone(),
            root: bundle.root.clone(),
        }),
    )
    .await
    .map_err(|e| fail(e.message))
}
