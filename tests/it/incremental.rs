//! Templated requests (`url`, `query`, `headers`, `body` rendered at each
//! poll) and incremental endpoints: a `?since=` event API whose every new
//! item is one `item.added`, its cursor stored with the events' rows.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use pollhook::store::Store;
use serde_json::{Value, json};
use tokio::process::Command;

use crate::cli::{binary, check_refuses, run, text};
use crate::support::{Daemon, FAST_RETRY, Receiver, SECRET, config, eventually, serve};

/// One request the feed got.
#[derive(Debug, Clone)]
struct Asked {
    query: HashMap<String, String>,
    headers: HeaderMap,
    body: String,
}

/// An event API as `?since=` feeds are: `/events?since=N` answers the
/// events whose `id` is above N (all of them for an empty `since`), oldest
/// first, and logs every request.
#[derive(Clone, Default)]
struct Feed {
    events: Arc<Mutex<Vec<u64>>>,
    asked: Arc<Mutex<Vec<Asked>>>,
}

type FeedState = State<Feed>;

async fn answer(
    State(feed): FeedState,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: String,
) -> ([(&'static str, &'static str); 1], String) {
    let since: u64 = query
        .get("since")
        .and_then(|since| since.parse().ok())
        .unwrap_or(0);
    let events: Vec<Value> = feed
        .events
        .lock()
        .unwrap()
        .iter()
        .filter(|id| **id > since)
        .map(|id| json!({ "id": id, "text": format!("event {id}") }))
        .collect();
    feed.asked.lock().unwrap().push(Asked {
        query,
        headers,
        body,
    });
    (
        [("content-type", "application/json")],
        Value::Array(events).to_string(),
    )
}

impl Feed {
    async fn start(events: impl IntoIterator<Item = u64>) -> (Feed, String) {
        let feed = Feed::default();
        feed.add(events);
        let router = Router::new()
            .route("/events", axum::routing::any(answer))
            .with_state(feed.clone());
        let address = serve(router).await;
        (feed, format!("http://{address}/events"))
    }

    fn add(&self, events: impl IntoIterator<Item = u64>) {
        self.events.lock().unwrap().extend(events);
    }

    fn asked(&self) -> Vec<Asked> {
        self.asked.lock().unwrap().clone()
    }

    /// The `since` of every request so far.
    fn sinces(&self) -> Vec<String> {
        self.asked()
            .iter()
            .map(|asked| asked.query.get("since").cloned().unwrap_or_default())
            .collect()
    }
}

/// The keys of the `item.added` events the receiver accepted, in order of
/// key (a target's order is best effort).
fn added_keys(receiver: &Receiver) -> Vec<u64> {
    let mut keys: Vec<u64> = receiver
        .accepted()
        .iter()
        .map(|hook| {
            let event = hook.json();
            assert_eq!(event["type"], "item.added", "{event}");
            event["data"]["key"].as_u64().unwrap()
        })
        .collect();
    keys.sort_unstable();
    keys
}

