//! Conditional creates racing across two replicas of the server sharing one MongoDB (the
//! services profile): the match is claimed in the index store, so however the requests are
//! spread over the replicas, exactly one resource is made. (One replica's race, and the rest of
//! transactions, batches, conditional interactions and PATCH, are in the conformance suite,
//! run on both profiles.)

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Profile, Server, Spawned, provision};
use futures::future::join_all;
use serde_json::json;

const PER_REPLICA: usize = 25;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_creates_racing_on_two_replicas_make_one_resource() {
    let profile = Profile::services("conditional-race");
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // One client, stored in the shared MongoDB, for both replicas.
    let credentials = provision(dir_a.path(), &profile);
    let start = |dir: &std::path::Path, replica: &str| -> Server {
        Spawned::without_client(dir, &["--replica", replica], &profile, None)
            .with_credentials(credentials.clone())
            .ready(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("replica {replica} starts"))
    };
    let a = start(dir_a.path(), "race-a");
    // Every replica of one store seals with the same master key.
    std::fs::copy(
        dir_a.path().join("master.key"),
        dir_b.path().join("master.key"),
    )
    .unwrap();
    let b = start(dir_b.path(), "race-b");
    let (client_a, client_b) = (common::client(&a).await, common::client(&b).await);
    for round in 0..3 {
        let value = format!("race-{round}-{:016x}", rand::random::<u64>());
        let criteria = format!("identifier=urn:race|{value}");
        let body = json!({
            "resourceType": "Patient",
            "identifier": [{"system": "urn:race", "value": value}],
            "name": [{"family": "Racer"}]
        });
        let racing = (0..PER_REPLICA).flat_map(|_| {
            [&client_a, &client_b].map(|c| {
                c.post_json("Patient", &body)
                    .header("If-None-Exist", &criteria)
                    .send()
            })
        });
        let replies = join_all(racing).await;
        let created = replies.iter().filter(|r| r.status == 201).count();
        let found = replies.iter().filter(|r| r.status == 200).count();
        let ids: BTreeSet<String> = replies
            .iter()
            .filter_map(|r| r.json().and_then(|v| v["id"].as_str().map(str::to_owned)))
            .collect();
        assert_eq!(
            (created, found, ids.len()),
            (1, 2 * PER_REPLICA - 1, 1),
            "round {round}: {:?}",
            replies.iter().map(|r| r.summary()).collect::<Vec<_>>()
        );
        for c in [&client_a, &client_b] {
            let total = c
                .get(&format!("Patient?{criteria}&_summary=count"))
                .send()
                .await
                .json()
                .and_then(|v| v["total"].as_u64());
            assert_eq!(total, Some(1), "round {round}: one Patient stored");
        }
    }
}
