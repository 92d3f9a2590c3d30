"""AuditAnchor against a real node (anvil), every branch: only anchorers anchor, a replica's
ranges are consecutive (no gap, no overlap), a root is anchored once, the owner alone changes
the anchorers and hands over; and an inclusion proof of a leaf in an anchored root checks with
sorted-pair keccak256, folded here from the definition (not the server's code).

    python audit_anchor_test.py ANVIL_BINARY ARTIFACT_JSON

Exits non-zero, naming the failed check, on the first failure.
"""

import json
import sys

from eth_abi import decode, encode
from eth_utils import keccak

import chain
from chain import check, expect_revert, rpc, transact, view

ANVIL, ARTIFACT = sys.argv[1], sys.argv[2]
ANCHOR = "anchor(bytes32,bytes32,uint64,uint64)"
ANCHOR_TYPES = ["bytes32", "bytes32", "uint64", "uint64"]
ZERO = "0x" + "00" * 20


def pair(a, b):
    return keccak(min(a, b) + max(a, b))


def tree(leaves):
    """Every level, leaves first; an odd node out is carried up as it is."""
    levels = [leaves]
    while len(levels[-1]) > 1:
        level = levels[-1]
        levels.append([pair(level[i], level[i + 1]) if i + 1 < len(level) else level[i]
                       for i in range(0, len(level), 2)])
    return levels


def proof(levels, index):
    path = []
    for level in levels[:-1]:
        sibling = index ^ 1
        if sibling < len(level):
            path.append(level[sibling])
        index //= 2
    return path


def fold(leaf, path):
    for sibling in path:
        leaf = pair(leaf, sibling)
    return leaf


chain.start(ANVIL, 31337)
artifact = json.load(open(ARTIFACT))
accounts = rpc("eth_accounts", [])["result"]
owner, anchorer, stranger, successor = accounts[0], accounts[1], accounts[2], accounts[3]
deployed = chain.deploy(artifact["bytecode"], encode(["address"], [anchorer]), owner)
gas = {"deploy": int(deployed["gasUsed"], 16)}
replica = keccak(b"intellihealth@replica-1")
other_replica = keccak(b"intellihealth@replica-2")
anchored_topic = "0x" + keccak(text="Anchored(bytes32,bytes32,uint64,uint64,address)").hex()

