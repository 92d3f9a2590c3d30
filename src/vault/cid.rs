//! Content identifiers exactly as IPFS computes them for `ipfs add --cid-version=1 --raw-leaves`
//! with the default fixed-size chunker (256 KiB) and balanced layout.
//!
//! A blob of one chunk is addressed by a CIDv1 with the `raw` codec (`bafkrei…`). A larger blob
//! becomes a UnixFS file: raw leaves of 256 KiB under `dag-pb` nodes of at most 174 links, and
//! its address is the root node's CIDv1 (`bafybei…`). The embedded store and the IPFS store must
//! name the same bytes the same way, so this module is the single definition both use; the
//! services profile's contract test checks it against a real node.
//!
//! Must not do any IO.

use sha2::{Digest, Sha256};

pub const CHUNK_SIZE: usize = 256 * 1024;
pub const MAX_LINKS: usize = 174;

const CODEC_RAW: u64 = 0x55;
const CODEC_DAG_PB: u64 = 0x70;
const MULTIHASH_SHA2_256: u64 = 0x12;

/// The CID string of `bytes` (base32, lower case, `b` multibase prefix).
pub fn cid_of(bytes: &[u8]) -> String {
    if bytes.len() <= CHUNK_SIZE {
        return encode(CODEC_RAW, &Sha256::digest(bytes));
    }
    let leaves: Vec<Node> = bytes
        .chunks(CHUNK_SIZE)
        .map(|chunk| Node {
            cid: cid_bytes(CODEC_RAW, &Sha256::digest(chunk)),
            file_size: chunk.len() as u64,
            tree_size: chunk.len() as u64,
        })
        .collect();
    let mut level = leaves;
    while level.len() > 1 {
        level = level.chunks(MAX_LINKS).map(parent_of).collect();
    }
    let root = &level[0];
    to_string(&root.cid)
}

/// A node of the UnixFS tree as its parent sees it.
struct Node {
    cid: Vec<u8>,
    /// Bytes of file content under this node.
    file_size: u64,
    /// Bytes of all blocks under this node, its own included (the link's `Tsize`).
    tree_size: u64,
}

fn parent_of(children: &[Node]) -> Node {
    // UnixFS `Data`: Type = File (2), filesize, one blocksize per child (proto2, not packed).
    let file_size: u64 = children.iter().map(|c| c.file_size).sum();
    let mut data = Vec::new();
    put_field_varint(&mut data, 1, 2);
    put_field_varint(&mut data, 3, file_size);
    for child in children {
        put_field_varint(&mut data, 4, child.file_size);
    }
    // dag-pb `PBNode`: the links (field 2) are written before the data (field 1).
    let mut node = Vec::new();
    for child in children {
        let mut link = Vec::new();
        put_field_bytes(&mut link, 1, &child.cid);
        put_field_bytes(&mut link, 2, b"");
        put_field_varint(&mut link, 3, child.tree_size);
        put_field_bytes(&mut node, 2, &link);
    }
    put_field_bytes(&mut node, 1, &data);
    let children_tree: u64 = children.iter().map(|c| c.tree_size).sum();
    Node {
        cid: cid_bytes(CODEC_DAG_PB, &Sha256::digest(&node)),
        file_size,
        tree_size: node.len() as u64 + children_tree,
    }
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_field_varint(out: &mut Vec<u8>, field: u64, value: u64) {
    put_varint(out, field << 3);
    put_varint(out, value);
}

fn put_field_bytes(out: &mut Vec<u8>, field: u64, value: &[u8]) {
    put_varint(out, (field << 3) | 2);
    put_varint(out, value.len() as u64);
    out.extend_from_slice(value);
}

fn cid_bytes(codec: u64, digest: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(36);
    put_varint(&mut out, 1);
    put_varint(&mut out, codec);
    put_varint(&mut out, MULTIHASH_SHA2_256);
    put_varint(&mut out, digest.len() as u64);
    out.extend_from_slice(digest);
    out
}

fn encode(codec: u64, digest: &[u8]) -> String {
    to_string(&cid_bytes(codec, digest))
}

fn to_string(cid: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut out = String::with_capacity(1 + cid.len() * 8 / 5 + 1);
    out.push('b');
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for &byte in cid {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buffer >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// Whether `text` has the shape of a CIDv1 this store produces (used to refuse odd paths).
pub fn looks_like_cid(text: &str) -> bool {
    text.len() > 8
        && text.starts_with("bafk") | text.starts_with("bafy")
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_chunk_blobs_get_raw_cids_as_ipfs_computes_them() {
        // `ipfs add --cid-version=1 --raw-leaves` of an empty file and of "hello world".
        assert_eq!(
            cid_of(b""),
            "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
        );
        assert_eq!(
            cid_of(b"hello world"),
            "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"
        );
        assert!(looks_like_cid(&cid_of(b"x")));
    }

    #[test]
    fn larger_blobs_get_a_dag_pb_root() {
        let big = vec![7u8; CHUNK_SIZE + 1];
        let cid = cid_of(&big);
        assert!(cid.starts_with("bafybei"), "{cid}");
        assert_ne!(cid, cid_of(&vec![7u8; CHUNK_SIZE + 2]));
        assert!(looks_like_cid(&cid));
    }
}
