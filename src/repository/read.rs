//! Read, vread and history, for a principal. A version's patient compartment is known from
//! its index row, so a `patient/` scope is checked before any blob is fetched or opened; only
//! a scope with a query (`?category=laboratory`) needs the content, and then the content is
//! opened, checked, and withheld if it does not match. Listings are narrowed to the context
//! patient in the index itself, then filtered entry by entry, so nothing outside the grant is
//! ever counted or returned.

use super::authorize::{Decision, Target};
use super::{RepoError, Repository, ResourceVersion};
use crate::auth::{Permission, Principal};
use crate::fhir::resource::{self, ResourceType};
use crate::index::{HistoryCursor, HistoryQuery, HistoryScope, VersionRecord};

impl Repository {
    /// `GET /Type/id`: the current version; 410 if it was deleted.
    pub async fn read(
        &self,
        principal: &Principal,
        resource_type: ResourceType,
        id: &str,
    ) -> Result<ResourceVersion, RepoError> {
        self.require_interaction(principal, Permission::Read, Some(resource_type))
            .await?;
        resource::check_id(id)?;
        let record = self
            .index
            .current(resource_type.as_str(), id)
            .await?
            .ok_or_else(|| RepoError::not_found(resource_type, id, None))?;
        self.open_for(principal, Permission::Read, record).await
    }

    /// `GET /Type/id/_history/n`: one version; 410 if that version is a delete.
    pub async fn vread(
        &self,
        principal: &Principal,
        resource_type: ResourceType,
        id: &str,
        version: u64,
    ) -> Result<ResourceVersion, RepoError> {
        self.require_interaction(principal, Permission::Read, Some(resource_type))
            .await?;
        resource::check_id(id)?;
        let Some(record) = self
            .index
            .version(resource_type.as_str(), id, version)
            .await?
        else {
            // An erased record's versions are gone for good: 410, like the resource itself.
            let current = self.index.current(resource_type.as_str(), id).await?;
            return Err(match current {
                Some(c) if c.method == crate::index::Method::Erase && version < c.version => {
                    RepoError::Erased
                }
                _ => RepoError::not_found(resource_type, id, Some(version)),
            });
        };
        self.open_for(principal, Permission::Read, record).await
    }

    /// A version's content for `principal`, or the refusal (403, or 410 for a delete).
    async fn open_for(
        &self,
        principal: &Principal,
        permission: Permission,
        record: VersionRecord,
    ) -> Result<ResourceVersion, RepoError> {
        match self.visible(principal, permission, record).await? {
            Visible::Yes(version) => Ok(version),
            Visible::Deleted(record) => Err(RepoError::Gone(Box::new(record))),
            Visible::No(record, refusal) => Err(RepoError::refused(&record, refusal)),
        }
    }

    /// What `principal` may see of `record`, its content opened once at most.
    pub(super) async fn visible(
        &self,
        principal: &Principal,
        permission: Permission,
        record: VersionRecord,
    ) -> Result<Visible, RepoError> {
        let target = Target::Stored {
            record: &record,
            replacement: None,
        };
        match self.authorize(principal, permission, target).await? {
            Decision::Denied(refusal) => Ok(Visible::No(record, refusal)),
            Decision::Allowed { .. } if record.deleted() => Ok(Visible::Deleted(record)),
            Decision::Allowed {
                opened: Some(content),
            } => Ok(Visible::Yes(ResourceVersion {
                record,
                content: Some(content),
            })),
            Decision::Allowed { opened: None } => self.load(record).await.map(Visible::Yes),
        }
    }

