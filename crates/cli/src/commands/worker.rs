//! `hopper worker`.

use hopper_worker::WorkerConfig;

use super::{duration, init_logging, stop_on_signals};
use crate::args::WorkerArgs;
use crate::exit::{self, Code};

pub async fn run(args: WorkerArgs) -> anyhow::Result<Code> {
    init_logging("info");
    let mut faults = Vec::new();
    for f in &args.functions {
        match hopper_core::FunctionName::parse(f) {
            Ok(name) if name.app.is_some() => {}
            Ok(_) => faults.push(format!("--function {f}: name it as app.function")),
            Err(e) => faults.push(format!("--function {f}: {e}")),
        }
    }
    if args.concurrency == 0 {
        faults.push("--concurrency: must be at least 1".to_string());
    }
    let drain = duration("--drain", &args.drain);
    let kill_grace = duration("--kill-grace", &args.kill_grace);
    for e in [drain.as_ref().err(), kill_grace.as_ref().err()]
        .into_iter()
        .flatten()
    {
        faults.push(e.to_string());
    }
    let cache_max = super::serve::parse_bytes(&args.cache_max);
    if cache_max.is_none() {
        faults.push(format!(
            "--cache-max: {:?} is not a size (expected e.g. 4GiB)",
            args.cache_max
        ));
    }
    if !faults.is_empty() {
        return Err(exit::usage(faults.join("\n")));
    }
    let cache_dir = args
        .cache_dir
        .clone()
        .unwrap_or_else(hopper_worker::cache::SnapshotCache::default_dir);
    // A cache this machine cannot write would fail every input it leases: refuse to start.
    std::fs::create_dir_all(&cache_dir)
        .and_then(|_| tempfile::tempfile_in(&cache_dir).map(drop))
        .map_err(|e| {
            exit::usage(format!(
                "--cache-dir {}: the worker cannot write there ({e}); code snapshots are unpacked there",
                cache_dir.display()
            ))
        })?;
    let snapshots =
        hopper_worker::cache::SnapshotCache::new(cache_dir, cache_max.unwrap_or(0) as u64);
    let config = WorkerConfig {
        server: super::server_urls(&args.client.server)?,
        token: args.client.token.clone(),
        functions: args.functions.clone(),
        concurrency: args.concurrency,
        host: host_name(),
        drain: drain?,
    };
    let shutdown = stop_on_signals(format!("worker of {}", args.functions.join(", ")))?;
    hopper_worker::run(config, kill_grace?, snapshots, shutdown).await?;
    Ok(Code::Ok)
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_string())
}
