//! The embedded ledger: the contracts' own bytecode in an in-process EVM (revm, Cancun rules,
//! the configured chain id), so the embedded profile enforces consent exactly as a real chain
//! would, signatures and all, with no node to run.
//!
//! One thread owns the EVM. Requests reach it over a channel; the transactions waiting when it
//! looks are mined together in one block (on demand), and an empty block is produced every
//! `block_interval` so the head moves like a chain's. A block with transactions is written to
//! `ledger.redb` and made durable before any of its senders is answered, so a receipt a client
//! saw survives `kill -9`; on open, the stored blocks are replayed through the EVM and each
//! outcome checked against the stored receipt (a mismatch is `Corrupt`, never a silent fork).
//! Empty blocks carry nothing: only the newest head is kept, without an fsync of its own.
//!
//! What is not a chain here: there are no signed transactions (the sender is the server's
//! account, set as the caller), gas is priced at zero, and a transaction's hash is the
//! keccak256 of its chain id, sender, nonce, target and input. Patients' EIP-712 signatures are
//! checked by the contract as on any chain.

use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use alloy::primitives::{Address, B256, Bytes, Log, TxKind, U256, keccak256};
use async_trait::async_trait;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use revm::context::result::{ExecutionResult, Output};
use revm::context::{Context, TxEnv};
use revm::database::{CacheDB, EmptyDB};
use revm::primitives::hardfork::SpecId;
use revm::{ExecuteCommitEvm, ExecuteEvm, MainBuilder, MainContext, MainnetEvm};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::{ChainLog, Head, Ledger, LedgerError, Receipt, revert_reason};

/// Blocks that held transactions, by number.
const BLOCKS: TableDefinition<u64, &[u8]> = TableDefinition::new("blocks");
/// `head`: the newest block, empty or not.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// Gas a transaction may use; far above what a grant costs (~300k).
const TX_GAS_LIMIT: u64 = 10_000_000;
/// Most transactions mined in one block.
const MAX_BLOCK_TXS: usize = 256;

type Evm = MainnetEvm<revm::handler::MainnetContext<CacheDB<EmptyDB>>>;

#[derive(Serialize, Deserialize)]
struct StoredBlock {
    number: u64,
    timestamp: u64,
    txs: Vec<StoredTx>,
}

#[derive(Serialize, Deserialize, Clone)]
struct StoredTx {
    from: Address,
    /// `None`: a deployment.
    to: Option<Address>,
    nonce: u64,
    input: Bytes,
    hash: B256,
    success: bool,
    gas_used: u64,
    /// Return data, or the revert data of a failed transaction.
    output: Bytes,
    contract_address: Option<Address>,
    logs: Vec<StoredLog>,
}

#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
struct StoredLog {
    address: Address,
    topics: Vec<B256>,
    data: Bytes,
}

impl StoredLog {
    fn from_log(log: &Log) -> StoredLog {
        StoredLog {
            address: log.address,
            topics: log.topics().to_vec(),
            data: log.data.data.clone(),
        }
    }

    fn to_log(&self) -> Log {
        Log::new_unchecked(self.address, self.topics.clone(), self.data.clone())
    }
}

enum Request {
    Transact {
        to: Option<Address>,
        input: Bytes,
        reply: oneshot::Sender<Result<Receipt, LedgerError>>,
    },
    Call {
        to: Address,
        input: Bytes,
        reply: oneshot::Sender<Result<Bytes, LedgerError>>,
    },
    HasCode {
        address: Address,
        reply: oneshot::Sender<bool>,
    },
    Logs {
        address: Address,
        from: u64,
        to: u64,
        reply: oneshot::Sender<Vec<ChainLog>>,
    },
    Head {
        reply: oneshot::Sender<Head>,
    },
}

