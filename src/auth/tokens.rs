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

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

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
pub const REVOKED_FAMILY: &str = "revoked-family";
/// Revocations of tokens and families, each kept as long as an access token it covers lives.
const REVOCATION_LOG: &str = "revocation-log";
/// How stale the in-memory revocations may be before they are reloaded.
pub const REVOCATIONS_FRESH_FOR: Duration = Duration::from_secs(1);

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
    /// Tokens already verified, by SHA-256 of the token: checking an ES256 signature costs far
    /// more than the rest of a read, and a signature, once good, stays good until `exp`.
    /// Revocation is still looked up on every use.
    verified: RwLock<HashMap<[u8; 32], Arc<Verified>>>,
    revocations: tokio::sync::RwLock<Revocations>,
    /// One reload at a time; the others wait for it rather than query the store too.
    reloading: tokio::sync::Mutex<()>,
    fresh_for: Duration,
}

/// The recent revocations, as loaded from the log (plus this replica's own since), each with
/// when it stops mattering (ms).
#[derive(Default)]
struct Revocations {
    tokens: HashMap<String, i64>,
    families: HashMap<String, i64>,
    loaded_at: Option<Instant>,
}

/// What verifying a token established, kept for its later uses.
struct Verified {
    principal: Principal,
    /// The base URL it was verified for (its `aud`).
    audience: String,
    not_before: i64,
    expires_at: i64,
    /// For this server's own tokens: what revocation is looked up by.
    jti: Option<String>,
    family: Option<String>,
}

