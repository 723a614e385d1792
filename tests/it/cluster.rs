//! Shards and failover: see below.
