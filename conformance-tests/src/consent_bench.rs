//! The consent benchmark: how long a patient's grant (and revocation) takes to be enforced,
//! and what checking grants costs a read.
//!
//! With the custodian's token (`bearer`) it writes a patient and Observations, binds a wallet
//! and then, `rounds` times, grants the reader client read of Observation and revokes it,
//! timing each from the moment the signed request is sent: until the server answers, and until
//! the reader's next read flips (200 after a grant, 403 after a revocation). Signatures are
//! made by eth-account (`python`), outside the timings. Last, with a grant in place, the reader
//! reads the Observations at each concurrency for `seconds`: run against a server with
//! `--consent on` and one with `--consent off`, the two read rows are the cost of the check.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::bench::{Phase, measure_for};
use crate::client::Client;

pub struct ConsentBenchOptions {
    pub base_url: String,
    /// A custodian's token: writes the patient's data and relays the patient's signatures.
    pub bearer: String,
    /// The reader's token: a client of the server that is not a custodian.
    pub reader_bearer: String,
    pub reader_client_id: String,
    /// A Python interpreter with eth-account.
    pub python: String,
    /// Grant/revoke cycles (the last grant stays for the reads); 0: reads only.
    pub rounds: usize,
    pub concurrency: Vec<usize>,
    pub seconds: f64,
    /// Reads whose AuditEvent is followed to its anchor (a server with the audit trail on);
    /// 0: none.
    pub anchor_probes: usize,
}

/// Latencies of one kind of consent change, in ms.
pub struct Change {
    pub what: &'static str,
    pub answered_ms: Vec<f64>,
    pub enforced_ms: Vec<f64>,
}

pub struct ConsentReport {
    pub changes: Vec<Change>,
    pub reads: Vec<Phase>,
    pub anchoring: Option<Anchoring>,
}

/// How the reads' AuditEvents reached the chain.
pub struct Anchoring {
    /// From a read's answer until its AuditEvent's `$verify` says anchored, in ms.
    pub delays_ms: Vec<f64>,
    /// Events in the anchor of the last read of the busiest read phase, and how many events
    /// per second that anchor's interval stands for.
    pub busiest_anchor_count: u64,
}

const SIGN: &str = r#"
import json, sys
from eth_account import Account
from eth_account.messages import encode_typed_data
mode, key = sys.argv[1], sys.argv[2]
if mode == "address":
    print(Account.from_key(key).address)
else:
    typed = json.loads(sys.stdin.read())
    print("0x" + bytes(Account.sign_message(encode_typed_data(full_message=typed), key).signature).hex())
"#;

