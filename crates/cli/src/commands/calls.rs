//! `hopper spawn`, `get`, `cancel`, `calls` and `logs`.

use std::time::Duration;

use hopper_core::api::{CallView, LogView, SpawnRequest};
use hopper_core::InputState;
use hopper_sdk::outbox::patiently;
use hopper_sdk::{CallFilter, Client};
use serde_json::Value;

use super::{call_id, client, duration, read_input};
use crate::args::{ClientArgs, InputArgs, StartArgs};
use crate::exit::{self, Code, Coded};
use crate::output;

pub async fn spawn(
    args: &ClientArgs,
    function: &str,
    input: &InputArgs,
    key: Option<String>,
    start: StartArgs,
) -> anyhow::Result<Code> {
    let client = client(args)?;
    let input = match &input.input_bytes {
        // Streamed to the server as a blob (the function known first); the input refers to it.
        Some(path) => {
            client.function(function).await?;
            upload(&client, path).await?
        }
        None => read_input(input)?,
    };
    let request = SpawnRequest {
        input,
        idempotency_key: key,
        delay: start.delay,
        start_at: start.start_at,
        key: super::queue_key(start.queue.key)?,
        priority: start.queue.priority.map(super::priority).transpose()?,
    };
    let call = client.spawn_request(function, &request).await?;
    if args.json {
        output::json(&call);
    } else {
        crate::output::line(format_args!("{}", call.id));
        if let Some(at) = &call.starts_at {
            eprintln!(
                "starts at {at} (pending until then; hopper cancel {} stops it)",
                call.id
            );
        }
    }
    Ok(Code::Ok)
}

/// `hopper spawn F --input-file FILE --each-line`: one call per line, through bulk spawns.
pub async fn spawn_each_line(
    args: &ClientArgs,
    function: &str,
    input: &InputArgs,
    key: Option<String>,
    start: StartArgs,
) -> anyhow::Result<Code> {
    let Some(path) = &input.input_file else {
        return Err(exit::usage(
            "--each-line reads the lines of --input-file FILE",
        ));
    };
    let (text, source) = super::read_text(path, "the inputs")?;
    if let Some(k) = &key {
        // Each line's key is KEY:LINE, within the server's 255 characters.
        let longest = format!("{k}:{}", text.lines().count().max(1));
        if k.is_empty() || longest.chars().count() > 255 {
            return Err(exit::usage(format!(
                "--idempotency-key must be 1 to {} characters here: with --each-line each line's key is KEY:LINE (e.g. {longest:?}), at most 255",
                255usize.saturating_sub(longest.chars().count() - k.chars().count())
            )));
        }
    }
    let queue_key = super::queue_key(start.queue.key.clone())?;
    let priority = start.queue.priority.map(super::priority).transpose()?;
    // Every line is checked before the first request: a bad line spawns nothing.
    let mut calls = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let input: Value = serde_json::from_str(line)
            .map_err(|e| exit::usage(format!("{source}:{}: not valid JSON: {e}", n + 1)))?;
        super::check_json(line, &format!("{source}:{}", n + 1))?;
        calls.push(SpawnRequest {
            input,
            idempotency_key: key.as_ref().map(|k| format!("{k}:{}", n + 1)),
            delay: start.delay.clone(),
            start_at: start.start_at.clone(),
            key: queue_key.clone(),
            priority,
        });
    }
    if calls.is_empty() {
        return Err(exit::usage(format!("{source} holds no inputs")));
    }
    let client = client(args)?;
    let total = calls.len();
    let mut spawned = 0;
    let mut rest = calls.as_slice();
    while !rest.is_empty() {
        let (answer, sent) = match client.spawn_batch_fitting(function, rest).await {
            Ok(done) => done,
            Err(e) => {
                // An answer the server gave means the batch made nothing; a broken connection
                // leaves it unknown.
                let fate = if matches!(e, hopper_sdk::Error::Api { .. }) {
                    "the rest were not spawned"
                } else {
                    "the next request's calls may or may not have been spawned"
                };
                let again = match (&e, key.is_some()) {
                    (hopper_sdk::Error::Api { .. }, true) => {
                        "once its cause is fixed, the same command spawns only what is missing"
                    }
                    (_, true) => "run the same command again to spawn only what is missing",
                    (_, false) => {
                        "with --idempotency-key, running the command again spawns only what is missing"
                    }
                };
                return Err(anyhow::Error::new(e).context(format!(
                    "spawned {spawned} of {total} calls (their ids are printed above); {fate}; {again}"
                )));
            }
        };
        for call in &answer {
            if args.json {
                output::json(call);
            } else {
                crate::output::line(format_args!("{}", call.id));
            }
        }
        spawned += answer.len();
        rest = &rest[sent..];
    }
    Ok(Code::Ok)
}

