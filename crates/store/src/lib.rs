//! The [`Store`] trait: the only door to Hopper's durable state.
//!
//! Every method is one atomic operation, named noun first (`call_insert`,
//! `input_lease_available`, `input_complete_many`, `lease_rescue_expired`), taking a params
//! struct and returning typed rows. State guards live behind this trait: a result is recorded
//! only while its lease is current, so a late result from a rescued lease can never become a
//! second result, whatever the caller does.
//!
//! # Layout
//! - [`params`]: what each method takes.
//! - [`rows`]: what each method returns.
//! - [`error`]: [`StoreError`], to which every backend maps its own errors.
//! - `conformance` (feature `conformance`): the test suite every backend runs.

pub mod error;
pub mod params;
pub mod rows;

#[cfg(feature = "conformance")]
pub mod conformance;

use async_trait::async_trait;
use hopper_core::api::Lease;
use hopper_core::CallId;

pub use error::{Missing, StoreError};
pub use params::*;
pub use rows::*;

/// Something another server sharing the store did, that waiters here may care about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wakeup {
    /// Inputs may be available to lease, of functions not said.
    Inputs,
    /// `count` new inputs of `function` are available to lease.
    InputsOf { function: FunctionKey, count: usize },
    /// Some inputs ended: result streams may have more.
    Results,
    /// A call ended.
    CallFinished(CallId),
    /// A call was cancelled (its running inputs should stop now).
    CallCancelled(CallId),
}

