//! Where AuditEvents are stored: the repository is the audit log's sink. A round of events
//! becomes one batch blob of individually sealed entries (`vault::batch`) under the audit key
//! (never a patient's), then one index commit of a version row per event pointing at its entry.
//! So an AuditEvent is a resource like any other for reading and searching — read, vread,
//! `AuditEvent?patient=…`, in the patient's compartment, behind the same scopes and consent —
//! while a read costs no blob put or index transaction of its own.

use std::sync::Arc;

use async_trait::async_trait;

use super::Repository;
use crate::audit::trail::{Finished, Records, place_of};
use crate::audit::{AUDIT_KEY_OWNER, AuditError, AuditLog, AuditSink};
use crate::fhir::resource::ResourceType;
use crate::index::{Commit, Method, VersionRecord};
use crate::ledger::anchor::{AnchorError, Anchoring, Inclusion};
use crate::search::keys::keys_of;
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

    /// Puts anchoring of the audit trail in force (once).
    pub fn enable_anchoring(&self, anchoring: Arc<Anchoring>) {
        let _ = self.anchoring.set(anchoring);
    }

    pub fn anchoring(&self) -> Option<&Arc<Anchoring>> {
        self.anchoring.get()
    }

    /// A JSON-RPC request to the ledger, read-only (`ledger::proxy`): `eth_call` reaches only
    /// the ConsentRegistry and, with the audit trail anchored, the AuditAnchor. `None` when
    /// there is nothing to answer; without a ledger, the JSON-RPC error a node gives when down.
    pub async fn ledger_rpc(&self, body: &[u8]) -> Option<serde_json::Value> {
        let Some(consent) = self.consent() else {
            return Some(serde_json::json!({"jsonrpc": "2.0", "id": null, "error": {
                "code": -32000, "message": "no ledger in this process"}}));
        };
        let mut contracts = vec![consent.registry()];
        if let Some(anchoring) = self.anchoring() {
            contracts.push(anchoring.contract());
        }
        let callable = crate::ledger::proxy::Callable {
            ledger: consent.ledger(),
            contracts: &contracts,
        };
        crate::ledger::proxy::answer(&callable, body).await
    }

    /// `GET AuditEvent/{id}/$verify`: the AuditEvent (read as `principal` may read it) and
    /// where it is anchored, with its inclusion proof.
    pub async fn verify_audit_event(
        &self,
        principal: &crate::auth::Principal,
        id: &str,
    ) -> Result<(serde_json::Value, Inclusion), super::RepoError> {
        let version = self
            .vread(principal, ResourceType::AUDIT_EVENT, id, 1)
            .await?;
        let content = version.content.unwrap_or_default();
        let stored = crate::fhir::json::parse(&content)
            .map_err(|e| super::RepoError::Integrity(format!("AuditEvent/{id}: {e}")))?;
        let event: serde_json::Value = serde_json::from_slice(&content)
            .map_err(|e| super::RepoError::Integrity(format!("AuditEvent/{id}: {e}")))?;
        let (replica, seq, round) = place_of(&event).ok_or_else(|| {
            super::RepoError::Integrity(format!("AuditEvent/{id} has no place in a trail"))
        })?;
        let anchoring = self
            .anchoring
            .get()
            .ok_or_else(|| super::RepoError::Unavailable {
                component: "ledger",
                detail: "the audit trail is not anchored on this server (--audit off)".into(),
            })?;
        let leaf = crate::ledger::merkle::leaf(&stored);
        let inclusion = anchoring.inclusion(&replica, seq, round, leaf).await?;
        Ok((event, inclusion))
    }
}

