//! The server's configuration, resolved once by the CLI; nothing downstream re-validates it.

use std::path::PathBuf;
use std::time::Duration;

/// Default inline payload limit: 4 MiB.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 4 * 1024 * 1024;

/// What a token may do. `Admin` may do everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// Read apps, calls, results, logs, workers, schedules, metrics.
    Read,
    /// Spawn, map, cancel, trigger schedules.
    Submit,
    /// The worker protocol.
    Work,
    /// Deploy, pause and resume schedules, and everything else.
    Admin,
}

impl Scope {
    pub fn parse(text: &str) -> Option<Scope> {
        match text {
            "read" => Some(Scope::Read),
            "submit" => Some(Scope::Submit),
            "work" => Some(Scope::Work),
            "admin" => Some(Scope::Admin),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Submit => "submit",
            Scope::Work => "work",
            Scope::Admin => "admin",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Bearer token with every scope, required on every request but `/healthz`. Default none,
    /// which is allowed only on a loopback address (and with no scoped tokens either).
    pub token: Option<hopper_core::secret::Redacted<String>>,
    /// Tokens limited to some scopes (`--scoped-token read,submit=TOKEN`).
    pub scoped_tokens: Vec<(Vec<Scope>, hopper_core::secret::Redacted<String>)>,
    /// An open map whose client sends nothing (no inputs, no close, no read of the call or
    /// its results) for this long is cancelled (`--map-idle-timeout`; zero: never). Default
    /// 10 minutes.
    pub map_idle_timeout: Duration,
    /// Tokens from a file the server reads again when it changes (`--token-file`).
    pub token_file: Option<std::sync::Arc<crate::tokens::TokenFile>>,
    /// Longest a request's header, or its body, may take to arrive; an idle keep-alive
    /// connection is closed after it too. Default 30 s.
    pub request_timeout: Duration,
    /// How long stopping local workers let running inputs finish before they stop them
    /// (killing each command's process group) and hand them back. Default 5 s.
    pub worker_drain: Duration,
    /// The longest any request waits for something to happen (a `get ?wait=`, a result
    /// stream, a lease or a heartbeat long-poll); each also has its own, shorter or equal,
    /// maximum. Lower it to stay under a proxy's idle timeout. Default 300 s.
    pub max_wait: Duration,
    /// Connections served at once; more wait until one closes. Raised at start to what
    /// the process's open-file limit allows (which the server raises to its hard limit).
    /// Default 16,384.
    pub max_connections: usize,
    /// Workers' lease long-polls held open at once; a worker past it is answered 503
    /// `too_many_waiting` at once (its connection closed, so it holds none while it backs
    /// off), so waiting workers can never take the connections spawns, reads and `/healthz`
    /// need. At most half of `max_connections` (the server lowers it at start). Default
    /// 8,192.
    pub max_waiting: usize,
    /// Origins (`scheme://host:port`) besides the server's own whose pages may call the API
    /// (`--allow-origin`). Default none.
    pub allow_origins: Vec<String>,
    /// Host names besides loopback ones a tokenless server answers to (`--allow-host`).
    /// Default none.
    pub allow_hosts: Vec<String>,
    /// The `work` token given to local workers; set by the server at start.
    pub worker_token: Option<hopper_core::secret::Redacted<String>>,
    /// The `read` and `submit` token handed to functions through their workers, so a function
    /// can call others; derived at start from the configured tokens (the same on every server
    /// with the same tokens).
    pub call_token: Option<hopper_core::secret::Redacted<String>>,
    /// How long a lease lasts without a heartbeat; a lost worker costs at most this. Default 30 s.
    pub lease: Duration,
    /// Time a worker gets between SIGTERM and SIGKILL of a timed-out command. Default 5 s.
    pub kill_grace: Duration,
    /// Ended calls, their results and logs are deleted after this. Default 7 days.
    pub retention: Duration,
    /// Largest input or output JSON, in bytes; larger ones are refused, never truncated.
    /// Default 4 MiB.
    pub max_payload_bytes: usize,
    /// Manifests deployed at start-up.
    pub deploy: Vec<PathBuf>,
    /// The program that runs `worker` for local workers (normally this binary). Default none:
    /// no local workers are started.
    pub worker_program: Option<PathBuf>,
    /// `RUST_LOG` filter for local workers. Default none: they inherit the server's environment.
    pub worker_log: Option<String>,
    /// The SMTP server for e-mail notifications: `smtp://[user:pass@]host[:port]` (plain),
    /// `smtps://…` (TLS) or `smtp+starttls://…`. A secret: never logged. Default none.
    pub smtp: Option<hopper_core::secret::Redacted<String>>,
    /// Sender of notification e-mails. Default `hopper@localhost`.
    pub smtp_from: String,
    /// Base URL of the dashboard in notification links. Default the listening address.
    pub public_url: Option<String>,
    /// The certificate chain (PEM) to serve HTTPS with, and its private key (PEM); both or
    /// neither. Read again when they change or on SIGHUP (see [`crate::tls`]).
    pub tls_cert: Option<std::path::PathBuf>,
    pub tls_key: Option<std::path::PathBuf>,
    /// How long the notifier gathers a burst of events into one message. Default 2 s.
    pub notify_gather: Duration,
    /// Log lines kept per attempt; past it one marker line says lines were dropped.
    /// Default 10,000.
    pub max_log_lines: u32,
    /// The keys of secrets' values in the store (`HOPPER_SECRET_KEY`: 64 hex digits each,
    /// comma-separated, the same on every server of a cluster): the first seals, any opens.
    /// Default none: `secret_key_file`.
    pub secret_keys: Vec<crate::secrets::SecretKey>,
    /// Where the key is kept when `secret_keys` gives none: created (mode 0600) the first
    /// time a secret is set; it still opens what it sealed when keys are given. Default none; `hopper serve` sets `DATA/secret.key` for SQLite,
    /// and a PostgreSQL server without `HOPPER_SECRET_KEY` cannot store secrets.
    pub secret_key_file: Option<PathBuf>,
    /// Most bytes a code snapshot may hold, compressed and unpacked (`--max-bundle`).
    /// Default 256 MiB.
    pub max_bundle_bytes: u64,
    /// Most bytes one blob may hold (`--max-blob`): a byte string or a payload stored apart
    /// from its input or output (`POST /v1/blobs`). Default 1 GiB.
    pub max_blob_bytes: u64,
    /// Where blobs' bytes are kept (`--blobs`): `None`, the database (chunk rows), or an
    /// S3-compatible bucket. Default the database.
    pub blobs: Option<crate::objects::ObjectBlobs>,
    /// `serve --dev`: manifests given with `deploy` run from their live folder instead of a
    /// snapshot, so an edited file takes effect without a deploy. Default false.
    pub dev: bool,
    /// Where local workers unpack code snapshots (`hopper serve` sets `DATA/snapshots`).
    /// Default none: the worker's own default, `~/.cache/hopper/snapshots`.
    pub worker_cache_dir: Option<PathBuf>,
    /// The server's data folder (`--data`), left out of the snapshots it builds. Default none.
    pub data_dir: Option<PathBuf>,
    /// What this server's machine has for its local workers (`--gpus`, `--cpus`, `--memory`,
    /// `--label`, else found): the provisioner packs workers into it, each GPU to one worker.
    /// Default: no GPU, cores and memory unknown (no bound).
    pub machine: hopper_core::resources::Machine,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            token: None,
            scoped_tokens: Vec::new(),
            token_file: None,
            map_idle_timeout: Duration::from_secs(600),
            max_connections: 16_384,
            max_waiting: 8_192,
            worker_drain: Duration::from_secs(5),
            max_wait: Duration::from_secs(300),
            request_timeout: Duration::from_secs(30),
            allow_origins: Vec::new(),
            allow_hosts: Vec::new(),
            worker_token: None,
            call_token: None,
            lease: Duration::from_secs(30),
            kill_grace: Duration::from_secs(5),
            retention: Duration::from_secs(7 * 86_400),
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            deploy: Vec::new(),
            worker_program: None,
            worker_log: None,
            smtp: None,
            smtp_from: "hopper@localhost".into(),
            public_url: None,
            tls_cert: None,
            tls_key: None,
            notify_gather: Duration::from_secs(2),
            max_log_lines: 10_000,
            secret_keys: Vec::new(),
            secret_key_file: None,
            max_bundle_bytes: 256 * 1024 * 1024,
            max_blob_bytes: 1024 * 1024 * 1024,
            blobs: None,
            dev: false,
            worker_cache_dir: None,
            data_dir: None,
            machine: Default::default(),
        }
    }
}

