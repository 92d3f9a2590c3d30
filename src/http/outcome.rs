//! The one place an error becomes an HTTP status and an OperationOutcome.
//!
//! | error                                   | status | issue code     |
//! |-----------------------------------------|--------|----------------|
//! | body not JSON / not a valid resource    | 400    | structure, value, required, ... |
//! | bad id, header or query parameter       | 400    | value / invalid |
//! | a header or feature not implemented     | 400    | not-supported  |
//! | a search value malformed / a parameter unknown (strict) / too costly | 400 | invalid / not-supported / too-costly |
//! | a later search page whose snapshot changed too much | 410 | processing |
//! | broken or truncated request stream      | 400    | structure      |
//! | unknown resource type, id, version, route; a conditional patch matching nothing | 404 | not-supported / not-found |
//! | method not allowed on the route         | 405    | not-supported  |
//! | XML or another format asked for         | 406    | not-supported  |
//! | version conflict (lost a race)          | 409    | conflict       |
//! | deleted resource or version; erased     | 410    | deleted        |
//! | If-Match not the current version, If-None-Match matching it | 412 | conflict |
//! | body over the configured limit          | 413    | too-costly     |
//! | body not sent as FHIR JSON              | 415    | not-supported  |
//! | body's resourceType/id differ from URL  | 422    | business-rule  |
//! | stored data failed an integrity check   | 500    | exception      |
//! | a handler panicked (a bug)              | 500    | exception      |
//! | the server's own signing keys unusable  | 500    | exception      |
//! | no bearer token, or an invalid one      | 401    | login (+ WWW-Authenticate) |
//! | scopes do not reach the interaction/resource | 403 | forbidden     |
//! | a backend unavailable or too slow; the ledger not heard from within the bound | 503 | transient (+ Retry-After) |
//! | consent: malformed hex or signature     | 400    | invalid        |
//! | consent: not a permit, no bound wallet, wrong signer, deadline passed, contract refused | 422 | business-rule |
//! | consent: nothing prepared matches (used, expired), nonce moved | 409 | conflict |
//! | no grant of the patient covers the access | 403  | forbidden      |
//! | export job unknown, expired, cancelled or another client's | 404 | not-found |
//! | export job failed: a backend went away / anything else | 503 / 500 | transient / exception |
//! | consent: an access request answered already | 409 | conflict |
//! | a portal file that does not exist       | 404    | not-found      |
//!
//! Must not log: logging of requests happens once, in the middleware, without bodies.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::auth::AuthError;
use crate::fhir::json::{Json, object};
use crate::fhir::{FhirError, Issue, IssueCode};
use crate::repository::RepoError;

/// Seconds a client is told to wait before retrying a 503.
const RETRY_AFTER_SECONDS: &str = "5";

