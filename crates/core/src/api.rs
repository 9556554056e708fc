//! The JSON shapes of the HTTP API (`/v1`). The server and the Rust SDK share these types, so
//! they cannot drift apart; `docs/API.md` describes the same shapes for other languages.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::function::FunctionSpec;
use crate::ids::{CallId, WorkerId};
use crate::state::{CallCounts, CallState};

/// Every error the API returns: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// A stable machine-readable `code` and a message for people.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

/// `POST /v1/apps`: deploy a manifest as a new version of its app.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeployRequest {
    /// The manifest's TOML text.
    pub manifest: String,
    /// How to name the manifest in errors, e.g. `examples/quickstart/hopper.toml`.
    pub file: String,
    /// Absolute directory that relative `workdir`s are resolved against: the manifest's
    /// folder on the deploying machine.
    pub base_dir: String,
    /// The code snapshot the version runs in (`sha256:…`), stored first with
    /// `PUT /v1/snapshots/{hash}`. Without one, the version runs from `base_dir` on the
    /// workers' machines (`hopper serve --dev`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// With `snapshot`: the absolute folder on the deploying machine that the snapshot was
    /// made of (`base_dir` or a folder above it). Every `workdir` must lie inside it; it runs
    /// at the same place inside the snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_root: Option<String>,
}

/// `GET /v1/snapshots/{hash}` and each version's code: a stored snapshot, without its bytes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotView {
    /// `sha256:` and 64 hex digits: the SHA-256 of the gzip-compressed tar.
    pub hash: String,
    /// Bytes of the compressed tar.
    pub size: u64,
    pub files: u64,
    /// Bytes of its files, uncompressed.
    pub unpacked_bytes: u64,
    /// RFC 3339: when it was first stored.
    pub created_at: String,
}

/// An app at its current version.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppView {
    pub name: String,
    pub version: i64,
    pub deployed_at: String,
    pub functions: Vec<FunctionView>,
    /// What a deploy should tell its user, e.g. that queued calls of a function it removed
    /// will finish on the version they were spawned on. Only in the answer to a deploy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// A function at one version of its app.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FunctionView {
    /// `app.function`.
    pub name: String,
    pub version: i64,
    pub spec: FunctionSpec,
    /// For a function with limits: where they stand now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits_state: Option<LimitsStateView>,
    /// Set while the function has work that no worker can take, with why: `waiting for a GPU
    /// of kind H100: this server has 2 × L4, and no remote worker serving it has one`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
    /// How its last worker process started, as a worker reported it to this server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup: Option<StartupView>,
}

/// How a function's worker process last started (`FunctionView::startup`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StartupView {
    /// Milliseconds from the process's start to its ready line (imports, `@enter`), for the
    /// last process that became ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_ms: Option<u64>,
    /// Set when the last process to start failed before it was ready (an `@enter` or import
    /// that raised): the last line of its error output (`ValueError: no model file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
    /// When that was reported (RFC 3339).
    pub at: String,
}

/// `POST /v1/workers/{id}/starts`: how a process of one of the worker's functions started:
/// ready after `ready_ms`, or `failed` before it was ready.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessStart {
    /// `app.function`, one the worker serves.
    pub function: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_ms: Option<u64>,
    /// The last line of what it wrote before it exited (at most 1,000 characters kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
}

/// Where a function's limits stand now, as the store has them (`GET /v1/functions/{name}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LimitsStateView {
    /// Its inputs running now that count for its limits.
    pub running: i64,
    /// The keys with the most inputs running (at most 10), most first.
    pub busiest_keys: Vec<KeyRunningView>,
    /// The limits at their bound now, each with the due inputs it holds back: the function's
    /// own first, then each key's (at most 1,000 keys).
    pub holds: Vec<HoldView>,
}

/// Inputs of one key running.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyRunningView {
    pub key: String,
    pub running: i64,
}

/// A limit at its bound, holding due inputs back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HoldView {
    /// `max_running`, `max_running_per_key`, `rate` or `rate_per_key`.
    pub limit: String,
    /// The key held back, for a key's limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Due inputs it holds back.
    pub waiting: i64,
    /// Why, in words: `max_running: 20 of 20 running`, `rate limit 50/s`,
    /// `key acme at 2 running (max_running_per_key 2)`, `key acme at its rate limit 5/s`.
    pub reason: String,
    /// For a rate: when it next allows a start (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_start_at: Option<String>,
}

