//! `serve --demo`: a demo patient with a realistic record, her doctor, and their logins, so the
//! portal's first look takes one command.
//!
//! The record is three years of a patient with high blood pressure, type 2 diabetes and a
//! seasonal allergy: quarterly visits with their vital signs (heart rate, a blood pressure
//! panel, weight) improving under treatment, lab values (HbA1c, LDL), the medications, an
//! allergy, immunizations and two documents; a practitioner (`demo-doctor`, Dr. Amira Khan)
//! and her practice. Everything is written by the server itself through the repository, so it
//! is sealed, indexed and searchable like any other data; every resource has a fixed id and is
//! written only if absent (`If-None-Match: *`), so a second start changes nothing.
//!
//! The logins (`demo-patient`, `demo-doctor`) get random passwords at the first demo start,
//! kept in `DATA_DIR/demo-logins.txt` (mode 0600, one `username password fhirUser` per line)
//! and reused afterwards. They are returned for the CLI to print on standard output — never
//! logged.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use time::{Duration, OffsetDateTime};

use super::PortalError;
use crate::auth::Principal;
use crate::auth::accounts::Accounts;
use crate::fhir::instant::format_instant;
use crate::fhir::resource::ResourceType;
use crate::fhir::validate::Handling;
use crate::repository::{Precondition, RepoError, Repository};

pub const PATIENT_ID: &str = "demo-patient";
pub const DOCTOR_ID: &str = "demo-doctor";
const CLINIC_ID: &str = "demo-clinic";
const LOGINS_FILE: &str = "demo-logins.txt";

/// One sign-in of the demo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Login {
    pub username: String,
    pub password: String,
    /// `Patient/demo-patient` or `Practitioner/demo-doctor`.
    pub fhir_user: String,
}

/// What a demo start leaves for the CLI to print.
#[derive(Debug)]
pub struct Demo {
    pub logins: Vec<Login>,
    /// Where the logins are kept.
    pub logins_file: PathBuf,
    /// Resources written now (0 when the record was there already).
    pub written: usize,
}

fn failed(e: impl std::fmt::Display) -> PortalError {
    PortalError::Demo(e.to_string())
}

/// Seeds the demo record and logins (what is missing of them) into `repo` and `accounts`.
pub async fn seed(
    repo: &Repository,
    accounts: &Accounts,
    data_dir: &Path,
) -> Result<Demo, PortalError> {
    let mut written = 0;
    let internal = Principal::internal();
    for resource in record(OffsetDateTime::now_utc()) {
        let resource_type = resource["resourceType"].as_str().unwrap_or_default();
        let resource_type = ResourceType::parse(resource_type).map_err(failed)?;
        let id = resource["id"].as_str().unwrap_or_default().to_owned();
        let body = serde_json::to_vec(&resource).map_err(failed)?;
        match repo
            .update(
                &internal,
                resource_type,
                &id,
                body,
                Precondition::Absent,
                Handling::Strict,
            )
            .await
        {
            Ok(_) => written += 1,
            // There already (an earlier demo start): left as it is.
            Err(RepoError::PreconditionFailed { .. }) => {}
            Err(e) => return Err(failed(format!("{resource_type}/{id}: {e}"))),
        }
    }
    let logins_file = data_dir.join(LOGINS_FILE);
    let (logins, fresh) = match read_logins(&logins_file)? {
        Some(logins) => (logins, false),
        None => {
            let logins = vec![
                Login {
                    username: PATIENT_ID.into(),
                    password: password(),
                    fhir_user: format!("Patient/{PATIENT_ID}"),
                },
                Login {
                    username: DOCTOR_ID.into(),
                    password: password(),
                    fhir_user: format!("Practitioner/{DOCTOR_ID}"),
                },
            ];
            // Kept before the users are saved: a crash in between leaves logins that the next
            // start saves, never users whose passwords nobody knows.
            write_logins(&logins_file, &logins)?;
            (logins, true)
        }
    };
    for login in &logins {
        // Fresh passwords replace whatever the users had (the file was removed); otherwise an
        // existing user is left as it is.
        if fresh
            || accounts
                .user(&login.username)
                .await
                .map_err(failed)?
                .is_none()
        {
            accounts
                .add_user(&login.username, &login.password, &login.fhir_user)
                .await
                .map_err(failed)?;
        }
    }
    Ok(Demo {
        logins,
        logins_file,
        written,
    })
}

