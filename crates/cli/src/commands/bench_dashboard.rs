//! `hopper bench --scenario dashboard`: how fast the dashboard's pages answer with a million
//! calls in the store.
//!
//! The calls are made through the `Store` trait on the server's own database (spawning a
//! million calls over HTTP would measure the enqueue path for minutes): each has its input, an
//! attempt (1 in 20 failed), a log line, and the statistics slots its completion writes. Then
//! every page is read over HTTP the way the dashboard reads it, many times, and the p50/p99 of
//! each is printed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use hopper_core::api::{InputError, LogStream, Origin, Outcome};
use hopper_core::{CallId, WorkerId};
use hopper_sdk::{CallFilter, Client};
use hopper_store::{
    AppDeploy, CallInsert, FunctionKey, InputCompleteMany, InputLease, LogAppend, LogInsert, Store,
    WorkerRegisterParams,
};
use serde::Serialize;
use serde_json::Value;

/// How many times each page is read.
const READS: usize = 50;
/// Calls made concurrently while filling.
const FILL_CONCURRENCY: usize = 256;
/// Inputs leased and completed per batch while filling.
const COMPLETE_BATCH: u32 = 1_000;

/// One page's figures.
#[derive(Debug, Serialize)]
pub struct PageFigures {
    pub page: String,
    pub requests: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// Now, by the same clock the server uses.
pub fn now() -> i64 {
    use hopper_core::clock::Clock;
    hopper_core::clock::SystemClock.now()
}

/// Deploys the bench app (`manifest`) and makes `n` ended `bench.noop` calls in `store`.
pub async fn fill(store: Arc<dyn Store>, manifest: &str, n: u64) -> anyhow::Result<()> {
    let parsed = hopper_core::manifest::parse("<bench>", manifest, std::path::Path::new("/"))
        .map_err(|e| anyhow::anyhow!("the bench manifest: {e}"))?;
    store
        .app_deploy(AppDeploy {
            app: parsed.app,
            manifest: manifest.to_string(),
            functions: parsed.functions,
            schedules: Vec::new(),
            notify: Vec::new(),
            snapshot: None,
            now: now(),
        })
        .await?;
    let made: Vec<_> = futures_util::stream::iter(0..n)
        .map(|i| {
            let store = store.clone();
            async move {
                store
                    .call_insert(CallInsert {
                        id: CallId::generate(),
                        app: "bench".into(),
                        function: "noop".into(),
                        version: 1,
                        origin: Origin::Spawn,
                        idempotency_key: None,
                        inputs: vec![Value::from(i).to_string()],
                        accepting_inputs: false,
                        discard_results: false,
                        schedule: None,
                        rerun_of: None,
                        starts_at: None,
                        priority: 0,
                        key: None,
                        input_keys: Vec::new(),
                        now: now(),
                    })
                    .await
            }
        })
        .buffer_unordered(FILL_CONCURRENCY)
        .collect()
        .await;
    for result in made {
        result.context("cannot make a call")?;
    }
    let worker = WorkerId::generate();
    store
        .worker_register(WorkerRegisterParams {
            secret_hash: String::new(),
            id: worker.clone(),
            host: "bench".into(),
            pid: std::process::id(),
            functions: vec!["bench.noop".into()],
            concurrency: COMPLETE_BATCH,
            now: now(),
            machine: None,
        })
        .await?;
    let mut done = 0u64;
    loop {
        let leased = store
            .input_lease_available(InputLease {
                worker_id: worker.clone(),
                functions: vec![FunctionKey {
                    app: "bench".into(),
                    function: "noop".into(),
                }],
                max: COMPLETE_BATCH,
                now: now(),
                lease_ms: 60_000,
                deadline_slack_ms: 120_000,
            })
            .await?
            .rows;
        if leased.is_empty() {
            break;
        }
        let lines = leased
            .iter()
            .map(|l| LogInsert {
                lease: l.lease,
                stream: LogStream::Stdout,
                ts: now(),
                line: format!("working on input {}", l.index),
            })
            .collect();
        store
            .log_append_many(LogAppend {
                worker_id: worker.clone(),
                lines,
                max_lines_per_attempt: 100,
            })
            .await?;
        let results = leased
            .iter()
            .map(|l| {
                done += 1;
                let outcome = if done % 20 == 19 {
                    Outcome::Failed {
                        retry: true,
                        error: InputError::new("bench", "every 20th input fails"),
                    }
                } else {
                    Outcome::Succeeded {
                        output: Value::Null,
                    }
                };
                (l.lease, outcome)
            })
            .collect();
        store
            .input_complete_many(InputCompleteMany {
                worker_id: worker.clone(),
                batch_sizes: Vec::new(),
                results,
                now: now(),
            })
            .await?;
    }
    Ok(())
}

/// Reads each page `READS` times; `page` does one read of it.
async fn measure<F, Fut>(name: &str, mut page: F) -> anyhow::Result<PageFigures>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    page().await?; // warm
    let mut times = Vec::with_capacity(READS);
    for _ in 0..READS {
        let started = Instant::now();
        page().await?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    let at =
        |p: f64| super::bench::percentile(&times, p).map_or(0.0, |v| (v * 1000.0).round() / 1000.0);
    Ok(PageFigures {
        page: name.into(),
        requests: READS,
        p50_ms: at(50.0),
        p99_ms: at(99.0),
    })
}

/// Reads the dashboard's pages over HTTP, as the dashboard does.
/// `middle_at`: a time half-way through the calls' history.
pub async fn pages(client: &Client, middle_at: i64) -> anyhow::Result<Vec<PageFigures>> {
    let newest = client
        .calls(&CallFilter {
            limit: Some(1),
            ..Default::default()
        })
        .await?;
    let call = newest
        .calls
        .first()
        .map(|c| c.id.clone())
        .context("no calls in the store")?;
    // Half-way through the history, as a time bound (a duration ago).
    let mid_ago_s = ((now() - middle_at) / 1000).max(1);
    let middle_until = format!("{mid_ago_s}s");
    let filter = |state: Option<&str>, until: Option<String>, limit: u32| CallFilter {
        function: Some("bench.noop".into()),
        state: state.map(str::to_string),
        until,
        limit: Some(limit),
        ..Default::default()
    };
    let mut out = vec![
        measure("overview (stats, 15 min)", || async {
            client.stats("15m", None).await?;
            Ok(())
        })
        .await?,
        measure("calls list, newest 50", || async {
            client
                .calls(&CallFilter {
                    limit: Some(50),
                    ..Default::default()
                })
                .await?;
            Ok(())
        })
        .await?,
        measure("calls list, failed, newest 50", || async {
            client.calls(&filter(Some("failed"), None, 50)).await?;
            Ok(())
        })
        .await?,
        measure("calls list, failed, mid-history", || async {
            client
                .calls(&filter(Some("failed"), Some(middle_until.clone()), 50))
                .await?;
            Ok(())
        })
        .await?,
        measure("call page (call, input, attempts, logs)", || async {
            client.get(&call, Duration::ZERO).await?;
            client.input(&call, 0).await?;
            client.attempts(&call).await?;
            client.logs(&call, 0, None).await?;
            Ok(())
        })
        .await?,
    ];
    out.push(
        measure("function page (stats 24 h, 20 calls)", || async {
            client.stats("24h", Some("bench.noop")).await?;
            client.calls(&filter(None, None, 20)).await?;
            Ok(())
        })
        .await?,
    );
    Ok(out)
}
