//! The admin HTTP API, and the client the CLI reaches it with.
//!
//! sled admits one process, so while the daemon runs the CLI asks it over
//! this API instead of opening the store. It listens on loopback by default
//! (or a unix socket). When a token is set, every route but `/healthz` and
//! `/readyz` needs it (`/metrics` too, unless `metrics_public`). On a
//! loopback listener a request must name a loopback host, so that a web
//! page cannot reach the API through DNS rebinding.
//! The daemon writes the address it really bound to `admin.addr` in its
//! state dir, which is also how the CLI knows that a daemon is running.

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts as _, Path as UrlPath, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use http_body_util::BodyExt as _;
use serde::Deserialize;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{AdminListen, Config};
use crate::dashboard::{Sessions, session};
use crate::status::{Control, EndpointStatus, LiveEvent, read};
use crate::store::{DeadFilter, StoreError};
use crate::views::{self, EndpointView, Rows, TargetRow, VersionView};

/// The file in the state dir that holds a running daemon's API address.
pub const ADDRESS_FILE: &str = "admin.addr";

use crate::operate::CommandError;
pub use crate::operate::Context;

#[derive(Clone)]
struct AdminState {
    context: Arc<Context>,
    /// The dashboard's sessions: their cookie also lets a browser read the
    /// API (the live page's event stream), never change anything.
    sessions: Arc<Sessions>,
    shutdown: CancellationToken,
}

/// Binds the admin API and serves it until `shutdown`. Returns the address
/// it listens on (the real port when the config asked for port 0).
pub async fn serve(
    listen: &crate::config::Admin,
    context: Context,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> anyhow::Result<String> {
    let state = AdminState {
        context: Arc::new(context),
        sessions: Arc::default(),
        shutdown: shutdown.clone(),
    };
    let dashboard = crate::dashboard::router(
        state.context.clone(),
        state.sessions.clone(),
        shutdown.clone(),
        tracker,
    );
    let mut protected = Router::new()
        .route("/api/v1/endpoints", get(endpoints))
        .route("/api/v1/endpoints/{name}", get(endpoint))
        .route("/api/v1/endpoints/{name}/history", get(history))
        .route("/api/v1/endpoints/{name}/history/{version}", get(document))
        .route("/api/v1/deliveries", get(deliveries))
        .route("/api/v1/dead", get(dead))
        .route("/api/v1/events", get(events))
        .route("/api/v1/endpoints/{name}/poll", post(poll_now))
        .route("/api/v1/endpoints/{name}/preview", post(preview))
        .route("/api/v1/endpoints/{name}/pause", post(pause_endpoint))
        .route("/api/v1/endpoints/{name}/resume", post(resume_endpoint))
        .route("/api/v1/dead/{id}/replay", post(replay))
        .route("/api/v1/replay", post(replay_matching))
        .route("/api/v1/targets/{name}/resume", post(resume))
        .route("/api/v1/reload", post(reload))
        .route("/api/v1/cluster", get(cluster));
    let mut public = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz));
    if listen.metrics_public {
        public = public.route("/metrics", get(metrics));
    } else {
        protected = protected.route("/metrics", get(metrics));
    }
    let protected =
        protected.route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    let mut router = public.merge(protected).with_state(state).merge(dashboard);
    if matches!(&listen.listen, AdminListen::Tcp(address) if address.ip().is_loopback()) {
        router = router.layer(middleware::from_fn(require_loopback_host));
    }
    let stop = shutdown.clone().cancelled_owned();
    match &listen.listen {
        AdminListen::Tcp(address) => {
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .map_err(|error| {
                    anyhow::anyhow!("cannot listen on `{address}` for the admin API: {error}")
                })?;
            let bound = listener.local_addr()?.to_string();
            tracker.spawn(async move {
                if let Err(error) = axum::serve(listener, router)
                    .with_graceful_shutdown(stop)
                    .await
                {
                    tracing::error!(error = %error, "the admin API stopped");
                }
            });
            Ok(bound)
        }
        AdminListen::Unix(path) => {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            remove_stale_socket(path).await?;
            let listener = tokio::net::UnixListener::bind(path).map_err(|error| {
                anyhow::anyhow!(
                    "cannot listen on `{}` for the admin API: {error}",
                    path.display()
                )
            })?;
            tracker.spawn(async move {
                if let Err(error) = axum::serve(listener, router)
                    .with_graceful_shutdown(stop)
                    .await
                {
                    tracing::error!(error = %error, "the admin API stopped");
                }
            });
            Ok(format!("unix:{}", path.display()))
        }
    }
}

