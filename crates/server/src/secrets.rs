//! Named secrets: their values are sealed with the server's key before they reach the store,
//! and opened only to give a leased function its environment.
//!
//! Values are sealed with ChaCha20-Poly1305: a fresh random nonce each time, and the secret's
//! name as associated data, so a sealed value copied to another name does not open. The key is
//! `HOPPER_SECRET_KEY`, or a key file beside the SQLite database made the first time a secret
//! is set. What that protects: a copy of the database alone (a backup, a PostgreSQL dump, a
//! read-only database login) holds no value in the clear. What not: whoever can read the key
//! (the server's environment or its data folder) or holds an `admin` token (who can deploy a
//! function that prints its environment) can learn the values.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

use base64::Engine;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hopper_core::api::{InputError, Resealed};
use hopper_core::FunctionSpec;
use hopper_store::{SecretRow, Store};

/// The format prefix of a sealed value: `v1:` + base64(nonce ‖ ciphertext).
const SEALED_V1: &str = "v1:";
const NONCE_BYTES: usize = 12;

/// A 256-bit key that seals secrets. Its `Debug` shows nothing of it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey([u8; 32]);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(…)")
    }
}

impl SecretKey {
    /// A key written as 64 hex digits (surrounding white space ignored).
    pub fn from_hex(text: &str) -> Result<Self, String> {
        let bytes = hex::decode(text.trim())
            .map_err(|e| format!("expected 64 hex digits (32 bytes): {e}"))?;
        let key: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
            format!(
                "expected 64 hex digits (32 bytes), not {} digits",
                b.len() * 2
            )
        })?;
        Ok(Self(key))
    }

    fn generate() -> Self {
        Self(ChaCha20Poly1305::generate_key(&mut OsRng).into())
    }
}

/// Why the secrets could not be sealed again.
#[derive(Debug, thiserror::Error)]
pub enum ResealError {
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error(transparent)]
    Store(#[from] hopper_store::StoreError),
}

/// Why a secret could not be sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("this server has no key to seal secrets with: start every server with the same HOPPER_SECRET_KEY (64 hex digits, e.g. from `openssl rand -hex 32`)")]
    NoKey,
    #[error("the secret key file {path}: {message}")]
    KeyFile { path: String, message: String },
    #[error("secret {name:?} was sealed with another key than this server's (HOPPER_SECRET_KEY or the key file changed): give the old key after the new one in HOPPER_SECRET_KEY, comma-separated, or set it again with `hopper secrets set {name} …`")]
    WrongKey { name: String },
    #[error("secret {name:?} is stored in a form this server cannot read")]
    Corrupt { name: String },
}

/// The server's secret keys: the first of `HOPPER_SECRET_KEY`'s seals, any of them (and the
/// key file, if there is one) opens, so that a key can be replaced without a moment when
/// secrets cannot be read (see [`Keyring::reseal`]). The key file is loaded (or made) once,
/// on first use.
pub struct Keyring {
    given: Vec<SecretKey>,
    file: Option<PathBuf>,
    loaded: Mutex<Option<Vec<SecretKey>>>,
}

impl Keyring {
    /// A keyring with `given` (`HOPPER_SECRET_KEY`, newest first), and the key kept in `file`.
    pub fn new(given: Vec<SecretKey>, file: Option<PathBuf>) -> Self {
        Self {
            given,
            file,
            loaded: Mutex::new(None),
        }
    }

