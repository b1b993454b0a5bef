//! Cluster mode that scales out: three workers over a 6-partition topic and
//! one PostgreSQL each keep copies of their partitions' shards only (the
//! three shares add up to the catalog, none over 60% of it), and every
//! worker answers every query exactly by asking the others for their
//! shards' parts; after one is killed for good, the others answer for its
//! shards at once (from the store) and exactly, then take them over.

use std::time::{Duration, Instant};

use crate::cluster::{metric, oracle_counts, wait_assigned, wait_covered, worker};
use crate::kafka::{check_queries, produce, produce_in_background, seeded, wait_stored, Broker};
use crate::oracle::compare_series;
use crate::pg::Postgres;
use crate::support::{all_counts, TestServer};

/// Bytes of every block in the catalog.
fn catalog_bytes(pg: &Postgres) -> f64 {
    let mut c = postgres::Client::connect(&pg.url(), postgres::NoTls).unwrap();
    let b: i64 = c
        .query_one("SELECT coalesce(sum(bytes), 0)::int8 FROM desa_blocks", &[])
        .unwrap()
        .get(0);
    b as f64
}

/// Waits until the workers' copies are disjoint shares that add up to the
/// catalog (merges and looks settled); returns each worker's bytes.
pub(crate) fn wait_shares(workers: &[&TestServer], pg: &Postgres) -> Vec<f64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let held: Vec<f64> = workers
            .iter()
            .map(|w| metric(w, "desa_postgres_block_bytes"))
            .collect();
        let total = catalog_bytes(pg);
        if total > 0.0 && held.iter().sum::<f64>() == total {
            return held;
        }
        assert!(
            Instant::now() < deadline,
            "copies {held:?} never added up to the catalog's {total} bytes"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The console on a worker shows the cluster's answers: the top-K, a
/// device's chart and a box across the antimeridian, each fanned out.
fn console_on_a_worker(s: &TestServer, oracle: &desa_model::oracle::Oracle) {
    let first = oracle.events.iter().map(|e| e.ts_secs).min().unwrap();
    let last = oracle.events.iter().map(|e| e.ts_secs).max().unwrap();
    let window = desa_model::TimeWindow::new(first, last + 1).unwrap();
    let top = oracle.topk("temperature", window, 10);
    crate::console::check_view(
        &s.base,
        oracle,
        &crate::console::View {
            event_type: "temperature",
            window,
            k: 10,
            device: &top.devices[0].device_id,
            bbox: desa_model::GeoBox::new(-80.0, 80.0, 20.0, 0.0).unwrap(),
        },
    );
}

fn check_all(s: &TestServer, oracle: &desa_model::oracle::Oracle, seed: u64) {
    check_queries(s, oracle, seed);
    for t in ["co2", "temperature", "humidity"] {
        assert_eq!(all_counts(s, t), oracle_counts(oracle, t), "{t}");
    }
    // The types gather every shard's part; a series is one average per step.
    let got = s.get("/v1/types", &[]);
    assert_eq!(got.status, 200, "{}", got.body);
    assert_eq!(got.body, serde_json::to_value(oracle.types()).unwrap());
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
    for e in oracle.events.iter().step_by(oracle.events.len() / 3 + 1) {
        let w = desa_model::TimeWindow::new(e.ts_secs - 7_200, e.ts_secs + 7_200).unwrap();
        compare_series(s, oracle, (&e.device_id, &e.event_type), w, 60, &mut rng);
    }
}

#[test]
fn three_workers_hold_shares_and_each_answers_for_all() {
    let broker = Broker::start();
    broker.create_topic("ev", 6);
    let pg = Postgres::start();
    let addr = broker.addr();
    let mut a = worker(&addr, "ev", "so", &pg);
    let b = worker(&addr, "ev", "so", &pg);
    let c = worker(&addr, "ev", "so", &pg);
    for w in [&a, &b, &c] {
        wait_assigned(w);
    }
    wait_covered(&[&a, &b, &c], 6);
    let (lines, mut oracle) = seeded(41, 30_000, 0.0);
    produce(&broker, "ev", lines);
    wait_stored(&a, oracle.events.len() as u64, Duration::from_secs(120));

    let held = wait_shares(&[&a, &b, &c], &pg);
    let total: f64 = held.iter().sum();
    eprintln!("copies: {held:?} of {total} bytes");
    for (w, h) in held.iter().enumerate() {
        assert!(*h <= 0.6 * total, "worker {w} holds {h} of {total} bytes");
    }
    for (i, w) in [&a, &b, &c].into_iter().enumerate() {
        check_all(w, &oracle, 50 + i as u64);
    }
    console_on_a_worker(&c, &oracle);

    // More events of the same days, in every partition: the answers each
    // worker cached above are dropped, whichever worker stored the events,
    // and the same queries count them.
    let (more, more_oracle) = seeded(42, 3_000, 0.0);
    produce(&broker, "ev", more);
    more_oracle.events.into_iter().for_each(|e| oracle.add(e));
    wait_stored(&a, oracle.events.len() as u64, Duration::from_secs(120));
    for (i, w) in [&a, &b, &c].into_iter().enumerate() {
        check_all(w, &oracle, 50 + i as u64);
    }

    // a dies for good: until its session expires the group still names it,
    // and b and c answer for its shards from the store.
    a.kill9();
    check_all(&b, &oracle, 60);
    check_all(&c, &oracle, 61);
    let answered_for = |w: &TestServer| metric(w, "desa_postgres_shards_answered_for_owners_total");
    assert!(
        answered_for(&b) > 0.0 && answered_for(&c) > 0.0,
        "b and c answered for the dead owner's shards"
    );
    wait_covered(&[&b, &c], 6);
    let held = wait_shares(&[&b, &c], &pg);
    eprintln!("copies after the kill: {held:?}");
    check_all(&b, &oracle, 62);
    check_all(&c, &oracle, 63);
}

/// Messages keyed at random (a device's events reach every partition) while
/// the group changes and the database restarts: a third worker joins
/// mid-stream, one is paused past its session timeout and resumed, and
/// PostgreSQL is stopped and started again. Once everything is stored,
/// every worker answers every query against the oracle, and their copies
/// are again disjoint shares of the catalog.
#[test]
fn random_keys_a_join_a_pause_and_a_database_restart_keep_every_answer_exact() {
    let broker = Broker::start();
    broker.create_topic("ev", 6);
    let pg = Postgres::start();
    let addr = broker.addr();
    let a = worker(&addr, "ev", "churn", &pg);
    let b = worker(&addr, "ev", "churn", &pg);
    wait_assigned(&a);
    wait_assigned(&b);
    let (lines, oracle) = seeded(43, 40_000, 0.0);
    let lines: Vec<(Option<String>, String)> = lines
        .into_iter()
        .enumerate()
        .map(|(i, (_, line))| (Some(format!("k{}", i * 7919 % 1000)), line))
        .collect();
    let producer = produce_in_background(&addr, "ev", lines, 2_000, Duration::from_millis(150));
    std::thread::sleep(Duration::from_millis(800));
    let c = worker(&addr, "ev", "churn", &pg);
    wait_assigned(&c);
    b.signal("-STOP");
    // Past the 6 s session timeout a and c own every partition.
    wait_covered(&[&a, &c], 6);
    b.signal("-CONT");
    pg.stop_immediate();
    std::thread::sleep(Duration::from_secs(2));
    pg.start_server();
    producer.join().unwrap();
    wait_stored(&a, oracle.events.len() as u64, Duration::from_secs(180));
    wait_covered(&[&a, &b, &c], 6);
    for (i, w) in [&a, &b, &c].into_iter().enumerate() {
        check_all(w, &oracle, 70 + i as u64);
    }
    let held = wait_shares(&[&a, &b, &c], &pg);
    eprintln!("copies after the churn: {held:?}");
}

/// Workers that speak HTTPS with a certificate of a private CA and read an
/// auth file ask each other for their parts with `--peer-token` and
/// `--peer-cacert`: every part is answered by its owner (none from the
/// store), and answers are exact.
#[test]
fn workers_over_https_with_an_auth_file_ask_each_other_with_the_peer_token() {
    use desa_server::auth::token_hash_hex;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("auth");
    std::fs::write(
        &file,
        format!(
            "peer query {}\nadmin ingest,query,metrics {}\n",
            token_hash_hex("peer-token-1"),
            token_hash_hex("admin-token-1")
        ),
    )
    .unwrap();
    let (ca, cert, key) = crate::pg::ca_and_server_cert(&["localhost", "127.0.0.1"]);
    let path = |name: &str, pem: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, pem).unwrap();
        p.to_str().unwrap().to_owned()
    };
    let (ca_file, cert_file, key_file) = (
        path("ca.pem", &ca),
        path("cert.pem", &cert),
        path("key.pem", &key),
    );
    let broker = Broker::start();
    broker.create_topic("ev", 2);
    let pg = Postgres::start();
    let addr = broker.addr();
    let extra = [
        "--auth-file",
        file.to_str().unwrap(),
        "--peer-token",
        "peer-token-1",
        "--tls-cert",
        &cert_file,
        "--tls-key",
        &key_file,
        "--peer-cacert",
        &ca_file,
    ];
    let a = crate::cluster::worker_with(&addr, "ev", "auth", &pg, &extra);
    let b = crate::cluster::worker_with(&addr, "ev", "auth", &pg, &extra);
    let agent = crate::tls::agent_trusting(&ca);
    let ask = |w: &TestServer, path: &str| -> String {
        agent
            .get(&format!("{}{path}", w.base))
            .set("Authorization", "Bearer admin-token-1")
            .call()
            .unwrap()
            .into_string()
            .unwrap()
    };
    let health = |w: &TestServer| -> serde_json::Value {
        serde_json::from_str(&ask(w, "/healthz")).unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let owned: usize = [&a, &b]
            .iter()
            .map(|w| {
                health(w)["components"]["kafka"]["assigned_partitions"]
                    .as_array()
                    .map_or(0, |p| p.len())
            })
            .sum();
        let both = [&a, &b].iter().all(|w| {
            health(w)["components"]["kafka"]["assigned_partitions"]
                .as_array()
                .is_some_and(|p| !p.is_empty())
        });
        if owned == 2 && both {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the two partitions were never shared"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (lines, oracle) = seeded(44, 10_000, 0.0);
    produce(&broker, "ev", lines);
    let deadline = Instant::now() + Duration::from_secs(120);
    while health(&a)["stored_events"].as_u64() != Some(oracle.events.len() as u64) {
        assert!(Instant::now() < deadline, "not all stored: {}", health(&a));
        std::thread::sleep(Duration::from_millis(200));
    }
    for w in [&a, &b] {
        for t in ["co2", "temperature"] {
            let body: serde_json::Value = serde_json::from_str(&ask(
                w,
                &format!("/v1/query/topk?type={t}&start=0&end=4000000000&k=10000"),
            ))
            .unwrap();
            let got: std::collections::HashMap<String, u64> =
                crate::support::devices_of(&body).into_iter().collect();
            assert_eq!(got, oracle_counts(&oracle, t), "{t}");
        }
        let metrics = ask(w, "/metrics");
        assert!(
            metrics.contains("desa_postgres_shards_answered_for_owners_total 0"),
            "a part was not answered by its owner:\n{metrics}"
        );
    }
}

/// A dead owner's address taken by a worker of another cluster (a port
/// reused on a host, an IP reused by another pod): the asker must not add
/// that worker's data in; it answers for the shards itself, exactly.
#[test]
fn a_stranger_at_a_dead_owners_address_is_not_asked_for_its_part() {
    let broker = Broker::start();
    broker.create_topic("ev", 2);
    let pg = Postgres::start();
    let other_pg = Postgres::start();
    let addr = broker.addr();
    let a = worker(&addr, "ev", "stranger", &pg);
    let mut b = worker(&addr, "ev", "stranger", &pg);
    for w in [&a, &b] {
        wait_assigned(w);
    }
    wait_covered(&[&a, &b], 2);
    let (lines, oracle) = seeded(91, 6_000, 0.0);
    produce(&broker, "ev", lines);
    wait_stored(&a, oracle.events.len() as u64, Duration::from_secs(120));

    // b dies; before its session expires, a stranger (another cluster's
    // worker, holding every shard of its own database) listens where b did.
    let port: u16 = b.base.rsplit(':').next().unwrap().parse().unwrap();
    b.kill9();
    let tmp = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_desa"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--store",
            &other_pg.url(),
        ])
        .arg("--data-dir")
        .arg(tmp.path().join("stranger-dir"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the stranger never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
    let stranger = TestServer::attach(&format!("http://127.0.0.1:{port}"));
    let (other, _) = seeded(92, 2_000, 0.0);
    let body: String = other.into_iter().map(|(_, l)| l + "\n").collect();
    assert_eq!(stranger.post_ndjson(&body).status, 200);

    check_queries(&a, &oracle, 93);
    let _ = child.kill();
    let _ = child.wait();
}