/// Most verified tokens remembered; past it the cache starts over (tokens are re-verified).
const VERIFIED_LIMIT: usize = 50_000;

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
            verified: RwLock::new(HashMap::new()),
            revocations: tokio::sync::RwLock::new(Revocations::default()),
            reloading: tokio::sync::Mutex::new(()),
            fresh_for: REVOCATIONS_FRESH_FOR,
        }
    }

    /// The same service reloading revocations after `fresh_for` (tests of several replicas).
    pub fn with_revocations_fresh_for(mut self, fresh_for: Duration) -> TokenService {
        self.fresh_for = fresh_for;
        self
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
            .map_err(|e| AuthError::Signing(format!("signing failed: {e}")))
    }

    /// Verifies a bearer token presented at `base` and returns who it speaks for.
    pub async fn verify(&self, token: &str, base: &str) -> Result<Principal, AuthError> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let known = self.verified.read().ok().and_then(|v| v.get(&key).cloned());
        if let Some(known) = known {
            let now = now_millis() / 1000;
            let leeway = LEEWAY_SECONDS as i64;
            if known.audience == base
                && now + leeway >= known.not_before
                && now - leeway < known.expires_at
            {
                if let Some(jti) = &known.jti {
                    self.check_revocation(jti, known.family.as_deref()).await?;
                }
                return Ok(known.principal.clone());
            }
        }
        let verified = self.verify_fully(token, base).await?;
        let principal = verified.principal.clone();
        if let Ok(mut cache) = self.verified.write() {
            if cache.len() >= VERIFIED_LIMIT {
                cache.clear();
            }
            cache.insert(key, Arc::new(verified));
        }
        Ok(principal)
    }

    /// Signature, claims and revocation, from scratch.
    async fn verify_fully(&self, token: &str, base: &str) -> Result<Verified, AuthError> {
        let invalid = |why: &str| AuthError::InvalidToken(why.to_owned());
        let header = decode_header(token).map_err(|_| invalid("not a JWT this server accepts"))?;
        let issuer = unverified_issuer(token).ok_or_else(|| invalid("no issuer"))?;
        if issuer != base {
            if !self.external.is_trusted(&issuer) {
                return Err(invalid(
                    "the issuer is neither this server nor a trusted one",
                ));
            }
            let principal = self.external.verify(token, &header, &issuer, base).await?;
            // Verified above, so these claims can now be read as given.
            let claim = |name: &str| unverified_claim(token, name).and_then(|v| v.as_i64());
            return Ok(Verified {
                principal,
                audience: base.to_owned(),
                not_before: claim("nbf").unwrap_or(i64::MIN),
                expires_at: claim("exp").unwrap_or_default(),
                jti: None,
                family: None,
            });
        }
        let claims = self.verify_own(token, &header, base).await?;
        let custodian = super::records::get_json::<super::accounts::Client>(
            self.store.as_ref(),
            super::accounts::CLIENT,
            &claims.client_id,
        )
        .await?
        .is_some_and(|(client, _)| client.custodian);
        Ok(Verified {
            audience: base.to_owned(),
            not_before: claims.nbf,
            expires_at: claims.exp,
            jti: Some(claims.jti),
            family: claims.fam,
            principal: Principal {
                subject: claims.sub,
                client_id: claims.client_id,
                issuer: claims.iss,
                scopes: Scopes::parse(&claims.scope),
                patient: claims.patient,
                fhir_user: claims.fhir_user,
                custodian,
                break_glass: None,
                touched: None,
            },
        })
    }

    /// Whether the token (by `jti`) or its authorization (by family) was revoked.
    async fn check_revocation(&self, jti: &str, family: Option<&str>) -> Result<(), AuthError> {
        self.reload_revocations_if_stale().await?;
        let revoked = self.revocations.read().await;
        if revoked.tokens.contains_key(jti) {
            return Err(AuthError::InvalidToken("the token was revoked".into()));
        }
        if family.is_some_and(|f| revoked.families.contains_key(f)) {
            return Err(AuthError::InvalidToken(
                "the authorization behind the token was revoked".into(),
            ));
        }
        Ok(())
    }

    async fn reload_revocations_if_stale(&self) -> Result<(), AuthError> {
        let fresh = |r: &Revocations| r.loaded_at.is_some_and(|at| at.elapsed() < self.fresh_for);
        if fresh(&*self.revocations.read().await) {
            return Ok(());
        }
        let _reloading = self.reloading.lock().await;
        if fresh(&*self.revocations.read().await) {
            return Ok(());
        }
        let started = Instant::now();
        let log = self.store.list_records(REVOCATION_LOG).await?;
        let now = now_millis();
        let mut revoked = self.revocations.write().await;
        // Merged, never replaced: a revocation made here after the listing was read stays.
        for record in log {
            let until = record.expires_at.unwrap_or(i64::MAX);
            if let Some(jti) = record.key.strip_prefix("token:") {
                revoked.tokens.insert(jti.to_owned(), until);
            } else if let Some(family) = record.key.strip_prefix("family:") {
                revoked.families.insert(family.to_owned(), until);
            }
        }
        revoked.tokens.retain(|_, until| *until > now);
        revoked.families.retain(|_, until| *until > now);
        revoked.loaded_at = Some(started);
        Ok(())
    }

    /// Records a revocation in the log every replica reads, and here at once.
    async fn log_revocation(&self, key: String, until: i64) -> Result<(), AuthError> {
        self.store
            .put_record(Record {
                kind: REVOCATION_LOG.into(),
                key: key.clone(),
                value: Vec::new(),
                expires_at: Some(until),
            })
            .await?;
        let mut revoked = self.revocations.write().await;
        if let Some(jti) = key.strip_prefix("token:") {
            revoked.tokens.insert(jti.to_owned(), until);
        } else if let Some(family) = key.strip_prefix("family:") {
            revoked.families.insert(family.to_owned(), until);
        }
        Ok(())
    }

    /// Revokes every access token of a family (one authorization) still alive.
    pub async fn revoke_family_tokens(&self, family: &str) -> Result<(), AuthError> {
        let until = now_millis() + (ACCESS_TOKEN_SECONDS + LEEWAY_SECONDS as i64) * 1000;
        self.log_revocation(format!("family:{family}"), until).await
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
        self.check_revocation(&claims.jti, claims.fam.as_deref())
            .await?;
        Ok(claims)
    }

    /// Revokes one access token until it would have expired anyway.
    pub async fn revoke_access(&self, claims: &AccessClaims) -> Result<(), AuthError> {
        let until = (claims.exp + LEEWAY_SECONDS as i64) * 1000;
        self.log_revocation(format!("token:{}", claims.jti), until)
            .await
    }
}

/// `iss` of a token, before its signature is checked: only to decide whom to check it with.
fn unverified_issuer(token: &str) -> Option<String> {
    unverified_claim(token, "iss").and_then(|v| v.as_str().map(str::to_owned))
}