    /// Seals every stored secret again with the sealing key (the first of
    /// `HOPPER_SECRET_KEY`), opening each with whichever key opens it: after this, the older
    /// keys can be dropped. Secrets no key opens are left as they are, and named.
    pub async fn reseal(&self, store: &dyn Store, now: i64) -> Result<Resealed, ResealError> {
        let mut done = Resealed::default();
        for row in store.secret_list().await? {
            let values = match self.open(&row) {
                Ok(values) => values,
                Err(SecretError::WrongKey { .. } | SecretError::Corrupt { .. }) => {
                    done.unreadable.push(row.name.clone());
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let sealed = self.seal(&row.name, &values)?;
            store
                .secret_put(hopper_store::SecretPutParams {
                    name: row.name.clone(),
                    keys: row.keys.clone(),
                    sealed,
                    now,
                })
                .await?;
            done.resealed += 1;
        }
        Ok(done)
    }

    /// Reads the key file if there is one, so a damaged file stops the server at start rather
    /// than the first lease of a function with secrets.
    pub fn check(&self) -> Result<(), SecretError> {
        match self.key(false) {
            Ok(_) | Err(SecretError::NoKey) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Says in the log when the key in use cannot open the secrets stored (the key changed,
    /// or `HOPPER_SECRET_KEY` now overrides a key file), so the cause is known before the
    /// first function that reads one fails.
    pub async fn warn_if_changed(&self, store: &dyn Store) {
        if !self.given.is_empty() {
            if let Some(file) = self.file.as_ref().filter(|f| f.exists()) {
                tracing::warn!(file = %file.display(), "HOPPER_SECRET_KEY is set, so new secrets are sealed with it; secrets sealed with the key file still open (`hopper secrets reseal` moves them to HOPPER_SECRET_KEY)");
            }
        }
        let Ok(stored) = store.secret_list().await else {
            return;
        };
        let unreadable: Vec<&str> = stored
            .iter()
            .filter(|row| matches!(self.open(row), Err(SecretError::WrongKey { .. })))
            .map(|row| row.name.as_str())
            .collect();
        if !unreadable.is_empty() {
            tracing::warn!(secrets = %unreadable.join(", "), "these secrets were sealed with another key than this server's: functions that read them fail with secret_unavailable until they are set again");
        }
    }

    /// The key that seals: the first given; else the key file's (with `create`, a missing key
    /// file is made, mode 0600).
    fn key(&self, create: bool) -> Result<SecretKey, SecretError> {
        if let Some(key) = self.given.first() {
            return Ok(key.clone());
        }
        self.file_key(create)
    }

    /// The keys that open, the sealing key first: every given key, then the key file's.
    fn opening_keys(&self) -> Result<Vec<SecretKey>, SecretError> {
        let mut keys = self.given.clone();
        match self.file_keys(false) {
            Ok(found) => keys.extend(found),
            // With keys given, a missing or unreadable key file only means one key fewer.
            Err(_) if !keys.is_empty() => {}
            Err(e) => return Err(e),
        }
        Ok(keys)
    }

    /// The key kept in the key file (made with `create` when missing).
    fn file_key(&self, create: bool) -> Result<SecretKey, SecretError> {
        let keys = self.file_keys(create)?;
        keys.first().cloned().ok_or(SecretError::NoKey)
    }

    /// The keys of the key file, the sealing one first, read once and again after
    /// [`Keyring::reload`] (made with `create` when missing: one new key).
    fn file_keys(&self, create: bool) -> Result<Vec<SecretKey>, SecretError> {
        let Some(path) = &self.file else {
            return Err(SecretError::NoKey);
        };
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(keys) = loaded.as_ref() {
            return Ok(keys.clone());
        }
        let keys = match read_key_file(path) {
            Ok(keys) => keys,
            Err(ReadKeys::Missing) if create => {
                let key = SecretKey::generate();
                write_new_key_file(path, &key).map_err(|e| SecretError::KeyFile {
                    path: path.display().to_string(),
                    message: e.to_string(),
                })?;
                tracing::info!(path = %path.display(), "made the key that seals secrets; keep it with the database (a backup without it cannot open them)");
                vec![key]
            }
            Err(ReadKeys::Missing) => return Err(SecretError::NoKey),
            Err(ReadKeys::Bad(e)) => return Err(e),
        };
        *loaded = Some(keys.clone());
        Ok(keys)
    }

    /// Reads the key file again (a key added before the others, or an old one dropped); keeps
    /// the keys read before when it cannot be read.
    pub fn reload(&self, why: &str) {
        let Some(path) = &self.file else {
            return;
        };
        match read_key_file(path) {
            Ok(keys) => {
                let n = keys.len();
                *self.loaded.lock().unwrap_or_else(|p| p.into_inner()) = Some(keys);
                tracing::info!(path = %path.display(), keys = n, why, "read the secret key file again");
            }
            Err(ReadKeys::Missing) => {}
            Err(ReadKeys::Bad(e)) => {
                tracing::warn!(error = %e, why, "cannot read the secret key file again; the keys read before still hold")
            }
        }
    }

    /// The key file, if this keyring has one.
    pub fn file(&self) -> Option<&std::path::Path> {
        self.file.as_deref()
    }

    /// Seals a secret's values for the store.
    pub fn seal(
        &self,
        name: &str,
        values: &BTreeMap<String, String>,
    ) -> Result<String, SecretError> {
        let key = self.key(true)?;
        let cipher = ChaCha20Poly1305::new(Key::from_slice(&key.0));
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        let plain = serde_json::to_vec(values).map_err(|_| SecretError::Corrupt {
            name: name.to_string(),
        })?;
        let sealed = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: &plain,
                    aad: name.as_bytes(),
                },
            )
            .map_err(|_| SecretError::Corrupt {
                name: name.to_string(),
            })?;
        let mut bytes = nonce.to_vec();
        bytes.extend_from_slice(&sealed);
        Ok(format!(
            "{SEALED_V1}{}",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        ))
    }

    /// Opens a sealed secret: its values by key.
    pub fn open(&self, row: &SecretRow) -> Result<BTreeMap<String, String>, SecretError> {
        let corrupt = || SecretError::Corrupt {
            name: row.name.clone(),
        };
        let keys = self.opening_keys()?;
        let encoded = row.sealed.strip_prefix(SEALED_V1).ok_or_else(corrupt)?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| corrupt())?;
        if bytes.len() < NONCE_BYTES {
            return Err(corrupt());
        }
        let (nonce, sealed) = bytes.split_at(NONCE_BYTES);
        let plain = keys
            .iter()
            .find_map(|key| {
                ChaCha20Poly1305::new(Key::from_slice(&key.0))
                    .decrypt(
                        Nonce::from_slice(nonce),
                        Payload {
                            msg: sealed,
                            aad: row.name.as_bytes(),
                        },
                    )
                    .ok()
            })
            .ok_or_else(|| SecretError::WrongKey {
                name: row.name.clone(),
            })?;
        serde_json::from_slice(&plain).map_err(|_| corrupt())
    }
}

/// Why a key file gave no keys.
enum ReadKeys {
    Missing,
    Bad(SecretError),
}

/// The keys of a key file: 64 hex digits a line, the sealing key first; blank lines and `#`
/// comments skipped.
fn read_key_file(path: &std::path::Path) -> Result<Vec<SecretKey>, ReadKeys> {
    let fail = |message: String| {
        ReadKeys::Bad(SecretError::KeyFile {
            path: path.display().to_string(),
            message,
        })
    };
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(ReadKeys::Missing),
        Err(e) => return Err(fail(e.to_string())),
    };
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        keys.push(SecretKey::from_hex(line).map_err(|e| fail(format!("line {}: {e}", i + 1)))?);
    }
    if keys.is_empty() {
        return Err(fail("no key in it (expected 64 hex digits a line)".into()));
    }
    Ok(keys)
}

