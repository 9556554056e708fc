//! `hopper spawn`, `get`, `cancel`, `calls` and `logs`.

use std::time::Duration;

use hopper_core::api::{CallView, LogView};
use hopper_core::InputState;
use hopper_sdk::{CallFilter, Client};

use super::{call_id, client, duration, read_input};
use crate::args::{ClientArgs, InputArgs};
use crate::exit::{Code, Coded};
use crate::output;

pub async fn spawn(
    args: &ClientArgs,
    function: &str,
    input: &InputArgs,
    key: Option<String>,
) -> anyhow::Result<Code> {
    let input = read_input(input)?;
    let call = client(args)?.spawn(function, input, key).await?;
    if args.json {
        output::json(&call);
    } else {
        println!("{}", call.id);
    }
    Ok(Code::Ok)
}

pub async fn get(args: &ClientArgs, id: &str, timeout: &str) -> anyhow::Result<Code> {
    let id = call_id(id)?;
    let timeout = duration("--timeout", timeout)?;
    let call = client(args)?.wait(&id, timeout).await?;
    report(&call, args.json, Some(&args.server))
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
                    println!("{} inputs succeeded", call.inputs.succeeded);
                }
            }
            Ok(Code::Ok)
        }
        InputState::Failed | InputState::Cancelled => {
            let what = match &call.error {
                Some(e) => format!("{}: {}", e.code, e.message),
                None => format!(
                    "{} of {} inputs failed",
                    call.inputs.failed, call.inputs.total
                ),
            };
            let attempts = if call.attempts == 1 {
                "1 attempt".to_string()
            } else {
                format!("{} attempts", call.attempts)
            };
            let page = server
                .map(|s| format!(" (see {}/calls/{})", s.trim_end_matches('/'), call.id))
                .unwrap_or_default();
            Err(Coded {
                code: Code::CallFailed,
                message: format!(
                    "call {} {} after {attempts}: {what}{page}",
                    call.id, call.state
                ),
            }
            .into())
        }
        InputState::Pending | InputState::Running => {
            if !json && call.inputs.total != 1 {
                let c = call.inputs;
                println!(
                    "{} of {} inputs done: {} succeeded, {} failed, {} cancelled, {} running, {} pending",
                    c.succeeded + c.failed + c.cancelled,
                    c.total,
                    c.succeeded,
                    c.failed,
                    c.cancelled,
                    c.running,
                    c.pending
                );
            }
            Err(Coded {
                code: Code::NotFinished,
                message: format!(
                "call {} is still {} (it goes on; ask again with `hopper get {} --timeout 60s`)",
                call.id, call.state, call.id
            ),
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
        println!("{} {}", call.id, call.state);
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
            vec![
                c.id.to_string(),
                c.function.clone(),
                c.state.to_string(),
                c.origin.as_str().to_string(),
                format!(
                    "{}/{}",
                    c.inputs.succeeded + c.inputs.failed + c.inputs.cancelled,
                    c.inputs.total
                ),
                c.created_at.clone(),
                c.error.as_ref().map(|e| e.code.clone()).unwrap_or_default(),
            ]
        })
        .collect();
    output::table(
        &[
            "CALL", "FUNCTION", "STATE", "ORIGIN", "DONE", "CREATED", "ERROR",
        ],
        &rows,
    );
    if let Some(cursor) = page.next_cursor {
        eprintln!("more: --cursor {cursor}");
    }
    Ok(Code::Ok)
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
        if !follow || ended {
            return Ok(Code::Ok);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn print_line(line: &LogView, json: bool) {
    if json {
        output::json(line);
    } else {
        println!(
            "{} [{}#{} {}] {}",
            line.ts,
            line.index,
            line.attempt,
            line.stream.as_str(),
            line.line
        );
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
