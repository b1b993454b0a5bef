//! The web console at `/`: one page, its script, style and coastline, all
//! compiled into the binary so a node without internet access serves it
//! whole. The page asks the public API (`/v1/types`, `/v1/query/*`) like any
//! other client, so it needs no endpoint of its own and no token to load; the
//! API calls it makes carry the token the user types when the node has an
//! auth file.
//!
//! The coastline is Natural Earth's 1:110m land (public domain), written by
//! `scripts/console/land.py`.

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

const INDEX_HTML: &str = include_str!("../console/index.html");
const CONSOLE_JS: &str = include_str!("../console/console.js");
const CONSOLE_CSS: &str = include_str!("../console/console.css");
const LAND_JSON: &str = include_str!("../console/land.json");

/// Only the node's own scripts, styles and API: the page runs no inline code,
/// loads nothing from elsewhere and cannot be framed.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'";

/// The console's routes, for the server's router.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| asset("text/html; charset=utf-8", INDEX_HTML)))
        .route(
            "/console/console.js",
            get(|| asset("text/javascript; charset=utf-8", CONSOLE_JS)),
        )
        .route(
            "/console/console.css",
            get(|| asset("text/css; charset=utf-8", CONSOLE_CSS)),
        )
        .route(
            "/console/land.json",
            get(|| asset("application/json", LAND_JSON)),
        )
}

async fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            // A new binary may serve a new page under the same path.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}