fn write_new_key_file(path: &std::path::Path, key: &SecretKey) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    writeln!(file, "{}", hex::encode(key.0))?;
    file.sync_all()
}

/// What the secrets of leased functions give them: for each function key that reads secrets,
/// its environment variables (every key of each secret in `secrets`, then each `secret_env`
/// variable), or why they cannot be had.
#[derive(Debug, Default)]
pub struct LeasedSecrets {
    pub env: BTreeMap<String, BTreeMap<String, String>>,
    pub errors: BTreeMap<String, InputError>,
}

/// Opens the secrets the given functions read, each secret once.
pub async fn for_functions(
    store: &dyn Store,
    keyring: &Keyring,
    functions: &BTreeMap<String, FunctionSpec>,
) -> Result<LeasedSecrets, hopper_store::StoreError> {
    let mut out = LeasedSecrets::default();
    let mut names: Vec<String> = functions
        .values()
        .flat_map(|spec| spec.secret_names())
        .map(str::to_string)
        .collect();
    if names.is_empty() {
        return Ok(out);
    }
    names.sort_unstable();
    names.dedup();
    let mut opened: BTreeMap<String, Result<BTreeMap<String, String>, String>> = BTreeMap::new();
    for row in store.secret_get_many(&names).await? {
        let values = keyring.open(&row).map_err(|e| e.to_string());
        opened.insert(row.name.clone(), values);
    }
    for (key, spec) in functions {
        if spec.secret_names().is_empty() {
            continue;
        }
        match environment(spec, &opened) {
            Ok(env) => {
                out.env.insert(key.clone(), env);
            }
            Err(message) => {
                tracing::warn!(function = %key, "{message}");
                out.errors
                    .insert(key.clone(), InputError::new("secret_unavailable", message));
            }
        }
    }
    Ok(out)
}

