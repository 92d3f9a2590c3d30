//! The embedded IndexStore: one redb file (`DIR/index.redb`), zero setup.
//!
//! Tables (worked examples in ARCHITECTURE.md):
//! - `versions`: (type, id, version) → `VersionRecord` as JSON, plus the version's search entries;
//! - `current`: (type, id) → the newest version number;
//! - `history`: (lastUpdated, type, id, version) → (), the system history order;
//! - `type_history`: (type, lastUpdated, id, version) → (), each type's history order;
//! - `search`: (type, param, value, id) → (), entries of current versions only;
//! - `cids`: CID → (), every CID a version references (the sweeper's question);
//! - `data_keys`: owner → wrapped data key;
//! - `unreferenced`: CID → when the sweeper first saw it unreferenced.
//!
//! Writes go through one writer thread that owns the database's write side: it takes every
//! commit waiting, applies them in one transaction and makes that transaction durable with one
//! fsync (group commit), then answers each caller. Conflicts are decided inside the
//! transaction, so two racing writers of the same resource can never both win.
//!
//! Must not know what the CIDs point at or how keys are wrapped.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::{
    Commit, HistoryCursor, HistoryQuery, HistoryScope, IndexError, IndexStore, Record, SearchEntry,
    VersionRecord,
};

const VERSIONS: TableDefinition<(&str, &str, u64), &[u8]> = TableDefinition::new("versions");
const CURRENT: TableDefinition<(&str, &str), u64> = TableDefinition::new("current");
const HISTORY: TableDefinition<(i64, &str, &str, u64), ()> = TableDefinition::new("history");
const TYPE_HISTORY: TableDefinition<(&str, i64, &str, u64), ()> =
    TableDefinition::new("type_history");
const SEARCH: TableDefinition<(&str, &str, &str, &str), ()> = TableDefinition::new("search");
const CIDS: TableDefinition<&str, ()> = TableDefinition::new("cids");
const DATA_KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("data_keys");
const UNREFERENCED: TableDefinition<&str, i64> = TableDefinition::new("unreferenced");
/// (kind, key) → `Record` as JSON.
const RECORDS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("records");

/// Most commits folded into one transaction; bounds the latency a group adds.
const MAX_GROUP: usize = 256;

/// What is stored per version: the record and the search entries it had when current.
#[derive(Serialize, Deserialize)]
struct StoredVersion {
    record: VersionRecord,
    entries: Vec<SearchEntry>,
}

enum WriteOp {
    Commit(Commit, oneshot::Sender<Result<(), IndexError>>),
    InsertKey(
        String,
        Vec<u8>,
        oneshot::Sender<Result<Vec<u8>, IndexError>>,
    ),
    /// A sweeper sighting: `Some(now)` notes it, `None` forgets it; replies the first sighting.
    Sighting(
        String,
        Option<i64>,
        oneshot::Sender<Result<i64, IndexError>>,
    ),
    /// A record change; replies the live record it replaced or removed, and whether the change
    /// was made.
    Record(
        RecordOp,
        oneshot::Sender<Result<(Option<Record>, bool), IndexError>>,
    ),
}

/// What to do with a record, decided inside the writer's transaction.
enum RecordOp {
    Put(Record),
    InsertIfAbsent(Record),
    Take { kind: String, key: String },
}

pub struct EmbeddedIndex {
    db: Arc<Database>,
    writer: std::sync::mpsc::Sender<WriteOp>,
}

fn unavailable(e: impl std::fmt::Display) -> IndexError {
    IndexError::Unavailable(format!("embedded index: {e}"))
}

impl EmbeddedIndex {
    /// Opens (creating if needed) `data_dir/index.redb` and starts its writer thread.
    pub fn open(data_dir: &Path) -> Result<EmbeddedIndex, IndexError> {
        std::fs::create_dir_all(data_dir).map_err(unavailable)?;
        let db = Database::create(data_dir.join("index.redb")).map_err(unavailable)?;
        let txn = db.begin_write().map_err(unavailable)?;
        {
            txn.open_table(VERSIONS).map_err(unavailable)?;
            txn.open_table(CURRENT).map_err(unavailable)?;
            txn.open_table(HISTORY).map_err(unavailable)?;
            txn.open_table(TYPE_HISTORY).map_err(unavailable)?;
            txn.open_table(SEARCH).map_err(unavailable)?;
            txn.open_table(CIDS).map_err(unavailable)?;
            txn.open_table(DATA_KEYS).map_err(unavailable)?;
            txn.open_table(UNREFERENCED).map_err(unavailable)?;
            txn.open_table(RECORDS).map_err(unavailable)?;
        }
        txn.commit().map_err(unavailable)?;
        let db = Arc::new(db);
        let (writer, inbox) = std::sync::mpsc::channel();
        let writer_db = db.clone();
        std::thread::Builder::new()
            .name("index-writer".into())
            .spawn(move || run_writer(&writer_db, &inbox))
            .map_err(unavailable)?;
        Ok(EmbeddedIndex { db, writer })
    }

