//! Create, read, vread, update (including update-as-create), delete, and what FHIR says must
//! come with them: ids, `meta`, `ETag`, `Last-Modified`, `Location`, `If-Match`,
//! `If-None-Match`, `If-Modified-Since`, `Prefer`, lenient handling, decimal precision.

use serde_json::{Value, json};

use super::{SuiteContext, patient, random_id, same_resource};
use crate::report::Report;

const SUITE: &str = "crud";

pub async fn run(ctx: &SuiteContext, report: &mut Report) {
    let c = &ctx.client;
    let mut check =
        |name: &str, passed: bool, detail: String| report.check(SUITE, name, passed, detail);

    // Create.
    let body = patient("Create");
    let created = c.post_json("Patient", &body).send().await;
    let created_json = created.json().unwrap_or(Value::Null);
    let id = created_json["id"].as_str().unwrap_or_default().to_owned();
    check(
        "create returns 201 with a new id",
        created.status == 201 && !id.is_empty(),
        created.summary(),
    );
    check(
        "create sets meta.versionId 1 and meta.lastUpdated",
        created_json["meta"]["versionId"] == "1" && created_json["meta"]["lastUpdated"].is_string(),
        format!("meta = {}", created_json["meta"]),
    );
    let location = created.header("location").unwrap_or_default();
    check(
        "create returns Location .../Patient/{id}/_history/1",
        location.ends_with(&format!("Patient/{id}/_history/1")),
        format!("Location: {location}"),
    );
    check(
        "create returns ETag W/\"1\"",
        created.header("etag").as_deref() == Some("W/\"1\""),
        format!("ETag: {:?}", created.header("etag")),
    );
    check(
        "create returns Last-Modified",
        created
            .header("last-modified")
            .is_some_and(|d| httpdate::parse_http_date(&d).is_ok()),
        format!("Last-Modified: {:?}", created.header("last-modified")),
    );
    check(
        "created content is what was sent",
        same_resource(&body, &created_json),
        String::new(),
    );

    let mut with_id = patient("IgnoredId");
    with_id["id"] = json!("client-chosen-id");
    let ignored = c.post_json("Patient", &with_id).send().await;
    let assigned = ignored
        .json()
        .map(|v| v["id"].clone())
        .unwrap_or(Value::Null);
    check(
        "create ignores an id in the body",
        ignored.status == 201 && assigned.is_string() && assigned != "client-chosen-id",
        ignored.summary(),
    );

    // Read.
    let read = c.get(&format!("Patient/{id}")).send().await;
    check(
        "read returns the resource with ETag",
        read.status == 200
            && read.json() == Some(created_json.clone())
            && read.header("etag").as_deref() == Some("W/\"1\""),
        read.summary(),
    );
    let content_type = read.header("content-type").unwrap_or_default();
    check(
        "read answers application/fhir+json",
        content_type.starts_with("application/fhir+json"),
        content_type,
    );

    // Update with and without If-Match.
    let mut changed = created_json.clone();
    changed["active"] = json!(false);
    let updated = c
        .put_json(&format!("Patient/{id}"), &changed)
        .header("if-match", "W/\"1\"")
        .send()
        .await;
    let updated_json = updated.json().unwrap_or(Value::Null);
    check(
        "update with matching If-Match gives version 2",
        updated.status == 200
            && updated_json["meta"]["versionId"] == "2"
            && updated.header("etag").as_deref() == Some("W/\"2\""),
        updated.summary(),
    );
    check(
        "update keeps lastUpdated moving forward",
        updated_json["meta"]["lastUpdated"].as_str() > created_json["meta"]["lastUpdated"].as_str(),
        format!(
            "{} then {}",
            created_json["meta"]["lastUpdated"], updated_json["meta"]["lastUpdated"]
        ),
    );
    let stale = c
        .put_json(&format!("Patient/{id}"), &changed)
        .header("if-match", "W/\"1\"")
        .send()
        .await;
    check(
        "update with stale If-Match is 412 OperationOutcome",
        stale.status == 412 && stale.is_outcome(),
        stale.summary(),
    );
    let plain = c.put_json(&format!("Patient/{id}"), &changed).send().await;
    check(
        "update without If-Match gives version 3",
        plain.status == 200 && plain.json().is_some_and(|v| v["meta"]["versionId"] == "3"),
        plain.summary(),
    );

    // Vread.
    let v1 = c.get(&format!("Patient/{id}/_history/1")).send().await;
    check(
        "vread of version 1 returns the original",
        v1.status == 200 && v1.json() == Some(created_json.clone()),
        v1.summary(),
    );
    let v2 = c.get(&format!("Patient/{id}/_history/2")).send().await;
    check(
        "vread of version 2 returns the update",
        v2.status == 200
            && v2
                .json()
                .is_some_and(|v| v["active"] == false && v["meta"]["versionId"] == "2"),
        v2.summary(),
    );
    let v99 = c.get(&format!("Patient/{id}/_history/99")).send().await;
    check(
        "vread of a missing version is 404 OperationOutcome",
        v99.status == 404 && v99.is_outcome(),
        v99.summary(),
    );

    // Conditional read.
    let etag = plain.header("etag").unwrap_or_default();
    let not_modified = c
        .get(&format!("Patient/{id}"))
        .header("if-none-match", &etag)
        .send()
        .await;
    check(
        "If-None-Match with the current ETag is 304",
        not_modified.status == 304 && not_modified.body.is_empty(),
        not_modified.summary(),
    );
    let modified = c
        .get(&format!("Patient/{id}"))
        .header("if-none-match", "W/\"1\"")
        .send()
        .await;
    check(
        "If-None-Match with an old ETag is 200",
        modified.status == 200,
        modified.summary(),
    );
    let future = c
        .get(&format!("Patient/{id}"))
        .header("if-modified-since", "Fri, 01 Jan 2100 00:00:00 GMT")
        .send()
        .await;
    check(
        "If-Modified-Since in the future is 304",
        future.status == 304,
        future.summary(),
    );
    let past = c
        .get(&format!("Patient/{id}"))
        .header("if-modified-since", "Sat, 01 Jan 2000 00:00:00 GMT")
        .send()
        .await;
    check(
        "If-Modified-Since in the past is 200",
        past.status == 200,
        past.summary(),
    );

    // Update as create.
    let new_id = random_id();
    let mut fresh = patient("UpdateAsCreate");
    fresh["id"] = json!(new_id);
    let put_created = c
        .put_json(&format!("Patient/{new_id}"), &fresh)
        .send()
        .await;
    check(
        "update-as-create with a client id is 201 version 1",
        put_created.status == 201
            && put_created
                .json()
                .is_some_and(|v| v["id"] == new_id.as_str() && v["meta"]["versionId"] == "1")
            && put_created
                .header("location")
                .is_some_and(|l| l.ends_with(&format!("Patient/{new_id}/_history/1"))),
        put_created.summary(),
    );

    // Delete.
    let deleted = c.delete(&format!("Patient/{id}")).send().await;
    check(
        "delete is 200 or 204",
        deleted.status == 200 || deleted.status == 204,
        deleted.summary(),
    );
    let gone = c.get(&format!("Patient/{id}")).send().await;
    check(
        "read after delete is 410 OperationOutcome",
        gone.status == 410 && gone.is_outcome(),
        gone.summary(),
    );
    let old = c.get(&format!("Patient/{id}/_history/1")).send().await;
    check(
        "vread of a version before the delete still works",
        old.status == 200,
        old.summary(),
    );
    let again = c.delete(&format!("Patient/{id}")).send().await;
    check(
        "deleting again is idempotent (200 or 204)",
        again.status == 200 || again.status == 204,
        again.summary(),
    );
    let recreated = c.put_json(&format!("Patient/{id}"), &changed).send().await;
    check(
        "update after delete brings the resource back (200 or 201)",
        (recreated.status == 200 || recreated.status == 201)
            && recreated
                .json()
                .is_some_and(|v| v["meta"]["versionId"] == "5"),
        recreated.summary(),
    );

    // Prefer: return.
    let minimal = c
        .post_json("Patient", &patient("Minimal"))
        .header("prefer", "return=minimal")
        .send()
        .await;
    check(
        "Prefer: return=minimal gives 201 with an empty body and a Location",
        minimal.status == 201 && minimal.body.is_empty() && minimal.header("location").is_some(),
        minimal.summary(),
    );
    let outcome = c
        .post_json("Patient", &patient("Outcome"))
        .header("prefer", "return=OperationOutcome")
        .send()
        .await;
    check(
        "Prefer: return=OperationOutcome gives an OperationOutcome",
        outcome.status == 201 && outcome.is_outcome(),
        outcome.summary(),
    );
    let representation = c
        .post_json("Patient", &patient("Repr"))
        .header("prefer", "return=representation")
        .send()
        .await;
    check(
        "Prefer: return=representation gives the resource",
        representation.status == 201
            && representation
                .json()
                .is_some_and(|v| v["resourceType"] == "Patient"),
        representation.summary(),
    );

    // What the client sent is kept: decimal precision, primitive extensions, unknown elements.
    let observation = br#"{"resourceType":"Observation","status":"final","code":{"text":"weight"},"valueQuantity":{"value":70.50,"unit":"kg"},"component":[{"code":{"text":"x"},"valueQuantity":{"value":1.000}}]}"#;
    let obs = c
        .request(reqwest::Method::POST, "Observation")
        .header("content-type", "application/fhir+json")
        .body(observation.to_vec())
        .send()
        .await;
    let obs_id = obs
        .json()
        .map(|v| v["id"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_default();
    let obs_read = c.get(&format!("Observation/{obs_id}")).send().await;
    let text = String::from_utf8_lossy(&obs_read.body).to_string();
    check(
        "decimals keep their precision (70.50, 1.000)",
        obs.status == 201 && text.contains("70.50") && text.contains("1.000"),
        obs_read.summary(),
    );
    let mut extended = patient("Extension");
    extended["_birthDate"] = json!({"extension": [{"url": "http://example.org/fhir/StructureDefinition/precision", "valueCode": "day"}]});
    let ext = c.post_json("Patient", &extended).send().await;
    check(
        "primitive extensions (_birthDate) are kept",
        ext.status == 201 && ext.json().is_some_and(|v| same_resource(&extended, &v)),
        ext.summary(),
    );
    let mut unknown = patient("Unknown");
    unknown["favouriteColour"] = json!("blue");
    let strict = c.post_json("Patient", &unknown).send().await;
    check(
        "an unknown element is 400 OperationOutcome",
        strict.status == 400 && strict.is_outcome(),
        strict.summary(),
    );
    let lenient = c
        .post_json("Patient", &unknown)
        .header("prefer", "handling=lenient")
        .send()
        .await;
    check(
        "Prefer: handling=lenient accepts and keeps an unknown element",
        lenient.status == 201
            && lenient
                .json()
                .is_some_and(|v| v["favouriteColour"] == "blue"),
        lenient.summary(),
    );
}
