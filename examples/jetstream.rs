//! Events per second into JetStream from one instance: a `nats-server -js`
//! of its own on a free port of 127.0.0.1 (Debian's `nats-server`), a NATS
//! target with `create_stream`, and N events published through the
//! target's link (the dispatcher's attempt) with `parallel` in flight, each
//! settled by its PubAck. Then the same N again: JetStream's duplicate
//! window keeps them out (`Nats-Msg-Id`), as after a restart.
//!
//! `cargo run --release --example jetstream -- [events] [in flight]`
//! (defaults 20,000 and 64).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use pollhook::config::Config;
use pollhook::deliver::Link;
use pollhook::store::OutboxRow;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let events: usize = args.next().map_or(Ok(20_000), |n| n.parse())?;
    let in_flight: usize = args.next().map_or(Ok(64), |n| n.parse())?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let dir = tempfile::tempdir()?;
    let mut server = tokio::process::Command::new("nats-server")
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|error| {
            anyhow::anyhow!("cannot start nats-server (apt-get install nats-server): {error}")
        })?;
    for _ in 0..500 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let text = format!(
        "[[target]]\nname = \"stream\"\nurl = \"nats://127.0.0.1:{port}\"\ncreate_stream = true\nparallel = {in_flight}\n\
         [[endpoint]]\nname = \"bench\"\nurl = \"http://127.0.0.1:9/\"\nevery = \"1m\"\n"
    );
    let config = Config::compile(&text, Path::new("jetstream.toml"))?;
    let target = config.targets[0].clone();
    let link = Link::open(&pollhook::deliver::clients()?, &target, None);
    let rows: Arc<Vec<OutboxRow>> = Arc::new(
        (0..events)
            .map(|n| OutboxRow {
                event_id: format!("msg_{n:08}"),
                event_type: "endpoint.changed".into(),
                endpoint: format!("endpoint-{}", n % 1000),
                body: format!(
                    r#"{{"type":"endpoint.changed","timestamp":"2026-01-01T00:00:00Z","data":{{"endpoint":"endpoint-{}","version":{n},"patch":[{{"op":"replace","path":"/price","value":{n}}}]}}}}"#,
                    n % 1000
                ),
                ..OutboxRow::default()
            })
            .collect(),
    );
    // The connection and the stream first.
    let warm = link.attempt(&target, &rows[0]).await;
    anyhow::ensure!(warm.acknowledged, "{:?}", warm.error);
    for round in ["new", "again (duplicates)"] {
        let started = Instant::now();
        let acknowledged = futures_util::stream::iter(0..events)
            .map(|n| {
                let (link, target, rows) = (link.clone(), target.clone(), rows.clone());
                async move { link.attempt(&target, &rows[n]).await.acknowledged }
            })
            .buffer_unordered(in_flight)
            .filter(|acknowledged| std::future::ready(*acknowledged))
            .count()
            .await;
        let elapsed = started.elapsed();
        println!(
            "{round}: {acknowledged} of {events} events acknowledged in {:.2} s: {:.0} events/s with {in_flight} in flight",
            elapsed.as_secs_f64(),
            events as f64 / elapsed.as_secs_f64()
        );
    }
    server.kill().await?;
    Ok(())
}
