//! The Ledger contract: the same cases against the embedded ledger (revm in-process) and a real
//! node (anvil, started by `scripts/services`), both running the committed ConsentRegistry
//! bytecode. Signatures are made with alloy's local signer over the bindings' EIP-712
//! structs; the contract's own tests (`contracts/test/`) sign with eth-account, an
//! implementation that is not ours.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use alloy::primitives::{Address, B256, Bytes, U256, keccak256};
use alloy::signers::SignerSync;
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::{SolCall, SolEvent, SolStruct};
use intellihealth::ledger::bindings::{
    ConsentRegistry, consent_domain, consent_registry_init_code, typed,
};
use intellihealth::ledger::consent::{ConsentCache, Decision, catch_up};
use intellihealth::ledger::embedded::EmbeddedLedger;
use intellihealth::ledger::rpc::{RpcLedger, RpcSettings};
use intellihealth::ledger::{Ledger, LedgerError};

const READ: u8 = 1;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

struct Registry<'a> {
    ledger: &'a dyn Ledger,
    address: Address,
}

impl Registry<'_> {
    async fn deploy(ledger: &dyn Ledger) -> Registry<'_> {
        let receipt = ledger
            .deploy(consent_registry_init_code(ledger.sender()))
            .await
            .expect("deployed");
        let address = receipt
            .contract_address
            .expect("a deployment has an address");
        assert!(ledger.has_code(address).await.unwrap());
        Registry { ledger, address }
    }

    async fn send(
        &self,
        call: impl SolCall,
    ) -> Result<intellihealth::ledger::Receipt, LedgerError> {
        self.ledger
            .transact(self.address, Bytes::from(call.abi_encode()))
            .await
    }

    async fn view<C: SolCall>(&self, call: C) -> C::Return {
        let output = self
            .ledger
            .call(self.address, Bytes::from(call.abi_encode()))
            .await
            .expect("called");
        C::abi_decode_returns(&output).expect("decoded")
    }

    fn sign(&self, wallet: &PrivateKeySigner, message: &impl SolStruct) -> Bytes {
        let domain = consent_domain(self.ledger.chain_id(), self.address);
        let hash = message.eip712_signing_hash(&domain);
        Bytes::from(wallet.sign_hash_sync(&hash).unwrap().as_bytes().to_vec())
    }

    async fn allowed(&self, patient: B256, grantee: B256, resource_type: &str) -> bool {
        self.view(ConsentRegistry::isAllowedCall {
            patient,
            grantee,
            resourceType: resource_type.into(),
            action: READ,
        })
        .await
    }

    /// The consent cache, brought up to the head, answers as the contract's own `isAllowed`;
    /// returns that answer.
    async fn agreed(
        &self,
        cache: &ConsentCache,
        patient: B256,
        grantee: B256,
        resource_type: &str,
    ) -> bool {
        catch_up(self.ledger, self.address, cache, 0)
            .await
            .expect("caught up");
        let on_chain = self.allowed(patient, grantee, resource_type).await;
        let cached = cache.decide(
            patient,
            grantee,
            resource_type,
            READ,
            now(),
            Duration::from_secs(60),
        );
        assert_eq!(
            cached,
            if on_chain {
                Decision::Allowed
            } else {
                Decision::Denied
            },
            "the cache and the contract disagree on {resource_type}"
        );
        on_chain
    }

    /// Binds `wallet` to `patient`: the wallet signs, the server sends.
    async fn bind(
        &self,
        wallet: &PrivateKeySigner,
        patient: B256,
    ) -> Result<intellihealth::ledger::Receipt, LedgerError> {
        let deadline = U256::from(now() + 600);
        let message = typed::BindWallet {
            patient,
            wallet: wallet.address(),
            nonce: self.nonce(patient).await,
            deadline,
        };
        self.send(ConsentRegistry::bindWalletCall {
            patient,
            wallet: wallet.address(),
            deadline,
            signature: self.sign(wallet, &message),
        })
        .await
    }

    /// A grant signed by `wallet` and relayed; its id.
    async fn grant(
        &self,
        wallet: &PrivateKeySigner,
        patient: B256,
        grantee: B256,
        types: &[&str],
        expiry: u64,
    ) -> B256 {
        let deadline = U256::from(now() + 600);
        let message = typed::Grant {
            patient,
            grantee,
            resourceTypes: types.iter().map(|t| t.to_string()).collect(),
            actions: READ,
            expiry,
            nonce: self.nonce(patient).await,
            deadline,
        };
        let receipt = self
            .send(ConsentRegistry::grantCall {
                patient,
                grantee,
                resourceTypes: message.resourceTypes.clone(),
                actions: READ,
                expiry,
                deadline,
                signature: self.sign(wallet, &message),
            })
            .await
            .expect("granted");
        receipt
            .logs
            .iter()
            .find_map(|log| ConsentRegistry::Granted::decode_log(log).ok())
            .expect("a Granted event")
            .grantId
    }

    async fn revoke(&self, wallet: &PrivateKeySigner, patient: B256, grant_id: B256) {
        let deadline = U256::from(now() + 600);
        let message = typed::Revoke {
            patient,
            grantId: grant_id,
            nonce: self.nonce(patient).await,
            deadline,
        };
        self.send(ConsentRegistry::revokeCall {
            patient,
            grantId: grant_id,
            deadline,
            signature: self.sign(wallet, &message),
        })
        .await
        .expect("revoked");
    }

    async fn nonce(&self, patient: B256) -> U256 {
        self.view(ConsentRegistry::noncesCall { patient }).await
    }
}

