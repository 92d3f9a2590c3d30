//! Search under `patient/` scopes: every result, count, include and page is confined to the
//! token's patient, and a granular scope (`?category=laboratory`) narrows searches as it
//! narrows reads. The expected answers come from what `seed` wrote (one laboratory
//! Observation per patient, one vital-signs Observation of the patient user), compared with
//! what the runner's own unconfined token finds.

use serde_json::Value;

use super::{SUITE, SmartFixtures, with_token};
use crate::client::Client;
use crate::report::Report;
use crate::suites::SuiteContext;

/// `Type/id` of every entry of `bundle` in search mode `mode` (`match`, `include`).
fn entries(bundle: &Value, mode: &str) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .filter(|e| e["search"]["mode"] == mode)
                .filter_map(|e| {
                    let r = &e["resource"];
                    Some(format!(
                        "{}/{}",
                        r["resourceType"].as_str()?,
                        r["id"].as_str()?
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The patients referenced as `subject` by the matches of `bundle`.
fn subjects(bundle: &Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .filter(|e| e["search"]["mode"] == "match")
                .filter_map(|e| e["resource"]["subject"]["reference"].as_str())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Searches with `token` (the patient user's `patient/*.rs`) and `granular` (its
/// `patient/Observation.rs?category=laboratory`, if it was granted).
pub(super) async fn patient_scoped_search(
    ctx: &SuiteContext,
    fx: &SmartFixtures,
    token: &str,
    granular: Option<&str>,
    observations: &[String],
    report: &mut Report,
) {
    let own = format!("Patient/{}", fx.patient_user.patient_id);
    let other = format!("Patient/{}", fx.other_patient_id);
    let mine = with_token(ctx, token);
    // What the seed wrote, as the unconfined runner sees it: the patients' own Observations.
    let everyone = search_bundle(&ctx.client, "Observation?code:text=smart&_count=1000").await;
    let all_subjects = subjects(&everyone);
    let own_count = all_subjects.iter().filter(|s| **s == own).count();
    report.check(
        SUITE,
        "set-up: the seed's Observations are found by an unconfined token",
        own_count == 2 && all_subjects.contains(&other),
        format!("{all_subjects:?}"),
    );

    let search = mine
        .get("Observation?code:text=smart&_total=accurate&_count=1000")
        .send()
        .await;
    let bundle = search.json().unwrap_or_default();
    let found = subjects(&bundle);
    report.check(
        SUITE,
        "a patient token's search returns only its patient's resources, with a total of them",
        search.status == 200
            && found.len() == own_count
            && found.iter().all(|s| *s == own)
            && bundle["total"] == own_count,
        format!("{found:?}, total {}", bundle["total"]),
    );

    let counted = search_bundle(&mine, "Observation?code:text=smart&_summary=count").await;
    report.check(
        SUITE,
        "a patient token's _summary=count counts only its patient's resources",
        counted["total"] == own_count,
        format!("total {}", counted["total"]),
    );

    let paged = search_bundle(&mine, "Observation?code:text=smart&_count=1").await;
    report.check(
        SUITE,
        "a patient token's first page is full (filtering happens inside the query)",
        subjects(&paged) == [own.clone()],
        format!("{:?}", subjects(&paged)),
    );

    let asked_for_other = mine
        .get(&format!("Observation?subject={other}&_total=accurate"))
        .send()
        .await;
    let other_bundle = asked_for_other.json().unwrap_or_default();
    report.check(
        SUITE,
        "a patient token asking for another patient's Observations gets none, and no count",
        (asked_for_other.status == 200
            && entries(&other_bundle, "match").is_empty()
            && other_bundle["total"] == 0)
            || asked_for_other.status == 403,
        asked_for_other.summary(),
    );

    let compartment = mine.get(&format!("{other}/Observation")).send().await;
    let compartment_bundle = compartment.json().unwrap_or_default();
    report.check(
        SUITE,
        "a patient token's search of another patient's compartment finds nothing",
        compartment.status == 403
            || (compartment.status == 200 && entries(&compartment_bundle, "match").is_empty()),
        compartment.summary(),
    );

    let patients = search_bundle(
        &mine,
        &format!(
            "Patient?_id={},{}&_revinclude=Observation:subject",
            fx.patient_user.patient_id, fx.other_patient_id
        ),
    )
    .await;
    let matched = entries(&patients, "match");
    let included = entries(&patients, "include");
    let own_observations: Vec<String> = observations
        .iter()
        .enumerate()
        .filter(|(n, _)| *n == 0 || *n == 3)
        .map(|(_, id)| format!("Observation/{id}"))
        .collect();
    report.check(
        SUITE,
        "a patient token's _revinclude brings only its patient's resources",
        matched == [own.clone()]
            && own_observations.iter().all(|o| included.contains(o))
            && !included.contains(&format!("Observation/{}", observations[2])),
        format!("matches {matched:?}, included {included:?}"),
    );

    let forward = search_bundle(
        &mine,
        "Observation?code:text=smart&_include=Observation:subject",
    )
    .await;
    let included = entries(&forward, "include");
    report.check(
        SUITE,
        "a patient token's _include brings only its own patient",
        included == [own.clone()],
        format!("{included:?}"),
    );

    let reverse_chain =
        search_bundle(&mine, "Patient?_has:Observation:subject:code:text=smart").await;
    let matched = entries(&reverse_chain, "match");
    report.check(
        SUITE,
        "a patient token's _has search finds only its own patient",
        matched == [own.clone()],
        format!("{matched:?}"),
    );

    let chained = search_bundle(
        &mine,
        &format!(
            "Observation?subject:Patient.family=Smart-{}",
            fx.other_patient_id
        ),
    )
    .await;
    report.check(
        SUITE,
        "a patient token's chain into another patient finds nothing",
        entries(&chained, "match").is_empty(),
        format!("{:?}", entries(&chained, "match")),
    );

    match granular {
        Some(granular) => {
            let lab = with_token(ctx, granular)
                .get("Observation?code:text=smart&_total=accurate")
                .send()
                .await
                .json()
                .unwrap_or_default();
            let found = entries(&lab, "match");
            report.check(
                SUITE,
                "a granular scope (?category=laboratory) narrows search results and totals",
                found == [format!("Observation/{}", observations[0])] && lab["total"] == 1,
                format!("{found:?}, total {}", lab["total"]),
            );
        }
        None => report.check(
            SUITE,
            "a granular scope (?category=laboratory) narrows search results and totals",
            false,
            "the granular token was not granted".to_owned(),
        ),
    }
}

/// A search's Bundle (an empty value when the reply is not JSON, which the checks then fail on).
async fn search_bundle(c: &Client, query: &str) -> Value {
    c.get(query).send().await.json().unwrap_or_default()
}
