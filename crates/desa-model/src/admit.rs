//! Admission: what every source (HTTP, Kafka) does to a body before its
//! events are stored. Parsing and validation, then the late-data policy,
//! in one place, so that a rule and its reason are the same everywhere.

use crate::event::check_lateness;
use crate::parse::{parse_body_capped, BodyError, BodyFormat, ParsedBody, Rejection};
use crate::{Limits, Reason};

/// The late-data policy: how far behind the event-time watermark an event
/// may be (`None`: any).
#[derive(Debug, Clone, Copy, Default)]
pub struct Lateness {
    pub watermark: Option<i64>,
    pub max_secs: Option<i64>,
}

/// A body after admission.
#[derive(Debug, Default)]
pub struct Admitted {
    /// The events to store and the ones refused, rejections in body order.
    pub body: ParsedBody,
    /// How far behind the watermark each admitted event that was behind it
    /// was, in seconds (for the lateness histogram).
    pub late_secs: Vec<i64>,
}

/// Parses and validates `bytes`, then refuses events further behind the
/// watermark than the policy allows. At most `max_listed` rejections are
/// kept (all are counted), so the cost of a body of junk is bounded by its
/// size whatever it holds.
pub fn admit(
    bytes: &[u8],
    format: BodyFormat,
    limits: &Limits,
    lateness: Lateness,
    max_listed: usize,
) -> Result<Admitted, BodyError> {
    let mut body = parse_body_capped(bytes, format, limits, max_listed)?;
    let mut late_secs = Vec::new();
    let parsed = std::mem::take(&mut body.events);
    let mut late = Vec::new();
    for (index, e) in parsed {
        match check_lateness(e.ts_secs, lateness.watermark, lateness.max_secs) {
            Ok(0) => body.events.push((index, e)),
            Ok(secs) => {
                late_secs.push(secs);
                body.events.push((index, e));
            }
            Err(invalid) => late.push(Rejection::new(index, invalid)),
        }
    }
    if !late.is_empty() {
        // Counted like the others, and listed in body order within the cap.
        body.rejected_total += late.len();
        *body.rejected_by_reason.entry(Reason::TooLate).or_default() += late.len() as u64;
        body.rejected.extend(late);
        body.rejected.sort_by_key(|r| r.index);
        body.rejected.truncate(max_listed);
    }
    Ok(Admitted { body, late_secs })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(ts: i64) -> String {
        format!("{{\"device_id\":\"d\",\"timestamp\":{ts},\"type\":\"t\",\"value\":1,\"location\":{{\"latitude\":0,\"longitude\":0}}}}\n")
    }

    #[test]
    fn late_and_invalid_are_counted_by_reason_and_listed_in_order_within_the_cap() {
        let body = format!("{}junk\n{}{}junk\n", line(100), line(10), line(95));
        let policy = Lateness {
            watermark: Some(100),
            max_secs: Some(30),
        };
        let a = admit(
            body.as_bytes(),
            BodyFormat::Ndjson,
            &Limits::at(1_000),
            policy,
            2,
        )
        .expect("readable");
        assert_eq!(
            a.body.events.iter().map(|e| e.0).collect::<Vec<_>>(),
            vec![0, 3]
        );
        assert_eq!(a.late_secs, vec![5]);
        assert_eq!(a.body.rejected_total, 3);
        assert_eq!(
            a.body
                .rejected
                .iter()
                .map(|r| (r.index, r.reason))
                .collect::<Vec<_>>(),
            vec![(1, Reason::InvalidJson), (2, Reason::TooLate)]
        );
        assert_eq!(a.body.rejected_by_reason[&Reason::InvalidJson], 2);
        assert_eq!(a.body.rejected_by_reason[&Reason::TooLate], 1);
    }

    #[test]
    fn a_body_of_junk_keeps_only_the_cap() {
        let body = "x\n".repeat(100_000);
        let a = admit(
            body.as_bytes(),
            BodyFormat::Ndjson,
            &Limits::at(0),
            Lateness::default(),
            1_000,
        )
        .expect("readable");
        assert_eq!(a.body.rejected.len(), 1_000);
        assert_eq!(a.body.rejected_total, 100_000);
        assert_eq!(
            a.body.rejected.last().map(|r| r.index).unwrap_or_default(),
            999
        );
    }
}
