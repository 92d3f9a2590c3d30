//! Crash safety on both profiles: 2,000 creates at concurrency 16, SIGKILL in the middle, a
//! restart. Every create that was acknowledged must read back byte-identical; every version
//! the index holds must have its blob; `intellihealth sweep` then removes what the crash left
//! unreferenced and touches nothing referenced.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{Profile, Server, client};
use conformance_tests::suites::bundle_link;
use futures::stream::{self, StreamExt};
use serde_json::json;

const CREATES: usize = 2_000;
const CONCURRENCY: usize = 16;
/// The blobs are counted exactly against the resources' versions, so the audit trail (whose
/// batch blobs every request adds to) is off here; its own `kill -9` test is in `audit.rs`.
const SERVE_ARGS: &[&str] = &["--sweep-interval-secs", "0", "--audit", "off"];

/// The server is killed once this many creates have been acknowledged.
const KILL_AFTER: usize = 600;

/// Both tests load the 2 cores heavily: one at a time keeps their timings meaningful.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn crash_and_recover(profile: Profile) {
    let _turn = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(dir.path(), SERVE_ARGS, &profile);
    let c = client(&server).await;
    let pid = server.pid();
    let acknowledged_count = Arc::new(AtomicUsize::new(0));
    let killed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let results: Vec<Outcome> = stream::iter(0..CREATES)
        .map(|n| {
            let (c, acknowledged_count, killed) = (c.clone(), acknowledged_count.clone(), killed.clone());
            async move {
                let body = json!({"resourceType": "Observation", "status": "final",
                    "code": {"text": format!("crash-{n}")}, "subject": {"reference": format!("Patient/p{}", n % 50)},
                    "valueQuantity": {"value": n as f64 + 0.25, "unit": "mg"}});
                let reply = c.post_json("Observation", &body).send().await;
                if reply.status == 201 && acknowledged_count.fetch_add(1, Ordering::SeqCst) + 1 == KILL_AFTER
                    && !killed.swap(true, Ordering::SeqCst)
                {
                    common::signal(pid, libc::SIGKILL);
                }
                // A 201 whose body the kill cut short is still acknowledged: its Location says
                // what to look for, and only the byte comparison is left out for it.
                let location = reply.header("location").unwrap_or_default();
                (reply.status.as_u16(), location, reply.body)
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    server.kill();
    let acknowledged: Vec<&Outcome> = results
        .iter()
        .filter(|(status, _, _)| *status == 201)
        .collect();
    assert!(
        acknowledged.len() >= KILL_AFTER,
        "{} acknowledged",
        acknowledged.len()
    );
    assert!(acknowledged.len() < CREATES, "the kill interrupted the run");

    // Restart: everything acknowledged is there, byte for byte.
    let server = Server::start_with(dir.path(), SERVE_ARGS, &profile);
    verify_acknowledged(&server, &results).await;
    let versions = every_version_readable(&server).await;
    assert!(
        versions >= acknowledged.len(),
        "{versions} versions in the index"
    );
    assert!(server.terminate().success());

    // The sweep removes what the crash left behind, and nothing any version references.
    let swept = sweep(dir.path(), &profile);
    let blobs = match &profile {
        Profile::Embedded => count_files(&dir.path().join("blobs")),
        Profile::Services { ipfs_api, .. } => {
            use intellihealth::vault::blob::BlobStore;
            let node = intellihealth::vault::ipfs::IpfsBlobStore::new(ipfs_api).unwrap();
            node.list().await.unwrap().len()
        }
    };
    assert_eq!(
        blobs, versions,
        "after the sweep, exactly the referenced blobs remain ({swept})"
    );
    let server = Server::start_with(dir.path(), SERVE_ARGS, &profile);
    verify_acknowledged(&server, &results).await;
    assert_eq!(every_version_readable(&server).await, versions);
    assert!(server.terminate().success());
}

/// What one create got back: status, Location, body.
type Outcome = (u16, String, Vec<u8>);

async fn verify_acknowledged(server: &Server, results: &[Outcome]) {
    let c = client(server).await;
    let mut compared = 0;
    for (_, location, body) in results.iter().filter(|(status, _, _)| *status == 201) {
        // `…/Observation/{id}/_history/1`
        let id = location
            .split("/Observation/")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .unwrap_or_else(|| panic!("a 201 without a Location: {location:?}"));
        let read = c.get(&format!("Observation/{id}")).send().await;
        assert_eq!(
            read.status, 200,
            "acknowledged Observation/{id} is readable"
        );
        if serde_json::from_slice::<serde_json::Value>(body).is_ok() {
            assert_eq!(read.body, *body, "Observation/{id} is byte-identical");
            compared += 1;
        }
    }
    assert!(compared > 0, "acknowledged bodies were compared");
}

/// Pages through the system history (which opens every version's blob) and counts versions.
async fn every_version_readable(server: &Server) -> usize {
    let c = client(server).await;
    let mut next = Some("_history?_count=500".to_owned());
    let mut count = 0;
    while let Some(url) = next.take() {
        let page = c.get(&url).send().await;
        assert_eq!(
            page.status,
            200,
            "a history page opened every blob it lists: {}",
            page.summary()
        );
        let bundle = page.json().unwrap();
        for entry in bundle["entry"].as_array().cloned().unwrap_or_default() {
            assert_eq!(entry["resource"]["resourceType"], "Observation");
            count += 1;
        }
        next = bundle_link(&bundle, "next");
    }
    count
}

fn sweep(data_dir: &Path, profile: &Profile) -> String {
    let output = common::command(&profile.env())
        .arg("sweep")
        .arg("--grace-secs")
        .arg("0")
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .expect("intellihealth sweep runs");
    assert!(
        output.status.success(),
        "sweep failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            if p.is_dir() {
                count_files(&p)
            } else {
                usize::from(!p.file_name().unwrap().to_string_lossy().starts_with('.'))
            }
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loses_no_acknowledged_write_on_the_embedded_profile() {
    crash_and_recover(Profile::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loses_no_acknowledged_write_on_the_services_profile() {
    // Its sweep must not run over blobs other tests keep in a shared node.
    let ipfs = common::services::OwnIpfs::start();
    crash_and_recover(Profile::services_with("crash", &ipfs)).await;
}
