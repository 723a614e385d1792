//! NATS JetStream targets against a real `nats-server -js`, started here on
//! 127.0.0.1 with a store in a temp dir: a missing stream named, a stream
//! made, duplicates kept out by `Nats-Msg-Id`, and exactly one message per
//! webhook-id across kill -9 and restarts of the real binary; logins by
//! password, token, TLS with a private CA and a `.creds` file in operator
//! mode.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use async_nats::jetstream;
use pollhook::config::Config;
use pollhook::deliver::Link;
use pollhook::store::OutboxRow;
use serde_json::{Value, json};
use tokio::process::{Child, Command};

use crate::support::{Api, Reply, eventually, run_binary};

/// Where Debian puts the server, for a PATH without the sbin directories.
const DEBIAN_NATS_SERVER: &str = "/usr/sbin/nats-server";

/// The server's binary; a test without it fails, saying what to install.
fn nats_server() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join("nats-server"))
        .find(|path| path.is_file());
    on_path
        .or_else(|| Some(PathBuf::from(DEBIAN_NATS_SERVER)).filter(|path| path.is_file()))
        .expect(
            "nats-server is not installed: run the tests with `scripts/test`, which installs it \
             (or `apt-get install nats-server`)",
        )
}

/// A `nats-server -js` of the test's own on a free port of 127.0.0.1.
pub struct NatsServer {
    port: u16,
    _dir: tempfile::TempDir,
    _child: Child,
}

impl NatsServer {
    pub async fn start() -> NatsServer {
        NatsServer::start_with(&[]).await
    }

    /// With `args` too (`--user`, `--auth`, `--tls`, ...).
    pub async fn start_with(args: &[&str]) -> NatsServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new(nats_server())
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir.path())
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let address = format!("127.0.0.1:{port}");
        eventually("nats-server listens", || {
            std::net::TcpStream::connect(&address).is_ok()
        })
        .await;
        NatsServer {
            port,
            _dir: dir,
            _child: child,
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub async fn jetstream(&self) -> jetstream::Context {
        jetstream::new(async_nats::connect(self.url()).await.unwrap())
    }
}

/// One message of a stream: its `Nats-Msg-Id` and its event.
#[derive(Debug, Clone)]
pub struct Stored {
    pub id: String,
    pub subject: String,
    pub event: Value,
}

/// Every message in `stream`, oldest first (none if it does not exist).
pub async fn messages(context: &jetstream::Context, stream: &str) -> Vec<Stored> {
    let Ok(stream) = context.get_stream(stream).await else {
        return Vec::new();
    };
    let info = stream.get_info().await.unwrap();
    let mut stored = Vec::new();
    for sequence in info.state.first_sequence..=info.state.last_sequence {
        let Ok(message) = stream.get_raw_message(sequence).await else {
            continue;
        };
        stored.push(Stored {
            id: message
                .headers
                .get(async_nats::header::NATS_MESSAGE_ID)
                .map(|id| id.to_string())
                .unwrap_or_default(),
            subject: message.subject.to_string(),
            event: serde_json::from_slice(&message.payload).unwrap(),
        });
    }
    stored
}

fn row(id: &str, endpoint: &str, version: u64) -> OutboxRow {
    OutboxRow {
        event_id: id.to_string(),
        event_type: "endpoint.changed".to_string(),
        endpoint: endpoint.to_string(),
        body: format!(
            r#"{{"type":"endpoint.changed","timestamp":"2026-01-01T00:00:00Z","data":{{"endpoint":"{endpoint}","version":{version}}}}}"#
        ),
        ..OutboxRow::default()
    }
}

fn nats_config(server: &NatsServer, extra: &str) -> Config {
    let text = format!(
        "[[target]]\nname = \"stream\"\nurl = \"{}\"\ntimeout = \"5s\"\n{extra}\n\
         [[endpoint]]\nname = \"prices\"\nurl = \"http://127.0.0.1:9/\"\nevery = \"1m\"\n",
        server.url()
    );
    Config::compile(&text, Path::new("test.toml")).unwrap_or_else(|error| panic!("{error}"))
}

