//! The embedded IndexStore: one redb file (`DIR/index.redb`), zero setup.
//!
//! Tables (worked examples in ARCHITECTURE.md):
//! - `versions`: (type, id, version) → `VersionRecord` as JSON;
//! - `entries`: (type, id, version) → the version's search entries (opaque bytes);
//! - `current`: (type, id) → the newest version number;
//! - `history`: (lastUpdated, type, id, version) → (), the system history order;
//! - `type_history`: (type, lastUpdated, id, version) → (), each type's history order;
//! - `current_keys`: (type, id) → the search keys of the current version (the durable copy of
//!   the search index, which is held in memory: `memory`);
//! - `indexed_with`: (type, id) → the registry fingerprint its keys were made with;
//! - `cids`: CID → (), every CID a version references (the sweeper's question);
//! - `data_keys`: owner → wrapped data key;
//! - `unreferenced`: CID → when the sweeper first saw it unreferenced;
//! - `records`: (kind, key) → the authorization server's small records.
//!
//! Writes go through one writer thread (`writer`) that owns the database's write side and
//! commits in groups; reads (`reads`) each run in a read transaction of their own on the
//! blocking pool, never on the async workers.
//!
//! Must not know what the CIDs point at or how keys are wrapped.

mod at_rest;
mod memory;
mod reads;
mod writer;

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use redb::{Database, TableDefinition};
use serde::{Deserialize, Serialize};

use super::{
    Candidate, CandidateQuery, Commit, Erased, HistoryQuery, IndexError, IndexStore, Record,
    Searchable, VersionRecord,
};
pub use at_rest::AtRestKey;
use writer::{RecordOp, WriteOp, run_writer};

const VERSIONS: TableDefinition<(&str, &str, u64), &[u8]> = TableDefinition::new("versions");
const CURRENT: TableDefinition<(&str, &str), u64> = TableDefinition::new("current");
const HISTORY: TableDefinition<(i64, &str, &str, u64), ()> = TableDefinition::new("history");
const TYPE_HISTORY: TableDefinition<(&str, i64, &str, u64), ()> =
    TableDefinition::new("type_history");
const CURRENT_KEYS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("current_keys");
const INDEXED_WITH: TableDefinition<(&str, &str), u64> = TableDefinition::new("indexed_with");
const ENTRIES: TableDefinition<(&str, &str, u64), &[u8]> = TableDefinition::new("entries");
const CIDS: TableDefinition<&str, ()> = TableDefinition::new("cids");
const DATA_KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("data_keys");
const UNREFERENCED: TableDefinition<&str, i64> = TableDefinition::new("unreferenced");
/// (kind, key) → `Record` as JSON.
const RECORDS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("records");

/// What is stored per version. (Rows written before search existed also carry an empty
/// `entries` list, which is ignored.)
#[derive(Serialize, Deserialize)]
struct StoredVersion {
    record: VersionRecord,
}

/// redb's page cache. Its default (1 GiB) let a long-running server's memory grow by the
/// size of every page it ever wrote until the gigabyte was reached (the soak, BENCHMARKS.md);
/// pages past this are read again from the file, which the OS caches anyway.
const PAGE_CACHE_BYTES: usize = 64 * 1024 * 1024;

pub struct EmbeddedIndex {
    db: Arc<Database>,
    writer: std::sync::mpsc::Sender<WriteOp>,
    /// The search index (see `memory`).
    search: Arc<std::sync::RwLock<memory::MemoryIndex>>,
    at_rest: Arc<AtRestKey>,
}

/// A resource's search entries and keys as they are stored: sealed (see `at_rest`).
pub(super) struct SealedSearch {
    entries: Vec<u8>,
    keys: Vec<u8>,
    registry: u64,
}

fn unavailable(e: impl std::fmt::Display) -> IndexError {
    IndexError::Unavailable(format!("embedded index: {e}"))
}

fn decode(bytes: &[u8]) -> Result<StoredVersion, IndexError> {
    serde_json::from_slice(bytes).map_err(|e| IndexError::Corrupt(e.to_string()))
}

fn decode_record(bytes: &[u8]) -> Result<Record, IndexError> {
    serde_json::from_slice(bytes).map_err(|e| IndexError::Corrupt(e.to_string()))
}

