//! `intellihealth import`'s domain part: resources from files written under ids that do not
//! change from one run to the next, so that importing the same files again writes nothing.
//!
//! A resource's id is its own `id`; else, in a Bundle, the UUID of its `urn:uuid:` fullUrl;
//! else a digest of its content (the 64 hex digits of the SHA-256 of its RFC 8785 form, which
//! is a valid id). In a Bundle every reference to an entry's fullUrl is rewritten to the
//! `Type/id` it became, as a transaction would, but to the same id on every run.
//!
//! A chunk of resources is written as one transaction (`Repository::transaction`: each
//! version staged, then one `IndexStore::commit_all`), because one index commit per resource
//! is what limits a bulk load. A resource whose current version holds the same content (apart
//! from `meta.versionId` and `meta.lastUpdated`) is left alone. A resource the transaction
//! refuses as the client's fault (not valid FHIR, a type only the server writes) is reported
//! as failed and the chunk is written again without it; a failure of a store is the whole
//! import's, and is returned as an error.

use std::collections::{HashMap, HashSet};

use futures::StreamExt;
use sha2::{Digest, Sha256};

use super::transaction::{Target, TxEntry, TxFailure, TxRequest, TxResult, replace_references};
use super::{Precondition, RepoError, Repository};
use crate::auth::Principal;
use crate::fhir::json::Json;
use crate::fhir::primitives;
use crate::fhir::resource::ResourceType;
use crate::fhir::validate::Handling;
use crate::fhir::{FhirError, Issue};

/// How many current versions of a chunk are looked up (and compared) at once.
const LOOKUPS_IN_FLIGHT: usize = 16;

/// How many times a chunk that keeps losing races to other writers is written again.
const MAX_CHUNK_ATTEMPTS: usize = 3;

/// How many times a round is tried while a store is unavailable, and the first pause between
/// tries (doubled each time: 0.5 + 1 + 2 + 4 + 8 s in all).
const UNAVAILABLE_ATTEMPTS: usize = 6;
const FIRST_PAUSE: std::time::Duration = std::time::Duration::from_millis(500);

/// One resource read from a file, and where it was read (`file:line`, `file: entry 3`).
#[derive(Debug)]
pub struct ImportItem {
    pub source: String,
    pub resource: Json,
}

/// What importing one resource did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportOutcome {
    Created,
    Updated,
    /// Its current version already holds this content: nothing written.
    Unchanged,
    /// Not imported, and why (the resource's own fault: the others are imported).
    Failed(String),
}

/// A resource ready to write: its type and stable id, set in its body.
#[derive(Clone)]
struct Identified {
    position: usize,
    resource_type: ResourceType,
    id: String,
    resource: Json,
}

