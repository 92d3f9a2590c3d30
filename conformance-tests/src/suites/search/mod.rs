//! Search: every parameter type, modifier, prefix and result parameter, chains, `_has`,
//! includes, sorting, paging (consistent under concurrent writes), compartments, `$everything`,
//! `POST _search`, system search, and strict/lenient handling.
//!
//! A fixture set of its own (ids `s<run>-…`, written with update-as-create) is searched; other
//! data on the server may match a query too and is ignored: each case compares the fixtures
//! returned with the fixtures expected, which are derived from the fixtures' own values, never
//! from the server. Every page of a result is followed.

mod results;

use std::collections::BTreeSet;

use serde_json::{Value, json};

use super::{SuiteContext, bundle_link};
use crate::client::Client;
use crate::report::Report;

const SUITE: &str = "search";

struct Fixtures {
    run: String,
}

impl Fixtures {
    fn id(&self, name: &str) -> String {
        format!("s{}-{name}", self.run)
    }

    /// A unique string of this run, for names and systems.
    fn tagged(&self, text: &str) -> String {
        format!("{text}{}", self.run)
    }

    /// The fixture name of an id of this run, if it is one.
    fn name_of(&self, id: &str) -> Option<String> {
        id.strip_prefix(&format!("s{}-", self.run))
            .map(str::to_owned)
    }
}

fn reference(f: &Fixtures, ty: &str, name: &str) -> Value {
    json!({"reference": format!("{ty}/{}", f.id(name))})
}

const LOINC: &str = "http://loinc.org";
const UCUM: &str = "http://unitsofmeasure.org";

