//! `hopper bench`: throughput and latency on this machine, each scenario against a fresh
//! `hopper serve` on a temporary data dir, with nothing given up on durability.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::StreamExt;
use hopper_core::api::{DeployRequest, SpawnRequest, MAX_SPAWN_BATCH};
use hopper_sdk::handlers::FunctionOptions;
use hopper_sdk::{Client, MapOptions, Worker};
use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::args::BenchArgs;
use crate::exit::{self, Code};
use crate::output;

const SCENARIOS: [&str; 14] = [
    "enqueue",
    "bulk",
    "in-process",
    "workers",
    "command",
    "latency",
    "map",
    "dashboard",
    "crowd",
    "keys",
    "rate",
    "fairness",
    "cold-start",
    "payloads",
];

/// Scenarios that run only when asked for: the dashboard's fill takes minutes, the crowd
/// holds thousands of connections, the queue controls' are about limits, not speed, and the
/// cold starts wait for each worker to stop between rounds, and the payloads' write gigabytes.
const ON_REQUEST: [&str; 7] = [
    "dashboard",
    "crowd",
    "keys",
    "rate",
    "fairness",
    "cold-start",
    "payloads",
];

/// Rounds of the cold-start scenario, per kind of function, unless `--inputs` says.
const COLD_ROUNDS: u64 = 5;

/// Inputs the crowd scenario dispatches one at a time, with its workers waiting.
const CROWD_DISPATCHES: u64 = 500;

/// One scenario's figures.
#[derive(Debug, Serialize)]
pub(super) struct Figures {
    scenario: String,
    inputs: u64,
    seconds: f64,
    inputs_per_s: f64,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    peak_rss_bytes: Option<u64>,
    /// CPU the servers used from their start to the scenario's end, user and system.
    server_cpu_seconds: Option<f64>,
    /// `dashboard`: each page's read times, with the scenario's calls in the store.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pages: Vec<super::bench_dashboard::PageFigures>,
    /// `crowd`: the server with its workers waiting.
    #[serde(skip_serializing_if = "Option::is_none")]
    crowd: Option<super::bench_crowd::CrowdFigures>,
    /// `keys`, `rate`, `fairness`: what the limits did.
    #[serde(skip_serializing_if = "Option::is_none")]
    limits: Option<super::bench_limits::LimitFigures>,
    /// `payloads`: bytes a second through blobs, and the server's memory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) payloads: Option<super::bench_payloads::PayloadFigures>,
}

/// A `hopper serve` child on a temporary data dir.
struct BenchServer {
    child: Child,
    url: String,
    _data: tempfile::TempDir,
    /// With PostgreSQL: the database URL and the scenario's own schema, dropped after.
    postgres: Option<(String, String)>,
}

/// The database the bench runs on: `None` for SQLite.
static DATABASE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();

impl BenchServer {
    fn start(postgres: Option<(String, String)>) -> anyhow::Result<Self> {
        let data = tempfile::tempdir().context("cannot create a temporary folder")?;
        Self::start_on(data, postgres)
    }

    /// Starts a server on a data folder (or schema) that may hold data already.
    fn start_on(
        data: tempfile::TempDir,
        postgres: Option<(String, String)>,
    ) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot find this program")?;
        let mut command = Command::new(exe);
        command.arg("serve");
        if let Some((url, schema)) = &postgres {
            command.args(["--database", url, "--database-schema", schema]);
        }
        let mut child = command
            .args(["--listen", "127.0.0.1:0", "--data"])
            .arg(data.path())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start hopper serve")?;
        let stdout = child.stdout.take().context("no stdout from hopper serve")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let url = line
            .trim()
            .strip_prefix("hopper listening on ")
            .with_context(|| format!("unexpected output from hopper serve: {line:?}"))?
            .to_string();
        Ok(Self {
            child,
            url,
            _data: data,
            postgres,
        })
    }

    /// The server's peak resident memory so far (Linux `VmHWM`).
    fn peak_rss(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }
}

