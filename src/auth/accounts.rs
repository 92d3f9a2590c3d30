//! Users and clients of the authorization server, kept in the IndexStore's records.
//!
//! A user is a patient or a practitioner, linked to their FHIR resource (`fhirUser`), with a
//! password hashed by argon2id. A client is public (PKCE only), confidential with a secret
//! (`client_secret_basic`/`client_secret_post`, the secret hashed by argon2id), or
//! confidential with keys (`private_key_jwt`, a JWKS inline or at a URL), each with its allowed
//! redirect URIs and scopes. Secrets and passwords are never stored or logged in the clear.

use std::sync::Arc;

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::AuthError;
use super::records;
use crate::index::IndexStore;

const USER: &str = "user";
const CLIENT: &str = "client";

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct User {
    pub username: String,
    password_hash: String,
    /// `Patient/123` or `Practitioner/abc`.
    pub fhir_user: String,
}

impl User {
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
}

impl Client {
    pub fn is_public(&self) -> bool {
        self.auth == ClientAuth::None
    }
}

pub fn hash_secret(secret: &str) -> String {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .unwrap_or_default()
}

/// A hash no password matches, computed once, for `authenticate` of unknown users.
fn unknown_user_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| hash_secret(&crate::auth::tokens::random_token(24)))
}

pub fn verify_secret(hash: &str, secret: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| {
        Argon2::default()
            .verify_password(secret.as_bytes(), &parsed)
            .is_ok()
    })
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
        let valid_reference = fhir_user.split_once('/').is_some_and(|(ty, id)| {
            matches!(ty, "Patient" | "Practitioner" | "RelatedPerson" | "Person")
                && crate::fhir::primitives::is_id(id)
        });
        if username.is_empty() || password.is_empty() || !valid_reference {
            return Err(AuthError::oauth(
                "invalid_request",
                "a user needs a name, a password and a fhirUser such as Patient/123",
            ));
        }
        let user = User {
            username: username.to_owned(),
            password_hash: hash_secret(password),
            fhir_user: fhir_user.to_owned(),
        };
        self.put(USER, username, &user).await
    }

    /// The user, if `password` is theirs.
    pub async fn authenticate(
        &self,
        username: &str,
        password: &str,
    ) -> Result<Option<User>, AuthError> {
        let user: Option<User> = self.get(USER, username).await?;
        match user {
            Some(user) => Ok(verify_secret(&user.password_hash, password).then_some(user)),
            None => {
                // The same argon2 work as for a real user, so timing does not tell who exists.
                verify_secret(unknown_user_hash(), password);
                Ok(None)
            }
        }
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