try:
    refused = rpc("eth_call", [{"from": owner, "data": artifact["bytecode"]
                                + encode(["address"], [ZERO]).hex()}, "latest"])
    check("no anchorer of address zero", "error" in refused
          and (refused["error"].get("data") or "")[:10] == chain.error("ZeroAddress"))
    check("the deployer owns it", view("owner()", [], [], ["address"])[0].lower() == owner.lower())

    leaves = [keccak(text=f"AuditEvent {n}") for n in range(5)]
    levels = tree(leaves)
    root = levels[-1][0]
    expect_revert("only an anchorer anchors", transact(
        stranger, ANCHOR, ANCHOR_TYPES, [replica, root, 5, 0]), "NotAnchorer")
    expect_revert("an anchor of nothing", transact(
        anchorer, ANCHOR, ANCHOR_TYPES, [replica, root, 0, 0]), "EmptyAnchor")
    expect_revert("an anchor of the zero root", transact(
        anchorer, ANCHOR, ANCHOR_TYPES, [replica, b"\0" * 32, 5, 0]), "EmptyAnchor")
    expect_revert("a replica's first range starts at 0", transact(
        anchorer, ANCHOR, ANCHOR_TYPES, [replica, root, 5, 1]), "OutOfSequence(uint64)")

    outcome, r = transact(anchorer, ANCHOR, ANCHOR_TYPES, [replica, root, 5, 0])
    check("the first range is anchored", outcome == "ok")
    gas["anchor (first of a replica)"] = int(r["gasUsed"], 16)
    logs = [log for log in r["logs"] if log["topics"][0] == anchored_topic]
    check("Anchored names the replica and the root", len(logs) == 1
          and logs[0]["topics"][1] == "0x" + replica.hex() and logs[0]["topics"][2] == "0x" + root.hex())
    count, first, by = decode(["uint64", "uint64", "address"], bytes.fromhex(logs[0]["data"][2:]))
    check("Anchored carries count, firstSeq and the anchorer",
          (count, first, by.lower()) == (5, 0, anchorer.lower()))
    check("the block of the root is kept",
          view("anchoredAt(bytes32)", ["bytes32"], [root], ["uint256"])[0] == int(r["blockNumber"], 16))
    check("the next range starts at 5", view("nextSeq(bytes32)", ["bytes32"], [replica], ["uint64"])[0] == 5)
    for index, leaf in enumerate(leaves):
        check(f"leaf {index}'s proof folds to the anchored root", fold(leaf, proof(levels, index)) == root)
    tampered = keccak(text="AuditEvent 2 ")
    check("a changed leaf does not", fold(tampered, proof(levels, 2)) != root)

    root2 = tree([keccak(text=f"AuditEvent {n}") for n in range(5, 8)])[-1][0]
    expect_revert("a gap is refused", transact(
        anchorer, ANCHOR, ANCHOR_TYPES, [replica, root2, 3, 6]), "OutOfSequence(uint64)")
    expect_revert("an overlap is refused", transact(
        anchorer, ANCHOR, ANCHOR_TYPES, [replica, root2, 3, 4]), "OutOfSequence(uint64)")
    expect_revert("a root is anchored once", transact(
        anchorer, ANCHOR, ANCHOR_TYPES, [replica, root, 5, 5]), "AlreadyAnchored")
    expect_revert("the same anchor again says it was anchored", transact(
        anchorer, ANCHOR, ANCHOR_TYPES, [replica, root, 5, 0]), "AlreadyAnchored")
    outcome, r = transact(anchorer, ANCHOR, ANCHOR_TYPES, [replica, root2, 3, 5])
    check("the next range follows", outcome == "ok")
    gas["anchor (a replica's next)"] = int(r["gasUsed"], 16)
    root3 = keccak(text="another replica's first root")
    outcome, _ = transact(anchorer, ANCHOR, ANCHOR_TYPES, [other_replica, root3, 1, 0])
    check("each replica has its own sequence", outcome == "ok")

    expect_revert("only the owner changes anchorers", transact(
        stranger, "setAnchorer(address,bool)", ["address", "bool"], [stranger, True]), "NotOwner")
    expect_revert("no anchorer of address zero, later either", transact(
        owner, "setAnchorer(address,bool)", ["address", "bool"], [ZERO, True]), "ZeroAddress")
    outcome, _ = transact(owner, "setAnchorer(address,bool)", ["address", "bool"], [anchorer, False])
    check("the owner removes an anchorer", outcome == "ok")
    expect_revert("a removed anchorer anchors no more", transact(
        anchorer, ANCHOR, ANCHOR_TYPES, [replica, keccak(text="late"), 1, 8]), "NotAnchorer")
    expect_revert("only the owner hands over", transact(
        stranger, "transferOwnership(address)", ["address"], [stranger]), "NotOwner")
    expect_revert("never to nobody", transact(
        owner, "transferOwnership(address)", ["address"], [ZERO]), "ZeroAddress")
    outcome, _ = transact(owner, "transferOwnership(address)", ["address"], [successor])
    check("the owner hands over", outcome == "ok"
          and view("owner()", [], [], ["address"])[0].lower() == successor.lower())
    expect_revert("the old owner is no longer one", transact(
        owner, "setAnchorer(address,bool)", ["address", "bool"], [owner, True]), "NotOwner")
    outcome, _ = transact(successor, "setAnchorer(address,bool)", ["address", "bool"], [anchorer, True])
    check("the new owner restores the anchorer", outcome == "ok")

    print(json.dumps({"checks": chain.checks, "gas": gas}))
finally:
    chain.stop()
