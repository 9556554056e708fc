//! Rows returned by the [`crate::Store`] methods.

use hopper_core::api::{InputError, Lease, LogStream, Origin};
use hopper_core::{CallCounts, CallId, CallState, FunctionSpec, InputState, UnixMillis, WorkerId};

#[derive(Debug, Clone, PartialEq)]
pub struct AppRow {
    pub name: String,
    pub version: i64,
    pub deployed_at: UnixMillis,
    pub functions: Vec<FunctionRow>,
    pub notify: Vec<hopper_core::notify::NotifyRule>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FunctionRow {
    pub version: i64,
    pub spec: FunctionSpec,
}

/// One version of a function, with when its app version was deployed.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionVersionRow {
    pub function: FunctionRow,
    pub deployed_at: UnixMillis,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CallRow {
    pub id: CallId,
    pub app: String,
    pub function: String,
    pub version: i64,
    pub origin: Origin,
    pub state: CallState,
    pub counts: CallCounts,
    pub idempotency_key: Option<String>,
    pub accepting_inputs: bool,
    pub discard_results: bool,
    /// The schedule (`app.name`) and due time that started the call.
    pub schedule: Option<(String, UnixMillis)>,
    /// The call and input index this call re-runs (origin `rerun`).
    pub rerun_of: Option<(CallId, i64)>,
    /// A delayed call: when its inputs become due.
    pub starts_at: Option<UnixMillis>,
    /// Higher runs first (`hopper_core::limits`); a map's later inputs take it too.
    pub priority: i32,
    /// The key given with the spawn, if any: every input's key (else each input's own, from
    /// the function's `limits.key`).
    pub key: Option<String>,
    pub created_at: UnixMillis,
    pub finished_at: Option<UnixMillis>,
}

/// One input's state and result, for a result stream.
#[derive(Debug, Clone, PartialEq)]
pub struct InputResultRow {
    pub index: i64,
    pub state: InputState,
    /// JSON text.
    pub output: Option<String>,
    pub error: Option<InputError>,
    /// Position in the order the call's inputs ended (1, 2, …), whichever way they ended;
    /// none until then.
    pub done_seq: Option<i64>,
}

/// Unfinished work of one function, summed over its calls that have not ended.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionBacklog {
    pub app: String,
    pub function: String,
    /// Pending inputs of calls that have started (due, or waiting out a retry's delay).
    pub pending: i64,
    /// Pending inputs of delayed calls that have not started yet.
    pub delayed: i64,
    pub running: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum CallInserted {
    Created(CallRow),
    /// The idempotency key was taken: this is the call it belongs to.
    Existing(CallRow),
}

/// A failed input, found across calls.
#[derive(Debug, Clone, PartialEq)]
pub struct FailedInputRow {
    /// The input's row id (with `finished_at`, a cursor).
    pub id: i64,
    pub call_id: CallId,
    pub index: i64,
    pub app: String,
    pub function: String,
    pub error: Option<InputError>,
    pub attempts: u32,
    pub finished_at: UnixMillis,
}

/// A call that re-runs an input of another.
#[derive(Debug, Clone, PartialEq)]
pub struct RerunRow {
    /// The input re-run.
    pub of_call: CallId,
    pub of_index: i64,
    /// The call that re-runs it.
    pub call_id: CallId,
    pub state: CallState,
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct InputRow {
    pub id: i64,
    pub call_id: CallId,
    pub index: i64,
    pub state: InputState,
    /// JSON text.
    pub input: String,
    /// JSON text, once succeeded.
    pub output: Option<String>,
    pub error: Option<InputError>,
    /// Attempts started (leases granted) so far.
    pub attempts: u32,
    /// Attempts that failed (they count against `max_retries`).
    pub failures: u32,
    pub not_before: UnixMillis,
    pub finished_at: Option<UnixMillis>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LeasedRow {
    pub lease: Lease,
    pub call_id: CallId,
    pub index: i64,
    pub version: i64,
    /// JSON text.
    pub input: String,
    pub spec: FunctionSpec,
}

/// What a lease claimed, and whether due inputs were left waiting on a limit.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LeaseBatch {
    pub rows: Vec<LeasedRow>,
    /// Some when due inputs of the functions asked for wait on a limit (`max_running`, a rate,
    /// per key or not): the time a rate allows the next start, or None when only a running
    /// input's end frees a place.
    pub limited: Option<Option<UnixMillis>>,
    /// The functions whose due inputs a limit held back in this lease (whether or not it
    /// claimed others), with the limits that did.
    pub held: Vec<(crate::FunctionKey, Vec<LimitKind>)>,
}

/// One of a function's limits (`hopper_core::limits::Limits`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LimitKind {
    MaxRunning,
    MaxRunningPerKey,
    Rate,
    RatePerKey,
}

impl LimitKind {
    pub const ALL: [LimitKind; 4] = [
        LimitKind::MaxRunning,
        LimitKind::MaxRunningPerKey,
        LimitKind::Rate,
        LimitKind::RatePerKey,
    ];

