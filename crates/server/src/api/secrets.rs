//! `/v1/secrets`: named secrets. Setting and deleting one needs an `admin` token; listing shows
//! names, keys and the functions that read them, never values.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use hopper_core::api::{SecretPut, SecretView};
use hopper_store::{SecretPutParams, SecretRow};

use super::error::ApiError;
use super::extract::{ApiJson, ApiPath};
use super::views;
use crate::state::AppState;

/// Most keys one secret may have.
const MAX_KEYS: usize = 256;
/// Longest value of one key, in characters (at most 64 KiB of UTF-8).
const MAX_VALUE_CHARS: usize = 16 * 1024;

pub async fn list(State(state): State<AppState>) -> Result<Json<Vec<SecretView>>, ApiError> {
    let rows = state.store.secret_list().await?;
    let users = users(&state).await?;
    Ok(Json(rows.iter().map(|r| view(r, &users)).collect()))
}

pub async fn get(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<SecretView>, ApiError> {
    let row = find(&state, &name).await?;
    Ok(Json(view(&row, &users(&state).await?)))
}

pub async fn put(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<SecretPut>,
) -> Result<(StatusCode, Json<SecretView>), ApiError> {
    hopper_core::function::validate_name(&name, "secret")
        .map_err(|e| ApiError::bad_request("invalid_secret", e.to_string()))?;
    let values: BTreeMap<String, String> = req
        .values
        .into_iter()
        .map(|v| (v.key, v.value.into_inner()))
        .collect();
    check_values(&values)?;
    // A key a function reads may not be dropped while the function is deployed or queued.
    let mut dropped = Vec::new();
    for spec in readers(&state).await? {
        for (var, at) in &spec.secret_env {
            if at.secret == name && !values.contains_key(&at.key) {
                dropped.push(format!(
                    "{} reads key {:?} (as {var})",
                    spec.qualified_name(),
                    at.key
                ));
            }
        }
    }
    if !dropped.is_empty() {
        dropped.sort();
        dropped.dedup();
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "secret_in_use",
            format!(
                "secret {name:?} would lose keys that functions read: {}; set those keys too, or deploy the functions without them first",
                dropped.join("; ")
            ),
        ));
    }
    let sealed = state
        .keyring
        .seal(&name, &values)
        .map_err(|e| ApiError::new(StatusCode::CONFLICT, "secrets_unavailable", e.to_string()))?;
    let existed = !state
        .store
        .secret_get_many(std::slice::from_ref(&name))
        .await?
        .is_empty();
    let row = state
        .store
        .secret_put(SecretPutParams {
            name: name.clone(),
            keys: values.keys().cloned().collect(),
            sealed,
            now: state.now(),
        })
        .await?;
    tracing::info!(secret = %name, keys = row.keys.len(), "secret set");
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(view(&row, &users(&state).await?))))
}

/// Deleting a secret that a deployed function reads, or one with calls still queued, is
/// refused, naming the functions: deploy them without it (and let their calls end) first.
pub async fn delete(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    find(&state, &name).await?;
    if let Some(functions) = users(&state).await?.get(&name) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "secret_in_use",
            format!(
                "secret {name:?} is read by {} (deployed, or with calls still queued or running): deploy them without it and let their calls end first",
                functions.join(", ")
            ),
        ));
    }
    state.store.secret_delete(&name).await?;
    tracing::info!(secret = %name, "secret deleted");
    Ok(StatusCode::NO_CONTENT)
}

async fn find(state: &AppState, name: &str) -> Result<SecretRow, ApiError> {
    let mut rows = state
        .store
        .secret_get_many(std::slice::from_ref(&name.to_string()))
        .await?;
    rows.pop().ok_or_else(|| {
        ApiError::not_found(
            "unknown_secret",
            format!("there is no secret named {name:?}; `hopper secrets list` shows them"),
        )
    })
}

fn check_values(values: &BTreeMap<String, String>) -> Result<(), ApiError> {
    let bad = |message: String| ApiError::bad_request("invalid_secret", message);
    if values.is_empty() {
        return Err(bad(
            "a secret needs at least one KEY=VALUE in `values`".into()
        ));
    }
    if values.len() > MAX_KEYS {
        return Err(bad(format!(
            "a secret has at most {MAX_KEYS} keys, not {}",
            values.len()
        )));
    }
    for (key, value) in values {
        hopper_core::manifest::validate_env_name(key).map_err(|e| bad(format!("values: {e}")))?;
        if value.contains('\0') {
            return Err(bad(format!(
                "values.{key}: an environment variable's value cannot contain NUL"
            )));
        }
        let chars = value.chars().count();
        if chars > MAX_VALUE_CHARS {
            return Err(bad(format!(
                "values.{key}: at most {MAX_VALUE_CHARS} characters, not {chars}"
            )));
        }
    }
    Ok(())
}

/// The functions that read each secret, as `app.function`, by secret name: their current
/// versions, and the versions of functions with calls still queued or running (which finish on
/// the version they were spawned on).
async fn users(state: &AppState) -> Result<BTreeMap<String, Vec<String>>, ApiError> {
    let mut users: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for spec in readers(state).await? {
        for name in spec.secret_names() {
            let list = users.entry(name.to_string()).or_default();
            if !list.contains(&spec.qualified_name()) {
                list.push(spec.qualified_name());
            }
        }
    }
    for list in users.values_mut() {
        list.sort();
    }
    Ok(users)
}

/// The specs that may still run and read secrets: every current function's, and every
/// stored version's of a function with calls not yet ended.
async fn readers(state: &AppState) -> Result<Vec<hopper_core::FunctionSpec>, ApiError> {
    let mut specs: Vec<hopper_core::FunctionSpec> = state
        .store
        .app_list()
        .await?
        .into_iter()
        .flat_map(|a| a.functions.into_iter().map(|f| f.spec))
        .collect();
    for open in state.store.function_backlog(state.now()).await? {
        if open.pending + open.delayed + open.running == 0 {
            continue;
        }
        let key = hopper_store::FunctionKey {
            app: open.app,
            function: open.function,
        };
        for version in state.store.function_versions(&key, 50).await? {
            specs.push(version.function.spec);
        }
    }
    specs.retain(|s| !s.secret_names().is_empty());
    Ok(specs)
}

fn view(row: &SecretRow, users: &BTreeMap<String, Vec<String>>) -> SecretView {
    SecretView {
        name: row.name.clone(),
        keys: row.keys.clone(),
        created_at: views::time(row.created_at),
        updated_at: views::time(row.updated_at),
        used_by: users.get(&row.name).cloned().unwrap_or_default(),
    }
}

/// `POST /v1/reseal` (admin): seals every secret again with the first key of
/// `HOPPER_SECRET_KEY`, so that older keys can then be dropped. Answers `{resealed,
/// unreadable}`: how many were sealed again, and the secrets no key of this server opens.
pub async fn reseal(
    State(state): State<AppState>,
) -> Result<Json<hopper_core::api::Resealed>, ApiError> {
    let done = state
        .keyring
        .reseal(&*state.store, state.now())
        .await
        .map_err(|e| match e {
            crate::secrets::ResealError::Store(e) => ApiError::from(e),
            crate::secrets::ResealError::Secret(e) => {
                ApiError::new(StatusCode::CONFLICT, "secrets_unavailable", e.to_string())
            }
        })?;
    tracing::info!(resealed = done.resealed, unreadable = ?done.unreadable, "secrets sealed again with the first key");
    Ok(Json(done))
}
