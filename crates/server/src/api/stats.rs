//! `GET /v1/stats`: what the overview and function pages chart — attempts ended over time,
//! each function's backlog, success rate and duration percentiles, and the live worker count.
//!
//! It reads the store's per-slot tallies (`function_stats`) and the open calls' counters, never
//! the inputs, so it answers in the same time with a thousand calls or a hundred million.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::Json;
use hopper_core::api::{FunctionStatsView, StatsPoint, StatsView};
use hopper_core::stats::{slot_of, Tally, SLOT_MS};
use hopper_store::StatsList;
use serde::Deserialize;

use super::error::ApiError;
use super::extract::ApiQuery;
use crate::state::AppState;

/// The longest window asked for.
const MAX_WINDOW_MS: i64 = 7 * 24 * 3_600_000;
/// A timeline has at most about this many points; longer windows use wider steps.
const MAX_POINTS: i64 = 180;

#[derive(Deserialize)]
pub struct StatsQuery {
    /// How far back, as a duration (`15m`, `24h`); default 15 minutes.
    window: Option<String>,
    /// One function (`app.function` or a bare name unique across apps).
    function: Option<String>,
}

pub async fn stats(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<StatsQuery>,
) -> Result<Json<StatsView>, ApiError> {
    let window_ms = match q.window.as_deref() {
        None => 15 * 60_000,
        Some(text) => hopper_core::duration::parse(text)
            .map(|d| d.as_millis() as i64)
            .map_err(|e| ApiError::bad_request("invalid_query", format!("window: {e}")))?,
    };
    if !(SLOT_MS..=MAX_WINDOW_MS).contains(&window_ms) {
        return Err(ApiError::bad_request(
            "invalid_query",
            "window must be between 10s and 7d",
        ));
    }
    let only = match &q.function {
        Some(text) => {
            let row = super::apps::resolve(&state, text).await?;
            Some((row.spec.app.clone(), row.spec.name.clone()))
        }
        None => None,
    };
    let now = state.now();
    // Steps are whole slots, and the last step ends with the current slot.
    let slots = (window_ms / SLOT_MS).max(1);
    let step_slots = (slots + MAX_POINTS - 1) / MAX_POINTS;
    let step_ms = step_slots * SLOT_MS;
    let points = (slots + step_slots - 1) / step_slots;
    let first = slot_of(now) - (points - 1) * step_ms;
    let rows = state
        .store
        .function_stats(StatsList {
            since: first,
            app: only.as_ref().map(|(a, _)| a.clone()),
            function: only.as_ref().map(|(_, f)| f.clone()),
        })
        .await?;
    let mut timeline: Vec<StatsPoint> = (0..points)
        .map(|i| StatsPoint {
            at: first + i * step_ms,
            succeeded: 0,
            failed: 0,
            retried: 0,
        })
        .collect();
    let mut per_function: BTreeMap<String, (Tally, i64, i64)> = BTreeMap::new();
    for row in &rows {
        let step = ((row.slot - first) / step_ms).clamp(0, points - 1) as usize;
        if let Some(point) = timeline.get_mut(step) {
            point.succeeded += row.tally.succeeded;
            point.failed += row.tally.failed;
            point.retried += row.tally.retried;
        }
        per_function
            .entry(format!("{}.{}", row.app, row.function))
            .or_default()
            .0
            .merge(&row.tally);
    }
    for backlog in state.store.function_backlog(state.now()).await? {
        if only
            .as_ref()
            .is_some_and(|(a, f)| *a != backlog.app || *f != backlog.function)
        {
            continue;
        }
        let entry = per_function
            .entry(format!("{}.{}", backlog.app, backlog.function))
            .or_default();
        entry.1 += backlog.pending;
        entry.2 += backlog.running;
    }
    // Every deployed function shows, idle or not.
    for app in state.store.app_list().await? {
        for f in &app.functions {
            let matches = only
                .as_ref()
                .is_none_or(|(a, n)| *a == f.spec.app && *n == f.spec.name);
            if matches {
                per_function.entry(f.spec.qualified_name()).or_default();
            }
        }
    }
    let functions = per_function
        .into_iter()
        .map(|(function, (tally, pending, running))| {
            let decided = tally.succeeded + tally.failed;
            FunctionStatsView {
                function,
                pending,
                running,
                succeeded: tally.succeeded,
                failed: tally.failed,
                retried: tally.retried,
                success_rate: (decided > 0).then(|| tally.succeeded as f64 / decided as f64),
                p50_ms: tally.percentile_ms(0.50),
                p95_ms: tally.percentile_ms(0.95),
                p99_ms: tally.percentile_ms(0.99),
            }
        })
        .collect();
    let lease_ms = state.config.lease_ms();
    let workers = state
        .store
        .worker_list(now - lease_ms)
        .await?
        .iter()
        .filter(|w| super::views::worker(w, now, lease_ms).state == "active")
        .count();
    Ok(Json(StatsView {
        window_ms,
        step_ms,
        timeline,
        functions,
        workers,
    }))
}
