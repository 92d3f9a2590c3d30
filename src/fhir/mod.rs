//! Resource semantics: what a valid R4 resource is, how ids, versions and `meta` are assigned,
//! and what the server says about itself (CapabilityStatement).
//!
//! Owns: the client's JSON (`json`), R4 structure (`definitions`, `primitives`, `validate`),
//! the `meta` rules (`resource`), patches (`patch`: JSON Patch and the document of either
//! kind; `fhirpath_patch`: FHIRPath Patch), the CapabilityStatement (`capability`), and the
//! `Issue` type every room uses to explain a refusal.
//! Must not touch: storage, keys, HTTP. It turns bytes into a checked resource and back, and
//! never learns where either comes from.

pub mod capability;
pub mod definitions;
pub mod fhirpath_patch;
pub mod instant;
pub mod json;
pub mod patch;
pub mod primitives;
pub mod resource;
pub mod validate;

use std::fmt;

pub use resource::{ResourceType, new_id};

/// How bad an issue is (FHIR `IssueSeverity`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Fatal,
    Error,
    Warning,
    Information,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Fatal => "fatal",
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Information => "information",
        }
    }
}

/// What kind of issue (FHIR `IssueType`, the codes this server uses).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IssueCode {
    Invalid,
    Structure,
    Required,
    Value,
    Security,
    Login,
    Forbidden,
    Processing,
    NotSupported,
    Duplicate,
    NotFound,
    Deleted,
    TooLong,
    BusinessRule,
    Conflict,
    Transient,
    Exception,
    Timeout,
    TooCostly,
    MultipleMatches,
    Informational,
}

impl IssueCode {
    pub fn as_str(self) -> &'static str {
        match self {
            IssueCode::Invalid => "invalid",
            IssueCode::Structure => "structure",
            IssueCode::Required => "required",
            IssueCode::Value => "value",
            IssueCode::Security => "security",
            IssueCode::Login => "login",
            IssueCode::Forbidden => "forbidden",
            IssueCode::Processing => "processing",
            IssueCode::NotSupported => "not-supported",
            IssueCode::Duplicate => "duplicate",
            IssueCode::NotFound => "not-found",
            IssueCode::Deleted => "deleted",
            IssueCode::TooLong => "too-long",
            IssueCode::BusinessRule => "business-rule",
            IssueCode::Conflict => "conflict",
            IssueCode::Transient => "transient",
            IssueCode::Exception => "exception",
            IssueCode::Timeout => "timeout",
            IssueCode::TooCostly => "too-costly",
            IssueCode::MultipleMatches => "multiple-matches",
            IssueCode::Informational => "informational",
        }
    }
}

/// One `OperationOutcome.issue`: rendered by the single renderer in `http::outcome`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issue {
    pub severity: Severity,
    pub code: IssueCode,
    /// Words for a developer. Never carries health data: at most a short preview of the value
    /// that broke a rule, which the client itself sent.
    pub diagnostics: String,
    /// FHIRPath-like location in the resource (`Patient.name[0].given`), where known.
    pub expression: Option<String>,
}

impl Issue {
    pub fn error(code: IssueCode, diagnostics: String, expression: Option<String>) -> Issue {
        Issue {
            severity: Severity::Error,
            code,
            diagnostics,
            expression,
        }
    }

    pub fn warning(code: IssueCode, diagnostics: String, expression: Option<String>) -> Issue {
        Issue {
            severity: Severity::Warning,
            code,
            diagnostics,
            expression,
        }
    }

    pub fn information(diagnostics: String) -> Issue {
        Issue {
            severity: Severity::Information,
            code: IssueCode::Informational,
            diagnostics,
            expression: None,
        }
    }

    pub fn is_error(&self) -> bool {
        matches!(self.severity, Severity::Error | Severity::Fatal)
    }
}

/// Why a body or a URL is not an acceptable resource. Mapped to a status in `http::outcome`.
#[derive(Debug, thiserror::Error)]
pub enum FhirError {
    #[error("the body is not valid JSON: {0}")]
    Json(#[from] json::JsonError),
    #[error("the resource is invalid")]
    Invalid(Vec<Issue>),
    #[error("\"{0}\" is not a resource type this server supports")]
    UnknownType(String),
    #[error("\"{0}\" is not a valid id: 1-64 characters of A-Z, a-z, 0-9, '-' and '.'")]
    InvalidId(String),
    #[error("the body is a {body} but the URL names {url}")]
    TypeMismatch { url: String, body: String },
    #[error("the body's id \"{body}\" does not match the id \"{url}\" in the URL")]
    IdMismatch { url: String, body: String },
    #[error("an update must carry the resource id in the body")]
    MissingId,
}

impl FhirError {
    /// The issues to report, with the location where one is known.
    pub fn issues(&self) -> Vec<Issue> {
        match self {
            FhirError::Invalid(issues) => issues.clone(),
            FhirError::Json(e) => vec![Issue::error(
                IssueCode::Structure,
                self.to_string(),
                Some(format!("line {}, column {}", e.line, e.column)),
            )],
            FhirError::TypeMismatch { .. } => vec![Issue::error(
                IssueCode::BusinessRule,
                self.to_string(),
                Some("resourceType".into()),
            )],
            FhirError::IdMismatch { .. } | FhirError::MissingId => vec![Issue::error(
                IssueCode::BusinessRule,
                self.to_string(),
                Some("id".into()),
            )],
            FhirError::UnknownType(_) => {
                vec![Issue::error(
                    IssueCode::NotSupported,
                    self.to_string(),
                    None,
                )]
            }
            FhirError::InvalidId(_) => vec![Issue::error(IssueCode::Value, self.to_string(), None)],
        }
    }
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
