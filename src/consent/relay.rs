//! Preparing what a patient's wallet signs, and relaying what it signed.
//!
//! `prepare_*` reads the patient's nonce from the registry, sets a deadline, keeps both in a
//! short-lived record keyed by what is being signed, and returns the typed data. The matching
//! relay finds that record again from the same request (so a client sends back only the
//! signature), checks the signer against the patient's bound wallet before spending gas,
//! sends the transaction as the registrar, brings the consent cache up to the block it landed
//! in (so the next request is judged by it), and removes the record: a replay finds nothing.
//! The chain checks everything again; the server's checks only give clear errors sooner.

use alloy::primitives::{Address, B256, Bytes, U256, keccak256};
use alloy::sol_types::{SolCall, SolEvent};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::resource::{Draft, Grantee};
use super::typed::{self, parse_signature, signer_of};
use super::{Consent, ConsentError, now_secs};
use crate::index::Record;
use crate::ledger::bindings::{ConsentRegistry, consent_domain, typed as messages};

/// How long a prepared message may be signed and sent back.
pub const PREPARED_FOR_SECS: u64 = 3_600;
const PREPARED: &str = "consent-prepared";
/// Patient identity hash → Patient id, recorded when a wallet is bound (every grant needs one,
/// and only the registrar can bind), so a grant found on chain names its patient.
const PATIENTS: &str = "consent-patient";
/// Grantee identity hash → who, recorded when a grant to them is prepared.
const GRANTEES: &str = "consent-grantee";

#[derive(Serialize, Deserialize)]
pub(super) struct Prepared {
    pub(super) nonce: U256,
    pub(super) deadline: u64,
}

/// Where a relayed transaction landed.
#[derive(Clone, Debug)]
pub struct Relayed {
    pub tx_hash: B256,
    pub block_number: u64,
}

#[derive(Serialize, Deserialize)]
enum StoredGrantee {
    Reference(String),
    Client(String),
}

pub(super) fn hex_key(parts: &[&[u8]]) -> String {
    let mut preimage = Vec::new();
    for part in parts {
        preimage.extend_from_slice(&(part.len() as u32).to_be_bytes());
        preimage.extend_from_slice(part);
    }
    alloy::hex::encode(keccak256(&preimage))
}

impl Consent {
    fn domain(&self) -> alloy::sol_types::Eip712Domain {
        consent_domain(self.ledger.chain_id(), self.registry)
    }

    pub(super) async fn view<C: SolCall>(&self, call: C) -> Result<C::Return, ConsentError> {
        let output = self
            .ledger
            .call(self.registry, call.abi_encode().into())
            .await?;
        C::abi_decode_returns(&output)
            .map_err(|e| ConsentError::Unavailable(format!("the registry's answer: {e}")))
    }

    pub(super) async fn send<C: SolCall>(
        &self,
        call: C,
    ) -> Result<crate::ledger::Receipt, ConsentError> {
        let receipt = self
            .ledger
            .transact(self.registry, Bytes::from(call.abi_encode()))
            .await?;
        self.catch_up().await?;
        Ok(receipt)
    }

    pub(super) async fn prepare(
        &self,
        key: String,
        patient: B256,
    ) -> Result<Prepared, ConsentError> {
        let nonce = self.view(ConsentRegistry::noncesCall { patient }).await?;
        let prepared = Prepared {
            nonce,
            deadline: now_secs() + PREPARED_FOR_SECS,
        };
        self.store
            .put_record(Record {
                kind: PREPARED.into(),
                key,
                value: serde_json::to_vec(&prepared).unwrap_or_default(),
                expires_at: Some((prepared.deadline * 1000) as i64),
            })
            .await?;
        Ok(prepared)
    }

