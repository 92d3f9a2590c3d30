//! The writes of a transaction Bundle, all or nothing.
//!
//! In the spec's order: first every entry's target is resolved (a conditional create's or
//! update's match, or the claim on its criteria; a conditional delete's matches; a new id for
//! each create), and every `fullUrl` (`urn:uuid:`, `urn:oid:`, or any other) is mapped to the
//! `Type/id` it becomes; then every reference to one, and every conditional reference
//! (`Patient?identifier=…`, which must match exactly one resource), is rewritten; then the
//! versions are staged — DELETE, then POST, then PUT and PATCH (a patch is applied to the
//! current version when its target is resolved) — each authorized, sealed and its blob
//! stored; and last one `IndexStore::commit_all` makes them all current or none. A failure
//! anywhere before the commit leaves only blobs nothing references (the sweeper's), and the
//! failing entry is named. A commit that lost a race to a concurrent write is run again from
//! the staging step (unless an entry asked for a version with `If-Match`: that is a 409).

use std::collections::{HashMap, HashSet};

use super::conditional::Criteria;
use super::write::{Staged, Write, deletion_of};
use super::{Precondition, RepoError, Repository, ResourceVersion, prepare};
use crate::auth::{Permission, Principal};
use crate::fhir::json::Json;
use crate::fhir::patch::PatchDocument;
use crate::fhir::resource::{self, ResourceType};
use crate::fhir::validate::Handling;
use crate::index::{Commit, IndexError, Method, VersionRecord};

/// How many times a transaction that lost a race is staged and committed again.
const MAX_ATTEMPTS: usize = 5;

/// Which resource an update or delete acts on.
#[derive(Debug)]
pub enum Target {
    Id(String),
    Criteria(Criteria),
}

/// One write of a transaction.
#[derive(Debug)]
pub enum TxRequest {
    Create {
        resource_type: ResourceType,
        body: Vec<u8>,
        if_none_exist: Option<Criteria>,
    },
    Update {
        resource_type: ResourceType,
        target: Target,
        body: Vec<u8>,
        precondition: Precondition,
    },
    Delete {
        resource_type: ResourceType,
        target: Target,
        precondition: Precondition,
    },
    /// Applied to the current version of its target (which must exist) when the transaction
    /// is prepared, and written like an update of that version.
    Patch {
        resource_type: ResourceType,
        target: Target,
        patch: PatchDocument,
        precondition: Precondition,
    },
}

/// One entry: its `fullUrl` (what other entries call it) and its write.
#[derive(Debug)]
pub struct TxEntry {
    pub full_url: Option<String>,
    pub request: TxRequest,
}

/// What an entry did, once the transaction committed.
#[derive(Debug)]
pub enum TxResult {
    Created(ResourceVersion),
    Updated(ResourceVersion),
    /// A conditional create whose criteria matched: nothing written.
    Exists(ResourceVersion),
    /// The deleting versions (none: nothing to delete).
    Deleted(Vec<VersionRecord>),
}

/// The entry that failed (its position in the Bundle) and why; `None` when the failure is
/// the whole transaction's (a conflict at commit).
#[derive(Debug)]
pub struct TxFailure {
    pub entry: Option<usize>,
    pub error: RepoError,
}

/// An entry after its target is resolved.
enum Resolved {
    /// Create as `id` (`claim`: the conditional create's claim held meanwhile).
    Create {
        resource_type: ResourceType,
        id: String,
        resource: Json,
    },
    Exists(ResourceVersion),
    Update {
        resource_type: ResourceType,
        id: String,
        resource: Json,
        precondition: Precondition,
        /// A patch of the version `precondition` names (not the client's `If-Match`).
        patched: bool,
    },
    Delete {
        resource_type: ResourceType,
        ids: Vec<String>,
        precondition: Precondition,
    },
}

impl Repository {
    /// Runs the writes of a transaction (see the module): every result in the entries' order,
    /// or the first failure with nothing committed.
    pub async fn transaction(
        &self,
        principal: &Principal,
        entries: Vec<TxEntry>,
        handling: Handling,
        local_base: &str,
        delete_limit: usize,
    ) -> Result<Vec<TxResult>, TxFailure> {
        let mut claims = Vec::new();
        let result = self
            .transaction_claimed(
                principal,
                entries,
                handling,
                local_base,
                delete_limit,
                &mut claims,
            )
            .await;
        for key in claims {
            self.release_claim(&key).await;
        }
        result
    }

