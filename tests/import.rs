//! `intellihealth import` against the real binary, on both profiles: a folder of NDJSON (plain
//! and gzipped, in a subfolder), a transaction Bundle with `urn:uuid:` references and a file
//! with bad lines. The bad lines are named by file and line and make the command fail, after
//! the good resources are imported; the server started on that data then serves them, with
//! the Bundle's references rewritten to the ids the entries got; importing again writes
//! nothing, and a changed line makes one new version.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::Output;

use common::{Profile, Server};
use serde_json::{Value, json};

const PATIENT_UUID: &str = "6a1f3c2e-8d4b-4e5f-9a7c-1b2d3e4f5a6b";
const ENCOUNTER_UUID: &str = "0c9d8e7f-6a5b-4c3d-8e1f-2a3b4c5d6e7f";

fn patient(id: &str, family: &str) -> Value {
    json!({"resourceType": "Patient", "id": id, "name": [{"family": family}]})
}

fn observation(id: Option<&str>, subject: &str, text: &str) -> Value {
    let mut observation = json!({
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": text},
        "subject": {"reference": subject}
    });
    if let Some(id) = id {
        observation["id"] = json!(id);
    }
    observation
}

fn lines(resources: &[Value]) -> String {
    resources.iter().map(|r| format!("{r}\n")).collect()
}

/// The folder to import; 10 good resources and 3 bad lines.
fn write_files(dir: &Path) {
    // Three resources, and a blank line (skipped, not an error).
    let patients = lines(&[patient("imp-p1", "Ada"), patient("imp-p2", "Bo")])
        + "\n"
        + &lines(&[observation(Some("imp-o1"), "Patient/imp-p1", "plain")]);
    std::fs::write(dir.join("patients.ndjson"), patients).unwrap();
    // Two in a gzipped file in a subfolder; one has no id (named by its content).
    std::fs::create_dir_all(dir.join("more")).unwrap();
    let mut gzipped = flate2::write::GzEncoder::new(
        std::fs::File::create(dir.join("more/observations.ndjson.gz")).unwrap(),
        flate2::Compression::default(),
    );
    gzipped
        .write_all(
            lines(&[
                observation(Some("imp-o2"), "Patient/imp-p2", "zipped"),
                observation(None, "Patient/imp-p2", "digest-named"),
            ])
            .as_bytes(),
        )
        .unwrap();
    gzipped.finish().unwrap();
    // Three entries known to each other only by their urn:uuid fullUrls.
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": format!("urn:uuid:{PATIENT_UUID}"),
                "resource": {"resourceType": "Patient", "name": [{"family": "Bundled"}]},
                "request": {"method": "POST", "url": "Patient"}
            },
            {
                "fullUrl": "urn:uuid:5d4c3b2a-1f0e-4d9c-8b7a-6f5e4d3c2b1a",
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"text": "bundled"},
                    "subject": {"reference": format!("urn:uuid:{PATIENT_UUID}")},
                    "encounter": {"reference": format!("urn:uuid:{ENCOUNTER_UUID}")}
                },
                "request": {"method": "POST", "url": "Observation"}
            },
            {
                "fullUrl": format!("urn:uuid:{ENCOUNTER_UUID}"),
                "resource": {
                    "resourceType": "Encounter",
                    "status": "finished",
                    "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                    "subject": {"reference": format!("urn:uuid:{PATIENT_UUID}")}
                },
                "request": {"method": "POST", "url": "Encounter"}
            }
        ]
    });
    std::fs::write(dir.join("bundle.json"), bundle.to_string()).unwrap();
    // Lines 2 (not JSON), 3 (invalid FHIR) and 4 (not a resource) are bad; 1 and 5 are good.
    let bad = format!(
        "{}\n{{not json\n{}\n{}\n{}\n",
        patient("imp-p3", "Cy"),
        json!({"resourceType": "Patient", "id": "imp-bad", "birthDate": "yesterday"}),
        json!({"hello": "world"}),
        patient("imp-p4", "Di"),
    );
    std::fs::write(dir.join("bad.ndjson"), bad).unwrap();
    // Not a file to import: left alone.
    std::fs::write(dir.join("notes.txt"), "not data").unwrap();
}

fn import(data_dir: &Path, profile: &Profile, path: &Path) -> Output {
    common::command(&profile.env())
        .arg("import")
        .arg(path)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .expect("intellihealth import runs")
}

