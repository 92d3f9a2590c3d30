//! The way of a request below HTTP: each FHIR interaction as one function that composes the
//! domain rooms (fhir, search, vault) with the seams (BlobStore, IndexStore).
//!
//! Write: parse → check against the URL → stamp id/meta → validate → compartment → seal → blob
//! put → index commit (the commit point). Read: index locate → blob get (CID verified) → open
//! (AEAD + digest verified). Every call to a backend is bounded by the configured timeout (the
//! seams arrive wrapped by `index::bounded` and `vault::bounded`), so a dead dependency becomes
//! a 503 naming it, never a hang.
//!
//! Optimistic concurrency: a write reads the current version, seals the next one, and commits
//! only if the current version is still the one it read. A lost race without `If-Match` is
//! retried (the client asked for "the next version", whatever it is); with `If-Match` it is a
//! 409, since the client asked for a specific base.
//!
//! Must not know HTTP: status codes are decided in `http::outcome` from `RepoError`.

pub mod access;
mod audit;
mod authorize;
pub mod conditional;
pub mod consent;
pub mod erase;
mod error;
pub mod export;
pub mod import;
mod read;
pub mod reindex;
pub mod search;
pub mod sweep;
pub mod transaction;
mod write;

use std::sync::Arc;

pub use error::RepoError;

use crate::auth::AuthError;
use crate::fhir::instant::now_millis;
use crate::fhir::json::Json;
use crate::fhir::resource::{self, ResourceType};
use crate::fhir::validate::{self, Handling};
use crate::fhir::{FhirError, Issue};
use crate::index::{IndexStore, Searchable, VersionRecord};
use crate::search::entries::extract;
use crate::search::keys::keys_of;
use crate::search::params::Registry;
use crate::vault::blob::{BlobError, BlobStore};
use crate::vault::{Vault, VaultError, aad_for};

pub struct Repository {
    index: Arc<dyn IndexStore>,
    blobs: Arc<dyn BlobStore>,
    vault: Arc<Vault>,
    /// The search parameters in force (official, plus custom ones); swapped whole when a
    /// custom parameter is added.
    registry: std::sync::RwLock<Arc<Registry>>,
    /// Custom SearchParameters from files, part of every rebuild of the registry.
    parameter_files: std::sync::RwLock<Vec<crate::search::params::RawParam>>,
    /// The active SearchParameters stored on this server, as last read or written here.
    stored_parameters: std::sync::Mutex<reindex::StoredParameters>,
    /// One registry rebuild at a time, so the last one built is from the newest parameters.
    rebuilding: tokio::sync::Mutex<u64>,
    /// The reindex under way, or the last one, and whether it still runs.
    reindexing: std::sync::Mutex<(reindex::ReindexProgress, bool)>,
    /// How long one search (every store call it makes, includes and counts) may take.
    search_time_limit: std::time::Duration,
    /// The patients' consent, checked after the scopes. Set once at start by `app::build`;
    /// unset only for the CLI's offline commands, which act as the server itself.
    consent: std::sync::OnceLock<Arc<crate::consent::Consent>>,
    /// The audit trail every interaction is recorded in. Set once at start by `app::build`;
    /// unset for the CLI's offline commands.
    audit: std::sync::OnceLock<crate::audit::AuditLog>,
    /// Where the audit trail is anchored on chain (set with the audit trail).
    anchoring: std::sync::OnceLock<Arc<crate::ledger::anchor::Anchoring>>,
}

/// The default bound on one search's time: past it the client is told to narrow the search.
pub const SEARCH_TIME_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// One resource version with its content (none for a delete).
#[derive(Debug)]
pub struct ResourceVersion {
    pub record: VersionRecord,
    /// The stored JSON: exactly what was sealed, compact.
    pub content: Option<Vec<u8>>,
}

/// The result of a create or update.
#[derive(Debug)]
pub struct Written {
    pub version: ResourceVersion,
    /// Whether the write created the resource (201) rather than replacing it (200).
    pub created: bool,
    /// Warnings from lenient validation, for `Prefer: return=OperationOutcome`.
    pub warnings: Vec<Issue>,
}

/// What the client asked a write to find (`If-Match`, `If-None-Match`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precondition {
    None,
    /// `If-Match: W/"n"`: the current version must be this one.
    Version(u64),
    /// `If-None-Match: *`: there must be no resource (none yet, or a deleted one), so an
    /// update only ever creates.
    Absent,
    /// `If-None-Match: W/"n"`: the current version must not be this one.
    NotVersion(u64),
}

