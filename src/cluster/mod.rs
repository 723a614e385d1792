//! Past one machine: each instance polls the endpoints of the shards it
//! holds ([`shard`]: a fixed rendezvous hash of the name). Without NATS an
//! instance holds its configured shard; with `[cluster] nats` the shards
//! are leases in a JetStream key-value bucket ([`lease`]), claimed, renewed
//! and taken over by [`node`], which also mirrors each held endpoint's
//! snapshot records there so that a taker goes on where the owner was.

pub mod lease;
pub mod node;
pub mod shard;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::{Config, Shard};

/// The shards this instance polls now, of how many.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub count: u32,
    pub shards: BTreeSet<u32>,
}

impl Held {
    /// What an instance holds as it starts: its shard without NATS, none
    /// with NATS until a lease is won; `None`: every endpoint.
    pub fn at_start(config: &Config) -> Option<Held> {
        let shard = config.cluster.shard?;
        let shards = match config.cluster.nats {
            Some(_) => BTreeSet::new(),
            None => BTreeSet::from([shard.index]),
        };
        Some(Held {
            count: shard.count,
            shards,
        })
    }

    /// `config` with only the endpoints of the held shards. Every endpoint
    /// was validated: each instance checks the whole config.
    pub fn restrict(&self, mut config: Config) -> Config {
        config
            .endpoints
            .retain(|endpoint| shard::is_held(&endpoint.name, self.count, &self.shards));
        config
    }
}

/// What `status`, the admin API (`/api/v1/cluster`) and `/metrics` show.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterView {
    /// `2/5`: the configured shard; none outside a cluster.
    pub shard: Option<String>,
    /// The shards polled now (`2/5`, and those taken over), each with how
    /// many endpoints it has.
    pub counts: BTreeMap<String, usize>,
    /// The endpoints polled now.
    pub endpoints: usize,
    /// Whether shards are leases through NATS.
    pub failover: bool,
}

impl ClusterView {
    /// The view of `config`, already restricted to the `held` shards.
    pub fn new(config: &Config, held: Option<&Held>) -> ClusterView {
        let mut counts = BTreeMap::new();
        if let Some(held) = held {
            for index in &held.shards {
                counts.insert(*index, 0);
            }
            for endpoint in &config.endpoints {
                *counts
                    .entry(shard::shard_of(&endpoint.name, held.count))
                    .or_default() += 1;
            }
        }
        let name = |index: u32| {
            Shard {
                index,
                count: held.map_or(1, |held| held.count),
            }
            .to_string()
        };
        ClusterView {
            shard: config.cluster.shard.map(|shard| shard.to_string()),
            counts: counts
                .into_iter()
                .map(|(index, count)| (name(index), count))
                .collect(),
            endpoints: config.endpoints.len(),
            failover: config.cluster.nats.is_some(),
        }
    }

    /// `shard 2/5: 60 endpoints` (and what else is held), for people.
    pub fn line(&self) -> Option<String> {
        let shard = self.shard.as_ref()?;
        let mut line = format!("shard {shard}: {} endpoints", self.endpoints);
        if self.counts.keys().any(|held| held != shard) || self.counts.is_empty() {
            let held: Vec<String> = self
                .counts
                .iter()
                .map(|(shard, count)| format!("{shard}: {count}"))
                .collect();
            let held = match held.is_empty() {
                true => "none yet".to_string(),
                false => held.join(", "),
            };
            line.push_str(&format!(", holding {held}"));
        }
        Some(line)
    }
}

/// The view the daemon keeps up to date.
pub type SharedView = Arc<std::sync::RwLock<ClusterView>>;
