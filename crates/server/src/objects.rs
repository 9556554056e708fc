//! Blobs kept as objects instead of chunk rows: in files of the data folder (`hopper serve
//! --blobs files`, SQLite's default: `DATA/blobs/<upload id>`) or in an S3-compatible bucket
//! (`--blobs s3://bucket/prefix`: `PREFIX/<upload id>`). One object per upload, written as
//! the upload streams in (in parts of [`PART`] once it outgrows one), its URL recorded on the
//! blob's row once it is whole (and, for a file, on the disk). The database still says which
//! blobs exist and which calls keep them; a bucket holds only bytes, so every server of a
//! cluster given the same `--blobs` reads every blob, and workers never need the bucket's
//! credentials (they fetch through a server).
//!
//! Credentials, region and endpoint come from the standard `AWS_*` variables
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION` or
//! `AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL` for another S3-compatible service,
//! `AWS_ALLOW_HTTP=true` for one without TLS), or the machine's role, through the
//! `object_store` crate.

use std::sync::Arc;

use axum::body::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use hopper_store::{Store, StoreError};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};

/// The size of each part of a multipart upload (S3's least is 5 MiB); an upload smaller than
/// one part is written with one request. At most [`PARTS_IN_FLIGHT`] parts are sent at once,
/// so an upload holds at most that many parts in memory.
pub const PART: usize = 8 * 1024 * 1024;
/// Parts of one upload sent at the same time.
pub const PARTS_IN_FLIGHT: usize = 2;
/// How many objects the pruner takes from the database at once.
const SWEEP_BATCH: u32 = 500;

/// Where blobs' objects go: an S3-compatible bucket and a prefix in it, or a folder.
#[derive(Clone)]
pub struct ObjectBlobs {
    store: Arc<dyn ObjectStore>,
    /// What objects' URLs start with: `s3://bucket[/prefix]`, or [`FOLDER_URL`].
    base: String,
    /// Within the store, without slashes at either end; may be empty.
    prefix: String,
    /// The folder, for blobs kept in files.
    folder: Option<std::path::PathBuf>,
}

/// The URL of the data folder's `blobs` folder in blobs' rows (`files:blobs/<upload>`), so
/// that a data folder moved elsewhere keeps its blobs.
pub const FOLDER_URL: &str = "files:blobs";

impl std::fmt::Debug for ObjectBlobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the client: its configuration holds the credentials.
        write!(f, "ObjectBlobs({})", self.describe())
    }
}

/// Why a blob's bytes cannot be read from the bucket.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The object is not there, or does not hold the blob's size (damaged or deleted by hand).
    #[error("{0}")]
    Damaged(String),
    /// The bucket did not answer as it should (unreachable, refused, a server error).
    #[error("{0}")]
    Unavailable(String),
    /// The object is in a folder or bucket this server was not given (`--blobs` changed).
    #[error("{0}")]
    Elsewhere(String),
}

impl ObjectBlobs {
    /// The bucket of `url` (`s3://bucket` or `s3://bucket/prefix`), reached with the
    /// `AWS_*` variables of this process. Errors name what is wrong with `url`; nothing is
    /// sent to the bucket yet (see [`ObjectBlobs::check`]).
    pub fn from_url(url: &str) -> Result<Self, String> {
        let rest = url.strip_prefix("s3://").ok_or_else(|| {
            format!("--blobs {url:?}: expected files, database or s3://bucket/prefix")
        })?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let valid_bucket = (3..=63).contains(&bucket.len())
            && bucket
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
        if !valid_bucket {
            return Err(format!(
                "--blobs {url:?}: {bucket:?} is not a bucket name (3 to 63 lowercase letters, digits, '-' and '.')"
            ));
        }
        let prefix = prefix.trim_matches('/').to_string();
        if prefix
            .split('/')
            .any(|part| part == "." || part == ".." || (part.is_empty() && !prefix.is_empty()))
            || prefix.contains(['?', '#', '\\', '%'])
            || prefix.chars().any(char::is_control)
        {
            return Err(format!(
                "--blobs {url:?}: the prefix {prefix:?} holds an empty, '.' or '..' part, a control character, or one of ?#%\\"
            ));
        }
        if prefix.len() > 512 {
            return Err(format!(
                "--blobs {url:?}: the prefix is {} bytes; keep it under 512 (an object's key is at most 1,024)",
                prefix.len()
            ));
        }
        // A bucket that does not answer is given up on within half a minute (then the upload
        // or download is tried again by its client), not after object_store's three.
        let retry = object_store::RetryConfig {
            max_retries: 3,
            retry_timeout: std::time::Duration::from_secs(30),
            ..Default::default()
        };
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_retry(retry);
        // `AWS_REGION` is the variable the AWS tools read first; object_store reads
        // `AWS_DEFAULT_REGION`.
        if let Ok(region) = std::env::var("AWS_REGION") {
            builder = builder.with_region(region);
        }
        let store = builder
            .build()
            .map_err(|e| format!("--blobs {url:?}: {e}"))?;
        let base = if prefix.is_empty() {
            format!("s3://{bucket}")
        } else {
            format!("s3://{bucket}/{prefix}")
        };
        Ok(Self {
            store: Arc::new(store),
            base,
            prefix,
            folder: None,
        })
    }

