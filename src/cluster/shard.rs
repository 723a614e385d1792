//! Pure: which shard an endpoint belongs to, by rendezvous hashing of its
//! name. Each shard scores the name, the highest score wins; going from n
//! to n + 1 shards moves only the endpoints the new shard wins, about
//! 1/(n + 1) of them. The score is a fixed hash, the same in every version
//! and on every machine: 64-bit FNV-1a of the name's bytes, then of the
//! shard's number (4 bytes, little-endian), finished with SplitMix64's
//! mixer so that neighbouring numbers score apart.

use std::collections::BTreeSet;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn score(name: &str, shard: u32) -> u64 {
    mix(fnv1a(
        fnv1a(FNV_OFFSET, name.as_bytes()),
        &shard.to_le_bytes(),
    ))
}

/// The shard (1 to `count`) that polls the endpoint `name`.
pub fn shard_of(name: &str, count: u32) -> u32 {
    (1..=count.max(1))
        .max_by_key(|shard| (score(name, *shard), std::cmp::Reverse(*shard)))
        .unwrap_or(1)
}

/// Whether the endpoint `name` is in one of the `held` shards of `count`.
pub fn is_held(name: &str, count: u32, held: &BTreeSet<u32>) -> bool {
    held.contains(&shard_of(name, count))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(count: usize) -> Vec<String> {
        (0..count).map(|i| format!("endpoint-{i}")).collect()
    }

    #[test]
    fn the_hash_is_fixed() {
        // Written down once: a change here moves endpoints between the
        // instances of a running cluster when it is upgraded.
        let shards: Vec<u32> = ["a", "prices", "endpoint-0", "endpoint-1", "ü"]
            .iter()
            .map(|name| shard_of(name, 5))
            .collect();
        assert_eq!(shards, FIXED);
        assert_eq!(shard_of("anything", 1), 1);
    }

    const FIXED: [u32; 5] = [1, 2, 5, 2, 5];

    #[test]
    fn shards_are_about_even() {
        let names = names(3000);
        let mut counts = [0usize; 3];
        for name in &names {
            counts[shard_of(name, 3) as usize - 1] += 1;
        }
        for count in counts {
            assert!((900..=1100).contains(&count), "{counts:?}");
        }
    }

    #[test]
    fn one_more_shard_moves_its_share_only() {
        let names = names(3000);
        let moved: Vec<&String> = names
            .iter()
            .filter(|name| shard_of(name, 3) != shard_of(name, 4))
            .collect();
        // About a quarter, and each to the new shard.
        assert!((650..=850).contains(&moved.len()), "{}", moved.len());
        assert!(moved.iter().all(|name| shard_of(name, 4) == 4));
    }
}