pub async fn get(
    args: &ClientArgs,
    id: &str,
    timeout: Option<&str>,
    output: Option<&std::path::Path>,
) -> anyhow::Result<Code> {
    let id = call_id(id)?;
    let client = client(args)?;
    let call = match timeout {
        Some(t) => client.wait(&id, duration("--timeout", t)?).await?,
        // Until it ends: one long-poll after another.
        None => loop {
            let call = client.wait(&id, Duration::from_secs(3_600)).await?;
            if call.state.is_terminal() {
                break call;
            }
        },
    };
    if let (Some(path), InputState::Succeeded) = (output, call.state) {
        if call.inputs.total != 1 {
            return Err(exit::usage(format!(
                "call {} is a map of {} inputs: it has no one output to write (hopper results {} prints them)",
                call.id, call.inputs.total, call.id
            )));
        }
        let value = call.output.clone().unwrap_or(Value::Null);
        let written = write_output(&client, &value, path).await?;
        if path.as_os_str() != "-" {
            eprintln!("wrote {written} bytes to {}", path.display());
        }
        return Ok(Code::Ok);
    }
    let mut call = call;
    // An output stored as a JSON blob is printed as the value it holds.
    if let Some(output) = &call.output {
        let json_ref = hopper_core::blob::refs(output, "the output")
            .ok()
            .filter(|_| output.get(hopper_core::blob::KEY).is_some())
            .and_then(|refs| refs.into_iter().next())
            .filter(|r| r.kind == hopper_core::blob::Kind::Json);
        if let Some(r) = json_ref {
            let bytes = patiently(TRANSFER_PATIENCE, || client.blob_get(&r.digest)).await?;
            let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
                anyhow::anyhow!("the output's blob {} does not hold JSON: {e}", r.digest)
            })?;
            call.output = Some(value);
        }
    }
    report(&call, args.json, Some(client.base_url()))
}

/// How long a blob's transfer from the CLI is tried again while the server cannot be reached
/// (a restart).
const TRANSFER_PATIENCE: Duration = Duration::from_secs(60);

/// Stores the bytes of `path` (stdin for `-`, through a temporary file) as a blob: its
/// reference. A restart of the server meanwhile is ridden through.
async fn upload(client: &Client, path: &std::path::Path) -> anyhow::Result<Value> {
    if path.as_os_str() == "-" {
        let mut spooled = tempfile::NamedTempFile::new()
            .map_err(|e| exit::usage(format!("cannot make a temporary file for stdin: {e}")))?;
        std::io::copy(&mut std::io::stdin().lock(), &mut spooled)
            .map_err(|e| exit::usage(format!("cannot read the input's bytes from stdin: {e}")))?;
        return Ok(patiently(TRANSFER_PATIENCE, || client.blob_put_file(spooled.path())).await?);
    }
    Ok(patiently(TRANSFER_PATIENCE, || client.blob_put_file(path)).await?)
}

/// Writes an output to `path`: a blob's bytes streamed from the server, inline bytes
/// (`{"$bytes": …}`) decoded, anything else as its JSON text; the bytes written.
async fn write_output(
    client: &hopper_sdk::Client,
    value: &Value,
    path: &std::path::Path,
) -> anyhow::Result<u64> {
    use base64::Engine;
    let cannot = |e: std::io::Error| exit::usage(format!("cannot write {}: {e}", path.display()));
    let stdout = path.as_os_str() == "-";
    if let Ok(refs) = hopper_core::blob::refs(value, "the output") {
        if let ([only], Some(_)) = (refs.as_slice(), value.get(hopper_core::blob::KEY)) {
            if stdout {
                // Through a temporary file, so that what reaches stdout is checked whole.
                let spooled = tempfile::NamedTempFile::new()
                    .map_err(|e| exit::usage(format!("cannot make a temporary file: {e}")))?;
                let n = patiently(TRANSFER_PATIENCE, || {
                    client.blob_get_file(&only.digest, spooled.path())
                })
                .await?;
                let mut file = std::fs::File::open(spooled.path()).map_err(cannot)?;
                std::io::copy(&mut file, &mut std::io::stdout().lock()).map_err(cannot)?;
                return Ok(n);
            }
            return Ok(patiently(TRANSFER_PATIENCE, || {
                client.blob_get_file(&only.digest, path)
            })
            .await?);
        }
    }
    let bytes = match value
        .as_object()
        .and_then(|o| o.get("$bytes"))
        .and_then(Value::as_str)
    {
        Some(b64) if value.as_object().is_some_and(|o| o.len() == 1) => {
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| exit::usage(format!("the output's $bytes is not base64: {e}")))?
        }
        _ => {
            let mut text = value.to_string().into_bytes();
            text.push(b'\n');
            text
        }
    };
    if stdout {
        use std::io::Write;
        std::io::stdout().lock().write_all(&bytes).map_err(cannot)?;
    } else {
        std::fs::write(path, &bytes).map_err(cannot)?;
    }
    Ok(bytes.len() as u64)
}

