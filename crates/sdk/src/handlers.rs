//! In-process handlers: a Rust program serves an app's functions with async closures.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use hopper_sdk::{Client, Worker};
//! let client = Client::new("http://127.0.0.1:7433", None)?;
//! let worker = Worker::new(client, "shop")
//!     .function("double", |n: i64| async move { Ok::<_, String>(n * 2) })
//!     .batched("embed", 64, std::time::Duration::from_millis(50), |texts: Vec<String>| async move {
//!         texts.into_iter().map(|t| Ok::<_, String>(t.len())).collect::<Vec<_>>()
//!     });
//! worker.deploy().await?;                                    // registers the app and its functions
//! worker.run(tokio_util::sync::CancellationToken::new()).await?;  // serves until cancelled
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use hopper_core::api::{AppView, DeployRequest, InputError, LogStream, Outcome};
use hopper_core::FunctionSpec;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::client::{Client, Error};
use crate::runtime::{self, Executor, Job, LogSink, WorkerConfig, WorkerError};

/// What a handler returns on failure: any error, shown by its `Display`.
#[derive(Debug, Clone)]
pub struct HandlerError {
    pub code: String,
    pub message: String,
}

type Single = Arc<dyn Fn(Value) -> BoxFuture<'static, Result<Value, HandlerError>> + Send + Sync>;
type Batched =
    Arc<dyn Fn(Vec<Value>) -> BoxFuture<'static, Vec<Result<Value, HandlerError>>> + Send + Sync>;

enum Handler {
    Single(Single),
    Batched(Batched),
}

/// Policy of one function, declared by the program that serves it.
#[derive(Debug, Clone)]
pub struct FunctionOptions {
    pub timeout: Duration,
    pub max_retries: u32,
    pub concurrency: u32,
    pub batch: Option<(u32, Duration)>,
}

impl Default for FunctionOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(300),
            max_retries: 0,
            concurrency: 16,
            batch: None,
        }
    }
}

/// A worker whose functions are async Rust closures.
pub struct Worker {
    client: Client,
    app: String,
    functions: Vec<(String, FunctionOptions, Handler)>,
    drain: Duration,
}

fn decode<T: DeserializeOwned>(input: Value) -> Result<T, HandlerError> {
    serde_json::from_value(input).map_err(|e| HandlerError {
        code: "bad_input".into(),
        message: format!("the input does not fit the handler's type: {e}"),
    })
}

fn encode<T: Serialize, E: Display>(result: Result<T, E>) -> Result<Value, HandlerError> {
    match result {
        Ok(v) => serde_json::to_value(v).map_err(|e| HandlerError {
            code: "bad_output".into(),
            message: format!("the output cannot be written as JSON: {e}"),
        }),
        Err(e) => Err(HandlerError {
            code: "error".into(),
            message: e.to_string(),
        }),
    }
}

impl Worker {
    /// A worker for the functions of `app`.
    pub fn new(client: Client, app: &str) -> Self {
        Self {
            client,
            app: app.to_string(),
            functions: Vec::new(),
            drain: Duration::from_secs(30),
        }
    }

    /// Serves `name` one input at a time (up to its concurrency at once).
    pub fn function<I, O, E, F, Fut>(self, name: &str, handler: F) -> Self
    where
        I: DeserializeOwned + Send + 'static,
        O: Serialize + Send + 'static,
        E: Display + Send + 'static,
        F: Fn(I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, E>> + Send + 'static,
    {
        self.function_with(name, FunctionOptions::default(), handler)
    }

    /// [`Worker::function`] with a policy.
    pub fn function_with<I, O, E, F, Fut>(
        mut self,
        name: &str,
        options: FunctionOptions,
        handler: F,
    ) -> Self
    where
        I: DeserializeOwned + Send + 'static,
        O: Serialize + Send + 'static,
        E: Display + Send + 'static,
        F: Fn(I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, E>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let single: Single = Arc::new(move |input: Value| {
            let handler = handler.clone();
            async move {
                let input: I = decode(input)?;
                encode(handler(input).await)
            }
            .boxed()
        });
        self.functions
            .push((name.to_string(), options, Handler::Single(single)));
        self
    }

    /// Serves `name` in batches of up to `max_size` inputs, waiting at most `wait` to fill
    /// one. The handler returns one result per input, in order.
    pub fn batched<I, O, E, F, Fut>(
        mut self,
        name: &str,
        max_size: u32,
        wait: Duration,
        handler: F,
    ) -> Self
    where
        I: DeserializeOwned + Send + 'static,
        O: Serialize + Send + 'static,
        E: Display + Send + 'static,
        F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<Result<O, E>>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let batched: Batched = Arc::new(move |inputs: Vec<Value>| {
            let handler = handler.clone();
            async move {
                let n = inputs.len();
                let mut decoded = Vec::with_capacity(n);
                for input in inputs {
                    match decode::<I>(input) {
                        Ok(v) => decoded.push(v),
                        Err(e) => return vec![Err(e); n],
                    }
                }
                let results = handler(decoded).await;
                if results.len() != n {
                    let e = HandlerError {
                        code: "bad_output".into(),
                        message: format!(
                            "the batch handler returned {} results for {n} inputs",
                            results.len()
                        ),
                    };
                    return vec![Err(e); n];
                }
                results.into_iter().map(encode).collect()
            }
            .boxed()
        });
        let options = FunctionOptions {
            batch: Some((max_size.max(1), wait)),
            ..FunctionOptions::default()
        };
        self.functions
            .push((name.to_string(), options, Handler::Batched(batched)));
        self
    }

