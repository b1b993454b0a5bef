//! A small blocking HTTP client for the desa API (gen, query, demo, bench).

use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
pub struct IngestReply {
    pub accepted: u64,
    /// Every rejection (the node lists the first ones in `rejected`).
    pub rejected_total: u64,
}

#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
    base: String,
    /// `Authorization: Bearer` on every request, for a node with --auth-file.
    token: Option<String>,
}

impl Client {
    pub fn new(base: &str) -> Self {
        let agent = Client::agent().build();
        Client {
            agent,
            base: base.trim_end_matches('/').to_owned(),
            token: None,
        }
    }

    fn agent() -> ureq::AgentBuilder {
        ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(5))
            .timeout(Duration::from_secs(300))
            .max_idle_connections_per_host(64)
    }

    /// Trusts the CAs of the PEM file `cacert` (`--cacert`) for an
    /// `https://` node, instead of the well-known public ones.
    pub fn with_cacert(mut self, cacert: Option<&std::path::Path>) -> Result<Self> {
        let Some(path) = cacert else {
            return Ok(self);
        };
        let config = desa_postgres::tls::https_trusting(path, "--cacert")
            .map_err(|e| anyhow!(e.describe()))?;
        self.agent = Client::agent()
            .tls_config(std::sync::Arc::new(config))
            .build();
        Ok(self)
    }

    /// Shows `token` (`--token`, `DESA_TOKEN`) on every request.
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    fn request(&self, method: &str, path: &str) -> ureq::Request {
        let req = self.agent.request(method, &format!("{}{path}", self.base));
        match &self.token {
            Some(t) => req.set("Authorization", &format!("Bearer {t}")),
            None => req,
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Posts an NDJSON body; an error carries the status and the server's message.
    pub fn post_ndjson(&self, body: &[u8], idempotency_key: Option<&str>) -> Result<IngestReply> {
        let mut req = self
            .request("POST", "/v1/events")
            .set("Content-Type", "application/x-ndjson");
        if let Some(k) = idempotency_key {
            req = req.set("Idempotency-Key", k);
        }
        match req.send_bytes(body) {
            Ok(resp) => resp.into_json().context("reading the ingest response"),
            Err(ureq::Error::Status(code, resp)) => Err(anyhow!(
                "HTTP {code}: {}",
                resp.into_string().unwrap_or_default()
            )),
            Err(e) => Err(anyhow!(e)),
        }
    }

    /// GETs a path with query parameters and returns the JSON body.
    pub fn get_json(&self, path: &str, params: &[(&str, String)]) -> Result<serde_json::Value> {
        let mut req = self.request("GET", path);
        for (k, v) in params {
            req = req.query(k, v);
        }
        match req.call() {
            Ok(resp) => resp.into_json().context("reading the response"),
            Err(ureq::Error::Status(code, resp)) => Err(anyhow!(
                "HTTP {code}: {}",
                resp.into_string().unwrap_or_default()
            )),
            Err(e) => Err(anyhow!(e)),
        }
    }

    /// GETs a path and returns the body as text (`/metrics`).
    pub fn get_text(&self, path: &str) -> Result<String> {
        self.request("GET", path)
            .call()
            .map_err(|e| anyhow!(e))?
            .into_string()
            .context("reading the response")
    }

    /// Waits until `/healthz` answers.
    pub fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if self.get_json("/healthz", &[]).is_ok() {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                return Err(anyhow!(
                    "{} did not become ready within {timeout:?}",
                    self.base
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
