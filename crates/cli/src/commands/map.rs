//! `hopper map` and `hopper results`.

use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::Path;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use hopper_core::CallCounts;
use hopper_sdk::{MapError, MapItem, MapOptions, MapRun};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::{call_id, client};
use crate::args::ClientArgs;
use crate::exit::{self, Code, Coded};

/// Checks every line of an input file before anything is sent, so a bad line changes nothing.
/// Returns how many inputs it holds.
fn validate_file(path: &Path) -> anyhow::Result<u64> {
    let file = std::fs::File::open(path)
        .map_err(|e| exit::usage(format!("cannot read {}: {e}", path.display())))?;
    let mut count = 0;
    for (n, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| exit::usage(format!("{}:{}: {e}", path.display(), n + 1)))?;
        if n == 0 && line.starts_with(super::BOM) {
            return Err(exit::usage(super::bom_fault(&path.display().to_string())));
        }
        if line.trim().is_empty() {
            continue;
        }
        if let Err(e) = serde_json::from_str::<Value>(&line) {
            return Err(exit::usage(format!(
                "{}:{}: not valid JSON: {e}",
                path.display(),
                n + 1
            )));
        }
        super::check_json(&line, &format!("{}:{}", path.display(), n + 1))?;
        count += 1;
    }
    Ok(count)
}

/// Reads inputs line by line on a blocking thread; a bad line ends the stream with its error.
/// Also returns how many there are, when the source is a file (stdin can grow).
#[allow(clippy::type_complexity)]
fn read_inputs(
    path: &Path,
) -> anyhow::Result<(mpsc::Receiver<Result<Value, String>>, Option<u64>)> {
    let (reader, total): (Box<dyn BufRead + Send>, Option<u64>) = if path.as_os_str() == "-" {
        (Box::new(BufReader::new(std::io::stdin())), None)
    } else {
        let total = validate_file(path)?;
        let file = std::fs::File::open(path)
            .map_err(|e| exit::usage(format!("cannot read {}: {e}", path.display())))?;
        (Box::new(BufReader::new(file)), Some(total))
    };
    let name = if path.as_os_str() == "-" {
        "stdin".to_string()
    } else {
        path.display().to_string()
    };
    let (tx, rx) = mpsc::channel(10_000);
    std::thread::spawn(move || {
        for (n, line) in reader.lines().enumerate() {
            let item = match line {
                Ok(line) if n == 0 && line.starts_with(super::BOM) => Err(super::bom_fault(&name)),
                Ok(line) if line.trim().is_empty() => continue,
                Ok(line) => serde_json::from_str::<Value>(&line)
                    .map_err(|e| format!("{name}:{}: not valid JSON: {e}", n + 1))
                    .and_then(|value| {
                        hopper_core::json::check_text(line.as_bytes(), hopper_core::json::MAX_DEPTH)
                            .map(|()| value)
                            .map_err(|e| format!("{name}:{}: the input is refused: {e}", n + 1))
                    }),
                Err(e) => Err(format!("{name}:{}: {e}", n + 1)),
            };
            let stop = item.is_err();
            if tx.blocking_send(item).is_err() || stop {
                return;
            }
        }
    });
    Ok((rx, total))
}

pub async fn map(
    args: &ClientArgs,
    function: &str,
    path: &Path,
    options: MapOptions,
) -> anyhow::Result<Code> {
    let (mut lines, total) = read_inputs(path)?;
    let (bad_tx, bad_rx) = mpsc::channel::<String>(1);
    let inputs = async_stream(move |tx: mpsc::Sender<Value>| async move {
        while let Some(item) = lines.recv().await {
            match item {
                Ok(v) => {
                    if tx.send(v).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    // The map stays open (it is not closed with the inputs sent so far):
                    // the refusal cancels it.
                    let _ = bad_tx.send(e).await;
                    std::future::pending::<()>().await;
                }
            }
        }
    });
    let client = client(args)?;
    let run: MapRun<Value> = client
        .map(function, inputs, options.clone())
        .await
        .map_err(super::explain)?;
    eprintln_if_terminal(&format!("map {}", run.call_id));
    let owner = Owner {
        client: client.clone(),
        id: run.call_id.clone(),
    };
    print_results(
        run,
        options.discard_results,
        total,
        Some(owner),
        Some(bad_rx),
    )
    .await
}

