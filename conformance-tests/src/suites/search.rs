//! Search: every parameter type, modifier, prefix and result parameter, chains, `_has`,
//! includes, sorting, paging (consistent under concurrent writes), compartments, `$everything`,
//! `POST _search`, system search, and strict/lenient handling.
//!
//! A fixture set of its own (ids `s<run>-…`, written with update-as-create) is searched; other
//! data on the server may match a query too and is ignored: each case compares the fixtures
//! returned with the fixtures expected, which are derived from the fixtures' own values, never
//! from the server. Every page of a result is followed.

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
    for (criteria, expected) in cases {
        expect(c, f, report, &format!("Patient?{criteria}&{tag}"), expected).await;
    }
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
    for (criteria, expected) in cases {
        expect(
            c,
            f,
            report,
            &format!("Observation?{criteria}&{tag}"),
            expected,
        )
        .await;
    }
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
    for (criteria, expected) in cases {
        expect(
            c,
            f,
            report,
            &format!("Observation?{criteria}&{tag}"),
            expected,
        )
        .await;
    }
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

async fn references_and_chains(c: &Client, f: &Fixtures, report: &mut Report) {
    let tag = format!("_tag=urn:conformance:search|{}", f.run);
    let pa = f.id("pA");
    expect(
        c,
        f,
        report,
        &format!("Observation?subject=Patient/{pa}"),
        &["o1", "o2"],
    )
    .await;
    expect(
        c,
        f,
        report,
        &format!("Observation?subject={pa}"),
        &["o1", "o2"],
    )
    .await;
    expect(
        c,
        f,
        report,
        &format!("Observation?patient={pa}"),
        &["o1", "o2"],
    )
    .await;
    expect(
        c,
        f,
        report,
        &format!("Observation?subject:Patient={pa}"),
        &["o1", "o2"],
    )
    .await;
    let absolute = format!("{}/Patient/{pa}", c.base);
    expect(
        c,
        f,
        report,
        &format!("Observation?subject={absolute}"),
        &["o1", "o2"],
    )
    .await;
    expect(
        c,
        f,
        report,
        &format!("Observation?subject=http://elsewhere.example/fhir/Patient/{pa}"),
        &[],
    )
    .await;
    expect(
        c,
        f,
        report,
        &format!(
            "Observation?subject:Patient.name={}&{tag}",
            f.tagged("Menard")
        ),
        &["o1", "o2", "o3", "o5"],
    )
    .await;
    expect(
        c,
        f,
        report,
        &format!(
            "Observation?subject:Patient.name:exact={}&{tag}",
            f.tagged("Ménard")
        ),
        &["o1", "o2"],
    )
    .await;
    expect(
        c,
        f,
        report,
        &format!("Observation?subject.gender=male&{tag}"),
        &["o3", "o5"],
    )
    .await;
    // Two levels: the observations of patients managed by an organization named "Beta…".
    expect(
        c,
        f,
        report,
        &format!(
            "Observation?subject:Patient.organization.name=beta%20clinic%20{}",
            f.run
        ),
        &["o4"],
    )
    .await;
    expect(
        c,
        f,
        report,
        &format!("Observation?encounter.status=finished&{tag}"),
        &["o1"],
    )
    .await;
    // _has, and nested: patients with a heart-rate observation; organizations managing them.
    expect(
        c,
        f,
        report,
        &format!("Patient?_has:Observation:patient:code=8867-4&{tag}"),
        &["pA"],
    )
    .await;
    expect(
        c,
        f,
        report,
        &format!("Patient?_has:Observation:subject:status=preliminary&{tag}"),
        &["pC"],
    )
    .await;
    expect(
        c,
        f,
        report,
        &format!(
            "Organization?_has:Patient:organization:_has:Observation:patient:code=8867-4&_id={}",
            f.id("oX")
        ),
        &["oX"],
    )
    .await;
    expect(
        c,
        f,
        report,
        &format!("Patient?general-practitioner.name={}", f.tagged("Grey")),
        &["pA"],
    )
    .await;
    expect(
        c,
        f,
        report,
        &format!("Organization?partof={}", f.id("oX")),
        &["oY"],
    )
    .await;
}