    /// The history `query` as `principal` may list it: the permission it needs (checked) and
    /// the query confined to the principal's patient, if any.
    async fn history_for(
        &self,
        principal: &Principal,
        query: &HistoryQuery,
    ) -> Result<(Permission, HistoryQuery), RepoError> {
        let (permission, resource_type) = match &query.scope {
            HistoryScope::Instance { resource_type, .. } => {
                (Permission::Read, Some(ResourceType::parse(resource_type)?))
            }
            HistoryScope::Type(resource_type) => (
                Permission::Search,
                Some(ResourceType::parse(resource_type)?),
            ),
            HistoryScope::System => (Permission::Search, None),
        };
        self.require_interaction(principal, permission, resource_type)
            .await?;
        let mut query = query.clone();
        query.patient = principal
            .confined_to(permission, resource_type.map(ResourceType::as_str))
            .map(str::to_owned);
        Ok((permission, query))
    }

    /// A page of history (at most `query.limit` entries the principal may see), with the content
    /// of every version that has some.
    pub async fn history(
        &self,
        principal: &Principal,
        query: &HistoryQuery,
    ) -> Result<Vec<ResourceVersion>, RepoError> {
        let (permission, mut query) = self.history_for(principal, query).await?;
        let wanted = query.limit;
        let mut page = Vec::with_capacity(wanted);
        // Entries the principal may not see are skipped; keep reading until the page is full
        // or the history is exhausted.
        loop {
            query.limit = wanted - page.len();
            let records = self.index.history(&query).await?;
            let exhausted = records.len() < query.limit;
            let last = records.last().map(HistoryCursor::after);
            for record in records {
                match self.visible(principal, permission, record).await? {
                    Visible::Yes(version) => page.push(version),
                    Visible::Deleted(record) => page.push(ResourceVersion {
                        record,
                        content: None,
                    }),
                    Visible::No(..) => {}
                }
            }
            if exhausted || page.len() >= wanted || last.is_none() {
                break;
            }
            query.after = last;
        }
        // An empty instance history must say why: an unknown resource (404) or one beyond
        // reach (403). Asked only then, so a non-empty page costs no extra lookup.
        if page.is_empty()
            && let HistoryScope::Instance { resource_type, id } = &query.scope
        {
            self.instance_known(principal, resource_type, id).await?;
        }
        Ok(page)
    }

    /// How many entries the whole of history `query` has for `principal` (from its start,
    /// whatever `query.after`), or `None` past `cap`: a total too costly to count.
    pub async fn history_total(
        &self,
        principal: &Principal,
        query: &HistoryQuery,
        cap: usize,
    ) -> Result<Option<usize>, RepoError> {
        const BATCH: usize = 500;
        let (permission, mut query) = self.history_for(principal, query).await?;
        query.after = None;
        let mut total = 0usize;
        loop {
            query.limit = BATCH;
            let records = self.index.history(&query).await?;
            let exhausted = records.len() < BATCH;
            query.after = records.last().map(HistoryCursor::after);
            for record in records {
                let target = Target::Stored {
                    record: &record,
                    replacement: None,
                };
                if let Decision::Allowed { .. } =
                    self.authorize(principal, permission, target).await?
                {
                    total += 1;
                }
            }
            if total > cap {
                return Ok(None);
            }
            if exhausted || query.after.is_none() {
                return Ok(Some(total));
            }
        }
    }

    /// `Ok` if the resource exists and `principal` may read it; otherwise the 404 or the 403 a
    /// read would give (decided from the index row, opening content only for a query scope).
    async fn instance_known(
        &self,
        principal: &Principal,
        resource_type: &str,
        id: &str,
    ) -> Result<(), RepoError> {
        let resource_type = ResourceType::parse(resource_type)?;
        resource::check_id(id)?;
        let current = self.index.current(resource_type.as_str(), id).await?;
        match current {
            None => Err(RepoError::not_found(resource_type, id, None)),
            Some(record) => self
                .require(principal, Permission::Read, &record, None)
                .await
                .map(|_| ()),
        }
    }
}

/// What a principal may see of one version.
pub(super) enum Visible {
    Yes(ResourceVersion),
    /// A delete the principal may know about.
    Deleted(VersionRecord),
    No(VersionRecord, super::authorize::Refusal),
}
