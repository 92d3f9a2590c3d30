//! Search over HTTP: `GET /fhir/Type?…`, `POST /fhir/Type/_search` (form-encoded), system
//! search (`GET /fhir?_type=…`), compartment search (`GET /fhir/Patient/123/Observation`,
//! `GET /fhir/Patient/123/*`) and `Patient/123/$everything`, answered as `searchset` Bundles.
//!
//! Links: `self` names the parameters the search used (ignored ones are left out and reported
//! in an OperationOutcome entry), `first`, and `next` / `previous` carrying an opaque `_page`
//! (the snapshot time and the position), so pages stay consistent under concurrent writes.
//! `_summary` and `_elements` shape the entries; subsetted resources carry the `SUBSETTED` tag.

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;

use super::conditions::{Interaction, refuse_unimplemented};
use super::negotiate::{BaseUrl, Negotiated, Prefer, query_pairs};
use super::openapi::FhirErrors;
use super::outcome::{ApiError, outcome_resource};
use super::{FhirPath, HttpState};
use crate::auth::Principal;
use crate::fhir::definitions::Definitions;
use crate::fhir::instant::{format_instant, now_millis};
use crate::fhir::json::{self, Json, Object, object};
use crate::fhir::resource::ResourceType;
use crate::fhir::validate::Handling;
use crate::fhir::{Issue, IssueCode};
use crate::repository::ResourceVersion;
use crate::repository::search::{NextPage, PageRequest, SearchPage, SearchScope};
use crate::search::query::{self, DEFAULT_COUNT, SearchRequest, Strictness, Summary};

/// The opaque paging parameter of `next` and `previous` links.
const PAGE_PARAM: &str = "_page";
/// Most bytes of a form-encoded `_search` body.
const MAX_FORM_BYTES: usize = 1024 * 1024;

#[utoipa::path(get, path = "/fhir/{type}", tag = "search",
    params(("type" = String, Path, description = "Resource type, e.g. Patient"),
        ("_count" = Option<usize>, Query, description = "Page size (0: the total only)"),
        ("_sort" = Option<String>, Query, description = "Sort keys, - for descending"),
        ("_include" = Option<String>, Query), ("_revinclude" = Option<String>, Query),
        ("_summary" = Option<String>, Query), ("_elements" = Option<String>, Query),
        ("_total" = Option<String>, Query)),
    responses((status = 200, description = "A searchset Bundle", body = serde_json::Value, content_type = "application/fhir+json"), FhirErrors))]
pub async fn type_search(
    State(state): State<HttpState>,
    principal: Principal,
    FhirPath(resource_type): FhirPath<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    answer: SearchAnswer,
) -> Result<Response, ApiError> {
    refuse_unimplemented(&headers, Interaction::Search)?;
    let resource_type = ResourceType::parse(&resource_type)?;
    let scope = SearchScope {
        types: vec![resource_type],
        patient: None,
    };
    let path = resource_type.as_str().to_owned();
    respond(
        &state,
        &principal,
        scope,
        &path,
        query_pairs(query.as_deref()),
        answer,
    )
    .await
}

#[utoipa::path(post, path = "/fhir/{type}/_search", tag = "search",
    params(("type" = String, Path, description = "Resource type, e.g. Patient")),
    request_body(content = String, content_type = "application/x-www-form-urlencoded", description = "The search parameters"),
    responses((status = 200, description = "A searchset Bundle", body = serde_json::Value, content_type = "application/fhir+json"), FhirErrors))]
pub async fn type_search_post(
    State(state): State<HttpState>,
    principal: Principal,
    FhirPath(resource_type): FhirPath<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    answer: SearchAnswer,
    body: Bytes,
) -> Result<Response, ApiError> {
    refuse_unimplemented(&headers, Interaction::Search)?;
    let resource_type = ResourceType::parse(&resource_type)?;
    let pairs = form_pairs(&headers, query.as_deref(), &body)?;
    let scope = SearchScope {
        types: vec![resource_type],
        patient: None,
    };
    let path = resource_type.as_str().to_owned();
    respond(&state, &principal, scope, &path, pairs, answer).await
}

