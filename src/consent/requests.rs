//! Access requests and the directory of grantees, as FHIR resources.
//!
//! A practitioner asks a patient for access (`Consent/$request-access`); the server writes the
//! request as a Consent with status `proposed`, tagged as an access request, naming the patient,
//! the practitioner (`performer` and the provision's one actor), the resource types
//! (`provision.class`, none meaning all), the end of the period asked for and the reason (an
//! extension). The patient answers it (`Consent/{id}/$answer`): declined, it becomes `rejected`;
//! approved, it becomes `inactive` and names the grant the patient signed (an extension
//! referencing the grant's own Consent). A request grants nothing: only the signed grant on
//! chain does, and a request is never read as a grant (its id is a UUID, never a grant id, and
//! it carries no signature).
//!
//! The grantee directory (`Consent/$grantees`) lists who a patient can grant to: Practitioners
//! and Organizations (id and name only) and registered confidential clients (as `Basic`
//! entries naming the client id and its name).

use alloy::primitives::B256;
use serde_json::{Value, json};

use super::ConsentError;
use super::resource::{CLIENT_ID_SYSTEM, grant_id_of};
use crate::auth::Principal;
use crate::fhir::resource::ResourceType;

/// The tag every access request carries (`meta.tag`), which a search can name (`_tag`).
pub const WORKFLOW_SYSTEM: &str = "https://intellihealth.dev/fhir/CodeSystem/consent-workflow";
pub const ACCESS_REQUEST: &str = "access-request";
/// The practitioner's reason (valueString).
pub const REASON_EXTENSION: &str =
    "https://intellihealth.dev/fhir/StructureDefinition/access-request-reason";
/// On an approved request: the grant's Consent (valueReference `Consent/{grant id}`).
pub const GRANT_EXTENSION: &str =
    "https://intellihealth.dev/fhir/StructureDefinition/access-request-grant";
/// On a client's directory entry: the client's name (valueString).
pub const CLIENT_NAME_EXTENSION: &str =
    "https://intellihealth.dev/fhir/StructureDefinition/client-name";

pub const DEFAULT_DAYS: i64 = 30;
pub const MAX_DAYS: i64 = 365;
pub const MAX_REASON_CHARS: usize = 500;

/// What a practitioner's `$request-access` asked for, as sent.
#[derive(Clone, Debug, Default)]
pub struct Asked {
    /// `Patient/{id}`.
    pub patient: Option<String>,
    pub types: Vec<String>,
    pub days: Option<i64>,
    pub reason: Option<String>,
}

/// An access request, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessRequest {
    /// The patient's id.
    pub patient: String,
    /// `Practitioner/{id}`.
    pub requester: String,
    /// Resource type names; empty for every type.
    pub types: Vec<String>,
    pub days: i64,
    pub reason: Option<String>,
}

fn invalid(why: impl Into<String>) -> ConsentError {
    ConsentError::Invalid(why.into())
}

impl AccessRequest {
    /// The request `principal` makes by `asked`: only a practitioner (a `fhirUser`
    /// Practitioner) asks.
    pub fn new(principal: &Principal, asked: Asked) -> Result<AccessRequest, ConsentError> {
        let requester = principal
            .fhir_user
            .as_deref()
            .filter(|u| u.starts_with("Practitioner/"))
            .ok_or_else(|| {
                ConsentError::Forbidden(
                    "only a practitioner (a token whose fhirUser is a Practitioner) may request \
                     access to a patient's record"
                        .into(),
                )
            })?
            .to_owned();
        let patient = asked
            .patient
            .as_deref()
            .ok_or_else(|| invalid("the Parameters need patient (valueReference Patient/{id})"))?;
        let patient = patient
            .strip_prefix("Patient/")
            .filter(|id| crate::fhir::primitives::is_id(id))
            .ok_or_else(|| invalid("patient must reference Patient/{id}"))?
            .to_owned();
        let mut types: Vec<String> = Vec::new();
        for name in &asked.types {
            let rt = ResourceType::parse(name)
                .map_err(|_| invalid(format!("type {name} is not a resource type")))?;
            if !types.iter().any(|t| t == rt.as_str()) {
                types.push(rt.as_str().to_owned());
            }
        }
        let days = asked.days.unwrap_or(DEFAULT_DAYS);
        if !(1..=MAX_DAYS).contains(&days) {
            return Err(invalid(format!(
                "days must be between 1 and {MAX_DAYS} (default {DEFAULT_DAYS})"
            )));
        }
        let reason = asked
            .reason
            .map(|r| r.trim().to_owned())
            .filter(|r| !r.is_empty());
        if reason
            .as_ref()
            .is_some_and(|r| r.chars().count() > MAX_REASON_CHARS)
        {
            return Err(invalid(format!(
                "reason is limited to {MAX_REASON_CHARS} characters"
            )));
        }
        Ok(AccessRequest {
            patient,
            requester,
            types,
            days,
            reason,
        })
    }

