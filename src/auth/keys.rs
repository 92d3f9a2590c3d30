//! The server's token signing keys: ES256 (P-256) key pairs, generated at first start, kept in
//! the IndexStore's records with the private half wrapped by the master key (so every replica
//! signs and verifies with the same keys), rotated by `intellihealth keys rotate`, and
//! published as a JWKS. A rotated-out key stays in the JWKS, and keeps verifying, until every
//! token it signed has expired.
//!
//! Must not issue or check claims: `tokens` does.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{DecodingKey, EncodingKey};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::EncodePrivateKey;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use tokio::sync::RwLock;

use super::AuthError;
use crate::fhir::instant::now_millis;
use crate::index::IndexStore;
use crate::vault::Vault;

const KIND: &str = "signing-key";
/// How long a retired key keeps verifying: longer than any token it signed lives.
const RETIRED_KEY_LIFETIME_MS: i64 = 2 * super::tokens::ACCESS_TOKEN_SECONDS * 1000;
/// Another replica (or `keys rotate`) may have changed the keys: look again this often.
const RELOAD_AFTER: Duration = Duration::from_secs(60);

#[derive(Serialize, Deserialize, Clone)]
struct StoredKey {
    kid: String,
    /// PKCS#8 DER of the private key, wrapped by the master key, base64.
    wrapped_private: String,
    /// The public point, base64url, as a JWK has them.
    x: String,
    y: String,
    created_at: i64,
    retired_at: Option<i64>,
}

struct LoadedKey {
    stored: StoredKey,
    encoding: EncodingKey,
    decoding: DecodingKey,
}

struct Loaded {
    /// Newest first.
    keys: Vec<LoadedKey>,
    at: Instant,
}

pub struct Keyring {
    store: Arc<dyn IndexStore>,
    vault: Arc<Vault>,
    loaded: RwLock<Loaded>,
}

fn wrap_label(kid: &str) -> String {
    format!("intellihealth/token-signing-key/{kid}")
}

impl Keyring {
    /// Loads the keys, making the first one if there is none.
    pub async fn open(store: Arc<dyn IndexStore>, vault: Arc<Vault>) -> Result<Keyring, AuthError> {
        let keyring = Keyring {
            store,
            vault,
            loaded: RwLock::new(Loaded {
                keys: Vec::new(),
                at: Instant::now(),
            }),
        };
        keyring.reload().await?;
        if keyring
            .loaded
            .read()
            .await
            .keys
            .iter()
            .all(|k| k.stored.retired_at.is_some())
        {
            keyring.create().await?;
            keyring.reload().await?;
        }
        Ok(keyring)
    }

    async fn reload(&self) -> Result<(), AuthError> {
        let records = self.store.list_records(KIND).await?;
        let mut keys = Vec::new();
        // A key that cannot be used is skipped, not fatal: the others still sign and verify, and
        // if none is left, signing fails as the server's own fault (500), never as the
        // client's (401).
        for record in records {
            let Ok(stored) = serde_json::from_slice::<StoredKey>(&record.value) else {
                tracing::warn!(key = %record.key, "a stored signing key is unreadable; skipped");
                continue;
            };
            let wrapped = STANDARD.decode(&stored.wrapped_private).unwrap_or_default();
            let Some(der) = self.vault.unwrap_secret(&wrap_label(&stored.kid), &wrapped) else {
                tracing::warn!(kid = %stored.kid, "a signing key cannot be unwrapped with this master key");
                continue;
            };
            let Ok(decoding) = DecodingKey::from_ec_components(&stored.x, &stored.y) else {
                tracing::warn!(kid = %stored.kid, "a signing key's public half is unreadable; skipped");
                continue;
            };
            keys.push(LoadedKey {
                encoding: EncodingKey::from_ec_der(&der),
                decoding,
                stored,
            });
        }
        keys.sort_by_key(|k| std::cmp::Reverse(k.stored.created_at));
        *self.loaded.write().await = Loaded {
            keys,
            at: Instant::now(),
        };
        Ok(())
    }

    async fn reload_if_stale(&self) -> Result<(), AuthError> {
        if self.loaded.read().await.at.elapsed() > RELOAD_AFTER {
            self.reload().await?;
        }
        Ok(())
    }

    /// Makes and stores a new key; returns its kid.
    async fn create(&self) -> Result<String, AuthError> {
        let secret = loop {
            let mut bytes = [0u8; 32];
            rand::rng().fill_bytes(&mut bytes);
            // Almost every 32-byte string is a valid scalar; retry the rare one that is not.
            if let Ok(secret) = p256::SecretKey::from_slice(&bytes) {
                break secret;
            }
        };
        let der = secret
            .to_pkcs8_der()
            .map_err(|e| AuthError::Signing(format!("key encoding: {e}")))?;
        let point = secret.public_key().to_encoded_point(false);
        let (Some(x), Some(y)) = (point.x(), point.y()) else {
            return Err(AuthError::Signing(
                "a P-256 point without coordinates".into(),
            ));
        };
        let mut kid_bytes = [0u8; 12];
        rand::rng().fill_bytes(&mut kid_bytes);
        let kid = URL_SAFE_NO_PAD.encode(kid_bytes);
        let stored = StoredKey {
            wrapped_private: STANDARD
                .encode(self.vault.wrap_secret(&wrap_label(&kid), der.as_bytes())),
            x: URL_SAFE_NO_PAD.encode(x),
            y: URL_SAFE_NO_PAD.encode(y),
            created_at: now_millis(),
            retired_at: None,
            kid: kid.clone(),
        };
        self.put(&stored).await?;
        tracing::info!(%kid, "made a new token signing key");
        Ok(kid)
    }