/// `GET /v1/functions/{name}/versions`: one version of a function.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FunctionVersionView {
    /// `app.function`.
    pub name: String,
    pub version: i64,
    /// When this version of the app was deployed.
    pub deployed_at: String,
    pub spec: FunctionSpec,
    /// The code snapshot it runs in; none for a version that runs from a folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotView>,
}

/// `POST /v1/functions/{name}/calls`: spawn a call with one input.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SpawnRequest {
    pub input: Value,
    /// The same key returns the same call instead of spawning another. The
    /// `Idempotency-Key` header does the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Start the call this long from now (`10m`, `1h30m`; at most a year): it is stored at
    /// once and its input becomes due then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<String>,
    /// Start the call at this time (RFC 3339); instead of `delay`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_at: Option<String>,
    /// The call's key (a tenant, a customer; at most 200 bytes): its inputs are one group
    /// under the function's `limits` (`max_running_per_key`, `rate_per_key`), and groups take
    /// turns. Without it, the function's `limits.key` takes one from the input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Higher runs first, -1000 to 1000; the function's `priority` (default 0) without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
}

/// `POST /v1/functions/{name}/calls/batch`: spawn many calls of one function, each with one
/// input, in one request and one transaction (all of them or none).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpawnBatchRequest {
    /// 1 to [`MAX_SPAWN_BATCH`] calls; their inputs together at most the server's
    /// `--max-payload`.
    pub calls: Vec<SpawnRequest>,
}

/// Most calls one bulk spawn makes.
pub const MAX_SPAWN_BATCH: usize = 1_000;

/// Most bytes of inputs the SDKs put in one bulk spawn (the server's default `--max-payload`
/// is 4 MiB; a lower one splits requests further).
pub const SPAWN_BATCH_BYTES: usize = 2 * 1024 * 1024;

/// The answer to a bulk spawn: one entry per call asked for, in order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpawnBatchResponse {
    pub calls: Vec<SpawnedCall>,
}

/// One call of a bulk spawn.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpawnedCall {
    pub id: CallId,
    /// False when the call's idempotency key named a call made before (or earlier in the
    /// batch): `id` is that call's.
    pub created: bool,
}

/// What made a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    Spawn,
    Map,
    Schedule,
    /// A re-run of an input of another call (`POST /v1/calls/{id}/rerun`).
    Rerun,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Spawn => "spawn",
            Origin::Map => "map",
            Origin::Schedule => "schedule",
            Origin::Rerun => "rerun",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Origin::Spawn, Origin::Map, Origin::Schedule, Origin::Rerun]
            .into_iter()
            .find(|o| o.as_str() == text)
    }
}

/// A call as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallView {
    pub id: CallId,
    /// `app.function`.
    pub function: String,
    pub version: i64,
    pub origin: Origin,
    pub state: CallState,
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    pub inputs: CallCounts,
    /// For a one-input call: the output once it succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// For a one-input call: the last error once it failed or was cancelled. For a call of
    /// several inputs (a map) with one that failed: the error of the first that failed
    /// ([`Self::failed_index`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<InputError>,
    /// Attempts started so far: of a one-input call's input, or of a map's first failed one.
    pub attempts: u32,
    /// The index of the call's first (lowest) failed input, once one failed; `error` and
    /// `attempts` are that input's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_index: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// A map still taking inputs (`POST /v1/calls/{id}/inputs`); it cannot end before they stop.
    #[serde(default)]
    pub accepting_inputs: bool,
    /// The call keeps no outputs (`for_each`).
    #[serde(default)]
    pub discard_results: bool,
    /// The schedule (`app.name`) that started the call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// The due time the schedule fired for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_at: Option<String>,
    /// For a re-run (origin `rerun`): the call and input it runs again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rerun_of: Option<InputRef>,
    /// For a delayed call: when its inputs become due (they are `pending` until then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starts_at: Option<String>,
    /// Higher runs first (-1000 to 1000); from the spawn, else the function's.
    #[serde(default)]
    pub priority: i32,
    /// Its key: given with the spawn, or for a call of one input the key the function's
    /// `limits.key` takes from it. Its inputs are one group under the function's limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Why its due pending inputs wait now (`GET /v1/calls/{id}` only): the function's limits
    /// at their bound that hold them back, e.g. `key acme at 2 running (max_running_per_key
    /// 2)`; several are joined by `; `. Absent when no limit holds them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
    /// Re-runs of this call's inputs, oldest first (`GET /v1/calls/{id}` only, at most
    /// [`MAX_RERUNS_SHOWN`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reruns: Vec<RerunView>,
}

