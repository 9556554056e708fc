//! `serve` functions: one long-lived process per worker and function version, loaded once and
//! fed inputs as newline-delimited JSON (the protocol is in docs/SERVE_PROTOCOL.md).
//!
//! Requests, one JSON object per line on the process's stdin:
//! `{"id": "17.1", "input": …, "call_id": …, "index": …, "attempt": …}`, or for a batched
//! function `{"batch": [{"id": …, "input": …, …}, …]}`.
//! Answers, one per input, in any order, on its stdout:
//! `{"id": "17.1", "output": …}` or `{"id": "17.1", "error": "message"}` (or
//! `{"code": …, "message": …, "retry": false}`); `{"id": "17.1", "log": "text", "stream":
//! "stderr"}` adds a log line to that input; `{"ready": true}` says the process has loaded.
//!
//! A worker leases no input while one of its processes is loading: one that said
//! `{"ready": false}` (it will say `{"ready": true}` when loaded) until it says so, and one that
//! said nothing yet for its first [`START_GRACE`] (a process that never uses the ready line
//! gets inputs after that). Inputs meanwhile go to warm workers.
//!
//! What the process prints before it is ready (or before its first answer) is start-up output:
//! it goes to the worker's log, never into inputs' logs; after that, other stdout lines and
//! every stderr line are logged to every input in flight. Bytes that are not UTF-8 are kept as
//! U+FFFD. An answer that names an input but cannot be decoded fails that input with
//! `bad_output`, and the process goes on.
//!
//! A process that exits by itself before it was ready (an exception at import) fails its
//! inputs with `startup_failed` and the last lines of its stderr (the function's retry policy
//! applies). One that dies later of its own doing (it exits, segfaults or aborts) while
//! running a single input fails that input with `serve_crashed` (retries apply); one killed
//! from outside, or with several inputs in flight, hands its inputs back to the queue (no
//! retry used). Either way the next start waits, longer each
//! time a process dies young, so a broken process does not crash-loop. On stop, a process's
//! stdin is closed and it gets SIGTERM, then SIGKILL of its group after the kill grace.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use hopper_core::api::{InputError, Lease, LogStream, Outcome};
use hopper_core::FunctionSpec;
use hopper_sdk::runtime::{Job, LogSink, Registration};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::process::{ChildStdin, Command};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::process;

/// Stderr lines kept for the error of a process that fails at start.
const STDERR_TAIL: usize = 20;
/// Longest answer line read from a serve process, in bytes (a longer line's rest is dropped).
const MAX_ANSWER: usize = 64 * 1024 * 1024;
/// A process that dies younger than this counts as crash-looping: its next start waits.
const YOUNG: Duration = Duration::from_secs(30);
/// The first wait before starting a process again after one died young; it doubles each time.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// The longest such wait.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long a new process that has not said `{"ready": false}` keeps its worker from leasing:
/// one that says nothing by then is taken as one that never says it is ready.
pub const START_GRACE: Duration = Duration::from_secs(1);
/// How often a worker waiting for its processes to load looks again.
const READY_POLL: Duration = Duration::from_millis(25);

enum Answer {
    Output(Value),
    Error(InputError, bool),
    /// The process died under several inputs, or was killed from outside: back to the queue.
    Crashed(String),
    /// The process died of its own doing while this was its only input: a failed attempt.
    Died(String),
    StartupFailed(String),
    /// The kernel's OOM killer killed the process for going over the function's `memory`.
    OutOfMemory(String),
}

struct Waiting {
    lease: Lease,
    answer: oneshot::Sender<Answer>,
}