#[utoipa::path(get, path = "/fhir", tag = "search",
    params(("_type" = Option<String>, Query, description = "The resource types searched, comma-separated")),
    responses((status = 200, description = "A searchset Bundle across types", body = serde_json::Value, content_type = "application/fhir+json"), FhirErrors))]
pub async fn system_search(
    State(state): State<HttpState>,
    principal: Principal,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    answer: SearchAnswer,
) -> Result<Response, ApiError> {
    refuse_unimplemented(&headers, Interaction::Search)?;
    let pairs = query_pairs(query.as_deref());
    system_search_of(&state, &principal, pairs, answer).await
}

#[utoipa::path(post, path = "/fhir/_search", tag = "search",
    request_body(content = String, content_type = "application/x-www-form-urlencoded", description = "The search parameters"),
    responses((status = 200, description = "A searchset Bundle across types", body = serde_json::Value, content_type = "application/fhir+json"), FhirErrors))]
pub async fn system_search_post(
    State(state): State<HttpState>,
    principal: Principal,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    answer: SearchAnswer,
    body: Bytes,
) -> Result<Response, ApiError> {
    refuse_unimplemented(&headers, Interaction::Search)?;
    let pairs = form_pairs(&headers, query.as_deref(), &body)?;
    system_search_of(&state, &principal, pairs, answer).await
}

async fn system_search_of(
    state: &HttpState,
    principal: &Principal,
    pairs: Vec<(String, String)>,
    answer: SearchAnswer,
) -> Result<Response, ApiError> {
    let named: Vec<ResourceType> = pairs
        .iter()
        .filter(|(k, _)| k == "_type")
        .flat_map(|(_, v)| v.split(',').map(str::to_owned).collect::<Vec<_>>())
        .filter(|t| !t.is_empty())
        .map(|t| ResourceType::parse(&t))
        .collect::<Result<_, _>>()?;
    let types = if named.is_empty() {
        // Every type the principal may search at all.
        ResourceType::all()
            .filter(|t| {
                principal
                    .check(crate::auth::Permission::Search, t.as_str())
                    .is_ok()
            })
            .collect()
    } else {
        named
    };
    let scope = SearchScope {
        types,
        patient: None,
    };
    respond(state, principal, scope, "", pairs, answer).await
}

#[utoipa::path(get, path = "/fhir/Patient/{id}/{type}", tag = "search",
    params(("id" = String, Path, description = "The patient"), ("type" = String, Path, description = "A resource type, or * for all")),
    responses((status = 200, description = "A searchset Bundle of the patient's compartment", body = serde_json::Value, content_type = "application/fhir+json"), FhirErrors))]
pub async fn compartment_search(
    State(state): State<HttpState>,
    principal: Principal,
    FhirPath((compartment, id, target)): FhirPath<(String, String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    answer: SearchAnswer,
) -> Result<Response, ApiError> {
    refuse_unimplemented(&headers, Interaction::Search)?;
    if compartment != "Patient" {
        return Err(ApiError::NotSupported(format!(
            "compartment searches are supported for the Patient compartment, not {}",
            compartment.chars().take(64).collect::<String>()
        )));
    }
    crate::fhir::resource::check_id(&id)?;
    let types = if target == "*" {
        crate::search::compartment::compartment_types()
            .into_iter()
            .filter(|t| {
                principal
                    .check(crate::auth::Permission::Search, t.as_str())
                    .is_ok()
            })
            .collect()
    } else {
        vec![ResourceType::parse(&target)?]
    };
    let scope = SearchScope {
        types,
        patient: Some(id.clone()),
    };
    let path = format!("Patient/{id}/{target}");
    respond(
        &state,
        &principal,
        scope,
        &path,
        query_pairs(query.as_deref()),
        answer,
    )
    .await
}

#[utoipa::path(get, path = "/fhir/Patient/{id}/$everything", tag = "search",
    params(("id" = String, Path, description = "The patient"),
        ("_since" = Option<String>, Query, description = "Only resources updated since"),
        ("_type" = Option<String>, Query, description = "Only these types"),
        ("_count" = Option<usize>, Query)),
    responses((status = 200, description = "A searchset Bundle: the patient and everything in their compartment", body = serde_json::Value, content_type = "application/fhir+json"), FhirErrors))]