impl EmbeddedIndex {
    /// Opens (creating if needed) `data_dir/index.redb` and starts its writer thread; what it
    /// stores about resources' content is sealed under `at_rest`.
    pub fn open(data_dir: &Path, at_rest: AtRestKey) -> Result<EmbeddedIndex, IndexError> {
        std::fs::create_dir_all(data_dir).map_err(unavailable)?;
        let db = Database::builder()
            .set_cache_size(PAGE_CACHE_BYTES)
            .create(data_dir.join("index.redb"))
            .map_err(unavailable)?;
        let txn = db.begin_write().map_err(unavailable)?;
        {
            txn.open_table(VERSIONS).map_err(unavailable)?;
            txn.open_table(CURRENT).map_err(unavailable)?;
            txn.open_table(HISTORY).map_err(unavailable)?;
            txn.open_table(TYPE_HISTORY).map_err(unavailable)?;
            txn.open_table(CURRENT_KEYS).map_err(unavailable)?;
            txn.open_table(INDEXED_WITH).map_err(unavailable)?;
            txn.open_table(ENTRIES).map_err(unavailable)?;
            txn.open_table(CIDS).map_err(unavailable)?;
            txn.open_table(DATA_KEYS).map_err(unavailable)?;
            txn.open_table(UNREFERENCED).map_err(unavailable)?;
            txn.open_table(RECORDS).map_err(unavailable)?;
        }
        txn.commit().map_err(unavailable)?;
        let at_rest = Arc::new(at_rest);
        let search = Arc::new(std::sync::RwLock::new(reads::load_search_index(
            &db, &at_rest,
        )?));
        let db = Arc::new(db);
        let (writer, inbox) = std::sync::mpsc::channel();
        let writer_db = db.clone();
        std::thread::Builder::new()
            .name("index-writer".into())
            .spawn(move || run_writer(&writer_db, &inbox))
            .map_err(unavailable)?;
        Ok(EmbeddedIndex {
            db,
            writer,
            search,
            at_rest,
        })
    }

    fn seal_search(
        &self,
        rt: &str,
        id: &str,
        version: u64,
        searchable: &Searchable,
    ) -> Result<SealedSearch, IndexError> {
        let keys = serde_json::to_vec(&searchable.keys).map_err(unavailable)?;
        Ok(SealedSearch {
            entries: self
                .at_rest
                .seal(&at_rest::entries_aad(rt, id, version), &searchable.entries),
            keys: self.at_rest.seal(&at_rest::keys_aad(rt, id), &keys),
            registry: searchable.registry,
        })
    }

    /// Runs a read on the blocking pool, against the shared database.
    async fn read<T, F>(&self, read: F) -> Result<T, IndexError>
    where
        F: FnOnce(&Database) -> Result<T, IndexError> + Send + 'static,
        T: Send + 'static,
    {
        let db = self.db.clone();
        crate::cpu::blocking(move || read(&db)).await
    }

    /// Runs `work` in the writer's next group transaction; returns once it is durable.
    async fn write<T, F>(&self, work: F) -> Result<T, IndexError>
    where
        T: Send + 'static,
        F: FnOnce(&redb::WriteTransaction) -> Result<T, IndexError> + Send + 'static,
    {
        let (op, done) = WriteOp::new(work);
        // If the writer is gone, `done` resolves to an error below.
        let _ = self.writer.send(op);
        done.await
            .map_err(|_| unavailable("the writer has stopped"))?
    }

    async fn record_op(&self, op: RecordOp) -> Result<(Option<Record>, bool), IndexError> {
        self.write(move |txn| writer::apply_record(txn, &op)).await
    }
}

#[async_trait]
impl IndexStore for EmbeddedIndex {
    async fn commit(&self, commit: Commit) -> Result<(), IndexError> {
        self.commit_all(vec![commit], Vec::new()).await
    }

