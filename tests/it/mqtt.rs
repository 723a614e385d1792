//! MQTT targets against a real mosquitto, started here on 127.0.0.1 with a
//! config of its own: events at QoS 1, the retained state, a broker
//! restart, Home Assistant discovery and the last will, credentials.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pollhook::store::Store;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use tokio::process::{Child, Command};

use crate::support::{Api, Daemon, Reply, config, eventually};

/// Where Debian puts the broker, for a PATH without the sbin directories.
const DEBIAN_MOSQUITTO: &str = "/usr/sbin/mosquitto";

/// The broker's binary; a test without it fails, saying what to install.
fn mosquitto() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join("mosquitto"))
        .find(|path| path.is_file());
    on_path
        .or_else(|| Some(PathBuf::from(DEBIAN_MOSQUITTO)).filter(|path| path.is_file()))
        .expect(
            "mosquitto is not installed: run the tests with `scripts/test`, which installs it \
             (or `apt-get install mosquitto`)",
        )
}

/// A mosquitto of the test's own on a free port of 127.0.0.1. It keeps its
/// sessions and retained messages on disk across a restart, as a real
/// broker does (in the test's temp dir, so started as root it keeps its
/// user instead of becoming `mosquitto`, who could not write there).
struct Broker {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Broker {
    async fn start() -> Broker {
        Broker::start_with("").await
    }

    /// With `extra` lines for its listener (`certfile`, ...).
    async fn start_with(extra: &str) -> Broker {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("mosquitto.conf"),
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n\
                 persistence_location {}/\nuser root\nlog_dest stderr\nlog_type error\n{extra}\n",
                dir.path().display()
            ),
        )
        .unwrap();
        let mut broker = Broker {
            port,
            dir,
            child: None,
        };
        broker.run().await;
        broker
    }

    async fn run(&mut self) {
        let child = Command::new(mosquitto())
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let address = format!("127.0.0.1:{}", self.port);
        eventually("mosquitto listens", || {
            std::net::TcpStream::connect(&address).is_ok()
        })
        .await;
    }

    /// Stops it as `systemctl stop` would; it saves its sessions.
    async fn stop(&mut self) {
        let mut child = self.child.take().unwrap();
        let pid = child.id().unwrap().to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .unwrap()
            .unwrap();
    }

    fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }
}

#[derive(Debug, Clone)]
struct Received {
    topic: String,
    payload: Vec<u8>,
    qos: QoS,
    retain: bool,
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.payload).unwrap()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

/// A client subscribed to `filter` at QoS 2 (so a message arrives at the
/// QoS it was published with). With a `session`, the broker keeps its
/// subscription and queues its messages while it is away.
struct Subscriber {
    received: Arc<Mutex<Vec<Received>>>,
    _task: tokio::task::JoinHandle<()>,
}

impl Subscriber {
    async fn start(broker: &Broker, filter: &str, session: Option<&str>) -> Subscriber {
        let id = session.map_or_else(|| format!("test-{}", rand_id()), str::to_string);
        let mut options = MqttOptions::new(id, "127.0.0.1", broker.port);
        options
            .set_clean_session(session.is_none())
            .set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = AsyncClient::new(options, 16);
        let received = Arc::new(Mutex::new(Vec::new()));
        let subscribed = Arc::new(Mutex::new(false));
        let task = {
            let (received, subscribed) = (received.clone(), subscribed.clone());
            let filter = filter.to_string();
            tokio::spawn(async move {
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            client.subscribe(&filter, QoS::ExactlyOnce).await.unwrap();
                        }
                        Ok(Event::Incoming(Packet::SubAck(_))) => {
                            *subscribed.lock().unwrap() = true
                        }
                        Ok(Event::Incoming(Packet::Publish(publish))) => {
                            received.lock().unwrap().push(Received {
                                topic: publish.topic.clone(),
                                payload: publish.payload.to_vec(),
                                qos: publish.qos,
                                retain: publish.retain,
                            })
                        }
                        Ok(_) => {}
                        // The broker is away: rumqttc reconnects at the next poll.
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
            })
        };
        eventually("the subscription is acknowledged", || {
            *subscribed.lock().unwrap()
        })
        .await;
        Subscriber {
            received,
            _task: task,
        }
    }

    fn all(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    fn on(&self, topic: &str) -> Vec<Received> {
        self.all()
            .into_iter()
            .filter(|m| m.topic == topic)
            .collect()
    }

    /// The last message on `topic`, waiting for one that `wanted` accepts.
    async fn wait_for(&self, topic: &str, wanted: impl Fn(&Received) -> bool) -> Received {
        eventually(&format!("a message on `{topic}`"), || {
            self.on(topic).last().is_some_and(&wanted)
        })
        .await;
        self.on(topic).pop().unwrap()
    }
}

