//! The instance interactions: create, read, vread, update, delete, with FHIR's versioning
//! headers (`ETag`, `Last-Modified`, `Location`), conditional reads (`If-None-Match`,
//! `If-Modified-Since` → 304), version-aware writes (`If-Match`, `If-None-Match` → 412), PATCH
//! (JSON Patch or FHIRPath Patch, by id or by criteria) and `Prefer: return`.

use std::time::{Duration, SystemTime};

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::body::{FhirBody, PatchBody};
use super::conditions::{Interaction, refuse_unimplemented};
use super::negotiate::{BaseUrl, Negotiated, Prefer, Return, parse_version_tag};
use super::openapi::{BodyErrors, FhirErrors};
use super::outcome::{ApiError, outcome_resource};
use super::{FhirPath, HttpState};
use crate::auth::Principal;
use crate::fhir::Issue;
use crate::fhir::patch::PatchDocument;
use crate::fhir::resource::ResourceType;
use crate::index::VersionRecord;
use crate::repository::conditional::Criteria;
use crate::repository::{Precondition, RepoError, ResourceVersion, Written};

#[utoipa::path(post, path = "/fhir/{type}", tag = "instance",
    params(("type" = String, Path, description = "Resource type, e.g. Patient"), ("If-None-Exist" = Option<String>, Header, description = "Conditional create: search criteria; a match is returned (200) instead of creating, and concurrent requests with the same criteria create one resource"), ("If-None-Match" = Option<String>, Header, description = "Only *, which a create always satisfies (it makes a new resource); a version tag is refused (400)")),
    request_body(content = serde_json::Value, content_type = "application/fhir+json", description = "The resource"),
    responses(
        (status = 201, description = "Created; Location, ETag, Last-Modified", body = serde_json::Value, content_type = "application/fhir+json"), FhirErrors, BodyErrors))]
pub async fn create(
    State(state): State<HttpState>,
    principal: Principal,
    FhirPath(resource_type): FhirPath<String>,
    headers: HeaderMap,
    answer: WriteAnswer,
    FhirBody(body): FhirBody,
) -> Result<Response, ApiError> {
    refuse_unimplemented(&headers, Interaction::Create)?;
    // A create always makes a new resource: `If-None-Match: *` holds; a version tag cannot
    // name a version of a resource that does not exist yet.
    if headers.contains_key(header::IF_NONE_MATCH)
        && precondition(&headers)? != Precondition::Absent
    {
        return Err(ApiError::BadRequest(
            "If-None-Match on a create can only be * (a create always makes a new resource); \
             nothing was created"
                .into(),
        ));
    }
    let resource_type = ResourceType::parse(&resource_type)?;
    let handling = answer.prefer.handling;
    if let Some(criteria) = if_none_exist(&headers, resource_type)? {
        if resource_type == ResourceType::CONSENT {
            return Err(ApiError::NotSupported(
                "a conditional create of a Consent is not supported: a grant is relayed as \
                 signed; nothing was created"
                    .into(),
            ));
        }
        let outcome = state
            .repo
            .create_if_none_exist(
                &principal,
                resource_type,
                body,
                &criteria,
                handling,
                &answer.base.0,
            )
            .await?;
        return Ok(written_response(outcome.into_written(), answer));
    }
    let written = if resource_type == ResourceType::CONSENT {
        // A signed Consent is a grant to relay; any other is an ordinary resource.
        state
            .repo
            .create_consent(&principal, body, handling)
            .await?
    } else {
        state
            .repo
            .create(&principal, resource_type, body, handling)
            .await?
    };
    Ok(written_response(written, answer))
}

#[utoipa::path(put, path = "/fhir/{type}/{id}", tag = "instance",
    params(("type" = String, Path, description = "Resource type, e.g. Patient"), ("id" = String, Path, description = "Logical id"), ("If-Match" = Option<String>, Header, description = "Version-aware update: W/\"n\""), ("If-None-Match" = Option<String>, Header, description = "*: only if the resource does not exist (create only); W/\"n\": only if the current version is not n")),
    request_body(content = serde_json::Value, content_type = "application/fhir+json", description = "The resource, with its id"),
    responses(
        (status = 200, description = "Updated", body = serde_json::Value, content_type = "application/fhir+json"),
        (status = 201, description = "Created (update-as-create)", body = serde_json::Value, content_type = "application/fhir+json"),
        (status = 409, description = "Lost a concurrent update (OperationOutcome)", body = serde_json::Value),
        (status = 412, description = "If-Match is not the current version, or If-None-Match matches it (OperationOutcome); nothing written", body = serde_json::Value), FhirErrors, BodyErrors))]
