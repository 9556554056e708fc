//! Hopper's server: the HTTP API and the engine components around one [`Store`].
//!
//! # Layout
//! - [`config`]: the server's resolved configuration and its defaults.
//! - [`api`]: the axum router (`/v1`, `/healthz`), its error type and token check.
//! - [`dashboard`]: the web dashboard at `/`, its assets embedded in the binary.
//! - [`dispatcher`]: hands inputs to workers, long-polling while the queue is empty.
//! - [`reaper`]: takes back leases that ran out and fails attempts past their deadline.
//! - [`timekeeper`]: notices pauses of the server and steps of its clock, and moves leases,
//!   deadlines and due times for them before the reaper judges any.
//! - [`cron`]: fires due schedules, each due time once.
//! - [`pruner`]: deletes ended calls after the retention period.
//! - [`notifier`]: failure notifications by webhook and e-mail.
//! - [`provisioner`]: starts and supervises a local worker process per command function.
//! - [`metrics`]: Prometheus metrics at `/metrics`.
//! - [`events`]: in-process wake-ups (new inputs, ended calls, deploys).
//! - [`deploy`]: turning a manifest into a stored app version.
//! - [`listen`], [`tls`]: serving HTTP and HTTPS within connection limits.
//! - [`tokens`], [`reload`]: tokens from a file, and files read again while the server runs.
//!
//! [`run`] starts everything from one place and stops it on one cancellation token, in order:
//! stop accepting requests, stop the local workers (they hand their inputs back), then the
//! background loops.

pub mod api;
pub mod clocksync;
pub mod config;
pub mod cron;
pub mod dashboard;
pub mod deploy;
pub mod dispatcher;
pub mod events;
pub mod listen;
pub mod metrics;
pub mod notifier;
pub mod objects;
pub mod provisioner;
pub mod pruner;
pub mod reaper;
pub mod reload;
pub mod secrets;
pub mod state;
pub mod timekeeper;
pub mod tls;
pub mod tokens;

use std::sync::Arc;

