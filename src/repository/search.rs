//! Search for a principal: a parsed request (`search::query`) planned (`search::plan`) and run
//! over the IndexStore's candidates, with every match authorized like a read, so a page is
//! never short and never leaks a count or an include of something the caller may not see.
//!
//! Execution, the same on both stores:
//! 1. chains and `_has` are resolved first, each into a filter on references or ids, by running
//!    their inner plan (bounded: `MAX_CHAIN_MATCHES`);
//! 2. the plan's best narrowing becomes the store's key ranges; candidates come back in
//!    (type, id) order and the plan's exact test keeps the matches;
//! 3. every match is authorized (scopes, the patient compartment, query scopes);
//! 4. the page: in (type, id) order, read until the page is full (and one more, to know there
//!    is a next page); with `_sort`, every match is collected (at most `MAX_SORTED`), sorted,
//!    and sliced.
//!
//! Pages are consistent under concurrent writes: a search runs as of a snapshot time (the first
//! page's), carried in the page links. A resource written after the snapshot is judged, and
//! shown, as it was at the snapshot (its version current then), so a later page neither skips
//! nor repeats an entry, whatever was written meanwhile.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::authorize::{Decision, Target};
use super::{RepoError, Repository, ResourceVersion};
use crate::auth::{Permission, Principal};
use crate::fhir::instant::now_millis;
use crate::fhir::resource::ResourceType;
use crate::index::{CandidateQuery, HistoryQuery, HistoryScope, VersionRecord};
use crate::search::entries::{SearchEntry, Value};
use crate::search::plan::{Filter, KeyCondition, Plan, SortValue, Test, plan, sort_value};
use crate::search::query::{Include, QueryError, SearchRequest, SortKey, TokenSystem};

/// Candidates asked of the store at a time.
const BATCH: usize = 500;
/// Most resources a chain's or `_has`'s inner search may match.
pub const MAX_CHAIN_MATCHES: usize = 1_000;
/// Most matches a sorted search may have (they are all sorted in memory).
pub const MAX_SORTED: usize = 10_000;
/// Most writes since a snapshot a later page will replay; past it the search must start over.
pub const MAX_CHANGES_SINCE_SNAPSHOT: usize = 10_000;
/// Most resources `_include` and `_revinclude` add to one page.
pub const MAX_INCLUDES: usize = 1_000;
/// Most rounds of `:iterate`.
const MAX_ITERATIONS: usize = 3;
/// Most candidates one search examines: a bound on the work of a request.
pub const MAX_EXAMINED: usize = 200_000;

/// Where a search looks.
#[derive(Clone, Debug)]
pub struct SearchScope {
    /// The types searched (one for a type search, several for a system search).
    pub types: Vec<ResourceType>,
    /// A compartment search (`Patient/123/Observation`): only that patient's resources.
    pub patient: Option<String>,
}

/// Which page.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PageRequest {
    /// The snapshot time of a later page (ms); the first page takes the current time.
    pub snapshot: Option<i64>,
    /// Continue after this (type, id) (unsorted searches).
    pub after: Option<(String, String)>,
    /// Skip this many matches (sorted searches).
    pub offset: usize,
    /// The page size; 0 asks only for the total.
    pub count: usize,
}

/// Where the next page starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NextPage {
    After(String, String),
    Offset(usize),
}

/// One page of results.
#[derive(Debug)]
pub struct SearchPage {
    pub matches: Vec<ResourceVersion>,
    /// Resources added by `_include` / `_revinclude`.
    pub included: Vec<ResourceVersion>,
    /// The number of matches, when known (always for a sorted search, a count, or a search
    /// whose matches all fit on this page; on request otherwise).
    pub total: Option<usize>,
    pub snapshot: i64,
    pub next: Option<NextPage>,
}

/// A resource that passed the plan: its row (the version current at the snapshot), entries,
/// and content if authorizing it opened it.
struct Matched {
    record: VersionRecord,
    entries: Vec<SearchEntry>,
    opened: Option<Vec<u8>>,
}