async fn uris_composites_missing(c: &Client, f: &Fixtures, report: &mut Report) {
    let colors = format!("http://example.org/fhir/ValueSet/{}/colors", f.run);
    expect(c, f, report, &format!("ValueSet?url={colors}"), &["vs2"]).await;
    expect(
        c,
        f,
        report,
        &format!("ValueSet?url:below={colors}"),
        &["vs1", "vs2"],
    )
    .await;
    expect(
        c,
        f,
        report,
        &format!("ValueSet?url:above={colors}/warm/extra"),
        &["vs1", "vs2"],
    )
    .await;
    let tag = format!("_tag=urn:conformance:search|{}", f.run);
    expect(
        c,
        f,
        report,
        &format!("Observation?code-value-quantity={LOINC}|8867-4$gt100&{tag}"),
        &["o2"],
    )
    .await;
    expect(
        c,
        f,
        report,
        &format!("Observation?component-code-value-quantity={LOINC}|8480-6$ge130&{tag}"),
        &["o5"],
    )
    .await;
    expect(
        c,
        f,
        report,
        &format!("Observation?component-code-value-quantity={LOINC}|8462-4$ge130&{tag}"),
        &[],
    )
    .await;
    expect(
        c,
        f,
        report,
        &format!("Observation?value-quantity:missing=true&{tag}"),
        &["o4", "o5"],
    )
    .await;
    expect(
        c,
        f,
        report,
        &format!("Observation?value-quantity:missing=false&{tag}"),
        &["o1", "o2", "o3"],
    )
    .await;
    expect(
        c,
        f,
        report,
        &format!("Patient?organization:missing=true&{tag}"),
        &["pB"],
    )
    .await;
}