    async fn transaction_claimed(
        &self,
        principal: &Principal,
        entries: Vec<TxEntry>,
        handling: Handling,
        local_base: &str,
        delete_limit: usize,
        claims: &mut Vec<String>,
    ) -> Result<Vec<TxResult>, TxFailure> {
        let at = |entry: usize| {
            move |error: RepoError| TxFailure {
                entry: Some(entry),
                error,
            }
        };
        // 1. Targets and the fullUrl → Type/id map.
        let mut resolved = Vec::with_capacity(entries.len());
        let mut names: HashMap<String, String> = HashMap::new();
        let mut written: HashSet<(ResourceType, String)> = HashSet::new();
        for (n, entry) in entries.into_iter().enumerate() {
            let one = self
                .resolve_entry(
                    principal,
                    entry.request,
                    handling,
                    local_base,
                    delete_limit,
                    claims,
                )
                .await
                .map_err(at(n))?;
            let (resource_type, ids): (ResourceType, Vec<&String>) = match &one {
                Resolved::Create {
                    resource_type, id, ..
                }
                | Resolved::Update {
                    resource_type, id, ..
                } => (*resource_type, vec![id]),
                Resolved::Delete {
                    resource_type, ids, ..
                } => (*resource_type, ids.iter().collect()),
                Resolved::Exists(existing) => {
                    if let Some(url) = &entry.full_url {
                        names.insert(
                            url.clone(),
                            format!("{}/{}", existing.record.resource_type, existing.record.id),
                        );
                    }
                    resolved.push(one);
                    continue;
                }
            };
            for id in ids {
                if !written.insert((resource_type, id.clone())) {
                    return Err(at(n)(RepoError::Conflict(format!(
                        "{resource_type}/{id} is written by more than one entry of this \
                         transaction"
                    ))));
                }
            }
            if let (Some(url), Resolved::Create { id, .. } | Resolved::Update { id, .. }) =
                (&entry.full_url, &one)
            {
                names.insert(url.clone(), format!("{resource_type}/{id}"));
            }
            resolved.push(one);
        }
        // 2. References to other entries, and conditional references.
        for (n, one) in resolved.iter_mut().enumerate() {
            if let Resolved::Create { resource, .. } | Resolved::Update { resource, .. } = one {
                self.rewrite_references(principal, resource, &names, local_base)
                    .await
                    .map_err(at(n))?;
            }
        }
        // 3 and 4. Stage in the spec's order, commit all at once; again on a lost race.
        let order = processing_order(&resolved);
        let versioned = resolved.iter().any(|r| match r {
            Resolved::Update { precondition, .. } | Resolved::Delete { precondition, .. } => {
                !precondition.retries_lost_race()
            }
            _ => false,
        });
        for _ in 0..MAX_ATTEMPTS {
            let mut commits = Vec::new();
            let mut results: Vec<Option<TxResult>> = (0..resolved.len()).map(|_| None).collect();
            let mut contents = Vec::new();
            for &n in &order {
                let result = self
                    .stage_entry(principal, &mut resolved[n], &mut commits)
                    .await
                    .map_err(at(n))?;
                if let Some((resource_type, id, content)) = result.1 {
                    contents.push((resource_type, id, content));
                }
                results[n] = Some(result.0);
            }
            match self.index.commit_all(commits, Vec::new()).await {
                Ok(()) => {
                    for (resource_type, id, content) in contents {
                        self.after_write(resource_type, &id, content.as_deref())
                            .await;
                    }
                    return Ok(results.into_iter().flatten().collect());
                }
                Err(IndexError::Conflict { .. }) if !versioned => continue,
                Err(IndexError::Conflict { .. }) => {
                    return Err(TxFailure {
                        entry: None,
                        error: RepoError::Conflict(
                            "a resource of this transaction was changed concurrently; nothing \
                             was written: read it and retry"
                                .into(),
                        ),
                    });
                }
                Err(e) => {
                    return Err(TxFailure {
                        entry: None,
                        error: e.into(),
                    });
                }
            }
        }
        Err(TxFailure {
            entry: None,
            error: RepoError::Conflict(
                "the resources of this transaction are being changed concurrently; nothing was \
                 written: retry"
                    .into(),
            ),
        })
    }

