//! The guard: a small process between a worker and each command it runs (one process per
//! input; serve processes are not guarded), so that nothing the command starts outlives the
//! worker, even a worker killed with SIGKILL or by the OOM killer (Linux).
//!
//! A parent-death signal reaches direct children only, and a command's own children (a
//! pipeline, `nohup`, a daemonising tool) would run on under init. The guard is the command's
//! parent and a child subreaper (whatever the command starts and leaves becomes the guard's
//! child), and it asks for SIGUSR1 when the worker dies: it then kills every process it
//! adopted or started, whatever their session, and its process group, the command's; a worker
//! ending a command asks the same with SIGUSR1. Otherwise it stays out of the way: it ignores
//! the SIGTERM a timeout sends the group (the command gets it), reaps what it adopts, and when
//! the command ends it kills what the command left and ends as the command did (its exit code,
//! or the same signal), so the worker sees what it would have seen without it.
//!
//! A worker enables the guard with [`enable`] (the `hopper` binary, which runs [`main`] when
//! started as `hopper __guard PARENT_PID -- PROGRAM ARGS…`); without it, commands run as the
//! worker's direct children.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// The first argument that runs the guard.
pub const ARG: &str = "__guard";

/// Exit code of a guard that could not start its command (as a shell's for "not found").
pub const CANNOT_START: i32 = 127;

/// What a guard that could not start its command writes first on its stderr.
pub const CANNOT_START_PREFIX: &str = "hopper: cannot start ";

static PROGRAM: OnceLock<PathBuf> = OnceLock::new();

/// Runs every command and serve process this process starts under a guard: `program` is the
/// `hopper` binary (its [`ARG`] runs [`main`]).
pub fn enable(program: PathBuf) {
    let _ = PROGRAM.set(program);
}

/// A command that runs `program` under the guard when it is enabled (and the binary is still
/// there: an upgrade may have removed it), else `program` itself; arguments added to it go to
/// `program`.
pub fn command(program: &Path) -> tokio::process::Command {
    match PROGRAM.get() {
        Some(guard) if cfg!(target_os = "linux") && guard.is_file() => {
            let mut cmd = tokio::process::Command::new(guard);
            cmd.arg(ARG)
                .arg(std::process::id().to_string())
                .arg("--")
                .arg(program);
            cmd
        }
        _ => tokio::process::Command::new(program),
    }
}

/// Set by SIGUSR1: the worker died (the parent-death signal) or asks for the end of
/// everything the command started ([`crate::process::end_group`]).
static END: AtomicBool = AtomicBool::new(false);

extern "C" fn end_asked(_: libc::c_int) {
    END.store(true, Ordering::SeqCst);
}

/// Whether commands run under the guard ([`enable`]).
pub fn enabled() -> bool {
    PROGRAM.get().is_some_and(|guard| guard.is_file()) && cfg!(target_os = "linux")
}

/// SIGCHLD's handler: nothing to do, but a handled signal ends `sigsuspend`.
extern "C" fn child_changed(_: libc::c_int) {}

/// Installs `handler` for `signal`.
#[allow(unsafe_code)]
fn handle(signal: libc::c_int, handler: extern "C" fn(libc::c_int)) {
    // SAFETY: a zeroed `sigaction` with a handler that only touches an atomic.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler as usize;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(signal, &action, std::ptr::null_mut());
    }
}

