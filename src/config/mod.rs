//! The configuration: TOML → serde structs (`*Config`) → [`Config::compile`]
//! → a validated [`Config`].
//!
//! Every `[[endpoint]]` and `[[target]]` is deserialised on its own, so one
//! broken table does not hide the mistakes in the others: all problems are
//! reported at once, each with file, line, column and the endpoint it is in.

mod cluster;
mod diff;
mod html;
mod nats;
mod template;
mod values;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::deliver::format::{self, TargetFormat, Template};
use crate::deliver::mqtt::messages::{DEFAULT_TOPIC, MqttTarget};
use crate::deliver::retry::RetryPolicy;
use crate::event_type::{self, EVENT_DEAD, EventTypes, TARGET_FAILING, TARGET_RECOVERED};
pub use crate::extract::Format;
use crate::extract::{ItemRules, Rules};
use crate::jq::Jq;
pub use crate::schedule::CronExpr;
use crate::schedule::Schedule;
use crate::seen::{self, SeenLimit};
pub use cluster::{Cluster, ClusterNats, DEFAULT_LEASE, MAX_SHARDS, Shard};
pub use diff::{Changes, ConfigDiff};
pub use nats::{DEFAULT_STREAM, DEFAULT_SUBJECT, NatsTarget};
use template::UrlText;
pub use template::{Text, Vars};
pub use values::{
    Auth, ByteSize, EndpointAuth, EnvString, HttpUrl, HumanDuration, OAuth2, ProxyUrl,
    RereadSecret, SpanOfTime, TargetUrl, WebhookSecret, expand_env, redact_url, redact_written_url,
};

/// Where the daemon looks when neither `-c` nor `POLLHOOK_CONFIG` says otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/pollhook/config.toml";

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_MAX_BODY: u64 = 10 << 20;
const DEFAULT_KEEP_HISTORY: usize = 10;
const DEFAULT_MAX_CONCURRENT_POLLS: usize = 64;
const DEFAULT_TARGET_TIMEOUT: Duration = Duration::from_secs(15);
const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
const DEFAULT_PARALLEL: usize = 4;
const DEFAULT_PER_HOST: usize = 2;
const DEFAULT_FAIL_AFTER: u32 = 3;
/// How long a target's attempts must have failed before `target.failing`:
/// a receiver restarting for a minute is not worth waking anyone.
const DEFAULT_TARGET_FAIL_FOR: Duration = Duration::from_secs(5 * 60);
/// The sane range of each number a config holds: past it, a value is a
/// typo, and some (a semaphore's size) would crash the daemon.
const MAX_CONCURRENT_POLLS: usize = 100_000;
const MAX_PARALLEL: usize = 10_000;
const MAX_KEEP_HISTORY: usize = 10_000;
const MAX_FAIL_AFTER: u32 = 10_000;
const DEFAULT_MAX_PAGES: usize = 10;
const MAX_PAGES: usize = 1_000;
const MAX_ATTEMPTS: u32 = 100;
/// The shortest `every`: a faster poll is a flood, not a watch.
pub const MIN_EVERY: Duration = Duration::from_millis(100);
/// The largest config file read: a bigger one is a mistake (`-c /dev/zero`).
const MAX_CONFIG_BYTES: u64 = 64 << 20;
/// The admin API's default port on 127.0.0.1.
pub const DEFAULT_ADMIN_PORT: u16 = 9477;

/// Top-level keys other than the `[[endpoint]]` and `[[target]]` arrays.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TopConfig {
    state_dir: Option<PathBuf>,
    max_concurrent_polls: Option<Spanned<usize>>,
    per_host: Option<Spanned<usize>>,
    per_host_spacing: Option<HumanDuration>,
    shutdown_grace: Option<HumanDuration>,
    #[serde(default)]
    defaults: DefaultsConfig,
    admin: Option<Spanned<AdminConfig>>,
    cluster: Option<Spanned<cluster::ClusterConfig>>,
}

/// `[admin]`: the HTTP API the CLI and monitoring talk to.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminConfig {
    listen: Option<AdminListen>,
    /// Required by every route but `/healthz` and `/readyz` when set;
    /// required at all off loopback.
    token: Option<EnvString>,
    /// `/metrics` without the token, for a Prometheus without it.
    metrics_public: Option<bool>,
}

/// Where the admin API listens: `127.0.0.1:9477` or `unix:/run/pollhook/admin.sock`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminListen {
    Tcp(std::net::SocketAddr),
    Unix(PathBuf),
}

impl FromStr for AdminListen {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            if !path.starts_with('/') {
                return Err(format!(
                    "invalid admin address `{text}`: a unix socket path must be absolute"
                ));
            }
            return Ok(AdminListen::Unix(PathBuf::from(path)));
        }
        text.parse()
            .map(AdminListen::Tcp)
            .map_err(|_| format!("invalid admin address `{text}`: write `127.0.0.1:9477` or `unix:/run/pollhook/admin.sock`"))
    }
}

impl fmt::Display for AdminListen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdminListen::Tcp(address) => write!(f, "{address}"),
            AdminListen::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// The admin API's settings, validated.
#[derive(Clone, PartialEq, Eq)]
pub struct Admin {
    pub listen: AdminListen,
    pub token: Option<String>,
    pub metrics_public: bool,
}

impl fmt::Debug for Admin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admin")
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("metrics_public", &self.metrics_public)
            .finish()
    }
}

/// `[defaults]`: values every endpoint inherits unless it sets its own.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DefaultsConfig {
    every: Option<Spanned<HumanDuration>>,
    cron: Option<Spanned<CronExpr>>,
    timeout: Option<HumanDuration>,
    max_body: Option<ByteSize>,
    keep_history: Option<Spanned<usize>>,
    emit_initial: Option<bool>,
    fail_after: Option<Spanned<u32>>,
    fail_for: Option<SpanOfTime>,
    follow_redirects: Option<FollowRedirects>,
    seen: Option<Spanned<SeenConfig>>,
    auth: Option<EndpointAuth>,
    proxy: Option<ProxyUrl>,
    ca_file: Option<Spanned<PathBuf>>,
    client_cert: Option<Spanned<PathBuf>>,
    client_key: Option<Spanned<PathBuf>>,
    tls_insecure: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointConfig {
    name: Spanned<String>,
    /// Required; optional here so that a bad one does not hide the
    /// mistakes in the rest of the table. May be a template.
    url: Option<UrlText>,
    method: Option<HttpMethod>,
    /// Added to the URL's query; the values may be templates.
    query: Option<BTreeMap<String, Text>>,
    /// Checked in [`Compiler::compile_headers`], where an error can name
    /// the header instead of quoting its value.
    #[serde(default)]
    headers: BTreeMap<HeaderKey, Spanned<String>>,
    auth: Option<EndpointAuth>,
    /// `http://`, `https://` or `socks5://`, credentials allowed (`${...}`).
    proxy: Option<ProxyUrl>,
    /// These three relative to the config file's folder.
    ca_file: Option<Spanned<PathBuf>>,
    client_cert: Option<Spanned<PathBuf>>,
    client_key: Option<Spanned<PathBuf>>,
    tls_insecure: Option<bool>,
    paginate: Option<Spanned<PaginateConfig>>,
    max_pages: Option<Spanned<usize>>,
    body: Option<Text>,
    mode: Option<Spanned<EndpointMode>>,
    /// With `mode = "incremental"`: what the next `state.cursor` is.
    cursor: Option<Spanned<Cursor>>,
    every: Option<Spanned<HumanDuration>>,
    cron: Option<Spanned<CronExpr>>,
    timeout: Option<HumanDuration>,
    max_body: Option<ByteSize>,
    format: Option<Spanned<Format>>,
    select: Option<Spanned<Jq>>,
    #[serde(default)]
    ignore: Vec<JsonPointer>,
    items: Option<Spanned<Jq>>,
    key: Option<Spanned<Jq>>,
    on: Option<Spanned<Vec<ItemEvent>>>,
    batch: Option<Spanned<bool>>,
    #[serde(rename = "match")]
    keep_lines: Option<Spanned<Pattern>>,
    replace: Option<Spanned<Vec<(Pattern, String)>>>,
    /// `format = "html"`: what to pick from the page (see `html`).
    css: Option<Spanned<html::CssConfig>>,
    attr: Option<Spanned<String>>,
    items_css: Option<Spanned<crate::formats::html::Css>>,
    when: Option<Jq>,
    when_previous: Option<Spanned<WhenPrevious>>,
    seen: Option<Spanned<SeenConfig>>,
    fail_after: Option<Spanned<u32>>,
    fail_for: Option<SpanOfTime>,
    follow_redirects: Option<FollowRedirects>,
    targets: Option<Vec<Spanned<String>>>,
    emit_initial: Option<bool>,
    keep_history: Option<Spanned<usize>>,
    /// Values exported as `pollhook_value{endpoint, name}`: jq filters
    /// over the response, by name.
    metrics: Option<BTreeMap<crate::watched::MetricName, Jq>>,
}

/// `paginate = { next = "link" }`, `{ next = "<jq>" }` or
/// `{ cursor = "<jq>", param = "cursor" }`, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PaginateConfig {
    next: Option<String>,
    cursor: Option<Jq>,
    param: Option<String>,
}

/// `seen`: how many item keys (`10000`, `0` for none) or for how long
/// (`"90d"`) an item-mode endpoint remembers.
#[derive(Debug, Clone, Copy)]
enum SeenConfig {
    Keys(i64),
    Within(HumanDuration),
}

impl<'de> Deserialize<'de> for SeenConfig {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = SeenConfig;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of keys (`10000`; `0`: none) or a duration (`\"90d\"`)")
            }

            fn visit_i64<E: serde::de::Error>(self, keys: i64) -> Result<SeenConfig, E> {
                Ok(SeenConfig::Keys(keys))
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<SeenConfig, E> {
                text.parse()
                    .map(SeenConfig::Within)
                    .map_err(|error: String| {
                        E::custom(format!(
                            "{error}; `seen` is a number of keys or a duration such as `\"90d\"`"
                        ))
                    })
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// What `previous` is to `when`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WhenPrevious {
    /// The version of the last poll: for transitions (`up` → `down`).
    #[default]
    Polled,
    /// The last version an event was sent for: for thresholds since the
    /// last alert (a price 3 % below the one last reported).
    Notified,
}

/// `mode`: how an endpoint's answers become events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum EndpointMode {
    /// Each answer is compared with the last one.
    #[default]
    Diff,
    /// Each answer holds only what is new: every item is `item.added`.
    Incremental,
}

/// `mode = "incremental"`: an API answering only what is new since
/// `state.cursor` (`?since={{ state.cursor }}`).
#[derive(Debug, Clone)]
pub struct Incremental {
    /// How the next cursor is found; `None`: there is none (an API asked
    /// with `last_success`, say).
    pub cursor: Option<Cursor>,
}

/// `cursor`: a jq expression over the response, or the largest item key.
#[derive(Debug, Clone)]
pub enum Cursor {
    Filter(Jq),
    /// `"max_key"`: the largest of the items' keys, as jq's `max` orders
    /// them (numbers by value, strings by code point); the filter is `max`.
    MaxKey(Jq),
}

impl Cursor {
    /// The filter that finds the next cursor, and over what: the response
    /// (`false`) or the array of the items' keys (`true`).
    pub fn filter(&self) -> (&Jq, bool) {
        match self {
            Cursor::Filter(filter) => (filter, false),
            Cursor::MaxKey(max) => (max, true),
        }
    }
}

impl FromStr for Cursor {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "max_key" => "max".parse().map(Cursor::MaxKey),
            _ => text.parse().map(Cursor::Filter),
        }
    }
}

/// The parts of an endpoint's request that are made at each poll.
#[derive(Debug, Default)]
pub struct RequestTemplates {
    /// A templated `url`; the endpoint's `url` is its first rendering.
    pub url: Option<Text>,
    /// `query`: added to the URL's query, in order of name.
    pub query: Vec<(String, Text)>,
    /// Headers whose values are templates; the others are in `headers`.
    pub headers: Vec<(HeaderName, Text)>,
}

/// `paginate`: how the next page of a paged list is found.
#[derive(Debug, Clone)]
pub enum Paginate {
    /// The `Link` header's `rel="next"` (RFC 8288: GitHub, GitLab).
    Link,
    /// A jq expression over each page giving the next URL, or null.
    Next(Jq),
    /// A jq expression over each page giving a cursor, or null, put into
    /// the query as `param`.
    Cursor { cursor: Jq, param: String },
}

/// How an endpoint's or a target's requests reach its server, when not
/// as every other's: requests with the same share a client.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Transport {
    /// Instead of `HTTP_PROXY`/`HTTPS_PROXY`.
    pub proxy: Option<ProxyUrl>,
    /// PEM certificates trusted besides the bundled and the system's CAs.
    pub ca_file: Option<PathBuf>,
    /// `client_cert` and `client_key`: mutual TLS.
    pub identity: Option<ClientIdentity>,
    /// `tls_insecure`: no certificate check at all.
    pub insecure: bool,
}

