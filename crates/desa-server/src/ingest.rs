//! `POST /v1/events`.

use std::io::Read;
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use desa_engine::idempotency::{MAX_KEY_BYTES, MAX_RESPONSE_BYTES};
use desa_model::{admit, BodyError, BodyFormat, Lateness, Limits, Rejection};
use desa_store::{StoreError, WriteOutcome, WriteRequest};
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;
use crate::AppState;

/// Rejections listed in a response at most; `rejected_total` counts them
/// all. Bounds the response (and the one stored for an idempotency key)
/// whatever the body holds.
pub const MAX_LISTED_REJECTIONS: usize = 1_000;

#[derive(Serialize)]
struct IngestResponse<'a> {
    accepted: usize,
    rejected: &'a [Rejection],
    rejected_total: usize,
}

fn body_format(headers: &HeaderMap) -> Result<BodyFormat, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match mime.as_str() {
        "application/x-ndjson" | "application/ndjson" | "application/jsonl" => {
            Ok(BodyFormat::Ndjson)
        }
        "application/json" => Ok(BodyFormat::Json),
        "" => Err(ApiError::UnsupportedMedia(
            "Content-Type is missing; send application/x-ndjson or application/json".into(),
        )),
        other => Err(ApiError::UnsupportedMedia(format!(
            "Content-Type {other} is not supported; send application/x-ndjson or application/json"
        ))),
    }
}

/// Reads the body up to `max_bytes`. An oversized body is still read (and
/// dropped) up to [`DRAIN_FACTOR`] times the limit, so that the client, still
/// sending, receives the 413 instead of a connection reset.
///
/// Bytes kept are counted against `budget` (in KiB) as they arrive, so that
/// bodies being read, which hold no ingest permit, still hold no more memory
/// than the node allows for them; a client that stops sending holds what it
/// sent until the body deadline, no more.
async fn read_limited(
    mut body: Body,
    max_bytes: usize,
    declared: Option<usize>,
    budget: &Arc<Semaphore>,
) -> Result<(Bytes, Vec<OwnedSemaphorePermit>), ApiError> {
    use http_body_util::BodyExt;
    // Sized once from Content-Length: growing a 4 MiB body by doubling
    // copied it twice more.
    let mut buf: Vec<u8> = Vec::new();
    let mut held = Vec::new();
    let mut reserved = 0usize;
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| ApiError::BadRequest(format!("reading the body failed: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total += data.len();
        if total <= max_bytes {
            let need = total.div_ceil(1024).saturating_sub(reserved);
            if need > 0 {
                let permits = budget
                    .clone()
                    .acquire_many_owned(u32::try_from(need).unwrap_or(u32::MAX))
                    .await
                    .map_err(|_| ApiError::BadRequest("the node is shutting down".into()))?;
                held.push(permits);
                reserved += need;
            }
            if buf.capacity() == 0 {
                buf.reserve(declared.unwrap_or(0).min(max_bytes).max(data.len()));
            }
            buf.extend_from_slice(&data);
        } else if total > max_bytes.saturating_mul(DRAIN_FACTOR) {
            break;
        }
    }
    if total > max_bytes {
        return Err(too_large(max_bytes));
    }
    Ok((Bytes::from(buf), held))
}

const DRAIN_FACTOR: usize = 4;

fn too_large(max_bytes: usize) -> ApiError {
    ApiError::TooLarge(format!(
        "body is larger than the limit of {max_bytes} bytes (--max-body)"
    ))
}

/// Reads the raw (possibly compressed) body within the limit.
async fn read_body(
    body: Body,
    headers: &HeaderMap,
    max_bytes: usize,
    budget: &Arc<Semaphore>,
) -> Result<(Bytes, Vec<OwnedSemaphorePermit>), ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > max_bytes.saturating_mul(DRAIN_FACTOR)) {
        return Err(too_large(max_bytes));
    }
    read_limited(body, max_bytes, declared, budget).await
}

/// Undoes `Content-Encoding`, keeping the decoded body within the limit.
fn decode(raw: Bytes, headers: &HeaderMap, max_bytes: usize) -> Result<Bytes, ApiError> {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity")
        .trim()
        .to_ascii_lowercase();
    match encoding.as_str() {
        "identity" | "" => Ok(raw),
        "gzip" | "x-gzip" => {
            let mut out = Vec::new();
            // Every member of a multi-member stream (`cat a.gz b.gz`), as
            // gzip(1) reads it; a plain decoder stops after the first.
            let mut decoder =
                flate2::read::MultiGzDecoder::new(&raw[..]).take(max_bytes as u64 + 1);
            decoder
                .read_to_end(&mut out)
                .map_err(|e| ApiError::BadRequest(format!("gzip body cannot be decoded: {e}")))?;
            if out.len() > max_bytes {
                return Err(ApiError::TooLarge(format!(
                    "decompressed body is larger than the limit of {max_bytes} bytes (--max-body)"
                )));
            }
            Ok(Bytes::from(out))
        }
        other => Err(ApiError::UnsupportedMedia(format!(
            "Content-Encoding {other} is not supported; send gzip or no encoding"
        ))),
    }
}

