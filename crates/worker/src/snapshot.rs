//! Code snapshots: an app's folder as one gzip-compressed tar, named by the SHA-256 of its
//! bytes, so a version runs the code it was deployed with on any machine.
//!
//! [`build`] writes the tar deterministically (paths sorted, times, owners and modes fixed but
//! for the executable bit), so deploying unchanged code gives the same hash and stores nothing
//! new. [`inspect`] checks one before the server stores it; [`unpack`] writes one into a folder
//! and returns what each file must hash to, so a cached copy can be checked later.

use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

/// The default most bytes of files one snapshot may hold, before compression: 64 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Most files one snapshot may hold.
pub const MAX_FILES: u64 = 100_000;

/// What is wrong with a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("not a gzip-compressed tar: {0}")]
    Format(String),
    #[error("entry {path:?}: {reason}")]
    Entry { path: String, reason: String },
    #[error("it unpacks to more than {max} bytes")]
    TooLarge { max: u64 },
    #[error("it has more than {MAX_FILES} files")]
    TooManyFiles,
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A snapshot's hash as Hopper names it: `sha256:` and 64 hex digits.
pub fn hash(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Whether `text` is a snapshot hash as [`hash`] writes it.
pub fn is_hash(text: &str) -> bool {
    text.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// One file to put in a snapshot: its path inside the snapshot (`/`-separated, relative) and
/// where to read it.
#[derive(Debug, Clone)]
pub struct Source {
    pub path: String,
    pub from: PathBuf,
}

/// Writes `files` (sorted by path here) as a gzip-compressed tar. A symbolic link is kept as
/// a link; anything else that is not a regular file is skipped by the caller.
pub fn build(files: &[Source]) -> std::io::Result<Vec<u8>> {
    let mut sorted: Vec<&Source> = files.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    tar.mode(tar::HeaderMode::Deterministic);
    for file in sorted {
        let meta = std::fs::symlink_metadata(&file.from)?;
        let mut header = tar::Header::new_gnu();
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&file.from)?;
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_size(0);
            header.set_mode(0o777);
            tar.append_link(&mut header, &file.path, target)?;
        } else {
            use std::os::unix::fs::PermissionsExt;
            let executable = meta.permissions().mode() & 0o111 != 0;
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(meta.len());
            header.set_mode(if executable { 0o755 } else { 0o644 });
            let reader = std::fs::File::open(&file.from)?;
            tar.append_data(&mut header, &file.path, reader.take(meta.len()))?;
        }
    }
    let gz = tar.into_inner()?;
    let mut bytes = gz.finish()?;
    bytes.flush()?;
    Ok(bytes)
}

/// Folders never shipped: Hopper's own.
const ALWAYS_LEFT_OUT: &[&str] = &[".hopper"];

/// Folders that never belong in code, left out wherever they are unless the root folder's
/// `.gitignore` or `.hopperignore` negates one (`!node_modules/`): version control, Python's
/// byte-code and tools' caches, JavaScript packages. Virtual environments (folders holding
/// `pyvenv.cfg`) are left out the same way, whatever their name.
pub const LEFT_OUT_BY_DEFAULT: &[&str] = &[
    ".git",
    "__pycache__",
    "node_modules",
    ".mypy_cache",
    ".pytest_cache",
    ".ruff_cache",
    ".tox",
];

/// Whether `dir` is a Python virtual environment (`python -m venv`, virtualenv, uv).
fn is_venv(dir: &Path) -> bool {
    dir.join("pyvenv.cfg").is_file()
}

/// The root folder's own ignore rules, to tell whether they negate a default.
fn root_rules(root: &Path) -> ignore::gitignore::Gitignore {
    let mut rules = ignore::gitignore::GitignoreBuilder::new(root);
    for name in [".gitignore", ".hopperignore"] {
        let file = root.join(name);
        if file.is_file() {
            // A line that cannot be read is the walk's to report; here it only fails to negate.
            let _ = rules.add(file);
        }
    }
    rules
        .build()
        .unwrap_or_else(|_| ignore::gitignore::Gitignore::empty())
}

