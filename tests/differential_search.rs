//! The two IndexStores must answer every search identically: the official example records are
//! loaded into a repository over each (embedded redb, MongoDB), a corpus of several hundred
//! searches is generated from the values those records hold (every parameter type, modifiers,
//! prefixes, `:missing`, chains, `_has`, `_sort`, includes), and each search is paged to its
//! end on both: the same matches, in the same order, with the same totals and includes.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use conformance_tests::suites::examples::DEFINITION_TYPES;
use intellihealth::auth::Principal;
use intellihealth::fhir::json::{self, Json};
use intellihealth::fhir::resource::ResourceType;
use intellihealth::fhir::validate::Handling;
use intellihealth::index::IndexStore;
use intellihealth::index::embedded::EmbeddedIndex;
use intellihealth::index::mongo::MongoIndex;
use intellihealth::repository::search::{NextPage, PageRequest, SearchScope};
use intellihealth::repository::{Precondition, Repository};
use intellihealth::search::entries::{Value, extract};
use intellihealth::search::params::{ParamType, Registry};
use intellihealth::search::query::{Strictness, parse};
use intellihealth::vault::local::LocalBlobStore;
use intellihealth::vault::{MasterKey, Vault};
use mongodb::bson;

const BASE: &str = "http://differential.example/fhir";

fn repository(index: Arc<dyn IndexStore>, blobs_dir: &std::path::Path) -> Repository {
    let blobs = Arc::new(LocalBlobStore::open(blobs_dir).unwrap());
    let vault = Arc::new(Vault::new(MasterKey::from_bytes([9; 32]), index.clone()));
    Repository::new(index, blobs, vault)
}

/// The official example records: (type, id, body).
fn examples() -> Vec<(ResourceType, String, Vec<u8>)> {
    let dir = conformance_tests::default_examples_dir();
    assert!(
        dir.join("Patient-example.json").is_file(),
        "the official examples are missing at {}: run scripts/test",
        dir.display()
    );
    let mut out = Vec::new();
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    names.sort();
    for path in names {
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        let Ok(resource) = json::parse(&bytes) else {
            continue;
        };
        let (Some(ty), Some(id)) = (
            resource.get("resourceType").and_then(Json::as_str),
            resource.get("id").and_then(Json::as_str),
        ) else {
            continue;
        };
        // Definition types and Bundles are not example records.
        if ty == "Bundle" || DEFINITION_TYPES.contains(&ty) {
            continue;
        }
        let Ok(ty) = ResourceType::parse(ty) else {
            continue;
        };
        out.push((ty, id.to_owned(), bytes));
    }
    out
}

/// A date as a search value of day precision, from milliseconds.
fn day(millis: f64) -> Option<String> {
    if !(-62_000_000_000_000.0..253_000_000_000_000.0).contains(&millis) {
        return None;
    }
    Some(intellihealth::fhir::instant::format_instant(millis as i64)[..10].to_owned())
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace(',', "\\,")
        .replace('|', "\\|")
        .replace('$', "\\$")
}

/// `key=value` with the value form-encoded, as a client would send it.
fn pair(key: &str, value: &str) -> String {
    let encoded: String = form_urlencoded::byte_serialize(value.as_bytes()).collect();
    format!("{key}={encoded}")
}

