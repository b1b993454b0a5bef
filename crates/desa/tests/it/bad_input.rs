//! A corpus of malformed bodies, events and queries: each gets the documented
//! status and a message naming the field or limit; good data is untouched.

use std::io::Write;

use crate::support::{all_counts, window, TestServer};

const GOOD: &str = r#"{"device_id":"good","timestamp":1767225600,"type":"t","value":2.5,"location":{"latitude":1,"longitude":2}}"#;

fn with(field: &str, value: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(GOOD).unwrap();
    let mut text = v.to_string();
    let current = match field {
        "latitude" | "longitude" => v["location"][field].to_string(),
        _ => v[field].to_string(),
    };
    text = text.replacen(
        &format!("\"{field}\":{current}"),
        &format!("\"{field}\":{value}"),
        1,
    );
    text
}

#[test]
fn malformed_input_gets_clear_errors_and_good_data_survives() {
    let s = TestServer::start(&["--max-body", "1MiB"]);
    let r = s.post_ndjson(&format!("{GOOD}\n{GOOD}\n"));
    assert_eq!(r.body["accepted"], 2);

    // Whole-body errors.
    let long_key = "k".repeat(300);
    type Headers<'a> = Vec<(&'a str, &'a str)>;
    let cases: Vec<(Vec<u8>, &str, Headers, u16, &str)> = vec![
        (GOOD.into(), "text/plain", vec![], 415, "Content-Type"),
        (GOOD.into(), "", vec![], 415, "Content-Type"),
        (
            format!("[{GOOD},{GOOD}").into(),
            "application/json",
            vec![],
            400,
            "JSON",
        ),
        (
            b"{\"device_id\":\"x\"".to_vec(),
            "application/json",
            vec![],
            400,
            "JSON",
        ),
        (
            b"{\"device_id\":\"\xff\xfe\"}".to_vec(),
            "application/x-ndjson",
            vec![],
            400,
            "UTF-8",
        ),
        (
            vec![b'x'; 2 << 20],
            "application/x-ndjson",
            vec![],
            413,
            "limit",
        ),
        (
            b"not gzip at all".to_vec(),
            "application/x-ndjson",
            vec![("Content-Encoding", "gzip")],
            400,
            "gzip",
        ),
        (
            GOOD.into(),
            "application/x-ndjson",
            vec![("Content-Encoding", "br")],
            415,
            "Content-Encoding",
        ),
        (
            GOOD.into(),
            "application/x-ndjson",
            vec![("Idempotency-Key", &long_key)],
            400,
            "Idempotency-Key",
        ),
    ];
    for (body, ct, headers, status, needle) in cases {
        let r = s
            .post(&body, ct, &headers)
            .unwrap_or_else(|e| panic!("{ct} {headers:?} {} bytes: {e}", body.len()));
        assert_eq!(r.status, status, "{ct} {headers:?}: {}", r.body);
        assert!(
            r.error().contains(needle),
            "{:?} should mention {needle}",
            r.error()
        );
    }
    // A gzip bomb: small on the wire, over the limit once decoded.
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(&vec![b'\n'; 4 << 20]).unwrap();
    let bomb = enc.finish().unwrap();
    let r = s
        .post(
            &bomb,
            "application/x-ndjson",
            &[("Content-Encoding", "gzip")],
        )
        .unwrap();
    assert_eq!(r.status, 413, "{}", r.body);

    // Per-event errors: 200, each line rejected with the field named.
    let deep = format!("{}1{}", "{\"a\":".repeat(200), "}".repeat(200));
    let big = format!("{{\"blob\":\"{}\"}}", "x".repeat(9000));
    let events: Vec<(String, &str)> = vec![
        (with("device_id", "17"), "device_id"),
        (with("device_id", "\"\""), "device_id"),
        (
            with("device_id", &format!("\"{}\"", "d".repeat(129))),
            "device_id",
        ),
        (with("type", "null"), "type"),
        (with("type", &format!("\"{}\"", "t".repeat(65))), "type"),
        (with("timestamp", "\"2026-01-01\""), "timestamp"),
        (with("timestamp", "1767225600.5"), "timestamp"),
        (with("timestamp", "-1"), "timestamp"),
        (with("timestamp", "99999999999"), "max-future"),
        (with("value", "\"NaN\""), "value"),
        (with("value", "1e400"), "number out of range"),
        (with("value", "null"), "value"),
        (with("latitude", "90.0001"), "latitude"),
        (with("longitude", "-181"), "longitude"),
        (
            GOOD.replace(",\"location\":{\"latitude\":1,\"longitude\":2}", ""),
            "location",
        ),
        (
            GOOD.replace('}', ",\"metadata\":[1,2]}")
                .replacen(",\"metadata\":[1,2]}", "}", 1),
            "metadata",
        ),
        (
            GOOD.trim_end_matches('}').to_owned() + "},\"metadata\":" + &big + "}",
            "metadata",
        ),
        (
            GOOD.trim_end_matches('}').to_owned() + "},\"metadata\":" + &deep + "}",
            "nest at most",
        ),
        ("[1,2,3]".to_owned(), "object"),
        ("{\"device_id\":".to_owned(), "invalid JSON"),
    ];
    let body: String = events
        .iter()
        .map(|(l, _)| l.clone() + "\n")
        .collect::<String>()
        + GOOD
        + "\n";
    let r = s.post_ndjson(&body);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.body["accepted"], 1,
        "only the last, good line is stored: {}",
        r.body
    );
    let rejected = r.body["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), events.len());
    for (i, (line, needle)) in events.iter().enumerate() {
        assert_eq!(rejected[i]["index"], i);
        let msg = rejected[i]["error"].as_str().unwrap();
        assert!(
            msg.contains(needle),
            "line {i} {line:.80}: {msg:?} should mention {needle}"
        );
    }

    // Query errors.
    let q = |path: &str, params: &[(&str, &str)]| {
        let p: Vec<(&str, String)> = params.iter().map(|(k, v)| (*k, v.to_string())).collect();
        s.get(path, &p)
    };
    let bad_queries: Vec<(&str, Headers, &str)> = vec![
        (
            "/v1/query/avg",
            vec![("type", "t"), ("start", "0"), ("end", "10")],
            "device_id",
        ),
        (
            "/v1/query/avg",
            vec![
                ("device_id", "good"),
                ("type", "t"),
                ("start", "abc"),
                ("end", "10"),
            ],
            "start",
        ),
        (
            "/v1/query/avg",
            vec![
                ("device_id", "good"),
                ("type", "t"),
                ("start", "10"),
                ("end", "10"),
            ],
            "less than end",
        ),
        (
            "/v1/query/series",
            vec![
                ("device_id", "good"),
                ("type", "t"),
                ("start", "0"),
                ("end", "10"),
            ],
            "step",
        ),
        (
            "/v1/query/series",
            vec![
                ("device_id", "good"),
                ("type", "t"),
                ("start", "0"),
                ("end", "10"),
                ("step", "0"),
            ],
            "step must be at least 1",
        ),
        (
            "/v1/query/series",
            vec![
                ("device_id", "good"),
                ("type", "t"),
                ("start", "0"),
                ("end", "86400"),
                ("step", "1"),
            ],
            "at most 2000 points: raise step to at least 44",
        ),
        (
            "/v1/query/series",
            vec![
                ("device_id", "good"),
                ("type", "t"),
                ("start", "-9223372036854775808"),
                ("end", "9223372036854775807"),
                ("step", "60"),
            ],
            "at most 2000 points",
        ),
        (
            "/v1/query/topk",
            vec![("type", "t"), ("start", "0"), ("end", "10"), ("k", "0")],
            "k must be",
        ),
        (
            "/v1/query/topk",
            vec![("type", "t"), ("start", "0"), ("end", "10"), ("k", "10001")],
            "k must be",
        ),
        (
            "/v1/query/topk",
            vec![("type", "t"), ("start", "0"), ("end", "10")],
            "k",
        ),
        (
            "/v1/query/geo",
            vec![
                ("type", "t"),
                ("min_lat", "10"),
                ("max_lat", "5"),
                ("min_lon", "0"),
                ("max_lon", "1"),
                ("start", "0"),
                ("end", "9"),
            ],
            "min_lat",
        ),
        (
            "/v1/query/geo",
            vec![
                ("type", "t"),
                ("min_lat", "0"),
                ("max_lat", "95"),
                ("min_lon", "0"),
                ("max_lon", "1"),
                ("start", "0"),
                ("end", "9"),
            ],
            "max_lat",
        ),
        (
            "/v1/query/geo",
            vec![
                ("type", "t"),
                ("min_lat", "0"),
                ("max_lat", "5"),
                ("min_lon", "x"),
                ("max_lon", "1"),
                ("start", "0"),
                ("end", "9"),
            ],
            "min_lon",
        ),
    ];
    for (path, params, needle) in bad_queries {
        let r = q(path, &params);
        assert_eq!(r.status, 400, "{path} {params:?}");
        assert!(
            r.error().contains(needle),
            "{:?} should mention {needle}",
            r.error()
        );
    }

    let r = s.get("/v1/query/median", &[]);
    assert_eq!(r.status, 404);
    assert!(r.error().contains("/v1/query/avg"), "{}", r.error());

    // The node still serves, and exactly the good events are stored.
    assert_eq!(all_counts(&s, "t")["good"], 3);
    let mut p = window(1_767_225_600, 1_767_225_601);
    p.push(("device_id", "good".into()));
    p.push(("type", "t".into()));
    let r = s.get("/v1/query/avg", &p);
    assert_eq!(r.body["count"], 3);
    assert_eq!(r.body["avg"], 2.5);
    assert_eq!(s.get("/healthz", &[]).status, 200);
}
