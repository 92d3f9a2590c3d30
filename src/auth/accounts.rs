//! Users and clients of the authorization server, kept in the IndexStore's records.
//!
//! A user is a patient or a practitioner, linked to their FHIR resource (`fhirUser`), with a
//! password hashed by argon2id. A client is public (PKCE only), confidential with a secret
//! (`client_secret_basic`/`client_secret_post`, the secret hashed by argon2id), or
//! confidential with keys (`private_key_jwt`, a JWKS inline or at a URL), each with its allowed
//! redirect URIs and scopes. Secrets and passwords are never stored or logged in the clear.
//!
//! Every argon2 hash and check runs through `cpu::password` (the blocking pool, a bounded
//! number at a time), and one for an unknown name costs the same work as one for a known name,
//! so neither the runtime's workers nor the timing of an answer give anything away.

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::AuthError;
use super::records;
use crate::index::IndexStore;

const USER: &str = "user";
pub(super) const CLIENT: &str = "client";

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct User {
    pub username: String,
    password_hash: String,
    /// `Patient/123` or `Practitioner/abc`.
    pub fhir_user: String,
}

impl User {
    /// A user whose password hash is `password_hash` (argon2id, from `hash_secret`).
    pub fn new(username: &str, password_hash: String, fhir_user: &str) -> User {
        User {
            username: username.to_owned(),
            password_hash,
            fhir_user: fhir_user.to_owned(),
        }
    }

    /// Whether the user is acceptable: a name, a hash, and a fhirUser such as `Patient/123`.
    pub fn check(&self) -> Result<(), AuthError> {
        let valid_reference = self.fhir_user.split_once('/').is_some_and(|(ty, id)| {
            matches!(ty, "Patient" | "Practitioner" | "RelatedPerson" | "Person")
                && crate::fhir::primitives::is_id(id)
        });
        if self.username.is_empty() || self.password_hash.is_empty() || !valid_reference {
            return Err(AuthError::oauth(
                "invalid_request",
                "a user needs a name, a password and a fhirUser such as Patient/123",
            ));
        }
        Ok(())
    }

    /// The patient a patient user is: their own compartment.
    pub fn own_patient(&self) -> Option<&str> {
        self.fhir_user.strip_prefix("Patient/")
    }
}

/// How a client proves who it is at the token endpoint.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// No secret: a public client (a browser or native app); PKCE is its only proof.
    None,
    /// `client_secret_basic` or `client_secret_post`.
    Secret { hash: String },
    /// `private_key_jwt` with keys inline.
    Jwks { jwks: serde_json::Value },
    /// `private_key_jwt` with keys fetched from a URL.
    JwksUrl { url: String },
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Client {
    pub client_id: String,
    pub auth: ClientAuth,
    /// The scopes it may be granted, space-separated.
    pub scope: String,
    /// Exact redirect URIs it may use (no prefix or pattern matching).
    pub redirect_uris: Vec<String>,
    #[serde(default)]
    pub name: Option<String>,
    /// The EHR system of record, marked so by the operator (`clients add --custodian`; never
    /// by dynamic registration): it reads and writes every patient's data without a grant.
    #[serde(default)]
    pub custodian: bool,
}

impl Client {
    pub fn is_public(&self) -> bool {
        self.auth == ClientAuth::None
    }
}

/// Hashes a secret with argon2id, synchronously: for the CLI, which has no requests to stall.
pub fn hash_secret(secret: &str) -> String {
    super::password::hash(secret).unwrap_or_default()
}

/// Hashes a secret with argon2id off the async workers.
pub async fn hash_secret_off_runtime(secret: &str) -> String {
    let secret = zeroize::Zeroizing::new(secret.to_owned());
    crate::cpu::password(move || hash_secret(&secret)).await
}

/// A hash no secret matches, made once: what an unknown user or client is checked against, so
/// that it costs the same argon2 work as a known one.
fn decoy_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| hash_secret(&crate::auth::tokens::random_token(24)))
}

