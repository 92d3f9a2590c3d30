//! Access tokens and id_tokens: JWTs this server signs with ES256 (`keys`), and the one
//! verification every request goes through, for its own tokens and for those of trusted
//! external issuers (`external`).
//!
//! An access token: header `typ: at+jwt` (RFC 9068), `iss` and `aud` both the FHIR base URL,
//! `sub`, `client_id`, `scope`, `patient` and `fhirUser` when there is a context, `jti`, and
//! `fam`, the refresh-token family it belongs to (so revoking a family revokes its access
//! tokens too). Verification accepts only ES256 with a known `kid` for our tokens (no `none`,
//! no HMAC keyed with a public key), checks `exp`/`nbf` with 5 s of leeway, `aud`, `iss`, the
//! token type, and whether the token or its family was revoked.
//!
//! Never logs a token.

use std::sync::Arc;

use jsonwebtoken::{Algorithm, Header, Validation, decode, decode_header, encode};
use serde::{Deserialize, Serialize};

use super::external::External;
use super::keys::Keyring;
use super::{AuthError, Principal, Scopes};
use crate::fhir::instant::now_millis;
use crate::index::{IndexStore, Record};

pub const ACCESS_TOKEN_SECONDS: i64 = 3600;
const ID_TOKEN_SECONDS: i64 = 3600;
const LEEWAY_SECONDS: u64 = 5;
const ACCESS_TOKEN_TYPE: &str = "at+jwt";
const REVOKED_TOKEN: &str = "revoked-token";
pub const REVOKED_FAMILY: &str = "revoked-family";

/// The claims of an access token this server issues.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct AccessClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: String,
    pub scope: String,
    pub client_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient: Option<String>,
    #[serde(rename = "fhirUser", default, skip_serializing_if = "Option::is_none")]
    pub fhir_user: Option<String>,
    /// The refresh-token family (one authorization) this token belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fam: Option<String>,
}

/// What a token is issued for.
#[derive(Clone, Debug)]
pub struct Grant {
    pub subject: String,
    pub client_id: String,
    pub scopes: Scopes,
    pub patient: Option<String>,
    pub fhir_user: Option<String>,
    pub family: Option<String>,
}

pub struct TokenService {
    keyring: Arc<Keyring>,
    store: Arc<dyn IndexStore>,
    external: External,
}

/// A random, URL-safe identifier of `bytes` random bytes.
pub fn random_token(bytes: usize) -> String {
    use base64::Engine;
    use rand::RngCore;
    let mut raw = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut raw);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

impl TokenService {
    pub fn new(
        keyring: Arc<Keyring>,
        store: Arc<dyn IndexStore>,
        external: External,
    ) -> TokenService {
        TokenService {
            keyring,
            store,
            external,
        }
    }

    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    /// Signs an access token for `grant`, valid at `base` (issuer and audience).
    pub async fn issue_access(
        &self,
        base: &str,
        grant: &Grant,
    ) -> Result<(String, AccessClaims), AuthError> {
        let now = now_millis() / 1000;
        let claims = AccessClaims {
            iss: base.to_owned(),
            sub: grant.subject.clone(),
            aud: base.to_owned(),
            exp: now + ACCESS_TOKEN_SECONDS,
            iat: now,
            nbf: now,
            jti: random_token(16),
            scope: grant.scopes.to_string(),
            client_id: grant.client_id.clone(),
            patient: grant.patient.clone(),
            fhir_user: grant.fhir_user.clone(),
            fam: grant.family.clone(),
        };
        let token = self.sign(ACCESS_TOKEN_TYPE, &claims).await?;
        Ok((token, claims))
    }

    /// Signs an OpenID Connect id_token for the user of an authorization.
    pub async fn issue_id_token(
        &self,
        base: &str,
        client_id: &str,
        subject: &str,
        fhir_user: Option<&str>,
        nonce: Option<&str>,
    ) -> Result<String, AuthError> {
        let now = now_millis() / 1000;
        let mut claims = serde_json::json!({
            "iss": base, "sub": subject, "aud": client_id,
            "exp": now + ID_TOKEN_SECONDS, "iat": now, "auth_time": now,
        });
        if let Some(fhir_user) = fhir_user {
            claims["fhirUser"] = fhir_user.into();
        }
        if let Some(nonce) = nonce {
            claims["nonce"] = nonce.into();
        }
        self.sign("JWT", &claims).await
    }