async fn result_parameters(c: &Client, f: &Fixtures, report: &mut Report) {
    let tag = format!("_tag=urn:conformance:search|{}", f.run);
    // _sort, several keys and descending; order is checked on the first page itself.
    let order = |bundle: &Value| -> Vec<String> {
        bundle["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["resource"]["id"].as_str().and_then(|id| f.name_of(id)))
            .collect()
    };
    // Descending sorts by the latest instant a value covers: 1970 (a year) ends after
    // 1970-05-14 (a day).
    let sorted = c
        .get(&format!("Patient?{tag}&_sort=-birthdate"))
        .send()
        .await;
    let names = order(&sorted.json().unwrap_or_default());
    report.check(
        SUITE,
        "_sort=-birthdate",
        names == ["pC", "pB", "pA"],
        format!("{names:?}"),
    );
    let sorted = c
        .get(&format!("Patient?{tag}&_sort=gender,-birthdate"))
        .send()
        .await;
    let names = order(&sorted.json().unwrap_or_default());
    report.check(
        SUITE,
        "_sort=gender,-birthdate",
        names == ["pC", "pA", "pB"],
        format!("{names:?}"),
    );
    let sorted = c.get(&format!("Observation?{tag}&_sort=date")).send().await;
    let names = order(&sorted.json().unwrap_or_default());
    report.check(
        SUITE,
        "_sort=date (no value last)",
        names == ["o1", "o3", "o2", "o5", "o4"],
        format!("{names:?}"),
    );
    // _count and paging: every page followed, nothing twice.
    let paged = search(c, f, &format!("Observation?{tag}&_count=2")).await;
    report.check(
        SUITE,
        "_count=2 pages through all five",
        paged
            .as_ref()
            .is_ok_and(|(n, total)| n.len() == 5 && total.is_none_or(|t| t == 5)),
        format!("{paged:?}"),
    );
    let count_only = c.get(&format!("Observation?{tag}&_count=0")).send().await;
    let body = count_only.json().unwrap_or_default();
    report.check(
        SUITE,
        "_count=0 gives the total and no entries",
        body["total"] == 5
            && body["entry"]
                .as_array()
                .is_none_or(|e| e.iter().all(|e| e["search"]["mode"] != "match")),
        count_only.summary(),
    );
    let summary_count = c
        .get(&format!("Observation?{tag}&_summary=count"))
        .send()
        .await;
    let body = summary_count.json().unwrap_or_default();
    report.check(
        SUITE,
        "_summary=count",
        body["total"] == 5 && body.get("entry").is_none(),
        summary_count.summary(),
    );
    let total = c
        .get(&format!("Observation?{tag}&_total=accurate&_count=1"))
        .send()
        .await;
    report.check(
        SUITE,
        "_total=accurate counts every match",
        total.json().unwrap_or_default()["total"] == 5,
        total.summary(),
    );
    let none = c
        .get(&format!("Observation?{tag}&_total=none&_count=1"))
        .send()
        .await;
    let body = none.json().unwrap_or_default();
    report.check(
        SUITE,
        "_total=none: no total",
        none.status == 200 && body.get("total").is_none_or(|t| t == 5),
        none.summary(),
    );
    // _summary=true keeps summary elements; _elements keeps the named ones; both mark it.
    let summary = c
        .get(&format!("Patient?_id={}&_summary=true", f.id("pA")))
        .send()
        .await;
    let resource = summary.json().unwrap_or_default()["entry"][0]["resource"].clone();
    let subsetted = |r: &Value| {
        r["meta"]["tag"]
            .as_array()
            .is_some_and(|tags| tags.iter().any(|t| t["code"] == "SUBSETTED"))
    };
    report.check(
        SUITE,
        "_summary=true keeps summary elements and says it is subsetted",
        resource["name"].is_array()
            && resource["birthDate"] == "1970-05-14"
            && subsetted(&resource),
        format!("{resource}"),
    );
    let elements = c
        .get(&format!("Patient?_id={}&_elements=birthDate", f.id("pA")))
        .send()
        .await;
    let resource = elements.json().unwrap_or_default()["entry"][0]["resource"].clone();
    report.check(
        SUITE,
        "_elements keeps the named elements",
        resource["birthDate"] == "1970-05-14"
            && resource.get("name").is_none()
            && subsetted(&resource),
        format!("{resource}"),
    );
    let data = c
        .get(&format!("Patient?_id={}&_summary=data", f.id("pA")))
        .send()
        .await;
    let resource = data.json().unwrap_or_default()["entry"][0]["resource"].clone();
    report.check(
        SUITE,
        "_summary=data keeps the data",
        resource["birthDate"] == "1970-05-14" && resource.get("text").is_none(),
        format!("{resource}"),
    );
    // _lastUpdated, _tag, _profile, _source.
    expect(
        c,
        f,
        report,
        &format!("Patient?{tag}&_lastUpdated=gt2000-01-01"),
        &["pA", "pB", "pC"],
    )
    .await;
    expect(
        c,
        f,
        report,
        &format!("Patient?{tag}&_lastUpdated=lt2000-01-01"),
        &[],
    )
    .await;
}

async fn includes(c: &Client, f: &Fixtures, report: &mut Report) {
    let modes = |bundle: &Value| -> (Vec<String>, Vec<String>) {
        let mut matched = Vec::new();
        let mut included = Vec::new();
        for e in bundle["entry"].as_array().into_iter().flatten() {
            let name = e["resource"]["id"]
                .as_str()
                .and_then(|id| f.name_of(id))
                .unwrap_or_default();
            match e["search"]["mode"].as_str() {
                Some("match") => matched.push(name),
                Some("include") => included.push(name),
                _ => {}
            }
        }
        matched.sort();
        included.sort();
        (matched, included)
    };
    let pa = f.id("pA");
    let cases: &[(String, &[&str], &[&str])] = &[
        (
            format!("Observation?subject={pa}&_include=Observation:subject"),
            &["o1", "o2"],
            &["pA"],
        ),
        (
            format!(
                "Observation?subject={pa}&_include=Observation:subject&_include=Observation:encounter"
            ),
            &["o1", "o2"],
            &["e1", "pA"],
        ),
        (
            format!("Observation?_id={}&_include=Observation:*", f.id("o1")),
            &["o1"],
            &["drP", "e1", "pA"],
        ),
        (
            format!("Patient?_id={pa}&_revinclude=Observation:subject"),
            &["pA"],
            &["o1", "o2"],
        ),
        (
            format!(
                "Observation?_id={}&_include=Observation:subject&_include:iterate=Patient:organization",
                f.id("o4")
            ),
            &["o4"],
            &["oY", "pC"],
        ),
        (
            format!(
                "Observation?_id={}&_include=Observation:subject:Practitioner",
                f.id("o1")
            ),
            &["o1"],
            &[],
        ),
    ];
    for (query, matched, included) in cases {
        let reply = c.get(query).send().await;
        let got = modes(&reply.json().unwrap_or_default());
        report.check(
            SUITE,
            format!(
                "{} → {matched:?} + {included:?}",
                query.replace(&f.run, "…")
            ),
            reply.status == 200 && got.0 == *matched && got.1 == *included,
            format!("{got:?} {}", reply.status),
        );
    }
}

async fn special_searches(c: &Client, f: &Fixtures, report: &mut Report) {
    let pa = f.id("pA");
    expect(
        c,
        f,
        report,
        &format!("Patient/{pa}/Observation"),
        &["o1", "o2"],
    )
    .await;
    expect(
        c,
        f,
        report,
        &format!("Patient/{pa}/Observation?value-quantity=gt100"),
        &["o2"],
    )
    .await;
    expect(
        c,
        f,
        report,
        &format!("Patient/{pa}/*"),
        &["e1", "o1", "o2", "pA", "r1"],
    )
    .await;
    expect(
        c,
        f,
        report,
        &format!("Patient/{pa}/$everything"),
        &["e1", "o1", "o2", "pA", "r1"],
    )
    .await;
    expect(
        c,
        f,
        report,
        &format!("Patient/{pa}/$everything?_type=Observation,Encounter"),
        &["e1", "o1", "o2"],
    )
    .await;
    expect(
        c,
        f,
        report,
        &format!("Patient/{pa}/$everything?_since=2000-01-01T00:00:00Z&_count=2"),
        &["e1", "o1", "o2", "pA", "r1"],
    )
    .await;
    let tag = format!("_tag=urn:conformance:search|{}", f.run);
    expect(
        c,
        f,
        report,
        &format!("?_type=Patient,Observation&{tag}"),
        &["o1", "o2", "o3", "o4", "o5", "pA", "pB", "pC"],
    )
    .await;
    // POST _search, form-encoded.
    let posted = c
        .request(reqwest::Method::POST, "Patient/_search")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("gender=male&_tag=urn:conformance:search%7C{}", f.run).into_bytes())
        .send()
        .await;
    let names: Vec<String> = posted.json().unwrap_or_default()["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["resource"]["id"].as_str().and_then(|id| f.name_of(id)))
        .collect();
    report.check(
        SUITE,
        "POST Patient/_search (form-encoded)",
        posted.status == 200 && names == ["pB"],
        posted.summary(),
    );
}

async fn handling(c: &Client, f: &Fixtures, report: &mut Report) {
    let tag = format!("_tag=urn:conformance:search|{}", f.run);
    let lenient = c
        .get(&format!(
            "Patient?{tag}&_totalMethod=count&nonsense=1&_format=json&_pretty=true"
        ))
        .send()
        .await;
    let body = lenient.json().unwrap_or_default();
    let outcome = body["entry"].as_array().into_iter().flatten().any(|e| {
        e["search"]["mode"] == "outcome" && e["resource"]["resourceType"] == "OperationOutcome"
    });
    let self_link = bundle_link(&body, "self").unwrap_or_default();
    report.check(
        SUITE,
        "without Prefer, unknown parameters are ignored, reported and left out of self",
        lenient.status == 200
            && outcome
            && !self_link.contains("nonsense")
            && !self_link.contains("_totalMethod"),
        lenient.summary(),
    );
    refused(
        c,
        report,
        "Prefer: handling=strict refuses an unknown parameter (400)",
        &format!("Patient?{tag}&nonsense=1"),
        true,
    )
    .await;
    let strict_known = c
        .get(&format!("Patient?{tag}&_format=json"))
        .header("prefer", "handling=strict")
        .send()
        .await;
    report.check(
        SUITE,
        "_format is never an unknown parameter",
        strict_known.status == 200,
        strict_known.summary(),
    );
    refused(
        c,
        report,
        "_count=-1 is 400",
        &format!("Patient?{tag}&_count=-1"),
        false,
    )
    .await;
    refused(
        c,
        report,
        "an unknown modifier is 400 even leniently",
        &format!("Patient?{tag}&family:fuzzy=x"),
        false,
    )
    .await;
    refused(
        c,
        report,
        "_sort on an unknown parameter is 400 (strict)",
        &format!("Patient?{tag}&_sort=nonsense"),
        true,
    )
    .await;
    // Hostile values are data, never operators or patterns.
    for hostile in [
        "%7B%22%24gt%22%3A%22%22%7D",
        "%24where",
        ".*",
        "(a%2B)%2B%24",
        "%5C",
    ] {
        let reply = c
            .get(&format!("Patient?family={hostile}&{tag}"))
            .send()
            .await;
        let count = reply
            .json()
            .and_then(|b| b["entry"].as_array().map(|e| e.len()))
            .unwrap_or(0);
        report.check(
            SUITE,
            format!("family={hostile} matches nothing of ours"),
            reply.status == 200 && count == 0,
            reply.summary(),
        );
    }
    let many: Vec<String> = (0..5_000).map(|i| format!("x{i}")).collect();
    let wide = c
        .request(reqwest::Method::POST, "Patient/_search")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("family={}", many.join(",")).into_bytes())
        .send()
        .await;
    report.check(
        SUITE,
        "a 5,000-value OR list is refused (400 too-costly)",
        wide.status == 400 && wide.is_outcome(),
        wide.summary(),
    );
}