/// The PEM files of a client certificate and its private key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientIdentity {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The CA certificates of a `ca_file`; an error names the file.
pub fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path)
        .map_err(|error| format!("cannot read `ca_file` `{}`: {error}", path.display()))?;
    match CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>() {
        Ok(certificates) if !certificates.is_empty() => Ok(certificates),
        _ => Err(format!(
            "`ca_file` `{}` holds no PEM certificate",
            path.display()
        )),
    }
}

impl ClientIdentity {
    /// The certificate chain and its key, read and parsed; an error names
    /// the files, never what they hold.
    pub fn read(&self) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
        let read = |key: &str, path: &Path| {
            std::fs::read(path)
                .map_err(|error| format!("cannot read `{key}` `{}`: {error}", path.display()))
        };
        let chain = CertificateDer::pem_slice_iter(&read("client_cert", &self.cert)?)
            .collect::<Result<Vec<_>, _>>()
            .ok()
            .filter(|chain| !chain.is_empty());
        let key = PrivateKeyDer::from_pem_slice(&read("client_key", &self.key)?).ok();
        chain.zip(key).ok_or_else(|| self.unusable())
    }

    /// Why the pair cannot be used.
    pub fn unusable(&self) -> String {
        format!(
            "`client_cert` `{}` and `client_key` `{}` must hold a PEM certificate and its private key",
            self.cert.display(),
            self.key.display()
        )
    }
}

/// The keys of a table that say how its requests travel, as written.
#[derive(Debug, Default, Clone)]
struct TransportKeys {
    proxy: Option<ProxyUrl>,
    ca_file: Option<Spanned<PathBuf>>,
    client_cert: Option<Spanned<PathBuf>>,
    client_key: Option<Spanned<PathBuf>>,
    tls_insecure: Option<bool>,
}

/// Takes the [`TransportKeys`] out of a table's raw config.
macro_rules! transport_keys {
    ($raw:expr) => {
        TransportKeys {
            proxy: $raw.proxy.take(),
            ca_file: $raw.ca_file.take(),
            client_cert: $raw.client_cert.take(),
            client_key: $raw.client_key.take(),
            tls_insecure: $raw.tls_insecure.take(),
        }
    };
}

/// [`Paginate`] with its page limit.
#[derive(Debug, Clone)]
pub struct Paging {
    pub next: Paginate,
    pub max_pages: usize,
}

impl Paging {
    /// What shapes the merged document, for the definition hash.
    fn describe(&self) -> String {
        let next = match &self.next {
            Paginate::Link => "link".to_string(),
            Paginate::Next(filter) => format!("next {}", filter.source()),
            Paginate::Cursor { cursor, param } => format!("cursor {} {param}", cursor.source()),
        };
        format!("{next} {}", self.max_pages)
    }
}

/// Which item events an item-mode endpoint sends (`on = ["added"]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ItemEvent {
    Added,
    Removed,
    Changed,
}

/// Which redirects a poll follows. The endpoint's headers and body go only
/// to its own origin, whatever this says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FollowRedirects {
    /// Only to the same scheme, host and port (or from `http` to `https`
    /// on the same host); a redirect elsewhere is a failed poll.
    #[default]
    SameOrigin,
    /// Anywhere, but past the endpoint's origin without its headers and body.
    Any,
    /// None: a 3xx is a failed poll.
    None,
}

/// A regular expression, compiled while the config is read.
#[derive(Debug, Clone)]
struct Pattern(regex::Regex);

impl FromStr for Pattern {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        regex::Regex::new(text).map(Pattern).map_err(|error| {
            // The regex crate draws a caret under the pattern over
            // several lines; its last line says what is wrong.
            let error = error.to_string();
            let reason = error.lines().last().unwrap_or_default().trim();
            let reason = reason.strip_prefix("error: ").unwrap_or(reason);
            format!("invalid regular expression `{text}`: {reason}")
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetConfig {
    name: Spanned<String>,
    /// Required, as an endpoint's: `http(s)://` for webhooks, `smtp(s)://`
    /// for email, `mqtt(s)://` for an MQTT broker.
    url: Option<Spanned<TargetUrl>>,
    /// HTTP: `POST` unless set.
    method: Option<Spanned<HttpMethod>>,
    /// HTTP: sent with every delivery; checked as an endpoint's are.
    #[serde(default)]
    headers: BTreeMap<HeaderKey, Spanned<String>>,
    /// Email: the sender and the recipients.
    from: Option<Spanned<Mailbox>>,
    to: Option<Spanned<Recipients>>,
    /// Email: a minijinja template for the subject (default: the summary).
    subject: Option<Spanned<String>>,
    /// Failed attempts in a row, over at least `fail_for`, before
    /// `target.failing` goes to the targets that take it.
    fail_after: Option<Spanned<u32>>,
    fail_for: Option<SpanOfTime>,
    secret: Option<Spanned<WebhookSecret>>,
    /// Several secrets sign with each, for rotation.
    secrets: Option<Spanned<Vec<Spanned<WebhookSecret>>>>,
    timeout: Option<HumanDuration>,
    /// Waits between delivery attempts (default: Standard Webhooks' schedule).
    retry: Option<Spanned<Vec<HumanDuration>>>,
    /// Or: this many attempts with exponential waits.
    max_attempts: Option<Spanned<u32>>,
    ordered: Option<bool>,
    parallel: Option<Spanned<usize>>,
    rate: Option<Rate>,
    /// How events are written: the envelope (default) or a chat tool's body.
    format: Option<Spanned<FormatName>>,
    /// A minijinja template, with `format = "template"`.
    template: Option<Spanned<String>>,
    /// Or a file holding it, relative to the config file's folder.
    template_file: Option<Spanned<PathBuf>>,
    /// The `Content-Type` of a template's output (default: sniffed).
    content_type: Option<Spanned<ContentType>>,
    /// The event types this target takes (default: all), `*` patterns allowed.
    events: Option<Spanned<Vec<Spanned<String>>>>,
    /// HTTP: `Authorization`; email: `basic` is the SMTP login.
    auth: Option<Spanned<Auth>>,
    proxy: Option<ProxyUrl>,
    ca_file: Option<Spanned<PathBuf>>,
    client_cert: Option<Spanned<PathBuf>>,
    client_key: Option<Spanned<PathBuf>>,
    tls_insecure: Option<bool>,
    /// NATS: the stream that takes the events (they go on `subject`),
    /// whether to create it, and a `.creds` file to log in with.
    stream: Option<Spanned<String>>,
    create_stream: Option<Spanned<bool>>,
    creds: Option<Spanned<PathBuf>>,
    /// MQTT: the broker's credentials, the client id, each event's topic
    /// (a template) and Home Assistant discovery.
    username: Option<Spanned<EnvString>>,
    password: Option<Spanned<EnvString>>,
    client_id: Option<Spanned<String>>,
    topic: Option<Spanned<String>>,
    homeassistant: Option<Spanned<bool>>,
}

/// The keys only an MQTT target has, as written.
struct MqttKeys {
    username: Option<Spanned<EnvString>>,
    password: Option<Spanned<EnvString>>,
    client_id: Option<Spanned<String>>,
    topic: Option<Spanned<String>>,
    homeassistant: Option<Spanned<bool>>,
}

/// An email address, with or without a name (`Ops <ops@example.com>`).
#[derive(Debug, Clone)]
struct Mailbox(lettre::message::Mailbox);

impl FromStr for Mailbox {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        text.parse()
            .map(Mailbox)
            .map_err(|error| format!("invalid email address `{text}`: {error}"))
    }
}

/// `to`: one address, or a list of them.
#[derive(Debug, Clone)]
struct Recipients(Vec<lettre::message::Mailbox>);

impl<'de> Deserialize<'de> for Recipients {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Recipients;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an email address or a list of them")
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Recipients, E> {
                let Mailbox(address) = text.parse().map_err(E::custom)?;
                Ok(Recipients(vec![address]))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Recipients, A::Error> {
                let mut addresses = Vec::new();
                while let Some(text) = seq.next_element::<String>()? {
                    let Mailbox(address) = text.parse().map_err(serde::de::Error::custom)?;
                    addresses.push(address);
                }
                Ok(Recipients(addresses))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// `format` on a target, as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum FormatName {
    Standard,
    Slack,
    Discord,
    Ntfy,
    Apprise,
    Template,
}

/// A `Content-Type` header value, checked while parsing.
#[derive(Debug, Clone)]
struct ContentType(String);

impl FromStr for ContentType {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match HeaderValue::from_str(text) {
            Ok(_) if !text.trim().is_empty() => Ok(ContentType(text.to_string())),
            _ => Err(format!("invalid content type `{text}`")),
        }
    }
}

/// An HTTP method, upper-cased.
#[derive(Debug, Clone)]
struct HttpMethod(reqwest::Method);

impl FromStr for HttpMethod {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        reqwest::Method::from_bytes(text.to_ascii_uppercase().as_bytes())
            .map(HttpMethod)
            .map_err(|_| format!("invalid HTTP method `{text}`"))
    }
}

/// A header name, checked while parsing.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct HeaderKey(String);

impl FromStr for HeaderKey {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        HeaderName::from_str(text)
            .map(|name| HeaderKey(name.as_str().to_string()))
            .map_err(|_| format!("invalid header name `{text}`"))
    }
}

/// An RFC 6901 JSON pointer (`/items/0/price`).
#[derive(Debug, Clone)]
struct JsonPointer(String);

impl FromStr for JsonPointer {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text.starts_with('/') {
            Ok(JsonPointer(text.to_string()))
        } else {
            Err(format!(
                "invalid JSON pointer `{text}`: it must start with `/`"
            ))
        }
    }
}

