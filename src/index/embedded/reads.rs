//! The embedded index's reads: synchronous lookups and scans over one redb read transaction
//! each (a consistent snapshot, never blocked by the writer). `EmbeddedIndex` runs every one of
//! them on the blocking pool: a scan can take milliseconds, and even a point lookup may wait
//! on the disk.

use redb::{Database, ReadableDatabase, ReadableTable};

use std::collections::BTreeSet;

use super::at_rest::{self, AtRestKey};
use super::{
    CIDS, CURRENT, CURRENT_KEYS, DATA_KEYS, ENTRIES, HISTORY, INDEXED_WITH, RECORDS, TYPE_HISTORY,
    VERSIONS, decode, decode_record, memory::MemoryIndex, unavailable,
};
use crate::index::{
    Candidate, CandidateQuery, HistoryCursor, HistoryQuery, HistoryScope, IndexError, Record,
    VersionRecord,
};

pub(super) fn version(
    db: &Database,
    resource_type: &str,
    id: &str,
    version: u64,
) -> Result<Option<VersionRecord>, IndexError> {
    let txn = db.begin_read().map_err(unavailable)?;
    let versions = txn.open_table(VERSIONS).map_err(unavailable)?;
    let row = versions
        .get((resource_type, id, version))
        .map_err(unavailable)?;
    row.map(|v| decode(v.value()).map(|s| s.record)).transpose()
}

pub(super) fn current(
    db: &Database,
    resource_type: &str,
    id: &str,
) -> Result<Option<VersionRecord>, IndexError> {
    let newest = {
        let txn = db.begin_read().map_err(unavailable)?;
        let current = txn.open_table(CURRENT).map_err(unavailable)?;
        current
            .get((resource_type, id))
            .map_err(unavailable)?
            .map(|v| v.value())
    };
    match newest {
        Some(newest) => version(db, resource_type, id, newest),
        None => Ok(None),
    }
}

