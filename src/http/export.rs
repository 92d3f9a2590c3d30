//! Bulk Data export (FHIR Bulk Data Access 2.0) over HTTP: the kick-off at the system, Patient
//! and Group levels, the status URL (202 with `X-Progress` and `Retry-After` while running,
//! the manifest when done, an OperationOutcome when failed; `DELETE` cancels), and the output
//! files. The jobs themselves are `bulk`'s.
//!
//! Every parameter of the spec that this server does not implement (`_elements`, `patient`,
//! `_typeFilter`, `includeAssociatedData`, …) is refused at kick-off, never ignored: an export
//! that quietly widened its filter would disclose more than its client asked for.

use axum::extract::{OriginalUri, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::negotiate::{BaseUrl, Prefer, query_pairs};
use super::openapi::FhirErrors;
use super::outcome::{ApiError, outcome_response};
use super::{FhirPath, HttpState};
use crate::auth::Principal;
use crate::bulk::{ExportRequest, Level, Status};
use crate::fhir::Issue;
use crate::fhir::instant::{format_instant, period};
use crate::fhir::resource::ResourceType;

/// The output formats a client may name; all mean NDJSON, the one format served.
const NDJSON_NAMES: &[&str] = &["application/fhir+ndjson", "application/ndjson", "ndjson"];
/// Seconds a client is asked to wait between polls of a running job.
const POLL_AFTER_SECONDS: &str = "2";

#[utoipa::path(get, path = "/fhir/$export", tag = "bulk",
    params(("Prefer" = String, Header, description = "respond-async (required)"),
        ("_outputFormat" = Option<String>, Query, description = "application/fhir+ndjson (the default and only format)"),
        ("_since" = Option<String>, Query, description = "Only resources changed since this instant"),
        ("_type" = Option<String>, Query, description = "Comma-separated resource types (default: every type the client may read)")),
    responses((status = 202, description = "Accepted; poll the Content-Location URL", body = serde_json::Value, content_type = "application/fhir+json"), FhirErrors))]
pub async fn system(
    State(state): State<HttpState>,
    principal: Principal,
    uri: OriginalUri,
    RawQuery(query): RawQuery,
    prefer: Prefer,
    base: BaseUrl,
) -> Result<Response, ApiError> {
    kick_off(state, principal, Level::System, &uri, query, prefer, base).await
}

#[utoipa::path(get, path = "/fhir/Patient/$export", tag = "bulk",
    params(("Prefer" = String, Header, description = "respond-async (required)"),
        ("_outputFormat" = Option<String>, Query), ("_since" = Option<String>, Query), ("_type" = Option<String>, Query)),
    responses((status = 202, description = "Accepted; poll the Content-Location URL", body = serde_json::Value, content_type = "application/fhir+json"), FhirErrors))]
pub async fn patients(
    State(state): State<HttpState>,
    principal: Principal,
    FhirPath(resource_type): FhirPath<String>,
    uri: OriginalUri,
    RawQuery(query): RawQuery,
    prefer: Prefer,
    base: BaseUrl,
) -> Result<Response, ApiError> {
    if ResourceType::parse(&resource_type)? != ResourceType::PATIENT {
        return Err(ApiError::NotSupported(format!(
            "$export is served at the system level, on Patient and on a Group, not on \
             {resource_type}; nothing was started"
        )));
    }
    kick_off(state, principal, Level::Patient, &uri, query, prefer, base).await
}

#[utoipa::path(get, path = "/fhir/Group/{id}/$export", tag = "bulk",
    params(("id" = String, Path, description = "The Group whose patient members are exported"),
        ("Prefer" = String, Header, description = "respond-async (required)"),
        ("_outputFormat" = Option<String>, Query), ("_since" = Option<String>, Query), ("_type" = Option<String>, Query)),
    responses((status = 202, description = "Accepted; poll the Content-Location URL", body = serde_json::Value, content_type = "application/fhir+json"), FhirErrors))]
