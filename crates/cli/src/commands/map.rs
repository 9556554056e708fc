//! `hopper map` and `hopper results`.

use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use hopper_core::CallCounts;
use hopper_sdk::{MapError, MapItem, MapOptions, MapRun};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::{call_id, client};
use crate::args::ClientArgs;
use crate::exit::{self, Code, Coded};

/// Checks every line of an input file before anything is sent, so a bad line changes nothing.
fn validate_file(path: &Path) -> anyhow::Result<()> {
    let file = std::fs::File::open(path)
        .map_err(|e| exit::usage(format!("cannot read {}: {e}", path.display())))?;
    for (n, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| exit::usage(format!("{}:{}: {e}", path.display(), n + 1)))?;
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
    }
    Ok(())
}

/// Reads inputs line by line on a blocking thread; a bad line ends the stream with its error.
fn read_inputs(path: &Path) -> anyhow::Result<mpsc::Receiver<Result<Value, String>>> {
    let reader: Box<dyn BufRead + Send> = if path.as_os_str() == "-" {
        Box::new(BufReader::new(std::io::stdin()))
    } else {
        validate_file(path)?;
        let file = std::fs::File::open(path)
            .map_err(|e| exit::usage(format!("cannot read {}: {e}", path.display())))?;
        Box::new(BufReader::new(file))
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
                Ok(line) if line.trim().is_empty() => continue,
                Ok(line) => serde_json::from_str::<Value>(&line)
                    .map_err(|e| format!("{name}:{}: not valid JSON: {e}", n + 1)),
                Err(e) => Err(format!("{name}:{}: {e}", n + 1)),
            };
            let stop = item.is_err();
            if tx.blocking_send(item).is_err() || stop {
                return;
            }
        }
    });
    Ok(rx)
}

pub async fn map(
    args: &ClientArgs,
    function: &str,
    path: &Path,
    options: MapOptions,
) -> anyhow::Result<Code> {
    let mut lines = read_inputs(path)?;
    let (bad_tx, mut bad_rx) = mpsc::channel::<String>(1);
    let inputs = async_stream(move |tx: mpsc::Sender<Value>| async move {
        while let Some(item) = lines.recv().await {
            match item {
                Ok(v) => {
                    if tx.send(v).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = bad_tx.send(e).await;
                    return;
                }
            }
        }
    });
    let client = client(args)?;
    let run: MapRun<Value> = client
        .map(function, inputs, options.clone())
        .await
        .map_err(map_error)?;
    eprintln_if_terminal(&format!("map {}", run.call_id));
    let result = print_results(run, options.discard_results).await;
    if let Ok(bad) = bad_rx.try_recv() {
        return Err(exit::usage(bad));
    }
    result
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
    print_results(run, false).await
}

async fn print_results(mut run: MapRun<Value>, discard: bool) -> anyhow::Result<Code> {
    let bar = progress_bar();
    let progress = run.progress();
    let ticker = bar
        .clone()
        .map(|bar| tokio::spawn(follow_progress(bar, progress)));
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut outcome = Ok(Code::Ok);
    while let Some(item) = run.next().await {
        match item {
            Ok(MapItem { index, result }) => {
                let line = match result {
                    Ok(_) if discard => json!({ "index": index }),
                    Ok(output) => json!({ "index": index, "output": output }),
                    Err(error) => json!({ "index": index, "error": error }),
                };
                writeln!(out, "{line}")?;
                if bar.is_none() {
                    continue;
                }
                // On a terminal, results show up as they come.
                out.flush()?;
            }
            Err(e) => {
                outcome = Err(map_error(e));
                break;
            }
        }
    }
    out.flush()?;
    if let Some(t) = ticker {
        t.abort();
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    outcome
}

fn map_error(e: MapError) -> anyhow::Error {
    match e {
        MapError::InputFailed { index, error } => Coded {
            code: Code::CallFailed,
            message: format!(
                "input {index} failed: {}: {} (the map's other inputs were cancelled)",
                error.code, error.message
            ),
        }
        .into(),
        MapError::Api(api) => api.into(),
        other => exit::usage(other.to_string()),
    }
}

/// A progress bar on stderr when it is a terminal, none on a pipe.
fn progress_bar() -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::new(0);
    let style = ProgressStyle::with_template("{bar:40} {pos}/{len} {per_sec} eta {eta} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(200));
    Some(bar)
}

async fn follow_progress(bar: ProgressBar, mut progress: tokio::sync::watch::Receiver<CallCounts>) {
    loop {
        let c = *progress.borrow_and_update();
        bar.set_length(c.total as u64);
        bar.set_position((c.succeeded + c.failed + c.cancelled) as u64);
        if c.failed > 0 {
            bar.set_message(format!("{} failed", c.failed));
        }
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