    async fn put(&self, stored: &StoredKey) -> Result<(), AuthError> {
        let expires_at = stored.retired_at.map(|at| at + RETIRED_KEY_LIFETIME_MS);
        Ok(
            super::records::put_json(self.store.as_ref(), KIND, &stored.kid, stored, expires_at)
                .await?,
        )
    }

    /// Retires the signing key(s) in use and makes a new one; returns the new kid. Tokens
    /// signed before stay valid until they expire.
    pub async fn rotate(&self) -> Result<String, AuthError> {
        self.reload().await?;
        let now = now_millis();
        let active: Vec<StoredKey> = self
            .loaded
            .read()
            .await
            .keys
            .iter()
            .filter(|k| k.stored.retired_at.is_none())
            .map(|k| k.stored.clone())
            .collect();
        for mut key in active {
            key.retired_at = Some(now);
            self.put(&key).await?;
        }
        let kid = self.create().await?;
        self.reload().await?;
        Ok(kid)
    }

    /// The key to sign with: the newest one not retired.
    pub async fn signing_key(&self) -> Result<(String, EncodingKey), AuthError> {
        self.reload_if_stale().await?;
        let loaded = self.loaded.read().await;
        loaded
            .keys
            .iter()
            .find(|k| k.stored.retired_at.is_none())
            .or_else(|| loaded.keys.first())
            .map(|k| (k.stored.kid.clone(), k.encoding.clone()))
            .ok_or_else(|| AuthError::Signing("no usable signing key".into()))
    }

    /// The key that verifies tokens with `kid`, looking again once if it is not known (another
    /// replica may have rotated).
    pub async fn verifying_key(&self, kid: &str) -> Result<Option<DecodingKey>, AuthError> {
        let find = |loaded: &Loaded| {
            loaded
                .keys
                .iter()
                .find(|k| k.stored.kid == kid)
                .map(|k| k.decoding.clone())
        };
        if let Some(key) = find(&*self.loaded.read().await) {
            return Ok(Some(key));
        }
        let recently = self.loaded.read().await.at.elapsed() < Duration::from_secs(1);
        if !recently {
            self.reload().await?;
        }
        Ok(find(&*self.loaded.read().await))
    }

    /// The public keys as a JWKS (`GET /auth/jwks`).
    pub async fn jwks(&self) -> serde_json::Value {
        let _ = self.reload_if_stale().await;
        let keys: Vec<serde_json::Value> = self
            .loaded
            .read()
            .await
            .keys
            .iter()
            .map(|k| {
                serde_json::json!({
                    "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig",
                    "kid": k.stored.kid, "x": k.stored.x, "y": k.stored.y,
                })
            })
            .collect();
        serde_json::json!({ "keys": keys })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Scopes;
    use crate::auth::external::External;
    use crate::auth::tokens::{Grant, TokenService};
    use crate::index::embedded::EmbeddedIndex;
    use crate::vault::MasterKey;

    fn grant() -> Grant {
        Grant {
            subject: "s".into(),
            client_id: "c".into(),
            scopes: Scopes::parse("system/*.rs"),
            patient: None,
            fhir_user: None,
            family: None,
        }
    }

    /// An unreadable key record is skipped, and a key that cannot sign is the server's own
    /// failure (`Signing`, a 500), never the client's invalid token (a 401).
    #[tokio::test]
    async fn broken_keys_are_the_servers_fault() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn IndexStore> = Arc::new(
            EmbeddedIndex::open(
                dir.path(),
                crate::index::embedded::AtRestKey::from_bytes([5; 32]),
            )
            .unwrap(),
        );
        let vault = Arc::new(Vault::new(MasterKey::from_bytes([5; 32]), store.clone()));
        let garbage = crate::index::Record {
            kind: KIND.into(),
            key: "garbage".into(),
            value: b"{not json".to_vec(),
            expires_at: None,
        };
        store.put_record(garbage).await.unwrap();
        let keyring = Arc::new(Keyring::open(store.clone(), vault.clone()).await.unwrap());
        let tokens = TokenService::new(keyring.clone(), store.clone(), External::new(Vec::new()));
        let base = "http://fhir.example/fhir";
        let (token, _) = tokens.issue_access(base, &grant()).await.unwrap();
        assert!(tokens.verify(&token, base).await.is_ok());

        // The newest key holds bytes that are no private key at all.
        let good = keyring.loaded.read().await.keys[0].stored.clone();
        let broken = StoredKey {
            kid: "broken".into(),
            wrapped_private: STANDARD.encode(vault.wrap_secret(&wrap_label("broken"), b"no")),
            created_at: good.created_at + 1,
            ..good
        };
        keyring.put(&broken).await.unwrap();
        keyring.reload().await.unwrap();
        let refused = tokens.issue_access(base, &grant()).await;
        assert!(matches!(refused, Err(AuthError::Signing(_))), "{refused:?}");
    }
}
