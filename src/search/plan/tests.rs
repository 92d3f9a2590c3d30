//! Tests of the parent module.

use super::*;
use crate::fhir::json;
use crate::fhir::resource::ResourceType;
use crate::search::entries::extract;
use crate::search::keys::keys_of;
use crate::search::params::Registry;
use crate::search::query::{Strictness, parse};

const BASE: &str = "http://fhir.example/fhir";

/// Whether `resource` matches `query` — and, whenever it does, whether the plan's
/// narrowing admits one of its keys (the superset promise).
fn check(resource: &str, query: &str, expected: bool) {
    let resource = json::parse(resource.as_bytes()).unwrap();
    let rt = resource
        .get("resourceType")
        .and_then(json::Json::as_str)
        .unwrap();
    let entries = extract(Registry::r4(), rt, &resource);
    let pairs: Vec<(String, String)> = query
        .split('&')
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect();
    let request = parse(
        Registry::r4(),
        ResourceType::parse(rt).ok(),
        &pairs,
        Strictness::Strict,
    )
    .unwrap();
    let plan = plan(&request.criteria, BASE).unwrap();
    let passed = plan.passes(&entries);
    assert_eq!(passed, expected, "{query}");
    if passed && let Some(narrowing) = plan.narrowing() {
        assert!(
            keys_of(&entries, &[]).iter().any(|k| narrowing.admits(k)),
            "{query}: a match the narrowing would miss"
        );
    }
}

const PATIENT: &str = r#"{"resourceType":"Patient","id":"p1","name":[{"family":"Ménard","given":["Zoë"]}],
    "birthDate":"1970-05-14","gender":"female","identifier":[{"system":"urn:mrn","value":"M-1"}],
    "managingOrganization":{"reference":"Organization/o1"}}"#;

#[test]
fn strings_are_folded_prefixes_unless_exact_or_contains() {
    check(PATIENT, "family=men", true);
    check(PATIENT, "family=MÉN", true);
    check(PATIENT, "family=nard", false);
    check(PATIENT, "family:contains=nar", true);
    check(PATIENT, "family:exact=Ménard", true);
    check(PATIENT, "family:exact=menard", false);
    check(PATIENT, "name=zo", true);
    check(PATIENT, "family=xx,men", true);
}

#[test]
fn tokens_with_and_without_systems() {
    check(PATIENT, "identifier=M-1", true);
    check(PATIENT, "identifier=urn:mrn|M-1", true);
    check(PATIENT, "identifier=urn:other|M-1", false);
    check(PATIENT, "identifier=|M-1", false);
    check(PATIENT, "identifier=urn:mrn|", true);
    check(PATIENT, "gender=female", true);
    check(PATIENT, "gender=|female", true);
    check(PATIENT, "gender:not=male", true);
    check(PATIENT, "gender:not=female", false);
    check(PATIENT, "_id=p1", true);
}

#[test]
fn dates_compare_as_ranges_with_every_prefix() {
    check(PATIENT, "birthdate=1970", true);
    check(PATIENT, "birthdate=1970-05-14", true);
    check(PATIENT, "birthdate=1970-05-14T10:00:00Z", false);
    check(PATIENT, "birthdate=gt1970-05-13", true);
    check(PATIENT, "birthdate=gt1970-05-14", false);
    check(PATIENT, "birthdate=ge1970-05-14", true);
    check(PATIENT, "birthdate=lt1970-05-15", true);
    check(PATIENT, "birthdate=le1970-05-13", false);
    check(PATIENT, "birthdate=sa1970-05-13", true);
    check(PATIENT, "birthdate=eb1970-05-15", true);
    check(PATIENT, "birthdate=eb1970-05-14", false);
    check(PATIENT, "birthdate=ne1970-05-14", false);
    check(PATIENT, "birthdate=ne1971", true);
    check(PATIENT, "birthdate=ap1970-05-14", true);
    check(PATIENT, "birthdate=ge1960&birthdate=le1980", true);
}

#[test]
fn references_and_missing() {
    check(PATIENT, "organization=Organization/o1", true);
    check(PATIENT, "organization=o1", true);
    check(
        PATIENT,
        "organization=http://fhir.example/fhir/Organization/o1",
        true,
    );
    check(
        PATIENT,
        "organization=http://elsewhere/fhir/Organization/o1",
        false,
    );
    check(PATIENT, "organization:Organization=o1", true);
    check(PATIENT, "organization:missing=false", true);
    check(PATIENT, "general-practitioner:missing=true", true);
    check(PATIENT, "general-practitioner:missing=false", false);
}

#[test]
fn quantities_and_composites() {
    let obs = r#"{"resourceType":"Observation","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"8480-6"}]},
        "valueQuantity":{"value":120,"unit":"mmHg","system":"http://unitsofmeasure.org","code":"mm[Hg]"}}"#;
    check(obs, "value-quantity=120", true);
    check(obs, "value-quantity=gt100", true);
    check(obs, "value-quantity=lt100", false);
    check(
        obs,
        "value-quantity=120|http://unitsofmeasure.org|mm[Hg]",
        true,
    );
    check(obs, "value-quantity=120||mmHg", true);
    check(
        obs,
        "value-quantity=120|http://unitsofmeasure.org|kg",
        false,
    );
    check(
        obs,
        "code-value-quantity=http://loinc.org|8480-6$gt100",
        true,
    );
    check(
        obs,
        "code-value-quantity=http://loinc.org|8480-6$lt100",
        false,
    );
    check(
        obs,
        "code-value-quantity=http://loinc.org|other$gt100",
        false,
    );
}
