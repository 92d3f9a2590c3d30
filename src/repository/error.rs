//! The repository's one error type. Every way an interaction can fail below HTTP ends here;
//! `http::outcome` maps each variant to a status and an OperationOutcome.

use crate::fhir::FhirError;
use crate::fhir::resource::ResourceType;
use crate::index::{IndexError, VersionRecord};

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// The client's body or URL is not acceptable.
    #[error(transparent)]
    Fhir(#[from] FhirError),
    #[error("{resource_type}/{id}{} is not known", version.map(|v| format!("/_history/{v}")).unwrap_or_default())]
    NotFound {
        resource_type: &'static str,
        id: String,
        version: Option<u64>,
    },
    /// A conditional interaction that needs a match found none (a conditional patch).
    #[error("{0}")]
    NoMatch(String),
    /// The resource (or this version of it) was deleted.
    #[error("{}/{} was deleted (version {})", .0.resource_type, .0.id, .0.version)]
    Gone(Box<VersionRecord>),
    /// The content was erased (its data key destroyed); it will never be readable again.
    #[error("the content was erased at the patient's request")]
    Erased,
    /// `If-Match` or `If-None-Match` did not hold for the current version (if any).
    #[error("{}", precondition.failure(*current))]
    PreconditionFailed {
        precondition: super::Precondition,
        current: Option<u64>,
    },
    #[error("{0}")]
    Conflict(String),
    /// A request that is well-formed but cannot be carried out as asked (a patch that fails,
    /// or whose result is not a valid resource): nothing was changed.
    #[error("{0}")]
    Unprocessable(String),
    /// A conditional interaction's criteria match more resources than it may act on.
    #[error("{0}")]
    Ambiguous(String),
    /// The principal's scopes do not reach this interaction or this resource.
    #[error("{0}")]
    Forbidden(String),
    /// A backend did not answer, or answered with an error that is not the client's fault.
    #[error("the {component} is unavailable: {detail}")]
    Unavailable {
        component: &'static str,
        detail: String,
    },
    /// Stored data failed a check (CID, AEAD tag, digest): the server's fault, never the client's.
    #[error("stored data failed an integrity check: {0}")]
    Integrity(String),
    /// A search that cannot run as asked (a malformed value, an unsupported parameter under
    /// strict handling, or more work than a search may ask for).
    #[error(transparent)]
    Search(#[from] crate::search::query::QueryError),
    /// A later page of a search whose results changed too much since its first page.
    #[error("{0}")]
    SearchExpired(String),
    /// A consent request that cannot be done as asked (a bad signature, nothing prepared).
    #[error(transparent)]
    Consent(crate::consent::ConsentError),
    /// A type only the server writes (its audit trail): a client may read it, never write it.
    #[error(
        "{0}s are written by the server itself (its audit trail) and cannot be created, changed or deleted"
    )]
    ServerWritten(&'static str),
    /// Index conflicts surface here only until the repository decides what they mean.
    #[error(transparent)]
    Index(IndexError),
}

impl RepoError {
    pub fn forbidden(resource_type: ResourceType, id: &str) -> RepoError {
        RepoError::Forbidden(format!(
            "the granted scopes do not reach {resource_type}/{}",
            id.chars().take(64).collect::<String>()
        ))
    }

    /// The 403 for a stored version beyond the principal's reach.
    pub fn forbidden_record(record: &VersionRecord) -> RepoError {
        RepoError::Forbidden(format!(
            "the granted scopes do not reach {}/{}",
            record.resource_type, record.id
        ))
    }

    /// The 403 for a stored version the named rule refuses.
    pub(super) fn refused(record: &VersionRecord, refusal: super::authorize::Refusal) -> RepoError {
        match refusal {
            super::authorize::Refusal::Scopes => RepoError::forbidden_record(record),
            super::authorize::Refusal::Consent => RepoError::Forbidden(format!(
                "{}/{} is in a patient's record and no grant of that patient covers this \
                 access by this user or client (the patient grants access on chain; see \
                 Consent/$prepare)",
                record.resource_type, record.id
            )),
        }
    }

    /// The 403 for a write the named rule refuses.
    pub(super) fn refused_write(
        resource_type: ResourceType,
        id: &str,
        refusal: super::authorize::Refusal,
    ) -> RepoError {
        match refusal {
            super::authorize::Refusal::Scopes => RepoError::forbidden(resource_type, id),
            super::authorize::Refusal::Consent => RepoError::Forbidden(format!(
                "writing {resource_type} into a patient's record needs a grant of that patient \
                 covering write (create, update, delete) of {resource_type} by this user or client"
            )),
        }
    }

    pub fn not_found(resource_type: ResourceType, id: &str, version: Option<u64>) -> RepoError {
        RepoError::NotFound {
            resource_type: resource_type.as_str(),
            id: id.chars().take(64).collect(),
            version,
        }
    }
}

/// A patch that cannot be applied, of either kind: nothing was changed.
impl From<crate::fhir::patch::PatchError> for RepoError {
    fn from(e: crate::fhir::patch::PatchError) -> Self {
        RepoError::Unprocessable(e.to_string())
    }
}

impl From<IndexError> for RepoError {
    fn from(e: IndexError) -> Self {
        match e {
            IndexError::Unavailable(detail) => RepoError::Unavailable {
                component: "index",
                detail,
            },
            IndexError::Timeout(t) => RepoError::Unavailable {
                component: "index",
                detail: format!("no answer within {t:?}"),
            },
            IndexError::Corrupt(detail) => RepoError::Integrity(detail),
            conflict @ IndexError::Conflict { .. } => RepoError::Index(conflict),
        }
    }
}