impl From<AnchorError> for super::RepoError {
    fn from(e: AnchorError) -> Self {
        match e {
            AnchorError::Corrupt(detail) => super::RepoError::Integrity(detail),
            AnchorError::Index(index) => super::RepoError::from(index),
            AnchorError::Ledger(ledger) => super::RepoError::Unavailable {
                component: "ledger",
                detail: ledger.to_string(),
            },
        }
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

/// An AuditEvent made ready for its round's batch: sealed, with what its index row needs.
struct SealedEvent {
    id: String,
    recorded: i64,
    envelope: Vec<u8>,
    digest: String,
    patients: Vec<String>,
    searchable: crate::index::Searchable,
}

/// Events per piece of a round's storing work on the blocking pool: big enough that handing
/// it over costs little, small enough that a round is spread over every core.
const SEAL_CHUNK: usize = 64;

fn seal_events(
    registry: &crate::search::params::Registry,
    sealer: &crate::vault::Sealer,
    events: Vec<Finished>,
) -> Result<Vec<SealedEvent>, AuditError> {
    let kind = ResourceType::AUDIT_EVENT;
    // The event's own entries are the official parameters' (a test holds them to it); a
    // custom parameter on AuditEvent needs them extracted like any resource's.
    let customised = registry.customised(kind.as_str());
    events
        .into_iter()
        .map(|event| {
            let searchable = if customised {
                let parsed = crate::fhir::json::parse(&event.bytes)
                    .map_err(|e| failed("an AuditEvent", e))?;
                super::searchable_now(registry, kind, &parsed, &event.patients)
            } else {
                crate::index::Searchable {
                    keys: keys_of(&event.entries, &event.patients),
                    entries: crate::search::codec::encode(&event.entries),
                    registry: registry.fingerprint(),
                }
            };
            // The trail's leaf is of exactly these bytes.
            let sealed = sealer
                .seal(&aad_for(kind.as_str(), &event.id, 1), &event.bytes)
                .map_err(|e| failed("sealing", e))?;
            Ok(SealedEvent {
                id: event.id,
                recorded: event.recorded,
                envelope: sealed.envelope,
                digest: sealed.digest,
                patients: event.patients,
                searchable,
            })
        })
        .collect()
}

#[async_trait]
impl AuditSink for Repository {
    async fn store(&self, events: Vec<Finished>) -> Result<Vec<Commit>, AuditError> {
        let kind = ResourceType::AUDIT_EVENT;
        let sealer = self
            .vault
            .sealer(AUDIT_KEY_OWNER)
            .await
            .map_err(|e| failed("sealing", e))?;
        let registry = self.registry();
        let mut pieces = Vec::new();
        let mut events = events.into_iter();
        loop {
            let chunk: Vec<Finished> = events.by_ref().take(SEAL_CHUNK).collect();
            if chunk.is_empty() {
                break;
            }
            let (registry, sealer) = (registry.clone(), sealer.clone());
            pieces.push(tokio::task::spawn_blocking(move || {
                seal_events(&registry, &sealer, chunk)
            }));
        }
        let mut sealed = Vec::new();
        for piece in pieces {
            let piece = piece.await.map_err(|e| failed("sealing", e))??;
            sealed.extend(piece);
        }
        let envelopes: Vec<&[u8]> = sealed.iter().map(|e| e.envelope.as_slice()).collect();
        let cid = self
            .blobs
            .put(crate::vault::batch::frame(&envelopes))
            .await
            .map_err(|e| failed("the blob store", e))?;
        Ok(sealed
            .into_iter()
            .enumerate()
            .map(|(position, event)| Commit {
                record: VersionRecord {
                    resource_type: kind.as_str().to_owned(),
                    id: event.id,
                    version: 1,
                    last_updated: event.recorded,
                    superseded_at: None,
                    method: Method::Create,
                    cid: Some(cid.clone()),
                    digest: Some(event.digest),
                    key_owner: Some(AUDIT_KEY_OWNER.to_owned()),
                    patients: event.patients,
                    batch_entry: Some(position as u32),
                },
                replaces: None,
                searchable: event.searchable,
            })
            .collect())
    }

    async fn commit(
        &self,
        commits: Vec<Commit>,
        records: Vec<crate::index::Record>,
    ) -> Result<(), AuditError> {
        self.index
            .commit_all(commits, records)
            .await
            .map_err(|e| failed("the index", e))
    }
}
