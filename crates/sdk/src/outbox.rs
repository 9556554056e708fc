//! The outbox batches what a worker sends back: log lines and results queue here and travel
//! in groups, logs before results, so a call's logs are stored by the time its result is.

use std::time::Duration;

use crate::client::{Client, Error};
use hopper_core::api::{InputResult, LogLine};
use hopper_core::WorkerId;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Most log lines per request.
const MAX_LOG_BATCH: usize = 2_000;
/// Most results per request.
const MAX_RESULT_BATCH: usize = 500;

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
}

impl Outbox {
    /// Starts the task that sends batches for `worker` until every [`Outbox`] is dropped and
    /// the queue is empty.
    pub fn start(client: Client, worker: WorkerId) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(send_loop(client, worker, rx));
        (Self { tx }, task)
    }

    pub fn log(&self, line: LogLine) {
        let _ = self.tx.send(Item::Log(line));
    }

    pub fn result(&self, result: InputResult) {
        let _ = self.tx.send(Item::Result(result));
    }

    /// Asks the sending task to send everything queued so far and stop, even while clones of
    /// this outbox are still held (say, by a `serve` process's log reader).
    pub fn close(&self) {
        let _ = self.tx.send(Item::Close);
    }
}

async fn send_loop(client: Client, worker: WorkerId, mut rx: mpsc::UnboundedReceiver<Item>) {
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
            let batch = std::mem::take(&mut logs);
            // Logs are worth a few tries, but never worth holding results back for long.
            if let Err(e) = retry(3, || client.worker_logs(&worker, batch.clone())).await {
                tracing::warn!(error = %e, lines = batch.len(), "dropped log lines the server would not take");
            }
        }
        if !results.is_empty() {
            let batch = std::mem::take(&mut results);
            // A result is retried until the server takes it: the lease keeps the input safe
            // meanwhile, and a result that arrives too late is kept as a late attempt.
            match retry(u32::MAX, || client.worker_complete(&worker, batch.clone())).await {
                Ok(ack) => {
                    let late = ack.recorded.iter().filter(|r| !**r).count();
                    if late > 0 {
                        tracing::info!(
                            late,
                            "results arrived after their leases were lost; kept as late attempts"
                        );
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, results = batch.len(), "the server refused results")
                }
            }
        }
        if closed {
            return;
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
