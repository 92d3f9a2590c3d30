//! `POST /fhir` (and `POST /fhir/`) with a `batch` or `transaction` Bundle.
//!
//! A batch's entries are independent: each is run as the request it describes, through this
//! same router with the caller's own token (so it is authorized, audited and answered exactly
//! as it would be alone), and its status, headers and resource or OperationOutcome become its
//! response entry. A transaction's writes go to `Repository::transaction`, which commits all
//! of them or none; its reads (GET and HEAD entries) run after the commit, as in a batch. A
//! failing transaction answers with the failing entry's status and OperationOutcome, the entry
//! named.

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tower::ServiceExt;

use super::HttpState;
use super::body::FhirBody;
use super::negotiate::{BaseUrl, Negotiated, Prefer, Return, parse_version_tag};
use super::openapi::{BodyErrors, FhirErrors};
use super::outcome::{ApiError, outcome_resource};
use crate::auth::Principal;
use crate::fhir::instant::format_instant;
use crate::fhir::json::{Json, Object, object};
use crate::fhir::patch::{PatchDocument, PatchFormat};
use crate::fhir::resource::ResourceType;
use crate::repository::conditional::Criteria;
use crate::repository::transaction::{Target, TxEntry, TxRequest, TxResult};
use crate::repository::{Precondition, RepoError, ResourceVersion};

#[utoipa::path(post, path = "/fhir", tag = "bundle",
    request_body(content = serde_json::Value, content_type = "application/fhir+json", description = "A Bundle of type batch or transaction"),
    responses(
        (status = 200, description = "A batch-response or transaction-response Bundle", body = serde_json::Value, content_type = "application/fhir+json"),
        (status = 413, description = "More entries than the configured limit (OperationOutcome)", body = serde_json::Value), FhirErrors, BodyErrors))]
// Each argument is an extractor: axum passes them, nobody calls this by hand.
#[allow(clippy::too_many_arguments)]
pub async fn process(
    State(state): State<HttpState>,
    principal: Principal,
    headers: HeaderMap,
    negotiated: Negotiated,
    prefer: Prefer,
    base: BaseUrl,
    Peer(connect): Peer,
    FhirBody(body): FhirBody,
) -> Result<Response, ApiError> {
    let bundle = crate::fhir::json::parse(&body)
        .map_err(|e| ApiError::BadRequest(format!("the Bundle is not valid JSON: {e}")))?;
    let kind = bundle_kind(&bundle)?;
    let entries = bundle.get("entry").and_then(Json::as_array).unwrap_or(&[]);
    if entries.len() > state.settings.max_bundle_entries {
        return Err(ApiError::TooManyEntries {
            entries: entries.len(),
            limit: state.settings.max_bundle_entries,
        });
    }
    let requests = entries
        .iter()
        .enumerate()
        .map(|(n, entry)| EntryRequest::parse(entry, &base.0).map_err(|e| at_entry(n, e)))
        .collect::<Result<Vec<_>, _>>()?;
    let dispatch = Dispatch {
        state: &state,
        headers: &headers,
        connect,
    };
    let response_entries = match kind {
        Kind::Batch => {
            let mut answered = Vec::with_capacity(requests.len());
            for request in &requests {
                answered.push(dispatch.run(request).await);
            }
            answered
        }
        Kind::Transaction => {
            transaction(&state, &principal, &dispatch, requests, &prefer, &base).await?
        }
    };
    let bundle = object([
        ("resourceType", Json::str("Bundle")),
        ("type", Json::str(kind.response_type())),
        ("entry", Json::Array(response_entries)),
    ]);
    let mut response = (StatusCode::OK, negotiated.render(&bundle)).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(negotiated.content_type),
    );
    Ok(response)
}

/// The caller's address, when the server was started with it, for the entries' audit.
pub struct Peer(Option<ConnectInfo<std::net::SocketAddr>>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Peer(parts.extensions.get().cloned()))
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Batch,
    Transaction,
}

impl Kind {
    fn response_type(self) -> &'static str {
        match self {
            Kind::Batch => "batch-response",
            Kind::Transaction => "transaction-response",
        }
    }
}

