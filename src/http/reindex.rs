//! `$reindex`: rebuilding the search entries made under other search parameters, started and
//! watched over HTTP by the operator (the admin token): `POST /fhir/$reindex` starts it in the
//! background (202), `GET /fhir/$reindex` says how far it is. The server also reindexes by
//! itself at start and when the parameters change; this is for watching, or for nudging.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::HttpState;
use super::negotiate::Negotiated;
use super::outcome::{ApiError, outcome_resource};
use super::principal::bearer;
use crate::auth::AuthError;
use crate::fhir::Issue;
use crate::fhir::json::{Json, object};

fn require_admin(state: &HttpState, headers: &HeaderMap) -> Result<(), ApiError> {
    if state.auth.is_admin(bearer(headers).as_deref()) {
        Ok(())
    } else {
        Err(ApiError::Auth(AuthError::InvalidToken(
            "$reindex needs the admin token (INTELLIHEALTH_ADMIN_TOKEN)".into(),
        )))
    }
}

#[utoipa::path(post, path = "/fhir/$reindex", tag = "operations",
    responses((status = 202, description = "Reindexing started (or already running); Content-Location says where to watch it", body = serde_json::Value, content_type = "application/fhir+json"),
        (status = 401, description = "The admin token is required", body = serde_json::Value)))]
pub async fn start(
    State(state): State<HttpState>,
    headers: HeaderMap,
    negotiated: Negotiated,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    let (_, running) = state.repo.reindex_status();
    let message = if running {
        "a reindex is already running".to_owned()
    } else {
        let repo = state.repo.clone();
        tokio::spawn(async move {
            if let Err(e) = repo.reindex_stale(|_| {}).await {
                tracing::warn!("$reindex stopped: {e}");
            }
        });
        "reindexing started".to_owned()
    };
    let body = negotiated.render(&outcome_resource(&[Issue::information(message)]));
    let mut response = (StatusCode::ACCEPTED, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(negotiated.content_type),
    );
    headers.insert(
        header::CONTENT_LOCATION,
        HeaderValue::from_static("$reindex"),
    );
    Ok(response)
}

#[utoipa::path(get, path = "/fhir/$reindex", tag = "operations",
    responses((status = 200, description = "A Parameters: running, done, total, stale", body = serde_json::Value, content_type = "application/fhir+json"),
        (status = 401, description = "The admin token is required", body = serde_json::Value)))]
pub async fn status(
    State(state): State<HttpState>,
    headers: HeaderMap,
    negotiated: Negotiated,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    let (progress, running) = state.repo.reindex_status();
    let stale = state.repo.stale_count().await?;
    let integer = |name: &str, value: usize| {
        object([
            ("name", Json::str(name)),
            ("valueInteger", Json::Number(value.to_string())),
        ])
    };
    let parameters = object([
        ("resourceType", Json::str("Parameters")),
        (
            "parameter",
            Json::Array(vec![
                object([
                    ("name", Json::str("running")),
                    ("valueBoolean", Json::Bool(running)),
                ]),
                integer("done", progress.done),
                integer("total", progress.total),
                integer("stale", stale),
            ]),
        ),
    ]);
    let mut response = (StatusCode::OK, negotiated.render(&parameters)).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(negotiated.content_type),
    );
    Ok(response)
}