/// Durable state of apps, calls, inputs, attempts, logs and workers.
///
/// Times are passed in by the caller (from its [`hopper_core::clock::Clock`]), never read by
/// the store, so tests can drive time by hand.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores a new version of an app with its functions; the version is one more than the last.
    async fn app_deploy(&self, params: AppDeploy) -> Result<AppRow, StoreError>;

    /// Every app at its current version, by name.
    async fn app_list(&self) -> Result<Vec<AppRow>, StoreError>;

    /// Functions at their app's current version named `function`, in `app` if given.
    async fn function_find(&self, params: FunctionFind) -> Result<Vec<FunctionRow>, StoreError>;

    /// A function's versions, newest first, at most `limit`: one per deploy of its app.
    async fn function_versions(
        &self,
        function: &FunctionKey,
        limit: u32,
    ) -> Result<Vec<FunctionVersionRow>, StoreError>;

    /// Creates a call and its inputs, all pending, in one transaction. With an idempotency key
    /// that is already taken, returns the existing call and creates nothing.
    async fn call_insert(&self, params: CallInsert) -> Result<CallInserted, StoreError>;

    /// Creates many calls in one transaction: all of them, or none (an error, or a crash
    /// before the commit, leaves none). Each is created as by [`Store::call_insert`]: an
    /// idempotency key already taken — before, or by an earlier call of the same batch —
    /// answers the existing call (a conflicting one fails the whole batch). One outcome per
    /// call, in order.
    async fn call_insert_many(
        &self,
        params: Vec<CallInsert>,
    ) -> Result<Vec<CallInserted>, StoreError>;

    async fn call_get(&self, id: &CallId) -> Result<Option<CallRow>, StoreError>;

    /// Calls newest first, filtered, one page at a time.
    async fn call_list(&self, params: CallList) -> Result<Vec<CallRow>, StoreError>;

    /// Cancels every input of the call that has not ended. Returns the call after, or `None` if
    /// there is no such call. Cancelling an ended call changes nothing.
    async fn call_cancel(&self, params: CallCancel) -> Result<Option<CallRow>, StoreError>;

    /// Deletes calls that ended before `finished_before`, with their inputs, attempts and logs.
    async fn call_prune_finished(&self, params: CallPrune) -> Result<u64, StoreError>;

    /// Appends a chunk of inputs to a call that is accepting them. A chunk whose inputs are
    /// already there (a retried request) changes nothing; a gap or an overlap is a conflict.
    async fn input_append(&self, params: InputAppend) -> Result<CallRow, StoreError>;

    /// Results of a call's inputs after a cursor: by index (every input, ended or not, so the
    /// caller can stop at the first that has not ended) or in the order they ended.
    async fn input_results(&self, params: InputResults) -> Result<Vec<InputResultRow>, StoreError>;

    /// Pending and running inputs per function, over calls that have not ended; the pending
    /// inputs of delayed calls that start after `now` apart (`delayed`: queued, not work yet).
    async fn function_backlog(&self, now: i64) -> Result<Vec<FunctionBacklog>, StoreError>;

    /// Attempts ended per function and slot (recorded with every completion, rescue and
    /// timeout), oldest slot first; pruned with the calls.
    async fn function_stats(&self, params: StatsList) -> Result<Vec<FunctionStatsRow>, StoreError>;

    /// One input of a call.
    async fn input_get(&self, call_id: &CallId, index: i64)
        -> Result<Option<InputRow>, StoreError>;

    /// Failed inputs across calls, newest failure first (see [`FailedInputList`]).
    async fn input_failed_list(
        &self,
        params: FailedInputList,
    ) -> Result<Vec<FailedInputRow>, StoreError>;

    /// The calls that re-run inputs of `calls`, oldest first.
    async fn rerun_list(&self, calls: &[CallId]) -> Result<Vec<RerunRow>, StoreError>;

    /// The failed input of a call with the lowest index, if any failed.
    async fn input_first_failed(&self, call_id: &CallId) -> Result<Option<InputRow>, StoreError>;

    /// The first input (index 0) of each call given that has one, in any order.
    async fn input_first_many(&self, calls: &[CallId]) -> Result<Vec<InputRow>, StoreError>;

    /// Leases up to `max` pending inputs that are due, of the given functions: higher
    /// priority first, then oldest first. Within each function's current limits
    /// (`hopper_core::limits::Limits`): never more running at once than `max_running` (per key:
    /// `max_running_per_key`), never more started in any window of a rate's period than it
    /// allows; the keys of a function with keyed inputs or limits take turns (round robin).
    async fn input_lease_available(&self, params: InputLease) -> Result<LeaseBatch, StoreError>;

    /// What holds the due inputs of a function with limits back now: its limits at their
    /// bound, and its keys' (read only; nothing is locked).
    async fn limits_state(&self, params: LimitsRead) -> Result<LimitsState, StoreError>;

    /// The earliest `not_before` of a pending input of these functions, to sleep until.
    async fn input_next_due(&self, functions: &[FunctionKey]) -> Result<Option<i64>, StoreError>;

    /// Applies a batch of results. Each applies only while its lease is current; a result for
    /// a lost lease is kept as a late attempt. Returns one outcome per result, in order.
    async fn input_complete_many(
        &self,
        params: InputCompleteMany,
    ) -> Result<Vec<CompletionRow>, StoreError>;

    /// Extends the given leases; returns those the worker no longer holds.
    async fn lease_heartbeat(&self, params: LeaseHeartbeat) -> Result<Vec<Lease>, StoreError>;

    /// Takes back leases that ran out: the input goes back to pending (a lost worker), or fails
    /// with `timeout` once its attempt's deadline has passed too (a hung worker).
    async fn lease_rescue_expired(&self, params: LeaseRescue) -> Result<RescueReport, StoreError>;

    /// Moves every running lease and deadline on by a pause of the server (see
    /// [`LeaseExtend`]). Returns the leases moved.
    async fn lease_extend_all(&self, params: LeaseExtend) -> Result<u64, StoreError>;

    /// Moves every pending due time of a running lease, a deadline or a retry backoff by a
    /// step of the clock (see [`TimeShift`]). Returns the inputs moved.
    async fn time_shift(&self, params: TimeShift) -> Result<u64, StoreError>;

    /// Every attempt of a call, finished or running, by input then attempt.
    async fn attempt_list(&self, params: AttemptList) -> Result<Vec<AttemptRow>, StoreError>;

    /// Appends log lines, at most `max_lines_per_attempt` per attempt (then one marker line);
    /// lines for inputs that no longer exist are dropped.
    async fn log_append_many(&self, params: LogAppend) -> Result<(), StoreError>;

    /// A call's log lines after `after_seq`, in order.
    async fn log_list(&self, params: LogList) -> Result<Vec<LogRow>, StoreError>;

    async fn worker_register(&self, params: WorkerRegisterParams) -> Result<(), StoreError>;

    /// Marks a worker stopped and hands its leases back to the queue at once.
    async fn worker_deregister(&self, params: WorkerDeregister) -> Result<u64, StoreError>;

    /// Records that a worker was heard from. Returns false for an unknown or stopped worker.
    async fn worker_touch(&self, id: &hopper_core::WorkerId, now: i64) -> Result<bool, StoreError>;

    /// Every schedule, by app and name, with its last call's state.
    async fn schedule_list(&self) -> Result<Vec<ScheduleRow>, StoreError>;

    /// Schedules not paused whose next due time is at or before `now`.
    async fn schedule_due(&self, now: i64) -> Result<Vec<ScheduleRow>, StoreError>;

    /// Fires a due time once; see [`ScheduleFire`].
    async fn schedule_fire(&self, params: ScheduleFire) -> Result<FireOutcome, StoreError>;

    /// Pauses or resumes a schedule; `None` if there is no such schedule.
    /// Sets a schedule's next due time if it is still the expected one; whether it was set.
    async fn schedule_reschedule(&self, params: ScheduleReschedule) -> Result<bool, StoreError>;

    async fn schedule_pause(
        &self,
        params: SchedulePause,
    ) -> Result<Option<ScheduleRow>, StoreError>;

    /// A schedule's most recent recorded due times, newest first.
    async fn schedule_firings(
        &self,
        app: &str,
        name: &str,
        limit: u32,
    ) -> Result<Vec<FiringRow>, StoreError>;

    /// Calls that ended after a position, oldest first (the notifier's feed).
    async fn call_list_finished(&self, params: CallsFinished) -> Result<Vec<CallRow>, StoreError>;

    /// Notes that the clients of these calls, where they are open maps, were heard from at
    /// `now` (see [`Store::call_list_abandoned`]).
    async fn call_touch(
        &self,
        ids: Vec<CallId>,
        now: hopper_core::UnixMillis,
    ) -> Result<(), StoreError>;

    /// Open maps (still accepting inputs) whose client was last heard from before `before`
    /// (by a chunk of inputs or a [`Store::call_touch`]; else by their creation), at most
    /// `limit`.
    async fn call_list_abandoned(
        &self,
        before: hopper_core::UnixMillis,
        limit: u32,
    ) -> Result<Vec<CallId>, StoreError>;

    /// A durable setting, e.g. a component's cursor.
    async fn setting_get(&self, key: &str) -> Result<Option<String>, StoreError>;

    async fn setting_put(&self, key: &str, value: &str) -> Result<(), StoreError>;

    /// The newest migration applied to the database and the newest this build knows, read
    /// from the database each time (another server may have migrated it since start).
    async fn schema_version(&self) -> Result<SchemaVersion, StoreError>;

    /// Wake-ups from other servers sharing this store (PostgreSQL's `LISTEN/NOTIFY`), so an
    /// idle queue costs no polling and new inputs start at once on any server. Default none:
    /// a store only one server uses (SQLite) has nothing to say.
    fn wakeups(&self) -> Option<tokio::sync::broadcast::Receiver<Wakeup>> {
        None
    }

    /// The connections to the database this process holds, `(open, idle)`, where the store
    /// keeps a pool of them (PostgreSQL); `None` otherwise.
    fn connections(&self) -> Option<(u32, u32)> {
        None
    }

    /// Whether this process holds (or has just taken) the lead for `role`, for work that one
    /// server of a cluster must do alone (e.g. sending notifications). The lead is kept until
    /// the process dies. Default: always, for a store only one server uses.
    async fn leader_try(&self, role: &str) -> Result<bool, StoreError> {
        let _ = role;
        Ok(true)
    }

    /// The database's own clock, now, in milliseconds since the epoch; `None` for a store only
    /// one server uses (its clock is the server's). Servers sharing a database measure their
    /// offset from it, so every lease expiry, deadline and due time they write and judge is on
    /// this one clock, whatever their own clocks say.
    async fn database_now(&self) -> Result<Option<hopper_core::UnixMillis>, StoreError> {
        Ok(None)
    }

    /// Creates a named secret, or replaces every value of an existing one (its creation time
    /// is kept).
    async fn secret_put(&self, params: SecretPutParams) -> Result<SecretRow, StoreError>;

    /// Every secret, by name.
    async fn secret_list(&self) -> Result<Vec<SecretRow>, StoreError>;

    /// The secrets of these names that exist, by name.
    async fn secret_get_many(&self, names: &[String]) -> Result<Vec<SecretRow>, StoreError>;

    /// Deletes a secret; false if there was none of that name.
    async fn secret_delete(&self, name: &str) -> Result<bool, StoreError>;

    /// Stores a code snapshot; true if it was new (the same hash stored twice is one snapshot).
    async fn snapshot_put(&self, params: SnapshotPut) -> Result<bool, StoreError>;

    /// A snapshot's size and contents, without its bytes; `None` if it is not stored.
    async fn snapshot_info(&self, hash: &str) -> Result<Option<SnapshotRow>, StoreError>;

    /// A snapshot's bytes (the gzip-compressed tar); `None` if it is not stored.
    async fn snapshot_get(&self, hash: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Deletes the snapshots no version still needs (see [`SnapshotPrune`]); how many.
    async fn snapshot_prune(&self, params: SnapshotPrune) -> Result<u64, StoreError>;

    /// Workers not stopped, and those stopped or last seen after `seen_after`.
    async fn worker_list(&self, seen_after: i64) -> Result<Vec<WorkerRow>, StoreError>;

    /// Writes one chunk of a blob's upload (see [`BlobChunk`]); nothing refers to it yet.
    async fn blob_chunk_put(&self, params: BlobChunk) -> Result<(), StoreError>;

    /// Drops the chunks of an upload that will not be finished (refused, broken off).
    async fn blob_discard(&self, upload: &str) -> Result<(), StoreError>;

    /// Ends an upload (see [`BlobFinish`]); true if the blob is new. An upload of bytes
    /// stored already takes the stored copy's place (the old chunks are dropped, the old
    /// object left to the pruner) and starts the blob's grace again.
    async fn blob_finish(&self, params: BlobFinish) -> Result<bool, StoreError>;

    /// A blob's size and chunk count; `None` if it is not stored.
    async fn blob_info(&self, digest: &str) -> Result<Option<BlobRow>, StoreError>;

    /// Chunk `seq` of a blob; `None` if the blob or the chunk is not stored.
    async fn blob_chunk(&self, digest: &str, seq: i64) -> Result<Option<Vec<u8>>, StoreError>;

    /// Records that `call_id` refers to these blobs, so they are kept as long as it is.
    async fn blob_claim(
        &self,
        call_id: &CallId,
        digests: Vec<String>,
        now: i64,
    ) -> Result<(), StoreError>;

    /// Records, before its first byte is written, the object an upload writes (see
    /// [`BlobFinish::location`]): until the upload finishes, it is nobody's blob.
    async fn blob_object_begin(
        &self,
        location: &str,
        now: hopper_core::UnixMillis,
    ) -> Result<(), StoreError>;

    /// Up to `limit` objects that are nobody's blob since before `before`: uploads refused or
    /// cut short, copies replaced, blobs pruned. The pruner deletes each, then forgets it
    /// ([`Store::blob_object_gone`]); an object this database did not record is never one.
    async fn blob_objects_due(
        &self,
        before: hopper_core::UnixMillis,
        limit: u32,
    ) -> Result<Vec<String>, StoreError>;

    /// Forgets an object deleted (or never written).
    async fn blob_object_gone(&self, location: &str) -> Result<(), StoreError>;

    /// Deletes what [`BlobPrune`] says; how many blobs.
    async fn blob_prune(&self, params: BlobPrune) -> Result<u64, StoreError>;
}

