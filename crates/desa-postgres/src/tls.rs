//! TLS to the database, chosen as libpq chooses it: by the `sslmode` and
//! `sslrootcert` parameters of the `--store` connection string (a
//! `postgres://` URL or `key=value` pairs). The `postgres` crate reads
//! neither, so they are taken out here, by the same rules of syntax it reads
//! the rest with; an `sslmode` it would still find fails the parse instead of
//! being overridden.
//!
//! | `sslmode` | TLS | the server's certificate |
//! |---|---|---|
//! | `disable` | never | - |
//! | `prefer` (the default) | when the server offers it | not checked; checked against `sslrootcert` when one is given |
//! | `require` | always | as `prefer` |
//! | `verify-ca` | always | must chain to `sslrootcert` (required) |
//! | `verify-full` | always | as `verify-ca`, and must name the host (the default when `sslrootcert=system`) |
//!
//! `sslrootcert` is a PEM file of one or more CA certificates, or `system`
//! for the operating system's roots, which only `verify-full` may use (any
//! publicly trusted certificate chains to them). Client certificates
//! (`sslcert`, `sslkey`) are refused by name. Over a Unix socket the server
//! offers no TLS: `prefer` goes on without it, `require` and the verifying
//! modes fail.

use std::sync::Arc;
use std::time::Duration;

use postgres::tls::MakeTlsConnect;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::{Error, Result};

/// libpq's `sslmode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Result<SslMode> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(Error::Config(format!(
                "sslmode={other:?} is not one of disable, prefer, require, verify-ca, verify-full"
            )))
            }
        })
    }

    fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// Where and how to connect: the connection settings, and the TLS
/// connector every connection of a worker uses.
#[derive(Clone)]
pub struct Target {
    pub config: postgres::Config,
    pub tls: Connector,
    pub mode: SslMode,
}

impl Target {
    /// Reads a `--store` URL or key=value connection string; a password it
    /// does not hold comes from `password_file` or libpq's variables and
    /// password file (`password`).
    pub fn parse_with(conninfo: &str, password_file: Option<&std::path::Path>) -> Result<Target> {
        let mut target = Target::parse(conninfo)?;
        crate::password::fill(&mut target.config, password_file)?;
        Ok(target)
    }

    /// Reads a `--store` URL or key=value connection string.
    pub fn parse(conninfo: &str) -> Result<Target> {
        let TlsParams { rest, mode, root } = take_tls_params(conninfo)?;
        // The message leaves the string out: it may hold a password.
        let mut config: postgres::Config = rest
            .parse()
            .map_err(|e| Error::Config(format!("cannot read the connection string: {e}")))?;
        if config.get_ssl_mode() != postgres::config::SslMode::Prefer {
            return Err(Error::Config(
                "sslmode is written in a form desa does not read: give it as sslmode=... in the URL's query or as a key=value pair".into(),
            ));
        }
        let mode = match (mode, root.as_deref()) {
            (Some(mode), _) => mode,
            (None, Some("system")) => SslMode::VerifyFull,
            (None, _) => SslMode::Prefer,
        };
        config.ssl_mode(match mode {
            SslMode::Disable => postgres::config::SslMode::Disable,
            SslMode::Prefer => postgres::config::SslMode::Prefer,
            _ => postgres::config::SslMode::Require,
        });
        client_timeouts(&mut config);
        let tls = Connector {
            inner: MakeRustlsConnect::new(client_config(mode, root.as_deref())?),
            names_checked: mode == SslMode::VerifyFull,
        };
        Ok(Target { config, tls, mode })
    }

    pub fn connect(&self) -> Result<postgres::Client> {
        Ok(self.config.connect(self.tls.clone())?)
    }
}

/// Timeouts on the worker's side of every connection, where the connection
/// string sets none: the server's statement timeouts end slow statements,
/// but only these end a call whose server or network has gone silent (a
/// partition, a frozen host), so that a query or a write fails with 503
/// instead of hanging. Data sent and not acknowledged for 15 s, or 3
/// keepalive probes unanswered after 10 s idle, close the connection.
fn client_timeouts(config: &mut postgres::Config) {
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(5));
    }
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(Duration::from_secs(15));
    }
    if config.get_keepalives() {
        config
            .keepalives_idle(Duration::from_secs(10))
            .keepalives_interval(Duration::from_secs(2))
            .keepalives_retries(3);
    }
}

