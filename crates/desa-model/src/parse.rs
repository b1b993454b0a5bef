//! From request bytes to validated events.
//!
//! Parsing takes a fast path for well-formed events: a byte scanner
//! (`fast`) for the usual shape, else a borrowed, typed serde decode; only an
//! event that fails both is decoded again as a generic JSON value to produce
//! an error message that names the field at fault.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::event::{check, Event, Invalid, Limits, Reason};

mod fast;

/// How the body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    /// `application/x-ndjson`: one event per line; blank lines are skipped.
    Ndjson,
    /// `application/json`: one event object, or an array of them.
    Json,
}

/// An event that was not stored, and why.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Rejection {
    /// 0-based position of the event: its line for NDJSON, its array index for JSON.
    pub index: usize,
    pub error: String,
    /// The error's kind (not sent: clients read `error`).
    #[serde(skip)]
    pub reason: Reason,
}

impl Rejection {
    pub fn new(index: usize, invalid: Invalid) -> Rejection {
        Rejection {
            index,
            error: invalid.message,
            reason: invalid.reason,
        }
    }
}

/// The outcome of reading a body: the valid events and the rejected positions.
#[derive(Debug, Default)]
pub struct ParsedBody {
    /// Valid events with their 0-based position in the body.
    pub events: Vec<(usize, Event)>,
    /// The first rejections, in body order, up to the cap the body was read
    /// with; `rejected_total` and `rejected_by_reason` count them all.
    pub rejected: Vec<Rejection>,
    pub rejected_total: usize,
    pub rejected_by_reason: std::collections::BTreeMap<Reason, u64>,
}

impl ParsedBody {
    /// Counts a rejection, keeping it only while fewer than `cap` are kept,
    /// so that a body of junk lines costs memory bounded by its own size.
    pub fn reject(&mut self, r: Rejection, cap: usize) {
        self.rejected_total += 1;
        *self.rejected_by_reason.entry(r.reason).or_default() += 1;
        if self.rejected.len() < cap {
            self.rejected.push(r);
        }
    }
}

/// The body as a whole could not be read; nothing in it is stored.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BodyError {
    #[error("body is not valid UTF-8 (first bad byte at offset {offset})")]
    NotUtf8 { offset: usize },
    #[error("body is not a JSON event or array of events: {0}")]
    Malformed(String),
}

#[derive(Deserialize)]
struct WireEvent<'a> {
    #[serde(borrow)]
    device_id: Cow<'a, str>,
    timestamp: i64,
    #[serde(rename = "type", borrow)]
    event_type: Cow<'a, str>,
    value: f64,
    location: WireLocation,
    #[serde(default, borrow)]
    metadata: Option<&'a RawValue>,
}

/// `location` as the wire format has it: an object with `latitude` and
/// `longitude`. An array is refused, not read in field order: GeoJSON and
/// many device payloads write `[longitude, latitude]`, and guessing would
/// swap the coordinates silently.
struct WireLocation {
    latitude: f64,
    longitude: f64,
}

impl<'de> Deserialize<'de> for WireLocation {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(field_identifier, rename_all = "lowercase")]
        enum Field {
            Latitude,
            Longitude,
            #[serde(other)]
            Other,
        }
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = WireLocation;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(LOCATION_SHAPE)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<WireLocation, A::Error> {
                use serde::de::Error;
                let (mut lat, mut lon) = (None, None);
                while let Some(key) = map.next_key::<Field>()? {
                    match key {
                        Field::Latitude if lat.is_some() => {
                            return Err(A::Error::duplicate_field("latitude"))
                        }
                        Field::Longitude if lon.is_some() => {
                            return Err(A::Error::duplicate_field("longitude"))
                        }
                        Field::Latitude => lat = Some(map.next_value()?),
                        Field::Longitude => lon = Some(map.next_value()?),
                        Field::Other => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(WireLocation {
                    latitude: lat.ok_or_else(|| A::Error::missing_field("latitude"))?,
                    longitude: lon.ok_or_else(|| A::Error::missing_field("longitude"))?,
                })
            }
        }
        d.deserialize_map(Visitor)
    }
}

/// What `location` must be, in every message that refuses another shape.
const LOCATION_SHAPE: &str =
    "location must be an object {\"latitude\": .., \"longitude\": ..}, not an array (GeoJSON order [longitude, latitude] would be ambiguous)";

/// An event as decoded, before validation; borrowed from the text.
struct Decoded<'a> {
    device_id: Cow<'a, str>,
    timestamp: i64,
    event_type: Cow<'a, str>,
    value: f64,
    location: WireLocation,
    /// The JSON text of `metadata`, absent or null: `None`.
    metadata: Option<&'a str>,
}

fn decode_serde(text: &str) -> Result<Decoded<'_>, serde_json::Error> {
    let wire: WireEvent = serde_json::from_str(text)?;
    Ok(Decoded {
        device_id: wire.device_id,
        timestamp: wire.timestamp,
        event_type: wire.event_type,
        value: wire.value,
        location: wire.location,
        metadata: wire.metadata.map(RawValue::get),
    })
}

