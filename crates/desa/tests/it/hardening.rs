//! What a hostile client or a careless operator does to a node: windows to
//! the end of time, a data dir without its MANIFEST, a write that fails and
//! is retried, swapped coordinates, a small body that would expand into a
//! huge response.

use std::fs;
use std::time::{Duration, Instant};

use crate::support::{all_counts, gzip, window, TestServer};

const DAY: i64 = 86_400;
const T0: i64 = 1_767_225_600;

fn event(device: &str, ts: i64, value: f64) -> String {
    format!(
        "{{\"device_id\":\"{device}\",\"timestamp\":{ts},\"type\":\"t\",\"value\":{value},\"location\":{{\"latitude\":10,\"longitude\":20}}}}\n"
    )
}

/// Waits until the node has flushed, merged and summarized everything due.
fn wait_idle(s: &TestServer) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let h = s.get("/healthz", &[]).body;
        if h["maintenance"] == "idle" && h["unflushed_events"] == 0 {
            return h;
        }
        assert!(Instant::now() < deadline, "maintenance never idle: {h}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Issue: a window to the end of time walked the summaries' cover one day
/// at a time (2^63 seconds is 10^14 days) under the state lock.
#[test]
fn windows_to_the_end_of_time_are_answered_from_the_stored_range() {
    let s = TestServer::start(&["--head-max-events", "20"]);
    // 40 days, two events a day, so that summaries of several levels exist.
    let body: String = (0..40)
        .flat_map(|d| {
            [
                event("a", T0 + d * DAY, 1.0),
                event("b", T0 + d * DAY + 7, 3.0),
            ]
        })
        .collect();
    assert_eq!(s.post_ndjson(&body).status, 200);
    let h = wait_idle(&s);
    assert!(h["summaries"].as_u64().unwrap() > 0, "{h}");
    let forever = window(0, i64::MAX);
    let mut p = forever.clone();
    p.extend([("type", "t".to_owned()), ("k", "10".to_owned())]);
    let r = s.get("/v1/query/topk", &p);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["devices"][0]["count"], 40);
    assert_eq!(r.body["devices"][1]["count"], 40);
    let mut p = forever.clone();
    p.extend([("type", "t".to_owned()), ("device_id", "b".to_owned())]);
    let r = s.get("/v1/query/avg", &p);
    assert_eq!(
        (r.body["count"].clone(), r.body["avg"].clone()),
        (40.into(), 3.0.into())
    );
    let mut p = forever;
    p.extend(
        [
            ("type", "t"),
            ("min_lat", "0"),
            ("max_lat", "20"),
            ("min_lon", "0"),
            ("max_lon", "30"),
        ]
        .map(|(k, v)| (k, v.to_owned())),
    );
    let r = s.get("/v1/query/geo", &p);
    assert_eq!(
        (r.body["count"].clone(), r.body["avg"].clone()),
        (80.into(), 2.0.into())
    );
}

