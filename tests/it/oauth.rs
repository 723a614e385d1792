//! `auth = { oauth2 = ... }` against a token server of the test's own: it
//! issues tokens that expire, counts its requests, rotates refresh tokens;
//! the API beside it refuses stale tokens with 401.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::cli::{binary, check_refuses, text};
use crate::support::{Daemon, config, eventually, serve};

/// How the token server answers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Answer {
    Tokens,
    /// 401 with an OAuth2 error: `invalid_client`.
    BadClient,
    /// 200 with JSON that is no token response (and holds a secret).
    Garbage,
}

#[derive(Default)]
struct State {
    /// Token requests: the form of each.
    requests: Vec<HashMap<String, String>>,
    /// Issued access token → when it expires.
    issued: HashMap<String, tokio::time::Instant>,
    /// Tokens numbered below this are refused by the API (revoked).
    revoked_below: usize,
    /// The refresh token the server accepts now.
    refresh: String,
    /// API requests: the token sent and the status answered.
    api: Vec<(String, u16)>,
}

/// A token server (`/token`) and an API (`/data`) that accepts only the
/// tokens it issued, until they expire or are revoked.
#[derive(Clone)]
struct Server {
    state: Arc<Mutex<State>>,
    lifetime: u64,
    delay: Duration,
    answer: Answer,
    base: String,
}

impl Server {
    async fn start(lifetime: u64, delay: Duration, answer: Answer) -> Server {
        let mut server = Server {
            state: Arc::new(Mutex::new(State {
                refresh: "r0".into(),
                ..State::default()
            })),
            lifetime,
            delay,
            answer,
            base: String::new(),
        };
        let (token, api) = (server.clone(), server.clone());
        let router = Router::new()
            .route(
                "/token",
                axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
                    let server = token.clone();
                    let form = url::form_urlencoded::parse(&body).into_owned().collect();
                    async move { server.token(headers, form).await }
                }),
            )
            .route(
                "/data",
                axum::routing::get(move |headers: HeaderMap| {
                    let server = api.clone();
                    async move { server.data(headers) }
                }),
            );
        server.base = format!("http://{}", serve(router).await);
        server
    }

    async fn token(&self, headers: HeaderMap, mut form: HashMap<String, String>) -> Response {
        tokio::time::sleep(self.delay).await;
        // The client secret comes in Basic auth, as RFC 6749 prefers.
        if let Some(basic) = headers.get("authorization") {
            form.insert("basic".into(), basic.to_str().unwrap().into());
        }
        let mut state = self.state.lock().unwrap();
        state.requests.push(form.clone());
        let json = |status: StatusCode, body: serde_json::Value| {
            (status, axum::Json(body)).into_response()
        };
        match self.answer {
            Answer::BadClient => {
                return json(
                    StatusCode::UNAUTHORIZED,
                    serde_json::json!({"error": "invalid_client", "error_description": "unknown client or wrong secret"}),
                );
            }
            Answer::Garbage => {
                return json(
                    StatusCode::OK,
                    serde_json::json!({"access_token": ["PHSECRET-ACCESS"], "token_type": "bearer"}),
                );
            }
            Answer::Tokens => {}
        }
        let mut body = serde_json::json!({"token_type": "bearer", "expires_in": self.lifetime});
        if form.get("grant_type").map(String::as_str) == Some("refresh_token") {
            if form.get("refresh_token") != Some(&state.refresh) {
                return json(
                    StatusCode::BAD_REQUEST,
                    serde_json::json!({"error": "invalid_grant", "error_description": "refresh token unknown or used"}),
                );
            }
            // Rotation: the one just used is forgotten.
            state.refresh = format!("r{}", state.requests.len());
            body["refresh_token"] = state.refresh.clone().into();
        }
        let access = format!("t{}", state.requests.len());
        let expires = tokio::time::Instant::now() + Duration::from_secs(self.lifetime);
        state.issued.insert(access.clone(), expires);
        body["access_token"] = access.into();
        json(StatusCode::OK, body)
    }

    fn data(&self, headers: HeaderMap) -> Response {
        let sent = headers
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .unwrap_or_default()
            .to_string();
        let mut state = self.state.lock().unwrap();
        let number: usize = sent.trim_start_matches('t').parse().unwrap_or(0);
        let fresh = state
            .issued
            .get(&sent)
            .is_some_and(|expires| tokio::time::Instant::now() < *expires);
        let status = match fresh && number >= state.revoked_below {
            true => StatusCode::OK,
            false => StatusCode::UNAUTHORIZED,
        };
        state.api.push((sent, status.as_u16()));
        (
            status,
            [("content-type", "application/json")],
            "{\"ok\":true}",
        )
            .into_response()
    }

    fn token_url(&self) -> String {
        format!("{}/token", self.base)
    }

    fn url(&self) -> String {
        format!("{}/data", self.base)
    }

    fn token_requests(&self) -> usize {
        self.state.lock().unwrap().requests.len()
    }

    fn requests(&self) -> Vec<HashMap<String, String>> {
        self.state.lock().unwrap().requests.clone()
    }

    fn api(&self) -> Vec<(String, u16)> {
        self.state.lock().unwrap().api.clone()
    }

    fn revoke_below(&self, number: usize) {
        self.state.lock().unwrap().revoked_below = number;
    }
}

