//! Queries while the shards a cluster worker holds change under them. A
//! consumer group's eager rebalance revokes every partition of a worker and
//! then assigns its new share; the worker drops its copies of the shards it
//! no longer holds at the revoke. A query planned before the revoke and
//! answered after it must still count every shard.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use desa_model::{Event, GeoBox, TimeWindow};
use desa_store::{Store, WriteRequest};

use crate::pg::{store_config, Postgres};

/// One worker claims the six partitions of a topic, so it holds every
/// shard. Its events span every shard, in several blocks each. While one
/// thread revokes and claims the partitions again and again, as a
/// rebalance does, the other asks the three queries: each answer equals
/// the oracle's.
#[test]
fn queries_during_rebalances_count_every_shard() {
    let pg = Postgres::start();
    let tmp = tempfile::tempdir().unwrap();
    let store = desa_postgres::PgStore::open(desa_postgres::PgConfig {
        // Nobody else is asked: this worker owns every shard.
        advertise_url: Some("http://127.0.0.1:9".into()),
        ..store_config(&pg, tmp.path(), "w")
    })
    .unwrap();
    let partitions: Vec<i32> = (0..6).collect();
    store.claim("events", &partitions, 6).unwrap();

    let day = 1_767_225_600;
    let event = |i: i64| Event {
        device_id: format!("d{}", i % 300),
        ts_secs: day + i * 7 % 86_400,
        event_type: "t".into(),
        value: (i % 13) as f64,
        latitude: (i % 50) as f64,
        longitude: (i % 70) as f64,
        metadata: None,
    };
    let (writes, per_write) = (5, 600);
    for w in 0..writes {
        let batch = (0..per_write).map(|i| event(w * per_write + i)).collect();
        store.write(WriteRequest::events(batch)).unwrap();
    }
    let all: Vec<Event> = (0..writes * per_write).map(event).collect();
    let oracle = desa_model::oracle::Oracle { events: all };
    let whole = TimeWindow::new(day, day + 86_400).unwrap();
    let bbox = GeoBox::new(0.0, 90.0, 0.0, 90.0).unwrap();
    let want_geo = oracle.geo("t", &bbox, whole);
    let want_avg = oracle.avg("d7", "t", whole);
    let want_top = oracle.topk("t", whole, 5);

    let stop = AtomicBool::new(false);
    let rebalances = AtomicU64::new(0);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut asked = 0;
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                // A rebalance every 50 ms: far more often than a
                // consumer group's, and still slower than a query.
                store.release("events", &partitions);
                std::thread::sleep(Duration::from_millis(10));
                store.claim("events", &partitions, 6).unwrap();
                rebalances.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(40));
            }
        });
        let check = |asked: u32| {
            let g = store.geo("t", &bbox, whole).unwrap();
            assert_eq!(
                (g.count, g.avg),
                (want_geo.count, want_geo.avg),
                "geo answer {asked} after {} rebalances",
                rebalances.load(Ordering::Relaxed)
            );
            let a = store.avg("d7", "t", whole).unwrap();
            assert_eq!(
                (a.count, a.avg),
                (want_avg.count, want_avg.avg),
                "avg answer {asked}"
            );
            let t = store.topk("t", whole, 5).unwrap();
            assert_eq!(t.devices, want_top.devices, "top-5 answer {asked}");
        };
        while Instant::now() < deadline && rebalances.load(Ordering::Relaxed) < 100 {
            let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(asked)));
            if let Err(e) = ok {
                stop.store(true, Ordering::Relaxed);
                std::panic::resume_unwind(e);
            }
            asked += 1;
        }
        stop.store(true, Ordering::Relaxed);
    });
    println!(
        "{asked} rounds of queries, {} rebalances",
        rebalances.load(Ordering::Relaxed)
    );
    assert!(
        rebalances.load(Ordering::Relaxed) >= 100,
        "too few rebalances to test"
    );
}