/// Removes a socket left by a daemon that was killed, which would block the
/// bind. Anything else at the path stays: another file is refused, and so
/// is a socket something still answers on.
async fn remove_stale_socket(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::FileTypeExt as _;
    let file_type = match std::fs::symlink_metadata(path) {
        Ok(metadata) => metadata.file_type(),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => {
            anyhow::bail!("cannot use `{}` for the admin API: {error}", path.display())
        }
    };
    if !file_type.is_socket() {
        anyhow::bail!(
            "cannot use `{}` for the admin API: something other than a socket is there; move it away or choose another `listen` path",
            path.display()
        );
    }
    if tokio::net::UnixStream::connect(path).await.is_ok() {
        anyhow::bail!(
            "cannot use `{}` for the admin API: another process listens on it (is pollhook running already?)",
            path.display()
        );
    }
    std::fs::remove_file(path).map_err(|error| {
        anyhow::anyhow!(
            "cannot remove the stale socket `{}`: {error}",
            path.display()
        )
    })
}

/// Refuses a request that names a host which is not loopback: a browser
/// sends the name it looked up, so a page whose name now resolves to
/// 127.0.0.1 (DNS rebinding) is told apart from the CLI and local tools.
async fn require_loopback_host(request: Request, next: Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .map(|host| host.to_str().unwrap_or_default());
    if host.is_some_and(|host| !is_loopback_host(host)) {
        return (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({
                "error": "the admin API listens on loopback and answers only requests for a loopback host (`localhost`, `127.0.0.1`, `[::1]`)"
            })),
        )
            .into_response();
    }
    next.run(request).await
}

/// Whether a `Host` header names a loopback host: `localhost` (or a name
/// under it) or a loopback address, with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((address, port)) if port.is_empty() || port.starts_with(':') => address,
            _ => return false,
        },
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    let name = name.to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|address| address.is_loopback())
}

/// Routes other than `/healthz` and `/readyz` need
/// `Authorization: Bearer <token>` when a token is set; a dashboard
/// session's cookie will do for reading.
async fn require_token(
    State(state): State<AdminState>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    if let Some(token) = &state.context.token {
        let session_reads =
            request.method() == Method::GET && state.sessions.visitor(&headers).is_some();
        if !session_reads && !session::bearer(&headers, token) {
            return (
                StatusCode::UNAUTHORIZED,
                Json(serde_json::json!({"error": "a valid bearer token is required"})),
            )
                .into_response();
        }
    }
    next.run(request).await
}

async fn readyz(State(state): State<AdminState>) -> Response {
    if let Some(failure) = state.context.store.write_failure() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {failure}\n"),
        )
            .into_response();
    }
    if state.context.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

/// The shards this instance polls and how many endpoints that is.
async fn cluster(State(state): State<AdminState>) -> Json<crate::cluster::ClusterView> {
    Json(crate::locks::read(&state.context.cluster).clone())
}

async fn metrics(State(state): State<AdminState>) -> Response {
    let store = &state.context.store;
    let pages = state
        .context
        .metrics
        .scrape(store.outbox_len(), store.dead_len());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        Body::from_stream(futures_util::stream::iter(pages.map(Ok::<_, Infallible>))),
    )
        .into_response()
}

