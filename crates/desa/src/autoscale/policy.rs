//! How many cluster workers a topic's lag calls for.
//!
//! Each probe gives the topic's produced and consumed message counts (sums
//! of high watermarks and of the group's committed offsets) and its lag.
//! The policy:
//!
//! - **Need**: `produce_rate + lag / drain_time` messages per second: keep
//!   up with what arrives and drain what waits within the drain time.
//!   Rates are measured over `rate_window`.
//! - **Raw count**: `ceil(need / worker_rate)`, between `min` and the
//!   smaller of `max` and the topic's partitions (a worker beyond the
//!   partitions would get none). While the need is within `tolerance` of
//!   what the current workers consume, the raw count is the current one.
//! - **Up at once, down slowly**: a larger raw count is taken at the next
//!   probe; a smaller one only after every raw count for
//!   `scale_down_window` has been below the current count, and then the
//!   largest of them. A burst that pauses does not shed workers it will
//!   need again a moment later.
//! - **Cooldown**: no change for `cooldown` after a change. Adding or
//!   removing a member makes the group rebalance: consumption pauses, and
//!   the rates measured then say nothing about the new count.
//!
//! The policy is a function of its samples and the clock it is given, so
//! its tests run it on made-up timelines.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Policy {
    pub min_workers: u32,
    pub max_workers: u32,
    /// Messages per second one worker consumes.
    pub worker_rate: f64,
    /// The lag is to drain within this.
    pub drain_time: Duration,
    /// Share of the current workers' capacity within which the need does
    /// not change the count.
    pub tolerance: f64,
    pub scale_down_window: Duration,
    pub cooldown: Duration,
    pub rate_window: Duration,
}

/// One probe of the topic.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub at: Instant,
    /// Messages produced to the topic so far (sum of high watermarks).
    pub produced: i64,
    /// Messages the group has consumed (sum of committed offsets).
    pub consumed: i64,
    pub lag: u64,
    pub partitions: u32,
}

/// What the policy concluded from a sample, and from what.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub desired: u32,
    /// The count the need alone calls for, before hysteresis and cooldown.
    pub raw: u32,
    /// Messages per second.
    pub produce_rate: f64,
    pub consume_rate: f64,
    pub need_rate: f64,
    pub why: &'static str,
}

pub struct Scaler {
    policy: Policy,
    current: u32,
    samples: VecDeque<Sample>,
    /// Raw counts since they all fell below `current`.
    below: VecDeque<(Instant, u32)>,
    last_change: Option<Instant>,
}

impl Scaler {
    pub fn new(policy: Policy, current: u32) -> Scaler {
        Scaler {
            policy,
            current,
            samples: VecDeque::new(),
            below: VecDeque::new(),
            last_change: None,
        }
    }

    pub fn current(&self) -> u32 {
        self.current
    }

    /// Takes a sample and returns the count to run; the count becomes the
    /// current one (the caller runs that many).
    pub fn observe(&mut self, s: Sample) -> Decision {
        let p = &self.policy;
        self.samples.push_back(s);
        // Keep one sample at or before the window's start as the base.
        while self.samples.len() > 2 && s.at.duration_since(self.samples[1].at) >= p.rate_window {
            self.samples.pop_front();
        }
        let (produce_rate, consume_rate) = match self.samples.front() {
            Some(base) if s.at > base.at => {
                let secs = s.at.duration_since(base.at).as_secs_f64();
                (
                    ((s.produced - base.produced) as f64 / secs).max(0.0),
                    ((s.consumed - base.consumed) as f64 / secs).max(0.0),
                )
            }
            _ => (0.0, 0.0),
        };
        let need_rate = produce_rate + s.lag as f64 / p.drain_time.as_secs_f64().max(1e-3);
        let cap = p.max_workers.min(s.partitions).max(1);
        let floor = p.min_workers.clamp(1, cap);
        let capacity = self.current as f64 * p.worker_rate;
        let raw = if self.current > 0
            && (need_rate - capacity).abs() <= p.tolerance * capacity
            && (floor..=cap).contains(&self.current)
        {
            self.current
        } else {
            ((need_rate / p.worker_rate).ceil() as u32).clamp(floor, cap)
        };

        if raw < self.current {
            self.below.push_back((s.at, raw));
        } else {
            self.below.clear();
        }
        let cooling = self
            .last_change
            .is_some_and(|t| s.at.duration_since(t) < p.cooldown);
        let (desired, why) = if raw == self.current {
            (raw, "steady")
        } else if cooling {
            (self.current, "cooldown")
        } else if raw > self.current {
            (raw, "lag")
        } else {
            let since = self.below.front().map_or(s.at, |(t, _)| *t);
            if s.at.duration_since(since) >= p.scale_down_window {
                let largest = self.below.iter().map(|(_, n)| *n).max().unwrap_or(raw);
                (largest, "drained")
            } else {
                (self.current, "waiting to scale down")
            }
        };
        if desired != self.current {
            self.current = desired;
            self.last_change = Some(s.at);
            self.below.clear();
        }
        Decision {
            desired,
            raw,
            produce_rate,
            consume_rate,
            need_rate,
            why,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            min_workers: 1,
            max_workers: 8,
            worker_rate: 1_000.0,
            drain_time: Duration::from_secs(10),
            tolerance: 0.1,
            scale_down_window: Duration::from_secs(30),
            cooldown: Duration::from_secs(10),
            rate_window: Duration::from_secs(5),
        }
    }

