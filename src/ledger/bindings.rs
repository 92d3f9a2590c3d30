//! The contracts' Rust bindings, generated at compile time from the committed artifacts in
//! `contracts/out/` (the same bytecode both ledgers run), and the EIP-712 messages patients
//! sign for them.
//!
//! The typed-data structs here must match the contract's type hashes field for field; the
//! contract tests check the hashes against the contract's own `*_TYPEHASH` constants, so a
//! change on one side alone fails.

use alloy::primitives::{Address, Bytes};
use alloy::sol;
use alloy::sol_types::{Eip712Domain, SolConstructor, eip712_domain};

sol!(
    #[derive(Debug)]
    ConsentRegistry,
    "contracts/out/ConsentRegistry.json"
);

sol!(
    #[derive(Debug)]
    AuditAnchor,
    "contracts/out/AuditAnchor.json"
);

/// The anchor contract's deployment code: `anchorer` (the server's account) may anchor.
pub fn audit_anchor_init_code(anchorer: Address) -> Bytes {
    let mut code = AuditAnchor::BYTECODE.to_vec();
    code.extend(
        AuditAnchor::constructorCall {
            firstAnchorer: anchorer,
        }
        .abi_encode(),
    );
    code.into()
}

/// What patients sign. Field names and order are the contract's.
pub mod typed {
    alloy::sol! {
        #[derive(Debug)]
        struct BindWallet {
            bytes32 patient;
            address wallet;
            uint256 nonce;
            uint256 deadline;
        }

        #[derive(Debug)]
        struct Grant {
            bytes32 patient;
            bytes32 grantee;
            string[] resourceTypes;
            uint8 actions;
            uint64 expiry;
            uint256 nonce;
            uint256 deadline;
        }

        #[derive(Debug)]
        struct Revoke {
            bytes32 patient;
            bytes32 grantId;
            uint256 nonce;
            uint256 deadline;
        }

        /// The patient's request that their record be erased (`recordErasure`).
        #[derive(Debug)]
        struct Erase {
            bytes32 patient;
            uint256 nonce;
            uint256 deadline;
        }
    }
}

/// The EIP-712 domain's name and version, given to the registry's constructor.
pub const CONSENT_DOMAIN_NAME: &str = "IntelliHealth Consent";
pub const CONSENT_DOMAIN_VERSION: &str = "1";

/// The domain every consent signature is made in: it binds a signature to this chain and this
/// deployment.
pub fn consent_domain(chain_id: u64, registry: Address) -> Eip712Domain {
    eip712_domain! {
        name: CONSENT_DOMAIN_NAME,
        version: CONSENT_DOMAIN_VERSION,
        chain_id: chain_id,
        verifying_contract: registry,
    }
}

/// The registry's deployment code with its constructor arguments: `registrar` is the server's
/// account.
pub fn consent_registry_init_code(registrar: Address) -> Bytes {
    let mut code = ConsentRegistry::BYTECODE.to_vec();
    code.extend(
        ConsentRegistry::constructorCall {
            initialRegistrar: registrar,
            name: CONSENT_DOMAIN_NAME.to_owned(),
            version: CONSENT_DOMAIN_VERSION.to_owned(),
        }
        .abi_encode(),
    );
    code.into()
}

/// The name of the custom error `data` encodes (the registry's or the anchor's), if it is one.
pub fn error_name(data: &[u8]) -> Option<String> {
    let selector: [u8; 4] = data.get(..4)?.try_into().ok()?;
    ConsentRegistry::ConsentRegistryErrors::name_by_selector(selector)
        .or_else(|| AuditAnchor::AuditAnchorErrors::name_by_selector(selector))
        .map(str::to_owned)
}
