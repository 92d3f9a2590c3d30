//! Anchoring the audit trail: once per interval, this replica's rounds of AuditEvents not yet
//! anchored become one Merkle tree (`merkle`, leaves in sequence order) whose root is sent to
//! the AuditAnchor contract with the range it covers — one transaction per interval, never one
//! per event — and the inclusion proof of any AuditEvent can then be given from the stored
//! leaves.
//!
//! Crash-safe without double anchoring: the anchor about to be sent is recorded first (an
//! intent), and after a restart that same anchor is sent again; the contract refuses a root it
//! already holds (`AlreadyAnchored`), which tells the server it had been mined, and where. The
//! contract also refuses a range that does not start where the replica's previous one ended,
//! so no AuditEvent is left out between two anchors.
//!
//! Record kinds, besides the trail's (`audit::trail`): `audit-anchoring` (key: replica; the
//! intent) and `audit-anchor` (key: `replica|first`; one anchor, with its transaction).

use std::sync::Arc;
use std::time::Duration;

use alloy::primitives::{Address, B256, keccak256};
use alloy::sol_types::{SolCall, SolEvent};
use serde::{Deserialize, Serialize};

use super::bindings::{AuditAnchor, audit_anchor_init_code};
use super::{Ledger, LedgerError, merkle};
use crate::audit::trail::{self, RoundRecord};
use crate::index::{IndexError, IndexStore, Record};

const DEPLOYMENT_KIND: &str = "ledger";
const INTENT: &str = "audit-anchoring";
const ANCHOR: &str = "audit-anchor";
/// At most this many AuditEvents in one anchor (a backlog is anchored over several intervals).
const MAX_LEAVES: usize = 262_144;

#[derive(Debug, thiserror::Error)]
pub enum AnchorError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("the index store: {0}")]
    Index(#[from] IndexError),
    #[error("the audit trail's records are inconsistent: {0}")]
    Corrupt(String),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Deployment {
    address: Address,
    block: u64,
}

/// One anchor: a range of this replica's AuditEvents under one root.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AnchorRecord {
    pub root: B256,
    pub first: u64,
    pub count: u64,
    /// The first sequence numbers of the rounds it covers, in order.
    pub rounds: Vec<u64>,
    pub tx_hash: Option<B256>,
    pub block_number: Option<u64>,
}

/// What `$verify` answers for one AuditEvent.
#[derive(Clone, Debug)]
pub enum Inclusion {
    /// Not in an anchor yet: it will be within about one interval.
    Pending { interval: Duration },
    Anchored {
        leaf: B256,
        proof: Vec<B256>,
        anchor: AnchorRecord,
        contract: Address,
        chain_id: u64,
    },
}

pub struct Anchoring {
    ledger: Arc<dyn Ledger>,
    store: Arc<dyn IndexStore>,
    contract: Address,
    replica: String,
    interval: Duration,
}

fn json<T: Serialize>(kind: &str, key: String, value: &T, expires_at: Option<i64>) -> Record {
    Record {
        kind: kind.to_owned(),
        key,
        value: serde_json::to_vec(value).unwrap_or_default(),
        expires_at,
    }
}

fn decode<T: for<'de> Deserialize<'de>>(record: &Record) -> Result<T, AnchorError> {
    serde_json::from_slice(&record.value)
        .map_err(|e| AnchorError::Corrupt(format!("{} {}: {e}", record.kind, record.key)))
}

/// The replica as the contract knows it: a hash of its name.
pub fn replica_id(replica: &str) -> B256 {
    keccak256(replica.as_bytes())
}

