//! desa's seeded load generator: the same seed gives the same stream.
//!
//! Devices emit at Zipf-skewed rates (a few devices produce most events),
//! live around cities on every inhabited continent (plus a few at the poles
//! and on the antimeridian), and report several sensor types. Events advance
//! in event time across a span, with a fraction out of order (up to minutes
//! back), late (hours to days back), sent twice, or invalid.
//!
//! It is not a network client: callers send [`Generated::line`] wherever they
//! like (stdout, a file, `POST /v1/events`, Kafka).
//!
//! ```
//! use desa_gen::{GenConfig, Generator};
//! let cfg = GenConfig { count: 100, ..GenConfig::default() };
//! let items: Vec<_> = Generator::new(cfg).collect();
//! assert!(items.len() >= 100);
//! ```

use desa_model::Event;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal, Zipf};

/// Sensor types with their typical value and spread.
pub const TYPES: &[(&str, f64, f64)] = &[
    ("temperature", 18.0, 9.0),
    ("humidity", 55.0, 18.0),
    ("pressure", 1013.0, 12.0),
    ("co2", 650.0, 180.0),
    ("vibration", 0.4, 0.3),
    ("pm25", 22.0, 14.0),
];

/// Cities devices live around: (name, latitude, longitude, weight).
pub const CITIES: &[(&str, f64, f64, f64)] = &[
    ("Tokyo", 35.68, 139.69, 10.0),
    ("Delhi", 28.61, 77.21, 8.0),
    ("Shanghai", 31.23, 121.47, 8.0),
    ("Sao Paulo", -23.55, -46.63, 6.0),
    ("Mexico City", 19.43, -99.13, 6.0),
    ("Cairo", 30.04, 31.24, 5.0),
    ("Mumbai", 19.08, 72.88, 6.0),
    ("New York", 40.71, -74.01, 7.0),
    ("Lagos", 6.52, 3.38, 4.0),
    ("Paris", 48.86, 2.35, 5.0),
    ("London", 51.51, -0.13, 5.0),
    ("Berlin", 52.52, 13.40, 4.0),
    ("Madrid", 40.42, -3.70, 3.0),
    ("Stockholm", 59.33, 18.07, 2.0),
    ("Moscow", 55.76, 37.62, 4.0),
    ("Los Angeles", 34.05, -118.24, 6.0),
    ("Chicago", 41.88, -87.63, 4.0),
    ("Toronto", 43.65, -79.38, 3.0),
    ("Buenos Aires", -34.60, -58.38, 3.0),
    ("Johannesburg", -26.20, 28.05, 3.0),
    ("Nairobi", -1.29, 36.82, 2.0),
    ("Sydney", -33.87, 151.21, 3.0),
    ("Auckland", -36.85, 174.76, 1.5),
    ("Suva", -18.14, 178.44, 0.5),
    ("Anchorage", 61.22, -149.90, 0.5),
    ("Singapore", 1.35, 103.82, 3.0),
    ("Jakarta", -6.21, 106.85, 4.0),
    ("Seoul", 37.57, 126.98, 4.0),
];

/// What to generate. [`GenConfig::default`] is a small, realistic stream.
#[derive(Debug, Clone)]
pub struct GenConfig {
    pub seed: u64,
    pub devices: u64,
    /// How many of [`TYPES`] are used (1 to 6).
    pub types: usize,
    /// Events to generate (duplicates and invalid lines come on top).
    pub count: u64,
    /// Event time of the first event, unix seconds.
    pub start_ts: i64,
    /// Event time covered by the stream, seconds.
    pub span_secs: i64,
    /// Zipf exponent of device activity; 0 means uniform.
    pub zipf_s: f64,
    /// Fraction of events whose timestamp is moved back by up to `out_of_order_secs`.
    pub out_of_order_fraction: f64,
    pub out_of_order_secs: i64,
    /// Fraction of events whose timestamp is moved back by 1 hour to `late_secs`.
    pub late_fraction: f64,
    pub late_secs: i64,
    pub duplicate_fraction: f64,
    pub invalid_fraction: f64,
    /// Fraction of events that carry a `metadata` object.
    pub metadata_fraction: f64,
    /// How far a device strays from its home, in metres (standard
    /// deviation, each event its own GPS fix to a micro-degree); 0: every
    /// event of a device at its home.
    pub move_metres: f64,
}

impl Default for GenConfig {
    fn default() -> Self {
        GenConfig {
            seed: 42,
            devices: 10_000,
            types: 4,
            count: 1_000_000,
            start_ts: 1_767_225_600, // 2026-01-01T00:00:00Z
            span_secs: 7 * 86_400,
            zipf_s: 1.1,
            out_of_order_fraction: 0.05,
            out_of_order_secs: 300,
            late_fraction: 0.01,
            late_secs: 3 * 86_400,
            duplicate_fraction: 0.001,
            invalid_fraction: 0.0,
            metadata_fraction: 0.05,
            move_metres: 0.0,
        }
    }
}

