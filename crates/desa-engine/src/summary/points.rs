//! Gathering one type's points for a summary: every distinct location with
//! its count and sum, or none when the locations do not fold (see
//! [`GEO_FOLD_MIN`]).

use std::sync::Arc;

use desa_model::DoubleDouble;

use super::build::Input;
use super::*;
use crate::segment::Segment;

/// Points gathered before they are first folded and checked.
pub(super) const FOLD_BATCH: usize = 1 << 20;

/// The points of one type, and how many were held at once while gathering.
pub(super) struct Gathered {
    /// Folded, in no particular order; empty when they do not fold.
    pub points: Vec<GeoPoint>,
    pub peak: usize,
}

/// One place a type's points are read from.
enum Source<'a> {
    Segment(&'a Segment),
    /// A summary that kept the type's points.
    Summary(&'a Summary, usize),
}

/// Where the points of type `name` are, input by input; `None` when some
/// are not at hand (a summary that left them out, without its segments).
fn sources<'a>(inputs: &[Input<'a>], name: &str) -> Option<Vec<Source<'a>>> {
    let mut out = Vec::new();
    for input in inputs {
        match *input {
            Input::Segment(s) => out.push(Source::Segment(s)),
            Input::Summary(s, covered) => match s.find_type(name) {
                None => {}
                Some(t) if s.geo_part(name) == GeoPart::Points => out.push(Source::Summary(s, t)),
                Some(_) => {
                    let covered: &[Arc<Segment>] = covered?;
                    out.extend(covered.iter().map(|seg| Source::Segment(seg)));
                }
            },
        }
    }
    Some(out)
}

impl Source<'_> {
    /// Appends the source's points of type `name` to `out`.
    fn append(&self, name: &str, out: &mut Vec<GeoPoint>) {
        match *self {
            Source::Summary(s, t) => s.points_of(t, out),
            Source::Segment(s) => {
                let Some(t) = s.find_type(name) else {
                    return;
                };
                // Rows are in (device, time) order and a sensor seldom moves:
                // folding runs of one location here leaves about one point
                // per device for the sort in `fold_points`.
                let mut rows = s.located_values(t).peekable();
                while let Some((at_lat, at_lon, v)) = rows.next() {
                    let mut count = 1;
                    let mut sum = DoubleDouble::ZERO.add_f64(v);
                    while let Some(&(_, _, v)) = rows
                        .peek()
                        .filter(|&&(lat, lon, _)| lat == at_lat && lon == at_lon)
                    {
                        count += 1;
                        sum = sum.add_f64(v);
                        rows.next();
                    }
                    out.push(GeoPoint {
                        lat: at_lat,
                        lon: at_lon,
                        count,
                        sum_hi: sum.hi,
                        sum_lo: sum.lo,
                    });
                }
            }
        }
    }

    /// Drops the source's mapped pages: a build reads each once.
    fn release_memory(&self) {
        match self {
            Source::Segment(s) => s.release_memory(),
            Source::Summary(s, _) => s.release_memory(),
        }
    }
}

/// Whether folded `points` hold at least [`GEO_FOLD_MIN`] events each on
/// average.
fn folds(points: &[GeoPoint]) -> bool {
    let events: u64 = points.iter().map(|p| p.count).sum();
    points.len() as u64 <= events / GEO_FOLD_MIN
}

/// The points of type `name` in `inputs`, folded, or none when they do not
/// fold. Points are folded and checked each time they reach `batch` or
/// twice what the last fold left: locations that do not fold so far (devices
/// that move) stop the gathering there, so a build holds about `batch`
/// points plus one source's, never a whole block's. A type that starts
/// folding later than its first `batch` points is left out too; that costs
/// its geo queries a read of the segments, never an exact answer.
pub(super) fn gather(inputs: &[Input], name: &str, batch: usize) -> Gathered {
    let mut out = Gathered {
        points: Vec::new(),
        peak: 0,
    };
    let Some(sources) = sources(inputs, name) else {
        return out;
    };
    let points = &mut out.points;
    let mut folded = 0;
    for source in sources {
        source.append(name, points);
        source.release_memory();
        out.peak = out.peak.max(points.len());
        if points.len() >= batch.max(2 * folded) {
            fold_points(points);
            folded = points.len();
            if !folds(points) {
                *points = Vec::new();
                return out;
            }
        }
    }
    fold_points(points);
    if !folds(points) {
        *points = Vec::new();
    }
    out
}

/// Folds equal locations into one point (sorting by the coordinates' bits
/// groups them; the k-d build orders them afterwards).
fn fold_points(points: &mut Vec<GeoPoint>) {
    points.sort_unstable_by_key(|p| (p.lat.to_bits(), p.lon.to_bits()));
    let mut w = 0;
    for r in 0..points.len() {
        let p = points[r];
        if w > 0 && points[w - 1].lat == p.lat && points[w - 1].lon == p.lon {
            let q = &mut points[w - 1];
            let sum = DoubleDouble::new(q.sum_hi, q.sum_lo) + DoubleDouble::new(p.sum_hi, p.sum_lo);
            q.count += p.count;
            (q.sum_hi, q.sum_lo) = (sum.hi, sum.lo);
        } else {
            points[w] = p;
            w += 1;
        }
    }
    points.truncate(w);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::head::{NewRow, Rows};
    use crate::segment::write_segment;

    /// Segments of 3,000 rows of type "t" each: at a new place per row
    /// (`moving`) or at one of 30 places.
    fn segments(dir: &std::path::Path, ids: std::ops::Range<u64>, moving: bool) -> Vec<Segment> {
        ids.map(|id| {
            let mut rows = Rows::default();
            for i in 0..3_000u64 {
                let place = if moving { id * 3_000 + i } else { i % 30 };
                rows.push(NewRow {
                    event_type: "t",
                    device: ["a", "b", "c"][i as usize % 3],
                    ts: 86_400 * 20_000 + i as i64,
                    value: 1.5,
                    lat: (place / 1000) as f64 * 0.001,
                    lon: (place % 1000) as f64 * 0.001,
                    meta: None,
                });
            }
            let path = dir.join(format!("{id}.seg"));
            let all: Vec<u32> = (0..3_000).collect();
            write_segment(&rows, &all, 20_000, id, &path).unwrap();
            Segment::open(&path, id).unwrap()
        })
        .collect()
    }

    /// Moving devices' points stop the gathering once a batch shows they do
    /// not fold, instead of piling up half a block's events first; fixed
    /// places fold and are kept, every event counted.
    #[test]
    fn points_that_do_not_fold_are_dropped_after_a_batch() {
        let dir = tempfile::tempdir().unwrap();
        let moving = segments(dir.path(), 0..15, true);
        let inputs: Vec<Input> = moving.iter().map(Input::Segment).collect();
        let g = gather(&inputs, "t", 1_000);
        assert!(g.points.is_empty());
        assert!(g.peak <= 6_000, "held {} points at once", g.peak);

        let fixed = segments(dir.path(), 100..115, false);
        let inputs: Vec<Input> = fixed.iter().map(Input::Segment).collect();
        let g = gather(&inputs, "t", 1_000);
        assert_eq!(g.points.len(), 30);
        assert_eq!(g.points.iter().map(|p| p.count).sum::<u64>(), 45_000);
        assert!(gather(&inputs, "other", 1_000).points.is_empty());
    }
}
