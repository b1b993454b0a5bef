//! TLS to the database, chosen as libpq chooses it: by the `sslmode` and
//! `sslrootcert` parameters of the `--store` URL (which the `postgres` crate
//! does not read itself: they are taken out here).
//!
//! | `sslmode` | TLS | the server's certificate |
//! |---|---|---|
//! | `disable` | never | - |
//! | `prefer` (the default) | when the server offers it | not checked |
//! | `require` | always | not checked, unless `sslrootcert` is given (then as `verify-ca`) |
//! | `verify-ca` | always | chains to `sslrootcert` (or the system's roots) |
//! | `verify-full` | always | as `verify-ca`, and names the host connected to |
//!
//! `sslrootcert` is a PEM file of one or more CA certificates, or `system`
//! for the operating system's roots (the default of the verifying modes).
//! Client certificates (`sslcert`, `sslkey`) are not supported.

use std::sync::Arc;

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
}

/// Where and how to connect: the connection settings, and the TLS
/// connector every connection of a worker uses.
#[derive(Clone)]
pub struct Target {
    pub config: postgres::Config,
    pub tls: MakeRustlsConnect,
    pub mode: SslMode,
}

impl Target {
    /// Reads a `--store` URL (or key=value connection string).
    pub fn parse(url: &str) -> Result<Target> {
        let (rest, mode, root) = take_tls_params(url)?;
        let mut config: postgres::Config = rest
            .parse()
            .map_err(|e| Error::Config(format!("cannot read {url:?}: {e}")))?;
        config.ssl_mode(match mode {
            SslMode::Disable => postgres::config::SslMode::Disable,
            SslMode::Prefer => postgres::config::SslMode::Prefer,
            _ => postgres::config::SslMode::Require,
        });
        let tls = MakeRustlsConnect::new(client_config(mode, root.as_deref())?);
        Ok(Target { config, tls, mode })
    }

    pub fn connect(&self) -> Result<postgres::Client> {
        Ok(self.config.connect(self.tls.clone())?)
    }
}

/// Splits `sslmode` and `sslrootcert` off a URL's query string or a
/// key=value string, returning what is left for the `postgres` crate.
fn take_tls_params(url: &str) -> Result<(String, SslMode, Option<String>)> {
    let mut mode = SslMode::Prefer;
    let mut root = None;
    let mut take = |key: &str, value: &str| -> Result<bool> {
        match key {
            "sslmode" => mode = SslMode::parse(value)?,
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
    let rest = if url.contains("://") {
        match url.split_once('?') {
            Some((base, query)) => {
                let mut kept = Vec::new();
                for pair in query.split('&').filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    if !take(k, &percent_decode(v))? {
                        kept.push(pair);
                    }
                }
                if kept.is_empty() {
                    base.to_owned()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
            None => url.to_owned(),
        }
    } else {
        let mut kept = Vec::new();
        for token in url.split_whitespace() {
            let (k, v) = token.split_once('=').unwrap_or((token, ""));
            if !take(k.trim(), v.trim())? {
                kept.push(token);
            }
        }
        kept.join(" ")
    };
    Ok((rest, mode, root))
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
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let checks = match (mode, root) {
        (SslMode::VerifyFull, _) => Checks::Full,
        (SslMode::VerifyCa, _) | (SslMode::Require, Some(_)) => Checks::Chain,
        _ => Checks::None,
    };
    let verifier: Arc<dyn ServerCertVerifier> = match checks {
        Checks::None => Arc::new(Unchecked(provider.clone())),
        Checks::Chain | Checks::Full => {
            let roots = Arc::new(roots(root)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| Error::Config(format!("sslrootcert: {e}")))?;
            if checks == Checks::Full {
                webpki
            } else {
                Arc::new(AnyName(webpki))
            }
        }
    };
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("TLS: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Checks {
    None,
    Chain,
    Full,
}

/// The CA certificates of `sslrootcert`, or the system's.
fn roots(root: Option<&str>) -> Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    match root {
        None | Some("system") => {
            let found = rustls_native_certs::load_native_certs();
            store.add_parsable_certificates(found.certs);
            if store.is_empty() {
                return Err(Error::Config(
                    "no CA certificates found on this system: give sslrootcert=<PEM file>".into(),
                ));
            }
        }
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
                .map_err(|e| Error::Config(format!("sslrootcert {path:?}: {e}")))?;
            for cert in certs {
                store
                    .add(cert)
                    .map_err(|e| Error::Config(format!("sslrootcert {path:?}: {e}")))?;
            }
            if store.is_empty() {
                return Err(Error::Config(format!(
                    "sslrootcert {path:?} holds no PEM certificate"
                )));
            }
        }
    }
    Ok(store)
}

/// `prefer` and `require`: the connection is encrypted, the certificate is
/// not checked (libpq's behaviour); the handshake's signatures still are.
#[derive(Debug)]
struct Unchecked(Arc<CryptoProvider>);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain is checked, the host name is not.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
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
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_are_taken_out_of_urls_and_key_value_strings() {
        let (rest, mode, root) = take_tls_params(
            "postgres://desa@db:5432/x?application_name=w1&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem",
        )
        .unwrap();
        assert_eq!(rest, "postgres://desa@db:5432/x?application_name=w1");
        assert_eq!(mode, SslMode::VerifyFull);
        assert_eq!(root.as_deref(), Some("/etc/ca.pem"));

        let (rest, mode, root) = take_tls_params("postgres://desa@db/x?sslmode=require").unwrap();
        assert_eq!(
            (rest.as_str(), mode, root),
            ("postgres://desa@db/x", SslMode::Require, None)
        );

        let (rest, mode, _) =
            take_tls_params("host=db user=desa sslmode=disable dbname=x").unwrap();
        assert_eq!(
            (rest.as_str(), mode),
            ("host=db user=desa dbname=x", SslMode::Disable)
        );

        let (_, mode, _) = take_tls_params("postgres://desa@db/x").unwrap();
        assert_eq!(mode, SslMode::Prefer);
    }

    #[test]
    fn bad_tls_parameters_are_named() {
        let e = take_tls_params("postgres://db/x?sslmode=strict").unwrap_err();
        assert!(e.to_string().contains("sslmode=\"strict\""), "{e}");
        let e = take_tls_params("postgres://db/x?sslcert=c.pem").unwrap_err();
        assert!(e.to_string().contains("sslcert"), "{e}");
        let e = Target::parse("postgres://db/x?sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem")
            .err()
            .unwrap();
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
    }
}
