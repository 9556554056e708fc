//! The outbox batches what a worker sends back: log lines and results queue here and travel
//! in groups, logs before results, so a call's logs are stored by the time its result is.
//!
//! Every request is sized to fit the server's limits: a batch closes before its body would
//! pass the largest request the server reads, an output over the largest payload it keeps is
//! reported as the failure `output_too_large` instead, and a log line over [`MAX_LOG_LINE`]
//! bytes is cut with a marker. Log lines the server would not take are counted, and a
//! `system` line on each attempt says how many were lost.

use std::collections::HashMap;
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
}

impl From<&WorkerRegistered> for Limits {
    fn from(r: &WorkerRegistered) -> Self {
        Self {
            max_payload: r.max_payload_bytes.map(|b| b as usize),
            max_request: r.max_request_bytes.map(|b| b as usize),
        }
    }
}

enum Item {
    Log(LogLine),
    Result(InputResult),
    /// Send what came before, then stop.
    Close,
}

/// The sending side; cheap to clone into every running input.
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::UnboundedSender<Item>,
    limits: Limits,
}

impl Outbox {
    /// Starts the task that sends batches for `worker` until every [`Outbox`] is dropped and
    /// the queue is empty.
    pub fn start(client: Client, worker: WorkerId, limits: Limits) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(send_loop(client, worker, limits, rx));
        (Self { tx, limits }, task)
    }

    pub fn log(&self, mut line: LogLine) {
        cut(&mut line.line);
        let _ = self.tx.send(Item::Log(line));
    }

    /// Queues a result; an output over the server's payload limit becomes the failure
    /// `output_too_large` (not retried: the same input would give the same output).
    pub fn result(&self, mut result: InputResult) {
        if let Outcome::Succeeded { output } = &result.outcome {
            let depth = hopper_core::json::depth(output);
            if depth > hopper_core::json::MAX_DEPTH {
                result.outcome = Outcome::Failed {
                    error: InputError {
                        code: "bad_output".into(),
                        message: format!(
                            "the output nests {depth} levels deep; outputs may nest at most {} levels",
                            hopper_core::json::MAX_DEPTH
                        ),
                    },
                    retry: false,
                };
            }
        }
        if let (Outcome::Succeeded { output }, Some(limit)) =
            (&result.outcome, self.limits.max_payload)
        {
            let size = json_size(output);
            if size > limit {
                result.outcome = Outcome::Failed {
                    error: InputError {
                        code: "output_too_large".into(),
                        message: format!(
                            "the output is {size} bytes of JSON, over the server's limit of {limit} bytes (--max-payload); write large output elsewhere and return where it is"
                        ),
                    },
                    retry: false,
                };
            }
        }
        let _ = self.tx.send(Item::Result(result));
    }

    /// Asks the sending task to send everything queued so far and stop, even while clones of
    /// this outbox are still held (say, by a `serve` process's log reader).
    pub fn close(&self) {
        let _ = self.tx.send(Item::Close);
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

async fn send_loop(
    client: Client,
    worker: WorkerId,
    limits: Limits,
    mut rx: mpsc::UnboundedReceiver<Item>,
) {
    let mut logs = Vec::new();
    let mut results = Vec::new();
    let mut closed = false;
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(item) = next.take() {
            match item {
                Item::Log(l) => logs.push(l),
                Item::Result(r) => results.push(r),
                Item::Close => {
                    closed = true;
                    break;
                }
            }
            if logs.len() >= MAX_LOG_BATCH || results.len() >= MAX_RESULT_BATCH {
                break;
            }
            next = rx.try_recv().ok();
        }
        if !logs.is_empty() {
            send_logs(&client, &worker, limits, std::mem::take(&mut logs)).await;
        }
        if !results.is_empty() {
            for batch in chunks(
                std::mem::take(&mut results),
                MAX_RESULT_BATCH,
                limits.max_request,
            ) {
                send_results(&client, &worker, batch).await;
            }
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

/// Errors worth trying again: the server or its database is briefly unavailable.
pub fn is_transient(e: &Error) -> bool {
    match e {
        // 507: the server's disk is full; what it was sent is kept once space comes back.
        Error::Api { status, .. } => matches!(*status, 502 | 503 | 504 | 507),
        Error::Unreachable { .. } | Error::Transport(_) => true,
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
