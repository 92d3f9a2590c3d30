//! Transactions, batches, conditional interactions and PATCH.
//!
//! - conditional: 50 identical conditional creates at once make exactly one resource; a
//!   matching one returns it; several matches are 412; conditional update creates then
//!   updates; conditional delete deletes the match.
//! - patch: JSON Patch changes a version; a failing or invalidating patch is 422 and changes
//!   nothing; `If-Match` on a patch. FHIRPath Patch (a Parameters body) replaces, adds,
//!   inserts and deletes; a failing one is 422 and changes nothing; `If-Match` on it.
//! - If-None-Match on an update: `*` creates a new id (201) and refuses an existing one (412).
//! - transaction: `urn:uuid:` references rewritten, a conditional reference resolved, a
//!   conditional create inside, and a transaction whose last entry fails leaving nothing.
//! - batch: entries answered independently (a 201, a 404, a search).

use futures::future::join_all;
use serde_json::{Value, json};

use super::{SuiteContext, patient, random_id};
use crate::client::{Client, Reply};
use crate::report::Report;

const SUITE: &str = "transactions";
const RACERS: usize = 50;

pub async fn run(ctx: &SuiteContext, report: &mut Report) {
    let c = &ctx.client;
    conditional(c, report).await;
    patch(c, report).await;
    fhirpath_patch(c, report).await;
    if_none_match(c, report).await;
    transaction(c, report).await;
    batch(c, report).await;
}

/// A Patient with an identifier of this run.
fn identified(system: &str, value: &str) -> Value {
    let mut p = patient("Transactional");
    p["identifier"] = json!([{"system": system, "value": value}]);
    p
}

async fn count_matching(c: &Client, query: &str) -> Option<usize> {
    let reply = c.get(&format!("{query}&_summary=count")).send().await;
    reply
        .json()
        .and_then(|b| b["total"].as_u64())
        .map(|t| t as usize)
}

async fn conditional(c: &Client, report: &mut Report) {
    let system = "urn:intellihealth:conformance";
    let value = random_id();
    let criteria = format!("identifier={system}|{value}");
    let body = identified(system, &value);
    let racing = (0..RACERS).map(|_| {
        c.post_json("Patient", &body)
            .header("If-None-Exist", &criteria)
            .send()
    });
    let replies = join_all(racing).await;
    let created = replies.iter().filter(|r| r.status == 201).count();
    let found = replies.iter().filter(|r| r.status == 200).count();
    let ids: std::collections::BTreeSet<String> = replies
        .iter()
        .filter_map(|r| r.json().and_then(|v| v["id"].as_str().map(str::to_owned)))
        .collect();
    let stored = count_matching(c, &format!("Patient?{criteria}")).await;
    report.check(
        SUITE,
        "50 concurrent identical conditional creates make exactly one resource",
        created == 1 && found == RACERS - 1 && ids.len() == 1 && stored == Some(1),
        format!("{created} created, {found} found it, ids {ids:?}, stored {stored:?}"),
    );
    let again = c
        .post_json("Patient", &body)
        .header("If-None-Exist", &format!("Patient?{criteria}"))
        .send()
        .await;
    let same = again
        .json()
        .and_then(|v| v["id"].as_str().map(str::to_owned));
    report.check(
        SUITE,
        "a conditional create that matches answers 200 with the match",
        again.status == 200 && same.as_ref().is_some_and(|id| ids.contains(id)),
        again.summary(),
    );
    // Two more with a shared identifier: a conditional create matching both is 412.
    let shared = random_id();
    for _ in 0..2 {
        c.post_json("Patient", &identified(system, &shared))
            .send()
            .await;
    }
    let ambiguous = c
        .post_json("Patient", &identified(system, &shared))
        .header("If-None-Exist", &format!("identifier={system}|{shared}"))
        .send()
        .await;
    let still = count_matching(c, &format!("Patient?identifier={system}|{shared}")).await;
    report.check(
        SUITE,
        "a conditional create matching several is 412 and creates nothing",
        ambiguous.status == 412 && ambiguous.is_outcome() && still == Some(2),
        format!("{}; {still:?} stored", ambiguous.summary()),
    );

    // Conditional update: creates when nothing matches, then updates the match.
    let value = random_id();
    let criteria = format!("identifier={system}|{value}");
    let mut body = identified(system, &value);
    let first = c
        .put_json(&format!("Patient?{criteria}"), &body)
        .send()
        .await;
    body["gender"] = json!("male");
    let second = c
        .put_json(&format!("Patient?{criteria}"), &body)
        .send()
        .await;
    let (first_id, second_json) = (
        first
            .json()
            .and_then(|v| v["id"].as_str().map(str::to_owned)),
        second.json().unwrap_or_default(),
    );
    report.check(
        SUITE,
        "a conditional update creates (201), then updates the match (200, version 2)",
        first.status == 201
            && second.status == 200
            && second_json["id"].as_str() == first_id.as_deref()
            && second_json["meta"]["versionId"] == "2"
            && second_json["gender"] == "male",
        format!("{} then {}", first.summary(), second.summary()),
    );
    let ambiguous = c
        .put_json(
            &format!("Patient?identifier={system}|{shared}"),
            &identified(system, &shared),
        )
        .send()
        .await;
    report.check(
        SUITE,
        "a conditional update matching several is 412",
        ambiguous.status == 412 && ambiguous.is_outcome(),
        ambiguous.summary(),
    );
    let unknown = c
        .delete(&format!("Patient?no-such-parameter=1&{criteria}"))
        .send()
        .await;
    report.check(
        SUITE,
        "a conditional delete with an unknown parameter is refused (400), not widened",
        unknown.status == 400 && unknown.is_outcome(),
        unknown.summary(),
    );
    let deleted = c.delete(&format!("Patient?{criteria}")).send().await;
    let read = c
        .get(&format!("Patient/{}", first_id.unwrap_or_default()))
        .send()
        .await;
    report.check(
        SUITE,
        "a conditional delete deletes the match (then 410)",
        matches!(deleted.status.as_u16(), 200 | 204) && read.status == 410,
        format!("{} then read {}", deleted.summary(), read.status),
    );
}