/// Prints a call the way `get` and `run` do, and gives the exit code its state means. A failure
/// names the call's dashboard page on `server`, if the server outlives the command.
pub fn report(call: &CallView, json: bool, server: Option<&str>) -> anyhow::Result<Code> {
    if json {
        output::json(call);
    }
    match call.state {
        InputState::Succeeded => {
            if !json {
                if call.inputs.total == 1 {
                    output::value(call.output.as_ref().unwrap_or(&serde_json::Value::Null));
                } else {
                    crate::output::line(format_args!("{} inputs succeeded", call.inputs.succeeded));
                }
            }
            Ok(Code::Ok)
        }
        InputState::Failed | InputState::Cancelled => {
            let what = match &call.error {
                Some(e) => format!("{}: {}", e.code, shortened(&e.message)),
                None => format!(
                    "{} of {} failed",
                    call.inputs.failed,
                    hopper_core::plural(call.inputs.total as u64, "input")
                ),
            };
            // A map names its first failed input (the error is that input's) and how many
            // failed in all.
            let which = match call.failed_index.filter(|_| call.inputs.total > 1) {
                Some(index) => format!(
                    ": input {index} of {} (the first of {} that failed)",
                    call.inputs.total, call.inputs.failed
                ),
                None => String::new(),
            };
            let attempts = hopper_core::plural(call.attempts as u64, "attempt");
            let attempts = if call.attempts == 0 && call.inputs.total > 1 {
                String::new()
            } else {
                format!(" after {attempts}")
            };
            let page = server
                .map(|s| format!(" (see {}/calls/{})", s.trim_end_matches('/'), call.id))
                .unwrap_or_default();
            // Where it failed, when the worker said: the function's own frames.
            let traceback = call
                .error
                .as_ref()
                .and_then(|e| e.traceback.as_deref())
                .map(|t| format!("\n{}", t.trim_end()))
                .unwrap_or_default();
            Err(Coded {
                code: Code::CallFailed,
                message: format!(
                    "call {} {}{attempts}{which}: {what}{page}{traceback}",
                    call.id, call.state
                ),
            }
            .into())
        }
        InputState::Pending | InputState::Running => {
            if !json && call.inputs.total != 1 {
                let c = call.inputs;
                crate::output::line(format_args!(
                    "{} of {} inputs done: {} succeeded, {} failed, {} cancelled, {} running, {} pending",
                    c.succeeded + c.failed + c.cancelled,
                    c.total,
                    c.succeeded,
                    c.failed,
                    c.cancelled,
                    c.running,
                    c.pending
                ));
            }
            let waiting = call
                .waiting
                .as_ref()
                .map(|why| format!("; waiting: {why}"))
                .unwrap_or_default();
            let message = match server {
                Some(_) => format!(
                    "call {} is still {}{waiting} (it goes on; wait for it with `hopper get {}`)",
                    call.id, call.state, call.id
                ),
                // `run`: the temporary server is gone, and the call with it.
                None => format!(
                    "call {} did not end within --timeout; it was stopped with the temporary server",
                    call.id
                ),
            };
            Err(Coded {
                code: Code::NotFinished,
                message,
            }
            .into())
        }
    }
}

pub async fn cancel(args: &ClientArgs, id: &str) -> anyhow::Result<Code> {
    let id = call_id(id)?;
    let call = client(args)?.cancel(&id).await?;
    if args.json {
        output::json(&call);
    } else {
        crate::output::line(format_args!("{} {}", call.id, call.state));
    }
    Ok(Code::Ok)
}

pub async fn list(args: &ClientArgs, filter: CallFilter) -> anyhow::Result<Code> {
    let page = client(args)?.calls(&filter).await?;
    if args.json {
        output::json(&page);
        return Ok(Code::Ok);
    }
    let rows: Vec<Vec<String>> = page
        .calls
        .iter()
        .map(|c| {
            // A delayed call waits for its start.
            let state = match (&c.starts_at, c.state) {
                (Some(at), InputState::Pending) => format!("pending until {at}"),
                _ => c.state.to_string(),
            };
            // Where it stands in its function's queue, when the spawn said.
            let mut function = c.function.clone();
            let queue: Vec<String> = [
                c.key.as_ref().map(|k| format!("key {k}")),
                (c.priority != 0).then(|| format!("priority {}", c.priority)),
            ]
            .into_iter()
            .flatten()
            .collect();
            if !queue.is_empty() {
                function = format!("{function} ({})", queue.join(", "));
            }
            vec![
                c.id.to_string(),
                function,
                state,
                c.origin.as_str().to_string(),
                inputs_cell(&c.inputs),
                c.created_at.clone(),
                error_cell(c),
            ]
        })
        .collect();
    output::table(
        &[
            "CALL", "FUNCTION", "STATE", "ORIGIN", "INPUTS", "CREATED", "ERROR",
        ],
        &rows,
    );
    if let Some(cursor) = page.next_cursor {
        eprintln!("more: --cursor {cursor}");
    }
    Ok(Code::Ok)
}

