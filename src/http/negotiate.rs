//! Content negotiation and the request headers every interaction reads.
//!
//! - Response format: `_format` wins over `Accept`. JSON is served (`application/fhir+json`, or
//!   `application/json` when that is what the client asked for); `fhirVersion=4.0` and `=4.3`
//!   (fhir-sdk sends 4.3) are accepted. XML, Turtle or another FHIR version get 406, saying
//!   plainly that only FHIR R4 JSON is served.
//! - `_pretty=true` indents the output.
//! - `Prefer`: `return=minimal|representation|OperationOutcome`, `handling=strict|lenient`.
//! - The base URL of links: the configured one, else `http://HOST/fhir` from the request.

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};

use super::HttpState;
use super::outcome::ApiError;
use crate::fhir::json;
use crate::fhir::validate::Handling;

pub const FHIR_JSON: &str = "application/fhir+json;charset=utf-8";
pub const PLAIN_JSON: &str = "application/json;charset=utf-8";

/// FHIR versions whose JSON this server answers with (R4; R4B's 4.3 is wire-compatible for
/// what clients ask of us, and fhir-sdk labels its requests with it).
const ACCEPTED_FHIR_VERSIONS: &[&str] = &["4.0", "4.0.1", "4.3", "4.3.0"];

/// How to write the response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiated {
    pub content_type: &'static str,
    pub pretty: bool,
}

impl Default for Negotiated {
    fn default() -> Self {
        Negotiated {
            content_type: FHIR_JSON,
            pretty: false,
        }
    }
}

impl Negotiated {
    /// Serialises `value` as negotiated.
    pub fn render(&self, value: &json::Json) -> Vec<u8> {
        if self.pretty {
            value.to_pretty_bytes()
        } else {
            value.to_bytes()
        }
    }

    /// Stored compact JSON as negotiated (re-indented only when `_pretty` asks for it).
    pub fn render_stored(&self, content: Vec<u8>) -> Vec<u8> {
        if !self.pretty {
            return content;
        }
        match json::parse(&content) {
            Ok(value) => value.to_pretty_bytes(),
            Err(_) => content,
        }
    }
}

/// The query parameters of the request, decoded, in order (FHIR allows repeats).
pub fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    query
        .map(|q| {
            form_urlencoded::parse(q.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

impl<S: Send + Sync> FromRequestParts<S> for Negotiated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        negotiate(parts.uri.query(), &parts.headers)
    }
}

pub fn negotiate(query: Option<&str>, headers: &HeaderMap) -> Result<Negotiated, ApiError> {
    let pairs = query_pairs(query);
    let pretty = pairs
        .iter()
        .rev()
        .find(|(k, _)| k == "_pretty")
        .is_some_and(|(_, v)| v == "true");
    let format = pairs.iter().rev().find(|(k, _)| k == "_format");
    let content_type = match format {
        // A `+` in a query string decodes to a space: `application/fhir json` is fhir+json.
        Some((_, value)) => match value.trim().replace(' ', "+").as_str() {
            "json" | "application/fhir+json" | "application/json+fhir" => FHIR_JSON,
            "application/json" | "text/json" => PLAIN_JSON,
            other => {
                return Err(ApiError::NotAcceptable(format!(
                    "_format={other} is not served: this server speaks FHIR R4 JSON only \
                     (use _format=json or omit it)"
                )));
            }
        },
        None => from_accept(headers)?,
    };
    Ok(Negotiated {
        content_type,
        pretty,
    })
}

fn from_accept(headers: &HeaderMap) -> Result<&'static str, ApiError> {
    let accept: Vec<&str> = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if accept.is_empty() {
        return Ok(FHIR_JSON);
    }
    let mut best: Option<(f32, &'static str)> = None;
    for range in accept.iter().flat_map(|v| v.split(',')) {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default().to_ascii_lowercase();
        let mut quality = 1.0f32;
        let mut version_ok = true;
        for parameter in parts {
            let (name, value) = parameter.split_once('=').unwrap_or((parameter, ""));
            let value = value.trim_matches('"');
            match name.trim().to_ascii_lowercase().as_str() {
                "q" => quality = value.parse().unwrap_or(0.0),
                "fhirversion" => version_ok = ACCEPTED_FHIR_VERSIONS.contains(&value),
                _ => {}
            }
        }
        let served = match media.as_str() {
            "application/fhir+json" | "application/json+fhir" | "*/*" | "application/*" => {
                Some(FHIR_JSON)
            }
            "application/json" | "text/json" => Some(PLAIN_JSON),
            _ => None,
        };
        if let Some(served) = served
            && version_ok
            && quality > 0.0
            && best.is_none_or(|(q, _)| quality > q)
        {
            best = Some((quality, served));
        }
    }
    best.map(|(_, served)| served).ok_or_else(|| {
        ApiError::NotAcceptable(format!(
            "Accept: {} cannot be served: this server speaks FHIR R4 JSON only \
             (application/fhir+json; fhirVersion=4.0)",
            accept.join(", ").chars().take(200).collect::<String>()
        ))
    })
}

/// What the client prefers (`Prefer` header, RFC 7240, FHIR's `return` and `handling`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Prefer {
    pub return_: Return,
    pub handling: Handling,
    /// The handling the client asked for, if it asked: a search without one gets the
    /// server's default.
    pub handling_given: Option<Handling>,
    /// `respond-async`: the client will poll for the answer (a Bulk Data kick-off needs it).
    pub respond_async: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Return {
    Minimal,
    #[default]
    Representation,
    OperationOutcome,
}

impl<S: Send + Sync> FromRequestParts<S> for Prefer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let mut prefer = Prefer::default();
        for value in parts.headers.get_all("prefer") {
            let Ok(text) = value.to_str() else { continue };
            for preference in text.split([',', ';']) {
                let (name, value) = preference.split_once('=').unwrap_or((preference, ""));
                match (name.trim(), value.trim().trim_matches('"')) {
                    ("return", "minimal") => prefer.return_ = Return::Minimal,
                    ("return", "representation") => prefer.return_ = Return::Representation,
                    ("return", "OperationOutcome") => prefer.return_ = Return::OperationOutcome,
                    ("handling", "lenient") => {
                        prefer.handling = Handling::Lenient;
                        prefer.handling_given = Some(Handling::Lenient);
                    }
                    ("respond-async", _) => prefer.respond_async = true,
                    ("handling", "strict") => {
                        prefer.handling = Handling::Strict;
                        prefer.handling_given = Some(Handling::Strict);
                    }
                    _ => {}
                }
            }
        }
        Ok(prefer)
    }
}

