//! Files a server reads again while it runs (its TLS certificate, its token file): on SIGHUP,
//! and when one of them changes (their modification times are looked at every 10 s).

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

/// How often the files are looked at for a change.
const LOOK_EVERY: Duration = Duration::from_secs(10);

/// A file's modification time, `None` while it cannot be read.
pub fn modified(path: &std::path::Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Calls `reload` with why (`"SIGHUP"`, or that a file changed) until `stop`.
pub async fn watch<F>(paths: Vec<PathBuf>, stop: CancellationToken, reload: F)
where
    F: Fn(&'static str) + Send + 'static,
{
    let mut hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; files are read again when they change");
            None
        }
    };
    let stamps = |paths: &[PathBuf]| paths.iter().map(|p| modified(p)).collect::<Vec<_>>();
    let mut read_at = stamps(&paths);
    loop {
        let hangup = async {
            match hangups.as_mut() {
                Some(s) => s.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = hangup => {
                read_at = stamps(&paths);
                reload("SIGHUP");
            }
            _ = tokio::time::sleep(LOOK_EVERY) => {
                let now = stamps(&paths);
                if now != read_at {
                    read_at = now;
                    reload("the file changed");
                }
            }
        }
    }
}