pub async fn everything(
    State(state): State<HttpState>,
    principal: Principal,
    FhirPath((resource_type, id)): FhirPath<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    answer: SearchAnswer,
) -> Result<Response, ApiError> {
    refuse_unimplemented(&headers, Interaction::Search)?;
    if resource_type != "Patient" {
        ResourceType::parse(&resource_type)?;
        return Err(ApiError::NotSupported(format!(
            "$everything is supported on Patient, not {resource_type}"
        )));
    }
    crate::fhir::resource::check_id(&id)?;
    let mut types: Vec<ResourceType> = Vec::new();
    let mut pairs = Vec::new();
    for (name, value) in query_pairs(query.as_deref()) {
        match name.as_str() {
            "_type" => {
                for t in value.split(',').filter(|t| !t.is_empty()) {
                    types.push(ResourceType::parse(t)?);
                }
            }
            // `_since`: updated since, i.e. `_lastUpdated=ge…`.
            "_since" => {
                crate::fhir::instant::period(&value)
                    .ok_or_else(|| ApiError::BadRequest("_since must be a FHIR instant".into()))?;
                pairs.push(("_lastUpdated".to_owned(), format!("ge{value}")));
            }
            // `_lastUpdated` is how `_since` is carried into the page links.
            "_count" | "_page" | "_format" | "_pretty" | "_elements" | "_summary"
            | "_lastUpdated" => pairs.push((name, value)),
            other => {
                return Err(ApiError::NotSupported(format!(
                    "$everything does not take the parameter {}",
                    other.chars().take(64).collect::<String>()
                )));
            }
        }
    }
    if types.is_empty() {
        types = crate::search::compartment::compartment_types()
            .into_iter()
            .filter(|t| {
                principal
                    .check(crate::auth::Permission::Search, t.as_str())
                    .is_ok()
            })
            .collect();
    }
    let scope = SearchScope {
        types,
        patient: Some(id.clone()),
    };
    let path = format!("Patient/{id}/$everything");
    respond(&state, &principal, scope, &path, pairs, answer).await
}

/// The parameters of a `POST …/_search`: the form body's, after the URL's own.
fn form_pairs(
    headers: &HeaderMap,
    query: Option<&str>,
    body: &[u8],
) -> Result<Vec<(String, String)>, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    if !body.is_empty() && !content_type.starts_with("application/x-www-form-urlencoded") {
        return Err(ApiError::UnsupportedMediaType(
            "a _search body must be application/x-www-form-urlencoded".into(),
        ));
    }
    if body.len() > MAX_FORM_BYTES {
        return Err(ApiError::PayloadTooLarge(MAX_FORM_BYTES));
    }
    let mut pairs = query_pairs(query);
    pairs.extend(form_urlencoded::parse(body).map(|(k, v)| (k.into_owned(), v.into_owned())));
    Ok(pairs)
}

/// How to answer a search: the format, the base URL of links, and the client's handling.
pub struct SearchAnswer {
    negotiated: Negotiated,
    base: BaseUrl,
    strictness: Strictness,
}