/// Re-runs a call view lists at most (the newest).
pub const MAX_RERUNS_SHOWN: usize = 100;

/// One input of one call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputRef {
    pub call_id: CallId,
    pub index: i64,
}

/// A call that re-runs an input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RerunView {
    /// The input re-run.
    pub index: i64,
    /// The call that re-runs it, and its state.
    pub call_id: CallId,
    pub state: crate::state::InputState,
}

/// `POST /v1/calls/{id}/rerun`: which input to run again (default 0, a one-input call's).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RerunRequest {
    /// The input; may be left out only for a call of one input (a map's must be named).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<i64>,
    /// Run it again even if a re-run of it has not failed (is pending, running or succeeded).
    #[serde(default)]
    pub force: bool,
}

/// `GET /v1/inputs`: failed inputs across calls, newest failure first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailedInputPage {
    pub inputs: Vec<FailedInputView>,
    /// Pass as `cursor` for the next (older) page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// A failed input, with where it is and what became of it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailedInputView {
    pub call_id: CallId,
    pub index: i64,
    /// `app.function`.
    pub function: String,
    pub error: Option<InputError>,
    pub attempts: u32,
    pub finished_at: String,
    /// Calls that re-run it, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reruns: Vec<RerunView>,
}

/// `POST /v1/inputs/rerun`: re-runs every failed input a filter selects (as `GET /v1/inputs`
/// lists them), one new call each. An input re-run before is left out (its re-run is an input
/// of its own, listed when it failed too) unless `force`, so the same selection re-run twice
/// makes no call the second time.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputsRerunRequest {
    /// `failed` (the default, and the only state re-run this way).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Only inputs of this call (a map's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call: Option<CallId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// `app.function`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    /// RFC 3339, or a duration ago (`1h`): failures at or after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// RFC 3339, or a duration ago: failures before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// Inputs looked at most in this request (default and most 1,000); the answer's
    /// `next_cursor` goes on from there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// `next_cursor` of the request before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    #[serde(default)]
    pub force: bool,
}

/// What `POST /v1/inputs/rerun` did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InputsRerunResponse {
    /// Each input re-run: `{call_id, index}` of the input, and the new call.
    pub rerun: Vec<RerunDone>,
    /// Selected inputs left out, each with the re-run it already has (its latest).
    pub skipped: Vec<RerunDone>,
    /// Selected inputs that cannot be re-run, each with why (e.g. its function is no longer
    /// deployed); the others are re-run all the same.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<RerunRefused>,
    /// More inputs matched than `limit`: send the request again with this `cursor`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// An input a bulk re-run could not run again, and why.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RerunRefused {
    pub call_id: CallId,
    pub index: i64,
    pub reason: String,
}

/// One input of a bulk re-run, and the call that re-runs it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RerunDone {
    pub call_id: CallId,
    pub index: i64,
    pub rerun_id: CallId,
}

/// A schedule as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScheduleView {
    /// `app.schedule`.
    pub name: String,
    /// `app.function`.
    pub function: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// The period, e.g. `15m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<String>,
    pub timezone: String,
    /// `allow` or `skip`.
    pub overlap: String,
    pub input: Value,
    pub paused: bool,
    /// Next due time in UTC, and the same in the schedule's zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_due_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_due_local: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_due_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_call_id: Option<CallId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_call_state: Option<CallState>,
    /// Recent due times, newest first (only on `GET /v1/schedules/{name}`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub firings: Vec<FiringView>,
}

