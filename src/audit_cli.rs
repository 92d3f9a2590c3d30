//! `intellihealth audit verify --event FILE --proof FILE --rpc URL`: checks one AuditEvent
//! against the chain alone, trusting nothing the server says beyond what the chain confirms.
//! The leaf is recomputed from the event (keccak256 of its RFC 8785 form), folded up the
//! proof (sorted pairs) to a root, and that root must be in an `Anchored` event of the named
//! contract in the named transaction, successful and mined in the named block.

use std::path::PathBuf;

use alloy::primitives::{Address, B256};
use alloy::providers::{Provider, ProviderBuilder};
use alloy::sol_types::SolEvent;
use clap::Subcommand;
use serde_json::Value;

use intellihealth::ledger::bindings::AuditAnchor;
use intellihealth::ledger::merkle;

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Check an AuditEvent's anchor on chain.
    Verify {
        /// The AuditEvent as `GET /fhir/AuditEvent/{id}/_history/1` returned it.
        #[arg(long)]
        event: PathBuf,
        /// What `GET /fhir/AuditEvent/{id}/$verify` returned.
        #[arg(long)]
        proof: PathBuf,
        /// The Ethereum node to ask (JSON-RPC).
        #[arg(long)]
        rpc: String,
    },
}

pub async fn run(command: AuditCommand) -> Result<(), String> {
    let AuditCommand::Verify { event, proof, rpc } = command;
    let read = |path: &PathBuf| std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()));
    let event_bytes = read(&event)?;
    let stored = intellihealth::fhir::json::parse(&event_bytes)
        .map_err(|e| format!("{}: {e}", event.display()))?;
    let parameters: Value =
        serde_json::from_slice(&read(&proof)?).map_err(|e| format!("{}: {e}", proof.display()))?;
    let values = |name: &str| -> Vec<String> {
        parameters["parameter"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .filter(|p| p["name"] == name)
                    .filter_map(|p| p["valueString"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let one = |name: &str| -> Result<String, String> {
        values(name).into_iter().next().ok_or_else(|| {
            if values("status").first().map(String::as_str) == Some("not anchored yet") {
                "the AuditEvent is not anchored yet: ask $verify again later".to_owned()
            } else {
                format!("the proof has no {name}")
            }
        })
    };
    let hash =
        |text: String| -> Result<B256, String> { text.parse().map_err(|e| format!("{text}: {e}")) };
    let leaf = merkle::leaf(&stored);
    let proof_path = values("proof")
        .into_iter()
        .map(hash)
        .collect::<Result<Vec<_>, _>>()?;
    let root = merkle::fold(leaf, &proof_path);
    let claimed = hash(one("root")?)?;
    if root != claimed {
        return Err(format!(
            "the event's leaf {leaf} folds to {root}, not the anchored root {claimed}: the \
             event is not the one anchored"
        ));
    }
    let tx = hash(one("txHash")?)?;
    let block: u64 = one("blockNumber")?
        .parse()
        .map_err(|e| format!("blockNumber: {e}"))?;
    let contract: Address = one("address")?
        .parse()
        .map_err(|e| format!("address: {e}"))?;
    let url = rpc.parse().map_err(|e| format!("{rpc}: {e}"))?;
    let provider = ProviderBuilder::new().connect_http(url);
    let receipt = provider
        .get_transaction_receipt(tx)
        .await
        .map_err(|e| format!("{rpc}: {e}"))?
        .ok_or_else(|| format!("transaction {tx} is not on this chain"))?;
    if !receipt.status() {
        return Err(format!("transaction {tx} failed on chain"));
    }
    if receipt.block_number != Some(block) {
        return Err(format!(
            "transaction {tx} is in block {:?}, not {block}",
            receipt.block_number
        ));
    }
    let anchored = receipt.logs().iter().any(|log| {
        log.address() == contract
            && log.topics().first() == Some(&AuditAnchor::Anchored::SIGNATURE_HASH)
            && log.topics().get(2) == Some(&root)
    });
    if !anchored {
        return Err(format!(
            "no Anchored event of {root} from {contract} in transaction {tx}"
        ));
    }
    println!(
        "verified: AuditEvent leaf {leaf} is under root {root}, anchored by {contract} in block {block} (transaction {tx})"
    );
    Ok(())
}
