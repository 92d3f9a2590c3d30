//! The attack matrix: tokens and requests a careless server would accept, each of which must
//! be refused with the right status. Forged tokens a black box cannot sign with the server's
//! key are signed by the runner's own issuer, which the server under test trusts: a validly
//! signed token from a trusted issuer is accepted (the positive control) unless a claim makes
//! it unacceptable, which is exactly what each case checks.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use oauth2::TokenResponse;
use serde_json::{Value, json};

use super::SuiteContext;
use super::smart::{
    Decision, SmartFixtures, authorize, authorized, discover, exchange, failure_code, http,
    oauth_code, patient_tokens, refresh, refresh_secret, status_and_location, with_token,
};
use crate::keys::now;
use crate::report::Report;

const SUITE: &str = "attacks";

/// A well-formed S256 code challenge (RFC 7636, appendix B), for authorization requests that
/// are refused or abandoned before any code exchange.
const SAMPLE_CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

/// The payload of a JWT, decoded without any check (to forge from a real one).
fn payload(token: &str) -> Value {
    token
        .split('.')
        .nth(1)
        .and_then(|p| URL_SAFE_NO_PAD.decode(p).ok())
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

pub async fn run(ctx: &SuiteContext, fx: &SmartFixtures, report: &mut Report) {
    let base = ctx.client.base.clone();
    let Ok(d) = discover(&base).await else {
        report.check(SUITE, "discovery", false, String::new());
        return;
    };
    let target = format!("Patient/{}", fx.patient_user.patient_id);
    let refused = async |token: &str| with_token(ctx, token).get(&target).send().await;
    let check_401 = async |name: &str, token: String, report: &mut Report| {
        let reply = refused(&token).await;
        let challenge = reply.header("www-authenticate").unwrap_or_default();
        report.check(
            SUITE,
            name,
            reply.status == 401 && challenge.contains("invalid_token") && reply.is_outcome(),
            reply.summary(),
        );
    };

    // A real token of the server, to forge from.
    let real = match super::smart::secret_tokens(
        &d,
        &fx.secret_client_id,
        &fx.secret,
        "system/*.rs",
        true,
    )
    .await
    {
        Ok(t) => t.access_token().secret().clone(),
        Err(e) => {
            report.check(SUITE, "set-up: a real token", false, oauth_code(&e));
            return;
        }
    };
    let claims = payload(&real);
    let mut elevated = claims.clone();
    elevated["scope"] = "system/*.cruds".into();

    check_401(
        "alg: none",
        format!(
            "{}.{}.",
            b64(&json!({"alg": "none", "typ": "at+jwt"})),
            b64(&claims)
        ),
        report,
    )
    .await;
    let jwks: Value = match http().get(&d.jwks).send().await {
        Ok(r) => r.json().await.unwrap_or_default(),
        Err(_) => Value::Null,
    };
    let public = jwks["keys"][0].clone();
    // Key confusion: an HMAC "secret" that is the server's public key, in each form a careless
    // verifier might feed to HMAC (the JWK as published, the SPKI DER, the PEM).
    let forms = public_key_forms(&public);
    // Control: the key rebuilt from the JWKS (whose DER and PEM the cases below use) is the
    // one that really verifies the server's tokens.
    report.check(
        SUITE,
        "control: the public key rebuilt from the JWKS verifies the server's own token",
        jwk_public_key(&public).is_some_and(|key| verifies_es256(&key, &real)),
        String::new(),
    );
    for (form, secret) in forms {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = public["kid"].as_str().map(str::to_owned);
        header.typ = Some("at+jwt".into());
        let hs256 = jsonwebtoken::encode(
            &header,
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(&secret),
        )
        .unwrap_or_default();
        check_401(
            &format!("HS256 signed with the server's public key ({form})"),
            hs256,
            report,
        )
        .await;
    }
    let mut parts: Vec<&str> = real.split('.').collect();
    let forged_payload = b64(&elevated);
    parts[1] = &forged_payload;
    check_401(
        "tampered payload (scope raised, signature kept)",
        parts.join("."),
        report,
    )
    .await;

    match &fx.issuer {
        Some(issuer) => {
            let now = now();
            // The patient themself (by fhirUser), so the positive control needs no consent grant.
            let good = json!({"sub": "attacker", "aud": base, "exp": now + 300, "iat": now, "nbf": now - 5, "scope": "system/*.rs", "client_id": "runner", "fhirUser": target});
            let accepted = refused(&issuer.mint(&good)).await;
            report.check(
                SUITE,
                "positive control: a valid token of the trusted test issuer is accepted",
                accepted.status == 200,
                accepted.summary(),
            );
            let with = |changes: Value| {
                let mut c = good.clone();
                for (k, v) in changes.as_object().cloned().unwrap_or_default() {
                    c[k] = v;
                }
                c
            };
            check_401(
                "expired",
                issuer.mint(&with(
                    json!({"exp": now - 600, "iat": now - 1200, "nbf": now - 1200}),
                )),
                report,
            )
            .await;
            check_401(
                "not yet valid (nbf in the future)",
                issuer.mint(&with(json!({"nbf": now + 600}))),
                report,
            )
            .await;
            check_401(
                "wrong aud",
                issuer.mint(&with(json!({"aud": format!("{base}/elsewhere")}))),
                report,
            )
            .await;
            check_401(
                "a token for another server's audience",
                issuer.mint(&with(json!({"aud": "https://other-server.example/fhir"}))),
                report,
            )
            .await;
            check_401(
                "wrong iss (an issuer nobody trusts)",
                issuer.mint(&with(json!({"iss": "https://untrusted.example"}))),
                report,
            )
            .await;
            check_401("unknown kid", issuer.mint_with_unknown_key(&good), report).await;
            // Not an attack but its twin: the issuer rotates to a new key, which the server has
            // not seen; it must fetch the JWKS again rather than refuse for good. Servers
            // rightly limit how often an unknown kid makes them refetch, hence the wait.
            issuer.rotate();
            tokio::time::sleep(std::time::Duration::from_millis(5_500)).await;
            let rotated = refused(&issuer.mint(&good)).await;
            report.check(
                SUITE,
                "a trusted issuer's rotated key is picked up (JWKS fetched again on an unknown kid)",
                rotated.status == 200,
                rotated.summary(),
            );
        }
        None => report.check(
            SUITE,
            "a trusted test issuer is configured",
            false,
            "the server must trust the runner's issuer for these cases",
        ),
    }

    // The authorization server.
    let scope = "launch/patient openid fhirUser offline_access patient/*.rs";
    match patient_tokens(&d, fx, scope).await {
        Ok(tokens) => {
            let escalated = refresh(
                &d,
                fx,
                refresh_secret(&tokens),
                Some("patient/*.rs user/*.cruds"),
            )
            .await;
            report.check(
                SUITE,
                "scope escalation on refresh is invalid_scope",
                escalated.is_err_and(|e| oauth_code(&e) == "invalid_scope"),
                String::new(),
            );
            // The refusal spends nothing: the same refresh token still works once.
            let retried = refresh(&d, fx, refresh_secret(&tokens), None).await;
            report.check(
                SUITE,
                "a refused escalation leaves the refresh token usable",
                retried.is_ok(),
                failure_code(&retried),
            );
        }
        Err(e) => report.check(
            SUITE,
            "scope escalation on refresh is invalid_scope",
            false,
            e,
        ),
    }
    let decision = Decision {
        user: &fx.patient_user,
        approve: true,
        choose_patient: false,
    };
    if let Ok(auth) = authorize(&d, fx, scope, &[], &decision).await
        && let Some(code) = auth.code
    {
        let verifier = oauth2::PkceCodeVerifier::new(auth.verifier.secret().clone());
        let first = exchange(&d, fx, &code, auth.verifier).await;
        let again = exchange(&d, fx, &code, verifier).await;
        report.check(
            SUITE,
            "authorization code reuse is invalid_grant",
            first.is_ok()
                && again
                    .as_ref()
                    .is_err_and(|e| oauth_code(e) == "invalid_grant"),
            String::new(),
        );
        if let Ok(first) = first {
            let after = refused(first.access_token().secret()).await;
            report.check(
                SUITE,
                "a reused code revokes the tokens it produced",
                after.status == 401,
                after.summary(),
            );
        }
    }
    if let Ok(auth) = authorize(&d, fx, scope, &[], &decision).await
        && let Some(code) = auth.code
    {
        let wrong = oauth2::PkceCodeVerifier::new(
            "not-the-verifier-that-made-the-challenge-0123456789".into(),
        );
        let result = exchange(&d, fx, &code, wrong).await;
        report.check(
            SUITE,
            "a PKCE verifier mismatch is invalid_grant",
            result.is_err_and(|e| oauth_code(&e) == "invalid_grant"),
            String::new(),
        );
    }
    if let Ok(auth) = authorize(&d, fx, scope, &[], &decision).await
        && let Some(code) = auth.code
    {
        let reply = http()
            .post(&d.token)
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", code.as_str()),
                ("client_id", fx.app_client_id.as_str()),
                ("redirect_uri", "https://app.example/another-callback"),
                ("code_verifier", auth.verifier.secret().as_str()),
            ])
            .send()
            .await;
        let error = match reply {
            Ok(r) if r.status() == 400 => r.json::<Value>().await.unwrap_or_default()["error"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            _ => String::new(),
        };
        report.check(
            SUITE,
            "a redirect_uri mismatch at the token endpoint is invalid_grant",
            error == "invalid_grant",
            error,
        );
    }
    let evil = format!(
        "{}?response_type=code&client_id={}&redirect_uri={}&scope=patient/*.rs&state=x&aud={}&code_challenge={SAMPLE_CHALLENGE}&code_challenge_method=S256",
        d.authorize, fx.app_client_id, "https%3A%2F%2Fevil.example%2Fcallback", base
    );
    let (status, location) = status_and_location(&http(), &evil).await;
    report.check(
        SUITE,
        "an unregistered redirect_uri is refused on a page, never redirected to (open redirect)",
        status == 400 && location.is_empty(),
        format!("{status} {location}"),
    );

    match patient_tokens(&d, fx, scope).await {
        Ok(tokens) => {
            let other = with_token(ctx, tokens.access_token().secret())
                .get(&format!("Patient/{}", fx.other_patient_id))
                .send()
                .await;
            report.check(
                SUITE,
                "a patient token reading another patient is 403",
                other.status == 403,
                other.summary(),
            );
        }
        Err(e) => report.check(
            SUITE,
            "a patient token reading another patient is 403",
            false,
            e,
        ),
    }

    review_cases(ctx, fx, &d, report).await;
}

