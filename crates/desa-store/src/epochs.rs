//! Write epochs: what a cached answer is checked against.
//!
//! Every write that becomes visible raises the epoch of each (type, UTC
//! day) it holds events of, to a number no earlier write had; whatever
//! may change any answer (retention dropping days, a file found damaged)
//! raises a floor under them all. The stamp of a query is the largest
//! epoch of its type over the days its window touches, or the floor: it
//! stays the same exactly as long as no write since touched that type in
//! those days. A cache takes the stamp *before* computing an answer and
//! serves the answer while the stamp is unchanged; a store raises epochs
//! once the events are visible and before their write is acknowledged, so
//! an acknowledged write is never missing from a served answer.
//!
//! ```
//! use desa_model::TimeWindow;
//! use desa_store::WriteEpochs;
//! let mut e = WriteEpochs::default();
//! let day = |d: i64| TimeWindow::new(d * 86_400, (d + 1) * 86_400).unwrap();
//! let before = (e.stamp("t", day(3)), e.stamp("t", day(4)));
//! let epoch = e.new_epoch();
//! e.touch("t", 3, epoch);
//! assert_ne!(e.stamp("t", day(3)), before.0);
//! assert_eq!(e.stamp("t", day(4)), before.1);
//! ```

use std::collections::{BTreeMap, HashMap};

use desa_model::TimeWindow;

const DAY_SECS: i64 = 86_400;

/// The UTC day of a unix time.
pub fn day_of(ts: i64) -> i64 {
    ts.div_euclid(DAY_SECS)
}

/// Epochs per (type, day), and per day for writes of any type.
#[derive(Debug, Default)]
pub struct WriteEpochs {
    last: u64,
    floor: u64,
    by_type: HashMap<String, BTreeMap<i64, u64>>,
    /// Days written with their types unknown (cluster mode reads days from
    /// the catalog, not types): they count for every type.
    any_type: BTreeMap<i64, u64>,
}

impl WriteEpochs {
    /// A new epoch, later than every one given before.
    pub fn new_epoch(&mut self) -> u64 {
        self.last += 1;
        self.last
    }

    /// Events of `event_type` on `day` were written, in `epoch`.
    pub fn touch(&mut self, event_type: &str, day: i64, epoch: u64) {
        match self.by_type.get_mut(event_type) {
            Some(days) => {
                days.insert(day, epoch);
            }
            None => {
                self.by_type
                    .insert(event_type.to_owned(), BTreeMap::from([(day, epoch)]));
            }
        }
    }

    /// Events of some types on `day` were written or removed, in `epoch`.
    pub fn touch_day(&mut self, day: i64, epoch: u64) {
        self.any_type.insert(day, epoch);
    }

    /// Something that any answer may depend on changed.
    pub fn touch_all(&mut self) {
        self.floor = self.new_epoch();
    }

    /// The stamp of a query of `event_type` over `w`. Costs one step per
    /// stored day of the type in the window.
    pub fn stamp(&self, event_type: &str, w: TimeWindow) -> u64 {
        let days = day_of(w.start)..=day_of(w.end - 1);
        let most = |m: &BTreeMap<i64, u64>| m.range(days.clone()).map(|(_, e)| *e).max();
        let typed = self.by_type.get(event_type).and_then(most);
        self.floor
            .max(typed.unwrap_or(0))
            .max(most(&self.any_type).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(start: i64, end: i64) -> TimeWindow {
        TimeWindow::new(start, end).unwrap()
    }

    #[test]
    fn a_write_changes_the_stamps_of_the_windows_that_hold_its_day_and_type_only() {
        let mut e = WriteEpochs::default();
        let third = window(3 * DAY_SECS, 4 * DAY_SECS);
        let ending_on_third = window(DAY_SECS, 3 * DAY_SECS + 1);
        let ending_before = window(DAY_SECS, 3 * DAY_SECS);
        let all = [third, ending_on_third, ending_before];
        let before: Vec<u64> = all.iter().map(|w| e.stamp("t", *w)).collect();
        let other = e.stamp("u", third);
        let epoch = e.new_epoch();
        e.touch("t", 3, epoch);
        let after: Vec<u64> = all.iter().map(|w| e.stamp("t", *w)).collect();
        assert_ne!(after[0], before[0]);
        assert_ne!(after[1], before[1]);
        assert_eq!(after[2], before[2]);
        assert_eq!(e.stamp("u", third), other);
        // A day written without its type counts for every type.
        let epoch = e.new_epoch();
        e.touch_day(3, epoch);
        assert_ne!(e.stamp("u", third), other);
        let stamp = e.stamp("t", ending_before);
        e.touch_all();
        assert_ne!(e.stamp("t", ending_before), stamp);
    }

    #[test]
    fn days_before_the_epoch_and_the_last_second_of_a_day() {
        let mut e = WriteEpochs::default();
        let w = window(-DAY_SECS - 1, -DAY_SECS);
        let s = e.stamp("t", w);
        let epoch = e.new_epoch();
        e.touch("t", day_of(-DAY_SECS - 1), epoch);
        assert_eq!(day_of(-DAY_SECS - 1), -2);
        assert_ne!(e.stamp("t", w), s);
    }
}
