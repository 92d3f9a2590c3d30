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

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::accounts::{Accounts, Client, ClientAuth, hash_secret, verify_secret};
use super::tokens::{Grant, REVOKED_FAMILY, TokenService, random_token};
use super::{AuthError, Principal, Scopes};
use crate::fhir::instant::now_millis;
use crate::index::{IndexStore, Record};

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
    /// Set once the user has logged in.
    pub username: Option<String>,
    pub fhir_user: Option<String>,
}

impl Pending {
    /// Whether the user must (or may) pick a patient: a practitioner's standalone launch.
    pub fn needs_patient_choice(&self) -> bool {
        self.launch_patient.is_none()
            && self.wants_patient_context()
            && !self
                .fhir_user
                .as_deref()
                .is_some_and(|u| u.starts_with("Patient/"))
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

    async fn put<T: Serialize>(
        &self,
        kind: &str,
        key: &str,
        value: &T,
        lifetime_ms: i64,
    ) -> Result<(), AuthError> {
        self.store
            .put_record(Record {
                kind: kind.into(),
                key: key.into(),
                value: serde_json::to_vec(value).unwrap_or_default(),
                expires_at: Some(now_millis() + lifetime_ms),
            })
            .await?;
        Ok(())
    }

    async fn get<T: for<'de> Deserialize<'de>>(
        &self,
        kind: &str,
        key: &str,
    ) -> Result<Option<(T, Option<i64>)>, AuthError> {
        let record = self.store.get_record(kind, key).await?;
        Ok(record.and_then(|r| {
            serde_json::from_slice(&r.value)
                .ok()
                .map(|v| (v, r.expires_at))
        }))
    }

    /// `GET|POST /auth/authorize`.
    pub async fn begin(
        &self,
        base: &str,
        params: &HashMap<String, String>,
    ) -> Result<Begun, AuthError> {
        let param = |name: &str| {
            params
                .get(name)
                .map(String::as_str)
                .filter(|v| !v.is_empty())
        };
        let client = match param("client_id") {
            Some(id) => self.accounts.client(id).await?,
            None => None,
        };
        let Some(client) = client else {
            return Ok(Begun::Refuse("unknown or missing client_id".into()));
        };
        let Some(redirect_uri) =
            param("redirect_uri").filter(|uri| client.redirect_uris.iter().any(|r| r == uri))
        else {
            return Ok(Begun::Refuse(
                "redirect_uri is missing or not one registered for this client".into(),
            ));
        };
        let state = param("state");
        let fail = |error: &str, description: &str| {
            let mut pairs = vec![("error", error), ("error_description", description)];
            if let Some(state) = state {
                pairs.push(("state", state));
            }
            Ok(Begun::Redirect(with_query(redirect_uri, &pairs)))
        };
        if param("response_type") != Some("code") {
            return fail(
                "unsupported_response_type",
                "only response_type=code is supported",
            );
        }
        let Some(code_challenge) = param("code_challenge") else {
            return fail(
                "invalid_request",
                "PKCE is required: send code_challenge with code_challenge_method=S256",
            );
        };
        if param("code_challenge_method") != Some("S256") {
            return fail("invalid_request", "code_challenge_method must be S256");
        }
        if param("aud").map(|a| a.trim_end_matches('/')) != Some(base) {
            return fail("invalid_request", "aud must be this server's FHIR base URL");
        }
        let granted = Scopes::parse(&client.scope)
            .intersect(&Scopes::parse(param("scope").unwrap_or_default()));
        if granted.granted.is_empty() {
            return fail(
                "invalid_scope",
                "none of the requested scopes may be granted to this client",
            );
        }
        let launch_patient = match param("launch") {
            Some(launch) => match self.get::<serde_json::Value>(LAUNCH, launch).await? {
                Some((context, _)) => context["patient"].as_str().map(str::to_owned),
                None => return fail("invalid_request", "unknown or expired launch"),
            },
            None => None,
        };
        let pending = Pending {
            client_id: client.client_id.clone(),
            client_name: client.name.clone(),
            redirect_uri: redirect_uri.to_owned(),
            state: state.map(str::to_owned),
            scope: granted.to_string(),
            code_challenge: code_challenge.to_owned(),
            nonce: param("nonce").map(str::to_owned),
            launch_patient,
            username: None,
            fhir_user: None,
        };
        let session = random_token(24);
        self.put(SESSION, &session, &pending, SESSION_MS).await?;
        Ok(Begun::Login {
            session,
            pending: Box::new(pending),
        })
    }

    /// A pending authorization, if the session is live.
    pub async fn pending(&self, session: &str) -> Result<Option<Pending>, AuthError> {
        Ok(self.get::<Pending>(SESSION, session).await?.map(|(p, _)| p))
    }

    /// The login form's post: `Ok(Some(pending))` when the user is known and the password theirs.
    pub async fn login(
        &self,
        session: &str,
        username: &str,
        password: &str,
    ) -> Result<Option<Pending>, AuthError> {
        let Some(mut pending) = self.pending(session).await? else {
            return Err(AuthError::oauth(
                "invalid_request",
                "this sign-in has expired; start again from the app",
            ));
        };
        let Some(user) = self.accounts.authenticate(username, password).await? else {
            return Ok(None);
        };
        pending.username = Some(user.username.clone());
        pending.fhir_user = Some(user.fhir_user.clone());
        self.put(SESSION, session, &pending, SESSION_MS).await?;
        Ok(Some(pending))
    }

    /// The approval form's post: the URL to send the browser back to the app with.
    pub async fn decide(
        &self,
        session: &str,
        approve: bool,
        chosen_patient: Option<&str>,
    ) -> Result<String, AuthError> {
        let taken = self.store.take_record(SESSION, session).await?;
        let Some(pending) = taken.and_then(|r| serde_json::from_slice::<Pending>(&r.value).ok())
        else {
            return Err(AuthError::oauth(
                "invalid_request",
                "this sign-in has expired; start again from the app",
            ));
        };
        let Some(username) = pending.username.clone() else {
            return Err(AuthError::oauth("invalid_request", "sign in first"));
        };
        let back = |pairs: Vec<(&str, &str)>| {
            let mut pairs = pairs;
            if let Some(state) = &pending.state {
                pairs.push(("state", state));
            }
            with_query(&pending.redirect_uri, &pairs)
        };
        if !approve {
            return Ok(back(vec![
                ("error", "access_denied"),
                ("error_description", "the user declined"),
            ]));
        }
        let own_patient = pending
            .fhir_user
            .as_deref()
            .and_then(|u| u.strip_prefix("Patient/"));
        let patient = match (&pending.launch_patient, own_patient) {
            (Some(launched), _) => Some(launched.clone()),
            (None, Some(own)) => Some(own.to_owned()),
            (None, None) => chosen_patient
                .filter(|p| crate::fhir::primitives::is_id(p))
                .map(str::to_owned),
        };
        if pending.wants_patient_context() && patient.is_none() {
            return Ok(back(vec![
                ("error", "invalid_request"),
                ("error_description", "no patient was chosen"),
            ]));
        }
        let code = random_token(32);
        let grant = CodeGrant {
            client_id: pending.client_id.clone(),
            redirect_uri: pending.redirect_uri.clone(),
            scope: pending.scope.clone(),
            code_challenge: pending.code_challenge.clone(),
            subject: username,
            fhir_user: pending.fhir_user.clone(),
            patient,
            nonce: pending.nonce.clone(),
        };
        self.put(CODE, &sha256_hex(&code), &grant, CODE_MS).await?;
        Ok(back(vec![("code", &code)]))
    }

    /// `POST /auth/token`.
    pub async fn token(
        &self,
        base: &str,
        form: &HashMap<String, String>,
        basic: Option<(String, String)>,
    ) -> Result<serde_json::Value, AuthError> {
        let client = self.authenticate_client(base, form, basic).await?;
        match form.get("grant_type").map(String::as_str) {
            Some("authorization_code") => self.exchange_code(base, &client, form).await,
            Some("refresh_token") => self.refresh(base, &client, form).await,
            Some("client_credentials") => self.client_credentials(base, &client, form).await,
            Some(other) => Err(AuthError::oauth(
                "unsupported_grant_type",
                format!("grant_type {other} is not supported"),
            )),
            None => Err(AuthError::oauth("invalid_request", "grant_type is missing")),
        }
    }

    async fn exchange_code(
        &self,
        base: &str,
        client: &Client,
        form: &HashMap<String, String>,
    ) -> Result<serde_json::Value, AuthError> {
        let code = form.get("code").map(String::as_str).unwrap_or_default();
        let key = sha256_hex(code);
        let Some(record) = self.store.take_record(CODE, &key).await? else {
            // A code used before: whatever it produced is revoked (RFC 6749 §4.1.2).
            if let Some((used, _)) = self.get::<serde_json::Value>(USED_CODE, &key).await?
                && let Some(family) = used["family"].as_str()
            {
                self.revoke_family(family).await?;
                return Err(AuthError::oauth(
                    "invalid_grant",
                    "the authorization code was already used; its tokens are revoked",
                ));
            }
            return Err(AuthError::oauth(
                "invalid_grant",
                "unknown or expired authorization code",
            ));
        };
        let grant: CodeGrant = serde_json::from_slice(&record.value)
            .map_err(|_| AuthError::oauth("invalid_grant", "unreadable authorization code"))?;
        let family = random_token(16);
        self.put(
            USED_CODE,
            &key,
            &serde_json::json!({ "family": family }),
            SESSION_MS,
        )
        .await?;
        if grant.client_id != client.client_id {
            return Err(AuthError::oauth(
                "invalid_grant",
                "the code was issued to another client",
            ));
        }
        if form.get("redirect_uri") != Some(&grant.redirect_uri) {
            return Err(AuthError::oauth(
                "invalid_grant",
                "redirect_uri does not match the authorization request",
            ));
        }
        let verifier = form
            .get("code_verifier")
            .map(String::as_str)
            .unwrap_or_default();
        if URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes())) != grant.code_challenge {
            return Err(AuthError::oauth(
                "invalid_grant",
                "PKCE verification failed (code_verifier)",
            ));
        }
        let issued = Issued {
            grant: Grant {
                subject: grant.subject,
                client_id: grant.client_id,
                scopes: Scopes::parse(&grant.scope),
                patient: grant.patient,
                fhir_user: grant.fhir_user,
                family: Some(family),
            },
            nonce: grant.nonce,
        };
        self.respond(base, issued).await
    }

    async fn refresh(
        &self,
        base: &str,
        client: &Client,
        form: &HashMap<String, String>,
    ) -> Result<serde_json::Value, AuthError> {
        let presented = form
            .get("refresh_token")
            .map(String::as_str)
            .unwrap_or_default();
        let key = sha256_hex(presented);
        let Some((old, expires_at)) = self.get::<RefreshGrant>(REFRESH, &key).await? else {
            return Err(AuthError::oauth(
                "invalid_grant",
                "unknown or expired refresh token",
            ));
        };
        if old.client_id != client.client_id {
            return Err(AuthError::oauth(
                "invalid_grant",
                "the refresh token was issued to another client",
            ));
        }
        if self
            .store
            .get_record(REVOKED_FAMILY, &old.family)
            .await?
            .is_some()
        {
            return Err(AuthError::oauth(
                "invalid_grant",
                "the authorization was revoked",
            ));
        }
        // Rotation: exactly one presenter wins the token; any other presentation is a replay.
        let taken = self.store.take_record(REFRESH, &key).await?;
        if old.used || taken.is_none() {
            self.revoke_family(&old.family).await?;
            return Err(AuthError::oauth(
                "invalid_grant",
                "the refresh token was already used; the authorization is revoked",
            ));
        }
        let used = RefreshGrant {
            used: true,
            ..clone_refresh(&old)
        };
        self.store
            .put_record(Record {
                kind: REFRESH.into(),
                key,
                value: serde_json::to_vec(&used).unwrap_or_default(),
                expires_at,
            })
            .await?;
        let original = Scopes::parse(&old.scope);
        let scopes = match form.get("scope").filter(|s| !s.is_empty()) {
            Some(requested) => {
                let requested = Scopes::parse(requested);
                if !original.covers(&requested) {
                    return Err(AuthError::oauth(
                        "invalid_scope",
                        "a refresh cannot add scopes the user did not grant",
                    ));
                }
                requested
            }
            None => original,
        };
        let issued = Issued {
            grant: Grant {
                subject: old.subject,
                client_id: old.client_id,
                scopes,
                patient: old.patient,
                fhir_user: old.fhir_user,
                family: Some(old.family),
            },
            nonce: None,
        };
        self.respond(base, issued).await
    }

    async fn client_credentials(
        &self,
        base: &str,
        client: &Client,
        form: &HashMap<String, String>,
    ) -> Result<serde_json::Value, AuthError> {
        if client.is_public() {
            return Err(AuthError::oauth(
                "unauthorized_client",
                "client_credentials is for confidential clients",
            ));
        }
        let requested = Scopes::parse(form.get("scope").map(String::as_str).unwrap_or_default());
        let scopes = Scopes::parse(&client.scope).intersect(&requested);
        if scopes.resources.is_empty() {
            return Err(AuthError::oauth(
                "invalid_scope",
                "none of the requested scopes may be granted to this client",
            ));
        }
        let grant = Grant {
            subject: client.client_id.clone(),
            client_id: client.client_id.clone(),
            scopes,
            patient: None,
            fhir_user: None,
            family: None,
        };
        let (token, claims) = self.tokens.issue_access(base, &grant).await?;
        Ok(serde_json::json!({
            "access_token": token, "token_type": "Bearer",
            "expires_in": claims.exp - claims.iat, "scope": claims.scope,
        }))
    }

    /// The token response for a user authorization (code or refresh).
    async fn respond(&self, base: &str, issued: Issued) -> Result<serde_json::Value, AuthError> {
        let grant = &issued.grant;
        let (token, claims) = self.tokens.issue_access(base, grant).await?;
        let mut body = serde_json::json!({
            "access_token": token, "token_type": "Bearer",
            "expires_in": claims.exp - claims.iat, "scope": claims.scope,
        });
        if let Some(patient) = &grant.patient {
            body["patient"] = patient.clone().into();
            body["need_patient_banner"] = true.into();
        }
        if grant.scopes.contains("openid") && grant.scopes.contains("fhirUser") {
            body["id_token"] = self
                .tokens
                .issue_id_token(
                    base,
                    &grant.client_id,
                    &grant.subject,
                    grant.fhir_user.as_deref(),
                    issued.nonce.as_deref(),
                )
                .await?
                .into();
        }
        if (grant.scopes.contains("offline_access") || grant.scopes.contains("online_access"))
            && let Some(family) = &grant.family
        {
            let refresh = random_token(32);
            let record = RefreshGrant {
                family: family.clone(),
                client_id: grant.client_id.clone(),
                scope: grant.scopes.to_string(),
                subject: grant.subject.clone(),
                fhir_user: grant.fhir_user.clone(),
                patient: grant.patient.clone(),
                used: false,
            };
            self.put(REFRESH, &sha256_hex(&refresh), &record, REFRESH_MS)
                .await?;
            body["refresh_token"] = refresh.into();
        }
        Ok(body)
    }

    async fn revoke_family(&self, family: &str) -> Result<(), AuthError> {
        self.store
            .put_record(Record {
                kind: REVOKED_FAMILY.into(),
                key: family.to_owned(),
                value: Vec::new(),
                expires_at: Some(now_millis() + REFRESH_MS),
            })
            .await?;
        Ok(())
    }

    /// Who the client at the token, introspection or revocation endpoint is.
    async fn authenticate_client(
        &self,
        base: &str,
        form: &HashMap<String, String>,
        basic: Option<(String, String)>,
    ) -> Result<Client, AuthError> {
        if let Some((client_id, secret)) = basic {
            // RFC 6749 §2.3.1 form-encodes both parts; many clients send them as they are.
            let (decoded_id, decoded_secret) = (form_decode(&client_id), form_decode(&secret));
            return match self.client_with_secret(&client_id, &secret).await {
                Ok(client) => Ok(client),
                Err(_)
                    if (decoded_id.as_str(), decoded_secret.as_str())
                        != (client_id.as_str(), secret.as_str()) =>
                {
                    self.client_with_secret(&decoded_id, &decoded_secret).await
                }
                Err(e) => Err(e),
            };
        }
        if form.get("client_assertion_type").map(String::as_str) == Some(ASSERTION_TYPE) {
            let assertion = form
                .get("client_assertion")
                .map(String::as_str)
                .unwrap_or_default();
            return self.client_with_assertion(base, assertion).await;
        }
        let client_id = form.get("client_id").ok_or_else(|| {
            AuthError::invalid_client("no client authentication and no client_id")
        })?;
        if let Some(secret) = form.get("client_secret") {
            return self.client_with_secret(client_id, secret).await;
        }
        match self.accounts.client(client_id).await? {
            Some(client) if client.is_public() => Ok(client),
            Some(_) => Err(AuthError::invalid_client("this client must authenticate")),
            None => Err(AuthError::invalid_client("unknown client")),
        }
    }

    async fn client_with_secret(&self, client_id: &str, secret: &str) -> Result<Client, AuthError> {
        match self.accounts.client(client_id).await? {
            Some(client) if matches!(&client.auth, ClientAuth::Secret { hash } if verify_secret(hash, secret)) => {
                Ok(client)
            }
            _ => Err(AuthError::invalid_client("unknown client or wrong secret")),
        }
    }

    async fn client_with_assertion(
        &self,
        base: &str,
        assertion: &str,
    ) -> Result<Client, AuthError> {
        let refuse =
            |why: &str| AuthError::invalid_client(format!("client assertion refused: {why}"));
        let header = decode_header(assertion).map_err(|_| refuse("not a JWT"))?;
        if !matches!(
            header.alg,
            Algorithm::RS384 | Algorithm::ES384 | Algorithm::RS256 | Algorithm::ES256
        ) {
            return Err(refuse("the algorithm must be RS384 or ES384"));
        }
        let issuer = unverified_claim(assertion, "iss").ok_or_else(|| refuse("no iss"))?;
        let client = self
            .accounts
            .client(&issuer)
            .await?
            .ok_or_else(|| refuse("unknown client"))?;
        let jwks: JwkSet = match &client.auth {
            ClientAuth::Jwks { jwks } => serde_json::from_value(jwks.clone())
                .map_err(|_| refuse("the registered JWKS is unreadable"))?,
            ClientAuth::JwksUrl { url } => self.fetch_jwks(url).await?,
            _ => return Err(refuse("this client has no registered keys")),
        };
        let key = match &header.kid {
            Some(kid) => jwks.find(kid),
            None => jwks.keys.first(),
        }
        .and_then(|jwk| DecodingKey::from_jwk(jwk).ok())
        .ok_or_else(|| refuse("signed with a key the client did not register"))?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = 5;
        validation.set_audience(&[Endpoints::for_base(base).token]);
        validation.set_issuer(&[client.client_id.as_str()]);
        validation.sub = Some(client.client_id.clone());
        validation.set_required_spec_claims(&["exp", "iss", "sub", "aud", "jti"]);
        let claims = decode::<serde_json::Value>(assertion, &key, &validation)
            .map_err(|e| refuse(&super::tokens::describe_jwt_error(&e)))?
            .claims;
        let exp = claims["exp"].as_i64().unwrap_or_default();
        if exp - now_millis() / 1000 > MAX_ASSERTION_SECONDS + 5 {
            return Err(refuse("exp is more than 5 minutes ahead"));
        }
        let jti = claims["jti"].as_str().unwrap_or_default();
        let fresh = self
            .store
            .insert_record(Record {
                kind: ASSERTION_JTI.into(),
                key: format!("{}|{jti}", client.client_id),
                value: Vec::new(),
                expires_at: Some((exp + 10) * 1000),
            })
            .await?;
        if !fresh {
            return Err(refuse("this jti was already used"));
        }
        Ok(client)
    }

    async fn fetch_jwks(&self, url: &str) -> Result<JwkSet, AuthError> {
        let failed = |e: reqwest::Error| {
            AuthError::Unavailable(format!(
                "the client's JWKS at {url} could not be fetched: {e}"
            ))
        };
        self.http
            .get(url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(failed)?
            .json()
            .await
            .map_err(failed)
    }

    /// `POST /auth/introspect` (RFC 7662), for an authenticated confidential client.
    pub async fn introspect(
        &self,
        base: &str,
        form: &HashMap<String, String>,
        basic: Option<(String, String)>,
    ) -> Result<serde_json::Value, AuthError> {
        let client = self.authenticate_client(base, form, basic).await?;
        if client.is_public() {
            return Err(AuthError::invalid_client(
                "introspection is for confidential clients",
            ));
        }
        let token = form.get("token").map(String::as_str).unwrap_or_default();
        if let Ok(header) = decode_header(token)
            && let Ok(claims) = self.tokens.verify_own(token, &header, base).await
        {
            let mut body = serde_json::to_value(&claims).unwrap_or_default();
            body["active"] = true.into();
            body["token_type"] = "Bearer".into();
            return Ok(body);
        }
        if let Some((refresh, expires_at)) = self
            .get::<RefreshGrant>(REFRESH, &sha256_hex(token))
            .await?
            && !refresh.used
            && self
                .store
                .get_record(REVOKED_FAMILY, &refresh.family)
                .await?
                .is_none()
        {
            return Ok(serde_json::json!({
                "active": true, "token_type": "refresh_token", "client_id": refresh.client_id,
                "scope": refresh.scope, "sub": refresh.subject, "exp": expires_at.map(|e| e / 1000),
            }));
        }
        Ok(serde_json::json!({ "active": false }))
    }

    /// `POST /auth/revoke` (RFC 7009): always succeeds for an authenticated client.
    pub async fn revoke(
        &self,
        base: &str,
        form: &HashMap<String, String>,
        basic: Option<(String, String)>,
    ) -> Result<(), AuthError> {
        let client = self.authenticate_client(base, form, basic).await?;
        let token = form.get("token").map(String::as_str).unwrap_or_default();
        if let Some((refresh, _)) = self
            .get::<RefreshGrant>(REFRESH, &sha256_hex(token))
            .await?
        {
            if refresh.client_id == client.client_id {
                self.revoke_family(&refresh.family).await?;
            }
            return Ok(());
        }
        if let Ok(header) = decode_header(token)
            && let Ok(claims) = self.tokens.verify_own(token, &header, base).await
            && claims.client_id == client.client_id
        {
            self.tokens.revoke_access(&claims).await?;
        }
        Ok(())
    }

    /// `POST /auth/register` (RFC 7591), for holders of the admin token.
    pub async fn register(
        &self,
        bearer: Option<&str>,
        metadata: &serde_json::Value,
    ) -> Result<serde_json::Value, AuthError> {
        let allowed = match (&self.admin_token, bearer) {
            (Some(expected), Some(given)) => {
                constant_time_eq(expected.as_bytes(), given.as_bytes())
            }
            _ => false,
        };
        if !allowed {
            return Err(AuthError::OAuth {
                error: "invalid_token",
                description: "registration needs the admin token".into(),
                status: 401,
            });
        }
        let invalid = |why: &str| AuthError::oauth("invalid_client_metadata", why);
        let text = |name: &str| {
            metadata
                .get(name)
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        };
        let redirect_uris: Vec<String> = metadata
            .get("redirect_uris")
            .and_then(|v| v.as_array())
            .map(|uris| {
                uris.iter()
                    .filter_map(|u| u.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let method =
            text("token_endpoint_auth_method").unwrap_or_else(|| "client_secret_basic".into());
        let mut secret = None;
        let auth = match method.as_str() {
            "none" => ClientAuth::None,
            "client_secret_basic" | "client_secret_post" => {
                let value = random_token(32);
                let hash = hash_secret(&value);
                secret = Some(value);
                ClientAuth::Secret { hash }
            }
            "private_key_jwt" => match (metadata.get("jwks"), text("jwks_uri")) {
                (Some(jwks), _) => ClientAuth::Jwks { jwks: jwks.clone() },
                (None, Some(url)) => ClientAuth::JwksUrl { url },
                (None, None) => return Err(invalid("private_key_jwt needs jwks or jwks_uri")),
            },
            _ => return Err(invalid("unsupported token_endpoint_auth_method")),
        };
        let client = Client {
            client_id: random_token(16),
            auth,
            scope: text("scope").unwrap_or_default(),
            redirect_uris,
            name: text("client_name"),
        };
        self.accounts.add_client(&client).await?;
        let mut response = metadata.clone();
        response["client_id"] = client.client_id.clone().into();
        response["client_id_issued_at"] = (now_millis() / 1000).into();
        response["token_endpoint_auth_method"] = method.into();
        if let Some(secret) = secret {
            response["client_secret"] = secret.into();
            response["client_secret_expires_at"] = 0.into();
        }
        Ok(response)
    }

    /// `POST /auth/launch`: an EHR (a token with `user/` or `system/` scopes) binds a launch to
    /// a patient; the app then brings `launch=…` to the authorize endpoint.
    pub async fn create_launch(
        &self,
        principal: &Principal,
        patient: &str,
    ) -> Result<String, AuthError> {
        let is_ehr = principal
            .scopes
            .resources
            .iter()
            .any(|s| s.context != super::Context::Patient);
        if !is_ehr {
            return Err(AuthError::Forbidden(
                "only an EHR (user or system scopes) may create a launch".into(),
            ));
        }
        if !crate::fhir::primitives::is_id(patient) {
            return Err(AuthError::oauth(
                "invalid_request",
                "patient must be a Patient id",
            ));
        }
        let launch = random_token(16);
        self.put(
            LAUNCH,
            &launch,
            &serde_json::json!({ "patient": patient, "by": principal.client_id }),
            LAUNCH_MS,
        )
        .await?;
        Ok(launch)
    }
}

/// What a user authorization produces.
struct Issued {
    grant: Grant,
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
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
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
