//! Grants as FHIR R4 Consent resources, both ways.
//!
//! In: a draft Consent (patient; `provision.type` permit; one `provision.actor` whose
//! reference is the grantee, `Practitioner/…` or an identifier of system
//! `urn:ietf:params:oauth:client-id`; `provision.action` access and/or correct; `provision.class`
//! the resource types, none meaning all; `provision.period.end` the expiry) becomes a `Draft`.
//!
//! Out: a grant on chain becomes the Consent that mirrors it, with the grant's id as its id
//! (bytes32 as 64 hex digits: exactly FHIR's longest id), the grant id and transaction among its
//! identifiers, status `active` or, once revoked, `inactive`. A Consent without the signature
//! extension is an ordinary resource (a signed paper form, say) and grants nothing.

use alloy::primitives::B256;
use serde_json::{Value, json};

use super::ConsentError;
use crate::fhir::json::Json;
use crate::fhir::resource::ResourceType;
use crate::ledger::consent::{GrantRecord, READ, WRITE, type_key};

/// The extension carrying a wallet's signature (valueString, 0x-hex).
pub const SIGNATURE_EXTENSION: &str =
    "https://intellihealth.dev/fhir/StructureDefinition/eip712-signature";
/// Identifier systems of a mirrored grant.
pub const GRANT_ID_SYSTEM: &str = "https://intellihealth.dev/fhir/NamingSystem/consent-grant-id";
pub const TX_SYSTEM: &str = "https://intellihealth.dev/fhir/NamingSystem/ethereum-transaction";
pub const REVOCATION_TX_SYSTEM: &str =
    "https://intellihealth.dev/fhir/NamingSystem/ethereum-revocation-transaction";
/// A grantee the server cannot name (a grant made on chain directly, to an identity it does
/// not know): its keyed hash.
pub const GRANTEE_HASH_SYSTEM: &str = "https://intellihealth.dev/fhir/NamingSystem/grantee-hash";
pub const CLIENT_ID_SYSTEM: &str = "urn:ietf:params:oauth:client-id";
const ACTION_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/consentaction";
const RESOURCE_TYPES_SYSTEM: &str = "http://hl7.org/fhir/resource-types";

/// Who a grant is to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Grantee {
    /// A `fhirUser`-style reference: `Practitioner/abc`.
    Reference(String),
    /// An OAuth client id.
    Client(String),
}

/// A grant asked for, before it is signed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Draft {
    pub patient: String,
    pub grantee: Grantee,
    /// Resource type names, or `["*"]` for all.
    pub types: Vec<String>,
    pub actions: u8,
    /// Unix seconds.
    pub expiry: u64,
}

fn unprocessable(why: impl Into<String>) -> ConsentError {
    ConsentError::Unprocessable(why.into())
}

/// The signature a Consent carries in the signature extension, if any.
pub fn signature_of(consent: &Json) -> Option<&str> {
    consent
        .get("extension")?
        .as_array()?
        .iter()
        .find(|e| e.get("url").and_then(Json::as_str) == Some(SIGNATURE_EXTENSION))?
        .get("valueString")?
        .as_str()
}

/// The patient id a Consent is about (`patient.reference` = `Patient/{id}`).
pub fn patient_of(consent: &Json) -> Result<String, ConsentError> {
    let reference = consent
        .get("patient")
        .and_then(|p| p.get("reference"))
        .and_then(Json::as_str)
        .ok_or_else(|| unprocessable("the Consent names no patient (patient.reference)"))?;
    reference
        .strip_prefix("Patient/")
        .filter(|id| crate::fhir::primitives::is_id(id))
        .map(str::to_owned)
        .ok_or_else(|| unprocessable("patient.reference must be Patient/{id}"))
}