/// Pages stay consistent while resources matching the search are created and updated
/// between them: the pages together are exactly the matches at the first page.
async fn paging_under_writes(c: &Client, f: &Fixtures, report: &mut Report) {
    let family = f.tagged("Paging");
    let mut expected = Vec::new();
    for n in 0..7 {
        let id = f.id(&format!("page{n}"));
        let body = json!({"resourceType": "Patient", "id": id, "name": [{"family": family}]});
        c.put_json(&format!("Patient/{id}"), &body).send().await;
        expected.push(format!("page{n}"));
    }
    let first = c
        .get(&format!("Patient?family={family}&_count=3"))
        .send()
        .await;
    let mut bundle = first.json().unwrap_or_default();
    let mut seen = Vec::new();
    for round in 0..10 {
        for e in bundle["entry"].as_array().into_iter().flatten() {
            if let Some(name) = e["resource"]["id"].as_str().and_then(|id| f.name_of(id)) {
                seen.push(name);
            }
        }
        // Between pages: a new match, a match renamed away, and one deleted.
        let new_id = f.id(&format!("late{round}"));
        c.put_json(
            &format!("Patient/{new_id}"),
            &json!({"resourceType": "Patient", "id": new_id, "name": [{"family": family}]}),
        )
        .send()
        .await;
        if round == 0 {
            let moved = f.id("page6");
            c.put_json(
                &format!("Patient/{moved}"),
                &json!({"resourceType": "Patient", "id": moved, "name": [{"family": "Elsewhere"}]}),
            )
            .send()
            .await;
            c.delete(&format!("Patient/{}", f.id("page5"))).send().await;
        }
        let Some(next) = bundle_link(&bundle, "next") else {
            break;
        };
        bundle = c.get(&next).send().await.json().unwrap_or_default();
    }
    seen.sort();
    let unique: BTreeSet<&String> = seen.iter().collect();
    report.check(
        SUITE,
        "pages are the matches at the first page, while writes go on",
        seen == expected && unique.len() == seen.len(),
        format!("{seen:?}"),
    );
}