impl Repository {
    /// Imports a chunk of resources as `principal`: one outcome per item, in their order. An
    /// error is a store's failure (nothing about the items): what was committed before it
    /// stays, and running the import again skips it.
    pub async fn import_chunk(
        &self,
        principal: &Principal,
        items: Vec<ImportItem>,
        local_base: &str,
    ) -> Result<Vec<ImportOutcome>, RepoError> {
        let mut outcomes: Vec<Option<ImportOutcome>> = vec![None; items.len()];
        let mut pending = Vec::with_capacity(items.len());
        for (position, item) in items.into_iter().enumerate() {
            match identify(item.resource) {
                Ok((resource_type, id, resource)) => pending.push(Identified {
                    position,
                    resource_type,
                    id,
                    resource,
                }),
                Err(reason) => outcomes[position] = Some(ImportOutcome::Failed(reason)),
            }
        }
        // A transaction writes each resource once: a resource repeated in the chunk (a history
        // Bundle, an NDJSON file with two versions) is written in a later round, in order.
        while !pending.is_empty() {
            let mut seen = HashSet::new();
            let (round, later): (Vec<_>, Vec<_>) = pending
                .into_iter()
                .partition(|one| seen.insert((one.resource_type, one.id.clone())));
            pending = later;
            for (position, outcome) in self
                .import_round_again(principal, round, local_base)
                .await?
            {
                outcomes[position] = Some(outcome);
            }
        }
        Ok(outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| ImportOutcome::Failed("not imported".into())))
            .collect())
    }

    /// `import_round`, run again (after a pause that doubles) while a store is unavailable,
    /// so a store that drops a connection or restarts mid-load does not end a long import; a
    /// round is safe to repeat — what a timed-out commit did write is found unchanged the
    /// next time.
    async fn import_round_again(
        &self,
        principal: &Principal,
        round: Vec<Identified>,
        local_base: &str,
    ) -> Result<Vec<(usize, ImportOutcome)>, RepoError> {
        let mut pause = FIRST_PAUSE;
        for _ in 1..UNAVAILABLE_ATTEMPTS {
            match self
                .import_round(principal, round.clone(), local_base)
                .await
            {
                Err(RepoError::Unavailable { component, detail }) => {
                    tracing::warn!(component, %detail, "import round written again after a pause");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                other => return other,
            }
        }
        self.import_round(principal, round, local_base).await
    }

    /// Writes resources of distinct ids that differ from their current versions, in one
    /// transaction; the outcome of each by its position.
    async fn import_round(
        &self,
        principal: &Principal,
        round: Vec<Identified>,
        local_base: &str,
    ) -> Result<Vec<(usize, ImportOutcome)>, RepoError> {
        let mut outcomes = Vec::with_capacity(round.len());
        let compared: Vec<(Identified, bool)> = futures::stream::iter(round)
            .map(|one| async move {
                let unchanged = self.holds_already(&one).await?;
                Ok::<_, RepoError>((one, unchanged))
            })
            .buffered(LOOKUPS_IN_FLIGHT)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        let mut writes = Vec::new();
        for (one, unchanged) in compared {
            if unchanged {
                outcomes.push((one.position, ImportOutcome::Unchanged));
            } else {
                writes.push(one);
            }
        }
        let mut attempts = 0;
        while !writes.is_empty() {
            let entries = writes
                .iter()
                .map(|one| TxEntry {
                    full_url: None,
                    request: TxRequest::Update {
                        resource_type: one.resource_type,
                        target: Target::Id(one.id.clone()),
                        body: one.resource.to_bytes(),
                        precondition: Precondition::None,
                    },
                })
                .collect();
            // `delete_limit` 0: an import deletes nothing.
            match self
                .transaction(principal, entries, Handling::Strict, local_base, 0)
                .await
            {
                Ok(results) => {
                    for (one, result) in writes.iter().zip(results) {
                        let outcome = match result {
                            TxResult::Created(_) => ImportOutcome::Created,
                            _ => ImportOutcome::Updated,
                        };
                        outcomes.push((one.position, outcome));
                    }
                    break;
                }
                Err(TxFailure {
                    entry: Some(n),
                    error,
                }) if is_the_resources_fault(&error) && n < writes.len() => {
                    // That one is bad; the others are written without it.
                    let bad = writes.remove(n);
                    outcomes.push((bad.position, ImportOutcome::Failed(describe(&error))));
                }
                Err(TxFailure {
                    entry: None,
                    error: RepoError::Conflict(reason),
                }) if attempts + 1 < MAX_CHUNK_ATTEMPTS => {
                    // Other writers kept changing these resources: try the chunk again.
                    attempts += 1;
                    tracing::debug!("import chunk written again: {reason}");
                }
                Err(TxFailure { error, .. }) if is_the_resources_fault(&error) => {
                    let reason = describe(&error);
                    for one in writes.drain(..) {
                        outcomes.push((one.position, ImportOutcome::Failed(reason.clone())));
                    }
                }
                Err(TxFailure { error, .. }) => return Err(error),
            }
        }
        Ok(outcomes)
    }

    /// Whether the current version of `one` holds its content already.
    async fn holds_already(&self, one: &Identified) -> Result<bool, RepoError> {
        let Some(current) = self
            .index
            .current(one.resource_type.as_str(), &one.id)
            .await?
        else {
            return Ok(false);
        };
        if current.deleted() {
            return Ok(false);
        }
        let stored = match self.load(current).await {
            Ok(version) => version.content.unwrap_or_default(),
            // Its patient was erased: the write decides (and refuses) it.
            Err(RepoError::Erased) => return Ok(false),
            Err(e) => return Err(e),
        };
        let Ok(stored) = crate::fhir::json::parse(&stored) else {
            return Ok(false);
        };
        Ok(comparable(&stored) == comparable(&one.resource))
    }
}