fn refused(outcome: Result<intellihealth::ledger::Receipt, LedgerError>) -> String {
    match outcome {
        Err(LedgerError::Reverted { reason, .. }) => reason,
        other => panic!("expected a revert, got {other:?}"),
    }
}

/// Every case of the seam, on one ledger.
async fn contract(ledger: &dyn Ledger) {
    let registry = Registry::deploy(ledger).await;
    let deadline = U256::from(now() + 3600);

    // The contract and the bindings agree on the EIP-712 domain and types.
    let separator: B256 = registry.view(ConsentRegistry::domainSeparatorCall {}).await;
    assert_eq!(
        separator,
        consent_domain(ledger.chain_id(), registry.address).separator()
    );
    let grant_type: B256 = registry.view(ConsentRegistry::GRANT_TYPEHASHCall {}).await;
    let sample = typed::Grant {
        patient: B256::ZERO,
        grantee: B256::ZERO,
        resourceTypes: vec![],
        actions: 0,
        expiry: 0,
        nonce: U256::ZERO,
        deadline: U256::ZERO,
    };
    assert_eq!(grant_type, sample.eip712_type_hash());
    let erase_type: B256 = registry.view(ConsentRegistry::ERASE_TYPEHASHCall {}).await;
    let sample = typed::Erase {
        patient: B256::ZERO,
        nonce: U256::ZERO,
        deadline: U256::ZERO,
    };
    assert_eq!(erase_type, sample.eip712_type_hash());

    let patient = keccak256(b"test patient, keyed elsewhere");
    let grantee = keccak256(b"test grantee, keyed elsewhere");
    let wallet = PrivateKeySigner::random();

    // A grant before any wallet is bound is refused.
    let early = typed::Grant {
        patient,
        grantee,
        resourceTypes: vec!["Observation".into()],
        actions: READ,
        expiry: now() + 600,
        nonce: U256::ZERO,
        deadline,
    };
    let signature = registry.sign(&wallet, &early);
    let outcome = registry
        .send(ConsentRegistry::grantCall {
            patient,
            grantee,
            resourceTypes: early.resourceTypes.clone(),
            actions: READ,
            expiry: early.expiry,
            deadline,
            signature,
        })
        .await;
    assert_eq!(refused(outcome), "NotBound");

    // Binding: the wallet signs, the server (registrar) sends.
    let bind = typed::BindWallet {
        patient,
        wallet: wallet.address(),
        nonce: registry.nonce(patient).await,
        deadline,
    };
    let bind_call = ConsentRegistry::bindWalletCall {
        patient,
        wallet: wallet.address(),
        deadline,
        signature: registry.sign(&wallet, &bind),
    };
    let bound = registry.send(bind_call.clone()).await.expect("bound");
    let event = bound
        .logs
        .iter()
        .find_map(|log| ConsentRegistry::WalletBound::decode_log(log).ok())
        .expect("a WalletBound event");
    assert_eq!((event.patient, event.wallet), (patient, wallet.address()));
    assert_eq!(refused(registry.send(bind_call).await), "AlreadyBound");

    // A grant of Observation, signed by the bound wallet and relayed.
    let grant = typed::Grant {
        nonce: registry.nonce(patient).await,
        ..early.clone()
    };
    let grant_call = ConsentRegistry::grantCall {
        patient,
        grantee,
        resourceTypes: grant.resourceTypes.clone(),
        actions: READ,
        expiry: grant.expiry,
        deadline,
        signature: registry.sign(&wallet, &grant),
    };
    let granted = registry.send(grant_call.clone()).await.expect("granted");
    assert!(granted.block_number > 0);
    assert!(granted.gas_used > 21_000);
    let event = granted
        .logs
        .iter()
        .find_map(|log| ConsentRegistry::Granted::decode_log(log).ok())
        .expect("a Granted event");
    let grant_id = event.grantId;
    let cache = ConsentCache::new();
    assert!(
        registry
            .agreed(&cache, patient, grantee, "Observation")
            .await
    );
    assert!(!registry.agreed(&cache, patient, grantee, "Condition").await);
    assert!(
        !registry
            .agreed(&cache, patient, keccak256(b"someone else"), "Observation")
            .await
    );
    assert_eq!(cache.wallet_of(patient), Some(wallet.address()));
    assert_eq!(cache.grants_of(patient).len(), 1);

    // The same signature again is a replay: the nonce has moved, so the signer recovered is
    // not the wallet.
    assert_eq!(refused(registry.send(grant_call).await), "WrongSigner");
    // Another key's signature, a passed deadline, another patient.
    let nonce = registry.nonce(patient).await;
    let forged = typed::Grant {
        nonce,
        resourceTypes: vec!["Condition".into()],
        ..early.clone()
    };
    let by_stranger = ConsentRegistry::grantCall {
        patient,
        grantee,
        resourceTypes: forged.resourceTypes.clone(),
        actions: READ,
        expiry: forged.expiry,
        deadline,
        signature: registry.sign(&PrivateKeySigner::random(), &forged),
    };
    assert_eq!(refused(registry.send(by_stranger).await), "WrongSigner");
    let past = U256::from(now() - 10);
    let late = typed::Grant {
        deadline: past,
        ..forged.clone()
    };
    let late_call = ConsentRegistry::grantCall {
        patient,
        grantee,
        resourceTypes: late.resourceTypes.clone(),
        actions: READ,
        expiry: late.expiry,
        deadline: past,
        signature: registry.sign(&wallet, &late),
    };
    assert_eq!(refused(registry.send(late_call).await), "Expired");
    let other_patient = keccak256(b"another patient");
    let misdirected = ConsentRegistry::grantCall {
        patient: other_patient,
        grantee,
        resourceTypes: forged.resourceTypes.clone(),
        actions: READ,
        expiry: forged.expiry,
        deadline,
        signature: registry.sign(&wallet, &forged),
    };
    assert_eq!(refused(registry.send(misdirected).await), "NotBound");
    assert!(!registry.allowed(patient, grantee, "Condition").await);

    // Revocation, signed the same way.
    let revoke = typed::Revoke {
        patient,
        grantId: grant_id,
        nonce: registry.nonce(patient).await,
        deadline,
    };
    let revoked = registry
        .send(ConsentRegistry::revokeCall {
            patient,
            grantId: grant_id,
            deadline,
            signature: registry.sign(&wallet, &revoke),
        })
        .await
        .expect("revoked");
    assert!(revoked.block_number >= granted.block_number);
    assert!(
        !registry
            .agreed(&cache, patient, grantee, "Observation")
            .await
    );
    assert!(cache.grant(grant_id).expect("kept").revoked);
    // A cache that has not heard from the chain within the bound cannot say.
    assert_eq!(
        cache.decide(patient, grantee, "Observation", READ, now(), Duration::ZERO),
        Decision::Stale
    );

    // A newer grant for a type replaces the older one's entry, and revoking the older leaves
    // it; `*` covers every type; an expiry passes. The cache follows each step.
    let broad = registry
        .grant(
            &wallet,
            patient,
            grantee,
            &["Observation", "Condition"],
            now() + 600,
        )
        .await;
    let narrow = registry
        .grant(&wallet, patient, grantee, &["Observation"], now() + 600)
        .await;
    registry.revoke(&wallet, patient, broad).await;
    assert!(
        registry
            .agreed(&cache, patient, grantee, "Observation")
            .await
    );
    assert!(!registry.agreed(&cache, patient, grantee, "Condition").await);
    registry.revoke(&wallet, patient, narrow).await;
    assert!(
        !registry
            .agreed(&cache, patient, grantee, "Observation")
            .await
    );
    let everything = registry
        .grant(&wallet, patient, grantee, &["*"], now() + 600)
        .await;
    assert!(
        registry
            .agreed(&cache, patient, grantee, "Immunization")
            .await
    );
    registry.revoke(&wallet, patient, everything).await;
    assert!(
        !registry
            .agreed(&cache, patient, grantee, "Immunization")
            .await
    );
    let brief = now() + 2;
    registry
        .grant(&wallet, patient, grantee, &["Encounter"], brief)
        .await;
    assert!(registry.agreed(&cache, patient, grantee, "Encounter").await);
    assert_eq!(
        cache.decide(
            patient,
            grantee,
            "Encounter",
            READ,
            brief,
            Duration::from_secs(60)
        ),
        Decision::Denied,
        "a grant is over at its expiry"
    );

    // Break-glass is the registrar's, and leaves its event.
    let accessor = keccak256(b"an emergency practitioner");
    let until = now() + 3600;
    registry
        .send(ConsentRegistry::breakGlassCall {
            patient,
            accessor,
            reasonHash: keccak256(b"unconscious in the emergency room"),
            until,
        })
        .await
        .expect("break-glass recorded");
    catch_up(ledger, registry.address, &cache, 0).await.unwrap();
    assert_eq!(cache.break_glass_until(patient, accessor), Some(until));

    // The events, read back as a watcher reads them, in chain order.
    let head = ledger.head().await.unwrap();
    assert!(head.number >= revoked.block_number);
    let logs = ledger.logs(registry.address, 0, head.number).await.unwrap();
    let names: Vec<&str> = logs
        .iter()
        .filter_map(|log| match log.log.topics().first() {
            Some(t) if *t == ConsentRegistry::RegistrarChanged::SIGNATURE_HASH => {
                Some("RegistrarChanged")
            }
            Some(t) if *t == ConsentRegistry::WalletBound::SIGNATURE_HASH => Some("WalletBound"),
            Some(t) if *t == ConsentRegistry::Granted::SIGNATURE_HASH => Some("Granted"),
            Some(t) if *t == ConsentRegistry::Revoked::SIGNATURE_HASH => Some("Revoked"),
            Some(t) if *t == ConsentRegistry::BreakGlass::SIGNATURE_HASH => Some("BreakGlass"),
            _ => None,
        })
        .collect();
    let mut expected = vec!["RegistrarChanged", "WalletBound", "Granted", "Revoked"];
    expected.extend([
        "Granted", "Granted", "Revoked", "Revoked", "Granted", "Revoked", "Granted",
    ]);
    expected.push("BreakGlass");
    assert_eq!(names, expected);
    let positions: Vec<(u64, u64)> = logs.iter().map(|l| (l.block_number, l.log_index)).collect();
    let mut sorted = positions.clone();
    sorted.sort();
    assert_eq!(positions, sorted, "logs come in chain order");
    assert_eq!(logs[2].tx_hash, granted.tx_hash);
    let later = ledger
        .logs(registry.address, revoked.block_number + 1, head.number)
        .await
        .unwrap();
    assert_eq!(later.len(), 8, "a range starts where it says");
    assert!(
        later
            .iter()
            .all(|log| log.block_number > revoked.block_number)
    );

    // Concurrent sends all land, each with its own nonce.
    let wallets: Vec<PrivateKeySigner> = (0..8).map(|_| PrivateKeySigner::random()).collect();
    let binds = wallets.iter().enumerate().map(|(i, wallet)| {
        let registry = &registry;
        async move {
            let patient = keccak256(format!("concurrent patient {i}"));
            registry.bind(wallet, patient).await
        }
    });
    for outcome in futures::future::join_all(binds).await {
        outcome.expect("each concurrent bind is mined");
    }
}