// The macro in `values` covers its own types; these are local to this module.
macro_rules! deserialize_via_from_str {
    ($($ty:ty),*) => {$(
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}
deserialize_via_from_str!(
    Cursor,
    HttpMethod,
    HeaderKey,
    JsonPointer,
    Rate,
    AdminListen,
    Pattern,
    ContentType,
    Mailbox
);

/// A validated configuration, ready to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from, for messages and reloads.
    pub path: PathBuf,
    pub state_dir: PathBuf,
    pub max_concurrent_polls: usize,
    /// Requests in flight at once to one host (`host:port`).
    pub per_host: usize,
    /// The least time between two requests to one host.
    pub per_host_spacing: Option<Duration>,
    /// How long deliveries in flight may finish after SIGTERM.
    pub shutdown_grace: Duration,
    pub admin: Admin,
    /// `[cluster]`: the shard this instance polls, failover through NATS.
    pub cluster: Cluster,
    pub endpoints: Vec<Arc<Endpoint>>,
    pub targets: Vec<Arc<Target>>,
    /// Things that are allowed but probably wrong, as `check` prints them
    /// (`file:line:col: target `x`: warning: ...`); the daemon logs them.
    pub warnings: Vec<String>,
    /// With [`Config::load_to_find_the_daemon`]: the `${...}` it could not
    /// read (the errors say which), in place of which it has placeholders.
    pub unresolved: Vec<String>,
}

/// One watched URL, with every default already applied.
#[derive(Debug)]
pub struct Endpoint {
    /// Shared with the schedule's and the statuses' keys.
    pub name: Arc<str>,
    pub url: HttpUrl,
    pub method: reqwest::Method,
    /// None when there are none: most endpoints have none, and an empty
    /// map is 96 bytes. Every value is marked sensitive, so `Debug` and
    /// logs never show it.
    pub headers: Option<Box<HeaderMap>>,
    /// Sent as `Authorization` to the endpoint's origin only.
    pub auth: Option<Box<EndpointAuth>>,
    /// Its own proxy or TLS trust; `None`: the shared client's.
    pub transport: Option<Box<Transport>>,
    /// A paged list: every page is fetched and they are compared as one.
    pub paging: Option<Box<Paging>>,
    /// May be a template.
    pub body: Option<Text>,
    /// `query` and the templated parts of `url` and `headers`; `None`:
    /// every poll sends the same request.
    pub request: Option<Box<RequestTemplates>>,
    /// `mode = "incremental"`: every item of an answer is new.
    pub incremental: Option<Box<Incremental>>,
    pub schedule: Schedule,
    pub timeout: Duration,
    pub max_body: u64,
    /// How the body becomes the document that is compared; see
    /// [`Endpoint::rules`].
    rules: Option<Box<Rules>>,
    /// A jq condition over `{previous, current}` that a change must meet to
    /// be sent; in item mode it is asked per item.
    pub when: Option<Jq>,
    /// Which version `previous` is, to `when` and in the events.
    pub when_previous: WhenPrevious,
    /// Item mode: the keys remembered so that `item.added` is sent once
    /// per item ever; `None` (`seen = 0`): only the last document counts.
    pub seen: Option<SeenLimit>,
    /// Item mode: which item events are sent, as written (see
    /// [`Endpoint::item_events`] for what none means).
    pub on: Option<Vec<ItemEvent>>,
    /// Item mode: one `items.changed` event per poll instead of one per item.
    pub batch: bool,
    /// Failed scheduled polls in a row before `endpoint.failing` is sent;
    /// 0: never.
    pub fail_after: u32,
    /// And how long the endpoint must have been failing; `None`: one
    /// interval of its schedule.
    pub fail_for: Option<Duration>,
    pub follow_redirects: FollowRedirects,
    /// The targets that receive this endpoint's events.
    pub targets: Arc<[Subscription]>,
    pub emit_initial: bool,
    pub keep_history: usize,
    /// `metrics`: the jq filters whose numbers are exported; `None`: none.
    pub metrics: Option<Box<crate::watched::Filters>>,
    /// A hash of everything that shapes the extracted document (url, method,
    /// headers, body, format and the extraction rules). When it changes, the next poll
    /// re-baselines quietly instead of sending a diff between two different
    /// questions.
    pub definition: [u8; 32],
}

/// What an endpoint with no extraction rules has.
static NO_RULES: Rules = Rules::NONE;

impl Endpoint {
    /// The item events sent: those `on` lists, or else all three, but
    /// for a feed (by `format` or by its `Content-Type`), whose items are
    /// news: only what is added, not how entries are edited.
    pub fn item_events(&self, feed: bool) -> &[ItemEvent] {
        match &self.on {
            Some(on) => on,
            None if feed => &[ItemEvent::Added],
            None => &[ItemEvent::Added, ItemEvent::Removed, ItemEvent::Changed],
        }
    }

    /// How the body becomes the document that is compared.
    pub fn rules(&self) -> &Rules {
        self.rules.as_deref().unwrap_or(&NO_RULES)
    }

    /// When `endpoint.failing` is due: (`fail_after`, `fail_for`).
    pub fn failing_rule(&self) -> (u32, Duration) {
        let fail_for = self
            .fail_for
            .unwrap_or_else(|| self.schedule.interval(crate::clock::now()));
        (self.fail_after, fail_for)
    }

    /// How many of its targets take events of type `kind`.
    pub fn takers(&self, kind: &str) -> usize {
        self.targets
            .iter()
            .filter(|subscription| subscription.events.contains(kind))
            .count()
    }

    /// The URL as it may be logged or sent: without credentials, and
    /// each part that came from `${...}` as `***`.
    pub fn display_url(&self) -> &str {
        self.url.shown()
    }
}

/// An MQTT target learns the endpoints whose events it takes, to publish
/// their state (and discovery configs) whenever it connects.
fn serve_endpoints(mut target: Target, endpoints: &[Arc<Endpoint>]) -> Arc<Target> {
    if let TargetKind::Mqtt(mqtt) = &mut target.kind {
        mqtt.endpoints = endpoints
            .iter()
            .filter(|endpoint| {
                endpoint
                    .targets
                    .iter()
                    .any(|subscription| subscription.target == target.name)
            })
            .map(|endpoint| endpoint.name.to_string())
            .collect();
    }
    Arc::new(target)
}

/// Where webhooks go.
#[derive(Debug, PartialEq)]
pub struct Target {
    pub name: String,
    /// The webhook's URL (`{event_id}` in it stands for each event's id, see
    /// `deliver::target_url`), the MQTT broker's or the mail server's (see
    /// `kind`).
    pub url: HttpUrl,
    pub kind: TargetKind,
    /// HTTP: how events are sent (`POST`, or `PUT` for Matrix).
    pub method: reqwest::Method,
    /// HTTP: sent with every delivery, every value marked sensitive.
    pub headers: HeaderMap,
    /// Each signs every delivery; several during a rotation.
    pub secrets: Vec<WebhookSecret>,
    pub timeout: Duration,
    pub retry: RetryPolicy,
    /// Strict FIFO: a failing row blocks the ones behind it.
    pub ordered: bool,
    /// Attempts in flight at once.
    pub parallel: usize,
    /// The least time between two attempt starts, from `rate`.
    pub min_spacing: Option<Duration>,
    /// How each event is written when it is sent.
    pub format: TargetFormat,
    /// The event types it takes, from `events`.
    pub events: EventTypes,
    /// Sent as `Authorization` with every delivery; email: the SMTP login
    /// (`basic` only).
    pub auth: Option<Auth>,
    /// Failed attempts in a row before `target.failing`; 0: never.
    pub fail_after: u32,
    /// And how long they must have been failing.
    pub fail_for: Duration,
    /// The other targets that take this one's health events
    /// (`target.failing`, `target.recovered`, `event.dead`); never itself.
    pub watchers: Vec<Subscription>,
    /// Its own proxy or TLS settings; `None`: the shared client's.
    pub transport: Option<Box<Transport>>,
}

/// How an email target writes its messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email {
    pub from: lettre::message::Mailbox,
    pub to: Vec<lettre::message::Mailbox>,
    /// A minijinja template over what a `template` sees; `None`: the summary.
    pub subject: Option<String>,
}

/// What a target's URL reaches, with what only that kind has.
#[derive(Debug, PartialEq)]
pub enum TargetKind {
    /// A webhook: each event is POSTed.
    Http,
    /// An MQTT broker: each event is published.
    Mqtt(Box<MqttTarget>),
    /// A mail server: each event is an email.
    Email(Box<Email>),
    /// A NATS server with JetStream: each event is published to a stream.
    Nats(Box<NatsTarget>),
}

/// One of an endpoint's targets, with the event types it takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub target: String,
    pub events: EventTypes,
}

/// `10/s`, `100/m`, `5/h`: at most that many deliveries per unit of time.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Rate(Duration);

impl FromStr for Rate {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let invalid = || format!("invalid rate `{text}`: write e.g. `10/s`, `100/m` or `5/h`");
        let (count, unit) = text.split_once('/').ok_or_else(invalid)?;
        let count: f64 = count.trim().parse().map_err(|_| invalid())?;
        let unit = match unit.trim() {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return Err(invalid()),
        };
        if !(count.is_finite() && count > 0.0) {
            return Err(format!(
                "invalid rate `{text}`: the count must be more than zero"
            ));
        }
        // Checked before dividing: a tiny count makes a spacing too long
        // for a `Duration` (a panic), and one over a day is a typo.
        if unit.as_secs_f64() / count > 86_400.0 {
            return Err(format!(
                "invalid rate `{text}`: it must allow at least one a day"
            ));
        }
        Ok(Rate(unit.div_f64(count)))
    }
}