/// A claim of a token, read without checking anything.
fn unverified_claim(token: &str, name: &str) -> Option<serde_json::Value> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let mut claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims.get_mut(name).map(serde_json::Value::take)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::embedded::EmbeddedIndex;
    use crate::vault::{MasterKey, Vault};

    const BASE: &str = "http://fhir.example/fhir";

    /// A token service over its own embedded store and signing key.
    async fn service() -> (tempfile::TempDir, TokenService) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn IndexStore> = Arc::new(
            EmbeddedIndex::open(
                dir.path(),
                crate::index::embedded::AtRestKey::from_bytes([5; 32]),
            )
            .unwrap(),
        );
        let vault = Arc::new(Vault::new(MasterKey::from_bytes([3; 32]), store.clone()));
        let keyring = Keyring::open(store.clone(), vault).await.unwrap();
        let service = TokenService::new(Arc::new(keyring), store, External::new(Vec::new()));
        (dir, service)
    }

    /// A revocation made on one replica reaches another that shares its store once that one
    /// reloads (after `REVOCATIONS_FRESH_FOR` in production; at once here).
    #[tokio::test]
    async fn a_revocation_on_one_replica_holds_on_another() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn IndexStore> = Arc::new(
            EmbeddedIndex::open(
                dir.path(),
                crate::index::embedded::AtRestKey::from_bytes([5; 32]),
            )
            .unwrap(),
        );
        let replica = || async {
            let vault = Arc::new(Vault::new(MasterKey::from_bytes([3; 32]), store.clone()));
            let keyring = Keyring::open(store.clone(), vault).await.unwrap();
            TokenService::new(Arc::new(keyring), store.clone(), External::new(Vec::new()))
                .with_revocations_fresh_for(Duration::ZERO)
        };
        let (a, b) = (replica().await, replica().await);
        let revoked = claims(|c| c.fam = Some("family-1".into()));
        let token = a.sign(ACCESS_TOKEN_TYPE, &revoked).await.unwrap();
        let sibling = claims(|c| c.fam = Some("family-1".into()));
        let sibling = a.sign(ACCESS_TOKEN_TYPE, &sibling).await.unwrap();
        assert!(b.verify(&token, BASE).await.is_ok());
        assert!(b.verify(&sibling, BASE).await.is_ok());
        a.revoke_access(&revoked).await.unwrap();
        assert!(b.verify(&token, BASE).await.is_err(), "the token itself");
        assert!(b.verify(&sibling, BASE).await.is_ok(), "its sibling lives");
        a.revoke_family_tokens("family-1").await.unwrap();
        assert!(b.verify(&sibling, BASE).await.is_err(), "the whole family");
    }

    fn claims(change: impl FnOnce(&mut AccessClaims)) -> AccessClaims {
        let now = now_millis() / 1000;
        let mut claims = AccessClaims {
            iss: BASE.into(),
            sub: "backend".into(),
            aud: BASE.into(),
            exp: now + 300,
            iat: now,
            nbf: now,
            jti: random_token(16),
            scope: "system/*.rs".into(),
            client_id: "backend".into(),
            patient: None,
            fhir_user: None,
            fam: None,
        };
        change(&mut claims);
        claims
    }

    /// This server's own tokens, signed with its own key, refused for every claim that is off:
    /// the runner's attack matrix can only forge those of an issuer it runs itself.
    #[tokio::test]
    async fn own_tokens_are_refused_when_any_claim_is_off() {
        let (_dir, tokens) = service().await;
        let now = now_millis() / 1000;
        let good = tokens
            .sign(ACCESS_TOKEN_TYPE, &claims(|_| {}))
            .await
            .unwrap();
        assert!(tokens.verify(&good, BASE).await.is_ok(), "control");

        let cases: Vec<(&str, AccessClaims)> = vec![
            (
                "expired",
                claims(|c| (c.exp, c.iat, c.nbf) = (now - 600, now - 1200, now - 1200)),
            ),
            ("not yet valid", claims(|c| c.nbf = now + 600)),
            (
                "another audience",
                claims(|c| c.aud = "http://other.example/fhir".into()),
            ),
        ];
        for (name, claims) in cases {
            let token = tokens.sign(ACCESS_TOKEN_TYPE, &claims).await.unwrap();
            let refused = tokens.verify(&token, BASE).await;
            assert!(
                matches!(refused, Err(AuthError::InvalidToken(_))),
                "{name}: {refused:?}"
            );
        }
        // The same good token presented at another server's base URL.
        assert!(
            tokens
                .verify(&good, "http://other.example/fhir")
                .await
                .is_err()
        );
        // An id_token (typ JWT) is not an access token, though signed by the same key.
        let id_token = tokens.sign("JWT", &claims(|_| {})).await.unwrap();
        assert!(tokens.verify(&id_token, BASE).await.is_err());
        // Signed by a key this server never had, under this server's issuer.
        let (_other_dir, stranger) = service().await;
        let foreign = stranger
            .sign(ACCESS_TOKEN_TYPE, &claims(|_| {}))
            .await
            .unwrap();
        assert!(matches!(
            tokens.verify(&foreign, BASE).await,
            Err(AuthError::InvalidToken(why)) if why.contains("unknown key")
        ));
        // Revocation takes effect even for a token already verified (and cached).
        let revoked = claims(|_| {});
        let token = tokens.sign(ACCESS_TOKEN_TYPE, &revoked).await.unwrap();
        assert!(tokens.verify(&token, BASE).await.is_ok());
        tokens.revoke_access(&revoked).await.unwrap();
        assert!(tokens.verify(&token, BASE).await.is_err());
    }
}
