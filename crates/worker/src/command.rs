//! Running one input as a command: one process per input, in its own process group.
//!
//! The input JSON goes to stdin. The output is the JSON written to the file named by
//! `HOPPER_OUTPUT`, or else the whole of stdout (empty means `null`). Every line of stdout and
//! stderr becomes a log line. A non-zero exit, a timeout or output that is not JSON is a failed
//! attempt whose error says which.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hopper_core::api::{InputError, Lease, LogStream, Outcome};
use hopper_core::FunctionSpec;
use hopper_sdk::runtime::{Job, LogSink};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWriteExt};

use crate::process;
use crate::serve::WorkerEnv;

/// Stdout kept for parsing as the output; a command printing more fails with `output_too_large`.
const MAX_STDOUT: usize = 64 * 1024 * 1024;
/// Stderr lines quoted in the error of a failed attempt.
const STDERR_TAIL: usize = 5;

/// Runs the command for one input. Returns `None` if the job's `cancel` fired (the lease was
/// lost, the call cancelled, or the worker is stopping): the process group is killed and
/// nothing is reported.
pub async fn run(
    spec: &FunctionSpec,
    ctx: &Job,
    kill_grace: Duration,
    env: &WorkerEnv,
    logs: &LogSink,
) -> Option<Outcome> {
    let cancel = &ctx.cancel;
    let log = |stream: LogStream, line: String| logs.line(ctx.lease, stream, line);
    let output_path = std::env::temp_dir().join(format!(
        "hopper-output-{}-{}-{}.json",
        std::process::id(),
        ctx.lease.input_id,
        ctx.lease.attempt
    ));
    let _cleanup = RemoveOnDrop(output_path.clone());
    let Some((program, args)) = spec.command.split_first() else {
        return Some(failed("spawn_failed", "the function has no command".into()));
    };
    let workdir = Path::new(&spec.workdir);
    let program_path = resolve_program(program, workdir);
    let mut cmd = crate::guard::command(&program_path);
    cmd.args(args)
        .current_dir(workdir)
        .envs(&spec.env)
        .env("HOPPER_OUTPUT", &output_path)
        .env("HOPPER_CALL_ID", ctx.call_id.as_str())
        .env("HOPPER_INPUT_INDEX", ctx.index.to_string())
        .env("HOPPER_ATTEMPT", ctx.lease.attempt.to_string())
        .env("HOPPER_FUNCTION", spec.qualified_name())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    env.apply(&mut cmd);
    // Where the command writes the files of large outputs: its attempt's own folder, made
    // (and removed) by the executor.
    if let Some(blobs) = &env.blobs {
        let attempt = format!("{}-{}", ctx.lease.input_id, ctx.lease.attempt);
        cmd.env("HOPPER_BLOB_DIR", blobs.attempt_out(&attempt));
    }
    process::isolate(&mut cmd, process::SIGKILL);
    // The command and all it starts (the guard first) in a cgroup with the function's memory.
    let memory = match crate::cgroup::for_function(spec) {
        Ok(group) => group,
        Err(why) => {
            log(LogStream::System, why);
            None
        }
    };
    if let Some(group) = &memory {
        if let Err(why) = group.join(cmd.as_std_mut()) {
            log(LogStream::System, why);
        }
    }
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            let message = format!("cannot start {program:?} in {}: {e}", workdir.display());
            log(LogStream::System, message.clone());
            return Some(failed("spawn_failed", message));
        }
    };
    let pid = child.id();
    if let Some(mut stdin) = child.stdin.take() {
        // An input stored as a JSON blob (too large to send inline) reaches the command as
        // the JSON it holds, read from the worker's copy, as any other input would.
        let json_file = ctx
            .input
            .as_object()
            .filter(|o| o.contains_key(hopper_core::blob::KEY))
            .filter(|o| o.get("type").and_then(Value::as_str) == Some("json"))
            .and_then(|o| o.get("path"))
            .and_then(Value::as_str)
            .map(PathBuf::from);
        let bytes = match &json_file {
            Some(_) => Vec::new(),
            None => ctx.input.to_string().into_bytes(),
        };
        // A command that never reads its input closes the pipe early; that is not an error.
        tokio::spawn(async move {
            match json_file {
                Some(path) => {
                    if let Ok(mut file) = tokio::fs::File::open(&path).await {
                        let _ = tokio::io::copy(&mut file, &mut stdin).await;
                    }
                }
                None => {
                    let _ = stdin.write_all(&bytes).await;
                }
            }
            let _ = stdin.shutdown().await;
        });
    }
    let stdout_seen = Arc::new(Mutex::new(Captured::default()));
    let stderr_seen = Arc::new(Mutex::new(Captured::default()));
    let stdout = child.stdout.take().map(|out| {
        tokio::spawn(read_lines(
            out,
            LogStream::Stdout,
            ctx.lease,
            logs.clone(),
            stdout_seen.clone(),
        ))
    });
    let stderr = child.stderr.take().map(|err| {
        tokio::spawn(read_lines(
            err,
            LogStream::Stderr,
            ctx.lease,
            logs.clone(),
            stderr_seen.clone(),
        ))
    });

    let timeout = Duration::from_millis(spec.timeout_ms);
    enum End {
        Exited(std::io::Result<ExitStatus>),
        TimedOut,
        Cancelled,
    }
    let end = tokio::select! {
        status = child.wait() => End::Exited(status),
        _ = tokio::time::sleep(timeout) => End::TimedOut,
        _ = cancel.cancelled() => End::Cancelled,
    };
    let signal_group = |signal| {
        if let Some(pid) = pid {
            let _ = process::signal_group(pid, signal);
        }
    };
    let end_group = || {
        if let Some(pid) = pid {
            process::end_group(pid);
        }
    };
    let status = match end {
        End::Exited(status) => Some(status),
        End::Cancelled => {
            end_group();
            let _ = child.wait().await;
            None
        }
        End::TimedOut => {
            log(
                LogStream::System,
                format!(
                    "timed out after {}; sending SIGTERM to the process group",
                    hopper_core::duration::format(timeout)
                ),
            );
            signal_group(process::SIGTERM);
            if tokio::time::timeout(kill_grace, child.wait())
                .await
                .is_err()
            {
                log(
                    LogStream::System,
                    format!(
                        "still running {} after SIGTERM; sending SIGKILL",
                        hopper_core::duration::format(kill_grace)
                    ),
                );
                end_group();
                let _ = child.wait().await;
            }
            None
        }
    };
    // Whatever the command left running in its group ends with the attempt.
    signal_group(process::SIGKILL);
    let out_open = join_reader(stdout).await;
    let err_open = join_reader(stderr).await;
    if out_open || err_open {
        log(
            LogStream::System,
            "a process the command started outside its process group still holds its output open; what the command wrote before it exited is used".into(),
        );
    }
    let stdout = take(&stdout_seen);
    let stderr = take(&stderr_seen);
    let Some(status) = status else {
        if cancel.is_cancelled() {
            return None;
        }
        return Some(failed(
            "timeout",
            format!(
                "timed out after {} and was killed",
                hopper_core::duration::format(timeout)
            ),
        ));
    };
    let status = match status {
        Ok(status) => status,
        Err(e) => {
            return Some(failed(
                "spawn_failed",
                format!("cannot wait for the command: {e}"),
            ))
        }
    };
    if !status.success() {
        if let Some(group) = memory.as_ref().filter(|g| g.oom_kills() > 0) {
            let message = crate::cgroup::out_of_memory("the command", group);
            log(LogStream::System, message.clone());
            return Some(failed("out_of_memory", message));
        }
        let how = match (
            status.code(),
            std::os::unix::process::ExitStatusExt::signal(&status),
        ) {
            (Some(code), _) => format!("exited with status {code}"),
            (None, Some(sig)) => format!("was killed by signal {sig}"),
            (None, None) => "failed".to_string(),
        };
        // The guard could not start the program (not found, not executable).
        if status.code() == Some(crate::guard::CANNOT_START) {
            if let Some(why) = stderr
                .tail
                .iter()
                .find_map(|l| l.strip_prefix(crate::guard::CANNOT_START_PREFIX))
            {
                return Some(failed("spawn_failed", format!("cannot start {why}")));
            }
        }
        let tail = stderr.tail.join("\n");
        let message = if tail.is_empty() {
            format!("the command {how}")
        } else {
            format!("the command {how}: {tail}")
        };
        return Some(failed("exit_code", message));
    }
    Some(parse_output(&output_path, stdout).await)
}

