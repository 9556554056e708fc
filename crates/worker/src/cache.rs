//! The machine's cache of code snapshots: each unpacked once per machine, whichever workers
//! run it, checked against its files' digests before a worker first uses it, and bounded by
//! removing the least recently used snapshots that no worker is running.
//!
//! Layout of the cache folder (default `~/.cache/hopper/snapshots`):
//! - `HEX/`: an unpacked snapshot, with `.hopper-snapshot.json` (its files' SHA-256s);
//! - `HEX.install.lock`: held while a worker checks, fetches and unpacks it, so two workers on
//!   one machine fetch it once;
//! - `HEX.lock`: held shared by every worker running the snapshot, exclusively by the one that
//!   removes it (which it does only while nobody runs it);
//! - `tmp-…/`: a snapshot being unpacked; renamed to `HEX/` when whole, so a crash half-way
//!   leaves nothing a worker would run.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use hopper_core::WorkerId;
use hopper_sdk::Client;
use serde::{Deserialize, Serialize};

use crate::snapshot::{self, FileDigest};

/// Default bound of the cache: 4 GiB of unpacked files.
pub const DEFAULT_MAX_BYTES: u64 = 4 * 1024 * 1024 * 1024;
const INDEX: &str = ".hopper-snapshot.json";

/// What `INDEX` records of an unpacked snapshot.
#[derive(Debug, Serialize, Deserialize)]
struct Index {
    hash: String,
    bytes: u64,
    files: Vec<FileDigest>,
}

/// A snapshot ready to run in, and the shared lock that keeps it from being removed.
struct Ready {
    path: PathBuf,
    _lock: std::fs::File,
}

/// Snapshots this process has ready; see the module's documentation.
pub struct SnapshotCache {
    dir: PathBuf,
    max_bytes: u64,
    fetch: OnceLock<(Client, WorkerId)>,
    ready: tokio::sync::Mutex<HashMap<String, Arc<Ready>>>,
}

