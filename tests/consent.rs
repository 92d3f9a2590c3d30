//! Patient-controlled consent end to end, through HTTP, on both ledgers (the embedded revm
//! ledger, and anvil with MongoDB and IPFS): who is denied, the patient binding a wallet and
//! granting with signatures made by eth-account (Python, not this project's code), revocation,
//! expiry, forged / replayed / wrong-patient signatures, a grant made on the contract directly,
//! break-glass, the chain going quiet (503 for patient data, 200 for a CodeSystem), and the
//! embedded ledger surviving `kill -9`.
//!
//! Patients and practitioners sign in at a trusted test issuer (their tokens carry `fhirUser`);
//! the custodian (the EHR of record) and an outsider are backend clients of the server.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use alloy::primitives::{Address, B256};
use alloy::signers::local::PrivateKeySigner;
use common::actors::{Actors, Started, actors, eventually, now, seed, start};
use common::wallet::{
    Wallet, bind, draft, grant, sign_with_eth_account, signed, typed_data, wallet,
};
use common::{Profile, signal};
use serde_json::{Value, json};

/// The scenario both ledgers must pass. Returns the actors (for what only one ledger can show)
/// and the Observation.
async fn consent_is_enforced(started: &Started) -> (Actors, String, String) {
    let a = actors(&started.server, &started.issuer, &started.outsider_secret).await;
    let (observation, condition) = seed(&a.custodian).await;

    // Without a grant: a non-custodian client and a practitioner are denied; the patient and
    // the custodian are not; a listing omits the resource and does not count it.
    assert_eq!(a.outsider.get(&observation).await.status, 403);
    let denied = a.doctor.get(&observation).await;
    assert_eq!(denied.status, 403);
    assert_eq!(denied.body["resourceType"], "OperationOutcome");
    assert_eq!(a.patient.get(&observation).await.status, 200);
    assert_eq!(a.custodian.get(&observation).await.status, 200);
    let listing = a
        .doctor
        .get("Observation?subject=Patient/p1&_total=accurate")
        .await;
    assert_eq!(listing.status, 200, "{}", listing.body);
    assert_eq!(listing.body["total"], 0, "{}", listing.body);
    assert!(listing.body["entry"].as_array().is_none_or(Vec::is_empty));
    assert_eq!(a.doctor.get("CodeSystem/cs1").await.status, 200);
    // Nobody else manages the patient's wallet or grants.
    let stranger = wallet();
    assert_eq!(
        a.doctor
            .get(&format!(
                "Patient/p1/$wallet-binding?address={}",
                stranger.address
            ))
            .await
            .status,
        403
    );

    // A grant before any wallet is bound is refused.
    let expiry = now() + 3600;
    let to_doctor = draft(
        "p1",
        json!({"reference": "Practitioner/doc1"}),
        &["Observation"],
        expiry,
    );
    let unbound = a.patient.post("Consent/$prepare", &to_doctor).await;
    assert_eq!(unbound.status, 422, "{}", unbound.body);

    // The patient binds a wallet (signed by eth-account) and grants read of Observation.
    let patient_wallet = wallet();
    let bound = bind(&a.patient, "p1", &patient_wallet).await;
    assert_eq!(bound.status, 200, "{}", bound.body);
    let (granted, signed_grant) = grant(&a.patient, &to_doctor, &patient_wallet).await;
    assert_eq!(granted.status, 201, "{}", granted.body);
    assert_eq!(granted.body["resourceType"], "Consent");
    assert_eq!(granted.body["status"], "active");
    let consent_id = granted.body["id"].as_str().unwrap().to_owned();
    assert_eq!(consent_id.len(), 64, "the grant id is the Consent's id");
    assert_eq!(
        a.doctor.get(&observation).await.status,
        200,
        "granted: allowed"
    );
    assert_eq!(
        a.doctor.get(&condition).await.status,
        403,
        "not granted: denied"
    );
    assert_eq!(
        a.outsider.get(&observation).await.status,
        403,
        "another grantee"
    );
    let found = a
        .doctor
        .get("Observation?subject=Patient/p1&_total=accurate")
        .await;
    assert_eq!(found.body["total"], 1, "{}", found.body);

    // Forged, replayed, wrong-patient and malformed signatures are refused with 4xx.
    let replayed = a.patient.post("Consent", &signed_grant).await;
    assert_eq!(replayed.status, 409, "replay: {}", replayed.body);
    let to_outsider = draft(
        "p1",
        json!({"identifier": {"system": "urn:ietf:params:oauth:client-id", "value": "outsider"}}),
        &[],
        expiry,
    );
    let (forged, _) = grant(&a.patient, &to_outsider, &wallet()).await;
    assert_eq!(forged.status, 422, "forged: {}", forged.body);
    let second_wallet = wallet();
    assert_eq!(bind(&a.custodian, "p2", &second_wallet).await.status, 200);
    let for_p2 = draft("p2", json!({"reference": "Practitioner/doc1"}), &[], expiry);
    let (wrong_patient, _) = grant(&a.custodian, &for_p2, &patient_wallet).await;
    assert_eq!(
        wrong_patient.status, 422,
        "wrong patient: {}",
        wrong_patient.body
    );
    let malformed = a
        .patient
        .post("Consent", &signed(to_doctor.clone(), "0xzz"))
        .await;
    assert_eq!(malformed.status, 400, "{}", malformed.body);
    let mut deny = to_doctor.clone();
    deny["provision"]["type"] = json!("deny");
    assert_eq!(a.patient.post("Consent/$prepare", &deny).await.status, 422);
    assert_eq!(
        a.doctor.get(&condition).await.status,
        403,
        "nothing was granted"
    );

    // The Consent mirrors the chain, and is listed for the patient.
    let listed = a.patient.get("Consent?patient=Patient/p1").await;
    assert_eq!(listed.status, 200);
    let ids: Vec<&str> = listed.body["entry"]
        .as_array()
        .map(|e| {
            e.iter()
                .filter_map(|e| e["resource"]["id"].as_str())
                .collect()
        })
        .unwrap_or_default();
    assert!(ids.contains(&consent_id.as_str()), "{}", listed.body);

    // An expired grant is denied.
    let short = draft(
        "p1",
        json!({"reference": "Practitioner/doc1"}),
        &["Condition"],
        now() + 4,
    );
    let (short_grant, _) = grant(&a.patient, &short, &patient_wallet).await;
    assert_eq!(short_grant.status, 201, "{}", short_grant.body);
    assert_eq!(a.doctor.get(&condition).await.status, 200);
    assert!(
        eventually(&a.doctor, &condition, 403).await,
        "expired: denied"
    );

    // Revocation: the grant's Consent, inactive, signed.
    let mut revocation = granted.body.clone();
    revocation["status"] = json!("inactive");
    revocation.as_object_mut().unwrap().remove("meta");
    let typed = typed_data(&a.patient.post("Consent/$prepare", &revocation).await);
    let revoke_body = signed(
        revocation,
        &sign_with_eth_account(&typed, &patient_wallet.key),
    );
    let revoked = a
        .patient
        .put(&format!("Consent/{consent_id}"), &revoke_body)
        .await;
    assert_eq!(revoked.status, 200, "{}", revoked.body);
    assert_eq!(revoked.body["status"], "inactive");
    assert_eq!(
        a.doctor.get(&observation).await.status,
        403,
        "revoked: denied at once"
    );
    // A grant's Consent changes only by revocation.
    let mut tampered = granted.body.clone();
    tampered["status"] = json!("active");
    assert_eq!(
        a.patient
            .put(&format!("Consent/{consent_id}"), &tampered)
            .await
            .status,
        422
    );

    // Break-glass: asked for explicitly, allowed, and on record for its window.
    let emergency = a
        .doctor
        .with("x-purpose-of-use", "BTG")
        .with("x-break-glass-reason", "unconscious in the emergency room");
    assert_eq!(emergency.get(&observation).await.status, 200, "break-glass");
    assert_eq!(
        a.doctor.get(&observation).await.status,
        403,
        "only when asked for"
    );
    assert_eq!(
        a.outsider
            .with("x-purpose-of-use", "BTG")
            .with("x-break-glass-reason", "x")
            .get(&observation)
            .await
            .status,
        403,
        "only a practitioner breaks the glass"
    );
    assert_eq!(
        a.doctor
            .with("x-purpose-of-use", "BTG")
            .get(&observation)
            .await
            .status,
        400,
        "a reason is required"
    );
    (a, observation, condition)
}