impl<S> axum::extract::FromRequestParts<S> for SearchAnswer
where
    S: Send + Sync,
    HttpState: axum::extract::FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        let http = <HttpState as axum::extract::FromRef<S>>::from_ref(state);
        let prefer = Prefer::from_request_parts(parts, state).await?;
        let strictness = match prefer.handling_given {
            Some(Handling::Strict) => Strictness::Strict,
            Some(Handling::Lenient) => Strictness::Lenient,
            None => http.settings.search_handling,
        };
        Ok(SearchAnswer {
            negotiated: Negotiated::from_request_parts(parts, state).await?,
            base: BaseUrl::from_request_parts(parts, state).await?,
            strictness,
        })
    }
}

/// A later page's position, as carried by `_page`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct PagePosition {
    snapshot: i64,
    after: Option<(String, String)>,
    offset: usize,
    /// The total the first page gave (the same at the same snapshot), for later pages.
    total: Option<usize>,
}

fn encode_page(position: &PagePosition) -> String {
    let total = position.total.map(|t| t.to_string()).unwrap_or_default();
    let text = match &position.after {
        Some((rt, id)) => format!(
            "{}|a|{rt}|{id}|{}|{total}",
            position.snapshot, position.offset
        ),
        None => format!("{}|o|||{}|{total}", position.snapshot, position.offset),
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

fn decode_page(token: &str) -> Result<PagePosition, ApiError> {
    let invalid = || ApiError::BadRequest(format!("{PAGE_PARAM} is not a page this server issued"));
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let parts: Vec<&str> = text.splitn(6, '|').collect();
    let (snapshot, mode, rt, id, offset, total) = match parts.as_slice() {
        [snapshot, mode, rt, id, offset, total] => (snapshot, mode, rt, id, offset, *total),
        // Issued before pages carried their total.
        [snapshot, mode, rt, id, offset] => (snapshot, mode, rt, id, offset, ""),
        _ => return Err(invalid()),
    };
    let snapshot: i64 = snapshot.parse().map_err(|_| invalid())?;
    let offset: usize = offset.parse().map_err(|_| invalid())?;
    let total = match total {
        "" => None,
        text => Some(text.parse::<usize>().map_err(|_| invalid())?),
    };
    let after = match *mode {
        "a" => {
            ResourceType::parse(rt).map_err(|_| invalid())?;
            Some(((*rt).to_owned(), (*id).to_owned()))
        }
        "o" => None,
        _ => return Err(invalid()),
    };
    Ok(PagePosition {
        snapshot,
        after,
        offset,
        total,
    })
}

async fn respond(
    state: &HttpState,
    principal: &Principal,
    scope: SearchScope,
    path: &str,
    mut pairs: Vec<(String, String)>,
    answer: SearchAnswer,
) -> Result<Response, ApiError> {
    let position = match pairs.iter().position(|(k, _)| k == PAGE_PARAM) {
        Some(at) => Some(decode_page(&pairs.remove(at).1)?),
        None => None,
    };
    let registry = state.repo.registry();
    let context = match scope.types.as_slice() {
        [one] => Some(*one),
        _ => None,
    };
    let request = query::parse(&registry, context, &pairs, answer.strictness)
        .map_err(crate::repository::RepoError::from)?;
    let count = request.count.unwrap_or(DEFAULT_COUNT);
    let count = if request.summary == Summary::Count {
        0
    } else {
        count
    };
    let page = PageRequest {
        snapshot: position.as_ref().map(|p| p.snapshot),
        after: position.as_ref().and_then(|p| p.after.clone()),
        offset: position.as_ref().map_or(0, |p| p.offset),
        total: position.as_ref().and_then(|p| p.total),
        count,
    };
    let result = state
        .repo
        .search(principal, &scope, &request, &page, &answer.base.0)
        .await?;
    let bundle = bundle(&result, &request, &answer.base, path, &page);
    let mut response = (StatusCode::OK, answer.negotiated.render(&bundle)).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(answer.negotiated.content_type),
    );
    Ok(response)
}

/// The link of a page: the parameters used, the page size, and the position.
fn link(
    base: &BaseUrl,
    path: &str,
    request: &SearchRequest,
    count: usize,
    position: Option<&PagePosition>,
) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (k, v) in &request.accepted {
        if k != "_count" {
            query.append_pair(k, v);
        }
    }
    query.append_pair("_count", &count.to_string());
    if let Some(position) = position {
        query.append_pair(PAGE_PARAM, &encode_page(position));
    }
    let separator = if path.is_empty() { "" } else { "/" };
    format!("{}{separator}{path}?{}", base.0, query.finish())
}