#[tokio::test]
async fn the_embedded_ledger_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let sender = PrivateKeySigner::random().address();
    let ledger =
        EmbeddedLedger::open(dir.path(), 31337, sender, Duration::from_millis(200)).unwrap();
    contract(&ledger).await;
}

#[tokio::test]
async fn the_embedded_ledger_survives_a_restart_and_replays_to_the_same_state() {
    let dir = tempfile::tempdir().unwrap();
    let sender = PrivateKeySigner::random().address();
    let open =
        || EmbeddedLedger::open(dir.path(), 31337, sender, Duration::from_millis(50)).unwrap();
    let ledger = open();
    let registry = Registry::deploy(&ledger).await;
    let address = registry.address;
    let patient = keccak256(b"restart patient");
    let grantee = keccak256(b"restart grantee");
    let wallet = PrivateKeySigner::random();
    registry
        .send(ConsentRegistry::grantAsPatientCall {
            patient,
            grantee,
            resourceTypes: vec!["*".into()],
            actions: READ,
            expiry: now() + 600,
        })
        .await
        .expect_err("not bound yet");
    registry.bind(&wallet, patient).await.unwrap();
    registry
        .grant(&wallet, patient, grantee, &["*"], now() + 600)
        .await;
    // Empty blocks pass while nothing happens.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let head_before = ledger.head().await.unwrap();
    let logs_before = ledger.logs(address, 0, head_before.number).await.unwrap();
    drop(ledger);

    let ledger = open();
    let registry = Registry {
        ledger: &ledger,
        address,
    };
    assert!(
        ledger.has_code(address).await.unwrap(),
        "the deployment is still there"
    );
    assert!(
        registry.allowed(patient, grantee, "Observation").await,
        "the grant too"
    );
    assert_eq!(registry.nonce(patient).await, U256::from(2));
    let head_after = ledger.head().await.unwrap();
    assert!(
        head_after.number >= head_before.number,
        "the head never goes back"
    );
    let logs_after = ledger.logs(address, 0, head_after.number).await.unwrap();
    assert_eq!(logs_after.len(), logs_before.len());
    for (before, after) in logs_before.iter().zip(&logs_after) {
        assert_eq!(
            (
                before.block_number,
                before.tx_hash,
                before.log_index,
                &before.log
            ),
            (
                after.block_number,
                after.tx_hash,
                after.log_index,
                &after.log
            )
        );
    }
    // A new deployment after the restart takes the next nonce, not a reused one.
    let again = Registry::deploy(&ledger).await;
    assert_ne!(again.address, address);
}

#[tokio::test]
async fn a_real_node_keeps_the_contract() {
    let settings = RpcSettings {
        url: common::services::eth_rpc(),
        confirmations: 1,
        timeout: Duration::from_secs(10),
    };
    let key = std::fs::read_to_string(common::services::eth_key_file()).unwrap();
    let signer: PrivateKeySigner = key.trim().parse().expect("a private key");
    let ledger = RpcLedger::connect(settings, signer)
        .await
        .expect("connected");
    contract(&ledger).await;
    let _: Arc<dyn Ledger> = Arc::new(ledger);
}

#[tokio::test]
async fn an_unreachable_node_is_unavailable_not_a_hang() {
    let settings = RpcSettings {
        // A port nothing listens on.
        url: format!("http://{}", common::fixed_address().0),
        confirmations: 1,
        timeout: Duration::from_secs(2),
    };
    let started = std::time::Instant::now();
    let outcome = RpcLedger::connect(settings, PrivateKeySigner::random()).await;
    assert!(matches!(outcome, Err(LedgerError::Unavailable(_))));
    assert!(started.elapsed() < Duration::from_secs(5));
}
