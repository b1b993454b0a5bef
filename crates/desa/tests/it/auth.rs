//! `--auth-file` against the real process: tokens made by `desa token new`,
//! every combination of scopes on every endpoint (200 or 403 naming the
//! scope), 401 with `WWW-Authenticate: Bearer` without a known token,
//! `/healthz` open, the failures counted, the file read again on SIGHUP
//! (a malformed one leaving the credentials in force), a malformed file at
//! start refused with its line number, and the clients' `--token`.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::TestServer;

const SCOPES: [&str; 3] = ["ingest", "query", "metrics"];

/// `desa token new NAME --scopes SCOPES`: the token and the auth-file line.
pub fn new_token(name: &str, scopes: &str) -> (String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_desa"))
        .args(["token", "new", name, "--scopes", scopes])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    let token = lines.next().unwrap().to_owned();
    let line = lines.next().unwrap().to_owned();
    assert!(token.len() >= 32, "a token of at least 128 bits: {token}");
    assert!(line.starts_with(&format!("{name} {scopes} ")), "{line}");
    (token, line)
}

/// Status and body of a request with an optional bearer token.
fn call(s: &TestServer, method: &str, path: &str, token: Option<&str>) -> (u16, ureq::Response) {
    let mut req =
        ureq::request(method, &format!("{}{path}", s.base)).timeout(Duration::from_secs(30));
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    let body = r#"{"device_id":"d1","timestamp":1767225600,"type":"t","value":1.5,"location":{"latitude":1.0,"longitude":2.0}}"#;
    let r = if method == "POST" {
        req.set("Content-Type", "application/x-ndjson")
            .send_string(body)
    } else {
        req.call()
    };
    match r {
        Ok(resp) => (resp.status(), resp),
        Err(ureq::Error::Status(code, resp)) => (code, resp),
        Err(e) => panic!("{method} {path}: {e}"),
    }
}

const ENDPOINTS: [(&str, &str, &str); 3] = [
    ("POST", "/v1/events", "ingest"),
    (
        "GET",
        "/v1/query/avg?device_id=d1&type=t&start=0&end=4000000000",
        "query",
    ),
    ("GET", "/metrics", "metrics"),
];

fn write(path: &Path, lines: &[String]) {
    std::fs::write(path, format!("# desa credentials\n{}\n", lines.join("\n"))).unwrap();
}

#[test]
fn tokens_open_the_endpoints_their_scopes_name_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("auth");
    // Every non-empty combination of the three scopes.
    let mut tokens = Vec::new();
    let mut lines = Vec::new();
    for mask in 1..8u8 {
        let scopes: Vec<&str> = (0..3)
            .filter(|i| mask & (1 << i) != 0)
            .map(|i| SCOPES[i])
            .collect();
        let (token, line) = new_token(&format!("c{mask}"), &scopes.join(","));
        tokens.push((token, scopes));
        lines.push(line);
    }
    write(&file, &lines);
    let s = TestServer::start(&["--auth-file", file.to_str().unwrap()]);

    for (token, scopes) in &tokens {
        for (method, path, need) in ENDPOINTS {
            let (status, resp) = call(&s, method, path, Some(token));
            if scopes.contains(&need) {
                assert_eq!(status, 200, "{scopes:?} on {path}");
            } else {
                assert_eq!(status, 403, "{scopes:?} on {path}");
                let body: serde_json::Value = resp.into_json().unwrap();
                let error = body["error"].as_str().unwrap();
                assert!(error.contains(&format!("`{need}` scope")), "{error}");
            }
        }
    }
    for (method, path, _) in ENDPOINTS {
        for token in [None, Some("not-a-token")] {
            let (status, resp) = call(&s, method, path, token);
            assert_eq!(status, 401, "{path} with {token:?}");
            assert_eq!(resp.header("WWW-Authenticate"), Some("Bearer"));
            let body: serde_json::Value = resp.into_json().unwrap();
            assert!(body["error"].is_string());
        }
    }
    assert_eq!(call(&s, "GET", "/healthz", None).0, 200);
    let metrics = call(&s, "GET", "/metrics", Some(&tokens[6].0))
        .1
        .into_string()
        .unwrap();
    // Per endpoint: the 3 combinations without its scope, no token, an
    // unknown token.
    for (reason, n) in [("missing", 3), ("unknown", 3), ("scope", 9)] {
        let line = format!("desa_http_auth_failures_total{{reason=\"{reason}\"}} {n}");
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
    // The query client speaks it too.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_desa"))
        .args([
            "query",
            "--url",
            &s.base,
            "--json",
            "avg",
            "--device-id",
            "d1",
            "--type",
            "t",
        ])
        .args(["--start", "0", "--end", "4000000000"])
        .env("DESA_TOKEN", &tokens[1].0) // query
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"count\""));
}