    fn read_version(
        &self,
        resource_type: &str,
        id: &str,
        version: u64,
    ) -> Result<Option<VersionRecord>, IndexError> {
        let txn = self.db.begin_read().map_err(unavailable)?;
        let versions = txn.open_table(VERSIONS).map_err(unavailable)?;
        let row = versions
            .get((resource_type, id, version))
            .map_err(unavailable)?;
        row.map(|v| decode(v.value()).map(|s| s.record)).transpose()
    }
}

fn decode(bytes: &[u8]) -> Result<StoredVersion, IndexError> {
    serde_json::from_slice(bytes).map_err(|e| IndexError::Corrupt(e.to_string()))
}

/// The writer thread: drains waiting operations into one transaction per round.
fn run_writer(db: &Database, inbox: &std::sync::mpsc::Receiver<WriteOp>) {
    while let Ok(first) = inbox.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match inbox.try_recv() {
                Ok(op) => group.push(op),
                Err(_) => break,
            }
        }
        apply_group(db, group);
    }
}

fn apply_group(db: &Database, group: Vec<WriteOp>) {
    let txn = match db.begin_write() {
        Ok(txn) => txn,
        Err(e) => return fail_all(group, &e.to_string()),
    };
    // Each op's outcome is decided inside the transaction but only reported after it is durable.
    let mut outcomes: Vec<Result<Outcome, IndexError>> = Vec::with_capacity(group.len());
    for op in &group {
        let outcome = match op {
            WriteOp::Commit(commit, _) => apply_commit(&txn, commit).map(|()| Outcome::Done),
            WriteOp::InsertKey(owner, wrapped, _) => {
                apply_insert_key(&txn, owner, wrapped).map(Outcome::Key)
            }
            WriteOp::Sighting(cid, now, _) => apply_sighting(&txn, cid, *now).map(Outcome::Time),
            WriteOp::Record(op, _) => apply_record(&txn, op).map(Outcome::Record),
        };
        if let Err(IndexError::Unavailable(message) | IndexError::Corrupt(message)) = &outcome {
            let message = message.clone();
            drop(txn);
            return fail_all(group, &message);
        }
        outcomes.push(outcome);
    }
    if let Err(e) = txn.commit() {
        return fail_all(group, &e.to_string());
    }
    for (op, outcome) in group.into_iter().zip(outcomes) {
        match op {
            WriteOp::Commit(_, reply) => {
                let _ = reply.send(outcome.map(|_| ()));
            }
            WriteOp::InsertKey(_, _, reply) => {
                let _ = reply.send(outcome.map(Outcome::key));
            }
            WriteOp::Sighting(_, _, reply) => {
                let _ = reply.send(outcome.map(Outcome::time));
            }
            WriteOp::Record(_, reply) => {
                let _ = reply.send(outcome.map(Outcome::record));
            }
        }
    }
}

/// What one write op produced inside the group's transaction.
enum Outcome {
    Done,
    Key(Vec<u8>),
    Time(i64),
    Record((Option<Record>, bool)),
}

impl Outcome {
    fn key(self) -> Vec<u8> {
        match self {
            Outcome::Key(key) => key,
            _ => Vec::new(),
        }
    }

    fn time(self) -> i64 {
        match self {
            Outcome::Time(time) => time,
            _ => 0,
        }
    }

    fn record(self) -> (Option<Record>, bool) {
        match self {
            Outcome::Record(result) => result,
            _ => (None, false),
        }
    }
}

fn decode_record(bytes: &[u8]) -> Result<Record, IndexError> {
    serde_json::from_slice(bytes).map_err(|e| IndexError::Corrupt(e.to_string()))
}