/// Issue: a node started on a data dir whose MANIFEST was moved away served
/// 0 events, having deleted every segment as "not named in the manifest".
#[test]
fn a_missing_manifest_refuses_to_start_and_deletes_nothing() {
    let mut s = TestServer::start(&["--head-max-events", "16"]);
    let body: String = (0..128)
        .map(|i| event(&format!("d{}", i % 8), T0 + i, 1.0))
        .collect();
    assert_eq!(s.post_ndjson(&body).status, 200);
    s.wait_flushed();
    s.terminate();
    let moved = s.data_dir.with_extension("manifest-elsewhere");
    fs::rename(s.data_dir.join("MANIFEST"), &moved).unwrap();
    let files_before = count_files(&s.data_dir);
    let log = s.try_restart().expect_err("started without its MANIFEST");
    assert!(log.contains("MANIFEST"), "{log}");
    assert!(
        log.contains("desa fsck"),
        "the error names the recovery command: {log}"
    );
    assert_eq!(count_files(&s.data_dir), files_before, "files were removed");
    // fsck says what is there and that the MANIFEST is missing...
    let fsck = desa(&["fsck", "--json", "--data-dir"], &s.data_dir);
    assert!(!fsck.status.success());
    let report: serde_json::Value = serde_json::from_slice(&fsck.stdout).unwrap();
    assert_eq!(report["manifest"], false, "{report}");
    assert_eq!(report["stored_events"], 0, "{report}");
    assert!(
        !report["unnamed"].as_array().unwrap().is_empty(),
        "{report}"
    );
    // ...and rebuilds it from the files, which hold every event.
    let rebuilt = desa(&["fsck", "--rebuild-manifest", "--data-dir"], &s.data_dir);
    assert!(rebuilt.status.success(), "{rebuilt:?}");
    let fsck = desa(&["fsck", "--json", "--data-dir"], &s.data_dir);
    assert!(fsck.status.success(), "{fsck:?}");
    let report: serde_json::Value = serde_json::from_slice(&fsck.stdout).unwrap();
    assert_eq!(report["stored_events"], 128, "{report}");
    assert!(
        report["bytes_by_part"]["timestamps"].as_u64().unwrap() > 0,
        "{report}"
    );
    s.try_restart().unwrap();
    assert_eq!(all_counts(&s, "t").values().sum::<u64>(), 128);
    assert_eq!(s.get("/healthz", &[]).body["stored_events"], 128);
    // The manifest that was moved away is still the operator's to restore.
    assert!(moved.exists());
}

fn desa(args: &[&str], dir: &std::path::Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_desa"))
        .args(args)
        .arg(dir)
        .output()
        .unwrap()
}

/// Files a node's manifest does not name are moved to `orphans/`, never
/// deleted: the node cannot tell a crash's leftover from a file an operator
/// copied in.
#[test]
fn files_the_manifest_does_not_name_go_to_orphans() {
    let mut s = TestServer::start(&["--head-max-events", "16"]);
    let body: String = (0..32).map(|i| event("d", T0 + i, 1.0)).collect();
    assert_eq!(s.post_ndjson(&body).status, 200);
    s.wait_flushed();
    s.terminate();
    let stray = s.data_dir.join("segments").join("000000099999.seg");
    fs::write(&stray, b"someone's file").unwrap();
    s.try_restart().unwrap();
    assert!(!stray.exists());
    let kept = s.data_dir.join("orphans").join("000000099999.seg");
    assert_eq!(fs::read(&kept).unwrap(), b"someone's file");
    assert!(s.log_text().contains("000000099999.seg"));
    assert_eq!(all_counts(&s, "t").values().sum::<u64>(), 32);
}

fn count_files(dir: &std::path::Path) -> usize {
    let mut n = 0;
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            n += count_files(&e.path());
        } else {
            n += 1;
        }
    }
    n
}

/// Issue: a flush that failed at the manifest write and was retried added
/// its rows to the in-memory manifest on every attempt; once one attempt
/// succeeded, a restart served every retry's copy (24,000 for 1,500).
#[test]
fn a_failed_flush_retried_stores_each_event_once() {
    let mut s = TestServer::start(&["--head-max-events", "1000"]);
    let first: String = (0..500)
        .map(|i| event(&format!("d{}", i % 5), T0 + i, 1.0))
        .collect();
    assert_eq!(s.post_ndjson(&first).status, 200);
    // A directory where the manifest's temporary file goes: every manifest
    // write fails, as on ENOSPC, EIO or EMFILE.
    let blocker = s.data_dir.join("MANIFEST.tmp");
    fs::create_dir(&blocker).unwrap();
    let more: String = (500..1500)
        .map(|i| event(&format!("d{}", i % 5), T0 + i, 1.0))
        .collect();
    assert_eq!(s.post_ndjson(&more).status, 200);
    std::thread::sleep(Duration::from_millis(1500)); // several failed flushes
    fs::remove_dir(&blocker).unwrap();
    s.wait_flushed();
    assert_eq!(all_counts(&s, "t").values().sum::<u64>(), 1500);
    s.restart();
    assert_eq!(all_counts(&s, "t").values().sum::<u64>(), 1500);
    assert_eq!(s.get("/healthz", &[]).body["stored_events"], 1500);
}

