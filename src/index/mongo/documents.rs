//! The documents of the MongoDB collections (see the parent module for the collections and
//! their indexes): how a commit, a version and a record are laid out, and read back.

use mongodb::bson;
use serde::{Deserialize, Serialize};

use crate::index::{Candidate, Commit, Method, Record, VersionRecord};

/// 9999-12-31T23:59:59.999Z.
const LAST_STORABLE_MS: i64 = 253_402_300_799_999;

/// A `versions` document: the record, flattened, plus the entries it had when current.
#[derive(Serialize, Deserialize)]
pub(super) struct VersionDoc {
    #[serde(rename = "_id")]
    pub(super) key: String,
    #[serde(rename = "type")]
    pub(super) resource_type: String,
    pub(super) id: String,
    pub(super) version: i64,
    pub(super) last_updated: i64,
    pub(super) superseded_at: Option<i64>,
    pub(super) method: Method,
    pub(super) cid: Option<String>,
    pub(super) digest: Option<String>,
    pub(super) key_owner: Option<String>,
    pub(super) patients: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) batch_entry: Option<u32>,
    /// The version's search entries (absent in versions written before search existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) search: Option<bson::Binary>,
}

/// A `current` document: the current version's record, flattened, with what finds it.
#[derive(Serialize, Deserialize)]
pub(super) struct CurrentDoc {
    #[serde(rename = "_id")]
    pub(super) key: String,
    #[serde(rename = "type")]
    pub(super) resource_type: String,
    pub(super) id: String,
    pub(super) version: i64,
    #[serde(default)]
    pub(super) last_updated: i64,
    #[serde(default = "method_update")]
    pub(super) method: Method,
    #[serde(default)]
    pub(super) cid: Option<String>,
    #[serde(default)]
    pub(super) digest: Option<String>,
    #[serde(default)]
    pub(super) key_owner: Option<String>,
    #[serde(default)]
    pub(super) patients: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) batch_entry: Option<u32>,
    #[serde(default)]
    pub(super) keys: Vec<String>,
    #[serde(default)]
    pub(super) search: Option<bson::Binary>,
    /// The registry fingerprint (as i64: BSON has no u64) that made `keys`; absent before
    /// search existed, so such documents read as stale.
    #[serde(default)]
    pub(super) registry: Option<i64>,
}

pub(super) fn method_update() -> Method {
    Method::Update
}

pub(super) fn binary(bytes: &[u8]) -> bson::Binary {
    bson::Binary {
        subtype: bson::spec::BinarySubtype::Generic,
        bytes: bytes.to_vec(),
    }
}

impl CurrentDoc {
    pub(super) fn from_commit(commit: &Commit) -> CurrentDoc {
        let r = &commit.record;
        CurrentDoc {
            key: resource_key(&r.resource_type, &r.id),
            resource_type: r.resource_type.clone(),
            id: r.id.clone(),
            version: r.version as i64,
            last_updated: r.last_updated,
            method: r.method,
            cid: r.cid.clone(),
            digest: r.digest.clone(),
            key_owner: r.key_owner.clone(),
            patients: r.patients.clone(),
            batch_entry: r.batch_entry,
            keys: commit.searchable.keys.clone(),
            search: Some(binary(&commit.searchable.entries)),
            registry: Some(commit.searchable.registry as i64),
        }
    }

    pub(super) fn into_candidate(self) -> Candidate {
        Candidate {
            entries: self.search.map(|b| b.bytes).unwrap_or_default(),
            record: VersionRecord {
                resource_type: self.resource_type,
                id: self.id,
                version: self.version as u64,
                last_updated: self.last_updated,
                superseded_at: None,
                method: self.method,
                cid: self.cid,
                digest: self.digest,
                key_owner: self.key_owner,
                patients: self.patients,
                batch_entry: self.batch_entry,
            },
        }
    }
}

#[derive(Serialize, Deserialize)]
pub(super) struct RecordDoc {
    #[serde(rename = "_id")]
    pub(super) id: String,
    pub(super) kind: String,
    pub(super) key: String,
    pub(super) value: bson::Binary,
    pub(super) expires_at: Option<i64>,
    /// `expires_at` as a BSON date, for MongoDB's TTL index (which reads only dates): real
    /// MongoDB deletes expired records itself; the purge deletes them on servers without TTL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) expires: Option<bson::DateTime>,
}

impl RecordDoc {
    pub(super) fn from_record(record: Record) -> RecordDoc {
        RecordDoc {
            id: record_id(&record.kind, &record.key),
            kind: record.kind,
            key: record.key,
            value: bson::Binary {
                subtype: bson::spec::BinarySubtype::Generic,
                bytes: record.value,
            },
            expires_at: record.expires_at,
            // Clamped to the last millisecond of year 9999: a later date is a "never" that
            // not every server can store as a BSON date.
            expires: record
                .expires_at
                .map(|at| bson::DateTime::from_millis(at.min(LAST_STORABLE_MS))),
        }
    }

    pub(super) fn into_record(self) -> Record {
        Record {
            kind: self.kind,
            key: self.key,
            value: self.value.bytes,
            expires_at: self.expires_at,
        }
    }
}

/// Kinds are the server's own constants and never contain `|`.
pub(super) fn record_id(kind: &str, key: &str) -> String {
    format!("{kind}|{key}")
}

pub(super) fn live(doc: Option<RecordDoc>) -> Option<Record> {
    let now = crate::fhir::instant::now_millis();
    doc.map(RecordDoc::into_record).filter(|r| r.live_at(now))
}

#[derive(Serialize, Deserialize)]
pub(super) struct KeyDoc {
    #[serde(rename = "_id")]
    pub(super) owner: String,
    pub(super) wrapped: bson::Binary,
}

impl VersionDoc {
    pub(super) fn from_commit(commit: &Commit) -> VersionDoc {
        let r = &commit.record;
        VersionDoc {
            key: version_key(&r.resource_type, &r.id, r.version),
            resource_type: r.resource_type.clone(),
            id: r.id.clone(),
            version: r.version as i64,
            last_updated: r.last_updated,
            superseded_at: r.superseded_at,
            method: r.method,
            cid: r.cid.clone(),
            digest: r.digest.clone(),
            key_owner: r.key_owner.clone(),
            patients: r.patients.clone(),
            batch_entry: r.batch_entry,
            search: Some(binary(&commit.searchable.entries)),
        }
    }

    pub(super) fn into_record(self) -> VersionRecord {
        VersionRecord {
            resource_type: self.resource_type,
            id: self.id,
            version: self.version as u64,
            last_updated: self.last_updated,
            superseded_at: self.superseded_at,
            method: self.method,
            cid: self.cid,
            digest: self.digest,
            key_owner: self.key_owner,
            patients: self.patients,
            batch_entry: self.batch_entry,
        }
    }
}

pub(super) fn version_key(resource_type: &str, id: &str, version: u64) -> String {
    format!("{resource_type}/{id}/{version}")
}

pub(super) fn resource_key(resource_type: &str, id: &str) -> String {
    format!("{resource_type}/{id}")
}
