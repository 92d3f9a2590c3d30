//! SMART on FHIR: who is asking, and what they may do.
//!
//! Owns the authorization server (users, clients, the authorize/token/introspect/revoke/
//! register/launch logic in `server`), the tokens it signs (`keys`, `tokens`), the external
//! issuers it trusts (`external`), scopes v1 and v2 (`scopes`), and the `Principal` every FHIR
//! interaction is checked against: its scopes for the interaction and resource type, and, for
//! `patient/` scopes, the patient compartment of the very version touched.
//!
//! Must not know HTTP (the pages and endpoints are `http::oauth`'s) nor where state is kept
//! beyond the IndexStore's records; never logs a token, a secret or a password.

pub mod accounts;
pub mod external;
pub mod keys;
pub mod password;
pub mod records;
pub mod scopes;
pub mod server;
pub mod tokens;

use crate::fhir::json::Json;
use crate::index::IndexError;
use crate::search::fhirpath::Node;
use crate::search::params::Registry;
pub use scopes::{Context, Permission, Scopes};

/// The authenticated party of a request, from a verified access token.
#[derive(Clone, Debug)]
pub struct Principal {
    /// `sub` of the token: the user, or the client for a backend service.
    pub subject: String,
    pub client_id: String,
    /// Who issued the token: this server's base URL, or a trusted external issuer.
    pub issuer: String,
    pub scopes: Scopes,
    /// The launch context patient (id), which `patient/` scopes are confined to.
    pub patient: Option<String>,
    /// `Patient/123`, `Practitioner/abc`: the user as a FHIR resource.
    pub fhir_user: Option<String>,
    /// Whether the client is a custodian of this server (the EHR of record), read from its
    /// registration when the token was first verified. Never for an external issuer's token.
    pub custodian: bool,
    /// The reason given for an emergency access (HL7 purpose of use `BTG`, asked for on the
    /// request), which lets a practitioner past a missing grant, on the record.
    pub break_glass: Option<String>,
    /// What the request this principal made has touched, for its AuditEvent (set per request
    /// by the HTTP face; `None` for the server's own work, which is not an interaction).
    pub touched: Option<crate::audit::Touched>,
}

impl Principal {
    /// The server acting for itself (CLI commands, background tasks): every permission.
    pub fn internal() -> Principal {
        Principal {
            subject: "intellihealth".into(),
            client_id: "intellihealth".into(),
            issuer: "intellihealth".into(),
            scopes: Scopes::parse("system/*.cruds"),
            patient: None,
            fhir_user: None,
            custodian: true,
            break_glass: None,
            touched: None,
        }
    }

    /// The patient this principal is, if it is one: its `fhirUser` is that Patient, or it has
    /// a patient in context and no other kind of user (a patient's own app). A practitioner
    /// who picked a patient at launch is not that patient.
    pub fn own_patient(&self) -> Option<&str> {
        match self.fhir_user.as_deref() {
            Some(user) => user.strip_prefix("Patient/"),
            None => self.patient.as_deref(),
        }
    }

    /// Whether any scope permits `permission` on `resource_type` at all (before knowing which
    /// resource): the 403 for an interaction the scopes do not allow.
    pub fn check(&self, permission: Permission, resource_type: &str) -> Result<(), AuthError> {
        if self
            .scopes
            .permitting(permission, resource_type)
            .next()
            .is_some()
        {
            Ok(())
        } else {
            Err(AuthError::Forbidden(format!(
                "the granted scopes do not allow {} of {resource_type}",
                describe(permission)
            )))
        }
    }

    /// Whether any scope permits `permission` on some type: the 403 for an interaction that
    /// spans every type (system history) when none does.
    pub fn check_any(&self, permission: Permission) -> Result<(), AuthError> {
        if self.scopes.permit_any(permission) {
            Ok(())
        } else {
            Err(AuthError::Forbidden(format!(
                "the granted scopes allow no {}",
                describe(permission)
            )))
        }
    }