#[tokio::test]
async fn a_missing_stream_is_named_and_create_stream_makes_it() {
    let server = NatsServer::start().await;
    let clients = pollhook::deliver::clients().unwrap();

    let config = nats_config(&server, "stream = \"EVENTS\"");
    let target = config.targets[0].clone();
    let link = Link::open(&clients, &target, None);
    let attempt = link.attempt(&target, &row("msg_1", "prices", 2)).await;
    let error = attempt.error.unwrap();
    assert!(!attempt.acknowledged);
    assert!(
        error.contains("stream `EVENTS` is not on the NATS server"),
        "{error}"
    );
    assert!(error.contains("create_stream = true"), "{error}");

    let config = nats_config(&server, "stream = \"EVENTS\"\ncreate_stream = true");
    let target = config.targets[0].clone();
    let link = Link::open(&clients, &target, None);
    let attempt = link.attempt(&target, &row("msg_1", "prices", 2)).await;
    assert!(attempt.acknowledged, "{:?}", attempt.error);
    assert!(
        attempt.response.contains("stream EVENTS, sequence 1"),
        "{}",
        attempt.response
    );
    // The same event again (a retry after a lost PubAck): kept out.
    let again = link.attempt(&target, &row("msg_1", "prices", 2)).await;
    assert!(again.acknowledged);
    assert!(again.response.contains("a duplicate"), "{}", again.response);
    let other = link.attempt(&target, &row("msg_2", "prices", 3)).await;
    assert!(other.acknowledged);

    let stored = messages(&server.jetstream().await, "EVENTS").await;
    let ids: Vec<&str> = stored.iter().map(|message| message.id.as_str()).collect();
    assert_eq!(ids, ["msg_1", "msg_2"]);
    assert_eq!(stored[0].subject, "pollhook.events.prices");
    assert_eq!(stored[1].event["data"]["version"], 3);
}

#[tokio::test]
async fn a_subject_template_and_a_server_that_is_down() {
    let server = NatsServer::start().await;
    let clients = pollhook::deliver::clients().unwrap();
    let config = nats_config(
        &server,
        "subject = \"hooks.{{ type }}.{{ endpoint }}\"\nstream = \"HOOKS\"\ncreate_stream = true",
    );
    let target = config.targets[0].clone();
    let link = Link::open(&clients, &target, None);
    let attempt = link.attempt(&target, &row("msg_1", "a.b c", 2)).await;
    assert!(attempt.acknowledged, "{:?}", attempt.error);
    let stored = messages(&server.jetstream().await, "HOOKS").await;
    assert_eq!(stored[0].subject, "hooks.endpoint.changed.a_b_c");

    // Nothing listens: a failed attempt, retried later, never a panic.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text = format!(
        "[[target]]\nname = \"down\"\nurl = \"nats://127.0.0.1:{port}\"\ntimeout = \"1s\"\n\
         [[endpoint]]\nname = \"prices\"\nurl = \"http://127.0.0.1:9/\"\nevery = \"1m\"\n"
    );
    let config = Config::compile(&text, Path::new("test.toml")).unwrap();
    let target = config.targets[0].clone();
    let link = Link::open(&clients, &target, None);
    let attempt = link.attempt(&target, &row("msg_1", "prices", 2)).await;
    assert!(!attempt.acknowledged && !attempt.unsendable);
    assert!(
        attempt
            .error
            .unwrap()
            .contains("cannot connect to the NATS server"),
    );
}

/// Each way in that `nats-server` checks: user and password, a token, TLS
/// with a private CA (`tls://` and `ca_file`). A wrong secret is a failed
/// attempt that does not show it.
#[tokio::test]
async fn the_server_s_login_and_tls_are_honoured() {
    let clients = pollhook::deliver::clients().unwrap();
    let attempt = |server_url: String, keys: &str| {
        let text = format!(
            "[[target]]\nname = \"stream\"\nurl = \"{server_url}\"\ntimeout = \"5s\"\n\
             create_stream = true\n{keys}\n\
             [[endpoint]]\nname = \"prices\"\nurl = \"http://127.0.0.1:9/\"\nevery = \"1m\"\n"
        );
        let dir = std::env::temp_dir();
        let config =
            Config::compile(&text, &dir.join("test.toml")).unwrap_or_else(|e| panic!("{e}"));
        let target = config.targets[0].clone();
        let link = Link::open(&clients, &target, None);
        async move { link.attempt(&target, &row("msg_1", "prices", 2)).await }
    };

    let server = NatsServer::start_with(&["--user", "pollhook", "--pass", "hunter2"]).await;
    let ok = attempt(
        server.url(),
        "auth = { basic = { username = \"pollhook\", password = \"hunter2\" } }",
    )
    .await;
    assert!(ok.acknowledged, "{:?}", ok.error);
    let refused = attempt(
        server.url(),
        "auth = { basic = { username = \"pollhook\", password = \"wrong-secret\" } }",
    )
    .await;
    assert!(!refused.acknowledged);
    let error = refused.error.unwrap();
    assert!(!error.contains("wrong-secret"), "{error}");

    let server = NatsServer::start_with(&["--auth", "s3cr3t-token"]).await;
    let ok = attempt(server.url(), "auth = { bearer = \"s3cr3t-token\" }").await;
    assert!(ok.acknowledged, "{:?}", ok.error);
    let refused = attempt(server.url(), "").await;
    assert!(!refused.acknowledged);

    let certs = tempfile::tempdir().unwrap();
    let [ca, cert, key] = crate::support::TestCa::new().write(certs.path(), "nats");
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let server = NatsServer::start_with(&["--tls", "--tlscert", &cert, "--tlskey", &key]).await;
    let url = server.url().replace("nats://", "tls://");
    let untrusted = attempt(url.clone(), "").await;
    assert!(!untrusted.acknowledged);
    let ok = attempt(url, &format!("ca_file = \"{}\"", ca.display())).await;
    assert!(ok.acknowledged, "{:?}", ok.error);
}

