//! The IndexStore on MongoDB (the services profile), with the same behaviour as `embedded`.
//!
//! Collections (created with their indexes at start, idempotently):
//! - `versions`: one document per version, `_id` = `Type/id/version`; a unique index on
//!   (type, id, version) makes a duplicate version impossible even with concurrent writers;
//!   indexes on (last_updated, type, id, version) and (type, last_updated, id, version) serve
//!   system and type history, and one on `cid` the sweeper's question.
//! - `current`: one document per resource, `_id` = `Type/id`: the current version's record,
//!   its search `keys` (one multikey index on (type, keys) serves every search: the
//!   MongoDB-compatible server of the services profile uses an index for one equality, one
//!   `$in` or one range, never for `$elemMatch`, `$and` or `$or`; each find names that index,
//!   or (type, _id) for a search without a key, since that server's planner otherwise scans
//!   the collection), its entries (`search`, opaque bytes) and the registry fingerprint that
//!   made them. A commit is a compare-and-set on this document.
//! - `data_keys`: `_id` = owner, the wrapped data key.
//! - `unreferenced`: `_id` = CID, `first_seen`: the sweeper's sightings.
//! - `records`: `_id` = `kind|key`, the authorization server's small records.
//! - `sessions`: `_id` = an owner (a server replica), `lsids`: the sessions its transactions
//!   ran in, so its next start can abort what a crash left open (`sessions`).
//!
//! A commit is one multi-document transaction (majority write concern, journaled): the CAS on
//! `current`, the new version, and `superseded_at` on the previous one; either all of it is
//! visible or none. Any transaction conflict is reported as `IndexError::Conflict`, which the
//! repository retries exactly as it does a lost race on the embedded store.
//!
//! Must not know what the CIDs point at or how keys are wrapped.

use std::time::Duration;

use async_trait::async_trait;
use futures::TryStreamExt;
use mongodb::bson::{self, Bson, Document, doc};
use mongodb::error::{Error as MongoError, ErrorKind, WriteFailure};
use mongodb::options::{Acknowledgment, ClientOptions, IndexOptions, WriteConcern};
use mongodb::{Client, Collection, IndexModel};

mod commit;
mod documents;
mod sessions;

use documents::{
    CurrentDoc, KeyDoc, RecordDoc, VersionDoc, binary, live, record_id, resource_key, version_key,
};

use super::{
    Candidate, CandidateQuery, Commit, Erased, HistoryQuery, HistoryScope, IndexError, IndexStore,
    Record, Searchable, VersionRecord, as_equality,
};

const DEFAULT_DATABASE: &str = "intellihealth";
const DUPLICATE_KEY: i32 = 11000;
/// The multikey index on (type, keys) that serves every narrowed search.
const KEYS_INDEX: &str = "type_1_keys_1";
/// The index on (type, _id) that serves searches with no narrowing key.
const TYPE_SCAN_INDEX: &str = "type_1__id_1";

pub struct MongoIndex {
    client: Client,
    versions: Collection<VersionDoc>,
    current: Collection<CurrentDoc>,
    data_keys: Collection<KeyDoc>,
    unreferenced: Collection<Document>,
    records: Collection<RecordDoc>,
    /// The sessions transactions ran in, by owner (see `sessions`).
    sessions: Collection<Document>,
    session_book: sessions::SessionBook,
    /// Where the server is, for `/health` and logs (credentials removed).
    description: String,
}

fn unavailable(e: impl std::fmt::Display) -> IndexError {
    IndexError::Unavailable(format!("MongoDB: {e}"))
}

/// Errors that mean "someone else got there first" rather than "the database failed".
fn is_conflict(e: &MongoError) -> bool {
    match e.kind.as_ref() {
        // The driver labels these transient inside a transaction too, but they mean the
        // database is unreachable: a 503, never a 409.
        ErrorKind::Io(_)
        | ErrorKind::ServerSelection { .. }
        | ErrorKind::ConnectionPoolCleared { .. } => return false,
        _ => {}
    }
    if e.contains_label(mongodb::error::TRANSIENT_TRANSACTION_ERROR) {
        return true;
    }
    match e.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == DUPLICATE_KEY,
        ErrorKind::Command(c) => c.code == DUPLICATE_KEY || c.code == 112, // WriteConflict
        ErrorKind::InsertMany(m) => m
            .write_errors
            .as_ref()
            .is_some_and(|errors| errors.iter().any(|w| w.code == DUPLICATE_KEY)),
        _ => false,
    }
}

