//! The admin API of the real daemon on a free port: every route, the token,
//! metrics parsed as Prometheus reads them, the live stream over SSE and
//! WebSocket, and reload with a good and a broken config.

use std::path::Path;
use std::time::Duration;

use chrono::Datelike as _;
use futures_util::StreamExt as _;
use pollhook::config::Config;
use serde_json::Value;

use crate::support::{Api, Daemon, Receiver, Reply, SECRET, eventually};

/// The address a daemon with this state dir wrote once it listened.
pub(crate) async fn admin_address(state_dir: &Path) -> String {
    let file = state_dir.join("admin.addr");
    eventually("the admin API listens", || file.exists()).await;
    format!("http://{}", std::fs::read_to_string(file).unwrap().trim())
}

async fn get(url: String) -> (u16, String) {
    let response = reqwest::get(url).await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

async fn get_json(url: String) -> Value {
    let (status, body) = get(url.clone()).await;
    assert_eq!(status, 200, "{url}: {body}");
    serde_json::from_str(&body).unwrap()
}

async fn post(url: String, token: Option<&str>) -> (u16, Value) {
    let mut request = reqwest::Client::new().post(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let body = response.text().await.unwrap_or_default();
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

pub(crate) fn write_config(
    path: &Path,
    state: &Path,
    endpoints: &str,
    receiver: &Receiver,
    admin_extra: &str,
) -> Config {
    let text = format!(
        "state_dir = \"{}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n{admin_extra}\n\
         [[target]]\nname = \"receiver\"\nurl = \"{}\"\nsecret = \"{SECRET}\"\nretry = [\"20ms\"]\n{endpoints}",
        state.display(),
        receiver.url()
    );
    std::fs::write(path, text).unwrap();
    Config::load(path).unwrap()
}

/// A daemon on `dir/config.toml`, with `dir` as its state dir, and the
/// address of its admin API once it listens.
pub(crate) async fn start_daemon(
    dir: &Path,
    endpoints: &str,
    receiver: &Receiver,
) -> (Daemon, String) {
    let config = write_config(&dir.join("config.toml"), dir, endpoints, receiver, "");
    let daemon = Daemon::start(config);
    (daemon, admin_address(dir).await)
}

fn endpoint(name: &str, api: &Api, extra: &str) -> String {
    format!(
        "[[endpoint]]\nname = \"{name}\"\nurl = \"{}\"\nevery = \"100ms\"\n{extra}\n",
        api.url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers() {
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start(Reply::json(r#"{"a":1}"#)).await;
    let quiet_api = Api::start(Reply::json(r#"{"q":1}"#)).await;
    let receiver = Receiver::start().await;
    receiver.answer(500);
    let endpoints = endpoint("data", &api, "")
        + &format!(
            "[[endpoint]]\nname = \"quiet\"\nurl = \"{}\"\nevery = \"1000h\"\n",
            quiet_api.url()
        );
    let (daemon, admin) = start_daemon(dir.path(), &endpoints, &receiver).await;

    assert_eq!(
        get(format!("{admin}/healthz")).await,
        (200, "ok\n".to_string())
    );
    assert_eq!(
        get(format!("{admin}/readyz")).await,
        (200, "ready\n".to_string())
    );

    api.wait_for_requests(2).await;
    api.set(Reply::json(r#"{"a":2}"#));
    let mut dead = Value::Null;
    for _ in 0..500 {
        dead = get_json(format!("{admin}/api/v1/dead")).await;
        if dead.as_array().is_some_and(|rows| !rows.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let id = dead[0]["event_id"]
        .as_str()
        .expect("a dead letter")
        .to_string();
    assert_eq!(dead[0]["target"], "receiver");
    assert_eq!(dead[0]["attempts"], 2);

    let listed = get_json(format!("{admin}/api/v1/endpoints")).await;
    assert_eq!(listed.as_array().unwrap().len(), 2);
    let data = get_json(format!("{admin}/api/v1/endpoints/data")).await;
    assert_eq!(data["version"], 2);
    assert_eq!(data["schedule"], "every 100ms");
    assert_eq!(data["consecutive_failures"], 0);
    assert!(
        data["last_poll_ms"].as_u64().is_some() && data["last_change_ms"].as_u64().is_some(),
        "{data}"
    );
    assert_eq!(get(format!("{admin}/api/v1/endpoints/nope")).await.0, 404);

    let history = get_json(format!("{admin}/api/v1/endpoints/data/history")).await;
    let versions: Vec<u64> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, vec![1, 2]);
    assert_eq!(
        get(format!("{admin}/api/v1/endpoints/data/history/1")).await,
        (200, r#"{"a":1}"#.to_string())
    );

    // The quiet endpoint polls only when asked.
    assert_eq!(
        quiet_api.requests(),
        0,
        "its first poll is spread over 1000 hours"
    );
    let (status, answer) = post(format!("{admin}/api/v1/endpoints/quiet/poll"), None).await;
    assert_eq!((status, answer["polling"].as_str()), (202, Some("quiet")));
    eventually("the poll asked for", || quiet_api.requests() == 1).await;
    assert_eq!(
        post(format!("{admin}/api/v1/endpoints/nope/poll"), None)
            .await
            .0,
        404
    );

    receiver.answer(204);
    let (status, answer) = post(format!("{admin}/api/v1/dead/{id}/replay"), None).await;
    assert_eq!((status, answer["replayed"].as_u64()), (200, Some(1)));
    eventually("the replay is delivered", || receiver.accepted().len() == 1).await;
    assert_eq!(receiver.accepted()[0].id, id);
    assert_eq!(
        post(format!("{admin}/api/v1/dead/{id}/replay"), None)
            .await
            .0,
        404
    );
    let queued = get_json(format!("{admin}/api/v1/deliveries?target=receiver")).await;
    assert_eq!(queued, serde_json::json!([]));

    let (status, text) = get(format!("{admin}/metrics")).await;
    assert_eq!(status, 200);
    let scrape =
        prometheus_parse::Scrape::parse(text.lines().map(|line| Ok(line.to_string()))).unwrap();
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        scrape
            .samples
            .iter()
            .find(|sample| {
                sample.metric == name
                    && labels
                        .iter()
                        .all(|(key, value)| sample.labels.get(key) == Some(*value))
            })
            .map(|sample| match sample.value {
                prometheus_parse::Value::Counter(value)
                | prometheus_parse::Value::Gauge(value)
                | prometheus_parse::Value::Untyped(value) => value,
                _ => f64::NAN,
            })
            .unwrap_or_else(|| panic!("no {name} {labels:?} in:\n{text}"))
    };
    assert_eq!(
        value(
            "pollhook_polls_total",
            &[("endpoint", "data"), ("result", "changed")]
        ),
        1.0
    );
    assert_eq!(
        value(
            "pollhook_polls_total",
            &[("endpoint", "data"), ("result", "baseline")]
        ),
        1.0
    );
    assert!(
        value(
            "pollhook_polls_total",
            &[("endpoint", "data"), ("result", "unchanged")]
        ) >= 1.0
    );
    assert_eq!(
        value("pollhook_changes_total", &[("endpoint", "data")]),
        1.0
    );
    assert_eq!(
        value(
            "pollhook_deliveries_total",
            &[("target", "receiver"), ("result", "dead")]
        ),
        1.0
    );
    assert_eq!(
        value(
            "pollhook_deliveries_total",
            &[("target", "receiver"), ("result", "failed")]
        ),
        1.0
    );
    assert_eq!(
        value(
            "pollhook_deliveries_total",
            &[("target", "receiver"), ("result", "delivered")]
        ),
        1.0
    );
    assert_eq!(value("pollhook_outbox_depth", &[]), 0.0);
    assert_eq!(value("pollhook_dead_letters", &[]), 0.0);
    assert!(
        value(
            "pollhook_last_success_timestamp_seconds",
            &[("endpoint", "data")]
        ) > 1.7e9
    );
    assert!(
        scrape
            .samples
            .iter()
            .any(|sample| sample.metric.starts_with("pollhook_poll_duration_seconds"))
    );

    daemon.stop().await;
    assert!(
        !dir.path().join("admin.addr").exists(),
        "a clean stop removes the address"
    );
}

/// A GET with a bearer token and, if given, a `Host` header.
async fn get_as(url: &str, token: Option<&str>, host: Option<&str>) -> u16 {
    let mut request = reqwest::Client::new().get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(host) = host {
        request = request.header("host", host);
    }
    request.send().await.unwrap().status().as_u16()
}

const READ_ROUTES: [&str; 8] = [
    "/api/v1/endpoints",
    "/api/v1/endpoints/data",
    "/api/v1/endpoints/data/history",
    "/api/v1/endpoints/data/history/1",
    "/api/v1/deliveries",
    "/api/v1/dead",
    "/api/v1/events",
    "/metrics",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_every_route_but_health_needs_it() {
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start(Reply::json(r#"{"a":1}"#)).await;
    let receiver = Receiver::start().await;
    let config = write_config(
        &dir.path().join("config.toml"),
        dir.path(),
        &endpoint("data", &api, ""),
        &receiver,
        "token = \"s3cret-token\"",
    );
    assert!(
        !format!("{config:?}").contains("s3cret"),
        "the token never shows"
    );
    let daemon = Daemon::start(config);
    let admin = admin_address(dir.path()).await;
    api.wait_for_requests(1).await;
    for route in ["/healthz", "/readyz"] {
        assert_eq!(
            get_as(&format!("{admin}{route}"), None, None).await,
            200,
            "{route}"
        );
    }
    for route in READ_ROUTES {
        let url = format!("{admin}{route}");
        assert_eq!(
            get_as(&url, None, None).await,
            401,
            "{route} without the token"
        );
        assert_eq!(
            get_as(&url, Some("wrong"), None).await,
            401,
            "{route}, a wrong token"
        );
    }
    // The event stream would not end: only its answer's status is read.
    for route in READ_ROUTES
        .iter()
        .filter(|route| !route.ends_with("events"))
    {
        let url = format!("{admin}{route}");
        assert_eq!(
            get_as(&url, Some("s3cret-token"), None).await,
            200,
            "{route}"
        );
    }
    for route in [
        "/api/v1/reload",
        "/api/v1/endpoints/data/poll",
        "/api/v1/endpoints/data/pause",
        "/api/v1/endpoints/data/resume",
        "/api/v1/targets/receiver/resume",
    ] {
        assert_eq!(
            post(format!("{admin}{route}"), None).await.0,
            401,
            "{route}"
        );
        assert_eq!(
            post(format!("{admin}{route}"), Some("wrong")).await.0,
            401,
            "{route}"
        );
    }
    assert_eq!(
        post(format!("{admin}/api/v1/reload"), Some("s3cret-token"))
            .await
            .0,
        200
    );
    // The CLI sends the config's token.
    let output = crate::cli::run(&[
        "status",
        "-c",
        dir.path().join("config.toml").to_str().unwrap(),
    ])
    .await;
    assert!(
        output.status.success(),
        "{}",
        crate::cli::text(&output.stderr)
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_be_public_while_the_rest_needs_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start(Reply::json(r#"{"a":1}"#)).await;
    let receiver = Receiver::start().await;
    let config = write_config(
        &dir.path().join("config.toml"),
        dir.path(),
        &endpoint("data", &api, ""),
        &receiver,
        "token = \"s3cret-token\"\nmetrics_public = true",
    );
    let daemon = Daemon::start(config);
    let admin = admin_address(dir.path()).await;
    assert_eq!(get_as(&format!("{admin}/metrics"), None, None).await, 200);
    assert_eq!(
        get_as(&format!("{admin}/api/v1/endpoints"), None, None).await,
        401
    );
    daemon.stop().await;
}

/// DNS rebinding: a page on `evil.example`, once that name resolves to
/// 127.0.0.1, makes the browser send `Host: evil.example`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loopback_listener_refuses_requests_for_other_hosts() {
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start(Reply::json(r#"{"a":1}"#)).await;
    let receiver = Receiver::start().await;
    let (daemon, admin) = start_daemon(dir.path(), &endpoint("data", &api, ""), &receiver).await;
    let port = admin.rsplit(':').next().unwrap();
    for host in [
        "evil.example",
        &format!("evil.example:{port}"),
        "localhost.evil.example",
    ] {
        for route in ["/healthz", "/api/v1/endpoints", "/api/v1/dead", "/metrics"] {
            let status = get_as(&format!("{admin}{route}"), None, Some(host)).await;
            assert_eq!(status, 400, "{route} for {host}");
        }
        assert_eq!(
            post_as_host(&format!("{admin}/api/v1/reload"), host).await,
            400,
            "{host}"
        );
    }
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        "localhost".to_string(),
    ] {
        let status = get_as(&format!("{admin}/api/v1/endpoints"), None, Some(&host)).await;
        assert_eq!(status, 200, "{host}");
    }
    daemon.stop().await;
}

async fn post_as_host(url: &str, host: &str) -> u16 {
    reqwest::Client::new()
        .post(url)
        .header("host", host)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_events_reach_sse_and_websocket_clients() {
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start(Reply::json(r#"{"a":1}"#)).await;
    let other_api = Api::start(Reply::json(r#"{"b":1}"#)).await;
    let receiver = Receiver::start().await;
    let endpoints = endpoint("data", &api, "") + &endpoint("other", &other_api, "");
    let (daemon, admin) = start_daemon(dir.path(), &endpoints, &receiver).await;

    let sse = reqwest::get(format!("{admin}/api/v1/events?endpoint=data"))
        .await
        .unwrap();
    assert!(
        sse.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let ws_url = format!(
        "{}/api/v1/events?type=endpoint.changed&endpoint=data",
        admin.replace("http://", "ws://")
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();
    api.wait_for_requests(2).await;
    other_api.set(Reply::json(r#"{"b":2}"#));
    other_api.wait_for_requests(2).await;
    api.set(Reply::json(r#"{"a":2}"#));

    let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let event: Value = serde_json::from_str(message.to_text().unwrap()).unwrap();
    assert_eq!(event["type"], "endpoint.changed");
    assert_eq!(
        event["data"]["endpoint"], "data",
        "the filter keeps `other` out"
    );
    assert_eq!(
        event["data"]["patch"],
        serde_json::json!([{"op": "replace", "path": "/a", "value": 2}])
    );

    let mut sse = sse.bytes_stream();
    let mut text = String::new();
    while !text.contains("\n\n") || !text.contains("data: ") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), sse.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.contains("event: endpoint.changed\n"), "{text}");
    assert!(
        text.contains(&format!("id: {}\n", receiver_id(&receiver).await)),
        "{text}"
    );
    assert!(!text.contains(r#""endpoint":"other""#), "{text}");
    drop(sse);
    drop(socket);
    daemon.stop().await;
}

/// The id of the one webhook `data` caused, as the receiver got it.
async fn receiver_id(receiver: &Receiver) -> String {
    eventually("the webhook arrives", || {
        receiver
            .accepted()
            .iter()
            .any(|hook| hook.json()["data"]["endpoint"] == "data")
    })
    .await;
    let hooks = receiver.accepted();
    hooks
        .iter()
        .find(|hook| hook.json()["data"]["endpoint"] == "data")
        .unwrap()
        .id
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_a_good_config_and_keeps_the_old_one_on_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    let mut noisy = Reply::json("");
    noisy.bodies = vec![r#"{"a":1,"noise":1}"#.into()];
    let api = Api::start(noisy.clone()).await;
    let second_api = Api::start(Reply::json(r#"{"b":1}"#)).await;
    let receiver = Receiver::start().await;
    let (daemon, admin) = start_daemon(dir.path(), &endpoint("data", &api, ""), &receiver).await;
    api.wait_for_requests(2).await;

    // Added: `second` starts.
    let both = endpoint("data", &api, "") + &endpoint("second", &second_api, "");
    write_config(&path, dir.path(), &both, &receiver, "");
    let (status, answer) = post(format!("{admin}/api/v1/reload"), None).await;
    assert_eq!(
        (status, answer["reloaded"].as_str()),
        (200, Some("1 started, 0 stopped, 0 restarted"))
    );
    second_api.wait_for_requests(2).await;

    // Broken: refused with the located errors; both keep polling.
    std::fs::write(
        &path,
        std::fs::read_to_string(&path)
            .unwrap()
            .replace("every = \"100ms\"", "every = \"soon\""),
    )
    .unwrap();
    let (status, answer) = post(format!("{admin}/api/v1/reload"), None).await;
    assert_eq!(status, 422);
    let problems = answer["error"].as_str().unwrap();
    assert!(
        problems.contains("config.toml:") && problems.contains("invalid duration `soon`"),
        "{problems}"
    );
    api.wait_for_requests(2).await;
    second_api.wait_for_requests(2).await;
    assert_eq!(
        get_json(format!("{admin}/api/v1/endpoints"))
            .await
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // Changed: `data` now ignores `/noise`, so its document loses a member:
    // re-baselined, not sent. Then the noise moves, and is ignored. (Moved
    // before the reload, the old definition could see it: a real change.)
    let changed = endpoint("data", &api, "ignore = [\"/noise\"]");
    write_config(&path, dir.path(), &changed, &receiver, "");
    let (status, answer) = post(format!("{admin}/api/v1/reload"), None).await;
    assert_eq!(
        (status, answer["reloaded"].as_str()),
        (200, Some("0 started, 1 stopped, 1 restarted"))
    );
    api.wait_for_requests(3).await;
    noisy.bodies = vec![r#"{"a":1,"noise":2}"#.into()];
    api.set(noisy);
    api.wait_for_requests(3).await;
    let requests = second_api.requests();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        second_api.requests(),
        requests,
        "the removed endpoint stopped polling"
    );
    daemon.stop().await;
    assert!(
        receiver.all().is_empty(),
        "no spurious change: {:#?}",
        receiver.all()
    );
}

#[test]
fn an_open_admin_listener_needs_a_token() {
    let text = "[admin]\nlisten = \"0.0.0.0:9477\"\n";
    let error = Config::compile(text, Path::new("open.toml"))
        .unwrap_err()
        .to_string();
    assert!(error.contains("open.toml:1:1: admin: `listen = \"0.0.0.0:9477\"` is reachable from other machines: set `token` too"), "{error}");
    let with_token = "[admin]\nlisten = \"0.0.0.0:9477\"\ntoken = \"t\"\n\
        [[endpoint]]\nname = \"e\"\nurl = \"http://127.0.0.1:1/\"\nevery = \"1m\"\n";
    assert!(Config::compile(with_token, Path::new("ok.toml")).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_also_listens_on_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start(Reply::json(r#"{"a":1}"#)).await;
    let receiver = Receiver::start().await;
    let path = dir.path().join("config.toml");
    let socket = dir.path().join("run/admin.sock");
    write_config(
        &path,
        dir.path(),
        &endpoint("data", &api, ""),
        &receiver,
        "",
    );
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("127.0.0.1:0", &format!("unix:{}", socket.display()));
    std::fs::write(&path, text).unwrap();
    let daemon = Daemon::start(Config::load(&path).unwrap());
    eventually("the socket exists", || socket.exists()).await;
    api.wait_for_requests(2).await;
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_pollhook"))
        .args(["status", "-c"])
        .arg(&path)
        .output()
        .await
        .unwrap();
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        table.contains("data") && table.contains("every 100ms"),
        "{table}"
    );
    daemon.stop().await;

    // A socket left behind by a killed daemon is replaced...
    let stale = std::os::unix::net::UnixListener::bind(&socket);
    drop(stale);
    let daemon = Daemon::start(Config::load(&path).unwrap());
    eventually("the socket answers again", || {
        std::os::unix::net::UnixStream::connect(&socket).is_ok()
    })
    .await;
    // ...but one something answers on is not.
    let other_state = tempfile::tempdir().unwrap();
    let mut other = Config::load(&path).unwrap();
    other.state_dir = other_state.path().to_path_buf();
    let error = pollhook::daemon::run(other, Default::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("another process listens on it"), "{error}");
    daemon.stop().await;
}

/// A `listen` path that holds anything but a socket is left alone.
#[tokio::test]
async fn a_unix_socket_path_never_replaces_another_file() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    std::fs::write(&socket, "precious").unwrap();
    let text = format!(
        "state_dir = \"{}\"\n[admin]\nlisten = \"unix:{}\"\n\
         [[endpoint]]\nname = \"e\"\nurl = \"http://127.0.0.1:1/\"\nevery = \"1m\"\n",
        dir.path().display(),
        socket.display()
    );
    let config = Config::compile(&text, Path::new("test.toml")).unwrap();
    let error = pollhook::daemon::run(config, Default::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("something other than a socket is there"),
        "{error}"
    );
    assert_eq!(std::fs::read_to_string(&socket).unwrap(), "precious");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_asked_for_or_reconfigured_while_polling_never_overlap() {
    const YEARLY: &str = "cron = \"0 0 1 1 *\"";
    const UNUSED: &str =
        "[[endpoint]]\nname = \"unused\"\nurl = \"http://127.0.0.1:1/\"\ncron = \"0 0 1 1 *\"\n";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    let mut slow = Reply::json(r#"{"a":1}"#);
    slow.delay = Duration::from_millis(500);
    let api = Api::start(slow).await;
    let receiver = Receiver::start().await;
    // Polled only when asked: the first regular poll falls somewhere in
    // 1000 h, or on the next 1 January.
    // With an endpoint that stays and never polls: a config has one at least.
    let slow_endpoint = |schedule: &str| {
        format!(
            "[[endpoint]]\nname = \"slow\"\nurl = \"{}\"\n{schedule}\n{UNUSED}",
            api.url()
        )
    };
    let (daemon, admin) =
        start_daemon(dir.path(), &slow_endpoint("every = \"1000h\""), &receiver).await;
    let poll_now = || post(format!("{admin}/api/v1/endpoints/slow/poll"), None);
    let reload = |endpoints: &str| {
        write_config(&path, dir.path(), endpoints, &receiver, "");
        post(format!("{admin}/api/v1/reload"), None)
    };

    // Asked three times during a poll: one more poll, after it.
    assert_eq!(poll_now().await.0, 202);
    eventually("the poll runs", || api.in_flight() == 1).await;
    for _ in 0..3 {
        assert_eq!(poll_now().await.0, 202);
    }
    eventually("the second poll has ended", || {
        api.requests() == 2 && api.in_flight() == 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(api.requests(), 2, "the three asks made one poll");
    assert_eq!(api.most_at_once(), 1);

    // Changed during a poll: that poll is abandoned and the endpoint goes
    // on with its new config, on its new schedule.
    assert_eq!(poll_now().await.0, 202);
    eventually("the poll runs", || api.requests() == 3).await;
    let (status, answer) = reload(&slow_endpoint(YEARLY)).await;
    assert_eq!(
        (status, answer["reloaded"].as_str()),
        (200, Some("0 started, 0 stopped, 1 restarted"))
    );
    let view = get_json(format!("{admin}/api/v1/endpoints/slow")).await;
    assert_eq!(view["schedule"], "cron `0 0 1 1 *`");
    assert_eq!(poll_now().await.0, 202);
    eventually("the new config polls", || api.requests() == 4).await;

    // Removed during a poll and back before it could end: it polls again
    // when asked, and only then.
    let (status, answer) = reload(UNUSED).await;
    assert_eq!(
        (status, answer["reloaded"].as_str()),
        (200, Some("0 started, 1 stopped, 0 restarted"))
    );
    assert_eq!(poll_now().await.0, 404);
    let (status, answer) = reload(&slow_endpoint(YEARLY)).await;
    assert_eq!(
        (status, answer["reloaded"].as_str()),
        (200, Some("1 started, 0 stopped, 0 restarted"))
    );
    assert_eq!(poll_now().await.0, 202);
    eventually("the endpoint is back", || api.requests() == 5).await;
    eventually("every poll has ended", || api.in_flight() == 0).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(api.requests(), 5, "no poll was made twice");

    // Changed while waiting: it waits for its new schedule, and says so.
    let (status, answer) = reload(&slow_endpoint("cron = \"0 0 1 7 *\"")).await;
    assert_eq!(
        (status, answer["reloaded"].as_str()),
        (200, Some("0 started, 0 stopped, 1 restarted"))
    );
    let view = get_json(format!("{admin}/api/v1/endpoints/slow")).await;
    // To the nearest second: the wait is measured, not read from a clock.
    let next_ms = view["next_poll_ms"].as_i64().expect("a next poll");
    let next = chrono::DateTime::from_timestamp_millis(next_ms + 500).unwrap();
    assert_eq!((next.month(), next.day()), (7, 1), "{view}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cron_years_ahead_or_in_the_past_just_waits() {
    let dir = tempfile::tempdir().unwrap();
    let (leap_api, past_api, data_api) = (
        Api::start(Reply::json("{}")).await,
        Api::start(Reply::json("{}")).await,
        Api::start(Reply::json("{}")).await,
    );
    let receiver = Receiver::start().await;
    // Seconds, minutes, hours, day, month, weekday, year: further ahead than
    // the timer wheel reaches, and a year gone by.
    let endpoints = format!(
        "[[endpoint]]\nname = \"leap\"\nurl = \"{}\"\ncron = \"0 0 0 29 2 * 2096\"\n\
         [[endpoint]]\nname = \"past\"\nurl = \"{}\"\ncron = \"0 0 0 1 1 * 2020\"\n{}",
        leap_api.url(),
        past_api.url(),
        endpoint("data", &data_api, "")
    );
    let (daemon, admin) = start_daemon(dir.path(), &endpoints, &receiver).await;
    data_api.wait_for_requests(3).await;

    let leap = get_json(format!("{admin}/api/v1/endpoints/leap")).await;
    let due_ms = chrono::NaiveDate::from_ymd_opt(2096, 2, 29)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
        .timestamp_millis();
    let next_ms = leap["next_poll_ms"].as_i64().expect("a next poll");
    assert!((next_ms - due_ms).abs() < 1000, "{leap}");
    let past = get_json(format!("{admin}/api/v1/endpoints/past")).await;
    assert_eq!(past["next_poll_ms"], Value::Null, "never: {past}");

    // Asked, the past one polls once, and then waits for ever again.
    let (status, _) = post(format!("{admin}/api/v1/endpoints/past/poll"), None).await;
    assert_eq!(status, 202);
    // The poll may be answered before the POST's reply is read.
    eventually("the asked poll arrives", || past_api.requests() >= 1).await;
    eventually("the poll is recorded", || past_api.in_flight() == 0).await;
    let mut past = Value::Null;
    for _ in 0..100 {
        past = get_json(format!("{admin}/api/v1/endpoints/past")).await;
        if !past["last_poll_ms"].is_null() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(past["consecutive_failures"], 0, "{past}");
    assert_eq!(past["next_poll_ms"], Value::Null, "{past}");
    assert_eq!((leap_api.requests(), past_api.requests()), (0, 1));
    daemon.stop().await;
}

/// Replay by filter is one call, whoever makes it: the CLI's `replay --dead`
/// and the API's `POST /api/v1/replay`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_by_filter_is_one_call() {
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start(Reply::json(r#"{"a":1}"#)).await;
    let receiver = Receiver::start().await;
    receiver.answer(500);
    let endpoints: String = ["one", "two", "three"]
        .iter()
        .map(|name| endpoint(name, &api, "emit_initial = true"))
        .collect();
    let (daemon, admin) = start_daemon(dir.path(), &endpoints, &receiver).await;
    eventually("three dead letters", || receiver.all().len() == 6).await;
    for _ in 0..500 {
        let dead = get_json(format!("{admin}/api/v1/dead")).await;
        if dead.as_array().unwrap().len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    receiver.answer(204);
    let (status, answer) = post(format!("{admin}/api/v1/replay?target=receiver"), None).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["replayed"], 3, "{answer}");
    eventually("the replays are delivered", || {
        receiver.accepted().len() == 3
    })
    .await;
    let (status, answer) = post(format!("{admin}/api/v1/replay?ids=msg_nope"), None).await;
    assert_eq!(status, 404, "{answer}");
    daemon.stop().await;
}

/// After a restart each endpoint goes on from its last poll: one polled 5
/// minutes ago with `every = "1h"` waits the other 55, one due in 300 ms
/// polls then, an overdue one soon; the shutdown stores the last polls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resumes_each_schedule_from_its_last_poll() {
    let dir = tempfile::tempdir().unwrap();
    let apis = [
        Api::start(Reply::json("{}")).await,
        Api::start(Reply::json("{}")).await,
        Api::start(Reply::json("{}")).await,
    ];
    let receiver = Receiver::start().await;
    let started_ms = pollhook::clock::now_ms();
    let (hour, minute) = (3_600_000, 60_000);
    {
        let store = pollhook::store::Store::open(dir.path()).unwrap();
        store
            .record_polls([
                ("recent", started_ms - 5 * minute),
                // Due two seconds after the test began: late enough for a
                // start-up on a loaded machine, so it is not yet overdue.
                ("due", started_ms - hour + 2000),
                ("overdue", started_ms - 24 * hour),
            ])
            .unwrap();
    }
    let endpoints = format!(
        "[[endpoint]]\nname = \"recent\"\nurl = \"{}\"\nevery = \"1h\"\n\
         [[endpoint]]\nname = \"due\"\nurl = \"{}\"\nevery = \"1h\"\n\
         [[endpoint]]\nname = \"overdue\"\nurl = \"{}\"\nevery = \"1s\"\n",
        apis[0].url(),
        apis[1].url(),
        apis[2].url()
    );
    let (daemon, admin) = start_daemon(dir.path(), &endpoints, &receiver).await;
    // Either may have polled before the daemon was seen listening.
    eventually("the due one polls", || apis[1].requests() >= 1).await;
    eventually("the overdue one polls", || apis[2].requests() >= 1).await;
    let recent = get_json(format!("{admin}/api/v1/endpoints/recent")).await;
    let next_ms = recent["next_poll_ms"].as_u64().expect("a next poll");
    let expected_ms = started_ms - 5 * minute + hour;
    assert!(next_ms.abs_diff(expected_ms) < 2000, "{recent}");
    assert_eq!(apis[0].requests(), 0);
    daemon.stop().await;

    let store = pollhook::store::Store::open(dir.path()).unwrap();
    let due_ms = store.last_poll_ms("due").unwrap().unwrap();
    assert!(due_ms >= started_ms, "the shutdown stored the new poll");
    assert_eq!(
        store.last_poll_ms("recent").unwrap(),
        Some(started_ms - 5 * minute)
    );
}

/// `pollhook pause` and `resume`, with the daemon and without: a paused
/// endpoint is not polled (while another goes on) across a restart, shows
/// as paused with no next poll, polls once when asked, and polls again
/// once resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_endpoint_is_not_polled_until_resumed_even_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let (paused, other) = (
        Api::start(Reply::json("{}")).await,
        Api::start(Reply::json("{}")).await,
    );
    let receiver = Receiver::start().await;
    let endpoints = endpoint("held", &paused, "") + &endpoint("other", &other, "");
    let config = dir.path().join("config.toml");
    let cli = |args: &'static [&'static str]| {
        let config = config.clone();
        async move {
            let mut all = args.to_vec();
            all.extend(["-c", config.to_str().unwrap()]);
            let output = crate::cli::run(&all).await;
            let out = crate::cli::text(&output.stdout);
            assert!(
                output.status.success(),
                "{args:?}: {out}{}",
                crate::cli::text(&output.stderr)
            );
            out
        }
    };
    // While the other endpoint polls five times, the paused one polls at
    // most once (a poll that was running when it was paused).
    let stays_paused = |before: usize| {
        let (paused, other) = (&paused, &other);
        async move {
            let target = other.requests() + 5;
            eventually("the other endpoint polls on", || other.requests() >= target).await;
            assert!(paused.requests() <= before + 1, "polled while paused");
            paused.requests()
        }
    };

    let (daemon, admin) = start_daemon(dir.path(), &endpoints, &receiver).await;
    eventually("both poll", || {
        paused.requests() > 0 && other.requests() > 0
    })
    .await;
    assert!(
        cli(&["pause", "held"])
            .await
            .contains("endpoint `held` paused since")
    );
    let before = stays_paused(paused.requests()).await;
    let view = get_json(format!("{admin}/api/v1/endpoints/held")).await;
    assert!(view["paused_since_ms"].as_u64().is_some(), "{view}");
    assert!(view["next_poll_ms"].is_null(), "{view}");
    assert!(cli(&["status"]).await.contains("paused since"));
    let before = stays_paused(before).await;

    // Asked to, it polls once and stays paused.
    let (status, _) = post(format!("{admin}/api/v1/endpoints/held/poll"), None).await;
    assert_eq!(status, 202);
    eventually("the poll asked for", || paused.requests() > before).await;
    let before = stays_paused(paused.requests()).await;

    daemon.stop().await;
    let (daemon, _) = start_daemon(dir.path(), &endpoints, &receiver).await;
    let before = stays_paused(before).await;
    assert!(
        cli(&["resume", "held"])
            .await
            .contains("endpoint `held` resumed")
    );
    eventually("polled again", || paused.requests() >= before + 3).await;
    assert!(cli(&["resume", "held"]).await.contains("was not paused"));
    daemon.stop().await;

    // Without the daemon, the store keeps the pause for its next start.
    assert!(cli(&["pause", "held"]).await.contains("paused since"));
    let status = crate::cli::run(&["status", "-c", config.to_str().unwrap()]).await;
    assert!(crate::cli::text(&status.stdout).contains("paused since"));
    let before = paused.requests();
    let (daemon, admin) = start_daemon(dir.path(), &endpoints, &receiver).await;
    stays_paused(before).await;
    let (status, answer) = post(format!("{admin}/api/v1/endpoints/held/resume"), None).await;
    assert_eq!((status, &answer["resumed"]), (200, &Value::Bool(true)));
    eventually("polled again", || paused.requests() > before + 1).await;
    let (status, _) = post(format!("{admin}/api/v1/endpoints/nosuch/pause"), None).await;
    assert_eq!(status, 404);
    daemon.stop().await;
}