    /// Files in `folder` (the data folder's `blobs`), made if it is not there; one this
    /// process cannot write to is refused now rather than at the first upload.
    pub fn in_folder(folder: &std::path::Path) -> Result<Self, String> {
        let failed =
            |e: &dyn std::fmt::Display| format!("cannot keep blobs in {}: {e}", folder.display());
        std::fs::create_dir_all(folder).map_err(|e| failed(&e))?;
        let probe = folder.join(".hopper-write-probe");
        std::fs::write(&probe, b"")
            .and_then(|_| std::fs::remove_file(&probe))
            .map_err(|e| failed(&e))?;
        let store = object_store::local::LocalFileSystem::new_with_prefix(folder)
            .map_err(|e| failed(&e))?;
        Ok(Self {
            store: Arc::new(store),
            base: FOLDER_URL.to_string(),
            prefix: String::new(),
            folder: Some(folder.to_path_buf()),
        })
    }

    /// Where blobs go, for people: `s3://bucket/prefix`, or the folder's path.
    pub fn describe(&self) -> String {
        match &self.folder {
            Some(folder) => folder.display().to_string(),
            None => self.base.clone(),
        }
    }

    /// The URL of the object an upload writes: `s3://bucket/prefix/<upload>` or
    /// `files:blobs/<upload>`.
    pub fn location(&self, upload: &str) -> String {
        format!("{}/{upload}", self.base)
    }

    fn path(&self, name: &str) -> Path {
        if self.prefix.is_empty() {
            Path::from(name)
        } else {
            Path::from(format!("{}/{name}", self.prefix))
        }
    }

    /// The object of a blob row's `location`, if it is in this bucket under this prefix.
    fn path_of(&self, location: &str) -> Option<Path> {
        let name = location.strip_prefix(&format!("{}/", self.base))?;
        (!name.is_empty() && !name.contains('/')).then(|| self.path(name))
    }

    /// Lists the prefix once, so that a server whose bucket is wrong or unreachable says so
    /// when it starts rather than at its first blob.
    pub async fn check(&self) -> Result<(), String> {
        let prefix = self.path("");
        let mut list = self.store.list(Some(&prefix));
        match list.next().await {
            None | Some(Ok(_)) => Ok(()),
            Some(Err(e)) => {
                let e = e.to_string();
                // What object_store says of a missing setting is about its consequence.
                let hint = if e.contains("169.254.169.254") {
                    " (no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or run where a role gives them)"
                } else if e.contains("builder error") {
                    " (an http:// endpoint needs AWS_ALLOW_HTTP=true)"
                } else if e.contains("error sending request") {
                    " (nothing answered at the endpoint: check AWS_ENDPOINT_URL and AWS_REGION)"
                } else {
                    ""
                };
                Err(format!("cannot list {}: {e}{hint}", self.describe()))
            }
        }
    }

    /// A writer for the object of `upload`: bytes given to it are sent in parts as they come.
    pub fn upload(&self, upload: &str) -> Upload {
        Upload {
            store: self.store.clone(),
            path: self.path(upload),
            location: self.location(upload),
            file: self.folder.as_ref().map(|folder| folder.join(upload)),
            buffered: Vec::new(),
            len: 0,
            parts: None,
        }
    }

