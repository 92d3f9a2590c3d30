//! The OAuth side of an app, as public clients do it: discovery, the authorization request
//! walked through the server's own login and approval pages (forms posted as a browser would),
//! the code exchange with PKCE, refresh, and the client_credentials grants (secret, or a signed
//! assertion). The suites in `smart` and `attacks` are written with these.

use std::collections::HashMap;
use std::sync::Arc;

use oauth2::basic::{
    BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse,
    BasicTokenType,
};
use oauth2::{
    AuthType, AuthUrl, AuthorizationCode, Client, ClientId, ClientSecret, CsrfToken,
    EndpointNotSet, EndpointSet, ExtraTokenFields, PkceCodeChallenge, RedirectUrl, RefreshToken,
    RequestTokenError, Scope, StandardRevocableToken, StandardTokenResponse, TokenResponse,
    TokenUrl,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::keys::{AsymmetricClient, TestIssuer};

/// The SMART-specific fields of a token response.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SmartFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
}
impl ExtraTokenFields for SmartFields {}

pub type SmartToken = StandardTokenResponse<SmartFields, BasicTokenType>;
type SmartClient = Client<
    BasicErrorResponse,
    SmartToken,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;
type TokenError = RequestTokenError<oauth2::HttpClientError<reqwest::Error>, BasicErrorResponse>;

/// A user who signs in through the login page.
#[derive(Clone, Debug)]
pub struct UserLogin {
    pub username: String,
    pub password: String,
    /// The user's own patient (a patient user), or the patient a practitioner picks.
    pub patient_id: String,
}

/// What the server under test has registered for these suites.
#[derive(Clone, Debug)]
pub struct SmartFixtures {
    /// A public app: PKCE only. Its scopes must include `launch launch/patient openid fhirUser
    /// offline_access patient/*.rs`.
    pub app_client_id: String,
    pub app_redirect_uri: String,
    /// A confidential client with a shared secret and `system/*.rs`.
    pub secret_client_id: String,
    pub secret: String,
    /// Clients with registered keys and `system/*.rs`.
    pub es384: AsymmetricClient,
    pub rs384: AsymmetricClient,
    pub patient_user: UserLogin,
    pub practitioner: UserLogin,
    /// A patient outside the patient user's compartment.
    pub other_patient_id: String,
    /// The bearer secret of dynamic registration, if the server has one.
    pub admin_token: Option<String>,
    /// An issuer the server trusts that the runner controls (for the attack matrix).
    pub issuer: Option<Arc<TestIssuer>>,
}

/// Endpoints, from discovery.
pub struct Discovered {
    pub config: Value,
    pub authorize: String,
    pub token: String,
    pub jwks: String,
    pub introspect: String,
    pub revoke: String,
    pub register: String,
    pub base: String,
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("an HTTP client")
}

/// The refresh token a token response carries ("" when it carries none).
pub fn refresh_secret(tokens: &SmartToken) -> &str {
    tokens
        .refresh_token()
        .map(|r| r.secret().as_str())
        .unwrap_or_default()
}

/// Whether a token request succeeded with `scope` among the scopes granted.
pub fn grants_scope(result: &Result<SmartToken, TokenError>, scope: &str) -> bool {
    result.as_ref().is_ok_and(|t| {
        t.scopes()
            .is_some_and(|s| s.iter().any(|x| x.as_str() == scope))
    })
}

/// The status and `Location` of an unfollowed GET (status 0 when it failed outright).
pub async fn status_and_location(client: &reqwest::Client, url: &str) -> (u16, String) {
    match client.get(url).send().await {
        Ok(r) => (
            r.status().as_u16(),
            r.headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned(),
        ),
        Err(_) => (0, String::new()),
    }
}

/// The OAuth error code of a failed token request ("" when it succeeded), for a report's detail.
pub fn failure_code(result: &Result<SmartToken, TokenError>) -> String {
    result.as_ref().err().map(oauth_code).unwrap_or_default()
}

pub fn oauth_code(error: &TokenError) -> String {
    match error {
        RequestTokenError::ServerResponse(response) => response.error().as_ref().to_owned(),
        other => format!("{other:?}").chars().take(200).collect(),
    }
}

