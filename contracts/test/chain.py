"""What the contract tests share: an anvil of their own on a free port, JSON-RPC calls, and
sending a transaction (or learning the custom error it reverts with) to one deployed contract.

    import chain
    chain.start(ANVIL_BINARY, CHAIN_ID)
    chain.deploy(bytecode_hex, constructor_args_bytes, sender)
    chain.transact(sender, "anchor(bytes32)", ["bytes32"], [root])  -> ("ok", receipt) | ("revert", selector)
"""

import json
import subprocess
import sys
import time
import urllib.request

from eth_abi import decode, encode
from eth_utils import keccak

checks = 0
url = None
proc = None
contract = None


def check(what, ok, detail=""):
    global checks
    checks += 1
    if not ok:
        print(f"FAILED: {what} {detail}", file=sys.stderr)
        sys.exit(1)


def start(anvil, chain_id):
    global proc, url
    proc = subprocess.Popen(
        [anvil, "--port", "0", "--chain-id", str(chain_id)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if "Listening on" in line:
            url = "http://" + line.strip().rsplit(" ", 1)[-1]
            return
    raise SystemExit("anvil did not start")


def stop():
    proc.terminate()
    proc.wait()


def rpc(method, params):
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
    req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as reply:
        return json.load(reply)


def receipt(tx):
    for _ in range(200):
        r = rpc("eth_getTransactionReceipt", [tx])["result"]
        if r:
            return r
        time.sleep(0.02)
    raise SystemExit(f"no receipt for {tx}")


def deploy(bytecode, ctor, sender):
    """Deploys; the contract the other calls go to. Returns the receipt."""
    global contract
    deployed = receipt(rpc("eth_sendTransaction", [{
        "from": sender, "data": bytecode + ctor.hex(), "gas": hex(5_000_000)}])["result"])
    contract = deployed["contractAddress"]
    return deployed


def error(name):
    """The selector of a custom error, e.g. error("NotOwner()")."""
    if "(" not in name:
        name += "()"
    return "0x" + keccak(text=name)[:4].hex()


def calldata(signature, types, args):
    return "0x" + (keccak(text=signature)[:4] + encode(types, args)).hex()


def transact(sender, signature, types, args):
    """('ok', receipt) or ('revert', error selector)."""
    data = calldata(signature, types, args)
    tried = rpc("eth_call", [{"from": sender, "to": contract, "data": data}, "latest"])
    if "error" in tried:
        return "revert", (tried["error"].get("data") or "")[:10]
    tx = rpc("eth_sendTransaction", [{"from": sender, "to": contract, "data": data,
                                      "gas": hex(2_000_000)}])["result"]
    r = receipt(tx)
    check(f"{signature} mined", r["status"] == "0x1", r)
    return "ok", r


def view(signature, types, args, out):
    result = rpc("eth_call", [{"to": contract, "data": calldata(signature, types, args)}, "latest"])
    return decode(out, bytes.fromhex(result["result"][2:]))


def now():
    return int(rpc("eth_getBlockByNumber", ["latest", False])["result"]["timestamp"], 16)


def expect_revert(what, outcome, name):
    check(what, outcome == ("revert", error(name)), f"{outcome} (expected {name})")