#[tokio::test(flavor = "multi_thread")]
async fn consent_is_enforced_on_the_embedded_ledger_and_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let started = start(dir.path(), &Profile::Embedded, &[]).await;
    let (a, observation, _) = consent_is_enforced(&started).await;
    cli_binds_grants_lists_and_revokes(dir.path(), &started.server.base_url, &a).await;

    // kill -9 and restart: the chain (wallets, grants, revocations, break-glass) is intact.
    let restarted = started.kill().restart(dir.path());
    let b = actors(
        &restarted.server,
        &restarted.issuer,
        &restarted.outsider_secret,
    )
    .await;
    assert_eq!(
        b.doctor.get(&observation).await.status,
        403,
        "still revoked"
    );
    let emergency = b
        .doctor
        .with("x-purpose-of-use", "BTG")
        .with("x-break-glass-reason", "still in the emergency room");
    assert_eq!(emergency.get(&observation).await.status, 200);
    let listed = b
        .patient
        .get("Consent?patient=Patient/p1&status=inactive")
        .await;
    assert_eq!(
        listed.body["entry"].as_array().map_or(0, Vec::len),
        1,
        "{}",
        listed.body
    );
    // The nonces carried on: a new grant after the restart works.
    let again = draft(
        "p1",
        json!({"reference": "Practitioner/doc1"}),
        &["Observation"],
        now() + 3600,
    );
    let typed = typed_data(&b.patient.post("Consent/$prepare", &again).await);
    let parsed: Value = serde_json::from_str(&typed).unwrap();
    assert_eq!(
        parsed["message"]["nonce"], 4,
        "bind, two grants, a revocation: {typed}"
    );
    drop(a);
}

