//! The consent operations: `Patient/{id}/$wallet-binding` (GET the typed data, POST the
//! signature), `Consent/$prepare`, and erasure at the patient's request, `Patient/{id}/$purge`
//! (GET the typed data, POST the signature). Grants and revocations themselves are
//! `POST Consent` and `PUT Consent/{id}` (see `crud`), answered by the repository's consent
//! interactions. Around them: `Consent/$request-access` (a practitioner asks), the patient's
//! `Consent/{id}/$answer`, `Consent/$granted-to-me` (the grants the caller holds) and
//! `Consent/$grantees` (whom a patient can grant to).

use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::body::FhirBody;
use super::negotiate::{BaseUrl, Negotiated};
use super::openapi::{BodyErrors, FhirErrors};
use super::outcome::ApiError;
use super::{FhirPath, HttpState};
use crate::auth::Principal;
use crate::consent::erasure::Recorded;
use crate::consent::requests::{self, Answer, Asked};
use crate::fhir::json::{self, Json, object};
use crate::fhir::resource::ResourceType;
use crate::repository::ResourceVersion;

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

/// The operation is one on `on` (`Patient` for `Patient/{id}/$…`, `Consent` for
/// `Consent/$…`): another R4 type is 400 not-supported, a name that is no type at all is
/// refused as such by the parse.
fn only_on(on: &str, resource_type: &str, operation: &str) -> Result<(), ApiError> {
    if resource_type != on {
        ResourceType::parse(resource_type)?;
        return Err(ApiError::NotSupported(format!(
            "{operation} is an operation on {on}, not {resource_type}"
        )));
    }
    Ok(())
}

/// The operation is one on Patient (`Patient/{id}/$…`).
fn only_patient(resource_type: &str, operation: &str) -> Result<(), ApiError> {
    only_on("Patient", resource_type, operation)
}

/// The operation is one on Consent (`Consent/$…`).
fn only_consent(resource_type: &str, operation: &str) -> Result<(), ApiError> {
    only_on("Consent", resource_type, operation)
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
    only_consent(&resource_type, "$prepare")?;
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

/// The values of every `Parameters.parameter` named `name`, by their `value[x]` key.
fn values<'a>(parameters: &'a Json, name: &'a str, key: &'a str) -> impl Iterator<Item = &'a Json> {
    parameters
        .get("parameter")
        .and_then(Json::as_array)
        .unwrap_or_default()
        .iter()
        .filter(move |p| p.get("name").and_then(Json::as_str) == Some(name))
        .filter_map(move |p| p.get(key))
}

/// A `collection` Bundle of `resources` (each with its `fullUrl` when it has an id).
fn collection(base: &BaseUrl, resources: Vec<Json>) -> Json {
    let entries: Vec<Json> = resources
        .into_iter()
        .map(|resource| {
            let full_url = match (
                resource.get("resourceType").and_then(Json::as_str),
                resource.get("id").and_then(Json::as_str),
            ) {
                (Some(ty), Some(id)) => Some(format!("{}/{ty}/{id}", base.0)),
                _ => None,
            };
            match full_url {
                Some(url) => object([("fullUrl", Json::str(url)), ("resource", resource)]),
                None => object([("resource", resource)]),
            }
        })
        .collect();
    let mut bundle = object([
        ("resourceType", Json::str("Bundle")),
        ("type", Json::str("collection")),
        (
            "timestamp",
            Json::str(crate::fhir::instant::format_instant(
                crate::fhir::instant::now_millis(),
            )),
        ),
    ]);
    // FHIR forbids an empty array: a Bundle with no entries has no `entry`.
    if !entries.is_empty()
        && let Some(fields) = bundle.as_object_mut()
    {
        fields.insert("entry", Json::Array(entries));
    }
    bundle
}

fn stored(version: &ResourceVersion) -> Option<Json> {
    json::parse(version.content.as_deref()?).ok()
}

#[utoipa::path(get, path = "/fhir/Consent/$granted-to-me", tag = "consent",
    responses((status = 200, description = "A collection Bundle of the Consents mirroring the active, unexpired grants to the caller: to its fhirUser for a user's token (never to its client), to its client id for a backend service's token", body = serde_json::Value, content_type = "application/fhir+json"), FhirErrors))]
pub async fn granted_to_me(
    State(state): State<HttpState>,
    principal: Principal,
    FhirPath(resource_type): FhirPath<String>,
    negotiated: Negotiated,
    base: BaseUrl,
) -> Result<Response, ApiError> {
    only_consent(&resource_type, "$granted-to-me")?;
    let found = state.repo.granted_to(&principal).await?;
    let resources = found.iter().filter_map(stored).collect();
    Ok(answer(negotiated, &collection(&base, resources)))
}

#[utoipa::path(post, path = "/fhir/Consent/$request-access", tag = "consent",
    request_body(content = serde_json::Value, content_type = "application/fhir+json", description = "Parameters: patient (valueReference Patient/{id}), type (valueCode, repeated: resource types; none = all), days (valueInteger 1-365, default 30), reason (valueString, at most 500 characters)"),
    responses((status = 201, description = "The access request: a Consent with status proposed written by the server (patient, performer and provision.actor the practitioner, provision.class the types, provision.period.end now + days, the reason in an extension); Location", body = serde_json::Value, content_type = "application/fhir+json"),
        (status = 200, description = "This practitioner's request to this patient already pending: that one", body = serde_json::Value, content_type = "application/fhir+json"),
        (status = 403, description = "Not a practitioner (fhirUser Practitioner/…) (OperationOutcome)", body = serde_json::Value),
        (status = 404, description = "No such patient (OperationOutcome)", body = serde_json::Value), FhirErrors, BodyErrors))]
