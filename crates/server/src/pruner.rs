//! The pruner deletes calls (with their inputs, attempts and logs) that ended longer ago than
//! the retention period, code snapshots no version still needs, and blobs no call refers to
//! (kept an hour after their upload, or the retention period if shorter, for the spawn or
//! result that will refer to them).

use std::time::Duration;

use hopper_store::{BlobPrune, CallPrune, SnapshotPrune, StoreError};
use tokio_util::sync::CancellationToken;

use crate::state::AppState;

/// Calls deleted per transaction, so pruning never holds the writer for long.
const BATCH: u32 = 500;
/// The snapshots of each app's last versions are kept, for a rollback by redeploying.
const KEEP_VERSIONS: u32 = 10;
/// A snapshot no version names yet is kept this long: its deploy may be on its way.
const UPLOAD_GRACE_MS: i64 = 3_600_000;
/// The least age of an object no blob needs before it is deleted (with a short `--retention`):
/// an upload under way is one until its blob's row is written.
const OBJECT_GRACE_MS: i64 = 5_000;

pub struct Pruner {
    state: AppState,
}

impl Pruner {
    pub fn new(state: AppState) -> Self {
        Self { state }
    }

    /// One pass: deletes every call past retention, in batches. Returns how many.
    pub async fn run_once(&self) -> Result<u64, StoreError> {
        let retention = self.state.config.retention.as_millis() as i64;
        let mut total = 0;
        loop {
            let n = self
                .state
                .store
                .call_prune_finished(CallPrune {
                    finished_before: self.state.now() - retention,
                    limit: BATCH,
                })
                .await?;
            total += n;
            if n < BATCH as u64 {
                if total > 0 {
                    tracing::info!(calls = total, "pruned ended calls past retention");
                }
                break;
            }
        }
        let snapshots = self
            .state
            .store
            .snapshot_prune(SnapshotPrune {
                keep_versions: KEEP_VERSIONS,
                created_before: self.state.now() - UPLOAD_GRACE_MS,
            })
            .await?;
        if snapshots > 0 {
            tracing::info!(
                snapshots,
                "pruned code snapshots no version needs (kept: each app's last {KEEP_VERSIONS} versions', and those of versions with calls running)"
            );
        }
        // A blob's upload comes before the spawn or result that refers to it: one nothing
        // refers to is kept an hour (or the retention period, if shorter) for it.
        let grace = UPLOAD_GRACE_MS.min(retention);
        let blobs = self
            .state
            .store
            .blob_prune(BlobPrune {
                created_before: self.state.now() - grace,
            })
            .await?;
        if blobs > 0 {
            tracing::info!(blobs, "pruned blobs no call refers to");
        }
        if let Some(objects) = &self.state.config.blobs {
            // The objects the database lists as nobody's: the blobs just pruned, copies
            // replaced, uploads refused, broken off or cut by a crash (recorded at their start,
            // so one under way is left until it is past the grace, at least 5 s).
            let before = self.state.now() - grace.max(OBJECT_GRACE_MS);
            match objects.sweep(&*self.state.store, before).await {
                Ok(0) => {}
                Ok(deleted) => {
                    tracing::info!(objects = deleted, store = %objects.describe(), "deleted blob objects no blob needs")
                }
                Err(crate::objects::SweepError::Store(e)) => return Err(e),
                Err(crate::objects::SweepError::Bucket(why)) => {
                    tracing::warn!(error = %why, "cannot sweep the blob bucket; the next pass tries again")
                }
            }
        }
        Ok(total)
    }

    /// Runs a pass every tenth of the retention period (between 1 s and 10 min) until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        let every = (self.state.config.retention / 10)
            .clamp(Duration::from_secs(1), Duration::from_secs(600));
        loop {
            if self.state.schema_ahead().is_some() {
                // The schema moved past this server: an upgraded one does this now.
            } else if let Err(e) = self.run_once().await {
                tracing::warn!(error = %e, "pruner pass failed; retrying");
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.cancelled() => return,
            }
        }
    }
}