/// Searches made from the values the records hold.
fn corpus(records: &[(ResourceType, String, Json)]) -> Vec<(ResourceType, String)> {
    let registry = Registry::r4();
    let mut queries: BTreeSet<(ResourceType, String)> = BTreeSet::new();
    let mut add = |ty: ResourceType, query: String| {
        queries.insert((ty, query));
    };
    for (n, (ty, _, resource)) in records.iter().enumerate() {
        // A spread of records, not all of them: every type still appears.
        if n % 3 != 0 {
            continue;
        }
        let entries = extract(registry, ty.as_str(), resource);
        for entry in entries.iter().take(12) {
            let p = entry.param.as_str();
            let kind = registry.param(ty.as_str(), p).map(|d| d.kind);
            match (&entry.value, kind) {
                (Value::Str { n, x }, _) => {
                    let prefix: String = n.chars().take(3).collect();
                    add(*ty, pair(p, &escape(&prefix)));
                    add(*ty, pair(&format!("{p}:exact"), &escape(x)));
                    if n.chars().count() > 4 {
                        let middle: String = n.chars().skip(1).take(3).collect();
                        add(*ty, pair(&format!("{p}:contains"), &escape(&middle)));
                    }
                }
                (Value::Token { s, c: Some(c) }, _) => {
                    add(*ty, pair(p, &escape(c)));
                    match s {
                        Some(s) => {
                            add(*ty, pair(p, &format!("{}|{}", escape(s), escape(c))));
                            add(*ty, pair(p, &format!("{}|", escape(s))));
                        }
                        None => add(*ty, pair(p, &format!("|{}", escape(c)))),
                    }
                    add(*ty, pair(&format!("{p}:not"), &escape(c)));
                }
                (Value::Text { n }, _) => {
                    let prefix: String = n.chars().take(4).collect();
                    add(*ty, pair(&format!("{p}:text"), &escape(&prefix)));
                }
                (Value::Ref { r, .. }, _) if !r.contains("://") => {
                    add(*ty, pair(p, &escape(r)));
                    if let Some((target, id)) = r.split_once('/') {
                        add(*ty, pair(p, &escape(id)));
                        if target == "Patient" {
                            add(*ty, pair(&format!("{p}:Patient.gender"), "female"));
                        }
                    }
                }
                (Value::Range { lo, hi }, Some(ParamType::Date)) => {
                    if let Some(d) = day(*lo) {
                        for prefix in ["", "gt", "lt", "ge", "le", "sa", "eb", "ne"] {
                            add(*ty, pair(p, &format!("{prefix}{d}")));
                        }
                        add(*ty, pair(p, &d[..4]));
                    }
                    if let Some(d) = day(*hi) {
                        add(*ty, pair(p, &format!("ap{d}")));
                    }
                }
                (Value::Range { lo, .. }, Some(ParamType::Number))
                | (Value::Quantity { lo, .. }, _) => {
                    for prefix in ["", "gt", "lt", "ge", "le", "ne", "ap"] {
                        add(*ty, pair(p, &format!("{prefix}{lo}")));
                    }
                    if let Value::Quantity {
                        s: Some(s),
                        c: Some(c),
                        ..
                    } = &entry.value
                    {
                        add(*ty, pair(p, &format!("{lo}|{}|{}", escape(s), escape(c))));
                    }
                }
                (Value::Uri { u }, _) => {
                    add(*ty, pair(p, &escape(u)));
                    if let Some((head, _)) = u.rsplit_once('/') {
                        add(*ty, pair(&format!("{p}:below"), &escape(head)));
                    }
                }
                _ => {}
            }
            add(*ty, format!("{p}:missing=false"));
            add(*ty, format!("{p}:missing=true"));
        }
    }
    // Result parameters and reverse chains on the types most examples have.
    for ty in ["Patient", "Observation", "Encounter", "Condition"] {
        let t = ResourceType::parse(ty).unwrap();
        add(t, "_sort=_id&_count=7".into());
        add(t, "_sort=-_lastUpdated&_count=4".into());
        add(t, "_count=3".into());
        add(t, "_count=0".into());
    }
    for query in [
        "_sort=birthdate,-family&_count=5",
        "_sort=-birthdate&_count=5",
        "gender=female&_sort=family",
        "_has:Observation:patient:status=final",
        "_has:Observation:subject:code=http://loinc.org%7C8867-4",
        "_revinclude=Observation:subject&_count=5",
        "birthdate=ge1950&birthdate=lt2000",
        "name=pet,chal,eve",
        "organization:missing=true&gender=male",
    ] {
        add(ResourceType::parse("Patient").unwrap(), query.into());
    }
    for query in [
        "_sort=-date&_count=6",
        "_sort=code,date&_count=6",
        "subject:Patient.name=pet",
        "patient.gender=male",
        "_include=Observation:subject&_count=10",
        "_include=Observation:*&_count=5",
        "value-quantity=gt100&_sort=-value-quantity",
        "code-value-quantity=http://loinc.org%7C8480-6%24gt100",
        "status=final&category=vital-signs&_count=4",
    ] {
        add(ResourceType::parse("Observation").unwrap(), query.into());
    }
    queries.into_iter().collect()
}