    /// The prepared message under `key`, still current: unexpired, and the patient's nonce
    /// not moved since.
    pub(super) async fn prepared(
        &self,
        key: &str,
        patient: B256,
        what: &str,
    ) -> Result<Prepared, ConsentError> {
        let prepared: Prepared = crate::auth::records::get_json(self.store.as_ref(), PREPARED, key)
            .await?
            .map(|(p, _)| p)
            .ok_or_else(|| {
                ConsentError::Conflict(format!(
                    "no prepared {what} matches this request (it was used already, expired, or \
                     never prepared): prepare it and sign the typed data returned"
                ))
            })?;
        if prepared.deadline < now_secs() {
            return Err(ConsentError::Unprocessable(format!(
                "the prepared {what}'s deadline has passed: prepare it again"
            )));
        }
        let nonce = self.view(ConsentRegistry::noncesCall { patient }).await?;
        if nonce != prepared.nonce {
            return Err(ConsentError::Conflict(format!(
                "the patient's nonce moved since this {what} was prepared (another grant, \
                 revocation or binding came first, or this signature was used): prepare it again"
            )));
        }
        Ok(prepared)
    }

    pub(super) async fn bound_wallet(
        &self,
        patient: B256,
        patient_id: &str,
    ) -> Result<Address, ConsentError> {
        let wallet = self.view(ConsentRegistry::walletOfCall { patient }).await?;
        if wallet == Address::ZERO {
            return Err(ConsentError::Unprocessable(format!(
                "Patient/{patient_id} has no bound wallet: bind one first \
                 (Patient/{patient_id}/$wallet-binding)"
            )));
        }
        Ok(wallet)
    }

    pub(super) fn check_signer(
        &self,
        message: &impl alloy::sol_types::SolStruct,
        signature: &str,
        expected: Address,
        whose: &str,
    ) -> Result<Bytes, ConsentError> {
        let parsed = parse_signature(signature)?;
        let signer = signer_of(message, &self.domain(), &parsed)?;
        if signer != expected {
            return Err(ConsentError::Unprocessable(format!(
                "the signature is by {signer}, not by {whose} {expected}"
            )));
        }
        Ok(Bytes::from(parsed.as_bytes().to_vec()))
    }

    pub(super) async fn forget(&self, key: &str) {
        let _ = self.store.take_record(PREPARED, key).await;
    }

    // ---- wallets ----

    fn binding_key(patient: B256, wallet: Address) -> String {
        hex_key(&[b"bind", patient.as_slice(), wallet.as_slice()])
    }

    /// The typed data binding `wallet` to Patient `patient_id` (or rebinding, after a lost key).
    pub async fn prepare_binding(
        &self,
        patient_id: &str,
        wallet: Address,
    ) -> Result<Value, ConsentError> {
        let patient = self.identities.patient(patient_id);
        let prepared = self
            .prepare(Self::binding_key(patient, wallet), patient)
            .await?;
        let message = messages::BindWallet {
            patient,
            wallet,
            nonce: prepared.nonce,
            deadline: U256::from(prepared.deadline),
        };
        Ok(typed::bind_json(
            self.ledger.chain_id(),
            self.registry,
            &message,
        ))
    }

    /// Binds (or rebinds) the wallet that signed the prepared binding.
    pub async fn bind(
        &self,
        patient_id: &str,
        wallet: Address,
        signature: &str,
    ) -> Result<Relayed, ConsentError> {
        // A malformed signature is the client's mistake whatever else is wrong.
        parse_signature(signature)?;
        let patient = self.identities.patient(patient_id);
        let key = Self::binding_key(patient, wallet);
        let prepared = self.prepared(&key, patient, "wallet binding").await?;
        let deadline = U256::from(prepared.deadline);
        let message = messages::BindWallet {
            patient,
            wallet,
            nonce: prepared.nonce,
            deadline,
        };
        let signature = self.check_signer(&message, signature, wallet, "the wallet")?;
        self.store
            .put_record(Record {
                kind: PATIENTS.into(),
                key: patient.to_string(),
                value: patient_id.as_bytes().to_vec(),
                expires_at: None,
            })
            .await?;
        let current = self.view(ConsentRegistry::walletOfCall { patient }).await?;
        let receipt = if current == Address::ZERO {
            self.send(ConsentRegistry::bindWalletCall {
                patient,
                wallet,
                deadline,
                signature,
            })
            .await?
        } else {
            self.send(ConsentRegistry::rebindWalletCall {
                patient,
                wallet,
                deadline,
                signature,
            })
            .await?
        };
        self.forget(&key).await;
        Ok(Relayed {
            tx_hash: receipt.tx_hash,
            block_number: receipt.block_number,
        })
    }

