//! Shards and failover: real `pollhook run` processes sharing a real
//! `nats-server -js` (see `nats`) and one config (but for the state dir),
//! polling an API on 127.0.0.1; each instance's admin API says which
//! endpoints it polls and when it last did.
//! Three instances poll each endpoint from exactly one; killing one moves
//! its shard within the lease, and every change reaches the stream; its
//! restart takes its shard back; going from 3 to 4 shards moves about a
//! quarter of the endpoints.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::routing::get;
use pollhook::cluster::shard::shard_of;

use crate::nats::{NatsServer, messages};
use crate::support::{run_binary, serve};

/// The value each endpoint serves.
type Shared = Arc<Mutex<BTreeMap<usize, u64>>>;

async fn answer(State(values): State<Shared>, UrlPath(number): UrlPath<usize>) -> String {
    let value = values.lock().unwrap().get(&number).copied().unwrap_or(0);
    format!(r#"{{"value":{value}}}"#)
}

struct Cluster {
    dir: tempfile::TempDir,
    api: std::net::SocketAddr,
    seen: Shared,
    server: NatsServer,
    endpoints: usize,
}

impl Cluster {
    async fn start(endpoints: usize) -> Cluster {
        let seen = Shared::default();
        let router = Router::new()
            .route("/e/{number}", get(answer))
            .with_state(seen.clone());
        Cluster {
            dir: tempfile::tempdir().unwrap(),
            api: serve(router).await,
            seen,
            server: NatsServer::start().await,
            endpoints,
        }
    }

    /// The config of instance `instance`: the same as every other's but for
    /// its state dir.
    fn config(&self, instance: u32, every: &str, lease: &str) -> PathBuf {
        let dir = self.dir.path().join(format!("instance-{instance}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut text = format!(
            "state_dir = \"{}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [cluster]\nnats = \"{}\"\nlease = \"{lease}\"\n\
             [[target]]\nname = \"stream\"\nurl = \"{}\"\ncreate_stream = true\nparallel = 16\n",
            dir.join("state").display(),
            self.server.url(),
            self.server.url()
        );
        for number in 0..self.endpoints {
            text.push_str(&format!(
                "[[endpoint]]\nname = \"{}\"\nurl = \"http://{}/e/{number}\"\nevery = \"{every}\"\n",
                name(number),
                self.api
            ));
        }
        let path = dir.join("config.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    fn set_all(&self, value: u64) {
        let mut values = self.seen.lock().unwrap();
        for number in 0..self.endpoints {
            values.insert(number, value);
        }
    }
}

/// Each instance's endpoints and when each last polled (ms), from their
/// admin APIs; an instance not running has none.
async fn polled(configs: &[PathBuf], running: &[bool]) -> BTreeMap<String, Vec<(u32, u64)>> {
    let mut polled: BTreeMap<String, Vec<(u32, u64)>> = BTreeMap::new();
    for (index, config) in configs.iter().enumerate() {
        if !running[index] {
            continue;
        }
        let Some(text) = admin_get(config, "/api/v1/endpoints").await else {
            continue;
        };
        let views: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
        for view in views {
            if let Some(at) = view["last_poll_ms"].as_u64() {
                polled
                    .entry(view["name"].as_str().unwrap().to_string())
                    .or_default()
                    .push((index as u32 + 1, at));
            }
        }
    }
    polled
}

/// Waits (at most `limit`) until `condition` holds over what the running
/// instances polled.
async fn wait_polled(
    what: &str,
    configs: &[PathBuf],
    running: &[bool],
    limit: Duration,
    condition: impl Fn(&BTreeMap<String, Vec<(u32, u64)>>) -> bool,
) -> BTreeMap<String, Vec<(u32, u64)>> {
    let deadline = Instant::now() + limit;
    loop {
        let polled = polled(configs, running).await;
        if condition(&polled) {
            return polled;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting until {what}: {polled:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn name(number: usize) -> String {
    format!("endpoint-{number}")
}

fn sigterm(child: &tokio::process::Child) {
    let pid = child.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
}

/// A running instance's admin API, from the address file in its state dir
/// (none until it has started).
async fn admin_get(config: &Path, path: &str) -> Option<String> {
    let address_file = config.with_file_name("state").join("admin.addr");
    let address = std::fs::read_to_string(&address_file).ok()?;
    let response = reqwest::get(format!("http://{}{path}", address.trim()))
        .await
        .ok()?;
    response.text().await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_poll_each_of_300_endpoints_from_exactly_one() {
    let cluster = Cluster::start(300).await;
    let configs: Vec<PathBuf> = (1..=3).map(|i| cluster.config(i, "500ms", "2s")).collect();
    let mut instances = Vec::new();
    for (i, config) in configs.iter().enumerate() {
        instances.push(run_binary(config, &["--shard", &format!("{}/3", i + 1)]));
    }
    let running = [true; 3];
    // Every endpoint polled, a lease's time and more after the start.
    let started_ms = now_ms();
    let polled = wait_polled(
        "every endpoint is polled",
        &configs,
        &running,
        Duration::from_secs(30),
        |polled| {
            polled.len() == 300
                && polled
                    .values()
                    .all(|by| by.iter().all(|(_, at)| *at > started_ms + 2500))
        },
    )
    .await;
    for (endpoint, by) in &polled {
        let instances: Vec<u32> = by.iter().map(|(instance, _)| *instance).collect();
        assert_eq!(
            instances,
            [shard_of(endpoint, 3)],
            "{endpoint} is polled by {instances:?}"
        );
    }

    let view: serde_json::Value =
        serde_json::from_str(&admin_get(&configs[1], "/api/v1/cluster").await.unwrap()).unwrap();
    let own = (0..300).filter(|n| shard_of(&name(*n), 3) == 2).count();
    assert_eq!(view["shard"], "2/3");
    assert_eq!(view["endpoints"], own);
    assert_eq!(view["counts"]["2/3"], own);
    let metrics = admin_get(&configs[1], "/metrics").await.unwrap();
    assert!(
        metrics.contains(&format!("pollhook_shard_endpoints{{shard=\"2/3\"}} {own}")),
        "{metrics}"
    );
    for instance in &instances {
        sigterm(instance);
    }
    for instance in &mut instances {
        instance.wait().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instance_s_shard_moves_within_the_lease_and_no_change_is_lost() {
    let lease = Duration::from_secs(1);
    let cluster = Cluster::start(30).await;
    let configs: Vec<PathBuf> = (1..=3).map(|i| cluster.config(i, "200ms", "1s")).collect();
    let run = |i: usize| run_binary(&configs[i - 1], &["--shard", &format!("{i}/3")]);
    let mut instances: Vec<_> = (1..=3).map(run).collect();
    let mut running = [true; 3];
    let started_ms = now_ms();
    wait_polled(
        "every endpoint is polled",
        &configs,
        &running,
        Duration::from_secs(20),
        |polled| {
            polled.len() == 30
                && polled
                    .values()
                    .all(|by| by.iter().all(|(_, at)| *at > started_ms + 1200))
        },
    )
    .await;
    let of_two: Vec<String> = (0..30)
        .map(name)
        .filter(|endpoint| shard_of(endpoint, 3) == 2)
        .collect();
    assert!(!of_two.is_empty());

    // Killed; a change comes while its shard is without a poller.
    instances[1].start_kill().unwrap();
    instances[1].wait().await.unwrap();
    running[1] = false;
    let killed = Instant::now();
    let killed_ms = now_ms();
    cluster.set_all(1);
    wait_polled(
        "a survivor polls every endpoint of shard 2",
        &configs,
        &running,
        Duration::from_secs(10),
        |polled| {
            of_two.iter().all(|endpoint| {
                polled
                    .get(endpoint)
                    .is_some_and(|by| by.iter().any(|(_, at)| *at > killed_ms))
            })
        },
    )
    .await;
    let take_over = killed.elapsed();
    eprintln!("take-over: {take_over:?} with a {lease:?} lease");
    // Within the lease, its renewal tick, a poll's interval, and the
    // admin API's view of it.
    assert!(
        take_over <= lease + Duration::from_millis(1500),
        "{take_over:?}"
    );
    // A change after the take-over.
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.set_all(2);

    // Every endpoint's two changes are in the stream: versions 2 and 3.
    let context = cluster.server.jetstream().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let versions = loop {
        let mut versions: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
        let stored = messages(&context, "POLLHOOK").await;
        let ids: BTreeSet<&String> = stored.iter().map(|message| &message.id).collect();
        assert_eq!(ids.len(), stored.len(), "a webhook-id twice in the stream");
        for message in &stored {
            let data = &message.event["data"];
            versions
                .entry(data["endpoint"].as_str().unwrap().to_string())
                .or_default()
                .insert(data["version"].as_u64().unwrap());
        }
        let complete = (0..30).all(|n| {
            versions
                .get(&name(n))
                .is_some_and(|seen| seen.contains(&2) && seen.contains(&3))
        });
        if complete || Instant::now() > deadline {
            break versions;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for n in 0..30 {
        let seen = versions.get(&name(n));
        assert!(
            seen.is_some_and(|seen| seen.contains(&2) && seen.contains(&3)),
            "{}: {seen:?} (shard {})",
            name(n),
            shard_of(&name(n), 3)
        );
    }

    // Back again, the instance takes its shard back from the survivor,
    // and only it polls the shard.
    instances[1] = run(2);
    running[1] = true;
    let restarted_ms = now_ms();
    wait_polled(
        "instance 2 polls its shard again, alone",
        &configs,
        &running,
        Duration::from_secs(10),
        |polled| {
            of_two.iter().all(|endpoint| {
                polled
                    .get(endpoint)
                    .is_some_and(|by| by.len() == 1 && by[0].0 == 2 && by[0].1 > restarted_ms)
            })
        },
    )
    .await;
    for instance in &instances {
        sigterm(instance);
    }
    for instance in &mut instances {
        instance.wait().await.unwrap();
    }
}

/// The endpoints `pollhook status` lists for `shard` (offline: the shard
/// comes from the config alone).
async fn listed(dir: &Path, endpoints: usize, shard: &str) -> BTreeSet<String> {
    let mut text = format!(
        "state_dir = \"{}\"\n[cluster]\nshard = \"{shard}\"\n[[target]]\nname = \"t\"\nurl = \"http://127.0.0.1:9/\"\n",
        dir.join("state").display()
    );
    for number in 0..endpoints {
        text.push_str(&format!(
            "[[endpoint]]\nname = \"{}\"\nurl = \"http://127.0.0.1:9/{number}\"\nevery = \"1m\"\n",
            name(number)
        ));
    }
    let config = dir.join("config.toml");
    std::fs::write(&config, text).unwrap();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_pollhook"))
        .args(["status", "-c", config.to_str().unwrap()])
        .env_remove("POLLHOOK_CONFIG")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let first = stdout.lines().next().unwrap_or_default();
    assert!(first.starts_with(&format!("shard {shard}: ")), "{stdout}");
    stdout
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|word| word.starts_with("endpoint-"))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn going_from_3_to_4_shards_moves_about_a_quarter() {
    let dir = tempfile::tempdir().unwrap();
    let mut before: BTreeMap<String, u32> = BTreeMap::new();
    let mut after: BTreeMap<String, u32> = BTreeMap::new();
    for (count, map) in [(3, &mut before), (4, &mut after)] {
        for index in 1..=count {
            for endpoint in listed(dir.path(), 300, &format!("{index}/{count}")).await {
                assert!(map.insert(endpoint, index).is_none(), "in two shards");
            }
        }
        assert_eq!(map.len(), 300);
    }
    let moved: Vec<&String> = before
        .iter()
        .filter(|(endpoint, shard)| after[*endpoint] != **shard)
        .map(|(endpoint, _)| endpoint)
        .collect();
    // A quarter is 75; each moved endpoint went to the new shard.
    assert!((55..=95).contains(&moved.len()), "{} moved", moved.len());
    assert!(moved.iter().all(|endpoint| after[*endpoint] == 4));
}