/// Creates a Patient of this family to patch and answers its path (`Patient/{id}`); when it
/// cannot be made, the set-up failure is the check (named by `setup`) and there is no path.
async fn patient_to_patch(
    c: &Client,
    report: &mut Report,
    family: &str,
    setup: &str,
) -> Option<String> {
    let created = c.post_json("Patient", &patient(family)).send().await;
    let id = created
        .json()
        .and_then(|v| v["id"].as_str().map(str::to_owned));
    if id.is_none() {
        report.check(SUITE, setup, false, created.summary());
    }
    id.map(|id| format!("Patient/{id}"))
}

/// The check that a failing patch and an invalidating one were both refused (422, an
/// OperationOutcome) and that the resource (`now`) is still at `version` with gender "other",
/// as both patch suites leave it before trying them.
fn check_refused_patches(
    report: &mut Report,
    name: &str,
    (failed, invalid): (&Reply, &Reply),
    now: &Value,
    version: &str,
) {
    report.check(
        SUITE,
        name,
        failed.status == 422
            && invalid.status == 422
            && failed.is_outcome()
            && invalid.is_outcome()
            && now["meta"]["versionId"] == version
            && now["gender"] == "other",
        format!("{}; {}", failed.summary(), invalid.summary()),
    );
}

async fn patch(c: &Client, report: &mut Report) {
    let Some(path) =
        patient_to_patch(c, report, "Patched", "set-up: create a patient to patch").await
    else {
        return;
    };
    let json_patch = |ops: Value| {
        c.request(reqwest::Method::PATCH, &path)
            .header("Content-Type", "application/json-patch+json")
            .body(ops.to_string().into_bytes())
    };
    let patched = json_patch(json!([
        {"op": "test", "path": "/gender", "value": "female"},
        {"op": "replace", "path": "/gender", "value": "other"},
        {"op": "add", "path": "/name/0/given/-", "value": "Second"}
    ]))
    .send()
    .await;
    let body = patched.json().unwrap_or_default();
    report.check(
        SUITE,
        "a JSON Patch makes the next version",
        patched.status == 200
            && body["gender"] == "other"
            && body["name"][0]["given"] == json!(["Conformance", "Second"])
            && body["meta"]["versionId"] == "2",
        patched.summary(),
    );
    let failed = json_patch(json!([
        {"op": "replace", "path": "/gender", "value": "male"},
        {"op": "test", "path": "/gender", "value": "female"}
    ]))
    .send()
    .await;
    let invalid = json_patch(json!([
        {"op": "replace", "path": "/birthDate", "value": "not a date"}
    ]))
    .send()
    .await;
    let now = c.get(&path).send().await.json().unwrap_or_default();
    check_refused_patches(
        report,
        "a failing patch, and one making an invalid resource, are 422 and change nothing",
        (&failed, &invalid),
        &now,
        "2",
    );
    let stale = json_patch(json!([{"op": "remove", "path": "/active"}]))
        .header("If-Match", "W/\"1\"")
        .send()
        .await;
    report.check(
        SUITE,
        "a patch with a stale If-Match is 412",
        stale.status == 412,
        stale.summary(),
    );
}