async fn parse_output(output_path: &Path, stdout: Captured) -> Outcome {
    let (text, source) = match tokio::fs::read(output_path).await {
        Ok(bytes) if !bytes.iter().all(|b| b.is_ascii_whitespace()) => {
            (bytes, "the file named by HOPPER_OUTPUT")
        }
        _ => {
            if stdout.overflow {
                return failed(
                    "output_too_large",
                    format!("stdout is over {MAX_STDOUT} bytes; write large output elsewhere"),
                );
            }
            (stdout.bytes, "stdout")
        }
    };
    if text.iter().all(|b| b.is_ascii_whitespace()) {
        return Outcome::Succeeded {
            output: Value::Null,
        };
    }
    match serde_json::from_slice::<Value>(&text) {
        // Too deep to come back out, or an integer that would be rounded: refused, not changed.
        Ok(output) => match hopper_core::json::check_text(&text, hopper_core::json::MAX_DEPTH) {
            Ok(()) => Outcome::Succeeded { output },
            Err(why) => failed(
                "bad_output",
                format!("the output in {source} is refused: {why}"),
            ),
        },
        Err(e) => {
            let start: String = String::from_utf8_lossy(&text).chars().take(120).collect();
            failed(
                "bad_output",
                format!("the output in {source} is not JSON ({e}); it starts with {start:?}"),
            )
        }
    }
}