/// A client-credentials `auth` for `server`.
fn client_credentials(server: &Server) -> String {
    format!(
        "auth = {{ oauth2 = {{ token_url = \"{}\", client_id = \"pollhook\", client_secret = \"PHSECRET-CLIENT\", scopes = [\"read\", \"list\"], params = {{ audience = \"api\" }} }} }}",
        server.token_url()
    )
}

/// `pollhook once` on one endpoint `data` with `auth`.
async fn once(dir: &std::path::Path, url: &str, auth: &str) -> (bool, String) {
    let path = dir.join("pollhook.toml");
    std::fs::write(
        &path,
        format!(
            "state_dir = \"{}\"\n[[endpoint]]\nname = \"data\"\nurl = \"{url}\"\nevery = \"1m\"\n{auth}\n",
            dir.join("state").display()
        ),
    )
    .unwrap();
    let output = binary()
        .args(["once", "-c", path.to_str().unwrap(), "data"])
        .output()
        .await
        .unwrap();
    (output.status.success(), text(&output.stderr))
}

/// Three endpoints polling at once while the token server is slow make
/// one token request; the token is renewed before it expires, so the API
/// never sees a stale one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_share_one_token_and_renew_it_before_it_expires() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(2, Duration::from_millis(300), Answer::Tokens).await;
    let auth = client_credentials(&server);
    let endpoints: String = (0..3)
        .map(|index| {
            format!(
                "[[endpoint]]\nname = \"e{index}\"\nurl = \"{}?e={index}\"\nevery = \"100ms\"\n{auth}\n",
                server.url()
            )
        })
        .collect();
    let daemon = Daemon::start(config(dir.path(), &endpoints));
    eventually("every endpoint polled with a token", || {
        server.api().len() >= 3
    })
    .await;
    assert_eq!(server.token_requests(), 1, "{:?}", server.api());
    let form = &server.requests()[0];
    assert_eq!(form["grant_type"], "client_credentials");
    assert_eq!(form["scope"], "read list");
    assert_eq!(form["audience"], "api");
    // base64("pollhook:PHSECRET-CLIENT")
    assert_eq!(form["basic"], "Basic cG9sbGhvb2s6UEhTRUNSRVQtQ0xJRU5U");

    eventually("the token renewed twice", || server.token_requests() >= 3).await;
    daemon.stop().await;
    let api = server.api();
    assert!(
        api.iter().all(|(_, status)| *status == 200),
        "a stale token was sent: {api:?}"
    );
    let tokens: std::collections::BTreeSet<&str> =
        api.iter().map(|(token, _)| token.as_str()).collect();
    assert!(tokens.len() >= 2, "{api:?}");
}

/// A token the API refuses is renewed once and the request made again
/// with the new one; a second 401 fails the poll, without a loop.
#[tokio::test]
async fn a_401_renews_the_token_once_and_retries_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(3600, Duration::ZERO, Answer::Tokens).await;
    // The first token issued (`t1`) is revoked before it is used.
    server.revoke_below(2);
    let (ok, stderr) = once(dir.path(), &server.url(), &client_credentials(&server)).await;
    assert!(ok, "{stderr}");
    assert_eq!(
        server.api(),
        [("t1".to_string(), 401), ("t2".to_string(), 200)]
    );
    assert_eq!(server.token_requests(), 2);

    let refused = tempfile::tempdir().unwrap();
    server.revoke_below(usize::MAX);
    let (ok, stderr) = once(refused.path(), &server.url(), &client_credentials(&server)).await;
    assert!(!ok, "{stderr}");
    assert!(stderr.contains("HTTP status 401"), "{stderr}");
    assert_eq!(server.api().len(), 4, "{:?}", server.api());
    assert_eq!(server.token_requests(), 4);
}

