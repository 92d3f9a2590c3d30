//! Version-aware and partial writes through the router in process (`oneshot`, as in
//! `http_oneshot.rs`), on the embedded profile: FHIRPath Patch beside JSON Patch, by id, by
//! criteria and in a transaction; `If-None-Match` on update, patch and create.
//!
//! The resources are Practitioners: in no patient's record, so the test client (no custodian,
//! no grant) may write them.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

#[path = "common/oneshot.rs"]
mod oneshot;

struct Api {
    router: axum::Router,
    bearer: String,
}

/// An answer: status, ETag, body (JSON, or null).
struct Reply {
    status: StatusCode,
    etag: Option<String>,
    body: Value,
}

impl Api {
    async fn new(dir: &std::path::Path) -> Api {
        let (router, bearer) = oneshot::router(dir).await;
        Api { router, bearer }
    }

    async fn send(
        &self,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        body: Option<String>,
    ) -> Reply {
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", &self.bearer);
        if body.is_some() && !headers.iter().any(|(name, _)| *name == "content-type") {
            request = request.header("content-type", "application/fhir+json");
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(body.map_or_else(Body::empty, Body::from))
            .unwrap();
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let etag = response
            .headers()
            .get("etag")
            .map(|v| v.to_str().unwrap().to_owned());
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply { status, etag, body }
    }

    async fn create(&self, resource: Value) -> String {
        let made = self
            .send(
                "POST",
                "/fhir/Practitioner",
                &[],
                Some(resource.to_string()),
            )
            .await;
        assert_eq!(made.status, StatusCode::CREATED, "{}", made.body);
        made.body["id"].as_str().unwrap().to_owned()
    }

    async fn read(&self, path: &str) -> Value {
        let read = self.send("GET", path, &[], None).await;
        assert_eq!(read.status, StatusCode::OK, "{}", read.body);
        read.body
    }

    /// `POST /fhir` of a Bundle of `kind` (transaction, batch) with these entries.
    async fn post_bundle(&self, kind: &str, entries: Vec<Value>) -> Reply {
        let bundle = json!({"resourceType": "Bundle", "type": kind, "entry": entries});
        self.send("POST", "/fhir", &[], Some(bundle.to_string()))
            .await
    }

    async fn fhirpath_patch(
        &self,
        uri: &str,
        headers: &[(&str, &str)],
        operations: Value,
    ) -> Reply {
        self.send(
            "PATCH",
            uri,
            headers,
            Some(parameters(operations).to_string()),
        )
        .await
    }
}

/// A FHIRPath Patch Parameters of `operations`, each `[type, path, {other parts}]`.
fn parameters(operations: Value) -> Value {
    let operations = operations.as_array().unwrap().iter().map(|op| {
        let mut parts = vec![
            json!({"name": "type", "valueCode": op[0]}),
            json!({"name": "path", "valueString": op[1]}),
        ];
        for (name, value) in op[2].as_object().into_iter().flatten() {
            let mut part = value.clone();
            part["name"] = json!(name);
            parts.push(part);
        }
        json!({"name": "operation", "part": parts})
    });
    json!({"resourceType": "Parameters", "parameter": operations.collect::<Vec<_>>()})
}

fn practitioner(system: &str, value: &str) -> Value {
    json!({
        "resourceType": "Practitioner",
        "identifier": [{"system": system, "value": value}],
        "active": true,
        "name": [{"family": "Doe", "given": ["Jo"]}]
    })
}

#[tokio::test]
async fn a_fhirpath_patch_makes_the_next_version_or_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let api = Api::new(dir.path()).await;
    let id = api.create(practitioner("urn:s", "1")).await;
    let path = format!("/fhir/Practitioner/{id}");
    let patched = api
        .fhirpath_patch(
            &path,
            &[],
            json!([
                ["replace", "Practitioner.active", {"value": {"valueBoolean": false}}],
                ["add", "Practitioner", {"name": {"valueString": "gender"}, "value": {"valueCode": "female"}}],
                ["insert", "Practitioner.name[0].given", {"value": {"valueString": "Al"}, "index": {"valueInteger": 0}}],
                ["add", "Practitioner", {"name": {"valueString": "qualification"},
                    "value": {"part": [{"name": "code", "valueCodeableConcept": {"text": "MD"}}]}}],
                ["delete", "Practitioner.identifier.where(system = 'urn:s')", {}]
            ]),
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.body);
    let body = &patched.body;
    assert_eq!(body["active"], false);
    assert_eq!(body["gender"], "female");
    assert_eq!(body["name"][0]["given"], json!(["Al", "Jo"]));
    assert_eq!(body["qualification"], json!([{"code": {"text": "MD"}}]));
    assert!(body.get("identifier").is_none(), "{body}");
    assert_eq!(body["meta"]["versionId"], "2");
    assert_eq!(patched.etag.as_deref(), Some("W/\"2\""));