/// One line of the stream; `event` is `None` for a deliberately invalid line.
#[derive(Debug, Clone)]
pub struct Generated {
    pub line: String,
    pub event: Option<Event>,
}

/// The stream, as an iterator of lines.
pub struct Generator {
    cfg: GenConfig,
    rng: StdRng,
    zipf: Option<Zipf<f64>>,
    city_cdf: Vec<f64>,
    jitter: Normal<f64>,
    i: u64,
    pending: Option<Generated>,
}

impl Generator {
    pub fn new(cfg: GenConfig) -> Self {
        let zipf = (cfg.zipf_s > 0.0)
            .then(|| Zipf::new(cfg.devices.max(1), cfg.zipf_s))
            .and_then(Result::ok);
        let total: f64 = CITIES.iter().map(|c| c.3).sum();
        let mut acc = 0.0;
        let city_cdf = CITIES
            .iter()
            .map(|c| {
                acc += c.3 / total;
                acc
            })
            .collect();
        Generator {
            rng: StdRng::seed_from_u64(cfg.seed),
            zipf,
            city_cdf,
            jitter: Normal::new(0.0, 0.35).unwrap_or_else(|_| unreachable!("constant parameters")),
            cfg,
            i: 0,
            pending: None,
        }
    }

    /// Device id of activity rank `rank` (0 = busiest). Ranks are scattered
    /// over ids so that the busiest devices are not the first in id order.
    pub fn device_id(&self, rank: u64) -> String {
        let n = self.cfg.devices.max(1);
        format!("dev-{:07}", (rank.wrapping_mul(7_919) + 13) % n)
    }

    /// Home of a device: a deterministic function of its id and the seed.
    fn home(&self, rank: u64) -> (f64, f64) {
        let mut r = StdRng::seed_from_u64(self.cfg.seed ^ rank.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        // A few devices sit on the edges of the map.
        match rank % 997 {
            0 => return (90.0, r.gen_range(-180.0..=180.0)),
            1 => return (-90.0, 0.0),
            2 => return (r.gen_range(-60.0..60.0), 180.0),
            3 => return (r.gen_range(-60.0..60.0), -180.0),
            _ => {}
        }
        let u: f64 = r.gen();
        let c = self
            .city_cdf
            .iter()
            .position(|&p| u <= p)
            .unwrap_or(CITIES.len() - 1);
        let (_, lat, lon, _) = CITIES[c];
        let lat = (lat + self.jitter.sample(&mut r)).clamp(-90.0, 90.0);
        let mut lon = lon + self.jitter.sample(&mut r) * 1.3;
        if lon > 180.0 {
            lon -= 360.0;
        }
        if lon < -180.0 {
            lon += 360.0;
        }
        (lat, lon)
    }

    /// A GPS fix about `move_metres` from `(lat, lon)`, to a micro-degree.
    fn moved(&mut self, lat: f64, lon: f64) -> (f64, f64) {
        const METRES_PER_DEGREE: f64 = 111_320.0;
        let sd = self.cfg.move_metres / METRES_PER_DEGREE;
        let north: f64 = self.rng.sample::<f64, _>(rand_distr::StandardNormal) * sd;
        let east: f64 = self.rng.sample::<f64, _>(rand_distr::StandardNormal) * sd;
        let round = |x: f64| (x * 1e6).round() / 1e6;
        let lat2 = round((lat + north).clamp(-90.0, 90.0));
        let mut lon2 = lon + east / lat.to_radians().cos().max(0.01);
        if lon2 > 180.0 {
            lon2 -= 360.0;
        }
        if lon2 < -180.0 {
            lon2 += 360.0;
        }
        (lat2, round(lon2).clamp(-180.0, 180.0))
    }

    fn next_event(&mut self) -> Event {
        let cfg = &self.cfg;
        let i = self.i;
        let rank = match &self.zipf {
            Some(z) => z.sample(&mut self.rng) as u64 - 1,
            None => self.rng.gen_range(0..cfg.devices.max(1)),
        };
        let (mut lat, mut lon) = self.home(rank);
        if cfg.move_metres > 0.0 {
            (lat, lon) = self.moved(lat, lon);
        }
        let cfg = &self.cfg;
        let ntypes = cfg.types.clamp(1, TYPES.len());
        let (ty, base, spread) = TYPES[(self.rng.gen::<u32>() as usize) % ntypes];
        let mut ts =
            cfg.start_ts + ((i as i128 * cfg.span_secs as i128) / cfg.count.max(1) as i128) as i64;
        let roll: f64 = self.rng.gen();
        if roll < cfg.late_fraction {
            ts -= self.rng.gen_range(3_600..=cfg.late_secs.max(3_601));
        } else if roll < cfg.late_fraction + cfg.out_of_order_fraction {
            ts -= self.rng.gen_range(1..=cfg.out_of_order_secs.max(1));
        }
        let value =
            ((base + self.jitter.sample(&mut self.rng) * spread * 2.5) * 1000.0).round() / 1000.0;
        let metadata = (self.rng.gen::<f64>() < cfg.metadata_fraction).then(|| {
            format!(
                "{{\"fw\":\"1.{}.{}\",\"battery\":{:.2}}}",
                rank % 5,
                i % 10,
                self.rng.gen::<f64>()
            )
            .into_boxed_str()
        });
        Event {
            device_id: self.device_id(rank),
            ts_secs: ts.max(0),
            event_type: ty.to_owned(),
            value,
            latitude: lat,
            longitude: lon,
            metadata,
        }
    }

    fn invalid_line(&mut self, good: &Event) -> String {
        let line = good.to_json();
        match self.rng.gen_range(0..7) {
            0 => line.replace("\"device_id\"", "\"device\""),
            1 => line.replacen(
                &format!("\"latitude\":{:?}", good.latitude),
                "\"latitude\":123.5",
                1,
            ),
            2 => line.replacen(
                &format!("\"value\":{:?}", good.value),
                "\"value\":\"NaN\"",
                1,
            ),
            3 => line[..line.len() / 2].to_owned(),
            4 => line.replacen(
                &format!("\"timestamp\":{}", good.ts_secs),
                "\"timestamp\":\"yesterday\"",
                1,
            ),
            5 => line.replacen(&format!("\"value\":{:?}", good.value), "\"value\":1e400", 1),
            _ => line.replacen(
                &format!("\"timestamp\":{}", good.ts_secs),
                "\"timestamp\":-7",
                1,
            ),
        }
    }
}

impl Iterator for Generator {
    type Item = Generated;

