//! The authorization server of SMART App Launch 2.0, as functions of plain values: `http::oauth`
//! turns requests into calls here and results into pages, redirects and JSON.
//!
//! - Authorization code flow with PKCE S256 required of every client; exact `redirect_uri`
//!   matching (an unregistered one gets an error page, never a redirect: no open redirect);
//!   `state` echoed; `aud` must be this server; standalone launch (`launch/patient`: a patient
//!   user is their own context, a practitioner picks a patient) and EHR launch (`launch`, bound
//!   to a context an EHR created with `POST /auth/launch`).
//! - Codes are single-use and live 60 s; using one twice revokes what it produced.
//! - Refresh tokens (`offline_access` / `online_access`) rotate on every use; presenting a
//!   rotated one revokes its whole family (every refresh and access token of that
//!   authorization). A refresh may narrow the scopes, never widen them.
//! - Client authentication: none (public, PKCE only), `client_secret_basic`,
//!   `client_secret_post`, `private_key_jwt` (RS384/ES384, `exp` at most 5 minutes ahead,
//!   `jti` never reused). `client_credentials` is for confidential clients only.
//! - Introspection (RFC 7662), revocation (RFC 7009), dynamic registration (RFC 7591, behind
//!   the admin token), EHR launch contexts.
//!
//! Codes and refresh tokens are stored only as SHA-256 hashes.

mod authorize;
mod clients;
mod grants;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::accounts::{Accounts, Client, ClientAuth, check_secret, hash_secret_off_runtime};
use super::tokens::{Grant, REVOKED_FAMILY, TokenService, random_token};
use super::{AuthError, Principal, Scopes, records};
use crate::fhir::instant::now_millis;
use crate::index::{IndexStore, Record};
use crate::metrics;

const SESSION: &str = "auth-session";
const CODE: &str = "auth-code";
const USED_CODE: &str = "used-code";
const REFRESH: &str = "refresh-token";
const LAUNCH: &str = "launch";
const ASSERTION_JTI: &str = "client-assertion-jti";

const SESSION_MS: i64 = 10 * 60 * 1000;
const CODE_MS: i64 = 60 * 1000;
const REFRESH_MS: i64 = 30 * 24 * 3600 * 1000;
const LAUNCH_MS: i64 = 3600 * 1000;
/// Longest lifetime a client assertion may claim (SMART Backend Services: 5 minutes).
const MAX_ASSERTION_SECONDS: i64 = 300;
const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Where the authorization server's endpoints are, for a FHIR base URL.
pub struct Endpoints {
    pub authorize: String,
    pub token: String,
    pub register: String,
    pub introspect: String,
    pub revoke: String,
    pub launch: String,
    pub jwks: String,
}

impl Endpoints {
    /// `http://host/fhir` → `http://host/auth/...`.
    pub fn for_base(base: &str) -> Endpoints {
        let root = base.strip_suffix("/fhir").unwrap_or(base);
        let at = |path: &str| format!("{root}/auth/{path}");
        Endpoints {
            authorize: at("authorize"),
            token: at("token"),
            register: at("register"),
            introspect: at("introspect"),
            revoke: at("revoke"),
            launch: at("launch"),
            jwks: at("jwks"),
        }
    }
}

/// An authorization in progress, between the authorize request and the user's decision.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Pending {
    pub client_id: String,
    pub client_name: Option<String>,
    pub redirect_uri: String,
    pub state: Option<String>,
    /// What will be granted if the user approves: requested ∩ what the client may have.
    pub scope: String,
    code_challenge: String,
    nonce: Option<String>,
    /// The patient an EHR launch bound this authorization to.
    launch_patient: Option<String>,
    /// SHA-256 of the secret in the cookie of the browser that started the sign-in.
    browser: String,
    /// Set once the user has logged in.
    pub username: Option<String>,
    pub fhir_user: Option<String>,
}

impl Pending {
    /// Whether the user must (or may) pick a patient: a practitioner's standalone launch.
    pub fn needs_patient_choice(&self) -> bool {
        self.launch_patient.is_none()
            && self.wants_patient_context()
            && self
                .fhir_user
                .as_deref()
                .is_some_and(|u| u.starts_with("Practitioner/"))
    }

    fn wants_patient_context(&self) -> bool {
        let scopes = Scopes::parse(&self.scope);
        scopes.contains("launch/patient")
            || scopes.contains("launch")
            || scopes
                .resources
                .iter()
                .any(|s| s.context == super::Context::Patient)
    }
}

/// The first answer of the authorization endpoint.
pub enum Begun {
    /// Show the login page for this session.
    Login {
        session: String,
        /// The secret the browser must hold (as a cookie) for the rest of the sign-in.
        browser: String,
        pending: Box<Pending>,
    },
    /// The request cannot be trusted with a redirect (unknown client or redirect_uri).
    Refuse(String),
    /// The request is wrong, and the client can be told at its registered redirect_uri.
    Redirect(String),
}