#[test]
fn the_auth_file_is_read_again_on_sighup_and_a_malformed_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("auth");
    let (old, old_line) = new_token("old", "query");
    let (new, new_line) = new_token("new", "query");
    write(&file, std::slice::from_ref(&old_line));
    let s = TestServer::start(&["--auth-file", file.to_str().unwrap()]);
    let q = ENDPOINTS[1].1;
    assert_eq!(call(&s, "GET", q, Some(&old)).0, 200);
    assert_eq!(call(&s, "GET", q, Some(&new)).0, 401);

    // A malformed file on SIGHUP: the credentials in force stay.
    std::fs::write(&file, format!("{new_line}\nbroken line\n")).unwrap();
    s.signal("-HUP");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(call(&s, "GET", q, Some(&old)).0, 200);
    assert!(s.log_text().contains("line 2"), "{}", s.log_text());

    write(&file, std::slice::from_ref(&new_line));
    s.signal("-HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while call(&s, "GET", q, Some(&new)).0 != 200 {
        assert!(Instant::now() < deadline, "the new token never worked");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(call(&s, "GET", q, Some(&old)).0, 401);

    // At start, a malformed file is refused with its line number.
    std::fs::write(
        &file,
        format!("{new_line}\nx ingest,root {}\n", "0".repeat(64)),
    )
    .unwrap();
    let err = TestServer::start_in(
        &dir.path().join("d2"),
        &["--auth-file", file.to_str().unwrap()],
    )
    .err()
    .unwrap();
    assert!(err.contains("line 2: unknown scope \"root\""), "{err}");
}

/// `--help` never prints the values of settings that may hold secrets.
#[test]
fn help_does_not_print_secret_settings() {
    const SECRET: &str = "s3cretpw";
    for args in [
        &["serve", "--help"][..],
        &["migrate", "--help"],
        &["bench", "--help"],
        &["query", "--help"],
        &["gen", "--help"],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_desa"))
            .args(args)
            .env("DESA_STORE", format!("postgres://desa:{SECRET}@db/desa"))
            .env(
                "DESA_BENCH_STORE",
                format!("postgres://desa:{SECRET}@db/desa"),
            )
            .env("DESA_KAFKA_OPTIONS", format!("sasl.password={SECRET}"))
            .env("DESA_PEER_TOKEN", SECRET)
            .env("DESA_TOKEN", SECRET)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Usage"), "{args:?}: {text}");
        assert!(!text.contains(SECRET), "{args:?} printed a secret:\n{text}");
    }
}

/// The database password stays out of argv: `desa migrate` against a role
/// that needs one fails without it, and succeeds with
/// `--store-password-file`, with `PGPASSWORD`, and with a `PGPASSFILE` of
/// mode 0600 (one its group may read is ignored, as libpq does); no error
/// shows the password.
#[test]
fn the_database_password_comes_from_a_file_or_libpqs_variables() {
    use std::os::unix::fs::PermissionsExt;
    let pg = crate::pg::Postgres::start();
    let mut c = postgres::Client::connect(&pg.url(), postgres::NoTls).unwrap();
    c.batch_execute(
        "SET password_encryption = 'scram-sha-256';
         CREATE ROLE pw LOGIN SUPERUSER PASSWORD 'hunter2-secret'",
    )
    .unwrap();
    let hba: String = c.query_one("SHOW hba_file", &[]).unwrap().get(0);
    std::fs::write(
        &hba,
        "local all all trust\nhost all pw 127.0.0.1/32 scram-sha-256\nhost all all 127.0.0.1/32 trust\n",
    )
    .unwrap();
    c.execute("SELECT pg_reload_conf()", &[]).unwrap();
    let url = pg.url().replace("desa@", "pw@");
    let dir = tempfile::tempdir().unwrap();
    let migrate = |extra: &[&str], env: &[(&str, &str)]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_desa"))
            .args(["migrate", "--store", &url])
            .args(extra)
            .env_remove("PGPASSWORD")
            .env_remove("PGPASSFILE")
            .env("HOME", dir.path())
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !err.contains("hunter2"),
            "an error showed the password: {err}"
        );
        (out.status.success(), err)
    };
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (ok, err) = migrate(&[], &[]);
    assert!(!ok, "a role with a password was reached without one");
    assert!(err.to_lowercase().contains("password"), "{err}");

    let file = dir.path().join("pw");
    std::fs::write(&file, "hunter2-secret\n").unwrap();
    let (ok, err) = migrate(&["--store-password-file", file.to_str().unwrap()], &[]);
    assert!(ok, "{err}");
    let (ok, err) = migrate(&[], &[("PGPASSWORD", "hunter2-secret")]);
    assert!(ok, "{err}");

    let passfile = dir.path().join("pgpass");
    std::fs::write(
        &passfile,
        format!("127.0.0.1:{}:postgres:pw:hunter2-secret\n", pg.port),
    )
    .unwrap();
    std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (ok, _) = migrate(&[], &[("PGPASSFILE", passfile.to_str().unwrap())]);
    assert!(!ok, "a password file others may read was used");
    std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (ok, err) = migrate(&[], &[("PGPASSFILE", passfile.to_str().unwrap())]);
    assert!(ok, "{err}");
}

