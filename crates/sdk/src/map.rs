//! `map` as a stream: inputs go to the server in chunks while results come back, in input
//! order or as they finish, so neither side holds all of either.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use hopper_core::api::{InputChunk, InputError, MapRequest};
use hopper_core::{CallCounts, CallId, InputState};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{mpsc, watch};

use crate::client::{Client, Error};

/// Longest a map's inputs wait in a chunk that is not full before it is sent.
const CHUNK_WAIT: Duration = Duration::from_millis(50);

/// How a map runs.
#[derive(Debug, Clone)]
pub struct MapOptions {
    /// Results in input order (default), or as they finish.
    pub ordered: bool,
    /// A failed input yields its error in its place; otherwise the first failure ends the
    /// map, and its pending inputs are cancelled.
    pub return_exceptions: bool,
    /// Each input is a list of arguments.
    pub starmap: bool,
    /// Keep no outputs (`for_each`): results carry only success or error.
    pub discard_results: bool,
    /// Inputs per request, at most. Default 1,000. A chunk is sent when full, or 50 ms after
    /// its first input when inputs come slower than that.
    pub chunk_size: usize,
    /// Start the map this long from now (its inputs are stored at once and become due
    /// then). Default: at once.
    pub delay: Option<Duration>,
    /// Start the map at this time instead (RFC 3339, e.g. `2026-12-24T18:00:00Z`; not in the
    /// past, at most a year ahead: the server refuses it otherwise, `invalid_delay`).
    pub start_at: Option<String>,
    /// Every input's key under the function's limits (at most 200 bytes). Default: each
    /// input's own, by the function's `limits.key`.
    pub key: Option<String>,
    /// Every input's priority, -1000 to 1000 (higher runs first). Default: the function's.
    pub priority: Option<i32>,
}

impl Default for MapOptions {
    fn default() -> Self {
        Self {
            ordered: true,
            return_exceptions: false,
            starmap: false,
            discard_results: false,
            chunk_size: 1_000,
            delay: None,
            start_at: None,
            key: None,
            priority: None,
        }
    }
}

/// One input's result.
#[derive(Debug, Clone, PartialEq)]
pub struct MapItem<O> {
    pub index: i64,
    pub result: Result<O, InputError>,
}

/// Why a map stopped early.
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    #[error("input {index} failed: {}: {}", error.code, error.message)]
    InputFailed { index: i64, error: InputError },
    #[error(transparent)]
    Api(#[from] Error),
    #[error("an input cannot be written as JSON: {0}")]
    Encode(String),
    #[error("a result does not fit the output type: {0}")]
    Decode(String),
}

/// A running map: a stream of results, the call's id, and its progress.
pub struct MapRun<O> {
    pub call_id: CallId,
    progress: watch::Receiver<CallCounts>,
    results: mpsc::Receiver<Result<MapItem<O>, MapError>>,
}

impl<O> MapRun<O> {
    /// Input counts per state, updated as results arrive.
    pub fn progress(&self) -> watch::Receiver<CallCounts> {
        self.progress.clone()
    }
}

impl<O> Stream for MapRun<O> {
    type Item = Result<MapItem<O>, MapError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.results.poll_recv(cx)
    }
}

