// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @title ConsentRegistry: a patient's own, signed decisions about who may read or write their
/// FHIR record.
/// @notice Identities on chain are keyed hashes made off chain under a per-deployment secret
/// (`patient` = keccak256(secret ‖ "patient" ‖ base URL ‖ Patient id), `grantee` likewise for a
/// `Practitioner/…` reference or a client id): an observer learns that some patient made some
/// grant, never who. A patient acts through the wallet bound to them; the registrar (the
/// server's account, which has checked who the patient is) binds a wallet only with that
/// wallet's own EIP-712 signature, and relays grants and revocations the wallet signed, so a
/// patient pays no gas, and may still call the contract from their wallet directly.
contract ConsentRegistry {
    uint8 public constant READ = 1;
    uint8 public constant WRITE = 2;
    /// The resource type key that stands for every type.
    bytes32 public constant ANY_TYPE = keccak256("*");

    bytes32 private constant DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");
    bytes32 public constant BIND_TYPEHASH =
        keccak256("BindWallet(bytes32 patient,address wallet,uint256 nonce,uint256 deadline)");
    bytes32 public constant GRANT_TYPEHASH = keccak256(
        "Grant(bytes32 patient,bytes32 grantee,string[] resourceTypes,uint8 actions,uint64 expiry,uint256 nonce,uint256 deadline)"
    );
    bytes32 public constant REVOKE_TYPEHASH =
        keccak256("Revoke(bytes32 patient,bytes32 grantId,uint256 nonce,uint256 deadline)");
    bytes32 public constant ERASE_TYPEHASH = keccak256("Erase(bytes32 patient,uint256 nonce,uint256 deadline)");
    /// secp256k1's order / 2: a signature with a larger `s` is the malleated twin of another.
    uint256 private constant HALF_ORDER = 0x7fffffffffffffffffffffffffffffff5d576e7357a4501ddfe92f46681b20a0;

    struct GrantRecord {
        bytes32 patient;
        bytes32 grantee;
        uint8 actions;
        uint64 expiry;
        bool revoked;
        bytes32[] typeKeys;
    }

    /// What `isAllowed` reads: the newest grant covering (patient, grantee, type key).
    struct Permission {
        bytes32 grantId;
        uint8 actions;
        uint64 expiry;
    }

    address public registrar;
    bytes32 public immutable domainSeparator;

    mapping(bytes32 patient => address wallet) public walletOf;
    /// The next nonce a patient's signature must carry (binds, grants, revocations share it).
    mapping(bytes32 patient => uint256 nonce) public nonces;
    mapping(bytes32 grantId => GrantRecord) private grants;
    mapping(bytes32 patient => mapping(bytes32 grantee => mapping(bytes32 typeKey => Permission))) private
        permissions;
    /// When a patient's record was erased at their signed request (block timestamp); 0: never.
    mapping(bytes32 patient => uint64) public erasedAt;

    event RegistrarChanged(address indexed previous, address indexed next);
    event WalletBound(bytes32 indexed patient, address wallet);
    event WalletRebound(bytes32 indexed patient, address previous, address wallet);
    event Granted(
        bytes32 indexed patient,
        bytes32 indexed grantee,
        bytes32 indexed grantId,
        bytes32[] typeKeys,
        uint8 actions,
        uint64 expiry
    );
    event Revoked(bytes32 indexed patient, bytes32 indexed grantee, bytes32 indexed grantId);
    event BreakGlass(bytes32 indexed patient, bytes32 indexed accessor, bytes32 reasonHash, uint64 until);
    event Erased(bytes32 indexed patient, address wallet, uint64 at);

    error NotRegistrar();
    error NotPatientWallet();
    error AlreadyBound();
    error NotBound();
    error Expired();
    error BadSignature();
    error WrongSigner();
    error NoActions();
    error NoTypes();
    error ZeroAddress();
    error AlreadyErased();
    error UnknownGrant();
    error AlreadyRevoked();

    constructor(address initialRegistrar, string memory name, string memory version) {
        if (initialRegistrar == address(0)) revert ZeroAddress();
        registrar = initialRegistrar;
        domainSeparator = keccak256(
            abi.encode(DOMAIN_TYPEHASH, keccak256(bytes(name)), keccak256(bytes(version)), block.chainid, address(this))
        );
        emit RegistrarChanged(address(0), initialRegistrar);
    }

    modifier onlyRegistrar() {
        if (msg.sender != registrar) revert NotRegistrar();
        _;
    }

    function setRegistrar(address next) external onlyRegistrar {
        if (next == address(0)) revert ZeroAddress();
        emit RegistrarChanged(registrar, next);
        registrar = next;
    }

    // ---- wallets ----

    /// Binds `wallet` to `patient`: the registrar vouches for the patient, the wallet's signature
    /// proves its key is held.
    function bindWallet(bytes32 patient, address wallet, uint256 deadline, bytes calldata signature)
        external
        onlyRegistrar
    {
        if (walletOf[patient] != address(0)) revert AlreadyBound();
        _checkBind(patient, wallet, deadline, signature);
        walletOf[patient] = wallet;
        emit WalletBound(patient, wallet);
    }

    /// Replaces a patient's wallet (a lost key), the same way a first binding is made.
    function rebindWallet(bytes32 patient, address wallet, uint256 deadline, bytes calldata signature)
        external
        onlyRegistrar
    {
        address previous = walletOf[patient];
        if (previous == address(0)) revert NotBound();
        _checkBind(patient, wallet, deadline, signature);
        walletOf[patient] = wallet;
        emit WalletRebound(patient, previous, wallet);
    }

    function _checkBind(bytes32 patient, address wallet, uint256 deadline, bytes calldata signature) private {
        if (wallet == address(0)) revert ZeroAddress();
        if (block.timestamp > deadline) revert Expired();
        uint256 nonce = nonces[patient]++;
        bytes32 structHash = keccak256(abi.encode(BIND_TYPEHASH, patient, wallet, nonce, deadline));
        if (_recover(structHash, signature) != wallet) revert WrongSigner();
    }

    // ---- grants ----

    /// A grant the patient's wallet signed, relayed by anyone.
    function grant(
        bytes32 patient,
        bytes32 grantee,
        string[] calldata resourceTypes,
        uint8 actions,
        uint64 expiry,
        uint256 deadline,
        bytes calldata signature
    ) external returns (bytes32 grantId) {
        address wallet = walletOf[patient];
        if (wallet == address(0)) revert NotBound();
        if (block.timestamp > deadline) revert Expired();
        uint256 nonce = nonces[patient]++;
        bytes32 structHash = keccak256(
            abi.encode(
                GRANT_TYPEHASH, patient, grantee, _hashStrings(resourceTypes), actions, expiry, nonce, deadline
            )
        );
        if (_recover(structHash, signature) != wallet) revert WrongSigner();
        return _grant(patient, grantee, resourceTypes, actions, expiry, nonce);
    }

    /// A grant made by the patient's wallet itself (it pays the gas; no signature needed).
    function grantAsPatient(
        bytes32 patient,
        bytes32 grantee,
        string[] calldata resourceTypes,
        uint8 actions,
        uint64 expiry
    ) external returns (bytes32 grantId) {
        if (walletOf[patient] == address(0)) revert NotBound();
        if (msg.sender != walletOf[patient]) revert NotPatientWallet();
        uint256 nonce = nonces[patient]++;
        return _grant(patient, grantee, resourceTypes, actions, expiry, nonce);
    }

    function _grant(
        bytes32 patient,
        bytes32 grantee,
        string[] calldata resourceTypes,
        uint8 actions,
        uint64 expiry,
        uint256 nonce
    ) private returns (bytes32 grantId) {
        if (erasedAt[patient] != 0) revert AlreadyErased();
        if (actions == 0 || actions > (READ | WRITE)) revert NoActions();
        if (resourceTypes.length == 0) revert NoTypes();
        if (expiry <= block.timestamp) revert Expired();
        grantId = keccak256(abi.encode(patient, nonce));
        bytes32[] memory typeKeys = new bytes32[](resourceTypes.length);
        for (uint256 i = 0; i < resourceTypes.length; i++) {
            bytes32 typeKey = keccak256(bytes(resourceTypes[i]));
            typeKeys[i] = typeKey;
            permissions[patient][grantee][typeKey] = Permission(grantId, actions, expiry);
        }
        grants[grantId] = GrantRecord(patient, grantee, actions, expiry, false, typeKeys);
        emit Granted(patient, grantee, grantId, typeKeys, actions, expiry);
    }

    /// A revocation the patient's wallet signed, relayed by anyone.
    function revoke(bytes32 patient, bytes32 grantId, uint256 deadline, bytes calldata signature) external {
        address wallet = walletOf[patient];
        if (wallet == address(0)) revert NotBound();
        if (block.timestamp > deadline) revert Expired();
        uint256 nonce = nonces[patient]++;
        bytes32 structHash = keccak256(abi.encode(REVOKE_TYPEHASH, patient, grantId, nonce, deadline));
        if (_recover(structHash, signature) != wallet) revert WrongSigner();
        _revoke(patient, grantId);
    }

    function revokeAsPatient(bytes32 patient, bytes32 grantId) external {
        if (walletOf[patient] == address(0)) revert NotBound();
        if (msg.sender != walletOf[patient]) revert NotPatientWallet();
        nonces[patient]++;
        _revoke(patient, grantId);
    }

    function _revoke(bytes32 patient, bytes32 grantId) private {
        GrantRecord storage record = grants[grantId];
        if (record.patient != patient || record.typeKeys.length == 0) revert UnknownGrant();
        if (record.revoked) revert AlreadyRevoked();
        record.revoked = true;
        for (uint256 i = 0; i < record.typeKeys.length; i++) {
            Permission storage p = permissions[patient][record.grantee][record.typeKeys[i]];
            // A later grant for the same type replaced this one's entry: that one stays.
            if (p.grantId == grantId) delete permissions[patient][record.grantee][record.typeKeys[i]];
        }
        emit Revoked(patient, record.grantee, grantId);
    }

    // ---- emergencies ----

    /// An emergency access the server allowed (HL7 purpose of use BTG), on the record.
    function breakGlass(bytes32 patient, bytes32 accessor, bytes32 reasonHash, uint64 until) external onlyRegistrar {
        if (until <= block.timestamp) revert Expired();
        emit BreakGlass(patient, accessor, reasonHash, until);
    }

    // ---- erasure ----

    /// The patient's own signed request that the server erase their record (destroy the key
    /// their data is sealed with), recorded by the registrar before it erases: anyone can check
    /// that an erasure was the patient's wish, and when it happened. An erased patient grants
    /// nothing afterwards.
    function recordErasure(bytes32 patient, uint256 deadline, bytes calldata signature) external onlyRegistrar {
        address wallet = walletOf[patient];
        if (wallet == address(0)) revert NotBound();
        if (erasedAt[patient] != 0) revert AlreadyErased();
        if (block.timestamp > deadline) revert Expired();
        uint256 nonce = nonces[patient]++;
        bytes32 structHash = keccak256(abi.encode(ERASE_TYPEHASH, patient, nonce, deadline));
        if (_recover(structHash, signature) != wallet) revert WrongSigner();
        erasedAt[patient] = uint64(block.timestamp);
        emit Erased(patient, wallet, uint64(block.timestamp));
    }

    // ---- views ----

    /// Whether `grantee` may perform `action` (READ or WRITE) on `patient`'s resources of
    /// `resourceType` now, by a grant for that type or for every type (`*`).
    function isAllowed(bytes32 patient, bytes32 grantee, string calldata resourceType, uint8 action)
        external
        view
        returns (bool)
    {
        return _covers(permissions[patient][grantee][keccak256(bytes(resourceType))], action)
            || _covers(permissions[patient][grantee][ANY_TYPE], action);
    }

    function grantOf(bytes32 grantId)
        external
        view
        returns (bytes32 patient, bytes32 grantee, uint8 actions, uint64 expiry, bool revoked, bytes32[] memory typeKeys)
    {
        GrantRecord storage r = grants[grantId];
        return (r.patient, r.grantee, r.actions, r.expiry, r.revoked, r.typeKeys);
    }

    function _covers(Permission storage p, uint8 action) private view returns (bool) {
        return p.grantId != bytes32(0) && (p.actions & action) == action && block.timestamp < p.expiry;
    }

    // ---- EIP-712 ----

    function _hashStrings(string[] calldata values) private pure returns (bytes32) {
        bytes32[] memory hashes = new bytes32[](values.length);
        for (uint256 i = 0; i < values.length; i++) {
            hashes[i] = keccak256(bytes(values[i]));
        }
        return keccak256(abi.encodePacked(hashes));
    }

    function _recover(bytes32 structHash, bytes calldata signature) private view returns (address) {
        if (signature.length != 65) revert BadSignature();
        bytes32 r = bytes32(signature[0:32]);
        bytes32 s = bytes32(signature[32:64]);
        uint8 v = uint8(signature[64]);
        if (v < 27) v += 27;
        if ((v != 27 && v != 28) || uint256(s) > HALF_ORDER) revert BadSignature();
        bytes32 digest = keccak256(abi.encodePacked("\x19\x01", domainSeparator, structHash));
        address signer = ecrecover(digest, v, r, s);
        if (signer == address(0)) revert BadSignature();
        return signer;
    }
}
