//! The IndexStore seam: where every resource version is, and what can be searched.
//!
//! One row per resource version (`VersionRecord`: type, id, versionId, lastUpdated, deleted,
//! CID, keyed digest, patient compartment), the search keys and entries of versions (only the
//! current versions' keys are searched), and the wrapped data keys of the vault. Two implementations with the same behaviour: `embedded`
//! (redb, the default) and `mongo` (the services profile). A commit is atomic and is the commit
//! point of a write: the blob is already stored when it runs, so a crash before it leaves only
//! an unreferenced blob, never a row pointing at nothing.
//!
//! The index never sees plaintext: only CIDs, keyed digests, ids and extracted search values.
//! It does not interpret the search values either: it finds keys in ranges and returns entries
//! as it got them; what they mean is the search room's.

pub mod bounded;
pub mod embedded;
pub mod mongo;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// How a version came to be, for history entries' `request.method`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Method {
    Create,
    Update,
    Delete,
    /// The resource was erased with its patient's record (`IndexStore::erase_patient`): a
    /// delete whose earlier versions are gone for good.
    Erase,
}

/// One version of one resource.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRecord {
    pub resource_type: String,
    pub id: String,
    pub version: u64,
    /// `meta.lastUpdated` in milliseconds since the epoch; never decreases within a resource.
    pub last_updated: i64,
    /// When the next version replaced this one; `None` while it is current. Lets `_at` history
    /// decide "current at some point in a period" from one row.
    pub superseded_at: Option<i64>,
    pub method: Method,
    /// Where the sealed content is; `None` for a delete, which has no content.
    pub cid: Option<String>,
    /// HMAC-SHA-256 of the plaintext under the data key: lets `open` prove the content is the
    /// one indexed, without the index holding a hash anyone could test guesses against.
    pub digest: Option<String>,
    /// Whose data key sealed the content (`Patient/123`, or `system`).
    pub key_owner: Option<String>,
    /// The patients whose compartment holds this version (ids), for consent and scoping.
    pub patients: Vec<String>,
    /// Where the content is inside the blob `cid` when that blob is a batch of sealed entries
    /// (AuditEvents are stored so, many per blob: see `vault::batch`); `None`: the blob is
    /// this version's alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_entry: Option<u32>,
}

impl VersionRecord {
    pub fn deleted(&self) -> bool {
        matches!(self.method, Method::Delete | Method::Erase)
    }

    /// The last version of a resource erased with its patient's record: no content, made
    /// current at `now`; its patients stay, so they (and whoever they granted) are told it is
    /// gone (410) rather than refused.
    pub fn erasure_of(current: &VersionRecord, now: i64) -> Commit {
        Commit {
            record: VersionRecord {
                resource_type: current.resource_type.clone(),
                id: current.id.clone(),
                version: current.version + 1,
                last_updated: now.max(current.last_updated + 1),
                superseded_at: None,
                method: Method::Erase,
                cid: None,
                digest: None,
                key_owner: None,
                patients: current.patients.clone(),
                batch_entry: None,
            },
            replaces: Some(current.version),
            searchable: Searchable::default(),
        }
    }
}

/// What erasing a patient's record removed from the index.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Erased {
    /// The resources whose current version was sealed under the destroyed key, each now ending
    /// in an `Erase` version, as (type, id).
    pub resources: Vec<(String, String)>,
    /// How many version rows were removed.
    pub versions: usize,
    /// The blobs of those versions, which nothing references any more (to unpin).
    pub cids: Vec<String>,
}

/// The owner whose data key seals a patient's record.
pub fn patient_owner(patient: &str) -> String {
    format!("Patient/{patient}")
}

/// What a version can be found by. The index keeps both parts without reading them: `keys`
/// are the strings of its one search index (their format is `search::keys`'), `entries` the
/// JSON of the version's search entries, handed back with each candidate so the search room
/// can decide exactly.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Searchable {
    pub keys: Vec<String>,
    pub entries: Vec<u8>,
    /// A fingerprint of the parameter registry that made them: a reindex rebuilds those
    /// made by another.
    pub registry: u64,
}

/// A new version to make current, atomically.
#[derive(Clone, Debug)]
pub struct Commit {
    pub record: VersionRecord,
    /// The version this one replaces; `None` when the resource must not exist yet. A commit
    /// whose expectation no longer holds fails with `IndexError::Conflict`.
    pub replaces: Option<u64>,
    /// Empty for a delete: a deleted resource cannot be found by search.
    pub searchable: Searchable,
}

