//! The consent cache: the ConsentRegistry's state as its events tell it, held in memory so that
//! checking a grant on the read path costs a map lookup, never a chain call.
//!
//! It mirrors the contract's rules exactly (`isAllowed`: the newest grant per patient, grantee
//! and type, or the grant for every type, `*`, covering the action and not yet expired; a
//! revocation removes only the entries its grant still holds), and it is built only from the
//! chain's events, so a grant made on the contract directly, bypassing this server, counts the
//! same as one the server relayed. `consent::Consent::follow` keeps it current; `tests/contract_ledger.rs` checks
//! it against the contract's own `isAllowed` after every step.
//!
//! Freshness is part of the answer: a cache that has not heard from the chain for longer than
//! the caller's bound says so (`Stale`), and the caller fails closed.

use std::collections::HashMap;
use std::sync::{LazyLock, RwLock};
use std::time::{Duration, Instant};

use alloy::primitives::{Address, B256, keccak256};
use alloy::sol_types::SolEvent;

use super::bindings::ConsentRegistry;
use super::{ChainLog, Ledger, LedgerError};

pub const READ: u8 = 1;
pub const WRITE: u8 = 2;

/// What the cache can say about an access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    Denied,
    /// The cache has not heard from the chain within the bound: nobody can know.
    Stale,
}

/// A grant as the chain recorded it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantRecord {
    pub grant_id: B256,
    pub patient: B256,
    pub grantee: B256,
    pub type_keys: Vec<B256>,
    pub actions: u8,
    pub expiry: u64,
    pub revoked: bool,
    pub granted_in: (u64, B256),
    pub revoked_in: Option<(u64, B256)>,
}

#[derive(Clone, Copy, Debug)]
struct Permission {
    grant_id: B256,
    actions: u8,
    expiry: u64,
}

#[derive(Default)]
struct State {
    wallets: HashMap<B256, Address>,
    grants: HashMap<B256, GrantRecord>,
    permissions: HashMap<(B256, B256, B256), Permission>,
    /// (patient, accessor) → until, the newest break-glass record.
    break_glass: HashMap<(B256, B256), u64>,
    /// Every block up to this one has been applied.
    seen_block: Option<u64>,
    heard_at: Option<Instant>,
    /// Grants granted or revoked since the last `take_changed`, oldest first.
    changed: Vec<B256>,
    /// Patients whose erasure was recorded (`Erased`), and when (seconds).
    erased: HashMap<B256, u64>,
    /// Patients erased since the last `take_changed`.
    newly_erased: Vec<B256>,
}

/// What the chain changed since the last `take_changed`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Grants granted or revoked, oldest first, each once.
    pub grants: Vec<B256>,
    /// Patients whose erasure was recorded.
    pub erased: Vec<B256>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.grants.is_empty() && self.erased.is_empty()
    }
}

/// The key of the grant for every type (`*`), made once: every decision looks it up.
static ANY_TYPE: LazyLock<B256> = LazyLock::new(|| type_key("*"));

/// The key of a resource type as the contract stores it.
pub fn type_key(resource_type: &str) -> B256 {
    keccak256(resource_type.as_bytes())
}

#[derive(Default)]
pub struct ConsentCache {
    state: RwLock<State>,
    /// One catch-up at a time: two reading overlapping block ranges and applying them in the
    /// wrong order would undo a revocation.
    catching_up: tokio::sync::Mutex<()>,
}

impl ConsentCache {
    pub fn new() -> ConsentCache {
        ConsentCache::default()
    }

    /// Whether `grantee` may `action` `patient`'s resources of `resource_type` at `now` (Unix
    /// seconds), as the chain said when last heard within `bound`.
    pub fn decide(
        &self,
        patient: B256,
        grantee: B256,
        resource_type: &str,
        action: u8,
        now: u64,
        bound: Duration,
    ) -> Decision {
        let Ok(state) = self.state.read() else {
            return Decision::Stale;
        };
        if state.heard_at.is_none_or(|at| at.elapsed() > bound) {
            return Decision::Stale;
        }
        let covers = |key: B256| {
            state
                .permissions
                .get(&(patient, grantee, key))
                .is_some_and(|p| p.actions & action == action && now < p.expiry)
        };
        if covers(type_key(resource_type)) || covers(*ANY_TYPE) {
            Decision::Allowed
        } else {
            Decision::Denied
        }
    }

    /// Until when (Unix seconds) `accessor`'s newest break-glass record for `patient` runs.
    pub fn break_glass_until(&self, patient: B256, accessor: B256) -> Option<u64> {
        self.state
            .read()
            .ok()?
            .break_glass
            .get(&(patient, accessor))
            .copied()
    }

    pub fn wallet_of(&self, patient: B256) -> Option<Address> {
        self.state.read().ok()?.wallets.get(&patient).copied()
    }

    /// A patient's grants, newest first.
    pub fn grants_of(&self, patient: B256) -> Vec<GrantRecord> {
        let Ok(state) = self.state.read() else {
            return Vec::new();
        };
        let mut grants: Vec<GrantRecord> = state
            .grants
            .values()
            .filter(|g| g.patient == patient)
            .cloned()
            .collect();
        grants.sort_by_key(|g| std::cmp::Reverse(g.granted_in));
        grants
    }

    /// The grants to `grantee` (every patient's), newest first.
    pub fn grants_to(&self, grantee: B256) -> Vec<GrantRecord> {
        let Ok(state) = self.state.read() else {
            return Vec::new();
        };
        let mut grants: Vec<GrantRecord> = state
            .grants
            .values()
            .filter(|g| g.grantee == grantee)
            .cloned()
            .collect();
        grants.sort_by_key(|g| std::cmp::Reverse(g.granted_in));
        grants
    }

