//! The result cache: answers of the query endpoints (avg, top-K, geo,
//! series), kept per node and served again only while they are exact.
//!
//! Each answer is stored with the store's write stamp of its type and
//! window, taken before the answer was computed (see
//! `desa_store::WriteEpochs`); a lookup takes the stamp again and serves
//! the answer only if it is the same, so no write since then touched the
//! type in the days the window holds. An answer is never older than the
//! writes acknowledged before the query started, as without the cache.
//!
//! The cache holds at most `--cache-size` bytes (keys and answers, by
//! estimate). Which entries stay is chosen by the time they save: the
//! policy is Greedy-Dual-Size-Frequency, each entry's priority being the
//! cost of computing it times its uses, per byte, plus the priority of the
//! last entry evicted (so entries that stop being used age out).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use desa_model::{
    AvgAnswer, GeoAnswer, GeoBox, QueryError, SeriesAnswer, TimeWindow, TopkAnswer, TypesAnswer,
};
use desa_store::{
    Claim, PartRequest, Partial, Reply, Store, StoreStats, WriteOutcome, WriteRequest,
};
use parking_lot::Mutex;

/// Bytes counted for an entry beyond its strings and answer (the maps'
/// slots, the entry's fields).
const ENTRY_OVERHEAD: usize = 160;
/// An answer larger than this share of the cache is not kept.
const LARGEST_SHARE: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Avg {
        device: String,
        event_type: String,
        w: (i64, i64),
    },
    Topk {
        event_type: String,
        w: (i64, i64),
        k: usize,
    },
    Geo {
        event_type: String,
        w: (i64, i64),
        /// The box's bounds, as bits.
        bbox: [u64; 4],
    },
    Series {
        device: String,
        event_type: String,
        w: (i64, i64),
        step: i64,
    },
}

impl Key {
    fn bytes(&self) -> usize {
        match self {
            Key::Avg {
                device, event_type, ..
            }
            | Key::Series {
                device, event_type, ..
            } => device.len() + event_type.len(),
            Key::Topk { event_type, .. } | Key::Geo { event_type, .. } => event_type.len(),
        }
    }
}

#[derive(Debug, Clone)]
enum Answer {
    Avg(AvgAnswer),
    Topk(TopkAnswer),
    Geo(GeoAnswer),
    Series(SeriesAnswer),
}

impl Answer {
    fn bytes(&self) -> usize {
        match self {
            Answer::Avg(a) => a.device_id.len() + a.event_type.len() + 48,
            Answer::Topk(a) => {
                a.event_type.len()
                    + a.devices
                        .iter()
                        .map(|d| d.device_id.len() + 32)
                        .sum::<usize>()
            }
            Answer::Geo(a) => a.event_type.len() + 80,
            Answer::Series(a) => a.device_id.len() + a.event_type.len() + 32 * a.points.len(),
        }
    }
}

struct Entry {
    answer: Answer,
    stamp: u64,
    /// Seconds the answer took to compute.
    cost: f64,
    uses: u64,
    bytes: usize,
    /// Where it sits in `Entries::by_priority`.
    rank: (u64, u64),
}

#[derive(Default)]
struct Entries {
    map: HashMap<Key, Entry>,
    /// (priority as ordered bits, sequence number) → key, lowest first.
    by_priority: BTreeMap<(u64, u64), Key>,
    bytes: usize,
    /// The priority of the last entry evicted.
    floor: f64,
    next_seq: u64,
}

impl Entries {
    fn rank(&mut self, cost: f64, uses: u64, bytes: usize) -> (u64, u64) {
        let priority = self.floor + cost * uses as f64 / bytes as f64;
        self.next_seq += 1;
        // Non-negative floats order as their bits do.
        (priority.max(0.0).to_bits(), self.next_seq)
    }

    fn remove(&mut self, key: &Key) -> Option<Entry> {
        let e = self.map.remove(key)?;
        self.by_priority.remove(&e.rank);
        self.bytes -= e.bytes;
        Some(e)
    }
}