pub async fn post_events(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    // The body is read before any other check can fail, so that an error
    // response never races a client that is still sending (a reset would
    // hide the response); and before an ingest permit is taken, so that a
    // client that stops sending holds no permit, only its connection, and
    // only until the body deadline.
    let deadline = app.cfg.body_timeout;
    let reading = read_body(body, &headers, app.cfg.max_body_bytes, &app.body_budget);
    let (raw, _body_memory) = tokio::time::timeout(deadline, reading)
        .await
        .map_err(|_| {
            app.metrics.body_timeouts.inc();
            ApiError::Timeout(format!(
                "the body did not arrive within {} s (--body-timeout)",
                deadline.as_secs_f64()
            ))
        })??;
    let _permit = app
        .ingest_permits
        .acquire()
        .await
        .map_err(|_| ApiError::BadRequest("the node is shutting down".into()))?;
    let format = body_format(&headers)?;
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => {
            let k = v.to_str().map_err(|_| {
                ApiError::BadRequest("Idempotency-Key must be visible ASCII".into())
            })?;
            if k.is_empty() || k.len() > MAX_KEY_BYTES {
                return Err(ApiError::BadRequest(format!(
                    "Idempotency-Key must be 1 to {MAX_KEY_BYTES} bytes, got {}",
                    k.len()
                )));
            }
            Some(k.to_owned())
        }
    };
    // A store may block (PostgreSQL answers over the network): off the
    // runtime, and no longer than the write may take.
    let write_deadline = tokio::time::Instant::now() + app.cfg.write_timeout;
    let stored = match key.clone() {
        Some(k) => {
            let store = app.store.clone();
            let lookup = tokio::task::spawn_blocking(move || store.idempotent_response(&k));
            tokio::time::timeout_at(write_deadline, lookup)
                .await
                .map_err(|_| unconfirmed(&app))?
                .unwrap_or(None)
        }
        None => None,
    };
    if let Some(stored) = stored {
        app.metrics.requests_replayed.inc();
        return Ok(json_response(stored));
    }
    let bytes = decode(raw, &headers, app.cfg.max_body_bytes)?;

    let limits = Limits {
        now_secs: app.clock.now_secs(),
        max_future_secs: app.cfg.max_future_secs,
        retention_secs: app.cfg.retention_secs,
    };
    let lateness = Lateness {
        watermark: app.store.watermark_secs(),
        max_secs: app.cfg.max_lateness_secs,
    };
    let admitted = tokio::task::spawn_blocking(move || {
        admit(&bytes, format, &limits, lateness, MAX_LISTED_REJECTIONS)
    })
    .await
    .map_err(|e| ApiError::BadRequest(format!("request processing failed: {e}")))?
    .map_err(|e| match e {
        BodyError::NotUtf8 { .. } | BodyError::Malformed(_) => ApiError::BadRequest(e.to_string()),
    })?;
    for secs in &admitted.late_secs {
        app.metrics.event_lateness.observe(*secs as f64);
    }
    let parsed = admitted.body;
    let events: Vec<_> = parsed.events.into_iter().map(|(_, e)| e).collect();
    let accepted = events.len();
    let answer = |listed: usize| {
        serde_json::to_string(&IngestResponse {
            accepted,
            rejected: &parsed.rejected[..listed],
            rejected_total: parsed.rejected_total,
        })
        .unwrap_or_default()
    };
    let response = answer(parsed.rejected.len());
    // What a retry with the same key gets: the same counts, and as many of
    // the first rejections as fit the stored response's limit.
    let stored = match key {
        Some(_) => {
            let mut listed = parsed.rejected.len();
            let mut stored = response.clone();
            while stored.len() > MAX_RESPONSE_BYTES && listed > 0 {
                listed /= 2;
                stored = answer(listed);
            }
            stored
        }
        None => String::new(),
    };
    if accepted > 0 || key.is_some() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        app.store.write_with(
            WriteRequest {
                events,
                idempotency_key: key,
                response: stored,
                source_offsets: Vec::new(),
            },
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        let outcome = tokio::time::timeout_at(write_deadline, rx)
            .await
            .map_err(|_| unconfirmed(&app))?
            .unwrap_or(Err(StoreError::Closed))?;
        if let WriteOutcome::Replayed(stored) = outcome {
            app.metrics.requests_replayed.inc();
            return Ok(json_response(stored));
        }
    }
    app.metrics.events_accepted.inc_by(accepted as u64);
    for (reason, n) in &parsed.rejected_by_reason {
        app.metrics
            .events_rejected
            .with_label_values(&[reason.label()])
            .inc_by(*n);
    }
    app.metrics
        .ingest_duration
        .observe(started.elapsed().as_secs_f64());
    Ok(json_response(response))
}

/// The answer to a write the store did not confirm within
/// `--write-timeout` (a database that stopped answering): the store may
/// still apply it, so a retry should carry the same Idempotency-Key.
fn unconfirmed(app: &AppState) -> ApiError {
    ApiError::Unavailable {
        message: format!(
            "the store did not confirm the write within {} s (--write-timeout): \
             the events may still be stored; retry with the same Idempotency-Key \
             to apply them once",
            app.cfg.write_timeout.as_secs_f64()
        ),
        retry_after_secs: 1,
    }
}

fn json_response(body: String) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}
