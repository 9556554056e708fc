//! The clock sync: servers sharing a database keep the database's time. At start and every
//! [`EVERY`] the server measures how far the database's clock is ahead of its own (over the
//! quickest of a few round trips) and corrects its clock by that much, so a server whose clock
//! runs ahead can neither shorten another's lease nor fire a schedule early. The offset is
//! logged, served as `hopper_clock_offset_seconds`, and warned about above [`WARN_ABOVE`].

use std::sync::Arc;
use std::time::Duration;

use hopper_core::clock::{Clock, OffsetClock, SystemClock};
use hopper_store::{Store, StoreError};
use tokio_util::sync::CancellationToken;

/// How often the offset is measured again.
pub const EVERY: Duration = Duration::from_secs(30);
/// An offset above this is worth a warning: the machine's clock is not kept in time.
pub const WARN_ABOVE: Duration = Duration::from_secs(1);
/// Round trips per measure; the quickest one counts.
const SAMPLES: usize = 3;

/// Measures the database clock's lead over this machine's, in milliseconds; `None` when the
/// store has no clock of its own (SQLite).
pub async fn measure(store: &dyn Store) -> Result<Option<i64>, StoreError> {
    let mut best: Option<(i64, i64)> = None; // (round trip, offset)
    for _ in 0..SAMPLES {
        let before = SystemClock.now();
        let Some(db) = store.database_now().await? else {
            return Ok(None);
        };
        let after = SystemClock.now();
        let rtt = after - before;
        let offset = db - (before + after) / 2;
        if best.is_none_or(|(r, _)| rtt < r) {
            best = Some((rtt, offset));
        }
    }
    Ok(best.map(|(_, offset)| offset))
}

/// Sets `clock` to the database's time now, and records and reports the offset.
pub async fn sync_once(store: &dyn Store, clock: &OffsetClock) -> Result<(), StoreError> {
    let Some(offset) = measure(store).await? else {
        return Ok(());
    };
    let before = clock.offset_ms();
    clock.set_offset_ms(offset);
    metrics::gauge!("hopper_clock_offset_seconds").set(offset as f64 / 1000.0);
    let far = |o: i64| o.unsigned_abs() > WARN_ABOVE.as_millis() as u64;
    // Warned when the offset first goes past the threshold, or moves a lot: not every 30 s.
    if far(offset) && (!far(before) || (offset - before).abs() > 1_000) {
        tracing::warn!(
            offset_ms = offset,
            "this machine's clock is off the database's by more than {}; Hopper keeps the database's time, but fix the machine's clock (NTP)",
            hopper_core::duration::format(WARN_ABOVE)
        );
    } else if (offset - before).abs() > 100 {
        tracing::info!(offset_ms = offset, "clock offset from the database");
    }
    Ok(())
}

/// Keeps `clock` on the database's time until `stop`.
pub async fn run(store: Arc<dyn Store>, clock: OffsetClock, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = stop.cancelled() => return,
        }
        if let Err(e) = sync_once(&*store, &clock).await {
            tracing::warn!(error = %e, "cannot read the database's clock; keeping the last offset");
        }
    }
}