/// Whether `dir` is a Hopper server's data folder (whatever its name): it holds the server's
/// database and, maybe, the key that seals its secrets, which must never travel with code.
pub fn is_data_folder(dir: &Path) -> bool {
    dir.join("hopper.lock").exists() || dir.join("hopper.db").exists()
}

/// A link's target, if it leaves the folder `root` (absolute, or climbing above it with `..`):
/// such a link would point elsewhere, or nowhere, on another machine.
fn escapes(root: &Path, link: &Path) -> Option<PathBuf> {
    let target = std::fs::read_link(link).ok()?;
    let inside = link.strip_prefix(root).ok()?;
    climbs_out(inside, &target).then_some(target)
}

/// The files of `root` a snapshot ships: every file and link under it but what `.gitignore`
/// and `.hopperignore` files (gitignore syntax, in any folder), [`LEFT_OUT_BY_DEFAULT`],
/// virtual environments, [`ALWAYS_LEFT_OUT`] and the folders in `leave_out` (e.g. a server's
/// data folder) exclude. Refused above `max_bytes` of files, naming the biggest.
pub fn collect(root: &Path, max_bytes: u64, leave_out: &[PathBuf]) -> Result<Vec<Source>, String> {
    let leave_out: Vec<PathBuf> = leave_out
        .iter()
        .filter_map(|p| std::fs::canonicalize(p).ok())
        .collect();
    let rules = root_rules(root);
    let mut walk = ignore::WalkBuilder::new(root);
    walk.standard_filters(false)
        .git_ignore(true)
        .require_git(false)
        .add_custom_ignore_filename(".hopperignore")
        .follow_links(false)
        .filter_entry(move |e| {
            let folder = e.file_type().is_some_and(|t| t.is_dir());
            let name = e.file_name().to_str().unwrap_or_default();
            let by_default = folder
                && e.depth() > 0
                && (LEFT_OUT_BY_DEFAULT.contains(&name) || is_venv(e.path()));
            let left_out = ALWAYS_LEFT_OUT.contains(&name)
                || leave_out.iter().any(|p| p == e.path())
                || (folder && is_data_folder(e.path()));
            // A default gives way to a negation in the root folder's own rules.
            let shipped_anyway = || rules.matched(e.path(), true).is_whitelist();
            !left_out && (!by_default || shipped_anyway())
        });
    let mut files = Vec::new();
    let mut sizes: Vec<(u64, String)> = Vec::new();
    for entry in walk.build() {
        let entry = entry.map_err(|e| format!("cannot read {}: {e}", root.display()))?;
        let Some(kind) = entry.file_type() else {
            continue;
        };
        if !(kind.is_file() || kind.is_symlink()) {
            continue;
        }
        let relative = entry
            .path()
            .strip_prefix(root)
            .map_err(|e| format!("{}: {e}", entry.path().display()))?;
        let Some(path) = relative.to_str().map(str::to_string) else {
            return Err(format!(
                "{}: a file name that is not UTF-8 cannot be shipped",
                entry.path().display()
            ));
        };
        if kind.is_symlink() {
            if let Some(target) = escapes(root, entry.path()) {
                return Err(format!(
                    "{path} is a link to {}, outside {}: on another machine it would point elsewhere or nowhere. Leave it out with a line '/{path}' in {}, or copy what it points to into the folder",
                    target.display(),
                    root.display(),
                    root.join(".hopperignore").display()
                ));
            }
        }
        let size = if kind.is_file() {
            entry
                .metadata()
                .map_err(|e| format!("{}: {e}", entry.path().display()))?
                .len()
        } else {
            0
        };
        sizes.push((size, path.clone()));
        files.push(Source {
            path,
            from: entry.path().to_path_buf(),
        });
    }
    let total: u64 = sizes.iter().map(|(size, _)| size).sum();
    if total > max_bytes {
        sizes.sort_by(|a, b| b.cmp(a));
        let biggest: Vec<String> = sizes
            .iter()
            .take(5)
            .map(|(size, path)| format!("{path} ({})", mib(*size)))
            .collect();
        return Err(format!(
            "the code snapshot of {} would hold {} of files, over the {} limit; the biggest: {}. Leave files out with a .hopperignore (gitignore syntax) or raise the limit with --max-bundle",
            root.display(),
            mib(total),
            mib(max_bytes),
            biggest.join(", ")
        ));
    }
    if files.len() as u64 > MAX_FILES {
        return Err(format!(
            "the code snapshot of {} would hold {} files, more than {MAX_FILES}; leave files out with a .hopperignore (gitignore syntax)",
            root.display(),
            files.len()
        ));
    }
    Ok(files)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// A manifest's code, ready to upload.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The gzip-compressed tar, when it was packed (not when [`Self::unchanged`]).
    packed: Option<Vec<u8>>,
    sources: Vec<Source>,
    /// The files are as they were when the folder was last packed on this machine (by path,
    /// size, modification time, mode and link target: the digest cache), so `hash` is that
    /// packing's and nothing was packed: [`Self::bytes`] packs only if asked.
    pub unchanged: bool,
    pub hash: String,
    /// The folder shipped (canonical): the deploy's `snapshot_root`.
    pub root: PathBuf,
    /// The manifest's folder (canonical, inside `root`): the deploy's `base_dir`.
    pub folder: PathBuf,
    /// Regular files (links not counted).
    pub files: usize,
}

