//! Prometheus metrics at `/metrics`. Counters and histograms are recorded where things happen
//! (completions, firings, deliveries); gauges of the queue and the workers are read from the
//! store at each scrape, so every server of a cluster reports the same truth.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use hopper_store::LimitKind;

use crate::state::AppState;

/// Buckets of `hopper_attempt_duration_seconds`: 1 ms to 1 hour.
const DURATION_BUCKETS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 300.0, 3600.0,
];

/// Buckets of `hopper_batch_size`: inputs per batch.
const BATCH_BUCKETS: [f64; 11] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The process's recorder, installed on first use. `None` if another recorder was installed
/// first (metrics are then not served).
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &DURATION_BUCKETS)
                .ok()?
                .set_buckets_for_metric(Matcher::Full("hopper_batch_size".into()), &BATCH_BUCKETS)
                .ok()?;
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            describe();
            Some(handle)
        })
        .as_ref()
}

fn describe() {
    metrics::describe_counter!(
        "hopper_inputs_total",
        "Inputs that ended, by function and state."
    );
    metrics::describe_counter!(
        "hopper_attempts_total",
        "Attempts reported, by function and what they did."
    );
    metrics::describe_counter!(
        "hopper_retries_total",
        "Failed attempts that will run again, by function."
    );
    metrics::describe_histogram!(
        "hopper_attempt_duration_seconds",
        "How long attempts ran, from lease to result."
    );
    metrics::describe_histogram!(
        "hopper_batch_size",
        "Inputs per batch that batched functions ran, by function (one sample per input)."
    );
    metrics::describe_gauge!(
        "hopper_queue_pending",
        "Inputs waiting to run, by function (scale workers on this)."
    );
    metrics::describe_gauge!(
        "hopper_queue_running",
        "Inputs leased to workers, by function."
    );
    metrics::describe_gauge!(
        "hopper_queue_limited",
        "Due inputs a limit holds back, by function and limit (max_running, max_running_per_key, rate, rate_per_key)."
    );
    metrics::describe_counter!(
        "hopper_limit_holds_total",
        "Leases that left due inputs of the function waiting on a limit, by function and limit (rate: starts the rate put off)."
    );
    metrics::describe_gauge!("hopper_workers", "Registered workers, by state.");
    metrics::describe_histogram!(
        "hopper_worker_startup_seconds",
        "Seconds from a worker process's start to its ready line (imports, @enter), by function."
    );
    metrics::describe_gauge!(
        "hopper_function_waiting_for_resources",
        "1 for a function with work that no worker can take (it asks for GPUs, cores, memory or labels that no free local slot and no registered worker has: add a node that has them), else 0."
    );
    metrics::describe_gauge!(
        "hopper_clock_offset_seconds",
        "How far the database's clock is ahead of this server's (servers keep the database's time)."
    );
    metrics::describe_counter!(
        "hopper_server_pauses_total",
        "Times this server noticed it had not run for over a second (paused, frozen, stalled)."
    );
    metrics::describe_counter!(
        "hopper_server_paused_seconds_total",
        "Seconds this server did not run, moved onto every running lease."
    );
    metrics::describe_counter!(
        "hopper_clock_steps_total",
        "Steps of the clock the server keeps, by direction."
    );
    metrics::describe_gauge!(
        "hopper_leader",
        "1 where this server leads a role among the servers of one database (notifier, timekeeper), else 0."
    );
    metrics::describe_gauge!(
        "hopper_workers_waiting",
        "Workers' lease requests this server holds open, waiting for inputs (at most --max-waiting)."
    );
    metrics::describe_gauge!(
        "hopper_database_connections",
        "This server's connections to PostgreSQL, by state (idle, in_use); at most --database-pool."
    );
    metrics::describe_gauge!(
        "hopper_process_cpu_seconds",
        "CPU time this server process has used, user and system, in seconds."
    );
    metrics::describe_gauge!(
        "hopper_process_resident_memory_bytes",
        "This server process's resident memory."
    );
    metrics::describe_gauge!(
        "hopper_process_open_fds",
        "Files and sockets this server process holds open."
    );
    metrics::describe_counter!(
        "hopper_http_requests_total",
        "HTTP requests answered, by route, method and status class."
    );
    metrics::describe_histogram!(
        "hopper_http_request_duration_seconds",
        "How long HTTP requests took to answer, by route (long-polls included)."
    );
    metrics::describe_counter!(
        "hopper_calls_total",
        "Calls started, by function and origin."
    );
    metrics::describe_counter!(
        "hopper_schedule_firings_total",
        "Schedule due times, by schedule and outcome."
    );
    metrics::describe_counter!(
        "hopper_notifications_total",
        "Notification deliveries, by channel kind and outcome."
    );
}

