//! `/v1/schedules`: list schedules, fire one now, pause and resume.

use axum::extract::State;
use axum::Json;
use hopper_core::api::{CallView, ScheduleView};
use hopper_store::{FireOutcome, SchedulePause, ScheduleRow};
use serde::Serialize;

use super::error::ApiError;
use super::extract::ApiPath;
use super::views;
use crate::cron::Cron;
use crate::state::AppState;

/// Finds the schedule a user means: `app.schedule`, or a bare name unique across apps.
async fn resolve(state: &AppState, name: &str) -> Result<ScheduleRow, ApiError> {
    let all = state.store.schedule_list().await?;
    let found: Vec<ScheduleRow> = match name.split_once('.') {
        Some((app, schedule)) => all
            .into_iter()
            .filter(|s| s.spec.app == app && s.spec.name == schedule)
            .collect(),
        None => all.into_iter().filter(|s| s.spec.name == name).collect(),
    };
    match found.len() {
        0 => Err(ApiError::not_found(
            "unknown_schedule",
            format!("no schedule named {name} is deployed"),
        )),
        1 => Ok(found
            .into_iter()
            .next()
            .ok_or_else(|| ApiError::not_found("unknown_schedule", name.to_string()))?),
        _ => {
            let names: Vec<String> = found.iter().map(|s| s.spec.qualified_name()).collect();
            Err(ApiError::bad_request(
                "ambiguous_schedule",
                format!(
                    "{name} is in several apps ({}); name it as app.schedule",
                    names.join(", ")
                ),
            ))
        }
    }
}

pub async fn list(State(state): State<AppState>) -> Result<Json<Vec<ScheduleView>>, ApiError> {
    let rows = state.store.schedule_list().await?;
    Ok(Json(rows.iter().map(|r| views::schedule(r, &[])).collect()))
}

pub async fn get(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<ScheduleView>, ApiError> {
    let row = resolve(&state, &name).await?;
    let firings = state
        .store
        .schedule_firings(&row.spec.app, &row.spec.name, 50)
        .await?;
    Ok(Json(views::schedule(&row, &firings)))
}

/// What "run now" did.
#[derive(Serialize)]
pub struct Triggered {
    /// `fired`, or `skipped` when the schedule skips overlaps and its last call still runs.
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub call: Option<CallView>,
}

pub async fn trigger(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Triggered>, ApiError> {
    let row = resolve(&state, &name).await?;
    let outcome = Cron::new(state.clone()).trigger(&row).await?;
    Ok(Json(match outcome {
        FireOutcome::Fired(call) => Triggered {
            outcome: "fired",
            call: Some(views::call(&call, None)),
        },
        FireOutcome::Skipped | FireOutcome::AlreadyFired => Triggered {
            outcome: "skipped",
            call: None,
        },
    }))
}

async fn set_paused(state: &AppState, name: &str, paused: bool) -> Result<ScheduleView, ApiError> {
    let row = resolve(state, name).await?;
    let now = state.now();
    let row = state
        .store
        .schedule_pause(SchedulePause {
            app: row.spec.app.clone(),
            name: row.spec.name.clone(),
            paused,
            next_due_at: row.spec.next_after(now, row.anchor_at),
            now,
        })
        .await?
        .ok_or_else(|| {
            ApiError::not_found("unknown_schedule", format!("no schedule named {name}"))
        })?;
    Ok(views::schedule(&row, &[]))
}

pub async fn pause(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<ScheduleView>, ApiError> {
    Ok(Json(set_paused(&state, &name, true).await?))
}

pub async fn resume(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<ScheduleView>, ApiError> {
    Ok(Json(set_paused(&state, &name, false).await?))
}
