//! kill -9 while a client streams: every acknowledged event is counted after
//! restart, and (with idempotency keys on retries) nothing is counted twice.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::support::{all_counts, TestServer};

const BATCHES: usize = 400;
const PER_BATCH: usize = 50;
const DEVICES: usize = 40;

fn batch_body(b: usize) -> String {
    (0..PER_BATCH)
        .map(|i| {
            format!(
                "{{\"device_id\":\"crash-{}\",\"timestamp\":{},\"type\":\"t\",\"value\":{},\"location\":{{\"latitude\":1,\"longitude\":2}}}}\n",
                (b * PER_BATCH + i) % DEVICES,
                1_767_225_600 + (b * PER_BATCH + i) as i64,
                i
            )
        })
        .collect()
}

#[test]
fn kill9_mid_stream_loses_no_acknowledged_event_and_counts_none_twice() {
    let server = Arc::new(Mutex::new(TestServer::start(&[
        "--head-max-events",
        "3000",
    ])));
    let base = Arc::new(Mutex::new(server.lock().unwrap().base.clone()));
    let done = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let client = {
        let (base, done, acked) = (base.clone(), done.clone(), acked.clone());
        std::thread::spawn(move || {
            let agent = ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(10))
                .build();
            for b in 0..BATCHES {
                // Retry the same batch under the same key until it is acknowledged.
                loop {
                    let url = format!("{}/v1/events", base.lock().unwrap());
                    let r = agent
                        .post(&url)
                        .set("Content-Type", "application/x-ndjson")
                        .set("Idempotency-Key", &format!("batch-{b}"))
                        .send_string(&batch_body(b));
                    if let Ok(resp) = r {
                        let v: serde_json::Value = resp.into_json().unwrap();
                        assert_eq!(v["accepted"].as_u64(), Some(PER_BATCH as u64));
                        acked.fetch_add(PER_BATCH as u64, Ordering::SeqCst);
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            done.store(true, Ordering::SeqCst);
        })
    };
    // Kill points are placed by progress, not by time, so that a faster or
    // slower node is killed mid-stream just as often.
    let mut rng = StdRng::seed_from_u64(5);
    let total = (BATCHES * PER_BATCH) as u64;
    let mut kill_at: Vec<u64> = (0..6)
        .map(|_| rng.gen_range(total / 20..total * 9 / 10))
        .collect();
    kill_at.sort_unstable();
    let mut kills = 0;
    while !done.load(Ordering::SeqCst) && kills < kill_at.len() {
        if acked.load(Ordering::SeqCst) < kill_at[kills] {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        let mut s = server.lock().unwrap();
        s.restart();
        *base.lock().unwrap() = s.base.clone();
        kills += 1;
    }
    client.join().unwrap();
    assert!(kills >= 3, "the stream ended before enough kills ({kills})");
    let mut s = server.lock().unwrap();
    s.restart();
    let counts = all_counts(&s, "t");
    let total: u64 = counts.values().sum();
    assert_eq!(acked.load(Ordering::SeqCst), (BATCHES * PER_BATCH) as u64);
    assert_eq!(
        total,
        (BATCHES * PER_BATCH) as u64,
        "stored events differ from acknowledged ones"
    );
    for d in 0..DEVICES {
        assert_eq!(
            counts[&format!("crash-{d}")],
            (BATCHES * PER_BATCH / DEVICES) as u64
        );
    }
}

#[test]
fn acknowledged_then_killed_is_still_there() {
    let mut s = TestServer::start(&[]);
    let mut acked = 0;
    for b in 0..20 {
        let r = s.post_ndjson(&batch_body(b));
        assert_eq!(r.status, 200);
        acked += r.body["accepted"].as_u64().unwrap();
        s.restart(); // kill -9 right after the acknowledgement
    }
    let total: u64 = all_counts(&s, "t").values().sum();
    assert_eq!(total, acked);
}