/// Builds the snapshot a deploy of the manifest at `manifest` ships: its `root` (default the
/// manifest's folder), which must hold the manifest; without the folders in `leave_out`.
pub fn for_manifest(
    manifest: &Path,
    text: &str,
    max_bytes: u64,
    leave_out: &[PathBuf],
) -> Result<Bundle, String> {
    let absolute =
        std::path::absolute(manifest).map_err(|e| format!("{}: {e}", manifest.display()))?;
    let folder = absolute.parent().unwrap_or(Path::new("/")).to_path_buf();
    let root = match hopper_core::manifest::code_root(text) {
        Some(root) => folder.join(root),
        None => folder.clone(),
    };
    let root = std::fs::canonicalize(&root).map_err(|e| format!("root {}: {e}", root.display()))?;
    let folder =
        std::fs::canonicalize(&folder).map_err(|e| format!("{}: {e}", folder.display()))?;
    if !folder.starts_with(&root) {
        return Err(format!(
            "root {} must be the manifest's folder or a folder above it",
            root.display()
        ));
    }
    let files = collect(&root, max_bytes, leave_out)?;
    // A manifest that does not parse is the server's to report, with every fault.
    if let Ok(parsed) = hopper_core::manifest::parse(&manifest.display().to_string(), text, &folder)
    {
        requirements_shipped(manifest, &parsed.functions, &folder, &root, &files)?;
        commands_shipped(manifest, &parsed.functions, &folder, &root, &files)?;
    }
    let regular = files
        .iter()
        .filter(|f| std::fs::symlink_metadata(&f.from).is_ok_and(|m| m.is_file()))
        .count();
    let listing = listing_digest(&files);
    let cached = listing
        .as_ref()
        .and_then(|l| digests::read(&root).filter(|d| &d.listing == l));
    if let Some(cached) = cached {
        return Ok(Bundle {
            packed: None,
            sources: files,
            unchanged: true,
            hash: cached.hash,
            folder,
            files: regular,
            root,
        });
    }
    let bytes = build(&files).map_err(|e| format!("cannot pack {}: {e}", root.display()))?;
    let hash = hash(&bytes);
    if let Some(listing) = listing {
        digests::write(
            &root,
            &digests::Digest {
                listing,
                hash: hash.clone(),
            },
        );
    }
    Ok(Bundle {
        packed: Some(bytes),
        sources: files,
        unchanged: false,
        hash,
        folder,
        files: regular,
        root,
    })
}