    /// What changed since the last call: grants granted or revoked (oldest first, each
    /// once) and patients erased.
    pub fn take_changed(&self) -> Changes {
        let Ok(mut state) = self.state.write() else {
            return Changes::default();
        };
        let mut seen = std::collections::HashSet::new();
        let changed = std::mem::take(&mut state.changed);
        Changes {
            grants: changed.into_iter().filter(|g| seen.insert(*g)).collect(),
            erased: std::mem::take(&mut state.newly_erased),
        }
    }

    /// When `patient`'s erasure was recorded on chain (seconds), if it was.
    pub fn erased_at(&self, patient: B256) -> Option<u64> {
        self.state.read().ok()?.erased.get(&patient).copied()
    }

    /// How long ago the chain was last heard from.
    pub fn heard_ago(&self) -> Option<Duration> {
        self.state.read().ok()?.heard_at.map(|at| at.elapsed())
    }

    pub fn grant(&self, grant_id: B256) -> Option<GrantRecord> {
        self.state.read().ok()?.grants.get(&grant_id).cloned()
    }

    /// The newest block applied, if any.
    pub fn seen_block(&self) -> Option<u64> {
        self.state.read().ok()?.seen_block
    }

    /// Applies the registry's logs of blocks up to `through` (all of them, in chain order),
    /// and notes that the chain was heard from.
    pub fn apply(&self, logs: &[ChainLog], through: u64) {
        let Ok(mut state) = self.state.write() else {
            return;
        };
        let applied = state.seen_block;
        for log in logs {
            // A block applied before is never applied again.
            if applied.is_none_or(|seen| log.block_number > seen) {
                state.apply(log);
            }
        }
        state.seen_block = Some(through.max(state.seen_block.unwrap_or(0)));
        state.heard_at = Some(Instant::now());
    }
}

impl State {
    fn apply(&mut self, entry: &ChainLog) {
        let log = &entry.log;
        let at = (entry.block_number, entry.tx_hash);
        match log.topics().first() {
            Some(&t) if t == ConsentRegistry::WalletBound::SIGNATURE_HASH => {
                if let Ok(e) = ConsentRegistry::WalletBound::decode_log(log) {
                    self.wallets.insert(e.patient, e.wallet);
                }
            }
            Some(&t) if t == ConsentRegistry::WalletRebound::SIGNATURE_HASH => {
                if let Ok(e) = ConsentRegistry::WalletRebound::decode_log(log) {
                    self.wallets.insert(e.patient, e.wallet);
                }
            }
            Some(&t) if t == ConsentRegistry::Granted::SIGNATURE_HASH => {
                if let Ok(e) = ConsentRegistry::Granted::decode_log(log) {
                    let permission = Permission {
                        grant_id: e.grantId,
                        actions: e.actions,
                        expiry: e.expiry,
                    };
                    for key in &e.typeKeys {
                        self.permissions
                            .insert((e.patient, e.grantee, *key), permission);
                    }
                    self.changed.push(e.grantId);
                    self.grants.insert(
                        e.grantId,
                        GrantRecord {
                            grant_id: e.grantId,
                            patient: e.patient,
                            grantee: e.grantee,
                            type_keys: e.typeKeys.clone(),
                            actions: e.actions,
                            expiry: e.expiry,
                            revoked: false,
                            granted_in: at,
                            revoked_in: None,
                        },
                    );
                }
            }
            Some(&t) if t == ConsentRegistry::Revoked::SIGNATURE_HASH => {
                if let Ok(e) = ConsentRegistry::Revoked::decode_log(log)
                    && let Some(grant) = self.grants.get_mut(&e.grantId)
                {
                    grant.revoked = true;
                    grant.revoked_in = Some(at);
                    self.changed.push(e.grantId);
                    for key in &grant.type_keys {
                        let slot = (grant.patient, grant.grantee, *key);
                        // A later grant for the same type replaced this one's entry: it stays.
                        if self
                            .permissions
                            .get(&slot)
                            .is_some_and(|p| p.grant_id == e.grantId)
                        {
                            self.permissions.remove(&slot);
                        }
                    }
                }
            }
            Some(&t) if t == ConsentRegistry::Erased::SIGNATURE_HASH => {
                if let Ok(e) = ConsentRegistry::Erased::decode_log(log) {
                    self.erased.insert(e.patient, e.at);
                    self.newly_erased.push(e.patient);
                }
            }
            Some(&t) if t == ConsentRegistry::BreakGlass::SIGNATURE_HASH => {
                if let Ok(e) = ConsentRegistry::BreakGlass::decode_log(log) {
                    self.break_glass.insert((e.patient, e.accessor), e.until);
                }
            }
            _ => {}
        }
    }
}

/// Most blocks asked for in one `eth_getLogs` (nodes cap the range).
const LOG_RANGE: u64 = 2_000;

/// Brings `cache` up to the ledger's head: reads the registry's logs from the block after the
/// last one applied (from `from_block` at first). Returns the head applied.
pub async fn catch_up(
    ledger: &dyn Ledger,
    registry: Address,
    cache: &ConsentCache,
    from_block: u64,
) -> Result<u64, LedgerError> {
    let _one_at_a_time = cache.catching_up.lock().await;
    let head = ledger.head().await?.number;
    let mut next = cache.seen_block().map_or(from_block, |seen| seen + 1);
    if next > head {
        cache.apply(&[], head);
    }
    while next <= head {
        let to = (next + LOG_RANGE - 1).min(head);
        let logs = ledger.logs(registry, next, to).await?;
        cache.apply(&logs, to);
        next = to + 1;
    }
    Ok(head)
}