impl Drop for BenchServer {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How many servers share the database in each scenario (PostgreSQL only). Default 1.
static SERVERS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();

/// The servers of one scenario: one, or several over one PostgreSQL schema.
pub(super) struct Cluster {
    servers: Vec<BenchServer>,
}

impl Cluster {
    pub(super) fn start() -> anyhow::Result<Self> {
        let postgres = DATABASE.get().cloned().flatten().map(|url| {
            (
                url,
                format!("hopper_bench_{}", hopper_core::ids::random_hex()),
            )
        });
        let n = SERVERS.get().copied().unwrap_or(1).max(1);
        let servers = (0..n)
            .map(|_| BenchServer::start(postgres.clone()))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self { servers })
    }

    /// The first server's process id.
    pub(super) fn pid(&self) -> u32 {
        self.servers.first().map_or(0, |s| s.child.id())
    }

    /// A client of each server, after deploying the bench app through the first.
    pub(super) async fn clients(&self) -> anyhow::Result<Vec<Client>> {
        let mut clients = Vec::new();
        for (i, server) in self.servers.iter().enumerate() {
            clients.push(if i == 0 {
                deployed(server).await?
            } else {
                Client::new(&server.url, None)?
            });
        }
        Ok(clients)
    }

    /// The CPU the servers have used so far, together.
    fn cpu_seconds(&self) -> Option<f64> {
        let each: Option<Vec<Duration>> = self
            .servers
            .iter()
            .map(|s| super::bench_crowd::cpu_time(s.child.id()).ok())
            .collect();
        Some(each?.iter().sum::<Duration>().as_secs_f64())
    }

    /// The largest peak resident memory of the servers.
    fn peak_rss(&self) -> Option<u64> {
        self.servers.iter().filter_map(BenchServer::peak_rss).max()
    }

    /// Stops the servers and drops their schema, if they had one.
    pub(super) async fn finish(self) {
        let postgres = self.servers.first().and_then(|s| s.postgres.clone());
        drop(self);
        if let Some((url, schema)) = postgres {
            if let Err(e) = hopper_store_postgres::PgStore::drop_schema(&url, &schema).await {
                eprintln!("cannot drop the bench schema {schema}: {e}");
            }
        }
    }
}

fn manifest() -> anyhow::Result<String> {
    let exe = std::env::current_exe().context("cannot find this program")?;
    Ok(format!(
        r#"app = "bench"

[functions.noop]
external = true
concurrency = 1000
min_workers = 0

[functions.serve_noop]
serve = [{exe:?}, "bench-serve"]
concurrency = 16
batch = {{ max_size = 64, wait = "2ms" }}
min_workers = 1
max_workers = 1
{limited}"#,
        exe = exe.display().to_string(),
        limited = super::bench_limits::FUNCTIONS,
    ))
}

async fn deployed(server: &BenchServer) -> anyhow::Result<Client> {
    let client = Client::new(&server.url, None)?;
    client
        .deploy(&DeployRequest {
            manifest: manifest()?,
            file: "<bench>".into(),
            base_dir: "/".into(),
            snapshot: None,
            snapshot_root: None,
        })
        .await?;
    Ok(client)
}

/// Workers the `workers` scenario runs, each taking one input at a time.
const SMALL_WORKERS: usize = 100;

/// An in-process worker serving `bench.noop`, until the token is cancelled.
fn in_process_worker(client: &Client) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    worker_of(client, 1_000)
}

/// An in-process worker serving `bench.noop` with `concurrency` inputs at once, until the
/// token is cancelled.
fn worker_of(
    client: &Client,
    concurrency: u32,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let stop = CancellationToken::new();
    let options = FunctionOptions {
        concurrency,
        ..FunctionOptions::default()
    };
    let worker = Worker::new(client.clone(), "bench")
        .function_with("noop", options, |_: Value| async {
            Ok::<Value, String>(Value::Null)
        })
        .drain(Duration::from_secs(5));
    let token = stop.clone();
    let task = tokio::spawn(async move {
        if let Err(e) = worker.run(token).await {
            eprintln!("bench worker: {e}");
        }
    });
    (stop, task)
}

/// The `p`th percentile of sorted values (nearest rank).
pub(super) fn percentile(sorted_ms: &[f64], p: f64) -> Option<f64> {
    if sorted_ms.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * (sorted_ms.len() - 1) as f64).round() as usize;
    sorted_ms.get(rank.min(sorted_ms.len() - 1)).copied()
}