/// Reads a draft grant from a Consent.
pub fn draft_of(consent: &Json) -> Result<Draft, ConsentError> {
    if consent.get("resourceType").and_then(Json::as_str) != Some("Consent") {
        return Err(unprocessable("the body is not a Consent"));
    }
    let patient = patient_of(consent)?;
    let provision = consent
        .get("provision")
        .ok_or_else(|| unprocessable("the Consent has no provision"))?;
    if provision.get("type").and_then(Json::as_str) != Some("permit") {
        return Err(unprocessable(
            "only a permit can be granted: provision.type must be permit (anything not \
             granted is denied already)",
        ));
    }
    if provision.get("provision").is_some() {
        return Err(unprocessable(
            "nested provisions are not supported: one grant is one permit",
        ));
    }
    let actors = provision
        .get("actor")
        .and_then(Json::as_array)
        .unwrap_or_default();
    let [actor] = actors else {
        return Err(unprocessable(
            "a grant names exactly one grantee (provision.actor)",
        ));
    };
    let reference = actor
        .get("reference")
        .ok_or_else(|| unprocessable("provision.actor has no reference"))?;
    let grantee = if let Some(text) = reference.get("reference").and_then(Json::as_str) {
        let valid = text.split_once('/').is_some_and(|(ty, id)| {
            matches!(
                ty,
                "Practitioner" | "PractitionerRole" | "Organization" | "RelatedPerson" | "Patient"
            ) && crate::fhir::primitives::is_id(id)
        });
        if !valid {
            return Err(unprocessable(
                "the grantee must be a Practitioner, PractitionerRole, Organization, \
                 RelatedPerson or Patient reference (Type/id)",
            ));
        }
        Grantee::Reference(text.to_owned())
    } else if let Some(identifier) = reference.get("identifier") {
        let system = identifier.get("system").and_then(Json::as_str);
        let value = identifier.get("value").and_then(Json::as_str);
        match (system, value) {
            (Some(CLIENT_ID_SYSTEM), Some(id)) if !id.is_empty() => Grantee::Client(id.to_owned()),
            _ => {
                return Err(unprocessable(format!(
                    "a grantee by identifier must have system {CLIENT_ID_SYSTEM} and a client id"
                )));
            }
        }
    } else {
        return Err(unprocessable(
            "provision.actor.reference needs a reference or an identifier",
        ));
    };
    let mut actions = 0u8;
    for action in provision
        .get("action")
        .and_then(Json::as_array)
        .unwrap_or_default()
    {
        for coding in action
            .get("coding")
            .and_then(Json::as_array)
            .unwrap_or_default()
        {
            match coding.get("code").and_then(Json::as_str) {
                Some("access") => actions |= READ,
                Some("correct") => actions |= WRITE,
                Some(other) => {
                    return Err(unprocessable(format!(
                        "provision.action {other} cannot be granted: access (read) and correct \
                         (write) can"
                    )));
                }
                None => {}
            }
        }
    }
    if actions == 0 {
        return Err(unprocessable(
            "provision.action must say access (read) and/or correct (write)",
        ));
    }
    let mut types = Vec::new();
    for class in provision
        .get("class")
        .and_then(Json::as_array)
        .unwrap_or_default()
    {
        let code = class
            .get("code")
            .and_then(Json::as_str)
            .ok_or_else(|| unprocessable("provision.class needs a code (a resource type)"))?;
        let rt = ResourceType::parse(code)
            .map_err(|_| unprocessable(format!("provision.class {code} is not a resource type")))?;
        if !types.iter().any(|t| t == rt.as_str()) {
            types.push(rt.as_str().to_owned());
        }
    }
    if types.is_empty() {
        types.push("*".to_owned());
    }
    let end = provision
        .get("period")
        .and_then(|p| p.get("end"))
        .and_then(Json::as_str)
        .ok_or_else(|| unprocessable("a grant needs an expiry: provision.period.end"))?;
    let (_, end_millis) = crate::fhir::instant::period(end)
        .ok_or_else(|| unprocessable("provision.period.end is not a dateTime"))?;
    let expiry = (end_millis / 1000).max(0) as u64;
    if expiry <= super::now_secs() {
        return Err(unprocessable("provision.period.end has passed"));
    }
    Ok(Draft {
        patient,
        grantee,
        types,
        actions,
        expiry,
    })
}

/// The grant id a Consent's id names (64 hex digits), if it names one.
pub fn grant_id_of(id: &str) -> Option<B256> {
    (id.len() == 64)
        .then(|| alloy::hex::decode(id).ok())
        .flatten()
        .map(|bytes| B256::from_slice(&bytes))
}

/// The Consent id of a grant.
pub fn consent_id(grant_id: B256) -> String {
    alloy::hex::encode(grant_id)
}

/// The resource type names a grant's type keys stand for (a key no type hashes to is shown as
/// its hash).
pub fn type_names(keys: &[B256]) -> Vec<String> {
    keys.iter()
        .map(|key| {
            ResourceType::all()
                .map(ResourceType::as_str)
                .chain(["*"])
                .find(|name| type_key(name) == *key)
                .map_or_else(|| key.to_string(), str::to_owned)
        })
        .collect()
}

