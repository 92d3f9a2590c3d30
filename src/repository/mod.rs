//! The way of a request below HTTP: each FHIR interaction as one function that composes the
//! domain rooms (fhir, search, vault) with the seams (BlobStore, IndexStore).
//!
//! Write: parse → check against the URL → stamp id/meta → validate → compartment → seal → blob
//! put → index commit (the commit point). Read: index locate → blob get (CID verified) → open
//! (AEAD + digest verified). Every call to a backend is bounded by the configured timeout, so a
//! dead dependency becomes a 503 naming it, never a hang.
//!
//! Optimistic concurrency: a write reads the current version, seals the next one, and commits
//! only if the current version is still the one it read. A lost race without `If-Match` is
//! retried (the client asked for "the next version", whatever it is); with `If-Match` it is a
//! 409, since the client asked for a specific base.
//!
//! Must not know HTTP: status codes are decided in `http::outcome` from `RepoError`.

mod error;
pub mod sweep;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

pub use error::RepoError;

use crate::fhir::instant::now_millis;
use crate::fhir::json::Json;
use crate::fhir::resource::{self, ResourceType};
use crate::fhir::validate::{self, Handling};
use crate::fhir::{FhirError, Issue};
use crate::index::{Commit, HistoryQuery, IndexError, IndexStore, Method, VersionRecord};
use crate::search::compartment::patient_compartment;
use crate::vault::blob::{BlobError, BlobStore};
use crate::vault::{Vault, VaultError, aad_for};

/// How many times a write that lost a race (without `If-Match`) is retried.
const MAX_WRITE_ATTEMPTS: usize = 8;

pub struct Repository {
    index: Arc<dyn IndexStore>,
    blobs: Arc<dyn BlobStore>,
    vault: Arc<Vault>,
    /// Longest wait for one backend call before the request fails with 503.
    timeout: Duration,
}

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

/// What the client asked to update from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precondition {
    None,
    /// `If-Match`: the current version must be this one.
    Version(u64),
}

impl Repository {
    pub fn new(
        index: Arc<dyn IndexStore>,
        blobs: Arc<dyn BlobStore>,
        vault: Arc<Vault>,
        timeout: Duration,
    ) -> Repository {
        Repository {
            index,
            blobs,
            vault,
            timeout,
        }
    }