fn apply_record(
    txn: &WriteTransaction,
    op: &RecordOp,
) -> Result<(Option<Record>, bool), IndexError> {
    let mut table = txn.open_table(RECORDS).map_err(unavailable)?;
    let now = crate::fhir::instant::now_millis();
    let (kind, key) = match op {
        RecordOp::Put(r) | RecordOp::InsertIfAbsent(r) => (r.kind.as_str(), r.key.as_str()),
        RecordOp::Take { kind, key } => (kind.as_str(), key.as_str()),
    };
    let existing = table
        .get((kind, key))
        .map_err(unavailable)?
        .map(|v| decode_record(v.value()))
        .transpose()?
        .filter(|r| r.live_at(now));
    match op {
        RecordOp::InsertIfAbsent(_) if existing.is_some() => Ok((existing, false)),
        RecordOp::Put(record) | RecordOp::InsertIfAbsent(record) => {
            let bytes = serde_json::to_vec(record).map_err(unavailable)?;
            table
                .insert((kind, key), bytes.as_slice())
                .map_err(unavailable)?;
            Ok((existing, true))
        }
        RecordOp::Take { .. } => {
            table.remove((kind, key)).map_err(unavailable)?;
            let taken = existing.is_some();
            Ok((existing, taken))
        }
    }
}

fn apply_sighting(txn: &WriteTransaction, cid: &str, now: Option<i64>) -> Result<i64, IndexError> {
    let mut table = txn.open_table(UNREFERENCED).map_err(unavailable)?;
    let Some(now) = now else {
        table.remove(cid).map_err(unavailable)?;
        return Ok(0);
    };
    if let Some(first) = table.get(cid).map_err(unavailable)?.map(|v| v.value()) {
        return Ok(first);
    }
    table.insert(cid, now).map_err(unavailable)?;
    Ok(now)
}

fn fail_all(group: Vec<WriteOp>, message: &str) {
    for op in group {
        match op {
            WriteOp::Commit(_, reply) => {
                let _ = reply.send(Err(unavailable(message)));
            }
            WriteOp::InsertKey(_, _, reply) => {
                let _ = reply.send(Err(unavailable(message)));
            }
            WriteOp::Sighting(_, _, reply) => {
                let _ = reply.send(Err(unavailable(message)));
            }
            WriteOp::Record(_, reply) => {
                let _ = reply.send(Err(unavailable(message)));
            }
        }
    }
}

fn apply_commit(txn: &WriteTransaction, commit: &Commit) -> Result<(), IndexError> {
    let record = &commit.record;
    let (rt, id) = (record.resource_type.as_str(), record.id.as_str());
    let mut current = txn.open_table(CURRENT).map_err(unavailable)?;
    let mut versions = txn.open_table(VERSIONS).map_err(unavailable)?;
    let mut search = txn.open_table(SEARCH).map_err(unavailable)?;
    let existing = current
        .get((rt, id))
        .map_err(unavailable)?
        .map(|v| v.value());
    if existing != commit.replaces || record.version != commit.replaces.unwrap_or(0) + 1 {
        return Err(IndexError::Conflict { current: existing });
    }
    if let Some(previous) = existing {
        let bytes = versions
            .get((rt, id, previous))
            .map_err(unavailable)?
            .map(|v| v.value().to_vec())
            .ok_or_else(|| IndexError::Corrupt(format!("{rt}/{id} lost version {previous}")))?;
        let mut stored = decode(&bytes)?;
        for entry in &stored.entries {
            search
                .remove((rt, entry.param.as_str(), entry.value.as_str(), id))
                .map_err(unavailable)?;
        }
        stored.record.superseded_at = Some(record.last_updated);
        let bytes = serde_json::to_vec(&stored).map_err(unavailable)?;
        versions
            .insert((rt, id, previous), bytes.as_slice())
            .map_err(unavailable)?;
    }
    let stored = StoredVersion {
        record: record.clone(),
        entries: commit.entries.clone(),
    };
    let bytes = serde_json::to_vec(&stored).map_err(unavailable)?;
    versions
        .insert((rt, id, record.version), bytes.as_slice())
        .map_err(unavailable)?;
    current
        .insert((rt, id), record.version)
        .map_err(unavailable)?;
    for entry in &commit.entries {
        search
            .insert((rt, entry.param.as_str(), entry.value.as_str(), id), ())
            .map_err(unavailable)?;
    }
    let mut history = txn.open_table(HISTORY).map_err(unavailable)?;
    history
        .insert((record.last_updated, rt, id, record.version), ())
        .map_err(unavailable)?;
    let mut type_history = txn.open_table(TYPE_HISTORY).map_err(unavailable)?;
    type_history
        .insert((rt, record.last_updated, id, record.version), ())
        .map_err(unavailable)?;
    if let Some(cid) = &record.cid {
        let mut cids = txn.open_table(CIDS).map_err(unavailable)?;
        cids.insert(cid.as_str(), ()).map_err(unavailable)?;
    }
    Ok(())
}