/// Issue: `"location": [2.35, 48.85]` was read as latitude 2.35, longitude
/// 48.85; GeoJSON writes `[longitude, latitude]`.
#[test]
fn location_arrays_are_rejected_with_a_reason() {
    let s = TestServer::start(&[]);
    let body = format!(
        "{}{{\"device_id\":\"x\",\"timestamp\":{T0},\"type\":\"t\",\"value\":1,\"location\":[2.35,48.85]}}\n",
        event("ok", T0, 1.0)
    );
    let r = s.post_ndjson(&body);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["accepted"], 1);
    let reason = r.body["rejected"][0]["error"].as_str().unwrap();
    assert!(reason.contains("location must be an object"), "{reason}");
    assert_eq!(all_counts(&s, "t").len(), 1);
}

/// Issue: 16 KiB of gzip (8 MiB of `x` lines) was answered with 636 MB,
/// built in memory, and stored whole with an Idempotency-Key.
#[test]
fn a_body_of_junk_gets_a_bounded_answer() {
    let s = TestServer::start(&[]);
    let junk = "x\n".repeat(4 << 20);
    let body = gzip(junk.as_bytes());
    assert!(body.len() < 64 << 10);
    for key in [None, Some("junk-1")] {
        let mut headers = vec![("Content-Encoding", "gzip")];
        headers.extend(key.map(|k| ("Idempotency-Key", k)));
        let r = s.post(&body, "application/x-ndjson", &headers).unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        let text = r.body.to_string();
        assert!(text.len() < 1 << 20, "answer of {} bytes", text.len());
        assert_eq!(r.body["accepted"], 0);
        assert_eq!(r.body["rejected_total"], 4 << 20);
        let listed = r.body["rejected"].as_array().unwrap();
        assert_eq!(listed.len(), 1_000);
        assert_eq!(listed[999]["index"], 999);
    }
    // The stored answer of the keyed request is the bounded one.
    let again = s
        .post(
            &body,
            "application/x-ndjson",
            &[("Content-Encoding", "gzip"), ("Idempotency-Key", "junk-1")],
        )
        .unwrap();
    assert_eq!(again.body["rejected_total"], 4 << 20);
    let kept = again.body["rejected"].as_array().unwrap().len();
    assert!(kept > 0 && kept <= 1_000, "{kept}");
    let metrics = s.get_text("/metrics");
    assert!(
        metrics.contains(&format!(
            "desa_events_rejected_total{{reason=\"invalid_json\"}} {}",
            2 * (4 << 20)
        )),
        "every rejection is counted, listed or not"
    );
}

/// A body of several gzip members (`cat a.gz b.gz`) is read whole, as
/// gzip(1) reads it; it was cut after the first member without a word.
#[test]
fn every_gzip_member_is_read() {
    let s = TestServer::start(&[]);
    let mut body = gzip(event("a", T0, 1.0).as_bytes());
    body.extend(gzip(event("b", T0 + 1, 2.0).as_bytes()));
    body.extend(gzip(event("c", T0 + 2, 3.0).as_bytes()));
    let r = s
        .post(
            &body,
            "application/x-ndjson",
            &[("Content-Encoding", "gzip")],
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["accepted"], 3);
    assert_eq!(all_counts(&s, "t").len(), 3);
}

/// Opens a connection and sends `head` (and nothing more).
fn stall(base: &str, head: &str) -> std::net::TcpStream {
    use std::io::Write;
    let addr = base.trim_start_matches("http://");
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.write_all(head.as_bytes()).unwrap();
    c
}