/// `intellihealth consent …` against the running server, signing with a key file.
async fn cli_binds_grants_lists_and_revokes(dir: &Path, base: &str, a: &Actors) {
    a.custodian
        .put(
            "Patient/p4",
            &json!({"resourceType": "Patient", "id": "p4"}),
        )
        .await;
    let created = a
        .custodian
        .post(
            "Observation",
            &json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                "subject": {"reference": "Patient/p4"}}),
        )
        .await;
    let observation = format!("Observation/{}", created.body["id"].as_str().unwrap());
    let token_file = dir.join("custodian.token");
    std::fs::write(&token_file, &a.custodian.token).unwrap();
    let key_file = dir.join("p4.key");
    std::fs::write(&key_file, wallet().key).unwrap();
    let cli = |args: &[&str]| {
        let output = common::succeeded(
            common::command(&[])
                .arg("consent")
                .args(args)
                .args(["--server", base, "--token-file"])
                .arg(&token_file),
        );
        String::from_utf8(output.stdout).unwrap()
    };
    let key = key_file.to_str().unwrap();
    cli(&["bind", "--patient", "p4", "--patient-key", key]);
    assert_eq!(a.doctor.get(&observation).await.status, 403);
    let granted = cli(&[
        "grant",
        "--patient",
        "p4",
        "--patient-key",
        key,
        "--reference",
        "Practitioner/doc1",
        "--types",
        "Observation",
    ]);
    let consent = granted.trim().rsplit('/').next().unwrap().to_owned();
    assert_eq!(
        a.doctor.get(&observation).await.status,
        200,
        "granted by the CLI"
    );
    let listed = cli(&["list", "--patient", "p4"]);
    assert!(
        listed.contains(&consent)
            && listed.contains("active")
            && listed.contains("Practitioner/doc1"),
        "{listed}"
    );
    cli(&["revoke", "--patient-key", key, "--consent", &consent]);
    assert_eq!(
        a.doctor.get(&observation).await.status,
        403,
        "revoked by the CLI"
    );
    assert!(cli(&["list", "--patient", "p4"]).contains("inactive"));
}

/// An anvil of this test's own, so stopping it disturbs no other test.
struct OwnAnvil<'a>(&'a Path);