    async fn sign<T: Serialize>(&self, typ: &str, claims: &T) -> Result<String, AuthError> {
        let (kid, key) = self.keyring.signing_key().await?;
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid);
        header.typ = Some(typ.to_owned());
        encode(&header, claims, &key)
            .map_err(|e| AuthError::InvalidToken(format!("signing failed: {e}")))
    }

    /// Verifies a bearer token presented at `base` and returns who it speaks for.
    pub async fn verify(&self, token: &str, base: &str) -> Result<Principal, AuthError> {
        let invalid = |why: &str| AuthError::InvalidToken(why.to_owned());
        let header = decode_header(token).map_err(|_| invalid("not a JWT this server accepts"))?;
        let issuer = unverified_issuer(token).ok_or_else(|| invalid("no issuer"))?;
        if issuer != base {
            if self.external.is_trusted(&issuer) {
                return self.external.verify(token, &header, &issuer, base).await;
            }
            return Err(invalid(
                "the issuer is neither this server nor a trusted one",
            ));
        }
        let claims = self.verify_own(token, &header, base).await?;
        Ok(Principal {
            subject: claims.sub,
            client_id: claims.client_id,
            issuer: claims.iss,
            scopes: Scopes::parse(&claims.scope),
            patient: claims.patient,
            fhir_user: claims.fhir_user,
        })
    }

    /// Verifies one of this server's access tokens, revocation included.
    pub async fn verify_own(
        &self,
        token: &str,
        header: &Header,
        base: &str,
    ) -> Result<AccessClaims, AuthError> {
        let invalid = |why: String| AuthError::InvalidToken(why);
        if header.alg != Algorithm::ES256 {
            return Err(invalid(format!(
                "algorithm {:?} is not accepted",
                header.alg
            )));
        }
        if header.typ.as_deref() != Some(ACCESS_TOKEN_TYPE) {
            return Err(invalid("not an access token (typ must be at+jwt)".into()));
        }
        let kid = header
            .kid
            .as_deref()
            .ok_or_else(|| invalid("no key id".into()))?;
        let key = self
            .keyring
            .verifying_key(kid)
            .await?
            .ok_or_else(|| invalid("signed with an unknown key".into()))?;
        let mut validation = Validation::new(Algorithm::ES256);
        validation.leeway = LEEWAY_SECONDS;
        validation.validate_nbf = true;
        validation.set_audience(&[base]);
        validation.set_issuer(&[base]);
        validation.set_required_spec_claims(&["exp", "nbf", "iat", "iss", "aud", "sub"]);
        let claims = decode::<AccessClaims>(token, &key, &validation)
            .map_err(|e| invalid(describe_jwt_error(&e)))?
            .claims;
        if self
            .store
            .get_record(REVOKED_TOKEN, &claims.jti)
            .await?
            .is_some()
        {
            return Err(invalid("the token was revoked".into()));
        }
        if let Some(family) = &claims.fam
            && self
                .store
                .get_record(REVOKED_FAMILY, family)
                .await?
                .is_some()
        {
            return Err(invalid(
                "the authorization behind the token was revoked".into(),
            ));
        }
        Ok(claims)
    }

    /// Revokes one access token until it would have expired anyway.
    pub async fn revoke_access(&self, claims: &AccessClaims) -> Result<(), AuthError> {
        self.store
            .put_record(Record {
                kind: REVOKED_TOKEN.into(),
                key: claims.jti.clone(),
                value: Vec::new(),
                expires_at: Some((claims.exp + LEEWAY_SECONDS as i64) * 1000),
            })
            .await?;
        Ok(())
    }
}

/// `iss` of a token, before its signature is checked: only to decide whom to check it with.
fn unverified_issuer(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    use base64::Engine;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("iss")?.as_str().map(str::to_owned)
}

/// Words for why a JWT failed, without echoing any of it.
pub fn describe_jwt_error(error: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind;
    match error.kind() {
        ErrorKind::ExpiredSignature => "the token has expired".into(),
        ErrorKind::ImmatureSignature => "the token is not valid yet".into(),
        ErrorKind::InvalidAudience => "the token is for another audience".into(),
        ErrorKind::InvalidIssuer => "the token is from another issuer".into(),
        ErrorKind::InvalidSignature => "the signature does not verify".into(),
        ErrorKind::InvalidAlgorithm => "the algorithm is not accepted".into(),
        ErrorKind::MissingRequiredClaim(claim) => format!("the token has no {claim} claim"),
        _ => "the token is malformed".into(),
    }
}
