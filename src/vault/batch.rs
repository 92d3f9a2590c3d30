//! Batch blobs: many sealed envelopes in one blob, so a burst of small versions (AuditEvents)
//! costs one BlobStore put instead of one each. Every entry is sealed on its own (its own
//! nonce, its own AAD and digest), so an entry is opened exactly like a blob of its own; the
//! batch only frames them. Layout (all integers little-endian u32):
//!
//! `IHB1` · count · count lengths · the envelopes, in order.
//!
//! A version stored so names the batch's CID and its position (`VersionRecord::batch_entry`).

use super::VaultError;

const MAGIC: &[u8; 4] = b"IHB1";

/// Frames `envelopes` as one blob.
pub fn frame<E: AsRef<[u8]>>(envelopes: &[E]) -> Vec<u8> {
    let total: usize = envelopes.iter().map(|e| e.as_ref().len()).sum();
    let mut blob = Vec::with_capacity(8 + 4 * envelopes.len() + total);
    blob.extend_from_slice(MAGIC);
    blob.extend_from_slice(&(envelopes.len() as u32).to_le_bytes());
    for envelope in envelopes {
        blob.extend_from_slice(&(envelope.as_ref().len() as u32).to_le_bytes());
    }
    for envelope in envelopes {
        blob.extend_from_slice(envelope.as_ref());
    }
    blob
}

/// The envelope at `position` of a blob made by `frame`. A malformed blob reads as tampered:
/// its CID was verified, so only a bug or a forged index row can lead here.
pub fn entry(blob: &[u8], position: u32) -> Result<&[u8], VaultError> {
    let word = |at: usize| -> Result<usize, VaultError> {
        blob.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or(VaultError::Tampered)
    };
    if blob.get(..4) != Some(MAGIC.as_slice()) {
        return Err(VaultError::Tampered);
    }
    let count = word(4)?;
    let position = position as usize;
    if position >= count {
        return Err(VaultError::Tampered);
    }
    let mut offset = 8usize
        .checked_add(count.checked_mul(4).ok_or(VaultError::Tampered)?)
        .ok_or(VaultError::Tampered)?;
    for i in 0..position {
        offset = offset
            .checked_add(word(8 + 4 * i)?)
            .ok_or(VaultError::Tampered)?;
    }
    let len = word(8 + 4 * position)?;
    let end = offset.checked_add(len).ok_or(VaultError::Tampered)?;
    blob.get(offset..end).ok_or(VaultError::Tampered)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_reads_back_and_a_bad_frame_is_refused() {
        let envelopes = vec![b"first".to_vec(), Vec::new(), b"third entry".to_vec()];
        let blob = frame(&envelopes);
        for (i, envelope) in envelopes.iter().enumerate() {
            assert_eq!(entry(&blob, i as u32).unwrap(), envelope.as_slice());
        }
        assert!(entry(&blob, 3).is_err());
        assert!(entry(&blob[..blob.len() - 1], 2).is_err());
        assert!(entry(b"IHS1\x01\x00\x00\x00", 0).is_err());
        let mut huge = blob.clone();
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(entry(&huge, 1).is_err());
    }
}