const STALLED_BODY: &str = "POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ndjson\r\nContent-Length: 100000\r\n\r\n{\"device_id\":";
const STALLED_HEADERS: &str = "POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Ty";

/// Issue: 64 connections that sent a POST's headers and never its body
/// took every ingest permit, and a good client's POST hung.
#[test]
fn stalled_clients_do_not_stop_ingest() {
    let s = TestServer::start(&[]);
    let mut held = Vec::new();
    for i in 0..64 {
        held.push(stall(
            &s.base,
            if i % 2 == 0 {
                STALLED_BODY
            } else {
                STALLED_HEADERS
            },
        ));
    }
    std::thread::sleep(Duration::from_millis(300));
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(5))
        .build();
    for i in 0..4 {
        let r = agent
            .post(&format!("{}/v1/events", s.base))
            .set("Content-Type", "application/x-ndjson")
            .send_string(&event(&format!("good-{i}"), T0 + i, 1.0))
            .expect("a good client is served beside stalled ones");
        assert_eq!(r.status(), 200);
    }
    assert_eq!(all_counts(&s, "t").len(), 4);
    drop(held);
}

/// A body that stops arriving gets 408 once `--body-timeout` passes, and a
/// connection whose headers never end is closed after `--header-timeout`.
#[test]
fn slow_bodies_and_headers_time_out() {
    use std::io::Read;
    let s = TestServer::start(&["--body-timeout", "1s", "--header-timeout", "1s"]);
    let mut body = stall(&s.base, STALLED_BODY);
    let mut headers = stall(&s.base, STALLED_HEADERS);
    for c in [&body, &headers] {
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    }
    let mut answer = String::new();
    body.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("--body-timeout"), "{answer}");
    let mut rest = Vec::new();
    let n = headers
        .read_to_end(&mut rest)
        .expect("closed, not left hanging");
    assert!(n == 0 || String::from_utf8_lossy(&rest).starts_with("HTTP/1.1 408"));
}

/// SIGTERM stops the node in bounded time even with connections that
/// never finish, and what it acknowledged is there after a restart.
#[test]
fn sigterm_ends_the_node_beside_stalled_connections() {
    let mut s = TestServer::start(&["--shutdown-grace", "2s"]);
    assert_eq!(s.post_ndjson(&event("a", T0, 1.0)).status, 200);
    let _held: Vec<_> = (0..8).map(|_| stall(&s.base, STALLED_BODY)).collect();
    let _idle = stall(&s.base, "");
    assert!(
        s.terminate_within(Duration::from_secs(30)),
        "still running 30 s after SIGTERM"
    );
    s.try_restart().unwrap();
    assert_eq!(all_counts(&s, "t").len(), 1);
}

