//! rustls client configurations for the receivers that are not reached
//! through reqwest (MQTT brokers): the same trust as the HTTP client's —
//! the bundled Mozilla roots, the system's CAs (`SSL_CERT_FILE` and
//! `SSL_CERT_DIR` are honoured) and a target's `ca_file` —, its
//! `client_cert` / `client_key`, and `tls_insecure`.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::config::{ClientIdentity, Transport};

/// The client configuration for `transport` (`None`: the defaults). An
/// error names the file that could not be used, never what it holds.
pub fn client_config(transport: Option<&Transport>) -> Result<ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    // Unreadable system certificates leave the bundled ones.
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if let Some(path) = transport.and_then(|transport| transport.ca_file.as_deref()) {
        for certificate in ca_certificates(path)? {
            roots
                .add(certificate)
                .map_err(|error| format!("`ca_file` `{}`: {error}", path.display()))?;
        }
    }
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("cannot set up TLS: {error}"))?;
    let builder = match transport.is_some_and(|transport| transport.insecure) {
        true => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unchecked(
                provider.signature_verification_algorithms,
            ))),
        false => builder.with_root_certificates(roots),
    };
    match transport.and_then(|transport| transport.identity.as_ref()) {
        None => Ok(builder.with_no_client_auth()),
        Some(identity) => {
            let (chain, key) = read_identity(identity)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|_| unusable_identity(identity))
        }
    }
}

fn ca_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path)
        .map_err(|error| format!("cannot read `ca_file` `{}`: {error}", path.display()))?;
    match CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>() {
        Ok(certificates) if !certificates.is_empty() => Ok(certificates),
        _ => Err(format!(
            "`ca_file` `{}` holds no PEM certificate",
            path.display()
        )),
    }
}

type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

fn read_identity(identity: &ClientIdentity) -> Result<Identity, String> {
    let read = |key: &str, path: &Path| {
        std::fs::read(path)
            .map_err(|error| format!("cannot read `{key}` `{}`: {error}", path.display()))
    };
    let chain = CertificateDer::pem_slice_iter(&read("client_cert", &identity.cert)?)
        .collect::<Result<Vec<_>, _>>()
        .ok()
        .filter(|chain| !chain.is_empty());
    let key = PrivateKeyDer::from_pem_slice(&read("client_key", &identity.key)?).ok();
    chain.zip(key).ok_or_else(|| unusable_identity(identity))
}

fn unusable_identity(identity: &ClientIdentity) -> String {
    format!(
        "`client_cert` `{}` and `client_key` `{}` must hold a PEM certificate and its private key",
        identity.cert.display(),
        identity.key.display()
    )
}

/// `tls_insecure = true`: any certificate is taken, though the handshake's
/// signatures are still checked (the connection is encrypted, to whoever
/// answers).
#[derive(Debug)]
struct Unchecked(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}
