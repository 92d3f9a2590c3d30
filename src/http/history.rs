//! History at three levels (instance, type, system) as `history` Bundles: newest first,
//! `_count` per page, `_since`, `_at`, a `first` link, and `next` links that carry an opaque
//! cursor (the last entry of the page), so paging stays stable while new versions arrive.
//! The first page counts the entries (up to `TOTAL_CAP`: past it the Bundle has no `total`
//! rather than a guess) and the cursor carries that count to the later pages, which list the
//! same history: versions written after the first page are newer than every cursor.

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;

use super::conditions::{Interaction, refuse_unimplemented};
use super::negotiate::{BaseUrl, Negotiated, query_pairs};
use super::openapi::FhirErrors;
use super::outcome::ApiError;
use super::{FhirPath, HttpState};
use crate::auth::Principal;
use crate::fhir::instant::{format_instant, now_millis, period};
use crate::fhir::json::{self, Json, object};
use crate::fhir::resource::ResourceType;
use crate::index::{HistoryCursor, HistoryQuery, HistoryScope, Method};
use crate::repository::ResourceVersion;

const DEFAULT_COUNT: usize = 50;
const MAX_COUNT: usize = 1000;
const CURSOR_PARAM: &str = "_cursor";
/// Histories longer than this have no `total`: counting them would cost more than the page.
const TOTAL_CAP: usize = 1000;

#[utoipa::path(get, path = "/fhir/_history", tag = "history",
    params(("_count" = Option<usize>, Query), ("_since" = Option<String>, Query), ("_at" = Option<String>, Query)),
    responses((status = 200, description = "A history Bundle, newest first", body = serde_json::Value, content_type = "application/fhir+json"), FhirErrors))]
pub async fn system(
    State(state): State<HttpState>,
    principal: Principal,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    negotiated: Negotiated,
    base: BaseUrl,
) -> Result<Response, ApiError> {
    refuse_unimplemented(&headers, Interaction::History)?;
    respond(
        &state,
        &principal,
        HistoryScope::System,
        "_history",
        query,
        negotiated,
        &base,
    )
    .await
}

#[utoipa::path(get, path = "/fhir/{type}/_history", tag = "history",
    params(("type" = String, Path, description = "Resource type, e.g. Patient"), ("_count" = Option<usize>, Query), ("_since" = Option<String>, Query), ("_at" = Option<String>, Query)),
    responses((status = 200, description = "A history Bundle, newest first", body = serde_json::Value, content_type = "application/fhir+json"), FhirErrors))]
pub async fn type_level(
    State(state): State<HttpState>,
    principal: Principal,
    FhirPath(resource_type): FhirPath<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    negotiated: Negotiated,
    base: BaseUrl,
) -> Result<Response, ApiError> {
    refuse_unimplemented(&headers, Interaction::History)?;
    let resource_type = ResourceType::parse(&resource_type)?;
    let path = format!("{resource_type}/_history");
    let scope = HistoryScope::Type(resource_type.as_str().to_owned());
    respond(&state, &principal, scope, &path, query, negotiated, &base).await
}

#[utoipa::path(get, path = "/fhir/{type}/{id}/_history", tag = "history",
    params(("type" = String, Path, description = "Resource type, e.g. Patient"), ("id" = String, Path, description = "Logical id"), ("_count" = Option<usize>, Query), ("_since" = Option<String>, Query), ("_at" = Option<String>, Query)),
    responses((status = 200, description = "A history Bundle, newest first", body = serde_json::Value, content_type = "application/fhir+json"), FhirErrors))]
pub async fn instance(
    State(state): State<HttpState>,
    principal: Principal,
    FhirPath((resource_type, id)): FhirPath<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    negotiated: Negotiated,
    base: BaseUrl,
) -> Result<Response, ApiError> {
    refuse_unimplemented(&headers, Interaction::History)?;
    let resource_type = ResourceType::parse(&resource_type)?;
    let path = format!("{resource_type}/{id}/_history");
    let scope = HistoryScope::Instance {
        resource_type: resource_type.as_str().to_owned(),
        id,
    };
    respond(&state, &principal, scope, &path, query, negotiated, &base).await
}

