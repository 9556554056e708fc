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

/// Ends the process group led by `pid` (a command or serve process this worker started) and
/// everything it started: under the guard ([`crate::guard`]), by asking the guard (SIGUSR1),
/// which kills the whole tree, other sessions too, then its group; SIGKILL to the group half
/// a second later either way, for a guard that could not. Needs a Tokio runtime.
pub fn end_group(pid: u32) {
    if !crate::guard::enabled() {
        let _ = signal_group(pid, SIGKILL);
        return;
    }
    let _ = signal_process(pid, libc::SIGUSR1);
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let _ = signal_group(pid, SIGKILL);
    });
}

/// Children this process started and counts as its own; any other child is an orphan it
/// adopted as a child subreaper ([`adopt_orphans`]).
static OWN: std::sync::Mutex<std::collections::BTreeSet<u32>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// Counts `pid`, a child this process started, as its own: [`kill_orphans`] leaves it alone.
pub fn own(pid: u32) {
    if let Ok(mut own) = OWN.lock() {
        own.insert(pid);
    }
}

/// Makes this process the child subreaper of everything it starts (Linux): a process whose
/// parent dies (a command's grandchild when the worker that ran it is killed) becomes its
/// child, not init's, so [`kill_orphans`] can end it. Elsewhere it does nothing.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub fn adopt_orphans() -> io::Result<()> {
    // SAFETY: `prctl` with integer arguments has no memory effects.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
pub fn adopt_orphans() -> io::Result<()> {
    Ok(())
}

/// This process's children, from `/proc/self/task/*/children` (Linux).
pub(crate) fn children() -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for task in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
            found.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    found.sort_unstable();
    found.dedup();
    found
}

/// The process group of `pid`, from `/proc/PID/stat`.
fn group_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command's name in parentheses: state, ppid, pgrp, …
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(2)?.parse().ok()
}

/// Kills, every `every`, the adopted orphans ([`adopt_orphans`]): children this process did
/// not start ([`own`]) that are still there a round later (one just started may not be
/// counted yet), with their process group unless it is this process's or one of its own
/// children's; then reaps them. Runs until `stop`.
pub async fn kill_orphans(every: std::time::Duration, stop: tokio_util::sync::CancellationToken) {
    let mut seen: std::collections::BTreeSet<u32> = std::collections::BTreeSet::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
        let own: std::collections::BTreeSet<u32> = match OWN.lock() {
            Ok(own) => own.clone(),
            Err(_) => return,
        };
        let own_groups: std::collections::BTreeSet<u32> =
            own.iter().filter_map(|p| group_of(*p)).collect();
        let ours = group_of(std::process::id());
        let mut now = std::collections::BTreeSet::new();
        for pid in children().into_iter().filter(|p| !own.contains(p)) {
            if seen.contains(&pid) {
                if let Some(group) =
                    group_of(pid).filter(|g| Some(*g) != ours && !own_groups.contains(g))
                {
                    let _ = signal_group(group, SIGKILL);
                }
                let _ = signal_process(pid, SIGKILL);
                for _ in 0..100 {
                    if reap(pid) {
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                tracing::warn!(pid, "killed a process left behind by a worker that died");
            } else {
                now.insert(pid);
            }
        }
        seen = now;
    }
}

/// Collects `pid`'s exit status if it has ended (a zombie), without waiting: whether it is
/// gone (or was never this process's child).
#[allow(unsafe_code)]
fn reap(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return true;
    };
    let mut status = 0;
    // SAFETY: `waitpid` writes only to `status`, a local integer.
    unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) != 0 }
}

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