/// A password people can type: 16 letters and digits (no look-alikes) in groups of four,
/// about 78 bits.
fn password() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";
    let mut rng = rand::rng();
    (0..4)
        .map(|_| {
            (0..4)
                .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("-")
}

const HEADER: &str = "# IntelliHealth demo logins (serve --demo): username password fhirUser\n";

/// The logins kept at `path`, if the file exists.
fn read_logins(path: &Path) -> Result<Option<Vec<Login>>, PortalError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(failed(format!("{}: {e}", path.display()))),
    };
    let logins: Vec<Login> = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            Some(Login {
                username: parts.next()?.to_owned(),
                password: parts.next()?.to_owned(),
                fhir_user: parts.next()?.to_owned(),
            })
        })
        .collect();
    if logins.is_empty() {
        return Err(failed(format!(
            "{} holds no logins: remove it to make new ones",
            path.display()
        )));
    }
    Ok(Some(logins))
}

/// Writes the logins readable by this user only (mode 0600), whole or not at all.
fn write_logins(path: &Path, logins: &[Login]) -> Result<(), PortalError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut text = String::from(HEADER);
    for login in logins {
        text.push_str(&format!(
            "{} {} {}\n",
            login.username, login.password, login.fhir_user
        ));
    }
    let partial = path.with_extension("txt.partial");
    let _ = std::fs::remove_file(&partial);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)
        .and_then(|mut file| {
            file.write_all(text.as_bytes())?;
            file.sync_all()
        })
        .and_then(|()| std::fs::rename(&partial, path));
    written.map_err(|e| failed(format!("{}: {e}", path.display())))
}

