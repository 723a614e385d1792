//! Endpoints an operator paused: they are not polled until resumed, across
//! restarts and reloads (a tree added without a schema step: older stores
//! simply have none). Opened when used, as the tokens' tree is.

use super::*;

/// The tree's name.
const TREE: &str = "paused_endpoints";

impl Store {
    /// Pauses `endpoint` as of `since_ms`, durably before it returns; the
    /// time of the first pause when it was paused already.
    pub async fn pause_endpoint(&self, endpoint: &str, since_ms: u64) -> Result<u64, StoreError> {
        let earlier = self.watched(|trees| {
            let tree = trees.db.open_tree(TREE)?;
            if let Some(since) = tree.get(endpoint)? {
                return decode_since(&since).map(Some);
            }
            tree.insert(endpoint, &since_ms.to_be_bytes())?;
            Ok(None)
        })?;
        if let Some(since) = earlier {
            return Ok(since);
        }
        self.flush().await?;
        Ok(since_ms)
    }

    /// Resumes `endpoint`, durably before it returns; false when it was not
    /// paused.
    pub async fn resume_endpoint(&self, endpoint: &str) -> Result<bool, StoreError> {
        let resumed =
            self.watched(|trees| Ok(trees.db.open_tree(TREE)?.remove(endpoint)?.is_some()))?;
        if resumed {
            self.flush().await?;
        }
        Ok(resumed)
    }

    /// Since when (ms) each paused endpoint is paused, by name.
    pub fn paused_endpoints(&self) -> Result<HashMap<String, u64>, StoreError> {
        self.watched(|trees| {
            trees
                .db
                .open_tree(TREE)?
                .iter()
                .map(|entry| {
                    let (name, since) = entry?;
                    Ok((
                        String::from_utf8_lossy(&name).into_owned(),
                        decode_since(&since)?,
                    ))
                })
                .collect()
        })
    }
}

fn decode_since(bytes: &[u8]) -> Result<u64, StoreError> {
    let bytes: [u8; 8] = bytes.try_into().map_err(|_| StoreError::Corrupt {
        what: "endpoint pause",
        detail: format!("{} bytes where a time of 8 was expected", bytes.len()),
    })?;
    Ok(u64::from_be_bytes(bytes))
}