pub struct EmbeddedLedger {
    chain_id: u64,
    sender: Address,
    /// `None` only while dropping: closing it ends the chain's thread.
    inbox: Option<mpsc::Sender<Request>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for EmbeddedLedger {
    /// Waits for the chain's thread to let go of `ledger.redb`, so the same directory can be
    /// opened again at once (a restart in one process, a test).
    fn drop(&mut self) {
        self.inbox.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn unavailable(e: impl std::fmt::Display) -> LedgerError {
    LedgerError::Unavailable(format!("embedded ledger: {e}"))
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl EmbeddedLedger {
    /// Opens (creating if needed) `data_dir/ledger.redb`, replays its blocks, and starts the
    /// chain's thread. `sender` is the server's account.
    pub fn open(
        data_dir: &Path,
        chain_id: u64,
        sender: Address,
        block_interval: Duration,
    ) -> Result<EmbeddedLedger, LedgerError> {
        std::fs::create_dir_all(data_dir).map_err(unavailable)?;
        let path = data_dir.join("ledger.redb");
        let (inbox, requests) = mpsc::channel();
        let (opened, outcome) = mpsc::sync_channel(1);
        // The EVM is not `Send`: it is made, and lives, on its thread.
        let thread = std::thread::Builder::new()
            .name("ledger".into())
            .spawn(move || {
                let chain = Database::create(&path)
                    .map_err(unavailable)
                    .and_then(|db| Chain::open(db, chain_id, sender));
                match chain {
                    Ok(chain) => {
                        let _ = opened.send(Ok(()));
                        chain.run(&requests, block_interval);
                    }
                    Err(e) => {
                        let _ = opened.send(Err(e));
                    }
                }
            })
            .map_err(unavailable)?;
        outcome
            .recv()
            .map_err(|_| unavailable("its thread stopped while opening"))??;
        Ok(EmbeddedLedger {
            chain_id,
            sender,
            inbox: Some(inbox),
            thread: Some(thread),
        })
    }

    async fn ask<T>(
        &self,
        request: impl FnOnce(oneshot::Sender<T>) -> Request,
    ) -> Result<T, LedgerError> {
        let (reply, answer) = oneshot::channel();
        self.inbox
            .as_ref()
            .ok_or_else(|| unavailable("it is closing"))?
            .send(request(reply))
            .map_err(|_| unavailable("its thread has stopped"))?;
        answer
            .await
            .map_err(|_| unavailable("its thread has stopped"))
    }

    async fn send(&self, to: Option<Address>, input: Bytes) -> Result<Receipt, LedgerError> {
        self.ask(|reply| Request::Transact { to, input, reply })
            .await?
    }
}

#[async_trait]
impl Ledger for EmbeddedLedger {
    fn chain_id(&self) -> u64 {
        self.chain_id
    }

    fn sender(&self) -> Address {
        self.sender
    }

    fn kind(&self) -> &'static str {
        "embedded"
    }

    async fn head(&self) -> Result<Head, LedgerError> {
        self.ask(|reply| Request::Head { reply }).await
    }

    async fn deploy(&self, init_code: Bytes) -> Result<Receipt, LedgerError> {
        self.send(None, init_code).await
    }

    async fn transact(&self, to: Address, input: Bytes) -> Result<Receipt, LedgerError> {
        self.send(Some(to), input).await
    }

    async fn call(&self, to: Address, input: Bytes) -> Result<Bytes, LedgerError> {
        self.ask(|reply| Request::Call { to, input, reply }).await?
    }

    async fn has_code(&self, address: Address) -> Result<bool, LedgerError> {
        self.ask(|reply| Request::HasCode { address, reply }).await
    }

    async fn logs(
        &self,
        address: Address,
        from: u64,
        to: u64,
    ) -> Result<Vec<ChainLog>, LedgerError> {
        self.ask(|reply| Request::Logs {
            address,
            from,
            to,
            reply,
        })
        .await
    }
}

/// The chain as its thread holds it.
struct Chain {
    db: Database,
    evm: Evm,
    chain_id: u64,
    /// The server's account: every transaction's caller.
    sender: Address,
    head: Head,
    nonces: HashMap<Address, u64>,
    /// Every log, in chain order (watchers read ranges of it).
    logs: Vec<ChainLog>,
}

fn decode_block(bytes: &[u8]) -> Result<StoredBlock, LedgerError> {
    serde_json::from_slice(bytes).map_err(|e| LedgerError::Corrupt(e.to_string()))
}

fn fresh_evm(chain_id: u64) -> Evm {
    Context::mainnet()
        .with_db(CacheDB::new(EmptyDB::default()))
        .modify_cfg_chained(|cfg| {
            cfg.chain_id = chain_id;
            cfg.spec = SpecId::CANCUN;
        })
        .build_mainnet()
}

impl Chain {
    fn open(db: Database, chain_id: u64, sender: Address) -> Result<Chain, LedgerError> {
        let txn = db.begin_write().map_err(unavailable)?;
        txn.open_table(BLOCKS).map_err(unavailable)?;
        txn.open_table(META).map_err(unavailable)?;
        txn.commit().map_err(unavailable)?;
        let mut chain = Chain {
            db,
            evm: fresh_evm(chain_id),
            chain_id,
            sender,
            head: Head {
                number: 0,
                timestamp: now_secs(),
            },
            nonces: HashMap::new(),
            logs: Vec::new(),
        };
        chain.replay()?;
        Ok(chain)
    }

    /// Rebuilds the state from nothing by running every stored block again, checking each
    /// outcome against its stored receipt.
    fn replay(&mut self) -> Result<(), LedgerError> {
        self.evm = fresh_evm(self.chain_id);
        self.nonces.clear();
        self.logs.clear();
        let (stored, head) = {
            let read = self.db.begin_read().map_err(unavailable)?;
            let blocks = read.open_table(BLOCKS).map_err(unavailable)?;
            let mut stored = Vec::new();
            for row in blocks.iter().map_err(unavailable)? {
                let (_, value) = row.map_err(unavailable)?;
                stored.push(decode_block(value.value())?);
            }
            let head = match read
                .open_table(META)
                .map_err(unavailable)?
                .get("head")
                .map_err(unavailable)?
            {
                Some(head) => Some(
                    serde_json::from_slice::<(u64, u64)>(head.value())
                        .map_err(|e| LedgerError::Corrupt(e.to_string()))?,
                ),
                None => None,
            };
            (stored, head)
        };
        for block in &stored {
            self.enter_block(block.number, block.timestamp);
            for tx in &block.txs {
                let again = self.execute(tx.from, tx.to, tx.input.clone())?;
                if again.success != tx.success
                    || again.logs != tx.logs
                    || again.contract_address != tx.contract_address
                {
                    return Err(LedgerError::Corrupt(format!(
                        "block {} does not replay to its receipts (transaction {})",
                        block.number, tx.hash
                    )));
                }
                self.remember_logs(block.number, &again);
            }
        }
        let last = stored.last().map(|b| (b.number, b.timestamp));
        let (number, timestamp) = match (head, last) {
            (Some(head), Some(last)) => head.max(last),
            (Some(head), None) => head,
            (None, Some(last)) => last,
            (None, None) => (0, now_secs()),
        };
        self.head = Head { number, timestamp };
        Ok(())
    }

    fn run(mut self, requests: &mpsc::Receiver<Request>, block_interval: Duration) {
        loop {
            match requests.recv_timeout(block_interval) {
                Ok(first) => {
                    let mut waiting = vec![first];
                    while waiting.len() < MAX_BLOCK_TXS {
                        match requests.try_recv() {
                            Ok(request) => waiting.push(request),
                            Err(_) => break,
                        }
                    }
                    self.serve(waiting);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => self.empty_block(),
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// Answers reads at once, in order; mines the transactions among `waiting` in one block.
    fn serve(&mut self, waiting: Vec<Request>) {
        let mut to_mine = Vec::new();
        for request in waiting {
            match request {
                Request::Transact { to, input, reply } => to_mine.push((to, input, reply)),
                Request::Call { to, input, reply } => {
                    let _ = reply.send(self.call(to, input));
                }
                Request::HasCode { address, reply } => {
                    let _ = reply.send(self.has_code(address));
                }
                Request::Logs {
                    address,
                    from,
                    to,
                    reply,
                } => {
                    let _ = reply.send(self.logs_in(address, from, to));
                }
                Request::Head { reply } => {
                    let _ = reply.send(self.head);
                }
            }
        }
        if !to_mine.is_empty() {
            self.mine(to_mine);
        }
    }

    fn next_block(&self) -> (u64, u64) {
        (self.head.number + 1, now_secs().max(self.head.timestamp))
    }

    fn enter_block(&mut self, number: u64, timestamp: u64) {
        self.evm.ctx.modify_block(|block| {
            block.number = U256::from(number);
            block.timestamp = U256::from(timestamp);
            block.basefee = 0;
            block.gas_limit = 30_000_000;
        });
    }

    fn empty_block(&mut self) {
        let (number, timestamp) = self.next_block();
        self.head = Head { number, timestamp };
        // Not fsynced: an empty block holds nothing to lose; the next block with
        // transactions makes this durable too. Failing to note it loses nothing either.
        let _ = self.write(None, Durability::None);
    }

    #[allow(clippy::type_complexity)]
    fn mine(
        &mut self,
        to_mine: Vec<(
            Option<Address>,
            Bytes,
            oneshot::Sender<Result<Receipt, LedgerError>>,
        )>,
    ) {
        let (number, timestamp) = self.next_block();
        self.enter_block(number, timestamp);
        let mut txs = Vec::with_capacity(to_mine.len());
        let mut outcomes = Vec::with_capacity(to_mine.len());
        // Each sender's outcome: its transaction's place in the block, or why there is none.
        for (to, input, reply) in to_mine {
            let placed = self.execute(self.sender, to, input).map(|tx| {
                txs.push(tx);
                txs.len() - 1
            });
            outcomes.push((placed, reply));
        }
        let block = StoredBlock {
            number,
            timestamp,
            txs,
        };
        let previous = self.head;
        self.head = Head { number, timestamp };
        if let Err(e) = self.write(Some(&block), Durability::Immediate) {
            // Not durable: nobody is told it happened, and the state is rebuilt from what is
            // stored, so the chain does not remember what it could not keep.
            self.head = previous;
            let message = e.to_string();
            for (_, reply) in outcomes {
                let _ = reply.send(Err(unavailable(&message)));
            }
            if let Err(e) = self.replay() {
                tracing::error!(error = %e, "the embedded ledger could not rebuild its state");
            }
            return;
        }
        for tx in &block.txs {
            self.remember_logs(number, tx);
        }
        for (outcome, reply) in outcomes {
            let _ = reply.send(outcome.and_then(|at| receipt_of(&block.txs[at], number)));
        }
    }

    fn write(
        &self,
        block: Option<&StoredBlock>,
        durability: Durability,
    ) -> Result<(), LedgerError> {
        let mut txn = self.db.begin_write().map_err(unavailable)?;
        txn.set_durability(durability).map_err(unavailable)?;
        {
            if let Some(block) = block {
                let bytes = serde_json::to_vec(block).map_err(unavailable)?;
                txn.open_table(BLOCKS)
                    .map_err(unavailable)?
                    .insert(block.number, bytes.as_slice())
                    .map_err(unavailable)?;
            }
            let head = serde_json::to_vec(&(self.head.number, self.head.timestamp))
                .map_err(unavailable)?;
            txn.open_table(META)
                .map_err(unavailable)?
                .insert("head", head.as_slice())
                .map_err(unavailable)?;
        }
        txn.commit().map_err(unavailable)
    }

    /// A transaction from `from`, with its next nonce, unpriced gas and this chain's id.
    fn tx_env(&self, from: Address, kind: TxKind, input: Bytes) -> TxEnv {
        TxEnv::builder()
            .caller(from)
            .kind(kind)
            .data(input)
            .nonce(self.nonces.get(&from).copied().unwrap_or(0))
            .gas_limit(TX_GAS_LIMIT)
            .gas_price(0)
            .chain_id(Some(self.chain_id))
            .build_fill()
    }

    /// Runs one transaction from `from` and commits its effects to the state.
    fn execute(
        &mut self,
        from: Address,
        to: Option<Address>,
        input: Bytes,
    ) -> Result<StoredTx, LedgerError> {
        let nonce = self.nonces.get(&from).copied().unwrap_or(0);
        let tx = self.tx_env(from, to.map_or(TxKind::Create, TxKind::Call), input.clone());
        let result = self
            .evm
            .transact_commit(tx)
            .map_err(|e| LedgerError::Unavailable(format!("embedded ledger: {e:?}")))?;
        self.nonces.insert(from, nonce + 1);
        let hash = tx_hash(self.chain_id, from, nonce, to, &input);
        let gas_used = result.tx_gas_used();
        let (success, output, contract_address, logs) = match result {
            ExecutionResult::Success { output, logs, .. } => {
                let logs = logs.iter().map(StoredLog::from_log).collect();
                match output {
                    Output::Call(bytes) => (true, bytes, None, logs),
                    Output::Create(bytes, address) => (true, bytes, address, logs),
                }
            }
            ExecutionResult::Revert { output, .. } => (false, output, None, Vec::new()),
            ExecutionResult::Halt { reason, .. } => (
                false,
                Bytes::from(format!("{reason:?}").into_bytes()),
                None,
                Vec::new(),
            ),
        };
        Ok(StoredTx {
            from,
            to,
            nonce,
            input,
            hash,
            success,
            gas_used,
            output,
            contract_address,
            logs,
        })
    }

    fn call(&mut self, to: Address, input: Bytes) -> Result<Bytes, LedgerError> {
        let (number, timestamp) = self.next_block();
        self.enter_block(number, timestamp);
        let tx = self.tx_env(Address::ZERO, TxKind::Call(to), input);
        // `transact` leaves the state as it was: a call changes nothing.
        let outcome = self
            .evm
            .transact(tx)
            .map_err(|e| LedgerError::Unavailable(format!("embedded ledger: {e:?}")))?;
        match outcome.result {
            ExecutionResult::Success { output, .. } => Ok(output.into_data()),
            ExecutionResult::Revert { output, .. } => Err(LedgerError::Reverted {
                reason: revert_reason(&output),
                data: output,
            }),
            ExecutionResult::Halt { reason, .. } => Err(LedgerError::Reverted {
                reason: format!("halted: {reason:?}"),
                data: Bytes::new(),
            }),
        }
    }

    fn has_code(&mut self, address: Address) -> bool {
        self.evm
            .ctx
            .journaled_state
            .database
            .cache
            .accounts
            .get(&address)
            .and_then(|account| account.info.code.as_ref())
            .is_some_and(|code| !code.is_empty())
    }

    fn remember_logs(&mut self, block_number: u64, tx: &StoredTx) {
        for log in &tx.logs {
            let log_index = self
                .logs
                .last()
                .filter(|last| last.block_number == block_number)
                .map_or(0, |last| last.log_index + 1);
            self.logs.push(ChainLog {
                block_number,
                tx_hash: tx.hash,
                log_index,
                log: log.to_log(),
            });
        }
    }

    fn logs_in(&self, address: Address, from: u64, to: u64) -> Vec<ChainLog> {
        let start = self.logs.partition_point(|log| log.block_number < from);
        self.logs[start..]
            .iter()
            .take_while(|log| log.block_number <= to)
            .filter(|log| log.log.address == address)
            .cloned()
            .collect()
    }
}

fn receipt_of(tx: &StoredTx, block_number: u64) -> Result<Receipt, LedgerError> {
    if !tx.success {
        return Err(LedgerError::Reverted {
            reason: revert_reason(&tx.output),
            data: tx.output.clone(),
        });
    }
    Ok(Receipt {
        tx_hash: tx.hash,
        block_number,
        gas_used: tx.gas_used,
        contract_address: tx.contract_address,
        logs: tx.logs.iter().map(StoredLog::to_log).collect(),
    })
}

fn tx_hash(chain_id: u64, from: Address, nonce: u64, to: Option<Address>, input: &[u8]) -> B256 {
    let mut preimage = Vec::with_capacity(8 + 20 + 8 + 21 + input.len());
    preimage.extend_from_slice(&chain_id.to_be_bytes());
    preimage.extend_from_slice(from.as_slice());
    preimage.extend_from_slice(&nonce.to_be_bytes());
    match to {
        Some(to) => {
            preimage.push(1);
            preimage.extend_from_slice(to.as_slice());
        }
        None => preimage.push(0),
    }
    preimage.extend_from_slice(input);
    keccak256(preimage)
}
