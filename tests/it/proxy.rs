//! Polls through a forwarding proxy: `HTTP_PROXY` from the environment,
//! or an endpoint's own `proxy` (with credentials from `${...}`).

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::http::{HeaderMap, Uri};

use crate::cli::{binary, text};
use crate::support::serve;

/// A forwarding proxy that answers every request itself, and logs the
/// request target and its `Proxy-Authorization`.
async fn proxy() -> (String, Arc<Mutex<Vec<(String, Option<String>)>>>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let seen = log.clone();
    let router = Router::new().fallback(move |uri: Uri, headers: HeaderMap| {
        let seen = seen.clone();
        async move {
            let auth = headers
                .get("proxy-authorization")
                .map(|value| value.to_str().unwrap().to_string());
            seen.lock().unwrap().push((uri.to_string(), auth));
            (
                [("content-type", "application/json")],
                "{\"via\":\"proxy\"}",
            )
        }
    });
    (format!("http://{}", serve(router).await), log)
}

fn write_config(dir: &std::path::Path, extra: &str) -> std::path::PathBuf {
    let path = dir.join("pollhook.toml");
    std::fs::write(
        &path,
        format!(
            "[[endpoint]]\nname = \"data\"\nurl = \"http://api.pollhook-test.invalid/data\"\nevery = \"1m\"\n{extra}\n"
        ),
    )
    .unwrap();
    path
}

#[tokio::test]
async fn an_endpoint_polls_through_its_own_proxy_with_its_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let (address, log) = proxy().await;
    let with_user = address.replace("http://", "http://me:${POLLHOOK_TEST_PROXY_PW}@");
    let config = write_config(dir.path(), &format!("proxy = \"{with_user}\""));
    let output = binary()
        .args(["once", "-c", config.to_str().unwrap(), "data"])
        .env("POLLHOOK_TEST_PROXY_PW", "pw")
        .env_remove("HTTP_PROXY")
        .env_remove("http_proxy")
        .output()
        .await
        .unwrap();
    let stderr = text(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("\"via\": \"proxy\""), "{stderr}");
    // base64("me:pw")
    assert_eq!(
        *log.lock().unwrap(),
        [(
            "http://api.pollhook-test.invalid/data".to_string(),
            Some("Basic bWU6cHc=".to_string())
        )]
    );
}

#[tokio::test]
async fn http_proxy_from_the_environment_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let (address, log) = proxy().await;
    let config = write_config(dir.path(), "");
    let output = binary()
        .args(["once", "-c", config.to_str().unwrap(), "data"])
        .env("HTTP_PROXY", &address)
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(log.lock().unwrap().len(), 1);
    assert_eq!(
        log.lock().unwrap()[0].0,
        "http://api.pollhook-test.invalid/data"
    );
}
