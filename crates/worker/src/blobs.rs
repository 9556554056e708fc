//! Blobs in the inputs and outputs of command and `serve` functions.
//!
//! Before an input runs, every blob it refers to (`{"$blob": "sha256:…", "size": N}`) is
//! fetched into a folder of its attempt, streamed and checked against its digest, and the
//! reference gains `"path"`: the local file holding the bytes. A process reads the file
//! instead of taking the bytes over its stdin. The folder goes when the attempt ends.
//!
//! An output may hold `{"$blob": null, "path": "/file", "type": "bytes"|"json"}`: the
//! worker stores that file as a blob (streamed, claimed for the input's call) and reports
//! the reference in its place (a relative path is the function's working folder's). Files
//! under the folder `HOPPER_BLOB_DIR` names (where a process should write them: a command's is
//! its attempt's own, removed after it; a `serve` process's is its worker's, shared by its
//! inputs, so names must be unique) are removed once stored. A file said to hold JSON is
//! checked to be JSON first.
//!
//! A blob that is not stored, or whose bytes do not match its digest, fails the input at once
//! (`blob_missing`, `blob_corrupt`; no retry, it would find the same). A server that cannot be
//! reached (restarting, its database away) is asked again for up to a minute, and then the
//! input goes back to the queue (`blob_unavailable`, no retry used): a restart of the server
//! fails no input.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hopper_core::api::{InputError, Outcome};
use hopper_core::blob;
use hopper_core::{CallId, WorkerId};
use hopper_sdk::outbox::patiently;
use hopper_sdk::Client;
use serde::Deserialize;
use serde_json::Value;

/// Fetches and stores the blobs of one worker's inputs and outputs.
#[derive(Clone, Debug)]
pub struct Blobs {
    client: Client,
    worker: WorkerId,
    /// The folder all workers of the machine share (`<cache>/blobs`).
    root: PathBuf,
    /// This worker process's own under it, `worker-<pid>`: attempts' folders of fetched
    /// blobs, and `out/` for what processes write. Its own, because attempts' names
    /// (`INPUT-ATTEMPT`) are one server's: two workers of two servers have the same.
    dir: PathBuf,
}

/// An attempt's folder of fetched blobs, removed when dropped.
pub struct AttemptBlobs(PathBuf);

impl Drop for AttemptBlobs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Blobs {
    /// Blobs kept under `root` (shared with the machine's other workers), in a folder of this
    /// process's own.
    pub fn new(client: Client, worker: WorkerId, root: PathBuf) -> Self {
        let dir = root.join(format!("worker-{}", std::process::id()));
        Self {
            client,
            worker,
            root,
            dir,
        }
    }

    /// Where processes write the files of large outputs.
    pub fn out_dir(&self) -> PathBuf {
        self.dir.join("out")
    }

    /// The `HOPPER_BLOB_DIR` of a command's attempt (`attempt`: `INPUT-ATTEMPT`), its own.
    pub fn attempt_out(&self, attempt: &str) -> PathBuf {
        self.out_dir().join(attempt)
    }

    /// The `HOPPER_BLOB_DIR` of this worker's `serve` processes, shared by their inputs.
    pub fn serve_out(&self) -> PathBuf {
        self.out_dir().join("serve")
    }

    /// Creates a command attempt's output folder; removed (with what is left in it) when the
    /// returned guard is dropped.
    pub fn make_attempt_out(&self, attempt: &str) -> Option<AttemptBlobs> {
        let folder = self.attempt_out(attempt);
        std::fs::create_dir_all(&folder).ok()?;
        Some(AttemptBlobs(folder))
    }

