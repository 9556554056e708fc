//! `hopper deploy`, `apps` and `workers`.

use std::path::Path;

use hopper_core::api::DeployRequest;

use super::client;
use crate::args::ClientArgs;
use crate::exit::{self, Code};
use crate::output;

/// Reads a manifest file into a deploy request: its text, and its folder as the base for
/// relative `workdir`s.
pub fn deploy_request(path: &Path) -> anyhow::Result<DeployRequest> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| exit::usage(format!("cannot read {}: {e}", path.display())))?;
    let absolute =
        std::path::absolute(path).map_err(|e| exit::usage(format!("{}: {e}", path.display())))?;
    let base_dir = absolute
        .parent()
        .unwrap_or(Path::new("/"))
        .to_string_lossy()
        .into_owned();
    Ok(DeployRequest {
        manifest: text,
        file: path.display().to_string(),
        base_dir,
        snapshot: None,
        snapshot_root: None,
    })
}

/// `hopper deploy --check`: the manifest's faults, all of them (exit 2), or that it is right;
/// no server is asked. What only a server knows (secrets, other apps) is checked at deploy.
pub fn check(path: &Path) -> anyhow::Result<Code> {
    let req = deploy_request(path)?;
    hopper_core::manifest::parse(&req.file, &req.manifest, Path::new(&req.base_dir))
        .map_err(|e| exit::usage(e.to_string()))?;
    println!("{}: no faults found", req.file);
    Ok(Code::Ok)
}

/// `hopper deploy`: ships the manifest's folder (or its `root`) as a code snapshot unless
/// `no_snapshot`, uploading it only if the server does not have it yet.
pub async fn deploy(
    args: &ClientArgs,
    path: &Path,
    max_bundle: &str,
    no_snapshot: bool,
) -> anyhow::Result<Code> {
    let mut req = deploy_request(path)?;
    // The manifest's own faults are found here, before a server is asked (or needed); the
    // server checks again what only it knows (secrets, schedules' functions).
    hopper_core::manifest::parse(&req.file, &req.manifest, Path::new(&req.base_dir))
        .map_err(|e| exit::usage(e.to_string()))?;
    let client = client(args)?;
    let mut shipped = None;
    if !no_snapshot {
        let max = super::serve::parse_bytes(max_bundle).ok_or_else(|| {
            exit::usage(format!(
                "--max-bundle: {max_bundle:?} is not a size (expected e.g. 64MiB)"
            ))
        })? as u64;
        let (manifest, text) = (path.to_path_buf(), req.manifest.clone());
        let bundle = tokio::task::spawn_blocking(move || {
            hopper_worker::snapshot::for_manifest(&manifest, &text, max, &[])
        })
        .await?
        .map_err(exit::usage)?;
        if bundle.files == 0 {
            eprintln!(
                "warning: the code snapshot of {} holds no files: .gitignore or .hopperignore leave out everything",
                bundle.root.display()
            );
        }
        if client.snapshot(&bundle.hash).await?.is_none() {
            let bytes = bundle.bytes().map_err(exit::usage)?;
            match client.snapshot_put(&bundle.hash, bytes.clone()).await {
                Ok(_) => {}
                // The server answers 413 before reading a body over its limit and closes the
                // connection, which a client still sending sees as a broken pipe.
                Err(hopper_sdk::Error::Transport(reason)) if bytes.len() > 1 << 20 => {
                    return Err(exit::usage(format!(
                        "the server closed the connection while the {:.1} MiB snapshot was being sent ({reason}): it is probably over the server's limit (hopper serve --max-bundle, 256MiB by default)",
                        bytes.len() as f64 / 1_048_576.0
                    )));
                }
                Err(e) => return Err(e.into()),
            }
        }
        req.base_dir = bundle.folder.to_string_lossy().into_owned();
        req.snapshot = Some(bundle.hash.clone());
        req.snapshot_root = Some(bundle.root.to_string_lossy().into_owned());
        shipped = Some(bundle);
    }
    let app = client.deploy(&req).await?;
    if args.json {
        output::json(&app);
    } else {
        let names: Vec<String> = app.functions.iter().map(|f| f.name.clone()).collect();
        let code = match &shipped {
            Some(b) => format!(
                "code {} ({} file{} of {}{})",
                short_hash(&b.hash),
                b.files,
                if b.files == 1 { "" } else { "s" },
                b.root.display(),
                if b.unchanged {
                    ", unchanged since packed"
                } else {
                    ""
                }
            ),
            None => format!(
                "no snapshot: workers run the code in {} on their own machine",
                req.base_dir
            ),
        };
        crate::output::line(format_args!(
            "deployed {} version {}: {}; {code}",
            app.name,
            app.version,
            names.join(", ")
        ));
        for note in &app.notes {
            crate::output::line(format_args!("note: {note}"));
        }
    }
    Ok(Code::Ok)
}

/// `sha256:0123456789ab…` → `0123456789ab`.
fn short_hash(hash: &str) -> String {
    hash.trim_start_matches("sha256:")
        .chars()
        .take(12)
        .collect()
}

