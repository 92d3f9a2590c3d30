//! The one way a FHIR request is authenticated: the `Principal` extractor every FHIR handler
//! takes first. A missing or unacceptable bearer token is a 401 whose `WWW-Authenticate` says
//! why (RFC 6750); what the token's scopes then allow is decided by the repository.

use axum::extract::{FromRef, FromRequestParts};
use axum::http::header;
use axum::http::request::Parts;

use super::HttpState;
use super::negotiate::BaseUrl;
use super::outcome::ApiError;
use crate::audit::{Agent, Touched};
use crate::auth::{AuthError, Principal};

impl<S> FromRequestParts<S> for Principal
where
    S: Send + Sync,
    HttpState: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let token = bearer(&parts.headers).ok_or(AuthError::MissingToken)?;
        let BaseUrl(base) = BaseUrl::from_request_parts(parts, state).await?;
        let state = HttpState::from_ref(state);
        let mut principal = state.auth.tokens.verify(&token, &base).await?;
        let asked = break_glass(&parts.headers);
        principal.break_glass = asked.as_ref().ok().cloned().flatten();
        // The request's audit notes (none when no audit trail is kept): who asked is known
        // from here on, even if what follows refuses.
        principal.touched = parts.extensions.get::<Touched>().cloned();
        if let Some(touched) = &principal.touched {
            touched.set_agent(Agent::of(&principal));
        }
        asked?;
        Ok(principal)
    }
}

/// The header naming the request's purpose of use (HL7 v3 PurposeOfUse): `BTG` asks for an
/// emergency access past a missing grant.
pub const PURPOSE_OF_USE: &str = "x-purpose-of-use";
/// Why the glass is broken (required with `BTG`; recorded on chain only as a hash).
pub const BREAK_GLASS_REASON: &str = "x-break-glass-reason";

/// The reason of a break-glass request, if this is one.
fn break_glass(headers: &axum::http::HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(purpose) = headers.get(PURPOSE_OF_USE) else {
        return Ok(None);
    };
    if !purpose.as_bytes().eq_ignore_ascii_case(b"BTG") {
        return Err(ApiError::NotSupported(format!(
            "{PURPOSE_OF_USE}: only BTG (break the glass) is understood"
        )));
    }
    let reason = headers
        .get(BREAK_GLASS_REASON)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "breaking the glass needs a reason: {BREAK_GLASS_REASON}"
            ))
        })?;
    Ok(Some(reason.to_owned()))
}

/// The token of an `Authorization: Bearer …` header.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty())
        .then(|| token.trim().to_owned())
}