/// Everything a FHIR request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{method} is not allowed here; allowed: {allow}")]
    MethodNotAllowed { method: String, allow: String },
    #[error("{0}")]
    NotAcceptable(String),
    /// A header, parameter or feature this server does not implement: refused, never ignored.
    #[error("{0}")]
    NotSupported(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("the request body exceeds the limit of {0} bytes")]
    PayloadTooLarge(usize),
    #[error("the Bundle has {entries} entries; this server takes at most {limit} in one")]
    TooManyEntries { entries: usize, limit: usize },
    /// One entry of a batch or transaction Bundle failed (its position, from 0).
    #[error("entry {position}: {error}")]
    Entry {
        position: usize,
        error: Box<ApiError>,
    },
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Bulk(#[from] crate::bulk::BulkError),
    #[error(transparent)]
    Portal(#[from] crate::portal::PortalError),
    /// A bug: a handler panicked. Says nothing more, since a panic's message may quote input.
    #[error("internal error: the request was not completed")]
    Internal,
}

impl From<FhirError> for ApiError {
    fn from(e: FhirError) -> Self {
        ApiError::Repo(RepoError::Fhir(e))
    }
}

impl ApiError {
    pub(super) fn status_and_issues(&self) -> (StatusCode, Vec<Issue>) {
        let one = |code: IssueCode| vec![Issue::error(code, self.to_string(), None)];
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, one(IssueCode::Invalid)),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, one(IssueCode::NotFound)),
            ApiError::MethodNotAllowed { .. } => {
                (StatusCode::METHOD_NOT_ALLOWED, one(IssueCode::NotSupported))
            }
            ApiError::NotSupported(_) => (StatusCode::BAD_REQUEST, one(IssueCode::NotSupported)),
            ApiError::NotAcceptable(_) => {
                (StatusCode::NOT_ACCEPTABLE, one(IssueCode::NotSupported))
            }
            ApiError::UnsupportedMediaType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                one(IssueCode::NotSupported),
            ),
            ApiError::PayloadTooLarge(_) | ApiError::TooManyEntries { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, one(IssueCode::TooCostly))
            }
            ApiError::Entry { position, error } => {
                let (status, mut issues) = error.status_and_issues();
                for issue in &mut issues {
                    issue.diagnostics = format!("entry {position}: {}", issue.diagnostics);
                }
                (status, issues)
            }
            ApiError::Internal => (StatusCode::INTERNAL_SERVER_ERROR, one(IssueCode::Exception)),
            ApiError::Repo(repo) => repo_status_and_issues(repo),
            ApiError::Bulk(bulk) => {
                use crate::bulk::BulkError;
                match bulk {
                    BulkError::NotFound(_) => (StatusCode::NOT_FOUND, one(IssueCode::NotFound)),
                    BulkError::Repo(repo) => repo_status_and_issues(repo),
                    BulkError::Failed {
                        unavailable: true, ..
                    } => (StatusCode::SERVICE_UNAVAILABLE, one(IssueCode::Transient)),
                    BulkError::Failed { .. } => {
                        (StatusCode::INTERNAL_SERVER_ERROR, one(IssueCode::Exception))
                    }
                }
            }
            ApiError::Portal(portal) => match portal {
                crate::portal::PortalError::NotFound(_) => {
                    (StatusCode::NOT_FOUND, one(IssueCode::NotFound))
                }
                crate::portal::PortalError::Demo(_) => {
                    (StatusCode::INTERNAL_SERVER_ERROR, one(IssueCode::Exception))
                }
            },
            ApiError::Auth(auth) => match auth {
                AuthError::MissingToken | AuthError::InvalidToken(_) => {
                    (StatusCode::UNAUTHORIZED, one(IssueCode::Login))
                }
                AuthError::Forbidden(_) | AuthError::OAuth { .. } => {
                    (StatusCode::FORBIDDEN, one(IssueCode::Forbidden))
                }
                AuthError::Store(_) | AuthError::Unavailable(_) => {
                    (StatusCode::SERVICE_UNAVAILABLE, one(IssueCode::Transient))
                }
                AuthError::Signing(_) => {
                    (StatusCode::INTERNAL_SERVER_ERROR, one(IssueCode::Exception))
                }
            },
        }
    }
}

