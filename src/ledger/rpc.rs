//! The rpc ledger: a real Ethereum node over JSON-RPC, through alloy.
//!
//! One task owns the signer (the server's account, its key from a file or the environment,
//! never a flag) and sends every transaction, one after another, so the nonces it takes from
//! the node never collide; waiting for receipts and confirmations happens beside it, so a slow
//! block does not hold the next send. A send that fails for want of the node is retried with
//! backoff; a revert is not (it would revert again). Every call has a deadline: a node that
//! does not answer is `Unavailable`, never a hang.

use std::time::Duration;

use alloy::eips::BlockNumberOrTag;
use alloy::network::{EthereumWallet, TransactionBuilder};
use alloy::primitives::{Address, Bytes};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::rpc::types::{Filter, TransactionRequest};
use alloy::signers::local::PrivateKeySigner;
use alloy::transports::{RpcError, TransportErrorKind};
use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};

use super::{ChainLog, Head, Ledger, LedgerError, Receipt, revert_reason};

/// Attempts at sending a transaction when the node cannot be reached.
const SEND_ATTEMPTS: u32 = 4;

pub struct RpcLedger {
    provider: DynProvider,
    chain_id: u64,
    sender: Address,
    timeout: Duration,
    sends: mpsc::Sender<Send>,
}

struct Send {
    request: TransactionRequest,
    reply: oneshot::Sender<Result<Receipt, LedgerError>>,
}

/// How the rpc ledger reaches its node.
#[derive(Clone, Debug)]
pub struct RpcSettings {
    pub url: String,
    /// Blocks on top of a transaction's before it counts as done (1: mined).
    pub confirmations: u64,
    /// Deadline of each call to the node, and of a transaction's receipt.
    pub timeout: Duration,
}

fn unavailable(e: impl std::fmt::Display) -> LedgerError {
    LedgerError::Unavailable(format!("Ethereum node: {e}"))
}

/// A node's error as the ledger's: a revert keeps its data, anything else is the node's
/// unavailability.
fn from_rpc(e: RpcError<TransportErrorKind>) -> LedgerError {
    if let Some(data) = e
        .as_error_resp()
        .and_then(|payload| payload.as_revert_data())
    {
        return LedgerError::Reverted {
            reason: revert_reason(&data),
            data,
        };
    }
    unavailable(e)
}

async fn within<T>(
    timeout: Duration,
    what: &str,
    work: impl std::future::Future<Output = Result<T, LedgerError>>,
) -> Result<T, LedgerError> {
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or_else(|_| {
            Err(unavailable(format!(
                "{what} had no answer within {} ms",
                timeout.as_millis()
            )))
        })
}

impl RpcLedger {
    /// Connects to the node at `settings.url` as `signer`, and learns its chain id.
    pub async fn connect(
        settings: RpcSettings,
        signer: PrivateKeySigner,
    ) -> Result<RpcLedger, LedgerError> {
        let url = settings
            .url
            .parse()
            .map_err(|e| unavailable(format!("{}: {e}", settings.url)))?;
        let sender = signer.address();
        let provider = ProviderBuilder::new()
            .wallet(EthereumWallet::from(signer))
            .connect_http(url)
            .erased();
        let chain_id = within(settings.timeout, "eth_chainId", async {
            provider.get_chain_id().await.map_err(from_rpc)
        })
        .await?;
        let (sends, queue) = mpsc::channel(1024);
        tokio::spawn(signer_task(
            provider.clone(),
            sender,
            queue,
            settings.confirmations.max(1),
            settings.timeout,
        ));
        Ok(RpcLedger {
            provider,
            chain_id,
            sender,
            timeout: settings.timeout,
            sends,
        })
    }

    async fn send(&self, request: TransactionRequest) -> Result<Receipt, LedgerError> {
        let (reply, answer) = oneshot::channel();
        self.sends
            .send(Send { request, reply })
            .await
            .map_err(|_| unavailable("the signer task has stopped"))?;
        answer
            .await
            .map_err(|_| unavailable("the signer task has stopped"))?
    }
}