/// One recorded due time of a schedule.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FiringView {
    pub due_at: String,
    /// `fired`, `triggered` (run now), `skipped` (overlap) or `missed` (the server was down).
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_id: Option<CallId>,
}

/// `POST /v1/functions/{name}/map`: start a map, with a first chunk of inputs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MapRequest {
    #[serde(default)]
    pub inputs: Vec<Value>,
    /// No more inputs will come; otherwise send them with `POST /v1/calls/{id}/inputs`.
    #[serde(default)]
    pub done: bool,
    /// Each input is a list of arguments (`starmap`); refused unless every input is an array.
    #[serde(default)]
    pub starmap: bool,
    /// Keep no outputs, only successes, failures and errors (`for_each`).
    #[serde(default)]
    pub discard_results: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Start the map this long from now: its inputs, later chunks' too, become due then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<String>,
    /// Start the map at this time (RFC 3339); instead of `delay`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_at: Option<String>,
    /// Every input's key (see [`SpawnRequest::key`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Every input's priority (see [`SpawnRequest::priority`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
}

/// `POST /v1/calls/{id}/inputs`: the next chunk of a map's inputs. `start` is the index of the
/// first; a chunk sent again (same `start`) is accepted once, so a client can retry safely.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct InputChunk {
    pub start: i64,
    #[serde(default)]
    pub inputs: Vec<Value>,
    #[serde(default)]
    pub done: bool,
}

/// One input's result in a result stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputResultView {
    pub index: i64,
    pub state: crate::InputState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<InputError>,
}

/// `GET /v1/calls/{id}/results?order=index|completion&after=…&wait=…`: the next results.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResultPage {
    pub results: Vec<InputResultView>,
    /// Pass as `after` for the next page: the last index (order=index, starting at -1) or the
    /// last completion position (order=completion, starting at 0).
    pub next: i64,
    /// No result will come after these: the call has ended and every result was read.
    pub done: bool,
    pub call: CallView,
}

/// `GET /v1/calls`: a page of calls, newest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallPage {
    pub calls: Vec<CallView>,
    /// Pass as `cursor` to get the next (older) page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Why an attempt or an input failed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InputError {
    /// `exit_code`, `timeout`, `bad_output`, `spawn_failed`, `lease_lost`, `cancelled`, or
    /// a code chosen by the worker (the Python SDK's: the exception's type name).
    pub code: String,
    pub message: String,
    /// Where the error's type is defined, when the function's language says (the Python
    /// SDK: the exception type's module, `app` or `shop.errors`; never `builtins`), so a
    /// client that has that module can raise the same type. At most 255 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
    /// The failure's traceback as the function's language prints it (the Python SDK: the
    /// user's frames, not the runner's). At most [`InputError::MAX_TRACEBACK`] bytes: a
    /// longer one keeps its end, where the error is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceback: Option<String>,
}

impl InputError {
    /// Most bytes of a message kept: its start, with a note of how long it was.
    pub const MAX_MESSAGE: usize = 64 * 1024;
    /// Most bytes of a traceback kept.
    pub const MAX_TRACEBACK: usize = 16 * 1024;
    /// Most bytes of a module name kept (a longer one is dropped).
    pub const MAX_MODULE: usize = 255;

    /// An error of `code` saying `message`, with no module or traceback.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
            ..Self::default()
        }
    }

    /// The error within its bounds: a message over [`Self::MAX_MESSAGE`] bytes cut to its
    /// start, a module name over [`Self::MAX_MODULE`] bytes dropped, a traceback over
    /// [`Self::MAX_TRACEBACK`] bytes cut to its end (from a line's start).
    pub fn bounded(mut self) -> Self {
        if self.message.len() > Self::MAX_MESSAGE {
            let total = self.message.len();
            let mut end = Self::MAX_MESSAGE;
            while !self.message.is_char_boundary(end) {
                end -= 1;
            }
            self.message.truncate(end);
            self.message
                .push_str(&format!("… [the message is cut: it was {total} bytes]"));
        }
        if self
            .module
            .as_ref()
            .is_some_and(|m| m.len() > Self::MAX_MODULE || m.is_empty())
        {
            self.module = None;
        }
        if let Some(text) = &self.traceback {
            if text.len() > Self::MAX_TRACEBACK {
                let mut start = text.len() - Self::MAX_TRACEBACK;
                while !text.is_char_boundary(start) {
                    start += 1;
                }
                let tail = &text[start..];
                let tail = tail.find('\n').map_or(tail, |at| &tail[at + 1..]);
                self.traceback = Some(format!("[… the traceback's start is cut]\n{tail}"));
            }
        }
        self
    }
}