    /// Removes what workers that are gone left in the shared folder: the folders of worker
    /// processes that no longer run (one killed mid-attempt), and anything else there a day
    /// old.
    pub fn sweep(&self) {
        let old = |path: &Path| {
            std::fs::metadata(path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > Duration::from_secs(24 * 3600))
        };
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            let gone = match name.strip_prefix("worker-") {
                Some(pid) => {
                    pid.parse::<u32>()
                        .is_ok_and(|pid| pid != std::process::id())
                        && !Path::new(&format!("/proc/{pid}")).exists()
                }
                None => old(&path),
            };
            if gone {
                let _ = std::fs::remove_dir_all(&path);
            }
        }
    }

    /// Fetches the blobs `input` refers to into a folder named by `attempt` and gives each
    /// reference its `path`; `None` when it refers to none. `Err` is the input's outcome.
    pub async fn fetch(
        &self,
        input: &mut Value,
        attempt: &str,
    ) -> Result<Option<AttemptBlobs>, Outcome> {
        let refs =
            blob::refs(input, "the input").map_err(|why| failed("blob_invalid", why, false))?;
        if refs.is_empty() {
            return Ok(None);
        }
        let folder = self.dir.join(attempt);
        std::fs::create_dir_all(&folder).map_err(|e| {
            failed(
                "blob_unavailable",
                format!("cannot create {}: {e}", folder.display()),
                true,
            )
        })?;
        let guard = AttemptBlobs(folder.clone());
        for r in &refs {
            let Some(hex) = r.digest.strip_prefix("sha256:") else {
                continue;
            };
            let path = folder.join(hex);
            if path.exists() {
                continue;
            }
            patiently(PATIENCE, || {
                self.client
                    .worker_blob_get_file(&self.worker, &r.digest, &path)
            })
            .await
            .map_err(|e| match &e {
                hopper_sdk::Error::Api { status: 404, .. } => failed(
                    "blob_missing",
                    format!("the input refers to blob {} which is not stored", r.digest),
                    false,
                ),
                hopper_sdk::Error::Api { code, .. }
                    if code == "blob_corrupt" || code == "blob_unreachable" =>
                {
                    failed(code, e.to_string(), false)
                }
                hopper_sdk::Error::Corrupt(_) => failed("blob_corrupt", e.to_string(), false),
                _ => returned(format!("cannot fetch blob {}: {e}", r.digest)),
            })?;
        }
        set_paths(input, &folder);
        Ok(Some(guard))
    }

    /// Stores the files an output's references name (`"path"`, relative to `workdir`) as
    /// blobs of `call`, and puts the references the server gave in their place. `Err` is the
    /// input's outcome.
    pub async fn store(
        &self,
        call: &CallId,
        output: &mut Value,
        workdir: &Path,
    ) -> Result<(), Outcome> {
        let mut files = Vec::new();
        collect_files(output, &mut files);
        if files.is_empty() {
            return Ok(());
        }
        let out = self.out_dir();
        let mut stored = Vec::with_capacity(files.len());
        for (file, json) in &files {
            let path = workdir.join(file);
            // A pipe or a device would hold the attempt open until someone wrote to it (or
            // forever): only a regular file is an output's bytes.
            match std::fs::metadata(&path) {
                Ok(meta) if meta.is_file() => {}
                Ok(_) => {
                    return Err(failed(
                        "bad_output",
                        format!(
                            "the output names {}, which is not a regular file (a folder, a pipe or a device)",
                            path.display()
                        ),
                        false,
                    ))
                }
                Err(e) => {
                    return Err(failed(
                        "bad_output",
                        format!("cannot read the output's file {}: {e}", path.display()),
                        false,
                    ))
                }
            }
            if *json {
                check_json(&path).await?;
            }
            let path = path.as_path();
            let reference = patiently(PATIENCE, || {
                self.client.worker_blob_put_file(&self.worker, call, path)
            })
            .await
            .map_err(|e| match e {
                hopper_sdk::Error::File(why) => failed("bad_output", why, false),
                hopper_sdk::Error::Api { status: 413, .. } => {
                    failed("output_too_large", e.to_string(), false)
                }
                e => returned(format!(
                    "cannot store the output's file {}: {e}",
                    path.display()
                )),
            })?;
            stored.push(reference);
            if path.starts_with(&out) {
                let _ = std::fs::remove_file(path);
            }
        }
        let mut stored = stored.into_iter();
        replace_files(output, &mut stored);
        Ok(())
    }
}