/// Every page of one search on one repository: the matches (type/id, in order), the
/// included (as a set), the first page's total.
async fn run_all_pages(
    repo: &Repository,
    ty: ResourceType,
    query: &str,
) -> Result<(Vec<String>, BTreeSet<String>, Option<usize>), String> {
    let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let registry = repo.registry();
    let request = parse(&registry, Some(ty), &pairs, Strictness::Lenient)
        .map_err(|e| format!("parse: {e}"))?;
    let scope = SearchScope {
        types: vec![ty],
        patient: None,
    };
    let count = request.count.unwrap_or(50);
    let mut page = PageRequest {
        count,
        ..PageRequest::default()
    };
    let (mut matches, mut included, mut total) = (Vec::new(), BTreeSet::new(), None);
    for n in 0..200 {
        let result = repo
            .search(&Principal::internal(), &scope, &request, &page, BASE)
            .await
            .map_err(|e| e.to_string())?;
        if n == 0 {
            total = result.total;
        }
        matches.extend(
            result
                .matches
                .iter()
                .map(|v| format!("{}/{}", v.record.resource_type, v.record.id)),
        );
        included.extend(
            result
                .included
                .iter()
                .map(|v| format!("{}/{}", v.record.resource_type, v.record.id)),
        );
        page.snapshot = Some(result.snapshot);
        match result.next {
            Some(NextPage::After(rt, id)) => {
                page.after = Some((rt, id));
                page.offset += count;
            }
            Some(NextPage::Offset(offset)) => page.offset = offset,
            None => break,
        }
        if count == 0 {
            break;
        }
    }
    Ok((matches, included, total))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_index_stores_answer_every_search_identically() {
    let dir = tempfile::tempdir().unwrap();
    let embedded: Arc<dyn IndexStore> = Arc::new(
        EmbeddedIndex::open(
            &dir.path().join("index"),
            intellihealth::index::embedded::AtRestKey::from_bytes([5; 32]),
        )
        .unwrap(),
    );
    let mongo: Arc<dyn IndexStore> = Arc::new(
        MongoIndex::connect(
            &common::services::fresh_database_uri("search_differential"),
            Duration::from_secs(30),
        )
        .await
        .unwrap(),
    );
    let a = repository(embedded, &dir.path().join("blobs-a"));
    let b = repository(mongo, &dir.path().join("blobs-b"));
    let principal = Principal::internal();
    let mut records = Vec::new();
    for (ty, id, body) in examples() {
        let on_a = a
            .update(
                &principal,
                ty,
                &id,
                body.clone(),
                Precondition::None,
                Handling::Lenient,
            )
            .await;
        let on_b = b
            .update(
                &principal,
                ty,
                &id,
                body.clone(),
                Precondition::None,
                Handling::Lenient,
            )
            .await;
        assert_eq!(
            on_a.is_ok(),
            on_b.is_ok(),
            "{ty}/{id} stored on one store only"
        );
        if let Ok(written) = on_a {
            let stored = json::parse(written.version.content.as_deref().unwrap()).unwrap();
            records.push((ty, id, stored));
        }
    }
    assert!(
        records.len() > 600,
        "only {} example records stored",
        records.len()
    );
    let queries = corpus(&records);
    assert!(
        queries.len() >= 300,
        "a corpus of only {} searches",
        queries.len()
    );
    let (mut compared, mut non_empty) = (0usize, 0usize);
    let mut failures = Vec::new();
    for (ty, query) in &queries {
        let on_a = run_all_pages(&a, *ty, query).await;
        let on_b = run_all_pages(&b, *ty, query).await;
        match (&on_a, &on_b) {
            (Ok(x), Ok(y)) if x == y => {
                compared += 1;
                if !x.0.is_empty() {
                    non_empty += 1;
                }
            }
            // Both refusing the same search the same way is agreement too.
            (Err(x), Err(y)) if x == y => compared += 1,
            _ => failures.push(format!(
                "{ty}?{query}\n  embedded: {on_a:?}\n  mongodb:  {on_b:?}"
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{} searches differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(compared >= 300, "{compared} searches compared");
    assert!(
        non_empty * 2 >= compared,
        "only {non_empty} of {compared} searches found anything: the corpus tests little"
    );
}

/// Every plan node of an `explain` answer, depth first.
fn stages(plan: &bson::Document, out: &mut Vec<bson::Document>) {
    out.push(plan.clone());
    for key in ["inputStage", "outerStage", "innerStage"] {
        if let Ok(inner) = plan.get_document(key) {
            stages(inner, out);
        }
    }
    if let Ok(inputs) = plan.get_array("inputStages") {
        for inner in inputs.iter().filter_map(bson::Bson::as_document) {
            stages(inner, out);
        }
    }
}

/// The ten most common search shapes (and a search with no criterion) are answered from an
/// index on MongoDB: the winning plan scans the index named for it, never the collection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn common_search_shapes_are_index_backed_on_mongodb() {
    let dir = tempfile::tempdir().unwrap();
    let mongo = Arc::new(
        MongoIndex::connect(
            &common::services::fresh_database_uri("search_explain"),
            Duration::from_secs(30),
        )
        .await
        .unwrap(),
    );
    let repo = repository(mongo.clone(), &dir.path().join("blobs"));
    let shapes = [
        "Patient",
        "Observation",
        "Encounter",
        "Condition",
        "MedicationRequest",
    ];
    let mut stored = 0;
    for (ty, id, body) in examples() {
        if shapes.contains(&ty.as_str()) {
            stored += repo
                .update(
                    &Principal::internal(),
                    ty,
                    &id,
                    body,
                    Precondition::None,
                    Handling::Lenient,
                )
                .await
                .is_ok() as usize;
        }
    }
    assert!(stored > 100, "only {stored} examples stored");
    let searches = [
        ("Patient", "name=pet", Some("type_1_keys_1")),
        (
            "Patient",
            "identifier=urn:oid:1.2.36.146.595.217.0.1%7C12345",
            Some("type_1_keys_1"),
        ),
        (
            "Patient",
            "family=chalmers&given=peter",
            Some("type_1_keys_1"),
        ),
        ("Patient", "birthdate=lt1950", Some("type_1_keys_1")),
        ("Patient", "_id=example", Some("type_1_keys_1")),
        (
            "Observation",
            "patient=Patient/example&code=http://loinc.org%7C8867-4",
            Some("type_1_keys_1"),
        ),
        (
            "Observation",
            "subject=Patient/example&date=ge2010",
            Some("type_1_keys_1"),
        ),
        ("Observation", "value-quantity=gt100", Some("type_1_keys_1")),
        (
            "Observation",
            "_lastUpdated=gt2020-01-01",
            Some("type_1_keys_1"),
        ),
        (
            "Encounter",
            "patient=Patient/example",
            Some("type_1_keys_1"),
        ),
        (
            "Condition",
            "patient=Patient/example&clinical-status=active",
            Some("type_1_keys_1"),
        ),
        (
            "MedicationRequest",
            "patient=Patient/example&status=active",
            Some("type_1_keys_1"),
        ),
        ("Observation", "", None),
    ];
    let registry = Registry::r4();
    for (ty, query, index) in searches {
        let ty = ResourceType::parse(ty).unwrap();
        let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let request = parse(registry, Some(ty), &pairs, Strictness::Strict).unwrap();
        let planned = intellihealth::search::plan::plan(&request.criteria, BASE).unwrap();
        let ranges = intellihealth::repository::search::key_ranges(planned.narrowing());
        assert_eq!(
            ranges.is_some(),
            index.is_some(),
            "{ty}?{query}: narrowed by keys: {ranges:?}"
        );
        let plans = mongo
            .explain_candidates(&intellihealth::index::CandidateQuery {
                resource_types: vec![ty.as_str().to_owned()],
                key_ranges: ranges,
                patient: None,
                after: None,
                limit: 50,
            })
            .await
            .unwrap();
        assert!(!plans.is_empty(), "{ty}?{query}: no find");
        let expected = index.unwrap_or("type_1__id_1");
        for plan in plans {
            let winning = plan
                .get_document("queryPlanner")
                .and_then(|p| p.get_document("winningPlan"))
                .unwrap_or_else(|e| panic!("{ty}?{query}: no winning plan ({e}): {plan}"));
            let mut nodes = Vec::new();
            stages(winning, &mut nodes);
            let names: Vec<&str> = nodes
                .iter()
                .filter_map(|n| n.get_str("stage").ok())
                .collect();
            assert!(
                !names.contains(&"COLLSCAN"),
                "{ty}?{query} scans the collection: {winning}"
            );
            assert!(
                nodes.iter().any(|n| n.get_str("stage") == Ok("IXSCAN")
                    && n.get_str("indexName") == Ok(expected)),
                "{ty}?{query} does not scan {expected}: {winning}"
            );
        }
    }
    // A patient's compartment (`$everything`, a `patient/` scope) is found by its own key.
    let ranges = intellihealth::repository::search::candidate_ranges(None, Some("example"));
    let plans = mongo
        .explain_candidates(&intellihealth::index::CandidateQuery {
            resource_types: vec!["Observation".to_owned()],
            key_ranges: ranges,
            patient: Some("example".to_owned()),
            after: None,
            limit: 50,
        })
        .await
        .unwrap();
    for plan in plans {
        let winning = plan
            .get_document("queryPlanner")
            .and_then(|p| p.get_document("winningPlan"))
            .unwrap();
        let mut nodes = Vec::new();
        stages(winning, &mut nodes);
        assert!(
            nodes.iter().any(|n| n.get_str("stage") == Ok("IXSCAN")
                && n.get_str("indexName") == Ok("type_1_keys_1")),
            "a compartment search does not scan type_1_keys_1: {winning}"
        );
    }

    // Bounded in time: a search past the limit is refused as too costly, whatever it is.
    let hurried = repository(mongo.clone(), &dir.path().join("blobs"))
        .with_search_time_limit(Duration::from_micros(1));
    let pairs = vec![
        ("_revinclude".to_owned(), "*".to_owned()),
        ("_sort".to_owned(), "-birthdate".to_owned()),
        ("_total".to_owned(), "accurate".to_owned()),
    ];
    let ty = ResourceType::parse("Patient").unwrap();
    let request = parse(registry, Some(ty), &pairs, Strictness::Strict).unwrap();
    let scope = SearchScope {
        types: vec![ty],
        patient: None,
    };
    let first_page = PageRequest {
        count: 20,
        ..PageRequest::default()
    };
    let refused = hurried
        .search(&Principal::internal(), &scope, &request, &first_page, BASE)
        .await
        .map(|page| page.matches.len())
        .unwrap_err();
    assert!(
        refused.to_string().contains("took longer than"),
        "{refused}"
    );
    // The same search without the bound answers.
    let answered = repo
        .search(&Principal::internal(), &scope, &request, &first_page, BASE)
        .await
        .unwrap();
    assert!(!answered.matches.is_empty());
    assert!(answered.total.is_some_and(|t| t >= answered.matches.len()));
}
