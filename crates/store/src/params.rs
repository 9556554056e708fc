//! Parameters of the [`crate::Store`] methods.

use hopper_core::api::{Lease, LogStream, Origin, Outcome};
use hopper_core::schedule::ScheduleSpec;
use hopper_core::{CallId, FunctionSpec, InputState, UnixMillis, WorkerId};

/// An app and function name pair: which queue an input belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FunctionKey {
    pub app: String,
    pub function: String,
}

#[derive(Debug, Clone)]
pub struct AppDeploy {
    pub app: String,
    /// The manifest text, kept with the version for the record.
    pub manifest: String,
    pub functions: Vec<FunctionSpec>,
    /// The app's schedules: each replaces the one of its name, and the app's schedules not
    /// listed are removed. A schedule whose definition did not change keeps its due time.
    pub schedules: Vec<ScheduleDeploy>,
    /// The app's notification rules (they replace the previous version's).
    pub notify: Vec<hopper_core::notify::NotifyRule>,
    /// The code snapshot the version runs in (its hash), if it has one.
    pub snapshot: Option<String>,
    pub now: UnixMillis,
}

/// Calls that ended after a position, oldest first.
#[derive(Debug, Clone)]
pub struct CallsFinished {
    /// Calls that ended after this time, or at it with an id after `after_id`.
    pub after_at: UnixMillis,
    pub after_id: Option<CallId>,
    pub limit: u32,
}

/// A schedule to deploy, with its first due time computed from `now`.
#[derive(Debug, Clone)]
pub struct ScheduleDeploy {
    pub spec: ScheduleSpec,
    pub next_due_at: Option<UnixMillis>,
}

/// Fire one due time of a schedule, atomically: record the firing (once per due time), the
/// missed due times before it, start the call (unless the schedule skips overlaps and its
/// last call is still running), and move the schedule to its next due time.
#[derive(Debug, Clone)]
pub struct ScheduleFire {
    pub app: String,
    pub name: String,
    /// The schedule's recorded next due time: the firing happens only if it still is, so two
    /// servers (or one before and after a restart) cannot both fire it.
    pub expected_due_at: UnixMillis,
    /// The due time fired: the most recent one that has passed.
    pub due_at: UnixMillis,
    /// Due times that passed while nothing fired them (the server was down); recorded only.
    pub missed: Vec<UnixMillis>,
    pub next_due_at: Option<UnixMillis>,
    /// The call to start; its id, function and version are the caller's.
    pub call: CallInsert,
    /// A "run now": fires at `due_at` without moving the schedule.
    pub manual: bool,
    pub now: UnixMillis,
}

#[derive(Debug, Clone)]
pub struct SchedulePause {
    pub app: String,
    pub name: String,
    pub paused: bool,
    /// On resume: the next due time, from now.
    pub next_due_at: Option<UnixMillis>,
    pub now: UnixMillis,
}

#[derive(Debug, Clone)]
pub struct FunctionFind {
    pub app: Option<String>,
    pub function: String,
}

#[derive(Debug, Clone)]
pub struct CallInsert {
    pub id: CallId,
    pub app: String,
    pub function: String,
    pub version: i64,
    pub origin: Origin,
    pub idempotency_key: Option<String>,
    /// Each input's JSON text, in index order.
    pub inputs: Vec<String>,
    /// More inputs will be appended (a streaming map); the call cannot end until they stop.
    pub accepting_inputs: bool,
    /// Keep no outputs (`for_each`).
    pub discard_results: bool,
    /// The schedule (`app.name`) and due time that started the call, if one did.
    pub schedule: Option<(String, UnixMillis)>,
    /// The call and input index this call re-runs (origin `rerun`).
    pub rerun_of: Option<(CallId, i64)>,
    /// Delay the call: its inputs (a map's later ones too) are due at this time, not before.
    pub starts_at: Option<UnixMillis>,
    /// Higher runs first; a map's later inputs take it too.
    pub priority: i32,
    /// The key of every input, given with the spawn.
    pub key: Option<String>,
    /// Without `key`: each input's key from the function's `limits.key`, in the order of
    /// `inputs` (empty: no input has one; `""`: that input has none).
    pub input_keys: Vec<String>,
    pub now: UnixMillis,
}

#[derive(Debug, Clone)]
pub struct InputAppend {
    pub call_id: CallId,
    /// Index of the first input in `inputs`.
    pub start: i64,
    pub inputs: Vec<String>,
    /// Each input's key from the function's `limits.key`, as in [`CallInsert::input_keys`]
    /// (the call's own key, if it has one, comes first).
    pub input_keys: Vec<String>,
    /// No more inputs after these.
    pub done: bool,
    pub now: UnixMillis,
}

/// The order of a result stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultOrder {
    /// By input index; `after` is the last index read (-1 to start).
    Index,
    /// In the order inputs ended; `after` is the last completion position read (0 to start).
    Completion,
}

#[derive(Debug, Clone)]
pub struct InputResults {
    pub call_id: CallId,
    pub order: ResultOrder,
    pub after: i64,
    pub limit: u32,
    /// The page ends with the row whose output or error brings the page's to this many bytes
    /// or more (it always has at least one row), so reading a call costs bounded memory
    /// whatever its outputs' sizes.
    pub max_bytes: usize,
}