fn decode_entries(bytes: &[u8]) -> Result<Vec<SearchEntry>, RepoError> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_slice(bytes)
        .map_err(|e| RepoError::Integrity(format!("unreadable search entries: {e}")))
}

fn key_ranges(condition: Option<KeyCondition>) -> Option<Vec<(String, String)>> {
    condition.map(|c| match c {
        KeyCondition::Equals(keys) => keys
            .into_iter()
            .map(|k| crate::index::equality_range(&k))
            .collect(),
        KeyCondition::Ranges(ranges) => ranges,
    })
}

fn too_costly(why: String) -> RepoError {
    RepoError::Search(QueryError::TooCostly(why))
}

impl Repository {
    /// Runs `request` over `scope` for `principal` and returns the page asked for.
    pub async fn search(
        &self,
        principal: &Principal,
        scope: &SearchScope,
        request: &SearchRequest,
        page: &PageRequest,
        local_base: &str,
    ) -> Result<SearchPage, RepoError> {
        for ty in &scope.types {
            self.require_interaction(principal, Permission::Search, Some(*ty))
                .await?;
        }
        let snapshot = page.snapshot.unwrap_or_else(now_millis);
        let types: Vec<String> = scope.types.iter().map(|t| t.as_str().to_owned()).collect();
        let patient = scope
            .patient
            .clone()
            .or_else(|| narrowed_patient(principal, &scope.types));
        let planned = plan(&request.criteria, local_base)
            .map_err(|e| RepoError::Search(QueryError::Invalid(e.0)))?;
        let resolved = self
            .resolve(planned, &types, patient.as_deref(), snapshot)
            .await?;
        let sorted = !request.sort.is_empty();
        let want = if sorted {
            MAX_SORTED + 1
        } else {
            // A page and one more (is there a next page?); a count needs them all.
            if page.count == 0 {
                usize::MAX
            } else {
                page.count + 1
            }
        };
        let after = if sorted { None } else { page.after.clone() };
        let search = Run {
            principal: Some(principal),
            types: &types,
            patient: patient.as_deref(),
            snapshot,
        };
        let (mut matches, exhausted) = self.matching(&search, &resolved, after, want).await?;
        if sorted && matches.len() > MAX_SORTED {
            return Err(too_costly(format!(
                "a sorted search may have at most {MAX_SORTED} matches; narrow it, or sort by _id"
            )));
        }
        let mut total = (exhausted || sorted || page.count == 0).then_some(matches.len());
        if sorted {
            sort(&mut matches, &request.sort);
            total = Some(matches.len());
        }
        let next;
        if sorted {
            let end = (page.offset + page.count).min(matches.len());
            next = (end < matches.len()).then_some(NextPage::Offset(end));
            matches = matches
                .into_iter()
                .skip(page.offset)
                .take(page.count)
                .collect();
        } else {
            let more = matches.len() > page.count;
            matches.truncate(page.count);
            next = match (more, matches.last()) {
                (true, Some(last)) => Some(NextPage::After(
                    last.record.resource_type.clone(),
                    last.record.id.clone(),
                )),
                _ => None,
            };
        }
        if total.is_none() && request.total != crate::search::query::Total::None {
            total = Some(self.count(&search, &resolved).await?);
        }
        let mut loaded = Vec::with_capacity(matches.len());
        for m in matches {
            loaded.push(self.content(m).await?);
        }
        let included = self
            .includes(principal, request, &loaded, patient.as_deref(), snapshot)
            .await?;
        Ok(SearchPage {
            matches: loaded,
            included,
            total,
            snapshot,
            next,
        })
    }

    /// Counts every match (authorized), without opening content unless a scope needs it.
    async fn count(&self, search: &Run<'_>, plan: &Plan) -> Result<usize, RepoError> {
        let (all, _) = self.matching(search, plan, None, usize::MAX).await?;
        Ok(all.len())
    }

