//! The black-box conformance runner against the real binary on the services profile: the
//! MongoDB-compatible server and the IPFS node that `scripts/services` started, with every
//! resource of the official R4 examples package.

mod common;

use common::{Profile, Server};
use conformance_tests::{Options, default_examples_dir, run};

/// Large enough for the two biggest official example Bundles (about 12 MB and 19 MB).
const BODY_LIMIT: usize = 64 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_conformance_suite_passes_on_the_services_profile() {
    let examples = default_examples_dir();
    assert!(
        examples.join("Patient-example.json").is_file(),
        "the official examples are missing at {}: run scripts/test",
        examples.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let profile = Profile::services("conformance");
    let server = Server::start_with(
        dir.path(),
        &["--max-body-bytes", &BODY_LIMIT.to_string()],
        &profile,
    );
    let report = run(&Options {
        base_url: server.base_url.clone(),
        bearer: None,
        examples_dir: Some(examples),
        all_examples: true,
        max_body_bytes: BODY_LIMIT,
    })
    .await;
    println!("{}", report.table());
    let failures: Vec<String> = report
        .failures()
        .iter()
        .map(|f| format!("{} / {}: {}", f.suite, f.name, f.detail))
        .collect();
    assert!(
        report.all_passed(),
        "failed cases:\n{}",
        failures.join("\n")
    );
    assert!(
        server.terminate().success(),
        "the server exits cleanly on SIGTERM"
    );
}