    /// The criteria that find this practitioner's pending request to this patient: the key of
    /// the race-free conditional create, so there is at most one.
    pub fn pending_criteria(&self) -> String {
        form_urlencoded::Serializer::new(String::new())
            .append_pair("patient", &format!("Patient/{}", self.patient))
            .append_pair("actor", &self.requester)
            .append_pair("status", "proposed")
            .append_pair("_tag", &format!("{WORKFLOW_SYSTEM}|{ACCESS_REQUEST}"))
            .finish()
    }

    /// The request as the Consent the server writes, at `now` (ms).
    pub fn consent(&self, now_millis: i64) -> Value {
        use crate::fhir::instant::format_instant;
        let end = now_millis.saturating_add(self.days.saturating_mul(86_400_000));
        let mut provision = json!({
            "type": "permit",
            "period": {"start": format_instant(now_millis), "end": format_instant(end)},
            "actor": [{
                "role": {"coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                    "code": "IRCP",
                }]},
                "reference": {"reference": self.requester},
            }],
            "action": [{"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/consentaction",
                "code": "access",
            }]}],
        });
        if !self.types.is_empty() {
            provision["class"] = self
                .types
                .iter()
                .map(|t| json!({"system": "http://hl7.org/fhir/resource-types", "code": t}))
                .collect();
        }
        let mut consent = json!({
            "resourceType": "Consent",
            "meta": {"tag": [{"system": WORKFLOW_SYSTEM, "code": ACCESS_REQUEST,
                "display": "Access request"}]},
            "status": "proposed",
            "scope": {"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                "code": "patient-privacy",
            }]},
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
            "patient": {"reference": format!("Patient/{}", self.patient)},
            "dateTime": format_instant(now_millis),
            "performer": [{"reference": self.requester}],
            "policyRule": {"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                "code": "OPTIN",
            }]},
            "provision": provision,
        });
        if let Some(reason) = &self.reason {
            consent["extension"] = json!([{"url": REASON_EXTENSION, "valueString": reason}]);
        }
        consent
    }
}

/// The patient's answer to a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Approved by signing the grant `grant`.
    Approved {
        grant: B256,
    },
    Declined,
}

impl Answer {
    /// From `$answer`'s `answer` (valueCode) and `grant` (valueString, the grant id).
    pub fn parse(answer: Option<&str>, grant: Option<&str>) -> Result<Answer, ConsentError> {
        match answer {
            Some("declined") => Ok(Answer::Declined),
            Some("approved") => {
                let grant = grant.ok_or_else(|| {
                    invalid(
                        "an approval names the grant the patient signed: grant (valueString, \
                         the grant's id)",
                    )
                })?;
                let grant = grant_id_of(grant.trim_start_matches("0x"))
                    .ok_or_else(|| invalid("grant must be a grant id (64 hex digits)"))?;
                Ok(Answer::Approved { grant })
            }
            _ => Err(invalid("answer must be approved or declined (valueCode)")),
        }
    }
}

/// Whether a stored Consent is an access request still waiting for its answer.
pub fn is_pending(consent: &Value) -> bool {
    is_access_request(consent) && consent["status"] == "proposed"
}

/// Whether a stored Consent is an access request (its tag).
pub fn is_access_request(consent: &Value) -> bool {
    consent["meta"]["tag"].as_array().is_some_and(|tags| {
        tags.iter()
            .any(|t| t["system"] == WORKFLOW_SYSTEM && t["code"] == ACCESS_REQUEST)
    })
}

/// The practitioner who asked (`provision.actor[0]`), as `Practitioner/{id}`.
pub fn requester_of(consent: &Value) -> Option<&str> {
    consent["provision"]["actor"][0]["reference"]["reference"].as_str()
}

/// The patient id a request is about.
pub fn patient_of(consent: &Value) -> Option<&str> {
    consent["patient"]["reference"]
        .as_str()?
        .strip_prefix("Patient/")
}

/// The request as answered: `rejected`, or `inactive` naming the grant's Consent.
pub fn answered(mut request: Value, answer: Answer) -> Value {
    if let Some(fields) = request.as_object_mut() {
        fields.remove("meta");
        match answer {
            Answer::Declined => {
                fields.insert("status".into(), json!("rejected"));
            }
            Answer::Approved { grant } => {
                fields.insert("status".into(), json!("inactive"));
                let link = json!({"url": GRANT_EXTENSION, "valueReference": {
                    "reference": format!("Consent/{}", super::resource::consent_id(grant)),
                }});
                match fields.get_mut("extension").and_then(Value::as_array_mut) {
                    Some(extensions) => extensions.push(link),
                    None => {
                        fields.insert("extension".into(), json!([link]));
                    }
                }
            }
        }
        // The tag goes with the answered request too: it is still an access request.
        fields.insert(
            "meta".into(),
            json!({"tag": [{"system": WORKFLOW_SYSTEM, "code": ACCESS_REQUEST,
                "display": "Access request"}]}),
        );
    }
    request
}