/// One attempt at one input.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttemptView {
    pub index: i64,
    pub attempt: u32,
    pub worker_id: Option<WorkerId>,
    /// `running`, `succeeded`, `failed`, `lost` (the lease ran out) or `cancelled`.
    pub outcome: String,
    pub started_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<InputError>,
    /// A result that came after the lease was lost: kept here, never as the input's result.
    pub late: bool,
    /// How many inputs the attempt ran with in one batch (1 when not batched); absent while
    /// it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<u32>,
}

/// A stream of a command's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogStream {
    Stdout,
    Stderr,
    /// Lines written by the worker itself, e.g. "killed after timeout".
    System,
}

impl LogStream {
    pub fn as_str(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
            LogStream::System => "system",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [LogStream::Stdout, LogStream::Stderr, LogStream::System]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

/// A log line as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogView {
    /// Position in the call's log; pass the last one seen as `after` to read on.
    pub seq: i64,
    pub index: i64,
    pub attempt: u32,
    pub stream: LogStream,
    pub ts: String,
    pub line: String,
}

/// `GET /v1/calls/{id}/logs`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogPage {
    pub lines: Vec<LogView>,
}

// ---- the worker protocol ----

/// `POST /v1/workers`: a worker announces itself and the functions it serves.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerRegister {
    /// `app.function` names.
    pub functions: Vec<String>,
    pub host: String,
    pub pid: u32,
    /// Inputs the worker runs at once.
    pub concurrency: u32,
    /// What the worker's machine has (GPUs, cores, memory, labels): its functions' inputs
    /// reach it only if their `gpu`, `cpu`, `memory` and `labels` fit. None (a worker of an
    /// older build, or an SDK program that says nothing): no GPU and no label, cores and
    /// memory unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<crate::resources::Machine>,
}

/// The server's answer to a registration: the worker's id and the lease protocol's timing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerRegistered {
    pub worker_id: WorkerId,
    /// How long a lease lasts without a heartbeat.
    pub lease_ms: u64,
    /// How often the worker should heartbeat its leases.
    pub heartbeat_ms: u64,
    /// The largest input or output the server keeps, in bytes of JSON: a larger result fails
    /// with `output_too_large` rather than being sent.
    #[serde(default)]
    pub max_payload_bytes: Option<u64>,
    /// The largest request body the server reads, in bytes: completion and log batches are
    /// sized to fit.
    #[serde(default)]
    pub max_request_bytes: Option<u64>,
    /// Log lines the server keeps per attempt: a worker drops the rest itself, counts them,
    /// and says how many in one `system` line before the attempt's result.
    #[serde(default)]
    pub max_log_lines_per_attempt: Option<u32>,
    /// A token with the `read` and `submit` scopes for the functions the worker runs (handed
    /// to them as `HOPPER_TOKEN`, so a function can call others); none when the server needs
    /// no token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_token: Option<crate::secret::Redacted<String>>,
    /// The current spec of each function the worker serves, by `app.function@version`, so a
    /// worker can start what a function needs (a `serve` process) before its first input.
    #[serde(default)]
    pub functions: BTreeMap<String, FunctionSpec>,
    /// The worker's secret: send it in `X-Hopper-Worker-Secret` on every request about the
    /// worker (lease, heartbeat, complete, logs, deregister); no other worker can act as this
    /// one without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_secret: Option<crate::secret::Redacted<String>>,
    /// The functions this worker's machine cannot run as they are deployed now, each with why
    /// (`needs a GPU of kind H100; this machine has no GPU`): it is handed none of their inputs.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub unfit: BTreeMap<String, String>,
}