pub async fn group(
    State(state): State<HttpState>,
    principal: Principal,
    FhirPath((resource_type, id)): FhirPath<(String, String)>,
    uri: OriginalUri,
    RawQuery(query): RawQuery,
    prefer: Prefer,
    base: BaseUrl,
) -> Result<Response, ApiError> {
    if resource_type != "Group" {
        ResourceType::parse(&resource_type)?;
        return Err(ApiError::NotSupported(format!(
            "an instance-level $export is served on a Group, not on {resource_type}; nothing \
             was started"
        )));
    }
    let level = Level::Group(id);
    kick_off(state, principal, level, &uri, query, prefer, base).await
}

async fn kick_off(
    state: HttpState,
    principal: Principal,
    level: Level,
    uri: &OriginalUri,
    query: Option<String>,
    prefer: Prefer,
    base: BaseUrl,
) -> Result<Response, ApiError> {
    if !prefer.respond_async {
        return Err(ApiError::BadRequest(
            "a Bulk Data export runs asynchronously: send Prefer: respond-async; nothing was \
             started"
                .into(),
        ));
    }
    let (types, since) = parameters(query.as_deref())?;
    let path = uri.path();
    let request_url = format!(
        "{}{}{}",
        base.0,
        path.strip_prefix("/fhir").unwrap_or(path),
        query.map(|q| format!("?{q}")).unwrap_or_default()
    );
    let request = ExportRequest {
        level,
        types,
        since,
        request_url,
    };
    let job = state.exports.start(&principal, request).await?;
    let mut response = outcome_response(
        StatusCode::ACCEPTED,
        &[Issue::information(
            "export started; poll the Content-Location URL for its progress and manifest".into(),
        )],
    );
    let location = HeaderValue::from_str(&format!("{}/$export-status/{}", base.0, job.id))
        .map_err(|_| ApiError::BadRequest("the base URL is not a valid header value".into()))?;
    response
        .headers_mut()
        .insert(header::CONTENT_LOCATION, location);
    Ok(response)
}

/// `_type` and `_since` of a kick-off; anything else the spec defines is refused.
fn parameters(query: Option<&str>) -> Result<(Option<Vec<ResourceType>>, Option<i64>), ApiError> {
    let mut types: Option<Vec<ResourceType>> = None;
    let mut since = None;
    for (name, value) in query_pairs(query) {
        match name.as_str() {
            "_outputFormat" => {
                if !NDJSON_NAMES.contains(&value.as_str()) {
                    return Err(ApiError::NotSupported(format!(
                        "_outputFormat {value:?} is not served: exports are \
                         application/fhir+ndjson; nothing was started"
                    )));
                }
            }
            "_since" => {
                let (start, _) = period(&value).ok_or_else(|| {
                    ApiError::BadRequest(format!("_since must be a FHIR instant, not {value:?}"))
                })?;
                since = Some(start);
            }
            "_type" => {
                for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                    let resource_type = ResourceType::parse(name).map_err(|_| {
                        ApiError::BadRequest(format!(
                            "_type names {name:?}, which is not an R4 resource type; nothing \
                             was started"
                        ))
                    })?;
                    let list = types.get_or_insert_with(Vec::new);
                    if !list.contains(&resource_type) {
                        list.push(resource_type);
                    }
                }
            }
            // The response format of the kick-off itself, handled by negotiation.
            "_format" | "_pretty" => {}
            other => {
                return Err(ApiError::NotSupported(format!(
                    "the export parameter {other} is not supported by this server; nothing \
                     was started"
                )));
            }
        }
    }
    Ok((types, since))
}

#[utoipa::path(get, path = "/fhir/$export-status/{job}", tag = "bulk",
    params(("job" = String, Path, description = "The job, from the kick-off's Content-Location")),
    responses((status = 202, description = "Still running: X-Progress, Retry-After"),
        (status = 200, description = "The manifest: transactionTime, request, requiresAccessToken, output (type, url, count), error", body = serde_json::Value, content_type = "application/json"),
        FhirErrors))]
