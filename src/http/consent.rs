//! The consent operations: `Patient/{id}/$wallet-binding` (GET the typed data, POST the
//! signature), `Consent/$prepare`, and erasure at the patient's request, `Patient/{id}/$purge`
//! (GET the typed data, POST the signature). Grants and revocations themselves are
//! `POST Consent` and `PUT Consent/{id}` (see `crud`), answered by the repository's consent
//! interactions.

use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::body::FhirBody;
use super::negotiate::Negotiated;
use super::openapi::{BodyErrors, FhirErrors};
use super::outcome::ApiError;
use super::{FhirPath, HttpState};
use crate::auth::Principal;
use crate::consent::erasure::Recorded;
use crate::fhir::json::{self, Json, object};
use crate::fhir::resource::ResourceType;

fn parameters(values: Vec<(&str, String)>) -> Json {
    let parameter = values
        .into_iter()
        .map(|(name, value)| object([("name", Json::str(name)), ("valueString", Json::str(value))]))
        .collect();
    object([
        ("resourceType", Json::str("Parameters")),
        ("parameter", Json::Array(parameter)),
    ])
}

pub(super) fn answer(negotiated: Negotiated, body: &Json) -> Response {
    let mut response = (StatusCode::OK, negotiated.render(body)).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(negotiated.content_type),
    );
    response
}

fn only_patient(resource_type: &str, operation: &str) -> Result<(), ApiError> {
    if resource_type != "Patient" {
        ResourceType::parse(resource_type)?;
        return Err(ApiError::NotSupported(format!(
            "{operation} is an operation on Patient, not {resource_type}"
        )));
    }
    Ok(())
}

#[derive(Deserialize)]
pub struct BindingQuery {
    address: Option<String>,
}

#[utoipa::path(get, path = "/fhir/Patient/{id}/$wallet-binding", tag = "consent",
    params(("id" = String, Path, description = "The patient"),
        ("address" = String, Query, description = "The wallet to bind, 0x-hex")),
    responses((status = 200, description = "Parameters with typedData: the EIP-712 JSON the wallet signs (eth_signTypedData_v4)", body = serde_json::Value, content_type = "application/fhir+json"), FhirErrors))]
pub async fn prepare_binding(
    State(state): State<HttpState>,
    principal: Principal,
    FhirPath((resource_type, id)): FhirPath<(String, String)>,
    Query(query): Query<BindingQuery>,
    negotiated: Negotiated,
) -> Result<Response, ApiError> {
    only_patient(&resource_type, "$wallet-binding")?;
    let address = query
        .address
        .ok_or_else(|| ApiError::BadRequest("give the wallet as ?address=0x…".into()))?;
    let prepared = state
        .repo
        .prepare_binding(&principal, &id, &address)
        .await?;
    Ok(answer(
        negotiated,
        &parameters(vec![("typedData", prepared.typed_data.to_string())]),
    ))
}

/// The body as a `Parameters` resource; `holding` says what it must hold.
fn parameters_body(body: &[u8], holding: &str) -> Result<Json, ApiError> {
    let input = json::parse(body)
        .map_err(|e| ApiError::BadRequest(format!("the body is not JSON: {e}")))?;
    if input.get("resourceType").and_then(Json::as_str) != Some("Parameters") {
        return Err(ApiError::BadRequest(format!(
            "the body must be a Parameters with {holding}"
        )));
    }
    Ok(input)
}

/// A `Parameters` value by name (valueString).
fn parameter<'a>(parameters: &'a Json, name: &str) -> Option<&'a str> {
    parameters
        .get("parameter")?
        .as_array()?
        .iter()
        .find(|p| p.get("name").and_then(Json::as_str) == Some(name))?
        .get("valueString")?
        .as_str()
}

#[utoipa::path(post, path = "/fhir/Patient/{id}/$wallet-binding", tag = "consent",
    params(("id" = String, Path, description = "The patient")),
    request_body(content = serde_json::Value, content_type = "application/fhir+json", description = "Parameters: address and signature (0x-hex, 65 bytes) of the prepared typed data"),
    responses((status = 200, description = "Bound: Parameters with address, txHash, blockNumber", body = serde_json::Value, content_type = "application/fhir+json"),
        (status = 409, description = "Nothing prepared matches (used, expired) (OperationOutcome)", body = serde_json::Value),
        (status = 422, description = "Signed by another key, or the contract refused (OperationOutcome)", body = serde_json::Value), FhirErrors, BodyErrors))]
pub async fn bind_wallet(
    State(state): State<HttpState>,
    principal: Principal,
    FhirPath((resource_type, id)): FhirPath<(String, String)>,
    negotiated: Negotiated,
    FhirBody(body): FhirBody,
) -> Result<Response, ApiError> {
    only_patient(&resource_type, "$wallet-binding")?;
    let input = parameters_body(&body, "address and signature")?;
    let (Some(address), Some(signature)) =
        (parameter(&input, "address"), parameter(&input, "signature"))
    else {
        return Err(ApiError::BadRequest(
            "the Parameters need address and signature (valueString, 0x-hex)".into(),
        ));
    };
    let (wallet, relayed) = state
        .repo
        .bind_wallet(&principal, &id, address, signature)
        .await?;
    Ok(answer(
        negotiated,
        &parameters(vec![
            ("address", wallet.to_checksum(None)),
            ("txHash", relayed.tx_hash.to_string()),
            ("blockNumber", relayed.block_number.to_string()),
        ]),
    ))
}

