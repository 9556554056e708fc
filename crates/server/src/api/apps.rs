//! `/v1/apps` and `/v1/functions`: deploying manifests and finding functions.

use std::path::Path;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use hopper_core::api::{AppView, DeployRequest, FunctionVersionView, FunctionView};
use hopper_core::FunctionName;
use hopper_store::{FunctionFind, FunctionKey, FunctionRow, LimitsRead};

use super::error::ApiError;
use super::extract::{ApiJson, ApiPath};
use super::views;
use crate::deploy;
use crate::state::AppState;

pub async fn deploy(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<DeployRequest>,
) -> Result<(StatusCode, Json<AppView>), ApiError> {
    let base_dir = Path::new(&req.base_dir);
    if !base_dir.is_absolute() {
        return Err(ApiError::bad_request(
            "invalid_manifest",
            format!("base_dir {:?} must be an absolute path", req.base_dir),
        ));
    }
    let shipped = match (&req.snapshot, &req.snapshot_root) {
        (None, _) => None,
        (Some(hash), _) if !hopper_worker::snapshot::is_hash(hash) => {
            return Err(ApiError::bad_request(
                "invalid_snapshot",
                format!("snapshot {hash:?} is not a snapshot hash (sha256: and 64 hex digits)"),
            ))
        }
        (Some(hash), Some(root))
            if Path::new(root).is_absolute() && base_dir.starts_with(root) =>
        {
            Some(deploy::Shipped {
                hash: hash.clone(),
                root: root.into(),
            })
        }
        (Some(_), root) => {
            return Err(ApiError::bad_request(
                "invalid_snapshot",
                format!(
                    "with a snapshot, snapshot_root must be the absolute folder it was made of, base_dir ({}) or a folder above it, not {root:?}",
                    req.base_dir
                ),
            ))
        }
    };
    let row = deploy::manifest_text(&state, &req.file, &req.manifest, base_dir, shipped).await?;
    let mut view = views::app(&row);
    view.notes = deploy::stranded_notes(&state, &row).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

pub async fn list(State(state): State<AppState>) -> Result<Json<Vec<AppView>>, ApiError> {
    let apps = state.store.app_list().await?;
    Ok(Json(
        apps.iter().map(|a| views::app_here(&state, a)).collect(),
    ))
}

pub async fn functions(State(state): State<AppState>) -> Result<Json<Vec<FunctionView>>, ApiError> {
    let apps = state.store.app_list().await?;
    Ok(Json(
        apps.iter()
            .flat_map(|a| a.functions.iter().map(|f| views::function_here(&state, f)))
            .collect(),
    ))
}

pub async fn function(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<FunctionView>, ApiError> {
    let row = resolve(&state, &name).await?;
    let mut view = views::function_here(&state, &row);
    if row.spec.limits.any() {
        let now = state
            .store
            .limits_state(LimitsRead {
                function: FunctionKey {
                    app: row.spec.app.clone(),
                    function: row.spec.name.clone(),
                },
                limits: row.spec.limits.clone(),
                call: None,
                count: true,
                now: state.now(),
            })
            .await?;
        view.limits_state = Some(views::limits_state(&row.spec.limits, &now));
    }
    Ok(Json(view))
}

/// The function's versions, newest first (the last 50).
pub async fn versions(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Vec<FunctionVersionView>>, ApiError> {
    let current = resolve(&state, &name).await?;
    let key = FunctionKey {
        app: current.spec.app.clone(),
        function: current.spec.name.clone(),
    };
    let rows = state.store.function_versions(&key, 50).await?;
    let mut snapshots = std::collections::BTreeMap::new();
    for hash in rows
        .iter()
        .filter_map(|r| r.function.spec.snapshot.as_ref())
    {
        if !snapshots.contains_key(hash) {
            let info = state.store.snapshot_info(hash).await?;
            snapshots.insert(hash.clone(), info.map(|i| super::snapshots::view(&i)));
        }
    }
    Ok(Json(
        rows.iter()
            .map(|row| FunctionVersionView {
                name: row.function.spec.qualified_name(),
                version: row.function.version,
                deployed_at: views::time(row.deployed_at),
                spec: row.function.spec.clone(),
                snapshot: row
                    .function
                    .spec
                    .snapshot
                    .as_ref()
                    .and_then(|h| snapshots.get(h).cloned().flatten()),
            })
            .collect(),
    ))
}

/// Finds the deployed function a user means: `app.function`, or a bare name unique across apps.
pub async fn resolve(state: &AppState, text: &str) -> Result<FunctionRow, ApiError> {
    let name = FunctionName::parse(text)
        .map_err(|e| ApiError::bad_request("invalid_function_name", e.to_string()))?;
    let mut found = state
        .store
        .function_find(FunctionFind {
            app: name.app.clone(),
            function: name.function.clone(),
        })
        .await?;
    match found.len() {
        0 => {
            let deployed: Vec<String> = state
                .store
                .app_list()
                .await?
                .iter()
                .flat_map(|a| a.functions.iter().map(|f| f.spec.qualified_name()))
                .collect();
            let hint = match hopper_core::suggest::closest(&name.to_string(), &deployed) {
                Some(close) => format!("; did you mean {close}?"),
                None if deployed.is_empty() => {
                    "; nothing is deployed yet: `hopper deploy hopper.toml`".into()
                }
                None => format!(
                    "; deployed: {}{} (`hopper apps` lists them)",
                    deployed
                        .iter()
                        .take(10)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", "),
                    if deployed.len() > 10 { ", …" } else { "" }
                ),
            };
            Err(ApiError::not_found(
                "unknown_function",
                format!("no function named {name} is deployed{hint}"),
            ))
        }
        1 => Ok(found.remove(0)),
        _ => {
            let names: Vec<String> = found.iter().map(|f| f.spec.qualified_name()).collect();
            Err(ApiError::bad_request(
                "ambiguous_function",
                format!(
                    "{name} is deployed in several apps ({}); name it as app.function",
                    names.join(", ")
                ),
            ))
        }
    }
}