fn python(interpreter: &str, mode: &str, key: &str, input: &str) -> Result<String, String> {
    use std::io::Write;
    let mut child = std::process::Command::new(interpreter)
        .args(["-c", SIGN, mode, key])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("{interpreter}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(input.as_bytes());
    }
    let output = child.wait_with_output().map_err(|e| e.to_string())?;
    if !output.status.success() {
        return Err("eth-account failed".into());
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

fn typed_data(reply: &crate::client::Reply) -> Result<String, String> {
    if !reply.status.is_success() {
        return Err(format!("prepare: {}", reply.summary()));
    }
    reply
        .json()
        .and_then(|v| {
            v["parameter"].as_array().and_then(|ps| {
                ps.iter()
                    .find(|p| p["name"] == "typedData")
                    .and_then(|p| p["valueString"].as_str().map(str::to_owned))
            })
        })
        .ok_or_else(|| "no typedData".into())
}

fn with_signature(mut consent: Value, signature: &str) -> Value {
    consent["extension"] = json!([{
        "url": "https://intellihealth.dev/fhir/StructureDefinition/eip712-signature",
        "valueString": signature,
    }]);
    consent
}

/// Reads `path` as the reader until it answers `status`; the time that took from `since`.
async fn until(reader: &Client, path: &str, status: u16, since: Instant) -> Result<f64, String> {
    let deadline = since + Duration::from_secs(30);
    loop {
        if reader.get(path).send().await.status.as_u16() == status {
            return Ok(since.elapsed().as_secs_f64() * 1000.0);
        }
        if Instant::now() > deadline {
            return Err(format!("{path} did not answer {status} within 30 s"));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

pub async fn run(options: &ConsentBenchOptions) -> Result<ConsentReport, String> {
    let custodian = Client::new(&options.base_url, Some(options.bearer.clone()));
    let reader = Client::new(&options.base_url, Some(options.reader_bearer.clone()));
    let patient = format!("consent-bench-{:08x}", rand::random::<u32>());
    let put = custodian
        .put_json(
            &format!("Patient/{patient}"),
            &json!({"resourceType": "Patient", "id": patient}),
        )
        .send()
        .await;
    if !put.status.is_success() {
        return Err(format!("the patient: {}", put.summary()));
    }
    let mut observations = Vec::new();
    for i in 0..200 {
        let created = custodian
            .post_json(
                "Observation",
                &json!({"resourceType": "Observation", "status": "final",
                    "code": {"text": format!("bench {i}")},
                    "subject": {"reference": format!("Patient/{patient}")},
                    "valueQuantity": {"value": i, "unit": "1"}}),
            )
            .send()
            .await;
        let id = created
            .json()
            .and_then(|v| v["id"].as_str().map(str::to_owned))
            .ok_or_else(|| format!("an Observation: {}", created.summary()))?;
        observations.push(format!("Observation/{id}"));
    }
    let key = format!(
        "0x{:032x}{:032x}",
        rand::random::<u128>() | 1,
        rand::random::<u128>()
    );
    let address = python(&options.python, "address", &key, "")?;
    let binding = format!("Patient/{patient}/$wallet-binding");
    let typed = typed_data(
        &custodian
            .get(&format!("{binding}?address={address}"))
            .send()
            .await,
    )?;
    let signature = python(&options.python, "sign", &key, &typed)?;
    let bound = custodian
        .post_json(
            &binding,
            &json!({"resourceType": "Parameters", "parameter": [
                {"name": "address", "valueString": address},
                {"name": "signature", "valueString": signature}]}),
        )
        .send()
        .await;
    if !bound.status.is_success() {
        return Err(format!("binding: {}", bound.summary()));
    }
    // Far enough ahead never to expire during a run: the bench times changes, not expiry.
    let end = "2100-01-01T00:00:00Z";
    let draft = json!({
        "resourceType": "Consent", "status": "proposed",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": format!("Patient/{patient}")},
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
        "provision": {"type": "permit", "period": {"end": end},
            "actor": [{"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]},
                "reference": {"identifier": {"system": "urn:ietf:params:oauth:client-id", "value": options.reader_client_id}}}],
            "action": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentaction", "code": "access"}]}],
            "class": [{"system": "http://hl7.org/fhir/resource-types", "code": "Observation"}]},
    });
    let probe = observations[0].clone();
    let mut grant = Change {
        what: "grant",
        answered_ms: Vec::new(),
        enforced_ms: Vec::new(),
    };
    let mut revoke = Change {
        what: "revocation",
        answered_ms: Vec::new(),
        enforced_ms: Vec::new(),
    };
    // With no rounds (a server with consent off, where nothing changes) only reads run.
    for round in 0..options.rounds {
        let typed = typed_data(&custodian.post_json("Consent/$prepare", &draft).send().await)?;
        let body = with_signature(
            draft.clone(),
            &python(&options.python, "sign", &key, &typed)?,
        );
        let started = Instant::now();
        let granted = custodian.post_json("Consent", &body).send().await;
        grant
            .answered_ms
            .push(started.elapsed().as_secs_f64() * 1000.0);
        if granted.status.as_u16() != 201 {
            return Err(format!("grant: {}", granted.summary()));
        }
        grant
            .enforced_ms
            .push(until(&reader, &probe, 200, started).await?);
        let last_grant: Value = granted.json().unwrap_or_default();
        if round + 1 == options.rounds {
            break;
        }
        let mut revocation = last_grant.clone();
        revocation["status"] = json!("inactive");
        if let Some(o) = revocation.as_object_mut() {
            o.remove("meta");
        }
        let typed = typed_data(
            &custodian
                .post_json("Consent/$prepare", &revocation)
                .send()
                .await,
        )?;
        let body = with_signature(revocation, &python(&options.python, "sign", &key, &typed)?);
        let id = last_grant["id"].as_str().unwrap_or_default().to_owned();
        let started = Instant::now();
        let revoked = custodian
            .put_json(&format!("Consent/{id}"), &body)
            .send()
            .await;
        revoke
            .answered_ms
            .push(started.elapsed().as_secs_f64() * 1000.0);
        if !revoked.status.is_success() {
            return Err(format!("revocation: {}", revoked.summary()));
        }
        revoke
            .enforced_ms
            .push(until(&reader, &probe, 403, started).await?);
    }
    let observations = Arc::new(observations);
    let mut reads = Vec::new();
    let mut busiest_anchor_count = 0;
    for &concurrency in &options.concurrency {
        reads.push(read_phase(&reader, &observations, concurrency, options.seconds).await);
        if options.anchor_probes > 0 {
            // The phase's last events: their anchor holds what one interval took at this load.
            let (_, count) = anchor_of_next_read(&custodian, &reader, &probe).await?;
            busiest_anchor_count = busiest_anchor_count.max(count);
        }
    }
    let mut delays_ms = Vec::new();
    for _ in 0..options.anchor_probes {
        delays_ms.push(anchor_of_next_read(&custodian, &reader, &probe).await?.0);
    }
    Ok(ConsentReport {
        changes: vec![grant, revoke],
        reads,
        anchoring: (options.anchor_probes > 0).then_some(Anchoring {
            delays_ms,
            busiest_anchor_count,
        }),
    })
}

/// Reads `path` as the reader, finds that read's AuditEvent (as the custodian) and asks its
/// `$verify` until it is anchored: the time from the read's answer, and the anchor's count.
async fn anchor_of_next_read(
    custodian: &Client,
    reader: &Client,
    path: &str,
) -> Result<(f64, u64), String> {
    let read = reader.get(path).send().await;
    let answered = Instant::now();
    if read.status.as_u16() != 200 {
        return Err(format!("the probe read: {}", read.summary()));
    }
    let found = custodian
        .get(&format!("AuditEvent?entity={path}&_sort=-date&_count=1"))
        .send()
        .await;
    let id = found
        .json()
        .and_then(|b| b["entry"][0]["resource"]["id"].as_str().map(str::to_owned))
        .ok_or_else(|| format!("the probe's AuditEvent: {}", found.summary()))?;
    let deadline = answered + Duration::from_secs(60);
    loop {
        let verified = custodian
            .get(&format!("AuditEvent/{id}/$verify"))
            .send()
            .await;
        let parameters = verified.json().unwrap_or_default();
        let value = |name: &str| {
            parameters["parameter"]
                .as_array()
                .and_then(|ps| ps.iter().find(|p| p["name"] == name))
                .and_then(|p| p["valueString"].as_str().map(str::to_owned))
        };
        if value("status").as_deref() == Some("anchored") {
            let count = value("count").and_then(|c| c.parse().ok()).unwrap_or(0);
            return Ok((answered.elapsed().as_secs_f64() * 1000.0, count));
        }
        if !verified.status.is_success() || Instant::now() > deadline {
            return Err(format!("AuditEvent/{id}/$verify: {}", verified.summary()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn read_phase(
    reader: &Client,
    paths: &Arc<Vec<String>>,
    concurrency: usize,
    seconds: f64,
) -> Phase {
    let paths = paths.clone();
    measure_for(
        "read (a granted client)",
        concurrency,
        Duration::from_secs(2),
        Duration::from_secs_f64(seconds),
        reader,
        move |client, n| {
            let path = paths[n % paths.len()].clone();
            async move { client.get(&path).send().await.status.as_u16() == 200 }
        },
    )
    .await
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
}

fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(0.0, f64::max)
}

/// The report as Markdown.
pub fn table(report: &ConsentReport) -> String {
    let mut out = String::new();
    // A run with no rounds (consent off) changed nothing: it has only reads to show.
    if report.changes.iter().any(|c| !c.answered_ms.is_empty()) {
        out.push_str(
            "| change | rounds | answered p50 ms | answered max ms | enforced p50 ms | enforced max ms |\n|---|---:|---:|---:|---:|---:|\n",
        );
    }
    for c in report.changes.iter().filter(|c| !c.answered_ms.is_empty()) {
        out.push_str(&format!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} |\n",
            c.what,
            c.answered_ms.len(),
            median(&c.answered_ms),
            max(&c.answered_ms),
            median(&c.enforced_ms),
            max(&c.enforced_ms)
        ));
    }
    if !out.is_empty() {
        out.push('\n');
    }
    out.push_str(&crate::bench::table(&report.reads));
    if let Some(anchoring) = &report.anchoring {
        out.push_str(&format!(
            "\nFrom a read's answer to its AuditEvent anchored ({} reads): p50 {:.0} ms, max \
             {:.0} ms. The largest anchor after a read phase held {} events (one transaction).\n",
            anchoring.delays_ms.len(),
            median(&anchoring.delays_ms),
            max(&anchoring.delays_ms),
            anchoring.busiest_anchor_count,
        ));
    }
    out
}