/// A receiver target and one incremental endpoint reading `url`.
fn feed_config(receiver: &Receiver, url: &str, extra: &str) -> String {
    format!(
        r#"
[[target]]
name = "receiver"
url = "{}"
secret = "{SECRET}"
retry = {FAST_RETRY}

[[endpoint]]
name = "feed"
url = "{url}?since={{{{ state.cursor }}}}"
every = "100ms"
mode = "incremental"
items = ".[]"
key = ".id"
cursor = "max_key"
{extra}
"#,
        receiver.url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_render_the_url_query_headers_and_body_at_each_poll() {
    let dir = tempfile::tempdir().unwrap();
    let (feed, url) = Feed::start([]).await;
    let config = config(
        dir.path(),
        &format!(
            r#"
[[endpoint]]
name = "dated"
url = "{url}?day={{{{ now | format('%Y-%m-%d') }}}}"
every = "100ms"
method = "POST"
query = {{ since = "{{{{ last_success }}}}", limit = "10" }}
headers = {{ "X-Year" = "{{{{ now | format('%Y') }}}}", "X-Static" = "plain" }}
body = '{{"after": "{{{{ last_success or "never" }}}}"}}'
"#
        ),
    );
    let before = chrono::Utc::now();
    let daemon = Daemon::start(config.clone());
    eventually("two polls", || feed.asked().len() >= 2).await;
    daemon.stop().await;
    let after = chrono::Utc::now();

    let asked = feed.asked();
    let days = [before, after].map(|time| time.format("%Y-%m-%d").to_string());
    for request in &asked {
        assert!(days.contains(&request.query["day"]), "{request:?}");
        assert_eq!(request.query["limit"], "10");
        assert_eq!(request.headers["x-year"], &days[0][..4]);
        assert_eq!(request.headers["x-static"], "plain");
    }
    // Before the first success, `last_success` is none.
    assert_eq!(asked[0].query["since"], "");
    assert_eq!(asked[0].body, r#"{"after": "never"}"#);
    // Then the time that poll started, in RFC 3339.
    let since = chrono::DateTime::parse_from_rfc3339(&asked[1].query["since"]).unwrap();
    assert!(before - chrono::Duration::seconds(1) <= since && since <= after);
    assert_eq!(
        asked[1].body,
        format!(r#"{{"after": "{}"}}"#, asked[1].query["since"])
    );

    // After a restart, the last change stands for the last success.
    let daemon = Daemon::start(config);
    eventually("a poll after the restart", || {
        feed.asked().len() > asked.len()
    })
    .await;
    daemon.stop().await;
    let restarted = &feed.asked()[asked.len()];
    let since = chrono::DateTime::parse_from_rfc3339(&restarted.query["since"]).unwrap();
    assert!(before - chrono::Duration::seconds(1) <= since && since <= after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incremental_feed_sets_its_cursor_silently_then_sends_each_new_item_once() {
    let dir = tempfile::tempdir().unwrap();
    let (feed, url) = Feed::start([1, 2, 3]).await;
    let receiver = Receiver::start().await;
    let daemon = Daemon::start(config(dir.path(), &feed_config(&receiver, &url, "")));
    eventually("the cursor is used", || feed.sinces().contains(&"3".into())).await;
    assert_eq!(feed.sinces()[0], "", "the first poll has no cursor");
    assert!(receiver.all().is_empty(), "the first poll is silent");

    feed.add([4, 5]);
    eventually("two events", || receiver.accepted().len() >= 2).await;
    eventually("the next cursor is used", || {
        feed.sinces().contains(&"5".into())
    })
    .await;
    // An answer with nothing new (the feed answers `[]`) keeps the cursor.
    let polls = feed.asked().len();
    eventually("more polls", || feed.asked().len() >= polls + 2).await;
    daemon.stop().await;

    assert_eq!(added_keys(&receiver), [4, 5]);
    let event = receiver
        .accepted()
        .iter()
        .map(|hook| hook.json())
        .find(|event| event["data"]["key"] == 4)
        .unwrap();
    assert_eq!(event["data"]["item"], json!({"id": 4, "text": "event 4"}));
    assert_eq!(event["data"]["endpoint"], "feed");
    let sinces = feed.sinces();
    assert!(
        sinces
            .iter()
            .skip_while(|since| *since != "5")
            .all(|since| since == "5"),
        "{sinces:?}"
    );
    let store = Store::open(dir.path()).unwrap();
    assert!(
        store.snapshot("feed").unwrap().is_none(),
        "no document is kept"
    );
    assert_eq!(
        store.cursor("feed").unwrap().unwrap().cursor.as_deref(),
        Some("5")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emit_initial_sends_the_first_answer_and_repeats_are_deduplicated() {
    let dir = tempfile::tempdir().unwrap();
    let (feed, url) = Feed::start([7, 8]).await;
    let receiver = Receiver::start().await;
    // No cursor: every answer is the whole feed, and only the seen keys
    // tell what is new.
    let body =
        feed_config(&receiver, &url, "emit_initial = true").replace("cursor = \"max_key\"\n", "");
    let daemon = Daemon::start(config(dir.path(), &body));
    eventually("two events", || receiver.accepted().len() >= 2).await;
    feed.add([9]);
    eventually("the third event", || receiver.accepted().len() >= 3).await;
    let polls = feed.asked().len();
    eventually("more polls", || feed.asked().len() >= polls + 2).await;
    daemon.stop().await;
    assert_eq!(added_keys(&receiver), [7, 8, 9]);
    assert!(feed.sinces().iter().all(String::is_empty));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_definition_starts_the_feed_again() {
    let dir = tempfile::tempdir().unwrap();
    let (feed, url) = Feed::start([1, 2]).await;
    let receiver = Receiver::start().await;
    let daemon = Daemon::start(config(dir.path(), &feed_config(&receiver, &url, "")));
    eventually("the cursor is used", || feed.sinces().contains(&"2".into())).await;
    feed.add([3]);
    eventually("one event", || receiver.accepted().len() == 1).await;
    daemon.stop().await;

    // Another question of the same API: its first poll has no cursor and
    // sends nothing, although the answer holds items never sent.
    let requests = feed.asked().len();
    let changed = feed_config(&receiver, &url, r#"query = { limit = "50" }"#);
    let daemon = Daemon::start(config(dir.path(), &changed));
    eventually("a poll", || feed.asked().len() > requests).await;
    eventually("the new cursor is used", || {
        feed.asked()[requests..]
            .iter()
            .any(|asked| asked.query.get("since").is_some_and(|since| since == "3"))
    })
    .await;
    daemon.stop().await;
    let first = &feed.asked()[requests];
    assert_eq!(first.query["since"], "");
    assert_eq!(first.query["limit"], "50");
    assert_eq!(added_keys(&receiver), [3]);
}

/// Starts `pollhook run`, its log appended to `daemon.log` beside the config.
fn run_daemon(config: &Path) -> tokio::process::Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(config.with_file_name("daemon.log"))
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_pollhook"))
        .args(["run", "-c", config.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .stderr(log)
        .env_remove("POLLHOOK_CONFIG")
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_an_incremental_feed_loses_no_event_and_repeats_none() {
    let dir = tempfile::tempdir().unwrap();
    let (feed, url) = Feed::start([1]).await;
    let receiver = Receiver::start().await;
    // POSTs take a while, so some kills land while they are in flight.
    receiver.behave(|behaviour| behaviour.delay = Duration::from_millis(15));
    let config = dir.path().join("config.toml");
    let body = feed_config(&receiver, &url, "emit_initial = true");
    let contents = format!(
        "state_dir = \"{}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n{body}",
        dir.path().join("state").display()
    );
    std::fs::write(&config, contents).unwrap();

    // New events keep coming while the daemon is killed at several points
    // (between polls, during a poll, right after a commit).
    let kill_points = [300, 650, 190, 480, 820, 100, 240, 560];
    let mut next = 2;
    for kill_after in kill_points {
        let mut child = run_daemon(&config);
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(kill_after / 3)).await;
            feed.add([next]);
            next += 1;
        }
        child.start_kill().unwrap();
        child.wait().await.unwrap();
    }
    let last = next - 1;

    // Quiet now: restart and let it catch up and drain.
    let mut child = run_daemon(&config);
    let log = || std::fs::read_to_string(config.with_file_name("daemon.log")).unwrap_or_default();
    for _ in 0..1000 {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "the restarted daemon exited ({status}); its log:\n{}",
                log()
            );
        }
        let keys: BTreeSet<u64> = added_keys(&receiver).into_iter().collect();
        if keys.len() as u64 == last && receiver.handling() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let pid = child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert!(
        tokio::time::timeout(Duration::from_secs(20), child.wait())
            .await
            .unwrap()
            .unwrap()
            .success()
    );

    // Every event arrived, each under one id only: a redelivery of a row
    // is at-least-once, a second detection would have a new id.
    let accepted: BTreeSet<u64> = added_keys(&receiver).into_iter().collect();
    assert_eq!(
        accepted,
        (1..=last).collect(),
        "events lost; the log:\n{}",
        log()
    );
    let mut ids: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    for hook in receiver.all() {
        assert!(hook.signature_verifies(SECRET));
        let key = hook.json()["data"]["key"].as_u64().unwrap();
        ids.entry(key).or_default().insert(hook.id.clone());
    }
    for (key, ids) in &ids {
        assert_eq!(ids.len(), 1, "event {key} was detected twice: {ids:?}");
    }
    {
        let store = Store::open(&dir.path().join("state")).unwrap();
        assert_eq!(store.outbox_len(), 0);
    }

    // `status` shows the cursor; `once` shows what it would send and the
    // cursor it would store, and stores nothing.
    let config = config.to_str().unwrap();
    let status = run(&["status", "-c", config]).await;
    let shown = text(&status.stdout);
    assert!(shown.contains("CURSOR"), "{shown}");
    let row = shown.lines().find(|line| line.starts_with("feed")).unwrap();
    assert!(row.contains(&format!(" {last} ")), "{shown}");
    feed.add([last + 1]);
    let once = binary()
        .args(["once", "-c", config, "feed"])
        .output()
        .await
        .unwrap();
    let stderr = text(&once.stderr);
    assert!(once.status.success(), "{stderr}");
    assert!(stderr.contains("feed: changed, 1 event(s)"), "{stderr}");
    assert!(
        stderr.contains(&format!("feed: cursor {}", last + 1)),
        "{stderr}"
    );
    let sent: Value = serde_json::from_str(text(&once.stdout).trim()).unwrap();
    assert_eq!(sent["data"]["key"], last + 1);
    let store = Store::open(&dir.path().join("state")).unwrap();
    assert_eq!(
        store.cursor("feed").unwrap().unwrap().cursor,
        Some(last.to_string())
    );
}

#[tokio::test]
async fn every_mistake_in_templates_and_incremental_keys_is_located() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        r#"[[endpoint]]
name = "a"
url = "http://127.0.0.1:1/e?since={{ state.cursor "
every = "1m"
cursor = ".[-1].id"

[[endpoint]]
name = "b"
url = "http://127.0.0.1:1/e"
every = "1m"
mode = "incremental"
headers = { "X-Since" = "{{ since }}" }
on = ["added"]

[[endpoint]]
name = "c"
url = "http://127.0.0.1:1/e"
every = "1m"
mode = "incremental"
items = ".[]"
key = ".id"
cursor = ".["
query = { day = "{{ now | format('%Y') }", n = "{{ state.cursr }}" }
mode2 = 1
"#,
    )
    .unwrap();
    check_refuses(
        &path,
        [
        "c.toml:3:7: endpoint `a`: invalid template: syntax error",
        "c.toml:5:10: endpoint `a`: `cursor` is for `mode = \"incremental\"`: set it too",
        "c.toml:11:8: endpoint `b`: `mode = \"incremental\"` makes an event of each item: set `items` and `key` too",
        "c.toml:12:25: endpoint `b`: invalid value for header `x-since`: invalid template: unknown variable `since`",
        "c.toml:13:6: endpoint `b`: `on` is not used with `mode = \"incremental\"`",
        "c.toml:22:10: endpoint `c`: ",
        "c.toml:23:17: endpoint `c`: invalid template: syntax error",
        "c.toml:23:48: endpoint `c`: invalid template: unknown variable `state.cursr`",
        "c.toml:24:1: endpoint `c`: unknown field `mode2`",
        ],
    )
    .await;
}