impl Bundle {
    /// The gzip-compressed tar: as packed, or packed now when the files were
    /// [`Self::unchanged`]. Fails when the files changed since (in content only, keeping
    /// their size and modification time): the packing no longer has [`Self::hash`].
    pub fn bytes(&self) -> Result<Vec<u8>, String> {
        if let Some(bytes) = &self.packed {
            return Ok(bytes.clone());
        }
        let bytes = build(&self.sources)
            .map_err(|e| format!("cannot pack {}: {e}", self.root.display()))?;
        if hash(&bytes) != self.hash {
            digests::forget(&self.root);
            return Err(format!(
                "the files of {} changed while they were being deployed; deploy again",
                self.root.display()
            ));
        }
        Ok(bytes)
    }
}

/// A digest of what packing `files` depends on: each one's path, size, modification time,
/// mode and link target (and the packing's version). None when one cannot be read.
fn listing_digest(files: &[Source]) -> Option<String> {
    use sha2::Digest;
    use std::os::unix::fs::MetadataExt;
    let mut sorted: Vec<&Source> = files.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    let mut digest = sha2::Sha256::new();
    digest.update(b"hopper snapshot listing 1\n");
    for file in sorted {
        let meta = std::fs::symlink_metadata(&file.from).ok()?;
        let target = if meta.file_type().is_symlink() {
            std::fs::read_link(&file.from).ok()?.display().to_string()
        } else {
            String::new()
        };
        digest.update(
            format!(
                "{}\0{}\0{}.{:09}\0{:o}\0{target}\n",
                file.path,
                meta.len(),
                meta.mtime(),
                meta.mtime_nsec(),
                meta.mode()
            )
            .as_bytes(),
        );
    }
    Some(hex::encode(digest.finalize()))
}

/// The digest cache: per folder, the listing it was last packed with and that packing's hash,
/// in `$XDG_CACHE_HOME/hopper/digests` (else `~/.cache/hopper/digests`). Best effort: a
/// cache that cannot be read or written only costs a packing.
mod digests {
    use std::path::{Path, PathBuf};

    #[derive(serde::Serialize, serde::Deserialize)]
    pub struct Digest {
        pub listing: String,
        pub hash: String,
    }

    fn file(root: &Path) -> Option<PathBuf> {
        use sha2::Digest as _;
        let base = std::env::var_os("XDG_CACHE_HOME")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
        let name = hex::encode(sha2::Sha256::digest(root.as_os_str().as_encoded_bytes()));
        Some(
            base.join("hopper")
                .join("digests")
                .join(format!("{name}.json")),
        )
    }