fn said(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

async fn get(client: &conformance_tests::client::Client, path: &str) -> Value {
    let reply = client.get(path).send().await;
    assert_eq!(reply.status, 200, "GET {path}: {}", reply.summary());
    reply.json().expect("a JSON answer")
}

fn resources(bundle: &Value) -> Vec<Value> {
    bundle["entry"]
        .as_array()
        .map(|entries| entries.iter().map(|e| e["resource"].clone()).collect())
        .unwrap_or_default()
}

async fn imports_a_folder_once(profile: Profile) {
    let data = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    write_files(files.path());

    let first = import(data.path(), &profile, files.path());
    let (out, err) = said(&first);
    assert!(
        !first.status.success(),
        "bad lines fail the command: {out}{err}"
    );
    assert!(
        out.contains("10 created, 0 updated, 0 unchanged, 3 failed"),
        "{out}{err}"
    );
    let bad = files.path().join("bad.ndjson");
    for line in 2..=4 {
        assert!(
            err.contains(&format!("{}:{line}: ", bad.display())),
            "line {line} is named: {err}"
        );
    }
    assert!(err.contains("not JSON"), "{err}");
    assert!(
        !err.contains(&format!("{}:1:", bad.display()))
            && !err.contains(&format!("{}:5:", bad.display())),
        "good lines are not reported: {err}"
    );

    let again = import(data.path(), &profile, files.path());
    let (out, err) = said(&again);
    assert!(
        out.contains("0 created, 0 updated, 10 unchanged, 3 failed"),
        "a second import writes nothing: {out}{err}"
    );

    // One changed line: one new version, the rest left alone.
    let changed = files.path().join("changed");
    std::fs::create_dir_all(&changed).unwrap();
    std::fs::write(
        changed.join("patients.ndjson"),
        lines(&[
            patient("imp-p1", "Ada"),
            patient("imp-p2", "Bo-Renamed"),
            observation(Some("imp-o1"), "Patient/imp-p1", "plain"),
        ]),
    )
    .unwrap();
    let update = import(data.path(), &profile, &changed);
    let (out, err) = said(&update);
    assert!(update.status.success(), "{out}{err}");
    assert!(
        out.contains("0 created, 1 updated, 2 unchanged, 0 failed"),
        "{out}{err}"
    );

    let server = Server::start_with(data.path(), &[], &profile);
    if let Profile::Embedded = profile {
        let refused = import(data.path(), &profile, files.path());
        let (out, err) = said(&refused);
        assert!(!refused.status.success(), "{out}{err}");
        assert!(err.contains("is locked"), "it says why: {err}");
    }
    let client = common::client(&server).await;
    let patients = get(&client, "Patient?_summary=count").await;
    assert_eq!(patients["total"], 5, "{patients}");
    let bundled = get(
        &client,
        &format!("Observation?subject=Patient/{PATIENT_UUID}"),
    )
    .await;
    let bundled = resources(&bundled);
    assert_eq!(bundled.len(), 1, "{bundled:?}");
    assert_eq!(
        bundled[0]["subject"]["reference"],
        format!("Patient/{PATIENT_UUID}")
    );
    assert_eq!(
        bundled[0]["encounter"]["reference"],
        format!("Encounter/{ENCOUNTER_UUID}")
    );
    let encounter = get(&client, &format!("Encounter/{ENCOUNTER_UUID}")).await;
    assert_eq!(
        encounter["subject"]["reference"],
        format!("Patient/{PATIENT_UUID}")
    );
    let zipped = resources(&get(&client, "Observation?subject=Patient/imp-p2").await);
    assert_eq!(zipped.len(), 2, "{zipped:?}");
    let named = zipped
        .iter()
        .find(|o| o["code"]["text"] == "digest-named")
        .expect("the observation without an id");
    let id = named["id"].as_str().unwrap();
    assert!(
        id.len() == 64 && id.chars().all(|c| c.is_ascii_hexdigit()),
        "named by its digest: {id}"
    );
    for (id, versions) in [("imp-p1", 1), ("imp-p2", 2)] {
        let history = get(&client, &format!("Patient/{id}/_history")).await;
        assert_eq!(history["total"], versions, "{id}: {history}");
    }
    let renamed = get(&client, "Patient/imp-p2").await;
    assert_eq!(renamed["name"][0]["family"], "Bo-Renamed");
    assert_eq!(
        client.get("Patient/imp-bad").send().await.status,
        404,
        "the invalid resource was not written"
    );
    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imports_a_folder_once_on_the_embedded_profile() {
    imports_a_folder_once(Profile::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imports_a_folder_once_on_the_services_profile() {
    imports_a_folder_once(Profile::services("import")).await;
}