    async fn commit_all(
        &self,
        commits: Vec<Commit>,
        records: Vec<Record>,
    ) -> Result<(), IndexError> {
        let mut sealed = Vec::with_capacity(commits.len());
        for commit in &commits {
            let r = &commit.record;
            sealed.push(self.seal_search(
                &r.resource_type,
                &r.id,
                r.version,
                &commit.searchable,
            )?);
        }
        let keys: Vec<_> = commits
            .iter()
            .map(|c| {
                let r = &c.record;
                (
                    r.resource_type.clone(),
                    r.id.clone(),
                    r.version,
                    c.searchable.keys.clone(),
                )
            })
            .collect();
        let single = commits.len() == 1;
        self.write(move |txn| {
            if single {
                writer::apply_commit(txn, &commits[0], &sealed[0])?;
            } else {
                writer::apply_commits(txn, &commits, &sealed)?;
            }
            writer::put_records(txn, &records)
        })
        .await?;
        // Durable: the new keys are found from now on, before the caller is answered. (Here,
        // not on the writer thread, which goes on with the next group meanwhile.)
        if let Ok(mut index) = self.search.write() {
            for (rt, id, version, keys) in &keys {
                index.set(rt, id, *version, keys);
            }
        }
        Ok(())
    }

    async fn current(
        &self,
        resource_type: &str,
        id: &str,
    ) -> Result<Option<VersionRecord>, IndexError> {
        let (rt, id) = (resource_type.to_owned(), id.to_owned());
        self.read(move |db| reads::current(db, &rt, &id)).await
    }

    async fn version(
        &self,
        resource_type: &str,
        id: &str,
        version: u64,
    ) -> Result<Option<VersionRecord>, IndexError> {
        let (rt, id) = (resource_type.to_owned(), id.to_owned());
        self.read(move |db| reads::version(db, &rt, &id, version))
            .await
    }

    async fn history(&self, query: &HistoryQuery) -> Result<Vec<VersionRecord>, IndexError> {
        let query = query.clone();
        self.read(move |db| reads::history(db, &query)).await
    }

    async fn data_key(&self, owner: &str) -> Result<Option<Vec<u8>>, IndexError> {
        let owner = owner.to_owned();
        self.read(move |db| reads::data_key(db, &owner)).await
    }

    async fn insert_data_key(&self, owner: &str, wrapped: Vec<u8>) -> Result<Vec<u8>, IndexError> {
        let owner = owner.to_owned();
        self.write(move |txn| writer::apply_insert_key(txn, &owner, &wrapped))
            .await
    }

    async fn erase_patient(&self, patient: &str, now: i64) -> Result<Erased, IndexError> {
        let owner = super::patient_owner(patient);
        let erased = self
            .write(move |txn| writer::apply_erase_patient(txn, &owner, now))
            .await?;
        if let Ok(mut index) = self.search.write() {
            for (rt, id, version) in &erased.1 {
                index.set(rt, id, *version, &[]);
            }
        }
        Ok(erased.0)
    }

    async fn recover_abandoned(&self, _owner: &str) -> Result<usize, IndexError> {
        // A write transaction dies with the process that held it: nothing is left open.
        Ok(0)
    }

    async fn references(&self, cid: &str) -> Result<bool, IndexError> {
        let cid = cid.to_owned();
        self.read(move |db| reads::references(db, &cid)).await
    }

    async fn note_unreferenced(&self, cid: &str, now: i64) -> Result<i64, IndexError> {
        let cid = cid.to_owned();
        self.write(move |txn| writer::apply_sighting(txn, &cid, Some(now)))
            .await
    }

    async fn forget_unreferenced(&self, cid: &str) -> Result<(), IndexError> {
        let cid = cid.to_owned();
        self.write(move |txn| writer::apply_sighting(txn, &cid, None))
            .await
            .map(|_| ())
    }

    async fn health(&self) -> Result<String, IndexError> {
        self.read(reads::health).await
    }

    async fn put_record(&self, record: Record) -> Result<(), IndexError> {
        self.record_op(RecordOp::Put(record)).await.map(|_| ())
    }

    async fn insert_record(&self, record: Record) -> Result<bool, IndexError> {
        self.record_op(RecordOp::InsertIfAbsent(record))
            .await
            .map(|(_, inserted)| inserted)
    }

    async fn get_record(&self, kind: &str, key: &str) -> Result<Option<Record>, IndexError> {
        let (kind, key) = (kind.to_owned(), key.to_owned());
        self.read(move |db| reads::get_record(db, &kind, &key))
            .await
    }

    async fn take_record(&self, kind: &str, key: &str) -> Result<Option<Record>, IndexError> {
        let op = RecordOp::Take {
            kind: kind.to_owned(),
            key: key.to_owned(),
        };
        self.record_op(op).await.map(|(taken, _)| taken)
    }

