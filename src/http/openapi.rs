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

use super::{crud, history, metadata, oauth};

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
        crud::create,
        crud::read,
        crud::update,
        crud::delete,
        crud::vread,
        history::system,
        history::type_level,
        history::instance,
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
    ),
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
