//! Conditional interactions: create (`If-None-Exist`), update (`PUT Type?criteria`), patch
//! (`PATCH Type?criteria`) and delete (`DELETE Type?criteria`), each deciding by a search run
//! as the principal.
//!
//! Race-free creation: a search that finds nothing proves nothing about a concurrent request
//! with the same criteria, on this replica or another. So a conditional create that finds no
//! match first *claims* its criteria in the index store (`IndexStore::insert_record`, unique
//! per kind and key on both stores, so exactly one of any number of racing requests wins),
//! searches again under the claim, and only then creates. A request that loses the claim
//! waits for the winner's resource to become visible and answers with it. The claim is
//! released after the winner's commit (a request claiming afterwards searches again under its
//! claim and finds that resource), and expires by itself if its holder dies mid-way.
//!
//! Two requests whose criteria are written differently (`identifier=a|1` and
//! `identifier=a%7C1&_id:missing=false`) claim different keys: the guarantee is for the same
//! criteria, which is what a client retrying or several replicas of one client send.

use std::time::Duration;

use super::search::{PageRequest, SearchScope};
use super::{Precondition, RepoError, Repository, ResourceVersion, Written, prepare};
use crate::auth::{Permission, Principal};
use crate::fhir::instant::now_millis;
use crate::fhir::patch::PatchDocument;
use crate::fhir::resource::{self, ResourceType};
use crate::fhir::validate::Handling;
use crate::index::{Record, VersionRecord};
use crate::search::query::{self, Strictness};

/// The kind of the index records that claim a conditional create's criteria.
const CLAIM_KIND: &str = "conditional-claim";
/// How long a claim outlives a holder that died before releasing it.
const CLAIM_LIFETIME_MS: i64 = 30_000;
/// How often a request that lost the claim looks for the winner's resource.
const WAIT_STEP: Duration = Duration::from_millis(15);
/// How long a request that lost the claim waits for the winner before giving up (409).
const WAIT_LIMIT: Duration = Duration::from_secs(20);
/// A snapshot later than any write: a conditional interaction decides on what is committed
/// now, whatever the clocks of the replicas that wrote it.
const LATEST: i64 = i64::MAX / 4;
/// Most resources one conditional delete removes by default.
pub const DEFAULT_CONDITIONAL_DELETE_LIMIT: usize = 100;

/// What a conditional create did.
#[derive(Debug)]
pub enum CreateOutcome {
    /// Nothing matched: the resource was created.
    Created(Written),
    /// One resource matched (it is returned, nothing was written).
    Exists(ResourceVersion),
}

impl CreateOutcome {
    /// The outcome as the write it answers: the match found stands as a version not created
    /// now (200, no warnings), as FHIR answers a conditional create that matched.
    pub fn into_written(self) -> Written {
        match self {
            CreateOutcome::Created(written) => written,
            CreateOutcome::Exists(version) => Written {
                version,
                created: false,
                warnings: Vec::new(),
            },
        }
    }
}

/// What a search's criteria for a conditional interaction found.
pub struct Criteria {
    pairs: Vec<(String, String)>,
    /// The criteria in one canonical spelling (pairs sorted), for the claim's key.
    canonical: String,
}

/// Names the parameters only: their values may be a patient's identifiers.
impl std::fmt::Debug for Criteria {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.pairs.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("Criteria")
            .field("parameters", &names)
            .finish()
    }
}

impl Criteria {
    /// Parses `a=1&b=2` (percent-encoded as in a URL). Refuses empty criteria: a conditional
    /// interaction without criteria would match every resource of the type.
    pub fn parse(query: &str, what: &str) -> Result<Criteria, RepoError> {
        let mut pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .filter(|(k, _)| !k.is_empty())
            .collect();
        if pairs.is_empty() {
            return Err(RepoError::Search(query::QueryError::Invalid(format!(
                "a conditional {what} needs search criteria (Type?name=value)"
            ))));
        }
        let mut sorted = pairs.clone();
        sorted.sort();
        let canonical = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(&sorted)
            .finish();
        pairs.retain(|(k, _)| k != "_format");
        Ok(Criteria { pairs, canonical })
    }

    fn claim_key(&self, resource_type: ResourceType) -> String {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(format!("{}?{}", resource_type.as_str(), self.canonical));
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        format!("{}:{hex}", resource_type.as_str())
    }
}

impl Repository {
    /// The resources of `resource_type` matching `criteria` that `principal` may see, at most
    /// `limit` (and one more, so the caller knows there are more). Unknown parameters are an
    /// error here whatever the client prefers: ignoring one would widen the match.
    pub async fn conditional_matches(
        &self,
        principal: &Principal,
        resource_type: ResourceType,
        criteria: &Criteria,
        local_base: &str,
        limit: usize,
    ) -> Result<Vec<ResourceVersion>, RepoError> {
        let registry = self.registry();
        let request = query::parse(
            &registry,
            Some(resource_type),
            &criteria.pairs,
            Strictness::Strict,
        )?;
        if request.criteria.is_empty() {
            return Err(RepoError::Search(query::QueryError::Invalid(
                "the conditional criteria name no search parameter".into(),
            )));
        }
        let scope = SearchScope {
            types: vec![resource_type],
            patient: None,
        };
        let page = PageRequest {
            snapshot: Some(LATEST),
            count: limit + 1,
            ..PageRequest::default()
        };
        let found = self
            .search(principal, &scope, &request, &page, local_base)
            .await?;
        Ok(found.matches)
    }