fn environment(
    spec: &FunctionSpec,
    opened: &BTreeMap<String, Result<BTreeMap<String, String>, String>>,
) -> Result<BTreeMap<String, String>, String> {
    let secret = |name: &str| {
        match opened.get(name) {
        Some(Ok(values)) => Ok(values),
        Some(Err(e)) => Err(e.clone()),
        None => Err(format!(
            "{} reads secret {name:?}, which no longer exists: set it again with `hopper secrets set {name} KEY=VALUE…`",
            spec.qualified_name()
        )),
    }
    };
    let mut env = BTreeMap::new();
    for name in &spec.secrets {
        env.extend(secret(name)?.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    for (var, at) in &spec.secret_env {
        let value = secret(&at.secret)?.get(&at.key).ok_or_else(|| {
            format!(
                "{} reads key {:?} of secret {:?}, which has no such key any more",
                spec.qualified_name(),
                at.key,
                at.secret
            )
        })?;
        env.insert(var.clone(), value.clone());
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn row(name: &str, sealed: String) -> SecretRow {
        SecretRow {
            name: name.into(),
            keys: vec![],
            sealed,
            created_at: 0,
            updated_at: 0,
        }
    }

    #[test]
    fn a_sealed_value_opens_only_under_its_name_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let ring = Keyring::new(Vec::new(), Some(dir.path().join("secret.key")));
        let values = BTreeMap::from([("API_KEY".to_string(), "sk-live-123".to_string())]);
        let sealed = ring.seal("stripe", &values).unwrap();
        assert!(!sealed.contains("sk-live-123"));
        assert_eq!(ring.open(&row("stripe", sealed.clone())).unwrap(), values);
        // Copied to another name, or opened under another key: refused.
        assert!(matches!(
            ring.open(&row("other", sealed.clone())),
            Err(SecretError::WrongKey { .. })
        ));
        let other = Keyring::new(vec![SecretKey::generate()], None);
        assert!(matches!(
            other.open(&row("stripe", sealed)),
            Err(SecretError::WrongKey { .. })
        ));
        // The key file was made once and is read back by a new keyring.
        let again = Keyring::new(Vec::new(), Some(dir.path().join("secret.key")));
        let sealed = ring.seal("stripe", &values).unwrap();
        assert_eq!(again.open(&row("stripe", sealed)).unwrap(), values);
    }

    #[test]
    fn a_server_without_a_key_says_how_to_give_one() {
        let ring = Keyring::new(Vec::new(), None);
        let e = ring.seal("stripe", &BTreeMap::new()).unwrap_err();
        assert!(e.to_string().contains("HOPPER_SECRET_KEY"), "{e}");
        assert!(SecretKey::from_hex("abc").is_err());
        assert!(SecretKey::from_hex(&"ab".repeat(32)).is_ok());
    }
}
