//! The Merkle tree an anchor's root is made of: leaves keccak256(JCS(AuditEvent)) in sequence
//! order, each pair hashed sorted (keccak256 of the smaller hash, then the larger, as
//! OpenZeppelin's `MerkleProof` verifies), an odd node out carried up a level unchanged. A
//! proof is the siblings from the leaf up; folding it with sorted pairs gives the root, so any
//! standard verifier checks it without knowing the leaf's position.

use alloy::primitives::{B256, keccak256};

/// keccak256 of the pair, smaller first.
pub fn pair(a: &B256, b: &B256) -> B256 {
    let (low, high) = if a <= b { (a, b) } else { (b, a) };
    let mut both = [0u8; 64];
    both[..32].copy_from_slice(low.as_slice());
    both[32..].copy_from_slice(high.as_slice());
    keccak256(both)
}

/// The leaf of an AuditEvent's stored JSON.
pub fn leaf(stored: &crate::fhir::json::Json) -> B256 {
    keccak256(crate::audit::jcs::canonical(stored))
}

/// Every level of the tree over `leaves`, leaves first, the root last (one element).
fn levels(leaves: &[B256]) -> Vec<Vec<B256>> {
    let mut levels = vec![leaves.to_vec()];
    while levels.last().is_some_and(|l| l.len() > 1) {
        let below = levels.last().map(Vec::as_slice).unwrap_or_default();
        let above = below
            .chunks(2)
            .map(|two| match two {
                [a, b] => pair(a, b),
                [a] => *a,
                _ => B256::ZERO,
            })
            .collect();
        levels.push(above);
    }
    levels
}

/// The root over `leaves` (zero for none).
pub fn root(leaves: &[B256]) -> B256 {
    levels(leaves)
        .last()
        .and_then(|l| l.first().copied())
        .unwrap_or(B256::ZERO)
}

/// The proof of the leaf at `index`: its siblings, bottom up.
pub fn proof(leaves: &[B256], mut index: usize) -> Vec<B256> {
    let levels = levels(leaves);
    let mut path = Vec::new();
    for level in &levels[..levels.len().saturating_sub(1)] {
        if let Some(sibling) = level.get(index ^ 1) {
            path.push(*sibling);
        }
        index /= 2;
    }
    path
}

/// The root `proof` leads to from `leaf`.
pub fn fold(leaf: B256, proof: &[B256]) -> B256 {
    proof
        .iter()
        .fold(leaf, |node, sibling| pair(&node, sibling))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_leaf_of_every_size_of_tree_proves_and_a_changed_leaf_does_not() {
        for size in 1..=17usize {
            let leaves: Vec<B256> = (0..size).map(|n| keccak256(format!("event {n}"))).collect();
            let root = root(&leaves);
            for (index, leaf) in leaves.iter().enumerate() {
                let path = proof(&leaves, index);
                assert_eq!(fold(*leaf, &path), root, "size {size}, leaf {index}");
                assert_ne!(fold(keccak256("other"), &path), root);
            }
        }
        assert_eq!(root(&[]), B256::ZERO);
    }

    #[test]
    fn pairs_are_hashed_sorted() {
        let (a, b) = (keccak256("a"), keccak256("b"));
        assert_eq!(pair(&a, &b), pair(&b, &a));
        let (low, high) = if a < b { (a, b) } else { (b, a) };
        assert_eq!(
            pair(&a, &b),
            keccak256([low.as_slice(), high.as_slice()].concat())
        );
    }
}