impl ServerConfig {
    /// Whether requests must carry a token.
    pub fn requires_token(&self) -> bool {
        self.token.is_some() || !self.scoped_tokens.is_empty() || self.token_file.is_some()
    }

    /// The scopes of a presented token; `None` for an unknown token.
    pub fn scopes_of(&self, presented: &str) -> Option<Vec<Scope>> {
        let matches = |expected: &str| constant_time_eq(presented.as_bytes(), expected.as_bytes());
        if self.token.as_ref().is_some_and(|t| matches(t.expose())) {
            return Some(vec![Scope::Admin]);
        }
        self.scoped_tokens
            .iter()
            .find(|(_, t)| matches(t.expose()))
            .map(|(scopes, _)| scopes.clone())
            .or_else(|| self.token_file.as_ref()?.scopes_of(presented))
    }

    /// The scopes of the token whose dashboard session value (`api::session::session_value`)
    /// is `session`.
    pub fn scopes_of_session(&self, session: &str) -> Option<Vec<Scope>> {
        let matches = |token: &str| {
            constant_time_eq(
                session.as_bytes(),
                crate::api::session::session_value(token).as_bytes(),
            )
        };
        if self.token.as_ref().is_some_and(|t| matches(t.expose())) {
            return Some(vec![Scope::Admin]);
        }
        self.scoped_tokens
            .iter()
            .find(|(_, t)| matches(t.expose()))
            .map(|(scopes, _)| scopes.clone())
            .or_else(|| self.token_file.as_ref()?.scopes_of_session(session))
    }