pub async fn update(
    State(state): State<HttpState>,
    principal: Principal,
    FhirPath((resource_type, id)): FhirPath<(String, String)>,
    headers: HeaderMap,
    answer: WriteAnswer,
    FhirBody(body): FhirBody,
) -> Result<Response, ApiError> {
    refuse_unimplemented(&headers, Interaction::Update)?;
    let precondition = precondition(&headers)?;
    let resource_type = ResourceType::parse(&resource_type)?;
    let handling = answer.prefer.handling;
    let written = if resource_type == ResourceType::CONSENT {
        // A grant's Consent changes only by a signed revocation.
        state
            .repo
            .update_consent(&principal, &id, body, precondition, handling)
            .await?
    } else {
        state
            .repo
            .update(&principal, resource_type, &id, body, precondition, handling)
            .await?
    };
    Ok(written_response(written, answer))
}

#[utoipa::path(put, path = "/fhir/{type}", tag = "instance",
    params(("type" = String, Path, description = "Resource type, e.g. Patient"), ("criteria" = String, Query, description = "Search criteria, e.g. identifier=http://x|1"), ("If-Match" = Option<String>, Header, description = "Version-aware update of the match: W/\"n\""), ("If-None-Match" = Option<String>, Header, description = "*: only if nothing matches (create only); W/\"n\": only if the match's current version is not n")),
    request_body(content = serde_json::Value, content_type = "application/fhir+json", description = "The resource"),
    responses(
        (status = 200, description = "The one match updated", body = serde_json::Value, content_type = "application/fhir+json"),
        (status = 201, description = "Nothing matched: created", body = serde_json::Value, content_type = "application/fhir+json"),
        (status = 412, description = "Several resources match (OperationOutcome)", body = serde_json::Value), FhirErrors, BodyErrors))]
pub async fn update_conditional(
    State(state): State<HttpState>,
    principal: Principal,
    FhirPath(resource_type): FhirPath<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    answer: WriteAnswer,
    FhirBody(body): FhirBody,
) -> Result<Response, ApiError> {
    let resource_type = non_consent_type(
        &headers,
        Interaction::Update,
        &resource_type,
        "conditional update",
    )?;
    let criteria = Criteria::parse(query.as_deref().unwrap_or_default(), "update")?;
    let written = state
        .repo
        .update_conditional(
            &principal,
            resource_type,
            body,
            &criteria,
            precondition(&headers)?,
            answer.prefer.handling,
            &answer.base.0,
        )
        .await?;
    Ok(written_response(written, answer))
}

#[utoipa::path(delete, path = "/fhir/{type}", tag = "instance",
    params(("type" = String, Path, description = "Resource type, e.g. Patient"), ("criteria" = String, Query, description = "Search criteria, e.g. identifier=http://x|1")),
    responses(
        (status = 204, description = "Every match deleted (or none matched)"),
        (status = 412, description = "More matches than the configured limit; none deleted (OperationOutcome)", body = serde_json::Value), FhirErrors))]
pub async fn delete_conditional(
    State(state): State<HttpState>,
    principal: Principal,
    FhirPath(resource_type): FhirPath<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    base: BaseUrl,
) -> Result<Response, ApiError> {
    let resource_type = non_consent_type(
        &headers,
        Interaction::Delete,
        &resource_type,
        "conditional delete",
    )?;
    if headers.contains_key(header::IF_MATCH) {
        return Err(ApiError::NotSupported(
            "If-Match on a conditional delete is not supported (it may delete several \
             resources); nothing was deleted"
                .into(),
        ));
    }
    let criteria = Criteria::parse(query.as_deref().unwrap_or_default(), "delete")?;
    let deleted = state
        .repo
        .delete_conditional(
            &principal,
            resource_type,
            &criteria,
            state.settings.conditional_delete_limit,
            &base.0,
        )
        .await?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    if let [one] = deleted.as_slice() {
        version_headers(response.headers_mut(), one);
    }
    Ok(response)
}

#[utoipa::path(patch, path = "/fhir/{type}/{id}", tag = "instance",
    params(("type" = String, Path, description = "Resource type, e.g. Patient"), ("id" = String, Path, description = "Logical id"), ("If-Match" = Option<String>, Header, description = "Patch only this version: W/\"n\""), ("If-None-Match" = Option<String>, Header, description = "W/\"n\": patch only if the current version is not n")),
    request_body(description = "A JSON Patch (RFC 6902) document as application/json-patch+json, or a FHIRPath Patch Parameters resource as application/fhir+json (or application/json)",
        content((serde_json::Value = "application/json-patch+json"), (serde_json::Value = "application/fhir+json"))),
    responses(
        (status = 200, description = "Patched", body = serde_json::Value, content_type = "application/fhir+json"),
        (status = 412, description = "If-Match is not the current version, or If-None-Match matches it (OperationOutcome)", body = serde_json::Value),
        (status = 422, description = "The patch is malformed, failed, or made an invalid resource; nothing changed (OperationOutcome)", body = serde_json::Value), FhirErrors, BodyErrors))]
