//! `auth` on endpoints and targets: Basic and bearer, their secrets read
//! again at every request.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::http::{HeaderMap, StatusCode};

use crate::cli::{binary, check_refuses, text};
use crate::support::{Daemon, Receiver, config, eventually, serve};

/// An API that answers 200 to requests whose `Authorization` is the
/// current one, 401 to the rest, and logs `(authorization, status)`.
#[derive(Clone, Default)]
struct Guarded {
    accept: Arc<Mutex<String>>,
    log: Arc<Mutex<Vec<(String, u16)>>>,
}

impl Guarded {
    async fn start(accept: &str) -> (Guarded, String) {
        let guarded = Guarded::default();
        *guarded.accept.lock().unwrap() = accept.to_string();
        let state = guarded.clone();
        let router = Router::new().route(
            "/data",
            axum::routing::get(move |headers: HeaderMap| {
                let state = state.clone();
                async move {
                    let sent = headers
                        .get("authorization")
                        .map(|value| value.to_str().unwrap().to_string())
                        .unwrap_or_default();
                    let status = match sent == *state.accept.lock().unwrap() {
                        true => StatusCode::OK,
                        false => StatusCode::UNAUTHORIZED,
                    };
                    state.log.lock().unwrap().push((sent, status.as_u16()));
                    (status, [("content-type", "application/json")], "{\"a\":1}")
                }
            }),
        );
        let address = serve(router).await;
        (guarded, format!("http://{address}/data"))
    }

    fn log(&self) -> Vec<(String, u16)> {
        self.log.lock().unwrap().clone()
    }
}

#[tokio::test]
async fn basic_auth_sends_the_username_and_the_password_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pw"), "s3cret\n").unwrap();
    // base64("me:s3cret")
    let (api, url) = Guarded::start("Basic bWU6czNjcmV0").await;
    let path = dir.path().join("pollhook.toml");
    std::fs::write(
        &path,
        format!(
            "[[endpoint]]\nname = \"data\"\nurl = \"{url}\"\nevery = \"1m\"\n\
             auth = {{ basic = {{ username = \"me\", password = \"${{file:{}}}\" }} }}\n",
            dir.path().join("pw").display()
        ),
    )
    .unwrap();
    let output = binary()
        .args(["once", "-c", path.to_str().unwrap(), "data"])
        .output()
        .await
        .unwrap();
    let stderr = text(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("data: baseline"), "{stderr}");
    assert_eq!(api.log(), [("Basic bWU6czNjcmV0".to_string(), 200)]);
}

/// A rotated token file is read at the next poll: no restart, no reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bearer_token_file_that_is_rotated_is_read_again() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "first\n").unwrap();
    let (api, url) = Guarded::start("Bearer first").await;
    let daemon = Daemon::start(config(
        dir.path(),
        &format!(
            "[[endpoint]]\nname = \"data\"\nurl = \"{url}\"\nevery = \"100ms\"\n\
             auth = {{ bearer = \"${{file:{}}}\" }}\n",
            token.display()
        ),
    ));
    eventually("a poll with the first token", || {
        api.log().contains(&("Bearer first".into(), 200))
    })
    .await;
    std::fs::write(&token, "second\n").unwrap();
    *api.accept.lock().unwrap() = "Bearer second".into();
    eventually("a poll with the rotated token", || {
        api.log().contains(&("Bearer second".into(), 200))
    })
    .await;
    daemon.stop().await;
    assert!(
        api.log()
            .iter()
            .all(|(sent, _)| sent.starts_with("Bearer ")),
        "{:?}",
        api.log()
    );
}

/// A receiver behind a token gets it with every delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_sends_its_auth_with_every_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let (_, url) = Guarded::start("").await;
    let receiver = Receiver::start().await;
    let daemon = Daemon::start(config(
        dir.path(),
        &format!(
            "[[target]]\nname = \"ha\"\nurl = \"{}\"\nauth = {{ bearer = \"ha-token\" }}\n\
             [[endpoint]]\nname = \"data\"\nurl = \"{url}\"\nevery = \"100ms\"\nemit_initial = true\n",
            receiver.url()
        ),
    ));
    eventually("the initial event arrives", || {
        !receiver.accepted().is_empty()
    })
    .await;
    daemon.stop().await;
    let hook = &receiver.accepted()[0];
    assert_eq!(hook.headers["authorization"], "Bearer ha-token");
}

#[tokio::test]
async fn auth_mistakes_are_config_errors_that_show_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pollhook.toml");
    std::fs::write(
        &path,
        "[[endpoint]]\nname = \"a\"\nurl = \"http://127.0.0.1:9/\"\nevery = \"1m\"\n\
         auth = { digest = \"x\" }\n\
         [[endpoint]]\nname = \"b\"\nurl = \"http://127.0.0.1:9/\"\nevery = \"1m\"\n\
         auth = { bearer = \"${file:/nonexistent/pollhook-token}\" }\n\
         [[endpoint]]\nname = \"c\"\nurl = \"http://127.0.0.1:9/\"\nevery = \"1m\"\n\
         auth = { basic = { username = \"me\", pasword = \"hunter2\" } }\n\
         [[endpoint]]\nname = \"d\"\nurl = \"http://127.0.0.1:9/\"\nevery = \"1m\"\n\
         headers = { Authorization = \"Bearer x\" }\nauth = { bearer = \"y\" }\n",
    )
    .unwrap();
    let stderr = check_refuses(
        &path,
        [
        "pollhook.toml:5:10: endpoint `a`: unknown variant `digest`",
        "pollhook.toml:10:8: endpoint `b`: cannot read secret file `/nonexistent/pollhook-token`",
        "pollhook.toml:15:",
        "pollhook.toml:20:29: endpoint `d`: set `auth` or an `Authorization` header, not both",
        ],
    )
    .await;
    assert!(!stderr.contains("hunter2"), "{stderr}");
}