    pub fn lease_ms(&self) -> i64 {
        self.lease.as_millis() as i64
    }

    /// How long after its timeout an attempt may still report: the kill grace, plus a lease
    /// period for the report to arrive. After that the reaper fails it as timed out.
    pub fn deadline_slack_ms(&self) -> i64 {
        (self.kill_grace + self.lease).as_millis() as i64
    }

    /// How often workers should heartbeat: three times per lease.
    pub fn heartbeat_ms(&self) -> u64 {
        (self.lease.as_millis() as u64 / 3).max(50)
    }
}

/// Compares without stopping at the first difference, so timing does not leak a token.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code
    use super::{Scope, ServerConfig};

    /// A configuration written to a log (`{:?}`) shows none of the credentials it holds.
    #[test]
    fn debug_of_a_config_shows_no_token_password_or_key() {
        let config = ServerConfig {
            token: Some("admin-t0ken".to_string().into()),
            scoped_tokens: vec![(vec![Scope::Read], "read-t0ken".to_string().into())],
            worker_token: Some("hw-w0rker".to_string().into()),
            call_token: Some("hc-c4ll".to_string().into()),
            smtp: Some("smtps://mail:p4ssword@mail.example.com".to_string().into()),
            secret_keys: vec![crate::secrets::SecretKey::from_hex(&"ab".repeat(32)).unwrap()],
            ..ServerConfig::default()
        };
        let shown = format!("{config:?}");
        for secret in [
            "admin-t0ken",
            "read-t0ken",
            "hw-w0rker",
            "hc-c4ll",
            "p4ssword",
            "abab",
        ] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("token: Some(***)"), "{shown}");
    }
}