/// A NATS server in operator mode, as NGS/Synadia Cloud and `nsc` set
/// them up: an operator trusts an account, which signs its users. A
/// `.creds` file holds a user's JWT and its NKey seed; one the account
/// signed logs in, one signed by an account the server does not know is
/// refused.
#[tokio::test]
async fn a_creds_file_logs_in_to_a_server_in_operator_mode() {
    let dir = tempfile::tempdir().unwrap();
    let operator = nkeys::KeyPair::new_operator();
    let account = nkeys::KeyPair::new_account();
    // JetStream in operator mode needs a system account.
    let system = nkeys::KeyPair::new_account();
    let system_jwt = jwt(&operator, &system, json!({"type": "account", "version": 2}));
    let operator_jwt = jwt(
        &operator,
        &operator,
        json!({"type": "operator", "version": 2}),
    );
    let account_jwt = jwt(
        &operator,
        &account,
        json!({
            "type": "account",
            "version": 2,
            "limits": {
                "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                "wildcards": true, "conn": -1, "leaf": -1,
                "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1
            }
        }),
    );
    let conf = dir.path().join("server.conf");
    std::fs::write(
        &conf,
        format!(
            "operator: {operator_jwt}\nsystem_account: {system}\nresolver: MEMORY\n\
             resolver_preload: {{\n  {system}: {system_jwt}\n  {}: {account_jwt}\n}}\n",
            account.public_key(),
            system = system.public_key(),
        ),
    )
    .unwrap();
    let server = NatsServer::start_with(&["-c", conf.to_str().unwrap()]).await;

    let clients = pollhook::deliver::clients().unwrap();
    let attempt = |creds: PathBuf| {
        let config = nats_config(
            &server,
            &format!("create_stream = true\ncreds = \"{}\"", creds.display()),
        );
        let target = config.targets[0].clone();
        let link = Link::open(&clients, &target, None);
        async move { link.attempt(&target, &row("msg_1", "prices", 2)).await }
    };
    let ok = attempt(creds_file(dir.path(), "user", &account)).await;
    assert!(ok.acknowledged, "{:?}", ok.error);
    let stranger = creds_file(dir.path(), "stranger", &nkeys::KeyPair::new_account());
    let refused = attempt(stranger).await;
    assert!(!refused.acknowledged && !refused.unsendable);
    let error = refused.error.unwrap();
    assert!(
        error.contains("cannot connect to the NATS server"),
        "{error}"
    );
}

/// A NATS JWT: `issuer` signs `nats` claims about `subject`.
fn jwt(issuer: &nkeys::KeyPair, subject: &nkeys::KeyPair, nats: Value) -> String {
    use base64::Engine;
    let encode = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let header = encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let claims = json!({
        "jti": subject.public_key(),
        "iat": 1_700_000_000,
        "iss": issuer.public_key(),
        "sub": subject.public_key(),
        "name": "pollhook-test",
        "nats": nats,
    });
    let signed = format!("{header}.{}", encode(claims.to_string().as_bytes()));
    let signature = issuer.sign(signed.as_bytes()).unwrap();
    format!("{signed}.{}", encode(&signature))
}

