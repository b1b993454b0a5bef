//! `desa autoscale` running real workers over the tansu broker and a real
//! PostgreSQL: a burst into a 6-partition topic grows the group from one
//! worker to at least three, the lag drains, the group shrinks back to one,
//! and the events stored equal the produced ones exactly, against the
//! oracle. The decisions and their timings are printed.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cluster::{metric, oracle_counts};
use crate::kafka::{
    check_queries, free_port, kafka_args, produce, produce_in_background, seeded, wait_stored,
    Broker,
};
use crate::pg::Postgres;
use crate::support::{all_counts, TestServer};

/// A `desa autoscale` process, killed (with its workers' group) on drop.
struct Autoscaler {
    child: Child,
    api: TestServer,
    log: std::path::PathBuf,
}

impl Autoscaler {
    fn start(args: &[String], log: std::path::PathBuf) -> Autoscaler {
        let mut child = Command::new(env!("CARGO_BIN_EXE_desa"))
            .arg("autoscale")
            .args(args)
            .env("DESA_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let base = line
            .trim()
            .strip_prefix("desa autoscale listening on ")
            .unwrap_or_else(|| {
                panic!(
                    "autoscale did not start: {line}\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            })
            .to_owned();
        Autoscaler {
            child,
            api: TestServer::attach(&base),
            log,
        }
    }

    fn gauge(&self, name: &str) -> f64 {
        metric(&self.api, name)
    }

    /// The scaler's logged decisions.
    fn decisions(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("scaling") || l.contains("worker st"))
            .map(str::to_owned)
            .collect()
    }

    /// SIGTERM: the scaler stops its workers, each leaving the group.
    fn stop(&mut self) {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "autoscale did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Autoscaler {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.stop();
        }
    }
}

/// Four free loopback ports in a row, for workers' `{port}`.
fn free_ports_in_a_row(n: u16) -> u16 {
    loop {
        let base = free_port();
        let held: Vec<_> = (0..n)
            .map_while(|i| std::net::TcpListener::bind(("127.0.0.1", base.checked_add(i)?)).ok())
            .collect();
        if held.len() == n as usize {
            return base;
        }
    }
}

/// Waits up to 60 s until a loopback port accepts connections (`open`) or
/// refuses them.
fn wait_port(port: u16, open: bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() != open {
        assert!(Instant::now() < deadline, "{what}: not within 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What the scaler showed over time: `(seconds since start, running,
/// desired, lag)` at each change.
struct Timeline {
    start: Instant,
    points: Vec<(f64, f64, f64, f64)>,
}

impl Timeline {
    fn sample(&mut self, s: &Autoscaler) -> (f64, f64) {
        let running = s.gauge("desa_autoscale_running_workers");
        let desired = s.gauge("desa_autoscale_desired_workers");
        let lag = s.gauge("desa_autoscale_lag_messages");
        let changed = self
            .points
            .last()
            .is_none_or(|p| (p.1, p.2) != (running, desired) || (p.3 > 0.0) != (lag > 0.0));
        if changed {
            let t = self.start.elapsed().as_secs_f64();
            self.points.push((t, running, desired, lag));
        }
        (running, lag)
    }

    /// Samples until `done(running, lag)`, failing after `within`.
    fn until(
        &mut self,
        s: &Autoscaler,
        within: Duration,
        what: &str,
        done: impl Fn(f64, f64) -> bool,
    ) {
        let deadline = Instant::now() + within;
        loop {
            let (running, lag) = self.sample(s);
            if done(running, lag) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {within:?}; timeline {:?}\n{}",
                self.points,
                s.decisions().join("\n")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

#[test]
fn a_burst_grows_the_group_and_the_drained_lag_shrinks_it_without_loss_or_duplicate() {
    let broker = Broker::start();
    broker.create_topic("ev", 6);
    let pg = Postgres::start();
    let tmp = tempfile::tempdir().unwrap();
    let base_port = free_ports_in_a_row(4);
    let url = pg.url();
    let mut args: Vec<String> = [
        "--kafka-brokers",
        &broker.addr(),
        "--kafka-topic",
        "ev",
        "--kafka-group",
        "burst",
        "--listen",
        "127.0.0.1:0",
        "--min",
        "1",
        "--max",
        "4",
        // A deliberately slow worker, so that a burst of a few thousand
        // messages a second calls for the topic's share of workers.
        "--worker-rate",
        "1000",
        "--drain-time",
        "10s",
        "--rate-window",
        "3s",
        "--interval",
        "1s",
        "--cooldown",
        "5s",
        "--scale-down-after",
        "10s",
        "--stop-timeout",
        "30s",
        "--base-port",
        &base_port.to_string(),
        "--",
        env!("CARGO_BIN_EXE_desa"),
        "serve",
        "--listen",
        "127.0.0.1:{port}",
        "--store",
        &url,
        "--worker-name",
        "worker-{slot}",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // The workers consume as every cluster test's workers do.
    let brokers = broker.addr();
    args.extend(
        kafka_args(&brokers, "ev", "burst")
            .iter()
            .map(|s| s.to_string()),
    );
    args.extend([
        "--data-dir".into(),
        format!("{}/worker-{{slot}}", tmp.path().display()),
    ]);
    let mut scaler = Autoscaler::start(&args, tmp.path().join("autoscale.log"));
    let first = TestServer::attach(&format!("http://127.0.0.1:{base_port}"));
    let mut timeline = Timeline {
        start: Instant::now(),
        points: Vec::new(),
    };
    timeline.until(&scaler, Duration::from_secs(60), "one worker", |r, _| {
        r == 1.0
    });
    wait_port(base_port, true, "the first worker listens");
    crate::cluster::wait_assigned(&first);

    let (lines, oracle) = seeded(81, 40_000, 0.0);
    // Produced in the background, watched meanwhile: a loaded host takes
    // long enough over the burst for the group to grow and shrink again
    // before it is produced in full.
    let produced_at = Instant::now();
    let producer = produce_in_background(&broker.addr(), "ev", lines, 40_000, Duration::ZERO);
    timeline.until(&scaler, Duration::from_secs(90), "grow to 3", |r, _| {
        r >= 3.0
    });
    producer.join().unwrap();
    eprintln!(
        "produced {} events in {:.1} s",
        oracle.events.len(),
        produced_at.elapsed().as_secs_f64()
    );
    timeline.until(
        &scaler,
        Duration::from_secs(180),
        "drain and shrink to 1",
        |r, lag| r == 1.0 && lag == 0.0,
    );
    let peak = timeline.points.iter().map(|p| p.1).fold(0.0, f64::max);

    wait_stored(&first, oracle.events.len() as u64, Duration::from_secs(60));
    // The answers right after the scale-in, while the worker left takes
    // over the others' shards, and again once it holds every partition and
    // a copy of every block.
    check_queries(&first, &oracle, 81);
    crate::cluster::wait_covered(&[&first], 6);
    crate::scale_out::wait_shares(&[&first], &pg);
    check_queries(&first, &oracle, 82);
    for t in ["co2", "temperature", "humidity"] {
        assert_eq!(all_counts(&first, t), oracle_counts(&oracle, t), "{t}");
    }
    eprintln!("timeline (s, running, desired, lag): {:?}", timeline.points);
    eprintln!("decisions:\n{}", scaler.decisions().join("\n"));
    assert!(peak >= 3.0, "peak {peak}");
    assert!(scaler.gauge("desa_autoscale_decisions_total{topic=\"ev\",direction=\"down\"}") >= 1.0);

    // The scaler killed outright leaves no worker running.
    scaler.child.kill().unwrap();
    scaler.child.wait().unwrap();
    wait_port(base_port, false, "the worker stops with its scaler");
}

/// Scaling in stops workers with SIGTERM: a cluster worker, fed by Kafka or
/// over HTTP, then finishes its writes, leaves the group and exits 0.
#[test]
fn a_cluster_worker_stopped_with_sigterm_exits_cleanly() {
    let broker = Broker::start();
    broker.create_topic("ev", 2);
    let pg = Postgres::start();
    let mut fed = crate::cluster::worker(&broker.addr(), "ev", "term", &pg);
    crate::cluster::wait_assigned(&fed);
    let (lines, oracle) = seeded(83, 2_000, 0.0);
    produce(&broker, "ev", lines);
    wait_stored(&fed, oracle.events.len() as u64, Duration::from_secs(60));
    assert_eq!(fed.terminate_status(), (Some(0), false), "fed by Kafka");

    let url = pg.url();
    let mut http = TestServer::start(&["--store", &url]);
    let posted = http.post_ndjson(
        r#"{"device_id":"d","timestamp":1767225600,"type":"co2","value":1,"location":{"latitude":1,"longitude":2}}"#,
    );
    assert_eq!(posted.status, 200, "{}", posted.body);
    assert_eq!(http.terminate_status(), (Some(0), false), "over HTTP");
}