    /// The limit's name in the manifest (`max_running`, `rate_per_key`, …).
    pub fn name(self) -> &'static str {
        match self {
            LimitKind::MaxRunning => "max_running",
            LimitKind::MaxRunningPerKey => "max_running_per_key",
            LimitKind::Rate => "rate",
            LimitKind::RatePerKey => "rate_per_key",
        }
    }
}

/// What holds a limited function's due inputs back now ([`crate::Store::limits_state`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LimitsState {
    /// Its inputs running now that count for its limits.
    pub running: i64,
    /// Running inputs of the keys with the most running (at most 10), most first.
    pub busiest: Vec<(String, i64)>,
    /// The limits at their bound now: the function's own, then each key's (at most 1,000
    /// keys), each with the due inputs it holds back when counted (then only those that
    /// hold some back).
    pub holds: Vec<Hold>,
    /// The keys of the asked call's due pending inputs (of its first 1,000; none while they
    /// wait for their start or a retry's backoff), when a call was asked.
    pub call_keys: Vec<String>,
}

/// A limit at its bound.
#[derive(Debug, Clone, PartialEq)]
pub struct Hold {
    pub limit: LimitKind,
    /// The key held back, for a key's limit.
    pub key: Option<String>,
    /// Inputs running that count for it (of the function, or of the key).
    pub running: i64,
    /// When a rate next allows a start.
    pub next_at: Option<UnixMillis>,
    /// Due pending inputs it holds back (with [`crate::LimitsRead::count`]), else 0.
    pub waiting: i64,
}

/// What one result of a completion batch did.
#[derive(Debug, Clone, PartialEq)]
pub struct CompletionRow {
    /// Whether it became the input's result (or retry); false for a lost lease.
    pub recorded: bool,
    /// Set when this result ended its call.
    pub call_finished: Option<(CallId, CallState)>,
    /// `app.function` of the input, when it still exists.
    pub function: Option<String>,
    /// How long the attempt ran, from its lease to its result.
    pub duration_ms: Option<i64>,
    /// What the result did: `succeeded`, `failed`, `retried`, `returned` or `late`.
    pub effect: &'static str,
}

/// Attempts of one function that ended in one statistics slot.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionStatsRow {
    pub app: String,
    pub function: String,
    /// The slot's start ([`hopper_core::stats::SLOT_MS`] wide).
    pub slot: UnixMillis,
    pub tally: hopper_core::stats::Tally,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct RescueReport {
    /// Inputs whose worker was lost, back to pending.
    pub requeued: u64,
    /// Inputs past their deadline, failed (or retried) as timed out.
    pub timed_out: u64,
    /// Calls that ended because of this rescue.
    pub finished_calls: Vec<(CallId, CallState)>,
}

/// The database's schema against this build's migrations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaVersion {
    /// The newest migration applied to the database, and its name.
    pub applied: i64,
    pub applied_name: String,
    /// The newest migration this build knows, and its name.
    pub known: i64,
    pub known_name: String,
}

