//! The authorization server's HTTP face: SMART discovery, JWKS, the authorize endpoint with its
//! login and approval pages (plain HTML forms, no JavaScript), and the token, introspection,
//! revocation, registration and EHR-launch endpoints. OAuth errors here are OAuth's own JSON
//! (`{"error": …, "error_description": …}`), not OperationOutcomes; responses carrying tokens
//! are `Cache-Control: no-store`.

use std::collections::HashMap;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use base64::Engine;

use super::HttpState;
use super::negotiate::BaseUrl;
use super::principal::bearer;
use crate::audit::{Agent, Touched};
use crate::auth::server::{Begun, Endpoints, Pending, smart_configuration};
use crate::auth::{AuthError, Principal, Scopes};

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

/// An OAuth error as OAuth clients expect it.
fn oauth_error(error: AuthError) -> Response {
    let code = error.oauth_code();
    let status = match &error {
        AuthError::OAuth { status, .. } => {
            StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_REQUEST)
        }
        AuthError::MissingToken | AuthError::InvalidToken(_) => StatusCode::UNAUTHORIZED,
        AuthError::Forbidden(_) => StatusCode::FORBIDDEN,
        AuthError::Store(_) | AuthError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        AuthError::Signing(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let description = match &error {
        AuthError::OAuth { description, .. } => description.clone(),
        other => other.to_string(),
    };
    // A bearer-protected endpoint (registration) challenges for a bearer token; the others
    // refuse a client's credentials, which it sends with Basic (RFC 6749 §5.2).
    let challenge = if code == "invalid_token" {
        "Bearer realm=\"auth\", error=\"invalid_token\""
    } else {
        "Basic realm=\"token\""
    };
    let mut response = json_response(
        status,
        &serde_json::json!({ "error": code, "error_description": description }),
    );
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        );
    }
    response
}

/// An endpoint's JSON answer, or OAuth's error.
fn answer(status: StatusCode, result: Result<serde_json::Value, AuthError>) -> Response {
    match result {
        Ok(body) => json_response(status, &body),
        Err(e) => oauth_error(e),
    }
}

/// A form post to an endpoint where the client authenticates (token, introspect, revoke).
struct ClientRequest {
    form: HashMap<String, String>,
    basic: Option<(String, String)>,
}

impl ClientRequest {
    fn read(headers: &HeaderMap, body: &[u8]) -> ClientRequest {
        ClientRequest {
            form: form(body),
            basic: basic_credentials(headers),
        }
    }
}

fn form(body: &[u8]) -> HashMap<String, String> {
    form_urlencoded::parse(body).into_owned().collect()
}

/// `Authorization: Basic` credentials, as sent (the authorization server deals with their
/// form-encoding, which RFC 6749 §2.3.1 asks for and many clients skip).
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (id, secret) = text.split_once(':')?;
    Some((id.to_owned(), secret.to_owned()))
}

#[utoipa::path(get, path = "/.well-known/smart-configuration", tag = "authorization",
    responses((status = 200, description = "SMART discovery (also at /fhir/.well-known/smart-configuration)", body = serde_json::Value)),
    security(()))]
pub async fn smart_config(base: BaseUrl) -> Response {
    json_response(StatusCode::OK, &smart_configuration(&base.0))
}

#[utoipa::path(get, path = "/fhir/.well-known/openid-configuration", tag = "authorization",
    responses((status = 200, description = "OpenID discovery for id_token verification", body = serde_json::Value)),
    security(()))]
pub async fn openid_config(base: BaseUrl) -> Response {
    let endpoints = Endpoints::for_base(&base.0);
    json_response(
        StatusCode::OK,
        &serde_json::json!({
            "issuer": base.0,
            "jwks_uri": endpoints.jwks,
            "authorization_endpoint": endpoints.authorize,
            "token_endpoint": endpoints.token,
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
        }),
    )
}

#[utoipa::path(get, path = "/auth/jwks", tag = "authorization",
    responses((status = 200, description = "The token signing keys (ES256)", body = serde_json::Value)),
    security(()))]
pub async fn jwks(State(state): State<HttpState>) -> Response {
    json_response(StatusCode::OK, &state.auth.tokens.keyring().jwks().await)
}

/// `GET /auth/authorize` (parameters in the query).
#[utoipa::path(get, path = "/auth/authorize", tag = "authorization",
    params(("response_type" = String, Query), ("client_id" = String, Query), ("redirect_uri" = String, Query), ("scope" = String, Query), ("state" = Option<String>, Query), ("aud" = String, Query), ("code_challenge" = String, Query), ("code_challenge_method" = String, Query, description = "S256"), ("launch" = Option<String>, Query)),
    responses((status = 200, description = "The login page (HTML)"), (status = 303, description = "Back to the app with an error"), (status = 400, description = "Unknown client or redirect_uri (HTML, no redirect)")),
    security(()))]