    /// The bytes of the object at `location`, which must hold `size` of them, as a stream.
    pub async fn read(
        &self,
        location: &str,
        size: u64,
    ) -> Result<BoxStream<'static, Result<Bytes, std::io::Error>>, ReadError> {
        let path = self.path_of(location).ok_or_else(|| {
            ReadError::Elsewhere(format!(
                "it is kept at {location}, outside this server's --blobs ({}): start the server with the --blobs it was stored under, or upload its bytes again",
                self.base
            ))
        })?;
        if let Some(folder) = &self.folder {
            return read_in_folder(folder, location, size).await;
        }
        let got = self.store.get(&path).await.map_err(|e| match e {
            object_store::Error::NotFound { .. } => {
                ReadError::Damaged(format!("its object {location} is gone from the bucket"))
            }
            e => ReadError::Unavailable(format!("cannot read {location}: {e}")),
        })?;
        if got.meta.size != size {
            return Err(ReadError::Damaged(format!(
                "its object {location} holds {} bytes, not {size}",
                got.meta.size
            )));
        }
        Ok(got.into_stream().map_err(std::io::Error::other).boxed())
    }

    /// Deletes the object at `location`; one already gone is no error.
    pub async fn delete(&self, location: &str) -> Result<(), String> {
        let Some(path) = self.path_of(location) else {
            return Ok(());
        };
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(format!("cannot delete {location}: {e}")),
        }
    }

    /// Deletes the objects the database lists as nobody's blob since before `before` (Unix
    /// ms): uploads refused or cut short (a server killed mid-way), copies replaced, blobs
    /// pruned. How many. Objects the database did not record (another installation's, sharing
    /// the bucket) are never touched.
    pub async fn sweep(&self, store: &dyn Store, before: i64) -> Result<u64, SweepError> {
        let mut deleted = 0;
        loop {
            let due = store
                .blob_objects_due(before, SWEEP_BATCH)
                .await
                .map_err(SweepError::Store)?;
            let full = due.len() == SWEEP_BATCH as usize;
            for location in due {
                if self.path_of(&location).is_some() {
                    self.delete(&location).await.map_err(SweepError::Bucket)?;
                    deleted += 1;
                } else {
                    tracing::warn!(object = %location, blobs = %self.describe(), "an object no blob needs is outside this server's --blobs: left where it is");
                }
                store
                    .blob_object_gone(&location)
                    .await
                    .map_err(SweepError::Store)?;
            }
            if !full {
                return Ok(deleted + self.sweep_staging(before));
            }
        }
    }

    /// In a folder, the partial files of uploads a crash cut (`<upload>#<n>`, which listing
    /// leaves out) last written before `before`: how many were deleted.
    fn sweep_staging(&self, before: i64) -> u64 {
        let Some(folder) = &self.folder else {
            return 0;
        };
        let Ok(entries) = std::fs::read_dir(folder) else {
            return 0;
        };
        let mut deleted = 0;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let staged = name
                .to_str()
                .and_then(|n| n.split_once('#'))
                .is_some_and(|(upload, _)| is_upload_name(upload));
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .is_some_and(|t| (t.as_millis() as i64) < before);
            if staged && old && std::fs::remove_file(entry.path()).is_ok() {
                deleted += 1;
            }
        }
        deleted
    }
}

/// The object of one upload, written as its bytes come: kept in memory up to one [`PART`],
/// then sent as a multipart upload, [`PARTS_IN_FLIGHT`] parts at a time.
pub struct Upload {
    store: Arc<dyn ObjectStore>,
    path: Path,
    location: String,
    /// For a blob kept in a file: the file, made durable when the upload finishes.
    file: Option<std::path::PathBuf>,
    /// What came before the upload outgrew one part.
    buffered: Vec<Bytes>,
    len: usize,
    parts: Option<WriteMultipart>,
}

impl Upload {
    /// The object's URL, for the blob's row.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Sends `bytes` on, waiting while [`PARTS_IN_FLIGHT`] parts are on their way.
    pub async fn put(&mut self, bytes: Bytes) -> Result<(), String> {
        if self.parts.is_none() {
            self.len += bytes.len();
            self.buffered.push(bytes);
            if self.len < PART {
                return Ok(());
            }
            let upload = self
                .store
                .put_multipart(&self.path)
                .await
                .map_err(|e| self.failed(e))?;
            let mut parts = WriteMultipart::new_with_chunk_size(upload, PART);
            for piece in self.buffered.drain(..) {
                parts.put(piece);
            }
            self.parts = Some(parts);
            return Ok(());
        }
        if let Some(parts) = &mut self.parts {
            parts
                .wait_for_capacity(PARTS_IN_FLIGHT)
                .await
                .map_err(|e| format!("cannot write {}: {e}", self.location))?;
            parts.put(bytes);
        }
        Ok(())
    }

    /// Makes the object whole: it exists from here on.
    pub async fn finish(self) -> Result<(), String> {
        let done = match self.parts {
            Some(parts) => parts.finish().await,
            None => {
                let payload: PutPayload = self.buffered.into_iter().collect();
                self.store.put(&self.path, payload).await
            }
        };
        done.map_err(|e| format!("cannot write {}: {e}", self.location))?;
        if let Some(file) = self.file {
            // On the disk before the blob's row says it exists: a power cut keeps both or
            // neither.
            tokio::task::spawn_blocking(move || durable(&file))
                .await
                .map_err(|e| e.to_string())
                .and_then(|done| done)?;
        }
        Ok(())
    }

