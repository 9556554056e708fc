//! `hopper bench --scenario keys | rate | fairness`: the queue controls under load. Each runs
//! an in-process worker that records when each input started (its handler's first moment,
//! just after its lease), so the figures come from what ran, not from what was asked.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use futures_util::StreamExt;
use hopper_core::api::{SpawnRequest, MAX_SPAWN_BATCH};
use hopper_sdk::handlers::FunctionOptions;
use hopper_sdk::{Client, Worker};
use serde::Serialize;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// The manifest's functions these scenarios run (external: served by the bench itself).
pub const FUNCTIONS: &str = r#"
[functions.per_key]
external = true
concurrency = 1000
min_workers = 0
limits = { key = "/k", max_running_per_key = 1 }

[functions.rated]
external = true
concurrency = 1000
min_workers = 0
limits = { rate = "2000/s" }

[functions.fair]
external = true
concurrency = 50
min_workers = 0
limits = { key = "/k" }
"#;

/// What a limits scenario measured besides throughput.
#[derive(Debug, Serialize)]
pub struct LimitFigures {
    /// `rate`: starts (leases, by the store's clock) per second from the first to the last,
    /// and the most in any one-second window (the limit is 2,000).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub achieved_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub most_in_a_second: Option<u64>,
    /// `keys`: the most inputs of one key that ran at once (the limit is 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub most_per_key: Option<u64>,
    /// `fairness`: the small key's wait from its spawn to its start, p50 and p99, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub small_wait_p50_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub small_wait_p99_ms: Option<f64>,
}

/// Per input (its `n`): when it started and ended, from the bench's start.
type Runs = Arc<Mutex<Vec<(u64, Duration, Duration)>>>;

