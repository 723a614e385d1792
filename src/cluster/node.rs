//! The cluster's task with `[cluster] nats`: started and stopped by the
//! daemon's supervisor, it claims this instance's shard and renews it
//! (leases in the JetStream key-value bucket `pollhook_leases`, which
//! forgets a key `lease` after its last write), takes over the shard of an
//! instance that stopped renewing, gives a taken shard back once its own
//! instance is alive again, and mirrors the snapshot records of the held
//! endpoints to the bucket `pollhook_snapshots` after each local commit.
//!
//! Keys: `shard.<n>.<i>` is shard i's lease (whose instance holds it),
//! `node.<n>.<i>` says that shard i's own instance is alive, `e.<hash>` an
//! endpoint's mirrored records ([`crate::store::Mirrored`]). Before the
//! supervisor starts polling a shard it won, the node has adopted the
//! shard's records into the local store; before it gives one back, the
//! supervisor has stopped polling it and its records are mirrored.

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures_util::StreamExt as _;
use sha2::{Digest as _, Sha256};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::lease::Leases;
use super::shard;
use crate::config::{ClusterNats, Config, Shard};
use crate::status::Control;
use crate::store::{Mirrored, Store};

const LEASES_BUCKET: &str = "pollhook_leases";
const SNAPSHOTS_BUCKET: &str = "pollhook_snapshots";
/// Mirrored records read at once while a shard is adopted.
const ADOPT_AT_ONCE: usize = 32;

/// What the node needs from the daemon.
pub struct Node {
    pub nats: ClusterNats,
    pub home: Shard,
    pub store: Arc<Store>,
    /// The whole config, as the supervisor last read it.
    pub config: watch::Receiver<Arc<Config>>,
    pub control: mpsc::Sender<Control>,
    pub shutdown: CancellationToken,
}

fn lease_key(count: u32, shard: u32) -> String {
    format!("shard.{count}.{shard}")
}

fn presence_key(count: u32, shard: u32) -> String {
    format!("node.{count}.{shard}")
}

/// An endpoint's key in the snapshots bucket (names may hold any character).
pub fn mirror_key(endpoint: &str) -> String {
    format!(
        "e.{}",
        hex::encode(&Sha256::digest(endpoint.as_bytes())[..16])
    )
}

/// Runs until shutdown: a session per connection to NATS; when one fails,
/// every shard is let go (its lease may be claimed by now) and a new one
/// starts.
pub async fn run(node: Node) {
    let id = format!("{}-{}", node.home, uuid::Uuid::now_v7());
    let held = Arc::new(RwLock::new(BTreeSet::new()));
    loop {
        let result = session(&node, &id, &held).await;
        if node.shutdown.is_cancelled() {
            return;
        }
        if let Err(error) = result {
            warn!(error = %error, "the cluster's NATS session failed; polling no shard until it is back");
        }
        if !crate::locks::read(&held).is_empty() {
            crate::locks::write(&held).clear();
            tell(&node, BTreeSet::new()).await;
        }
        tokio::select! {
            _ = node.shutdown.cancelled() => return,
            _ = tokio::time::sleep(node.nats.lease / 4) => {}
        }
    }
}

/// Tells the supervisor which shards to poll, and waits until it does.
async fn tell(node: &Node, shards: BTreeSet<u32>) {
    let (reply, applied) = oneshot::channel();
    if node
        .control
        .send(Control::Shards(shards, reply))
        .await
        .is_ok()
    {
        let _ = applied.await;
    }
}

/// The key-value bucket `name`, made if missing. Made as the stream a
/// bucket is (what `create_key_value` sends), because that call first asks
/// for the account's info in a form older servers (2.9) do not answer.
async fn bucket(
    context: &jetstream::Context,
    name: &str,
    max_age: Duration,
) -> Result<kv::Store, String> {
    if let Ok(store) = context.get_key_value(name).await {
        return Ok(store);
    }
    let made = context
        .create_stream(jetstream::stream::Config {
            name: format!("KV_{name}"),
            subjects: vec![format!("$KV.{name}.>")],
            max_messages_per_subject: 1,
            max_age,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: jetstream::stream::DiscardPolicy::New,
            ..Default::default()
        })
        .await;
    // Another instance may have made it meanwhile.
    match context.get_key_value(name).await {
        Ok(store) => Ok(store),
        Err(error) => Err(format!(
            "cannot make the key-value bucket `{name}`: {}",
            made.err()
                .map_or_else(|| error.to_string(), |made| made.to_string())
        )),
    }
}

