//! The token endpoint's grants: authorization code (PKCE verified, reuse revoking what the
//! code produced), refresh (rotation, family revocation on reuse, no widening), and
//! client_credentials; and the token response they share.

use super::*;

impl AuthServer {
    /// `POST /auth/token`.
    pub async fn token(
        &self,
        base: &str,
        form: &HashMap<String, String>,
        basic: Option<(String, String)>,
    ) -> Result<serde_json::Value, AuthError> {
        // Only the grant types this server knows name a metric series; anything else is one.
        let grant_type = form
            .get("grant_type")
            .map(String::as_str)
            .filter(|g| {
                matches!(
                    *g,
                    "authorization_code" | "refresh_token" | "client_credentials"
                )
            })
            .unwrap_or("other");
        let answered = self.grant(base, form, basic).await;
        match &answered {
            Ok(_) => metrics::count(
                "intellihealth_tokens_issued_total",
                &[("grant_type", grant_type)],
            ),
            Err(e) => metrics::count(
                "intellihealth_token_requests_refused_total",
                &[("grant_type", grant_type), ("error", e.oauth_code())],
            ),
        }
        answered
    }

    async fn grant(
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
        let scopes = Scopes::parse(&grant.scope);
        let issued = Issued {
            grant: Grant {
                subject: grant.subject,
                client_id: grant.client_id,
                scopes: scopes.clone(),
                patient: grant.patient,
                fhir_user: grant.fhir_user,
                family: Some(family),
            },
            authorized: scopes,
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
        // Judged before the token is taken: asking for too much is refused without spending
        // the token, so the client may ask again, properly, with the same one.
        let authorized = Scopes::parse(&old.scope);
        let scopes = match form.get("scope").filter(|s| !s.is_empty()) {
            Some(requested) => {
                let requested = Scopes::parse(requested);
                if !authorized.covers(&requested) {
                    return Err(AuthError::oauth(
                        "invalid_scope",
                        "a refresh cannot add scopes the user did not grant",
                    ));
                }
                requested
            }
            None => authorized.clone(),
        };
        // Rotation: exactly one presenter wins the token, decided on the record actually taken
        // (the atomic step); a used or missing one means this is a replay.
        let taken = self.store.take_record(REFRESH, &key).await?;
        let taken_unused = taken
            .and_then(|r| serde_json::from_slice::<RefreshGrant>(&r.value).ok())
            .is_some_and(|r| !r.used);
        if old.used || !taken_unused {
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
        records::put_json(self.store.as_ref(), REFRESH, &key, &used, expires_at).await?;
        let issued = Issued {
            grant: Grant {
                subject: old.subject,
                client_id: old.client_id,
                scopes,
                patient: old.patient,
                fhir_user: old.fhir_user,
                family: Some(old.family),
            },
            authorized,
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
        let authorized = &issued.authorized;
        if (authorized.contains("offline_access") || authorized.contains("online_access"))
            && let Some(family) = &grant.family
        {
            let refresh = random_token(32);
            let record = RefreshGrant {
                family: family.clone(),
                client_id: grant.client_id.clone(),
                scope: authorized.to_string(),
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

    /// Revokes one authorization: its refresh tokens (for as long as one could live) and the
    /// access tokens issued under it.
    pub(super) async fn revoke_family(&self, family: &str) -> Result<(), AuthError> {
        self.store
            .put_record(Record {
                kind: REVOKED_FAMILY.into(),
                key: family.to_owned(),
                value: Vec::new(),
                expires_at: Some(now_millis() + REFRESH_MS),
            })
            .await?;
        self.tokens.revoke_family_tokens(family).await
    }
}