pub async fn results(
    args: &ClientArgs,
    id: &str,
    after: Option<i64>,
    ordered: bool,
    return_exceptions: bool,
) -> anyhow::Result<Code> {
    let id = call_id(id)?;
    let options = MapOptions {
        ordered,
        return_exceptions,
        ..MapOptions::default()
    };
    let start = after.unwrap_or(if ordered { -1 } else { 0 });
    let run: MapRun<Value> = client(args)?.map_results(&id, options, start);
    print_results(run, false, None, None, None).await
}

/// The map this command started: stopping the command cancels what is left of it.
struct Owner {
    client: hopper_sdk::Client,
    id: hopper_core::CallId,
}

impl Owner {
    /// Cancels the map's remaining inputs and says so in one line, with how many of the
    /// ended inputs' results this command wrote (`written`, when its reader is still there)
    /// and where to read them all; a second Ctrl-C while it runs leaves at once.
    async fn cancel(&self, why: &str, written: Option<u64>) {
        let cancel = tokio::time::timeout(Duration::from_secs(10), self.client.cancel(&self.id));
        let answer = tokio::select! {
            a = cancel => a,
            _ = tokio::signal::ctrl_c() => {
                eprintln!("{why}: left without cancelling map {}", self.id);
                std::process::exit(EXIT_SIGINT);
            }
        };
        match answer {
            Ok(Ok(call)) => {
                let ended = (call.inputs.succeeded + call.inputs.failed).max(0) as u64;
                // Results that arrived after the last one written are kept, not lost.
                let unread = match written {
                    Some(written) if ended > written => format!(
                        "; {} written here, hopper results {} --return-exceptions reads them all",
                        thousands(written as i64),
                        self.id
                    ),
                    _ => String::new(),
                };
                eprintln!(
                    "{why}: cancelled the remaining inputs of map {} ({} had ended, {} cancelled{unread})",
                    self.id,
                    thousands(ended as i64),
                    thousands(call.inputs.cancelled)
                )
            }
            Ok(Err(e)) => eprintln!("{why}: could not cancel map {}: {e}", self.id),
            Err(_) => eprintln!("{why}: could not cancel map {}: no answer in 10 s", self.id),
        }
    }
}

/// Exit code after SIGINT (Ctrl-C), as shells expect: 128 + 2.
pub const EXIT_SIGINT: i32 = 130;
/// Exit code after SIGTERM: 128 + 15.
pub const EXIT_SIGTERM: i32 = 143;

enum Stop {
    Interrupt,
    Terminate,
    /// A line of streamed input was refused (what is wrong, and where).
    BadInput(String),
}

/// Resolves on SIGINT, SIGTERM, or a refused line of input from `bad`.
async fn stopped(bad: Option<mpsc::Receiver<String>>) -> Stop {
    use tokio::signal::unix::{signal, SignalKind};
    let refused = async move {
        match bad {
            Some(mut bad) => match bad.recv().await {
                Some(why) => why,
                None => std::future::pending().await,
            },
            None => std::future::pending().await,
        }
    };
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return Stop::BadInput(refused.await);
    };
    tokio::select! {
        _ = int.recv() => Stop::Interrupt,
        _ = term.recv() => Stop::Terminate,
        why = refused => Stop::BadInput(why),
    }
}

