//! The ledger: the chain the consent registry lives on, behind one seam with two
//! implementations, chosen like the other seams.
//!
//! - `embedded` runs the same compiled contracts in an in-process EVM (revm), with blocks,
//!   receipts and logs persisted in the data directory;
//! - `rpc` speaks JSON-RPC to a real Ethereum node through alloy, one task owning the signer
//!   and its nonces.
//!
//! The seam is deliberately small and chain-shaped (deploy, transact, call, logs, head): what a
//! contract means (the consent registry's grants, later the audit anchors) is decided above it,
//! in terms of the `bindings` both implementations share, so the two cannot drift apart.
//! `tests/contract_ledger.rs` is the one suite both must pass. `consent` is the registry's state
//! as its events tell it, the cache every consent decision reads.
//!
//! Owns: the chain's state as this server sees it. Must not know about FHIR or HTTP.

pub mod anchor;
pub mod bindings;
pub mod consent;
pub mod embedded;
pub mod identity;
pub mod merkle;
pub mod proxy;
pub mod rpc;

use alloy::primitives::{Address, B256, Bytes, Log};
use async_trait::async_trait;

/// What went wrong on the ledger.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The chain cannot be reached, or did not answer in time: the caller should retry later.
    #[error("the ledger is unavailable: {0}")]
    Unavailable(String),
    /// The contract refused the transaction or call; `data` is its revert data (a custom error
    /// the bindings decode).
    #[error("the contract refused: {reason}")]
    Reverted { reason: String, data: Bytes },
    /// The ledger's own persisted state does not replay to what was recorded.
    #[error("the ledger's state is corrupt: {0}")]
    Corrupt(String),
}

/// A mined transaction.
#[derive(Clone, Debug)]
pub struct Receipt {
    pub tx_hash: B256,
    pub block_number: u64,
    pub gas_used: u64,
    /// The address a deployment created.
    pub contract_address: Option<Address>,
    pub logs: Vec<Log>,
}

/// A log as a watcher reads it: where it was emitted, and what.
#[derive(Clone, Debug)]
pub struct ChainLog {
    pub block_number: u64,
    pub tx_hash: B256,
    /// Position among the block's logs; with the block number, a total order of events.
    pub log_index: u64,
    pub log: Log,
}

/// The newest block the ledger knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    pub number: u64,
    /// Seconds since the Unix epoch.
    pub timestamp: u64,
}

/// One chain, as the server uses it. Every transaction is sent from the server's own account
/// (`sender`: the registrar and relayer), which pays for it.
#[async_trait]
pub trait Ledger: Send + Sync {
    /// The chain id every signature's EIP-712 domain names.
    fn chain_id(&self) -> u64;

    /// The server's account.
    fn sender(&self) -> Address;

    /// Which ledger this is, for logs and health: `embedded` or `rpc`.
    fn kind(&self) -> &'static str;

    async fn head(&self) -> Result<Head, LedgerError>;

    /// Deploys `init_code` (a contract's bytecode followed by its constructor arguments) and
    /// returns once it is mined.
    async fn deploy(&self, init_code: Bytes) -> Result<Receipt, LedgerError>;

    /// Sends a transaction calling `to` with `input`; returns once it is mined (and, on a node,
    /// confirmed as configured). A revert is `Reverted` and costs the sender its gas, as on
    /// any chain.
    async fn transact(&self, to: Address, input: Bytes) -> Result<Receipt, LedgerError>;

    /// Runs a read-only call against the newest state.
    async fn call(&self, to: Address, input: Bytes) -> Result<Bytes, LedgerError>;

    /// Whether `address` holds contract code (a persisted address still names a deployment).
    async fn has_code(&self, address: Address) -> Result<bool, LedgerError>;

    /// The logs `address` emitted in blocks `from..=to`, in chain order.
    async fn logs(
        &self,
        address: Address,
        from: u64,
        to: u64,
    ) -> Result<Vec<ChainLog>, LedgerError>;
}

/// A revert's data as a readable reason: the registry's custom error name when it is one.
pub(crate) fn revert_reason(data: &[u8]) -> String {
    bindings::error_name(data).unwrap_or_else(|| {
        if data.is_empty() {
            "reverted without a reason".to_owned()
        } else {
            format!("reverted ({})", alloy::hex::encode_prefixed(data))
        }
    })
}