pub async fn patch(
    State(state): State<HttpState>,
    principal: Principal,
    FhirPath((resource_type, id)): FhirPath<(String, String)>,
    headers: HeaderMap,
    answer: WriteAnswer,
    body: PatchBody,
) -> Result<Response, ApiError> {
    let resource_type = non_consent_type(&headers, Interaction::Update, &resource_type, "patch")?;
    let patch = PatchDocument::parse(body.format, &body.bytes).map_err(RepoError::from)?;
    let written = state
        .repo
        .patch(
            &principal,
            resource_type,
            &id,
            &patch,
            precondition(&headers)?,
            answer.prefer.handling,
        )
        .await?;
    Ok(written_response(written, answer))
}

#[utoipa::path(patch, path = "/fhir/{type}", tag = "instance",
    params(("type" = String, Path, description = "Resource type, e.g. Patient"), ("criteria" = String, Query, description = "Search criteria, e.g. identifier=http://x|1"), ("If-Match" = Option<String>, Header, description = "Patch the match only at this version: W/\"n\""), ("If-None-Match" = Option<String>, Header, description = "W/\"n\": patch the match only if its current version is not n")),
    request_body(description = "A JSON Patch (RFC 6902) document as application/json-patch+json, or a FHIRPath Patch Parameters resource as application/fhir+json (or application/json)",
        content((serde_json::Value = "application/json-patch+json"), (serde_json::Value = "application/fhir+json"))),
    responses(
        (status = 200, description = "The one match patched", body = serde_json::Value, content_type = "application/fhir+json"),
        (status = 412, description = "Several resources match, or a precondition failed (OperationOutcome); nothing changed", body = serde_json::Value),
        (status = 422, description = "The patch is malformed, failed, or made an invalid resource; nothing changed (OperationOutcome)", body = serde_json::Value), FhirErrors, BodyErrors))]
// Each argument is an extractor: axum passes them, nobody calls this by hand.
#[allow(clippy::too_many_arguments)]
pub async fn patch_conditional(
    State(state): State<HttpState>,
    principal: Principal,
    FhirPath(resource_type): FhirPath<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    answer: WriteAnswer,
    body: PatchBody,
) -> Result<Response, ApiError> {
    let resource_type = non_consent_type(&headers, Interaction::Update, &resource_type, "patch")?;
    let criteria = Criteria::parse(query.as_deref().unwrap_or_default(), "patch")?;
    let patch = PatchDocument::parse(body.format, &body.bytes).map_err(RepoError::from)?;
    let written = state
        .repo
        .patch_conditional(
            &principal,
            resource_type,
            &criteria,
            &patch,
            precondition(&headers)?,
            answer.prefer.handling,
            &answer.base.0,
        )
        .await?;
    Ok(written_response(written, answer))
}

/// The type a conditional write or a patch (`what`) acts on, refusing in this order: a
/// conditional header `interaction` does not implement, a name that is no R4 type, and
/// Consent, since a Consent that mirrors a grant changes only by the patient's signature.
fn non_consent_type(
    headers: &HeaderMap,
    interaction: Interaction,
    resource_type: &str,
    what: &str,
) -> Result<ResourceType, ApiError> {
    refuse_unimplemented(headers, interaction)?;
    let resource_type = ResourceType::parse(resource_type)?;
    if resource_type == ResourceType::CONSENT {
        return Err(ApiError::NotSupported(format!(
            "a {what} of Consents is not supported (a grant changes only by the patient's \
             signature); nothing was done"
        )));
    }
    Ok(resource_type)
}

/// `If-None-Exist: criteria` (with or without a leading `Type?` or `?`, as clients send it).
fn if_none_exist(
    headers: &HeaderMap,
    resource_type: ResourceType,
) -> Result<Option<Criteria>, ApiError> {
    let Some(value) = headers.get("if-none-exist") else {
        return Ok(None);
    };
    let value = value.to_str().map_err(|_| {
        ApiError::BadRequest("If-None-Exist must be search criteria in ASCII".into())
    })?;
    let typed = format!("{}?", resource_type.as_str());
    let criteria = value
        .trim()
        .strip_prefix(&typed)
        .or_else(|| value.trim().strip_prefix('?'))
        .unwrap_or(value.trim());
    Ok(Some(Criteria::parse(criteria, "create")?))
}

