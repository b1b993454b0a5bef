//! Idempotency keys, the late-data policy, metrics, and recovery from a torn
//! or corrupt log and a corrupt segment.

use std::fs;
use std::io::Write;

use crate::support::{all_counts, window, TestServer};

fn event(device: &str, ts: i64) -> String {
    format!(
        "{{\"device_id\":\"{device}\",\"timestamp\":{ts},\"type\":\"t\",\"value\":1.0,\"location\":{{\"latitude\":0,\"longitude\":0}}}}\n"
    )
}

#[test]
fn idempotency_key_applies_a_request_once_even_across_kill9() {
    let mut s = TestServer::start(&[]);
    let body = event("a", 1_767_225_600) + &event("b", 1_767_225_601) + "garbage\n";
    let first = s
        .post(
            body.as_bytes(),
            "application/x-ndjson",
            &[("Idempotency-Key", "k1")],
        )
        .unwrap();
    assert_eq!(first.status, 200);
    assert_eq!(first.body["accepted"], 2);
    let again = s
        .post(
            body.as_bytes(),
            "application/x-ndjson",
            &[("Idempotency-Key", "k1")],
        )
        .unwrap();
    assert_eq!(again.body, first.body);
    s.restart();
    let after = s
        .post(
            body.as_bytes(),
            "application/x-ndjson",
            &[("Idempotency-Key", "k1")],
        )
        .unwrap();
    assert_eq!(after.body, first.body);
    // And across a flush of the head to segments (the keys file).
    let mut s2 = TestServer::start(&["--head-max-events", "1"]);
    s2.post(
        body.as_bytes(),
        "application/x-ndjson",
        &[("Idempotency-Key", "k2")],
    )
    .unwrap();
    s2.restart();
    let replay = s2
        .post(
            body.as_bytes(),
            "application/x-ndjson",
            &[("Idempotency-Key", "k2")],
        )
        .unwrap();
    assert_eq!(replay.body["accepted"], 2);
    assert_eq!(all_counts(&s, "t").values().sum::<u64>(), 2);
    assert_eq!(all_counts(&s2, "t").values().sum::<u64>(), 2);
    // Without a key, a duplicate counts twice.
    s.post_ndjson(&body);
    assert_eq!(all_counts(&s, "t").values().sum::<u64>(), 4);
}

#[test]
fn max_lateness_rejects_old_events_with_a_reason_and_lateness_is_measured() {
    let s = TestServer::start(&["--max-lateness", "1h"]);
    let t = 1_767_225_600;
    assert_eq!(s.post_ndjson(&event("a", t)).body["accepted"], 1);
    let r = s.post_ndjson(&(event("a", t - 1_800) + &event("a", t - 7_200)));
    assert_eq!(r.body["accepted"], 1);
    assert_eq!(r.body["rejected"][0]["index"], 1);
    assert!(r.body["rejected"][0]["error"]
        .as_str()
        .unwrap()
        .contains("max-lateness"));
    let metrics = s.get_text("/metrics");
    assert!(
        metrics.contains("desa_events_rejected_total{reason=\"too_late\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("desa_event_lateness_seconds_count 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!("desa_event_time_watermark_seconds {t}")),
        "{metrics}"
    );

    // By default late events are accepted and counted.
    let s = TestServer::start(&[]);
    s.post_ndjson(&event("a", t));
    assert_eq!(
        s.post_ndjson(&event("a", t - 30 * 86_400)).body["accepted"],
        1
    );
    assert_eq!(all_counts(&s, "t")["a"], 2);
}

#[test]
fn metrics_cover_ingest_queries_storage_and_memory() {
    let s = TestServer::start(&[]);
    s.post_ndjson(&(event("a", 1_767_225_600) + "nope\n"));
    s.get(
        "/v1/query/avg",
        &[
            ("device_id", "a".into()),
            ("type", "t".into()),
            ("start", "0".into()),
            ("end", "2000000000".into()),
        ],
    );
    let m = s.get_text("/metrics");
    for needle in [
        "desa_events_accepted_total 1",
        "desa_events_rejected_total{reason=\"invalid_json\"} 1",
        "desa_ingest_request_duration_seconds_count 1",
        "desa_wal_fsync_duration_seconds_count",
        "desa_query_duration_seconds_count{kind=\"avg\"} 1",
        "desa_storage_bytes",
        "desa_stored_events 1",
        "desa_resident_memory_bytes",
    ] {
        assert!(m.contains(needle), "missing {needle} in\n{m}");
    }
}

