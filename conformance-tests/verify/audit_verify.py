"""Checks AuditEvents from an IntelliHealth server, knowing only the formats the server
documents (ARCHITECTURE.md, "Formats others must trust") and the specifications they cite;
none of the server's code. Written from RFC 8785 (JSON Canonicalization Scheme), the
Keccak-256 of Ethereum (pycryptodome's, through eth-hash) and Ethereum's JSON-RPC.

    python audit_verify.py chain PATIENT_ID < events.json
    python audit_verify.py proof RPC_URL < checked.json

`chain`: `events.json` is a JSON array of the patient's AuditEvents exactly as the server
returned them (any order). For each replica, the events' links in the patient's chain must run
0, 1, 2, ... with no index missing or repeated, and each link must name the leaf — keccak256
of the JCS form — of the event before it.

`proof`: `checked.json` is {"event": the AuditEvent as GET .../_history/1 returned it,
"parameters": what $verify returned}. The leaf is recomputed from the event, folded up the
proof with sorted pairs to the root, and the root must be in an `Anchored` event emitted by
the named contract in the named transaction, mined in the named block, on the chain at
RPC_URL.

Prints what it found; exits 1 on the first failure.
"""

import decimal
import json
import sys
import urllib.request

from eth_hash.auto import keccak

SEQUENCE = "https://intellihealth.dev/fhir/StructureDefinition/audit-sequence"
CHAIN = "https://intellihealth.dev/fhir/StructureDefinition/audit-chain"


def number(value):
    """ECMAScript's Number.prototype.toString of the double `value` (RFC 8785, 3.2.2.3)."""
    value = float(value)
    if value == 0:
        return "0"
    sign = "-" if value < 0 else ""
    # repr gives the shortest digits that read back as the same double.
    _, raw, exponent = decimal.Decimal(repr(abs(value))).as_tuple()
    raw = "".join(map(str, raw))
    digits = raw.rstrip("0") or "0"
    exponent += len(raw) - len(digits)
    k, n = len(digits), exponent + len(digits)
    if k <= n <= 21:
        body = digits + "0" * (n - k)
    elif 0 < n <= 21:
        body = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        body = "0." + "0" * -n + digits
    else:
        e = n - 1
        body = digits[0] + ("." + digits[1:] if k > 1 else "") + "e" + ("+" if e >= 0 else "-") + str(abs(e))
    return sign + body


def string(s):
    out = ['"']
    for c in s:
        if c == '"':
            out.append('\\"')
        elif c == "\\":
            out.append("\\\\")
        elif c in "\b\f\n\r\t":
            out.append({"\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}[c])
        elif ord(c) < 0x20:
            out.append("\\u%04x" % ord(c))
        else:
            out.append(c)
    out.append('"')
    return "".join(out)


def jcs(value):
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, (int, float)):
        return number(value)
    if isinstance(value, str):
        return string(value)
    if isinstance(value, list):
        return "[" + ",".join(jcs(v) for v in value) + "]"
    members = sorted(value.items(), key=lambda kv: kv[0].encode("utf-16-be"))
    return "{" + ",".join(string(k) + ":" + jcs(v) for k, v in members) + "}"


def leaf(event):
    return "0x" + keccak(jcs(event).encode("utf-8")).hex()


def sub(extension, url):
    for e in extension.get("extension", []):
        if e["url"] == url:
            return e
    raise SystemExit(f"an extension without {url}")


def links(event, patient):
    """(replica, index, previous leaf) of the event's link in the patient's chain."""
    replica = None
    found = None
    for e in event.get("extension", []):
        if e["url"] == SEQUENCE:
            replica = sub(e, "replica")["valueString"]
        if e["url"] == CHAIN and sub(e, "patient")["valueReference"]["reference"] == f"Patient/{patient}":
            found = (int(sub(e, "index")["valueString"]), sub(e, "previous")["valueString"])
    if replica is None or found is None:
        raise SystemExit(f"AuditEvent/{event.get('id')} is not in Patient/{patient}'s chain")
    return replica, found[0], found[1]


def pair(a, b):
    return keccak(min(a, b) + max(a, b))


def rpc(url, method, params):
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as reply:
        return json.load(reply)["result"]


def fail(why):
    print(why)
    sys.exit(1)


def proof(url):
    checked = json.load(sys.stdin)
    parameters = {}
    for p in checked["parameters"]["parameter"]:
        parameters.setdefault(p["name"], []).append(p.get("valueString"))
    one = lambda name: parameters[name][0]
    node = bytes.fromhex(leaf(checked["event"])[2:])
    if "0x" + node.hex() != one("leaf").lower():
        fail(f"the event's leaf is 0x{node.hex()}, not the {one('leaf')} the server proves")
    for sibling in parameters.get("proof", []):
        node = pair(node, bytes.fromhex(sibling[2:]))
    root = "0x" + node.hex()
    if root != one("root").lower():
        fail(f"the proof folds to {root}, not the root {one('root')}")
    receipt = rpc(url, "eth_getTransactionReceipt", [one("txHash")])
    if not receipt or receipt["status"] != "0x1":
        fail(f"transaction {one('txHash')} is not a successful one on this chain")
    if int(receipt["blockNumber"], 16) != int(one("blockNumber")):
        fail(f"transaction {one('txHash')} is in block {int(receipt['blockNumber'], 16)}")
    topic = "0x" + keccak(b"Anchored(bytes32,bytes32,uint64,uint64,address)").hex()
    for log in receipt["logs"]:
        if (log["address"].lower() == one("address").lower() and log["topics"][0] == topic
                and log["topics"][2].lower() == root):
            print(f"anchored: root {root} in block {int(receipt['blockNumber'], 16)}")
            return
    fail(f"no Anchored event of root {root} from {one('address')} in {one('txHash')}")


def chain(patient):
    events = json.load(sys.stdin)
    chains = {}
    for event in events:
        replica, index, previous = links(event, patient)
        chains.setdefault(replica, []).append((index, previous, leaf(event), event.get("id")))
    for replica, links_of in sorted(chains.items()):
        links_of.sort()
        expected_previous = "0x" + "00" * 32
        for position, (index, previous, own, event_id) in enumerate(links_of):
            if index != position:
                print(f"{replica}: link {position} is missing (next is {index}, AuditEvent/{event_id})")
                sys.exit(1)
            if previous.lower() != expected_previous.lower():
                print(f"{replica}: AuditEvent/{event_id} (link {index}) does not follow the event before it")
                sys.exit(1)
            expected_previous = own
        print(f"{replica}: {len(links_of)} links, complete, head {expected_previous}")


if sys.argv[1] == "chain":
    chain(sys.argv[2])
elif sys.argv[1] == "proof":
    proof(sys.argv[2])
else:
    fail("usage: audit_verify.py chain PATIENT_ID | proof RPC_URL")