/// Writes results as JSON lines, each flushed as soon as it is in order (or as soon as it
/// ends, unordered), whatever stdout is; a progress bar on a terminal; a summary line on
/// stderr at the end. With an owner, Ctrl-C, SIGTERM, a closed stdout or a line of input
/// refused on `bad` (streamed from stdin) cancel the map's remaining inputs.
async fn print_results(
    mut run: MapRun<Value>,
    discard: bool,
    total: Option<u64>,
    owner: Option<Owner>,
    bad: Option<mpsc::Receiver<String>>,
) -> anyhow::Result<Code> {
    let started = std::time::Instant::now();
    let bar = progress_bar(total);
    let progress = run.progress();
    let ticker = bar
        .clone()
        .map(|bar| tokio::spawn(follow_progress(bar, progress.clone(), total, started)));
    let mut out = std::io::stdout().lock();
    let mut written = 0u64;
    let mut outcome = Ok(Code::Ok);
    let signals = stopped(bad);
    tokio::pin!(signals);
    loop {
        // Flush when nothing more is ready, so lines go out as they come without a write per line.
        let next = match run.next().now_or_never() {
            Some(next) => next,
            None => {
                if let Err(e) = out.flush() {
                    outcome = closed_stdout(e, &owner).await;
                    break;
                }
                tokio::select! {
                    next = run.next() => next,
                    stop = &mut signals => {
                        if let Some(bar) = &bar {
                            bar.abandon();
                        }
                        let (why, code) = match stop {
                            Stop::Interrupt => ("interrupted", EXIT_SIGINT),
                            Stop::Terminate => ("terminated", EXIT_SIGTERM),
                            Stop::BadInput(bad) => {
                                let _ = out.flush();
                                if let Some(owner) = &owner {
                                    owner.cancel("a line of input was refused", Some(written)).await;
                                }
                                return Err(exit::usage(bad));
                            }
                        };
                        let _ = out.flush();
                        match &owner {
                            Some(owner) => owner.cancel(why, Some(written)).await,
                            None => eprintln!("{why}"),
                        }
                        std::process::exit(code);
                    }
                }
            }
        };
        let Some(item) = next else {
            break;
        };
        match item {
            Ok(MapItem { index, result }) => {
                let line = match result {
                    Ok(_) if discard => json!({ "index": index }),
                    Ok(output) => json!({ "index": index, "output": output }),
                    Err(error) => json!({ "index": index, "error": error }),
                };
                if let Err(e) = writeln!(out, "{line}") {
                    outcome = closed_stdout(e, &owner).await;
                    break;
                }
                written += 1;
            }
            Err(e) => {
                let _ = out.flush();
                outcome = Err(failure(e, written, &owner).await);
                break;
            }
        }
    }
    let _ = out.flush();
    if let Some(t) = ticker {
        t.abort();
    }
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let counts = *progress.borrow();
    if owner.is_some() || counts.total > 0 {
        eprintln!("{}", summary(&counts, started.elapsed(), owner.is_some()));
    }
    outcome
}

/// A closed stdout ends the command quietly (exit 0); a map it started is cancelled.
async fn closed_stdout(e: std::io::Error, owner: &Option<Owner>) -> anyhow::Result<Code> {
    if e.kind() != std::io::ErrorKind::BrokenPipe {
        return Err(anyhow::Error::new(e).context("cannot write to stdout"));
    }
    if let Some(owner) = owner {
        owner.cancel("stdout was closed", None).await;
    }
    Ok(Code::Ok)
}

/// The error of a map that stopped: for a failed input, what was written and what became of
/// the other inputs; on any other error a map the command started is cancelled, and it says so.
async fn failure(e: MapError, written: u64, owner: &Option<Owner>) -> anyhow::Error {
    let MapError::InputFailed { index, error } = e else {
        // Whatever stopped the command (a refusal, a lost server), a map it started does not
        // go on running for nobody.
        if let Some(owner) = owner {
            owner.cancel("stopped on an error", Some(written)).await;
        }
        return match e {
            MapError::Api(api) => api.into(),
            other => exit::usage(other.to_string()),
        };
    };
    let mut message = format!(
        "input {index} failed: {}: {}; {written} results were written",
        error.code, error.message
    );
    if let Some(owner) = owner {
        if let Ok(call) = owner.client.get(&owner.id, Duration::ZERO).await {
            let c = call.inputs;
            message.push_str(&format!(
                "; of the map's {} inputs, {} succeeded, {} failed and {} were cancelled (hopper results {} --return-exceptions shows them all)",
                c.total, c.succeeded, c.failed, c.cancelled, owner.id
            ));
        }
    }
    Coded {
        code: Code::CallFailed,
        message,
    }
    .into()
}