    /// `POST /Type` with `If-None-Exist: criteria`: the one match, or a new resource; never
    /// two new resources for concurrent requests with the same criteria (see the module).
    pub async fn create_if_none_exist(
        &self,
        principal: &Principal,
        resource_type: ResourceType,
        body: Vec<u8>,
        criteria: &Criteria,
        handling: Handling,
        local_base: &str,
    ) -> Result<CreateOutcome, RepoError> {
        self.require_client_write(principal, Permission::Create, resource_type)
            .await?;
        let (resource, warnings) = prepare(body, resource_type, None, handling).await?;
        let claimed = self
            .claim_or_find(principal, resource_type, criteria, local_base)
            .await?;
        let key = match claimed {
            Claimed::Found(existing) => return Ok(CreateOutcome::Exists(existing)),
            Claimed::Held(key) => key,
        };
        let created = self
            .create_prepared(principal, resource_type, resource, warnings)
            .await;
        self.release_claim(&key).await;
        created.map(CreateOutcome::Created)
    }

    /// `PUT /Type?criteria`: updates the one match, or creates (under the claim, like a
    /// conditional create) when nothing matches; 412 for several.
    #[allow(clippy::too_many_arguments)]
    pub async fn update_conditional(
        &self,
        principal: &Principal,
        resource_type: ResourceType,
        body: Vec<u8>,
        criteria: &Criteria,
        precondition: Precondition,
        handling: Handling,
        local_base: &str,
    ) -> Result<Written, RepoError> {
        self.require_client_write(principal, Permission::Update, resource_type)
            .await?;
        let body_id = body_id(&body);
        match self
            .claim_or_find(principal, resource_type, criteria, local_base)
            .await?
        {
            Claimed::Found(existing) => {
                let id = existing.record.id.clone();
                if let Some(body_id) = body_id.filter(|b| *b != id) {
                    return Err(RepoError::Search(query::QueryError::Invalid(format!(
                        "the criteria match {resource_type}/{id}, but the body's id is {}",
                        body_id.chars().take(64).collect::<String>()
                    ))));
                }
                let body = with_id(body, &id);
                let (resource, warnings) =
                    prepare(body, resource_type, Some(id.clone()), handling).await?;
                self.update_prepared(
                    principal,
                    resource_type,
                    &id,
                    resource,
                    warnings,
                    precondition,
                )
                .await
            }
            Claimed::Held(key) => {
                let written = async {
                    precondition.check(None)?;
                    match body_id {
                        // The client names the id: an update-as-create of that id.
                        Some(id) => {
                            resource::check_id(&id)?;
                            let (resource, warnings) =
                                prepare(body, resource_type, Some(id.clone()), handling).await?;
                            self.update_prepared(
                                principal,
                                resource_type,
                                &id,
                                resource,
                                warnings,
                                Precondition::None,
                            )
                            .await
                        }
                        None => {
                            self.require_interaction(
                                principal,
                                Permission::Create,
                                Some(resource_type),
                            )
                            .await?;
                            let (resource, warnings) =
                                prepare(body, resource_type, None, handling).await?;
                            self.create_prepared(principal, resource_type, resource, warnings)
                                .await
                        }
                    }
                }
                .await;
                self.release_claim(&key).await;
                written
            }
        }
    }

    /// `PATCH /Type?criteria`: patches the one match like `patch` (JSON Patch or FHIRPath
    /// Patch); nothing matching is a 404, several a 412. Unlike an update, a patch never
    /// creates, so no claim is taken.
    #[allow(clippy::too_many_arguments)]
    pub async fn patch_conditional(
        &self,
        principal: &Principal,
        resource_type: ResourceType,
        criteria: &Criteria,
        patch: &PatchDocument,
        precondition: Precondition,
        handling: Handling,
        local_base: &str,
    ) -> Result<Written, RepoError> {
        self.require_client_write(principal, Permission::Update, resource_type)
            .await?;
        let existing = self
            .one_match(principal, resource_type, criteria, local_base)
            .await?
            .ok_or_else(|| {
                RepoError::NoMatch(format!(
                    "no {resource_type} matches the criteria; a patch never creates, nothing \
                     was changed"
                ))
            })?;
        self.patch(
            principal,
            resource_type,
            &existing.record.id,
            patch,
            precondition,
            handling,
        )
        .await
    }

