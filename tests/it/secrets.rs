//! Secrets stay with the endpoint they belong to: redirects to another
//! origin get none of its headers, and URL parts from `${...}` are shown
//! masked in events, the admin API, `status` and logs.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::Uri;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use pollhook::config::Config;
use pollhook::fetch::{self, FetchError, Fetched};

use crate::support::{Api, Daemon, Receiver, Reply, eventually, serve};

/// A request as a server saw it.
#[derive(Debug, Clone)]
struct Seen {
    uri: String,
    headers: HeaderMap,
}

/// A server that records every request and answers `/data` with
/// `{"ok":true}`, `/same` with a redirect to `/data`, and `/away` with a
/// redirect to `location`.
#[derive(Clone)]
struct Recorder {
    address: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

type RecorderState = (Arc<Mutex<Vec<Seen>>>, Arc<Mutex<String>>);

impl Recorder {
    async fn start(location: &str) -> Recorder {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let location = Arc::new(Mutex::new(location.to_string()));
        let router = Router::new()
            .fallback(record)
            .with_state((seen.clone(), location));
        Recorder {
            address: serve(router).await,
            seen,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn record(
    State((seen, location)): State<RecorderState>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    seen.lock().unwrap().push(Seen {
        uri: uri.to_string(),
        headers,
    });
    let redirect = |to: String| (StatusCode::FOUND, [(header::LOCATION, to)]).into_response();
    match uri.path() {
        "/same" => redirect("/data?moved=1".to_string()),
        "/away" => redirect(location.lock().unwrap().clone()),
        _ => (
            [(header::CONTENT_TYPE, "application/json")],
            r#"{"ok":true}"#,
        )
            .into_response(),
    }
}

fn endpoint_config(url: &str, extra: &str) -> Config {
    // SAFETY: set once to the same value by every test that reads it.
    unsafe { std::env::set_var("POLLHOOK_TEST_REDIRECT_KEY", "PHSECRET-KEY-42") };
    let text = format!(
        r#"
[[endpoint]]
name = "api"
url = "{url}?api_key=${{POLLHOOK_TEST_REDIRECT_KEY}}"
every = "1h"
headers = {{ X-Api-Key = "${{POLLHOOK_TEST_REDIRECT_KEY}}", X-Custom = "literal-secret", Authorization = "Bearer PHSECRET-TOKEN" }}
{extra}
"#
    );
    Config::compile(&text, std::path::Path::new("test.toml")).unwrap()
}

fn leaks(seen: &Seen) -> Vec<String> {
    let mut found = Vec::new();
    for (name, value) in &seen.headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        if value.contains("PHSECRET") || value.contains("literal-secret") {
            found.push(format!("{name}: {value}"));
        }
        if name == header::REFERER {
            found.push(format!("referer: {value}"));
        }
    }
    if seen.uri.contains("PHSECRET") {
        found.push(format!("uri: {}", seen.uri));
    }
    found
}

/// One request of `endpoint`, as a poll makes it now.
async fn fetch_once(
    client: &reqwest::Client,
    tokens: &pollhook::oauth::Tokens,
    endpoint: &pollhook::config::Endpoint,
) -> Result<Fetched, FetchError> {
    let vars = pollhook::config::Vars {
        now_ms: pollhook::clock::now_ms(),
        last_success_ms: None,
        cursor: None,
    };
    let request = pollhook::request::render(endpoint, &vars).unwrap();
    fetch::fetch(client, tokens, endpoint, &request, None).await
}

#[tokio::test]
async fn a_redirect_to_another_origin_is_refused_and_gets_nothing() {
    let other = Recorder::start("").await;
    let api = Recorder::start(&other.url("/landing")).await;
    let config = endpoint_config(&api.url("/away"), "");
    let client = fetch::client().unwrap();
    let state = tempfile::tempdir().unwrap();
    let tokens = crate::support::tokens(state.path());

    let error = fetch_once(&client, &tokens, &config.endpoints[0])
        .await
        .unwrap_err();
    assert!(
        matches!(&error, FetchError::Redirect { to, .. } if *to == format!("`http://{}`", other.address)),
        "{error:?}"
    );
    let message = pollhook::error_chain(&error);
    assert!(message.contains("follow_redirects"), "{message}");
    assert!(!message.contains("PHSECRET"), "{message}");
    assert!(other.seen().is_empty(), "{:#?}", other.seen());
    // The origin itself got the headers it was meant to get.
    let first = &api.seen()[0];
    assert_eq!(first.headers["x-api-key"], "PHSECRET-KEY-42");
}

#[tokio::test]
async fn with_follow_redirects_any_another_origin_gets_none_of_the_endpoints_headers() {
    let other = Recorder::start("").await;
    let api = Recorder::start(&other.url("/landing")).await;
    let config = endpoint_config(&api.url("/away"), "follow_redirects = \"any\"");
    let client = fetch::client().unwrap();
    let state = tempfile::tempdir().unwrap();
    let tokens = crate::support::tokens(state.path());

    let fetched = fetch_once(&client, &tokens, &config.endpoints[0])
        .await
        .unwrap();
    assert!(matches!(fetched, Fetched::Body { .. }), "{fetched:?}");
    let seen = other.seen();
    assert_eq!(seen.len(), 1, "{seen:#?}");
    assert_eq!(seen[0].uri, "/landing");
    assert_eq!(leaks(&seen[0]), Vec::<String>::new());
    for name in ["x-api-key", "x-custom", "authorization", "referer"] {
        assert!(!seen[0].headers.contains_key(name), "{name}: {seen:#?}");
    }
}

#[tokio::test]
async fn a_redirect_within_the_origin_keeps_the_headers() {
    let api = Recorder::start("").await;
    let config = endpoint_config(&api.url("/same"), "");
    let client = fetch::client().unwrap();
    let state = tempfile::tempdir().unwrap();
    let tokens = crate::support::tokens(state.path());

    let fetched = fetch_once(&client, &tokens, &config.endpoints[0])
        .await
        .unwrap();
    assert!(matches!(fetched, Fetched::Body { .. }), "{fetched:?}");
    let seen = api.seen();
    assert_eq!(seen.len(), 2, "{seen:#?}");
    assert_eq!(seen[1].uri, "/data?moved=1");
    assert_eq!(seen[1].headers["x-api-key"], "PHSECRET-KEY-42");
    assert_eq!(seen[1].headers["x-custom"], "literal-secret");
    assert!(!seen[1].headers.contains_key(header::REFERER));
}

#[tokio::test]
async fn follow_redirects_none_and_redirect_loops_are_failed_polls() {
    let api = Recorder::start("/away").await;
    let client = fetch::client().unwrap();
    let state = tempfile::tempdir().unwrap();
    let tokens = crate::support::tokens(state.path());
    let none = endpoint_config(&api.url("/same"), "follow_redirects = \"none\"");
    let error = fetch_once(&client, &tokens, &none.endpoints[0])
        .await
        .unwrap_err();
    assert!(matches!(error, FetchError::Redirect { .. }), "{error:?}");

    let looping = endpoint_config(&api.url("/away"), "");
    let error = fetch_once(&client, &tokens, &looping.endpoints[0])
        .await
        .unwrap_err();
    assert!(
        pollhook::error_chain(&error).contains("more than 10 redirects"),
        "{error}"
    );
    assert_eq!(api.seen().len(), 1 + 11);

    let bad = Recorder::start("gopher://elsewhere/").await;
    let config = endpoint_config(&bad.url("/away"), "follow_redirects = \"any\"");
    let error = fetch_once(&client, &tokens, &config.endpoints[0])
        .await
        .unwrap_err();
    assert!(matches!(error, FetchError::BadRedirect(_)), "{error:?}");
}

/// `url = "...?appid=${...}"`: events, the admin API and `Debug` show the
/// URL with `***` where the secret went; the request carries the secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_in_the_url_is_masked_wherever_the_url_is_shown() {
    // SAFETY: unique to this test.
    unsafe { std::env::set_var("POLLHOOK_TEST_APPID", "SUPERSECRETKEY") };
    let state = tempfile::tempdir().unwrap();
    let api = Api::start(Reply::json(r#"{"v":1}"#)).await;
    let receiver = Receiver::start().await;
    let text = format!(
        r#"state_dir = "{}"
[admin]
listen = "127.0.0.1:0"
[[target]]
name = "receiver"
url = "{}"
[[endpoint]]
name = "weather"
url = "{}?appid=${{POLLHOOK_TEST_APPID}}&units=metric"
every = "100ms"
emit_initial = true
"#,
        state.path().display(),
        receiver.url(),
        api.url()
    );
    let config = Config::compile(&text, std::path::Path::new("test.toml")).unwrap();
    let shown = format!("{}?appid=***&units=metric", api.url());
    assert!(!format!("{config:?}").contains("SUPERSECRETKEY"));
    assert!(format!("{:?}", config.endpoints[0]).contains(&shown));

    let daemon = Daemon::start(config);
    eventually("the initial event is delivered", || {
        receiver.accepted().len() == 1
    })
    .await;
    let event = receiver.accepted()[0].json();
    assert_eq!(event["data"]["url"], shown.as_str(), "{event}");
    assert!(!event.to_string().contains("SUPERSECRETKEY"));

    let address = std::fs::read_to_string(state.path().join("admin.addr")).unwrap();
    let endpoints = reqwest::get(format!("http://{}/api/v1/endpoints", address.trim()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(endpoints.contains(&shown), "{endpoints}");
    assert!(!endpoints.contains("SUPERSECRETKEY"), "{endpoints}");
    daemon.stop().await;
}

/// The daemon's environment is where `${NAME}` secrets come from: a jq
/// filter sees none of it (`$ENV` and `env` are `{}`), through the real
/// binary with a token in its environment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_sees_none_of_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start(Reply::json(r#"{"v":1}"#)).await;
    let receiver = Receiver::start().await;
    let config = dir.path().join("config.toml");
    let text = format!(
        r#"state_dir = "{}"
[admin]
listen = "127.0.0.1:0"
[[target]]
name = "receiver"
url = "{}"
[[endpoint]]
name = "data"
url = "{}"
headers = {{ Authorization = "Bearer ${{POLLHOOK_TEST_FILTER_TOKEN}}" }}
select = '{{v, ENV: $ENV, env: env, token: $ENV.POLLHOOK_TEST_FILTER_TOKEN}}'
every = "1h"
emit_initial = true
"#,
        dir.path().join("state").display(),
        receiver.url(),
        api.url()
    );
    std::fs::write(&config, text).unwrap();
    let output = crate::cli::binary()
        .env("POLLHOOK_TEST_FILTER_TOKEN", "FILTERSECRET")
        .args(["once", "-c", config.to_str().unwrap()])
        .output();
    let output = tokio::time::timeout(std::time::Duration::from_secs(30), output)
        .await
        .expect("the command finished")
        .unwrap();
    let (stdout, stderr) = (
        crate::cli::text(&output.stdout),
        crate::cli::text(&output.stderr),
    );
    assert!(output.status.success(), "{stderr}");
    assert_eq!(
        api.requests(),
        1,
        "the header was expanded and the request made"
    );
    assert!(!stdout.contains("FILTERSECRET"), "{stdout}");
    assert!(!stderr.contains("FILTERSECRET"), "{stderr}");
    let event: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let document = serde_json::json!({"v": 1, "ENV": {}, "env": {}, "token": null});
    assert!(event.to_string().contains(&document.to_string()), "{event}");
}
