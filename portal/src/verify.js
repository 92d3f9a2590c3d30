// Checks an AuditEvent's anchor in the browser, trusting only the chain: the leaf is
// recomputed from the event as the server returns it (keccak256 of its RFC 8785 form), the
// proof folded with sorted pairs (OpenZeppelin MerkleProof's rule) to the root, and the root
// looked up on chain with AuditAnchor.anchoredAt(bytes32) through the server's proxy of the
// chain (/ledger/rpc).

import { concat, hexToBigInt, keccak256, stringToBytes } from 'viem';
import { api, param } from './fhir.js';
import { canonicalize } from './jcs.js';

/** The selector of `anchoredAt(bytes32)`: the first 4 bytes of keccak256 of its signature. */
export const ANCHORED_AT = keccak256(stringToBytes('anchoredAt(bytes32)')).slice(0, 10);

export function leafOf(event) {
  return keccak256(stringToBytes(canonicalize(event)));
}

/** Hashes a pair sorted: the smaller 32 bytes first. */
export function hashPair(a, b) {
  const [x, y] = a.toLowerCase() <= b.toLowerCase() ? [a, b] : [b, a];
  return keccak256(concat([x, y]));
}

export function foldProof(leaf, proof) {
  return proof.reduce((node, sibling) => hashPair(node, sibling), leaf);
}

/**
 * Verifies one AuditEvent. Returns {state: 'anchored', block, txHash, root, leaf, chainId,
 * address} | {state: 'pending', expected} | {state: 'failed', reason}.
 */
export async function verifyAuditEvent(id) {
  const answer = await api.get(`AuditEvent/${encodeURIComponent(id)}/$verify`);
  const status = param(answer, 'status');
  if (status !== 'anchored') {
    return { state: 'pending', expected: param(answer, 'expected') };
  }
  const leaf = param(answer, 'leaf');
  const proof = param(answer, 'proof', true);
  const root = param(answer, 'root');
  const address = param(answer, 'address');
  const chainId = param(answer, 'chainId');
  const event = (await api.getRaw(`AuditEvent/${encodeURIComponent(id)}/_history/1`)).body;
  const recomputed = leafOf(event);
  if (recomputed.toLowerCase() !== String(leaf).toLowerCase()) {
    return { state: 'failed', reason: 'the AuditEvent does not hash to the leaf the server names: it was changed' };
  }
  const folded = foldProof(recomputed, proof);
  if (folded.toLowerCase() !== String(root).toLowerCase()) {
    return { state: 'failed', reason: 'the proof does not lead to the anchored root' };
  }
  const onChainId = await api.rpc('eth_chainId', []);
  if (chainId && hexToBigInt(onChainId) !== BigInt(chainId)) {
    return { state: 'failed', reason: `the chain answering is ${hexToBigInt(onChainId)}, not ${chainId}` };
  }
  const result = await api.rpc('eth_call', [{ to: address, data: concat([ANCHORED_AT, root]) }, 'latest']);
  const block = result && result !== '0x' ? hexToBigInt(result) : 0n;
  if (block === 0n) {
    // Sent but not yet mined (or not yet deep enough): the chain does not hold the root yet.
    return { state: 'pending', expected: param(answer, 'expected'), note: 'the root is not on chain yet' };
  }
  return {
    state: 'anchored',
    block: block.toString(),
    txHash: param(answer, 'txHash'),
    root,
    leaf: recomputed,
    chainId,
    address,
    proofLength: proof.length,
  };
}
