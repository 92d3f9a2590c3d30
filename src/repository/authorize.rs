//! The repository's one authorization decision. Every interaction calls `authorize` first for
//! the interaction itself (may these scopes do this to this type at all?) and then for each
//! version it touches: the version read, the version replaced, the version about to be written.
//! So a rule added here holds on every path at once and cannot be forgotten on one. Two rules
//! are checked, in order: the token's scopes, then the patient's consent on chain (`consent`),
//! which reads only the in-memory consent cache.
//!
//! A version's patient compartment is known from its index row, so most decisions open
//! nothing; only a scope carrying a query (`patient/Observation.rs?category=laboratory`) needs
//! the content, and then it is opened here and handed back, so the caller never opens it twice.

use super::{RepoError, Repository};
use crate::auth::{Permission, Principal};
use crate::consent::{Access, Action};
use crate::fhir::json::Json;
use crate::fhir::resource::ResourceType;
use crate::index::VersionRecord;

/// What is being authorized.
pub(super) enum Target<'a> {
    /// The interaction before any resource is known: `Some(type)` for a type's interactions,
    /// `None` for one that spans every type (system history).
    Interaction(Option<ResourceType>),
    /// A stored version. `replacement` is the content that will take its place, which judges
    /// a deleted version (it has no content of its own, but keeps its compartment).
    Stored {
        record: &'a VersionRecord,
        replacement: Option<&'a Json>,
    },
    /// Content about to be written, whose compartment is `patients`.
    Proposed {
        resource_type: ResourceType,
        patients: &'a [String],
        content: &'a Json,
    },
}

/// The answer for one target.
pub(super) enum Decision {
    /// Allowed. `opened` is the stored content if it had to be opened to decide.
    Allowed {
        opened: Option<Vec<u8>>,
    },
    Denied(Refusal),
}

/// Which rule refused.
#[derive(Clone, Copy, Debug)]
pub(super) enum Refusal {
    Scopes,
    Consent,
}

impl Repository {
    /// May `principal` do `permission` to `target`? `Err` only when deciding failed (a
    /// backend, or stored content that fails its checks); a refusal is `Ok(Denied)`, or for an
    /// interaction the 403 itself.
    pub(super) async fn authorize(
        &self,
        principal: &Principal,
        permission: Permission,
        target: Target<'_>,
    ) -> Result<Decision, RepoError> {
        let noted = principal
            .touched
            .as_ref()
            .and_then(|touched| match &target {
                Target::Interaction(_) => None,
                Target::Stored { record, .. } => Some((
                    touched,
                    format!("{}/{}", record.resource_type, record.id),
                    record.patients.clone(),
                )),
                Target::Proposed { .. } => None,
            });
        let decision = self.decide(principal, permission, target).await?;
        // Every version judged is on the request's AuditEvent, allowed or not; content about
        // to be written is noted by the write, which knows its id.
        if let Some((touched, reference, patients)) = noted {
            let allowed = matches!(decision, Decision::Allowed { .. });
            touched.judged(reference, &patients, allowed);
        }
        Ok(decision)
    }

    async fn decide(
        &self,
        principal: &Principal,
        permission: Permission,
        target: Target<'_>,
    ) -> Result<Decision, RepoError> {
        match target {
            Target::Interaction(resource_type) => {
                match resource_type {
                    Some(rt) => principal.check(permission, rt.as_str())?,
                    None => principal.check_any(permission)?,
                }
                Ok(Decision::Allowed { opened: None })
            }
            Target::Proposed {
                resource_type,
                patients,
                content,
            } => {
                if !principal.reaches(permission, resource_type.as_str(), patients, Some(content)) {
                    return Ok(Decision::Denied(Refusal::Scopes));
                }
                self.consent_to(
                    principal,
                    permission,
                    resource_type.as_str(),
                    patients,
                    None,
                )
                .await
            }
            Target::Stored {
                record,
                replacement,
            } => {
                let rt = record.resource_type.as_str();
                if record.deleted() || !principal.needs_content(permission, rt) {
                    let content = if record.deleted() { replacement } else { None };
                    if !principal.reaches(permission, rt, &record.patients, content) {
                        return Ok(Decision::Denied(Refusal::Scopes));
                    }
                    return self
                        .consent_to(principal, permission, rt, &record.patients, None)
                        .await;
                }
                let opened = self.load(record.clone()).await?.content;
                let parsed = opened
                    .as_deref()
                    .and_then(|c| crate::fhir::json::parse(c).ok());
                if !principal.reaches(permission, rt, &record.patients, parsed.as_ref()) {
                    return Ok(Decision::Denied(Refusal::Scopes));
                }
                self.consent_to(principal, permission, rt, &record.patients, opened)
                    .await
            }
        }
    }

    /// `authorize` for a stored version that must be allowed: the 403 naming it otherwise.
    pub(super) async fn require(
        &self,
        principal: &Principal,
        permission: Permission,
        record: &VersionRecord,
        replacement: Option<&Json>,
    ) -> Result<Option<Vec<u8>>, RepoError> {
        let target = Target::Stored {
            record,
            replacement,
        };
        match self.authorize(principal, permission, target).await? {
            Decision::Allowed { opened } => Ok(opened),
            Decision::Denied(refusal) => Err(RepoError::refused(record, refusal)),
        }
    }

    /// `authorize` for an interaction: the 403 if the scopes do not allow it at all.
    pub(super) async fn require_interaction(
        &self,
        principal: &Principal,
        permission: Permission,
        resource_type: Option<ResourceType>,
    ) -> Result<(), RepoError> {
        self.authorize(principal, permission, Target::Interaction(resource_type))
            .await
            .map(|_| ())
    }
}

impl Repository {
    /// The patient's consent, once the scopes allow: a decision from the consent cache, and
    /// a break-glass access recorded on chain when the principal asked for one.
    async fn consent_to(
        &self,
        principal: &Principal,
        permission: Permission,
        resource_type: &str,
        patients: &[String],
        opened: Option<Vec<u8>>,
    ) -> Result<Decision, RepoError> {
        let Some(consent) = self.consent.get() else {
            return Ok(Decision::Allowed { opened });
        };
        let action = match permission {
            Permission::Read | Permission::Search => Action::Read,
            Permission::Create | Permission::Update | Permission::Delete => Action::Write,
        };
        let mut access = consent.decide(principal, resource_type, patients, action);
        // The glass is broken by reading one of the patient's resources; a listing with the
        // header then shows that patient's data for the window, but never breaks the glass
        // for every patient it happens to meet.
        if access == Access::Denied
            && principal.break_glass.is_some()
            && permission == Permission::Read
        {
            consent.break_glass(principal, patients).await?;
            access = consent.decide(principal, resource_type, patients, action);
        }
        match access {
            Access::Allowed => Ok(Decision::Allowed { opened }),
            Access::Denied => Ok(Decision::Denied(Refusal::Consent)),
            Access::Unknown => Err(RepoError::Unavailable {
                component: "ledger",
                detail: format!(
                    "the consent registry has not been heard from within {} s, so no grant \
                     can be checked (patient data is refused until it is)",
                    consent.settings().stale_after.as_secs()
                ),
            }),
        }
    }
}