#[utoipa::path(get, path = "/fhir/{type}/{id}", tag = "instance",
    params(("type" = String, Path, description = "Resource type, e.g. Patient"), ("id" = String, Path, description = "Logical id"), ("If-None-Match" = Option<String>, Header, description = "304 when it matches"), ("If-Modified-Since" = Option<String>, Header, description = "304 when not modified since")),
    responses(
        (status = 200, description = "The current version", body = serde_json::Value, content_type = "application/fhir+json"),
        (status = 304, description = "Not modified"),
        (status = 410, description = "Deleted (OperationOutcome)", body = serde_json::Value), FhirErrors))]
pub async fn read(
    State(state): State<HttpState>,
    principal: Principal,
    FhirPath((resource_type, id)): FhirPath<(String, String)>,
    headers: HeaderMap,
    negotiated: Negotiated,
) -> Result<Response, ApiError> {
    refuse_unimplemented(&headers, Interaction::Read)?;
    let resource_type = ResourceType::parse(&resource_type)?;
    let version = state.repo.read(&principal, resource_type, &id).await?;
    if not_modified(&headers, &version.record) {
        let mut response = StatusCode::NOT_MODIFIED.into_response();
        version_headers(response.headers_mut(), &version.record);
        return Ok(response);
    }
    Ok(resource_response(StatusCode::OK, version, negotiated))
}

#[utoipa::path(get, path = "/fhir/{type}/{id}/_history/{vid}", tag = "instance",
    params(("type" = String, Path, description = "Resource type, e.g. Patient"), ("id" = String, Path, description = "Logical id"), ("vid" = String, Path, description = "Version id")),
    responses(
        (status = 200, description = "That version", body = serde_json::Value, content_type = "application/fhir+json"),
        (status = 410, description = "That version is a delete (OperationOutcome)", body = serde_json::Value), FhirErrors))]
pub async fn vread(
    State(state): State<HttpState>,
    principal: Principal,
    FhirPath((resource_type, id, version_id)): FhirPath<(String, String, String)>,
    headers: HeaderMap,
    negotiated: Negotiated,
) -> Result<Response, ApiError> {
    refuse_unimplemented(&headers, Interaction::Vread)?;
    let resource_type = ResourceType::parse(&resource_type)?;
    let Ok(version_id) = version_id.parse::<u64>() else {
        return Err(ApiError::NotFound(format!(
            "{resource_type}/{}/_history/{}: version ids on this server are numbers",
            preview(&id),
            preview(&version_id)
        )));
    };
    let version = state
        .repo
        .vread(&principal, resource_type, &id, version_id)
        .await?;
    Ok(resource_response(StatusCode::OK, version, negotiated))
}

#[utoipa::path(delete, path = "/fhir/{type}/{id}", tag = "instance",
    params(("type" = String, Path, description = "Resource type, e.g. Patient"), ("id" = String, Path, description = "Logical id")),
    responses(
        (status = 204, description = "Deleted (or already deleted)"),
        (status = 412, description = "If-Match is not the current version (OperationOutcome)", body = serde_json::Value), FhirErrors))]
pub async fn delete(
    State(state): State<HttpState>,
    principal: Principal,
    FhirPath((resource_type, id)): FhirPath<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    refuse_unimplemented(&headers, Interaction::Delete)?;
    let resource_type = ResourceType::parse(&resource_type)?;
    if resource_type == ResourceType::CONSENT && state.repo.is_grant_mirror(&id) {
        return Err(ApiError::Repo(crate::repository::RepoError::Consent(
            crate::consent::ConsentError::Unprocessable(
                "this Consent mirrors a grant on chain, which is never deleted: revoke it (PUT \
                 with status inactive, signed by the patient's wallet)"
                    .into(),
            ),
        )));
    }
    let deleted = state
        .repo
        .delete(&principal, resource_type, &id, precondition(&headers)?)
        .await?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    if let Some(record) = deleted {
        version_headers(response.headers_mut(), &record);
    }
    Ok(response)
}

fn preview(text: &str) -> String {
    text.chars().take(64).collect()
}

