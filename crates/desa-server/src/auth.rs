//! Bearer tokens with scopes (`--auth-file`). The file holds one
//! credential per line, `NAME SCOPES SHA256HEX`: a name for the logs,
//! a comma list of `ingest`, `query` and `metrics`, and the lowercase hex
//! SHA-256 of the token (the node never sees a token at rest); `#` starts a
//! comment. With a file, every endpoint but `/healthz` wants
//! `Authorization: Bearer TOKEN` whose credential has the endpoint's scope:
//! `POST /v1/events` ingest, `/v1/query/*`, `/v1/types` and the parts
//! cluster workers ask of each other (`/v1/internal/*`) query, `/metrics`
//! metrics.
//!
//! A presented token is hashed and compared with every credential's hash in
//! constant time, all of them, so neither the time taken nor which
//! credential matched tells anything about a guess.

use std::path::Path;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::AppState;

/// What a credential may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Ingest,
    Query,
    Metrics,
}

impl Scope {
    const ALL: [Scope; 3] = [Scope::Ingest, Scope::Query, Scope::Metrics];

    pub fn name(self) -> &'static str {
        match self {
            Scope::Ingest => "ingest",
            Scope::Query => "query",
            Scope::Metrics => "metrics",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }

    /// The scope an endpoint wants; `None` for `/healthz` and paths that
    /// serve nothing.
    pub fn of_path(path: &str) -> Option<Scope> {
        if path == "/v1/events" {
            Some(Scope::Ingest)
        } else if path.starts_with("/v1/query/")
            || path.starts_with("/v1/internal/")
            || path == "/v1/types"
        {
            Some(Scope::Query)
        } else if path == "/metrics" {
            Some(Scope::Metrics)
        } else {
            None
        }
    }

    /// Parses a comma list of scope names.
    pub fn parse_list(list: &str) -> Result<Vec<Scope>, String> {
        list.split(',')
            .map(|name| {
                Scope::ALL
                    .into_iter()
                    .find(|s| s.name() == name)
                    .ok_or_else(|| {
                        format!("unknown scope {name:?} (the scopes are ingest, query and metrics)")
                    })
            })
            .collect()
    }
}

struct Credential {
    name: String,
    scopes: u8,
    hash: [u8; 32],
}

/// The credentials of an auth file.
pub struct AuthFile {
    credentials: Vec<Credential>,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No `Authorization: Bearer` header.
    Missing,
    /// A token no credential has.
    Unknown,
    /// A known token without the scope.
    Scope(Scope),
}

impl Denied {
    /// The `reason` label of `desa_http_auth_failures_total`.
    pub fn reason(self) -> &'static str {
        match self {
            Denied::Missing => "missing",
            Denied::Unknown => "unknown",
            Denied::Scope(_) => "scope",
        }
    }
}