/// Function versions' specs a store has read. A version's spec never changes once deployed
/// (versions are only added), so a store keeps them for its life — up to [`Self::MAX`]
/// versions, then starts over — and a lease does not read its function's spec each time.
#[derive(Debug, Default)]
pub struct VersionSpecs(
    std::sync::Mutex<std::collections::HashMap<(String, String, i64), hopper_core::FunctionSpec>>,
    /// Functions seen with keyed or prioritized inputs: their leases take keys in turn and
    /// walk priorities (a function never seen so leases by the plain walk, which finds such an
    /// input and adds it here).
    std::sync::Mutex<std::collections::HashSet<FunctionKey>>,
);

impl VersionSpecs {
    /// Versions kept at most.
    pub const MAX: usize = 10_000;

    /// The spec of `app.function` at `version`, if read before.
    pub fn get(
        &self,
        app: &str,
        function: &str,
        version: i64,
    ) -> Option<hopper_core::FunctionSpec> {
        let kept = self.0.lock().ok()?;
        kept.get(&(app.to_string(), function.to_string(), version))
            .cloned()
    }

    /// Whether `function` has been seen with keyed or prioritized inputs.
    pub fn ranked(&self, function: &FunctionKey) -> bool {
        self.1.lock().is_ok_and(|kept| kept.contains(function))
    }