impl SchemaVersion {
    /// The database's newest migration, `applied` (`0` before any), against the newest of
    /// `known`, a backend's migrations in order as `(number, name, SQL)`.
    pub fn of(applied: i64, applied_name: String, known: &[(i64, &str, &str)]) -> Self {
        let (known, known_name) = known.last().map_or((0, ""), |(v, n, _)| (*v, *n));
        Self {
            applied,
            applied_name,
            known,
            known_name: known_name.to_string(),
        }
    }

    /// Refuses a schema a newer Hopper migrated.
    pub fn check(&self) -> Result<(), crate::StoreError> {
        if self.applied > self.known {
            return Err(crate::StoreError::SchemaTooNew {
                found: self.applied,
                found_name: self.applied_name.clone(),
                known: self.known,
                known_name: self.known_name.clone(),
            });
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct AttemptRow {
    pub index: i64,
    pub attempt: u32,
    pub worker_id: Option<WorkerId>,
    /// `running`, `succeeded`, `failed`, `lost` or `cancelled`.
    pub outcome: String,
    pub started_at: UnixMillis,
    pub finished_at: Option<UnixMillis>,
    pub error: Option<InputError>,
    pub late: bool,
    /// How many inputs the attempt ran with in one batch, as its worker reported it.
    pub batch_size: Option<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogRow {
    pub seq: i64,
    pub index: i64,
    pub attempt: u32,
    pub stream: LogStream,
    pub ts: UnixMillis,
    pub line: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WorkerRow {
    pub id: WorkerId,
    /// A hash of the worker's secret (none for workers registered before it existed).
    pub secret_hash: Option<String>,
    pub host: String,
    pub pid: u32,
    pub functions: Vec<String>,
    pub concurrency: u32,
    pub running: i64,
    pub registered_at: UnixMillis,
    pub last_seen_at: UnixMillis,
    pub stopped_at: Option<UnixMillis>,
    /// What its machine has, as it registered it.
    pub machine: Option<hopper_core::resources::Machine>,
}

/// A schedule with its state.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleRow {
    pub spec: hopper_core::schedule::ScheduleSpec,
    pub paused: bool,
    pub anchor_at: UnixMillis,
    pub next_due_at: Option<UnixMillis>,
    pub last_due_at: Option<UnixMillis>,
    pub last_call_id: Option<CallId>,
    pub last_call_state: Option<CallState>,
}

/// What a firing did.
#[derive(Debug, Clone, PartialEq)]
pub enum FireOutcome {
    /// The call started.
    Fired(Box<CallRow>),
    /// The previous call was still running and the schedule skips overlaps.
    Skipped,
    /// This due time had fired already (another server, or before a restart).
    AlreadyFired,
}

/// One recorded due time of a schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct FiringRow {
    pub due_at: UnixMillis,
    /// `fired`, `triggered` (run now), `skipped` or `missed`.
    pub outcome: String,
    pub call_id: Option<CallId>,
}

/// A named secret as stored: its keys in the clear, its values sealed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRow {
    pub name: String,
    pub keys: Vec<String>,
    pub sealed: String,
    pub created_at: UnixMillis,
    pub updated_at: UnixMillis,
}

/// A stored code snapshot, without its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRow {
    pub hash: String,
    /// Bytes of the compressed tar.
    pub size: u64,
    pub files: u64,
    /// Bytes of its files, uncompressed.
    pub unpacked_bytes: u64,
    pub created_at: UnixMillis,
}

/// A stored blob, without its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRow {
    pub digest: String,
    /// Its length in bytes.
    pub size: u64,
    /// How many chunks hold it, read in order from 0 ([`crate::Store::blob_chunk`]); 0 for
    /// a blob kept in an object store.
    pub chunks: i64,
    /// The URL of the object that holds it, for a blob kept in an object store (`serve
    /// --blobs s3://…`); `None` for one whose chunks are in the database.
    pub location: Option<String>,
    pub created_at: UnixMillis,
}
