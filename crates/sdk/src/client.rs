//! The client of Hopper's HTTP API.
//!
//! [`Client`] covers the user API (deploy, spawn, get with wait, cancel, list calls, logs) and
//! the worker protocol (register, lease, heartbeat, complete, logs). It depends on the shared
//! wire types of `hopper-core` only, never on a store or the server.
//! [`Error`] is an API error with its stable code, or a transport failure.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hopper_core::api::*;
use hopper_core::secret::Redacted;
use hopper_core::{CallId, WorkerId};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

/// What went wrong talking to a server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with an error.
    #[error("{message} ({code}, HTTP {status})")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    /// The server (or, given several, none of them) could be reached; `url` names each tried.
    #[error("cannot reach the Hopper server at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// Anything else on the way: a broken connection, a timeout, an answer that is not JSON.
    #[error("talking to the Hopper server failed: {0}")]
    Transport(String),
    /// A local file a blob is read from or written to (its path and the error).
    #[error("{0}")]
    File(String),
    /// A blob whose bytes do not match its digest.
    #[error("{0}")]
    Corrupt(String),
}

impl Error {
    /// The API error code, if the server answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// Filters for [`Client::calls`].
#[derive(Debug, Clone, Default, Serialize)]
pub struct CallFilter {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Only calls made at or after this time: RFC 3339, or a duration ago (`1h`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Only calls made before this time: RFC 3339, or a duration ago.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
}

/// Filters for [`Client::failed_inputs`].
#[derive(Debug, Clone, Default, Serialize)]
pub struct InputFilter {
    /// `failed`, the only state listed (the default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Only inputs of this call (a map's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub call: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// `app.function`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    /// Failures at or after this time: RFC 3339, or a duration ago (`1h`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Failures before this time: RFC 3339, or a duration ago.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// How long past its wait a worker gives a lease or heartbeat request to be answered before
/// it tries another server: well within a lease (30 s by default), so that a server that hangs
/// (paused, overloaded, cut off without a reset) costs a worker its server, not its leases.
pub const WORKER_ANSWER_MARGIN: Duration = Duration::from_secs(5);

/// How long a worker gives a batch of results or log lines to be written.
pub const WORKER_WRITE_TIMEOUT: Duration = Duration::from_secs(20);

/// Transient failures in a row that [`Client::wait`] retries (with backoff up to 3 s: about a
/// minute) before it gives up.
pub const WAIT_RETRIES: u32 = 20;

/// How long past its long-poll a read of a call may take before it is given up on.
pub const GET_SLACK: Duration = Duration::from_secs(10);

/// The error an answer of `status` with the body `text` stands for: the API's JSON error, or
/// the status and the start of whatever came instead.
fn api_error(status: StatusCode, text: &str) -> Error {
    match serde_json::from_str::<ErrorBody>(text) {
        Ok(body) => Error::Api {
            status: status.as_u16(),
            code: body.error.code,
            message: body.error.message,
        },
        Err(_) => Error::Api {
            status: status.as_u16(),
            code: if status == StatusCode::UNAUTHORIZED {
                "unauthorized"
            } else {
                "http_error"
            }
            .into(),
            message: format!(
                "HTTP {status}: {}",
                text.chars().take(200).collect::<String>()
            ),
        },
    }
}

/// The certificates of the files `HOPPER_CA_CERT` and `SSL_CERT_FILE` name (PEM bundles).
fn extra_roots() -> Result<Vec<reqwest::Certificate>, Error> {
    let mut roots = Vec::new();
    for variable in ["HOPPER_CA_CERT", "SSL_CERT_FILE"] {
        let Some(path) = std::env::var_os(variable).filter(|p| !p.is_empty()) else {
            continue;
        };
        let shown = std::path::Path::new(&path).display().to_string();
        let pem = std::fs::read(&path)
            .map_err(|e| Error::Transport(format!("{variable}={shown}: cannot read it: {e}")))?;
        let found = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            Error::Transport(format!("{variable}={shown}: not PEM certificates: {e}"))
        })?;
        if found.is_empty() {
            return Err(Error::Transport(format!(
                "{variable}={shown}: no certificate in it (expected PEM: -----BEGIN CERTIFICATE-----)"
            )));
        }
        roots.extend(found);
    }
    Ok(roots)
}

/// A client of a Hopper server, or of several servers of one cluster (one database): requests
/// go to one of them and move to the next when it cannot be reached.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    /// The servers' URLs, without a trailing `/`, in the order given.
    servers: Arc<[String]>,
    /// The index in `servers` of the one requests go to; moves on when that one fails. Shared
    /// by the clones of a client, so that they move together.
    current: Arc<AtomicUsize>,
    token: Option<Redacted<String>>,
    /// The secret of the worker this client acts for, sent with its worker requests.
    worker_secret: Option<Redacted<String>>,
}

