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

use super::negotiate::Negotiated;
use super::openapi::FhirErrors;
use super::outcome::ApiError;
use super::{FhirPath, HttpState};
use crate::audit::{self, Interaction, Touched};
use crate::auth::Principal;
use crate::fhir::instant::{format_instant, now_millis};
use crate::fhir::json::{Json, object};
use crate::fhir::resource::ResourceType;
use crate::ledger::anchor::Inclusion;
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

#[utoipa::path(get, path = "/fhir/AuditEvent/{id}/$verify", tag = "audit",
    params(("id" = String, Path, description = "The AuditEvent")),
    responses((status = 200, description = "Parameters: leaf, proof (repeated), root, txHash, blockNumber, address (the AuditAnchor contract), chainId, replica, sequence, firstSeq, count; or status \"not anchored yet\" with the expected time", body = serde_json::Value, content_type = "application/fhir+json"), FhirErrors))]
pub async fn verify(
    State(state): State<HttpState>,
    principal: Principal,
    FhirPath((resource_type, id)): FhirPath<(String, String)>,
    negotiated: Negotiated,
) -> Result<Response, ApiError> {
    if ResourceType::parse(&resource_type)? != ResourceType::AUDIT_EVENT {
        return Err(ApiError::NotSupported(format!(
            "$verify is an operation on AuditEvent, not {resource_type}"
        )));
    }
    let (event, inclusion) = state.repo.verify_audit_event(&principal, &id).await?;
    let text = |name: &str, value: String| {
        object([("name", Json::str(name)), ("valueString", Json::str(value))])
    };
    let mut parameters = Vec::new();
    if let Some((replica, sequence, _)) = audit::trail::place_of(&event) {
        parameters.push(text("replica", replica));
        parameters.push(text("sequence", sequence.to_string()));
    }
    match inclusion {
        Inclusion::Pending { interval } => {
            parameters.push(text("status", "not anchored yet".into()));
            let expected = now_millis() + 2 * interval.as_millis() as i64;
            parameters.push(object([
                ("name", Json::str("expected")),
                ("valueInstant", Json::str(format_instant(expected))),
            ]));
        }
        Inclusion::Anchored {
            leaf,
            proof,
            anchor,
            contract,
            chain_id,
        } => {
            parameters.push(text("status", "anchored".into()));
            parameters.push(text("leaf", leaf.to_string()));
            for sibling in proof {
                parameters.push(text("proof", sibling.to_string()));
            }
            parameters.push(text("root", anchor.root.to_string()));
            if let Some(tx) = anchor.tx_hash {
                parameters.push(text("txHash", tx.to_string()));
            }
            if let Some(block) = anchor.block_number {
                parameters.push(text("blockNumber", block.to_string()));
            }
            parameters.push(text("address", contract.to_checksum(None)));
            parameters.push(text("chainId", chain_id.to_string()));
            parameters.push(text("firstSeq", anchor.first.to_string()));
            parameters.push(text("count", anchor.count.to_string()));
        }
    }
    let body = object([
        ("resourceType", Json::str("Parameters")),
        ("parameter", Json::Array(parameters)),
    ]);
    Ok(super::consent::answer(negotiated, &body))
}
