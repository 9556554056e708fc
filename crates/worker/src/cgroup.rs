//! Memory limits for a function's processes, and telling an OOM kill from any other kill
//! (Linux memory cgroups, v2 or v1).
//!
//! A function with `memory` set runs each of its processes (a command with everything it
//! starts, or a `serve` process) in a cgroup of its own under the worker's, limited to that
//! much memory (and no swap where the machine has a swap limit). A process that goes over it
//! is killed by the kernel's OOM killer, and the cgroup counts the kill: the worker reads the
//! count when the process ends and fails its input as `out_of_memory` (the function's retry
//! policy applies) instead of taking the SIGKILL for an operator's and handing the input back.
//!
//! Where the worker can create no memory cgroup (no write access to `/sys/fs/cgroup`, a
//! cgroup v2 tree whose memory controller is not delegated, not Linux), processes run without
//! the limit and the worker says so once.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Where cgroups are mounted.
const ROOT: &str = "/sys/fs/cgroup";

/// Prefix of the groups a worker creates: `hopper-<worker pid>-<n>`.
const PREFIX: &str = "hopper-";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

/// A memory cgroup holding one process of a function (and whatever it starts); removed when
/// dropped.
#[derive(Debug)]
pub struct MemoryGroup {
    path: PathBuf,
    version: Version,
    limit: u64,
}

/// Groups created by this worker so far (the next one's number).
static CREATED: AtomicU64 = AtomicU64::new(0);

impl MemoryGroup {
    /// A new group limited to `bytes` under this process's own memory cgroup, or why the
    /// machine gives none.
    pub fn create(bytes: u64) -> Result<MemoryGroup, String> {
        if !cfg!(target_os = "linux") {
            return Err("memory limits need Linux cgroups".into());
        }
        let (parent, version) = parent()?;
        clean_stale(&parent);
        let n = CREATED.fetch_add(1, Ordering::Relaxed);
        let path = parent.join(format!("{PREFIX}{}-{n}", std::process::id()));
        std::fs::create_dir(&path)
            .map_err(|e| format!("cannot create the cgroup {}: {e}", path.display()))?;
        let group = MemoryGroup {
            path,
            version,
            limit: bytes,
        };
        let limits: &[(&str, String)] = match version {
            Version::V2 => &[
                ("memory.max", bytes.to_string()),
                ("memory.swap.max", "0".into()),
            ],
            // The memory+swap limit may only be set once the memory limit is (and not below).
            Version::V1 => &[
                ("memory.limit_in_bytes", bytes.to_string()),
                ("memory.memsw.limit_in_bytes", bytes.to_string()),
            ],
        };
        for (i, (file, value)) in limits.iter().enumerate() {
            let target = group.path.join(file);
            // The swap limits exist only where the kernel accounts swap.
            if i > 0 && !target.exists() {
                continue;
            }
            std::fs::write(&target, value)
                .map_err(|e| format!("cannot set {}: {e}", target.display()))?;
        }
        Ok(group)
    }

