//! Store rows into the API's JSON views.

use hopper_core::api::{
    AppView, AttemptView, CallView, FunctionView, HoldView, InputRef, KeyRunningView,
    LimitsStateView, LogView, RerunView, WorkerView,
};
use hopper_core::limits::Limits;
use hopper_core::{InputState, UnixMillis};
use hopper_store::{
    AppRow, AttemptRow, CallRow, FunctionRow, Hold, InputRow, LimitKind, LimitsState, LogRow,
    RerunRow, WorkerRow,
};

/// RFC 3339 with milliseconds, in UTC.
pub fn time(ms: UnixMillis) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| ms.to_string())
}

pub fn function(row: &FunctionRow) -> FunctionView {
    FunctionView {
        name: row.spec.qualified_name(),
        version: row.version,
        spec: row.spec.clone(),
        limits_state: None,
        waiting_for: None,
        startup: None,
    }
}

/// `function(row)` with what this server knows of it beyond the store: why no worker can take
/// its work, if none can.
pub fn function_here(state: &crate::state::AppState, row: &FunctionRow) -> FunctionView {
    let mut view = function(row);
    view.waiting_for = state
        .unplaced
        .lock()
        .ok()
        .and_then(|u| u.get(&view.name).cloned());
    view.startup = state
        .startups
        .lock()
        .ok()
        .and_then(|s| s.get(&view.name).cloned());
    view
}

/// `app(row)` with what this server knows of its functions (see [`function_here`]).
pub fn app_here(state: &crate::state::AppState, row: &AppRow) -> AppView {
    let mut view = app(row);
    view.functions = row
        .functions
        .iter()
        .map(|f| function_here(state, f))
        .collect();
    view
}

/// Where a function's `limits` stand, as the store read them.
pub fn limits_state(limits: &Limits, state: &LimitsState) -> LimitsStateView {
    LimitsStateView {
        running: state.running,
        busiest_keys: state
            .busiest
            .iter()
            .map(|(key, running)| KeyRunningView {
                key: key.clone(),
                running: *running,
            })
            .collect(),
        holds: state
            .holds
            .iter()
            .map(|hold| HoldView {
                limit: hold.limit.name().to_string(),
                key: hold.key.clone(),
                waiting: hold.waiting,
                reason: hold_reason(limits, hold),
                next_start_at: hold.next_at.map(time),
            })
            .collect(),
    }
}

/// Why `hold` keeps inputs waiting, in words.
pub fn hold_reason(limits: &Limits, hold: &Hold) -> String {
    let key = hold.key.as_deref().unwrap_or_default();
    let bound = |max: Option<u32>| max.map_or_else(String::new, |m| m.to_string());
    let rate = |r: Option<hopper_core::limits::Rate>| r.map_or_else(String::new, |r| r.to_string());
    match hold.limit {
        LimitKind::MaxRunning => format!(
            "max_running: {} of {} running",
            hold.running,
            bound(limits.max_running)
        ),
        LimitKind::Rate => format!("rate limit {}", rate(limits.rate)),
        LimitKind::MaxRunningPerKey => format!(
            "key {key} at {} running (max_running_per_key {})",
            hold.running,
            bound(limits.max_running_per_key)
        ),
        LimitKind::RatePerKey => {
            format!("key {key} at its rate limit {}", rate(limits.rate_per_key))
        }
    }
}

pub fn app(row: &AppRow) -> AppView {
    AppView {
        name: row.name.clone(),
        version: row.version,
        deployed_at: time(row.deployed_at),
        functions: row.functions.iter().map(function).collect(),
        notes: Vec::new(),
    }
}

