//! Real servers on 127.0.0.1 and a harness around the real daemon.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use hmac::{KeyInit as _, Mac as _};
use pollhook::config::Config;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The secret targets use in tests (from the Standard Webhooks examples).
pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Waits until `condition` holds, checking every 10 ms, for at most 10 s.
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting until {what}");
}

pub async fn serve(router: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    serve_on(listener, router)
}

pub fn serve_on(listener: TcpListener, router: Router) -> SocketAddr {
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    address
}

/// What the polled API answers; tests change it while the daemon runs.
#[derive(Clone)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    /// Served in turn, one per request.
    pub bodies: Vec<String>,
    /// Sent as `ETag`; a request with a matching `If-None-Match` gets a 304.
    pub etag: Option<String>,
    /// Sent as `Retry-After`.
    pub retry_after: Option<&'static str>,
    pub delay: Duration,
}

impl Reply {
    pub fn json(body: &str) -> Reply {
        Reply {
            status: 200,
            content_type: "application/json",
            bodies: vec![body.to_string()],
            etag: None,
            retry_after: None,
            delay: Duration::ZERO,
        }
    }
}

#[derive(Default)]
struct ApiCounts {
    requests: usize,
    not_modified: usize,
    conditional: usize,
    /// Requests being answered now, and the most answered at once.
    in_flight: usize,
    most_at_once: usize,
}

/// Counts a request as answered from its arrival until it is dropped, also
/// when the client goes away first.
struct Answering(Arc<Mutex<ApiCounts>>);

impl Answering {
    fn new(counts: &Arc<Mutex<ApiCounts>>) -> Answering {
        let mut locked = counts.lock().unwrap();
        locked.in_flight += 1;
        locked.most_at_once = locked.most_at_once.max(locked.in_flight);
        Answering(counts.clone())
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        self.0.lock().unwrap().in_flight -= 1;
    }
}

/// The polled API: one URL, `/data`, answering with the current [`Reply`].
#[derive(Clone)]
pub struct Api {
    pub address: SocketAddr,
    reply: Arc<Mutex<Reply>>,
    counts: Arc<Mutex<ApiCounts>>,
}

impl Api {
    pub async fn start(reply: Reply) -> Api {
        let reply = Arc::new(Mutex::new(reply));
        let counts = Arc::new(Mutex::new(ApiCounts::default()));
        let router = Router::new()
            .route("/data", axum::routing::any(api_handler))
            .with_state((reply.clone(), counts.clone()));
        Api {
            address: serve(router).await,
            reply,
            counts,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/data", self.address)
    }

    pub fn set(&self, reply: Reply) {
        *self.reply.lock().unwrap() = reply;
    }

    pub fn requests(&self) -> usize {
        self.counts.lock().unwrap().requests
    }

    pub fn not_modified(&self) -> usize {
        self.counts.lock().unwrap().not_modified
    }

    pub fn conditional(&self) -> usize {
        self.counts.lock().unwrap().conditional
    }

    pub fn in_flight(&self) -> usize {
        self.counts.lock().unwrap().in_flight
    }

    pub fn most_at_once(&self) -> usize {
        self.counts.lock().unwrap().most_at_once
    }

    /// Waits until `more` requests beyond the current count were answered.
    pub async fn wait_for_requests(&self, more: usize) {
        let target = self.requests() + more;
        eventually(&format!("the API has answered {target} requests"), || {
            self.requests() >= target
        })
        .await;
    }
}

type ApiState = (Arc<Mutex<Reply>>, Arc<Mutex<ApiCounts>>);

async fn api_handler(State((reply, counts)): State<ApiState>, headers: HeaderMap) -> Response {
    let reply = reply.lock().unwrap().clone();
    let index = {
        // Counted on arrival: a client that times out may drop the request.
        let mut counts = counts.lock().unwrap();
        counts.requests += 1;
        if headers.contains_key(header::IF_NONE_MATCH)
            || headers.contains_key(header::IF_MODIFIED_SINCE)
        {
            counts.conditional += 1;
        }
        counts.requests - 1
    };
    let _answering = Answering::new(&counts);
    tokio::time::sleep(reply.delay).await;
    let if_none_match = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok());
    if let (Some(etag), Some(sent)) = (&reply.etag, if_none_match)
        && etag == sent
    {
        counts.lock().unwrap().not_modified += 1;
        return StatusCode::NOT_MODIFIED.into_response();
    }
    let body = reply.bodies[index % reply.bodies.len()].clone();
    let mut response = (StatusCode::from_u16(reply.status).unwrap(), body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(reply.content_type),
    );
    if let Some(retry_after) = reply.retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static(retry_after));
    }
    if let Some(etag) = &reply.etag {
        response
            .headers_mut()
            .insert(header::ETAG, HeaderValue::from_str(etag).unwrap());
    }
    response
}