fn bundle(
    result: &SearchPage,
    request: &SearchRequest,
    base: &BaseUrl,
    path: &str,
    page: &PageRequest,
) -> Json {
    let count = page.count;
    let this = (page.snapshot.is_some()).then(|| PagePosition {
        snapshot: result.snapshot,
        after: page.after.clone(),
        offset: page.offset,
        total: result.total,
    });
    let mut links = vec![
        object([
            ("relation", Json::str("self")),
            (
                "url",
                Json::str(link(base, path, request, count, this.as_ref())),
            ),
        ]),
        object([
            ("relation", Json::str("first")),
            ("url", Json::str(link(base, path, request, count, None))),
        ]),
    ];
    // The page index, for `previous`: an unsorted page knows it from its offset too.
    let here = page.offset;
    if let Some(next) = &result.next {
        let position = match next {
            NextPage::After(rt, id) => PagePosition {
                snapshot: result.snapshot,
                after: Some((rt.clone(), id.clone())),
                offset: here + count,
                total: result.total,
            },
            NextPage::Offset(offset) => PagePosition {
                snapshot: result.snapshot,
                after: None,
                offset: *offset,
                total: result.total,
            },
        };
        links.push(object([
            ("relation", Json::str("next")),
            (
                "url",
                Json::str(link(base, path, request, count, Some(&position))),
            ),
        ]));
    }
    if here > 0 && count > 0 {
        let position = PagePosition {
            snapshot: result.snapshot,
            after: None,
            offset: here.saturating_sub(count),
            total: result.total,
        };
        links.push(object([
            ("relation", Json::str("previous")),
            (
                "url",
                Json::str(link(base, path, request, count, Some(&position))),
            ),
        ]));
    }
    let mut fields = Object::new();
    fields.insert("resourceType", Json::str("Bundle"));
    fields.insert("id", Json::str(crate::fhir::new_id()));
    fields.insert(
        "meta",
        object([("lastUpdated", Json::str(format_instant(now_millis())))]),
    );
    fields.insert("type", Json::str("searchset"));
    if let Some(total) = result.total {
        fields.insert("total", Json::Number(total.to_string()));
    }
    fields.insert("link", Json::Array(links));
    let mut entries: Vec<Json> = Vec::new();
    if request.summary != Summary::Count {
        for version in &result.matches {
            entries.push(entry(version, base, "match", request));
        }
        for version in &result.included {
            entries.push(entry(version, base, "include", request));
        }
    }
    if !request.ignored.is_empty() {
        let issues: Vec<Issue> = request
            .ignored
            .iter()
            .map(|(name, why)| {
                Issue::warning(
                    IssueCode::NotSupported,
                    format!(
                        "the parameter {} was ignored: {why}",
                        name.chars().take(64).collect::<String>()
                    ),
                    None,
                )
            })
            .collect();
        entries.push(object([
            ("resource", outcome_resource(&issues)),
            ("search", object([("mode", Json::str("outcome"))])),
        ]));
    }
    if !entries.is_empty() {
        fields.insert("entry", Json::Array(entries));
    }
    Json::Object(fields)
}