#[derive(Serialize, Deserialize)]
struct CodeGrant {
    client_id: String,
    redirect_uri: String,
    scope: String,
    code_challenge: String,
    subject: String,
    fhir_user: Option<String>,
    patient: Option<String>,
    nonce: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct RefreshGrant {
    family: String,
    client_id: String,
    scope: String,
    subject: String,
    fhir_user: Option<String>,
    patient: Option<String>,
    /// Rotated: presenting it again means it was stolen or replayed.
    used: bool,
}

pub struct AuthServer {
    pub accounts: Accounts,
    pub tokens: TokenService,
    store: Arc<dyn IndexStore>,
    /// Bearer secret for dynamic client registration; `None` turns registration off.
    admin_token: Option<String>,
    http: reqwest::Client,
}

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn with_query(uri: &str, pairs: &[(&str, &str)]) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        query.append_pair(k, v);
    }
    let separator = if uri.contains('?') { '&' } else { '?' };
    format!("{uri}{separator}{}", query.finish())
}

impl AuthServer {
    pub fn new(
        accounts: Accounts,
        tokens: TokenService,
        store: Arc<dyn IndexStore>,
        admin_token: Option<String>,
    ) -> AuthServer {
        AuthServer {
            accounts,
            tokens,
            store,
            admin_token: admin_token.filter(|t| !t.is_empty()),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
        }
    }

    /// Whether `bearer` is the admin token (compared in constant time); never with none set.
    pub fn is_admin(&self, bearer: Option<&str>) -> bool {
        match (&self.admin_token, bearer) {
            (Some(expected), Some(given)) => {
                constant_time_eq(expected.as_bytes(), given.as_bytes())
            }
            _ => false,
        }
    }

    /// Stores `value` for `lifetime_ms` from now.
    async fn put<T: Serialize>(
        &self,
        kind: &str,
        key: &str,
        value: &T,
        lifetime_ms: i64,
    ) -> Result<(), AuthError> {
        let expires_at = Some(now_millis() + lifetime_ms);
        Ok(records::put_json(self.store.as_ref(), kind, key, value, expires_at).await?)
    }

    async fn get<T: DeserializeOwned>(
        &self,
        kind: &str,
        key: &str,
    ) -> Result<Option<(T, Option<i64>)>, AuthError> {
        Ok(records::get_json(self.store.as_ref(), kind, key).await?)
    }
}

/// What a user authorization produces.
struct Issued {
    grant: Grant,
    /// What the user authorized. A refresh may ask for less in one access token, but the
    /// refresh token it rotates to keeps the whole authorization (RFC 6749 §6), so narrowing
    /// once does not narrow the sign-in for good.
    authorized: Scopes,
    nonce: Option<String>,
}

fn clone_refresh(r: &RefreshGrant) -> RefreshGrant {
    RefreshGrant {
        family: r.family.clone(),
        client_id: r.client_id.clone(),
        scope: r.scope.clone(),
        subject: r.subject.clone(),
        fhir_user: r.fhir_user.clone(),
        patient: r.patient.clone(),
        used: r.used,
    }
}

fn unverified_claim(token: &str, name: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims.get(name)?.as_str().map(str::to_owned)
}

/// `application/x-www-form-urlencoded` decoding of one value (`+` is a space, `%XX` a byte).
fn form_decode(text: &str) -> String {
    form_urlencoded::parse(format!("x={text}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The SMART configuration (`/.well-known/smart-configuration`) for a FHIR base URL.
pub fn smart_configuration(base: &str) -> serde_json::Value {
    let endpoints = Endpoints::for_base(base);
    serde_json::json!({
        "issuer": base,
        "jwks_uri": endpoints.jwks,
        "authorization_endpoint": endpoints.authorize,
        "token_endpoint": endpoints.token,
        "registration_endpoint": endpoints.register,
        "introspection_endpoint": endpoints.introspect,
        "revocation_endpoint": endpoints.revoke,
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["none", "client_secret_basic", "client_secret_post", "private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384", "RS256", "ES256"],
        "scopes_supported": [
            "openid", "fhirUser", "launch", "launch/patient", "offline_access", "online_access",
            "patient/*.cruds", "user/*.cruds", "system/*.cruds",
            "patient/*.read", "patient/*.write", "user/*.read", "user/*.write", "system/*.read", "system/*.write"
        ],
        "capabilities": [
            "launch-ehr", "launch-standalone", "client-public", "client-confidential-symmetric",
            "client-confidential-asymmetric", "context-ehr-patient", "context-standalone-patient",
            "sso-openid-connect", "permission-offline", "permission-online", "permission-patient",
            "permission-user", "permission-v1", "permission-v2", "authorize-post"
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_sit_beside_the_fhir_base() {
        let e = Endpoints::for_base("http://h:1/fhir");
        assert_eq!(e.token, "http://h:1/auth/token");
        assert_eq!(e.authorize, "http://h:1/auth/authorize");
        assert_eq!(
            with_query("https://app/cb", &[("code", "a b"), ("state", "x")]),
            "https://app/cb?code=a+b&state=x"
        );
        assert_eq!(
            with_query("https://app/cb?k=1", &[("code", "c")]),
            "https://app/cb?k=1&code=c"
        );
        assert!(
            constant_time_eq(b"abc", b"abc")
                && !constant_time_eq(b"abc", b"abd")
                && !constant_time_eq(b"a", b"ab")
        );
    }
}
