//! The Kafka source against a real Kafka-protocol broker (tansu) started on a
//! free loopback port: exactly-once effect across kill -9, a broker outage,
//! a consumer-group member joining and leaving, and dead letters.

use std::collections::HashMap;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use desa_gen::{GenConfig, Generator};
use desa_model::oracle::{close, Oracle};
use desa_model::TimeWindow;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::Message;

use crate::support::{all_counts, devices_of, wait_answered, window, TestServer};

/// Where the tests look for the broker: `DESA_TANSU`, then `tansu` on PATH,
/// then where `scripts/test.sh` installs it.
fn tansu_bin() -> String {
    if let Ok(p) = std::env::var("DESA_TANSU") {
        return p;
    }
    for candidate in ["/var/tmp/desa-tools/bin/tansu", "tansu"] {
        if Command::new(candidate)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
        {
            return candidate.to_owned();
        }
    }
    panic!("the tansu broker is not installed; run scripts/test.sh, which builds it, or set DESA_TANSU");
}

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Broker {
    child: Option<Child>,
    pub port: u16,
}

impl Broker {
    pub fn start() -> Broker {
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(tansu_bin())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "memory://tansu/",
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Broker {
            child: Some(child),
            port,
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn create_topic(&self, name: &str, partitions: u32) {
        let status = Command::new(tansu_bin())
            .args([
                "topic",
                "create",
                name,
                "--partitions",
                &partitions.to_string(),
                "--broker",
                &format!("tcp://127.0.0.1:{}", self.port),
            ])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "creating topic {name}");
    }

    fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            Command::new("kill")
                .args([sig, &c.id().to_string()])
                .status()
                .unwrap();
        }
    }

    /// An outage without data loss: the broker process is frozen.
    pub fn pause(&self) {
        self.signal("-STOP");
    }
    pub fn resume(&self) {
        self.signal("-CONT");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.resume();
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub(crate) fn produce(broker: &Broker, topic: &str, lines: Vec<(Option<String>, String)>) {
    produce_to(&broker.addr(), topic, lines);
}

/// Produces and checks that the broker took every message.
///
/// One message per record batch: tansu 0.6.0 answers a fetch from an offset
/// inside a record batch with the batches after it (Kafka answers with the
/// batch that holds the offset), which would skip the rest of that batch
/// whenever a consumer resumes mid-batch. With one message per batch every
/// offset starts a batch.
fn produce_to(addr: &str, topic: &str, lines: Vec<(Option<String>, String)>) {
    let options = [("batch.num.messages".to_owned(), "1".to_owned())];
    let s = desa_kafka::produce_lines(addr, topic, &options, lines.into_iter(), |_| {}).unwrap();
    assert_eq!(
        (s.delivered, s.failed),
        (s.sent, 0),
        "the broker did not take every message"
    );
}

/// Produces `lines` in chunks of `chunk`, pausing between them, on a thread.
pub(crate) fn produce_in_background(
    addr: &str,
    topic: &str,
    lines: Vec<(Option<String>, String)>,
    chunk: usize,
    pause: Duration,
) -> std::thread::JoinHandle<()> {
    let (addr, topic) = (addr.to_owned(), topic.to_owned());
    std::thread::spawn(move || {
        for c in lines.chunks(chunk) {
            produce_to(&addr, &topic, c.to_vec());
            std::thread::sleep(pause);
        }
    })
}

pub(crate) fn kafka_args<'a>(broker: &'a str, topic: &'a str, group: &'a str) -> Vec<&'a str> {
    vec![
        "--kafka-brokers",
        broker,
        "--kafka-topic",
        topic,
        "--kafka-group",
        group,
        "--kafka-batch-wait",
        "50ms",
    ]
}