/// Records how long a worker process of `function` took to be ready.
pub fn startup(function: &str, ms: u64) {
    metrics::histogram!("hopper_worker_startup_seconds", "function" => function.to_string())
        .record(ms as f64 / 1000.0);
}

/// Sets whether `function` has work that no worker can take (see the provisioner).
pub fn unplaced(function: &str, waiting: bool) {
    metrics::gauge!("hopper_function_waiting_for_resources", "function" => function.to_string())
        .set(if waiting { 1.0 } else { 0.0 });
}

/// Counts a lease in which `kinds` of `function`'s limits held due inputs back.
pub fn held(function: &hopper_store::FunctionKey, kinds: &[hopper_store::LimitKind]) {
    let name = format!("{}.{}", function.app, function.function);
    for kind in kinds {
        metrics::counter!("hopper_limit_holds_total", "function" => name.clone(), "limit" => kind.name())
            .increment(1);
    }
}

/// Records what a batch of completions did: counters once per function and effect, each
/// duration in the histogram, and the batch size each input of a batched function ran with
/// (`batch_sizes`, parallel to `rows`; `None` when not batched).
pub fn completions(rows: &[hopper_store::CompletionRow], batch_sizes: &[Option<u32>]) {
    for (row, size) in rows.iter().zip(batch_sizes) {
        if let (Some(function), Some(size), true) = (row.function.as_deref(), size, row.recorded) {
            metrics::histogram!("hopper_batch_size", "function" => function.to_string())
                .record(*size as f64);
        }
    }
    let mut counts: std::collections::HashMap<(&str, &'static str), u64> =
        std::collections::HashMap::new();
    let mut durations: std::collections::HashMap<&str, Vec<f64>> = std::collections::HashMap::new();
    for row in rows {
        let Some(function) = row.function.as_deref() else {
            continue;
        };
        *counts.entry((function, row.effect)).or_default() += 1;
        if let Some(ms) = row.duration_ms {
            durations
                .entry(function)
                .or_default()
                .push(ms.max(0) as f64 / 1000.0);
        }
    }
    for ((function, effect), n) in counts {
        metrics::counter!("hopper_attempts_total", "function" => function.to_string(), "effect" => effect).increment(n);
        match effect {
            "retried" => metrics::counter!("hopper_retries_total", "function" => function.to_string()).increment(n),
            "succeeded" | "failed" => {
                metrics::counter!("hopper_inputs_total", "function" => function.to_string(), "state" => effect).increment(n)
            }
            _ => {}
        }
    }
    for (function, seconds) in durations {
        let histogram = metrics::histogram!("hopper_attempt_duration_seconds", "function" => function.to_string());
        for s in seconds {
            histogram.record(s);
        }
    }
}

/// A call started.
pub fn call_started(function: String, origin: &'static str) {
    metrics::counter!("hopper_calls_total", "function" => function, "origin" => origin)
        .increment(1);
}

/// A schedule's due time was fired, skipped or missed.
pub fn firing(schedule: String, outcome: &'static str, n: u64) {
    metrics::counter!("hopper_schedule_firings_total", "schedule" => schedule, "outcome" => outcome).increment(n);
}

/// A notification was delivered, or a delivery attempt failed.
pub fn notification(kind: String, outcome: &'static str) {
    metrics::counter!("hopper_notifications_total", "channel" => kind, "outcome" => outcome)
        .increment(1);
}

/// The text exposition: the store's gauges, read now, and everything recorded.
pub async fn render(state: &AppState) -> Result<String, hopper_store::StoreError> {
    let Some(handle) = handle() else {
        return Ok(String::new());
    };
    let mut functions: Vec<String> = Vec::new();
    let mut limited: Vec<(String, hopper_core::limits::Limits)> = Vec::new();
    for app in state.store.app_list().await? {
        functions.extend(app.functions.iter().map(|f| f.spec.qualified_name()));
        limited.extend(
            app.functions
                .iter()
                .filter(|f| f.spec.limits.any())
                .map(|f| (f.spec.qualified_name(), f.spec.limits.clone())),
        );
    }
    let backlog = state.store.function_backlog(state.now()).await?;
    // A function a deploy removed still has a queue until its inputs end.
    for b in &backlog {
        let name = format!("{}.{}", b.app, b.function);
        if !functions.contains(&name) {
            functions.push(name);
        }
    }
    let now = state.now();
    for (name, limits) in limited {
        let Some((app, function)) = name.split_once('.') else {
            continue;
        };
        let pending = backlog
            .iter()
            .any(|b| b.app == app && b.function == function && b.pending > 0);
        let mut waiting: BTreeMap<&'static str, i64> = BTreeMap::new();
        for kind in LimitKind::ALL {
            waiting.insert(kind.name(), 0);
        }
        if pending {
            let now_held = state
                .store
                .limits_state(hopper_store::LimitsRead {
                    function: hopper_store::FunctionKey {
                        app: app.to_string(),
                        function: function.to_string(),
                    },
                    limits,
                    call: None,
                    count: true,
                    now,
                })
                .await?;
            for hold in &now_held.holds {
                *waiting.entry(hold.limit.name()).or_default() += hold.waiting;
            }
        }
        for (limit, n) in waiting {
            metrics::gauge!("hopper_queue_limited", "function" => name.clone(), "limit" => limit)
                .set(n as f64);
            metrics::counter!("hopper_limit_holds_total", "function" => name.clone(), "limit" => limit)
                .increment(0);
        }
    }
    for f in &functions {
        // Every function's series exist from its deploy on, at 0 until something happens:
        // a rate or an alert over them needs no first event.
        for state in ["succeeded", "failed"] {
            metrics::counter!("hopper_inputs_total", "function" => f.clone(), "state" => state)
                .increment(0);
        }
        for origin in ["spawn", "map", "schedule", "rerun"] {
            metrics::counter!("hopper_calls_total", "function" => f.clone(), "origin" => origin)
                .increment(0);
        }
        metrics::counter!("hopper_retries_total", "function" => f.clone()).increment(0);
        let (pending, running) = backlog
            .iter()
            .find(|b| format!("{}.{}", b.app, b.function) == *f)
            .map_or((0, 0), |b| (b.pending, b.running));
        metrics::gauge!("hopper_queue_pending", "function" => f.clone()).set(pending as f64);
        metrics::gauge!("hopper_queue_running", "function" => f.clone()).set(running as f64);
    }
    let workers = state.store.worker_list(now - 3_600_000).await?;
    for s in ["active", "lost", "stopped"] {
        let n = workers
            .iter()
            .filter(|w| crate::api::views::worker(w, now, state.config.lease_ms()).state == s)
            .count();
        metrics::gauge!("hopper_workers", "state" => s).set(n as f64);
    }
    if let Some((open, idle)) = state.store.connections() {
        metrics::gauge!("hopper_database_connections", "state" => "idle").set(f64::from(idle));
        metrics::gauge!("hopper_database_connections", "state" => "in_use")
            .set(f64::from(open.saturating_sub(idle)));
    }
    let waiting = state.config.max_waiting.max(1) - state.waiting.available_permits();
    metrics::gauge!("hopper_workers_waiting").set(waiting as f64);
    for counter in [
        "hopper_server_pauses_total",
        "hopper_server_paused_seconds_total",
    ] {
        metrics::counter!(counter).increment(0);
    }
    for direction in ["forward", "backward"] {
        metrics::counter!("hopper_clock_steps_total", "direction" => direction).increment(0);
    }
    process();
    Ok(handle.render())
}

/// This process's CPU time, resident memory and open files, from `/proc/self` (Linux).
fn process() {
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // After the command's closing parenthesis: utime and stime are the 12th and 13th
        // fields, in ticks of USER_HZ (100 a second on Linux).
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
        if let (Some(user), Some(system)) = (ticks(11), ticks(12)) {
            metrics::gauge!("hopper_process_cpu_seconds").set((user + system) as f64 / 100.0);
        }
    }
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        let kib = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok());
        if let Some(kib) = kib {
            metrics::gauge!("hopper_process_resident_memory_bytes").set((kib * 1024) as f64);
        }
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        metrics::gauge!("hopper_process_open_fds").set(fds.count() as f64);
    }
}

/// An HTTP request answered: counted by route (the path as routed, `/v1/calls/{id}`), method
/// and status class, and timed by route.
pub fn http_request(route: &str, method: &str, status: u16, seconds: f64) {
    let class = match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    metrics::counter!(
        "hopper_http_requests_total",
        "route" => route.to_string(),
        "method" => method.to_string(),
        "status" => class
    )
    .increment(1);
    metrics::histogram!("hopper_http_request_duration_seconds", "route" => route.to_string())
        .record(seconds);
}
