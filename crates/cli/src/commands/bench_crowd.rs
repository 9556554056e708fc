//! `hopper bench --scenario crowd`: one server with thousands of workers connected to it.
//!
//! Each simulated worker is the SDK's own worker (the protocol `hopper worker` speaks) with a
//! client of its own, so with connections of its own: it registers, long-polls for one input
//! at a time and heartbeats. Once every worker is waiting, the scenario measures what an
//! operator sizes a server by: its CPU while the crowd waits, its memory per worker, and how
//! fast inputs are dispatched, spawns are answered and `/healthz` answers with the crowd there.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hopper_sdk::handlers::FunctionOptions;
use hopper_sdk::{Client, Worker};
use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// Requests of each kind timed while the crowd waits.
const SAMPLES: usize = 200;
/// How long the server's CPU is sampled while the crowd waits.
const IDLE_WINDOW: Duration = Duration::from_secs(5);
/// Workers started at once while the crowd gathers.
const START_STEP: usize = 250;

/// What the crowd cost and how the server answered meanwhile.
#[derive(Debug, Serialize)]
pub struct CrowdFigures {
    pub workers: usize,
    /// Workers the server listed as active once the crowd had gathered.
    pub registered: usize,
    /// The server's CPU while every worker waited, in percent of one core.
    pub idle_cpu_percent: f64,
    /// The server's resident memory with the crowd minus without, per worker.
    pub rss_per_worker_bytes: u64,
    pub spawn_p50_ms: f64,
    pub spawn_p99_ms: f64,
    pub healthz_p50_ms: f64,
    pub healthz_p99_ms: f64,
}

/// The workers of a crowd, stopped by [`Crowd::stop`].
pub struct Crowd {
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Crowd {
    /// Starts `n` workers serving `app.function` (a no-op) of the server at `url`, each with a
    /// client of its own.
    pub async fn gather(url: &str, app: &str, function: &str, n: usize) -> anyhow::Result<Crowd> {
        let stop = CancellationToken::new();
        let mut tasks = Vec::with_capacity(n);
        for i in 0..n {
            let client = Client::new(url, None)?;
            let options = FunctionOptions {
                concurrency: 1,
                ..FunctionOptions::default()
            };
            let worker = Worker::new(client, app)
                .function_with(function, options, |_: Value| async {
                    Ok::<Value, String>(Value::Null)
                })
                .drain(Duration::from_secs(5));
            let token = stop.clone();
            tasks.push(tokio::spawn(async move {
                if let Err(e) = worker.run(token).await {
                    eprintln!("crowd worker: {e}");
                }
            }));
            if (i + 1) % START_STEP == 0 {
                // Let each step register before the next connects.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(Crowd { stop, tasks })
    }

    pub async fn stop(self) {
        self.stop.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Waits until the server lists `n` active workers (or a minute passes), and returns how many
/// it lists.
pub async fn registered(client: &Client, n: usize) -> anyhow::Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let active = client
            .workers()
            .await?
            .iter()
            .filter(|w| w.state == "active")
            .count();
        if active >= n || Instant::now() > deadline {
            return Ok(active);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A process's CPU time so far, all its threads, user and system, from `/proc/{pid}/stat`
/// (in ticks of `USER_HZ`, 100 a second on Linux whatever the kernel's own rate).
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read /proc/{pid}/stat"))?;
    // After the command's closing parenthesis, utime and stime are the 12th and 13th fields.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .context("unexpected /proc/pid/stat")
    };
    Ok(Duration::from_millis((ticks(11)? + ticks(12)?) * 10))
}

/// A process's resident memory now (`VmRSS`), in bytes.
pub fn rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The server's CPU over [`IDLE_WINDOW`], in percent of one core.
pub async fn idle_cpu_percent(pid: u32) -> anyhow::Result<f64> {
    let (cpu, wall) = (cpu_time(pid)?, Instant::now());
    tokio::time::sleep(IDLE_WINDOW).await;
    let used = cpu_time(pid)?.saturating_sub(cpu);
    Ok((used.as_secs_f64() / wall.elapsed().as_secs_f64() * 1000.0).round() / 10.0)
}

/// p50 and p99 of [`SAMPLES`] sequential requests made by `request`, in milliseconds.
pub async fn timed<F, Fut, T, E>(what: &str, mut request: F) -> anyhow::Result<(f64, f64)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let mut ms = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let t = Instant::now();
        if let Err(e) = request().await {
            bail!("crowd: {what} failed with the crowd waiting: {e}");
        }
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    ms.sort_by(f64::total_cmp);
    let at = |p| super::bench::percentile(&ms, p).unwrap_or(0.0);
    Ok((at(50.0), at(99.0)))
}