/// One webhook as the receiver got it.
#[derive(Debug, Clone)]
pub struct Webhook {
    /// How it came: `POST` unless the target says otherwise.
    pub method: String,
    /// The path and query it came to.
    pub path: String,
    pub id: String,
    pub timestamp: String,
    pub signature: Option<String>,
    /// Every header, for formats that add their own.
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The status the receiver answered with.
    pub answered: u16,
    /// When it arrived, on tokio's clock (virtual in paused tests).
    pub arrived: tokio::time::Instant,
}

impl Webhook {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    pub fn version(&self) -> u64 {
        self.json()["data"]["version"].as_u64().unwrap()
    }

    /// Checks the signature with an HMAC computed here, independently of
    /// pollhook's own signing code.
    pub fn signature_verifies(&self, secret: &str) -> bool {
        let key = base64::engine::general_purpose::STANDARD
            .decode(secret.strip_prefix("whsec_").unwrap())
            .unwrap();
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
        mac.update(format!("{}.{}.", self.id, self.timestamp).as_bytes());
        mac.update(&self.body);
        let expected = format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
        );
        self.signature
            .as_deref()
            .is_some_and(|header| header.split(' ').any(|signature| signature == expected))
    }
}

/// How the receiver answers.
#[derive(Debug, Clone)]
pub struct Behaviour {
    pub status: u16,
    /// Sent as `Retry-After`.
    pub retry_after: Option<String>,
    /// Sent as `Location`.
    pub location: Option<String>,
    /// Answer 500 to events of these versions, whatever `status` says.
    pub fail_versions: Vec<u64>,
    pub delay: Duration,
}

#[derive(Default)]
struct ReceiverLog {
    received: Vec<Webhook>,
    /// Ids being handled right now, and the most handled at once.
    handling: Vec<String>,
    most_at_once: usize,
    /// Ids that arrived while an earlier request with the same id was handled.
    overlapping: Vec<String>,
}

