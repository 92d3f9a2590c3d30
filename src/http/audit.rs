//! The audit face: every FHIR interaction and every sign-in and token request is recorded as
//! an AuditEvent before its response goes out. The request carries a `Touched` the principal
//! extractor and the repository's authorization fill in; once the handler has answered, the
//! interaction (with its status) goes to the audit log, and the response is released only when
//! the AuditEvent is durable. If it cannot be made durable the client gets a 503 instead: an
//! unaudited read is never served.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::HttpState;
use super::outcome::ApiError;
use crate::audit::{self, Interaction, Touched};
use crate::fhir::instant::now_millis;
use crate::repository::RepoError;

/// Whether a request is an interaction to audit: the FHIR API (but not the public, data-free
/// discovery documents) and the authorization server's sign-in and token endpoints.
fn audited(method: &axum::http::Method, path: &str) -> bool {
    if method == axum::http::Method::OPTIONS {
        return false;
    }
    let fhir = path == "/fhir" || path.starts_with("/fhir/");
    let public = path == "/fhir/metadata" || path.starts_with("/fhir/.well-known/");
    let auth = matches!(path, "/auth/token" | "/auth/login" | "/auth/approve");
    (fhir && !public) || auth
}

pub async fn record(State(state): State<HttpState>, mut request: Request, next: Next) -> Response {
    let log = match state.repo.audit() {
        Some(log) if audited(request.method(), request.uri().path()) => log.clone(),
        _ => return next.run(request).await,
    };
    let touched = Touched::default();
    request.extensions_mut().insert(touched.clone());
    let method = request.method().to_string();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().map(str::to_owned);
    let address = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| peer.ip().to_string());
    let started = now_millis();
    let response = next.run(request).await;
    let summary = audit::Request {
        method,
        path,
        query,
        address,
        status: response.status().as_u16(),
        started,
    };
    match log.record(Interaction::new(summary, &touched)).await {
        Ok(()) => response,
        Err(e) => ApiError::Repo(RepoError::from(e)).into_response(),
    }
}