impl Drop for OwnAnvil<'_> {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.0.join("eth.pid")) {
            signal(pid.trim().parse().unwrap_or(0), libc::SIGCONT);
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/services");
        let _ = Command::new(script)
            .arg("down")
            .arg(self.0)
            .arg("eth")
            .output();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn consent_is_enforced_on_anvil_and_fails_closed_when_the_chain_goes_quiet() {
    let chain_dir = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/services");
    let output = common::succeeded(
        Command::new(script)
            .arg("up")
            .arg(chain_dir.path())
            .arg("eth"),
    );
    let _anvil = OwnAnvil(chain_dir.path());
    let ledger_env: Vec<(String, String)> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let (name, value) = line.strip_prefix("export ")?.split_once('=')?;
            Some((name.to_owned(), value.trim_matches('\'').to_owned()))
        })
        .filter(|(name, _)| name.starts_with("INTELLIHEALTH_ETH_"))
        .collect();
    let rpc = ledger_env
        .iter()
        .find(|(n, _)| n == "INTELLIHEALTH_ETH_RPC")
        .map(|(_, v)| v.clone())
        .expect("anvil's URL");
    let dir = tempfile::tempdir().unwrap();
    let profile = Profile::services("consent");
    let started = start(dir.path(), &profile, &ledger_env).await;
    let (a, observation, _) = consent_is_enforced(&started).await;

    // A grant made on the contract directly by the patient's wallet (it pays the gas),
    // bypassing the server, is honoured the same way.
    let direct_wallet = wallet();
    let created = a
        .custodian
        .put(
            "Patient/p3",
            &json!({"resourceType": "Patient", "id": "p3"}),
        )
        .await;
    assert_eq!(created.status, 201);
    let obs3 = a
        .custodian
        .post(
            "Observation",
            &json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                "subject": {"reference": "Patient/p3"}}),
        )
        .await;
    let obs3 = format!("Observation/{}", obs3.body["id"].as_str().unwrap());
    assert_eq!(bind(&a.custodian, "p3", &direct_wallet).await.status, 200);
    // The identities on chain are keyed hashes only the server can make: the typed data of a
    // prepared grant tells the patient theirs and the grantee's.
    let to_outsider = draft(
        "p3",
        json!({"identifier": {"system": "urn:ietf:params:oauth:client-id", "value": "outsider"}}),
        &["Observation"],
        now() + 3600,
    );
    let typed: Value = serde_json::from_str(&typed_data(
        &a.custodian.post("Consent/$prepare", &to_outsider).await,
    ))
    .unwrap();
    let registry: Address = typed["domain"]["verifyingContract"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let patient: B256 = typed["message"]["patient"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let grantee: B256 = typed["message"]["grantee"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    direct_grant(&rpc, &direct_wallet, registry, patient, grantee).await;
    assert!(
        eventually(&a.outsider, &obs3, 200).await,
        "a grant made on chain directly is honoured"
    );
    assert_eq!(
        a.outsider.get(&observation).await.status,
        403,
        "for that patient only"
    );

    // The chain goes quiet past the bound: patient data that needs a grant is refused with
    // 503 naming the ledger; a CodeSystem is still served; back when the chain is.
    let anvil_pid: i32 = std::fs::read_to_string(chain_dir.path().join("eth.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    signal(anvil_pid, libc::SIGSTOP);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let quiet = a.outsider.get(&obs3).await;
    assert_eq!(quiet.status, 503, "{}", quiet.body);
    assert!(quiet.body.to_string().contains("ledger"), "{}", quiet.body);
    assert_eq!(a.outsider.get("CodeSystem/cs1").await.status, 200);
    signal(anvil_pid, libc::SIGCONT);
    assert!(eventually(&a.outsider, &obs3, 200).await, "served again");
}

/// `grantAsPatient` sent from the patient's own wallet, funded with anvil's `anvil_setBalance`.
async fn direct_grant(rpc: &str, wallet: &Wallet, registry: Address, patient: B256, grantee: B256) {
    use alloy::network::EthereumWallet;
    use alloy::providers::{Provider, ProviderBuilder};
    use alloy::rpc::types::TransactionRequest;
    use alloy::sol_types::SolCall;
    use intellihealth::ledger::bindings::ConsentRegistry;
    let http = reqwest::Client::new();
    let funded = http
        .post(rpc)
        .json(
            &json!({"jsonrpc": "2.0", "id": 1, "method": "anvil_setBalance",
            "params": [wallet.address.to_string(), "0x8AC7230489E80000"]}),
        )
        .send()
        .await
        .unwrap();
    assert!(funded.status().is_success());
    let signer: PrivateKeySigner = wallet.key.parse().unwrap();
    let provider = ProviderBuilder::new()
        .wallet(EthereumWallet::from(signer))
        .connect_http(rpc.parse().unwrap());
    let call = ConsentRegistry::grantAsPatientCall {
        patient,
        grantee,
        resourceTypes: vec!["Observation".into()],
        actions: 1,
        expiry: now() + 3600,
    };
    let tx = TransactionRequest::default()
        .to(registry)
        .input(call.abi_encode().into());
    let receipt = provider
        .send_transaction(tx)
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    assert!(receipt.status(), "the direct grant was mined");
}