impl Client {
    /// A client of the server at `base` (e.g. `http://127.0.0.1:7433`), sending `token` if given.
    ///
    /// `base` may list several servers of one cluster, separated by commas
    /// (`http://a:7433,http://b:7433`). Requests go to the first until it fails: a request
    /// that could not connect goes to the next server at once (nothing of it reached the
    /// first); one cut off midway is not sent again, since the server may have carried it
    /// out, and the requests after it go to the next server. The servers share a database,
    /// so a worker's registration and leases hold through any of them.
    ///
    /// Over HTTPS the client trusts the system's certificate store and the public roots it
    /// carries, plus the certificates (PEM) in the files `HOPPER_CA_CERT` and `SSL_CERT_FILE`
    /// name: a private CA. A file that cannot be read or holds no certificate is an error.
    pub fn new(base: &str, token: Option<String>) -> Result<Self, Error> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            // Below the server's 30 s request timeout, which closes idle connections: reusing
            // one the server is closing would fail a request for nothing.
            .pool_idle_timeout(Duration::from_secs(20));
        for certificate in extra_roots()? {
            builder = builder.add_root_certificate(certificate);
        }
        let http = builder
            .build()
            .map_err(|e| Error::Transport(e.to_string()))?;
        let mut servers: Vec<String> = base
            .split(',')
            .map(|url| url.trim().trim_end_matches('/').to_string())
            .filter(|url| !url.is_empty())
            .collect();
        if servers.is_empty() {
            servers.push(base.trim().to_string());
        }
        Ok(Self {
            http,
            servers: servers.into(),
            current: Arc::new(AtomicUsize::new(0)),
            token: token.map(Redacted::new),
            worker_secret: None,
        })
    }

    /// The URL of the server requests go to now.
    pub fn base_url(&self) -> &str {
        &self.servers[self.current.load(Ordering::Relaxed) % self.servers.len()]
    }

    /// Every server's URL, in the order given, as [`Client::new`] takes them (comma-separated):
    /// what to hand to another client, such as a function's process, so it fails over too.
    pub fn server_list(&self) -> String {
        self.servers.join(",")
    }

    /// The bearer token this client sends, if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_ref().map(|t| t.expose().as_str())
    }

    /// Starts a map with a first chunk of inputs (`done` when there are no more).
    pub async fn map_start(&self, function: &str, req: &MapRequest) -> Result<CallView, Error> {
        self.send(
            self.request(Method::POST, &format!("/v1/functions/{function}/map"))
                .json(req),
        )
        .await
    }

    /// Appends a chunk of inputs to a map. Safe to retry: a chunk is taken once.
    pub async fn map_append(&self, id: &CallId, chunk: &InputChunk) -> Result<CallView, Error> {
        self.send(
            self.request(Method::POST, &format!("/v1/calls/{id}/inputs"))
                .json(chunk),
        )
        .await
    }

    /// The next page of a call's results after the cursor `after`, waiting up to `wait` for one.
    pub async fn results(
        &self,
        id: &CallId,
        ordered: bool,
        after: i64,
        wait: Duration,
    ) -> Result<ResultPage, Error> {
        let order = if ordered { "index" } else { "completion" };
        let query = [
            ("order", order.to_string()),
            ("after", after.to_string()),
            ("wait", format!("{:.3}", wait.as_secs_f64())),
        ];
        self.send(
            self.request(Method::GET, &format!("/v1/calls/{id}/results"))
                .query(&query)
                .timeout(wait + Duration::from_secs(30)),
        )
        .await
    }

    /// This client, sending `secret` (from [`WorkerRegistered::worker_secret`]) with every
    /// request about its worker, as the server requires.
    pub fn with_worker_secret(mut self, secret: Option<Redacted<String>>) -> Self {
        self.worker_secret = secret;
        self
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let mut req = self
            .http
            .request(method, format!("{}{}", self.base_url(), path));
        if let Some(token) = &self.token {
            req = req.bearer_auth(token.expose());
        }
        if let Some(secret) = &self.worker_secret {
            if path.starts_with("/v1/workers/") {
                req = req.header("x-hopper-worker-secret", secret.expose());
            }
        }
        req
    }

    /// `request`, made for the server at index `from`, addressed to the server requests go to
    /// now.
    fn moved(&self, mut request: reqwest::Request, from: usize) -> Result<reqwest::Request, Error> {
        let old = &self.servers[from];
        let path = request
            .url()
            .as_str()
            .strip_prefix(old.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| {
                let url = request.url();
                match url.query() {
                    Some(query) => format!("{}?{query}", url.path()),
                    None => url.path().to_string(),
                }
            });
        let url = format!("{}{path}", self.base_url());
        *request.url_mut() = reqwest::Url::parse(&url)
            .map_err(|e| Error::Transport(format!("the server URL {url:?}: {e}")))?;
        Ok(request)
    }

    async fn send<T: DeserializeOwned>(&self, req: RequestBuilder) -> Result<T, Error> {
        let response = self.send_raw(req).await?;
        response
            .json()
            .await
            .map_err(|e| Error::Transport(format!("the answer is not the expected JSON: {e}")))
    }

    async fn send_raw(&self, req: RequestBuilder) -> Result<reqwest::Response, Error> {
        let mut request = req.build().map_err(|e| Error::Transport(root_cause(&e)))?;
        let mut tried = Vec::new();
        let response = loop {
            let at = self
                .servers
                .iter()
                .position(|s| request.url().as_str().starts_with(s.as_str()))
                .unwrap_or_else(|| self.current.load(Ordering::Relaxed) % self.servers.len());
            tried.push(self.servers[at].clone());
            let again = request.try_clone();
            match self.http.execute(request).await {
                Ok(response)
                    if response.status() == StatusCode::SERVICE_UNAVAILABLE
                        && self.servers.len() > 1 =>
                {
                    // A server that cannot serve (its database is away, it is stopping, it
                    // is too old for the schema, it has too many waiting workers): the
                    // requests after this one go to the next server.
                    let text = response.text().await.unwrap_or_default();
                    let error = api_error(StatusCode::SERVICE_UNAVAILABLE, &text);
                    self.move_on(at);
                    // Refused before it did anything: the next server gets it now.
                    let refused = matches!(
                        error.code(),
                        Some("server_stopping" | "schema_too_new" | "too_many_waiting")
                    );
                    match again {
                        Some(again) if refused && tried.len() < self.servers.len() => {
                            request = self.moved(again, at)?;
                            continue;
                        }
                        _ => return Err(error),
                    }
                }
                Ok(response) => break response,
                Err(e) => {
                    self.move_on(at);
                    let unreached = e.is_connect();
                    match again {
                        // Nothing reached the server: the next one gets the request now.
                        Some(again) if unreached && tried.len() < self.servers.len() => {
                            request = self.moved(again, at)?;
                        }
                        _ if unreached => {
                            return Err(Error::Unreachable {
                                url: tried.join(", "),
                                reason: root_cause(&e),
                            })
                        }
                        _ => return Err(Error::Transport(root_cause(&e))),
                    }
                }
            }
        };
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let text = response.text().await.unwrap_or_default();
        Err(api_error(status, &text))
    }

    /// Moves requests on from the server at index `from` (when several are given), unless
    /// another request moved them already: whoever moves first moves everyone.
    fn move_on(&self, from: usize) {
        if self.servers.len() > 1 {
            let next = (from + 1) % self.servers.len();
            let _ = self
                .current
                .compare_exchange(from, next, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// Deploys a manifest; see [`DeployRequest`].
    pub async fn deploy(&self, req: &DeployRequest) -> Result<AppView, Error> {
        self.send(self.request(Method::POST, "/v1/apps").json(req))
            .await
    }

    pub async fn apps(&self) -> Result<Vec<AppView>, Error> {
        self.send(self.request(Method::GET, "/v1/apps")).await
    }

    /// One function (`app.function`, or a bare name deployed in one app only). Errors:
    /// `unknown_function` (404), naming the closest deployed names.
    pub async fn function(&self, name: &str) -> Result<FunctionView, Error> {
        self.send(self.request(Method::GET, &format!("/v1/functions/{name}")))
            .await
    }

    pub async fn functions(&self) -> Result<Vec<FunctionView>, Error> {
        self.send(self.request(Method::GET, "/v1/functions")).await
    }

    /// Spawns a call of `function` (`app.function` or a unique bare name) with one input.
    pub async fn spawn(
        &self,
        function: &str,
        input: Value,
        idempotency_key: Option<String>,
    ) -> Result<CallView, Error> {
        let body = SpawnRequest {
            input,
            idempotency_key,
            delay: None,
            start_at: None,
            key: None,
            priority: None,
        };
        self.spawn_request(function, &body).await
    }

    /// Spawns a call of `function` as `request` says: its input and the per-call options
    /// (`idempotency_key`, `delay` or `start_at`, `key`, `priority`). A delayed call is stored
    /// at once and its input becomes due at its start (`CallView::starts_at`); errors name a
    /// bad option (`invalid_delay`, `invalid_key`, `invalid_priority`).
    pub async fn spawn_request(
        &self,
        function: &str,
        request: &SpawnRequest,
    ) -> Result<CallView, Error> {
        self.send(
            self.request(Method::POST, &format!("/v1/functions/{function}/calls"))
                .json(request),
        )
        .await
    }

    /// Spawns one call of `function` per entry of `calls` (each an input and an optional
    /// idempotency key) through `POST /v1/functions/{name}/calls/batch`: up to
    /// [`MAX_SPAWN_BATCH`] calls and [`SPAWN_BATCH_BYTES`] of inputs to a request, and fewer
    /// when the server's `--max-payload` is lower (a request it refuses as too large is split
    /// in two and sent again). Each request is one transaction: a request that fails created
    /// none of its calls (those of the requests before it stay; give keys to resume). Returns
    /// one [`SpawnedCall`] per entry, in order; `created` is false where a key named an
    /// existing call.
    pub async fn spawn_many(
        &self,
        function: &str,
        calls: Vec<SpawnRequest>,
    ) -> Result<Vec<SpawnedCall>, Error> {
        let mut spawned = Vec::with_capacity(calls.len());
        let mut rest = calls.as_slice();
        while !rest.is_empty() {
            let (answer, sent) = self.spawn_batch_fitting(function, rest).await?;
            spawned.extend(answer);
            rest = &rest[sent..];
        }
        Ok(spawned)
    }

    /// Spawns the longest prefix of `calls` one request can carry; returns its calls and how
    /// many entries of `calls` that was. A prefix the server refuses as too large is halved
    /// and sent again; one call too large on its own is the server's error.
    pub async fn spawn_batch_fitting(
        &self,
        function: &str,
        calls: &[SpawnRequest],
    ) -> Result<(Vec<SpawnedCall>, usize), Error> {
        let mut take = 0;
        let mut bytes = 0;
        for call in calls.iter().take(MAX_SPAWN_BATCH) {
            let size = serde_json::to_string(&call.input).map_or(0, |t| t.len());
            if take > 0 && bytes + size > SPAWN_BATCH_BYTES {
                break;
            }
            bytes += size;
            take += 1;
        }
        loop {
            let body = SpawnBatchRequest {
                calls: calls[..take].to_vec(),
            };
            let sent: Result<SpawnBatchResponse, Error> = self
                .send(
                    self.request(
                        Method::POST,
                        &format!("/v1/functions/{function}/calls/batch"),
                    )
                    .json(&body),
                )
                .await;
            match sent {
                Err(Error::Api { status: 413, .. }) if take > 1 => take /= 2,
                Err(e) => return Err(e),
                Ok(answer) => return Ok((answer.calls, take)),
            }
        }
    }

    /// Runs `function` on `input` and waits up to `timeout` for the call to end (Modal's
    /// `.remote()`): one request, which the server answers once the call has ended
    /// (`POST /v1/functions/{name}/calls?wait=`, at most 300 s), then [`Client::wait`] while
    /// it runs on. Returns the call as it is then, ended or not; its `output` or `error` once
    /// ended.
    pub async fn remote(
        &self,
        function: &str,
        input: Value,
        timeout: Duration,
    ) -> Result<CallView, Error> {
        let started = std::time::Instant::now();
        let wait = timeout.min(Duration::from_secs(300));
        let body = SpawnRequest {
            input,
            idempotency_key: None,
            delay: None,
            start_at: None,
            key: None,
            priority: None,
        };
        let call: CallView = self
            .send(
                self.request(Method::POST, &format!("/v1/functions/{function}/calls"))
                    .query(&[("wait", format!("{:.3}", wait.as_secs_f64()))])
                    .timeout(wait + Duration::from_secs(30))
                    .json(&body),
            )
            .await?;
        if call.state.is_terminal() {
            return Ok(call);
        }
        self.wait(&call.id, timeout.saturating_sub(started.elapsed()))
            .await
    }

    /// Reads a call, waiting up to `wait` for it to end. A server that has not answered
    /// [`GET_SLACK`] after `wait` is given up on (`Error::Transport`): one that accepts
    /// connections but does not answer (stopped, hung) does not hold the caller for good.
    pub async fn get(&self, id: &CallId, wait: Duration) -> Result<CallView, Error> {
        let mut req = self
            .request(Method::GET, &format!("/v1/calls/{id}"))
            .timeout(wait + GET_SLACK);
        if !wait.is_zero() {
            req = req.query(&[("wait", format!("{:.3}", wait.as_secs_f64()))]);
        }
        self.send(req).await
    }

    /// Waits for a call to end, up to `timeout`, asking again as long-polls expire. Returns the
    /// call as it is then, ended or not.
    ///
    /// Once a server was there (it answered, or took the request and then stopped or broke
    /// the connection: a restart), a transient failure is retried with backoff within
    /// `timeout`, up to [`WAIT_RETRIES`] times in a row; a server that could never be reached
    /// fails at once.
    pub async fn wait(&self, id: &CallId, timeout: Duration) -> Result<CallView, Error> {
        let deadline = std::time::Instant::now() + timeout;
        let mut reached = false;
        let mut failures = 0;
        let mut delay = Duration::from_millis(100);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.get(id, left.min(Duration::from_secs(60))).await {
                // A server that took the request and never answered: not worth another try
                // past the deadline.
                Err(e) if left.is_zero() || std::time::Instant::now() >= deadline + GET_SLACK => {
                    return Err(e)
                }
                Ok(call) if call.state.is_terminal() || left.is_zero() => return Ok(call),
                Ok(_) => {
                    reached = true;
                    failures = 0;
                    delay = Duration::from_millis(100);
                }
                Err(e) => {
                    // A long-poll cut short by a stopping server (503) or a dropped
                    // connection had a server; a refused connection may have none.
                    reached |= !matches!(e, Error::Unreachable { .. });
                    if !(reached
                        && failures < WAIT_RETRIES
                        && !left.is_zero()
                        && crate::outbox::is_transient(&e))
                    {
                        return Err(e);
                    }
                    tracing::debug!(error = %e, "waiting for a call: retrying");
                    failures += 1;
                    tokio::time::sleep(delay.min(left)).await;
                    delay = (delay * 2).min(Duration::from_secs(3));
                }
            }
        }
    }

    pub async fn cancel(&self, id: &CallId) -> Result<CallView, Error> {
        self.send(self.request(Method::POST, &format!("/v1/calls/{id}/cancel")))
            .await
    }

    pub async fn calls(&self, filter: &CallFilter) -> Result<CallPage, Error> {
        self.send(self.request(Method::GET, "/v1/calls").query(filter))
            .await
    }

    /// A function's versions, newest first.
    pub async fn function_versions(&self, name: &str) -> Result<Vec<FunctionVersionView>, Error> {
        self.send(self.request(Method::GET, &format!("/v1/functions/{name}/versions")))
            .await
    }

    /// Runs input 0 of a call again (a one-input call's): a new call of origin `rerun`. See
    /// [`Client::rerun_input`].
    pub async fn rerun(&self, id: &CallId) -> Result<CallView, Error> {
        self.rerun_input(id, &RerunRequest::default(), None).await
    }

    /// Runs input `ask.index` of call `id` again, as a new call (origin `rerun`) of the
    /// function's current version that names it. `key` (an idempotency key) names the re-run:
    /// the same key returns the same call. Errors: `already_rerun` when an earlier re-run of
    /// the input has not failed and `input_not_ended` when it runs still (unless
    /// `ask.force`), `unknown_input`.
    pub async fn rerun_input(
        &self,
        id: &CallId,
        ask: &RerunRequest,
        key: Option<&str>,
    ) -> Result<CallView, Error> {
        let mut req = self
            .request(Method::POST, &format!("/v1/calls/{id}/rerun"))
            .json(ask);
        if let Some(key) = key {
            req = req.header("Idempotency-Key", key);
        }
        self.send(req).await
    }

    /// Failed inputs across calls, newest failure first: a page of at most `filter.limit`
    /// (default 100); pass its `next_cursor` as `filter.cursor` for the next.
    pub async fn failed_inputs(&self, filter: &InputFilter) -> Result<FailedInputPage, Error> {
        self.send(self.request(Method::GET, "/v1/inputs").query(filter))
            .await
    }

    /// Re-runs the failed inputs `ask` selects, one new call each; inputs re-run before are
    /// skipped (unless `ask.force`), so asking twice re-runs nothing the second time. At most
    /// `ask.limit` (default and most 1,000) a request: `more` says to ask again.
    pub async fn rerun_failed(
        &self,
        ask: &InputsRerunRequest,
    ) -> Result<InputsRerunResponse, Error> {
        self.send(self.request(Method::POST, "/v1/inputs/rerun").json(ask))
            .await
    }

    /// One input of a call, with its payload and result.
    pub async fn input(&self, id: &CallId, index: i64) -> Result<InputView, Error> {
        self.send(self.request(Method::GET, &format!("/v1/calls/{id}/inputs/{index}")))
            .await
    }

    /// Attempts ended over `window` (e.g. `15m`), and per function: backlog, success rate and
    /// duration percentiles; of one function if given.
    pub async fn stats(&self, window: &str, function: Option<&str>) -> Result<StatsView, Error> {
        let mut query = vec![("window", window)];
        if let Some(f) = function {
            query.push(("function", f));
        }
        self.send(self.request(Method::GET, "/v1/stats").query(&query))
            .await
    }

    pub async fn attempts(&self, id: &CallId) -> Result<Vec<AttemptView>, Error> {
        self.send(self.request(Method::GET, &format!("/v1/calls/{id}/attempts")))
            .await
    }

    /// Log lines of a call after `after` (a `seq`), of one input if `index` is given.
    pub async fn logs(
        &self,
        id: &CallId,
        after: i64,
        index: Option<i64>,
    ) -> Result<LogPage, Error> {
        let mut query = vec![("after", after.to_string())];
        if let Some(i) = index {
            query.push(("index", i.to_string()));
        }
        self.send(
            self.request(Method::GET, &format!("/v1/calls/{id}/logs"))
                .query(&query),
        )
        .await
    }

    pub async fn schedules(&self) -> Result<Vec<ScheduleView>, Error> {
        self.send(self.request(Method::GET, "/v1/schedules")).await
    }

    /// One schedule with its recent firings.
    pub async fn schedule(&self, name: &str) -> Result<ScheduleView, Error> {
        self.send(self.request(Method::GET, &format!("/v1/schedules/{name}")))
            .await
    }

    /// `action` is `trigger`, `pause` or `resume`.
    pub async fn schedule_action(&self, name: &str, action: &str) -> Result<Value, Error> {
        self.send(self.request(Method::POST, &format!("/v1/schedules/{name}/{action}")))
            .await
    }

    /// Sets a named secret's values (creating it, or replacing every value it had); needs an
    /// `admin` token. The answer shows its keys, never its values.
    pub async fn secret_put(
        &self,
        name: &str,
        values: std::collections::BTreeMap<String, String>,
    ) -> Result<SecretView, Error> {
        let body = hopper_core::api::SecretPut {
            values: values
                .into_iter()
                .map(|(key, value)| hopper_core::api::SecretValue {
                    key,
                    value: value.into(),
                })
                .collect(),
        };
        self.send(
            self.request(Method::PUT, &format!("/v1/secrets/{name}"))
                .json(&body),
        )
        .await
    }

    /// Every secret: names, keys and the functions that read them.
    pub async fn secrets(&self) -> Result<Vec<SecretView>, Error> {
        self.send(self.request(Method::GET, "/v1/secrets")).await
    }

    /// Deletes a secret no deployed function reads; needs an `admin` token.
    pub async fn secret_delete(&self, name: &str) -> Result<(), Error> {
        self.send_raw(self.request(Method::DELETE, &format!("/v1/secrets/{name}")))
            .await
            .map(|_| ())
    }

    /// Seals every secret again with the first key of the servers' `HOPPER_SECRET_KEY`, so
    /// that older keys can be dropped; needs an `admin` token. Answers how many were sealed
    /// again and which no key opens.
    pub async fn secrets_reseal(&self) -> Result<Resealed, Error> {
        self.send(self.request(Method::POST, "/v1/reseal")).await
    }

    pub async fn workers(&self) -> Result<Vec<WorkerView>, Error> {
        self.send(self.request(Method::GET, "/v1/workers")).await
    }

    /// Asks whether the server serves: `GET /healthz`, its JSON answer when it does; an
    /// [`Error`] with the server's code (`schema_too_new`, `store_unavailable`) when it answers 503.
    pub async fn healthz(&self) -> Result<serde_json::Value, Error> {
        self.send(self.request(Method::GET, "/healthz")).await
    }

    // ---- the worker protocol ----

    pub async fn worker_register(&self, req: &WorkerRegister) -> Result<WorkerRegistered, Error> {
        self.send(self.request(Method::POST, "/v1/workers").json(req))
            .await
    }

    /// Leases up to `max` inputs, waiting up to `wait` for some to arrive.
    pub async fn worker_lease(
        &self,
        id: &WorkerId,
        max: u32,
        wait: Duration,
    ) -> Result<LeaseResponse, Error> {
        let body = LeaseRequest {
            max,
            wait_ms: wait.as_millis() as u64,
        };
        self.send(
            self.request(Method::POST, &format!("/v1/workers/{id}/lease"))
                .json(&body)
                .timeout(wait + WORKER_ANSWER_MARGIN),
        )
        .await
    }

    /// Renews `leases`; with a `wait`, the server then holds the request up to that long and
    /// answers early when one of `calls` is cancelled.
    pub async fn worker_heartbeat(
        &self,
        id: &WorkerId,
        leases: Vec<Lease>,
        calls: Vec<CallId>,
        wait: Duration,
    ) -> Result<HeartbeatResponse, Error> {
        let body = HeartbeatRequest {
            leases,
            calls,
            wait_ms: wait.as_millis() as u64,
        };
        self.send(
            self.request(Method::POST, &format!("/v1/workers/{id}/heartbeat"))
                .json(&body)
                .timeout(wait + WORKER_ANSWER_MARGIN),
        )
        .await
    }

    pub async fn worker_complete(
        &self,
        id: &WorkerId,
        results: Vec<InputResult>,
    ) -> Result<CompleteResponse, Error> {
        let body = CompleteRequest { results };
        self.send(
            self.request(Method::POST, &format!("/v1/workers/{id}/complete"))
                .json(&body)
                .timeout(WORKER_WRITE_TIMEOUT),
        )
        .await
    }

    pub async fn worker_logs(&self, id: &WorkerId, lines: Vec<LogLine>) -> Result<(), Error> {
        let body = LogBatch { lines };
        self.send_raw(
            self.request(Method::POST, &format!("/v1/workers/{id}/logs"))
                .json(&body)
                .timeout(WORKER_WRITE_TIMEOUT),
        )
        .await
        .map(|_| ())
    }

    /// A code snapshot's bytes (a gzip-compressed tar), for a worker that runs its code.
    pub async fn worker_snapshot(&self, id: &WorkerId, hash: &str) -> Result<Vec<u8>, Error> {
        let response = self
            .send_raw(self.request(Method::GET, &format!("/v1/workers/{id}/snapshots/{hash}")))
            .await?;
        let bytes = response
            .bytes()
            .await
            .map_err(|e| Error::Transport(root_cause(&e)))?;
        Ok(bytes.to_vec())
    }

    /// Stores a code snapshot (`PUT /v1/snapshots/{hash}`); needs an `admin` token.
    pub async fn snapshot_put(&self, hash: &str, bytes: Vec<u8>) -> Result<SnapshotView, Error> {
        self.send(
            self.request(Method::PUT, &format!("/v1/snapshots/{hash}"))
                .header(reqwest::header::CONTENT_TYPE, "application/gzip")
                .body(bytes),
        )
        .await
    }

    /// Stores `bytes` as a blob (`POST /v1/blobs`): the reference to put in a payload in their
    /// place, `{"$blob": "sha256:…", "size": N}`. Errors: `payload_too_large` over the server's
    /// `--max-blob`.
    pub async fn blob_put(&self, bytes: Vec<u8>) -> Result<Value, Error> {
        self.send(
            self.request(Method::POST, "/v1/blobs")
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .body(bytes),
        )
        .await
    }

    /// Stores the file at `path` as a blob, streamed (this process holds 1 MiB of it at a
    /// time): the reference, as [`Self::blob_put`]. Errors: [`Error::File`] when the file
    /// cannot be read, and those of [`Self::blob_put`].
    pub async fn blob_put_file(&self, path: &std::path::Path) -> Result<Value, Error> {
        self.put_file(self.request(Method::POST, "/v1/blobs"), path)
            .await
    }

    /// A worker stores the file at `path` as a blob an output of `call` refers to (`POST
    /// /v1/workers/{id}/blobs?call=…`), streamed; the reference.
    pub async fn worker_blob_put_file(
        &self,
        id: &WorkerId,
        call: &CallId,
        path: &std::path::Path,
    ) -> Result<Value, Error> {
        let req = self
            .request(Method::POST, &format!("/v1/workers/{id}/blobs"))
            .query(&[("call", call.as_str())]);
        self.put_file(req, path).await
    }

    async fn put_file(&self, req: RequestBuilder, path: &std::path::Path) -> Result<Value, Error> {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|e| Error::File(format!("cannot read {}: {e}", path.display())))?;
        let meta = file
            .metadata()
            .await
            .map_err(|e| Error::File(format!("cannot read {}: {e}", path.display())))?;
        if meta.is_dir() {
            return Err(Error::File(format!(
                "{} is a folder: give the file whose bytes to send",
                path.display()
            )));
        }
        // A pipe or a device (`/dev/stdin`) has no length: its bytes go as they come.
        // A file of /proc says it holds 0 bytes and holds more: sent as a stream, like a pipe.
        let size = (meta.is_file() && meta.len() > 0).then_some(meta.len());
        let chunks = futures_util::stream::unfold(Some(file), |file| async move {
            use tokio::io::AsyncReadExt;
            let mut file = file?;
            let mut buf = vec![0u8; hopper_core::blob::CHUNK];
            match file.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok::<_, std::io::Error>(buf), Some(file)))
                }
                Err(e) => Some((Err(e), None)),
            }
        });
        let mut req = req.header(reqwest::header::CONTENT_TYPE, "application/octet-stream");
        if let Some(size) = size {
            req = req.header(reqwest::header::CONTENT_LENGTH, size);
        }
        let sent = self
            .send(req.body(reqwest::Body::wrap_stream(chunks)))
            .await;
        let size = size.map_or_else(|| "streamed".to_string(), |n| format!("{n}-byte"));
        match sent {
            // A server refuses a blob over its limit as soon as it sees the length, and closes
            // the connection while the body is still on its way: said as the refusal it was.
            Err(Error::Transport(why)) if self.healthy().await => Err(Error::Api {
                status: 413,
                code: "payload_too_large".into(),
                message: format!(
                    "the server broke off while receiving a {size} blob ({why}), as it does for a blob over its limit (hopper serve --max-blob, default 1GiB)"
                ),
            }),
            other => other,
        }
    }

    /// Whether the server answers its health check.
    async fn healthy(&self) -> bool {
        self.send_raw(
            self.request(Method::GET, "/healthz")
                .timeout(Duration::from_secs(5)),
        )
        .await
        .is_ok()
    }

    /// Blob `digest`'s bytes, in memory; for a large one, [`Self::blob_get_file`].
    pub async fn blob_get(&self, digest: &str) -> Result<Vec<u8>, Error> {
        let response = self
            .send_raw(self.request(Method::GET, &format!("/v1/blobs/{digest}")))
            .await?;
        let bytes = response.bytes().await.map_err(|e| {
            Error::Transport(format!("the blob's download broke off: {}", root_cause(&e)))
        })?;
        let got = hopper_core::blob::digest(&bytes);
        if got != digest {
            return Err(Error::Corrupt(format!(
                "blob {digest} came back as {} bytes hashing to {got}: it is corrupt",
                bytes.len()
            )));
        }
        Ok(bytes.to_vec())
    }

    /// Writes blob `digest` to `path`, streamed, checking its length and SHA-256 (a file that
    /// does not check out is removed, and the error says so); the bytes written.
    pub async fn blob_get_file(&self, digest: &str, path: &std::path::Path) -> Result<u64, Error> {
        self.get_file(
            self.request(Method::GET, &format!("/v1/blobs/{digest}")),
            digest,
            path,
        )
        .await
    }

    /// [`Self::blob_get_file`] for a worker, of a blob an input it leased refers to.
    pub async fn worker_blob_get_file(
        &self,
        id: &WorkerId,
        digest: &str,
        path: &std::path::Path,
    ) -> Result<u64, Error> {
        self.get_file(
            self.request(Method::GET, &format!("/v1/workers/{id}/blobs/{digest}")),
            digest,
            path,
        )
        .await
    }

    async fn get_file(
        &self,
        req: RequestBuilder,
        digest: &str,
        path: &std::path::Path,
    ) -> Result<u64, Error> {
        use futures_util::StreamExt;
        use sha2::Digest;
        use tokio::io::AsyncWriteExt;
        let response = self.send_raw(req).await?;
        let file_error =
            |e: std::io::Error| Error::File(format!("cannot write {}: {e}", path.display()));
        // Written beside the target and moved there once checked: a download that breaks off
        // leaves whatever was at `path` as it was.
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "blob".into());
        let partial = path.with_file_name(format!(".{name}.{}.part", std::process::id()));
        let mut file = tokio::fs::File::create(&partial)
            .await
            .map_err(file_error)?;
        let mut hasher = sha2::Sha256::new();
        let mut size = 0u64;
        let mut body = response.bytes_stream();
        let outcome = async {
            while let Some(piece) = body.next().await {
                let piece = piece.map_err(|e| {
                    Error::Transport(format!(
                        "the download of blob {digest} broke off after {size} bytes: {}",
                        root_cause(&e)
                    ))
                })?;
                hasher.update(&piece);
                size += piece.len() as u64;
                file.write_all(&piece).await.map_err(file_error)?;
            }
            file.flush().await.map_err(file_error)?;
            let got = format!("sha256:{:x}", hasher.finalize());
            if got != digest {
                return Err(Error::Corrupt(format!(
                    "blob {digest} came back as {size} bytes hashing to {got}: it is corrupt"
                )));
            }
            Ok(size)
        }
        .await;
        drop(file);
        match outcome {
            Ok(size) => {
                tokio::fs::rename(&partial, path)
                    .await
                    .map_err(file_error)?;
                Ok(size)
            }
            Err(e) => {
                let _ = tokio::fs::remove_file(&partial).await;
                Err(e)
            }
        }
    }

    /// What a stored snapshot holds; `Ok(None)` if the server does not have it.
    pub async fn snapshot(&self, hash: &str) -> Result<Option<SnapshotView>, Error> {
        match self
            .send(self.request(Method::GET, &format!("/v1/snapshots/{hash}")))
            .await
        {
            Ok(view) => Ok(Some(view)),
            Err(Error::Api { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Says how a process of one of the worker's functions started (`POST
    /// /v1/workers/{id}/starts`).
    pub async fn worker_start(
        &self,
        id: &WorkerId,
        start: &hopper_core::api::ProcessStart,
    ) -> Result<(), Error> {
        self.send_raw(
            self.request(Method::POST, &format!("/v1/workers/{id}/starts"))
                .json(start)
                .timeout(Duration::from_secs(30)),
        )
        .await
        .map(|_| ())
    }

    pub async fn worker_deregister(&self, id: &WorkerId) -> Result<(), Error> {
        self.send_raw(
            self.request(Method::DELETE, &format!("/v1/workers/{id}"))
                .timeout(Duration::from_secs(30)),
        )
        .await
        .map(|_| ())
    }
}

/// The innermost error message: reqwest's top-level ones rarely say what happened.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    let text = cause.to_string();
    if text.contains("UnknownIssuer") {
        // A private CA, most often: say where this client takes more trusted CAs from.
        return format!(
            "{text} (the server's certificate is signed by a CA this client does not trust: give that CA's certificate with --ca-cert or HOPPER_CA_CERT)"
        );
    }
    text
}

#[cfg(test)]
mod redaction_tests {
    #![allow(clippy::unwrap_used)] // test code

    /// A client or a worker's configuration logged with `{:?}` shows neither its token nor
    /// its worker's secret.
    #[test]
    fn debug_of_a_client_shows_no_token_or_secret() {
        let client = super::Client::new("http://127.0.0.1:1", Some("cl1ent-t0ken".into()))
            .unwrap()
            .with_worker_secret(Some("w0rker-secret".to_string().into()));
        let config = crate::WorkerConfig {
            server: "http://127.0.0.1:1".into(),
            token: Some("w0rker-t0ken".to_string().into()),
            functions: Vec::new(),
            concurrency: 1,
            host: "h".into(),
            drain: std::time::Duration::from_secs(1),
            machine: None,
        };
        let shown = format!("{client:?} {config:?}");
        for secret in ["cl1ent-t0ken", "w0rker-secret", "w0rker-t0ken"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("token: Some(***)"), "{shown}");
        assert_eq!(client.token(), Some("cl1ent-t0ken"));
    }
}
