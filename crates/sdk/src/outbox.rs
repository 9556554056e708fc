//! The outbox batches what a worker sends back: log lines and results queue here and travel
//! in groups, logs before results, so a call's logs are stored by the time its result is.
//!
//! Every request is sized to fit the server's limits: a batch closes before its body would
//! pass the largest request the server reads, an output over the largest payload it keeps is
//! reported as the failure `output_too_large` instead, and a log line over [`MAX_LOG_LINE`]
//! bytes is cut with a marker. Log lines the server would not take are counted, and a
//! `system` line on each attempt says how many were lost; so are lines past the server's cap
//! per attempt, dropped here rather than sent. Log lines and results travel on two tasks, so
//! a result waits only for its own attempt's lines, and the bytes of lines queued are bounded
//! (see [`Outbox`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::client::{Client, Error};
use hopper_core::api::{
    InputError, InputResult, Lease, LogLine, LogStream, Outcome, WorkerRegistered,
};
use hopper_core::WorkerId;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Most log lines per request.
const MAX_LOG_BATCH: usize = 2_000;
/// Most results per request.
const MAX_RESULT_BATCH: usize = 500;
/// Longest log line kept, in bytes; a longer one is cut and ends with [`CUT_MARKER`].
pub const MAX_LOG_LINE: usize = 16 * 1024;
/// What a cut log line ends with.
pub const CUT_MARKER: &str = " …[line cut]";
/// Room left in every request for its JSON envelope.
const ENVELOPE: usize = 4 * 1024;

/// What the server takes, from its answer to the worker's registration.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest output kept, in bytes of JSON.
    pub max_payload: Option<usize>,
    /// Largest request body read, in bytes.
    pub max_request: Option<usize>,
    /// Log lines kept per attempt; the outbox drops the rest.
    pub max_log_lines: Option<u32>,
}

impl From<&WorkerRegistered> for Limits {
    fn from(r: &WorkerRegistered) -> Self {
        Self {
            max_payload: r.max_payload_bytes.map(|b| b as usize),
            max_request: r.max_request_bytes.map(|b| b as usize),
            max_log_lines: r.max_log_lines_per_attempt,
        }
    }
}

/// Bytes of log lines a worker holds before the readers of its functions' output wait (so a
/// function that prints without end is slowed to what the server takes, not buffered).
pub const MAX_QUEUED_LOG_BYTES: usize = 8 * 1024 * 1024;
/// What a queued line costs beyond its text (its lease, stream, time and allocation).
const LINE_OVERHEAD: usize = 64;

/// What the outbox knows of one attempt's log.
#[derive(Debug, Default)]
struct Tally {
    /// Lines queued or sent.
    kept: u32,
    /// Lines dropped past the server's cap.
    dropped: u64,
}

/// The state the two sending tasks and every sender share.
#[derive(Default)]
struct Books {
    /// Bytes of lines queued and not yet handled.
    queued_bytes: usize,
    /// Per attempt: lines kept and dropped, until its result.
    tallies: HashMap<Lease, Tally>,
    /// Per attempt: lines queued and not yet handled (its result waits for them).
    pending: HashMap<Lease, usize>,
}

struct Shared {
    books: std::sync::Mutex<Books>,
    /// Bumped whenever the log task handled lines: readers waiting for room and results
    /// waiting for their logs look again.
    handled: tokio::sync::watch::Sender<u64>,
}

impl Shared {
    fn books(&self) -> std::sync::MutexGuard<'_, Books> {
        self.books.lock().unwrap_or_else(|p| p.into_inner())
    }
}

enum Item<T> {
    Send(T),
    /// Send what came before, then stop.
    Close,
}

/// The sending side; cheap to clone into every running input.
///
/// Memory is bounded whatever a function prints: lines past the server's cap per attempt are
/// dropped here and counted (one `system` line before the attempt's result says how many),
/// and once [`MAX_QUEUED_LOG_BYTES`] are queued the readers of the functions' output wait in
/// [`Outbox::room`]. Results go on their own task: one waits only until its own attempt's
/// lines are sent, so behind at most [`MAX_QUEUED_LOG_BYTES`] of other attempts' lines.
#[derive(Clone)]
pub struct Outbox {
    logs: mpsc::UnboundedSender<Item<LogLine>>,
    results: mpsc::UnboundedSender<Item<InputResult>>,
    shared: Arc<Shared>,
    limits: Limits,
}

