//! Every IndexStore call under one timeout: a decorator `app` wraps around whichever store
//! the profile uses, so no caller (repository, vault, authorization server) can wait on a hung
//! index longer than the configured backend timeout. A call past it fails with
//! `IndexError::Timeout`, which becomes a 503 naming the index.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{Commit, HistoryQuery, IndexError, IndexStore, Record, VersionRecord};

pub struct Bounded {
    inner: Arc<dyn IndexStore>,
    timeout: Duration,
}

impl Bounded {
    pub fn new(inner: Arc<dyn IndexStore>, timeout: Duration) -> Bounded {
        Bounded { inner, timeout }
    }

    async fn run<T>(
        &self,
        call: impl Future<Output = Result<T, IndexError>>,
    ) -> Result<T, IndexError> {
        tokio::time::timeout(self.timeout, call)
            .await
            .unwrap_or(Err(IndexError::Timeout(self.timeout)))
    }
}

#[async_trait]
impl IndexStore for Bounded {
    async fn commit(&self, commit: Commit) -> Result<(), IndexError> {
        self.run(self.inner.commit(commit)).await
    }

    async fn current(
        &self,
        resource_type: &str,
        id: &str,
    ) -> Result<Option<VersionRecord>, IndexError> {
        self.run(self.inner.current(resource_type, id)).await
    }

    async fn version(
        &self,
        resource_type: &str,
        id: &str,
        version: u64,
    ) -> Result<Option<VersionRecord>, IndexError> {
        self.run(self.inner.version(resource_type, id, version))
            .await
    }

    async fn history(&self, query: &HistoryQuery) -> Result<Vec<VersionRecord>, IndexError> {
        self.run(self.inner.history(query)).await
    }

    async fn data_key(&self, owner: &str) -> Result<Option<Vec<u8>>, IndexError> {
        self.run(self.inner.data_key(owner)).await
    }

    async fn insert_data_key(&self, owner: &str, wrapped: Vec<u8>) -> Result<Vec<u8>, IndexError> {
        self.run(self.inner.insert_data_key(owner, wrapped)).await
    }

    async fn references(&self, cid: &str) -> Result<bool, IndexError> {
        self.run(self.inner.references(cid)).await
    }

    async fn note_unreferenced(&self, cid: &str, now: i64) -> Result<i64, IndexError> {
        self.run(self.inner.note_unreferenced(cid, now)).await
    }

    async fn forget_unreferenced(&self, cid: &str) -> Result<(), IndexError> {
        self.run(self.inner.forget_unreferenced(cid)).await
    }

    async fn health(&self) -> Result<String, IndexError> {
        self.run(self.inner.health()).await
    }

    async fn put_record(&self, record: Record) -> Result<(), IndexError> {
        self.run(self.inner.put_record(record)).await
    }

    async fn insert_record(&self, record: Record) -> Result<bool, IndexError> {
        self.run(self.inner.insert_record(record)).await
    }

    async fn get_record(&self, kind: &str, key: &str) -> Result<Option<Record>, IndexError> {
        self.run(self.inner.get_record(kind, key)).await
    }

    async fn take_record(&self, kind: &str, key: &str) -> Result<Option<Record>, IndexError> {
        self.run(self.inner.take_record(kind, key)).await
    }

    async fn list_records(&self, kind: &str) -> Result<Vec<Record>, IndexError> {
        self.run(self.inner.list_records(kind)).await
    }
}