pub(super) fn figures(
    scenario: &str,
    inputs: u64,
    elapsed: Duration,
    mut latencies: Vec<f64>,
    server: &Cluster,
) -> Figures {
    latencies.sort_by(f64::total_cmp);
    let seconds = elapsed.as_secs_f64();
    Figures {
        scenario: scenario.into(),
        inputs,
        seconds: (seconds * 1000.0).round() / 1000.0,
        inputs_per_s: if seconds > 0.0 {
            (inputs as f64 / seconds).round()
        } else {
            0.0
        },
        p50_ms: percentile(&latencies, 50.0).map(|v| (v * 1000.0).round() / 1000.0),
        p99_ms: percentile(&latencies, 99.0).map(|v| (v * 1000.0).round() / 1000.0),
        peak_rss_bytes: server.peak_rss(),
        server_cpu_seconds: server.cpu_seconds(),
        pages: Vec::new(),
        crowd: None,
        limits: None,
        payloads: None,
    }
}

/// The queue controls' scenarios (`bench_limits`): `n` inputs, and `fairness`'s 100 more.
async fn limited(scenario: &str, n: u64) -> anyhow::Result<Figures> {
    let server = Cluster::start()?;
    let clients = server.clients().await?;
    let (elapsed, measured, inputs) = match scenario {
        "keys" => {
            let (e, m) = super::bench_limits::keys(&clients[0], n).await?;
            (e, m, n)
        }
        "rate" => {
            let (e, m) = super::bench_limits::rate(&clients[0], n).await?;
            (e, m, n)
        }
        _ => {
            let (e, m) = super::bench_limits::fairness(&clients[0], n).await?;
            (e, m, n + 100)
        }
    };
    let mut out = figures(scenario, inputs, elapsed, Vec::new(), &server);
    out.limits = Some(measured);
    server.finish().await;
    Ok(out)
}