async fn respond(
    state: &HttpState,
    principal: &Principal,
    scope: HistoryScope,
    path: &str,
    query: Option<String>,
    negotiated: Negotiated,
    base: &BaseUrl,
) -> Result<Response, ApiError> {
    let params = HistoryParams::parse(query.as_deref())?;
    let history_query = HistoryQuery {
        scope,
        since: params.since,
        at: params.at,
        after: params.cursor.clone(),
        patient: None,
        // One more than a page tells whether there is a next page.
        limit: params.count + 1,
    };
    let mut page = state.repo.history(principal, &history_query).await?;
    let next_cursor = if page.len() > params.count {
        page.truncate(params.count);
        page.last().map(|v| HistoryCursor::after(&v.record))
    } else {
        None
    };
    let total = match (&params.cursor, next_cursor.is_some()) {
        (Some(_), _) => params.total,
        // One page is the whole history.
        (None, false) => Some(page.len()),
        (None, true) => {
            state
                .repo
                .history_total(principal, &history_query, TOTAL_CAP)
                .await?
        }
    };
    let bundle = bundle(&page, base, path, &params, next_cursor.as_ref(), total);
    let mut response = (StatusCode::OK, negotiated.render(&bundle)).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(negotiated.content_type),
    );
    Ok(response)
}

/// The history parameters, as given (kept to build the links).
struct HistoryParams {
    count: usize,
    since: Option<i64>,
    since_text: Option<String>,
    at: Option<(i64, i64)>,
    at_text: Option<String>,
    cursor: Option<HistoryCursor>,
    /// The history's total, as the first page counted it (carried by the cursor).
    total: Option<usize>,
}

impl HistoryParams {
    fn parse(query: Option<&str>) -> Result<HistoryParams, ApiError> {
        let mut params = HistoryParams {
            count: DEFAULT_COUNT,
            since: None,
            since_text: None,
            at: None,
            at_text: None,
            cursor: None,
            total: None,
        };
        for (name, value) in query_pairs(query) {
            match name.as_str() {
                "_count" => {
                    params.count = value
                        .parse::<usize>()
                        .map_err(|_| {
                            ApiError::BadRequest(format!(
                                "_count must be a whole number, not \"{}\"",
                                preview(&value)
                            ))
                        })?
                        .clamp(1, MAX_COUNT);
                }
                "_since" => {
                    let (start, _) = period(&value).ok_or_else(|| {
                        ApiError::BadRequest(format!(
                            "_since must be a FHIR instant, not \"{}\"",
                            preview(&value)
                        ))
                    })?;
                    params.since = Some(start);
                    params.since_text = Some(value);
                }
                "_at" => {
                    params.at = Some(period(&value).ok_or_else(|| {
                        ApiError::BadRequest(format!(
                            "_at must be a FHIR date or dateTime, not \"{}\"",
                            preview(&value)
                        ))
                    })?);
                    params.at_text = Some(value);
                }
                CURSOR_PARAM => {
                    let (cursor, total) = decode_cursor(&value)?;
                    params.cursor = Some(cursor);
                    params.total = total;
                }
                // _format and _pretty are content negotiation's; other parameters are ignored,
                // as FHIR lets a server do with parameters it does not support.
                _ => {}
            }
        }
        Ok(params)
    }

    fn link(
        &self,
        base: &BaseUrl,
        path: &str,
        cursor: Option<&HistoryCursor>,
        total: Option<usize>,
    ) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        query.append_pair("_count", &self.count.to_string());
        if let Some(since) = &self.since_text {
            query.append_pair("_since", since);
        }
        if let Some(at) = &self.at_text {
            query.append_pair("_at", at);
        }
        if let Some(cursor) = cursor {
            query.append_pair(CURSOR_PARAM, &encode_cursor(cursor, total));
        }
        format!("{}/{path}?{}", base.0, query.finish())
    }
}

fn preview(text: &str) -> String {
    text.chars().take(64).collect()
}

