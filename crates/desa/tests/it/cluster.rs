//! Cluster mode against a real PostgreSQL server and the tansu broker: two
//! workers in one consumer group over one database, exact against the oracle
//! and the embedded engine, through kill -9 of a worker, a worker paused past
//! its session timeout (fenced), and a database crash-restart.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use desa_model::oracle::Oracle;
use desa_model::TimeWindow;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::kafka::{
    check_queries, kafka_args, produce, produce_in_background, seeded, wait_stored, Broker,
};
use crate::outage::wait_store_unavailable;
use crate::pg::{open_store, Postgres};
use crate::support::{all_counts, wait_answered, window, TestServer};

pub(crate) fn worker(broker: &str, topic: &str, group: &str, pg: &Postgres) -> TestServer {
    worker_with(broker, topic, group, pg, &[])
}

pub(crate) fn worker_with(
    broker: &str,
    topic: &str,
    group: &str,
    pg: &Postgres,
    extra: &[&str],
) -> TestServer {
    let url = pg.url();
    let mut args = kafka_args(broker, topic, group);
    if let Some(i) = args.iter().position(|a| extra.contains(a)) {
        args.drain(i..i + 2); // overridden by `extra`
    }
    args.extend(["--store", url.as_str()]);
    args.extend(extra);
    TestServer::start(&args)
}

