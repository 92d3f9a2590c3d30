//! SMART App Launch 2.0 through public clients only: discovery, the authorization code flow
//! with PKCE through the server's own HTML login (forms posted as a browser would), refresh
//! with rotation, client_credentials with a secret and with `private_key_jwt` (ES384, RS384),
//! EHR launch, a practitioner's patient choice, introspection, revocation, dynamic
//! registration, and `patient/` scopes confined to their patient. Every endpoint is found
//! through `.well-known/smart-configuration`, as an app would.

mod flow;
mod search;

pub use flow::*;

use oauth2::TokenResponse;
use serde_json::{Value, json};

use super::SuiteContext;
use crate::client::Client as FhirClient;
use crate::report::Report;

const SUITE: &str = "smart";

/// Whether `token` reads `path` (200).
async fn reads(ctx: &SuiteContext, token: &str, path: &str) -> bool {
    with_token(ctx, token).get(path).send().await.status == 200
}

/// Whether a token request succeeded and its access token reads `path`.
async fn granted_reads(
    ctx: &SuiteContext,
    result: &Result<SmartToken, impl std::fmt::Debug>,
    path: &str,
) -> bool {
    match result {
        Ok(tokens) => reads(ctx, tokens.access_token().secret(), path).await,
        Err(_) => false,
    }
}

pub(super) fn with_token(ctx: &SuiteContext, token: &str) -> FhirClient {
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
    let granular = patient_tokens(
        &d,
        fx,
        "launch/patient patient/Observation.rs?category=laboratory",
    )
    .await;
    match &granular {
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
            e.clone(),
        ),
    }
    search::patient_scoped_search(
        ctx,
        fx,
        tokens.access_token().secret(),
        granular
            .as_ref()
            .ok()
            .map(|t| t.access_token().secret().as_str()),
        &observations,
        report,
    )
    .await;

    // Refresh with rotation; a rotated token presented again revokes the family.
    let first_refresh = refresh_secret(&tokens);
    match refresh(&d, fx, first_refresh, None).await {
        Ok(rotated) => {
            let second_refresh = refresh_secret(&rotated);
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
            let replay = refresh(&d, fx, first_refresh, None).await;
            report.check(
                SUITE,
                "reusing a rotated refresh token is invalid_grant",
                replay
                    .as_ref()
                    .is_err_and(|e| oauth_code(e) == "invalid_grant"),
                String::new(),
            );
            let family = refresh(&d, fx, second_refresh, None).await;
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
                refresh_secret(&fresh),
                Some("patient/Patient.rs offline_access"),
            )
            .await;
            report.check(
                SUITE,
                "a refresh may narrow the scopes",
                grants_scope(&narrowed, "patient/Patient.rs"),
                failure_code(&narrowed),
            );
            // Narrowing one access token does not narrow the authorization (RFC 6749 §6).
            if let Ok(t) = &narrowed {
                let restored = refresh(&d, fx, refresh_secret(t), None).await;
                report.check(
                    SUITE,
                    "the refresh token after a narrowed refresh keeps the whole authorization",
                    grants_scope(&restored, "patient/*.rs"),
                    failure_code(&restored),
                );
            }
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
        let ok = granted_reads(ctx, &result, &format!("Patient/{}", fx.other_patient_id)).await;
        report.check(SUITE, name, ok, failure_code(&result));
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
        let ok = granted_reads(ctx, &result, &format!("Patient/{}", fx.other_patient_id)).await;
        report.check(
            SUITE,
            format!(
                "client_credentials with private_key_jwt ({:?})",
                key.algorithm
            ),
            ok,
            failure_code(&result),
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
        let long_lived = key.assertion_for(&d.token, 600);
        let (refused, _) = assertion_tokens(&d, key, Some(long_lived)).await;
        report.check(
            SUITE,
            format!(
                "a client assertion expiring in more than 5 minutes ({:?}) is invalid_client",
                key.algorithm
            ),
            refused.is_err_and(|e| oauth_code(&e) == "invalid_client"),
            String::new(),
        );
    }

    // SMART v1 scopes work end to end beside v2: `.read` reads, and reaches nothing else.
    let v1 = secret_tokens(
        &d,
        &fx.secret_client_id,
        &fx.secret,
        "system/Patient.read",
        true,
    )
    .await;
    let v1_reads = granted_reads(ctx, &v1, &format!("Patient/{}", fx.other_patient_id)).await;
    let v1_token = v1
        .as_ref()
        .map(|t| t.access_token().secret().clone())
        .unwrap_or_default();
    let v1_write = with_token(ctx, &v1_token)
        .post_json("Patient", &super::patient("V1"))
        .send()
        .await;
    let v1_other_type = with_token(ctx, &v1_token)
        .get("Observation/_history")
        .send()
        .await;
    report.check(
        SUITE,
        "a v1 scope (system/Patient.read) reads Patients and is 403 for writes and other types",
        v1_reads && v1_write.status == 403 && v1_other_type.status == 403,
        format!(
            "{}; write {}; other type {}",
            failure_code(&v1),
            v1_write.status.as_u16(),
            v1_other_type.status.as_u16()
        ),
    );

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
            let result = authorized(
                &d,
                fx,
                "launch openid fhirUser patient/*.rs",
                &[("launch", launch_id.as_str())],
                &decision,
            )
            .await;
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
    let picked = authorized(
        &d,
        fx,
        "launch/patient openid fhirUser patient/*.rs",
        &[],
        &decision,
    )
    .await;
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
    let challenge = anonymous
        .as_ref()
        .ok()
        .and_then(|r| r.headers().get("www-authenticate"))
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    report.check(
        SUITE,
        "registration without the admin token is refused (401, a Bearer challenge)",
        anonymous.is_ok_and(|r| r.status() == 401) && challenge.starts_with("Bearer"),
        challenge,
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
            // Never the body: it carries the client's secret.
            format!("client_id {id:?}: {}", failure_code(&works)),
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
