//! Process groups and parent-death signals: every process Hopper starts runs in its own group,
//! so a timeout or a cancel kills the command and everything it started, and it dies with the
//! process that started it instead of running on as an orphan.

use std::io;

use hopper_sdk::runtime::LogSink;

/// Makes `command` start in a new process group, and receive `death_signal` when the thread
/// that spawned it exits (Linux `PR_SET_PDEATHSIG`; elsewhere only the group is set).
pub fn isolate(command: &mut tokio::process::Command, death_signal: libc::c_int) {
    isolate_std(command.as_std_mut(), death_signal);
}

/// [`isolate`] for a command run synchronously (from a blocking thread, which must wait for
/// it: the signal comes when that thread exits).
pub fn isolate_std(command: &mut std::process::Command, death_signal: libc::c_int) {
    use std::os::unix::process::CommandExt;
    command.process_group(0);
    set_death_signal(command, death_signal);
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn set_death_signal(command: &mut std::process::Command, signal: libc::c_int) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id();
    // SAFETY: the closure runs in the child between fork and exec and calls only `prctl` and
    // `getppid`, which are async-signal-safe; it reads a copied integer, nothing else.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong, 0, 0, 0) == -1 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl: then the signal never comes,
            // so do not start at all.
            if libc::getppid() as u32 != parent {
                return Err(io::Error::other("the parent process exited"));
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn set_death_signal(_command: &mut std::process::Command, _signal: libc::c_int) {}

/// Sends `signal` to every process in the group led by `pid`. A group that is already gone
/// is not an error.
#[allow(unsafe_code)]
pub fn signal_group(pid: u32, signal: libc::c_int) -> io::Result<()> {
    let Ok(pgid) = libc::pid_t::try_from(pid) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "pid out of range",
        ));
    };
    // SAFETY: `killpg` takes plain integers and has no memory effects.
    let rc = unsafe { libc::killpg(pgid, signal) };
    if rc == -1 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ESRCH) {
            return Ok(());
        }
        return Err(err);
    }
    Ok(())
}

/// Sends `signal` to one process.
#[allow(unsafe_code)]
pub fn signal_process(pid: u32, signal: libc::c_int) -> io::Result<()> {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "pid out of range",
        ));
    };
    // SAFETY: `kill` takes plain integers and has no memory effects.
    if unsafe { libc::kill(pid, signal) } == -1 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ESRCH) {
            return Ok(());
        }
        return Err(err);
    }
    Ok(())
}

pub use libc::{SIGKILL, SIGTERM};

/// Whether a reader waits for room in the worker's log queue after a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// The line was logged: wait while the queue is full.
    WaitForRoom,
    /// The line was an answer: go on at once, so results never wait behind logs.
    Go,
}

/// Longest piece of a line a reader holds: a longer line (a function writing without
/// newlines) comes in pieces of this size, so a worker's memory does not grow with it.
pub const MAX_PIECE: usize = 64 * 1024;

/// Appends the next line of `reader` to `buf`, with its newline, but at most `max` bytes of
/// it: a longer line comes in pieces. Returns the bytes appended (0 at the end). Cancel-safe
/// as `read_until` is: what was read is in `buf`.
pub async fn read_piece<R>(reader: &mut R, buf: &mut Vec<u8>, max: usize) -> io::Result<usize>
where
    R: tokio::io::AsyncBufRead + Unpin,
{
    use tokio::io::AsyncBufReadExt;
    let start = buf.len();
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(buf.len() - start);
        }
        let room = max.saturating_sub(buf.len() - start);
        let window = &available[..available.len().min(room)];
        let (taken, ended) = match window.iter().position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (window.len(), false),
        };
        buf.extend_from_slice(&window[..taken]);
        reader.consume(taken);
        if ended || buf.len() - start >= max {
            return Ok(buf.len() - start);
        }
    }
}

/// Calls `each` with every line of `stream` (without its line ending), bytes that are not
/// UTF-8 as U+FFFD, until the stream ends, waiting after a line while `logs` holds too much
/// if `each` says so. A line over `max` bytes comes in pieces: `each` gets each piece, with
/// `continued` set on all but the first.
pub async fn for_each_line(
    stream: impl tokio::io::AsyncRead + Unpin,
    max: usize,
    logs: &LogSink,
    mut each: impl FnMut(String, &[u8], bool) -> Pace,
) {
    let mut reader = tokio::io::BufReader::new(stream);
    let mut buf = Vec::new();
    let mut continued = false;
    loop {
        buf.clear();
        match read_piece(&mut reader, &mut buf, max).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let line = String::from_utf8_lossy(&buf)
            .trim_end_matches(['\n', '\r'])
            .to_string();
        let pace = each(line, &buf, continued);
        continued = !buf.ends_with(b"\n");
        // A function that prints faster than its lines are sent waits here (its pipe fills).
        if pace == Pace::WaitForRoom {
            logs.room().await;
        }
    }
}