async fn session(node: &Node, id: &str, held: &Arc<RwLock<BTreeSet<u32>>>) -> Result<(), String> {
    let lease = node.nats.lease;
    let client = crate::deliver::nats::connect(
        node.nats.url.url(),
        format!("pollhook-cluster-{id}"),
        None,
        node.nats.creds.as_deref(),
        None,
        lease.max(Duration::from_secs(2)),
    )
    .await?;
    let context = jetstream::new(client);
    let leases_kv = bucket(&context, LEASES_BUCKET, lease).await?;
    let mirror_kv = bucket(&context, SNAPSHOTS_BUCKET, Duration::ZERO).await?;
    let count = node.home.count;
    let home = node.home.index;
    let stop_mirror = node.shutdown.child_token();
    let _stop_mirror = stop_mirror.clone().drop_guard();
    tokio::spawn(mirror(
        node.store.clone(),
        mirror_kv.clone(),
        held.clone(),
        count,
        stop_mirror,
    ));
    let started = Instant::now();
    let mut leases = Leases::new(lease);
    let mut tick = tokio::time::interval(leases.tick());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let value = || bytes::Bytes::from(id.to_string());
    loop {
        tokio::select! {
            _ = node.shutdown.cancelled() => {
                // Stopped already by the supervisor: give every shard up
                // at once, so a survivor need not wait for the lease.
                for shard in leases.shards() {
                    mirror_shard(node, &mirror_kv, count, shard).await;
                    let _ = leases_kv.delete_expect_revision(lease_key(count, shard), leases.revision(shard)).await;
                }
                let _ = leases_kv.delete(presence_key(count, home)).await;
                return Ok(());
            }
            _ = tick.tick() => {}
        }
        let before = leases.shards();
        leases_kv
            .put(presence_key(count, home), value())
            .await
            .map_err(|error| {
                format!("cannot renew the presence of shard {}: {error}", node.home)
            })?;
        for shard in leases.shards() {
            let sent = Instant::now();
            let revision = leases.revision(shard).unwrap_or_default();
            match leases_kv
                .update(lease_key(count, shard), value(), revision)
                .await
            {
                Ok(revision) => leases.written(shard, revision, sent),
                Err(error) => {
                    warn!(shard = %Shard { index: shard, count }, error = %error, "lost the lease");
                    leases.drop_lease(shard);
                }
            }
        }
        for shard in leases.expire(Instant::now()) {
            warn!(shard = %Shard { index: shard, count }, "the lease ran out before it was renewed");
        }
        // Shards to claim: this instance's own, and, once every instance
        // started with it has had a lease's time to claim its own, those
        // whose own instance is not alive.
        let mut candidates = Vec::new();
        if leases.revision(home).is_none() {
            candidates.push(home);
        }
        if started.elapsed() >= lease {
            for shard in
                (1..=count).filter(|shard| *shard != home && leases.revision(*shard).is_none())
            {
                if let Ok(None) = leases_kv.get(presence_key(count, shard)).await {
                    candidates.push(shard);
                }
            }
        }
        for shard in candidates {
            let sent = Instant::now();
            if let Ok(revision) = leases_kv.create(lease_key(count, shard), value()).await {
                adopt(node, &mirror_kv, count, shard).await;
                leases.written(shard, revision, sent);
                info!(shard = %Shard { index: shard, count }, own = shard == home, "took the shard's lease");
            }
        }
        // Taken shards whose own instance is back go back to it.
        let mut giving_back = Vec::new();
        for shard in leases.shards().into_iter().filter(|shard| *shard != home) {
            if let Ok(Some(_)) = leases_kv.get(presence_key(count, shard)).await {
                giving_back.push(shard);
            }
        }
        if !giving_back.is_empty() {
            let mut keeping = leases.shards();
            for shard in &giving_back {
                keeping.remove(shard);
            }
            *crate::locks::write(held) = keeping.clone();
            tell(node, keeping).await;
            for shard in giving_back {
                mirror_shard(node, &mirror_kv, count, shard).await;
                let revision = leases.revision(shard);
                leases.drop_lease(shard);
                let _ = leases_kv
                    .delete_expect_revision(lease_key(count, shard), revision)
                    .await;
                info!(shard = %Shard { index: shard, count }, "gave the shard back to its own instance");
            }
        }
        let now_held = leases.shards();
        if now_held != before {
            *crate::locks::write(held) = now_held.clone();
            tell(node, now_held).await;
        }
    }
}

