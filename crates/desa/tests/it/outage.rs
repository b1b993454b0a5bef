//! A cluster worker whose database stops answering: it says so in
//! `/healthz` and refuses requests instead of joining the wait.

use std::time::{Duration, Instant};

use crate::pg::Postgres;
use crate::support::{window, TestServer};

/// Waits until `/healthz` says degraded with the store unavailable.
pub fn wait_store_unavailable(s: &TestServer, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let h = s.get("/healthz", &[]).body;
        if h["status"] == "degraded" {
            let storage = h["storage"].as_str().unwrap_or("");
            assert!(storage.contains("unavailable"), "{h}");
            return;
        }
        assert!(Instant::now() < deadline, "outage not reported: {h}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// 200 events of five devices (40 each), one a second from `t0`.
fn forty_each(t0: i64) -> String {
    (0..200)
        .map(|i| {
            format!(
                "{{\"device_id\":\"d{}\",\"timestamp\":{},\"type\":\"t\",\"value\":1.0,\"location\":{{\"latitude\":1.0,\"longitude\":2.0}}}}\n",
                i % 5,
                t0 + i
            )
        })
        .collect()
}

const T0: i64 = 1_767_225_600;

/// The avg query of device d1 over all time.
fn d1_all_time() -> Vec<(&'static str, String)> {
    let mut p = window(0, 4_000_000_000);
    p.extend([("device_id", "d1".to_string()), ("type", "t".into())]);
    p
}

/// Asserts that a query and a write, asked once the store is reported,
/// are refused with 503 at once instead of waiting for the database.
fn refused_at_once(a: &TestServer) {
    let asked = Instant::now();
    let r = a.get("/v1/query/avg", &d1_all_time());
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );
    let asked = Instant::now();
    assert_eq!(a.post_ndjson(&forty_each(T0 + 10_000)).status, 503);
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );
}

/// Waits until the worker is healthy again, then asserts that d1 has
/// `count` events.
fn healthy_again_with(a: &TestServer, count: u64) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while a.get("/healthz", &[]).body["status"] != "ok" {
        assert!(
            Instant::now() < deadline,
            "not healthy after the database came back"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let r = a.get("/v1/query/avg", &d1_all_time());
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["count"], count, "{}", r.body);
}

/// Lets a stopped database run again however the test ends.
struct Frozen<'a>(&'a Postgres);
impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        self.0.signal_all("CONT");
    }
}

/// A database that stops answering without closing anything (its
/// processes stopped: the kernel still accepts what the worker sends) is
/// reported: `/healthz` says degraded with the store unavailable within
/// seconds, queries end with `503` within the query timeout, and once the
/// database answers again the worker is healthy and has lost nothing.
#[test]
fn a_frozen_database_is_reported_and_queries_end() {
    let pg = Postgres::start();
    let url = pg.url();
    let a = TestServer::start(&["--store", url.as_str(), "--query-timeout", "2s"]);
    assert_eq!(a.post_ndjson(&forty_each(T0)).status, 200);
    assert_eq!(a.get("/healthz", &[]).body["status"], "ok");

    pg.signal_all("STOP");
    let frozen = Frozen(&pg);
    let stopped = Instant::now();
    wait_store_unavailable(&a, Duration::from_secs(30));
    eprintln!("reported after {:?}", stopped.elapsed());
    refused_at_once(&a);
    drop(frozen);
    healthy_again_with(&a, 40);
}

/// A network partition between a worker and its database: every packet to
/// and from the server's loopback port is dropped (iptables; root only,
/// elsewhere the test says so). Nothing answers and nothing is refused, so
/// only the worker's own deadlines can tell: the store is reported within
/// seconds, queries and writes answer 503 instead of waiting, and once the
/// network is back the worker is healthy and has lost nothing.
#[test]
fn a_database_behind_a_lost_network_is_reported_and_queries_end() {
    let pg = Postgres::start();
    let port = pg.port.to_string();
    let rule = |op: &str, dir: &str| {
        std::process::Command::new("iptables")
            .args([
                op,
                "INPUT",
                "-i",
                "lo",
                "-p",
                "tcp",
                dir,
                port.as_str(),
                "-j",
                "DROP",
            ])
            .status()
            .is_ok_and(|s| s.success())
    };
    let usable = std::process::Command::new("iptables")
        .args(["-L", "INPUT", "-n"])
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !usable {
        eprintln!(
            "SKIPPED: iptables is not usable here (not root?); the partition is not exercised"
        );
        return;
    }
    let url = pg.url();
    let a = TestServer::start(&["--store", url.as_str(), "--query-timeout", "2s"]);
    assert_eq!(a.post_ndjson(&forty_each(T0)).status, 200);
    assert_eq!(a.get("/healthz", &[]).body["status"], "ok");

    /// Lets the packets through again however the test ends.
    struct Partition<'a>(&'a dyn Fn(&str, &str) -> bool);
    impl Drop for Partition<'_> {
        fn drop(&mut self) {
            (self.0)("-D", "--dport");
            (self.0)("-D", "--sport");
        }
    }
    assert!(
        rule("-I", "--dport") && rule("-I", "--sport"),
        "iptables -I failed"
    );
    let partition = Partition(&rule);
    let cut = Instant::now();
    wait_store_unavailable(&a, Duration::from_secs(30));
    eprintln!("reported after {:?}", cut.elapsed());
    refused_at_once(&a);
    drop(partition);
    healthy_again_with(&a, 40);
}

/// A write already on its way when the database freezes (before the probe
/// can tell): it is answered 503 within `--write-timeout`, saying that it
/// may still be stored, instead of waiting for the database; once the
/// database is back, the same request retried with its Idempotency-Key is
/// applied exactly once.
#[test]
fn a_write_caught_by_a_freeze_is_answered_within_the_write_timeout() {
    let pg = Postgres::start();
    let url = pg.url();
    let a = TestServer::start(&["--store", url.as_str(), "--write-timeout", "3s"]);
    assert_eq!(a.post_ndjson(&forty_each(T0)).status, 200);

    pg.signal_all("STOP");
    let frozen = Frozen(&pg);
    let second = forty_each(T0 + 1_000);
    let key = [("Idempotency-Key", "caught-by-the-freeze")];
    let asked = Instant::now();
    let r = a
        .post(second.as_bytes(), "application/x-ndjson", &key)
        .unwrap();
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(
        asked.elapsed() < Duration::from_secs(8),
        "{:?}",
        asked.elapsed()
    );
    assert!(r.error().contains("--write-timeout"), "{}", r.body);

    drop(frozen);
    healthy_again_with(&a, 40);
    let r = a
        .post(second.as_bytes(), "application/x-ndjson", &key)
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    healthy_again_with(&a, 80);
}
