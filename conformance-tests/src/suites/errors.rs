//! Every error status a FHIR client can meet, each with an OperationOutcome: 400, 404, 405,
//! 406/415 (in `negotiation`), 409, 410, 412, 413, 422.

use futures::future::join_all;
use serde_json::json;

use super::{SuiteContext, patient, random_id};
use crate::report::Report;

const SUITE: &str = "errors";

pub async fn run(ctx: &SuiteContext, report: &mut Report) {
    let c = &ctx.client;
    let created = c.post_json("Patient", &patient("Errors")).send().await;
    let body = created.json().unwrap_or_default();
    let id = body["id"].as_str().unwrap_or_default().to_owned();

    let unknown_type = c.get("NotAType/1").send().await;
    report.check(
        SUITE,
        "unknown resource type is 404",
        unknown_type.status == 404 && unknown_type.is_outcome(),
        unknown_type.summary(),
    );
    let unknown_id = c.get(&format!("Patient/{}", random_id())).send().await;
    report.check(
        SUITE,
        "unknown id is 404",
        unknown_id.status == 404 && unknown_id.is_outcome(),
        unknown_id.summary(),
    );
    let lower = c.get(&format!("patient/{id}")).send().await;
    report.check(
        SUITE,
        "resource type names are case-sensitive (404)",
        lower.status == 404 && lower.is_outcome(),
        lower.summary(),
    );
    let invalid_id = c.get("Patient/bad_id!").send().await;
    report.check(
        SUITE,
        "an invalid id in the URL is 400 or 404",
        (invalid_id.status == 400 || invalid_id.status == 404) && invalid_id.is_outcome(),
        invalid_id.summary(),
    );

    // A conditional create is either honoured (the second create finds the first) or refused:
    // never silently ignored, which would make a duplicate.
    let marker = random_id();
    let mut conditional = patient("Conditional");
    conditional["identifier"] = json!([{"system": "urn:conformance", "value": marker}]);
    let criteria = format!("identifier=urn:conformance|{marker}");
    let first = c
        .post_json("Patient", &conditional)
        .header("if-none-exist", &criteria)
        .send()
        .await;
    let second = c
        .post_json("Patient", &conditional)
        .header("if-none-exist", &criteria)
        .send()
        .await;
    let first_id = first
        .json()
        .and_then(|b| b["id"].as_str().map(str::to_owned));
    let second_id = second
        .json()
        .and_then(|b| b["id"].as_str().map(str::to_owned));
    let refused =
        first.status.as_u16() >= 400 && first.is_outcome() && second.status.as_u16() >= 400;
    let honoured = first.status == 201 && second.status == 200 && first_id == second_id;
    report.check(
        SUITE,
        "If-None-Exist is honoured or refused, never ignored",
        refused || honoured,
        format!("{} then {}", first.summary(), second.summary()),
    );
    let unconditional_update = c
        .put_json(&format!("Patient/{id}"), &body)
        .header("if-unmodified-since", "Tue, 01 Dec 2026 00:00:00 GMT")
        .send()
        .await;
    report.check(
        SUITE,
        "an unsupported conditional header is refused or honoured, never ignored",
        (unconditional_update.status.as_u16() >= 400 && unconditional_update.is_outcome())
            || unconditional_update.status == 412,
        unconditional_update.summary(),
    );

    let post_instance = c.post_json(&format!("Patient/{id}"), &body).send().await;
    report.check(
        SUITE,
        "POST on an instance is 405",
        post_instance.status == 405 && post_instance.is_outcome(),
        post_instance.summary(),
    );
    let bogus_method = c
        .request(
            reqwest::Method::from_bytes(b"FROB").unwrap_or(reqwest::Method::OPTIONS),
            &format!("Patient/{id}"),
        )
        .send()
        .await;
    report.check(
        SUITE,
        "an unknown method is 405",
        bogus_method.status == 405 && bogus_method.is_outcome(),
        bogus_method.summary(),
    );

    let mut other = body.clone();
    other["id"] = json!("some-other-id");
    let id_mismatch = c.put_json(&format!("Patient/{id}"), &other).send().await;
    report.check(
        SUITE,
        "update whose body id differs from the URL is 422",
        id_mismatch.status == 422 && id_mismatch.is_outcome(),
        id_mismatch.summary(),
    );
    let mut observation = body.clone();
    observation["resourceType"] = json!("Observation");
    let type_mismatch = c
        .put_json(&format!("Patient/{id}"), &observation)
        .send()
        .await;
    report.check(
        SUITE,
        "update whose body type differs from the URL is 422",
        type_mismatch.status == 422 && type_mismatch.is_outcome(),
        type_mismatch.summary(),
    );
    let create_mismatch = c
        .post_json("Observation", &patient("Mismatch"))
        .send()
        .await;
    report.check(
        SUITE,
        "create whose body type differs from the URL is 422",
        create_mismatch.status == 422 && create_mismatch.is_outcome(),
        create_mismatch.summary(),
    );
    let mut no_id = body.clone();
    no_id.as_object_mut().map(|o| o.remove("id"));
    let missing_id = c.put_json(&format!("Patient/{id}"), &no_id).send().await;
    report.check(
        SUITE,
        "update without an id in the body is 400",
        missing_id.status == 400 && missing_id.is_outcome(),
        missing_id.summary(),
    );
    let invalid = c
        .post_json("Patient", &json!({"resourceType": "Patient", "gender": 5}))
        .send()
        .await;
    report.check(
        SUITE,
        "an invalid resource is 400",
        invalid.status == 400 && invalid.is_outcome(),
        invalid.summary(),
    );
    let expression = invalid
        .json()
        .and_then(|v| v["issue"][0]["expression"][0].as_str().map(str::to_owned));
    report.check(
        SUITE,
        "the OperationOutcome says where (expression)",
        expression.as_deref() == Some("Patient.gender"),
        format!("{expression:?}"),
    );

    let too_large = c
        .declared_body(
            "Patient",
            "application/fhir+json",
            ctx.max_body_bytes + 1,
            b"{\"resourceType\":",
        )
        .await;
    report.check(
        SUITE,
        "a body over the limit is 413",
        too_large.status == 413 && too_large.is_outcome(),
        too_large.summary(),
    );

    // 409 and 412: many clients update from the same version at once; exactly one wins. The
    // losers that checked before the winner committed get 409, the later ones 412.
    let mut saw_conflict = false;
    let mut one_winner_each_round = true;
    let mut detail = String::new();
    for round in 0..5 {
        let current = c.get(&format!("Patient/{id}")).send().await;
        let current_json = current.json().unwrap_or_default();
        let version = current_json["meta"]["versionId"]
            .as_str()
            .unwrap_or("0")
            .to_owned();
        let racers = (0..24).map(|n| {
            let mut update = current_json.clone();
            update["name"][0]["given"] = json!([format!("Racer{round}-{n}")]);
            let path = format!("Patient/{id}");
            let tag = format!("W/\"{version}\"");
            async move {
                c.put_json(&path, &update)
                    .header("if-match", &tag)
                    .send()
                    .await
            }
        });
        let replies = join_all(racers).await;
        let winners = replies.iter().filter(|r| r.status.is_success()).count();
        let conflicts = replies
            .iter()
            .filter(|r| r.status == 409 && r.is_outcome())
            .count();
        let preconditions = replies
            .iter()
            .filter(|r| r.status == 412 && r.is_outcome())
            .count();
        one_winner_each_round &=
            winners == 1 && winners + conflicts + preconditions == replies.len();
        detail =
            format!("round {round}: {winners} won, {conflicts} got 409, {preconditions} got 412");
        if conflicts > 0 {
            saw_conflict = true;
            break;
        }
    }
    report.check(
        SUITE,
        "concurrent updates from one version: exactly one wins, the rest 409/412",
        one_winner_each_round,
        detail.clone(),
    );
    report.check(
        SUITE,
        "a lost update race is 409 Conflict",
        saw_conflict,
        detail,
    );

    let deleted = c.post_json("Patient", &patient("Gone")).send().await;
    let gone_id = deleted
        .json()
        .and_then(|v| v["id"].as_str().map(str::to_owned))
        .unwrap_or_default();
    c.delete(&format!("Patient/{gone_id}")).send().await;
    let gone = c.get(&format!("Patient/{gone_id}")).send().await;
    report.check(
        SUITE,
        "read of a deleted resource is 410",
        gone.status == 410 && gone.is_outcome(),
        gone.summary(),
    );
    let stale = c
        .put_json(&format!("Patient/{id}"), &body)
        .header("if-match", "W/\"1\"")
        .send()
        .await;
    report.check(
        SUITE,
        "If-Match of an old version is 412",
        stale.status == 412 && stale.is_outcome(),
        stale.summary(),
    );
}