/// `10,000 inputs: 9,998 succeeded, 2 failed in 4.1 s (2,440/s)` for a map that `ran` now;
/// for results read of a map that ran before, how long the reading took, with no rate.
fn summary(c: &CallCounts, took: Duration, ran: bool) -> String {
    let ended = c.succeeded + c.failed + c.cancelled;
    let mut parts = vec![format!("{} succeeded", thousands(c.succeeded))];
    if c.failed > 0 {
        parts.push(format!("{} failed", thousands(c.failed)));
    }
    if c.cancelled > 0 {
        parts.push(format!("{} cancelled", thousands(c.cancelled)));
    }
    let open = c.pending + c.running;
    if open > 0 {
        parts.push(format!("{} not ended", thousands(open)));
    }
    let secs = took.as_secs_f64().max(0.001);
    if !ran {
        return format!(
            "{} inputs: {} (results read in {secs:.1} s)",
            thousands(c.total),
            parts.join(", ")
        );
    }
    let per_second = ended as f64 / secs;
    let rate = if per_second < 10.0 {
        format!("{per_second:.1}")
    } else {
        thousands(per_second.round() as i64)
    };
    format!(
        "{} inputs: {} in {:.1} s ({rate}/s)",
        thousands(c.total),
        parts.join(", "),
        secs,
    )
}

/// `12345` → `12,345`.
fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// A progress bar on stderr when it is a terminal, none on a pipe. Its total is the input
/// file's line count from the start (stdin: what was sent so far).
fn progress_bar(total: Option<u64>) -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::new(total.unwrap_or(0));
    let style = ProgressStyle::with_template("{bar:40} {pos}/{len} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(200));
    Some(bar)
}

async fn follow_progress(
    bar: ProgressBar,
    mut progress: tokio::sync::watch::Receiver<CallCounts>,
    total: Option<u64>,
    started: std::time::Instant,
) {
    loop {
        let c = *progress.borrow_and_update();
        bar.set_length(total.unwrap_or(0).max(c.total as u64));
        let ended = c.succeeded + c.failed + c.cancelled;
        bar.set_position(ended as u64);
        let rate = ended as f64 / started.elapsed().as_secs_f64().max(0.001);
        let mut msg = format!(
            "{}/s  running {}, queued {}",
            thousands(rate.round() as i64),
            thousands(c.running),
            thousands(c.pending)
        );
        if c.failed > 0 {
            msg.push_str(&format!(", {} failed", thousands(c.failed)));
        }
        bar.set_message(msg);
        if progress.changed().await.is_err() {
            return;
        }
    }
}

fn eprintln_if_terminal(text: &str) {
    if std::io::stderr().is_terminal() {
        eprintln!("{text}");
    }
}

/// A stream fed by a task: what `produce` sends on its channel.
fn async_stream<F, Fut>(produce: F) -> impl futures_util::Stream<Item = Value> + Send + 'static
where
    F: FnOnce(mpsc::Sender<Value>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(10_000);
    tokio::spawn(produce(tx));
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_counts_with_separators_and_a_sensible_rate() {
        let c = CallCounts {
            total: 10_000,
            succeeded: 9_998,
            failed: 2,
            ..CallCounts::default()
        };
        assert_eq!(
            summary(&c, Duration::from_millis(4_100), true),
            "10,000 inputs: 9,998 succeeded, 2 failed in 4.1 s (2,439/s)"
        );
        // Results read of a map that ran before: no rate, which would be the reading's.
        assert_eq!(
            summary(&c, Duration::from_millis(50), false),
            "10,000 inputs: 9,998 succeeded, 2 failed (results read in 0.1 s)"
        );
        // A few slow inputs: a rate under one a second is not 0/s.
        let few = CallCounts {
            total: 5,
            succeeded: 5,
            ..CallCounts::default()
        };
        assert_eq!(
            summary(&few, Duration::from_millis(11_400), true),
            "5 inputs: 5 succeeded in 11.4 s (0.4/s)"
        );
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(12), "12");
    }
}
