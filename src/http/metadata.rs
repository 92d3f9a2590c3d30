//! What the server says about itself: the CapabilityStatement (`GET /fhir/metadata`, public)
//! and `GET /health`, each component's status (200 when all answer, 503 otherwise). `/health`
//! is public too, so it says only up or down per component; where each component is (hosts,
//! the data directory) and why it is down is shown only to holders of the admin token.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::HttpState;
use super::negotiate::{BaseUrl, Negotiated};
use super::principal::bearer;
use crate::fhir::capability::{ServerFacts, capability_statement};
use crate::fhir::json::{Json, Object, object};

#[utoipa::path(get, path = "/fhir/metadata", tag = "server",
    responses((status = 200, description = "The CapabilityStatement", body = serde_json::Value, content_type = "application/fhir+json")),
    security(()))]
pub async fn capability(
    State(state): State<HttpState>,
    negotiated: Negotiated,
    base: BaseUrl,
) -> Response {
    let endpoints = crate::auth::server::Endpoints::for_base(&base.0);
    let oauth_uris = [
        ("authorize", endpoints.authorize),
        ("token", endpoints.token),
        ("register", endpoints.register),
        ("introspect", endpoints.introspect),
        ("revoke", endpoints.revoke),
    ];
    let registry = state.repo.registry();
    let search_params = |ty: crate::fhir::resource::ResourceType| {
        registry
            .params_of(ty.as_str())
            .iter()
            .filter(|p| p.is_indexed())
            .map(|p| (p.code.clone(), p.kind.as_str().to_owned(), p.url.clone()))
            .collect()
    };
    let statement = capability_statement(&ServerFacts {
        base_url: &base.0,
        software_version: env!("CARGO_PKG_VERSION"),
        started_at: &state.settings.started_at,
        oauth_uris: &oauth_uris,
        search_params: &search_params,
    });
    let mut response = (StatusCode::OK, negotiated.render(&statement)).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(negotiated.content_type),
    );
    response
}

#[utoipa::path(get, path = "/health", tag = "server",
    responses((status = 200, description = "Every component answers", body = serde_json::Value), (status = 503, description = "A component is down", body = serde_json::Value)),
    security(()))]
pub async fn health(State(state): State<HttpState>, headers: HeaderMap) -> Response {
    let details = state.auth.is_admin(bearer(&headers).as_deref());
    let reports = state.repo.health().await;
    let all_up = reports.iter().all(|(_, report)| report.is_ok());
    let components: Object = reports
        .into_iter()
        .map(|(name, report)| {
            let (status, detail) = match report {
                Ok(detail) => ("up", detail),
                Err(error) => ("down", error),
            };
            let report = if details {
                object([("status", Json::str(status)), ("detail", Json::str(detail))])
            } else {
                object([("status", Json::str(status))])
            };
            (name.to_owned(), report)
        })
        .collect();
    let body = object([
        ("status", Json::str(if all_up { "up" } else { "down" })),
        ("components", Json::Object(components)),
    ]);
    let status = if all_up {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut response = (status, body.to_bytes()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