/// A call; `first` is its input 0, shown inline for one-input calls.
/// The call `row` as the API shows it, with `first`: a one-input call's input, or the first
/// failed input of a call of several (a map), whose error the view then carries.
pub fn call(row: &CallRow, first: Option<&InputRow>) -> CallView {
    let shown = first.filter(|i| row.counts.total == 1 || i.state == InputState::Failed);
    let single = shown.filter(|_| row.counts.total == 1);
    CallView {
        id: row.id.clone(),
        function: format!("{}.{}", row.app, row.function),
        version: row.version,
        origin: row.origin,
        state: row.state,
        created_at: time(row.created_at),
        finished_at: row.finished_at.map(time),
        inputs: row.counts,
        output: single
            .filter(|i| i.state == InputState::Succeeded)
            .and_then(|i| i.output.as_deref())
            .and_then(|o| serde_json::from_str(o).ok()),
        error: shown
            .filter(|i| i.state != InputState::Succeeded)
            .and_then(|i| i.error.clone()),
        attempts: shown.map_or(0, |i| i.attempts),
        failed_index: shown
            .filter(|i| i.state == InputState::Failed)
            .map(|i| i.index),
        idempotency_key: row.idempotency_key.clone(),
        accepting_inputs: row.accepting_inputs,
        discard_results: row.discard_results,
        schedule: row.schedule.as_ref().map(|(s, _)| s.clone()),
        due_at: row.schedule.as_ref().map(|(_, d)| time(*d)),
        rerun_of: row.rerun_of.as_ref().map(|(call_id, index)| InputRef {
            call_id: call_id.clone(),
            index: *index,
        }),
        reruns: Vec::new(),
        starts_at: row.starts_at.map(time),
        priority: row.priority,
        key: row.key.clone(),
        waiting: None,
    }
}

pub fn rerun(row: &RerunRow) -> RerunView {
    RerunView {
        index: row.of_index,
        call_id: row.call_id.clone(),
        state: row.state,
    }
}

pub fn attempt(row: &AttemptRow) -> AttemptView {
    AttemptView {
        index: row.index,
        attempt: row.attempt,
        worker_id: row.worker_id.clone(),
        outcome: row.outcome.clone(),
        started_at: time(row.started_at),
        finished_at: row.finished_at.map(time),
        error: row.error.clone(),
        late: row.late,
        batch_size: row.batch_size,
    }
}

pub fn log(row: &LogRow) -> LogView {
    LogView {
        seq: row.seq,
        index: row.index,
        attempt: row.attempt,
        stream: row.stream,
        ts: time(row.ts),
        line: row.line.clone(),
    }
}

pub fn worker(row: &WorkerRow, now: UnixMillis, lease_ms: i64) -> WorkerView {
    let state = if row.stopped_at.is_some() {
        "stopped"
    } else if now - row.last_seen_at > lease_ms {
        "lost"
    } else {
        "active"
    };
    WorkerView {
        id: row.id.clone(),
        host: row.host.clone(),
        pid: row.pid,
        functions: row.functions.clone(),
        concurrency: row.concurrency,
        running: row.running,
        registered_at: time(row.registered_at),
        last_seen_at: time(row.last_seen_at),
        state: state.to_string(),
        machine: row.machine.clone(),
    }
}

pub fn schedule(
    row: &hopper_store::ScheduleRow,
    firings: &[hopper_store::FiringRow],
) -> hopper_core::api::ScheduleView {
    use hopper_core::schedule::{Overlap, When};
    let spec = &row.spec;
    let local = |ms: i64| {
        let tz = hopper_core::cron::zone(&spec.timezone).ok()?;
        let t = chrono::DateTime::from_timestamp_millis(ms)?;
        Some(
            t.with_timezone(&tz)
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, false),
        )
    };
    hopper_core::api::ScheduleView {
        name: spec.qualified_name(),
        function: format!("{}.{}", spec.app, spec.function),
        cron: match &spec.when {
            When::Cron(c) => Some(c.clone()),
            When::EveryMs(_) => None,
        },
        every: match &spec.when {
            When::EveryMs(ms) => Some(hopper_core::duration::format(
                std::time::Duration::from_millis(*ms),
            )),
            When::Cron(_) => None,
        },
        timezone: spec.timezone.clone(),
        overlap: match spec.overlap {
            Overlap::Allow => "allow",
            Overlap::Skip => "skip",
        }
        .to_string(),
        input: spec.input.clone(),
        paused: row.paused,
        next_due_at: row.next_due_at.filter(|_| !row.paused).map(time),
        next_due_local: row.next_due_at.filter(|_| !row.paused).and_then(local),
        last_due_at: row.last_due_at.map(time),
        last_call_id: row.last_call_id.clone(),
        last_call_state: row.last_call_state,
        firings: firings
            .iter()
            .map(|f| hopper_core::api::FiringView {
                due_at: time(f.due_at),
                outcome: f.outcome.clone(),
                call_id: f.call_id.clone(),
            })
            .collect(),
    }
}