fn fixtures(f: &Fixtures) -> Vec<Value> {
    let tag = json!({"tag": [{"system": "urn:conformance:search", "code": f.run}]});
    let with_meta = |mut v: Value| {
        v["meta"] = tag.clone();
        v
    };
    let mrn = format!("urn:mrn:{}", f.run);
    let mr_type = json!({"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]});
    vec![
        json!({"resourceType": "Organization", "id": f.id("oX"), "name": format!("Acme Health {}", f.run), "active": true}),
        json!({"resourceType": "Organization", "id": f.id("oY"), "name": format!("Beta Clinic {}", f.run), "partOf": reference(f, "Organization", "oX")}),
        json!({"resourceType": "Practitioner", "id": f.id("drP"), "name": [{"family": f.tagged("Grey")}]}),
        with_meta(json!({"resourceType": "Patient", "id": f.id("pA"),
            "identifier": [{"system": mrn, "value": "MRN-A", "type": mr_type}],
            "name": [{"family": f.tagged("Ménard"), "given": ["Zoë"]}], "gender": "female",
            "birthDate": "1970-05-14", "telecom": [{"system": "phone", "value": "555-0100"}],
            "deceasedBoolean": false, "address": [{"city": "Québec"}],
            "managingOrganization": reference(f, "Organization", "oX"),
            "generalPractitioner": [reference(f, "Practitioner", "drP")]})),
        with_meta(json!({"resourceType": "Patient", "id": f.id("pB"),
            "identifier": [{"system": mrn, "value": "MRN-B"}],
            "name": [{"family": f.tagged("Menard"), "given": ["Paul"]}], "gender": "male",
            "birthDate": "1970", "deceasedDateTime": "2020-01-01", "address": [{"city": "Montréal"}]})),
        with_meta(json!({"resourceType": "Patient", "id": f.id("pC"),
            "name": [{"family": f.tagged("Smith"), "given": ["Anne"]}], "gender": "female",
            "birthDate": "1985-11-30", "managingOrganization": reference(f, "Organization", "oY")})),
        json!({"resourceType": "Encounter", "id": f.id("e1"), "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": reference(f, "Patient", "pA"),
            "period": {"start": "2024-01-10T09:00:00Z", "end": "2024-01-10T11:00:00Z"}}),
        with_meta(
            json!({"resourceType": "Observation", "id": f.id("o1"), "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
            "code": {"coding": [{"system": LOINC, "code": "8867-4", "display": "Heart rate"}]},
            "subject": reference(f, "Patient", "pA"), "encounter": reference(f, "Encounter", "e1"),
            "performer": [reference(f, "Practitioner", "drP")],
            "effectiveDateTime": "2024-01-10T10:00:00Z",
            "valueQuantity": {"value": 72, "unit": "beats/minute", "system": UCUM, "code": "/min"}}),
        ),
        with_meta(
            json!({"resourceType": "Observation", "id": f.id("o2"), "status": "final",
            "code": {"coding": [{"system": LOINC, "code": "8867-4"}]},
            "subject": reference(f, "Patient", "pA"), "effectiveDateTime": "2024-03-01",
            "valueQuantity": {"value": 120.5, "unit": "beats/minute", "system": UCUM, "code": "/min"}}),
        ),
        with_meta(
            json!({"resourceType": "Observation", "id": f.id("o3"), "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}],
            "code": {"coding": [{"system": LOINC, "code": "2339-0", "display": "Glucose"}], "text": "Blood glucose"},
            "subject": reference(f, "Patient", "pB"),
            "effectivePeriod": {"start": "2024-02-01", "end": "2024-02-28"},
            "valueQuantity": {"value": 5.4, "unit": "mmol/L", "system": UCUM, "code": "mmol/L"}}),
        ),
        with_meta(
            json!({"resourceType": "Observation", "id": f.id("o4"), "status": "preliminary",
            "code": {"coding": [{"system": format!("urn:local:{}", f.run), "code": "X"}], "text": "Custom thing"},
            "subject": reference(f, "Patient", "pC"), "valueString": "hello"}),
        ),
        with_meta(
            json!({"resourceType": "Observation", "id": f.id("o5"), "status": "final",
            "code": {"coding": [{"system": LOINC, "code": "85354-9"}]},
            "subject": reference(f, "Patient", "pB"), "effectiveDateTime": "2024-04-01T08:30:00+02:00",
            "component": [
                {"code": {"coding": [{"system": LOINC, "code": "8480-6"}]}, "valueQuantity": {"value": 130, "system": UCUM, "code": "mm[Hg]"}},
                {"code": {"coding": [{"system": LOINC, "code": "8462-4"}]}, "valueQuantity": {"value": 85, "system": UCUM, "code": "mm[Hg]"}}]}),
        ),
        json!({"resourceType": "Condition", "id": f.id("c1"),
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006"}]},
            "subject": reference(f, "Patient", "pC"), "onsetDateTime": "2010"}),
        json!({"resourceType": "RiskAssessment", "id": f.id("r1"), "status": "final",
            "subject": reference(f, "Patient", "pA"),
            "prediction": [{"probabilityDecimal": 0.25}]}),
        json!({"resourceType": "ValueSet", "id": f.id("vs1"), "status": "active",
            "url": format!("http://example.org/fhir/ValueSet/{}/colors/warm", f.run)}),
        json!({"resourceType": "ValueSet", "id": f.id("vs2"), "status": "draft",
            "url": format!("http://example.org/fhir/ValueSet/{}/colors", f.run)}),
    ]
}

/// Every fixture a search returns (following every `next`), as sorted names, and the total
/// the first page gave.
async fn search(
    c: &Client,
    f: &Fixtures,
    query: &str,
) -> Result<(Vec<String>, Option<u64>), String> {
    let mut names = Vec::new();
    let mut seen = BTreeSet::new();
    let first = c.get(query).send().await;
    if first.status != 200 {
        return Err(first.summary());
    }
    let mut bundle = first.json().unwrap_or_default();
    let total = bundle["total"].as_u64();
    for _ in 0..100 {
        for entry in bundle["entry"].as_array().into_iter().flatten() {
            if entry["search"]["mode"] != "match" {
                continue;
            }
            let id = entry["resource"]["id"].as_str().unwrap_or_default();
            let ty = entry["resource"]["resourceType"]
                .as_str()
                .unwrap_or_default();
            if !seen.insert(format!("{ty}/{id}")) {
                return Err(format!("{ty}/{id} on two pages"));
            }
            if let Some(name) = f.name_of(id) {
                names.push(name);
            }
        }
        let Some(next) = bundle_link(&bundle, "next") else {
            break;
        };
        let reply = c.get(&next).send().await;
        if reply.status != 200 {
            return Err(format!("next page: {}", reply.summary()));
        }
        bundle = reply.json().unwrap_or_default();
    }
    names.sort();
    Ok((names, total))
}

async fn expect(c: &Client, f: &Fixtures, report: &mut Report, query: &str, expected: &[&str]) {
    let mut expected: Vec<String> = expected.iter().map(|s| (*s).to_owned()).collect();
    expected.sort();
    let got = search(c, f, query).await;
    let passed = got.as_ref().is_ok_and(|(names, _)| *names == expected);
    report.check(
        SUITE,
        format!("{} → {expected:?}", query.replace(&f.run, "…")),
        passed,
        format!("{got:?}"),
    );
}

/// A search that must be refused with a 400 OperationOutcome.
/// `expect` for each (criteria, expected fixtures) on `ty`, within the fixtures' `tag`.
async fn expect_each(
    c: &Client,
    f: &Fixtures,
    report: &mut Report,
    ty: &str,
    tag: &str,
    cases: &[(&str, &[&str])],
) {
    for (criteria, expected) in cases {
        expect(c, f, report, &format!("{ty}?{criteria}&{tag}"), expected).await;
    }
}

async fn refused(c: &Client, report: &mut Report, name: &str, query: &str, strict: bool) {
    let mut request = c.get(query);
    if strict {
        request = request.header("prefer", "handling=strict");
    }
    let reply = request.send().await;
    report.check(
        SUITE,
        name,
        reply.status == 400 && reply.is_outcome(),
        reply.summary(),
    );
}

use results::{
    handling, includes, paging_under_writes, references_and_chains, result_parameters,
    special_searches, uris_composites_missing,
};

pub async fn run(ctx: &SuiteContext, report: &mut Report) {
    let c = &ctx.client;
    let f = Fixtures {
        run: format!("{:08x}", rand::random::<u32>()),
    };
    for resource in fixtures(&f) {
        let path = format!(
            "{}/{}",
            resource["resourceType"].as_str().unwrap_or_default(),
            resource["id"].as_str().unwrap_or_default()
        );
        let reply = c.put_json(&path, &resource).send().await;
        if !reply.status.is_success() {
            report.check(SUITE, format!("set-up: {path}"), false, reply.summary());
            return;
        }
    }
    strings(c, &f, report).await;
    tokens(c, &f, report).await;
    dates_numbers_quantities(c, &f, report).await;
    references_and_chains(c, &f, report).await;
    uris_composites_missing(c, &f, report).await;
    result_parameters(c, &f, report).await;
    includes(c, &f, report).await;
    special_searches(c, &f, report).await;
    handling(c, &f, report).await;
    paging_under_writes(c, &f, report).await;
}

async fn strings(c: &Client, f: &Fixtures, report: &mut Report) {
    let menard = f.tagged("Menard");
    expect(
        c,
        f,
        report,
        &format!("Patient?family={menard}"),
        &["pA", "pB"],
    )
    .await;
    expect(
        c,
        f,
        report,
        &format!("Patient?family={}", f.tagged("MÉNARD")),
        &["pA", "pB"],
    )
    .await;
    expect(
        c,
        f,
        report,
        &format!("Patient?family={}", &menard[..5]),
        &["pA", "pB"],
    )
    .await;
    expect(
        c,
        f,
        report,
        &format!("Patient?family:exact={}", f.tagged("Ménard")),
        &["pA"],
    )
    .await;
    expect(
        c,
        f,
        report,
        &format!("Patient?family:exact={menard}"),
        &["pB"],
    )
    .await;
    expect(
        c,
        f,
        report,
        &format!("Patient?family:contains={}", &f.tagged("nard")[..]),
        &["pA", "pB"],
    )
    .await;
    expect(
        c,
        f,
        report,
        &format!("Patient?name={}", f.tagged("smi")),
        &[],
    )
    .await;
    expect(
        c,
        f,
        report,
        &format!("Patient?name={}", f.tagged("Smith")),
        &["pC"],
    )
    .await;
    expect(
        c,
        f,
        report,
        &format!(
            "Patient?family={},{}",
            f.tagged("Smith"),
            f.tagged("Menard")
        ),
        &["pA", "pB", "pC"],
    )
    .await;
    expect(
        c,
        f,
        report,
        &format!("Patient?given=zoe&family={menard}"),
        &["pA"],
    )
    .await;
    expect(
        c,
        f,
        report,
        &format!("Patient?address-city=quebec&family={menard}"),
        &["pA"],
    )
    .await;
    expect(
        c,
        f,
        report,
        &format!("Organization?name=acme%20health%20{}", f.run),
        &["oX"],
    )
    .await;
}

async fn tokens(c: &Client, f: &Fixtures, report: &mut Report) {
    let mrn = format!("urn:mrn:{}", f.run);
    expect(
        c,
        f,
        report,
        &format!("Patient?identifier={mrn}|MRN-A"),
        &["pA"],
    )
    .await;
    expect(
        c,
        f,
        report,
        &format!("Patient?identifier={mrn}|"),
        &["pA", "pB"],
    )
    .await;
    expect(
        c,
        f,
        report,
        &format!(
            "Patient?identifier=|MRN-A&_tag=urn:conformance:search|{}",
            f.run
        ),
        &[],
    )
    .await;
    expect(c, f, report, &format!("Patient?identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|MR|MRN-A&_tag=urn:conformance:search|{}", f.run), &["pA"]).await;
    let tag = format!("_tag=urn:conformance:search|{}", f.run);
    expect(
        c,
        f,
        report,
        &format!("Patient?gender=female&{tag}"),
        &["pA", "pC"],
    )
    .await;
    expect(
        c,
        f,
        report,
        &format!("Patient?gender:not=female&{tag}"),
        &["pB"],
    )
    .await;
    expect(
        c,
        f,
        report,
        &format!("Patient?deceased=true&{tag}"),
        &["pB"],
    )
    .await;
    // The official expression makes a patient without `deceased` not deceased.
    expect(
        c,
        f,
        report,
        &format!("Patient?deceased=false&{tag}"),
        &["pA", "pC"],
    )
    .await;
    expect(
        c,
        f,
        report,
        &format!("Patient?phone=555-0100&{tag}"),
        &["pA"],
    )
    .await;
    expect(
        c,
        f,
        report,
        &format!("Observation?code={LOINC}|8867-4&{tag}"),
        &["o1", "o2"],
    )
    .await;
    expect(
        c,
        f,
        report,
        &format!("Observation?code=8867-4,2339-0&{tag}"),
        &["o1", "o2", "o3"],
    )
    .await;
    expect(
        c,
        f,
        report,
        &format!("Observation?code=urn:local:{}|", f.run),
        &["o4"],
    )
    .await;
    expect(
        c,
        f,
        report,
        &format!("Observation?code:text=blood%20gluc&{tag}"),
        &["o3"],
    )
    .await;
    expect(
        c,
        f,
        report,
        &format!("Observation?code:text=heart&{tag}"),
        &["o1"],
    )
    .await;
    expect(
        c,
        f,
        report,
        &format!("Observation?category=laboratory&{tag}"),
        &["o3"],
    )
    .await;
    expect(
        c,
        f,
        report,
        &format!("Observation?status=final&category:not=vital-signs&{tag}"),
        &["o2", "o3", "o5"],
    )
    .await;
    expect(
        c,
        f,
        report,
        &format!("Observation?_id={},{}", f.id("o1"), f.id("o4")),
        &["o1", "o4"],
    )
    .await;
    refused(
        c,
        report,
        "token :in needs terminology (400)",
        &format!("Observation?code:in=http://x/vs&{tag}"),
        false,
    )
    .await;
}

async fn dates_numbers_quantities(c: &Client, f: &Fixtures, report: &mut Report) {
    let tag = format!("_tag=urn:conformance:search|{}", f.run);
    // pA 1970-05-14 (a day), pB 1970 (a year), pC 1985-11-30.
    let cases: &[(&str, &[&str])] = &[
        ("birthdate=1970", &["pA", "pB"]),
        ("birthdate=1970-05", &["pA"]),
        ("birthdate=1970-05-14", &["pA"]),
        ("birthdate=eq1970-05-14", &["pA"]),
        ("birthdate=ne1970", &["pC"]),
        ("birthdate=gt1970-06-01", &["pB", "pC"]),
        ("birthdate=lt1970-05-14", &["pB"]),
        ("birthdate=ge1970-05-14", &["pA", "pB", "pC"]),
        ("birthdate=le1970-05-14", &["pA", "pB"]),
        ("birthdate=sa1971", &["pC"]),
        ("birthdate=eb1980", &["pA", "pB"]),
        ("birthdate=ap1985-11-30", &["pC"]),
        (
            "birthdate=ge1970-01-01&birthdate=lt1971-01-01",
            &["pA", "pB"],
        ),
    ];
    expect_each(c, f, report, "Patient", &tag, cases).await;
    // Observation dates: o1 2024-01-10T10:00Z, o2 2024-03-01, o3 Feb 2024 (a period),
    // o5 2024-04-01T06:30Z, o4 none.
    let cases: &[(&str, &[&str])] = &[
        ("date=2024-02", &["o3"]),
        ("date=2024-02-15", &[]),
        ("date=ge2024-02-15", &["o2", "o3", "o5"]),
        ("date=lt2024-02-01", &["o1"]),
        ("date=2024-01-10T10:00:00Z", &["o1"]),
        ("date=2024-01-10T11:00:00%2B01:00", &["o1"]),
        ("date=2024-04-01T06:30", &["o5"]),
        ("date=sa2024-01-31", &["o2", "o3", "o5"]),
        ("date:missing=true", &["o4"]),
    ];
    expect_each(c, f, report, "Observation", &tag, cases).await;
    let encounter = format!("subject={}", f.id("pA"));
    expect(
        c,
        f,
        report,
        &format!("Encounter?date=2024-01-10&{encounter}"),
        &["e1"],
    )
    .await;
    expect(
        c,
        f,
        report,
        &format!("Encounter?date=2024-01-10T10:30:00Z&{encounter}"),
        &[],
    )
    .await;
    expect(
        c,
        f,
        report,
        &format!("Encounter?date=le2024-01-10T10:30:00Z&{encounter}"),
        &["e1"],
    )
    .await;
    // Quantities: o1 72 /min, o2 120.5 /min, o3 5.4 mmol/L.
    let cases: &[(&str, &[&str])] = &[
        ("value-quantity=72", &["o1"]),
        ("value-quantity=gt100", &["o2"]),
        ("value-quantity=lt10", &["o3"]),
        ("value-quantity=ge72", &["o1", "o2"]),
        ("value-quantity=120", &[]),
        ("value-quantity=120.5", &["o2"]),
        ("value-quantity=1.2e2", &["o2"]),
        (
            "value-quantity=5.4|http://unitsofmeasure.org|mmol/L",
            &["o3"],
        ),
        ("value-quantity=5.4||mmol/L", &["o3"]),
        ("value-quantity=72|http://unitsofmeasure.org|mmol/L", &[]),
        ("value-quantity=ne72", &["o2", "o3"]),
        ("value-quantity=ap70", &["o1"]),
    ];
    expect_each(c, f, report, "Observation", &tag, cases).await;
    let risk = format!("subject={}", f.id("pA"));
    expect(
        c,
        f,
        report,
        &format!("RiskAssessment?probability=0.25&{risk}"),
        &["r1"],
    )
    .await;
    expect(
        c,
        f,
        report,
        &format!("RiskAssessment?probability=gt0.2&{risk}"),
        &["r1"],
    )
    .await;
    expect(
        c,
        f,
        report,
        &format!("RiskAssessment?probability=lt0.2&{risk}"),
        &[],
    )
    .await;
    refused(
        c,
        report,
        "a malformed date is 400",
        &format!("Patient?birthdate=2020-13-45&{tag}"),
        false,
    )
    .await;
    refused(
        c,
        report,
        "a comparison prefix on a token is 400",
        &format!("Patient?gender=gt2020-01-01&{tag}"),
        false,
    )
    .await;
}