/// A worker as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerView {
    pub id: WorkerId,
    pub host: String,
    pub pid: u32,
    pub functions: Vec<String>,
    pub concurrency: u32,
    /// Inputs it holds leases on now.
    pub running: i64,
    pub registered_at: String,
    pub last_seen_at: String,
    /// `active`, `stopped` (deregistered) or `lost` (not heard from for longer than a lease).
    pub state: String,
    /// What its machine has, as it registered it; none for a worker that said nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<crate::resources::Machine>,
}

/// A worker's claim on one input: the input and which attempt it is. A result or heartbeat
/// for a lease that is no longer current is refused by the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Lease {
    pub input_id: i64,
    pub attempt: u32,
}

/// `POST /v1/workers/{id}/lease`: ask for up to `max` inputs, waiting up to `wait_ms`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseRequest {
    pub max: u32,
    #[serde(default)]
    pub wait_ms: u64,
}

/// Leased inputs, and the specs of the function versions they belong to.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LeaseResponse {
    pub inputs: Vec<LeasedInput>,
    /// Keyed by [`LeasedInput::function`], e.g. `quickstart.greet@3`.
    pub functions: BTreeMap<String, FunctionSpec>,
    /// Keyed like `functions`, for those that read secrets: the environment variables their
    /// secrets give (variable → value). Sent only inside a lease, never shown by the API.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_env: BTreeMap<String, BTreeMap<String, String>>,
    /// Keyed like `functions`: why a function's secrets could not be read (one was deleted,
    /// or was stored under another server key). Its inputs in this lease fail with this
    /// error (a failed attempt: their retries apply).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_errors: BTreeMap<String, InputError>,
}

/// `PUT /v1/secrets/{name}`: a named secret's values (each key becomes an environment
/// variable of the functions that name the secret). Replaces every value the secret had; of a
/// key given twice, the last value counts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecretPut {
    pub values: Vec<SecretValue>,
}

/// One key of a secret and its value.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecretValue {
    pub key: String,
    pub value: crate::secret::Redacted<String>,
}

/// What `POST /v1/reseal` did: secrets sealed again with the first key of
/// `HOPPER_SECRET_KEY`, and those no key of the server opens (set them again).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Resealed {
    pub resealed: usize,
    pub unreadable: Vec<String>,
}

/// A named secret as the API shows it: its keys, never its values.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecretView {
    pub name: String,
    /// The secret's keys, sorted.
    pub keys: Vec<String>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339: when its values were last set.
    pub updated_at: String,
    /// `app.function` of each current function that reads it.
    #[serde(default)]
    pub used_by: Vec<String>,
}

/// One leased input.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeasedInput {
    pub lease: Lease,
    pub call_id: CallId,
    pub index: i64,
    /// `app.function@version`, a key of [`LeaseResponse::functions`].
    pub function: String,
    pub input: Value,
}

/// `POST /v1/workers/{id}/heartbeat`: keep these leases alive.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeartbeatRequest {
    pub leases: Vec<Lease>,
    /// The calls of those leases. With `wait_ms`, the server holds the request open up to
    /// that long (at most 30 s) after renewing the leases, and answers at once when one of
    /// these calls is cancelled, so a cancelled input stops within moments, not at the next
    /// heartbeat.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub calls: Vec<CallId>,
    #[serde(default)]
    pub wait_ms: u64,
}

/// The leases the worker no longer holds (cancelled, or expired): it should stop them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    pub lost: Vec<Lease>,
}

/// The outcome of one attempt.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    Succeeded {
        output: Value,
    },
    Failed {
        error: InputError,
        /// `false`: the error cannot get better by trying again (a corrupt upload, a bad
        /// argument), so the input fails now whatever retries it has left. Default `true`.
        #[serde(default = "retryable", skip_serializing_if = "is_retryable")]
        retry: bool,
    },
    /// The worker gives the input back without it counting as a failure (its long-lived
    /// process crashed, or the worker is stopping): it runs again at once.
    Returned {
        error: InputError,
    },
}

fn retryable() -> bool {
    true
}

fn is_retryable(retry: &bool) -> bool {
    *retry
}