    /// The matches of `plan` in (type, id) order after `after`, at most `want`, authorized
    /// for `search.principal` (all, without one); and whether there are no more.
    async fn matching(
        &self,
        search: &Run<'_>,
        plan: &Plan,
        after: Option<(String, String)>,
        want: usize,
    ) -> Result<(Vec<Matched>, bool), RepoError> {
        if plan.filters.iter().any(matches_nothing) {
            return Ok((Vec::new(), true));
        }
        // Writes after the snapshot: those resources are judged as they were then.
        let changed = self.changed_since(search, plan, &after).await?;
        let ranges = key_ranges(plan.narrowing());
        let mut out: Vec<Matched> = Vec::new();
        let mut cursor = after.clone();
        let mut examined = 0usize;
        let mut exhausted = false;
        while out.len() < want {
            let query = CandidateQuery {
                resource_types: search.types.to_vec(),
                key_ranges: ranges.clone(),
                patient: search.patient.map(str::to_owned),
                after: cursor.clone(),
                limit: BATCH,
            };
            let batch = self.index.candidates(&query).await?;
            let done = batch.len() < BATCH;
            examined += batch.len();
            if examined > MAX_EXAMINED {
                return Err(too_costly(format!(
                    "the search would examine more than {MAX_EXAMINED} resources; narrow it"
                )));
            }
            cursor = batch
                .last()
                .map(|c| (c.record.resource_type.clone(), c.record.id.clone()));
            for candidate in batch {
                let key = (
                    candidate.record.resource_type.clone(),
                    candidate.record.id.clone(),
                );
                if changed.contains_key(&key) || candidate.record.last_updated > search.snapshot {
                    continue;
                }
                let entries = decode_entries(&candidate.entries)?;
                if !plan.passes(&entries) {
                    continue;
                }
                if let Some(m) = self.admit(search, candidate.record, entries).await? {
                    out.push(m);
                }
            }
            if done {
                exhausted = true;
                break;
            }
        }
        // The resources written since the snapshot, as they were at it, merged in order.
        let upper = if exhausted { None } else { cursor.clone() };
        for ((rt, id), record) in changed {
            if upper.as_ref().is_some_and(|u| (&rt, &id) > (&u.0, &u.1)) {
                continue;
            }
            let Some(record) = record else { continue };
            let bytes = self
                .index
                .version_entries(&rt, &id, record.version)
                .await?
                .unwrap_or_default();
            let entries = decode_entries(&bytes)?;
            if plan.passes(&entries)
                && let Some(m) = self.admit(search, record, entries).await?
            {
                out.push(m);
            }
        }
        out.sort_by(|a, b| {
            (&a.record.resource_type, &a.record.id).cmp(&(&b.record.resource_type, &b.record.id))
        });
        let complete = exhausted && out.len() <= want;
        out.truncate(want);
        Ok((out, complete))
    }

    /// Whether the principal may see a match (and its content if deciding opened it).
    async fn admit(
        &self,
        search: &Run<'_>,
        record: VersionRecord,
        entries: Vec<SearchEntry>,
    ) -> Result<Option<Matched>, RepoError> {
        if let Some(patient) = search.patient
            && !record.patients.iter().any(|p| p == patient)
        {
            return Ok(None);
        }
        let Some(principal) = search.principal else {
            return Ok(Some(Matched {
                record,
                entries,
                opened: None,
            }));
        };
        let target = Target::Stored {
            record: &record,
            replacement: None,
        };
        match self
            .authorize(principal, Permission::Search, target)
            .await?
        {
            Decision::Denied => Ok(None),
            Decision::Allowed { opened } => Ok(Some(Matched {
                record,
                entries,
                opened,
            })),
        }
    }