/// One running `serve` process.
struct ServeProcess {
    name: String,
    /// `None` once the process is being stopped.
    stdin: tokio::sync::Mutex<Option<ChildStdin>>,
    waiting: Mutex<HashMap<String, Waiting>>,
    /// Set once the process said it is ready (and its stderr up to then was read) or answered
    /// an input.
    ready: AtomicBool,
    /// The process printed its ready line; `ready` follows once the stderr reader has taken
    /// what the process wrote there before it (see [`read_stderr`]).
    ready_said: AtomicBool,
    ready_seen: tokio::sync::Notify,
    reporter: Option<(hopper_sdk::Client, hopper_core::WorkerId)>,
    /// Longest it may load (the function's `timeout`): past it, it is killed and its start
    /// counts as failed, so a process stuck loading cannot hold its worker's inputs forever.
    load_timeout: Duration,
    /// The process said `{"ready": false}`: it is loading and will say when it is ready.
    loading: AtomicBool,
    /// It was killed for loading longer than `load_timeout`: a start-up failure.
    load_timed_out: AtomicBool,
    started: Instant,
    /// The stderr reader has stopped (the pipe closed).
    stderr_closed: AtomicBool,
    /// Set when the worker stops it: its exit is expected.
    stopping: AtomicBool,
    /// The last stderr lines, for the error of a process that fails at start.
    stderr_tail: Mutex<VecDeque<String>>,
    /// Cancelled once the process has exited.
    dead: CancellationToken,
    pid: Option<u32>,
    /// The cgroup limiting it to the function's `memory`, when it sets one.
    memory: Option<crate::cgroup::MemoryGroup>,
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

    /// Tells the server how this process started (see `POST /v1/workers/{id}/starts`); a
    /// report that cannot be sent is only logged.
    fn report(&self, start: hopper_core::api::ProcessStart) {
        let Some((client, worker)) = self.reporter.clone() else {
            return;
        };
        tokio::spawn(async move {
            if let Err(e) = client.worker_start(&worker, &start).await {
                tracing::debug!(error = %e, "cannot report how a serve process started");
            }
        });
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Whether its worker should lease nothing yet: it is alive, not ready, and either said it
    /// is loading or is new enough that it may still say so.
    fn holds_leases(&self) -> bool {
        !self.dead.is_cancelled()
            && !self.is_ready()
            && (self.loading.load(Ordering::Acquire) || self.started.elapsed() < START_GRACE)
    }

    /// The ready line was read on stdout. Lines the process wrote to stderr before it may not
    /// have been read yet (two pipes, two readers): the stderr reader takes those as start-up
    /// output first, then marks the process ready. With stderr closed, ready now.
    fn said_ready(&self) {
        if !self.ready_said.load(Ordering::SeqCst) {
            self.report(hopper_core::api::ProcessStart {
                function: self.name.clone(),
                ready_ms: Some(self.started.elapsed().as_millis() as u64),
                failed: None,
            });
        }
        self.ready_said.store(true, Ordering::SeqCst);
        self.ready_seen.notify_one();
        if self.stderr_closed.load(Ordering::SeqCst) {
            self.ready.store(true, Ordering::Release);
        }
    }

    /// A line the process wrote that belongs to no input: start-up output goes to the
    /// worker's log, later output to every input in flight.
    fn unattributed(&self, logs: &LogSink, stream: LogStream, line: String) {
        if stream == LogStream::Stderr {
            if let Ok(mut tail) = self.stderr_tail.lock() {
                if tail.len() == STDERR_TAIL {
                    tail.pop_front();
                }
                tail.push_back(line.clone());
            }
        }
        if !self.is_ready() {
            tracing::info!(function = %self.name, pid = self.pid, "{line}");
            return;
        }
        for lease in self.in_flight() {
            logs.line(lease, stream, line.clone());
        }
    }

    fn stderr_tail(&self) -> String {
        self.stderr_tail
            .lock()
            .map(|t| t.iter().cloned().collect::<Vec<_>>().join("\n"))
            .unwrap_or_default()
    }
}

/// What the processes a worker starts are told about where they run.
#[derive(Debug, Clone, Default)]
pub struct WorkerEnv {
    /// The worker's client and id, to report how its processes start.
    pub reporter: Option<(hopper_sdk::Client, hopper_core::WorkerId)>,
    pub server: String,
    pub call_token: Option<hopper_core::secret::Redacted<String>>,
    pub worker_id: String,
    pub kill_grace: Duration,
    /// Fetches the blobs inputs refer to and stores those outputs name.
    pub blobs: Option<crate::blobs::Blobs>,
}

impl WorkerEnv {
    /// `blob_dir` is where the worker keeps blobs of its inputs and outputs.
    pub fn from_registration(r: &Registration, kill_grace: Duration, blob_dir: PathBuf) -> Self {
        Self {
            reporter: Some((r.client.clone(), r.worker_id.clone())),
            server: r.server.clone(),
            call_token: r.call_token.clone(),
            worker_id: r.worker_id.to_string(),
            kill_grace,
            blobs: Some(crate::blobs::Blobs::new(
                r.client.clone(),
                r.worker_id.clone(),
                blob_dir,
            )),
        }
    }