/// A webhook receiver that records everything and answers per [`Behaviour`].
#[derive(Clone)]
pub struct Receiver {
    pub address: SocketAddr,
    log: Arc<Mutex<ReceiverLog>>,
    behaviour: Arc<Mutex<Behaviour>>,
    changed: Arc<tokio::sync::Notify>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Receiver::start_on(listener)
    }

    pub fn start_on(listener: TcpListener) -> Receiver {
        let log = Arc::new(Mutex::new(ReceiverLog::default()));
        let behaviour = Arc::new(Mutex::new(Behaviour {
            status: 204,
            retry_after: None,
            location: None,
            fail_versions: Vec::new(),
            delay: Duration::ZERO,
        }));
        let changed = Arc::new(tokio::sync::Notify::new());
        let state = (log.clone(), behaviour.clone(), changed.clone());
        // Any method, any path: targets choose both (`method`, `{event_id}`).
        let router = Router::new().fallback(receive).with_state(state);
        Receiver {
            address: serve_on(listener, router),
            log,
            behaviour,
            changed,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.address)
    }

    pub fn answer(&self, status: u16) {
        self.behaviour.lock().unwrap().status = status;
    }

    pub fn behave(&self, change: impl FnOnce(&mut Behaviour)) {
        change(&mut self.behaviour.lock().unwrap());
    }

    /// Every request received, answered 2xx or not.
    pub fn all(&self) -> Vec<Webhook> {
        self.log.lock().unwrap().received.clone()
    }

    /// The webhooks that were accepted (answered 2xx).
    pub fn accepted(&self) -> Vec<Webhook> {
        self.all()
            .into_iter()
            .filter(|hook| (200..300).contains(&hook.answered))
            .collect()
    }

    /// The `type` of each webhook accepted, in order.
    pub fn types(&self) -> Vec<String> {
        self.accepted()
            .iter()
            .map(|hook| hook.json()["type"].as_str().unwrap().to_string())
            .collect()
    }

    /// Requests being handled right now.
    pub fn handling(&self) -> usize {
        self.log.lock().unwrap().handling.len()
    }

    pub fn most_at_once(&self) -> usize {
        self.log.lock().unwrap().most_at_once
    }

    pub fn overlapping(&self) -> Vec<String> {
        self.log.lock().unwrap().overlapping.clone()
    }

    /// Waits, without polling a timer, until `condition` holds for what was
    /// received; under a paused clock tokio then jumps straight to the next
    /// delivery. Gives up after `limit` of (possibly virtual) time.
    pub async fn wait_until(
        &self,
        limit: Duration,
        what: &str,
        condition: impl Fn(&[Webhook]) -> bool,
    ) {
        let wait = async {
            loop {
                let notified = self.changed.notified();
                if condition(&self.all()) {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(limit, wait).await.is_err() {
            panic!("timed out waiting until {what}: got {:#?}", self.all());
        }
    }
}

type ReceiverState = (
    Arc<Mutex<ReceiverLog>>,
    Arc<Mutex<Behaviour>>,
    Arc<tokio::sync::Notify>,
);

/// Takes an id off the "handling" list even when the request is dropped.
struct Handling(Arc<Mutex<ReceiverLog>>, String);

impl Drop for Handling {
    fn drop(&mut self) {
        let mut log = self.0.lock().unwrap();
        if let Some(index) = log.handling.iter().position(|id| *id == self.1) {
            log.handling.remove(index);
        }
    }
}

async fn receive(
    State((log, behaviour, changed)): State<ReceiverState>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .map(|value| value.to_str().unwrap().to_string())
    };
    let id = header("webhook-id").unwrap_or_default();
    let arrived = tokio::time::Instant::now();
    let behaviour = behaviour.lock().unwrap().clone();
    {
        let mut log = log.lock().unwrap();
        if log.handling.contains(&id) {
            log.overlapping.push(id.clone());
        }
        log.handling.push(id.clone());
        log.most_at_once = log.most_at_once.max(log.handling.len());
    }
    let _handling = Handling(log.clone(), id.clone());
    tokio::time::sleep(behaviour.delay).await;
    let version = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|event| event["data"]["version"].as_u64());
    let answered = match version {
        Some(version) if behaviour.fail_versions.contains(&version) => 500,
        _ => behaviour.status,
    };
    log.lock().unwrap().received.push(Webhook {
        method: method.to_string(),
        path: uri
            .path_and_query()
            .map_or_else(String::new, |path| path.to_string()),
        id,
        timestamp: header("webhook-timestamp").unwrap_or_default(),
        signature: header("webhook-signature"),
        headers: headers.clone(),
        body,
        answered,
        arrived,
    });
    changed.notify_waiters();
    let mut response = StatusCode::from_u16(answered).unwrap().into_response();
    if let Some(retry_after) = &behaviour.retry_after {
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from_str(retry_after).unwrap(),
        );
    }
    if let Some(location) = &behaviour.location {
        response
            .headers_mut()
            .insert(header::LOCATION, HeaderValue::from_str(location).unwrap());
    }
    response
}

/// The real daemon, running in this process until stopped.
pub struct Daemon {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Daemon {
    pub fn start(config: Config) -> Daemon {
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(pollhook::daemon::run(config, shutdown.clone()));
        Daemon { shutdown, task }
    }

