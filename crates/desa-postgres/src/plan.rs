//! How a window and a box are cut into parts that are each a bounded lookup:
//! whole UTC days and whole hours come from the aggregates, the seconds
//! before the first whole hour and after the last one from raw events; whole
//! 1° cells inside the box come from cell aggregates, cells cut by the box's
//! edges from per-location aggregates.

use desa_model::{GeoBox, TimeWindow};

use crate::schema::{RES_DAY, RES_HOUR};

/// Timestamps past this are not stored (buckets stay within `i32`).
const MAX_TS: i64 = 1 << 40;

/// A half-open range of buckets at one resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buckets {
    pub res: i16,
    pub lo: i32,
    pub hi: i32,
}

/// The parts of a window.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WindowPlan {
    /// At most three: hours, days, hours. Empty ranges are left out.
    pub buckets: Vec<Buckets>,
    /// At most two half-open second ranges, less than two hours in all.
    pub raw: Vec<(i64, i64)>,
}

impl WindowPlan {
    /// Each bucket range, or an empty one, so that statements have a fixed shape.
    pub fn bucket_slot(&self, i: usize) -> Buckets {
        self.buckets.get(i).copied().unwrap_or(Buckets {
            res: RES_HOUR,
            lo: 0,
            hi: 0,
        })
    }

    /// The three bucket ranges, empty ones included.
    pub fn bucket_slots(&self) -> [Buckets; 3] {
        [
            self.bucket_slot(0),
            self.bucket_slot(1),
            self.bucket_slot(2),
        ]
    }

    pub fn raw_slot(&self, i: usize) -> (i64, i64) {
        self.raw.get(i).copied().unwrap_or((0, 0))
    }
}

fn ceil_div(a: i64, b: i64) -> i64 {
    -(-a).div_euclid(b)
}

pub fn window_plan(w: TimeWindow) -> WindowPlan {
    let (s, e) = (w.start.clamp(0, MAX_TS), w.end.clamp(0, MAX_TS));
    let mut plan = WindowPlan::default();
    if s >= e {
        return plan;
    }
    let (h1, h2) = (ceil_div(s, 3600), e.div_euclid(3600));
    if h1 >= h2 {
        plan.raw.push((s, e));
        return plan;
    }
    if s < h1 * 3600 {
        plan.raw.push((s, h1 * 3600));
    }
    if h2 * 3600 < e {
        plan.raw.push((h2 * 3600, e));
    }
    let mut hours = |lo: i64, hi: i64| {
        if lo < hi {
            plan.buckets.push(Buckets {
                res: RES_HOUR,
                lo: lo as i32,
                hi: hi as i32,
            });
        }
    };
    let (d1, d2) = (ceil_div(h1, 24), h2.div_euclid(24));
    if d1 < d2 {
        hours(h1, d1 * 24);
        hours(d2 * 24, h2);
        plan.buckets.push(Buckets {
            res: RES_DAY,
            lo: d1 as i32,
            hi: d2 as i32,
        });
    } else {
        hours(h1, h2);
    }
    plan
}

/// The 1° cell of a point: `floor(lat)`, `floor(lon)`; lat 90 and lon 180
/// have cells of their own.
pub fn cell_of(lat: f64, lon: f64) -> (i16, i16) {
    (lat.floor() as i16, lon.floor() as i16)
}

/// One integer per cell, for `desa_places.cell`.
pub fn cell_id(cell_lat: i16, cell_lon: i16) -> i32 {
    (cell_lat as i32 + 90) * 361 + (cell_lon as i32 + 180)
}

/// The cells of one longitude range of a box.
#[derive(Debug, Clone, PartialEq)]
pub struct BoxCells {
    pub min_lat: f64,
    pub max_lat: f64,
    pub min_lon: f64,
    pub max_lon: f64,
    /// Cells wholly inside (inclusive cell-coordinate rectangle), if any.
    pub inside: Option<(i16, i16, i16, i16)>,
    /// Cells the box's edges cut: their exact locations are looked at.
    pub edge: Vec<i32>,
}

