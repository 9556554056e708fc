//! Serving HTTP with limits a slow or hostile client cannot hold open: a request's header
//! must arrive within the request timeout (an idle keep-alive connection is closed after it
//! too), a JSON body within the same time (`api::extract`), and at most `max_connections`
//! connections are served at once (more wait in the kernel's queue), within what the
//! process's open-file limit allows. Workers' long-polls are bounded apart (`max_waiting`, in
//! the lease handler), below this, so they never hold every connection.
//! Long-polls and server-sent-event streams are answers, not requests: no limit here cuts
//! them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Files kept for what is not a connection: the database, log files, pipes to local
/// workers' processes.
const RESERVED_FILES: usize = 256;

/// Raises this process's soft limit of open files to its hard limit, and returns it (`None`
/// when it cannot be read).
pub fn raise_open_files() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    #[allow(unsafe_code)]
    // SAFETY: getrlimit and setrlimit read and write only the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    Some(limit.rlim_cur)
}

/// The connections a server can serve of the `requested`, within the open-file limit (raised
/// first to its hard limit); says so when that is fewer.
pub fn fit_connections(requested: usize) -> usize {
    match raise_open_files() {
        Some(files) if (files as usize) < requested + RESERVED_FILES => {
            let fitting = (files as usize).saturating_sub(RESERVED_FILES).max(64);
            tracing::warn!(
                max_connections = requested,
                open_files = files,
                "the open-file limit allows fewer connections than --max-connections; serving at most {fitting} (raise the limit: ulimit -n, LimitNOFILE=)"
            );
            fitting
        }
        _ => requested,
    }
}

/// Serves `app` on `listener` until `stop`, then lets connections finish their current
/// request and waits for them.
/// With `tls`, each connection is HTTPS: its handshake must finish within `header_timeout` too.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<crate::tls::Tls>>,
    max_connections: usize,
    header_timeout: Duration,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(max_connections.max(1)));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            _ = stop.cancelled() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before accept: not fatal.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => break,
        };
        let app = app.clone();
        let stop = stop.clone();
        let _ = stream.set_nodelay(true);
        let acceptor = tls.as_ref().map(|t| t.acceptor());
        connections.spawn(async move {
            match acceptor {
                None => serve_connection(stream, peer, app, header_timeout, stop).await,
                Some(acceptor) => {
                    match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            serve_connection(stream, peer, app, header_timeout, stop).await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(peer = %peer, error = %e, "TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(peer = %peer, "TLS handshake timed out"),
                    }
                }
            }
            drop(slot);
        });
    }
    while connections.join_next().await.is_some() {}
    Ok(())
}

async fn serve_connection<S>(
    stream: S,
    peer: SocketAddr,
    app: Router,
    header_timeout: Duration,
    stop: CancellationToken,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(app);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(peer = %peer, error = %e, "connection ended");
            }
            return;
        }
        _ = stop.cancelled() => {}
    }
    conn.as_mut().graceful_shutdown();
    if let Err(e) = conn.await {
        tracing::debug!(peer = %peer, error = %e, "connection ended");
    }
}