    /// Stops it as SIGTERM would, and waits until it has flushed the store.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }
}

/// Thirty retries 50 ms apart: a failing receiver is retried quickly for a
/// while, and a test never waits on the real schedule.
pub const FAST_RETRY: &str = r#"["50ms", "50ms", "50ms", "50ms", "50ms", "50ms", "50ms", "50ms", "50ms", "50ms",
    "50ms", "50ms", "50ms", "50ms", "50ms", "50ms", "50ms", "50ms", "50ms", "50ms",
    "50ms", "50ms", "50ms", "50ms", "50ms", "50ms", "50ms", "50ms", "50ms", "50ms"]"#;

/// The OAuth2 token cache of polls, over a store in `state_dir`: for tests
/// that fetch without a poller.
pub fn tokens(state_dir: &Path) -> pollhook::oauth::Tokens {
    pollhook::oauth::Tokens::new(Arc::new(pollhook::store::Store::open(state_dir).unwrap()))
}

/// A config whose state lives in `state_dir`; `body` holds the tables.
pub fn config(state_dir: &Path, body: &str) -> Config {
    // The admin table goes last: `body` may start with top-level keys.
    let text = format!(
        "state_dir = \"{}\"\n{body}\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        state_dir.display()
    );
    Config::compile(&text, Path::new("test.toml")).unwrap_or_else(|error| panic!("{error}\n{text}"))
}

/// One endpoint polled every 20 ms and one receiver with the test secret.
pub fn simple_config(
    state_dir: &Path,
    api: &Api,
    receiver: &Receiver,
    endpoint_extra: &str,
) -> Config {
    config_to(state_dir, api, &receiver.url(), endpoint_extra)
}

/// [`simple_config`] for a receiver URL where nothing may listen yet.
pub fn config_to(state_dir: &Path, api: &Api, receiver_url: &str, endpoint_extra: &str) -> Config {
    config(
        state_dir,
        &format!(
            r#"
[[target]]
name = "receiver"
url = "{receiver_url}"
secret = "{SECRET}"
retry = {FAST_RETRY}

[[endpoint]]
name = "data"
url = "{}"
every = "100ms"
{endpoint_extra}
"#,
            api.url()
        ),
    )
}

/// Starts `pollhook run -c config` and `args` as a process of its own, its
/// log appended to `daemon.log` beside the config.
pub fn run_binary(config: &Path, args: &[&str]) -> tokio::process::Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(config.with_file_name("daemon.log"))
        .unwrap();
    tokio::process::Command::new(env!("CARGO_BIN_EXE_pollhook"))
        .args(["run", "-c", config.to_str().unwrap()])
        .args(args)
        .env("RUST_LOG", "info")
        .stderr(log)
        .env_remove("POLLHOOK_CONFIG")
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// A CA of the test's own, which signs server and client certificates.
pub struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    pub fn new() -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().unwrap();
        TestCa {
            issuer: rcgen::CertifiedIssuer::self_signed(params, key).unwrap(),
        }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    pub fn der(&self) -> &tokio_rustls::rustls::pki_types::CertificateDer<'static> {
        self.issuer.der()
    }

    /// A certificate for `127.0.0.1` (a server's, or a client's) and its key.
    pub fn sign(&self) -> (rcgen::Certificate, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        // Not the CA's name (rcgen's default for both): OpenSSL (mosquitto)
        // takes a certificate named as its issuer for a self-signed one.
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "127.0.0.1");
        (params.signed_by(&key, &self.issuer).unwrap(), key)
    }

    /// Writes `ca.pem` (this CA) and a signed certificate and its key as
    /// `{name}.pem` and `{name}.key` into `dir`; returns the three paths.
    pub fn write(&self, dir: &Path, name: &str) -> [PathBuf; 3] {
        let (certificate, key) = self.sign();
        let files = [
            ("ca.pem".to_string(), self.pem()),
            (format!("{name}.pem"), certificate.pem()),
            (format!("{name}.key"), key.serialize_pem()),
        ];
        files.map(|(file, text)| {
            let path = dir.join(file);
            std::fs::write(&path, text).unwrap();
            path
        })
    }
}
