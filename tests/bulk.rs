//! Bulk Data export end to end, as its expected users run it: SMART backend-services clients
//! (`client_credentials` with a `private_key_jwt` assertion, `system/*.rs`) kick off, poll
//! (202 with `X-Progress` and `Retry-After`), read the manifest and download the NDJSON, on
//! both profiles. What each file holds is compared with what the client may read: the
//! custodian (the EHR of record) gets every resource asked for; a research client that is not a
//! custodian gets only what a patient granted it on chain (signed by eth-account) and what is
//! in no one's record. Jobs and files are the asking client's alone, a cancelled job and an
//! expired one are gone, and what the server does not implement is refused at kick-off.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use common::actors::{Api, Started, actors, now, seed, start};
use common::wallet::{bind, draft, grant, wallet};
use common::{Profile, command};
use conformance_tests::keys::AsymmetricClient;
use serde_json::{Value, json};

/// Seconds a finished export's files are kept in these tests.
const RETENTION_SECS: u64 = 8;

/// The resources of an export: type → the ids in its files.
type Exported = BTreeMap<String, BTreeSet<String>>;

/// Registers a backend-services client that signs its token requests with its own key.
fn register(dir: &Path, profile: &Profile, client: &AsymmetricClient, custodian: bool) {
    let jwks = dir.join(format!("{}.jwks", client.client_id));
    std::fs::write(&jwks, client.jwks.to_string()).unwrap();
    let mut cli = command(&profile.env());
    cli.args(["clients", "add", "--id", &client.client_id, "--scope"])
        .arg("system/*.rs")
        .arg("--jwks-file")
        .arg(&jwks)
        .arg("--data-dir")
        .arg(dir);
    if custodian {
        cli.arg("--custodian");
    }
    let output = cli.output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A `system/*.rs` token for `client`, asked for with a signed assertion.
async fn backend_token(base: &str, client: &AsymmetricClient) -> String {
    let token_url = format!("{}/auth/token", base.trim_end_matches("/fhir"));
    let assertion = client.assertion(&token_url);
    let reply: Value = reqwest::Client::new()
        .post(&token_url)
        .form(&[
            ("grant_type", "client_credentials"),
            ("scope", "system/*.rs"),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", assertion.as_str()),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    reply["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("a token: {reply}"))
        .to_owned()
}

fn get(api: &Api, url: &str) -> reqwest::RequestBuilder {
    reqwest::Client::new().get(url).bearer_auth(&api.token)
}

/// Kicks off `path` and returns the status URL.
async fn kick_off(api: &Api, path: &str) -> String {
    let reply = get(api, &format!("{}/{path}", api.base))
        .header("accept", "application/fhir+json")
        .header("prefer", "respond-async")
        .send()
        .await
        .unwrap();
    let status = reply.status().as_u16();
    let location = reply
        .headers()
        .get("content-location")
        .map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(status, 202, "{path}: {}", reply.text().await.unwrap());
    let location = location.expect("Content-Location");
    assert!(location.starts_with(&api.base), "{location}");
    location
}

/// Polls a status URL until the manifest comes.
async fn manifest(api: &Api, status_url: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let reply = get(api, status_url).send().await.unwrap();
        match reply.status().as_u16() {
            202 => {
                let retry = reply.headers().get("retry-after").expect("Retry-After");
                let retry: u64 = retry.to_str().unwrap().parse().unwrap();
                assert!((1..=60).contains(&retry));
                assert!(reply.headers().contains_key("x-progress"));
            }
            200 => {
                assert!(reply.headers().contains_key("expires"));
                return reply.json().await.unwrap();
            }
            other => panic!("status {other}: {}", reply.text().await.unwrap()),
        }
        assert!(Instant::now() < deadline, "the export finishes");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Downloads every file of a manifest: what they hold, by type, checked against the counts.
async fn download(api: &Api, manifest: &Value) -> Exported {
    assert_eq!(manifest["requiresAccessToken"], true);
    assert!(manifest["transactionTime"].is_string());
    assert!(manifest["request"].as_str().unwrap().contains("$export"));
    let mut exported = Exported::new();
    for output in manifest["output"].as_array().unwrap() {
        let url = output["url"].as_str().unwrap();
        let reply = get(api, url).send().await.unwrap();
        assert_eq!(reply.status().as_u16(), 200, "{url}");
        assert_eq!(
            reply.headers()["content-type"].to_str().unwrap(),
            "application/fhir+ndjson"
        );
        let text = reply.text().await.unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).expect("each line a resource"))
            .collect();
        assert_eq!(lines.len() as u64, output["count"].as_u64().unwrap());
        for resource in lines {
            assert_eq!(
                resource["resourceType"], output["type"],
                "one type per file"
            );
            exported
                .entry(resource["resourceType"].as_str().unwrap().to_owned())
                .or_default()
                .insert(resource["id"].as_str().unwrap().to_owned());
        }
    }
    exported
}

async fn export(api: &Api, path: &str) -> (Exported, Value) {
    let status_url = kick_off(api, path).await;
    let manifest = manifest(api, &status_url).await;
    (download(api, &manifest).await, manifest)
}

fn expect(entries: &[(&str, &[&str])]) -> Exported {
    entries
        .iter()
        .map(|(t, ids)| (t.to_string(), ids.iter().map(|s| s.to_string()).collect()))
        .collect()
}

fn id_of(reference: &str) -> &str {
    reference.split_once('/').unwrap().1
}

async fn bulk_export_holds_exactly_what_the_client_may_read(started: &Started, dir: &Path) {
    let a = actors(&started.server, &started.issuer, &started.outsider_secret).await;
    let (observation, condition) = seed(&a.custodian).await;
    let (o1, c1) = (id_of(&observation), id_of(&condition));
    let o2 = a
        .custodian
        .post(
            "Observation",
            &json!({"resourceType": "Observation", "status": "final", "code": {"text": "bp"},
                "subject": {"reference": "Patient/p2"}}),
        )
        .await;
    assert_eq!(o2.status, 201, "{}", o2.body);
    let o2 = o2.body["id"].as_str().unwrap().to_owned();
    let group = a
        .custodian
        .put(
            "Group/g1",
            &json!({"resourceType": "Group", "id": "g1", "type": "person", "actual": true,
                "member": [{"entity": {"reference": "Patient/p1"}},
                    // No longer a member: a Group-level export leaves p2's record out.
                    {"entity": {"reference": "Patient/p2"}, "inactive": true}]}),
        )
        .await;
    assert_eq!(group.status, 201, "{}", group.body);

    let ehr = AsymmetricClient::es384("bulk-ehr");
    let research = AsymmetricClient::rs384("bulk-research");
    register(dir, &started.profile, &ehr, true);
    register(dir, &started.profile, &research, false);
    let base = started.server.base_url.clone();
    let api = |token: String| Api {
        base: base.clone(),
        token,
        extra: Vec::new(),
    };
    let ehr = api(backend_token(&base, &ehr).await);
    let research = api(backend_token(&base, &research).await);

    // Patient p1 grants the research client read of Observations, signed by eth-account.
    let patient_wallet = wallet();
    assert_eq!(bind(&a.patient, "p1", &patient_wallet).await.status, 200);
    let to_research = draft(
        "p1",
        json!({"identifier": {"system": "urn:ietf:params:oauth:client-id", "value": "bulk-research"}}),
        &["Observation"],
        now() + 3600,
    );
    let (granted, _) = grant(&a.patient, &to_research, &patient_wallet).await;
    assert_eq!(granted.status, 201, "{}", granted.body);

    let types = "_type=Patient,Observation,Condition,CodeSystem,Group";
    // The custodian: everything asked for.
    let (all, _) = export(&ehr, &format!("$export?{types}")).await;
    assert_eq!(
        all,
        expect(&[
            ("CodeSystem", &["cs1"]),
            ("Condition", &[c1]),
            ("Group", &["g1"]),
            ("Observation", &[o1, o2.as_str()]),
            ("Patient", &["p1", "p2"]),
        ])
    );
    // The research client: p1's Observation (granted), and what is in no one's record (the
    // Group is in p1's: its member).
    let (granted, granted_manifest) = export(
        &research,
        &format!("$export?{types}&_outputFormat=application%2Ffhir%2Bndjson"),
    )
    .await;
    assert_eq!(
        granted,
        expect(&[("CodeSystem", &["cs1"]), ("Observation", &[o1])]),
        "{granted_manifest}"
    );
    // Without _type: every type it may read, still nothing of p2 and no Condition.
    let (everything, _) = export(&research, "$export").await;
    assert_eq!(everything["Observation"], expect(&[("x", &[o1])])["x"]);
    assert!(!everything.contains_key("Condition") && !everything.contains_key("Patient"));

    // Patient level: only what is in some patient's record.
    let (patients, _) = export(&ehr, "Patient/$export?_type=Patient,Observation,CodeSystem").await;
    assert_eq!(
        patients,
        expect(&[
            ("Observation", &[o1, o2.as_str()]),
            ("Patient", &["p1", "p2"])
        ])
    );
    // Group level: only the active members' records.
    let (members, _) = export(&ehr, "Group/g1/$export?_type=Patient,Observation,Condition").await;
    assert_eq!(
        members,
        expect(&[
            ("Condition", &[c1]),
            ("Observation", &[o1]),
            ("Patient", &["p1"])
        ])
    );
    // _since: only what changed after it.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let since =
        intellihealth::fhir::instant::format_instant(intellihealth::fhir::instant::now_millis());
    tokio::time::sleep(Duration::from_millis(20)).await;
    let later = a
        .custodian
        .post(
            "Observation",
            &json!({"resourceType": "Observation", "status": "final", "code": {"text": "later"},
                "subject": {"reference": "Patient/p2"}}),
        )
        .await;
    let later = later.body["id"].as_str().unwrap().to_owned();
    let (changed, _) = export(
        &ehr,
        &format!(
            "$export?_type=Observation&_since={}",
            since.replace(':', "%3A")
        ),
    )
    .await;
    assert_eq!(changed, expect(&[("Observation", &[later.as_str()])]));

    // A job and its files are its client's alone.
    let status_url = kick_off(&ehr, "$export?_type=Patient").await;
    let done = manifest(&ehr, &status_url).await;
    let file_url = done["output"][0]["url"].as_str().unwrap().to_owned();
    for url in [&status_url, &file_url] {
        let status = get(&research, url).send().await.unwrap().status();
        assert_eq!(status, 404, "another client: {url}");
        let anonymous = reqwest::Client::new().get(url).send().await.unwrap();
        assert_eq!(anonymous.status(), 401, "no token: {url}");
    }
    // Cancelled: gone, files too.
    let cancelled = reqwest::Client::new()
        .delete(&status_url)
        .bearer_auth(&ehr.token)
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status(), 202);
    assert_eq!(get(&ehr, &status_url).send().await.unwrap().status(), 404);
    assert_eq!(get(&ehr, &file_url).send().await.unwrap().status(), 404);

    // The CapabilityStatement says what is served.
    let metadata: Value = reqwest::get(format!("{}/metadata", ehr.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        metadata["instantiates"][0],
        "http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"
    );
    let names = |operations: &Value| -> Vec<String> {
        operations
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| o["name"].as_str().map(str::to_owned))
            .collect()
    };
    let rest = &metadata["rest"][0];
    assert!(names(&rest["operation"]).contains(&"export".to_owned()));
    for resource in rest["resource"].as_array().unwrap() {
        let served = names(&resource["operation"]).contains(&"export".to_owned());
        let expected = matches!(resource["type"].as_str(), Some("Patient" | "Group"));
        assert_eq!(served, expected, "{}", resource["type"]);
    }

    // Refused at kick-off, plainly.
    for (path, prefer, status) in [
        ("$export", false, 400),
        ("$export?_elements=id", true, 400),
        ("$export?_typeFilter=Observation%3Fcode%3Dx", true, 400),
        ("$export?_outputFormat=text%2Fcsv", true, 400),
        ("$export?_type=NotAType", true, 400),
        ("Observation/$export", true, 400),
        ("Group/nope/$export", true, 404),
    ] {
        let mut request = get(&ehr, &format!("{}/{path}", ehr.base));
        if prefer {
            request = request.header("prefer", "respond-async");
        }
        let reply = request.send().await.unwrap();
        assert_eq!(reply.status().as_u16(), status, "{path}");
        let body: Value = reply.json().await.unwrap();
        assert_eq!(body["resourceType"], "OperationOutcome", "{path}");
    }
    // Expired after the retention time: status and files gone.
    let status_url = kick_off(&ehr, "$export?_type=CodeSystem").await;
    let done = manifest(&ehr, &status_url).await;
    let file_url = done["output"][0]["url"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_secs(RETENTION_SECS + 2)).await;
    assert_eq!(get(&ehr, &status_url).send().await.unwrap().status(), 404);
    assert_eq!(get(&ehr, &file_url).send().await.unwrap().status(), 404);
    // Nothing readable was left on disk by any job.
    let exports_dir = dir.join("exports");
    let leftover = std::fs::read_dir(&exports_dir)
        .map(|entries| entries.count())
        .unwrap_or(0);
    assert_eq!(leftover, 0, "every job's files are removed");
}

fn retention() -> Vec<(String, String)> {
    vec![(
        "INTELLIHEALTH_EXPORT_RETENTION_SECS".into(),
        RETENTION_SECS.to_string(),
    )]
}

#[tokio::test(flavor = "multi_thread")]
async fn bulk_export_on_the_embedded_profile() {
    let dir = tempfile::tempdir().unwrap();
    let started = start(dir.path(), &Profile::Embedded, &retention()).await;
    bulk_export_holds_exactly_what_the_client_may_read(&started, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bulk_export_on_the_services_profile() {
    let dir = tempfile::tempdir().unwrap();
    let started = start(dir.path(), &Profile::services("bulk"), &retention()).await;
    bulk_export_holds_exactly_what_the_client_may_read(&started, dir.path()).await;
}