#[derive(Debug, Clone, Default)]
pub struct CallList {
    pub app: Option<String>,
    pub function: Option<String>,
    pub state: Option<InputState>,
    pub origin: Option<Origin>,
    /// Only calls older than this one (the cursor, or a time as [`CallId::first_at`]).
    pub before: Option<CallId>,
    /// Only calls at or after this one (a time as [`CallId::first_at`]).
    pub after: Option<CallId>,
    pub limit: u32,
}

/// Failed inputs across calls, newest failure first.
#[derive(Debug, Clone, Default)]
pub struct FailedInputList {
    /// Only inputs of this call (a map's).
    pub call: Option<CallId>,
    pub app: Option<String>,
    /// With `app`: one function's.
    pub function: Option<String>,
    /// Failures at or after this time.
    pub since: Option<UnixMillis>,
    /// Failures before this time.
    pub until: Option<UnixMillis>,
    /// Only failures older than this one: `(finished_at, input row id)` of the last read.
    pub before: Option<(UnixMillis, i64)>,
    pub limit: u32,
    /// With a bound, the page ends after the row that brings its errors' JSON to this many
    /// bytes, however few rows that is.
    pub max_bytes: Option<usize>,
}

/// Per-function statistics slots since a time, optionally of one app or function.
#[derive(Debug, Clone, Default)]
pub struct StatsList {
    /// Slots starting at or after this time.
    pub since: UnixMillis,
    pub app: Option<String>,
    /// With `app`: one function's slots.
    pub function: Option<String>,
}