    /// Remembers that `function` has keyed or prioritized inputs.
    pub fn mark_ranked(&self, function: &FunctionKey) {
        if let Ok(mut kept) = self.1.lock() {
            kept.insert(function.clone());
        }
    }

    /// Keeps a spec read from the store.
    pub fn keep(&self, app: &str, function: &str, version: i64, spec: &hopper_core::FunctionSpec) {
        if let Ok(mut kept) = self.0.lock() {
            if kept.len() >= Self::MAX {
                kept.clear();
            }
            kept.insert(
                (app.to_string(), function.to_string(), version),
                spec.clone(),
            );
        }
    }
}

/// The current versions of functions a store has found, by the name asked for, kept until
/// the next deploy through the same store: a spawn then costs no read to find its function.
/// A store no other process deploys to (SQLite, one server per file) keeps them until then;
/// a shared database's store keeps each at most a short while (another server's deploy
/// clears it when its wake-up arrives, and the age bound when that wake-up is lost).
#[derive(Debug, Default)]
pub struct FunctionCache {
    enabled: bool,
    /// How long a lookup is kept, at most; `None`: until the next deploy.
    max_age: Option<std::time::Duration>,
    found: std::sync::Mutex<FoundFunctions>,
}

#[derive(Debug, Default)]
struct FoundFunctions {
    /// Deploys so far: a read begun before a deploy is not kept after it.
    generation: u64,
    rows:
        std::collections::HashMap<(Option<String>, String), (std::time::Instant, Vec<FunctionRow>)>,
}

