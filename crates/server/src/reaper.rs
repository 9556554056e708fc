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
    /// When the reaper last looked at every lease.
    judged_at: std::sync::Mutex<std::time::Instant>,
}

impl Reaper {
    pub fn new(state: AppState) -> Self {
        Self {
            state,
            judged_at: std::sync::Mutex::new(std::time::Instant::now()),
        }
    }

    /// One pass: rescues every expired lease, in batches.
    /// A pause of this server or a step of its clock is accounted for first (see
    /// [`crate::timekeeper`]), so no lease is judged by time the workers could not use.
    pub async fn run_once(&self) -> Result<RescueReport, StoreError> {
        self.state.timekeeper.settle(&self.state).await?;
        // First a read that waits for the database if it is away, so that the time it was
        // away is seen here, before any lease is judged. Not able to look for a while (the
        // database away, or answering slowly): workers could not renew their leases either,
        // so they get a lease period first.
        self.state.store.schema_version().await?;
        let unjudged = self
            .judged_at
            .lock()
            .map(|t| t.elapsed())
            .unwrap_or_default();
        if unjudged > (self.state.config.lease / 2).max(Duration::from_secs(2)) {
            self.after_outage(unjudged).await?;
        }
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
                if let Ok(mut at) = self.judged_at.lock() {
                    *at = std::time::Instant::now();
                }
                return Ok(total);
            }
        }
    }

    /// After the reaper could not look for `away` (the database was away or slow): workers
    /// could renew no lease meanwhile, however hard they tried, so every running lease first
    /// gets a lease period from now, before any is judged; a database restart or failover
    /// longer than a lease then costs no healthy input its run. Idempotent across servers.
    async fn after_outage(&self, away: Duration) -> Result<(), StoreError> {
        let moved = self
            .state
            .store
            .lease_extend_all(hopper_store::LeaseExtend {
                gap_ms: 0,
                until_at_least: self.state.now() + self.state.config.lease_ms(),
            })
            .await?;
        if moved > 0 {
            tracing::warn!(
                away_seconds = away.as_secs(),
                leases = moved,
                "the database is back: running leases get a lease period from now, since their workers could not renew them"
            );
        }
        Ok(())
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
            } else {
                match self.run_once().await {
                    Ok(_) => {
                        if let Err(e) = self.cancel_abandoned_maps().await {
                            tracing::warn!(error = %e, "cannot cancel abandoned maps; retrying");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "reaper pass failed; retrying"),
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.cancelled() => return,
            }
        }
    }
}