    /// How long running inputs get to finish once a stop is asked for. Default 30 s.
    pub fn drain(mut self, drain: Duration) -> Self {
        self.drain = drain;
        self
    }

    /// The manifest that declares this worker's functions as `external`.
    pub fn manifest(&self) -> String {
        let mut text = format!("app = {:?}\n", self.app);
        for (name, o, _) in &self.functions {
            text.push_str(&format!(
                "\n[functions.{name}]\nexternal = true\ntimeout = \"{}ms\"\nretries = {}\nconcurrency = {}\nmin_workers = 0\n",
                o.timeout.as_millis().max(1),
                o.max_retries,
                o.concurrency.max(1)
            ));
            if let Some((size, wait)) = o.batch {
                text.push_str(&format!(
                    "batch = {{ max_size = {size}, wait = \"{}ms\" }}\n",
                    wait.as_millis()
                ));
            }
        }
        text
    }

    /// Deploys the app with this worker's functions (a new version).
    pub async fn deploy(&self) -> Result<AppView, Error> {
        self.client
            .deploy(&DeployRequest {
                manifest: self.manifest(),
                file: format!("<{} worker>", self.app),
                base_dir: "/".into(),
                snapshot: None,
                snapshot_root: None,
            })
            .await
    }

    /// Serves the functions until `shutdown` is cancelled.
    pub async fn run(
        self,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Result<(), WorkerError> {
        let names: Vec<String> = self
            .functions
            .iter()
            .map(|(n, _, _)| format!("{}.{n}", self.app))
            .collect();
        let slots: u32 = self
            .functions
            .iter()
            .map(|(_, o, _)| o.concurrency.max(1) * o.batch.map_or(1, |(size, _)| size))
            .sum();
        let config = WorkerConfig {
            server: self.client.server_list(),
            token: self.client.token().map(|t| t.to_string().into()),
            functions: names,
            concurrency: slots.max(1),
            host: "in-process".into(),
            drain: self.drain,
            machine: None,
        };
        let handlers: HashMap<String, Handler> =
            self.functions.into_iter().map(|(n, _, h)| (n, h)).collect();
        let executor = Arc::new(Handlers(Arc::new(handlers)));
        runtime::run(config, executor, shutdown).await
    }
}

struct Handlers(Arc<HashMap<String, Handler>>);

fn outcome(result: Result<Value, HandlerError>) -> Outcome {
    match result {
        Ok(output) => Outcome::Succeeded { output },
        Err(e) => Outcome::Failed {
            retry: true,
            error: InputError::new(e.code, e.message),
        },
    }
}

fn timed_out(timeout: Duration) -> Outcome {
    Outcome::Failed {
        retry: true,
        error: InputError::new(
            "timeout",
            format!("timed out after {}", hopper_core::duration::format(timeout)),
        ),
    }
}

impl Executor for Handlers {
    fn run(
        &self,
        spec: Arc<FunctionSpec>,
        jobs: Vec<Job>,
        logs: LogSink,
    ) -> BoxFuture<'static, Vec<Option<Outcome>>> {
        let handlers = self.0.clone();
        async move {
            let timeout = Duration::from_millis(spec.timeout_ms);
            let Some(handler) = handlers.get(&spec.name) else {
                let message = format!("this worker has no handler for {}", spec.qualified_name());
                return jobs
                    .iter()
                    .map(|_| {
                        Some(Outcome::Failed {
                            retry: true,
                            error: InputError::new("no_handler", message.clone()),
                        })
                    })
                    .collect();
            };
            match handler {
                Handler::Single(f) => {
                    let mut out = Vec::with_capacity(jobs.len());
                    for job in jobs {
                        let run = tokio::time::timeout(timeout, f(job.input));
                        let result = tokio::select! {
                            r = run => Some(match r {
                                Ok(r) => outcome(r),
                                Err(_) => timed_out(timeout),
                            }),
                            _ = job.cancel.cancelled() => None,
                        };
                        if let Some(Outcome::Failed { error, .. }) = &result {
                            logs.line(
                                job.lease,
                                LogStream::System,
                                format!("{}: {}", error.code, error.message),
                            );
                        }
                        out.push(result);
                    }
                    out
                }
                Handler::Batched(f) => {
                    let n = jobs.len();
                    let inputs: Vec<Value> = jobs.iter().map(|j| j.input.clone()).collect();
                    match tokio::time::timeout(timeout, f(inputs)).await {
                        Ok(results) => results.into_iter().map(|r| Some(outcome(r))).collect(),
                        Err(_) => (0..n).map(|_| Some(timed_out(timeout))).collect(),
                    }
                }
            }
        }
        .boxed()
    }
}
