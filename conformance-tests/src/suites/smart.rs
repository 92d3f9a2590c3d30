//! SMART App Launch 2.0 through public clients only: discovery, the authorization code flow
//! with PKCE through the server's own HTML login (forms posted as a browser would), refresh
//! with rotation, client_credentials with a secret and with `private_key_jwt` (ES384, RS384),
//! EHR launch, a practitioner's patient choice, introspection, revocation, dynamic
//! registration, and `patient/` scopes confined to their patient. Every endpoint is found
//! through `.well-known/smart-configuration`, as an app would.

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
use serde_json::{Value, json};

use super::SuiteContext;
use crate::client::Client as FhirClient;
use crate::keys::{AsymmetricClient, TestIssuer};
use crate::report::Report;

const SUITE: &str = "smart";

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

pub fn oauth_code(error: &TokenError) -> String {
    match error {
        RequestTokenError::ServerResponse(response) => response.error().as_ref().to_owned(),
        other => format!("{other:?}").chars().take(200).collect(),
    }
}

fn root_of(base: &str) -> String {
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
    let browser = http();
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
    let auth = authorize(d, fx, scope, &[], &decision).await?;
    let code = auth
        .code
        .ok_or_else(|| format!("no code: {}", auth.redirected_to))?;
    exchange(d, fx, &code, auth.verifier)
        .await
        .map_err(|e| oauth_code(&e))
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

fn with_token(ctx: &SuiteContext, token: &str) -> FhirClient {
    FhirClient::new(&ctx.client.base, Some(token.to_owned()))
}

/// Patients (and one Observation each) the flows read; made with the runner's own token.
async fn seed(ctx: &SuiteContext, fx: &SmartFixtures) -> Vec<String> {
    let mut observations = Vec::new();
    for id in [
        &fx.patient_user.patient_id,
        &fx.practitioner.patient_id,
        &fx.other_patient_id,
    ] {
        let patient = json!({"resourceType": "Patient", "id": id, "name": [{"family": format!("Smart-{id}")}]});
        ctx.client
            .put_json(&format!("Patient/{id}"), &patient)
            .send()
            .await;
        let observation = json!({"resourceType": "Observation", "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}],
            "code": {"text": "smart"}, "subject": {"reference": format!("Patient/{id}")}});
        let created = ctx
            .client
            .post_json("Observation", &observation)
            .send()
            .await;
        observations.push(
            created
                .json()
                .and_then(|v| v["id"].as_str().map(str::to_owned))
                .unwrap_or_default(),
        );
    }
    // One vital-signs Observation of the patient user, outside a laboratory-only grant.
    let vitals = json!({"resourceType": "Observation", "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
        "code": {"text": "smart vitals"}, "subject": {"reference": format!("Patient/{}", fx.patient_user.patient_id)}});
    let created = ctx.client.post_json("Observation", &vitals).send().await;
    observations.push(
        created
            .json()
            .and_then(|v| v["id"].as_str().map(str::to_owned))
            .unwrap_or_default(),
    );
    observations
}

pub async fn run(ctx: &SuiteContext, fx: &SmartFixtures, report: &mut Report) {
    let base = ctx.client.base.clone();
    let d = match discover(&base).await {
        Ok(d) => d,
        Err(e) => {
            report.check(SUITE, "discovery", false, e);
            return;
        }
    };
    let observations = seed(ctx, fx).await;

    // Discovery and the CapabilityStatement.
    let root = root_of(&base);
    let root_reply = http()
        .get(format!("{root}/.well-known/smart-configuration"))
        .send()
        .await;
    let root_ok = match root_reply {
        Ok(r) if r.status().is_success() => r
            .json::<Value>()
            .await
            .is_ok_and(|v| v["token_endpoint"] == d.config["token_endpoint"]),
        _ => false,
    };
    report.check(
        SUITE,
        "discovery at [base]/.well-known and /.well-known agree",
        root_ok,
        String::new(),
    );
    let capabilities: Vec<&str> = d.config["capabilities"]
        .as_array()
        .map(|c| c.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let expected = [
        "launch-ehr",
        "launch-standalone",
        "client-public",
        "client-confidential-symmetric",
        "client-confidential-asymmetric",
        "context-ehr-patient",
        "context-standalone-patient",
        "sso-openid-connect",
        "permission-offline",
        "permission-patient",
        "permission-user",
        "permission-v1",
        "permission-v2",
        "authorize-post",
    ];
    let missing: Vec<&&str> = expected
        .iter()
        .filter(|c| !capabilities.contains(c))
        .collect();
    report.check(
        SUITE,
        "discovery lists the SMART capabilities implemented",
        missing.is_empty(),
        format!("missing {missing:?}"),
    );
    let endpoints_present = [
        "issuer",
        "jwks_uri",
        "authorization_endpoint",
        "token_endpoint",
        "registration_endpoint",
        "introspection_endpoint",
        "revocation_endpoint",
    ]
    .iter()
    .all(|k| d.config[k].is_string());
    let s256 = d.config["code_challenge_methods_supported"] == json!(["S256"]);
    report.check(
        SUITE,
        "discovery names every endpoint and only S256 for PKCE",
        endpoints_present && s256,
        String::new(),
    );
    let metadata = FhirClient::new(&base, None).get("metadata").send().await;
    let statement = metadata.json().unwrap_or_default();
    let security = &statement["rest"][0]["security"];
    let smart_service = security["service"][0]["coding"][0]["code"] == "SMART-on-FHIR";
    let oauth_uris = security["extension"][0]["url"]
        == "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris";
    report.check(
        SUITE,
        "metadata is public and carries the SMART security extension",
        metadata.status == 200 && smart_service && oauth_uris,
        metadata.summary(),
    );
    let anonymous = FhirClient::new(&base, None)
        .get(&format!("Patient/{}", fx.patient_user.patient_id))
        .send()
        .await;
    report.check(
        SUITE,
        "a request without a token is 401 with WWW-Authenticate: Bearer",
        anonymous.status == 401
            && anonymous
                .header("www-authenticate")
                .is_some_and(|h| h.starts_with("Bearer"))
            && anonymous.is_outcome(),
        anonymous.summary(),
    );

    // Standalone launch of a patient.
    let scope = "launch/patient openid fhirUser offline_access patient/*.rs";
    let decision = Decision {
        user: &fx.patient_user,
        approve: true,
        choose_patient: false,
    };
    let tokens = match authorize(&d, fx, scope, &[], &decision).await {
        Ok(auth) => {
            report.check(
                SUITE,
                "authorize echoes state",
                auth.state_matches,
                auth.redirected_to.clone(),
            );
            match auth.code {
                Some(code) => exchange(&d, fx, &code, auth.verifier)
                    .await
                    .map_err(|e| oauth_code(&e)),
                None => Err(auth.redirected_to),
            }
        }
        Err(e) => Err(e),
    };
    let tokens = match tokens {
        Ok(t) => t,
        Err(e) => {
            report.check(
                SUITE,
                "standalone patient launch (code + PKCE through the login page)",
                false,
                e,
            );
            return;
        }
    };
    let extra = tokens.extra_fields();
    report.check(
        SUITE,
        "standalone patient launch gives the patient's context, a refresh token and an id_token",
        extra.patient.as_deref() == Some(fx.patient_user.patient_id.as_str())
            && tokens.refresh_token().is_some()
            && extra.id_token.is_some(),
        format!("patient {:?}", extra.patient),
    );
    let id_token_ok = match &extra.id_token {
        Some(id_token) => {
            verify_id_token(
                &d,
                id_token,
                &fx.app_client_id,
                &format!("Patient/{}", fx.patient_user.patient_id),
            )
            .await
        }
        None => Err("no id_token".into()),
    };
    report.check(
        SUITE,
        "the id_token verifies against the JWKS and names the fhirUser",
        id_token_ok.is_ok(),
        id_token_ok.err().unwrap_or_default(),
    );

    let patient_client = with_token(ctx, tokens.access_token().secret());
    let own = patient_client
        .get(&format!("Patient/{}", fx.patient_user.patient_id))
        .send()
        .await;
    report.check(
        SUITE,
        "a patient token reads its own patient",
        own.status == 200,
        own.summary(),
    );
    let own_observation = patient_client
        .get(&format!("Observation/{}", observations[0]))
        .send()
        .await;
    report.check(
        SUITE,
        "a patient token reads its own patient's Observation",
        own_observation.status == 200,
        own_observation.summary(),
    );
    let other = patient_client
        .get(&format!("Patient/{}", fx.other_patient_id))
        .send()
        .await;
    report.check(
        SUITE,
        "a patient token reading another patient is 403",
        other.status == 403 && other.is_outcome(),
        other.summary(),
    );
    let other_observation = patient_client
        .get(&format!("Observation/{}", observations[2]))
        .send()
        .await;
    report.check(
        SUITE,
        "a patient token reading another patient's Observation is 403",
        other_observation.status == 403,
        other_observation.summary(),
    );
    let write = patient_client.post_json("Observation", &json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": format!("Patient/{}", fx.patient_user.patient_id)}})).send().await;
    report.check(
        SUITE,
        "patient/*.rs does not allow a create (403)",
        write.status == 403 && write.is_outcome(),
        write.summary(),
    );
    let listing = patient_client
        .get("Observation/_history?_count=1000")
        .send()
        .await;
    let listed: Vec<String> = listing.json().unwrap_or_default()["entry"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|e| {
            e["resource"]["subject"]["reference"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    report.check(
        SUITE,
        "a patient token's history listing is narrowed to its compartment",
        listing.status == 200
            && !listed.is_empty()
            && listed
                .iter()
                .all(|r| *r == format!("Patient/{}", fx.patient_user.patient_id)),
        format!("{} entries", listed.len()),
    );

    // A granular v2 scope: only the laboratory Observations of the patient.
    match patient_tokens(
        &d,
        fx,
        "launch/patient patient/Observation.rs?category=laboratory",
    )
    .await
    {
        Ok(granular) => {
            let c = with_token(ctx, granular.access_token().secret());
            let lab = c
                .get(&format!("Observation/{}", observations[0]))
                .send()
                .await;
            let vitals = c
                .get(&format!("Observation/{}", observations[3]))
                .send()
                .await;
            report.check(
                SUITE,
                "a granular scope (?category=laboratory) reaches lab results and not vital signs",
                lab.status == 200 && vitals.status == 403,
                format!("lab {}, vitals {}", lab.status, vitals.status),
            );
        }
        Err(e) => report.check(
            SUITE,
            "a granular scope (?category=laboratory) reaches lab results and not vital signs",
            false,
            e,
        ),
    }

    // Refresh with rotation; a rotated token presented again revokes the family.
    let first_refresh = tokens
        .refresh_token()
        .map(|r| r.secret().clone())
        .unwrap_or_default();
    match refresh(&d, fx, &first_refresh, None).await {
        Ok(rotated) => {
            let second_refresh = rotated
                .refresh_token()
                .map(|r| r.secret().clone())
                .unwrap_or_default();
            report.check(
                SUITE,
                "refresh rotates the refresh token",
                !second_refresh.is_empty() && second_refresh != first_refresh,
                String::new(),
            );
            let works = with_token(ctx, rotated.access_token().secret())
                .get(&format!("Patient/{}", fx.patient_user.patient_id))
                .send()
                .await;
            report.check(
                SUITE,
                "the refreshed access token works",
                works.status == 200,
                works.summary(),
            );
            let replay = refresh(&d, fx, &first_refresh, None).await;
            report.check(
                SUITE,
                "reusing a rotated refresh token is invalid_grant",
                replay
                    .as_ref()
                    .is_err_and(|e| oauth_code(e) == "invalid_grant"),
                String::new(),
            );
            let family = refresh(&d, fx, &second_refresh, None).await;
            report.check(
                SUITE,
                "after a reuse, the whole family is revoked",
                family
                    .as_ref()
                    .is_err_and(|e| oauth_code(e) == "invalid_grant"),
                String::new(),
            );
            let revoked = with_token(ctx, rotated.access_token().secret())
                .get(&format!("Patient/{}", fx.patient_user.patient_id))
                .send()
                .await;
            report.check(
                SUITE,
                "after a reuse, the family's access tokens are refused (401)",
                revoked.status == 401,
                revoked.summary(),
            );
        }
        Err(e) => report.check(
            SUITE,
            "refresh rotates the refresh token",
            false,
            oauth_code(&e),
        ),
    }
    match patient_tokens(&d, fx, scope).await {
        Ok(fresh) => {
            let narrowed = refresh(
                &d,
                fx,
                fresh
                    .refresh_token()
                    .map(|r| r.secret().as_str())
                    .unwrap_or_default(),
                Some("patient/Patient.rs offline_access"),
            )
            .await;
            report.check(
                SUITE,
                "a refresh may narrow the scopes",
                narrowed.as_ref().is_ok_and(|t| {
                    t.scopes()
                        .is_some_and(|s| s.iter().any(|x| x.as_str() == "patient/Patient.rs"))
                }),
                narrowed.as_ref().err().map(oauth_code).unwrap_or_default(),
            );
        }
        Err(e) => report.check(SUITE, "a refresh may narrow the scopes", false, e),
    }

    // Backend services.
    for basic in [true, false] {
        let name = if basic {
            "client_credentials with client_secret_basic"
        } else {
            "client_credentials with client_secret_post"
        };
        let result =
            secret_tokens(&d, &fx.secret_client_id, &fx.secret, "system/*.rs", basic).await;
        let ok = match &result {
            Ok(t) => {
                with_token(ctx, t.access_token().secret())
                    .get(&format!("Patient/{}", fx.other_patient_id))
                    .send()
                    .await
                    .status
                    == 200
            }
            Err(_) => false,
        };
        report.check(
            SUITE,
            name,
            ok,
            result.err().map(|e| oauth_code(&e)).unwrap_or_default(),
        );
    }
    let raw = http()
        .post(&d.token)
        .basic_auth(&fx.secret_client_id, Some(&fx.secret))
        .form(&[
            ("grant_type", "client_credentials"),
            ("scope", "system/*.rs"),
        ])
        .send()
        .await;
    report.check(
        SUITE,
        "client_secret_basic sent without form-encoding (as curl does) is accepted too",
        raw.is_ok_and(|r| r.status() == 200),
        String::new(),
    );
    let wrong = secret_tokens(
        &d,
        &fx.secret_client_id,
        "not-the-secret",
        "system/*.rs",
        true,
    )
    .await;
    report.check(
        SUITE,
        "a wrong client secret is invalid_client",
        wrong.is_err_and(|e| oauth_code(&e) == "invalid_client"),
        String::new(),
    );
    for key in [&fx.es384, &fx.rs384] {
        let (result, assertion) = assertion_tokens(&d, key, None).await;
        let ok = match &result {
            Ok(t) => {
                with_token(ctx, t.access_token().secret())
                    .get(&format!("Patient/{}", fx.other_patient_id))
                    .send()
                    .await
                    .status
                    == 200
            }
            Err(_) => false,
        };
        report.check(
            SUITE,
            format!(
                "client_credentials with private_key_jwt ({:?})",
                key.algorithm
            ),
            ok,
            result.err().map(|e| oauth_code(&e)).unwrap_or_default(),
        );
        let (replayed, _) = assertion_tokens(&d, key, Some(assertion)).await;
        report.check(
            SUITE,
            format!(
                "a replayed client assertion ({:?}) is invalid_client",
                key.algorithm
            ),
            replayed.is_err_and(|e| oauth_code(&e) == "invalid_client"),
            String::new(),
        );
    }

    // EHR launch: the EHR binds a patient, the app brings `launch`.
    let launch = ctx
        .client
        .request(reqwest::Method::POST, &format!("{root}/auth/launch"))
        .header("content-type", "application/json")
        .body(
            json!({"patient": fx.practitioner.patient_id})
                .to_string()
                .into_bytes(),
        )
        .send()
        .await;
    let launch_id = launch
        .json()
        .and_then(|v| v["launch"].as_str().map(str::to_owned));
    match launch_id {
        Some(launch_id) => {
            let decision = Decision {
                user: &fx.practitioner,
                approve: true,
                choose_patient: false,
            };
            let result = match authorize(
                &d,
                fx,
                "launch openid fhirUser patient/*.rs",
                &[("launch", launch_id.as_str())],
                &decision,
            )
            .await
            {
                Ok(auth) => match auth.code {
                    Some(code) => exchange(&d, fx, &code, auth.verifier)
                        .await
                        .map_err(|e| oauth_code(&e)),
                    None => Err(auth.redirected_to),
                },
                Err(e) => Err(e),
            };
            report.check(
                SUITE,
                "EHR launch carries the launched patient into the token",
                result.as_ref().is_ok_and(|t| {
                    t.extra_fields().patient.as_deref() == Some(fx.practitioner.patient_id.as_str())
                }),
                result.err().unwrap_or_default(),
            );
        }
        None => report.check(
            SUITE,
            "EHR launch carries the launched patient into the token",
            false,
            launch.summary(),
        ),
    }

    // A practitioner's standalone launch: they pick the patient.
    let decision = Decision {
        user: &fx.practitioner,
        approve: true,
        choose_patient: true,
    };
    let picked = match authorize(
        &d,
        fx,
        "launch/patient openid fhirUser patient/*.rs",
        &[],
        &decision,
    )
    .await
    {
        Ok(auth) => match auth.code {
            Some(code) => exchange(&d, fx, &code, auth.verifier)
                .await
                .map_err(|e| oauth_code(&e)),
            None => Err(auth.redirected_to),
        },
        Err(e) => Err(e),
    };
    report.check(
        SUITE,
        "a practitioner's standalone launch uses the patient they picked",
        picked.as_ref().is_ok_and(|t| {
            t.extra_fields().patient.as_deref() == Some(fx.practitioner.patient_id.as_str())
        }),
        picked.err().unwrap_or_default(),
    );
    let decision = Decision {
        user: &fx.patient_user,
        approve: false,
        choose_patient: false,
    };
    let denied = authorize(&d, fx, scope, &[], &decision).await;
    report.check(
        SUITE,
        "declining sends access_denied (with state) back to the app",
        denied.as_ref().is_ok_and(|a| {
            a.redirected_to.contains("error=access_denied") && a.state_matches && a.code.is_none()
        }),
        denied.map(|a| a.redirected_to).unwrap_or_else(|e| e),
    );

    // Introspection and revocation.
    if let Ok(backend) =
        secret_tokens(&d, &fx.secret_client_id, &fx.secret, "system/*.rs", true).await
    {
        let token = backend.access_token().secret().clone();
        let introspect = |token: String| {
            let (url, id, secret) = (
                d.introspect.clone(),
                fx.secret_client_id.clone(),
                fx.secret.clone(),
            );
            async move {
                http()
                    .post(url)
                    .basic_auth(id, Some(secret))
                    .form(&[("token", token)])
                    .send()
                    .await
                    .ok()?
                    .json::<Value>()
                    .await
                    .ok()
            }
        };
        let live = introspect(token.clone()).await.unwrap_or_default();
        report.check(
            SUITE,
            "introspection says a live token is active, with its scope",
            live["active"] == true && live["scope"] == "system/*.rs",
            live.to_string(),
        );
        let revoked = http()
            .post(&d.revoke)
            .basic_auth(&fx.secret_client_id, Some(&fx.secret))
            .form(&[("token", token.as_str())])
            .send()
            .await;
        report.check(
            SUITE,
            "revocation answers 200",
            revoked.is_ok_and(|r| r.status() == 200),
            String::new(),
        );
        let after = introspect(token.clone()).await.unwrap_or_default();
        report.check(
            SUITE,
            "a revoked token introspects inactive",
            after["active"] == false,
            after.to_string(),
        );
        let refused = with_token(ctx, &token)
            .get(&format!("Patient/{}", fx.other_patient_id))
            .send()
            .await;
        report.check(
            SUITE,
            "a revoked token is refused (401)",
            refused.status == 401,
            refused.summary(),
        );
    }

    // Dynamic registration (RFC 7591).
    let metadata = json!({"client_name": "registered by the runner", "token_endpoint_auth_method": "client_secret_basic", "scope": "system/Patient.rs", "grant_types": ["client_credentials"]});
    let anonymous = http().post(&d.register).json(&metadata).send().await;
    report.check(
        SUITE,
        "registration without the admin token is refused (401)",
        anonymous.is_ok_and(|r| r.status() == 401),
        String::new(),
    );
    if let Some(admin) = &fx.admin_token {
        let registered = http()
            .post(&d.register)
            .bearer_auth(admin)
            .json(&metadata)
            .send()
            .await;
        let body: Value = match registered {
            Ok(r) if r.status() == 201 => r.json().await.unwrap_or_default(),
            _ => Value::Null,
        };
        let id = body["client_id"].as_str().unwrap_or_default();
        let secret = body["client_secret"].as_str().unwrap_or_default();
        let works = secret_tokens(&d, id, secret, "system/Patient.rs", true).await;
        report.check(
            SUITE,
            "a dynamically registered client gets tokens",
            works.is_ok() && !id.is_empty(),
            body.to_string(),
        );
    }
}

/// Checks an id_token's signature against the server's JWKS and its claims.
async fn verify_id_token(
    d: &Discovered,
    id_token: &str,
    client_id: &str,
    fhir_user: &str,
) -> Result<(), String> {
    let jwks: jsonwebtoken::jwk::JwkSet = http()
        .get(&d.jwks)
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    let header = jsonwebtoken::decode_header(id_token).map_err(|e| e.to_string())?;
    let jwk = jwks
        .find(header.kid.as_deref().unwrap_or_default())
        .ok_or("the id_token's kid is not in the JWKS")?;
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    let mut validation = jsonwebtoken::Validation::new(header.alg);
    validation.set_audience(&[client_id]);
    validation.set_issuer(&[d.config["issuer"].as_str().unwrap_or_default()]);
    let claims = jsonwebtoken::decode::<Value>(id_token, &key, &validation)
        .map_err(|e| e.to_string())?
        .claims;
    if claims["fhirUser"] != fhir_user {
        return Err(format!("fhirUser is {}", claims["fhirUser"]));
    }
    Ok(())
}
