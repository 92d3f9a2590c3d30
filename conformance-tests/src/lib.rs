//! A black-box conformance runner for FHIR R4 servers: give it a base URL (and a bearer token
//! if the server wants one) and it exercises the server over HTTP only, printing a pass/fail
//! table. It runs against IntelliHealth in both profiles, or against any peer server.
//!
//! Also a load driver (`bench`) measuring create and read throughput and latency, a soak
//! (`soak`) holding a mixed load for minutes, a consent benchmark (`bench-consent`), and a
//! transaction and Bulk Data export benchmark (`bench-bulk`).

pub mod bench;
pub mod bulk_bench;
pub mod client;
pub mod consent_bench;
pub mod keys;
pub mod report;
pub mod search_bench;
pub mod soak;
pub mod suites;

use std::path::PathBuf;

use client::Client;
use report::Report;
use suites::SuiteContext;

/// What to run, against what.
#[derive(Clone, Debug)]
pub struct Options {
    pub base_url: String,
    pub bearer: Option<String>,
    /// The unpacked npm package `hl7.fhir.r4.examples@4.0.1`; `None` skips that suite (the
    /// project's own test refuses to run without it).
    pub examples_dir: Option<PathBuf>,
    /// Also load the conformance resources of the package, not only the example records.
    pub all_examples: bool,
    /// The server's body limit, for the 413 case.
    pub max_body_bytes: usize,
    /// What the server registered for the SMART and attack suites; `None` skips them.
    pub smart: Option<suites::smart::SmartFixtures>,
}

/// Runs every suite and returns the report.
pub async fn run(options: &Options) -> Report {
    let ctx = SuiteContext {
        client: Client::new(&options.base_url, options.bearer.clone()),
        max_body_bytes: options.max_body_bytes,
    };
    let mut report = Report::default();
    suites::metadata::run(&ctx, &mut report).await;
    suites::crud::run(&ctx, &mut report).await;
    suites::history::run(&ctx, &mut report).await;
    suites::negotiation::run(&ctx, &mut report).await;
    suites::errors::run(&ctx, &mut report).await;
    suites::bad_input::run(&ctx, &mut report).await;
    suites::search::run(&ctx, &mut report).await;
    suites::transactions::run(&ctx, &mut report).await;
    if let Some(fixtures) = &options.smart {
        suites::smart::run(&ctx, fixtures, &mut report).await;
        suites::attacks::run(&ctx, fixtures, &mut report).await;
    }
    if let Some(dir) = &options.examples_dir {
        suites::examples::run(&ctx, dir, options.all_examples, &mut report).await;
    }
    report
}

/// Where the project's scripts unpack the official examples, unless told otherwise.
pub fn default_examples_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("FHIR_EXAMPLES_DIR") {
        return PathBuf::from(dir);
    }
    let cache = std::env::var("INTELLIHEALTH_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| ".".into()))
                .join(".cache/intellihealth")
        });
    cache.join("fhir-examples/node_modules/hl7.fhir.r4.examples")
}