/// The lowercase hex SHA-256 of a token: what an auth file holds.
pub fn token_hash_hex(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn parse_hex32(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in text.as_bytes().chunks(2).enumerate() {
        out[i] = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

impl AuthFile {
    /// Reads and checks an auth file; an error names the file and the line.
    pub fn load(path: &Path) -> Result<AuthFile, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading --auth-file {}: {e}", path.display()))?;
        AuthFile::parse(&text).map_err(|e| format!("--auth-file {}: {e}", path.display()))
    }

    /// Parses the text of an auth file.
    pub fn parse(text: &str) -> Result<AuthFile, String> {
        let mut credentials = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let at = |msg: String| format!("line {}: {msg}", i + 1);
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [name, scopes, hash] = fields[..] else {
                return Err(at(format!(
                    "expected `NAME SCOPES SHA256HEX`, got {} fields",
                    fields.len()
                )));
            };
            let scopes = Scope::parse_list(scopes)
                .map_err(at)?
                .into_iter()
                .fold(0, |bits, s| bits | s.bit());
            let hash = parse_hex32(hash).ok_or_else(|| {
                at("the hash must be 64 lowercase hex digits (the SHA-256 of the token)".into())
            })?;
            if credentials.iter().any(|c: &Credential| c.name == name) {
                return Err(at(format!("the name {name:?} is given twice")));
            }
            credentials.push(Credential {
                name: name.to_owned(),
                scopes,
                hash,
            });
        }
        Ok(AuthFile { credentials })
    }

    pub fn len(&self) -> usize {
        self.credentials.len()
    }

    pub fn is_empty(&self) -> bool {
        self.credentials.is_empty()
    }

    /// The name of the credential of `token` if it has `need`.
    pub fn check(&self, token: Option<&str>, need: Scope) -> Result<&str, Denied> {
        let token = token.ok_or(Denied::Missing)?;
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found: Option<&Credential> = None;
        for c in &self.credentials {
            if bool::from(c.hash.ct_eq(&hash)) {
                found = Some(c);
            }
        }
        let c = found.ok_or(Denied::Unknown)?;
        if c.scopes & need.bit() == 0 {
            return Err(Denied::Scope(need));
        }
        Ok(&c.name)
    }
}

/// The token of an `Authorization: Bearer TOKEN` header, if there is one.
fn bearer(req: &Request) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Refuses a request whose token lacks its endpoint's scope, when the node
/// has an auth file: `401` with `WWW-Authenticate: Bearer` without a known
/// token, `403` naming the scope with one.
pub async fn require(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let Some(need) = Scope::of_path(req.uri().path()) else {
        return next.run(req).await;
    };
    let Some(auth) = app.auth.current() else {
        return next.run(req).await;
    };
    let denied = match auth.check(bearer(&req), need) {
        Ok(_) => return next.run(req).await,
        Err(d) => d,
    };
    app.metrics
        .auth_failures
        .with_label_values(&[denied.reason()])
        .inc();
    match denied {
        Denied::Missing | Denied::Unknown => {
            let message = if denied == Denied::Missing {
                "this node wants `Authorization: Bearer TOKEN` (see --auth-file)"
            } else {
                "the token is not one this node knows"
            };
            (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                axum::Json(serde_json::json!({ "error": message })),
            )
                .into_response()
        }
        Denied::Scope(s) => (
            StatusCode::FORBIDDEN,
            axum::Json(serde_json::json!({
                "error": format!("the token has no `{}` scope, which this endpoint needs", s.name())
            })),
        )
            .into_response(),
    }
}

/// The auth file in force: none, or the last one read (replaced on SIGHUP).
#[derive(Default)]
pub struct Auth {
    file: std::sync::RwLock<Option<std::sync::Arc<AuthFile>>>,
}

impl Auth {
    pub fn new(file: Option<AuthFile>) -> Auth {
        Auth {
            file: std::sync::RwLock::new(file.map(std::sync::Arc::new)),
        }
    }

    pub fn current(&self) -> Option<std::sync::Arc<AuthFile>> {
        self.file.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Puts `file` in force.
    pub fn replace(&self, file: AuthFile) {
        *self.file.write().unwrap_or_else(|e| e.into_inner()) = Some(std::sync::Arc::new(file));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_gives_each_token_its_scopes() {
        let text = format!(
            "# sensors and dashboards\nsensors ingest {}\n\ndash query,metrics {} # grafana\n",
            token_hash_hex("s3cret"),
            token_hash_hex("d4sh")
        );
        let f = AuthFile::parse(&text).unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!(f.check(Some("s3cret"), Scope::Ingest), Ok("sensors"));
        assert_eq!(
            f.check(Some("s3cret"), Scope::Query),
            Err(Denied::Scope(Scope::Query))
        );
        assert_eq!(f.check(Some("d4sh"), Scope::Metrics), Ok("dash"));
        assert_eq!(f.check(Some("nope"), Scope::Query), Err(Denied::Unknown));
        assert_eq!(f.check(None, Scope::Query), Err(Denied::Missing));
    }

    #[test]
    fn a_malformed_file_names_the_line() {
        let h = token_hash_hex("x");
        for (text, want) in [
            (format!("a ingest {h}\nb ingest\n"), "line 2: expected"),
            (
                format!("\n\na ingest,admin {h}"),
                "line 3: unknown scope \"admin\"",
            ),
            ("a query ABC".to_owned(), "line 1: the hash must be 64"),
            (
                format!("a query {h}\na ingest {h}"),
                "line 2: the name \"a\" is given twice",
            ),
        ] {
            let err = AuthFile::parse(&text).err().unwrap();
            assert!(err.starts_with(want), "{err}");
        }
    }

    #[test]
    fn endpoints_want_their_scopes() {
        assert_eq!(Scope::of_path("/v1/events"), Some(Scope::Ingest));
        assert_eq!(Scope::of_path("/v1/query/topk"), Some(Scope::Query));
        assert_eq!(Scope::of_path("/v1/query/series"), Some(Scope::Query));
        assert_eq!(Scope::of_path("/v1/types"), Some(Scope::Query));
        assert_eq!(Scope::of_path("/v1/internal/partial"), Some(Scope::Query));
        assert_eq!(Scope::of_path("/metrics"), Some(Scope::Metrics));
        assert_eq!(Scope::of_path("/healthz"), None);
    }
}