fn bundle_kind(bundle: &Json) -> Result<Kind, ApiError> {
    if bundle.get("resourceType").and_then(Json::as_str) != Some("Bundle") {
        return Err(ApiError::BadRequest(
            "POST to the FHIR base takes a Bundle of type batch or transaction".into(),
        ));
    }
    match bundle.get("type").and_then(Json::as_str) {
        Some("batch") => Ok(Kind::Batch),
        Some("transaction") => Ok(Kind::Transaction),
        Some(other) => Err(ApiError::NotSupported(format!(
            "a Bundle of type {} is not processed at the FHIR base; POST it to /fhir/Bundle to \
             store it, or send a batch or transaction",
            other.chars().take(40).collect::<String>()
        ))),
        None => Err(ApiError::BadRequest(
            "the Bundle has no type: batch or transaction".into(),
        )),
    }
}

/// One entry's request, as its `request` element says.
struct EntryRequest {
    full_url: Option<String>,
    method: Method,
    /// Relative to the FHIR base, without a leading slash (`Patient/1`, `Patient?x=y`).
    url: String,
    resource: Option<Json>,
    if_match: Option<String>,
    if_none_match: Option<String>,
    if_none_exist: Option<String>,
    if_modified_since: Option<String>,
}

impl EntryRequest {
    fn parse(entry: &Json, base: &str) -> Result<EntryRequest, ApiError> {
        let request = entry
            .get("request")
            .ok_or_else(|| ApiError::BadRequest("the entry has no request".into()))?;
        let text = |name: &str| request.get(name).and_then(Json::as_str).map(str::to_owned);
        let method = match text("method").as_deref() {
            Some("GET") => Method::GET,
            Some("HEAD") => Method::HEAD,
            Some("POST") => Method::POST,
            Some("PUT") => Method::PUT,
            Some("DELETE") => Method::DELETE,
            Some("PATCH") => Method::PATCH,
            Some(other) => {
                return Err(ApiError::BadRequest(format!(
                    "request.method {} is not an HTTP verb of FHIR",
                    other.chars().take(20).collect::<String>()
                )));
            }
            None => {
                return Err(ApiError::BadRequest(
                    "the entry has no request.method".into(),
                ));
            }
        };
        let raw_url = text("url")
            .ok_or_else(|| ApiError::BadRequest("the entry has no request.url".into()))?;
        let url = raw_url
            .strip_prefix(base)
            .unwrap_or(&raw_url)
            .trim_start_matches('/')
            .to_owned();
        if url.contains("://") {
            return Err(ApiError::BadRequest(
                "request.url names another server; entries act on this one".into(),
            ));
        }
        let first = url.split(['/', '?']).next().unwrap_or_default();
        if first.is_empty() || first.starts_with('$') && method != Method::GET {
            return Err(ApiError::BadRequest(
                "request.url must name a resource type (a Bundle is not nested in a Bundle)".into(),
            ));
        }
        Ok(EntryRequest {
            full_url: entry
                .get("fullUrl")
                .and_then(Json::as_str)
                .map(str::to_owned),
            method,
            url,
            resource: entry.get("resource").cloned(),
            if_match: text("ifMatch"),
            if_none_match: text("ifNoneMatch"),
            if_none_exist: text("ifNoneExist"),
            if_modified_since: text("ifModifiedSince"),
        })
    }

    fn is_read(&self) -> bool {
        matches!(self.method, Method::GET | Method::HEAD)
    }