fn store_error(error: impl std::error::Error) -> Response {
    let message = crate::error_chain(&error);
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(serde_json::json!({"error": message})),
    )
        .into_response()
}

fn not_found(what: String) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(serde_json::json!({"error": what})),
    )
        .into_response()
}

/// A command's error as the API answers it.
fn command_error(error: CommandError) -> Response {
    match error {
        CommandError::NotFound(what) => not_found(what),
        CommandError::Config(error) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(serde_json::json!({"error": error})),
        )
            .into_response(),
        CommandError::ShuttingDown => shutting_down(),
        CommandError::Store(error) => store_error(error),
    }
}

async fn endpoints(State(state): State<AdminState>) -> Response {
    let pending = match state.context.store.pending_by_endpoint() {
        Ok(pending) => pending,
        Err(error) => return store_error(error),
    };
    let statuses: Vec<EndpointStatus> = read(&state.context.statuses).values().cloned().collect();
    let views: Vec<EndpointView> = statuses
        .iter()
        .map(|status| state.context.view(status, &pending))
        .collect();
    Json(views).into_response()
}

async fn endpoint(State(state): State<AdminState>, UrlPath(name): UrlPath<String>) -> Response {
    let status = match state.context.status(&name) {
        Ok(status) => status,
        Err(error) => return command_error(error),
    };
    match state.context.store.pending_by_endpoint() {
        Ok(pending) => Json(state.context.view(&status, &pending)).into_response(),
        Err(error) => store_error(error),
    }
}

async fn poll_now(State(state): State<AdminState>, UrlPath(name): UrlPath<String>) -> Response {
    match state.context.poll_now(&name).await {
        Ok(()) => (
            StatusCode::ACCEPTED,
            Json(serde_json::json!({"polling": name})),
        )
            .into_response(),
        Err(error) => command_error(error),
    }
}

async fn preview(State(state): State<AdminState>, UrlPath(name): UrlPath<String>) -> Response {
    match state.context.preview(&name, &state.shutdown).await {
        Ok(view) => Json(view).into_response(),
        Err(error) => command_error(error),
    }
}

async fn history(State(state): State<AdminState>, UrlPath(name): UrlPath<String>) -> Response {
    match state.context.store.history(&name) {
        Ok(versions) => {
            let versions: Vec<VersionView> = versions.into_iter().map(VersionView::from).collect();
            Json(versions).into_response()
        }
        Err(error) => store_error(error),
    }
}

async fn document(
    State(state): State<AdminState>,
    UrlPath((name, version)): UrlPath<(String, u64)>,
) -> Response {
    match state.context.store.document(&name, version) {
        Ok(Some(document)) => document.text().into_owned().into_response(),
        Ok(None) => not_found(format!("`{name}` has no stored version {version}")),
        Err(error) => store_error(error),
    }
}

#[derive(Debug, Deserialize)]
struct TargetQuery {
    target: Option<String>,
}

fn rows_response(rows: Result<Vec<TargetRow>, StoreError>) -> Response {
    match rows {
        Ok(rows) => Json(rows).into_response(),
        Err(error) => store_error(error),
    }
}

async fn deliveries(State(state): State<AdminState>, Query(query): Query<TargetQuery>) -> Response {
    let store = &state.context.store;
    rows_response(views::target_rows(
        store,
        Rows::Queued,
        query.target.as_deref(),
    ))
}

async fn dead(State(state): State<AdminState>, Query(query): Query<TargetQuery>) -> Response {
    let store = &state.context.store;
    rows_response(views::target_rows(
        store,
        Rows::Dead,
        query.target.as_deref(),
    ))
}

/// Which dead letters `POST /api/v1/replay` puts back: every one that
/// passes each filter given.
#[derive(Debug, Default, Deserialize)]
struct ReplayQuery {
    /// Event ids, comma-separated.
    ids: Option<String>,
    target: Option<String>,
    /// Only letters that died at or after this time (Unix milliseconds).
    since_ms: Option<u64>,
}

