//! How fast the dashboard's pages are at many endpoints: the real daemon
//! with N endpoints (served by one local API), then each page fetched
//! `--rounds` times through the admin address; prints the median and the
//! slowest time per page.
//!
//! ```text
//! cargo run --release --example dashboard_pages -- --endpoints 10000
//! ```

use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use clap::Parser;
use tokio_util::sync::CancellationToken;

use pollhook::config::Config;

const TOKEN: &str = "bench-token";

#[derive(Debug, Parser)]
#[command(about = "Times the dashboard's pages against a daemon with N endpoints")]
struct Args {
    #[arg(long, default_value_t = 10_000)]
    endpoints: usize,
    /// Requests per page.
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// Seconds of polling before the pages are timed (so they show polls).
    #[arg(long, default_value_t = 5)]
    warm_up: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let api = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let api_address = api.local_addr()?;
    let router = Router::new().route(
        "/{name}",
        get(|| async { r#"{"price":19.99,"items":[1,2,3]}"# }),
    );
    tokio::spawn(async move { axum::serve(api, router).await });

    let state = tempfile::tempdir()?;
    let mut text = format!(
        "state_dir = \"{}\"\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n\
         [[target]]\nname = \"hook\"\nurl = \"http://127.0.0.1:9/hook\"\n",
        state.path().display()
    );
    for index in 0..args.endpoints {
        text.push_str(&format!(
            "[[endpoint]]\nname = \"endpoint-{index:05}\"\nurl = \"http://{api_address}/e{index}\"\nevery = \"{}s\"\nmetrics = {{ price = \".price\" }}\n",
            args.warm_up
        ));
    }
    let config = Config::compile(&text, std::path::Path::new("bench.toml"))?;
    let shutdown = CancellationToken::new();
    let daemon = tokio::spawn(pollhook::daemon::run(config, shutdown.clone()));
    let address_file = state.path().join(pollhook::admin::ADDRESS_FILE);
    while !address_file.exists() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let admin = format!("http://{}", std::fs::read_to_string(&address_file)?.trim());
    tokio::time::sleep(Duration::from_secs(args.warm_up)).await;

    let client = reqwest::Client::new();
    let last = args.endpoints.saturating_sub(1);
    let middle = args.endpoints / 2;
    let pages = [
        ("first page of the list", "/".to_string()),
        (
            "a page in the middle",
            format!("/?page={}", args.endpoints / 50 / 2),
        ),
        ("search, one match", format!("/?q=endpoint-{last:05}")),
        ("search, no match", "/?q=nothing-like-it".to_string()),
        ("an endpoint", format!("/endpoints/endpoint-{middle:05}")),
        ("deliveries", "/deliveries".to_string()),
    ];
    println!(
        "{} endpoints, {} requests per page (after {} s of polling)",
        args.endpoints, args.rounds, args.warm_up
    );
    for (what, path) in pages {
        let mut times = Vec::with_capacity(args.rounds);
        for _ in 0..args.rounds {
            let started = Instant::now();
            let response = client
                .get(format!("{admin}{path}"))
                .bearer_auth(TOKEN)
                .send()
                .await?;
            let status = response.status();
            let body = response.bytes().await?;
            times.push(started.elapsed());
            anyhow::ensure!(status.is_success(), "{path}: {status}");
            anyhow::ensure!(!body.is_empty(), "{path}: empty");
        }
        times.sort();
        println!(
            "{what:<24} {path:<28} median {:>7.2} ms   slowest {:>7.2} ms",
            times[times.len() / 2].as_secs_f64() * 1000.0,
            times[times.len() - 1].as_secs_f64() * 1000.0
        );
    }
    shutdown.cancel();
    daemon.await??;
    Ok(())
}