/// Waits until the node has stored `n` events.
pub(crate) fn wait_stored(s: &TestServer, n: u64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let stored = s.get("/healthz", &[]).body["stored_events"]
            .as_u64()
            .unwrap_or(0);
        if stored == n {
            return;
        }
        assert!(
            stored <= n,
            "stored {stored} events, more than the {n} produced"
        );
        assert!(
            Instant::now() < deadline,
            "only {stored} of {n} events stored in time:\n{}",
            s.get_text("/metrics")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub(crate) fn seeded(
    seed: u64,
    count: u64,
    invalid: f64,
) -> (Vec<(Option<String>, String)>, Oracle) {
    let mut oracle = Oracle::default();
    let lines = Generator::new(GenConfig {
        seed,
        devices: 80,
        count,
        start_ts: 1_767_225_600,
        span_secs: 3 * 86_400,
        invalid_fraction: invalid,
        duplicate_fraction: 0.01,
        late_fraction: 0.05,
        ..GenConfig::default()
    })
    .map(|g| {
        if let Some(e) = &g.event {
            oracle.add(e.clone());
        }
        (g.event.as_ref().map(|e| e.device_id.clone()), g.line)
    })
    .collect();
    (lines, oracle)
}

pub(crate) fn check_queries(s: &TestServer, oracle: &Oracle, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let devices: Vec<String> = oracle
        .events
        .iter()
        .take(50)
        .map(|e| e.device_id.clone())
        .collect();
    for _ in 0..40 {
        let start = 1_767_225_600 + rng.gen_range(-3_600..3 * 86_400);
        let w = TimeWindow::new(start, start + rng.gen_range(1..2 * 86_400)).unwrap();
        let dev = &devices[rng.gen_range(0..devices.len())];
        let mut p = window(w.start, w.end);
        p.push(("device_id", dev.clone()));
        p.push(("type", "temperature".into()));
        let got = s.get("/v1/query/avg", &p);
        let want = oracle.avg(dev, "temperature", w);
        assert_eq!(got.body["count"].as_u64(), Some(want.count));
        if let Some(a) = want.avg {
            assert!(close(got.body["avg"].as_f64().unwrap(), a, 1e-9));
        }
        let mut p = window(w.start, w.end);
        p.push(("type", "humidity".into()));
        p.push(("k", "5".into()));
        let got = s.get("/v1/query/topk", &p);
        let want = oracle.topk("humidity", w, 5);
        let got = devices_of(&got.body);
        let want: Vec<(String, u64)> = want
            .devices
            .into_iter()
            .map(|d| (d.device_id, d.count))
            .collect();
        assert_eq!(got, want);
        let b = desa_model::GeoBox::new(-60.0, 70.0, -20.0, 150.0).unwrap();
        let mut p = window(w.start, w.end);
        p.push(("type", "pressure".into()));
        for (k, v) in [
            ("min_lat", -60.0),
            ("max_lat", 70.0),
            ("min_lon", -20.0),
            ("max_lon", 150.0),
        ] {
            p.push((k, v.to_string()));
        }
        let got = s.get("/v1/query/geo", &p);
        assert_eq!(
            got.body["count"].as_u64(),
            Some(oracle.geo("pressure", &b, w).count)
        );
    }
}

fn dead_letters(broker: &Broker, topic: &str, expected: usize) -> Vec<serde_json::Value> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", broker.addr())
        .set("group.id", "dlq-reader")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && out.len() < expected {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            out.push(serde_json::from_slice(m.payload().unwrap()).unwrap());
        }
    }
    // anything beyond the expected count would be a repeated dead letter
    while let Some(Ok(m)) = consumer.poll(Duration::from_millis(500)) {
        out.push(serde_json::from_slice(m.payload().unwrap()).unwrap());
    }
    out
}

