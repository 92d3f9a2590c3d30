//! The authorization endpoint and its pages' logic: the request checked (client, exact
//! redirect_uri, PKCE S256, `aud`, scopes, EHR launch), the login, and the user's decision,
//! which yields a single-use code.

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
}
