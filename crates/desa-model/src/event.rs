//! The event and the rules an event must satisfy to be stored.

use serde::Serialize;

/// Longest accepted `device_id`, in bytes of UTF-8.
pub const MAX_DEVICE_ID_BYTES: usize = 128;
/// Longest accepted `type`, in bytes of UTF-8.
pub const MAX_TYPE_BYTES: usize = 64;
/// Largest accepted `metadata` object, in bytes of its JSON text as sent.
pub const MAX_METADATA_BYTES: usize = 8 * 1024;
/// Deepest accepted nesting of objects and arrays inside `metadata`.
pub const MAX_METADATA_DEPTH: usize = 32;

/// One validated sensor reading.
///
/// `metadata` is kept as the exact JSON text the producer sent, so it is stored
/// verbatim and never re-encoded.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    pub device_id: String,
    #[serde(rename = "timestamp")]
    pub ts_secs: i64,
    #[serde(rename = "type")]
    pub event_type: String,
    pub value: f64,
    pub latitude: f64,
    pub longitude: f64,
    pub metadata: Option<Box<str>>,
}

impl Event {
    /// The event as the JSON object of the wire format.
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(160);
        out.push_str("{\"device_id\":");
        out.push_str(&json_string(&self.device_id));
        out.push_str(",\"timestamp\":");
        out.push_str(&self.ts_secs.to_string());
        out.push_str(",\"type\":");
        out.push_str(&json_string(&self.event_type));
        out.push_str(",\"value\":");
        out.push_str(&json_number(self.value));
        out.push_str(",\"location\":{\"latitude\":");
        out.push_str(&json_number(self.latitude));
        out.push_str(",\"longitude\":");
        out.push_str(&json_number(self.longitude));
        out.push('}');
        if let Some(meta) = &self.metadata {
            out.push_str(",\"metadata\":");
            out.push_str(meta);
        }
        out.push('}');
        out
    }
}

fn json_string(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

fn json_number(x: f64) -> String {
    // `{:?}` prints the shortest text that parses back to the same f64, and
    // its forms ("25.0", "1e-7") are all valid JSON numbers.
    format!("{x:?}")
}

/// The node-dependent limits an event is validated against.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The node's clock, unix seconds.
    pub now_secs: i64,
    /// How far ahead of `now_secs` a timestamp may be.
    pub max_future_secs: i64,
    /// With a retention, how much event time is kept: events before the
    /// first kept second ([`first_kept_secs`]) are refused.
    pub retention_secs: Option<i64>,
}

/// The first second a retention of `keep_secs` keeps at `now_secs`: the
/// start of the UTC day that holds `now - keep`, so that whole days expire.
pub fn first_kept_secs(now_secs: i64, keep_secs: i64) -> i64 {
    const DAY: i64 = 86_400;
    now_secs.saturating_sub(keep_secs).div_euclid(DAY) * DAY
}

impl Limits {
    /// Limits with the default one-day future tolerance at the given clock.
    pub fn at(now_secs: i64) -> Self {
        Limits {
            now_secs,
            max_future_secs: 86_400,
            retention_secs: None,
        }
    }
}

/// Why an event was refused, for metrics and dead letters; the message of
/// an [`Invalid`] says it in words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Reason {
    /// Not JSON, or not an object.
    InvalidJson,
    DeviceId,
    Timestamp,
    /// Further ahead of the node's clock than `max-future`.
    TooFarInFuture,
    /// Further behind the event-time watermark than `max-lateness`.
    TooLate,
    /// Before the first second `--retention` keeps.
    Expired,
    Type,
    Value,
    Location,
    Metadata,
    /// Any other shape error (an unknown field, a repeated one, ...).
    #[default]
    InvalidEvent,
}

impl Reason {
    /// Every reason, in label order.
    pub const ALL: [Reason; 11] = [
        Reason::InvalidJson,
        Reason::DeviceId,
        Reason::Timestamp,
        Reason::TooFarInFuture,
        Reason::TooLate,
        Reason::Expired,
        Reason::Type,
        Reason::Value,
        Reason::Location,
        Reason::Metadata,
        Reason::InvalidEvent,
    ];

    /// The Prometheus label value.
    pub fn label(self) -> &'static str {
        match self {
            Reason::InvalidJson => "invalid_json",
            Reason::DeviceId => "device_id",
            Reason::Timestamp => "timestamp",
            Reason::TooFarInFuture => "too_far_in_future",
            Reason::TooLate => "too_late",
            Reason::Expired => "expired",
            Reason::Type => "type",
            Reason::Value => "value",
            Reason::Location => "location",
            Reason::Metadata => "metadata",
            Reason::InvalidEvent => "invalid_event",
        }
    }
}

