//! Idempotency keys: a request retried with the same `Idempotency-Key` is not
//! applied again and gets the response of the first attempt.
//!
//! Keys live as long as [`RETENTION_SECS`] (and at most [`MAX_KEYS`], oldest
//! dropped first). A key is durable with the events it covered: it is written
//! in the same write-ahead log record, and when that record's head is flushed
//! the live keys are copied to `idempotency.json` (replaced atomically) before
//! the log file is deleted.

use std::collections::{HashMap, VecDeque};
use std::fs;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::durable::replace_file_durable;
use crate::error::{Error, Result};

/// How long a key is remembered, in seconds (24 hours).
pub const RETENTION_SECS: i64 = 24 * 3600;
/// How many keys are remembered at most.
pub const MAX_KEYS: usize = 100_000;
/// Longest stored response; a longer one (a huge list of rejected events) is
/// replaced by its accepted count and a note, to bound memory.
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024;
/// Longest accepted key, in bytes.
pub const MAX_KEY_BYTES: usize = 256;

const FILE: &str = "idempotency.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    key: String,
    response: String,
    created_secs: i64,
}

#[derive(Debug, Default)]
pub struct IdempotencyKeys {
    by_key: HashMap<String, String>,
    order: VecDeque<(String, i64)>,
}

impl IdempotencyKeys {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.by_key.get(key).map(String::as_str)
    }

    pub fn insert(&mut self, key: String, response: String, created_secs: i64) {
        let response = bounded_response(response);
        if self.by_key.insert(key.clone(), response).is_none() {
            self.order.push_back((key, created_secs));
        }
        while self.order.len() > MAX_KEYS {
            self.pop_oldest();
        }
    }

    pub fn expire(&mut self, now_secs: i64) {
        while self
            .order
            .front()
            .is_some_and(|(_, t)| *t < now_secs - RETENTION_SECS)
        {
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        if let Some((k, _)) = self.order.pop_front() {
            self.by_key.remove(&k);
        }
    }

    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(FILE);
        let mut keys = IdempotencyKeys::default();
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(keys),
            Err(e) => return Err(Error::io("read", &path)(e)),
        };
        let entries: Vec<Entry> = serde_json::from_slice(&bytes).map_err(|e| {
            Error::corrupt(
                &path,
                0,
                format!("idempotency keys are not valid JSON: {e}"),
            )
        })?;
        for e in entries {
            keys.insert(e.key, e.response, e.created_secs);
        }
        Ok(keys)
    }

    pub fn store_durable(&self, dir: &Path) -> Result<()> {
        let entries: Vec<Entry> = self
            .order
            .iter()
            .filter_map(|(k, t)| {
                self.by_key.get(k).map(|r| Entry {
                    key: k.clone(),
                    response: r.clone(),
                    created_secs: *t,
                })
            })
            .collect();
        let bytes = serde_json::to_vec(&entries).map_err(|e| Error::Unavailable(e.to_string()))?;
        replace_file_durable(dir, FILE, &bytes)
    }
}

/// Keeps a stored response within [`MAX_RESPONSE_BYTES`]: a longer one keeps
/// its `accepted` count and says how many rejections were dropped.
/// A response too long to keep keeps its counts: `accepted` and
/// `rejected_total` (the HTTP API stores responses already cut to fit, so
/// this only guards the limit).
fn bounded_response(response: String) -> String {
    if response.len() <= MAX_RESPONSE_BYTES {
        return response;
    }
    let v: serde_json::Value = serde_json::from_str(&response).unwrap_or_default();
    let total = v
        .get("rejected_total")
        .cloned()
        .unwrap_or_else(|| v["rejected"].as_array().map_or(0, Vec::len).into());
    serde_json::json!({
        "accepted": v["accepted"],
        "rejected": [],
        "rejected_total": total,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_expire_are_capped_and_long_responses_are_bounded() {
        let mut keys = IdempotencyKeys::default();
        keys.insert("old".into(), "{}".into(), 0);
        keys.insert("new".into(), "{}".into(), RETENTION_SECS + 10);
        keys.expire(RETENTION_SECS + 5);
        assert!(keys.get("old").is_none());
        assert!(keys.get("new").is_some());
        let rejected: Vec<_> = (0..5_000)
            .map(|i| serde_json::json!({"index": i, "error": "bad"}))
            .collect();
        let long = serde_json::json!({"accepted": 3, "rejected": rejected}).to_string();
        keys.insert("long".into(), long, 1);
        let stored: serde_json::Value =
            serde_json::from_str(keys.get("long").unwrap_or("")).unwrap_or_default();
        assert_eq!(stored["accepted"], 3);
        assert_eq!(stored["rejected_total"], 5_000);
        assert!(keys.get("long").unwrap_or("").len() <= MAX_RESPONSE_BYTES);
    }
}