/// One FHIRPath Patch operation: its type, its path, and its other parts (name, part).
type Operation<'a> = (&'a str, &'a str, Vec<(&'a str, Value)>);

/// A FHIRPath Patch `Parameters` of operations.
fn fhirpath_operations(operations: &[Operation<'_>]) -> Value {
    let parameter: Vec<Value> = operations
        .iter()
        .map(|(kind, path, parts)| {
            let mut all = vec![
                json!({"name": "type", "valueCode": kind}),
                json!({"name": "path", "valueString": path}),
            ];
            for (name, part) in parts {
                let mut part = part.clone();
                part["name"] = json!(name);
                all.push(part);
            }
            json!({"name": "operation", "part": all})
        })
        .collect();
    json!({"resourceType": "Parameters", "parameter": parameter})
}

async fn fhirpath_patch(c: &Client, report: &mut Report) {
    let Some(path) = patient_to_patch(
        c,
        report,
        "FhirPathPatched",
        "set-up: create a patient to patch with FHIRPath",
    )
    .await
    else {
        return;
    };
    let send = |operations: &[Operation<'_>]| {
        c.request(reqwest::Method::PATCH, &path)
            .header("Content-Type", "application/fhir+json")
            .body(fhirpath_operations(operations).to_string().into_bytes())
    };
    let replaced = send(&[(
        "replace",
        "Patient.gender",
        vec![("value", json!({"valueCode": "other"}))],
    )])
    .send()
    .await;
    let body = replaced.json().unwrap_or_default();
    report.check(
        SUITE,
        "a FHIRPath Patch replace changes a value (the next version)",
        replaced.status == 200 && body["gender"] == "other" && body["meta"]["versionId"] == "2",
        replaced.summary(),
    );
    let added = send(&[(
        "add",
        "Patient",
        vec![
            ("name", json!({"valueString": "telecom"})),
            (
                "value",
                json!({"part": [
                    {"name": "system", "valueCode": "phone"},
                    {"name": "value", "valueString": "555-0100"}
                ]}),
            ),
        ],
    )])
    .send()
    .await;
    let body = added.json().unwrap_or_default();
    report.check(
        SUITE,
        "a FHIRPath Patch add adds an element given as parts",
        added.status == 200
            && body["telecom"] == json!([{"system": "phone", "value": "555-0100"}])
            && body["meta"]["versionId"] == "3",
        added.summary(),
    );
    let inserted = send(&[(
        "insert",
        "Patient.name[0].given",
        vec![
            ("value", json!({"valueString": "First"})),
            ("index", json!({"valueInteger": 0})),
        ],
    )])
    .send()
    .await;
    let body = inserted.json().unwrap_or_default();
    report.check(
        SUITE,
        "a FHIRPath Patch insert puts a value into a list at its index",
        inserted.status == 200 && body["name"][0]["given"] == json!(["First", "Conformance"]),
        inserted.summary(),
    );
    let deleted = send(&[("delete", "Patient.birthDate", vec![])])
        .send()
        .await;
    let body = deleted.json().unwrap_or_default();
    report.check(
        SUITE,
        "a FHIRPath Patch delete removes an element",
        deleted.status == 200
            && body.get("birthDate").is_none()
            && body["meta"]["versionId"] == "5",
        deleted.summary(),
    );
    let failed = send(&[
        (
            "replace",
            "Patient.gender",
            vec![("value", json!({"valueCode": "male"}))],
        ),
        (
            "replace",
            "Patient.birthDate",
            vec![("value", json!({"valueDate": "1980-01-01"}))],
        ),
    ])
    .send()
    .await;
    let invalid = send(&[(
        "replace",
        "Patient.gender",
        vec![("value", json!({"valueCode": "not-a-gender"}))],
    )])
    .send()
    .await;
    let now = c.get(&path).send().await.json().unwrap_or_default();
    check_refused_patches(
        report,
        "a failing FHIRPath Patch, and one making an invalid resource, are 422 and change nothing",
        (&failed, &invalid),
        &now,
        "5",
    );
    let activate = [(
        "replace",
        "Patient.active",
        vec![("value", json!({"valueBoolean": false}))],
    )];
    let stale = send(&activate).header("If-Match", "W/\"4\"").send().await;
    let current = send(&activate).header("If-Match", "W/\"5\"").send().await;
    let body = current.json().unwrap_or_default();
    report.check(
        SUITE,
        "a FHIRPath Patch with a stale If-Match is 412; with the current one it applies",
        stale.status == 412
            && current.status == 200
            && body["active"] == false
            && body["meta"]["versionId"] == "6",
        format!("{}; {}", stale.summary(), current.summary()),
    );
}

async fn if_none_match(c: &Client, report: &mut Report) {
    let id = random_id();
    let mut body = patient("IfNoneMatch");
    body["id"] = json!(id);
    let path = format!("Patient/{id}");
    let created = c
        .put_json(&path, &body)
        .header("If-None-Match", "*")
        .send()
        .await;
    report.check(
        SUITE,
        "an update with If-None-Match: * on a new id creates it (201)",
        created.status == 201,
        created.summary(),
    );
    body["gender"] = json!("male");
    let refused = c
        .put_json(&path, &body)
        .header("If-None-Match", "*")
        .send()
        .await;
    let now = c.get(&path).send().await.json().unwrap_or_default();
    report.check(
        SUITE,
        "an update with If-None-Match: * on an existing resource is 412 and writes nothing",
        refused.status == 412
            && refused.is_outcome()
            && now["meta"]["versionId"] == "1"
            && now["gender"] == "female",
        refused.summary(),
    );
}

async fn transaction(c: &Client, report: &mut Report) {
    let system = "urn:intellihealth:conformance";
    let (patient_value, doctor_value) = (random_id(), random_id());
    let patient_url = "urn:uuid:0d9d8a5e-4a4c-4b2e-9f45-6a1f1c2d3e4f";
    let mut doctor = json!({"resourceType": "Practitioner", "name": [{"family": "Conditional"}]});
    doctor["identifier"] = json!([{"system": system, "value": doctor_value}]);
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": patient_url, "resource": identified(system, &patient_value),
             "request": {"method": "POST", "url": "Patient"}},
            {"fullUrl": "urn:uuid:6c3a4bb4-1d0e-4f3e-8a57-2f6f1b7c9d10",
             "resource": {"resourceType": "Observation", "status": "final",
                 "code": {"text": "transaction"},
                 "subject": {"reference": patient_url},
                 "performer": [{"reference": format!("Practitioner?identifier={system}|{doctor_value}")}]},
             "request": {"method": "POST", "url": "Observation"}},
            {"resource": doctor,
             "request": {"method": "POST", "url": "Practitioner",
                         "ifNoneExist": format!("identifier={system}|{doctor_value}")}}
        ]
    });
    // The conditional reference must match before the transaction: make the doctor first.
    let mut first_doctor = bundle["entry"][2]["resource"].clone();
    first_doctor["name"][0]["family"] = json!("Existing");
    let made = c.post_json("Practitioner", &first_doctor).send().await;
    let doctor_id = made
        .json()
        .and_then(|v| v["id"].as_str().map(str::to_owned))
        .unwrap_or_default();
    // At the base itself, without a trailing slash.
    let base = c.url("").trim_end_matches('/').to_owned();
    let reply = c.post_json(&base, &bundle).send().await;
    let answer = reply.json().unwrap_or_default();
    let entries = answer["entry"].as_array().cloned().unwrap_or_default();
    let statuses: Vec<String> = entries
        .iter()
        .map(|e| {
            e["response"]["status"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    report.check(
        SUITE,
        "a transaction answers a transaction-response, entry for entry",
        reply.status == 200
            && answer["type"] == "transaction-response"
            && statuses.len() == 3
            && statuses[0].starts_with("201")
            && statuses[1].starts_with("201")
            && statuses[2].starts_with("200"),
        format!("{}; {statuses:?}", reply.summary()),
    );
    let patient_id = location_id(&entries, 0);
    let observation = c
        .get(&format!("Observation/{}", location_id(&entries, 1)))
        .send()
        .await
        .json()
        .unwrap_or_default();
    report.check(
        SUITE,
        "urn:uuid references and conditional references are rewritten to the resources",
        observation["subject"]["reference"] == format!("Patient/{patient_id}")
            && observation["performer"][0]["reference"] == format!("Practitioner/{doctor_id}")
            && location_id(&entries, 2) == doctor_id,
        format!(
            "subject {}, performer {}",
            observation["subject"], observation["performer"]
        ),
    );

    // The last entry fails: nothing of the first two may remain.
    let value = random_id();
    let failing = json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": "urn:uuid:9b8e7c6d-5a4b-4c3d-8e2f-1a0b9c8d7e6f",
             "resource": identified(system, &value),
             "request": {"method": "POST", "url": "Patient"}},
            {"resource": identified(system, &value),
             "request": {"method": "PUT", "url": format!("Patient/{}", random_id())}},
            {"resource": {"resourceType": "Observation", "status": "not-a-status",
                          "code": {"text": "x"}},
             "request": {"method": "POST", "url": "Observation"}}
        ]
    });
    let refused = c.post_json("", &failing).send().await;
    let left = count_matching(c, &format!("Patient?identifier={system}|{value}")).await;
    report.check(
        SUITE,
        "a transaction whose last entry fails answers its error and leaves nothing",
        refused.status.is_client_error() && refused.is_outcome() && left == Some(0),
        format!("{}; {left:?} left", refused.summary()),
    );
}