/// Splits a box (two parts when it crosses the antimeridian) into cells.
pub fn box_cells(bbox: &GeoBox) -> Vec<BoxCells> {
    bbox.lon_ranges()
        .into_iter()
        .map(|(min_lon, max_lon)| {
            let (lat0, lat1) = (bbox.min_lat.floor() as i16, bbox.max_lat.floor() as i16);
            let (lon0, lon1) = (min_lon.floor() as i16, max_lon.floor() as i16);
            // Cell [c, c+1) lies in [min, max] when c >= min and c + 1 <= max.
            let (in_lat0, in_lat1) = (bbox.min_lat.ceil() as i16, bbox.max_lat.floor() as i16 - 1);
            let (in_lon0, in_lon1) = (min_lon.ceil() as i16, max_lon.floor() as i16 - 1);
            let inside = (in_lat0 <= in_lat1 && in_lon0 <= in_lon1)
                .then_some((in_lat0, in_lat1, in_lon0, in_lon1));
            let is_inside = |la: i16, lo: i16| {
                inside.is_some_and(|(a, b, c, d)| la >= a && la <= b && lo >= c && lo <= d)
            };
            let mut edge = Vec::new();
            for la in lat0..=lat1 {
                for lo in lon0..=lon1 {
                    if !is_inside(la, lo) {
                        edge.push(cell_id(la, lo));
                    }
                }
            }
            BoxCells {
                min_lat: bbox.min_lat,
                max_lat: bbox.max_lat,
                min_lon,
                max_lon,
                inside,
                edge,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Every second of a window falls in exactly one part.
    #[test]
    fn window_parts_cover_each_second_once() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..2000 {
            let s = rng.gen_range(0..10 * 86_400);
            let len = match rng.gen_range(0..4) {
                0 => rng.gen_range(1..120),
                1 => rng.gen_range(1..4 * 3600),
                2 => rng.gen_range(1..3 * 86_400),
                _ => rng.gen_range(1..9 * 86_400),
            };
            let w = TimeWindow::new(s, s + len).unwrap();
            let p = window_plan(w);
            assert!(p.buckets.len() <= 3 && p.raw.len() <= 2, "{p:?}");
            assert!(p.raw.iter().all(|(a, b)| a < b), "{p:?}");
            assert!(
                p.raw.iter().map(|(a, b)| b - a).sum::<i64>() < 7200,
                "{p:?}"
            );
            let covers = |t: i64| {
                let mut n = p.raw.iter().filter(|(a, b)| t >= *a && t < *b).count();
                for b in &p.buckets {
                    let size = if b.res == RES_DAY { 86_400 } else { 3600 };
                    let k = t.div_euclid(size);
                    if k >= b.lo as i64 && k < b.hi as i64 {
                        n += 1;
                    }
                }
                n
            };
            for t in [s - 1, s, s + len / 2, s + len - 1, s + len] {
                assert_eq!(covers(t), usize::from(w.contains(t)), "t={t} {w:?} {p:?}");
            }
            for _ in 0..20 {
                let t = rng.gen_range(s - 100..s + len + 100);
                assert_eq!(covers(t), usize::from(w.contains(t)), "t={t} {w:?} {p:?}");
            }
        }
    }

    /// A point is in the box exactly when its cell is inside, or its cell is
    /// an edge cell and the point itself is in the box.
    #[test]
    fn box_cells_classify_points_like_the_box() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        for _ in 0..300 {
            let (a, b) = (
                rng.gen_range(-90.0..=90.0f64),
                rng.gen_range(-90.0..=90.0f64),
            );
            let (c, d) = (
                rng.gen_range(-180.0..=180.0f64),
                rng.gen_range(-180.0..=180.0f64),
            );
            let (a, b) = if rng.gen_bool(0.3) {
                (a.round(), b.round())
            } else {
                (a, b)
            };
            let bbox = GeoBox::new(a.min(b), a.max(b), c, d).unwrap();
            let parts = box_cells(&bbox);
            for _ in 0..200 {
                let mut lat = rng.gen_range(-90.0..=90.0f64);
                let mut lon = rng.gen_range(-180.0..=180.0f64);
                if rng.gen_bool(0.2) {
                    lat = lat.round();
                    lon = lon.round();
                }
                let (cl, co) = cell_of(lat, lon);
                let hits: usize = parts
                    .iter()
                    .map(|p| {
                        let inside = p
                            .inside
                            .is_some_and(|(a, b, c, d)| cl >= a && cl <= b && co >= c && co <= d);
                        let on_edge = p.edge.contains(&cell_id(cl, co))
                            && lat >= p.min_lat
                            && lat <= p.max_lat
                            && lon >= p.min_lon
                            && lon <= p.max_lon;
                        usize::from(inside || on_edge)
                    })
                    .sum();
                assert_eq!(
                    hits,
                    usize::from(bbox.contains(lat, lon)),
                    "{lat},{lon} {bbox:?}"
                );
            }
        }
    }
}