impl Outbox {
    /// Starts the tasks that send batches for `worker` until [`Outbox::close`] is called or
    /// every [`Outbox`] is dropped, and the queues are empty.
    pub fn start(client: Client, worker: WorkerId, limits: Limits) -> (Self, JoinHandle<()>) {
        let (logs, log_rx) = mpsc::unbounded_channel();
        let (results, result_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            books: std::sync::Mutex::default(),
            handled: tokio::sync::watch::Sender::new(0),
        });
        let log_task = tokio::spawn(log_loop(
            client.clone(),
            worker.clone(),
            limits,
            log_rx,
            shared.clone(),
        ));
        let result_task = tokio::spawn(result_loop(
            client,
            worker,
            limits,
            result_rx,
            shared.clone(),
        ));
        let task = tokio::spawn(async move {
            let _ = result_task.await;
            let _ = log_task.await;
        });
        (
            Self {
                logs,
                results,
                shared,
                limits,
            },
            task,
        )
    }

    /// Queues a log line (cut to [`MAX_LOG_LINE`] bytes); a line past the server's cap for
    /// its attempt is dropped and counted instead.
    pub fn log(&self, mut line: LogLine) {
        cut(&mut line.line);
        {
            let mut books = self.shared.books();
            let tally = books.tallies.entry(line.lease).or_default();
            if self
                .limits
                .max_log_lines
                .is_some_and(|cap| tally.kept >= cap)
            {
                tally.dropped += 1;
                return;
            }
            tally.kept += 1;
            books.queued_bytes += line.line.len() + LINE_OVERHEAD;
            *books.pending.entry(line.lease).or_default() += 1;
        }
        let _ = self.logs.send(Item::Send(line));
    }

    /// Waits while more than [`MAX_QUEUED_LOG_BYTES`] of log lines are queued: readers of a
    /// function's output call it after each line, so a function that prints faster than the
    /// server takes its lines is slowed down (its pipe fills) instead of filling memory.
    pub async fn room(&self) {
        let mut handled = self.shared.handled.subscribe();
        while self.shared.books().queued_bytes > MAX_QUEUED_LOG_BYTES {
            if handled.changed().await.is_err() {
                return; // the log task is gone: nothing will be sent, nothing to wait for
            }
        }
    }

    /// Forgets an attempt that ends without a result (its lease was lost or its call
    /// cancelled).
    pub fn forget(&self, lease: Lease) {
        self.shared.books().tallies.remove(&lease);
    }

    /// Queues a result; an output over the server's payload limit becomes the failure
    /// `output_too_large` (not retried: the same input would give the same output). It is
    /// sent once the lines its attempt logged before it are, after one `system` line saying
    /// how many lines were dropped past the cap, if any were.
    pub fn result(&self, mut result: InputResult) {
        check_output(&mut result, self.limits);
        let tally = self.shared.books().tallies.remove(&result.lease);
        if let (Some(tally), Some(cap)) = (tally, self.limits.max_log_lines) {
            if tally.dropped > 0 {
                {
                    let mut books = self.shared.books();
                    books.queued_bytes += LINE_OVERHEAD;
                    *books.pending.entry(result.lease).or_default() += 1;
                }
                let _ = self.logs.send(Item::Send(LogLine {
                    lease: result.lease,
                    stream: LogStream::System,
                    ts_ms: crate::runtime::now_ms(),
                    line: format!(
                        "[hopper] this attempt's log reached its cap of {cap} lines; {} later lines were dropped",
                        tally.dropped
                    ),
                }));
            }
        }
        let _ = self.results.send(Item::Send(result));
    }

    /// Asks the sending tasks to send everything queued so far and stop, even while clones of
    /// this outbox are still held (say, by a `serve` process's log reader).
    pub fn close(&self) {
        let _ = self.logs.send(Item::Close);
        let _ = self.results.send(Item::Close);
    }
}

/// An output the server would refuse becomes a failure here: too deep, or over the server's
/// payload limit.
fn check_output(result: &mut InputResult, limits: Limits) {
    // An error's message and traceback within their bounds, so a huge one cannot make the
    // whole batch too large to send (the server would refuse it again and again).
    if let Outcome::Failed { error, .. } | Outcome::Returned { error } = &mut result.outcome {
        *error = std::mem::take(error).bounded();
    }
    if let Outcome::Succeeded { output } = &result.outcome {
        let depth = hopper_core::json::depth(output);
        if depth > hopper_core::json::MAX_DEPTH {
            result.outcome = Outcome::Failed {
                error: InputError::new(
                    "bad_output",
                    format!(
                        "the output nests {depth} levels deep; outputs may nest at most {} levels",
                        hopper_core::json::MAX_DEPTH
                    ),
                ),
                retry: false,
            };
        }
    }
    if let (Outcome::Succeeded { output }, Some(limit)) = (&result.outcome, limits.max_payload) {
        let size = json_size(output);
        if size > limit {
            result.outcome = Outcome::Failed {
                error: InputError::new("output_too_large", format!(
                        "the output is {size} bytes of JSON, over the server's limit of {limit} bytes (--max-payload); write large output elsewhere and return where it is"
                    )),
                retry: false,
            };
        }
    }
}