/// Counters of the cache, for `/metrics`.
#[derive(Default)]
struct Counts {
    hits: [AtomicU64; 4],
    misses: [AtomicU64; 4],
    invalidations: AtomicU64,
    evictions: AtomicU64,
}

const KINDS: [&str; 4] = ["avg", "topk", "geo", "series"];

fn kind_index(key: &Key) -> usize {
    match key {
        Key::Avg { .. } => 0,
        Key::Topk { .. } => 1,
        Key::Geo { .. } => 2,
        Key::Series { .. } => 3,
    }
}

pub struct Cache {
    limit: usize,
    entries: Mutex<Entries>,
    counts: Counts,
}

impl Cache {
    /// A cache of at most `limit` bytes (0: off).
    pub fn new(limit: u64) -> Cache {
        Cache {
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
            entries: Mutex::new(Entries::default()),
            counts: Counts::default(),
        }
    }

    /// The answer of `key` if it was computed under `stamp`; a stale entry
    /// is dropped.
    fn get(&self, key: &Key, stamp: u64) -> Option<Answer> {
        let kind = kind_index(key);
        let mut entries = self.entries.lock();
        let stale = match entries.map.get(key) {
            Some(e) => e.stamp != stamp,
            None => {
                self.counts.misses[kind].fetch_add(1, Ordering::Relaxed);
                return None;
            }
        };
        if stale {
            entries.remove(key);
            self.counts.invalidations.fetch_add(1, Ordering::Relaxed);
            self.counts.misses[kind].fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let (cost, uses, bytes, old) = {
            let e = entries.map.get(key)?;
            (e.cost, e.uses + 1, e.bytes, e.rank)
        };
        let rank = entries.rank(cost, uses, bytes);
        entries.by_priority.remove(&old);
        entries.by_priority.insert(rank, key.clone());
        let e = entries.map.get_mut(key)?;
        e.uses = uses;
        e.rank = rank;
        self.counts.hits[kind].fetch_add(1, Ordering::Relaxed);
        Some(e.answer.clone())
    }

    /// Keeps `answer`, computed in `cost` seconds under `stamp`, evicting
    /// the entries of least priority past the limit.
    fn put(&self, key: Key, stamp: u64, answer: Answer, cost: f64) {
        let bytes = ENTRY_OVERHEAD + 2 * key.bytes() + answer.bytes();
        if bytes > self.limit / LARGEST_SHARE {
            return;
        }
        let mut entries = self.entries.lock();
        if entries.map.get(&key).is_some_and(|e| e.stamp >= stamp) {
            return;
        }
        entries.remove(&key);
        let rank = entries.rank(cost, 1, bytes);
        entries.by_priority.insert(rank, key.clone());
        entries.bytes += bytes;
        entries.map.insert(
            key,
            Entry {
                answer,
                stamp,
                cost,
                uses: 1,
                bytes,
                rank,
            },
        );
        while entries.bytes > self.limit {
            let Some((&(priority, _), victim)) = entries.by_priority.iter().next() else {
                break;
            };
            let victim = victim.clone();
            entries.floor = f64::from_bits(priority);
            entries.remove(&victim);
            self.counts.evictions.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Bytes and entries held.
    pub fn size(&self) -> (usize, usize) {
        let entries = self.entries.lock();
        (entries.bytes, entries.map.len())
    }
}

impl crate::Component for Cache {
    fn name(&self) -> &'static str {
        "cache"
    }

    fn health(&self) -> (bool, serde_json::Value) {
        let (bytes, entries) = self.size();
        (
            true,
            serde_json::json!({"bytes": bytes, "entries": entries, "limit_bytes": self.limit}),
        )
    }

    fn metrics(&self) -> String {
        use std::fmt::Write;
        let c = &self.counts;
        let mut out = String::new();
        let mut by_kind = |name: &str, help: &str, counts: &[AtomicU64; 4]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (kind, n) in KINDS.iter().zip(counts) {
                let _ = writeln!(
                    out,
                    "{name}{{kind=\"{kind}\"}} {}",
                    n.load(Ordering::Relaxed)
                );
            }
        };
        by_kind(
            "desa_cache_hits_total",
            "Queries answered from the result cache, by kind.",
            &c.hits,
        );
        by_kind(
            "desa_cache_misses_total",
            "Queries the result cache could not answer (absent or stale), by kind.",
            &c.misses,
        );
        let (bytes, entries) = self.size();
        for (name, kind, help, v) in [
            (
                "desa_cache_invalidations_total",
                "counter",
                "Cached answers dropped because a write touched their type and days.",
                c.invalidations.load(Ordering::Relaxed),
            ),
            (
                "desa_cache_evictions_total",
                "counter",
                "Cached answers dropped to stay under --cache-size.",
                c.evictions.load(Ordering::Relaxed),
            ),
            (
                "desa_cache_bytes",
                "gauge",
                "Bytes the result cache holds (estimated).",
                bytes as u64,
            ),
            (
                "desa_cache_entries",
                "gauge",
                "Answers the result cache holds.",
                entries as u64,
            ),
            (
                "desa_cache_limit_bytes",
                "gauge",
                "The result cache's limit (--cache-size).",
                self.limit as u64,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        }
        out
    }
}

/// A store whose query answers go through a [`Cache`].
pub struct Cached {
    store: Arc<dyn Store>,
    cache: Arc<Cache>,
}

impl Cached {
    pub fn new(store: Arc<dyn Store>, cache: Arc<Cache>) -> Cached {
        Cached { store, cache }
    }

    /// The answer of `key` from the cache, or computed by `compute` and kept.
    fn through<T>(
        &self,
        key: Key,
        event_type: &str,
        w: TimeWindow,
        compute: impl FnOnce() -> desa_store::Result<T>,
        keep: fn(&T) -> Option<Answer>,
        unwrap: fn(Answer) -> Option<T>,
    ) -> desa_store::Result<T> {
        if self.cache.limit == 0 {
            return compute();
        }
        let Some(stamp) = self.store.stamp(event_type, w)? else {
            return compute();
        };
        if let Some(answer) = self.cache.get(&key, stamp).and_then(unwrap) {
            return Ok(answer);
        }
        let started = Instant::now();
        let answer = compute()?;
        let cost = started.elapsed().as_secs_f64();
        if let Some(kept) = keep(&answer) {
            self.cache.put(key, stamp, kept, cost);
        }
        Ok(answer)
    }
}

fn window(w: TimeWindow) -> (i64, i64) {
    (w.start, w.end)
}

impl Store for Cached {
    fn write_with(&self, req: WriteRequest, reply: Reply) {
        self.store.write_with(req, reply)
    }

    fn write(&self, req: WriteRequest) -> desa_store::Result<WriteOutcome> {
        self.store.write(req)
    }

    fn idempotent_response(&self, key: &str) -> Option<String> {
        self.store.idempotent_response(key)
    }

    fn claim(&self, source: &str, partitions: &[i32], of: i32) -> desa_store::Result<Vec<Claim>> {
        self.store.claim(source, partitions, of)
    }

    fn release(&self, source: &str, partitions: &[i32]) {
        self.store.release(source, partitions)
    }

    fn partial(&self, req: &PartRequest) -> desa_store::Result<Option<Partial>> {
        self.store.partial(req)
    }

    fn watermark_secs(&self) -> Option<i64> {
        self.store.watermark_secs()
    }

    fn stamp(&self, event_type: &str, w: TimeWindow) -> desa_store::Result<Option<u64>> {
        self.store.stamp(event_type, w)
    }

    fn avg(&self, device: &str, event_type: &str, w: TimeWindow) -> desa_store::Result<AvgAnswer> {
        let key = Key::Avg {
            device: device.to_owned(),
            event_type: event_type.to_owned(),
            w: window(w),
        };
        self.through(
            key,
            event_type,
            w,
            || self.store.avg(device, event_type, w),
            |a| Some(Answer::Avg(a.clone())),
            |a| match a {
                Answer::Avg(a) => Some(a),
                _ => None,
            },
        )
    }

    fn topk(&self, event_type: &str, w: TimeWindow, k: usize) -> desa_store::Result<TopkAnswer> {
        let key = Key::Topk {
            event_type: event_type.to_owned(),
            w: window(w),
            k,
        };
        self.through(
            key,
            event_type,
            w,
            || self.store.topk(event_type, w, k),
            |a| Some(Answer::Topk(a.clone())),
            |a| match a {
                Answer::Topk(a) => Some(a),
                _ => None,
            },
        )
    }

    fn geo(&self, event_type: &str, bbox: &GeoBox, w: TimeWindow) -> desa_store::Result<GeoAnswer> {
        let key = Key::Geo {
            event_type: event_type.to_owned(),
            w: window(w),
            bbox: [bbox.min_lat, bbox.max_lat, bbox.min_lon, bbox.max_lon].map(f64::to_bits),
        };
        self.through(
            key,
            event_type,
            w,
            || self.store.geo(event_type, bbox, w),
            |a| Some(Answer::Geo(a.clone())),
            |a| match a {
                Answer::Geo(a) => Some(a),
                _ => None,
            },
        )
    }

    fn types(&self) -> desa_store::Result<TypesAnswer> {
        self.store.types()
    }

    fn series(
        &self,
        device: &str,
        event_type: &str,
        w: TimeWindow,
        step: i64,
    ) -> desa_store::Result<Result<SeriesAnswer, QueryError>> {
        let key = Key::Series {
            device: device.to_owned(),
            event_type: event_type.to_owned(),
            w: window(w),
            step,
        };
        self.through(
            key,
            event_type,
            w,
            || self.store.series(device, event_type, w, step),
            |r| r.as_ref().ok().map(|a| Answer::Series(a.clone())),
            |a| match a {
                Answer::Series(a) => Some(Ok(a)),
                _ => None,
            },
        )
    }

    fn stats(&self) -> StoreStats {
        self.store.stats()
    }

    fn metrics(&self) -> String {
        self.store.metrics()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn avg_key(i: usize) -> Key {
        Key::Avg {
            device: format!("device-{i}"),
            event_type: "t".into(),
            w: (0, 60),
        }
    }

    fn answer(i: usize) -> Answer {
        Answer::Avg(AvgAnswer::new(
            &format!("device-{i}"),
            "t",
            TimeWindow::new(0, 60).unwrap(),
            1,
            i as f64,
        ))
    }

    #[test]
    fn the_answers_that_save_the_most_time_stay_and_the_limit_holds() {
        let cache = Cache::new(16 * 1024);
        // A dear answer, used often.
        cache.put(avg_key(0), 1, answer(0), 0.5);
        for _ in 0..3 {
            assert!(cache.get(&avg_key(0), 1).is_some());
        }
        // Many cheap ones, each used once.
        for i in 1..2_000 {
            cache.put(avg_key(i), 1, answer(i), 0.000_01);
            assert!(cache.size().0 <= 16 * 1024);
        }
        assert!(
            cache.get(&avg_key(0), 1).is_some(),
            "the dear answer stayed"
        );
        assert!(cache.counts.evictions.load(Ordering::Relaxed) > 1_000);
        assert!(
            cache.get(&avg_key(1), 1).is_none(),
            "old cheap answers went"
        );
        // A changed stamp drops the entry.
        assert!(cache.get(&avg_key(0), 2).is_none());
        assert!(cache.get(&avg_key(0), 1).is_none());
        assert_eq!(cache.counts.invalidations.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn an_older_answer_never_replaces_a_newer_one_and_off_keeps_nothing() {
        let cache = Cache::new(1 << 20);
        cache.put(avg_key(0), 5, answer(5), 0.1);
        cache.put(avg_key(0), 4, answer(4), 0.1);
        assert!(matches!(cache.get(&avg_key(0), 5), Some(Answer::Avg(a)) if a.avg == Some(5.0)));
        let off = Cache::new(0);
        off.put(avg_key(0), 1, answer(0), 1.0);
        assert_eq!(off.size(), (0, 0));
    }
}
