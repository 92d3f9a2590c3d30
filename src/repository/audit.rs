//! Where AuditEvents are stored: the repository is the audit log's sink. A round of events
//! becomes one batch blob of individually sealed entries (`vault::batch`) under the audit key
//! (never a patient's), then one index commit of a version row per event pointing at its entry.
//! So an AuditEvent is a resource like any other for reading and searching — read, vread,
//! `AuditEvent?patient=…`, in the patient's compartment, behind the same scopes and consent —
//! while a read costs no blob put or index transaction of its own.

use std::sync::Arc;

use async_trait::async_trait;

use super::Repository;
use crate::audit::trail::Records;
use crate::audit::{AUDIT_KEY_OWNER, AuditError, AuditLog, AuditSink};
use crate::fhir::instant::now_millis;
use crate::fhir::resource::ResourceType;
use crate::index::{Commit, Method, VersionRecord};
use crate::search::compartment::patient_compartment;
use crate::vault::aad_for;

impl Repository {
    /// Puts the audit trail in force (once).
    pub fn enable_audit(&self, log: AuditLog) {
        let _ = self.audit.set(log);
    }

    /// The audit trail in force, if any.
    pub fn audit(&self) -> Option<&AuditLog> {
        self.audit.get()
    }
}

impl From<AuditError> for super::RepoError {
    fn from(e: AuditError) -> Self {
        super::RepoError::Unavailable {
            component: "audit trail",
            detail: e.to_string(),
        }
    }
}

fn failed(what: &str, e: impl std::fmt::Display) -> AuditError {
    AuditError::Unavailable(format!("{what}: {e}"))
}

#[async_trait]
impl Records for Repository {
    async fn record(&self, kind: &str, key: &str) -> Result<Option<Vec<u8>>, AuditError> {
        self.index
            .get_record(kind, key)
            .await
            .map(|r| r.map(|r| r.value))
            .map_err(|e| failed("the index", e))
    }
}

#[async_trait]
impl AuditSink for Repository {
    async fn persist(
        &self,
        events: Vec<serde_json::Value>,
        records: Vec<crate::index::Record>,
    ) -> Result<(), AuditError> {
        let kind = ResourceType::AUDIT_EVENT;
        let registry = self.registry();
        let last_updated = events
            .first()
            .and_then(|e| e["meta"]["lastUpdated"].as_str())
            .and_then(crate::fhir::instant::period)
            .map(|(start, _)| start)
            .unwrap_or_else(now_millis);
        let mut envelopes = Vec::with_capacity(events.len());
        let mut rows = Vec::with_capacity(events.len());
        for event in events {
            let bytes = serde_json::to_vec(&event).map_err(|e| failed("encoding", e))?;
            // Already stamped as stored (the trail's leaf is of exactly these bytes).
            let resource = crate::fhir::json::parse(&bytes).map_err(|e| failed("encoding", e))?;
            let id = event["id"].as_str().unwrap_or_default().to_owned();
            let compartment = patient_compartment(kind.as_str(), &id, &resource);
            let content = Arc::new(resource.to_bytes());
            let searchable = super::searchable(
                registry.clone(),
                kind,
                &resource,
                content.len(),
                &compartment.patients,
            )
            .await;
            let sealed = self
                .vault
                .seal(AUDIT_KEY_OWNER, &aad_for(kind.as_str(), &id, 1), content)
                .await
                .map_err(|e| failed("sealing", e))?;
            envelopes.push(sealed.envelope);
            rows.push((id, sealed.digest, compartment.patients, searchable));
        }
        let cid = self
            .blobs
            .put(crate::vault::batch::frame(&envelopes))
            .await
            .map_err(|e| failed("the blob store", e))?;
        let commits = rows
            .into_iter()
            .enumerate()
            .map(|(position, (id, digest, patients, searchable))| Commit {
                record: VersionRecord {
                    resource_type: kind.as_str().to_owned(),
                    id,
                    version: 1,
                    last_updated,
                    superseded_at: None,
                    method: Method::Create,
                    cid: Some(cid.clone()),
                    digest: Some(digest),
                    key_owner: Some(AUDIT_KEY_OWNER.to_owned()),
                    patients,
                    batch_entry: Some(position as u32),
                },
                replaces: None,
                searchable,
            })
            .collect();
        self.index
            .commit_all(commits, records)
            .await
            .map_err(|e| failed("the index", e))
    }
}
