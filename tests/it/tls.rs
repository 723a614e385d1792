//! HTTPS with a private CA: trusted through `ca_file`, refused without
//! it, accepted unchecked with `tls_insecure`.

use std::sync::Arc;

use crate::cli::{binary, text};

/// A CA of the test's own, and an HTTPS server on 127.0.0.1 with a
/// certificate it signed, answering `{"tls":true}`. Returns the CA's PEM
/// and the server's URL.
async fn https_server() -> (String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    let certificate = params.signed_by(&key, &ca).unwrap();
    let server = tokio_rustls::rustls::ServerConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![certificate.der().clone()],
        tokio_rustls::rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A client that refuses the certificate ends the handshake.
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper::service::service_fn(|_request| async {
                    hyper::Response::builder()
                        .header("content-type", "application/json")
                        .body(http_body_util::Full::new(bytes::Bytes::from_static(
                            b"{\"tls\":true}",
                        )))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (ca.pem(), format!("https://{address}/data"))
}

async fn once(dir: &std::path::Path, extra: &str, url: &str) -> (bool, String) {
    let path = dir.join("pollhook.toml");
    std::fs::write(
        &path,
        format!("[[endpoint]]\nname = \"device\"\nurl = \"{url}\"\nevery = \"1m\"\n{extra}\n"),
    )
    .unwrap();
    let output = binary()
        .args(["once", "-c", path.to_str().unwrap(), "device"])
        .output()
        .await
        .unwrap();
    (output.status.success(), text(&output.stderr))
}

#[tokio::test]
async fn a_private_ca_is_trusted_through_ca_file_and_only_then() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, url) = https_server().await;
    std::fs::write(dir.path().join("ca.pem"), ca).unwrap();

    let (ok, stderr) = once(dir.path(), "", &url).await;
    assert!(!ok, "an unknown CA is refused: {stderr}");
    assert!(stderr.contains("device: poll failed"), "{stderr}");

    // Relative to the config file's folder.
    let (ok, stderr) = once(dir.path(), "ca_file = \"ca.pem\"", &url).await;
    assert!(ok, "{stderr}");
    assert!(stderr.contains("\"tls\": true"), "{stderr}");

    let (ok, stderr) = once(dir.path(), "tls_insecure = true", &url).await;
    assert!(ok, "{stderr}");
    assert!(stderr.contains("`tls_insecure = true`"), "warned: {stderr}");
}
