//! What a Bulk Data export may hold for a principal: the current versions of one type, page
//! by page, each judged by the same `authorize` as a read (scopes, then the patient's consent),
//! so an export can never hold a resource its client could not have read one at a time.
//!
//! The pages come from the type's history (newest first) rather than from a search: a version
//! row says by itself whether it is current and whose compartment it is in, so rows that are
//! superseded, deleted or outside the export's patients are dropped before anything is fetched
//! or opened, and `_since` is the history's own filter.

use futures::StreamExt;

use super::read::Visible;
use super::{RepoError, Repository, ResourceVersion};
use crate::auth::{Permission, Principal};
use crate::fhir::json::Json;
use crate::fhir::resource::ResourceType;
use crate::index::{HistoryCursor, HistoryQuery, HistoryScope, VersionRecord};

/// How many versions are opened at once while a page is read (blob gets are the cost).
const OPEN_AT_ONCE: usize = 16;

/// Which patients' data an export is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cohort {
    /// Every resource (`GET /$export`).
    Everyone,
    /// Every resource in some patient's compartment (`GET /Patient/$export`).
    AllPatients,
    /// Resources in these patients' compartments (`GET /Group/{id}/$export`).
    Patients(Vec<String>),
}

impl Cohort {
    fn admits(&self, record: &VersionRecord) -> bool {
        match self {
            Cohort::Everyone => true,
            Cohort::AllPatients => !record.patients.is_empty(),
            Cohort::Patients(ids) => record.patients.iter().any(|p| ids.contains(p)),
        }
    }
}

/// One page of an export: what the principal may have, and where the next page starts
/// (`None`: the type is done).
pub struct ExportPage {
    pub versions: Vec<ResourceVersion>,
    pub next: Option<HistoryCursor>,
}

impl Repository {
    /// Checks that `principal` may export `resource_type` at all (a search of it), before a
    /// job is started for it.
    pub async fn may_export(
        &self,
        principal: &Principal,
        resource_type: ResourceType,
    ) -> Result<(), RepoError> {
        self.require_interaction(principal, Permission::Search, Some(resource_type))
            .await
    }

    /// The types among `types` the principal's scopes let it search: an export with no
    /// `_type` asks for "everything I may have", not for a refusal over one type.
    pub fn exportable(&self, principal: &Principal, types: &[ResourceType]) -> Vec<ResourceType> {
        types
            .iter()
            .copied()
            .filter(|t| principal.check(Permission::Search, t.as_str()).is_ok())
            .collect()
    }

    /// The members of Group `id` that are patients (`Patient/x` → `x`), read as `principal`
    /// may read the Group.
    pub async fn group_patients(
        &self,
        principal: &Principal,
        id: &str,
    ) -> Result<Vec<String>, RepoError> {
        let group = self
            .read(principal, ResourceType::parse("Group")?, id)
            .await?;
        let content = group.content.unwrap_or_default();
        let group = crate::fhir::json::parse(&content)
            .map_err(|e| RepoError::Integrity(format!("Group/{id}: {e}")))?;
        let mut patients: Vec<String> = group
            .get("member")
            .and_then(Json::as_array)
            .unwrap_or_default()
            .iter()
            .filter(|member| !matches!(member.get("inactive"), Some(Json::Bool(true))))
            .filter_map(|member| member.get("entity")?.get("reference")?.as_str())
            .filter_map(|reference| reference.strip_prefix("Patient/"))
            .map(str::to_owned)
            .collect();
        patients.sort();
        patients.dedup();
        Ok(patients)
    }

    /// One page (at most `limit` rows of history read) of the current versions of
    /// `resource_type` changed since `since`, in `cohort`, that `principal` may read.
    pub async fn export_page(
        &self,
        principal: &Principal,
        resource_type: ResourceType,
        since: Option<i64>,
        cohort: &Cohort,
        after: Option<HistoryCursor>,
        limit: usize,
    ) -> Result<ExportPage, RepoError> {
        let query = HistoryQuery {
            scope: HistoryScope::Type(resource_type.as_str().to_owned()),
            since,
            at: None,
            after,
            patient: principal
                .confined_to(Permission::Search, Some(resource_type.as_str()))
                .map(str::to_owned),
            limit,
        };
        let records = self.index.history(&query).await?;
        let next = if records.len() < limit {
            None
        } else {
            records.last().map(HistoryCursor::after)
        };
        let wanted = records
            .into_iter()
            .filter(|r| r.superseded_at.is_none() && !r.deleted() && cohort.admits(r));
        let judged: Vec<Result<Visible, RepoError>> = futures::stream::iter(wanted)
            .map(|record| self.visible(principal, Permission::Read, record))
            .buffered(OPEN_AT_ONCE)
            .collect()
            .await;
        let mut versions = Vec::new();
        for visible in judged {
            if let Visible::Yes(version) = visible? {
                versions.push(version);
            }
        }
        Ok(ExportPage { versions, next })
    }
}