impl Precondition {
    /// 412 unless `current` (the current version, if any) is what was asked for.
    pub fn check(self, current: Option<&VersionRecord>) -> Result<(), RepoError> {
        let version = current.map(|r| r.version);
        let holds = match self {
            Precondition::None => true,
            Precondition::Version(expected) => version == Some(expected),
            Precondition::Absent => current.is_none_or(VersionRecord::deleted),
            Precondition::NotVersion(unwanted) => version != Some(unwanted),
        };
        if holds {
            Ok(())
        } else {
            Err(RepoError::PreconditionFailed {
                precondition: self,
                current: version,
            })
        }
    }

    /// Whether a write that lost a race may run again against the newer version: yes, unless
    /// the client named the version to replace (`If-Match`), which is then a conflict. The
    /// precondition is checked again on each attempt.
    pub fn retries_lost_race(self) -> bool {
        !matches!(self, Precondition::Version(_))
    }

    /// Why it did not hold, for the 412.
    pub fn failure(self, current: Option<u64>) -> String {
        let current = current.map_or_else(|| "none (no such resource)".into(), |c| c.to_string());
        match self {
            Precondition::Version(expected) => {
                format!(
                    "If-Match expected version {expected}, but the current version is {current}"
                )
            }
            Precondition::Absent => format!(
                "If-None-Match: * asks that the resource not exist, but it does (version \
                 {current}); nothing was written"
            ),
            Precondition::NotVersion(unwanted) => format!(
                "If-None-Match asks that the current version not be {unwanted}, but it is; \
                 nothing was written"
            ),
            Precondition::None => format!("no precondition (current version {current})"),
        }
    }
}

impl Repository {
    pub fn new(
        index: Arc<dyn IndexStore>,
        blobs: Arc<dyn BlobStore>,
        vault: Arc<Vault>,
    ) -> Repository {
        Repository {
            index,
            blobs,
            vault,
            registry: std::sync::RwLock::new(Arc::new(Registry::with_custom(&[]))),
            parameter_files: std::sync::RwLock::new(Vec::new()),
            stored_parameters: Default::default(),
            rebuilding: tokio::sync::Mutex::new(0),
            reindexing: std::sync::Mutex::new(Default::default()),
            search_time_limit: SEARCH_TIME_LIMIT,
            consent: std::sync::OnceLock::new(),
            audit: std::sync::OnceLock::new(),
            anchoring: std::sync::OnceLock::new(),
        }
    }

    /// Puts the patients' consent in force (once).
    pub fn enforce_consent(&self, consent: Arc<crate::consent::Consent>) {
        let _ = self.consent.set(consent);
    }

    /// The consent in force.
    pub fn consent(&self) -> Option<&Arc<crate::consent::Consent>> {
        self.consent.get()
    }

    /// Bounds each search's time by `limit` instead of `SEARCH_TIME_LIMIT`.
    pub fn with_search_time_limit(mut self, limit: std::time::Duration) -> Repository {
        self.search_time_limit = limit;
        self
    }

