//! The reaper takes back leases that ran out: a lost worker's inputs go back to the queue, an
//! attempt past its deadline fails as timed out.

use std::time::Duration;

use hopper_store::{LeaseRescue, RescueReport, StoreError};
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
                return Ok(total);
            }
        }
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
