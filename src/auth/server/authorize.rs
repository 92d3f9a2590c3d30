//! The authorization endpoint and its pages' logic: the request checked (client, exact
//! redirect_uri, PKCE S256, `aud`, scopes, EHR launch), the login, and the user's decision,
//! which yields a single-use code.
//!
//! Who signs in limits what is granted, whatever the client may ask for: `system/` scopes
//! never come from a user's authorization; a patient gets only `patient/` scopes, confined
//! to their own record; only a practitioner may hold `user/` scopes or pick a patient. The
//! sign-in is bound to the browser that started it (an HttpOnly cookie whose hash the pending
//! authorization keeps) and its session id changes at login, so neither a forged login post nor
//! a stolen session id lets someone else approve.

use super::*;

impl AuthServer {
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
        let browser = random_token(24);
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
        // An S256 challenge is the unpadded base64url of a SHA-256 digest: 43 characters.
        let is_s256_challenge = code_challenge.len() == 43
            && code_challenge
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !is_s256_challenge {
            return fail(
                "invalid_request",
                "code_challenge must be the base64url SHA-256 of the verifier (43 characters)",
            );
        }
        if param("aud").map(|a| a.trim_end_matches('/')) != Some(base) {
            return fail("invalid_request", "aud must be this server's FHIR base URL");
        }
        let requested = Scopes::parse(param("scope").unwrap_or_default());
        let granted = without_system_scopes(&Scopes::parse(&client.scope).intersect(&requested));
        if granted.granted.is_empty() {
            return fail(
                "invalid_scope",
                "none of the requested scopes may be granted to this client",
            );
        }
        let launch_patient = match param("launch") {
            Some(_) if !granted.contains("launch") => {
                return fail("invalid_scope", "an EHR launch needs the launch scope");
            }
            // A launch is used once, and only by the client it was made for (if it names one).
            Some(launch) => match self.store.take_record(LAUNCH, launch).await? {
                Some(record) => {
                    let context: serde_json::Value =
                        serde_json::from_slice(&record.value).unwrap_or_default();
                    if context["client_id"]
                        .as_str()
                        .is_some_and(|bound| bound != client.client_id)
                    {
                        return fail("invalid_request", "this launch is for another app");
                    }
                    context["patient"].as_str().map(str::to_owned)
                }
                None => return fail("invalid_request", "unknown, used or expired launch"),
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
            browser: sha256_hex(&browser),
            username: None,
            fhir_user: None,
        };
        let session = random_token(24);
        self.put(SESSION, &session, &pending, SESSION_MS).await?;
        Ok(Begun::Login {
            session,
            browser,
            pending: Box::new(pending),
        })
    }

    /// A pending authorization, if the session is live.
    pub async fn pending(&self, session: &str) -> Result<Option<Pending>, AuthError> {
        Ok(self.get::<Pending>(SESSION, session).await?.map(|(p, _)| p))
    }

    /// The login form's post. On success the session id changes: `Ok(Some((new_session,
    /// pending)))`; `Ok(None)` for a wrong username or password.
    pub async fn login(
        &self,
        session: &str,
        browser: Option<&str>,
        username: &str,
        password: &str,
    ) -> Result<Option<(String, Pending)>, AuthError> {
        let Some(mut pending) = self
            .pending(session)
            .await?
            .filter(|p| browser.is_some_and(|b| sha256_hex(b) == p.browser))
        else {
            return Err(expired());
        };
        let Some(user) = self.accounts.authenticate(username, password).await? else {
            return Ok(None);
        };
        let own_patient = user.own_patient().map(str::to_owned);
        if let (Some(launched), Some(own)) = (&pending.launch_patient, &own_patient)
            && launched != own
        {
            return Err(AuthError::oauth(
                "access_denied",
                "this launch is for another patient's record",
            ));
        }
        pending.scope =
            scopes_for_user(&Scopes::parse(&pending.scope), &user.fhir_user).to_string();
        pending.username = Some(user.username.clone());
        pending.fhir_user = Some(user.fhir_user.clone());
        // A new session id: whoever knew the old one (say, from a forged post) learns nothing.
        self.store.take_record(SESSION, session).await?;
        let renewed = random_token(24);
        self.put(SESSION, &renewed, &pending, SESSION_MS).await?;
        Ok(Some((renewed, pending)))
    }

    /// The approval form's post: the URL to send the browser back to the app with.
    pub async fn decide(
        &self,
        session: &str,
        browser: Option<&str>,
        approve: bool,
        chosen_patient: Option<&str>,
    ) -> Result<String, AuthError> {
        let taken = self.store.take_record(SESSION, session).await?;
        let Some(pending) = taken
            .and_then(|r| serde_json::from_slice::<Pending>(&r.value).ok())
            .filter(|p| browser.is_some_and(|b| sha256_hex(b) == p.browser))
        else {
            return Err(expired());
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
            // Only a practitioner picks a patient (which patients they may see is consent's).
            (None, None) if pending.needs_patient_choice() => chosen_patient
                .filter(|p| crate::fhir::primitives::is_id(p))
                .map(str::to_owned),
            (None, None) => None,
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
}

fn expired() -> AuthError {
    AuthError::oauth(
        "invalid_request",
        "this sign-in has expired or was started elsewhere; start again from the app",
    )
}

/// A user authorization never carries `system/` scopes: those are for backend services.
fn without_system_scopes(scopes: &Scopes) -> Scopes {
    let kept: Vec<&str> = scopes
        .granted
        .iter()
        .filter(|s| !s.starts_with("system/"))
        .map(String::as_str)
        .collect();
    Scopes::parse(&kept.join(" "))
}

/// What `fhir_user` may hold of `scopes`: a practitioner keeps `user/` scopes; anyone else
/// (a patient, a related person) keeps only `patient/` and non-resource scopes.
pub(super) fn scopes_for_user(scopes: &Scopes, fhir_user: &str) -> Scopes {
    if fhir_user.starts_with("Practitioner/") {
        return without_system_scopes(scopes);
    }
    let kept: Vec<&str> = scopes
        .granted
        .iter()
        .filter(|s| !s.starts_with("system/") && !s.starts_with("user/"))
        .map(String::as_str)
        .collect();
    Scopes::parse(&kept.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn who_signs_in_limits_the_scopes() {
        let asked = Scopes::parse("openid user/*.rs patient/*.rs system/*.cruds launch/patient");
        assert_eq!(
            scopes_for_user(&asked, "Patient/1").to_string(),
            "openid patient/*.rs launch/patient"
        );
        assert_eq!(
            scopes_for_user(&asked, "Practitioner/d").to_string(),
            "openid user/*.rs patient/*.rs launch/patient"
        );
        assert_eq!(
            scopes_for_user(&asked, "RelatedPerson/r").to_string(),
            "openid patient/*.rs launch/patient"
        );
    }
}
