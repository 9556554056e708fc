//! The command line. Parsed by clap, then resolved once per command into validated config.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use hopper_core::secret::Redacted;

#[derive(Parser, Debug)]
#[command(
    name = "hopper",
    version,
    about = "A self-hosted job queue and batch engine",
    max_term_width = 100
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Trust the certificates in this file (PEM) for HTTPS servers, besides the system's store
    /// and `SSL_CERT_FILE`: a private CA. Passed on to workers and their functions.
    #[arg(long, env = "HOPPER_CA_CERT", global = true)]
    pub ca_cert: Option<std::path::PathBuf>,
    /// How log lines are written to stderr: `text` (for people) or `json` (one object a line,
    /// for a log collector). Passed on to the workers a server starts.
    #[arg(
        long,
        env = "HOPPER_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,
}

/// How log lines are written.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// How a client command finds its server.
#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// The server's URL. Servers of one cluster may be listed, separated by commas or by
    /// repeating the flag: requests go to the first that answers and move on when it fails.
    #[arg(
        long,
        env = "HOPPER_SERVER",
        default_value = "http://127.0.0.1:7433",
        value_delimiter = ',',
        global = true
    )]
    pub server: Vec<String>,
    /// The server's token, if it has one.
    #[arg(long, env = "HOPPER_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<Redacted<String>>,
    /// Print machine-readable JSON.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the server: the API, the engine and a local worker per command function.
    Serve(Box<ServeArgs>),
    /// Deploy a manifest (hopper.toml) as a new version of its app, with its folder (or its
    /// `root`) as the version's code snapshot.
    Deploy {
        /// The manifest file.
        manifest: PathBuf,
        /// Largest snapshot to ship: the files' bytes before compression.
        #[arg(long, default_value = "64MiB")]
        max_bundle: String,
        /// Ship no snapshot: workers run the code from the manifest's folder on their own
        /// machine (it must be there, at the same path).
        #[arg(long)]
        no_snapshot: bool,
        /// Only check the manifest, here: every fault is printed (exit 2) and nothing is
        /// sent, so no server is needed.
        #[arg(long)]
        check: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Run a function once without a server: start one in a temporary folder, run, print, exit.
    Run {
        /// The manifest file.
        manifest: PathBuf,
        /// The function, by its name in the manifest.
        function: String,
        #[command(flatten)]
        input: InputArgs,
        /// Give up after this long (exit 3). Default: wait until the call ends.
        #[arg(long)]
        timeout: Option<String>,
        /// Print the result as JSON (the whole call).
        #[arg(long)]
        json: bool,
    },
    /// Spawn a call and print its id.
    Spawn {
        /// The function: app.function, or a bare name deployed in one app only.
        function: String,
        #[command(flatten)]
        input: InputArgs,
        /// Spawning again with the same key returns the same call. With --each-line, the
        /// call of line N gets the key KEY:N, so running the command again spawns nothing twice.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Spawn one call per line of --input-file (one JSON value a line, blank lines
        /// skipped), 1,000 to a request, printing each call's id a line in the file's order.
        /// Every line is checked (JSON, nesting, 64-bit integers) before anything is spawned.
        #[arg(long, requires = "input_file")]
        each_line: bool,
        #[command(flatten)]
        start: StartArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print a call's output (exit 0), or its error (exit 1), waiting until the call ends.
    Get {
        call_id: String,
        /// Wait at most this long for the call to end (e.g. 30s; 0s asks once); then exit 3,
        /// and the call goes on. Default: wait until it ends.
        #[arg(long)]
        timeout: Option<String>,
        /// Write the output to this file ('-': stdout) instead of printing it: bytes as they
        /// are (a blob is streamed), anything else as its JSON text.
        #[arg(long)]
        output: Option<PathBuf>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Map a function over many inputs (one JSON value a line), printing results as JSON lines.
    Map {
        /// The function: app.function, or a bare name deployed in one app only.
        function: String,
        /// A file of inputs, one JSON value a line; '-' reads stdin.
        inputs: PathBuf,
        /// Print results as they finish (each tagged with its index), not in input order.
        #[arg(long)]
        unordered: bool,
        /// A failed input yields {"index", "error"} in its place instead of stopping the map.
        #[arg(long)]
        return_exceptions: bool,
        /// Each input is a list of arguments.
        #[arg(long)]
        starmap: bool,
        /// Keep no outputs: print only which inputs succeeded or failed.
        #[arg(long)]
        for_each: bool,
        /// Inputs per request.
        #[arg(long, default_value_t = 1000)]
        chunk_size: usize,
        /// When the map starts (--delay, --start-at: its inputs are stored at once and become
        /// due then), its key and its priority.
        #[command(flatten)]
        start: StartArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print a map's results from a cursor (to resume after a disconnect).
    Results {
        call_id: String,
        /// The last index already received (ordered), or the last completion position
        /// (--unordered); results after it are printed.
        #[arg(long, allow_negative_numbers = true)]
        after: Option<i64>,
        /// In the order inputs finished.
        #[arg(long)]
        unordered: bool,
        /// A failed input yields its error in its place instead of stopping.
        #[arg(long)]
        return_exceptions: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Cancel a call: its pending inputs never run, running ones are killed.
    Cancel {
        call_id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List calls, newest first.
    Calls {
        /// Only calls of this function (app.function or a bare name).
        #[arg(long)]
        function: Option<String>,
        /// Only calls of this app.
        #[arg(long)]
        app: Option<String>,
        /// Only calls in this state: pending, running, succeeded, failed or cancelled.
        #[arg(long)]
        state: Option<String>,
        /// Only calls made by: spawn, map or schedule.
        #[arg(long)]
        origin: Option<String>,
        /// How many calls.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Continue from a previous page's cursor.
        #[arg(long)]
        cursor: Option<String>,
        /// Only calls made since: a duration ago (`1h`) or an RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// Only calls made before: a duration ago or an RFC 3339 time.
        #[arg(long)]
        until: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List failed inputs across calls (of maps too), newest failure first.
    Inputs {
        /// The inputs' state: failed (the only one listed).
        #[arg(long, default_value = "failed")]
        state: String,
        #[command(flatten)]
        selection: InputSelection,
        /// How many inputs, at most.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Run an input again as a new call: one (CALL_ID, input 0 or --index), or every failed
    /// input a filter selects (--failed). An input re-run before is refused (one) or left out
    /// (--failed) unless --force, so the same re-run twice makes no second call.
    Rerun {
        /// The call whose input to run again.
        #[arg(required_unless_present = "failed", conflicts_with = "failed")]
        call_id: Option<String>,
        /// With CALL_ID: the input's index (a map's must be given).
        #[arg(long, conflicts_with = "failed")]
        index: Option<i64>,
        /// Re-run every failed input that --since, --until, --function and --app select.
        #[arg(long)]
        failed: bool,
        #[command(flatten)]
        selection: InputSelection,
        /// Re-run inputs re-run before too (and, with CALL_ID, one that has not ended).
        #[arg(long)]
        force: bool,
        /// With CALL_ID: names the re-run; the same key returns the same call.
        #[arg(long, conflicts_with = "failed")]
        idempotency_key: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print a call's logs.
    Logs {
        call_id: String,
        /// Only this input of a map.
        #[arg(long)]
        input: Option<i64>,
        /// Keep printing new lines until the call ends.
        #[arg(short, long)]
        follow: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List deployed apps and their functions (with --versions, each function's versions and
    /// their code snapshots).
    Apps {
        #[arg(long)]
        versions: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List schedules with their next and last firings; or trigger, pause or resume one.
    Schedules {
        #[command(subcommand)]
        action: Option<ScheduleAction>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Named secrets: values a function gets as environment variables, never shown by the
    /// API. Without an action, lists them.
    Secrets {
        #[command(subcommand)]
        action: Option<SecretAction>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List workers.
    Workers {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Run a worker that serves functions of a server (on this or any other machine).
    Worker(WorkerArgs),
    /// Measure throughput and latency on this machine (starts its own servers).
    Bench(BenchArgs),
    /// A no-op `serve` process, used by `hopper bench`.
    #[command(hide = true)]
    BenchServe,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Run one scenario: enqueue (64 single spawns in flight), bulk (spawns of 1,000),
    /// in-process (one worker), workers (100 workers taking an input at a time), command,
    /// latency, map, or dashboard (not run by default: it fills the store with a million
    /// calls first), or cold-start (not by default: a call of a command, a serve process and a
    /// Python function with no worker, each round after the last worker stopped; --inputs
    /// rounds, default 5), or payloads (not by default: a 100 MiB blob up, through a command
    /// and back, then --inputs byte strings of 1 MiB, default 1,000, mapped through a batched
    /// function; MB/s and the server's memory).
    #[arg(long)]
    pub scenario: Option<String>,
    /// Inputs per scenario (default: enqueue, in-process, command 100,000; workers 20,000;
    /// bulk 200,000;
    /// latency 1,000; map 1,000,000; dashboard: calls in the store, 1,000,000; crowd: workers
    /// waiting, 5,000).
    #[arg(long)]
    pub inputs: Option<u64>,
    /// Print a JSON array, one object per scenario.
    #[arg(long)]
    pub json: bool,
    /// Run against PostgreSQL (each scenario in a fresh schema) instead of SQLite.
    #[arg(long)]
    pub database: Option<String>,
    /// Servers sharing the database in each scenario (with --database): spawns go round-robin,
    /// an in-process worker runs on each, and latency round trips cross servers.
    #[arg(long, default_value_t = 1)]
    pub servers: usize,
    /// Keep one core busy with another process (a shell spinning) while the scenarios run:
    /// how the figures hold up when the machine has other work.
    #[arg(long)]
    pub background_load: bool,
}

#[derive(Subcommand, Debug)]
pub enum ScheduleAction {
    /// Show one schedule and its recent firings.
    Show { name: String },
    /// Fire a schedule now (its regular due times are unchanged).
    Trigger { name: String },
    /// Stop firing a schedule until it is resumed.
    Pause { name: String },
    /// Fire a paused schedule again, from its next due time after now.
    Resume { name: String },
}

#[derive(Subcommand, Debug)]
pub enum SecretAction {
    /// Create a secret, or replace every value it had (needs an admin token).
    Set {
        /// The secret's name: lowercase letters, digits, '_' and '-'.
        name: String,
        /// Values as KEY=VALUE (they stay in your shell's history: prefer --from-dotenv - for
        /// real keys).
        values: Vec<String>,
        /// Read KEY=VALUE lines from this file (a .env file), or from stdin with '-'.
        #[arg(long, value_name = "FILE")]
        from_dotenv: Option<PathBuf>,
    },
    /// List secrets: names, keys and the functions that read them (never values).
    List,
    /// Delete a secret that no deployed function reads (needs an admin token).
    Delete { name: String },
    /// Seal every secret again with the first key of the servers' HOPPER_SECRET_KEY, so that
    /// the keys after it can be dropped (needs an admin token).
    Reseal,
}

#[derive(Args, Debug)]
pub struct InputArgs {
    /// The input as JSON, e.g. '"world"', '{"n": 3}' or -5.
    #[arg(long, conflicts_with_all = ["input_file", "input_bytes"], allow_hyphen_values = true)]
    pub input: Option<String>,
    /// Read the input JSON from a file, or from stdin with '-'.
    #[arg(long, conflicts_with = "input_bytes")]
    pub input_file: Option<PathBuf>,
    /// hopper spawn only: the input is this file's bytes, as they are (audio, an image, a
    /// Parquet file), or stdin's with '-': stored as a blob, streamed, and given to the
    /// function as bytes.
    #[arg(long)]
    pub input_bytes: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Where the data lives (the SQLite file and its journal).
    #[arg(long, env = "HOPPER_DATA", default_value = ".hopper")]
    pub data: PathBuf,
    /// Keep the data in PostgreSQL instead of SQLite, e.g. postgres://user:pass@host/db; any
    /// number of servers can share one database.
    #[arg(long, env = "HOPPER_DATABASE", hide_env_values = true)]
    pub database: Option<Redacted<String>>,
    /// Most connections to PostgreSQL per server.
    #[arg(long, default_value_t = 16)]
    pub database_pool: u32,
    /// Keep Hopper's tables in this PostgreSQL schema (created if missing); default the
    /// connection's search path.
    #[arg(long)]
    pub database_schema: Option<String>,
    /// Address to listen on. Anything but loopback requires --token.
    #[arg(long, env = "HOPPER_LISTEN", default_value = "127.0.0.1:7433")]
    pub listen: SocketAddr,
    /// Deploy this manifest at start (repeatable), shipping its folder as a code snapshot.
    #[arg(long)]
    pub deploy: Vec<PathBuf>,
    /// Development: --deploy runs from the live folder instead of a snapshot, so an edited
    /// file takes effect at the next input without a deploy (this machine's workers only).
    #[arg(long)]
    pub dev: bool,
    /// Largest code snapshot a deploy may store (compressed and unpacked).
    #[arg(long, default_value = "256MiB")]
    pub max_bundle: String,
    /// Require this bearer token on every request (it has every scope).
    #[arg(long, env = "HOPPER_TOKEN", hide_env_values = true)]
    pub token: Option<Redacted<String>>,
    /// A token limited to some scopes, as SCOPES=TOKEN with scopes read, submit, work, admin
    /// (e.g. read,submit=s3cret); repeatable.
    #[arg(long = "scoped-token", value_name = "SCOPES=TOKEN")]
    pub scoped_tokens: Vec<Redacted<String>>,
    /// Tokens from a file, one `name:scopes:token` a line (e.g. `ci:submit,read:s3cret`;
    /// `#` comments), read again on SIGHUP and when it changes: tokens are added and removed
    /// without a restart, and stay out of the command line.
    #[arg(long, env = "HOPPER_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// The keys that seal secrets, one per line (64 hex digits; the first seals, any opens),
    /// read again on SIGHUP and when it changes. Default: HOPPER_SECRET_KEY, else (SQLite)
    /// DATA/secret.key, made when the first secret is set.
    #[arg(long, env = "HOPPER_SECRET_KEY_FILE")]
    pub secret_key_file: Option<PathBuf>,
    /// Cancel an open map whose client sends nothing (no inputs, no close, no read of the call
    /// or its results) for this long: its client was killed or gave up. 0 = never.
    #[arg(long, default_value = "10m")]
    pub map_idle_timeout: String,
    /// How long a lease lasts without a heartbeat: a lost worker costs at most this.
    #[arg(long, default_value = "30s")]
    pub lease: String,
    /// Ended calls, results and logs are deleted after this.
    #[arg(long, default_value = "7d")]
    pub retention: String,
    /// Largest input or output sent inline (as JSON in the request), e.g. 4MiB, 512KiB or a
    /// number of bytes; larger ones travel as blobs (--max-blob).
    #[arg(long, default_value = "4MiB")]
    pub max_payload: String,
    /// Largest blob: a byte string or payload stored apart from its input or output, which the
    /// SDKs use for anything over 256 KiB.
    #[arg(long, default_value = "1GiB")]
    pub max_blob: String,
    /// Where blobs' bytes are kept: `files` (in DATA/blobs; SQLite only), `database` (chunks in
    /// the SQLite file or in PostgreSQL), or an S3-compatible bucket, `s3://bucket/prefix`,
    /// reached with the AWS_* variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION,
    /// AWS_ENDPOINT_URL, AWS_ALLOW_HTTP). Give every server of a cluster the same. Default:
    /// files with SQLite, database with PostgreSQL.
    #[arg(
        long,
        env = "HOPPER_BLOBS",
        value_name = "files|database|s3://BUCKET/PREFIX"
    )]
    pub blobs: Option<String>,
    /// Time between SIGTERM and SIGKILL for a command over its timeout.
    #[arg(long, default_value = "5s")]
    pub kill_grace: String,
    /// Do not start local workers (run `hopper worker` yourself).
    #[arg(long)]
    pub no_workers: bool,
    /// Also let pages of this origin (scheme://host:port) change things through the API, e.g.
    /// a web app that calls Hopper from the browser (repeatable). Pages of other origins are
    /// refused (403).
    #[arg(long = "allow-origin", value_name = "ORIGIN")]
    pub allow_origins: Vec<String>,
    /// Also answer to this host name without a token (repeatable); a tokenless server answers
    /// only to loopback names, so a web page cannot reach it by DNS rebinding.
    #[arg(long = "allow-host", value_name = "NAME")]
    pub allow_hosts: Vec<String>,
    /// Connections served at once (long-polls and event streams hold one each); more wait.
    /// Lowered at start to what the open-file limit allows.
    #[arg(long, default_value_t = 16_384)]
    pub max_connections: usize,
    /// Workers' lease long-polls held open at once; past it a worker is answered 503
    /// `too_many_waiting` at once and retries, so workers never take the connections other
    /// requests need.
    #[arg(long, default_value_t = 8_192)]
    pub max_waiting: usize,
    /// Longest any request waits for something to happen (get --timeout steps, result streams,
    /// worker long-polls); lower it to stay under a proxy's idle timeout.
    #[arg(long, default_value = "300s")]
    pub max_wait: String,
    /// Longest a request's header or body may take to arrive (and an idle connection may stay).
    #[arg(long, default_value = "30s")]
    pub request_timeout: String,
    /// SMTP server for e-mail notifications: smtp://[user:pass@]host[:port], smtps://… or
    /// smtp+starttls://…
    #[arg(long, env = "HOPPER_SMTP", hide_env_values = true)]
    pub smtp: Option<Redacted<String>>,
    /// Sender of notification e-mails.
    #[arg(long, default_value = "hopper@localhost")]
    pub smtp_from: String,
    /// Base URL of this server in notification links (default: the listening address).
    #[arg(long, env = "HOPPER_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Serve HTTPS with this certificate chain (PEM, the server's certificate first); needs
    /// --tls-key. Read again when the file changes or on SIGHUP.
    #[arg(long, env = "HOPPER_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "HOPPER_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Log lines kept per attempt; past it one marker line says the rest were dropped.
    #[arg(long, default_value_t = 10_000)]
    pub max_log_lines: u32,
    /// How long a burst of failures is gathered into one notification.
    #[arg(long, default_value = "2s")]
    pub notify_gather: String,
    #[command(flatten)]
    pub machine: MachineArgs,
}

/// What this machine has, for placement; each is found when not given.
#[derive(Args, Debug, Clone, Default)]
pub struct MachineArgs {
    /// The GPUs to use, by index (0,1), each optionally with its kind (0=A100,4=L4); `none`
    /// for none. Default: those `nvidia-smi` lists.
    #[arg(long, env = "HOPPER_GPUS", value_name = "LIST")]
    pub gpus: Option<String>,
    /// The kind of the GPUs that --gpus gives no kind of (A100, H100, L4, …). Default: the
    /// name `nvidia-smi` gives.
    #[arg(long, env = "HOPPER_GPU_KIND", value_name = "KIND")]
    pub gpu_kind: Option<String>,
    /// Cores functions may ask for (`cpu`) in all. Default: this machine's.
    #[arg(long, env = "HOPPER_CPUS")]
    pub cpus: Option<String>,
    /// Memory functions may ask for (`memory`) in all, e.g. 64GiB. Default: this machine's
    /// (or its cgroup's limit).
    #[arg(long, env = "HOPPER_MEMORY")]
    pub memory: Option<String>,
    /// A label functions may require (`labels = { zone = "eu" }`), as key=value; repeatable
    /// (comma-separated in HOPPER_LABELS).
    #[arg(
        long = "label",
        env = "HOPPER_LABELS",
        value_delimiter = ',',
        value_name = "KEY=VALUE"
    )]
    pub labels: Vec<String>,
}

impl MachineArgs {
    /// The machine as found and overridden; errors name the flag.
    pub fn resolve(&self) -> Result<hopper_core::resources::Machine, String> {
        hopper_worker::machine::resolve(&hopper_worker::machine::Overrides {
            gpus: self.gpus.clone(),
            gpu_kind: self.gpu_kind.clone(),
            cpus: self.cpus.clone(),
            memory: self.memory.clone(),
            labels: self.labels.clone(),
        })
    }
}

#[derive(Args, Debug)]
pub struct WorkerArgs {
    /// Serve this function, as app.function (repeatable).
    #[arg(long = "function", required = true)]
    pub functions: Vec<String>,
    /// Inputs run at once.
    #[arg(long, default_value_t = 1)]
    pub concurrency: u32,
    /// After SIGTERM, running inputs get this long to finish before they are handed back.
    #[arg(long, default_value = "30s")]
    pub drain: String,
    /// Where code snapshots are unpacked, shared by the machine's workers (default
    /// ~/.cache/hopper/snapshots).
    #[arg(long, env = "HOPPER_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Most bytes of unpacked snapshots kept; least recently used ones no worker runs go first.
    #[arg(long, default_value = "4GiB")]
    pub cache_max: String,
    /// Time between SIGTERM and SIGKILL for a command over its timeout.
    #[arg(long, default_value = "5s")]
    pub kill_grace: String,
    #[command(flatten)]
    pub machine: MachineArgs,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Which failed inputs `hopper inputs` and `hopper rerun --failed` select.
#[derive(clap::Args, Debug, Clone)]
pub struct InputSelection {
    /// Only inputs of this call (a map's).
    #[arg(long)]
    pub call: Option<String>,
    /// Only inputs of this function (app.function).
    #[arg(long)]
    pub function: Option<String>,
    /// Only inputs of this app.
    #[arg(long)]
    pub app: Option<String>,
    /// Only failures since: a duration ago (`1h`) or an RFC 3339 time.
    #[arg(long)]
    pub since: Option<String>,
    /// Only failures before: a duration ago or an RFC 3339 time.
    #[arg(long)]
    pub until: Option<String>,
}

/// A spawned call's options: when it starts (at once, after `--delay`, or at `--start-at`),
/// its key and its priority.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct StartArgs {
    /// Start the call this long from now (e.g. 10m, 1h30m; at most a year): it is stored at
    /// once, pending until then, and can be cancelled before it starts.
    #[arg(long, conflicts_with = "start_at")]
    pub delay: Option<String>,
    /// Start the call at this time (RFC 3339, e.g. 2026-12-24T18:00:00Z).
    #[arg(long)]
    pub start_at: Option<String>,
    #[command(flatten)]
    pub queue: QueueArgs,
}

/// Where a call stands in its function's queue.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct QueueArgs {
    /// The call's key (a tenant, a customer; at most 200 bytes): its inputs are one group
    /// under the function's limits, and groups take turns. Default: the function's
    /// limits.key taken from each input.
    #[arg(long)]
    pub key: Option<String>,
    /// Higher runs first, -1000 to 1000. Default: the function's priority (0 unless set).
    #[arg(long, allow_negative_numbers = true)]
    pub priority: Option<i64>,
}

#[cfg(test)]
mod redaction_tests {
    #![allow(clippy::unwrap_used)] // test code
    use clap::Parser;

    /// The parsed command line, logged with `{:?}`, shows no token or SMTP password.
    #[test]
    fn debug_of_the_command_line_shows_no_credential() {
        let serve = super::Cli::try_parse_from([
            "hopper",
            "serve",
            "--token",
            "admin-t0ken",
            "--scoped-token",
            "read=read-t0ken",
            "--smtp",
            "smtps://mail:p4ssword@mail.example.com",
            "--database",
            "postgres://hopper:dbp4ss@db/hopper",
        ])
        .unwrap();
        let calls =
            super::Cli::try_parse_from(["hopper", "calls", "--token", "cl1ent-t0ken"]).unwrap();
        let shown = format!("{serve:?} {calls:?}");
        for secret in [
            "admin-t0ken",
            "read-t0ken",
            "p4ssword",
            "dbp4ss",
            "cl1ent-t0ken",
        ] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
    }
}