    /// Whether some scope permitting `permission` on `resource_type` reaches a version whose
    /// patient compartment is `patients` and whose content is `content` (needed only when a
    /// scope carries a query, as `patient/Observation.rs?category=laboratory` does).
    pub fn reaches(
        &self,
        permission: Permission,
        resource_type: &str,
        patients: &[String],
        content: Option<&Json>,
    ) -> bool {
        self.scopes
            .permitting(permission, resource_type)
            .any(|scope| {
                let in_compartment = match (scope.context, &self.patient) {
                    // Reading: the version is in the patient's compartment. Writing: it is in
                    // no one else's, so a patient cannot put data into another record.
                    (Context::Patient, Some(p))
                        if permission == Permission::Read || permission == Permission::Search =>
                    {
                        patients.iter().any(|x| x == p)
                    }
                    (Context::Patient, Some(p)) => {
                        !patients.is_empty() && patients.iter().all(|x| x == p)
                    }
                    (Context::Patient, None) => false,
                    (Context::User | Context::System, _) => true,
                };
                in_compartment
                    && (scope.query.is_empty()
                        || content.is_some_and(|c| matches_query(resource_type, c, &scope.query)))
            })
    }

    /// Whether a scope with a query permits `permission` on `resource_type`, so the content
    /// must be opened before deciding (without it, such a scope can never grant).
    pub fn needs_content(&self, permission: Permission, resource_type: &str) -> bool {
        self.scopes
            .permitting(permission, resource_type)
            .any(|scope| !scope.query.is_empty())
    }

    /// The patient a listing must be narrowed to: `Some` when only `patient/` scopes allow
    /// `permission` on `resource_type`.
    pub fn confined_to(&self, permission: Permission, resource_type: Option<&str>) -> Option<&str> {
        let mut permitting = self.scopes.resources.iter().filter(|s| {
            s.permissions.contains(permission.letter())
                && resource_type.is_none_or(|t| s.resource_type.as_deref().is_none_or(|x| x == t))
        });
        let only_patient = permitting.all(|s| s.context == Context::Patient);
        if only_patient {
            // With no patient in context, confine to a patient that cannot exist.
            Some(self.patient.as_deref().unwrap_or("\u{0}"))
        } else {
            None
        }
    }
}

fn describe(permission: Permission) -> &'static str {
    match permission {
        Permission::Create => "create",
        Permission::Read => "read",
        Permission::Update => "update",
        Permission::Delete => "delete",
        Permission::Search => "search or history",
    }
}

/// Whether `resource` satisfies every `param=value` of a scope's query (token semantics:
/// `code` or `system|code`, against codes, Codings and CodeableConcepts).
fn matches_query(resource_type: &str, resource: &Json, query: &[(String, String)]) -> bool {
    let registry = Registry::r4();
    query.iter().all(|(param, value)| {
        let Some(expression) = registry
            .param(resource_type, param)
            .and_then(|p| p.expression.as_ref())
        else {
            return false;
        };
        let (system, code) = match value.split_once('|') {
            Some((system, code)) => (Some(system), code),
            None => (None, value.as_str()),
        };
        expression
            .evaluate(resource)
            .iter()
            .any(|node| token_matches(node, system, code))
    })
}

fn token_matches(node: &Node<'_>, system: Option<&str>, code: &str) -> bool {
    let coding_matches = |coding: &Json| {
        coding.get("code").and_then(Json::as_str) == Some(code)
            && system.is_none_or(|s| coding.get("system").and_then(Json::as_str) == Some(s))
    };
    match node.value {
        Json::String(text) => system.is_none() && text == code,
        Json::Object(_) => {
            coding_matches(node.value)
                || node
                    .value
                    .get("coding")
                    .and_then(Json::as_array)
                    .is_some_and(|codings| codings.iter().any(coding_matches))
        }
        _ => false,
    }
}

/// Why a request is not allowed, or the authorization server refused something.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("an access token is required (Authorization: Bearer …)")]
    MissingToken,
    #[error("the access token is not acceptable: {0}")]
    InvalidToken(String),
    #[error("{0}")]
    Forbidden(String),
    /// An OAuth 2.0 error of the authorization server (RFC 6749 §5.2 and friends).
    #[error("{error}: {description}")]
    OAuth {
        error: &'static str,
        description: String,
        /// 400 for most, 401 for a client that failed to authenticate.
        status: u16,
    },
    #[error("the authorization state is unavailable: {0}")]
    Store(#[from] IndexError),
    /// The server's own signing keys cannot be used: the server's fault, never the client's.
    #[error("the server's token signing keys are unusable: {0}")]
    Signing(String),
    /// A trusted external issuer whose keys could not be fetched.
    #[error("{0}")]
    Unavailable(String),
}