/// A new user of `account`, written as `nsc` writes a `.creds` file.
fn creds_file(dir: &Path, name: &str, account: &nkeys::KeyPair) -> PathBuf {
    let user = nkeys::KeyPair::new_user();
    let user_jwt = jwt(
        account,
        &user,
        json!({"type": "user", "version": 2, "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1}),
    );
    let path = dir.join(format!("{name}.creds"));
    std::fs::write(
        &path,
        format!(
            "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
             -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
            user.seed().unwrap()
        ),
    )
    .unwrap();
    path
}

#[test]
fn nats_keys_are_checked_where_they_are_written() {
    let text = r#"[[target]]
name = "stream"
url = "nats://127.0.0.1:4222"
stream = "a.b"
subject = "x.*"
creds = "missing.creds"
auth = { bearer = "t" }
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

[[target]]
name = "hook"
url = "http://127.0.0.1:9/"
stream = "S"
create_stream = true

[[target]]
name = "path"
url = "nats://127.0.0.1:4222/x"

[cluster]
shard = "4/3"
lease = "1s"

[[endpoint]]
name = "e"
url = "http://127.0.0.1:9/"
every = "1m"
"#;
    let error = Config::compile(text, Path::new("test.toml"))
        .unwrap_err()
        .to_string();
    for expected in [
        "test.toml:4:10: target `stream`: invalid `stream` `a.b`",
        "test.toml:5:11: target `stream`: invalid `subject`: the subject `x.*` cannot be published on: it holds a wildcard",
        "test.toml:6:9: target `stream`: cannot read `creds`",
        "target `stream`: set `creds` or `auth`, not both",
        "test.toml:8:10: target `stream`: `secret` is for HTTP targets, not NATS",
        "test.toml:13:10: target `hook`: `stream` is only used with a `nats://` or `tls://` url",
        "test.toml:14:17: target `hook`: `create_stream` is only used with a `nats://` or `tls://` url",
        "test.toml:18:7: target `path`: invalid URL `nats://127.0.0.1:4222/x`: a NATS server's URL has no path",
        "test.toml:21:9: invalid shard `4/3`: shards are numbered 1 to 3",
        "test.toml:22:9: cluster: `lease` is for failover through NATS: set `nats` too",
    ] {
        assert!(
            error.contains(expected),
            "missing {expected:?} in:\n{error}"
        );
    }
}

/// An API whose document changes at every poll, and a NATS target: the
/// real binary is killed with SIGKILL again and again, and restarted. Each
/// change is in the stream once, under its webhook-id, however often it
/// was published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_in_the_stream_across_kill_9_and_restarts() {
    let server = NatsServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut burst = Reply::json("");
    burst.bodies = (1..=12).map(|n| format!(r#"{{"n":{n}}}"#)).collect();
    let api = Api::start(burst).await;
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [[target]]\nname = \"stream\"\nurl = \"{}\"\ncreate_stream = true\nparallel = 8\nretry = [\"50ms\", \"50ms\", \"50ms\", \"50ms\", \"50ms\", \"50ms\", \"50ms\", \"50ms\"]\n\
             [[endpoint]]\nname = \"data\"\nurl = \"{}\"\nevery = \"100ms\"\n",
            dir.path().join("state").display(),
            server.url(),
            api.url()
        ),
    )
    .unwrap();
    let context = server.jetstream().await;
    for kill_after in [350, 200, 600, 150, 450] {
        let mut daemon = run_binary(&config, &[]);
        tokio::time::sleep(Duration::from_millis(kill_after)).await;
        daemon.start_kill().unwrap();
        daemon.wait().await.unwrap();
    }
    // The last run sees one more change, the last, and drains what is
    // left, then stops as SIGTERM stops it.
    api.set(Reply::json(r#"{"n":1000}"#));
    let mut daemon = run_binary(&config, &[]);
    let last_arrived = |stored: &[Stored]| {
        stored
            .iter()
            .any(|message| message.event["data"]["patch"].to_string().contains("1000"))
    };
    for _ in 0..400 {
        if last_arrived(&messages(&context, "POLLHOOK").await) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pid = daemon.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    daemon.wait().await.unwrap();
    let store = pollhook::store::Store::open(&dir.path().join("state")).unwrap();
    let last_version = store.snapshot("data").unwrap().unwrap().version;
    assert_eq!(store.outbox_len(), 0);

    let stored = messages(&context, "POLLHOOK").await;
    let mut by_version: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for message in &stored {
        assert_eq!(
            message.event["type"], "endpoint.changed",
            "{:?}",
            message.event
        );
        let version = message.event["data"]["version"].as_u64().unwrap();
        by_version
            .entry(version)
            .or_default()
            .push(message.id.clone());
    }
    // Every change the store went through, each once in the stream.
    assert!(last_arrived(&stored));
    let versions: Vec<u64> = by_version.keys().copied().collect();
    assert_eq!(
        versions,
        (2..=last_version).collect::<Vec<_>>(),
        "{by_version:?}"
    );
    for (version, ids) in &by_version {
        assert_eq!(ids.len(), 1, "version {version}: {ids:?}");
        assert!(ids[0].starts_with("msg_"));
    }
}