fn repo_status_and_issues(error: &RepoError) -> (StatusCode, Vec<Issue>) {
    let one = |code: IssueCode| vec![Issue::error(code, error.to_string(), None)];
    match error {
        RepoError::Fhir(fhir) => {
            let status = match fhir {
                FhirError::UnknownType(_) => StatusCode::NOT_FOUND,
                FhirError::TypeMismatch { .. } | FhirError::IdMismatch { .. } => {
                    StatusCode::UNPROCESSABLE_ENTITY
                }
                FhirError::Json(_)
                | FhirError::Invalid(_)
                | FhirError::InvalidId(_)
                | FhirError::MissingId => StatusCode::BAD_REQUEST,
            };
            (status, fhir.issues())
        }
        RepoError::NotFound { .. } | RepoError::NoMatch(_) => {
            (StatusCode::NOT_FOUND, one(IssueCode::NotFound))
        }
        RepoError::Gone(_) | RepoError::Erased => (StatusCode::GONE, one(IssueCode::Deleted)),
        RepoError::PreconditionFailed { .. } => {
            (StatusCode::PRECONDITION_FAILED, one(IssueCode::Conflict))
        }
        RepoError::Unprocessable(_) => {
            (StatusCode::UNPROCESSABLE_ENTITY, one(IssueCode::Processing))
        }
        RepoError::Ambiguous(_) => (
            StatusCode::PRECONDITION_FAILED,
            one(IssueCode::MultipleMatches),
        ),
        RepoError::Forbidden(_) => (StatusCode::FORBIDDEN, one(IssueCode::Forbidden)),
        RepoError::Conflict(_) | RepoError::Index(_) => {
            (StatusCode::CONFLICT, one(IssueCode::Conflict))
        }
        RepoError::Unavailable { .. } => {
            (StatusCode::SERVICE_UNAVAILABLE, one(IssueCode::Transient))
        }
        RepoError::Integrity(_) => (StatusCode::INTERNAL_SERVER_ERROR, one(IssueCode::Exception)),
        RepoError::Search(search) => {
            use crate::search::query::QueryError;
            let code = match search {
                QueryError::Invalid(_) => IssueCode::Invalid,
                QueryError::Unsupported(_) => IssueCode::NotSupported,
                QueryError::TooCostly(_) => IssueCode::TooCostly,
            };
            (StatusCode::BAD_REQUEST, one(code))
        }
        RepoError::SearchExpired(_) => (StatusCode::GONE, one(IssueCode::Processing)),
        RepoError::ServerWritten(_) => {
            (StatusCode::METHOD_NOT_ALLOWED, one(IssueCode::NotSupported))
        }
        RepoError::Consent(consent) => {
            use crate::consent::ConsentError as C;
            match consent {
                C::Invalid(_) => (StatusCode::BAD_REQUEST, one(IssueCode::Invalid)),
                C::Unprocessable(_) => (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    one(IssueCode::BusinessRule),
                ),
                C::Forbidden(_) => (StatusCode::FORBIDDEN, one(IssueCode::Forbidden)),
                C::Conflict(_) => (StatusCode::CONFLICT, one(IssueCode::Conflict)),
                C::NotFound(_) => (StatusCode::NOT_FOUND, one(IssueCode::NotFound)),
                C::Unavailable(_) | C::Index(_) => {
                    (StatusCode::SERVICE_UNAVAILABLE, one(IssueCode::Transient))
                }
                C::Misconfigured(_) => {
                    (StatusCode::INTERNAL_SERVER_ERROR, one(IssueCode::Exception))
                }
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, issues) = self.status_and_issues();
        let mut response = outcome_response(status, &issues);
        let headers = response.headers_mut();
        match &self {
            ApiError::Auth(AuthError::MissingToken) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"fhir\""),
                );
            }
            ApiError::Auth(AuthError::InvalidToken(why)) => {
                let challenge = format!(
                    "Bearer realm=\"fhir\", error=\"invalid_token\", error_description=\"{}\"",
                    why.replace(['"', '\\'], "'")
                );
                if let Ok(value) = HeaderValue::from_str(&challenge) {
                    headers.insert(header::WWW_AUTHENTICATE, value);
                }
            }
            ApiError::Auth(AuthError::Forbidden(_)) | ApiError::Repo(RepoError::Forbidden(_)) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"fhir\", error=\"insufficient_scope\""),
                );
            }
            ApiError::Repo(RepoError::Unavailable { .. })
            | ApiError::Auth(AuthError::Store(_) | AuthError::Unavailable(_)) => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from_static(RETRY_AFTER_SECONDS),
                );
            }
            ApiError::MethodNotAllowed { allow, .. } => {
                if let Ok(value) = HeaderValue::from_str(allow) {
                    headers.insert(header::ALLOW, value);
                }
            }
            ApiError::Repo(RepoError::ServerWritten(_)) => {
                headers.insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            }
            // The body may not have been read to its end: nothing more can follow on this
            // connection.
            ApiError::PayloadTooLarge(_) => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            ApiError::Repo(RepoError::Gone(record)) => {
                if let Ok(value) = HeaderValue::from_str(&format!("W/\"{}\"", record.version)) {
                    headers.insert(header::ETAG, value);
                }
            }
            _ => {}
        }
        response
    }
}

/// An OperationOutcome resource for `issues`: the one renderer, also used for success outcomes.
pub fn outcome_resource(issues: &[Issue]) -> Json {
    let issues = issues
        .iter()
        .map(|issue| {
            let mut entry = object([
                ("severity", Json::str(issue.severity.as_str())),
                ("code", Json::str(issue.code.as_str())),
                ("diagnostics", Json::str(&issue.diagnostics)),
            ]);
            if let (Some(expression), Some(o)) = (&issue.expression, entry.as_object_mut()) {
                o.insert("expression", Json::Array(vec![Json::str(expression)]));
            }
            entry
        })
        .collect();
    object([
        ("resourceType", Json::str("OperationOutcome")),
        ("issue", Json::Array(issues)),
    ])
}

/// A response carrying an OperationOutcome.
pub fn outcome_response(status: StatusCode, issues: &[Issue]) -> Response {
    let body = outcome_resource(issues).to_bytes();
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(super::negotiate::FHIR_JSON),
        )],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_of(error: ApiError) -> u16 {
        error.into_response().status().as_u16()
    }

    #[test]
    fn maps_each_error_to_its_status() {
        assert_eq!(status_of(FhirError::UnknownType("X".into()).into()), 404);
        assert_eq!(status_of(FhirError::MissingId.into()), 400);
        assert_eq!(
            status_of(
                FhirError::IdMismatch {
                    url: "a".into(),
                    body: "b".into()
                }
                .into()
            ),
            422
        );
        assert_eq!(status_of(ApiError::PayloadTooLarge(10)), 413);
        let unavailable = ApiError::Repo(RepoError::Unavailable {
            component: "index",
            detail: "down".into(),
        })
        .into_response();
        assert_eq!(unavailable.status(), 503);
        assert_eq!(unavailable.headers()[header::RETRY_AFTER], "5");
    }
}
