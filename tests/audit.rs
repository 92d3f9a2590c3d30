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
use common::wallet::{bind, sign_with_eth_account, typed_data, wallet};
use intellihealth::vault::VaultError;
use intellihealth::vault::blob::BlobStore;
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

    // Token requests are on the record with the client that made them: the outsider's
    // issued token, and a request with a wrong secret refused.
    let token_url = format!("{}/auth/token", a.custodian.base.trim_end_matches("/fhir"));
    let refused = reqwest::Client::new()
        .post(&token_url)
        .basic_auth("outsider", Some("not-the-secret"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("scope", "system/*.rs"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 401);
    let tokens = events(&a.custodian.get("AuditEvent?subtype=token&_count=500").await);
    let by_outsider = |outcome: &str| {
        tokens.iter().any(|e| {
            e["outcome"] == outcome
                && e["type"]["code"] == "110114"
                && requestor(e)["identifier"]["value"] == "outsider"
        })
    };
    assert!(
        by_outsider("0"),
        "no AuditEvent of the outsider's token in {tokens:#?}"
    );
    assert!(
        by_outsider("4"),
        "no AuditEvent of the refused token request in {tokens:#?}"
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

/// Reads of `observation` by 8 readers until the server stops answering; how many were
/// answered 200.
async fn read_until_killed(reader: &Api, observation: &str, kill_after: Duration) -> (usize, ()) {
    let answered = Arc::new(AtomicUsize::new(0));
    let readers: Vec<_> = (0..8)
        .map(|_| {
            let (reader, observation, answered) =
                (reader.clone(), observation.to_owned(), answered.clone());
            tokio::spawn(async move {
                loop {
                    let reply = reqwest::Client::new()
                        .get(format!("{}/{observation}", reader.base))
                        .bearer_auth(&reader.token)
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
    tokio::time::sleep(kill_after).await;
    (answered.load(Ordering::SeqCst), drop(readers))
}

/// Every AuditEvent the server holds, through the search's `next` links.
async fn every_event(api: &Api) -> Vec<Value> {
    let mut all = Vec::new();
    let mut path = "AuditEvent?_count=500".to_owned();
    loop {
        let page = api.get(&path).await;
        all.extend(events(&page));
        let next = page.body["link"].as_array().and_then(|links| {
            links
                .iter()
                .find(|l| l["relation"] == "next")
                .and_then(|l| l["url"].as_str())
                .map(str::to_owned)
        });
        match next {
            Some(url) => path = url.trim_start_matches(&format!("{}/", api.base)).to_owned(),
            None => return all,
        }
    }
}

/// `kill -9` three times in the middle of a load of reads, the anchoring running every 50 ms:
/// every read that was answered has its AuditEvent after the restarts, the patient's chain is
/// complete and goes on, and the anchors on chain cover the replica's numbers 0..n one after
/// the other, none twice and none left out.
async fn kill_9_loses_nothing_and_anchors_nothing_twice(profile: Profile) {
    let dir = tempfile::tempdir().unwrap();
    let anchoring = vec![(
        "INTELLIHEALTH_ANCHOR_INTERVAL_MS".to_owned(),
        "50".to_owned(),
    )];
    let mut started = start(dir.path(), &profile, &anchoring).await;
    let a = actors(&started.server, &started.issuer, &started.outsider_secret).await;
    let (observation, _) = seed(&a.custodian).await;
    let mut answered = 0;
    for cycle in 0..3u64 {
        let custodian = Api {
            base: started.server.base_url.clone(),
            token: started.server.token().await,
            extra: Vec::new(),
        };
        let (reads, ()) = read_until_killed(
            &custodian,
            &observation,
            Duration::from_millis(250 + 150 * cycle),
        )
        .await;
        let killed = started.kill();
        answered += reads;
        started = killed.restart(dir.path());
    }
    assert!(answered > 0, "no read was answered before the kills");
    eprintln!("{answered} reads answered before three kill -9");

    let b = actors(&started.server, &started.issuer, &started.outsider_secret).await;
    assert_eq!(b.custodian.get(&observation).await.status, 200);
    let mine = patients_events(&b.patient, "p1").await;
    let reads = mine
        .iter()
        .filter(|e| subtype(e) == "read" && names(e, &observation) && e["outcome"] == "0")
        .count();
    // Every answered read, and the one after the restart; reads cut off by a kill may be
    // there too (audited, then not answered), never fewer.
    assert!(
        reads > answered,
        "{reads} AuditEvents of {answered} answered reads (+1)"
    );
    let (complete, report) = verify_chain("p1", &mine);
    assert!(complete, "{report}");

    // The anchors, walked from number 0: each starts where the one before ended.
    let all = every_event(&b.custodian).await;
    let by_sequence: std::collections::HashMap<u64, String> = all
        .iter()
        .filter_map(|e| {
            let (_, seq, _) = intellihealth::audit::trail::place_of(e)?;
            Some((seq, e["id"].as_str()?.to_owned()))
        })
        .collect();
    let newest = *by_sequence.keys().max().unwrap();
    assert_eq!(
        by_sequence.len() as u64,
        newest + 1,
        "the numbering has a gap"
    );
    anchored(&b.custodian, &by_sequence[&newest]).await;
    let mut next = 0;
    let mut anchors = 0;
    while next <= newest {
        let parameters = anchored(&b.custodian, &by_sequence[&next]).await;
        let number = |name: &str| {
            parameter(&parameters, name)
                .unwrap()
                .parse::<u64>()
                .unwrap()
        };
        assert_eq!(
            number("firstSeq"),
            next,
            "an anchor does not start where the last ended"
        );
        assert!(number("count") > 0);
        next += number("count");
        anchors += 1;
    }
    eprintln!("{} AuditEvents in {anchors} anchors", newest + 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_loses_no_audit_event_and_anchors_none_twice_on_the_embedded_profile() {
    kill_9_loses_nothing_and_anchors_nothing_twice(Profile::Embedded).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_loses_no_audit_event_and_anchors_none_twice_on_the_services_profile() {
    kill_9_loses_nothing_and_anchors_nothing_twice(Profile::services("audit-kill")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_interaction_is_audited_on_the_services_profile() {
    the_audit_trail_holds(Profile::services("audit")).await;
}

/// The blob store a server of `profile` on `dir` uses, opened beside it.
fn blob_store(profile: &Profile, dir: &std::path::Path) -> Arc<dyn BlobStore> {
    match profile {
        Profile::Embedded => {
            Arc::new(intellihealth::vault::local::LocalBlobStore::open(dir).unwrap())
        }
        Profile::Services { ipfs_api, .. } => {
            Arc::new(intellihealth::vault::ipfs::IpfsBlobStore::new(ipfs_api).unwrap())
        }
    }
}

/// Every blob the store holds, with its bytes.
async fn all_blobs(store: &dyn BlobStore) -> std::collections::HashMap<String, Vec<u8>> {
    let mut blobs = std::collections::HashMap::new();
    for cid in store.list().await.unwrap() {
        if let Ok(bytes) = store.get(&cid).await {
            blobs.insert(cid, bytes);
        }
    }
    blobs
}

/// Erasure at the patient's request, end to end: only a custodian with the patient's wallet's
/// signature erases; afterwards every read of the patient's resources is 410 and nothing can be
/// written into their record; their AuditEvents stay, complete, and the erasure's own is
/// anchored; their blobs are unpinned, and the raw bytes taken from the blob store before can
/// no longer be opened with any key the master key unwraps.
async fn erasure_holds(profile: Profile) {
    let dir = tempfile::tempdir().unwrap();
    let started = start(dir.path(), &profile, &fast_anchoring()).await;
    let a = actors(&started.server, &started.issuer, &started.outsider_secret).await;
    let (observation, condition) = seed(&a.custodian).await;
    let key = wallet();
    let bound = bind(&a.patient, "p1", &key).await;
    assert_eq!(bound.status, 200, "{}", bound.body);
    let blobs = blob_store(&profile, dir.path());
    let before = all_blobs(blobs.as_ref()).await;

    // The patient prepares the erasure and their wallet signs it.
    let typed = typed_data(&a.patient.get("Patient/p1/$purge").await);
    let signature = sign_with_eth_account(&typed, &key.key);
    let body = |signature: &str| {
        json!({"resourceType": "Parameters", "parameter": [
            {"name": "signature", "valueString": signature}]})
    };
    // Only a custodian erases, and only with the patient's wallet's signature.
    for (who, expected) in [(&a.patient, 403), (&a.outsider, 403)] {
        let refused = who.post("Patient/p1/$purge", &body(&signature)).await;
        assert_eq!(refused.status, expected, "{}", refused.body);
    }
    let forged = sign_with_eth_account(&typed, &wallet().key);
    let refused = a.custodian.post("Patient/p1/$purge", &body(&forged)).await;
    assert_eq!(refused.status, 422, "{}", refused.body);
    assert_eq!(a.custodian.get(&observation).await.status, 200);

    let purged = a
        .custodian
        .post("Patient/p1/$purge", &body(&signature))
        .await;
    assert_eq!(purged.status, 200, "{}", purged.body);
    assert!(
        parameter(&purged.body, "txHash").is_some(),
        "{}",
        purged.body
    );
    let erased: usize = parameter(&purged.body, "resources")
        .unwrap()
        .parse()
        .unwrap();
    assert!(erased >= 3, "{}", purged.body);

    // Every read of the patient's resources is gone, for the custodian and the patient alike.
    let first_version = format!("{observation}/_history/1");
    for path in ["Patient/p1", &observation, &condition, &first_version] {
        for who in [&a.custodian, &a.patient] {
            let reply = who.get(path).await;
            assert_eq!(reply.status, 410, "{path}: {}", reply.body);
        }
    }
    let found = a.custodian.get("Observation?subject=Patient/p1").await;
    assert_eq!(found.status, 200);
    assert!(
        found.body["entry"].as_array().is_none_or(|e| e.is_empty()),
        "{}",
        found.body
    );
    // Nothing can be written into the erased record; other patients are untouched.
    let written = a
        .custodian
        .post(
            "Observation",
            &json!({"resourceType": "Observation", "status": "final", "code": {"text": "pulse"},
                "subject": {"reference": "Patient/p1"}}),
        )
        .await;
    assert_eq!(written.status, 410, "{}", written.body);
    assert_eq!(a.custodian.get("Patient/p2").await.status, 200);
    // A retried request (its answer lost, say) finds the erasure done, and changes nothing.
    let again = a
        .custodian
        .post("Patient/p1/$purge", &body(&signature))
        .await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert!(
        parameter(&again.body, "erasedAt").is_some(),
        "{}",
        again.body
    );

    // The patient's AuditEvents stay, the chain complete, and the erasure's own anchored.
    let mine = patients_events(&a.patient, "p1").await;
    let erasure = mine
        .iter()
        .find(|e| subtype(e) == "$purge" && e["outcome"] == "0")
        .unwrap_or_else(|| panic!("no AuditEvent of the erasure in {mine:#?}"));
    assert!(names(erasure, "Patient/p1"), "{erasure:#}");
    let (complete, report) = verify_chain("p1", &mine);
    assert!(complete, "{report}");
    let rpc = match &profile {
        Profile::Services { .. } => Some(common::services::eth_rpc()),
        Profile::Embedded => None,
    };
    proof_holds(&a.patient, erasure["id"].as_str().unwrap(), rpc.as_deref()).await;

    // The patient's blobs are unpinned. (A local store deletes them; an IPFS node keeps an
    // unpinned block until its garbage collection, and other nodes may hold copies: what makes
    // every copy unreadable is the destroyed key, below.)
    let after: std::collections::HashSet<String> =
        blobs.list().await.unwrap().into_iter().collect();
    let removed: Vec<(&String, &Vec<u8>)> = before
        .iter()
        .filter(|(cid, _)| !after.contains(*cid))
        .collect();
    assert!(removed.len() >= erased, "{} blobs removed", removed.len());
    if let Profile::Embedded = profile {
        for (cid, _) in &removed {
            assert!(blobs.get(cid).await.is_err(), "{cid} is still served");
        }
    }

    // And the raw bytes taken before are unreadable with the master key: no key it unwraps
    // opens them, as any version of any of the patient's resources.
    drop(a);
    started.kill();
    let (mongodb_uri, ipfs_api) = match &profile {
        Profile::Embedded => (None, None),
        Profile::Services {
            mongodb_uri,
            ipfs_api,
        } => (Some(mongodb_uri.clone()), Some(ipfs_api.clone())),
    };
    let config = intellihealth::config::Config::for_storage(&intellihealth::config::StorageArgs {
        data_dir: Some(dir.path().to_owned()),
        mongodb_uri,
        ipfs_api,
        ..Default::default()
    })
    .unwrap();
    let stores = intellihealth::app::open_stores(&config).await.unwrap();
    let owners = ["Patient/p1", "Patient/p2", "system", "intellihealth/audit"];
    let aads: Vec<String> = ["Patient/p1", observation.as_str(), condition.as_str()]
        .iter()
        .flat_map(|r| (1..=3).map(move |v| format!("{r}/_history/{v}")))
        .collect();
    for (cid, bytes) in &removed {
        let destroyed = stores
            .vault
            .open("Patient/p1", &aads[0], bytes.to_vec(), None)
            .await;
        assert!(
            matches!(destroyed, Err(VaultError::KeyDestroyed(_))),
            "{cid}: {destroyed:?}"
        );
        for owner in owners {
            for aad in &aads {
                let opened = stores.vault.open(owner, aad, bytes.to_vec(), None).await;
                assert!(opened.is_err(), "{cid} opened as {owner} {aad}");
            }
        }
    }
    // The same method opens what was not erased: Patient/p2's version is still readable.
    let mut opened = 0;
    for (cid, bytes) in &before {
        if after.contains(cid)
            && stores
                .vault
                .open("Patient/p2", "Patient/p2/_history/1", bytes.clone(), None)
                .await
                .is_ok()
        {
            opened += 1;
        }
    }
    assert_eq!(opened, 1, "Patient/p2's blob opens with the master key");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_patient_is_erased_at_their_request_on_the_embedded_profile() {
    erasure_holds(Profile::Embedded).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_patient_is_erased_at_their_request_on_the_services_profile() {
    let ipfs = common::services::OwnIpfs::start();
    erasure_holds(Profile::services_with("erasure", &ipfs)).await;
}