/// The Consent that mirrors `grant` on chain. `patient` is the Patient's id; `grantee` who the
/// grant is to, when the server knows.
pub fn mirror(grant: &GrantRecord, patient: &str, grantee: Option<&Grantee>) -> Value {
    let grantee_reference = match grantee {
        Some(Grantee::Reference(reference)) => json!({"reference": reference}),
        Some(Grantee::Client(id)) => {
            json!({"identifier": {"system": CLIENT_ID_SYSTEM, "value": id}})
        }
        None => {
            json!({"identifier": {"system": GRANTEE_HASH_SYSTEM, "value": grant.grantee.to_string()}})
        }
    };
    let mut actions = Vec::new();
    if grant.actions & READ != 0 {
        actions.push(json!({"coding": [{"system": ACTION_SYSTEM, "code": "access"}]}));
    }
    if grant.actions & WRITE != 0 {
        actions.push(json!({"coding": [{"system": ACTION_SYSTEM, "code": "correct"}]}));
    }
    let classes: Vec<Value> = type_names(&grant.type_keys)
        .into_iter()
        .filter(|name| name != "*")
        .map(|name| json!({"system": RESOURCE_TYPES_SYSTEM, "code": name}))
        .collect();
    let mut identifiers = vec![
        json!({"system": GRANT_ID_SYSTEM, "value": grant.grant_id.to_string()}),
        json!({"system": TX_SYSTEM, "value": grant.granted_in.1.to_string()}),
    ];
    if let Some((_, tx)) = grant.revoked_in {
        identifiers.push(json!({"system": REVOCATION_TX_SYSTEM, "value": tx.to_string()}));
    }
    let expiry_millis = i64::try_from(grant.expiry.saturating_mul(1000)).unwrap_or(i64::MAX);
    let mut provision = json!({
        "type": "permit",
        "period": {"end": crate::fhir::instant::format_instant(expiry_millis)},
        "actor": [{
            "role": {"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                "code": "IRCP",
            }]},
            "reference": grantee_reference,
        }],
        "action": actions,
    });
    if !classes.is_empty() {
        provision["class"] = Value::Array(classes);
    }
    json!({
        "resourceType": "Consent",
        "id": consent_id(grant.grant_id),
        "identifier": identifiers,
        "status": if grant.revoked { "inactive" } else { "active" },
        "scope": {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/consentscope",
            "code": "patient-privacy",
        }]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": format!("Patient/{patient}")},
        "policyRule": {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
            "code": "OPTIN",
        }]},
        "provision": provision,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consent(provision: &str) -> Json {
        crate::fhir::json::parse(
            format!(
                r#"{{"resourceType":"Consent","patient":{{"reference":"Patient/p1"}},"provision":{provision}}}"#
            )
            .as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn a_draft_reads_grantee_types_actions_and_expiry() {
        let draft = draft_of(&consent(
            r#"{"type":"permit","period":{"end":"2999-01-01T00:00:00Z"},
                "actor":[{"reference":{"reference":"Practitioner/doc"}}],
                "action":[{"coding":[{"code":"access"}]}],
                "class":[{"code":"Observation"},{"code":"Condition"}]}"#,
        ))
        .unwrap();
        assert_eq!(draft.patient, "p1");
        assert_eq!(draft.grantee, Grantee::Reference("Practitioner/doc".into()));
        assert_eq!(draft.types, ["Observation", "Condition"]);
        assert_eq!(draft.actions, READ);
        let client = draft_of(&consent(
            r#"{"type":"permit","period":{"end":"2999-01-01"},
                "actor":[{"reference":{"identifier":{"system":"urn:ietf:params:oauth:client-id","value":"app"}}}],
                "action":[{"coding":[{"code":"access"}]},{"coding":[{"code":"correct"}]}]}"#,
        ))
        .unwrap();
        assert_eq!(client.grantee, Grantee::Client("app".into()));
        assert_eq!(client.types, ["*"]);
        assert_eq!(client.actions, READ | WRITE);
    }

    #[test]
    fn what_cannot_be_granted_is_refused() {
        for provision in [
            r#"{"type":"deny","period":{"end":"2999-01-01"},"actor":[{"reference":{"reference":"Practitioner/d"}}],"action":[{"coding":[{"code":"access"}]}]}"#,
            r#"{"type":"permit","actor":[{"reference":{"reference":"Practitioner/d"}}],"action":[{"coding":[{"code":"access"}]}]}"#,
            r#"{"type":"permit","period":{"end":"2000-01-01"},"actor":[{"reference":{"reference":"Practitioner/d"}}],"action":[{"coding":[{"code":"access"}]}]}"#,
            r#"{"type":"permit","period":{"end":"2999-01-01"},"actor":[],"action":[{"coding":[{"code":"access"}]}]}"#,
            r#"{"type":"permit","period":{"end":"2999-01-01"},"actor":[{"reference":{"reference":"Device/x"}}],"action":[{"coding":[{"code":"access"}]}]}"#,
            r#"{"type":"permit","period":{"end":"2999-01-01"},"actor":[{"reference":{"reference":"Practitioner/d"}}],"action":[{"coding":[{"code":"disclose"}]}]}"#,
            r#"{"type":"permit","period":{"end":"2999-01-01"},"actor":[{"reference":{"reference":"Practitioner/d"}}],"action":[{"coding":[{"code":"access"}]}],"class":[{"code":"NotAType"}]}"#,
        ] {
            assert!(
                matches!(
                    draft_of(&consent(provision)),
                    Err(ConsentError::Unprocessable(_))
                ),
                "{provision}"
            );
        }
    }

    #[test]
    fn type_keys_name_their_types() {
        let keys = [type_key("Observation"), type_key("*")];
        assert_eq!(type_names(&keys), ["Observation", "*"]);
        let id = B256::repeat_byte(0xab);
        assert_eq!(grant_id_of(&consent_id(id)), Some(id));
        assert_eq!(grant_id_of("abc"), None);
    }
}
