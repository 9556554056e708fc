//! The server's configuration, resolved once by the CLI; nothing downstream re-validates it.

use std::path::PathBuf;
use std::time::Duration;

/// Default inline payload limit: 4 MiB.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Bearer token required on every request but `/healthz`. Default none, which is allowed
    /// only on a loopback address.
    pub token: Option<String>,
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
    pub smtp: Option<String>,
    /// Sender of notification e-mails. Default `hopper@localhost`.
    pub smtp_from: String,
    /// Base URL of the dashboard in notification links. Default the listening address.
    pub public_url: Option<String>,
    /// How long the notifier gathers a burst of events into one message. Default 2 s.
    pub notify_gather: Duration,
    /// Log lines kept per attempt; past it one marker line says lines were dropped.
    /// Default 10,000.
    pub max_log_lines: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            token: None,
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
            notify_gather: Duration::from_secs(2),
            max_log_lines: 10_000,
        }
    }
}

impl ServerConfig {
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