fn rand_id() -> String {
    pollhook::event::new_id()
}

/// Sixty retries 100 ms apart: a broker away for a few seconds loses nothing.
fn patient_retry() -> String {
    let waits = vec!["\"100ms\""; 60].join(", ");
    format!("[{waits}]")
}

/// One MQTT target and one endpoint `data` polled every 100 ms.
fn mqtt_config(state: &Path, api: &Api, target: &str) -> pollhook::config::Config {
    config(
        state,
        &format!(
            r#"
[[target]]
name = "mqtt"
retry = {}
{target}

[[endpoint]]
name = "data"
url = "{}"
every = "100ms"
"#,
            patient_retry(),
            api.url()
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arrive_on_their_topic_at_qos_1_and_leave_the_outbox() {
    let broker = Broker::start().await;
    let subscriber = Subscriber::start(&broker, "#", None).await;
    let state = tempfile::tempdir().unwrap();
    let api = Api::start(Reply::json(r#"{"a":1}"#)).await;
    let target = format!(
        "url = \"{}\"\ntopic = \"home/{{{{ endpoint }}}}/{{{{ type }}}}/v{{{{ data.version }}}}\"",
        broker.url()
    );
    let daemon = Daemon::start(mqtt_config(state.path(), &api, &target));
    api.wait_for_requests(2).await;
    api.set(Reply::json(r#"{"a":2}"#));
    let event = subscriber
        .wait_for("home/data/endpoint.changed/v2", |_| true)
        .await;
    daemon.stop().await;

    assert_eq!(event.qos, QoS::AtLeastOnce, "published at QoS 1");
    assert!(!event.retain, "events are not retained");
    let body = event.json();
    assert!(body["id"].as_str().unwrap().starts_with("msg_"), "{body}");
    assert_eq!(body["type"], "endpoint.changed");
    assert_eq!(body["data"]["endpoint"], "data");
    assert_eq!(
        body["data"]["patch"],
        serde_json::json!([{"op": "replace", "path": "/a", "value": 2}])
    );
    let store = Store::open(state.path()).unwrap();
    assert_eq!(store.outbox_len(), 0, "removed once the PUBACK came");
    let log = store.attempt_log("mqtt").unwrap();
    assert!(
        log.iter()
            .any(|record| record.event_id == body["id"] && record.error.is_none()),
        "{log:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_loses_nothing_and_keeps_the_ids() {
    let mut broker = Broker::start().await;
    // A session the broker keeps: it queues what comes while we are away.
    let subscriber =
        Subscriber::start(&broker, "pollhook/data/endpoint.changed", Some("watcher")).await;
    let state = tempfile::tempdir().unwrap();
    let api = Api::start(Reply::json(r#"{"a":1}"#)).await;
    let target = format!("url = \"{}\"", broker.url());
    let daemon = Daemon::start(mqtt_config(state.path(), &api, &target));
    api.wait_for_requests(2).await;
    api.set(Reply::json(r#"{"a":2}"#));
    subscriber
        .wait_for("pollhook/data/endpoint.changed", |_| true)
        .await;

    broker.stop().await;
    for value in 3..=5 {
        api.set(Reply::json(&format!(r#"{{"a":{value}}}"#)));
        api.wait_for_requests(3).await;
    }
    broker.run().await;
    eventually("every change arrives", || {
        let versions: BTreeSet<u64> = subscriber
            .all()
            .iter()
            .filter_map(|message| message.json()["data"]["version"].as_u64())
            .collect();
        versions == BTreeSet::from([2, 3, 4, 5])
    })
    .await;
    daemon.stop().await;

    // At least once: a message may come twice, never with another id.
    let mut ids: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    for message in subscriber.all() {
        let body = message.json();
        ids.entry(body["data"]["version"].as_u64().unwrap())
            .or_default()
            .insert(body["id"].as_str().unwrap().to_string());
    }
    assert!(ids.values().all(|ids| ids.len() == 1), "{ids:#?}");
    let store = Store::open(state.path()).unwrap();
    assert_eq!(store.outbox_len(), 0);
    assert!(store.dead_rows(None).unwrap().is_empty());
    // The events of the outage failed while it lasted, and were then
    // delivered under the ids they failed with.
    let log = store.attempt_log("mqtt").unwrap();
    for version in 3..=5 {
        let id = ids[&version].first().unwrap();
        let attempts: Vec<_> = log.iter().filter(|record| &record.event_id == id).collect();
        assert!(
            attempts.iter().any(|record| record.error.is_some()),
            "v{version} failed while the broker was away: {attempts:#?}"
        );
        assert!(
            attempts.last().unwrap().error.is_none(),
            "v{version}: {attempts:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_subscriber_sees_the_current_state() {
    let broker = Broker::start().await;
    let state = tempfile::tempdir().unwrap();
    let api = Api::start(Reply::json(r#"{"a":1,"b":[1,2]}"#)).await;
    let target = format!("url = \"{}\"", broker.url());
    let daemon = Daemon::start(mqtt_config(state.path(), &api, &target));
    let early = Subscriber::start(&broker, "pollhook/data/state", None).await;
    api.wait_for_requests(2).await;
    api.set(Reply::json(r#"{"a":7,"b":[1,2]}"#));
    early
        .wait_for("pollhook/data/state", |message| {
            message.payload == br#"{"a":7,"b":[1,2]}"#
        })
        .await;

    let late = Subscriber::start(&broker, "pollhook/data/state", None).await;
    let state_message = late.wait_for("pollhook/data/state", |_| true).await;
    daemon.stop().await;
    assert!(
        state_message.retain,
        "the broker kept it for later subscribers"
    );
    assert_eq!(
        state_message.json(),
        serde_json::json!({"a": 7, "b": [1, 2]})
    );
    assert_eq!(late.all().len(), 1, "{:#?}", late.all());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_configs_follow_home_assistants_schema() {
    let broker = Broker::start().await;
    let subscriber = Subscriber::start(&broker, "#", None).await;
    let state = tempfile::tempdir().unwrap();
    let api = Api::start(Reply::json(r#"{"price":19.99}"#)).await;
    let target = format!("url = \"{}\"\nhomeassistant = true", broker.url());
    let daemon = Daemon::start(mqtt_config(state.path(), &api, &target));
    subscriber
        .wait_for("pollhook/status", |message| message.payload == b"online")
        .await;
    subscriber
        .wait_for("pollhook/data/failing", |message| message.payload == b"OFF")
        .await;
    api.wait_for_requests(2).await;
    api.set(Reply::json(r#"{"price":14.99}"#));
    subscriber.wait_for("pollhook/data/state", |_| true).await;
    daemon.stop().await;
    subscriber
        .wait_for("pollhook/status", |message| message.payload == b"offline")
        .await;

    // Home Assistant starting later gets all of it from the broker.
    let late = Subscriber::start(&broker, "#", None).await;
    let sensor = late
        .wait_for("homeassistant/sensor/pollhook/data/config", |_| true)
        .await;
    let failing = late
        .wait_for("homeassistant/binary_sensor/pollhook/data/config", |_| true)
        .await;
    let offline = late.wait_for("pollhook/status", |_| true).await;
    let state_message = late.wait_for("pollhook/data/state", |_| true).await;
    assert_eq!(offline.payload, b"offline");
    assert!(sensor.retain && failing.retain && offline.retain && state_message.retain);
    assert_eq!(sensor.qos, QoS::AtLeastOnce);
    for (config, state_topic) in [
        (sensor.json(), "pollhook/data/state"),
        (failing.json(), "pollhook/data/failing"),
    ] {
        // What Home Assistant's MQTT discovery requires of a sensor and a
        // binary sensor, and what makes them one device, editable, and
        // unavailable while pollhook is not running.
        assert!(config.is_object(), "the payload is a JSON dictionary");
        assert_eq!(config["state_topic"], state_topic, "{config}");
        assert!(
            config["unique_id"]
                .as_str()
                .unwrap()
                .starts_with("pollhook_data")
        );
        assert_eq!(
            config["availability"],
            serde_json::json!([{
                "topic": "pollhook/status",
                "payload_available": "online",
                "payload_not_available": "offline",
            }])
        );
        assert!(config.get("availability_topic").is_none(), "not both ways");
        assert_eq!(
            config["device"]["identifiers"],
            serde_json::json!(["pollhook_data"])
        );
        assert_eq!(config["device"]["name"], "data");
        assert_eq!(config["origin"]["name"], "pollhook");
        assert_eq!(config["qos"], 1);
    }
    let sensor = sensor.json();
    let failing = failing.json();
    assert_ne!(sensor["unique_id"], failing["unique_id"]);
    assert!(
        sensor["value_template"]
            .as_str()
            .unwrap()
            .contains("value_json")
    );
    assert_eq!(sensor["json_attributes_topic"], "pollhook/data/state");
    assert!(
        sensor["json_attributes_template"]
            .as_str()
            .unwrap()
            .contains("tojson")
    );
    assert_eq!(failing["device_class"], "problem");
    assert_eq!(
        (&failing["payload_on"], &failing["payload_off"]),
        (&"ON".into(), &"OFF".into())
    );
    assert_eq!(state_message.json(), serde_json::json!({"price": 14.99}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_that_vanishes_is_offline_by_its_last_will() {
    let broker = Broker::start().await;
    let subscriber = Subscriber::start(&broker, "pollhook/status", None).await;
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start(Reply::json(r#"{"a":1}"#)).await;
    let path = dir.path().join("config.toml");
    std::fs::write(
        &path,
        format!(
            "state_dir = \"{}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
             [[target]]\nname = \"mqtt\"\nurl = \"{}\"\n\n\
             [[endpoint]]\nname = \"data\"\nurl = \"{}\"\nevery = \"1s\"\n",
            dir.path().join("state").display(),
            broker.url(),
            api.url()
        ),
    )
    .unwrap();
    let mut child = crate::cli::binary()
        .args(["run", "-c", path.to_str().unwrap()])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    subscriber
        .wait_for("pollhook/status", |message| message.text() == "online")
        .await;
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    // The broker notices the dead connection at once (its socket closes).
    subscriber
        .wait_for("pollhook/status", |message| message.text() == "offline")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_used_and_never_shown() {
    let mut broker = Broker::start().await;
    // A broker that only lets `pollhook` in, with its password.
    let passwords = broker.dir().join("passwords");
    let made = std::process::Command::new("mosquitto_passwd")
        .args([
            "-b",
            "-c",
            passwords.to_str().unwrap(),
            "pollhook",
            "s3cret-pass",
        ])
        .status()
        .expect("mosquitto_passwd (in Debian's mosquitto package) runs");
    assert!(made.success());
    let conf = broker.dir().join("mosquitto.conf");
    let text = std::fs::read_to_string(&conf).unwrap();
    std::fs::write(
        &conf,
        text.replace("allow_anonymous true", "allow_anonymous false")
            + &format!("password_file {}\n", passwords.display()),
    )
    .unwrap();
    broker.stop().await;
    broker.run().await;

    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, password: &str| {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!(
                "state_dir = \"{}\"\n[[target]]\nname = \"mqtt\"\nurl = \"{}\"\n\
                 username = \"pollhook\"\npassword = \"{password}\"\n\n\
                 [[endpoint]]\nname = \"data\"\nurl = \"http://127.0.0.1:1/\"\nevery = \"1m\"\n",
                dir.path().display(),
                broker.url(),
            ),
        )
        .unwrap();
        path
    };
    // `pollhook test` publishes through the connection the daemon uses.
    let good = write("good.toml", "${POLLHOOK_TEST_MQTT_PASSWORD}");
    let output = crate::cli::binary()
        .args(["test", "mqtt", "-c", good.to_str().unwrap()])
        .env("POLLHOOK_TEST_MQTT_PASSWORD", "s3cret-pass")
        .output()
        .await
        .unwrap();
    let printed = crate::cli::text(&output.stdout) + &crate::cli::text(&output.stderr);
    assert!(output.status.success(), "{printed}");
    assert!(printed.contains("sent pollhook.test"), "{printed}");
    assert!(!printed.contains("s3cret-pass"), "{printed}");

    let wrong = write("wrong.toml", "wrong-pass");
    let output = crate::cli::run(&["test", "mqtt", "-c", wrong.to_str().unwrap()]).await;
    let printed = crate::cli::text(&output.stdout) + &crate::cli::text(&output.stderr);
    assert!(!output.status.success(), "{printed}");
    assert!(printed.contains("refused"), "{printed}");
    assert!(!printed.contains("wrong-pass"), "{printed}");

    let config = pollhook::config::Config::load(&wrong).unwrap();
    let shown = format!("{config:?}");
    assert!(
        !shown.contains("wrong-pass") && !shown.contains("\"pollhook\""),
        "{shown}"
    );
}

#[tokio::test]
async fn check_locates_every_mistake_in_mqtt_targets_without_secrets() {
    let file = crate::cli::data("bad-mqtt.toml");
    let output = crate::cli::run(&["check", "-c", file.to_str().unwrap()]).await;
    let stderr = crate::cli::text(&output.stderr);
    assert_eq!(output.status.code(), Some(78), "{stderr}");
    let expected = [
        "3:7: target `broker`: invalid URL `mqtt://pollhook:***@broker.local`: put the user name in `username`",
        "8:10: target `ha`: `secret` is only used with an `http://` or `https://` url",
        "9:12: target `ha`: `password` needs `username`",
        "10:9: target `ha`: invalid `topic`: the topic `home/example/#` cannot be published on: it holds a wildcard",
        "11:13: target `ha`: invalid `client_id`",
        "12:17: target `ha`: invalid type: string \"yes\", expected a boolean",
        "17:9: target `templated`: invalid `topic`: syntax error",
        "22:9: target `hook`: `topic` is only used with an `mqtt://` or `mqtts://` url",
        "23:17: target `hook`: `homeassistant` is only used with an `mqtt://` or `mqtts://` url",
    ];
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), expected.len(), "{stderr}");
    for (line, expected) in lines.iter().zip(expected) {
        assert!(
            line.contains(&format!("bad-mqtt.toml:{expected}")),
            "expected `{expected}` in `{line}`"
        );
    }
    assert!(!stderr.contains("hunter2"), "the password leaked: {stderr}");
}

/// A broker behind a private CA that wants client certificates: refused
/// until the target trusts the CA (`ca_file`, or the system's store) and
/// shows a certificate (`client_cert`, `client_key`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtts_checks_the_brokers_certificate_and_shows_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let ca = crate::support::TestCa::new();
    let [ca_file, cert_file, key_file] = ca.write(dir.path(), "broker");
    ca.write(dir.path(), "pollhook");
    let broker = Broker::start_with(&format!(
        "certfile {}\nkeyfile {}\ncafile {}\nrequire_certificate true",
        cert_file.display(),
        key_file.display(),
        ca_file.display(),
    ))
    .await;
    let url = format!("mqtts://127.0.0.1:{}", broker.port);
    let test = |name: &str, extra: &str, system_ca: bool| {
        let config = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "[[target]]\nname = \"tls\"\nurl = \"{url}\"\n{extra}\n\n\
                 [[endpoint]]\nname = \"data\"\nurl = \"http://127.0.0.1:1/\"\nevery = \"1m\"\n"
            ),
        )
        .unwrap();
        let mut command = crate::cli::binary();
        command.args(["test", "tls", "-c", config.to_str().unwrap()]);
        if system_ca {
            command.env("SSL_CERT_FILE", &ca_file);
        }
        async move {
            let output = command.output().await.unwrap();
            let printed = crate::cli::text(&output.stdout) + &crate::cli::text(&output.stderr);
            (output.status.success(), printed)
        }
    };
    let identity = "client_cert = \"pollhook.pem\"\nclient_key = \"pollhook.key\"";
    let (ok, printed) = test("unknown-ca", identity, false).await;
    assert!(!ok, "an unknown CA is refused: {printed}");
    let (ok, printed) = test("no-certificate", "ca_file = \"ca.pem\"", false).await;
    assert!(!ok, "the broker wants a certificate: {printed}");
    for (name, extra, system_ca) in [
        (
            "ca-file",
            format!("ca_file = \"ca.pem\"\n{identity}"),
            false,
        ),
        ("system-ca", identity.to_string(), true),
        (
            "insecure",
            format!("tls_insecure = true\n{identity}"),
            false,
        ),
    ] {
        let (ok, printed) = test(name, &extra, system_ca).await;
        assert!(ok, "{name}: {printed}");
        assert!(printed.contains("sent pollhook.test"), "{name}: {printed}");
    }
}
