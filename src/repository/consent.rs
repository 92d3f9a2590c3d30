//! The consent API as interactions: binding a wallet, preparing and relaying signed grants and
//! revocations, and the Consent resources that mirror the registry.
//!
//! A grant's Consent is written only here, by the server itself, from the chain's events
//! (`mirror_grants`, run after every catch-up), so a grant made on the contract directly
//! appears like one relayed here, and no client can write a Consent that claims a grant the
//! chain does not hold: a signed Consent is relayed, never stored as sent; a mirrored one
//! changes only by a signed revocation. A Consent without a signature is an ordinary resource.

use alloy::primitives::{Address, B256};
use serde_json::Value;

use super::{Precondition, RepoError, Repository, Written};
use crate::auth::{Permission, Principal};
use crate::consent::relay::Relayed;
use crate::consent::resource::{self, draft_of, grant_id_of, patient_of, signature_of};
use crate::consent::{Consent, ConsentError};
use crate::fhir::json::{self, Json};
use crate::fhir::resource::ResourceType;
use crate::fhir::validate::Handling;

/// What `$prepare` and the wallet binding answer.
pub struct Prepared {
    /// The EIP-712 typed data a wallet signs (`eth_signTypedData_v4`).
    pub typed_data: Value,
}

impl From<ConsentError> for RepoError {
    fn from(e: ConsentError) -> Self {
        match e {
            ConsentError::Unavailable(detail) => RepoError::Unavailable {
                component: "ledger",
                detail,
            },
            ConsentError::Index(index) => RepoError::from(index),
            ConsentError::Forbidden(why) => RepoError::Forbidden(why),
            other => RepoError::Consent(other),
        }
    }
}

fn parse(body: &[u8]) -> Result<Json, RepoError> {
    json::parse(body).map_err(|e| {
        RepoError::Consent(ConsentError::Invalid(format!("the body is not JSON: {e}")))
    })
}

impl Repository {
    pub(super) fn consent_in_force(&self) -> Result<&Consent, RepoError> {
        self.consent()
            .map(|c| c.as_ref())
            .ok_or_else(|| RepoError::Unavailable {
                component: "ledger",
                detail: "consent is not running in this process".into(),
            })
    }

    /// Only the patient themself or a custodian acts for a patient's consent.
    pub(super) fn may_act_for(principal: &Principal, patient_id: &str) -> Result<(), RepoError> {
        if principal.custodian || principal.own_patient() == Some(patient_id) {
            return Ok(());
        }
        Err(RepoError::Forbidden(format!(
            "only Patient/{patient_id} themself or a custodian client may manage this patient's \
             wallet and grants"
        )))
    }

    /// `GET Patient/{id}/$wallet-binding?address=…`.
    pub async fn prepare_binding(
        &self,
        principal: &Principal,
        patient_id: &str,
        address: &str,
    ) -> Result<Prepared, RepoError> {
        Self::may_act_for(principal, patient_id)?;
        let consent = self.consent_in_force()?;
        let wallet = crate::consent::typed::parse_address(address)?;
        self.require_patient(patient_id).await?;
        Ok(Prepared {
            typed_data: consent.prepare_binding(patient_id, wallet).await?,
        })
    }

    /// `POST Patient/{id}/$wallet-binding` with the wallet's signature.
    pub async fn bind_wallet(
        &self,
        principal: &Principal,
        patient_id: &str,
        address: &str,
        signature: &str,
    ) -> Result<(Address, Relayed), RepoError> {
        Self::may_act_for(principal, patient_id)?;
        let consent = self.consent_in_force()?;
        let wallet = crate::consent::typed::parse_address(address)?;
        self.require_patient(patient_id).await?;
        let relayed = consent.bind(patient_id, wallet, signature).await?;
        Ok((wallet, relayed))
    }

    pub(super) async fn require_patient(&self, patient_id: &str) -> Result<(), RepoError> {
        crate::fhir::resource::check_id(patient_id)?;
        match self.index.current("Patient", patient_id).await? {
            Some(record) if !record.deleted() => Ok(()),
            _ => Err(RepoError::not_found(
                ResourceType::PATIENT,
                patient_id,
                None,
            )),
        }
    }

    /// `POST Consent/$prepare`: the typed data of the grant a draft Consent describes, or of
    /// the revocation a Consent with status `inactive` and a grant's id asks for.
    pub async fn prepare_consent(
        &self,
        principal: &Principal,
        body: &[u8],
    ) -> Result<Prepared, RepoError> {
        self.require_interaction(principal, Permission::Create, Some(ResourceType::CONSENT))
            .await?;
        let consent = self.consent_in_force()?;
        let draft = parse(body)?;
        let patient_id = patient_of(&draft)?;
        Self::may_act_for(principal, &patient_id)?;
        let revoking = draft.get("status").and_then(Json::as_str) == Some("inactive");
        let typed_data = if revoking {
            let grant_id = draft
                .get("id")
                .and_then(Json::as_str)
                .and_then(grant_id_of)
                .ok_or_else(|| {
                    RepoError::Consent(ConsentError::Unprocessable(
                        "a revocation is the grant's Consent (its id) with status inactive".into(),
                    ))
                })?;
            consent.prepare_revoke(&patient_id, grant_id).await?
        } else {
            let draft = draft_of(&draft)?;
            self.require_patient(&draft.patient).await?;
            consent.prepare_grant(&draft).await?
        };
        Ok(Prepared { typed_data })
    }