pub(super) fn history(
    db: &Database,
    query: &HistoryQuery,
) -> Result<Vec<VersionRecord>, IndexError> {
    let txn = db.begin_read().map_err(unavailable)?;
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

pub(super) fn data_key(db: &Database, owner: &str) -> Result<Option<Vec<u8>>, IndexError> {
    let txn = db.begin_read().map_err(unavailable)?;
    let keys = txn.open_table(DATA_KEYS).map_err(unavailable)?;
    let key = keys.get(owner).map_err(unavailable)?;
    Ok(key.map(|k| k.value().to_vec()))
}

pub(super) fn references(db: &Database, cid: &str) -> Result<bool, IndexError> {
    let txn = db.begin_read().map_err(unavailable)?;
    let cids = txn.open_table(CIDS).map_err(unavailable)?;
    Ok(cids.get(cid).map_err(unavailable)?.is_some())
}

pub(super) fn health(db: &Database) -> Result<String, IndexError> {
    let txn = db.begin_read().map_err(unavailable)?;
    txn.open_table(CURRENT).map_err(unavailable)?;
    Ok("embedded redb".into())
}

pub(super) fn get_record(
    db: &Database,
    kind: &str,
    key: &str,
) -> Result<Option<Record>, IndexError> {
    let txn = db.begin_read().map_err(unavailable)?;
    let table = txn.open_table(RECORDS).map_err(unavailable)?;
    let now = crate::fhir::instant::now_millis();
    let found = table.get((kind, key)).map_err(unavailable)?;
    Ok(found
        .map(|v| decode_record(v.value()))
        .transpose()?
        .filter(|r| r.live_at(now)))
}

pub(super) fn list_records(db: &Database, kind: &str) -> Result<Vec<Record>, IndexError> {
    let txn = db.begin_read().map_err(unavailable)?;
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

pub(super) fn version_entries(
    db: &Database,
    at_rest: &AtRestKey,
    resource_type: &str,
    id: &str,
    version: u64,
) -> Result<Option<Vec<u8>>, IndexError> {
    let txn = db.begin_read().map_err(unavailable)?;
    let entries = txn.open_table(ENTRIES).map_err(unavailable)?;
    let row = entries
        .get((resource_type, id, version))
        .map_err(unavailable)?;
    row.map(|v| open_entries(at_rest, resource_type, id, version, v.value()))
        .transpose()
}

/// Candidates: ids from the key ranges (or every current resource of a type), then each one's
/// current row and entries, in (type, id) order, all from one read transaction.
/// The in-memory search index, from the durable keys of every current resource.
pub(super) fn load_search_index(
    db: &Database,
    at_rest: &AtRestKey,
) -> Result<MemoryIndex, IndexError> {
    let txn = db.begin_read().map_err(unavailable)?;
    let keys = txn.open_table(CURRENT_KEYS).map_err(unavailable)?;
    let mut index = MemoryIndex::default();
    for row in keys.iter().map_err(unavailable)? {
        let (key, value) = row.map_err(unavailable)?;
        let (rt, id) = key.value();
        let opened = at_rest
            .open(&at_rest::keys_aad(rt, id), value.value())
            .ok_or_else(|| not_opened(&format!("the search keys of {rt}/{id}")))?;
        let keys: Vec<String> = serde_json::from_slice(&opened)
            .map_err(|e| IndexError::Corrupt(format!("the keys of {rt}/{id}: {e}")))?;
        index.set(rt, id, 0, &keys);
    }
    Ok(index)
}

pub(super) fn candidates(
    db: &Database,
    search: &std::sync::RwLock<MemoryIndex>,
    at_rest: &AtRestKey,
    query: &CandidateQuery,
) -> Result<Vec<Candidate>, IndexError> {
    let txn = db.begin_read().map_err(unavailable)?;
    let current = txn.open_table(CURRENT).map_err(unavailable)?;
    let versions = txn.open_table(VERSIONS).map_err(unavailable)?;
    let entries = txn.open_table(ENTRIES).map_err(unavailable)?;
    let indexed = txn.open_table(INDEXED_WITH).map_err(unavailable)?;
    let mut types: Vec<&str> = query.resource_types.iter().map(String::as_str).collect();
    types.sort_unstable();
    types.dedup();
    let after = query.after.as_ref();
    let mut out = Vec::new();
    for rt in types {
        if after.is_some_and(|(after_type, _)| rt < after_type.as_str()) {
            continue;
        }
        let after_id = after.filter(|(t, _)| t == rt).map(|(_, id)| id.as_str());
        // The ids to look at, in order.
        let ids: Vec<(String, u64)> = match &query.key_ranges {
            Some(ranges) => {
                let ids: BTreeSet<String> = search
                    .read()
                    .map_err(|_| unavailable("the search index is poisoned"))?
                    .ids_in(rt, ranges)
                    .into_iter()
                    .filter(|id| after_id.is_none_or(|a| id.as_str() > a))
                    .collect();
                let mut out = Vec::with_capacity(ids.len());
                for id in ids {
                    if let Some(version) = current.get((rt, id.as_str())).map_err(unavailable)? {
                        out.push((id, version.value()));
                    }
                }
                out
            }
            None => {
                let start = (rt, after_id.unwrap_or(""));
                let rows = current
                    .range(start..(rt, "\u{10ffff}"))
                    .map_err(unavailable)?;
                let mut out = Vec::new();
                for row in rows {
                    let (key, version) = row.map_err(unavailable)?;
                    let id = key.value().1;
                    if after_id.is_some_and(|a| id <= a) {
                        continue;
                    }
                    // Not yet indexed (written before search existed): found once reindexed.
                    if indexed.get((rt, id)).map_err(unavailable)?.is_none() {
                        continue;
                    }
                    out.push((id.to_owned(), version.value()));
                }
                out
            }
        };
        for (id, version) in ids {
            let Some(row) = versions
                .get((rt, id.as_str(), version))
                .map_err(unavailable)?
            else {
                return Err(IndexError::Corrupt(format!(
                    "{rt}/{id}/{version} has no row"
                )));
            };
            let record = decode(row.value())?.record;
            if record.deleted() {
                continue;
            }
            if let Some(patient) = &query.patient
                && !record.patients.iter().any(|p| p == patient)
            {
                continue;
            }
            let found = match entries
                .get((rt, id.as_str(), version))
                .map_err(unavailable)?
            {
                Some(sealed) => open_entries(at_rest, rt, &id, version, sealed.value())?,
                None => Vec::new(),
            };
            out.push(Candidate {
                record,
                entries: found,
            });
            if out.len() >= query.limit {
                return Ok(out);
            }
        }
    }
    Ok(out)
}

fn open_entries(
    at_rest: &AtRestKey,
    rt: &str,
    id: &str,
    version: u64,
    sealed: &[u8],
) -> Result<Vec<u8>, IndexError> {
    at_rest
        .open(&at_rest::entries_aad(rt, id, version), sealed)
        .ok_or_else(|| not_opened(&format!("the search entries of {rt}/{id}/{version}")))
}

/// A sealed value that does not open: tampered with, or sealed under another master key.
fn not_opened(what: &str) -> IndexError {
    IndexError::Corrupt(format!(
        "{what} do not open: the master key is not the one this data directory was sealed \
         with (another INTELLIHEALTH_MASTER_KEY or key file?), or the index was altered"
    ))
}

/// Current resources whose keys were made by another registry.
pub(super) fn stale(
    db: &Database,
    registry: u64,
    after: Option<&(String, String)>,
    limit: usize,
) -> Result<Vec<VersionRecord>, IndexError> {
    let txn = db.begin_read().map_err(unavailable)?;
    let current = txn.open_table(CURRENT).map_err(unavailable)?;
    let versions = txn.open_table(VERSIONS).map_err(unavailable)?;
    let indexed = txn.open_table(INDEXED_WITH).map_err(unavailable)?;
    let rows = match after {
        Some((rt, id)) => current.range((rt.as_str(), id.as_str())..),
        None => current.range::<(&str, &str)>(..),
    }
    .map_err(unavailable)?;
    let mut out = Vec::new();
    for row in rows {
        let (key, version) = row.map_err(unavailable)?;
        let (rt, id) = key.value();
        if after.is_some_and(|(a_rt, a_id)| (rt, id) == (a_rt.as_str(), a_id.as_str())) {
            continue;
        }
        let made_with = indexed
            .get((rt, id))
            .map_err(unavailable)?
            .map(|v| v.value());
        if made_with == Some(registry) {
            continue;
        }
        let Some(row) = versions
            .get((rt, id, version.value()))
            .map_err(unavailable)?
        else {
            continue;
        };
        let record = decode(row.value())?.record;
        if record.deleted() {
            continue;
        }
        out.push(record);
        if out.len() >= limit {
            break;
        }
    }
    Ok(out)
}
