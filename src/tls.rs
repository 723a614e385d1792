//! The rustls client configurations of every TLS connection pollhook makes
//! itself: polls and HTTP deliveries (handed to reqwest) and MQTT brokers.
//! They trust the bundled Mozilla roots, the system's CAs (`SSL_CERT_FILE`
//! and `SSL_CERT_DIR` are honoured) and a table's `ca_file`, present its
//! `client_cert` / `client_key`, and with `tls_insecure` take any
//! certificate.
//!
//! The roots are loaded once per process, when the first certificate is
//! checked: reading the system's CAs took 2.5 ms to 12 ms for each client,
//! at every start, even of a config with only `http://` URLs.

use std::sync::{Arc, LazyLock, OnceLock};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, TrustAnchor, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::config::{Transport, read_ca_file};

/// The client configuration for `transport` (`None`: the defaults). An
/// error names the file that could not be used, never what it holds.
pub fn client_config(transport: Option<&Transport>) -> Result<ClientConfig, String> {
    let trust = match transport {
        Some(transport) if transport.insecure => None,
        Some(Transport {
            ca_file: Some(path),
            ..
        }) => {
            let mut extra = RootCertStore::empty();
            for certificate in read_ca_file(path)? {
                extra
                    .add(certificate)
                    .map_err(|error| format!("`ca_file` `{}`: {error}", path.display()))?;
            }
            Some(Arc::new(Trust::new(extra.roots)))
        }
        _ => Some(DEFAULT_TRUST.clone()),
    };
    let builder = ClientConfig::builder_with_provider(PROVIDER.clone())
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("cannot set up TLS: {error}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Verifier { trust }));
    match transport.and_then(|transport| transport.identity.as_ref()) {
        None => Ok(builder.with_no_client_auth()),
        Some(identity) => {
            let (chain, key) = identity.read()?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|_| identity.unusable())
        }
    }
}

/// [`client_config`] of no transport: it reads no file, so it cannot fail.
pub fn default_config() -> ClientConfig {
    client_config(None).expect("the default TLS configuration builds")
}

/// `config` for reqwest, which takes it as it is: HTTP/2 or HTTP/1.1, as
/// the server prefers.
pub fn for_http(mut config: ClientConfig) -> ClientConfig {
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config
}

static PROVIDER: LazyLock<Arc<CryptoProvider>> =
    LazyLock::new(|| Arc::new(rustls::crypto::ring::default_provider()));

/// The bundled and the system's roots, read at the first check.
static SYSTEM_ROOTS: LazyLock<RootCertStore> = LazyLock::new(|| {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    // Unreadable system certificates leave the bundled ones.
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    roots
});

/// What every configuration without a `ca_file` trusts: one verifier
/// for them all.
static DEFAULT_TRUST: LazyLock<Arc<Trust>> = LazyLock::new(|| Arc::new(Trust::new(Vec::new())));

/// The system's roots and `extra`, made into a verifier at the first
/// certificate it checks.
#[derive(Debug)]
struct Trust {
    extra: Vec<TrustAnchor<'static>>,
    verifier: OnceLock<Result<Arc<WebPkiServerVerifier>, String>>,
}

impl Trust {
    fn new(extra: Vec<TrustAnchor<'static>>) -> Trust {
        Trust {
            extra,
            verifier: OnceLock::new(),
        }
    }

    fn verifier(&self) -> Result<&WebPkiServerVerifier, rustls::Error> {
        let made = self.verifier.get_or_init(|| {
            let mut roots = SYSTEM_ROOTS.clone();
            roots.extend(self.extra.iter().cloned());
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), PROVIDER.clone())
                .build()
                .map_err(|error| error.to_string())
        });
        match made {
            Ok(verifier) => Ok(verifier),
            Err(why) => Err(rustls::Error::General(why.clone())),
        }
    }
}

/// Checks the server's certificate against `trust` (`None`:
/// `tls_insecure`, any is taken), and always the handshake's signatures:
/// even an unchecked connection is encrypted, to whoever answers.
#[derive(Debug)]
struct Verifier {
    trust: Option<Arc<Trust>>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.trust {
            None => Ok(ServerCertVerified::assertion()),
            Some(trust) => trust.verifier()?.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            ),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &PROVIDER.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &PROVIDER.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        PROVIDER
            .signature_verification_algorithms
            .supported_schemes()
    }
}
