//! `--tls-cert`/`--tls-key` against the real process: HTTPS with the CA
//! that signed the certificate, refused without it, plain HTTP to the TLS
//! listener closed unanswered, a renewed certificate (signed by another CA)
//! picked up on SIGHUP for new connections while one opened before goes on,
//! a bad key file refused at start, and `desa query --cacert`.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::pg::ca_and_server_cert;
use crate::support::TestServer;

/// An agent that trusts only the CA in `ca_pem`.
pub(crate) fn agent_trusting(ca_pem: &str) -> ureq::Agent {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    ureq::AgentBuilder::new()
        .tls_config(Arc::new(config))
        .timeout(Duration::from_secs(10))
        .build()
}

fn health(agent: &ureq::Agent, base: &str) -> Result<u16, String> {
    agent
        .get(&format!("{base}/healthz"))
        .call()
        .map(|r| r.status())
        .map_err(|e| e.to_string())
}

fn write_pair(dir: &Path, cert: &str, key: &str) {
    std::fs::write(dir.join("cert.pem"), cert).unwrap();
    std::fs::write(dir.join("key.pem"), key).unwrap();
}

#[test]
fn the_listener_speaks_https_only_and_takes_a_renewed_certificate_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let (ca1, cert1, key1) = ca_and_server_cert(&["localhost", "127.0.0.1"]);
    let (ca2, cert2, key2) = ca_and_server_cert(&["localhost", "127.0.0.1"]);
    write_pair(dir.path(), &cert1, &key1);
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let s = TestServer::start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    assert!(s.base.starts_with("https://"), "{}", s.base);
    let (with_ca1, with_ca2) = (agent_trusting(&ca1), agent_trusting(&ca2));
    assert_eq!(health(&with_ca1, &s.base), Ok(200));
    let refused = health(&with_ca2, &s.base).unwrap_err();
    assert!(refused.to_lowercase().contains("certificate"), "{refused}");
    // Plain HTTP to the TLS port gets no answer.
    let plain = s.base.replace("https://", "http://");
    let r = ureq::get(&format!("{plain}/healthz"))
        .timeout(Duration::from_secs(10))
        .call();
    assert!(r.is_err(), "plain HTTP was answered");

    // Renewed on disk: the old certificate stays until SIGHUP.
    write_pair(dir.path(), &cert2, &key2);
    assert_eq!(health(&with_ca1, &s.base), Ok(200));
    s.signal("-HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while health(&with_ca2, &s.base) != Ok(200) {
        assert!(
            Instant::now() < deadline,
            "the renewed certificate was never served"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // A new connection gets the renewed certificate only; the connection
    // opened before the reload (kept alive in `with_ca1`'s pool) still
    // answers: nobody was dropped.
    assert!(health(&agent_trusting(&ca1), &s.base).is_err());
    assert_eq!(health(&with_ca1, &s.base), Ok(200));

    // desa query with --cacert.
    std::fs::write(dir.path().join("ca2.pem"), &ca2).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_desa"))
        .args([
            "query",
            "--url",
            &s.base,
            "--json",
            "avg",
            "--device-id",
            "d",
            "--type",
            "t",
        ])
        .args(["--start", "0", "--end", "10", "--cacert"])
        .arg(dir.path().join("ca2.pem"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A key that is not one refuses to start, naming the file.
    std::fs::write(dir.path().join("bad.pem"), "not a key").unwrap();
    let bad = dir.path().join("bad.pem");
    let err = TestServer::start_in(
        &dir.path().join("d2"),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            bad.to_str().unwrap(),
        ],
    )
    .err()
    .unwrap();
    assert!(err.contains("--tls-key"), "{err}");
}