impl AuthError {
    /// The OAuth 2.0 error code this error is answered with at the authorization endpoints.
    pub fn oauth_code(&self) -> &'static str {
        match self {
            AuthError::OAuth { error, .. } => error,
            AuthError::MissingToken | AuthError::InvalidToken(_) => "invalid_token",
            AuthError::Forbidden(_) => "insufficient_scope",
            AuthError::Store(_) | AuthError::Unavailable(_) => "temporarily_unavailable",
            AuthError::Signing(_) => "server_error",
        }
    }

    pub fn oauth(error: &'static str, description: impl Into<String>) -> AuthError {
        AuthError::OAuth {
            error,
            description: description.into(),
            status: 400,
        }
    }

    pub fn invalid_client(description: impl Into<String>) -> AuthError {
        AuthError::OAuth {
            error: "invalid_client",
            description: description.into(),
            status: 401,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::json;

    fn principal(scopes: &str, patient: Option<&str>) -> Principal {
        Principal {
            subject: "s".into(),
            client_id: "c".into(),
            issuer: "i".into(),
            scopes: Scopes::parse(scopes),
            patient: patient.map(str::to_owned),
            fhir_user: None,
            custodian: false,
            break_glass: None,
            touched: None,
        }
    }

    #[test]
    fn patient_scopes_reach_only_the_context_patients_compartment() {
        let p = principal("patient/Observation.rs", Some("p1"));
        assert!(p.reaches(Permission::Read, "Observation", &["p1".into()], None));
        assert!(!p.reaches(Permission::Read, "Observation", &["p2".into()], None));
        assert!(!p.reaches(Permission::Read, "Observation", &[], None));
        assert!(p.check(Permission::Update, "Observation").is_err());
        assert_eq!(
            p.confined_to(Permission::Search, Some("Observation")),
            Some("p1")
        );
        let u = principal("user/*.rs patient/Observation.rs", Some("p1"));
        assert!(u.reaches(Permission::Read, "Observation", &["p2".into()], None));
        assert_eq!(u.confined_to(Permission::Search, Some("Observation")), None);
        let none = principal("patient/*.rs", None);
        assert!(!none.reaches(Permission::Read, "Patient", &["p1".into()], None));
    }

    #[test]
    fn a_patient_scope_writes_only_into_its_own_patients_record() {
        let p = principal("patient/Observation.cruds", Some("p1"));
        let mine = ["p1".to_owned()];
        let shared = ["p2".to_owned(), "p1".to_owned()];
        assert!(p.reaches(Permission::Create, "Observation", &mine, None));
        assert!(!p.reaches(Permission::Create, "Observation", &shared, None));
        assert!(!p.reaches(Permission::Update, "Observation", &[], None));
        assert!(p.reaches(Permission::Read, "Observation", &shared, None));
    }

    #[test]
    fn granular_scopes_look_at_the_content() {
        let p = principal("patient/Observation.rs?category=laboratory", Some("p1"));
        let lab = json::parse(br#"{"resourceType":"Observation","category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"laboratory"}]}]}"#).unwrap();
        let vitals = json::parse(
            br#"{"resourceType":"Observation","category":[{"coding":[{"code":"vital-signs"}]}]}"#,
        )
        .unwrap();
        assert!(p.needs_content(Permission::Read, "Observation"));
        assert!(p.reaches(Permission::Read, "Observation", &["p1".into()], Some(&lab)));
        assert!(!p.reaches(
            Permission::Read,
            "Observation",
            &["p1".into()],
            Some(&vitals)
        ));
        assert!(!p.reaches(Permission::Read, "Observation", &["p1".into()], None));
        let with_system = principal(
            "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory",
            Some("p1"),
        );
        assert!(with_system.reaches(Permission::Read, "Observation", &["p1".into()], Some(&lab)));
    }
}
