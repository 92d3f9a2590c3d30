//! Every example record of the official R4 package (npm `hl7.fhir.r4.examples@4.0.1`): PUT
//! with its own id, read back, and compare with what was sent (apart from the server's
//! `meta.versionId`/`meta.lastUpdated`). The 720 records of 126 types by default; with
//! `--all-examples`, also the 4,586 conformance resources (StructureDefinitions, ValueSets, …).
//!
//! A handful of official examples break R4's own rules. For those, a server may store them
//! (and then must return them intact) or refuse them with a 4xx OperationOutcome; the reason
//! each is listed is given beside it.

use std::path::Path;

use futures::stream::{self, StreamExt};
use serde_json::Value;

use super::{SuiteContext, same_resource};
use crate::report::Report;

const SUITE: &str = "examples";

/// Conformance and terminology types: in the package, but not example *records*.
pub const DEFINITION_TYPES: &[&str] = &[
    "CapabilityStatement",
    "CodeSystem",
    "CompartmentDefinition",
    "ConceptMap",
    "GraphDefinition",
    "ImplementationGuide",
    "MessageDefinition",
    "NamingSystem",
    "OperationDefinition",
    "SearchParameter",
    "StructureDefinition",
    "StructureMap",
    "TerminologyCapabilities",
    "ValueSet",
];

/// Types a server may write only itself, refusing a client's write with 405 (the audit trail):
/// their examples pass if stored intact or refused so.
pub const SERVER_WRITTEN_TYPES: &[&str] = &["AuditEvent"];

/// Official examples that violate R4 itself, and how.
pub const KNOWN_INVALID: &[(&str, &str)] = &[
    (
        "Questionnaire-qs1.json",
        "items without the required linkId (Questionnaire.item.linkId is 1..1)",
    ),
    // The rest are conformance resources, loaded only with --all-examples.
    (
        "ImplementationGuide-fhir.json",
        "no name or status (both 1..1)",
    ),
    ("ig-r4.json", "no name or status (both 1..1)"),
    (
        "SearchParameter-questionnaireresponse-extensions-QuestionnaireResponse-item-subject.json",
        "an id of 65 characters (ids are at most 64)",
    ),
    (
        "SearchParameter-codesystem-extensions-CodeSystem-author.json",
        "no base (1..*)",
    ),
    (
        "SearchParameter-codesystem-extensions-CodeSystem-effective.json",
        "no base (1..*)",
    ),
    (
        "SearchParameter-codesystem-extensions-CodeSystem-end.json",
        "no base (1..*)",
    ),
    (
        "SearchParameter-codesystem-extensions-CodeSystem-keyword.json",
        "no base (1..*)",
    ),
    (
        "SearchParameter-codesystem-extensions-CodeSystem-workflow.json",
        "no base (1..*)",
    ),
    (
        "SearchParameter-valueset-extensions-ValueSet-author.json",
        "no base (1..*)",
    ),
    (
        "SearchParameter-valueset-extensions-ValueSet-effective.json",
        "no base (1..*)",
    ),
    (
        "SearchParameter-valueset-extensions-ValueSet-end.json",
        "no base (1..*)",
    ),
    (
        "SearchParameter-valueset-extensions-ValueSet-keyword.json",
        "no base (1..*)",
    ),
    (
        "SearchParameter-valueset-extensions-ValueSet-workflow.json",
        "no base (1..*)",
    ),
];

/// What `hl7.fhir.r4.examples@4.0.1` holds apart from its conformance resources.
const EXAMPLE_RECORDS: usize = 720;
const EXAMPLE_TYPES: usize = 126;
/// ... and with its conformance resources (`--all-examples`).
const ALL_RESOURCES: usize = 5306;
const ALL_TYPES: usize = 140;

/// Requests in flight at once while loading the examples.
const CONCURRENCY: usize = 8;

pub struct Loaded {
    pub file: String,
    pub resource_type: String,
    pub id: String,
    pub value: Value,
}

