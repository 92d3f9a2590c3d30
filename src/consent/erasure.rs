//! A patient's erasure on chain: the typed data the patient's wallet signs to ask that their
//! record be erased, and its relay to the registry's `recordErasure`, which checks the
//! signature against the patient's bound wallet and emits `Erased`. The server destroys the
//! data only once that record is on chain (`repository::erase`), so every erasure is provably
//! the patient's wish, and none can happen without one.

use alloy::primitives::{B256, U256};
use serde_json::Value;

use super::relay::{Relayed, hex_key};
use super::typed::{self, parse_signature};
use super::{Consent, ConsentError};
use crate::ledger::bindings::{ConsentRegistry, typed as messages};

/// Whether the erasure was recorded by this call or had been before (a retried request, or
/// one that another replica finished).
#[derive(Clone, Debug)]
pub enum Recorded {
    Now(Relayed),
    Before { at: u64 },
}

impl Consent {
    fn erasure_key(patient: B256) -> String {
        hex_key(&[b"erase", patient.as_slice()])
    }

    /// When Patient `patient_id`'s erasure was recorded on chain (seconds), if it was.
    pub async fn erased_at(&self, patient_id: &str) -> Result<Option<u64>, ConsentError> {
        let patient = self.identities.patient(patient_id);
        let at = self.view(ConsentRegistry::erasedAtCall { patient }).await?;
        Ok((at != 0).then_some(at))
    }

    /// The typed data by which Patient `patient_id`'s wallet asks for their erasure.
    pub async fn prepare_erasure(&self, patient_id: &str) -> Result<Value, ConsentError> {
        let patient = self.identities.patient(patient_id);
        self.bound_wallet(patient, patient_id).await?;
        if let Some(at) = self.erased_at(patient_id).await? {
            return Err(ConsentError::Conflict(format!(
                "Patient/{patient_id}'s erasure was recorded on chain at {at}"
            )));
        }
        let prepared = self.prepare(Self::erasure_key(patient), patient).await?;
        let message = messages::Erase {
            patient,
            nonce: prepared.nonce,
            deadline: U256::from(prepared.deadline),
        };
        Ok(typed::erase_json(
            self.ledger.chain_id(),
            self.registry,
            &message,
        ))
    }

    /// Records on chain that Patient `patient_id` asked for their erasure, with the signature
    /// their wallet made of the prepared typed data; a no-op if it is recorded already.
    pub async fn record_erasure(
        &self,
        patient_id: &str,
        signature: &str,
    ) -> Result<Recorded, ConsentError> {
        parse_signature(signature)?;
        if let Some(at) = self.erased_at(patient_id).await? {
            return Ok(Recorded::Before { at });
        }
        let patient = self.identities.patient(patient_id);
        let wallet = self.bound_wallet(patient, patient_id).await?;
        let key = Self::erasure_key(patient);
        let prepared = self.prepared(&key, patient, "erasure").await?;
        let message = messages::Erase {
            patient,
            nonce: prepared.nonce,
            deadline: U256::from(prepared.deadline),
        };
        let signature =
            self.check_signer(&message, signature, wallet, "the patient's bound wallet")?;
        let receipt = self
            .send(ConsentRegistry::recordErasureCall {
                patient,
                deadline: message.deadline,
                signature,
            })
            .await?;
        self.forget(&key).await;
        Ok(Recorded::Now(Relayed {
            tx_hash: receipt.tx_hash,
            block_number: receipt.block_number,
        }))
    }
}
