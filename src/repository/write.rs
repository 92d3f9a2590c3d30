//! Create, update and delete, for a principal: scope checks first, then the compartment of
//! both the version replaced and the version written (a `patient/` scope can neither write
//! into another patient's record nor move a resource out of its own patient's), then seal →
//! blob put → index commit.

use std::sync::Arc;

use super::authorize::{Decision, Target};
use super::{Precondition, RepoError, Repository, ResourceVersion, Written, prepare};
use crate::auth::{Permission, Principal};
use crate::fhir::Issue;
use crate::fhir::instant::now_millis;
use crate::fhir::json::Json;
use crate::fhir::patch::PatchDocument;
use crate::fhir::resource::{self, ResourceType};
use crate::fhir::validate::Handling;
use crate::index::{Commit, IndexError, Method, VersionRecord};
use crate::search::compartment::patient_compartment;
use crate::vault::aad_for;

/// How many times a write that lost a race (without `If-Match`) is retried.
const MAX_WRITE_ATTEMPTS: usize = 8;

impl Repository {
    /// `POST /Type`: a new resource with a server-assigned id.
    pub async fn create(
        &self,
        principal: &Principal,
        resource_type: ResourceType,
        body: Vec<u8>,
        handling: Handling,
    ) -> Result<Written, RepoError> {
        self.require_client_write(principal, Permission::Create, resource_type)
            .await?;
        let (resource, warnings) = prepare(body, resource_type, None, handling).await?;
        self.create_prepared(principal, resource_type, resource, warnings)
            .await
    }

