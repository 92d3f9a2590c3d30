//! Patient-controlled consent: who may read and write a patient's data, decided from the
//! ConsentRegistry on chain, and the API through which patients put their decisions there.
//!
//! The rule (`decide`), for a version in some patients' compartments:
//! - the patient themself is always allowed (for a write: into no one else's record);
//! - a custodian client (the EHR of record, `clients add --custodian`) is allowed;
//! - anyone else needs an active grant on chain from the patient to their `fhirUser` or to
//!   their client id, covering the type and the action (a read needs one of the patients to
//!   have granted it, a write every one of them);
//! - a practitioner may break the glass (`BreakGlass`): allowed for a bounded time, recorded
//!   on chain first.
//!
//! A resource in no patient's compartment (a CodeSystem, a Practitioner) needs no consent.
//! Decisions read only the in-memory `ConsentCache`, never the chain; when the cache has not
//! heard from the chain within the bound, a decision that needs a grant is `Unknown` and the
//! caller refuses with 503 (fail closed). The patient's own access and a custodian's do not
//! depend on the chain and stay served.
//!
//! `relay` builds the EIP-712 messages wallets sign and relays signed ones; `resource` turns
//! draft FHIR Consents into grants and grants into the Consent resources that mirror the chain;
//! `requests` shapes practitioners' access requests, the patient's answers and the directory of
//! grantees (none of which grants anything).
//!
//! Owns: the consent rule and the registry's deployment record. Must not know HTTP; reaches
//! the chain only through the `ledger` seam.

pub mod erasure;
pub mod relay;
pub mod requests;
pub mod resource;
pub mod typed;

use std::sync::Arc;
use std::time::Duration;

use alloy::primitives::{Address, B256};
use serde::{Deserialize, Serialize};

use crate::auth::Principal;
use crate::index::{IndexError, IndexStore};
use crate::ledger::bindings::consent_registry_init_code;
use crate::ledger::consent::{self, ConsentCache, READ, WRITE};
use crate::ledger::identity::Identities;
use crate::ledger::{Ledger, LedgerError};

/// What went wrong in the consent room. `http::outcome` maps each to a status.
#[derive(Debug, thiserror::Error)]
pub enum ConsentError {
    /// The request is malformed (bad hex, a missing parameter): 400.
    #[error("{0}")]
    Invalid(String),
    /// Well-formed but not acceptable (not a permit, a passed deadline, a wrong signer): 422.
    #[error("{0}")]
    Unprocessable(String),
    /// The principal may not do this for this patient: 403.
    #[error("{0}")]
    Forbidden(String),
    /// Nothing prepared matches, or the chain moved on since (a replay): 409.
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    /// The chain cannot be reached or has not been heard from within the bound: 503.
    #[error("the ledger is unavailable: {0}")]
    Unavailable(String),
    /// The index store failed (kept records of the registry).
    #[error(transparent)]
    Index(#[from] IndexError),
    /// The registry's deployment record names no contract on this chain.
    #[error("{0}")]
    Misconfigured(String),
}

impl From<LedgerError> for ConsentError {
    fn from(e: LedgerError) -> Self {
        match e {
            LedgerError::Reverted { reason, .. } => {
                ConsentError::Unprocessable(format!("the consent registry refused: {reason}"))
            }
            other => ConsentError::Unavailable(other.to_string()),
        }
    }
}

/// The access being decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Read,
    Write,
}

impl Action {
    fn bits(self) -> u8 {
        match self {
            Action::Read => READ,
            Action::Write => WRITE,
        }
    }
}

/// The answer of `decide`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Allowed,
    Denied,
    /// The chain has not been heard from within the bound: nobody can know (503).
    Unknown,
}

#[derive(Clone, Debug)]
pub struct ConsentSettings {
    /// `false` (`--consent off`): grants are not checked at all.
    pub enforce: bool,
    pub stale_after: Duration,
    pub break_glass_for: Duration,
    /// How often the chain is asked for new events.
    pub poll: Duration,
}

/// Where the registry is, kept in the index store's records so every replica and every restart
/// uses the same one.
#[derive(Serialize, Deserialize, Clone, Debug)]
struct Deployment {
    address: Address,
    /// The block it was deployed in: events are read from there.
    block: u64,
    /// The base URL identities were hashed under at first start; kept, so that setting or
    /// changing `--base-url` later does not make every patient someone else on chain.
    identity_base: String,
}

const DEPLOYMENT_KIND: &str = "ledger";

pub struct Consent {
    ledger: Arc<dyn Ledger>,
    registry: Address,
    deployed_at: u64,
    cache: Arc<ConsentCache>,
    identities: Identities,
    store: Arc<dyn IndexStore>,
    settings: ConsentSettings,
}

