//! Retention in cluster mode: expired blocks deleted from PostgreSQL, and
//! every worker's copy following.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use desa_model::TimeWindow;

use crate::pg::{open_store, open_store_keeping, Postgres};

/// `--retention` in cluster mode: a worker started with it deletes the
/// blocks of expired days from the database (a block of sparse days that
/// straddles the first kept second is rewritten with its kept events), every
/// worker's copy follows, answers count exactly what remains, and the
/// dropped events are counted in `/metrics`.
#[test]
fn retention_deletes_expired_blocks_for_every_worker() {
    use desa_store::{Store, WriteRequest};
    const DAY: i64 = 86_400;
    let pg = Postgres::start();
    let tmp = tempfile::tempdir().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let today = now.div_euclid(DAY) * DAY;
    let event = |device: &str, ts: i64| desa_model::Event {
        device_id: device.into(),
        ts_secs: ts,
        event_type: "t".into(),
        value: 1.0,
        latitude: 1.0,
        longitude: 2.0,
        metadata: None,
    };
    // Sparse old days (100 and 40 days back: one shared block that a
    // 60-day retention cuts), a full day 80 days back, and today.
    let mut events = Vec::new();
    for i in 0..10 {
        events.push(event("old", today - 100 * DAY + i));
        events.push(event("kept", today - 40 * DAY + i));
    }
    for i in 0..100 {
        events.push(event("old", today - 80 * DAY + i));
        events.push(event("new", today + i % 60));
    }
    let writer = open_store(&pg, tmp.path(), "a");
    writer.write(WriteRequest::events(events)).unwrap();
    let all = TimeWindow::new(0, today + 2 * DAY).unwrap();
    assert_eq!(writer.topk("t", all, 5).unwrap().devices.len(), 3);
    drop(writer);

    let keeping = open_store_keeping(&pg, tmp.path(), "a", Some(60 * DAY));
    let follower = open_store(&pg, tmp.path(), "b");
    let deadline = Instant::now() + Duration::from_secs(30);
    let want: HashMap<String, u64> = [("kept".to_owned(), 10), ("new".to_owned(), 100)].into();
    for s in [&keeping, &follower] {
        loop {
            let got: HashMap<String, u64> = s
                .topk("t", all, 5)
                .unwrap()
                .devices
                .into_iter()
                .map(|d| (d.device_id, d.count))
                .collect();
            if got == want {
                break;
            }
            assert!(Instant::now() < deadline, "still {got:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let old = TimeWindow::new(0, today - 60 * DAY).unwrap();
    assert_eq!(follower.avg("old", "t", old).unwrap().count, 0);
    let text = keeping.metrics();
    assert!(
        text.contains("desa_postgres_retention_dropped_events_total 110"),
        "{text}"
    );
    let mut client = postgres::Client::connect(&pg.url(), postgres::NoTls).unwrap();
    let expired: i64 = client
        .query_one(
            "SELECT count(*) FROM desa_blocks WHERE min_ts < $1",
            &[&(today - 60 * DAY)],
        )
        .unwrap()
        .get(0);
    assert_eq!(expired, 0);
}