/// Parses and validates one event from its JSON text: the byte scanner
/// (`fast`) first, serde for what it leaves.
pub fn parse_event(text: &str, limits: &Limits) -> Result<Event, Invalid> {
    let decoded = match fast::scan(text).map_or_else(|| decode_serde(text), Ok) {
        Ok(d) => d,
        Err(serde_err) => return Err(explain(text, serde_err)),
    };
    let event = Event {
        device_id: decoded.device_id.into_owned(),
        ts_secs: decoded.timestamp,
        event_type: decoded.event_type.into_owned(),
        value: decoded.value,
        latitude: decoded.location.latitude,
        longitude: decoded.location.longitude,
        metadata: decoded.metadata.map(Box::from),
    };
    check(&event, limits)?;
    Ok(event)
}

/// Reads a whole body. Fails only when the body as a whole is unreadable;
/// individual bad events are returned in [`ParsedBody::rejected`], every one
/// of them.
pub fn parse_body(
    body: &[u8],
    format: BodyFormat,
    limits: &Limits,
) -> Result<ParsedBody, BodyError> {
    parse_body_capped(body, format, limits, usize::MAX)
}

/// [`parse_body`] keeping at most `max_listed` rejections (all are counted).
pub fn parse_body_capped(
    body: &[u8],
    format: BodyFormat,
    limits: &Limits,
    max_listed: usize,
) -> Result<ParsedBody, BodyError> {
    let text = std::str::from_utf8(body).map_err(|e| BodyError::NotUtf8 {
        offset: e.valid_up_to(),
    })?;
    let mut out = ParsedBody::default();
    let mut take = |index: usize, item: &str| match parse_event(item, limits) {
        Ok(event) => out.events.push((index, event)),
        Err(invalid) => out.reject(Rejection::new(index, invalid), max_listed),
    };
    match format {
        BodyFormat::Ndjson => {
            for (index, line) in text.split('\n').enumerate() {
                let line = line.trim();
                if !line.is_empty() {
                    take(index, line);
                }
            }
        }
        BodyFormat::Json => {
            let trimmed = text.trim_start();
            if trimmed.starts_with('[') {
                let items: Vec<&RawValue> =
                    serde_json::from_str(text).map_err(|e| BodyError::Malformed(e.to_string()))?;
                for (index, item) in items.iter().enumerate() {
                    take(index, item.get());
                }
            } else {
                let item: &RawValue =
                    serde_json::from_str(text).map_err(|e| BodyError::Malformed(e.to_string()))?;
                take(0, item.get());
            }
        }
    }
    Ok(out)
}

/// Builds a message naming the field at fault for an event the fast path refused.
fn explain(text: &str, fast_err: serde_json::Error) -> Invalid {
    let (reason, message) = explain_message(text, fast_err);
    Invalid::new(reason, message)
}

