//! The cron component fires due schedules: each due time once (the store guards it, so a
//! restart or a second server cannot fire it again), the most recent one after downtime with
//! the ones before it recorded as missed, never back-filled.

use std::time::Duration;

use hopper_core::api::Origin;
use hopper_core::CallId;
use hopper_store::{CallInsert, FireOutcome, FunctionFind, ScheduleFire, ScheduleRow, StoreError};
use tokio_util::sync::CancellationToken;

use crate::state::AppState;

/// Missed due times recorded per firing, at most (the most recent ones).
const MAX_MISSED: usize = 100;
/// Due times looked at per firing, at most: a schedule far behind moves on from now.
const MAX_SCAN: usize = 100_000;

pub struct Cron {
    state: AppState,
}

impl Cron {
    pub fn new(state: AppState) -> Self {
        Self { state }
    }

    /// Fires every schedule that is due now. Returns what each firing did.
    pub async fn run_once(&self) -> Result<Vec<(String, FireOutcome)>, StoreError> {
        let now = self.state.now();
        let mut out = Vec::new();
        for row in self.state.store.schedule_due(now).await? {
            let name = row.spec.qualified_name();
            match self.fire_due(&row, now).await {
                Ok(Some(outcome)) => out.push((name, outcome)),
                Ok(None) => {}
                Err(e) => tracing::warn!(schedule = %name, error = %e, "cannot fire schedule"),
            }
        }
        Ok(out)
    }

    async fn fire_due(
        &self,
        row: &ScheduleRow,
        now: i64,
    ) -> Result<Option<FireOutcome>, StoreError> {
        let Some(expected) = row.next_due_at else {
            return Ok(None);
        };
        let mut dues = vec![expected];
        let mut t = expected;
        while dues.len() < MAX_SCAN {
            match row.spec.next_after(t, row.anchor_at) {
                Some(n) if n <= now => {
                    dues.push(n);
                    t = n;
                }
                _ => break,
            }
        }
        let fire_at = dues.pop().unwrap_or(expected);
        let missed: Vec<i64> = dues.iter().rev().take(MAX_MISSED).copied().collect();
        if !missed.is_empty() {
            tracing::warn!(schedule = %row.spec.qualified_name(), missed = dues.len(), "due times passed while the server was down (or its clock stepped forward); firing the most recent");
            self.state
                .events
                .schedule_missed(row.spec.qualified_name(), dues.len());
        }
        let next = row.spec.next_after(now.max(fire_at), row.anchor_at);
        let outcome = self
            .fire(row, expected, fire_at, missed, next, false)
            .await?;
        Ok(Some(outcome))
    }

    /// Fires a schedule now, whatever its due time ("run now").
    pub async fn trigger(&self, row: &ScheduleRow) -> Result<FireOutcome, StoreError> {
        let now = self.state.now();
        self.fire(row, now, now, Vec::new(), row.next_due_at, true)
            .await
    }

    async fn fire(
        &self,
        row: &ScheduleRow,
        expected: i64,
        due_at: i64,
        missed: Vec<i64>,
        next_due_at: Option<i64>,
        manual: bool,
    ) -> Result<FireOutcome, StoreError> {
        let spec = &row.spec;
        let function = self
            .state
            .store
            .function_find(FunctionFind {
                app: Some(spec.app.clone()),
                function: spec.function.clone(),
            })
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| {
                StoreError::not_found(
                    hopper_store::Missing::Function,
                    format!(
                        "schedule {} names a function that is not deployed",
                        spec.qualified_name()
                    ),
                )
            })?;
        let now = self.state.now();
        let outcome = self
            .state
            .store
            .schedule_fire(ScheduleFire {
                app: spec.app.clone(),
                name: spec.name.clone(),
                expected_due_at: expected,
                due_at,
                missed,
                next_due_at,
                call: CallInsert {
                    id: CallId::generate(),
                    app: spec.app.clone(),
                    function: spec.function.clone(),
                    version: function.version,
                    origin: Origin::Schedule,
                    idempotency_key: None,
                    inputs: vec![spec.input.to_string()],
                    accepting_inputs: false,
                    discard_results: false,
                    schedule: Some((spec.qualified_name(), due_at)),
                    rerun_of: None,
                    starts_at: None,
                    priority: function.spec.priority,
                    key: None,
                    input_keys: crate::api::calls::input_keys(
                        &function.spec,
                        &[spec.input.to_string()],
                    ),
                    now,
                },
                manual,
                now,
            })
            .await?;
        match &outcome {
            FireOutcome::Fired(call) => {
                tracing::info!(schedule = %spec.qualified_name(), call = %call.id, "schedule fired");
                crate::metrics::firing(
                    spec.qualified_name(),
                    if manual { "triggered" } else { "fired" },
                    1,
                );
                crate::metrics::call_started(format!("{}.{}", call.app, call.function), "schedule");
                self.state.events.inputs_available();
            }
            FireOutcome::Skipped => {
                crate::metrics::firing(spec.qualified_name(), "skipped", 1);
                tracing::info!(schedule = %spec.qualified_name(), "skipped a firing: the previous call is still running")
            }
            FireOutcome::AlreadyFired => {}
        }
        Ok(outcome)
    }

    /// Moves every schedule's next due time after the clock stepped by `step_ms` (see
    /// [`crate::timekeeper`]); `now` is on the new clock. A forward step needs nothing: the
    /// due times it jumped over are missed, and the most recent fires once, as after downtime.
    /// After a backward step, an `every` schedule keeps its rhythm (its next due time and the
    /// point its period counts from move with the clock); a cron schedule that falls due at
    /// least twice within the span the clock went back over goes on from the new time (its
    /// due times come again by the clock on the wall). Either way the firings of due times
    /// after the new time leave the schedule's history, so those due times fire again. A cron
    /// schedule due at most once in that span keeps its next due time, so a daily job never
    /// runs twice for one day. Returns the schedules moved.
    pub async fn after_step(&self, step_ms: i64, now: i64) -> Result<u64, StoreError> {
        if step_ms >= 0 {
            return Ok(0);
        }
        let before = now - step_ms;
        let mut moved = 0;
        for row in self.state.store.schedule_list().await? {
            let Some(next) = row.next_due_at else {
                continue;
            };
            let (next_due_at, anchor_at) = match row.spec.when {
                hopper_core::schedule::When::EveryMs(_) => {
                    (Some(next + step_ms), Some(row.anchor_at + step_ms))
                }
                hopper_core::schedule::When::Cron(_) => {
                    let first = row.spec.next_after(now, row.anchor_at);
                    let second = first.and_then(|f| row.spec.next_after(f, row.anchor_at));
                    if second.is_some_and(|s| s <= before) {
                        (first, None)
                    } else {
                        continue;
                    }
                }
            };
            let set = self
                .state
                .store
                .schedule_reschedule(hopper_store::ScheduleReschedule {
                    app: row.spec.app.clone(),
                    name: row.spec.name.clone(),
                    expected_due_at: Some(next),
                    next_due_at,
                    anchor_at,
                    forget_firings_after: Some(now),
                    now,
                })
                .await?;
            moved += u64::from(set);
        }
        Ok(moved)
    }

    /// Fires due schedules twice a second (and at once after a deploy) until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        let mut deploys = self.state.events.watch_deploys();
        loop {
            deploys.borrow_and_update();
            if self.state.schema_ahead().is_some() {
                // The schema moved past this server: an upgraded one does this now.
            } else if let Err(e) = self.run_once().await {
                tracing::warn!(error = %e, "cron pass failed; retrying");
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = deploys.changed() => {}
                _ = stop.cancelled() => return,
            }
        }
    }
}