/// Reads the example files of the package at `dir`.
pub fn load(dir: &Path, all: bool) -> Result<Vec<Loaded>, String> {
    let mut loaded = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json") && n != "package.json" && !n.starts_with('.'))
        .collect();
    names.sort();
    for name in names {
        let text = std::fs::read(dir.join(&name)).map_err(|e| format!("{name}: {e}"))?;
        let value: Value = serde_json::from_slice(&text).map_err(|e| format!("{name}: {e}"))?;
        let resource_type = value["resourceType"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if !all && DEFINITION_TYPES.contains(&resource_type.as_str()) {
            continue;
        }
        let id = value["id"].as_str().unwrap_or_default().to_owned();
        loaded.push(Loaded {
            file: name,
            resource_type,
            id,
            value,
        });
    }
    Ok(loaded)
}

pub async fn run(ctx: &SuiteContext, dir: &Path, all: bool, report: &mut Report) {
    let examples = match load(dir, all) {
        Ok(examples) if !examples.is_empty() => examples,
        Ok(_) => {
            report.check(
                SUITE,
                "load the official examples",
                false,
                format!("no examples in {}", dir.display()),
            );
            return;
        }
        Err(e) => {
            report.check(SUITE, "load the official examples", false, e);
            return;
        }
    };
    let client = &ctx.client;
    let results: Vec<(String, String, bool, String)> = stream::iter(examples.iter())
        .map(|example| async move {
            let path = format!("{}/{}", example.resource_type, example.id);
            let put = client.put_json(&path, &example.value).send().await;
            let known_invalid = KNOWN_INVALID.iter().find(|(file, _)| *file == example.file);
            let (passed, detail) = if put.status.is_success() {
                let read = client.get(&path).send().await;
                match read.json() {
                    Some(stored)
                        if read.status == 200 && same_resource(&example.value, &stored) =>
                    {
                        (true, String::new())
                    }
                    _ => (false, format!("read back differs: {}", read.summary())),
                }
            } else if SERVER_WRITTEN_TYPES.contains(&example.resource_type.as_str()) {
                // A server that keeps its own audit trail may refuse clients' AuditEvents.
                let refused = put.status.as_u16() == 405 && put.is_outcome();
                (
                    refused,
                    format!(
                        "refused ({}): this server writes its {}s itself",
                        put.status.as_u16(),
                        example.resource_type
                    ),
                )
            } else if let Some((_, reason)) = known_invalid {
                let refused = put.status.is_client_error() && put.is_outcome();
                (
                    refused,
                    format!(
                        "refused ({}): the example itself is invalid: {reason}",
                        put.status.as_u16()
                    ),
                )
            } else {
                (false, format!("PUT failed: {}", put.summary()))
            };
            (
                example.file.clone(),
                example.resource_type.clone(),
                passed,
                detail,
            )
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;

    let mut types: Vec<&str> = examples.iter().map(|e| e.resource_type.as_str()).collect();
    types.sort_unstable();
    types.dedup();
    // A partial or different package must not pass as the whole official set.
    let (records, of_types) = if all {
        (ALL_RESOURCES, ALL_TYPES)
    } else {
        (EXAMPLE_RECORDS, EXAMPLE_TYPES)
    };
    report.check(
        SUITE,
        format!("the package holds {records} resources of {of_types} types"),
        examples.len() == records && types.len() == of_types,
        format!("{} resources of {} types", examples.len(), types.len()),
    );
    let failed: Vec<&(String, String, bool, String)> = results.iter().filter(|r| !r.2).collect();
    for (file, _, _, detail) in &failed {
        report.check(SUITE, format!("round trip {file}"), false, detail.clone());
    }
    for (file, _, passed, detail) in results.iter().filter(|r| r.2 && !r.3.is_empty()) {
        report.check(
            SUITE,
            format!("known-invalid {file}"),
            *passed,
            detail.clone(),
        );
    }
    report.check(
        SUITE,
        format!(
            "all {} examples of {} types round-trip",
            examples.len(),
            types.len()
        ),
        failed.is_empty(),
        format!("{} failed", failed.len()),
    );
}
