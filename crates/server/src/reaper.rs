//! The reaper takes back leases that ran out: a lost worker's inputs go back to the queue, an
//! attempt past its deadline fails as timed out; and it cancels open maps whose client went
//! away.

use std::time::Duration;

use hopper_store::{CallCancel, LeaseRescue, RescueReport, StoreError};
use tokio_util::sync::CancellationToken;

use crate::state::AppState;

/// Inputs rescued per transaction.
const BATCH: u32 = 1_000;

pub struct Reaper {
    state: AppState,
}

impl Reaper {
    pub fn new(state: AppState) -> Self {
        Self { state }
    }

    /// One pass: rescues every expired lease, in batches.
    /// A pause of this server or a step of its clock is accounted for first (see
    /// [`crate::timekeeper`]), so no lease is judged by time the workers could not use.
    pub async fn run_once(&self) -> Result<RescueReport, StoreError> {
        self.state.timekeeper.settle(&self.state).await?;
        let mut total = RescueReport::default();
        loop {
            let report = self
                .state
                .store
                .lease_rescue_expired(LeaseRescue {
                    now: self.state.now(),
                    limit: BATCH,
                })
                .await?;
            let done = report.requeued + report.timed_out < BATCH as u64;
            if report.requeued + report.timed_out > 0 {
                tracing::info!(
                    requeued = report.requeued,
                    timed_out = report.timed_out,
                    "rescued expired leases"
                );
                self.state.events.inputs_available();
            }
            if report.timed_out > 0 {
                self.state.events.results_recorded();
            }
            for (call, _) in &report.finished_calls {
                self.state.events.call_finished(call.clone());
            }
            total.requeued += report.requeued;
            total.timed_out += report.timed_out;
            total.finished_calls.extend(report.finished_calls);
            if done {
                self.cancel_abandoned_maps().await?;
                return Ok(total);
            }
        }
    }

    /// Cancels the open maps whose client has been silent for `map_idle_timeout`: a client
    /// that was killed, or stopped on an error, would otherwise leave its map open, and its
    /// queued inputs running for nobody, for good.
    async fn cancel_abandoned_maps(&self) -> Result<(), StoreError> {
        let idle = self.state.config.map_idle_timeout;
        if idle.is_zero() {
            return Ok(());
        }
        let before = self.state.now() - idle.as_millis() as i64;
        for id in self.state.store.call_list_abandoned(before, 100).await? {
            let Some(call) = self
                .state
                .store
                .call_cancel(CallCancel {
                    id: id.clone(),
                    now: self.state.now(),
                })
                .await?
            else {
                continue;
            };
            tracing::warn!(
                call = %id,
                function = %format!("{}.{}", call.app, call.function),
                idle_seconds = idle.as_secs(),
                "cancelled a map whose client sent nothing (no inputs, no close, no read) for --map-idle-timeout"
            );
            self.state.events.call_cancelled(id.clone());
            if call.state.is_terminal() {
                self.state.events.call_finished(id);
            }
        }
        Ok(())
    }

    /// Runs a pass every quarter lease until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        let every =
            (self.state.config.lease / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            if self.state.schema_ahead().is_some() {
                // Another server upgraded the schema: its reaper judges leases now.
            } else if let Err(e) = self.run_once().await {
                tracing::warn!(error = %e, "reaper pass failed; retrying");
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.cancelled() => return,
            }
        }
    }
}