/// The demo record as of `now`: the people, then three years of care.
fn record(now: OffsetDateTime) -> Vec<Value> {
    let patient = json!({"reference": format!("Patient/{PATIENT_ID}")});
    let doctor =
        json!({"reference": format!("Practitioner/{DOCTOR_ID}"), "display": "Dr. Amira Khan"});
    let clinic = json!({"reference": format!("Organization/{CLINIC_ID}")});
    let mut resources = vec![
        json!({
            "resourceType": "Organization", "id": CLINIC_ID, "active": true,
            "type": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/organization-type",
                "code": "prov", "display": "Healthcare Provider"}]}],
            "name": "Riverside Family Practice",
            "telecom": [{"system": "phone", "value": "+1 555 0100", "use": "work"}],
            "address": [{"line": ["12 River Road"], "city": "Springfield", "postalCode": "01101",
                "country": "US"}],
        }),
        json!({
            "resourceType": "Practitioner", "id": DOCTOR_ID, "active": true,
            "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": "1234567893"}],
            "name": [{"use": "official", "text": "Dr. Amira Khan", "family": "Khan",
                "given": ["Amira"], "prefix": ["Dr."]}],
            "telecom": [{"system": "email", "value": "amira.khan@riverside.example.org", "use": "work"}],
            "gender": "female",
            "qualification": [{"code": {"text": "Doctor of Medicine, family medicine"}}],
        }),
        json!({
            "resourceType": "Patient", "id": PATIENT_ID, "active": true,
            "identifier": [{"system": "https://intellihealth.dev/fhir/NamingSystem/demo-mrn",
                "value": "RFP-004217"}],
            "name": [{"use": "official", "text": "Elena Marsh", "family": "Marsh",
                "given": ["Elena", "Rose"]}],
            "telecom": [{"system": "email", "value": "elena.marsh@example.org", "use": "home"}],
            "gender": "female",
            "birthDate": "1968-04-12",
            "address": [{"use": "home", "line": ["48 Orchard Lane"], "city": "Springfield",
                "postalCode": "01103", "country": "US"}],
            "communication": [{"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "en"}]},
                "preferred": true}],
            "generalPractitioner": [doctor.clone()],
            "managingOrganization": clinic.clone(),
        }),
    ];
    // Twelve visits, a quarter apart, the newest two weeks ago.
    const VISITS: i64 = 12;
    let visit_at = |k: i64| {
        let day = now - Duration::days(14 + 91 * (VISITS - 1 - k));
        day.replace_time(time::Time::from_hms(9, 30, 0).unwrap_or(time::Time::MIDNIGHT))
    };
    let instant =
        |at: OffsetDateTime| format_instant((at.unix_timestamp_nanos() / 1_000_000) as i64);
    let date = |at: OffsetDateTime| instant(at)[..10].to_owned();
    let first = visit_at(0);
    let conditions = [
        (
            "hypertension",
            "38341003",
            "Hypertensive disorder, systemic arterial",
            "High blood pressure",
        ),
        (
            "diabetes",
            "44054006",
            "Diabetes mellitus type 2",
            "Type 2 diabetes",
        ),
        (
            "hyperlipidemia",
            "55822004",
            "Hyperlipidemia",
            "High cholesterol",
        ),
        (
            "allergy",
            "367498001",
            "Seasonal allergic rhinitis",
            "Hay fever",
        ),
    ];
    for (key, code, display, text) in conditions {
        resources.push(json!({
            "resourceType": "Condition", "id": format!("demo-condition-{key}"),
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
            "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}]},
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category",
                "code": "problem-list-item", "display": "Problem List Item"}]}],
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": code, "display": display}], "text": text},
            "subject": patient,
            "encounter": {"reference": "Encounter/demo-encounter-1"},
            "onsetDateTime": date(first - Duration::days(if key == "allergy" { 3650 } else { 30 })),
            "recordedDate": date(first),
            "recorder": doctor,
        }));
    }
    for k in 0..VISITS {
        let at = visit_at(k);
        let encounter = json!({"reference": format!("Encounter/demo-encounter-{k}")});
        let annual = k % 4 == 3;
        resources.push(json!({
            "resourceType": "Encounter", "id": format!("demo-encounter-{k}"), "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB", "display": "ambulatory"},
            "type": [{"coding": [{"system": "http://snomed.info/sct",
                "code": if annual { "410620009" } else { "185389009" },
                "display": if annual { "Well adult visit" } else { "Follow-up visit" }}],
                "text": if annual { "Annual review" } else { "Follow-up: blood pressure and diabetes" }}],
            "subject": patient,
            "participant": [{"individual": doctor}],
            "period": {"start": instant(at), "end": instant(at + Duration::minutes(25))},
            "reasonReference": [{"reference": "Condition/demo-condition-hypertension"},
                {"reference": "Condition/demo-condition-diabetes"}],
            "serviceProvider": clinic,
        }));
        // Treatment works, with some noise: a deterministic wobble per visit.
        let progress = k as f64 / (VISITS - 1) as f64;
        let wobble = [
            0.0, 1.5, -1.0, 2.0, -0.5, 1.0, -1.5, 0.5, 1.0, -1.0, 0.5, 0.0,
        ][k as usize];
        let round = |x: f64| (x * 10.0).round() / 10.0;
        let vital = |code: &str, display: &str| json!({"coding": [{"system": "http://loinc.org", "code": code, "display": display}], "text": display});
        let vitals_category = json!([{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "vital-signs", "display": "Vital Signs"}]}]);
        let quantity = |value: f64, unit: &str, code: &str| json!({"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": code});
        let observation = |id: String, category: &Value, code: Value| {
            json!({
                "resourceType": "Observation", "id": id, "status": "final",
                "category": category, "code": code, "subject": patient, "encounter": encounter,
                "effectiveDateTime": instant(at), "issued": instant(at + Duration::minutes(5)),
                "performer": [doctor],
            })
        };
        let mut heart = observation(
            format!("demo-heart-rate-{k}"),
            &vitals_category,
            vital("8867-4", "Heart rate"),
        );
        heart["valueQuantity"] = quantity(
            (79.0 - 8.0 * progress + wobble * 2.0).round(),
            "beats/minute",
            "/min",
        );
        resources.push(heart);
        let mut pressure = observation(
            format!("demo-blood-pressure-{k}"),
            &vitals_category,
            vital("85354-9", "Blood pressure panel with all children optional"),
        );
        pressure["component"] = json!([
            {"code": vital("8480-6", "Systolic blood pressure"),
             "valueQuantity": quantity((152.0 - 24.0 * progress + wobble * 3.0).round(), "mmHg", "mm[Hg]")},
            {"code": vital("8462-4", "Diastolic blood pressure"),
             "valueQuantity": quantity((96.0 - 15.0 * progress + wobble * 2.0).round(), "mmHg", "mm[Hg]")},
        ]);
        resources.push(pressure);
        let mut weight = observation(
            format!("demo-body-weight-{k}"),
            &vitals_category,
            vital("29463-7", "Body weight"),
        );
        weight["valueQuantity"] = quantity(round(93.4 - 7.2 * progress + wobble * 0.4), "kg", "kg");
        resources.push(weight);
        let lab_category = json!([{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "laboratory", "display": "Laboratory"}]}]);
        // HbA1c at eight of the visits, LDL at six.
        if k % 3 != 2 {
            let mut hba1c = observation(
                format!("demo-hba1c-{k}"),
                &lab_category,
                vital("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood"),
            );
            hba1c["valueQuantity"] = quantity(round(8.4 - 1.7 * progress + wobble * 0.1), "%", "%");
            hba1c["referenceRange"] =
                json!([{"high": quantity(5.7, "%", "%"), "text": "below 5.7 %"}]);
            resources.push(hba1c);
        }
        if k % 2 == 0 {
            let mut ldl = observation(
                format!("demo-ldl-{k}"),
                &lab_category,
                vital(
                    "13457-7",
                    "Cholesterol in LDL [Mass/volume] in Serum or Plasma by calculation",
                ),
            );
            ldl["valueQuantity"] = quantity(
                (168.0 - 66.0 * progress + wobble * 3.0).round(),
                "mg/dL",
                "mg/dL",
            );
            ldl["referenceRange"] =
                json!([{"high": quantity(100.0, "mg/dL", "mg/dL"), "text": "below 100 mg/dL"}]);
            resources.push(ldl);
        }
        // A flu shot at every fourth visit, a tetanus booster at the second.
        if k % 4 == 2 || k == 1 {
            let (id, code, display, text) = if k == 1 {
                (
                    format!("demo-immunization-tdap-{k}"),
                    "115",
                    "Tdap",
                    "Tetanus, diphtheria and pertussis (Tdap)",
                )
            } else {
                (
                    format!("demo-immunization-flu-{k}"),
                    "158",
                    "influenza, injectable, quadrivalent, contains preservative",
                    "Seasonal influenza vaccine",
                )
            };
            resources.push(json!({
                "resourceType": "Immunization", "id": id, "status": "completed",
                "vaccineCode": {"coding": [{"system": "http://hl7.org/fhir/sid/cvx", "code": code, "display": display}], "text": text},
                "patient": patient, "encounter": encounter,
                "occurrenceDateTime": instant(at + Duration::minutes(20)),
                "primarySource": true,
                "site": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActSite", "code": "LA", "display": "left arm"}]},
                "performer": [{"actor": doctor}],
            }));
        }
    }
    let medications = [
        (
            "lisinopril",
            "314076",
            "lisinopril 10 MG Oral Tablet",
            "Lisinopril 10 mg tablet",
            "One tablet by mouth every morning",
            "hypertension",
            0,
        ),
        (
            "metformin",
            "861007",
            "metformin hydrochloride 500 MG Oral Tablet",
            "Metformin 500 mg tablet",
            "One tablet by mouth twice a day with meals",
            "diabetes",
            0,
        ),
        (
            "atorvastatin",
            "617310",
            "atorvastatin 20 MG Oral Tablet",
            "Atorvastatin 20 mg tablet",
            "One tablet by mouth every evening",
            "hyperlipidemia",
            2,
        ),
        (
            "cetirizine",
            "1014676",
            "cetirizine hydrochloride 10 MG Oral Tablet",
            "Cetirizine 10 mg tablet",
            "One tablet by mouth daily when hay fever symptoms occur",
            "allergy",
            5,
        ),
    ];
    for (key, code, display, text, dosage, condition, visit) in medications {
        resources.push(json!({
            "resourceType": "MedicationRequest", "id": format!("demo-medication-{key}"),
            "status": "active", "intent": "order",
            "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                "code": code, "display": display}], "text": text},
            "subject": patient,
            "encounter": {"reference": format!("Encounter/demo-encounter-{visit}")},
            "authoredOn": instant(visit_at(visit) + Duration::minutes(20)),
            "requester": doctor,
            "reasonReference": [{"reference": format!("Condition/demo-condition-{condition}")}],
            "dosageInstruction": [{"text": dosage}],
        }));
    }
    resources.push(json!({
        "resourceType": "AllergyIntolerance", "id": "demo-allergy-penicillin",
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "code": "active"}]},
        "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification", "code": "confirmed"}]},
        "type": "allergy", "category": ["medication"], "criticality": "high",
        "code": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "7980", "display": "penicillin G"}],
            "text": "Penicillin"},
        "patient": patient, "recordedDate": instant(first), "recorder": doctor,
        "reaction": [{"manifestation": [{"coding": [{"system": "http://snomed.info/sct", "code": "271807003",
            "display": "Eruption of skin"}], "text": "Rash and hives"}], "severity": "moderate"}],
    }));
    resources.push(json!({
        "resourceType": "AllergyIntolerance", "id": "demo-allergy-pollen",
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "code": "active"}]},
        "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification", "code": "confirmed"}]},
        "type": "allergy", "category": ["environment"], "criticality": "low",
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "256259004", "display": "Pollen"}], "text": "Grass pollen"},
        "patient": patient, "recordedDate": instant(first), "recorder": doctor,
        "reaction": [{"manifestation": [{"coding": [{"system": "http://snomed.info/sct", "code": "76067001",
            "display": "Sneezing"}], "text": "Sneezing, itchy eyes"}], "severity": "mild"}],
    }));
    let documents = [
        (
            "annual-review",
            "11506-3",
            "Progress note",
            "Annual review",
            VISITS - 1,
            "Annual review. Blood pressure now at target on lisinopril; HbA1c improved on metformin \
          with diet and walking; LDL near target on atorvastatin. Continue current medications, \
          recheck labs in three months, flu vaccine this autumn.",
        ),
        (
            "referral-eyes",
            "57133-1",
            "Referral note",
            "Referral: diabetic eye screening",
            4,
            "Referral to ophthalmology for annual diabetic retinopathy screening. No visual \
          symptoms reported.",
        ),
    ];
    for (key, code, display, title, visit, text) in documents {
        use base64::Engine;
        let at = visit_at(visit) + Duration::minutes(30);
        resources.push(json!({
            "resourceType": "DocumentReference", "id": format!("demo-document-{key}"),
            "status": "current", "docStatus": "final",
            "type": {"coding": [{"system": "http://loinc.org", "code": code, "display": display}], "text": title},
            "category": [{"text": "Clinical note"}],
            "subject": patient, "date": instant(at), "author": [doctor], "custodian": clinic,
            "description": title,
            "content": [{"attachment": {"contentType": "text/plain; charset=utf-8", "language": "en",
                "data": base64::engine::general_purpose::STANDARD.encode(text), "title": title,
                "creation": instant(at)}}],
            "context": {"encounter": [{"reference": format!("Encounter/demo-encounter-{visit}")}],
                "period": {"start": instant(visit_at(visit))}},
        }));
    }
    resources
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::validate::validate;

    #[test]
    fn the_record_is_valid_r4_and_rich_enough() {
        let record = record(OffsetDateTime::now_utc());
        let count = |ty: &str| record.iter().filter(|r| r["resourceType"] == ty).count();
        let with_code = |code: &str| {
            record
                .iter()
                .filter(|r| r["code"]["coding"][0]["code"] == code)
                .count()
        };
        assert!(count("Encounter") >= 8 && count("Condition") >= 3);
        assert!(count("MedicationRequest") >= 3 && count("Immunization") >= 2);
        assert!(count("AllergyIntolerance") >= 1 && count("DocumentReference") >= 1);
        for code in ["8867-4", "85354-9", "29463-7"] {
            assert!(with_code(code) >= 10, "{code}");
        }
        assert!(with_code("4548-4") >= 6 && with_code("13457-7") >= 4);
        let mut ids = std::collections::HashSet::new();
        for resource in &record {
            let id = format!("{}/{}", resource["resourceType"], resource["id"]);
            assert!(ids.insert(id.clone()), "{id} twice");
            let mut parsed = crate::fhir::json::parse(resource.to_string().as_bytes()).unwrap();
            crate::fhir::resource::stamp(&mut parsed, resource["id"].as_str().unwrap(), 1, 0);
            validate(&parsed, Handling::Strict).unwrap_or_else(|e| panic!("{id}: {e:?}"));
        }
    }

    #[test]
    fn logins_are_kept_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOGINS_FILE);
        assert_eq!(read_logins(&path).unwrap(), None);
        let logins = vec![Login {
            username: "u".into(),
            password: password(),
            fhir_user: "Patient/p".into(),
        }];
        write_logins(&path, &logins).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(read_logins(&path).unwrap(), Some(logins));
        assert_eq!(password().len(), 19);
    }
}