impl SnapshotCache {
    pub fn new(dir: PathBuf, max_bytes: u64) -> Self {
        Self {
            dir,
            max_bytes,
            fetch: OnceLock::new(),
            ready: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// `$HOPPER_CACHE_DIR`, else `$XDG_CACHE_HOME/hopper/snapshots`, else
    /// `~/.cache/hopper/snapshots`, else a folder in the temporary directory.
    pub fn default_dir() -> PathBuf {
        if let Some(dir) = std::env::var_os("HOPPER_CACHE_DIR").filter(|d| !d.is_empty()) {
            return PathBuf::from(dir);
        }
        let base = std::env::var_os("XDG_CACHE_HOME")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(std::env::temp_dir);
        base.join("hopper").join("snapshots")
    }

    /// The folder the worker keeps blobs of its inputs and outputs in, beside the snapshots.
    pub fn blobs_dir(&self) -> PathBuf {
        self.dir.join("blobs")
    }

    /// The folder Python environments are built in, beside the snapshots.
    pub fn envs_dir(&self) -> PathBuf {
        self.dir.join("envs")
    }

    /// Where snapshots are fetched from: the worker's own client.
    pub fn set_source(&self, client: Client, worker: WorkerId) {
        let _ = self.fetch.set((client, worker));
    }

    /// The folder where snapshot `hash` is unpacked: from this process's memory, from the
    /// machine's cache once its files check out, or fetched and unpacked.
    pub async fn materialize(&self, hash: &str) -> Result<PathBuf, String> {
        if !snapshot::is_hash(hash) {
            return Err(format!("{hash:?} is not a snapshot hash"));
        }
        let mut ready = self.ready.lock().await;
        if let Some(r) = ready.get(hash) {
            return Ok(r.path.clone());
        }
        let dir = self.dir.clone();
        let name = hash.trim_start_matches("sha256:").to_string();
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create the snapshot cache {}: {e}", dir.display()))?;
        let path = dir.join(&name);
        // One worker per machine checks, fetches and unpacks at a time (a short lock) ...
        let install = blocking({
            let lock = dir.join(format!("{name}.install.lock"));
            move || lock_file(&lock, libc::LOCK_EX)
        })
        .await?;
        let valid = blocking({
            let (path, hash) = (path.clone(), hash.to_string());
            move || Ok(check(&path, &hash))
        })
        .await?;
        if let Err(why) = valid {
            if path.exists() {
                tracing::warn!(snapshot = %hash, "the cached snapshot is damaged ({why}); fetching it again");
            }
            let Some((client, worker)) = self.fetch.get() else {
                return Err("the worker has not registered yet".into());
            };
            let bytes = client
                .worker_snapshot(worker, hash)
                .await
                .map_err(|e| format!("cannot fetch code snapshot {hash}: {e}"))?;
            blocking({
                let (dir, path, hash) = (dir.clone(), path.clone(), hash.to_string());
                move || install_snapshot(&dir, &path, &hash, &bytes)
            })
            .await?;
            tracing::info!(snapshot = %hash, folder = %path.display(), "unpacked code snapshot");
        }
        // ... and every worker running it holds its use lock, shared, for as long as it runs:
        // taken before the install lock is let go, so it cannot be evicted in between.
        let lock = blocking({
            let lock = dir.join(format!("{name}.lock"));
            move || lock_file(&lock, libc::LOCK_SH)
        })
        .await?;
        drop(install);
        touch(&path.join(INDEX));
        ready.insert(
            hash.to_string(),
            Arc::new(Ready {
                path: path.clone(),
                _lock: lock,
            }),
        );
        drop(ready);
        let (dir, max) = (self.dir.clone(), self.max_bytes);
        let _ = tokio::task::spawn_blocking(move || evict(&dir, max)).await;
        Ok(path)
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("internal error: {e}"))?
}

/// Opens (creating) `path` and takes a `flock` on it (`how`: `LOCK_SH`, `LOCK_EX`, with
/// `LOCK_NB` not to wait).
pub fn lock_file(path: &Path, how: libc::c_int) -> Result<std::fs::File, String> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    flock(file.as_raw_fd(), how)?;
    Ok(file)
}

fn flock(fd: std::os::fd::RawFd, how: libc::c_int) -> Result<(), String> {
    #[allow(unsafe_code)]
    // SAFETY: flock takes an open descriptor and flags; it touches no memory of ours.
    let rc = unsafe { libc::flock(fd, how) };
    if rc == 0 {
        Ok(())
    } else {
        Err(format!(
            "cannot lock the snapshot cache: {}",
            std::io::Error::last_os_error()
        ))
    }
}

/// Whether the unpacked snapshot at `path` is whole: its index names `hash` and every file
/// hashes to what it recorded.
fn check(path: &Path, hash: &str) -> Result<(), String> {
    let text = std::fs::read_to_string(path.join(INDEX)).map_err(|e| e.to_string())?;
    let index: Index = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    if index.hash != hash {
        return Err(format!("its index names {}", index.hash));
    }
    for file in &index.files {
        let got = snapshot::file_sha256(&path.join(&file.path))
            .map_err(|e| format!("{}: {e}", file.path))?;
        if got != file.sha256 {
            return Err(format!("{} has changed", file.path));
        }
    }
    Ok(())
}

/// Unpacks `bytes` (checked against `hash`) into a temporary folder, then renames it to
/// `path`, replacing a damaged copy.
fn install_snapshot(dir: &Path, path: &Path, hash: &str, bytes: &[u8]) -> Result<(), String> {
    let got = snapshot::hash(bytes);
    if got != hash {
        return Err(format!(
            "the server sent a snapshot that hashes to {got}, not {hash}"
        ));
    }
    let tmp = tempfile::Builder::new()
        .prefix("tmp-")
        .tempdir_in(dir)
        .map_err(|e| format!("cannot unpack into {}: {e}", dir.display()))?;
    let files = snapshot::unpack(bytes, tmp.path())
        .map_err(|e| format!("cannot unpack snapshot {hash}: {e}"))?;
    let bytes_total = files
        .iter()
        .map(|f| {
            std::fs::metadata(tmp.path().join(&f.path))
                .map(|m| m.len())
                .unwrap_or(0)
        })
        .sum();
    let index = Index {
        hash: hash.to_string(),
        bytes: bytes_total,
        files,
    };
    // A version's files are read-only: a function that writes into its folder would change the
    // code later inputs run (root is not held back by modes; the check before each worker's
    // first input still catches it).
    read_only(tmp.path()).map_err(|e| format!("cannot protect {}: {e}", tmp.path().display()))?;
    let text = serde_json::to_string(&index).map_err(|e| e.to_string())?;
    std::fs::write(tmp.path().join(INDEX), text).map_err(|e| e.to_string())?;
    if path.exists() {
        // Workers may still run in the damaged copy: it is moved aside, and removed with the
        // leftovers of unpacks once it is old.
        let trash = dir.join(format!("tmp-old-{}", hopper_core::ids::random_hex()));
        std::fs::rename(path, &trash).map_err(|e| e.to_string())?;
    }
    let kept = tmp.keep();
    std::fs::rename(&kept, path).map_err(|e| {
        remove_tree(&kept);
        format!("cannot move the snapshot into {}: {e}", path.display())
    })
}

/// Makes every file under `dir` read-only (executables stay executable) and every folder
/// below it unwritable; `dir` itself stays writable, for its index.
fn read_only(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let path = entry.path();
        if kind.is_dir() {
            read_only(&path)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o555))?;
        } else if kind.is_file() {
            let mode = entry.metadata()?.permissions().mode();
            let mode = if mode & 0o111 != 0 { 0o555 } else { 0o444 };
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
        }
    }
    Ok(())
}