impl Anchoring {
    /// Finds the anchor contract (recorded at an earlier start) or deploys it.
    pub async fn open(
        ledger: Arc<dyn Ledger>,
        store: Arc<dyn IndexStore>,
        replica: &str,
        interval: Duration,
    ) -> Result<Anchoring, AnchorError> {
        let key = format!("audit-anchor/{}", ledger.chain_id());
        let deployment = match store.get_record(DEPLOYMENT_KIND, &key).await? {
            Some(record) => decode::<Deployment>(&record)?,
            None => {
                let receipt = ledger
                    .deploy(audit_anchor_init_code(ledger.sender()))
                    .await?;
                let address = receipt.contract_address.ok_or_else(|| {
                    AnchorError::Corrupt("the deployment created no contract".into())
                })?;
                tracing::info!(%address, block = receipt.block_number, ledger = ledger.kind(), "audit anchor deployed");
                let fresh = Deployment {
                    address,
                    block: receipt.block_number,
                };
                if store
                    .insert_record(json(DEPLOYMENT_KIND, key.clone(), &fresh, None))
                    .await?
                {
                    fresh
                } else {
                    // Another replica recorded its deployment first: that one is the anchor.
                    let record =
                        store
                            .get_record(DEPLOYMENT_KIND, &key)
                            .await?
                            .ok_or_else(|| {
                                AnchorError::Corrupt("the anchor's record vanished".into())
                            })?;
                    decode(&record)?
                }
            }
        };
        if !ledger.has_code(deployment.address).await? {
            return Err(AnchorError::Corrupt(format!(
                "no contract at the audit anchor's address {} on chain {}: the chain was reset \
                 or is another one",
                deployment.address,
                ledger.chain_id()
            )));
        }
        Ok(Anchoring {
            ledger,
            store,
            contract: deployment.address,
            replica: replica.to_owned(),
            interval,
        })
    }

    pub fn contract(&self) -> Address {
        self.contract
    }