/// rustls for every connection. A connection with no host name (a Unix
/// socket, or `hostaddr` alone) gets a stand-in name where names are not
/// checked, and is refused where they are.
#[derive(Clone)]
pub struct Connector {
    inner: MakeRustlsConnect,
    names_checked: bool,
}

impl<S> MakeTlsConnect<S> for Connector
where
    MakeRustlsConnect: MakeTlsConnect<S>,
{
    type Stream = <MakeRustlsConnect as MakeTlsConnect<S>>::Stream;
    type TlsConnect = <MakeRustlsConnect as MakeTlsConnect<S>>::TlsConnect;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn make_tls_connect(
        &mut self,
        domain: &str,
    ) -> std::result::Result<Self::TlsConnect, Self::Error> {
        let name = match (domain.is_empty(), self.names_checked) {
            (false, _) => domain,
            (true, false) => "unnamed.invalid",
            (true, true) => {
                return Err(
                    "sslmode=verify-full needs a host name to check the certificate against".into(),
                )
            }
        };
        MakeTlsConnect::<S>::make_tls_connect(&mut self.inner, name).map_err(Into::into)
    }
}

/// The connection string without the TLS parameters, and those parameters.
#[derive(Debug, PartialEq)]
struct TlsParams {
    rest: String,
    mode: Option<SslMode>,
    root: Option<String>,
}

/// Takes `sslmode`, `sslrootcert` (and the refused `sslcert`, `sslkey`) out
/// of a connection string, reading it as the `postgres` crate does: a URL
/// when it starts with `postgres://` or `postgresql://` (its query begins
/// at the first `?` after the credentials, which end at the first `@`;
/// keys and values are percent-decoded), else key=value pairs (values
/// quoted with `'` or not, `\` escaping a character). What is kept is
/// passed on byte for byte.
fn take_tls_params(conninfo: &str) -> Result<TlsParams> {
    let mut mode = None;
    let mut root = None;
    let mut take = |key: &str, value: &str| -> Result<bool> {
        match key {
            "sslmode" => mode = Some(SslMode::parse(value)?),
            "sslrootcert" => root = Some(value.to_owned()),
            "sslcert" | "sslkey" => {
                return Err(Error::Config(format!(
                    "{key}: client certificates are not supported (use a password or trust)"
                )))
            }
            _ => return Ok(false),
        }
        Ok(true)
    };
    let url_body = ["postgres://", "postgresql://"]
        .iter()
        .find_map(|p| conninfo.strip_prefix(p));
    let rest = match url_body {
        Some(body) => {
            let creds_end = body.find('@').map_or(0, |i| i + 1);
            let query_at = body[creds_end..].find('?').map(|i| creds_end + i);
            match query_at {
                None => conninfo.to_owned(),
                Some(q) => {
                    let base = &conninfo[..conninfo.len() - body.len() + q];
                    let mut kept = Vec::new();
                    let mut params = &body[q + 1..];
                    while !params.is_empty() {
                        let Some(eq) = params.find('=') else {
                            return Err(Error::Config(
                                "cannot read the connection string: unterminated parameter".into(),
                            ));
                        };
                        let end = params[eq..].find('&').map_or(params.len(), |i| eq + i);
                        let (key, value) = (&params[..eq], &params[eq + 1..end]);
                        if !take(&percent_decode(key), &percent_decode(value))? {
                            kept.push(&params[..end]);
                        }
                        params = params.get(end + 1..).unwrap_or("");
                    }
                    if kept.is_empty() {
                        base.to_owned()
                    } else {
                        format!("{base}?{}", kept.join("&"))
                    }
                }
            }
        }
        None => {
            let mut kept = Vec::new();
            for (key, value, raw) in key_value_pairs(conninfo)? {
                if !take(key, &value)? {
                    kept.push(raw);
                }
            }
            kept.join(" ")
        }
    };
    Ok(TlsParams { rest, mode, root })
}