/// What a write asks of the current version: `If-Match: W/"n"` (replace exactly version n),
/// `If-None-Match: *` (only if there is no resource), `If-None-Match: W/"n"` (only if the
/// current version is not n). Both headers at once are refused rather than half-honoured.
fn precondition(headers: &HeaderMap) -> Result<Precondition, ApiError> {
    let text = |name: header::HeaderName| {
        headers
            .get(&name)
            .map(|value| value.to_str().unwrap_or_default().trim())
    };
    match (text(header::IF_MATCH), text(header::IF_NONE_MATCH)) {
        (None, None) => Ok(Precondition::None),
        (Some(_), Some(_)) => Err(ApiError::BadRequest(
            "send If-Match or If-None-Match, not both; nothing was written".into(),
        )),
        (Some(tag), None) => parse_version_tag(tag)
            .map(Precondition::Version)
            .ok_or_else(|| {
                ApiError::BadRequest("If-Match must be a version tag such as W/\"3\"".into())
            }),
        (None, Some("*")) => Ok(Precondition::Absent),
        (None, Some(tag)) => parse_version_tag(tag)
            .map(Precondition::NotVersion)
            .ok_or_else(|| {
                ApiError::BadRequest(
                    "If-None-Match on a write must be * or one version tag such as W/\"3\"".into(),
                )
            }),
    }
}

/// Whether a conditional read can be answered with 304.
fn not_modified(headers: &HeaderMap, record: &VersionRecord) -> bool {
    if let Some(value) = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
    {
        // If-None-Match takes precedence over If-Modified-Since (RFC 9110 §13.2.2).
        return value
            .split(',')
            .any(|tag| tag.trim() == "*" || parse_version_tag(tag) == Some(record.version));
    }
    if let Some(since) = headers
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
    {
        // HTTP dates have whole seconds: compare at that precision.
        return last_modified(record)
            .duration_since(since)
            .map_or(true, |newer_by| newer_by < Duration::from_secs(1));
    }
    false
}

fn last_modified(record: &VersionRecord) -> SystemTime {
    let millis = u64::try_from(record.last_updated).unwrap_or_default();
    SystemTime::UNIX_EPOCH + Duration::from_millis(millis)
}

/// `ETag` and `Last-Modified` of a version.
pub fn version_headers(headers: &mut HeaderMap, record: &VersionRecord) {
    if let Ok(etag) = HeaderValue::from_str(&format!("W/\"{}\"", record.version)) {
        headers.insert(header::ETAG, etag);
    }
    let date = httpdate::fmt_http_date(last_modified(record));
    if let Ok(date) = HeaderValue::from_str(&date) {
        headers.insert(header::LAST_MODIFIED, date);
    }
}

/// A stored version as the body (in the negotiated format) with its `ETag` and
/// `Last-Modified`.
pub(super) fn resource_response(
    status: StatusCode,
    version: ResourceVersion,
    negotiated: Negotiated,
) -> Response {
    let body = negotiated.render_stored(version.content.unwrap_or_default());
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(negotiated.content_type),
    );
    version_headers(headers, &version.record);
    response
}

/// How to answer a write: the negotiated format, the client's `Prefer`, and the base URL of
/// the `Location`.
pub struct WriteAnswer {
    negotiated: Negotiated,
    prefer: Prefer,
    base: BaseUrl,
}

impl<S> axum::extract::FromRequestParts<S> for WriteAnswer
where
    S: Send + Sync,
    HttpState: axum::extract::FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(WriteAnswer {
            negotiated: Negotiated::from_request_parts(parts, state).await?,
            prefer: Prefer::from_request_parts(parts, state).await?,
            base: BaseUrl::from_request_parts(parts, state).await?,
        })
    }
}

pub(super) fn written_response(written: Written, answer: WriteAnswer) -> Response {
    let WriteAnswer {
        negotiated,
        prefer,
        base,
    } = answer;
    let record = &written.version.record;
    let status = if written.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let location = format!(
        "{}/{}/{}/_history/{}",
        base.0, record.resource_type, record.id, record.version
    );
    let location = HeaderValue::from_str(&location).ok();
    let mut response = match prefer.return_ {
        Return::Representation => resource_response(status, written.version, negotiated),
        Return::Minimal => {
            let mut response = status.into_response();
            version_headers(response.headers_mut(), record);
            response
        }
        Return::OperationOutcome => {
            let mut issues = vec![Issue::information(format!(
                "{} {}/{} as version {}",
                if written.created {
                    "created"
                } else {
                    "updated"
                },
                record.resource_type,
                record.id,
                record.version
            ))];
            issues.extend(written.warnings);
            let body = negotiated.render(&outcome_resource(&issues));
            let mut response = (status, body).into_response();
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(negotiated.content_type),
            );
            version_headers(headers, record);
            response
        }
    };
    if let Some(location) = location {
        response
            .headers_mut()
            .insert(header::LOCATION, location.clone());
        if written.created {
            response
                .headers_mut()
                .insert(header::CONTENT_LOCATION, location);
        }
    }
    response
}
