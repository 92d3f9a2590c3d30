//! External issuers this server trusts (`INTELLIHEALTH_TRUSTED_ISSUERS`): an identity provider
//! signs the access tokens, we verify them against its JWKS, found through its OpenID
//! discovery document and cached; a token signed with a key we have not seen makes us fetch
//! the JWKS again (at most once per few seconds), which is how key rotation at the provider
//! is followed.
//!
//! The claims read: `sub`, `client_id` (or `azp`), `scope` (a string, or `scp` as a list),
//! `patient`, `fhirUser`. The audience must be this server's FHIR base URL.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation, decode};
use tokio::sync::RwLock;

use super::tokens::describe_jwt_error;
use super::{AuthError, Principal, Scopes};

/// Asymmetric algorithms only: a JWKS never holds a shared secret.
const ACCEPTED: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::ES256,
    Algorithm::ES384,
];
const REFETCH_AFTER: Duration = Duration::from_secs(5);

struct CachedKeys {
    jwks: JwkSet,
    fetched: Instant,
}

pub struct External {
    trusted: Vec<String>,
    http: reqwest::Client,
    cache: RwLock<HashMap<String, CachedKeys>>,
}

impl External {
    pub fn new(trusted: Vec<String>) -> External {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        External {
            trusted: trusted
                .into_iter()
                .map(|i| i.trim_end_matches('/').to_owned())
                .collect(),
            http,
            cache: RwLock::new(HashMap::new()),
        }
    }

    pub fn is_trusted(&self, issuer: &str) -> bool {
        self.trusted
            .iter()
            .any(|t| t == issuer.trim_end_matches('/'))
    }

    pub async fn verify(
        &self,
        token: &str,
        header: &Header,
        issuer: &str,
        audience: &str,
    ) -> Result<Principal, AuthError> {
        let invalid = |why: String| AuthError::InvalidToken(why);
        if !ACCEPTED.contains(&header.alg) {
            return Err(invalid(format!(
                "algorithm {:?} is not accepted",
                header.alg
            )));
        }
        let kid = header.kid.clone().unwrap_or_default();
        let key = self
            .key(issuer, &kid)
            .await?
            .ok_or_else(|| invalid("signed with a key the issuer does not publish".into()))?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = 5;
        validation.validate_nbf = true;
        validation.set_audience(&[audience]);
        validation.set_issuer(&[issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let claims = decode::<serde_json::Value>(token, &key, &validation)
            .map_err(|e| invalid(describe_jwt_error(&e)))?
            .claims;
        let text = |name: &str| claims.get(name).and_then(|v| v.as_str()).map(str::to_owned);
        let scope = match (claims.get("scope"), claims.get("scp")) {
            (Some(serde_json::Value::String(scope)), _) => scope.clone(),
            (_, Some(serde_json::Value::Array(list))) => list
                .iter()
                .filter_map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(" "),
            _ => String::new(),
        };
        let subject = text("sub").unwrap_or_default();
        Ok(Principal {
            client_id: text("client_id")
                .or_else(|| text("azp"))
                .unwrap_or_else(|| subject.clone()),
            subject,
            issuer: issuer.to_owned(),
            scopes: Scopes::parse(&scope),
            patient: text("patient"),
            fhir_user: text("fhirUser"),
            // Custodians are this server's own clients; another issuer's client ids are not.
            custodian: false,
            break_glass: None,
            touched: None,
        })
    }

    /// The issuer's key with `kid`, fetching the JWKS when it is not cached or lacks the kid.
    async fn key(&self, issuer: &str, kid: &str) -> Result<Option<DecodingKey>, AuthError> {
        let find = |jwks: &JwkSet| {
            jwks.find(kid)
                .and_then(|jwk| DecodingKey::from_jwk(jwk).ok())
        };
        let stale = {
            let cache = self.cache.read().await;
            match cache.get(issuer) {
                Some(cached) => {
                    if let Some(key) = find(&cached.jwks) {
                        return Ok(Some(key));
                    }
                    cached.fetched.elapsed() > REFETCH_AFTER
                }
                None => true,
            }
        };
        if !stale {
            return Ok(None);
        }
        let jwks = self.fetch(issuer).await?;
        let key = find(&jwks);
        self.cache.write().await.insert(
            issuer.to_owned(),
            CachedKeys {
                jwks,
                fetched: Instant::now(),
            },
        );
        Ok(key)
    }

    async fn fetch(&self, issuer: &str) -> Result<JwkSet, AuthError> {
        let unavailable = |e: reqwest::Error| {
            AuthError::Unavailable(format!(
                "the trusted issuer {issuer} could not be reached: {e}"
            ))
        };
        let discovery: serde_json::Value = self
            .http
            .get(format!("{issuer}/.well-known/openid-configuration"))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(unavailable)?
            .json()
            .await
            .map_err(unavailable)?;
        let jwks_uri = discovery
            .get("jwks_uri")
            .and_then(|v| v.as_str())
            .ok_or_else(|| AuthError::Unavailable(format!("{issuer} publishes no jwks_uri")))?;
        self.http
            .get(jwks_uri)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(unavailable)?
            .json()
            .await
            .map_err(unavailable)
    }
}