/// Current, not deleted, resources that may match a search: every resource that matches is
/// among them (the search room decides which do), in (type, id) order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CandidateQuery {
    /// The types searched; empty: every type.
    pub resource_types: Vec<String>,
    /// `[from, to)` ranges, one of which some key of a candidate falls in; `None`: every
    /// resource of the types.
    pub key_ranges: Option<Vec<(String, String)>>,
    /// Only resources in this patient's compartment.
    pub patient: Option<String>,
    /// Continue strictly after this (type, id).
    pub after: Option<(String, String)>,
    pub limit: usize,
}

/// One candidate: the current version's row, and its entries as committed.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    pub record: VersionRecord,
    pub entries: Vec<u8>,
}

/// The upper end of the degenerate range that is the one key `key`.
pub fn equality_range(key: &str) -> (String, String) {
    (key.to_owned(), format!("{key}\u{0}"))
}

/// Whether `[from, to)` is the degenerate range of one key (an equality a store can look up).
pub fn as_equality<'a>(from: &'a str, to: &str) -> Option<&'a str> {
    (to.len() == from.len() + 1 && to.starts_with(from) && to.ends_with('\u{0}')).then_some(from)
}

/// Which history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HistoryScope {
    System,
    Type(String),
    Instance { resource_type: String, id: String },
}

/// A position in a history listing: the last entry of the previous page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryCursor {
    pub last_updated: i64,
    pub resource_type: String,
    pub id: String,
    pub version: u64,
}

impl HistoryCursor {
    pub fn after(record: &VersionRecord) -> HistoryCursor {
        HistoryCursor {
            last_updated: record.last_updated,
            resource_type: record.resource_type.clone(),
            id: record.id.clone(),
            version: record.version,
        }
    }
}

/// A history listing: newest first, ordered by (lastUpdated, type, id, version) descending.
#[derive(Clone, Debug)]
pub struct HistoryQuery {
    pub scope: HistoryScope,
    /// Only versions with lastUpdated ≥ this (`_since`).
    pub since: Option<i64>,
    /// Only versions current at some point in [start, end] (`_at`).
    pub at: Option<(i64, i64)>,
    /// Continue strictly after this entry (the next page).
    pub after: Option<HistoryCursor>,
    /// Only versions in this patient's compartment (a `patient/`-scoped listing).
    pub patient: Option<String>,
    pub limit: usize,
}

impl HistoryQuery {
    /// Whether `record` passes the time filters (shared by every implementation).
    pub fn admits(&self, record: &VersionRecord) -> bool {
        if self.since.is_some_and(|since| record.last_updated < since) {
            return false;
        }
        if let Some(patient) = &self.patient
            && !record.patients.iter().any(|p| p == patient)
        {
            return false;
        }
        if let Some((start, end)) = self.at {
            if record.last_updated > end {
                return false;
            }
            if record.superseded_at.is_some_and(|s| s <= start) {
                return false;
            }
        }
        true
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("version conflict: the current version is {current:?}")]
    Conflict { current: Option<u64> },
    #[error("the index store is unavailable: {0}")]
    Unavailable(String),
    #[error("the index store did not answer within {0:?}")]
    Timeout(std::time::Duration),
    #[error("the index holds an unreadable row: {0}")]
    Corrupt(String),
}

#[async_trait]
pub trait IndexStore: Send + Sync {
    /// Makes `commit.record` the current version, durably, if `commit.replaces` still holds.
    async fn commit(&self, commit: Commit) -> Result<(), IndexError>;

    /// `commit` for many versions of distinct resources, atomically: all are made current and
    /// every one of `records` is put (as `put_record`), or (the first conflict, a failure)
    /// nothing is. A record put already expired is gone.
    async fn commit_all(
        &self,
        commits: Vec<Commit>,
        records: Vec<Record>,
    ) -> Result<(), IndexError>;

    /// The newest version of a resource, deleted or not.
    async fn current(
        &self,
        resource_type: &str,
        id: &str,
    ) -> Result<Option<VersionRecord>, IndexError>;

    /// One version of a resource.
    async fn version(
        &self,
        resource_type: &str,
        id: &str,
        version: u64,
    ) -> Result<Option<VersionRecord>, IndexError>;

    /// A page of history, newest first.
    async fn history(&self, query: &HistoryQuery) -> Result<Vec<VersionRecord>, IndexError>;

    /// The wrapped data key of `owner`, if one was made.
    async fn data_key(&self, owner: &str) -> Result<Option<Vec<u8>>, IndexError>;