/// The FHIR base URL links are built on.
#[derive(Clone, Debug)]
pub struct BaseUrl(pub String);

impl<S> FromRequestParts<S> for BaseUrl
where
    S: Send + Sync,
    HttpState: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let state = HttpState::from_ref(state);
        if let Some(base) = &state.settings.base_url {
            return Ok(BaseUrl(base.clone()));
        }
        let host = parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| {
                !h.is_empty()
                    && h.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
            })
            .unwrap_or("localhost");
        Ok(BaseUrl(format!("http://{host}/fhir")))
    }
}

/// Parses an entity tag as FHIR uses them: `W/"3"` or `"3"` → 3.
pub fn parse_version_tag(tag: &str) -> Option<u64> {
    let tag = tag.trim();
    let tag = tag.strip_prefix("W/").unwrap_or(tag);
    tag.strip_prefix('"')?.strip_suffix('"')?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with_accept(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_str(value).unwrap());
        headers
    }

    fn check(query: Option<&str>, accept: Option<&str>, expected: Result<&str, u16>) {
        let headers = accept.map(with_accept).unwrap_or_default();
        let got = negotiate(query, &headers)
            .map(|n| n.content_type)
            .map_err(|e| {
                axum::response::IntoResponse::into_response(e)
                    .status()
                    .as_u16()
            });
        assert_eq!(got, expected, "query {query:?} accept {accept:?}");
    }

    #[test]
    fn serves_json_and_refuses_xml() {
        check(None, None, Ok(FHIR_JSON));
        check(
            None,
            Some("application/fhir+json; fhirVersion=4.0"),
            Ok(FHIR_JSON),
        );
        check(
            None,
            Some("application/fhir+json; fhirVersion=4.3"),
            Ok(FHIR_JSON),
        );
        check(None, Some("application/json"), Ok(PLAIN_JSON));
        check(
            None,
            Some("text/html,application/xml;q=0.9,*/*;q=0.8"),
            Ok(FHIR_JSON),
        );
        check(None, Some("application/fhir+xml"), Err(406));
        check(
            None,
            Some("application/fhir+json; fhirVersion=5.0"),
            Err(406),
        );
        check(None, Some("application/json;q=0"), Err(406));
        check(Some("_format=json"), Some("application/xml"), Ok(FHIR_JSON));
        check(Some("_format=application/fhir+json"), None, Ok(FHIR_JSON));
        check(Some("_format=xml"), None, Err(406));
        check(Some("_format=ttl"), None, Err(406));
    }

    #[test]
    fn parses_version_tags() {
        assert_eq!(parse_version_tag("W/\"3\""), Some(3));
        assert_eq!(parse_version_tag("\"12\""), Some(12));
        assert_eq!(parse_version_tag("3"), None);
        assert_eq!(parse_version_tag("W/\"x\""), None);
    }
}
