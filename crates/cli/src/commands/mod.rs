//! One module per subcommand, and what they share: the client, input parsing, durations.

mod apps;
mod bench;
mod bench_crowd;
mod bench_dashboard;
mod bench_limits;
mod bench_payloads;
mod calls;
mod inputs;
mod map;
mod run;
mod secrets;
mod serve;
mod worker;

use std::io::Read;
use std::time::Duration;

use anyhow::Context;
use hopper_core::CallId;
use hopper_sdk::Client;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::args::{Cli, ClientArgs, Command, InputArgs};
use crate::exit::{self, Code};

pub async fn dispatch(cli: Cli) -> anyhow::Result<Code> {
    match cli.command {
        Command::Serve(args) => serve::run(*args).await,
        Command::Worker(args) => worker::run(args).await,
        Command::Bench(args) => bench::run(args).await,
        Command::BenchServe => bench::serve_noop().await,
        Command::Run {
            manifest,
            function,
            input,
            timeout,
            json,
        } => run::run(&manifest, &function, &input, timeout.as_deref(), json).await,
        Command::Deploy {
            manifest,
            max_bundle,
            no_snapshot,
            check,
            client,
        } => {
            if check {
                apps::check(&manifest)
            } else {
                apps::deploy(&client, &manifest, &max_bundle, no_snapshot).await
            }
        }
        Command::Apps { versions, client } => apps::apps(&client, versions).await,
        Command::Workers { client } => apps::workers(&client).await,
        Command::Secrets { action, client } => secrets::run(&client, action).await,
        Command::Schedules { action, client } => apps::schedules(&client, action).await,
        Command::Spawn {
            function,
            input,
            idempotency_key,
            each_line: false,
            start,
            client,
        } => calls::spawn(&client, &function, &input, idempotency_key, start).await,
        Command::Spawn {
            function,
            input,
            idempotency_key,
            each_line: true,
            start,
            client,
        } => calls::spawn_each_line(&client, &function, &input, idempotency_key, start).await,
        Command::Get {
            call_id,
            timeout,
            output,
            client,
        } => calls::get(&client, &call_id, timeout.as_deref(), output.as_deref()).await,
        Command::Map {
            function,
            inputs,
            unordered,
            return_exceptions,
            starmap,
            for_each,
            chunk_size,
            start,
            client,
        } => {
            let options = hopper_sdk::MapOptions {
                key: queue_key(start.queue.key)?,
                priority: start.queue.priority.map(priority).transpose()?,
                ordered: !unordered,
                return_exceptions,
                starmap,
                discard_results: for_each,
                chunk_size,
                delay: start
                    .delay
                    .as_deref()
                    .map(|d| duration("--delay", d))
                    .transpose()?,
                start_at: start.start_at,
            };
            map::map(&client, &function, &inputs, options).await
        }
        Command::Results {
            call_id,
            after,
            unordered,
            return_exceptions,
            client,
        } => map::results(&client, &call_id, after, !unordered, return_exceptions).await,
        Command::Cancel { call_id, client } => calls::cancel(&client, &call_id).await,
        Command::Calls {
            function,
            app,
            state,
            origin,
            limit,
            cursor,
            since,
            until,
            client,
        } => {
            let filter = hopper_sdk::CallFilter {
                app,
                function,
                state,
                origin,
                cursor,
                limit: Some(limit),
                since,
                until,
            };
            calls::list(&client, filter).await
        }
        Command::Logs {
            call_id,
            input,
            follow,
            client,
        } => calls::logs(&client, &call_id, input, follow).await,
        Command::Inputs {
            state,
            selection,
            limit,
            client,
        } => inputs::list(&client, &state, selection.into(), limit).await,
        Command::Rerun {
            call_id,
            index,
            failed: _,
            selection,
            force,
            idempotency_key,
            client,
        } => match call_id {
            Some(id) => {
                inputs::rerun_one(&client, &id, index, force, idempotency_key.as_deref()).await
            }
            None => inputs::rerun_failed(&client, selection.into(), force).await,
        },
    }
}

/// Logging to stderr, in colour only on a terminal (a log file gets plain text), or as JSON
/// lines with `--log-format json`; `RUST_LOG` overrides the default level.
pub fn init_logging(default: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // `--log-format json` (or HOPPER_LOG_FORMAT=json): one JSON object a line, its fields at
    // the top level beside `timestamp`, `level`, `target` and `message`.
    let _ = if std::env::var("HOPPER_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init()
    } else {
        builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init()
    };
}

/// A map that could not start or stopped, as the CLI reports it.
pub fn explain(e: hopper_sdk::MapError) -> anyhow::Error {
    match e {
        hopper_sdk::MapError::Api(api) => api.into(),
        other => exit::usage(other.to_string()),
    }
}

/// The client of `--server` / `HOPPER_SERVER` (one server, or several of a cluster): a bare
/// `host:port` means `http://host:port`.
pub fn client(args: &ClientArgs) -> anyhow::Result<Client> {
    let server = server_urls(&args.server)?;
    let token = args.token.clone().map(|t| t.into_inner());
    Client::new(&server, token).context("cannot create the HTTP client")
}