    /// Stores `wrapped` as `owner`'s data key unless one exists; returns the key that holds
    /// (so two replicas racing to create a key agree on one).
    async fn insert_data_key(&self, owner: &str, wrapped: Vec<u8>) -> Result<Vec<u8>, IndexError>;

    /// Erases Patient `patient`'s record from the index, the index's half of crypto-shredding:
    /// their data key (`patient_owner`) is replaced by an empty value, which the vault reads
    /// as destroyed and which `insert_data_key` never replaces, so nothing is sealed or opened
    /// under it again; every version sealed under it loses its row, search entries and keys;
    /// every resource whose current version was one of them gets a last version
    /// (`VersionRecord::erasure_of` at `now`), so it reads as gone and its id is never reused.
    /// Idempotent: a second call (after a crash, say) finishes what the first left.
    async fn erase_patient(&self, patient: &str, now: i64) -> Result<Erased, IndexError>;

    /// Aborts what an earlier process of `owner` (this server's replica name) left half done,
    /// and marks this process as `owner`'s from now on. On MongoDB a transaction whose client
    /// died holds its documents until the server's transaction lifetime (60 s) ends, and with
    /// them the replica's audit trail; the embedded store's transactions die with the process,
    /// so there it does nothing. Returns how many were aborted.
    async fn recover_abandoned(&self, owner: &str) -> Result<usize, IndexError>;

    /// Whether any version references `cid` (the sweeper's question).
    async fn references(&self, cid: &str) -> Result<bool, IndexError>;

    /// Records that the sweeper saw `cid` unreferenced at `now` (milliseconds), keeping an
    /// earlier sighting; returns the first sighting. Kept in the index so the grace period
    /// holds across sweeps, restarts and replicas.
    async fn note_unreferenced(&self, cid: &str, now: i64) -> Result<i64, IndexError>;

    /// Forgets a sighting (the blob was removed, or turned out to be referenced).
    async fn forget_unreferenced(&self, cid: &str) -> Result<(), IndexError>;

    /// A short description of the store and whether it answers, for `/health`.
    async fn health(&self) -> Result<String, IndexError>;

    /// Small records of the authorization server (users, clients, codes, refresh tokens,
    /// launch contexts, replay caches, signing keys), by kind and key. Values are opaque; a
    /// record past `expires_at` (ms) reads as absent.
    async fn put_record(&self, record: Record) -> Result<(), IndexError>;

    /// Stores `record` only if no live record has its kind and key; returns whether it did.
    /// The primitive of single-use things: a replayed `jti` finds its slot taken.
    async fn insert_record(&self, record: Record) -> Result<bool, IndexError>;

    async fn get_record(&self, kind: &str, key: &str) -> Result<Option<Record>, IndexError>;

    /// Removes and returns a live record, atomically: two callers never both get it.
    async fn take_record(&self, kind: &str, key: &str) -> Result<Option<Record>, IndexError>;

    /// Every live record of a kind.
    async fn list_records(&self, kind: &str) -> Result<Vec<Record>, IndexError>;

    /// Candidates of a search (see `CandidateQuery`), at most `limit`.
    async fn candidates(&self, query: &CandidateQuery) -> Result<Vec<Candidate>, IndexError>;

    /// The search entries a version had when it was committed (`None`: no such version).
    async fn version_entries(
        &self,
        resource_type: &str,
        id: &str,
        version: u64,
    ) -> Result<Option<Vec<u8>>, IndexError>;

    /// Replaces the searchable part of the current version `version` (a reindex); `false`
    /// when that version is no longer current (a newer write indexed itself).
    async fn reindex(
        &self,
        resource_type: &str,
        id: &str,
        version: u64,
        searchable: Searchable,
    ) -> Result<bool, IndexError>;

    /// Current, not deleted, resources indexed with a registry other than `registry`, in
    /// (type, id) order after `after`, at most `limit`: what a reindex has left to do.
    async fn stale(
        &self,
        registry: u64,
        after: Option<(String, String)>,
        limit: usize,
    ) -> Result<Vec<VersionRecord>, IndexError>;

    /// Deletes every record whose `expires_at` is at or before `now` (ms); returns how many.
    /// Expired records already read as absent; this is what keeps them from piling up.
    async fn purge_expired(&self, now: i64) -> Result<usize, IndexError>;
}

/// One record of the authorization server's state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub kind: String,
    pub key: String,
    pub value: Vec<u8>,
    /// Milliseconds since the epoch after which the record no longer exists.
    pub expires_at: Option<i64>,
}

impl Record {
    pub fn live_at(&self, now: i64) -> bool {
        self.expires_at.is_none_or(|at| at > now)
    }
}
