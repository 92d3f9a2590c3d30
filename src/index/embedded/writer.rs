//! The writer thread of the embedded index: it owns the database's write side, takes every
//! operation waiting, applies them in one transaction and makes that transaction durable with
//! one fsync (group commit), then answers each caller. Conflicts are decided inside the
//! transaction, so two racing writers of the same resource can never both win.

use redb::{Database, ReadableTable, WriteTransaction};
use tokio::sync::oneshot;

use super::SealedSearch;
use super::{
    CIDS, CURRENT, CURRENT_KEYS, DATA_KEYS, ENTRIES, HISTORY, INDEXED_WITH, RECORDS, StoredVersion,
    TYPE_HISTORY, UNREFERENCED, VERSIONS, decode, decode_record, unavailable,
};
use crate::index::{Commit, Erased, IndexError, Record};

/// Most operations folded into one transaction; bounds the latency a group adds.
const MAX_GROUP: usize = 256;

/// One operation for the writer: work to run inside the group's transaction, and the reply
/// that is sent only once that transaction is durable (or has failed).
pub(super) struct WriteOp(Box<dyn Pending>);

trait Pending: Send {
    /// Runs inside the group's transaction. `Err(message)` when the store itself failed: the
    /// whole group is then abandoned.
    fn apply(&mut self, txn: &WriteTransaction) -> Result<(), String>;
    /// Sends the outcome decided in `apply`, or `failure` if the group was not committed.
    fn finish(self: Box<Self>, failure: Option<&str>);
}

struct Op<T, F> {
    work: Option<F>,
    outcome: Option<Result<T, IndexError>>,
    reply: oneshot::Sender<Result<T, IndexError>>,
}

impl<T, F> Pending for Op<T, F>
where
    T: Send,
    F: FnOnce(&WriteTransaction) -> Result<T, IndexError> + Send,
{
    fn apply(&mut self, txn: &WriteTransaction) -> Result<(), String> {
        let Some(work) = self.work.take() else {
            return Ok(());
        };
        let outcome = work(txn);
        let failed = match &outcome {
            Err(IndexError::Unavailable(message) | IndexError::Corrupt(message)) => {
                Some(message.clone())
            }
            _ => None,
        };
        self.outcome = Some(outcome);
        failed.map_or(Ok(()), Err)
    }

    fn finish(self: Box<Self>, failure: Option<&str>) {
        let result = match failure {
            Some(message) => Err(unavailable(message)),
            None => self
                .outcome
                .unwrap_or_else(|| Err(unavailable("the operation was not applied"))),
        };
        let _ = self.reply.send(result);
    }
}

impl WriteOp {
    /// An operation running `work` in the writer's transaction, and where its outcome arrives.
    pub(super) fn new<T, F>(work: F) -> (WriteOp, oneshot::Receiver<Result<T, IndexError>>)
    where
        T: Send + 'static,
        F: FnOnce(&WriteTransaction) -> Result<T, IndexError> + Send + 'static,
    {
        let (reply, done) = oneshot::channel();
        let op = Op {
            work: Some(work),
            outcome: None,
            reply,
        };
        (WriteOp(Box::new(op)), done)
    }
}

/// What to do with a record, decided inside the writer's transaction.
pub(super) enum RecordOp {
    Put(Record),
    InsertIfAbsent(Record),
    Take { kind: String, key: String },
}