async fn replay_matching(
    State(state): State<AdminState>,
    Query(query): Query<ReplayQuery>,
) -> Response {
    let ids: Vec<String> = query
        .ids
        .iter()
        .flat_map(|ids| ids.split(','))
        .filter(|id| !id.is_empty())
        .map(str::to_string)
        .collect();
    let filter = DeadFilter {
        event_ids: &ids,
        target: query.target.as_deref(),
        since_ms: query.since_ms,
    };
    replay_response(&state, &filter)
}

async fn replay(State(state): State<AdminState>, UrlPath(id): UrlPath<String>) -> Response {
    let ids = [id];
    replay_response(
        &state,
        &DeadFilter {
            event_ids: &ids,
            ..DeadFilter::default()
        },
    )
}

fn replay_response(state: &AdminState, filter: &DeadFilter<'_>) -> Response {
    match state.context.replay(filter) {
        Ok(replayed) => Json(replayed).into_response(),
        Err(error) => command_error(error),
    }
}

async fn resume(State(state): State<AdminState>, UrlPath(name): UrlPath<String>) -> Response {
    match state.context.resume(&name) {
        Ok(resumed) => Json(serde_json::json!({"resumed": resumed})).into_response(),
        Err(error) => command_error(error),
    }
}

async fn pause_endpoint(
    State(state): State<AdminState>,
    UrlPath(name): UrlPath<String>,
) -> Response {
    match state.context.pause_endpoint(&name).await {
        Ok(since_ms) => {
            Json(serde_json::json!({"paused": true, "since_ms": since_ms})).into_response()
        }
        Err(error) => command_error(error),
    }
}

async fn resume_endpoint(
    State(state): State<AdminState>,
    UrlPath(name): UrlPath<String>,
) -> Response {
    match state.context.resume_endpoint(&name).await {
        Ok(resumed) => Json(serde_json::json!({"resumed": resumed})).into_response(),
        Err(error) => command_error(error),
    }
}

async fn reload(State(state): State<AdminState>) -> Response {
    let (reply, answer) = tokio::sync::oneshot::channel();
    if state
        .context
        .control
        .send(Control::Reload(reply))
        .await
        .is_err()
    {
        return shutting_down();
    }
    match answer.await {
        Ok(Ok(summary)) => Json(serde_json::json!({"reloaded": summary})).into_response(),
        Ok(Err(problems)) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(serde_json::json!({"error": problems})),
        )
            .into_response(),
        Err(_) => shutting_down(),
    }
}

fn shutting_down() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(serde_json::json!({"error": "shutting down"})),
    )
        .into_response()
}

#[derive(Debug, Clone, Default, Deserialize)]
struct EventFilter {
    endpoint: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
}

impl EventFilter {
    fn wants(&self, event: &LiveEvent) -> bool {
        self.endpoint
            .as_ref()
            .is_none_or(|endpoint| *endpoint == event.endpoint)
            && self.kind.as_ref().is_none_or(|kind| *kind == event.kind)
    }
}