    /// The limit, in bytes.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Makes `command`'s process join the group before it runs its program, so that all it
    /// starts is in the group too.
    #[allow(unsafe_code)]
    pub fn join(&self, command: &mut std::process::Command) -> Result<(), String> {
        use std::os::fd::IntoRawFd;
        use std::os::unix::process::CommandExt;
        let procs = self.path.join("cgroup.procs");
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&procs)
            .map_err(|e| format!("cannot open {}: {e}", procs.display()))?;
        // Owned by the hook, so closed when the `Command` is dropped; the child's copy closes
        // at exec (the file is opened close-on-exec).
        let fd = file.into_raw_fd();
        let holder = JoinFd(fd);
        // SAFETY: between fork and exec the closure calls only `write` on a descriptor
        // opened above, which is async-signal-safe; "0" names the writing process.
        unsafe {
            command.pre_exec(move || {
                if libc::write(holder.raw(), b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(())
    }

    /// How many processes of the group the kernel's OOM killer killed.
    pub fn oom_kills(&self) -> u64 {
        let file = match self.version {
            Version::V2 => "memory.events",
            Version::V1 => "memory.oom_control",
        };
        std::fs::read_to_string(self.path.join(file))
            .ok()
            .and_then(|text| {
                text.lines().find_map(|line| {
                    line.strip_prefix("oom_kill ")
                        .and_then(|n| n.trim().parse().ok())
                })
            })
            .unwrap_or(0)
    }
}

impl Drop for MemoryGroup {
    fn drop(&mut self) {
        // A group empties once its processes are reaped, which may be a moment after.
        if std::fs::remove_dir(&self.path).is_ok() {
            return;
        }
        let path = self.path.clone();
        std::thread::spawn(move || {
            for _ in 0..200 {
                std::thread::sleep(std::time::Duration::from_millis(10));
                if std::fs::remove_dir(&path).is_ok() || !path.exists() {
                    return;
                }
            }
        });
    }
}

/// A descriptor the pre-exec hook writes to; closed when the `Command` holding the hook is
/// dropped.
struct JoinFd(libc::c_int);

impl JoinFd {
    /// The descriptor (a method, so that a closure using it owns the whole `JoinFd`).
    fn raw(&self) -> libc::c_int {
        self.0
    }
}

impl Drop for JoinFd {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        // SAFETY: the descriptor was opened by `join` and is owned here alone.
        unsafe {
            libc::close(self.0);
        }
    }
}

/// The cgroup folder new groups go under, and its version: this process's own memory cgroup
/// (v2 where the unified tree has the memory controller for its children, else v1's memory
/// hierarchy), or the hierarchy's root when the own path is not visible (a cgroup namespace).
fn parent() -> Result<(PathBuf, Version), String> {
    let own = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
    let root = Path::new(ROOT);
    let mut why = Vec::new();
    if root.join("cgroup.controllers").exists() {
        let path = own
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .unwrap_or("/");
        let dir = root.join(path.trim_start_matches('/'));
        if delegated(&dir) {
            return Ok((dir, Version::V2));
        }
        why.push(format!(
            "the memory controller is not enabled for the children of {}",
            dir.display()
        ));
    }
    let v1 = root.join("memory");
    if v1.join("memory.limit_in_bytes").exists() {
        let path = own.lines().find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            controllers
                .split(',')
                .any(|c| c == "memory")
                .then_some(path)
        });
        let dir = path
            .map(|p| v1.join(p.trim_start_matches('/')))
            .filter(|d| d.is_dir())
            .unwrap_or(v1);
        if writable(&dir) {
            return Ok((dir, Version::V1));
        }
        why.push(format!("{} is not writable", dir.display()));
    }
    if why.is_empty() {
        why.push(format!("no memory cgroup is mounted under {ROOT}"));
    }
    Err(why.join("; "))
}

/// Whether children of the v2 group `dir` get the memory controller (enabling it if allowed).
fn delegated(dir: &Path) -> bool {
    let has = |dir: &Path| {
        std::fs::read_to_string(dir.join("cgroup.subtree_control"))
            .is_ok_and(|t| t.split_whitespace().any(|c| c == "memory"))
    };
    has(dir)
        || (std::fs::write(dir.join("cgroup.subtree_control"), "+memory").is_ok()
            && has(dir)
            && writable(dir))
}

#[allow(unsafe_code)]
fn writable(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `access` reads a valid NUL-terminated path.
    unsafe { libc::access(path.as_ptr(), libc::W_OK) == 0 }
}

/// Removes groups under `parent` left by workers that are gone (killed with SIGKILL before
/// they could remove them); a group still holding a process stays.
fn clean_stale(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(PREFIX)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir(entry.path());
        }
    }
}

/// A group for one process of `spec`, when the function sets `memory`; `Err` says why the
/// machine gives none (the process then runs without the limit).
pub fn for_function(spec: &hopper_core::FunctionSpec) -> Result<Option<MemoryGroup>, String> {
    let Some(bytes) = spec.resources.memory_bytes else {
        return Ok(None);
    };
    MemoryGroup::create(bytes).map(Some).map_err(|why| {
        format!(
            "the function's memory limit of {} is not applied: {why}",
            hopper_core::resources::format_bytes(bytes)
        )
    })
}

/// What an input's error says of a process the OOM killer killed in `group`.
pub fn out_of_memory(what: &str, group: &MemoryGroup) -> String {
    format!(
        "{what} went over the function's memory limit of {} and was killed by the kernel's OOM killer",
        hopper_core::resources::format_bytes(group.limit())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_oom_count_is_read_from_either_version_s_file() {
        let dir = std::env::temp_dir().join(format!("hopper-cgroup-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("memory.events"),
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 5\n",
        )
        .unwrap();
        let v2 = MemoryGroup {
            path: dir.clone(),
            version: Version::V2,
            limit: 1,
        };
        let v1 = MemoryGroup {
            path: dir.clone(),
            version: Version::V1,
            limit: 1,
        };
        assert_eq!(v2.oom_kills(), 2);
        assert_eq!(v1.oom_kills(), 5);
        std::mem::forget(v2);
        std::mem::forget(v1);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