    // A failing operation, a result that is not a valid resource, a malformed patch: 422, and
    // the resource stays at version 2.
    for (operations, words) in [
        (
            json!([["replace", "Practitioner.active", {"value": {"valueBoolean": true}}],
                ["replace", "Practitioner.birthDate", {"value": {"valueDate": "2000-01-01"}}]]),
            "matches nothing",
        ),
        (
            json!([["replace", "Practitioner.gender", {"value": {"valueCode": "nonsense"}}]]),
            "not valid",
        ),
        (
            json!([["frobnicate", "Practitioner.gender", {}]]),
            "not one of add",
        ),
        (
            json!([["replace", "Practitioner.name.given", {"value": {"valueString": "x"}}]]),
            "matches 2 elements",
        ),
    ] {
        let refused = api.fhirpath_patch(&path, &[], operations).await;
        assert_eq!(
            refused.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{}",
            refused.body
        );
        assert_eq!(refused.body["resourceType"], "OperationOutcome");
        let diagnostics = refused.body["issue"][0]["diagnostics"].as_str().unwrap();
        assert!(diagnostics.contains(words), "{diagnostics}");
    }
    let not_parameters = api
        .send(
            "PATCH",
            &path,
            &[],
            Some(json!({"resourceType": "Practitioner"}).to_string()),
        )
        .await;
    assert_eq!(not_parameters.status, StatusCode::UNPROCESSABLE_ENTITY);
    let now = api.read(&path).await;
    assert_eq!(now["meta"]["versionId"], "2");
    assert_eq!(now["active"], false);

    // If-Match: a stale version is 412; the current one patches.
    let operation = json!([["replace", "Practitioner.active", {"value": {"valueBoolean": true}}]]);
    let stale = api
        .fhirpath_patch(&path, &[("if-match", "W/\"1\"")], operation.clone())
        .await;
    assert_eq!(
        stale.status,
        StatusCode::PRECONDITION_FAILED,
        "{}",
        stale.body
    );
    let current = api
        .fhirpath_patch(&path, &[("if-match", "W/\"2\"")], operation)
        .await;
    assert_eq!(current.status, StatusCode::OK, "{}", current.body);
    assert_eq!(current.body["meta"]["versionId"], "3");

