//! The OpenAPI description of the HTTP face, generated from the handlers' annotations and
//! served at `GET /openapi.json`; `openapi/openapi.json` is its committed copy (a test fails
//! when the two differ: `UPDATE_OPENAPI=1 cargo test --test openapi` refreshes it).
//!
//! FHIR resources are described as JSON objects: their schemas are FHIR's own, not OpenAPI's.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use utoipa::OpenApi;

use utoipa::Modify;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

use serde::Serialize;
use utoipa::{IntoResponses, ToSchema};

use super::{
    audit, bundle, consent, crud, export, history, metadata, oauth, portal, reindex, search,
    telemetry,
};

/// A FHIR OperationOutcome, as every error of the FHIR interactions is answered.
#[derive(Serialize, ToSchema)]
#[schema(as = OperationOutcome)]
pub struct OperationOutcomeSchema {
    /// Always `OperationOutcome`.
    #[serde(rename = "resourceType")]
    #[schema(example = "OperationOutcome")]
    resource_type: String,
    issue: Vec<IssueSchema>,
}

/// One `OperationOutcome.issue`.
#[derive(Serialize, ToSchema)]
#[schema(as = OperationOutcomeIssue)]
pub struct IssueSchema {
    /// fatal, error, warning or information.
    severity: String,
    /// A FHIR IssueType code: invalid, structure, not-found, forbidden, transient, ...
    code: String,
    diagnostics: Option<String>,
    expression: Option<Vec<String>>,
}

/// The errors every FHIR interaction can answer with, each an OperationOutcome: listed once
/// here and named by each handler's `responses(...)`.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum FhirErrors {
    #[response(
        status = 400,
        description = "Invalid request, header or resource (OperationOutcome)",
        content_type = "application/fhir+json"
    )]
    BadRequest(#[to_schema] OperationOutcomeSchema),
    #[response(
        status = 401,
        description = "No access token, or an invalid one (OperationOutcome, WWW-Authenticate)",
        content_type = "application/fhir+json"
    )]
    Unauthorized(#[to_schema] OperationOutcomeSchema),
    #[response(
        status = 403,
        description = "The granted scopes do not reach it (OperationOutcome)",
        content_type = "application/fhir+json"
    )]
    Forbidden(#[to_schema] OperationOutcomeSchema),
    #[response(
        status = 404,
        description = "Unknown type or id (OperationOutcome)",
        content_type = "application/fhir+json"
    )]
    NotFound(#[to_schema] OperationOutcomeSchema),
    #[response(
        status = 406,
        description = "Only FHIR R4 JSON is served (OperationOutcome)",
        content_type = "application/fhir+json"
    )]
    NotAcceptable(#[to_schema] OperationOutcomeSchema),
    #[response(
        status = 503,
        description = "A backend is unavailable (OperationOutcome, Retry-After)",
        content_type = "application/fhir+json"
    )]
    Unavailable(#[to_schema] OperationOutcomeSchema),
}

/// The errors of interactions that read a request body, beyond `FhirErrors`.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum BodyErrors {
    #[response(
        status = 413,
        description = "Body over the limit (OperationOutcome; the connection is closed)",
        content_type = "application/fhir+json"
    )]
    TooLarge(#[to_schema] OperationOutcomeSchema),
    #[response(
        status = 415,
        description = "Body not FHIR JSON (OperationOutcome)",
        content_type = "application/fhir+json"
    )]
    UnsupportedMediaType(#[to_schema] OperationOutcomeSchema),
    #[response(
        status = 422,
        description = "Body type or id differs from the URL (OperationOutcome)",
        content_type = "application/fhir+json"
    )]
    Unprocessable(#[to_schema] OperationOutcomeSchema),
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "IntelliHealth FHIR R4 API",
        description = "FHIR R4 (4.0.1) REST interactions over sealed, content-addressed storage. \
                       Every error is an OperationOutcome.",
    ),
    paths(
        metadata::capability,
        metadata::health,
        telemetry::metrics_for_admin,
        crud::create,
        crud::read,
        crud::update,
        crud::delete,
        crud::vread,
        crud::update_conditional,
        crud::delete_conditional,
        crud::patch,
        crud::patch_conditional,
        bundle::process,
        history::system,
        history::type_level,
        history::instance,
        search::type_search,
        search::type_search_post,
        search::system_search,
        search::system_search_post,
        search::compartment_search,
        search::everything,
        consent::prepare_binding,
        consent::bind_wallet,
        consent::prepare,
        consent::prepare_purge,
        consent::purge,
        consent::request_access,
        consent::answer_request,
        consent::granted_to_me,
        consent::grantees,
        audit::verify,
        export::system,
        export::patients,
        export::group,
        export::status,
        export::cancel,
        export::file,
        reindex::start,
        reindex::status,
        oauth::smart_config,
        oauth::openid_config,
        oauth::jwks,
        oauth::authorize_get,
        oauth::authorize_post,
        oauth::login,
        oauth::approve,
        oauth::token,
        oauth::introspect,
        oauth::revoke,
        oauth::register,
        oauth::launch,
        portal::redirect,
        portal::index,
        portal::file,
        portal::favicon,
        portal::ledger_rpc,
    ),
    components(schemas(OperationOutcomeSchema, IssueSchema)),
    modifiers(&BearerSecurity),
    security(("bearer" = []))
)]
pub struct ApiDoc;

/// Every FHIR interaction takes a SMART access token (`Authorization: Bearer …`).
struct BearerSecurity;

impl Modify for BearerSecurity {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some("A SMART on FHIR access token (ES256 JWT)"))
                    .build(),
            ),
        );
    }
}

/// The document as pretty JSON.
pub fn document() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

pub async fn serve() -> Response {
    let mut response = document().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
