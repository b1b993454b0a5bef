//! Device extents: for a type whose locations do not fold into points
//! (devices that move), the box of each device's locations in the block.
//!
//! A geo query over the block takes a device whose extent lies inside the
//! box whole (its count and sum are the series'), skips one whose extent
//! lies outside, and reads the events of the few whose extent the box's
//! edge cuts from the segments the summary covers, in the part of the box
//! their extent overlaps: exact, and in place of every event's location
//! the summary keeps one box per device. Under that the extents form an
//! implicit k-d tree (split on the centres, as the points' tree) whose
//! nodes carry the box, count and sum of the extents below, so a query
//! opens only the leaves near its edges.
//!
//! Extents are stored on a grid of `1 / GRID` degrees, rounded outwards by
//! a whole step more than the rounding of the scaling can move them: a
//! stored extent holds its device's every location, so "inside" and
//! "outside" are never wrong; a location within a step of the box's edge
//! only makes the device one more to read.

use std::sync::Arc;

use super::build::Input;
use super::Summary;
use crate::segment::Segment;

/// Grid steps per degree (a step is about 11 m of latitude).
pub const GRID: f64 = 1e4;

/// An extent on the grid: least latitude, greatest latitude, least
/// longitude, greatest longitude (inclusive).
pub(crate) type GridBox = [i64; 4];

/// The extent of nothing, which [`grow`] widens to the first location.
pub(crate) const EMPTY: GridBox = [i64::MAX, i64::MIN, i64::MAX, i64::MIN];

/// Widens `b` to hold the location (`lat`, `lon`).
pub(crate) fn grow(b: &mut GridBox, lat: f64, lon: f64) {
    b[0] = b[0].min((lat * GRID).floor() as i64 - 1);
    b[1] = b[1].max((lat * GRID).ceil() as i64 + 1);
    b[2] = b[2].min((lon * GRID).floor() as i64 - 1);
    b[3] = b[3].max((lon * GRID).ceil() as i64 + 1);
}

/// Widens `b` to hold the extent `other`.
pub(crate) fn join(b: &mut GridBox, other: &GridBox) {
    b[0] = b[0].min(other[0]);
    b[1] = b[1].max(other[1]);
    b[2] = b[2].min(other[2]);
    b[3] = b[3].max(other[3]);
}

/// The extent in degrees: `[min_lat, max_lat, min_lon, max_lon]`.
pub(crate) fn degrees(b: &GridBox) -> [f64; 4] {
    b.map(|x| x as f64 / GRID)
}

/// One place a type's extents are read from.
enum Source<'a> {
    Segment(&'a Segment),
    /// A summary that kept the type's extents, and the type's index in it.
    Summary(&'a Summary, usize),
}

/// Where the locations of type `name` are, input by input; `None` when
/// some are not at hand (a summary without the type's extents, without its
/// segments).
fn sources<'a>(inputs: &[Input<'a>], name: &str) -> Option<Vec<Source<'a>>> {
    let mut out = Vec::new();
    for input in inputs {
        match *input {
            Input::Segment(s) => out.push(Source::Segment(s)),
            Input::Summary(s, covered) => match s.find_type(name) {
                None => {}
                Some(t) if s.has_extents(t) => out.push(Source::Summary(s, t)),
                Some(_) => {
                    let covered: &[Arc<Segment>] = covered?;
                    out.extend(covered.iter().map(|seg| Source::Segment(seg)));
                }
            },
        }
    }
    Some(out)
}

/// The extent of each device of type `name` in `inputs`, in the order of
/// `devices` (the type's devices in the summary being built, sorted), or
/// `None` when some locations are not at hand. Holds one box per device,
/// never the events.
pub(super) fn gather(inputs: &[Input], name: &str, devices: &[&str]) -> Option<Vec<GridBox>> {
    let mut out = vec![EMPTY; devices.len()];
    let index = |device: &str| devices.binary_search(&device).ok();
    for source in sources(inputs, name)? {
        match source {
            Source::Summary(s, t) => {
                let names = s.decoded_devices();
                for (series, b) in s.extents_of(t) {
                    join(
                        &mut out[index(s.series_device_in(series, names.as_ref()))?],
                        &b,
                    );
                }
                s.release_memory();
            }
            Source::Segment(s) => {
                let Some(t) = s.find_type(name) else {
                    continue;
                };
                // Each series' first row, and its device's place in `out`:
                // a type's series come in device order, as `devices` do.
                let starts = s.series_starts(t);
                let names = s.decoded_devices();
                let mut next = 0;
                let places: Vec<usize> = s
                    .type_series(t)
                    .map(|series| {
                        let device = s.series_device_in(series, names.as_ref());
                        while devices.get(next).is_some_and(|&d| d < device) {
                            next += 1;
                        }
                        (devices.get(next) == Some(&device)).then_some(next)
                    })
                    .collect::<Option<_>>()?;
                for (lat, lon, row) in s.located_rows(t) {
                    let j = starts
                        .partition_point(|&first| first <= row)
                        .checked_sub(1)?;
                    grow(&mut out[places[j]], lat, lon);
                }
                s.release_memory();
            }
        }
    }
    out.iter().all(|b| b[0] <= b[1]).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stored extent holds every location it was grown by, read back in
    /// degrees, whatever the rounding of the scaling.
    #[test]
    fn extents_hold_their_locations() {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng >> 11) as f64 / (1u64 << 53) as f64
        };
        for _ in 0..10_000 {
            let (lat, lon) = (next() * 180.0 - 90.0, next() * 360.0 - 180.0);
            let mut b = EMPTY;
            grow(&mut b, lat, lon);
            let d = degrees(&b);
            assert!(
                d[0] < lat && lat < d[1] && d[2] < lon && lon < d[3],
                "{lat} {lon} {d:?}"
            );
        }
        for edge in [-90.0, 90.0, -180.0, 180.0, 0.0, 1e-5, -1e-5, 45.000_01] {
            let mut b = EMPTY;
            grow(&mut b, edge, edge);
            let d = degrees(&b);
            assert!(d[0] < edge && edge < d[1] && d[2] < edge && edge < d[3]);
        }
    }
}