async fn enqueue(n: u64) -> anyhow::Result<Figures> {
    let server = Cluster::start()?;
    let clients = server.clients().await?;
    let started = Instant::now();
    let latencies: Vec<f64> = futures_util::stream::iter(0..n)
        .map(|i| {
            // Round-robin over the servers.
            let client = clients[i as usize % clients.len()].clone();
            async move {
                let t = Instant::now();
                client
                    .spawn("bench.noop", Value::from(i), None)
                    .await
                    .map(|_| t.elapsed().as_secs_f64() * 1000.0)
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    let out = figures("enqueue", n, started.elapsed(), latencies, &server);
    server.finish().await;
    Ok(out)
}

/// Spawns `n` calls through bulk spawns of 1,000, four requests in flight.
async fn bulk(n: u64) -> anyhow::Result<Figures> {
    let server = Cluster::start()?;
    let clients = server.clients().await?;
    let batches: Vec<(u64, u64)> = (0..n)
        .step_by(MAX_SPAWN_BATCH)
        .map(|start| (start, (start + MAX_SPAWN_BATCH as u64).min(n)))
        .collect();
    let started = Instant::now();
    let latencies: Vec<f64> = futures_util::stream::iter(batches.into_iter().enumerate())
        .map(|(b, (start, end))| {
            let client = clients[b % clients.len()].clone();
            async move {
                let calls = (start..end)
                    .map(|i| SpawnRequest {
                        input: Value::from(i),
                        idempotency_key: None,
                        delay: None,
                        start_at: None,
                        key: None,
                        priority: None,
                    })
                    .collect();
                let t = Instant::now();
                client
                    .spawn_many("bench.noop", calls)
                    .await
                    .map(|_| t.elapsed().as_secs_f64() * 1000.0)
            }
        })
        .buffer_unordered(4)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    let out = figures("bulk", n, started.elapsed(), latencies, &server);
    server.finish().await;
    Ok(out)
}

/// Another process keeping one core busy, stopped when dropped.
struct BackgroundLoad(Child);

impl BackgroundLoad {
    fn start() -> anyhow::Result<Self> {
        let child = Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .stdin(Stdio::null())
            .spawn()
            .context("cannot start the background load (sh)")?;
        Ok(Self(child))
    }
}

impl Drop for BackgroundLoad {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// In-process workers for [`map_through`].
#[derive(Clone, Copy)]
enum Workers {
    /// None: the server's own (a `serve` function's).
    Server,
    /// One on each server, taking up to 1,000 inputs at a time.
    One,
    /// So many on each server, each taking one input at a time (as many small workers on
    /// other machines would): their leases and results arrive apart, at once.
    Small(usize),
}

/// Maps `n` no-op inputs over `function` and reads every result back.
async fn map_through(
    scenario: &str,
    function: &str,
    n: u64,
    in_process: Workers,
) -> anyhow::Result<Figures> {
    let server = Cluster::start()?;
    let clients = server.clients().await?;
    let client = clients[0].clone();
    let workers: Vec<_> = match in_process {
        Workers::Server => Vec::new(),
        Workers::One => clients.iter().map(in_process_worker).collect(),
        Workers::Small(each) => clients
            .iter()
            .flat_map(|c| (0..each).map(|_| worker_of(c, 1)))
            .collect(),
    };
    let started = Instant::now();
    let options = MapOptions {
        ordered: false,
        discard_results: true,
        chunk_size: 5_000,
        ..MapOptions::default()
    };
    let mut run = client
        .map::<u64, Value, _>(function, futures_util::stream::iter(0..n), options)
        .await?;
    let mut got = 0u64;
    while let Some(item) = run.next().await {
        item?;
        got += 1;
    }
    let elapsed = started.elapsed();
    if got != n {
        bail!("{scenario}: {got} results for {n} inputs");
    }
    let out = figures(scenario, n, elapsed, Vec::new(), &server);
    for (stop, task) in workers {
        stop.cancel();
        let _ = task.await;
    }
    server.finish().await;
    Ok(out)
}

async fn latency(n: u64) -> anyhow::Result<Figures> {
    let server = Cluster::start()?;
    let clients = server.clients().await?;
    // Calls go through the first server; the worker is on the last (another, if there are two).
    let client = clients[0].clone();
    let (stop, task) = in_process_worker(&clients[clients.len() - 1]);
    // Warm up: the worker is registered and long-polling.
    for _ in 0..20 {
        client
            .remote("bench.noop", Value::Null, Duration::from_secs(30))
            .await?;
    }
    let started = Instant::now();
    let mut latencies = Vec::with_capacity(n as usize);
    for i in 0..n {
        // What `.remote()` does: one request, answered once the call has ended.
        let t = Instant::now();
        let done = client
            .remote("bench.noop", Value::from(i), Duration::from_secs(30))
            .await?;
        if !done.state.is_terminal() {
            bail!("latency: call {} did not end", done.id);
        }
        latencies.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let out = figures("latency", n, started.elapsed(), latencies, &server);
    stop.cancel();
    let _ = task.await;
    server.finish().await;
    Ok(out)
}

/// Fills a store with `n` calls (the figures' rate is the fill's), then starts a server on it
/// and times the dashboard's pages. One server, whatever `--servers` says.
async fn dashboard(n: u64) -> anyhow::Result<Figures> {
    let data = tempfile::tempdir().context("cannot create a temporary folder")?;
    let postgres = DATABASE.get().cloned().flatten().map(|url| {
        (
            url,
            format!("hopper_bench_{}", hopper_core::ids::random_hex()),
        )
    });
    // Filled before the server starts: one writer at a time on a SQLite file.
    let started = Instant::now();
    let began_at = super::bench_dashboard::now();
    match &postgres {
        Some((url, schema)) => {
            let store = hopper_store_postgres::PgStore::open(&hopper_store_postgres::PgConfig {
                url: url.clone(),
                max_connections: 16,
                schema: Some(schema.clone()),
            })
            .await?;
            super::bench_dashboard::fill(std::sync::Arc::new(store.clone()), &manifest()?, n)
                .await?;
            store.close().await;
        }
        None => {
            let store =
                hopper_store_sqlite::SqliteStore::open(&data.path().join("hopper.db")).await?;
            super::bench_dashboard::fill(std::sync::Arc::new(store.clone()), &manifest()?, n)
                .await?;
            store.close().await;
        }
    }
    let elapsed = started.elapsed();
    let middle_at = began_at + (super::bench_dashboard::now() - began_at) / 2;
    let server = Cluster {
        servers: vec![BenchServer::start_on(data, postgres)?],
    };
    let clients = server.clients().await?;
    let pages = super::bench_dashboard::pages(&clients[0], middle_at).await?;
    let mut out = figures("dashboard", n, elapsed, Vec::new(), &server);
    out.pages = pages;
    server.finish().await;
    Ok(out)
}

/// Gathers `workers` workers on the (first) server, then times dispatch (sequential
/// `.remote()` calls: the scenario's p50/p99), spawns and `/healthz` with the crowd waiting.
async fn crowd(workers: u64) -> anyhow::Result<Figures> {
    use super::bench_crowd as bc;
    // This process holds a connection or two per worker.
    hopper_server::listen::raise_open_files();
    let server = Cluster::start()?;
    let clients = server.clients().await?;
    let client = clients[0].clone();
    let first = &server.servers[0];
    let pid = first.child.id();
    let alone = bc::rss(pid).unwrap_or(0);
    let crowd = bc::Crowd::gather(&first.url, "bench", "noop", workers as usize).await?;
    let registered = bc::registered(&client, workers as usize).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_cpu_percent = bc::idle_cpu_percent(pid).await?;
    let crowded = bc::rss(pid).unwrap_or(0);
    let (spawn_p50_ms, spawn_p99_ms) =
        bc::timed("a spawn", || client.spawn("bench.noop", Value::Null, None)).await?;
    let (healthz_p50_ms, healthz_p99_ms) = bc::timed("/healthz", || client.healthz()).await?;
    let started = Instant::now();
    let mut latencies = Vec::with_capacity(CROWD_DISPATCHES as usize);
    for i in 0..CROWD_DISPATCHES {
        let t = Instant::now();
        let done = client
            .remote("bench.noop", Value::from(i), Duration::from_secs(30))
            .await?;
        if !done.state.is_terminal() {
            bail!("crowd: call {} did not end", done.id);
        }
        latencies.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let mut out = figures(
        "crowd",
        CROWD_DISPATCHES,
        started.elapsed(),
        latencies,
        &server,
    );
    out.crowd = Some(bc::CrowdFigures {
        workers: workers as usize,
        registered,
        idle_cpu_percent,
        rss_per_worker_bytes: crowded.saturating_sub(alone) / workers.max(1),
        spawn_p50_ms,
        spawn_p99_ms,
        healthz_p50_ms,
        healthz_p99_ms,
    });
    crowd.stop().await;
    server.finish().await;
    Ok(out)
}

pub async fn run(args: BenchArgs) -> anyhow::Result<Code> {
    let scenarios: Vec<&str> = match args.scenario.as_deref() {
        None => SCENARIOS
            .iter()
            .copied()
            .filter(|s| !ON_REQUEST.contains(s))
            .collect(),
        Some(s) if SCENARIOS.contains(&s) => vec![s],
        Some(s) => {
            return Err(exit::usage(format!(
                "unknown scenario {s:?} (expected one of: {})",
                SCENARIOS.join(", ")
            )))
        }
    };
    if args.inputs == Some(0) {
        return Err(exit::usage("--inputs must be at least 1"));
    }
    if let Some(url) = &args.database {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(exit::usage("--database: expected a postgres:// URL"));
        }
    }
    let _ = DATABASE.set(args.database.clone());
    if args.servers == 0 || (args.servers > 1 && args.database.is_none()) {
        return Err(exit::usage(
            "--servers: more than one server needs --database (they share a PostgreSQL database)",
        ));
    }
    let _ = SERVERS.set(args.servers);
    let count = |default: u64| args.inputs.unwrap_or(default);
    let _load = if args.background_load {
        Some(BackgroundLoad::start()?)
    } else {
        None
    };
    let mut all = Vec::new();
    for scenario in scenarios {
        if !args.json {
            eprintln!("running {scenario} …");
        }
        if scenario == "cold-start" {
            all.extend(cold_start(count(COLD_ROUNDS)).await?);
            continue;
        }
        let figures = match scenario {
            "enqueue" => enqueue(count(100_000)).await?,
            "bulk" => bulk(count(200_000)).await?,
            "in-process" => {
                map_through("in-process", "bench.noop", count(100_000), Workers::One).await?
            }
            "workers" => {
                let workers = Workers::Small(SMALL_WORKERS);
                map_through("workers", "bench.noop", count(20_000), workers).await?
            }
            "command" => {
                map_through(
                    "command",
                    "bench.serve_noop",
                    count(100_000),
                    Workers::Server,
                )
                .await?
            }
            "latency" => latency(count(1_000)).await?,
            "dashboard" => dashboard(count(1_000_000)).await?,
            "crowd" => crowd(count(5_000)).await?,
            "keys" => limited("keys", count(20_000)).await?,
            "rate" => limited("rate", count(20_000)).await?,
            "fairness" => limited("fairness", count(50_000)).await?,
            "payloads" => super::bench_payloads::payloads(count(1_000)).await?,
            _ => map_through("map", "bench.noop", count(1_000_000), Workers::One).await?,
        };
        all.push(figures);
    }
    if args.json {
        output::json(&all);
    } else {
        let ms = |v: Option<f64>| v.map(|v| format!("{v:.3}")).unwrap_or_else(|| "-".into());
        let rows: Vec<Vec<String>> = all
            .iter()
            .map(|f| {
                vec![
                    f.scenario.clone(),
                    f.inputs.to_string(),
                    format!("{:.2}", f.seconds),
                    format!("{:.0}", f.inputs_per_s),
                    ms(f.p50_ms),
                    ms(f.p99_ms),
                    f.peak_rss_bytes
                        .map(|b| format!("{:.1} MiB", b as f64 / 1_048_576.0))
                        .unwrap_or_else(|| "-".into()),
                    f.server_cpu_seconds
                        .map(|s| format!("{:.0}", s * 1e6 / f.inputs.max(1) as f64))
                        .unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        output::table(
            &[
                "SCENARIO",
                "INPUTS",
                "SECONDS",
                "INPUTS/S",
                "P50 MS",
                "P99 MS",
                "SERVER PEAK RSS",
                "SERVER CPU µS/INPUT",
            ],
            &rows,
        );
        for f in all.iter().filter(|f| !f.pages.is_empty()) {
            crate::output::line(format_args!(
                "\n{} pages, read {} times each over HTTP with {} calls in the store (filled at {:.0} calls/s):",
                f.scenario,
                f.pages.first().map_or(0, |p| p.requests),
                f.inputs,
                f.inputs_per_s
            ));
            let rows: Vec<Vec<String>> = f
                .pages
                .iter()
                .map(|p| {
                    vec![
                        p.page.clone(),
                        format!("{:.3}", p.p50_ms),
                        format!("{:.3}", p.p99_ms),
                    ]
                })
                .collect();
            output::table(&["PAGE", "P50 MS", "P99 MS"], &rows);
        }
        for p in all.iter().filter_map(|f| f.payloads.as_ref()) {
            super::bench_payloads::print(p);
        }
        for (f, c) in all.iter().filter_map(|f| Some((f, f.crowd.as_ref()?))) {
            crate::output::line(format_args!(
                "\n{} workers waiting ({} listed active): server CPU {:.1}% of a core, {:.1} KiB of server memory per worker; \
                 dispatch p50 {} ms, p99 {} ms; spawn p50 {:.3} ms, p99 {:.3} ms; /healthz p50 {:.3} ms, p99 {:.3} ms",
                c.workers,
                c.registered,
                c.idle_cpu_percent,
                c.rss_per_worker_bytes as f64 / 1024.0,
                ms(f.p50_ms),
                ms(f.p99_ms),
                c.spawn_p50_ms,
                c.spawn_p99_ms,
                c.healthz_p50_ms,
                c.healthz_p99_ms,
            ));
        }
        for (f, l) in all.iter().filter_map(|f| Some((f, f.limits.as_ref()?))) {
            let mut said = Vec::new();
            if let (Some(rate), Some(most)) = (l.achieved_per_s, l.most_in_a_second) {
                said.push(format!(
                    "{rate:.0} starts/s achieved (limit 2000/s), at most {most} in any one second (leases, by the store's clock)"
                ));
            }
            if let Some(most) = l.most_per_key {
                said.push(format!(
                    "at most {most} of one key running at once (limit 1), over 1,000 keys"
                ));
            }
            if let (Some(p50), Some(p99)) = (l.small_wait_p50_ms, l.small_wait_p99_ms) {
                said.push(format!(
                    "a key spawning 100 inputs behind one with {} queued waited p50 {p50:.1} ms, p99 {p99:.1} ms to start",
                    f.inputs - 100
                ));
            }
            crate::output::line(format_args!("\n{}: {}", f.scenario, said.join("; ")));
        }
        crate::output::line(format_args!(
            "machine: {} cores, {}; {}{}",
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            std::env::consts::ARCH,
            match (&args.database, args.servers) {
                (Some(_), 1) => "PostgreSQL, 1 server".to_string(),
                (Some(_), n) => format!("PostgreSQL, {n} servers"),
                (None, _) => "SQLite (WAL, synchronous=FULL; leases NORMAL)".to_string(),
            },
            if args.background_load {
                "; one core kept busy by another process"
            } else {
                ""
            }
        ));
    }
    Ok(Code::Ok)
}

/// `cold-start`: a call of a function that has no worker (as every function has when idle,
/// with the default `min_workers = 0`), from the spawn to its result: a command, a `serve`
/// process, and a Python SDK function (when this machine's `python3` has the SDK). Each round
/// first waits for the function's last worker to stop (`scaledown_window = "1s"`).
async fn cold_start(rounds: u64) -> anyhow::Result<Vec<Figures>> {
    let server = Cluster::start()?;
    let clients = server.clients().await?;
    let client = clients[0].clone();
    let exe = std::env::current_exe().context("cannot find this program")?;
    let dir = tempfile::tempdir().context("cannot create a temporary folder")?;
    let python = Command::new("python3")
        .args(["-c", "import hopper"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let mut manifest = format!(
        "app = \"cold\"\n[functions.command]\ncommand = [\"sh\", \"-c\", \"echo null\"]\nscaledown_window = \"1s\"\n\
         [functions.serve]\nserve = [{exe:?}, \"bench-serve\"]\nscaledown_window = \"1s\"\n",
        exe = exe.display().to_string(),
    );
    let mut kinds = vec!["command", "serve"];
    if python {
        std::fs::write(
            dir.path().join("app.py"),
            "import hopper\n\napp = hopper.App(\"cold\")\n\n\n@app.function()\ndef noop(x=None):\n    return None\n",
        )
        .context("cannot write the Python function")?;
        manifest.push_str(
            "[functions.python]\nserve = [\"python3\", \"-m\", \"hopper._runner\", \"app.py\", \"noop\"]\nscaledown_window = \"1s\"\n",
        );
        kinds.push("python");
    } else {
        eprintln!("cold-start: no Python SDK for python3 here (pip install hopper-queue): its row is left out");
    }
    client
        .deploy(&DeployRequest {
            manifest,
            file: "<bench>".into(),
            base_dir: dir.path().display().to_string(),
            snapshot: None,
            snapshot_root: None,
        })
        .await?;
    let mut out = Vec::new();
    for kind in kinds {
        let function = format!("cold.{kind}");
        let mut latencies = Vec::new();
        let started = Instant::now();
        for _ in 0..rounds {
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let workers = client.workers().await?;
                let warm = workers
                    .iter()
                    .any(|w| w.state == "active" && w.functions.contains(&function));
                if !warm {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("cold-start: {function}'s worker did not stop within 2 minutes");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let t = Instant::now();
            let done = client
                .remote(&function, Value::Null, Duration::from_secs(120))
                .await?;
            if done.state != hopper_core::CallState::Succeeded {
                bail!(
                    "cold-start: {function} ended {:?}: {:?}",
                    done.state,
                    done.error
                );
            }
            latencies.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        out.push(figures(
            &format!("cold-start {kind}"),
            rounds,
            started.elapsed(),
            latencies,
            &server,
        ));
    }
    server.finish().await;
    Ok(out)
}

/// `hopper bench-serve`: says it is ready, then answers every `serve` request with `null`.
pub async fn serve_noop() -> anyhow::Result<Code> {
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    writeln!(out, "{}", serde_json::json!({ "ready": true }))?;
    out.flush()?;
    for line in stdin.lock().lines() {
        let line = line?;
        let request: Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(_) => continue,
        };
        let items = match request.get("batch").and_then(Value::as_array) {
            Some(batch) => batch.clone(),
            None => vec![request],
        };
        for item in items {
            if let Some(id) = item.get("id") {
                writeln!(out, "{}", serde_json::json!({ "id": id, "output": null }))?;
            }
        }
        out.flush()?;
    }
    Ok(Code::Ok)
}