/// Cuts a line longer than [`MAX_LOG_LINE`] bytes at a character boundary, with a marker.
fn cut(line: &mut String) {
    if line.len() > MAX_LOG_LINE {
        let mut end = MAX_LOG_LINE;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
        line.push_str(CUT_MARKER);
        // What was cut is given back, so a queued line costs what it holds.
        line.shrink_to_fit();
    }
}

fn json_size<T: serde::Serialize>(value: &T) -> usize {
    serde_json::to_vec(value).map_or(usize::MAX, |v| v.len())
}

/// Splits `items` into requests of at most `max_items` and, with a limit, at most `max_bytes`
/// of JSON each (an item alone over the limit still goes, alone).
fn chunks<T: serde::Serialize>(
    items: Vec<T>,
    max_items: usize,
    max_bytes: Option<usize>,
) -> Vec<Vec<T>> {
    let budget = max_bytes.map(|b| b.saturating_sub(ENVELOPE).max(1));
    let mut out = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0;
    for item in items {
        let size = budget.map_or(0, |_| json_size(&item) + 1);
        let full = current.len() >= max_items || budget.is_some_and(|b| bytes + size > b);
        if full && !current.is_empty() {
            out.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += size;
        current.push(item);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// Takes up to `max` items that are ready now, starting with `first`; whether `Close` came.
fn drain<T>(
    first: Item<T>,
    rx: &mut mpsc::UnboundedReceiver<Item<T>>,
    max: usize,
    into: &mut Vec<T>,
) -> bool {
    let mut next = Some(first);
    while let Some(item) = next.take() {
        match item {
            Item::Send(x) => into.push(x),
            Item::Close => return true,
        }
        if into.len() >= max {
            break;
        }
        next = rx.try_recv().ok();
    }
    false
}

async fn log_loop(
    client: Client,
    worker: WorkerId,
    limits: Limits,
    mut rx: mpsc::UnboundedReceiver<Item<LogLine>>,
    shared: Arc<Shared>,
) {
    while let Some(first) = rx.recv().await {
        let mut lines = Vec::new();
        let closed = drain(first, &mut rx, MAX_LOG_BATCH, &mut lines);
        let handled: Vec<(Lease, usize)> = lines
            .iter()
            .map(|l| (l.lease, l.line.len() + LINE_OVERHEAD))
            .collect();
        if !lines.is_empty() {
            send_logs(&client, &worker, limits, lines).await;
        }
        {
            let mut books = shared.books();
            for (lease, bytes) in handled {
                books.queued_bytes = books.queued_bytes.saturating_sub(bytes);
                if let Some(n) = books.pending.get_mut(&lease) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        books.pending.remove(&lease);
                    }
                }
            }
        }
        shared.handled.send_modify(|n| *n += 1);
        if closed {
            return;
        }
    }
}

async fn result_loop(
    client: Client,
    worker: WorkerId,
    limits: Limits,
    mut rx: mpsc::UnboundedReceiver<Item<InputResult>>,
    shared: Arc<Shared>,
) {
    let mut handled = shared.handled.subscribe();
    while let Some(first) = rx.recv().await {
        let mut results = Vec::new();
        let closed = drain(first, &mut rx, MAX_RESULT_BATCH, &mut results);
        // A result goes after the lines its attempt logged before it.
        loop {
            let waiting = {
                let books = shared.books();
                results.iter().any(|r| books.pending.contains_key(&r.lease))
            };
            if !waiting || handled.changed().await.is_err() {
                break;
            }
        }
        for batch in chunks(results, MAX_RESULT_BATCH, limits.max_request) {
            send_results(&client, &worker, batch).await;
        }
        if closed {
            return;
        }
    }
}

async fn send_logs(client: &Client, worker: &WorkerId, limits: Limits, lines: Vec<LogLine>) {
    let mut lost: HashMap<Lease, (usize, String)> = HashMap::new();
    for batch in chunks(lines, MAX_LOG_BATCH, limits.max_request) {
        // Logs are worth a few tries, but never worth holding results back for long.
        if let Err(e) = retry(3, || client.worker_logs(worker, batch.clone())).await {
            tracing::warn!(error = %e, lines = batch.len(), "the server would not take log lines");
            for line in &batch {
                let entry = lost.entry(line.lease).or_insert((0, e.to_string()));
                entry.0 += 1;
            }
        }
    }
    if lost.is_empty() {
        return;
    }
    // Say on each attempt how many of its lines were lost (one try: this is the last word).
    let notes: Vec<LogLine> = lost
        .into_iter()
        .map(|(lease, (n, why))| LogLine {
            lease,
            stream: LogStream::System,
            ts_ms: crate::runtime::now_ms(),
            line: format!("[hopper] {n} log lines of this attempt could not be stored: {why}"),
        })
        .collect();
    if let Err(e) = client.worker_logs(worker, notes).await {
        tracing::warn!(error = %e, "could not record that log lines were lost");
    }
}

async fn send_results(client: &Client, worker: &WorkerId, batch: Vec<InputResult>) {
    // A result is retried until the server takes it: the lease keeps the input safe meanwhile,
    // and a result that arrives too late is kept as a late attempt.
    match retry(u32::MAX, || client.worker_complete(worker, batch.clone())).await {
        Ok(ack) => {
            let late = ack.recorded.iter().filter(|r| !**r).count();
            if late > 0 {
                tracing::info!(
                    late,
                    "results arrived after their leases were lost; kept as late attempts"
                );
            }
        }
        // One result the server refuses (a lease this worker no longer holds, after it was
        // forgotten and registered again) must not cost the others: send them one by one.
        Err(Error::Api { status: 409, .. }) if batch.len() > 1 => {
            for result in batch {
                Box::pin(send_results(client, worker, vec![result])).await;
            }
        }
        Err(e) => {
            tracing::error!(error = %e, results = batch.len(), "the server refused results")
        }
    }
}

/// Retries transport failures with backoff; an error answered by the server is final.
async fn retry<T, F, Fut>(tries: u32, mut call: F) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let mut delay = Duration::from_millis(50);
    let mut attempt = 0;
    loop {
        attempt += 1;
        match call().await {
            Ok(v) => return Ok(v),
            Err(e @ Error::Api { .. }) if !is_transient(&e) => return Err(e),
            Err(e) if attempt >= tries => return Err(e),
            Err(e) => {
                tracing::debug!(error = %e, "send failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// `op`, tried again with a pause that doubles (from 250 ms to 5 s) while its error is
/// [`is_transient`] (the server restarting, its database away), for up to `patience`; then
/// its last answer. Blob transfers use it: a restart of the server fails none of them.
pub async fn patiently<T, F, Fut>(patience: std::time::Duration, mut op: F) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let started = tokio::time::Instant::now();
    let mut pause = std::time::Duration::from_millis(250);
    loop {
        match op().await {
            Err(e) if is_transient(&e) && started.elapsed() + pause < patience => {
                tracing::warn!(error = %e, retry_in = ?pause, "a transfer failed; trying again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(5));
            }
            other => return other,
        }
    }
}

/// Errors worth trying again: the server or its database is briefly unavailable.
pub fn is_transient(e: &Error) -> bool {
    match e {
        // 507: the server's disk is full; what it was sent is kept once space comes back.
        Error::Api { status, .. } => matches!(*status, 502 | 503 | 504 | 507),
        Error::Unreachable { .. } | Error::Transport(_) => true,
        Error::File(_) | Error::Corrupt(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_cut_to_fit_the_server() {
        let items: Vec<String> = (0..10).map(|_| "x".repeat(1_000)).collect();
        let by_count = chunks(items.clone(), 4, None);
        assert_eq!(by_count.iter().map(Vec::len).collect::<Vec<_>>(), [4, 4, 2]);
        let by_size = chunks(items, 100, Some(ENVELOPE + 2_500));
        assert_eq!(
            by_size.iter().map(Vec::len).collect::<Vec<_>>(),
            [2, 2, 2, 2, 2]
        );
        let alone = chunks(vec!["y".repeat(10_000)], 10, Some(ENVELOPE + 100));
        assert_eq!(alone.len(), 1, "an item over the limit still goes, alone");
    }

    #[test]
    fn long_lines_are_cut_with_a_marker() {
        let mut line = "é".repeat(MAX_LOG_LINE);
        cut(&mut line);
        assert!(line.ends_with(CUT_MARKER));
        assert!(line.len() <= MAX_LOG_LINE + CUT_MARKER.len());
    }
}