/// Checks that the file at `path`, said to hold a JSON value, does (read as it streams,
/// building nothing).
async fn check_json(path: &Path) -> Result<(), Outcome> {
    let owned = path.to_path_buf();
    let checked = tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(&owned)
            .map_err(|e| format!("cannot read the output's file {}: {e}", owned.display()))?;
        let mut reader = serde_json::Deserializer::from_reader(std::io::BufReader::new(file));
        serde::de::IgnoredAny::deserialize(&mut reader)
            .and_then(|_| reader.end())
            .map_err(|e| {
                format!(
                    "the output's file {} is said to hold JSON (\"type\": \"json\") but does not: {e}",
                    owned.display()
                )
            })
    })
    .await
    .unwrap_or_else(|e| Err(format!("the check of an output's file failed: {e}")));
    checked.map_err(|why| failed("bad_output", why, false))
}

/// How long a blob's fetch or store is tried again while the server cannot be reached.
const PATIENCE: Duration = Duration::from_secs(60);

/// The input goes back to the queue without using a retry: the server could not be asked.
fn returned(message: String) -> Outcome {
    Outcome::Returned {
        error: InputError::new("blob_unavailable", message),
    }
}

fn failed(code: &str, message: String, retry: bool) -> Outcome {
    Outcome::Failed {
        retry,
        error: InputError::new(code, message),
    }
}

/// Gives every blob reference in `value` the path of its file in `folder`.
fn set_paths(value: &mut Value, folder: &Path) {
    match value {
        Value::Object(map) if map.contains_key(blob::KEY) => {
            let hex = map
                .get(blob::KEY)
                .and_then(Value::as_str)
                .and_then(|d| d.strip_prefix("sha256:"))
                .map(str::to_string);
            if let Some(hex) = hex {
                let path = folder.join(hex).to_string_lossy().into_owned();
                map.insert("path".into(), Value::String(path));
            }
        }
        Value::Object(map) => map.values_mut().for_each(|v| set_paths(v, folder)),
        Value::Array(items) => items.iter_mut().for_each(|v| set_paths(v, folder)),
        _ => {}
    }
}

/// The `path` of every blob reference in `value` that has one, in document order, and
/// whether it is said to hold JSON.
fn collect_files(value: &Value, out: &mut Vec<(String, bool)>) {
    match value {
        Value::Object(map) if map.contains_key(blob::KEY) => {
            if let Some(path) = map.get("path").and_then(Value::as_str) {
                let json = map.get("type").and_then(Value::as_str) == Some("json");
                out.push((path.to_string(), json));
            }
        }
        Value::Object(map) => map.values().for_each(|v| collect_files(v, out)),
        Value::Array(items) => items.iter().for_each(|v| collect_files(v, out)),
        _ => {}
    }
}

/// Puts the stored references in place of the file references, in the order
/// [`collect_files`] found them, keeping `"type": "json"`.
fn replace_files(value: &mut Value, stored: &mut impl Iterator<Item = Value>) {
    match value {
        Value::Object(map) if map.contains_key(blob::KEY) && map.contains_key("path") => {
            if let Some(Value::Object(mut reference)) = stored.next() {
                if map.get("type").and_then(Value::as_str) == Some("json") {
                    reference.insert("type".into(), Value::String("json".into()));
                }
                *map = reference;
            }
        }
        Value::Object(map) if map.contains_key(blob::KEY) => {}
        Value::Object(map) => map.values_mut().for_each(|v| replace_files(v, stored)),
        Value::Array(items) => items.iter_mut().for_each(|v| replace_files(v, stored)),
        _ => {}
    }
}
