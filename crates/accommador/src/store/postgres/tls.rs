//! How every PostgreSQL connection is made: the URL's `sslmode` (and `sslrootcert`) turned into
//! a tokio-postgres configuration and a rustls connector. The store's pools, the LISTEN session
//! and every CLI command connect through [`PgConnect`].
//!
//! `sslmode` means what it means to libpq:
//! - `disable`: no TLS;
//! - `prefer` (the default, as in libpq): TLS when the server offers it, the certificate not
//!   checked;
//! - `require`: TLS or no connection, the certificate not checked (libpq does the same when no
//!   root certificate is configured);
//! - `verify-ca`: TLS, the certificate chain checked against the trusted roots;
//! - `verify-full`: as `verify-ca`, and the certificate must name the host connected to.
//!
//! tokio-postgres itself knows only `disable`, `prefer` and `require`, so both options are taken
//! out of the URL here before the rest is parsed. The trusted roots are the operating system's
//! (`rustls-native-certs`: the store an operator already manages, e.g. with
//! `update-ca-certificates`, where a managed database's CA is added; no root list compiled into
//! the binary that goes stale), or the PEM file named by `sslrootcert=PATH`, like libpq
//! (`sslrootcert=system` is the system's). TLS is rustls with the aws-lc-rs provider, the one
//! reqwest already brings for webhook deliveries, so no second crypto library is linked.

use std::str::FromStr;
use std::sync::Arc;

use anyhow::{Context, bail};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::SslMode as PgSslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::redact_database_url;

/// The connection modes of `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Result<SslMode, String> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(format!(
                    "sslmode={other} is not supported (use disable, prefer, require, verify-ca \
                     or verify-full)"
                ));
            }
        })
    }
}

/// Everything needed to open a connection to the database of one URL.
#[derive(Clone)]
pub struct PgConnect {
    pub config: tokio_postgres::Config,
    pub tls: MakeRustlsConnect,
    pub mode: SslMode,
}

impl std::fmt::Debug for PgConnect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // tokio-postgres's Config redacts its password itself.
        f.debug_struct("PgConnect")
            .field("config", &self.config)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl PgConnect {
    /// Parses a `postgres://` URL. Errors show the URL without its password.
    pub fn parse(url: &str) -> anyhow::Result<PgConnect> {
        let shown = redact_database_url(url);
        let (rest, options) = take_tls_options(url);
        let mode = match &options.sslmode {
            Some(mode) => SslMode::parse(mode).map_err(|e| anyhow::anyhow!("{shown}: {e}"))?,
            None => SslMode::Prefer,
        };
        let mut config = tokio_postgres::Config::from_str(&rest)
            .with_context(|| format!("parsing the PostgreSQL URL {shown}"))?;
        config.ssl_mode(match mode {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Prefer => PgSslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => PgSslMode::Require,
        });
        let tls = client_config(mode, options.sslrootcert.as_deref())
            .with_context(|| format!("setting up TLS for {shown}"))?;
        Ok(PgConnect {
            config,
            tls: MakeRustlsConnect::new(tls),
            mode,
        })
    }

    /// One connection (the caller drives the returned connection future). The error carries
    /// its causes (print it with `{:#}`): "error performing TLS handshake: invalid peer
    /// certificate: UnknownIssuer".
    pub async fn connect(
        &self,
    ) -> anyhow::Result<
        (
            tokio_postgres::Client,
            tokio_postgres::Connection<
                tokio_postgres::Socket,
                <MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<
                    tokio_postgres::Socket,
                >>::Stream,
            >,
        ),
    > {
        Ok(self.config.connect(self.tls.clone()).await?)
    }
}

/// The TLS options of a URL, taken out of it.
#[derive(Debug, Default, PartialEq, Eq)]
struct TlsOptions {
    sslmode: Option<String>,
    sslrootcert: Option<String>,
}