    /// For every resource of the searched types written after the snapshot: the version
    /// current at the snapshot (`None` if it did not exist or was deleted then). Empty for a
    /// first page.
    async fn changed_since(
        &self,
        search: &Run<'_>,
        plan: &Plan,
        after: &Option<(String, String)>,
    ) -> Result<BTreeMap<(String, String), Option<VersionRecord>>, RepoError> {
        let mut changed = BTreeMap::new();
        let _ = plan;
        if search.snapshot >= now_millis() {
            return Ok(changed);
        }
        let scope = match search.types {
            [one] => HistoryScope::Type(one.clone()),
            _ => HistoryScope::System,
        };
        let mut query = HistoryQuery {
            scope,
            since: Some(search.snapshot + 1),
            at: None,
            after: None,
            patient: None,
            limit: BATCH,
        };
        let mut seen = 0usize;
        loop {
            let versions = self.index.history(&query).await?;
            let last = versions.last().map(crate::index::HistoryCursor::after);
            seen += versions.len();
            if seen > MAX_CHANGES_SINCE_SNAPSHOT {
                return Err(RepoError::SearchExpired(format!(
                    "more than {MAX_CHANGES_SINCE_SNAPSHOT} writes since this search's first page; run the search again"
                )));
            }
            for version in &versions {
                if !search.types.contains(&version.resource_type) {
                    continue;
                }
                let key = (version.resource_type.clone(), version.id.clone());
                if after.as_ref().is_some_and(|a| &key <= a) || changed.contains_key(&key) {
                    continue;
                }
                let at_snapshot = self.version_at(&key.0, &key.1, search.snapshot).await?;
                changed.insert(key, at_snapshot);
            }
            match last {
                Some(last) if versions.len() == BATCH => query.after = Some(last),
                _ => break,
            }
        }
        Ok(changed)
    }

    /// The version of a resource current at `at` (ms), unless it did not exist or was deleted.
    async fn version_at(
        &self,
        resource_type: &str,
        id: &str,
        at: i64,
    ) -> Result<Option<VersionRecord>, RepoError> {
        let query = HistoryQuery {
            scope: HistoryScope::Instance {
                resource_type: resource_type.to_owned(),
                id: id.to_owned(),
            },
            since: None,
            at: Some((at, at)),
            after: None,
            patient: None,
            limit: 1,
        };
        let found = self.index.history(&query).await?;
        Ok(found.into_iter().next().filter(|r| !r.deleted()))
    }