    async fn resolve_entry(
        &self,
        principal: &Principal,
        request: TxRequest,
        handling: Handling,
        local_base: &str,
        delete_limit: usize,
        claims: &mut Vec<String>,
    ) -> Result<Resolved, RepoError> {
        match request {
            TxRequest::Create {
                resource_type,
                body,
                if_none_exist,
            } => {
                self.require_client_write(principal, Permission::Create, resource_type)
                    .await?;
                let (resource, _) = prepare(body, resource_type, None, handling).await?;
                if let Some(criteria) = if_none_exist {
                    match self
                        .claim_or_find(principal, resource_type, &criteria, local_base)
                        .await?
                    {
                        super::conditional::Claimed::Found(existing) => {
                            return Ok(Resolved::Exists(existing));
                        }
                        super::conditional::Claimed::Held(key) => claims.push(key),
                    }
                }
                Ok(Resolved::Create {
                    resource_type,
                    id: resource::new_id(),
                    resource,
                })
            }
            TxRequest::Update {
                resource_type,
                target,
                body,
                precondition,
            } => {
                self.require_client_write(principal, Permission::Update, resource_type)
                    .await?;
                let (id, by_criteria) = match target {
                    Target::Id(id) => {
                        resource::check_id(&id)?;
                        (id, false)
                    }
                    Target::Criteria(criteria) => {
                        match self
                            .claim_or_find(principal, resource_type, &criteria, local_base)
                            .await?
                        {
                            super::conditional::Claimed::Found(existing) => {
                                (existing.record.id, true)
                            }
                            super::conditional::Claimed::Held(key) => {
                                claims.push(key);
                                let id = super::conditional::body_id(&body)
                                    .unwrap_or_else(resource::new_id);
                                (id, true)
                            }
                        }
                    }
                };
                let body = if by_criteria {
                    super::conditional::with_id(body, &id)
                } else {
                    body
                };
                let (resource, _) =
                    prepare(body, resource_type, Some(id.clone()), handling).await?;
                Ok(Resolved::Update {
                    resource_type,
                    id,
                    resource,
                    precondition,
                    patched: false,
                })
            }
            TxRequest::Patch {
                resource_type,
                target,
                patch,
                precondition,
            } => {
                self.require_client_write(principal, Permission::Update, resource_type)
                    .await?;
                let id = match target {
                    Target::Id(id) => {
                        resource::check_id(&id)?;
                        id
                    }
                    Target::Criteria(criteria) => {
                        self.one_match(principal, resource_type, &criteria, local_base)
                            .await?
                            .ok_or_else(|| {
                                RepoError::NoMatch(format!(
                                    "no {resource_type} matches the patch's criteria"
                                ))
                            })?
                            .record
                            .id
                    }
                };
                let current = self
                    .index
                    .current(resource_type.as_str(), &id)
                    .await?
                    .ok_or_else(|| RepoError::not_found(resource_type, &id, None))?;
                precondition.check(Some(&current))?;
                if current.deleted() {
                    return Err(RepoError::Gone(Box::new(current)));
                }
                self.require(principal, Permission::Update, &current, None)
                    .await?;
                let base = current.version;
                let (resource, _) = self
                    .patched(current, &patch, resource_type, handling)
                    .await?;
                // Written only over the version patched: a concurrent write in between makes
                // the transaction fail (nothing written) rather than lose that write.
                Ok(Resolved::Update {
                    resource_type,
                    id,
                    resource,
                    precondition: Precondition::Version(base),
                    patched: true,
                })
            }
            TxRequest::Delete {
                resource_type,
                target,
                precondition,
            } => {
                self.require_client_write(principal, Permission::Delete, resource_type)
                    .await?;
                let ids = match target {
                    Target::Id(id) => {
                        resource::check_id(&id)?;
                        vec![id]
                    }
                    Target::Criteria(criteria) => {
                        let found = self
                            .conditional_matches(
                                principal,
                                resource_type,
                                &criteria,
                                local_base,
                                delete_limit,
                            )
                            .await?;
                        if found.len() > delete_limit {
                            return Err(RepoError::Ambiguous(format!(
                                "more than {delete_limit} {resource_type} resources match the \
                                 conditional delete"
                            )));
                        }
                        found.into_iter().map(|v| v.record.id).collect()
                    }
                };
                Ok(Resolved::Delete {
                    resource_type,
                    ids,
                    precondition,
                })
            }
        }
    }

