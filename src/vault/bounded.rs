//! Every BlobStore call under one timeout: a decorator `app` wraps around whichever store the
//! profile uses (as `index::bounded` does for the index), so no request waits on a hung blob
//! store longer than the configured backend timeout. A call past it fails with
//! `BlobError::Timeout`, which becomes a 503 naming the blob store. Call durations and
//! failures are reported to `metrics` here, as the index's are in `index::bounded`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::blob::{BlobError, BlobStore};
use crate::metrics;

const COMPONENT: &str = "blob store";

/// How a failed call is counted; a missing blob is an answer, not a failure of the store.
fn failure_kind(error: &BlobError) -> Option<&'static str> {
    match error {
        BlobError::NotFound(_) => None,
        BlobError::Unavailable(_) => Some("unavailable"),
        BlobError::Timeout(_) => Some("timeout"),
        BlobError::Corrupt { .. } => Some("corrupt"),
    }
}

pub struct Bounded {
    inner: Arc<dyn BlobStore>,
    timeout: Duration,
}

impl Bounded {
    pub fn new(inner: Arc<dyn BlobStore>, timeout: Duration) -> Bounded {
        Bounded { inner, timeout }
    }

    /// Runs one call under the timeout, and reports its duration and failure to `metrics`.
    async fn run<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T, BlobError>>,
    ) -> Result<T, BlobError> {
        let started = std::time::Instant::now();
        let result = tokio::time::timeout(self.timeout, call)
            .await
            .unwrap_or(Err(BlobError::Timeout(self.timeout)));
        let labels = [("component", COMPONENT), ("operation", operation)];
        metrics::observe(
            "intellihealth_backend_call_duration_seconds",
            &labels,
            started.elapsed().as_secs_f64(),
        );
        if let Err(e) = &result
            && let Some(kind) = failure_kind(e)
        {
            let [component, operation] = labels;
            metrics::count(
                "intellihealth_backend_errors_total",
                &[component, operation, ("kind", kind)],
            );
        }
        result
    }
}

#[async_trait]
impl BlobStore for Bounded {
    async fn put(&self, bytes: Vec<u8>) -> Result<String, BlobError> {
        self.run("put", self.inner.put(bytes)).await
    }

    async fn get(&self, cid: &str) -> Result<Vec<u8>, BlobError> {
        self.run("get", self.inner.get(cid)).await
    }

    async fn remove(&self, cid: &str) -> Result<(), BlobError> {
        self.run("remove", self.inner.remove(cid)).await
    }

    async fn list(&self) -> Result<Vec<String>, BlobError> {
        self.run("list", self.inner.list()).await
    }

    async fn health(&self) -> Result<String, BlobError> {
        self.run("health", self.inner.health()).await
    }
}
