//! The master key: wraps and unwraps data keys, and derives the embedded index's at-rest key;
//! nothing else.
//!
//! Where it comes from, in order: `INTELLIHEALTH_MASTER_KEY` (64 hex digits or base64 of 32
//! bytes), a key file named by `--master-key-file`, or `DATA_DIR/master.key`, generated on first
//! start with mode 0600. It is never logged, never stored in the index, and never leaves this
//! module except as the wrapping of a data key.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use base64::Engine;
use chacha20poly1305::XNonce;
use chacha20poly1305::aead::{Aead, Payload};
use rand::RngCore;
use zeroize::Zeroizing;

use super::cipher_for;

const WRAP_NONCE_LEN: usize = 24;

pub struct MasterKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    pub fn from_bytes(bytes: [u8; 32]) -> MasterKey {
        MasterKey(Zeroizing::new(bytes))
    }

    /// Parses 64 hex digits or standard base64 of exactly 32 bytes.
    pub fn parse(text: &str) -> Result<MasterKey, String> {
        let text = text.trim();
        let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            (0..32)
                .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16))
                .collect::<Result<Vec<u8>, _>>()
                .map_err(|e| e.to_string())?
        } else {
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|_| {
                    "the master key must be 64 hex digits or base64 of 32 bytes".to_owned()
                })?
        };
        let bytes = Zeroizing::new(bytes);
        let array: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| format!("the master key must be 32 bytes, not {}", bytes.len()))?;
        Ok(MasterKey::from_bytes(array))
    }

    /// Reads the key file at `path`, or creates it (mode 0600) with a fresh random key.
    pub fn load_or_create(path: &Path) -> Result<MasterKey, String> {
        let failed = |e: std::io::Error| format!("{}: {e}", path.display());
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let mode = std::fs::metadata(path).map(|m| m.permissions().mode() & 0o077);
                if matches!(mode, Ok(bits) if bits != 0) {
                    tracing::warn!(path = %path.display(), "the master key file is readable by group or others; chmod 600 it");
                }
                MasterKey::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = Zeroizing::new([0u8; 32]);
                rand::rng().fill_bytes(key.as_mut_slice());
                match create_key_file(path, &key) {
                    Ok(()) => {
                        tracing::info!(path = %path.display(), "generated a new master key");
                        Ok(MasterKey(key))
                    }
                    // Another process made the key first: use its key.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        MasterKey::load_or_create(path)
                    }
                    Err(e) => Err(failed(e)),
                }
            }
            Err(e) => Err(failed(e)),
        }
    }

    /// A key of its own for `purpose` (HMAC-SHA256 of the purpose under the master key): the
    /// same master key always derives the same key, and no derived key reveals another.
    pub fn derive(&self, purpose: &str) -> Zeroizing<[u8; 32]> {
        use hmac::{Hmac, Mac};
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(self.0.as_slice())
            .expect("HMAC takes a key of any length");
        mac.update(b"intellihealth/derive/");
        mac.update(purpose.as_bytes());
        Zeroizing::new(mac.finalize().into_bytes().into())
    }

    /// Wraps a data key for `owner`: nonce ‖ XChaCha20-Poly1305(key), AAD binding the owner so a
    /// wrapped key cannot be moved to another patient.
    pub fn wrap(&self, owner: &str, data_key: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; WRAP_NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = cipher_for(&self.0)
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: data_key,
                    aad: wrap_aad(owner).as_bytes(),
                },
            )
            .unwrap_or_default();
        [nonce.as_slice(), sealed.as_slice()].concat()
    }

    /// Unwraps any secret made by `wrap` for the same owner (not only 32-byte data keys).
    pub fn unwrap_bytes(&self, owner: &str, wrapped: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        if wrapped.len() <= WRAP_NONCE_LEN {
            return None;
        }
        let (nonce, sealed) = wrapped.split_at(WRAP_NONCE_LEN);
        let nonce = XNonce::try_from(nonce).ok()?;
        cipher_for(&self.0)
            .decrypt(
                &nonce,
                Payload {
                    msg: sealed,
                    aad: wrap_aad(owner).as_bytes(),
                },
            )
            .ok()
            .map(Zeroizing::new)
    }

    /// Unwraps a data key made by `wrap` for the same owner: `unwrap_bytes`, 32 bytes long.
    pub fn unwrap(&self, owner: &str, wrapped: &[u8]) -> Option<Zeroizing<[u8; 32]>> {
        let plain = self.unwrap_bytes(owner, wrapped)?;
        let array: [u8; 32] = plain.as_slice().try_into().ok()?;
        Some(Zeroizing::new(array))
    }
}

/// Writes `key` as hex to a new file at `path`, mode 0600. Written whole beside its final
/// name, then linked into place: a crash leaves no key file at all rather than an empty one
/// every later start would refuse, and a link (unlike a rename) never replaces a key another
/// process made first (that case fails with `AlreadyExists`).
fn create_key_file(path: &Path, key: &[u8; 32]) -> std::io::Result<()> {
    let hex = Zeroizing::new(key.iter().map(|b| format!("{b:02x}")).collect::<String>());
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let staging = dir.join(format!(
        ".master-key-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&staging)
        .and_then(|mut file| {
            file.write_all(hex.as_bytes())?;
            file.sync_all()
        })
        .and_then(|()| std::fs::hard_link(&staging, path));
    let _ = std::fs::remove_file(&staging);
    written?;
    // The new name is durable once its directory is; the key is usable either way.
    if let Ok(dir) = std::fs::File::open(dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

fn wrap_aad(owner: &str) -> String {
    format!("intellihealth data key for {owner}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hex_and_base64_and_refuses_the_rest() {
        let hex = "00".repeat(31) + "ff";
        assert!(MasterKey::parse(&hex).is_ok());
        assert!(
            MasterKey::parse(&base64::engine::general_purpose::STANDARD.encode([1u8; 32])).is_ok()
        );
        assert!(MasterKey::parse("short").is_err());
        assert!(
            MasterKey::parse(&base64::engine::general_purpose::STANDARD.encode([1u8; 16])).is_err()
        );
    }

    #[test]
    fn wrapped_keys_are_bound_to_their_owner() {
        let master = MasterKey::from_bytes([3; 32]);
        let wrapped = master.wrap("Patient/a", &[9; 32]);
        assert_eq!(*master.unwrap("Patient/a", &wrapped).unwrap(), [9; 32]);
        assert!(master.unwrap("Patient/b", &wrapped).is_none());
        assert!(
            MasterKey::from_bytes([4; 32])
                .unwrap("Patient/a", &wrapped)
                .is_none()
        );
    }

    #[test]
    fn creates_a_private_key_file_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let first = MasterKey::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = MasterKey::load_or_create(&path).unwrap();
        assert_eq!(*first.0, *again.0);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no staging file is left beside the key");
    }

    #[test]
    fn processes_starting_together_agree_on_one_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let keys: Vec<[u8; 32]> = std::thread::scope(|scope| {
            let starts: Vec<_> = (0..8)
                .map(|_| scope.spawn(|| *MasterKey::load_or_create(&path).unwrap().0))
                .collect();
            starts.into_iter().map(|s| s.join().unwrap()).collect()
        });
        assert!(keys.iter().all(|k| *k == keys[0]));
    }
}
