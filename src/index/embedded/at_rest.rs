//! Sealing of what the embedded index keeps about a resource's content: its search entries and
//! its search keys hold names, codes and dates taken from the resource, so on disk they are
//! XChaCha20-Poly1305 ciphertext under a key derived from the master key, bound (as AAD) to
//! the table and row they belong to. `index.redb` then holds nothing readable from a
//! patient's record, as the blob directory does not. (MongoDB cannot search ciphertext: its
//! keys and entries are plaintext and sit behind the database's own access control and
//! encryption at rest; see ARCHITECTURE.md.)

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use zeroize::Zeroizing;

const NONCE_LEN: usize = 24;

/// The key the embedded index seals its content-derived values with.
pub struct AtRestKey(Zeroizing<[u8; 32]>);

impl AtRestKey {
    pub fn new(bytes: Zeroizing<[u8; 32]>) -> AtRestKey {
        AtRestKey(bytes)
    }

    pub fn from_bytes(bytes: [u8; 32]) -> AtRestKey {
        AtRestKey(Zeroizing::new(bytes))
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(&(*self.0).into())
    }

    /// `nonce || ciphertext` of `plaintext`, bound to `aad`.
    pub(super) fn seal(&self, aad: &str, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = self
            .cipher()
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: aad.as_bytes(),
                },
            )
            .unwrap_or_default();
        [nonce.as_slice(), sealed.as_slice()].concat()
    }

    /// The plaintext of `sealed`, or `None` when it was not sealed by this key for `aad`.
    pub(super) fn open(&self, aad: &str, sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < NONCE_LEN {
            return None;
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let nonce = XNonce::try_from(nonce).ok()?;
        self.cipher()
            .decrypt(
                &nonce,
                Payload {
                    msg: ciphertext,
                    aad: aad.as_bytes(),
                },
            )
            .ok()
    }
}

pub(super) fn entries_aad(rt: &str, id: &str, version: u64) -> String {
    format!("entries/{rt}/{id}/{version}")
}

pub(super) fn keys_aad(rt: &str, id: &str) -> String {
    format!("keys/{rt}/{id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_only_for_its_own_row_and_key() {
        let key = AtRestKey::new(Zeroizing::new([7; 32]));
        let sealed = key.seal(&keys_aad("Patient", "a"), b"name=smith");
        assert!(!sealed.windows(5).any(|w| w == b"smith"));
        assert_eq!(
            key.open(&keys_aad("Patient", "a"), &sealed).as_deref(),
            Some(b"name=smith".as_slice())
        );
        assert_eq!(key.open(&keys_aad("Patient", "b"), &sealed), None);
        let other = AtRestKey::new(Zeroizing::new([8; 32]));
        assert_eq!(other.open(&keys_aad("Patient", "a"), &sealed), None);
        assert_eq!(key.open(&keys_aad("Patient", "a"), b"short"), None);
    }
}