    /// Runs one backend call under the timeout.
    async fn bounded<T, E>(
        &self,
        component: &'static str,
        call: impl Future<Output = Result<T, E>>,
    ) -> Result<T, RepoError>
    where
        RepoError: From<E>,
    {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result.map_err(RepoError::from),
            Err(_) => Err(RepoError::Unavailable {
                component,
                detail: format!("no answer within {:?}", self.timeout),
            }),
        }
    }

    /// `POST /Type`: a new resource with a server-assigned id.
    pub async fn create(
        &self,
        resource_type: ResourceType,
        body: Vec<u8>,
        handling: Handling,
    ) -> Result<Written, RepoError> {
        let (mut resource, warnings) = prepare(body, resource_type, None, handling).await?;
        for _ in 0..MAX_WRITE_ATTEMPTS {
            let id = resource::new_id();
            match self
                .write_version(resource_type, &id, &mut resource, None, Method::Create)
                .await
            {
                Ok(version) => {
                    return Ok(Written {
                        version,
                        created: true,
                        warnings,
                    });
                }
                // A fresh random id already taken: astronomically unlikely, but try another.
                Err(RepoError::Index(IndexError::Conflict { .. })) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(RepoError::Conflict("could not allocate a free id".into()))
    }

    /// `PUT /Type/id`: a new version, or the first one (update-as-create).
    pub async fn update(
        &self,
        resource_type: ResourceType,
        id: &str,
        body: Vec<u8>,
        precondition: Precondition,
        handling: Handling,
    ) -> Result<Written, RepoError> {
        resource::check_id(id)?;
        let (mut resource, warnings) =
            prepare(body, resource_type, Some(id.to_owned()), handling).await?;
        for _ in 0..MAX_WRITE_ATTEMPTS {
            let current = self
                .bounded("index", self.index.current(resource_type.as_str(), id))
                .await?;
            let current_version = current.as_ref().map(|r| r.version);
            if let Precondition::Version(expected) = precondition
                && current_version != Some(expected)
            {
                return Err(RepoError::PreconditionFailed {
                    expected,
                    current: current_version,
                });
            }
            let created = current.as_ref().is_none_or(VersionRecord::deleted);
            match self
                .write_version(
                    resource_type,
                    id,
                    &mut resource,
                    current.as_ref(),
                    Method::Update,
                )
                .await
            {
                Ok(version) => {
                    return Ok(Written {
                        version,
                        created,
                        warnings,
                    });
                }
                Err(RepoError::Index(IndexError::Conflict { .. }))
                    if precondition == Precondition::None =>
                {
                    continue;
                }
                Err(RepoError::Index(IndexError::Conflict { current })) => {
                    return Err(RepoError::Conflict(format!(
                        "another update made version {} first; read it and retry",
                        current.unwrap_or_default()
                    )));
                }
                Err(e) => return Err(e),
            }
        }
        Err(RepoError::Conflict(
            "the resource is being updated concurrently; retry".into(),
        ))
    }

    /// Seals and stores the version after `current`, then commits it to the index.
    async fn write_version(
        &self,
        resource_type: ResourceType,
        id: &str,
        resource: &mut Json,
        current: Option<&VersionRecord>,
        method: Method,
    ) -> Result<ResourceVersion, RepoError> {
        let version = current.map_or(1, |r| r.version + 1);
        // lastUpdated never goes backwards within a resource, whatever the clock does.
        let last_updated = current.map_or(now_millis(), |r| now_millis().max(r.last_updated + 1));
        resource::stamp(resource, id, version, last_updated);
        let compartment = patient_compartment(resource_type.as_str(), id, resource);
        let key_owner = compartment.key_owner();
        let content = Arc::new(resource.to_bytes());
        let sealed = self
            .vault
            .seal(
                &key_owner,
                &aad_for(resource_type.as_str(), id, version),
                content.clone(),
            )
            .await?;
        let content = Arc::try_unwrap(content).unwrap_or_else(|shared| shared.to_vec());
        let cid = self
            .bounded("blob store", self.blobs.put(sealed.envelope))
            .await?;
        let record = VersionRecord {
            resource_type: resource_type.as_str().to_owned(),
            id: id.to_owned(),
            version,
            last_updated,
            superseded_at: None,
            method,
            cid: Some(cid),
            digest: Some(sealed.digest),
            key_owner: Some(key_owner),
            patients: compartment.patients,
        };
        let commit = Commit {
            record: record.clone(),
            replaces: current.map(|r| r.version),
            entries: Vec::new(),
        };
        self.bounded("index", self.index.commit(commit)).await?;
        Ok(ResourceVersion {
            record,
            content: Some(content),
        })
    }

    /// `DELETE /Type/id`: a logical delete (a new, content-less version). Deleting a deleted
    /// resource changes nothing; returns the deleting version, or `None` if already deleted.
    pub async fn delete(
        &self,
        resource_type: ResourceType,
        id: &str,
        precondition: Precondition,
    ) -> Result<Option<VersionRecord>, RepoError> {
        resource::check_id(id)?;
        for _ in 0..MAX_WRITE_ATTEMPTS {
            let current = self
                .bounded("index", self.index.current(resource_type.as_str(), id))
                .await?
                .ok_or_else(|| RepoError::not_found(resource_type, id, None))?;
            if let Precondition::Version(expected) = precondition
                && current.version != expected
            {
                return Err(RepoError::PreconditionFailed {
                    expected,
                    current: Some(current.version),
                });
            }
            if current.deleted() {
                return Ok(None);
            }
            let record = VersionRecord {
                version: current.version + 1,
                last_updated: now_millis().max(current.last_updated + 1),
                superseded_at: None,
                method: Method::Delete,
                cid: None,
                digest: None,
                key_owner: None,
                ..current.clone()
            };
            let commit = Commit {
                record: record.clone(),
                replaces: Some(current.version),
                entries: Vec::new(),
            };
            match self.bounded("index", self.index.commit(commit)).await {
                Ok(()) => return Ok(Some(record)),
                Err(RepoError::Index(IndexError::Conflict { .. }))
                    if precondition == Precondition::None =>
                {
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        Err(RepoError::Conflict(
            "the resource is being updated concurrently; retry".into(),
        ))
    }

    /// `GET /Type/id`: the current version; 410 if it was deleted.
    pub async fn read(
        &self,
        resource_type: ResourceType,
        id: &str,
    ) -> Result<ResourceVersion, RepoError> {
        resource::check_id(id)?;
        let record = self
            .bounded("index", self.index.current(resource_type.as_str(), id))
            .await?
            .ok_or_else(|| RepoError::not_found(resource_type, id, None))?;
        if record.deleted() {
            return Err(RepoError::Gone(Box::new(record)));
        }
        self.load(record).await
    }

    /// `GET /Type/id/_history/n`: one version; 410 if that version is a delete.
    pub async fn vread(
        &self,
        resource_type: ResourceType,
        id: &str,
        version: u64,
    ) -> Result<ResourceVersion, RepoError> {
        resource::check_id(id)?;
        let record = self
            .bounded(
                "index",
                self.index.version(resource_type.as_str(), id, version),
            )
            .await?
            .ok_or_else(|| RepoError::not_found(resource_type, id, Some(version)))?;
        if record.deleted() {
            return Err(RepoError::Gone(Box::new(record)));
        }
        self.load(record).await
    }

    /// A page of history, with the content of every version that has some.
    pub async fn history(&self, query: &HistoryQuery) -> Result<Vec<ResourceVersion>, RepoError> {
        let records = self.bounded("index", self.index.history(query)).await?;
        let mut page = Vec::with_capacity(records.len());
        for record in records {
            if record.deleted() {
                page.push(ResourceVersion {
                    record,
                    content: None,
                });
            } else {
                page.push(self.load(record).await?);
            }
        }
        Ok(page)
    }

    /// Whether a resource ever existed (for instance history of an unknown id: 404).
    pub async fn exists(&self, resource_type: ResourceType, id: &str) -> Result<bool, RepoError> {
        resource::check_id(id)?;
        let current = self
            .bounded("index", self.index.current(resource_type.as_str(), id))
            .await?;
        Ok(current.is_some())
    }

    /// Fetches, verifies and opens the content of a version.
    async fn load(&self, record: VersionRecord) -> Result<ResourceVersion, RepoError> {
        let (Some(cid), Some(owner)) = (&record.cid, &record.key_owner) else {
            return Err(RepoError::Integrity(format!(
                "{}/{} version {} has no content",
                record.resource_type, record.id, record.version
            )));
        };
        let envelope = self.bounded("blob store", self.blobs.get(cid)).await?;
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
        let index = self
            .bounded("index", self.index.health())
            .await
            .map_err(|e| e.to_string());
        let blobs = self
            .bounded("blob store", self.blobs.health())
            .await
            .map_err(|e| e.to_string());
        vec![("index", index), ("blob store", blobs)]
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