/// One mistake in a config file, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    pub column: usize,
    /// `endpoint `name`` or `target `name`` when the mistake is inside one.
    pub context: Option<String>,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file `{}`", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", render_problems(path, problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

fn render_problems(path: &Path, problems: &[Problem]) -> String {
    let lines: Vec<String> = problems
        .iter()
        .map(|problem| problem.render(path))
        .collect();
    lines.join("\n")
}

impl Problem {
    /// `file:line:col: endpoint `name`: message`.
    fn render(&self, path: &Path) -> String {
        let context = self
            .context
            .as_ref()
            .map(|context| format!("{context}: "))
            .unwrap_or_default();
        format!(
            "{}:{}:{}: {context}{}",
            path.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

impl Config {
    /// [`Config::load`] for commands that read the config only to find the
    /// daemon's admin API or the store: a `${...}` it cannot read (a shell
    /// without the daemon's environment or credentials) is not an error, so
    /// that `pollhook status` works where `pollhook run` would not. Such
    /// values are placeholders, listed in [`Config::unresolved`]; the admin
    /// token among them is not sent.
    pub fn load_to_find_the_daemon(path: &Path) -> Result<Config, ConfigError> {
        let (config, unresolved) = values::unresolved_allowed(|| Config::load(path));
        let mut config = config?;
        config.unresolved = unresolved;
        if config.admin.token.as_deref() == Some(values::UNRESOLVED) {
            config.admin.token = None;
        }
        Ok(config)
    }

    /// Reads and compiles a config file. Only a regular file of at most
    /// 64 MiB is read: `-c /dev/zero` would otherwise read without end.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let read_error = |source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read_error)?;
        let metadata = file.metadata().map_err(read_error)?;
        if !metadata.is_file() {
            return Err(read_error(std::io::Error::other(
                "it is not a regular file",
            )));
        }
        if metadata.len() > MAX_CONFIG_BYTES {
            return Err(read_error(std::io::Error::other(
                "it is larger than 64 MiB",
            )));
        }
        let mut source = String::new();
        // The size can grow after it was read: never read past the limit.
        std::io::Read::take(file, MAX_CONFIG_BYTES + 1)
            .read_to_string(&mut source)
            .map_err(read_error)?;
        if source.len() as u64 > MAX_CONFIG_BYTES {
            return Err(read_error(std::io::Error::other(
                "it is larger than 64 MiB",
            )));
        }
        Config::compile(&source, path)
    }

    /// Compiles TOML text; `path` is only used in messages and for `check`.
    pub fn compile(source: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut compiler = Compiler {
            source,
            dir: path.parent().map(Path::to_path_buf).unwrap_or_default(),
            problems: Vec::new(),
            warnings: Vec::new(),
        };
        let config = compiler.compile(path);
        match config {
            Some(mut config) if compiler.problems.is_empty() => {
                config.warnings = compiler
                    .warnings
                    .iter()
                    .map(|warning| warning.render(path))
                    .collect();
                Ok(config)
            }
            _ => {
                let mut problems = compiler.problems;
                problems.sort_by_key(|problem| (problem.line, problem.column));
                Err(ConfigError::Invalid {
                    path: path.to_path_buf(),
                    problems,
                })
            }
        }
    }

    pub fn endpoint(&self, name: &str) -> Option<&Arc<Endpoint>> {
        self.endpoints
            .iter()
            .find(|endpoint| *endpoint.name == *name)
    }
}

/// Walks the parsed document, collecting problems instead of stopping.
struct Compiler<'s> {
    source: &'s str,
    /// The config file's folder: relative paths in it start there.
    dir: PathBuf,
    problems: Vec<Problem>,
    warnings: Vec<Problem>,
}

impl<'s> Compiler<'s> {
    fn problem(&mut self, offset: usize, context: Option<String>, message: impl fmt::Display) {
        let (line, column) = line_column(self.source, offset);
        self.problems.push(Problem {
            line,
            column,
            context,
            message: message.to_string(),
        });
    }

    fn warning(&mut self, offset: usize, context: Option<String>, message: impl fmt::Display) {
        let (line, column) = line_column(self.source, offset);
        self.warnings.push(Problem {
            line,
            column,
            context,
            message: format!("warning: {message}"),
        });
    }

    fn toml_problem(&mut self, error: toml::de::Error, context: Option<String>) {
        let offset = error.span().map(|span| span.start).unwrap_or(0);
        self.problem(offset, context, error.message().trim_end());
    }

    fn compile(&mut self, path: &Path) -> Option<Config> {
        let mut root = match DeTable::parse(self.source) {
            Ok(root) => root.into_inner(),
            Err(error) => {
                self.toml_problem(error, None);
                return None;
            }
        };
        let endpoint_tables = self.take_array_of_tables(&mut root, "endpoint");
        if endpoint_tables.is_empty() {
            self.problem(
                0,
                None,
                "no endpoints: there is nothing to poll; add an `[[endpoint]]` table",
            );
        }
        let target_tables = self.take_array_of_tables(&mut root, "target");

        let root_span = 0..self.source.len();
        let (mut top, broken) = match self
            .deserialize_table::<TopConfig>(Spanned::new(root_span, DeValue::Table(root)), &None)
        {
            Some((top, broken)) => (Some(top), broken),
            None => (None, Broken::default()),
        };
        // Without a readable `[defaults]`, an endpoint without a schedule
        // may be one that inherits a broken one: not a mistake of its own.
        let defaults_broken = top.is_none()
            || ["defaults", "defaults.every", "defaults.cron"]
                .iter()
                .any(|key| broken.contains(key));
        let default_transport = top
            .as_mut()
            .map(|top| transport_keys!(top.defaults))
            .unwrap_or_default();
        self.check_transport_files(&default_transport, None, &Some("defaults".into()));
        let empty_defaults = DefaultsConfig::default();
        let defaults = top
            .as_ref()
            .map(|top| &top.defaults)
            .unwrap_or(&empty_defaults);
        self.check_every(defaults.every.as_ref(), &Some("defaults".into()));
        if let (Some(_), Some(cron)) = (&defaults.every, &defaults.cron) {
            self.problem(
                cron.span().start,
                Some("defaults".into()),
                "set `every` or `cron`, not both",
            );
        }

        // Also the names of targets that have mistakes: an endpoint naming
        // one does not name an unknown target.
        let known_targets: HashSet<String> = target_tables
            .iter()
            .filter_map(|table| table_name(table).map(|(name, _)| name))
            .collect();
        let targets = self.compile_targets(target_tables);
        let target_names: Arc<[Subscription]> = targets
            .iter()
            .map(|target| Subscription {
                target: target.name.clone(),
                events: target.events,
            })
            .collect();
        let endpoints = self.compile_endpoints(
            endpoint_tables,
            defaults,
            &default_transport,
            defaults_broken,
            &target_names,
            &known_targets,
        );
        let targets = targets
            .into_iter()
            .map(|target| serve_endpoints(target, &endpoints))
            .collect();

        let top = top?;
        let max_concurrent_polls = self
            .in_range(
                top.max_concurrent_polls.as_ref(),
                "max_concurrent_polls",
                1..=MAX_CONCURRENT_POLLS,
                &None,
            )
            .unwrap_or(DEFAULT_MAX_CONCURRENT_POLLS);
        let per_host = self
            .in_range(
                top.per_host.as_ref(),
                "per_host",
                1..=MAX_CONCURRENT_POLLS,
                &None,
            )
            .unwrap_or(DEFAULT_PER_HOST);
        let admin = self.compile_admin(top.admin);
        let cluster = self.compile_cluster(top.cluster);
        Some(Config {
            path: path.to_path_buf(),
            state_dir: top.state_dir.unwrap_or_else(default_state_dir),
            max_concurrent_polls,
            per_host,
            per_host_spacing: top.per_host_spacing.map(|spacing| spacing.0),
            shutdown_grace: top
                .shutdown_grace
                .map_or(DEFAULT_SHUTDOWN_GRACE, |grace| grace.0),
            admin,
            cluster,
            endpoints,
            targets,
            warnings: Vec::new(),
            unresolved: Vec::new(),
        })
    }

    fn compile_admin(&mut self, raw: Option<Spanned<AdminConfig>>) -> Admin {
        let default_listen = AdminListen::Tcp(std::net::SocketAddr::from((
            [127, 0, 0, 1],
            DEFAULT_ADMIN_PORT,
        )));
        let Some(raw) = raw else {
            return Admin {
                listen: default_listen,
                token: None,
                metrics_public: false,
            };
        };
        let start = raw.span().start;
        let raw = raw.into_inner();
        let admin = Admin {
            listen: raw.listen.unwrap_or(default_listen),
            token: raw
                .token
                .map(|token| token.value)
                .filter(|token| !token.is_empty()),
            metrics_public: raw.metrics_public.unwrap_or(false),
        };
        if let AdminListen::Tcp(address) = &admin.listen
            && !address.ip().is_loopback()
            && admin.token.is_none()
        {
            self.problem(
                start,
                Some("admin".into()),
                format!(
                    "`listen = \"{address}\"` is reachable from other machines: set `token` too"
                ),
            );
        }
        admin
    }

    /// Removes `key` from the root and returns its tables, each with its span.
    fn take_array_of_tables(
        &mut self,
        root: &mut DeTable<'s>,
        key: &str,
    ) -> Vec<Spanned<DeValue<'s>>> {
        let Some(value) = root.remove(key) else {
            return Vec::new();
        };
        let span = value.span();
        match value.into_inner() {
            DeValue::Array(items) => items.into_iter().collect(),
            _ => {
                self.problem(
                    span.start,
                    None,
                    format!("`{key}` must be an array of tables: write `[[{key}]]`"),
                );
                Vec::new()
            }
        }
    }

    fn compile_targets(&mut self, tables: Vec<Spanned<DeValue<'s>>>) -> Vec<Target> {
        let mut targets: Vec<Target> = Vec::new();
        let mut seen = HashSet::new();
        for table in tables {
            let context = table_context("target", &table);
            // Checked before deserialising, so a broken table still counts.
            if let Some((name, offset)) = table_name(&table)
                && !seen.insert(name.clone())
            {
                self.problem(
                    offset,
                    context.clone(),
                    format!("duplicate target name `{name}`"),
                );
            }
            let table_start = table.span().start;
            let Some((mut raw, broken)) = self.deserialize_table::<TargetConfig>(table, &context)
            else {
                continue;
            };
            // Before the keys are taken: email and MQTT refuse them.
            let start = |span: Option<std::ops::Range<usize>>| span.map(|span| span.start);
            let http_only = [
                ("method", start(raw.method.as_ref().map(Spanned::span))),
                (
                    "headers",
                    start(raw.headers.values().next().map(Spanned::span)),
                ),
                ("secret", start(raw.secret.as_ref().map(Spanned::span))),
                ("secrets", start(raw.secrets.as_ref().map(Spanned::span))),
                // Brokers and mail servers are reached directly.
                ("proxy", raw.proxy.is_some().then_some(table_start)),
            ];
            // A mail server is logged in to with `auth`.
            let client_certificate = [
                ("client_cert", raw.client_cert.as_ref()),
                ("client_key", raw.client_key.as_ref()),
            ]
            .map(|(key, path)| (key, start(path.map(Spanned::span))));
            let content_type = start(raw.content_type.as_ref().map(Spanned::span));
            let auth = start(raw.auth.as_ref().map(Spanned::span));
            let transport =
                self.compile_transport(transport_keys!(raw), None, table_start, &context);
            self.check_name(&raw.name, &context);
            let url = raw.url.take().map(|url| url.into_inner().0);
            let url = self.required_url(url, &broken, table_start, &context);
            let mqtt_keys = MqttKeys {
                username: raw.username.take(),
                password: raw.password.take(),
                client_id: raw.client_id.take(),
                topic: raw.topic.take(),
                homeassistant: raw.homeassistant.take(),
            };
            let format_start = raw.format.as_ref().map(|format| format.span().start);
            let mut secrets: Vec<Spanned<WebhookSecret>> = raw.secret.take().into_iter().collect();
            if let Some(more) = raw.secrets.take() {
                if more.get_ref().is_empty() {
                    self.problem(
                        more.span().start,
                        context.clone(),
                        "`secrets` is empty: remove it or add a secret",
                    );
                }
                secrets.extend(more.into_inner());
            }
            for secret in secrets.iter().filter(|secret| !secret.get_ref().prefixed) {
                self.warning(
                    secret.span().start,
                    context.clone(),
                    "the secret does not start with `whsec_`: it is read as base64, but Standard Webhooks secrets look like `whsec_` followed by base64; is it the right one?",
                );
            }
            let secrets: Vec<WebhookSecret> =
                secrets.into_iter().map(Spanned::into_inner).collect();
            let retry = match (raw.retry.take(), raw.max_attempts.take()) {
                (Some(_), Some(max)) => {
                    self.problem(
                        max.span().start,
                        context.clone(),
                        "set `retry` or `max_attempts`, not both",
                    );
                    RetryPolicy::default()
                }
                (Some(waits), None) if waits.get_ref().len() >= MAX_ATTEMPTS as usize => {
                    self.problem(
                        waits.span().start,
                        context.clone(),
                        format!("`retry` may list at most {} waits", MAX_ATTEMPTS - 1),
                    );
                    RetryPolicy::default()
                }
                (Some(waits), None) => RetryPolicy {
                    waits: waits.into_inner().into_iter().map(|wait| wait.0).collect(),
                },
                (None, Some(max)) => self
                    .in_range(Some(&max), "max_attempts", 1..=MAX_ATTEMPTS, &context)
                    .map_or_else(RetryPolicy::default, RetryPolicy::exponential),
                (None, None) => RetryPolicy::default(),
            };
            let parallel = self
                .in_range(
                    raw.parallel.as_ref(),
                    "parallel",
                    1..=MAX_PARALLEL,
                    &context,
                )
                .unwrap_or(DEFAULT_PARALLEL);
            let format = self.compile_format(
                raw.format.take(),
                raw.template.take(),
                raw.template_file.take(),
                raw.content_type.take(),
                &context,
            );
            let events = self.compile_events(raw.events.take(), &context);
            let fail_after = self
                .in_range(
                    raw.fail_after.as_ref(),
                    "fail_after",
                    0..=MAX_FAIL_AFTER,
                    &context,
                )
                .unwrap_or(DEFAULT_FAIL_AFTER);
            let by_email = url
                .as_ref()
                .is_some_and(|url| matches!(url.url().scheme(), "smtp" | "smtps"));
            let mqtt_only = [("auth", auth)];
            let by_nats = url.as_ref().is_some_and(nats::is_nats);
            let nats_keys = nats::NatsKeys {
                subject: raw.subject.take_if(|_| by_nats),
                stream: raw.stream.take(),
                create_stream: raw.create_stream.take(),
                creds: raw.creds.take(),
            };
            if !by_nats {
                self.only_for_nats(&nats_keys, &context);
            }
            let kind = match (&url, by_email) {
                (None, _) => None,
                (Some(url), false) if by_nats => {
                    self.only_for_email(&raw, &context);
                    // Only to report stray MQTT keys.
                    self.compile_kind(url, raw.name.get_ref(), mqtt_keys, [], &context);
                    let refused = http_only
                        .into_iter()
                        .chain(client_certificate)
                        .chain([("content_type", content_type)]);
                    for (key, offset) in refused {
                        if let Some(offset) = offset {
                            self.problem(
                                offset,
                                context.clone(),
                                format!(
                                    "`{key}` is for HTTP targets, not NATS (`nats://`, `tls://`)"
                                ),
                            );
                        }
                    }
                    let ca_file = transport
                        .as_ref()
                        .and_then(|transport| transport.ca_file.clone());
                    let nats =
                        self.compile_nats(url, nats_keys, raw.auth.as_ref(), ca_file, &context);
                    Some(TargetKind::Nats(Box::new(nats)))
                }
                (Some(url), false) => {
                    self.only_for_email(&raw, &context);
                    let refused = http_only.iter().chain(&mqtt_only).copied();
                    Some(self.compile_kind(url, raw.name.get_ref(), mqtt_keys, refused, &context))
                }
                (Some(url), true) => {
                    // Only to report stray MQTT keys: an email target.
                    self.compile_kind(url, raw.name.get_ref(), mqtt_keys, [], &context);
                    let refused = http_only
                        .into_iter()
                        .chain(client_certificate)
                        .chain([("content_type", content_type)]);
                    for (key, offset) in refused {
                        if let Some(offset) = offset {
                            self.problem(
                                offset,
                                context.clone(),
                                format!(
                                    "`{key}` is for HTTP targets, not email (`smtp://`, `smtps://`)"
                                ),
                            );
                        }
                    }
                    self.compile_email(&mut raw, &broken, &format, format_start, &context)
                        .map(TargetKind::Email)
                }
            };
            if raw.auth.is_some()
                && let Some(name) = raw
                    .headers
                    .keys()
                    .find(|name| name.0.eq_ignore_ascii_case("authorization"))
            {
                let start = raw.headers[name].span().start;
                self.problem(
                    start,
                    context.clone(),
                    "set `auth` or an `Authorization` header, not both",
                );
            }
            if let Some((name, value)) = raw
                .headers
                .iter()
                .find(|(name, _)| name.0.starts_with("webhook-"))
            {
                self.problem(
                    value.span().start,
                    context.clone(),
                    format!(
                        "header `{}` is pollhook's own: Standard Webhooks' `webhook-*` headers are set for every delivery",
                        name.0
                    ),
                );
            }
            if let Some((name, value)) = raw
                .headers
                .iter()
                .find(|(_, value)| template::is_template(value.get_ref()))
            {
                self.problem(
                    value.span().start,
                    context.clone(),
                    format!(
                        "header `{}`: a target's headers are sent as written; templates are for an endpoint's requests",
                        name.0
                    ),
                );
            }
            let (headers, _) = self.compile_headers(std::mem::take(&mut raw.headers), &context);
            let (Some(url), Some(kind)) = (url, kind) else {
                continue;
            };
            targets.push(Target {
                name: raw.name.into_inner(),
                url,
                method: raw
                    .method
                    .map_or(reqwest::Method::POST, |method| method.into_inner().0),
                headers,
                kind,
                secrets,
                timeout: raw.timeout.map_or(DEFAULT_TARGET_TIMEOUT, |t| t.0),
                retry,
                ordered: raw.ordered.unwrap_or(false),
                parallel,
                min_spacing: raw.rate.map(|rate| rate.0),
                format,
                events,
                auth: raw.auth.map(Spanned::into_inner),
                fail_after,
                fail_for: raw.fail_for.map_or(DEFAULT_TARGET_FAIL_FOR, |d| d.0),
                watchers: Vec::new(),
                transport,
            });
        }
        let health_types = [TARGET_FAILING, TARGET_RECOVERED, EVENT_DEAD]
            .iter()
            .fold(EventTypes::NONE, |types, kind| {
                types.union(EventTypes::matching(kind))
            });
        let watchers: Vec<Subscription> = targets
            .iter()
            .filter(|target| target.events.overlaps(health_types))
            .map(|target| Subscription {
                target: target.name.clone(),
                events: target.events,
            })
            .collect();
        for target in &mut targets {
            target.watchers = watchers
                .iter()
                .filter(|watcher| watcher.target != target.name)
                .cloned()
                .collect();
        }
        targets
    }

    /// An email target's `from`, `to` and `subject`; a `format` email cannot
    /// take, a bearer token.
    fn compile_email(
        &mut self,
        raw: &mut TargetConfig,
        broken: &Broken,
        format: &TargetFormat,
        format_start: Option<usize>,
        context: &Option<String>,
    ) -> Option<Box<Email>> {
        if !matches!(format, TargetFormat::Standard | TargetFormat::Template(_)) {
            self.problem(
                format_start.unwrap_or(0),
                context.clone(),
                format!(
                    "`format = \"{}\"` is for HTTP targets; email is plain text: the summary and what changed, or a `template`",
                    format.name()
                ),
            );
        }
        if let Some(auth) = &raw.auth
            && matches!(auth.get_ref(), Auth::Bearer(_))
        {
            self.problem(
                auth.span().start,
                context.clone(),
                "email logs in with `auth = { basic = { username = ..., password = ... } }`, not a bearer token",
            );
        }
        let subject = raw.subject.take().and_then(|subject| {
            let start = subject.span().start;
            let source = subject.into_inner();
            match format::check_template(&source) {
                Ok(()) => Some(source),
                Err(error) => {
                    self.problem(
                        start,
                        context.clone(),
                        format!("invalid `subject`: {error}"),
                    );
                    None
                }
            }
        });
        let to = match raw.to.take() {
            Some(to) if to.get_ref().0.is_empty() => {
                self.problem(
                    to.span().start,
                    context.clone(),
                    "`to` is empty: list at least one address",
                );
                None
            }
            Some(to) => Some(to.into_inner().0),
            // Reported already, as a bad value.
            None if broken.contains("to") => None,
            None => {
                self.problem(
                    raw.name.span().start,
                    context.clone(),
                    "an email target needs `to`: who gets the messages",
                );
                None
            }
        };
        let from = raw.from.take().map(|from| from.into_inner().0);
        if from.is_none() && !broken.contains("from") {
            self.problem(
                raw.name.span().start,
                context.clone(),
                "an email target needs `from`: the sender's address",
            );
        }
        Some(Box::new(Email {
            from: from?,
            to: to?,
            subject,
        }))
    }

    /// `stream`, `create_stream` and `creds` on a target that is not NATS.
    fn only_for_nats(&mut self, keys: &nats::NatsKeys, context: &Option<String>) {
        let nats_only = [
            ("stream", keys.stream.as_ref().map(|v| v.span().start)),
            (
                "create_stream",
                keys.create_stream.as_ref().map(|v| v.span().start),
            ),
            ("creds", keys.creds.as_ref().map(|v| v.span().start)),
        ];
        for (key, offset) in nats_only {
            if let Some(offset) = offset {
                self.problem(
                    offset,
                    context.clone(),
                    format!("`{key}` is only used with a `nats://` or `tls://` url"),
                );
            }
        }
    }

    /// `from`, `to` and `subject` on a target that does not send email.
    fn only_for_email(&mut self, raw: &TargetConfig, context: &Option<String>) {
        let email_only = [
            ("from", raw.from.as_ref().map(|v| v.span().start)),
            ("to", raw.to.as_ref().map(|v| v.span().start)),
            ("subject", raw.subject.as_ref().map(|v| v.span().start)),
        ];
        for (key, offset) in email_only {
            if let Some(offset) = offset {
                self.problem(
                    offset,
                    context.clone(),
                    format!("`{key}` is for email targets (`url = \"smtp://...\"`)"),
                );
            }
        }
    }

    /// Whether a target is a webhook or an MQTT broker, and the keys that
    /// mean something for only one of them.
    fn compile_kind(
        &mut self,
        url: &HttpUrl,
        name: &str,
        keys: MqttKeys,
        http_only: impl IntoIterator<Item = (&'static str, Option<usize>)>,
        context: &Option<String>,
    ) -> TargetKind {
        let tls = match url.url().scheme() {
            "mqtt" => false,
            "mqtts" => true,
            _ => {
                let stray = [
                    ("username", keys.username.as_ref().map(|key| key.span())),
                    ("password", keys.password.as_ref().map(|key| key.span())),
                    ("client_id", keys.client_id.as_ref().map(|key| key.span())),
                    ("topic", keys.topic.as_ref().map(|key| key.span())),
                    (
                        "homeassistant",
                        keys.homeassistant.as_ref().map(|key| key.span()),
                    ),
                ];
                for (key, span) in stray {
                    if let Some(span) = span {
                        self.problem(
                            span.start,
                            context.clone(),
                            format!("`{key}` is only used with an `mqtt://` or `mqtts://` url"),
                        );
                    }
                }
                return TargetKind::Http;
            }
        };
        for (key, offset) in http_only {
            if let Some(offset) = offset {
                self.problem(
                    offset,
                    context.clone(),
                    format!(
                        "`{key}` is only used with an `http://` or `https://` url; an MQTT broker checks `username` and `password`"
                    ),
                );
            }
        }
        if let (None, Some(password)) = (&keys.username, &keys.password) {
            self.problem(
                password.span().start,
                context.clone(),
                "`password` needs `username`: MQTT sends no password without a user name",
            );
        }
        let client_id = match keys.client_id {
            Some(id) => {
                let text = id.get_ref();
                if text.is_empty() || text.len() > 65_535 || text.chars().any(char::is_control) {
                    self.problem(
                        id.span().start,
                        context.clone(),
                        "invalid `client_id`: use 1 to 65,535 bytes without control characters",
                    );
                }
                id.into_inner()
            }
            None => format!("pollhook-{name}"),
        };
        let topic = match keys.topic {
            Some(topic) => {
                if let Err(error) =
                    crate::deliver::mqtt::messages::check_topic_template(topic.get_ref())
                {
                    self.problem(
                        topic.span().start,
                        context.clone(),
                        format!("invalid `topic`: {error}"),
                    );
                }
                topic.into_inner()
            }
            None => DEFAULT_TOPIC.to_string(),
        };
        let secret =
            |value: Option<Spanned<EnvString>>| value.map(|value| value.into_inner().value);
        TargetKind::Mqtt(Box::new(MqttTarget {
            host: url.url().host_str().unwrap_or_default().to_string(),
            port: url.url().port().unwrap_or(if tls { 8883 } else { 1883 }),
            tls,
            username: secret(keys.username),
            password: secret(keys.password),
            client_id,
            topic,
            homeassistant: keys
                .homeassistant
                .is_some_and(|homeassistant| *homeassistant.get_ref()),
            endpoints: Vec::new(),
        }))
    }

    /// A target's `events`: each pattern must name at least one type.
    fn compile_events(
        &mut self,
        events: Option<Spanned<Vec<Spanned<String>>>>,
        context: &Option<String>,
    ) -> EventTypes {
        let Some(patterns) = events else {
            return EventTypes::POLLS;
        };
        if patterns.get_ref().is_empty() {
            self.problem(
                patterns.span().start,
                context.clone(),
                "`events` is empty: the target would take nothing; list event types or remove it",
            );
            return EventTypes::POLLS;
        }
        let mut types = EventTypes::NONE;
        for pattern in patterns.into_inner() {
            let matched = EventTypes::matching(pattern.get_ref());
            if matched.is_empty() {
                self.problem(
                    pattern.span().start,
                    context.clone(),
                    format!(
                        "`{}` names no event type; the types are {}",
                        pattern.get_ref(),
                        event_type::TYPES.join(", ")
                    ),
                );
            }
            types = types.union(matched);
        }
        types
    }

    /// A target's `format` and the keys that only mean something with
    /// `format = "template"`. Templates are parsed here, so a syntax error
    /// is a config error, not a failed delivery.
    fn compile_format(
        &mut self,
        name: Option<Spanned<FormatName>>,
        template: Option<Spanned<String>>,
        template_file: Option<Spanned<PathBuf>>,
        content_type: Option<Spanned<ContentType>>,
        context: &Option<String>,
    ) -> TargetFormat {
        let format_start = name.as_ref().map(|name| name.span().start);
        let name = name.map_or(FormatName::Standard, Spanned::into_inner);
        if name != FormatName::Template {
            let stray = [
                ("template", template.as_ref().map(|t| t.span().start)),
                (
                    "template_file",
                    template_file.as_ref().map(|t| t.span().start),
                ),
                (
                    "content_type",
                    content_type.as_ref().map(|t| t.span().start),
                ),
            ];
            for (key, offset) in stray {
                if let Some(offset) = offset {
                    self.problem(
                        offset,
                        context.clone(),
                        format!("`{key}` is only used with `format = \"template\"`"),
                    );
                }
            }
        }
        match name {
            FormatName::Standard => TargetFormat::Standard,
            FormatName::Slack => TargetFormat::Slack,
            FormatName::Discord => TargetFormat::Discord,
            FormatName::Ntfy => TargetFormat::Ntfy,
            FormatName::Apprise => TargetFormat::Apprise,
            FormatName::Template => {
                let source = match (template, template_file) {
                    (Some(_), Some(file)) => {
                        self.problem(
                            file.span().start,
                            context.clone(),
                            "set `template` or `template_file`, not both",
                        );
                        None
                    }
                    (Some(template), None) => {
                        let start = template.span().start;
                        let source = template.into_inner();
                        match format::check_template(&source) {
                            Ok(()) => Some(source),
                            Err(error) => {
                                self.problem(
                                    start,
                                    context.clone(),
                                    format!("invalid `template`: {error}"),
                                );
                                None
                            }
                        }
                    }
                    (None, Some(file)) => self.read_template(file, context),
                    (None, None) => {
                        self.problem(
                            format_start.unwrap_or(0),
                            context.clone(),
                            "`format = \"template\"` needs `template` or `template_file`",
                        );
                        None
                    }
                };
                TargetFormat::Template(Template {
                    source: source.unwrap_or_default(),
                    content_type: content_type.map(|content_type| content_type.into_inner().0),
                })
            }
        }
    }

    /// Reads and parses a `template_file`; problems point at the key.
    fn read_template(
        &mut self,
        file: Spanned<PathBuf>,
        context: &Option<String>,
    ) -> Option<String> {
        let start = file.span().start;
        let path = self.dir.join(file.get_ref());
        let source = match std::fs::read_to_string(&path) {
            Ok(source) => source,
            Err(error) => {
                self.problem(
                    start,
                    context.clone(),
                    format!("cannot read template file `{}`: {error}", path.display()),
                );
                return None;
            }
        };
        match format::check_template(&source) {
            Ok(()) => Some(source),
            Err(error) => {
                self.problem(
                    start,
                    context.clone(),
                    format!("invalid template in `{}`: {error}", path.display()),
                );
                None
            }
        }
    }

    fn compile_endpoints(
        &mut self,
        tables: Vec<Spanned<DeValue<'s>>>,
        defaults: &DefaultsConfig,
        default_transport: &TransportKeys,
        defaults_broken: bool,
        target_names: &Arc<[Subscription]>,
        known_targets: &HashSet<String>,
    ) -> Vec<Arc<Endpoint>> {
        let mut endpoints = Vec::new();
        let mut seen = HashSet::new();
        for table in tables {
            let table_start = table.span().start;
            let context = table_context("endpoint", &table);
            // Checked before deserialising, so a broken table still counts.
            if let Some((name, offset)) = table_name(&table)
                && !seen.insert(name.clone())
            {
                self.problem(
                    offset,
                    context.clone(),
                    format!("duplicate endpoint name `{name}`"),
                );
            }
            let Some((mut raw, broken)) = self.deserialize_table::<EndpointConfig>(table, &context)
            else {
                continue;
            };
            self.check_name(&raw.name, &context);
            let (url, url_template) = match raw.url.take() {
                Some(UrlText { url, template }) => (Some(url), template),
                None => (None, None),
            };
            let url = self.required_url(url, &broken, table_start, &context);
            self.check_every(raw.every.as_ref(), &context);
            let schedule = match (&raw.every, &raw.cron) {
                (Some(_), Some(cron)) => {
                    self.problem(
                        cron.span().start,
                        context.clone(),
                        "set `every` or `cron`, not both",
                    );
                    None
                }
                (Some(every), None) => Some(Schedule::Every(every.get_ref().0)),
                (None, Some(cron)) => Some(Schedule::Cron(Box::new(cron.get_ref().clone()))),
                (None, None) => match (&defaults.every, &defaults.cron) {
                    (Some(every), _) => Some(Schedule::Every(every.get_ref().0)),
                    (None, Some(cron)) => Some(Schedule::Cron(Box::new(cron.get_ref().clone()))),
                    // Reported already, where the schedule is written.
                    (None, None)
                        if defaults_broken
                            || broken.contains("every")
                            || broken.contains("cron") =>
                    {
                        None
                    }
                    (None, None) => {
                        self.problem(
                            table_start,
                            context.clone(),
                            "no schedule: set `every` or `cron` here or in `[defaults]`",
                        );
                        None
                    }
                },
            };
            let targets = match &raw.targets {
                Some(names) => {
                    for name in names {
                        if !known_targets.contains(name.get_ref()) {
                            self.problem(
                                name.span().start,
                                context.clone(),
                                format!("unknown target `{}`", name.get_ref()),
                            );
                        }
                    }
                    // A target with mistakes of its own is not compiled: all types.
                    let events = |name: &str| {
                        target_names
                            .iter()
                            .find(|subscription| subscription.target == name)
                            .map_or(EventTypes::POLLS, |subscription| subscription.events)
                    };
                    names
                        .iter()
                        .map(|name| Subscription {
                            target: name.get_ref().clone(),
                            events: events(name.get_ref()),
                        })
                        .collect()
                }
                // Shared: at thousands of endpoints, a copy each adds up.
                None => target_names.clone(),
            };
            let keep_history = raw.keep_history.as_ref().or(defaults.keep_history.as_ref());
            let keep_history = self
                .in_range(keep_history, "keep_history", 1..=MAX_KEEP_HISTORY, &context)
                .unwrap_or(DEFAULT_KEEP_HISTORY);
            let fail_after = raw.fail_after.as_ref().or(defaults.fail_after.as_ref());
            let fail_after = self
                .in_range(fail_after, "fail_after", 0..=MAX_FAIL_AFTER, &context)
                .unwrap_or(DEFAULT_FAIL_AFTER);
            let seen = self.compile_seen(&raw, defaults, &context);
            let transport = self.compile_transport(
                transport_keys!(raw),
                Some(default_transport),
                table_start,
                &context,
            );
            let paging = self.compile_paging(raw.paginate.take(), raw.max_pages.take(), &context);
            let incremental = self.compile_incremental(&mut raw, &broken, &context);
            let when_previous = match raw.when_previous.take() {
                Some(when_previous) if raw.when.is_none() && !broken.contains("when") => {
                    self.problem(
                        when_previous.span().start,
                        context.clone(),
                        "`when_previous` says what `when` compares with: set `when` too",
                    );
                    WhenPrevious::default()
                }
                Some(when_previous) => when_previous.into_inner(),
                None => WhenPrevious::default(),
            };
            let rules = self.compile_rules(&mut raw, &broken, &context);
            if raw.auth.is_some()
                && let Some(name) = raw
                    .headers
                    .keys()
                    .find(|name| name.0.eq_ignore_ascii_case("authorization"))
            {
                let start = raw.headers[name].span().start;
                self.problem(
                    start,
                    context.clone(),
                    "set `auth` or an `Authorization` header, not both",
                );
            }
            let (headers, templated_headers) =
                self.compile_headers(std::mem::take(&mut raw.headers), &context);
            let request = RequestTemplates {
                url: url_template,
                query: raw.query.take().unwrap_or_default().into_iter().collect(),
                headers: templated_headers,
            };
            let on = raw.on.map(|on| {
                if on.get_ref().is_empty() {
                    self.problem(
                        on.span().start,
                        context.clone(),
                        "`on` is empty: list `added`, `removed` and/or `changed`",
                    );
                }
                on.into_inner()
            });
            let (Some(schedule), Some(url)) = (schedule, url) else {
                continue;
            };
            let body = raw.body;
            let method = raw.method.map_or(reqwest::Method::GET, |method| method.0);
            let definition = definition_hash(
                url.url(),
                &method,
                &headers,
                body.as_ref(),
                &rules,
                paging.as_ref(),
                &request,
                incremental.as_ref(),
            );
            let templated =
                request.url.is_some() || !request.query.is_empty() || !request.headers.is_empty();
            endpoints.push(Arc::new(Endpoint {
                name: raw.name.into_inner().into(),
                url,
                method,
                headers: (!headers.is_empty()).then(|| Box::new(headers)),
                auth: raw.auth.or_else(|| defaults.auth.clone()).map(Box::new),
                transport,
                paging: paging.map(Box::new),
                body,
                request: templated.then(|| Box::new(request)),
                incremental: incremental.map(Box::new),
                schedule,
                timeout: raw
                    .timeout
                    .or(defaults.timeout)
                    .map_or(DEFAULT_TIMEOUT, |t| t.0),
                max_body: raw
                    .max_body
                    .or(defaults.max_body)
                    .map_or(DEFAULT_MAX_BODY, |size| size.0),
                rules: (!rules.is_none()).then(|| Box::new(rules)),
                when: raw.when,
                when_previous,
                seen,
                on,
                batch: raw.batch.is_some_and(|batch| batch.into_inner()),
                fail_after,
                fail_for: raw.fail_for.or(defaults.fail_for).map(|d| d.0),
                follow_redirects: raw
                    .follow_redirects
                    .or(defaults.follow_redirects)
                    .unwrap_or_default(),
                targets,
                emit_initial: raw.emit_initial.or(defaults.emit_initial).unwrap_or(false),
                keep_history,
                metrics: raw
                    .metrics
                    .filter(|metrics| !metrics.is_empty())
                    .map(|metrics| {
                        Box::new(crate::watched::Filters(
                            metrics
                                .into_iter()
                                .map(|(name, filter)| (Arc::from(name.0), filter))
                                .collect(),
                        ))
                    }),
                definition,
            }));
        }
        endpoints
    }

    /// Header values with `${...}` expanded, all marked sensitive: a
    /// literal value is as likely a key as one from the environment.
    /// Errors name the header, never its value. Templated values are
    /// returned apart, to be rendered at each poll.
    fn compile_headers(
        &mut self,
        raw: BTreeMap<HeaderKey, Spanned<String>>,
        context: &Option<String>,
    ) -> (HeaderMap, Vec<(HeaderName, Text)>) {
        let mut headers = HeaderMap::new();
        let mut templated = Vec::new();
        for (name, text) in raw {
            let start = text.span().start;
            let Ok(header) = HeaderName::from_str(&name.0) else {
                // Checked while deserialising.
                continue;
            };
            if template::is_template(text.get_ref()) {
                match text.get_ref().parse::<Text>() {
                    Ok(template) => templated.push((header, template)),
                    Err(message) => self.problem(
                        start,
                        context.clone(),
                        format!("invalid value for header `{}`: {message}", name.0),
                    ),
                }
                continue;
            }
            let value = expand_env(text.get_ref()).and_then(|value| {
                HeaderValue::from_str(&value).map_err(|_| {
                    format!(
                        "invalid value for header `{}`: it holds a character headers cannot carry (a newline or another control character)",
                        name.0
                    )
                })
            });
            match value {
                Ok(mut value) => {
                    value.set_sensitive(true);
                    headers.insert(header, value);
                }
                Err(message) => self.problem(start, context.clone(), message),
            }
        }
        (headers, templated)
    }

    /// `mode` and `cursor`: an incremental endpoint needs `items` and
    /// `key` (a feed has both, a page's `items_css` blocks are its items),
    /// and has no use for what compares one answer with the last.
    fn compile_incremental(
        &mut self,
        raw: &mut EndpointConfig,
        broken: &Broken,
        context: &Option<String>,
    ) -> Option<Incremental> {
        let mode = raw.mode.take();
        let cursor = raw.cursor.take();
        let Some(mode) = mode.filter(|mode| *mode.get_ref() == EndpointMode::Incremental) else {
            if let Some(cursor) = cursor {
                self.problem(
                    cursor.span().start,
                    context.clone(),
                    "`cursor` is for `mode = \"incremental\"`: set it too",
                );
            }
            return None;
        };
        let feed = raw.format.as_ref().map(|format| *format.get_ref()) == Some(Format::Feed);
        let items_by_format = feed || raw.items_css.is_some();
        let missing: Vec<&str> = [
            ("items", raw.items.is_none() && !items_by_format),
            ("key", raw.key.is_none() && !feed),
        ]
        .into_iter()
        .filter(|(key, missing)| *missing && !broken.contains(key))
        .map(|(key, _)| key)
        .collect();
        if !missing.is_empty() {
            self.problem(
                mode.span().start,
                context.clone(),
                format!(
                    "`mode = \"incremental\"` makes an event of each item: set `{}` too (e.g. `items = \".[]\"`, `key = \".id\"`)",
                    missing.join("` and `")
                ),
            );
        }
        let unused = [
            ("on", raw.on.as_ref().map(|v| v.span())),
            ("batch", raw.batch.as_ref().map(|v| v.span())),
            (
                "when_previous",
                raw.when_previous.as_ref().map(|v| v.span()),
            ),
            ("keep_history", raw.keep_history.as_ref().map(|v| v.span())),
        ];
        for (key, span) in unused {
            if let Some(span) = span {
                self.problem(
                    span.start,
                    context.clone(),
                    format!("`{key}` is not used with `mode = \"incremental\"`: every item is `item.added`, and no document is kept"),
                );
            }
        }
        if raw.when.is_some() {
            self.problem(
                mode.span().start,
                context.clone(),
                "`when` is not used with `mode = \"incremental\"`: narrow the items with `items` instead",
            );
        }
        Some(Incremental {
            cursor: cursor.map(Spanned::into_inner),
        })
    }

    /// The extraction rules, checked for keys that cannot go together:
    /// jq and JSON pointers work on JSON, `match` and `replace` on text.
    fn compile_rules(
        &mut self,
        raw: &mut EndpointConfig,
        broken: &Broken,
        context: &Option<String>,
    ) -> Rules {
        let format = raw.format.as_ref().map(|format| *format.get_ref());
        let json_key = [
            ("select", raw.select.as_ref().map(|v| v.span())),
            ("items", raw.items.as_ref().map(|v| v.span())),
        ]
        .into_iter()
        .find_map(|(name, span)| span.map(|span| (name, span)));
        let text_key = [
            ("match", raw.keep_lines.as_ref().map(|v| v.span())),
            ("replace", raw.replace.as_ref().map(|v| v.span())),
        ]
        .into_iter()
        .find_map(|(name, span)| span.map(|span| (name, span)));
        match (format, json_key, text_key) {
            (_, Some((json, _)), Some((text, span))) => self.problem(
                span.start,
                context.clone(),
                format!("`{text}` works on text and `{json}` on JSON: use one or the other"),
            ),
            (Some(Format::Text), Some((json, span)), _) => self.problem(
                span.start,
                context.clone(),
                format!("`{json}` works on JSON, but `format = \"text\"`"),
            ),
            (Some(format @ (Format::Json | Format::Feed | Format::Xml)), _, Some((text, span))) => {
                self.problem(
                    span.start,
                    context.clone(),
                    format!(
                        "`{text}` works on text, but `format = \"{}\"`",
                        format.name()
                    ),
                )
            }
            _ => {}
        }
        let html = html::HtmlKeys {
            css: raw.css.take(),
            attr: raw.attr.take(),
            items_css: raw.items_css.take(),
        };
        let item_mode_by_format = format == Some(Format::Feed) || html.items_css.is_some();
        let html = match html.compile(
            format == Some(Format::Html),
            raw.format.as_ref().map_or(0, |format| format.span().start),
        ) {
            Ok(pick) => pick,
            Err(mistakes) => {
                for (start, message) in mistakes {
                    self.problem(start, context.clone(), message);
                }
                None
            }
        };
        if raw.items.is_none() && !item_mode_by_format && !broken.contains("items") {
            let item_only = [
                ("key", raw.key.as_ref().map(|v| v.span())),
                ("seen", raw.seen.as_ref().map(|v| v.span())),
                ("on", raw.on.as_ref().map(|v| v.span())),
                ("batch", raw.batch.as_ref().map(|v| v.span())),
            ];
            for (name, span) in item_only {
                if let Some(span) = span {
                    self.problem(
                        span.start,
                        context.clone(),
                        format!("`{name}` is for item mode: set `items` too"),
                    );
                }
            }
        }
        // A feed or a page's blocks are items by themselves (`.[]`); a
        // feed's are known by `.id` unless `key` says otherwise.
        let feed = format == Some(Format::Feed);
        let default_items = (item_mode_by_format && (!feed || raw.key.is_some()))
            .then(|| Spanned::new(0..0, ".[]".parse().expect("`.[]` compiles")));
        let default_key = if feed { ".id" } else { "." };
        let items = raw.items.take().or(default_items).map(|items| ItemRules {
            items: items.into_inner(),
            // Without a key, an item is its own identity: only additions
            // and removals are seen.
            key: raw.key.take().map_or_else(
                || default_key.parse().expect("the default key compiles"),
                Spanned::into_inner,
            ),
        });
        Rules {
            format,
            select: raw.select.take().map(Spanned::into_inner),
            ignore: std::mem::take(&mut raw.ignore)
                .into_iter()
                .map(|pointer| pointer.0)
                .collect(),
            items,
            keep_lines: raw.keep_lines.take().map(|pattern| pattern.into_inner().0),
            replace: raw
                .replace
                .take()
                .map(Spanned::into_inner)
                .unwrap_or_default()
                .into_iter()
                .map(|(pattern, replacement)| (pattern.0, replacement))
                .collect(),
            html,
        }
    }

    /// Deserialises a table, reporting every bad value in it, not just the
    /// first: each time serde stops at one, the key it is under is taken
    /// out and the rest is tried again. Returns the value with the keys
    /// that were taken out (`defaults.every`), so that checks depending on
    /// them do not report their absence too; `None` when what is wrong is
    /// not one key (a required key is missing).
    fn deserialize_table<T: for<'de> Deserialize<'de>>(
        &mut self,
        mut table: Spanned<DeValue<'s>>,
        context: &Option<String>,
    ) -> Option<(T, Broken)> {
        let mut broken = Broken::default();
        loop {
            let error = match T::deserialize(toml::de::ValueDeserializer::from(table.clone())) {
                Ok(value) => return Some((value, broken)),
                Err(error) => error,
            };
            // A required key taken out: reported already, as a bad value.
            let missing = error.message().strip_prefix("missing field `");
            if missing.is_some_and(|rest| broken.contains(rest.trim_end().trim_end_matches('`'))) {
                return None;
            }
            let offset = error.span().map(|span| span.start);
            let DeValue::Table(entries) = table.get_mut() else {
                self.toml_problem(error, context.clone());
                return None;
            };
            let Some(removed) = offset.and_then(|offset| remove_key_at(entries, offset)) else {
                self.toml_problem(error, context.clone());
                return None;
            };
            // A table left empty by a key taken out of it (`auth = {}`)
            // has no mistake of its own.
            let emptied = broken.0.iter().any(|key| {
                key.strip_prefix(removed.as_str())
                    .is_some_and(|rest| rest.starts_with('.'))
            });
            if !emptied {
                self.toml_problem(error, context.clone());
            }
            broken.0.push(removed);
        }
    }

    /// A number that must lie in `range`: out of it, a problem at its place
    /// and `None`, so the caller goes on with its default.
    fn in_range<T>(
        &mut self,
        value: Option<&Spanned<T>>,
        key: &str,
        range: std::ops::RangeInclusive<T>,
        context: &Option<String>,
    ) -> Option<T>
    where
        T: Copy + PartialOrd + fmt::Display,
    {
        let value = value?;
        if range.contains(value.get_ref()) {
            return Some(*value.get_ref());
        }
        let message = if *range.start() > *value.get_ref() {
            format!("`{key}` must be at least {}", range.start())
        } else {
            format!("`{key}` must be at most {}", range.end())
        };
        self.problem(value.span().start, context.clone(), message);
        None
    }

    /// `paginate` and `max_pages`.
    fn compile_paging(
        &mut self,
        paginate: Option<Spanned<PaginateConfig>>,
        max_pages: Option<Spanned<usize>>,
        context: &Option<String>,
    ) -> Option<Paging> {
        let limit = self
            .in_range(max_pages.as_ref(), "max_pages", 1..=MAX_PAGES, context)
            .unwrap_or(DEFAULT_MAX_PAGES);
        let Some(paginate) = paginate else {
            if let Some(max_pages) = max_pages {
                self.problem(
                    max_pages.span().start,
                    context.clone(),
                    "`max_pages` is for paged lists: set `paginate` too",
                );
            }
            return None;
        };
        let start = paginate.span().start;
        let next = match paginate.into_inner() {
            PaginateConfig {
                next: Some(next),
                cursor: None,
                param: None,
            } if next == "link" => Paginate::Link,
            PaginateConfig {
                next: Some(next),
                cursor: None,
                param: None,
            } => match next.parse::<Jq>() {
                Ok(filter) => Paginate::Next(filter),
                Err(error) => {
                    self.problem(start, context.clone(), format!("`paginate.next`: {error}"));
                    return None;
                }
            },
            PaginateConfig {
                next: None,
                cursor: Some(cursor),
                param: Some(param),
            } => Paginate::Cursor { cursor, param },
            PaginateConfig {
                next: None,
                cursor: Some(_),
                param: None,
            } => {
                self.problem(
                    start,
                    context.clone(),
                    "`paginate.cursor` needs `param`: the query parameter the cursor goes in",
                );
                return None;
            }
            _ => {
                self.problem(
                    start,
                    context.clone(),
                    "`paginate` takes `next = \"link\"`, `next = \"<jq>\"`, or `cursor = \"<jq>\"` with `param`",
                );
                return None;
            }
        };
        Some(Paging {
            next,
            max_pages: limit,
        })
    }

    /// `seen`, the endpoint's or the defaults': a count of keys or an age.
    fn compile_seen(
        &mut self,
        raw: &EndpointConfig,
        defaults: &DefaultsConfig,
        context: &Option<String>,
    ) -> Option<SeenLimit> {
        let Some(seen) = raw.seen.as_ref().or(defaults.seen.as_ref()) else {
            return Some(seen::DEFAULT);
        };
        match *seen.get_ref() {
            SeenConfig::Keys(0) => None,
            SeenConfig::Keys(keys) => {
                let keys = Spanned::new(seen.span(), keys);
                self.in_range(Some(&keys), "seen", 0..=seen::MOST_KEYS as i64, context)
                    .map(|keys| SeenLimit::Keys(keys as usize))
                    .or(Some(seen::DEFAULT))
            }
            SeenConfig::Within(age) => Some(SeenLimit::Within(age.0)),
        }
    }

    /// A table's transport: its own keys (checked), else the inherited
    /// ones; `None` when it has none, and shares the default client.
    fn compile_transport(
        &mut self,
        own: TransportKeys,
        inherited: Option<&TransportKeys>,
        table_start: usize,
        context: &Option<String>,
    ) -> Option<Box<Transport>> {
        self.check_transport_files(&own, inherited, context);
        let inherited = inherited.cloned().unwrap_or_default();
        let path = |key: Option<Spanned<PathBuf>>| key.map(|path| self.dir.join(path.get_ref()));
        let identity = match (
            path(own.client_cert.or(inherited.client_cert)),
            path(own.client_key.or(inherited.client_key)),
        ) {
            (Some(cert), Some(key)) => Some(ClientIdentity { cert, key }),
            // Reported by the check.
            _ => None,
        };
        let transport = Transport {
            proxy: own.proxy.or(inherited.proxy),
            ca_file: path(own.ca_file.or(inherited.ca_file)),
            identity,
            insecure: own.tls_insecure.or(inherited.tls_insecure).unwrap_or(false),
        };
        if transport.insecure {
            self.warning(
                table_start,
                context.clone(),
                "`tls_insecure = true`: its certificate is not checked, so anyone on the way can read and change its answers",
            );
        }
        (transport != Transport::default()).then(|| Box::new(transport))
    }

    /// Reads the files a table's own transport keys name, so that a
    /// missing or broken one is a config error, not a failed poll later.
    /// A key pair half inherited is checked where its own half is written.
    fn check_transport_files(
        &mut self,
        own: &TransportKeys,
        inherited: Option<&TransportKeys>,
        context: &Option<String>,
    ) {
        if let Some(ca_file) = &own.ca_file
            && let Err(error) = read_ca_file(&self.dir.join(ca_file.get_ref()))
        {
            self.problem(ca_file.span().start, context.clone(), error);
        }
        let Some(written) = own.client_cert.as_ref().or(own.client_key.as_ref()) else {
            return;
        };
        let inherited = |key: fn(&TransportKeys) -> &Option<Spanned<PathBuf>>| {
            inherited.and_then(|inherited| key(inherited).as_ref())
        };
        let cert = own
            .client_cert
            .as_ref()
            .or(inherited(|keys| &keys.client_cert));
        let key = own
            .client_key
            .as_ref()
            .or(inherited(|keys| &keys.client_key));
        let message = match (cert, key) {
            (Some(cert), Some(key)) => ClientIdentity {
                cert: self.dir.join(cert.get_ref()),
                key: self.dir.join(key.get_ref()),
            }
            .read()
            .err(),
            (Some(_), None) => {
                Some("`client_cert` needs `client_key`: the file of its private key".to_string())
            }
            (None, _) => {
                Some("`client_key` needs `client_cert`: the file of its certificate".to_string())
            }
        };
        if let Some(message) = message {
            self.problem(written.span().start, context.clone(), message);
        }
    }

    /// A table's `url`, reported when it is missing (but not when it was
    /// there and bad: that is reported already).
    fn required_url<U>(
        &mut self,
        url: Option<U>,
        broken: &Broken,
        table_start: usize,
        context: &Option<String>,
    ) -> Option<U> {
        if url.is_none() && !broken.contains("url") {
            self.problem(table_start, context.clone(), "missing field `url`");
        }
        url
    }

    fn check_every(&mut self, every: Option<&Spanned<HumanDuration>>, context: &Option<String>) {
        if let Some(every) = every
            && every.get_ref().0 < MIN_EVERY
        {
            self.problem(
                every.span().start,
                context.clone(),
                "`every` must be at least 100ms: a faster poll is a flood, not a watch",
            );
        }
    }

    /// Names end up in store keys, URLs and logs: keep them plain.
    fn check_name(&mut self, name: &Spanned<String>, context: &Option<String>) {
        let text = name.get_ref();
        let plain = !text.is_empty()
            && text.len() <= 128
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !plain {
            self.problem(
                name.span().start,
                context.clone(),
                format!("invalid name `{text}`: use 1-128 letters, digits, `-`, `_` or `.`"),
            );
        }
    }
}

/// The keys of a table that were taken out because their values were bad,
/// as dotted paths.
#[derive(Debug, Default)]
struct Broken(Vec<String>);

impl Broken {
    fn contains(&self, key: &str) -> bool {
        self.0.iter().any(|broken| broken == key)
    }
}

/// Removes the innermost key whose name or value holds `offset`; returns
/// its dotted path, or `None` when no key does. Tables are searched inside
/// whatever their span: a `[defaults]` table's span is its header only.
fn remove_key_at(table: &mut DeTable<'_>, offset: usize) -> Option<String> {
    let contains = |span: std::ops::Range<usize>| span.contains(&offset);
    let mut found = None;
    for (key, value) in table.iter_mut() {
        if contains(key.span()) {
            found = Some(key.clone());
            break;
        }
        if let DeValue::Table(inner) = value.get_mut()
            && let Some(inner) = remove_key_at(inner, offset)
        {
            return Some(format!("{}.{inner}", key.get_ref()));
        }
        if contains(value.span()) {
            found = Some(key.clone());
            break;
        }
    }
    let key = found?;
    table.remove(&key);
    Some(key.get_ref().to_string())
}

/// `endpoint `name`` for messages, read before the table is deserialised so
/// that even a table that fails to deserialise is named.
fn table_context(kind: &str, table: &Spanned<DeValue<'_>>) -> Option<String> {
    Some(match table_name(table) {
        Some((name, _)) => format!("{kind} `{name}`"),
        None => format!("{kind} without a name"),
    })
}

/// The `name` of a table and where it is written, if it is a string.
fn table_name(table: &Spanned<DeValue<'_>>) -> Option<(String, usize)> {
    let name = table.get_ref().get("name")?;
    Some((name.get_ref().as_str()?.to_string(), name.span().start))
}

#[allow(clippy::too_many_arguments)]
fn definition_hash(
    url: &url::Url,
    method: &reqwest::Method,
    headers: &HeaderMap,
    body: Option<&Text>,
    rules: &Rules,
    paging: Option<&Paging>,
    request: &RequestTemplates,
    incremental: Option<&Incremental>,
) -> [u8; 32] {
    let mut hasher = Sha256::new();
    let mut field = |bytes: &[u8]| {
        hasher.update((bytes.len() as u64).to_be_bytes());
        hasher.update(bytes);
    };
    field(url.as_str().as_bytes());
    field(method.as_str().as_bytes());
    for (name, value) in headers {
        field(name.as_str().as_bytes());
        field(value.as_bytes());
    }
    field(body.map(Text::definition).unwrap_or_default().as_bytes());
    for pointer in &rules.ignore {
        field(pointer.as_bytes());
    }
    field(format!("{:?}", rules.format).as_bytes());
    // Rules added later are hashed only when set, so that an endpoint that
    // does not use them keeps its hash (and is not re-baselined) on upgrade.
    let filters = [
        ("select", rules.select.as_ref()),
        ("items", rules.items.as_ref().map(|items| &items.items)),
        ("key", rules.items.as_ref().map(|items| &items.key)),
    ];
    for (name, filter) in filters {
        if let Some(filter) = filter {
            field(name.as_bytes());
            field(filter.source().as_bytes());
        }
    }
    // What a filter gives changed once (none is `[]`, a computed `6.0` is
    // `6`, missing paths are made, as in jq): a document made by one is
    // re-baselined quietly on upgrade instead of reported as changed.
    if filters.iter().any(|(_, filter)| filter.is_some()) {
        field(b"jq outputs as jq's");
    }
    if let Some(paging) = paging {
        field(b"paginate");
        field(paging.describe().as_bytes());
    }
    if let Some(pick) = &rules.html {
        field(b"css");
        field(pick.describe().as_bytes());
    }
    if let Some(keep) = &rules.keep_lines {
        field(b"match");
        field(keep.as_str().as_bytes());
    }
    for (pattern, replacement) in &rules.replace {
        field(b"replace");
        field(pattern.as_str().as_bytes());
        field(replacement.as_bytes());
    }
    // A template's source, not its renderings: they change at every poll.
    if let Some(url) = &request.url {
        field(b"url template");
        field(url.definition().as_bytes());
    }
    for (name, value) in &request.query {
        field(b"query");
        field(name.as_bytes());
        field(value.definition().as_bytes());
    }
    for (name, value) in &request.headers {
        field(b"header template");
        field(name.as_str().as_bytes());
        field(value.definition().as_bytes());
    }
    if let Some(incremental) = incremental {
        field(b"incremental");
        let cursor = incremental.cursor.as_ref().map(|cursor| match cursor {
            Cursor::Filter(filter) => filter.source(),
            Cursor::MaxKey(_) => "max_key",
        });
        field(cursor.unwrap_or_default().as_bytes());
    }
    hasher.finalize().into()
}

/// `$STATE_DIRECTORY` (set by systemd's `StateDirectory=`), else `./pollhook-state`.
fn default_state_dir() -> PathBuf {
    std::env::var_os("STATE_DIRECTORY")
        .and_then(|dirs| {
            // systemd separates several directories with colons; the first is ours.
            let dirs = dirs.to_string_lossy().into_owned();
            dirs.split(':')
                .next()
                .filter(|dir| !dir.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from("pollhook-state"))
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(source: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(source.len());
    let before = source.get(..offset).unwrap_or(source);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |index| index + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(source: &str) -> Vec<String> {
        match Config::compile(source, Path::new("c.toml")) {
            Ok(_) => Vec::new(),
            Err(ConfigError::Invalid { problems, .. }) => problems
                .into_iter()
                .map(|p| {
                    format!(
                        "{}:{} {} {}",
                        p.line,
                        p.column,
                        p.context.unwrap_or_default(),
                        p.message
                    )
                })
                .collect(),
            Err(other) => panic!("{other}"),
        }
    }

    #[test]
    fn full_config_compiles() {
        let config = Config::compile(
            r#"
state_dir = "/tmp/x"
[defaults]
every = "1m"
[[target]]
name = "ha"
url = "http://127.0.0.1:1/hook"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
[[endpoint]]
name = "a"
url = "http://127.0.0.1:1/a"
ignore = ["/meta/at"]
headers = { Accept = "application/json" }
[[endpoint]]
name = "b"
url = "http://127.0.0.1:1/b"
cron = "*/5 * * * *"
targets = []
"#,
            Path::new("c.toml"),
        )
        .unwrap();
        assert_eq!(config.endpoints.len(), 2);
        assert_eq!(config.endpoints[0].targets[0].target, "ha");
        assert_eq!(config.endpoints[0].targets.len(), 1);
        assert!(config.endpoints[1].targets.is_empty());
        assert!(
            matches!(config.endpoints[0].schedule, Schedule::Every(d) if d == Duration::from_secs(60))
        );
        assert!(matches!(config.endpoints[1].schedule, Schedule::Cron(_)));
        assert_ne!(
            config.endpoints[0].definition,
            config.endpoints[1].definition
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_place() {
        let found = problems(
            r#"[defaults]
every = "1m"
[[endpoint]]
name = "one"
url = "ftp://x"

[[endpoint]]
name = "two"
url = "http://x"
every = "soon"

[[endpoint]]
name = "one"
url = "http://x"
targets = ["nowhere"]
"#,
        );
        assert_eq!(found.len(), 4, "{found:#?}");
        assert!(found[0].starts_with("5:7 endpoint `one`"), "{found:#?}");
        assert!(found[1].starts_with("10:9 endpoint `two`"), "{found:#?}");
        assert!(
            found[2].starts_with("13:8 endpoint `one` duplicate"),
            "{found:#?}"
        );
        assert!(
            found[3].starts_with("15:12 endpoint `one` unknown target `nowhere`"),
            "{found:#?}"
        );
    }

    #[test]
    fn email_targets_and_what_they_show() {
        let source = "[[target]]\nname = \"mail\"\nurl = \"smtps://me:url-secret@mail.example.com\"\n\
             from = \"pollhook@example.com\"\nto = \"Ops <ops@example.com>\"\n\
             auth = { basic = { username = \"me\", password = \"auth-secret\" } }\n\
             [[target]]\nname = \"hook\"\nurl = \"http://127.0.0.1:1/hook\"\n\
             headers = { X-Key = \"header-secret\" }\nevents = [\"event.dead\"]\n\
             [[target]]\nname = \"ops\"\nurl = \"http://127.0.0.1:1/ops\"\nevents = [\"target.*\"]\n\
             [[endpoint]]\nname = \"e\"\nurl = \"http://127.0.0.1:1/\"\nevery = \"1m\"\n";
        let config = Config::compile(source, Path::new("c.toml")).unwrap();
        let TargetKind::Email(email) = &config.targets[0].kind else {
            panic!("an email target: {:?}", config.targets[0].kind);
        };
        assert_eq!(email.from.email.to_string(), "pollhook@example.com");
        assert_eq!(email.to.len(), 1);
        assert_eq!(email.to[0].name.as_deref(), Some("Ops"));
        assert_eq!(config.targets[0].method, reqwest::Method::POST);
        assert_eq!(config.targets[1].kind, TargetKind::Http);
        let shown = format!("{config:?}");
        for secret in ["url-secret", "auth-secret", "header-secret"] {
            assert!(!shown.contains(secret), "{secret}: {shown}");
        }
        // Each target's watchers: the others that take its health events.
        let watchers = |index: usize| -> Vec<&str> {
            config.targets[index]
                .watchers
                .iter()
                .map(|watcher| watcher.target.as_str())
                .collect()
        };
        assert_eq!(watchers(0), ["hook", "ops"]);
        assert_eq!(watchers(1), ["ops"]);
        assert_eq!(watchers(2), ["hook"]);
    }

    #[test]
    fn target_formats_and_their_mistakes() {
        let target = |extra: &str| {
            format!(
                "[[target]]\nname = \"chat\"\nurl = \"http://127.0.0.1:1/hook\"\n{extra}\n\
                 [[endpoint]]\nname = \"e\"\nurl = \"http://127.0.0.1:1/\"\nevery = \"1m\"\n"
            )
        };
        let compiled = |extra: &str| {
            Config::compile(&target(extra), Path::new("c.toml"))
                .unwrap()
                .targets[0]
                .format
                .clone()
        };
        assert_eq!(compiled(""), TargetFormat::Standard);
        assert_eq!(compiled("format = \"slack\""), TargetFormat::Slack);
        assert_eq!(compiled("format = \"discord\""), TargetFormat::Discord);
        assert_eq!(compiled("format = \"ntfy\""), TargetFormat::Ntfy);
        assert_eq!(compiled("format = \"apprise\""), TargetFormat::Apprise);
        assert_eq!(
            compiled(
                "format = \"template\"\ntemplate = \"{{ summary }}\"\ncontent_type = \"text/markdown\""
            ),
            TargetFormat::Template(Template {
                source: "{{ summary }}".into(),
                content_type: Some("text/markdown".into()),
            })
        );

        let cases = [
            (
                "format = \"slak\"",
                "4:10 target `chat` unknown variant `slak`",
            ),
            (
                "template = \"{{ summary }}\"",
                "4:12 target `chat` `template` is only used with `format = \"template\"`",
            ),
            (
                "format = \"ntfy\"\ntemplate_file = \"x.j2\"",
                "5:17 target `chat` `template_file` is only used with `format = \"template\"`",
            ),
            (
                "format = \"template\"",
                "4:10 target `chat` `format = \"template\"` needs `template` or `template_file`",
            ),
            (
                "format = \"template\"\ntemplate = \"{{ a }}\"\ntemplate_file = \"x.j2\"",
                "6:17 target `chat` set `template` or `template_file`, not both",
            ),
            (
                "format = \"template\"\ntemplate = \"\"\"\nfine\n{% if %}\"\"\"",
                "5:12 target `chat` invalid `template`: syntax error: unexpected end of block",
            ),
            (
                "format = \"template\"\ntemplate_file = \"/nonexistent/pollhook.j2\"",
                "5:17 target `chat` cannot read template file `/nonexistent/pollhook.j2`",
            ),
            (
                "format = \"template\"\ntemplate = \"x\"\ncontent_type = \"bad\\nvalue\"",
                "6:16 target `chat` invalid content type",
            ),
        ];
        for (extra, expected) in cases {
            let found = problems(&target(extra));
            assert_eq!(found.len(), 1, "{extra}: {found:#?}");
            assert!(found[0].starts_with(expected), "{extra}: {found:#?}");
        }
    }

    #[test]
    fn mistakes_in_secret_values_never_quote_them() {
        let found = problems(
            r#"[defaults]
every = "1m"
[[endpoint]]
name = "a"
url = "ftp://user:PASSWORD@host/x"
[[endpoint]]
name = "b"
url = "http://host/x"
headers = { Authorization = "Bearer PHSECRET\u0001", X-Key = "${POLLHOOK_TEST_SURELY_UNSET}" }
"#,
        );
        assert_eq!(
            found,
            [
                "5:7 endpoint `a` invalid URL `ftp://user:***@host/x`: scheme `ftp` is not `http` or `https`",
                "9:29 endpoint `b` invalid value for header `authorization`: it holds a character headers cannot carry (a newline or another control character)",
                "9:62 endpoint `b` environment variable `POLLHOOK_TEST_SURELY_UNSET` is not set",
            ]
        );
        let literal = Config::compile(
            "[[endpoint]]\nname = \"a\"\nurl = \"http://h/\"\nevery = \"1m\"\nheaders = { X-Key = \"PHSECRET\" }\n",
            Path::new("c.toml"),
        )
        .unwrap();
        assert!(!format!("{:?}", literal.endpoints[0]).contains("PHSECRET"));
    }

    #[test]
    fn oauth2_secrets_never_show_in_debug() {
        let config = Config::compile(
            "[[endpoint]]\nname = \"a\"\nurl = \"http://h/\"\nevery = \"1m\"\n\
             auth = { oauth2 = { token_url = \"http://h/t\", client_id = \"PHSECRET-ID\", client_secret = \"PHSECRET-CS\", refresh_token = \"PHSECRET-RT\", params = { audience = \"PHSECRET-P\" } } }\n",
            Path::new("c.toml"),
        )
        .unwrap();
        let shown = format!("{:?}", config.endpoints[0]);
        assert!(shown.contains("OAuth2"), "{shown}");
        assert!(!shown.contains("PHSECRET"), "{shown}");
    }

    /// A mistake is reported once, where it is, not again as what follows
    /// from it elsewhere.
    #[test]
    fn one_mistake_makes_no_false_ones() {
        let found = problems(
            r#"[defaults]
every = "soon"
[[target]]
name = "ha"
url = "http://127.0.0.1:1/hook"
secret = "${POLLHOOK_TEST_SURELY_UNSET}"
[[endpoint]]
name = "prices"
url = "${POLLHOOK_TEST_SURELY_UNSET}"
targets = ["ha"]
[[endpoint]]
name = "list"
url = "http://127.0.0.1:1/list"
items = "["
key = ".id"
"#,
        );
        assert_eq!(
            found,
            [
                "2:9  invalid duration `soon`: expected number at 0 (write e.g. `30s`, `5m`, `1h`)",
                "6:10 target `ha` environment variable `POLLHOOK_TEST_SURELY_UNSET` is not set",
                "9:7 endpoint `prices` environment variable `POLLHOOK_TEST_SURELY_UNSET` is not set",
                "14:9 endpoint `list` invalid jq filter `[`: expected closing bracket at the end",
            ]
        );
    }

    #[test]
    fn line_column_counts_characters() {
        assert_eq!(line_column("ab\ncé d", 7), (2, 4));
        assert_eq!(line_column("", 5), (1, 1));
    }
}