fn durable() -> WriteConcern {
    WriteConcern::builder()
        .w(Acknowledgment::Majority)
        .journal(true)
        .build()
}

/// One `find` on `current` of a candidate query, and the index it must use.
struct CandidateFind {
    filter: Document,
    index: &'static str,
}

/// The finds that together answer `query`: one index-backed key condition each (several
/// ranges are several finds, merged in `_id` order). The index is named, not left to the
/// planner: the services profile's server otherwise scans the collection when the filter
/// also tests fields outside the index.
fn candidate_finds(query: &CandidateQuery) -> Vec<CandidateFind> {
    let conditions: Vec<Option<Document>> = match &query.key_ranges {
        None => vec![None],
        Some(ranges) => {
            let equalities: Option<Vec<&str>> = ranges
                .iter()
                .map(|(from, to)| as_equality(from, to))
                .collect();
            match equalities {
                Some(keys) => vec![Some(doc! {"keys": {"$in": keys}})],
                None => ranges
                    .iter()
                    .map(|(from, to)| Some(doc! {"keys": {"$gte": from, "$lt": to}}))
                    .collect(),
            }
        }
    };
    conditions
        .into_iter()
        .map(|condition| {
            let mut filter = match query.resource_types.as_slice() {
                [one] => doc! {"type": one},
                many => doc! {"type": {"$in": many}},
            };
            let index = match condition {
                Some(condition) => {
                    filter.extend(condition);
                    KEYS_INDEX
                }
                None => TYPE_SCAN_INDEX,
            };
            if let Some(patient) = &query.patient {
                filter.insert("patients", patient);
            }
            if let Some((rt, id)) = &query.after {
                filter.insert("_id", doc! {"$gt": resource_key(rt, id)});
            }
            filter.insert("method", doc! {"$ne": "Delete"});
            // Not yet indexed (written before search existed): found once reindexed.
            filter.insert("registry", doc! {"$exists": true});
            CandidateFind { filter, index }
        })
        .collect()
}

impl MongoIndex {
    /// The server's query plans (`explain`, `queryPlanner` verbosity) for the finds that
    /// answer `query`: how a test proves the common searches are index-backed.
    pub async fn explain_candidates(
        &self,
        query: &CandidateQuery,
    ) -> Result<Vec<Document>, IndexError> {
        let database = self.current.namespace().db;
        let mut plans = Vec::new();
        for find in candidate_finds(query) {
            let command = doc! {
                "explain": {
                    "find": self.current.name(),
                    "filter": find.filter,
                    "sort": {"_id": 1},
                    "limit": query.limit as i64,
                    "hint": find.index,
                },
                "verbosity": "queryPlanner",
            };
            let plan = self
                .client
                .database(&database)
                .run_command(command)
                .await
                .map_err(unavailable)?;
            plans.push(plan);
        }
        Ok(plans)
    }
}

impl MongoIndex {
    /// Connects to `uri` (database from the URI, default `intellihealth`) and makes sure the
    /// collections and indexes exist. Fails if the server does not answer within `timeout`.
    pub async fn connect(uri: &str, timeout: Duration) -> Result<MongoIndex, IndexError> {
        let mut options = ClientOptions::parse(uri).await.map_err(unavailable)?;
        options.server_selection_timeout = Some(timeout);
        options.connect_timeout = Some(timeout);
        options.write_concern = Some(durable());
        options.app_name = Some("intellihealth".into());
        let description = options
            .hosts
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let database_name = options
            .default_database
            .clone()
            .unwrap_or_else(|| DEFAULT_DATABASE.to_owned());
        let client = Client::with_options(options).map_err(unavailable)?;
        let db = client.database(&database_name);
        let index = MongoIndex {
            versions: db.collection("versions"),
            current: db.collection("current"),
            data_keys: db.collection("data_keys"),
            unreferenced: db.collection("unreferenced"),
            records: db.collection("records"),
            sessions: db.collection("sessions"),
            session_book: Default::default(),
            client,
            description: format!("MongoDB at {description}, database {database_name}"),
        };
        index.create_indexes().await?;
        Ok(index)
    }

