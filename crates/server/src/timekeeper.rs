//! The timekeeper notices time passing in ways the rest of the engine must not take at face
//! value, and settles the store before anything judges a lease by it:
//!
//! - **A pause** of the server's own process (`SIGSTOP`, a frozen VM, a live migration, a
//!   debugger, a long stall): the monotonic clock jumps across the timekeeper's loop. While
//!   the server was not running, workers kept heartbeating into it and their results waited
//!   in its socket, so every running lease and deadline is moved on by the gap, and every
//!   lease gets at least one lease period from now to reach the server.
//! - **A step** of the clock the server keeps (an NTP step, `date -s`): the wall clock moves
//!   apart from the monotonic one. Durations the store keeps as "now plus so long" (running
//!   leases, deadlines, retry backoffs) are moved by the step, so they stay as long as they
//!   were; schedules' next due times are recomputed from the new time (see
//!   [`crate::cron::Cron::after_step`]). A server that keeps the database's time re-reads its
//!   offset first: a step of its own machine's clock then changes nothing, and only a step of
//!   the database's clock (seen at the next clock sync) is moved for, by the server that leads
//!   the `timekeeper` role; the others judge no lease until it has recorded the move.
//!
//! The reaper calls [`Timekeeper::settle`] before each pass, so a pause is always accounted
//! for before a lease is judged by it, whichever loop wakes first after the process resumes.
//! Each pause and step is logged and counted in `/metrics` (`hopper_server_pauses_total`,
//! `hopper_server_paused_seconds_total`, `hopper_clock_steps_total`).

use std::time::{Duration, Instant};

use hopper_core::clock::OffsetClock;
use hopper_store::{LeaseExtend, StoreError, TimeShift};
use tokio_util::sync::CancellationToken;

use crate::state::AppState;

/// How often the timekeeper looks at the clocks.
pub const TICK: Duration = Duration::from_millis(100);
/// A gap of the monotonic clock past the tick longer than this is a pause.
pub const PAUSE_ABOVE: Duration = Duration::from_secs(1);
/// A jump of the wall clock apart from the monotonic one larger than this is a step (NTP
/// slews smaller differences away without stepping).
pub const STEP_ABOVE: Duration = Duration::from_secs(1);

/// The setting where the server that moved leases for a step of the database's clock records
/// it (`STEP_MS AT`), for the others.
const STEP_SETTING: &str = "timekeeper_step";
/// A recorded step older than this is another step's.
const STEP_RECORD_FRESH_MS: i64 = 120_000;

/// What the timekeeper last saw: the monotonic and the kept clock at the same moment.
#[derive(Debug, Clone, Copy)]
struct Mark {
    at: Instant,
    now: i64,
}

/// Shared by the timekeeper's loop and the reaper (see the module's documentation).
pub struct Timekeeper {
    mark: tokio::sync::Mutex<Option<Mark>>,
    /// The database-time offset to re-read after a step, on a server that keeps it.
    shared_clock: Option<OffsetClock>,
}

/// What one look at the clocks found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// How long the server did not run, in milliseconds (0: it ran).
    pub paused_ms: i64,
    /// How far the kept clock stepped, in milliseconds (0: it did not).
    pub step_ms: i64,
}

impl Timekeeper {
    /// `shared_clock`: the offset clock of a server that keeps the database's time.
    pub fn new(shared_clock: Option<OffsetClock>) -> Self {
        Self {
            mark: tokio::sync::Mutex::new(None),
            shared_clock,
        }
    }