    async fn list_records(&self, kind: &str) -> Result<Vec<Record>, IndexError> {
        let kind = kind.to_owned();
        self.read(move |db| reads::list_records(db, &kind)).await
    }

    async fn candidates(&self, query: &CandidateQuery) -> Result<Vec<Candidate>, IndexError> {
        let query = query.clone();
        let (search, at_rest) = (self.search.clone(), self.at_rest.clone());
        self.read(move |db| reads::candidates(db, &search, &at_rest, &query))
            .await
    }

    async fn version_entries(
        &self,
        resource_type: &str,
        id: &str,
        version: u64,
    ) -> Result<Option<Vec<u8>>, IndexError> {
        let (rt, id) = (resource_type.to_owned(), id.to_owned());
        let at_rest = self.at_rest.clone();
        self.read(move |db| reads::version_entries(db, &at_rest, &rt, &id, version))
            .await
    }

    async fn reindex(
        &self,
        resource_type: &str,
        id: &str,
        version: u64,
        searchable: Searchable,
    ) -> Result<bool, IndexError> {
        let (rt, id) = (resource_type.to_owned(), id.to_owned());
        let sealed = self.seal_search(&rt, &id, version, &searchable)?;
        let (index_rt, index_id) = (rt.clone(), id.clone());
        let reindexed = self
            .write(move |txn| writer::apply_reindex(txn, &rt, &id, version, &sealed))
            .await?;
        if reindexed && let Ok(mut index) = self.search.write() {
            index.set(&index_rt, &index_id, version, &searchable.keys);
        }
        Ok(reindexed)
    }

    async fn stale(
        &self,
        registry: u64,
        after: Option<(String, String)>,
        limit: usize,
    ) -> Result<Vec<VersionRecord>, IndexError> {
        self.read(move |db| reads::stale(db, registry, after.as_ref(), limit))
            .await
    }

    async fn purge_expired(&self, now: i64) -> Result<usize, IndexError> {
        self.write(move |txn| writer::apply_purge_expired(txn, now))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_key() -> AtRestKey {
        AtRestKey::from_bytes([3; 32])
    }

    /// The search index lives in memory: after a restart it is rebuilt from the durable keys.
    #[tokio::test]
    async fn the_search_index_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let record = VersionRecord {
            resource_type: "Patient".into(),
            id: "p".into(),
            version: 1,
            last_updated: 1,
            superseded_at: None,
            method: crate::index::Method::Create,
            cid: Some("bafkreix".into()),
            digest: Some("d".into()),
            key_owner: Some("Patient/p".into()),
            patients: vec!["p".into()],
            batch_entry: None,
        };
        let query = CandidateQuery {
            resource_types: vec!["Patient".into()],
            key_ranges: Some(vec![crate::index::equality_range("name\u{1}n\u{1}x")]),
            patient: None,
            after: None,
            limit: 10,
        };
        {
            let index = EmbeddedIndex::open(dir.path(), test_key()).unwrap();
            let commit = Commit {
                record,
                replaces: None,
                searchable: Searchable {
                    keys: vec!["name\u{1}n\u{1}x".into()],
                    entries: b"[]".to_vec(),
                    registry: 1,
                },
            };
            index.commit(commit).await.unwrap();
            assert_eq!(index.candidates(&query).await.unwrap().len(), 1);
        }
        // The writer thread holds the database until its channel closes.
        std::thread::sleep(std::time::Duration::from_millis(100));
        let reopened = EmbeddedIndex::open(dir.path(), test_key()).unwrap();
        assert_eq!(reopened.candidates(&query).await.unwrap().len(), 1);
    }

    /// A read runs on the blocking pool: on a one-thread runtime another task keeps ticking
    /// while a slow read (a long scan, a cold disk) is under way.
    #[tokio::test(flavor = "current_thread")]
    async fn reads_leave_the_runtime_free() {
        let dir = tempfile::tempdir().unwrap();
        let index = Arc::new(EmbeddedIndex::open(dir.path(), test_key()).unwrap());
        let reader = index.clone();
        let slow = tokio::spawn(async move {
            reader
                .read(|db| {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                    reads::health(db)
                })
                .await
        });
        let mut ticks = 0;
        while !slow.is_finished() {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            ticks += 1;
        }
        assert!(slow.await.unwrap().is_ok());
        assert!(
            ticks >= 10,
            "the runtime ticked only {ticks} times during the read"
        );
    }
}
