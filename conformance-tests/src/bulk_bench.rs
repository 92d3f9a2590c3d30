//! `bench-bulk`: transaction Bundles per second (each of `entries` creates, with `urn:uuid:`
//! references between them, at a given concurrency), then one whole Bulk Data export
//! (kick-off, polls, every file downloaded) in resources per second, from the kick-off to the
//! last byte. Over public HTTP only, so it measures any server that serves both.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};

use crate::client::Client;

pub struct BulkBenchOptions {
    pub base_url: String,
    pub bearer: Option<String>,
    /// Transaction Bundles sent in all.
    pub bundles: usize,
    /// Entries per Bundle.
    pub entries: usize,
    pub concurrency: usize,
}

pub struct BulkReport {
    pub bundles: usize,
    pub entries: usize,
    pub concurrency: usize,
    pub transaction_seconds: f64,
    pub exported: usize,
    pub files: usize,
    pub export_seconds: f64,
}

/// A transaction of `entries` writes: half Patients, each with an Observation referring to it
/// by its `urn:uuid:` fullUrl (rewritten by the server to the id it assigns).
fn transaction(round: usize, entries: usize) -> Value {
    let mut bundle_entries = Vec::with_capacity(entries);
    for pair in 0..entries / 2 {
        let uuid = format!("{:08x}-0000-4000-8000-{:012x}", round, pair);
        bundle_entries.push(json!({
            "fullUrl": format!("urn:uuid:{uuid}"),
            "resource": {"resourceType": "Patient", "name": [{"family": format!("Bulk{round}"), "given": [format!("P{pair}")]}]},
            "request": {"method": "POST", "url": "Patient"}
        }));
        bundle_entries.push(json!({
            "resource": {"resourceType": "Observation", "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                "subject": {"reference": format!("urn:uuid:{uuid}")},
                "valueQuantity": {"value": 60 + pair % 40, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}},
            "request": {"method": "POST", "url": "Observation"}
        }));
    }
    json!({"resourceType": "Bundle", "type": "transaction", "entry": bundle_entries})
}

pub async fn run(options: &BulkBenchOptions) -> Result<BulkReport, String> {
    let client = Client::new(&options.base_url, options.bearer.clone());
    let started = Instant::now();
    let mut replies = futures::stream::iter(0..options.bundles)
        .map(|round| {
            let client = client.clone();
            let body = transaction(round, options.entries);
            async move { client.post_json("", &body).send().await }
        })
        .buffer_unordered(options.concurrency.max(1));
    while let Some(reply) = replies.next().await {
        if reply.status.as_u16() != 200 {
            return Err(format!("a transaction failed: {}", reply.summary()));
        }
    }
    let transaction_seconds = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let kick_off = client
        .get("$export")
        .header("prefer", "respond-async")
        .header("accept", "application/fhir+json")
        .send()
        .await;
    let status_url = kick_off
        .header("content-location")
        .ok_or_else(|| format!("the kick-off: {}", kick_off.summary()))?;
    let manifest = loop {
        let reply = client.get(&status_url).send().await;
        match reply.status.as_u16() {
            202 => tokio::time::sleep(Duration::from_millis(100)).await,
            200 => break reply.json().ok_or("the manifest is not JSON")?,
            _ => return Err(format!("the export: {}", reply.summary())),
        }
    };
    let outputs = manifest["output"].as_array().cloned().unwrap_or_default();
    let mut exported = 0;
    for output in &outputs {
        let url = output["url"].as_str().ok_or("an output without url")?;
        let reply = client.get(url).send().await;
        if reply.status.as_u16() != 200 {
            return Err(format!("{url}: {}", reply.summary()));
        }
        exported += reply
            .body
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .count();
    }
    let export_seconds = started.elapsed().as_secs_f64();
    // The job's files are not needed once measured.
    client.delete(&status_url).send().await;
    Ok(BulkReport {
        bundles: options.bundles,
        entries: options.entries,
        concurrency: options.concurrency,
        transaction_seconds,
        exported,
        files: outputs.len(),
        export_seconds,
    })
}

pub fn table(report: &BulkReport) -> String {
    format!(
        "| measure | figure |\n|---|---|\n\
         | transaction Bundles of {} entries, {} at once | {:.1} Bundles/s ({:.0} entries/s; {} Bundles in {:.1} s) |\n\
         | $export, kick-off to last byte | {:.0} resources/s ({} resources in {} files, {:.1} s) |\n",
        report.entries,
        report.concurrency,
        report.bundles as f64 / report.transaction_seconds,
        (report.bundles * report.entries) as f64 / report.transaction_seconds,
        report.bundles,
        report.transaction_seconds,
        report.exported as f64 / report.export_seconds,
        report.exported,
        report.files,
        report.export_seconds,
    )
}