fn apply_insert_key(
    txn: &WriteTransaction,
    owner: &str,
    wrapped: &[u8],
) -> Result<Vec<u8>, IndexError> {
    let mut keys = txn.open_table(DATA_KEYS).map_err(unavailable)?;
    if let Some(existing) = keys.get(owner).map_err(unavailable)? {
        return Ok(existing.value().to_vec());
    }
    keys.insert(owner, wrapped).map_err(unavailable)?;
    Ok(wrapped.to_vec())
}

impl EmbeddedIndex {
    async fn record_op(&self, op: RecordOp) -> Result<(Option<Record>, bool), IndexError> {
        self.send(|reply| WriteOp::Record(op, reply))
            .await
            .map_err(|_| unavailable("the writer has stopped"))?
    }

    fn send<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, IndexError>>) -> WriteOp,
    ) -> oneshot::Receiver<Result<T, IndexError>> {
        let (reply, done) = oneshot::channel();
        // If the writer is gone, `done` resolves to an error below.
        let _ = self.writer.send(make(reply));
        done
    }
}

#[async_trait]
impl IndexStore for EmbeddedIndex {
    async fn commit(&self, commit: Commit) -> Result<(), IndexError> {
        self.send(|reply| WriteOp::Commit(commit, reply))
            .await
            .map_err(|_| unavailable("the writer has stopped"))?
    }

    async fn current(
        &self,
        resource_type: &str,
        id: &str,
    ) -> Result<Option<VersionRecord>, IndexError> {
        let version = {
            let txn = self.db.begin_read().map_err(unavailable)?;
            let current = txn.open_table(CURRENT).map_err(unavailable)?;
            current
                .get((resource_type, id))
                .map_err(unavailable)?
                .map(|v| v.value())
        };
        match version {
            Some(version) => self.read_version(resource_type, id, version),
            None => Ok(None),
        }
    }

    async fn version(
        &self,
        resource_type: &str,
        id: &str,
        version: u64,
    ) -> Result<Option<VersionRecord>, IndexError> {
        self.read_version(resource_type, id, version)
    }