/// The live event stream: WebSocket when the client asks to upgrade,
/// Server-Sent Events otherwise. A client too slow to keep up is dropped
/// with a reason; it never slows the daemon (the channel never blocks).
async fn events(
    State(state): State<AdminState>,
    Query(filter): Query<EventFilter>,
    request: Request,
) -> Response {
    let receiver = state.context.live.subscribe();
    let upgrade = request
        .headers()
        .get(header::UPGRADE)
        .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if upgrade {
        let (mut parts, _) = request.into_parts();
        return match WebSocketUpgrade::from_request_parts(&mut parts, &state).await {
            Ok(socket) => socket
                .on_upgrade(move |socket| {
                    stream_websocket(socket, receiver, filter, state.shutdown)
                })
                .into_response(),
            Err(rejection) => rejection.into_response(),
        };
    }
    let stream = futures_util::stream::unfold(
        Some((receiver, filter, state.shutdown)),
        |streaming| async move {
            let (mut receiver, filter, shutdown) = streaming?;
            let next = tokio::select! {
                _ = shutdown.cancelled() => return None,
                next = next_live(&mut receiver, &filter) => next,
            };
            match next {
                Live::Event(event) => {
                    let sse = SseEvent::default()
                        .event(event.kind.as_str())
                        .id(event.id.as_str())
                        .data(event.body.as_str());
                    Some((Ok::<_, Infallible>(sse), Some((receiver, filter, shutdown))))
                }
                Live::Dropped(reason) => {
                    Some((Ok(SseEvent::default().event("dropped").data(reason)), None))
                }
                Live::Closed => None,
            }
        },
    );
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

async fn stream_websocket(
    mut socket: WebSocket,
    mut receiver: broadcast::Receiver<Arc<LiveEvent>>,
    filter: EventFilter,
    shutdown: CancellationToken,
) {
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => Live::Dropped("pollhook is stopping".to_string()),
            next = next_live(&mut receiver, &filter) => next,
            incoming = socket.recv() => match incoming {
                // The client went away or closed: done.
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => continue,
            },
        };
        match next {
            Live::Event(event) => {
                if socket
                    .send(Message::Text(event.body.clone().into()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Live::Dropped(reason) => {
                // 1008: policy violation, the closest code to "too slow".
                let _ = socket.send(close(1008, reason)).await;
                return;
            }
            Live::Closed => return,
        }
    }
}

/// What a live stream does next.
#[derive(Debug)]
enum Live {
    Event(Arc<LiveEvent>),
    /// End the stream and say why.
    Dropped(String),
    /// The daemon is gone.
    Closed,
}

/// The next event a client wants. A client that fell more than the
/// channel's capacity behind is dropped rather than allowed to hold
/// events back: the daemon never waits for a reader.
async fn next_live(
    receiver: &mut broadcast::Receiver<Arc<LiveEvent>>,
    filter: &EventFilter,
) -> Live {
    loop {
        match receiver.recv().await {
            Ok(event) if filter.wants(&event) => return Live::Event(event),
            Ok(_) => continue,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                return Live::Dropped(format!("too slow: missed {missed} events"));
            }
            Err(broadcast::error::RecvError::Closed) => return Live::Closed,
        }
    }
}

fn close(code: u16, reason: String) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

/// Why the CLI could not use the admin API.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("pollhook is not running")]
    NotRunning,
    #[error("the admin API answered {status}: {message}")]
    Status { status: u16, message: String },
    #[error("cannot talk to the admin API at `{address}`: {message}")]
    Io { address: String, message: String },
}

/// The CLI's side of the admin API.
pub struct AdminClient {
    address: String,
    token: Option<String>,
    /// What this process could not read of the config (its token, say):
    /// said when the API refuses us.
    unresolved: Vec<String>,
}

impl AdminClient {
    /// The API of the daemon running with this config, if one runs.
    pub async fn discover(config: &Config) -> Option<AdminClient> {
        let address = std::fs::read_to_string(config.state_dir.join(ADDRESS_FILE)).ok()?;
        let client = AdminClient {
            address: address.trim().to_string(),
            token: config.admin.token.clone(),
            unresolved: config.unresolved.clone(),
        };
        // A file left by a daemon that was killed points at nothing.
        client.send("GET", "/healthz").await.ok().map(|_| client)
    }