fn entry(version: &ResourceVersion, base: &BaseUrl, mode: &str, request: &SearchRequest) -> Json {
    let record = &version.record;
    let mut entry = Object::new();
    entry.insert(
        "fullUrl",
        Json::str(format!("{}/{}/{}", base.0, record.resource_type, record.id)),
    );
    if let Some(content) = &version.content
        && let Ok(resource) = json::parse(content)
    {
        entry.insert("resource", shape(resource, request));
    }
    entry.insert("search", object([("mode", Json::str(mode))]));
    Json::Object(entry)
}

/// Which top-level elements of a resource a shaped entry keeps.
type Keep<'a> = Box<dyn Fn(&str) -> bool + 'a>;

/// Applies `_summary` and `_elements` to one resource.
fn shape(resource: Json, request: &SearchRequest) -> Json {
    let Json::Object(fields) = resource else {
        return resource;
    };
    let resource_type = fields
        .get("resourceType")
        .and_then(Json::as_str)
        .unwrap_or_default()
        .to_owned();
    let definitions = Definitions::r4();
    let owner = definitions.owner(&resource_type);
    let element_of = |key: &str| owner.and_then(|o| o.lookup(key)).map(|(e, _)| e);
    let keep: Option<Keep<'_>> = if !request.elements.is_empty() {
        let wanted = request.elements.clone();
        Some(Box::new(move |key: &str| {
            let name = element_of(key).map_or(key, |e| e.name.as_str());
            wanted.iter().any(|w| w == name || w == key)
                || element_of(key).is_some_and(|e| e.min > 0)
        }))
    } else {
        match request.summary {
            Summary::True => Some(Box::new(move |key: &str| {
                element_of(key).is_some_and(|e| e.summary || e.min > 0)
            })),
            Summary::Text => Some(Box::new(move |key: &str| {
                key == "text" || element_of(key).is_some_and(|e| e.min > 0)
            })),
            Summary::Data => Some(Box::new(|key: &str| key != "text")),
            Summary::False | Summary::Count => None,
        }
    };
    let Some(keep) = keep else {
        return Json::Object(fields);
    };
    let mut shaped = Object::new();
    for (key, value) in fields.iter() {
        if matches!(key, "resourceType" | "id" | "meta") || keep(key) {
            shaped.insert(key, value.clone());
        }
    }
    mark_subsetted(&mut shaped);
    Json::Object(shaped)
}

/// Tags a resource that is not whole (`meta.tag` SUBSETTED, as the specification asks).
fn mark_subsetted(resource: &mut Object) {
    let tag = object([
        (
            "system",
            Json::str("http://terminology.hl7.org/CodeSystem/v3-ObservationValue"),
        ),
        ("code", Json::str("SUBSETTED")),
    ]);
    let mut meta = match resource.remove("meta") {
        Some(Json::Object(meta)) => meta,
        _ => Object::new(),
    };
    let mut tags = match meta.remove("tag") {
        Some(Json::Array(tags)) => tags,
        _ => Vec::new(),
    };
    tags.push(tag);
    meta.insert("tag", Json::Array(tags));
    resource.insert("meta", Json::Object(meta));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_round_trip_and_refuse_forgeries() {
        let position = PagePosition {
            snapshot: 1_700_000_000_000,
            after: Some(("Patient".into(), "a.b-c".into())),
            offset: 20,
            total: Some(137),
        };
        assert_eq!(decode_page(&encode_page(&position)).unwrap(), position);
        let offset = PagePosition {
            snapshot: 5,
            after: None,
            offset: 40,
            total: None,
        };
        assert_eq!(decode_page(&encode_page(&offset)).unwrap(), offset);
        // A token issued before pages carried a total.
        let older = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("5|o|||40");
        assert_eq!(decode_page(&older).unwrap(), offset);
        let bad_total = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("5|o|||40|x");
        assert!(decode_page(&bad_total).is_err());
        assert!(decode_page("garbage").is_err());
        let bad_type = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("1|a|Nope|x|0");
        assert!(decode_page(&bad_type).is_err());
    }
}