/// Cases that pin down how a patient's authorization is confined (each found in a review).
async fn review_cases(
    ctx: &SuiteContext,
    fx: &SmartFixtures,
    d: &super::smart::Discovered,
    report: &mut Report,
) {
    let base = ctx.client.base.clone();
    let patient = &fx.patient_user.patient_id;
    let other = &fx.other_patient_id;

    // A patient cannot be granted user/ scopes, even through an app allowed them.
    match patient_tokens(d, fx, "launch/patient user/*.rs patient/*.rs").await {
        Ok(t) => {
            let scopes: Vec<String> = t
                .scopes()
                .map(|s| s.iter().map(|x| x.to_string()).collect())
                .unwrap_or_default();
            let read = with_token(ctx, t.access_token().secret())
                .get(&format!("Patient/{other}"))
                .send()
                .await;
            report.check(
                SUITE,
                "a patient signing in is never granted user/ scopes (no reading everyone)",
                !scopes.iter().any(|s| s.starts_with("user/")) && read.status == 403,
                format!("{scopes:?} {}", read.status),
            );
        }
        Err(e) => report.check(
            SUITE,
            "a patient signing in is never granted user/ scopes (no reading everyone)",
            false,
            e,
        ),
    }

    // patient/ write scopes write only into the patient's own record.
    match patient_tokens(d, fx, "launch/patient patient/*.cruds").await {
        Ok(t) => {
            let c = with_token(ctx, t.access_token().secret());
            let foreign = json!({"resourceType": "Observation", "status": "final", "code": {"text": "planted"},
                "subject": {"reference": format!("Patient/{other}")}, "performer": [{"reference": format!("Patient/{patient}")}]});
            let planted = c.post_json("Observation", &foreign).send().await;
            report.check(
                SUITE,
                "a patient token cannot write into another patient's record",
                planted.status == 403,
                planted.summary(),
            );
            let own = json!({"resourceType": "Observation", "status": "final", "code": {"text": "mine"}, "subject": {"reference": format!("Patient/{patient}")}});
            let created = c.post_json("Observation", &own).send().await;
            report.check(
                SUITE,
                "a patient token with c writes into its own record",
                created.status == 201,
                created.summary(),
            );
        }
        Err(e) => report.check(
            SUITE,
            "a patient token cannot write into another patient's record",
            false,
            e,
        ),
    }

    // Update-as-create needs c, not only u.
    match patient_tokens(d, fx, "launch/patient patient/Observation.ru").await {
        Ok(t) => {
            let id = format!("ru-{:08x}", rand::random::<u32>());
            let body = json!({"resourceType": "Observation", "id": id, "status": "final", "code": {"text": "x"}, "subject": {"reference": format!("Patient/{patient}")}});
            let put = with_token(ctx, t.access_token().secret())
                .put_json(&format!("Observation/{id}"), &body)
                .send()
                .await;
            report.check(
                SUITE,
                "update-as-create without c is 403",
                put.status == 403,
                put.summary(),
            );
        }
        Err(e) => report.check(SUITE, "update-as-create without c is 403", false, e),
    }

    // A query-restricted update scope judges the stored version, not the new body.
    let lab = json!({"resourceType": "Observation", "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}],
        "code": {"text": "lab"}, "subject": {"reference": format!("Patient/{patient}")}});
    let stored = ctx
        .client
        .post_json("Observation", &lab)
        .send()
        .await
        .json()
        .unwrap_or_default();
    let lab_id = stored["id"].as_str().unwrap_or_default().to_owned();
    match patient_tokens(
        d,
        fx,
        "launch/patient patient/Observation.ru?category=vital-signs",
    )
    .await
    {
        Ok(t) => {
            let mut disguised = stored.clone();
            disguised["category"] = json!([{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}]);
            let put = with_token(ctx, t.access_token().secret())
                .put_json(&format!("Observation/{lab_id}"), &disguised)
                .send()
                .await;
            report.check(
                SUITE,
                "a vital-signs-only scope cannot overwrite a lab result by relabelling it",
                put.status == 403,
                put.summary(),
            );
        }
        Err(e) => report.check(
            SUITE,
            "a vital-signs-only scope cannot overwrite a lab result by relabelling it",
            false,
            e,
        ),
    }

    // Launches: used once, by the app they name, never to widen a patient's own context.
    let root = base.trim_end_matches("/fhir").to_owned();
    let launch = |patient: String, client: Option<String>| {
        let (c, root) = (ctx.client.clone(), root.clone());
        async move {
            let body = json!({"patient": patient, "client_id": client});
            let reply = c
                .request(reqwest::Method::POST, &format!("{root}/auth/launch"))
                .header("content-type", "application/json")
                .body(body.to_string().into_bytes())
                .send()
                .await;
            reply
                .json()
                .and_then(|v| v["launch"].as_str().map(str::to_owned))
                .unwrap_or_default()
        }
    };
    let doctor = Decision {
        user: &fx.practitioner,
        approve: true,
        choose_patient: false,
    };
    let once = launch(fx.practitioner.patient_id.clone(), None).await;
    let first = authorized(
        d,
        fx,
        "launch patient/*.rs",
        &[("launch", once.as_str())],
        &doctor,
    )
    .await;
    let second = authorize(
        d,
        fx,
        "launch patient/*.rs",
        &[("launch", once.as_str())],
        &doctor,
    )
    .await;
    report.check(
        SUITE,
        "a launch is used once",
        first.is_ok() && second.is_err(),
        second.map(|a| a.redirected_to).unwrap_or_else(|e| e),
    );
    let bound = launch(
        fx.practitioner.patient_id.clone(),
        Some("some-other-app".into()),
    )
    .await;
    let elsewhere = authorize(
        d,
        fx,
        "launch patient/*.rs",
        &[("launch", bound.as_str())],
        &doctor,
    )
    .await;
    report.check(
        SUITE,
        "a launch bound to another app is refused",
        elsewhere.is_err(),
        String::new(),
    );
    let foreign = launch(other.clone(), None).await;
    let me = Decision {
        user: &fx.patient_user,
        approve: true,
        choose_patient: false,
    };
    let widened = authorized(
        d,
        fx,
        "launch patient/*.rs",
        &[("launch", foreign.as_str())],
        &me,
    )
    .await;
    report.check(
        SUITE,
        "a patient cannot use a launch for another patient",
        widened.is_err(),
        String::new(),
    );
    match patient_tokens(d, fx, "launch/patient patient/*.rs").await {
        Ok(t) => {
            let attempt = with_token(ctx, t.access_token().secret())
                .request(reqwest::Method::POST, &format!("{root}/auth/launch"))
                .header("content-type", "application/json")
                .body(json!({"patient": other}).to_string().into_bytes())
                .send()
                .await;
            report.check(
                SUITE,
                "a patient's app cannot create launches",
                attempt.status == 403,
                attempt.summary(),
            );
        }
        Err(e) => report.check(SUITE, "a patient's app cannot create launches", false, e),
    }

    // The sign-in is bound to the browser that started it.
    let client = super::smart::http();
    let url = format!(
        "{}?response_type=code&client_id={}&redirect_uri={}&scope=patient/*.rs&state=s&aud={}&code_challenge={SAMPLE_CHALLENGE}&code_challenge_method=S256",
        d.authorize, fx.app_client_id, "https%3A%2F%2Fapp.example%2Fcallback", base
    );
    let page = match client.get(&url).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    // The same request as a form post (SMART's authorize-post) reaches the same login page.
    let (query_start, query) = url.split_once('?').unwrap_or((&url, ""));
    let form: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let posted = match client.post(query_start).form(&form).send().await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    };
    report.check(
        SUITE,
        "the authorization request may be a form post (authorize-post)",
        posted.0 == 200 && posted.1.contains("name=\"session\""),
        format!("{}", posted.0),
    );
    // A challenge that cannot be an S256 digest is refused before any sign-in.
    let weak = url.replace(
        &format!("code_challenge={SAMPLE_CHALLENGE}"),
        "code_challenge=abc",
    );
    let weak_reply = status_and_location(&client, &weak).await;
    report.check(
        SUITE,
        "a code_challenge that is no S256 digest is invalid_request",
        weak_reply.1.contains("error=invalid_request") || weak_reply.0 == 400,
        format!("{} {}", weak_reply.0, weak_reply.1),
    );
    let marker = "name=\"session\" value=\"";
    let session = page
        .find(marker)
        .map(|at| &page[at + marker.len()..])
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_default()
        .to_owned();
    // Another browser (no cookie) posts the login with that session, as a forged form would.
    let forged = client
        .post(format!("{root}/auth/login"))
        .form(&[
            ("session", session.as_str()),
            ("username", fx.patient_user.username.as_str()),
            ("password", fx.patient_user.password.as_str()),
        ])
        .send()
        .await;
    let forged_ok = match forged {
        Ok(r) => {
            let status = r.status().as_u16();
            let text = r.text().await.unwrap_or_default();
            status == 400 && !text.contains("decision")
        }
        Err(_) => false,
    };
    report.check(
        SUITE,
        "a sign-in posted from another browser (no cookie) is refused",
        !session.is_empty() && forged_ok,
        String::new(),
    );

    // Introspection tells a client only about its own tokens.
    if let Ok(patient_token) = patient_tokens(d, fx, "launch/patient patient/*.rs").await {
        let seen = client
            .post(&d.introspect)
            .basic_auth(&fx.secret_client_id, Some(&fx.secret))
            .form(&[("token", patient_token.access_token().secret().as_str())])
            .send()
            .await;
        let body: Value = match seen {
            Ok(r) => r.json().await.unwrap_or_default(),
            Err(_) => Value::Null,
        };
        report.check(
            SUITE,
            "introspecting another client's token says inactive",
            body["active"] == false,
            body.to_string(),
        );
    }

    // Two presentations of one refresh token at once: at most one wins.
    if let Ok(t) = patient_tokens(d, fx, "launch/patient offline_access patient/*.rs").await {
        let token = refresh_secret(&t);
        let (a, b) = tokio::join!(refresh(d, fx, token, None), refresh(d, fx, token, None));
        report.check(
            SUITE,
            "concurrent use of one refresh token never yields two token chains",
            !(a.is_ok() && b.is_ok()),
            String::new(),
        );
    }
}

