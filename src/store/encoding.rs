//! How records are written in sled: JSON for the queue's rows, postcard
//! for snapshots (sled keeps every record in memory).

use super::*;

pub(super) fn encode_json<T: Serialize>(value: &T) -> Vec<u8> {
    // Records are plain structs of strings and numbers: they always serialise.
    serde_json::to_vec(value).unwrap_or_default()
}

pub(super) fn decode_json<T: for<'de> Deserialize<'de>>(
    bytes: &[u8],
    what: &'static str,
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|error| StoreError::Corrupt {
        what,
        detail: error.to_string(),
    })
}

pub(super) fn encode_snapshot(snapshot: &Snapshot) -> Vec<u8> {
    // Numbers, byte arrays and strings: it always serialises.
    postcard::to_allocvec(snapshot).unwrap_or_default()
}

pub(super) fn decode_snapshot(bytes: &[u8]) -> Result<Snapshot, StoreError> {
    postcard::from_bytes(bytes).map_err(|error| StoreError::Corrupt {
        what: "snapshot",
        detail: error.to_string(),
    })
}

pub(super) fn decode_u64(bytes: &[u8], what: &'static str) -> Result<u64, StoreError> {
    let array: [u8; 8] = bytes.try_into().map_err(|_| StoreError::Corrupt {
        what,
        detail: format!("{} bytes, expected 8", bytes.len()),
    })?;
    Ok(u64::from_be_bytes(array))
}
