//! The target recipes in `docs/recipes/` (Telegram, Gotify, Matrix,
//! Pushover, Apprise) through the real daemon, each to a receiver on
//! 127.0.0.1 in place of its service: every request is what that service's
//! API takes. And Apprise against a fake of apprise-api that goes away and
//! comes back.

use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use pollhook::config::Config;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::support::{Api, Daemon, FAST_RETRY, Receiver, Reply, Webhook, eventually};

const RECIPES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/recipes");

/// A recipe as documented, sent to `receiver` instead of its service, with
/// each `${NAME}` as `test-NAME` (a test cannot set the environment).
fn recipe(name: &str, receiver: &Receiver) -> String {
    let text = std::fs::read_to_string(Path::new(RECIPES).join(format!("{name}.toml"))).unwrap();
    let base = regex::Regex::new(r#"url = "https?://[^/"]+"#).unwrap();
    let text = base.replace(&text, format!("url = \"http://{}", receiver.address));
    let secret = regex::Regex::new(r"\$\{([A-Z_]+)\}").unwrap();
    let text = secret.replace_all(&text, "test-$1");
    format!("{text}retry = {FAST_RETRY}\n")
}

/// Item mode over a releases list, with `recipes` as its targets; the
/// config sits in `docs/recipes/`, so `template_file`s are found there.
fn config(state_dir: &Path, recipes: &str, api: &Api) -> Config {
    let text = format!(
        "state_dir = \"{}\"\n{recipes}\n[[endpoint]]\nname = \"rel\"\nurl = \"{}\"\nevery = \"100ms\"\n\
         items = \".releases[]\"\nkey = \".tag\"\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        state_dir.display(),
        api.url()
    );
    Config::compile(&text, &Path::new(RECIPES).join("test.toml"))
        .unwrap_or_else(|error| panic!("{error}\n{text}"))
}

fn releases(tags: &[&str]) -> Reply {
    let releases: Vec<Value> = tags
        .iter()
        .map(|tag| {
            json!({"tag": tag, "html_url": format!("https://github.com/rust-lang/rust/releases/{tag}")})
        })
        .collect();
    Reply::json(&json!({ "releases": releases }).to_string())
}

fn header<'a>(hook: &'a Webhook, name: &str) -> &'a str {
    hook.headers
        .get(name)
        .map_or("", |value| value.to_str().unwrap())
}

const SUMMARY: &str = "rel: added 1.91.0 — https://github.com/rust-lang/rust/releases/1.91.0";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_recipe_sends_what_its_service_takes() {
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start(releases(&["1.90.0"])).await;
    let names = ["telegram", "gotify", "matrix", "pushover", "apprise"];
    let mut receivers = Vec::new();
    for _ in names {
        receivers.push(Receiver::start().await);
    }
    let recipes: String = names
        .iter()
        .zip(&receivers)
        .map(|(name, receiver)| recipe(name, receiver))
        .collect();
    let daemon = Daemon::start(config(dir.path(), &recipes, &api));
    api.wait_for_requests(1).await;
    api.set(releases(&["1.90.0", "1.91.0"]));
    eventually("every service has the new release", || {
        receivers
            .iter()
            .all(|receiver| !receiver.accepted().is_empty())
    })
    .await;
    daemon.stop().await;
    let [telegram, gotify, matrix, pushover, apprise] =
        [0, 1, 2, 3, 4].map(|index| receivers[index].accepted()[0].clone());

    // https://core.telegram.org/bots/api#sendmessage
    assert_eq!(
        (telegram.method.as_str(), telegram.path.as_str()),
        ("POST", "/bottest-TELEGRAM_BOT_TOKEN/sendMessage")
    );
    assert_eq!(header(&telegram, "content-type"), "application/json");
    assert_eq!(
        telegram.json(),
        json!({"chat_id": 123456789, "text": SUMMARY, "link_preview_options": {"is_disabled": true}})
    );

    // https://gotify.net/api-docs#/message/createMessage
    assert_eq!(
        (gotify.method.as_str(), gotify.path.as_str()),
        ("POST", "/message")
    );
    assert_eq!(header(&gotify, "x-gotify-key"), "test-GOTIFY_APP_TOKEN");
    assert_eq!(
        gotify.json(),
        json!({"title": "rel", "message": SUMMARY, "priority": 4})
    );

    // https://spec.matrix.org/latest/client-server-api/#put_matrixclientv3roomsroomidsendeventtypetxnid
    assert_eq!(matrix.method, "PUT");
    assert_eq!(
        matrix.path,
        format!(
            "/_matrix/client/v3/rooms/!abcdefgh:example.org/send/m.room.message/{}",
            matrix.id
        )
    );
    assert_eq!(
        header(&matrix, "authorization"),
        "Bearer test-MATRIX_ACCESS_TOKEN"
    );
    assert_eq!(matrix.json(), json!({"msgtype": "m.text", "body": SUMMARY}));

    // https://pushover.net/api#messages
    assert_eq!(
        (pushover.method.as_str(), pushover.path.as_str()),
        ("POST", "/1/messages.json")
    );
    assert_eq!(
        pushover.json(),
        json!({"token": "azGDORePK8gMaC0QOYAMyEEuzJnyUi", "user": "uQiRzpo4DXghDmr9QzzfQu27cmVRsG",
            "title": "rel", "message": SUMMARY,
            "url": "https://github.com/rust-lang/rust/releases/1.91.0", "priority": 0})
    );

    // https://github.com/caronc/apprise-api#persistent-storage-solution
    assert_eq!(
        (apprise.method.as_str(), apprise.path.as_str()),
        ("POST", "/notify/pollhook")
    );
    assert_eq!(
        apprise.json(),
        json!({"title": "rel: item added", "body": SUMMARY, "type": "info"})
    );
}