async fn batch(c: &Client, report: &mut Report) {
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"resource": patient("Batched"), "request": {"method": "POST", "url": "Patient"}},
            {"request": {"method": "GET", "url": format!("Patient/{}", random_id())}},
            {"request": {"method": "GET", "url": "Patient?family=Batched&_count=1"}},
            {"resource": {"resourceType": "Patient", "birthDate": "not a date"},
             "request": {"method": "POST", "url": "Patient"}}
        ]
    });
    // With the trailing slash, as some clients post it.
    let reply = c.post_json("/", &bundle).send().await;
    let answer = reply.json().unwrap_or_default();
    let entries = answer["entry"].as_array().cloned().unwrap_or_default();
    let status = |n: usize| {
        entries
            .get(n)
            .and_then(|e| e["response"]["status"].as_str())
            .unwrap_or_default()
            .to_owned()
    };
    report.check(
        SUITE,
        "a batch answers each entry on its own (201, 404, a searchset, 400)",
        reply.status == 200
            && answer["type"] == "batch-response"
            && status(0).starts_with("201")
            && status(1).starts_with("404")
            && status(2).starts_with("200")
            && entries
                .get(2)
                .is_some_and(|e| e["resource"]["type"] == "searchset")
            && status(3).starts_with("400")
            && entries
                .get(3)
                .is_some_and(|e| e["response"]["outcome"]["resourceType"] == "OperationOutcome"),
        format!(
            "{}; {:?}",
            reply.summary(),
            (0..4).map(status).collect::<Vec<_>>()
        ),
    );
    let not_a_batch = c
        .post_json("", &json!({"resourceType": "Bundle", "type": "collection"}))
        .send()
        .await;
    report.check(
        SUITE,
        "a Bundle that is neither batch nor transaction is refused at the base",
        not_a_batch.status == 400 && not_a_batch.is_outcome(),
        not_a_batch.summary(),
    );
}

/// The id in a transaction-response entry's `response.location` (`…/Type/id/_history/n`).
fn location_id(entries: &[Value], n: usize) -> String {
    let location = entries
        .get(n)
        .and_then(|e| e["response"]["location"].as_str())
        .unwrap_or_default();
    let parts: Vec<&str> = location.split('/').collect();
    match parts.iter().position(|p| *p == "_history") {
        Some(at) if at >= 1 => parts[at - 1].to_owned(),
        _ => String::new(),
    }
}