/// The P-256 key a published JWK describes.
fn jwk_public_key(jwk: &Value) -> Option<p256::PublicKey> {
    let coordinate = |name: &str| {
        URL_SAFE_NO_PAD
            .decode(jwk[name].as_str().unwrap_or_default())
            .ok()
            .filter(|c| c.len() == 32)
    };
    let point = p256::EncodedPoint::from_affine_coordinates(
        p256::FieldBytes::from_slice(&coordinate("x")?),
        p256::FieldBytes::from_slice(&coordinate("y")?),
        false,
    );
    p256::PublicKey::from_sec1_bytes(point.as_bytes()).ok()
}

/// Whether `token` carries a valid ES256 signature by `key`.
fn verifies_es256(key: &p256::PublicKey, token: &str) -> bool {
    use p256::ecdsa::signature::Verifier;
    let Some((signed, signature)) = token.rsplit_once('.') else {
        return false;
    };
    let Some(signature) = URL_SAFE_NO_PAD
        .decode(signature)
        .ok()
        .and_then(|s| p256::ecdsa::Signature::from_slice(&s).ok())
    else {
        return false;
    };
    p256::ecdsa::VerifyingKey::from(key)
        .verify(signed.as_bytes(), &signature)
        .is_ok()
}

/// A published P-256 JWK as the bytes of its usual encodings: the JWK's JSON, SPKI DER, PEM.
fn public_key_forms(jwk: &Value) -> Vec<(&'static str, Vec<u8>)> {
    use p256::pkcs8::EncodePublicKey;
    let mut forms = vec![("JWK", jwk.to_string().into_bytes())];
    let Some(key) = jwk_public_key(jwk) else {
        return forms;
    };
    if let Ok(der) = key.to_public_key_der() {
        let body = base64::engine::general_purpose::STANDARD.encode(der.as_bytes());
        let lines: Vec<&str> = body
            .as_bytes()
            .chunks(64)
            .filter_map(|c| std::str::from_utf8(c).ok())
            .collect();
        let pem = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            lines.join("\n")
        );
        forms.push(("SPKI DER", der.as_bytes().to_vec()));
        forms.push(("PEM", pem.into_bytes()));
    }
    forms
}
