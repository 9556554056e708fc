//! Blobs in the inputs and outputs of command and `serve` functions.
//!
//! Before an input runs, every blob it refers to (`{"$blob": "sha256:…", "size": N}`) is
//! fetched into a folder of its attempt, streamed and checked against its digest, and the
//! reference gains `"path"`: the local file holding the bytes. A process reads the file
//! instead of taking the bytes over its stdin. The folder goes when the attempt ends.
//!
//! An output may hold `{"$blob": null, "path": "/file", "type": "bytes"|"json"}`: the
//! worker stores that file as a blob (streamed, claimed for the input's call) and reports
//! the reference in its place. Files under the folder `HOPPER_BLOB_DIR` names (where a process
//! should write them) are removed once stored.
//!
//! A blob that is not stored, or whose bytes do not match its digest, fails the input at once
//! (`blob_missing`, `blob_corrupt`; no retry, it would find the same); one the server could not
//! be asked for fails it as `blob_unavailable` (retries apply).

use std::path::{Path, PathBuf};

use hopper_core::api::{InputError, Outcome};
use hopper_core::blob;
use hopper_core::{CallId, WorkerId};
use hopper_sdk::Client;
use serde_json::Value;

/// Fetches and stores the blobs of one worker's inputs and outputs.
#[derive(Clone, Debug)]
pub struct Blobs {
    client: Client,
    worker: WorkerId,
    /// Attempts' folders of fetched blobs, and `out/` for what processes write.
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
    pub fn new(client: Client, worker: WorkerId, dir: PathBuf) -> Self {
        Self {
            client,
            worker,
            dir,
        }
    }

    /// Where processes write the files of large outputs (`HOPPER_BLOB_DIR`).
    pub fn out_dir(&self) -> PathBuf {
        self.dir.join("out")
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
            self.client
                .worker_blob_get_file(&self.worker, &r.digest, &path)
                .await
                .map_err(|e| match &e {
                    hopper_sdk::Error::Api { status: 404, .. } => failed(
                        "blob_missing",
                        format!("the input refers to blob {} which is not stored", r.digest),
                        false,
                    ),
                    hopper_sdk::Error::Api { code, .. } if code == "blob_corrupt" => {
                        failed("blob_corrupt", e.to_string(), false)
                    }
                    hopper_sdk::Error::Corrupt(_) => failed("blob_corrupt", e.to_string(), false),
                    _ => failed(
                        "blob_unavailable",
                        format!("cannot fetch blob {}: {e}", r.digest),
                        true,
                    ),
                })?;
        }
        set_paths(input, &folder);
        Ok(Some(guard))
    }

    /// Stores the files an output's references name (`"path"`) as blobs of `call`, and puts
    /// the references the server gave in their place. `Err` is the input's outcome.
    pub async fn store(&self, call: &CallId, output: &mut Value) -> Result<(), Outcome> {
        let mut files = Vec::new();
        collect_files(output, &mut files);
        if files.is_empty() {
            return Ok(());
        }
        let out = self.out_dir();
        let mut stored = Vec::with_capacity(files.len());
        for path in &files {
            let reference = self
                .client
                .worker_blob_put_file(&self.worker, call, Path::new(path))
                .await
                .map_err(|e| match e {
                    hopper_sdk::Error::File(why) => failed("bad_output", why, false),
                    hopper_sdk::Error::Api { status: 413, .. } => {
                        failed("output_too_large", e.to_string(), false)
                    }
                    e => failed(
                        "blob_unavailable",
                        format!("cannot store the output's file {path}: {e}"),
                        true,
                    ),
                })?;
            stored.push(reference);
            if Path::new(path).starts_with(&out) {
                let _ = std::fs::remove_file(path);
            }
        }
        let mut stored = stored.into_iter();
        replace_files(output, &mut stored);
        Ok(())
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

/// The `path` of every blob reference in `value` that has one, in document order.
fn collect_files(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) if map.contains_key(blob::KEY) => {
            if let Some(path) = map.get("path").and_then(Value::as_str) {
                out.push(path.to_string());
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