/// Checks `secret` against `hash` (or, with `None`, against the decoy, which always fails)
/// off the async workers. Known and unknown accounts cost the same.
pub async fn check_secret(hash: Option<&str>, secret: &str) -> bool {
    crate::metrics::count("intellihealth_password_checks_total", &[]);
    let hash = hash.map(str::to_owned);
    let secret = zeroize::Zeroizing::new(secret.to_owned());
    // The decoy is made (once) inside the pool too: its first use hashes.
    crate::cpu::password(move || match &hash {
        Some(hash) => verify_secret(hash, &secret),
        None => {
            // Never matches; done only to cost what a real check costs.
            verify_secret(decoy_hash(), &secret);
            false
        }
    })
    .await
}

pub fn verify_secret(hash: &str, secret: &str) -> bool {
    super::password::verify(hash, secret)
}

pub struct Accounts {
    store: Arc<dyn IndexStore>,
}

impl Accounts {
    pub fn new(store: Arc<dyn IndexStore>) -> Accounts {
        Accounts { store }
    }

    pub async fn add_user(
        &self,
        username: &str,
        password: &str,
        fhir_user: &str,
    ) -> Result<(), AuthError> {
        if password.is_empty() {
            return Err(AuthError::oauth(
                "invalid_request",
                "a user needs a password",
            ));
        }
        User::new(username, "unchecked".into(), fhir_user).check()?;
        let user = User::new(username, hash_secret_off_runtime(password).await, fhir_user);
        self.save_user(&user).await
    }

    /// Stores a user whose password is already hashed (by the CLI, before it reaches a
    /// running server).
    pub async fn save_user(&self, user: &User) -> Result<(), AuthError> {
        user.check()?;
        self.put(USER, &user.username, user).await
    }

    /// The user, if `password` is theirs.
    pub async fn authenticate(
        &self,
        username: &str,
        password: &str,
    ) -> Result<Option<User>, AuthError> {
        let user: Option<User> = self.get(USER, username).await?;
        let hash = user.as_ref().map(|u| u.password_hash.as_str());
        let matched = check_secret(hash, password).await;
        Ok(user.filter(|_| matched))
    }

    pub async fn user(&self, username: &str) -> Result<Option<User>, AuthError> {
        self.get(USER, username).await
    }

    pub async fn add_client(&self, client: &Client) -> Result<(), AuthError> {
        self.put(CLIENT, &client.client_id, client).await
    }

    pub async fn client(&self, client_id: &str) -> Result<Option<Client>, AuthError> {
        self.get(CLIENT, client_id).await
    }

    /// Every registered client (a record that does not read as a client is left out).
    pub async fn clients(&self) -> Result<Vec<Client>, AuthError> {
        let records = self.store.list_records(CLIENT).await?;
        Ok(records
            .iter()
            .filter_map(|r| serde_json::from_slice(&r.value).ok())
            .collect())
    }

    async fn put<T: Serialize>(&self, kind: &str, key: &str, value: &T) -> Result<(), AuthError> {
        Ok(records::put_json(self.store.as_ref(), kind, key, value, None).await?)
    }

    async fn get<T: DeserializeOwned>(
        &self,
        kind: &str,
        key: &str,
    ) -> Result<Option<T>, AuthError> {
        Ok(records::get_json(self.store.as_ref(), kind, key)
            .await?
            .map(|(value, _)| value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a one-thread runtime, a task keeps ticking while a password is checked: the argon2
    /// work is not on the runtime's thread. (Checked in place, the whole check would run inside
    /// one poll and the ticker would not run until it ended.)
    #[tokio::test(flavor = "current_thread")]
    async fn password_checks_leave_the_runtime_free() {
        let hash = hash_secret("correct horse");
        let check = tokio::spawn(async move { check_secret(Some(&hash), "correct horse").await });
        let mut ticks = 0;
        while !check.is_finished() {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            ticks += 1;
        }
        assert!(check.await.unwrap());
        assert!(
            ticks >= 2,
            "the runtime ticked only {ticks} times during the check"
        );
        // An unknown account is checked against the decoy and never matches.
        assert!(!check_secret(None, "correct horse").await);
    }

    #[test]
    fn secrets_are_hashed_and_checked() {
        let hash = hash_secret("correct horse");
        assert!(!hash.contains("correct horse"));
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_secret(&hash, "correct horse"));
        assert!(!verify_secret(&hash, "wrong"));
        assert!(!verify_secret("not a hash", "x"));
    }
}