    /// Drops what was sent of an upload that will not finish.
    pub async fn abort(self) {
        if let Some(parts) = self.parts {
            if let Err(e) = parts.abort().await {
                tracing::warn!(object = %self.location, error = %e, "cannot abort the multipart upload of a blob that did not finish; a lifecycle rule on the bucket removes its parts");
            }
        }
    }

    fn failed(&self, e: object_store::Error) -> String {
        format!("cannot write {}: {e}", self.location)
    }
}

/// A blob's file in `folder` (the data folder's `blobs`) from its URL, `files:blobs/<upload>`:
/// read whatever `--blobs` says now, so a server switched to `--blobs database` still reads
/// what it wrote as files.
pub async fn read_in_folder(
    folder: &std::path::Path,
    location: &str,
    size: u64,
) -> Result<BoxStream<'static, Result<Bytes, std::io::Error>>, ReadError> {
    let name = location
        .strip_prefix(FOLDER_URL)
        .and_then(|rest| rest.strip_prefix('/'))
        .filter(|name| is_upload_name(name))
        .ok_or_else(|| ReadError::Elsewhere(format!("{location} is not a blob file's URL")))?;
    read_file(&folder.join(name), location, size).await
}

/// How much of a file a download reads at a time.
const READ: usize = 1024 * 1024;

/// A blob's file, read [`READ`] bytes at a time (object_store's own reads take 8 KiB).
async fn read_file(
    file: &std::path::Path,
    location: &str,
    size: u64,
) -> Result<BoxStream<'static, Result<Bytes, std::io::Error>>, ReadError> {
    use tokio::io::AsyncReadExt;
    let opened = match tokio::fs::File::open(file).await {
        Ok(opened) => opened,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ReadError::Damaged(format!("its object {location} is gone")))
        }
        // The server's log says which file; an API client is told only the blob's URL.
        Err(e) => {
            tracing::error!(file = %file.display(), error = %e, "cannot read a blob's file");
            return Err(ReadError::Unavailable(format!(
                "cannot read {location}: {e}"
            )));
        }
    };
    let held = opened
        .metadata()
        .await
        .map_err(|e| ReadError::Unavailable(format!("cannot read {location}: {e}")))?
        .len();
    if held != size {
        return Err(ReadError::Damaged(format!(
            "its object {location} holds {held} bytes, not {size}"
        )));
    }
    // After an error, the stream ends.
    let chunks = futures_util::stream::unfold(Some(opened), |file| async move {
        let mut file = file?;
        let mut buf = vec![0u8; READ];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), Some(file)))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    Ok(chunks.boxed())
}

/// Flushes `file` and the folder that names it to the disk.
fn durable(file: &std::path::Path) -> Result<(), String> {
    let sync = |path: &std::path::Path| {
        std::fs::File::open(path)
            .and_then(|f| f.sync_all())
            .map_err(|e| format!("cannot flush {} to the disk: {e}", path.display()))
    };
    sync(file)?;
    match file.parent() {
        Some(folder) => sync(folder),
        None => Ok(()),
    }
}

/// An upload's id: 32 lowercase hex digits (a v4 UUID's simple form).
fn is_upload_name(name: &str) -> bool {
    name.len() == 32
        && name
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Why a sweep of the bucket stopped.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error("{0}")]
    Bucket(String),
    #[error(transparent)]
    Store(StoreError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_the_bucket_and_prefix() {
        let b = ObjectBlobs::from_url("s3://my-bucket/hopper/blobs/").unwrap();
        assert_eq!(b.describe(), "s3://my-bucket/hopper/blobs");
        assert_eq!(b.location("ab"), "s3://my-bucket/hopper/blobs/ab");
        assert!(b.path_of("s3://my-bucket/hopper/blobs/ab").is_some());
        assert!(b.path_of("s3://my-bucket/hopper/other/ab").is_none());
        assert!(b.path_of("s3://my-bucket/hopper/blobs/a/b").is_none());
        let bare = ObjectBlobs::from_url("s3://bucket").unwrap();
        assert_eq!(bare.location("x"), "s3://bucket/x");
        assert!(format!("{bare:?}").contains("s3://bucket"));
        for bad in [
            "bucket",
            "s3://",
            "s3://B",
            "s3://bucket/a//b",
            "s3://bucket/../x",
        ] {
            let e = ObjectBlobs::from_url(bad).unwrap_err();
            assert!(e.starts_with("--blobs"), "{bad}: {e}");
        }
    }
}