/// The writer thread: drains waiting operations into one transaction per round.
pub(super) fn run_writer(db: &Database, inbox: &std::sync::mpsc::Receiver<WriteOp>) {
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

fn apply_group(db: &Database, mut group: Vec<WriteOp>) {
    let finish_all = |group: Vec<WriteOp>, failure: Option<&str>| {
        for WriteOp(op) in group {
            op.finish(failure);
        }
    };
    let txn = match db.begin_write() {
        Ok(txn) => txn,
        Err(e) => return finish_all(group, Some(&e.to_string())),
    };
    // Each op's outcome is decided inside the transaction but only reported once it is durable.
    for WriteOp(op) in &mut group {
        if let Err(message) = op.apply(&txn) {
            drop(txn);
            return finish_all(group, Some(&message));
        }
    }
    match txn.commit() {
        Ok(()) => finish_all(group, None),
        Err(e) => finish_all(group, Some(&e.to_string())),
    }
}

pub(super) fn apply_record(
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

/// Puts `records` (as `RecordOp::Put` each), with the table opened once and nothing read.
pub(super) fn put_records(txn: &WriteTransaction, records: &[Record]) -> Result<(), IndexError> {
    if records.is_empty() {
        return Ok(());
    }
    let mut table = txn.open_table(RECORDS).map_err(unavailable)?;
    for record in records {
        let bytes = serde_json::to_vec(record).map_err(unavailable)?;
        table
            .insert(
                (record.kind.as_str(), record.key.as_str()),
                bytes.as_slice(),
            )
            .map_err(unavailable)?;
    }
    Ok(())
}

pub(super) fn apply_sighting(
    txn: &WriteTransaction,
    cid: &str,
    now: Option<i64>,
) -> Result<i64, IndexError> {
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

/// `apply_commit` for each of `commits`, every expectation checked before anything is written,
/// so a conflict leaves the group's transaction as it found it.
pub(super) fn apply_commits(
    txn: &WriteTransaction,
    commits: &[Commit],
    sealed: &[SealedSearch],
) -> Result<(), IndexError> {
    let mut tables = Tables::open(txn)?;
    let mut seen = std::collections::HashSet::new();
    for commit in commits {
        let r = &commit.record;
        let existing = tables
            .current
            .get((r.resource_type.as_str(), r.id.as_str()))
            .map_err(unavailable)?
            .map(|v| v.value());
        let expected = existing == commit.replaces
            && r.version == commit.replaces.unwrap_or(0) + 1
            && seen.insert((r.resource_type.as_str(), r.id.as_str()));
        if !expected {
            return Err(IndexError::Conflict { current: existing });
        }
    }
    for (commit, sealed) in commits.iter().zip(sealed) {
        tables.apply(commit, sealed)?;
    }
    Ok(())
}

pub(super) fn apply_commit(
    txn: &WriteTransaction,
    commit: &Commit,
    sealed: &SealedSearch,
) -> Result<(), IndexError> {
    Tables::open(txn)?.apply(commit, sealed)
}

/// The tables a commit writes, opened once for a whole group of commits: each open and close
/// of a table in a transaction rewrites its root in redb's table of tables.
struct Tables<'txn> {
    current: redb::Table<'txn, (&'static str, &'static str), u64>,
    versions: redb::Table<'txn, (&'static str, &'static str, u64), &'static [u8]>,
    entries: redb::Table<'txn, (&'static str, &'static str, u64), &'static [u8]>,
    current_keys: redb::Table<'txn, (&'static str, &'static str), &'static [u8]>,
    indexed: redb::Table<'txn, (&'static str, &'static str), u64>,
    history: redb::Table<'txn, (i64, &'static str, &'static str, u64), ()>,
    type_history: redb::Table<'txn, (&'static str, i64, &'static str, u64), ()>,
    cids: redb::Table<'txn, &'static str, ()>,
}

impl<'txn> Tables<'txn> {
    fn open(txn: &'txn WriteTransaction) -> Result<Self, IndexError> {
        Ok(Tables {
            current: txn.open_table(CURRENT).map_err(unavailable)?,
            versions: txn.open_table(VERSIONS).map_err(unavailable)?,
            entries: txn.open_table(ENTRIES).map_err(unavailable)?,
            current_keys: txn.open_table(CURRENT_KEYS).map_err(unavailable)?,
            indexed: txn.open_table(INDEXED_WITH).map_err(unavailable)?,
            history: txn.open_table(HISTORY).map_err(unavailable)?,
            type_history: txn.open_table(TYPE_HISTORY).map_err(unavailable)?,
            cids: txn.open_table(CIDS).map_err(unavailable)?,
        })
    }

    fn apply(&mut self, commit: &Commit, sealed: &SealedSearch) -> Result<(), IndexError> {
        let record = &commit.record;
        let (rt, id) = (record.resource_type.as_str(), record.id.as_str());
        let existing = self
            .current
            .get((rt, id))
            .map_err(unavailable)?
            .map(|v| v.value());
        if existing != commit.replaces || record.version != commit.replaces.unwrap_or(0) + 1 {
            return Err(IndexError::Conflict { current: existing });
        }
        if let Some(previous) = existing {
            let bytes = self
                .versions
                .get((rt, id, previous))
                .map_err(unavailable)?
                .map(|v| v.value().to_vec())
                .ok_or_else(|| IndexError::Corrupt(format!("{rt}/{id} lost version {previous}")))?;
            let mut stored = decode(&bytes)?;
            stored.record.superseded_at = Some(record.last_updated);
            let bytes = serde_json::to_vec(&stored).map_err(unavailable)?;
            self.versions
                .insert((rt, id, previous), bytes.as_slice())
                .map_err(unavailable)?;
        }
        let stored = StoredVersion {
            record: record.clone(),
        };
        let bytes = serde_json::to_vec(&stored).map_err(unavailable)?;
        self.versions
            .insert((rt, id, record.version), bytes.as_slice())
            .map_err(unavailable)?;
        self.current
            .insert((rt, id), record.version)
            .map_err(unavailable)?;
        self.entries
            .insert((rt, id, record.version), sealed.entries.as_slice())
            .map_err(unavailable)?;
        // The durable copy of the keys `Type/id` is found by, from which the in-memory index
        // is updated once the transaction is durable (and rebuilt at start).
        self.current_keys
            .insert((rt, id), sealed.keys.as_slice())
            .map_err(unavailable)?;
        self.indexed
            .insert((rt, id), sealed.registry)
            .map_err(unavailable)?;
        self.history
            .insert((record.last_updated, rt, id, record.version), ())
            .map_err(unavailable)?;
        self.type_history
            .insert((rt, record.last_updated, id, record.version), ())
            .map_err(unavailable)?;
        if let Some(cid) = &record.cid {
            self.cids.insert(cid.as_str(), ()).map_err(unavailable)?;
        }
        Ok(())
    }
}

/// Makes `searchable`'s keys the ones `Type/id` is found by (a reindex).
fn replace_keys(
    txn: &WriteTransaction,
    rt: &str,
    id: &str,
    sealed: &SealedSearch,
) -> Result<(), IndexError> {
    let mut current_keys = txn.open_table(CURRENT_KEYS).map_err(unavailable)?;
    current_keys
        .insert((rt, id), sealed.keys.as_slice())
        .map_err(unavailable)?;
    let mut indexed = txn.open_table(INDEXED_WITH).map_err(unavailable)?;
    indexed
        .insert((rt, id), sealed.registry)
        .map_err(unavailable)?;
    Ok(())
}

/// A reindex of the current version `version`; `false` when it is no longer current.
pub(super) fn apply_reindex(
    txn: &WriteTransaction,
    rt: &str,
    id: &str,
    version: u64,
    sealed: &SealedSearch,
) -> Result<bool, IndexError> {
    let current = txn.open_table(CURRENT).map_err(unavailable)?;
    let newest = current
        .get((rt, id))
        .map_err(unavailable)?
        .map(|v| v.value());
    drop(current);
    if newest != Some(version) {
        return Ok(false);
    }
    let mut entries = txn.open_table(ENTRIES).map_err(unavailable)?;
    entries
        .insert((rt, id, version), sealed.entries.as_slice())
        .map_err(unavailable)?;
    replace_keys(txn, rt, id, sealed)?;
    Ok(true)
}

pub(super) fn apply_insert_key(
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

/// Deletes every record expired at `now`; returns how many.
pub(super) fn apply_purge_expired(txn: &WriteTransaction, now: i64) -> Result<usize, IndexError> {
    let mut table = txn.open_table(RECORDS).map_err(unavailable)?;
    let mut expired: Vec<(String, String)> = Vec::new();
    for row in table.iter().map_err(unavailable)? {
        let (key, value) = row.map_err(unavailable)?;
        // An unreadable record cannot be judged; it is left for an operator to see.
        if decode_record(value.value()).is_ok_and(|r| !r.live_at(now)) {
            let (kind, key) = key.value();
            expired.push((kind.to_owned(), key.to_owned()));
        }
    }
    for (kind, key) in &expired {
        table
            .remove((kind.as_str(), key.as_str()))
            .map_err(unavailable)?;
    }
    Ok(expired.len())
}

/// A resource ended by an erasure: type, id and the erasure version's number.
pub(super) type EndedVersion = (String, String, u64);

/// `IndexStore::erase_patient` inside one transaction: the key destroyed, every version sealed
/// under it removed, each resource whose current version was one of them ended by an erasure
/// version. (A scan of every version row: erasures are rare, and no table is keyed by owner.)
/// Returns what was erased, and each resource's new last version, for the search index.
pub(super) fn apply_erase_patient(
    txn: &WriteTransaction,
    owner: &str,
    now: i64,
) -> Result<(Erased, Vec<EndedVersion>), IndexError> {
    txn.open_table(DATA_KEYS)
        .map_err(unavailable)?
        .insert(owner, [].as_slice())
        .map_err(unavailable)?;
    let mut sealed_under: Vec<crate::index::VersionRecord> = Vec::new();
    {
        let versions = txn.open_table(VERSIONS).map_err(unavailable)?;
        for row in versions.iter().map_err(unavailable)? {
            let (_, value) = row.map_err(unavailable)?;
            let record = decode(value.value())?.record;
            if record.key_owner.as_deref() == Some(owner) {
                sealed_under.push(record);
            }
        }
    }
    let mut erased = Erased::default();
    let mut ended = Vec::new();
    let mut tables = Tables::open(txn)?;
    // First the erasure versions (each marks the version it ends superseded), then the rows.
    for record in &sealed_under {
        let (rt, id) = (record.resource_type.as_str(), record.id.as_str());
        let current = tables
            .current
            .get((rt, id))
            .map_err(unavailable)?
            .map(|v| v.value());
        if current == Some(record.version) {
            let end = crate::index::VersionRecord::erasure_of(record, now);
            let none = SealedSearch {
                entries: Vec::new(),
                keys: Vec::new(),
                registry: 0,
            };
            tables.apply(&end, &none)?;
            // An erased resource has no search entries or keys at all.
            tables
                .entries
                .remove((rt, id, end.record.version))
                .map_err(unavailable)?;
            tables.current_keys.remove((rt, id)).map_err(unavailable)?;
            tables.indexed.remove((rt, id)).map_err(unavailable)?;
            erased.resources.push((rt.to_owned(), id.to_owned()));
            ended.push((rt.to_owned(), id.to_owned(), end.record.version));
        }
    }
    for record in &sealed_under {
        let (rt, id, version) = (
            record.resource_type.as_str(),
            record.id.as_str(),
            record.version,
        );
        tables
            .versions
            .remove((rt, id, version))
            .map_err(unavailable)?;
        tables
            .entries
            .remove((rt, id, version))
            .map_err(unavailable)?;
        tables
            .history
            .remove((record.last_updated, rt, id, version))
            .map_err(unavailable)?;
        tables
            .type_history
            .remove((rt, record.last_updated, id, version))
            .map_err(unavailable)?;
        if let Some(cid) = &record.cid {
            tables.cids.remove(cid.as_str()).map_err(unavailable)?;
            erased.cids.push(cid.clone());
        }
        erased.versions += 1;
    }
    Ok((erased, ended))
}
