//! `serve` functions: one long-lived process per worker and function version, loaded once and
//! fed inputs as newline-delimited JSON (the protocol is in docs/SERVE_PROTOCOL.md).
//!
//! Requests, one JSON object per line on the process's stdin:
//! `{"id": "17.1", "input": …}`, or for a batched function `{"batch": [{"id": …, "input": …}, …]}`.
//! Answers, one per input, in any order, on its stdout:
//! `{"id": "17.1", "output": …}` or `{"id": "17.1", "error": "message"}` (or
//! `{"code": …, "message": …}`); `{"id": "17.1", "log": "text"}` adds a log line to that input.
//! Other stdout lines and every stderr line are logged to every input in flight. If the process
//! exits, its inputs in flight go back to the queue (without using a retry) and the next input
//! starts a new process.

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hopper_core::api::{InputError, Lease, LogStream, Outcome};
use hopper_core::FunctionSpec;
use hopper_sdk::runtime::{Job, LogSink};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{ChildStdin, Command};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::process;

enum Answer {
    Output(Value),
    Error(InputError),
    Crashed(String),
}

struct Waiting {
    lease: Lease,
    answer: oneshot::Sender<Answer>,
}

/// One running `serve` process.
struct ServeProcess {
    stdin: tokio::sync::Mutex<ChildStdin>,
    waiting: Mutex<HashMap<String, Waiting>>,
    /// Cancelled once the process has exited.
    dead: CancellationToken,
    pid: Option<u32>,
}

impl ServeProcess {
    fn in_flight(&self) -> Vec<Lease> {
        self.waiting
            .lock()
            .map(|w| w.values().map(|w| w.lease).collect())
            .unwrap_or_default()
    }

    fn answer(&self, id: &str, answer: Answer) {
        let waiting = self.waiting.lock().ok().and_then(|mut w| w.remove(id));
        if let Some(w) = waiting {
            let _ = w.answer.send(answer);
        }
    }

    fn kill(&self) {
        if let Some(pid) = self.pid {
            let _ = process::signal_group(pid, process::SIGKILL);
        }
    }
}

/// The `serve` processes of one worker, by function version.
#[derive(Default)]
pub struct ServePool {
    processes: Mutex<HashMap<String, Arc<ServeProcess>>>,
}

fn key(spec: &FunctionSpec) -> String {
    serde_json::to_string(spec).unwrap_or_else(|_| spec.qualified_name())
}

fn lease_id(lease: Lease) -> String {
    format!("{}.{}", lease.input_id, lease.attempt)
}

impl ServePool {
    fn get_or_start(
        &self,
        spec: &FunctionSpec,
        logs: &LogSink,
    ) -> Result<Arc<ServeProcess>, String> {
        let key = key(spec);
        let mut processes = self
            .processes
            .lock()
            .map_err(|_| "internal lock poisoned".to_string())?;
        if let Some(p) = processes.get(&key) {
            if !p.dead.is_cancelled() {
                return Ok(p.clone());
            }
        }
        let p = start(spec, logs.clone())?;
        processes.insert(key, p.clone());
        Ok(p)
    }

    /// Sends `jobs` to the function's process and waits for their answers.
    pub fn run(
        &self,
        spec: Arc<FunctionSpec>,
        jobs: Vec<Job>,
        logs: LogSink,
    ) -> impl std::future::Future<Output = Vec<Option<Outcome>>> + Send + 'static {
        let started = self.get_or_start(&spec, &logs);
        async move {
            let proc = match started {
                Ok(p) => p,
                Err(message) => {
                    for job in &jobs {
                        logs.line(job.lease, LogStream::System, message.clone());
                    }
                    return jobs
                        .iter()
                        .map(|_| Some(failed("spawn_failed", message.clone())))
                        .collect();
                }
            };
            let mut answers = Vec::with_capacity(jobs.len());
            if let Ok(mut waiting) = proc.waiting.lock() {
                for job in &jobs {
                    let (tx, rx) = oneshot::channel();
                    waiting.insert(
                        lease_id(job.lease),
                        Waiting {
                            lease: job.lease,
                            answer: tx,
                        },
                    );
                    answers.push(rx);
                }
            }
            let request = if spec.batch.is_some() {
                let items: Vec<Value> = jobs
                    .iter()
                    .map(|j| json!({"id": lease_id(j.lease), "input": j.input}))
                    .collect();
                json!({ "batch": items })
            } else {
                match jobs.first() {
                    Some(j) => json!({"id": lease_id(j.lease), "input": j.input}),
                    None => return Vec::new(),
                }
            };
            let mut line = request.to_string().into_bytes();
            line.push(b'\n');
            let written = {
                let mut stdin = proc.stdin.lock().await;
                match stdin.write_all(&line).await {
                    Ok(()) => stdin.flush().await,
                    Err(e) => Err(e),
                }
            };
            if let Err(e) = written {
                // The process is gone; the reader hands these inputs back.
                tracing::warn!(error = %e, "cannot write to the serve process");
                proc.kill();
            }
            let timeout = Duration::from_millis(spec.timeout_ms);
            let deadline = tokio::time::Instant::now() + timeout;
            let mut out = Vec::with_capacity(jobs.len());
            for (job, rx) in jobs.iter().zip(answers) {
                let outcome = tokio::select! {
                    answer = rx => Some(match answer {
                        Ok(Answer::Output(output)) => Outcome::Succeeded { output },
                        Ok(Answer::Error(error)) => Outcome::Failed { error, retry: true },
                        Ok(Answer::Crashed(message)) => crashed(message),
                        Err(_) => crashed("the serve process went away".into()),
                    }),
                    _ = tokio::time::sleep_until(deadline) => {
                        let took = hopper_core::duration::format(timeout);
                        logs.line(job.lease, LogStream::System, format!("timed out after {took}; killing the serve process"));
                        proc.answer(&lease_id(job.lease), Answer::Crashed("timed out".into()));
                        proc.kill();
                        Some(failed("timeout", format!("timed out after {took}; the serve process was killed")))
                    }
                    _ = job.cancel.cancelled() => {
                        proc.answer(&lease_id(job.lease), Answer::Crashed("cancelled".into()));
                        None
                    }
                };
                out.push(outcome);
            }
            out
        }
    }
}