    /// The search parameters in force.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry
            .read()
            .map(|r| r.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    /// Puts `registry` in force (custom parameters changed); resources indexed under the
    /// previous one are stale until reindexed.
    pub fn set_registry(&self, registry: Registry) {
        let registry = Arc::new(registry);
        match self.registry.write() {
            Ok(mut slot) => *slot = registry,
            Err(poisoned) => *poisoned.into_inner() = registry,
        }
    }

    /// Fetches, verifies and opens the content of a version.
    async fn load(&self, record: VersionRecord) -> Result<ResourceVersion, RepoError> {
        let (Some(cid), Some(owner)) = (&record.cid, &record.key_owner) else {
            return Err(RepoError::Integrity(format!(
                "{}/{} version {} has no content",
                record.resource_type, record.id, record.version
            )));
        };
        let mut envelope = self.blobs.get(cid).await?;
        if let Some(position) = record.batch_entry {
            envelope = crate::vault::batch::entry(&envelope, position)?.to_vec();
        }
        let aad = aad_for(&record.resource_type, &record.id, record.version);
        let content = self
            .vault
            .open(owner, &aad, envelope, record.digest.as_deref())
            .await?;
        Ok(ResourceVersion {
            record,
            content: Some(content),
        })
    }

    /// Each backend's own report, for `/health`.
    pub async fn health(&self) -> Vec<(&'static str, Result<String, String>)> {
        let index = self.index.health().await.map_err(|e| e.to_string());
        let blobs = self.blobs.health().await.map_err(|e| e.to_string());
        let mut reports = vec![("index", index), ("blob store", blobs)];
        if let Some(consent) = self.consent.get() {
            reports.push(("ledger", consent.health()));
        }
        reports
    }
}

/// Parses a body against its URL, stamps a provisional id/meta (so the validator sees a
/// complete resource) and validates it. Returns the resource and lenient-mode warnings.
async fn prepare(
    body: Vec<u8>,
    resource_type: ResourceType,
    url_id: Option<String>,
    handling: Handling,
) -> Result<(Json, Vec<Issue>), RepoError> {
    crate::cpu::run(body.len(), move || {
        let mut resource = resource::parse_body(&body, resource_type, url_id.as_deref())?;
        let id = url_id.as_deref().unwrap_or("provisional");
        resource::stamp(&mut resource, id, 1, now_millis());
        let warnings = validate::validate(&resource, handling).map_err(FhirError::Invalid)?;
        Ok((resource, warnings))
    })
    .await
}

/// What a resource version in `patients`' compartments is found by under `registry`: its
/// entries and their keys. Run on the blocking pool for a large resource (a Bundle of
/// thousands of entries).
async fn searchable(
    registry: Arc<Registry>,
    resource_type: ResourceType,
    resource: &Json,
    size: usize,
    patients: &[String],
) -> Searchable {
    if size <= crate::cpu::INLINE_LIMIT {
        return searchable_now(&registry, resource_type, resource, patients);
    }
    let resource = resource.clone();
    let patients = patients.to_vec();
    crate::cpu::blocking(move || searchable_now(&registry, resource_type, &resource, &patients))
        .await
}

/// What `searchable` makes, in place (for callers already off the async workers).
fn searchable_now(
    registry: &Registry,
    resource_type: ResourceType,
    resource: &Json,
    patients: &[String],
) -> Searchable {
    let entries = extract(registry, resource_type.as_str(), resource);
    Searchable {
        keys: keys_of(&entries, patients),
        entries: crate::search::codec::encode(&entries),
        registry: registry.fingerprint(),
    }
}

impl From<AuthError> for RepoError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Store(index) => RepoError::from(index),
            signing @ AuthError::Signing(_) => RepoError::Integrity(signing.to_string()),
            other => RepoError::Forbidden(other.to_string()),
        }
    }
}

impl From<BlobError> for RepoError {
    fn from(e: BlobError) -> Self {
        match e {
            BlobError::Unavailable(detail) => RepoError::Unavailable {
                component: "blob store",
                detail,
            },
            BlobError::Timeout(t) => RepoError::Unavailable {
                component: "blob store",
                detail: format!("no answer within {t:?}"),
            },
            other => RepoError::Integrity(other.to_string()),
        }
    }
}

impl From<VaultError> for RepoError {
    fn from(e: VaultError) -> Self {
        match e {
            VaultError::KeyDestroyed(_) => RepoError::Erased,
            VaultError::KeyStore(index) => RepoError::from(index),
            other => RepoError::Integrity(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::Method;

    fn version(version: u64, method: Method) -> VersionRecord {
        VersionRecord {
            resource_type: "Patient".into(),
            id: "p".into(),
            version,
            last_updated: 0,
            superseded_at: None,
            method,
            cid: None,
            digest: None,
            key_owner: None,
            patients: Vec::new(),
            batch_entry: None,
        }
    }

    #[test]
    fn preconditions_hold_or_fail_with_their_reason() {
        let live = version(3, Method::Update);
        let deleted = version(4, Method::Delete);
        let holds = |p: Precondition, current: Option<&VersionRecord>| p.check(current).is_ok();
        assert!(holds(Precondition::None, Some(&live)));
        assert!(holds(Precondition::Version(3), Some(&live)));
        assert!(!holds(Precondition::Version(2), Some(&live)));
        assert!(!holds(Precondition::Version(1), None));
        // If-None-Match: * — only where there is nothing (a deleted resource counts as none).
        assert!(holds(Precondition::Absent, None));
        assert!(holds(Precondition::Absent, Some(&deleted)));
        assert!(!holds(Precondition::Absent, Some(&live)));
        // If-None-Match: W/"n" — any version but n.
        assert!(holds(Precondition::NotVersion(2), Some(&live)));
        assert!(holds(Precondition::NotVersion(2), None));
        assert!(!holds(Precondition::NotVersion(3), Some(&live)));
        let refused = Precondition::Absent.check(Some(&live)).unwrap_err();
        assert!(
            refused.to_string().contains("If-None-Match: *"),
            "{refused}"
        );
        let refused = Precondition::Version(2).check(Some(&live)).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "If-Match expected version 2, but the current version is 3"
        );
        // Only a client that named the version to replace gets a conflict for a lost race.
        assert!(!Precondition::Version(3).retries_lost_race());
        assert!(Precondition::Absent.retries_lost_race());
        assert!(Precondition::NotVersion(3).retries_lost_race());
    }
}
