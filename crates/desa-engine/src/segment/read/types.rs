//! The stored types of a segment, for `GET /v1/types`.

use desa_model::TypeStats;

use super::Segment;

impl Segment {
    /// Each type's rows and first and last event time: from the ends of
    /// its time order, or in a file without one (version 1) from the ends
    /// of each series.
    pub fn type_stats(&self) -> Vec<TypeStats> {
        (0..self.type_count())
            .filter_map(|t| {
                let rows = self.type_rows(t);
                if rows.is_empty() {
                    return None;
                }
                let (first, last) = if self.time_order {
                    (
                        self.time_entry(rows.start).0,
                        self.time_entry(rows.end - 1).0,
                    )
                } else {
                    self.type_series(t)
                        .map(|s| self.series_rows(s))
                        .filter(|(lo, hi)| lo < hi)
                        .fold((i64::MAX, i64::MIN), |(a, b), (lo, hi)| {
                            (a.min(self.ts(lo)), b.max(self.ts(hi - 1)))
                        })
                };
                Some(TypeStats {
                    event_type: self.type_name(t).to_owned(),
                    events: rows.len() as u64,
                    first,
                    last,
                })
            })
            .collect()
    }
}
