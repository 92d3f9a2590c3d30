//! Keys and sealing: the only room that ever holds plaintext next to a key.
//!
//! - **Keys.** Every patient has a 32-byte data key; resources outside any patient compartment
//!   use the `system` key. Data keys are stored only wrapped (XChaCha20-Poly1305 under the master
//!   key, AAD = owner) in the IndexStore, and cached unwrapped in memory. Destroying a patient's
//!   wrapped key makes every version sealed under it unreadable (crypto-shredding).
//! - **Sealing.** Each resource version is sealed with its owner's data key, a fresh random
//!   24-byte nonce, and AAD = `Type/id/_history/version`, so a blob cannot be replayed as another
//!   resource or another version. The envelope layout is in ARCHITECTURE.md.
//! - **Blobs.** The BlobStore seam (`blob`) with its `local` implementation; CIDs (`cid`).
//!
//! Must not decide *who* may read: `consent` and `auth` do; the vault only does what it is told.

pub mod batch;
pub mod blob;
pub mod bounded;
pub mod cached;
pub mod cid;
pub mod ipfs;
pub mod local;
pub mod master;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};

use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::index::{IndexError, IndexStore};
pub use master::MasterKey;

/// Envelope magic and format version: `IHS1` = IntelliHealth sealed blob, layout 1.
const MAGIC: &[u8; 4] = b"IHS1";
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;

pub use crate::search::compartment::SYSTEM_OWNER;

/// A wrapped value the index keeps so a server can tell, before it writes anything, whether its
/// master key is the one the stored data keys were wrapped with. (Not a patient or `system`:
/// an id cannot contain a `/` after the first.)
const MASTER_KEY_CHECK_OWNER: &str = "intellihealth/master-key-check";

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("the data key of {0} has been destroyed; the content is unrecoverable")]
    KeyDestroyed(String),
    #[error("sealed content failed authentication (wrong key, or altered bytes)")]
    Tampered,
    #[error("the content does not match the digest the index holds for it")]
    DigestMismatch,
    #[error("the key store failed: {0}")]
    KeyStore(#[from] IndexError),
    #[error(
        "the master key is not the one this index store's data keys were wrapped with: give the \
         server the master key the store was created with (INTELLIHEALTH_MASTER_KEY or \
         --master-key-file); every replica must use the same one"
    )]
    MasterKeyMismatch,
}

/// A data key, wiped from memory when the last reference goes.
struct DataKey(Zeroizing<[u8; 32]>);

/// A key that exists only in this process's memory, for files the server keeps for a short
/// while (Bulk Data export output): what it seals cannot be opened after the process ends, so
/// health data never sits readable on disk, even in a file left behind by a crash.
pub struct EphemeralKey(DataKey);

impl EphemeralKey {
    pub fn generate() -> EphemeralKey {
        let mut key = Zeroizing::new([0u8; 32]);
        rand::rng().fill_bytes(key.as_mut_slice());
        EphemeralKey(DataKey(key))
    }

    /// The sealed envelope (layout 1, as every blob) of `plaintext` bound to `aad`.
    pub fn seal(&self, aad: &str, plaintext: &[u8]) -> Result<Vec<u8>, VaultError> {
        seal_with(&self.0, aad, plaintext).map(|sealed| sealed.envelope)
    }

    pub fn open(&self, aad: &str, envelope: &[u8]) -> Result<Vec<u8>, VaultError> {
        open_with(&self.0, aad, envelope, None)
    }
}

pub struct Vault {
    master: MasterKey,
    /// The key store: the IndexStore (bounded by the backend timeout where `app` builds it).
    keys: Arc<dyn IndexStore>,
    /// Unwrapped data keys by owner, with when each was read: unwrapping costs an AEAD open
    /// and an index read. An entry is read again after `KEY_RECHECK`, so a key destroyed by
    /// another replica (an erasure) stops being used here within that time.
    cache: RwLock<HashMap<String, (Arc<DataKey>, std::time::Instant)>>,
}

/// How long an unwrapped data key is used before the store is asked whether it still exists.
const KEY_RECHECK: std::time::Duration = std::time::Duration::from_secs(30);

/// One owner's data key, ready to seal with (as `Vault::seal` does); wiped when dropped.
#[derive(Clone)]
pub struct Sealer(Arc<DataKey>);

impl Sealer {
    pub fn seal(&self, aad: &str, plaintext: &[u8]) -> Result<Sealed, VaultError> {
        seal_with(&self.0, aad, plaintext)
    }
}

/// A sealed resource version, ready for the BlobStore, with the digest the index keeps.
pub struct Sealed {
    pub envelope: Vec<u8>,
    pub digest: String,
}

impl Vault {
    pub fn new(master: MasterKey, keys: Arc<dyn IndexStore>) -> Vault {
        Vault {
            master,
            keys,
            cache: RwLock::new(HashMap::new()),
        }
    }