/// The guard's process: `args` are what follows [`ARG`]: the worker's pid, `--`, then the
/// program and its arguments. Never returns.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub fn main(args: Vec<OsString>) -> ! {
    let parent: Option<i32> = args
        .first()
        .and_then(|a| a.to_str())
        .and_then(|a| a.parse().ok());
    let (Some(parent), Some(program)) = (parent, args.get(2)) else {
        eprintln!("hopper {ARG}: expected PARENT_PID -- PROGRAM [ARGS…]");
        std::process::exit(2);
    };
    let rest = &args[3..];
    handle(libc::SIGUSR1, end_asked);
    handle(libc::SIGCHLD, child_changed);
    // SAFETY: `sigprocmask`, `prctl` and `signal` take plain values; nothing else runs in
    // this process yet.
    let mut waiting: libc::sigset_t = unsafe { std::mem::zeroed() };
    unsafe {
        // Held until `sigsuspend`, so that neither is missed between a check and the wait.
        let mut held: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut held);
        libc::sigaddset(&mut held, libc::SIGUSR1);
        libc::sigaddset(&mut held, libc::SIGCHLD);
        libc::sigprocmask(libc::SIG_BLOCK, &held, &mut waiting);
        libc::sigdelset(&mut waiting, libc::SIGUSR1);
        libc::sigdelset(&mut waiting, libc::SIGCHLD);
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0);
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGUSR1 as libc::c_ulong,
            0,
            0,
            0,
        );
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
        if libc::getppid() != parent {
            end_all();
        }
    }
    let mut command = std::process::Command::new(program);
    command.args(rest);
    // SAFETY: between fork and exec the closure calls only `signal` and `prctl`, which are
    // async-signal-safe.
    unsafe {
        use std::os::unix::process::CommandExt;
        command.pre_exec(|| {
            libc::signal(libc::SIGTERM, libc::SIG_DFL);
            libc::signal(libc::SIGUSR1, libc::SIG_DFL);
            // The command dies with the guard, even one killed with SIGKILL.
            libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            );
            Ok(())
        });
    }
    let child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            let cwd = std::env::current_dir().unwrap_or_default();
            // A bare name is looked up on PATH, a path with a `/` in the working folder.
            let looked = if program.as_encoded_bytes().contains(&b'/') {
                format!("in {}", cwd.display())
            } else {
                "on PATH".to_string()
            };
            eprintln!("{CANNOT_START_PREFIX}{program:?} ({looked}): {e}");
            std::process::exit(CANNOT_START);
        }
    };
    let pid = child.id() as libc::pid_t;
    // The pipes are the command's: the worker sees their end when the command's is closed.
    // SAFETY: `open` and `dup2` on the standard descriptors, with a valid path.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            for fd in 0..3 {
                libc::dup2(null, fd);
            }
            if null > 2 {
                libc::close(null);
            }
        }
    }
    let status = 'waiting: loop {
        if END.load(Ordering::SeqCst) {
            end_all();
        }
        loop {
            let mut status = 0;
            // SAFETY: `waitpid` writes only to `status`.
            let reaped = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if reaped == pid {
                break 'waiting status;
            }
            if reaped <= 0 {
                break;
            }
        }
        // SAFETY: waits with SIGUSR1 and SIGCHLD let through, until one is handled.
        unsafe {
            libc::sigsuspend(&waiting);
        }
    };
    // What the command left: its group (the worker ends it too) and what escaped it.
    kill_tree();
    // SAFETY: plain integer calls; the guard ends here either way.
    unsafe {
        if libc::WIFSIGNALED(status) {
            let signal = libc::WTERMSIG(status);
            libc::signal(signal, libc::SIG_DFL);
            libc::kill(libc::getpid(), signal);
            std::process::exit(128 + signal);
        }
        std::process::exit(libc::WEXITSTATUS(status));
    }
}

#[cfg(not(target_os = "linux"))]
pub fn main(_args: Vec<OsString>) -> ! {
    eprintln!("hopper {ARG}: only on Linux");
    std::process::exit(2);
}

/// Kills every process the guard started or adopted, then its own group (the command's, and
/// the guard with it).
#[allow(unsafe_code)]
fn end_all() -> ! {
    kill_tree();
    // SAFETY: plain integer calls.
    unsafe {
        libc::killpg(libc::getpgrp(), libc::SIGKILL);
        libc::_exit(137);
    }
}

/// SIGKILL to every process descending from the guard (by parent links, whatever their group
/// or session: `setsid` children of a command still running too), round after round until
/// none is left (a process may start another while its parent is killed), reaping what
/// becomes the guard's.
#[allow(unsafe_code)]
fn kill_tree() {
    for _ in 0..100 {
        let found = descendants();
        if found.is_empty() {
            return;
        }
        for pid in found {
            // SAFETY: plain integer calls.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        loop {
            let mut status = 0;
            // SAFETY: `waitpid` writes only to `status`.
            if unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) } <= 0 {
                break;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// The live processes descending from this one, from `/proc/*/stat` (zombies left out: they
/// have ended).
fn descendants() -> Vec<libc::pid_t> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut parents: Vec<(libc::pid_t, libc::pid_t)> = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // After the command's name in parentheses: state, ppid, …
        let mut fields = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace())
            .into_iter()
            .flatten();
        let (Some(state), Some(ppid)) = (fields.next(), fields.next()) else {
            continue;
        };
        if state == "Z" {
            continue;
        }
        if let Ok(ppid) = ppid.parse() {
            parents.push((pid, ppid));
        }
    }
    let mut found = vec![std::process::id() as libc::pid_t];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parents
                .iter()
                .filter(|(_, ppid)| *ppid == parent)
                .map(|(pid, _)| *pid),
        );
        i += 1;
    }
    found.remove(0);
    found
}