/// An in-process worker serving `bench.{function}`: each input `{"n", "k"}` sleeps `work` and
/// records its start and end.
fn worker(
    client: &Client,
    function: &str,
    concurrency: u32,
    work: Duration,
    epoch: Instant,
    runs: Runs,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let stop = CancellationToken::new();
    let options = FunctionOptions {
        concurrency,
        ..FunctionOptions::default()
    };
    let worker = Worker::new(client.clone(), "bench")
        .function_with(function, options, move |input: Value| {
            let runs = runs.clone();
            async move {
                let started = epoch.elapsed();
                if !work.is_zero() {
                    tokio::time::sleep(work).await;
                }
                let n = input["n"].as_u64().unwrap_or(u64::MAX);
                if let Ok(mut runs) = runs.lock() {
                    runs.push((n, started, epoch.elapsed()));
                }
                Ok::<Value, String>(Value::Null)
            }
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

/// Spawns `inputs` as calls of `bench.{function}` by bulk spawns, four in flight.
async fn spawn_all(
    client: &Client,
    function: &str,
    inputs: Vec<Value>,
) -> anyhow::Result<Vec<hopper_core::CallId>> {
    let function = format!("bench.{function}");
    let batches: Vec<Vec<SpawnRequest>> = inputs
        .chunks(MAX_SPAWN_BATCH)
        .map(|chunk| {
            chunk
                .iter()
                .map(|input| SpawnRequest {
                    input: input.clone(),
                    idempotency_key: None,
                    delay: None,
                    start_at: None,
                    key: None,
                    priority: None,
                })
                .collect()
        })
        .collect();
    let results: Vec<anyhow::Result<Vec<hopper_core::CallId>>> =
        futures_util::stream::iter(batches)
            .map(|calls| {
                let client = client.clone();
                let function = function.clone();
                async move {
                    let spawned = client.spawn_many(&function, calls).await?;
                    Ok(spawned.into_iter().map(|c| c.id).collect())
                }
            })
            .buffer_unordered(4)
            .collect()
            .await;
    let mut ids = Vec::new();
    for batch in results {
        ids.extend(batch?);
    }
    Ok(ids)
}

/// Waits until `n` inputs have run, or fails after `limit`.
async fn until_ran(runs: &Runs, n: usize, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let done = runs.lock().map(|r| r.len()).unwrap_or(0);
        if done >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{done} of {n} inputs ran in {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The most spans (start, end) that overlap at once.
fn most_at_once(mut edges: Vec<(Duration, i64)>) -> u64 {
    edges.sort();
    let (mut now, mut most) = (0i64, 0i64);
    for (_, step) in edges {
        now += step;
        most = most.max(now);
    }
    most.max(0) as u64
}

/// `keys`: `n` inputs over 1,000 keys with `max_running_per_key = 1`, each 1 ms of work.
/// Returns (inputs, elapsed, figures).
pub async fn keys(client: &Client, n: u64) -> anyhow::Result<(Duration, LimitFigures)> {
    let epoch = Instant::now();
    let runs: Runs = Arc::default();
    let inputs = (0..n)
        .map(|i| json!({"n": i, "k": format!("key-{}", i % 1000)}))
        .collect();
    spawn_all(client, "per_key", inputs).await?;
    let started = Instant::now();
    let (stop, task) = worker(
        client,
        "per_key",
        1000,
        Duration::from_millis(1),
        epoch,
        runs.clone(),
    );
    until_ran(&runs, n as usize, Duration::from_secs(600)).await?;
    let elapsed = started.elapsed();
    stop.cancel();
    let _ = task.await;
    let runs = runs.lock().map(|r| r.clone()).unwrap_or_default();
    let mut per_key: std::collections::HashMap<u64, Vec<(Duration, i64)>> = Default::default();
    for (i, s, e) in runs {
        let edges = per_key.entry(i % 1000).or_default();
        edges.push((s, 1));
        edges.push((e, -1));
    }
    let most = per_key.into_values().map(most_at_once).max();
    Ok((
        elapsed,
        LimitFigures {
            achieved_per_s: None,
            most_in_a_second: None,
            most_per_key: most,
            small_wait_p50_ms: None,
            small_wait_p99_ms: None,
        },
    ))
}

/// `rate`: `n` inputs of a function with `rate = "2000/s"`, no work.
pub async fn rate(client: &Client, n: u64) -> anyhow::Result<(Duration, LimitFigures)> {
    let epoch = Instant::now();
    let runs: Runs = Arc::default();
    let inputs = (0..n).map(|i| json!({"n": i})).collect();
    let ids = spawn_all(client, "rated", inputs).await?;
    let started = Instant::now();
    let (stop, task) = worker(client, "rated", 1000, Duration::ZERO, epoch, runs.clone());
    until_ran(&runs, n as usize, Duration::from_secs(600)).await?;
    let elapsed = started.elapsed();
    stop.cancel();
    let _ = task.await;
    // The starts the rate counts: each attempt's lease time, as the store recorded it (a
    // handler starts a little after its lease, each by its own delay).
    let leased: Vec<anyhow::Result<Vec<i64>>> = futures_util::stream::iter(ids)
        .map(|id| {
            let client = client.clone();
            async move {
                let attempts = client.attempts(&id).await?;
                attempts
                    .iter()
                    .map(|a| {
                        chrono::DateTime::parse_from_rfc3339(&a.started_at)
                            .map(|t| t.timestamp_millis())
                            .map_err(|e| anyhow::anyhow!("attempt of {id}: {e}"))
                    })
                    .collect()
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut starts = Vec::new();
    for call in leased {
        starts.extend(call?);
    }
    starts.sort_unstable();
    let span = match (starts.first(), starts.last()) {
        (Some(a), Some(b)) if b > a => (b - a) as f64 / 1000.0,
        _ => 0.0,
    };
    let mut most = 0;
    let mut j = 0;
    for i in 0..starts.len() {
        while starts[i] - starts[j] >= 1_000 {
            j += 1;
        }
        most = most.max(i - j + 1);
    }
    Ok((
        elapsed,
        LimitFigures {
            achieved_per_s: (span > 0.0).then(|| ((starts.len() - 1) as f64 / span).round()),
            most_in_a_second: Some(most as u64),
            most_per_key: None,
            small_wait_p50_ms: None,
            small_wait_p99_ms: None,
        },
    ))
}

/// `fairness`: a key with `n` queued inputs (1 ms of work each, 50 at once), then another key
/// spawning 100 one by one; how long the second key's inputs waited to start.
pub async fn fairness(client: &Client, n: u64) -> anyhow::Result<(Duration, LimitFigures)> {
    let epoch = Instant::now();
    let runs: Runs = Arc::default();
    let inputs = (0..n).map(|i| json!({"n": i, "k": "big"})).collect();
    spawn_all(client, "fair", inputs).await?;
    let started = Instant::now();
    let (stop, task) = worker(
        client,
        "fair",
        50,
        Duration::from_millis(1),
        epoch,
        runs.clone(),
    );
    until_ran(&runs, 500, Duration::from_secs(120)).await?;
    let mut spawned = Vec::new();
    for i in 0..100u64 {
        let at = epoch.elapsed();
        client
            .spawn("bench.fair", json!({"n": n + i, "k": "small"}), None)
            .await?;
        spawned.push((n + i, at));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    until_ran(&runs, n as usize + 100, Duration::from_secs(600)).await?;
    let elapsed = started.elapsed();
    stop.cancel();
    let _ = task.await;
    let runs = runs.lock().map(|r| r.clone()).unwrap_or_default();
    let mut waits: Vec<f64> = spawned
        .iter()
        .filter_map(|(i, at)| {
            let (_, s, _) = runs.iter().find(|(n, _, _)| n == i)?;
            Some((s.saturating_sub(*at)).as_secs_f64() * 1000.0)
        })
        .collect();
    waits.sort_by(f64::total_cmp);
    Ok((
        elapsed,
        LimitFigures {
            achieved_per_s: None,
            most_in_a_second: None,
            most_per_key: None,
            small_wait_p50_ms: super::bench::percentile(&waits, 50.0),
            small_wait_p99_ms: super::bench::percentile(&waits, 99.0),
        },
    ))
}