    /// Checks that the master key can unwrap what the index holds, recording a check value on
    /// the first start. Run at start-up, so a wrong key stops the server before any write.
    pub async fn verify_master_key(&self) -> Result<(), VaultError> {
        let owner = MASTER_KEY_CHECK_OWNER;
        let wrapped = match self.keys.data_key(owner).await? {
            Some(wrapped) => wrapped,
            None => {
                let check = self.master.wrap(owner, &[0u8; 32]);
                self.keys.insert_data_key(owner, check).await?
            }
        };
        match self.master.unwrap(owner, &wrapped) {
            Some(_) => Ok(()),
            None => Err(VaultError::MasterKeyMismatch),
        }
    }

    /// A key of the server's own for `purpose`, derived from the master key (so kept like it).
    pub fn derive(&self, purpose: &str) -> zeroize::Zeroizing<[u8; 32]> {
        self.master.derive(purpose)
    }

    /// Wraps a secret of the server's own (a token signing key) under the master key, bound to
    /// `label`, for storage in the index.
    pub fn wrap_secret(&self, label: &str, secret: &[u8]) -> Vec<u8> {
        self.master.wrap(label, secret)
    }

    /// Unwraps a secret made by `wrap_secret` with the same label.
    pub fn unwrap_secret(&self, label: &str, wrapped: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        self.master.unwrap_bytes(label, wrapped)
    }

    /// Seals `plaintext` under `owner`'s data key (made on first use), bound to `aad`.
    pub async fn seal(
        &self,
        owner: &str,
        aad: &str,
        plaintext: Arc<Vec<u8>>,
    ) -> Result<Sealed, VaultError> {
        let key = self.data_key(owner, true).await?;
        let aad = aad.to_owned();
        crate::cpu::run(plaintext.len(), move || seal_with(&key, &aad, &plaintext)).await
    }

    /// `owner`'s data key (made on first use), for sealing many versions off the async
    /// workers without a lookup each.
    pub async fn sealer(&self, owner: &str) -> Result<Sealer, VaultError> {
        Ok(Sealer(self.data_key(owner, true).await?))
    }

    /// Opens an envelope sealed by `seal` with the same owner and `aad`, and checks the content
    /// against the digest the index holds.
    pub async fn open(
        &self,
        owner: &str,
        aad: &str,
        envelope: Vec<u8>,
        expected_digest: Option<&str>,
    ) -> Result<Vec<u8>, VaultError> {
        let key = self.data_key(owner, false).await?;
        let aad = aad.to_owned();
        let expected = expected_digest.map(str::to_owned);
        crate::cpu::run(envelope.len(), move || {
            open_with(&key, &aad, &envelope, expected.as_deref())
        })
        .await
    }

    /// Forgets `owner`'s key here at once (it was just destroyed in the store).
    pub fn forget(&self, owner: &str) {
        if let Ok(mut cache) = self.cache.write() {
            cache.remove(owner);
        }
    }

    async fn data_key(&self, owner: &str, create: bool) -> Result<Arc<DataKey>, VaultError> {
        let cached = self.cache.read().ok().and_then(|c| c.get(owner).cloned());
        if let Some((key, read_at)) = cached
            && read_at.elapsed() < KEY_RECHECK
        {
            return Ok(key);
        }
        let wrapped = match self.keys.data_key(owner).await? {
            Some(wrapped) => wrapped,
            None if create => {
                let mut fresh = Zeroizing::new([0u8; 32]);
                rand::rng().fill_bytes(fresh.as_mut_slice());
                let wrapped = self.master.wrap(owner, fresh.as_slice());
                // Another replica may have won the race: use whichever key the store kept.
                self.keys.insert_data_key(owner, wrapped).await?
            }
            None => return Err(VaultError::KeyDestroyed(owner.to_owned())),
        };
        // An erased owner's key is an empty value, never replaced by a new one.
        if wrapped.is_empty() {
            self.forget(owner);
            return Err(VaultError::KeyDestroyed(owner.to_owned()));
        }
        let raw = self
            .master
            .unwrap(owner, &wrapped)
            .ok_or(VaultError::Tampered)?;
        let key = Arc::new(DataKey(raw));
        if let Ok(mut cache) = self.cache.write() {
            cache.insert(owner.to_owned(), (key.clone(), std::time::Instant::now()));
        }
        Ok(key)
    }
}

fn seal_with(key: &DataKey, aad: &str, plaintext: &[u8]) -> Result<Sealed, VaultError> {
    let mut nonce = [0u8; NONCE_LEN];
    rand::rng().fill_bytes(&mut nonce);
    let ciphertext = cipher_for(&key.0)
        .encrypt(
            &XNonce::from(nonce),
            Payload {
                msg: plaintext,
                aad: aad.as_bytes(),
            },
        )
        .map_err(|_| VaultError::Tampered)?;
    let mut envelope = Vec::with_capacity(MAGIC.len() + NONCE_LEN + ciphertext.len());
    envelope.extend_from_slice(MAGIC);
    envelope.extend_from_slice(&nonce);
    envelope.extend_from_slice(&ciphertext);
    Ok(Sealed {
        envelope,
        digest: digest(key, plaintext),
    })
}

