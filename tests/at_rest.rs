//! What the services store at rest: IPFS holds only sealed envelopes and MongoDB holds no
//! plaintext. A patient's name is written through the server, then searched for in the raw
//! blob the node returns and in every document of the database.

mod common;

use common::{Profile, Server, client};
use futures::TryStreamExt;
use intellihealth::vault::blob::BlobStore;
use intellihealth::vault::ipfs::IpfsBlobStore;
use mongodb::bson::Document;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_services_hold_ciphertext_only() {
    let profile = Profile::services("atrest");
    let Profile::Services {
        mongodb_uri,
        ipfs_api,
    } = &profile
    else {
        unreachable!()
    };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(dir.path(), &[], &profile);
    let name = "Wojciechowska-Plaintext-Canary";
    let created = client(&server)
        .await
        .post_json(
            "Patient",
            &json!({"resourceType": "Patient", "name": [{"family": name}]}),
        )
        .send()
        .await;
    assert_eq!(created.status, 201);
    assert!(server.terminate().success());

    let client = mongodb::Client::with_uri_str(mongodb_uri).await.unwrap();
    let db = client.default_database().unwrap();
    // The Patient's one version (beside it, the AuditEvents of the token request and the
    // create, checked with every other document below).
    let versions: Vec<Document> = all_documents(&db, "versions")
        .await
        .into_iter()
        .filter(|d| d.get_str("type") == Ok("Patient"))
        .collect();
    assert_eq!(versions.len(), 1);
    let cid = versions[0].get_str("cid").unwrap().to_owned();

    let ipfs = IpfsBlobStore::new(ipfs_api).unwrap();
    let raw = ipfs.get(&cid).await.unwrap();
    assert!(raw.starts_with(b"IHS1"), "a sealed envelope");
    assert!(
        !raw.windows(name.len()).any(|w| w == name.as_bytes()),
        "the blob IPFS holds is ciphertext"
    );

    for collection in db.list_collection_names().await.unwrap() {
        for document in all_documents(&db, &collection).await {
            assert!(
                !format!("{document:?}").contains(name),
                "{collection} holds the name in plaintext"
            );
        }
    }
}

async fn all_documents(db: &mongodb::Database, collection: &str) -> Vec<Document> {
    db.collection::<Document>(collection)
        .find(Document::new())
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap()
}