/// The pairs of a key=value connection string: key, unescaped value, and
/// the pair as written.
fn key_value_pairs(s: &str) -> Result<Vec<(&str, String, &str)>> {
    let bad = |what: &str| Error::Config(format!("cannot read the connection string: {what}"));
    let b = s.as_bytes();
    let mut pairs = Vec::new();
    let mut i = 0;
    let skip_ws = |mut i: usize| {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        i
    };
    loop {
        i = skip_ws(i);
        if i == b.len() {
            return Ok(pairs);
        }
        let start = i;
        while i < b.len() && !b[i].is_ascii_whitespace() && b[i] != b'=' {
            i += 1;
        }
        let key = &s[start..i];
        i = skip_ws(i);
        if key.is_empty() || i == b.len() || b[i] != b'=' {
            return Err(bad("expected key=value"));
        }
        i = skip_ws(i + 1);
        let mut value = Vec::new();
        if i < b.len() && b[i] == b'\'' {
            i += 1;
            loop {
                match b.get(i) {
                    None => return Err(bad("unterminated quoted value")),
                    Some(b'\'') => {
                        i += 1;
                        break;
                    }
                    Some(b'\\') => {
                        if let Some(&c) = b.get(i + 1) {
                            value.push(c);
                        }
                        i += 2;
                    }
                    Some(&c) => {
                        value.push(c);
                        i += 1;
                    }
                }
            }
        } else {
            while i < b.len() && !b[i].is_ascii_whitespace() {
                if b[i] == b'\\' {
                    if let Some(&c) = b.get(i + 1) {
                        value.push(c);
                    }
                    i += 2;
                } else {
                    value.push(b[i]);
                    i += 1;
                }
            }
        }
        let i_end = i.min(b.len());
        i = i_end;
        let value = String::from_utf8(value).map_err(|_| bad("a value is not UTF-8"))?;
        pairs.push((key, value, &s[start..i_end]));
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn client_config(mode: SslMode, root: Option<&str>) -> Result<rustls::ClientConfig> {
    use SslMode::*;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = |root: &str| {
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots(root)?), provider.clone())
            .build()
            .map_err(|e| Error::Config(format!("sslrootcert: {e}")))
    };
    let relaxed = |chain| {
        Arc::new(Relaxed {
            chain,
            provider: provider.clone(),
        })
    };
    let verifier: Arc<dyn ServerCertVerifier> = match (mode, root) {
        (VerifyCa | Require | Prefer, Some("system")) => {
            return Err(Error::Config(format!(
                "sslmode={} may not be used with sslrootcert=system: any publicly trusted certificate chains to the system's CAs (use verify-full)",
                mode.name()
            )))
        }
        (VerifyCa | VerifyFull, None) => {
            return Err(Error::Config(format!(
                "sslmode={} needs sslrootcert=<PEM file of the CA> (or sslrootcert=system with verify-full)",
                mode.name()
            )))
        }
        (VerifyFull, Some(root)) => chain(root)?,
        (VerifyCa | Require | Prefer, Some(root)) => relaxed(Some(chain(root)?)),
        (Require | Prefer | Disable, None) | (Disable, Some(_)) => relaxed(None),
    };
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("TLS: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// The CA certificates of `sslrootcert`, or the system's.
fn roots(root: &str) -> Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    match root {
        "system" => {
            let found = rustls_native_certs::load_native_certs();
            store.add_parsable_certificates(found.certs);
            if store.is_empty() {
                return Err(Error::Config(
                    "sslrootcert=system: no CA certificates found on this system".into(),
                ));
            }
        }
        path => return pem_roots(std::path::Path::new(path), "sslrootcert"),
    }
    Ok(store)
}

/// The CA certificates of a PEM file; errors name it as `what` (the
/// setting that gave it).
fn pem_roots(path: &std::path::Path, what: &str) -> Result<RootCertStore> {
    let bad = |e: String| Error::Config(format!("{what} {}: {e}", path.display()));
    let mut store = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| bad(e.to_string()))?;
    for cert in certs {
        store.add(cert).map_err(|e| bad(e.to_string()))?;
    }
    if store.is_empty() {
        return Err(bad("holds no PEM certificate".into()));
    }
    Ok(store)
}