    pub fn read(root: &Path) -> Option<Digest> {
        let text = std::fs::read_to_string(file(root)?).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Written whole or not at all (a temporary file renamed over the old one).
    pub fn write(root: &Path, digest: &Digest) {
        let Some(path) = file(root) else {
            return;
        };
        let Some(dir) = path.parent() else {
            return;
        };
        let Ok(text) = serde_json::to_string(digest) else {
            return;
        };
        let written = std::fs::create_dir_all(dir)
            .and_then(|()| tempfile::NamedTempFile::new_in(dir))
            .and_then(|mut tmp| {
                std::io::Write::write_all(&mut tmp, text.as_bytes())?;
                tmp.persist(&path).map_err(|e| e.error)?;
                Ok(())
            });
        if let Err(e) = written {
            tracing::debug!(error = %e, "cannot write the snapshot digest cache");
        }
    }

    pub fn forget(root: &Path) {
        if let Some(path) = file(root) {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Refuses a snapshot without a requirements file its manifest names (missing, or left out
/// by an ignore file): the version could never build its environment.
fn requirements_shipped(
    manifest: &Path,
    functions: &[hopper_core::FunctionSpec],
    folder: &Path,
    root: &Path,
    files: &[Source],
) -> Result<(), String> {
    for f in functions {
        let Some(file) = f.python.as_ref().and_then(|p| p.requirements_file.as_ref()) else {
            continue;
        };
        let inside = Path::new(file)
            .strip_prefix(root)
            .ok()
            .and_then(|p| p.to_str().map(str::to_string));
        let shipped = inside
            .as_ref()
            .is_some_and(|p| files.iter().any(|s| &s.path == p));
        if !shipped {
            let shown = Path::new(file)
                .strip_prefix(folder)
                .map_or_else(|_| file.clone(), |p| p.display().to_string());
            return Err(format!(
                "{}: functions.{}.python.requirements: {shown} is not in the code snapshot of {} (missing, outside it, or left out by .gitignore or .hopperignore)",
                manifest.display(),
                f.name,
                root.display()
            ));
        }
    }
    Ok(())
}

/// Refuses a snapshot that leaves out a file a function's `command` or `serve` names (an
/// argument that is a file in its working folder, left out by an ignore file): its workers
/// could never run it.
fn commands_shipped(
    manifest: &Path,
    functions: &[hopper_core::FunctionSpec],
    folder: &Path,
    root: &Path,
    files: &[Source],
) -> Result<(), String> {
    let mut faults = Vec::new();
    for f in functions {
        let workdir = folder.join(&f.workdir);
        for (field, args) in [("command", &f.command), ("serve", &f.serve)] {
            for arg in args.iter().filter(|a| !a.is_empty() && !a.starts_with('-')) {
                let path = workdir.join(arg);
                let Ok(real) = std::fs::canonicalize(&path) else {
                    continue;
                };
                let Some(inside) = real
                    .strip_prefix(root)
                    .ok()
                    .filter(|_| real.is_file())
                    .and_then(|p| p.to_str())
                else {
                    continue;
                };
                if !files.iter().any(|s| s.path == inside) {
                    faults.push(format!(
                        "{}: functions.{}.{field}: {arg} is left out of the code snapshot of {} by .gitignore or .hopperignore, so no worker could run it; ship it, or deploy with --no-snapshot",
                        manifest.display(),
                        f.name,
                        root.display()
                    ));
                }
            }
        }
    }
    if faults.is_empty() {
        Ok(())
    } else {
        Err(faults.join("\n"))
    }
}

/// What a snapshot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Contents {
    pub files: u64,
    /// Bytes of its files, uncompressed.
    pub bytes: u64,
}

/// Reads a snapshot through, checking every entry: relative paths without `..`, regular files,
/// folders and links only, at most `max_bytes` of files.
pub fn inspect(bytes: &[u8], max_bytes: u64) -> Result<Contents, SnapshotError> {
    let mut contents = Contents { files: 0, bytes: 0 };
    each_entry(bytes, |mut entry, path| {
        match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                contents.files += 1;
                contents.bytes += entry.size();
                if contents.bytes > max_bytes {
                    return Err(SnapshotError::TooLarge { max: max_bytes });
                }
                if contents.files > MAX_FILES {
                    return Err(SnapshotError::TooManyFiles);
                }
                // Read it through, so a truncated archive is found now.
                std::io::copy(&mut entry, &mut std::io::sink())
                    .map_err(|e| SnapshotError::Format(e.to_string()))?;
            }
            tar::EntryType::Directory => {}
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(|e| SnapshotError::Format(e.to_string()))?
                    .unwrap_or_default()
                    .into_owned();
                if climbs_out(Path::new(&path), &target) {
                    return Err(SnapshotError::Entry {
                        path,
                        reason: format!("a link to {} leaves the snapshot", target.display()),
                    });
                }
            }
            other => {
                return Err(SnapshotError::Entry {
                    path,
                    reason: format!("{other:?} entries are not allowed"),
                })
            }
        }
        Ok(())
    })?;
    Ok(contents)
}

/// Whether the link at `link` (relative, inside a snapshot) to `target` points outside it:
/// an absolute target, or one that climbs above the root with `..`.
fn climbs_out(link: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return true;
    }
    let mut depth = link.components().count() as i64 - 1;
    for part in target.components() {
        match part {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            _ => {}
        }
        if depth < 0 {
            return true;
        }
    }
    false
}