/// The fake apprise-api's state: what it accepted (each request's
/// `webhook-id` and body), and, while `failing`, the ids it answered 503.
#[derive(Clone, Default)]
struct Fake {
    notified: Arc<Mutex<Vec<(String, Value)>>>,
    failing: Arc<Mutex<Option<Vec<String>>>>,
}

impl Fake {
    fn notified(&self) -> Vec<(String, Value)> {
        self.notified.lock().unwrap().clone()
    }
}

/// apprise-api's `POST /notify/{key}` as far as pollhook uses it: a known
/// key, a `body`, a `type` it knows, else an error as apprise-api answers.
async fn notify(
    State(fake): State<Fake>,
    UrlPath(key): UrlPath<String>,
    headers: HeaderMap,
    Json(payload): Json<Value>,
) -> StatusCode {
    let known_type = ["info", "success", "warning", "failure"]
        .contains(&payload["type"].as_str().unwrap_or("info"));
    if key != "pollhook" {
        return StatusCode::NO_CONTENT;
    }
    if payload["body"].as_str().is_none_or(str::is_empty) || !known_type {
        return StatusCode::BAD_REQUEST;
    }
    let id = headers["webhook-id"].to_str().unwrap().to_string();
    if let Some(refused) = fake.failing.lock().unwrap().as_mut() {
        refused.push(id);
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    fake.notified.lock().unwrap().push((id, payload));
    StatusCode::OK
}

/// Serves the fake on `listener` until `stop` is cancelled.
fn apprise_api(listener: TcpListener, fake: Fake, stop: CancellationToken) {
    let router = axum::Router::new()
        .route("/notify/{key}", axum::routing::post(notify))
        .with_state(fake);
    tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
            .unwrap();
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apprise_api_that_goes_away_gets_every_notification_once_when_back() {
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start(releases(&["1.0"])).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let fake = Fake::default();
    let stop = CancellationToken::new();
    apprise_api(listener, fake.clone(), stop.clone());
    let target = format!(
        "[[target]]\nname = \"apprise\"\nurl = \"http://{address}/notify/pollhook\"\n\
         format = \"apprise\"\nretry = {FAST_RETRY}\n"
    );
    let daemon = Daemon::start(config(dir.path(), &target, &api));
    api.wait_for_requests(1).await;
    api.set(releases(&["1.0", "2.0"]));
    eventually("the first notification", || fake.notified().len() == 1).await;

    // Failing, then down: the next two wait in the outbox.
    *fake.failing.lock().unwrap() = Some(Vec::new());
    api.set(releases(&["1.0", "2.0", "3.0"]));
    eventually("a notification refused", || {
        fake.failing
            .lock()
            .unwrap()
            .as_ref()
            .is_some_and(|ids| !ids.is_empty())
    })
    .await;
    stop.cancel();
    eventually("apprise-api is down", || {
        std::net::TcpStream::connect(address).is_err()
    })
    .await;
    let refused = fake.failing.lock().unwrap().take().unwrap();
    api.set(releases(&["1.0", "2.0", "3.0", "4.0"]));
    api.wait_for_requests(2).await;
    apprise_api(
        TcpListener::bind(address).await.unwrap(),
        fake.clone(),
        CancellationToken::new(),
    );
    eventually("every notification", || fake.notified().len() == 3).await;
    daemon.stop().await;

    let mut notified = fake.notified();
    // In parallel: the two that waited may come in either order.
    notified.sort_by(|a, b| a.1["body"].as_str().cmp(&b.1["body"].as_str()));
    let bodies: Vec<&str> = notified
        .iter()
        .map(|(_, payload)| payload["body"].as_str().unwrap())
        .collect();
    assert_eq!(
        bodies,
        [
            "rel: added 2.0 — https://github.com/rust-lang/rust/releases/2.0",
            "rel: added 3.0 — https://github.com/rust-lang/rust/releases/3.0",
            "rel: added 4.0 — https://github.com/rust-lang/rust/releases/4.0",
        ]
    );
    let ids: std::collections::HashSet<&str> = notified.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids.len(), 3);
    // The refused one came back under its id.
    assert!(refused.iter().all(|id| *id == notified[1].0), "{refused:?}");
}