    // JSON Patch by its own media type; anything but the two kinds is 415.
    let json_patch = api
        .send(
            "PATCH",
            &path,
            &[("content-type", "application/json-patch+json")],
            Some(json!([{"op": "replace", "path": "/active", "value": false}]).to_string()),
        )
        .await;
    assert_eq!(json_patch.status, StatusCode::OK, "{}", json_patch.body);
    let merge = api
        .send(
            "PATCH",
            &path,
            &[("content-type", "application/merge-patch+json")],
            Some(json!({"active": true}).to_string()),
        )
        .await;
    assert_eq!(merge.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

#[tokio::test]
async fn if_none_match_guards_updates_patches_and_creates() {
    let dir = tempfile::tempdir().unwrap();
    let api = Api::new(dir.path()).await;
    let path = "/fhir/Practitioner/inm-1";
    let mut body = practitioner("urn:s", "inm");
    body["id"] = json!("inm-1");
    let put = |headers: &'static [(&'static str, &'static str)], body: &Value| {
        api.send("PUT", path, headers, Some(body.to_string()))
    };

    // `*`: only where nothing exists — a create, then a 412 that writes nothing.
    let created = put(&[("if-none-match", "*")], &body).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    body["active"] = json!(false);
    let exists = put(&[("if-none-match", "*")], &body).await;
    assert_eq!(
        exists.status,
        StatusCode::PRECONDITION_FAILED,
        "{}",
        exists.body
    );
    assert_eq!(exists.body["resourceType"], "OperationOutcome");
    let now = api.read(path).await;
    assert_eq!(
        (now["meta"]["versionId"].clone(), now["active"].clone()),
        (json!("1"), json!(true))
    );

    // A version tag: anything but that version.
    let same = put(&[("if-none-match", "W/\"1\"")], &body).await;
    assert_eq!(same.status, StatusCode::PRECONDITION_FAILED);
    let other = put(&[("if-none-match", "W/\"7\"")], &body).await;
    assert_eq!(other.status, StatusCode::OK, "{}", other.body);
    assert_eq!(other.body["meta"]["versionId"], "2");
    let operation = json!([["replace", "Practitioner.active", {"value": {"valueBoolean": true}}]]);
    let patch_same = api
        .fhirpath_patch(path, &[("if-none-match", "\"2\"")], operation.clone())
        .await;
    assert_eq!(patch_same.status, StatusCode::PRECONDITION_FAILED);
    let patch_star = api
        .fhirpath_patch(path, &[("if-none-match", "*")], operation.clone())
        .await;
    assert_eq!(patch_star.status, StatusCode::PRECONDITION_FAILED);
    let patch_other = api
        .fhirpath_patch(path, &[("if-none-match", "W/\"1\"")], operation)
        .await;
    assert_eq!(patch_other.status, StatusCode::OK, "{}", patch_other.body);
    assert_eq!(patch_other.body["meta"]["versionId"], "3");

    // Malformed, or with If-Match: refused, nothing written.
    for headers in [
        &[("if-none-match", "W/\"x\"")][..],
        &[("if-none-match", "*"), ("if-match", "W/\"3\"")][..],
    ] {
        let refused = api.send("PUT", path, headers, Some(body.to_string())).await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{headers:?}");
    }
    assert_eq!(api.read(path).await["meta"]["versionId"], "3");

    // A delete does not implement it; after a delete, `*` holds again (update-as-create).
    let delete = api
        .send("DELETE", path, &[("if-none-match", "*")], None)
        .await;
    assert_eq!(delete.status, StatusCode::BAD_REQUEST);
    let delete = api.send("DELETE", path, &[], None).await;
    assert_eq!(delete.status, StatusCode::NO_CONTENT);
    let again = put(&[("if-none-match", "*")], &body).await;
    assert_eq!(again.status, StatusCode::CREATED, "{}", again.body);
    assert_eq!(again.body["meta"]["versionId"], "5");

    // A create always makes a new resource: `*` holds, a version tag is refused.
    let new = practitioner("urn:s", "inm-2").to_string();
    let star = api
        .send(
            "POST",
            "/fhir/Practitioner",
            &[("if-none-match", "*")],
            Some(new.clone()),
        )
        .await;
    assert_eq!(star.status, StatusCode::CREATED, "{}", star.body);
    let tag = api
        .send(
            "POST",
            "/fhir/Practitioner",
            &[("if-none-match", "W/\"1\"")],
            Some(new),
        )
        .await;
    assert_eq!(tag.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_conditional_patch_patches_the_one_match() {
    let dir = tempfile::tempdir().unwrap();
    let api = Api::new(dir.path()).await;
    let operation = json!([["replace", "Practitioner.active", {"value": {"valueBoolean": false}}]]);
    let uri = "/fhir/Practitioner?identifier=urn:s%7Ccp";
    let none = api.fhirpath_patch(uri, &[], operation.clone()).await;
    assert_eq!(none.status, StatusCode::NOT_FOUND, "{}", none.body);
    let id = api.create(practitioner("urn:s", "cp")).await;
    let one = api.fhirpath_patch(uri, &[], operation.clone()).await;
    assert_eq!(one.status, StatusCode::OK, "{}", one.body);
    assert_eq!(
        (one.body["id"].as_str(), one.body["active"].clone()),
        (Some(id.as_str()), json!(false))
    );
    assert_eq!(one.body["meta"]["versionId"], "2");
    let json_patch = api
        .send(
            "PATCH",
            uri,
            &[
                ("content-type", "application/json-patch+json"),
                ("if-match", "W/\"2\""),
            ],
            Some(json!([{"op": "add", "path": "/gender", "value": "male"}]).to_string()),
        )
        .await;
    assert_eq!(json_patch.status, StatusCode::OK, "{}", json_patch.body);
    assert_eq!(json_patch.body["gender"], "male");
    api.create(practitioner("urn:s", "cp")).await;
    let several = api.fhirpath_patch(uri, &[], operation.clone()).await;
    assert_eq!(
        several.status,
        StatusCode::PRECONDITION_FAILED,
        "{}",
        several.body
    );
    let without_criteria = api
        .fhirpath_patch("/fhir/Practitioner", &[], operation)
        .await;
    assert_eq!(without_criteria.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        api.read(&format!("/fhir/Practitioner/{id}")).await["meta"]["versionId"],
        "3"
    );
}

#[tokio::test]
async fn patches_in_a_transaction_and_a_batch() {
    use base64::Engine;
    let dir = tempfile::tempdir().unwrap();
    let api = Api::new(dir.path()).await;
    let first = api.create(practitioner("urn:s", "tx-1")).await;
    let second = api.create(practitioner("urn:s", "tx-2")).await;
    let json_patch = base64::engine::general_purpose::STANDARD
        .encode(json!([{"op": "replace", "path": "/active", "value": false}]).to_string());
    let binary = json!({"resourceType": "Binary", "contentType": "application/json-patch+json", "data": json_patch});
    let fhirpath = parameters(
        json!([["add", "Practitioner", {"name": {"valueString": "gender"}, "value": {"valueCode": "other"}}]]),
    );
    let patch_entry = |url: String, resource: &Value| json!({"resource": resource, "request": {"method": "PATCH", "url": url}});
    let done = api
        .post_bundle(
            "transaction",
            vec![
                patch_entry(format!("Practitioner/{first}"), &binary),
                patch_entry("Practitioner?identifier=urn:s|tx-2".into(), &fhirpath),
            ],
        )
        .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    assert_eq!(done.body["entry"][0]["response"]["status"], "200 OK");
    assert_eq!(
        api.read(&format!("/fhir/Practitioner/{first}")).await["active"],
        false
    );
    assert_eq!(
        api.read(&format!("/fhir/Practitioner/{second}")).await["gender"],
        "other"
    );

    // A failing patch fails the whole transaction: the other entry's patch is not written.
    let failing = parameters(
        json!([["replace", "Practitioner.birthDate", {"value": {"valueDate": "2000-01-01"}}]]),
    );
    let refused = api
        .post_bundle(
            "transaction",
            vec![
                patch_entry(format!("Practitioner/{first}"), &fhirpath),
                patch_entry(format!("Practitioner/{second}"), &failing),
            ],
        )
        .await;
    assert_eq!(
        refused.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        refused.body
    );
    let unchanged = api.read(&format!("/fhir/Practitioner/{first}")).await;
    assert!(unchanged.get("gender").is_none());
    assert_eq!(unchanged["meta"]["versionId"], "2");

    // ifNoneMatch on a transaction's PUT, as the header alone.
    let mut existing = practitioner("urn:s", "tx-1");
    existing["id"] = json!(first);
    let put = json!({"resource": existing,
        "request": {"method": "PUT", "url": format!("Practitioner/{first}"), "ifNoneMatch": "*"}});
    let exists = api.post_bundle("transaction", vec![put]).await;
    assert_eq!(
        exists.status,
        StatusCode::PRECONDITION_FAILED,
        "{}",
        exists.body
    );

    // In a batch each entry is its own request: the Binary's JSON Patch is sent as one.
    let batch = api
        .post_bundle(
            "batch",
            vec![
                patch_entry(format!("Practitioner/{second}"), &binary),
                patch_entry(format!("Practitioner/{second}"), &failing),
            ],
        )
        .await;
    assert_eq!(batch.status, StatusCode::OK, "{}", batch.body);
    assert_eq!(batch.body["entry"][0]["response"]["status"], "200 OK");
    assert!(
        batch.body["entry"][1]["response"]["status"]
            .as_str()
            .unwrap()
            .starts_with("422")
    );
    assert_eq!(
        api.read(&format!("/fhir/Practitioner/{second}")).await["active"],
        false
    );
}