/// Where a function's code comes from, as `hopper apps` shows it.
fn code_of(spec: &hopper_core::FunctionSpec) -> String {
    match (&spec.snapshot, spec.runner()) {
        (_, hopper_core::function::Runner::External) => "-".into(),
        (Some(hash), _) => format!("snapshot {}", short_hash(hash)),
        (None, _) => format!("live folder {}", spec.workdir),
    }
}

pub async fn apps(args: &ClientArgs, versions: bool) -> anyhow::Result<Code> {
    let client = client(args)?;
    let apps = client.apps().await?;
    if versions {
        let mut all = Vec::new();
        for f in apps.iter().flat_map(|a| a.functions.iter()) {
            all.extend(client.function_versions(&f.name).await?);
        }
        if args.json {
            output::json(&all);
            return Ok(Code::Ok);
        }
        let rows: Vec<Vec<String>> = all
            .iter()
            .map(|v| {
                let (snapshot, size, files) = match (&v.snapshot, &v.spec.snapshot) {
                    (Some(s), _) => (
                        short_hash(&s.hash),
                        format!("{:.1} MiB", s.size as f64 / 1_048_576.0),
                        s.files.to_string(),
                    ),
                    (None, Some(hash)) => (
                        format!("{} (pruned)", short_hash(hash)),
                        "-".into(),
                        "-".into(),
                    ),
                    (None, None) => (code_of(&v.spec), "-".into(), "-".into()),
                };
                vec![
                    v.name.clone(),
                    v.version.to_string(),
                    v.deployed_at.clone(),
                    snapshot,
                    size,
                    files,
                ]
            })
            .collect();
        output::table(
            &["FUNCTION", "VERSION", "DEPLOYED", "CODE", "SIZE", "FILES"],
            &rows,
        );
        return Ok(Code::Ok);
    }
    if args.json {
        output::json(&apps);
        return Ok(Code::Ok);
    }
    let rows: Vec<Vec<String>> = apps
        .iter()
        .flat_map(|a| {
            a.functions.iter().map(move |f| {
                vec![
                    f.name.clone(),
                    a.version.to_string(),
                    match f.spec.runner() {
                        hopper_core::function::Runner::Command(c) => one_line(c),
                        hopper_core::function::Runner::Serve(c) => {
                            format!("serve: {}", one_line(c))
                        }
                        hopper_core::function::Runner::External => "external".into(),
                    },
                    hopper_core::duration::format(std::time::Duration::from_millis(
                        f.spec.timeout_ms,
                    )),
                    f.spec.retries.max_retries.to_string(),
                    f.spec.concurrency.to_string(),
                    needs(&f.spec.resources),
                    code_of(&f.spec),
                ]
            })
        })
        .collect();
    output::table(
        &[
            "FUNCTION",
            "VERSION",
            "COMMAND",
            "TIMEOUT",
            "RETRIES",
            "CONCURRENCY",
            "NEEDS",
            "CODE",
        ],
        &rows,
    );
    // What keeps a function from running, under the table.
    for f in apps.iter().flat_map(|a| a.functions.iter()) {
        if let Some(why) = &f.waiting_for {
            eprintln!("{}: {why}", f.name);
        }
        if let Some(failed) = f.startup.as_ref().and_then(|s| s.failed.as_ref()) {
            eprintln!("{}: its process failed at start: {failed}", f.name);
        }
    }
    Ok(Code::Ok)
}

/// An argv on one line of a table: its control characters (a newline in a `python -c`
/// script) escaped.
fn one_line(argv: &[String]) -> String {
    argv.join(" ")
        .chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// A function's resource request as the table shows it: `gpu A100:2, cpu 4, 16GiB, zone=eu`.
fn needs(r: &hopper_core::resources::Resources) -> String {
    let mut parts = Vec::new();
    if let Some(gpu) = &r.gpu {
        parts.push(format!("gpu {}", gpu.describe()));
    }
    if let Some(cpu) = r.cpu {
        parts.push(format!("cpu {cpu}"));
    }
    if let Some(m) = r.memory_bytes {
        parts.push(hopper_core::resources::format_bytes(m));
    }
    parts.extend(r.labels.iter().map(|(k, v)| format!("{k}={v}")));
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(", ")
    }
}

/// What a worker's machine has: `2 × NVIDIA L4, 8 cores, 16GiB, zone=eu`.
fn machine(m: Option<&hopper_core::resources::Machine>) -> String {
    let Some(m) = m else {
        return "-".into();
    };
    let mut parts = Vec::new();
    if !m.gpus.is_empty() {
        parts.push(m.describe_gpus());
    }
    if let Some(c) = m.cpus {
        parts.push(format!("{c} cores"));
    }
    if let Some(b) = m.memory_bytes {
        parts.push(hopper_core::resources::format_bytes(b));
    }
    parts.extend(m.labels.iter().map(|(k, v)| format!("{k}={v}")));
    parts.join(", ")
}

