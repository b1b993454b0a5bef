//! Faults at every I/O call of a code path: the preloaded shim `faults.c`
//! fails the Nth call (open, write, fsync, rename or mmap on a file of the
//! data dir) and every one after it, as a full disk or a failing device
//! does, for each N the path makes. After each: no request hangs, the node
//! says something is wrong (a 503, or /healthz not "ok"), and after the
//! fault clears and the process is killed and restarted, every acknowledged
//! event is there exactly once and no refused one is.

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::{all_counts, fault_env, TestServer};

const DAY: i64 = 86_400;
const T0: i64 = 1_767_225_600;
const OPS: &str = "open,write,fsync,rename,mmap";
const BATCH: i64 = 40;

/// What the node answered to each request, by the device it alone used.
#[derive(Default)]
struct Book {
    acked: HashMap<String, u64>,
    /// Refused with "nothing stored" (503 while the node could not persist).
    refused: Vec<String>,
    /// Refused after a failed sync: the node cannot know what the device
    /// kept, so the request is there whole or not at all.
    unknown: Vec<String>,
    requests: usize,
    saw_503: bool,
}

impl Book {
    /// Posts `BATCH` events of a new device on `day`.
    fn post(&mut self, s: &TestServer, day: i64) {
        let device = format!("r{}", self.requests);
        self.requests += 1;
        let body: String = (0..BATCH)
            .map(|i| {
                format!(
                    "{{\"device_id\":\"{device}\",\"timestamp\":{},\"type\":\"t\",\"value\":1,\"location\":{{\"latitude\":1,\"longitude\":2}}}}\n",
                    T0 + day * DAY + i
                )
            })
            .collect();
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(20))
            .build();
        match agent
            .post(&format!("{}/v1/events", s.base))
            .set("Content-Type", "application/x-ndjson")
            .send_string(&body)
        {
            Ok(_) => {
                self.acked.insert(device, BATCH as u64);
            }
            Err(ureq::Error::Status(503, r)) => {
                self.saw_503 = true;
                let why = r.into_string().unwrap_or_default();
                if why.contains("poisoned") {
                    self.unknown.push(device);
                } else {
                    self.refused.push(device);
                }
            }
            Err(e) => panic!("request for {device} hung or failed: {e}"),
        }
    }
}

/// One code path: node flags, what is stored before the fault is armed,
/// and what runs while it is.
struct Scenario {
    args: &'static [&'static str],
    before: fn(&TestServer, &mut Book),
    during: fn(&TestServer, &mut Book),
}

/// Waits until the node is idle or reports trouble, for at most `limit`.
fn settle(s: &TestServer, limit: Duration) -> serde_json::Value {
    let deadline = Instant::now() + limit;
    loop {
        let h = s.get("/healthz", &[]);
        let idle = h.body["maintenance"] == "idle" && h.body["unflushed_events"] == 0;
        if h.status != 200 || h.body["status"] != "ok" || idle || Instant::now() > deadline {
            return h.body;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Runs `sc` with the fault from call `nth` on (0: none); returns the calls
/// the shim counted while armed.
fn run(sc: &Scenario, nth: u64) -> usize {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let trigger = tmp.path().join("faulty");
    let log = tmp.path().join("calls.log");
    let env = fault_env(tmp.path(), &data, OPS, &trigger, nth, &log);
    let mut s = TestServer::start_with_env(&data, sc.args, &env).unwrap();
    let mut book = Book::default();
    (sc.before)(&s, &mut book);
    settle(&s, Duration::from_secs(20));
    fs::write(&trigger, b"").unwrap();
    (sc.during)(&s, &mut book);
    let health = settle(&s, Duration::from_secs(3));
    let calls = count_lines(&log);
    if nth == 0 && std::env::var_os("DESA_FAULT_SHOW").is_some() {
        eprintln!("{}", fs::read_to_string(&log).unwrap_or_default());
    }
    if nth > 0 && calls as u64 >= nth {
        assert!(
            book.saw_503 || health["status"] != "ok",
            "fault at call {nth} ({}) left the node saying ok: {health}",
            nth_call(&log, nth)
        );
    }
    fs::remove_file(&trigger).unwrap();
    s.env.clear();
    s.try_restart()
        .unwrap_or_else(|log| panic!("fault at call {nth}: restart failed:\n{log}"));
    let counts = all_counts(&s, "t");
    for (device, n) in &book.acked {
        assert_eq!(
            counts.get(device),
            Some(n),
            "fault at call {nth} ({}): acknowledged {device}",
            nth_call(&log, nth)
        );
    }
    for device in &book.refused {
        assert_eq!(
            counts.get(device),
            None,
            "fault at call {nth}: refused {device} was stored"
        );
    }
    for device in &book.unknown {
        let n = counts.get(device).copied().unwrap_or(0);
        assert!(
            n == 0 || n == BATCH as u64,
            "fault at call {nth}: {device} has {n} of {BATCH}"
        );
    }
    let known: u64 = book.acked.values().sum();
    let maybe: u64 = book
        .unknown
        .iter()
        .map(|d| counts.get(d).copied().unwrap_or(0))
        .sum();
    assert_eq!(
        counts.values().sum::<u64>(),
        known + maybe,
        "fault at call {nth} ({}): events beyond those acknowledged",
        nth_call(&log, nth)
    );
    calls
}

fn count_lines(log: &Path) -> usize {
    fs::read_to_string(log).map_or(0, |t| t.lines().count())
}

fn nth_call(log: &Path, nth: u64) -> String {
    fs::read_to_string(log)
        .ok()
        .and_then(|t| {
            t.lines()
                .nth(nth.saturating_sub(1) as usize)
                .map(str::to_owned)
        })
        .unwrap_or_default()
}

/// Counts the calls of the path without a fault, then fails each in turn.
fn walk(sc: &Scenario) {
    let calls = run(sc, 0);
    assert!(calls > 0, "the path made no counted call");
    eprintln!("{calls} calls to fail");
    if std::env::var_os("DESA_FAULT_SHOW").is_some() {
        return;
    }
    // DESA_FAULT_ONLY=N runs the N-th alone, to look at one case.
    let only: Option<u64> = std::env::var("DESA_FAULT_ONLY")
        .ok()
        .and_then(|n| n.parse().ok());
    for nth in 1..=calls as u64 {
        if only.is_none_or(|o| o == nth) {
            run(sc, nth);
        }
    }
}

/// Flushes, each starting a new log file first (the log's rotation).
#[test]
fn every_call_of_a_flush_and_a_log_rotation_can_fail() {
    walk(&Scenario {
        args: &["--head-max-events", "40"],
        before: |_, _| {},
        during: |s, b| {
            for _ in 0..3 {
                b.post(s, 0);
            }
        },
    });
}

/// Three segments of a day stored, then a fourth: a flush and a merge.
#[test]
fn every_call_of_a_compaction_can_fail() {
    walk(&Scenario {
        args: &["--head-max-events", "40"],
        before: |s, b| {
            for _ in 0..3 {
                b.post(s, 0);
            }
        },
        during: |s, b| b.post(s, 0),
    });
}

/// Days 0-3 stored and summarized, then day 8 moves the watermark on and
/// more blocks fall due: a flush and summary builds.
#[test]
fn every_call_of_a_summary_build_can_fail() {
    walk(&Scenario {
        args: &["--head-max-events", "40"],
        before: |s, b| {
            for day in 0..4 {
                b.post(s, day);
            }
        },
        during: |s, b| b.post(s, 8),
    });
}