fn failed(code: &str, message: String) -> Outcome {
    Outcome::Failed {
        retry: true,
        error: InputError {
            code: code.to_string(),
            message,
        },
    }
}

fn crashed(message: String) -> Outcome {
    Outcome::Returned {
        error: InputError {
            code: "serve_crashed".into(),
            message,
        },
    }
}

fn start(spec: &FunctionSpec, logs: LogSink) -> Result<Arc<ServeProcess>, String> {
    let Some((program, args)) = spec.serve.split_first() else {
        return Err("the function has no serve command".into());
    };
    let workdir = Path::new(&spec.workdir);
    let mut cmd = Command::new(crate::command::resolve_program(program, workdir));
    cmd.args(args)
        .current_dir(workdir)
        .envs(&spec.env)
        .env("HOPPER_FUNCTION", spec.qualified_name())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    process::isolate(&mut cmd, process::SIGKILL);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {program:?} in {}: {e}", workdir.display()))?;
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err("the serve process has no pipes".into());
    };
    tracing::info!(function = %spec.qualified_name(), pid = child.id(), "started serve process");
    let proc = Arc::new(ServeProcess {
        stdin: tokio::sync::Mutex::new(stdin),
        waiting: Mutex::new(HashMap::new()),
        dead: CancellationToken::new(),
        pid: child.id(),
    });
    {
        let proc = proc.clone();
        let logs = logs.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                for lease in proc.in_flight() {
                    logs.line(lease, LogStream::Stderr, line.clone());
                }
            }
        });
    }
    {
        let proc = proc.clone();
        let name = spec.qualified_name();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                read_answer(&proc, &logs, line);
            }
            let status = child.wait().await;
            proc.dead.cancel();
            let how = match status {
                Ok(s) => format!("the serve process exited ({s})"),
                Err(e) => format!("the serve process was lost: {e}"),
            };
            tracing::warn!(function = %name, "{how}");
            let waiting: Vec<Waiting> = proc
                .waiting
                .lock()
                .map(|mut w| w.drain().map(|(_, v)| v).collect())
                .unwrap_or_default();
            for w in waiting {
                logs.line(
                    w.lease,
                    LogStream::System,
                    format!("{how}; the input goes back to the queue"),
                );
                let _ = w.answer.send(Answer::Crashed(format!(
                    "{how} while the input was in flight"
                )));
            }
        });
    }
    Ok(proc)
}

/// One stdout line: an answer, a log line for one input, or text logged to every input.
fn read_answer(proc: &ServeProcess, logs: &LogSink, line: String) {
    let parsed: Option<serde_json::Map<String, Value>> = serde_json::from_str(&line).ok();
    let Some(obj) = parsed else {
        for lease in proc.in_flight() {
            logs.line(lease, LogStream::Stdout, line.clone());
        }
        return;
    };
    let Some(id) = obj.get("id").and_then(Value::as_str) else {
        for lease in proc.in_flight() {
            logs.line(lease, LogStream::Stdout, line.clone());
        }
        return;
    };
    if let Some(text) = obj.get("log") {
        let lease = proc
            .waiting
            .lock()
            .ok()
            .and_then(|w| w.get(id).map(|w| w.lease));
        if let Some(lease) = lease {
            let text = text
                .as_str()
                .map(String::from)
                .unwrap_or_else(|| text.to_string());
            logs.line(lease, LogStream::Stdout, text);
        }
        return;
    }
    if let Some(error) = obj.get("error") {
        let error = match error {
            Value::String(message) => InputError {
                code: "error".into(),
                message: message.clone(),
            },
            other => InputError {
                code: other
                    .get("code")
                    .and_then(Value::as_str)
                    .unwrap_or("error")
                    .to_string(),
                message: other
                    .get("message")
                    .and_then(Value::as_str)
                    .map(String::from)
                    .unwrap_or_else(|| other.to_string()),
            },
        };
        proc.answer(id, Answer::Error(error));
        return;
    }
    let output = obj.get("output").cloned().unwrap_or(Value::Null);
    proc.answer(id, Answer::Output(output));
}