fn newest_wal(dir: &std::path::Path) -> std::path::PathBuf {
    let mut files: Vec<_> = fs::read_dir(dir.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files.pop().unwrap()
}

#[test]
fn torn_log_tail_is_truncated_and_mid_log_corruption_stops_the_node() {
    let mut s = TestServer::start(&[]);
    for i in 0..3 {
        s.post_ndjson(&event("a", 1_767_225_600 + i));
    }
    s.kill9();
    // A torn write: half a record at the end of the newest log file.
    let wal = newest_wal(&s.data_dir);
    let bytes = fs::read(&wal).unwrap();
    assert!(bytes.len() > 100, "the three batches are in the log");
    fs::OpenOptions::new()
        .append(true)
        .open(&wal)
        .unwrap()
        .write_all(&bytes[..40])
        .unwrap();
    s.restart();
    assert_eq!(all_counts(&s, "t")["a"], 3);

    // Corruption in the middle: flip a byte of the first record while later
    // records are intact. The node must refuse to start and say where.
    for i in 0..3 {
        s.post_ndjson(&event("b", 1_767_225_600 + i));
    }
    s.kill9();
    let wal = newest_wal(&s.data_dir);
    let mut bytes = fs::read(&wal).unwrap();
    bytes[20] ^= 0xFF;
    fs::write(&wal, &bytes).unwrap();
    let log = s
        .try_restart()
        .expect_err("a corrupt log must not be served");
    assert!(log.contains("corrupt") && log.contains(".wal"), "{log}");
}

/// A segment damaged while the node was down: the node starts without
/// reading every byte of its data, never serves the damaged file (every
/// query that needs it answers 503 naming it), names it on `/healthz` once
/// the scrub or a query has read it, and answers every other window.
#[test]
fn a_corrupt_segment_is_never_served_and_is_named() {
    let mut s = TestServer::start(&["--head-max-events", "2"]);
    s.post_ndjson(
        &(event("a", 1_767_225_600) + &event("a", 1_767_225_601) + &event("a", 1_767_225_602)),
    );
    s.restart(); // replays and flushes everything into segments
    assert_eq!(all_counts(&s, "t")["a"], 3);
    s.wait_flushed();
    s.kill9();
    let seg = fs::read_dir(s.data_dir.join("segments"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = fs::read(&seg).unwrap();
    bytes[100] ^= 0x01;
    fs::write(&seg, &bytes).unwrap();
    s.restart();
    // A later day, in the log and the head: a window over it alone answers.
    let later = 1_767_225_600 + 10 * 86_400;
    assert_eq!(s.post_ndjson(&event("b", later)).status, 200);
    let mut p = window(later, later + 1);
    p.extend([("type", "t".to_owned()), ("k", "5".to_owned())]);
    let r = s.get("/v1/query/topk", &p);
    assert_eq!(r.status, 200, "{}", r.body);
    let mut p = window(0, 4_000_000_000);
    p.extend([("type", "t".to_owned()), ("k", "5".to_owned())]);
    let r = s.get("/v1/query/topk", &p);
    assert_eq!(r.status, 503, "a damaged segment was served: {}", r.body);
    assert!(
        r.error().contains("checksum") && r.error().contains(".seg"),
        "{}",
        r.body
    );
    let health = s.get("/healthz", &[]);
    let text = health.body.to_string();
    assert!(text.contains("checksum") && text.contains(".seg"), "{text}");
    // The scrub finds it without a query too.
    s.restart();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let text = s.get("/healthz", &[]).body.to_string();
        if text.contains("checksum") && text.contains(".seg") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not reported: {text}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// A full disk: 503 with Retry-After, nothing of the refused request stored,
/// every acknowledged event kept, and writes resume once space is freed.
/// Needs a small tmpfs, so it mounts one (root only; elsewhere it says so).
#[test]
fn disk_full_gives_503_with_retry_after_and_keeps_acknowledged_events() {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("small");
    fs::create_dir(&mnt).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"])
        .arg(&mnt)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!(
            "SKIPPED: cannot mount a tmpfs here (not root?); the disk-full path is not exercised"
        );
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _guard = Unmount(mnt.clone());
    let mut s = TestServer::start_in(&mnt.join("data"), &[]).unwrap();
    // Leave about 1 MiB free.
    let filler = mnt.join("filler");
    fs::write(&filler, vec![0u8; 7 << 20]).unwrap();
    let mut acked = 0u64;
    let mut refused = None;
    for b in 0..2_000 {
        let body: String = (0..200)
            .map(|i| event(&format!("d{}", i % 7), 1_767_225_600 + b * 200 + i))
            .collect();
        let r = s
            .post(body.as_bytes(), "application/x-ndjson", &[])
            .unwrap();
        if r.status == 200 {
            acked += r.body["accepted"].as_u64().unwrap();
        } else {
            refused = Some(r);
            break;
        }
    }
    let r = refused.expect("the disk never filled");
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.header("Retry-After").is_some());
    assert!(r.error().contains("cannot persist"), "{}", r.error());
    assert_eq!(all_counts(&s, "t").values().sum::<u64>(), acked);
    fs::remove_file(&filler).unwrap();
    let r = s.post_ndjson(&event("late-comer", 1_767_225_600));
    assert_eq!(r.status, 200, "{}", r.body);
    s.restart();
    assert_eq!(all_counts(&s, "t").values().sum::<u64>(), acked + 1);
}

/// A failed fsync is injected into the real process (the preloaded shim
/// `faults.c` makes fsync and fdatasync return EIO while a trigger file
/// exists): the request
/// whose sync failed is not acknowledged, the node refuses every later write
/// even after the disk recovers (it cannot know what the kernel dropped),
/// says so in /healthz, and after a restart every acknowledged event is there.
#[test]
fn fsync_failure_poisons_the_node_and_keeps_acknowledged_events() {
    let tmp = tempfile::tempdir().unwrap();
    let trigger = tmp.path().join("fail-syncs-now");
    let data = tmp.path().join("data");
    let log = tmp.path().join("faults.log");
    let env = crate::support::fault_env(tmp.path(), &data, "fsync", &trigger, 1, &log);
    let mut s = TestServer::start_with_env(&data, &[], &env).unwrap();
    let t0 = 1_767_225_600;
    let mut acked = 0;
    for b in 0..20 {
        let body: String = (0..50).map(|i| event("acked", t0 + b * 50 + i)).collect();
        let r = s
            .post(body.as_bytes(), "application/x-ndjson", &[])
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        acked += r.body["accepted"].as_u64().unwrap();
    }
    fs::write(&trigger, b"").unwrap();
    let body: String = (0..50).map(|i| event("unacked", t0 + i)).collect();
    let r = s
        .post(body.as_bytes(), "application/x-ndjson", &[])
        .unwrap();
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.error().contains("poisoned"), "{}", r.error());
    // The disk is fine again, but the node does not retry.
    fs::remove_file(&trigger).unwrap();
    let r = s.post_ndjson(&event("after", t0));
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.error().contains("poisoned"), "{}", r.error());
    assert_eq!(r.header("Retry-After"), Some("60"));
    let health = s.get("/healthz", &[]);
    assert!(
        health.body["storage"]
            .as_str()
            .unwrap_or("")
            .contains("poisoned"),
        "{}",
        health.body
    );
    // Queries still answer from what is stored.
    assert_eq!(all_counts(&s, "t")["acked"], acked);

    s.env.clear();
    s.restart();
    let counts = all_counts(&s, "t");
    assert_eq!(counts["acked"], acked);
    assert!(!counts.contains_key("after"));
    // The unacknowledged request is one log record: wholly there or wholly not.
    let unacked = counts.get("unacked").copied().unwrap_or(0);
    assert!(unacked == 0 || unacked == 50, "{unacked} of 50");
    let r = s.post_ndjson(&event("after", t0));
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn a_second_node_on_the_same_data_dir_is_refused_until_the_first_dies() {
    let mut s = TestServer::start(&[]);
    s.post_ndjson(&event("a", 1_767_225_600));
    let err = TestServer::start_in(&s.data_dir, &[])
        .err()
        .expect("a second node on the same data dir must not start");
    assert!(err.contains("in use by another process"), "{err}");
    s.restart(); // kill -9 releases the lock
    assert_eq!(all_counts(&s, "t")["a"], 1);
}

/// With `--retention 30d`, an event older than the first kept day is
/// refused naming the flag (it would be dropped at once), newer ones are
/// stored, and the refusals are counted as `expired`.
#[test]
fn retention_refuses_events_it_would_drop() {
    let s = TestServer::start(&["--retention", "30d"]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let body = event("old", now - 40 * 86_400) + &event("new", now - 86_400);
    let r = s.post_ndjson(&body);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["accepted"], 1);
    let why = r.body["rejected"][0]["error"].as_str().unwrap();
    assert!(why.contains("--retention"), "{why}");
    assert!(s
        .get_text("/metrics")
        .contains("desa_events_rejected_total{reason=\"expired\"} 1"));
    let counts = all_counts(&s, "t");
    assert_eq!(counts.get("new"), Some(&1));
    assert_eq!(counts.get("old"), None);
}