pub(crate) fn root_of(base: &str) -> String {
    match base
        .find("://")
        .and_then(|s| base[s + 3..].find('/').map(|i| s + 3 + i))
    {
        Some(at) => base[..at].to_owned(),
        None => base.to_owned(),
    }
}

pub async fn discover(base: &str) -> Result<Discovered, String> {
    let url = format!("{base}/.well-known/smart-configuration");
    let config: Value = http()
        .get(&url)
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?
        .json()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let text = |name: &str| config[name].as_str().unwrap_or_default().to_owned();
    Ok(Discovered {
        authorize: text("authorization_endpoint"),
        token: text("token_endpoint"),
        jwks: text("jwks_uri"),
        introspect: text("introspection_endpoint"),
        revoke: text("revocation_endpoint"),
        register: text("registration_endpoint"),
        base: base.to_owned(),
        config,
    })
}

impl Discovered {
    fn client(&self, client_id: &str, redirect_uri: &str) -> SmartClient {
        Client::new(ClientId::new(client_id.to_owned()))
            .set_auth_uri(AuthUrl::new(self.authorize.clone()).expect("authorize URL"))
            .set_token_uri(TokenUrl::new(self.token.clone()).expect("token URL"))
            .set_redirect_uri(RedirectUrl::new(redirect_uri.to_owned()).expect("redirect URI"))
            .set_auth_type(AuthType::RequestBody)
    }
}

/// One run of the authorization endpoint, as a browser would do it.
pub struct Authorization {
    /// Where the browser ended: the app's redirect URI with `code`/`error` and `state`.
    pub redirected_to: String,
    pub code: Option<String>,
    pub state_matches: bool,
    pub verifier: oauth2::PkceCodeVerifier,
}

/// How the user answers the approval page.
pub struct Decision<'a> {
    pub user: &'a UserLogin,
    pub approve: bool,
    /// Fill in the patient field (a practitioner's choice) if the page has one.
    pub choose_patient: bool,
}

fn hidden(html: &str, name: &str) -> Option<String> {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker)? + marker.len();
    let end = html[start..].find('"')?;
    Some(html[start..start + end].to_owned())
}

fn action(html: &str) -> Option<String> {
    let start = html.find("action=\"")? + 8;
    let end = html[start..].find('"')?;
    Some(html[start..start + end].to_owned())
}

pub async fn authorize(
    d: &Discovered,
    fx: &SmartFixtures,
    scope: &str,
    extra: &[(&str, &str)],
    decision: &Decision<'_>,
) -> Result<Authorization, String> {
    let client = d.client(&fx.app_client_id, &fx.app_redirect_uri);
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let mut request = client
        .authorize_url(CsrfToken::new_random)
        .set_pkce_challenge(challenge)
        .add_extra_param("aud", d.base.clone());
    for s in scope.split_whitespace() {
        request = request.add_scope(Scope::new(s.to_owned()));
    }
    for (k, v) in extra {
        request = request.add_extra_param(*k, *v);
    }
    let (url, csrf) = request.url();
    // A browser keeps cookies: the server binds the sign-in to the one that started it.
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .cookie_store(true)
        .build()
        .map_err(|e| e.to_string())?;
    let login_page = browser
        .get(url.as_str())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !login_page.status().is_success() {
        return Err(format!("authorize answered {}", login_page.status()));
    }
    let html = login_page.text().await.map_err(|e| e.to_string())?;
    let root = root_of(&d.base);
    let session = hidden(&html, "session").ok_or("no session on the login page")?;
    let login_url = format!("{root}{}", action(&html).ok_or("no login form")?);
    let approval = browser
        .post(login_url)
        .form(&[
            ("session", session.as_str()),
            ("username", &decision.user.username),
            ("password", &decision.user.password),
        ])
        .send()
        .await
        .map_err(|e| e.to_string())?
        .text()
        .await
        .map_err(|e| e.to_string())?;
    let session = hidden(&approval, "session").ok_or("no approval page after signing in")?;
    let approve_url = format!("{root}{}", action(&approval).ok_or("no approval form")?);
    let mut fields = vec![
        ("session", session),
        (
            "decision",
            if decision.approve { "approve" } else { "deny" }.to_owned(),
        ),
    ];
    if decision.choose_patient && approval.contains("name=\"patient\"") {
        fields.push(("patient", decision.user.patient_id.clone()));
    }
    let back = browser
        .post(approve_url)
        .form(&fields)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let location = back
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| format!("the approval answered {} without a redirect", back.status()))?
        .to_owned();
    let query: HashMap<String, String> = location
        .split_once('?')
        .map(|(_, q)| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    Ok(Authorization {
        state_matches: query.get("state").map(String::as_str) == Some(csrf.secret().as_str()),
        code: query.get("code").cloned(),
        redirected_to: location,
        verifier,
    })
}