/// The resource's type and stable id (its own, else its content's digest), with the id set
/// in its body; or why it cannot be imported.
fn identify(mut resource: Json) -> Result<(ResourceType, String, Json), String> {
    let Some(object) = resource.as_object() else {
        return Err(format!(
            "expected a resource object, found {}",
            resource.kind()
        ));
    };
    let resource_type = match object.get("resourceType") {
        Some(Json::String(name)) => ResourceType::parse(name).map_err(|e| e.to_string())?,
        _ => return Err("not a resource: resourceType is missing or not a string".into()),
    };
    let id = match object.get("id") {
        Some(Json::String(id)) if primitives::is_id(id) => id.clone(),
        Some(other) => {
            let shown = match other {
                Json::String(text) => text.chars().take(64).collect(),
                _ => format!("(a JSON {})", other.kind()),
            };
            return Err(FhirError::InvalidId(shown).to_string());
        }
        None => content_digest(&resource),
    };
    if let Some(object) = resource.as_object_mut() {
        object.insert_at(1, "id", Json::str(&id));
    }
    Ok((resource_type, id, resource))
}

/// The hex SHA-256 of a resource's RFC 8785 form without its id and server-set meta: the id
/// of a resource that has none, the same for the same content on every run.
pub fn content_digest(resource: &Json) -> String {
    let mut bare = without_server_meta(resource);
    if let Some(object) = bare.as_object_mut() {
        object.remove("id");
    }
    let digest = Sha256::digest(crate::audit::jcs::canonical(&bare));
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// What two versions are compared by: their RFC 8785 form (member order and number spelling
/// do not matter) without `meta.versionId` and `meta.lastUpdated`, which every write sets.
fn comparable(resource: &Json) -> Vec<u8> {
    crate::audit::jcs::canonical(&without_server_meta(resource))
}

fn without_server_meta(resource: &Json) -> Json {
    let mut copy = resource.clone();
    if let Some(object) = copy.as_object_mut() {
        let empty = match object.get_mut("meta").and_then(Json::as_object_mut) {
            Some(meta) => {
                meta.remove("versionId");
                meta.remove("lastUpdated");
                meta.is_empty()
            }
            None => false,
        };
        if empty {
            object.remove("meta");
        }
    }
    copy
}

/// Whether a Bundle's entries are imported rather than the Bundle itself.
pub fn is_bundle(json: &Json) -> bool {
    json.get("resourceType").and_then(Json::as_str) == Some("Bundle")
}

/// The resources of a Bundle's entries (of any Bundle type), each with its stable id set:
/// its own, else the UUID of a `urn:uuid:` fullUrl, else its content's digest; every
/// reference to an entry's fullUrl rewritten to that entry's `Type/id`. An entry without a
/// resource (a DELETE or GET of a transaction) gives the reason it is not imported; a
/// searchset's OperationOutcome (search mode `outcome`) is not data and is left out.
pub fn bundle_entries(bundle: Json) -> Vec<(usize, Result<Json, String>)> {
    let Json::Object(mut bundle) = bundle else {
        return Vec::new();
    };
    let entries = match bundle.remove("entry") {
        Some(Json::Array(entries)) => entries,
        _ => return Vec::new(),
    };
    let mut found = Vec::with_capacity(entries.len());
    let mut names: HashMap<String, String> = HashMap::new();
    for (n, entry) in entries.into_iter().enumerate() {
        let Json::Object(mut entry) = entry else {
            found.push((n, Err("the entry is not an object".to_owned())));
            continue;
        };
        let mode = entry
            .get("search")
            .and_then(|s| s.get("mode"))
            .and_then(Json::as_str);
        if mode == Some("outcome") {
            continue;
        }
        let full_url = entry
            .get("fullUrl")
            .and_then(Json::as_str)
            .map(str::to_owned);
        let Some(mut resource) = entry.remove("resource") else {
            found.push((
                n,
                Err(
                    "the entry has no resource (only resources are imported, not DELETE or \
                     GET requests)"
                        .to_owned(),
                ),
            ));
            continue;
        };
        let type_name = resource
            .get("resourceType")
            .and_then(Json::as_str)
            .map(str::to_owned);
        if resource.as_object().is_some() && resource_id(&resource).is_none() {
            let id = full_url
                .as_deref()
                .and_then(|url| url.strip_prefix("urn:uuid:"))
                .filter(|uuid| primitives::is_id(uuid))
                .map_or_else(|| content_digest(&resource), str::to_owned);
            if let Some(object) = resource.as_object_mut() {
                object.insert_at(1, "id", Json::str(id));
            }
        }
        if let (Some(url), Some(type_name), Some(id)) =
            (full_url, type_name, resource_id(&resource))
        {
            names.insert(url, format!("{type_name}/{id}"));
        }
        found.push((n, Ok(resource)));
    }
    for (_, resource) in &mut found {
        if let Ok(resource) = resource {
            replace_references(resource, &names);
        }
    }
    found
}

/// A resource's own id, when it has one (valid or not: an invalid one is reported later).
fn resource_id(resource: &Json) -> Option<String> {
    resource.get("id").map(|id| match id {
        Json::String(text) => text.clone(),
        _ => String::new(),
    })
}

/// Whether a write failed because of the resource itself (reported, and the rest imported)
/// rather than a store (which stops the import).
fn is_the_resources_fault(error: &RepoError) -> bool {
    !matches!(
        error,
        RepoError::Unavailable { .. } | RepoError::Integrity(_) | RepoError::Index(_)
    )
}

/// An error in one line, with a validation failure's issues spelled out.
fn describe(error: &RepoError) -> String {
    match error {
        RepoError::Fhir(FhirError::Invalid(issues)) => {
            let listed: Vec<String> = issues
                .iter()
                .filter(|issue| issue.is_error())
                .take(5)
                .map(issue_text)
                .collect();
            format!("invalid FHIR: {}", listed.join("; "))
        }
        other => other.to_string(),
    }
}

fn issue_text(issue: &Issue) -> String {
    match &issue.expression {
        Some(at) => format!("{} (at {at})", issue.diagnostics),
        None => issue.diagnostics.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Json {
        crate::fhir::json::parse(text.as_bytes()).unwrap()
    }

    fn text(json: &Json) -> String {
        String::from_utf8(json.to_bytes()).unwrap()
    }

    #[test]
    fn a_resource_without_an_id_is_named_by_its_content() {
        let a = parse(r#"{"resourceType":"Basic","code":{"text":"x"}}"#);
        let b = parse(
            r#"{"code":{"text":"x"},"resourceType":"Basic","meta":{"lastUpdated":"2020-01-01T00:00:00Z"}}"#,
        );
        let (_, id_a, with_id) = identify(a).unwrap();
        let (_, id_b, _) = identify(b).unwrap();
        assert_eq!(id_a.len(), 64);
        assert_eq!(id_a, id_b, "member order and server meta do not change it");
        assert!(primitives::is_id(&id_a));
        assert!(text(&with_id).starts_with(&format!(r#"{{"resourceType":"Basic","id":"{id_a}""#)));
        let other = parse(r#"{"resourceType":"Basic","code":{"text":"y"}}"#);
        assert_ne!(identify(other).unwrap().1, id_a);
    }

    #[test]
    fn an_own_id_is_kept_and_a_broken_one_refused() {
        let (kind, id, _) = identify(parse(r#"{"resourceType":"Patient","id":"p1"}"#)).unwrap();
        assert_eq!((kind.as_str(), id.as_str()), ("Patient", "p1"));
        assert!(identify(parse(r#"{"resourceType":"Patient","id":"a b"}"#)).is_err());
        assert!(identify(parse(r#"{"resourceType":"Nonsense"}"#)).is_err());
        assert!(identify(parse(r#"{"id":"x"}"#)).is_err());
        assert!(identify(parse(r#"[1]"#)).is_err());
    }

    #[test]
    fn versions_differing_only_in_server_meta_are_the_same() {
        let stored = parse(
            r#"{"resourceType":"Patient","id":"p","meta":{"versionId":"3","lastUpdated":"2024-01-01T00:00:00.000Z"},"active":true,"x":1.50}"#,
        );
        let incoming = parse(r#"{"active":true,"resourceType":"Patient","x":1.5,"id":"p"}"#);
        assert_eq!(comparable(&stored), comparable(&incoming));
        let tagged = parse(
            r#"{"resourceType":"Patient","id":"p","meta":{"tag":[{"code":"t"}]},"active":true,"x":1.5}"#,
        );
        assert_ne!(comparable(&tagged), comparable(&incoming));
    }

    #[test]
    fn a_bundles_entries_get_stable_ids_and_their_references_follow() {
        let bundle = parse(
            r#"{"resourceType":"Bundle","type":"transaction","entry":[
              {"fullUrl":"urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a","resource":{"resourceType":"Patient","name":[{"family":"A"}]},"request":{"method":"POST","url":"Patient"}},
              {"fullUrl":"urn:oid:1.2.3","resource":{"resourceType":"Practitioner"}},
              {"fullUrl":"http://x/fhir/Organization/o1","resource":{"resourceType":"Organization","id":"o1"}},
              {"resource":{"resourceType":"Observation","status":"final","code":{"text":"c"},
                "subject":{"reference":"urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a"},
                "performer":[{"reference":"urn:oid:1.2.3"},{"reference":"http://x/fhir/Organization/o1"}]}},
              {"request":{"method":"DELETE","url":"Patient/gone"}},
              {"resource":{"resourceType":"OperationOutcome"},"search":{"mode":"outcome"}}
            ]}"#,
        );
        let found = bundle_entries(bundle);
        assert_eq!(
            found.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            [0, 1, 2, 3, 4]
        );
        let resource = |n: usize| found[n].1.as_ref().unwrap();
        assert_eq!(
            resource(0).get("id").and_then(Json::as_str),
            Some("61ebe359-bfdc-4613-8bf2-c5e300945f0a")
        );
        let practitioner = resource(1).get("id").and_then(Json::as_str).unwrap();
        assert_eq!(practitioner.len(), 64);
        let observation = text(resource(3));
        assert!(
            observation.contains(
                r#""subject":{"reference":"Patient/61ebe359-bfdc-4613-8bf2-c5e300945f0a"}"#
            ),
            "{observation}"
        );
        assert!(observation.contains(&format!(r#"{{"reference":"Practitioner/{practitioner}"}}"#)));
        assert!(observation.contains(r#"{"reference":"Organization/o1"}"#));
        assert!(found[4].1.is_err(), "a DELETE entry is reported");
        // The same content is named the same on every run, in whatever Bundle.
        let again = bundle_entries(parse(
            r#"{"resourceType":"Bundle","type":"collection","entry":[{"fullUrl":"urn:oid:1.2.3","resource":{"resourceType":"Practitioner"}}]}"#,
        ));
        assert_eq!(
            again[0]
                .1
                .as_ref()
                .unwrap()
                .get("id")
                .and_then(Json::as_str),
            Some(practitioner)
        );
    }
}
