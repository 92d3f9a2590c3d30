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

mod include;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::authorize::{Decision, Target};
use super::{RepoError, Repository, ResourceVersion};
use crate::auth::{Permission, Principal};
use crate::fhir::instant::now_millis;
use crate::fhir::resource::ResourceType;
use crate::index::{CandidateQuery, HistoryQuery, HistoryScope, VersionRecord};
use crate::search::codec;
use crate::search::entries::{SearchEntry, Value};
use crate::search::plan::{Filter, KeyCondition, Plan, SortValue, Test, plan, sort_value};
use crate::search::query::{QueryError, SearchRequest, SortKey, TokenSystem, Total};

/// Candidates asked of the store at first: a page's worth and some to spare for those the
/// exact tests reject; each further round asks twice as many, up to `MAX_BATCH` (a store
/// finds a batch by scanning its key ranges again, so few rounds keep a long search linear).
const FIRST_BATCH: usize = 100;
const MAX_BATCH: usize = 8_000;
/// Versions asked of history at a time (writes since a snapshot).
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
    /// The total an earlier page of this search gave (at the same snapshot it is the same).
    pub total: Option<usize>,
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

/// The entries of the parameters a plan tests (`tested`) and `keep` names.
fn decode_wanted(
    bytes: &[u8],
    tested: &[&str],
    keep: Keep<'_>,
) -> Result<Vec<SearchEntry>, RepoError> {
    let decoded = match keep {
        Keep::All => codec::decode(bytes, |_| true),
        Keep::Plan => codec::decode(bytes, |p| tested.contains(&p)),
        Keep::Also(also) => codec::decode(bytes, |p| {
            tested.contains(&p) || also.iter().any(|a| a == p)
        }),
    };
    decoded.map_err(|e| RepoError::Integrity(e.to_string()))
}

fn decode_entries(bytes: &[u8]) -> Result<Vec<SearchEntry>, RepoError> {
    codec::decode(bytes, |_| true).map_err(|e| RepoError::Integrity(e.to_string()))
}

/// The key ranges a store finds candidates by, from a plan's narrowing condition.
pub fn key_ranges(condition: Option<KeyCondition>) -> Option<Vec<(String, String)>> {
    condition.map(|c| match c {
        KeyCondition::Equals(keys) => keys
            .into_iter()
            .map(|k| crate::index::equality_range(&k))
            .collect(),
        KeyCondition::Ranges(ranges) => ranges,
    })
}

/// The key ranges to find a search's candidates by: when a patient bounds the search, that
/// patient's compartment key (a patient's resources are few) unless the plan looks up ids;
/// otherwise the plan's narrowing.
pub fn candidate_ranges(
    narrowing: Option<KeyCondition>,
    patient: Option<&str>,
) -> Option<Vec<(String, String)>> {
    let by_id = |keys: &std::collections::BTreeSet<String>| {
        let id_prefix = format!("_id{}", crate::search::keys::SEP);
        keys.iter().all(|k| k.starts_with(&id_prefix))
    };
    match (narrowing, patient) {
        (Some(KeyCondition::Equals(keys)), _) if by_id(&keys) => {
            key_ranges(Some(KeyCondition::Equals(keys)))
        }
        (_, Some(patient)) => Some(vec![crate::index::equality_range(
            &crate::search::keys::compartment_key(patient),
        )]),
        (narrowing, None) => key_ranges(narrowing),
    }
}

fn too_costly(why: String) -> RepoError {
    RepoError::Search(QueryError::TooCostly(why))
}

impl Repository {
    /// Runs `request` over `scope` for `principal` and returns the page asked for, within
    /// the search time limit (a search past it is refused as too costly, not left running).
    pub async fn search(
        &self,
        principal: &Principal,
        scope: &SearchScope,
        request: &SearchRequest,
        page: &PageRequest,
        local_base: &str,
    ) -> Result<SearchPage, RepoError> {
        let limit = self.search_time_limit;
        let run = self.search_unbounded(principal, scope, request, page, local_base);
        match tokio::time::timeout(limit, run).await {
            Ok(result) => result,
            Err(_) => Err(too_costly(format!(
                "the search took longer than {} ms; narrow it",
                limit.as_millis()
            ))),
        }
    }

