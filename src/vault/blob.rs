//! The BlobStore seam: immutable, content-addressed bytes.
//!
//! Two implementations, same behaviour: `local` (files on disk, the embedded profile) and
//! `ipfs` (a Kubo-RPC node, the services profile). Addresses come from `cid::cid_of`, so both
//! name the same bytes the same way, and every `get` re-hashes what it read and refuses a
//! mismatch: a blob store is never trusted to return what was asked for.
//!
//! A blob store only ever sees sealed bytes: it must never receive plaintext.

use async_trait::async_trait;

/// Why a blob operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob {0} is not in the store")]
    NotFound(String),
    #[error("blob {cid} failed its integrity check (its content hashes to {actual})")]
    Corrupt { cid: String, actual: String },
    #[error("the blob store is unavailable: {0}")]
    Unavailable(String),
    #[error("the blob store did not answer within {0:?}")]
    Timeout(std::time::Duration),
}

#[async_trait]
pub trait BlobStore: Send + Sync {
    /// Stores `bytes` durably and returns their CID. Idempotent: the same bytes, the same CID.
    async fn put(&self, bytes: Vec<u8>) -> Result<String, BlobError>;

    /// Returns the bytes addressed by `cid`, after checking they hash to it.
    async fn get(&self, cid: &str) -> Result<Vec<u8>, BlobError>;

    /// Stops keeping `cid` (unpin); for the sweeper and for erasure. Missing is not an error.
    async fn remove(&self, cid: &str) -> Result<(), BlobError>;

    /// Every CID the store keeps, for the sweeper.
    async fn list(&self) -> Result<Vec<String>, BlobError>;

    /// A short description of the store and whether it answers, for `/health`.
    async fn health(&self) -> Result<String, BlobError>;
}

/// Checks that `bytes` really are `cid`; shared by every implementation's `get`.
pub fn verify(cid: &str, bytes: Vec<u8>) -> Result<Vec<u8>, BlobError> {
    let actual = super::cid::cid_of(&bytes);
    if actual == cid {
        Ok(bytes)
    } else {
        Err(BlobError::Corrupt {
            cid: cid.to_owned(),
            actual,
        })
    }
}