    /// Replaces chains and `_has` with the reference and id filters they amount to, for a
    /// search of `types`.
    fn resolve<'a>(
        &'a self,
        plan: Plan,
        types: &'a [String],
        patient: Option<&'a str>,
        snapshot: i64,
    ) -> futures::future::BoxFuture<'a, Result<Plan, RepoError>> {
        Box::pin(async move {
            let mut filters = Vec::with_capacity(plan.filters.len());
            for filter in plan.filters {
                filters.push(match filter {
                    Filter::Chain {
                        param,
                        targets,
                        inner,
                    } => {
                        let mut tests = Vec::new();
                        for target in targets {
                            let target_types = [target.clone()];
                            let inner = self
                                .resolve((*inner).clone(), &target_types, patient, snapshot)
                                .await?;
                            let found = self
                                .inner_matches(
                                    std::slice::from_ref(&target),
                                    &inner,
                                    patient,
                                    snapshot,
                                )
                                .await?;
                            tests.extend(
                                found
                                    .into_iter()
                                    .map(|m| Test::Ref(format!("{}/{}", target, m.record.id))),
                            );
                        }
                        Filter::Any { param, tests }
                    }
                    Filter::Has {
                        source,
                        reference,
                        inner,
                    } => {
                        let sources = [source];
                        let inner = self.resolve(*inner, &sources, patient, snapshot).await?;
                        let found = self
                            .inner_matches(&sources, &inner, patient, snapshot)
                            .await?;
                        // The ids of resources of the searched types the sources point at.
                        let mut ids = BTreeSet::new();
                        for m in found {
                            for entry in m.entries.iter().filter(|e| e.param == reference) {
                                if let Value::Ref { r, .. } = &entry.value
                                    && let Some((ty, id)) = r.split_once('/')
                                    && !id.contains('/')
                                    && types.iter().any(|t| t == ty)
                                {
                                    ids.insert(id.to_owned());
                                }
                            }
                        }
                        let tests = ids
                            .into_iter()
                            .map(|id| Test::Token {
                                system: TokenSystem::Any,
                                code: Some(id),
                            })
                            .collect();
                        Filter::Any {
                            param: "_id".into(),
                            tests,
                        }
                    }
                    other => other,
                });
            }
            Ok(Plan { filters })
        })
    }

    /// The matches of an inner (chain or `_has`) plan, bounded.
    async fn inner_matches(
        &self,
        types: &[String],
        plan: &Plan,
        patient: Option<&str>,
        snapshot: i64,
    ) -> Result<Vec<Matched>, RepoError> {
        let run = Run {
            principal: None,
            types,
            patient,
            snapshot,
        };
        let (found, _) = self
            .matching(&run, plan, None, MAX_CHAIN_MATCHES + 1)
            .await?;
        if found.len() > MAX_CHAIN_MATCHES {
            return Err(too_costly(format!(
                "a chained or _has criterion matches more than {MAX_CHAIN_MATCHES} resources; narrow it"
            )));
        }
        Ok(found)
    }

    /// A match with its content: opened while authorizing, or now.
    async fn content(&self, m: Matched) -> Result<ResourceVersion, RepoError> {
        match m.opened {
            Some(content) => Ok(ResourceVersion {
                record: m.record,
                content: Some(content),
            }),
            None => self.load(m.record).await,
        }
    }

    /// `_include` and `_revinclude` for a page, authorized like reads, without repeats.
    async fn includes(
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
        if let Decision::Denied = self.authorize(principal, Permission::Read, target).await? {
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

/// What a search (or an inner search) runs as.
struct Run<'a> {
    /// `None` for an inner search, whose matches are never shown.
    principal: Option<&'a Principal>,
    types: &'a [String],
    patient: Option<&'a str>,
    snapshot: i64,
}

/// Whether a filter can match nothing at all (a chain that found nothing).
fn matches_nothing(filter: &Filter) -> bool {
    matches!(filter, Filter::Any { tests, .. } if tests.is_empty())
}

/// The patient a principal's `patient/` scopes confine a search of `types` to.
fn narrowed_patient(principal: &Principal, types: &[ResourceType]) -> Option<String> {
    let mut confined = types
        .iter()
        .map(|t| principal.confined_to(Permission::Search, Some(t.as_str())));
    let first = confined.next().flatten()?;
    confined.all(|c| c == Some(first)).then(|| first.to_owned())
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

/// Sorts matches by the sort keys (a resource without a value for a key sorts last), then by
/// (type, id) for a total order.
fn sort(matches: &mut [Matched], keys: &[SortKey]) {
    let mut values: HashMap<(String, String), Vec<Option<SortValue>>> = HashMap::new();
    for m in matches.iter() {
        let v = keys
            .iter()
            .map(|k| {
                special_sort_value(m, k).or_else(|| sort_value(&m.entries, &k.code, k.descending))
            })
            .collect();
        values.insert((m.record.resource_type.clone(), m.record.id.clone()), v);
    }
    matches.sort_by(|a, b| {
        let va = &values[&(a.record.resource_type.clone(), a.record.id.clone())];
        let vb = &values[&(b.record.resource_type.clone(), b.record.id.clone())];
        for (i, key) in keys.iter().enumerate() {
            let ordering = match (&va[i], &vb[i]) {
                (Some(x), Some(y)) if key.descending => y.cmp(x),
                (Some(x), Some(y)) => x.cmp(y),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => std::cmp::Ordering::Equal,
            };
            if ordering != std::cmp::Ordering::Equal {
                return ordering;
            }
        }
        (&a.record.resource_type, &a.record.id).cmp(&(&b.record.resource_type, &b.record.id))
    });
}

/// `_id` and `_lastUpdated` sort by the row itself.
fn special_sort_value(m: &Matched, key: &SortKey) -> Option<SortValue> {
    match key.code.as_str() {
        "_id" => Some(SortValue::Text(m.record.id.clone())),
        "_lastUpdated" => Some(SortValue::Number(m.record.last_updated as f64)),
        _ => None,
    }
}
