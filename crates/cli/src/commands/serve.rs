//! `hopper serve`.

use std::sync::Arc;

use anyhow::Context;
use hopper_server::config::Scope;
use hopper_server::ServerConfig;
use hopper_store_postgres::{PgConfig, PgStore};
use hopper_store_sqlite::SqliteStore;

use super::{duration, init_logging, stop_on_signals};
use crate::args::ServeArgs;
use crate::exit::{self, Code};

/// Resolves the flags into a server configuration; every bad flag is reported together.
fn config(args: &ServeArgs) -> anyhow::Result<ServerConfig> {
    let mut faults = Vec::new();
    let mut config = ServerConfig {
        token: args.token.clone().filter(|t| !t.expose().is_empty()),
        deploy: args.deploy.clone(),
        ..ServerConfig::default()
    };
    match duration("--lease", &args.lease) {
        Ok(d) if d.as_millis() >= 100 => config.lease = d,
        Ok(_) => faults.push("--lease: must be at least 100ms".to_string()),
        Err(e) => faults.push(e.to_string()),
    }
    match duration("--retention", &args.retention) {
        Ok(d) => config.retention = d,
        Err(e) => faults.push(e.to_string()),
    }
    match duration("--map-idle-timeout", &args.map_idle_timeout) {
        Ok(d) => config.map_idle_timeout = d,
        Err(e) => faults.push(e.to_string()),
    }
    match duration("--kill-grace", &args.kill_grace) {
        Ok(d) => config.kill_grace = d,
        Err(e) => faults.push(e.to_string()),
    }
    match duration("--max-wait", &args.max_wait) {
        Ok(d) if d.as_millis() >= 100 => config.max_wait = d,
        Ok(_) => faults.push("--max-wait: must be at least 100ms".to_string()),
        Err(e) => faults.push(e.to_string()),
    }
    match duration("--request-timeout", &args.request_timeout) {
        Ok(d) if d.as_millis() >= 100 => config.request_timeout = d,
        Ok(_) => faults.push("--request-timeout: must be at least 100ms".to_string()),
        Err(e) => faults.push(e.to_string()),
    }
    match duration("--notify-gather", &args.notify_gather) {
        Ok(d) => config.notify_gather = d,
        Err(e) => faults.push(e.to_string()),
    }
    // From the environment only, never a flag: a flag shows in every process listing.
    // Several keys, comma-separated, while one replaces another: the first seals, any opens.
    let secret_keys = std::env::var("HOPPER_SECRET_KEY").unwrap_or_default();
    let given: Vec<&str> = secret_keys
        .split(',')
        .filter(|k| !k.trim().is_empty())
        .collect();
    for (i, key) in given.iter().enumerate() {
        match hopper_server::secrets::SecretKey::from_hex(key) {
            Ok(key) => config.secret_keys.push(key),
            Err(e) if given.len() == 1 => faults.push(format!("HOPPER_SECRET_KEY: {e}")),
            Err(e) => faults.push(format!(
                "HOPPER_SECRET_KEY, key {} of {}: {e}",
                i + 1,
                given.len()
            )),
        }
    }
    if let Some(file) = &args.secret_key_file {
        if !file.is_file() {
            faults.push(format!(
                "--secret-key-file {}: no such file (write 64 hex digits to it, e.g. `openssl rand -hex 32`)",
                file.display()
            ));
        }
        config.secret_key_file = Some(file.clone());
    } else if args.database.is_none() {
        // The key sealing secrets lives beside the SQLite database unless HOPPER_SECRET_KEY
        // gives it.
        config.secret_key_file = Some(args.data.join("secret.key"));
    }
    if let Some(smtp) = &args.smtp {
        match hopper_server::notifier::smtp_transport(smtp.expose()) {
            Ok(_) => config.smtp = Some(smtp.clone()),
            Err(e) => faults.push(e),
        }
    }
    if !hopper_server::notifier::valid_sender(&args.smtp_from) {
        faults.push(format!(
            "--smtp-from {:?}: not an e-mail address",
            args.smtp_from
        ));
    }
    config.smtp_from = args.smtp_from.clone();
    if args.max_log_lines == 0 {
        faults.push("--max-log-lines: must be at least 1".to_string());
    }
    config.max_log_lines = args.max_log_lines;
    if args.max_connections == 0 {
        faults.push("--max-connections: must be at least 1".to_string());
    }
    config.max_connections = args.max_connections;
    if args.max_waiting == 0 {
        faults.push("--max-waiting: must be at least 1".to_string());
    }
    config.max_waiting = args.max_waiting;
    config.allow_hosts = args.allow_hosts.clone();
    for origin in &args.allow_origins {
        match origin.split_once("://") {
            Some(("http" | "https", rest)) if !rest.is_empty() && !rest.contains(['/', '?', '#']) => {
                config.allow_origins.push(origin.clone())
            }
            _ => faults.push(format!(
                "--allow-origin {origin:?}: expected an origin such as https://app.example.com or http://localhost:3000 (scheme, host and port, no path)"
            )),
        }
    }
    config.public_url = args.public_url.clone();
    config.tls_cert = args.tls_cert.clone();
    config.tls_key = args.tls_key.clone();
    match parse_bytes(&args.max_bundle) {
        Some(n) if n >= 1024 => config.max_bundle_bytes = n as u64,
        _ => faults.push(format!(
            "--max-bundle: {:?} is not a size of at least 1KiB (expected e.g. 256MiB)",
            args.max_bundle
        )),
    }
    match parse_bytes(&args.max_blob) {
        Some(n) if n > 0 => config.max_blob_bytes = n as u64,
        _ => faults.push(format!(
            "--max-blob: {:?} is not a size of at least 1 byte (expected e.g. 1GiB, 100MiB or 1000000)",
            args.max_blob
        )),
    }
    let postgres = args.database.is_some();
    match args.blobs.as_deref() {
        Some("database") => {}
        Some("files") if postgres => faults.push(
            "--blobs files: the blobs would be in this server's --data folder, which the other servers of a PostgreSQL cluster cannot read; use database or s3://bucket/prefix".to_string(),
        ),
        None if postgres => {}
        Some("files") | None => {
            match hopper_server::objects::ObjectBlobs::in_folder(&args.data.join("blobs")) {
                Ok(objects) => config.blobs = Some(objects),
                Err(e) if args.blobs.is_some() => faults.push(format!("--blobs files: {e}")),
                Err(e) => faults.push(format!("--data {}: {e}", args.data.display())),
            }
        }
        Some(url) => match hopper_server::objects::ObjectBlobs::from_url(url) {
            Ok(objects) => config.blobs = Some(objects),
            Err(e) => faults.push(e),
        },
    }
    config.dev = args.dev;
    match args.machine.resolve() {
        Ok(machine) => config.machine = machine,
        Err(e) => faults.push(e),
    }
    config.data_dir = Some(args.data.clone());
    config.worker_cache_dir = Some(
        std::path::absolute(args.data.join("snapshots"))
            .unwrap_or_else(|_| args.data.join("snapshots")),
    );
    match parse_bytes(&args.max_payload) {
        Some(n) if n > 0 => config.max_payload_bytes = n,
        _ => faults.push(format!(
            "--max-payload: {:?} is not a size (expected e.g. 4MiB, 512KiB or 1000000)",
            args.max_payload
        )),
    }
    if let Some(path) = &args.token_file {
        match hopper_server::tokens::TokenFile::load(path) {
            Ok(file) => config.token_file = Some(std::sync::Arc::new(file)),
            Err(e) => faults.push(e),
        }
    }
    for (n, spec) in args.scoped_tokens.iter().enumerate() {
        let Some((scopes, token)) = spec.expose().split_once('=') else {
            faults.push(format!(
                "--scoped-token #{}: expected SCOPES=TOKEN, e.g. read,submit=s3cret",
                n + 1
            ));
            continue;
        };
        let parsed: Option<Vec<Scope>> =
            scopes.split(',').map(|s| Scope::parse(s.trim())).collect();
        match parsed {
            Some(list) if !list.is_empty() && !token.is_empty() => config.scoped_tokens.push((list, token.to_string().into())),
            Some(_) => faults.push(format!("--scoped-token #{}: give at least one scope and a token", n + 1)),
            None => faults.push(format!(
                "--scoped-token #{}: unknown scope in {scopes:?} (expected read, submit, work or admin)",
                n + 1
            )),
        }
    }
    if let Some(url) = args.database.as_ref().map(|u| u.expose()) {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            faults.push("--database: expected a postgres:// URL".to_string());
        }
    }
    if let Some(schema) = &args.database_schema {
        let valid = schema.len() <= 63
            && schema
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
            && schema
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !valid {
            faults.push(format!(
                "--database-schema {schema:?}: expected a schema name of lowercase letters, digits and '_' (starting with a letter or '_', at most 63)"
            ));
        }
    }
    if args.database_pool == 0 {
        faults.push("--database-pool: must be at least 1".to_string());
    }
    if !args.listen.ip().is_loopback() && !config.requires_token() {
        faults.push(format!(
            "--listen {}: refusing to listen beyond loopback without a token; set --token or HOPPER_TOKEN",
            args.listen
        ));
    }
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        if let Err(e) = hopper_server::tls::Tls::load(cert, key) {
            faults.push(e);
        }
    }
    for path in &args.deploy {
        if !path.is_file() {
            faults.push(format!("--deploy {}: no such file", path.display()));
        }
    }
    if !args.no_workers {
        config.worker_program = Some(
            std::env::current_exe().context("cannot find this program's path for local workers")?,
        );
    }
    if faults.is_empty() {
        Ok(config)
    } else {
        Err(exit::usage(faults.join("\n")))
    }
}

