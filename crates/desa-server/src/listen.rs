//! The front door: accepting connections, each with a budget.
//!
//! - At most `max_connections` are open at once; past that the listener
//!   stops accepting and new connections wait in the kernel's backlog.
//! - A request's headers must arrive within `header_timeout`, counted from
//!   the connection's start or, on a kept-alive connection, from the end of
//!   the previous response: the same timer closes idle keep-alive
//!   connections (hyper's `header_read_timeout`).
//! - On shutdown the listener closes, every connection is asked to finish
//!   its request in flight and close, and those still open after
//!   `shutdown_grace` are dropped: a client whose request was dropped got
//!   no answer, so nothing it did not see acknowledged is claimed stored.
//!
//! The body's own deadline is the ingest handler's (`ServerConfig`), which
//! reads it before taking an ingest permit.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

/// Connection limits of the listener, and its TLS if it speaks HTTPS.
#[derive(Clone)]
pub struct FrontDoor {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub shutdown_grace: Duration,
    /// HTTPS only, with the certificate read last (`--tls-cert`).
    pub tls: Option<Arc<crate::tls::Tls>>,
}

impl Default for FrontDoor {
    fn default() -> Self {
        FrontDoor {
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(10),
            tls: None,
        }
    }
}

/// Serves one connection until it closes, or finishes its request in flight
/// once `stop` changes.
async fn serve_connection<I>(
    io: I,
    service: TowerToHyperService<Router>,
    header_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(header_timeout));
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then drains the
/// open connections for at most `door.shutdown_grace`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    door: FrontDoor,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(door.max_connections.max(1)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            _ = &mut shutdown => break,
        };
        let (io, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors (EMFILE) and the like: wait for
                    // connections to close rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        while connections.try_join_next().is_some() {}
        let service = TowerToHyperService::new(router.clone());
        let stop = stop_rx.clone();
        let header_timeout = door.header_timeout;
        let acceptor = door.tls.as_ref().map(|t| t.acceptor());
        connections.spawn(async move {
            let _slot = slot;
            match acceptor {
                None => serve_connection(io, service, header_timeout, stop).await,
                // The handshake has the headers' deadline; a client that
                // does not speak TLS (plain HTTP) fails it and is closed.
                Some(acceptor) => {
                    match tokio::time::timeout(header_timeout, acceptor.accept(io)).await {
                        Ok(Ok(tls)) => serve_connection(tls, service, header_timeout, stop).await,
                        Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                }
            }
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(door.shutdown_grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = connections.len(),
            grace_secs = door.shutdown_grace.as_secs_f64(),
            "connections still open after the shutdown grace are closed without an answer"
        );
        connections.abort_all();
    }
    Ok(())
}
