"""ConsentRegistry against a real node (anvil), every branch, with every signature made by
eth-account (PyPI eth-account==0.14.0), a wallet library that is not the project's own: the
EIP-712 types and domain the contract checks are exactly what an ordinary wallet signs.

    python consent_registry_test.py ANVIL_BINARY ARTIFACT_JSON

Exits non-zero, naming the failed check, on the first failure. scripts/contract-tests installs
the two tools and runs it; scripts/test runs that.
"""

import json
import sys

from eth_abi import encode
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import keccak, to_checksum_address

import chain
from chain import check, error, expect_revert, now, rpc, transact, view

ANVIL, ARTIFACT = sys.argv[1], sys.argv[2]
CHAIN_ID = 31337
NAME, VERSION = "IntelliHealth Consent", "1"
READ, WRITE = 1, 2

chain.start(ANVIL, CHAIN_ID)
artifact = json.load(open(ARTIFACT))
accounts = rpc("eth_accounts", [])["result"]
registrar, relayer, stranger = accounts[0], accounts[1], accounts[2]
ctor = encode(["address", "string", "string"], [registrar, NAME, VERSION])
deployed = chain.deploy(artifact["bytecode"], ctor, registrar)
contract = deployed["contractAddress"]
gas = {"deploy": int(deployed["gasUsed"], 16)}
domain = {"name": NAME, "version": VERSION, "chainId": CHAIN_ID,
          "verifyingContract": to_checksum_address(contract)}


def sign(primary, fields, message, key):
    typed = {
        "types": {
            "EIP712Domain": [{"name": "name", "type": "string"}, {"name": "version", "type": "string"},
                             {"name": "chainId", "type": "uint256"},
                             {"name": "verifyingContract", "type": "address"}],
            primary: fields},
        "primaryType": primary, "domain": domain, "message": message}
    return bytes(Account.sign_message(encode_typed_data(full_message=typed), key).signature)


BIND_FIELDS = [{"name": "patient", "type": "bytes32"}, {"name": "wallet", "type": "address"},
               {"name": "nonce", "type": "uint256"}, {"name": "deadline", "type": "uint256"}]
GRANT_FIELDS = [{"name": "patient", "type": "bytes32"}, {"name": "grantee", "type": "bytes32"},
                {"name": "resourceTypes", "type": "string[]"}, {"name": "actions", "type": "uint8"},
                {"name": "expiry", "type": "uint64"}, {"name": "nonce", "type": "uint256"},
                {"name": "deadline", "type": "uint256"}]
REVOKE_FIELDS = [{"name": "patient", "type": "bytes32"}, {"name": "grantId", "type": "bytes32"},
                 {"name": "nonce", "type": "uint256"}, {"name": "deadline", "type": "uint256"}]
ERASE_FIELDS = [{"name": "patient", "type": "bytes32"}, {"name": "nonce", "type": "uint256"},
                {"name": "deadline", "type": "uint256"}]
ERASE = "recordErasure(bytes32,uint256,bytes)"
ERASE_TYPES = ["bytes32", "uint256", "bytes"]
BIND = "bindWallet(bytes32,address,uint256,bytes)"
REBIND = "rebindWallet(bytes32,address,uint256,bytes)"
BIND_TYPES = ["bytes32", "address", "uint256", "bytes"]
GRANT = "grant(bytes32,bytes32,string[],uint8,uint64,uint256,bytes)"
GRANT_TYPES = ["bytes32", "bytes32", "string[]", "uint8", "uint64", "uint256", "bytes"]
REVOKE = "revoke(bytes32,bytes32,uint256,bytes)"
REVOKE_TYPES = ["bytes32", "bytes32", "uint256", "bytes"]
IS_ALLOWED = "isAllowed(bytes32,bytes32,string,uint8)"


def allowed(patient, grantee, resource_type, action):
    return view(IS_ALLOWED, ["bytes32", "bytes32", "string", "uint8"],
                [patient, grantee, resource_type, action], ["bool"])[0]


def nonce_of(patient):
    return view("nonces(bytes32)", ["bytes32"], [patient], ["uint256"])[0]


def bind_signature(patient, wallet, deadline, key=None, nonce=None):
    nonce = nonce_of(patient) if nonce is None else nonce
    return sign("BindWallet", BIND_FIELDS, {"patient": patient, "wallet": wallet.address,
                                            "nonce": nonce, "deadline": deadline},
                (key or wallet).key)


