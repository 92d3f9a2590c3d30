//! The audit trail end to end, through HTTP, on both profiles: reads, writes, searches, a
//! consent denial and an unauthenticated request each leave an AuditEvent naming who, what and
//! the patient; the patient finds who read their record with their own token; nobody without
//! a grant sees it; AuditEvents cannot be written, changed or deleted by anyone.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::Profile;
use common::actors::{Api, Reply, actors, seed, start};
use serde_json::{Value, json};

/// The AuditEvents of a search's Bundle.
fn events(reply: &Reply) -> Vec<Value> {
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body["entry"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .map(|e| e["resource"].clone())
                .filter(|r| r["resourceType"] == "AuditEvent")
                .collect()
        })
        .unwrap_or_default()
}

fn subtype(event: &Value) -> &str {
    event["subtype"][0]["code"].as_str().unwrap_or_default()
}

fn names(event: &Value, reference: &str) -> bool {
    event["entity"]
        .as_array()
        .is_some_and(|es| es.iter().any(|e| e["what"]["reference"] == reference))
}

fn requestor(event: &Value) -> &Value {
    &event["agent"][0]["who"]
}

/// The patient's AuditEvents, newest first, as the patient sees them.
async fn patients_events(api: &Api, patient: &str) -> Vec<Value> {
    events(
        &api.get(&format!(
            "AuditEvent?patient=Patient/{patient}&_sort=-date&_count=1000"
        ))
        .await,
    )
}

/// Anchors every 300 ms, so a test waits a moment, not 5 s.
fn fast_anchoring() -> Vec<(String, String)> {
    vec![(
        "INTELLIHEALTH_ANCHOR_INTERVAL_MS".to_owned(),
        "300".to_owned(),
    )]
}