#[utoipa::path(post, path = "/fhir/Consent/$prepare", tag = "consent",
    request_body(content = serde_json::Value, content_type = "application/fhir+json", description = "A draft Consent (a permit: patient, provision.actor, provision.action, provision.class, provision.period.end), or a grant's Consent with status inactive to revoke it"),
    responses((status = 200, description = "Parameters with typedData: the EIP-712 JSON the patient's wallet signs", body = serde_json::Value, content_type = "application/fhir+json"),
        (status = 422, description = "Not a grantable permit, or no wallet bound (OperationOutcome)", body = serde_json::Value), FhirErrors, BodyErrors))]
pub async fn prepare(
    State(state): State<HttpState>,
    principal: Principal,
    FhirPath(resource_type): FhirPath<String>,
    negotiated: Negotiated,
    FhirBody(body): FhirBody,
) -> Result<Response, ApiError> {
    if resource_type != "Consent" {
        ResourceType::parse(&resource_type)?;
        return Err(ApiError::NotSupported(format!(
            "$prepare is an operation on Consent, not {resource_type}"
        )));
    }
    let prepared = state.repo.prepare_consent(&principal, &body).await?;
    Ok(answer(
        negotiated,
        &parameters(vec![("typedData", prepared.typed_data.to_string())]),
    ))
}

#[utoipa::path(get, path = "/fhir/Patient/{id}/$purge", tag = "consent",
    params(("id" = String, Path, description = "The patient")),
    responses((status = 200, description = "Parameters with typedData: the EIP-712 JSON the patient's wallet signs to ask for the erasure of their record (eth_signTypedData_v4)", body = serde_json::Value, content_type = "application/fhir+json"),
        (status = 409, description = "The erasure is recorded already (OperationOutcome)", body = serde_json::Value),
        (status = 422, description = "The patient has no bound wallet (OperationOutcome)", body = serde_json::Value), FhirErrors))]
pub async fn prepare_purge(
    State(state): State<HttpState>,
    principal: Principal,
    FhirPath((resource_type, id)): FhirPath<(String, String)>,
    negotiated: Negotiated,
) -> Result<Response, ApiError> {
    only_patient(&resource_type, "$purge")?;
    let prepared = state.repo.prepare_purge(&principal, &id).await?;
    Ok(answer(
        negotiated,
        &parameters(vec![("typedData", prepared.typed_data.to_string())]),
    ))
}

#[utoipa::path(post, path = "/fhir/Patient/{id}/$purge", tag = "consent",
    params(("id" = String, Path, description = "The patient")),
    request_body(content = serde_json::Value, content_type = "application/fhir+json", description = "Parameters: signature (0x-hex, 65 bytes), the patient's wallet's signature of the prepared erasure"),
    responses((status = 200, description = "Erased: Parameters with txHash and blockNumber of the on-chain record (or erasedAt, when it was recorded before), resources, versions and blobs erased", body = serde_json::Value, content_type = "application/fhir+json"),
        (status = 403, description = "Not a custodian client (OperationOutcome)", body = serde_json::Value),
        (status = 409, description = "Nothing prepared matches (used, expired) (OperationOutcome)", body = serde_json::Value),
        (status = 422, description = "Signed by another key, or the contract refused (OperationOutcome)", body = serde_json::Value), FhirErrors, BodyErrors))]
pub async fn purge(
    State(state): State<HttpState>,
    principal: Principal,
    FhirPath((resource_type, id)): FhirPath<(String, String)>,
    negotiated: Negotiated,
    FhirBody(body): FhirBody,
) -> Result<Response, ApiError> {
    only_patient(&resource_type, "$purge")?;
    let input = parameters_body(&body, "signature")?;
    let Some(signature) = parameter(&input, "signature") else {
        return Err(ApiError::BadRequest(
            "the Parameters need signature (valueString, 0x-hex)".into(),
        ));
    };
    let purged = state.repo.purge(&principal, &id, signature).await?;
    let mut values = match purged.recorded {
        Recorded::Now(relayed) => vec![
            ("txHash", relayed.tx_hash.to_string()),
            ("blockNumber", relayed.block_number.to_string()),
        ],
        Recorded::Before { at } => vec![("erasedAt", at.to_string())],
    };
    values.push(("resources", purged.erased.resources.len().to_string()));
    values.push(("versions", purged.erased.versions.to_string()));
    values.push(("blobs", purged.erased.cids.len().to_string()));
    Ok(answer(negotiated, &parameters(values)))
}