    /// Looks at the clocks and, after a pause or a step, moves the store's leases, deadlines
    /// and due times before returning; callers that judge leases call it first.
    pub async fn settle(&self, state: &AppState) -> Result<Seen, StoreError> {
        let mut mark = self.mark.lock().await;
        let at = Instant::now();
        let now = state.now();
        let Some(last) = *mark else {
            *mark = Some(Mark { at, now });
            return Ok(Seen::default());
        };
        let ran = at.saturating_duration_since(last.at);
        let mut seen = Seen::default();
        if ran > TICK + PAUSE_ABOVE {
            seen.paused_ms = ran.saturating_sub(TICK).as_millis() as i64;
        }
        let mut step = (now - last.now) - ran.as_millis() as i64;
        let mut now = now;
        if step.unsigned_abs() > STEP_ABOVE.as_millis() as u64 {
            if let Some(clock) = &self.shared_clock {
                // This machine's clock, or the database's? Read the offset again: a step of
                // this machine's clock is taken back by it.
                let before = clock.offset_ms();
                match crate::clocksync::sync_once(&*state.store, clock).await {
                    Ok(()) => {
                        now = state.now();
                        step = (now - last.now) - ran.as_millis() as i64;
                        let own = before - clock.offset_ms();
                        if own.unsigned_abs() > STEP_ABOVE.as_millis() as u64 {
                            tracing::warn!(
                                step_ms = own,
                                "this machine's clock stepped; the server keeps the database's time"
                            );
                        }
                    }
                    Err(e) => {
                        // Keep the old offset: the kept clock then stepped with this machine's.
                        clock.set_offset_ms(before - step);
                        now = state.now();
                        step = 0;
                        tracing::warn!(error = %e, "this machine's clock stepped and the database's clock cannot be read; keeping the time from before the step");
                    }
                }
            }
            if step.unsigned_abs() > STEP_ABOVE.as_millis() as u64 {
                seen.step_ms = step;
            }
        }
        // The step first: a server waiting for another to move leases for it returns here,
        // and looks again from the same mark.
        if seen.step_ms != 0 {
            self.stepped(state, seen.step_ms, now).await?;
        }
        if seen.paused_ms > 0 {
            let moved = state
                .store
                .lease_extend_all(LeaseExtend {
                    gap_ms: seen.paused_ms,
                    until_at_least: now + state.config.lease_ms(),
                })
                .await?;
            tracing::warn!(
                paused = %hopper_core::duration::format(Duration::from_millis(seen.paused_ms as u64)),
                leases = moved,
                "this server did not run for a while (paused, frozen or stalled); running leases and deadlines are moved on by that time, so workers are not charged for it"
            );
            metrics::counter!("hopper_server_pauses_total").increment(1);
            metrics::counter!("hopper_server_paused_seconds_total")
                .increment((seen.paused_ms as u64).div_ceil(1000));
        }
        *mark = Some(Mark { at, now });
        Ok(seen)
    }

    /// Moves what a step of the kept clock by `step_ms` would shorten or lengthen.
    async fn stepped(&self, state: &AppState, step_ms: i64, now: i64) -> Result<(), StoreError> {
        // On a shared database every server sees the database's step (at its next clock sync):
        // one moves for all, and records it; the others judge no lease until it has.
        if self.shared_clock.is_some() && !state.lead("timekeeper").await? {
            let recorded = state.store.setting_get(STEP_SETTING).await?;
            let moved = recorded
                .as_deref()
                .and_then(|v| v.split_once(' '))
                .and_then(|(s, at)| Some((s.parse::<i64>().ok()?, at.parse::<i64>().ok()?)))
                .is_some_and(|(s, at)| {
                    (s - step_ms).abs() <= 2 * STEP_ABOVE.as_millis() as i64
                        && at >= now - STEP_RECORD_FRESH_MS
                });
            if moved {
                return Ok(());
            }
            return Err(StoreError::Unavailable(
                "the database's clock stepped: waiting for the server that leads the timekeeper to move leases for it".into(),
            ));
        }
        let moved = state
            .store
            .time_shift(TimeShift {
                step_ms,
                now,
                lease_ms: state.config.lease_ms(),
            })
            .await?;
        if self.shared_clock.is_some() {
            state
                .store
                .setting_put(STEP_SETTING, &format!("{step_ms} {now}"))
                .await?;
        }
        let schedules = crate::cron::Cron::new(state.clone())
            .after_step(step_ms, now)
            .await?;
        tracing::warn!(
            step_ms,
            inputs = moved,
            schedules,
            "the clock stepped {}; leases, deadlines and backoffs keep their length, schedules go on from the new time",
            if step_ms > 0 { "forward" } else { "backward" }
        );
        metrics::counter!(
            "hopper_clock_steps_total",
            "direction" => if step_ms > 0 { "forward" } else { "backward" }
        )
        .increment(1);
        state.events.inputs_available();
        Ok(())
    }

    /// Looks every [`TICK`] until `stop`.
    pub async fn run(state: AppState, stop: CancellationToken) {
        loop {
            if let Err(e) = state.timekeeper.settle(&state).await {
                tracing::warn!(error = %e, "cannot move leases after a pause or a clock step; trying again");
            }
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = stop.cancelled() => return,
            }
        }
    }
}
