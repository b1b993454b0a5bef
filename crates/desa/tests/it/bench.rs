//! `desa bench` as a user runs it: the report holds what it claims to have
//! measured (timings are printed, never asserted).

/// A small embedded run with the mixed load and the dashboards: every kind
/// was asked under concurrency without an error, ingest ran beside it, and
/// the storage is broken down by part.
#[test]
fn bench_reports_the_mixed_load_and_bytes_by_part() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("bench.json");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_desa"))
        .args([
            "bench",
            "--events",
            "20000",
            "--devices",
            "300",
            "--queries",
            "4",
        ])
        .args([
            "--mixed-clients",
            "4",
            "--mixed-secs",
            "2s",
            "--mixed-ingest-rate",
            "2000",
            "--dashboard-clients",
            "2",
            "--cache-size",
            "8MiB",
        ])
        .arg("--work-dir")
        .arg(tmp.path().join("work"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let mixed = &report["mixed"];
    assert_eq!(mixed["errors"], 0, "{mixed}");
    for kind in ["avg", "topk", "geo"] {
        assert!(mixed["kinds"][kind]["n"].as_u64().unwrap() > 0, "{mixed}");
    }
    assert!(
        mixed["ingest_events_per_sec"].as_f64().unwrap() > 0.0,
        "{mixed}"
    );
    // The dashboards ran their 20 queries, with the node's CPU measured.
    let dash = &report["dashboard"];
    assert_eq!(dash["errors"], 0, "{dash}");
    assert_eq!(dash["queries_per_dashboard"], 20, "{dash}");
    for kind in ["avg", "topk", "geo", "series"] {
        assert!(dash["kinds"][kind]["n"].as_u64().unwrap() > 0, "{dash}");
    }
    assert!(dash["node_cpu_cores"].as_f64().unwrap() > 0.0, "{dash}");
    assert_eq!(
        report["node"]["components"]["cache"]["limit_bytes"],
        8 << 20
    );
    // 20,000 events stay in the log (the head flushes at 262,144).
    let parts = report["bytes_per_event_by_part"].as_object().unwrap();
    assert!(parts["log"].as_f64().unwrap() > 20.0, "{parts:?}");
}