    /// The write this entry is, for a transaction.
    fn to_write(&self) -> Result<TxRequest, ApiError> {
        let (path, query) = match self.url.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (self.url.as_str(), None),
        };
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let resource_type = ResourceType::parse(segments.first().copied().unwrap_or_default())?;
        if resource_type == ResourceType::CONSENT {
            return Err(ApiError::NotSupported(
                "Consents are not written in a transaction (a grant is relayed to the chain \
                 on its own): send it alone or in a batch"
                    .into(),
            ));
        }
        let body = || -> Result<Vec<u8>, ApiError> {
            self.resource
                .as_ref()
                .map(Json::to_bytes)
                .ok_or_else(|| ApiError::BadRequest("the entry has no resource to write".into()))
        };
        let precondition = self.precondition()?;
        let target = |what: &str| -> Result<Target, ApiError> {
            match (segments.as_slice(), query) {
                ([_, id], None) => Ok(Target::Id((*id).to_owned())),
                ([_], Some(query)) => Ok(Target::Criteria(Criteria::parse(query, what)?)),
                _ => Err(ApiError::BadRequest(format!(
                    "a transaction's {what} names Type/id or Type?criteria"
                ))),
            }
        };
        match self.method {
            Method::POST => {
                if segments.len() != 1 || query.is_some() {
                    return Err(ApiError::BadRequest(
                        "a transaction's POST names a resource type (operations are not run \
                         in a transaction)"
                            .into(),
                    ));
                }
                let if_none_exist = self
                    .if_none_exist
                    .as_deref()
                    .map(|criteria| {
                        let typed = format!("{}?", resource_type.as_str());
                        let criteria = criteria.strip_prefix(&typed).unwrap_or(criteria);
                        Criteria::parse(criteria.trim_start_matches('?'), "create")
                    })
                    .transpose()?;
                // ifNoneMatch * holds for any create; a version names one it cannot have.
                if precondition != Precondition::None && precondition != Precondition::Absent {
                    return Err(ApiError::BadRequest(
                        "a create takes no ifMatch, and ifNoneMatch only as *".into(),
                    ));
                }
                Ok(TxRequest::Create {
                    resource_type,
                    body: body()?,
                    if_none_exist,
                })
            }
            Method::PUT => Ok(TxRequest::Update {
                resource_type,
                target: target("update")?,
                body: body()?,
                precondition,
            }),
            Method::PATCH => {
                let resource = self.resource.as_ref().ok_or_else(|| {
                    ApiError::BadRequest("the PATCH entry has no resource (the patch)".into())
                })?;
                let (format, bytes) = patch_body(resource)?;
                Ok(TxRequest::Patch {
                    resource_type,
                    target: target("patch")?,
                    patch: PatchDocument::parse(format, &bytes).map_err(RepoError::from)?,
                    precondition,
                })
            }
            Method::DELETE => {
                // As alone: a delete does not implement If-None-Match.
                if self.if_none_match.is_some() {
                    return Err(ApiError::NotSupported(
                        "request.ifNoneMatch is not supported on a delete; nothing was written"
                            .into(),
                    ));
                }
                Ok(TxRequest::Delete {
                    resource_type,
                    target: target("delete")?,
                    precondition,
                })
            }
            _ => Err(ApiError::NotSupported(format!(
                "{} in a transaction is not supported here; nothing was written",
                self.method
            ))),
        }
    }
}

impl EntryRequest {
    /// What `request.ifMatch` / `request.ifNoneMatch` ask of the current version, as the
    /// headers of the same request alone would.
    fn precondition(&self) -> Result<Precondition, ApiError> {
        match (self.if_match.as_deref(), self.if_none_match.as_deref()) {
            (None, None) => Ok(Precondition::None),
            (Some(_), Some(_)) => Err(ApiError::BadRequest(
                "an entry takes request.ifMatch or request.ifNoneMatch, not both".into(),
            )),
            (Some(tag), None) => parse_version_tag(tag)
                .map(Precondition::Version)
                .ok_or_else(|| {
                    ApiError::BadRequest(
                        "request.ifMatch must be a version tag such as W/\"3\"".into(),
                    )
                }),
            (None, Some(tag)) if tag.trim() == "*" => Ok(Precondition::Absent),
            (None, Some(tag)) => parse_version_tag(tag)
                .map(Precondition::NotVersion)
                .ok_or_else(|| {
                    ApiError::BadRequest(
                        "request.ifNoneMatch must be * or a version tag such as W/\"3\"".into(),
                    )
                }),
        }
    }
}