/// Waits until the worker owns at least one partition.
pub(crate) fn wait_assigned(s: &TestServer) {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let h = s.get("/healthz", &[]).body;
        let n = h["components"]["kafka"]["assigned_partitions"]
            .as_array()
            .map_or(0, |a| a.len());
        if n > 0 {
            return;
        }
        assert!(Instant::now() < deadline, "never assigned: {h}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A counter of the worker's `/metrics` (0 when absent).
pub(crate) fn metric(s: &TestServer, name: &str) -> f64 {
    s.get_text("/metrics")
        .lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

pub(crate) fn oracle_counts(oracle: &Oracle, ty: &str) -> HashMap<String, u64> {
    let mut want: HashMap<String, u64> = HashMap::new();
    for e in oracle.events.iter().filter(|e| e.event_type == ty) {
        *want.entry(e.device_id.clone()).or_default() += 1;
    }
    want
}

#[test]
fn two_workers_match_the_oracle_and_the_embedded_engine() {
    let broker = Broker::start();
    broker.create_topic("ev", 4);
    let pg = Postgres::start();
    let addr = broker.addr();
    let a = worker(&addr, "ev", "cluster", &pg);
    let b = worker(&addr, "ev", "cluster", &pg);
    let embedded = TestServer::start(&kafka_args(&addr, "ev", "embedded"));
    wait_assigned(&a);
    wait_assigned(&b);
    let (lines, oracle) = seeded(31, 30_000, 0.0);
    let total = oracle.events.len() as u64;
    let producer = produce_in_background(&addr, "ev", lines, 3_000, Duration::from_millis(50));
    producer.join().unwrap();
    wait_stored(&a, total, Duration::from_secs(90));
    wait_stored(&embedded, total, Duration::from_secs(90));
    for s in [&a, &b] {
        assert!(
            metric(s, "desa_kafka_events_total") > 0.0,
            "both workers consume: {}",
            s.get("/healthz", &[]).body
        );
    }
    check_queries(&a, &oracle, 31);
    check_queries(&b, &oracle, 32);
    // The same answers as the embedded engine, byte for byte, including
    // windows on hour and day boundaries and boxes on whole degrees.
    let mut rng = StdRng::seed_from_u64(33);
    let devices: Vec<String> = oracle
        .events
        .iter()
        .take(40)
        .map(|e| e.device_id.clone())
        .collect();
    let t0 = 1_767_225_600;
    for i in 0..60 {
        let start = match i % 3 {
            0 => t0 + rng.gen_range(-7_200..3 * 86_400),
            1 => t0 + 3600 * rng.gen_range(-2..72),
            _ => t0 + 86_400 * rng.gen_range(-1..3),
        };
        let len = match i % 4 {
            0 => rng.gen_range(1..600),
            1 => rng.gen_range(1..3 * 3600),
            2 => 3600 * rng.gen_range(1..30),
            _ => rng.gen_range(1..4 * 86_400),
        };
        let w = TimeWindow::new(start, start + len).unwrap();
        let dev = &devices[rng.gen_range(0..devices.len())];
        let mut avg = window(w.start, w.end);
        avg.extend([("device_id", dev.clone()), ("type", "temperature".into())]);
        let mut topk = window(w.start, w.end);
        topk.extend([
            ("type", "humidity".into()),
            ("k", rng.gen_range(1..20).to_string()),
        ]);
        let (la, lo) = (rng.gen_range(-60..50), rng.gen_range(-180..170));
        let mut geo = window(w.start, w.end);
        geo.extend([
            ("type", "pressure".to_string()),
            ("min_lat", la.to_string()),
            ("max_lat", (la + rng.gen_range(1..40)).to_string()),
            ("min_lon", (lo as f64 + rng.gen_range(0.0..1.0)).to_string()),
            ("max_lon", (lo + rng.gen_range(1..60)).min(180).to_string()),
        ]);
        for (path, params) in [
            ("/v1/query/avg", &avg),
            ("/v1/query/topk", &topk),
            ("/v1/query/geo", &geo),
        ] {
            let want = embedded.get(path, params);
            for s in [&a, &b] {
                let got = s.get(path, params);
                assert_eq!(got.status, 200, "{path} {params:?}: {}", got.body);
                assert_eq!(got.body, want.body, "{path} {params:?}");
            }
        }
    }
    // HTTP ingest on a worker: acknowledged once committed, a retry under
    // the same key is not applied twice, and the other worker sees it.
    let line = "{\"device_id\":\"http-1\",\"timestamp\":1767225600,\"type\":\"http\",\"value\":2.5,\"location\":{\"latitude\":1,\"longitude\":2}}\n";
    for _ in 0..2 {
        let r = a
            .post(
                line.as_bytes(),
                "application/x-ndjson",
                &[("Idempotency-Key", "k-1")],
            )
            .unwrap();
        assert_eq!(
            (r.status, r.body["accepted"].as_u64()),
            (200, Some(1)),
            "{}",
            r.body
        );
    }
    let mut p = window(1_767_225_600, 1_767_225_601);
    p.extend([("device_id", "http-1".to_string()), ("type", "http".into())]);
    let got = b.get("/v1/query/avg", &p).body;
    assert_eq!(
        (got["count"].as_u64(), got["avg"].as_f64()),
        (Some(1), Some(2.5)),
        "{got}"
    );

    // Freshness: an event produced to Kafka is visible in queries on both
    // workers (one of which did not consume it) within 2 seconds.
    let produced = Instant::now();
    produce(
        &broker,
        "ev",
        vec![(None, "{\"device_id\":\"fresh\",\"timestamp\":1767225600,\"type\":\"t\",\"value\":1,\"location\":{\"latitude\":0,\"longitude\":0}}".into())],
    );
    wait_answered(&[&a, &b], "fresh", produced);
    eprintln!("produce-to-visible (cluster): {:?}", produced.elapsed());

    let m = a.get_text("/metrics");
    for needle in [
        "desa_postgres_up 1",
        "desa_postgres_write_transactions_total",
    ] {
        assert!(m.contains(needle), "missing {needle}:\n{m}");
    }
    assert_eq!(a.get("/healthz", &[]).body["backend"], "postgres");
}

/// The partitions a worker owns now.
fn assigned(s: &TestServer) -> Vec<u64> {
    s.get("/healthz", &[]).body["components"]["kafka"]["assigned_partitions"]
        .as_array()
        .map(|a| a.iter().filter_map(|p| p.as_u64()).collect())
        .unwrap_or_default()
}

/// Waits until `workers` together own every one of `n` partitions.
pub(crate) fn wait_covered(workers: &[&TestServer], n: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut all: Vec<u64> = workers.iter().flat_map(|w| assigned(w)).collect();
        all.sort_unstable();
        all.dedup();
        if all.len() as u64 == n {
            return;
        }
        assert!(Instant::now() < deadline, "partitions owned: {all:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

// A member that dies without leaving is dropped from the group after
// session.timeout.ms (6 s here), and the survivors take its partitions over
// in the next generation.

#[test]
fn kill9_of_a_worker_hands_its_partitions_over_exactly() {
    let broker = Broker::start();
    broker.create_topic("ev", 4);
    let pg = Postgres::start();
    let addr = broker.addr();
    let mut a = worker(&addr, "ev", "k9", &pg);
    let b = worker(&addr, "ev", "k9", &pg);
    wait_assigned(&a);
    wait_assigned(&b);
    let (lines, oracle) = seeded(34, 40_000, 0.0);
    let producer = produce_in_background(&addr, "ev", lines, 2_000, Duration::from_millis(100));
    std::thread::sleep(Duration::from_millis(1200));
    assert!(
        metric(&a, "desa_kafka_events_total") > 0.0,
        "a consumed before the kill"
    );
    a.kill9();
    // b alone owns every partition once a's session has expired.
    wait_covered(&[&b], 4);
    producer.join().unwrap();
    wait_stored(&b, oracle.events.len() as u64, Duration::from_secs(120));
    for t in ["co2", "temperature", "humidity"] {
        assert_eq!(all_counts(&b, t), oracle_counts(&oracle, t), "{t}");
    }
}

#[test]
fn a_worker_paused_past_its_session_is_fenced_and_commits_nothing_stale() {
    let broker = Broker::start();
    broker.create_topic("ev", 4);
    let pg = Postgres::start();
    let addr = broker.addr();
    // a writes every 2 s, so that it holds a batch when it is paused.
    let a = worker_with(&addr, "ev", "pause", &pg, &["--kafka-batch-wait", "2s"]);
    let b = worker(&addr, "ev", "pause", &pg);
    wait_assigned(&a);
    wait_assigned(&b);
    let (lines, oracle) = seeded(35, 40_000, 0.0);
    // Small chunks close together: the paused worker holds a batch.
    let producer = produce_in_background(&addr, "ev", lines, 400, Duration::from_millis(10));
    std::thread::sleep(Duration::from_millis(1500));
    a.signal("-STOP");
    // Past the 6 s session timeout b owns (and has claimed) every
    // partition, a's included.
    wait_covered(&[&b], 4);
    a.signal("-CONT");
    producer.join().unwrap();
    wait_stored(&b, oracle.events.len() as u64, Duration::from_secs(120));
    assert_eq!(all_counts(&b, "co2"), oracle_counts(&oracle, "co2"));
    assert_eq!(
        all_counts(&a, "humidity"),
        oracle_counts(&oracle, "humidity")
    );
    let fenced = metric(&a, "desa_postgres_fenced_writes_total");
    eprintln!("writes fenced after the pause: {fenced}");
    assert!(
        fenced >= 1.0,
        "the resumed worker's stale batch was refused:\n{}",
        a.get_text("/metrics")
    );
}

#[test]
fn a_database_crash_restart_mid_stream_loses_and_repeats_nothing() {
    let broker = Broker::start();
    broker.create_topic("ev", 2);
    let pg = Postgres::start();
    let addr = broker.addr();
    let a = worker(&addr, "ev", "pgdown", &pg);
    wait_assigned(&a);
    let (lines, oracle) = seeded(36, 30_000, 0.0);
    let producer = produce_in_background(&addr, "ev", lines, 2_000, Duration::from_millis(100));
    std::thread::sleep(Duration::from_millis(800));
    pg.stop_immediate();
    wait_store_unavailable(&a, Duration::from_secs(20));
    assert!(a.get_text("/metrics").contains("desa_postgres_up 0"));
    // Queries fail cleanly while the database is down.
    let mut p = window(0, 4_000_000_000);
    p.extend([("device_id", "x".to_string()), ("type", "co2".into())]);
    let r = a.get("/v1/query/avg", &p);
    assert_eq!(r.status, 503, "{}", r.body);
    std::thread::sleep(Duration::from_secs(2));
    pg.start_server();
    producer.join().unwrap();
    wait_stored(&a, oracle.events.len() as u64, Duration::from_secs(120));
    assert_eq!(all_counts(&a, "co2"), oracle_counts(&oracle, "co2"));
    assert_eq!(a.get("/healthz", &[]).body["status"], "ok");
}

/// Fencing at the store itself, step by step: a request written twice (a
/// retry after a lost acknowledgement) is stored once, the later claim
/// wins, the earlier claimant's write commits nothing (no events, no
/// offsets), and the new owner resumes exactly where the last committed
/// write left off.
#[test]
fn a_stale_claim_commits_nothing_and_the_new_owner_resumes_at_the_committed_offset() {
    use desa_store::{SourceOffset, Store, StoreError, WriteRequest};
    let pg = Postgres::start();
    let tmp = tempfile::tempdir().unwrap();
    let open = |name: &str| open_store(&pg, tmp.path(), name);
    let (a, b) = (open("a"), open("b"));
    let event = |dev: &str, ts: i64| desa_model::Event {
        device_id: dev.into(),
        ts_secs: ts,
        event_type: "t".into(),
        value: 1.5,
        latitude: 10.0,
        longitude: 20.0,
        metadata: None,
    };
    let batch = |dev: &str, next: i64| {
        let mut req =
            WriteRequest::events(vec![event(dev, 1_767_225_600), event(dev, 1_767_229_300)]);
        req.source_offsets = vec![SourceOffset {
            source: "kafka:ev".into(),
            partition: 0,
            next_offset: next,
        }];
        req
    };
    assert_eq!(a.claim("kafka:ev", &[0], 1).unwrap()[0].next_offset, None);
    a.write(batch("a-1", 10)).unwrap();
    // The same request again, as after a commit whose acknowledgement was
    // lost: answered as applied, stored once (the counts below).
    assert_eq!(
        a.write(batch("a-1", 10)).unwrap(),
        desa_store::WriteOutcome::Applied
    );
    // b takes the partition over: it resumes after a's committed batch.
    assert_eq!(
        b.claim("kafka:ev", &[0], 1).unwrap()[0].next_offset,
        Some(10)
    );
    // a, now a zombie, is refused, and nothing of its batch is stored.
    match a.write(batch("a-2", 20)) {
        Err(StoreError::Fenced { partition: 0, .. }) => {}
        other => panic!("a stale write was not fenced: {other:?}"),
    }
    b.write(batch("b-1", 15)).unwrap();
    let w = desa_model::TimeWindow::new(0, 4_000_000_000).unwrap();
    let count = |dev: &str| b.avg(dev, "t", w).unwrap().count;
    assert_eq!((count("a-1"), count("a-2"), count("b-1")), (2, 0, 2));
    // A writer that never claimed the partition is refused too.
    let c = open("c");
    assert!(matches!(
        c.write(batch("c-1", 30)),
        Err(StoreError::Fenced { .. })
    ));
    assert_eq!(
        a.claim("kafka:ev", &[0], 1).unwrap()[0].next_offset,
        Some(15)
    );
    // HTTP writes carry no offsets and are never fenced.
    c.write(WriteRequest::events(vec![event("c-2", 1_767_225_600)]))
        .unwrap();
    assert_eq!(count("c-2"), 1);
}

/// Blocks merge while other workers read: a worker that looks at the
/// catalog between merges, or misses whole merges, answers for exactly the
/// writes committed before its query, on every query; a worker restarted
/// on a block directory that merges have left stale keeps only what the
/// catalog lists, and a new one fetches everything.
#[test]
fn workers_follow_merges_they_never_saw_and_answer_every_committed_write() {
    use desa_store::{Store, WriteRequest};
    let pg = Postgres::start();
    let tmp = tempfile::tempdir().unwrap();
    let open = |name: &str| open_store(&pg, tmp.path(), name);
    let day = 1_767_225_600;
    let w = desa_model::TimeWindow::new(day, day + 86_400).unwrap();
    let write = |s: &desa_postgres::PgStore, i: i64| {
        let event = desa_model::Event {
            device_id: "d".into(),
            ts_secs: day + i,
            event_type: "t".into(),
            value: i as f64,
            latitude: 10.0,
            longitude: 20.0,
            metadata: None,
        };
        s.write(WriteRequest::events(vec![event])).unwrap();
    };
    let (a, b) = (open("a"), open("b"));
    let mut written = 0;
    for i in 0..60 {
        write(if i % 3 == 0 { &b } else { &a }, i);
        written += 1;
        // b reads after every write, a after some: each sees the merges
        // of the other at different points, or not at all.
        assert_eq!(b.avg("d", "t", w).unwrap().count, written, "b after {i}");
        if i % 7 == 0 {
            assert_eq!(a.avg("d", "t", w).unwrap().count, written, "a after {i}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    drop(b);
    // Merges go on while b is down, and more writes come.
    for i in 60..90 {
        write(&a, i);
        written += 1;
    }
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let b = open("b");
    let c = open("c");
    let sum: u64 = (0..90).sum();
    for s in [&a, &b, &c] {
        let got = s.avg("d", "t", w).unwrap();
        assert_eq!(got.count, written);
        assert_eq!(got.avg, Some(sum as f64 / written as f64));
    }
    assert!(
        a.stats().segments < 20,
        "merges did not run: {} blocks",
        a.stats().segments
    );
    // b's directory keeps the blocks the catalog lists, and nothing else.
    let blocks = std::fs::read_dir(tmp.path().join("b"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "seg")
        })
        .count() as u64;
    assert_eq!(blocks, b.stats().segments);
}

#[test]
fn migrate_is_idempotent_and_names_the_schema_version() {
    let pg = Postgres::start();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_desa"))
        .args(["migrate", "--store", &pg.url(), "--shards", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--shards must be 1 to 1024, got 0"), "{err}");
    // The shards are the first run's: a schema keeps its own.
    for shards in ["6", "8"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_desa"))
            .args(["migrate", "--store", &pg.url(), "--shards", shards])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let ready = format!(
            "desa schema {} ready",
            desa_postgres::schema::SCHEMA_VERSION
        );
        assert!(text.contains(&ready), "{text}");
        assert!(text.contains(", 6 shards)"), "{text}");
    }
    // A database written by another schema version is refused, by name.
    let mut client = postgres::Client::connect(&pg.url(), postgres::NoTls).unwrap();
    client
        .execute(
            "UPDATE desa_meta SET value = '1' WHERE key = 'schema_version'",
            &[],
        )
        .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_desa"))
        .args(["migrate", "--store", &pg.url()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("holds desa schema version 1; this desa reads version"),
        "{err}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_desa"))
        .args(["migrate", "--store", "postgres://desa@127.0.0.1:1/none"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("PostgreSQL"));
}

/// Each request is a block of its own, and a query adds the blocks' counts
/// and double-double sums: those additions must lose no digit. Four
/// requests of one event each, 1e16, 1, 1, -1e16, in one hour, one day and
/// one place: a float8 sum gives 0; the exact sum is 2, an average of 0.5,
/// for avg and geo alike, over the hour and over the whole day.
#[test]
fn sums_added_across_blocks_keep_every_digit() {
    use desa_model::GeoBox;
    use desa_store::{Store, WriteRequest};
    let pg = Postgres::start();
    let tmp = tempfile::tempdir().unwrap();
    let store = open_store(&pg, tmp.path(), "w");
    let day = 1_767_225_600;
    for (i, value) in [1e16, 1.0, 1.0, -1e16].into_iter().enumerate() {
        let event = desa_model::Event {
            device_id: "d".into(),
            ts_secs: day + 3600 + i as i64,
            event_type: "t".into(),
            value,
            latitude: 10.25,
            longitude: 20.25,
            metadata: None,
        };
        store.write(WriteRequest::events(vec![event])).unwrap();
    }
    let hour = TimeWindow::new(day + 3600, day + 7200).unwrap();
    let whole_day = TimeWindow::new(day, day + 86_400).unwrap();
    for w in [hour, whole_day] {
        let a = store.avg("d", "t", w).unwrap();
        assert_eq!((a.count, a.avg), (4, Some(0.5)), "avg over {w:?}");
        // A box that holds every point, and one that cuts the k-d tree
        // nodes' boxes.
        for b in [
            GeoBox::new(5.0, 15.0, 15.0, 25.0).unwrap(),
            GeoBox::new(10.0, 10.5, 20.0, 20.5).unwrap(),
        ] {
            let g = store.geo("t", &b, w).unwrap();
            assert_eq!((g.count, g.avg), (4, Some(0.5)), "geo {b:?} over {w:?}");
        }
    }
}

/// A worker's store over `pg`, named `name`, keeping its blocks under `dir`.
/// `desa migrate --store URL` as a process: its success, and what it printed.
fn migrate(url: &str) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_desa"))
        .args(["migrate", "--store", url])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// A database that takes TLS connections only, with a certificate naming
/// `SERVER_NAME` alone, signed by a CA the test makes: each `sslmode`
/// connects or refuses as libpq's would, refusals say why, the Unix socket
/// is reached without TLS by `prefer` and refused by `verify-full` (no host
/// name), a server without TLS is reached by `prefer` and refused by
/// `require`, and a worker over
/// `verify-full` (a key=value string) ingests and answers exactly.
#[test]
fn a_worker_reaches_a_database_that_takes_tls_only_and_checks_its_certificate() {
    use crate::pg::SERVER_NAME;
    let (pg, certs) = Postgres::start_tls();
    let ca = certs.ca_file.display().to_string();
    let other = certs.other_ca_file.display().to_string();
    let url = |params: &str| format!("postgres://desa@127.0.0.1:{}/postgres?{params}", pg.port);
    // The certificate's name, reached at 127.0.0.1.
    let by_name = |params: &str| {
        format!(
            "host={SERVER_NAME} hostaddr=127.0.0.1 port={} user=desa dbname=postgres {params}",
            pg.port
        )
    };
    let verify_full = by_name(&format!("sslmode=verify-full sslrootcert={ca}"));

    for conninfo in [
        format!("postgres://desa@127.0.0.1:{}/postgres", pg.port),
        url("sslmode=require"),
        url(&format!("sslmode=require&sslrootcert={ca}")),
        url(&format!("sslmode=verify-ca&sslrootcert={ca}")),
        verify_full.clone(),
    ] {
        let (ok, text) = migrate(&conninfo);
        assert!(ok, "{conninfo}: {text}");
    }
    for (conninfo, why) in [
        (url("sslmode=disable"), "no encryption"),
        (
            url(&format!("sslmode=verify-ca&sslrootcert={other}")),
            "invalid peer certificate",
        ),
        (
            url(&format!("sslmode=require&sslrootcert={other}")),
            "invalid peer certificate",
        ),
        (
            by_name(&format!("sslmode=verify-full sslrootcert={other}")),
            "invalid peer certificate",
        ),
        // 127.0.0.1 is not the certificate's name.
        (
            url(&format!("sslmode=verify-full&sslrootcert={ca}")),
            "not valid for name",
        ),
        (
            url("sslmode=verify-ca&sslrootcert=system"),
            "use verify-full",
        ),
        (url("sslmode=verify-full"), "needs sslrootcert"),
    ] {
        let (ok, text) = migrate(&conninfo);
        assert!(!ok, "{conninfo} connected");
        assert!(text.contains(why), "{conninfo}: want {why:?} in {text}");
    }

    // Over the Unix socket the server offers no TLS: `prefer` goes on
    // without it, and `verify-full` has no host name to check.
    let socket = format!(
        "host={} port={} user=desa dbname=postgres",
        pg.socket_dir(),
        pg.port
    );
    let (ok, text) = migrate(&socket);
    assert!(ok, "{socket}: {text}");
    let (ok, text) = migrate(&format!("{socket} sslmode=verify-full sslrootcert={ca}"));
    assert!(!ok && text.contains("needs a host name"), "{text}");

    // A server without TLS: `prefer` goes on without it, `require` refuses.
    let plain = Postgres::start();
    let (ok, text) = migrate(&plain.url());
    assert!(ok, "{text}");
    let (ok, text) = migrate(&format!("{}?sslmode=require", plain.url()));
    assert!(
        !ok && text.contains("server does not support TLS"),
        "{text}"
    );
    drop(plain);

    let w = TestServer::start(&["--store", &verify_full]);
    let mut rng = StdRng::seed_from_u64(11);
    let mut oracle = Oracle::default();
    let mut body = String::new();
    for i in 0..500 {
        let e = desa_model::Event {
            device_id: format!("tls-{}", rng.gen_range(0..20)),
            ts_secs: 1_767_225_600 + rng.gen_range(0..86_400),
            event_type: "temperature".into(),
            value: rng.gen_range(-40.0..40.0),
            latitude: 48.0,
            longitude: 2.0 + (i % 3) as f64,
            metadata: None,
        };
        body.push_str(&e.to_json());
        body.push('\n');
        oracle.add(e);
    }
    let r = w.post_ndjson(&body);
    assert_eq!(r.status, 200, "{}", r.error());
    let day = TimeWindow::new(1_767_225_600, 1_767_225_600 + 86_400).unwrap();
    let want = oracle.avg("tls-3", "temperature", day);
    let got = w.get(
        "/v1/query/avg",
        &[
            ("device_id", "tls-3".into()),
            ("type", "temperature".into()),
            ("start", day.start.to_string()),
            ("end", day.end.to_string()),
        ],
    );
    assert_eq!(got.body["count"].as_u64(), Some(want.count), "{}", got.body);
    assert_eq!(got.body["avg"].as_f64(), want.avg, "{}", got.body);
}

/// One write of 20,000 events, one per day since 1970: a shard's sparse
/// old days share a block, filed under their 1024-day bucket, so the
/// database gets a handful of blocks per shard and of day partitions, not
/// one per day; answers exact.
#[test]
fn sparse_old_days_share_blocks_and_partitions() {
    use desa_store::{Store, WriteRequest};
    let pg = Postgres::start();
    let tmp = tempfile::tempdir().unwrap();
    let store = open_store(&pg, tmp.path(), "w");
    let events: Vec<desa_model::Event> = (0..20_000)
        .map(|d| desa_model::Event {
            device_id: format!("d{}", d % 10),
            ts_secs: d * 86_400 + 17,
            event_type: "t".into(),
            value: (d % 100) as f64,
            latitude: 1.0,
            longitude: 2.0,
            metadata: None,
        })
        .collect();
    store.write(WriteRequest::events(events)).unwrap();
    let mut client = postgres::Client::connect(&pg.url(), postgres::NoTls).unwrap();
    let mut count = |sql: &str| -> i64 { client.query_one(sql, &[]).unwrap().get(0) };
    let blocks = count("SELECT count(*) FROM desa_blocks");
    let shards = count("SELECT count(DISTINCT shard) FROM desa_blocks");
    let partitions =
        count("SELECT count(*) FROM pg_inherits WHERE inhparent = 'desa_block_bodies'::regclass");
    eprintln!("{blocks} blocks in {shards} shards, {partitions} day partitions");
    assert!(shards > 1, "the ten devices fell in {shards} shard");
    assert!(blocks <= 4 * shards, "{blocks} blocks");
    assert!(partitions <= 40, "{partitions} day partitions");
    let all = TimeWindow::new(0, 20_000 * 86_400).unwrap();
    let a = store.avg("d3", "t", all).unwrap();
    assert_eq!((a.count, a.avg), (2_000, Some(48.0)));
    let top = store
        .topk(
            "t",
            TimeWindow::new(1000 * 86_400, 1100 * 86_400).unwrap(),
            3,
        )
        .unwrap();
    assert_eq!(top.devices[0].count, 10);
}