async fn the_audit_trail_holds(profile: Profile) {
    let dir = tempfile::tempdir().unwrap();
    let started = start(dir.path(), &profile, &fast_anchoring()).await;
    let a = actors(&started.server, &started.issuer, &started.outsider_secret).await;
    let (observation, _condition) = seed(&a.custodian).await;

    // Three interactions with p1's Observation: the custodian reads it, a practitioner with
    // no grant is refused, and a caller with no token is turned away.
    assert_eq!(a.custodian.get(&observation).await.status, 200);
    assert_eq!(a.doctor.get(&observation).await.status, 403);
    let anonymous = reqwest::Client::new()
        .get(format!("{}/{observation}", a.custodian.base))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
    let searched = a.custodian.get("Observation?subject=Patient/p1").await;
    assert_eq!(searched.status, 200, "{}", searched.body);

    // The patient sees each of them (their own token, their own compartment).
    let mine = patients_events(&a.patient, "p1").await;
    let custodian_read = mine
        .iter()
        .find(|e| subtype(e) == "read" && names(e, &observation) && e["outcome"] == "0")
        .unwrap_or_else(|| panic!("no AuditEvent of the custodian's read in {mine:#?}"));
    assert_eq!(
        requestor(custodian_read)["identifier"]["value"],
        started.server.credentials().client_id.as_str(),
        "{custodian_read:#}"
    );
    assert!(
        custodian_read["agent"][0]["network"]["address"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.")),
        "{custodian_read:#}"
    );
    let denied = mine
        .iter()
        .find(|e| subtype(e) == "read" && e["outcome"] == "4")
        .unwrap_or_else(|| panic!("no AuditEvent of the denied read in {mine:#?}"));
    assert_eq!(requestor(denied)["reference"], "Practitioner/doc1");
    assert!(names(denied, "Patient/p1"), "{denied:#}");
    assert!(
        mine.iter().any(|e| subtype(e) == "search-type"
            && e["entity"].as_array().is_some_and(|es| es
                .iter()
                .any(|x| x["role"]["code"] == "24" && x["query"].is_string()))),
        "no AuditEvent of the search in {mine:#?}"
    );
    assert!(
        mine.iter()
            .any(|e| subtype(e) == "create" && names(e, &observation)),
        "no AuditEvent of the Observation's create"
    );
    // Newest first.
    let recorded: Vec<&str> = mine.iter().filter_map(|e| e["recorded"].as_str()).collect();
    assert!(recorded.windows(2).all(|w| w[0] >= w[1]), "{recorded:?}");

    // The unauthenticated request is on the record too (in no one's compartment: it never
    // reached a resource), as the custodian can see.
    let all = events(&a.custodian.get("AuditEvent?_count=500").await);
    assert!(
        all.iter().any(|e| e["outcome"] == "4"
            && e["agent"][0]["name"] == "unauthenticated"
            && e["outcomeDesc"]
                .as_str()
                .is_some_and(|d| d.starts_with("HTTP 401"))),
        "no AuditEvent of the 401"
    );

    // Nobody else sees who read p1's record: another patient's token is confined to their
    // own compartment, a client without a grant finds nothing.
    let outsider_sees = events(&a.outsider.get("AuditEvent?patient=Patient/p1").await);
    assert!(outsider_sees.is_empty(), "{outsider_sees:#?}");
    let doctor_sees = events(&a.doctor.get("AuditEvent?patient=Patient/p1").await);
    assert!(doctor_sees.is_empty(), "{doctor_sees:#?}");

    // An AuditEvent reads back as stored, and cannot be written by anyone.
    let id = custodian_read["id"].as_str().unwrap();
    let read = a.patient.get(&format!("AuditEvent/{id}")).await;
    assert_eq!(read.status, 200, "{}", read.body);
    let vread = a.patient.get(&format!("AuditEvent/{id}/_history/1")).await;
    assert_eq!(vread.body, read.body);
    let mut changed = read.body.clone();
    changed["outcome"] = json!("8");
    for reply in [
        a.custodian.put(&format!("AuditEvent/{id}"), &changed).await,
        a.custodian.post("AuditEvent", &changed).await,
        a.custodian
            .send(reqwest::Method::DELETE, &format!("AuditEvent/{id}"), None)
            .await,
    ] {
        assert_eq!(reply.status, 405, "{}", reply.body);
        assert_eq!(reply.body["resourceType"], "OperationOutcome");
    }
    let again = a.patient.get(&format!("AuditEvent/{id}")).await;
    assert_eq!(again.body, read.body, "an AuditEvent changed");

    // The patient's chain is complete, as a verifier written from the formats (not this
    // server's code) finds; with one event removed, or one changed, it is not.
    let mine = patients_events(&a.patient, "p1").await;
    assert!(mine.len() >= 6, "{}", mine.len());
    let (complete, report) = verify_chain("p1", &mine);
    assert!(complete, "{report}");
    assert!(
        report.contains(&format!("{} links, complete", mine.len())),
        "{report}"
    );
    let mut gap = mine.clone();
    gap.remove(mine.len() / 2);
    let (complete, report) = verify_chain("p1", &gap);
    assert!(!complete && report.contains("missing"), "{report}");
    let mut changed = mine.clone();
    let middle = mine.len() / 2;
    changed[middle]["outcomeDesc"] = json!(format!(
        "{} ",
        changed[middle]["outcomeDesc"].as_str().unwrap()
    ));
    let (complete, report) = verify_chain("p1", &changed);
    assert!(!complete && report.contains("does not follow"), "{report}");

    // Each kind of event is anchored on chain, and its proof checks out there.
    let rpc = match &profile {
        Profile::Services { .. } => Some(common::services::eth_rpc()),
        Profile::Embedded => None,
    };
    let search_event = mine
        .iter()
        .find(|e| subtype(e) == "search-type")
        .expect("a search");
    let create_event = mine
        .iter()
        .find(|e| subtype(e) == "create")
        .expect("a create");
    for event in [custodian_read, denied, search_event, create_event] {
        proof_holds(&a.patient, event["id"].as_str().unwrap(), rpc.as_deref()).await;
    }
}

/// Runs the verifier written from the formats (`conformance-tests/verify/audit_verify.py`)
/// with `args`, `input` on its stdin: (it passed, what it printed).
fn run_verifier(args: &[&str], input: &Value) -> (bool, String) {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/conformance-tests/verify/audit_verify.py"
    );
    let output = common::python(&[&[script], args].concat(), &input.to_string());
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), printed)
}

fn verify_chain(patient: &str, events: &[Value]) -> (bool, String) {
    run_verifier(&["chain", patient], &json!(events))
}

fn parameter<'a>(parameters: &'a Value, name: &str) -> Option<&'a str> {
    parameters["parameter"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == name)?["valueString"]
        .as_str()
}

