//! The EIP-712 messages of the registry as the JSON a wallet signs (`eth_signTypedData_v4`:
//! `types` with `EIP712Domain`, `primaryType`, `domain`, `message`), and the check of a
//! signature against them before anything is sent to the chain.
//!
//! Numbers are JSON numbers (every value here fits in 53 bits); `bytes32` and addresses are
//! 0x-hex. The signing hash checked is alloy's over the bindings' structs, the same the
//! contract recomputes, so the JSON and the contract cannot disagree unnoticed: the HTTP tests
//! sign this JSON with eth-account and the contract accepts it.

use alloy::primitives::{Address, B256, Signature, U256};
use alloy::sol_types::{Eip712Domain, SolStruct};
use serde_json::{Value, json};

use super::ConsentError;
use crate::ledger::bindings::{CONSENT_DOMAIN_NAME, CONSENT_DOMAIN_VERSION, typed};

/// secp256k1's order / 2: the contract refuses a larger `s` (the malleated twin of another
/// signature), so the server does too, before spending gas on it.
const HALF_ORDER: U256 = U256::from_be_slice(&[
    0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0x5d, 0x57, 0x6e, 0x73, 0x57, 0xa4, 0x50, 0x1d, 0xdf, 0xe9, 0x2f, 0x46, 0x68, 0x1b, 0x20, 0xa0,
]);

fn field(name: &str, ty: &str) -> Value {
    json!({"name": name, "type": ty})
}

fn envelope(
    chain_id: u64,
    registry: Address,
    primary: &str,
    fields: Value,
    message: Value,
) -> Value {
    json!({
        "types": {
            "EIP712Domain": [
                field("name", "string"),
                field("version", "string"),
                field("chainId", "uint256"),
                field("verifyingContract", "address"),
            ],
            primary: fields,
        },
        "primaryType": primary,
        "domain": {
            "name": CONSENT_DOMAIN_NAME,
            "version": CONSENT_DOMAIN_VERSION,
            "chainId": chain_id,
            "verifyingContract": registry.to_checksum(None),
        },
        "message": message,
    })
}

fn number(value: U256) -> Value {
    u64::try_from(value).map_or_else(|_| Value::String(value.to_string()), Value::from)
}

pub fn bind_json(chain_id: u64, registry: Address, m: &typed::BindWallet) -> Value {
    envelope(
        chain_id,
        registry,
        "BindWallet",
        json!([
            field("patient", "bytes32"),
            field("wallet", "address"),
            field("nonce", "uint256"),
            field("deadline", "uint256"),
        ]),
        json!({
            "patient": m.patient.to_string(),
            "wallet": m.wallet.to_checksum(None),
            "nonce": number(m.nonce),
            "deadline": number(m.deadline),
        }),
    )
}

pub fn grant_json(chain_id: u64, registry: Address, m: &typed::Grant) -> Value {
    envelope(
        chain_id,
        registry,
        "Grant",
        json!([
            field("patient", "bytes32"),
            field("grantee", "bytes32"),
            field("resourceTypes", "string[]"),
            field("actions", "uint8"),
            field("expiry", "uint64"),
            field("nonce", "uint256"),
            field("deadline", "uint256"),
        ]),
        json!({
            "patient": m.patient.to_string(),
            "grantee": m.grantee.to_string(),
            "resourceTypes": m.resourceTypes,
            "actions": m.actions,
            "expiry": m.expiry,
            "nonce": number(m.nonce),
            "deadline": number(m.deadline),
        }),
    )
}

pub fn revoke_json(chain_id: u64, registry: Address, m: &typed::Revoke) -> Value {
    envelope(
        chain_id,
        registry,
        "Revoke",
        json!([
            field("patient", "bytes32"),
            field("grantId", "bytes32"),
            field("nonce", "uint256"),
            field("deadline", "uint256"),
        ]),
        json!({
            "patient": m.patient.to_string(),
            "grantId": m.grantId.to_string(),
            "nonce": number(m.nonce),
            "deadline": number(m.deadline),
        }),
    )
}