    /// Sets `HOPPER_SERVER`, `HOPPER_TOKEN` (or removes it), `HOPPER_WORKER_ID` and
    /// `HOPPER_KILL_GRACE` (seconds) on `cmd`.
    pub fn apply(&self, cmd: &mut Command) {
        cmd.env("HOPPER_SERVER", &self.server)
            .env("HOPPER_WORKER_ID", &self.worker_id)
            .env(
                "HOPPER_KILL_GRACE",
                format!("{:.3}", self.kill_grace.as_secs_f64()),
            );
        match &self.call_token {
            Some(token) => cmd.env("HOPPER_TOKEN", token.expose()),
            None => cmd.env_remove("HOPPER_TOKEN"),
        };
    }
}

/// Consecutive young deaths of one function's process, and when it may start again.
#[derive(Default)]
struct Restarts {
    young_deaths: u32,
    not_before: Option<Instant>,
}

/// The `serve` processes of one worker, by function version.
#[derive(Default)]
pub struct ServePool {
    processes: Mutex<HashMap<String, Arc<ServeProcess>>>,
    restarts: Arc<Mutex<HashMap<String, Restarts>>>,
    env: OnceLock<WorkerEnv>,
    /// Where start-up failures with no input in flight are logged (set at the first run).
    logs: OnceLock<LogSink>,
}

fn key(spec: &FunctionSpec) -> String {
    serde_json::to_string(spec).unwrap_or_else(|_| spec.qualified_name())
}

fn lease_id(lease: Lease) -> String {
    format!("{}.{}", lease.input_id, lease.attempt)
}

impl ServePool {
    /// Remembers what processes are told about their worker (from its registration).
    pub fn set_env(&self, env: WorkerEnv) {
        let _ = self.env.set(env);
    }

    /// Starts the function's process now, so it has loaded before its first input.
    pub fn prepare(&self, spec: &FunctionSpec, logs: LogSink) {
        let _ = self.logs.set(logs.clone());
        if let Err(e) = self.start_now(spec, &logs) {
            tracing::warn!(function = %spec.qualified_name(), error = %e, "cannot start the serve process");
        }
    }