/// `4MiB`, `512KiB`, `1GiB`, `4MB` or plain bytes.
pub fn parse_bytes(text: &str) -> Option<usize> {
    hopper_core::resources::parse_bytes(text).and_then(|n| usize::try_from(n).ok())
}

/// The store `serve` was asked for: SQLite in `--data`, or PostgreSQL at `--database`.
struct Opened {
    store: Arc<dyn hopper_store::Store>,
    sqlite: Option<SqliteStore>,
    postgres: Option<PgStore>,
    /// `DATA/hopper.lock`, locked while this server runs: one server per data folder.
    _lock: Option<std::fs::File>,
}

impl Opened {
    async fn close(&self) {
        if let Some(s) = &self.sqlite {
            s.close().await;
        }
        if let Some(p) = &self.postgres {
            p.close().await;
        }
    }
}

async fn open_store(args: &ServeArgs) -> anyhow::Result<Opened> {
    if let Some(url) = &args.database {
        let schema = args.database_schema.clone().filter(|s| !s.is_empty());
        let store = PgStore::open(&PgConfig {
            url: url.expose().clone(),
            max_connections: args.database_pool,
            schema,
        })
        .await
        .context("cannot open the PostgreSQL database")?;
        return Ok(Opened {
            store: Arc::new(store.clone()),
            sqlite: None,
            postgres: Some(store),
            _lock: None,
        });
    }
    std::fs::create_dir_all(&args.data)
        .with_context(|| format!("cannot create the data folder {}", args.data.display()))?;
    let lock = lock_data(&args.data)?;
    let db = args.data.join("hopper.db");
    let store = SqliteStore::open(&db)
        .await
        .with_context(|| format!("cannot open {}", db.display()))?;
    Ok(Opened {
        store: Arc::new(store.clone()),
        sqlite: Some(store),
        postgres: None,
        _lock: Some(lock),
    })
}