    async fn history(&self, query: &HistoryQuery) -> Result<Vec<VersionRecord>, IndexError> {
        let txn = self.db.begin_read().map_err(unavailable)?;
        let versions = txn.open_table(VERSIONS).map_err(unavailable)?;
        let mut out = Vec::new();
        let mut take = |rt: &str, id: &str, version: u64| -> Result<bool, IndexError> {
            let row = versions.get((rt, id, version)).map_err(unavailable)?;
            let Some(row) = row else {
                return Err(IndexError::Corrupt(format!(
                    "{rt}/{id}/{version} has no row"
                )));
            };
            let record = decode(row.value())?.record;
            if query.admits(&record) {
                out.push(record);
            }
            Ok(out.len() < query.limit)
        };
        let after = query.after.as_ref();
        match &query.scope {
            HistoryScope::System => {
                let table = txn.open_table(HISTORY).map_err(unavailable)?;
                let upper = after.map(|c: &HistoryCursor| {
                    (
                        c.last_updated,
                        c.resource_type.as_str(),
                        c.id.as_str(),
                        c.version,
                    )
                });
                let rows = match upper {
                    Some(upper) => table.range(..upper),
                    None => table.range::<(i64, &str, &str, u64)>(..),
                }
                .map_err(unavailable)?;
                for row in rows.rev() {
                    let (key, _) = row.map_err(unavailable)?;
                    let (last_updated, rt, id, version) = key.value();
                    if query.since.is_some_and(|s| last_updated < s) || !take(rt, id, version)? {
                        break;
                    }
                }
            }
            HistoryScope::Type(rt) => {
                let table = txn.open_table(TYPE_HISTORY).map_err(unavailable)?;
                let lower = (rt.as_str(), i64::MIN, "", 0u64);
                let rows = match after {
                    Some(c) => {
                        table.range(lower..(rt.as_str(), c.last_updated, c.id.as_str(), c.version))
                    }
                    None => table.range(lower..=(rt.as_str(), i64::MAX, "\u{10ffff}", u64::MAX)),
                }
                .map_err(unavailable)?;
                for row in rows.rev() {
                    let (key, _) = row.map_err(unavailable)?;
                    let (rt, last_updated, id, version) = key.value();
                    if query.since.is_some_and(|s| last_updated < s) || !take(rt, id, version)? {
                        break;
                    }
                }
            }
            HistoryScope::Instance { resource_type, id } => {
                let upper = after.map_or(u64::MAX, |c| c.version.saturating_sub(1));
                let rows = versions
                    .range(
                        (resource_type.as_str(), id.as_str(), 1)
                            ..=(resource_type.as_str(), id.as_str(), upper),
                    )
                    .map_err(unavailable)?;
                for row in rows.rev() {
                    let (_, value) = row.map_err(unavailable)?;
                    let record = decode(value.value())?.record;
                    if query.since.is_some_and(|s| record.last_updated < s) {
                        break;
                    }
                    if query.admits(&record) {
                        out.push(record);
                        if out.len() >= query.limit {
                            break;
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    async fn data_key(&self, owner: &str) -> Result<Option<Vec<u8>>, IndexError> {
        let txn = self.db.begin_read().map_err(unavailable)?;
        let keys = txn.open_table(DATA_KEYS).map_err(unavailable)?;
        let key = keys.get(owner).map_err(unavailable)?;
        Ok(key.map(|k| k.value().to_vec()))
    }

    async fn insert_data_key(&self, owner: &str, wrapped: Vec<u8>) -> Result<Vec<u8>, IndexError> {
        let owner = owner.to_owned();
        self.send(|reply| WriteOp::InsertKey(owner, wrapped, reply))
            .await
            .map_err(|_| unavailable("the writer has stopped"))?
    }

    async fn references(&self, cid: &str) -> Result<bool, IndexError> {
        let txn = self.db.begin_read().map_err(unavailable)?;
        let cids = txn.open_table(CIDS).map_err(unavailable)?;
        Ok(cids.get(cid).map_err(unavailable)?.is_some())
    }

    async fn note_unreferenced(&self, cid: &str, now: i64) -> Result<i64, IndexError> {
        let cid = cid.to_owned();
        self.send(|reply| WriteOp::Sighting(cid, Some(now), reply))
            .await
            .map_err(|_| unavailable("the writer has stopped"))?
    }

    async fn forget_unreferenced(&self, cid: &str) -> Result<(), IndexError> {
        let cid = cid.to_owned();
        self.send(|reply| WriteOp::Sighting(cid, None, reply))
            .await
            .map_err(|_| unavailable("the writer has stopped"))?
            .map(|_| ())
    }

    async fn health(&self) -> Result<String, IndexError> {
        let txn = self.db.begin_read().map_err(unavailable)?;
        txn.open_table(CURRENT).map_err(unavailable)?;
        Ok("embedded redb".into())
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
        let txn = self.db.begin_read().map_err(unavailable)?;
        let table = txn.open_table(RECORDS).map_err(unavailable)?;
        let now = crate::fhir::instant::now_millis();
        let found = table.get((kind, key)).map_err(unavailable)?;
        Ok(found
            .map(|v| decode_record(v.value()))
            .transpose()?
            .filter(|r| r.live_at(now)))
    }

    async fn take_record(&self, kind: &str, key: &str) -> Result<Option<Record>, IndexError> {
        let op = RecordOp::Take {
            kind: kind.to_owned(),
            key: key.to_owned(),
        };
        self.record_op(op).await.map(|(taken, _)| taken)
    }

    async fn list_records(&self, kind: &str) -> Result<Vec<Record>, IndexError> {
        let txn = self.db.begin_read().map_err(unavailable)?;
        let table = txn.open_table(RECORDS).map_err(unavailable)?;
        let now = crate::fhir::instant::now_millis();
        let mut out = Vec::new();
        for row in table.range((kind, "")..).map_err(unavailable)? {
            let (key, value) = row.map_err(unavailable)?;
            if key.value().0 != kind {
                break;
            }
            let record = decode_record(value.value())?;
            if record.live_at(now) {
                out.push(record);
            }
        }
        Ok(out)
    }
}
