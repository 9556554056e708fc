//! Deploying a manifest: parse and validate it, then store it as the app's next version.

use std::path::Path;

use hopper_core::manifest;
use hopper_store::{AppDeploy, AppRow, ScheduleDeploy};

use crate::api::error::ApiError;
use crate::state::AppState;
use crate::ServerError;

/// Validates the manifest text and stores it as a new version of its app.
pub async fn manifest_text(
    state: &AppState,
    file: &str,
    text: &str,
    base_dir: &Path,
) -> Result<AppRow, ApiError> {
    let parsed = manifest::parse(file, text, base_dir)
        .map_err(|e| ApiError::bad_request("invalid_manifest", e.to_string()))?;
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
            now: state.now(),
        })
        .await?;
    tracing::info!(app = %row.name, version = row.version, "deployed");
    state.events.deployed();
    Ok(row)
}

/// What to tell the deployer about functions of the app that this version no longer has but
/// that still have queued or running inputs: they finish on the version they were spawned on.
pub async fn stranded_notes(state: &AppState, row: &AppRow) -> Result<Vec<String>, ApiError> {
    let mut notes = Vec::new();
    for b in state.store.function_backlog().await? {
        let removed = b.app == row.name && !row.functions.iter().any(|f| f.spec.name == b.function);
        let open = b.pending + b.running;
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
    let absolute = std::path::absolute(path).map_err(|e| fail(e.to_string()))?;
    let base_dir = absolute.parent().unwrap_or(Path::new("/"));
    manifest_text(state, &path.display().to_string(), &text, base_dir)
        .await
        .map_err(|e| fail(e.message))
}