pub async fn authorize_get(
    State(state): State<HttpState>,
    base: BaseUrl,
    RawQuery(query): RawQuery,
) -> Response {
    authorize(&state, &base, form(query.unwrap_or_default().as_bytes())).await
}

/// `POST /auth/authorize` (parameters in the form body; SMART's `authorize-post`).
#[utoipa::path(post, path = "/auth/authorize", tag = "authorization",
    request_body(content = String, content_type = "application/x-www-form-urlencoded", description = "The same parameters as GET"),
    responses((status = 200, description = "The login page (HTML)"), (status = 303, description = "Back to the app with an error"), (status = 400, description = "Unknown client or redirect_uri (HTML)")),
    security(()))]
pub async fn authorize_post(
    State(state): State<HttpState>,
    base: BaseUrl,
    body: Bytes,
) -> Response {
    authorize(&state, &base, form(&body)).await
}

/// The cookie that binds a sign-in to the browser that started it.
const BROWSER_COOKIE: &str = "intellihealth_signin";

fn browser_secret(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == BROWSER_COOKIE)
        .map(|(_, value)| value.to_owned())
}

async fn authorize(state: &HttpState, base: &BaseUrl, params: HashMap<String, String>) -> Response {
    match state.auth.begin(&base.0, &params).await {
        Ok(Begun::Login {
            session,
            browser,
            pending,
        }) => {
            let mut page = pages::login(&session, &pending, None);
            let secure = if base.0.starts_with("https://") {
                "; Secure"
            } else {
                ""
            };
            let cookie = format!(
                "{BROWSER_COOKIE}={browser}; Path=/auth; HttpOnly; SameSite=Lax; Max-Age=600{secure}"
            );
            if let Ok(value) = HeaderValue::from_str(&cookie) {
                page.headers_mut().insert(header::SET_COOKIE, value);
            }
            page
        }
        Ok(Begun::Refuse(why)) => pages::error(StatusCode::BAD_REQUEST, &why),
        Ok(Begun::Redirect(to)) => Redirect::to(&to).into_response(),
        Err(e) => pages::error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

/// `POST /auth/login`: the login form.
#[utoipa::path(post, path = "/auth/login", tag = "authorization",
    request_body(content = String, content_type = "application/x-www-form-urlencoded", description = "session, username, password"),
    responses((status = 200, description = "The approval page, or the login page again (HTML)")),
    security(()))]
pub async fn login(
    State(state): State<HttpState>,
    touched: Option<Extension<Touched>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let fields = form(&body);
    let field = |name: &str| fields.get(name).map(String::as_str).unwrap_or_default();
    let session = field("session");
    let browser = browser_secret(&headers);
    // The sign-in's AuditEvent names the user who tried and the app they signed in to.
    let note = |pending: &Pending, signed_in: bool| {
        let Some(Extension(touched)) = &touched else {
            return;
        };
        touched.set_agent(Agent {
            client_id: pending.client_id.clone(),
            fhir_user: pending.fhir_user.clone().filter(|_| signed_in),
            subject: field("username").to_owned(),
            break_glass: None,
        });
        if !signed_in {
            touched.refused();
        }
        if let Some(patient) = pending
            .fhir_user
            .as_deref()
            .filter(|_| signed_in)
            .and_then(|user| user.strip_prefix("Patient/"))
        {
            touched.judged(format!("Patient/{patient}"), &[patient.to_owned()], true);
        }
    };
    match state
        .auth
        .login(
            session,
            browser.as_deref(),
            field("username"),
            field("password"),
        )
        .await
    {
        Ok(Some((renewed, pending))) => {
            note(&pending, true);
            pages::approve(&renewed, &pending)
        }
        Ok(None) => match state.auth.pending(session).await {
            Ok(Some(pending)) => {
                note(&pending, false);
                pages::login(session, &pending, Some("Wrong username or password."))
            }
            _ => pages::error(
                StatusCode::BAD_REQUEST,
                "this sign-in has expired; start again from the app",
            ),
        },
        Err(e) => pages::error(StatusCode::BAD_REQUEST, &e.to_string()),
    }
}

/// `POST /auth/approve`: the approval form; sends the browser back to the app (303).
#[utoipa::path(post, path = "/auth/approve", tag = "authorization",
    request_body(content = String, content_type = "application/x-www-form-urlencoded", description = "session, decision=approve|deny, patient (a practitioner's choice)"),
    responses((status = 303, description = "Back to the app with a code or access_denied")),
    security(()))]