use hopper_store::Store;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::ServerConfig;
pub use state::AppState;

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("refusing to listen on {0} without a token: set --token or HOPPER_TOKEN, or listen on a loopback address")]
    TokenRequired(std::net::SocketAddr),
    #[error("{0}")]
    Config(String),
    #[error("cannot deploy {file}: {message}")]
    Deploy { file: String, message: String },
    #[error(transparent)]
    Store(#[from] hopper_store::StoreError),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// Serves the API on `listener` and runs the engine until `shutdown` is cancelled.
pub async fn run(
    config: ServerConfig,
    store: Arc<dyn Store>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let local = listener.local_addr()?;
    if !local.ip().is_loopback() && !config.requires_token() {
        return Err(ServerError::TokenRequired(local));
    }
    // Install the metrics recorder before anything is recorded.
    let _ = metrics::handle();
    let mut config = config;
    if config.requires_token() {
        // Local workers get a token of their own, with only the `work` scope.
        let worker_token = format!("hw-{}", hopper_core::ids::random_hex());
        config
            .scoped_tokens
            .push((vec![config::Scope::Work], worker_token.clone().into()));
        config.worker_token = Some(worker_token.into());
        // Functions get a token to spawn and read calls with, the same on every server that
        // shares these tokens (a function's worker may talk to any of them).
        // With a token file, the tokens it has at start.
        let from_file = config
            .token_file
            .as_ref()
            .map(|f| f.tokens())
            .unwrap_or_default();
        let mut secrets: Vec<&str> = config.token.iter().map(|t| t.expose().as_str()).collect();
        secrets.extend(
            config
                .scoped_tokens
                .iter()
                .filter(|(_, t)| Some(t) != config.worker_token.as_ref())
                .map(|(_, t)| t.expose().as_str()),
        );
        secrets.extend(from_file.iter().map(String::as_str));
        secrets.sort_unstable();
        let call_token = format!(
            "hc-{}",
            hopper_core::ids::derived_hex("hopper call token", &secrets.join("\n"))
        );
        config.scoped_tokens.push((
            vec![config::Scope::Read, config::Scope::Submit],
            call_token.clone().into(),
        ));
        config.call_token = Some(call_token.into());
    }
    // Connections within the open-file limit, and workers' long-polls within half of them,
    // so waiting workers never hold what spawns, reads and `/healthz` need.
    config.max_connections = listen::fit_connections(config.max_connections);
    config.max_waiting = config.max_waiting.min(config.max_connections / 2).max(1);
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(Arc::new(
            tls::Tls::load(cert, key).map_err(ServerError::Config)?,
        )),
        (None, None) => None,
        _ => return Err(ServerError::Config(
            "give --tls-cert and --tls-key together (the certificate chain and its private key)"
                .into(),
        )),
    };
    if config.public_url.is_none() {
        let scheme = if tls.is_some() { "https" } else { "http" };
        config.public_url = Some(format!("{scheme}://{local}"));
    }
    // Cancelled by the caller, or by this function if serving fails.
    let stop = shutdown.child_token();
    // Servers sharing a database keep its time (SQLite has none: the offset stays 0).
    let clock = hopper_core::clock::OffsetClock::default();
    let shared_clock = match clocksync::measure(&*store).await {
        Ok(Some(_)) => {
            clocksync::sync_once(&*store, &clock).await.ok();
            tracing::info!(offset_ms = clock.offset_ms(), "keeping the database's time");
            true
        }
        Ok(None) => false,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the database's clock yet; retrying in the background");
            true
        }
    };
    let mut state = AppState::new(
        config.clone(),
        store,
        std::sync::Arc::new(clock.clone()),
        stop.clone(),
    );
    state.timekeeper = Arc::new(timekeeper::Timekeeper::new(
        shared_clock.then(|| clock.clone()),
    ));
    state
        .keyring
        .check()
        .map_err(|e| ServerError::Config(e.to_string()))?;
    state.keyring.warn_if_changed(state.store.as_ref()).await;
    for path in &config.deploy {
        deploy::from_file(&state, path).await?;
    }
    // Workers that outlived this server (remote ones, or a restart quicker than their
    // back-off) could not heartbeat while it was down: like a pause, the downtime is not
    // charged to them. Every running lease gets one lease period from now to be renewed.
    if let Err(e) = state
        .store
        .lease_extend_all(hopper_store::LeaseExtend {
            gap_ms: 0,
            until_at_least: state.now() + state.config.lease_ms(),
        })
        .await
    {
        tracing::warn!(error = %e, "cannot give running leases a lease period at start");
    }
    let engine = CancellationToken::new();
    // Other servers sharing the store wake this one's waiters too.
    if let Some(mut wakeups) = state.store.wakeups() {
        let events = state.events.clone();
        let stop = engine.clone();
        tokio::spawn(async move {
            loop {
                let wakeup = tokio::select! {
                    w = wakeups.recv() => w,
                    _ = stop.cancelled() => return,
                };
                match wakeup {
                    Ok(hopper_store::Wakeup::Inputs) => events.inputs_available(),
                    Ok(hopper_store::Wakeup::InputsOf { function, count }) => {
                        events.inputs_for(&function.app, &function.function, count)
                    }
                    Ok(hopper_store::Wakeup::Results) => events.results_recorded(),
                    Ok(hopper_store::Wakeup::CallFinished(id)) => events.call_finished(id),
                    Ok(hopper_store::Wakeup::CallCancelled(id)) => events.call_cancelled(id),
                    // Missed some: wake everything; waiters re-read the store.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        events.inputs_available();
                        events.results_recorded();
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    }
    let mut loops = tokio::task::JoinSet::new();
    if shared_clock {
        loops.spawn(clocksync::run(state.store.clone(), clock, engine.clone()));
    }
    loops.spawn(timekeeper::Timekeeper::run(state.clone(), engine.clone()));
    loops.spawn(watch_schema(state.clone(), engine.clone()));
    loops.spawn(reaper::Reaper::new(state.clone()).run(engine.clone()));
    loops.spawn(pruner::Pruner::new(state.clone()).run(engine.clone()));
    // The notifier subscribes before cron starts, so a firing missed at start-up is told.
    let notifier = notifier::Notifier::new(state.clone()).map_err(ServerError::Config)?;
    loops.spawn(cron::Cron::new(state.clone()).run(engine.clone()));
    loops.spawn(notifier.run(engine.clone()));
    // Local workers reach the server on loopback. Behind HTTPS they get a plain listener of
    // their own on loopback: the certificate names the server's public name, not 127.0.0.1.
    let (local_url, loopback) = match (&tls, &config.worker_program) {
        (Some(_), Some(_)) => {
            let loopback = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
            (format!("http://{}", loopback.local_addr()?), Some(loopback))
        }
        _ => (format!("http://{local}"), None),
    };
    let provisioner = match &config.worker_program {
        Some(program) => {
            // What a local worker's commands leave behind when the worker dies (killed, out of
            // memory) comes here rather than to init, and is killed.
            match hopper_worker::process::adopt_orphans() {
                Ok(()) => {
                    loops.spawn(hopper_worker::process::kill_orphans(
                        std::time::Duration::from_secs(1),
                        stop.clone(),
                    ));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot adopt what dead local workers leave behind")
                }
            }
            let server_url = local_url.clone();
            let p = provisioner::Provisioner::new(state.clone(), program.clone(), server_url);
            Some(tokio::spawn(p.run(stop.clone())))
        }
        None => None,
    };
    tracing::info!(address = %local, "hopper is serving");
    // The API outlives the local workers, so that on shutdown they can still hand back or
    // finish their inputs; then the API stops, then the background loops.
    let http_stop = CancellationToken::new();
    let app = api::router(state.clone());
    if let Some(tls) = &tls {
        loops.spawn(tls.clone().watch(engine.clone()));
    }
    // SIGHUP reads the certificate, token and key files again (each watcher above hears it);
    // it never stops the server, also when it has none of them.
    loops.spawn(reload::watch(Vec::new(), engine.clone(), |why| {
        tracing::info!(why, "files a server reads while it runs are read again")
    }));
    if let Some(path) = state.keyring.file().map(std::path::Path::to_path_buf) {
        let keyring = state.keyring.clone();
        loops.spawn(reload::watch(vec![path], engine.clone(), move |why| {
            keyring.reload(why)
        }));
    }
    if let Some(file) = config.token_file.clone() {
        let paths = vec![file.path().to_path_buf()];
        loops.spawn(reload::watch(paths, engine.clone(), move |why| {
            file.reload(why)
        }));
    }
    if let Some(loopback) = loopback {
        loops.spawn({
            let (app, stop) = (app.clone(), http_stop.clone());
            let (max, timeout) = (config.max_connections, config.request_timeout);
            async move {
                if let Err(e) = listen::serve(loopback, app, None, max, timeout, stop).await {
                    tracing::error!(error = %e, "the local workers' listener failed");
                }
            }
        });
    }
    let mut serving = tokio::spawn(listen::serve(
        listener,
        app,
        tls,
        config.max_connections,
        config.request_timeout,
        http_stop.clone(),
    ));
    let early = tokio::select! {
        r = &mut serving => Some(r),
        _ = stop.cancelled() => None,
    };
    stop.cancel();
    if let Some(p) = provisioner {
        let _ = p.await;
    }
    http_stop.cancel();
    let served = match early {
        Some(r) => r,
        None => serving.await,
    };
    engine.cancel();
    while loops.join_next().await.is_some() {}
    match served {
        Ok(result) => result?,
        Err(e) => return Err(ServerError::Io(std::io::Error::other(e))),
    }
    Ok(())
}

/// How often a running server reads the database's schema version.
pub const SCHEMA_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Watches for the schema moving past this build (another server of the cluster upgraded
/// it): the server then stops taking work, answers `/v1` and `/healthz` with 503 and says why,
/// until it is replaced by an upgraded one.
async fn watch_schema(state: AppState, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(SCHEMA_EVERY) => {}
            _ = stop.cancelled() => return,
        }
        let checked = state.store.schema_version().await.and_then(|v| v.check());
        if let Err(e @ hopper_store::StoreError::SchemaTooNew { .. }) = checked {
            state.schema_moved_ahead(&e);
        }
    }
}
