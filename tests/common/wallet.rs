//! A patient's wallet in the black-box tests: a random key whose EIP-712 signatures are made
//! by eth-account (Python, a wallet library that is not this project's), and the binding of
//! that wallet to a patient through the server's API.

use alloy::primitives::Address;
use alloy::signers::local::PrivateKeySigner;
use serde_json::{Value, json};

use super::actors::{Api, Reply};

const SIGN: &str = r#"
import json, sys
from eth_account import Account
from eth_account.messages import encode_typed_data
typed = json.loads(sys.stdin.read())
signed = Account.sign_message(encode_typed_data(full_message=typed), sys.argv[1])
print("0x" + bytes(signed.signature).hex())
"#;

/// eth-account's signature of `typed_data` (the JSON the server gave) with `key`.
pub fn sign_with_eth_account(typed_data: &str, key: &str) -> String {
    let output = super::python(&["-c", SIGN, key], typed_data);
    assert!(
        output.status.success(),
        "eth-account: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

pub struct Wallet {
    pub key: String,
    pub address: Address,
}

pub fn wallet() -> Wallet {
    let signer = PrivateKeySigner::random();
    Wallet {
        key: alloy::hex::encode_prefixed(signer.to_bytes()),
        address: signer.address(),
    }
}

/// The `typedData` of a `Parameters` answer.
pub fn typed_data(reply: &Reply) -> String {
    assert_eq!(reply.status, 200, "typed data: {}", reply.body);
    reply.body["parameter"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "typedData"))
        .and_then(|p| p["valueString"].as_str())
        .unwrap_or_else(|| panic!("no typedData: {}", reply.body))
        .to_owned()
}

/// Binds `wallet` to `patient` through the API, signed by eth-account.
pub async fn bind(api: &Api, patient: &str, wallet: &Wallet) -> Reply {
    let typed = typed_data(
        &api.get(&format!(
            "Patient/{patient}/$wallet-binding?address={}",
            wallet.address
        ))
        .await,
    );
    let signature = sign_with_eth_account(&typed, &wallet.key);
    api.post(
        &format!("Patient/{patient}/$wallet-binding"),
        &json!({"resourceType": "Parameters", "parameter": [
            {"name": "address", "valueString": wallet.address.to_string()},
            {"name": "signature", "valueString": signature},
        ]}),
    )
    .await
}

pub fn instant(secs: u64) -> String {
    intellihealth::fhir::instant::format_instant((secs * 1000) as i64)
}

/// A draft grant from `patient` to `grantee` (a reference, or a client id).
pub fn draft(patient: &str, grantee: Value, types: &[&str], expiry: u64) -> Value {
    let mut provision = json!({
        "type": "permit",
        "period": {"end": instant(expiry)},
        "actor": [{"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]}, "reference": grantee}],
        "action": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentaction", "code": "access"}]}],
    });
    if !types.is_empty() {
        provision["class"] = types
            .iter()
            .map(|t| json!({"system": "http://hl7.org/fhir/resource-types", "code": t}))
            .collect();
    }
    json!({
        "resourceType": "Consent",
        "status": "proposed",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": format!("Patient/{patient}")},
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
        "provision": provision,
    })
}

pub fn signed(mut consent: Value, signature: &str) -> Value {
    consent["extension"] = json!([{
        "url": "https://intellihealth.dev/fhir/StructureDefinition/eip712-signature",
        "valueString": signature,
    }]);
    consent
}

/// Prepares, signs (with `signer`) and posts a grant; the reply and the signed Consent.
pub async fn grant(api: &Api, consent: &Value, signer: &Wallet) -> (Reply, Value) {
    let typed = typed_data(&api.post("Consent/$prepare", consent).await);
    let body = signed(consent.clone(), &sign_with_eth_account(&typed, &signer.key));
    (api.post("Consent", &body).await, body)
}
