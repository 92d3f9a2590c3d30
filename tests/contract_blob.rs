//! The BlobStore contract: the same cases against the local store and a real IPFS node, and
//! the CIDs of both equal for the same bytes (and equal to `cid::cid_of`).

mod common;

use std::time::Duration;

use intellihealth::vault::blob::{BlobError, BlobStore};
use intellihealth::vault::cid::cid_of;
use intellihealth::vault::ipfs::IpfsBlobStore;
use intellihealth::vault::local::LocalBlobStore;

fn random_bytes(len: usize) -> Vec<u8> {
    (0..len).map(|_| rand::random::<u8>()).collect()
}

async fn contract(store: &dyn BlobStore) {
    let small = random_bytes(1_000);
    let cid = store.put(small.clone()).await.unwrap();
    assert_eq!(cid, cid_of(&small));
    assert!(cid.starts_with("bafkrei"), "one chunk: a raw CID");
    assert_eq!(
        store.put(small.clone()).await.unwrap(),
        cid,
        "puts are idempotent"
    );
    assert_eq!(store.get(&cid).await.unwrap(), small);

    // Several chunks: a dag-pb root, the same one IPFS computes.
    let large = random_bytes(700_000);
    let large_cid = store.put(large.clone()).await.unwrap();
    assert_eq!(large_cid, cid_of(&large));
    assert!(large_cid.starts_with("bafybei"));
    assert_eq!(store.get(&large_cid).await.unwrap(), large);

    let never_stored = cid_of(&random_bytes(64));
    let started = std::time::Instant::now();
    assert!(matches!(
        store.get(&never_stored).await,
        Err(BlobError::NotFound(_))
    ));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a missing blob fails fast"
    );

    let listed = store.list().await.unwrap();
    assert!(listed.contains(&cid) && listed.contains(&large_cid));
    store.remove(&cid).await.unwrap();
    assert!(
        !store.list().await.unwrap().contains(&cid),
        "removed blobs are no longer kept"
    );
    store.remove(&cid).await.unwrap();
    assert!(store.health().await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_store_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    contract(&LocalBlobStore::open(dir.path()).unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ipfs_store_keeps_the_contract() {
    let store = IpfsBlobStore::new(&common::services::ipfs_api()).unwrap();
    contract(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_stores_name_the_same_bytes_the_same_way() {
    let dir = tempfile::tempdir().unwrap();
    let local = LocalBlobStore::open(dir.path()).unwrap();
    let ipfs = IpfsBlobStore::new(&common::services::ipfs_api()).unwrap();
    for len in [0, 1, 262_144, 262_145, 3 * 262_144 + 7] {
        let bytes = random_bytes(len);
        assert_eq!(
            local.put(bytes.clone()).await.unwrap(),
            ipfs.put(bytes).await.unwrap(),
            "{len} bytes"
        );
    }
}
