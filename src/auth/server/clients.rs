//! Who the client is (secret, assertion, or public), and the endpoints that act on a client's
//! behalf: introspection, revocation, dynamic registration and EHR launch.

use super::*;

impl AuthServer {
    /// Who the client at the token, introspection or revocation endpoint is.
    pub(super) async fn authenticate_client(
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
        let client = self.accounts.client(client_id).await?;
        // An unknown client, or one without a secret, is checked against the decoy: the same
        // argon2 work, so the time of the answer does not tell which clients exist.
        let hash = match client.as_ref().map(|c| &c.auth) {
            Some(ClientAuth::Secret { hash }) => Some(hash.as_str()),
            _ => None,
        };
        if check_secret(hash, secret).await {
            client.ok_or_else(|| AuthError::invalid_client("unknown client or wrong secret"))
        } else {
            Err(AuthError::invalid_client("unknown client or wrong secret"))
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
        // SMART Backend Services requires RS384 and ES384; their 256-bit siblings are accepted
        // too (and advertised as such), for clients whose libraries default to them.
        if !matches!(
            header.alg,
            Algorithm::RS384 | Algorithm::ES384 | Algorithm::RS256 | Algorithm::ES256
        ) {
            return Err(refuse("the algorithm must be RS384, ES384, RS256 or ES256"));
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
            .map_err(|e| refuse(&crate::auth::tokens::describe_jwt_error(&e)))?
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
        // A client learns only about its own tokens: anything else reads as inactive.
        if let Ok(header) = decode_header(token)
            && let Ok(claims) = self.tokens.verify_own(token, &header, base).await
            && claims.client_id == client.client_id
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
            && refresh.client_id == client.client_id
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
        if !self.is_admin(bearer) {
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
                let hash = hash_secret_off_runtime(&value).await;
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
            // Only the operator can make a custodian, never a registration request.
            custodian: false,
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

    /// `POST /auth/launch`: an EHR binds a launch to a patient (and, if it names one, to the
    /// app it launches); the app brings `launch=…` to the authorize endpoint, once. An EHR is
    /// a backend service (`system/` scopes, no user) or a practitioner with `user/` scopes.
    pub async fn create_launch(
        &self,
        principal: &Principal,
        patient: &str,
        client_id: Option<&str>,
    ) -> Result<String, AuthError> {
        use crate::auth::Context;
        let contexts: Vec<Context> = principal
            .scopes
            .resources
            .iter()
            .map(|s| s.context)
            .collect();
        let backend = principal.fhir_user.is_none() && contexts.contains(&Context::System);
        let practitioner = principal
            .fhir_user
            .as_deref()
            .is_some_and(|u| u.starts_with("Practitioner/"))
            && contexts.contains(&Context::User);
        if !(backend || practitioner) {
            return Err(AuthError::Forbidden(
                "only an EHR (a backend service, or a practitioner with user scopes) may create a launch"
                    .into(),
            ));
        }
        if !crate::fhir::primitives::is_id(patient) {
            return Err(AuthError::oauth(
                "invalid_request",
                "patient must be a Patient id",
            ));
        }
        let launch = random_token(16);
        let context = serde_json::json!({
            "patient": patient, "client_id": client_id, "by": principal.client_id,
        });
        self.put(LAUNCH, &launch, &context, LAUNCH_MS).await?;
        Ok(launch)
    }
}
