//! Who someone is on chain: keyed hashes, never ids.
//!
//! Anyone can read a chain, and the ids a FHIR server hands out (`Patient/123`, a client id)
//! are guessable, so a plain hash of one would be a pseudonym anyone could reverse by trying
//! ids. Each identity is instead keccak256 under a secret of this deployment (derived from the
//! master key, so kept like it): `keccak256(secret ‖ be32(len(base)) ‖ base ‖ tag ‖ value)`,
//! with `base` the server's FHIR base URL and `tag` `R` for a FHIR reference (`Patient/123`,
//! `Practitioner/abc`) or `C` for an OAuth client id. keccak256 is not open to length
//! extension, so a secret prefix makes it a MAC. An observer of the chain learns that some
//! identity granted another some types and actions until some time, and how many grants one
//! identity holds; not who either is, nor which other deployments they appear in.

use alloy::primitives::{B256, keccak256};
use zeroize::Zeroizing;

/// The deployment's identity key (from `MasterKey::derive(IDENTITY_PURPOSE)`).
pub const IDENTITY_PURPOSE: &str = "consent-identity";

pub struct Identities {
    secret: Zeroizing<[u8; 32]>,
    base_url: String,
}

impl Identities {
    /// Identities under `secret` for the server at `base_url` (a trailing `/` is ignored, so
    /// `…/fhir` and `…/fhir/` name the same patients).
    pub fn new(secret: Zeroizing<[u8; 32]>, base_url: &str) -> Identities {
        Identities {
            secret,
            base_url: base_url.trim_end_matches('/').to_owned(),
        }
    }

    fn hash(&self, tag: u8, value: &str) -> B256 {
        let mut preimage = Vec::with_capacity(32 + 4 + self.base_url.len() + 1 + value.len());
        preimage.extend_from_slice(self.secret.as_slice());
        preimage.extend_from_slice(&(self.base_url.len() as u32).to_be_bytes());
        preimage.extend_from_slice(self.base_url.as_bytes());
        preimage.push(tag);
        preimage.extend_from_slice(value.as_bytes());
        let hash = keccak256(&preimage);
        zeroize::Zeroize::zeroize(&mut preimage);
        hash
    }

    /// A patient, by the Patient's id.
    pub fn patient(&self, id: &str) -> B256 {
        self.hash(b'R', &format!("Patient/{id}"))
    }

    /// A person or organisation by FHIR reference (`Practitioner/abc`), as a `fhirUser` names
    /// them.
    pub fn reference(&self, reference: &str) -> B256 {
        self.hash(b'R', reference)
    }

    /// An application, by its OAuth client id.
    pub fn client(&self, client_id: &str) -> B256 {
        self.hash(b'C', client_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn under(secret: u8, base: &str) -> Identities {
        Identities::new(Zeroizing::new([secret; 32]), base)
    }

    #[test]
    fn identities_are_keyed_and_kept_apart() {
        let ours = under(1, "https://ehr.example/fhir");
        let p = ours.patient("123");
        assert_eq!(
            p,
            ours.reference("Patient/123"),
            "the same patient either way"
        );
        assert_eq!(p, under(1, "https://ehr.example/fhir/").patient("123"));
        // Not a plain hash of a guessable id.
        assert_ne!(p, keccak256(b"Patient/123"));
        assert_ne!(p, keccak256(b"https://ehr.example/fhir/Patient/123"));
        // Another deployment's secret, another server, another kind of identity: all differ.
        assert_ne!(p, under(2, "https://ehr.example/fhir").patient("123"));
        assert_ne!(p, under(1, "https://other.example/fhir").patient("123"));
        assert_ne!(ours.client("Patient/123"), ours.reference("Patient/123"));
        // The length prefix keeps base and value from sliding into each other.
        assert_ne!(
            under(1, "https://a/fhir").reference("XPatient/1"),
            under(1, "https://a/fhirX").reference("Patient/1")
        );
    }
}
