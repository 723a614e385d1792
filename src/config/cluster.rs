//! `[cluster]`: which share of the endpoints this instance polls
//! (`shard = "2/5"`), and the NATS server through which instances hold
//! their shards' leases and mirror their snapshots (`nats`).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::values::{HumanDuration, TargetUrl};
use super::{Compiler, HttpUrl};

/// How long a shard's lease lasts without a renewal, by default.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);
/// The shortest lease: renewals come three times per lease.
const MIN_LEASE: Duration = Duration::from_millis(500);
/// The most shards a cluster may have.
pub const MAX_SHARDS: u32 = 1024;

/// `[cluster]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ClusterConfig {
    shard: Option<Spanned<Shard>>,
    nats: Option<Spanned<TargetUrl>>,
    lease: Option<Spanned<HumanDuration>>,
    /// A `.creds` file for the cluster's NATS server.
    creds: Option<Spanned<PathBuf>>,
}

/// Shard `index` of `count` (`"2/5"`; 1 ≤ index ≤ count).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl FromStr for Shard {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let invalid = || {
            format!("invalid shard `{text}`: write `i/n`, this instance's shard of n, e.g. `2/5`")
        };
        let (index, count) = text.split_once('/').ok_or_else(invalid)?;
        let index: u32 = index.trim().parse().map_err(|_| invalid())?;
        let count: u32 = count.trim().parse().map_err(|_| invalid())?;
        if count == 0 || count > MAX_SHARDS {
            return Err(format!(
                "invalid shard `{text}`: there are 1 to {MAX_SHARDS} shards"
            ));
        }
        if index == 0 || index > count {
            return Err(format!(
                "invalid shard `{text}`: shards are numbered 1 to {count}"
            ));
        }
        Ok(Shard { index, count })
    }
}

impl<'de> Deserialize<'de> for Shard {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// The cluster this instance is part of; the default is none: one
/// instance polls every endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cluster {
    /// The shard this instance polls (and, with `nats`, claims first).
    pub shard: Option<Shard>,
    pub nats: Option<ClusterNats>,
}

/// Failover through a NATS server with JetStream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNats {
    /// `nats://` or `tls://`; may carry a user and password (never shown).
    pub url: HttpUrl,
    /// How long a lease holds without a renewal: an instance that died
    /// keeps its shard that long at most.
    pub lease: Duration,
    pub creds: Option<PathBuf>,
}

impl Compiler<'_> {
    pub(super) fn compile_cluster(&mut self, raw: Option<Spanned<ClusterConfig>>) -> Cluster {
        let Some(raw) = raw else {
            return Cluster::default();
        };
        let context = Some("cluster".to_string());
        let raw = raw.into_inner();
        let nats = raw.nats.and_then(|url| {
            let start = url.span().start;
            let url = url.into_inner().0;
            if !super::nats::is_nats(&url) {
                self.problem(
                    start,
                    context.clone(),
                    format!(
                        "`nats` must be a `nats://` or `tls://` URL, not `{}`",
                        url.shown()
                    ),
                );
                return None;
            }
            Some(url)
        });
        let lease_start = raw.lease.as_ref().map(|lease| lease.span().start);
        let lease = match raw.lease {
            Some(lease) if lease.get_ref().0 < MIN_LEASE => {
                self.problem(
                    lease.span().start,
                    context.clone(),
                    "`lease` must be at least 500ms: it is renewed three times per lease",
                );
                DEFAULT_LEASE
            }
            Some(lease) => lease.into_inner().0,
            None => DEFAULT_LEASE,
        };
        for (key, start) in [
            ("lease", lease_start),
            ("creds", raw.creds.as_ref().map(|creds| creds.span().start)),
        ] {
            if let (None, Some(start)) = (&nats, start) {
                self.problem(
                    start,
                    context.clone(),
                    format!("`{key}` is for failover through NATS: set `nats` too"),
                );
            }
        }
        let creds = raw.creds.map(|creds| {
            let start = creds.span().start;
            let path = self.dir.join(creds.get_ref());
            if let Err(error) = std::fs::metadata(&path) {
                self.problem(
                    start,
                    context.clone(),
                    format!("cannot read `creds` `{}`: {error}", path.display()),
                );
            }
            path
        });
        Cluster {
            shard: raw.shard.map(Spanned::into_inner),
            nats: nats.map(|url| ClusterNats { url, lease, creds }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_written_i_of_n() {
        assert_eq!("2/5".parse(), Ok(Shard { index: 2, count: 5 }));
        assert_eq!(" 1 / 1 ".parse(), Ok(Shard { index: 1, count: 1 }));
        for (bad, why) in [
            ("2", "write `i/n`"),
            ("a/5", "write `i/n`"),
            ("0/5", "numbered 1 to 5"),
            ("6/5", "numbered 1 to 5"),
            ("1/0", "1 to 1024 shards"),
            ("1/2000", "1 to 1024 shards"),
        ] {
            let error = bad.parse::<Shard>().unwrap_err();
            assert!(error.contains(why), "{bad}: {error}");
        }
        assert_eq!(Shard { index: 2, count: 5 }.to_string(), "2/5");
    }
}
