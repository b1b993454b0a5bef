//! The brute-force reference: every query answered by reading every event.
//!
//! Tests compare the engine and the HTTP API against it. Sums use Shewchuk's
//! exact summation (as Python's `math.fsum`), an algorithm independent of the
//! engine's double-double prefix sums.

use std::collections::HashMap;

use crate::query::rank_devices;
use crate::{
    AvgAnswer, DeviceCount, Event, GeoAnswer, GeoBox, SeriesAnswer, SeriesPoint, TimeWindow,
    TopkAnswer, TypeStats, TypesAnswer,
};

/// All accepted events, in no particular order.
#[derive(Debug, Default, Clone)]
pub struct Oracle {
    pub events: Vec<Event>,
}

impl Oracle {
    pub fn add(&mut self, event: Event) {
        self.events.push(event);
    }

    pub fn avg(&self, device_id: &str, event_type: &str, window: TimeWindow) -> AvgAnswer {
        let values: Vec<f64> = self
            .events
            .iter()
            .filter(|e| e.device_id == device_id && e.event_type == event_type)
            .filter(|e| window.contains(e.ts_secs))
            .map(|e| e.value)
            .collect();
        AvgAnswer::new(
            device_id,
            event_type,
            window,
            values.len() as u64,
            fsum(&values),
        )
    }

    /// Each step's events found by dividing its offset from the window's
    /// start by the step, not by one window per step.
    pub fn series(
        &self,
        device_id: &str,
        event_type: &str,
        window: TimeWindow,
        step: i64,
    ) -> SeriesAnswer {
        let steps = (i128::from(window.end) - i128::from(window.start) + i128::from(step) - 1)
            / i128::from(step);
        let mut values: Vec<Vec<f64>> = vec![Vec::new(); steps as usize];
        for e in &self.events {
            if e.device_id == device_id && e.event_type == event_type && window.contains(e.ts_secs)
            {
                let i = (i128::from(e.ts_secs) - i128::from(window.start)) / i128::from(step);
                values[i as usize].push(e.value);
            }
        }
        let whole = self.avg(device_id, event_type, window);
        SeriesAnswer {
            points: values
                .iter()
                .enumerate()
                .map(|(i, v)| SeriesPoint {
                    start: (i128::from(window.start) + i as i128 * i128::from(step)) as i64,
                    count: v.len() as u64,
                    avg: (!v.is_empty()).then(|| fsum(v) / v.len() as f64),
                })
                .collect(),
            device_id: whole.device_id,
            event_type: whole.event_type,
            start: window.start,
            end: window.end,
            step,
            count: whole.count,
            avg: whole.avg,
        }
    }

    /// Every type's events, first and last event time, by name.
    pub fn types(&self) -> TypesAnswer {
        let mut by: std::collections::BTreeMap<&str, TypeStats> = Default::default();
        for e in &self.events {
            let t = by.entry(&e.event_type).or_insert_with(|| TypeStats {
                event_type: e.event_type.clone(),
                events: 0,
                first: e.ts_secs,
                last: e.ts_secs,
            });
            t.events += 1;
            t.first = t.first.min(e.ts_secs);
            t.last = t.last.max(e.ts_secs);
        }
        TypesAnswer {
            types: by.into_values().collect(),
        }
    }

    pub fn topk(&self, event_type: &str, window: TimeWindow, k: usize) -> TopkAnswer {
        let mut counts: HashMap<&str, u64> = HashMap::new();
        for e in &self.events {
            if e.event_type == event_type && window.contains(e.ts_secs) {
                *counts.entry(&e.device_id).or_default() += 1;
            }
        }
        let devices = counts
            .into_iter()
            .map(|(d, count)| DeviceCount {
                device_id: d.to_owned(),
                count,
            })
            .collect();
        TopkAnswer {
            event_type: event_type.to_owned(),
            start: window.start,
            end: window.end,
            k,
            devices: rank_devices(devices, k),
        }
    }

    pub fn geo(&self, event_type: &str, bbox: &GeoBox, window: TimeWindow) -> GeoAnswer {
        let values: Vec<f64> = self
            .events
            .iter()
            .filter(|e| e.event_type == event_type && window.contains(e.ts_secs))
            .filter(|e| bbox.contains(e.latitude, e.longitude))
            .map(|e| e.value)
            .collect();
        GeoAnswer::new(event_type, window, bbox, values.len() as u64, fsum(&values))
    }
}

/// Correctly rounded sum of `values` (Shewchuk 1997, as in Python's `math.fsum`).
pub fn fsum(values: &[f64]) -> f64 {
    let mut partials: Vec<f64> = Vec::new();
    for &x in values {
        let mut x = x;
        let mut i = 0;
        for j in 0..partials.len() {
            let mut y = partials[j];
            if x.abs() < y.abs() {
                std::mem::swap(&mut x, &mut y);
            }
            let hi = x + y;
            let lo = y - (hi - x);
            if lo != 0.0 {
                partials[i] = lo;
                i += 1;
            }
            x = hi;
        }
        partials.truncate(i);
        partials.push(x);
    }
    partials.iter().rev().fold(0.0, |acc, p| acc + p)
}

/// True when `a` and `b` agree to `rel` relative error (or both are tiny).
pub fn close(a: f64, b: f64, rel: f64) -> bool {
    let scale = a.abs().max(b.abs()).max(1e-300);
    (a - b).abs() <= rel * scale || (a - b).abs() < 1e-12
}