/// The patch a PATCH entry carries: a Binary holding a JSON Patch, or a FHIRPath Patch
/// Parameters (FHIR's two ways to put a patch in a Bundle).
fn patch_body(resource: &Json) -> Result<(PatchFormat, Vec<u8>), ApiError> {
    use base64::Engine;
    if resource.get("resourceType").and_then(Json::as_str) != Some("Binary") {
        return Ok((PatchFormat::FhirPath, resource.to_bytes()));
    }
    let content_type = resource.get("contentType").and_then(Json::as_str);
    let json_patch = content_type
        .and_then(|t| t.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json-patch+json"));
    if !json_patch {
        return Err(ApiError::UnsupportedMediaType(
            "a Binary in a PATCH entry carries a JSON Patch (contentType \
             application/json-patch+json)"
                .into(),
        ));
    }
    let data = resource
        .get("data")
        .and_then(Json::as_str)
        .unwrap_or_default();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|_| ApiError::BadRequest("the Binary's data is not base64".into()))?;
    Ok((PatchFormat::JsonPatch, bytes))
}

/// Runs entries as requests of their own, through the router, as the caller.
struct Dispatch<'a> {
    state: &'a HttpState,
    headers: &'a HeaderMap,
    connect: Option<ConnectInfo<std::net::SocketAddr>>,
}

impl Dispatch<'_> {
    async fn run(&self, entry: &EntryRequest) -> Json {
        match self.send(entry).await {
            Ok(answered) => answered,
            Err(error) => error_entry(error),
        }
    }

    async fn send(&self, entry: &EntryRequest) -> Result<Json, ApiError> {
        let Some(router) = self.state.dispatcher.get() else {
            return Err(ApiError::Internal);
        };
        let mut request = Request::builder()
            .method(entry.method.clone())
            .uri(format!("/fhir/{}", entry.url));
        for name in [header::AUTHORIZATION, header::HOST] {
            if let Some(value) = self.headers.get(&name) {
                request = request.header(name, value);
            }
        }
        for name in [
            "x-purpose-of-use",
            "x-break-glass-reason",
            "x-forwarded-proto",
        ] {
            if let Some(value) = self.headers.get(name) {
                request = request.header(name, value);
            }
        }
        let conditional = [
            (header::IF_MATCH.as_str(), &entry.if_match),
            (header::IF_NONE_MATCH.as_str(), &entry.if_none_match),
            ("if-none-exist", &entry.if_none_exist),
            (header::IF_MODIFIED_SINCE.as_str(), &entry.if_modified_since),
        ];
        for (name, value) in conditional {
            if let Some(value) = value {
                request = request.header(name, value.as_str());
            }
        }
        request = request.header(header::ACCEPT, "application/fhir+json");
        let body = match &entry.resource {
            // A patch goes as the kind of patch it is (a Binary's JSON Patch, unwrapped).
            Some(resource) if entry.method == Method::PATCH => {
                let (format, bytes) = patch_body(resource)?;
                let content_type = match format {
                    PatchFormat::JsonPatch => "application/json-patch+json",
                    PatchFormat::FhirPath => "application/fhir+json",
                };
                request = request.header(header::CONTENT_TYPE, content_type);
                Body::from(bytes)
            }
            Some(resource) if !entry.is_read() => {
                request = request.header(header::CONTENT_TYPE, "application/fhir+json");
                Body::from(resource.to_bytes())
            }
            _ => Body::empty(),
        };
        let mut request = request.body(body).map_err(|_| {
            ApiError::BadRequest("the entry's request is not a valid request".into())
        })?;
        if let Some(connect) = self.connect {
            request.extensions_mut().insert(connect);
        }
        let response = router
            .clone()
            .oneshot(request)
            .await
            .unwrap_or_else(|never| match never {});
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, usize::MAX)
            .await
            .map_err(|_| ApiError::Internal)?;
        let mut answer = Object::new();
        answer.insert("status", Json::str(status_line(parts.status)));
        let header_text = |name: header::HeaderName| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        if let Some(location) = header_text(header::LOCATION) {
            answer.insert("location", Json::str(location));
        }
        if let Some(etag) = header_text(header::ETAG) {
            answer.insert("etag", Json::str(etag));
        }
        if let Some(modified) = header_text(header::LAST_MODIFIED)
            .and_then(|date: String| httpdate::parse_http_date(&date).ok())
            .and_then(|at| at.duration_since(std::time::UNIX_EPOCH).ok())
        {
            answer.insert(
                "lastModified",
                Json::str(format_instant(modified.as_millis() as i64)),
            );
        }
        let resource = crate::fhir::json::parse(&bytes).ok();
        let mut entry = Object::new();
        match resource {
            Some(outcome)
                if !parts.status.is_success()
                    && outcome.get("resourceType").and_then(Json::as_str)
                        == Some("OperationOutcome") =>
            {
                answer.insert("outcome", outcome);
            }
            Some(resource) => entry.insert("resource", resource),
            None => {}
        }
        entry.insert("response", Json::Object(answer));
        Ok(Json::Object(entry))
    }
}