    /// The wallet bound to Patient `patient_id`, as the cache knows.
    pub fn wallet_of(&self, patient_id: &str) -> Option<Address> {
        self.cache.wallet_of(self.identities.patient(patient_id))
    }

    // ---- grants ----

    fn grantee_hash(&self, grantee: &Grantee) -> B256 {
        match grantee {
            Grantee::Reference(reference) => self.identities.reference(reference),
            Grantee::Client(id) => self.identities.client(id),
        }
    }

    fn grant_key(patient: B256, grantee: B256, draft: &Draft) -> String {
        let types = draft.types.join("\u{0}");
        hex_key(&[
            b"grant",
            patient.as_slice(),
            grantee.as_slice(),
            types.as_bytes(),
            &[draft.actions],
            &draft.expiry.to_be_bytes(),
        ])
    }

    fn grant_message(&self, draft: &Draft, prepared: &Prepared) -> messages::Grant {
        messages::Grant {
            patient: self.identities.patient(&draft.patient),
            grantee: self.grantee_hash(&draft.grantee),
            resourceTypes: draft.types.clone(),
            actions: draft.actions,
            expiry: draft.expiry,
            nonce: prepared.nonce,
            deadline: U256::from(prepared.deadline),
        }
    }

    /// The typed data of the grant `draft` describes.
    pub async fn prepare_grant(&self, draft: &Draft) -> Result<Value, ConsentError> {
        let patient = self.identities.patient(&draft.patient);
        self.bound_wallet(patient, &draft.patient).await?;
        let grantee = self.grantee_hash(&draft.grantee);
        let stored = match &draft.grantee {
            Grantee::Reference(r) => StoredGrantee::Reference(r.clone()),
            Grantee::Client(c) => StoredGrantee::Client(c.clone()),
        };
        self.store
            .put_record(Record {
                kind: GRANTEES.into(),
                key: grantee.to_string(),
                value: serde_json::to_vec(&stored).unwrap_or_default(),
                expires_at: None,
            })
            .await?;
        let prepared = self
            .prepare(Self::grant_key(patient, grantee, draft), patient)
            .await?;
        Ok(typed::grant_json(
            self.ledger.chain_id(),
            self.registry,
            &self.grant_message(draft, &prepared),
        ))
    }

    /// Relays the grant `draft` describes, signed by the patient's wallet; its id.
    pub async fn grant(
        &self,
        draft: &Draft,
        signature: &str,
    ) -> Result<(B256, Relayed), ConsentError> {
        parse_signature(signature)?;
        let patient = self.identities.patient(&draft.patient);
        let wallet = self.bound_wallet(patient, &draft.patient).await?;
        let key = Self::grant_key(patient, self.grantee_hash(&draft.grantee), draft);
        let prepared = self.prepared(&key, patient, "grant").await?;
        let message = self.grant_message(draft, &prepared);
        let signature =
            self.check_signer(&message, signature, wallet, "the patient's bound wallet")?;
        let receipt = self
            .send(ConsentRegistry::grantCall {
                patient,
                grantee: message.grantee,
                resourceTypes: message.resourceTypes.clone(),
                actions: message.actions,
                expiry: message.expiry,
                deadline: message.deadline,
                signature,
            })
            .await?;
        self.forget(&key).await;
        let grant_id = receipt
            .logs
            .iter()
            .find_map(|log| ConsentRegistry::Granted::decode_log(log).ok())
            .map(|event| event.grantId)
            .ok_or_else(|| {
                ConsentError::Unavailable("the grant emitted no Granted event".into())
            })?;
        Ok((
            grant_id,
            Relayed {
                tx_hash: receipt.tx_hash,
                block_number: receipt.block_number,
            },
        ))
    }