fn open_with(
    key: &DataKey,
    aad: &str,
    envelope: &[u8],
    expected_digest: Option<&str>,
) -> Result<Vec<u8>, VaultError> {
    if envelope.len() < MAGIC.len() + NONCE_LEN + TAG_LEN || &envelope[..4] != MAGIC {
        return Err(VaultError::Tampered);
    }
    let (nonce, ciphertext) = envelope[4..].split_at(NONCE_LEN);
    let nonce = XNonce::try_from(nonce).map_err(|_| VaultError::Tampered)?;
    let plaintext = cipher_for(&key.0)
        .decrypt(
            &nonce,
            Payload {
                msg: ciphertext,
                aad: aad.as_bytes(),
            },
        )
        .map_err(|_| VaultError::Tampered)?;
    if expected_digest.is_some_and(|d| d != digest(key, &plaintext)) {
        return Err(VaultError::DigestMismatch);
    }
    Ok(plaintext)
}

/// The AEAD for a 32-byte key (the length is fixed by the type, so this cannot fail).
pub(crate) fn cipher_for(key: &[u8; 32]) -> XChaCha20Poly1305 {
    XChaCha20Poly1305::new(&(*key).into())
}

fn digest(key: &DataKey, plaintext: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key.0.as_slice())
        .expect("HMAC takes keys of any length");
    mac.update(plaintext);
    let tag = mac.finalize().into_bytes();
    tag.iter().map(|b| format!("{b:02x}")).collect()
}

/// The AAD that binds a sealed blob to one version of one resource.
pub fn aad_for(resource_type: &str, id: &str, version: u64) -> String {
    format!("{resource_type}/{id}/_history/{version}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::embedded::EmbeddedIndex;

    async fn vault() -> (tempfile::TempDir, Vault) {
        let dir = tempfile::tempdir().unwrap();
        let index = Arc::new(
            EmbeddedIndex::open(
                dir.path(),
                crate::index::embedded::AtRestKey::from_bytes([5; 32]),
            )
            .unwrap(),
        );
        (dir, Vault::new(MasterKey::from_bytes([7; 32]), index))
    }

    #[tokio::test]
    async fn seals_and_opens_only_under_the_same_binding() {
        let (_dir, vault) = vault().await;
        let aad = aad_for("Patient", "a", 1);
        let sealed = vault
            .seal("Patient/a", &aad, Arc::new(b"{\"x\":1}".to_vec()))
            .await
            .unwrap();
        assert!(!sealed.envelope.windows(7).any(|w| w == b"{\"x\":1}"));
        let opened = vault
            .open(
                "Patient/a",
                &aad,
                sealed.envelope.clone(),
                Some(&sealed.digest),
            )
            .await
            .unwrap();
        assert_eq!(opened, b"{\"x\":1}");

        // Replayed as another version, another resource, or under another owner's key: refused.
        let replay = aad_for("Patient", "a", 2);
        assert!(matches!(
            vault
                .open("Patient/a", &replay, sealed.envelope.clone(), None)
                .await,
            Err(VaultError::Tampered)
        ));
        vault
            .seal("Patient/b", &aad, Arc::new(b"other".to_vec()))
            .await
            .unwrap();
        assert!(matches!(
            vault
                .open("Patient/b", &aad, sealed.envelope.clone(), None)
                .await,
            Err(VaultError::Tampered)
        ));
        assert!(matches!(
            vault
                .open("Patient/a", &aad, sealed.envelope.clone(), Some("00"))
                .await,
            Err(VaultError::DigestMismatch)
        ));
        assert!(matches!(
            vault
                .open("Patient/nobody", &aad, sealed.envelope.clone(), None)
                .await,
            Err(VaultError::KeyDestroyed(_))
        ));
    }

    #[tokio::test]
    async fn a_different_master_key_is_refused_before_any_write() {
        let dir = tempfile::tempdir().unwrap();
        let index: Arc<dyn IndexStore> = Arc::new(
            EmbeddedIndex::open(
                dir.path(),
                crate::index::embedded::AtRestKey::from_bytes([5; 32]),
            )
            .unwrap(),
        );
        let vault = Vault::new(MasterKey::from_bytes([7; 32]), index.clone());
        vault.verify_master_key().await.unwrap();
        vault.verify_master_key().await.unwrap();
        let other = Vault::new(MasterKey::from_bytes([8; 32]), index);
        assert!(matches!(
            other.verify_master_key().await,
            Err(VaultError::MasterKeyMismatch)
        ));
    }

    #[tokio::test]
    async fn every_seal_uses_a_fresh_nonce() {
        let (_dir, vault) = vault().await;
        let a = vault
            .seal("system", "x", Arc::new(b"same".to_vec()))
            .await
            .unwrap();
        let b = vault
            .seal("system", "x", Arc::new(b"same".to_vec()))
            .await
            .unwrap();
        assert_ne!(a.envelope, b.envelope);
        assert_eq!(a.digest, b.digest);
    }
}