    /// Sends a request and returns the response, its body still streaming.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
    ) -> Result<hyper::Response<hyper::body::Incoming>, AdminError> {
        // The admin API answers only requests for a loopback host.
        let host = match self.address.strip_prefix("unix:") {
            Some(_) => "localhost",
            None => self.address.as_str(),
        };
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, host);
        if let Some(token) = &self.token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(http_body_util::Empty::<Bytes>::new())
            .map_err(|error| self.io_error(error))?;
        match self.address.strip_prefix("unix:") {
            Some(path) => {
                let stream = tokio::net::UnixStream::connect(Path::new(path))
                    .await
                    .map_err(|error| self.connect_error(error))?;
                self.exchange(stream, request).await
            }
            None => {
                let stream = tokio::net::TcpStream::connect(&self.address)
                    .await
                    .map_err(|error| self.connect_error(error))?;
                self.exchange(stream, request).await
            }
        }
    }

    async fn exchange<S>(
        &self,
        stream: S,
        request: hyper::Request<http_body_util::Empty<Bytes>>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, AdminError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|error| self.io_error(error))?;
        tokio::spawn(connection);
        sender
            .send_request(request)
            .await
            .map_err(|error| self.io_error(error))
    }

    /// Sends a request and decodes a 2xx JSON answer.
    pub async fn json<T: for<'de> Deserialize<'de>>(
        &self,
        method: &str,
        path: &str,
    ) -> Result<T, AdminError> {
        let body = self.bytes(method, path).await?;
        serde_json::from_slice(&body).map_err(|error| self.io_error(error))
    }

    /// Sends a request and returns a 2xx answer's body.
    pub async fn bytes(&self, method: &str, path: &str) -> Result<Bytes, AdminError> {
        let response = self.send(method, path).await?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|error| self.io_error(error))?
            .to_bytes();
        if !status.is_success() {
            let message = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|value| value["error"].as_str().map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_string());
            let message = match status.as_u16() {
                401 if !self.unresolved.is_empty() => format!(
                    "{message}; the admin token may be among what this shell cannot read: {} (set it here, or run the command where the daemon's environment is)",
                    self.unresolved.join("; ")
                ),
                _ => message,
            };
            return Err(AdminError::Status {
                status: status.as_u16(),
                message,
            });
        }
        Ok(body)
    }

    fn connect_error(&self, error: std::io::Error) -> AdminError {
        match error.kind() {
            std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound => {
                AdminError::NotRunning
            }
            _ => self.io_error(error),
        }
    }

    fn io_error(&self, error: impl std::fmt::Display) -> AdminError {
        AdminError::Io {
            address: self.address.clone(),
            message: error.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(endpoint: &str) -> Arc<LiveEvent> {
        let kind = "endpoint.changed".to_string();
        Arc::new(LiveEvent {
            id: "msg_1".into(),
            kind,
            endpoint: endpoint.into(),
            body: "{}".into(),
        })
    }

    #[tokio::test]
    async fn live_streams_filter_and_drop_slow_readers() {
        let (sender, mut receiver) = broadcast::channel(2);
        let filter = EventFilter {
            endpoint: Some("a".into()),
            kind: None,
        };
        sender.send(event("b")).unwrap();
        sender.send(event("a")).unwrap();
        assert!(
            matches!(next_live(&mut receiver, &filter).await, Live::Event(event) if event.endpoint == "a")
        );

        // Five more into a channel of two: this reader fell behind.
        for _ in 0..5 {
            sender.send(event("a")).unwrap();
        }
        let next = next_live(&mut receiver, &filter).await;
        assert!(
            matches!(&next, Live::Dropped(reason) if reason == "too slow: missed 3 events"),
            "{next:?}"
        );
        let mut fresh = receiver.resubscribe();
        drop(sender);
        assert!(matches!(next_live(&mut fresh, &filter).await, Live::Closed));
    }

    #[test]
    fn loopback_hosts() {
        for host in [
            "localhost",
            "LOCALHOST:9477",
            "app.localhost",
            "127.0.0.1",
            "127.0.0.1:9477",
            "127.1.2.3:80",
            "[::1]",
            "[::1]:9477",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:9477",
            "localhost.evil.example",
            "127.0.0.1.evil.example",
            "10.0.0.1:9477",
            "[::2]:9477",
            "[::1]x",
            "",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }
}