/// An event that fails validation: why, and a message naming the field or
/// limit at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct Invalid {
    pub reason: Reason,
    pub message: String,
}

impl Invalid {
    pub(crate) fn new(reason: Reason, message: impl Into<String>) -> Invalid {
        Invalid {
            reason,
            message: message.into(),
        }
    }
}

/// Checks the rules that the JSON types alone do not express.
pub(crate) fn check(event: &Event, limits: &Limits) -> Result<(), Invalid> {
    let dev = event.device_id.len();
    if dev == 0 || dev > MAX_DEVICE_ID_BYTES {
        return Err(Invalid::new(
            Reason::DeviceId,
            format!("device_id must be 1 to {MAX_DEVICE_ID_BYTES} bytes, got {dev}"),
        ));
    }
    let ty = event.event_type.len();
    if ty == 0 || ty > MAX_TYPE_BYTES {
        return Err(Invalid::new(
            Reason::Type,
            format!("type must be 1 to {MAX_TYPE_BYTES} bytes, got {ty}"),
        ));
    }
    if event.ts_secs < 0 {
        return Err(Invalid::new(
            Reason::Timestamp,
            format!(
                "timestamp must be >= 0 (unix seconds), got {}",
                event.ts_secs
            ),
        ));
    }
    let latest = limits.now_secs.saturating_add(limits.max_future_secs);
    if event.ts_secs > latest {
        return Err(Invalid::new(
            Reason::TooFarInFuture,
            format!(
                "timestamp {} is more than max-future ({} s) ahead of the node's clock ({})",
                event.ts_secs, limits.max_future_secs, limits.now_secs
            ),
        ));
    }
    if let Some(keep) = limits.retention_secs {
        let first = first_kept_secs(limits.now_secs, keep);
        if event.ts_secs < first {
            return Err(Invalid::new(
                Reason::Expired,
                format!(
                    "timestamp {} is before {first}, the first second --retention ({keep} s) keeps",
                    event.ts_secs
                ),
            ));
        }
    }
    if !event.value.is_finite() {
        return Err(Invalid::new(
            Reason::Value,
            "value must be a finite number".to_owned(),
        ));
    }
    if !(-90.0..=90.0).contains(&event.latitude) {
        return Err(Invalid::new(
            Reason::Location,
            format!(
                "location.latitude must be in [-90, 90], got {}",
                event.latitude
            ),
        ));
    }
    if !(-180.0..=180.0).contains(&event.longitude) {
        return Err(Invalid::new(
            Reason::Location,
            format!(
                "location.longitude must be in [-180, 180], got {}",
                event.longitude
            ),
        ));
    }
    if let Some(meta) = &event.metadata {
        if meta.len() > MAX_METADATA_BYTES {
            return Err(Invalid::new(
                Reason::Metadata,
                format!(
                    "metadata must be at most {MAX_METADATA_BYTES} bytes of JSON, got {}",
                    meta.len()
                ),
            ));
        }
        if !meta.starts_with('{') {
            return Err(Invalid::new(
                Reason::Metadata,
                "metadata must be a JSON object".to_owned(),
            ));
        }
        let depth = nesting_depth(meta);
        if depth > MAX_METADATA_DEPTH {
            return Err(Invalid::new(
                Reason::Metadata,
                format!("metadata must nest at most {MAX_METADATA_DEPTH} levels deep, got {depth}"),
            ));
        }
    }
    Ok(())
}

/// Deepest nesting of `{`/`[` in JSON text that is already known to be valid.
fn nesting_depth(json: &str) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for b in json.bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                max = max.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// How far `ts_secs` is behind the event-time `watermark` (0 when on time),
/// or the rejection when `max_lateness_secs` is set and exceeded.
pub fn check_lateness(
    ts_secs: i64,
    watermark: Option<i64>,
    max_lateness_secs: Option<i64>,
) -> Result<i64, Invalid> {
    let lateness = watermark.map_or(0, |w| (w - ts_secs).max(0));
    match max_lateness_secs {
        Some(max) if lateness > max => Err(Invalid::new(Reason::TooLate, format!(
            "timestamp {ts_secs} is {lateness} s behind the event-time watermark {}, more than max-lateness ({max} s)",
            watermark.unwrap_or_default()
        ))),
        _ => Ok(lateness),
    }
}