    /// `DELETE /Type?criteria`: deletes every match (none: nothing to do), refusing (412) when
    /// more than `limit` match, before deleting any. Returns the deleting versions.
    pub async fn delete_conditional(
        &self,
        principal: &Principal,
        resource_type: ResourceType,
        criteria: &Criteria,
        limit: usize,
        local_base: &str,
    ) -> Result<Vec<VersionRecord>, RepoError> {
        self.require_client_write(principal, Permission::Delete, resource_type)
            .await?;
        let found = self
            .conditional_matches(principal, resource_type, criteria, local_base, limit)
            .await?;
        if found.len() > limit {
            return Err(RepoError::Ambiguous(format!(
                "more than {limit} {resource_type} resources match; a conditional delete here \
                 deletes at most {limit} (narrow the criteria); nothing was deleted"
            )));
        }
        let mut deleted = Vec::new();
        for existing in found {
            let id = existing.record.id;
            if let Some(record) = self
                .delete(principal, resource_type, &id, Precondition::None)
                .await?
            {
                deleted.push(record);
            }
        }
        Ok(deleted)
    }

    /// The one match of `criteria`, or the claim on them (when nothing matches), waiting for
    /// a concurrent holder of the claim to finish. 412 for several matches.
    pub(super) async fn claim_or_find(
        &self,
        principal: &Principal,
        resource_type: ResourceType,
        criteria: &Criteria,
        local_base: &str,
    ) -> Result<Claimed, RepoError> {
        let key = criteria.claim_key(resource_type);
        let started = tokio::time::Instant::now();
        loop {
            if let Some(existing) = self
                .one_match(principal, resource_type, criteria, local_base)
                .await?
            {
                return Ok(Claimed::Found(existing));
            }
            let claim = Record {
                kind: CLAIM_KIND.into(),
                key: key.clone(),
                value: Vec::new(),
                expires_at: Some(now_millis() + CLAIM_LIFETIME_MS),
            };
            if self.index.insert_record(claim).await? {
                // Under the claim, search again: a holder before us may have committed since.
                match self
                    .one_match(principal, resource_type, criteria, local_base)
                    .await
                {
                    Ok(None) => return Ok(Claimed::Held(key)),
                    Ok(Some(existing)) => {
                        self.release_claim(&key).await;
                        return Ok(Claimed::Found(existing));
                    }
                    Err(e) => {
                        self.release_claim(&key).await;
                        return Err(e);
                    }
                }
            }
            if started.elapsed() > WAIT_LIMIT {
                return Err(RepoError::Conflict(
                    "another request with the same conditional criteria is still under way; \
                     retry"
                        .into(),
                ));
            }
            tokio::time::sleep(WAIT_STEP).await;
        }
    }

    /// The one match, `None` for none, 412 for several.
    pub(super) async fn one_match(
        &self,
        principal: &Principal,
        resource_type: ResourceType,
        criteria: &Criteria,
        local_base: &str,
    ) -> Result<Option<ResourceVersion>, RepoError> {
        let mut found = self
            .conditional_matches(principal, resource_type, criteria, local_base, 1)
            .await?;
        if found.len() > 1 {
            return Err(RepoError::Ambiguous(format!(
                "several {resource_type} resources match the criteria; nothing was written"
            )));
        }
        Ok(found.pop())
    }

    pub(super) async fn release_claim(&self, key: &str) {
        // A claim not released expires; the release only shortens the wait of the next.
        if let Err(e) = self.index.take_record(CLAIM_KIND, key).await {
            tracing::warn!(error = %e, "a conditional create's claim was not released; it expires");
        }
    }
}

pub(super) enum Claimed {
    Found(ResourceVersion),
    /// The claim's key, to release.
    Held(String),
}

/// The body with `id` as its id when it names none (a conditional update's body may leave the
/// id to the match). A body that does not parse is left for the full parse to refuse.
pub(super) fn with_id(body: Vec<u8>, id: &str) -> Vec<u8> {
    match crate::fhir::json::parse(&body) {
        Ok(crate::fhir::json::Json::Object(mut object)) if object.get("id").is_none() => {
            let at = usize::from(object.get("resourceType").is_some());
            object.insert_at(at, "id", crate::fhir::json::Json::str(id));
            crate::fhir::json::Json::Object(object).to_bytes()
        }
        _ => body,
    }
}

/// The `id` a body names, if it parses and names one (the full parse comes later).
pub(super) fn body_id(body: &[u8]) -> Option<String> {
    let json = crate::fhir::json::parse(body).ok()?;
    json.get("id")?.as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn criteria_are_canonical_whatever_their_order() {
        let a = Criteria::parse("identifier=urn%3Ax%7C1&birthdate=2000", "create").unwrap();
        let b = Criteria::parse("birthdate=2000&identifier=urn:x|1", "create").unwrap();
        assert_eq!(
            a.claim_key(ResourceType::PATIENT),
            b.claim_key(ResourceType::PATIENT)
        );
        let c = Criteria::parse("birthdate=2001&identifier=urn:x|1", "create").unwrap();
        assert_ne!(
            a.claim_key(ResourceType::PATIENT),
            c.claim_key(ResourceType::PATIENT)
        );
        assert!(Criteria::parse("", "create").is_err());
        assert!(Criteria::parse("&&", "create").is_err());
    }
}
