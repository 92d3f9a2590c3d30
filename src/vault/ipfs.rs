//! The BlobStore on an IPFS node through the Kubo RPC API (the services profile).
//!
//! `put` is `add` with CIDv1 and raw leaves, pinned, so the node names the bytes exactly as
//! `cid::cid_of` does (and the local store); the CID the node returns is checked against our
//! own. `get` is `cat`, re-hashed locally: the node is not trusted to return what was asked
//! for. `remove` unpins (the node's garbage collector frees the blocks), `list` lists pins.
//! Timeouts are `vault::bounded`'s, around whichever blob store is in use.
//!
//! Only sealed envelopes are ever sent to the node.

use std::io::Cursor;

use async_trait::async_trait;
use futures::TryStreamExt;
use ipfs_api_backend_hyper::{IpfsApi, IpfsClient, TryFromUri, request};

use super::blob::{BlobError, BlobStore, verify};
use super::cid::cid_of;

pub struct IpfsBlobStore {
    client: IpfsClient,
    api: String,
}

impl IpfsBlobStore {
    /// A store on the node whose RPC API is at `api` (e.g. `http://127.0.0.1:5001`).
    pub fn new(api: &str) -> Result<IpfsBlobStore, BlobError> {
        let client = IpfsClient::from_str(api)
            .map_err(|e| BlobError::Unavailable(format!("IPFS API address {api}: {e}")))?;
        Ok(IpfsBlobStore {
            client,
            api: api.to_owned(),
        })
    }

    /// One RPC call, its error said in the store's terms.
    async fn call<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, ipfs_api_backend_hyper::Error>>,
    ) -> Result<T, BlobError> {
        call.await
            .map_err(|e| BlobError::Unavailable(format!("IPFS at {}: {e}", self.api)))
    }
}

/// Whether an API error says the content is not there (as opposed to the node failing).
fn is_missing(e: &BlobError) -> bool {
    match e {
        BlobError::Unavailable(message) => {
            let m = message.to_ascii_lowercase();
            // Kubo says "block was not found locally"; js-ipfs reports the missing block file.
            [
                "not found",
                "no link named",
                "not pinned",
                "enoent",
                "no such file",
            ]
            .iter()
            .any(|needle| m.contains(needle))
        }
        _ => false,
    }
}

#[async_trait]
impl BlobStore for IpfsBlobStore {
    async fn put(&self, bytes: Vec<u8>) -> Result<String, BlobError> {
        let (expected, bytes) = crate::cpu::run(bytes.len(), move || (cid_of(&bytes), bytes)).await;
        let options = || request::Add {
            cid_version: Some(1),
            raw_leaves: Some(true),
            pin: Some(true),
            ..Default::default()
        };
        // An add is idempotent (the same bytes, the same CID), so a node's refusal is tried
        // once more before it becomes a 503: js-ipfs has been seen to refuse one add in ten
        // thousand with a JSON parse error of its own that the same add does not repeat.
        let added = match self
            .call(
                self.client
                    .add_with_options(Cursor::new(bytes.clone()), options()),
            )
            .await
        {
            Ok(added) => added,
            Err(first) => {
                tracing::debug!("IPFS add refused once ({first}); retrying");
                self.call(self.client.add_with_options(Cursor::new(bytes), options()))
                    .await?
            }
        };
        if added.hash != expected {
            return Err(BlobError::Unavailable(format!(
                "IPFS named the blob {} where {expected} was expected (chunker or CID settings differ)",
                added.hash
            )));
        }
        Ok(expected)
    }

    async fn get(&self, cid: &str) -> Result<Vec<u8>, BlobError> {
        let read = self
            .call(
                self.client
                    .cat(cid)
                    .map_ok(|chunk| chunk.to_vec())
                    .try_concat(),
            )
            .await;
        match read {
            Ok(bytes) => {
                let cid = cid.to_owned();
                crate::cpu::run(bytes.len(), move || verify(&cid, bytes)).await
            }
            Err(e) if is_missing(&e) => Err(BlobError::NotFound(cid.to_owned())),
            Err(e) => Err(e),
        }
    }

    async fn remove(&self, cid: &str) -> Result<(), BlobError> {
        match self.call(self.client.pin_rm(cid, true)).await {
            Ok(_) => Ok(()),
            Err(e) if is_missing(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn list(&self) -> Result<Vec<String>, BlobError> {
        let pins = self
            .call(self.client.pin_ls(None, Some("recursive")))
            .await?;
        Ok(pins.keys.into_keys().collect())
    }

    async fn health(&self) -> Result<String, BlobError> {
        let version = self.call(self.client.version()).await?;
        Ok(format!("IPFS {} at {}", version.version, self.api))
    }
}
