//! The sweeper on both profiles: an unreferenced blob waits out its grace period and is then
//! removed; a referenced blob is never touched.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::Profile;
use intellihealth::app;
use intellihealth::auth::Principal;
use intellihealth::config::{Config, StorageArgs};
use intellihealth::fhir::resource::ResourceType;
use intellihealth::fhir::validate::Handling;
use intellihealth::vault::blob::BlobStore;
use intellihealth::vault::ipfs::IpfsBlobStore;
use intellihealth::vault::local::LocalBlobStore;

async fn sweeps_only_what_nothing_references(profile: Profile) {
    let dir = tempfile::tempdir().unwrap();
    let (mongodb_uri, ipfs_api) = match &profile {
        Profile::Embedded => (None, None),
        Profile::Services {
            mongodb_uri,
            ipfs_api,
        } => (Some(mongodb_uri.clone()), Some(ipfs_api.clone())),
    };
    let config = Config::for_storage(&StorageArgs {
        data_dir: Some(dir.path().to_owned()),
        mongodb_uri,
        ipfs_api: ipfs_api.clone(),
        ..StorageArgs::default()
    })
    .unwrap();
    let repo = app::open_repository(&config).await.unwrap();
    let patient = ResourceType::parse("Patient").unwrap();
    let kept = repo
        .create(
            &Principal::internal(),
            patient,
            br#"{"resourceType":"Patient","active":true}"#.to_vec(),
            Handling::Strict,
        )
        .await
        .unwrap();
    let kept_cid = kept.version.record.cid.clone().unwrap();

    // An orphan, as a crash between blob put and index commit leaves one.
    let blobs: Arc<dyn BlobStore> = match &ipfs_api {
        Some(api) => Arc::new(IpfsBlobStore::new(api).unwrap()),
        None => Arc::new(LocalBlobStore::open(dir.path()).unwrap()),
    };
    let orphan = blobs
        .put(format!("orphan {}", rand::random::<u64>()).into_bytes())
        .await
        .unwrap();

    let first = repo.sweep(Duration::from_secs(3600)).await.unwrap();
    assert!(
        first.waiting >= 1 && first.removed == 0,
        "inside the grace period: {first:?}"
    );
    assert!(blobs.list().await.unwrap().contains(&orphan));

    let second = repo.sweep(Duration::ZERO).await.unwrap();
    assert!(second.removed >= 1, "{second:?}");
    let remaining = blobs.list().await.unwrap();
    assert!(!remaining.contains(&orphan), "the orphan was removed");
    assert!(
        remaining.contains(&kept_cid),
        "the referenced blob was kept"
    );
    let read = repo
        .read(&Principal::internal(), patient, &kept.version.record.id)
        .await
        .unwrap();
    assert_eq!(read.content, kept.version.content);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_sweeper_removes_only_unreferenced_blobs() {
    sweeps_only_what_nothing_references(Profile::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_services_sweeper_removes_only_unreferenced_blobs() {
    let ipfs = common::services::OwnIpfs::start();
    sweeps_only_what_nothing_references(Profile::services_with("sweeper", &ipfs)).await;
}
