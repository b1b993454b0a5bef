//! desa's HTTP API: `POST /v1/events`, the three queries, a device's series,
//! the types held, `/healthz`, `/metrics`, and the web console at `/`. The contract (paths, parameters, JSON shapes, status codes) is
//! stable; see the README for curl examples.
//!
//! It owns request framing (content types, gzip, body limits, idempotency
//! keys, the late-data policy) and maps errors to status codes. It does not
//! validate events itself (`desa-model` does) nor store them (a
//! [`desa_store::Store`] does: the embedded engine or PostgreSQL).
//!
//! Limits: a body is at most `max_body_bytes` (default 16 MiB) before and
//! after gzip decoding; `metadata` at most 8 KiB per event; an
//! `Idempotency-Key` at most 256 bytes, remembered for 24 hours.
#![deny(clippy::unwrap_used, clippy::expect_used)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod auth;
pub mod cache;
mod console;
mod error;
mod ingest;
mod listen;
pub mod metrics;
mod query;
pub mod tls;

use std::future::Future;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use desa_engine::Clock;
use desa_store::Store;

pub use error::ApiError;
pub use listen::FrontDoor;
pub use metrics::Metrics;

/// Request limits and policies of the HTTP API.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub max_body_bytes: usize,
    /// Events further ahead of the node's clock are rejected.
    pub max_future_secs: i64,
    /// When set, events further behind the watermark are rejected.
    pub max_lateness_secs: Option<i64>,
    /// When set, events older than the retention keeps are rejected.
    pub retention_secs: Option<i64>,
    /// Ingest requests parsed and written at once; the others wait their
    /// turn, with their bodies read. With `max_body_bytes` it bounds the
    /// memory ingest can take.
    pub max_concurrent_ingest: usize,
    /// Longest a request body may take to arrive, from the end of its
    /// headers; a slower one gets 408.
    pub body_timeout: std::time::Duration,
    /// Queries running at once; more wait for a slot.
    pub max_concurrent_queries: usize,
    /// Longest a client waits for a query's answer (slot included); 503 past it.
    pub query_timeout: std::time::Duration,
    /// Longest a write waits for the store to confirm it (an idempotency
    /// lookup included); past it the answer is 503, saying that the events
    /// may still be stored.
    pub write_timeout: std::time::Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_body_bytes: 16 << 20,
            max_future_secs: 86_400,
            max_lateness_secs: None,
            retention_secs: None,
            max_concurrent_ingest: 4,
            body_timeout: std::time::Duration::from_secs(30),
            max_concurrent_queries: 8,
            query_timeout: std::time::Duration::from_secs(10),
            write_timeout: std::time::Duration::from_secs(30),
        }
    }
}

/// Another part of the node (a source, say) that reports in `/healthz` and
/// `/metrics`.
pub trait Component: Send + Sync {
    fn name(&self) -> &'static str;
    /// `(healthy, details)`; an unhealthy component makes the node "degraded".
    fn health(&self) -> (bool, serde_json::Value);
    /// Prometheus text exposition.
    fn metrics(&self) -> String;
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub metrics: Arc<Metrics>,
    pub clock: Arc<dyn Clock>,
    pub cfg: Arc<ServerConfig>,
    pub components: Vec<Arc<dyn Component>>,
    /// Permits for concurrent ingest requests (`max_concurrent_ingest`).
    pub ingest_permits: Arc<tokio::sync::Semaphore>,
    /// KiB of request bodies held in memory while they are read, at most
    /// ([`AppState::body_budget_kib`]).
    pub body_budget: Arc<tokio::sync::Semaphore>,
    /// Slots for queries running at once (`max_concurrent_queries`).
    pub query_permits: Arc<tokio::sync::Semaphore>,
    /// The credentials in force (`--auth-file`), if any.
    pub auth: Arc<auth::Auth>,
}

impl AppState {
    /// Memory for bodies being read: as much as the ingest requests that
    /// may run at once can hold, so reading ahead of the permits does not
    /// raise what ingest can take.
    pub fn body_budget_kib(cfg: &ServerConfig) -> usize {
        cfg.max_concurrent_ingest.max(1) * cfg.max_body_bytes.div_ceil(1024).max(1)
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/events", post(ingest::post_events))
        .route("/v1/query/avg", get(query::avg))
        .route("/v1/query/topk", get(query::topk))
        .route("/v1/query/geo", get(query::geo))
        .route("/v1/query/series", get(query::series))
        .route("/v1/types", get(query::types))
        .route("/v1/internal/partial", post(query::partial))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .merge(console::routes())
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require,
        ))
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

async fn not_found(method: axum::http::Method, uri: axum::http::Uri) -> impl IntoResponse {
    let error = format!(
        "no such endpoint: {method} {}; see /v1/events, /v1/query/avg, /v1/query/topk, /v1/query/geo, /v1/query/series, /v1/types, /healthz, /metrics and the console at /",
        uri.path()
    );
    (
        StatusCode::NOT_FOUND,
        Json(serde_json::json!({ "error": error })),
    )
}

async fn healthz(State(app): State<AppState>) -> impl IntoResponse {
    let stats = app.store.stats();
    let (status, storage) = match (&stats.refused, &stats.unavailable) {
        (Some(refused), _) => (StatusCode::SERVICE_UNAVAILABLE, refused.clone()),
        (None, Some(down)) => (StatusCode::OK, format!("unavailable: {down}")),
        (None, None) => (StatusCode::OK, "ok".to_owned()),
    };
    let mut healthy = status == StatusCode::OK && stats.unavailable.is_none();
    let mut parts = serde_json::Map::new();
    for c in &app.components {
        let (ok, details) = c.health();
        healthy &= ok;
        parts.insert(c.name().to_owned(), details);
    }
    let body = serde_json::json!({
        "status": if healthy { "ok" } else { "degraded" },
        "components": parts,
        "storage": storage,
        "backend": stats.backend,
        "stored_events": stats.stored_events,
        "unflushed_events": stats.unflushed_events,
        "segments": stats.segments,
        "summaries": stats.summaries,
        "maintenance": if stats.maintenance_pending { "pending" } else { "idle" },
        "watermark": stats.watermark_secs,
    });
    (status, Json(body))
}

async fn metrics(State(app): State<AppState>) -> impl IntoResponse {
    let mut text = app.metrics.render(&app.store.stats());
    text.push_str(&app.store.metrics());
    for c in &app.components {
        text.push_str(&c.metrics());
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

/// Serves the API on `listener` until `shutdown` resolves, with the
/// connection limits of `door`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    door: FrontDoor,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_router(listener, router(state), door, shutdown).await
}

/// Serves another router (the autoscaler's metrics) behind the same front
/// door: connection limits, header deadline, graceful drain.
pub async fn serve_router(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    door: FrontDoor,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    listen::serve(listener, router, door, shutdown).await
}