impl Consent {
    /// Finds the registry (configured, or recorded at an earlier start) or deploys it, and
    /// reads its events so far. `identity_secret` is the deployment's identity key.
    pub async fn open(
        ledger: Arc<dyn Ledger>,
        store: Arc<dyn IndexStore>,
        identity_secret: zeroize::Zeroizing<[u8; 32]>,
        base_url: Option<&str>,
        configured: Option<Address>,
        settings: ConsentSettings,
    ) -> Result<Consent, ConsentError> {
        let key = format!("consent-registry/{}", ledger.chain_id());
        let recorded: Option<Deployment> =
            crate::auth::records::get_json(store.as_ref(), DEPLOYMENT_KIND, &key)
                .await?
                .map(|(d, _)| d);
        let deployment = match (recorded, configured) {
            (Some(d), Some(address)) if d.address != address => {
                return Err(ConsentError::Misconfigured(format!(
                    "the configured consent registry {address} differs from {} recorded at \
                     first start on chain {}",
                    d.address,
                    ledger.chain_id()
                )));
            }
            (Some(d), _) => d,
            (None, configured) => {
                let fresh = match configured {
                    Some(address) => Deployment {
                        address,
                        block: 0,
                        identity_base: base_url.unwrap_or_default().to_owned(),
                    },
                    None => {
                        let receipt = ledger
                            .deploy(consent_registry_init_code(ledger.sender()))
                            .await?;
                        let address = receipt.contract_address.ok_or_else(|| {
                            ConsentError::Unavailable("the deployment created no contract".into())
                        })?;
                        tracing::info!(%address, block = receipt.block_number, ledger = ledger.kind(), "consent registry deployed");
                        Deployment {
                            address,
                            block: receipt.block_number,
                            identity_base: base_url.unwrap_or_default().to_owned(),
                        }
                    }
                };
                let value =
                    serde_json::to_vec(&fresh).map_err(|e| ConsentError::Invalid(e.to_string()))?;
                let inserted = store
                    .insert_record(crate::index::Record {
                        kind: DEPLOYMENT_KIND.into(),
                        key: key.clone(),
                        value,
                        expires_at: None,
                    })
                    .await?;
                if inserted {
                    fresh
                } else {
                    // Another replica recorded its deployment first: that one is the registry.
                    crate::auth::records::get_json(store.as_ref(), DEPLOYMENT_KIND, &key)
                        .await?
                        .map(|(d, _)| d)
                        .ok_or_else(|| {
                            ConsentError::Misconfigured("the registry record vanished".into())
                        })?
                }
            }
        };
        if !ledger.has_code(deployment.address).await? {
            return Err(ConsentError::Misconfigured(format!(
                "no contract at the consent registry's address {} on chain {} ({}): the chain \
                 was reset or is another one; grants cannot be checked",
                deployment.address,
                ledger.chain_id(),
                ledger.kind()
            )));
        }
        let consent = Consent {
            identities: Identities::new(identity_secret, &deployment.identity_base),
            ledger,
            registry: deployment.address,
            deployed_at: deployment.block,
            cache: Arc::new(ConsentCache::new()),
            store,
            settings,
        };
        consent.catch_up().await?;
        Ok(consent)
    }

    /// Reads the registry's new events into the cache.
    pub async fn catch_up(&self) -> Result<u64, ConsentError> {
        Ok(consent::catch_up(
            self.ledger.as_ref(),
            self.registry,
            &self.cache,
            self.deployed_at,
        )
        .await?)
    }

    pub fn registry(&self) -> Address {
        self.registry
    }

    pub fn ledger(&self) -> &dyn Ledger {
        self.ledger.as_ref()
    }

    pub fn cache(&self) -> &ConsentCache {
        &self.cache
    }

    pub fn identities(&self) -> &Identities {
        &self.identities
    }

    pub fn settings(&self) -> &ConsentSettings {
        &self.settings
    }

    /// For `/health`: the ledger, the registry, and how fresh the cache is.
    pub fn health(&self) -> Result<String, String> {
        let heard = self.cache.heard_ago();
        let detail = format!(
            "{} ledger, chain {}, registry {}, block {}",
            self.ledger.kind(),
            self.ledger.chain_id(),
            self.registry,
            self.cache.seen_block().unwrap_or(0)
        );
        match heard {
            Some(ago) if ago <= self.settings.stale_after => Ok(detail),
            Some(ago) => Err(format!("{detail}: not heard from for {} s", ago.as_secs())),
            None => Err(format!("{detail}: never heard from")),
        }
    }

    /// May `principal` do `action` to a version of `resource_type` in `patients`' compartments?
    pub fn decide(
        &self,
        principal: &Principal,
        resource_type: &str,
        patients: &[String],
        action: Action,
    ) -> Access {
        if !self.settings.enforce || patients.is_empty() || principal.custodian {
            return Access::Allowed;
        }
        if let Some(own) = principal.own_patient() {
            let is_own = |p: &String| p == own;
            let own_record = match action {
                Action::Read => patients.iter().any(is_own),
                Action::Write => patients.iter().all(is_own),
            };
            if own_record {
                return Access::Allowed;
            }
        }
        let grantees = self.grantees(principal);
        let now = now_secs();
        let mut unknown = false;
        let mut for_patient = |patient: &String| {
            let patient = self.identities.patient(patient);
            let mut allowed = false;
            for grantee in &grantees {
                match self.cache.decide(
                    patient,
                    *grantee,
                    resource_type,
                    action.bits(),
                    now,
                    self.settings.stale_after,
                ) {
                    consent::Decision::Allowed => allowed = true,
                    consent::Decision::Stale => unknown = true,
                    consent::Decision::Denied => {}
                }
                // Break-glass reads only: an emergency is no reason to change the record.
                if !allowed
                    && action == Action::Read
                    && principal.break_glass.is_some()
                    && self
                        .cache
                        .break_glass_until(patient, *grantee)
                        .is_some_and(|until| now < until)
                {
                    allowed = true;
                }
            }
            allowed
        };
        let allowed = match action {
            Action::Read => patients.iter().any(&mut for_patient),
            Action::Write => patients.iter().all(&mut for_patient),
        };
        if allowed {
            Access::Allowed
        } else if unknown {
            Access::Unknown
        } else {
            Access::Denied
        }
    }