def grant_args(patient, grantee, types, actions, expiry, deadline, key, nonce=None):
    nonce = nonce_of(patient) if nonce is None else nonce
    signature = sign("Grant", GRANT_FIELDS, {
        "patient": patient, "grantee": grantee, "resourceTypes": types, "actions": actions,
        "expiry": expiry, "nonce": nonce, "deadline": deadline}, key.key)
    return [patient, grantee, types, actions, expiry, deadline, signature]


def revoke_args(patient, grant_id, deadline, key, nonce=None):
    nonce = nonce_of(patient) if nonce is None else nonce
    signature = sign("Revoke", REVOKE_FIELDS, {"patient": patient, "grantId": grant_id,
                                               "nonce": nonce, "deadline": deadline}, key.key)
    return [patient, grant_id, deadline, signature]


def erase_args(patient, deadline, key, nonce=None):
    nonce = nonce_of(patient) if nonce is None else nonce
    signature = sign("Erase", ERASE_FIELDS, {"patient": patient, "nonce": nonce,
                                             "deadline": deadline}, key.key)
    return [patient, deadline, signature]


def grant_id_of(patient, nonce):
    return keccak(encode(["bytes32", "uint256"], [patient, nonce]))


try:
    # Keyed hashes, as the server makes them; the contract never sees an id.
    patient, other_patient = keccak(b"k|patient|a"), keccak(b"k|patient|b")
    practitioner, app = keccak(b"k|grantee|Practitioner/p"), keccak(b"k|grantee|client-x")
    wallet, impostor, new_wallet = Account.create(), Account.create(), Account.create()
    later = now() + 3600

    # ---- binding ----
    sig = bind_signature(patient, wallet, later)
    expect_revert("only the registrar binds", transact(relayer, BIND, BIND_TYPES,
                  [patient, wallet.address, later, sig]), "NotRegistrar")
    expect_revert("a binding needs the wallet's own signature", transact(
        registrar, BIND, BIND_TYPES,
        [patient, wallet.address, later, bind_signature(patient, wallet, later, key=impostor)]),
        "WrongSigner")
    expect_revert("a binding past its deadline", transact(
        registrar, BIND, BIND_TYPES,
        [patient, wallet.address, now() - 1, bind_signature(patient, wallet, now() - 1)]),
        "Expired")
    expect_revert("a signature that is not 65 bytes", transact(
        registrar, BIND, BIND_TYPES, [patient, wallet.address, later, sig[:64]]), "BadSignature")
    # The malleated twin (s' = n - s, v flipped) of a valid signature is refused.
    n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    s = int.from_bytes(sig[32:64], "big")
    twin = sig[:32] + (n - s).to_bytes(32, "big") + bytes([55 - sig[64]])
    expect_revert("a malleated signature", transact(
        registrar, BIND, BIND_TYPES, [patient, wallet.address, later, twin]), "BadSignature")
    outcome, r = transact(registrar, BIND, BIND_TYPES, [patient, wallet.address, later, sig])
    check("the registrar binds with the wallet's signature", outcome == "ok")
    gas["bind"] = int(r["gasUsed"], 16)
    topic = "0x" + keccak(text="WalletBound(bytes32,address)").hex()
    check("WalletBound is emitted", any(log["topics"][0] == topic for log in r["logs"]))
    check("walletOf", view("walletOf(bytes32)", ["bytes32"], [patient], ["address"])[0].lower()
          == wallet.address.lower())
    expect_revert("a patient is bound once", transact(
        registrar, BIND, BIND_TYPES,
        [patient, new_wallet.address, later, bind_signature(patient, new_wallet, later)]),
        "AlreadyBound")

    # ---- grants ----
    expiry = now() + 86400
    args = grant_args(patient, practitioner, ["Observation"], READ, expiry, later, wallet)
    check("nothing is allowed before a grant", not allowed(patient, practitioner, "Observation", READ))
    outcome, r = transact(relayer, GRANT, GRANT_TYPES, args)
    check("anyone relays a grant the wallet signed", outcome == "ok")
    gas["grant (1 type)"] = int(r["gasUsed"], 16)
    granted = "0x" + keccak(text="Granted(bytes32,bytes32,bytes32,bytes32[],uint8,uint64)").hex()
    check("Granted is emitted with patient, grantee and grant id as topics", any(
        log["topics"][0] == granted and log["topics"][1] == "0x" + patient.hex()
        and log["topics"][2] == "0x" + practitioner.hex() for log in r["logs"]))
    first_grant = grant_id_of(patient, nonce_of(patient) - 1)
    check("the grantee may read that type", allowed(patient, practitioner, "Observation", READ))
    check("not another type", not allowed(patient, practitioner, "Condition", READ))
    check("not another action", not allowed(patient, practitioner, "Observation", WRITE))
    check("not another grantee", not allowed(patient, app, "Observation", READ))
    check("not another patient", not allowed(other_patient, practitioner, "Observation", READ))
    expect_revert("a grant cannot be replayed", transact(relayer, GRANT, GRANT_TYPES, args),
                  "WrongSigner")
    expect_revert("a grant signed by another key", transact(relayer, GRANT, GRANT_TYPES, grant_args(
        patient, app, ["Condition"], READ, expiry, later, impostor)), "WrongSigner")
    expect_revert("a grant for another patient", transact(relayer, GRANT, GRANT_TYPES, [
        other_patient] + args[1:]), "NotBound")
    # Bound, other_patient's own signature must not serve for patient.
    other_wallet = Account.create()
    transact(registrar, BIND, BIND_TYPES, [other_patient, other_wallet.address, later,
                                           bind_signature(other_patient, other_wallet, later)])
    signed_for_other = grant_args(other_patient, app, ["Condition"], READ, expiry, later,
                                  other_wallet, nonce=nonce_of(patient))
    expect_revert("a signature made for another patient", transact(
        relayer, GRANT, GRANT_TYPES, [patient] + signed_for_other[1:]), "WrongSigner")
    expect_revert("a grant past its deadline", transact(relayer, GRANT, GRANT_TYPES, grant_args(
        patient, app, ["Condition"], READ, expiry, now() - 1, wallet)), "Expired")
    expect_revert("a grant already expired", transact(relayer, GRANT, GRANT_TYPES, grant_args(
        patient, app, ["Condition"], READ, now() - 1, later, wallet)), "Expired")
    expect_revert("a grant of no action", transact(relayer, GRANT, GRANT_TYPES, grant_args(
        patient, app, ["Condition"], 0, expiry, later, wallet)), "NoActions")
    expect_revert("a grant of no type", transact(relayer, GRANT, GRANT_TYPES, grant_args(
        patient, app, [], READ, expiry, later, wallet)), "NoTypes")
    outcome, r = transact(relayer, GRANT, GRANT_TYPES, grant_args(
        patient, app, ["*"], READ | WRITE, now() + 100, later, wallet))
    check("a grant of every type", outcome == "ok")
    app_grant = grant_id_of(patient, nonce_of(patient) - 1)
    check("`*` covers any type and both actions",
          allowed(patient, app, "Condition", WRITE) and allowed(patient, app, "Patient", READ))
    outcome, r = transact(relayer, GRANT, GRANT_TYPES, grant_args(
        patient, practitioner, ["Observation", "Condition", "Encounter"], READ, expiry, later, wallet))
    gas["grant (3 types)"] = int(r["gasUsed"], 16)
    second_grant = grant_id_of(patient, nonce_of(patient) - 1)

    # ---- expiry ----
    rpc("evm_increaseTime", [101])
    rpc("evm_mine", [])
    check("a grant is void after its expiry", not allowed(patient, app, "Condition", READ))

    # ---- revocation ----
    expect_revert("a revocation signed by another key", transact(relayer, REVOKE, REVOKE_TYPES,
                  revoke_args(patient, second_grant, later + 200, impostor)), "WrongSigner")
    expect_revert("an unknown grant", transact(relayer, REVOKE, REVOKE_TYPES, revoke_args(
        patient, keccak(b"nothing"), later + 200, wallet)), "UnknownGrant")
    expect_revert("another patient's grant", transact(relayer, REVOKE, REVOKE_TYPES, revoke_args(
        other_patient, second_grant, later + 200, other_wallet)), "UnknownGrant")
    args = revoke_args(patient, second_grant, later + 200, wallet)
    outcome, r = transact(relayer, REVOKE, REVOKE_TYPES, args)
    check("anyone relays a revocation the wallet signed", outcome == "ok")
    gas["revoke (3 types)"] = int(r["gasUsed"], 16)
    check("revoked: no longer allowed", not allowed(patient, practitioner, "Condition", READ)
          and not allowed(patient, practitioner, "Observation", READ))
    expect_revert("a revocation cannot be replayed", transact(relayer, REVOKE, REVOKE_TYPES, args),
                  "WrongSigner")
    expect_revert("a grant is revoked once", transact(relayer, REVOKE, REVOKE_TYPES, revoke_args(
        patient, second_grant, later + 200, wallet)), "AlreadyRevoked")
    # The first grant's Observation entry was replaced by the second's; revoking the first now
    # must not touch what a later grant gives.
    transact(relayer, GRANT, GRANT_TYPES, grant_args(
        patient, practitioner, ["Observation"], READ, expiry, later + 200, wallet))
    transact(relayer, REVOKE, REVOKE_TYPES, revoke_args(patient, first_grant, later + 200, wallet))
    check("revoking an older grant leaves a newer one", allowed(patient, practitioner, "Observation", READ))

    # ---- the patient's wallet acting itself ----
    rpc("anvil_setBalance", [wallet.address, hex(10**18)])
    rpc("anvil_impersonateAccount", [wallet.address])
    expect_revert("only the patient's wallet acts without a signature", transact(
        stranger, "grantAsPatient(bytes32,bytes32,string[],uint8,uint64)",
        ["bytes32", "bytes32", "string[]", "uint8", "uint64"],
        [patient, app, ["Condition"], READ, expiry]), "NotPatientWallet")
    outcome, _ = transact(wallet.address, "grantAsPatient(bytes32,bytes32,string[],uint8,uint64)",
                          ["bytes32", "bytes32", "string[]", "uint8", "uint64"],
                          [patient, app, ["Condition"], READ, expiry])
    check("the wallet grants directly", outcome == "ok" and allowed(patient, app, "Condition", READ))
    direct = grant_id_of(patient, nonce_of(patient) - 1)
    expect_revert("only the patient's wallet revokes without a signature", transact(
        stranger, "revokeAsPatient(bytes32,bytes32)", ["bytes32", "bytes32"], [patient, direct]),
        "NotPatientWallet")
    outcome, _ = transact(wallet.address, "revokeAsPatient(bytes32,bytes32)",
                          ["bytes32", "bytes32"], [patient, direct])
    check("the wallet revokes directly", outcome == "ok" and not allowed(patient, app, "Condition", READ))

    # ---- rebinding (a lost key) ----
    fresh = keccak(b"k|patient|c")
    expect_revert("rebinding an unbound patient", transact(registrar, REBIND, BIND_TYPES, [
        fresh, new_wallet.address, later + 200, bind_signature(fresh, new_wallet, later + 200)]),
        "NotBound")
    expect_revert("only the registrar rebinds", transact(relayer, REBIND, BIND_TYPES, [
        patient, new_wallet.address, later + 200, bind_signature(patient, new_wallet, later + 200)]),
        "NotRegistrar")
    outcome, r = transact(registrar, REBIND, BIND_TYPES, [
        patient, new_wallet.address, later + 200, bind_signature(patient, new_wallet, later + 200)])
    rebound = "0x" + keccak(text="WalletRebound(bytes32,address,address)").hex()
    check("rebinding emits WalletRebound", outcome == "ok" and any(
        log["topics"][0] == rebound for log in r["logs"]))
    expect_revert("the old wallet's signatures no longer count", transact(
        relayer, GRANT, GRANT_TYPES, grant_args(patient, app, ["Condition"], READ, expiry,
                                                later + 200, wallet)), "WrongSigner")
    outcome, _ = transact(relayer, GRANT, GRANT_TYPES, grant_args(
        patient, app, ["Condition"], READ, expiry, later + 200, new_wallet))
    check("the new wallet's do", outcome == "ok")

    # ---- erasure ----
    erased = keccak(b"k|patient|erased")
    erased_wallet = Account.create()
    expect_revert("erasing an unbound patient", transact(
        registrar, ERASE, ERASE_TYPES, erase_args(erased, later, erased_wallet, nonce=0)), "NotBound")
    outcome, _ = transact(registrar, BIND, BIND_TYPES, [
        erased, erased_wallet.address, later, bind_signature(erased, erased_wallet, later)])
    check("the patient to erase binds a wallet", outcome == "ok")
    outcome, _ = transact(relayer, GRANT, GRANT_TYPES, grant_args(
        erased, app, ["Observation"], READ, expiry, later, erased_wallet))
    check("and grants before the erasure", outcome == "ok" and allowed(erased, app, "Observation", READ))
    expect_revert("only the registrar records an erasure", transact(
        relayer, ERASE, ERASE_TYPES, erase_args(erased, later, erased_wallet)), "NotRegistrar")
    expect_revert("an erasure needs the patient's wallet's signature", transact(
        registrar, ERASE, ERASE_TYPES, erase_args(erased, later, impostor)), "WrongSigner")
    expect_revert("an erasure signed with a used nonce", transact(
        registrar, ERASE, ERASE_TYPES, erase_args(erased, later, erased_wallet, nonce=0)), "WrongSigner")
    expect_revert("an erasure past its deadline", transact(
        registrar, ERASE, ERASE_TYPES, erase_args(erased, now() - 1, erased_wallet)), "Expired")
    args = erase_args(erased, later, erased_wallet)
    outcome, r = transact(registrar, ERASE, ERASE_TYPES, args)
    erased_topic = "0x" + keccak(text="Erased(bytes32,address,uint64)").hex()
    check("an erasure emits Erased", outcome == "ok" and any(
        log["topics"][0] == erased_topic and log["topics"][1] == "0x" + erased.hex()
        for log in r["logs"]))
    gas["recordErasure"] = int(r["gasUsed"], 16)
    check("erasedAt holds the time", view("erasedAt(bytes32)", ["bytes32"], [erased], ["uint64"])[0] > 0)
    expect_revert("an erasure is recorded once", transact(
        registrar, ERASE, ERASE_TYPES, erase_args(erased, later, erased_wallet)), "AlreadyErased")
    expect_revert("an erased patient grants nothing", transact(
        relayer, GRANT, GRANT_TYPES, grant_args(erased, app, ["Condition"], READ, expiry, later,
                                                erased_wallet)), "AlreadyErased")
    check("the erase type hash is EIP-712's", view("ERASE_TYPEHASH()", [], [], ["bytes32"])[0]
          == keccak(text="Erase(bytes32 patient,uint256 nonce,uint256 deadline)"))

    # ---- break-glass and the registrar ----
    reason = keccak(b"unconscious in the emergency department")
    expect_revert("only the registrar records a break-glass", transact(
        relayer, "breakGlass(bytes32,bytes32,bytes32,uint64)", ["bytes32", "bytes32", "bytes32", "uint64"],
        [patient, practitioner, reason, now() + 3600]), "NotRegistrar")
    expect_revert("a break-glass already over", transact(
        registrar, "breakGlass(bytes32,bytes32,bytes32,uint64)", ["bytes32", "bytes32", "bytes32", "uint64"],
        [patient, practitioner, reason, now() - 1]), "Expired")
    outcome, r = transact(registrar, "breakGlass(bytes32,bytes32,bytes32,uint64)",
                          ["bytes32", "bytes32", "bytes32", "uint64"],
                          [patient, practitioner, reason, now() + 3600])
    glass = "0x" + keccak(text="BreakGlass(bytes32,bytes32,bytes32,uint64)").hex()
    check("BreakGlass is emitted", outcome == "ok" and any(
        log["topics"][0] == glass and log["topics"][2] == "0x" + practitioner.hex() for log in r["logs"]))
    check("a break-glass is a record, not a grant", not allowed(patient, practitioner, "Condition", READ))
    expect_revert("only the registrar hands over", transact(
        relayer, "setRegistrar(address)", ["address"], [relayer]), "NotRegistrar")
    expect_revert("never to nobody", transact(
        registrar, "setRegistrar(address)", ["address"], ["0x" + "00" * 20]), "ZeroAddress")
    outcome, _ = transact(registrar, "setRegistrar(address)", ["address"], [relayer])
    check("the registrar hands over", outcome == "ok" and view(
        "registrar()", [], [], ["address"])[0].lower() == relayer.lower())
    expect_revert("the old registrar is no longer one", transact(
        registrar, "breakGlass(bytes32,bytes32,bytes32,uint64)", ["bytes32", "bytes32", "bytes32", "uint64"],
        [patient, practitioner, reason, now() + 3600]), "NotRegistrar")

    print(json.dumps({"checks": chain.checks, "gas": gas}))
finally:
    chain.stop()
