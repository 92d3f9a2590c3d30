//! The one way a FHIR request is authenticated: the `Principal` extractor every FHIR handler
//! takes first. A missing or unacceptable bearer token is a 401 whose `WWW-Authenticate` says
//! why (RFC 6750); what the token's scopes then allow is decided by the repository.

use axum::extract::{FromRef, FromRequestParts};
use axum::http::header;
use axum::http::request::Parts;

use super::HttpState;
use super::negotiate::BaseUrl;
use super::outcome::ApiError;
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
        Ok(state.auth.tokens.verify(&token, &base).await?)
    }
}

/// The token of an `Authorization: Bearer …` header.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty())
        .then(|| token.trim().to_owned())
}
