//! What the HTTP face tells operators: one log line per request, the request metrics, W3C
//! trace context, and the `/metrics` endpoint.
//!
//! A request is logged once, here, with its route template, status and time, and the trace id
//! of a `traceparent` header when the client sent a valid one (the whole request runs in a span
//! carrying it, so any warning logged on its way names it too). Never the URL's values (ids,
//! search terms), never a body: those can be health data.
//!
//! `/metrics` (the Prometheus text format, see `metrics`) is served on the FHIR listener to
//! holders of the admin token only, or without a token on a listener of its own
//! (`--metrics-listen`) that an operator keeps on a private interface.

use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tracing::Instrument;

use super::HttpState;
use super::principal::bearer;
use crate::fhir::resource::ResourceType;
use crate::metrics;

/// The request middleware: log line, metrics, trace span.
pub async fn log_request(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "(unmatched)".to_owned(), |p| p.as_str().to_owned());
    let resource_type = resource_type_of(&route, request.uri().path());
    let trace = request
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(TraceParent::parse);
    let span = match &trace {
        Some(trace) => {
            tracing::info_span!("request", trace_id = %trace.trace_id, parent_id = %trace.parent_id)
        }
        None => tracing::info_span!("request"),
    };
    let started = Instant::now();
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status();
    let elapsed = started.elapsed().as_secs_f64();
    let interaction = interaction(&method, &route);
    metrics::count(
        "intellihealth_http_requests_total",
        &[
            ("interaction", &interaction),
            ("resource_type", resource_type),
            ("status", status.as_str()),
        ],
    );
    metrics::observe(
        "intellihealth_http_request_duration_seconds",
        &[("interaction", &interaction)],
        elapsed,
    );
    let elapsed_ms = elapsed * 1000.0;
    let _entered = span.enter();
    if status.is_server_error() {
        tracing::warn!(%method, %route, status = status.as_u16(), elapsed_ms, "request failed");
    } else {
        tracing::debug!(%method, %route, status = status.as_u16(), elapsed_ms, "request");
    }
    response
}

/// The FHIR interaction a route is, by its template; other routes are named by method and
/// template (both the server's own, so the label set stays small).
fn interaction(method: &Method, route: &str) -> String {
    let name = match (method.as_str(), route) {
        ("GET", "/fhir/metadata") => "capabilities",
        ("GET" | "HEAD", "/fhir/{type}/{id}") => "read",
        ("PUT", "/fhir/{type}/{id}") => "update",
        ("DELETE", "/fhir/{type}/{id}") => "delete",
        ("POST", "/fhir/{type}") => "create",
        ("GET", "/fhir/{type}/{id}/_history/{vid}") => "vread",
        ("GET", "/fhir/{type}/{id}/_history") => "history-instance",
        ("GET", "/fhir/{type}/_history") => "history-type",
        ("GET", "/fhir/_history") => "history-system",
        ("POST", "/auth/token") => "token",
        _ => return format!("{method} {route}"),
    };
    name.to_owned()
}

/// The resource type of a FHIR route's `{type}` segment, when it is one this server knows.
fn resource_type_of(route: &str, path: &str) -> &'static str {
    if !route.starts_with("/fhir/{type}") {
        return "";
    }
    path.strip_prefix("/fhir/")
        .and_then(|rest| rest.split('/').next())
        .and_then(|name| ResourceType::parse(name).ok())
        .map_or("", ResourceType::as_str)
}

/// A W3C Trace Context `traceparent` (version 00): `00-<trace id>-<parent id>-<flags>`.
#[derive(Debug, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: String,
    pub parent_id: String,
}

impl TraceParent {
    /// Parses a header value; `None` for anything the specification says to ignore.
    pub fn parse(value: &str) -> Option<TraceParent> {
        let mut parts = value.trim().split('-');
        let (version, trace_id, parent_id, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let hex = |s: &str, len: usize| {
            s.len() == len
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        // Version 00 has exactly four fields; a later version may append more.
        let extra = parts.next().is_some();
        let valid = hex(version, 2)
            && version != "ff"
            && !(version == "00" && extra)
            && hex(trace_id, 32)
            && trace_id.bytes().any(|b| b != b'0')
            && hex(parent_id, 16)
            && parent_id.bytes().any(|b| b != b'0')
            && hex(flags, 2);
        valid.then(|| TraceParent {
            trace_id: trace_id.to_owned(),
            parent_id: parent_id.to_owned(),
        })
    }
}

/// `GET /metrics` on the FHIR listener: for holders of the admin token only.
#[utoipa::path(get, path = "/metrics", tag = "server",
    responses((status = 200, description = "Metrics in the Prometheus text format", body = String, content_type = "text/plain"),
        (status = 401, description = "The admin token is required", body = serde_json::Value)))]
pub async fn metrics_for_admin(State(state): State<HttpState>, headers: HeaderMap) -> Response {
    let token = bearer(&headers);
    if !state.auth.is_admin(token.as_deref()) {
        let mut response = (
            StatusCode::UNAUTHORIZED,
            "metrics need the admin token (INTELLIHEALTH_ADMIN_TOKEN) as a bearer token, or a \
             listener of their own (--metrics-listen)\n",
        )
            .into_response();
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"admin\""),
        );
        return response;
    }
    metrics_text().await
}

async fn metrics_text() -> Response {
    let mut response = (StatusCode::OK, metrics::render()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// The router of the separate metrics listener: `/metrics`, unauthenticated.
pub fn metrics_router() -> Router {
    Router::new().route("/metrics", get(metrics_text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_trace_context_as_the_specification_says() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            TraceParent::parse(good),
            Some(TraceParent {
                trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
                parent_id: "00f067aa0ba902b7".into(),
            })
        );
        let ignored = [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e47-00f067aa0ba902b7-01",
        ];
        for value in ignored {
            assert_eq!(TraceParent::parse(value), None, "{value}");
        }
        // A later version may carry more fields after the four it shares with 00.
        assert!(
            TraceParent::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x")
                .is_some()
        );
    }

    #[test]
    fn names_interactions_by_route() {
        assert_eq!(interaction(&Method::GET, "/fhir/{type}/{id}"), "read");
        assert_eq!(interaction(&Method::POST, "/fhir/{type}"), "create");
        assert_eq!(interaction(&Method::GET, "/health"), "GET /health");
        assert_eq!(
            resource_type_of("/fhir/{type}/{id}", "/fhir/Patient/1"),
            "Patient"
        );
        assert_eq!(resource_type_of("/fhir/{type}/{id}", "/fhir/Nope/1"), "");
        assert_eq!(resource_type_of("/health", "/health"), "");
    }
}