/// Repeated flush failures: once the frozen heads waiting for the flusher
/// are full, writes get 503 instead of hanging, /healthz says why, and
/// writes resume when the fault clears, each acknowledged event kept once.
#[test]
fn failing_flushes_refuse_writes_with_503_instead_of_hanging() {
    let mut s = TestServer::start(&["--head-max-events", "100"]);
    let blocker = s.data_dir.join("MANIFEST.tmp");
    fs::create_dir(&blocker).unwrap();
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(10))
        .build();
    let mut acked = 0u64;
    let mut refused = None;
    for b in 0..20 {
        let body: String = (0..100)
            .map(|i| event(&format!("d{i}"), T0 + b * 100 + i, 1.0))
            .collect();
        let r = agent
            .post(&format!("{}/v1/events", s.base))
            .set("Content-Type", "application/x-ndjson")
            .send_string(&body);
        match r {
            Ok(r) => {
                acked += r.into_json::<serde_json::Value>().unwrap()["accepted"]
                    .as_u64()
                    .unwrap()
            }
            Err(ureq::Error::Status(code, r)) => {
                refused = Some((
                    code,
                    r.header("Retry-After").map(str::to_owned),
                    r.into_string().unwrap(),
                ));
                break;
            }
            Err(e) => panic!("write hung or failed: {e}"),
        }
    }
    let (code, retry, body) = refused.expect("writes were never refused");
    assert_eq!(code, 503, "{body}");
    assert!(retry.is_some());
    assert!(
        body.contains("MANIFEST"),
        "the error says what fails: {body}"
    );
    let h = s.get("/healthz", &[]);
    assert_eq!(h.body["status"], "degraded", "{}", h.body);
    assert!(
        h.body["storage"].as_str().unwrap().contains("flush"),
        "{}",
        h.body
    );
    fs::remove_dir(&blocker).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = s.post_ndjson(&event("after", T0, 1.0));
        if r.status == 200 {
            acked += 1;
            break;
        }
        assert!(
            Instant::now() < deadline,
            "writes never resumed: {}",
            r.body
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    s.wait_flushed();
    assert_eq!(s.get("/healthz", &[]).body["status"], "ok");
    s.restart();
    assert_eq!(all_counts(&s, "t").values().sum::<u64>(), acked);
}

/// A query that does not finish within `--query-timeout` is answered 503
/// with Retry-After and counted; the node goes on answering.
#[test]
fn a_query_past_its_timeout_gets_503() {
    let s = TestServer::start(&["--query-timeout", "1ms", "--max-concurrent-queries", "1"]);
    let body: String = (0..50_000)
        .map(|i| event(&format!("device-{i}"), T0 + i, 1.0))
        .collect();
    assert_eq!(s.post_ndjson(&body).status, 200);
    let mut p = window(0, i64::MAX);
    p.extend([("type", "t".to_owned()), ("k", "10000".to_owned())]);
    let r = s.get("/v1/query/topk", &p);
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.header("Retry-After").is_some());
    assert!(r.error().contains("--query-timeout"), "{}", r.error());
    let metrics = s.get_text("/metrics");
    assert!(
        metrics.contains("desa_queries_refused_total{reason=\"timeout\"}")
            || metrics.contains("desa_queries_refused_total{reason=\"busy\"}"),
        "{metrics}"
    );
    assert_eq!(s.get("/healthz", &[]).status, 200);
}

/// Issue: one request of 20,000 events, one per day since 1970, on a node
/// with --head-max-events 5000 left 20,575 files: a segment per day, and
/// summaries over them. Sparse days now share segments.
#[test]
fn sparse_days_share_files() {
    let mut s = TestServer::start(&["--head-max-events", "5000"]);
    let body: String = (0..20_000)
        .map(|d| event(&format!("d{}", d % 10), d * DAY + 17, (d % 100) as f64))
        .collect();
    let r = s.post_ndjson(&body);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["accepted"], 20_000);
    wait_idle(&s);
    let files = count_files(&s.data_dir);
    assert!(
        files <= 40,
        "{files} files for 20,000 events on 20,000 days"
    );
    s.restart();
    assert_eq!(all_counts(&s, "t").values().sum::<u64>(), 20_000);
    let mut p = window(0, 20_000 * DAY);
    p.extend([("type", "t".to_owned()), ("device_id", "d3".to_owned())]);
    let r = s.get("/v1/query/avg", &p);
    assert_eq!(r.body["count"], 2_000, "{}", r.body);
    // d3's days are 3, 13, 23, ...: values 3, 13, ..., 93 in turn.
    assert_eq!(r.body["avg"], 48.0, "{}", r.body);
    let mut p = window(1000 * DAY, 1100 * DAY);
    p.extend([("type", "t".to_owned()), ("k", "3".to_owned())]);
    let r = s.get("/v1/query/topk", &p);
    assert_eq!(r.body["devices"][0]["count"], 10, "{}", r.body);
}