    // ---- revocations ----

    fn revoke_key(patient: B256, grant_id: B256) -> String {
        hex_key(&[b"revoke", patient.as_slice(), grant_id.as_slice()])
    }

    fn revocable(&self, patient_id: &str, grant_id: B256) -> Result<B256, ConsentError> {
        let patient = self.identities.patient(patient_id);
        let grant = self
            .cache
            .grant(grant_id)
            .filter(|g| g.patient == patient)
            .ok_or_else(|| {
                ConsentError::NotFound(format!(
                    "Patient/{patient_id} has no grant {grant_id} on chain"
                ))
            })?;
        if grant.revoked {
            return Err(ConsentError::Conflict(format!(
                "grant {grant_id} is revoked already"
            )));
        }
        Ok(patient)
    }

    pub async fn prepare_revoke(
        &self,
        patient_id: &str,
        grant_id: B256,
    ) -> Result<Value, ConsentError> {
        let patient = self.revocable(patient_id, grant_id)?;
        let prepared = self
            .prepare(Self::revoke_key(patient, grant_id), patient)
            .await?;
        let message = messages::Revoke {
            patient,
            grantId: grant_id,
            nonce: prepared.nonce,
            deadline: U256::from(prepared.deadline),
        };
        Ok(typed::revoke_json(
            self.ledger.chain_id(),
            self.registry,
            &message,
        ))
    }

    pub async fn revoke(
        &self,
        patient_id: &str,
        grant_id: B256,
        signature: &str,
    ) -> Result<Relayed, ConsentError> {
        parse_signature(signature)?;
        let patient = self.revocable(patient_id, grant_id)?;
        let wallet = self.bound_wallet(patient, patient_id).await?;
        let key = Self::revoke_key(patient, grant_id);
        let prepared = self.prepared(&key, patient, "revocation").await?;
        let message = messages::Revoke {
            patient,
            grantId: grant_id,
            nonce: prepared.nonce,
            deadline: U256::from(prepared.deadline),
        };
        let signature =
            self.check_signer(&message, signature, wallet, "the patient's bound wallet")?;
        let receipt = self
            .send(ConsentRegistry::revokeCall {
                patient,
                grantId: grant_id,
                deadline: message.deadline,
                signature,
            })
            .await?;
        self.forget(&key).await;
        Ok(Relayed {
            tx_hash: receipt.tx_hash,
            block_number: receipt.block_number,
        })
    }

    // ---- names ----

    /// The Patient id behind a patient identity, if a wallet was bound through this server.
    pub async fn patient_id_of(&self, patient: B256) -> Result<Option<String>, ConsentError> {
        Ok(self
            .store
            .get_record(PATIENTS, &patient.to_string())
            .await?
            .and_then(|r| String::from_utf8(r.value).ok()))
    }

    /// Who a grantee identity is, if a grant to them was prepared here.
    pub async fn grantee_of(&self, grantee: B256) -> Result<Option<Grantee>, ConsentError> {
        let stored: Option<StoredGrantee> =
            crate::auth::records::get_json(self.store.as_ref(), GRANTEES, &grantee.to_string())
                .await?
                .map(|(g, _)| g);
        Ok(stored.map(|g| match g {
            StoredGrantee::Reference(r) => Grantee::Reference(r),
            StoredGrantee::Client(c) => Grantee::Client(c),
        }))
    }
}

/// Records an emergency access on chain (the registrar's `breakGlass`).
pub(super) async fn record_break_glass(
    consent: &Consent,
    patient: B256,
    accessor: B256,
    reason: &str,
    until: u64,
) -> Result<(), ConsentError> {
    consent
        .ledger
        .transact(
            consent.registry,
            ConsentRegistry::breakGlassCall {
                patient,
                accessor,
                reasonHash: keccak256(reason.as_bytes()),
                until,
            }
            .abi_encode()
            .into(),
        )
        .await?;
    Ok(())
}