/// A client config for HTTPS to desa nodes that trusts the CAs of the PEM
/// file `path` (`--cacert`, `--peer-cacert`, named as `what` in errors).
pub fn https_trusting(path: &std::path::Path, what: &str) -> Result<rustls::ClientConfig> {
    let roots = pem_roots(path, what)?;
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| Error::Config(format!("{what}: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

/// The checks short of `verify-full`'s. With no chain (`prefer`, `require`
/// without `sslrootcert`) the certificate is not checked, libpq's
/// behaviour, though the handshake's signatures are. With one (`verify-ca`,
/// `prefer` or `require` with `sslrootcert`) the chain is checked and the
/// host name is not: rustls checks the chain (anchor, signatures, validity,
/// purpose) before the name, so a name error means the rest passed.
#[derive(Debug)]
struct Relaxed {
    chain: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Relaxed {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(s: &str) -> TlsParams {
        take_tls_params(s).unwrap()
    }

    #[test]
    fn tls_parameters_are_taken_out_of_urls() {
        let p = params(
            "postgres://desa@db:5432/x?application_name=w1&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem",
        );
        assert_eq!(p.rest, "postgres://desa@db:5432/x?application_name=w1");
        assert_eq!(p.mode, Some(SslMode::VerifyFull));
        assert_eq!(p.root.as_deref(), Some("/etc/ca.pem"));
        let p = params("postgresql://desa@db/x?sslmode=require");
        assert_eq!(
            (p.rest.as_str(), p.mode),
            ("postgresql://desa@db/x", Some(SslMode::Require))
        );
        assert_eq!(params("postgres://desa@db/x").mode, None);
        // A `?` in the password does not start the query; an encoded key is
        // read decoded; the last of a repeated key wins.
        let p = params("postgres://u:p?x@db/x?ssl%6Dode=disable&sslmode=require");
        assert_eq!(
            (p.rest.as_str(), p.mode),
            ("postgres://u:p?x@db/x", Some(SslMode::Require))
        );
    }

    #[test]
    fn tls_parameters_are_taken_out_of_key_value_strings() {
        let p = params("host=db user=desa sslmode = disable dbname=x");
        assert_eq!(
            (p.rest.as_str(), p.mode),
            ("host=db user=desa dbname=x", Some(SslMode::Disable))
        );
        // Inside a quoted value, `sslmode=...` is part of the value; quoted
        // and escaped values pass on as written.
        let p = params("password='a sslmode=disable  b' host=db sslmode=verify-full sslrootcert='/ca dir/ca.pem' user=d\\ e");
        assert_eq!(p.rest, "password='a sslmode=disable  b' host=db user=d\\ e");
        assert_eq!(p.mode, Some(SslMode::VerifyFull));
        assert_eq!(p.root.as_deref(), Some("/ca dir/ca.pem"));
        // A `://` inside a value does not make a URL of it.
        let p = params("password=x://y sslmode=require host=db");
        assert_eq!(
            (p.rest.as_str(), p.mode),
            ("password=x://y host=db", Some(SslMode::Require))
        );
    }

    #[test]
    fn the_mode_follows_libpq_and_weak_checks_are_refused() {
        let t = Target::parse("postgres://desa@db/x").unwrap();
        assert_eq!(t.mode, SslMode::Prefer);
        // sslrootcert=system alone means verify-full, as in libpq.
        let t = Target::parse("postgres://desa@db/x?sslrootcert=system");
        // (a host may have no CA certificates installed: then it says so)
        match t {
            Ok(t) => assert_eq!(t.mode, SslMode::VerifyFull),
            Err(e) => assert!(e.to_string().contains("no CA certificates"), "{e}"),
        }
        for (s, why) in [
            ("postgres://db/x?sslmode=strict", "sslmode=\"strict\""),
            ("postgres://db/x?sslcert=c.pem", "sslcert"),
            ("postgres://db/x?sslmode=verify-ca", "needs sslrootcert"),
            ("postgres://db/x?sslmode=verify-full", "needs sslrootcert"),
            (
                "postgres://db/x?sslmode=verify-ca&sslrootcert=system",
                "use verify-full",
            ),
            (
                "postgres://db/x?sslmode=require&sslrootcert=system",
                "use verify-full",
            ),
            (
                "postgres://db/x?sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem",
                "/nonexistent/ca.pem",
            ),
            ("host=db password='unterminated", "unterminated"),
            (
                "postgres://desa:secret@db/x?nosuch=1",
                "cannot read the connection string",
            ),
        ] {
            let e = Target::parse(s).err().unwrap().to_string();
            assert!(e.contains(why), "{s}: want {why:?} in {e}");
            assert!(!e.contains("secret"), "{e}");
        }
    }
}