/// The token server rotates the refresh token at each use and forgets the
/// old one: the new one is kept in the store, so the daemon started again
/// uses it; a refresh token configured anew takes over from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_refresh_token_is_used_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(3600, Duration::ZERO, Answer::Tokens).await;
    let file = dir.path().join("refresh");
    std::fs::write(&file, "r0\n").unwrap();
    let body = format!(
        "[[endpoint]]\nname = \"data\"\nurl = \"{}\"\nevery = \"100ms\"\n\
         auth = {{ oauth2 = {{ token_url = \"{}\", client_id = \"pollhook\", refresh_token = \"${{file:{}}}\" }} }}\n",
        server.url(),
        server.token_url(),
        file.display()
    );
    let used = || -> Vec<String> {
        server
            .requests()
            .iter()
            .map(|form| form["refresh_token"].clone())
            .collect()
    };
    let polled = |count: usize| {
        let server = server.clone();
        move || {
            server
                .api()
                .iter()
                .filter(|(_, status)| *status == 200)
                .count()
                >= count
        }
    };
    for (run, polls) in [(1, 1), (2, 2)] {
        let daemon = Daemon::start(config(dir.path(), &body));
        eventually(&format!("run {run} polled"), polled(polls)).await;
        daemon.stop().await;
    }
    assert_eq!(used(), ["r0", "r1"]);
    assert!(
        server
            .requests()
            .iter()
            .all(|form| form["grant_type"] == "refresh_token")
    );

    // An operator configures a new refresh token: it wins over the stored one.
    server.state.lock().unwrap().refresh = "fresh".into();
    std::fs::write(&file, "fresh\n").unwrap();
    let daemon = Daemon::start(config(dir.path(), &body));
    eventually("the run with the new token polled", polled(3)).await;
    daemon.stop().await;
    assert_eq!(used(), ["r0", "r1", "fresh"]);
    assert!(
        server.api().iter().all(|(_, status)| *status == 200),
        "{:?}",
        server.api()
    );
}

/// A token server that refuses, talks nonsense or is not there fails the
/// poll with what it said, and no secret shows.
#[tokio::test]
async fn a_failing_token_server_is_a_failed_poll_that_shows_no_secret() {
    let refusing = Server::start(3600, Duration::ZERO, Answer::BadClient).await;
    let garbage = Server::start(3600, Duration::ZERO, Answer::Garbage).await;
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/token", listener.local_addr().unwrap());
        drop(listener);
        url
    };
    let cases = [
        (
            refusing.url(),
            refusing.token_url(),
            "invalid_client: unknown client or wrong secret",
        ),
        (
            garbage.url(),
            garbage.token_url(),
            "not a token response (at `access_token`)",
        ),
        (refusing.url(), closed, "Connection refused"),
    ];
    for (url, token_url, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        let auth = format!(
            "auth = {{ oauth2 = {{ token_url = \"{token_url}\", client_id = \"pollhook\", client_secret = \"PHSECRET-CLIENT\" }} }}"
        );
        let (ok, stderr) = once(dir.path(), &url, &auth).await;
        assert!(!ok, "{stderr}");
        assert!(
            stderr.contains(&format!("cannot get an OAuth2 token from {token_url}: ")),
            "{stderr}"
        );
        assert!(stderr.contains(expected), "{expected}: {stderr}");
        assert!(!stderr.contains("PHSECRET"), "{stderr}");
        assert!(!stderr.contains("panic"), "{stderr}");
    }
    // Nothing reached the API without a token.
    assert!(refusing.api().is_empty());
    assert!(garbage.api().is_empty());
}

#[tokio::test]
async fn oauth2_mistakes_are_config_errors_at_their_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pollhook.toml");
    let endpoint = |name: &str, auth: &str| {
        format!(
            "[[endpoint]]\nname = \"{name}\"\nurl = \"http://127.0.0.1:9/\"\nevery = \"1m\"\nauth = {{ oauth2 = {{ {auth} }} }}\n"
        )
    };
    let written = [
        endpoint("a", "token_url = \"http://127.0.0.1:9/t\", client_id = \"c\", client_secrt = \"PHSECRET\""),
        endpoint("b", "client_id = \"c\", client_secret = \"PHSECRET\""),
        endpoint("c", "token_url = \"http://127.0.0.1:9/t\", client_id = \"c\""),
        endpoint("d", "token_url = \"ftp://127.0.0.1:9/t\", client_id = \"c\", client_secret = \"PHSECRET\""),
        endpoint("e", "token_url = \"http://127.0.0.1:9/t\", client_id = \"c\", client_secret = \"PHSECRET\", params = { grant_type = \"password\" }"),
        "[[target]]\nname = \"t\"\nurl = \"http://127.0.0.1:9/\"\nauth = { oauth2 = { token_url = \"http://127.0.0.1:9/t\", client_id = \"c\", client_secret = \"PHSECRET\" } }\n".to_string(),
    ]
    .concat();
    std::fs::write(&path, written).unwrap();
    let stderr = check_refuses(
        &path,
        [
        "pollhook.toml:5:74: endpoint `a`: unknown field `client_secrt`",
        "pollhook.toml:10:19: endpoint `b`: missing field `token_url`",
        "pollhook.toml:15:8: endpoint `c`: `oauth2` needs `client_secret` (the client-credentials grant) or `refresh_token` (the refresh-token grant)",
        "pollhook.toml:20:33: endpoint `d`: invalid URL `ftp://127.0.0.1:9/t`: scheme `ftp` is not `http` or `https`",
        "pollhook.toml:25:8: endpoint `e`: `oauth2.params` may not set `grant_type`",
        "pollhook.toml:29:8: target `t`: `oauth2` is for endpoints: a target takes `basic` or `bearer`",
        ],
    )
    .await;
    assert!(!stderr.contains("PHSECRET"), "{stderr}");
}
