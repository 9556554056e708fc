//! `hopper worker`.

use hopper_worker::WorkerConfig;

use super::{duration, init_logging, stop_on_signals};
use crate::args::WorkerArgs;
use crate::exit::{self, Code};

pub async fn run(args: WorkerArgs) -> anyhow::Result<Code> {
    init_logging("info");
    let mut faults = Vec::new();
    for f in &args.functions {
        if let Err(e) = hopper_core::FunctionName::parse(f) {
            faults.push(format!("--function {f}: {e}"));
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
    let machine = args.machine.resolve();
    if let Err(e) = &machine {
        faults.push(e.clone());
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
    let functions = check_functions(&args).await?;
    // Each command runs under a guard (this binary), so that nothing it starts outlives the
    // worker.
    if let Ok(exe) = std::env::current_exe() {
        hopper_worker::guard::enable(exe);
    }
    let config = WorkerConfig {
        server: super::server_urls(&args.client.server)?,
        token: args.client.token.clone(),
        functions: functions.clone(),
        concurrency: args.concurrency,
        host: hopper_worker::machine::host_name(),
        drain: drain?,
        machine: machine.ok(),
    };
    let shutdown = stop_on_signals(format!("worker of {}", functions.join(", ")))?;
    hopper_worker::run(config, kill_grace?, snapshots, shutdown).await?;
    Ok(Code::Ok)
}

/// The functions to serve, as `app.function`: a bare name is the one deployed function of
/// that name. Refuses a function the server does not have when it has its app, or a name
/// close to it (a typo would register and idle without a word), naming the closest deployed
/// one. A function of an app not deployed at all is waited for (workers started before the
/// deploy), and the log says so, as is a function a deploy removed that still has queued
/// calls; an unreachable server is left to the worker's own retries, but then a bare name
/// cannot be resolved.
async fn check_functions(args: &WorkerArgs) -> anyhow::Result<Vec<String>> {
    let client = super::client(&args.client)?;
    let deployed = client.functions().await;
    let names: Vec<String> = match &deployed {
        Ok(found) => found.iter().map(|f| f.name.clone()).collect(),
        Err(_) => Vec::new(),
    };
    let mut resolved = Vec::new();
    let mut faults = Vec::new();
    for f in &args.functions {
        if !f.contains('.') {
            let of: Vec<&String> = names
                .iter()
                .filter(|n| n.split_once('.').is_some_and(|(_, name)| name == f))
                .collect();
            match (of.as_slice(), &deployed) {
                ([one], _) => resolved.push((*one).clone()),
                ([], Err(e)) => faults.push(format!(
                    "--function {f}: name it as app.function (the server could not be asked which app has it: {e})"
                )),
                ([], Ok(_)) => {
                    let of_app = in_app(&names, f);
                    faults.push(match hopper_core::suggest::closest(f, &names) {
                        _ if !of_app.is_empty() => format!(
                            "--function {f}: {f} is an app; name one of its functions ({})",
                            of_app.join(", ")
                        ),
                        Some(close) => format!("--function {f}: no such function is deployed; did you mean {close}?"),
                        None => format!("--function {f}: no such function is deployed; name it as app.function"),
                    });
                }
                (many, _) => faults.push(format!(
                    "--function {f}: several apps have it ({}): name one as app.function",
                    many.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(", ")
                )),
            }
            continue;
        }
        resolved.push(f.clone());
        if deployed.is_err() || names.contains(f) {
            continue;
        }
        // A function a deploy removed keeps its queued calls, which run on their version.
        let queued = client
            .calls(&hopper_sdk::CallFilter {
                function: Some(f.clone()),
                state: Some("pending".into()),
                limit: Some(1),
                ..Default::default()
            })
            .await
            .is_ok_and(|page| !page.calls.is_empty());
        if queued {
            tracing::warn!(
                function = %f,
                "no longer deployed: this worker runs the calls it left queued"
            );
            continue;
        }
        let app = f.split_once('.').map_or(f.as_str(), |(app, _)| app);
        let of_app = in_app(&names, app);
        let close = hopper_core::suggest::closest(f, &names);
        if of_app.is_empty() {
            // An app not deployed yet (workers started before its deploy), or a typo in its
            // name: waited for, and said.
            let hint = close
                .map(|c| format!(" (did you mean {c}?)"))
                .unwrap_or_default();
            tracing::warn!(
                function = %f,
                "app {app} is not deployed (yet): this worker waits for it{hint}"
            );
            continue;
        }
        faults.push(match close.filter(|c| c.starts_with(&format!("{app}."))) {
            Some(close) => {
                format!("--function {f}: no such function is deployed; did you mean {close}?")
            }
            None => format!(
                "--function {f}: app {app} has no such function (it has {})",
                of_app.join(", ")
            ),
        });
    }
    if faults.is_empty() {
        Ok(resolved)
    } else {
        Err(exit::usage(faults.join("\n")))
    }
}

/// The deployed functions (`app.function`) of `app`.
fn in_app<'a>(names: &'a [String], app: &str) -> Vec<&'a str> {
    names
        .iter()
        .filter(|n| n.split_once('.').is_some_and(|(a, _)| a == app))
        .map(String::as_str)
        .collect()
}