    /// Anchors what is waiting, every interval, until `stopped`.
    pub async fn run(self: Arc<Self>, mut stopped: tokio::sync::watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = stopped.changed() => return,
            }
            match self.anchor_once().await {
                Ok(Some(anchor)) => tracing::debug!(
                    first = anchor.first,
                    count = anchor.count,
                    block = anchor.block_number,
                    "audit anchored"
                ),
                Ok(None) => {}
                Err(e) => tracing::warn!("audit anchoring failed (retried next interval): {e}"),
            }
        }
    }

    /// One interval's work: the anchor recorded as intended (after a crash), or a new one of
    /// every round waiting; `None` when nothing waits.
    pub async fn anchor_once(&self) -> Result<Option<AnchorRecord>, AnchorError> {
        let intended = match self.store.get_record(INTENT, &self.replica).await? {
            Some(record) => decode::<AnchorRecord>(&record)?,
            None => match self.next_anchor().await? {
                Some(anchor) => {
                    self.store
                        .put_record(json(INTENT, self.replica.clone(), &anchor, None))
                        .await?;
                    anchor
                }
                None => return Ok(None),
            },
        };
        let anchored = self.send(intended).await?;
        self.record(&anchored).await?;
        Ok(Some(anchored))
    }

    /// The rounds waiting, from where the last anchor ended, as one anchor.
    async fn next_anchor(&self) -> Result<Option<AnchorRecord>, AnchorError> {
        let mut pending: Vec<u64> = self
            .store
            .list_records(&trail::pending_kind(&self.replica))
            .await?
            .iter()
            .filter_map(|r| r.key.parse().ok())
            .collect();
        pending.sort_unstable();
        let mut leaves = Vec::new();
        let mut rounds = Vec::new();
        let mut next = None;
        for first in pending {
            if next.is_some_and(|n| n != first) || leaves.len() >= MAX_LEAVES {
                break;
            }
            let round = self.round(first).await?;
            next = Some(first + round.leaves.len() as u64);
            leaves.extend(round.leaves);
            rounds.push(first);
        }
        let Some(&first) = rounds.first() else {
            return Ok(None);
        };
        Ok(Some(AnchorRecord {
            root: merkle::root(&leaves),
            first,
            count: leaves.len() as u64,
            rounds,
            tx_hash: None,
            block_number: None,
        }))
    }

    async fn round(&self, first: u64) -> Result<RoundRecord, AnchorError> {
        let key = trail::round_key(&self.replica, first);
        let record = self
            .store
            .get_record(trail::ROUND, &key)
            .await?
            .ok_or_else(|| AnchorError::Corrupt(format!("round {key} is missing")))?;
        decode(&record)
    }

    /// Sends the anchor, or learns that it was mined before.
    async fn send(&self, mut anchor: AnchorRecord) -> Result<AnchorRecord, AnchorError> {
        let call = AuditAnchor::anchorCall {
            replica: replica_id(&self.replica),
            root: anchor.root,
            count: anchor.count,
            firstSeq: anchor.first,
        };
        match self
            .ledger
            .transact(self.contract, call.abi_encode().into())
            .await
        {
            Ok(receipt) => {
                anchor.tx_hash = Some(receipt.tx_hash);
                anchor.block_number = Some(receipt.block_number);
            }
            Err(LedgerError::Reverted { reason, .. }) if reason == "AlreadyAnchored" => {
                let (tx_hash, block) = self.find(anchor.root).await?;
                anchor.tx_hash = Some(tx_hash);
                anchor.block_number = Some(block);
            }
            Err(e) => return Err(e.into()),
        }
        Ok(anchor)
    }

    /// The transaction and block that anchored `root` (it is known to be anchored).
    async fn find(&self, root: B256) -> Result<(B256, u64), AnchorError> {
        let output = self
            .ledger
            .call(
                self.contract,
                AuditAnchor::anchoredAtCall { root }.abi_encode().into(),
            )
            .await?;
        let block = AuditAnchor::anchoredAtCall::abi_decode_returns(&output)
            .map_err(|e| AnchorError::Corrupt(format!("anchoredAt: {e}")))?;
        let block: u64 = block.try_into().unwrap_or(u64::MAX);
        let logs = self.ledger.logs(self.contract, block, block).await?;
        logs.iter()
            .find(|l| {
                l.log.topics().first() == Some(&AuditAnchor::Anchored::SIGNATURE_HASH)
                    && l.log.topics().get(2) == Some(&root)
            })
            .map(|l| (l.tx_hash, block))
            .ok_or_else(|| {
                AnchorError::Corrupt(format!("no Anchored event of {root} in block {block}"))
            })
    }

    /// Makes the anchor known, in one commit: its record, each round pointing at it, the
    /// rounds no longer pending, the intent done.
    async fn record(&self, anchor: &AnchorRecord) -> Result<(), AnchorError> {
        let key = trail::round_key(&self.replica, anchor.first);
        let gone = Some(1);
        let mut records = vec![
            json(ANCHOR, key.clone(), anchor, None),
            json(INTENT, self.replica.clone(), anchor, gone),
        ];
        for &first in &anchor.rounds {
            let mut round = self.round(first).await?;
            round.anchor = Some(key.clone());
            records.push(json(
                trail::ROUND,
                trail::round_key(&self.replica, first),
                &round,
                None,
            ));
            records.push(json(
                &trail::pending_kind(&self.replica),
                format!("{first:020}"),
                &serde_json::json!({}),
                gone,
            ));
        }
        self.store.commit_all(Vec::new(), records).await?;
        Ok(())
    }

    /// Where the AuditEvent numbered `seq` of `replica`, in the round that began at `round`,
    /// with leaf `leaf`, is anchored.
    pub async fn inclusion(
        &self,
        replica: &str,
        seq: u64,
        round: u64,
        leaf: B256,
    ) -> Result<Inclusion, AnchorError> {
        let pending = Inclusion::Pending {
            interval: self.interval,
        };
        let Some(record) = self
            .store
            .get_record(trail::ROUND, &trail::round_key(replica, round))
            .await?
        else {
            return Ok(pending);
        };
        let round: RoundRecord = decode(&record)?;
        let Some(anchor_key) = round.anchor else {
            return Ok(pending);
        };
        let record = self
            .store
            .get_record(ANCHOR, &anchor_key)
            .await?
            .ok_or_else(|| AnchorError::Corrupt(format!("anchor {anchor_key} is missing")))?;
        let anchor: AnchorRecord = decode(&record)?;
        let mut leaves = Vec::with_capacity(anchor.count as usize);
        for &first in &anchor.rounds {
            let key = trail::round_key(replica, first);
            let record = self
                .store
                .get_record(trail::ROUND, &key)
                .await?
                .ok_or_else(|| AnchorError::Corrupt(format!("round {key} is missing")))?;
            leaves.extend(decode::<RoundRecord>(&record)?.leaves);
        }
        let index = seq
            .checked_sub(anchor.first)
            .map(|i| i as usize)
            .filter(|&i| leaves.get(i) == Some(&leaf))
            .ok_or_else(|| {
                AnchorError::Corrupt(format!(
                    "AuditEvent {seq} of {replica} is not the leaf its anchor holds"
                ))
            })?;
        Ok(Inclusion::Anchored {
            leaf,
            proof: merkle::proof(&leaves, index),
            anchor,
            contract: self.contract,
            chain_id: self.ledger.chain_id(),
        })
    }
}
