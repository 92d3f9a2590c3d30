//! The authorization server's records as typed JSON over the IndexStore's record store: the
//! one place that turns users, clients, keys, codes and refresh grants into `Record`s and back.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::index::{IndexError, IndexStore, Record};

/// Stores `value` as JSON under (`kind`, `key`), until `expires_at` (ms) if given.
pub async fn put_json<T: Serialize>(
    store: &dyn IndexStore,
    kind: &str,
    key: &str,
    value: &T,
    expires_at: Option<i64>,
) -> Result<(), IndexError> {
    let value = serde_json::to_vec(value).map_err(|e| IndexError::Corrupt(e.to_string()))?;
    store
        .put_record(Record {
            kind: kind.into(),
            key: key.into(),
            value,
            expires_at,
        })
        .await
}

/// The live record under (`kind`, `key`) read as `T`, with its expiry; a record that does not
/// read as `T` counts as absent.
pub async fn get_json<T: DeserializeOwned>(
    store: &dyn IndexStore,
    kind: &str,
    key: &str,
) -> Result<Option<(T, Option<i64>)>, IndexError> {
    let record = store.get_record(kind, key).await?;
    Ok(record.and_then(|r| {
        serde_json::from_slice(&r.value)
            .ok()
            .map(|value| (value, r.expires_at))
    }))
}
