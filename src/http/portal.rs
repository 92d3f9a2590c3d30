//! The patient portal's routes: its page and files (`/portal/…`, `/favicon.ico`), embedded in
//! the binary by the `portal` room, and the read-only JSON-RPC proxy to the ledger
//! (`POST /ledger/rpc`) the page checks anchors with.
//!
//! Every portal response carries the portal's Content-Security-Policy (this origin only, no
//! framing), `nosniff` and `no-referrer` (the page's URL carries an authorization code after
//! sign-in: it must not leak to another site in a `Referer`); the files are revalidated on
//! every load (`no-cache`), so a new build is picked up at once. No token is needed for any of
//! them: the page signs in itself, and the chain is public.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::outcome::ApiError;
use super::{FhirPath, HttpState};
use crate::portal::{self, Asset};

fn asset_response(asset: &'static Asset) -> Response {
    let mut response = (StatusCode::OK, asset.bytes).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    secure(headers);
    response
}

/// The headers of every portal response.
fn secure(headers: &mut axum::http::HeaderMap) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(portal::CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

#[utoipa::path(get, path = "/portal", tag = "portal",
    responses((status = 308, description = "To /portal/ (the page's files are relative to it)")),
    security(()))]
pub async fn redirect() -> Response {
    let mut response = StatusCode::PERMANENT_REDIRECT.into_response();
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, HeaderValue::from_static("/portal/"));
    secure(headers);
    response
}

#[utoipa::path(get, path = "/portal/", tag = "portal",
    responses((status = 200, description = "The patient portal (HTML; Content-Security-Policy: this origin only)", content_type = "text/html")),
    security(()))]
pub async fn index() -> Response {
    asset_response(portal::index())
}

#[utoipa::path(get, path = "/portal/{file}", tag = "portal",
    params(("file" = String, Path, description = "app.js, app.css or favicon.ico")),
    responses((status = 200, description = "The file"), (status = 404, description = "No such file (OperationOutcome)")),
    security(()))]
pub async fn file(FhirPath(name): FhirPath<String>) -> Result<Response, ApiError> {
    Ok(asset_response(portal::asset(&name)?))
}

#[utoipa::path(get, path = "/favicon.ico", tag = "portal",
    responses((status = 200, description = "The portal's icon", content_type = "image/x-icon")),
    security(()))]
pub async fn favicon() -> Result<Response, ApiError> {
    Ok(asset_response(portal::asset("favicon.ico")?))
}

#[utoipa::path(post, path = "/ledger/rpc", tag = "portal",
    request_body(content = serde_json::Value, content_type = "application/json", description = "A JSON-RPC 2.0 request, or a batch of at most 16: eth_chainId, eth_blockNumber, and eth_call (to the ConsentRegistry or the AuditAnchor only, at the latest block), e.g. AuditAnchor.anchoredAt(bytes32 root)"),
    responses((status = 200, description = "The JSON-RPC response(s); a refused or failed call is a JSON-RPC error object (malformed JSON: -32700, unknown method: -32601, another address: -32602, a revert: 3 with its data)", body = serde_json::Value, content_type = "application/json"),
        (status = 204, description = "Only notifications: nothing to answer")),
    security(()))]
pub async fn ledger_rpc(State(state): State<HttpState>, body: Bytes) -> Response {
    match state.repo.ledger_rpc(&body).await {
        Some(answer) => {
            let mut response = (StatusCode::OK, answer.to_string()).into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        }
        None => StatusCode::NO_CONTENT.into_response(),
    }
}
