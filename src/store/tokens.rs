//! Rotated OAuth2 refresh tokens. A token server that rotates refresh
//! tokens accepts only the newest: losing it to a restart would lock the
//! endpoint out until someone configures a fresh one, so it is kept here
//! (a tree added without a schema step: older stores simply have none).
//! The tree is opened when it is used, not with the store: making a tree
//! costs sled a write, which every store would pay for a few endpoints'
//! sake.

use super::*;

/// The tree's name.
const TREE: &str = "tokens";

/// The refresh token a token server rotated to, and which configured one
/// it replaces: when the configured one changes, the configured one wins.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotatedToken {
    /// SHA-256 of the configured refresh token it replaces.
    pub replaces: [u8; 32],
    pub token: String,
}

impl std::fmt::Debug for RotatedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RotatedToken(<redacted>)")
    }
}

impl Store {
    /// The refresh token the source `key` rotated to, if it did.
    pub fn rotated_token(&self, key: &[u8; 32]) -> Result<Option<RotatedToken>, StoreError> {
        self.watched(|trees| {
            trees
                .db
                .open_tree(TREE)?
                .get(key)?
                // Not `decode_json`: its error could quote the token.
                .map(|bytes| {
                    serde_json::from_slice(&bytes).map_err(|_| StoreError::Corrupt {
                        what: "rotated token",
                        detail: "not a rotated-token record".into(),
                    })
                })
                .transpose()
        })
    }

    /// Keeps a rotated refresh token, durably before it returns: the token
    /// server has already forgotten the one it replaces.
    pub async fn keep_rotated_token(
        &self,
        key: &[u8; 32],
        token: &RotatedToken,
    ) -> Result<(), StoreError> {
        self.watched(|trees| {
            trees.db.open_tree(TREE)?.insert(key, encode_json(token))?;
            Ok(())
        })?;
        self.flush().await
    }
}
