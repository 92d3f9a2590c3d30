//! The consent workflow around grants: a practitioner's access requests and the patient's
//! answers, the grants held by the caller, and the directory of possible grantees.
//!
//! Requests and answers are written by the server itself (as `Principal::internal`), after
//! its own checks: the practitioner may not write into the patient's record (no grant lets
//! them), and the patient's answer changes a resource whose meaning the server keeps (an
//! approval must name a grant that really is on chain, from this patient to this requester).
//! What each call touched is still noted on the caller's AuditEvent. None of it grants
//! anything: access comes only from the signed grant on chain (`consent::decide`).

use serde_json::Value;

use super::conditional::Criteria;
use super::search::{PageRequest, SearchScope};
use super::{Precondition, RepoError, Repository, ResourceVersion, Written};
use crate::auth::{Permission, Principal};
use crate::consent::ConsentError;
use crate::consent::requests::{self, AccessRequest, Answer, Asked};
use crate::fhir::instant::now_millis;
use crate::fhir::resource::ResourceType;
use crate::fhir::validate::Handling;
use crate::search::query::{self, Strictness};

/// Most entries of the grantee directory.
pub const MAX_GRANTEES: usize = 50;

impl Repository {
    /// `POST Consent/$request-access`: the practitioner's pending request to the patient, made
    /// now, or the one already pending (`created: false`): at most one per practitioner and
    /// patient, across concurrent requests and replicas (the conditional create's claim).
    pub async fn request_access(
        &self,
        principal: &Principal,
        asked: Asked,
        local_base: &str,
    ) -> Result<Written, RepoError> {
        let request = AccessRequest::new(principal, asked)?;
        self.require_patient(&request.patient).await?;
        let criteria = Criteria::parse(&request.pending_criteria(), "access request")?;
        let body = serde_json::to_vec(&request.consent(now_millis()))
            .map_err(|e| RepoError::Integrity(e.to_string()))?;
        let outcome = self
            .create_if_none_exist(
                &Principal::internal(),
                ResourceType::CONSENT,
                body,
                &criteria,
                Handling::Strict,
                local_base,
            )
            .await?;
        let written = outcome.into_written();
        note(
            principal,
            &written.version,
            std::slice::from_ref(&request.patient),
            true,
        );
        Ok(written)
    }

    /// `POST Consent/{id}/$answer`: the patient of a pending request declines it (`rejected`)
    /// or approves it with the grant they signed for the requester (`inactive`, naming the
    /// grant). Anyone but that patient: 403.
    pub async fn answer_request(
        &self,
        principal: &Principal,
        id: &str,
        answer: Answer,
    ) -> Result<ResourceVersion, RepoError> {
        let internal = Principal::internal();
        let stored = self.read(&internal, ResourceType::CONSENT, id).await?;
        let request: Value = stored
            .content
            .as_deref()
            .and_then(|c| serde_json::from_slice(c).ok())
            .ok_or_else(|| RepoError::Integrity(format!("Consent/{id} is unreadable")))?;
        let patient = requests::patient_of(&request)
            .filter(|_| requests::is_access_request(&request))
            .ok_or_else(|| {
                RepoError::Consent(ConsentError::Unprocessable(format!(
                    "Consent/{id} is not an access request"
                )))
            })?
            .to_owned();
        let is_patient = principal.own_patient() == Some(patient.as_str());
        note(
            principal,
            &stored,
            std::slice::from_ref(&patient),
            is_patient,
        );
        if !is_patient {
            return Err(RepoError::Forbidden(format!(
                "only Patient/{patient} answers this access request"
            )));
        }
        principal.check(Permission::Update, ResourceType::CONSENT.as_str())?;
        if !requests::is_pending(&request) {
            return Err(RepoError::Consent(ConsentError::Conflict(
                "this access request was answered already".into(),
            )));
        }
        if let Answer::Approved { grant } = answer {
            let requester = requests::requester_of(&request).unwrap_or_default();
            let consent = self.consent_in_force()?;
            if !consent.is_active_grant(grant, &patient, requester) {
                return Err(RepoError::Consent(ConsentError::Unprocessable(format!(
                    "grant {grant} is not an active grant on chain from Patient/{patient} to \
                     {requester}: sign the grant first (Consent/$prepare, then POST Consent)"
                ))));
            }
            // The grant's Consent exists (it is what POST Consent answered); written now if the
            // mirror has not caught up, so the reference resolves.
            self.mirror_one(consent, grant).await?;
        }
        let body = serde_json::to_vec(&requests::answered(request, answer))
            .map_err(|e| RepoError::Integrity(e.to_string()))?;
        let written = self
            .update(
                &internal,
                ResourceType::CONSENT,
                id,
                body,
                Precondition::Version(stored.record.version),
                Handling::Strict,
            )
            .await
            .map_err(|e| match e {
                RepoError::PreconditionFailed { .. } => RepoError::Consent(ConsentError::Conflict(
                    "this access request changed while it was being answered".into(),
                )),
                other => other,
            })?;
        Ok(written.version)
    }

    /// `GET Consent/$granted-to-me`: the Consents mirroring the active, unexpired grants to
    /// `principal` itself (see `Consent::grants_to`), newest first.
    pub async fn granted_to(
        &self,
        principal: &Principal,
    ) -> Result<Vec<ResourceVersion>, RepoError> {
        let consent = self.consent_in_force()?;
        let mut found = Vec::new();
        for grant in consent.grants_to(principal)? {
            // `None`: a patient of another server sharing the registry, or erased.
            if let Some(version) = self.mirror_one(consent, grant.grant_id).await? {
                note(principal, &version, &version.record.patients, true);
                found.push(version);
            }
        }
        Ok(found)
    }

    /// The Practitioners and Organizations whose name contains `name` (all when empty), at
    /// most `limit` together, as directory entries (type, id and name only). Read as the
    /// server: a patient's `patient/` scopes reach no Practitioner, yet the patient must be
    /// able to pick one to grant to, and a name is all that is shown.
    pub async fn grantee_directory(
        &self,
        name: &str,
        limit: usize,
        local_base: &str,
    ) -> Result<Vec<Value>, RepoError> {
        let internal = Principal::internal();
        let registry = self.registry();
        let mut entries = Vec::new();
        for name_of_type in ["Practitioner", "Organization"] {
            let resource_type = ResourceType::parse(name_of_type)?;
            let remaining = limit.saturating_sub(entries.len());
            if remaining == 0 {
                break;
            }
            let mut pairs = Vec::new();
            if !name.is_empty() {
                pairs.push(("name:contains".to_owned(), name.to_owned()));
            }
            let request = query::parse(&registry, Some(resource_type), &pairs, Strictness::Strict)?;
            let scope = SearchScope {
                types: vec![resource_type],
                patient: None,
            };
            let page = PageRequest {
                count: remaining,
                ..PageRequest::default()
            };
            let found = self
                .search(&internal, &scope, &request, &page, local_base)
                .await?;
            entries.extend(found.matches.iter().filter_map(|version| {
                let resource: Value = serde_json::from_slice(version.content.as_deref()?).ok()?;
                requests::directory_entry(&resource)
            }));
        }
        Ok(entries)
    }
}

/// Notes on the caller's AuditEvent a version its request touched through the server's own
/// reads and writes (which, made as the server, note nothing themselves).
fn note(principal: &Principal, version: &ResourceVersion, patients: &[String], allowed: bool) {
    if let Some(touched) = &principal.touched {
        let record = &version.record;
        touched.judged(
            format!("{}/{}", record.resource_type, record.id),
            patients,
            allowed,
        );
    }
}