/// Removes a snapshot's folder, read-only as it is.
fn remove_tree(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    fn writable(dir: &Path) {
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    writable(&entry.path());
                }
            }
        }
    }
    writable(dir);
    let _ = std::fs::remove_dir_all(dir);
}

/// Marks a file as just used (its modification time): a snapshot's index, an environment's marker.
pub(crate) fn touch(file: &Path) {
    if let Ok(file) = std::fs::OpenOptions::new().append(true).open(file) {
        let _ = file.set_modified(std::time::SystemTime::now());
    }
}

/// Removes least recently used snapshots no worker holds until the cache is within `max`
/// bytes, and leftovers of unpacks that did not finish.
fn evict(dir: &Path, max: u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut snapshots = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if name.starts_with("tmp-") {
            // An unpack that died: old enough that nobody is still writing it.
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age.as_secs() > 3_600);
            if old {
                remove_tree(&path);
            }
            continue;
        }
        let Ok(text) = std::fs::read_to_string(path.join(INDEX)) else {
            continue;
        };
        let Ok(index) = serde_json::from_str::<Index>(&text) else {
            continue;
        };
        let used = std::fs::metadata(path.join(INDEX))
            .and_then(|m| m.modified())
            .unwrap_or(std::time::UNIX_EPOCH);
        snapshots.push((used, index.bytes, name, path));
    }
    let mut total: u64 = snapshots.iter().map(|s| s.1).sum();
    snapshots.sort();
    for (_, bytes, name, path) in snapshots {
        if total <= max {
            break;
        }
        // Being unpacked, or held by a worker: not ours to remove.
        let Ok(install) = lock_file(
            &dir.join(format!("{name}.install.lock")),
            libc::LOCK_EX | libc::LOCK_NB,
        ) else {
            continue;
        };
        let Ok(used) = lock_file(
            &dir.join(format!("{name}.lock")),
            libc::LOCK_EX | libc::LOCK_NB,
        ) else {
            continue;
        };
        remove_tree(&path);
        if !path.exists() {
            tracing::info!(folder = %path.display(), "removed a code snapshot from the cache (least recently used)");
            total = total.saturating_sub(bytes);
        }
        drop((used, install));
    }
}