/// The names of the endpoints of `shard`, in the config as it is now.
fn names_of(node: &Node, count: u32, shard: u32) -> Vec<String> {
    node.config
        .borrow()
        .endpoints
        .iter()
        .filter(|endpoint| shard::shard_of(&endpoint.name, count) == shard)
        .map(|endpoint| endpoint.name.to_string())
        .collect()
}

/// Writes the mirrored records of a shard's endpoints into the local
/// store where they are newer, before the shard is polled here.
async fn adopt(node: &Node, mirror_kv: &kv::Store, count: u32, shard: u32) {
    let names = names_of(node, count, shard);
    let adopted = futures_util::stream::iter(names)
        .map(|name| async move {
            let record = match mirror_kv.get(mirror_key(&name)).await {
                Ok(Some(bytes)) => Mirrored::decode(&bytes).map_err(|error| error.to_string()),
                Ok(None) => return false,
                Err(error) => Err(error.to_string()),
            };
            match record.and_then(|record| {
                node.store
                    .adopt(&name, &record)
                    .map_err(|error| crate::error_chain(&error))
            }) {
                Ok(adopted) => adopted,
                Err(error) => {
                    warn!(endpoint = %name, error = %error, "cannot adopt the endpoint's mirrored records; it re-baselines");
                    false
                }
            }
        })
        .buffer_unordered(ADOPT_AT_ONCE)
        .filter(|adopted| std::future::ready(*adopted))
        .count()
        .await;
    info!(shard = %Shard { index: shard, count }, adopted, "adopted the shard's mirrored snapshots");
}

/// Mirrors one endpoint's records as they are now.
async fn mirror_one(store: &Store, mirror_kv: &kv::Store, name: &str) -> Result<(), String> {
    let Some(record) = store
        .mirrored(name)
        .map_err(|error| crate::error_chain(&error))?
    else {
        return Ok(());
    };
    mirror_kv
        .put(mirror_key(name), record.encode().into())
        .await
        .map(|_| ())
        .map_err(|error| error.to_string())
}

/// Mirrors every endpoint of a shard this instance is giving up.
async fn mirror_shard(node: &Node, mirror_kv: &kv::Store, count: u32, shard: u32) {
    for name in names_of(node, count, shard) {
        if let Err(error) = mirror_one(&node.store, mirror_kv, &name).await {
            warn!(endpoint = %name, error = %error, "cannot mirror the endpoint's snapshot");
        }
    }
}

/// Mirrors each endpoint of a held shard after its local commits; what
/// fails is tried again a second later.
async fn mirror(
    store: Arc<Store>,
    mirror_kv: kv::Store,
    held: Arc<RwLock<BTreeSet<u32>>>,
    count: u32,
    stop: CancellationToken,
) {
    let committed = store.committed();
    let mut failed: BTreeSet<String> = BTreeSet::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = committed.notify.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)), if !failed.is_empty() => {}
        }
        let mut names = committed.take();
        names.append(&mut failed);
        for name in names {
            if !shard::is_held(&name, count, &crate::locks::read(&held)) {
                continue;
            }
            if let Err(error) = mirror_one(&store, &mirror_kv, &name).await {
                tracing::debug!(endpoint = %name, error = %error, "cannot mirror the endpoint's snapshot yet");
                failed.insert(name);
            }
        }
    }
}
