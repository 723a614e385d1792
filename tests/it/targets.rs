//! What a target takes (`events`) and `pollhook test TARGET`.

use crate::cli::{binary, check_refuses, text};
use crate::support::{Api, Daemon, FAST_RETRY, Receiver, Reply, SECRET, config, eventually};

/// An alerting channel that wants only health events gets only those,
/// while a target without `events` gets everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_takes_only_the_event_types_it_lists() {
    let state = tempfile::tempdir().unwrap();
    let api = Api::start(Reply::json(r#"[{"id":1}]"#)).await;
    let (everything, alerts, added) = (
        Receiver::start().await,
        Receiver::start().await,
        Receiver::start().await,
    );
    let daemon = Daemon::start(config(
        state.path(),
        &format!(
            r#"
[[target]]
name = "everything"
url = "{}"
retry = {FAST_RETRY}

[[target]]
name = "alerts"
url = "{}"
events = ["endpoint.*"]
retry = {FAST_RETRY}

[[target]]
name = "added"
url = "{}"
events = ["item.added"]
retry = {FAST_RETRY}

[[endpoint]]
name = "releases"
url = "{}"
every = "100ms"
items = ".[]"
key = ".id"
fail_after = 1
fail_for = "0s"
"#,
            everything.url(),
            alerts.url(),
            added.url(),
            api.url()
        ),
    ));
    api.wait_for_requests(2).await;
    api.set(Reply::json(r#"[{"id":1,"v":2},{"id":2}]"#));
    eventually("the item events arrive", || {
        everything.accepted().len() == 2
    })
    .await;
    api.set(Reply {
        status: 500,
        ..Reply::json("{}")
    });
    eventually("the failing alert arrives", || alerts.accepted().len() == 1).await;
    api.set(Reply::json(r#"[{"id":1,"v":2},{"id":2}]"#));
    eventually("the recovery arrives", || alerts.accepted().len() == 2).await;
    eventually("everything has it too", || everything.accepted().len() == 4).await;
    daemon.stop().await;

    // The two item events of one poll go in parallel: either may be first.
    let mut everything = everything.types();
    everything[..2].sort();
    assert_eq!(
        everything,
        [
            "item.added",
            "item.changed",
            "endpoint.failing",
            "endpoint.recovered"
        ]
    );
    assert_eq!(alerts.types(), ["endpoint.failing", "endpoint.recovered"]);
    assert_eq!(added.types(), ["item.added"]);
}

#[tokio::test]
async fn events_that_name_no_type_are_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pollhook.toml");
    std::fs::write(
        &path,
        r#"[[target]]
name = "chat"
url = "http://127.0.0.1:9/hook"
events = ["item.add", "endpoint.failing"]

[[target]]
name = "quiet"
url = "http://127.0.0.1:9/hook"
events = []

[[endpoint]]
name = "a"
url = "http://127.0.0.1:9/"
every = "1m"
"#,
    )
    .unwrap();
    check_refuses(
        &path,
        [
            "pollhook.toml:4:11: target `chat`: `item.add` names no event type; the types are endpoint.changed, item.added",
            "pollhook.toml:9:10: target `quiet`: `events` is empty",
        ],
    )
    .await;
}

fn write_config(dir: &std::path::Path, receiver_url: &str) -> std::path::PathBuf {
    let path = dir.join("pollhook.toml");
    std::fs::write(
        &path,
        format!(
            r#"state_dir = "{}"

[[target]]
name = "ha"
url = "{receiver_url}"
secret = "{SECRET}"
events = ["item.added"]

[[endpoint]]
name = "a"
url = "http://127.0.0.1:9/"
every = "1m"
"#,
            dir.join("state").display()
        ),
    )
    .unwrap();
    path
}

/// `pollhook test ha`: one signed `pollhook.test` through the delivery
/// code, whatever the target's `events`, and the receiver's answer printed.
#[tokio::test]
async fn test_sends_a_marked_signed_event_and_prints_the_answer() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    let config = write_config(dir.path(), &receiver.url());
    let output = binary()
        .args(["test", "ha", "-c", config.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", text(&output.stderr));
    assert!(stdout.starts_with("sent pollhook.test msg_"), "{stdout}");
    assert!(stdout.contains("answer: HTTP 204"), "{stdout}");
    let hooks = receiver.accepted();
    assert_eq!(hooks.len(), 1);
    assert!(hooks[0].signature_verifies(SECRET));
    let event = hooks[0].json();
    assert_eq!(event["type"], "pollhook.test");
    assert_eq!(event["data"]["test"], true);
    assert_eq!(event["data"]["target"], "ha");
    assert!(
        !dir.path().join("state").exists(),
        "a test delivery is not queued: no store"
    );

    receiver.answer(500);
    let output = binary()
        .args(["test", "ha", "-c", config.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stdout).contains("answer: HTTP 500"));
    assert!(
        text(&output.stderr).contains("error: the delivery failed: HTTP status 500"),
        "{}",
        text(&output.stderr)
    );

    let output = binary()
        .args(["test", "nosuch", "-c", config.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output.stderr).contains("no target `nosuch`")
            && text(&output.stderr).contains("its targets: ha"),
        "{}",
        text(&output.stderr)
    );
}

/// Headers, a method and the event's id in the URL, as ntfy with a token,
/// Home Assistant's REST API or Matrix want them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_sends_its_headers_with_its_method_to_its_url() {
    let state = tempfile::tempdir().unwrap();
    let api = Api::start(Reply::json(r#"{"a":1}"#)).await;
    let receiver = Receiver::start().await;
    let daemon = Daemon::start(config(
        state.path(),
        &format!(
            r#"
[[target]]
name = "ntfy"
url = "http://{}/topic/{{event_id}}?seen={{event_id}}"
method = "put"
headers = {{ Authorization = "Bearer tk_secret", Priority = "urgent", X-Title = "from pollhook" }}
format = "ntfy"
retry = {FAST_RETRY}

[[endpoint]]
name = "data"
url = "{}"
every = "100ms"
emit_initial = true
"#,
            receiver.address,
            api.url()
        ),
    ));
    eventually("the event arrives", || !receiver.accepted().is_empty()).await;
    daemon.stop().await;
    let hook = &receiver.accepted()[0];
    assert_eq!(hook.method, "PUT");
    assert_eq!(hook.path, format!("/topic/{0}?seen={0}", hook.id));
    let header = |name: &str| hook.headers[name].to_str().unwrap();
    assert_eq!(header("authorization"), "Bearer tk_secret");
    assert_eq!(header("x-title"), "from pollhook");
    // The user's header wins over the format's own.
    assert_eq!(header("priority"), "urgent");
    assert_eq!(header("title"), "data changed");
}

/// A target that keeps failing is announced to the targets that take
/// health events, never to itself; so is its recovery and a dead letter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_target_is_announced_to_the_others_and_its_dead_letters_too() {
    let state = tempfile::tempdir().unwrap();
    let api = Api::start(Reply::json(r#"{"a":1}"#)).await;
    let (flaky, ops, chat) = (
        Receiver::start().await,
        Receiver::start().await,
        Receiver::start().await,
    );
    flaky.answer(503);
    let daemon = Daemon::start(config(
        state.path(),
        &format!(
            r#"
[[target]]
name = "flaky"
url = "{}"
events = ["*"]
retry = ["50ms", "50ms", "50ms", "50ms"]
fail_after = 3
fail_for = "0s"

[[target]]
name = "ops"
url = "{}"
events = ["target.*", "event.dead"]

[[target]]
name = "chat"
url = "{}"

[[endpoint]]
name = "data"
url = "{}"
every = "100ms"
emit_initial = true
targets = ["flaky", "chat"]
"#,
            flaky.url(),
            ops.url(),
            chat.url(),
            api.url()
        ),
    ));
    eventually("ops hears of the failure and the dead letter", || {
        ops.types() == ["target.failing", "event.dead"]
    })
    .await;
    let failing = ops.accepted()[0].json();
    assert_eq!(failing["data"]["target"], "flaky");
    assert_eq!(failing["data"]["failures"], 3);
    assert_eq!(failing["data"]["status"], 503);
    let dead = ops.accepted()[1].json();
    assert_eq!(dead["data"]["endpoint"], "data");
    assert_eq!(dead["data"]["event_id"], flaky.all()[0].id);
    assert_eq!(dead["data"]["event_type"], "endpoint.changed");
    assert_eq!(dead["data"]["attempts"], 5);

    flaky.answer(204);
    api.set(Reply::json(r#"{"a":2}"#));
    eventually("ops hears of the recovery", || ops.types().len() == 3).await;
    daemon.stop().await;
    assert_eq!(ops.types()[2], "target.recovered");
    assert_eq!(ops.accepted()[2].json()["data"]["target"], "flaky");
    // Not to the failing target itself, and not to one without `events`.
    assert!(
        flaky
            .accepted()
            .iter()
            .all(|hook| { !hook.json()["type"].as_str().unwrap().starts_with("target.") })
    );
    assert_eq!(chat.types(), ["endpoint.changed", "endpoint.changed"]);
}

#[tokio::test]
async fn target_mistakes_are_config_errors_at_their_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pollhook.toml");
    std::fs::write(
        &path,
        r#"[[target]]
name = "hook"
url = "http://127.0.0.1:9/hook"
method = "GET POST"
headers = { "bad header" = "x", webhook-id = "mine", X-Key = "line\nbreak" }
to = "ops@example.com"
fail_after = -1

[[target]]
name = "mail"
url = "smtp://127.0.0.1:25"
from = "not an address"
to = []
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
format = "slack"
subject = "{{ summary"
auth = { bearer = "tk_secret" }

[[target]]
name = "nobody"
url = "smtps://mail.example.com"
method = "PUT"
fail_for = "soon"
content_type = "text/html"

[[target]]
name = "ftp"
url = "ftp://user:hunter2@127.0.0.1/"

[[target]]
name = "relay"
url = "smtp://127.0.0.1:25"
from = "pollhook@example.com"
to = ["ops@example.com"]
client_cert = "me.pem"
proxy = "http://127.0.0.1:3128"

[[target]]
name = "broker"
url = "mqtt://127.0.0.1:1883"
proxy = "http://127.0.0.1:3128"

[[endpoint]]
name = "a"
url = "http://127.0.0.1:9/"
every = "1m"
"#,
    )
    .unwrap();
    let stderr = check_refuses(
        &path,
        [
        "pollhook.toml:4:10: target `hook`: invalid HTTP method `GET POST`",
        "pollhook.toml:5:",
        "pollhook.toml:6:6: target `hook`: `to` is for email targets",
        "pollhook.toml:7:14: target `hook`:",
        "pollhook.toml:12:8: target `mail`: invalid email address `not an address`",
        "pollhook.toml:13:6: target `mail`: `to` is empty",
        "pollhook.toml:14:10: target `mail`: `secret` is for HTTP targets, not email",
        "pollhook.toml:15:10: target `mail`: `format = \"slack\"` is for HTTP targets",
        "pollhook.toml:16:11: target `mail`: invalid `subject`: syntax error",
        "pollhook.toml:17:8: target `mail`: email logs in with `auth = { basic",
        "pollhook.toml:20:8: target `nobody`: an email target needs `to`",
        "pollhook.toml:20:8: target `nobody`: an email target needs `from`",
        "pollhook.toml:22:10: target `nobody`: `method` is for HTTP targets, not email",
        "pollhook.toml:23:12: target `nobody`:",
        "pollhook.toml:24:16: target `nobody`: `content_type` is for HTTP targets, not email",
        "pollhook.toml:35:15: target `relay`: `client_cert` is for HTTP targets, not email",
        "pollhook.toml:30:1: target `relay`: `proxy` is for HTTP targets, not email",
        "pollhook.toml:38:1: target `broker`: `proxy` is only used with an `http://` or `https://` url",
        "pollhook.toml:28:7: target `ftp`: invalid URL `ftp://user:***@127.0.0.1/`: scheme `ftp` is not `http`, `https`, `smtp`, `smtps`, `mqtt`, `mqtts`, `nats`, or `tls`",
        ],
    )
    .await;
    assert!(
        !stderr.contains("`mail`: an email target needs `from`"),
        "{stderr}"
    );
    for secret in ["hunter2", "tk_secret", "break"] {
        assert!(!stderr.contains(secret), "{secret}: {stderr}");
    }
}
