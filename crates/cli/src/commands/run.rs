//! `hopper run`: an ephemeral server in a temporary folder, one call, its output, exit.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hopper_server::ServerConfig;
use hopper_store_sqlite::SqliteStore;
use tokio_util::sync::CancellationToken;

use super::apps::deploy_request;
use super::calls::{copy_logs_to_stderr, report};
use super::{duration, init_logging, read_input};
use crate::args::InputArgs;
use crate::exit::{self, Code};

pub async fn run(
    manifest: &Path,
    function: &str,
    input: &InputArgs,
    timeout: Option<&str>,
    json: bool,
) -> anyhow::Result<Code> {
    init_logging("warn");
    let timeout = timeout.map(|t| duration("--timeout", t)).transpose()?;
    let request = deploy_request(manifest)?;
    let parsed = hopper_core::manifest::parse(
        &request.file,
        &request.manifest,
        Path::new(&request.base_dir),
    )
    .map_err(|e| exit::usage(e.to_string()))?;
    if !parsed.functions.iter().any(|f| f.name == function) {
        let names: Vec<&str> = parsed.functions.iter().map(|f| f.name.as_str()).collect();
        return Err(exit::usage(format!(
            "{} has no function {function:?} (it has: {})",
            request.file,
            names.join(", ")
        )));
    }
    let input = read_input(input)?;

    let data = tempfile::tempdir().context("cannot create a temporary folder")?;
    let store = SqliteStore::open(&data.path().join("hopper.db")).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot listen on loopback")?;
    let url = format!("http://{}", listener.local_addr()?);
    let config = ServerConfig {
        worker_program: Some(std::env::current_exe().context("cannot find this program's path")?),
        lease: Duration::from_secs(10),
        worker_log: Some("warn".into()),
        // Nothing waits for this server: its inputs stop when it does.
        worker_drain: Duration::ZERO,
        kill_grace: Duration::from_millis(500),
        ..ServerConfig::default()
    };
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(hopper_server::run(
        config,
        Arc::new(store.clone()),
        listener,
        shutdown.clone(),
    ));

    let outcome = async {
        let client = hopper_sdk::Client::new(&url, None)?;
        client.deploy(&request).await?;
        let call = client
            .spawn(&format!("{}.{function}", parsed.app), input, None)
            .await?;
        let call = client
            .wait(
                &call.id,
                timeout.unwrap_or(Duration::from_secs(366 * 86_400)),
            )
            .await?;
        copy_logs_to_stderr(&client, &call.id).await?;
        anyhow::Ok(call)
    }
    .await;
    shutdown.cancel();
    let _ = server.await;
    store.close().await;
    let mut call = outcome?;
    if !json {
        // Its logs, a failure's traceback among them, are on stderr already.
        if let Some(error) = call.error.as_mut() {
            error.traceback = None;
        }
    }
    // The temporary server is gone by now: no dashboard link.
    report(&call, json, None)
}