/// A call's attempts, by input and attempt.
#[derive(Debug, Clone)]
pub struct AttemptList {
    pub call_id: CallId,
    /// Only this input's attempts.
    pub index: Option<i64>,
    /// Only the attempts of inputs after this index (the next page of a map's attempts).
    pub after_index: Option<i64>,
    pub limit: u32,
    /// With a bound, the page ends after the row that brings its errors' JSON to this many
    /// bytes, however few rows that is (which may be part way through an input's attempts).
    pub max_bytes: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct CallCancel {
    pub id: CallId,
    pub now: UnixMillis,
}

#[derive(Debug, Clone)]
pub struct CallPrune {
    pub finished_before: UnixMillis,
    /// At most this many calls per run, so pruning never holds the writer for long.
    pub limit: u32,
}

/// [`crate::Store::limits_state`]: the function, its current limits, and what to look at.
#[derive(Debug, Clone)]
pub struct LimitsRead {
    pub function: FunctionKey,
    pub limits: hopper_core::limits::Limits,
    /// Also read the keys of this call's pending inputs.
    pub call: Option<CallId>,
    /// Count the due inputs each hold keeps back (reads every such input's index entry).
    pub count: bool,
    pub now: UnixMillis,
}

#[derive(Debug, Clone)]
pub struct InputLease {
    pub worker_id: WorkerId,
    pub functions: Vec<FunctionKey>,
    pub max: u32,
    pub now: UnixMillis,
    /// The lease lasts this long unless renewed by a heartbeat.
    pub lease_ms: i64,
    /// Added to the function's timeout to give the attempt's hard deadline: time for the
    /// worker to kill the command and report, after which the lease cannot be renewed.
    pub deadline_slack_ms: i64,
}

#[derive(Debug, Clone)]
pub struct InputCompleteMany {
    pub worker_id: WorkerId,
    pub results: Vec<(Lease, Outcome)>,
    /// How many inputs each result's attempt ran with in one batch, in the order of
    /// `results`; a result without an entry ran alone (1).
    pub batch_sizes: Vec<u32>,
    pub now: UnixMillis,
}

#[derive(Debug, Clone)]
pub struct LeaseHeartbeat {
    pub worker_id: WorkerId,
    pub leases: Vec<Lease>,
    pub now: UnixMillis,
    pub lease_ms: i64,
}

#[derive(Debug, Clone)]
pub struct LeaseRescue {
    pub now: UnixMillis,
    pub limit: u32,
}

/// Time the server did not run (its process was paused): every running lease and deadline is
/// moved on by the gap, and every lease runs at least until `until_at_least`, so workers that
/// kept heartbeating into the paused server are not charged for it.
#[derive(Debug, Clone)]
pub struct LeaseExtend {
    /// How long the server did not run, in milliseconds.
    pub gap_ms: i64,
    /// No running lease expires before this (now plus one lease period).
    pub until_at_least: UnixMillis,
}

/// The clock the server keeps stepped (an NTP step, an operator's `date -s`): every time
/// stored as "now plus a duration" that has not come yet — running leases and deadlines,
/// retry backoffs — is moved by the step, so the durations stay what they were.
#[derive(Debug, Clone)]
pub struct TimeShift {
    /// How far the clock jumped, in milliseconds: positive forward, negative backward.
    pub step_ms: i64,
    /// Now, on the stepped clock.
    pub now: UnixMillis,
    /// The lease period: no running lease is left longer than one from now, and after a
    /// backward step every lease gets one whole (a lease renewed between the step and its
    /// notice is on the new clock already, and must not be moved back again).
    pub lease_ms: i64,
}

/// Sets a schedule's next due time, if it is still `expected` (another server may have fired
/// it meanwhile).
#[derive(Debug, Clone)]
pub struct ScheduleReschedule {
    pub app: String,
    pub name: String,
    pub expected_due_at: Option<UnixMillis>,
    pub next_due_at: Option<UnixMillis>,
    /// A new point an `every` period counts from; `None` keeps it.
    pub anchor_at: Option<UnixMillis>,
    /// After a backward step of the clock: the schedule's firings of due times after this are
    /// forgotten (those due times come again, and each fires once more).
    pub forget_firings_after: Option<UnixMillis>,
    pub now: UnixMillis,
}

/// A batch of log lines, bounded per attempt.
#[derive(Debug, Clone)]
pub struct LogAppend {
    /// The worker sending the lines: it must hold (or have held) each line's lease.
    pub worker_id: WorkerId,
    pub lines: Vec<LogInsert>,
    /// Lines kept per attempt; past it lines are dropped, and one `system` line says so.
    pub max_lines_per_attempt: u32,
}

#[derive(Debug, Clone)]
pub struct LogInsert {
    pub lease: Lease,
    pub stream: LogStream,
    pub ts: UnixMillis,
    pub line: String,
}

#[derive(Debug, Clone)]
pub struct LogList {
    pub call_id: CallId,
    pub index: Option<i64>,
    pub after_seq: i64,
    pub limit: u32,
    /// With a bound, the page ends with the line that brings its lines to this many bytes
    /// (it always has at least one); the next page starts after its last `seq`.
    pub max_bytes: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct WorkerRegisterParams {
    pub id: WorkerId,
    /// A hash of the secret the worker proves itself with on every request.
    pub secret_hash: String,
    pub host: String,
    pub pid: u32,
    pub functions: Vec<String>,
    pub concurrency: u32,
    pub now: UnixMillis,
    /// What its machine has, as it said; none if it said nothing.
    pub machine: Option<hopper_core::resources::Machine>,
}

#[derive(Debug, Clone)]
pub struct WorkerDeregister {
    pub id: WorkerId,
    pub now: UnixMillis,
    /// The worker died (its process exited without deregistering; the server noticed):
    /// its inputs' attempts say so (`worker_lost`) instead of `worker_stopped`.
    pub died: bool,
}

/// Stores a named secret's sealed values, replacing what it had.
#[derive(Debug, Clone)]
pub struct SecretPutParams {
    pub name: String,
    /// The secret's keys, sorted (kept in the clear so they can be listed).
    pub keys: Vec<String>,
    /// The values, encrypted by the server; the store never sees them in the clear.
    pub sealed: String,
    pub now: UnixMillis,
}

/// Stores a code snapshot under its hash; one that is there already is kept as it is.
#[derive(Debug, Clone)]
pub struct SnapshotPut {
    /// `sha256:` and the hex digest of `bytes`.
    pub hash: String,
    /// The gzip-compressed tar.
    pub bytes: Vec<u8>,
    pub files: u64,
    /// Bytes of its files, uncompressed.
    pub unpacked_bytes: u64,
    pub now: UnixMillis,
}

/// Which snapshots pruning keeps: those of each app's last `keep_versions` versions, those of
/// versions with calls that have not ended, and those stored at or after `created_before`
/// (uploaded for a deploy that has not happened yet).
#[derive(Debug, Clone)]
pub struct SnapshotPrune {
    pub keep_versions: u32,
    pub created_before: UnixMillis,
}

/// One chunk of a blob's upload: `seq` counts from 0. A chunk written twice (a retried write)
/// keeps the first.
#[derive(Debug, Clone)]
pub struct BlobChunk {
    /// The upload's id (random, one per upload).
    pub upload: String,
    pub seq: i64,
    /// Shared, so that a write tried again does not copy it.
    pub data: std::sync::Arc<Vec<u8>>,
    pub now: UnixMillis,
}

/// Ends an upload whose chunks (or object, at `location`) are all written: the blob `digest`
/// is made of them from now on, whether it is new or existed already (then the stored copy
/// goes: this one was just checked against the digest, the stored one may have been damaged
/// since). With `call`, that call refers to the blob (see [`Store::blob_claim`]).
#[derive(Debug, Clone)]
pub struct BlobFinish {
    pub upload: String,
    /// `sha256:` and the 64 hex digits of the bytes.
    pub digest: String,
    pub size: u64,
    /// Where the bytes are when they are not the upload's chunks: the URL of the object that
    /// holds them (`s3://bucket/prefix/<upload>`, see `serve --blobs`). `None`: the chunks.
    pub location: Option<String>,
    pub call: Option<CallId>,
    pub now: UnixMillis,
}

/// What blob pruning deletes: references of calls that no longer exist, made before
/// `created_before`; blobs no call refers to, stored before it; and chunks of uploads never
/// finished, written before it.
#[derive(Debug, Clone)]
pub struct BlobPrune {
    pub created_before: UnixMillis,
}
