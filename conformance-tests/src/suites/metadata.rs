//! `GET /metadata`: a CapabilityStatement for FHIR 4.0.1 that claims what the other suites test.

use crate::report::Report;

use super::SuiteContext;

const SUITE: &str = "metadata";

/// The interactions the other suites exercise, which the statement must therefore claim.
const EXERCISED: &[&str] = &[
    "read",
    "vread",
    "update",
    "delete",
    "history-instance",
    "history-type",
    "create",
];

pub async fn run(ctx: &SuiteContext, report: &mut Report) {
    let reply = ctx.client.get("metadata").send().await;
    let statement = reply.json().unwrap_or_default();
    report.check(
        SUITE,
        "metadata is a CapabilityStatement",
        reply.status == 200 && statement["resourceType"] == "CapabilityStatement",
        reply.summary(),
    );
    report.check(
        SUITE,
        "fhirVersion is 4.0.1",
        statement["fhirVersion"] == "4.0.1",
        format!("{}", statement["fhirVersion"]),
    );
    let formats = statement["format"].as_array().cloned().unwrap_or_default();
    report.check(
        SUITE,
        "format lists JSON",
        formats
            .iter()
            .any(|f| f == "json" || f == "application/fhir+json"),
        format!("{formats:?}"),
    );
    let resources = statement["rest"][0]["resource"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let missing: Vec<String> = ["Patient", "Observation"]
        .iter()
        .flat_map(|ty| {
            let entry = resources.iter().find(|r| r["type"] == *ty);
            EXERCISED.iter().filter_map(move |code| {
                let claimed = entry.is_some_and(|e| {
                    e["interaction"]
                        .as_array()
                        .is_some_and(|i| i.iter().any(|x| x["code"] == *code))
                });
                (!claimed).then(|| format!("{ty}.{code}"))
            })
        })
        .collect();
    report.check(
        SUITE,
        "claims every interaction the suites exercise",
        missing.is_empty(),
        format!("missing: {missing:?}"),
    );
    report.check(
        SUITE,
        "lists resource types",
        resources.len() >= 145,
        format!("{} types", resources.len()),
    );
    let system = statement["rest"][0]["interaction"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    report.check(
        SUITE,
        "claims history-system",
        system.iter().any(|i| i["code"] == "history-system"),
        format!("{system:?}"),
    );
}