    async fn create_indexes(&self) -> Result<(), IndexError> {
        let unique = IndexOptions::builder().unique(true).build();
        let versions = [
            IndexModel::builder()
                .keys(doc! {"type": 1, "id": 1, "version": 1})
                .options(unique.clone())
                .build(),
            IndexModel::builder()
                .keys(doc! {"last_updated": 1, "type": 1, "id": 1, "version": 1})
                .build(),
            IndexModel::builder()
                .keys(doc! {"type": 1, "last_updated": 1, "id": 1, "version": 1})
                .build(),
            IndexModel::builder().keys(doc! {"cid": 1}).build(),
            // History narrowed to one patient's compartment (patient/ scopes).
            IndexModel::builder()
                .keys(doc! {"patients": 1, "last_updated": 1})
                .build(),
        ];
        self.versions
            .create_indexes(versions)
            .await
            .map_err(unavailable)?;
        let current = [
            IndexModel::builder()
                .keys(doc! {"type": 1, "keys": 1})
                .options(IndexOptions::builder().name(KEYS_INDEX.to_owned()).build())
                .build(),
            // Type scans (a search with no narrowing criterion) and reindexing.
            IndexModel::builder()
                .keys(doc! {"type": 1, "_id": 1})
                .options(
                    IndexOptions::builder()
                        .name(TYPE_SCAN_INDEX.to_owned())
                        .build(),
                )
                .build(),
        ];
        self.current
            .create_indexes(current)
            .await
            .map_err(unavailable)?;
        // Listing one kind of record (clients, signing keys), in key order.
        self.records
            .create_index(
                IndexModel::builder()
                    .keys(doc! {"kind": 1, "key": 1})
                    .build(),
            )
            .await
            .map_err(unavailable)?;
        // A TTL index where the server has them; the purge covers servers that do not.
        let ttl = IndexModel::builder()
            .keys(doc! {"expires": 1})
            .options(
                IndexOptions::builder()
                    .expire_after(Duration::from_secs(0))
                    .build(),
            )
            .build();
        if let Err(e) = self.records.create_index(ttl).await {
            tracing::debug!("no TTL index on records ({e}); expired records are purged instead");
        }
        Ok(())
    }

    async fn current_version(
        &self,
        resource_type: &str,
        id: &str,
    ) -> Result<Option<u64>, IndexError> {
        let found = self
            .current
            .find_one(doc! {"_id": resource_key(resource_type, id)})
            .await
            .map_err(unavailable)?;
        Ok(found.map(|c| c.version as u64))
    }
}

/// The marker error of a compare-and-set that found another version current.
#[derive(Debug)]
struct StaleReplaces;

impl std::fmt::Display for StaleReplaces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the current version is not the one replaced")
    }
}

impl std::error::Error for StaleReplaces {}

/// The history filter and sort for a query; shared by every scope.
fn history_filter(query: &HistoryQuery) -> (Document, Document) {
    let mut and: Vec<Document> = Vec::new();
    let sort = match &query.scope {
        HistoryScope::System => doc! {"last_updated": -1, "type": -1, "id": -1, "version": -1},
        HistoryScope::Type(rt) => {
            and.push(doc! {"type": rt});
            doc! {"type": -1, "last_updated": -1, "id": -1, "version": -1}
        }
        HistoryScope::Instance { resource_type, id } => {
            and.push(doc! {"type": resource_type, "id": id});
            doc! {"version": -1}
        }
    };
    if let Some(since) = query.since {
        and.push(doc! {"last_updated": {"$gte": since}});
    }
    if let Some(patient) = &query.patient {
        and.push(doc! {"patients": patient});
    }
    if let Some((start, end)) = query.at {
        and.push(doc! {"last_updated": {"$lte": end}});
        and.push(doc! {"$or": [{"superseded_at": Bson::Null}, {"superseded_at": {"$gt": start}}]});
    }
    if let Some(c) = &query.after {
        let version = c.version as i64;
        match &query.scope {
            HistoryScope::Instance { .. } => and.push(doc! {"version": {"$lt": version}}),
            _ => and.push(doc! {"$or": [
                {"last_updated": {"$lt": c.last_updated}},
                {"last_updated": c.last_updated, "type": {"$lt": &c.resource_type}},
                {"last_updated": c.last_updated, "type": &c.resource_type, "id": {"$lt": &c.id}},
                {"last_updated": c.last_updated, "type": &c.resource_type, "id": &c.id, "version": {"$lt": version}},
            ]}),
        }
    }
    let filter = if and.is_empty() {
        Document::new()
    } else {
        doc! {"$and": and}
    };
    (filter, sort)
}