/// `last_updated|type|id|version[|total]` (ids and types never contain `|`).
fn encode_cursor(cursor: &HistoryCursor, total: Option<usize>) -> String {
    let mut text = format!(
        "{}|{}|{}|{}",
        cursor.last_updated, cursor.resource_type, cursor.id, cursor.version
    );
    if let Some(total) = total {
        text.push_str(&format!("|{total}"));
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

fn decode_cursor(token: &str) -> Result<(HistoryCursor, Option<usize>), ApiError> {
    let invalid =
        || ApiError::BadRequest(format!("{CURSOR_PARAM} is not a cursor this server issued"));
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let mut parts = text.splitn(5, '|');
    let (Some(last_updated), Some(resource_type), Some(id), Some(version)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid());
    };
    let total = match parts.next() {
        None => None,
        Some(total) => Some(total.parse().map_err(|_| invalid())?),
    };
    let cursor = HistoryCursor {
        last_updated: last_updated.parse().map_err(|_| invalid())?,
        resource_type: resource_type.to_owned(),
        id: id.to_owned(),
        version: version.parse().map_err(|_| invalid())?,
    };
    Ok((cursor, total))
}

fn bundle(
    page: &[ResourceVersion],
    base: &BaseUrl,
    path: &str,
    params: &HistoryParams,
    next: Option<&HistoryCursor>,
    total: Option<usize>,
) -> Json {
    let link = |relation: &str, cursor: Option<&HistoryCursor>| {
        object([
            ("relation", Json::str(relation)),
            ("url", Json::str(params.link(base, path, cursor, total))),
        ])
    };
    // No `previous`: a cursor points forward only, which is what keeps pages stable while
    // new versions arrive; `first` is the way back.
    let mut links = vec![link("self", params.cursor.as_ref()), link("first", None)];
    if let Some(next) = next {
        links.push(link("next", Some(next)));
    }
    let mut bundle = object([
        ("resourceType", Json::str("Bundle")),
        ("id", Json::str(crate::fhir::new_id())),
        (
            "meta",
            object([("lastUpdated", Json::str(format_instant(now_millis())))]),
        ),
        ("type", Json::str("history")),
        ("link", Json::Array(links)),
    ]);
    if let (Some(fields), Some(total)) = (bundle.as_object_mut(), total) {
        fields.insert("total", Json::Number(total.to_string()));
    }
    // FHIR JSON has no empty arrays: an empty page has no `entry` at all.
    if let Some(fields) = bundle.as_object_mut()
        && !page.is_empty()
    {
        let entries = page.iter().map(|version| entry(version, base)).collect();
        fields.insert("entry", Json::Array(entries));
    }
    bundle
}

fn entry(version: &ResourceVersion, base: &BaseUrl) -> Json {
    let record = &version.record;
    let relative = format!("{}/{}", record.resource_type, record.id);
    let (method, url, status) = match record.method {
        Method::Create => ("POST", record.resource_type.clone(), "201 Created"),
        Method::Update if record.version == 1 => ("PUT", relative.clone(), "201 Created"),
        Method::Update => ("PUT", relative.clone(), "200 OK"),
        Method::Delete | Method::Erase => ("DELETE", relative.clone(), "204 No Content"),
    };
    let mut entry = object([("fullUrl", Json::str(format!("{}/{relative}", base.0)))]);
    let Some(fields) = entry.as_object_mut() else {
        return entry;
    };
    if let Some(content) = &version.content
        && let Ok(resource) = json::parse(content)
    {
        fields.insert("resource", resource);
    }
    fields.insert(
        "request",
        object([("method", Json::str(method)), ("url", Json::str(url))]),
    );
    fields.insert(
        "response",
        object([
            ("status", Json::str(status)),
            ("etag", Json::str(format!("W/\"{}\"", record.version))),
            (
                "lastModified",
                Json::str(format_instant(record.last_updated)),
            ),
        ]),
    );
    entry
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_forgeries() {
        let cursor = HistoryCursor {
            last_updated: 1_700_000_000_000,
            resource_type: "Patient".into(),
            id: "a.b-c".into(),
            version: 7,
        };
        assert_eq!(
            decode_cursor(&encode_cursor(&cursor, None)).unwrap(),
            (cursor.clone(), None)
        );
        assert_eq!(
            decode_cursor(&encode_cursor(&cursor, Some(1234))).unwrap(),
            (cursor.clone(), Some(1234))
        );
        assert!(decode_cursor("not-a-cursor").is_err());
        assert!(
            decode_cursor(&base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("1|2")).is_err()
        );
    }
}