/// Splits `sslmode` and `sslrootcert` off the URL's query (the last of each wins, as in
/// tokio-postgres). The query starts at the first `?` after the user-info, which, as
/// tokio-postgres reads it, ends at the first `@`.
fn take_tls_options(url: &str) -> (String, TlsOptions) {
    let mut options = TlsOptions::default();
    let authority = url.find("://").map_or(0, |i| i + 3);
    let after_userinfo = url[authority..]
        .find('@')
        .map_or(authority, |i| authority + i + 1);
    let Some(q) = url[after_userinfo..].find('?').map(|i| after_userinfo + i) else {
        return (url.to_owned(), options);
    };
    let mut kept = Vec::new();
    for pair in url[q + 1..].split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        match decode(key).as_str() {
            "sslmode" => options.sslmode = Some(decode(value)),
            "sslrootcert" => options.sslrootcert = Some(decode(value)),
            _ => kept.push(pair),
        }
    }
    let mut rest = url[..q].to_owned();
    if !kept.is_empty() {
        rest.push('?');
        rest.push_str(&kept.join("&"));
    }
    (rest, options)
}

/// The rustls configuration for a mode: certificates unchecked for `prefer` and `require`,
/// checked against the roots for `verify-ca` (chain) and `verify-full` (chain and host name).
fn client_config(mode: SslMode, rootcert: Option<&str>) -> anyhow::Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("choosing TLS versions")?;
    let relaxed = |chain| {
        let verifier = Relaxed {
            provider: provider.clone(),
            chain,
        };
        builder
            .clone()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth()
    };
    let config = match mode {
        SslMode::Disable | SslMode::Prefer | SslMode::Require => relaxed(None),
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let roots = Arc::new(trusted_roots(rootcert)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .context("building the certificate verifier")?;
            if mode == SslMode::VerifyFull {
                builder.with_webpki_verifier(webpki).with_no_client_auth()
            } else {
                relaxed(Some(webpki))
            }
        }
    };
    Ok(config)
}

/// The roots certificates are checked against: `sslrootcert`'s PEM file, or the system's.
fn trusted_roots(rootcert: Option<&str>) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    match rootcert.filter(|p| *p != "system") {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .with_context(|| format!("reading sslrootcert {path}"))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                bail!("sslrootcert {path} holds no usable certificate");
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                bail!(
                    "no trusted root certificates found on this system (install the \
                     ca-certificates package, or name a PEM file with sslrootcert=PATH)"
                );
            }
        }
    }
    Ok(roots)
}

/// The certificate checks libpq makes short of `verify-full`: none (`prefer`, `require`:
/// encrypted, whoever answers, as libpq without a root certificate), or the chain without the
/// host name (`verify-ca`). The handshake's own signatures are verified either way.
#[derive(Debug)]
struct Relaxed {
    provider: Arc<CryptoProvider>,
    /// `verify-ca`: the verifier whose chain check must pass.
    chain: Option<Arc<WebPkiServerVerifier>>,
}

impl ServerCertVerifier for Relaxed {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            // The chain is checked before the name: this error means the chain was good.
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
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
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

    #[test]
    fn tls_options_are_taken_out_of_the_url_and_the_rest_kept() {
        let (rest, o) = take_tls_options(
            "postgres://u:p?w@db/app?application_name=x&sslmode=verify-full&sslrootcert=%2Fca.pem",
        );
        assert_eq!(rest, "postgres://u:p?w@db/app?application_name=x");
        assert_eq!(o.sslmode.as_deref(), Some("verify-full"));
        assert_eq!(o.sslrootcert.as_deref(), Some("/ca.pem"));
        let (rest, o) = take_tls_options("postgres://db/app?sslmode=require");
        assert_eq!(rest, "postgres://db/app");
        assert_eq!(o.sslmode.as_deref(), Some("require"));
        let (rest, o) = take_tls_options("postgres://db/app");
        assert_eq!(rest, "postgres://db/app");
        assert_eq!(o, TlsOptions::default());
    }

    #[test]
    fn every_libpq_mode_but_allow_parses() {
        for (given, mode) in [
            ("disable", SslMode::Disable),
            ("prefer", SslMode::Prefer),
            ("require", SslMode::Require),
            ("verify-ca", SslMode::VerifyCa),
            ("verify-full", SslMode::VerifyFull),
        ] {
            let c = PgConnect::parse(&format!("postgres://u@127.0.0.1/db?sslmode={given}"))
                .unwrap_or_else(|e| panic!("{given}: {e:#}"));
            assert_eq!(c.mode, mode);
        }
        assert_eq!(
            PgConnect::parse("postgres://u@127.0.0.1/db").unwrap().mode,
            SslMode::Prefer
        );
        let e = PgConnect::parse("postgres://u:hunter2@127.0.0.1/db?sslmode=allow")
            .unwrap_err()
            .to_string();
        assert!(e.contains("sslmode=allow is not supported"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
    }
}