/// A directory entry for a stored Practitioner or Organization: its type, id and name only.
pub fn directory_entry(resource: &Value) -> Option<Value> {
    let resource_type = resource["resourceType"].as_str()?;
    let id = resource["id"].as_str()?;
    let mut entry = json!({"resourceType": resource_type, "id": id});
    if !resource["name"].is_null() {
        entry["name"] = resource["name"].clone();
    }
    Some(entry)
}

/// A directory entry for a registered client: a `Basic` with `code.text` "client", the client
/// id as its identifier and the name in an extension.
pub fn client_entry(client_id: &str, name: &str) -> Value {
    json!({
        "resourceType": "Basic",
        "extension": [{"url": CLIENT_NAME_EXTENSION, "valueString": name}],
        "identifier": [{"system": CLIENT_ID_SYSTEM, "value": client_id}],
        "code": {"text": "client"},
    })
}

/// Whether `name` contains `wanted`, ignoring case (`wanted` already lowercased).
pub fn name_matches(name: &str, wanted: &str) -> bool {
    wanted.is_empty() || name.to_lowercase().contains(wanted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Scopes;

    fn principal(fhir_user: Option<&str>) -> Principal {
        let mut p = Principal::internal();
        p.fhir_user = fhir_user.map(str::to_owned);
        p.custodian = false;
        p.scopes = Scopes::parse("user/*.rs");
        p
    }

    fn asked(patient: &str) -> Asked {
        Asked {
            patient: Some(patient.into()),
            ..Asked::default()
        }
    }

    #[test]
    fn only_a_practitioner_asks_within_bounds() {
        let doctor = principal(Some("Practitioner/doc"));
        let request = AccessRequest::new(&doctor, asked("Patient/p1")).unwrap();
        assert_eq!(request.patient, "p1");
        assert_eq!(request.days, DEFAULT_DAYS);
        assert!(request.types.is_empty());
        assert!(matches!(
            AccessRequest::new(&principal(Some("Patient/p1")), asked("Patient/p1")),
            Err(ConsentError::Forbidden(_))
        ));
        assert!(matches!(
            AccessRequest::new(&principal(None), asked("Patient/p1")),
            Err(ConsentError::Forbidden(_))
        ));
        for bad in [
            Asked {
                days: Some(0),
                ..asked("Patient/p1")
            },
            Asked {
                days: Some(366),
                ..asked("Patient/p1")
            },
            Asked {
                reason: Some("x".repeat(501)),
                ..asked("Patient/p1")
            },
            Asked {
                types: vec!["NotAType".into()],
                ..asked("Patient/p1")
            },
            asked("Practitioner/p1"),
        ] {
            assert!(
                matches!(
                    AccessRequest::new(&doctor, bad.clone()),
                    Err(ConsentError::Invalid(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_request_is_a_proposed_consent_that_is_no_grant() {
        let doctor = principal(Some("Practitioner/doc"));
        let request = AccessRequest::new(
            &doctor,
            Asked {
                types: vec!["Observation".into(), "Observation".into()],
                days: Some(2),
                reason: Some("follow-up".into()),
                ..asked("Patient/p1")
            },
        )
        .unwrap();
        let consent = request.consent(0);
        assert!(is_pending(&consent));
        assert_eq!(requester_of(&consent), Some("Practitioner/doc"));
        assert_eq!(patient_of(&consent), Some("p1"));
        assert_eq!(consent["provision"]["class"].as_array().unwrap().len(), 1);
        assert_eq!(
            consent["provision"]["period"]["end"],
            "1970-01-03T00:00:00.000Z"
        );
        assert!(
            super::super::resource::signature_of(
                &crate::fhir::json::parse(consent.to_string().as_bytes()).unwrap()
            )
            .is_none()
        );
        let grant = B256::repeat_byte(7);
        let approved = answered(consent.clone(), Answer::Approved { grant });
        assert_eq!(approved["status"], "inactive");
        assert!(!is_pending(&approved) && is_access_request(&approved));
        assert_eq!(answered(consent, Answer::Declined)["status"], "rejected");
        assert_eq!(
            Answer::parse(Some("approved"), Some(&"07".repeat(32))).unwrap(),
            Answer::Approved { grant }
        );
        assert!(Answer::parse(Some("approved"), None).is_err());
        assert!(Answer::parse(Some("maybe"), None).is_err());
    }
}