/// `60/60 ok`, `58/60 ok, 2 failed`, `0/60 ok, 60 cancelled`: what became of a call's inputs.
fn inputs_cell(c: &hopper_core::CallCounts) -> String {
    let mut cell = format!("{}/{} ok", c.succeeded, c.total);
    for (n, what) in [
        (c.failed, "failed"),
        (c.cancelled, "cancelled"),
        (c.running, "running"),
        (c.pending, "queued"),
    ] {
        if n > 0 {
            cell.push_str(&format!(", {n} {what}"));
        }
    }
    cell
}

/// A call's error, short: its code and the line that says what went wrong (for a Python
/// traceback, the exception's line, not the `^^^^` under the code).
fn error_cell(c: &CallView) -> String {
    let Some(e) = &c.error else {
        return if c.inputs.failed > 0 {
            format!(
                "{} failed",
                hopper_core::plural(c.inputs.failed as u64, "input")
            )
        } else {
            String::new()
        };
    };
    let line = summary_line(&e.message);
    let mut cell = format!("{}: {line}", e.code);
    if cell.chars().count() > 100 {
        cell = cell.chars().take(99).collect::<String>() + "…";
    }
    cell
}

/// A message for a terminal: at most 4,000 characters (a message can be 64 KiB), saying where
/// the rest is.
fn shortened(message: &str) -> String {
    const MAX: usize = 4_000;
    match message.char_indices().nth(MAX) {
        Some((at, _)) => format!(
            "{}… [{} more bytes: hopper get --json shows them all]",
            &message[..at],
            message.len() - at
        ),
        None => message.to_string(),
    }
}

/// The line of an error message that says what went wrong: the last line that is not a
/// traceback frame, a source line or a marker, e.g. `ValueError: bad size` out of a traceback.
pub fn summary_line(message: &str) -> &str {
    message
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| {
            !l.is_empty()
                && !l.starts_with("File \"")
                && !l.starts_with("Traceback")
                && !l.chars().all(|ch| matches!(ch, '^' | '~' | ' '))
        })
        .unwrap_or_else(|| message.lines().next().unwrap_or(""))
}

pub async fn logs(
    args: &ClientArgs,
    id: &str,
    index: Option<i64>,
    follow: bool,
) -> anyhow::Result<Code> {
    let id = call_id(id)?;
    let client = client(args)?;
    let mut after = 0;
    loop {
        // Read the state before the lines: lines written before the call ended are then all
        // in this page or an earlier one.
        let ended = client.get(&id, Duration::ZERO).await?.state.is_terminal();
        loop {
            let page = client.logs(&id, after, index).await?;
            let Some(last) = page.lines.last() else { break };
            after = last.seq;
            for line in &page.lines {
                print_line(line, args.json);
            }
        }
        if !follow {
            return Ok(Code::Ok);
        }
        if ended {
            // Following ends with the call: say how, as `get` would.
            let call = client.get(&id, Duration::ZERO).await?;
            let how = match &call.error {
                Some(e) => format!("{}: {}", e.code, summary_line(&e.message)),
                None => format!(
                    "{} of {} inputs succeeded",
                    call.inputs.succeeded, call.inputs.total
                ),
            };
            eprintln!("call {} {} ({how})", call.id, call.state);
            return Ok(match call.state {
                InputState::Succeeded => Code::Ok,
                _ => Code::CallFailed,
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn print_line(line: &LogView, json: bool) {
    if json {
        output::json(line);
    } else {
        crate::output::line(format_args!(
            "{} [{}#{} {}] {}",
            line.ts,
            line.index,
            line.attempt,
            line.stream.as_str(),
            line.line
        ));
    }
}

/// Follows a call's logs to stderr until it ends (used by `run`).
pub async fn copy_logs_to_stderr(client: &Client, id: &hopper_core::CallId) -> anyhow::Result<()> {
    let mut after = 0;
    loop {
        let page = client.logs(id, after, None).await?;
        let Some(last) = page.lines.last() else {
            return Ok(());
        };
        after = last.seq;
        for line in &page.lines {
            eprintln!("{}", line.line);
        }
    }
}