    fn next(&mut self) -> Option<Generated> {
        if let Some(p) = self.pending.take() {
            return Some(p);
        }
        if self.i >= self.cfg.count {
            return None;
        }
        let event = self.next_event();
        self.i += 1;
        let roll: f64 = self.rng.gen();
        if roll < self.cfg.invalid_fraction {
            let line = self.invalid_line(&event);
            return Some(Generated { line, event: None });
        }
        let item = Generated {
            line: event.to_json(),
            event: Some(event),
        };
        if roll < self.cfg.invalid_fraction + self.cfg.duplicate_fraction {
            self.pending = Some(item.clone());
        }
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use desa_model::{parse_event, Limits};

    #[test]
    fn same_seed_same_stream_and_lines_parse_back() {
        let cfg = GenConfig {
            count: 5_000,
            invalid_fraction: 0.02,
            duplicate_fraction: 0.01,
            ..GenConfig::default()
        };
        let a: Vec<_> = Generator::new(cfg.clone()).map(|g| g.line).collect();
        let b: Vec<_> = Generator::new(cfg).map(|g| g.line).collect();
        assert_eq!(a, b);
        let limits = Limits::at(2_000_000_000);
        let mut invalid = 0;
        for g in Generator::new(GenConfig {
            count: 5_000,
            invalid_fraction: 0.02,
            ..GenConfig::default()
        }) {
            match (&g.event, parse_event(&g.line, &limits)) {
                (Some(e), Ok(p)) => assert_eq!(e, &p),
                (None, Err(_)) => invalid += 1,
                (e, p) => panic!("generator and parser disagree on {}: {e:?} {p:?}", g.line),
            }
        }
        assert!(invalid > 50);
    }

    #[test]
    fn moving_devices_stray_about_as_far_as_asked() {
        let fixed = GenConfig {
            count: 2_000,
            devices: 5,
            late_fraction: 0.0,
            out_of_order_fraction: 0.0,
            duplicate_fraction: 0.0,
            ..GenConfig::default()
        };
        let moving = GenConfig {
            move_metres: 50.0,
            ..fixed.clone()
        };
        let homes: std::collections::HashMap<String, (f64, f64)> = Generator::new(fixed)
            .filter_map(|g| g.event)
            .map(|e| (e.device_id, (e.latitude, e.longitude)))
            .collect();
        let mut places = std::collections::HashSet::new();
        let mut furthest: f64 = 0.0;
        for e in Generator::new(moving).filter_map(|g| g.event) {
            let (lat, _) = homes[&e.device_id];
            furthest = furthest.max((e.latitude - lat).abs() * 111_320.0);
            places.insert((e.latitude.to_bits(), e.longitude.to_bits()));
        }
        assert!(places.len() > 1_900, "{} distinct places", places.len());
        assert!(furthest > 50.0 && furthest < 500.0, "{furthest} m");
    }

    #[test]
    fn activity_is_skewed() {
        let cfg = GenConfig {
            count: 20_000,
            devices: 1_000,
            ..GenConfig::default()
        };
        let hot = Generator::new(cfg.clone()).device_id(0);
        let n = Generator::new(cfg)
            .filter(|g| g.event.as_ref().is_some_and(|e| e.device_id == hot))
            .count();
        assert!(n > 20_000 / 20, "busiest device sent only {n}");
    }
}