pub async fn approve(State(state): State<HttpState>, headers: HeaderMap, body: Bytes) -> Response {
    let fields = form(&body);
    let approve = fields.get("decision").map(String::as_str) == Some("approve");
    let patient = fields
        .get("patient")
        .map(|p| p.trim())
        .filter(|p| !p.is_empty());
    let session = fields
        .get("session")
        .map(String::as_str)
        .unwrap_or_default();
    let browser = browser_secret(&headers);
    match state
        .auth
        .decide(session, browser.as_deref(), approve, patient)
        .await
    {
        Ok(to) => Redirect::to(&to).into_response(),
        Err(e) => pages::error(StatusCode::BAD_REQUEST, &e.to_string()),
    }
}

#[utoipa::path(post, path = "/auth/token", tag = "authorization",
    request_body(content = String, content_type = "application/x-www-form-urlencoded", description = "grant_type=authorization_code|refresh_token|client_credentials and its parameters"),
    responses((status = 200, description = "access_token, token_type, expires_in, scope, patient, id_token, refresh_token", body = serde_json::Value), (status = 400, description = "OAuth error", body = serde_json::Value), (status = 401, description = "invalid_client", body = serde_json::Value)),
    security(()))]
pub async fn token(
    State(state): State<HttpState>,
    base: BaseUrl,
    touched: Option<Extension<Touched>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let client = ClientRequest::read(&headers, &body);
    let answered = state
        .auth
        .token(&base.0, &client.form, client.basic.clone())
        .await;
    if let Some(Extension(touched)) = touched {
        note_token_request(&touched, &client, &answered);
    }
    answer(StatusCode::OK, answered)
}

/// Tells the token request's AuditEvent who asked: the issued token's client and user (and
/// its patient, so the patient sees which app got access to their record), or, for a refusal,
/// the client the request claimed to be.
fn note_token_request(
    touched: &Touched,
    client: &ClientRequest,
    answered: &Result<serde_json::Value, AuthError>,
) {
    let issued = answered
        .as_ref()
        .ok()
        .and_then(|body| body["access_token"].as_str())
        .and_then(unverified_claims);
    let agent = match &issued {
        Some(claims) => Agent {
            client_id: claims["client_id"].as_str().unwrap_or_default().to_owned(),
            fhir_user: claims["fhirUser"].as_str().map(str::to_owned),
            subject: claims["sub"].as_str().unwrap_or_default().to_owned(),
            break_glass: None,
        },
        None => {
            let claimed = client
                .basic
                .as_ref()
                .map(|(id, _)| id.clone())
                .or_else(|| client.form.get("client_id").cloned())
                .or_else(|| {
                    let assertion = client.form.get("client_assertion")?;
                    unverified_claims(assertion)?["iss"]
                        .as_str()
                        .map(str::to_owned)
                })
                .unwrap_or_default();
            Agent {
                client_id: claimed.clone(),
                fhir_user: None,
                subject: claimed,
                break_glass: None,
            }
        }
    };
    touched.set_agent(agent);
    if let Some(patient) = issued.as_ref().and_then(|c| c["patient"].as_str()) {
        touched.judged(format!("Patient/{patient}"), &[patient.to_owned()], true);
    }
}

/// The claims of a JWT, without checking its signature: only for describing a request in its
/// AuditEvent (a token this server just issued, or the issuer a refused assertion names).
fn unverified_claims(jwt: &str) -> Option<serde_json::Value> {
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

#[utoipa::path(post, path = "/auth/introspect", tag = "authorization",
    request_body(content = String, content_type = "application/x-www-form-urlencoded", description = "token (RFC 7662), with client authentication"),
    responses((status = 200, description = "active and the token's claims", body = serde_json::Value), (status = 401, description = "invalid_client", body = serde_json::Value)),
    security(()))]
pub async fn introspect(
    State(state): State<HttpState>,
    base: BaseUrl,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let client = ClientRequest::read(&headers, &body);
    answer(
        StatusCode::OK,
        state
            .auth
            .introspect(&base.0, &client.form, client.basic)
            .await,
    )
}

#[utoipa::path(post, path = "/auth/revoke", tag = "authorization",
    request_body(content = String, content_type = "application/x-www-form-urlencoded", description = "token (RFC 7009), with client authentication"),
    responses((status = 200, description = "Revoked (or already unknown)")),
    security(()))]
pub async fn revoke(
    State(state): State<HttpState>,
    base: BaseUrl,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let client = ClientRequest::read(&headers, &body);
    let revoked = state.auth.revoke(&base.0, &client.form, client.basic).await;
    answer(StatusCode::OK, revoked.map(|()| serde_json::json!({})))
}

#[utoipa::path(post, path = "/auth/register", tag = "authorization",
    request_body(content = serde_json::Value, description = "RFC 7591 client metadata"),
    responses((status = 201, description = "client_id (and client_secret)", body = serde_json::Value), (status = 401, description = "The admin token is required", body = serde_json::Value)),
    security(("bearer" = [])))]
