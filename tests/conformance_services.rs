//! The black-box conformance runner against the real binary on the services profile: the
//! MongoDB-compatible server and the IPFS node that `scripts/services` started, with every
//! resource of the official R4 examples package.

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_conformance_suite_passes_on_the_services_profile() {
    common::conformance_suite_passes(common::Profile::services("conformance")).await;
}
