//! `pollhook demo`: pollhook at work in seconds, with no internet.
//!
//! One process runs three things on 127.0.0.1: a small API whose data
//! changes every `tick`, a webhook receiver that verifies signatures and
//! prints what it gets, and the real daemon between them, configured through
//! the same TOML path as any user's config, with its state in a temp dir.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, WebhookSecret};
use crate::deliver::sign;

/// The demo receiver's signing secret (from the Standard Webhooks examples).
const DEMO_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

const PRODUCTS: [(&str, &str, u64); 3] = [
    ("p-1", "kettle", 3499),
    ("p-2", "teapot", 2250),
    ("p-3", "mug", 899),
];

/// Runs the demo until Ctrl-C, or for `duration`.
pub async fn run(duration: Option<Duration>, tick: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    let api = serve(demo_api(started, tick)).await?;
    let received = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // Also cancelled when nobody reads stdout any more (`demo | head`).
    let shutdown = CancellationToken::new();
    let receiver = serve(receiver(received.clone(), shutdown.clone())).await?;
    let state = tempfile::tempdir()?;
    let every = (tick / 2).max(Duration::from_millis(100));
    let config = Config::compile(
        &demo_config(api.port(), receiver.port(), state.path(), every),
        Path::new("demo.toml"),
    )?;

    let introduction = format!(
        "pollhook demo\n  demo API:          http://{api}/prices (JSON) and http://{api}/status.txt (text), changing every {}\n  webhook receiver:  http://{receiver}/hook (verifies signatures)\n  state:             {} (removed at exit)\n  polling every {}; the first poll stores a baseline, then each change is sent.\n  Ctrl-C to stop.\n",
        humantime::format_duration(tick),
        state.path().display(),
        humantime::format_duration(every)
    );
    say(&introduction)?;

    let stopper = shutdown.clone();
    tokio::spawn(async move {
        match duration {
            Some(duration) => tokio::select! {
                _ = tokio::time::sleep(duration) => {}
                _ = tokio::signal::ctrl_c() => {}
            },
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        stopper.cancel();
    });
    crate::daemon::run(config, shutdown).await?;
    say(&format!(
        "\ndemo finished: {} webhook(s) received",
        received.load(std::sync::atomic::Ordering::Relaxed)
    ))?;
    Ok(())
}

/// Prints `text` and a newline; the error, not a panic, when the reader
/// of stdout has gone away.
fn say(text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    writeln!(std::io::stdout().lock(), "{text}")
}

fn demo_config(api_port: u16, receiver_port: u16, state_dir: &Path, every: Duration) -> String {
    let every = format!("{}ms", every.as_millis());
    format!(
        r#"
state_dir = "{state_dir}"

[admin]
listen = "127.0.0.1:0"

[defaults]
every = "{every}"
timeout = "2s"

[[target]]
name = "demo-receiver"
url = "http://127.0.0.1:{receiver_port}/hook"
secret = "{DEMO_SECRET}"

[[endpoint]]
name = "prices"
url = "http://127.0.0.1:{api_port}/prices"
ignore = ["/generated_at"]   # changes on every request: not news

[[endpoint]]
name = "status"
url = "http://127.0.0.1:{api_port}/status.txt"
"#,
        state_dir = state_dir
            .display()
            .to_string()
            .replace('\\', "\\\\")
            .replace('"', "\\\""),
    )
}

/// Binds 127.0.0.1 on a free port and serves `router` in the background.
async fn serve(router: Router) -> std::io::Result<std::net::SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router).await {
            tracing::warn!(error = %error, "demo server stopped");
        }
    });
    Ok(address)
}

/// A shop API: one price moves on every tick; `generated_at` always moves.
fn demo_api(started: Instant, tick: Duration) -> Router {
    let round = move || (started.elapsed().as_millis() / tick.as_millis().max(1)) as u64;
    Router::new()
        .route(
            "/prices",
            get(move || async move {
                let round = round();
                let items: Vec<serde_json::Value> = PRODUCTS
                    .iter()
                    .enumerate()
                    .map(|(index, (id, name, base))| {
                        // Each round moves one product's price, in turn.
                        let moves = (round + 2 - index as u64) / 3;
                        let price = base + (moves % 5) * 100;
                        serde_json::json!({"id": id, "name": name, "price_cents": price})
                    })
                    .collect();
                axum::Json(serde_json::json!({
                    "generated_at": crate::clock::rfc3339(crate::clock::now_ms()),
                    "items": items,
                }))
            }),
        )
        .route(
            "/status.txt",
            get(move || async move {
                let round = round();
                let state = if (round / 2) % 2 == 0 {
                    "operational"
                } else {
                    "degraded performance"
                };
                format!("api: operational\nsearch: {state}\nbilling: operational\n")
            }),
        )
}

/// Prints each webhook it receives and whether its signature verifies.
/// Stops the demo (`stop`) when stdout cannot be written to any more.
fn receiver(received: Arc<std::sync::atomic::AtomicUsize>, stop: CancellationToken) -> Router {
    let secret: Arc<WebhookSecret> =
        Arc::new(DEMO_SECRET.parse().expect("the demo secret is valid"));
    Router::new()
        .route("/hook", post(receive))
        .with_state(Arc::new(ReceiverState {
            secret,
            received,
            stop,
        }))
}

struct ReceiverState {
    secret: Arc<WebhookSecret>,
    received: Arc<std::sync::atomic::AtomicUsize>,
    stop: CancellationToken,
}

async fn receive(
    State(state): State<Arc<ReceiverState>>,
    headers: HeaderMap,
    body: String,
) -> impl IntoResponse {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let id = header("webhook-id");
    let timestamp = header("webhook-timestamp");
    let verified = timestamp
        .parse::<u64>()
        .map(|timestamp| {
            header("webhook-signature")
                .split(' ')
                .any(|sig| sig == sign::sign(&state.secret, &id, timestamp, body.as_bytes()))
        })
        .unwrap_or(false);
    state
        .received
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let event: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let data = &event["data"];
    let mut report = format!(
        "webhook received: {} {} v{} (id {id}, signature {})",
        event["type"].as_str().unwrap_or("?"),
        data["endpoint"].as_str().unwrap_or("?"),
        data["version"],
        if verified { "ok" } else { "INVALID" },
    );
    if let Some(patch) = data.get("patch") {
        report.push_str(&format!("\n  patch: {patch}"));
    }
    if let Some(diff) = data.get("diff").and_then(|diff| diff.as_str()) {
        for line in diff.lines() {
            report.push_str(&format!("\n  {line}"));
        }
    }
    if say(&report).is_err() {
        state.stop.cancel();
    }
    StatusCode::NO_CONTENT
}
