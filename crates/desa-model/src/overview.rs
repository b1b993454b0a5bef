//! What the console asks besides the three queries: the stored types
//! (`GET /v1/types`) and a device's average step by step over a window
//! (`GET /v1/query/series`), each step an exact average query.

use serde::{Deserialize, Serialize};

use crate::query::{AvgAnswer, QueryError, TimeWindow};

/// Most points one series answer holds.
pub const MAX_SERIES_POINTS: i128 = 2_000;

/// One stored event type: its events and the first and last event time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeStats {
    #[serde(rename = "type")]
    pub event_type: String,
    pub events: u64,
    pub first: i64,
    pub last: i64,
}

/// Answer to `GET /v1/types`, by type name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypesAnswer {
    pub types: Vec<TypeStats>,
}

impl TypesAnswer {
    /// Adds the events of `more` (of other files or shards): counts add
    /// up, first and last widen. Keeps the types sorted by name.
    pub fn add(&mut self, more: impl IntoIterator<Item = TypeStats>) {
        for t in more {
            match self
                .types
                .binary_search_by(|x| x.event_type.as_str().cmp(&t.event_type))
            {
                Ok(i) => {
                    let x = &mut self.types[i];
                    x.events += t.events;
                    x.first = x.first.min(t.first);
                    x.last = x.last.max(t.last);
                }
                Err(i) => self.types.insert(i, t),
            }
        }
    }
}

/// One step of a series: the average over `[start, start + step)` (the
/// last step ends at the window's end).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeriesPoint {
    pub start: i64,
    pub count: u64,
    /// `None` (JSON null) when `count` is 0.
    pub avg: Option<f64>,
}

/// Answer to `GET /v1/query/series`: the steps, and the whole window's
/// count and average.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeriesAnswer {
    pub device_id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub start: i64,
    pub end: i64,
    pub step: i64,
    pub count: u64,
    pub avg: Option<f64>,
    pub points: Vec<SeriesPoint>,
}

impl SeriesAnswer {
    /// The answer from the whole window's average and each step's.
    pub fn new(whole: AvgAnswer, step: i64, steps: Vec<AvgAnswer>) -> Self {
        SeriesAnswer {
            points: steps
                .into_iter()
                .map(|a| SeriesPoint {
                    start: a.start,
                    count: a.count,
                    avg: a.avg,
                })
                .collect(),
            device_id: whole.device_id,
            event_type: whole.event_type,
            start: whole.start,
            end: whole.end,
            step,
            count: whole.count,
            avg: whole.avg,
        }
    }
}

/// The windows of the steps of `w`: `[start + i * step, ...)`, the last
/// one ending at `w.end`. At most [`MAX_SERIES_POINTS`], else an error
/// naming the least step that fits.
pub fn series_windows(w: TimeWindow, step: i64) -> Result<Vec<TimeWindow>, QueryError> {
    if step < 1 {
        return Err(QueryError::BadStep(step));
    }
    let span = i128::from(w.end) - i128::from(w.start);
    let points = (span + i128::from(step) - 1) / i128::from(step);
    if points > MAX_SERIES_POINTS {
        let least = (span + MAX_SERIES_POINTS - 1) / MAX_SERIES_POINTS;
        return Err(QueryError::TooManyPoints { points, least });
    }
    let mut out = Vec::with_capacity(points as usize);
    let mut at = w.start;
    while at < w.end {
        let end = at.saturating_add(step).min(w.end);
        out.push(TimeWindow::new(at, end)?);
        at = end;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn win(start: i64, end: i64) -> TimeWindow {
        TimeWindow::new(start, end).expect("a valid window")
    }

    #[test]
    fn steps_cover_the_window_exactly_and_are_bounded() {
        let w = win(100, 1_000);
        let steps = series_windows(w, 300).expect("valid");
        assert_eq!(
            steps,
            [(100, 400), (400, 700), (700, 1_000)].map(|(a, b)| win(a, b))
        );
        let ragged = series_windows(win(0, 10), 4).expect("valid");
        assert_eq!(ragged.last().expect("valid"), &win(8, 10));
        assert_eq!(series_windows(w, 0), Err(QueryError::BadStep(0)));
        let wide = win(i64::MIN, i64::MAX);
        let err = series_windows(wide, 1).expect_err("too many points");
        assert!(err.to_string().contains("at most 2000 points"), "{err}");
        let QueryError::TooManyPoints { least, .. } = err else {
            panic!("{err}")
        };
        assert_eq!(
            series_windows(wide, least as i64).expect("valid").len(),
            2_000
        );
        assert_eq!(series_windows(w, 1).expect("valid").len(), 900);
    }

    #[test]
    fn types_add_up_by_name() {
        let t = |name: &str, events, first, last| TypeStats {
            event_type: name.into(),
            events,
            first,
            last,
        };
        let mut all = TypesAnswer::default();
        all.add([t("temp", 2, 10, 20), t("co2", 1, 5, 5)]);
        all.add([t("temp", 3, 0, 15), t("hum", 1, 7, 9)]);
        assert_eq!(
            all.types,
            [t("co2", 1, 5, 5), t("hum", 1, 7, 9), t("temp", 5, 0, 20)]
        );
    }
}