    /// Rewrites every `reference` naming another entry's `fullUrl` to the `Type/id` it became,
    /// and every conditional reference to its one match.
    async fn rewrite_references(
        &self,
        principal: &Principal,
        resource: &mut Json,
        names: &HashMap<String, String>,
        local_base: &str,
    ) -> Result<(), RepoError> {
        let mut conditional = Vec::new();
        collect_references(resource, &mut |reference| {
            if !names.contains_key(reference) && is_conditional(reference) {
                conditional.push(reference.to_owned());
            }
        });
        let mut resolved = names.clone();
        for reference in conditional {
            if resolved.contains_key(&reference) {
                continue;
            }
            let (type_name, query) = reference.split_once('?').unwrap_or_default();
            let resource_type = ResourceType::parse(type_name)?;
            let criteria = Criteria::parse(query, "reference")?;
            let found = self
                .conditional_matches(principal, resource_type, &criteria, local_base, 1)
                .await?;
            match found.as_slice() {
                [one] => {
                    let target = format!("{}/{}", one.record.resource_type, one.record.id);
                    resolved.insert(reference, target);
                }
                [] => {
                    return Err(RepoError::Ambiguous(format!(
                        "the conditional reference {} matches no resource",
                        preview(&reference)
                    )));
                }
                _ => {
                    return Err(RepoError::Ambiguous(format!(
                        "the conditional reference {} matches several resources",
                        preview(&reference)
                    )));
                }
            }
        }
        replace_references(resource, &resolved);
        Ok(())
    }

    /// Stages one entry's versions into `commits`; returns its result, and for a single
    /// write, what `after_write` needs once committed.
    async fn stage_entry(
        &self,
        principal: &Principal,
        entry: &mut Resolved,
        commits: &mut Vec<Commit>,
    ) -> Result<(TxResult, Option<AfterWrite>), RepoError> {
        match entry {
            Resolved::Exists(existing) => Ok((
                TxResult::Exists(ResourceVersion {
                    record: existing.record.clone(),
                    content: existing.content.clone(),
                }),
                None,
            )),
            Resolved::Create {
                resource_type,
                id,
                resource,
            } => {
                let write = Write {
                    principal,
                    permission: Permission::Create,
                    resource_type: *resource_type,
                    id,
                    current: None,
                    method: Method::Create,
                };
                let staged = self.stage_version(write, resource).await?;
                Ok(staged_result(staged, true, *resource_type, id, commits))
            }
            Resolved::Update {
                resource_type,
                id,
                resource,
                precondition,
                patched,
            } => {
                let current = self.index.current(resource_type.as_str(), id).await?;
                precondition.check(current.as_ref()).map_err(|failed| {
                    if *patched {
                        RepoError::Conflict(format!(
                            "{resource_type}/{id} changed while the transaction patching it was \
                             prepared; nothing was written: retry"
                        ))
                    } else {
                        failed
                    }
                })?;
                let (write, created) = self
                    .update_of(principal, *resource_type, id, current.as_ref(), resource)
                    .await?;
                let staged = self.stage_version(write, resource).await?;
                Ok(staged_result(staged, created, *resource_type, id, commits))
            }
            Resolved::Delete {
                resource_type,
                ids,
                precondition,
            } => {
                let mut deleted = Vec::new();
                for id in ids.iter() {
                    let current = self
                        .index
                        .current(resource_type.as_str(), id)
                        .await?
                        .ok_or_else(|| RepoError::not_found(*resource_type, id, None))?;
                    self.require(principal, Permission::Delete, &current, None)
                        .await?;
                    precondition.check(Some(&current))?;
                    if current.deleted() {
                        continue;
                    }
                    let commit = deletion_of(&current);
                    deleted.push(commit.record.clone());
                    commits.push(commit);
                }
                Ok((TxResult::Deleted(deleted), None))
            }
        }
    }
}

/// A committed write's type, id and content, for `after_write`.
type AfterWrite = (ResourceType, String, Option<Vec<u8>>);