pub async fn workers(args: &ClientArgs) -> anyhow::Result<Code> {
    let workers = client(args)?.workers().await?;
    if args.json {
        output::json(&workers);
        return Ok(Code::Ok);
    }
    let rows: Vec<Vec<String>> = workers
        .iter()
        .map(|w| {
            vec![
                w.id.to_string(),
                w.state.clone(),
                format!("{}:{}", w.host, w.pid),
                w.functions.join(","),
                format!("{}/{}", w.running, w.concurrency),
                machine(w.machine.as_ref()),
                w.last_seen_at.clone(),
            ]
        })
        .collect();
    output::table(
        &[
            "WORKER",
            "STATE",
            "HOST:PID",
            "FUNCTIONS",
            "RUNNING",
            "MACHINE",
            "LAST SEEN",
        ],
        &rows,
    );
    Ok(Code::Ok)
}

/// An RFC 3339 time shown in a schedule's zone, to the second: `2026-12-01 03:00:00 CET`.
fn local_time(at: &str, zone: &str) -> String {
    let (Ok(t), Ok(tz)) = (
        chrono::DateTime::parse_from_rfc3339(at),
        hopper_core::cron::zone(zone),
    ) else {
        return at.to_string();
    };
    t.with_timezone(&tz)
        .format("%Y-%m-%d %H:%M:%S %Z")
        .to_string()
}

pub async fn schedules(
    args: &ClientArgs,
    action: Option<crate::args::ScheduleAction>,
) -> anyhow::Result<Code> {
    use crate::args::ScheduleAction;
    let client = client(args)?;
    let (name, verb) = match action {
        None => {
            let list = client.schedules().await?;
            if args.json {
                output::json(&list);
                return Ok(Code::Ok);
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|s| {
                    let when = match (&s.cron, &s.every) {
                        (Some(cron), _) => format!("{cron} ({})", s.timezone),
                        (None, Some(every)) => format!("every {every}"),
                        (None, None) => String::new(),
                    };
                    let last = match (&s.last_due_at, s.last_call_state) {
                        (Some(at), _) => local_time(at, &s.timezone),
                        (None, Some(_)) => "run now".into(),
                        (None, None) => "never".into(),
                    };
                    vec![
                        s.name.clone(),
                        s.function.clone(),
                        when,
                        if s.paused {
                            "paused".into()
                        } else {
                            s.next_due_at
                                .as_deref()
                                .map(|at| local_time(at, &s.timezone))
                                .unwrap_or_else(|| "-".into())
                        },
                        last,
                        s.last_call_state
                            .map(|st| st.to_string())
                            .unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect();
            output::table(
                &["SCHEDULE", "FUNCTION", "WHEN", "NEXT", "LAST", "LAST CALL"],
                &rows,
            );
            return Ok(Code::Ok);
        }
        Some(ScheduleAction::Show { name }) => {
            let s = client.schedule(&name).await?;
            if args.json {
                output::json(&s);
            } else {
                crate::output::line(format_args!(
                    "{} → {} ({}, {})",
                    s.name,
                    s.function,
                    s.cron
                        .clone()
                        .or(s.every.clone().map(|e| format!("every {e}")))
                        .unwrap_or_default(),
                    s.timezone
                ));
                match (&s.next_due_local, &s.next_due_at) {
                    _ if s.paused => crate::output::line(format_args!(
                        "next: none, paused (hopper schedules resume {})",
                        s.name
                    )),
                    (Some(local), Some(utc)) => {
                        crate::output::line(format_args!("next: {local} ({utc})"))
                    }
                    _ => crate::output::line(format_args!("next: none")),
                }
                // Each firing with how its call went (read now: it may have ended since).
                let states = futures_util::future::join_all(s.firings.iter().map(|f| async {
                    match &f.call_id {
                        Some(id) => client
                            .get(id, std::time::Duration::ZERO)
                            .await
                            .map_or_else(|_| "-".to_string(), |c| c.state.to_string()),
                        None => String::new(),
                    }
                }))
                .await;
                for (f, state) in s.firings.iter().zip(states) {
                    crate::output::line(format_args!(
                        "{}  {:<9} {:<10} {}",
                        f.due_at,
                        f.outcome,
                        state,
                        f.call_id
                            .as_ref()
                            .map(|c| c.to_string())
                            .unwrap_or_default()
                    ));
                }
            }
            return Ok(Code::Ok);
        }
        Some(ScheduleAction::Trigger { name }) => (name, "trigger"),
        Some(ScheduleAction::Pause { name }) => (name, "pause"),
        Some(ScheduleAction::Resume { name }) => (name, "resume"),
    };
    let answer = client.schedule_action(&name, verb).await?;
    if args.json {
        output::json(&answer);
    } else if verb == "trigger" {
        match answer
            .get("call")
            .and_then(|c| c.get("id"))
            .and_then(|i| i.as_str())
        {
            Some(id) => crate::output::line(format_args!("{id}")),
            None => crate::output::line(format_args!(
                "skipped: the previous call of {name} is still running"
            )),
        }
    } else {
        crate::output::line(format_args!(
            "{name} {}",
            if verb == "pause" { "paused" } else { "resumed" }
        ));
    }
    Ok(Code::Ok)
}
