//! `hopper inputs` (failed inputs across calls) and `hopper rerun` (run one input, or every
//! failed input a filter selects, again).

use hopper_core::api::{InputsRerunRequest, RerunRequest};
use hopper_sdk::InputFilter;

use super::{call_id, client};
use crate::args::ClientArgs;
use crate::exit::{self, Code};
use crate::output;

/// What `hopper inputs` and `hopper rerun --failed` select.
pub struct Selection {
    pub call: Option<String>,
    pub app: Option<String>,
    pub function: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
}

impl From<crate::args::InputSelection> for Selection {
    fn from(s: crate::args::InputSelection) -> Self {
        Selection {
            call: s.call,
            app: s.app,
            function: s.function,
            since: s.since,
            until: s.until,
        }
    }
}

/// `hopper inputs --state failed`: the newest `limit` failed inputs the selection matches.
pub async fn list(
    args: &ClientArgs,
    state: &str,
    selection: Selection,
    limit: u32,
) -> anyhow::Result<Code> {
    let client = client(args)?;
    let mut filter = InputFilter {
        state: Some(state.to_string()),
        call: selection.call,
        app: selection.app,
        function: selection.function,
        since: selection.since,
        until: selection.until,
        ..InputFilter::default()
    };
    let mut inputs = Vec::new();
    let mut more = false;
    while inputs.len() < limit as usize {
        filter.limit = Some((limit as usize - inputs.len()).min(1_000) as u32);
        let page = client.failed_inputs(&filter).await?;
        inputs.extend(page.inputs);
        more = page.next_cursor.is_some();
        match page.next_cursor {
            Some(cursor) => filter.cursor = Some(cursor),
            None => break,
        }
    }
    if args.json {
        output::json(&inputs);
    } else {
        let rows: Vec<Vec<String>> = inputs
            .iter()
            .map(|i| {
                let error = i.error.as_ref().map_or(String::new(), |e| {
                    let cell = format!("{}: {}", e.code, super::calls::summary_line(&e.message));
                    match cell.char_indices().nth(99) {
                        Some((at, _)) => format!("{}…", &cell[..at]),
                        None => cell,
                    }
                });
                let rerun = i
                    .reruns
                    .last()
                    .map_or(String::new(), |r| format!("{} ({})", r.call_id, r.state));
                vec![
                    i.call_id.to_string(),
                    i.index.to_string(),
                    i.function.clone(),
                    i.finished_at.clone(),
                    i.attempts.to_string(),
                    error,
                    rerun,
                ]
            })
            .collect();
        output::table(
            &[
                "CALL", "INPUT", "FUNCTION", "FAILED", "ATTEMPTS", "ERROR", "RE-RUN",
            ],
            &rows,
        );
    }
    if more {
        eprintln!("more than {limit}: --limit or --since/--until show others");
    }
    Ok(Code::Ok)
}

/// `hopper rerun CALL_ID [--index N] [--force]`: one input again; prints the new call's id.
pub async fn rerun_one(
    args: &ClientArgs,
    id: &str,
    index: Option<i64>,
    force: bool,
    key: Option<&str>,
) -> anyhow::Result<Code> {
    let id = call_id(id)?;
    let ask = RerunRequest { index, force };
    let call = client(args)?.rerun_input(&id, &ask, key).await?;
    if args.json {
        output::json(&call);
    } else {
        output::line(format_args!("{}", call.id));
        eprintln!(
            "re-runs input {} of {id}: hopper get {}",
            index.unwrap_or(0),
            call.id
        );
    }
    Ok(Code::Ok)
}

/// `hopper rerun --failed …`: every failed input the selection matches, one new call each,
/// asking until the server has no more. Prints `NEW_ID CALL_ID INDEX` per input re-run.
pub async fn rerun_failed(
    args: &ClientArgs,
    selection: Selection,
    force: bool,
) -> anyhow::Result<Code> {
    let chosen = [
        &selection.call,
        &selection.since,
        &selection.function,
        &selection.app,
    ];
    if chosen.iter().all(|c| c.is_none()) {
        return Err(exit::usage(
            "say which failed inputs to re-run: --since (e.g. 1h), --call, --function or --app",
        ));
    }
    let call = selection.call.as_deref().map(call_id).transpose()?;
    let client = client(args)?;
    let mut ask = InputsRerunRequest {
        state: Some("failed".into()),
        call,
        app: selection.app,
        function: selection.function,
        since: selection.since,
        until: selection.until,
        limit: None,
        cursor: None,
        force,
    };
    let (mut rerun, mut skipped, mut refused) = (Vec::new(), Vec::new(), Vec::new());
    loop {
        let answer = client.rerun_failed(&ask).await?;
        rerun.extend(answer.rerun);
        skipped.extend(answer.skipped);
        refused.extend(answer.refused);
        match answer.next_cursor {
            Some(cursor) => ask.cursor = Some(cursor),
            None => break,
        }
    }
    if args.json {
        output::json(&serde_json::json!({"rerun": rerun, "skipped": skipped, "refused": refused}));
    } else {
        for r in &rerun {
            output::line(format_args!("{} {} {}", r.rerun_id, r.call_id, r.index));
        }
        let left = if skipped.is_empty() {
            String::new()
        } else {
            format!(
                "; {} re-run before left out (--force runs them again)",
                hopper_core::plural(skipped.len() as u64, "input")
            )
        };
        eprintln!(
            "re-ran {}{left}",
            hopper_core::plural(rerun.len() as u64, "failed input")
        );
        for r in &refused {
            eprintln!(
                "not re-run: input {} of {}: {}",
                r.index, r.call_id, r.reason
            );
        }
    }
    Ok(Code::Ok)
}