/// `$verify` of the AuditEvent, once it is anchored (within 15 s).
async fn anchored(api: &Api, id: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let reply = api.get(&format!("AuditEvent/{id}/$verify")).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        if parameter(&reply.body, "status") == Some("anchored") {
            return reply.body;
        }
        assert_eq!(parameter(&reply.body, "status"), Some("not anchored yet"));
        assert!(
            std::time::Instant::now() < deadline,
            "AuditEvent/{id} never anchored"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The proof of AuditEvent `id` checks out, and fails for the event changed by one character:
/// on a node, with the verifier written from the formats (the chain's own receipt); on the
/// embedded ledger, folded here.
async fn proof_holds(api: &Api, id: &str, rpc: Option<&str>) {
    let parameters = anchored(api, id).await;
    let event = api.get(&format!("AuditEvent/{id}/_history/1")).await.body;
    let mut tampered = event.clone();
    let desc = tampered["outcomeDesc"].as_str().unwrap().to_owned();
    tampered["outcomeDesc"] = json!(desc.replacen("HTTP", "HTTp", 1));
    match rpc {
        Some(url) => {
            let (ok, report) = run_verifier(
                &["proof", url],
                &json!({"event": event, "parameters": parameters}),
            );
            assert!(
                ok && report.starts_with("anchored"),
                "AuditEvent/{id}: {report}"
            );
            let (ok, report) = run_verifier(
                &["proof", url],
                &json!({"event": tampered, "parameters": parameters}),
            );
            assert!(!ok, "a tampered AuditEvent verified: {report}");
            // The server's own CLI agrees, asking only the chain.
            let dir = tempfile::tempdir().unwrap();
            let cli = |event: &Value| {
                let (event_file, proof_file) =
                    (dir.path().join("event.json"), dir.path().join("proof.json"));
                std::fs::write(&event_file, event.to_string()).unwrap();
                std::fs::write(&proof_file, parameters.to_string()).unwrap();
                common::command(&[])
                    .args(["audit", "verify", "--rpc", url, "--event"])
                    .arg(&event_file)
                    .arg("--proof")
                    .arg(&proof_file)
                    .output()
                    .unwrap()
            };
            let verified = cli(&event);
            assert!(
                verified.status.success(),
                "{}",
                String::from_utf8_lossy(&verified.stderr)
            );
            let refused = cli(&tampered);
            assert!(
                !refused.status.success(),
                "the CLI verified a tampered event"
            );
            assert!(
                String::from_utf8_lossy(&refused.stderr).contains("not the one anchored"),
                "{}",
                String::from_utf8_lossy(&refused.stderr)
            );
        }
        None => {
            use alloy::primitives::B256;
            use intellihealth::ledger::merkle::{fold, leaf};
            let hex = |name: &str| {
                parameter(&parameters, name)
                    .unwrap()
                    .parse::<B256>()
                    .unwrap()
            };
            let proof: Vec<B256> = parameters["parameter"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|p| p["name"] == "proof")
                .map(|p| p["valueString"].as_str().unwrap().parse().unwrap())
                .collect();
            let parse =
                |v: &Value| intellihealth::fhir::json::parse(v.to_string().as_bytes()).unwrap();
            assert_eq!(leaf(&parse(&event)), hex("leaf"));
            assert_eq!(fold(hex("leaf"), &proof), hex("root"));
            assert_ne!(fold(leaf(&parse(&tampered)), &proof), hex("root"));
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_interaction_is_audited_on_the_embedded_profile() {
    the_audit_trail_holds(Profile::Embedded).await;
}

/// `kill -9` in the middle of a load of reads: every read that was answered has its
/// AuditEvent after the restart, and the patient's chain is still complete and goes on.
#[tokio::test(flavor = "multi_thread")]
async fn no_answered_read_loses_its_audit_event_to_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let started = start(dir.path(), &Profile::Embedded, &[]).await;
    let a = actors(&started.server, &started.issuer, &started.outsider_secret).await;
    let (observation, _) = seed(&a.custodian).await;
    let answered = Arc::new(AtomicUsize::new(0));
    let readers: Vec<_> = (0..8)
        .map(|_| {
            let (custodian, observation, answered) =
                (a.custodian.clone(), observation.clone(), answered.clone());
            tokio::spawn(async move {
                for _ in 0..40 {
                    let reply = reqwest::Client::new()
                        .get(format!("{}/{observation}", custodian.base))
                        .bearer_auth(&custodian.token)
                        .timeout(Duration::from_secs(5))
                        .send()
                        .await;
                    match reply {
                        Ok(r) if r.status().as_u16() == 200 => {
                            answered.fetch_add(1, Ordering::SeqCst);
                        }
                        _ => return,
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let killed = started.kill();
    for reader in readers {
        let _ = reader.await;
    }
    let answered = answered.load(Ordering::SeqCst);
    assert!(answered > 0, "no read was answered before the kill");
    eprintln!("{answered} reads answered before kill -9");

    let restarted = killed.restart(dir.path());
    let b = actors(
        &restarted.server,
        &restarted.issuer,
        &restarted.outsider_secret,
    )
    .await;
    assert_eq!(b.custodian.get(&observation).await.status, 200);
    let mine = patients_events(&b.patient, "p1").await;
    let reads = mine
        .iter()
        .filter(|e| subtype(e) == "read" && names(e, &observation) && e["outcome"] == "0")
        .count();
    // Every answered read, and the one after the restart; reads cut off by the kill may be
    // there too (audited, then not answered), never fewer.
    assert!(
        reads > answered,
        "{reads} AuditEvents of {answered} answered reads (+1)"
    );
    let (complete, report) = verify_chain("p1", &mine);
    assert!(complete, "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_interaction_is_audited_on_the_services_profile() {
    the_audit_trail_holds(Profile::services("audit")).await;
}