/// `--server` / `HOPPER_SERVER` as the comma-separated URLs [`Client::new`] takes: `http://`
/// is added to a bare `host:port`; anything else that is not an http(s) URL is refused, naming
/// where it came from.
pub fn server_urls(given: &[String]) -> anyhow::Result<String> {
    let urls = given
        .iter()
        .filter(|text| !text.trim().is_empty())
        .map(|text| server_url(text))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if urls.is_empty() {
        return Err(exit::usage(
            "--server (or HOPPER_SERVER) is empty: give a server's URL, e.g. http://127.0.0.1:7433",
        ));
    }
    Ok(urls.join(","))
}

fn server_url(text: &str) -> anyhow::Result<String> {
    let text = text.trim();
    let url = if text.contains("://") {
        text.to_string()
    } else {
        format!("http://{text}")
    };
    let ok = (url.starts_with("http://") || url.starts_with("https://"))
        && url
            .split_once("://")
            .is_some_and(|(_, rest)| !rest.is_empty() && !rest.starts_with('/'))
        && reqwest::Url::parse(&url).is_ok_and(|u| u.host().is_some());
    if !ok {
        return Err(exit::usage(format!(
            "the server {text:?} (from --server or HOPPER_SERVER) is not a URL: expected e.g. http://127.0.0.1:7433 or 127.0.0.1:7433"
        )));
    }
    Ok(url)
}

/// The input JSON from `--input` or `--input-file` (`-` for stdin); one of them is required
/// (`--input null` sends null).
pub fn read_input(args: &InputArgs) -> anyhow::Result<Value> {
    if args.input_bytes.is_some() {
        return Err(exit::usage(
            "--input-bytes works with hopper spawn (a server stores the bytes); here give --input or --input-file",
        ));
    }
    let (text, source) = match (&args.input, &args.input_file) {
        (Some(text), _) => (text.clone(), "--input".to_string()),
        (None, Some(path)) => read_text(path, "the input")?,
        (None, None) => {
            return Err(exit::usage(
                "give the input as JSON with --input (e.g. --input '\"world\"', or --input null for none) or --input-file FILE",
            ))
        }
    };
    let input = serde_json::from_str(&text).map_err(|e| {
        exit::usage(format!(
            "the input in {source} is not valid JSON: {e} (a string needs its quotes, e.g. --input '\"world\"')"
        ))
    })?;
    check_json(&text, &source)?;
    Ok(input)
}

/// The text of a file, or of stdin for `-`, and its name for messages (`stdin` or the path);
/// `what` names the contents in a read error.
pub fn read_text(path: &std::path::Path, what: &str) -> anyhow::Result<(String, String)> {
    if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| exit::usage(format!("cannot read {what} from stdin: {e}")))?;
        if text.starts_with(BOM) {
            return Err(exit::usage(bom_fault("stdin")));
        }
        return Ok((text, "stdin".to_string()));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| exit::usage(format!("cannot read {}: {e}", path.display())))?;
    let source = path.display().to_string();
    if text.starts_with(BOM) {
        return Err(exit::usage(bom_fault(&source)));
    }
    Ok((text, source))
}

/// The byte-order mark some editors put at the start of a UTF-8 file.
pub const BOM: char = '\u{feff}';

/// What is wrong with text that starts with a [`BOM`], from `source`.
pub fn bom_fault(source: &str) -> String {
    format!(
        "{source} starts with a byte-order mark (U+FEFF), which is not part of its text: save it as UTF-8 without a BOM"
    )
}

/// Refuses what the server would refuse rather than send it changed: JSON nested deeper than
/// inputs may be, or an integer beyond 64 bits (which parsing would round to a float).
/// `source` names where the text came from (`file:line`).
pub fn check_json(text: &str, source: &str) -> anyhow::Result<()> {
    hopper_core::json::check_text(text.as_bytes(), hopper_core::json::MAX_DEPTH)
        .map_err(|e| exit::usage(format!("{source}: the input is refused: {e}")))
}

pub fn duration(flag: &str, text: &str) -> anyhow::Result<Duration> {
    hopper_core::duration::parse(text).map_err(|e| exit::usage(format!("{flag}: {e}")))
}

/// `--priority`, checked: -1000 to 1000.
pub fn priority(value: i64) -> anyhow::Result<i32> {
    hopper_core::limits::validate_priority(value)
        .map_err(|e| exit::usage(format!("--priority: {e}")))
}

/// `--key`, checked: not empty, at most 200 bytes, no control characters.
pub fn queue_key(key: Option<String>) -> anyhow::Result<Option<String>> {
    if let Some(k) = &key {
        hopper_core::limits::validate_key(k).map_err(|e| exit::usage(format!("--key: {e}")))?;
    }
    Ok(key)
}

pub fn call_id(text: &str) -> anyhow::Result<CallId> {
    text.parse()
        .map_err(|e: hopper_core::ids::IdError| exit::usage(e.to_string()))
}

/// A token cancelled by SIGINT or SIGTERM; `who` names the process in the log line it writes.
pub fn stop_on_signals(who: String) -> anyhow::Result<CancellationToken> {
    use tokio::signal::unix::{signal, SignalKind};
    let token = CancellationToken::new();
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let t = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!(pid = std::process::id(), "{who}: stopping");
        t.cancel();
    });
    Ok(token)
}
