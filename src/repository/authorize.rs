//! The repository's one authorization decision. Every interaction calls `authorize` first for
//! the interaction itself (may these scopes do this to this type at all?) and then for each
//! version it touches: the version read, the version replaced, the version about to be written.
//! So a rule added here (the patient's on-chain consent is the next one) holds on every path at
//! once and cannot be forgotten on one.
//!
//! A version's patient compartment is known from its index row, so most decisions open
//! nothing; only a scope carrying a query (`patient/Observation.rs?category=laboratory`) needs
//! the content, and then it is opened here and handed back, so the caller never opens it twice.

use super::{RepoError, Repository};
use crate::auth::{Permission, Principal};
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
    Denied,
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
            } => Ok(decide(principal.reaches(
                permission,
                resource_type.as_str(),
                patients,
                Some(content),
            ))),
            Target::Stored {
                record,
                replacement,
            } => {
                let rt = record.resource_type.as_str();
                if record.deleted() || !principal.needs_content(permission, rt) {
                    let content = if record.deleted() { replacement } else { None };
                    return Ok(decide(principal.reaches(
                        permission,
                        rt,
                        &record.patients,
                        content,
                    )));
                }
                let opened = self.load(record.clone()).await?.content;
                let parsed = opened
                    .as_deref()
                    .and_then(|c| crate::fhir::json::parse(c).ok());
                if principal.reaches(permission, rt, &record.patients, parsed.as_ref()) {
                    Ok(Decision::Allowed { opened })
                } else {
                    Ok(Decision::Denied)
                }
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
            Decision::Denied => Err(RepoError::forbidden_record(record)),
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

fn decide(allowed: bool) -> Decision {
    if allowed {
        Decision::Allowed { opened: None }
    } else {
        Decision::Denied
    }
}