fn explain_message(text: &str, fast_err: serde_json::Error) -> (Reason, String) {
    use serde_json::Value;
    let value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return (Reason::InvalidJson, format!("invalid JSON: {e}")),
    };
    let Some(obj) = value.as_object() else {
        return (
            Reason::InvalidJson,
            "event must be a JSON object".to_owned(),
        );
    };
    let field = |name: &str| obj.get(name).filter(|v| !v.is_null());
    match field("device_id") {
        None => return (Reason::DeviceId, "missing field device_id".to_owned()),
        Some(v) if !v.is_string() => {
            return (Reason::DeviceId, "device_id must be a string".to_owned())
        }
        _ => {}
    }
    match field("timestamp") {
        None => return (Reason::Timestamp, "missing field timestamp".to_owned()),
        Some(Value::Number(n)) if n.is_i64() => {}
        Some(Value::Number(n)) if n.is_u64() => {
            return (
                Reason::Timestamp,
                format!("timestamp {n} is out of range (unix seconds)"),
            )
        }
        Some(_) => {
            return (
                Reason::Timestamp,
                "timestamp must be an integer (unix seconds)".to_owned(),
            )
        }
    }
    match field("type") {
        None => return (Reason::Type, "missing field type".to_owned()),
        Some(v) if !v.is_string() => return (Reason::Type, "type must be a string".to_owned()),
        _ => {}
    }
    match field("value") {
        None => return (Reason::Value, "missing field value".to_owned()),
        Some(v) if !v.is_number() => {
            return (Reason::Value, "value must be a finite number".to_owned())
        }
        _ => {}
    }
    let Some(loc) = field("location") else {
        return (Reason::Location, "missing field location".to_owned());
    };
    let Some(loc) = loc.as_object() else {
        return (Reason::Location, LOCATION_SHAPE.to_owned());
    };
    for name in ["latitude", "longitude"] {
        match loc.get(name).filter(|v| !v.is_null()) {
            None => return (Reason::Location, format!("missing field location.{name}")),
            Some(v) if !v.is_number() => {
                return (
                    Reason::Location,
                    format!("location.{name} must be a number"),
                )
            }
            _ => {}
        }
    }
    if let Some(meta) = obj.get("metadata") {
        if !meta.is_object() && !meta.is_null() {
            return (
                Reason::Metadata,
                "metadata must be a JSON object".to_owned(),
            );
        }
    }
    (Reason::InvalidEvent, format!("invalid event: {fast_err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits::at(1_700_000_000)
    }

    const GOOD: &str = r#"{"device_id":"d","timestamp":5,"type":"t","value":1.5,"location":{"latitude":1,"longitude":2}}"#;

    fn reject(text: &str) -> String {
        match parse_event(text, &limits()) {
            Ok(e) => panic!("accepted {e:?}"),
            Err(e) => e.message,
        }
    }

    #[test]
    fn good_event_round_trips_through_to_json() {
        let e = parse_event(GOOD, &limits()).expect("valid");
        assert_eq!(e.value, 1.5);
        let again = parse_event(&e.to_json(), &limits()).expect("valid");
        assert_eq!(e, again);
    }

    #[test]
    fn errors_name_the_field() {
        assert!(
            reject(&GOOD.replace("\"timestamp\":5", "\"timestamp\":5.5")).contains("timestamp")
        );
        assert!(reject(&GOOD.replace("\"timestamp\":5", "\"timestamp\":-5")).contains("timestamp"));
        assert!(reject(&GOOD.replace("1.5", "\"NaN\"")).contains("value"));
        assert!(reject(&GOOD.replace("1.5", "1e400")).contains("number out of range"));
        assert!(reject(&GOOD.replace("\"latitude\":1", "\"latitude\":91")).contains("latitude"));
        assert!(
            reject(&GOOD.replace("\"longitude\":2", "\"longitude\":-180.5")).contains("longitude")
        );
        assert!(reject(&GOOD.replace("\"device_id\":\"d\",", "")).contains("device_id"));
        assert!(
            reject(&GOOD.replace("\"device_id\":\"d\"", "\"device_id\":\"\""))
                .contains("device_id")
        );
        assert!(reject(&GOOD.replace("\"type\":\"t\"", "\"type\":7")).contains("type"));
        let far = GOOD.replace("\"timestamp\":5", "\"timestamp\":1800000000");
        assert!(reject(&far).contains("max-future"));
        let meta = GOOD.trim_end_matches('}').to_owned() + "},\"metadata\":[1]}";
        assert!(reject(&meta).contains("metadata"));
    }

    #[test]
    fn location_arrays_are_refused_not_swapped() {
        for loc in ["[2.35, 48.85]", "[48.85, 2.35]", "[1]", "\"1,2\""] {
            let text = GOOD.replace(r#"{"latitude":1,"longitude":2}"#, loc);
            let error = reject(&text);
            assert!(
                error.contains("location must be an object"),
                "{loc}: {error}"
            );
        }
        let json = format!(
            "[{}]",
            GOOD.replace(r#"{"latitude":1,"longitude":2}"#, "[2.35,48.85]")
        );
        let parsed = parse_body(json.as_bytes(), BodyFormat::Json, &limits()).expect("readable");
        assert!(parsed.events.is_empty());
        assert!(parsed.rejected[0].error.contains("latitude"));
    }

    #[test]
    fn metadata_is_kept_verbatim_and_bounded() {
        let with =
            GOOD.trim_end_matches('}').to_owned() + r#"},"metadata":{"fw": "1.2" ,"x":[1,2]}}"#;
        let e = parse_event(&with, &limits()).expect("valid");
        assert_eq!(e.metadata.as_deref(), Some(r#"{"fw": "1.2" ,"x":[1,2]}"#));
        let big = format!(r#"{{"k":"{}"}}"#, "x".repeat(9000));
        let huge = GOOD.trim_end_matches('}').to_owned() + "},\"metadata\":" + &big + "}";
        assert!(reject(&huge).contains("metadata must be at most"));
    }

    #[test]
    fn ndjson_reports_line_positions() {
        let body = format!("{GOOD}\nnot json\n\n{GOOD}\n");
        let parsed = parse_body(body.as_bytes(), BodyFormat::Ndjson, &limits()).expect("readable");
        assert_eq!(
            parsed.events.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            vec![0, 3]
        );
        assert_eq!(parsed.rejected.len(), 1);
        assert_eq!(parsed.rejected[0].index, 1);
    }

    #[test]
    fn json_array_and_whole_body_errors() {
        let body = format!("[{GOOD}, 3, {GOOD}]");
        let parsed = parse_body(body.as_bytes(), BodyFormat::Json, &limits()).expect("readable");
        assert_eq!(parsed.events.len(), 2);
        assert_eq!(parsed.rejected[0].index, 1);
        let truncated = format!("[{GOOD}, {GOOD}");
        assert!(matches!(
            parse_body(truncated.as_bytes(), BodyFormat::Json, &limits()),
            Err(BodyError::Malformed(_))
        ));
        assert_eq!(
            parse_body(b"[\xff]", BodyFormat::Json, &limits()).err(),
            Some(BodyError::NotUtf8 { offset: 1 })
        );
    }
}