fn staged_result(
    staged: Staged,
    created: bool,
    resource_type: ResourceType,
    id: &str,
    commits: &mut Vec<Commit>,
) -> (TxResult, Option<AfterWrite>) {
    commits.push(staged.commit);
    let after = (resource_type, id.to_owned(), Some(staged.content.clone()));
    let version = ResourceVersion {
        record: staged.record,
        content: Some(staged.content),
    };
    let result = if created {
        TxResult::Created(version)
    } else {
        TxResult::Updated(version)
    };
    (result, Some(after))
}

/// The spec's processing order: DELETE, then POST, then PUT (each in Bundle order); an
/// existing match (a conditional create that creates nothing) anywhere.
fn processing_order(resolved: &[Resolved]) -> Vec<usize> {
    let rank = |r: &Resolved| match r {
        Resolved::Delete { .. } => 0,
        Resolved::Create { .. } | Resolved::Exists(_) => 1,
        Resolved::Update { .. } => 2,
    };
    let mut order: Vec<usize> = (0..resolved.len()).collect();
    order.sort_by_key(|&n| rank(&resolved[n]));
    order
}

/// `Type?criteria`: a conditional reference (a URL with a scheme is never one).
fn is_conditional(reference: &str) -> bool {
    match reference.split_once('?') {
        Some((type_name, _)) => {
            !type_name.contains('/')
                && !type_name.contains(':')
                && type_name
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_uppercase())
        }
        None => false,
    }
}

/// Calls `found` with every `reference` string of a resource.
fn collect_references(value: &Json, found: &mut impl FnMut(&str)) {
    match value {
        Json::Object(object) => {
            for (key, member) in object.iter() {
                match (key, member) {
                    ("reference", Json::String(reference)) => found(reference),
                    _ => collect_references(member, found),
                }
            }
        }
        Json::Array(items) => items
            .iter()
            .for_each(|item| collect_references(item, found)),
        _ => {}
    }
}

/// Replaces every `reference` string found in `names` by what it names (`import` rewrites a
/// Bundle's references to its entries with it too).
pub(super) fn replace_references(value: &mut Json, names: &HashMap<String, String>) {
    match value {
        Json::Object(object) => {
            let keys: Vec<String> = object.iter().map(|(k, _)| k.to_owned()).collect();
            for key in keys {
                let Some(member) = object.get_mut(&key) else {
                    continue;
                };
                if key == "reference"
                    && let Json::String(reference) = member
                {
                    if let Some(target) = names.get(reference.as_str()) {
                        *reference = target.clone();
                    }
                    continue;
                }
                replace_references(member, names);
            }
        }
        Json::Array(items) => items
            .iter_mut()
            .for_each(|item| replace_references(item, names)),
        _ => {}
    }
}

fn preview(text: &str) -> String {
    text.chars().take(100).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_references_to_entries_wherever_they_are() {
        let mut resource = crate::fhir::json::parse(
            br#"{"resourceType":"Observation","subject":{"reference":"urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a"},"performer":[{"reference":"urn:oid:1.2.3"},{"reference":"Practitioner/x"}],"note":[{"text":"urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a"}]}"#,
        )
        .unwrap();
        let names = HashMap::from([
            (
                "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a".to_owned(),
                "Patient/p1".to_owned(),
            ),
            ("urn:oid:1.2.3".to_owned(), "Practitioner/d1".to_owned()),
        ]);
        replace_references(&mut resource, &names);
        let text = String::from_utf8(resource.to_bytes()).unwrap();
        assert!(
            text.contains(r#""subject":{"reference":"Patient/p1"}"#),
            "{text}"
        );
        assert!(text.contains(r#"{"reference":"Practitioner/d1"},{"reference":"Practitioner/x"}"#));
        // Only references are rewritten, not text that happens to look like one.
        assert!(text.contains(r#""text":"urn:uuid:61ebe359"#));
    }

    #[test]
    fn knows_a_conditional_reference() {
        assert!(is_conditional("Patient?identifier=http://x|1"));
        assert!(!is_conditional("http://other/fhir/Patient?identifier=1"));
        assert!(!is_conditional("Patient/1"));
        assert!(!is_conditional("urn:uuid:x?y"));
        assert!(!is_conditional("#contained?x"));
    }
}
