//! `GET /v1/query/{avg,topk,geo,series}` and `GET /v1/types`: strict
//! parameter parsing, then the store.

use std::collections::HashMap;
use std::time::Instant;

use axum::extract::{Query, State};
use axum::Json;
use desa_model::{GeoBox, QueryError, TimeWindow, MAX_TOPK_K};
use serde::Serialize;

use crate::error::ApiError;
use crate::AppState;

type Params = Query<HashMap<String, String>>;

fn text<'a>(p: &'a HashMap<String, String>, name: &'static str) -> Result<&'a str, QueryError> {
    p.get(name)
        .map(String::as_str)
        .filter(|s| !s.is_empty())
        .ok_or(QueryError::Missing(name))
}

fn int(p: &HashMap<String, String>, name: &'static str) -> Result<i64, QueryError> {
    let s = text(p, name)?;
    s.parse().map_err(|_| QueryError::Malformed {
        name,
        expected: "an integer (unix seconds)",
        got: s.to_owned(),
    })
}

fn float(p: &HashMap<String, String>, name: &'static str) -> Result<f64, QueryError> {
    let s = text(p, name)?;
    s.parse::<f64>()
        .ok()
        .filter(|x| x.is_finite())
        .ok_or(QueryError::Malformed {
            name,
            expected: "a finite number",
            got: s.to_owned(),
        })
}

fn window(p: &HashMap<String, String>) -> Result<TimeWindow, QueryError> {
    TimeWindow::new(int(p, "start")?, int(p, "end")?)
}

/// Runs a query off the async runtime and records its latency.
///
/// A query is admitted while fewer than `max_concurrent_queries` run (it
/// waits for a slot within its deadline), and its answer is awaited for at
/// most `query_timeout`: past it the client gets 503. The work itself is
/// bounded by the stored data, never by the window, and a query that timed
/// out finishes in the background still holding its slot, so that at most
/// `max_concurrent_queries` cores are ever busy with queries.
async fn timed<T: Send + 'static>(
    app: &AppState,
    kind: &'static str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    let started = Instant::now();
    let limit = app.cfg.query_timeout;
    let refused = |reason: &'static str, message: String| {
        app.metrics
            .queries_refused
            .with_label_values(&[reason])
            .inc();
        ApiError::Unavailable {
            message,
            retry_after_secs: 1,
        }
    };
    let slot = tokio::time::timeout(limit, app.query_permits.clone().acquire_owned())
        .await
        .map_err(|_| {
            refused(
                "busy",
                format!(
                    "{} queries are running (--max-concurrent-queries) and none finished within {} s (--query-timeout)",
                    app.cfg.max_concurrent_queries,
                    limit.as_secs_f64()
                ),
            )
        })?
        .map_err(|_| ApiError::BadRequest("the node is shutting down".into()))?;
    let work = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        f()
    });
    let left = limit.saturating_sub(started.elapsed());
    let out = tokio::time::timeout(left, work)
        .await
        .map_err(|_| {
            refused(
                "timeout",
                format!(
                    "the query did not finish within {} s (--query-timeout)",
                    limit.as_secs_f64()
                ),
            )
        })?
        .map_err(|e| ApiError::BadRequest(format!("query failed: {e}")))?;
    app.metrics
        .query_duration
        .with_label_values(&[kind])
        .observe(started.elapsed().as_secs_f64());
    Ok(out)
}

pub async fn avg(
    State(app): State<AppState>,
    Query(p): Params,
) -> Result<Json<impl Serialize>, ApiError> {
    let device = text(&p, "device_id")?.to_owned();
    let ty = text(&p, "type")?.to_owned();
    let w = window(&p)?;
    let store = app.store.clone();
    Ok(Json(
        timed(&app, "avg", move || store.avg(&device, &ty, w)).await??,
    ))
}

pub async fn topk(
    State(app): State<AppState>,
    Query(p): Params,
) -> Result<Json<impl Serialize>, ApiError> {
    let ty = text(&p, "type")?.to_owned();
    let w = window(&p)?;
    let k = int(&p, "k")?;
    if k < 1 || k > MAX_TOPK_K as i64 {
        return Err(QueryError::KOutOfRange(k).into());
    }
    let store = app.store.clone();
    Ok(Json(
        timed(&app, "topk", move || store.topk(&ty, w, k as usize)).await??,
    ))
}

pub async fn geo(
    State(app): State<AppState>,
    Query(p): Params,
) -> Result<Json<impl Serialize>, ApiError> {
    let ty = text(&p, "type")?.to_owned();
    let bbox = GeoBox::new(
        float(&p, "min_lat")?,
        float(&p, "max_lat")?,
        float(&p, "min_lon")?,
        float(&p, "max_lon")?,
    )
    .map_err(QueryError::BadBox)?;
    let w = window(&p)?;
    let store = app.store.clone();
    Ok(Json(
        timed(&app, "geo", move || store.geo(&ty, &bbox, w)).await??,
    ))
}

/// `GET /v1/query/series`: a device's average step by step; the steps
/// are checked (at most `MAX_SERIES_POINTS`) before a query slot is taken.
pub async fn series(
    State(app): State<AppState>,
    Query(p): Params,
) -> Result<Json<impl Serialize>, ApiError> {
    let device = text(&p, "device_id")?.to_owned();
    let ty = text(&p, "type")?.to_owned();
    let w = window(&p)?;
    let step = int(&p, "step")?;
    desa_model::series_windows(w, step)?;
    let store = app.store.clone();
    Ok(Json(
        timed(&app, "series", move || store.series(&device, &ty, w, step)).await???,
    ))
}

/// `GET /v1/types`: the stored types, their events and first and last
/// event time.
pub async fn types(State(app): State<AppState>) -> Result<Json<impl Serialize>, ApiError> {
    let store = app.store.clone();
    Ok(Json(timed(&app, "types", move || store.types()).await??))
}

/// `POST /v1/internal/partial`: this worker's part of a query for some
/// shards (cluster mode; see `desa_store::part`), asked by another worker.
/// `409` when this worker does not hold them all (a rebalance moved them):
/// the asker answers for them itself. It takes no query slot: parts never
/// ask further, and a slot held by the asker while it waits for this part
/// must not wait on slots here held by askers waiting for its own parts.
pub async fn partial(
    State(app): State<AppState>,
    Json(req): Json<desa_store::PartRequest>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    req.query.window().map_err(ApiError::BadRequest)?;
    req.query.bbox().map_err(ApiError::BadRequest)?;
    let store = app.store.clone();
    let started = Instant::now();
    let work = tokio::task::spawn_blocking(move || store.partial(&req));
    let part = tokio::time::timeout(app.cfg.query_timeout, work)
        .await
        .map_err(|_| ApiError::Unavailable {
            message: format!(
                "the part did not finish within {} s (--query-timeout)",
                app.cfg.query_timeout.as_secs_f64()
            ),
            retry_after_secs: 1,
        })?
        .map_err(|e| ApiError::BadRequest(format!("query failed: {e}")))??;
    app.metrics
        .query_duration
        .with_label_values(&["partial"])
        .observe(started.elapsed().as_secs_f64());
    Ok(match part {
        Some(p) => Json(p).into_response(),
        None => (
            axum::http::StatusCode::CONFLICT,
            Json(serde_json::json!({"error": "this worker does not hold those shards now"})),
        )
            .into_response(),
    })
}