/// Calls `f` with each entry of a snapshot and its checked path, in order.
fn each_entry(
    bytes: &[u8],
    mut f: impl FnMut(
        tar::Entry<'_, flate2::read::GzDecoder<&[u8]>>,
        String,
    ) -> Result<(), SnapshotError>,
) -> Result<(), SnapshotError> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    archive.set_preserve_mtime(false);
    let entries = archive
        .entries()
        .map_err(|e| SnapshotError::Format(e.to_string()))?;
    for entry in entries {
        let entry = entry.map_err(|e| SnapshotError::Format(e.to_string()))?;
        let path = entry_path(&entry)?;
        f(entry, path)?;
    }
    Ok(())
}

fn entry_path<R: Read>(entry: &tar::Entry<'_, R>) -> Result<String, SnapshotError> {
    let path = entry
        .path()
        .map_err(|e| SnapshotError::Format(e.to_string()))?
        .into_owned();
    let shown = path.display().to_string();
    let safe = path
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if !safe || path.as_os_str().is_empty() {
        return Err(SnapshotError::Entry {
            path: shown,
            reason: "paths must be relative and stay inside the snapshot".into(),
        });
    }
    Ok(shown)
}

/// A regular file of an unpacked snapshot and the SHA-256 (hex) of its bytes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileDigest {
    pub path: String,
    pub sha256: String,
}

/// Unpacks a snapshot into `dest` (which must exist and be empty) and returns its files'
/// digests, in order.
pub fn unpack(bytes: &[u8], dest: &Path) -> Result<Vec<FileDigest>, SnapshotError> {
    let mut digests = Vec::new();
    each_entry(bytes, |mut entry, path| {
        let regular = matches!(
            entry.header().entry_type(),
            tar::EntryType::Regular | tar::EntryType::Continuous
        );
        if !entry.unpack_in(dest)? {
            return Err(SnapshotError::Entry {
                path,
                reason: "it would be written outside the snapshot".into(),
            });
        }
        if regular {
            digests.push(FileDigest {
                sha256: file_sha256(&dest.join(&path))?,
                path,
            });
        }
        Ok(())
    })?;
    Ok(digests)
}

/// The SHA-256 (hex) of a file's bytes.
pub fn file_sha256(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sources(dir: &Path, names: &[&str]) -> Vec<Source> {
        names
            .iter()
            .map(|n| Source {
                path: n.to_string(),
                from: dir.join(n),
            })
            .collect()
    }

    #[test]
    fn the_same_files_give_the_same_bytes_and_unpack_as_they_were() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("pkg")).unwrap();
        std::fs::write(dir.path().join("a.py"), "print(1)\n").unwrap();
        std::fs::write(dir.path().join("pkg/b.txt"), "b").unwrap();
        let one = build(&sources(dir.path(), &["pkg/b.txt", "a.py"])).unwrap();
        // Touching a file changes nothing: times are not part of a snapshot.
        std::fs::write(dir.path().join("a.py"), "print(1)\n").unwrap();
        let two = build(&sources(dir.path(), &["a.py", "pkg/b.txt"])).unwrap();
        assert_eq!(hash(&one), hash(&two));
        assert!(is_hash(&hash(&one)));
        assert_eq!(
            inspect(&one, 1_000).unwrap(),
            Contents {
                files: 2,
                bytes: 10
            }
        );
        assert!(matches!(
            inspect(&one, 5),
            Err(SnapshotError::TooLarge { .. })
        ));
        let out = tempfile::tempdir().unwrap();
        let digests = unpack(&one, out.path()).unwrap();
        assert_eq!(digests.len(), 2);
        assert_eq!(
            std::fs::read_to_string(out.path().join("pkg/b.txt")).unwrap(),
            "b"
        );
        assert!(inspect(b"not a tar", 1_000).is_err());
    }
}
