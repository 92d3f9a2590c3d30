//! Every BlobStore call under one timeout: a decorator `app` wraps around whichever store the
//! profile uses (as `index::bounded` does for the index), so no request waits on a hung blob
//! store longer than the configured backend timeout. A call past it fails with
//! `BlobError::Timeout`, which becomes a 503 naming the blob store.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::blob::{BlobError, BlobStore};

pub struct Bounded {
    inner: Arc<dyn BlobStore>,
    timeout: Duration,
}

impl Bounded {
    pub fn new(inner: Arc<dyn BlobStore>, timeout: Duration) -> Bounded {
        Bounded { inner, timeout }
    }

    async fn run<T>(
        &self,
        call: impl Future<Output = Result<T, BlobError>>,
    ) -> Result<T, BlobError> {
        tokio::time::timeout(self.timeout, call)
            .await
            .unwrap_or(Err(BlobError::Timeout(self.timeout)))
    }
}

#[async_trait]
impl BlobStore for Bounded {
    async fn put(&self, bytes: Vec<u8>) -> Result<String, BlobError> {
        self.run(self.inner.put(bytes)).await
    }

    async fn get(&self, cid: &str) -> Result<Vec<u8>, BlobError> {
        self.run(self.inner.get(cid)).await
    }

    async fn remove(&self, cid: &str) -> Result<(), BlobError> {
        self.run(self.inner.remove(cid)).await
    }

    async fn list(&self) -> Result<Vec<String>, BlobError> {
        self.run(self.inner.list()).await
    }

    async fn health(&self) -> Result<String, BlobError> {
        self.run(self.inner.health()).await
    }
}