    /// `POST Consent`: a signed draft is relayed as a grant and answered with the Consent that
    /// mirrors it; an unsigned Consent is an ordinary resource.
    pub async fn create_consent(
        &self,
        principal: &Principal,
        body: Vec<u8>,
        handling: Handling,
    ) -> Result<Written, RepoError> {
        let parsed = parse(&body)?;
        let Some(signature) = signature_of(&parsed).map(str::to_owned) else {
            return self
                .create(principal, ResourceType::CONSENT, body, handling)
                .await;
        };
        self.require_interaction(principal, Permission::Create, Some(ResourceType::CONSENT))
            .await?;
        let consent = self.consent_in_force()?;
        let draft = draft_of(&parsed)?;
        Self::may_act_for(principal, &draft.patient)?;
        let (grant_id, _) = consent.grant(&draft, &signature).await?;
        let version = self.mirror_one(consent, grant_id).await?.ok_or_else(|| {
            RepoError::Integrity(format!(
                "grant {grant_id} is on chain but could not be mirrored"
            ))
        })?;
        Ok(Written {
            version,
            created: true,
            warnings: Vec::new(),
        })
    }

    /// `PUT Consent/{id}`: a grant's Consent with status `inactive` and a signature revokes
    /// the grant; any other change to a grant's Consent is refused; any other Consent is an
    /// ordinary resource.
    pub async fn update_consent(
        &self,
        principal: &Principal,
        id: &str,
        body: Vec<u8>,
        precondition: Precondition,
        handling: Handling,
    ) -> Result<Written, RepoError> {
        let consent = self.consent_in_force()?;
        let grant = grant_id_of(id).and_then(|g| consent.cache().grant(g));
        let Some(grant) = grant else {
            return self
                .update(
                    principal,
                    ResourceType::CONSENT,
                    id,
                    body,
                    precondition,
                    handling,
                )
                .await;
        };
        self.require_interaction(principal, Permission::Update, Some(ResourceType::CONSENT))
            .await?;
        let parsed = parse(&body)?;
        let patient_id = patient_of(&parsed)?;
        Self::may_act_for(principal, &patient_id)?;
        let (Some(signature), Some("inactive")) = (
            signature_of(&parsed),
            parsed.get("status").and_then(Json::as_str),
        ) else {
            return Err(RepoError::Consent(ConsentError::Unprocessable(
                "this Consent mirrors a grant on chain: it changes only by its revocation, a \
                 PUT with status inactive signed by the patient's wallet (typed data from \
                 Consent/$prepare)"
                    .into(),
            )));
        };
        consent
            .revoke(&patient_id, grant.grant_id, signature)
            .await?;
        let version = self
            .mirror_one(consent, grant.grant_id)
            .await?
            .ok_or_else(|| RepoError::Integrity(format!("grant {id} could not be mirrored")))?;
        Ok(Written {
            version,
            created: false,
            warnings: Vec::new(),
        })
    }

    /// Whether `DELETE Consent/{id}` would remove a grant's mirror (refused: the chain keeps it).
    pub fn is_grant_mirror(&self, id: &str) -> bool {
        self.consent()
            .zip(grant_id_of(id))
            .is_some_and(|(c, g)| c.cache().grant(g).is_some())
    }

    /// Writes the Consent mirroring each of `grants` (skipping those already current).
    pub async fn mirror_grants(&self, grants: &[B256]) {
        let Some(consent) = self.consent() else {
            return;
        };
        for grant in grants {
            if let Err(e) = self.mirror_one(consent, *grant).await {
                tracing::warn!(error = %e, "a grant's Consent could not be written; retried at the next change");
            }
        }
    }

    /// The Consent of `grant_id` as stored (written now if it was missing or behind the chain).
    pub(super) async fn mirror_one(
        &self,
        consent: &Consent,
        grant_id: B256,
    ) -> Result<Option<super::ResourceVersion>, RepoError> {
        let Some(grant) = consent.cache().grant(grant_id) else {
            return Ok(None);
        };
        if consent.cache().erased_at(grant.patient).is_some() {
            // The patient's record is erased: nothing of it is written again.
            return Ok(None);
        }
        let Some(patient_id) = consent.patient_id_of(grant.patient).await? else {
            // Bound by another server sharing the registry: not a patient of this one.
            return Ok(None);
        };
        let grantee = consent.grantee_of(grant.grantee).await?;
        let mirrored = resource::mirror(&grant, &patient_id, grantee.as_ref());
        let id = resource::consent_id(grant_id);
        if let Some(record) = self.index.current("Consent", &id).await?
            && !record.deleted()
        {
            let stored = self.load(record).await?;
            let same = stored
                .content
                .as_deref()
                .and_then(|c| serde_json::from_slice::<Value>(c).ok())
                .is_some_and(|mut v| {
                    if let Some(o) = v.as_object_mut() {
                        o.remove("meta");
                    }
                    v == mirrored
                });
            if same {
                return Ok(Some(stored));
            }
        }
        let body = serde_json::to_vec(&mirrored).unwrap_or_default();
        let written = self
            .update(
                &Principal::internal(),
                ResourceType::CONSENT,
                &id,
                body,
                Precondition::None,
                Handling::Strict,
            )
            .await?;
        Ok(Some(written.version))
    }
}