pub async fn register(State(state): State<HttpState>, headers: HeaderMap, body: Bytes) -> Response {
    let Ok(metadata) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return oauth_error(AuthError::oauth(
            "invalid_client_metadata",
            "the body is not JSON",
        ));
    };
    answer(
        StatusCode::CREATED,
        state
            .auth
            .register(bearer(&headers).as_deref(), &metadata)
            .await,
    )
}

/// `POST /auth/launch` with `{"patient": "123"}`, by an EHR with its own access token.
#[utoipa::path(post, path = "/auth/launch", tag = "authorization",
    request_body(content = serde_json::Value, description = "{\"patient\": \"123\", \"client_id\": \"the app (optional: binds the launch to it)\"}"),
    responses((status = 201, description = "{\"launch\": \"…\"}", body = serde_json::Value), (status = 403, description = "Not an EHR (user or system scopes)", body = serde_json::Value)),
    security(("bearer" = [])))]
pub async fn launch(State(state): State<HttpState>, principal: Principal, body: Bytes) -> Response {
    let request: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let patient = request["patient"].as_str().unwrap_or_default();
    let client_id = request["client_id"].as_str();
    let launch = state
        .auth
        .create_launch(&principal, patient, client_id)
        .await;
    answer(
        StatusCode::CREATED,
        launch.map(|launch| serde_json::json!({ "launch": launch })),
    )
}

/// The HTML pages: small, self-contained, escaped.
mod pages {
    use super::*;

    fn escape(text: &str) -> String {
        text.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
            .replace('\'', "&#39;")
    }

    fn page(status: StatusCode, title: &str, body: &str) -> Response {
        let html = format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title>\
             <meta name=\"viewport\" content=\"width=device-width\"></head>\
             <body style=\"font-family:sans-serif;max-width:32em;margin:2em auto\">\
             <h1>{}</h1>{body}</body></html>",
            escape(title),
            escape(title)
        );
        let mut response = (status, Html(html)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        // The pages must not be framed (clickjacking of the approval button).
        headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
        headers.insert(
            "content-security-policy",
            // No form-action: browsers apply it to the redirect after the approval post too,
            // which would stop the way back to the app.
            HeaderValue::from_static(
                "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
            ),
        );
        response
    }

    fn app_name(pending: &Pending) -> String {
        escape(pending.client_name.as_deref().unwrap_or(&pending.client_id))
    }

    pub fn login(session: &str, pending: &Pending, problem: Option<&str>) -> Response {
        let problem = problem
            .map(|p| format!("<p role=\"alert\"><strong>{}</strong></p>", escape(p)))
            .unwrap_or_default();
        let body = format!(
            "<p><strong>{}</strong> asks to use your health record. Sign in to decide.</p>{problem}\
             <form method=\"post\" action=\"/auth/login\">\
             <input type=\"hidden\" name=\"session\" value=\"{}\">\
             <p><label>Username <input name=\"username\" autocomplete=\"username\" required></label></p>\
             <p><label>Password <input name=\"password\" type=\"password\" autocomplete=\"current-password\" required></label></p>\
             <p><button type=\"submit\">Sign in</button></p></form>",
            app_name(pending),
            escape(session)
        );
        page(StatusCode::OK, "Sign in", &body)
    }

    pub fn approve(session: &str, pending: &Pending) -> Response {
        let scopes: String = Scopes::parse(&pending.scope)
            .granted
            .iter()
            .map(|s| format!("<li><code>{}</code></li>", escape(s)))
            .collect();
        let patient = if pending.needs_patient_choice() {
            "<p><label>Patient id <input name=\"patient\" required pattern=\"[A-Za-z0-9.\\-]{1,64}\"></label></p>".to_owned()
        } else {
            String::new()
        };
        let body = format!(
            "<p>Signed in as <strong>{}</strong>.</p><p><strong>{}</strong> asks for:</p><ul>{scopes}</ul>\
             <form method=\"post\" action=\"/auth/approve\">\
             <input type=\"hidden\" name=\"session\" value=\"{}\">{patient}\
             <p><button type=\"submit\" name=\"decision\" value=\"approve\">Allow</button> \
             <button type=\"submit\" name=\"decision\" value=\"deny\" formnovalidate>Deny</button></p></form>",
            escape(pending.username.as_deref().unwrap_or_default()),
            app_name(pending),
            escape(session)
        );
        page(StatusCode::OK, "Allow access?", &body)
    }

    pub fn error(status: StatusCode, why: &str) -> Response {
        page(
            status,
            "Authorization refused",
            &format!("<p>{}</p>", escape(why)),
        )
    }
}