/// A program with a `/` in it is relative to the working directory; a bare name is looked up
/// on `PATH`.
pub fn resolve_program(program: &str, workdir: &Path) -> PathBuf {
    let path = Path::new(program);
    if program.contains('/') && path.is_relative() {
        workdir.join(path)
    } else {
        path.to_path_buf()
    }
}

#[derive(Default)]
struct Captured {
    bytes: Vec<u8>,
    overflow: bool,
    tail: Vec<String>,
}

/// Reads `stream` line by line into the attempt's log and into `seen` (stdout: its bytes,
/// for the output; stderr: its last lines, for the error), as it goes, so what was read is
/// there even if the stream never ends.
async fn read_lines(
    stream: impl AsyncRead + Unpin,
    which: LogStream,
    lease: Lease,
    logs: LogSink,
    seen: Arc<Mutex<Captured>>,
) {
    let pace = logs.clone();
    process::for_each_line(
        stream,
        process::MAX_PIECE,
        &pace,
        |line, bytes, continued| {
            if let Ok(mut seen) = seen.lock() {
                if which == LogStream::Stdout {
                    if seen.bytes.len() + bytes.len() <= MAX_STDOUT {
                        seen.bytes.extend_from_slice(bytes);
                    } else {
                        seen.overflow = true;
                    }
                } else if !continued {
                    if seen.tail.len() == STDERR_TAIL {
                        seen.tail.remove(0);
                    }
                    seen.tail.push(line.clone());
                }
            }
            // A line's later pieces are past what a log line keeps: its first piece is logged,
            // cut with a marker.
            if continued {
                return process::Pace::Go;
            }
            logs.line(lease, which, line);
            process::Pace::WaitForRoom
        },
    )
    .await;
}

fn take(seen: &Mutex<Captured>) -> Captured {
    seen.lock()
        .map(|mut s| std::mem::take(&mut *s))
        .unwrap_or_default()
}

/// Waits for a reader to reach the end of its stream; returns whether the stream is still
/// open (a process that left the group holds it) after a short wait, in which case the
/// reader is stopped.
async fn join_reader(handle: Option<tokio::task::JoinHandle<()>>) -> bool {
    let Some(mut handle) = handle else {
        return false;
    };
    match tokio::time::timeout(Duration::from_secs(1), &mut handle).await {
        Ok(_) => false,
        Err(_) => {
            handle.abort();
            true
        }
    }
}

fn failed(code: &str, message: String) -> Outcome {
    Outcome::Failed {
        retry: true,
        error: InputError::new(code.to_string(), message),
    }
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