/// One result in a completion batch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InputResult {
    pub lease: Lease,
    #[serde(flatten)]
    pub outcome: Outcome,
    /// How many inputs the attempt ran with in one batch (1 when the function does not
    /// batch); shown with the attempt and in `hopper_batch_size`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<u32>,
}

/// `POST /v1/workers/{id}/complete`: a batch of results.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompleteRequest {
    pub results: Vec<InputResult>,
}

/// For each result, in order: whether it was recorded as the input's result (false when the
/// lease had been lost; the attempt is kept all the same).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompleteResponse {
    pub recorded: Vec<bool>,
}

/// One captured line of an attempt's output.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogLine {
    pub lease: Lease,
    pub stream: LogStream,
    pub ts_ms: i64,
    pub line: String,
}

/// `POST /v1/workers/{id}/logs`: a batch of log lines.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogBatch {
    pub lines: Vec<LogLine>,
}

/// A notification channel and how its deliveries go. Its target is shown redacted.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ChannelView {
    pub app: String,
    /// `webhook` or `email`.
    pub kind: String,
    /// The webhook's scheme and host, or the e-mail addresses.
    pub target: String,
    /// `ok`, `retrying` or `failing` (its last message could not be delivered).
    pub state: String,
    pub delivered: u64,
    pub failed_attempts: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_delivered_at: Option<String>,
}

// ---- the dashboard's reads ----

/// `GET /v1/calls/{id}/inputs/{index}`: one input of a call.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InputView {
    pub index: i64,
    pub state: crate::state::InputState,
    pub input: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<InputError>,
    pub attempts: u32,
    /// Calls that re-run this input, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reruns: Vec<RerunView>,
}

/// `GET /v1/stats`: rates, backlog and durations over a window.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatsView {
    /// The window's length and the width of one timeline point.
    pub window_ms: i64,
    pub step_ms: i64,
    /// Attempts ended per step, oldest first, summed over the functions shown.
    pub timeline: Vec<StatsPoint>,
    pub functions: Vec<FunctionStatsView>,
    /// Workers heard from within a lease.
    pub workers: usize,
}

/// Attempts that ended in one step of a timeline.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatsPoint {
    /// The step's start, in milliseconds since the epoch.
    pub at: i64,
    pub succeeded: i64,
    pub failed: i64,
    pub retried: i64,
}

/// One function over the window.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FunctionStatsView {
    /// `app.function`.
    pub function: String,
    /// Inputs waiting and running now.
    pub pending: i64,
    pub running: i64,
    pub succeeded: i64,
    pub failed: i64,
    pub retried: i64,
    /// Succeeded over succeeded + failed; absent without any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_rate: Option<f64>,
    /// Attempt durations (from lease to result), estimated from a histogram.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p50_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p95_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::InputError;

    #[test]
    fn an_error_is_kept_within_its_bounds() {
        let frames: String = (0..2_000)
            .map(|i| format!("  File \"app.py\", line {i}, in f\n"))
            .collect();
        let error = InputError {
            traceback: Some(format!(
                "Traceback (most recent call last):\n{frames}ValueError: é\n"
            )),
            module: Some("m".repeat(InputError::MAX_MODULE + 1)),
            ..InputError::new("ValueError", "é")
        }
        .bounded();
        let kept = error.traceback.unwrap_or_default();
        // The end, where the error is, from a line's start, within the bound.
        assert!(
            kept.len() <= InputError::MAX_TRACEBACK + 40,
            "{}",
            kept.len()
        );
        assert!(kept.starts_with("[… the traceback's start is cut]\n  File \"app.py\""));
        assert!(kept.ends_with("line 1999, in f\nValueError: é\n"));
        assert_eq!(error.module, None, "an over-long module name is dropped");
        let long = InputError::new("BadImage", "y".repeat(5 << 20)).bounded();
        assert!(long.message.len() < InputError::MAX_MESSAGE + 100);
        assert!(long
            .message
            .ends_with("… [the message is cut: it was 5242880 bytes]"));
        let small = InputError {
            module: Some("shop.errors".into()),
            traceback: Some("Traceback …\nValueError: x\n".into()),
            ..InputError::new("ValueError", "x")
        };
        assert_eq!(small.clone().bounded(), small);
    }
}