/// How many times a transaction (or its commit) is tried when the server says it may be retried.
const TRANSACTION_ATTEMPTS: usize = 3;

#[async_trait]
impl IndexStore for MongoIndex {
    async fn commit(&self, commit: Commit) -> Result<(), IndexError> {
        self.commit_all(vec![commit], Vec::new()).await
    }

    async fn commit_all(
        &self,
        commits: Vec<Commit>,
        records: Vec<Record>,
    ) -> Result<(), IndexError> {
        if commits.is_empty() && records.is_empty() {
            return Ok(());
        }
        // A transaction the server aborted as transient (a dropped connection, an election)
        // wrote nothing, and is run again whole, as MongoDB's drivers' `withTransaction` does.
        let mut attempts = 1;
        let outcome = loop {
            match self.commit_all_in_transaction(&commits, &records).await {
                Err(e)
                    if e.contains_label(mongodb::error::TRANSIENT_TRANSACTION_ERROR)
                        && attempts < TRANSACTION_ATTEMPTS =>
                {
                    attempts += 1;
                }
                other => break other,
            }
        };
        match outcome {
            Ok(()) => Ok(()),
            Err(e) if is_conflict(&e) || e.get_custom::<StaleReplaces>().is_some() => {
                // The current version of the one resource a single commit names; of a batch,
                // the first's (the caller learns only that the batch lost).
                let current = match commits.first() {
                    Some(first) => {
                        let first = &first.record;
                        self.current_version(&first.resource_type, &first.id)
                            .await?
                    }
                    None => None,
                };
                Err(IndexError::Conflict { current })
            }
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn current(
        &self,
        resource_type: &str,
        id: &str,
    ) -> Result<Option<VersionRecord>, IndexError> {
        // One round trip, a lookup by _id: the `current` document carries the current
        // version's whole record. (One written before search existed carries only the version
        // number; its record is then read from `versions`.)
        let found = self
            .current
            .find_one(doc! {"_id": resource_key(resource_type, id)})
            .await
            .map_err(unavailable)?;
        match found {
            None => Ok(None),
            Some(doc) if doc.registry.is_some() => Ok(Some(doc.into_candidate().record)),
            Some(doc) => self.version(resource_type, id, doc.version as u64).await,
        }
    }

    async fn version(
        &self,
        resource_type: &str,
        id: &str,
        version: u64,
    ) -> Result<Option<VersionRecord>, IndexError> {
        let found = self
            .versions
            .find_one(doc! {"_id": version_key(resource_type, id, version)})
            .await
            .map_err(unavailable)?;
        Ok(found.map(VersionDoc::into_record))
    }

    async fn history(&self, query: &HistoryQuery) -> Result<Vec<VersionRecord>, IndexError> {
        let (filter, sort) = history_filter(query);
        let cursor = self
            .versions
            .find(filter)
            .sort(sort)
            .limit(query.limit as i64)
            .await
            .map_err(unavailable)?;
        let docs: Vec<VersionDoc> = cursor.try_collect().await.map_err(unavailable)?;
        Ok(docs.into_iter().map(VersionDoc::into_record).collect())
    }

    async fn data_key(&self, owner: &str) -> Result<Option<Vec<u8>>, IndexError> {
        let found = self
            .data_keys
            .find_one(doc! {"_id": owner})
            .await
            .map_err(unavailable)?;
        Ok(found.map(|k| k.wrapped.bytes))
    }

    async fn insert_data_key(&self, owner: &str, wrapped: Vec<u8>) -> Result<Vec<u8>, IndexError> {
        let key = KeyDoc {
            owner: owner.to_owned(),
            wrapped: bson::Binary {
                subtype: bson::spec::BinarySubtype::Generic,
                bytes: wrapped.clone(),
            },
        };
        match self.data_keys.insert_one(key).await {
            Ok(_) => Ok(wrapped),
            Err(e) if is_conflict(&e) => self
                .data_key(owner)
                .await?
                .ok_or_else(|| IndexError::Corrupt(format!("the data key of {owner} vanished"))),
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn erase_patient(&self, patient: &str, now: i64) -> Result<Erased, IndexError> {
        // Not one transaction (a record may have thousands of versions): steps in an order that
        // a crash between any two leaves safe, and a second call completes. The key first, so
        // nothing is opened or sealed under it from then on.
        let owner = super::patient_owner(patient);
        let destroyed = KeyDoc {
            owner: owner.clone(),
            wrapped: binary(&[]),
        };
        self.data_keys
            .replace_one(doc! {"_id": &owner}, destroyed)
            .upsert(true)
            .await
            .map_err(unavailable)?;
        // The (patients, last_updated) index finds the record's versions: the owner of a data
        // key is always among the patients of what it seals.
        let sealed_under = doc! {"patients": patient, "key_owner": &owner};
        let versions: Vec<VersionRecord> = self
            .versions
            .find(sealed_under.clone())
            .await
            .map_err(unavailable)?
            .try_collect::<Vec<VersionDoc>>()
            .await
            .map_err(unavailable)?
            .into_iter()
            .map(VersionDoc::into_record)
            .collect();
        let mut erased = Erased::default();
        let mut ends = Vec::new();
        for record in versions.iter().filter(|r| r.superseded_at.is_none()) {
            let current = self.current(&record.resource_type, &record.id).await?;
            if current.as_ref().map(|c| c.version) == Some(record.version) {
                ends.push(VersionRecord::erasure_of(record, now));
                erased
                    .resources
                    .push((record.resource_type.clone(), record.id.clone()));
            }
        }
        // The erasure versions, then the rows they end (a delete's superseded_at is set on
        // the row it replaces, which must still be there).
        for chunk in ends.chunks(500) {
            self.commit_all(chunk.to_vec(), Vec::new()).await?;
        }
        self.versions
            .delete_many(sealed_under)
            .await
            .map_err(unavailable)?;
        erased.versions = versions.len();
        erased.cids = versions.into_iter().filter_map(|r| r.cid).collect();
        Ok(erased)
    }

    async fn recover_abandoned(&self, owner: &str) -> Result<usize, IndexError> {
        self.recover_sessions(owner).await
    }

    async fn references(&self, cid: &str) -> Result<bool, IndexError> {
        let found = self
            .versions
            .clone_with_type::<Document>()
            .find_one(doc! {"cid": cid})
            .projection(doc! {"_id": 1})
            .await
            .map_err(unavailable)?;
        Ok(found.is_some())
    }

    async fn note_unreferenced(&self, cid: &str, now: i64) -> Result<i64, IndexError> {
        // Upsert keeps the first sighting: `$setOnInsert` never overwrites it.
        self.unreferenced
            .update_one(
                doc! {"_id": cid},
                doc! {"$setOnInsert": {"first_seen": now}},
            )
            .upsert(true)
            .await
            .map_err(unavailable)?;
        let found = self
            .unreferenced
            .find_one(doc! {"_id": cid})
            .await
            .map_err(unavailable)?;
        Ok(found
            .and_then(|d| d.get_i64("first_seen").ok())
            .unwrap_or(now))
    }

    async fn forget_unreferenced(&self, cid: &str) -> Result<(), IndexError> {
        self.unreferenced
            .delete_one(doc! {"_id": cid})
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn put_record(&self, record: Record) -> Result<(), IndexError> {
        let doc = RecordDoc::from_record(record);
        self.records
            .replace_one(doc! {"_id": &doc.id}, &doc)
            .upsert(true)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn insert_record(&self, record: Record) -> Result<bool, IndexError> {
        let doc = RecordDoc::from_record(record);
        match self.records.insert_one(&doc).await {
            Ok(_) => Ok(true),
            Err(e) if is_conflict(&e) => {
                // Taken, unless the holder has expired: then take its place, but only if it is
                // still that same expired holder (another writer may be doing the same).
                let holder = self
                    .records
                    .find_one(doc! {"_id": &doc.id})
                    .await
                    .map_err(unavailable)?;
                let now = crate::fhir::instant::now_millis();
                match holder {
                    Some(h) if h.expires_at.is_some_and(|at| at <= now) => {
                        let replaced = self
                            .records
                            .replace_one(doc! {"_id": &doc.id, "expires_at": h.expires_at}, &doc)
                            .await
                            .map_err(unavailable)?;
                        Ok(replaced.modified_count == 1)
                    }
                    _ => Ok(false),
                }
            }
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn get_record(&self, kind: &str, key: &str) -> Result<Option<Record>, IndexError> {
        let found = self
            .records
            .find_one(doc! {"_id": record_id(kind, key)})
            .await
            .map_err(unavailable)?;
        Ok(live(found))
    }

    async fn take_record(&self, kind: &str, key: &str) -> Result<Option<Record>, IndexError> {
        let taken = self
            .records
            .find_one_and_delete(doc! {"_id": record_id(kind, key)})
            .await
            .map_err(unavailable)?;
        Ok(live(taken))
    }

    async fn list_records(&self, kind: &str) -> Result<Vec<Record>, IndexError> {
        let cursor = self
            .records
            .find(doc! {"kind": kind})
            .sort(doc! {"key": 1})
            .await
            .map_err(unavailable)?;
        let docs: Vec<RecordDoc> = cursor.try_collect().await.map_err(unavailable)?;
        Ok(docs.into_iter().filter_map(|d| live(Some(d))).collect())
    }

    async fn candidates(&self, query: &CandidateQuery) -> Result<Vec<Candidate>, IndexError> {
        let mut merged: std::collections::BTreeMap<String, CurrentDoc> = Default::default();
        for find in candidate_finds(query) {
            let cursor = self
                .current
                .find(find.filter)
                .hint(mongodb::options::Hint::Name(find.index.to_owned()))
                .sort(doc! {"_id": 1})
                .limit(query.limit as i64)
                .await
                .map_err(unavailable)?;
            let docs: Vec<CurrentDoc> = cursor.try_collect().await.map_err(unavailable)?;
            for doc in docs {
                merged.insert(doc.key.clone(), doc);
            }
        }
        Ok(merged
            .into_values()
            .take(query.limit)
            .map(CurrentDoc::into_candidate)
            .collect())
    }

    async fn version_entries(
        &self,
        resource_type: &str,
        id: &str,
        version: u64,
    ) -> Result<Option<Vec<u8>>, IndexError> {
        let found = self
            .versions
            .find_one(doc! {"_id": version_key(resource_type, id, version)})
            .await
            .map_err(unavailable)?;
        Ok(found.map(|v| v.search.map(|b| b.bytes).unwrap_or_default()))
    }

    async fn reindex(
        &self,
        resource_type: &str,
        id: &str,
        version: u64,
        searchable: Searchable,
    ) -> Result<bool, IndexError> {
        let search = binary(&searchable.entries);
        let updated = self
            .current
            .update_one(
                doc! {"_id": resource_key(resource_type, id), "version": version as i64},
                doc! {"$set": {
                    "keys": &searchable.keys,
                    "search": search.clone(),
                    "registry": searchable.registry as i64,
                }},
            )
            .await
            .map_err(unavailable)?;
        if updated.matched_count == 0 {
            return Ok(false);
        }
        self.versions
            .update_one(
                doc! {"_id": version_key(resource_type, id, version)},
                doc! {"$set": {"search": search}},
            )
            .await
            .map_err(unavailable)?;
        Ok(true)
    }

    async fn stale(
        &self,
        registry: u64,
        after: Option<(String, String)>,
        limit: usize,
    ) -> Result<Vec<VersionRecord>, IndexError> {
        let mut filter = doc! {
            "registry": {"$ne": registry as i64},
            "method": {"$ne": "Delete"},
        };
        if let Some((rt, id)) = &after {
            filter.insert("_id", doc! {"$gt": resource_key(rt, id)});
        }
        let cursor = self
            .current
            .find(filter)
            .sort(doc! {"_id": 1})
            .limit(limit as i64)
            .await
            .map_err(unavailable)?;
        let docs: Vec<CurrentDoc> = cursor.try_collect().await.map_err(unavailable)?;
        let mut out = Vec::with_capacity(docs.len());
        for doc in docs {
            // Written before search existed: the record is in `versions` only.
            if doc.cid.is_none() {
                if let Some(record) = self
                    .version(&doc.resource_type, &doc.id, doc.version as u64)
                    .await?
                {
                    out.push(record);
                }
            } else {
                out.push(doc.into_candidate().record);
            }
        }
        Ok(out)
    }

    async fn purge_expired(&self, now: i64) -> Result<usize, IndexError> {
        let deleted = self
            .records
            .delete_many(doc! {"expires_at": {"$ne": Bson::Null, "$lte": now}})
            .await
            .map_err(unavailable)?;
        Ok(deleted.deleted_count as usize)
    }

    async fn health(&self) -> Result<String, IndexError> {
        self.client
            .database("admin")
            .run_command(doc! {"ping": 1})
            .await
            .map_err(unavailable)?;
        Ok(self.description.clone())
    }
}
