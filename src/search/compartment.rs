//! The patient compartment of a resource, from the official CompartmentDefinition
//! (`fhir-profiles/compartment-patient.json`): for each resource type, the search parameters
//! whose references put it in a patient's compartment.
//!
//! The compartment decides two things: whose data key seals a version (its *owner*), and which
//! patients' consent governs reading it.
//!
//! Must not touch storage or keys.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde::Deserialize;

use super::fhirpath::reference_parts;
use super::params::Registry;
use crate::fhir::json::Json;

const COMPARTMENT_JSON: &str = include_str!("../../fhir-profiles/compartment-patient.json");

/// The owner of the key for resources outside any patient compartment.
pub const SYSTEM_OWNER: &str = "system";

/// The patients a resource version belongs to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Compartment {
    /// Patient ids, in the order the definition's parameters find them, without repeats.
    pub patients: Vec<String>,
}

impl Compartment {
    /// The owner of the data key that seals this version: the first patient, else the system.
    pub fn key_owner(&self) -> String {
        match self.patients.first() {
            Some(id) => format!("Patient/{id}"),
            None => SYSTEM_OWNER.to_owned(),
        }
    }
}

#[derive(Deserialize)]
struct RawDefinition {
    resource: Vec<RawResource>,
}

#[derive(Deserialize)]
struct RawResource {
    code: String,
    #[serde(default)]
    param: Vec<String>,
}

fn membership_params() -> &'static HashMap<String, Vec<String>> {
    static PARAMS: OnceLock<HashMap<String, Vec<String>>> = OnceLock::new();
    PARAMS.get_or_init(|| {
        let raw: RawDefinition = serde_json::from_str(COMPARTMENT_JSON)
            .expect("fhir-profiles/compartment-patient.json is the official definition");
        raw.resource
            .into_iter()
            .map(|r| (r.code, r.param))
            .collect()
    })
}

/// The resource types that can be in a patient's compartment (the Patient itself included).
pub fn compartment_types() -> Vec<crate::fhir::resource::ResourceType> {
    let mut types: Vec<crate::fhir::resource::ResourceType> = membership_params()
        .iter()
        .filter(|(_, params)| !params.is_empty())
        .filter_map(|(code, _)| crate::fhir::resource::ResourceType::parse(code).ok())
        .collect();
    if let Ok(patient) = crate::fhir::resource::ResourceType::parse("Patient")
        && !types.contains(&patient)
    {
        types.push(patient);
    }
    types.sort();
    types
}

/// Computes the patient compartment of `resource` (of type `resource_type`, with id `id`).
pub fn patient_compartment(resource_type: &str, id: &str, resource: &Json) -> Compartment {
    let mut patients: Vec<String> = Vec::new();
    if resource_type == "Patient" {
        patients.push(id.to_owned());
    }
    let registry = Registry::r4();
    let params = membership_params()
        .get(resource_type)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for code in params {
        let Some(expression) = registry
            .param(resource_type, code)
            .and_then(|p| p.expression.as_ref())
        else {
            continue;
        };
        for node in expression.evaluate(resource) {
            let reference = node.value.get("reference").and_then(Json::as_str);
            if let Some(("Patient", patient)) = reference.and_then(reference_parts)
                && !patients.iter().any(|p| p == patient)
            {
                patients.push(patient.to_owned());
            }
        }
    }
    Compartment { patients }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::json;

    fn patients_of(body: &str) -> Vec<String> {
        let resource = json::parse(body.as_bytes()).unwrap();
        let rt = resource.get("resourceType").and_then(Json::as_str).unwrap();
        let id = resource.get("id").and_then(Json::as_str).unwrap_or("x");
        patient_compartment(rt, id, &resource).patients
    }

    #[test]
    fn finds_the_patients_the_definition_names() {
        assert_eq!(
            patients_of(r#"{"resourceType":"Patient","id":"me"}"#),
            ["me"]
        );
        assert_eq!(
            patients_of(
                r#"{"resourceType":"Observation","subject":{"reference":"Patient/a"},"performer":[{"reference":"Patient/b"},{"reference":"Practitioner/c"}]}"#
            ),
            ["a", "b"]
        );
        assert_eq!(
            patients_of(r#"{"resourceType":"Observation","subject":{"reference":"Group/g"}}"#),
            Vec::<String>::new()
        );
        assert_eq!(
            patients_of(
                r#"{"resourceType":"Encounter","subject":{"reference":"http://h/fhir/Patient/z/_history/1"}}"#
            ),
            ["z"]
        );
        assert!(patients_of(r#"{"resourceType":"Organization","name":"o"}"#).is_empty());
    }

    #[test]
    fn the_first_patient_owns_the_key() {
        let c = Compartment {
            patients: vec!["a".into(), "b".into()],
        };
        assert_eq!(c.key_owner(), "Patient/a");
        assert_eq!(Compartment::default().key_owner(), "system");
    }
}