    /// Resolves once no process of this worker is loading (see [`START_GRACE`]). A process
    /// still loading after its function's `timeout` is killed, and said to have failed at
    /// start.
    pub async fn ready(&self) {
        loop {
            let loading: Vec<Arc<ServeProcess>> = self
                .processes
                .lock()
                .map(|p| p.values().filter(|p| p.holds_leases()).cloned().collect())
                .unwrap_or_default();
            if loading.is_empty() {
                return;
            }
            for p in loading {
                if p.started.elapsed() > p.load_timeout
                    && !p.load_timed_out.swap(true, Ordering::AcqRel)
                {
                    let mut message = format!(
                        "not ready after {} (the function's timeout): the process was killed",
                        hopper_core::duration::format(p.load_timeout)
                    );
                    let tail = p.stderr_tail();
                    if let Some(last) = tail.lines().rev().find(|l| !l.trim().is_empty()) {
                        message.push_str(&format!("; its last output: {}", last.trim()));
                    }
                    tracing::warn!(function = %p.name, "{message}");
                    p.report(hopper_core::api::ProcessStart {
                        function: p.name.clone(),
                        ready_ms: None,
                        failed: Some(message),
                    });
                    p.kill();
                }
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }

    /// The running process, or a new one if the backoff allows it now.
    fn start_now(&self, spec: &FunctionSpec, logs: &LogSink) -> Result<Arc<ServeProcess>, String> {
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
        let p = start(
            spec,
            logs.clone(),
            self.env.get().cloned().unwrap_or_default(),
            self.restarts.clone(),
            key.clone(),
        )?;
        processes.insert(key, p.clone());
        Ok(p)
    }

    async fn get_or_start(
        &self,
        spec: &FunctionSpec,
        logs: &LogSink,
    ) -> Result<Arc<ServeProcess>, String> {
        let not_before = self
            .restarts
            .lock()
            .ok()
            .and_then(|r| r.get(&key(spec)).and_then(|r| r.not_before));
        if let Some(at) = not_before {
            let running = self
                .processes
                .lock()
                .ok()
                .and_then(|p| p.get(&key(spec)).cloned())
                .is_some_and(|p| !p.dead.is_cancelled());
            if !running && at > Instant::now() {
                tokio::time::sleep_until(at).await;
            }
        }
        self.start_now(spec, logs)
    }

    /// Closes every process's stdin and sends it SIGTERM; after `grace`, SIGKILL to the
    /// process groups of those still running.
    pub async fn stop(&self, grace: Duration) {
        let processes: Vec<Arc<ServeProcess>> = self
            .processes
            .lock()
            .map(|mut p| p.drain().map(|(_, v)| v).collect())
            .unwrap_or_default();
        for p in &processes {
            p.stopping.store(true, Ordering::Release);
            p.stdin.lock().await.take();
            if let Some(pid) = p.pid {
                let _ = process::signal_process(pid, process::SIGTERM);
            }
        }
        let deadline = Instant::now() + grace;
        for p in &processes {
            if tokio::time::timeout_at(deadline, p.dead.cancelled())
                .await
                .is_err()
            {
                tracing::warn!(function = %p.name, "the serve process did not stop after SIGTERM; killing it");
            }
            // Whatever it started in its group goes with it.
            p.kill();
        }
    }

    /// Sends `jobs` to the function's process and waits for their answers.
    pub fn run(
        self: &Arc<Self>,
        spec: Arc<FunctionSpec>,
        jobs: Vec<Job>,
        logs: LogSink,
    ) -> impl std::future::Future<Output = Vec<Option<Outcome>>> + Send + 'static {
        let pool = self.clone();
        async move {
            let _ = pool.logs.set(logs.clone());
            let proc = match pool.get_or_start(&spec, &logs).await {
                Ok(p) => p,
                Err(message) => {
                    for job in &jobs {
                        logs.line(job.lease, LogStream::System, message.clone());
                    }
                    return jobs
                        .iter()
                        .map(|_| Some(failed("spawn_failed", message.clone(), true)))
                        .collect();
                }
            };
            run_on(&proc, &spec, jobs, &logs).await
        }
    }
}

async fn run_on(
    proc: &Arc<ServeProcess>,
    spec: &FunctionSpec,
    jobs: Vec<Job>,
    logs: &LogSink,
) -> Vec<Option<Outcome>> {
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
    let item = |j: &Job| {
        json!({
            "id": lease_id(j.lease),
            "input": j.input,
            "call_id": j.call_id,
            "index": j.index,
            "attempt": j.lease.attempt,
        })
    };
    let request = if spec.batch.is_some() {
        json!({ "batch": jobs.iter().map(item).collect::<Vec<Value>>() })
    } else {
        match jobs.first() {
            Some(j) => item(j),
            None => return Vec::new(),
        }
    };
    if let Err(e) = send(proc, &request).await {
        // The process is gone; the reader hands these inputs back.
        tracing::warn!(error = %e, "cannot write to the serve process");
        proc.kill();
    }
    let timeout = Duration::from_millis(spec.timeout_ms);
    let deadline = Instant::now() + timeout;
    let mut out = Vec::with_capacity(jobs.len());
    for (job, rx) in jobs.iter().zip(answers) {
        let outcome = tokio::select! {
            answer = rx => Some(match answer {
                Ok(Answer::Output(output)) => Outcome::Succeeded { output },
                Ok(Answer::Error(error, retry)) => Outcome::Failed { error, retry },
                Ok(Answer::Crashed(message)) => crashed(message),
                Ok(Answer::Died(message)) => failed("serve_crashed", message, true),
                Ok(Answer::StartupFailed(message)) => failed("startup_failed", message, true),
                Ok(Answer::OutOfMemory(message)) => failed("out_of_memory", message, true),
                Err(_) => crashed("the serve process went away".into()),
            }),
            _ = tokio::time::sleep_until(deadline) => {
                let took = hopper_core::duration::format(timeout);
                proc.answer(&lease_id(job.lease), Answer::Crashed("timed out".into()));
                // A process that said it was loading and never said it was ready: not ready.
                let loaded = proc.is_ready() || !proc.loading.load(Ordering::Acquire);
                if loaded {
                    logs.line(job.lease, LogStream::System, format!("timed out after {took}; killing the serve process"));
                    proc.kill();
                    Some(failed("timeout", format!("timed out after {took}; the serve process was killed"), true))
                } else {
                    // The input waited out its timeout for a process that never got ready: it
                    // did not run; the process failed to start.
                    let tail = proc.stderr_tail();
                    let mut message = format!("the serve process was not ready after {took} (the function's timeout); it was killed");
                    if !tail.is_empty() {
                        message.push_str(&format!("; its last output:\n{tail}"));
                    }
                    logs.line(job.lease, LogStream::System, message.clone());
                    if !proc.load_timed_out.swap(true, Ordering::AcqRel) {
                        proc.report(hopper_core::api::ProcessStart {
                            function: proc.name.clone(),
                            ready_ms: None,
                            failed: Some(format!("not ready after {took} (the function's timeout): the process was killed")),
                        });
                    }
                    proc.kill();
                    Some(failed("startup_failed", message, true))
                }
            }
            _ = job.cancel.cancelled() => {
                let id = lease_id(job.lease);
                proc.answer(&id, Answer::Crashed("cancelled".into()));
                // The process may stop working on it; one that does not know the line
                // ignores it, and its answer, when it comes, is dropped.
                let _ = send(proc, &json!({ "cancel": id })).await;
                None
            }
        };
        out.push(outcome);
    }
    out
}

/// Writes `message` to the process's stdin as one line.
async fn send(proc: &ServeProcess, message: &Value) -> std::io::Result<()> {
    let mut line = message.to_string().into_bytes();
    line.push(b'\n');
    let mut stdin = proc.stdin.lock().await;
    match stdin.as_mut() {
        Some(stdin) => {
            stdin.write_all(&line).await?;
            stdin.flush().await
        }
        None => Err(std::io::Error::other("the serve process is stopping")),
    }
}

fn failed(code: &str, message: String, retry: bool) -> Outcome {
    Outcome::Failed {
        retry,
        error: InputError::new(code.to_string(), message),
    }
}

fn crashed(message: String) -> Outcome {
    Outcome::Returned {
        error: InputError::new("serve_crashed", message),
    }
}

fn start(
    spec: &FunctionSpec,
    logs: LogSink,
    env: WorkerEnv,
    restarts: Arc<Mutex<HashMap<String, Restarts>>>,
    key: String,
) -> Result<Arc<ServeProcess>, String> {
    let Some((program, args)) = spec.serve.split_first() else {
        return Err("the function has no serve command".into());
    };
    let workdir = Path::new(&spec.workdir);
    let mut cmd = Command::new(crate::command::resolve_program(program, workdir));
    cmd.args(args)
        .current_dir(workdir)
        .envs(&spec.env)
        .env("HOPPER_FUNCTION", spec.qualified_name())
        .env("HOPPER_CONCURRENCY", spec.concurrency.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    env.apply(&mut cmd);
    // Where the process writes the files of large outputs: its worker's, for all its inputs.
    if let Some(blobs) = &env.blobs {
        let out = blobs.serve_out();
        let _ = std::fs::create_dir_all(&out);
        cmd.env("HOPPER_BLOB_DIR", out);
    }
    process::isolate(&mut cmd, process::SIGKILL);
    // The process and all it starts in a cgroup with the function's memory.
    let memory = crate::cgroup::for_function(spec)
        .and_then(|group| {
            if let Some(group) = &group {
                group.join(cmd.as_std_mut())?;
            }
            Ok(group)
        })
        .unwrap_or_else(|why| {
            tracing::warn!(function = %spec.qualified_name(), "{why}");
            None
        });
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {program:?} in {}: {e}", workdir.display()))?;
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err("the serve process has no pipes".into());
    };
    let name = spec.qualified_name();
    tracing::info!(function = %name, pid = child.id(), "started serve process");
    let started = Instant::now();
    let proc = Arc::new(ServeProcess {
        name: name.clone(),
        stdin: tokio::sync::Mutex::new(Some(stdin)),
        waiting: Mutex::new(HashMap::new()),
        ready: AtomicBool::new(false),
        stopping: AtomicBool::new(false),
        stderr_tail: Mutex::new(VecDeque::new()),
        ready_said: AtomicBool::new(false),
        ready_seen: tokio::sync::Notify::new(),
        loading: AtomicBool::new(false),
        load_timed_out: AtomicBool::new(false),
        reporter: env.reporter.clone(),
        load_timeout: Duration::from_millis(spec.timeout_ms.max(1)),
        started,
        stderr_closed: AtomicBool::new(false),
        dead: CancellationToken::new(),
        pid: child.id(),
        memory,
    });
    let stderr_done = tokio::spawn(read_stderr(stderr, proc.clone(), logs.clone()));
    let proc_out = proc.clone();
    tokio::spawn(async move {
        let proc = proc_out;
        // An answer is one line, up to the largest stdout a command may write; a longer
        // line's later pieces are dropped.
        process::for_each_line(stdout, MAX_ANSWER, &logs, |line, _, continued| {
            if continued {
                return process::Pace::Go;
            }
            read_answer(&proc, &logs, line)
        })
        .await;
        let status = child.wait().await;
        // The last stderr lines, for the error below.
        let _ = tokio::time::timeout(Duration::from_secs(1), stderr_done).await;
        proc.dead.cancel();
        // Killed by a signal (the OOM killer, an operator): a crash, whenever it came. Exited
        // by itself before it was ready (an exception at import): a start-up failure.
        let signal = status.as_ref().map_or(
            Some(libc::SIGKILL),
            std::os::unix::process::ExitStatusExt::signal,
        );
        let signalled = signal.is_some();
        // An exit of its own accord, or a signal of its own making (a segfault, an abort):
        // the process's own doing, and so the doing of the input it was running.
        let own_doing = signal.is_none_or(|n| {
            [
                libc::SIGSEGV,
                libc::SIGABRT,
                libc::SIGBUS,
                libc::SIGFPE,
                libc::SIGILL,
                libc::SIGSYS,
                libc::SIGTRAP,
            ]
            .contains(&n)
        });
        let how = match status {
            Ok(s) => format!("the serve process exited ({s})"),
            Err(e) => format!("the serve process was lost: {e}"),
        };
        let was_ready = proc.is_ready();
        // Killed for not getting ready in time: a start-up failure too (already reported).
        let load_timed_out = proc.load_timed_out.load(Ordering::Acquire);
        let failed_at_start = !was_ready && (!signalled || load_timed_out);
        if proc.stopping.load(Ordering::Acquire) {
            tracing::info!(function = %name, "{how}");
            let waiting: Vec<Waiting> = proc
                .waiting
                .lock()
                .map(|mut w| w.drain().map(|(_, v)| v).collect())
                .unwrap_or_default();
            for w in waiting {
                let _ = w
                    .answer
                    .send(Answer::Crashed(format!("{how}: the worker is stopping")));
            }
            return;
        }
        let young = started.elapsed() < YOUNG;
        if let Ok(mut restarts) = restarts.lock() {
            let r = restarts.entry(key).or_default();
            if young || !was_ready {
                r.young_deaths += 1;
                let wait = FIRST_BACKOFF
                    .saturating_mul(1 << (r.young_deaths - 1).min(10))
                    .min(MAX_BACKOFF);
                r.not_before = Some(Instant::now() + wait);
                tracing::warn!(function = %name, restart_in = ?wait, "{how}");
            } else {
                *r = Restarts::default();
                tracing::warn!(function = %name, "{how}");
            }
        }
        let waiting: Vec<Waiting> = proc
            .waiting
            .lock()
            .map(|mut w| w.drain().map(|(_, v)| v).collect())
            .unwrap_or_default();
        let tail = proc.stderr_tail();
        if !was_ready && !tail.is_empty() {
            tracing::warn!(function = %name, "the serve process failed at start:\n{tail}");
        }
        let oom_killed = proc.memory.as_ref().is_some_and(|g| g.oom_kills() > 0);
        if failed_at_start && !load_timed_out && !oom_killed {
            // Said at once, so the function's status shows it before anyone calls it.
            let last = tail
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map_or_else(|| how.clone(), |l| l.trim().to_string());
            proc.report(hopper_core::api::ProcessStart {
                function: name.clone(),
                ready_ms: None,
                failed: Some(last),
            });
        }
        // With one input in flight, a death of the process's own doing is that input's: it
        // fails (the function's retries apply), so an input that kills its process every time
        // cannot cycle through the queue. With several in flight nobody can tell which one it
        // was: they all go back to the queue, as after a kill from outside.
        let blamed = !failed_at_start && own_doing && waiting.len() == 1;
        // Killed by the OOM killer for going over the function's `memory`: every input in
        // flight fails (retries apply) rather than going back to kill the next process too.
        let oom = proc
            .memory
            .as_ref()
            .filter(|g| g.oom_kills() > 0)
            .map(|g| crate::cgroup::out_of_memory("the serve process", g));
        if let Some(message) = oom.as_ref().filter(|_| !was_ready && !load_timed_out) {
            proc.report(hopper_core::api::ProcessStart {
                function: name.clone(),
                ready_ms: None,
                failed: Some(message.clone()),
            });
        }
        for w in waiting {
            let answer = if let Some(message) = &oom {
                logs.line(w.lease, LogStream::System, message.clone());
                Answer::OutOfMemory(message.clone())
            } else if blamed {
                let message = if tail.is_empty() {
                    format!("{how} while running this input")
                } else {
                    format!("{how} while running this input; its last output:\n{tail}")
                };
                logs.line(w.lease, LogStream::System, message.clone());
                Answer::Died(message)
            } else if !failed_at_start {
                logs.line(
                    w.lease,
                    LogStream::System,
                    format!("{how}; the input goes back to the queue"),
                );
                Answer::Crashed(format!("{how} while the input was in flight"))
            } else {
                let message = if tail.is_empty() {
                    format!("{how} before it was ready")
                } else {
                    format!("{how} before it was ready; its last output:\n{tail}")
                };
                logs.line(w.lease, LogStream::System, message.clone());
                Answer::StartupFailed(message)
            };
            let _ = w.answer.send(answer);
        }
    });
    Ok(proc)
}

/// Reads the process's stderr, a line at a time, until it closes. When the process says it
/// is ready (on stdout), everything it wrote to stderr before that is already in the pipe:
/// those lines are read at once, without waiting, as start-up output (the worker's log), and
/// only then is the process marked ready, so they never land in the logs of the inputs sent
/// to it meanwhile.
async fn read_stderr(stderr: tokio::process::ChildStderr, proc: Arc<ServeProcess>, logs: LogSink) {
    use futures_util::FutureExt;
    let mut reader = tokio::io::BufReader::new(stderr);
    let mut buf = Vec::new();
    // Whether the line being read began in an earlier piece (only its first piece is logged).
    let mut continued = false;
    let take = |buf: &mut Vec<u8>, continued: &mut bool| {
        if !*continued {
            let line = String::from_utf8_lossy(buf)
                .trim_end_matches(['\n', '\r'])
                .to_string();
            proc.unattributed(&logs, LogStream::Stderr, line);
        }
        *continued = !buf.ends_with(b"\n");
        buf.clear();
    };
    loop {
        let said = proc.ready_said.load(Ordering::SeqCst);
        if said && !proc.is_ready() {
            while let Some(read) =
                process::read_piece(&mut reader, &mut buf, process::MAX_PIECE).now_or_never()
            {
                match read {
                    Ok(n) if n > 0 && buf.ends_with(b"\n") => take(&mut buf, &mut continued),
                    _ => break,
                }
            }
            proc.ready.store(true, Ordering::Release);
        }
        let next = tokio::select! {
            biased;
            read = process::read_piece(&mut reader, &mut buf, process::MAX_PIECE) => Some(read),
            () = proc.ready_seen.notified(), if !said => None,
        };
        match next {
            Some(Ok(0)) | Some(Err(_)) => break,
            Some(Ok(_)) => {
                take(&mut buf, &mut continued);
                logs.room().await;
            }
            // Ready was said: the top of the loop takes what stderr holds, then marks it.
            None => {}
        }
    }
    if !buf.is_empty() {
        take(&mut buf, &mut continued);
    }
    proc.stderr_closed.store(true, Ordering::SeqCst);
    if proc.ready_said.load(Ordering::SeqCst) {
        proc.ready.store(true, Ordering::Release);
    }
}

/// One stdout line: an answer, a log line for one input, the ready signal, or other output.
/// Log lines and other output are paced (see [`process::Pace`]); answers are not.
fn read_answer(proc: &ServeProcess, logs: &LogSink, line: String) -> process::Pace {
    let parsed: Option<serde_json::Map<String, Value>> = serde_json::from_str(&line).ok();
    let Some(obj) = parsed else {
        // An answer that names an input in flight but is not JSON (a NaN, say) fails that
        // input now, rather than leaving it to time out.
        if let Some(id) = named_id(proc, &line) {
            let start: String = line.chars().take(200).collect();
            let error = serde_json::from_str::<Value>(&line)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            proc.answer(
                &id,
                Answer::Error(
                    InputError::new("bad_output", format!(
                            "the serve process answered with a line that is not JSON ({error}): {start}"
                        )),
                    true,
                ),
            );
            proc.ready.store(true, Ordering::Release);
            return process::Pace::Go;
        }
        proc.unattributed(logs, LogStream::Stdout, line);
        return process::Pace::WaitForRoom;
    };
    if obj.get("ready").and_then(Value::as_bool) == Some(true) && !obj.contains_key("id") {
        proc.said_ready();
        return process::Pace::Go;
    }
    if obj.get("ready").and_then(Value::as_bool) == Some(false) && !obj.contains_key("id") {
        proc.loading.store(true, Ordering::Release);
        return process::Pace::Go;
    }
    let Some(id) = obj.get("id").and_then(Value::as_str) else {
        proc.unattributed(logs, LogStream::Stdout, line);
        return process::Pace::WaitForRoom;
    };
    // An output too deep, or with an integer parsing just rounded to a float, is refused
    // rather than kept changed.
    if obj.contains_key("output") {
        if let Err(why) =
            hopper_core::json::check_text(line.as_bytes(), hopper_core::json::MAX_DEPTH + 1)
        {
            proc.ready.store(true, Ordering::Release);
            proc.answer(
                id,
                Answer::Error(
                    InputError::new("bad_output", format!("the output is refused: {why}")),
                    false,
                ),
            );
            return process::Pace::Go;
        }
    }
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
            let stream = match obj.get("stream").and_then(Value::as_str) {
                Some("stderr") => LogStream::Stderr,
                _ => LogStream::Stdout,
            };
            logs.line(lease, stream, text);
        }
        return process::Pace::WaitForRoom;
    }
    proc.ready.store(true, Ordering::Release);
    if let Some(error) = obj.get("error") {
        let retry = error.get("retry").and_then(Value::as_bool).unwrap_or(true);
        let error = match error {
            Value::String(message) => InputError::new("error", message.clone()),
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
                module: other
                    .get("module")
                    .and_then(Value::as_str)
                    .map(String::from),
                traceback: other
                    .get("traceback")
                    .and_then(Value::as_str)
                    .map(String::from),
            }
            .bounded(),
        };
        proc.answer(id, Answer::Error(error, retry));
        return process::Pace::Go;
    }
    let output = obj.get("output").cloned().unwrap_or(Value::Null);
    proc.answer(id, Answer::Output(output));
    process::Pace::Go
}

/// The id of an input in flight that `line` names as `"id": "…"`, if any.
fn named_id(proc: &ServeProcess, line: &str) -> Option<String> {
    if !line.contains("\"id\"") {
        return None;
    }
    let waiting = proc.waiting.lock().ok()?;
    waiting
        .keys()
        .find(|id| line.contains(&format!("\"{id}\"")))
        .cloned()
}

#[cfg(test)]
mod redaction_tests {
    /// What a worker tells its processes, logged with `{:?}`, shows no token.
    #[test]
    fn debug_of_a_worker_env_shows_no_token() {
        let env = super::WorkerEnv {
            server: "http://127.0.0.1:1".into(),
            call_token: Some("hc-c4ll-t0ken".to_string().into()),
            ..Default::default()
        };
        let shown = format!("{env:?}");
        assert!(!shown.contains("c4ll-t0ken"), "{shown}");
    }
}
