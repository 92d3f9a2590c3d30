//! Faults of the services profile, on services of this test's own (started by
//! `scripts/services` in a temp dir, so they can be paused and killed by PID): a service that
//! hangs (SIGSTOP) or is gone gives a 503 naming it within the backend timeout, `/health` says
//! which one, nothing half-written becomes visible, and start-up waits for a service that is
//! down, then serves.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Profile, Server, Spawned, client, signal};
use serde_json::{Value, json};

const TIMEOUT_MS: &str = "1500";

/// Runs `scripts/services ACTION DIR [COMPONENT]`; returns the exported variables.
fn services(action: &str, dir: &Path, component: Option<&str>) -> Vec<(String, String)> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/services");
    let output = Command::new(script)
        .arg(action)
        .arg(dir)
        .args(component)
        .output()
        .expect("scripts/services runs");
    assert!(
        output.status.success(),
        "scripts/services {action}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let (name, value) = line.strip_prefix("export ")?.split_once('=')?;
            Some((name.to_owned(), value.trim_matches('\'').to_owned()))
        })
        .collect()
}

fn pid_of(dir: &Path, component: &str) -> i32 {
    std::fs::read_to_string(dir.join(format!("{component}.pid")))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn profile_from(exports: &[(String, String)]) -> Profile {
    let get = |name: &str| {
        exports
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    Profile::Services {
        mongodb_uri: get("INTELLIHEALTH_MONGODB_URI"),
        ipfs_api: get("INTELLIHEALTH_IPFS_API"),
    }
}

/// Stops the services of `dir` whatever happens to the test.
struct ServicesGuard<'a>(&'a Path);

impl Drop for ServicesGuard<'_> {
    fn drop(&mut self) {
        for component in ["mongo", "ipfs"] {
            if let Ok(pid) = std::fs::read_to_string(self.0.join(format!("{component}.pid"))) {
                signal(pid.trim().parse().unwrap_or(0), libc::SIGCONT);
            }
        }
        services("down", self.0, None);
    }
}

fn patient(family: &str) -> Value {
    json!({"resourceType": "Patient", "name": [{"family": family}]})
}

async fn patient_versions(c: &conformance_tests::client::Client) -> usize {
    let history = c
        .get("Patient/_history?_count=1000")
        .send()
        .await
        .json()
        .unwrap();
    history["entry"].as_array().map_or(0, Vec::len)
}

/// A request during a fault: a prompt 503 with Retry-After naming the component.
fn assert_unavailable(reply: &conformance_tests::client::Reply, component: &str, took: Duration) {
    assert_eq!(reply.status, 503, "{}", reply.summary());
    assert!(reply.header("retry-after").is_some(), "Retry-After is set");
    let outcome = reply.json().unwrap();
    let diagnostics = outcome["issue"][0]["diagnostics"]
        .as_str()
        .unwrap_or_default();
    assert!(
        diagnostics.contains(component),
        "the outcome names the {component}: {diagnostics}"
    );
    assert!(
        took < Duration::from_secs(5),
        "answered in {took:?}, not a hang"
    );
}

async fn health(c: &conformance_tests::client::Client) -> (u16, Value) {
    let reply = c.get(&c.url("../health")).send().await;
    (reply.status.as_u16(), reply.json().unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_service_gives_a_prompt_503_and_nothing_half_written() {
    let services_dir = tempfile::tempdir().unwrap();
    let exports = services("up", services_dir.path(), None);
    let _guard = ServicesGuard(services_dir.path());
    let data = tempfile::tempdir().unwrap();
    // No blob cache: the reads below must reach the IPFS node to meet its fault.
    let server = Server::start_with(
        data.path(),
        &[
            "--backend-timeout-ms",
            TIMEOUT_MS,
            "--blob-cache-bytes",
            "0",
        ],
        &profile_from(&exports),
    );
    let c = client(&server).await;
    let created = c
        .post_json("Patient", &patient("BeforeFaults"))
        .send()
        .await;
    assert_eq!(created.status, 201);
    let id = created.json().unwrap()["id"].as_str().unwrap().to_owned();
    assert_eq!(patient_versions(&c).await, 1);

    // The IPFS node hangs.
    let ipfs = pid_of(services_dir.path(), "ipfs");
    signal(ipfs, libc::SIGSTOP);
    let started = Instant::now();
    let write = c
        .post_json("Patient", &patient("DuringIpfsHang"))
        .send()
        .await;
    assert_unavailable(&write, "blob store", started.elapsed());
    let started = Instant::now();
    let read = c.get(&format!("Patient/{id}")).send().await;
    assert_unavailable(&read, "blob store", started.elapsed());
    let (status, report) = health(&c).await;
    assert_eq!(status, 503);
    assert_eq!(report["components"]["blob store"]["status"], "down");
    assert_eq!(report["components"]["index"]["status"], "up");
    signal(ipfs, libc::SIGCONT);
    assert_eq!(
        c.get(&format!("Patient/{id}")).send().await.status,
        200,
        "recovers when it answers again"
    );

    // MongoDB hangs: the blob is stored, the index commit times out; nothing becomes visible.
    let mongo = pid_of(services_dir.path(), "mongo");
    signal(mongo, libc::SIGSTOP);
    let started = Instant::now();
    let write = c
        .post_json("Patient", &patient("DuringMongoHang"))
        .send()
        .await;
    assert_unavailable(&write, "index", started.elapsed());
    let (status, report) = health(&c).await;
    assert_eq!(status, 503);
    assert_eq!(report["components"]["index"]["status"], "down");
    signal(mongo, libc::SIGCONT);

    // MongoDB is gone, then comes back on the same port.
    services("down", services_dir.path(), Some("mongo"));
    let started = Instant::now();
    let write = c
        .post_json("Patient", &patient("DuringMongoDown"))
        .send()
        .await;
    assert_unavailable(&write, "index", started.elapsed());
    services("up", services_dir.path(), Some("mongo"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while health(&c).await.0 != 200 {
        assert!(
            Instant::now() < deadline,
            "the server recovers once MongoDB is back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let after = c.post_json("Patient", &patient("AfterFaults")).send().await;
    assert_eq!(after.status, 201, "{}", after.summary());
    assert_eq!(
        patient_versions(&c).await,
        2,
        "only the two acknowledged creates are visible: no failed write left a version behind"
    );
    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_waits_for_a_service_that_is_down() {
    let services_dir = tempfile::tempdir().unwrap();
    let exports = services("up", services_dir.path(), None);
    let _guard = ServicesGuard(services_dir.path());
    services("down", services_dir.path(), Some("mongo"));
    let data = tempfile::tempdir().unwrap();
    let log = data.path().join("server.log");
    let spawned = Spawned::without_client(
        data.path(),
        &["--backend-timeout-ms", TIMEOUT_MS],
        &profile_from(&exports),
        Some(&log),
    );
    let spawned = match spawned.ready(Duration::from_secs(3)) {
        Ok(_) => panic!("the server must not listen before its index store answers"),
        Err(waiting) => waiting,
    };
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(
        said.contains("waiting for MongoDB"),
        "a clear log line says what is awaited: {said}"
    );
    services("up", services_dir.path(), Some("mongo"));
    let credentials = common::provision(data.path(), &profile_from(&exports));
    let server = spawned
        .with_credentials(credentials)
        .ready(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("the server serves once MongoDB is up"));
    let c = client(&server).await;
    assert_eq!(
        c.post_json("Patient", &patient("AfterStart"))
            .send()
            .await
            .status,
        201
    );
    assert!(server.terminate().success());
}