pub async fn status(
    State(state): State<HttpState>,
    principal: Principal,
    FhirPath(job): FhirPath<String>,
    base: BaseUrl,
) -> Result<Response, ApiError> {
    match state.exports.status(&principal, &job)? {
        Status::Running { progress } => {
            let mut response = StatusCode::ACCEPTED.into_response();
            let headers = response.headers_mut();
            if let Ok(progress) = HeaderValue::from_str(&progress) {
                headers.insert("x-progress", progress);
            }
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(POLL_AFTER_SECONDS),
            );
            Ok(response)
        }
        Status::Failed {
            detail,
            unavailable,
        } => Err(crate::bulk::BulkError::Failed {
            detail,
            unavailable,
        }
        .into()),
        Status::Complete {
            transaction_time,
            request_url,
            files,
            expires_at,
        } => {
            let output: Vec<serde_json::Value> = files
                .iter()
                .enumerate()
                .map(|(index, file)| {
                    serde_json::json!({
                        "type": file.resource_type,
                        "url": format!("{}/$export-file/{job}/{index}", base.0),
                        "count": file.count,
                    })
                })
                .collect();
            let manifest = serde_json::json!({
                "transactionTime": format_instant(transaction_time),
                "request": request_url,
                "requiresAccessToken": true,
                "output": output,
                "error": [],
            });
            let mut response = (
                StatusCode::OK,
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(super::negotiate::PLAIN_JSON),
                )],
                manifest.to_string(),
            )
                .into_response();
            let expires =
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(expires_at.max(0) as u64);
            if let Ok(value) = HeaderValue::from_str(&httpdate::fmt_http_date(expires)) {
                response.headers_mut().insert(header::EXPIRES, value);
            }
            Ok(response)
        }
    }
}

#[utoipa::path(delete, path = "/fhir/$export-status/{job}", tag = "bulk",
    params(("job" = String, Path, description = "The job to cancel")),
    responses((status = 202, description = "Cancelled; its files are removed", body = serde_json::Value, content_type = "application/fhir+json"), FhirErrors))]
pub async fn cancel(
    State(state): State<HttpState>,
    principal: Principal,
    FhirPath(job): FhirPath<String>,
) -> Result<Response, ApiError> {
    state.exports.cancel(&principal, &job).await?;
    Ok(outcome_response(
        StatusCode::ACCEPTED,
        &[Issue::information(format!(
            "export {job} cancelled; its files are removed"
        ))],
    ))
}

#[utoipa::path(get, path = "/fhir/$export-file/{job}/{file}", tag = "bulk",
    params(("job" = String, Path, description = "The job"), ("file" = usize, Path, description = "The file's position in the manifest")),
    responses((status = 200, description = "The resources, one per line", body = String, content_type = "application/fhir+ndjson"), FhirErrors))]
pub async fn file(
    State(state): State<HttpState>,
    principal: Principal,
    FhirPath((job, index)): FhirPath<(String, usize)>,
) -> Result<Response, ApiError> {
    let (ndjson, file) = state.exports.file(&principal, &job, index).await?;
    // The disclosure happens here, so the download's AuditEvent names what it carried.
    if let Some(touched) = &principal.touched {
        for (reference, patients) in file.disclosed {
            touched.judged(reference, &patients, true);
        }
    }
    Ok((
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/fhir+ndjson"),
        )],
        ndjson,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(query: &str, accepted: bool) {
        assert_eq!(parameters(Some(query)).is_ok(), accepted, "{query}");
    }

    #[test]
    fn takes_what_it_serves_and_refuses_the_rest() {
        check(
            "_type=Patient,Observation&_since=2024-01-01T00:00:00Z",
            true,
        );
        check("_outputFormat=application%2Ffhir%2Bndjson", true);
        check("_outputFormat=ndjson&_type=Patient&_type=Condition", true);
        check("_outputFormat=text%2Fcsv", false);
        check("_type=Nonsense", false);
        check("_since=yesterday", false);
        check("_elements=id", false);
        check("_typeFilter=Observation%3Fcode%3Dx", false);
        check("patient=Patient%2F1", false);
        check("includeAssociatedData=LatestProvenanceResources", false);
    }

    #[test]
    fn types_are_listed_once() {
        let (types, _) = parameters(Some("_type=Patient,Patient&_type=Patient")).unwrap();
        assert_eq!(types.unwrap().len(), 1);
    }
}