impl Client {
    /// Maps `function` over `inputs`, streaming results back.
    pub async fn map<I, O, S>(
        &self,
        function: &str,
        inputs: S,
        options: MapOptions,
    ) -> Result<MapRun<O>, MapError>
    where
        I: Serialize,
        O: DeserializeOwned + Send + 'static,
        S: Stream<Item = I> + Send + 'static,
    {
        let call = self
            .map_start(
                function,
                &MapRequest {
                    inputs: Vec::new(),
                    done: false,
                    starmap: options.starmap,
                    discard_results: options.discard_results,
                    idempotency_key: None,
                    delay: options.delay.map(hopper_core::duration::format),
                    start_at: options.start_at.clone(),
                    key: options.key.clone(),
                    priority: options.priority,
                },
            )
            .await?;
        let id = call.id.clone();
        let (tx, rx) = mpsc::channel(1_024);
        let (progress_tx, progress) = watch::channel(call.inputs);
        // The sender: chunks of inputs, then `done`.
        let sender = {
            let client = self.clone();
            let id = id.clone();
            let tx = tx.clone();
            let chunk_size = options.chunk_size.max(1);
            let inputs = inputs
                .map(|i| serde_json::to_value(i).map_err(|e| MapError::Encode(e.to_string())));
            tokio::spawn(async move {
                let mut inputs = std::pin::pin!(inputs);
                let mut start = 0i64;
                let mut ended = false;
                while !ended {
                    // A chunk is sent when full, or CHUNK_WAIT after its first input: inputs
                    // that trickle in (a pipe, a slow producer) start without waiting for more.
                    let Some(first) = inputs.next().await else {
                        break;
                    };
                    let mut chunk = vec![first];
                    let deadline = tokio::time::Instant::now() + CHUNK_WAIT;
                    while chunk.len() < chunk_size {
                        match tokio::time::timeout_at(deadline, inputs.next()).await {
                            Ok(Some(input)) => chunk.push(input),
                            Ok(None) => {
                                ended = true;
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    let chunk: Result<Vec<Value>, MapError> = chunk.into_iter().collect();
                    let chunk = match chunk {
                        Ok(c) => c,
                        Err(e) => {
                            let _ = tx.send(Err(e)).await;
                            let _ = client.cancel(&id).await;
                            return;
                        }
                    };
                    let n = chunk.len() as i64;
                    let body = InputChunk {
                        start,
                        inputs: chunk,
                        done: false,
                    };
                    if let Err(e) = retry(|| client.map_append(&id, &body)).await {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                    start += n;
                }
                let done = InputChunk {
                    start,
                    inputs: Vec::new(),
                    done: true,
                };
                if let Err(e) = retry(|| client.map_append(&id, &done)).await {
                    let _ = tx.send(Err(e.into())).await;
                }
            })
        };
        let client = self.clone();
        let reader_id = id.clone();
        tokio::spawn(async move {
            let start = if options.ordered { -1 } else { 0 };
            let outcome =
                read_results(&client, &reader_id, &options, start, &tx, &progress_tx).await;
            if let Err(e) = outcome {
                sender.abort();
                if matches!(e, MapError::InputFailed { .. }) {
                    let _ = client.cancel(&reader_id).await;
                }
                let _ = tx.send(Err(e)).await;
            }
        });
        Ok(MapRun {
            call_id: id,
            progress,
            results: rx,
        })
    }

    /// Streams the results of an existing map from a cursor: `after` is the last index
    /// received (ordered; -1 for all) or the last completion position (unordered; 0 for all).
    pub fn map_results<O: DeserializeOwned + Send + 'static>(
        &self,
        id: &CallId,
        options: MapOptions,
        after: i64,
    ) -> MapRun<O> {
        let (tx, rx) = mpsc::channel(1_024);
        let (progress_tx, progress) = watch::channel(CallCounts::default());
        let client = self.clone();
        let reader_id = id.clone();
        tokio::spawn(async move {
            if let Err(e) =
                read_results(&client, &reader_id, &options, after, &tx, &progress_tx).await
            {
                let _ = tx.send(Err(e)).await;
            }
        });
        MapRun {
            call_id: id.clone(),
            progress,
            results: rx,
        }
    }
}

async fn read_results<O: DeserializeOwned>(
    client: &Client,
    id: &CallId,
    options: &MapOptions,
    start: i64,
    tx: &mpsc::Sender<Result<MapItem<O>, MapError>>,
    progress: &watch::Sender<CallCounts>,
) -> Result<(), MapError> {
    let mut after = if options.ordered {
        start.max(-1)
    } else {
        start.max(0)
    };
    loop {
        let page =
            retry(|| client.results(id, options.ordered, after, Duration::from_secs(20))).await?;
        let _ = progress.send(page.call.inputs);
        for r in page.results {
            let result = match (r.state, r.error) {
                (InputState::Succeeded, _) => {
                    let value = r.output.unwrap_or(Value::Null);
                    Ok(serde_json::from_value(value)
                        .map_err(|e| MapError::Decode(format!("input {}: {e}", r.index)))?)
                }
                (_, error) => Err(error.unwrap_or(InputError::new(
                    r.state.as_str(),
                    format!("the input was {}", r.state),
                ))),
            };
            if let Err(error) = &result {
                if !options.return_exceptions {
                    return Err(MapError::InputFailed {
                        index: r.index,
                        error: error.clone(),
                    });
                }
            }
            if tx
                .send(Ok(MapItem {
                    index: r.index,
                    result,
                }))
                .await
                .is_err()
            {
                return Ok(());
            }
        }
        after = page.next;
        if page.done {
            return Ok(());
        }
    }
}

/// Retries transient failures (the server restarting, a dropped connection) a few times.
async fn retry<T, F, Fut>(mut call: F) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let mut delay = Duration::from_millis(100);
    for _ in 0..20 {
        match call().await {
            Err(e) if crate::outbox::is_transient(&e) => {
                tracing::debug!(error = %e, "map request failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(3));
            }
            other => return other,
        }
    }
    call().await
}
