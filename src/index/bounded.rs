//! Every IndexStore call under one timeout: a decorator `app` wraps around whichever store
//! the profile uses, so no caller (repository, vault, authorization server) can wait on a hung
//! index longer than the configured backend timeout. A call past it fails with
//! `IndexError::Timeout`, which becomes a 503 naming the index. Being the one place every
//! call passes, it is also where call durations and failures are reported to `metrics`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{
    Candidate, CandidateQuery, Commit, Erased, HistoryQuery, IndexError, IndexStore, Record,
    Searchable, VersionRecord,
};
use crate::metrics;

const COMPONENT: &str = "index";

/// How a failed call is counted; a conflict is an answer, not a failure of the store.
fn failure_kind(error: &IndexError) -> Option<&'static str> {
    match error {
        IndexError::Conflict { .. } => None,
        IndexError::Unavailable(_) => Some("unavailable"),
        IndexError::Timeout(_) => Some("timeout"),
        IndexError::Corrupt(_) => Some("corrupt"),
    }
}

pub struct Bounded {
    inner: Arc<dyn IndexStore>,
    timeout: Duration,
}

impl Bounded {
    pub fn new(inner: Arc<dyn IndexStore>, timeout: Duration) -> Bounded {
        Bounded { inner, timeout }
    }

    /// Runs one call under the timeout, and reports its duration and failure to `metrics`.
    async fn run<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T, IndexError>>,
    ) -> Result<T, IndexError> {
        let started = std::time::Instant::now();
        let result = tokio::time::timeout(self.timeout, call)
            .await
            .unwrap_or(Err(IndexError::Timeout(self.timeout)));
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
impl IndexStore for Bounded {
    async fn commit(&self, commit: Commit) -> Result<(), IndexError> {
        self.run("commit", self.inner.commit(commit)).await
    }

    async fn commit_all(
        &self,
        commits: Vec<Commit>,
        records: Vec<Record>,
    ) -> Result<(), IndexError> {
        self.run("commit_all", self.inner.commit_all(commits, records))
            .await
    }

    async fn current(
        &self,
        resource_type: &str,
        id: &str,
    ) -> Result<Option<VersionRecord>, IndexError> {
        self.run("current", self.inner.current(resource_type, id))
            .await
    }

    async fn version(
        &self,
        resource_type: &str,
        id: &str,
        version: u64,
    ) -> Result<Option<VersionRecord>, IndexError> {
        self.run("version", self.inner.version(resource_type, id, version))
            .await
    }

    async fn history(&self, query: &HistoryQuery) -> Result<Vec<VersionRecord>, IndexError> {
        self.run("history", self.inner.history(query)).await
    }

    async fn data_key(&self, owner: &str) -> Result<Option<Vec<u8>>, IndexError> {
        self.run("data_key", self.inner.data_key(owner)).await
    }

    async fn insert_data_key(&self, owner: &str, wrapped: Vec<u8>) -> Result<Vec<u8>, IndexError> {
        self.run(
            "insert_data_key",
            self.inner.insert_data_key(owner, wrapped),
        )
        .await
    }

    async fn erase_patient(&self, patient: &str, now: i64) -> Result<Erased, IndexError> {
        self.run("erase_patient", self.inner.erase_patient(patient, now))
            .await
    }

    async fn recover_abandoned(&self, owner: &str) -> Result<usize, IndexError> {
        self.run("recover_abandoned", self.inner.recover_abandoned(owner))
            .await
    }

    async fn references(&self, cid: &str) -> Result<bool, IndexError> {
        self.run("references", self.inner.references(cid)).await
    }

    async fn note_unreferenced(&self, cid: &str, now: i64) -> Result<i64, IndexError> {
        self.run("note_unreferenced", self.inner.note_unreferenced(cid, now))
            .await
    }

    async fn forget_unreferenced(&self, cid: &str) -> Result<(), IndexError> {
        self.run("forget_unreferenced", self.inner.forget_unreferenced(cid))
            .await
    }

    async fn health(&self) -> Result<String, IndexError> {
        self.run("health", self.inner.health()).await
    }

    async fn put_record(&self, record: Record) -> Result<(), IndexError> {
        self.run("put_record", self.inner.put_record(record)).await
    }

    async fn insert_record(&self, record: Record) -> Result<bool, IndexError> {
        self.run("insert_record", self.inner.insert_record(record))
            .await
    }

    async fn get_record(&self, kind: &str, key: &str) -> Result<Option<Record>, IndexError> {
        self.run("get_record", self.inner.get_record(kind, key))
            .await
    }

    async fn take_record(&self, kind: &str, key: &str) -> Result<Option<Record>, IndexError> {
        self.run("take_record", self.inner.take_record(kind, key))
            .await
    }

    async fn list_records(&self, kind: &str) -> Result<Vec<Record>, IndexError> {
        self.run("list_records", self.inner.list_records(kind))
            .await
    }

    async fn candidates(&self, query: &CandidateQuery) -> Result<Vec<Candidate>, IndexError> {
        self.run("candidates", self.inner.candidates(query)).await
    }

    async fn version_entries(
        &self,
        resource_type: &str,
        id: &str,
        version: u64,
    ) -> Result<Option<Vec<u8>>, IndexError> {
        self.run(
            "version_entries",
            self.inner.version_entries(resource_type, id, version),
        )
        .await
    }

    async fn reindex(
        &self,
        resource_type: &str,
        id: &str,
        version: u64,
        searchable: Searchable,
    ) -> Result<bool, IndexError> {
        self.run(
            "reindex",
            self.inner.reindex(resource_type, id, version, searchable),
        )
        .await
    }

    async fn stale(
        &self,
        registry: u64,
        after: Option<(String, String)>,
        limit: usize,
    ) -> Result<Vec<VersionRecord>, IndexError> {
        self.run("stale", self.inner.stale(registry, after, limit))
            .await
    }

    async fn purge_expired(&self, now: i64) -> Result<usize, IndexError> {
        self.run("purge_expired", self.inner.purge_expired(now))
            .await
    }
}