    /// The active, unexpired grants to `principal` itself, newest first: to its user (the
    /// `fhirUser`) for a user's token — never to its client, which would show every user of an
    /// app the grants other patients made to that app — and to its client for a backend
    /// service's (no user, no patient in context). A token with a patient in context but no
    /// user is a patient's own app: nothing is granted to it as such.
    pub fn grants_to(
        &self,
        principal: &Principal,
    ) -> Result<Vec<consent::GrantRecord>, ConsentError> {
        if self
            .cache
            .heard_ago()
            .is_none_or(|ago| ago > self.settings.stale_after)
        {
            // Fail closed, like a decision that needs a grant: an old list could name a
            // revoked grant.
            return Err(ConsentError::Unavailable(
                "the chain has not been heard from within the bound".into(),
            ));
        }
        let grantee = match (&principal.fhir_user, &principal.patient) {
            (Some(user), _) => self.identities.reference(user),
            (None, None) => self.identities.client(&principal.client_id),
            (None, Some(_)) => return Ok(Vec::new()),
        };
        let now = now_secs();
        Ok(self
            .cache
            .grants_to(grantee)
            .into_iter()
            .filter(|g| !g.revoked && now < g.expiry && self.cache.erased_at(g.patient).is_none())
            .collect())
    }

    /// Whether `grant_id` is an active, unexpired grant on chain from `patient` (an id) to
    /// `grantee` (a reference such as `Practitioner/abc`).
    pub fn is_active_grant(&self, grant_id: B256, patient: &str, grantee: &str) -> bool {
        self.cache.grant(grant_id).is_some_and(|g| {
            !g.revoked
                && now_secs() < g.expiry
                && g.patient == self.identities.patient(patient)
                && g.grantee == self.identities.reference(grantee)
        })
    }

    /// Who `principal` is on chain: its user (a `fhirUser` reference) and its client.
    fn grantees(&self, principal: &Principal) -> Vec<B256> {
        let mut grantees = Vec::with_capacity(2);
        if let Some(user) = &principal.fhir_user {
            grantees.push(self.identities.reference(user));
        }
        grantees.push(self.identities.client(&principal.client_id));
        grantees
    }

    /// Records a break-glass access of `patients`' data by `principal` on chain (once per
    /// window), so the next decisions allow it. Only a practitioner may break the glass.
    pub async fn break_glass(
        &self,
        principal: &Principal,
        patients: &[String],
    ) -> Result<(), ConsentError> {
        let Some(reason) = &principal.break_glass else {
            return Ok(());
        };
        let Some(user) = principal
            .fhir_user
            .as_deref()
            .filter(|u| u.starts_with("Practitioner/"))
        else {
            return Err(ConsentError::Forbidden(
                "only a practitioner (a token whose fhirUser is a Practitioner) may break the \
                 glass"
                    .into(),
            ));
        };
        let accessor = self.identities.reference(user);
        let now = now_secs();
        let until = now + self.settings.break_glass_for.as_secs();
        for patient in patients {
            let patient_hash = self.identities.patient(patient);
            if self
                .cache
                .break_glass_until(patient_hash, accessor)
                .is_some_and(|u| now < u)
            {
                continue;
            }
            relay::record_break_glass(self, patient_hash, accessor, reason, until).await?;
            tracing::warn!(
                ledger = self.ledger.kind(),
                "break-glass access recorded on chain"
            );
        }
        self.catch_up().await?;
        Ok(())
    }

    /// Keeps the cache current (and calls `changed` with what each round changed) until
    /// `stopped`.
    pub async fn follow<F, Fut>(
        self: Arc<Self>,
        mut stopped: tokio::sync::watch::Receiver<bool>,
        changed: F,
    ) where
        F: Fn(consent::Changes) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        loop {
            match self.catch_up().await {
                Ok(_) => {
                    let changes = self.cache.take_changed();
                    if !changes.is_empty() {
                        changed(changes).await;
                    }
                }
                Err(e) => tracing::warn!(
                    error = %e,
                    ledger = self.ledger.kind(),
                    "the consent cache could not reach the chain"
                ),
            }
            tokio::select! {
                _ = tokio::time::sleep(self.settings.poll) => {}
                _ = stopped.changed() => return,
            }
        }
    }
}

pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
