//! Reading a request body: only FHIR JSON, only up to the configured size.
//!
//! The size is checked twice: against `Content-Length` before reading anything, and while
//! reading (a chunked body has no length). A stream that breaks off is the client's problem
//! (400), never a 500.
//!
//! A refused body is drained before the 413 is sent (up to `DRAIN_BYTES`, within
//! `DRAIN_TIME`), and the connection is closed after it. Many clients (Python's `urllib` and
//! `requests` among them) write the whole body before they read a byte of the answer; a server
//! that answers and closes while they are still writing gives them a broken pipe, and the 413
//! never reaches them. A client that sent `Expect: 100-continue` is waiting for permission to
//! send and gets the 413 at once, with nothing to drain.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{FromRef, FromRequest, Request};
use axum::http::header;
use http_body_util::BodyExt;

use super::HttpState;
use super::outcome::ApiError;
use crate::fhir::patch::PatchFormat;

/// Most bytes of a refused body read and discarded so the client can read the 413.
const DRAIN_BYTES: usize = 64 * 1024 * 1024;
/// Longest time spent draining a refused body.
const DRAIN_TIME: Duration = Duration::from_secs(10);

/// A request body that is FHIR JSON by its Content-Type and within the size limit.
pub struct FhirBody(pub Vec<u8>);

impl<S> FromRequest<S> for FhirBody
where
    S: Send + Sync,
    HttpState: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        check_content_type(request.headers().get(header::CONTENT_TYPE))?;
        let limit = HttpState::from_ref(state).settings.max_body_bytes;
        read_within(request, limit).await.map(FhirBody)
    }
}

/// The body of a PATCH, and which kind of patch it is by its Content-Type: a JSON Patch
/// (`application/json-patch+json`), or a FHIRPath Patch `Parameters` (FHIR JSON:
/// `application/fhir+json` or `application/json`); anything else is 415. Within the size
/// limit.
pub struct PatchBody {
    pub format: PatchFormat,
    pub bytes: Vec<u8>,
}

impl<S> FromRequest<S> for PatchBody
where
    S: Send + Sync,
    HttpState: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let format = patch_format(request.headers().get(header::CONTENT_TYPE))?;
        let limit = HttpState::from_ref(state).settings.max_body_bytes;
        let bytes = read_within(request, limit).await?;
        Ok(PatchBody { format, bytes })
    }
}

/// The kind of patch a Content-Type announces.
fn patch_format(content_type: Option<&header::HeaderValue>) -> Result<PatchFormat, ApiError> {
    let json_patch = content_type
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| {
            media
                .trim()
                .eq_ignore_ascii_case("application/json-patch+json")
        });
    if json_patch {
        return Ok(PatchFormat::JsonPatch);
    }
    check_content_type(content_type).map_err(|_| {
        ApiError::UnsupportedMediaType(
            "a PATCH body is a JSON Patch (Content-Type: application/json-patch+json) or a \
             FHIRPath Patch Parameters (application/fhir+json)"
                .into(),
        )
    })?;
    Ok(PatchFormat::FhirPath)
}

/// The body, refused (413) past `limit` bytes.
async fn read_within(request: Request, limit: usize) -> Result<Vec<u8>, ApiError> {
    {
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let expects_continue = request
            .headers()
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if declared.is_some_and(|length| length > limit as u64) {
            if !expects_continue {
                drain(request.into_body()).await;
            }
            return Err(ApiError::PayloadTooLarge(limit));
        }
        read_limited(request.into_body(), limit).await
    }
}

fn check_content_type(value: Option<&header::HeaderValue>) -> Result<(), ApiError> {
    let Some(value) = value else {
        return Err(ApiError::UnsupportedMediaType(
            "a body must be sent with Content-Type: application/fhir+json".into(),
        ));
    };
    let text = value.to_str().unwrap_or_default().to_ascii_lowercase();
    let mut parts = text.split(';').map(str::trim);
    let media = parts.next().unwrap_or_default();
    if !matches!(
        media,
        "application/fhir+json" | "application/json" | "application/json+fhir"
    ) {
        return Err(ApiError::UnsupportedMediaType(format!(
            "Content-Type {} is not accepted: this server reads FHIR R4 JSON only \
             (application/fhir+json)",
            media.chars().take(100).collect::<String>()
        )));
    }
    for parameter in parts {
        if let Some(charset) = parameter.strip_prefix("charset=")
            && !charset.trim_matches('"').eq_ignore_ascii_case("utf-8")
        {
            return Err(ApiError::UnsupportedMediaType(format!(
                "charset {charset} is not accepted: FHIR JSON is UTF-8"
            )));
        }
    }
    Ok(())
}

async fn read_limited(body: Body, limit: usize) -> Result<Vec<u8>, ApiError> {
    let mut body = body;
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| {
            ApiError::BadRequest("the request body ended before it was complete".into())
        })?;
        if let Ok(data) = frame.into_data() {
            if bytes.len() + data.len() > limit {
                drop(bytes);
                drain(body).await;
                return Err(ApiError::PayloadTooLarge(limit));
            }
            bytes.extend_from_slice(&data);
        }
    }
    Ok(bytes)
}

/// Reads and discards what is left of a refused body, within the drain bounds.
async fn drain(mut body: Body) {
    let discard = async {
        let mut seen = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data() {
                seen += data.len();
                if seen > DRAIN_BYTES {
                    break;
                }
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, discard).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn accepts_only_fhir_json_in_utf8() {
        let ok = [
            "application/fhir+json",
            "application/json; charset=UTF-8",
            "application/fhir+json;fhirVersion=4.0",
        ];
        for value in ok {
            assert!(
                check_content_type(Some(&HeaderValue::from_static(value))).is_ok(),
                "{value}"
            );
        }
        let refused = [
            "application/fhir+xml",
            "text/plain",
            "application/x-www-form-urlencoded",
            "application/json; charset=latin1",
        ];
        for value in refused {
            assert!(
                check_content_type(Some(&HeaderValue::from_static(value))).is_err(),
                "{value}"
            );
        }
        assert!(check_content_type(None).is_err());
    }

    #[test]
    fn tells_the_two_kinds_of_patch_apart() {
        let format = |value: Option<&'static str>| {
            let value = value.map(HeaderValue::from_static);
            patch_format(value.as_ref()).ok()
        };
        let json_patch = Some(PatchFormat::JsonPatch);
        let fhirpath = Some(PatchFormat::FhirPath);
        assert_eq!(format(Some("application/json-patch+json")), json_patch);
        assert_eq!(
            format(Some("Application/JSON-Patch+JSON; charset=utf-8")),
            json_patch
        );
        assert_eq!(format(Some("application/fhir+json")), fhirpath);
        assert_eq!(format(Some("application/json")), fhirpath);
        assert_eq!(format(Some("application/fhir+json; charset=latin1")), None);
        assert_eq!(format(Some("application/merge-patch+json")), None);
        assert_eq!(format(Some("application/fhir+xml")), None);
        assert_eq!(format(None), None);
    }
}