pub async fn request_access(
    State(state): State<HttpState>,
    principal: Principal,
    FhirPath(resource_type): FhirPath<String>,
    written: super::crud::WriteAnswer,
    base: BaseUrl,
    FhirBody(body): FhirBody,
) -> Result<Response, ApiError> {
    only_consent(&resource_type, "$request-access")?;
    let input = parameters_body(&body, "patient, type, days and reason")?;
    let days = match values(&input, "days", "valueInteger").next() {
        None => None,
        Some(Json::Number(n)) => Some(n.parse::<i64>().map_err(|_| {
            ApiError::BadRequest("days must be a whole number (valueInteger)".into())
        })?),
        Some(_) => {
            return Err(ApiError::BadRequest("days must be a valueInteger".into()));
        }
    };
    let asked = Asked {
        patient: values(&input, "patient", "valueReference")
            .next()
            .and_then(|r| r.get("reference"))
            .and_then(Json::as_str)
            .map(str::to_owned),
        types: values(&input, "type", "valueCode")
            .filter_map(Json::as_str)
            .map(str::to_owned)
            .collect(),
        days,
        reason: values(&input, "reason", "valueString")
            .next()
            .and_then(Json::as_str)
            .map(str::to_owned),
    };
    let written_now = state
        .repo
        .request_access(&principal, asked, &base.0)
        .await?;
    Ok(super::crud::written_response(written_now, written))
}

#[utoipa::path(post, path = "/fhir/Consent/{id}/$answer", tag = "consent",
    params(("id" = String, Path, description = "The access request (a Consent with status proposed)")),
    request_body(content = serde_json::Value, content_type = "application/fhir+json", description = "Parameters: answer (valueCode approved or declined) and, to approve, grant (valueString: the id of the active grant Consent the patient signed for the requester)"),
    responses((status = 200, description = "The request answered: status rejected, or inactive with an extension referencing the grant's Consent", body = serde_json::Value, content_type = "application/fhir+json"),
        (status = 403, description = "Not the patient of the request (OperationOutcome)", body = serde_json::Value),
        (status = 409, description = "Answered already (OperationOutcome)", body = serde_json::Value),
        (status = 422, description = "Not an access request, or the grant is not an active grant from this patient to the requester (OperationOutcome)", body = serde_json::Value), FhirErrors, BodyErrors))]
pub async fn answer_request(
    State(state): State<HttpState>,
    principal: Principal,
    FhirPath((resource_type, id)): FhirPath<(String, String)>,
    negotiated: Negotiated,
    FhirBody(body): FhirBody,
) -> Result<Response, ApiError> {
    only_consent(&resource_type, "$answer")?;
    let input = parameters_body(&body, "answer and grant")?;
    let answer_given = Answer::parse(
        values(&input, "answer", "valueCode")
            .next()
            .and_then(Json::as_str),
        parameter(&input, "grant"),
    )
    .map_err(crate::repository::RepoError::Consent)?;
    let version = state
        .repo
        .answer_request(&principal, &id, answer_given)
        .await?;
    // Answered like a read of the request's new version (ETag, Last-Modified).
    Ok(super::crud::resource_response(
        StatusCode::OK,
        version,
        negotiated,
    ))
}

#[derive(Deserialize)]
pub struct GranteesQuery {
    name: Option<String>,
    #[serde(rename = "_count")]
    count: Option<usize>,
}

#[utoipa::path(get, path = "/fhir/Consent/$grantees", tag = "consent",
    params(("name" = Option<String>, Query, description = "Part of the name, any case"),
        ("_count" = Option<usize>, Query, description = "At most this many entries (1-50, default 50)")),
    responses((status = 200, description = "A collection Bundle of whom a patient can grant to: Practitioners and Organizations stored here (resourceType, id and name only), then registered confidential clients with a name as Basic resources (code.text client, identifier urn:ietf:params:oauth:client-id, the name in the client-name extension); never the portal's own client", body = serde_json::Value, content_type = "application/fhir+json"), FhirErrors))]
pub async fn grantees(
    State(state): State<HttpState>,
    // Any signed-in user: the extractor refuses a request without a valid token.
    _principal: Principal,
    FhirPath(resource_type): FhirPath<String>,
    Query(query): Query<GranteesQuery>,
    negotiated: Negotiated,
    base: BaseUrl,
) -> Result<Response, ApiError> {
    use crate::repository::access::MAX_GRANTEES;
    only_consent(&resource_type, "$grantees")?;
    let limit = query.count.unwrap_or(MAX_GRANTEES).clamp(1, MAX_GRANTEES);
    let name = query.name.unwrap_or_default().trim().to_owned();
    let mut entries = state.repo.grantee_directory(&name, limit, &base.0).await?;
    let wanted = name.to_lowercase();
    let mut clients: Vec<_> = state
        .auth
        .accounts
        .clients()
        .await?
        .into_iter()
        // A public client has no way to prove who it is: a grant to it would be a grant to
        // anyone running its code (the portal's own above all).
        .filter(|c| !c.is_public() && c.client_id != crate::portal::CLIENT_ID)
        .filter_map(|c| Some((c.client_id, c.name?)))
        .filter(|(_, n)| requests::name_matches(n, &wanted))
        .collect();
    clients.sort_by_key(|(_, name)| name.to_lowercase());
    for (client_id, client_name) in clients {
        if entries.len() >= limit {
            break;
        }
        entries.push(requests::client_entry(&client_id, &client_name));
    }
    let resources = entries
        .iter()
        .filter_map(|e| json::parse(e.to_string().as_bytes()).ok())
        .collect();
    Ok(answer(negotiated, &collection(&base, resources)))
}