    async fn search_unbounded(
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
        let first_page = after.is_none() && page.offset == 0;
        let sort_params: Vec<String> = request.sort.iter().map(|k| k.code.clone()).collect();
        let search = Run {
            principal: Some(principal),
            types: &types,
            patient: patient.as_deref(),
            snapshot,
            budget: MAX_EXAMINED,
            keep: Keep::Also(&sort_params),
        };
        let (mut matches, exhausted) = self.matching(&search, &resolved, after, want).await?;
        if sorted && matches.len() > MAX_SORTED {
            return Err(too_costly(format!(
                "a sorted search may have at most {MAX_SORTED} matches; narrow it, or sort by _id"
            )));
        }
        // Known for free: every match seen (on the first page only: a later one saw only
        // those after its position), or carried from the first page.
        let mut total = page
            .total
            .or(((exhausted && first_page) || sorted || page.count == 0).then_some(matches.len()));
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
        total = match (total, request.total) {
            (Some(known), _) => Some(known),
            (None, Total::None) => None,
            (None, Total::Accurate | Total::Estimate) => {
                Some(self.count(&search, &resolved).await?)
            }
            // Counting would examine every match: a total costs nothing only when known.
            (None, Total::IfKnown) => None,
        };
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
        let ranges = candidate_ranges(plan.narrowing(), search.patient);
        let tested = plan.params();
        let mut out: Vec<Matched> = Vec::new();
        let mut cursor = after.clone();
        let mut examined = 0usize;
        let mut exhausted = false;
        let mut batch_size = FIRST_BATCH.max(want.saturating_add(1).min(MAX_BATCH));
        'rounds: while out.len() < want {
            let query = CandidateQuery {
                resource_types: search.types.to_vec(),
                key_ranges: ranges.clone(),
                patient: search.patient.map(str::to_owned),
                after: cursor.clone(),
                limit: batch_size,
            };
            let batch = self.index.candidates(&query).await?;
            let last_round = batch.len() < batch_size;
            let in_batch = batch.len();
            for (n, candidate) in batch.into_iter().enumerate() {
                examined += 1;
                if examined > search.budget {
                    return Err(too_costly(format!(
                        "the search would examine more than {} resources; narrow it",
                        search.budget
                    )));
                }
                let key = (
                    candidate.record.resource_type.clone(),
                    candidate.record.id.clone(),
                );
                cursor = Some(key.clone());
                if !changed.contains_key(&key) && candidate.record.last_updated <= search.snapshot {
                    let entries = decode_wanted(&candidate.entries, &tested, search.keep)?;
                    if plan.passes(&entries)
                        && let Some(m) = self.admit(search, candidate.record, entries).await?
                    {
                        out.push(m);
                    }
                }
                if out.len() >= want {
                    // Enough; the rest of the batch is for another page.
                    exhausted = last_round && n + 1 == in_batch;
                    break 'rounds;
                }
            }
            if last_round {
                exhausted = true;
                break;
            }
            batch_size = (batch_size * 2).min(MAX_BATCH);
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
            let entries = decode_wanted(&bytes, &tested, search.keep)?;
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
            Decision::Denied(_) => Ok(None),
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
                                    Keep::Plan,
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
                        let keep = [reference.clone()];
                        let found = self
                            .inner_matches(&sources, &inner, patient, snapshot, Keep::Also(&keep))
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
        keep: Keep<'_>,
    ) -> Result<Vec<Matched>, RepoError> {
        let run = Run {
            principal: None,
            types,
            patient,
            snapshot,
            budget: MAX_EXAMINED,
            keep,
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
}

/// What a search (or an inner search) runs as.
#[derive(Clone, Copy)]
struct Run<'a> {
    /// `None` for an inner search, whose matches are never shown.
    principal: Option<&'a Principal>,
    types: &'a [String],
    patient: Option<&'a str>,
    snapshot: i64,
    /// Most candidates it may examine.
    budget: usize,
    /// The entries its matches keep, besides those its plan tests.
    keep: Keep<'a>,
}

/// Which entries of a match are decoded besides those the plan tests (the others are skipped
/// undecoded: most of a candidate's cost).
#[derive(Clone, Copy)]
enum Keep<'a> {
    Plan,
    Also(&'a [String]),
    All,
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
