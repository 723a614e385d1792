//! HTTPS with a private CA: trusted through `ca_file`, refused without
//! it, accepted unchecked with `tls_insecure`; client certificates for
//! servers that ask for one; the same settings on targets.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio_rustls::rustls;

use crate::cli::{binary, check_refuses, text};
use crate::support::TestCa as Ca;

/// An HTTPS server on 127.0.0.1 with a certificate `ca` signed, answering
/// every request `{"tls":true}`; with `client_ca`, only to clients with a
/// certificate it signed. Returns its base URL and the requests it answered.
pub(crate) async fn https_server(ca: &Ca, client_ca: Option<&Ca>) -> (String, Arc<AtomicUsize>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(client_ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(client_ca.der().clone()).unwrap();
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    };
    let (certificate, key) = ca.sign();
    let server = builder
        .with_single_cert(
            vec![certificate.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let answered = Arc::new(AtomicUsize::new(0));
    let count = answered.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, count) = (acceptor.clone(), count.clone());
            tokio::spawn(async move {
                // A client that refuses the certificate, or has none to
                // show, ends the handshake.
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |_request| {
                    count.fetch_add(1, Ordering::SeqCst);
                    async {
                        hyper::Response::builder()
                            .header("content-type", "application/json")
                            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                                b"{\"tls\":true}",
                            )))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (format!("https://{address}"), answered)
}

async fn once(dir: &std::path::Path, extra: &str, url: &str) -> (bool, String) {
    once_with(dir, extra, url, &[]).await
}

/// [`once`] with more environment variables.
async fn once_with(
    dir: &std::path::Path,
    extra: &str,
    url: &str,
    env: &[(&str, &std::path::Path)],
) -> (bool, String) {
    let path = dir.join("pollhook.toml");
    std::fs::write(
        &path,
        format!("[[endpoint]]\nname = \"device\"\nurl = \"{url}\"\nevery = \"1m\"\n{extra}\n"),
    )
    .unwrap();
    let output = binary()
        .args(["once", "-c", path.to_str().unwrap(), "device"])
        .envs(env.iter().copied())
        .output()
        .await
        .unwrap();
    (output.status.success(), text(&output.stderr))
}

#[tokio::test]
async fn a_private_ca_is_trusted_through_ca_file_and_only_then() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let (base, _) = https_server(&ca, None).await;
    let url = format!("{base}/data");
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();

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

    // The system's CAs are trusted too: here the file OpenSSL would read.
    let ca_file = dir.path().join("ca.pem");
    let (ok, stderr) = once_with(dir.path(), "", &url, &[("SSL_CERT_FILE", &ca_file)]).await;
    assert!(ok, "{stderr}");
}

/// A server that asks for a client certificate gets one from
/// `client_cert` and `client_key` (here inherited from `[defaults]`).
#[tokio::test]
async fn a_server_that_wants_a_client_certificate_gets_it_from_client_cert() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, clients) = (Ca::new(), Ca::new());
    let (base, answered) = https_server(&ca, Some(&clients)).await;
    let url = format!("{base}/data");
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
    let (certificate, key) = clients.sign();
    std::fs::write(dir.path().join("me.pem"), certificate.pem()).unwrap();
    std::fs::write(dir.path().join("me.key"), key.serialize_pem()).unwrap();

    let (ok, stderr) = once(dir.path(), "ca_file = \"ca.pem\"", &url).await;
    assert!(!ok, "no certificate, no answer: {stderr}");
    assert!(stderr.contains("device: poll failed"), "{stderr}");
    assert_eq!(answered.load(Ordering::SeqCst), 0);

    let path = dir.path().join("pollhook.toml");
    std::fs::write(
        &path,
        format!(
            "[defaults]\nclient_cert = \"me.pem\"\nclient_key = \"me.key\"\n\
             [[endpoint]]\nname = \"device\"\nurl = \"{url}\"\nevery = \"1m\"\nca_file = \"ca.pem\"\n"
        ),
    )
    .unwrap();
    let output = binary()
        .args(["once", "-c", path.to_str().unwrap(), "device"])
        .output()
        .await
        .unwrap();
    let stderr = text(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("\"tls\": true"), "{stderr}");
    assert_eq!(answered.load(Ordering::SeqCst), 1);
}

/// A receiver behind a private CA takes deliveries once the target trusts
/// it through its own `ca_file`.
#[tokio::test]
async fn a_target_behind_a_private_ca_is_reached_with_its_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let (base, answered) = https_server(&ca, None).await;
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
    let test = |extra: &str| {
        let path = dir.path().join("pollhook.toml");
        std::fs::write(
            &path,
            format!(
                "[[target]]\nname = \"home\"\nurl = \"{base}/hook\"\n{extra}\n\
                 [[endpoint]]\nname = \"e\"\nurl = \"http://127.0.0.1:9/\"\nevery = \"1m\"\n"
            ),
        )
        .unwrap();
        binary()
            .args(["test", "-c", path.to_str().unwrap(), "home"])
            .output()
    };
    let output = test("").await.unwrap();
    assert!(!output.status.success(), "{}", text(&output.stderr));
    assert_eq!(answered.load(Ordering::SeqCst), 0);

    let output = test("ca_file = \"ca.pem\"").await.unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(answered.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn tls_file_mistakes_are_config_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("not.pem"), "no certificate here").unwrap();
    let path = dir.path().join("pollhook.toml");
    std::fs::write(
        &path,
        "[defaults]\nevery = \"1m\"\nca_file = \"missing-ca.pem\"\n\
         [[endpoint]]\nname = \"a\"\nurl = \"https://127.0.0.1:9/\"\nclient_cert = \"not.pem\"\nclient_key = \"not.pem\"\n\
         [[endpoint]]\nname = \"b\"\nurl = \"https://127.0.0.1:9/\"\nclient_cert = \"not.pem\"\n\
         [[target]]\nname = \"t\"\nurl = \"https://127.0.0.1:9/\"\nca_file = \"not.pem\"\nproxy = \"socks4://127.0.0.1:1080\"\n",
    )
    .unwrap();
    let dir = dir.path().display();
    check_refuses(
        &path,
        [
        format!(
            "pollhook.toml:3:11: defaults: cannot read `ca_file` `{dir}/missing-ca.pem`: No such file"
        ),
        format!(
            "pollhook.toml:7:15: endpoint `a`: `client_cert` `{dir}/not.pem` and `client_key` `{dir}/not.pem` must hold a PEM certificate and its private key"
        ),
        "pollhook.toml:12:15: endpoint `b`: `client_cert` needs `client_key`".to_string(),
        format!("pollhook.toml:16:11: target `t`: `ca_file` `{dir}/not.pem` holds no PEM certificate"),
        "pollhook.toml:17:9: target `t`: invalid URL `socks4://127.0.0.1:1080`: scheme `socks4` is not `http`, `https`, `socks5`, or `socks5h`".to_string(),
        ],
    )
    .await;
}