pub fn erase_json(chain_id: u64, registry: Address, m: &typed::Erase) -> Value {
    envelope(
        chain_id,
        registry,
        "Erase",
        json!([
            field("patient", "bytes32"),
            field("nonce", "uint256"),
            field("deadline", "uint256"),
        ]),
        json!({
            "patient": m.patient.to_string(),
            "nonce": number(m.nonce),
            "deadline": number(m.deadline),
        }),
    )
}

/// A 65-byte signature from 0x-hex, refused when malformed or malleable.
pub fn parse_signature(hex: &str) -> Result<Signature, ConsentError> {
    let bytes = parse_hex(hex, "signature")?;
    if bytes.len() != 65 {
        return Err(ConsentError::Invalid(format!(
            "a signature is 65 bytes (r, s, v), not {}",
            bytes.len()
        )));
    }
    let signature = Signature::try_from(bytes.as_slice())
        .map_err(|e| ConsentError::Invalid(format!("the signature is not valid: {e}")))?;
    if signature.s() > HALF_ORDER {
        return Err(ConsentError::Invalid(
            "the signature's s is in the upper half of the curve order (a malleated \
             signature); sign again"
                .into(),
        ));
    }
    Ok(signature)
}

/// Who signed `message` in `domain`.
pub fn signer_of(
    message: &impl SolStruct,
    domain: &Eip712Domain,
    signature: &Signature,
) -> Result<Address, ConsentError> {
    let hash: B256 = message.eip712_signing_hash(domain);
    signature
        .recover_address_from_prehash(&hash)
        .map_err(|e| ConsentError::Invalid(format!("no signer can be recovered: {e}")))
}

/// 0x-hex as bytes; `what` names the value in the error.
pub fn parse_hex(text: &str, what: &str) -> Result<Vec<u8>, ConsentError> {
    let digits = text
        .trim()
        .strip_prefix("0x")
        .ok_or_else(|| ConsentError::Invalid(format!("the {what} must be 0x-prefixed hex")))?;
    alloy::hex::decode(digits)
        .map_err(|_| ConsentError::Invalid(format!("the {what} is not valid hex")))
}

/// An address from 0x-hex (40 digits; checksummed or not).
pub fn parse_address(text: &str) -> Result<Address, ConsentError> {
    let bytes = parse_hex(text, "address")?;
    if bytes.len() != 20 {
        return Err(ConsentError::Invalid(
            "an address is 20 bytes (40 hex digits)".into(),
        ));
    }
    let address = Address::from_slice(&bytes);
    if address == Address::ZERO {
        return Err(ConsentError::Invalid(
            "the zero address holds no key".into(),
        ));
    }
    Ok(address)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy::signers::SignerSync;
    use alloy::signers::local::PrivateKeySigner;

    #[test]
    fn a_signature_recovers_its_signer_and_a_malleated_one_is_refused() {
        let wallet = PrivateKeySigner::random();
        let domain = crate::ledger::bindings::consent_domain(31337, Address::repeat_byte(7));
        let message = typed::Revoke {
            patient: B256::repeat_byte(1),
            grantId: B256::repeat_byte(2),
            nonce: U256::from(3),
            deadline: U256::from(4),
        };
        let signature = wallet
            .sign_hash_sync(&message.eip712_signing_hash(&domain))
            .unwrap();
        let hex = alloy::hex::encode_prefixed(signature.as_bytes());
        let parsed = parse_signature(&hex).unwrap();
        assert_eq!(
            signer_of(&message, &domain, &parsed).unwrap(),
            wallet.address()
        );
        // s' = n - s with the other parity recovers the same key: the malleated twin.
        let order = U256::from_str_radix(
            "fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141",
            16,
        )
        .unwrap();
        let twin = Signature::new(signature.r(), order - signature.s(), !signature.v());
        let twin_hex = alloy::hex::encode_prefixed(twin.as_bytes());
        assert!(parse_signature(&twin_hex).is_err());
        assert!(parse_signature("0x1234").is_err());
        assert!(parse_signature("1234").is_err());
        assert!(parse_signature("0xzz").is_err());
        let json = revoke_json(31337, Address::repeat_byte(7), &message);
        assert_eq!(json["primaryType"], "Revoke");
        assert_eq!(json["message"]["nonce"], 3);
    }
}
