//! Erasure at the patient's request (`Patient/{id}/$purge`): crypto-shredding of the patient's
//! record. A custodian (the EHR of record) asks, with the patient's own EIP-712 signature; the
//! erasure is first recorded on chain (`recordErasure`, which checks that signature against the
//! patient's bound wallet), then carried out here: the patient's data key is destroyed, every
//! version sealed under it loses its index rows (each resource ends in an `Erase` version, so
//! it reads 410), and its blobs are unpinned. What was sealed under the key can never be opened
//! again, wherever a copy of its bytes survives. AuditEvents are sealed under the audit key and
//! stay, as does the on-chain record of who read the data.
//!
//! The chain is the truth here too: an erasure recorded on chain that this server has not
//! carried out (a crash between the two, or a record made by another replica) is carried out
//! when the consent follower sees its `Erased` event; every step is idempotent.

use alloy::primitives::B256;
use serde::{Deserialize, Serialize};

use super::consent::Prepared;
use super::{RepoError, Repository};
use crate::auth::Principal;
use crate::consent::erasure::Recorded;
use crate::fhir::instant::now_millis;
use crate::index::{Erased, Record, patient_owner};
use crate::ledger::consent::Changes;

/// Record kind: `erasure|{patient id}` → `Done`, once the erasure is carried out here.
const ERASURES: &str = "erasure";

#[derive(Serialize, Deserialize)]
struct Done {
    /// When it was carried out (ms).
    at: i64,
}

/// What `$purge` did.
pub struct Purged {
    pub recorded: Recorded,
    pub erased: Erased,
}

impl Repository {
    /// `GET Patient/{id}/$purge`: the typed data the patient's wallet signs to ask for the
    /// erasure of their record (asked by the patient or a custodian).
    pub async fn prepare_purge(
        &self,
        principal: &Principal,
        patient_id: &str,
    ) -> Result<Prepared, RepoError> {
        Self::may_act_for(principal, patient_id)?;
        let consent = self.consent_in_force()?;
        self.require_patient(patient_id).await?;
        Ok(Prepared {
            typed_data: consent.prepare_erasure(patient_id).await?,
        })
    }

    /// `POST Patient/{id}/$purge`: a custodian erases the patient's record with the patient's
    /// signature of the prepared erasure. A retry after a lost answer finishes the same erasure.
    pub async fn purge(
        &self,
        principal: &Principal,
        patient_id: &str,
        signature: &str,
    ) -> Result<Purged, RepoError> {
        if !principal.custodian {
            return Err(RepoError::Forbidden(format!(
                "only a custodian client (the EHR of record) erases a patient's record, with the \
                 patient's signature: Patient/{patient_id} may prepare it (GET $purge) and sign"
            )));
        }
        crate::fhir::resource::check_id(patient_id)?;
        let consent = self.consent_in_force()?;
        let erased_before = self
            .index
            .current("Patient", patient_id)
            .await?
            .is_some_and(|r| r.method == crate::index::Method::Erase);
        if !erased_before {
            self.require_patient(patient_id).await?;
        }
        if let Some(touched) = &principal.touched {
            let patients = [patient_id.to_owned()];
            touched.judged(format!("Patient/{patient_id}"), &patients, true);
        }
        let recorded = consent.record_erasure(patient_id, signature).await?;
        let erased = self.erase(patient_id).await?;
        tracing::warn!(
            resources = erased.resources.len(),
            versions = erased.versions,
            "a patient's record was erased at their signed request"
        );
        Ok(Purged { recorded, erased })
    }

    /// Carries out the erasure of Patient `patient_id`'s record here: the key and the index
    /// rows (one step of the index store), then the blobs; then notes it done.
    async fn erase(&self, patient_id: &str) -> Result<Erased, RepoError> {
        let erased = self.index.erase_patient(patient_id, now_millis()).await?;
        self.vault.forget(&patient_owner(patient_id));
        for cid in &erased.cids {
            // Unpinned now if the store answers; otherwise the sweeper removes it later, as it
            // does every blob no version references.
            if let Err(e) = self.blobs.remove(cid).await {
                tracing::warn!(error = %e, "an erased blob is left to the sweeper");
            }
        }
        let done = serde_json::to_vec(&Done { at: now_millis() }).unwrap_or_default();
        self.index
            .put_record(Record {
                kind: ERASURES.into(),
                key: patient_id.to_owned(),
                value: done,
                expires_at: None,
            })
            .await?;
        Ok(erased)
    }

    /// What the consent follower saw change on chain: grants to mirror, and erasures to carry
    /// out if this server has not yet.
    pub async fn follow_chain(&self, changes: Changes) {
        self.mirror_grants(&changes.grants).await;
        for patient in changes.erased {
            if let Err(e) = self.erasure_recorded(patient).await {
                tracing::warn!(error = %e, "an erasure recorded on chain is not carried out yet; retried at start");
            }
        }
    }

    async fn erasure_recorded(&self, patient: B256) -> Result<(), RepoError> {
        let Some(consent) = self.consent() else {
            return Ok(());
        };
        // Only a patient whose wallet was bound here can have been erased through here.
        let Some(patient_id) = consent.patient_id_of(patient).await? else {
            return Ok(());
        };
        if self
            .index
            .get_record(ERASURES, &patient_id)
            .await?
            .is_none()
        {
            self.erase(&patient_id).await?;
            tracing::warn!("an erasure recorded on chain was carried out");
        }
        Ok(())
    }
}