impl FunctionCache {
    /// A cache for a store only this process deploys to.
    pub fn enabled() -> Self {
        Self {
            enabled: true,
            ..Self::default()
        }
    }

    /// A cache for a store other processes deploy to: each lookup is kept at most `max_age`.
    pub fn shared(max_age: std::time::Duration) -> Self {
        Self {
            enabled: true,
            max_age: Some(max_age),
            ..Self::default()
        }
    }

    /// No cache: every lookup reads.
    pub fn disabled() -> Self {
        Self::default()
    }

    /// What was found for `params`, if kept; else the generation to pass to [`Self::keep`].
    pub fn get(&self, params: &FunctionFind) -> Result<Vec<FunctionRow>, u64> {
        let Ok(found) = self.found.lock() else {
            return Err(u64::MAX);
        };
        match found
            .rows
            .get(&(params.app.clone(), params.function.clone()))
        {
            Some((at, rows))
                if self.enabled && self.max_age.is_none_or(|age| at.elapsed() < age) =>
            {
                Ok(rows.clone())
            }
            _ => Err(found.generation),
        }
    }

    /// Keeps what a read begun at `generation` found, unless a deploy came since.
    pub fn keep(&self, generation: u64, params: &FunctionFind, rows: &[FunctionRow]) {
        if !self.enabled {
            return;
        }
        if let Ok(mut found) = self.found.lock() {
            if found.generation == generation {
                found.rows.insert(
                    (params.app.clone(), params.function.clone()),
                    (std::time::Instant::now(), rows.to_vec()),
                );
            }
        }
    }

    /// Forgets everything: an app was deployed (call after its commit).
    pub fn clear(&self) {
        if let Ok(mut found) = self.found.lock() {
            found.generation = found.generation.wrapping_add(1);
            found.rows.clear();
        }
    }
}

/// An input whose lease is lost this many times (its worker died or was stopped each time)
/// fails with `lease_lost` instead of going back to the queue: it is probably what kills its
/// workers. Lost leases do not count against `max_retries`.
pub const MAX_LOST_LEASES: i64 = 10;
