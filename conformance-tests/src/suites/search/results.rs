//! Search, continued: references and chains, uris, composites and `:missing`, the result
//! parameters, includes, special searches, handling modes and paging under writes.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use super::{Fixtures, LOINC, SUITE, expect, refused, search};
use crate::client::Client;
use crate::report::Report;
use crate::suites::bundle_link;

pub(super) async fn references_and_chains(c: &Client, f: &Fixtures, report: &mut Report) {
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

pub(super) async fn uris_composites_missing(c: &Client, f: &Fixtures, report: &mut Report) {
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

pub(super) async fn result_parameters(c: &Client, f: &Fixtures, report: &mut Report) {
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
    let first = total.json().unwrap_or_default();
    report.check(
        SUITE,
        "_total=accurate counts every match",
        first["total"] == 5,
        total.summary(),
    );
    // A later page gives the same total as the first (same snapshot, same matches).
    let later = match bundle_link(&first, "next") {
        Some(next) => c.get(&next).send().await.json().unwrap_or_default(),
        None => Value::Null,
    };
    report.check(
        SUITE,
        "a later page carries the first page's total",
        later["total"] == 5 && later["entry"].as_array().is_some_and(|e| e.len() == 1),
        format!("total {}", later["total"]),
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

pub(super) async fn includes(c: &Client, f: &Fixtures, report: &mut Report) {
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

pub(super) async fn special_searches(c: &Client, f: &Fixtures, report: &mut Report) {
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

pub(super) async fn handling(c: &Client, f: &Fixtures, report: &mut Report) {
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
pub(super) async fn paging_under_writes(c: &Client, f: &Fixtures, report: &mut Report) {
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