pub async fn exchange(
    d: &Discovered,
    fx: &SmartFixtures,
    code: &str,
    verifier: oauth2::PkceCodeVerifier,
) -> Result<SmartToken, TokenError> {
    d.client(&fx.app_client_id, &fx.app_redirect_uri)
        .exchange_code(AuthorizationCode::new(code.to_owned()))
        .set_pkce_verifier(verifier)
        .request_async(&http())
        .await
}

pub async fn refresh(
    d: &Discovered,
    fx: &SmartFixtures,
    token: &str,
    scope: Option<&str>,
) -> Result<SmartToken, TokenError> {
    let client = d.client(&fx.app_client_id, &fx.app_redirect_uri);
    let refresh_token = RefreshToken::new(token.to_owned());
    let mut request = client.exchange_refresh_token(&refresh_token);
    if let Some(scope) = scope {
        for s in scope.split_whitespace() {
            request = request.add_scope(Scope::new(s.to_owned()));
        }
    }
    request.request_async(&http()).await
}

/// Signs in the patient user for `scope` and exchanges the code.
pub async fn patient_tokens(
    d: &Discovered,
    fx: &SmartFixtures,
    scope: &str,
) -> Result<SmartToken, String> {
    let decision = Decision {
        user: &fx.patient_user,
        approve: true,
        choose_patient: false,
    };
    authorized(d, fx, scope, &[], &decision).await
}

pub async fn secret_tokens(
    d: &Discovered,
    client_id: &str,
    secret: &str,
    scope: &str,
    basic: bool,
) -> Result<SmartToken, TokenError> {
    let client: SmartClient = d
        .client(client_id, "http://unused.invalid/")
        .set_client_secret(ClientSecret::new(secret.to_owned()))
        .set_auth_type(if basic {
            AuthType::BasicAuth
        } else {
            AuthType::RequestBody
        });
    let mut request = client.exchange_client_credentials();
    for s in scope.split_whitespace() {
        request = request.add_scope(Scope::new(s.to_owned()));
    }
    request.request_async(&http()).await
}

pub async fn assertion_tokens(
    d: &Discovered,
    key: &AsymmetricClient,
    assertion: Option<String>,
) -> (Result<SmartToken, TokenError>, String) {
    let assertion = assertion.unwrap_or_else(|| key.assertion(&d.token));
    let result = d
        .client(&key.client_id, "http://unused.invalid/")
        .exchange_client_credentials()
        .add_scope(Scope::new("system/*.rs".into()))
        .add_extra_param(
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        )
        .add_extra_param("client_assertion", assertion.clone())
        .request_async(&http())
        .await;
    (result, assertion)
}

/// Authorizes (as `decision` says) and exchanges the code: the whole user flow.
pub async fn authorized(
    d: &Discovered,
    fx: &SmartFixtures,
    scope: &str,
    extra: &[(&str, &str)],
    decision: &Decision<'_>,
) -> Result<SmartToken, String> {
    let auth = authorize(d, fx, scope, extra, decision).await?;
    let code = auth
        .code
        .ok_or_else(|| format!("no code: {}", auth.redirected_to))?;
    exchange(d, fx, &code, auth.verifier)
        .await
        .map_err(|e| oauth_code(&e))
}