    /// A create of a resource already parsed and validated, under a fresh id.
    pub(super) async fn create_prepared(
        &self,
        principal: &Principal,
        resource_type: ResourceType,
        mut resource: Json,
        warnings: Vec<Issue>,
    ) -> Result<Written, RepoError> {
        for _ in 0..MAX_WRITE_ATTEMPTS {
            let id = resource::new_id();
            let write = Write {
                principal,
                permission: Permission::Create,
                resource_type,
                id: &id,
                current: None,
                method: Method::Create,
            };
            match self.write_version(write, &mut resource).await {
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
        principal: &Principal,
        resource_type: ResourceType,
        id: &str,
        body: Vec<u8>,
        precondition: Precondition,
        handling: Handling,
    ) -> Result<Written, RepoError> {
        self.require_client_write(principal, Permission::Update, resource_type)
            .await?;
        resource::check_id(id)?;
        let (resource, warnings) =
            prepare(body, resource_type, Some(id.to_owned()), handling).await?;
        self.update_prepared(
            principal,
            resource_type,
            id,
            resource,
            warnings,
            precondition,
        )
        .await
    }

    /// An update of a resource already parsed and validated (its id checked against `id`).
    pub(super) async fn update_prepared(
        &self,
        principal: &Principal,
        resource_type: ResourceType,
        id: &str,
        mut resource: Json,
        warnings: Vec<Issue>,
        precondition: Precondition,
    ) -> Result<Written, RepoError> {
        for _ in 0..MAX_WRITE_ATTEMPTS {
            let current = self.index.current(resource_type.as_str(), id).await?;
            precondition.check(current.as_ref())?;
            let (write, created) = self
                .update_of(principal, resource_type, id, current.as_ref(), &resource)
                .await?;
            match self.write_version(write, &mut resource).await {
                Ok(version) => {
                    return Ok(Written {
                        version,
                        created,
                        warnings,
                    });
                }
                Err(RepoError::Index(IndexError::Conflict { .. }))
                    if precondition.retries_lost_race() =>
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

    /// The write of an update of `current` (`None`, or a delete: an update-as-create) to
    /// `resource`, once `principal` may make it; and whether it creates.
    pub(super) async fn update_of<'a>(
        &self,
        principal: &'a Principal,
        resource_type: ResourceType,
        id: &'a str,
        current: Option<&'a VersionRecord>,
        resource: &Json,
    ) -> Result<(Write<'a>, bool), RepoError> {
        let created = current.is_none_or(VersionRecord::deleted);
        // Update-as-create creates: it needs `c` as well as `u`.
        if created {
            self.require_interaction(principal, Permission::Create, Some(resource_type))
                .await?;
        }
        // The version replaced must be within reach too (a delete keeps its compartment,
        // and is judged by the content replacing it).
        if let Some(existing) = current {
            self.require(principal, Permission::Update, existing, Some(resource))
                .await?;
        }
        let write = Write {
            principal,
            permission: if created {
                Permission::Create
            } else {
                Permission::Update
            },
            resource_type,
            id,
            current,
            method: Method::Update,
        };
        Ok((write, created))
    }

    /// Seals and stores the version after `write.current`, then commits it to the index.
    async fn write_version(
        &self,
        write: Write<'_>,
        resource: &mut Json,
    ) -> Result<ResourceVersion, RepoError> {
        let (resource_type, id) = (write.resource_type, write.id);
        let staged = self.stage_version(write, resource).await?;
        self.index.commit(staged.commit).await?;
        self.after_write(resource_type, id, Some(&staged.content))
            .await;
        Ok(ResourceVersion {
            record: staged.record,
            content: Some(staged.content),
        })
    }

    /// Everything of a write before its commit point: authorized, sealed, its blob stored.
    /// Nothing is visible until `commit` is committed (alone, or with others atomically).
    pub(super) async fn stage_version(
        &self,
        write: Write<'_>,
        resource: &mut Json,
    ) -> Result<Staged, RepoError> {
        let Write {
            principal,
            permission,
            resource_type,
            id,
            current,
            method,
        } = write;
        let version = current.map_or(1, |r| r.version + 1);
        // lastUpdated never goes backwards within a resource, whatever the clock does.
        let last_updated = current.map_or(now_millis(), |r| now_millis().max(r.last_updated + 1));
        resource::stamp(resource, id, version, last_updated);
        let compartment = patient_compartment(resource_type.as_str(), id, resource);
        let proposed = Target::Proposed {
            resource_type,
            patients: &compartment.patients,
            content: resource,
        };
        let decision = self.authorize(principal, permission, proposed).await?;
        if let Some(touched) = &principal.touched {
            let allowed = matches!(decision, Decision::Allowed { .. });
            touched.judged(
                format!("{}/{id}", resource_type.as_str()),
                &compartment.patients,
                allowed,
            );
        }
        if let Decision::Denied(refusal) = decision {
            return Err(RepoError::refused_write(resource_type, id, refusal));
        }
        let key_owner = compartment.key_owner();
        let content = Arc::new(resource.to_bytes());
        let searchable = super::searchable(
            self.registry(),
            resource_type,
            resource,
            content.len(),
            &compartment.patients,
        )
        .await;
        let aad = aad_for(resource_type.as_str(), id, version);
        let sealed = self.vault.seal(&key_owner, &aad, content.clone()).await?;
        let content = Arc::try_unwrap(content).unwrap_or_else(|shared| shared.to_vec());
        let cid = self.blobs.put(sealed.envelope).await?;
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
            batch_entry: None,
        };
        let commit = Commit {
            record: record.clone(),
            replaces: current.map(|r| r.version),
            searchable,
        };
        Ok(Staged {
            commit,
            record,
            content,
        })
    }

    /// `DELETE /Type/id`: a logical delete (a new, content-less version). Deleting a deleted
    /// resource changes nothing; returns the deleting version, or `None` if already deleted.
    pub async fn delete(
        &self,
        principal: &Principal,
        resource_type: ResourceType,
        id: &str,
        precondition: Precondition,
    ) -> Result<Option<VersionRecord>, RepoError> {
        self.require_client_write(principal, Permission::Delete, resource_type)
            .await?;
        resource::check_id(id)?;
        for _ in 0..MAX_WRITE_ATTEMPTS {
            let current = self
                .index
                .current(resource_type.as_str(), id)
                .await?
                .ok_or_else(|| RepoError::not_found(resource_type, id, None))?;
            self.require(principal, Permission::Delete, &current, None)
                .await?;
            precondition.check(Some(&current))?;
            if current.deleted() {
                return Ok(None);
            }
            let commit = deletion_of(&current);
            let record = commit.record.clone();
            match self.index.commit(commit).await {
                Ok(()) => {
                    self.after_write(resource_type, id, None).await;
                    return Ok(Some(record));
                }
                Err(IndexError::Conflict { .. }) if precondition.retries_lost_race() => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(RepoError::Conflict(
            "the resource is being updated concurrently; retry".into(),
        ))
    }
}

/// The version that deletes `current`: no content, the compartment kept.
pub(super) fn deletion_of(current: &VersionRecord) -> Commit {
    Commit {
        record: VersionRecord {
            version: current.version + 1,
            last_updated: now_millis().max(current.last_updated + 1),
            superseded_at: None,
            method: Method::Delete,
            cid: None,
            digest: None,
            key_owner: None,
            batch_entry: None,
            ..current.clone()
        },
        replaces: Some(current.version),
        searchable: Default::default(),
    }
}

impl Repository {
    /// What a committed write changes beyond itself: a SearchParameter changes the registry.
    pub(super) async fn after_write(
        &self,
        resource_type: ResourceType,
        id: &str,
        content: Option<&[u8]>,
    ) {
        if resource_type.as_str() == "SearchParameter" {
            self.parameter_written(id, content).await;
        }
    }

    /// What every client write of `resource_type` checks before anything else, in this
    /// order: the type is not one only the server writes, and the scopes allow `permission`
    /// on it at all (the 403 otherwise).
    pub(super) async fn require_client_write(
        &self,
        principal: &Principal,
        permission: Permission,
        resource_type: ResourceType,
    ) -> Result<(), RepoError> {
        refuse_server_written(resource_type)?;
        self.require_interaction(principal, permission, Some(resource_type))
            .await
    }
}

/// AuditEvents are the server's record of what happened: no client writes one.
fn refuse_server_written(resource_type: ResourceType) -> Result<(), RepoError> {
    if resource_type == ResourceType::AUDIT_EVENT {
        return Err(RepoError::ServerWritten(ResourceType::AUDIT_EVENT.as_str()));
    }
    Ok(())
}

/// One version to write, and on whose behalf.
pub(super) struct Write<'a> {
    pub principal: &'a Principal,
    pub permission: Permission,
    pub resource_type: ResourceType,
    pub id: &'a str,
    pub current: Option<&'a VersionRecord>,
    pub method: Method,
}

/// A version sealed and stored, waiting for its commit.
pub(super) struct Staged {
    pub commit: Commit,
    pub record: VersionRecord,
    /// The stored JSON (what was sealed).
    pub content: Vec<u8>,
}

impl Repository {
    /// `PATCH /Type/id` with a JSON Patch or a FHIRPath Patch (one path for both: only the
    /// apply step differs): applied to the current version, the result checked like any
    /// update (same type and id, valid), and written as the next version only if the version
    /// patched is still current (a concurrent write makes it patch the newer one, unless the
    /// client asked for a version with `If-Match`). A patch that fails or makes an invalid
    /// resource is refused (422) and changes nothing.
    pub async fn patch(
        &self,
        principal: &Principal,
        resource_type: ResourceType,
        id: &str,
        patch: &PatchDocument,
        precondition: Precondition,
        handling: Handling,
    ) -> Result<Written, RepoError> {
        self.require_client_write(principal, Permission::Update, resource_type)
            .await?;
        resource::check_id(id)?;
        for _ in 0..MAX_WRITE_ATTEMPTS {
            let current = self
                .index
                .current(resource_type.as_str(), id)
                .await?
                .ok_or_else(|| RepoError::not_found(resource_type, id, None))?;
            precondition.check(Some(&current))?;
            if current.deleted() {
                return Err(RepoError::Gone(Box::new(current)));
            }
            self.require(principal, Permission::Update, &current, None)
                .await?;
            let base_version = current.version;
            let (resource, warnings) = self
                .patched(current, patch, resource_type, handling)
                .await?;
            match self
                .update_prepared(
                    principal,
                    resource_type,
                    id,
                    resource,
                    warnings,
                    Precondition::Version(base_version),
                )
                .await
            {
                Err(RepoError::PreconditionFailed { .. } | RepoError::Conflict(_))
                    if precondition.retries_lost_race() =>
                {
                    continue;
                }
                other => return other,
            }
        }
        Err(RepoError::Conflict(
            "the resource is being updated concurrently; retry".into(),
        ))
    }

    /// The content of `current` with `patch` applied, checked like an update's body (its type,
    /// its id, valid): the step a patch on its own and a patch in a transaction share. A patch
    /// that fails, or makes an invalid resource, is a 422 naming why.
    pub(super) async fn patched(
        &self,
        current: VersionRecord,
        patch: &PatchDocument,
        resource_type: ResourceType,
        handling: Handling,
    ) -> Result<(Json, Vec<Issue>), RepoError> {
        let id = current.id.clone();
        let stored = self.load(current).await?.content.unwrap_or_default();
        let stored = crate::fhir::json::parse(&stored)
            .map_err(|e| RepoError::Integrity(format!("stored content: {e}")))?;
        let patched = patch.apply(&stored)?;
        prepare(patched.to_bytes(), resource_type, Some(id), handling)
            .await
            .map_err(|e| match e {
                RepoError::Fhir(fhir) => {
                    let why: Vec<String> = fhir
                        .issues()
                        .iter()
                        .filter(|issue| issue.is_error())
                        .take(5)
                        .map(|issue| match &issue.expression {
                            Some(at) => format!("{at}: {}", issue.diagnostics),
                            None => issue.diagnostics.clone(),
                        })
                        .collect();
                    RepoError::Unprocessable(format!(
                        "the patched resource is not valid: {}",
                        why.join("; ")
                    ))
                }
                other => other,
            })
    }
}