    /// Runs a timeline of one probe a second: `(produced, consumed)` per
    /// second with the lag their difference; returns each second's count.
    fn run(scaler: &mut Scaler, partitions: u32, timeline: &[(i64, i64)]) -> Vec<u32> {
        let t0 = Instant::now();
        timeline
            .iter()
            .enumerate()
            .map(|(i, &(produced, consumed))| {
                scaler
                    .observe(Sample {
                        at: t0 + Duration::from_secs(i as u64),
                        produced,
                        consumed,
                        lag: (produced - consumed) as u64,
                        partitions,
                    })
                    .desired
            })
            .collect()
    }

    #[test]
    fn a_burst_grows_at_once_to_the_partitions_and_no_further() {
        let mut s = Scaler::new(policy(), 1);
        // 50,000 messages wait: 5,000/s to drain in 10 s is 5 workers, and
        // the topic has 3 partitions.
        let got = run(&mut s, 3, &[(0, 0), (50_000, 0)]);
        assert_eq!(got, vec![1, 3]);
    }

    #[test]
    fn steady_load_within_tolerance_keeps_the_count() {
        let mut s = Scaler::new(policy(), 2);
        // 2,100 messages a second arrive and are consumed: 5% over two
        // workers' 2,000.
        let timeline: Vec<(i64, i64)> = (0..60).map(|i| (i * 2_100, i * 2_100)).collect();
        assert!(run(&mut s, 8, &timeline).iter().all(|&n| n == 2));
    }

    #[test]
    fn shrinks_only_after_the_window_and_to_the_largest_need_in_it() {
        let mut s = Scaler::new(policy(), 4);
        // 2,500 messages a second for 10 s (3 workers' worth), then none.
        let timeline: Vec<(i64, i64)> = (0..80)
            .map(|i: i64| (i.min(10) * 2_500, i.min(10) * 2_500))
            .collect();
        let got = run(&mut s, 8, &timeline);
        // Every raw count is below 4 from the start: after the 30 s window,
        // the largest of them (3); after 30 s more of nothing, counted from
        // the first probe after that change, 1.
        assert!(got[..30].iter().all(|&n| n == 4), "{got:?}");
        assert_eq!((got[30], got[60], got[61]), (3, 3, 1), "{got:?}");
    }

    #[test]
    fn cooldown_holds_a_new_count_while_the_group_rebalances() {
        let mut s = Scaler::new(policy(), 1);
        // Two workers' worth arrives, then a burst while the group
        // rebalances (nothing consumed): the burst waits out the cooldown.
        let mut timeline = vec![(0, 0), (1_500, 0)];
        timeline.extend((0..12).map(|_| (40_000, 0)));
        let got = run(&mut s, 8, &timeline);
        assert_eq!(got[1], 2, "{got:?}");
        assert!(got[2..11].iter().all(|&n| n == 2), "{got:?}");
        assert_eq!(got[11], 4, "{got:?}");
    }

    #[test]
    fn alternating_load_does_not_flap() {
        let mut s = Scaler::new(policy(), 1);
        // Bursts of 30,000 every 20 s, drained in between.
        let mut timeline = Vec::new();
        let (mut produced, mut consumed) = (0i64, 0i64);
        for i in 0..200 {
            if i % 20 == 0 {
                produced += 30_000;
            }
            consumed = (consumed + 4_000).min(produced);
            timeline.push((produced, consumed));
        }
        let got = run(&mut s, 8, &timeline);
        let changes = got.windows(2).filter(|w| w[0] != w[1]).count();
        assert!(changes <= 2, "{changes} changes: {got:?}");
    }

    #[test]
    fn never_below_min_nor_above_max() {
        let mut p = policy();
        p.min_workers = 2;
        p.max_workers = 3;
        let mut s = Scaler::new(p, 2);
        let got = run(&mut s, 12, &[(0, 0), (1_000_000, 0)]);
        assert_eq!(got, vec![2, 3]);
        let mut p = policy();
        p.min_workers = 2;
        let mut s = Scaler::new(p, 2);
        let got = run(&mut s, 12, &[(0, 0); 60]);
        assert!(got.iter().all(|&n| n == 2), "{got:?}");
    }
}