/// Takes `DATA/hopper.lock`: a second server on the same folder would share the database
/// file but not the server's state (its workers, its schedules' timers), so it is refused.
/// The lock goes with the process, however it ends.
fn lock_data(data: &std::path::Path) -> anyhow::Result<std::fs::File> {
    use std::io::{Read, Seek, Write};
    let path = data.join("hopper.lock");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    if file.try_lock().is_err() {
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        return Err(exit::usage(format!(
            "another hopper serve{} is using {}: stop it, or give this one another --data",
            match holder.trim() {
                "" => String::new(),
                pid => format!(" (pid {pid})"),
            },
            data.display()
        )));
    }
    file.set_len(0)
        .and_then(|_| file.rewind())
        .and_then(|_| write!(file, "{}", std::process::id()))
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(file)
}

pub async fn run(args: ServeArgs) -> anyhow::Result<Code> {
    init_logging("info");
    let config = config(&args)?;
    if let Some(objects) = &config.blobs {
        objects
            .check()
            .await
            .map_err(|e| exit::usage(format!("--blobs {}: {e}", objects.describe())))?;
    }
    let store = open_store(&args).await?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let address = listener
        .local_addr()
        .context("cannot read the listening address")?;
    // On stdout, so scripts and tests can learn the address when `--listen` says port 0.
    // Whoever started the server may stop reading its stdout; the server goes on.
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let scheme = if args.tls_cert.is_some() {
            "https"
        } else {
            "http"
        };
        let _ = writeln!(out, "hopper listening on {scheme}://{address}").and_then(|_| out.flush());
    }
    let shutdown = stop_on_signals(format!("hopper serve on {address}"))?;
    let result = hopper_server::run(config, store.store.clone(), listener, shutdown).await;
    store.close().await;
    match result {
        Ok(()) => Ok(Code::Ok),
        Err(e @ hopper_server::ServerError::Deploy { .. }) => Err(exit::usage(e.to_string())),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        assert_eq!(parse_bytes("4MiB"), Some(4 << 20));
        assert_eq!(parse_bytes("512KiB"), Some(512 << 10));
        assert_eq!(parse_bytes("1000"), Some(1000));
        assert_eq!(parse_bytes("2MB"), Some(2_000_000));
        assert_eq!(parse_bytes("4 lots"), None);
        assert_eq!(parse_bytes("MiB"), None);
    }
}