/// Sends each transaction in turn; a receipt is awaited beside it.
async fn signer_task(
    provider: DynProvider,
    sender: Address,
    mut queue: mpsc::Receiver<Send>,
    confirmations: u64,
    timeout: Duration,
) {
    // The next nonce, as this task knows it; `None`: ask the node (at start, and after any
    // failed send, whose nonce may or may not have been taken).
    let mut next_nonce: Option<u64> = None;
    while let Some(Send { request, reply }) = queue.recv().await {
        let mut attempt = 0;
        let pending = loop {
            attempt += 1;
            let sent = within(timeout, "eth_sendTransaction", async {
                let nonce = match next_nonce {
                    Some(nonce) => nonce,
                    None => provider
                        .get_transaction_count(sender)
                        .pending()
                        .await
                        .map_err(from_rpc)?,
                };
                let pending = provider
                    .send_transaction(request.clone().with_nonce(nonce))
                    .await
                    .map_err(from_rpc)?;
                Ok((nonce, pending))
            })
            .await;
            next_nonce = match &sent {
                Ok((nonce, _)) => Some(nonce + 1),
                Err(_) => None,
            };
            let sent = sent.map(|(_, pending)| pending);
            match sent {
                Err(LedgerError::Unavailable(_)) if attempt < SEND_ATTEMPTS => {
                    tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                }
                other => break other,
            }
        };
        match pending {
            Err(e) => {
                let _ = reply.send(Err(e));
            }
            Ok(pending) => {
                let hash = *pending.tx_hash();
                // The receipt wait has its own deadline: blocks may come slower than calls.
                let wait = timeout * (confirmations as u32 + 4);
                let provider = provider.clone();
                tokio::spawn(async move {
                    let receipt = within(wait, "the transaction's receipt", async {
                        mined(&provider, hash, confirmations).await
                    })
                    .await;
                    let _ = reply.send(receipt);
                });
            }
        }
    }
}

/// Polls for `hash`'s receipt until it is `confirmations` blocks deep. Polling, rather than a
/// block subscription, works the same on a node that mines on demand (anvil) and on one with a
/// block time; it asks for the receipt itself, so a transaction mined before the first poll is
/// not missed.
async fn mined(
    provider: &DynProvider,
    hash: alloy::primitives::B256,
    confirmations: u64,
) -> Result<Receipt, LedgerError> {
    let mut pause = Duration::from_millis(20);
    loop {
        if let Some(receipt) = provider
            .get_transaction_receipt(hash)
            .await
            .map_err(from_rpc)?
        {
            let block_number = receipt.block_number.unwrap_or_default();
            let head = provider.get_block_number().await.map_err(from_rpc)?;
            if head + 1 >= block_number + confirmations {
                if !receipt.status() {
                    return Err(LedgerError::Reverted {
                        reason: "reverted on chain".into(),
                        data: Bytes::new(),
                    });
                }
                return Ok(Receipt {
                    tx_hash: receipt.transaction_hash,
                    block_number,
                    gas_used: receipt.gas_used,
                    contract_address: receipt.contract_address,
                    logs: receipt.logs().iter().map(|log| log.inner.clone()).collect(),
                });
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

#[async_trait]
impl Ledger for RpcLedger {
    fn chain_id(&self) -> u64 {
        self.chain_id
    }

    fn sender(&self) -> Address {
        self.sender
    }

    fn kind(&self) -> &'static str {
        "rpc"
    }

    async fn head(&self) -> Result<Head, LedgerError> {
        within(self.timeout, "eth_getBlockByNumber", async {
            let block = self
                .provider
                .get_block_by_number(BlockNumberOrTag::Latest)
                .await
                .map_err(from_rpc)?
                .ok_or_else(|| unavailable("the node has no latest block"))?;
            Ok(Head {
                number: block.header.number,
                timestamp: block.header.timestamp,
            })
        })
        .await
    }

    async fn deploy(&self, init_code: Bytes) -> Result<Receipt, LedgerError> {
        self.send(TransactionRequest::default().with_deploy_code(init_code))
            .await
    }

    async fn transact(&self, to: Address, input: Bytes) -> Result<Receipt, LedgerError> {
        self.send(TransactionRequest::default().with_to(to).with_input(input))
            .await
    }

    async fn call(&self, to: Address, input: Bytes) -> Result<Bytes, LedgerError> {
        let request = TransactionRequest::default().with_to(to).with_input(input);
        within(self.timeout, "eth_call", async {
            self.provider.call(request).await.map_err(from_rpc)
        })
        .await
    }

    async fn has_code(&self, address: Address) -> Result<bool, LedgerError> {
        within(self.timeout, "eth_getCode", async {
            let code = self.provider.get_code_at(address).await.map_err(from_rpc)?;
            Ok(!code.is_empty())
        })
        .await
    }

    async fn logs(
        &self,
        address: Address,
        from: u64,
        to: u64,
    ) -> Result<Vec<ChainLog>, LedgerError> {
        let filter = Filter::new().address(address).from_block(from).to_block(to);
        let logs = within(self.timeout, "eth_getLogs", async {
            self.provider.get_logs(&filter).await.map_err(from_rpc)
        })
        .await?;
        Ok(logs
            .into_iter()
            .map(|log| ChainLog {
                block_number: log.block_number.unwrap_or_default(),
                tx_hash: log.transaction_hash.unwrap_or_default(),
                log_index: log.log_index.unwrap_or_default(),
                log: log.inner,
            })
            .collect())
    }
}
