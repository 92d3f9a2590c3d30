//! `_include` and `_revinclude` (with `:iterate`) for a page of matches: every resource added
//! is authorized like a read, appears once, and the rounds and their size are bounded
//! (`MAX_ITERATIONS`, `MAX_INCLUDES`).

use std::collections::BTreeSet;

use super::{Keep, MAX_EXAMINED, MAX_INCLUDES, MAX_ITERATIONS, Run, decode_entries, too_costly};
use crate::auth::{Permission, Principal};
use crate::fhir::resource::ResourceType;
use crate::index::VersionRecord;
use crate::repository::authorize::{Decision, Target};
use crate::repository::{RepoError, Repository, ResourceVersion};
use crate::search::entries::{SearchEntry, Value};
use crate::search::plan::{Filter, Plan, Test};
use crate::search::query::{Include, SearchRequest};

impl Repository {
    /// `_include` and `_revinclude` for a page, authorized like reads, without repeats.
    pub(super) async fn includes(
        &self,
        principal: &Principal,
        request: &SearchRequest,
        page: &[ResourceVersion],
        patient: Option<&str>,
        snapshot: i64,
    ) -> Result<Vec<ResourceVersion>, RepoError> {
        if request.includes.is_empty() && request.revincludes.is_empty() {
            return Ok(Vec::new());
        }
        let registry = self.registry();
        let mut seen: BTreeSet<(String, String)> = page
            .iter()
            .map(|v| (v.record.resource_type.clone(), v.record.id.clone()))
            .collect();
        let mut included: Vec<ResourceVersion> = Vec::new();
        // Round 0 works on the page; `:iterate` includes work on what the last round added.
        let mut frontier: Vec<(VersionRecord, Vec<SearchEntry>)> = Vec::new();
        for version in page {
            let bytes = self
                .index
                .version_entries(
                    &version.record.resource_type,
                    &version.record.id,
                    version.record.version,
                )
                .await?
                .unwrap_or_default();
            frontier.push((version.record.clone(), decode_entries(&bytes)?));
        }
        for round in 0..=MAX_ITERATIONS {
            let mut added: Vec<(VersionRecord, Vec<SearchEntry>)> = Vec::new();
            for include in request.includes.iter().filter(|i| round == 0 || i.iterate) {
                for (record, entries) in &frontier {
                    if include.source != "*" && include.source != record.resource_type {
                        continue;
                    }
                    for reference in include_targets(&registry, include, record, entries) {
                        let Some((rt, id)) = reference.split_once('/') else {
                            continue;
                        };
                        let key = (rt.to_owned(), id.to_owned());
                        if seen.contains(&key) || ResourceType::parse(rt).is_err() {
                            continue;
                        }
                        seen.insert(key);
                        if let Some(found) = self.include_one(principal, rt, id).await? {
                            added.push(found);
                        }
                    }
                }
            }
            for include in request
                .revincludes
                .iter()
                .filter(|i| round == 0 || i.iterate)
            {
                let refs: Vec<Test> = frontier
                    .iter()
                    .map(|(r, _)| Test::Ref(format!("{}/{}", r.resource_type, r.id)))
                    .collect();
                if refs.is_empty() {
                    continue;
                }
                let Some(param) = &include.param else {
                    continue;
                };
                let plan = Plan {
                    filters: vec![Filter::Any {
                        param: param.clone(),
                        tests: refs,
                    }],
                };
                let run = Run {
                    principal: Some(principal),
                    types: std::slice::from_ref(&include.source),
                    patient,
                    snapshot,
                    budget: MAX_EXAMINED,
                    keep: Keep::All,
                };
                let (found, _) = self.matching(&run, &plan, None, MAX_INCLUDES + 1).await?;
                for m in found {
                    let key = (m.record.resource_type.clone(), m.record.id.clone());
                    if seen.insert(key) {
                        added.push((m.record, m.entries));
                    }
                }
            }
            if added.is_empty() {
                break;
            }
            for (record, _) in &added {
                if included.len() >= MAX_INCLUDES {
                    return Err(too_costly(format!(
                        "_include and _revinclude may add at most {MAX_INCLUDES} resources to a page"
                    )));
                }
                included.push(self.load(record.clone()).await?);
            }
            frontier = added;
        }
        Ok(included)
    }

    /// One resource to include, if it exists and the principal may read it.
    async fn include_one(
        &self,
        principal: &Principal,
        resource_type: &str,
        id: &str,
    ) -> Result<Option<(VersionRecord, Vec<SearchEntry>)>, RepoError> {
        let Some(record) = self.index.current(resource_type, id).await? else {
            return Ok(None);
        };
        if record.deleted() || principal.check(Permission::Read, resource_type).is_err() {
            return Ok(None);
        }
        let target = Target::Stored {
            record: &record,
            replacement: None,
        };
        if let Decision::Denied(_) = self.authorize(principal, Permission::Read, target).await? {
            return Ok(None);
        }
        let bytes = self
            .index
            .version_entries(resource_type, id, record.version)
            .await?
            .unwrap_or_default();
        Ok(Some((record, decode_entries(&bytes)?)))
    }
}

/// The references an `_include` follows from one resource.
fn include_targets(
    registry: &crate::search::params::Registry,
    include: &Include,
    record: &VersionRecord,
    entries: &[SearchEntry],
) -> Vec<String> {
    let params: Vec<String> = match &include.param {
        Some(param) => vec![param.clone()],
        None => registry
            .params_of(&record.resource_type)
            .iter()
            .filter(|p| p.kind == crate::search::params::ParamType::Reference)
            .map(|p| p.code.clone())
            .collect(),
    };
    let mut out = Vec::new();
    for entry in entries.iter().filter(|e| params.contains(&e.param)) {
        if let Value::Ref { r, t } = &entry.value {
            let type_ok = include.target.as_ref().is_none_or(|wanted| {
                t.as_ref() == Some(wanted) || r.starts_with(&format!("{wanted}/"))
            });
            // Only references to this server (relative) can be included.
            if type_ok && !r.contains("://") && r.split('/').count() == 2 && !out.contains(r) {
                out.push(r.clone());
            }
        }
    }
    out
}
