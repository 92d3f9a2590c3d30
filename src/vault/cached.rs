//! A bounded in-memory cache of sealed blobs in front of whichever BlobStore the profile uses.
//!
//! Blobs are immutable and named by the hash of their bytes, so a cached blob can never be
//! stale: the only way to change what a CID names is to change the CID. That makes the cache
//! always correct, and it spares the services profile an IPFS round trip on every read. It
//! holds sealed envelopes only (the vault opens them after), is bounded by total bytes, and
//! evicts the least recently used; `remove` (the sweeper, erasure) evicts at once.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::blob::{BlobError, BlobStore};
use crate::metrics;

pub struct Cached {
    inner: Arc<dyn BlobStore>,
    capacity: usize,
    lru: Mutex<Lru>,
}

#[derive(Default)]
struct Lru {
    entries: HashMap<String, (Arc<Vec<u8>>, u64)>,
    /// Use stamp → CID, oldest first.
    order: BTreeMap<u64, String>,
    next_stamp: u64,
    bytes: usize,
}

impl Lru {
    fn get(&mut self, cid: &str) -> Option<Arc<Vec<u8>>> {
        let stamp = self.next_stamp;
        let (bytes, used) = self.entries.get_mut(cid)?;
        self.order.remove(used);
        *used = stamp;
        self.order.insert(stamp, cid.to_owned());
        self.next_stamp += 1;
        Some(bytes.clone())
    }

    fn insert(&mut self, cid: &str, bytes: Arc<Vec<u8>>, capacity: usize) {
        if bytes.len() > capacity || self.entries.contains_key(cid) {
            return;
        }
        self.bytes += bytes.len();
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        self.order.insert(stamp, cid.to_owned());
        self.entries.insert(cid.to_owned(), (bytes, stamp));
        while self.bytes > capacity {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            if let Some((evicted, _)) = self.entries.remove(&oldest) {
                self.bytes -= evicted.len();
            }
        }
    }

    fn remove(&mut self, cid: &str) {
        if let Some((bytes, stamp)) = self.entries.remove(cid) {
            self.order.remove(&stamp);
            self.bytes -= bytes.len();
        }
    }
}

impl Cached {
    /// A cache of at most `capacity` bytes of blobs in front of `inner`.
    pub fn new(inner: Arc<dyn BlobStore>, capacity: usize) -> Cached {
        Cached {
            inner,
            capacity,
            lru: Mutex::new(Lru::default()),
        }
    }

    fn remember(&self, cid: &str, bytes: Arc<Vec<u8>>) {
        if let Ok(mut lru) = self.lru.lock() {
            lru.insert(cid, bytes, self.capacity);
        }
    }
}

#[async_trait]
impl BlobStore for Cached {
    async fn put(&self, bytes: Vec<u8>) -> Result<String, BlobError> {
        // A version just written is the one most likely to be read next.
        let shared = Arc::new(bytes.clone());
        let cid = self.inner.put(bytes).await?;
        self.remember(&cid, shared);
        Ok(cid)
    }

    async fn get(&self, cid: &str) -> Result<Vec<u8>, BlobError> {
        let hit = self.lru.lock().ok().and_then(|mut lru| lru.get(cid));
        if let Some(bytes) = hit {
            metrics::count(
                "intellihealth_blob_cache_requests_total",
                &[("result", "hit")],
            );
            return Ok(bytes.as_ref().clone());
        }
        metrics::count(
            "intellihealth_blob_cache_requests_total",
            &[("result", "miss")],
        );
        let bytes = self.inner.get(cid).await?;
        self.remember(cid, Arc::new(bytes.clone()));
        Ok(bytes)
    }

    async fn remove(&self, cid: &str) -> Result<(), BlobError> {
        if let Ok(mut lru) = self.lru.lock() {
            lru.remove(cid);
        }
        self.inner.remove(cid).await
    }

    async fn list(&self) -> Result<Vec<String>, BlobError> {
        self.inner.list().await
    }

    async fn health(&self) -> Result<String, BlobError> {
        self.inner.health().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_most_recently_used_within_its_bytes() {
        let mut lru = Lru::default();
        let blob = |n: usize| Arc::new(vec![0u8; n]);
        lru.insert("a", blob(40), 100);
        lru.insert("b", blob(40), 100);
        assert!(lru.get("a").is_some());
        lru.insert("c", blob(40), 100);
        assert!(lru.get("b").is_none(), "the least recently used went first");
        assert!(lru.get("a").is_some() && lru.get("c").is_some());
        assert_eq!(lru.bytes, 80);
        lru.insert("huge", blob(101), 100);
        assert!(lru.get("huge").is_none(), "larger than the whole cache");
        lru.remove("a");
        assert!(lru.get("a").is_none());
        assert_eq!(lru.bytes, 40);
    }
}