#[test]
fn kafka_stream_matches_the_oracle_and_poison_goes_to_the_dlq() {
    let broker = Broker::start();
    broker.create_topic("events", 4);
    broker.create_topic("events.dlq", 1);
    let (lines, oracle) = seeded(21, 20_000, 0.01);
    let invalid = lines.len() - oracle.events.len();
    produce(&broker, "events", lines);
    let addr = broker.addr();
    let s = TestServer::start(&kafka_args(&addr, "events", "g1"));
    wait_stored(&s, oracle.events.len() as u64, Duration::from_secs(60));
    check_queries(&s, &oracle, 21);
    let dlq = dead_letters(&broker, "events.dlq", invalid);
    assert_eq!(dlq.len(), invalid, "every invalid message is a dead letter");
    for d in &dlq {
        assert!(
            d["partition"].as_i64().is_some() && d["offset"].as_i64().is_some(),
            "{d}"
        );
        assert!(!d["error"].as_str().unwrap().is_empty());
    }
    // The high watermarks are refreshed every 2 seconds.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !s
        .get_text("/metrics")
        .contains("desa_kafka_lag{topic=\"events\",partition=\"0\"} 0")
    {
        assert!(
            Instant::now() < deadline,
            "lag never reached 0:\n{}",
            s.get_text("/metrics")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let m = s.get_text("/metrics");
    for needle in [
        "desa_kafka_consumed_offset{topic=\"events\",partition=\"3\"}",
        "desa_kafka_committed_offset{topic=\"events\",partition=\"3\"}",
        "desa_kafka_high_watermark{topic=\"events\",partition=\"3\"}",
        "desa_kafka_dead_letters_total{topic=\"events\",reason=\"invalid_event\"}",
        "desa_kafka_event_time_watermark_seconds",
    ] {
        assert!(m.contains(needle), "missing {needle}:\n{m}");
    }
    // The stream has out-of-order events, and only Kafka delivered events:
    // their lateness is in the same histogram HTTP ingest records.
    let late: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("desa_event_lateness_seconds_count "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(late > 0, "no lateness recorded from Kafka:\n{m}");
    // Freshness: one more event is answered by a query within 2 seconds.
    let produced = Instant::now();
    produce(
        &broker,
        "events",
        vec![(None, r#"{"device_id":"fresh","timestamp":1767225600,"type":"t","value":1,"location":{"latitude":0,"longitude":0}}"#.into())],
    );
    wait_answered(&[&s], "fresh", produced);
    eprintln!("produce-to-visible: {:?}", produced.elapsed());
}

#[test]
fn kill9_while_consuming_counts_every_event_exactly_once() {
    let broker = Broker::start();
    broker.create_topic("ev", 4);
    let (lines, oracle) = seeded(22, 60_000, 0.0);
    let addr = broker.addr();
    let mut s = TestServer::start(&kafka_args(&addr, "ev", "g2"));
    let producer = produce_in_background(&addr, "ev", lines, 5_000, Duration::from_millis(100));
    let mut rng = StdRng::seed_from_u64(7);
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(rng.gen_range(200..800)));
        s.restart();
    }
    producer.join().unwrap();
    wait_stored(&s, oracle.events.len() as u64, Duration::from_secs(90));
    s.restart();
    let mut want: HashMap<String, u64> = HashMap::new();
    for e in oracle.events.iter().filter(|e| e.event_type == "co2") {
        *want.entry(e.device_id.clone()).or_default() += 1;
    }
    assert_eq!(all_counts(&s, "co2"), want);
}

#[test]
fn broker_outage_is_reported_and_consumption_resumes_without_loss() {
    let broker = Broker::start();
    broker.create_topic("ev", 2);
    let (lines, oracle) = seeded(23, 10_000, 0.0);
    let (first, second) = lines.split_at(lines.len() / 2);
    produce(&broker, "ev", first.to_vec());
    let addr = broker.addr();
    let s = TestServer::start(&kafka_args(&addr, "ev", "g3"));
    wait_stored(&s, first.len() as u64, Duration::from_secs(60));
    broker.pause();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let h = s.get("/healthz", &[]);
        if h.body["components"]["kafka"]["broker"] != "ok" {
            assert_eq!(h.body["status"], "degraded");
            break;
        }
        assert!(Instant::now() < deadline, "outage not reported: {}", h.body);
        std::thread::sleep(Duration::from_millis(200));
    }
    // Queries and HTTP ingest keep working during the outage.
    let r = s.post_ndjson("{\"device_id\":\"http\",\"timestamp\":1767225600,\"type\":\"t\",\"value\":1,\"location\":{\"latitude\":0,\"longitude\":0}}\n");
    assert_eq!(r.body["accepted"], 1);
    broker.resume();
    produce(&broker, "ev", second.to_vec());
    wait_stored(&s, oracle.events.len() as u64 + 1, Duration::from_secs(60));
    check_queries(&s, &oracle, 23);
}

#[test]
fn a_member_joining_and_leaving_loses_and_repeats_nothing() {
    let broker = Broker::start();
    broker.create_topic("ev", 4);
    let (lines, oracle) = seeded(24, 60_000, 0.0);
    let addr = broker.addr();
    // Two embedded nodes in one group, each keeping its own share: a
    // partition coming back finds Kafka ahead of its store, by design.
    let mut args = kafka_args(&addr, "ev", "g4");
    args.extend(["--kafka-on-offset-mismatch", "kafka"]);
    let a = TestServer::start(&args);
    // A producer per chunk: about a second each, so the stream
    // lasts long enough for the second member to join and leave.
    let producer = produce_in_background(&addr, "ev", lines, 2_000, Duration::from_millis(200));
    std::thread::sleep(Duration::from_millis(700));
    let mut b = TestServer::start(&args);
    // Wait until the group has given b partitions and b has stored events.
    let deadline = Instant::now() + Duration::from_secs(30);
    while b.get("/healthz", &[]).body["stored_events"]
        .as_u64()
        .unwrap_or(0)
        == 0
    {
        assert!(
            Instant::now() < deadline,
            "the second member never consumed: {}",
            b.get("/healthz", &[]).body
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    b.terminate(); // leaves the group: its partitions are flushed, committed, revoked
    let in_b = {
        let offline = TestServer::start_in(&b.data_dir, &[]).unwrap();
        offline.get("/healthz", &[]).body["stored_events"]
            .as_u64()
            .unwrap()
    };
    assert!(
        in_b > 0,
        "the second member consumed nothing while it was in the group"
    );
    producer.join().unwrap();
    let total = oracle.events.len() as u64;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let in_a = a.get("/healthz", &[]).body["stored_events"]
            .as_u64()
            .unwrap();
        if in_a + in_b == total {
            break;
        }
        assert!(
            in_a + in_b < total,
            "{in_a} + {in_b} events stored for {total} produced"
        );
        assert!(
            Instant::now() < deadline,
            "{in_a} + {in_b} of {total} events stored"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A store restored from a backup behind what Kafka has committed: the
/// node does not skip the missing messages (nor guess that another node has
/// them); it halts those partitions and says so, until told to read them
/// again.
#[test]
fn a_store_restored_behind_kafka_halts_until_told_to_read_again() {
    let broker = Broker::start();
    broker.create_topic("ev", 2);
    let (lines, oracle) = seeded(25, 4_000, 0.0);
    let addr = broker.addr();
    let (first, second) = lines.split_at(lines.len() / 2);
    let args = kafka_args(&addr, "ev", "g6");
    let mut s = TestServer::start(&args);
    produce(&broker, "ev", first.to_vec());
    wait_stored(&s, first.len() as u64, Duration::from_secs(60));
    s.terminate();
    let backup = s.data_dir.with_extension("backup");
    copy_dir(&s.data_dir, &backup);
    s.try_restart().unwrap();
    produce(&broker, "ev", second.to_vec());
    wait_stored(&s, lines.len() as u64, Duration::from_secs(60));
    s.terminate();
    std::fs::remove_dir_all(&s.data_dir).unwrap();
    copy_dir(&backup, &s.data_dir);

    s.try_restart().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let kafka = loop {
        let h = s.get("/healthz", &[]).body;
        if h["components"]["kafka"]["halted_partitions"]
            .as_object()
            .is_some_and(|m| !m.is_empty())
        {
            break h["components"]["kafka"].clone();
        }
        assert!(Instant::now() < deadline, "no partition halted: {h}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(kafka["status"], "degraded", "{kafka}");
    let why = kafka["halted_partitions"].to_string();
    assert!(why.contains("--kafka-on-offset-mismatch store"), "{why}");
    assert!(
        s.get_text("/metrics")
            .contains("desa_kafka_partition_halted{topic=\"ev\",partition=\"0\"} 1")
            || s.get_text("/metrics")
                .contains("desa_kafka_partition_halted{topic=\"ev\",partition=\"1\"} 1")
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        s.get("/healthz", &[]).body["stored_events"],
        first.len() as u64
    );
    s.terminate();

    let mut again = args.clone();
    again.extend(["--kafka-on-offset-mismatch", "store"]);
    let s = TestServer::start_in(&s.data_dir, &again).unwrap();
    wait_stored(&s, lines.len() as u64, Duration::from_secs(60));
    check_queries(&s, &oracle, 25);
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    let ok = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap()
        .success();
    assert!(ok, "cp -a {} {}", from.display(), to.display());
}

/// `desa bench --kafka-brokers ... --live`: the node consumes the produced
/// dataset, then every probe of the live stream becomes visible to a query,
/// and the results file holds the consume rate and the freshness figures.
/// (The figures are printed, not asserted: timings belong to benchmarks.)
#[test]
fn bench_measures_freshness_under_a_live_stream() {
    let broker = Broker::start();
    broker.create_topic("bench", 4);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("kafka.json");
    let status = Command::new(env!("CARGO_BIN_EXE_desa"))
        .args(["bench", "--events", "20000", "--devices", "500"])
        .args(["--kafka-brokers", &broker.addr(), "--kafka-topic", "bench"])
        .args(["--live", "3s", "--live-rate", "2000", "--work-dir"])
        .arg(dir.path().join("work"))
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success(), "desa bench failed: {status}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    eprintln!("{report:#}");
    assert!(report["events"].as_u64().unwrap() >= 20_000, "{report}");
    let fresh = &report["freshness"];
    // One probe every 250 ms over 3 s of producing, each one seen.
    assert!(fresh["probes"].as_u64().unwrap() >= 12, "{report}");
    let (p50, max) = (
        fresh["p50_ms"].as_f64().unwrap(),
        fresh["max_ms"].as_f64().unwrap(),
    );
    assert!(p50 > 0.0 && p50 <= max, "{report}");
}
