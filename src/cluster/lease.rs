//! Pure: the leases an instance holds, and when it must stop trusting
//! them. A lease lives in the key-value bucket for `lease` after its last
//! write; the server counts from when it received the write, which is after
//! this instance sent it, so an instance that stops polling a shard once
//! `lease` has passed since it *sent* the last renewal that succeeded never
//! polls it after a taker could have claimed it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::time::Instant;

/// One held lease: the bucket's revision of it (renewals are compare and
/// set on it) and when the renewal that wrote it was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Lease {
    revision: u64,
    sent: Instant,
}

#[derive(Debug, Clone)]
pub struct Leases {
    lease: Duration,
    held: BTreeMap<u32, Lease>,
}

impl Leases {
    pub fn new(lease: Duration) -> Leases {
        Leases {
            lease,
            held: BTreeMap::new(),
        }
    }

    /// How often leases are renewed and shards claimed: four times a lease,
    /// so that three renewals in a row may fail before one runs out.
    pub fn tick(&self) -> Duration {
        self.lease / 4
    }

    /// A claim or a renewal sent at `sent` succeeded with `revision`.
    pub fn written(&mut self, shard: u32, revision: u64, sent: Instant) {
        self.held.insert(shard, Lease { revision, sent });
    }

    /// The lease is someone else's now (a renewal was refused), or given up.
    pub fn drop_lease(&mut self, shard: u32) -> bool {
        self.held.remove(&shard).is_some()
    }

    /// Drops the leases that may have run out by `now`; returns them.
    pub fn expire(&mut self, now: Instant) -> Vec<u32> {
        let lease = self.lease;
        let expired: Vec<u32> = self
            .held
            .iter()
            .filter(|(_, held)| now.saturating_duration_since(held.sent) >= lease)
            .map(|(shard, _)| *shard)
            .collect();
        for shard in &expired {
            self.held.remove(shard);
        }
        expired
    }

    pub fn revision(&self, shard: u32) -> Option<u64> {
        self.held.get(&shard).map(|held| held.revision)
    }

    pub fn shards(&self) -> BTreeSet<u32> {
        self.held.keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_trusted_until_one_lease_after_its_last_renewal_was_sent() {
        let lease = Duration::from_secs(2);
        let mut leases = Leases::new(lease);
        let start = Instant::now();
        leases.written(2, 1, start);
        leases.written(4, 7, start);
        assert_eq!(leases.tick(), Duration::from_millis(500));
        // Shard 2 renewed at 1.5 s, shard 4's renewals failed.
        leases.written(2, 3, start + Duration::from_millis(1500));
        assert!(
            leases
                .expire(start + Duration::from_millis(1999))
                .is_empty()
        );
        assert_eq!(leases.expire(start + lease), vec![4]);
        assert_eq!(leases.shards(), BTreeSet::from([2]));
        assert_eq!(leases.revision(2), Some(3));
        assert_eq!(leases.revision(4), None);
        assert_eq!(leases.expire(start + Duration::from_millis(3500)), vec![2]);
        assert!(leases.shards().is_empty());
        assert!(!leases.drop_lease(2));
    }
}