/// A transaction: the writes all or nothing, then the reads.
async fn transaction(
    state: &HttpState,
    principal: &Principal,
    dispatch: &Dispatch<'_>,
    requests: Vec<EntryRequest>,
    prefer: &Prefer,
    base: &BaseUrl,
) -> Result<Vec<Json>, ApiError> {
    let mut writes = Vec::new();
    let mut positions = Vec::new();
    for (n, request) in requests.iter().enumerate() {
        if request.is_read() {
            continue;
        }
        let write = request.to_write().map_err(|e| at_entry(n, e))?;
        writes.push(TxEntry {
            full_url: request.full_url.clone(),
            request: write,
        });
        positions.push(n);
    }
    let results = state
        .repo
        .transaction(
            principal,
            writes,
            prefer.handling,
            &base.0,
            state.settings.conditional_delete_limit,
        )
        .await
        .map_err(|failure| match failure.entry {
            Some(k) => at_entry(positions[k], ApiError::Repo(failure.error)),
            None => ApiError::Repo(failure.error),
        })?;
    let mut answered: Vec<Option<Json>> = (0..requests.len()).map(|_| None).collect();
    for (result, n) in results.into_iter().zip(positions) {
        answered[n] = Some(write_entry(result, prefer, base));
    }
    for (n, request) in requests.iter().enumerate() {
        if request.is_read() {
            answered[n] = Some(dispatch.run(request).await);
        }
    }
    Ok(answered.into_iter().flatten().collect())
}

/// The response entry of a committed write.
fn write_entry(result: TxResult, prefer: &Prefer, base: &BaseUrl) -> Json {
    let (status, version) = match result {
        TxResult::Created(version) => (StatusCode::CREATED, version),
        TxResult::Updated(version) | TxResult::Exists(version) => (StatusCode::OK, version),
        TxResult::Deleted(deleted) => {
            let mut answer = Object::new();
            answer.insert("status", Json::str(status_line(StatusCode::NO_CONTENT)));
            if let [one] = deleted.as_slice() {
                answer.insert("etag", Json::str(format!("W/\"{}\"", one.version)));
            }
            return object([("response", Json::Object(answer))]);
        }
    };
    let record = &version.record;
    let mut answer = Object::new();
    answer.insert("status", Json::str(status_line(status)));
    answer.insert(
        "location",
        Json::str(format!(
            "{}/{}/{}/_history/{}",
            base.0, record.resource_type, record.id, record.version
        )),
    );
    answer.insert("etag", Json::str(format!("W/\"{}\"", record.version)));
    answer.insert(
        "lastModified",
        Json::str(format_instant(record.last_updated)),
    );
    let mut entry = Object::new();
    entry.insert(
        "fullUrl",
        Json::str(format!("{}/{}/{}", base.0, record.resource_type, record.id)),
    );
    if prefer.return_ == Return::Representation
        && let Some(resource) = stored(&version)
    {
        entry.insert("resource", resource);
    }
    entry.insert("response", Json::Object(answer));
    Json::Object(entry)
}

fn stored(version: &ResourceVersion) -> Option<Json> {
    crate::fhir::json::parse(version.content.as_deref()?).ok()
}

/// `201 Created`: a status as a Bundle entry's `response.status` writes it.
fn status_line(status: StatusCode) -> String {
    format!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or_default()
    )
}

/// A batch entry that could not even be sent.
fn error_entry(error: ApiError) -> Json {
    let (status, issues) = error.status_and_issues();
    object([(
        "response",
        object([
            ("status", Json::str(status_line(status))),
            ("outcome", outcome_resource(&issues)),
        ]),
    )])
}

/// The error of one entry, named: `entry 3: …`.
fn at_entry(position: usize, error: ApiError) -> ApiError {
    ApiError::Entry {
        position,
        error: Box::new(error),
    }
}