/// A node listening beyond loopback without --auth-file says, at start,
/// that anyone who reaches it can read and write; one on loopback does not.
#[test]
fn a_node_open_to_the_network_without_credentials_warns() {
    for (listen, warns) in [("0.0.0.0:0", true), ("127.0.0.1:0", false)] {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_desa"))
            .args(["serve", "--listen", listen, "--data-dir"])
            .arg(dir.path().join("data"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut first = String::new();
        use std::io::BufRead;
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        assert!(first.starts_with("desa listening on"), "{first}");
        child.kill().unwrap();
        child.wait().unwrap();
        let text = std::fs::read_to_string(&log).unwrap();
        assert_eq!(
            text.contains("anyone who reaches"),
            warns,
            "{listen}:\n{text}"
        );
    }
}

/// Kafka settings from --kafka-option-file reach librdkafka (a CA file
/// that does not exist stops the start, librdkafka saying why), a malformed
/// line is named by number, and no error shows the file's secret.
#[test]
fn kafka_options_come_from_a_file_and_its_secrets_stay_out_of_errors() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kafka.conf");
    let start = |text: &str| {
        std::fs::write(&file, text).unwrap();
        TestServer::start_in(
            &dir.path().join("data"),
            &[
                "--kafka-brokers",
                "127.0.0.1:1",
                "--kafka-topic",
                "t",
                "--kafka-option-file",
                file.to_str().unwrap(),
            ],
        )
        .err()
        .expect("the node started")
    };
    let err = start("# SASL over TLS\nsecurity.protocol=sasl_ssl\nssl.ca.location=/nonexistent/ca.pem\nsasl.mechanism=PLAIN\nsasl.username=desa\nsasl.password=topsecret-42\n");
    assert!(err.contains("ssl.ca.location"), "{err}");
    assert!(!err.contains("topsecret-42"), "{err}");
    let err = start("sasl.username=desa\nsasl.password topsecret-42\n");
    assert!(err.contains("line 2: expected key=value"), "{err}");
    assert!(!err.contains("topsecret-42"), "{err}");
}

/// `desa bench` on nodes that read an auth file (inherited from its
/// environment) and speak HTTPS: it runs with `--token` and `--cacert`, and
/// without the token it stops at the node's 401.
#[test]
fn bench_speaks_to_nodes_with_tokens_and_https() {
    let dir = tempfile::tempdir().unwrap();
    let (token, line) = new_token("bench", "ingest,query,metrics");
    write(&dir.path().join("auth"), &[line]);
    let (ca, cert, key) = crate::pg::ca_and_server_cert(&["localhost", "127.0.0.1"]);
    for (name, pem) in [("ca.pem", &ca), ("cert.pem", &cert), ("key.pem", &key)] {
        std::fs::write(dir.path().join(name), pem).unwrap();
    }
    // Without a token the node answers 401 before it reads a body: a body
    // smaller than the socket's buffers is all sent, and the 401 read.
    let bench = |token: Option<&str>, body_bytes: &str| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_desa"));
        cmd.args([
            "bench",
            "--events",
            "20000",
            "--devices",
            "100",
            "--queries",
            "4",
        ])
        .args(["--body-bytes", body_bytes])
        .arg("--work-dir")
        .arg(dir.path().join("work"))
        .arg("--cacert")
        .arg(dir.path().join("ca.pem"))
        .env("DESA_AUTH_FILE", dir.path().join("auth"))
        .env("DESA_TLS_CERT", dir.path().join("cert.pem"))
        .env("DESA_TLS_KEY", dir.path().join("key.pem"))
        .env_remove("DESA_TOKEN");
        if let Some(t) = token {
            cmd.env("DESA_TOKEN", t);
        }
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = bench(Some(&token), "4194304");
    assert!(ok, "{err}");
    assert!(err.contains("events/s (durable, over HTTP)"), "{err}");
    let (ok, err) = bench(None, "4000");
    assert!(!ok);
    assert!(err.contains("401"), "{err}");
}
